"""SentEval on checkpoints of a skip-thoughts run (default: its latest, full protocol).

  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --step=1734,3468
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --raw
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --step=40 \
      --tasks=MR,SICK --folds=5 --inner_folds=2 --max_examples=2000

For each step, prints a Markdown table (lnorm.lab.senteval.format_table) and writes
``<workdir>/senteval-<step>[-raw][-embeddings|-gru_mean][-f<folds>i<inner>n<examples>].json``
(:func:`experiments.skip_thoughts.senteval_file`). ``--raw`` fits the classifiers on the
raw vectors (as SentEval does) instead of standardized ones; ``--encoder=embeddings``
evaluates the mean of the model's word embeddings instead of the GRU's last state, and
``--encoder=gru_mean`` the mean of the encoder GRU's states (ablations). The SentEval
data: ``--senteval_dir``, else the run's ``senteval_dir``, else
``$LNORM_DATA_DIR/senteval`` or ``../shared/data/senteval``.
"""

from experiments import skip_thoughts
from lnorm.lab import cli, senteval
from lnorm.lab.data import senteval as senteval_data


def parse_steps(text: str | None) -> list[int | None]:
  """``'1734,3468'`` -> ``[1734, 3468]``; ``None`` -> ``[None]`` (the latest checkpoint)."""
  if not text:
    return [None]
  try:
    return [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise SystemExit(f'--step takes comma-separated checkpoint steps, got {text!r}') from None


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='the run directory')
  parser.add_argument('--step', default=None, help='checkpoint steps, comma-separated (latest)')
  parser.add_argument('--senteval_dir', default=None, help='SentEval layout')
  parser.add_argument('--tasks', default=','.join(senteval_data.TASKS), help='comma-separated')
  parser.add_argument('--folds', type=int, default=10, help='outer CV folds (MR/CR/SUBJ/MPQA)')
  parser.add_argument('--inner_folds', type=int, default=5, help='inner CV folds choosing C')
  parser.add_argument('--max_examples', type=int, default=0, help='subset size (0: all)')
  parser.add_argument('--raw', action='store_true', help='no feature standardization')
  parser.add_argument('--encoder', choices=skip_thoughts.ENCODERS, default='gru')
  args = parser.parse_args(argv)
  for step in parse_steps(args.step):
    out = skip_thoughts.evaluate_checkpoint(
      args.workdir, step, args.senteval_dir, args.tasks, args.folds, args.inner_folds,
      args.max_examples, standardize=not args.raw, encoder=args.encoder,
    )  # fmt: skip
    print(f'{args.workdir}, step {out["step"]}, protocol {out["protocol"]}')
    print(senteval.format_table(out['results']), flush=True)


if __name__ == '__main__':
  main()

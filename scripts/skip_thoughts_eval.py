"""SentEval on a checkpoint of a skip-thoughts run (default: its latest, full protocol).

  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --step=40 \
      --tasks=MR,SICK --folds=5 --inner_folds=2 --max_examples=2000

Prints a Markdown table (lnorm.lab.senteval.format_table) and writes
``<workdir>/senteval-<step>.json``. The SentEval data: ``--senteval_dir``, else the
run's ``senteval_dir``, else ``$LNORM_DATA_DIR/senteval`` or ``../shared/data/senteval``.
"""

from experiments import skip_thoughts
from lnorm.lab import cli, senteval
from lnorm.lab.data import senteval as senteval_data


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='the run directory')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--senteval_dir', default=None, help='SentEval layout')
  parser.add_argument('--tasks', default=','.join(senteval_data.TASKS), help='comma-separated')
  parser.add_argument('--folds', type=int, default=10, help='outer CV folds (MR/CR/SUBJ/MPQA)')
  parser.add_argument('--inner_folds', type=int, default=5, help='inner CV folds choosing C')
  parser.add_argument('--max_examples', type=int, default=0, help='subset size (0: all)')
  args = parser.parse_args(argv)
  out = skip_thoughts.evaluate_checkpoint(
    args.workdir, args.step, args.senteval_dir, args.tasks, args.folds, args.inner_folds,
    args.max_examples,
  )  # fmt: skip
  print(f'{args.workdir}, step {out["step"]}, protocol {out["protocol"]}')
  print(senteval.format_table(out['results']))


if __name__ == '__main__':
  main()

"""How much the decoders use the sentence vector: held-out NLL with each triple's own
vector, another triple's, and zeros, on checkpoints of a skip-thoughts run.

  python -m scripts.skip_thoughts_conditioning --workdir=runs/skip_thoughts/cpu-layer \\
      --step=867,6936

Writes ``<workdir>/conditioning-<step>.json``
(:func:`experiments.skip_thoughts.conditioning_nll`) and prints one line per step.
"""

from experiments import skip_thoughts
from lnorm.lab import cli
from scripts.skip_thoughts_eval import parse_steps


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='the run directory')
  parser.add_argument('--step', default=None, help='checkpoint steps, comma-separated (latest)')
  parser.add_argument('--batch_size', type=int, default=250, help='held-out triples per batch')
  args = parser.parse_args(argv)
  for step in parse_steps(args.step):
    out = skip_thoughts.conditioning_nll(args.workdir, step, args.batch_size)
    nll = out['nll']
    print(
      f'{args.workdir} step {out["step"]} ({out["triples"]} triples): NLL per token '
      + ', '.join(f'{k} {v:.4f}' for k, v in nll.items())
      + f'; other - own {nll["other"] - nll["own"]:.4f}',
      flush=True,
    )


if __name__ == '__main__':
  main()

r"""The pMNIST learning-rate sweep at batch size 128 (Figure 6, left), through scripts/sweep.py.

The paper says layer norm converges faster than batch norm and no
normalization at batch size 128; it gives no learning rate. This runs
``none``, ``batch`` and ``layer`` at each learning rate of ``--lrs`` with
``--seeds`` seeds, every run one call of ``scripts/sweep.py`` (which skips
finished runs and resumes the others)::

  python scripts/sweep.py --config=configs/pmnist.py:seeds=3,data=idx,epochs=1 \
      --filter='batch_size-128_seed-0' --root=runs/pmnist_lr_sweep/lr-0.001 \
      --config.learning_rate=0.001 --config.num_train=25600 ...

Usage, from the repository root (``--dry_run`` prints the commands)::

  python scripts/pmnist_lr_sweep.py --root=runs/pmnist_lr_sweep
  python scripts/pmnist_lr_sweep_report.py runs/pmnist_lr_sweep --out results/pmnist_lr_sweep

The order is seed-major (seed 0 at every learning rate, then seed 1, ...) so
that a sweep cut short still covers every learning rate.

``--num_train`` (default 25,600 = 200 updates of 128) sets the size of the
training split and each run makes one pass over it (``epochs=1``): within one
pass every example is new, so the first ``N`` updates of a run on ``N * 128``
images see the same kind of data as the first ``N`` updates of a run on all
55,000, just no more of them. The validation (5,000) and test (10,000) sets
are the usual ones, evaluated once at the end.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
from collections.abc import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
BATCH_SIZE = 128


def lr_name(lr: float) -> str:
  """The workdir folder of a learning rate: ``0.001`` -> ``'lr-0.001'``."""
  return f'lr-{lr:g}'


def sweep_commands(
  root: str | pathlib.Path,
  lrs: Sequence[float] = LRS,
  seeds: int = 3,
  num_train: int = 25600,
  data: str = 'idx',
  log_every_steps: int = 8,
  extra: Sequence[str] = (),
  python: str = sys.executable,
) -> list[list[str]]:
  """The ``scripts/sweep.py`` command lines, seed-major, one per (seed, learning rate)."""
  commands = []
  for seed in range(seeds):
    for lr in lrs:
      commands.append([
        python,
        str(REPO_ROOT / 'scripts' / 'sweep.py'),
        f'--config=configs/pmnist.py:seeds={seeds},data={data},epochs=1',
        f'--filter=batch_size-{BATCH_SIZE}_seed-{seed}_',
        f'--root={pathlib.Path(root) / lr_name(lr)}',
        f'--config.learning_rate={lr}',
        f'--config.num_train={num_train}',
        f'--config.log_every_steps={log_every_steps}',
        '--config.evals_per_epoch=1',
        '--log_to_files',
        *extra,
      ])  # fmt: skip
  return commands


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default='runs/pmnist_lr_sweep', help='parent of the lr-* roots.')
  parser.add_argument('--lrs', default=','.join(f'{lr:g}' for lr in LRS), help='comma-separated.')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--num_train', type=int, default=25600, help='training images (one pass).')
  parser.add_argument('--data', default='idx', help='tfds|idx|embedded (configs/pmnist.py).')
  parser.add_argument('--dry_run', action='store_true', help='print the commands only.')
  args = parser.parse_args(argv)
  try:
    lrs = [float(v) for v in args.lrs.split(',') if v]
  except ValueError:
    parser.error(f'--lrs must be comma-separated numbers; got {args.lrs!r}.')
  failed = 0
  for cmd in sweep_commands(args.root, lrs, args.seeds, args.num_train, args.data):
    print(' '.join(cmd[1:]), flush=True)
    if not args.dry_run:
      failed += subprocess.run(cmd, cwd=REPO_ROOT, check=False).returncode != 0
  if failed:
    print(f'{failed} sweep calls had failed runs; rerun this command to retry them.')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())

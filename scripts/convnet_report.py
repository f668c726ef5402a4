r"""The convnet results (paper §6.7): curves per norm and a table, from the runs' workdirs.

Usage, from the repository root, after the grid of ``configs/convnet.py``::

  python scripts/convnet_report.py runs/convnet --out results/convnet

writes ``results/convnet.png`` (training loss and test error against updates
and against wall time; per norm the mean over seeds and the min-max band) and
puts the table between the markers ``<!-- convnet-table:begin -->`` and
``<!-- convnet-table:end -->`` of ``results/convnet.md`` (printing it too).

Table columns (mean ± sample std over seeds): the training loss averaged over
the last ``--tail`` steps' rows, the mean training loss over the whole run
(the area under the curve divided by its length: lower is faster), the first
logged step at which the training loss fell below ``--threshold``, the test
error at the end and at the first evaluation, the training throughput and the
run's wall time.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from lnorm.lab import compare  # noqa: E402
from lnorm.lab.colors import norm_color  # noqa: E402

NORM_ORDER = ('none', 'batch', 'layer', 'rms', 'group')
BEGIN, END = '<!-- convnet-table:begin -->', '<!-- convnet-table:end -->'


def norm_groups(runs: Sequence[compare.RunData]) -> dict[str, list[compare.RunData]]:
  """The runs by norm, in :data:`NORM_ORDER` (other names after it)."""
  out: dict[str, list[compare.RunData]] = {}
  for run in runs:
    out.setdefault(compare.field_value(run, 'norm'), []).append(run)
  order = {n: i for i, n in enumerate(NORM_ORDER)}
  return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def tail_mean(run: compare.RunData, metric: str, last_steps: int) -> float:
  """The mean of ``metric`` over the rows of the last ``last_steps`` steps."""
  steps, values = run.series(metric, 'step')
  return float(values[steps > steps[-1] - last_steps].mean())


def curve_mean(run: compare.RunData, metric: str) -> float:
  """The time-average of ``metric`` over the run (trapezoids over steps, from the first row)."""
  steps, values = run.series(metric, 'step')
  if len(steps) < 2:
    return float(values[0])
  return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def first_step_below(run: compare.RunData, metric: str, threshold: float) -> float:
  """The first logged step where ``metric`` is below ``threshold`` (NaN: never)."""
  steps, values = run.series(metric, 'step')
  below = np.flatnonzero(values < threshold)
  return float(steps[below[0]]) if len(below) else float('nan')


def value_at_first(run: compare.RunData, metric: str) -> float:
  return float(run.series(metric, 'step')[1][0])


def value_at_last(run: compare.RunData, metric: str) -> float:
  return float(run.series(metric, 'step')[1][-1])


def fmt(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
  """``'mean ± std'`` of ``values`` times ``scale`` (NaNs counted as 'never')."""
  v = np.asarray(values, np.float64) * scale
  missing = int(np.isnan(v).sum())
  v = v[~np.isnan(v)]
  if not len(v):
    return 'never'
  text = f'{v.mean():.{digits}g}' + (f' ± {v.std(ddof=1):.2g}' if len(v) > 1 else '')
  return text + (f' ({missing} never)' if missing else '')


def table(groups: dict[str, list[compare.RunData]], tail: int, threshold: float) -> str:
  """The markdown table of the module docstring."""
  first = next(iter(groups.values()))[0]
  first_eval = int(first.series('test/error', 'step')[0][0])
  head = [
    'norm',
    'seeds',
    'steps',
    f'train loss, last {tail} steps',
    'mean train loss over the run',
    f'first step with train loss < {threshold:g}',
    'test error % (end)',
    f'test error % (step {first_eval})',
    'train examples/s',
    'wall s',
  ]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for norm, runs in groups.items():
    steps = {int(r.rows[-1]['step']) for r in runs}
    cells = [
      norm,
      str(len(runs)),
      '/'.join(str(s) for s in sorted(steps)),
      fmt([tail_mean(r, 'train/loss', tail) for r in runs]),
      fmt([curve_mean(r, 'train/loss') for r in runs]),
      fmt([first_step_below(r, 'train/loss', threshold) for r in runs]),
      fmt([value_at_last(r, 'test/error') for r in runs], scale=100),
      fmt([value_at_first(r, 'test/error') for r in runs], scale=100),
      fmt([(r.final or {}).get('train_examples_per_s', float('nan')) for r in runs], 4),
      fmt([r.rows[-1]['wall_s'] for r in runs], 4),
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(groups: dict[str, list[compare.RunData]], path: pathlib.Path, title: str) -> None:
  """Training loss and test error against updates and wall time: 2 x 2 panels."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  panels = [
    (axes[0, 0], 'train/loss', 'step', 'training loss (NLL)', 'updates (batch 128)'),
    (axes[0, 1], 'test/error', 'step', 'test error', 'updates (batch 128)'),
    (axes[1, 0], 'train/loss', 'wall_s', 'training loss (NLL)', 'wall time (s), mean of seeds'),
    (axes[1, 1], 'test/error', 'wall_s', 'test error', 'wall time (s), mean of seeds'),
  ]
  for ax, metric, x, ylabel, xlabel in panels:
    for i, (norm, runs) in enumerate(groups.items()):
      xs, mean, lo, hi, _ = compare.aggregate(runs, metric, 'step')
      if x == 'wall_s':  # At each step, the seeds' mean wall time (their clocks differ).
        steps, wall, *_ = compare.aggregate(runs, 'wall_s', 'step')
        xs = np.interp(xs, steps, wall)
      color = norm_color(norm, i)
      ax.plot(xs, mean, color=color, lw=1.6, marker='o' if 'test' in metric else None, ms=3,
              label=f'{norm} ({len(runs)} seeds)')  # fmt: skip
      ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale('log')
    ax.grid(alpha=0.3, which='both')
  axes[0, 0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def splice(md_path: pathlib.Path, text: str) -> bool:
  """Replaces the text between the markers of ``md_path``; False if it has none."""
  if not md_path.is_file():
    return False
  doc = md_path.read_text()
  pattern = re.compile(re.escape(BEGIN) + '.*?' + re.escape(END), re.S)
  if not pattern.search(doc):
    return False
  md_path.write_text(pattern.sub(lambda _: f'{BEGIN}\n{text}\n{END}', doc))
  return True


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('root', help='the directory holding the runs (one workdir each).')
  parser.add_argument('--out', default='results/convnet', help='writes OUT.png; fills OUT.md.')
  parser.add_argument('--tail', type=int, default=40, help='steps averaged for the final loss.')
  parser.add_argument('--threshold', type=float, default=0.3, help='train loss threshold.')
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root)
  if not root.is_dir():
    parser.error(f'{root} is not a directory of runs.')
  runs = compare.load_runs(sorted(p for p in root.iterdir() if p.is_dir()), warn=print)
  groups = norm_groups(runs)
  text = table(groups, args.tail, args.threshold)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  plot(groups, out.with_suffix('.png'), 'Convnet on MNIST (paper §6.7): mean and min-max of seeds')
  print(text)
  if splice(out.with_suffix('.md'), text):
    print(f'table written into {out.with_suffix(".md")}')
  print(f'figure: {out.with_suffix(".png")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

r"""The pMNIST learning-rate sweep's results: each norm at its best and at a shared learning rate.

Usage, from the repository root, after ``scripts/pmnist_lr_sweep.py``::

  python scripts/pmnist_lr_sweep_report.py runs/pmnist_lr_sweep --out results/pmnist_lr_sweep

reads every run under ``ROOT/lr-*/``, groups them by (norm, learning rate) and

* scores each group by its mean training loss over the run (the area under
  the training-loss curve against updates divided by its length: lower
  means faster convergence, the paper's claim), mean over seeds;
* picks each norm's best learning rate by that score, and a shared learning
  rate (the one whose worst norm-to-best ratio is smallest: the rate that
  suits all three best);
* writes ``OUT.png``: training loss against updates with each norm at its
  best rate, the same at the shared rate, and the score and the final test
  error against the learning rate;
* puts the tables between ``<!-- lr-sweep-table:begin -->`` and
  ``<!-- lr-sweep-table:end -->`` of ``OUT.md`` (and prints them).
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

NORM_ORDER = ('none', 'batch', 'layer')
BEGIN, END = '<!-- lr-sweep-table:begin -->', '<!-- lr-sweep-table:end -->'
Key = tuple[str, float]


def group(runs: Sequence[compare.RunData]) -> dict[Key, list[compare.RunData]]:
  """The runs by ``(norm, learning_rate)``, sorted by norm (:data:`NORM_ORDER`) then rate."""
  out: dict[Key, list[compare.RunData]] = {}
  for run in runs:
    key = (compare.field_value(run, 'norm'), float(compare.field_value(run, 'learning_rate')))
    out.setdefault(key, []).append(run)
  order = {n: i for i, n in enumerate(NORM_ORDER)}
  return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])))


def run_score(run: compare.RunData) -> float:
  """The mean training loss over the run: trapezoids over the logged steps / the steps covered."""
  steps, loss = run.series('train/loss', 'step')
  if len(steps) < 2:
    return float(loss[0]) if len(loss) else float('nan')
  return float(np.trapezoid(loss, steps) / (steps[-1] - steps[0]))


def tail_loss(run: compare.RunData, last_steps: int = 40) -> float:
  """The mean training loss over the rows of the last ``last_steps`` steps."""
  steps, loss = run.series('train/loss', 'step')
  return float(loss[steps > steps[-1] - last_steps].mean())


def final(run: compare.RunData, metric: str) -> float:
  values = run.series(metric, 'step')[1]
  return float(values[-1]) if len(values) else float('nan')


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def choose(groups: dict[Key, list[compare.RunData]]) -> tuple[dict[str, float], float]:
  """Each norm's best learning rate, and the shared one (see the module docstring)."""
  scores = {k: mean_std([run_score(r) for r in runs])[0] for k, runs in groups.items()}
  norms = list(dict.fromkeys(n for n, _ in groups))
  best = {n: min((lr for m, lr in scores if m == n), key=lambda lr: scores[(n, lr)]) for n in norms}
  shared_lrs = [
    lr for lr in sorted({lr for _, lr in scores}) if all((n, lr) in scores for n in norms)
  ]
  ratio = {lr: max(scores[(n, lr)] / scores[(n, best[n])] for n in norms) for lr in shared_lrs}
  return best, min(ratio, key=ratio.get)


def tables(groups: dict[Key, list[compare.RunData]], best: dict[str, float], shared: float) -> str:
  """Two markdown tables: every (norm, rate); then each norm at its best and the shared rate."""
  first = next(iter(groups.values()))[0]
  steps = int(first.rows[-1]['step'])
  head = ['norm', 'learning rate', 'seeds', 'steps', 'mean train loss over the run',
          'train loss, last 40 steps', 'valid error %', 'test error %']  # fmt: skip
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

  def cells(norm, lr, runs, mark=''):
    f = lambda vals, d=3, s=1.0: '{:.{d}g} ± {:.2g}'.format(*(np.array(mean_std(vals)) * s), d=d)
    return [
      norm + mark,
      f'{lr:g}',
      str(len(runs)),
      '/'.join(str(s) for s in sorted({int(r.rows[-1]['step']) for r in runs})),
      f([run_score(r) for r in runs]),
      f([tail_loss(r) for r in runs]),
      f([final(r, 'valid/error') for r in runs], s=100),
      f([final(r, 'test/error') for r in runs], s=100),
    ]

  for (norm, lr), runs in groups.items():
    mark = ' (best)' if best[norm] == lr else ''
    lines.append('| ' + ' | '.join(cells(norm, lr, runs, mark)) + ' |')
  out = [f'All runs ({steps} updates of batch 128 each; mean ± sample std over seeds):', '',
         *lines, '', f'Each norm at its best learning rate, and all at the shared rate {shared:g}:',
         '', lines[0], lines[1]]  # fmt: skip
  for norm in best:
    out.append('| ' + ' | '.join(cells(norm, best[norm], groups[(norm, best[norm])])) + ' |')
  for norm in best:
    out.append('| ' + ' | '.join(cells(norm, shared, groups[(norm, shared)], ' (shared)')) + ' |')
  return '\n'.join(out)


def plot(groups, best, shared, path: pathlib.Path) -> None:
  """Four panels: best-rate curves, shared-rate curves, score and test error against the rate."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for ax, which in ((axes[0, 0], 'best'), (axes[0, 1], 'shared')):
    for i, norm in enumerate(best):
      lr = best[norm] if which == 'best' else shared
      runs = groups[(norm, lr)]
      xs, mean, lo, hi, _ = compare.aggregate(runs, 'train/loss', 'step')
      color = norm_color(norm, i)
      ax.plot(xs, mean, color=color, lw=1.6, label=f'{norm}, lr {lr:g} ({len(runs)} seeds)')
      ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
    title = 'each norm at its best learning rate' if which == 'best' else f'all at lr {shared:g}'
    ax.set_title(title)
    ax.set_xlabel('updates (batch 128)')
    ax.set_ylabel('training loss (NLL)')
    ax.set_yscale('log')
    ax.grid(alpha=0.3, which='both')
    ax.legend()
  for ax, metric, ylabel in (
    (axes[1, 0], None, 'mean training loss over the run'),
    (axes[1, 1], 'test/error', 'test error at the end'),
  ):
    for i, norm in enumerate(best):
      lrs = sorted(lr for n, lr in groups if n == norm)
      stats = [
        mean_std([run_score(r) if metric is None else final(r, metric) for r in groups[(norm, lr)]])
        for lr in lrs
      ]
      means, stds = np.array(stats).T
      ax.errorbar(lrs, means, yerr=stds, color=norm_color(norm, i), marker='o', capsize=3,
                  label=norm)  # fmt: skip
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('learning rate (Adam)')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which='both')
    ax.legend()
  fig.suptitle('pMNIST, batch 128: learning-rate sweep (mean and min-max / std of seeds)')
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
  parser.add_argument('root', help='the sweep root (holding lr-*/ folders of runs).')
  parser.add_argument(
    '--out', default='results/pmnist_lr_sweep', help='writes OUT.png; fills OUT.md.'
  )
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root)
  workdirs = sorted(p for p in root.glob('lr-*/*') if p.is_dir())
  if not workdirs:
    parser.error(f'no runs under {root}/lr-*/ (run scripts/pmnist_lr_sweep.py first).')
  groups = group(compare.load_runs(workdirs, warn=print))
  best, shared = choose(groups)
  text = tables(groups, best, shared)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  plot(groups, best, shared, out.with_suffix('.png'))
  print(text)
  if splice(out.with_suffix('.md'), text):
    print(f'tables written into {out.with_suffix(".md")}')
  print(f'figure: {out.with_suffix(".png")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

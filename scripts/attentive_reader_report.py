"""Figure 2's comparison from attentive-reader workdirs: validation error curves and a table.

  python scripts/attentive_reader_report.py runs/attentive_reader/books-top4-{none,batch,layer} \
      --out results/attentive_reader

Writes ``<out>.png`` (validation error against updates and against wall-clock time, one
colour per cell: LSTM grey, BN-LSTM blue, LN-LSTM red) and prints a Markdown table: per
run the best validation error and its step, the updates needed to reach the plain LSTM's
best validation error, the test error at the end, and the training throughput
(questions/s, from final.json). ``--baselines`` adds the errors of two rules that do not
read the question (the most frequent entity of the document; a uniform guess among its
entities) on the first run's data, and draws the first as a dotted line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from lnorm.lab.colors import NORM_COLORS  # noqa: E402
from lnorm.lab.metrics import read_metrics  # noqa: E402

COLORS = NORM_COLORS  # One colour per norm in every figure (lnorm.lab.colors).
LABELS = {'none': 'LSTM', 'batch': 'BN-LSTM', 'layer': 'LN-LSTM'}


def load_run(workdir: pathlib.Path) -> dict:
  config = json.loads((workdir / 'config.json').read_text())
  final_path = workdir / 'final.json'
  final = json.loads(final_path.read_text()) if final_path.exists() else {}
  rows = [r for r in read_metrics(workdir) if 'valid/error' in r]
  label = LABELS.get(config['norm'], config['norm'])
  if config['norm'] == 'layer' and config.get('ln_gain', 1.0) != 1.0:
    label += f' (gain {config["ln_gain"]})'
  return {'dir': workdir, 'config': config, 'final': final, 'rows': rows, 'label': label}


def first_step_at_or_below(rows: list[dict], target: float) -> int | None:
  for r in rows:
    if r['valid/error'] <= target:
      return r['step']
  return None


def table(runs: list[dict]) -> str:
  base = next((r for r in runs if r['config']['norm'] == 'none'), None)
  target = min(r['valid/error'] for r in base['rows']) if base else None
  head = ['cell', 'best valid error (step)', f'updates to reach LSTM best ({target:.3f})'
          if target is not None else 'updates to reach LSTM best', 'test error (end)',
          'valid error (end)', 'questions/s', 'wall min']  # fmt: skip
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for run in runs:
    rows = run['rows']
    best = min(rows, key=lambda r: (r['valid/error'], r['step']))
    reach = first_step_at_or_below(rows, target) if target is not None else None
    final = run['final']
    qps = final.get('train_examples_per_s')
    cells = [
      run['label'],
      f'{best["valid/error"]:.3f} ({best["step"]})',
      str(reach) if reach is not None else 'not reached',
      f'{final["test/error"]:.3f}' if 'test/error' in final else '-',
      f'{rows[-1]["valid/error"]:.3f}',
      f'{qps:.0f}' if qps else '-',
      f'{final.get("wall_s", rows[-1]["wall_s"]) / 60:.1f}',
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def baselines(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """:func:`experiments.attentive_reader.heuristic_errors` on the run's valid/test data."""
  import ml_collections

  from experiments import attentive_reader

  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  data = attentive_reader.load_data(config)
  return {
    name: attentive_reader.heuristic_errors(split, data.entity_ids)
    for name, split in data.splits.items()
    if name != 'train'
  }


def plot(runs: list[dict], out: pathlib.Path, title: str, hline: float | None = None) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for run in runs:
    rows = run['rows']
    color = COLORS.get(run['config']['norm'], 'k')
    style = '--' if run['config'].get('ln_gain', 1.0) != 1.0 else '-'
    for ax, x in zip(axes, ('step', 'wall_s'), strict=True):
      xs = [r[x] / (60 if x == 'wall_s' else 1) for r in rows]
      ax.plot(xs, [r['valid/error'] for r in rows], style, color=color, label=run['label'], lw=1.6)
  if hline is not None:
    for ax in axes:
      ax.axhline(hline, color='k', ls=':', lw=1, label='most frequent entity')
  axes[0].set_xlabel('training updates')
  axes[1].set_xlabel('wall-clock minutes (2 shared CPU cores)')
  axes[0].set_ylabel('validation error')
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(out.with_suffix('.png'), dpi=120)


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='results/attentive_reader')
  parser.add_argument('--title', default='Attentive reader on the books cloze STAND-IN (not CNN)')
  parser.add_argument(
    '--baselines', action='store_true', help='also the heuristic errors (loads the data)'
  )
  args = parser.parse_args(argv)
  runs = [load_run(pathlib.Path(w)) for w in args.workdirs]
  runs = [r for r in runs if r['rows']]
  text = table(runs)
  hline = None
  if args.baselines:
    found = baselines(runs[0]['dir'])
    hline = found['valid']['most_frequent']
    text += '\n\nRules that do not read the question (same data as the first run):\n\n'
    text += '| split | most frequent entity | uniform among the entities of the document |\n'
    text += '|---|---|---|\n'
    for name, b in found.items():
      text += f'| {name} | {b["most_frequent"]:.3f} | {b["uniform_candidate"]:.3f} |\n'
  plot(runs, pathlib.Path(args.out), args.title, hline)
  print(text)
  return text


if __name__ == '__main__':
  main()

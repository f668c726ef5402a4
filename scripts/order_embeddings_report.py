r"""Order embeddings, GRU vs LN-GRU: dev curves (PNG) and the results page (markdown).

Reads the workdirs of ``configs/order_embeddings.py`` runs (``config.json``,
``metrics.jsonl``, ``final.json``), groups them by ``data`` and ``norm``, and writes

* ``<out>.png``: the dev metric (SICK trial accuracy; image-retrieval R@1 + R@5 + R@10 on
  the dev fold for books/COCO) against updates and against wall time, one row per data
  set, GRU grey and LN-GRU red, the best dev point of each run marked;
* ``<out>.md``: per run the best dev value, the update and the wall time at which the best
  dev model was reached, the test metrics of that model, throughput; LN-GRU's time to its
  best dev model as a fraction of GRU's (the paper: 60%), and the paper's Table 2 beside
  them, labelled as the paper's. Whatever follows :data:`NOTES_MARKER` in an existing
  page (notes written by hand) is kept.

Usage::

  python scripts/order_embeddings_report.py runs/order_embeddings/{sick,books}-{none,layer} \
      --out results/order_embeddings
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from lnorm.lab.colors import NORM_COLORS  # noqa: E402
from lnorm.lab.metrics import read_metrics  # noqa: E402
from lnorm.lab.workdir import read_json  # noqa: E402

COLORS = NORM_COLORS  # One colour per norm in every figure (lnorm.lab.colors).
NAMES = {'none': 'GRU', 'layer': 'LN-GRU'}
DEV_METRIC = {
  'sick': ('dev/accuracy', 'SICK trial accuracy (%)'),
  'books': ('dev/image_rsum', 'dev image retrieval R@1+R@5+R@10'),
  'coco': ('dev/image_rsum', 'dev image retrieval R@1+R@5+R@10'),
}
TITLES = {
  'sick': 'SICK entailment as an order (stand-in, real text)',
  'books': 'Book-passage retrieval (stand-in: synthetic TF-IDF "images")',
  'coco': 'MSCOCO caption-image retrieval',
}
RETRIEVAL_KEYS = ('r1', 'r5', 'r10', 'medr', 'meanr')
#: Everything after this line of an existing page is kept when the page is regenerated.
NOTES_MARKER = '<!-- Notes written by hand below: kept when the page is regenerated. -->'
# The layer-norm paper's Table 2 (MSCOCO, 1k-image test folds): R@1, R@5, R@10, mean r.
PAPER_TABLE2 = {
  'none': {'caption': (46.6, 79.3, 89.1, 5.2), 'image': (37.8, 73.6, 85.7, 7.9)},
  'layer': {'caption': (48.5, 80.6, 89.8, 5.1), 'image': (38.9, 74.3, 86.3, 7.6)},
}


def load_run(path: pathlib.Path) -> dict:
  """A workdir's config, metric rows and final.json, with its best dev row."""
  config = read_json(path / 'config.json')
  if config is None:
    raise SystemExit(f'{path} holds no config.json: not a run directory.')
  rows = read_metrics(path)
  key = DEV_METRIC[config['data']][0]
  dev = [r for r in rows if key in r]
  if not dev:
    raise SystemExit(f'{path}: no {key} rows yet.')
  # The first row with the highest score: the model the run keeps (a strict improvement).
  best = max(dev, key=lambda r: (r[key], -r['step']))
  return {
    'path': path,
    'config': config,
    'rows': rows,
    'dev': dev,
    'best': best,
    'final': read_json(path / 'final.json'),
    'key': key,
  }


def plot(runs: list[dict], png: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  datasets = [d for d in DEV_METRIC if any(r['config']['data'] == d for r in runs)]
  fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
  for row, data in enumerate(datasets):
    key, label = DEV_METRIC[data]
    for col, x in enumerate(('step', 'wall_s')):
      ax = axes[row, col]
      for run in (r for r in runs if r['config']['data'] == data):
        norm = run['config']['norm']
        xs = [r[x] / (60.0 if x == 'wall_s' else 1.0) for r in run['dev']]
        ax.plot(xs, [r[key] for r in run['dev']], color=COLORS[norm], lw=1.5,
                label=f'{NAMES[norm]} (seed {run["config"]["seed"]})')  # fmt: skip
        b = run['best']
        ax.plot(b[x] / (60.0 if x == 'wall_s' else 1.0), b[key], 'o', color=COLORS[norm], ms=7,
                mfc='none', mew=1.5)  # fmt: skip
      ax.set_xlabel('updates' if x == 'step' else 'wall time (minutes, with evaluations)')
      ax.set_ylabel(label)
      ax.set_title(TITLES[data], fontsize=9)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8, loc='lower right')
  fig.suptitle('Order embeddings, GRU vs LN-GRU: dev metric (circle: the best dev model kept)')
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)


def _fmt(v, digits=1) -> str:
  return '-' if v is None else f'{v:.{digits}f}'


def run_table(runs: list[dict], data: str) -> list[str]:
  """The markdown table of one data set's runs."""
  group = sorted((r for r in runs if r['config']['data'] == data),
                 key=lambda r: (r['config']['norm'] != 'none', r['config']['seed']))  # fmt: skip
  lines = []
  if data == 'sick':
    head = ['encoder', 'seed', 'updates (epochs)', 'best trial acc.', 'at update',
            'at wall time', 'test acc. (best model)', 'test majority class',
            'train pairs/s']  # fmt: skip
  else:
    head = ['encoder', 'seed', 'updates (epochs)', 'best dev R@1+5+10', 'at update',
            'at wall time', 'test image R@1/5/10, med r, mean r',
            'test caption R@1/5/10, med r, mean r', 'train images/s']  # fmt: skip
  lines.append('| ' + ' | '.join(head) + ' |')
  lines.append('|' + '---|' * len(head))
  for r in group:
    c, f, b = r['config'], r['final'] or {}, r['best']
    last = f or r['rows'][-1]
    cells = [NAMES[c['norm']], str(c['seed']), f'{last["step"]} ({last["epoch"]:.1f})',
             _fmt(b[r['key']]), str(b['step']), f'{b["wall_s"] / 60:.1f} min']  # fmt: skip
    if data == 'sick':
      cells += [_fmt(f.get('test/accuracy')), _fmt(f.get('test/majority_rate'))]
    else:
      for side in ('image', 'caption'):
        vals = [f.get(f'test/{side}_{k}') for k in RETRIEVAL_KEYS]
        cells.append(' / '.join(_fmt(v) for v in vals))
    cells.append(_fmt(f.get('train_examples_per_s'), 0))
    lines.append('| ' + ' | '.join(cells) + ' |')
  by_norm = {r['config']['norm']: r for r in group}
  if {'none', 'layer'} <= set(by_norm):
    t_gru, t_ln = by_norm['none']['best']['wall_s'], by_norm['layer']['best']['wall_s']
    s_gru, s_ln = by_norm['none']['best']['step'], by_norm['layer']['best']['step']
    lines.append('')
    lines.append(
      f'LN-GRU reached its best dev model after {t_ln / 60:.1f} min ({s_ln} updates), GRU after '
      f"{t_gru / 60:.1f} min ({s_gru} updates): **{100 * t_ln / t_gru:.0f}%** of the GRU's "
      f'wall time ({100 * s_ln / max(s_gru, 1):.0f}% of its updates). The paper: 60% of the '
      "baseline's training time (MSCOCO, 1024-d)."
    )
    target = min(by_norm[n]['best'][by_norm[n]['key']] for n in ('none', 'layer'))
    reach = {n: first_reaching(by_norm[n], target) for n in ('none', 'layer')}
    lines.append('')
    lines.append(
      f'Both reach {target:.1f} (the lower of the two best dev values): GRU at update '
      f'{reach["none"]["step"]} ({reach["none"]["wall_s"] / 60:.1f} min), LN-GRU at update '
      f'{reach["layer"]["step"]} ({reach["layer"]["wall_s"] / 60:.1f} min).'
    )
  return lines


def first_reaching(run: dict, target: float) -> dict:
  """The first dev row of ``run`` whose value is at least ``target``."""
  return next(r for r in run['dev'] if r[run['key']] >= target - 1e-9)


def curve_table(runs: list[dict], data: str, points: int = 8) -> list[str]:
  """Dev metric at a few updates for each run (the curves as numbers)."""
  group = [r for r in runs if r['config']['data'] == data]
  steps = sorted({r['step'] for run in group for r in run['dev']})
  if len(steps) > points:
    idx = np.unique(np.linspace(0, len(steps) - 1, points).round().astype(int))
    steps = [steps[i] for i in idx]
  head = ['update'] + [NAMES[r['config']['norm']] for r in group]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for s in steps:
    cells = [str(s)]
    for run in group:
      row = next((r for r in run['dev'] if r['step'] == s), None)
      cells.append(_fmt(row[run['key']]) if row else '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def paper_table() -> list[str]:
  lines = ['| the paper (MSCOCO, Table 2) | caption R@1 | R@5 | R@10 | mean r | image R@1 | R@5 '
           '| R@10 | mean r |', '|' + '---|' * 9]  # fmt: skip
  for norm in ('none', 'layer'):
    p = PAPER_TABLE2[norm]
    cells = [f'OE + {NAMES[norm]} (paper)', *map(str, p['caption']), *map(str, p['image'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def write_markdown(runs: list[dict], md: pathlib.Path, png: pathlib.Path, command: str) -> str:
  datasets = [d for d in DEV_METRIC if any(r['config']['data'] == d for r in runs)]
  some = runs[0]['config']
  lines = [
    '# Order embeddings with a GRU vs LN-GRU sentence encoder (paper §6.1, Table 2)',
    '',
    'MSCOCO and its VGG features are not on these machines, so the runs here are two '
    "**stand-ins on real data**, never the paper's numbers: (a) SICK entailment as an "
    "order (text to text, as the order-embeddings paper's entailment experiment), and "
    '(b) book-passage retrieval, whose "images" are **synthetic** hashed TF-IDF vectors of '
    '5-sentence passages of ../shared/data/books and whose "captions" are those sentences '
    '(the exact retrieval pipeline, loss, optimizer and metrics of the COCO setting). The '
    "COCO setting itself (`data=coco`, the config's default) runs on a user's COCO files; "
    "the paper's Table 2 is quoted below for reference only.",
    '',
    f'![dev curves]({png.name})',
    '',
    '## Scale (CPU)',
    '',
    f'- Model: {some["embed_dim"]}-d word embeddings, {some["hidden_dim"]}-d GRU / embedding '
    'space (the paper: 300 and 1024). A 1024-d step of batch 128 took about 7 s on these two '
    "shared cores (a 128-d one about 0.3 s), so at the paper's width a run could not leave "
    'its first epoch in the time budget (about 25 minutes for all four runs).',
    '- Optimizer and loop as the original code: its Adam variant (`order_adam`), lr 1e-3, '
    'batch 128, gradients clipped per tensor to norm 2 (books; SICK: by global norm 2, as '
    'the entailment branch of that code), dev evaluation every '
    + ' / '.join(
      sorted({f'{r["config"]["eval_every_steps"]} ({r["config"]["data"]})' for r in runs})
    )  # fmt: skip
    + ' updates (the paper: 300) and at update 0, keeping the best dev model; test '
    'metrics are those of the best dev model.',
    '- One seed (0) per run; the four runs ran one after another, niced, on 2 CPU cores '
    "shared with five other agents' jobs (load average 10-14), so wall times are noisy; "
    'updates are the fairer x axis.',
    '- Books: 10,000 words, sentences cut to 40 ids, 7,199 training passages (11 books), '
    'dev = the first 1,000 passages of persuasion + chesterton-thursday, test = 2 folds of '
    '1,000 passages of mansfieldpark, chesterton-brown, shakespeare-hamlet (whole books held '
    'out). SICK: 4,500 train pairs, threshold on the 500 trial pairs, 4,927 test pairs.',
    '',
  ]
  for data in datasets:
    lines += [f'## {TITLES[data]}', '', *run_table(runs, data), '', 'Dev metric along training:',
              '', *curve_table(runs, data), '']  # fmt: skip
  lines += [
    '## The paper (MSCOCO; not reproduced here)',
    '',
    *paper_table(),
    '',
    'The paper also reports that LN-GRU reached its best validation model in 60% of the '
    "baseline's training time.",
    '',
    '## Reproduce',
    '',
    '```',
    'export LNORM_DATA_DIR=../shared/data',
    'for d in sick books; do for n in none layer; do',
    '  python -m lnorm.main --config=configs/order_embeddings.py:data=$d,norm=$n \\',
    '      --workdir=runs/order_embeddings/$d-$n',
    'done; done',
    command,
    '```',
    '',
  ]
  text = '\n'.join(lines)
  if md.exists() and NOTES_MARKER in md.read_text():  # Keep the hand-written notes.
    text += '\n' + NOTES_MARKER + md.read_text().split(NOTES_MARKER, 1)[1]
  md.write_text(text)
  return text


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+', type=pathlib.Path)
  parser.add_argument('--out', type=pathlib.Path, required=True, help='path without suffix')
  args = parser.parse_args(argv)
  runs = [load_run(p) for p in args.workdirs]
  png, md = args.out.with_suffix('.png'), args.out.with_suffix('.md')
  png.parent.mkdir(parents=True, exist_ok=True)
  plot(runs, png)
  dirs = ' '.join(str(p) for p in args.workdirs)
  command = f'python scripts/order_embeddings_report.py {dirs} --out {args.out}'
  print(write_markdown(runs, md, png, command))
  print(json.dumps({str(r['path']): r['best']['step'] for r in runs}))


if __name__ == '__main__':
  main()

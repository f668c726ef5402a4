"""Figure 5 (NLL against updates and wall time), synthesised samples and tables of
handwriting runs (one workdir per norm).

  python scripts/handwriting_report.py runs/handwriting/hershey-none \
      runs/handwriting/hershey-layer --out results/handwriting

Writes ``OUT.png`` (training and validation NLL per line against updates and against wall
time; LSTM grey, LN-LSTM red), ``OUT_samples.png`` (each run's latest checkpoint writing
the config's sample texts, beside a line of its training data), and the tables (NLL by
evaluated step, throughput, where each sample stopped) into ``OUT.md`` between the lines
``<!-- tables:start -->`` and ``<!-- tables:end -->`` (the prose around them is kept; a
missing file is created with the tables alone). Samples use the latest checkpoint of each
run and a fixed seed.
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

from lnorm.lab.colors import NORM_COLORS as COLORS  # noqa: E402  One colour per norm.

NAMES = {'none': 'LSTM', 'layer': 'LN-LSTM'}
START, END = '<!-- tables:start -->', '<!-- tables:end -->'


def load(workdir: pathlib.Path) -> dict:
  from lnorm.lab.metrics import read_metrics

  return {
    'dir': workdir,
    'config': json.loads((workdir / 'config.json').read_text()),
    'meta': json.loads((workdir / 'data.json').read_text()),
    'rows': read_metrics(workdir),
    'final': json.loads((workdir / 'final.json').read_text())
    if (workdir / 'final.json').exists()
    else None,
  }


def series(run: dict, key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
  rows = [r for r in run['rows'] if key in r]
  return np.array([r[x] for r in rows], float), np.array([r[key] for r in rows], float)


def plot_curves(runs: list[dict], path: pathlib.Path, title: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 6.6), layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 2)
  for i, (key, what) in enumerate([('train/loss', 'training'), ('valid/nll', 'validation')]):
    for j, (x, xlabel) in enumerate([('step', 'updates'), ('wall_s', 'wall time (s)')]):
      ax = axes[i, j]
      for run in runs:
        norm = run['config']['norm']
        xs, ys = series(run, key, x)
        ax.plot(xs, ys, color=COLORS[norm], lw=1.5, label=NAMES[norm], marker='.' if i else None)
      ax.set_xlabel(xlabel)
      ax.set_ylabel(f'{what} NLL (nats per line)')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=110)


def restore(run: dict):
  """The model and parameters of the run's latest checkpoint."""
  import jax.numpy as jnp
  import ml_collections

  from experiments import handwriting as hw
  from lnorm.lab import models, runner

  config = ml_collections.ConfigDict(run['config'])
  meta = run['meta']
  kappa = config.kappa_bias_init
  if kappa is None:
    kappa = -np.log(meta['points_per_char'])
  model = hw.make_model(config, len(meta['alphabet']) + 1, float(kappa))
  wrapped = models.linen(
    model, jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2))
  )
  state, step = runner.restore_checkpoint(run['dir'], config, wrapped.init)
  return model, state.params, step


def plot_samples(runs, texts, bias, max_steps, path: pathlib.Path, seed: int = 0) -> dict:
  """One column per run: a training line, then each text written at ``bias``."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  from experiments import handwriting as hw
  from lnorm.lab.data import iam_ondb

  fig = Figure(figsize=(5.2 * len(runs), 1.25 * (len(texts) + 1) + 0.4), layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(texts) + 1, len(runs), squeeze=False)
  stops = {}
  for j, run in enumerate(runs):
    model, params, step = restore(run)
    norm = run['config']['norm']
    meta = run['meta']
    with np.load(run['dir'] / hw.DATA_FILE) as f:
      strokes, mask, text, text_mask = (
        f[f'train/{k}'] for k in ('strokes', 'mask', 'text', 'text_mask')
      )
    n = int(mask[0].sum())
    real = iam_ondb.to_points(strokes[0, :n], np.asarray(meta['mean']), np.asarray(meta['std']))
    chars = ''.join(meta['alphabet'][i - 1] for i in text[0, : int(text_mask[0].sum())])
    hw.draw_strokes(axes[0, j], real, color='k')
    axes[0, j].set_title(f'training line: {chars!r}', fontsize=8, loc='left')
    traces, lengths = hw.sample_figure(model, params, meta, texts, bias, max_steps, seed)
    stops[norm] = [int(x) for x in lengths]
    for i, (trace, t, length) in enumerate(zip(traces, texts, lengths, strict=True)):
      ax = axes[i + 1, j]
      hw.draw_strokes(ax, trace, color=COLORS[norm])
      done = 'stopped' if length < max_steps else 'hit the step limit'
      ax.set_title(
        f'{NAMES[norm]}, step {step}: {t!r} ({length} points, {done})', fontsize=8, loc='left'
      )
  fig.suptitle(f'Synthesised lines (bias {bias}); Hershey stand-in, not handwriting', fontsize=9)
  fig.savefig(path, dpi=110)
  return stops


def tables(runs: list[dict], stops: dict, texts) -> str:
  out = []
  evals = sorted({r['step'] for run in runs for r in run['rows'] if 'valid/nll' in r})
  head = ['step'] + [
    f'{NAMES[r["config"]["norm"]]} {k}' for r in runs for k in ('train', 'valid', 'valid/pt')
  ]
  out += ['| ' + ' | '.join(head) + ' |', '|' + '---:|' * len(head)]
  for s in evals:
    cells = [str(s)]
    for run in runs:
      by_step = {r['step']: r for r in run['rows']}
      row = by_step.get(s, {})
      train = row.get('train/loss')
      cells += [
        '–' if train is None else f'{train:.1f}',
        f'{row["valid/nll"]:.1f}' if 'valid/nll' in row else '–',
        f'{row["valid/nll_per_point"]:.3f}' if 'valid/nll_per_point' in row else '–',
      ]
    out.append('| ' + ' | '.join(cells) + ' |')
  out += [
    '',
    '| run | steps | wall (s) | lines/s | points/s (real) | points/s (padded) |',
    '|---|---:|---:|---:|---:|---:|',
  ]
  for run in runs:
    final = run['final'] or {}
    rate = final.get('train_examples_per_s') or float('nan')
    meta, config = run['meta'], run['config']
    real = rate * meta['mean_points']['train']
    padded = rate * config['max_points']
    wall = final.get('wall_s', float('nan'))
    out.append(
      f'| {NAMES[config["norm"]]} | {final.get("step", "–")} | {wall:.0f} '
      f'| {rate:.2f} | {real:.0f} | {padded:.0f} |'
    )
  out += [
    '',
    '| run | ' + ' | '.join(repr(t) for t in texts) + ' |',
    '|---|' + '---:|' * len(texts),
  ]
  for norm, lengths in stops.items():
    out.append(f'| {NAMES[norm]} | ' + ' | '.join(str(n) for n in lengths) + ' |')
  return '\n'.join(out) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', type=pathlib.Path)
  parser.add_argument('--out', type=pathlib.Path, required=True)
  parser.add_argument('--bias', type=float, default=None, help='sampling bias (config default)')
  args = parser.parse_args(argv)
  runs = [load(w) for w in args.workdirs]
  runs.sort(key=lambda r: ['none', 'layer'].index(r['config']['norm']))
  config = runs[0]['config']
  stand_in = runs[0]['meta'].get('stand_in')
  data = 'Hershey stand-in (not handwriting)' if stand_in else 'IAM-OnDB'
  title = (
    f'{data}: {len(config["hidden_sizes"])} x {config["hidden_sizes"][0]} LSTM, '
    f'batch {config["batch_size"]}, {config["max_points"]} points'
  )
  args.out.parent.mkdir(parents=True, exist_ok=True)
  plot_curves(runs, args.out.with_suffix('.png'), title)
  texts = [t for t in config['sample_texts'].split('|') if t]
  bias = config['sample_bias'] if args.bias is None else args.bias
  stops = plot_samples(
    runs, texts, bias, config['sample_max_steps'], args.out.parent / f'{args.out.name}_samples.png'
  )
  block = f'{START}\n{tables(runs, stops, texts)}{END}'
  md = args.out.with_suffix('.md')
  text = md.read_text() if md.exists() else f'{START}\n{END}\n'
  if START not in text or END not in text:
    raise SystemExit(f'{md} lacks the markers {START} and {END}.')
  head, rest = text.split(START, 1)
  md.write_text(head + block + rest.split(END, 1)[1])
  print(block)
  return 0


if __name__ == '__main__':
  sys.exit(main())

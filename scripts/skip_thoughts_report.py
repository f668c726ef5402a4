"""Skip-thoughts results: the paper's Table 3 layout, Figure-4-like curves, per-step tables.

  python scripts/skip_thoughts_report.py runs/skip_thoughts/cpu8-{none,layer} \
      --floor 'bag of random words, 300-d, all words=results/senteval_floor.json' \
      --out results/skip_thoughts

Reads each workdir's ``metrics.jsonl`` (the periodic evaluation during training) and its
``senteval-<step>[-raw][-embeddings|-gru_mean][-f<folds>i<inner>n<examples>].json`` files
(``scripts/skip_thoughts_eval.py``).
Only files of the full protocol (10-fold outer and 5-fold inner cross-validation on all
sentences) go into the Table-3 layout. Writes:

* ``OUT.png``: a grid of panels against epochs: the held-out NLL and the periodic SentEval
  scores, each norm in its colour of :data:`lnorm.lab.colors.NORM_COLORS`.
* ``OUT.md``: ``--note`` first, then Table 3 twice (standardized features, this
  project's default, and raw features, as SentEval fits them) with the paper's rows
  and each ``--floor`` beside the runs' checkpoints, the ablations when evaluated (the
  mean of the encoder's states, the mean of the word embeddings; with the full protocol,
  or with the run's periodic one beside the last state's logged scores), the periodic
  scores of every evaluated step, and how far the runs got.
* ``OUT_full.json``: each norm's full-protocol scores (standardized) at its latest
  evaluated checkpoint, ``{"none": {"MR": ..., "SICK_r": ..., ...}, "layer": {...}}``
  (accuracies in percent).
"""

from __future__ import annotations

import json
import pathlib
import re

from lnorm.lab import cli, compare, senteval

PERIODIC = (
  'senteval/MR',
  'senteval/CR',
  'senteval/SUBJ',
  'senteval/MPQA',
  'senteval/TREC',
  'senteval/SICK_r',
  'senteval/SICK_rho',
  'senteval/SICK_mse',
)
HIGHER = tuple(m for m in PERIODIC if m != 'senteval/SICK_mse')
#: The figure's panels (the paper's Figure 4 tasks, and the held-out NLL first).
FIGURE = ('valid/nll', 'senteval/SICK_r', 'senteval/MR', 'senteval/CR', 'senteval/SUBJ',
          'senteval/MPQA')  # fmt: skip
#: Table 3's columns, as keys of ``results/skip_thoughts_full.json`` (TREC after them:
#: not in the paper's table).
COLUMNS = ('SICK_r', 'SICK_rho', 'SICK_mse', 'MR', 'CR', 'SUBJ', 'MPQA', 'TREC')
FULL_PROTOCOL = {'folds': 10, 'inner_folds': 5, 'max_examples': 0}
#: Ba et al. (2016), Table 3: uni-skip GRU encoders of 2400 units on BookCorpus (about
#: 1B words) with SentEval-like evaluation and Kiros et al.'s vocabulary expansion;
#: "Ours" rows trained 1M iterations, the dagger one 1 month (about 1.7M iterations).
PAPER_TABLE3 = {
  'Original [Kiros et al. 2015]': (0.848, 0.778, 0.287, 75.5, 79.3, 92.1, 86.9),
  'Ours (GRU)': (0.842, 0.767, 0.298, 77.3, 81.8, 92.6, 87.9),
  'Ours + LN': (0.854, 0.785, 0.277, 79.5, 82.6, 93.4, 89.0),
  'Ours + LN (1 month)': (0.858, 0.788, 0.270, 79.4, 83.1, 93.7, 89.3),
}
FILE_PATTERN = re.compile(r'senteval-(\d+)(-raw)?(-embeddings|-gru_mean)?(-f\d+i\d+n\d+)?\.json$')


#: How the ablation encoders' rows are named (``experiments.skip_thoughts.ENCODERS``).
ABLATION_NAMES = {
  'embeddings': ' (mean of word embeddings)',
  'gru_mean': ' (mean of encoder states)',
}


def table3_values(metrics: dict) -> dict:
  """Flat SentEval metrics (``senteval/MR``, ...) -> ``{'MR': ..., 'SICK_r': ...}``."""
  return {c: metrics[f'senteval/{c}'] for c in COLUMNS if f'senteval/{c}' in metrics}


def protocol_files(workdir: str | pathlib.Path, protocol: dict = FULL_PROTOCOL) -> dict:
  """``{(standardize, encoder): {step: table3 values}}`` of the files evaluated with
  ``protocol`` (``{'folds', 'inner_folds', 'max_examples'}``; default: the full one)."""
  out: dict = {}
  for path in sorted(pathlib.Path(workdir).glob('senteval-*.json')):
    if not FILE_PATTERN.search(path.name):
      continue
    record = json.loads(path.read_text())
    used = record.get('protocol', {})
    if any(used.get(k) != v for k, v in protocol.items()):
      continue
    key = (used.get('standardize', True), used.get('encoder', 'gru'))
    out.setdefault(key, {})[int(record['step'])] = table3_values(record['metrics'])
  return out


def read_floor(spec: str) -> tuple[str, dict, bool]:
  """``'LABEL=PATH'`` of a ``scripts/senteval_baseline.py --json`` file -> (label, values,
  standardized: False for a ``--raw`` file, which belongs in the raw-features table)."""
  label, sep, path = spec.rpartition('=')
  if not sep or not label:
    raise SystemExit(f'--floor takes LABEL=PATH, got {spec!r}')
  record = json.loads(pathlib.Path(path).read_text())
  standardized = not record.get('args', {}).get('raw', False)
  return label, table3_values(senteval.flat_metrics(record['results'])), standardized


def epoch_of(run: compare.RunData, step: int) -> float | None:
  """The epoch a run logged at ``step`` (``None`` if it logged no row there)."""
  return next((r['epoch'] for r in run.rows if r['step'] == step), None)


def encoder_name(run: compare.RunData) -> str:
  """``'GRU'`` or ``'LN-GRU'`` (``norm=...`` for any other norm) of a run's encoder."""
  norm = compare.field_value(run, 'norm')
  return {'none': 'GRU', 'layer': 'LN-GRU'}.get(norm, f'norm={norm}')


def training_label(run: compare.RunData, step: int) -> str:
  """``'step 1734 (2.00 epochs)'`` (the epoch when the run logged a row at ``step``)."""
  epoch = epoch_of(run, step)
  return f'step {step}' + ('' if epoch is None else f' ({epoch:.2f} epochs)')


def format_cell(column: str, value: float | None) -> str:
  if value is None:
    return '–'
  return f'{value:.3f}' if column.startswith('SICK') else f'{value:.1f}'


def table3(rows: list[tuple[str, str, dict]]) -> str:
  """Markdown in Table 3's layout: ``rows`` of (method, training, {column: value})."""
  head = ['method', 'training', 'SICK r', 'SICK ρ', 'SICK MSE', 'MR', 'CR', 'SUBJ', 'MPQA', 'TREC']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for method, training, values in rows:
    cells = [format_cell(c, values.get(c)) for c in COLUMNS]
    lines.append(f'| {method} | {training} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def run_rows(runs, full: dict, key: tuple) -> list[tuple[str, str, dict]]:
  """Table-3 rows of every run's checkpoints evaluated with ``key`` = (standardize, encoder)."""
  rows = []
  for run in sorted(runs, key=lambda r: str(compare.field_value(r, 'norm'))):
    name = encoder_name(run) + ABLATION_NAMES.get(key[1], '')
    for step, values in sorted(full[run.name].get(key, {}).items()):
      rows.append((f'{name}, this project', training_label(run, step), values))
  return rows


def periodic_protocol(run: compare.RunData) -> dict:
  """The protocol of a run's periodic SentEval points (its config's ``senteval_*`` fields)."""
  return {k: compare.field_value(run, f'senteval_{k}') for k in FULL_PROTOCOL}


def periodic_ablation_rows(runs) -> list[tuple[str, str, dict]]:
  """Rows of the ablation encoders evaluated with a run's periodic protocol, each after the
  last-state scores the run logged at that step (same protocol, same subsets)."""
  rows = []
  for run in sorted(runs, key=lambda r: str(compare.field_value(r, 'norm'))):
    files = protocol_files(run.path, periodic_protocol(run))
    name = encoder_name(run)
    steps = sorted({s for (std, enc), v in files.items() if std and enc != 'gru' for s in v})
    for step in steps:
      training = training_label(run, step)
      logged = next((r for r in run.rows if r['step'] == step and 'senteval/MR' in r), None)
      if logged is not None:
        rows.append((f'{name}, this project', training, table3_values(logged)))
      for encoder in ABLATION_NAMES:
        if step in files.get((True, encoder), {}):
          values = files[(True, encoder)][step]
          rows.append((f'{name}{ABLATION_NAMES[encoder]}, this project', training, values))
  return rows


def paper_rows() -> list[tuple[str, str, dict]]:
  training = 'BookCorpus, full size'
  return [
    (f'{name} (paper)', training, dict(zip(COLUMNS[:7], values, strict=True)))
    for name, values in PAPER_TABLE3.items()
  ]


def final_scores(runs, full: dict) -> dict:
  """``{norm: values}`` at each run's latest full-protocol checkpoint (standardized, GRU)."""
  out = {}
  for run in runs:
    evaluated = full[run.name].get((True, 'gru'), {})
    if evaluated:
      out[str(compare.field_value(run, 'norm'))] = evaluated[max(evaluated)]
  return out


def per_step_table(runs, metrics) -> str:
  """One row per (norm, evaluated step): the periodic SentEval scores and valid/nll."""
  head = ['norm', 'step', 'epoch', *[m.split('/')[-1] for m in metrics], 'valid/nll']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for run in sorted(runs, key=lambda r: str(compare.field_value(r, 'norm'))):
    for row in run.rows:
      if metrics[0] not in row:
        continue
      cells = [str(compare.field_value(run, 'norm')), str(row['step']), f'{row["epoch"]:.3f}']
      for m in metrics:
        v = row.get(m)
        cells.append('–' if v is None else (f'{v:.3f}' if 'SICK' in m else f'{v:.1f}'))
      nll = row.get('valid/nll')
      cells.append('–' if nll is None else f'{nll:.3f}')
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def progress_table(runs) -> str:
  """Per run: steps, epochs, wall time, train sentences/s, finished."""
  lines = [
    '| run | norm | steps | epochs | wall (min) | train sentences/s | finished |',
    '|---|---|---|---|---|---|---|',
  ]
  for run in runs:
    last = run.rows[-1]
    speed = (run.final or {}).get('train_examples_per_s')
    lines.append(
      f'| {run.name} | {compare.field_value(run, "norm")} | {last["step"]} | '
      f'{last["epoch"]:.3f} | {last["wall_s"] / 60:.1f} | '
      f'{"–" if speed is None else f"{speed:.1f}"} | {"yes" if run.final else "no"} |'
    )
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='results/skip_thoughts')
  parser.add_argument('--floor', action='append', default=[], help='LABEL=PATH, repeatable')
  parser.add_argument('--note', default='', help='a paragraph (Markdown) put first in OUT.md')
  args = parser.parse_args(argv)
  runs = compare.load_runs(args.workdirs)
  full = {run.name: protocol_files(run.path) for run in runs}
  floors = [read_floor(spec) for spec in args.floor]
  floor_rows = {
    std: [(label, 'no training', values) for label, values, s in floors if s == std]
    for std in (True, False)
  }

  have = compare.available_metrics(runs)
  groups = compare.group_runs(runs, ('norm',), ())
  figure = [m for m in FIGURE if m in have]
  png = compare.plot(
    groups, figure, 'epoch', args.out + '.png', ('norm',), (), grid_columns=3,
    title='Skip-thoughts on the 1.1M-word book stand-in, CPU scale (not BookCorpus)',
  )  # fmt: skip

  md = [args.note.strip() + '\n' if args.note else '']
  for standardize, title in ((True, 'standardized features'), (False, 'raw features')):
    rows = run_rows(runs, full, (standardize, 'gru'))
    if not rows:
      continue
    md += [f'## Table 3 layout, full protocol, {title}\n']
    md += [table3(paper_rows() + floor_rows[standardize] + rows)]
  ablation = run_rows(runs, full, (True, 'embeddings')) + run_rows(runs, full, (True, 'gru_mean'))
  if ablation:
    md += [
      '## Ablation: the last state against the mean of the encoder’s states and the mean of '
      'the model’s own word embeddings (standardized)\n'
    ]
    md += [table3(floor_rows[True] + ablation + run_rows(runs, full, (True, 'gru')))]
  quick = periodic_ablation_rows(runs)
  if quick:
    protocol = periodic_protocol(runs[0])
    md += [
      '## Ablation with the periodic protocol (standardized; MR/CR/SUBJ/MPQA on stratified '
      f'subsets of {protocol["max_examples"]:,} sentences, {protocol["folds"]}-fold CV, '
      f'{protocol["inner_folds"]}-fold inner; SICK whole): the last state as logged, the '
      'mean of the encoder states, the mean of the word embeddings\n'
    ]
    md += [table3(quick)]
  periodic = [m for m in PERIODIC if m in have]
  if periodic:
    summaries = compare.summarize(groups, periodic, HIGHER)
    md += ['## Periodic evaluation: best and last value per norm (lnorm.lab.compare)\n']
    md += [compare.markdown_table(summaries, periodic, ('norm',), ())]
    md += ['## Periodic evaluation: every evaluated step\n', per_step_table(runs, periodic)]
  md += ['## How far the runs got\n', progress_table(runs)]
  pathlib.Path(args.out + '.md').write_text('\n'.join(md))
  final = final_scores(runs, full)
  full_json = pathlib.Path(args.out + '_full.json')
  if final:
    full_json.write_text(json.dumps(final, indent=1) + '\n')
  print('\n'.join(md))
  print(f'wrote {png}, {args.out}.md' + (f' and {full_json}' if final else ''))


if __name__ == '__main__':
  main()

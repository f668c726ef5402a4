"""Figure-4-like curves and Table-3-like tables of skip-thoughts runs (lnorm.lab.compare).

  python scripts/skip_thoughts_report.py runs/skip_thoughts/cpu-none runs/skip_thoughts/cpu-layer \
      --out results/skip_thoughts

Writes ``OUT.png`` (SentEval scores against training steps, one line per norm, drawn by
:func:`lnorm.lab.compare.plot`) and ``OUT.md``: the comparison tool's table (best and last
value per norm), then the scores of every evaluated step per norm, the training
throughput and how far each run got. ``--note`` prepends a paragraph to ``OUT.md``.
"""

import pathlib

from lnorm.lab import cli, compare

METRICS = (
  'senteval/MR',
  'senteval/CR',
  'senteval/SUBJ',
  'senteval/MPQA',
  'senteval/TREC',
  'senteval/SICK_r',
  'senteval/SICK_rho',
  'senteval/SICK_mse',
)
HIGHER = tuple(m for m in METRICS if m != 'senteval/SICK_mse')


def per_step_table(runs, metrics) -> str:
  """One row per (norm, evaluated step): the SentEval scores and valid/nll."""
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
  parser.add_argument('--note', default='', help='a paragraph (Markdown) put first in OUT.md')
  args = parser.parse_args(argv)
  runs = compare.load_runs(args.workdirs)
  have = compare.available_metrics(runs)
  metrics = [m for m in METRICS if m in have]
  groups = compare.group_runs(runs, ('norm',), ())
  png = compare.plot(
    groups, metrics, 'step', args.out + '.png', ('norm',), (),
    title='Skip-thoughts, CPU scale: SentEval vs steps',
  )  # fmt: skip
  summaries = compare.summarize(groups, metrics, HIGHER)
  table = compare.markdown_table(summaries, metrics, ('norm',), ())
  md = [args.note.strip() + '\n' if args.note else '']
  md += ['## Best and last value per norm (lnorm.lab.compare)\n', table]
  md += ['## Every evaluated step\n', per_step_table(runs, metrics)]
  md += ['## How far the runs got\n', progress_table(runs)]
  pathlib.Path(args.out + '.md').write_text('\n'.join(md))
  print('\n'.join(md))
  print(f'wrote {png} and {args.out}.md')


if __name__ == '__main__':
  main()

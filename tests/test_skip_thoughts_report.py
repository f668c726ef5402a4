"""scripts/skip_thoughts_report.py: Table 3 from full-protocol files, the full JSON, the grid."""

import json

import pytest

from scripts import skip_thoughts_report as report

FULL = {'folds': 10, 'inner_folds': 5, 'max_examples': 0}


def metrics(base):
  """Flat SentEval metrics as evaluate_checkpoint writes them, offset by ``base``."""
  return {
    'senteval/MR': 50 + base, 'senteval/CR': 60 + base, 'senteval/SUBJ': 70 + base,
    'senteval/MPQA': 72 + base, 'senteval/TREC': 40 + base, 'senteval/SICK_r': 0.5 + base / 100,
    'senteval/SICK_rho': 0.4 + base / 100, 'senteval/SICK_mse': 0.8 - base / 100,
  }  # fmt: skip


def write_run(root, norm, steps, offset):
  d = root / f'cpu-{norm}'
  d.mkdir()
  periodic = {'senteval_folds': 5, 'senteval_inner_folds': 2, 'senteval_max_examples': 2000}
  (d / 'config.json').write_text(json.dumps({'norm': norm, 'seed': 0, **periodic}))
  rows = []
  for s in [0, *steps]:
    rows.append({'step': s, 'epoch': s / 100, 'examples': 64 * s, 'wall_s': 2.0 * s,
                 'valid/nll': 9.0 - s / 100 - offset, **metrics(offset + s / 100)})  # fmt: skip
  (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))

  def evaluated(name, step, protocol, base):
    record = {'step': step, 'protocol': protocol, 'metrics': metrics(base)}
    (d / name).write_text(json.dumps(record))

  for s in steps:
    evaluated(f'senteval-{s}.json', s, {**FULL, 'standardize': True, 'encoder': 'gru'}, offset + s)
  last = steps[-1]
  evaluated(f'senteval-{last}-raw.json', last, {**FULL, 'standardize': False}, offset - 1)
  evaluated(f'senteval-{last}-embeddings.json', last, {**FULL, 'encoder': 'embeddings'}, -5)
  evaluated(f'senteval-{last}-gru_mean.json', last, {**FULL, 'encoder': 'gru_mean'}, -7)
  # A quick-protocol file (5 folds on a subset) stays out of Table 3.
  evaluated('senteval-999.json', 999, {'folds': 5, 'inner_folds': 2, 'max_examples': 2000}, 30)
  # An ablation with the run's periodic protocol goes beside the last state's logged scores.
  quick = {'folds': 5, 'inner_folds': 2, 'max_examples': 2000, 'standardize': True}
  evaluated(f'senteval-{last}-gru_mean-f5i2n2000.json', last, {**quick, 'encoder': 'gru_mean'}, 40)
  return d


def test_report_table3_full_json_and_grid(tmp_path):
  runs = [write_run(tmp_path, 'none', [100, 200], 0), write_run(tmp_path, 'layer', [100, 200], 2)]
  floor = tmp_path / 'floor.json'
  floor.write_text(json.dumps({'results': {
    'MR': {'accuracy': 62.8}, 'SICK': {'pearson': 0.725, 'spearman': 0.6, 'mse': 0.5},
  }}))  # fmt: skip
  floor_raw = tmp_path / 'floor_raw.json'
  floor_raw.write_text(json.dumps({'args': {'raw': True}, 'results': {'MR': {'accuracy': 61.0}}}))
  out = tmp_path / 'out' / 'st'
  out.parent.mkdir()
  report.main([*map(str, runs), '--floor', f'bag, 300-d={floor}', '--floor',
               f'raw bag={floor_raw}', '--out', str(out)])  # fmt: skip

  final = json.loads((tmp_path / 'out' / 'st_full.json').read_text())
  assert set(final) == {'none', 'layer'}
  assert set(final['layer']) == {'MR', 'CR', 'SUBJ', 'MPQA', 'TREC', 'SICK_r', 'SICK_rho',
                                 'SICK_mse'}  # fmt: skip
  assert final['none']['MR'] == 50 + 200 and final['layer']['MR'] == 50 + 202  # latest step
  md = (tmp_path / 'out' / 'st.md').read_text()
  std = md.split('## Table 3 layout, full protocol, standardized features')[1].split('##')[0]
  assert '| Ours + LN (paper) | BookCorpus, full size | 0.854 | 0.785 | 0.277 | 79.5 |' in std
  assert '| bag, 300-d | no training | 0.725 | 0.600 | 0.500 | 62.8 | – |' in std
  assert '| LN-GRU, this project | step 100 (1.00 epochs) | 1.520 |' in std
  assert 'step 999' not in md  # not the full protocol
  raw = md.split('raw features')[1].split('##')[0]
  assert '| GRU, this project | step 200 (2.00 epochs) | 0.490 |' in raw
  assert 'bag, 300-d' not in raw  # a standardized floor stays out of the raw table
  assert '| raw bag | no training |' in raw and 'raw bag' not in std
  ablation = md.split('## Ablation')[1].split('##')[0]
  assert (
    '| GRU (mean of word embeddings), this project | step 200 (2.00 epochs) | 0.450 |' in ablation
  )
  assert '| LN-GRU (mean of encoder states), this project | step 200 (2.00 epochs) | 0.430 |' in (
    ablation
  )
  assert '| LN-GRU, this project | step 200 (2.00 epochs) |' in ablation  # the last state beside
  quick = md.split('## Ablation with the periodic protocol')[1].split('##')[0]
  assert 'subsets of 2,000 sentences, 5-fold CV, 2-fold inner' in quick
  lines = [line for line in quick.splitlines() if line.startswith('| GRU')]
  assert lines[0].startswith('| GRU, this project | step 200 (2.00 epochs) | 0.520 |'), lines
  assert lines[1].startswith(
    '| GRU (mean of encoder states), this project | step 200 (2.00 epochs) | 0.900 |'
  )
  png = (tmp_path / 'out' / 'st.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'


def test_floor_spec_errors(tmp_path):
  with pytest.raises(SystemExit, match='LABEL=PATH'):
    report.read_floor(str(tmp_path / 'x.json'))

"""lnorm.lab.compare: table values from fake workdirs with known numbers, grouping, PNG, errors."""

import json
import math
import pathlib

import numpy as np
import pytest

from lnorm.lab import colors, compare


def make_run(root, name, config, rows, final=None, extra_line=None):
  """A fake workdir: config.json, metrics.jsonl (+ a raw last line), final.json when given."""
  d = root / name
  d.mkdir(parents=True)
  (d / 'config.json').write_text(json.dumps(config))
  text = ''.join(json.dumps(r) + '\n' for r in rows)
  (d / 'metrics.jsonl').write_text(text + (extra_line or ''))
  if final is not None:
    (d / 'final.json').write_text(json.dumps(final))
  return d


def row(epoch, **metrics):
  """A metrics row at ``epoch`` (100 steps and 12,800 examples per epoch)."""
  step = int(round(epoch * 100))
  out = {'step': step, 'epoch': epoch, 'examples': step * 128, 'wall_s': 2.0 * step}
  out.update({k.replace('__', '/'): v for k, v in metrics.items()})
  return out


# Known curves: test/nll = base[norm] / epoch + 0.1 * seed, test/error = nll / 10.
BASE = {'batch': 1.0, 'layer': 0.5}


def nll(norm, bs, seed, epoch):
  return BASE[norm] * (1 + (bs == 4)) / epoch + 0.1 * seed


@pytest.fixture
def runs_dir(tmp_path):
  for norm in ('layer', 'batch'):
    for bs in (128, 4):
      for seed in (0, 1, 2):
        rows = []
        for epoch in (1, 2, 3, 4):
          v = nll(norm, bs, seed, epoch)
          rows.append(row(epoch - 0.5, train__loss=v + 0.05))
          rows.append(row(epoch, train__loss=v, test__nll=v, test__error=v / 10, train__lr=0.1))
        config = {'norm': norm, 'batch_size': bs, 'seed': seed, 'optim': {'lr': 1e-3}}
        make_run(tmp_path, f'{norm}-bs{bs}-s{seed}', config, rows, final={'step': 400})
  (tmp_path / 'notes.txt').write_text('not a run')
  return tmp_path


def load(runs_dir, **kw):
  warnings = []
  runs = compare.load_runs(sorted(runs_dir.iterdir()), warn=warnings.append)
  groups = compare.group_runs(runs, warn=warnings.append, **kw)
  return runs, groups, warnings


def test_grouping_sorted_by_panel_then_colour(runs_dir):
  runs, groups, warnings = load(runs_dir)
  assert len(runs) == 12
  assert warnings == [f'{runs_dir / "notes.txt"}: not a directory; skipped.']
  assert [(g.panel, g.color, len(g.runs)) for g in groups] == [
    ((4,), ('batch',), 3),
    ((4,), ('layer',), 3),
    ((128,), ('batch',), 3),
    ((128,), ('layer',), 3),
  ]
  assert {r.config['seed'] for r in groups[0].runs} == {0, 1, 2}


def test_summary_values_exact(runs_dir):
  _, groups, _ = load(runs_dir)
  metrics = ['test/nll', 'test/error', 'train/loss']
  summaries = compare.summarize(groups, metrics)
  s = summaries[1]  # batch size 4, layer norm: nll = 1.0 / epoch + 0.1 * seed.
  assert (s.group.panel, s.group.color) == ((4,), ('layer',))
  seeds = np.array([0.0, 0.1, 0.2])
  best, final = 1.0 / 4 + seeds, 1.0 / 4 + seeds  # Decreasing curves: best = last.
  assert s.best['test/nll'].mean == pytest.approx(best.mean(), abs=1e-12)
  assert s.best['test/nll'].std == pytest.approx(0.1, abs=1e-12)  # Sample std (ddof=1).
  assert (s.best['test/nll'].min, s.best['test/nll'].max) == pytest.approx((0.25, 0.45))
  assert s.final['test/nll'].mean == pytest.approx(final.mean(), abs=1e-12)
  assert s.final['test/error'].mean == pytest.approx(final.mean() / 10, abs=1e-12)
  assert s.best['train/loss'].mean == pytest.approx(0.25 + 0.1, abs=1e-12)  # Epoch 4, no +0.05.
  assert s.seeds == 3 and s.finished == 3 and s.diverged == 0
  assert s.epochs.min == s.epochs.max == 4.0
  b = summaries[2]  # batch size 128, batch norm: nll = 1.0 / epoch + 0.1 * seed.
  assert b.final['test/nll'].mean == pytest.approx(0.25 + 0.1, abs=1e-12)


def test_best_is_max_for_accuracy(tmp_path):
  make_run(
    tmp_path, 'a', {'norm': 'layer'}, [row(1, test__accuracy=0.9), row(2, test__accuracy=0.8)]
  )
  runs = compare.load_runs([tmp_path / 'a'])
  s = compare.summarize(compare.group_runs(runs, panel_by=()), ['test/accuracy'])[0]
  assert s.best['test/accuracy'].mean == 0.9 and s.final['test/accuracy'].mean == 0.8
  s = compare.summarize(compare.group_runs(runs, panel_by=()), ['test/accuracy'], maximize=[])[0]
  assert s.best['test/accuracy'].mean == 0.8


def test_markdown_table(runs_dir):
  _, groups, _ = load(runs_dir)
  summaries = compare.summarize(groups, ['test/nll'])
  table = compare.markdown_table(summaries, ['test/nll'], ['norm'], ['batch_size'], digits=3)
  lines = table.splitlines()
  assert (
    lines[0] == '| batch_size | norm | seeds | epochs | finished | test/nll best | test/nll final |'
  )
  assert lines[2] == '| 4 | batch | 3 | 4 | 3/3 | 0.6 ± 0.1 (0.5–0.7) | 0.6 ± 0.1 (0.5–0.7) |'
  assert (
    lines[5]
    == '| 128 | layer | 3 | 4 | 3/3 | 0.225 ± 0.1 (0.125–0.325) | 0.225 ± 0.1 (0.125–0.325) |'
  )
  assert len(lines) == 6


def test_aggregate_mean_and_range_over_seeds(runs_dir):
  _, groups, _ = load(runs_dir)
  xs, mean, lo, hi, count = compare.aggregate(groups[1].runs, 'test/nll', 'epoch')
  np.testing.assert_array_equal(xs, [1, 2, 3, 4])
  np.testing.assert_allclose(mean, 1.0 / xs + 0.1, atol=1e-12)
  np.testing.assert_allclose(lo, 1.0 / xs, atol=1e-12)
  np.testing.assert_allclose(hi, 1.0 / xs + 0.2, atol=1e-12)
  np.testing.assert_array_equal(count, [3, 3, 3, 3])
  xs, *_ = compare.aggregate(groups[1].runs, 'test/nll', 'examples')
  np.testing.assert_array_equal(xs, [12800, 25600, 38400, 51200])


def test_aggregate_different_grids_interpolates_inside_each_run(tmp_path):
  make_run(tmp_path, 'a', {}, [row(0, m=0.0), row(2, m=2.0)])
  make_run(tmp_path, 'b', {}, [row(0, m=1.0), row(1, m=1.0), row(2, m=1.0), row(3, m=5.0)])
  runs = compare.load_runs([tmp_path / 'a', tmp_path / 'b'])
  xs, mean, lo, hi, count = compare.aggregate(runs, 'm', 'epoch')
  np.testing.assert_array_equal(xs, [0, 1, 2, 3])
  np.testing.assert_allclose(mean, [0.5, 1.0, 1.5, 5.0])  # a at epoch 1: interpolated to 1.0.
  np.testing.assert_allclose(lo, [0.0, 1.0, 1.0, 5.0])
  np.testing.assert_allclose(hi, [1.0, 1.0, 2.0, 5.0])
  np.testing.assert_array_equal(count, [2, 2, 2, 1])


def test_nan_strings_truncated_line_and_diverged(tmp_path):
  rows = [row(1, test__nll=0.5), row(2, test__nll=0.3), row(3, test__nll='nan')]
  make_run(tmp_path, 'd', {'norm': 'batch'}, rows, final={'diverged': True}, extra_line='{"st')
  run = compare.load_run(tmp_path / 'd')
  assert len(run.rows) == 3  # The cut-off last line is dropped.
  s = compare.summarize(compare.group_runs([run], panel_by=()), ['test/nll'])[0]
  assert s.best['test/nll'].mean == 0.3
  assert math.isnan(s.final['test/nll'].mean)
  assert s.diverged == 1
  table = compare.markdown_table([s], ['test/nll'], ['norm'], [])
  assert '| batch | 1 | 3 | 1/1 (1 diverged) | 0.3 | nan |' in table


def test_nested_config_fields_and_mixed_group_warning(tmp_path):
  make_run(tmp_path, 'a', {'model': {'norm': 'layer'}, 'lr': 1.0, 'seed': 0}, [row(1, m=1.0)])
  make_run(tmp_path, 'b', {'model': {'norm': 'layer'}, 'lr': 2.0, 'seed': 1}, [row(1, m=3.0)])
  warnings = []
  runs = compare.load_runs([tmp_path / 'a', tmp_path / 'b'])
  assert compare.field_value(runs[0], 'norm') == 'layer'
  assert compare.field_value(runs[0], 'model.norm') == 'layer'
  assert compare.field_value(runs[0], 'batch_size') is None
  groups = compare.group_runs(runs, warn=warnings.append)
  assert len(groups) == 1 and groups[0].panel == (None,)
  assert warnings == ['norm=layer, batch_size=None: its runs differ in lr.']


def test_plot_writes_png(runs_dir, tmp_path):
  _, groups, _ = load(runs_dir)
  out = compare.plot(
    groups, ['test/nll', 'test/error'], 'epoch', tmp_path / 'out' / 'c.png', logy=True
  )
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='x must be one of step, epoch, examples, wall_s'):
    compare.plot(groups, ['test/nll'], 'time', tmp_path / 'x.png')


def test_plot_grid_columns_lays_metrics_out_in_a_grid(runs_dir, tmp_path):
  import struct

  _, groups, _ = load(runs_dir)
  groups = [g for g in groups if g.panel == groups[0].panel]  # one panel value
  metrics = ['test/nll', 'test/error', 'test/nll']

  def size(path):  # PNG width and height, from the IHDR chunk.
    return struct.unpack('>II', path.read_bytes()[16:24])

  column = compare.plot(groups, metrics, 'epoch', tmp_path / 'column.png')
  grid = compare.plot(groups, metrics, 'epoch', tmp_path / 'grid.png', grid_columns=2)
  (cw, ch), (gw, gh) = size(column), size(grid)
  assert ch > 2 * cw  # 3 x 1
  assert gw > gh and abs(gw - 2 * cw) <= 2 and abs(gh - ch * 2 / 3) <= 2  # 2 x 2, one hidden


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    compare.load_runs([tmp_path / 'nope'])
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'metrics.jsonl').write_text('')
  (tmp_path / 'bare').mkdir()
  warnings = []
  with pytest.raises(ValueError, match='no runs with metrics among the 2 paths'):
    compare.load_runs([tmp_path / 'empty', tmp_path / 'bare'], warn=warnings.append)
  assert warnings == [
    f'{tmp_path / "empty"}: metrics.jsonl is empty. Skipped.',
    f'{tmp_path / "bare"}: no metrics.jsonl (not a run, or not started). Skipped.',
  ]
  make_run(tmp_path, 'r', {}, [row(1, train__loss=1.0, test__nll=2.0)])
  runs = compare.load_runs([tmp_path / 'r'])
  with pytest.raises(
    ValueError, match=r'no run logged test/error; the runs have: test/nll, train/loss'
  ):
    compare.check_metrics(runs, ['test/nll', 'test/error'])


def test_command_line(runs_dir, tmp_path, capsys):
  out = tmp_path / 'results' / 'pmnist'
  paths = [str(p) for p in sorted(runs_dir.iterdir())]
  rc = compare.main([*paths, '--metrics', 'test/nll,test/error', '--x', 'epoch', '--out', str(out)])
  assert rc == 0
  assert (tmp_path / 'results' / 'pmnist.png').stat().st_size > 1000
  md = (tmp_path / 'results' / 'pmnist.md').read_text()
  assert '| batch_size | norm | seeds | epochs | finished | test/nll best' in md
  assert '| 128 | layer | 3 | 4 | 3/3 | 0.225 ± 0.1 (0.125–0.325) |' in md
  captured = capsys.readouterr()
  assert md in captured.out
  assert 'notes.txt: not a directory; skipped.' in captured.err
  compare.main([paths[0], '--out', str(out)])  # Default metrics: all but lr, grad_norm.
  assert '| 128 | batch | 1 | 4 | 1/1 | 0.025 | 0.025 | 0.25 | 0.25 | 0.25 | 0.25 |' in (
    out.with_suffix('.md').read_text()
  )
  with pytest.raises(SystemExit) as e:
    compare.main([*paths, '--metrics', 'test/acc', '--out', str(out)])
  assert e.value.code == 2
  assert 'compare.py: error: no run logged test/acc' in capsys.readouterr().err


def test_each_norm_keeps_its_colour_in_every_figure():

  assert len(set(colors.NORM_COLORS.values())) == len(colors.NORM_COLORS)
  assert colors.norm_color('layer') == colors.NORM_COLORS['layer']
  assert colors.norm_color('mystery', 1) not in colors.NORM_COLORS.values()


def test_norm_colours_are_defined_in_one_place():
  # Every figure takes a norm's colour from lnorm.lab.colors; a copy elsewhere drifts.
  root = pathlib.Path(__file__).resolve().parents[1]
  hexes = {c.lower() for c in colors.NORM_COLORS.values()}
  offenders = []
  for folder in ('lnorm', 'experiments', 'scripts', 'configs'):
    for path in (root / folder).rglob('*.py'):
      if path.name == 'colors.py':
        continue
      text = path.read_text().lower()
      offenders += [f'{path.relative_to(root)}: {h}' for h in hexes if h in text]
  assert not offenders, offenders

"""scripts/sweep.py: run names, dry runs, skipping finished runs, with a fake runner."""

import importlib.util
import json
import pathlib
import stat
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('sweep', REPO_ROOT / 'scripts' / 'sweep.py')
sweep = importlib.util.module_from_spec(_spec)
sys.modules['sweep'] = sweep  # dataclasses look their module up there.
_spec.loader.exec_module(sweep)

CONFIG = """
def get_sweep(arg=None):
  seeds = int(arg.split('=')[1]) if arg else 1
  return ['norm=layer,batch_size=4'] + [{'norm': 'batch', 'seed': s} for s in range(seeds)]
"""

# A stand-in for the Python interpreter: `FAKE -m lnorm.main --config=... --workdir=W ...`
# records its arguments in W/calls.txt, then writes W/final.json (or fails for 'fail' runs).
FAKE_PYTHON = """#!/bin/sh
for a in "$@"; do case "$a" in --workdir=*) W="${a#--workdir=}";; esac; done
echo "$@" >> "$W/calls.txt"
echo "output of $W"
case "$(basename "$W")" in *fail*) exit 3;; esac
echo '{"step": 1}' > "$W/final.json"
"""


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / 'cfg.py'
  path.write_text(CONFIG)
  return path


@pytest.fixture
def fake_python(tmp_path):
  path = tmp_path / 'fakepython'
  path.write_text(FAKE_PYTHON)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


@pytest.mark.parametrize(
  'arg,name',
  [
    ('norm=layer,batch_size=4', 'norm-layer_batch_size-4'),
    ('norm=batch,seed=1,smoke', 'norm-batch_seed-1_smoke'),
    ('data_dir=/a b/c', 'data_dir--a-b-c'),
    ('', 'default'),
  ],
)
def test_arg_to_name(arg, name):
  assert sweep.arg_to_name(arg) == name


def test_entries_and_load_sweep(config_file):
  assert sweep.entry_to_arg({'norm': 'batch', 'seed': 0, 'smoke': True}) == (
    'norm=batch,seed=0,smoke=True'
  )
  with pytest.raises(TypeError, match='must be a str or a dict'):
    sweep.entry_to_arg(3)
  assert sweep.load_sweep(str(config_file)) == (
    str(config_file),
    ['norm=layer,batch_size=4', 'norm=batch,seed=0'],
  )
  _, args = sweep.load_sweep(f'{config_file}:seeds=3')
  assert args[1:] == ['norm=batch,seed=0', 'norm=batch,seed=1', 'norm=batch,seed=2']
  with pytest.raises(FileNotFoundError, match='nope.py not found'):
    sweep.load_sweep('nope.py')


def test_plan_rejects_colliding_names(tmp_path):
  with pytest.raises(ValueError, match='same workdir name norm-a'):
    sweep.plan_runs(['norm=a', 'norm a'], tmp_path)
  runs = sweep.plan_runs(['norm=a', 'norm=b'], tmp_path, pattern='-b$')
  assert [r.name for r in runs] == ['norm-b']


def test_dry_run_statuses_and_overrides(tmp_path, config_file, capsys):
  root = tmp_path / 'runs'
  (root / 'norm-layer_batch_size-4').mkdir(parents=True)
  (root / 'norm-layer_batch_size-4' / 'final.json').write_text('{}')
  (root / 'norm-batch_seed-0').mkdir()  # Started, not finished: resumed.
  argv = [f'--config={config_file}:seeds=2', f'--root={root}', '--dry_run']
  assert sweep.main([*argv, '--config.num_epochs=5', '--config.model.eps=1e-6']) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f'3 runs under {root}: 1 new, 1 resume, 1 done'
  assert out[1].startswith('skip (done)  norm-layer_batch_size-4: ')
  assert out[2].startswith('resume       norm-batch_seed-0: ')
  assert out[3] == (
    f'new          norm-batch_seed-1: {sys.executable} -m lnorm.main '
    f'--config={config_file}:norm=batch,seed=1 --workdir={root}/norm-batch_seed-1 '
    '--config.num_epochs=5 --config.model.eps=1e-6'
  )
  assert not (root / 'norm-batch_seed-1').exists()  # A dry run creates nothing.


def test_unknown_flag_is_refused(config_file, tmp_path, capsys):
  with pytest.raises(SystemExit):
    sweep.main([f'--config={config_file}', f'--root={tmp_path}', '--epochs=3'])
  assert 'only --config.x=y are passed on' in capsys.readouterr().err


@pytest.mark.parametrize('parallel', [1, 2])
def test_runs_skip_finished_and_resume(tmp_path, config_file, fake_python, parallel, capfd):
  root = tmp_path / 'runs'
  done = root / 'norm-layer_batch_size-4'
  done.mkdir(parents=True)
  (done / 'final.json').write_text('{}')
  argv = [f'--config={config_file}:seeds=2', f'--root={root}', f'--python={fake_python}']
  argv += [f'--parallel={parallel}', '--config.num_epochs=2']
  assert sweep.main(argv) == 0
  assert not (done / 'calls.txt').exists()  # Finished: not run again.
  for seed in (0, 1):
    w = root / f'norm-batch_seed-{seed}'
    calls = (w / 'calls.txt').read_text().splitlines()
    assert calls == [
      f'-m lnorm.main --config={config_file}:norm=batch,seed={seed} --workdir={w} '
      '--config.num_epochs=2'
    ]
    assert json.loads((w / 'final.json').read_text()) == {'step': 1}
    # N > 1 runs log to WORKDIR/sweep.log; one at a time they print to the terminal.
    assert (w / 'sweep.log').exists() == (parallel > 1)
  if parallel > 1:
    assert (root / 'norm-batch_seed-0' / 'sweep.log').read_text().startswith('output of')
  assert sweep.main(argv) == 0  # Everything finished now: nothing runs.
  assert len((root / 'norm-batch_seed-0' / 'calls.txt').read_text().splitlines()) == 1
  assert 'skip   norm-batch_seed-1 (finished' in capfd.readouterr().out
  assert sweep.main([*argv, '--rerun_finished']) == 0
  assert len((done / 'calls.txt').read_text().splitlines()) == 1


def test_failed_runs_are_reported(tmp_path, fake_python, capsys):
  runs = sweep.plan_runs(['norm=ok', 'norm=fail'], tmp_path)
  command = lambda run: sweep.build_command('cfg.py', run, (), str(fake_python))
  lines = []
  results = sweep.run_sweep(runs, command, parallel=2, echo=lines.append)
  assert results == {'norm-ok': 0, 'norm-fail': 3}
  assert any('FAILED (diverged) norm-fail' in ln and 'sweep.log' in ln for ln in lines)
  assert results['norm-ok'] == 0  # The other run carried on.
  with pytest.raises(ValueError, match='parallel must be at least 1'):
    sweep.run_sweep(runs, command, parallel=0)


def test_dry_run_of_the_pmnist_sweep(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  argv = ['--config=configs/pmnist.py:seeds=2,data=embedded', f'--root={tmp_path}', '--dry_run']
  assert sweep.main(argv) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith(f'12 runs under {tmp_path}: 12 new')
  assert any('norm-layer_batch_size-4_seed-1_data-embedded' in ln for ln in out)


@pytest.mark.parametrize(
  'argv, expect',
  [
    (['--config=configs/nope.py', '--root=R'], 'config file configs/nope.py not found'),
    (['--config=configs/pmnist.py:foo=1', '--root=R'], "unknown config arg 'foo'"),
  ],
)
def test_sweep_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, expect):
  assert sweep.main([a.replace('R', str(tmp_path)) for a in argv]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and expect in err[0]
  with pytest.raises(SystemExit) as e:
    sweep.main(['--config=configs/pmnist.py', f'--root={tmp_path}', '--bogus'])
  assert e.value.code == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compare_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
  from lnorm.lab import compare

  (tmp_path / 'empty').mkdir()
  for paths in ([str(tmp_path / 'missing')], [str(tmp_path / 'empty')]):
    with pytest.raises(SystemExit) as e:
      compare.main(paths)
    assert e.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if 'error:' in ln]
    assert len(errors) == 1 and 'compare.py: error:' in errors[0]

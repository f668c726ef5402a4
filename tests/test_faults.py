"""Fault injection on the pMNIST smoke config: signals, damaged checkpoints, full disks,
divergence, a shared workdir, malformed metrics, and command-line mistakes.

In-process runs (``runner.run`` on the embedded subset) where the fault can be made
from outside; ``python -m lnorm.main`` in a subprocess where the exit code, the one
line on stderr, or a signal is what is tested.
"""

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pmnist as pmnist_config
from experiments import pmnist
from lnorm.lab import checkpoints, metrics, optimizers, runner, sharding, workdir

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VOLATILE = ('wall_s', 'train_examples_per_s', 'num_devices')


@pytest.fixture(scope='module')
def data():
  return pmnist.load_data(pmnist_config.get_config('smoke'))


def _config(**fields):
  """Smoke pMNIST, 8 steps, a checkpoint every 2 steps (all kept)."""
  config = pmnist_config.get_config('smoke,norm=layer')
  config.checkpoint_every_steps, config.keep_checkpoints = 2, 10
  config.update(fields)
  return config


def _train(config, path, data):
  mesh = sharding.make_mesh()
  return runner.run(config, path, pmnist.make_experiment(config, path, mesh, data), mesh=mesh)


def _stable(row):
  return {k: v for k, v in row.items() if k not in VOLATILE}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data):
  path = tmp_path_factory.mktemp('reference')
  final = _train(_config(), path, data)
  return final, metrics.read_metrics(path)


def _assert_like_reference(path, final, reference):
  ref_final, ref_rows = reference
  assert _stable(final) == _stable(ref_final)
  assert [_stable(r) for r in metrics.read_metrics(path)] == [_stable(r) for r in ref_rows]


# ------------------------------------------------------------------------------------------
# Damaged checkpoints: each kind is reported, moved aside, and the run falls back.


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  f = _largest_file(step_dir / 'state')
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete_metadata(step_dir):
  (step_dir / 'state' / '_METADATA').unlink()


def _delete_state(step_dir):
  shutil.rmtree(step_dir / 'state')


def _overwrite_bytes(step_dir):
  f = _largest_file(step_dir / 'state')
  raw = bytearray(f.read_bytes())
  start = len(raw) // 3
  raw[start : start + 4096] = np.random.default_rng(0).bytes(4096)[: len(raw) - start]
  size = f.stat().st_size
  f.write_bytes(bytes(raw))
  assert f.stat().st_size == size  # The size does not give it away.


@pytest.mark.parametrize('damage', [_truncate, _delete_metadata, _delete_state, _overwrite_bytes])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_run_falls_back(
  tmp_path, data, reference, damage, caplog
):
  config = _config(num_epochs=1)  # Steps 2 and 4 checkpointed.
  _train(config, tmp_path, data)
  damage(tmp_path / 'checkpoints' / '4')
  with caplog.at_level(logging.WARNING):
    final = _train(_config(), tmp_path, data)  # Resumes to 8 steps from step 2.
  warnings = [r.getMessage() for r in caplog.records if 'damaged' in r.getMessage()]
  assert len(warnings) == 1 and 'checkpoint of step 4 is damaged' in warnings[0]
  assert '\n' not in warnings[0] and 'moved to' in warnings[0]
  moved = list((tmp_path / checkpoints.DAMAGED_DIR).iterdir())
  assert len(moved) == 1 and moved[0].name.startswith('4-')  # Kept, not deleted.
  assert final['diverged'] is False  # Damage is never recorded as divergence.
  _assert_like_reference(tmp_path, final, reference)


def test_a_checkpoint_whose_arrays_changed_fails_its_digest(tmp_path, data):
  _train(_config(num_epochs=1), tmp_path, data)
  exp = pmnist.make_experiment(_config(), tmp_path, sharding.make_mesh(), data)
  params, model_state = exp.init(jax.random.key(0))
  tx, _ = optimizers.make_optimizer(_config(), 8)
  like = runner.TrainState(jnp.int32(0), params, model_state, tx.init(params))
  ckpt = checkpoints.Checkpointer(tmp_path / 'checkpoints')
  state, meta = ckpt.restore(4, like)
  ckpt.close()
  assert meta['digest'] == checkpoints.tree_digest(state)
  bias = np.array(state.params['logits']['bias'])
  bias[0] = np.nextafter(bias[0], np.float32(1))  # One value off by one ulp.
  state.params['logits']['bias'] = bias
  assert checkpoints.tree_digest(state) != meta['digest']


def test_no_intact_checkpoint_names_the_directory(tmp_path, data):
  _train(_config(num_epochs=1), tmp_path, data)
  for step in (2, 4):
    _delete_metadata(tmp_path / 'checkpoints' / str(step))
  with pytest.raises(checkpoints.CheckpointError, match='no intact checkpoint in .*checkpoints'):
    _train(_config(), tmp_path, data)


# ------------------------------------------------------------------------------------------
# A checkpoint writer that fails.


def test_a_full_disk_stops_the_run_and_keeps_what_was_written(tmp_path, data, monkeypatch):
  save = checkpoints.Checkpointer.save
  calls = []

  def failing_save(self, step, state, meta):
    calls.append(step)
    if step == 6:
      raise checkpoints.CheckpointError(
        f'cannot write the checkpoint of step {step}: {os.strerror(errno.ENOSPC)}'
      )
    return save(self, step, state, meta)

  def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  # The error as orbax raises it, through the real save: the message is one line.
  ckpt = checkpoints.Checkpointer(tmp_path / 'probe')
  monkeypatch.setattr(ckpt._manager, 'save', enospc)
  with pytest.raises(checkpoints.CheckpointError, match='No space left on device') as err:
    ckpt.save(1, {'w': np.zeros(2)}, {})
  assert '\n' not in str(err.value)
  ckpt.close()

  monkeypatch.setattr(checkpoints.Checkpointer, 'save', failing_save)
  with pytest.raises(checkpoints.CheckpointError, match='step 6'):
    _train(_config(), tmp_path / 'run', data)
  monkeypatch.undo()
  kept = checkpoints.Checkpointer(tmp_path / 'run' / 'checkpoints')
  assert kept.all_steps() == [2, 4]
  kept.close()
  assert [r['step'] for r in metrics.read_metrics(tmp_path / 'run')] == [2, 4, 6]


# ------------------------------------------------------------------------------------------
# Metrics files.


def test_a_malformed_metrics_row_is_skipped_with_a_warning_and_later_rows_kept(tmp_path, caplog):
  path = tmp_path / workdir.METRICS_FILE
  rows = [{'step': s, 'epoch': s / 4, 'examples': s, 'wall_s': 0.1} for s in (1, 2, 3)]
  lines = [json.dumps(rows[0]), '{"step": 2, "ep', json.dumps(rows[1]), json.dumps(rows[2])]
  path.write_text('\n'.join(lines) + '\n')
  with caplog.at_level(logging.WARNING):
    got = metrics.read_metrics(tmp_path)
  assert [r['step'] for r in got] == [1, 2, 3]
  assert any(
    f'{path}:2: skipping a malformed metrics row' in r.getMessage() for r in caplog.records
  )
  metrics.truncate_metrics(tmp_path, 2)  # What a resume from step 2 does.
  assert [r['step'] for r in metrics.read_metrics(tmp_path)] == [1, 2]


# ------------------------------------------------------------------------------------------
# The workdir lock.


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_holder(tmp_path, data):
  with (
    workdir.WorkdirLock(tmp_path),
    pytest.raises(workdir.WorkdirError, match=f'in use by process {os.getpid()} on'),
  ):
    _train(_config(), tmp_path, data)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, data, caplog):
  proc = subprocess.Popen(
    [sys.executable, '-c', 'import time; from lnorm.lab.workdir import WorkdirLock; '
     f'lock = WorkdirLock({str(tmp_path)!r}).acquire(); print("locked", flush=True); '
     'time.sleep(60)'],
    stdout=subprocess.PIPE, text=True,
  )  # fmt: skip
  try:
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir.WorkdirError, match=f'process {proc.pid}'):
      _train(_config(num_epochs=1), tmp_path, data)
  finally:
    proc.kill()
    proc.wait()
  assert str(proc.pid) in (tmp_path / workdir.LOCK_FILE).read_text()  # The stale file stays.
  with caplog.at_level(logging.INFO):
    final = _train(_config(num_epochs=1), tmp_path, data)
  assert final['step'] == 4
  assert any('stale lock' in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------
# Through the command line: signals, exit codes, one-line errors.


def _cli(args, workdir_path, env_extra=None, **kwargs):
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env.update(env_extra or {})
  cmd = [sys.executable, '-m', 'lnorm.main', f'--workdir={workdir_path}', *args]
  return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, text=True, **kwargs)


def _one_line_error(stderr: str) -> str:
  errors = [line for line in stderr.splitlines() if 'lnorm.main: error:' in line]
  assert len(errors) == 1, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  return errors[0]


# Batch 4: 128 steps, 64 per call; a checkpoint every 32.
SIGNAL_ARG = '--config=configs/pmnist.py:smoke,norm=layer,batch_size=4,epochs=4'


@pytest.fixture(scope='module')
def signal_reference(tmp_path_factory):
  path = tmp_path_factory.mktemp('signal_ref')
  proc = _cli([SIGNAL_ARG, '--config.steps_per_call=4'], path, stderr=subprocess.PIPE)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  return json.loads((path / 'final.json').read_text()), metrics.read_metrics(path)


@pytest.mark.slow
@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_the_rerun_ends_like_an_uninterrupted_run(
  tmp_path, signal_reference, sig, code
):
  args = [SIGNAL_ARG, '--config.steps_per_call=4']
  proc = _cli(args, tmp_path, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 240
  while not (tmp_path / workdir.METRICS_FILE).exists() or not metrics.read_metrics(tmp_path):
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.02)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == code, stderr[-2000:]
  line = _one_line_error(stderr)
  assert 'interrupted at step' in line and 'checkpoint saved' in line
  step = int(line.split('interrupted at step ')[1].split(';')[0])
  assert 0 < step < 512
  kept = checkpoints.Checkpointer(tmp_path / 'checkpoints')
  assert kept.latest_step() == step  # Saved at the step reached, not the last cadence point.
  kept.close()
  proc = _cli(args, tmp_path, stderr=subprocess.PIPE)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  final = json.loads((tmp_path / 'final.json').read_text())
  _assert_like_reference(tmp_path, final, signal_reference)


def test_a_diverged_run_exits_3_with_the_step(tmp_path):
  proc = _cli(['--config=configs/pmnist.py:smoke,lr=1e30'], tmp_path, stderr=subprocess.PIPE)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == runner.EXIT_DIVERGED == 3
  line = _one_line_error(stderr)
  assert 'diverged at step' in line
  assert json.loads((tmp_path / 'final.json').read_text())['diverged'] is True


@pytest.mark.parametrize(
  'args, workdir_kind, expect',
  [
    (['--config=configs/pmnist.py:smoke', '--config.nrom=layer'], 'new',
     "unknown config field 'nrom' (--config.nrom=...); did you mean 'norm'?"),
    (['--config=configs/pmnist.py:smoke'], 'file', 'is a file, not a directory'),
    (['--config=configs/pmnist.py:smoke'], 'under_file', 'cannot use --workdir'),
    (['--config=configs/pmnist.py:smoke'], '/proc/lnorm-test', 'cannot use --workdir'),
    (['--config=configs/pmnist.py:smoke,norm=lyer'], 'new', "unknown norm 'lyer'"),
    (['--config=configs/nope.py'], 'new', 'cannot load --config'),
    (['--config=configs/pmnist.py:data=idx,data_dir=/nonexistent/mnist'], 'new', 'data=embedded'),
  ],
)  # fmt: skip
def test_command_line_mistakes_are_one_line_and_exit_2(tmp_path, args, workdir_kind, expect):
  if workdir_kind == 'new':
    path = tmp_path / 'run'
  elif workdir_kind == 'file':
    path = tmp_path / 'a-file'
    path.write_text('')
  elif workdir_kind == 'under_file':
    (tmp_path / 'a-file').write_text('')
    path = tmp_path / 'a-file' / 'run'
  else:
    path = pathlib.Path(workdir_kind)
  proc = _cli(args, path, stderr=subprocess.PIPE)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 2, stderr[-2000:]
  assert expect in _one_line_error(stderr)


def test_a_run_logs_a_summary_line_not_the_config_nor_backend_probes(tmp_path):
  proc = _cli(['--config=configs/pmnist.py:smoke,epochs=1'], tmp_path, stderr=subprocess.PIPE)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  assert 'Unable to initialize backend' not in stderr
  assert 'hidden_sizes' not in stderr  # The config is in config.json, not the log.
  assert 'pmnist: norm=layer batch_size=128 steps=4' in stderr
  assert len(stderr.splitlines()) < 15, stderr


def test_a_rerun_with_the_old_length_never_goes_past_it(tmp_path, data, reference):
  """Checkpoints past ``num_steps`` (a signal after the last cadence point, then a rerun of the
  old command): the run resumes within its length and ends as the uninterrupted one."""
  _train(_config(num_epochs=3), tmp_path, data)  # Checkpoints at 2, 4, ..., 12.
  (tmp_path / 'final.json').unlink()
  for step in (12, 10):
    shutil.rmtree(tmp_path / 'checkpoints' / str(step))  # Leaves 2..8 and: the newest is 8.
  ckpt = checkpoints.Checkpointer(tmp_path / 'checkpoints')
  assert ckpt.latest_step() == 8
  ckpt.close()
  final = _train(_config(num_epochs=1), tmp_path, data)  # 4 steps: 6 and 8 are past the end.
  assert final['step'] == 4 and not final['diverged']
  assert [r['step'] for r in metrics.read_metrics(tmp_path)] == [2, 4]
  with pytest.raises(ValueError, match='holds checkpoints only past'):
    for step in (2, 4):
      shutil.rmtree(tmp_path / 'checkpoints' / str(step))
    (tmp_path / 'final.json').unlink()
    _train(_config(num_epochs=1), tmp_path, data)

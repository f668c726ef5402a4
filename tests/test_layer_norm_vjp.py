"""The hand-written derivatives of layer_norm against autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

from lnorm import functional as F

RNG = np.random.default_rng(4)

CASES = [
  ((16, 32), (-1,)),
  ((4, 6, 8), (1, 2)),
  ((3, 5, 7), (0, 2)),
  ((5, 4, 3), (0,)),
  ((2, 3, 4, 5), (1, 3)),
  ((7,), (0,)),
]


def _inputs(shape, axes, dtype=jnp.float32, mean=2.0, spread=3.0):
  pshape = tuple(shape[a] for a in axes)
  x = jnp.asarray(RNG.standard_normal(shape) * spread + mean, dtype)
  g = jnp.asarray(RNG.standard_normal(pshape) + 1.0, jnp.float32)
  b = jnp.asarray(RNG.standard_normal(pshape), jnp.float32)
  dy = jnp.asarray(RNG.standard_normal(shape), dtype)
  return x, g, b, dy


def _vjp(fn, x, g, b, dy, axes):
  y, pullback = jax.vjp(lambda x, g, b: fn(x, g, b, axis=axes), x, g, b)
  return (y, *pullback(dy))


def _assert_close(got, want, rtol, atol):
  for a, w in zip(got, want, strict=True):
    assert a.dtype == w.dtype and a.shape == w.shape
    np.testing.assert_allclose(
      np.asarray(a, np.float64), np.asarray(w, np.float64), rtol=rtol, atol=atol
    )


@pytest.mark.parametrize(('shape', 'axes'), CASES)
def test_gradients_match_autodiff_float32(shape, axes):
  x, g, b, dy = _inputs(shape, axes)
  got = jax.jit(lambda *a: _vjp(F.layer_norm, *a, axes))(x, g, b, dy)
  want = jax.jit(lambda *a: _vjp(F.layer_norm_reference, *a, axes))(x, g, b, dy)
  _assert_close(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(('shape', 'axes'), CASES)
def test_gradients_match_autodiff_float64_exactly(shape, axes):
  with jax.enable_x64(True):
    x, g, b, dy = (a.astype(jnp.float64) for a in _inputs(shape, axes))
    got = _vjp(F.layer_norm, x, g, b, dy, axes)
    want = _vjp(F.layer_norm_reference, x, g, b, dy, axes)
    _assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_large_mean_keeps_precision():
  # Mean 1e4, spread 1: float32 itself limits every formula to ~1e-3 here; a
  # one-pass E[x^2] - E[x]^2 variance would be off by O(1).
  x, g, b, dy = _inputs((8, 256), (1,), mean=1e4, spread=1.0)
  got = _vjp(F.layer_norm, x, g, b, dy, (1,))
  autodiff = _vjp(F.layer_norm_reference, x, g, b, dy, (1,))
  with jax.enable_x64(True):
    exact = _vjp(F.layer_norm_reference, *(a.astype(jnp.float64) for a in (x, g, b, dy)), (1,))
    exact = [np.asarray(e) for e in exact]
  for a, r, e in zip(got, autodiff, exact, strict=True):
    err = np.abs(np.asarray(a, np.float64) - e).max()
    err_autodiff = np.abs(np.asarray(r, np.float64) - e).max()
    assert err < 1e-2 and err <= 4 * err_autodiff + 1e-6, (err, err_autodiff)


@pytest.mark.parametrize('seed', [0, 1])
def test_gradients_exact_at_any_offset(seed):
  # Mean 1e4 +- 100 per row, spread 1e-2 (so 1/sigma ~ 100): against float64 math on the same
  # float32 inputs. Measured: every output within 1.5e-7 of its largest reference value (y
  # 5.3e-7, dx 6.5e-5 absolute); before the pivot 3e-3 to 2.5e-2 (dx 1.35, dscale 0.72).
  # Bound 1e-6 relative (~7x margin).
  rng = np.random.default_rng(seed)
  x = (1e4 + rng.uniform(-100, 100, (64, 1)) + 1e-2 * rng.standard_normal((64, 512))).astype(
    np.float32
  )
  g = (1 + 0.1 * rng.standard_normal(512)).astype(np.float32)
  b = (0.1 * rng.standard_normal(512)).astype(np.float32)
  dy = rng.standard_normal((64, 512)).astype(np.float32)
  with jax.enable_x64(True):
    args64 = (jnp.asarray(a, jnp.float64) for a in (x, g, b, dy))
    exact = [np.asarray(e) for e in _vjp(F.layer_norm_reference, *args64, (1,))]
  for fn in (F.layer_norm, F.layer_norm_reference):
    got = jax.jit(lambda *a, fn=fn: _vjp(fn, *a, (1,)))(x, g, b, dy)
    for name, a, e in zip(('y', 'dx', 'dscale', 'dbias'), got, exact, strict=True):
      err = np.abs(np.asarray(a, np.float64) - e).max()
      assert err < 1e-6 * np.abs(e).max(), (fn.__name__, name, err)


@pytest.mark.parametrize('axes', [(1, 2), (0, 2), (2,)])
def test_check_grads_order_2_float64(axes):
  with jax.enable_x64(True):
    x = jnp.asarray(RNG.standard_normal((3, 4, 5)) * 2 + 1)
    pshape = tuple(x.shape[a] for a in axes)
    g = jnp.asarray(RNG.standard_normal(pshape))
    b = jnp.asarray(RNG.standard_normal(pshape))
    check_grads(lambda x, g, b: F.layer_norm(x, g, b, axis=axes), (x, g, b), order=2, eps=1e-4)
    check_grads(lambda x: F.layer_norm(x, axis=axes), (x,), order=2, eps=1e-4)


def test_second_derivatives_match_autodiff_in_every_mode():
  with jax.enable_x64(True):
    x, g, b, _ = (a.astype(jnp.float64) for a in _inputs((3, 4, 5), (1, 2)))

    def loss(fn):
      return lambda x, g, b: jnp.sum(jnp.sin(fn(x, g, b, axis=(1, 2))))

    want = jax.hessian(loss(F.layer_norm_reference), argnums=(0, 1, 2))(x, g, b)
    got = {
      'fwd-rev': jax.hessian(loss(F.layer_norm), argnums=(0, 1, 2))(x, g, b),
      'rev-rev': jax.jacrev(jax.grad(loss(F.layer_norm), argnums=(0, 1, 2)), argnums=(0, 1, 2))(
        x, g, b
      ),
      'fwd-fwd': jax.jacfwd(jax.jacfwd(loss(F.layer_norm), argnums=(0, 1, 2)), argnums=(0, 1, 2))(
        x, g, b
      ),
    }
    for mode, h in got.items():
      for a, w in zip(jax.tree.leaves(h), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-10, err_msg=mode)


def test_jvp_matches_autodiff():
  x, g, b, _ = _inputs((6, 10), (1,))
  tangents = tuple(jnp.asarray(RNG.standard_normal(a.shape), a.dtype) for a in (x, g, b))
  got = jax.jvp(F.layer_norm, (x, g, b), tangents)
  want = jax.jvp(F.layer_norm_reference, (x, g, b), tangents)
  _assert_close(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
  ('with_scale', 'with_bias'), [(False, False), (True, False), (False, True)]
)
def test_missing_scale_or_bias(with_scale, with_bias):
  x, g, b, dy = _inputs((8, 16), (1,))
  g = g if with_scale else None
  b = b if with_bias else None
  got = _vjp(F.layer_norm, x, g, b, dy, (1,))
  want = _vjp(F.layer_norm_reference, x, g, b, dy, (1,))
  assert (got[2] is None) == (g is None) and (got[3] is None) == (b is None)
  _assert_close([a for a in got if a is not None], [a for a in want if a is not None], 2e-5, 2e-5)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_use_float32_math(dtype):
  x, g, b, dy = _inputs((32, 64), (1,), dtype=dtype)
  got = jax.jit(lambda *a: _vjp(F.layer_norm, *a, (1,)))(x, g, b, dy)
  assert got[0].dtype == dtype and got[1].dtype == dtype
  assert got[2].dtype == jnp.float32 and got[3].dtype == jnp.float32
  # Against float64 math on the same (rounded) inputs: only the final rounding differs.
  with jax.enable_x64(True):
    want = _vjp(F.layer_norm_reference, *(a.astype(jnp.float64) for a in (x, g, b, dy)), (1,))
  ulp = float(jnp.finfo(dtype).eps)
  for a, w in zip(got, want, strict=True):
    w = np.asarray(w)
    tol = 2 * ulp * np.abs(w).max() if a.dtype == dtype else 1e-4 * np.abs(w).max()
    np.testing.assert_allclose(np.asarray(a, np.float64), w, rtol=0, atol=tol)


def test_parameters_keep_their_dtype():
  x, g, b, dy = _inputs((4, 8), (1,))
  _, dx, dg, db = _vjp(F.layer_norm, x, g.astype(jnp.bfloat16), b.astype(jnp.float16), dy, (1,))
  assert dx.dtype == jnp.float32 and dg.dtype == jnp.bfloat16 and db.dtype == jnp.float16


def test_jit_and_vmap_compose():
  x, g, b, dy = _inputs((3, 8, 16), (1, 2))

  def grads(fn, x):
    return jax.grad(lambda x, g, b: jnp.sum(fn(x, g, b, axis=-1) * dy[0, 0]), argnums=(0, 1, 2))(
      x, g[0], b[0]
    )

  got = jax.jit(jax.vmap(lambda x: grads(F.layer_norm, x)))(x)
  want = jax.vmap(lambda x: grads(F.layer_norm_reference, x))(x)
  _assert_close(got, want, 2e-5, 2e-5)


def test_residuals_are_the_input_and_three_numbers_per_case(capsys):
  x = jnp.ones((64, 32), jnp.bfloat16)
  print_saved_residuals(F.layer_norm, x, jnp.ones(32), jnp.zeros(32))
  lines = capsys.readouterr().out.strip().splitlines()
  shapes = sorted(line.split(' ')[0] for line in lines)
  # x in its own dtype, the gain (its gradient path), and per case the pivot, mean and rstd.
  want = ['bf16[64,32]', 'f32[1,32]', 'f32[64,1]', 'f32[64,1]', 'f32[64,1]']
  assert shapes == sorted(want), lines


def test_a_missing_term_would_be_caught(monkeypatch):
  # The comparisons above must be able to fail: drop dx's xhat * mean(g * xhat) term. (In the
  # XLA path's rule; the CPU kernel computes its own, see tests/test_layer_norm_kernel.py.)
  monkeypatch.setenv('LNORM_LAYER_NORM_KERNEL', 'xla')
  x, g, b, dy = _inputs((16, 32), (1,))
  want = _vjp(F.layer_norm_reference, x, g, b, dy, (1,))
  _assert_close(_vjp(F.layer_norm, x, g, b, dy, (1,)), want, 2e-5, 2e-5)

  def tangent_without_term(axes, mode, x, scale, pivot, mean, rstd, x_dot, scale_dot, bias_dot):
    xhat = (x - jnp.mean(x, axis=axes, keepdims=True)) * rstd
    xd = x_dot - jnp.mean(x_dot, axis=axes, keepdims=True)
    y_dot = scale * rstd * xd + scale_dot * xhat + bias_dot
    return y_dot.astype(x.dtype)

  monkeypatch.setattr(F, '_layer_norm_tangent', tangent_without_term)
  with pytest.raises(AssertionError):
    _assert_close(_vjp(F.layer_norm, x, g, b, dy, (1,)), want, 2e-5, 2e-5)


def test_values_and_errors_unchanged():
  x, g, b, _ = _inputs((4, 8), (1,))
  # Equal up to float32 rounding (the fused mean is shifted by the first value).
  np.testing.assert_allclose(
    F.layer_norm(x, g, b), F.layer_norm_reference(x, g, b), rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match='scale has shape'):
    F.layer_norm(x, jnp.ones(7))
  with pytest.raises(ValueError, match='out of range'):
    F.layer_norm(x, axis=2)

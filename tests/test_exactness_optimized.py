"""Exactness under XLA's optimizing compiler (the rest of the suite compiles with most
optimizations off, for speed): layer norm at a large offset, the LN cells against float64,
and multi-axis batch-norm statistics against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnorm import cells
from lnorm import functional as F
from lnorm import recurrent as R


def test_layer_norm_at_mean_1e4_with_optimizations(optimized):
  rng = np.random.default_rng(0)
  x = 1e4 + rng.uniform(-100, 100, (64, 1)) + 1e-2 * rng.standard_normal((64, 512))
  g, b = rng.uniform(0.5, 1.5, 512), rng.normal(size=512)
  mu = x.mean(-1, keepdims=True)
  want = g * (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) + b
  xf, gf, bf = (np.asarray(a, np.float32) for a in (x, g, b))
  got = jax.jit(F.layer_norm)(xf, gf, bf)
  # Measured 6e-7 here; the float32 input itself is rounded to ulp(1e4)/2 = 5e-4 before the
  # call, so the reference uses the rounded x: the bound is the function's own error.
  x32 = xf.astype(np.float64)
  mu32 = x32.mean(-1, keepdims=True)
  want32 = g * (x32 - mu32) / np.sqrt(((x32 - mu32) ** 2).mean(-1, keepdims=True) + 1e-5) + b
  assert np.abs(np.asarray(got) - want32).max() < 1e-5
  assert np.abs(want32 - want).max() < 0.2  # (What the rounding of x itself costs.)
  dx = jax.jit(jax.grad(lambda x: jnp.sum(F.layer_norm(x, gf, bf) * bf)))(xf)
  assert bool(jnp.all(jnp.isfinite(dx)))


@pytest.mark.parametrize('make', [lambda: R.LSTMCell(16, norm='layer'), lambda: R.GRUCell(16)])
def test_ln_cells_in_float32_match_float64_with_optimizations(optimized, make):
  cell = make()
  x = jax.random.normal(jax.random.key(0), (4, 8))
  carry = cell.initialize_carry(jax.random.key(1), x.shape)
  params = cell.init(jax.random.key(2), carry, x)
  step = jax.jit(lambda p, c, x: cell.apply(p, c, x))
  carry32, y32 = carry, None
  for _ in range(5):
    carry32, y32 = step(params, carry32, x)
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    c64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), carry)
    cell64 = cell.clone(dtype=jnp.float64, param_dtype=jnp.float64)
    for _ in range(5):
      c64, y64 = cell64.apply(p64, c64, jnp.asarray(x, jnp.float64))
    y64 = np.asarray(y64)
  # Five steps of float32 against float64: measured 1.8e-7 (LSTM); bound with a 25x margin.
  np.testing.assert_allclose(np.asarray(y32), y64, atol=5e-6)
  assert cells.lstm_step is not None  # The equations under test are lnorm.cells' (one place).


@pytest.mark.parametrize('unbiased', [False, True])
def test_multi_axis_batch_norm_statistics_against_numpy(unbiased):
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, 2.0, (4, 5, 6)).astype(np.float32)
  scale, bias = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.normal(size=6).astype(np.float32)
  y, mean, var = F.batch_norm_train(x, scale, bias, batch_axes=(0, 1), unbiased=unbiased)
  x64 = x.astype(np.float64)
  want_mean = x64.mean((0, 1))
  want_var = x64.var((0, 1), ddof=1 if unbiased else 0)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
  np.testing.assert_allclose(var, want_var, rtol=1e-5)
  want_y = scale * (x64 - want_mean) / np.sqrt(want_var + 1e-5) + bias
  np.testing.assert_allclose(y, want_y, atol=2e-5)

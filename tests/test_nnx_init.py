"""NNX's own initializers, checked by value (not only shape), and nnx.Bidirectional by value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm import nnx as lnnx

D, H = 5, 6


def _blocks(kernel, n):
  return np.split(np.asarray(kernel), n, axis=-1)


@pytest.mark.parametrize('forget_bias', [0.0, 1.0])
def test_lstm_init_forget_bias_orthogonal_blocks_and_ln_gains(forget_bias):
  cell = lnnx.LSTMCell(D, H, norm='layer', forget_bias=forget_bias, rngs=nnx.Rngs(0))
  bias = np.asarray(cell.bias[...])
  np.testing.assert_array_equal(bias[:H], forget_bias)  # [f; i; o; g]: f first.
  np.testing.assert_array_equal(bias[H:], 0.0)
  for block in _blocks(cell.recurrent_kernel[...], 4):  # Each H x H gate block orthogonal.
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
  blocks = _blocks(cell.recurrent_kernel[...], 4)
  assert not np.allclose(blocks[0], blocks[1])  # Independent draws per gate.
  w = np.asarray(cell.input_kernel[...])  # LeCun normal: variance 1 / fan_in.
  assert w.shape == (D, 4 * H) and 0.3 / D < w.var() < 3.0 / D
  for ln in (cell.ln_h, cell.ln_x, cell.ln_c):
    np.testing.assert_array_equal(ln.scale[...], 1.0)
    np.testing.assert_array_equal(ln.bias[...], 0.0)


def test_gru_init_blocks_and_ln_gains():
  cell = lnnx.GRUCell(D, H, norm='layer', rngs=nnx.Rngs(0))
  for block in _blocks(cell.recurrent_kernel[...], 2):
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
  u = np.asarray(cell.candidate_recurrent_kernel[...])
  np.testing.assert_allclose(u.T @ u, np.eye(H), atol=1e-5)
  for ln in (cell.ln_h, cell.ln_x, cell.ln_cx, cell.ln_ch):
    np.testing.assert_array_equal(ln.scale[...], 1.0)
    np.testing.assert_array_equal(ln.bias[...], 0.0)
  plain = lnnx.GRUCell(D, H, norm='none', rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(plain.bias[...], 0.0)
  np.testing.assert_array_equal(plain.candidate_bias[...], 0.0)


def test_bnlstm_init_gammas_are_0_1_and_population_statistics_start_at_0_and_1():
  cell = lnnx.BNLSTMCell(D, H, max_steps=7, rngs=nnx.Rngs(0))
  for bn in (cell.bn_h, cell.bn_x, cell.bn_c):
    np.testing.assert_array_equal(bn.scale[...], np.float32(0.1))  # Cooijmans et al.
    np.testing.assert_array_equal(bn.mean[...], 0.0)
    np.testing.assert_array_equal(bn.var[...], 1.0)
    assert bn.mean[...].shape[0] == 7
  assert cell.bn_h.bias is None and cell.bn_x.bias is None  # b carries the shift.
  np.testing.assert_array_equal(cell.bn_c.bias[...], 0.0)


def test_bidirectional_is_a_forward_and_a_reversed_pass():
  """Each half equals its own RNN: forward as is, backward on each sequence reversed."""
  x = jax.random.normal(jax.random.key(3), (3, 5, D))
  lengths = jnp.array([5, 2, 3])
  fwd = nnx.RNN(lnnx.LSTMCell(D, H, rngs=nnx.Rngs(0)))
  bwd = nnx.RNN(lnnx.GRUCell(D, H, rngs=nnx.Rngs(1)))
  y = nnx.Bidirectional(fwd, bwd)(x, seq_lengths=lengths)
  np.testing.assert_allclose(y[..., :H], fwd(x, seq_lengths=lengths), atol=1e-6)
  for b, n in enumerate(lengths.tolist()):
    rev = x[b : b + 1, :n][:, ::-1]
    want = bwd(rev)[0, ::-1]  # The backward outputs, back in time order.
    np.testing.assert_allclose(y[b, :n, H:], want, atol=1e-5)

"""The fused LN-LSTM / LN-GRU state updates (lnorm.fused_cells, lnorm/csrc/recurrent_cells.cc).

Checked against the paper's equations written out in float64 numpy (forward, and
gradients by central differences of that reference), against the XLA formulas
(forward, gradients, forward mode, second derivatives, vmap), and through the cells:
an LN cell with the kernel gives the same outputs and gradients as with
``LNORM_LAYER_NORM_KERNEL=xla``. Tests that need the compiled kernel skip where it
cannot be built (``test_layer_norm_kernel.test_kernel_builds_where_it_can`` fails then).
"""

import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm import _ffi, fused_cells
from lnorm import nnx as lnnx
from lnorm import recurrent as R

AVAILABLE, DETAIL = _ffi.layer_norm_kernel()
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f'CPU kernel unavailable: {DETAIL}')
EPS = 1e-5


# The paper's equations in float64 numpy (independent of lnorm).
def _ln64(v, gain, bias):
  v = np.asarray(v, np.float64)
  mu = v.mean(-1, keepdims=True)
  sigma = np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + EPS)
  return gain * (v - mu) / sigma + bias


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def lstm64(wh, wx, c, a1, b1, a2, b2, b, a3, b3):
  """Eqs. (20)-(22) after the matrix products."""
  f, i, o, g = np.split(_ln64(wh, a1, b1) + _ln64(wx, a2, b2) + b, 4, axis=-1)
  c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  return c_new, _sigmoid(o) * np.tanh(_ln64(c_new, a3, b3))


def gru64(wh, wx, cx, ch, h, a1, b1, a2, b2, a3, b3, a4, b4):
  """Eqs. (26)-(28) after the matrix products."""
  z, r = np.split(_ln64(wh, a1, b1) + _ln64(wx, a2, b2), 2, axis=-1)
  cand = np.tanh(_ln64(cx, a3, b3) + _sigmoid(r) * _ln64(ch, a4, b4))
  return (1 - _sigmoid(z)) * h + _sigmoid(z) * cand


def _operands(kind, lead, hidden, seed=0, offset=0.0, spread=1.0):
  rng = np.random.default_rng(seed)
  k = 4 if kind == 'lstm' else 2
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
  gain = lambda n: (1 + 0.3 * normal(n)).astype(np.float32)  # noqa: E731
  wide = lambda: (offset + spread * normal(*lead, k * hidden)).astype(np.float32)  # noqa: E731
  if kind == 'lstm':
    return [wide(), wide(), normal(*lead, hidden)] + [
      gain(4 * hidden),
      0.3 * normal(4 * hidden),
      gain(4 * hidden),
      0.3 * normal(4 * hidden),
      0.3 * normal(4 * hidden),
      gain(hidden),
      0.3 * normal(hidden),
    ]
  narrow = lambda: (offset + spread * normal(*lead, hidden)).astype(np.float32)  # noqa: E731
  return [wide(), wide(), narrow(), narrow(), normal(*lead, hidden)] + [
    gain(2 * hidden),
    0.3 * normal(2 * hidden),
    gain(2 * hidden),
    0.3 * normal(2 * hidden),
    gain(hidden),
    0.3 * normal(hidden),
    gain(hidden),
    0.3 * normal(hidden),
  ]


def lstm_fused(wh, wx, c, a1, b1, a2, b2, b, a3, b3):
  return fused_cells.ln_lstm_update(wh, wx, c, (a1, b1), (a2, b2), b, (a3, b3), eps=EPS)


def lstm_xla(wh, wx, c, a1, b1, a2, b2, b, a3, b3):
  return tuple(
    fused_cells.ln_lstm_update_reference(wh, wx, c, a1, a2, b1 + b2 + b, a3, b3, eps=EPS)
  )


def gru_fused(wh, wx, cx, ch, h, a1, b1, a2, b2, a3, b3, a4, b4):
  return fused_cells.ln_gru_update(
    wh, wx, cx, ch, h, (a1, b1), (a2, b2), (a3, b3), (a4, b4), eps=EPS
  )


def gru_xla(wh, wx, cx, ch, h, a1, b1, a2, b2, a3, b3, a4, b4):
  return fused_cells.ln_gru_update_reference(
    wh, wx, cx, ch, h, a1, a2, b1 + b2, a3, b3, a4, b4, eps=EPS
  )[0]


UPDATES = {'lstm': (lstm_fused, lstm_xla, lstm64), 'gru': (gru_fused, gru_xla, gru64)}


def _scalar_loss(fn, lead, hidden):
  """A loss whose cotangents differ for every output element."""
  weights = [
    np.sin(np.arange(np.prod(lead) * hidden) * (0.37 + 0.11 * i)).reshape(*lead, hidden)
    for i in range(2)
  ]

  def loss(*args):
    out = fn(*args)
    out = out if isinstance(out, tuple) else (out,)
    return sum(jnp.sum(o * w) for o, w in zip(out, weights, strict=False))

  return loss, weights


def _as_tuple(out):
  return out if isinstance(out, tuple) else (out,)


@needs_kernel
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
@pytest.mark.parametrize('lead, hidden', [((5,), 8), ((3, 2), 21), ((1,), 1), ((7,), 40)])
def test_forward_against_float64_equations(kind, lead, hidden):
  fused, _, ref64 = UPDATES[kind]
  args = _operands(kind, lead, hidden)
  got = _as_tuple(jax.jit(fused)(*args))
  want = _as_tuple(ref64(*args))
  for g, w in zip(got, want, strict=True):
    assert g.dtype == jnp.float32 and g.shape == w.shape
    np.testing.assert_allclose(g, w, atol=2e-6, rtol=2e-6)


@needs_kernel
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_exact_at_any_offset(kind):
  """Pre-activations at mean 1e4 and spread 1e-2: float32 within 1e-4 of float64."""
  fused, _, ref64 = UPDATES[kind]
  args = _operands(kind, (6,), 16, seed=3, offset=1e4, spread=1e-2)
  for g, w in zip(_as_tuple(jax.jit(fused)(*args)), _as_tuple(ref64(*args)), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_gradients_against_float64_finite_differences(kind):
  fused, _, ref64 = UPDATES[kind]
  lead, hidden = (3,), 5
  args = _operands(kind, lead, hidden, seed=1)
  loss, weights = _scalar_loss(fused, lead, hidden)
  grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)

  def loss64(*a):
    return sum(np.sum(o * w) for o, w in zip(_as_tuple(ref64(*a)), weights, strict=False))

  step = 1e-6
  rng = np.random.default_rng(0)
  for n, (arg, grad) in enumerate(zip(args, grads, strict=True)):
    base = [np.asarray(a, np.float64) for a in args]
    for idx in map(tuple, rng.integers(0, arg.shape, size=(4, arg.ndim))):
      plus, minus = [b.copy() for b in base], [b.copy() for b in base]
      plus[n][idx] += step
      minus[n][idx] -= step
      numeric = (loss64(*plus) - loss64(*minus)) / (2 * step)
      assert abs(float(grad[idx]) - numeric) <= 1e-4 * (1 + abs(numeric)), (n, idx)


@needs_kernel
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_kernel_matches_the_xla_formulas(kind):
  """Forward, gradients of every operand, forward mode, second derivatives and vmap."""
  fused, xla, _ = UPDATES[kind]
  lead, hidden = (4,), 24
  args = [jnp.asarray(a) for a in _operands(kind, lead, hidden, seed=2)]
  argnums = tuple(range(len(args)))
  # Everything jitted: op-by-op dispatch of the XLA formulas' derivatives took most of the time.
  for f, x in zip(_as_tuple(jax.jit(fused)(*args)), _as_tuple(jax.jit(xla)(*args)), strict=True):
    np.testing.assert_allclose(f, x, atol=1e-6)
  loss_f, _ = _scalar_loss(fused, lead, hidden)
  loss_x, _ = _scalar_loss(xla, lead, hidden)
  grads_f = jax.jit(jax.grad(loss_f, argnums))(*args)
  grads_x = jax.jit(jax.grad(loss_x, argnums))(*args)
  for gf, gx in zip(grads_f, grads_x, strict=True):
    np.testing.assert_allclose(gf, gx, atol=2e-5, rtol=1e-5)
  tangents = [0.5 * a + 0.1 for a in args]
  for tf, tx in zip(
    _as_tuple(jax.jit(lambda a, t: jax.jvp(fused, a, t)[1])(args, tangents)),
    _as_tuple(jax.jit(lambda a, t: jax.jvp(xla, a, t)[1])(args, tangents)),
    strict=True,
  ):
    np.testing.assert_allclose(tf, tx, atol=1e-5)
  gain = 5 if kind == 'lstm' else 4  # The cell-state / candidate gain.

  def of_gain(fn):
    return lambda g: _scalar_loss(fn, lead, hidden)[0](*args[:gain], g, *args[gain + 1 :])

  np.testing.assert_allclose(
    jax.jit(jax.hessian(of_gain(fused)))(args[gain]),
    jax.jit(jax.hessian(of_gain(xla)))(args[gain]),
    atol=1e-4,
  )
  stacked = [jnp.stack([a, 2 * a]) for a in args[:3]]
  in_axes = (0, 0, 0) + (None,) * (len(args) - 3)
  for vf, vx in zip(
    _as_tuple(jax.jit(jax.vmap(fused, in_axes))(*stacked, *args[3:])),
    _as_tuple(jax.jit(jax.vmap(xla, in_axes))(*stacked, *args[3:])),
    strict=True,
  ):
    np.testing.assert_allclose(vf, vx, atol=1e-5)


@needs_kernel
def test_the_kernels_are_what_runs():
  args = _operands('lstm', (2,), 4)
  hlo = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(lstm_fused(*a)[1]))).lower(*args).as_text()
  assert _ffi.LSTM_FWD_TARGET in hlo and _ffi.LSTM_BWD_TARGET in hlo
  assert fused_cells.kernel_usable(*map(jnp.asarray, args))
  assert not fused_cells.kernel_usable(jnp.ones(3, jnp.bfloat16))


def test_switched_off_the_cells_run_the_xla_formulas(monkeypatch):
  monkeypatch.setenv(_ffi.ENV_SWITCH, 'xla')
  assert not fused_cells.kernel_usable(jnp.ones(3))
  x = jnp.ones((2, 5, 3))
  rnn = nn.RNN(R.LSTMCell(4, norm='layer'))
  variables = rnn.init(jax.random.key(0), x)
  hlo = jax.jit(rnn.apply).lower(variables, x).as_text()
  assert 'lnorm_ln_lstm' not in hlo


def _cell_outputs_and_grads(make_rnn, x):
  rnn = make_rnn()
  variables = rnn.init(jax.random.key(0), x)
  variables = jax.tree.map(
    lambda v: v + 0.1 * jnp.sin(jnp.arange(v.size).reshape(v.shape)), variables
  )

  def loss(v, x):
    return jnp.sum(jnp.sin(3 * rnn.apply(v, x)))

  return jax.jit(rnn.apply)(variables, x), jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)


@needs_kernel
@pytest.mark.parametrize('cell', [R.LSTMCell, R.GRUCell])
def test_linen_cells_with_the_kernel_equal_the_xla_path(cell, monkeypatch):
  x = jax.random.normal(jax.random.key(1), (3, 7, 5)) * 2 + 1
  make = lambda: nn.RNN(cell(6, norm='layer'))  # noqa: E731
  out_k, grads_k = _cell_outputs_and_grads(make, x)
  monkeypatch.setenv(_ffi.ENV_SWITCH, 'xla')
  out_x, grads_x = _cell_outputs_and_grads(make, x)
  np.testing.assert_allclose(out_k, out_x, atol=1e-5)
  for gk, gx in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads_x), strict=True):
    np.testing.assert_allclose(gk, gx, atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize('cell', [lnnx.LSTMCell, lnnx.GRUCell])
def test_nnx_cells_take_the_kernel_and_agree(cell, monkeypatch):
  model = cell(5, 6, norm='layer', rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (4, 5))
  carry = model.initialize_carry((4, 5))
  step = lambda m, c, x: jnp.sum(jnp.sin(3 * jnp.stack(jax.tree.leaves(m(c, x)[1]))))  # noqa: E731
  graphdef, state = nnx.split(model)
  grad = jax.jit(jax.grad(lambda s, c, x: step(nnx.merge(graphdef, s), c, x)))
  hlo = jax.jit(lambda s, c, x: nnx.merge(graphdef, s)(c, x)).lower(state, carry, x).as_text()
  assert 'lnorm_ln_' in hlo
  g_kernel = grad(state, carry, x)
  monkeypatch.setenv(_ffi.ENV_SWITCH, 'xla')
  grad = jax.jit(jax.grad(lambda s, c, x: step(nnx.merge(graphdef, s), c, x)))
  g_xla = grad(state, carry, x)
  for gk, gx in zip(jax.tree.leaves(g_kernel), jax.tree.leaves(g_xla), strict=True):
    np.testing.assert_allclose(gk, gx, atol=1e-5)


def test_cell_steps_fall_back_outside_float32():
  """bfloat16 cells run the XLA formulas (no kernel), with the same parameters."""
  x = jnp.ones((2, 3), jnp.bfloat16)
  cell = R.LSTMCell(4, norm='layer', dtype=jnp.bfloat16)
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  variables = cell.init(jax.random.key(1), carry, x)
  assert set(variables['params']) == {
    'input_kernel',
    'recurrent_kernel',
    'bias',
    'ln_h',
    'ln_x',
    'ln_c',
  }
  assert set(variables['params']['ln_c']) == {'scale', 'bias'}
  hlo = jax.jit(cell.apply).lower(variables, carry, x).as_text()
  assert 'lnorm_ln_lstm' not in hlo
  (c, h), y = cell.apply(variables, carry, x)
  assert h.dtype == jnp.bfloat16 and y.shape == (2, 4)


def _is_gcc(cxx):
  out = subprocess.run([cxx, '--version'], capture_output=True, text=True, check=False).stdout
  return 'Free Software Foundation' in out  # GCC's banner; clang's says "clang".


def test_the_marked_loops_are_vectorized(tmp_path):
  # The cell kernels are fast only if their element-wise loops (marked LNORM_IVDEP) compile to
  # vector code; a flag or a code change can silently leave them scalar (on AVX2, without
  # -fno-trapping-math, every loop calling Exp was: 4x slower). GCC's report says which were.
  cxx, include = _ffi.compiler(), _ffi.headers_dir()
  if cxx is None or include is None or not _is_gcc(cxx):
    pytest.skip('needs GCC and the XLA FFI headers (the vectorization report is GCC-specific)')
  source = _ffi.CSRC / 'recurrent_cells.cc'
  lines = source.read_text().splitlines()
  marked = [
    n + 2  # 1-based number of the loop line after the pragma line.
    for n, line in enumerate(lines)
    if line.strip() == 'LNORM_IVDEP'
  ]
  assert len(marked) >= 8 and all(lines[n - 1].lstrip().startswith('for (') for n in marked)
  report = tmp_path / 'vec.txt'
  cmd = [cxx, *_ffi.COMPILE_FLAGS, '-isystem', str(include), '-c', str(source)]
  cmd += ['-o', str(tmp_path / 'cells.o'), f'-fopt-info-vec-optimized={report}']
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  vectorized = {
    int(entry.split(':')[1])
    for entry in report.read_text().splitlines()
    if entry.startswith(str(source)) and 'loop vectorized' in entry
  }
  assert not set(marked) - vectorized, f'scalar loops at lines {sorted(set(marked) - vectorized)}'

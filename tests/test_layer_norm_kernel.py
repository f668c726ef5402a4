"""The C++ CPU kernel of layer_norm (lnorm/csrc/layer_norm.cc) against its XLA path.

The kernel is what ``lnorm.functional.layer_norm`` runs for float32 input normalized over
trailing axes on CPU; ``LNORM_LAYER_NORM_KERNEL=xla`` forces the XLA path, the reference
here. Tests that need the compiled kernel skip, with the build error as the reason, where
it cannot be built; ``test_kernel_builds_where_it_can`` fails instead when a compiler and
the FFI headers are there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lnorm import _ffi
from lnorm import functional as F

RNG = np.random.default_rng(18)
AVAILABLE, DETAIL = _ffi.layer_norm_kernel()
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f'CPU kernel unavailable: {DETAIL}')


@pytest.fixture(autouse=True)
def kernel_at_every_size(monkeypatch):
  """The kernel for the small shapes of these tests (by default from 2^18 elements)."""
  monkeypatch.setattr(F, '_KERNEL_MIN_SIZE', 1)


@pytest.fixture
def xla_path(monkeypatch):
  """Calls traced while the fixture's ``.on()`` is active take the XLA path."""

  class Switch:
    def on(self):
      monkeypatch.setenv(_ffi.ENV_SWITCH, 'xla')

    def off(self):
      monkeypatch.delenv(_ffi.ENV_SWITCH, raising=False)

  switch = Switch()
  switch.off()
  return switch


def _inputs(shape, n_feat=1, mean=2.0, spread=3.0):
  pshape = shape[len(shape) - n_feat :]
  x = jnp.asarray(RNG.standard_normal(shape) * spread + mean, jnp.float32)
  g = jnp.asarray(RNG.standard_normal(pshape) + 1.0, jnp.float32)
  b = jnp.asarray(RNG.standard_normal(pshape), jnp.float32)
  dy = jnp.asarray(RNG.standard_normal(shape), jnp.float32)
  return x, g, b, dy


def _vjp(x, g, b, dy, axis=-1):
  y, pullback = jax.vjp(lambda x, g, b: F.layer_norm(x, g, b, axis=axis), x, g, b)
  return (y, *pullback(dy))


def _hlo(fn, *args, platform='cpu'):
  # A fresh function: the path is chosen when layer_norm is traced, and traces are cached.
  return jax.jit(lambda *a: fn(*a)).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _close(got, want, tol=2e-5):
  for a, w in zip(got, want, strict=True):
    if w is None:
      assert a is None
      continue
    assert a.shape == w.shape and a.dtype == w.dtype
    scale = max(1.0, float(jnp.abs(w).max()))
    np.testing.assert_allclose(np.asarray(a), np.asarray(w), rtol=0, atol=tol * scale)


def test_kernel_builds_where_it_can():
  if _ffi.compiler() is None or _ffi.headers_dir() is None:
    pytest.skip('no C++ compiler or no XLA FFI headers: the XLA path is the only one')
  # Not silently off: with a compiler and the headers the kernel must build and load.
  assert AVAILABLE, DETAIL
  assert _ffi.kernel_enabled()


@needs_kernel
def test_kernel_is_what_runs_on_cpu_and_not_elsewhere():
  x, g, b, dy = _inputs((8, 32))
  text = _hlo(_vjp, x, g, b, dy)
  assert _ffi.FWD_TARGET in text and _ffi.BWD_TARGET in text
  # Traced for CPU, lowered for another platform: the XLA formulation, no custom call.
  for platform in ('cuda', 'tpu'):
    text = _hlo(_vjp, x, g, b, dy, platform=platform)
    assert 'custom_call' not in text, platform


@needs_kernel
def test_env_var_forces_the_xla_path(xla_path):
  x, g, b, dy = _inputs((8, 32))
  xla_path.on()
  assert not _ffi.kernel_enabled()
  assert 'custom_call' not in _hlo(_vjp, x, g, b, dy)
  xla_path.off()
  assert _ffi.FWD_TARGET in _hlo(_vjp, x, g, b, dy)


@needs_kernel
def test_other_dtypes_and_axes_take_the_xla_path():
  x, g, b, _ = _inputs((8, 32))
  for fn in (
    lambda: F.layer_norm(x.astype(jnp.bfloat16), g, b),
    lambda: F.layer_norm(x, g.astype(jnp.bfloat16), b),
    lambda: F.layer_norm(x, axis=0),
  ):
    assert 'custom_call' not in jax.jit(fn).lower().as_text()
  with F.layer_norm_fusion('cpu'):  # An explicit fusion mode asks for the XLA formulation.
    assert 'custom_call' not in jax.jit(lambda: F.layer_norm(x, g, b)).lower().as_text()


@needs_kernel
def test_small_inputs_take_the_xla_path_by_default(monkeypatch):
  monkeypatch.undo()  # The default threshold.
  assert F._KERNEL_MIN_SIZE > 8 * 32
  x, g, b, dy = _inputs((8, 32))
  assert 'custom_call' not in _hlo(_vjp, x, g, b, dy)
  x, g, b, dy = (
    jax.ShapeDtypeStruct(s, jnp.float32) for s in ((512, 512), (512,), (512,), (512, 512))
  )
  assert _ffi.BWD_TARGET in _hlo(_vjp, x, g, b, dy)


@needs_kernel
@pytest.mark.parametrize(
  ('shape', 'n_feat'),
  [
    ((1, 512), 1),  # a single row
    ((7,), 1),  # a single case without a leading axis
    ((5, 1), 1),  # width 1: y is the bias, dx is 0
    ((9, 3), 1),
    ((6, 1023), 1),  # a width that is not a multiple of the kernel's 16 lanes
    ((3, 4, 17), 1),  # leading batch axes
    ((2, 3, 4, 5), 2),  # two normalized axes
    ((300, 256), 1),  # enough rows for the kernel to split them between threads
  ],
)
def test_kernel_matches_xla_path(xla_path, shape, n_feat):
  x, g, b, dy = _inputs(shape, n_feat)
  axis = tuple(range(-n_feat, 0))
  fn = jax.jit(lambda *a: _vjp(*a, axis=axis))
  got = fn(x, g, b, dy)
  xla_path.on()
  want = jax.jit(lambda *a: _vjp(*a, axis=axis))(x, g, b, dy)
  _close(got, want)


@needs_kernel
@pytest.mark.parametrize(
  ('with_scale', 'with_bias'), [(False, False), (True, False), (False, True)]
)
def test_missing_scale_or_bias(xla_path, with_scale, with_bias):
  x, g, b, dy = _inputs((16, 40))
  g = g if with_scale else None
  b = b if with_bias else None
  got = _vjp(x, g, b, dy)
  assert (got[2] is None) == (g is None) and (got[3] is None) == (b is None)
  xla_path.on()
  _close(got, _vjp(x, g, b, dy))


@needs_kernel
def test_exact_at_any_offset_against_float64():
  # Mean 1e4 +- 100 per row, spread 1e-2 (1/sigma ~ 100): float64 math on the same float32
  # inputs. The bound of tests/test_layer_norm_vjp.py: 1e-6 of the largest reference value.
  x = (1e4 + RNG.uniform(-100, 100, (64, 1)) + 1e-2 * RNG.standard_normal((64, 512))).astype(
    np.float32
  )
  g = (1 + 0.1 * RNG.standard_normal(512)).astype(np.float32)
  b = (0.1 * RNG.standard_normal(512)).astype(np.float32)
  dy = RNG.standard_normal((64, 512)).astype(np.float32)
  x64, g64, b64, dy64 = (a.astype(np.float64) for a in (x, g, b, dy))
  d = x64 - x64.mean(-1, keepdims=True)
  rstd = 1 / np.sqrt((d**2).mean(-1, keepdims=True) + 1e-5)
  xhat = d * rstd
  gd = g64 * dy64
  want = {
    'y': xhat * g64 + b64,
    'dx': rstd * (gd - gd.mean(-1, keepdims=True) - xhat * (gd * xhat).mean(-1, keepdims=True)),
    'dscale': (dy64 * xhat).sum(0),
    'dbias': dy64.sum(0),
  }
  got = jax.jit(_vjp)(x, g, b, dy)
  assert _ffi.BWD_TARGET in _hlo(_vjp, x, g, b, dy)
  for (name, w), a in zip(want.items(), got, strict=True):
    err = np.abs(np.asarray(a, np.float64) - w).max()
    assert err < 1e-6 * np.abs(w).max(), (name, err)
    if name == 'y':
      assert err < 1e-4  # The bound, in absolute terms.


@needs_kernel
def test_check_grads_numerically():
  # Float32 finite differences (the kernel is float32): first order, both modes.
  x, g, b, _ = _inputs((6, 24), spread=1.0)
  check_grads(F.layer_norm, (x, g, b), order=1, modes=('fwd', 'rev'), atol=5e-2, rtol=5e-2)


@needs_kernel
def test_gradients_against_float64_finite_differences():
  x, g, b, dy = _inputs((4, 12))
  _, dx, dg, db = jax.jit(_vjp)(x, g, b, dy)

  def loss64(x, g, b):
    x, g, b = (np.asarray(a, np.float64) for a in (x, g, b))
    d = x - x.mean(-1, keepdims=True)
    y = d / np.sqrt((d**2).mean(-1, keepdims=True) + 1e-5) * g + b
    return float((y * np.asarray(dy, np.float64)).sum())

  args = [np.asarray(a, np.float64) for a in (x, g, b)]
  for i, got in enumerate((dx, dg, db)):
    num = np.zeros(args[i].shape)
    for idx in np.ndindex(args[i].shape):
      plus = [a.copy() for a in args]
      minus = [a.copy() for a in args]
      plus[i][idx] += 1e-6
      minus[i][idx] -= 1e-6
      num[idx] = (loss64(*plus) - loss64(*minus)) / 2e-6
    np.testing.assert_allclose(np.asarray(got, np.float64), num, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_forward_mode_and_second_derivatives(xla_path):
  x, g, b, _ = _inputs((5, 16))
  tangents = tuple(jnp.asarray(RNG.standard_normal(a.shape), jnp.float32) for a in (x, g, b))

  def loss(x, g, b):
    return jnp.sum(jnp.sin(F.layer_norm(x, g, b)))

  def everything():
    jvp = jax.jvp(F.layer_norm, (x, g, b), tangents)
    hvp = jax.jvp(jax.grad(loss, (0, 1, 2)), (x, g, b), tangents)[1]
    rev_rev = jax.grad(lambda x: jnp.sum(jax.grad(loss)(x, g, b) ** 2))(x)
    return (*jvp, *hvp, rev_rev)

  got = jax.jit(everything)()
  xla_path.on()
  want = jax.jit(everything)()
  _close(got, want, tol=1e-4)


@needs_kernel
def test_vmap_and_jit(xla_path):
  # vmap over x with shared and with per-example gains: the kernel sees groups of rows.
  x, g, b, dy = _inputs((3, 8, 16))
  gs = jnp.asarray(RNG.standard_normal((3, 16)), jnp.float32)

  def per_example(x, g, dy):
    return jax.grad(lambda x, g, b: jnp.sum(F.layer_norm(x, g, b) * dy), argnums=(0, 1, 2))(x, g, b)

  def run():
    shared = jax.vmap(per_example, in_axes=(0, None, 0))(x, g, dy)
    own = jax.vmap(per_example, in_axes=(0, 0, 0))(x, gs, dy)
    # vmap inside grad, and a batch axis that is not the leading one.
    inner = jax.grad(
      lambda g: jnp.sum(jax.vmap(lambda x: F.layer_norm(x, g, b), in_axes=1, out_axes=1)(x) * dy)
    )(g)
    return (*shared, *own, inner)

  got = jax.jit(run)()
  assert _ffi.BWD_TARGET in jax.jit(run).lower().as_text()
  xla_path.on()
  want = jax.jit(run)()
  _close(got, want)


@needs_kernel
def test_eager_calls_and_the_residuals(capsys):
  from jax.ad_checkpoint import print_saved_residuals

  x, g, b, dy = _inputs((64, 32))
  np.testing.assert_allclose(
    F.layer_norm(x, g, b), F.layer_norm_reference(x, g, b), rtol=1e-5, atol=1e-5
  )
  print_saved_residuals(F.layer_norm, x, g, b)
  shapes = sorted(line.split(' ')[0] for line in capsys.readouterr().out.strip().splitlines())
  # As the XLA path: x, the gain, and per row the pivot, mean and rstd.
  assert shapes == sorted(['f32[64,32]', 'f32[1,32]', 'f32[64,1]', 'f32[64,1]', 'f32[64,1]'])


def test_a_failed_build_falls_back_to_the_xla_path(monkeypatch, tmp_path):
  # A compiler that fails: build() says why; layer_norm quietly takes the XLA path.
  monkeypatch.setenv('CXX', 'false')
  monkeypatch.setenv('LNORM_CACHE_DIR', str(tmp_path))
  if _ffi.headers_dir() is not None:
    with pytest.raises(RuntimeError, match='failed'):
      _ffi.build()
  monkeypatch.setattr(_ffi, 'layer_norm_kernel', lambda: (False, 'RuntimeError: test'))
  x, g, b, dy = _inputs((8, 32))
  assert 'custom_call' not in _hlo(_vjp, x, g, b, dy)
  want = _vjp(x, g, b, dy)
  _close(want, [F.layer_norm_reference(x, g, b), *want[1:]])

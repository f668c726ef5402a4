"""Pure normalization functions: the paper's math, with no Flax in sight.

Every function here is jit-, vmap- and grad-compatible and works on any float
dtype. The conventions shared by all of them:

* Statistics (mean, variance, mean square) are computed in at least float32,
  also for bfloat16/float16 inputs; the output has the input's dtype.
* Variance is the biased estimate ``mean((x - mean(x))**2)``, computed in two
  passes. The one-pass ``E[x^2] - E[x]^2`` loses all precision when the mean
  is large compared with the spread (pytorch #40302, #51102).
* ``eps`` is added to the variance *inside* the square root, as in the
  authors' code, PyTorch and Haiku; the default is 1e-5. (Flax's default is
  1e-6; TF/Keras put 1e-3 in the same place.)
* Layer and group norm centre every case on one of its own values (the
  *pivot*, its first value) before anything is rounded: they normalize
  ``(x - p) - mean(x - p)``, which is exact in float32 at any offset, where
  ``x - mean(x)`` would round the mean to float32 first (an error of up to
  half an ulp of the offset, 5e-4 at offset 1e4, in every centred value).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Sequence

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from lnorm import _ffi

Axes = int | Sequence[int]

DEFAULT_EPS = 1e-5


def canonical_axes(axes: Axes, ndim: int) -> tuple[int, ...]:
  """Returns ``axes`` as a sorted tuple of non-negative ints, checked against ``ndim``."""
  axes_tuple = (axes,) if isinstance(axes, int) else tuple(axes)
  if not axes_tuple:
    raise ValueError('at least one axis must be normalized; got an empty axis list.')
  out = []
  for a in axes_tuple:
    if not isinstance(a, int):
      raise TypeError(f'axes must be ints; got {a!r} of type {type(a).__name__}.')
    if not -ndim <= a < ndim:
      raise ValueError(
        f'axis {a} is out of range for an input of rank {ndim}; '
        f'allowed axes are {-ndim}..{ndim - 1}.'
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f'axes {axes_tuple} name the same axis twice (input rank {ndim}).')
  return tuple(sorted(out))


def stats_dtype(dtype) -> jnp.dtype:
  """The dtype statistics are computed in: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _check_param(name: str, param: jax.Array | None, expected: tuple[int, ...], where: str):
  if param is None:
    return
  if tuple(param.shape) != expected:
    raise ValueError(
      f'{name} has shape {tuple(param.shape)}, but {where} needs shape {expected} '
      "(or the input's rank with size 1 on every other axis, and on each of these "
      'axes its size or 1).'
    )


def _param_shape(x_shape, axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(x_shape[a] for a in axes)


def _broadcast_param(param, x_ndim: int, axes: tuple[int, ...], name: str, where: str, x_shape):
  """Reshapes a parameter of shape ``x.shape[axes]`` so it broadcasts against x.

  A parameter given already in broadcast form (x's rank, size 1 on the other
  axes, and on each of ``axes`` its size or 1) is accepted as is: e.g. gains
  of shape ``(1, 1, 1, C)`` shared by every position of an NHWC image
  normalized over ``(1, 2, 3)``.
  """
  if param is None:
    return None
  param = jnp.asarray(param)
  if param.ndim == x_ndim and all(
    d == 1 or (i in axes and d == x_shape[i]) for i, d in enumerate(param.shape)
  ):
    return param
  _check_param(name, param, _param_shape(x_shape, axes), where)
  return param.reshape(tuple(x_shape[i] if i in axes else 1 for i in range(x_ndim)))


def mean_and_variance(
  x: jax.Array, axes: Axes, *, unbiased: bool = False
) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of ``x`` over ``axes``, in at least float32, with kept dims.

  Two passes: ``mu = mean(x)``, ``var = mean((x - mu)**2)`` (eqs. 3-4 of the
  paper), with the second pass also correcting ``mu`` by the mean of
  ``x - mu`` (exact in real arithmetic, and it removes the rounding error of
  the first float32 sum). With ``unbiased=True`` the variance is multiplied by ``n / (n - 1)``
  (Bessel's correction), what the paper uses for batch norm at batch size 4.

  Args:
    x: array of any float dtype.
    axes: the axes the statistics run over.
    unbiased: use the unbiased variance estimator.

  Returns:
    ``(mean, var)``, each of ``x``'s rank with size 1 on ``axes``, in
    ``stats_dtype(x.dtype)``.
  """
  axes_t = canonical_axes(axes, x.ndim)
  xf = x.astype(stats_dtype(x.dtype))
  mean = jnp.mean(xf, axis=axes_t, keepdims=True)
  # Corrected two-pass (Chan, Golub & LeVeque 1983): the first mean carries the
  # rounding error of a long float32 sum (about 1e-3 at mean 1e4); the mean of
  # the centred values removes it, in the same pass that sums their squares.
  centred = xf - mean
  shift = jnp.mean(centred, axis=axes_t, keepdims=True)
  var = jnp.mean(jnp.square(centred), axis=axes_t, keepdims=True) - jnp.square(shift)
  var = jnp.maximum(var, 0.0)  # the subtraction may round below zero for constant input
  mean = mean + shift
  if unbiased:
    n = 1
    for a in axes_t:
      n *= x.shape[a]
    if n < 2:
      raise ValueError(f'the unbiased variance needs at least 2 values per statistic; got {n}.')
    var = var * (n / (n - 1))
  return mean, var


def normalize(
  x: jax.Array,
  mean: jax.Array,
  var: jax.Array,
  scale: jax.Array | None,
  bias: jax.Array | None,
  eps: float,
) -> jax.Array:
  """``scale * (x - mean) / sqrt(var + eps) + bias``, computed in float32, cast to x.dtype.

  All arguments must already broadcast against ``x``.
  """
  dtype = stats_dtype(x.dtype)
  y = (x.astype(dtype) - mean) * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale.astype(dtype)
  if bias is not None:
    y = y + bias.astype(dtype)
  return y.astype(x.dtype)


def layer_norm(
  x: jax.Array,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  *,
  axis: Axes = -1,
  eps: float = DEFAULT_EPS,
) -> jax.Array:
  """Layer normalization, eqs. (3)-(4) of Ba, Kiros & Hinton (2016), with fused derivatives.

  For every position along the axes *not* in ``axis`` (every "case"), with
  ``a`` the values along ``axis`` and ``H`` their number::

      mu    = 1/H sum_i a_i
      sigma = sqrt(1/H sum_i (a_i - mu)^2 + eps)
      y     = scale * (a - mu) / sigma + bias

  The same computation at training and test time; no state. With several
  axes (e.g. ``axis=(-3, -2, -1)`` for an image's H, W, C) all of them are
  normalized together, as the paper does for a whole layer (eqs. 15-16).

  Exact at any offset: ``a - mu`` is computed as ``(a - p) - mean(a - p)``
  with ``p`` the case's first value, so the float32 result does not depend on
  how far the values are from 0 (at mean 1e4 and spread 1e-2 it is within
  1e-6 of float64, where ``a - float32(mu)`` is off by up to 0.06).

  Derivatives are hand-written (a ``jax.custom_jvp`` whose reverse mode JAX
  gets by transposing it). With ``xhat = (a - mu) / sigma`` and means over the
  normalized axes, the tangent and, transposed, the gradient are::

      dy     = scale / sigma * (da - mean(da) - xhat * mean(xhat * da))
               + dscale * xhat + dbias
      da     = (g - mean(g) - xhat * mean(g * xhat)) / sigma,   g = scale * dy
      dscale = sum(dy * xhat),   dbias = sum(dy)                 (over the other axes)

  Reverse mode saves only ``x`` (in its own dtype), the gains and three
  float32 numbers per case (the pivot ``p``, ``mean(a - p)`` and ``1/sigma``);
  ``xhat`` is recomputed inside the backward's fused loops. (Saving the pivot
  rather than slicing it out of ``x`` again matters inside a ``lax.scan``: a
  fusion that slices the pivot out of a per-step slice of a stacked residual
  compiles to scalar code on XLA:CPU.) The gradient takes three
  fused passes over ``x`` and ``dy`` (one writes ``da``), a third of the time
  of autodiff through the formula on CPU (see ``scripts/bench.py``), and matches that autodiff to
  float rounding (:func:`layer_norm_reference`). Forward mode, reverse mode
  and every composition (``jax.hessian``, ``grad`` of ``grad``) work. On
  XLA:CPU optimization barriers steer the fusions; other backends get the
  plain formulation (see :func:`layer_norm_fusion`).

  On CPU, float32 input normalized over trailing axes (with float32 or absent
  gains and biases) runs a C++ kernel (``lnorm/csrc/layer_norm.cc``, through
  ``jax.ffi``) for the forward pass and for the gradient: the same formulas,
  pivot included, in one pass over ``x`` forward and one over ``x`` and ``dy``
  backward (``dscale`` and ``dbias`` summed in the same pass), rows split
  between XLA's intra-op threads. It matches the XLA path to float32 rounding;
  forward mode and higher derivatives use the XLA formulas. Inputs under
  2^18 elements (the layer norms of a recurrent step, which fuse with the gate
  arithmetic around them on the XLA path) keep the XLA path. The kernel is
  compiled on first use (or by ``make setup``; see :mod:`lnorm._ffi`); where
  it cannot be built, on other backends, with several devices, in an explicit
  :func:`layer_norm_fusion` mode, or with ``LNORM_LAYER_NORM_KERNEL=xla`` in
  the environment, the XLA path runs. Like the fusion mode, the choice is made
  when the call is traced.

  Args:
    x: ``<float>[..., *feature_shape]``, any float dtype.
    scale: gain ``g``, of shape ``x.shape[axis]`` (e.g. ``(H,)``), or in
      broadcast form: ``x``'s rank, size 1 on the other axes and on each
      normalized axis its size or 1 (e.g. ``(1, 1, 1, C)``: per-channel gains
      of an NHWC image normalized over ``axis=(1, 2, 3)``); ``None`` for 1.
    bias: bias ``b``, of a shape like ``scale``'s; ``None`` for 0.
    axis: the normalized axes (int or sequence of ints).
    eps: added to the variance inside the square root.

  Returns:
    An array of ``x``'s shape and dtype; statistics are computed in float32
    (or float64 for float64 input).
  """
  axes = canonical_axes(axis, x.ndim)
  scale, bias = _layer_norm_params(x, scale, bias, axes)
  mode = _FUSION_MODE.get()
  lead = x.ndim - len(axes)
  if _use_kernel(x, scale, bias, axes, mode):
    rows, feats = math.prod(x.shape[:lead]), math.prod(x.shape[lead:])
    full = (1,) * lead + x.shape[lead:]
    scale, bias = (
      None if p is None else jnp.broadcast_to(p, full).reshape(1, feats) for p in (scale, bias)
    )
    y = _layer_norm_kernel(x.reshape(rows, feats), scale, bias, float(eps))
    return y.reshape(x.shape)
  if axes == tuple(range(lead, x.ndim)) and x.shape != (x.shape[0], x.shape[-1]):
    # Trailing axes: normalize the rows of a 2-D view (the same cases, pivots and sums).
    # XLA:CPU compiles the 2-D form to one fused kernel where a rank-3 input took four
    # (64x128x768: forward 1.75x faster, as fast as Flax's; see scripts/bench.py).
    rows, feats = math.prod(x.shape[:lead]), math.prod(x.shape[lead:])
    full = (1,) * lead + x.shape[lead:]
    scale, bias = (
      None if p is None else jnp.broadcast_to(p, full).reshape(1, feats) for p in (scale, bias)
    )
    y = _layer_norm_fused(x.reshape(rows, feats), scale, bias, (1,), float(eps), mode)
    return y.reshape(x.shape)
  return _layer_norm_fused(x, scale, bias, axes, float(eps), mode)


def layer_norm_reference(
  x: jax.Array,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  *,
  axis: Axes = -1,
  eps: float = DEFAULT_EPS,
) -> jax.Array:
  """:func:`layer_norm` written plainly and differentiated by JAX's autodiff.

  The same values as :func:`layer_norm` (two-pass statistics of ``x - p`` in
  float32, ``p`` the case's first value; output in ``x.dtype``); its
  derivatives are whatever autodiff makes of the formula: reverse mode saves
  four full-size float32 arrays and takes several more passes over the data.
  Kept as the reference for tests and benchmarks.
  """
  axes = canonical_axes(axis, x.ndim)
  scale, bias = _layer_norm_params(x, scale, bias, axes)
  centred, var = _centred_and_variance(x, axes)
  return _scale_shift(centred * jax.lax.rsqrt(var + eps), scale, bias).astype(x.dtype)


def _centred_and_variance(x, axes):
  """``(x - mean, var)`` over ``axes`` in ``stats_dtype``, centred through the pivot.

  ``d = x - p`` with ``p`` the first value of every case (outside the
  gradient: the result does not depend on it), then ``d - mean(d)`` and the
  biased two-pass variance of that.
  """
  dtype = stats_dtype(x.dtype)
  d = x.astype(dtype) - jax.lax.stop_gradient(_pivot(x, axes, dtype))
  centred = d - jnp.mean(d, axis=axes, keepdims=True)
  return centred, jnp.mean(jnp.square(centred), axis=axes, keepdims=True)


def _scale_shift(y, scale, bias):
  if scale is not None:
    y = y * scale.astype(y.dtype)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y


def _layer_norm_params(x, scale, bias, axes):
  where = f'layer norm over axes {axes} of an input of shape {tuple(x.shape)}'
  scale = _broadcast_param(scale, x.ndim, axes, 'scale', where, x.shape)
  bias = _broadcast_param(bias, x.ndim, axes, 'bias', where, x.shape)
  return scale, bias


# Fusion steering. How the derivative rule keeps XLA:CPU's fusions tight
# (measured with scripts/bench.py; see results/bench.md):
# * A broadcast that several fusions share (of the pivot, the mean, the rstd or
#   the gain) is written out as a full-size array, and a reduction fusion whose
#   centred input another fusion also needs writes that input out. `_copies`
#   gives every fusion its own copy of the small operands, which XLA cannot
#   merge, so each fusion reads only x, dy and vectors; and its own copy of x,
#   so that a bfloat16 x is converted inside each fusion instead of once into a
#   full-size float32 array.
# * The tangent runs under `jax.checkpoint` with nothing saveable: reverse mode
#   then keeps only the tangent's inputs (x, the gains, mean and rstd) as
#   residuals and recomputes xhat inside the backward's fusions. A
#   `jax.custom_vjp` with the same backward compiled to the same fusions and
#   ran at the same speed, but gave no forward mode.
# * Processing the cases in blocks of 128 KiB to 8 MiB with `lax.map`, to keep
#   x and dy in cache between the backward's passes, was 5-35% slower.
# The barriers were tuned for XLA:CPU only, so in the default mode they are
# `_cpu_barrier_p`, a primitive that lowers to an optimization barrier when the
# computation is lowered for CPU and to nothing on any other platform: the
# choice is made per lowering (a function jitted for CPU on a GPU machine gets
# the CPU form), with no conditional in the jaxpr or in the compiled program.
# The checkpointed tangent is the same on every backend.

#: The fusion modes of :func:`layer_norm_fusion`.
FUSION_MODES = ('auto', 'cpu', 'plain')
_FUSION_MODE = contextvars.ContextVar('lnorm_layer_norm_fusion', default='auto')


@contextlib.contextmanager
def layer_norm_fusion(mode: str):
  """Chooses how :func:`layer_norm` steers XLA's fusions, for the calls traced inside the block.

  * ``'auto'`` (the default): the XLA:CPU-tuned formulation (optimization
    barriers that give every fusion its own copy of the small operands) where
    the computation is lowered for CPU, the plain fused formulation on every
    other backend. Chosen at lowering time, from the platform being compiled
    for, so a function jitted for CPU on a GPU machine still gets the CPU form.
  * ``'cpu'``: the CPU-tuned formulation on every backend.
  * ``'plain'``: no barriers on any backend (what GPUs and TPUs run).

  The values and derivatives are the same formulas in every mode; only the
  way XLA fuses them differs. The mode is read when :func:`layer_norm` is
  *traced*: a function already jitted keeps the mode of its first trace.

  Example::

    with layer_norm_fusion('plain'):
      y = jax.jit(f)(x)   # traced (and compiled) here without barriers

  Raises:
    ValueError: ``mode`` is not one of :data:`FUSION_MODES`.
  """
  if mode not in FUSION_MODES:
    raise ValueError(f'unknown fusion mode {mode!r}; valid modes are: {", ".join(FUSION_MODES)}.')
  token = _FUSION_MODE.set(mode)
  try:
    yield
  finally:
    _FUSION_MODE.reset(token)


def _cpu_barrier_lowering(ctx, *args):
  return mlir.lower_fun(lambda *xs: jax.lax.optimization_barrier(xs), multiple_results=True)(
    ctx, *args
  )


def _cpu_barrier_jvp(primals, tangents):
  # An identity for the math: the tangents pass through untouched.
  return _cpu_barrier_p.bind(*primals), list(tangents)


_cpu_barrier_p = jax.extend.core.Primitive('lnorm_cpu_fusion_barrier')
_cpu_barrier_p.multiple_results = True
_cpu_barrier_p.def_impl(lambda *xs: xs)  # Eager execution: barriers only matter to XLA.
_cpu_barrier_p.def_abstract_eval(lambda *avals: avals)
ad.primitive_jvps[_cpu_barrier_p] = _cpu_barrier_jvp
batching.primitive_batchers[_cpu_barrier_p] = lambda args, dims: (_cpu_barrier_p.bind(*args), dims)
mlir.register_lowering(_cpu_barrier_p, lambda ctx, *args: args)
mlir.register_lowering(_cpu_barrier_p, _cpu_barrier_lowering, platform='cpu')


def _copies(value, n: int, mode: str):
  """``n`` copies of ``value``, which XLA cannot merge where ``mode`` steers the fusions.

  ``'plain'``: the same value ``n`` times; ``'cpu'``: an optimization barrier
  on every backend; ``'auto'``: an optimization barrier only where the
  computation is lowered for CPU. Differentiable and batchable in every mode.
  """
  if mode == 'plain':
    return (value,) * n
  if mode == 'cpu':
    return jax.lax.optimization_barrier((value,) * n)
  return tuple(_cpu_barrier_p.bind(*((value,) * n)))


def _pivot(x, axes, dtype):
  """The first value of every case (index 0 on each normalized axis), kept dims, in ``dtype``."""
  first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))
  return x[first].astype(dtype)


def _layer_norm_stats(x, scale, bias, axes, eps, mode):
  """``(y, pivot, mean, rstd)``: ``mean`` is the mean of ``x - p`` with ``p`` the pivot.

  Exact at any offset: with ``p`` a value of the case, ``d = x - p`` is exact
  in float32 whenever the case's values lie within a factor 2 of each other
  (Sterbenz), whatever their mean; the statistics of ``d`` and the centred
  ``d - mean(d)`` then carry rounding errors relative to the spread, not to
  the offset. Folding ``p`` into the mean (``p + mean(d)``) and forming
  ``x - mean`` instead would round the mean to float32 first: at offset 1e4
  that is an error of up to 5e-4 in every centred value, 0.05 after dividing
  by a spread of 1e-2.
  """
  dtype = stats_dtype(x.dtype)
  x1, x2, x3 = (xc.astype(dtype) for xc in _copies(x, 3, mode))
  pivot = _pivot(x, axes, dtype)
  p1, p2, p3 = _copies(pivot, 3, mode)
  mean = jnp.mean(x1 - p1, axis=axes, keepdims=True)
  mean_var, mean_y = _copies(mean, 2, mode)
  var = jnp.mean(jnp.square((x2 - p2) - mean_var), axis=axes, keepdims=True)
  rstd = jax.lax.rsqrt(var + eps)
  y = ((x3 - p3) - mean_y) * rstd
  if scale is not None:
    y = y * scale.astype(dtype)
  if bias is not None:
    y = y + bias.astype(dtype)
  return y.astype(x.dtype), pivot, mean, rstd


def _layer_norm_tangent(axes, mode, x, scale, pivot, mean, rstd, x_dot, scale_dot, bias_dot):
  """The tangent of ``y``, linear in ``(x_dot, scale_dot, bias_dot)`` (``None``: zero).

  ``pivot``, ``mean`` and ``rstd`` are those of :func:`_layer_norm_stats`
  (``mean`` is relative to the pivot).
  """
  dtype = stats_dtype(x.dtype)
  x1, x2, x3 = (xc.astype(dtype) for xc in _copies(x, 3, mode))
  p1, p2, p3 = _copies(pivot, 3, mode)
  m1, m2, m3 = _copies(mean, 3, mode)
  r1, r2, r3, r4 = _copies(rstd, 4, mode)
  y_dot = None
  if x_dot is not None:
    xd = x_dot.astype(dtype)
    mean_xd = jnp.mean(xd, axis=axes, keepdims=True)
    mean_xhat_xd = jnp.mean(((x1 - p1) - m1) * r1 * xd, axis=axes, keepdims=True)
    gain = r2 if scale is None else r2 * _copies(scale.astype(dtype), 1, mode)[0]
    y_dot = gain * (xd - mean_xd - ((x2 - p2) - m2) * r3 * mean_xhat_xd)
  if scale_dot is not None:
    term = scale_dot.astype(dtype) * (((x3 - p3) - m3) * r4)
    y_dot = term if y_dot is None else y_dot + term
  if bias_dot is not None:
    term = jnp.broadcast_to(bias_dot.astype(dtype), x.shape)
    y_dot = term if y_dot is None else y_dot + term
  if y_dot is None:
    return jnp.zeros(x.shape, x.dtype)
  return y_dot.astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _layer_norm_fused(x, scale, bias, axes, eps, mode):
  # Undifferentiated, this compiles to one fused loop.
  return _layer_norm_stats(x, scale, bias, axes, eps, mode)[0]


def _nonzero(tangent):
  if tangent is None or isinstance(tangent, jax.custom_derivatives.SymbolicZero):
    return None
  return tangent


@functools.partial(_layer_norm_fused.defjvp, symbolic_zeros=True)
def _layer_norm_fused_jvp(axes, eps, mode, primals, tangents):
  x, scale, bias = primals
  x_dot, scale_dot, bias_dot = (_nonzero(t) for t in tangents)
  y, pivot, mean, rstd = _layer_norm_stats(x, scale, bias, axes, eps, mode)
  tangent = jax.checkpoint(
    functools.partial(_layer_norm_tangent, axes, mode),
    policy=jax.checkpoint_policies.nothing_saveable,
  )
  return y, tangent(x, scale, pivot, mean, rstd, x_dot, scale_dot, bias_dot)


# The CPU kernel (lnorm/csrc/layer_norm.cc, through jax.ffi).
#
# XLA:CPU runs every reduction of the fused formulation above as its own pass over the
# data (about ten passes in eight kernels for forward+backward); the kernel makes one pass
# over x forward (writing y and three numbers per row) and one over x and dy backward
# (writing dx; dscale and dbias as column sums in the same pass). It computes the same
# formulas in the same order, in float32, for float32 inputs normalized over trailing axes.
#
# Three primitives carry it, each with a CPU lowering to the kernel and, on every other
# platform (or where the kernel failed to build), a lowering to the XLA formulation above:
# * `_ln_fwd_p(x, scale, bias) -> (y, pivot, mean, rstd)`: the forward kernel.
# * `_ln_tangent_p(x, scale, pivot, mean, rstd, *dots)`: the tangent of y, linear in the
#   dots (`_layer_norm_tangent`, lowered as XLA ops: forward mode stays as it was). Its
#   transpose rule, which reverse mode uses, is `_ln_bwd_p`.
# * `_ln_bwd_p(x, scale, pivot, mean, rstd, dy) -> (dx, dscale, dbias)`: the backward kernel.
# Higher derivatives differentiate the XLA formulas (the JVP rules of the primitives), so
# `grad` of `grad`, `jax.hessian` and forward-over-reverse work and agree with the XLA path.
# Arrays keep x's rank: the normalized axis is the last; parameters and their gradients
# have shape (*lead, H) with lead a prefix of x's leading dimensions followed by ones (a
# group of consecutive rows per parameter row), which is what vmap makes of (1, H).


def _use_kernel(x, scale, bias, axes, mode) -> bool:
  """Whether :func:`layer_norm` takes the CPU-kernel path (decided when it is traced)."""
  if mode != 'auto' or x.dtype != jnp.float32 or x.size < _KERNEL_MIN_SIZE:
    return False
  if any(p is not None and p.dtype != jnp.float32 for p in (scale, bias)):
    return False
  if axes != tuple(range(x.ndim - len(axes), x.ndim)):
    return False
  # The primitives lower to the XLA path anyway wherever a traced kernel path is compiled
  # for another platform.
  return _ffi.usable_here()


#: Smaller inputs (in elements) take the XLA path. Alone, the kernel is faster at every size
#: (64x512: forward 0.4x, forward+backward 0.4x the XLA path); but the small layer norms of
#: a recurrent step fuse, on the XLA path, with the gate arithmetic around them, which a
#: custom call cannot: LN-GRU (batch 64, 100 steps, H 512, 64x1536 per layer norm) trained
#: 1.07-1.12x slower with the kernel, LN-LSTM at 64x2048 the same either way (load 4.5).
_KERNEL_MIN_SIZE = 1 << 18


def _grouped(x_shape, p_shape) -> bool:
  """Whether a parameter of ``p_shape`` maps onto groups of consecutive rows of ``x``."""
  if len(p_shape) != len(x_shape) or p_shape[-1] != x_shape[-1]:
    return False
  lead, x_lead = p_shape[:-1], x_shape[:-1]
  k = 0
  while k < len(lead) and lead[k] == x_lead[k] and lead[k] != 1:
    k += 1
  return all(d == 1 for d in lead[k:]) or lead == x_lead


def _kernel_params(x, scale, bias):
  """Gains and biases as the kernel takes them: 1 and 0 where absent."""
  shape = (1,) * (x.ndim - 1) + x.shape[-1:]
  scale = jnp.ones(shape, jnp.float32) if scale is None else scale
  bias = jnp.zeros(shape, jnp.float32) if bias is None else bias
  return scale, bias


def _fwd_formula(x, scale, bias, *, eps, mode):
  return list(_layer_norm_stats(x, scale, bias, (x.ndim - 1,), eps, mode))


def _split_dots(dots, which):
  it = iter(dots)
  return tuple(next(it) if w else None for w in which)


def _tangent_formula(x, scale, pivot, mean, rstd, *dots, which, mode):
  x_dot, scale_dot, bias_dot = _split_dots(dots, which)
  return _layer_norm_tangent(
    (x.ndim - 1,), mode, x, scale, pivot, mean, rstd, x_dot, scale_dot, bias_dot
  )


def _bwd_formula(x, scale, pivot, mean, rstd, dy, *, ds_shape, db_shape, mode):
  def tangent(x_dot, scale_dot, bias_dot):
    return _layer_norm_tangent(
      (x.ndim - 1,), mode, x, scale, pivot, mean, rstd, x_dot, scale_dot, bias_dot
    )

  specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in (x.shape, ds_shape, db_shape)]
  return list(jax.linear_transpose(tangent, *specs)(dy))


@functools.cache
def _jitted_bind(prim, params):
  return jax.jit(lambda *args: prim.bind(*args, **dict(params)))


def _define(name, multiple_results, formula, abstract_eval, ffi_target, static, param_slots):
  """A primitive computed by ``formula`` (XLA ops) or, lowered for CPU, by ``ffi_target``.

  ``static``: the parameter names that are not kernel attributes (only shapes, flags).
  ``param_slots``: the positions, in the operands followed by the results, of the
  parameter-shaped arrays, which the kernel maps onto groups of rows.
  The JVP rule differentiates ``formula``; batching is added by the caller.
  """
  prim = jax.extend.core.Primitive(name)
  prim.multiple_results = multiple_results
  prim.def_impl(lambda *args, **params: _jitted_bind(prim, tuple(sorted(params.items())))(*args))
  prim.def_abstract_eval(abstract_eval)

  def jvp(primals, tangents, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(
      functools.partial(formula, **params, mode='auto'), tuple(primals), tuple(tangents)
    )

  ad.primitive_jvps[prim] = jvp
  mlir.register_lowering(
    prim, mlir.lower_fun(functools.partial(formula, mode='plain'), multiple_results)
  )
  xla_cpu = mlir.lower_fun(functools.partial(formula, mode='auto'), multiple_results)

  def cpu_lowering(ctx, *args, **params):
    avals = list(ctx.avals_in) + list(ctx.avals_out)
    shapes_ok = all(_grouped(ctx.avals_in[0].shape, avals[i].shape) for i in param_slots)
    if ffi_target is None or not _ffi.layer_norm_kernel()[0] or not shapes_ok:
      return xla_cpu(ctx, *args, **params)
    attrs = {k: v for k, v in params.items() if k not in static}
    if 'eps' in attrs:
      attrs['eps'] = np.float32(attrs['eps'])
    return jax.ffi.ffi_lowering(ffi_target)(ctx, *args, **attrs)

  mlir.register_lowering(prim, cpu_lowering, platform='cpu')
  return prim


def _stats_aval(x):
  return jax.core.ShapedArray(x.shape[:-1] + (1,), jnp.float32)


_ln_fwd_p = _define(
  'lnorm_layer_norm_fwd',
  True,
  _fwd_formula,
  lambda x, scale, bias, *, eps: (
    [jax.core.ShapedArray(x.shape, jnp.float32)] + [_stats_aval(x)] * 3
  ),
  _ffi.FWD_TARGET,
  static=(),
  param_slots=(1, 2),
)
_ln_tangent_p = _define(
  'lnorm_layer_norm_tangent',
  False,
  _tangent_formula,
  lambda x, *args, which: jax.core.ShapedArray(x.shape, jnp.float32),
  None,
  static=('which',),
  param_slots=(),
)
_ln_bwd_p = _define(
  'lnorm_layer_norm_bwd',
  True,
  _bwd_formula,
  lambda x, *args, ds_shape, db_shape: [
    jax.core.ShapedArray(s, jnp.float32) for s in (x.shape, ds_shape, db_shape)
  ],
  _ffi.BWD_TARGET,
  static=('ds_shape', 'db_shape'),
  param_slots=(1, 7, 8),
)


def _ln_tangent_transpose(ct, x, scale, pivot, mean, rstd, *dots, which):
  if any(ad.is_undefined_primal(a) for a in (x, scale, pivot, mean, rstd)):
    raise NotImplementedError('layer norm is linear only in its tangents')
  none = [None] * (5 + len(dots))
  if type(ct) is ad.Zero:
    return none
  x_dot, scale_dot, bias_dot = _split_dots(dots, which)
  unit = (1,) * (x.ndim - 1) + x.shape[-1:]
  ds_shape = scale_dot.aval.shape if ad.is_undefined_primal(scale_dot) else unit
  db_shape = bias_dot.aval.shape if ad.is_undefined_primal(bias_dot) else unit
  dx, dscale, dbias = _ln_bwd_p.bind(
    x, scale, pivot, mean, rstd, ad.instantiate_zeros(ct), ds_shape=ds_shape, db_shape=db_shape
  )
  dot_grads = [g for w, g in zip(which, (dx, dscale, dbias), strict=True) if w]
  return [None] * 5 + [
    g if ad.is_undefined_primal(d) else None for d, g in zip(dots, dot_grads, strict=True)
  ]


ad.primitive_transposes[_ln_tangent_p] = _ln_tangent_transpose


def _rows_at_front(a, d, size):
  """An x-like operand with its batch axis first (broadcast when unbatched)."""
  if d is None:
    return jnp.broadcast_to(a, (size, *a.shape))
  return jnp.moveaxis(a, d, 0)


def _param_at_front(a, d, size):
  """A parameter-like operand with its batch axis first; shared when unbatched and shared."""
  if d is not None:
    return jnp.moveaxis(a, d, 0)
  if all(n == 1 for n in a.shape[:-1]):
    return a[None]
  return jnp.broadcast_to(a, (size, *a.shape))


def _batch_size(args, dims):
  return next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)


def _ln_fwd_batch(args, dims, *, eps):
  size = _batch_size(args, dims)
  x, scale, bias = args
  dx, ds, db = dims
  out = _ln_fwd_p.bind(
    _rows_at_front(x, dx, size),
    _param_at_front(scale, ds, size),
    _param_at_front(bias, db, size),
    eps=eps,
  )
  return out, [0] * 4


def _ln_tangent_batch(args, dims, *, which):
  size = _batch_size(args, dims)
  x_like = [True] * 5
  x_like[1] = False  # scale
  x_like += [kind for kind, w in zip((True, False, False), which, strict=True) if w]
  moved = [
    (_rows_at_front if rows else _param_at_front)(a, d, size)
    for a, d, rows in zip(args, dims, x_like, strict=True)
  ]
  return _ln_tangent_p.bind(*moved, which=which), 0


def _ln_bwd_batch(args, dims, *, ds_shape, db_shape):
  size = _batch_size(args, dims)
  moved = [
    (_param_at_front if i == 1 else _rows_at_front)(a, d, size)
    for i, (a, d) in enumerate(zip(args, dims, strict=True))
  ]
  out = _ln_bwd_p.bind(*moved, ds_shape=(size, *ds_shape), db_shape=(size, *db_shape))
  return out, [0] * 3


batching.primitive_batchers[_ln_fwd_p] = _ln_fwd_batch
batching.primitive_batchers[_ln_tangent_p] = _ln_tangent_batch
batching.primitive_batchers[_ln_bwd_p] = _ln_bwd_batch


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _layer_norm_kernel(x, scale, bias, eps):
  return _ln_fwd_p.bind(x, *_kernel_params(x, scale, bias), eps=eps)[0]


@functools.partial(_layer_norm_kernel.defjvp, symbolic_zeros=True)
def _layer_norm_kernel_jvp(eps, primals, tangents):
  x, scale, bias = primals
  scale, bias = _kernel_params(x, scale, bias)
  y, pivot, mean, rstd = _ln_fwd_p.bind(x, scale, bias, eps=eps)
  dots = tuple(_nonzero(t) for t in tangents)
  which = tuple(d is not None for d in dots)
  if not any(which):
    return y, jnp.zeros_like(y)
  present = [d.astype(jnp.float32) for d in dots if d is not None]
  return y, _ln_tangent_p.bind(x, scale, pivot, mean, rstd, *present, which=which)


#: The number of groups Wu & He (2018) use by default.
DEFAULT_NUM_GROUPS = 32


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def group_count(num_groups: int | None, channels: int, values_per_channel: int = 1) -> int:
  """The number of groups a group norm over ``channels`` channels uses.

  Args:
    num_groups: the requested count; it must divide ``channels``. ``None``:
      :data:`DEFAULT_NUM_GROUPS` (32, Wu & He's default) where it divides
      ``channels``, else the largest count below it that does; in either case
      no more groups than leave every group at least two values (a group of
      one value would normalize to its bias alone).
    channels: the number of channels ``C``.
    values_per_channel: the number of values each channel holds per example
      (the product of the spatial sizes; 1 for a dense layer's features).

  Raises:
    ValueError: ``num_groups`` is not a positive divisor of ``channels`` (the
      message lists the allowed counts).
  """
  if num_groups is None:
    fits = [
      d
      for d in _divisors(channels)
      if d <= DEFAULT_NUM_GROUPS and (channels // d) * values_per_channel >= 2
    ]
    return max(fits, default=1)
  if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
    raise ValueError(f'num_groups must be a positive int; got {num_groups!r}.')
  if channels % num_groups:
    raise ValueError(
      f'num_groups={num_groups} does not divide the {channels} channels; allowed group counts '
      f'for {channels} channels are: {", ".join(map(str, _divisors(channels)))}.'
    )
  return num_groups


def group_norm(
  x: jax.Array,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  *,
  num_groups: int | None,
  eps: float = DEFAULT_EPS,
  channel_axis: int = -1,
) -> jax.Array:
  """Group normalization (Wu & He 2018, https://arxiv.org/abs/1803.08494).

  The ``C`` channels are split into ``G = num_groups`` groups of ``C / G``
  consecutive channels. Every example (index along the leading axis) and
  group is normalized over that group's channels and every other axis (the
  spatial ones), with per-channel gains and biases::

      mu_{n,k}    = mean of x[n, ..., c] over the spatial positions and c in group k
      sigma_{n,k} = sqrt(mean of (x - mu_{n,k})^2 over the same values + eps)
      y[n, ..., c] = scale[c] * (x[n, ..., c] - mu_{n,k}) / sigma_{n,k} + bias[c]

  ``G = 1`` is layer norm over every axis but the first with per-channel
  gains (paper §6.7's convnet LN); ``G = C`` is instance norm. Statistics are
  two-pass, in float32 for bfloat16/float16 input, centred through the pivot
  (the group's first value) like :func:`layer_norm`; the output has ``x``'s
  dtype. Derivatives are JAX's autodiff of this formula.

  Args:
    x: ``<float>[batch, *spatial, C]`` (with ``channel_axis=-1``; the channel
      axis may be anywhere but the leading, example axis).
    scale: per-channel gain, shape ``(C,)`` (or ``x``'s rank with ``C`` on the
      channel axis and 1 elsewhere); ``None`` for 1.
    bias: per-channel bias, shaped like ``scale``; ``None`` for 0.
    num_groups: ``G``, a divisor of ``C``; ``None``: 32, or fewer as
      :func:`group_count` chooses.
    eps: added to the variance inside the square root.
    channel_axis: the channel axis.

  Returns:
    An array of ``x``'s shape and dtype.

  Raises:
    ValueError: ``x`` has no example axis, ``channel_axis`` is the example
      axis, or ``num_groups`` does not divide ``C`` (the message lists the
      allowed counts).
  """
  if x.ndim < 2:
    raise ValueError(
      f'group_norm needs a leading example axis and a channel axis; got shape {tuple(x.shape)}.'
    )
  (axis,) = canonical_axes(channel_axis, x.ndim)
  if axis == 0:
    raise ValueError(
      'group_norm normalizes every example (leading axis) separately; channel_axis '
      f'must be another axis, 1..{x.ndim - 1} or -{x.ndim - 1}..-1.'
    )
  channels = x.shape[axis]
  groups = group_count(num_groups, channels, x.size // max(x.shape[0] * channels, 1))
  where = f'group norm over channel axis {axis} of an input of shape {tuple(x.shape)}'
  scale = _broadcast_param(scale, x.ndim, (axis,), 'scale', where, x.shape)
  bias = _broadcast_param(bias, x.ndim, (axis,), 'bias', where, x.shape)
  grouped = x.reshape(x.shape[:axis] + (groups, channels // groups) + x.shape[axis + 1 :])
  axes = tuple(i for i in range(1, grouped.ndim) if i != axis)
  centred, var = _centred_and_variance(grouped, axes)
  y = (centred * jax.lax.rsqrt(var + eps)).reshape(x.shape)
  return _scale_shift(y, scale, bias).astype(x.dtype)


def rms_norm(
  x: jax.Array,
  scale: jax.Array | None = None,
  *,
  axis: Axes = -1,
  eps: float = DEFAULT_EPS,
) -> jax.Array:
  """Root-mean-square normalization (Zhang & Sennrich 2019), a modern relative of LN.

  Layer norm without the re-centering::

      y = scale * a / sqrt(1/H sum_i a_i^2 + eps)

  It keeps LN's invariance to re-scaling but not to re-centering.

  Args:
    x: ``<float>[..., *feature_shape]``.
    scale: gain of shape ``x.shape[axis]``; ``None`` for 1.
    axis: the normalized axes.
    eps: added to the mean square inside the square root.

  Returns:
    An array of ``x``'s shape and dtype (statistics in float32 or wider).
  """
  axes = canonical_axes(axis, x.ndim)
  where = f'RMS norm over axes {axes} of an input of shape {tuple(x.shape)}'
  scale = _broadcast_param(scale, x.ndim, axes, 'scale', where, x.shape)
  xf = x.astype(stats_dtype(x.dtype))
  mean_square = jnp.mean(jnp.square(xf), axis=axes, keepdims=True)
  y = xf * jax.lax.rsqrt(mean_square + eps)
  if scale is not None:
    y = y * scale.astype(y.dtype)
  return y.astype(x.dtype)


def batch_norm_train(
  x: jax.Array,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  *,
  batch_axes: Axes = 0,
  eps: float = DEFAULT_EPS,
  unbiased: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch normalization with the statistics of this batch (Ioffe & Szegedy 2015; paper eq. 2).

  For every feature (every position along the axes *not* in ``batch_axes``), with
  ``a`` its values over the batch axes and ``N`` their number::

      mu    = 1/N sum_n a_n
      var   = 1/N sum_n (a_n - mu)^2          (times N/(N-1) if unbiased)
      y     = scale * (a - mu) / sqrt(var + eps) + bias

  Under ``jax.jit`` with a batch sharded over devices the means run over the
  global batch.

  Args:
    x: ``<float>[batch, ...features]``.
    scale, bias: of the feature shape (the axes not in ``batch_axes``); ``None``
      for 1 and 0.
    batch_axes: the axes the statistics run over; default the leading axis.
    eps: added to the variance inside the square root.
    unbiased: normalize with the unbiased variance estimator; the paper does
      so for its batch-size-4 runs.

  Returns:
    ``(y, mean, var)``: ``y`` of ``x``'s shape and dtype, and the batch
    statistics of the feature shape in float32 (to update running averages).
  """
  axes = canonical_axes(batch_axes, x.ndim)
  feature_axes = tuple(i for i in range(x.ndim) if i not in axes)
  where = f'batch norm over batch axes {axes} of an input of shape {tuple(x.shape)}'
  scale = _broadcast_param(scale, x.ndim, feature_axes, 'scale', where, x.shape)
  bias = _broadcast_param(bias, x.ndim, feature_axes, 'bias', where, x.shape)
  mean, var = mean_and_variance(x, axes, unbiased=unbiased)
  y = normalize(x, mean, var, scale, bias, eps)
  return y, jnp.squeeze(mean, axis=axes), jnp.squeeze(var, axis=axes)


def batch_norm_eval(
  x: jax.Array,
  mean: jax.Array,
  var: jax.Array,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  *,
  batch_axes: Axes = 0,
  eps: float = DEFAULT_EPS,
) -> jax.Array:
  """Batch normalization at test time, with population (running-average) statistics.

  ``y = scale * (x - mean) / sqrt(var + eps) + bias`` where ``mean`` and
  ``var`` have the feature shape (the axes of ``x`` not in ``batch_axes``).
  """
  axes = canonical_axes(batch_axes, x.ndim)
  feature_axes = tuple(i for i in range(x.ndim) if i not in axes)
  where = f'batch norm over batch axes {axes} of an input of shape {tuple(x.shape)}'
  args = [
    _broadcast_param(p, x.ndim, feature_axes, n, where, x.shape)
    for p, n in ((mean, 'mean'), (var, 'var'), (scale, 'scale'), (bias, 'bias'))
  ]
  mean_b, var_b, scale_b, bias_b = args
  dtype = stats_dtype(x.dtype)
  return normalize(x, mean_b.astype(dtype), var_b.astype(dtype), scale_b, bias_b, eps)


def update_running_stats(
  running_mean: jax.Array,
  running_var: jax.Array,
  batch_mean: jax.Array,
  batch_var: jax.Array,
  momentum: float,
) -> tuple[jax.Array, jax.Array]:
  """Exponential moving averages: ``r <- momentum * r + (1 - momentum) * batch``."""
  new_mean = momentum * running_mean + (1.0 - momentum) * batch_mean
  new_var = momentum * running_var + (1.0 - momentum) * batch_var
  return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


def weight_norm(
  v: jax.Array,
  g: jax.Array,
  *,
  axis: Axes = 0,
  eps: float = 0.0,
) -> jax.Array:
  """Weight normalization (Salimans & Kingma 2016): ``w = g * v / ||v||``.

  Each output unit's weight vector is re-parameterized by a direction ``v``
  and a length ``g``. For a Flax kernel of shape ``(in, out)`` the norm runs
  over the input axis (``axis=0``) and ``g`` has shape ``(out,)``.

  Args:
    v: the direction parameters, e.g. ``<float>[in, out]``.
    g: the lengths, of the shape of ``v`` without ``axis``.
    axis: the axes the norm runs over (the fan-in axes).
    eps: added to the squared norm inside the square root (0 by default, as
      in the original; ``v`` is never zero in practice).

  Returns:
    The weight ``w`` of ``v``'s shape and dtype.
  """
  axes = canonical_axes(axis, v.ndim)
  keep_axes = tuple(i for i in range(v.ndim) if i not in axes)
  where = f'weight norm over axes {axes} of a kernel of shape {tuple(v.shape)}'
  g_b = _broadcast_param(g, v.ndim, keep_axes, 'g', where, v.shape)
  vf = v.astype(stats_dtype(v.dtype))
  sq_norm = jnp.sum(jnp.square(vf), axis=axes, keepdims=True)
  w = vf * jax.lax.rsqrt(sq_norm + eps) * g_b.astype(vf.dtype)
  return w.astype(v.dtype)

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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

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
      '(or a shape that equals the input shape with every other axis set to 1).'
    )


def _param_shape(x_shape, axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(x_shape[a] for a in axes)


def _broadcast_param(param, x_ndim: int, axes: tuple[int, ...], name: str, where: str, x_shape):
  """Reshapes a parameter of shape ``x.shape[axes]`` so it broadcasts against x.

  A parameter given already in broadcast form (x's rank, ones elsewhere) is
  accepted as is.
  """
  if param is None:
    return None
  param = jnp.asarray(param)
  expected = _param_shape(x_shape, axes)
  full = tuple(x_shape[i] if i in axes else 1 for i in range(x_ndim))
  if tuple(param.shape) == full:
    return param
  _check_param(name, param, expected, where)
  return param.reshape(full)


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

  Derivatives are hand-written (a ``jax.custom_jvp`` whose reverse mode JAX
  gets by transposing it). With ``xhat = (a - mu) / sigma`` and means over the
  normalized axes, the tangent and, transposed, the gradient are::

      dy     = scale / sigma * (da - mean(da) - xhat * mean(xhat * da))
               + dscale * xhat + dbias
      da     = (g - mean(g) - xhat * mean(g * xhat)) / sigma,   g = scale * dy
      dscale = sum(dy * xhat),   dbias = sum(dy)                 (over the other axes)

  Reverse mode saves only ``x`` (in its own dtype), the gains and two float32
  numbers per case (``mu`` and ``1/sigma``); ``xhat`` is recomputed inside the
  backward's fused loops. The gradient takes three fused passes over ``x`` and
  ``dy`` (one writes ``da``), a third of the time of autodiff through the
  formula on CPU (see ``scripts/bench.py``), and matches that autodiff to
  float rounding (:func:`layer_norm_reference`). Forward mode, reverse mode
  and every composition (``jax.hessian``, ``grad`` of ``grad``) work.

  Args:
    x: ``<float>[..., *feature_shape]``, any float dtype.
    scale: gain ``g``, of shape ``x.shape[axis]`` (e.g. ``(H,)``); ``None`` for 1.
    bias: bias ``b``, same shape as ``scale``; ``None`` for 0.
    axis: the normalized axes (int or sequence of ints).
    eps: added to the variance inside the square root.

  Returns:
    An array of ``x``'s shape and dtype; statistics are computed in float32
    (or float64 for float64 input).
  """
  axes = canonical_axes(axis, x.ndim)
  scale, bias = _layer_norm_params(x, scale, bias, axes)
  return _layer_norm_fused(x, scale, bias, axes, float(eps))


def layer_norm_reference(
  x: jax.Array,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  *,
  axis: Axes = -1,
  eps: float = DEFAULT_EPS,
) -> jax.Array:
  """:func:`layer_norm` written plainly and differentiated by JAX's autodiff.

  The same values as :func:`layer_norm` (two-pass statistics in float32,
  output in ``x.dtype``); its derivatives are whatever autodiff makes of the
  formula: reverse mode saves four full-size float32 arrays and takes several
  more passes over the data. Kept as the reference for tests and benchmarks.
  """
  axes = canonical_axes(axis, x.ndim)
  scale, bias = _layer_norm_params(x, scale, bias, axes)
  mean, var = mean_and_variance(x, axes)
  return normalize(x, mean, var, scale, bias, eps)


def _layer_norm_params(x, scale, bias, axes):
  where = f'layer norm over axes {axes} of an input of shape {tuple(x.shape)}'
  scale = _broadcast_param(scale, x.ndim, axes, 'scale', where, x.shape)
  bias = _broadcast_param(bias, x.ndim, axes, 'bias', where, x.shape)
  return scale, bias


# How the derivative rule keeps XLA:CPU's fusions tight (measured with
# scripts/bench.py; see results/bench.md):
# * A broadcast that several fusions share (of the mean, the rstd or the gain)
#   is written out as a full-size array, and a reduction fusion whose centered
#   input another fusion also needs writes that input out. `_copies` gives
#   every fusion its own copy of the small operands, which XLA cannot merge,
#   so each fusion reads only x, dy and vectors; and its own copy of x, so
#   that a bfloat16 x is converted inside each fusion instead of once into a
#   full-size float32 array.
# * The tangent runs under `jax.checkpoint` with nothing saveable: reverse mode
#   then keeps only the tangent's inputs (x, the gains, mean and rstd) as
#   residuals and recomputes xhat inside the backward's fusions. A
#   `jax.custom_vjp` with the same backward compiled to the same fusions and
#   ran at the same speed, but gave no forward mode.
# * Processing the cases in blocks of 128 KiB to 8 MiB with `lax.map`, to keep
#   x and dy in cache between the backward's passes, was 5-35% slower.


def _copies(value, n: int):
  """``n`` copies of ``value`` that XLA cannot merge (differentiable and batchable)."""
  return jax.lax.optimization_barrier((value,) * n)


def _layer_norm_stats(x, scale, bias, axes, eps):
  """``(y, mean, rstd)``: the output and the statistics, two-pass, in float32 or wider."""
  dtype = stats_dtype(x.dtype)
  x1, x2, x3 = (xc.astype(dtype) for xc in _copies(x, 3))
  # Shifted mean: summing x - x[first] instead of x keeps the float32 sum's
  # rounding relative to the spread, not to the mean (at mean 1e4 and unit
  # variance a plain sum is off by 1.5e-3, this by 2e-4). It costs about 30%
  # of the forward on XLA:CPU, where a corrected second pass costs 130%.
  first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))
  pivot = _copies(x[first].astype(dtype), 1)[0]
  mean = pivot + jnp.mean(x1 - pivot, axis=axes, keepdims=True)
  mean_var, mean_y = _copies(mean, 2)
  var = jnp.mean(jnp.square(x2 - mean_var), axis=axes, keepdims=True)
  rstd = jax.lax.rsqrt(var + eps)
  y = (x3 - mean_y) * rstd
  if scale is not None:
    y = y * scale.astype(dtype)
  if bias is not None:
    y = y + bias.astype(dtype)
  return y.astype(x.dtype), mean, rstd


def _layer_norm_tangent(axes, x, scale, mean, rstd, x_dot, scale_dot, bias_dot):
  """The tangent of ``y``, linear in ``(x_dot, scale_dot, bias_dot)`` (``None``: zero)."""
  dtype = stats_dtype(x.dtype)
  x1, x2, x3 = (xc.astype(dtype) for xc in _copies(x, 3))
  m1, m2, m3 = _copies(mean, 3)
  r1, r2, r3, r4 = _copies(rstd, 4)
  y_dot = None
  if x_dot is not None:
    xd = x_dot.astype(dtype)
    mean_xd = jnp.mean(xd, axis=axes, keepdims=True)
    mean_xhat_xd = jnp.mean((x1 - m1) * r1 * xd, axis=axes, keepdims=True)
    gain = r2 if scale is None else r2 * _copies(scale.astype(dtype), 1)[0]
    y_dot = gain * (xd - mean_xd - (x2 - m2) * r3 * mean_xhat_xd)
  if scale_dot is not None:
    term = scale_dot.astype(dtype) * ((x3 - m3) * r4)
    y_dot = term if y_dot is None else y_dot + term
  if bias_dot is not None:
    term = jnp.broadcast_to(bias_dot.astype(dtype), x.shape)
    y_dot = term if y_dot is None else y_dot + term
  if y_dot is None:
    return jnp.zeros(x.shape, x.dtype)
  return y_dot.astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _layer_norm_fused(x, scale, bias, axes, eps):
  # Undifferentiated, this compiles to one fused loop.
  return _layer_norm_stats(x, scale, bias, axes, eps)[0]


def _nonzero(tangent):
  if tangent is None or isinstance(tangent, jax.custom_derivatives.SymbolicZero):
    return None
  return tangent


@functools.partial(_layer_norm_fused.defjvp, symbolic_zeros=True)
def _layer_norm_fused_jvp(axes, eps, primals, tangents):
  x, scale, bias = primals
  x_dot, scale_dot, bias_dot = (_nonzero(t) for t in tangents)
  y, mean, rstd = _layer_norm_stats(x, scale, bias, axes, eps)
  tangent = jax.checkpoint(
    functools.partial(_layer_norm_tangent, axes),
    policy=jax.checkpoint_policies.nothing_saveable,
  )
  return y, tangent(x, scale, mean, rstd, x_dot, scale_dot, bias_dot)


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

r"""Flax NNX counterparts of :mod:`lnorm.layers` and :mod:`lnorm.recurrent`.

The modules follow ``flax.nnx`` conventions (sizes given up front, ``rngs``,
``nnx.Param``/``nnx.BatchStat``, ``model.train()``/``model.eval()`` toggling
``use_running_average``, cells subclassing ``nnx.RNNCellBase`` for
``nnx.RNN``/``nnx.Bidirectional``) and call the same pure functions of
:mod:`lnorm.functional` and :mod:`lnorm.cells` as the linen ones, so the
numbers are the same (bit for bit, for one step from the same parameters).

Every NNX module here has its parameters at the same paths, with the same
names, as its linen twin (``scale``/``bias``, ``input_kernel``, ``ln_h/scale``,
...), and :func:`from_linen_params` copies linen variables into it::

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from lnorm import nnx as lnnx, recurrent
    >>> x = jnp.ones((2, 3))
    >>> cell = recurrent.LSTMCell(4, norm='layer')
    >>> carry = cell.initialize_carry(jax.random.key(0), x.shape)
    >>> variables = cell.init(jax.random.key(1), carry, x)
    >>> twin = lnnx.LSTMCell(3, 4, norm='layer', rngs=nnx.Rngs(0))
    >>> twin = lnnx.from_linen_params(twin, variables)
    >>> bool(jnp.allclose(twin(carry, x)[1], cell.apply(variables, carry, x)[1]))
    True

The conventions (eps 1e-5, gate orders, carried cell state, forget bias,
initializers, dtypes) are those documented in :mod:`lnorm.recurrent`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm import cells as C
from lnorm import functional as F
from lnorm.layers import (
  NORM_NAMES,
  broadcast_to_rank,
  check_norm_name,
  group_norm_setup,
  param_axes,
)

Array = jax.Array
Initializer = Callable[..., Array]
M = TypeVar('M', bound=nnx.Module)

__all__ = [
  'BNLSTMCell',
  'BatchNorm',
  'GRUCell',
  'GroupNorm',
  'Identity',
  'LSTMCell',
  'LayerNorm',
  'NORM_NAMES',
  'RMSNorm',
  'StepBatchNorm',
  'WeightNormDense',
  'from_linen_params',
  'make_dense',
  'make_norm',
]


def _feature_shape(num_features: int | Sequence[int]) -> tuple[int, ...]:
  return (num_features,) if isinstance(num_features, int) else tuple(num_features)


def _axes_for(shape: tuple[int, ...], axis: F.Axes | None, x: Array, where: str) -> tuple[int, ...]:
  """The input axes the parameters of ``shape`` cover; checks them against ``x``."""
  if axis is None:
    axis = tuple(range(-len(shape), 0))
  axes = F.canonical_axes(axis, x.ndim)
  got = tuple(x.shape[a] for a in axes)
  if got != shape:
    raise ValueError(
      f'{where} was built for {shape} features on axes {axes} but got an input of shape '
      f'{tuple(x.shape)} ({got} on those axes).'
    )
  return axes


def _value(v: nnx.Variable | None) -> Array | None:
  return None if v is None else v[...]


class Identity(nnx.Module):
  """Returns its input: the "normalization" of ``norm='none'`` and ``norm='weight'``."""

  def __call__(self, x: Array) -> Array:
    return x


class LayerNorm(nnx.Module):
  """Layer normalization (Ba, Kiros & Hinton 2016), eqs. (3)-(4); NNX twin of ``layers.LayerNorm``.

  ``y = scale * (x - mean(x)) / sqrt(var(x) + epsilon) + bias`` over the
  normalized axes (default: the last ``len(num_features)`` axes), statistics
  in float32, output in the input dtype. eps 1e-5 (Flax: 1e-6).
  ``LayerNorm(C, axis=(1, 2, 3), feature_axes=-1)`` normalizes every NHWC
  example over H, W, C with per-channel gains and biases (paper §6.7).

  Args:
    num_features: the size (int) or shape (tuple) of the axes the parameters
      cover: the normalized axes, or ``feature_axes`` when given.
    axis: the normalized axes (``None``: the trailing ``len(num_features)``).
    feature_axes: the axes the gains and biases cover, among ``axis``
      (``None``: all of ``axis``).
    epsilon: added to the variance inside the square root.
    use_scale, use_bias: learn ``scale`` (init 1) and ``bias`` (init 0).
    scale_init, bias_init: their initializers.
    param_dtype: dtype of the parameters.
    rngs: random streams (``params`` is used by the initializers).
  """

  def __init__(
    self,
    num_features: int | Sequence[int],
    *,
    axis: F.Axes | None = None,
    epsilon: float = F.DEFAULT_EPS,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: Initializer = nnx.initializers.ones,
    bias_init: Initializer = nnx.initializers.zeros,
    param_dtype: Any = jnp.float32,
    feature_axes: F.Axes | None = None,
    rngs: nnx.Rngs,
  ):
    if feature_axes is not None and axis is None:
      raise ValueError('LayerNorm: with feature_axes, give the normalized axes as axis too.')
    self.num_features = _feature_shape(num_features)
    self.axis = axis
    self.feature_axes = feature_axes
    self.epsilon = epsilon
    shape = self.num_features
    self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else None
    self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    scale, bias = _value(self.scale), _value(self.bias)
    if self.feature_axes is None:
      axes = _axes_for(self.num_features, self.axis, x, 'LayerNorm')
    else:
      axes, features = param_axes(self.axis, self.feature_axes, x.ndim)
      _axes_for(self.num_features, features, x, 'LayerNorm')
      scale = broadcast_to_rank(scale, x.shape, features)
      bias = broadcast_to_rank(bias, x.shape, features)
    return F.layer_norm(x, scale, bias, axis=axes, eps=self.epsilon)


class GroupNorm(nnx.Module):
  """Group normalization (Wu & He 2018); NNX twin of ``layers.GroupNorm``.

  Every example and group of ``num_channels / num_groups`` channels is
  normalized over those channels and the spatial axes, with per-channel
  ``scale`` (init 1) and ``bias`` (init 0); see
  :func:`lnorm.functional.group_norm`.

  Args:
    num_features: the number of channels ``C``.
    num_groups: a divisor of ``C``; ``None``: 32, or fewer as
      :func:`lnorm.functional.group_count` chooses.
    channel_axis: the channel axis (default the last: NHWC).
    epsilon: added to the variance inside the square root.
    use_scale, use_bias, scale_init, bias_init, param_dtype: as in :class:`LayerNorm`.
    rngs: random streams.

  Raises:
    ValueError: ``num_groups`` does not divide ``num_features`` (the message
      lists the allowed counts).
  """

  def __init__(
    self,
    num_features: int,
    *,
    num_groups: int | None = None,
    channel_axis: int = -1,
    epsilon: float = F.DEFAULT_EPS,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: Initializer = nnx.initializers.ones,
    bias_init: Initializer = nnx.initializers.zeros,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if num_groups is not None:
      try:
        F.group_count(num_groups, num_features)
      except ValueError as e:
        raise ValueError(f'GroupNorm: {e}') from None
    self.num_features = num_features
    self.num_groups = num_groups
    self.channel_axis = channel_axis
    self.epsilon = epsilon
    shape = (num_features,)
    self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else None
    self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    groups, shape = group_norm_setup(self.num_groups, self.channel_axis, x)
    if shape != (self.num_features,):
      raise ValueError(
        f'GroupNorm was built for {self.num_features} channels but got an input of shape '
        f'{tuple(x.shape)} ({shape[0]} on channel axis {self.channel_axis}).'
      )
    return F.group_norm(
      x,
      _value(self.scale),
      _value(self.bias),
      num_groups=groups,
      eps=self.epsilon,
      channel_axis=self.channel_axis,
    )


class RMSNorm(nnx.Module):
  """RMS normalization (Zhang & Sennrich 2019), LN without re-centering.

  ``y = scale * x / sqrt(mean(x**2) + epsilon)`` (+ ``bias``).
  NNX twin of ``layers.RMSNorm``; ``use_bias`` (off by default) adds a bias
  after the normalization.
  """

  def __init__(
    self,
    num_features: int | Sequence[int],
    *,
    axis: F.Axes | None = None,
    epsilon: float = F.DEFAULT_EPS,
    use_scale: bool = True,
    use_bias: bool = False,
    scale_init: Initializer = nnx.initializers.ones,
    bias_init: Initializer = nnx.initializers.zeros,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.num_features = _feature_shape(num_features)
    self.axis = axis
    self.epsilon = epsilon
    shape = self.num_features
    self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else None
    self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    axes = _axes_for(self.num_features, self.axis, x, 'RMSNorm')
    y = F.rms_norm(x, _value(self.scale), axis=axes, eps=self.epsilon)
    if self.bias is not None:
      full = tuple(x.shape[i] if i in axes else 1 for i in range(x.ndim))
      y = (y + self.bias[...].reshape(full)).astype(x.dtype)
    return y


class BatchNorm(nnx.Module):
  """Batch normalization (Ioffe & Szegedy 2015); NNX twin of ``layers.BatchNorm``.

  Training (``use_running_average=False``, or after ``model.train()``)
  normalizes with the batch statistics over every axis but the feature axes
  and updates the running averages ``mean`` and ``var`` (``nnx.BatchStat``);
  evaluation (``model.eval()``) uses the averages.

  Args:
    num_features: size (int) or shape (tuple) of the feature axes.
    use_running_average: evaluation mode (may be overridden per call).
    axis: the feature axes (``None``: the trailing ones).
    momentum: decay of the running averages.
    epsilon: added to the variance inside the square root.
    unbiased_variance: normalize with ``N/(N-1) * var`` (the paper at batch size 4).
    use_scale, use_bias, scale_init, bias_init, param_dtype: as in :class:`LayerNorm`.
    rngs: random streams.
  """

  def __init__(
    self,
    num_features: int | Sequence[int],
    *,
    use_running_average: bool = False,
    axis: F.Axes | None = None,
    momentum: float = 0.99,
    epsilon: float = F.DEFAULT_EPS,
    unbiased_variance: bool = False,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: Initializer = nnx.initializers.ones,
    bias_init: Initializer = nnx.initializers.zeros,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.num_features = _feature_shape(num_features)
    self.use_running_average = use_running_average
    self.axis = axis
    self.momentum = momentum
    self.epsilon = epsilon
    self.unbiased_variance = unbiased_variance
    shape = self.num_features
    self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else None
    self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else None
    self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
    self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    feature_axes = _axes_for(self.num_features, self.axis, x, 'BatchNorm')
    batch_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    scale, bias = _value(self.scale), _value(self.bias)
    if use_running_average:
      return F.batch_norm_eval(
        x, self.mean[...], self.var[...], scale, bias, batch_axes=batch_axes, eps=self.epsilon
      )
    y, mean, var = F.batch_norm_train(
      x, scale, bias, batch_axes=batch_axes, eps=self.epsilon, unbiased=self.unbiased_variance
    )
    self.mean[...], self.var[...] = F.update_running_stats(
      self.mean[...], self.var[...], mean, var, self.momentum
    )
    return y


class WeightNormDense(nnx.Module):
  """A weight-normalized dense layer (Salimans & Kingma 2016); twin of ``layers.WeightNormDense``.

  ``y = x @ w + bias``, ``w[:, j] = scale[j] * kernel[:, j] / ||kernel[:, j]||``;
  ``scale`` starts at the column norms of the initial ``kernel``.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    kernel_init: Initializer = C.default_kernel_init,
    bias_init: Initializer = nnx.initializers.zeros,
    epsilon: float = 0.0,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.in_features = in_features
    self.out_features = out_features
    self.epsilon = epsilon
    self.dtype = dtype
    kernel = kernel_init(rngs.params(), (in_features, out_features), param_dtype)
    self.kernel = nnx.Param(kernel)
    self.scale = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(kernel), axis=0)))
    self.bias = (
      nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
    )

  def __call__(self, x: Array) -> Array:
    C.check_size('WeightNormDense', 'inputs', self.in_features, x.shape[-1])
    w = F.weight_norm(self.kernel[...], self.scale[...], axis=0, eps=self.epsilon)
    dtype = self.dtype or x.dtype
    y = jnp.dot(x.astype(dtype), w.astype(dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


def make_norm(
  norm: str,
  num_features: int | Sequence[int],
  *,
  rngs: nnx.Rngs,
  train: bool = False,
  axis: F.Axes | None = None,
  epsilon: float = F.DEFAULT_EPS,
  unbiased_variance: bool = False,
  momentum: float = 0.99,
  num_groups: int | None = None,
  **kwargs: Any,
) -> nnx.Module:
  """Builds the NNX activation normalization called ``norm`` (see ``layers.make_norm``).

  ``'none'`` and ``'weight'`` give :class:`Identity`; ``'layer'``,
  ``'rms'``, ``'batch'``, ``'group'`` the modules above, over ``num_features``
  features (for ``'group'``: ``num_features`` channels on the channel axis
  ``axis``, default -1, in ``num_groups`` groups).

  Raises:
    ValueError: ``norm`` is not one of :data:`NORM_NAMES` (the message lists them).
  """
  check_norm_name(norm)
  if norm in ('none', 'weight'):
    return Identity()
  if norm == 'layer':
    return LayerNorm(num_features, axis=axis, epsilon=epsilon, rngs=rngs, **kwargs)
  if norm == 'rms':
    return RMSNorm(num_features, axis=axis, epsilon=epsilon, rngs=rngs, **kwargs)
  if norm == 'group':
    if not isinstance(num_features, int) or not isinstance(axis, int | None):
      raise ValueError(
        f"norm 'group' takes a channel count and one channel axis; got {num_features!r}, {axis!r}."
      )
    channel_axis = -1 if axis is None else axis
    return GroupNorm(
      num_features,
      num_groups=num_groups,
      channel_axis=channel_axis,
      epsilon=epsilon,
      rngs=rngs,
      **kwargs,
    )
  return BatchNorm(
    num_features,
    use_running_average=not train,
    axis=axis,
    epsilon=epsilon,
    unbiased_variance=unbiased_variance,
    momentum=momentum,
    rngs=rngs,
    **kwargs,
  )


def make_dense(
  norm: str, in_features: int, out_features: int, *, rngs: nnx.Rngs, **kwargs: Any
) -> nnx.Module:
  """The dense layer for ``norm``: ``WeightNormDense`` for ``'weight'``, else ``nnx.Linear``."""
  check_norm_name(norm)
  if norm == 'weight':
    return WeightNormDense(in_features, out_features, rngs=rngs, **kwargs)
  return nnx.Linear(in_features, out_features, rngs=rngs, **kwargs)


class NormalizedDense(nnx.Module):
  """``norm(x @ W) (+ bias)``: NNX twin of :class:`lnorm.layers.NormalizedDense`.

  The same layer and parameter paths (``dense/kernel``, ``norm/scale``, ...):
  ``'none'``/``'weight'`` keep the dense bias; ``'layer'``, ``'batch'``,
  ``'group'`` use the norm's gain and bias (paper eq. 4); ``'rms'`` adds a bias
  after RMS norm. Batch norm uses batch statistics unless
  ``use_running_average`` (the attribute, ``model.eval()``, or the call's
  argument) says otherwise.

  Args:
    in_features, features: input and output widths.
    norm: one of :data:`NORM_NAMES`.
    use_running_average: for ``'batch'``: evaluation mode.
    unbiased_variance: for ``'batch'``: Bessel's correction (paper: batch size 4).
    epsilon: the normalization's epsilon.
    rngs: random streams.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    norm: str = 'layer',
    use_running_average: bool = False,
    unbiased_variance: bool = False,
    epsilon: float = F.DEFAULT_EPS,
    rngs: nnx.Rngs,
  ):
    check_norm_name(norm)
    own_bias = norm in ('none', 'weight')
    self.dense = make_dense(norm, in_features, features, use_bias=own_bias, rngs=rngs)
    if norm == 'rms':
      self.norm = RMSNorm(features, epsilon=epsilon, use_bias=True, rngs=rngs)
    else:
      self.norm = make_norm(
        norm, features, train=not use_running_average, epsilon=epsilon,
        unbiased_variance=unbiased_variance, rngs=rngs,
      )  # fmt: skip
    self.is_batch = norm == 'batch'

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    y = self.dense(x)
    if self.is_batch:
      return self.norm(y, use_running_average=use_running_average)
    return self.norm(y)


class _CellBase(nnx.RNNCellBase):
  """Shared parameter set-up: ``input_kernel``, ``recurrent_kernel`` and carry helpers."""

  def _check(self, hidden: Array, inputs: Array):
    name = type(self).__name__
    C.check_size(name, 'a carry', self.hidden_features, hidden.shape[-1])
    C.check_size(name, 'inputs', self.in_features, inputs.shape[-1])

  def _zeros(self, input_shape: tuple[int, ...]) -> Array:
    shape = tuple(input_shape[:-1]) + (self.hidden_features,)
    return jnp.zeros(shape, self.dtype or self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


def _cell_kernels(cell, in_features, hidden, gates, kernel_init, recurrent_kernel_init, rngs):
  pd = cell.param_dtype
  cell.input_kernel = nnx.Param(kernel_init(rngs.params(), (in_features, gates * hidden), pd))
  cell.recurrent_kernel = nnx.Param(
    recurrent_kernel_init(rngs.params(), (hidden, gates * hidden), pd)
  )


def _ln_params(ln: LayerNorm) -> tuple[Array, Array]:
  """A cell's layer norm's ``(scale, bias)``, for :func:`lnorm.cells.ln_lstm_step`."""
  return ln.scale[...], ln.bias[...]


class LSTMCell(_CellBase):
  r"""LSTM cell with the paper's layer normalization; NNX twin of :class:`lnorm.recurrent.LSTMCell`.

  ``norm='layer'`` is the LN-LSTM of eqs. (20)-(22):
  ``[f; i; o; g] = LN(W_h h; a1, b1) + LN(W_x x; a2, b2) + b``,
  ``c_t = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
  ``h_t = sigmoid(o) * tanh(LN(c_t; a3, b3))``, each LN over the whole
  ``4H`` vector and the un-normalized ``c_t`` carried. ``'none'``: the plain
  LSTM (eqs. 17-19); ``'draw'``: LN on ``c_t`` only (eqs. 29-31). Carry
  ``(c, h)``, each ``<float>[*batch, hidden_features]``.

  Args:
    in_features: input size.
    hidden_features: ``H``.
    norm: ``'none'``, ``'layer'`` or ``'draw'``.
    epsilon: the LN epsilon (1e-5).
    forget_bias: initial value of the forget slice of ``b`` (default 0).
    kernel_init, recurrent_kernel_init, bias_init: as in the linen cell.
    dtype: computation dtype (``None``: promoted); param_dtype: parameter dtype.
    rngs: random streams.
  """

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    norm: str = 'layer',
    epsilon: float = F.DEFAULT_EPS,
    forget_bias: float = 0.0,
    kernel_init: Initializer = C.default_kernel_init,
    recurrent_kernel_init: Initializer = C.lstm_recurrent_init,
    bias_init: Initializer = nnx.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    check_norm_name(norm, C.LSTM_NORMS)
    self.in_features, self.hidden_features, self.norm = in_features, hidden_features, norm
    self.dtype, self.param_dtype = dtype, param_dtype
    hidden = hidden_features
    _cell_kernels(self, in_features, hidden, 4, kernel_init, recurrent_kernel_init, rngs)
    b_init = C.forget_bias_init(hidden, forget_bias, bias_init)
    self.bias = nnx.Param(b_init(rngs.params(), (4 * hidden,), param_dtype))

    def ln(n):
      return LayerNorm(n, epsilon=epsilon, param_dtype=param_dtype, rngs=rngs)

    self.ln_h = ln(4 * hidden) if norm == 'layer' else None
    self.ln_x = ln(4 * hidden) if norm == 'layer' else None
    self.ln_c = ln(hidden) if norm in ('layer', 'draw') else None

  def __call__(
    self, carry: tuple[Array, Array], inputs: Array
  ) -> tuple[tuple[Array, Array], Array]:  # type: ignore[override]
    """One step: ``((c, h), x) -> ((c_t, h_t), h_t)``."""
    self._check(carry[1], inputs)
    kernels = dict(
      input_kernel=self.input_kernel[...],
      recurrent_kernel=self.recurrent_kernel[...],
      bias=self.bias[...],
    )
    if self.norm == 'layer':
      lns = {name: _ln_params(getattr(self, name)) for name in ('ln_h', 'ln_x', 'ln_c')}
      eps = self.ln_h.epsilon
      return C.ln_lstm_step(carry, inputs, **kernels, **lns, eps=eps, dtype=self.dtype)
    return C.lstm_step(carry, inputs, **kernels, norm_c=self.ln_c, dtype=self.dtype)

  def initialize_carry(
    self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
  ):  # type: ignore[override]
    """A zero carry ``(c, h)`` in ``dtype or param_dtype`` (``rngs``, ``carry_init`` unused)."""
    del rngs, carry_init
    return self._zeros(input_shape), self._zeros(input_shape)


class GRUCell(_CellBase):
  r"""GRU cell with the paper's layer normalization; NNX twin of :class:`lnorm.recurrent.GRUCell`.

  ``norm='layer'`` is the LN-GRU of eqs. (26)-(28):
  ``[z; r] = LN(W_h h) + LN(W_x x)``,
  ``h~ = tanh(LN(W x) + sigmoid(r) * LN(U h))``,
  ``h_t = (1 - sigmoid(z)) * h + sigmoid(z) * h~`` (the paper's sign
  convention; Flax's ``GRUCell`` weighs the old state by ``z``). ``'none'``:
  eqs. (23)-(25) with biases ``b`` and ``b_c``. Carry ``h``.
  """

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    norm: str = 'layer',
    epsilon: float = F.DEFAULT_EPS,
    kernel_init: Initializer = C.default_kernel_init,
    recurrent_kernel_init: Initializer = C.gru_recurrent_init,
    candidate_recurrent_kernel_init: Initializer = C.orthogonal_init,
    bias_init: Initializer = nnx.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    check_norm_name(norm, C.GRU_NORMS)
    self.in_features, self.hidden_features, self.norm = in_features, hidden_features, norm
    self.dtype, self.param_dtype = dtype, param_dtype
    hidden, pd = hidden_features, param_dtype
    _cell_kernels(self, in_features, hidden, 2, kernel_init, recurrent_kernel_init, rngs)
    self.candidate_input_kernel = nnx.Param(kernel_init(rngs.params(), (in_features, hidden), pd))
    self.candidate_recurrent_kernel = nnx.Param(
      candidate_recurrent_kernel_init(rngs.params(), (hidden, hidden), pd)
    )
    if norm == 'layer':
      self.bias = self.candidate_bias = None
      self.ln_h = LayerNorm(2 * hidden, epsilon=epsilon, param_dtype=pd, rngs=rngs)
      self.ln_x = LayerNorm(2 * hidden, epsilon=epsilon, param_dtype=pd, rngs=rngs)
      self.ln_cx = LayerNorm(hidden, epsilon=epsilon, param_dtype=pd, rngs=rngs)
      self.ln_ch = LayerNorm(hidden, epsilon=epsilon, param_dtype=pd, rngs=rngs)
    else:
      self.bias = nnx.Param(bias_init(rngs.params(), (2 * hidden,), pd))
      self.candidate_bias = nnx.Param(bias_init(rngs.params(), (hidden,), pd))
      self.ln_h = self.ln_x = self.ln_cx = self.ln_ch = None

  def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:  # type: ignore[override]
    """One step: ``(h, x) -> (h_t, h_t)``."""
    self._check(carry, inputs)
    kernels = dict(
      input_kernel=self.input_kernel[...],
      recurrent_kernel=self.recurrent_kernel[...],
      candidate_input_kernel=self.candidate_input_kernel[...],
      candidate_recurrent_kernel=self.candidate_recurrent_kernel[...],
    )
    if self.ln_h is not None:
      lns = {name: _ln_params(getattr(self, name)) for name in ('ln_h', 'ln_x', 'ln_cx', 'ln_ch')}
      eps = self.ln_h.epsilon
      return C.ln_gru_step(carry, inputs, **kernels, **lns, eps=eps, dtype=self.dtype)
    return C.gru_step(
      carry,
      inputs,
      **kernels,
      bias=_value(self.bias),
      candidate_bias=_value(self.candidate_bias),
      norm_h=self.ln_h,
      norm_x=self.ln_x,
      norm_cx=self.ln_cx,
      norm_ch=self.ln_ch,
      dtype=self.dtype,
    )

  def initialize_carry(
    self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
  ):  # type: ignore[override]
    """A zero carry ``h`` in ``dtype or param_dtype``; ``rngs`` and ``carry_init`` are unused."""
    del rngs, carry_init
    return self._zeros(input_shape)


class StepBatchNorm(nnx.Module):
  """Per-time-step batch norm (Cooijmans et al. 2016); twin of ``recurrent.StepBatchNorm``.

  ``scale`` (init ``gamma_init``), optional ``bias`` (init 0), and
  ``nnx.BatchStat`` ``mean``/``var`` of shape ``(max_steps, num_features)``.
  """

  def __init__(
    self,
    num_features: int,
    max_steps: int,
    *,
    use_running_average: bool = False,
    use_bias: bool = True,
    gamma_init: float = 0.1,
    momentum: float = 0.99,
    epsilon: float = F.DEFAULT_EPS,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    del rngs
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.full((num_features,), gamma_init, param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype)) if use_bias else None
    self.mean = nnx.BatchStat(jnp.zeros((max_steps, num_features), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((max_steps, num_features), jnp.float32))

  def __call__(self, x: Array, step: Array, use_running_average: bool | None = None) -> Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    y, mean, var = C.step_batch_norm(
      x,
      step,
      self.scale[...],
      _value(self.bias),
      self.mean[...],
      self.var[...],
      use_running_average=use_running_average,
      momentum=self.momentum,
      eps=self.epsilon,
    )
    if not use_running_average:
      self.mean[...], self.var[...] = mean, var
    return y


class BNLSTMCell(_CellBase):
  r"""Recurrent batch-norm LSTM (Cooijmans et al. 2016), twin of ``lnorm.recurrent.BNLSTMCell``.

  ``[f; i; o; g] = BN_t(W_h h; gamma_h) + BN_t(W_x x; gamma_x) + b``,
  ``c_t = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
  ``h_t = sigmoid(o) * tanh(BN_t(c_t; gamma_c, beta_c))``, statistics per
  time step (population statistics of step ``min(t, max_steps - 1)`` in
  evaluation), gammas initialized to 0.1. Carry ``(c, h, t)`` with the step
  counter ``t`` ``<int32>[*batch]``. ``model.train()``/``model.eval()`` switch
  ``use_running_average``. ``nnx.RNN`` carries all module state through its
  scan, so the per-step statistics update inside it as they should.
  """

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    max_steps: int = 100,
    use_running_average: bool = False,
    momentum: float = 0.99,
    epsilon: float = F.DEFAULT_EPS,
    gamma_init: float = 0.1,
    forget_bias: float = 0.0,
    kernel_init: Initializer = C.default_kernel_init,
    recurrent_kernel_init: Initializer = C.lstm_recurrent_init,
    bias_init: Initializer = nnx.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.in_features, self.hidden_features = in_features, hidden_features
    self.use_running_average = use_running_average
    self.dtype, self.param_dtype = dtype, param_dtype
    hidden = hidden_features
    _cell_kernels(self, in_features, hidden, 4, kernel_init, recurrent_kernel_init, rngs)
    b_init = C.forget_bias_init(hidden, forget_bias, bias_init)
    self.bias = nnx.Param(b_init(rngs.params(), (4 * hidden,), param_dtype))

    def bn(n, use_bias):
      return StepBatchNorm(
        n,
        max_steps,
        use_running_average=use_running_average,
        use_bias=use_bias,
        gamma_init=gamma_init,
        momentum=momentum,
        epsilon=epsilon,
        param_dtype=param_dtype,
        rngs=rngs,
      )

    self.bn_h, self.bn_x, self.bn_c = bn(4 * hidden, False), bn(4 * hidden, False), bn(hidden, True)

  def __call__(self, carry: tuple[Array, Array, Array], inputs: Array):  # type: ignore[override]
    """One step: ``((c, h, t), x) -> ((c_t, h_t, t + 1), h_t)``."""
    if len(carry) != 3:
      raise ValueError(f'BNLSTMCell carries (c, h, step); got a carry of {len(carry)} parts.')
    c, h, t = carry
    self._check(h, inputs)
    ura = self.use_running_average
    (new_c, new_h), _ = C.lstm_step(
      (c, h),
      inputs,
      input_kernel=self.input_kernel[...],
      recurrent_kernel=self.recurrent_kernel[...],
      bias=self.bias[...],
      norm_h=lambda v: self.bn_h(v, t, ura),
      norm_x=lambda v: self.bn_x(v, t, ura),
      norm_c=lambda v: self.bn_c(v, t, ura),
      dtype=self.dtype,
    )
    return (new_c, new_h, t + 1), new_h

  def initialize_carry(
    self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
  ):  # type: ignore[override]
    """``(c, h, t)``: zeros in ``dtype or param_dtype`` and the step ``t = 0`` (int32)."""
    del rngs, carry_init
    batch = tuple(input_shape[:-1])
    return self._zeros(input_shape), self._zeros(input_shape), jnp.zeros(batch, jnp.int32)


def _merge(into: dict, tree: Mapping) -> None:
  for k, v in tree.items():
    if isinstance(v, Mapping):
      _merge(into.setdefault(k, {}), v)
    elif k in into:
      raise ValueError(f'variable {k!r} appears in two linen collections.')
    else:
      into[k] = v


def from_linen_params(module: M, variables: Mapping[str, Any]) -> M:
  """Copies linen variables into an NNX module with the same structure, in place; returns it.

  The NNX modules of this file keep every ``nnx.Param`` and ``nnx.BatchStat``
  at the path its linen twin uses inside ``params``/``batch_stats`` (e.g.
  ``ln_h/scale``); container modules work too when their attribute names
  equal the linen submodule names (``nnx.RNN(cell)`` and ``nn.RNN(cell)`` both
  call it ``cell``).

  Args:
    module: the NNX module to fill.
    variables: the linen variables (``{'params': ..., 'batch_stats': ...}``),
      or a bare ``params`` tree.

  Returns:
    ``module``, whose parameters and batch statistics now equal the linen ones.

  Raises:
    ValueError: a variable is missing on one side or has another shape.
  """
  if 'params' not in variables and 'batch_stats' not in variables:
    variables = {'params': variables}
  linen: dict = {}
  for col in ('params', 'batch_stats'):
    _merge(linen, jax.tree_util.tree_map(lambda a: a, dict(variables.get(col, {}))))
  state = nnx.state(module, (nnx.Param, nnx.BatchStat))
  pure = nnx.to_pure_dict(state)
  used: set[tuple] = set()

  def fill(node, src, path):
    out = {}
    for k, v in node.items():
      p = path + (str(k),)
      if isinstance(v, Mapping):
        if not isinstance(src, Mapping) or str(k) not in src:
          raise ValueError(f'linen variables have no {"/".join(p)}.')
        out[k] = fill(v, src[str(k)], p)
        continue
      if not isinstance(src, Mapping) or str(k) not in src:
        raise ValueError(f'linen variables have no {"/".join(p)} (NNX shape {tuple(v.shape)}).')
      new = jnp.asarray(src[str(k)])
      if new.shape != v.shape:
        raise ValueError(
          f'{"/".join(p)} has shape {tuple(new.shape)} in linen but {tuple(v.shape)} in NNX.'
        )
      used.add(p)
      out[k] = new.astype(v.dtype)
    return out

  filled = fill(pure, linen, ())
  leaves = {
    tuple(str(getattr(k, 'key', k)) for k in kp)
    for kp, _ in jax.tree_util.tree_flatten_with_path(linen)[0]
  }
  unused = sorted('/'.join(p) for p in leaves - used)
  if unused:
    raise ValueError(f'linen variables with no place in the NNX module: {", ".join(unused)}.')
  nnx.replace_by_pure_dict(state, filled)
  nnx.update(module, state)
  return module

"""Flax linen normalization layers, and the registry that builds one by name.

The modules are thin: they own the parameters (named ``scale`` and ``bias``
like Flax's) and call the pure functions of :mod:`lnorm.functional`.

Every experiment chooses its normalization by name::

    norm = make_norm('layer')                   # an nn.Module, or Identity
    dense = make_dense('weight', features=1000) # WeightNormDense for 'weight'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lnorm import functional as F

Axes = F.Axes
Initializer = Callable[..., jax.Array]

#: The normalization names every experiment can sweep over.
NORM_NAMES = ('none', 'layer', 'batch', 'weight', 'rms', 'group')


def check_norm_name(name: str, allowed: tuple[str, ...] = NORM_NAMES) -> str:
  """Returns ``name`` if it is a known normalization, else raises a ValueError listing them."""
  if name not in allowed:
    raise ValueError(f'unknown norm {name!r}; valid names are: {", ".join(allowed)}.')
  return name


def _feature_shape(x_shape, axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(x_shape[a] for a in axes)


def param_axes(
  axis: Axes, feature_axes: Axes | None, ndim: int, where: str = 'LayerNorm'
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(axes, feature_axes)`` canonical: the normalized axes, and those the parameters cover.

  ``feature_axes`` ``None`` means every normalized axis.

  Raises:
    ValueError: ``feature_axes`` is not a subset of ``axis``.
  """
  axes = F.canonical_axes(axis, ndim)
  if feature_axes is None:
    return axes, axes
  features = F.canonical_axes(feature_axes, ndim)
  if not set(features) <= set(axes):
    raise ValueError(
      f'{where}: feature_axes {features} must be among the normalized axes {axes} '
      f'(input rank {ndim}).'
    )
  return axes, features


def broadcast_to_rank(param: jax.Array | None, x_shape, axes: tuple[int, ...]):
  """``param`` of shape ``x_shape[axes]`` reshaped to ``x``'s rank (size 1 on other axes)."""
  if param is None:
    return None
  return param.reshape(tuple(x_shape[i] if i in axes else 1 for i in range(len(x_shape))))


class Identity(nn.Module):
  """Returns its input: the "normalization" of ``norm='none'`` and ``norm='weight'``."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class LayerNorm(nn.Module):
  """Layer normalization (Ba, Kiros & Hinton 2016, https://arxiv.org/abs/1607.06450).

  Normalizes each case over its features, eqs. (3)-(4)::

      y = scale * (x - mean(x)) / sqrt(var(x) + epsilon) + bias

  with the mean and the biased variance taken over ``axis`` in float32, and
  the output in the input's dtype. Unlike batch norm it needs no batch and no
  state, so training and test run the same computation.

  Differences from ``flax.linen.LayerNorm``: ``epsilon`` defaults to 1e-5
  (the authors' code, PyTorch and Haiku; Flax uses 1e-6) and the gains and
  biases cover every normalized axis unless ``feature_axes`` names fewer
  (Flax's ``feature_axes`` default is the last axis only). For the paper's
  convnets (§6.7), layer norm over H, W, C of every NHWC example with
  per-channel gains and biases is ``LayerNorm(axis=(1, 2, 3), feature_axes=-1)``.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lnorm.layers import LayerNorm
    >>> x = jnp.arange(6.0).reshape(2, 3)
    >>> params = LayerNorm().init(jax.random.key(0), x)
    >>> y = LayerNorm().apply(params, x)
    >>> bool(jnp.allclose(y.mean(-1), 0.0, atol=1e-6))
    True

  Attributes:
    axis: the normalized axes (int or tuple); default the last.
    epsilon: added to the variance inside the square root.
    use_scale: learn a gain ``scale`` (initialized to 1).
    use_bias: learn a bias ``bias`` (initialized to 0).
    scale_init: initializer of the gains.
    bias_init: initializer of the biases.
    param_dtype: dtype of the parameters.
    feature_axes: the axes the gains and biases cover, among ``axis``
      (``None``: all of ``axis``); they are shared along the other normalized
      axes. Parameters have shape ``x.shape[feature_axes]``.
  """

  axis: Axes = -1
  epsilon: float = F.DEFAULT_EPS
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  param_dtype: Any = jnp.float32
  feature_axes: Axes | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    axes, features = param_axes(self.axis, self.feature_axes, x.ndim)
    shape = _feature_shape(x.shape, features)
    scale = (
      self.param('scale', self.scale_init, shape, self.param_dtype) if self.use_scale else None
    )
    bias = self.param('bias', self.bias_init, shape, self.param_dtype) if self.use_bias else None
    if features != axes:
      scale = broadcast_to_rank(scale, x.shape, features)
      bias = broadcast_to_rank(bias, x.shape, features)
    return F.layer_norm(x, scale, bias, axis=axes, eps=self.epsilon)


class RMSNorm(nn.Module):
  """Root-mean-square normalization (Zhang & Sennrich 2019): LN without re-centering.

  ``y = scale * x / sqrt(mean(x**2) + epsilon)`` over ``axis``, statistics in
  float32, output in the input's dtype. ``use_bias`` adds a bias after the
  normalization (off by default, as in Flax's ``RMSNorm``).

  Attributes:
    axis: the normalized axes.
    epsilon: added to the mean square inside the square root.
    use_scale: learn a gain ``scale`` (initialized to 1).
    use_bias: learn a bias ``bias`` (initialized to 0) added after scaling.
    param_dtype: dtype of the parameters.
  """

  axis: Axes = -1
  epsilon: float = F.DEFAULT_EPS
  use_scale: bool = True
  use_bias: bool = False
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    axes = F.canonical_axes(self.axis, x.ndim)
    shape = _feature_shape(x.shape, axes)
    scale = (
      self.param('scale', self.scale_init, shape, self.param_dtype) if self.use_scale else None
    )
    y = F.rms_norm(x, scale, axis=axes, eps=self.epsilon)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, shape, self.param_dtype)
      full = tuple(x.shape[i] if i in axes else 1 for i in range(x.ndim))
      y = (y + bias.reshape(full)).astype(x.dtype)
    return y


class GroupNorm(nn.Module):
  """Group normalization (Wu & He 2018, https://arxiv.org/abs/1803.08494).

  Splits the channels into ``num_groups`` groups and normalizes every
  example and group over the group's channels and every spatial axis (all
  axes but the leading, example axis and the channel axis), with per-channel
  gains and biases; see :func:`lnorm.functional.group_norm`. One group is
  layer norm over ``(H, W, C)``, one group per channel instance norm. No
  batch statistics, no state: training and test run the same computation.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lnorm.layers import GroupNorm
    >>> x = jnp.arange(2 * 4 * 4 * 8.0).reshape(2, 4, 4, 8)   # NHWC
    >>> variables = GroupNorm(num_groups=4).init(jax.random.key(0), x)
    >>> variables['params']['scale'].shape
    (8,)
    >>> GroupNorm(num_groups=4).apply(variables, x).shape
    (2, 4, 4, 8)

  Attributes:
    num_groups: the number of groups, a divisor of the channel count;
      ``None`` (default): 32 where that divides the channels, else the
      largest count below 32 that does, never leaving a group with a single
      value (:func:`lnorm.functional.group_count`).
    channel_axis: the channel axis (default the last: NHWC).
    epsilon: added to the variance inside the square root.
    use_scale, use_bias: learn per-channel ``scale`` (init 1) and ``bias`` (init 0).
    scale_init, bias_init: their initializers.
    param_dtype: dtype of the parameters.
  """

  num_groups: int | None = None
  channel_axis: int = -1
  epsilon: float = F.DEFAULT_EPS
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    groups, shape = group_norm_setup(self.num_groups, self.channel_axis, x)
    scale = (
      self.param('scale', self.scale_init, shape, self.param_dtype) if self.use_scale else None
    )
    bias = self.param('bias', self.bias_init, shape, self.param_dtype) if self.use_bias else None
    return F.group_norm(
      x, scale, bias, num_groups=groups, eps=self.epsilon, channel_axis=self.channel_axis
    )


def group_norm_setup(num_groups: int | None, channel_axis: int, x: jax.Array):
  """``(groups, (C,))`` for a group norm of ``x``: the group count and the parameter shape.

  Raises:
    ValueError: ``x`` has no example axis, ``channel_axis`` is out of range
      or is the example axis, or ``num_groups`` does not divide the channels.
  """
  if x.ndim < 2:
    raise ValueError(
      f'GroupNorm needs a leading example axis and a channel axis; got shape {tuple(x.shape)}.'
    )
  (axis,) = F.canonical_axes(channel_axis, x.ndim)
  channels = x.shape[axis]
  per_channel = x.size // max(x.shape[0] * channels, 1)
  try:
    groups = F.group_count(num_groups, channels, per_channel)
  except ValueError as e:
    raise ValueError(f'GroupNorm: {e}') from None
  return groups, (channels,)


class BatchNorm(nn.Module):
  """Batch normalization (Ioffe & Szegedy 2015), the paper's feed-forward baseline.

  Training (``use_running_average=False``) normalizes with the statistics of
  the batch over every axis but ``axis`` (the features) and updates running
  averages in the ``batch_stats`` collection (``mean``, ``var``); evaluation
  normalizes with those averages. Under ``jax.jit`` with a batch sharded over
  devices the statistics are those of the global batch.

  ``unbiased_variance=True`` normalizes with the unbiased variance estimate
  ``N/(N-1) * var``, as the paper does for batch size 4; the running average
  then tracks the unbiased estimate too.

  Attributes:
    use_running_average: evaluate with the running averages (may also be
      passed to ``__call__``).
    axis: the feature axes (Flax's convention); statistics run over the rest.
    momentum: decay of the running averages.
    epsilon: added to the variance inside the square root.
    unbiased_variance: use Bessel's correction for the batch variance.
    use_scale, use_bias: learn ``scale`` (init 1) and ``bias`` (init 0).
    scale_init: initializer of the gains.
    param_dtype: dtype of the parameters.
  """

  use_running_average: bool | None = None
  axis: Axes = -1
  momentum: float = 0.99
  epsilon: float = F.DEFAULT_EPS
  unbiased_variance: bool = False
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param(
      'use_running_average', self.use_running_average, use_running_average
    )
    feature_axes = F.canonical_axes(self.axis, x.ndim)
    batch_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    shape = _feature_shape(x.shape, feature_axes)
    scale = (
      self.param('scale', self.scale_init, shape, self.param_dtype) if self.use_scale else None
    )
    bias = self.param('bias', self.bias_init, shape, self.param_dtype) if self.use_bias else None
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, shape, jnp.float32)
    if use_running_average:
      return F.batch_norm_eval(
        x, ra_mean.value, ra_var.value, scale, bias, batch_axes=batch_axes, eps=self.epsilon
      )
    y, mean, var = F.batch_norm_train(
      x, scale, bias, batch_axes=batch_axes, eps=self.epsilon, unbiased=self.unbiased_variance
    )
    if not self.is_initializing():
      ra_mean.value, ra_var.value = F.update_running_stats(
        ra_mean.value, ra_var.value, mean, var, self.momentum
      )
    return y


class WeightNormDense(nn.Module):
  """A dense layer with weight normalization (Salimans & Kingma 2016).

  ``y = x @ w + bias`` with ``w[:, j] = scale[j] * kernel[:, j] / ||kernel[:, j]||``.
  ``scale`` is initialized to the column norms of the initial ``kernel``, so
  at initialization ``w`` equals ``kernel`` and the layer starts exactly like
  an ``nn.Dense`` with the same initializer.

  Attributes:
    features: number of output features.
    use_bias: add a learned bias (initialized to 0).
    kernel_init: initializer of the direction ``kernel``.
    bias_init: initializer of the bias.
    epsilon: added to the squared column norm (0: exact, as in the original).
    dtype: computation dtype (``None``: the input's).
    param_dtype: dtype of the parameters.
  """

  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  epsilon: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      'kernel', self.kernel_init, (jnp.shape(x)[-1], self.features), self.param_dtype
    )
    scale = self.param('scale', lambda _, v: jnp.sqrt(jnp.sum(jnp.square(v), axis=0)), kernel)
    w = F.weight_norm(kernel, scale, axis=0, eps=self.epsilon)
    dtype = self.dtype or x.dtype
    y = jnp.dot(x.astype(dtype), w.astype(dtype))
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


def make_norm(
  norm: str,
  *,
  train: bool = False,
  axis: Axes = -1,
  epsilon: float = F.DEFAULT_EPS,
  unbiased_variance: bool = False,
  momentum: float = 0.99,
  num_groups: int | None = None,
  **kwargs: Any,
) -> nn.Module:
  """Builds the activation normalization called ``norm``.

  Args:
    norm: one of :data:`NORM_NAMES`. ``'none'`` and ``'weight'`` give an
      :class:`Identity` (weight norm acts on the kernel; see :func:`make_dense`).
    train: for ``'batch'``: normalize with batch statistics and update the
      running averages (``True``) or use the averages (``False``).
    axis: for ``'layer'``/``'rms'`` the normalized axes; for ``'batch'`` the
      feature axes (Flax's convention); for ``'group'`` the channel axis.
    epsilon: added to the variance inside the square root.
    unbiased_variance: for ``'batch'``: Bessel's correction.
    momentum: for ``'batch'``: decay of the running averages.
    num_groups: for ``'group'``: the number of groups (``None``: 32, or fewer
      as :func:`lnorm.functional.group_count` chooses for the channel count).
    **kwargs: passed on to the module (e.g. ``name=``, ``param_dtype=``).

  Raises:
    ValueError: ``norm`` is not a known normalization (the message lists them).
  """
  check_norm_name(norm)
  if norm in ('none', 'weight'):
    return Identity(**{k: v for k, v in kwargs.items() if k == 'name'})
  if norm == 'layer':
    return LayerNorm(axis=axis, epsilon=epsilon, **kwargs)
  if norm == 'group':
    if not isinstance(axis, int):
      raise ValueError(f"norm 'group' takes a single channel axis; got axis={axis!r}.")
    return GroupNorm(num_groups=num_groups, channel_axis=axis, epsilon=epsilon, **kwargs)
  if norm == 'rms':
    return RMSNorm(axis=axis, epsilon=epsilon, **kwargs)
  return BatchNorm(
    use_running_average=not train,
    axis=axis,
    epsilon=epsilon,
    unbiased_variance=unbiased_variance,
    momentum=momentum,
    **kwargs,
  )


def make_dense(norm: str, features: int, *, use_bias: bool = True, **kwargs: Any) -> nn.Module:
  """The dense layer that goes with normalization ``norm``: weight-normalized for ``'weight'``."""
  check_norm_name(norm)
  if norm == 'weight':
    return WeightNormDense(features, use_bias=use_bias, **kwargs)
  return nn.Dense(features, use_bias=use_bias, **kwargs)


class NormalizedDense(nn.Module):
  """``norm(x @ W) (+ bias)``: a hidden layer's pre-activation under normalization ``norm``.

  The paper normalizes the summed inputs ``a = W x`` of a layer and lets the
  normalization's own bias stand in for the dense bias (eq. 4). So:

  * ``'none'``: ``x @ W + b`` (an ordinary dense layer);
  * ``'weight'``: ``x @ w(v, g) + b`` (weight-normalized kernel);
  * ``'layer'``, ``'batch'``, ``'group'``: ``LN/BN/GN(x @ W)`` with the norm's gain and bias;
  * ``'rms'``: ``RMS(x @ W) + b`` (RMS norm has no bias of its own).

  Attributes:
    features: number of output features.
    norm: one of :data:`NORM_NAMES`.
    train: for ``'batch'``, use batch statistics (and update running averages).
    unbiased_variance: for ``'batch'``, Bessel's correction (paper: batch size 4).
    epsilon: the normalization's epsilon.
    kernel_init: initializer of the kernel.
  """

  features: int
  norm: str = 'layer'
  train: bool = False
  unbiased_variance: bool = False
  epsilon: float = F.DEFAULT_EPS
  kernel_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_norm_name(self.norm)
    own_bias = self.norm in ('none', 'weight')
    y = make_dense(
      self.norm, self.features, use_bias=own_bias, kernel_init=self.kernel_init, name='dense'
    )(x)
    if self.norm == 'rms':
      return RMSNorm(epsilon=self.epsilon, use_bias=True, name='norm')(y)
    return make_norm(
      self.norm,
      train=self.train,
      epsilon=self.epsilon,
      unbiased_variance=self.unbiased_variance,
      name='norm',
    )(y)

"""Convolutional networks on MNIST (paper §6.7): no norm vs batch, layer, RMS and group norm.

The paper (§6.7) reports only in words that "layer normalization offers a
speedup over the baseline model without normalization, but batch
normalization outperforms the other methods", and explains it: the units near
an image's border and those at its centre see very different inputs, so one
mean and variance over all the units of a convolutional layer (layer norm over
height, width and channels of one example) fits their statistics poorly.
Group norm (Wu & He 2018) normalizes groups of channels of one example instead,
the later answer to exactly this; it is here as an added baseline.

The network (:class:`ConvNet`) is the CNN of Flax's MNIST example
(``flax/examples/mnist``: two 3x3 convolutions with 2x2 average pooling, a
dense hidden layer, the logits); the class defaults to half its width (16
and 32 channels, 128 hidden units) and ``configs/convnet.py`` runs a quarter
(8 and 16 channels, 64 hidden units: LeNet-5's scale), a small, standard
convnet cheap enough for 15 runs on the 2 shared CPU cores here. ``norm``
acts on the pre-activation of each convolution (in place of the
convolution's bias); the dense layers are the
same for every ``norm``, so the runs differ only in how the convolutional
units are normalized, which is what §6.7 is about. The normalizations of a
feature map ``a`` of shape ``[B, H, W, C]`` (:class:`ConvNorm`):

* ``'none'``: ``a + b_c`` (the convolution's own bias).
* ``'batch'``: per channel over ``(B, H, W)`` (Ioffe & Szegedy 2015, §3.2):
  ``g_c (a - mu_c) / sqrt(var_c + eps) + b_c`` with batch statistics in
  training and running averages (momentum ``bn_momentum``) in evaluation.
* ``'layer'``: per example over ``(H, W, C)``, the paper's eqs. (3)-(4) with
  ``H`` the layer's ``H*W*C`` units, and one gain and bias per channel
  (``g_c``, ``b_c``, shared over positions, as a convolution shares its
  weights): ``g_c (a - mu) / sqrt(var + eps) + b_c``.
* ``'rms'``: per example over ``(H, W, C)`` without the centring,
  ``g_c a / sqrt(mean(a^2) + eps) + b_c`` (Zhang & Sennrich 2019).
* ``'group'``: per example over ``(H, W)`` and each group of
  ``C / num_groups`` channels, per-channel ``g_c``, ``b_c`` (Wu & He 2018,
  eq. 1 with their ``S_i``); ``num_groups=1`` is the layer norm above.

Data: the 60,000 MNIST training images split into ``num_train`` (55,000) and
``num_valid`` (5,000) by the same seeded shuffle as the pMNIST experiment
(``split_seed``: the same images in each part), pixels in their natural order,
and the 10,000 test images; images are ``<float32>[28, 28, 1]`` in ``[0, 1]``.

The run's length is ``num_steps`` optimizer steps (0: ``num_epochs`` epochs).

Metrics: ``train/loss`` (training NLL, averaged over the steps since the
previous row), ``train/error``, and ``test/nll``, ``test/error`` (and with
``eval_valid`` ``valid/nll``, ``valid/error``) every ``eval_every_steps``
steps and ``evals_per_epoch`` times per epoch.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lnorm import functional as F
from lnorm import layers
from lnorm.lab import batching, classification, config_args, models, runner
from lnorm.lab import workdir as workdir_lib
from lnorm.lab.classification import make_eval_fn, make_loss_fn
from lnorm.lab.contract import Experiment
from lnorm.lab.data.mnist import SOURCES as DATA_SOURCES

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
#: The normalizations of the convolutional layers (``'group'`` once the library has it).
CONV_NORMS = ('none', 'batch', 'layer', 'rms') + (
  ('group',) if 'group' in layers.NORM_NAMES else ()
)
#: The axes of one example's feature map ``[B, H, W, C]`` that layer and RMS norm run over.
EXAMPLE_AXES = (-3, -2, -1)


def conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 'SAME' 2-D convolution (cross-correlation, as ``lax.conv``) by im2col.

  ``y[b, h, w, o] = sum_{i, j, c} xpad[b, h + i, w + j, c] * kernel[i, j, c, o]``,
  with ``x`` zero-padded by ``(k - 1) // 2`` before and ``k - 1 - (k - 1) // 2``
  after each spatial axis (``lax``'s 'SAME'). Written as ``kh * kw`` shifted
  slices concatenated on the channel axis and one matmul with the kernel
  reshaped to ``[kh * kw * C_in, C_out]``: the same numbers as
  ``flax.linen.Conv``, but why not call that? On XLA:CPU the runner's
  multi-step ``lax.scan`` (every step runs inside one) compiles the kernel
  gradient of ``lax.conv_general_dilated`` to a slow generic loop: one step of
  this network ran 6-8x slower inside a scan than outside (measured here, jax
  0.10.2). Slices and a matmul run at full speed in both places.

  Args:
    x: ``<float>[B, H, W, C_in]``.
    kernel: ``<float>[kh, kw, C_in, C_out]`` (``flax.linen.Conv``'s layout).

  Returns:
    ``<float>[B, H, W, C_out]``.
  """
  kh, kw, c_in, c_out = kernel.shape
  if x.ndim != 4 or x.shape[-1] != c_in:
    raise ValueError(f'conv2d_same: input {x.shape} does not fit a kernel {kernel.shape}.')
  _, height, width, _ = x.shape
  pad = ((0, 0), ((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))
  xp = jnp.pad(x, (*pad, (0, 0)))
  patches = [xp[:, i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(patches, axis=-1) @ kernel.reshape(kh * kw * c_in, c_out)


class Conv(nn.Module):
  """A bias-free stride-1 'SAME' convolution (:func:`conv2d_same`), parameters as ``nn.Conv``'s.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    kernel_init: initializer of ``kernel`` ``[k, k, C_in, features]`` (``nn.Conv``'s default).
  """

  features: int
  kernel_size: int = 3
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    return conv2d_same(x, kernel.astype(x.dtype))


def per_channel(param: jax.Array, x_shape: Sequence[int]) -> jax.Array:
  """A per-channel ``<float>[C]`` parameter broadcast to ``[1, H, W, C]`` (shared over positions).

  :func:`lnorm.functional.layer_norm` takes a parameter in this broadcast form
  for ``axis=(-3, -2, -1)``; its gradient sums back over the positions.
  """
  return jnp.broadcast_to(param, (1, *x_shape[-3:]))


class ConvNorm(nn.Module):
  """The normalization ``norm`` of a convolution's pre-activation ``<float>[B, H, W, C]``.

  See the module docstring for the formulas. Parameters: ``scale`` (``g_c``,
  init 1) and ``bias`` (``b_c``, init 0), both ``<float32>[C]``; batch norm
  also keeps ``batch_stats/{mean, var}`` (``[C]``). ``'none'`` adds only the
  bias. Statistics are computed in float32; the output has the input's dtype.

  Attributes:
    norm: one of :data:`CONV_NORMS`.
    train: batch norm uses (and updates the running averages from) the batch statistics.
    epsilon: added to the variance (mean square for RMS) inside the square root.
    num_groups: group norm's number of channel groups (must divide ``C``).
    bn_momentum: decay of batch norm's running averages.
  """

  norm: str
  train: bool = False
  epsilon: float = F.DEFAULT_EPS
  num_groups: int = 8
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layers.check_norm_name(self.norm, CONV_NORMS)
    if x.ndim != 4:
      raise ValueError(f'ConvNorm needs a [batch, height, width, channels] input; got {x.shape}.')
    if self.norm == 'batch':
      return layers.BatchNorm(
        use_running_average=not self.train,
        axis=-1,
        momentum=self.bn_momentum,
        epsilon=self.epsilon,
        name='batch_norm',
      )(x)
    if self.norm == 'group':
      return layers.make_norm(
        'group', num_groups=self.num_groups, epsilon=self.epsilon, name='group_norm'
      )(x)
    channels = x.shape[-1]
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    if self.norm == 'none':
      return x + bias.astype(x.dtype)
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    if self.norm == 'layer':
      return F.layer_norm(
        x,
        per_channel(scale, x.shape),
        per_channel(bias, x.shape),
        axis=EXAMPLE_AXES,
        eps=self.epsilon,
      )
    y = F.rms_norm(x, per_channel(scale, x.shape), axis=EXAMPLE_AXES, eps=self.epsilon)
    return (y + bias.astype(y.dtype)).astype(x.dtype)


class ConvNet(nn.Module):
  """conv3x3 -> norm -> ReLU -> avgpool2 (per entry of ``features``) -> dense -> ReLU -> logits.

  Flax's MNIST CNN (``features=(32, 64)``, ``dense_size=256``) with the
  convolutions' pre-activations normalized by :class:`ConvNorm`; the defaults
  here are half its width. Convolutions use 'SAME' padding (so a border unit
  sees zeros where a centre unit sees pixels: the difference §6.7 names).

  Attributes:
    features: output channels of each convolution.
    dense_size: width of the dense hidden layer (0: none, logits straight after the convolutions).
    norm: one of :data:`CONV_NORMS`, for the convolutions only.
    kernel_size: the convolutions' square kernel size.
    num_groups: for ``'group'``.
    epsilon: the normalization's epsilon.
    bn_momentum: for ``'batch'``.
    num_classes: number of logits.
  """

  features: Sequence[int] = (16, 32)
  dense_size: int = 128
  norm: str = 'layer'
  kernel_size: int = 3
  num_groups: int = 8
  epsilon: float = F.DEFAULT_EPS
  bn_momentum: float = 0.9
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``<float32>[batch, 28, 28, 1]`` images to ``<float32>[batch, num_classes]`` logits."""
    for i, width in enumerate(self.features):
      x = Conv(width, self.kernel_size, name=f'conv_{i}')(x)
      x = ConvNorm(
        self.norm,
        train=train,
        epsilon=self.epsilon,
        num_groups=self.num_groups,
        bn_momentum=self.bn_momentum,
        name=f'norm_{i}',
      )(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    if self.dense_size:
      x = nn.relu(nn.Dense(self.dense_size, name='hidden')(x))
    return nn.Dense(self.num_classes, name='logits')(x)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  layers.check_norm_name(config.norm, CONV_NORMS)
  config_args.check_choice('data_source', config.data_source, DATA_SOURCES)
  for name in ('num_train', 'num_valid', 'num_test', 'dense_size', 'num_steps'):
    config_args.check_int(name, config[name], minimum=0)
  config_args.check_int('eval_batch_size', config.eval_batch_size, minimum=1)
  if not isinstance(config.eval_valid, bool):
    raise ValueError(f'eval_valid must be True or False; got {config.eval_valid!r}.')
  config_args.check_int('split_seed', config.split_seed)
  config_args.check_int('kernel_size', config.kernel_size, minimum=1)
  config_args.check_int('num_groups', config.num_groups, minimum=1)
  config_args.check_positive('norm_epsilon', config.norm_epsilon)
  momentum = config_args.check_positive('bn_momentum', config.bn_momentum, allow_zero=True)
  if momentum >= 1:
    raise ValueError(f'bn_momentum must be in [0, 1); got {momentum!r}.')
  widths = tuple(config.features)
  if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
    raise ValueError(f'features must be a non-empty tuple of positive ints; got {widths!r}.')
  if config.norm == 'group':
    bad = [w for w in widths if w % config.num_groups]
    if bad:
      raise ValueError(
        f'num_groups={config.num_groups} must divide the channels of every convolution; '
        f'features={widths} has {bad}.'
      )


def load_data(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The train/valid/test splits: ``{'image': <float32>[N, 28, 28, 1], 'label': <int32>[N]}``."""
  from lnorm.lab.data import mnist

  data_dir = config.data_dir
  if config.data_source == 'idx':
    data_dir = workdir_lib.find_data_dir('mnist', config.data_dir)
  return split_data(mnist.load_mnist(config.data_source, data_dir), config)


def split_data(
  raw: dict[str, dict[str, np.ndarray]], config: ml_collections.ConfigDict
) -> dict[str, dict[str, np.ndarray]]:
  """Splits ``raw['train']`` into train and valid, trims test, and shapes the images.

  The split is the pMNIST experiment's (``experiments/pmnist.py``): one
  permutation of the training images by ``split_seed``, its first
  ``num_train`` for training and its last ``num_valid`` for validation. The
  pixels stay in their natural order (convolutions need the image).

  Args:
    raw: ``{'train': ..., 'test': ...}`` as :func:`lnorm.lab.data.mnist.load_mnist`
      gives (``'image'``: ``<float32>[N, 784]``).
    config: reads ``num_train`` (0: all that ``num_valid`` leaves), ``num_valid``,
      ``num_test`` (0: all), ``split_seed``.

  Returns:
    ``{'train', 'valid', 'test'}``, each ``{'image': <float32>[N, 28, 28, 1],
    'label': <int32>[N]}``.
  """
  n = len(raw['train']['label'])
  num_valid = config.num_valid
  num_train = config.num_train or n - num_valid
  if num_train + num_valid > n or num_train < 1:
    raise ValueError(
      f'num_train={config.num_train} and num_valid={num_valid} need more than the '
      f'{n} training images of data_source={config.data_source!r}.'
    )
  order = np.random.default_rng(config.split_seed).permutation(n)
  parts = {'train': order[:num_train], 'valid': order[n - num_valid :]}
  out = {name: {k: v[idx] for k, v in raw['train'].items()} for name, idx in parts.items()}
  out['test'] = {k: v[: config.num_test or None] for k, v in raw['test'].items()}
  for split in out.values():
    image = np.asarray(split['image'], np.float32)
    split['image'] = np.ascontiguousarray(image.reshape(len(image), *IMAGE_SHAPE))
    split['label'] = np.asarray(split['label'], np.int32)
  return out


def make_model(config: ml_collections.ConfigDict) -> models.Model:
  """The :class:`ConvNet` of ``config`` as a :class:`lnorm.lab.models.Model`."""
  module = ConvNet(
    features=tuple(config.features),
    dense_size=config.dense_size,
    norm=config.norm,
    kernel_size=config.kernel_size,
    num_groups=config.num_groups,
    epsilon=config.norm_epsilon,
    bn_momentum=config.bn_momentum,
  )
  return models.linen(module, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)


def make_experiment(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Mesh,
  data: dict[str, dict[str, np.ndarray]] | None = None,
) -> Experiment:
  """The convnet experiment of ``config``; ``data`` as :func:`load_data` gives (default: loaded)."""
  del workdir
  data = load_data(config) if data is None else data
  model = make_model(config)
  eval_fn = make_eval_fn(model)

  splits = ('valid', 'test') if config.eval_valid else ('test',)
  evaluator = classification.split_evaluator(
    eval_fn, data, splits, config.eval_batch_size, mesh,
    every_steps=config.eval_every_steps, per_epoch=config.evals_per_epoch,
  )  # fmt: skip
  return Experiment(
    init=model.init,
    loss=make_loss_fn(model),
    train=batching.shuffled_arrays(data['train'], config.batch_size, config.seed),
    evaluators=[evaluator],
    num_steps=config.num_steps or None,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the convnet of ``config`` in ``workdir``, resuming a run there; returns final.json."""
  return runner.train_and_evaluate(config, workdir)

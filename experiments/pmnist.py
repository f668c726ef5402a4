"""Permutation-invariant MNIST (paper §6.6, Figure 6).

The paper's 784-1000-1000-10 ReLU network, trained with Adam at batch sizes
128 and 4, normalizing the summed inputs of the two hidden layers (never the
logits) with ``config.norm``. Batch norm at small batch sizes uses the
unbiased variance estimate, as the paper does for batch size 4.

Data: the 60,000 MNIST training images split into ``num_train`` (default
55,000) for training and ``num_valid`` (5,000) for validation by a fixed
seeded shuffle, and the 10,000 test images. Every image's pixels are
reordered by one fixed random permutation (``permute_pixels``): an MLP does
not see the image structure either way, so this changes nothing about its
difficulty, but it makes the task the permutation-invariant one by
construction.

Metrics: ``train/loss`` (the training NLL, averaged over the steps since the
previous row), ``train/error``, and ``valid/nll``, ``valid/error``,
``test/nll``, ``test/error`` ``evals_per_epoch`` times per epoch.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lnorm import nnx as lnnx
from lnorm.lab import batching, classification, config_args, models, runner
from lnorm.lab.classification import make_eval_fn, make_loss_fn
from lnorm.lab.contract import Experiment
from lnorm.lab.data.mnist import SOURCES as DATA_SOURCES
from lnorm.layers import NORM_NAMES, NormalizedDense, check_norm_name

NUM_PIXELS = 784
NUM_CLASSES = 10
#: The Flax APIs the model is written in (the same numbers from the same parameters).
APIS = ('linen', 'nnx')


class MLP(nn.Module):
  """``784 -> hidden_sizes -> 10`` with ReLU; ``norm`` on each hidden pre-activation.

  Attributes:
    hidden_sizes: widths of the hidden layers (the paper: 1000, 1000).
    norm: one of :data:`lnorm.layers.NORM_NAMES`.
    unbiased_variance: for batch norm, Bessel's correction of the batch variance.
    epsilon: the normalization's epsilon.
    num_classes: number of logits.
  """

  hidden_sizes: Sequence[int] = (1000, 1000)
  norm: str = 'layer'
  unbiased_variance: bool = False
  epsilon: float = 1e-5
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``<float32>[batch, 784]`` images to ``<float32>[batch, num_classes]`` logits."""
    for i, width in enumerate(self.hidden_sizes):
      x = NormalizedDense(
        width,
        norm=self.norm,
        train=train,
        unbiased_variance=self.unbiased_variance,
        epsilon=self.epsilon,
        name=f'hidden_{i}',
      )(x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes, name='logits')(x)


class NnxMLP(nnx.Module):
  """The :class:`MLP` in NNX: the same layers and parameter paths (``hidden_0/dense/kernel``...).

  ``lnorm.nnx.from_linen_params`` copies an :class:`MLP`'s variables into it;
  it then computes the same numbers.
  """

  def __init__(
    self,
    hidden_sizes: Sequence[int] = (1000, 1000),
    norm: str = 'layer',
    unbiased_variance: bool = False,
    epsilon: float = 1e-5,
    num_classes: int = NUM_CLASSES,
    *,
    rngs: nnx.Rngs,
  ):
    widths = (NUM_PIXELS, *hidden_sizes)
    self.num_hidden = len(hidden_sizes)
    for i in range(self.num_hidden):
      layer = lnnx.NormalizedDense(
        widths[i], widths[i + 1], norm=norm, unbiased_variance=unbiased_variance,
        epsilon=epsilon, rngs=rngs,
      )  # fmt: skip
      setattr(self, f'hidden_{i}', layer)
    self.logits = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``<float32>[batch, 784]`` images to ``<float32>[batch, num_classes]`` logits."""
    for i in range(self.num_hidden):
      x = nnx.relu(getattr(self, f'hidden_{i}')(x, use_running_average=not train))
    return self.logits(x)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  check_norm_name(config.norm, NORM_NAMES)
  config_args.check_choice('api', config.api, APIS)
  config_args.check_choice('data_source', config.data_source, DATA_SOURCES)
  config_args.check_int('num_train', config.num_train, minimum=0)
  config_args.check_int('num_valid', config.num_valid, minimum=0)
  config_args.check_int('num_test', config.num_test, minimum=0)
  config_args.check_int('eval_batch_size', config.eval_batch_size, minimum=1)
  config_args.check_int('permutation_seed', config.permutation_seed)
  config_args.check_int('split_seed', config.split_seed)
  config_args.check_positive('norm_epsilon', config.norm_epsilon)
  if not isinstance(config.unbiased_variance, bool):
    raise ValueError(f'unbiased_variance must be True or False; got {config.unbiased_variance!r}.')
  if not isinstance(config.permute_pixels, bool):
    raise ValueError(f'permute_pixels must be True or False; got {config.permute_pixels!r}.')
  if config.norm == 'batch' and config.batch_size < 8 and not config.unbiased_variance:
    logging.warning(
      'batch norm at batch size %d with the biased variance; the paper uses the unbiased one '
      '(set the batch size with the config arg, or --config.unbiased_variance=True).',
      config.batch_size,
    )
  sizes = tuple(config.hidden_sizes)
  if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
    raise ValueError(f'hidden_sizes must be a non-empty tuple of positive ints; got {sizes!r}.')


def load_data(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The train/valid/test splits: ``{'image': <float32>[N, 784], 'label': <int32>[N]}`` each."""
  from lnorm.lab.data import mnist

  raw = mnist.load_mnist(config.data_source, config.data_dir)
  return split_data(raw, config)


def split_data(
  raw: dict[str, dict[str, np.ndarray]], config: ml_collections.ConfigDict
) -> dict[str, dict[str, np.ndarray]]:
  """Splits ``raw['train']`` into train and valid, trims test, and permutes pixels.

  Args:
    raw: ``{'train': ..., 'test': ...}`` as :func:`lnorm.lab.data.mnist.load_mnist` gives.
    config: reads ``num_train`` (0: all that ``num_valid`` leaves),
      ``num_valid``, ``num_test`` (0: all), ``split_seed``, ``permute_pixels``,
      ``permutation_seed``.

  Returns:
    ``{'train', 'valid', 'test'}``, each ``{'image': <float32>[N, 784], 'label': <int32>[N]}``.
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
  if config.permute_pixels:
    pixels = np.random.default_rng(config.permutation_seed).permutation(NUM_PIXELS)
    for split in out.values():
      split['image'] = split['image'][:, pixels]
  for split in out.values():
    split['image'] = np.ascontiguousarray(split['image'], np.float32)
    split['label'] = np.asarray(split['label'], np.int32)
  return out


def make_model(config: ml_collections.ConfigDict) -> models.Model:
  """The MLP of ``config`` as a :class:`lnorm.lab.models.Model` (NNX with ``api='nnx'``)."""
  kwargs = dict(
    hidden_sizes=tuple(config.hidden_sizes),
    norm=config.norm,
    unbiased_variance=config.unbiased_variance,
    epsilon=config.norm_epsilon,
  )
  if config.api == 'nnx':
    return models.nnx(lambda rngs: NnxMLP(**kwargs, rngs=rngs))
  return models.linen(MLP(**kwargs), jnp.zeros((1, NUM_PIXELS), jnp.float32), train=False)


def make_experiment(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Mesh,
  data: dict[str, dict[str, np.ndarray]] | None = None,
) -> Experiment:
  """The pMNIST experiment of ``config``; ``data`` as :func:`load_data` gives (default: loaded)."""
  del workdir
  data = load_data(config) if data is None else data
  model = make_model(config)
  eval_fn = make_eval_fn(model)

  evaluator = classification.split_evaluator(
    eval_fn, data, ('valid', 'test'), config.eval_batch_size, mesh,
    every_steps=config.eval_every_steps, per_epoch=config.evals_per_epoch,
  )  # fmt: skip
  return Experiment(
    init=model.init,
    loss=make_loss_fn(model),
    train=batching.shuffled_arrays(data['train'], config.batch_size, config.seed),
    evaluators=[evaluator],
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the MLP of ``config`` in ``workdir`` (resuming what is there); returns final.json."""
  return runner.train_and_evaluate(config, workdir)

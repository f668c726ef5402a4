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
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lnorm import config_args, sharding, training
from lnorm.data.mnist import SOURCES as DATA_SOURCES
from lnorm.layers import NORM_NAMES, NormalizedDense, check_norm_name

NUM_PIXELS = 784
NUM_CLASSES = 10


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


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  if config.experiment != 'pmnist':
    raise ValueError(f"experiment must be 'pmnist' for this module; got {config.experiment!r}.")
  check_norm_name(config.norm, NORM_NAMES)
  config_args.check_choice('data_source', config.data_source, DATA_SOURCES)
  training.check_training_config(config)
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
  from lnorm.data import mnist

  raw = mnist.load_mnist(config.data_source, config.data_dir)
  return split_data(raw, config)


def split_data(
  raw: dict[str, dict[str, np.ndarray]], config: ml_collections.ConfigDict
) -> dict[str, dict[str, np.ndarray]]:
  """Splits ``raw['train']`` into train and valid, trims test, and permutes pixels.

  Args:
    raw: ``{'train': ..., 'test': ...}`` as :func:`lnorm.data.mnist.load_mnist` gives.
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


def make_model(config: ml_collections.ConfigDict) -> MLP:
  """The MLP of ``config``."""
  return MLP(
    hidden_sizes=tuple(config.hidden_sizes),
    norm=config.norm,
    unbiased_variance=config.unbiased_variance,
    epsilon=config.norm_epsilon,
  )


def make_loss_fn(model: MLP) -> training.LossFn:
  """``(params, batch_stats, batch, rng) -> (mean NLL, ({'error'}, new batch_stats))``."""

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # The model is deterministic.
    variables = {'params': params, 'batch_stats': batch_stats}
    logits, updates = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    error = jnp.mean(jnp.argmax(logits, -1) != batch['label'])
    return jnp.mean(nll), ({'error': error}, updates.get('batch_stats', batch_stats))

  return loss_fn


def make_eval_fn(model: MLP):
  """A jitted ``(state, batch) -> {'nll', 'error'}``, per-example ``<float32>[batch]``."""

  @jax.jit
  def eval_fn(state: training.TrainState, batch):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits = model.apply(variables, batch['image'], train=False)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    error = (jnp.argmax(logits, -1) != batch['label']).astype(jnp.float32)
    return {'nll': nll, 'error': error}

  return eval_fn


def create_train_state(
  config: ml_collections.ConfigDict, model: MLP, tx: optax.GradientTransformation
) -> training.TrainState:
  """The initial state (params from ``key(seed)``), on the host."""
  x = jnp.zeros((1, NUM_PIXELS), jnp.float32)
  variables = model.init(jax.random.key(config.seed), x, train=False)
  return training.TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    batch_stats=variables.get('batch_stats', {}),
    tx=tx,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the MLP of ``config`` in ``workdir`` (resuming what is there); returns final.json."""
  check_config(config)
  data = load_data(config)
  return train_on_data(config, workdir, data)


def train_on_data(
  config: ml_collections.ConfigDict, workdir: str, data: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
  """:func:`train_and_evaluate` on splits already loaded by :func:`load_data`."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  eval_batch = -(-config.eval_batch_size // mesh.size) * mesh.size
  train = data['train']
  num_examples, batch_size = len(train['label']), config.batch_size
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={batch_size} exceeds the {num_examples} training examples.')
  num_steps = config.num_epochs * steps_per_epoch

  model = make_model(config)
  tx, _ = training.make_optimizer(config, num_steps)
  eval_fn = make_eval_fn(model)

  def init_state():
    return sharding.replicate(create_train_state(config, model, tx), mesh)

  def get_batches(step, n):
    idx = training.batch_indices(config.seed, step, n, num_examples, batch_size)
    return {'image': train['image'][idx], 'label': train['label'][idx]}

  def evaluate(state):
    out = {}
    for split in ('valid', 'test'):
      if len(data[split]['label']):
        means = training.evaluate_arrays(eval_fn, state, data[split], eval_batch, mesh)
        out.update({f'{split}/{k}': v for k, v in means.items()})
    return out

  return training.train_loop(
    config=config,
    workdir=workdir,
    init_state=init_state,
    loss_fn=make_loss_fn(model),
    get_batches=get_batches,
    evaluate=evaluate,
    steps_per_epoch=steps_per_epoch,
    num_steps=num_steps,
    mesh=mesh,
  )

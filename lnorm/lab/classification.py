"""Softmax classification: the loss and per-example evaluation shared by pMNIST and the convnet."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lnorm.lab import batching
from lnorm.lab.contract import Evaluator, LossFn, TrainState
from lnorm.lab.models import Model


def make_loss_fn(model: Model, inputs: str = 'image') -> LossFn:
  """``(params, model_state, batch, rng) -> (mean NLL, ({'error'}, new model_state))``.

  ``model`` maps ``batch[inputs]`` (with ``train=True``, updating its state, e.g.
  batch norm's running averages) to logits ``<float32>[batch, classes]``;
  ``batch['label']`` holds ``<int32>[batch]`` classes. The model is deterministic.
  """

  def loss_fn(params, model_state, batch, rng):
    del rng
    logits, model_state = model.apply(
      params, model_state, batch[inputs], train=True, update_state=True
    )
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    error = jnp.mean(jnp.argmax(logits, -1) != batch['label'])
    return jnp.mean(nll), ({'error': error}, model_state)

  return loss_fn


def make_eval_fn(model: Model, inputs: str = 'image'):
  """A jitted ``(state, batch) -> {'nll', 'error'}``, per-example ``<float32>[batch]``."""

  @jax.jit
  def eval_fn(state: TrainState, batch):
    logits, _ = model.apply(state.params, state.model_state, batch[inputs], train=False)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    error = (jnp.argmax(logits, -1) != batch['label']).astype(jnp.float32)
    return {'nll': nll, 'error': error}

  return eval_fn


def split_evaluator(
  eval_fn,
  data: dict,
  splits: tuple[str, ...],
  batch_size: int,
  mesh,
  every_steps: int = 0,
  per_epoch: int = 0,
  name: str = 'valid+test',
) -> Evaluator:
  """An :class:`Evaluator` logging ``<split>/<metric>``: ``eval_fn``'s means over each split.

  ``data[split]`` holds arrays with a leading example axis (``'label'`` among them); a
  split with no examples is skipped. Means are over every example
  (:func:`lnorm.lab.batching.evaluate_arrays`).
  """

  def evaluate(state):
    out = {}
    for split in splits:
      if len(data[split]['label']):
        means = batching.evaluate_arrays(eval_fn, state, data[split], batch_size, mesh)
        out.update({f'{split}/{k}': v for k, v in means.items()})
    return out

  return Evaluator(name, evaluate, every_steps=every_steps, per_epoch=per_epoch)

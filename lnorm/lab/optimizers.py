"""Optimizers and learning-rate schedules by name, from the config: one registry.

Config fields (every experiment's config has them, from
:func:`lnorm.lab.config_args.optimizer_fields`):

* ``optimizer``: a name in :data:`OPTIMIZERS` (``adam``, ``adamw``, ``sgd``,
  ``momentum``, ``rmsprop``, and any an experiment registers).
* ``learning_rate``, ``lr_schedule`` (a name in :data:`SCHEDULES`:
  ``constant``, ``cosine``), ``warmup_steps`` (linear warm-up from 0 before
  the schedule).
* ``grad_clip_norm``: clip the gradient by its global norm (0: off);
  ``grad_clip_per_tensor``: clip each parameter's gradient to this norm (0: off).
* ``adam_b1``, ``adam_b2``, ``adam_eps``, ``weight_decay`` (adamw),
  ``momentum`` (momentum, rmsprop), ``rmsprop_decay``.

An experiment registers its own optimizer with :func:`register_optimizer`
at import, e.g. order embeddings' variant of Adam, and selects it by name in
its config.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

Builder = Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]

OPTIMIZERS: dict[str, Builder] = {}
SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, int], optax.Schedule]] = {}


def register_optimizer(name: str, builder: Builder) -> Builder:
  """Makes ``config.optimizer = name`` build ``builder(config, schedule)``; returns ``builder``."""
  OPTIMIZERS[name] = builder
  return builder


def register_schedule(
  name: str, builder: Callable[[ml_collections.ConfigDict, int], optax.Schedule]
) -> None:
  """Makes ``config.lr_schedule = name`` use ``builder(config, num_steps_after_warmup)``."""
  SCHEDULES[name] = builder


def _get(config: ml_collections.ConfigDict, name: str, default):
  return config.get(name, default)


register_optimizer(
  'adam',
  lambda c, lr: optax.adam(lr, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps),
)
register_optimizer(
  'adamw',
  lambda c, lr: optax.adamw(
    lr, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps, weight_decay=c.weight_decay
  ),
)
register_optimizer('sgd', lambda c, lr: optax.sgd(lr))
register_optimizer('momentum', lambda c, lr: optax.sgd(lr, momentum=c.momentum))
register_optimizer(
  'rmsprop',
  lambda c, lr: optax.rmsprop(
    lr, decay=_get(c, 'rmsprop_decay', 0.9), eps=c.adam_eps, momentum=c.momentum or None
  ),
)
register_schedule('constant', lambda c, n: optax.constant_schedule(c.learning_rate))
register_schedule('cosine', lambda c, n: optax.cosine_decay_schedule(c.learning_rate, max(1, n)))


def make_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning rate by step: linear warm-up from 0, then the named schedule."""
  warmup = config.warmup_steps
  main = SCHEDULES[config.lr_schedule](config, num_steps - warmup)
  if warmup == 0:
    return main
  warm = optax.linear_schedule(0.0, config.learning_rate, warmup)
  return optax.join_schedules([warm, main], [warmup])


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
  """Scales each gradient tensor whose L2 norm exceeds ``max_norm`` down to ``max_norm``."""

  def clip(g):
    norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
    return (g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))).astype(g.dtype)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
  config: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax optimizer of ``config`` (clipping first, if asked) and its learning rate."""
  schedule = make_schedule(config, num_steps)
  tx = OPTIMIZERS[config.optimizer](config, schedule)
  clips = []
  if _get(config, 'grad_clip_per_tensor', 0) > 0:
    clips.append(clip_per_tensor(config.grad_clip_per_tensor))
  if config.grad_clip_norm > 0:
    clips.append(optax.clip_by_global_norm(config.grad_clip_norm))
  return (optax.chain(*clips, tx) if clips else tx), schedule

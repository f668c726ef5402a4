"""Linen and NNX models behind one functional interface, so one training loop runs both.

The runner trains ``(params, model_state)`` pytrees; an experiment writes its
loss once against :class:`Model`::

  logits, model_state = model.apply(params, model_state, x, train=True, update_state=True)

whether ``model`` wraps a linen module (:func:`linen`) or an NNX module
(:func:`nnx`). In both, ``params`` is a nested dict of arrays keyed by the
modules' attribute names (linen: the ``'params'`` collection; NNX: the
``nnx.Param`` variables as a pure dict) and ``model_state`` holds the rest
(linen: the other collections, e.g. ``{'batch_stats': ...}``; NNX: the
remaining variables, e.g. batch norm's ``nnx.BatchStat``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from flax import nnx as flax_nnx

Params = Any
ModelState = Any


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as two pure functions.

  Attributes:
    init: ``rng -> (params, model_state)``.
    apply: ``(params, model_state, *args, rng=None, update_state=False, method=None,
      **kwargs) -> (output, model_state)``. ``rng`` feeds dropout (linen's
      ``'dropout'`` stream; NNX: the module's ``dropout`` stream is reseeded from
      it); with ``update_state`` the new ``model_state`` (e.g. batch norm's running
      averages after a training call) is returned, else the one passed in.
      ``method`` names another method than ``__call__`` (e.g. ``'encode'``);
      ``args`` and ``kwargs`` go to it.
    module: the wrapped linen module, or the NNX graph definition.
  """

  init: Callable[[jax.Array], tuple[Params, ModelState]]
  apply: Callable[..., tuple[Any, ModelState]]
  module: Any = None


def linen(module: nn.Module, *sample_args: Any, **sample_kwargs: Any) -> Model:
  """Wraps a linen module; ``sample_args``/``kwargs`` are a call that initializes it.

  ``init(rng)`` is ``module.init(rng, *sample_args, **sample_kwargs)`` (so the
  parameters are those of ``module.init`` with the same key), split into
  ``params`` and the other collections.
  """

  def init(rng: jax.Array) -> tuple[Params, ModelState]:
    variables = dict(module.init(rng, *sample_args, **sample_kwargs))
    params = variables.pop('params', {})
    return params, variables

  def apply(params, model_state, *args, rng=None, update_state=False, method=None, **kwargs):
    variables = {'params': params, **model_state}
    rngs = {'dropout': rng} if rng is not None else None
    method = getattr(module, method) if isinstance(method, str) else method
    if update_state and model_state:
      out, updates = module.apply(
        variables, *args, rngs=rngs, method=method, mutable=list(model_state), **kwargs
      )
      return out, {**model_state, **updates}
    return module.apply(variables, *args, rngs=rngs, method=method, **kwargs), model_state

  return Model(init=init, apply=apply, module=module)


def nnx(make: Callable[[flax_nnx.Rngs], flax_nnx.Module]) -> Model:
  """Wraps an NNX module built by ``make(rngs)``.

  ``init(rng)`` builds it with ``nnx.Rngs(rng)`` and splits it into the
  ``nnx.Param`` variables and the rest, both as pure dicts of arrays. The graph
  definition is taken once, from a build under ``jax.eval_shape`` (no compute).
  """
  abstract = flax_nnx.eval_shape(lambda: make(flax_nnx.Rngs(0)))
  graphdef, abstract_params, abstract_rest = flax_nnx.split(abstract, flax_nnx.Param, ...)

  def init(rng: jax.Array) -> tuple[Params, ModelState]:
    _, params, rest = flax_nnx.split(make(flax_nnx.Rngs(rng)), flax_nnx.Param, ...)
    return flax_nnx.to_pure_dict(params), flax_nnx.to_pure_dict(rest)

  def merge(params, model_state) -> flax_nnx.Module:
    p = jax.tree.map(lambda x: x, abstract_params)  # A fresh State to fill.
    r = jax.tree.map(lambda x: x, abstract_rest)
    flax_nnx.replace_by_pure_dict(p, params)
    flax_nnx.replace_by_pure_dict(r, model_state)
    return flax_nnx.merge(graphdef, p, r)

  def apply(params, model_state, *args, rng=None, update_state=False, method=None, **kwargs):
    model = merge(params, model_state)
    if rng is not None:
      for _, stream in flax_nnx.iter_graph(model):
        if isinstance(stream, flax_nnx.RngStream) and stream.tag == 'dropout':
          stream.key.value = rng
          stream.count.value = jax.numpy.zeros_like(stream.count.value)
    fn = getattr(model, method) if isinstance(method, str) else (method or model)
    out = fn(*args, **kwargs)
    if not update_state:
      return out, model_state
    _, _, rest = flax_nnx.split(model, flax_nnx.Param, ...)
    return out, flax_nnx.to_pure_dict(rest)

  return Model(init=init, apply=apply, module=graphdef)

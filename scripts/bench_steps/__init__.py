"""Training-step benchmarks of the recurrent experiments: ours against a PyTorch peer.

Each experiment module here (``skip_thoughts``, ``attentive_reader``, ``draw``,
``handwriting``, ``order_embeddings``) defines ``SPEC``, a :class:`StepBench`:

* ``ours(norm, quick) -> Step``: the experiment's real jitted training step (its
  ``make_loss_fn`` -> :func:`lnorm.lab.runner.make_train_step` -> ``make_train_chunk``,
  state donated, the config's ``steps_per_call`` steps per call) on synthetic
  batches shaped like the real data, built with :func:`chunk_runner`;
* ``torch(norm, step, threads) -> run``: the same model, loss and optimizer written
  as a PyTorch user would (eager), one optimizer step per call, on the same batches;
* the forward matmul FLOPs of one example (``Step.forward_flops``; a training step
  counts 3x: the backward's two matmuls per forward one).

``scripts/bench.py`` times the runners interleaved (:func:`lnorm.lab.benchmarking.
time_stateful`) and reports examples/s, the FLOP/s as a fraction of the machine's
f32 matmul rate measured in the same process, and ours / PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np


@dataclass
class Step:
  """One experiment's training step, ready to time.

  Attributes:
    run: one call runs ``steps_per_call`` optimizer steps and returns once they are
      done (the metrics and the finiteness flag fetched to the host, as the runner does).
    steps_per_call: optimizer steps per call of ``run``.
    batch_size: examples per optimizer step.
    num_params: the number of trained parameters.
    forward_flops: matmul FLOPs (2 per multiply-add) of one example's forward pass.
    config: the experiment's config (``ml_collections.ConfigDict``).
    batches: the timed batches, numpy ``[steps_per_call, batch, ...]`` (the PyTorch
      peer trains on the same ones).
    extra: anything else a peer needs (vocabulary size, ...).
  """

  run: Callable[[], None]
  steps_per_call: int
  batch_size: int
  num_params: int
  forward_flops: float
  config: Any
  batches: dict[str, np.ndarray]
  extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepBench:
  """An experiment's training-step benchmark (the ``SPEC`` of a module here).

  Attributes:
    title: the report section's title.
    unit: what one example is, plural (``'triples'``, ``'images'``, ...).
    norms: the norms measured (each a config's ``norm``).
    ours: ``(norm, quick) -> Step``.
    torch: ``(norm, step, threads) -> run``, one optimizer step per call.
    description: Markdown lines for the report: the config, the peer, the FLOP count.
  """

  title: str
  unit: str
  norms: tuple[str, ...]
  ours: Callable[[str, bool], Step]
  torch: Callable[[str, Step, int], Callable[[], None]]
  description: list[str]


def chunk_runner(
  init: Callable, loss_fn: Callable, config: Any, batches: dict[str, np.ndarray]
) -> tuple[Callable[[], None], int]:
  """``(run, num_params)``: the runner's chunked, donated training step on ``batches``.

  ``init``: ``rng -> (params, model_state)`` (an experiment's ``model.init``);
  ``loss_fn``: the experiment's loss, as :func:`lnorm.lab.runner.make_train_step`
  takes it; ``config``: what :func:`lnorm.lab.optimizers.make_optimizer` reads;
  ``batches``: numpy ``[K, batch, ...]``. One call of ``run`` is one call of the
  jitted chunk (``K`` steps), the metrics fetched to the host afterwards.
  """
  from lnorm.lab import optimizers, runner, sharding

  tx, schedule = optimizers.make_optimizer(config, 10**6)
  mesh = sharding.make_mesh()
  params, model_state = init(jax.random.key(0))
  state = runner.TrainState(jax.numpy.int32(0), params, model_state, tx.init(params))
  holder = {'state': sharding.replicate(state, mesh)}
  chunk = runner.make_train_chunk(runner.make_train_step(loss_fn, tx, schedule), mesh)
  device_batches = sharding.shard_batch(batches, mesh, batch_axis=1)
  key = sharding.replicate(jax.random.key(0), mesh)

  def run():
    holder['state'], metrics, finite = chunk(holder['state'], device_batches, key)
    jax.tree.map(np.asarray, metrics)
    bool(finite)

  num_params = sum(x.size for x in jax.tree.leaves(holder['state'].params))
  return run, num_params


def torch_batches(batches: dict[str, np.ndarray], step: int) -> dict[str, Any]:
  """Step ``step`` of ``batches`` as torch tensors (integers as int64, floats as float32)."""
  import torch

  out = {}
  for k, v in batches.items():
    t = torch.from_numpy(np.ascontiguousarray(v[step]))
    out[k] = t.long() if np.issubdtype(v.dtype, np.integer) else t.float()
  return out


def peer_param_count(model) -> int:
  """Parameters of a PyTorch peer, less ``torch.nn.LSTM``/``GRU``'s second bias vectors.

  PyTorch's recurrent layers carry two biases per gate (``bias_ih_l*`` and
  ``bias_hh_l*``); ours carry one. For the LSTM the second is redundant; in
  PyTorch's GRU the candidate's ``b_hn`` sits inside ``r * (U h + b_hn)``, a small
  difference of parametrization with the same matmuls. Either way the count without
  ``bias_hh_*`` is the one to compare with ours.
  """
  return sum(p.numel() for name, p in model.named_parameters() if '.bias_hh_' not in f'.{name}')


def torch_step_runner(model, optimizer, loss_of_batch, batches, threads: int, clip=None):
  """One call = one eager optimizer step on the next of ``batches`` (cycled).

  ``loss_of_batch(model, batch) -> scalar loss``; ``clip``: the global gradient norm
  clipped to (``torch.nn.utils.clip_grad_norm_``), or ``None``. The returned function's
  ``model`` attribute is ``model`` (tests compare its parameters with ours).
  """
  import torch

  steps = len(next(iter(batches.values())))
  prepared = [torch_batches(batches, i) for i in range(steps)]
  counter = [0]

  def run():
    torch.set_num_threads(threads)
    i = counter[0] = (counter[0] + 1) % steps
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of_batch(model, prepared[i])
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()

  run.model = model
  return run

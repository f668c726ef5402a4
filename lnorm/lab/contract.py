"""The experiment contract: what a paper experiment declares, and nothing more.

An experiment module (``experiments/<task>.py``) defines::

  def check_config(config) -> None                 # optional: its own fields
  def make_experiment(config, workdir, mesh) -> Experiment

and the runner (:mod:`lnorm.lab.runner`) does everything else exactly once:
config validation of the shared training fields, the device mesh and
sharding, the optimizer and schedule (:mod:`lnorm.lab.optimizers`), the train
state, checkpoints and exact resumption, metric files, progress, the NaN
guard. A short example (the full one is ``experiments/pmnist.py``)::

  def make_experiment(config, workdir, mesh):
    model = models.linen(MLP(...), jnp.zeros((1, 784)))
    data = load_data(config)

    def loss(params, model_state, batch, rng):
      logits, model_state = model.apply(params, model_state, batch['image'], train=True)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return nll, ({}, model_state)

    return Experiment(
      init=model.init,
      loss=loss,
      train=batching.shuffled(data['train'], config.batch_size, config.seed),
      evaluators=[Evaluator('eval', evaluate, per_epoch=4)],
    )

Train data is a stream of batches: ``TrainData.batches(step)`` yields the
host batch (a pytree of numpy arrays, batch axis first) of every step from
``step`` on, and must be a function of the seed and the step only, so a
resumed run sees the same data. Batches may change shape from step to step
(buckets of sentence lengths): the runner stacks runs of consecutive
same-shaped batches into one jitted multi-step call and compiles once per
shape, so a stream that keeps ``steps_per_call`` same-shaped batches together
keeps the fast path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

Params = Any
ModelState = Any
Batch = Any
Metrics = dict[str, jax.Array]

#: ``(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))``: ``loss`` a
#: float32 scalar (the mean over the batch, or whatever the experiment optimizes), ``metrics``
#: float32 scalars averaged by the runner over the steps between two rows (as ``train/<name>``),
#: ``model_state`` the non-trainable variables (batch norm's running averages; ``{}`` if none).
LossFn = Callable[[Params, ModelState, Batch, jax.Array], tuple[jax.Array, tuple[Metrics, Any]]]


@dataclasses.dataclass(frozen=True)
class TrainState:
  """What the runner trains and checkpoints; evaluators read it.

  Attributes:
    step: the number of optimizer steps taken (int32 scalar array).
    params: the trainable parameters.
    model_state: the other variables (e.g. ``{'batch_stats': ...}``; ``{}`` if none).
    opt_state: the optimizer's state.
  """

  step: jax.Array
  params: Params
  model_state: ModelState
  opt_state: Any


jax.tree_util.register_dataclass(
  TrainState, data_fields=['step', 'params', 'model_state', 'opt_state'], meta_fields=[]
)


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The training stream.

  Attributes:
    batches: ``start_step -> iterator`` of the host batches of steps ``start_step,
      start_step + 1, ...`` (numpy pytrees; every leaf's leading axis is the batch,
      split over the devices). A pure function of the seed and the step.
    steps_per_epoch: optimizer steps in one pass over the data (the ``epoch`` column).
    batch_size: examples per step (the ``examples`` column).
    batch_rows: optional ``(start_step, rows) -> iterator`` of only the rows
      ``rows`` (a ``slice`` of the batch axis) of the batches ``batches`` gives.
      In a multi-process run each process feeds only its rows of the global
      batch (:func:`lnorm.lab.batching.process_batches`): with this it reads
      only those; without it, it builds each whole batch and keeps its rows,
      which is right for any stream (e.g. one padding a batch to its longest
      example) but reads every row on every process.
  """

  batches: Callable[[int], Iterator[Batch]]
  steps_per_epoch: int
  batch_size: int
  batch_rows: Callable[[int, slice], Iterator[Batch]] | None = None


@dataclasses.dataclass(frozen=True)
class Image:
  """A summary image an evaluator returns beside its scalars: ``<float|uint8>[H, W(, C)]``.

  Written to TensorBoard and to ``<workdir>/images/<name>-<step>.png``; never to
  ``metrics.jsonl``.
  """

  array: np.ndarray


@dataclasses.dataclass(frozen=True)
class Text:
  """A summary text an evaluator returns beside its scalars (TensorBoard and ``images/``)."""

  text: str


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """An evaluation and its cadence.

  Attributes:
    name: for the log.
    fn: ``TrainState -> {key: value}``; float values go to ``metrics.jsonl`` as
      they are keyed (e.g. ``'valid/error'``), :class:`Image` and :class:`Text`
      values to the summaries.
    every_steps: run every this many steps (0: never by this rule).
    per_epoch: run this many times per epoch, evenly spaced (0: never by this rule).
    at_start: also run on the initial state, as the row of step 0 (once).
    at_end: run at the last step.
  """

  name: str
  fn: Callable[[TrainState], Mapping[str, Any]]
  every_steps: int = 0
  per_epoch: int = 0
  at_start: bool = False
  at_end: bool = True

  def is_due(self, step: int, steps_per_epoch: int, num_steps: int) -> bool:
    """Whether the evaluator runs after ``step`` (``step >= 1``)."""
    if step == num_steps and self.at_end:
      return True
    if self.every_steps and step % self.every_steps == 0:
      return True
    if self.per_epoch:
      n = min(self.per_epoch, steps_per_epoch)
      points = {round(j * steps_per_epoch / n) % steps_per_epoch for j in range(1, n + 1)}
      return step % steps_per_epoch in points
    return False


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What one experiment declares to the runner.

  Attributes:
    init: ``rng -> (params, model_state)``: the initial variables, from
      ``jax.random.key(config.seed)`` (see :mod:`lnorm.lab.models`).
    loss: the training loss (:data:`LossFn`).
    train: the training stream.
    evaluators: evaluations and their cadences.
    resume_safe: config fields, beyond the runner's own, that may change when
      a run resumes (e.g. how often an expensive evaluation runs).
    num_steps: the run's length; ``None``: ``config.num_epochs`` epochs.
  """

  init: Callable[[jax.Array], tuple[Params, ModelState]]
  loss: LossFn
  train: TrainData
  evaluators: Sequence[Evaluator] = ()
  resume_safe: tuple[str, ...] = ()
  num_steps: int | None = None

"""The training loop every experiment shares.

An experiment supplies its model as a loss function and an evaluation
function, and its data as a function of the step; :func:`train_loop` does the
rest: optimizer, data-parallel jitted steps (several per call), evaluation
cadence, checkpoints and resumption, metric files, progress, NaN guard.

Config fields read here (every experiment's config has them; see
``configs/pmnist.py``):

* ``seed``: the run's seed (data order and dropout come from it and the step).
* ``optimizer`` (``'adam'``, ``'adamw'``, ``'sgd'``, ``'momentum'``),
  ``learning_rate``, ``lr_schedule`` (``'constant'``, ``'cosine'``),
  ``warmup_steps`` (linear warm-up from 0, before any schedule),
  ``grad_clip_norm`` (clip by global norm; 0 = off), ``adam_b1``,
  ``adam_b2``, ``adam_eps``, ``weight_decay`` (adamw), ``momentum``.
* ``steps_per_call``: optimizer steps per jitted call (a ``lax.scan``).
* ``log_every_steps``: train metrics rows; ``evals_per_epoch`` and
  ``eval_every_steps`` (0 = off): evaluation rows; ``checkpoint_every_steps``
  (0 = at epoch ends); ``keep_checkpoints``. The last step always logs,
  evaluates and checkpoints.

Resumption is exact: the data order is a function of ``(seed, step)`` (see
:func:`batch_indices`), random keys are ``fold_in(key(seed), step)``, and the
running sums of train metrics since the last row are saved with each
checkpoint, so a run killed and restarted writes the same numbers as one that
never stopped.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from lnorm import checkpoints as ckpt_lib
from lnorm import config_args, sharding
from lnorm.metrics import MetricWriter, read_metrics
from lnorm.progress import Progress

Batch = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, tuple[Metrics, Any]]]

OPTIMIZERS = ('adam', 'adamw', 'sgd', 'momentum')
LR_SCHEDULES = ('constant', 'cosine')
#: Fields that change neither the data order nor the updates: a run may resume with new values.
RESUME_SAFE = (
  'log_every_steps',
  'eval_every_steps',
  'evals_per_epoch',
  'checkpoint_every_steps',
  'keep_checkpoints',
  'steps_per_call',
  'data_dir',
)
DEFAULT_CACHE_DIR = '~/.cache/lnorm/jax'


class TrainState(train_state.TrainState):
  """Flax's TrainState plus ``batch_stats`` (batch norm's running averages; ``{}`` if none)."""

  batch_stats: Any = flax.struct.field(default_factory=dict)


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory (``None``: off).

  The directory is ``path``, else ``$LNORM_JAX_CACHE``, else
  ``~/.cache/lnorm/jax``. ``LNORM_JAX_CACHE=off`` (or ``0``, ``none``)
  turns the cache off. Compiled programs are then reused across runs, which
  cuts the start-up of every run after the first.
  """
  path = path or os.environ.get('LNORM_JAX_CACHE') or DEFAULT_CACHE_DIR
  if path.lower() in ('off', '0', 'none', 'false'):
    return None
  path = str(pathlib.Path(path).expanduser())
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path


def check_training_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field if a training field of ``config`` is invalid."""
  c = config
  config_args.check_int('seed', c.seed)
  config_args.check_choice('optimizer', c.optimizer, OPTIMIZERS)
  config_args.check_positive('learning_rate', c.learning_rate)
  config_args.check_choice('lr_schedule', c.lr_schedule, LR_SCHEDULES)
  config_args.check_int('warmup_steps', c.warmup_steps, minimum=0)
  config_args.check_positive('grad_clip_norm', c.grad_clip_norm, allow_zero=True)
  config_args.check_positive('weight_decay', c.weight_decay, allow_zero=True)
  config_args.check_positive('adam_eps', c.adam_eps)
  for name in ('adam_b1', 'adam_b2', 'momentum'):
    value = config_args.check_positive(name, c[name], allow_zero=True)
    if value >= 1:
      raise ValueError(f'{name} must be in [0, 1); got {value!r}.')
  config_args.check_int('num_epochs', c.num_epochs, minimum=1)
  config_args.check_int('batch_size', c.batch_size, minimum=1)
  config_args.check_int('steps_per_call', c.steps_per_call, minimum=1)
  config_args.check_int('log_every_steps', c.log_every_steps, minimum=1)
  config_args.check_int('eval_every_steps', c.eval_every_steps, minimum=0)
  config_args.check_int('evals_per_epoch', c.evals_per_epoch, minimum=1)
  config_args.check_int('checkpoint_every_steps', c.checkpoint_every_steps, minimum=0)
  config_args.check_int('keep_checkpoints', c.keep_checkpoints, minimum=1)


def resume_safe_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """:data:`RESUME_SAFE`, plus ``num_epochs`` when the learning rate does not depend on it."""
  extra = ('num_epochs',) if config.lr_schedule == 'constant' else ()
  return RESUME_SAFE + extra


def make_learning_rate(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step: warm-up, then constant or cosine to 0."""
  lr, warmup = config.learning_rate, config.warmup_steps
  if config.lr_schedule == 'constant':
    main = optax.constant_schedule(lr)
  else:
    main = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(
  config: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax optimizer of ``config`` (with clipping if asked) and its learning-rate schedule."""
  schedule = make_learning_rate(config, num_steps)
  if config.optimizer == 'adam':
    tx = optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  elif config.optimizer == 'adamw':
    tx = optax.adamw(
      schedule,
      b1=config.adam_b1,
      b2=config.adam_b2,
      eps=config.adam_eps,
      weight_decay=config.weight_decay,
    )
  elif config.optimizer == 'momentum':
    tx = optax.sgd(schedule, momentum=config.momentum)
  else:
    tx = optax.sgd(schedule)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule


def make_train_step(
  loss_fn: LossFn, schedule: optax.Schedule
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """One optimizer step: ``(state, batch, rng) -> (new_state, metrics)``.

  Args:
    loss_fn: ``(params, batch_stats, batch, rng) -> (loss, (metrics, new_batch_stats))``
      with ``loss`` a float32 scalar (the mean over the batch) and ``metrics``
      a dict of float32 scalars.
    schedule: the learning rate by step (reported as ``lr``).

  Returns:
    The step; its metrics add ``loss``, ``grad_norm`` (global norm of the
    gradient) and ``lr`` to those of ``loss_fn``.
  """

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    def f(params):
      return loss_fn(params, state.batch_stats, batch, rng)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(f, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return new_state, metrics

  return train_step


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_chunk(train_step: Callable, mesh: Mesh) -> Callable:
  """A jitted call running ``K`` optimizer steps with ``lax.scan``.

  The returned function maps ``(state, batches, rng)`` to
  ``(state, metrics, params_finite)``:

  * ``batches``: a pytree whose arrays are ``[K, batch_size, ...]``, split
    over the devices along axis 1; step ``i`` trains on ``batches[i]``. Each
    ``K`` compiles once (the loop uses ``steps_per_call`` and 1);
  * ``rng``: the run's key; step ``s`` uses ``fold_in(rng, s)``;
  * ``metrics``: dict of float32 ``[K]``, one value per step;
  * ``params_finite``: bool scalar, whether every parameter is finite after
    the chunk.

  The state's buffers are donated: the caller must not use ``state`` again.
  (Masking a padded tail with ``lax.cond`` instead of compiling ``K = 1``
  doubled the time of a batch-4 pMNIST step on CPU: the branch copies the
  state.)
  """

  def chunk(state, batches, rng):
    def body(state, batch):
      return train_step(state, batch, jax.random.fold_in(rng, state.step))

    state, metrics = jax.lax.scan(body, state, batches)
    return state, metrics, _all_finite(state.params)

  return jax.jit(chunk, donate_argnums=(0,), out_shardings=sharding.replicated(mesh))


def batch_indices(
  seed: int, step: int, num_steps: int, num_examples: int, batch_size: int
) -> np.ndarray:
  """Example indices of steps ``step .. step + num_steps - 1``: int64 ``[num_steps, batch_size]``.

  Each epoch visits the examples in a fresh random order (a permutation
  seeded by ``(seed, epoch)``) and drops the last ``num_examples %
  batch_size`` of them, so the batch of a step depends only on the seed and
  the step: resuming from any step gives the same data order.
  """
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(f'batch size {batch_size} exceeds the {num_examples} training examples.')
  out = np.empty((num_steps, batch_size), np.int64)
  perm, perm_epoch = None, -1
  for i, s in enumerate(range(step, step + num_steps)):
    epoch, pos = divmod(s, per_epoch)
    if epoch != perm_epoch:
      perm, perm_epoch = np.random.default_rng([seed, epoch]).permutation(num_examples), epoch
    out[i] = perm[pos * batch_size : (pos + 1) * batch_size]
  return out


def evaluate_arrays(
  eval_fn: Callable[[TrainState, Batch], dict[str, jax.Array]],
  state: TrainState,
  data: dict[str, np.ndarray],
  batch_size: int,
  mesh: Mesh,
) -> dict[str, float]:
  """Means over a whole data set of per-example metrics.

  Args:
    eval_fn: a jitted ``(state, batch) -> {name: float32 [B]}`` of per-example
      values.
    state: the train state (replicated).
    data: arrays with a common leading axis ``N``; they are cut into batches
      of ``batch_size`` (a multiple of the device count); the last batch is
      padded and its padding masked out.
    batch_size: the evaluation batch size.
    mesh: the devices' mesh.

  Returns:
    ``{name: mean over the N examples}`` as Python floats.
  """
  n = len(next(iter(data.values())))
  sums: dict[str, float] = {}
  for start in range(0, n, batch_size):
    batch = {k: v[start : start + batch_size] for k, v in data.items()}
    m = len(next(iter(batch.values())))
    if m < batch_size:
      batch = {k: np.concatenate([v, np.zeros_like(v[: batch_size - m])]) for k, v in batch.items()}
    values = eval_fn(state, sharding.shard_batch(batch, mesh))
    for k, v in values.items():
      sums[k] = sums.get(k, 0.0) + float(np.asarray(v, np.float64)[:m].sum())
  return {k: v / n for k, v in sums.items()}


class _Schedule:
  """Which steps log, evaluate or checkpoint, and where the next stop is."""

  def __init__(self, config: ml_collections.ConfigDict, steps_per_epoch: int, num_steps: int):
    self.spe, self.num_steps = steps_per_epoch, num_steps
    self.log_every = config.log_every_steps
    self.eval_every = config.eval_every_steps
    self.ckpt_every = config.checkpoint_every_steps or steps_per_epoch
    n = min(config.evals_per_epoch, steps_per_epoch)
    self.eval_points = {round(j * steps_per_epoch / n) % steps_per_epoch for j in range(1, n + 1)}

  def is_eval(self, s: int) -> bool:
    return (
      s == self.num_steps
      or s % self.spe in self.eval_points
      or bool(self.eval_every and s % self.eval_every == 0)
    )

  def is_log(self, s: int) -> bool:
    return s == self.num_steps or s % self.log_every == 0 or self.is_eval(s)

  def is_checkpoint(self, s: int) -> bool:
    return s == self.num_steps or s % self.ckpt_every == 0

  def next_stop(self, s: int, limit: int) -> int:
    """The first step after ``s`` that logs or checkpoints, or ``s + limit``."""
    for t in range(s + 1, min(s + limit, self.num_steps) + 1):
      if self.is_log(t) or self.is_checkpoint(t):
        return t
    return min(s + limit, self.num_steps)


def _first_bad(metrics: dict[str, np.ndarray], n: int) -> int | None:
  """Index of the first of the ``n`` steps whose loss or gradient norm is not finite."""
  bad = ~np.isfinite(metrics['loss'][:n]) | ~np.isfinite(metrics['grad_norm'][:n])
  return int(np.argmax(bad)) if bad.any() else None


def train_loop(
  *,
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  init_state: Callable[[], TrainState],
  loss_fn: LossFn,
  get_batches: Callable[[int, int], Batch],
  evaluate: Callable[[TrainState], dict[str, float]],
  steps_per_epoch: int,
  num_steps: int,
  mesh: Mesh,
  resume_safe: tuple[str, ...] | None = None,
  eval_at_start: bool = False,
) -> dict[str, Any]:
  """Trains, evaluates and checkpoints in ``workdir``, resuming what is there; returns final.json.

  Args:
    config: the run's config (the fields of the module docstring).
    workdir: the run directory; created, or resumed if it holds a checkpoint.
    init_state: builds the initial :class:`TrainState`, replicated over
      ``mesh`` (``tx`` from :func:`make_optimizer`).
    loss_fn: see :func:`make_train_step`.
    get_batches: ``(step, n) -> batches`` of steps ``step .. step + n - 1``:
      numpy arrays ``[n, batch_size, ...]``; a pure function of its arguments.
    evaluate: ``state -> {'valid/nll': ..., 'test/error': ...}``.
    steps_per_epoch: optimizer steps per epoch.
    num_steps: the run's last step.
    mesh: the devices' mesh (:func:`lnorm.sharding.make_mesh`).
    resume_safe: config fields that may change on resume (default
      :func:`resume_safe_fields`).
    eval_at_start: also evaluate the initial state and log it as the row of
      step 0 (once: a run restarted before its first checkpoint keeps that row).

  Returns:
    The contents of ``final.json``: the last row's metrics, ``diverged``
    (and ``diverged_step``), ``train_examples_per_s`` and the device count.

  Raises:
    ConfigMismatchError: ``workdir`` holds a run with another config.
  """
  check_training_config(config)
  sharding.check_batch_size(config.batch_size, mesh)
  workdir = pathlib.Path(workdir)
  resume_safe = resume_safe_fields(config) if resume_safe is None else resume_safe
  changed = ckpt_lib.check_or_write_config(workdir, config, resume_safe)
  if changed:
    logging.info('Resuming with changed resume-safe fields: %s', changed)
  final_path = workdir / ckpt_lib.FINAL_FILE

  state = init_state()
  checkpointer = ckpt_lib.Checkpointer(workdir / ckpt_lib.CHECKPOINT_DIR, config.keep_checkpoints)
  start = checkpointer.latest_step() or 0
  meta: dict[str, Any] = {'wall_s': 0.0, 'train_sums': {}, 'train_count': 0}
  final = ckpt_lib.read_json(final_path)
  if final is not None and (final.get('diverged') or final['step'] == num_steps == start):
    why = 'diverged' if final.get('diverged') else 'finished'
    logging.info('%s: the run has already %s; final.json is unchanged.', workdir, why)
    checkpointer.close()
    return final
  if final is not None:
    final_path.unlink()  # E.g. num_epochs was raised: the run goes on.
  if start:
    state, meta = checkpointer.restore(start, state)
    logging.info('Resumed from the checkpoint of step %d in %s.', start, workdir)

  schedule = _Schedule(config, steps_per_epoch, num_steps)
  _, lr_schedule = make_optimizer(config, num_steps)
  chunk = make_train_chunk(make_train_step(loss_fn, lr_schedule), mesh)
  rng = sharding.replicate(jax.random.key(config.seed), mesh)
  batch_size = config.batch_size
  k = config.steps_per_call
  writer = MetricWriter(workdir, resume_step=start)
  progress = Progress(num_steps, start, batch_size)
  t0 = time.perf_counter() - meta['wall_s']
  sums: dict[str, float] = dict(meta['train_sums'])
  count: int = meta['train_count']
  train_time, train_examples = 0.0, 0
  last_row: dict[str, Any] = {}
  diverged_step = None
  if eval_at_start and start == 0 and not any(r['step'] == 0 for r in read_metrics(workdir)):
    row = dict(evaluate(state), step=0, epoch=0.0, examples=0, wall_s=time.perf_counter() - t0)
    writer.write(row)
    last_row = row

  def plan(s: int):
    """Host batches of the steps from ``s`` to the next stop, split into calls."""
    n = schedule.next_stop(s, k) - s
    batches = get_batches(s, n)
    if n == k:
      return n, [sharding.shard_batch(batches, mesh, batch_axis=1)]
    singles = [jax.tree.map(lambda x, i=i: x[i : i + 1], batches) for i in range(n)]
    return n, [sharding.shard_batch(b, mesh, batch_axis=1) for b in singles]

  def run(state, calls):
    outs = []
    for batches in calls:
      state, metrics, finite = chunk(state, batches, rng)
      outs.append((metrics, finite))
    metrics = {key: np.concatenate([np.asarray(m[key]) for m, _ in outs]) for key in outs[0][0]}
    return state, metrics, all(bool(f) for _, f in outs)

  step = start
  next_plan = plan(step) if step < num_steps else None
  compiled: set[int] = set()
  while step < num_steps:
    n, calls = next_plan
    tic = time.perf_counter()
    if len(calls) == 1:
      state, metrics, finite = chunk(state, calls[0], rng)
      next_plan = plan(step + n) if step + n < num_steps else None  # Overlaps the device.
      metrics, finite = jax.tree.map(np.asarray, metrics), bool(finite)
    else:
      state, metrics, finite = run(state, calls)
      next_plan = plan(step + n) if step + n < num_steps else None
    lengths = {jax.tree.leaves(b)[0].shape[0] for b in calls}
    if lengths <= compiled:  # Throughput without the calls that compiled.
      train_time += time.perf_counter() - tic
      train_examples += n * batch_size
    compiled |= lengths
    bad = _first_bad(metrics, n)
    if bad is not None or not finite:
      diverged_step = step + (bad if bad is not None else n - 1) + 1
      logging.error('Non-finite loss, gradient or parameters at step %d: stopping.', diverged_step)
      break
    for key, v in metrics.items():
      sums[key] = sums.get(key, 0.0) + float(np.sum(v[:n], dtype=np.float64))
    count += n
    step += n

    row = {}
    if schedule.is_log(step):
      row.update({f'train/{key}': v / count for key, v in sums.items()})
      row['train/lr'] = float(metrics['lr'][n - 1])
      sums, count = {}, 0
    if schedule.is_eval(step):
      row.update(evaluate(state))
    wall = time.perf_counter() - t0
    if row:
      row.update(step=step, epoch=step / steps_per_epoch, examples=step * batch_size, wall_s=wall)
      writer.write(row)
      last_row = row
    if schedule.is_checkpoint(step):
      meta = {'wall_s': wall, 'train_sums': dict(sums), 'train_count': count}  # Saved later.
      checkpointer.save(step, state, meta)
    loss_text = f'loss {row["train/loss"]:.4f}' if 'train/loss' in row else ''
    progress.update(step, loss_text, force=bool(row) and not progress.tty)
  progress.close()
  checkpointer.wait()
  last_checkpoint = checkpointer.latest_step()
  checkpointer.close()
  writer.close()

  rows = last_row and [last_row] or read_metrics(workdir)  # No new row: killed after the last save.
  final = dict(rows[-1]) if rows else {}
  final.update(
    step=step,
    epoch=step / steps_per_epoch,
    examples=step * batch_size,
    wall_s=time.perf_counter() - t0,
    diverged=diverged_step is not None,
    num_devices=int(mesh.size),
    train_examples_per_s=train_examples / train_time if train_time > 0 else None,
  )
  if diverged_step is not None:
    final.update(diverged_step=diverged_step, last_checkpoint=last_checkpoint)
  final = {
    k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in final.items()
  }
  ckpt_lib.write_json(final_path, final)
  return final

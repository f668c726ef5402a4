"""The one training loop every experiment runs through (see :mod:`lnorm.lab.contract`).

:func:`train_and_evaluate` imports ``experiments.<config.experiment>``,
validates the config once (the runner's fields here, the experiment's own in
its ``check_config``), builds the mesh, asks the experiment for its
:class:`~lnorm.lab.contract.Experiment`, and trains: optimizer from the
config (:mod:`lnorm.lab.optimizers`), data-parallel jitted multi-step calls,
evaluators at their cadences, checkpoints and exact resumption, metric
files, progress, NaN guard.

Config fields read here (every experiment's config has them; see
``configs/pmnist.py``):

* ``experiment``: the module ``experiments/<experiment>.py``.
* ``seed``: the run's seed (initial parameters ``key(seed)``; the step's key
  ``fold_in(key(seed), step)``; the experiment's data order).
* the optimizer fields of :mod:`lnorm.lab.optimizers`.
* ``batch_size``; ``num_epochs`` (unless the experiment fixes ``num_steps``).
* ``steps_per_call``: optimizer steps per jitted call (a ``lax.scan``).
* ``log_every_steps``: train-metric rows; ``checkpoint_every_steps`` (0: at
  epoch ends); ``keep_checkpoints``. The last step always logs and checkpoints.

Resumption is exact: the data order is a function of ``(seed, step)``, random
keys are ``fold_in(key(seed), step)``, and the running sums of train metrics
since the last row are saved with each checkpoint, so a run killed and
restarted writes the same numbers as one that never stopped.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from lnorm.lab import batching, config_args, distributed, optimizers, sharding
from lnorm.lab import checkpoints as ckpt_lib
from lnorm.lab import workdir as workdir_lib
from lnorm.lab.contract import Evaluator, Experiment, LossFn, TrainState
from lnorm.lab.metrics import MetricWriter, read_metrics
from lnorm.lab.progress import Progress

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
#: Exit codes of ``python -m lnorm.main`` (README, "Exit codes"): 2 a mistake in the command
#: (config, workdir, data); 3 the run diverged; 4 a checkpoint or metric file could not be
#: written or read; 128 + N the run was stopped by signal N after saving a checkpoint.
EXIT_USAGE, EXIT_DIVERGED, EXIT_IO = 2, 3, 4


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped the run after the checkpoint of ``step`` was written."""

  def __init__(self, step: int, signum: int):
    super().__init__(
      f'interrupted at step {step}; checkpoint saved; rerun the same command to resume.'
    )
    self.step, self.signum = step, signum
    self.exit_code = 128 + signum


class _Signals:
  """SIGINT/SIGTERM set a flag the loop reads after each call; a second one exits at once.

  The loop then writes a checkpoint of the step it reached and raises
  :class:`Interrupted`. A second signal (e.g. Ctrl-C twice) ends the process
  immediately with ``128 + N``: orbax writes a checkpoint into a temporary
  directory and renames it when complete, so the earlier checkpoints stay
  intact and a half-written one is never read. Handlers are installed only in
  the main thread (Python's rule); elsewhere the defaults stay.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      os._exit(128 + signum)
    self.received = signum
    sys.stderr.write(
      f'\n{signal.Signals(signum).name}: finishing the current step and saving a checkpoint '
      '(send it again to stop at once).\n'
    )

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGINT, signal.SIGTERM):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


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


def get_experiment_module(name: str) -> ModuleType:
  """``experiments/<name>.py``; a ValueError lists the experiments there if it is missing."""
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f'experiment must be a module name of experiments/; got {name!r}.')
  try:
    return importlib.import_module(f'experiments.{name}')
  except ModuleNotFoundError as e:
    if e.name not in (f'experiments.{name}', 'experiments'):
      raise
    root = pathlib.Path('experiments')
    known = sorted(p.stem for p in root.glob('*.py') if not p.stem.startswith('_'))
    where = (
      f'known experiments are: {", ".join(known)}.'
      if known
      else 'no experiments/ here: run from the repository root.'
    )
    raise ValueError(f'unknown experiment {name!r}; {where}') from None


def check_training_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field if a field the runner reads is invalid."""
  c = config
  config_args.check_int('seed', c.seed)
  config_args.check_choice('optimizer', c.optimizer, tuple(optimizers.OPTIMIZERS))
  config_args.check_positive('learning_rate', c.learning_rate)
  config_args.check_choice('lr_schedule', c.lr_schedule, tuple(optimizers.SCHEDULES))
  config_args.check_int('warmup_steps', c.warmup_steps, minimum=0)
  config_args.check_positive('grad_clip_norm', c.grad_clip_norm, allow_zero=True)
  config_args.check_positive('grad_clip_per_tensor', c.get('grad_clip_per_tensor', 0), True)
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
  config_args.check_int('checkpoint_every_steps', c.checkpoint_every_steps, minimum=0)
  config_args.check_int('keep_checkpoints', c.keep_checkpoints, minimum=1)


def check_config(config: ml_collections.ConfigDict) -> ModuleType:
  """Validates ``config`` once: the runner's fields, then the experiment's; returns its module."""
  module = get_experiment_module(config.experiment)
  check_training_config(config)
  if hasattr(module, 'check_config'):
    module.check_config(config)
  return module


def resume_safe_fields(
  config: ml_collections.ConfigDict, module: ModuleType | None
) -> tuple[str, ...]:
  """:data:`RESUME_SAFE`, the experiment's ``RESUME_SAFE``, and ``num_epochs`` if harmless."""
  extra = ('num_epochs',) if config.lr_schedule == 'constant' else ()
  return RESUME_SAFE + tuple(getattr(module, 'RESUME_SAFE', ())) + extra


def make_train_step(
  loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
  """One optimizer step: ``(state, batch, rng) -> (new_state, metrics)``.

  The metrics add ``loss``, ``grad_norm`` (global norm of the gradient) and
  ``lr`` to those of ``loss_fn``.
  """

  def train_step(state: TrainState, batch: Any, rng: jax.Array):
    def f(params):
      return loss_fn(params, state.model_state, batch, rng)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(f, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
    )
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return new_state, metrics

  return train_step


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_chunk(train_step: Callable, mesh: Mesh) -> Callable:
  """A jitted call running ``K`` optimizer steps with ``lax.scan``.

  Maps ``(state, batches, rng)`` to ``(state, metrics, params_finite)``:
  ``batches`` is a pytree of ``[K, batch, ...]`` arrays split over the devices
  along axis 1 (step ``i`` trains on ``batches[i]``; each ``K`` and batch shape
  compiles once); step ``s`` uses ``fold_in(rng, s)``; ``metrics`` are float32
  ``[K]``; ``params_finite`` says whether every parameter is finite after the
  chunk. The state's buffers are donated. A call of ``K = 1`` runs the step
  without a scan: XLA:CPU compiles some ops inside a scan to slower generic
  loops (a convolution's kernel gradient among them). A short tail compiles
  its own ``K = 1`` rather than masking a padded ``K`` with ``lax.cond``,
  whose branches copy the whole state.
  """

  def chunk(state, batches, rng):
    def body(state, batch):
      return train_step(state, batch, jax.random.fold_in(rng, state.step))

    if jax.tree.leaves(batches)[0].shape[0] == 1:
      state, metrics = body(state, jax.tree.map(lambda x: x[0], batches))
      metrics = jax.tree.map(lambda v: jnp.asarray(v)[None], metrics)
    else:
      state, metrics = jax.lax.scan(body, state, batches)
    return state, metrics, _all_finite(state.params)

  return jax.jit(chunk, donate_argnums=(0,), out_shardings=sharding.replicated(mesh))


def first_bad(metrics: Mapping[str, np.ndarray], n: int) -> int | None:
  """Index of the first of the ``n`` steps whose loss or gradient norm is not finite."""
  bad = ~np.isfinite(metrics['loss'][:n]) | ~np.isfinite(metrics['grad_norm'][:n])
  return int(np.argmax(bad)) if bad.any() else None


class _Cadence:
  """Which steps log, evaluate (which evaluators) or checkpoint."""

  def __init__(self, config, evaluators, steps_per_epoch: int, num_steps: int):
    self.evaluators, self.spe, self.num_steps = tuple(evaluators), steps_per_epoch, num_steps
    self.log_every = config.log_every_steps
    self.ckpt_every = config.checkpoint_every_steps or steps_per_epoch

  def due(self, s: int) -> list[Evaluator]:
    return [e for e in self.evaluators if e.is_due(s, self.spe, self.num_steps)]

  def is_log(self, s: int) -> bool:
    return s == self.num_steps or s % self.log_every == 0 or bool(self.due(s))

  def is_checkpoint(self, s: int) -> bool:
    return s == self.num_steps or s % self.ckpt_every == 0

  def next_stop(self, s: int, limit: int) -> int:
    """The first step after ``s`` that logs or checkpoints, or ``s + limit``."""
    for t in range(s + 1, min(s + limit, self.num_steps) + 1):
      if self.is_log(t) or self.is_checkpoint(t):
        return t
    return min(s + limit, self.num_steps)


def _evaluate(evaluators, state, writer: MetricWriter, step: int) -> dict[str, Any]:
  """Runs ``evaluators`` on ``state``; returns their scalars and writes their summaries."""
  scalars: dict[str, Any] = {}
  summaries: dict[str, Any] = {}
  for e in evaluators:
    for key, value in e.fn(state).items():
      target = scalars if isinstance(value, int | float | np.number) else summaries
      target[key] = value
  if summaries:
    writer.write_summaries(step, summaries)
  return scalars


def _shape_key(batch: Any) -> tuple:
  leaves, treedef = jax.tree.flatten(batch)
  return treedef, tuple((np.shape(x), np.dtype(x.dtype)) for x in leaves)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, mesh: Mesh | None = None
) -> dict[str, Any]:
  """Trains ``config``'s experiment in ``workdir``, resuming what is there; returns final.json.

  Validates the config (:func:`check_config`), checks it against a run already
  in ``workdir`` (before any data is read), then builds the experiment with
  ``experiments.<config.experiment>.make_experiment(config, workdir, mesh)``
  and trains it (:func:`run`).

  Raises:
    ValueError: a field of the config is invalid (the message names it).
    ConfigMismatchError: ``workdir`` holds a run with another config.
    FileNotFoundError: the experiment's data is missing (the message says where it looked).
  """
  module = check_config(config)
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(config.batch_size, mesh)
  workdir = _prepare_workdir(workdir)
  with _lock(workdir):
    with distributed.primary_first('make-experiment'):  # Process 0 writes what it caches.
      _write_config(config, workdir, resume_safe_fields(config, module))
      experiment = module.make_experiment(config, workdir, mesh)
    return _train(config, workdir, mesh, experiment)


def run(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  experiment: Experiment,
  *,
  mesh: Mesh | None = None,
  resume_safe: tuple[str, ...] = (),
) -> dict[str, Any]:
  """Trains an :class:`Experiment` built by the caller (tests, notebooks); returns final.json.

  The same loop as :func:`train_and_evaluate`, for an experiment that is not
  a module of ``experiments/``: only the runner's own config fields are
  checked; ``resume_safe`` adds fields that may change on resume.
  """
  check_training_config(config)
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(config.batch_size, mesh)
  workdir = _prepare_workdir(workdir)
  with _lock(workdir):
    _write_config(config, workdir, resume_safe_fields(config, None) + tuple(resume_safe))
    return _train(config, workdir, mesh, experiment)


def _prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """``workdir_lib.prepare_workdir`` on process 0; the others touch nothing in it.

  Process 0 makes the directory before the other processes first look in it
  (after :func:`lnorm.lab.distributed.primary_first`).
  """
  if not distributed.is_primary():
    return pathlib.Path(workdir).expanduser()
  return workdir_lib.prepare_workdir(workdir)


def _lock(workdir: pathlib.Path):
  """The workdir's lock, taken by the process that writes the run's files (process 0)."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return workdir_lib.WorkdirLock(workdir)


def _write_config(config, workdir: pathlib.Path, resume_safe: tuple[str, ...]) -> None:
  if not distributed.is_primary():
    return  # Process 0 checks and writes config.json for the whole run.
  changed = workdir_lib.check_or_write_config(workdir, config, resume_safe)
  if changed:
    logging.info('Resuming with changed resume-safe fields: %s', changed)


def _train(config, workdir: pathlib.Path, mesh: Mesh, exp: Experiment) -> dict[str, Any]:
  data = exp.train
  spe = data.steps_per_epoch
  num_steps = exp.num_steps or config.num_epochs * spe
  final_path = workdir / workdir_lib.FINAL_FILE
  tx, lr_schedule = optimizers.make_optimizer(config, num_steps)

  def init_state() -> TrainState:
    params, model_state = exp.init(jax.random.key(config.seed))
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
    )
    return sharding.replicate(state, mesh)

  state = init_state()
  checkpointer = ckpt_lib.Checkpointer(
    workdir / workdir_lib.CHECKPOINT_DIR, config.keep_checkpoints
  )
  start = checkpointer.latest_step() or 0
  meta: dict[str, Any] = {'wall_s': 0.0, 'train_sums': {}, 'train_count': 0}
  final = workdir_lib.read_json(final_path)
  logged_start = any(r['step'] == 0 for r in read_metrics(workdir))
  distributed.barrier('read-workdir')  # Every process has read it before process 0 changes it.
  if final is not None and (final.get('diverged') or final['step'] == num_steps == start):
    why = 'diverged' if final.get('diverged') else 'finished'
    logging.info('%s: the run has already %s; final.json is unchanged.', workdir, why)
    checkpointer.close()
    return final
  if final is not None and distributed.is_primary():
    final_path.unlink()  # E.g. num_epochs was raised: the run goes on.
  if start > num_steps:
    # E.g. a run stopped by a signal after its last cadence checkpoint, then rerun with the
    # old length: resume from the newest checkpoint within the run, never past its end.
    within = [s for s in checkpointer.all_steps() if s <= num_steps]
    if not within:
      checkpointer.close()
      raise ValueError(
        f"{workdir} holds checkpoints only past the run's {num_steps} steps (the newest is "
        f'step {start}): raise num_epochs or num_steps to at least {start}, or use a new '
        '--workdir.'
      )
    logging.warning('The checkpoints of %s go past step %d (to %d): resuming from step %d.',
                    workdir, num_steps, start, within[-1])  # fmt: skip
  if start:
    restored = checkpointer.restore_latest(state, max_step=num_steps)
    state, meta, start = restored or (state, meta, 0)
    logging.info('Resumed from the checkpoint of step %d in %s.', start, workdir)
  logging.info(
    '%s: norm=%s batch_size=%d steps=%d (%d per epoch) on %d device(s); workdir %s',
    config.experiment, config.get('norm', '-'), data.batch_size, num_steps, spe, mesh.size, workdir,
  )  # fmt: skip

  cadence = _Cadence(config, exp.evaluators, spe, num_steps)
  chunk = make_train_chunk(make_train_step(exp.loss, tx, lr_schedule), mesh)
  rng = sharding.replicate(jax.random.key(config.seed), mesh)
  batch_size, k = data.batch_size, config.steps_per_call
  writer = MetricWriter(workdir, resume_step=start, enabled=distributed.is_primary())
  progress = Progress(num_steps, start, batch_size, enabled=distributed.is_primary())
  t0 = time.perf_counter() - meta['wall_s']
  sums: dict[str, float] = dict(meta['train_sums'])
  count: int = meta['train_count']
  train_time, train_examples = 0.0, 0
  last_row: dict[str, Any] = {}
  diverged_step = None
  at_start = [e for e in exp.evaluators if e.at_start]
  if at_start and start == 0 and not logged_start:
    row = dict(_evaluate(at_start, state, writer, 0), step=0, epoch=0.0, examples=0)
    row['wall_s'] = time.perf_counter() - t0
    writer.write(row)
    last_row = row
  stream = batching.process_batches(data, start, mesh)  # This process's rows of each batch.

  def plan(s: int) -> tuple[int, list[Any]]:
    """The device batches of the steps from ``s`` to the next stop, as calls.

    ``K`` same-shaped batches make one stacked call; otherwise each step is its
    own call (compiled once per shape).
    """
    n = cadence.next_stop(s, k) - s
    host = list(itertools.islice(stream, n))
    if len(host) < n:
      raise ValueError(f'the training stream ended at step {s + len(host)} of {num_steps}.')
    if n == k and len({_shape_key(b) for b in host}) == 1:
      stacked = jax.tree.map(lambda *xs: np.stack(xs), *host)
      return n, [sharding.shard_batch(stacked, mesh, batch_axis=1, local=True)]
    singles = [jax.tree.map(lambda x: np.asarray(x)[None], b) for b in host]
    return n, [sharding.shard_batch(b, mesh, batch_axis=1, local=True) for b in singles]

  step = start
  next_plan = plan(step) if step < num_steps else None
  compiled: set[tuple] = set()
  try:
    with _Signals() as signals:
      while step < num_steps:
        n, calls = next_plan
        tic = time.perf_counter()
        outs = []
        for i, batches in enumerate(calls):
          state, metrics, finite = chunk(state, batches, rng)
          if i == len(calls) - 1:  # Prepare the next batches while the device works.
            next_plan = plan(step + n) if step + n < num_steps else None
          outs.append((metrics, finite))
        metrics = {key: np.concatenate([np.asarray(m[key]) for m, _ in outs]) for key in outs[0][0]}
        finite = all(bool(f) for _, f in outs)
        shapes = {_shape_key(b) for b in calls}
        if shapes <= compiled:  # Throughput without the calls that compiled.
          train_time += time.perf_counter() - tic
          train_examples += n * batch_size
        compiled |= shapes
        bad = first_bad(metrics, n)
        if bad is not None or not finite:
          diverged_step = step + (bad if bad is not None else n - 1) + 1
          logging.error(
            'Non-finite loss, gradient or parameters at step %d: stopping.', diverged_step
          )
          break
        for key, v in metrics.items():
          sums[key] = sums.get(key, 0.0) + float(np.sum(v[:n], dtype=np.float64))
        count += n
        step += n

        row = {}
        if cadence.is_log(step):
          row.update({f'train/{key}': v / count for key, v in sums.items()})
          row['train/lr'] = float(metrics['lr'][n - 1])
          sums, count = {}, 0
        due = cadence.due(step)
        if due:
          row.update(_evaluate(due, state, writer, step))
        wall = time.perf_counter() - t0
        if row:
          row.update(step=step, epoch=step / spe, examples=step * batch_size, wall_s=wall)
          writer.write(row)
          last_row = row
        if cadence.is_checkpoint(step):
          meta = {'wall_s': wall, 'train_sums': dict(sums), 'train_count': count}
          checkpointer.save(step, state, meta)
        loss_text = f'loss {row["train/loss"]:.4f}' if 'train/loss' in row else ''
        progress.update(step, loss_text, force=bool(row) and not progress.tty)
        if distributed.any_process(signals.received is not None):  # All stop at the same step.
          if not cadence.is_checkpoint(step):
            meta = {'wall_s': wall, 'train_sums': dict(sums), 'train_count': count}
            checkpointer.save(step, state, meta)
          raise Interrupted(step, signals.received or signal.SIGTERM)
  except BaseException:
    # Whatever stops the run (a failed save, an interrupt, a bug), the checkpoints already
    # being written are finished and the files closed: nothing written so far is lost.
    progress.close()
    with contextlib.suppress(Exception):
      checkpointer.wait()
    with contextlib.suppress(Exception):
      checkpointer.close()
    writer.close()
    raise
  progress.close()
  checkpointer.wait()
  last_checkpoint = checkpointer.latest_step()
  checkpointer.close()
  writer.close()

  rows = last_row and [last_row] or read_metrics(workdir)  # No new row: killed after the last save.
  final = dict(rows[-1]) if rows else {}
  final.update(
    step=step,
    epoch=step / spe,
    examples=step * batch_size,
    wall_s=time.perf_counter() - t0,
    diverged=diverged_step is not None,
    num_devices=int(mesh.size),
    num_processes=jax.process_count(),
    train_examples_per_s=train_examples / train_time if train_time > 0 else None,
  )
  if diverged_step is not None:
    final.update(diverged_step=diverged_step, last_checkpoint=last_checkpoint)
  final = {
    k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in final.items()
  }
  if distributed.is_primary():
    workdir_lib.write_json(final_path, final)
  return final


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config saved in ``workdir``; a FileNotFoundError if it is not a run directory."""
  saved = workdir_lib.read_json(pathlib.Path(workdir) / workdir_lib.CONFIG_FILE)
  if saved is None:
    raise FileNotFoundError(f'{workdir} holds no {workdir_lib.CONFIG_FILE}: not a run directory.')
  return ml_collections.ConfigDict(saved)


def restore_checkpoint(
  workdir: str | os.PathLike,
  config: ml_collections.ConfigDict,
  init: Callable[[jax.Array], tuple[Any, Any]],
  step: int | None = None,
) -> tuple[TrainState, int]:
  """The train state of checkpoint ``step`` of ``workdir`` (default: the latest) and its step.

  ``init`` is the experiment's (:attr:`Experiment.init`): it gives the
  structure the checkpoint is read into.
  """
  checkpointer = ckpt_lib.Checkpointer(pathlib.Path(workdir) / workdir_lib.CHECKPOINT_DIR)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise FileNotFoundError(f'{workdir} holds no checkpoint.')
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ValueError(f'{workdir} has no checkpoint of step {step}; it has {steps}.')
    tx, _ = optimizers.make_optimizer(config, 1)  # The state's structure, not its schedule.
    params, model_state = init(jax.random.key(config.seed))
    like = TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params))
    state, _ = checkpointer.restore(step, like)
  finally:
    checkpointer.close()
  return state, step

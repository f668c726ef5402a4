"""Order embeddings' training step at ``data=books`` (paper §6.1), ours and a PyTorch peer.

The runs of ``results/order_embeddings.md`` that train on captions and images are
``configs/order_embeddings.py:data=books,norm=$n`` (``size=cpu``: 64-d words, a 128-d
GRU / LN-GRU and embedding space, 10,003 word ids, captions cut at 40 ids, 4096-d
"image" features, batch 128 caption-image pairs, the original's Adam variant with each
gradient tensor clipped to norm 2); that is the size measured here.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np

from scripts.bench_steps import Step, StepBench, chunk_runner, torch_rnn, torch_step_runner

#: Caption lengths (ids, ``<eos>`` included) of the books training split (35,995
#: sentences): 22.1 of 40 on average, 20.5% cut at 40.
CUT_FRACTION = 0.205
#: Nonzero entries per row of the books' hashed TF-IDF "images" (56.6 on average).
IMAGE_NONZEROS = 57


def config_of(norm: str):
  """The config of the results' retrieval runs (``data=books``, ``size=cpu``)."""
  from configs.order_embeddings import get_config

  return get_config(f'data=books,norm={norm}')


def vocab_of(config) -> int:
  """Word ids of the model: ``vocab_size`` words plus the reserved ``<pad>, <eos>, <unk>``."""
  from lnorm.lab import text

  return config.vocab_size + len(text.RESERVED)


def synthetic_data(config, vocab: int, seed: int = 0) -> dict:
  """A :func:`experiments.order_embeddings.prepare_data`-like dict of random pairs.

  One epoch of ``batch_size`` images (``float32[batch_size, feature_dim]``, each row
  ``IMAGE_NONZEROS`` positive entries scaled to unit norm, as the books' TF-IDF rows
  are) and their ``captions_per_image`` captions each: random word ids, then ``<eos>``;
  lengths (``<eos>`` included) as in the books training split: ``CUT_FRACTION`` at
  ``max_length``, the others uniform in ``2 .. max_length - 1`` (24.5 ids on average
  against the books' 22.1; the GRU runs over the batch's padded length anyway, which
  is ``max_length`` for nearly every batch of 128 captions in both). The same dict
  serves as the train, dev and test split (only the training stream is used).
  """
  from lnorm.lab import text

  rng = np.random.default_rng(seed)
  n, k, length = config.batch_size, config.captions_per_image, config.max_length
  lengths = rng.integers(2, length, n * k)
  lengths = np.where(rng.random(n * k) < CUT_FRACTION, length, lengths)
  captions = []
  for m in lengths:
    ids = rng.integers(len(text.RESERVED), vocab, m).astype(np.int32)
    ids[-1] = text.EOS_ID
    captions.append(ids)
  dim = config.feature_dim
  images = np.zeros((n, dim), np.float32)
  nonzeros = min(IMAGE_NONZEROS, dim)
  for row in images:
    row[rng.choice(dim, nonzeros, replace=False)] = rng.random(nonzeros) + 0.1
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  split = {'captions': captions, 'images': images}
  words = [f'w{i}' for i in range(vocab - len(text.RESERVED))]
  return {'vocab': text.Vocabulary(words), 'train': split, 'dev': split, 'test': split}


def batches_of(experiment, steps: int) -> dict[str, np.ndarray]:
  """The first ``steps`` batches of the experiment's own training stream, stacked.

  ``{'ids': int32[steps, B, T], 'lengths': int32[steps, B], 'images':
  float32[steps, B, feature_dim]}``: exactly the keys, dtypes and shapes
  :func:`experiments.order_embeddings.retrieval_stream` yields (``T`` the longest
  caption of the batch rounded up to a multiple of ``bucket_width``).
  """
  stream = experiment.train.batches(0)
  taken = [next(stream) for _ in range(steps)]
  padded = {b['ids'].shape for b in taken}
  if len(padded) > 1:
    raise ValueError(f'the {steps} batches of one call are padded differently: {padded}.')
  return {key: np.stack([b[key] for b in taken]) for key in taken[0]}


def forward_flops(config, steps: int) -> float:
  """Forward matmul FLOPs of one caption-image pair (2 per multiply-add).

  The caption GRU ``steps * 2 * 3H * (D + H)`` (its four matmuls, ``W_x, W`` on the
  word and ``W_h, U`` on the state, over all ``steps`` padded positions, as both
  implementations run them), the image projection ``2 * feature_dim * H``. The
  pairwise order-violation energies ``sum_k max(0, s_ik - im_jk)^2`` (``B * H`` per
  pair, elementwise, not a matmul), the L2 normalizations, layer norm, the
  embedding lookup and the optimizer count as free.
  """
  d, h = config.embed_dim, config.hidden_dim
  return steps * 2 * 3 * h * (d + h) + 2 * config.feature_dim * h


def build(config) -> Step:
  """Our real chunked training step of ``config`` (any ``data`` but ``sick``).

  The model and the loss are those :func:`experiments.order_embeddings.make_experiment`
  builds (its ``init`` and ``loss``, given :func:`synthetic_data`), the batches the
  first ``steps_per_call`` of its training stream, run by :func:`chunk_runner`.
  """
  from experiments import order_embeddings as oe

  vocab = vocab_of(config)
  with tempfile.TemporaryDirectory() as workdir:  # Only read (no best model yet).
    experiment = oe.make_experiment(config, workdir, None, synthetic_data(config, vocab))
  batches = batches_of(experiment, config.steps_per_call)
  run, num_params = chunk_runner(experiment.init, experiment.loss, config, batches)
  steps = batches['ids'].shape[-1]
  return Step(
    run, config.steps_per_call, config.batch_size, num_params, forward_flops(config, steps),
    config, batches,
    {'vocab': vocab, 'steps': steps, 'init': experiment.init, 'loss': experiment.loss},
  )  # fmt: skip


def ours(norm: str, quick: bool) -> Step:
  """The experiment's real step at the results' size (``data=books``, ``size=cpu``)."""
  del quick  # One size: the step is the measurement.
  return build(config_of(norm))


def order_adam(params, config):
  """The original's Adam variant (``experiments.order_embeddings.scale_by_order_adam``)
  after clipping each gradient tensor to L2 norm ``grad_clip_per_tensor`` (0: off), as a
  small ``torch.optim.Optimizer``: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
  ``p <- p - lr sqrt(1 - (1 - b2)^t) / (1 - (1 - b1)^t) * m / (sqrt(v) + eps)``."""
  import torch

  class OrderAdam(torch.optim.Optimizer):
    def __init__(self, params):
      defaults = dict(
        lr=config.learning_rate, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
        clip=config.grad_clip_per_tensor,
      )  # fmt: skip
      super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
      for group in self.param_groups:
        b1, b2 = group['b1'], group['b2']
        for p in group['params']:
          if p.grad is None:
            continue
          g = p.grad
          if group['clip'] > 0:
            g = g * torch.clamp(group['clip'] / torch.clamp(g.norm(), min=1e-30), max=1.0)
          state = self.state[p]
          if not state:
            state['t'], state['m'], state['v'] = 0, torch.zeros_like(p), torch.zeros_like(p)
          state['t'] += 1
          t, m, v = state['t'], state['m'], state['v']
          m.mul_(b1).add_(g, alpha=1 - b1)
          v.mul_(b2).addcmul_(g, g, value=1 - b2)
          scale = group['lr'] * math.sqrt(1 - (1 - b2) ** t) / (1 - (1 - b1) ** t)
          p.addcdiv_(m, v.sqrt().add_(group['eps']), value=-scale)

  return OrderAdam(params)


def torch_model(norm: str, config, vocab: int):
  """The model in PyTorch: ``forward(batch)`` is the summed contrastive loss of the batch.

  Word embedding ``U[-0.1, 0.1]`` ``[vocab, D]``; the caption encoder ``torch.nn.GRU``
  (``none``; its hidden-side bias ``bias_hh`` is frozen at zero, since ours has no bias
  on ``U h``, so both train ``3H (D + H) + 3H`` GRU parameters) or the paper's LN-GRU of
  :func:`torch_rnn.rnn` (``layer``), its state read at each caption's last id
  (``<eos>``); the image embedding ``torch.nn.Linear(feature_dim, H)`` (Glorot uniform,
  zero bias); both L2-normalized (``F.normalize``) and made non-negative (``abs``) as
  the config asks; the order-violation errors ``e[i, j] = sum_k max(0, s_ik - im_jk)^2``
  ``[B, B]`` (a ``[B, B, H]`` broadcast), and
  ``sum_{i != j} max(0, margin - e_ij + e_jj) + max(0, margin - e_ij + e_ii)``.
  """
  import torch

  d, h = config.embed_dim, config.hidden_dim
  f = torch.nn.functional

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = torch.nn.Embedding(vocab, d)
      torch.nn.init.uniform_(self.embed.weight, -config.init_scale, config.init_scale)
      self.encoder = torch_rnn.rnn('gru', norm, d, h)
      if norm == 'none':
        with torch.no_grad():
          self.encoder.rnn.bias_hh_l0.zero_()
        self.encoder.rnn.bias_hh_l0.requires_grad_(False)
      self.image = torch.nn.Linear(config.feature_dim, h)
      torch.nn.init.xavier_uniform_(self.image.weight)
      torch.nn.init.zeros_(self.image.bias)

    def finish(self, x):
      if config.l2_normalize:
        x = f.normalize(x, dim=-1)
      return x.abs() if config.absolute else x

    def forward(self, b):
      states = self.encoder(self.embed(b['ids']))
      s = self.finish(states[torch.arange(states.shape[0]), b['lengths'] - 1])
      im = self.finish(self.image(b['images']))
      e = torch.clamp(s[:, None] - im[None], min=0).square().sum(-1)
      diag = e.diagonal()
      cost = torch.clamp(config.margin - e + diag[None], min=0)
      cost = cost + torch.clamp(config.margin - e + diag[:, None], min=0)
      return (cost * (1 - torch.eye(e.shape[0]))).sum()

  return Model().train()


def num_trained(model) -> int:
  """The number of trained (``requires_grad``) parameters of a torch model."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_peer(norm: str, step: Step, threads: int):
  """One call = one step of a plain PyTorch loop on the same model, loss and optimizer.

  :func:`torch_model` on ``step.batches``; :func:`order_adam` (lr 1e-3, each gradient
  tensor clipped to norm 2 first) on the trained parameters.
  """
  import torch

  torch.manual_seed(0)
  config = step.config
  model = torch_model(norm, config, step.extra['vocab'])
  opt = order_adam([p for p in model.parameters() if p.requires_grad], config)
  return torch_step_runner(
    model, opt, lambda m, b: m(b), step.batches, threads, clip=config.grad_clip_norm
  )


SPEC = StepBench(
  title='Order embeddings training step',
  unit='pairs',
  norms=('none', 'layer'),
  ours=ours,
  torch=torch_peer,
  description=[
    "Training throughput of order embeddings at the size of the results' retrieval",
    'runs (paper §6.1; `configs/order_embeddings.py:data=books`, `size=cpu`: words 64,',
    'GRU and embedding space 128, 10,003 ids, captions of up to 40 ids, 4096-d "image"',
    "features, batch 128 caption-image pairs, the original's Adam variant after",
    'clipping each gradient tensor at 2). **ours**: the real step (the model and loss',
    '`experiments.order_embeddings.make_experiment` builds, batches from its training',
    'stream) on random captions with lengths as in the books split (padded to 40) and',
    'random sparse unit-norm features. **torch eager**: the same model in PyTorch',
    "(`nn.GRU` with its hidden-side bias frozen at zero for `none`; the paper's LN-GRU",
    "written by hand for `layer`), the state at each caption's `<eos>`, `Linear`",
    'image embedding, `F.normalize` and `abs`, the in-batch contrastive',
    'order-violation loss, and the Adam variant with per-tensor clipping as a small',
    '`torch.optim.Optimizer`. FLOPs: the GRU matmuls over all 40 positions and the',
    '4096 x 128 image projection; the `[B, B, H]` order-violation energies (not a',
    'matmul), the normalizations, the embeddings and the optimizer count as free.',
  ],
)

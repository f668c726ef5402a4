"""Skip-thoughts' training step at ``size=cpu`` (paper §6.3), ours and a PyTorch peer."""

from __future__ import annotations

import numpy as np

from scripts.bench_steps import Step, StepBench, chunk_runner, torch_rnn, torch_step_runner


def config_of(norm: str):
  from configs.skip_thoughts import get_config

  return get_config(f'size=cpu,norm={norm}')


def batches_of(config, vocab: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
  """``steps`` random batches of triples: ids ``int32[steps, batch, T]``, lengths.

  Lengths as in the book corpus (``size=cpu``: 19.3 of 30 ids on average, 31% of the
  sentences cut at 30): 31% at ``T``, the others uniform in 2..T-1 (on average 20.0 of
  30); each sentence ends with ``<eos>``, then padding. The output layer runs on the real
  tokens only (``decoder_token_capacity``), so the step's cost depends on them.
  """
  from lnorm.lab import text

  rng = np.random.default_rng(seed)
  shape, length = (steps, config.batch_size), config.max_length
  out = {}
  for name in ('prev', 'cur', 'next'):
    lengths = rng.integers(2, length, shape)
    lengths = np.where(rng.random(shape) < 0.31, length, lengths).astype(np.int32)
    ids = rng.integers(len(text.RESERVED), vocab, (*shape, length)).astype(np.int32)
    pos = np.arange(length)
    ids[pos >= lengths[..., None]] = text.PAD_ID
    ids[pos == lengths[..., None] - 1] = text.EOS_ID
    out[name], out[f'{name}_len'] = ids, lengths
  return out


def forward_flops(config, vocab: int, real_targets: float) -> float:
  """Forward matmul FLOPs of one triple (2 per multiply-add).

  Encoder GRU ``T * 2 * 3H * (D + H)``; each decoder GRU ``T * 2 * 3H * (D + H + H)``
  with every-step conditioning (its input is ``[y_t; h_i]``; ``D + H`` with
  ``initial_state``): the GRUs run over all ``T`` positions. The output layer
  ``real_targets * 2 * H * V``: it runs on the real target tokens only (both
  neighbours' ``real_targets`` on average).
  """
  d, h, t = config.embed_dim, config.hidden_dim, config.max_length
  dec_in = d + h if config.decoder_conditioning == 'every_step' else d
  enc = t * 2 * 3 * h * (d + h)
  dec = 2 * t * 2 * 3 * h * (dec_in + h)
  out = real_targets * 2 * h * vocab
  return enc + dec + out


def build(config) -> Step:
  """The experiment's real chunked training step at ``config`` (output layer on real tokens)."""
  from experiments import skip_thoughts as st
  from lnorm.lab import models, text

  vocab = config.vocab_size + len(text.RESERVED)
  module = st.make_model(config, vocab)
  model = models.linen(module, st.sample_batch(config.max_length))
  batches = batches_of(config, vocab, config.steps_per_call)
  loss_fn = st.make_loss_fn(module, config.decoder_token_capacity)
  run, num_params = chunk_runner(model.init, loss_fn, config, batches)
  real_targets = float(np.mean(batches['prev_len'] + batches['next_len']))
  return Step(
    run, config.steps_per_call, config.batch_size, num_params,
    forward_flops(config, vocab, real_targets), config, batches,
    {'vocab': vocab, 'real_targets': real_targets},
  )  # fmt: skip


def ours(norm: str, quick: bool) -> Step:
  """:func:`build` at ``size=cpu`` (``quick`` changes nothing: the step is the measurement)."""
  del quick
  return build(config_of(norm))


def torch_peer(norm: str, step: Step, threads: int):
  """One call = one step of a plain PyTorch loop on the same model, loss and optimizer.

  Embedding ``U[-0.1, 0.1]``, encoder and two every-step-conditioned decoders
  (``torch.nn.GRU``, or the hand-written LN-GRU of :func:`torch_rnn.rnn`), the
  sentence vector the encoder's output at each sentence's last word, a full
  softmax output layer on the real target tokens only (both decoders' states
  at them, selected with a boolean mask: eager PyTorch's natural way, and the
  same work as ours), the per-token NLL of both neighbours, Adam (lr 1e-3)
  after clipping the gradient's global norm at 5.
  """
  import torch

  torch.manual_seed(0)
  config, vocab = step.config, step.extra['vocab']
  d, h, t = config.embed_dim, config.hidden_dim, config.max_length
  every_step = config.decoder_conditioning == 'every_step'
  dec_in = d + h if every_step else d

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = torch.nn.Embedding(vocab, d)
      torch.nn.init.uniform_(self.embed.weight, -0.1, 0.1)
      self.encoder = torch_rnn.rnn('gru', norm, d, h)
      self.decoders = torch.nn.ModuleList([torch_rnn.rnn('gru', norm, dec_in, h) for _ in range(2)])
      self.output = torch.nn.Linear(h, vocab)

    def forward(self, b):
      states = self.encoder(self.embed(b['cur']))
      vectors = states[torch.arange(states.shape[0]), b['cur_len'] - 1]
      real_states, real_targets = [], []
      for decoder, which in zip(self.decoders, ('prev', 'next'), strict=True):
        target = b[which]
        y = self.embed(target)
        y = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)
        if every_step:
          y = torch.cat([y, vectors[:, None].expand(-1, t, -1)], -1)
        mask = torch.arange(t)[None] < b[f'{which}_len'][:, None]
        real_states.append(decoder(y)[mask])
        real_targets.append(target[mask])
      logits = self.output(torch.cat(real_states))
      return torch.nn.functional.cross_entropy(logits, torch.cat(real_targets))

  model = Model().train()
  opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-8)
  return torch_step_runner(
    model, opt, lambda m, b: m(b), step.batches, threads, clip=config.grad_clip_norm
  )


SPEC = StepBench(
  title='Skip-thoughts training step',
  unit='triples',
  norms=('none', 'layer'),
  ours=ours,
  torch=torch_peer,
  description=[
    'Training throughput of skip-thoughts at `size=cpu` (paper §6.3;',
    '`configs/skip_thoughts.py:size=cpu`: embeddings 128, GRUs 256, 10,003 ids,',
    'batch 64 triples, sentences of 30 ids, every-step conditioned decoders, Adam',
    'with clipping at 5). **ours**: the real step (`experiments.skip_thoughts.',
    'make_loss_fn`, the output layer on the real target tokens only) on random',
    'triples with sentence lengths as in the book corpus. **torch eager**: the same',
    "model in PyTorch (`nn.GRU` for `none`; the paper's LN-GRU written by hand for",
    '`layer`, its input projections and their layer norms over all steps at once;',
    'the output layer on the real tokens, picked with a boolean mask),',
    "`torch.optim.Adam` after `clip_grad_norm_`. FLOPs: the encoder's and both",
    "decoders' GRU matmuls over all 30 positions and the 10,003-way output layer at",
    'the real target tokens; layer norm, the softmax, the embeddings and Adam count',
    'as free.',
  ],
)

"""The attentive reader's training step at ``size=cpu`` (paper §6.2), ours and a PyTorch peer.

The config is the one behind ``results/attentive_reader.md``
(``configs/attentive_reader.py:data=books,size=cpu,norm=...``): 64-d embeddings and
LSTMs, batch 32, the books cloze stand-in's vocabulary (4,023 ids: 3 reserved, 19
entities, the placeholder, 4,000 words), questions padded to 30 ids, documents bucketed
by 40 tokens up to 160.
"""

from __future__ import annotations

import numpy as np

from scripts.bench_steps import Step, StepBench, chunk_runner, torch_step_runner

#: The books stand-in (``context=top4``) at ``size=cpu``: ``len(data.words)``, its
#: entity count, the padded question length (``max`` over all splits' questions: 30 ids,
#: the builder's ``max_query_tokens``) and the representative document bucket (the
#: training stream's padded lengths are 40/80/120/160 in 4/28/44/32 of the 108 steps
#: of an epoch, mean 118.5; 120 is the most frequent and the nearest to the mean).
CPU_VOCAB, CPU_ENTITIES, CPU_QUERY_LENGTH, CPU_DOC_LENGTH = 4023, 19, 30, 120


def config_of(norm: str):
  from configs.attentive_reader import get_config

  return get_config(f'data=books,size=cpu,norm={norm}')


def batches_of(
  config, vocab: int, entities: int, doc_length: int, query_length: int, steps: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """``steps`` random training batches as the experiment's stream yields them.

  Keys, dtypes and shapes of ``experiments.attentive_reader.make_batch``: ``doc
  int32[steps, batch, doc_length]``, ``query int32[steps, batch, query_length]``,
  ``doc_len``, ``query_len``, ``answer`` (``int32[steps, batch]``), padding id 0. All the
  documents of a batch fall in one length bucket, so their lengths are uniform in
  ``(doc_length - doc_bucket_width, doc_length]`` (the stand-in's 120-bucket: 100.6 of
  120 on average, here 100.5); question lengths uniform in ``3..query_length`` (the
  stand-in: 17.2 of 30 on average, here 16.5). Ids: words uniform, the answer an
  entity put at a random real position of its document, the placeholder at a random
  real position of its question. The step's cost depends on the padded shapes only
  (both LSTMs run over every position).
  """
  from lnorm.lab import text

  rng = np.random.default_rng(seed)
  shape = (steps, config.batch_size)
  first_entity = len(text.RESERVED)
  placeholder, first_word = first_entity + entities, first_entity + entities + 1

  def ids(length, lengths):
    out = rng.integers(first_word, vocab, (*shape, length)).astype(np.int32)
    out[np.arange(length) >= lengths[..., None]] = text.PAD_ID
    return out, rng.integers(0, lengths)  # A real position of each sequence.

  low = max(1, doc_length - config.doc_bucket_width + 1)
  doc_len = rng.integers(low, doc_length + 1, shape).astype(np.int32)
  query_len = rng.integers(min(3, query_length), query_length + 1, shape).astype(np.int32)
  answer = rng.integers(first_entity, placeholder, shape).astype(np.int32)
  doc, at = ids(doc_length, doc_len)
  np.put_along_axis(doc, at[..., None], answer[..., None], -1)
  query, at = ids(query_length, query_len)
  np.put_along_axis(query, at[..., None], np.int32(placeholder), -1)
  return {'doc': doc, 'doc_len': doc_len, 'query': query, 'query_len': query_len, 'answer': answer}


def forward_flops(config, vocab: int, doc_length: int, query_length: int) -> float:
  """Forward matmul FLOPs of one question (2 per multiply-add).

  With ``D`` the embedding, ``H`` the LSTMs' (and the attention's) size, ``T`` the padded
  document, ``Q`` the padded question: the document LSTM ``T * 2 * 4H * (D + H)`` and the
  question LSTM ``Q * 2 * 4H * (D + H)`` (input and recurrent matmuls, over every padded
  position, as both implementations run them); the attention ``T * 2 * H * H`` (``y B``)
  ``+ 2 * H * H`` (``u B``) ``+ T * 2 * H`` (the bilinear dot) ``+ T * 2 * H * H`` (``y W_c``)
  ``+ 2 * H * H`` (``u W_q``) ``+ T * 2 * H`` (``m w``) ``+ T * 2 * H`` (``r = sum alpha y``);
  ``g``: ``3 * 2 * H * H`` (``W_r r``, ``W_u u``, ``W_m ybar``); the output layer
  ``2 * H * V``. The embeddings, the masked mean, the nonlinearities, the softmaxes and
  the normalizations count as free.
  """
  d, h, t, q = config.embed_dim, config.hidden_dim, doc_length, query_length
  lstms = (t + q) * 2 * 4 * h * (d + h)
  attention = 2 * t * 2 * h * h + 2 * 2 * h * h + 3 * t * 2 * h
  return lstms + attention + 3 * 2 * h * h + 2 * h * vocab


def build(config, vocab: int, entities: int, doc_length: int, query_length: int) -> Step:
  """The experiment's real chunked training step at ``config``, on :func:`batches_of`.

  The model and loss as ``make_experiment`` builds them (``make_model`` with the
  question length as the query LSTM's ``T_max``, ``make_loss_fn`` with the entity mask
  of a vocabulary whose ids ``3 .. 3 + entities - 1`` are the entities), through
  :func:`chunk_runner` (``config.steps_per_call`` steps per call).
  """
  from experiments import attentive_reader as ar
  from lnorm.lab import text

  _, model = ar.make_model(config, vocab, query_length)
  is_entity = np.zeros(vocab, bool)
  is_entity[len(text.RESERVED) : len(text.RESERVED) + entities] = True
  loss_fn = ar.make_loss_fn(model, is_entity, config.candidate_softmax)
  batches = batches_of(config, vocab, entities, doc_length, query_length, config.steps_per_call)
  run, num_params = chunk_runner(model.init, loss_fn, config, batches)
  extra = {'vocab': vocab, 'entities': entities, 'doc_length': doc_length,
           'query_length': query_length, 'model': model}  # fmt: skip
  return Step(
    run, config.steps_per_call, config.batch_size, num_params,
    forward_flops(config, vocab, doc_length, query_length), config, batches, extra,
  )  # fmt: skip


def ours(norm: str, quick: bool) -> Step:
  """The real step at ``size=cpu``, documents in the 120-token bucket, questions of 30."""
  del quick  # One size: the step is the measurement.
  return build(config_of(norm), CPU_VOCAB, CPU_ENTITIES, CPU_DOC_LENGTH, CPU_QUERY_LENGTH)


def torch_model(norm: str, step: Step):
  """The attentive reader of ``step.config`` as a PyTorch user would write it (eager).

  Embedding (Glorot-uniform), dropout on the embeddings and on ``g``; two LSTMs with a
  learned ``h_0`` (``c_0 = 0``): ``torch.nn.LSTM`` for ``none`` (its second bias
  ``bias_hh`` frozen at 0, so the trained parameters are ours: one bias per gate), the
  paper's LN-LSTM (eqs. 20-22) or Cooijmans et al.'s BN-LSTM written by hand (gates
  ``[f; i; o; g]`` as ours; the input projections, and for LN their layer norms, over
  all steps at once, then a Python loop over the steps). The BN-LSTM normalizes each
  feature with its step's batch statistics (biased variance) and updates per-step
  running averages (momentum ``bn_momentum``), gains ``bn_gamma``, as ours in training.
  Then the bilinear attention, the mean-document skip, the output layer over the whole
  vocabulary, and the authors' ``-log(p[a] + 1e-8)``.

  ``model(batch) -> mean NLL`` on a :func:`scripts.bench_steps.torch_batches` batch.
  """
  import torch
  from torch import nn

  from experiments import attentive_reader as ar

  torch.manual_seed(0)
  config, vocab = step.config, step.extra['vocab']
  d, h, eps = config.embed_dim, config.hidden_dim, config.norm_epsilon
  f = nn.functional

  def param(*shape, scale=None, value=0.0):
    p = torch.full(shape, value) if scale is None else torch.randn(*shape) * scale
    return nn.Parameter(p)

  class ReaderLSTM(nn.Module):
    """``[B, T, D] -> [B, T, H]`` from the learned ``h0``; ``max_steps``: BN's ``T_max``."""

    def __init__(self, max_steps: int):
      super().__init__()
      self.h0, self.max_steps = param(h), max_steps
      if norm == 'none':
        self.lstm = nn.LSTM(d, h, batch_first=True)
        self.lstm.bias_hh_l0.data.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        return
      self.w_x, self.w_h = param(d, 4 * h, scale=d**-0.5), param(h, 4 * h, scale=h**-0.5)
      self.bias = param(4 * h)
      if norm == 'layer':
        gain = config.ln_gain
        self.g_h, self.g_x = param(4 * h, value=gain), param(4 * h, value=gain)
        self.b_h, self.b_x = param(4 * h), param(4 * h)
        self.g_c, self.b_c = param(h, value=gain), param(h)
      else:
        g = config.bn_gamma
        self.g_h, self.g_x = param(4 * h, value=g), param(4 * h, value=g)
        self.g_c, self.b_c = param(h, value=g), param(h)
        for name, n in (('h', 4 * h), ('x', 4 * h), ('c', h)):
          self.register_buffer(f'mean_{name}', torch.zeros(max_steps, n))
          self.register_buffer(f'var_{name}', torch.ones(max_steps, n))

    def bn(self, v, name, t, gain, bias=None):
      """Per-step batch norm of ``v`` ``[B, F]`` (step ``t``) or ``[B, T, F]`` (all steps)."""
      mean, var = v.mean(0), v.var(0, unbiased=False)
      if self.training:
        with torch.no_grad():
          m = config.bn_momentum
          for stat, new in (('mean', mean), ('var', var)):
            buf = getattr(self, f'{stat}_{name}')
            buf[t] = m * buf[t] + (1 - m) * new
      else:
        mean, var = getattr(self, f'mean_{name}')[t], getattr(self, f'var_{name}')[t]
      y = (v - mean) * torch.rsqrt(var + eps) * gain
      return y if bias is None else y + bias

    def forward(self, x):
      batch, steps, _ = x.shape
      h_t = self.h0.expand(batch, h)
      if norm == 'none':
        return self.lstm(x, (h_t[None].contiguous(), x.new_zeros(1, batch, h)))[0]
      c_t, outs = x.new_zeros(batch, h), []
      if norm == 'layer':
        wx = f.layer_norm(x @ self.w_x, (4 * h,), self.g_x, self.b_x, eps) + self.bias
      else:
        if steps > self.max_steps:
          raise ValueError(f'{steps} steps past the BN-LSTM T_max={self.max_steps}.')
        wx = self.bn(x @ self.w_x, 'x', slice(0, steps), self.g_x) + self.bias
      for t in range(steps):
        wh = h_t @ self.w_h
        if norm == 'layer':
          wh = f.layer_norm(wh, (4 * h,), self.g_h, self.b_h, eps)
        else:
          wh = self.bn(wh, 'h', t, self.g_h)
        fg, ig, og, gg = (wh + wx[:, t]).chunk(4, -1)
        c_t = torch.sigmoid(fg) * c_t + torch.sigmoid(ig) * torch.tanh(gg)
        if norm == 'layer':
          n_c = f.layer_norm(c_t, (h,), self.g_c, self.b_c, eps)
        else:
          n_c = self.bn(c_t, 'c', t, self.g_c, self.b_c)
        h_t = torch.sigmoid(og) * torch.tanh(n_c)
        outs.append(h_t)
      return torch.stack(outs, 1)

  class Reader(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, d)
      nn.init.xavier_uniform_(self.embed.weight)
      self.drop = nn.Dropout(config.dropout_rate)
      self.doc_lstm = ReaderLSTM(config.max_doc_len)
      self.query_lstm = ReaderLSTM(step.extra['query_length'])
      self.w_c, self.b_c = param(h, h, scale=h**-0.5), param(h)
      self.w_q, self.bilinear = param(h, h, scale=h**-0.5), param(h, h, scale=h**-0.5)
      self.w = param(h, scale=h**-0.5)
      self.w_r, self.w_u = nn.Linear(h, h, bias=False), nn.Linear(h, h)
      self.w_m, self.output = nn.Linear(h, h, bias=False), nn.Linear(h, vocab)

    def forward(self, b):
      y = self.doc_lstm(self.drop(self.embed(b['doc'])))  # [B, T, H]
      states = self.query_lstm(self.drop(self.embed(b['query'])))
      u = states[torch.arange(len(states)), (b['query_len'] - 1).clamp(min=0)]  # [B, H]
      mask = torch.arange(y.shape[1])[None] < b['doc_len'][:, None]  # [B, T]
      sims = torch.einsum('bth,bh->bt', y @ self.bilinear, u @ self.bilinear)
      m = torch.tanh(y @ self.w_c + self.b_c + (u @ self.w_q)[:, None] + sims[..., None])
      alpha = torch.softmax((m @ self.w).masked_fill(~mask, -torch.inf), -1)
      r = torch.einsum('bt,bth->bh', alpha, y)
      weights = mask.float()[..., None]
      ybar = (y * weights).sum(1) / weights.sum(1)
      g = torch.tanh(self.w_r(r) + self.w_u(u) + self.w_m(ybar))
      p = torch.softmax(self.output(self.drop(g)), -1)
      pa = p.gather(1, b['answer'][:, None])[:, 0]
      return -torch.log(pa + ar.PROB_EPS).mean()

  if config.candidate_softmax:
    raise NotImplementedError('the PyTorch peer has no candidate-restricted softmax.')
  return Reader().train()


def torch_peer(norm: str, step: Step, threads: int):
  """One call = one step of a plain PyTorch loop: :func:`torch_model`, Adam (the config's
  learning rate, betas (0.9, 0.999), eps 1e-8) after clipping the gradient's global norm
  at ``grad_clip_norm`` (10)."""
  import torch

  config = step.config
  model = torch_model(norm, step)
  opt = torch.optim.Adam(
    [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
    betas=(config.adam_b1, config.adam_b2), eps=config.adam_eps,
  )  # fmt: skip
  return torch_step_runner(
    model, opt, lambda m, b: m(b), step.batches, threads, clip=config.grad_clip_norm
  )


SPEC = StepBench(
  title='Attentive reader training step',
  unit='questions',
  norms=('none', 'batch', 'layer'),
  ours=ours,
  torch=torch_peer,
  description=[
    'Training throughput of the attentive reader at `size=cpu` (paper §6.2;',
    '`configs/attentive_reader.py:data=books,size=cpu`, the config of',
    '`results/attentive_reader.md`: embeddings and LSTMs 64, 4,023 ids, batch 32',
    'questions, dropout 0.5, Adam 3e-3 with clipping at 10), on random batches shaped',
    "like the books stand-in's: documents in the 120-token bucket (the most frequent;",
    'the mean padded length is 118.5), questions padded to 30. **ours**: the real step',
    '(`experiments.attentive_reader.make_model` / `make_loss_fn`, 4 steps per jitted',
    'call). **torch eager**: the same model in PyTorch (`nn.LSTM` with a learned `h0`',
    "for `none`; the paper's LN-LSTM and the BN-LSTM (per-step batch statistics and",
    'running averages) written by hand, input projections over all steps at once),',
    "`torch.optim.Adam` after `clip_grad_norm_`. FLOPs: both LSTMs' input and",
    'recurrent matmuls over every padded position, the bilinear attention, `g` and',
    'the 4,023-way output layer; the normalizations, softmaxes, embeddings and Adam',
    'count as free.',
  ],
)

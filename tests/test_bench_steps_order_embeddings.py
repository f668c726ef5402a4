"""The order-embeddings training-step benchmark (``scripts/bench_steps/order_embeddings.py``).

At the ``smoke`` size with 32-d "image" features: our real step runs one call on
batches shaped as the training stream's; the PyTorch peer runs one step, trains as
many parameters as ours, and, given our initial parameters, computes the same loss.
No ../shared data: the captions and features are synthetic.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from configs.order_embeddings import get_config
from scripts.bench_steps import order_embeddings as ob

NORMS = ('none', 'layer')


def tiny_config(norm: str):
  """``data=books`` at the ``smoke`` size (8-d words, 16-d GRU, 303 ids, 16 ids a caption,
  batch 8), with 32-d features instead of 4096-d."""
  config = get_config(f'data=books,norm={norm},smoke=True')
  config.feature_dim = 32
  return config


@functools.cache
def tiny_step(norm: str):
  return ob.build(tiny_config(norm))


@pytest.mark.parametrize('norm', NORMS)
def test_ours_runs_one_call_on_stream_shaped_batches(norm):
  step = tiny_step(norm)
  config = step.config
  b, k = config.batch_size, config.steps_per_call
  assert {key: (v.dtype, v.shape[:2]) for key, v in step.batches.items()} == {
    'ids': (np.int32, (k, b)),
    'lengths': (np.int32, (k, b)),
    'images': (np.float32, (k, b)),
  }
  assert step.batches['ids'].shape[-1] == config.max_length  # The longest caption, padded.
  assert step.batches['images'].shape[-1] == config.feature_dim
  assert step.batches['lengths'].min() >= 2
  assert step.batches['lengths'].max() <= config.max_length
  from lnorm.lab import text

  ids, lengths = step.batches['ids'], step.batches['lengths']
  last = np.take_along_axis(ids, lengths[..., None] - 1, axis=-1)[..., 0]
  assert (last == text.EOS_ID).all()  # Each caption ends with <eos>, then padding.
  assert (ids[np.arange(ids.shape[-1]) >= lengths[..., None]] == text.PAD_ID).all()
  step.run()
  d, h, t = config.embed_dim, config.hidden_dim, config.max_length
  assert step.forward_flops == t * 6 * h * (d + h) + 2 * config.feature_dim * h


def copy_into_torch(model, params, norm: str) -> None:
  """Our initial parameters into :func:`ob.torch_model` (the plain GRU's gates reordered
  to PyTorch's ``[r, z, n]``, with ``z`` negated: PyTorch's ``z`` weighs the old state)."""
  import torch

  p = jax.tree.map(lambda x: torch.from_numpy(np.array(x)), params)
  cell = p['encoder']['cell']
  h = cell['candidate_recurrent_kernel'].shape[0]
  with torch.no_grad():
    model.embed.weight.copy_(p['embed']['embedding'])
    model.image.weight.copy_(p['image_projection']['kernel'].T)
    model.image.bias.copy_(p['image_projection']['bias'])
    enc = model.encoder
    if norm == 'layer':
      enc.w_x.copy_(torch.cat([cell['input_kernel'], cell['candidate_input_kernel']], 1))
      enc.w_h.copy_(torch.cat([cell['recurrent_kernel'], cell['candidate_recurrent_kernel']], 1))
      for i, name in enumerate(('ln_h', 'ln_x', 'ln_cx', 'ln_ch')):
        enc.g[i].copy_(cell[name]['scale'])
        enc.b[i].copy_(cell[name]['bias'])
    else:
      gru = enc.rnn

      def rzn(zr, candidate):
        return torch.cat([zr[..., h:], -zr[..., :h], candidate], -1)

      gru.weight_ih_l0.copy_(rzn(cell['input_kernel'], cell['candidate_input_kernel']).T)
      gru.weight_hh_l0.copy_(rzn(cell['recurrent_kernel'], cell['candidate_recurrent_kernel']).T)
      gru.bias_ih_l0.copy_(rzn(cell['bias'], cell['candidate_bias']))


@pytest.mark.parametrize('norm', NORMS)
def test_torch_peer_steps_with_our_parameter_count_and_loss(norm):
  torch = pytest.importorskip('torch')
  from scripts.bench_steps import torch_batches

  step = tiny_step(norm)
  model = ob.torch_model(norm, step.config, step.extra['vocab'])
  assert ob.num_trained(model) == step.num_params

  params, model_state = step.extra['init'](jax.random.key(0))
  copy_into_torch(model, params, norm)
  batch = jax.tree.map(lambda x: x[0], step.batches)
  ours, _ = jax.jit(step.extra['loss'])(params, model_state, batch, jax.random.key(0))
  with torch.no_grad():
    theirs = model(torch_batches(step.batches, 0))
  assert float(ours) > 0
  np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-4)

  run = ob.torch_peer(norm, step, threads=1)
  run()

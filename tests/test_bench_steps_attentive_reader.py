"""The attentive reader's training-step benchmark: ours runs, the PyTorch peer is the same model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs.attentive_reader import get_config
from experiments import attentive_reader as ar
from lnorm.lab.data import cnn_qa
from scripts.bench_steps import attentive_reader as bench
from scripts.bench_steps import torch_batches

VOCAB, ENTITIES, DOC, QUERY = 40, 5, 12, 6


def tiny_config(norm: str, dropout: float = 0.5):
  """The experiment's smoke size (8-d, batch 4, 2 steps per call)."""
  config = get_config(f'smoke=True,norm={norm}')
  config.dropout_rate = dropout
  return config


def tiny_step(norm: str, dropout: float = 0.5):
  return bench.build(tiny_config(norm, dropout), VOCAB, ENTITIES, DOC, QUERY)


def test_batches_are_the_streams():
  config = tiny_config('layer')
  batches = bench.batches_of(config, VOCAB, ENTITIES, DOC, QUERY, steps=3)
  split = cnn_qa.QASplit(
    [np.arange(3, 10, dtype=np.int32)], [np.arange(3, 7, dtype=np.int32)], np.int32([3])
  )
  real = ar.make_batch(split, np.array([0]), DOC, QUERY)
  assert set(batches) == set(real)
  for k, v in batches.items():
    assert v.dtype == real[k].dtype and v.shape == (3, config.batch_size, *real[k].shape[1:]), k
  low = DOC - config.doc_bucket_width + 1
  assert np.all((batches['doc_len'] >= max(low, 1)) & (batches['doc_len'] <= DOC))
  assert np.all((batches['query_len'] >= 3) & (batches['query_len'] <= QUERY))
  pos = np.arange(DOC)
  assert np.all(batches['doc'][pos >= batches['doc_len'][..., None]] == 0)
  assert np.all(np.any(batches['doc'] == batches['answer'][..., None], -1))
  assert np.all((batches['answer'] >= 3) & (batches['answer'] < 3 + ENTITIES))


def test_cpu_flops_by_hand():
  config = bench.config_of('none')
  f = bench.forward_flops(config, 4023, 120, 30)
  lstms = 150 * 2 * 256 * 128
  attention = 120 * 2 * 64 * 64 * 2 + 4 * 64 * 64 + 3 * 120 * 2 * 64
  assert f == lstms + attention + 6 * 64 * 64 + 2 * 64 * 4023


@pytest.mark.parametrize('norm', ['none', 'batch', 'layer'])
def test_ours_runs(norm):
  step = tiny_step(norm)
  step.run()
  assert step.steps_per_call == 2 and step.batch_size == 4
  assert step.batches['doc'].shape == (2, 4, DOC)
  assert step.forward_flops > 0 and step.num_params > 0


def copy_into(model, params, norm):
  """Ours' parameters (``params``, a Flax tree) into the PyTorch ``model``."""
  import torch

  def t(x):
    return torch.from_numpy(np.array(x, np.float32))

  def gates(k):  # [in, 4H] in [f; i; o; g] -> torch.nn.LSTM's [4H, in] in [i; f; g; o].
    k = np.asarray(k)
    h = k.shape[-1] // 4
    return t(np.concatenate([k[..., j * h : (j + 1) * h] for j in (1, 0, 3, 2)], -1).T)

  with torch.no_grad():
    model.embed.weight.copy_(t(params['embed']['embedding']))
    for name in ('doc_lstm', 'query_lstm'):
      ours, theirs = params[name], getattr(model, name)
      cell = ours['cell']
      theirs.h0.copy_(t(ours['h0']))
      if norm == 'none':
        theirs.lstm.weight_ih_l0.copy_(gates(cell['input_kernel']))
        theirs.lstm.weight_hh_l0.copy_(gates(cell['recurrent_kernel']))
        theirs.lstm.bias_ih_l0.copy_(gates(cell['bias'][None])[:, 0])
        continue
      theirs.w_x.copy_(t(cell['input_kernel']))
      theirs.w_h.copy_(t(cell['recurrent_kernel']))
      theirs.bias.copy_(t(cell['bias']))
      prefix = 'ln' if norm == 'layer' else 'bn'
      theirs.g_h.copy_(t(cell[f'{prefix}_h']['scale']))
      theirs.g_x.copy_(t(cell[f'{prefix}_x']['scale']))
      theirs.g_c.copy_(t(cell[f'{prefix}_c']['scale']))
      theirs.b_c.copy_(t(cell[f'{prefix}_c']['bias']))
      if norm == 'layer':
        theirs.b_h.copy_(t(cell['ln_h']['bias']))
        theirs.b_x.copy_(t(cell['ln_x']['bias']))
    att = params['attention']
    for name in ('w_c', 'b_c', 'w_q', 'bilinear', 'w'):
      getattr(model, name).copy_(t(att[name]))
    for name in ('w_r', 'w_u', 'w_m', 'output'):
      layer = getattr(model, name)
      layer.weight.copy_(t(params[name]['kernel']).T)
      if layer.bias is not None:
        layer.bias.copy_(t(params[name]['bias']))


@pytest.mark.parametrize('norm', ['none', 'batch', 'layer'])
def test_torch_peer_is_the_same_model(norm):
  torch = pytest.importorskip('torch')
  step = tiny_step(norm, dropout=0.0)
  model = bench.torch_model(norm, step)
  assert sum(p.numel() for p in model.parameters() if p.requires_grad) == step.num_params
  params, model_state = step.extra['model'].init(jax.random.key(0))
  params = jax.tree.map(lambda x: 3 * x, params)  # Larger logits: a sharper check.
  copy_into(model, params, norm)
  is_entity = np.zeros(VOCAB, bool)
  is_entity[3 : 3 + ENTITIES] = True
  loss_fn = ar.make_loss_fn(step.extra['model'], is_entity, False)
  batch = {k: v[0] for k, v in step.batches.items()}
  ours, _ = loss_fn(params, model_state, batch, jax.random.key(1))
  with torch.no_grad():
    theirs = model(torch_batches(step.batches, 0))
  np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-5)


def test_torch_peer_runs():
  torch = pytest.importorskip('torch')
  step = tiny_step('layer')
  threads = torch.get_num_threads()
  try:
    run = bench.torch_peer('layer', step, threads=1)
    run()
    run()
    assert torch.get_num_threads() == 1
  finally:
    torch.set_num_threads(threads)

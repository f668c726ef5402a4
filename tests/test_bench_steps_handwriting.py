"""The handwriting training-step benchmark: ours runs, the PyTorch peer runs, both agree.

At a tiny config (``smoke``, lines of 12 offsets): the batches are shaped as the
experiment's training stream, our real chunked step runs, and the PyTorch peer has ours'
parameter count, runs a step and, with ours' initial parameters copied in, gives ours'
loss at init and ours' gradients, with derivative-clipping bounds tight enough to bite.
"""

import pathlib
import sys

import jax
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import handwriting as hw_config  # noqa: E402
from scripts.bench_steps import handwriting as bench  # noqa: E402
from scripts.bench_steps import torch_batches  # noqa: E402

ALPHABET, CHARS = 7, 5


def _config(norm):
  config = hw_config.get_config(f'data=hershey,smoke,norm={norm}')
  config.max_points = 12
  return config


def _step(norm):
  return bench.build(_config(norm), ALPHABET, CHARS)


@pytest.fixture(scope='module', params=['none', 'layer'])
def step(request):
  return request.param, _step(request.param)


def test_batches_are_shaped_as_the_training_stream():
  config = _config('layer')
  b = bench.batches_of(config, ALPHABET, CHARS, 3)
  k, n, t = 3, config.batch_size, config.max_points
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
    'strokes': ((k, n, t, 3), np.float32),
    'mask': ((k, n, t), np.float32),
    'text': ((k, n, CHARS), np.int32),
    'text_mask': ((k, n, CHARS), np.float32),
  }
  assert np.all(b['strokes'][b['mask'] == 0] == 0)
  assert np.all((b['text'] > 0) == (b['text_mask'] > 0))
  assert b['text'].max() < ALPHABET and b['mask'].sum(-1).min() >= 1


def test_forward_flops_counts_the_matmuls():
  config = _config('none')  # (16, 16) LSTMs, K = 2, M = 3.
  c, t = ALPHABET, config.max_points
  lstm = 2 * 4 * 16 * (3 + c + 16) + 2 * 4 * 16 * (3 + 16 + c + 16)
  per_step = lstm + 2 * 16 * 6 + 2 * CHARS * c + 2 * 32 * 19
  assert bench.forward_flops(config, c, CHARS) == t * per_step


def test_ours_runs_one_call(step):
  _, s = step
  s.run()
  assert s.steps_per_call == 2 and s.batch_size == 4
  assert s.num_params == sum(x.size for x in jax.tree.leaves(s.extra['init'](jax.random.key(0))[0]))


def test_torch_peer_has_ours_parameters_runs_and_agrees_at_init(step):
  torch = pytest.importorskip('torch')
  norm, s = step
  model = bench.torch_model(s.config, ALPHABET, s.extra['kappa_bias'])
  assert sum(p.numel() for p in model.parameters()) == s.num_params
  params, _ = s.extra['init'](jax.random.key(0))
  bench.load_ours(model, params)
  batch = {k: v[0] for k, v in s.batches.items()}
  ours = float(s.extra['loss_fn'](params, {}, batch, None)[0])
  with torch.no_grad():
    theirs = float(model(torch_batches(s.batches, 0)))
  np.testing.assert_allclose(theirs, ours, rtol=1e-4)
  run = bench.torch_peer(norm, s, 1)
  run()


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_torch_gradients_match_ours_with_tight_derivative_clipping(norm):
  """Both clip the same derivatives: with bounds that bite, the gradients still agree."""
  torch = pytest.importorskip('torch')
  from experiments import handwriting as hw

  config = _config(norm)
  config.output_clip, config.lstm_clip = 0.05, 0.002
  batches = bench.batches_of(config, ALPHABET, CHARS, 1)
  batch = {k: v[0] for k, v in batches.items()}
  module = hw.make_model(config, ALPHABET, -1.0)
  params = module.init(
    jax.random.key(0), hw.shifted_inputs(batch['strokes']), batch['text'], batch['text_mask']
  )['params']
  loss_fn = hw.make_loss_fn(module)
  grads = jax.grad(lambda p: loss_fn(p, {}, batch, None)[0])(params)

  def torch_w_x_grad(config):
    model = bench.torch_model(config, ALPHABET, -1.0)
    bench.load_ours(model, params)
    model(torch_batches(batches, 0)).backward()
    w_x = model.cells[0].weight_ih.grad.T if norm == 'none' else model.cells[0].w_x.grad
    if norm == 'none':  # Back to ours' gate order [f; i; o; g] from [i; f; g; o].
      w_x = torch.cat([w_x.chunk(4, -1)[j] for j in (1, 0, 3, 2)], -1)
    return model, w_x.numpy()

  model, w_x = torch_w_x_grad(config)
  ours_w_x = np.asarray(grads['core']['lstm_0']['input_kernel'])
  np.testing.assert_allclose(w_x, ours_w_x, rtol=2e-3, atol=1e-7)
  config.derivative_clipping = False
  assert not np.allclose(torch_w_x_grad(config)[1], ours_w_x, rtol=0.1)  # The bounds bite.
  np.testing.assert_allclose(
    model.mdn.weight.grad.T.numpy(), grads['mdn']['kernel'], rtol=2e-3, atol=1e-6
  )

"""DRAW's training-step benchmark: ours runs the experiment's real step on batches shaped
like its training stream, and the PyTorch peer is the same model (as many parameters, the
same bound at the same weights and noise)."""

import jax
import numpy as np
import pytest

from configs.draw import get_config
from experiments import draw
from scripts.bench_steps import draw as draw_bench

#: Ours' gate order ``[f; i; o; g]`` -> PyTorch's ``[i; f; g; o]``.
TORCH_GATES = (1, 0, 3, 2)


def _tiny(norm):
  """The smoke scale (4 glimpses, 16-unit LSTMs, z of 4, write 3x3), batch 8, 2 steps a call."""
  config = get_config(f'norm={norm},smoke=True,batch_size=8')
  assert config.steps_per_call == 2
  return config


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_step_runs_on_batches_like_the_stream(norm):
  config = _tiny(norm)
  step = draw_bench.build(config)
  step.run()
  assert step.steps_per_call == 2 and step.batch_size == 8
  assert set(step.batches) == {'image'}
  image = step.batches['image']
  assert image.shape == (2, 8, 784) and image.dtype == np.uint8
  assert set(np.unique(image)) == {0, 1}
  assert step.forward_flops == draw.matmul_flops_per_image(config)['forward']
  params, _ = draw.wrap_model(config).init(jax.random.key(0))
  assert step.num_params == sum(x.size for x in jax.tree.leaves(params))


def test_paper_forward_flops():
  """The runs' config: 124 MFLOP per image forward (``results/draw.md``)."""
  assert draw_bench.forward_flops(draw_bench.config_of('layer')) == pytest.approx(124e6, rel=0.01)


def _gates(a):
  """``[..., 4H]`` in ours' gate order -> PyTorch's (numpy)."""
  chunks = np.split(np.asarray(a), 4, axis=-1)
  return np.concatenate([chunks[i] for i in TORCH_GATES], axis=-1)


def _load(model, params, norm):
  """Copies ours' ``params`` into :func:`draw_bench.torch_model`'s ``model``."""
  import torch

  p = params['glimpses']
  values = {}
  for name in ('read_attention', 'z_mean', 'z_log_sigma', 'write_attention', 'write_patch'):
    values[f'{name}.weight'] = np.asarray(p[name]['kernel']).T
    values[f'{name}.bias'] = np.asarray(p[name]['bias'])
  for name in ('encoder', 'decoder'):
    cell = p[name]
    w_x, w_h, b = (_gates(cell[k]) for k in ('input_kernel', 'recurrent_kernel', 'bias'))
    if norm == 'none':
      values.update({f'{name}.weight_ih': w_x.T, f'{name}.weight_hh': w_h.T})
      values[f'{name}.bias_ih'] = b
    else:
      values.update({f'{name}.input.weight': w_x.T, f'{name}.recurrent.weight': w_h.T})
      values[f'{name}.input.bias'] = b
      values[f'{name}.ln.weight'] = np.asarray(cell['ln_c']['scale'])
      values[f'{name}.ln.bias'] = np.asarray(cell['ln_c']['bias'])
  state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in values.items()}
  assert set(state) == set(model.state_dict())
  model.load_state_dict(state)


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_torch_peer_is_the_same_model(norm):
  torch = pytest.importorskip('torch')
  config = _tiny(norm)
  step = draw_bench.build(config)
  run = draw_bench.torch_peer(norm, step, threads=1)
  assert sum(p.numel() for p in run.model.parameters()) == step.num_params
  before = [p.detach().clone() for p in run.model.parameters()]
  run()
  changed = [
    not torch.equal(a, p.detach()) for a, p in zip(before, run.model.parameters(), strict=True)
  ]
  assert any(changed)  # One optimizer step ran.

  # Ours' initial weights in the peer, the same noise: the same bound.
  model = draw.wrap_model(config)
  params, model_state = model.init(jax.random.key(0))
  batch = {'image': step.batches['image'][0]}
  rng = jax.random.key(3)
  loss, _ = draw.make_loss_fn(model, config)(params, model_state, batch, rng)
  # make_loss_fn's noise, drawn as it draws it.
  eps = jax.random.normal(rng, (config.glimpses, config.batch_size, config.z_size))
  peer = draw_bench.torch_model(config, norm)
  _load(peer, params, norm)
  with torch.no_grad():
    theirs = peer(torch.from_numpy(batch['image']), torch.from_numpy(np.array(eps)))
  assert float(theirs) == pytest.approx(float(loss), rel=1e-5)

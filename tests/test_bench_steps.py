"""The benchmark's training-step specs: ours runs the experiment's real step, the PyTorch
peer is the same model (as many parameters), and the section builder reports both."""

import numpy as np
import pytest

from configs.skip_thoughts import get_config as skip_thoughts_config
from scripts.bench_steps import peer_param_count, skip_thoughts


def _smoke_skip_thoughts(norm):
  config = skip_thoughts_config(f'size=smoke,norm={norm}')
  config.decoder_token_capacity = 1.0  # Random lengths can fill a smoke batch.
  return config


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_skip_thoughts_step_runs_and_counts(norm):
  config = _smoke_skip_thoughts(norm)
  step = skip_thoughts.build(config)
  step.run()
  step.run()
  assert step.steps_per_call == config.steps_per_call and step.batch_size == config.batch_size
  lengths = step.batches['cur_len']
  assert lengths.shape == (config.steps_per_call, config.batch_size)
  assert lengths.min() >= 2 and lengths.max() <= config.max_length
  # Every sentence ends with <eos> at its length, then padding.
  from lnorm.lab import text

  ids = step.batches['cur']
  last = np.take_along_axis(ids, lengths[..., None] - 1, axis=-1)[..., 0]
  assert (last == text.EOS_ID).all()
  d, h, t, v = config.embed_dim, config.hidden_dim, config.max_length, step.extra['vocab']
  by_hand = (
    t * 6 * h * (d + h) + 2 * t * 6 * h * (d + 2 * h) + step.extra['real_targets'] * 2 * h * v
  )
  assert step.forward_flops == pytest.approx(by_hand)


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_skip_thoughts_torch_peer_is_the_same_size(norm):
  torch = pytest.importorskip('torch')
  step = skip_thoughts.build(_smoke_skip_thoughts(norm))
  run = skip_thoughts.torch_peer(norm, step, threads=1)
  before = [p.detach().clone() for p in run.model.parameters()]
  run()
  assert peer_param_count(run.model) == step.num_params
  changed = [
    not torch.equal(a, p.detach()) for a, p in zip(before, run.model.parameters(), strict=True)
  ]
  assert any(changed)  # One optimizer step ran.

r"""§6.7's explanation, measured: how the statistics of border and centre units differ.

The paper explains why layer norm suits convolutions less than fully connected layers:
units whose receptive fields lie near the image border are rarely turned on and have
very different statistics from the rest of the layer, yet layer norm gives them all one
mean and variance (per example). For each trained run given, this reads its last
checkpoint, runs the first ``--num_images`` test images through the network and, for the
pre-activation of each convolution (before its normalization), reports:

* the mean over channels of each position's standard deviation over the images, averaged
  over the border ring (positions within ``--ring`` of an edge; default a seventh of the
  map's height, MNIST's 4-pixel blank margin at 28x28) and over the rest (the centre),
  and their ratio;
* the share of the layer's units (position, channel) that are near-constant (standard
  deviation over the images below 5% of the median unit's): units that carry almost no
  signal, but count in a layer norm's mean and variance.

Usage, from the repository root::

  python scripts/convnet_border_stats.py runs/convnet/norm-{layer,batch,none}_seed-0
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import convnet  # noqa: E402
from lnorm.lab import checkpoints, optimizers  # noqa: E402
from lnorm.lab.contract import TrainState  # noqa: E402
from lnorm.lab.workdir import CHECKPOINT_DIR, CONFIG_FILE, read_json  # noqa: E402

NEAR_CONSTANT = 0.05


def restore(workdir: pathlib.Path) -> tuple[ml_collections.ConfigDict, TrainState]:
  """The config and the last checkpointed train state of a convnet run."""
  config = ml_collections.ConfigDict(read_json(workdir / CONFIG_FILE))
  config.features = tuple(config.features)
  model = convnet.make_model(config)
  params, model_state = model.init(jax.random.key(0))
  tx, _ = optimizers.make_optimizer(config, config.num_steps or 1)
  like = TrainState(jax.numpy.zeros((), jax.numpy.int32), params, model_state, tx.init(params))
  ckpt = checkpoints.Checkpointer(workdir / CHECKPOINT_DIR)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f'{workdir}: no checkpoint.')
  state, _ = ckpt.restore(step, like)
  ckpt.close()
  return config, state


def conv_preactivations(config, state, images: np.ndarray) -> list[np.ndarray]:
  """The output of each :class:`experiments.convnet.Conv` (before its norm): ``[N, H, W, C]``."""
  model = convnet.make_model(config)
  variables = {'params': state.params, **state.model_state}
  _, captured = model.module.apply(
    variables,
    images,
    train=False,
    capture_intermediates=lambda mdl, _: isinstance(mdl, convnet.Conv),
  )
  inter = captured['intermediates']
  names = sorted(k for k in inter if k.startswith('conv_'))
  return [np.asarray(inter[k]['__call__'][0], np.float64) for k in names]


def border_stats(a: np.ndarray, ring: int) -> dict[str, float]:
  """Border-ring vs centre spread of the units of ``a`` ``[N, H, W, C]`` (see the docstring)."""
  unit_std = a.std(axis=0)  # [H, W, C]: each unit's spread over the images.
  h, w = unit_std.shape[:2]
  rows, cols = np.indices((h, w))
  border = (rows < ring) | (cols < ring) | (rows >= h - ring) | (cols >= w - ring)
  per_position = unit_std.mean(-1)
  median = np.median(unit_std)
  return {
    'border_std': float(per_position[border].mean()),
    'centre_std': float(per_position[~border].mean()),
    'border_share': float(border.mean()),
    'near_constant': float((unit_std < NEAR_CONSTANT * median).mean()),
    'near_constant_border': float((unit_std[border] < NEAR_CONSTANT * median).mean()),
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', help='convnet runs (their last checkpoint).')
  parser.add_argument('--num_images', type=int, default=2000)
  parser.add_argument('--ring', type=int, default=0, help='border width (0: a seventh of H).')
  args = parser.parse_args(argv)
  print('| run | layer | map | border ring | border units | std border / centre | '
        'near-constant units (all / border) |')  # fmt: skip
  print('|---|---|---|---|---|---|---|')
  data = None
  for workdir in map(pathlib.Path, args.workdirs):
    config, state = restore(workdir)
    if data is None:
      data = convnet.load_data(config)['test']['image'][: args.num_images]
    for i, a in enumerate(conv_preactivations(config, state, data)):
      ring = args.ring or a.shape[1] // 7
      s = border_stats(a, ring)
      shape = 'x'.join(str(d) for d in a.shape[1:])
      cells = [
        f'{workdir.name} (step {int(state.step)})',
        f'conv_{i}',
        shape,
        str(ring),
        f'{s["border_share"]:.0%}',
        f'{s["border_std"] / s["centre_std"]:.2f}',
        f'{s["near_constant"]:.0%} / {s["near_constant_border"]:.0%}',
      ]
      print('| ' + ' | '.join(cells) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())

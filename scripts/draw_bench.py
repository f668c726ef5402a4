r"""DRAW training throughput and FLOPs per image, with the machine's matmul rate, in one process.

For each scale (``configs/draw.py``: ``paper``, ``cpu``) and norm (``none``, ``layer``) it
compiles the runner's own multi-step training call (:func:`lnorm.lab.runner.make_train_chunk`
over :func:`lnorm.lab.runner.make_train_step`, Adam, the config's batch and steps per call)
and times it interleaved with the other settings (:mod:`lnorm.lab.benchmarking`), then
reports images/s, the matrix-product FLOPs per training image
(:func:`experiments.draw.matmul_flops_per_image`), XLA's own FLOP count of one training
step (its cost analysis, which also counts element-wise work), and the achieved FLOP/s as
a fraction of an f32 2048^3 matmul measured in the same process::

  python scripts/draw_bench.py --out runs/draw/bench.json            # about 3 minutes here
  python scripts/draw_bench.py --scales cpu --reps 3 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import draw as draw_config  # noqa: E402
from experiments import draw  # noqa: E402
from lnorm.lab import benchmarking as B  # noqa: E402
from lnorm.lab import optimizers, runner, sharding  # noqa: E402
from lnorm.lab.contract import TrainState  # noqa: E402


def train_call(config, mesh):
  """``(run, images per call, xla flops per step)``: ``run()`` does one jitted multi-step call."""
  model = draw.wrap_model(config)
  tx, schedule = optimizers.make_optimizer(config, 10**6)
  step = runner.make_train_step(draw.make_loss_fn(model, config), tx, schedule)
  params, model_state = model.init(jax.random.key(0))
  state = sharding.replicate(
    TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params)), mesh
  )
  k, b = config.steps_per_call, config.batch_size
  images = (np.random.default_rng(0).uniform(size=(k, b, 784)) < 0.13).astype(np.uint8)
  batches = sharding.shard_batch({'image': images}, mesh, batch_axis=1)
  rng = jax.random.key(0)
  one = {'image': jnp.asarray(images[0])}
  cost = jax.jit(step).lower(state, one, rng).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  xla_flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  chunk = runner.make_train_chunk(step, mesh)
  holder = {'state': state}

  def run():
    s, metrics, _ = chunk(holder['state'], batches, rng)
    jax.block_until_ready(metrics)
    holder['state'] = s

  return run, k * b, xla_flops


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--scales', default='paper,cpu', help='comma-separated: paper, cpu')
  parser.add_argument('--norms', default='none,layer')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--steps_per_call', type=int, default=2, help='steps per timed call')
  parser.add_argument('--out', default=None, help='JSON file for the results')
  args = parser.parse_args(argv)
  info = B.machine_info()
  mesh = sharding.make_mesh()

  a = jax.random.normal(jax.random.key(0), (2048, 2048))
  probe = B.compile_fn('matmul 2048^3', lambda a, b: a @ b, a, a)
  matmul_rate = 2 * 2048**3 / B.time_interleaved([probe], reps=5)[probe.name].median

  runners, meta = {}, {}
  for scale in args.scales.split(','):
    for norm in args.norms.split(','):
      config = draw_config.get_config(f'norm={norm},scale={scale}')
      config.steps_per_call = args.steps_per_call
      name = f'{scale}/{norm}'
      run, images, xla_flops = train_call(config, mesh)
      runners[name] = run
      meta[name] = dict(
        scale=scale,
        norm=norm,
        images_per_call=images,
        matmul_flops_per_image=draw.matmul_flops_per_image(config)['train'],
        xla_flops_per_image=xla_flops / config.batch_size,
        architecture={k: config[k] for k in draw_config.PAPER_SCALE},
        batch_size=config.batch_size,
      )
      print(f'compiled {name}', flush=True)
  timings = B.time_stateful(runners, reps=args.reps, warmup=1, target_s=1.0)
  rows = []
  for name, t in timings.items():
    m = meta[name]
    per_s = m['images_per_call'] / t.median
    m.update(
      images_per_s=per_s,
      seconds_per_call=t.median,
      matmul_fraction=per_s * m['matmul_flops_per_image'] / matmul_rate,
    )
    rows.append(m)
  result = {
    'machine': info,
    'matmul_flops_per_s': matmul_rate,
    'rows': rows,
    'load': B.load_note(info),
  }
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())

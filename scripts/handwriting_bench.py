"""Training throughput of the handwriting synthesis network, LSTM vs LN-LSTM, in points/s.

  python scripts/handwriting_bench.py --scales cpu,paper --repeats 5

One jitted Adam step (forward, backward through the scan, update; the state donated, as
the runner does) on random data of the config's shapes (batch, ``max_points`` offsets, a
text of 40 characters over an alphabet of 80), for ``norm`` none and layer, measured in one
process with the two norms alternating, ``repeats`` times each after a warm-up call; the
table gives the median step time and padded points per second (batch x max_points / time)
as markdown.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

SCALE_ARGS = {'cpu': 'data=hershey', 'paper': 'data=iam'}
CHARS, ALPHABET = 40, 80


def make_step(config, norm: str):
  import jax
  import optax

  from experiments import handwriting as hw

  config = config.copy_and_resolve_references()
  config.norm = norm
  model = hw.make_model(config, ALPHABET, kappa_bias=-3.0)
  rng = np.random.default_rng(0)
  b, t = config.batch_size, config.max_points
  batch = {
    'strokes': np.concatenate(
      [rng.normal(size=(b, t, 2)), rng.uniform(size=(b, t, 1)) < 0.05], -1
    ).astype(np.float32),
    'mask': np.ones((b, t), np.float32),
    'text': rng.integers(1, ALPHABET, (b, CHARS)).astype(np.int32),
    'text_mask': np.ones((b, CHARS), np.float32),
  }
  params = model.init(
    jax.random.key(0), hw.shifted_inputs(batch['strokes']), batch['text'], batch['text_mask']
  )['params']
  loss = hw.make_loss_fn(model)
  tx = optax.adam(config.learning_rate)

  def step(state, batch):
    params, opt = state
    grads = jax.grad(lambda p: loss(p, {}, batch, None)[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  return jax.jit(step, donate_argnums=(0,)), (params, tx.init(params)), batch


def main(argv=None) -> int:
  import jax

  from configs import handwriting as hw_config

  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--scales', default='cpu,paper')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  print('| scale | model | batch x points | norm | step (ms, median) | points/s |')
  print('|---|---|---|---|---:|---:|')
  for scale in args.scales.split(','):
    config = hw_config.get_config(f'{SCALE_ARGS[scale]},scale={scale}')
    steps, states, times = {}, {}, {}
    for norm in ('none', 'layer'):
      steps[norm], states[norm], batch = make_step(config, norm)
      states[norm] = steps[norm](states[norm], batch)  # Compile and warm up.
      jax.block_until_ready(states[norm])
      times[norm] = []
    for _ in range(args.repeats):
      for norm in ('none', 'layer'):
        tic = time.perf_counter()
        states[norm] = steps[norm](states[norm], batch)
        jax.block_until_ready(states[norm])
        times[norm].append(time.perf_counter() - tic)
    sizes = 'x'.join(str(h) for h in config.hidden_sizes)
    for norm in ('none', 'layer'):
      median = float(np.median(times[norm]))
      points = config.batch_size * config.max_points
      print(
        f'| {scale} | LSTM {sizes} | {config.batch_size} x {config.max_points} | {norm} '
        f'| {1000 * median:.0f} | {points / median:.0f} |',
        flush=True,
      )
  return 0


if __name__ == '__main__':
  sys.exit(main())

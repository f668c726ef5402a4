r"""The cost of one training step of the convnet per norm, measured side by side in one process.

Wall-time curves of runs made one after another on a shared machine mix the
norms' costs with the other jobs' load. This times the runner's own kind of
call (``steps_per_call`` Adam steps in one jitted ``lax.scan``, batch 128, the
config's model) for every norm, in interleaved rounds, and reports the median
time per step and its ratio to no normalization: the honest "per update" price
to read beside the curves against updates.

Usage, from the repository root (``--md`` also puts the table between the
markers ``<!-- convnet-bench:begin -->`` and ``<!-- convnet-bench:end -->`` of that file)::

  python scripts/convnet_bench.py --rounds 7 --md results/convnet.md
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import convnet as convnet_config  # noqa: E402
from experiments import convnet  # noqa: E402
from lnorm.lab import optimizers  # noqa: E402


def make_chunk(arg: str):
  """``(jitted K-step call, its initial carry, K stacked batches)`` for config ``arg``."""
  config = convnet_config.get_config(arg)
  model = convnet.make_model(config)
  params, state = model.init(jax.random.key(0))
  tx, _ = optimizers.make_optimizer(config, 1000)
  loss_fn = convnet.make_loss_fn(model)

  def step(carry, batch):
    params, state, opt = carry
    (loss, (_, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, state, batch, None
    )
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), state, opt), loss

  k, b = config.steps_per_call, config.batch_size
  rng = np.random.default_rng(0)
  batches = {
    'image': rng.uniform(size=(k, b, *convnet.IMAGE_SHAPE)).astype(np.float32),
    'label': rng.integers(0, 10, (k, b)).astype(np.int32),
  }
  chunk = jax.jit(lambda carry, xs: jax.lax.scan(step, carry, xs))
  return chunk, (params, state, tx.init(params)), jax.device_put(batches), k


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--norms', default='none,batch,layer,rms,group')
  parser.add_argument('--rounds', type=int, default=7, help='interleaved timing rounds.')
  parser.add_argument('--calls', type=int, default=3, help='calls per norm and round.')
  parser.add_argument('--md', default=None, help='a markdown file to put the table into.')
  args = parser.parse_args(argv)
  norms = [n for n in args.norms.split(',') if n]
  setups = {n: make_chunk(f'norm={n}') for n in norms}
  for chunk, carry, batches, _ in setups.values():  # Compile and warm up.
    jax.block_until_ready(chunk(carry, batches))
  times: dict[str, list[float]] = {n: [] for n in norms}
  for _ in range(args.rounds):
    for n, (chunk, carry, batches, k) in setups.items():
      start = time.perf_counter()
      for _ in range(args.calls):
        out = chunk(carry, batches)
      jax.block_until_ready(out)
      times[n].append((time.perf_counter() - start) / (args.calls * k))
  base = float(np.median(times[norms[0]]))
  lines = [
    f'| norm | ms per step (median of {args.rounds}) | relative to {norms[0]} |',
    '|---|---|---|',
  ]
  for n in norms:
    med = float(np.median(times[n]))
    lines.append(f'| {n} | {med * 1e3:.2f} | {med / base:.2f} |')
  text = '\n'.join(lines)
  print(text)
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}, batch 128', file=sys.stderr)
  if args.md:
    path = pathlib.Path(args.md)
    begin, end = '<!-- convnet-bench:begin -->', '<!-- convnet-bench:end -->'
    doc = path.read_text()
    pattern = re.compile(re.escape(begin) + '.*?' + re.escape(end), re.S)
    if not pattern.search(doc):
      print(f'{path} has no {begin} ... {end} markers; table not written.', file=sys.stderr)
      return 1
    path.write_text(pattern.sub(lambda _: f'{begin}\n{text}\n{end}', doc))
  return 0


if __name__ == '__main__':
  jnp.zeros(())  # Initialize the backend before timing anything.
  sys.exit(main())

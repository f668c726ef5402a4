"""The library imports only JAX and Flax: nothing of the experiment runner's dependencies.

Each library module is imported in a fresh interpreter *after* ``jax``,
``flax.linen`` and ``flax.nnx``, so what Flax brings in itself (measured with
flax 0.12.8: optax, absl, etils, msgpack, rich, treescope, yaml, ...) is
already loaded and not charged to lnorm; every module that the import adds
must then be one of lnorm's library modules.
"""

import json
import os
import subprocess
import sys

import pytest

#: The library: what a Flax user imports (DESIGN.md: "imports only JAX and Flax").
LIBRARY = (
  'lnorm',
  'lnorm.functional',
  'lnorm._ffi',  # builds and loads the C++ CPU kernel (stdlib and jax only)
  'lnorm.cells',
  'lnorm.fused_cells',  # the LN cells' fused CPU kernels (through lnorm._ffi)
  'lnorm.layers',
  'lnorm.recurrent',
  'lnorm.nnx',
)

#: Dependencies of the runner and the experiments, which the library must never pull in.
HEAVY = (
  'orbax',
  'tensorflow',
  'tensorflow_datasets',
  'ml_collections',
  'matplotlib',
  'tensorboardX',
  'tensorboard',
  'sklearn',
  'scipy',
  'pandas',
  'PIL',
  'grain',
  'array_record',
  'optax',
)

SCRIPT = """
import json, sys
import jax, flax.linen, flax.nnx
before = set(sys.modules)
import {module}
print(json.dumps({{'before': sorted(before), 'new': sorted(set(sys.modules) - before)}}))
"""


def _import_in_fresh_interpreter(module: str) -> tuple[set[str], set[str]]:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', SCRIPT.format(module=module)],
    check=True,
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
  ).stdout
  result = json.loads(out.strip().splitlines()[-1])
  return set(result['before']), set(result['new'])


@pytest.mark.parametrize('module', LIBRARY)
def test_library_module_imports_nothing_beyond_jax_and_flax(module):
  before, new = _import_in_fresh_interpreter(module)
  assert 'flax.nnx' in before and 'jax' in before
  foreign = sorted(m for m in new if m != 'lnorm' and not m.startswith('lnorm.'))
  assert not foreign, f'importing {module} after jax and flax also imported: {foreign}'
  assert new <= set(LIBRARY), f'{module} imported non-library lnorm modules: {new - set(LIBRARY)}'
  heavy = sorted(m for m in new if m.split('.')[0] in HEAVY)
  assert not heavy, heavy


def test_flax_alone_does_not_load_the_runner_dependencies():
  # What the test above takes as given: Flax itself loads none of these except (today) optax,
  # so a library import that pulled them in would show up in `new`.
  before, _ = _import_in_fresh_interpreter('lnorm')
  loaded_by_flax = sorted({m.split('.')[0] for m in before} & set(HEAVY))
  assert set(loaded_by_flax) <= {'optax'}, loaded_by_flax


@pytest.mark.parametrize('module', ['lnorm.functional', 'lnorm.cells'])
def test_the_pure_functions_need_no_flax(module):
  """The math (README: "the functions need no Flax") imports JAX only."""
  code = f'import sys, {module}; bad = [m for m in sys.modules if m.split(".")[0] == "flax"]; '
  code += 'assert not bad, bad'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-1000:]

"""The package's top-level names: all resolve, and importing lnorm alone stays cheap."""

import subprocess
import sys

import lnorm


def test_every_exported_name_resolves():
  for name in lnorm.__all__:
    assert getattr(lnorm, name) is not None, name
  assert lnorm.LayerNorm is lnorm.layers.LayerNorm
  assert lnorm.layer_norm is lnorm.functional.layer_norm


def test_importing_lnorm_does_not_import_jax():
  # `python -m lnorm.main` imports the package, then re-executes itself: JAX must load only once.
  code = 'import sys, lnorm; assert "jax" not in sys.modules, "jax imported"'
  subprocess.run([sys.executable, '-c', code], check=True, timeout=60)

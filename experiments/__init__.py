"""The paper's experiments, each a module with ``train_and_evaluate(config, workdir)``.

A config names its experiment in ``config.experiment``; :func:`get_experiment`
imports the module of that name from :data:`EXPERIMENTS` (lazily, so that
listing them imports nothing heavy). To add one, write
``experiments/<name>.py`` and ``configs/<name>.py`` and add the name here.

``experiments`` (like ``configs``) lives at the repository root, next to the
``lnorm`` package, and is not installed: it is importable when the repository
root is on ``sys.path``. ``python -m lnorm.main`` run from the root puts it
there; ``lnorm.main`` also adds the root of the checkout it belongs to.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: Experiment name -> module (relative to this package).
EXPERIMENTS: dict[str, str] = {
  'pmnist': '.pmnist',
  'skip_thoughts': '.skip_thoughts',
}


def get_experiment(name: str) -> ModuleType:
  """The module of experiment ``name``; a ValueError lists the known names if there is none."""
  if name not in EXPERIMENTS:
    known = ', '.join(sorted(EXPERIMENTS))
    raise ValueError(f'unknown experiment {name!r}; known experiments are: {known}.')
  return importlib.import_module(EXPERIMENTS[name], __name__)


def get_train_fn(name: str) -> Callable[[Any, str], Any]:
  """``train_and_evaluate(config, workdir)`` of experiment ``name``."""
  return get_experiment(name).train_and_evaluate

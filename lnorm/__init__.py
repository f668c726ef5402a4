"""lnorm: exact, fast layer normalization and normalized recurrent cells for JAX/Flax.

A reproduction of "Layer Normalization" (Ba, Kiros & Hinton 2016,
arXiv:1607.06450). The pure math lives in :mod:`lnorm.functional` (the
normalizations) and :mod:`lnorm.cells` (the recurrent cells' equations), the Flax
linen modules in :mod:`lnorm.layers` and :mod:`lnorm.recurrent`, and their
NNX counterparts in :mod:`lnorm.nnx`.

The names below are imported on first use (PEP 562), so that ``import
lnorm.<submodule>`` (e.g. ``python -m lnorm.main``, which re-executes itself
once before its real work) does not pay for importing JAX and Flax twice.
"""

import importlib

__version__ = '0.1.0'

_SUBMODULES = ('cells', 'functional', 'layers', 'nnx', 'recurrent')
_EXPORTS = {
  'cells': ('block_orthogonal', 'forget_bias_init', 'gru_step', 'lstm_step', 'step_batch_norm'),
  'functional': (
    'batch_norm_eval',
    'batch_norm_train',
    'group_count',
    'group_norm',
    'layer_norm',
    'layer_norm_fusion',
    'layer_norm_reference',
    'rms_norm',
    'weight_norm',
  ),
  'layers': (
    'NORM_NAMES',
    'BatchNorm',
    'GroupNorm',
    'Identity',
    'LayerNorm',
    'NormalizedDense',
    'RMSNorm',
    'WeightNormDense',
    'check_norm_name',
    'make_dense',
    'make_norm',
  ),
  'recurrent': ('BNLSTMCell', 'GRUCell', 'LSTMCell', 'batch_stats_scan_kwargs'),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_SUBMODULES, *_WHERE])


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f'lnorm.{name}')
  if name in _WHERE:
    value = getattr(importlib.import_module(f'lnorm.{_WHERE[name]}'), name)
    globals()[name] = value  # Later lookups skip this function.
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return __all__

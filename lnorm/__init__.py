"""lnorm: exact, fast layer normalization and normalized recurrent cells for JAX/Flax.

A reproduction of "Layer Normalization" (Ba, Kiros & Hinton 2016,
arXiv:1607.06450). The pure math lives in :mod:`lnorm.functional`, the Flax
linen modules in :mod:`lnorm.layers` and :mod:`lnorm.recurrent`, and their
NNX counterparts in :mod:`lnorm.nnx`.
"""

from lnorm import functional, nnx, recurrent
from lnorm.functional import (
  batch_norm_eval,
  batch_norm_train,
  layer_norm,
  layer_norm_reference,
  rms_norm,
  weight_norm,
)
from lnorm.layers import (
  NORM_NAMES,
  BatchNorm,
  Identity,
  LayerNorm,
  NormalizedDense,
  RMSNorm,
  WeightNormDense,
  check_norm_name,
  make_dense,
  make_norm,
)
from lnorm.recurrent import BNLSTMCell, GRUCell, LSTMCell, batch_stats_scan_kwargs

__version__ = '0.1.0'

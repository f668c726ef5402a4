"""The paper's Table 1: invariance of batch, weight and layer normalization.

A layer computes ``h = norm(a)`` with summed inputs ``a_n = W^T x_n`` (Flax
kernel ``W`` of shape ``(inputs, units)``, unit ``i``'s weight vector
``w_i = W[:, i]``). For each normalization and each of the six
transformations of the table, the outputs of the layer must be unchanged
where the table says "invariant" and must change where it says "no".
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnorm import functional as F

N, D, H = 8, 5, 6  # cases, inputs, units
DELTA = 3.7  # a re-scaling factor

TABLE_1 = {
  #                    W rescale  W recenter  w_i rescale  X rescale  X recenter  x_n rescale
  'batch': dict(zip(range(6), (True, False, True, True, True, False), strict=True)),
  'weight': dict(zip(range(6), (True, False, True, False, False, False), strict=True)),
  'layer': dict(zip(range(6), (True, True, False, True, False, True), strict=True)),
}
TRANSFORMS = [
  'weight_matrix_rescaling',
  'weight_matrix_recentering',
  'weight_vector_rescaling',
  'dataset_rescaling',
  'dataset_recentering',
  'single_case_rescaling',
]


def _layer(norm, x, kernel, gain, bias):
  """The normalized layer's output for every case, float64, eps 0 so invariances are exact."""
  if norm == 'weight':
    return x @ F.weight_norm(kernel, gain) + bias
  a = x @ kernel
  if norm == 'layer':
    return F.layer_norm(a, gain, bias, eps=0.0)
  return F.batch_norm_train(a, gain, bias, eps=0.0)[0]


def _transform(name, x, kernel, rng):
  if name == 'weight_matrix_rescaling':
    return x, DELTA * kernel
  if name == 'weight_matrix_recentering':  # W' = W + 1 gamma^T: one vector added to every w_i
    return x, kernel + rng.standard_normal((D, 1))
  if name == 'weight_vector_rescaling':  # one unit's weight vector scaled
    return x, kernel.at[:, 2].multiply(DELTA)
  if name == 'dataset_rescaling':
    return DELTA * x, kernel
  if name == 'dataset_recentering':  # x'_n = x_n + gamma for every case
    return x + rng.standard_normal((1, D)), kernel
  if name == 'single_case_rescaling':
    return x.at[3].multiply(DELTA), kernel
  raise AssertionError(name)


@pytest.mark.parametrize('norm', sorted(TABLE_1))
@pytest.mark.parametrize('transform', range(6), ids=TRANSFORMS)
def test_table_1(norm, transform):
  rng = np.random.default_rng(transform)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((N, D)))
    kernel = jnp.asarray(rng.standard_normal((D, H)))
    gain = jnp.asarray(rng.uniform(0.5, 2.0, H))
    bias = jnp.asarray(rng.standard_normal(H))
    x2, kernel2 = _transform(TRANSFORMS[transform], x, kernel, rng)
    before = np.asarray(_layer(norm, x, kernel, gain, bias))
    after = np.asarray(_layer(norm, x2, kernel2, gain, bias))
  change = np.max(np.abs(after - before))
  if TABLE_1[norm][transform]:
    assert change < 1e-9, f'{norm} should be invariant to {TRANSFORMS[transform]}'
  else:
    assert change > 1e-3, f'{norm} should not be invariant to {TRANSFORMS[transform]}'

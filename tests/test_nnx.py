"""NNX modules equal their linen twins on the same (perturbed) parameters, and run in nnx.RNN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm import layers
from lnorm import nnx as lnnx
from lnorm import recurrent as R

B, T, D, H = 3, 4, 5, 4


def perturb(tree, seed, scale=0.3):
  rng = np.random.default_rng(seed)

  def fill(path, a):
    if path[-1].key == 'var':
      return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)
    return jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape), a.dtype)

  return jax.tree_util.tree_map_with_path(fill, tree)


def data(seed, shape=(B, T, D)):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def close(a, b, tol=1e-5):
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


# ---------------------------------------------------------------- layers


LAYERS = {
  'layer': (lambda: layers.LayerNorm(), lambda r: lnnx.LayerNorm(D, rngs=r)),
  'rms': (
    lambda: layers.RMSNorm(use_bias=True),
    lambda r: lnnx.RMSNorm(D, use_bias=True, rngs=r),
  ),
  'batch-train': (
    lambda: layers.BatchNorm(use_running_average=False, unbiased_variance=True),
    lambda r: lnnx.BatchNorm(D, unbiased_variance=True, rngs=r),
  ),
  'batch-eval': (
    lambda: layers.BatchNorm(use_running_average=True),
    lambda r: lnnx.BatchNorm(D, use_running_average=True, rngs=r),
  ),
  'weight': (lambda: layers.WeightNormDense(3), lambda r: lnnx.WeightNormDense(D, 3, rngs=r)),
  'layer-feature-axes': (
    lambda: layers.LayerNorm(axis=(0, 1), feature_axes=1),
    lambda r: lnnx.LayerNorm(D, axis=(0, 1), feature_axes=1, rngs=r),
  ),
}


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_layer_equals_linen(name):
  make_linen, make_nnx = LAYERS[name]
  x = data(0, (6, D)) * 3.0 + 1.0
  lin = make_linen()
  variables = perturb(lin.init(jax.random.key(0), x), 1)
  y_lin, updates = lin.apply(variables, x, mutable=['batch_stats'])
  module = lnnx.from_linen_params(make_nnx(nnx.Rngs(0)), variables)
  close(module(x), y_lin)
  if 'batch_stats' in updates:  # the running averages move the same way
    close({'mean': module.mean[...], 'var': module.var[...]}, updates['batch_stats'])


def test_make_norm_registry():
  rngs = nnx.Rngs(0)
  assert isinstance(lnnx.make_norm('none', D, rngs=rngs), lnnx.Identity)
  assert isinstance(lnnx.make_norm('weight', D, rngs=rngs), lnnx.Identity)
  assert isinstance(lnnx.make_norm('layer', D, rngs=rngs), lnnx.LayerNorm)
  assert isinstance(lnnx.make_norm('rms', D, rngs=rngs), lnnx.RMSNorm)
  bn = lnnx.make_norm('batch', D, train=True, rngs=rngs)
  assert isinstance(bn, lnnx.BatchNorm) and not bn.use_running_average
  assert isinstance(lnnx.make_dense('weight', D, 3, rngs=rngs), lnnx.WeightNormDense)
  assert isinstance(lnnx.make_dense('layer', D, 3, rngs=rngs), nnx.Linear)
  gn = lnnx.make_norm('group', 6, num_groups=3, rngs=rngs)
  assert isinstance(gn, lnnx.GroupNorm) and gn.num_groups == 3
  with pytest.raises(ValueError, match='valid names are: none, layer, batch, weight, rms, group'):
    lnnx.make_norm('instance', D, rngs=rngs)


def test_layer_errors():
  ln = lnnx.LayerNorm(D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'LayerNorm was built for \(5,\) features'):
    ln(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match='WeightNormDense was built for inputs with 5 features'):
    lnnx.WeightNormDense(D, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match='has shape'):
    lnnx.from_linen_params(ln, {'params': {'scale': jnp.ones(4), 'bias': jnp.ones(4)}})
  with pytest.raises(ValueError, match='linen variables have no bias'):
    lnnx.from_linen_params(ln, {'params': {'scale': jnp.ones(D)}})
  with pytest.raises(ValueError, match='no place in the NNX module: extra'):
    lnnx.from_linen_params(
      ln, {'params': {'scale': jnp.ones(D), 'bias': jnp.ones(D), 'extra': jnp.ones(1)}}
    )


# ---------------------------------------------------------------- cells


CELLS = {
  'lstm-none': (
    lambda: R.LSTMCell(H, norm='none'),
    lambda r: lnnx.LSTMCell(D, H, norm='none', rngs=r),
  ),
  'lstm-layer': (
    lambda: R.LSTMCell(H, norm='layer', forget_bias=1.0),
    lambda r: lnnx.LSTMCell(D, H, norm='layer', forget_bias=1.0, rngs=r),
  ),
  'lstm-draw': (
    lambda: R.LSTMCell(H, norm='draw'),
    lambda r: lnnx.LSTMCell(D, H, norm='draw', rngs=r),
  ),
  'gru-none': (
    lambda: R.GRUCell(H, norm='none'),
    lambda r: lnnx.GRUCell(D, H, norm='none', rngs=r),
  ),
  'gru-layer': (lambda: R.GRUCell(H), lambda r: lnnx.GRUCell(D, H, rngs=r)),
}


@pytest.mark.parametrize('name', sorted(CELLS))
def test_cell_in_rnn_equals_linen(name):
  """nnx.RNN over the NNX cell == nn.RNN over the linen cell, also with seq_lengths."""
  make_linen, make_nnx = CELLS[name]
  x = data(2)
  lengths = jnp.array([4, 1, 3])
  rnn = nn.RNN(make_linen(), return_carry=True)
  variables = perturb(rnn.init(jax.random.key(0), x), 3)
  carry_lin, y_lin = jax.jit(rnn.apply)(variables, x, seq_lengths=lengths)
  nrnn = lnnx.from_linen_params(nnx.RNN(make_nnx(nnx.Rngs(0)), return_carry=True), variables)
  carry_nnx, y_nnx = nnx.jit(lambda m, x, s: m(x, seq_lengths=s))(nrnn, x, lengths)
  close(y_nnx, y_lin)
  close(carry_nnx, carry_lin)


@pytest.mark.parametrize('name', sorted(CELLS) + ['bnlstm-train', 'bnlstm-eval'])
def test_one_step_is_bitwise_equal_to_linen(name):
  """Both APIs run the same equations (lnorm.cells): one eager step gives identical bits."""
  if name.startswith('bnlstm'):
    train = name.endswith('train')
    make_linen = lambda: R.BNLSTMCell(H, use_running_average=not train, max_steps=3)  # noqa: E731
    make_nnx = lambda r: lnnx.BNLSTMCell(D, H, max_steps=3, use_running_average=not train, rngs=r)  # noqa: E731
  else:
    make_linen, make_nnx = CELLS[name]
  x = data(11, (B, D))
  cell = make_linen()
  carry = jax.tree.map(
    lambda a: a + 0.5 if a.dtype == jnp.float32 else a + 1,
    cell.initialize_carry(jax.random.key(0), x.shape),
  )
  variables = perturb(cell.init(jax.random.key(1), carry, x), 12)
  want, _ = cell.apply(variables, carry, x, mutable=['batch_stats'])
  got = lnnx.from_linen_params(make_nnx(nnx.Rngs(0)), variables)(carry, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_nnx_rnn_equals_python_loop_and_init_matches_linen_layout():
  cell = lnnx.LSTMCell(D, H, rngs=nnx.Rngs(0))
  x = data(4)
  carry, y_rnn = nnx.RNN(cell, return_carry=True)(x)
  state = cell.initialize_carry(x[:, 0].shape)
  ys = []
  for t in range(T):
    state, y = cell(state, x[:, t])
    ys.append(y)
  close(y_rnn, jnp.stack(ys, 1))
  close(carry, state)
  lin = R.LSTMCell(H).init(jax.random.key(0), state, x[:, 0])
  lin_shapes = jax.tree_util.tree_map(jnp.shape, lin['params'])
  nnx_shapes = jax.tree_util.tree_map(jnp.shape, nnx.to_pure_dict(nnx.state(cell, nnx.Param)))
  assert lin_shapes == nnx_shapes


def test_bidirectional():
  fwd = nnx.RNN(lnnx.LSTMCell(D, H, rngs=nnx.Rngs(0)))
  bwd = nnx.RNN(lnnx.GRUCell(D, H, rngs=nnx.Rngs(1)))
  y = nnx.Bidirectional(fwd, bwd)(data(5), seq_lengths=jnp.array([4, 2, 3]))
  assert y.shape == (B, T, 2 * H)
  assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize('train', [True, False])
def test_bnlstm_equals_linen(train):
  """Outputs and the updated per-step statistics (max_steps=2 < T) match linen's."""

  class LinenModel(nn.Module):
    train: bool

    @nn.compact
    def __call__(self, x):
      cell = R.BNLSTMCell(H, use_running_average=not self.train, max_steps=2, name='cell')
      kwargs = R.batch_stats_scan_kwargs(self.train and not self.is_initializing())
      return nn.RNN(cell, return_carry=True, name='rnn', **kwargs)(x)

  class NNXModel(nnx.Module):
    def __init__(self, rngs):
      self.cell = lnnx.BNLSTMCell(D, H, max_steps=2, rngs=rngs)
      self.rnn = nnx.RNN(self.cell, return_carry=True)

    def __call__(self, x):
      return self.rnn(x)

  x = data(6)
  model = LinenModel(train)
  variables = perturb(model.init(jax.random.key(0), x), 7)
  y_lin, updates = model.apply(variables, x, mutable=['batch_stats'])
  nmodel = NNXModel(nnx.Rngs(0))
  lnnx.from_linen_params(nmodel.cell, {k: v['cell'] for k, v in variables.items()})
  if train:
    nmodel.train()
  else:
    nmodel.eval()
  assert nmodel.cell.bn_h.use_running_average == (not train)
  y_nnx = nnx.jit(lambda m, x: m(x))(nmodel, x)
  close(y_nnx, y_lin)
  stats = nnx.to_pure_dict(nnx.state(nmodel.cell, nnx.BatchStat))
  expected = updates['batch_stats']['cell'] if train else variables['batch_stats']['cell']
  close(stats, expected)


@pytest.mark.parametrize(
  'make, name',
  [
    (lambda: lnnx.LSTMCell(8, H, rngs=nnx.Rngs(0)), 'LSTMCell'),
    (lambda: lnnx.GRUCell(8, H, rngs=nnx.Rngs(0)), 'GRUCell'),
    (lambda: lnnx.BNLSTMCell(8, H, rngs=nnx.Rngs(0)), 'BNLSTMCell'),
  ],
)
def test_wrong_input_feature_size(make, name):
  cell = make()
  carry = cell.initialize_carry((2, 8))
  with pytest.raises(ValueError, match=f'{name} was built for inputs with 8 features but got 5'):
    cell(carry, jnp.ones((2, 5)))


def test_unknown_cell_norm():
  with pytest.raises(ValueError, match="unknown norm 'rms'; valid names are: none, layer, draw"):
    lnnx.LSTMCell(D, H, norm='rms', rngs=nnx.Rngs(0))


def test_bfloat16_in_bfloat16_out():
  cell = lnnx.LSTMCell(D, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  carry, y = nnx.RNN(cell, return_carry=True)(data(8).astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16 and carry[0].dtype == jnp.bfloat16
  ln = lnnx.LayerNorm(D, rngs=nnx.Rngs(0))
  assert ln(data(9, (2, D)).astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_every_parameter_gets_a_gradient():
  model = nnx.RNN(lnnx.GRUCell(D, H, rngs=nnx.Rngs(0)))
  x = data(10)
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
    assert float(jnp.abs(g).max()) > 0, path


@pytest.mark.parametrize('norm', layers.NORM_NAMES)
def test_normalized_dense_equals_linen_from_the_same_parameters(norm):
  x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
  for train in (True, False):
    linen = layers.NormalizedDense(8, norm=norm, train=train, unbiased_variance=True)
    variables = linen.init(jax.random.key(0), x)
    twin = lnnx.NormalizedDense(
      5, 8, norm=norm, unbiased_variance=True, use_running_average=not train, rngs=nnx.Rngs(1)
    )
    twin = lnnx.from_linen_params(twin, variables)
    if train and norm == 'batch':
      want, updates = linen.apply(variables, x, mutable=['batch_stats'])
      got = twin(x)
      np.testing.assert_allclose(twin.norm.mean[...], updates['batch_stats']['norm']['mean'],
                                 rtol=1e-6)  # fmt: skip
    else:
      want, got = linen.apply(variables, x), twin(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f'{norm} train={train}')

"""Tests of the linen recurrent cells against hand-written float64 numpy references.

The references below are the paper's equations written out directly (eqs.
17-22 for the LSTM, 23-28 for the GRU, Cooijmans et al. 2016 for BN-LSTM),
evaluated on random inputs and on random, perturbed parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lnorm import recurrent as R

EPS = 1e-5
B, T, D, H = 3, 4, 5, 4  # batch, time, input features, hidden features


# ---------------------------------------------------------------- references


def sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def np_ln(a, p):
  """Eqs. (3)-(4) over the last axis, float64, biased variance, eps inside the root."""
  mu = a.mean(-1, keepdims=True)
  sigma = np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + EPS)
  return p['scale'] * (a - mu) / sigma + p['bias']


def np_lstm_step(p, norm, c, h, x):
  """Eqs. (17)-(19) ('none'), (20)-(22) ('layer'), (29)-(31) ('draw')."""
  wh, wx = h @ p['recurrent_kernel'], x @ p['input_kernel']
  if norm == 'layer':
    wh, wx = np_ln(wh, p['ln_h']), np_ln(wx, p['ln_x'])
  a = wh + wx + p['bias']
  n = c.shape[-1]
  f, i, o, g = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
  c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  c_out = np_ln(c_new, p['ln_c']) if norm in ('layer', 'draw') else c_new
  return c_new, sigmoid(o) * np.tanh(c_out)


def np_gru_step(p, norm, h, x):
  """Eqs. (23)-(25) ('none', with biases) and (26)-(28) ('layer')."""
  wh, wx = h @ p['recurrent_kernel'], x @ p['input_kernel']
  cx, ch = x @ p['candidate_input_kernel'], h @ p['candidate_recurrent_kernel']
  if norm == 'layer':
    gates = np_ln(wh, p['ln_h']) + np_ln(wx, p['ln_x'])
    cx, ch = np_ln(cx, p['ln_cx']), np_ln(ch, p['ln_ch'])
  else:
    gates = wh + wx + p['bias']
    cx = cx + p['candidate_bias']
  n = h.shape[-1]
  z, r = gates[:, :n], gates[:, n:]
  h_tilde = np.tanh(cx + sigmoid(r) * ch)
  return (1.0 - sigmoid(z)) * h + sigmoid(z) * h_tilde


def np_bn(a, p, stats, t, train, momentum):
  """Per-step batch norm: returns the output and the new (mean, var) tables."""
  slot = min(t, stats['mean'].shape[0] - 1)
  mean, var = stats['mean'].copy(), stats['var'].copy()
  if train:
    mu = a.mean(0)
    v = ((a - mu) ** 2).mean(0)
    mean[slot] = momentum * mean[slot] + (1 - momentum) * mu
    var[slot] = momentum * var[slot] + (1 - momentum) * v
  else:
    mu, v = stats['mean'][slot], stats['var'][slot]
  y = p['scale'] * (a - mu) / np.sqrt(v + EPS) + p.get('bias', 0.0)
  return y, {'mean': mean, 'var': var}


def np_bnlstm_step(p, s, c, h, x, t, train, momentum):
  s = dict(s)
  bh, s['bn_h'] = np_bn(h @ p['recurrent_kernel'], p['bn_h'], s['bn_h'], t, train, momentum)
  bx, s['bn_x'] = np_bn(x @ p['input_kernel'], p['bn_x'], s['bn_x'], t, train, momentum)
  a = bh + bx + p['bias']
  n = c.shape[-1]
  f, i, o, g = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
  c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  bc, s['bn_c'] = np_bn(c_new, p['bn_c'], s['bn_c'], t, train, momentum)
  return c_new, sigmoid(o) * np.tanh(bc), s


# ---------------------------------------------------------------- helpers


def to_np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def perturb(tree, seed, scale=0.5):
  """Adds noise to every leaf: the tests do not run at the initialization only."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda a: jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape), a.dtype), tree
  )


def random_stats(tree, seed):
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = path[-1].key
    if name == 'var':
      return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)
    return jnp.asarray(rng.standard_normal(a.shape), a.dtype)

  return jax.tree_util.tree_map_with_path(fill, tree)


def data(seed, dtype=np.float64, shape=(B, T, D)):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def init(module, *args):
  """``module.init`` under jit: one compile instead of one per eager op."""
  return jax.jit(module.init)(*args)


def apply(module, variables, *args, mutable=False, **kwargs):
  """``module.apply`` under jit."""
  return jax.jit(lambda v, *a, **k: module.apply(v, *a, mutable=mutable, **k))(
    variables, *args, **kwargs
  )


def in_rnn(variables):
  """A cell's variables as nn.RNN holds them (under 'cell')."""
  return {k: {'cell': v} for k, v in variables.items()}


def init_cell(cell, x_step, seed=0):
  carry = cell.initialize_carry(jax.random.key(seed), x_step.shape)
  return carry, init(cell, jax.random.key(seed + 1), carry, x_step)


class BNModel(nn.Module):
  """nn.RNN over a BN-LSTM with the scan settings that training and evaluation need."""

  train: bool
  max_steps: int = 2
  momentum: float = 0.9
  param_dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, seq_lengths=None):
    cell = R.BNLSTMCell(
      H,
      use_running_average=not self.train,
      max_steps=self.max_steps,
      momentum=self.momentum,
      param_dtype=self.param_dtype,
      name='cell',
    )
    kwargs = R.batch_stats_scan_kwargs(self.train and not self.is_initializing())
    rnn = nn.RNN(cell, return_carry=True, name='rnn', **kwargs)
    return rnn(x, seq_lengths=seq_lengths)


# ---------------------------------------------------------------- against the paper


@pytest.mark.parametrize('norm', ['none', 'layer', 'draw'])
def test_lstm_matches_numpy_reference(norm):
  with jax.enable_x64(True):
    x = data(0)
    cell = R.LSTMCell(H, norm=norm, param_dtype=jnp.float64)
    _, variables = init_cell(cell, x[:, 0])
    variables = perturb(variables, 1)
    rng = np.random.default_rng(2)
    c0, h0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    (c, h), ys = apply(
      nn.RNN(cell, return_carry=True), in_rnn(variables), x, initial_carry=(c0, h0)
    )
    p = to_np(variables['params'])
    rc, rh = c0, h0
    for t in range(T):
      rc, rh = np_lstm_step(p, norm, rc, rh, x[:, t])
      np.testing.assert_allclose(ys[:, t], rh, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, rc, rtol=1e-10, atol=1e-12)  # the un-normalized c_t
    np.testing.assert_allclose(h, rh, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_gru_matches_numpy_reference(norm):
  with jax.enable_x64(True):
    x = data(3)
    cell = R.GRUCell(H, norm=norm, param_dtype=jnp.float64)
    _, variables = init_cell(cell, x[:, 0])
    variables = perturb(variables, 4)
    h0 = np.random.default_rng(5).standard_normal((B, H))
    h, ys = apply(nn.RNN(cell, return_carry=True), in_rnn(variables), x, initial_carry=h0)
    p = to_np(variables['params'])
    rh = h0
    for t in range(T):
      rh = np_gru_step(p, norm, rh, x[:, t])
      np.testing.assert_allclose(ys[:, t], rh, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, rh, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('train', [True, False])
def test_bnlstm_matches_numpy_reference(train):
  """T=4 steps with max_steps=2: steps 1-3 share the last slot of statistics."""
  with jax.enable_x64(True):
    x = data(6)
    model = BNModel(train=train, param_dtype=jnp.float64)
    variables = init(model, jax.random.key(0), x)
    variables = {
      'params': perturb(variables['params'], 7),
      'batch_stats': random_stats(variables['batch_stats'], 8),
    }
    if train:
      ((c, h, t), ys), updates = apply(model, variables, x, mutable=['batch_stats'])
    else:
      (c, h, t), ys = apply(model, variables, x)
    p, s = to_np(variables['params']['cell']), to_np(variables['batch_stats']['cell'])
    rc, rh = np.zeros((B, H)), np.zeros((B, H))
    for step in range(T):
      rc, rh, s = np_bnlstm_step(p, s, rc, rh, x[:, step], step, train, 0.9)
      np.testing.assert_allclose(ys[:, step], rh, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(c, rc, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(t, np.full((B,), T))
    if train:
      got = to_np(updates['batch_stats']['cell'])
      # Running statistics are stored in float32, like layers.BatchNorm's.
      jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, s
      )


def test_bnlstm_population_stats_per_step():
  """Training fills slot t with the batch statistics of step t; eval reads slot min(t, T-1)."""
  x = data(9, np.float32, (8, 3, D))
  model = BNModel(train=True, max_steps=4, momentum=0.0)
  variables = init(model, jax.random.key(0), x)
  (_, y_train), updates = apply(model, variables, x, mutable=['batch_stats'])
  stats = updates['batch_stats']['cell']['bn_x']
  w_x = np.asarray(variables['params']['cell']['input_kernel'], np.float64)
  for step in range(3):
    a = x[:, step].astype(np.float64) @ w_x
    np.testing.assert_allclose(stats['mean'][step], a.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats['var'][step], a.var(0), rtol=1e-4, atol=1e-5)
  # The unused slot keeps its initial values.
  np.testing.assert_array_equal(stats['mean'][3], 0.0)
  np.testing.assert_array_equal(stats['var'][3], 1.0)
  # With momentum 0, evaluation on the training batch equals training with batch statistics.
  new_vars = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
  (_, y_eval) = apply(BNModel(train=False, max_steps=4), new_vars, x)
  np.testing.assert_allclose(y_eval, y_train, rtol=2e-3, atol=2e-4)


# ---------------------------------------------------------------- gradients


CELLS_F64 = {
  'lstm-layer': lambda: R.LSTMCell(H, norm='layer', param_dtype=jnp.float64),
  'lstm-draw': lambda: R.LSTMCell(H, norm='draw', param_dtype=jnp.float64),
  'gru-layer': lambda: R.GRUCell(H, norm='layer', param_dtype=jnp.float64),
  'gru-none': lambda: R.GRUCell(H, norm='none', param_dtype=jnp.float64),
  'bnlstm-train': lambda: R.BNLSTMCell(
    H, use_running_average=False, max_steps=2, param_dtype=jnp.float64
  ),
}


@pytest.mark.parametrize('name', sorted(CELLS_F64))
def test_numerical_gradients(name):
  """Two steps, so the gradient also flows through the carry; float64 finite differences."""
  with jax.enable_x64(True):
    cell = CELLS_F64[name]()
    x = data(10, shape=(B, 2, D))
    carry, variables = init_cell(cell, x[:, 0])
    params = perturb(variables['params'], 11, scale=0.3)
    rest = {k: v for k, v in variables.items() if k != 'params'}

    def loss(params, x):
      state, out = carry, 0.0
      for t in range(2):
        (state, y), _ = cell.apply(
          {'params': params, **rest}, state, x[:, t], mutable=['batch_stats']
        )
        out = out + jnp.sum(jnp.sin(y))
      return out

    check_grads(jax.jit(loss), (params, x), order=1, modes=['rev'], eps=1e-6, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- inside Flax's transforms


def run_loop(cell, variables, carry, x):
  ys = []
  step = jax.jit(cell.apply)
  for t in range(x.shape[1]):
    carry, y = step(variables, carry, x[:, t])
    ys.append(y)
  return carry, jnp.stack(ys, axis=1)


LINEN_CELLS = {
  'lstm-none': lambda: R.LSTMCell(H, norm='none'),
  'lstm-layer': lambda: R.LSTMCell(H, norm='layer'),
  'lstm-draw': lambda: R.LSTMCell(H, norm='draw'),
  'gru-none': lambda: R.GRUCell(H, norm='none'),
  'gru-layer': lambda: R.GRUCell(H, norm='layer'),
  'bnlstm-eval': lambda: R.BNLSTMCell(H, use_running_average=True, max_steps=2),
}


@pytest.mark.parametrize('name', sorted(LINEN_CELLS))
def test_rnn_equals_python_loop(name):
  cell = LINEN_CELLS[name]()
  x = jnp.asarray(data(12, np.float32))
  carry, variables = init_cell(cell, x[:, 0])
  variables = perturb(variables, 13, scale=0.3)
  if 'batch_stats' in variables:
    variables['batch_stats'] = random_stats(variables['batch_stats'], 14)
  rnn = nn.RNN(cell, return_carry=True, **R.batch_stats_scan_kwargs(False))
  carry_rnn, ys_rnn = apply(rnn, in_rnn(variables), x)
  carry_loop, ys_loop = run_loop(cell, variables, carry, x)
  np.testing.assert_allclose(ys_rnn, ys_loop, rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), carry_rnn, carry_loop
  )


@pytest.mark.parametrize('name', ['lstm-layer', 'gru-layer', 'bnlstm-eval'])
def test_seq_lengths_returns_carry_at_true_end(name):
  cell = LINEN_CELLS[name]()
  x = jnp.asarray(data(15, np.float32))
  lengths = np.array([1, 4, 2])
  carry, variables = init_cell(cell, x[:, 0])
  variables = perturb(variables, 16, scale=0.3)
  if 'batch_stats' in variables:
    variables['batch_stats'] = random_stats(variables['batch_stats'], 17)
  rnn = nn.RNN(cell, return_carry=True, **R.batch_stats_scan_kwargs(False))
  carry_rnn, _ = apply(rnn, in_rnn(variables), x, seq_lengths=jnp.asarray(lengths))
  for b, n in enumerate(lengths):
    start = jax.tree_util.tree_map(lambda a, b=b: a[b : b + 1], carry)
    expected, _ = run_loop(cell, variables, start, x[b : b + 1, :n])
    jax.tree_util.tree_map(
      lambda a, e, b=b: np.testing.assert_allclose(a[b], e[0], rtol=1e-5, atol=1e-6),
      carry_rnn,
      expected,
    )


def test_bnlstm_seq_lengths_in_training():
  x = jnp.asarray(data(18, np.float32))
  model = BNModel(train=True)
  variables = init(model, jax.random.key(0), x)
  ((c, h, t), ys), _ = apply(
    model, variables, x, seq_lengths=jnp.array([1, 4, 2]), mutable=['batch_stats']
  )
  np.testing.assert_array_equal(t, [1, 4, 2])  # the step counter of each true end
  np.testing.assert_allclose(h, ys[jnp.arange(B), jnp.array([0, 3, 1])], rtol=1e-6)


def test_bidirectional():
  x = jnp.asarray(data(19, np.float32))
  lengths = jnp.array([4, 2, 3])
  bi = nn.Bidirectional(nn.RNN(R.LSTMCell(H)), nn.RNN(R.GRUCell(H)))
  variables = init(bi, jax.random.key(0), x)
  variables = perturb(variables, 20, scale=0.3)
  y = apply(bi, variables, x, seq_lengths=lengths)
  assert y.shape == (B, T, 2 * H)
  fwd = apply(nn.RNN(R.LSTMCell(H)), {'params': variables['params']['forward_rnn']}, x)
  np.testing.assert_allclose(y[..., :H], fwd, rtol=1e-5, atol=1e-6)
  # The backward half at position t of sequence b has read x[b, t:len_b] from the end.
  gru = R.GRUCell(H)
  gru_vars = {'params': variables['params']['backward_rnn']['cell']}
  for b, n in enumerate(np.asarray(lengths)):
    start = jnp.zeros((1, H))
    _, rev = run_loop(gru, gru_vars, start, x[b : b + 1, :n][:, ::-1])
    np.testing.assert_allclose(y[b, :n, H:], rev[0, ::-1], rtol=1e-5, atol=1e-6)


def test_nn_scan_over_cell():
  x = jnp.asarray(data(21, np.float32))
  scan = nn.scan(
    R.LSTMCell,
    variable_broadcast='params',
    split_rngs={'params': False},
    in_axes=1,
    out_axes=1,
  )(H, norm='layer')
  carry = R.LSTMCell(H).initialize_carry(jax.random.key(0), x[:, 0].shape)
  variables = init(scan, jax.random.key(1), carry, x)
  (_, h), ys = apply(scan, variables, carry, x)
  ys_rnn = apply(nn.RNN(R.LSTMCell(H)), {'params': {'cell': variables['params']}}, x)
  np.testing.assert_allclose(ys, ys_rnn, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, ys[:, -1])


# ---------------------------------------------------------------- properties and errors


def test_layer_norm_lstm_is_invariant_to_rescaling_the_weights():
  """Table 1: LN is invariant to re-scaling a weight matrix; the plain LSTM is not.

  Exactly so only as eps -> 0, hence the tiny eps and a non-zero initial carry.
  """
  x = jnp.asarray(data(22, np.float32))
  carry = tuple(jnp.asarray(data(s, np.float32, (B, H))) for s in (25, 26))
  for norm, invariant in (('layer', True), ('none', False)):
    cell = R.LSTMCell(H, norm=norm, epsilon=1e-12)
    _, variables = init_cell(cell, x[:, 0])
    variables = perturb(variables, 23, scale=0.3)
    scaled = jax.tree_util.tree_map(lambda a: a, variables)
    scaled['params']['input_kernel'] = 5.0 * variables['params']['input_kernel']
    scaled['params']['recurrent_kernel'] = 0.2 * variables['params']['recurrent_kernel']
    rnn = nn.RNN(cell)
    y0 = apply(rnn, in_rnn(variables), x, initial_carry=carry)
    y1 = apply(rnn, in_rnn(scaled), x, initial_carry=carry)
    assert np.allclose(y0, y1, atol=1e-4) == invariant


def test_initialization():
  x = jnp.ones((2, D))
  cell = R.LSTMCell(H, norm='layer', forget_bias=1.0)
  _, variables = init_cell(cell, x)
  p = variables['params']
  np.testing.assert_array_equal(p['bias'], np.r_[np.ones(H), np.zeros(3 * H)])
  for k in range(4):  # each gate's recurrent block is orthogonal, as in Flax's LSTMCell
    block = np.asarray(p['recurrent_kernel'][:, k * H : (k + 1) * H])
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
  for name in ('ln_h', 'ln_x', 'ln_c'):
    np.testing.assert_array_equal(p[name]['scale'], 1.0)
    np.testing.assert_array_equal(p[name]['bias'], 0.0)
  bn = R.BNLSTMCell(H, use_running_average=False, max_steps=3)
  _, v = init_cell(bn, x)
  np.testing.assert_allclose(v['params']['bn_x']['scale'], 0.1)
  np.testing.assert_allclose(v['params']['bn_c']['scale'], 0.1)
  assert 'bias' not in v['params']['bn_h'] and 'bias' not in v['params']['bn_x']
  assert v['batch_stats']['bn_h']['mean'].shape == (3, 4 * H)
  assert v['batch_stats']['bn_c']['var'].shape == (3, H)


@pytest.mark.parametrize(
  'make, name',
  [
    (lambda: R.LSTMCell(H), 'LSTMCell'),
    (lambda: R.GRUCell(H), 'GRUCell'),
    (lambda: R.BNLSTMCell(H, use_running_average=True), 'BNLSTMCell'),
  ],
)
def test_wrong_input_feature_size(make, name):
  cell = make()
  carry, variables = init_cell(cell, jnp.ones((2, 8)))
  with pytest.raises(ValueError, match=f'{name} was built for inputs with 8 features but got 5'):
    cell.apply(variables, carry, jnp.ones((2, 5)))
  bad_carry = cell.initialize_carry(jax.random.key(0), (2, 8))
  bad_carry = jax.tree_util.tree_map(
    lambda a: a if a.ndim == 1 else jnp.zeros((2, H + 1), a.dtype), bad_carry
  )
  with pytest.raises(ValueError, match=f'{name} was built for a carry with {H} features'):
    cell.apply(variables, bad_carry, jnp.ones((2, 8)))


def test_unknown_norm_and_missing_mode():
  x = jnp.ones((2, D))
  with pytest.raises(ValueError, match="unknown norm 'batch'; valid names are: none, layer, draw"):
    init_cell(R.LSTMCell(H, norm='batch'), x)
  with pytest.raises(ValueError, match='valid names are: none, layer'):
    init_cell(R.GRUCell(H, norm='draw'), x)
  with pytest.raises(ValueError, match='use_running_average'):
    init_cell(R.BNLSTMCell(H), x)


@pytest.mark.parametrize('name', ['lstm-layer', 'gru-layer', 'bnlstm-eval'])
def test_bfloat16_in_bfloat16_out(name):
  """With dtype=bfloat16 the carry and outputs are bfloat16; LN statistics stay float32."""
  cell32 = LINEN_CELLS[name]()
  cell16 = cell32.clone(dtype=jnp.bfloat16)
  x = jnp.asarray(data(24, np.float32))
  _, variables = init_cell(cell32, x[:, 0])
  v = in_rnn(variables)
  kwargs = R.batch_stats_scan_kwargs(False)
  rnn16 = nn.RNN(cell16, return_carry=True, **kwargs)
  carry16, y16 = apply(rnn16, v, x.astype(jnp.bfloat16))
  y32 = apply(nn.RNN(cell32, **kwargs), v, x)
  assert y16.dtype == jnp.bfloat16
  assert all(a.dtype in (jnp.bfloat16, jnp.int32) for a in jax.tree_util.tree_leaves(carry16))
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=5e-2)


def test_gate_equations_live_only_in_cells():
  """linen and NNX cells call lnorm.cells; neither computes a gate equation of its own."""
  import ast
  import inspect

  from lnorm import cells
  from lnorm import nnx as lnnx

  def calls(obj):
    tree = ast.parse(inspect.getsource(obj))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}

  gate_ops = {'sigmoid', 'tanh', 'split'}  # (jnp.dot is also a dense layer's)
  for module in (R, lnnx):
    assert not calls(module) & gate_ops, module.__name__
    private = {
      n.attr
      for n in ast.walk(ast.parse(inspect.getsource(module)))
      if isinstance(n, ast.Attribute)
      and isinstance(n.value, ast.Name)
      and n.value.id in ('R', 'C', 'cells', 'F')
      and n.attr.startswith('_')
    }
    assert not private, (module.__name__, private)
  assert gate_ops <= calls(cells.lstm_step) | calls(cells.gru_step) | calls(cells)

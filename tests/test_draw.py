"""DRAW (paper §6.4): attention, bound terms, the whole model against float64 numpy, end to end.

The numpy reference below writes Gregor et al.'s equations and the paper's eqs. 29-31 out
independently of the JAX code; the end-to-end run goes through ``python -m lnorm.main``
with the ``smoke`` config on the embedded stand-in.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # configs/ and experiments/ live at the root.

from configs import draw as draw_config  # noqa: E402
from experiments import draw  # noqa: E402
from lnorm.lab import batching, metrics, optimizers, runner  # noqa: E402
from lnorm.lab.contract import TrainState  # noqa: E402
from lnorm.recurrent import LSTMCell  # noqa: E402

H = W = 28


# ----------------------------------------------------------------------------------------
# A float64 numpy DRAW, written from the equations.


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_window(p, n):
  """Gregor et al. eqs. 21-24 for raw parameters ``p [B, 5]``."""
  gx = (W + 1) / 2 * (p[:, 0] + 1)
  gy = (H + 1) / 2 * (p[:, 1] + 1)
  sigma2 = np.exp(p[:, 2])
  delta = (max(H, W) - 1) / (n - 1) * np.exp(p[:, 3])
  gamma = np.exp(p[:, 4])
  return gx, gy, sigma2, delta, gamma


def np_filterbank(g, delta, sigma2, n, size):
  """``F[b, i, a]`` with ``mu_i = g + (i - n/2 - 0.5) delta``, pixels ``a = 1..size``.

  The exponents are shifted by their row maximum before ``exp`` (the ratio is unchanged),
  so that float64 does not underflow either for windows far outside the image.
  """
  out = np.zeros((len(g), n, size))
  for b in range(len(g)):
    for i in range(1, n + 1):
      mu = g[b] + (i - n / 2 - 0.5) * delta[b]
      exponents = [-((a - mu) ** 2) / (2 * sigma2[b]) for a in range(1, size + 1)]
      top = max(exponents)
      weights = [math.exp(e - top) for e in exponents]
      out[b, i - 1] = np.array(weights) / sum(weights)
  return out


def np_layer_norm(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return scale * (x - mu) / np.sqrt(var + eps) + bias


def np_lstm(p, c, h, x, norm):
  """Paper eqs. 29-31 (``norm='draw'``) or the plain LSTM; gate order ``[f; i; o; g]``."""
  gates = x @ p['input_kernel'] + h @ p['recurrent_kernel'] + p['bias']
  f, i, o, g = np.split(gates, 4, axis=-1)
  c = np_sigmoid(f) * c + np_sigmoid(i) * np.tanh(g)
  c_out = np_layer_norm(c, p['ln_c']['scale'], p['ln_c']['bias']) if norm == 'draw' else c
  return c, np_sigmoid(o) * np.tanh(c_out)


def np_dense(p, x):
  return x @ p['kernel'] + p['bias']


def np_draw(params, x, eps, nr, nw, norm):
  """The negative bound's terms ``(recon [B], kl [B])`` and the canvas logits ``[B, 784]``."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params['glimpses'])
  b = x.shape[0]
  img = x.reshape(b, H, W).astype(np.float64)
  he = p['encoder']['recurrent_kernel'].shape[0]
  hd = p['decoder']['recurrent_kernel'].shape[0]
  c_enc, h_enc = np.zeros((b, he)), np.zeros((b, he))
  c_dec, h_dec = np.zeros((b, hd)), np.zeros((b, hd))
  canvas = np.zeros((b, H, W))
  kl = np.zeros(b)
  for t in range(eps.shape[0]):
    x_hat = img - np_sigmoid(canvas)
    gx, gy, s2, d, gamma = np_window(np_dense(p['read_attention'], h_dec), nr)
    fx, fy = np_filterbank(gx, d, s2, nr, W), np_filterbank(gy, d, s2, nr, H)
    r = [
      gamma[k] * np.concatenate([(fy[k] @ im[k] @ fx[k].T).ravel() for im in (img, x_hat)])
      for k in range(b)
    ]
    c_enc, h_enc = np_lstm(
      p['encoder'], c_enc, h_enc, np.concatenate([np.stack(r), h_dec], -1), norm
    )
    mu = np_dense(p['z_mean'], h_enc)
    log_sigma = np_dense(p['z_log_sigma'], h_enc)
    z = mu + np.exp(log_sigma) * eps[t]
    kl += 0.5 * np.sum(mu**2 + np.exp(2 * log_sigma) - 2 * log_sigma - 1, -1)
    c_dec, h_dec = np_lstm(p['decoder'], c_dec, h_dec, z, norm)
    gx, gy, s2, d, gamma = np_window(np_dense(p['write_attention'], h_dec), nw)
    fx, fy = np_filterbank(gx, d, s2, nw, W), np_filterbank(gy, d, s2, nw, H)
    patch = np_dense(p['write_patch'], h_dec).reshape(b, nw, nw)
    canvas = canvas + np.stack([fy[k].T @ patch[k] @ fx[k] / gamma[k] for k in range(b)])
  logits = canvas.reshape(b, -1)
  prob = np_sigmoid(logits)
  xf = x.astype(np.float64)
  recon = -np.sum(xf * np.log(prob) + (1 - xf) * np.log(1 - prob), -1)
  return recon, kl, logits


def tiny_config(norm='layer', **kw):
  config = draw_config.get_config(f'smoke,norm={norm}')
  config.update(kw)
  return config


def random_params(model, seed=0, scale=0.3):
  """The model's parameters with every leaf random (LN gains and biases too)."""
  params, _ = model.init(jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  new = [scale * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
  return jax.tree.unflatten(treedef, new)


def binary_images(n, seed=0):
  return (np.random.default_rng(seed).uniform(size=(n, H * W)) < 0.3).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Attention.


@pytest.mark.parametrize('n', [2, 3, 5, 12])
def test_filterbank_rows_sum_to_one_and_match_numpy(n):
  rng = np.random.default_rng(n)
  raw = rng.normal(scale=0.7, size=(4, 5)).astype(np.float32)
  win = draw.attention_window(jnp.asarray(raw), n, H, W)
  gx, gy, s2, d, gamma = np_window(raw.astype(np.float64), n)
  np.testing.assert_allclose(win.gx, gx, rtol=1e-5)
  np.testing.assert_allclose(win.gy, gy, rtol=1e-5)
  np.testing.assert_allclose(win.delta, d, rtol=1e-5)
  np.testing.assert_allclose(win.sigma2, s2, rtol=1e-5)
  np.testing.assert_allclose(win.gamma, gamma, rtol=1e-5)
  fx, fy = draw.window_filterbanks(win, n, H, W)
  assert fx.shape == (4, n, W) and fy.shape == (4, n, H)
  np.testing.assert_allclose(fx.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(fy.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(fx, np_filterbank(gx, d, s2, n, W), atol=5e-6)
  np.testing.assert_allclose(fy, np_filterbank(gy, d, s2, n, H), atol=5e-6)


def test_filter_centres_are_the_papers_grid():
  mu = draw.filter_centres(jnp.array([14.5]), jnp.array([2.0]), 4)
  # i = 1..4: 14.5 + (i - 2.5) * 2.
  np.testing.assert_allclose(mu, [[11.5, 13.5, 15.5, 17.5]])


def test_underflowing_filterbank_row_keeps_the_formulas_limit():
  # Centres far right of the image with a tiny sigma: every exp underflows in float32, and
  # the normalised row tends to all weight on the last pixel (no 0/0).
  f = draw.filterbank(jnp.array([500.0]), jnp.array([1.0]), jnp.array([1e-3]), 2, W)
  expected = np.zeros((1, 2, W))
  expected[..., -1] = 1.0
  np.testing.assert_array_equal(f, expected)
  # Where the float64 formula is defined, far outside too, the same numbers.
  g, d, s2 = np.array([-6.0]), np.array([3.0]), np.array([0.8])
  np.testing.assert_allclose(
    draw.filterbank(jnp.asarray(g), jnp.asarray(d), jnp.asarray(s2), 3, W),
    np_filterbank(g, d, s2, 3, W),
    atol=1e-6,
  )


def test_full_resolution_read_with_tiny_sigma_returns_the_image():
  # N = A = 28, gx~ = gy~ = 0 (centre (A+1)/2), delta~ = 1 (stride (A-1)/(N-1) = 1), tiny sigma.
  raw = jnp.array([[0.0, 0.0, math.log(1e-4), 0.0, 0.0]])
  win = draw.attention_window(raw, W, H, W)
  np.testing.assert_allclose([win.gx[0], win.gy[0], win.delta[0]], [14.5, 14.5, 1.0])
  fx, fy = draw.window_filterbanks(win, W, H, W)
  image = jnp.asarray(np.random.default_rng(0).uniform(size=(1, H, W)), jnp.float32)
  np.testing.assert_allclose(draw.read_glimpse(image, fx, fy, win.gamma), image, atol=1e-6)
  np.testing.assert_allclose(draw.write_patch(image, fx, fy, win.gamma), image, atol=1e-6)
  # gamma scales the read and divides the write.
  g = jnp.array([2.5])
  np.testing.assert_allclose(draw.read_glimpse(image, fx, fy, g), 2.5 * image, rtol=1e-5)
  np.testing.assert_allclose(draw.write_patch(image, fx, fy, g), image / 2.5, rtol=1e-5)


def test_read_and_write_are_adjoint():
  # <read(x), w> = gamma <x, F_Y^T w F_X> = gamma^2 <x, write(w)>: one pair of linear maps.
  rng = np.random.default_rng(1)
  raw = jnp.asarray(rng.normal(scale=0.5, size=(3, 5)), jnp.float32)
  win = draw.attention_window(raw, 5, H, W)
  fx, fy = draw.window_filterbanks(win, 5, H, W)
  x = jnp.asarray(rng.normal(size=(3, H, W)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 5, 5)), jnp.float32)
  lhs = jnp.sum(draw.read_glimpse(x, fx, fy, win.gamma) * w, axis=(1, 2))
  rhs = win.gamma**2 * jnp.sum(x * draw.write_patch(w, fx, fy, win.gamma), axis=(1, 2))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_attention_gradients_match_finite_differences():
  from jax.test_util import check_grads

  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.uniform(size=(2, H, W)), jnp.float32)

  def f(raw):
    win = draw.attention_window(raw, 3, H, W)
    fx, fy = draw.window_filterbanks(win, 3, H, W)
    patch = draw.read_glimpse(x, fx, fy, win.gamma)
    return jnp.sum(draw.write_patch(patch, fx, fy, win.gamma) ** 2)

  raw = jnp.asarray(rng.normal(scale=0.3, size=(2, 5)), jnp.float32)
  check_grads(f, (raw,), order=1, modes=['rev'], atol=5e-2, rtol=5e-2, eps=1e-2)


# ----------------------------------------------------------------------------------------
# Bound terms.


def test_kl_matches_the_closed_form_of_two_gaussians():
  rng = np.random.default_rng(3)
  mu, log_sigma = rng.normal(size=(6, 7)), rng.normal(scale=0.5, size=(6, 7))
  # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2.
  s1 = np.exp(log_sigma)
  expected = np.sum(-np.log(s1) + (s1**2 + mu**2) / 2 - 0.5, -1)
  got = draw.gaussian_kl(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # And against numeric integration of p log(p/q) for one unit.
  m, s = 0.7, 0.4
  z = np.linspace(m - 12 * s, m + 12 * s, 200001)
  logp = -0.5 * ((z - m) / s) ** 2 - np.log(s * math.sqrt(2 * math.pi))
  logq = -0.5 * z**2 - math.log(math.sqrt(2 * math.pi))
  numeric = np.trapezoid(np.exp(logp) * (logp - logq), z)
  got = draw.gaussian_kl(jnp.array([m]), jnp.log(jnp.array([s])))
  np.testing.assert_allclose(got, numeric, rtol=1e-5)


def test_bernoulli_nll_is_the_binary_cross_entropy():
  rng = np.random.default_rng(4)
  logits = rng.normal(scale=4, size=(3, 784))
  x = (rng.uniform(size=(3, 784)) < 0.5).astype(np.float64)
  p = np_sigmoid(logits)
  expected = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), -1)
  got = draw.bernoulli_nll(jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_bound_of_zero_weights_is_the_hand_computed_value(norm):
  # All weights 0: h = 0, the canvas stays 0 (p = 1/2 for every pixel: 784 log 2), and
  # mu = m, log sigma = s from the biases: KL = T Z (m^2 + e^{2s} - 2s - 1) / 2.
  config = tiny_config(norm)
  model = draw.wrap_model(config)
  params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0))[0])
  m, s = 0.5, -0.3
  params['glimpses']['z_mean']['bias'] = jnp.full((config.z_size,), m)
  params['glimpses']['z_log_sigma']['bias'] = jnp.full((config.z_size,), s)
  images = binary_images(5)
  eps = jax.random.normal(jax.random.key(1), (config.glimpses, 5, config.z_size))
  terms = draw.bound_terms(model, params, images, eps)
  kl = config.glimpses * config.z_size * 0.5 * (m**2 + math.exp(2 * s) - 2 * s - 1)
  np.testing.assert_allclose(terms['recon'], 784 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(terms['kl'], kl, rtol=1e-5)
  np.testing.assert_allclose(terms['bound'], 784 * math.log(2) + kl, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# The model against the numpy reference, and its cells against the library's.


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_model_matches_float64_numpy_draw(norm):
  config = tiny_config(norm, glimpses=3, read_size=2, write_size=3)
  model = draw.wrap_model(config)
  params = random_params(model, seed=5)
  images = binary_images(3, seed=1)
  eps = np.random.default_rng(6).normal(size=(3, 3, config.z_size)).astype(np.float32)
  terms = draw.bound_terms(model, params, images, jnp.asarray(eps))
  recon, kl, _ = np_draw(params, images, eps, 2, 3, draw.CELL_NORMS[norm])
  np.testing.assert_allclose(terms['recon'], recon, rtol=2e-5)
  np.testing.assert_allclose(terms['kl'], kl, rtol=2e-5)


def test_cells_are_the_librarys_draw_lstm():
  config = tiny_config('layer')
  model = draw.wrap_model(config)
  params = random_params(model, seed=7)['glimpses']
  assert set(params['encoder']) == {'input_kernel', 'recurrent_kernel', 'bias', 'ln_c'}
  rng = np.random.default_rng(8)
  for name in ('encoder', 'decoder'):
    p = params[name]
    n_in, hidden = p['input_kernel'].shape[0], p['recurrent_kernel'].shape[0]
    x = rng.normal(size=(4, n_in)).astype(np.float32)
    c, h = (rng.normal(size=(4, hidden)).astype(np.float32) for _ in range(2))
    (c1, h1), _ = LSTMCell(hidden, norm='draw').apply({'params': p}, (c, h), x)
    c2, h2 = np_lstm(jax.tree.map(np.asarray, p), c, h, x, 'draw')
    np.testing.assert_allclose(c1, c2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)
  none = draw.wrap_model(tiny_config('none')).init(jax.random.key(0))[0]['glimpses']
  assert 'ln_c' not in none['encoder'] and 'ln_c' not in none['decoder']


def test_generation_and_recording():
  config = tiny_config('layer')
  model = draw.wrap_model(config)
  params = random_params(model, seed=9)
  samples = draw.make_sample_fn(model, config)(params, jax.random.key(0), 3)
  assert samples.shape == (config.glimpses, 3, H, W)
  assert float(samples.min()) >= 0 and float(samples.max()) <= 1
  trace = draw.make_trace_fn(model, config)(params, binary_images(2), jnp.arange(2))
  assert trace['canvas'].shape == (config.glimpses, 2, H, W)
  assert trace['read'].shape == trace['write'].shape == (config.glimpses, 2, 3)
  # The recorded last canvas is the one the bound is computed from.
  eps = draw.eval_noise(
    draw.split_key(config.eval_seed, 'test'), jnp.arange(2), config.glimpses, config.z_size
  )
  logits, _ = model.apply(params, {}, jnp.asarray(binary_images(2), jnp.float32), eps)[0]
  np.testing.assert_allclose(trace['canvas'][-1].reshape(2, -1), jax.nn.sigmoid(logits), rtol=1e-5)


def test_evaluation_noise_and_bound_do_not_depend_on_the_batching():
  key = jax.random.key(3)
  both = draw.eval_noise(key, jnp.array([3, 5]), 4, 2)
  alone = draw.eval_noise(key, jnp.array([5]), 4, 2)
  np.testing.assert_array_equal(both[:, 1], alone[:, 0])
  config = tiny_config('layer')
  model = draw.wrap_model(config)
  params, _ = model.init(jax.random.key(0))
  state = TrainState(jnp.zeros((), jnp.int32), params, {}, ())
  data = {'image': binary_images(10), 'index': np.arange(10, dtype=np.int32)}
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  fn = draw.make_eval_fn(model, config, 'valid')
  a = batching.evaluate_arrays(fn, state, data, 4, mesh)
  b = batching.evaluate_arrays(fn, state, data, 10, mesh)
  for k in ('bound', 'recon', 'kl'):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5)


def test_one_train_step_changes_every_parameter():
  config = tiny_config('layer')
  model = draw.wrap_model(config)
  tx, schedule = optimizers.make_optimizer(config, 10)
  params, _ = model.init(jax.random.key(0))
  state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params))
  step = jax.jit(runner.make_train_step(draw.make_loss_fn(model, config), tx, schedule))
  new, m = step(state, {'image': binary_images(8)}, jax.random.key(1))
  assert np.isfinite(float(m['loss'])) and float(m['recon']) > 0 and float(m['kl']) >= 0
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
  unchanged = [
    jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(changed) if not v
  ]
  assert not unchanged, f'parameters unchanged by a step: {unchanged}'


def test_matmul_flop_count_agrees_with_xla_per_glimpse():
  # XLA's cost analysis of one glimpse (T = 1) at the paper's sizes: products dominate.
  config = draw_config.get_config('norm=layer')
  config.glimpses = 1
  model = draw.wrap_model(config)
  params, _ = model.init(jax.random.key(0))
  x = jnp.zeros((16, 784))
  eps = jnp.zeros((1, 16, config.z_size))
  fn = jax.jit(lambda p: model.apply(p, {}, x, eps)[0][0])
  cost = fn.lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  xla = float(cost['flops']) / 16
  ours = draw.matmul_flops_per_image(config)['forward']
  assert 0.9 * ours < xla < 1.3 * ours, (ours, xla)
  paper = draw.matmul_flops_per_image(draw_config.get_config('norm=none'))
  assert 1.1e8 < paper['forward'] < 1.3e8 and paper['train'] == 3 * paper['forward']


# ----------------------------------------------------------------------------------------
# Pictures.


def test_window_box_and_drawing():
  # A 2x2 grid of stride 4 around the centre (14.5, 14.5): a box of side 8 pixels.
  box = draw.window_box(np.array([14.5, 14.5, 4.0]), 2, scale=1)
  np.testing.assert_allclose(box, [10.0, 10.0, 18.0, 18.0])
  image = np.zeros((28, 28, 3))
  draw.draw_box(image, box, (1.0, 0.0, 0.0))
  red = image[..., 0] > 0
  assert red[10, 10:19].all() and red[18, 10:19].all() and red[10:19, 10].all()
  assert red.sum() == 4 * 8 and image[..., 1].max() == 0
  # A box partly outside keeps its visible edges only; one fully outside draws nothing.
  image = np.zeros((28, 28, 3))
  draw.draw_box(image, (20, 20, 40, 40), (0.0, 1.0, 0.0))
  assert image[20, 20:28, 1].all() and image[:, :20].max() == 0 and image[27, 21:, 1].max() == 0
  image = np.zeros((28, 28, 3))
  draw.draw_box(image, (30, 30, 40, 40), (0.0, 1.0, 0.0))
  assert image.max() == 0


def test_render_canvas_layout():
  t, k = 20, 2
  trace = {
    'canvas': np.random.default_rng(0).uniform(size=(t, k, H, W)),
    'read': np.tile([14.5, 14.5, 2.0], (t, k, 1)),
    'write': np.tile([10.0, 10.0, 1.0], (t, k, 1)),
  }
  cols = draw.glimpse_columns(t, 12)
  assert len(cols) == 12 and cols[0] == 0 and cols[-1] == t - 1
  assert draw.glimpse_columns(5, 12) == [0, 1, 2, 3, 4]
  out = draw.render_canvas(trace, binary_images(k), 2, 5, max_columns=12, scale=3)
  assert out.shape == (2 + k * (84 + 2), 2 + 13 * (84 + 2), 3)
  assert out.min() >= 0 and out.max() <= 1
  green = (out[..., 1] > 0.6) & (out[..., 0] < 0.2)
  assert green.any()


# ----------------------------------------------------------------------------------------
# Config and end to end.


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('norm', 'batch', 'norm must be one of'),
    ('data_source', 'png', 'data_source must be one of'),
    ('read_size', 1, 'read_size must be an integer >= 2'),
    ('glimpses', 0, 'glimpses must be an integer >= 1'),
    ('num_samples', 0, 'num_samples must be an integer >= 1'),
    ('scale', 'huge', 'scale must be one of'),
  ],
)
def test_bad_config_values_fail_clearly(field, value, match):
  config = draw_config.get_config('smoke')
  config[field] = value
  with pytest.raises(ValueError, match=match):
    draw.check_config(config)


def test_configs_and_sweep():
  paper = draw_config.get_config('norm=none')
  assert (paper.glimpses, paper.read_size, paper.write_size, paper.z_size) == (64, 2, 5, 100)
  assert (paper.encoder_size, paper.decoder_size, paper.batch_size, paper.num_epochs) == (
    256,
    256,
    128,
    200,
  )
  assert paper.optimizer == 'adam' and paper.learning_rate == 1e-3 and paper.num_train == 0
  cpu = draw_config.get_config('scale=cpu')
  assert cpu.glimpses < paper.glimpses and cpu.scale == 'cpu'
  assert draw_config.get_config('smoke').scale == 'smoke'
  for c in (paper, cpu, draw_config.get_config('smoke')):
    draw.check_config(c)
  with pytest.raises(ValueError, match='unknown config arg'):
    draw_config.get_config('glimpse=3')
  with pytest.raises(ValueError, match='scale must be one of'):
    draw_config.get_config('scale=big')
  sweep = draw_config.get_sweep('seeds=2,scale=cpu')
  assert {(d['norm'], d['seed']) for d in sweep} == {
    ('none', 0),
    ('none', 1),
    ('layer', 0),
    ('layer', 1),
  }
  for d in sweep:
    draw_config.get_config(','.join(f'{k}={v}' for k, v in d.items()))


def test_missing_data_is_one_clear_error(tmp_path):
  config = draw_config.get_config(f'data=amat,data_dir={tmp_path}')
  with pytest.raises(FileNotFoundError, match='binarized_mnist_train.amat'):
    draw.load_data(config)


def test_smoke_end_to_end_through_main(tmp_path):
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', LNORM_JAX_CACHE=str(tmp_path / 'cache'))
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  cmd = [sys.executable, '-m', 'lnorm.main', '--config=configs/draw.py:smoke,epochs=1',
         f'--workdir={workdir}']  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == [0, 4, 8]
  for key in ('valid/bound', 'valid/recon', 'valid/kl', 'test/bound'):
    assert np.isfinite(rows[0][key]) and np.isfinite(rows[-1][key])
  np.testing.assert_allclose(
    rows[-1]['test/bound'], rows[-1]['test/recon'] + rows[-1]['test/kl'], rtol=1e-6
  )
  assert 'train/loss' in rows[1] and 'train/kl' in rows[1]
  final = json.loads((workdir / 'final.json').read_text())
  assert final['step'] == 8 and not final['diverged']
  assert sorted(p.name for p in (workdir / 'images').iterdir()) == ['canvas-8.png', 'samples-8.png']


def test_report_catch_up_line():
  from scripts import draw_report

  def rows(bounds):
    return [{'epoch': e, 'wall_s': 60.0 * e, 'test/bound': b} for e, b in enumerate(bounds, 1)]

  runs = [
    {'norm': 'none', 'rows': rows([200, 150, 130, 120])},
    {'norm': 'layer', 'rows': rows([190, 125, 110, 100])},
  ]
  line = draw_report.catch_up_line(runs)
  assert 'LN reached 110.00 at epoch 3.00, 0.75 of the baseline' in line
  runs[1]['rows'] = rows([190, 180])
  assert line != draw_report.catch_up_line(runs)
  assert draw_report.catch_up_line(runs).endswith('LN has not reached it yet.')
  assert draw_report.catch_up_line(runs[:1]) == ''

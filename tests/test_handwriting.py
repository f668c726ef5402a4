"""The handwriting synthesis experiment: the mixture density, the loss, the window, padding,
derivative clipping, sampling, the config, and a smoke run end to end on files the test writes.
"""

import functools
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads)
import numpy as np
import optax
import pytest
from scipy import stats

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import handwriting as hw_config  # noqa: E402
from experiments import handwriting as hw  # noqa: E402
from lnorm.lab import metrics, runner  # noqa: E402
from lnorm.lab.data import hershey  # noqa: E402


def _raw_outputs(rng, shape, m):
  return rng.normal(size=(*shape, 1 + 6 * m))


# ----------------------------------------------------------------------------------------
# The math.


def test_bivariate_normal_matches_scipy():
  rng = np.random.default_rng(0)
  m = 4
  with jax.enable_x64(True):
    x = rng.normal(size=(5, 2))
    mu = rng.normal(size=(5, m, 2))
    log_sigma = rng.normal(scale=0.7, size=(5, m, 2))
    rho_logit = rng.normal(scale=1.5, size=(5, m))
    got = np.asarray(hw.bivariate_normal_logpdf(x, mu, log_sigma, rho_logit))
  for b in range(5):
    for j in range(m):
      s1, s2 = np.exp(log_sigma[b, j])
      r = np.tanh(rho_logit[b, j])
      cov = [[s1 * s1, r * s1 * s2], [r * s1 * s2, s2 * s2]]
      want = stats.multivariate_normal(mu[b, j], cov).logpdf(x[b])
      np.testing.assert_allclose(got[b, j], want, rtol=1e-10, atol=1e-10)


def test_log_one_minus_tanh_sq_is_exact_and_finite():
  a = np.array([-30.0, -3.0, -0.5, 0.0, 0.2, 4.0, 15.0])
  with jax.enable_x64(True):
    got = np.asarray(hw.log_one_minus_tanh_sq(a))
  small = np.abs(a) < 10
  np.testing.assert_allclose(got[small], np.log(1 - np.tanh(a[small]) ** 2), rtol=1e-12)
  # Where 1 - tanh^2 underflows in float32, the value is still exact: log(4) - 2|a| + ...
  got32 = np.asarray(hw.log_one_minus_tanh_sq(jnp.float32(60.0)))
  np.testing.assert_allclose(got32, 2 * (np.log(2) - 60.0), rtol=1e-6)


def test_one_component_loss_by_hand():
  # M = 1: y = [e^, pi^, mu1, mu2, sigma^1, sigma^2, rho^].
  e_hat, mu, sig, rho = 0.3, (0.5, -0.2), (2.0, 0.5), 0.3
  y = np.array([e_hat, 0.7, mu[0], mu[1], math.log(sig[0]), math.log(sig[1]), math.atanh(rho)])
  for eos in (0.0, 1.0):
    target = np.array([1.0, 0.1, eos])
    z1, z2 = (1.0 - mu[0]) / sig[0], (0.1 - mu[1]) / sig[1]
    zz = z1 * z1 + z2 * z2 - 2 * rho * z1 * z2
    density = math.exp(-zz / (2 * (1 - rho * rho))) / (
      2 * math.pi * sig[0] * sig[1] * math.sqrt(1 - rho * rho)
    )
    e = 1 / (1 + math.exp(e_hat))  # Graves eq. 18: e = 1 / (1 + exp(e^)).
    want = -math.log(density) - math.log(e if eos else 1 - e)
    with jax.enable_x64(True):
      got = float(hw.point_nll(jnp.asarray(y), jnp.asarray(target), 1))
    assert got == pytest.approx(want, rel=1e-6)


def test_mixture_loss_matches_a_direct_sum():
  rng = np.random.default_rng(1)
  m = 5
  y = _raw_outputs(rng, (7,), m)
  target = np.concatenate([rng.normal(size=(7, 2)), (rng.uniform(size=(7, 1)) < 0.3)], 1)
  with jax.enable_x64(True):
    got = np.asarray(hw.point_nll(jnp.asarray(y), jnp.asarray(target), m))
  for b in range(7):
    e_hat, pi_hat = y[b, 0], y[b, 1 : 1 + m]
    mu1, mu2, s1, s2, rho = (y[b, 1 + m * k : 1 + m * (k + 1)] for k in range(1, 6))
    pi = np.exp(pi_hat) / np.exp(pi_hat).sum()
    total = 0.0
    for j in range(m):
      cov = np.array([[1, np.tanh(rho[j])], [np.tanh(rho[j]), 1]]) * np.outer(
        np.exp([s1[j], s2[j]]), np.exp([s1[j], s2[j]])
      )
      total += pi[j] * stats.multivariate_normal([mu1[j], mu2[j]], cov).pdf(target[b, :2])
    e = 1 / (1 + np.exp(e_hat))
    want = -np.log(total) - np.log(e if target[b, 2] else 1 - e)
    np.testing.assert_allclose(got[b], want, rtol=1e-9)


def test_loss_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  m = 3
  with jax.enable_x64(True):
    y = jnp.asarray(_raw_outputs(rng, (4,), m))
    eos = np.array([[0], [1], [0], [1]])
    target = jnp.asarray(np.concatenate([rng.normal(size=(4, 2)), eos], 1))
    f = jax.jit(lambda v: hw.point_nll(v, target, m).sum())
    jax.test_util.check_grads(f, (y,), order=1, modes=['rev'], eps=1e-6)


def test_loss_is_finite_for_extreme_outputs():
  y = np.zeros((2, 1 + 6 * 2), np.float32)
  y[:, 1 + 5 * 2 :] = 12.0  # rho^ = 12: tanh is 1 in float32, log(1 - rho^2) is -22.6.
  y[1, 1 + 3 * 2 : 1 + 5 * 2] = -20.0  # sigma = e^-20.
  target = np.array([[0.5, 0.5, 1.0], [1e-9, 0.0, 0.0]], np.float32)
  nll, grad = jax.value_and_grad(lambda v: hw.point_nll(v, target, 2).sum())(jnp.asarray(y))
  assert np.isfinite(float(nll)) and np.all(np.isfinite(np.asarray(grad)))


def test_window_phi_matches_a_direct_sum():
  rng = np.random.default_rng(3)
  b, k, u = 3, 4, 6
  alpha, beta = np.exp(rng.normal(size=(b, k))), np.exp(rng.normal(size=(b, k)))
  kappa = rng.uniform(0, 7, size=(b, k))
  mask = np.ones((b, u))
  mask[1, 4:] = 0
  with jax.enable_x64(True):
    got = np.asarray(hw.window_weights(alpha, beta, kappa, jnp.arange(1, u + 1), mask))
  for i in range(b):
    for pos in range(1, u + 1):
      want = sum(alpha[i, j] * math.exp(-beta[i, j] * (kappa[i, j] - pos) ** 2) for j in range(k))
      assert got[i, pos - 1] == pytest.approx(want * mask[i, pos - 1], rel=1e-12)


def test_clip_gradient_clips_only_the_derivative():
  x = jnp.array([1.0, -2.0, 3.0])
  w = jnp.array([5.0, -0.5, -7.0])
  value, grad = jax.value_and_grad(lambda v: jnp.sum(w * hw.clip_gradient(v, 1.0)))(x)
  assert float(value) == float(jnp.sum(w * x))
  np.testing.assert_array_equal(np.asarray(grad), [1.0, -0.5, -1.0])


# ----------------------------------------------------------------------------------------
# The model.

ALPHABET = 7


def _model(**kw):
  kw = dict(
    alphabet_size=ALPHABET, hidden_sizes=(8, 6), num_window_components=2,
    num_mixture_components=3, norm='layer', kappa_bias_init=-1.0,
  ) | kw  # fmt: skip
  return hw.HandwritingSynthesis(**kw)


def _batch(rng, b, t, u, lengths, text_lengths):
  strokes = np.zeros((b, t, 3), np.float32)
  mask = np.zeros((b, t), np.float32)
  text = np.zeros((b, u), np.int32)
  text_mask = np.zeros((b, u), np.float32)
  for i in range(b):
    strokes[i, : lengths[i], :2] = rng.normal(size=(lengths[i], 2))
    strokes[i, : lengths[i], 2] = rng.uniform(size=lengths[i]) < 0.2
    mask[i, : lengths[i]] = 1
    text[i, : text_lengths[i]] = rng.integers(1, ALPHABET, text_lengths[i])
    text_mask[i, : text_lengths[i]] = 1
  return {'strokes': strokes, 'mask': mask, 'text': text, 'text_mask': text_mask}


def _init(model, batch):
  return model.init(
    jax.random.key(0), hw.shifted_inputs(batch['strokes']), batch['text'], batch['text_mask']
  )['params']


@functools.cache
def _loss_and_grad(model):
  """The jitted loss and gradient of ``model`` (one compile per model and shape)."""
  loss = hw.make_loss_fn(model)
  return jax.jit(jax.value_and_grad(lambda p, b: loss(p, {}, b, None)[0]))


def test_padding_changes_nothing():
  rng = np.random.default_rng(4)
  model = _model()
  short = _batch(rng, 2, 12, 4, [12, 7], [4, 2])
  long = {
    'strokes': np.pad(short['strokes'], ((0, 0), (0, 9), (0, 0))),
    'mask': np.pad(short['mask'], ((0, 0), (0, 9))),
    'text': np.pad(short['text'], ((0, 0), (0, 5)), constant_values=3),  # Garbage ids.
    'text_mask': np.pad(short['text_mask'], ((0, 0), (0, 5))),
  }
  params = _init(model, short)
  l_short, g_short = _loss_and_grad(model)(params, short)
  l_long, g_long = _loss_and_grad(model)(params, long)
  np.testing.assert_allclose(float(l_long), float(l_short), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_long, g_short)


def test_output_depends_on_the_text_through_the_window():
  rng = np.random.default_rng(5)
  batch = _batch(rng, 1, 6, 3, [6], [3])
  other = dict(batch, text=(batch['text'] % (ALPHABET - 1)) + 1)
  for sizes in ((8,), (8, 6)):
    model = _model(hidden_sizes=sizes)
    params = _init(model, batch)
    apply = jax.jit(model.apply)
    y1, win = apply({'params': params}, batch['strokes'], batch['text'], batch['text_mask'])
    y2, _ = apply({'params': params}, other['strokes'], other['text'], other['text_mask'])
    assert y1.shape == (1, 6, 1 + 6 * 3) and win.shape == (1, 6, 3, 2)
    diff = np.abs(np.asarray(y1 - y2)).max(-1)[0]
    # Layer 1 reads w_{t-1} (w_0 = 0); layers 2.. read w_t: with one layer, y_0 ignores the text.
    assert (diff[0] == 0) == (len(sizes) == 1), (sizes, diff)
    assert np.all(diff[1:] > 1e-5)
    assert np.all(np.diff(np.asarray(win[0, :, 2]), axis=0) > 0)  # kappa only moves forward.


def test_derivative_clipping_with_loose_bounds_changes_nothing_and_tight_bounds_do():
  rng = np.random.default_rng(6)
  batch = _batch(rng, 2, 9, 3, [9, 9], [3, 3])
  params = _init(_model(hidden_sizes=(8,)), batch)

  def grads(**kw):
    return _loss_and_grad(_model(hidden_sizes=(8,), **kw))(params, batch)[1]

  plain, loose, tight = grads(), grads(lstm_clip=1e9, output_clip=1e9), grads(output_clip=1e-3)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), plain, loose)
  # d loss / d b_y sums the (clipped) derivatives of the 2 x 9 outputs.
  bound = 1e-3 * 2 * 9
  assert np.abs(np.asarray(plain['mdn']['bias'])).max() > 10 * bound
  assert np.abs(np.asarray(tight['mdn']['bias'])).max() <= bound * (1 + 1e-6)


def test_one_train_step_changes_every_parameter():
  rng = np.random.default_rng(4)
  batch = _batch(rng, 2, 12, 4, [12, 7], [4, 2])  # The shapes of the padding test: no compile.
  for norm in ('none', 'layer'):
    model = _model(norm=norm)
    params = _init(model, batch)
    tx = optax.adam(1e-2)
    _, grads = _loss_and_grad(model)(params, batch)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    same = [
      jax.tree_util.keystr(k)
      for k, v in jax.tree_util.tree_leaves_with_path(
        jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, new)
      )
      if v
    ]
    assert not same, f'{norm}: unchanged after a step: {same}'
    names = set(params['core'])
    assert {'lstm_0', 'lstm_1', 'window'} <= names
    assert ('ln_h' in params['core']['lstm_0']) == (norm == 'layer')


def test_sampling_stops_when_the_window_passes_the_last_character():
  model = _model(num_window_components=2)
  rng = np.random.default_rng(8)
  batch = _batch(rng, 2, 5, 4, [5, 5], [3, 1])
  params = _init(model, batch)
  # A window that ignores h: alpha = beta = 1, kappa_t = 0.5 t (t = 1, 2, ...).
  window = params['core']['window']
  params['core']['window'] = {
    'kernel': jnp.zeros_like(window['kernel']),
    'bias': jnp.concatenate([jnp.zeros(4), jnp.full(2, math.log(0.5))]),
  }
  strokes, lengths = hw.sample(
    model, params, batch['text'], batch['text_mask'], jax.random.key(0), 0.5, 30
  )
  # phi(U + 1) > phi(u <= U) once kappa > U + 0.5, i.e. at t = 2U + 2.
  np.testing.assert_array_equal(np.asarray(lengths), [8, 4])
  strokes = np.asarray(strokes)
  assert np.all(strokes[0, 8:] == 0) and np.all(strokes[1, 4:] == 0)
  assert np.all(np.any(strokes[0, :8, :2] != 0, axis=-1))
  assert set(np.unique(strokes[..., 2])) <= {0.0, 1.0}


def _mixture_outputs(pi, mu, sigma, rho, e):
  """Raw outputs ``[1 + 6M]`` of a mixture with these parameters (inverse of the link functions)."""
  mu, sigma = np.asarray(mu), np.asarray(sigma)
  return np.concatenate([
    [-np.log(e / (1 - e))], np.log(pi), mu[:, 0], mu[:, 1],
    np.log(sigma[:, 0]), np.log(sigma[:, 1]), np.arctanh(rho),
  ]).astype(np.float32)  # fmt: skip


def test_sampling_draws_the_mixture_and_bias_sharpens_it():
  pi, mu = np.array([0.3, 0.7]), np.array([[1.0, 2.0], [-1.0, 0.0]])
  sigma, rho = np.array([[0.5, 0.3], [0.2, 0.4]]), np.array([0.5, -0.3])
  n = 20000
  y = jnp.asarray(np.tile(_mixture_outputs(pi, mu, sigma, rho, 0.2), (n, 1)))
  draw = jax.jit(hw.sample_mixture, static_argnums=(2,))
  plain = np.asarray(draw(jax.random.key(1), y, 2, 0.0))
  np.testing.assert_allclose(plain[:, :2].mean(0), pi @ mu, atol=0.03)
  assert plain[:, 2].mean() == pytest.approx(0.2, abs=0.015)
  # One component's draws: its mean, standard deviations and correlation.
  near = plain[np.linalg.norm(plain[:, :2] - mu[0], axis=1) < 2.0]
  np.testing.assert_allclose(near[:, :2].mean(0), mu[0], atol=0.03)
  np.testing.assert_allclose(near[:, :2].std(0), sigma[0], rtol=0.05)
  assert np.corrcoef(near[:, 0], near[:, 1])[0, 1] == pytest.approx(rho[0], abs=0.04)
  # Bias b: pi ~ pi^(1 + b), sigma * exp(-b).
  b = 1.0
  sharp = np.asarray(draw(jax.random.key(2), y, 2, b))
  weights = pi ** (1 + b) / np.sum(pi ** (1 + b))
  first = np.linalg.norm(sharp[:, :2] - mu[0], axis=1) < 1.0
  assert first.mean() == pytest.approx(weights[0], abs=0.015)
  np.testing.assert_allclose(sharp[first, :2].std(0), sigma[0] * np.exp(-b), rtol=0.05)


# ----------------------------------------------------------------------------------------
# Config and end to end.


def test_configs_validate_and_bad_values_fail_clearly():
  for arg in (
    'data=iam',
    'data=hershey,norm=none',
    'data=hershey,scale=paper',
    'data=iam,smoke,clip=both',
    'data=hershey,smoke,clip=none',
  ):
    config = hw_config.get_config(arg)
    runner.check_config(config)
  paper = hw_config.get_config('data=iam')
  assert tuple(paper.hidden_sizes) == (400, 400, 400) and paper.batch_size == 8
  assert paper.max_points == 500 and paper.num_window_components == 10
  assert paper.num_mixture_components == 20 and paper.derivative_clipping
  with pytest.raises(ValueError, match="data must be one of 'iam', 'hershey'"):
    hw_config.get_config('data=mnist')
  with pytest.raises(ValueError, match='unknown config arg'):
    hw_config.get_config('layers=3')
  bad = hw_config.get_config('data=hershey')
  bad.norm = 'batch'
  with pytest.raises(ValueError, match="norm must be one of 'none', 'layer'"):
    runner.check_config(bad)
  bad = hw_config.get_config('data=hershey')
  bad.sample_texts = 'caf\u00e9'
  with pytest.raises(ValueError, match='Hershey fonts lack'):
    runner.check_config(bad)
  sweep = hw_config.get_sweep('seeds=2')
  assert len(sweep) == 4 and {s['norm'] for s in sweep} == {'none', 'layer'}


def test_paper_model_has_about_3_7_million_weights():
  # IAM-OnDB's alphabet has about 80 characters (Graves: 3.7M weights with 57 + 1 classes
  # after his mapping); 3 x 400 LSTMs, K = 10, M = 20.
  config = hw_config.get_config('data=iam,norm=none')
  model = hw.make_model(config, alphabet_size=58, kappa_bias=0.0)
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 2, 3)), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4))
    )
  )
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert 3.5e6 < n < 3.9e6, n


def write_font(path: pathlib.Path) -> None:
  """A font in the exact .jhf layout: 95 records, each letter a small 2-stroke glyph."""
  lines = []
  for k in range(96):
    if k == 0:
      lines.append('12345  1JZ')  # The space: bounds only.
      continue
    a = chr(ord('R') + (k % 5) - 2)
    body = f'MW{a}FRT RPRTR'
    lines.append(f'{k:5d}{len(body) // 2:3d}{body}')
  path.write_text('\n'.join(lines) + '\n')


def write_corpus(fonts: pathlib.Path, books: pathlib.Path) -> None:
  fonts.mkdir(parents=True)
  books.mkdir(parents=True)
  for name in hershey.SCRIPT_FONTS:
    write_font(fonts / f'{name}.jhf')
  words = ['the', 'rose', 'is', 'red', 'and', 'the', 'sky', 'is', 'blue', 'we', 'go', 'now']
  text = ' '.join(words[i % len(words)] for i in range(400))
  (books / 'book.txt').write_text(text.replace('now', 'now.\n\n'))


def test_smoke_run_end_to_end(tmp_path):
  write_corpus(tmp_path / 'fonts', tmp_path / 'books')
  config = hw_config.get_config('data=hershey,smoke,norm=layer')
  config.data_dir = str(tmp_path / 'fonts')
  config.books_dir = str(tmp_path / 'books')
  workdir = tmp_path / 'run'
  final = runner.train_and_evaluate(config, workdir)
  rows = metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == [0, 2, 4, 6]
  assert final['diverged'] is False and final['step'] == 6
  for r in rows[1:]:
    assert np.isfinite(r['train/loss']) and np.isfinite(r['train/nll_per_point'])
    assert 0 < r['valid/nll_per_point'] < r['valid/nll']
  assert (workdir / 'HERSHEY_ACKNOWLEDGEMENTS.txt').read_text() == hershey.ACKNOWLEDGEMENTS
  meta = json.loads((workdir / 'data.json').read_text())
  assert meta['stand_in'] is True and meta['num_lines']['valid'] > 0
  assert list((workdir / 'images').glob('samples-6.png'))
  again = runner.train_and_evaluate(config, workdir)  # Finished: nothing changes.
  assert again == final and len(metrics.read_metrics(workdir)) == 4

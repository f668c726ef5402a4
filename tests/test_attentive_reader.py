"""The attentive reader: its formulas against float64 numpy, padding, the BN/LN cells in
it, the bucketed resumable stream with per-step entity permutations, and a smoke run
through ``python -m lnorm.main`` on .question files the test writes."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # configs/ and experiments/ live at the root.

from configs import attentive_reader as ar_config  # noqa: E402
from experiments import attentive_reader as ar  # noqa: E402
from lnorm.lab import metrics, sharding  # noqa: E402
from lnorm.lab import workdir as workdir_lib  # noqa: E402
from lnorm.lab.contract import TrainState  # noqa: E402
from lnorm.lab.data import cnn_qa  # noqa: E402
from tests.test_data_cnn_qa import write_books, write_question_dir, write_top4  # noqa: E402

# ------------------------------------------------------------------------------------------
# The formulas, against float64 numpy written from the equations.


def reference_attention(y, u, lengths, w_c, b_c, w_q, bilinear, w):
  """Loops over cases and positions: m_t, s_t, alpha (softmax over t < len), r."""
  b, t, _ = y.shape
  r = np.zeros((b, y.shape[2]))
  alpha = np.zeros((b, t))
  for i in range(b):
    n = lengths[i]
    s = np.zeros(n)
    for k in range(n):
      sim = float((bilinear.T @ y[i, k]) @ (bilinear.T @ u[i]))
      m = np.tanh(w_c.T @ y[i, k] + b_c + w_q.T @ u[i] + sim)
      s[k] = w @ m
    e = np.exp(s - s.max())
    alpha[i, :n] = e / e.sum()
    r[i] = sum(alpha[i, k] * y[i, k] for k in range(n))
  return r, alpha


def attention_inputs(seed=0, b=3, t=5, h=4, a=6):
  rng = np.random.default_rng(seed)
  return dict(
    y=rng.normal(size=(b, t, h)), u=rng.normal(size=(b, h)),
    w_c=rng.normal(size=(h, a)), b_c=rng.normal(size=a), w_q=rng.normal(size=(h, a)),
    bilinear=rng.normal(size=(h, h)) * 0.5, w=rng.normal(size=a),
  )  # fmt: skip


def test_attention_matches_the_equations():
  p = attention_inputs()
  lengths = np.array([5, 2, 1])
  mask = np.arange(5)[None] < lengths[:, None]
  with jax.enable_x64(True):
    r, alpha = ar.attention(**{k: jnp.asarray(v) for k, v in p.items()}, mask=jnp.asarray(mask))
    ref_r, ref_alpha = reference_attention(**p, lengths=lengths)
    np.testing.assert_allclose(np.asarray(alpha), ref_alpha, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(r), ref_r, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(alpha)[~mask] == 0)

    def f(y, u, w_c, b_c, w_q, bilinear, w):
      return ar.attention(y, u, jnp.asarray(mask), w_c, b_c, w_q, bilinear, w)[0]

    args = [jnp.asarray(p[k]) for k in ('y', 'u', 'w_c', 'b_c', 'w_q', 'bilinear', 'w')]
    check_grads(f, args, order=1, modes=['rev'], eps=1e-6)


def test_masked_mean_nll_and_candidates():
  rng = np.random.default_rng(1)
  y = rng.normal(size=(2, 4, 3))
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  with jax.enable_x64(True):
    got = np.asarray(ar.masked_mean(jnp.asarray(y), jnp.asarray(mask)))
    np.testing.assert_allclose(got, [y[0, :2].mean(0), y[1].mean(0)], rtol=1e-13)
    logits = rng.normal(size=(3, 7)) * 5
    logits[2, 4] = -60.0  # p[a] far below 1e-8: the cost saturates at -log(1e-8).
    answers = np.array([0, 6, 4])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = -np.log(p[np.arange(3), answers] + 1e-8)
    got = np.asarray(ar.answer_nll(jnp.asarray(logits), jnp.asarray(answers)))
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got[2] == pytest.approx(-np.log(1e-8), rel=1e-3)
  docs = np.array([[3, 5, 3, 9], [4, 1, 0, 0]])
  is_entity = np.zeros(10, bool)
  is_entity[[3, 4, 5]] = True
  cand = np.asarray(
    ar.candidate_mask(jnp.asarray(docs), jnp.asarray([3, 2]), jnp.asarray(is_entity))
  )
  expected = np.zeros((2, 10), bool)
  expected[0, [3, 5]] = True  # 9 is no entity; position 3 is real but holds 9.
  expected[1, 4] = True  # 0 at the padded positions is not counted.
  np.testing.assert_array_equal(cand, expected)
  restricted = np.asarray(ar.restrict_to_candidates(jnp.ones((2, 10)), jnp.asarray(expected)))
  assert np.isinf(restricted[~expected]).all() and (restricted[expected] == 1).all()


# ------------------------------------------------------------------------------------------
# The model.


def random_batch(seed, b=4, t=9, q=5, vocab=30, doc_len=None):
  rng = np.random.default_rng(seed)
  doc_len = np.asarray(doc_len if doc_len is not None else rng.integers(1, t + 1, b), np.int32)
  query_len = rng.integers(1, q + 1, b).astype(np.int32)
  doc = rng.integers(1, vocab, (b, t)).astype(np.int32)
  doc[np.arange(t)[None] >= doc_len[:, None]] = 0
  query = rng.integers(1, vocab, (b, q)).astype(np.int32)
  query[np.arange(q)[None] >= query_len[:, None]] = 0
  answer = rng.integers(1, vocab, b).astype(np.int32)
  return {'doc': doc, 'doc_len': doc_len, 'query': query, 'query_len': query_len, 'answer': answer}


def small_config(**overrides):
  c = ar_config.get_config('smoke')
  c.update(overrides)
  return c


def pad_to(batch, t, q):
  out = dict(batch)
  out['doc'] = np.pad(batch['doc'], ((0, 0), (0, t - batch['doc'].shape[1])))
  out['query'] = np.pad(batch['query'], ((0, 0), (0, q - batch['query'].shape[1])))
  return out


@pytest.mark.parametrize('norm', ['none', 'layer', 'batch'])
def test_padding_never_changes_the_logits(norm):
  # Without dropout, whose masks depend on the padded shape.
  _, model = ar.make_model(small_config(norm=norm, max_doc_len=16, dropout_rate=0.0), 30, 8)
  params, state = model.init(jax.random.key(0))
  batch = random_batch(0)
  short, _ = model.apply(params, state, batch, train=False)
  longer, _ = model.apply(params, state, pad_to(batch, 16, 8), train=False)
  np.testing.assert_allclose(np.asarray(short), np.asarray(longer), rtol=1e-5, atol=1e-6)
  if norm == 'layer':  # In training too (BN's batch statistics include padded positions).
    kw = dict(train=True, rng=jax.random.key(3))
    a, _ = model.apply(params, state, batch, **kw)
    b, _ = model.apply(params, state, pad_to(batch, 16, 8), **kw)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_cells_norms_and_gains():
  none = ar.make_model(small_config(norm='none'), 30, 5)[1].init(jax.random.key(0))
  layer = ar.make_model(small_config(norm='layer'), 30, 5)[1].init(jax.random.key(0))
  gain = ar.make_model(small_config(norm='layer', ln_gain=0.1), 30, 5)[1].init(jax.random.key(0))
  batch = ar.make_model(small_config(norm='batch'), 30, 5)[1].init(jax.random.key(0))
  flat = lambda tree: {
    '/'.join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }  # noqa: E731
  n, ln, g, bn = flat(none[0]), flat(layer[0]), flat(gain[0]), flat(batch[0])
  assert not any('ln_' in k for k in n) and none[1] == {}
  for lstm in ('doc_lstm', 'query_lstm'):
    assert f'{lstm}/h0' in n and f'{lstm}/h0' in ln and f'{lstm}/h0' in bn
    for part in ('ln_h', 'ln_x', 'ln_c'):
      assert (ln[f'{lstm}/cell/{part}/scale'] == 1).all()
      assert np.allclose(g[f'{lstm}/cell/{part}/scale'], 0.1)
      assert (g[f'{lstm}/cell/{part}/bias'] == 0).all()
    for part in ('bn_h', 'bn_x', 'bn_c'):
      assert np.allclose(bn[f'{lstm}/cell/{part}/scale'], 0.1)  # Cooijmans et al.'s gamma.
  stats = flat(batch[1])
  assert stats['batch_stats/doc_lstm/cell/bn_h/mean'].shape == (48, 4 * 8)  # T_max = max_doc_len.
  assert stats['batch_stats/query_lstm/cell/bn_c/var'].shape == (5, 8)
  # Apart from the gains, LN-LSTM with gain 0.1 starts where LN-LSTM with gain 1 does.
  assert all(np.array_equal(ln[k], g[k]) for k in ln if not k.endswith('scale'))


def test_batch_norm_statistics_update_in_training_only():
  _, model = ar.make_model(small_config(norm='batch'), 30, 5)
  params, state = model.init(jax.random.key(0))
  batch = random_batch(1, t=6)
  _, same = model.apply(params, state, batch, train=False, update_state=True)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), same, state))
  _, new = model.apply(params, state, batch, train=True, rng=jax.random.key(1), update_state=True)
  mean = new['batch_stats']['doc_lstm']['cell']['bn_x']['mean']
  old = state['batch_stats']['doc_lstm']['cell']['bn_x']['mean']
  assert not np.array_equal(mean[:6], old[:6])  # Steps 0-5 ran,
  np.testing.assert_array_equal(mean[6:], old[6:])  # the others did not.


def test_loss_learns_a_tiny_task():
  """Answer = the entity at the first position of the document: 60 Adam steps learn it."""
  import optax

  rng = np.random.default_rng(0)
  b, t = 16, 6
  doc = rng.integers(8, 20, (b, t)).astype(np.int32)
  doc[:, 0] = rng.integers(3, 8, b)
  batch = {'doc': doc, 'doc_len': np.full(b, t, np.int32), 'query': np.ones((b, 2), np.int32),
           'query_len': np.full(b, 2, np.int32), 'answer': doc[:, 0].copy()}  # fmt: skip
  _, model = ar.make_model(small_config(norm='layer', dropout_rate=0.0, hidden_dim=16), 20, 2)
  is_entity = np.zeros(20, bool)
  is_entity[3:8] = True
  loss_fn = ar.make_loss_fn(model, is_entity, candidate_softmax=False)
  params, state = model.init(jax.random.key(0))
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, (m, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(
      params, state, batch, jax.random.key(0)
    )
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt, loss, m['error']

  first = None
  for _ in range(60):
    params, opt, loss, error = step(params, opt)
    first = loss if first is None else first
  assert float(loss) < 0.2 * float(first) and float(error) == 0.0


# ------------------------------------------------------------------------------------------
# The training stream.


def test_epoch_plan_runs_and_resume():
  rng = np.random.default_rng(0)
  buckets = rng.choice([10, 20, 30], 200, p=[0.5, 0.3, 0.2])
  plan = ar.epoch_plan(buckets, batch_size=4, run_length=3, seed=7, epoch=0)
  assert plan.shape[1] == 4 and len(plan) % 3 == 0
  for start in range(0, len(plan), 3):  # Every run of 3 steps has one bucket.
    assert len(set(buckets[plan[start : start + 3]].ravel().tolist())) == 1
  assert len(np.unique(plan)) == plan.size  # Each example at most once per epoch.
  expected = sum(3 * (np.sum(buckets == b) // 12) for b in (10, 20, 30))
  assert len(plan) == expected
  other = ar.epoch_plan(buckets, 4, 3, seed=7, epoch=1)
  assert len(other) == len(plan) and not np.array_equal(other, plan)
  np.testing.assert_array_equal(ar.epoch_plan(buckets, 4, 3, seed=7, epoch=1), other)

  data = ar.bucketed_runs(
    buckets, 4, 3, seed=7, gather=lambda idx, length, step: (idx, length, step)
  )
  n = data.steps_per_epoch
  full = [b for _, b in zip(range(2 * n + 5), data.batches(0), strict=False)]
  resumed = [b for _, b in zip(range(n + 5), data.batches(n), strict=False)]
  for a, b in zip(full[n:], resumed, strict=True):
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
  assert all(length == buckets[idx[0]] for idx, length, _ in full)
  with pytest.raises(ValueError, match='no length bucket holds'):
    ar.bucketed_runs(buckets[:20], 4, 3, 0, lambda *a: a)


def test_entity_permutation_is_per_step_and_consistent():
  entity_ids = np.array([3, 4, 5, 6], np.int32)
  t0 = ar.entity_permutation(entity_ids, 10, seed=1, step=0)
  np.testing.assert_array_equal(ar.entity_permutation(entity_ids, 10, seed=1, step=0), t0)
  tables = [ar.entity_permutation(entity_ids, 10, seed=1, step=s) for s in range(20)]
  assert len({t.tobytes() for t in tables}) > 10
  for t in tables:
    assert sorted(t[entity_ids].tolist()) == entity_ids.tolist()  # A permutation of entities,
    np.testing.assert_array_equal(t[[0, 1, 2, 7, 8, 9]], [0, 1, 2, 7, 8, 9])  # others fixed.
  split = cnn_qa.QASplit([np.array([3, 8, 4, 3]), np.array([6, 9])],
                         [np.array([2, 5]), np.array([7])], np.array([3, 6], np.int32))  # fmt: skip
  batch = ar.make_batch(split, np.array([0, 1]), 4, 3, tables[5])
  for i in range(2):  # The answer moves with its entity: still where it was in the document.
    real = batch['doc'][i, : batch['doc_len'][i]]
    np.testing.assert_array_equal(real == batch['answer'][i], split.docs[i] == split.answers[i])
  assert batch['doc'].shape == (2, 4) and batch['query'].shape == (2, 3)
  assert batch['doc'][1, 2:].tolist() == [0, 0] and batch['query_len'].tolist() == [2, 1]


def test_evaluate_split_does_not_depend_on_the_batch_size():
  mesh = sharding.make_mesh()
  _, model = ar.make_model(small_config(norm='batch'), 30, 5)
  params, state = model.init(jax.random.key(0))
  ts = TrainState(jnp.zeros((), jnp.int32), params, state, None)
  rng = np.random.default_rng(2)
  n = 11
  split = cnn_qa.QASplit(
    [rng.integers(1, 30, rng.integers(1, 40)).astype(np.int32) for _ in range(n)],
    [rng.integers(1, 30, rng.integers(1, 6)).astype(np.int32) for _ in range(n)],
    rng.integers(1, 30, n).astype(np.int32),
  )
  eval_fn = ar.make_eval_fn(model, np.ones(30, bool), candidate_softmax=False)
  bounds = (12, 24, 48)
  a = ar.evaluate_split(eval_fn, ts, split, bounds, 5, 4, mesh)
  b = ar.evaluate_split(eval_fn, ts, split, bounds, 5, 16, mesh)
  assert a['nll'] == pytest.approx(b['nll'], rel=1e-5) and a['error'] == b['error']
  # One example at a time, by hand.
  per = [eval_fn(ts, ar.make_batch(split, np.array([i]), 48, 5)) for i in range(n)]
  assert a['nll'] == pytest.approx(np.mean([float(p['nll'][0]) for p in per]), rel=1e-5)


def test_heuristic_errors():
  split = cnn_qa.QASplit(
    [np.array([3, 9, 4, 4]), np.array([5, 3, 3, 5]), np.array([9, 9])],
    [np.array([1])] * 3,
    np.array([4, 3, 5], np.int32),
  )
  got = ar.heuristic_errors(split, np.array([3, 4, 5]))
  # Most frequent: 4 (right), 5 (tie with 3, mentioned first: wrong), none (wrong).
  assert got['most_frequent'] == pytest.approx(2 / 3)
  assert got['uniform_candidate'] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


# ------------------------------------------------------------------------------------------
# Configs, errors, and end to end.


@pytest.mark.parametrize(
  'arg, match',
  [('norm=group', 'norm must be one of'), ('data=cnn2', 'data must be one of'),
   ('size=huge', 'size must be one of'), ('context=top8', 'context must be one of'),
   ('colour=red', 'unknown config arg')],
)  # fmt: skip
def test_bad_config_values_fail_clearly(arg, match):
  with pytest.raises(ValueError, match=match):
    ar.check_config(ar_config.get_config(arg))


def test_configs_and_sweep():
  paper = ar_config.get_config('data=cnn,norm=batch')
  assert (paper.embed_dim, paper.hidden_dim, paper.batch_size) == (240, 240, 64)
  assert (paper.learning_rate, paper.grad_clip_norm, paper.eval_every_steps) == (8e-5, 10.0, 1000)
  assert paper.dropout_rate == 0.5 and paper.bn_gamma == 0.1 and not paper.candidate_softmax
  cpu = ar_config.get_config('norm=none')
  assert cpu.size == 'cpu' and cpu.data == 'books' and cpu.steps_per_call == cpu.batches_per_run
  for c in (paper, cpu, ar_config.get_config('smoke')):
    ar.check_config(c)
  sweep = ar_config.get_sweep('ln_gains')
  assert [(r['norm'], r.get('ln_gain')) for r in sweep] == [
    ('none', None), ('batch', None), ('layer', None), ('layer', 0.1)
  ]  # fmt: skip
  c = small_config()
  c.dropout_rate = 1.0
  with pytest.raises(ValueError, match='dropout_rate must be in'):
    ar.check_config(c)


def test_missing_data_fails_clearly(tmp_path, monkeypatch):
  monkeypatch.setenv('LNORM_DATA_DIR', str(tmp_path))
  with pytest.raises(FileNotFoundError, match="top4 needs Cooijmans et al.'s pickles"):
    ar.load_data(ar_config.get_config('data=top4'))
  with pytest.raises(FileNotFoundError, match='no training/ folder'):
    ar.load_data(ar_config.get_config(f'data=cnn,data_dir={tmp_path}'))
  with pytest.raises(FileNotFoundError, match='does not exist; build it'):
    ar.load_data(ar_config.get_config(f'data=books,data_dir={tmp_path / "none"}'))


def test_books_stand_in_is_built_on_first_use_and_checked(tmp_path, monkeypatch):
  books = write_books(tmp_path / 'books')
  monkeypatch.setenv('LNORM_DATA_DIR', str(tmp_path / 'empty'))
  monkeypatch.setattr(workdir_lib, 'REPO_ROOT', tmp_path / 'repo')
  config = ar_config.get_config(f'data=books,smoke,books_dir={books}')
  config.cloze_valid_books, config.cloze_test_books = 'beta', 'gamma'
  path = ar.books_cloze_dir(config)
  assert path == tmp_path / 'repo' / 'data' / 'books_cloze' / 'top4'
  args = cnn_qa.read_build_args(path)
  assert args['valid_books'] == ['beta'] and args['version'] == cnn_qa.CLOZE_VERSION
  assert ar.books_cloze_dir(config) == path  # Found, not rebuilt.
  with pytest.raises(ValueError, match="built with context='top4', not 'full' as the config"):
    ar.books_cloze_dir(ar_config.get_config(f'data=books,context=full,data_dir={path}'))
  with pytest.raises(ValueError, match=r"valid_books=\['beta'\], not \['persuasion'"):
    ar.books_cloze_dir(ar_config.get_config(f'data=books,data_dir={path}'))
  (path / cnn_qa.BUILD_FILE).write_text('{"args": {"context": "top4"}}')
  with pytest.raises(ValueError, match='older recipe .version 1, now 2.: rebuild it'):
    ar.books_cloze_dir(ar_config.get_config(f'data=books,data_dir={path}'))


def test_top4_experiment_runs_a_step(tmp_path):
  """The pickles feed the same experiment: one training call and an evaluation."""
  write_top4(tmp_path / 'top4')
  config = small_config(data='top4', data_dir=str(tmp_path / 'top4'), batch_size=2,
                        batches_per_run=1, steps_per_call=1, num_valid=0)  # fmt: skip
  data = ar.load_data(config)
  assert len(data.words) == 11 and data.placeholder_id == 4
  exp = ar.make_experiment(config, tmp_path / 'run', sharding.make_mesh(), data)
  params, state = exp.init(jax.random.key(0))
  batch = next(exp.train.batches(0))
  loss, (m, _) = exp.loss(params, state, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and 0 <= float(m['error']) <= 1
  ts = TrainState(jnp.zeros((), jnp.int32), params, state, None)
  out = exp.evaluators[0].fn(ts)
  assert set(out) == {'valid/nll', 'valid/error'}


def test_end_to_end_through_main(tmp_path):
  root = write_question_dir(tmp_path / 'qa', n_train=40, n_valid=6, n_test=4)
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', LNORM_JAX_CACHE=str(tmp_path / 'cache'))
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  cmd = [sys.executable, '-m', 'lnorm.main',
         f'--config=configs/attentive_reader.py:data=cnn,smoke,norm=batch,data_dir={root}',
         f'--workdir={workdir}']  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == [0, 2, 4]
  assert all(0 <= r['valid/error'] <= 1 and np.isfinite(r['valid/nll']) for r in rows)
  assert 'test/error' in rows[-1] and 'train/loss' in rows[1]
  final = json.loads((workdir / 'final.json').read_text())
  assert final['step'] == 4 and not final['diverged'] and final['train_examples_per_s'] > 0
  stats = json.loads((workdir / ar.STATS_FILE).read_text())
  assert stats['train']['examples'] == 40 and stats['train']['used'] == 40
  assert stats['valid']['answer_absent'] == 0

"""Order embeddings (§6.1): energies, loss, the original's Adam, retrieval metrics, data, runs.

The formulas are checked against float64 numpy written out from the equations (and the
original code's algorithms), the retrieval metrics against a small error matrix whose
answers are worked out by hand in the comments. The stand-in data modules run on small
files the tests write; the end-to-end runs go through ``python -m lnorm.main``.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import order_embeddings as oe_config  # noqa: E402
from experiments import order_embeddings as oe  # noqa: E402
from lnorm.lab import metrics, optimizers, runner, sharding  # noqa: E402
from lnorm.lab import text as text_lib  # noqa: E402
from lnorm.lab.data import book_passages, sick_order  # noqa: E402

# ------------------------------------------------------------------------------------------
# Energies and losses.


def test_order_violation_and_error_matrices_match_the_equations():
  rng = np.random.default_rng(0)
  s, im = rng.random((4, 6)), rng.random((3, 6))
  e = np.asarray(oe.error_matrix(jnp.asarray(s, jnp.float32), jnp.asarray(im, jnp.float32)))
  ref = np.array([[sum(max(0.0, a - b) ** 2 for a, b in zip(si, mj, strict=True)) for mj in im]
                  for si in s])  # fmt: skip
  np.testing.assert_allclose(e, ref, rtol=1e-5)
  cos = np.asarray(oe.error_matrix(jnp.asarray(s), jnp.asarray(im), 'cosine'))
  np.testing.assert_allclose(cos, -s @ im.T, rtol=1e-5)
  # Captions nearer the origin than their image violate nothing.
  assert float(oe.order_violation(jnp.array([0.1, 0.2]), jnp.array([0.3, 0.2]))) == 0.0
  with pytest.raises(ValueError, match="unknown method 'dot'"):
    oe.error_matrix(jnp.asarray(s), jnp.asarray(im), 'dot')


def _contrastive_reference(e: np.ndarray, margin: float) -> float:
  """The order-embeddings loss written out: a double loop in float64."""
  total = 0.0
  for i in range(e.shape[0]):
    for j in range(e.shape[1]):
      if i != j:
        total += max(0.0, margin - e[i, j] + e[j, j]) + max(0.0, margin - e[i, j] + e[i, i])
  return total


def test_contrastive_loss_matches_the_written_out_sum():
  # By hand: e = [[0.0, 0.3], [0.02, 0.1]], margin 0.05.
  # (0, 1): max(0, .05 - .3 + .1) + max(0, .05 - .3 + 0) = 0 + 0
  # (1, 0): max(0, .05 - .02 + 0) + max(0, .05 - .02 + .1) = .03 + .13
  e = jnp.array([[0.0, 0.3], [0.02, 0.1]])
  assert float(oe.contrastive_loss(e, 0.05)) == pytest.approx(0.16, abs=1e-7)
  rng = np.random.default_rng(1)
  e = rng.random((7, 7)) * 0.3
  got = float(oe.contrastive_loss(jnp.asarray(e, jnp.float32), 0.05))
  assert got == pytest.approx(_contrastive_reference(e, 0.05), rel=1e-5)


def test_pair_loss_matches_the_written_out_sum():
  e, y = np.array([0.0, 0.5, 0.1, 0.3]), np.array([1, 1, 0, 0])
  ref = 0.0 + 0.5 + max(0, 0.2 - 0.1) + max(0, 0.2 - 0.3)  # positives: E; negatives: hinge.
  assert float(oe.pair_loss(jnp.asarray(e), jnp.asarray(y), 0.2)) == pytest.approx(ref)


def test_gradients_of_the_energies_and_loss_match_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    # Away from the kinks of max(0, .): differences of at least 0.05.
    s = jnp.asarray(rng.choice([-1, 1], (4, 5)) * (0.05 + rng.random((4, 5))) + 0.5)
    im = jnp.asarray(0.5 + 0.0 * s[:3])
    check_grads(lambda a, b: oe.order_violation(a[:, None], b[None]), (s, im), order=1,
                modes=['rev'], atol=1e-6, rtol=1e-6)  # fmt: skip
    e = jnp.asarray(rng.random((5, 5)))
    check_grads(lambda x: oe.contrastive_loss(x, 0.05), (e,), order=1, modes=['rev'])
    x = jnp.asarray(rng.normal(size=(3, 4)))
    check_grads(oe.l2_normalize, (x,), order=1, modes=['rev'])


def test_l2_normalize_gives_unit_rows_and_no_nan_for_zero():
  x = jnp.array([[3.0, -4.0], [0.0, 0.0]])
  y = np.asarray(oe.l2_normalize(x))
  np.testing.assert_allclose(y[0], [0.6, -0.8], rtol=1e-6)
  np.testing.assert_array_equal(y[1], [0.0, 0.0])


# ------------------------------------------------------------------------------------------
# The original's Adam, and per-tensor clipping through the registry.


def _order_adam_reference(grads, lr, steps):
  """The update of optim.adam in the order-embeddings code, float64."""
  p = {k: np.zeros_like(v[0]) for k, v in grads.items()}
  m = {k: np.zeros_like(v[0]) for k, v in grads.items()}
  v2 = {k: np.zeros_like(v[0]) for k, v in grads.items()}
  for t in range(1, steps + 1):
    lr_t = lr * np.sqrt(1.0 - 0.001**t) / (1.0 - 0.1**t)
    for k in p:
      g = grads[k][t - 1]
      m[k] = 0.1 * g + 0.9 * m[k]
      v2[k] = 0.001 * g**2 + 0.999 * v2[k]
      p[k] = p[k] - lr_t * m[k] / (np.sqrt(v2[k]) + 1e-8)
  return p


def test_order_adam_matches_the_original_formula():
  rng = np.random.default_rng(3)
  grads = {'w': rng.normal(size=(6, 3, 2)), 'b': rng.normal(size=(6, 2)) * 1e-3}
  tx = oe.order_adam(1e-3)
  params = {k: jnp.zeros(v.shape[1:], jnp.float32) for k, v in grads.items()}
  state = tx.init(params)
  for t in range(6):
    updates, state = tx.update({k: jnp.asarray(v[t], jnp.float32) for k, v in grads.items()},
                               state, params)  # fmt: skip
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  ref = _order_adam_reference(grads, 1e-3, 6)
  for k in ref:
    np.testing.assert_allclose(np.asarray(params[k]), ref[k], rtol=1e-5, atol=1e-9)
  # Step 1 is sqrt(0.999) / 0.9 * 0.1 / sqrt(0.001) = 3.51 lr per coordinate (Adam: lr).
  first, _ = tx.update({'w': jnp.ones((3, 2)), 'b': -jnp.ones(2)}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(first['w']), -3.51188e-3, rtol=1e-5)


def test_order_adam_is_registered_and_clipped_per_tensor_first():
  config = oe_config.get_config('data=books,smoke')
  assert config.optimizer == 'order_adam' and config.grad_clip_per_tensor == 2.0
  assert 'order_adam' in optimizers.OPTIMIZERS
  tx, _ = optimizers.make_optimizer(config, 10)
  big = np.full((2, 2), 3.0)  # norm 6: scaled to norm 2.
  small = np.array([0.3, -0.4])  # norm 0.5: kept.
  params = {'big': jnp.zeros((2, 2)), 'small': jnp.zeros(2)}
  updates, _ = tx.update({'big': jnp.asarray(big), 'small': jnp.asarray(small)},
                         tx.init(params), params)  # fmt: skip
  ref = _order_adam_reference({'big': (big / 3.0)[None], 'small': small[None]}, 1e-3, 1)
  for k in ref:
    np.testing.assert_allclose(np.asarray(updates[k]), ref[k], rtol=1e-5)
  # Standard Adam is the other option.
  adam_config = oe_config.get_config('data=books,smoke,optimizer=adam')
  tx, _ = optimizers.make_optimizer(adam_config, 10)
  updates, _ = tx.update({'big': jnp.asarray(big), 'small': jnp.asarray(small)},
                         tx.init(params), params)  # fmt: skip
  np.testing.assert_allclose(np.asarray(updates['small']), [-1e-3, 1e-3], rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Retrieval and threshold metrics.

# 3 images, 5 captions each (captions 0-4: image 0, 5-9: image 1, 10-14: image 2).
HAND_ERRORS = np.array([
  [0.1, 0.5, 0.9],  # c0  true 0.1: nothing smaller                       -> rank 0
  [0.6, 0.2, 0.9],  # c1  true 0.6: 0.2 smaller                           -> 1
  [0.9, 0.3, 0.1],  # c2  true 0.9: two smaller                           -> 2
  [0.4, 0.4, 0.8],  # c3  tie with image 1, which has the larger index    -> 0
  [0.7, 0.1, 0.5],  # c4                                                  -> 2
  [0.3, 0.3, 0.1],  # c5  true 0.3: 0.1 smaller, tie with image 0 before  -> 2
  [0.8, 0.2, 0.6],  # c6                                                  -> 0
  [0.5, 0.6, 0.2],  # c7                                                  -> 2
  [0.9, 0.4, 0.5],  # c8                                                  -> 0
  [0.1, 0.7, 0.3],  # c9                                                  -> 2
  [0.2, 0.9, 0.6],  # c10 true 0.6: 0.2 smaller                           -> 1
  [0.5, 0.5, 0.5],  # c11 all tied; images 0 and 1 come first             -> 2
  [0.4, 0.8, 0.3],  # c12                                                 -> 0
  [0.9, 0.9, 0.2],  # c13                                                 -> 0
  [0.1, 0.2, 0.7],  # c14                                                 -> 2
])  # fmt: skip
HAND_IMAGE_RANKS = [0, 1, 2, 0, 2, 2, 0, 2, 0, 2, 1, 2, 0, 0, 2]
# Caption retrieval, by column: image 0's best own caption is c0 (0.1, the first of three
# 0.1s) -> 0. Image 1: c6 (0.2) has c4 (0.1) below it and c1 (0.2) tied before it -> 2.
# Image 2: c13 (0.2) has c2, c5 (0.1) below and c7 (0.2) tied before it -> 3.
HAND_CAPTION_RANKS = [0, 2, 3]


def test_retrieval_metrics_on_a_hand_worked_matrix():
  image_ranks, caption_ranks = oe.retrieval_ranks(HAND_ERRORS)
  assert image_ranks.tolist() == HAND_IMAGE_RANKS
  assert caption_ranks.tolist() == HAND_CAPTION_RANKS
  m = oe.retrieval_metrics(HAND_ERRORS)
  # Image ranks: six 0s, two 1s, seven 2s. R@1 = 6/15; median (8th of 15) = 1 -> 2;
  # mean = 16/15 -> 1 + 16/15.
  assert m['image_r1'] == pytest.approx(40.0)
  assert m['image_r5'] == m['image_r10'] == 100.0
  assert m['image_medr'] == 2.0 and m['image_meanr'] == pytest.approx(1 + 16 / 15)
  assert m['image_rsum'] == pytest.approx(240.0)
  # Caption ranks 0, 2, 3: R@1 = 1/3; median 2 -> 3; mean 5/3 -> 1 + 5/3.
  assert m['caption_r1'] == pytest.approx(100 / 3)
  assert m['caption_medr'] == 3.0 and m['caption_meanr'] == pytest.approx(1 + 5 / 3)


def _original_t2i_i2t(c2i):
  """The original evaluation.py t2i / i2t ranks, with a stable argsort."""
  t2i = [int(np.where(np.argsort(row, kind='stable') == i // 5)[0][0])
         for i, row in enumerate(c2i)]  # fmt: skip
  i2t = [int(np.where(np.argsort(c2i[:, i], kind='stable') // 5 == i)[0][0])
         for i in range(c2i.shape[1])]  # fmt: skip
  return t2i, i2t


@pytest.mark.parametrize('n, levels', [(30, 4), (40, 1000)])
def test_retrieval_ranks_agree_with_the_original_algorithm(n, levels):
  rng = np.random.default_rng(n)
  errors = rng.integers(0, levels, (5 * n, n)).astype(np.float32)  # Few levels: many ties.
  image_ranks, caption_ranks = oe.retrieval_ranks(errors)
  t2i, i2t = _original_t2i_i2t(errors)
  assert image_ranks.tolist() == t2i and caption_ranks.tolist() == i2t


def test_retrieval_ranks_reject_a_wrong_shape():
  with pytest.raises(ValueError, match=r'errors must be \[5 N, N\]'):
    oe.retrieval_ranks(np.zeros((9, 2)))


def test_best_threshold_by_hand_with_ties():
  # Cuts at the end of each tie group: t=0.0 -> 3/6, t=0.2 -> 4/6, t=0.5 -> 4/6 (the
  # smaller wins), t=0.9 -> 3/6.
  errors = np.array([0.0, 0.0, 0.2, 0.5, 0.5, 0.9])
  labels = np.array([1, 0, 1, 0, 1, 0])
  threshold, accuracy = oe.best_threshold(errors, labels)
  assert threshold == 0.2 and accuracy == pytest.approx(400 / 6)
  assert oe.threshold_accuracy(errors, labels, threshold) == pytest.approx(accuracy)
  assert oe.threshold_accuracy(errors, labels, 0.0) == pytest.approx(50.0)


def test_fold_bounds():
  assert oe.fold_bounds(5000, 1000, 5) == [(i * 1000, (i + 1) * 1000) for i in range(5)]
  assert oe.fold_bounds(2684, 1000, 0) == [(0, 1000), (1000, 2000)]
  assert oe.fold_bounds(300, 1000, 5) == [(0, 300)]


# ------------------------------------------------------------------------------------------
# Model.


def _module(norm='layer', method='order', image_dim=12):
  return oe.OrderEmbeddings(vocab_size=30, embed_dim=6, hidden_dim=8, norm=norm,
                            image_dim=image_dim, absolute=method == 'order')  # fmt: skip


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_caption_vectors_ignore_padding_and_are_positive_unit_vectors(norm):
  module = _module(norm)
  params, _ = oe.init_model(module).init(jax.random.key(0))
  seqs = [np.array([5, 6, 7, 1]), np.array([8, 1]), np.array([9, 10, 11, 12, 13, 1])]
  encode = jax.jit(lambda i, n: module.apply({'params': params}, i, n, method='encode_text'))
  ids, lengths = text_lib.pad_batch(seqs, length=8)
  vectors = np.asarray(encode(ids, lengths))
  garbage = np.where(ids == text_lib.PAD_ID, 17, ids)
  np.testing.assert_allclose(np.asarray(encode(garbage, lengths)), vectors, atol=1e-6)
  alone = encode(seqs[1][None].astype(np.int32), np.array([2], np.int32))  # No padding at all.
  np.testing.assert_allclose(np.asarray(alone)[0], vectors[1], rtol=1e-5, atol=1e-6)
  assert np.all(vectors >= 0)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  # The embedder of the evaluation (sorted, bucketed, padded batches) agrees.
  embed = oe.make_text_embedder(module, batch_size=2, bucket_width=4)
  np.testing.assert_allclose(embed(params, seqs), vectors, rtol=1e-5, atol=1e-6)


def test_image_embedding_is_the_formula_and_cosine_keeps_signs():
  rng = np.random.default_rng(4)
  v = rng.random((3, 12)).astype(np.float32)
  for method in ('order', 'cosine'):
    module = _module(method=method)
    params, _ = oe.init_model(module).init(jax.random.key(1))
    got = np.asarray(module.apply({'params': params}, v, method='encode_images'))
    w = np.asarray(params['image_projection']['kernel'], np.float64)
    b = np.asarray(params['image_projection']['bias'], np.float64)
    x = v @ w + b
    ref = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(got, np.abs(ref) if method == 'order' else ref, rtol=1e-5,
                               atol=1e-6)  # fmt: skip
  # The original's initialization: U[-0.1, 0.1] words and GRU input matrices.
  emb = np.asarray(params['embed']['embedding'])
  assert emb.min() >= -0.1 and emb.max() <= 0.1 and emb.std() > 0.04
  assert np.abs(np.asarray(params['encoder']['cell']['input_kernel'])).max() <= 0.1


def test_text_only_model_for_sick_has_no_image_side():
  module = _module(image_dim=0)
  params, _ = oe.init_model(module).init(jax.random.key(0))
  assert 'image_projection' not in params


# ------------------------------------------------------------------------------------------
# Batches and the best model.


def test_retrieval_stream_pairs_images_with_their_own_captions_and_resumes():
  n, k, b = 10, 5, 4
  images = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  captions = [np.array([3 + c // k] * (1 + c % 3) + [text_lib.EOS_ID], np.int32)
              for c in range(k * n)]  # fmt: skip
  train = oe.retrieval_stream(images, captions, b, seed=7, bucket_width=4, captions_per_image=k)
  assert train.steps_per_epoch == 2
  it = train.batches(0)
  batches = [next(it) for _ in range(6)]
  seen = set()
  for step, batch in enumerate(batches):
    image_ids = batch['images'][:, 0].astype(int)
    assert np.all(batch['ids'][:, 0] - 3 == image_ids)  # Each caption is of its own image.
    assert batch['ids'].shape[1] % 4 == 0 and batch['images'].dtype == np.float32
    if step < 2:
      seen |= set(image_ids.tolist())
  assert len(seen) == 8  # One epoch: 8 distinct images (the last 10 % 4 dropped).
  again = next(train.batches(3))  # Resuming at step 3 gives step 3's batch.
  for key in again:
    np.testing.assert_array_equal(again[key], batches[3][key])


def test_best_model_keeps_the_best_and_replays_a_lost_part(tmp_path):
  params = {'w': jnp.arange(3.0)}
  best = oe.BestModel(tmp_path / 'best')
  assert best.offer(0, 10.0, params)
  assert not best.offer(50, 5.0, {'w': jnp.zeros(3)})
  assert best.offer(100, 20.0, {'w': jnp.ones(3)})
  assert best.best() == (100, 20.0)
  # A run killed after step 100 and resumed from step 50 evaluates step 100 again: the
  # record of the lost part is forgotten, so the replayed evaluation counts afresh.
  resumed = oe.BestModel(tmp_path / 'best')
  assert resumed.best() == (100, 20.0)
  assert resumed.offer(100, 20.0, {'w': jnp.ones(3)})
  np.testing.assert_array_equal(resumed.params(params)['w'], np.ones(3))
  assert oe.read_best(tmp_path) == {'step': 100, 'score': 20.0}


# ------------------------------------------------------------------------------------------
# The stand-in data modules, on files written here.

SICK_HEADER = 'pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment'
SUBJECTS = ('A man', 'A woman', 'The dog', 'A child', 'The cat', 'Two men')
VERBS = ('is running', 'is eating', 'is sleeping', 'is playing', 'is jumping')


def write_sick(root: pathlib.Path, sizes=(60, 20, 30)) -> pathlib.Path:
  """SICK files in SentEval's layout: 'X is V outside' entails 'X is V'; other pairs not."""
  (root / 'SICK').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  names = ('SICK_train.txt', 'SICK_trial.txt', 'SICK_test_annotated.txt')
  pid = 0
  for name, n in zip(names, sizes, strict=True):
    rows = [SICK_HEADER]
    for i in range(n):
      pid += 1
      subj, verb = SUBJECTS[rng.integers(6)], VERBS[rng.integers(5)]
      if i % 3 == 0:
        a, b, label = f'{subj} {verb} outside', f'{subj} {verb}', 'ENTAILMENT'
      elif i % 3 == 1:
        a, b, label = f'{subj} {verb}', f'{subj} is not {verb[3:]}', 'CONTRADICTION'
      else:
        a, b, label = f'{subj} {verb}', f'{SUBJECTS[rng.integers(6)]} is sitting', 'NEUTRAL'
      rows.append(f'{pid}\t{a}\t{b}\t{1 + 4 * rng.random():.1f}\t{label}')
    end = '\r\n' if 'test' in name else '\n'
    (root / 'SICK' / name).write_text(end.join(rows) + end)
  return root


def write_books(root: pathlib.Path) -> pathlib.Path:
  """Three one-sentence-per-line books of 12, 11 and 10 sentences."""
  root.mkdir(parents=True, exist_ok=True)
  for name, n in (('alpha', 12), ('beta', 11), ('gamma', 10)):
    lines = [f'{name.title()} sentence number {i} speaks of {name} {i % 4}.' for i in range(n)]
    (root / f'{name}.txt').write_text('\n'.join(lines) + '\n')
  return root


def test_sick_order_pairs_and_majority_rate(tmp_path):
  data = sick_order.load_sick_order(write_sick(tmp_path))
  assert [len(data[s]['label']) for s in ('train', 'dev', 'test')] == [60, 20, 30]
  assert data['train']['label'][:3].tolist() == [1, 0, 0]
  assert data['train']['premise'][0].endswith('outside')
  assert data['train']['hypothesis'][0] == data['train']['premise'][0][: -len(' outside')]
  assert data['test']['label'].dtype == np.int32
  assert sick_order.majority_rate(np.array([1, 0, 0, 0])) == 75.0
  with pytest.raises(FileNotFoundError, match='SICK'):
    sick_order.load_sick_order(tmp_path / 'nowhere')


def test_book_passages_split_by_book_with_hashed_tfidf(tmp_path):
  splits = book_passages.load_book_passages(write_books(tmp_path), dev_books=['beta'],
                                            test_books=['gamma'], dim=64)  # fmt: skip
  # alpha: 12 sentences -> 2 passages (2 dropped); beta 11 -> 2; gamma 10 -> 2.
  assert [splits[s]['images'].shape for s in ('train', 'dev', 'test')] == [(2, 64)] * 3
  assert splits['train']['books'] == ['alpha', 'alpha'] and splits['dev']['books'] == ['beta'] * 2
  assert splits['test']['captions'][5].startswith('Gamma sentence number 5')
  # The features, written out: counts per bucket times the training split's smoothed idf,
  # then unit rows.
  train_tokens = [sum(splits['train']['tokens'][5 * i : 5 * i + 5], []) for i in range(2)]
  test_tokens = sum(splits['test']['tokens'][:5], [])
  buckets = lambda toks: np.bincount(
    [book_passages.token_bucket(t, 64) for t in toks], minlength=64
  )  # noqa: E731
  df = sum((buckets(t) > 0).astype(float) for t in train_tokens)
  idf = np.log(3.0 / (1.0 + df)) + 1.0
  ref = buckets(test_tokens) * idf
  ref /= np.linalg.norm(ref)
  np.testing.assert_allclose(splits['test']['images'][0].toarray()[0], ref, rtol=1e-5)
  with pytest.raises(ValueError, match=r"unknown books \['delta'\]; the books are: alpha"):
    book_passages.load_book_passages(tmp_path, dev_books=['delta'], test_books=['gamma'])
  with pytest.raises(ValueError, match='no book is left for training'):
    book_passages.load_book_passages(tmp_path, dev_books=['alpha', 'beta'], test_books=['gamma'])
  with pytest.raises(ValueError, match='held out twice'):
    book_passages.load_book_passages(tmp_path, dev_books=['beta'], test_books=['beta'])


def test_token_bucket_is_stable():
  # crc32 is fixed across processes and platforms (Python's hash() is salted).
  assert book_passages.token_bucket('the') == 3558  # zlib.crc32(b'the') % 4096


@pytest.mark.real_data
def test_real_sick_and_books(shared_data):
  sick = sick_order.load_sick_order(shared_data / 'senteval')
  assert [len(sick[s]['label']) for s in ('train', 'dev', 'test')] == [4500, 500, 4927]
  assert 25 < 100 * sick['test']['label'].mean() < 35  # About 29% entailment.
  splits = book_passages.load_book_passages(shared_data / 'books')
  assert splits['dev']['images'].shape == (1416, 4096)
  assert splits['test']['images'].shape == (2684, 4096)
  assert len(splits['train']['captions']) == 5 * splits['train']['images'].shape[0]


# ------------------------------------------------------------------------------------------
# Configs and runs.


@pytest.mark.parametrize(
  'arg, match',
  [
    ('data=imagenet', "data must be one of 'coco', 'books', 'sick'"),
    ('method=dot', "method must be one of 'order', 'cosine'"),
    ('size=huge', "size must be one of 'paper', 'cpu'"),
    ('colour=red', "unknown config arg 'colour'"),
  ],
)
def test_bad_config_args_fail_clearly(arg, match):
  with pytest.raises(ValueError, match=match):
    oe_config.get_config(arg)


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('norm', 'batch', "norm must be one of 'none', 'layer'"),
    ('coco_layout', 'flat', 'coco_layout must be one of'),
    ('margin', 0.0, 'margin must be a positive number'),
    ('hidden_dim', 0, 'hidden_dim must be an integer >= 1'),
    ('max_length', 1, 'max_length must be an integer >= 2'),
    ('eval_every_steps', -1, 'eval_every_steps must be an integer >= 0'),
  ],
)
def test_check_config_catches_bad_fields(field, value, match):
  config = oe_config.get_config('data=books,smoke')
  config[field] = value
  with pytest.raises(ValueError, match=match):
    oe.check_config(config)


def test_sick_with_the_cosine_baseline_is_refused():
  config = oe_config.get_config('data=sick,method=cosine,smoke')
  with pytest.raises(ValueError, match="data='sick' supports method='order' only"):
    oe.check_config(config)


def test_configs_follow_the_original():
  paper = oe_config.get_config('')
  assert (paper.data, paper.embed_dim, paper.hidden_dim, paper.batch_size) == (
    'coco',
    300,
    1024,
    128,
  )
  assert (paper.margin, paper.absolute, paper.eval_every_steps, paper.num_epochs) == (
    0.05,
    True,
    300,
    100,
  )
  assert (paper.learning_rate, paper.grad_clip_per_tensor, paper.num_test_folds) == (1e-3, 2.0, 5)
  cosine = oe_config.get_config('method=cosine')
  assert (cosine.margin, cosine.absolute) == (0.2, False)
  sick = oe_config.get_config('data=sick')
  assert (sick.size, sick.l2_normalize, sick.margin, sick.grad_clip_norm) == (
    'cpu',
    False,
    0.2,
    2.0,
  )
  sweep = oe_config.get_sweep('data=sick')
  assert [r['norm'] for r in sweep] == ['none', 'layer']
  for run in sweep:
    oe_config.get_config(','.join(f'{k}={v}' for k, v in run.items()))


def test_missing_data_fails_clearly(tmp_path):
  config = oe_config.get_config('data=coco,smoke')
  with pytest.raises(FileNotFoundError, match='data=coco needs --config.data_dir'):
    oe.load_raw(config)
  config = oe_config.get_config(f'data=coco,smoke,data_dir={tmp_path}')
  with pytest.raises(FileNotFoundError, match='no COCO data in'):
    oe.load_raw(config)


def test_sick_run_learns_the_order_in_process(tmp_path):
  """A few dozen steps on the written SICK files separate entailment from the rest."""
  arg = f'data=sick,smoke,data_dir={write_sick(tmp_path / "senteval")},steps=40,lr=0.01'
  config = oe_config.get_config(arg + ',max_train=60,eval_every=20,hidden=12')
  config.batch_size = 12
  final = runner.train_and_evaluate(config, tmp_path / 'run', mesh=sharding.make_mesh())
  rows = metrics.read_metrics(tmp_path / 'run')
  assert [r['step'] for r in rows if 'dev/accuracy' in r] == [0, 20, 40]
  assert final['dev/best_accuracy'] > 90.0, rows  # Trial: 'X V outside' vs 'X V'.
  assert final['test/accuracy'] > 80.0 and final['test/majority_rate'] == pytest.approx(200 / 3)
  assert final['test/model_step'] == final['dev/best_step']


def test_end_to_end_coco_smoke_through_main(tmp_path):
  from tests.test_data_coco import write_coco

  data_dir = write_coco(tmp_path / 'coco', 'order', sizes={'train': 24, 'dev': 12, 'test': 12})
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', LNORM_JAX_CACHE=str(tmp_path / 'cache'))
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  cmd = [sys.executable, '-m', 'lnorm.main',
         f'--config=configs/order_embeddings.py:data=coco,smoke,data_dir={data_dir},norm=layer',
         f'--workdir={workdir}']  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = metrics.read_metrics(workdir)
  assert [r['step'] for r in rows if 'dev/image_r1' in r] == [0, 3, 6]
  final = json.loads((workdir / 'final.json').read_text())
  assert final['step'] == 6 and not final['diverged']
  assert final['test/num_folds'] == 1.0 and 0 <= final['test/image_r1'] <= 100
  assert final['test/model_step'] == final['dev/best_step']
  assert (workdir / 'vocab.json').exists() and (workdir / 'best' / 'params.msgpack').exists()
  saved = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  assert saved.optimizer == 'order_adam' and saved.coco_layout == 'auto'


def test_report_script_writes_the_page_and_the_figure(tmp_path):
  from scripts import order_embeddings_report as report

  for norm, curve in (('none', [70.0, 80.0, 84.0, 83.0]), ('layer', [71.0, 85.0, 84.0, 84.5])):
    run = tmp_path / f'sick-{norm}'
    run.mkdir()
    config = oe_config.get_config(f'data=sick,norm={norm}')
    (run / 'config.json').write_text(config.to_json())
    rows = [{'step': 25 * i, 'epoch': 25 * i / 35, 'examples': 0, 'wall_s': 10.0 * i,
             'dev/accuracy': v} for i, v in enumerate(curve)]  # fmt: skip
    (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    final = dict(rows[-1], **{'test/accuracy': 80.0, 'test/majority_rate': 71.3})
    (run / 'final.json').write_text(json.dumps(final))
  out = tmp_path / 'results' / 'oe'
  report.main([str(tmp_path / 'sick-none'), str(tmp_path / 'sick-layer'), '--out', str(out)])
  text = out.with_suffix('.md').read_text()
  assert out.with_suffix('.png').stat().st_size > 10_000
  # GRU's best (84.0) came at update 50 after 20 s, LN-GRU's (85.0) at update 25 after 10 s.
  assert '| GRU | 0 | 75 (2.1) | 84.0 | 50 | 0.3 min |' in text
  assert '**50%** of the GRU' in text and 'OE + LN-GRU (paper) | 48.5' in text
  # Notes written by hand under the marker survive a regeneration.
  out.with_suffix('.md').write_text(text + '\n' + report.NOTES_MARKER + '\nkeep me\n')
  report.main([str(tmp_path / 'sick-none'), str(tmp_path / 'sick-layer'), '--out', str(out)])
  assert out.with_suffix('.md').read_text().endswith(report.NOTES_MARKER + '\nkeep me\n')
  assert 'Both reach 84.0 (the lower of the two best dev values): GRU at update 50' in text
  assert 'LN-GRU at update 25 (0.2 min)' in text


def test_tfidf_baseline_retrieves_the_written_passages(tmp_path):
  from scripts import order_embeddings_tfidf_baseline as baseline

  splits = book_passages.load_book_passages(write_books(tmp_path), dev_books=['beta'],
                                            test_books=['gamma'])  # fmt: skip
  out = baseline.tfidf_retrieval(splits)
  # Two passages a split; each sentence names its number, most name it uniquely.
  assert out['test']['num_folds'] == 1 and out['dev']['image_r1'] >= 80.0
  assert out['test']['caption_r1'] == 100.0 and out['test']['image_r5'] == 100.0

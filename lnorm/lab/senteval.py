"""SentEval evaluation of sentence vectors (the paper's Table 3 and Figure 4), in-repo.

Runs on any encoder ``encode(sentences: list[str]) -> float[N, D]`` (numpy or jax array).
The sentences are passed as they are in SentEval's files (already tokenized, lowercased
for MR/CR/SUBJ/MPQA); the encoder does its own tokenization and must accept ``''`` (CR
and MPQA hold a few empty lines, which SentEval keeps). Data: :mod:`lnorm.lab.data.senteval`.

Protocols (written for this project; the choices follow Kiros et al. 2015 and SentEval):

* **MR, CR, SUBJ, MPQA** (:func:`evaluate_classification`): logistic regression
  (scikit-learn, L-BFGS, L2 penalty) on standardized features (mean/std of the training
  fold; ``standardize=False`` fits the raw vectors, as SentEval does), ``n_folds``-fold
  stratified cross-validation, shuffled with ``seed`` (10 folds by default). Inside each
  training fold the inverse penalty ``C`` is chosen from :data:`DEFAULT_CS` by
  ``inner_folds``-fold stratified cross-validation (5 by default) on accuracy, then refit
  on the whole training fold. Reported: mean test-fold accuracy
  (%) and its standard deviation over folds.
* **TREC** (:func:`evaluate_train_test`): the same classifier (multinomial over the 6
  coarse classes) trained on the 5,452 training questions, ``C`` tuned by
  ``inner_folds``-fold cross-validation on the training set; accuracy on the 500 test
  questions.
* **SICK relatedness** (:func:`evaluate_relatedness`, Tai, Socher & Manning 2015):
  features ``[u * v, |u - v|]`` of the two sentence vectors, standardized; a softmax
  regression ``q = softmax(W x + b)`` over the scores ``r = (1, ..., 5)`` trained to the
  sparse target distribution ``p`` of the gold score ``y`` (:func:`score_distribution`,
  ``p_floor(y) = floor(y) - y + 1``, ``p_floor(y)+1 = y - floor(y)``) by minimizing the
  mean ``KL(p || q)`` plus ``l2 / 2 * ||W||^2`` with full-batch L-BFGS (scipy, exact
  gradients); ``l2`` is chosen from :data:`DEFAULT_L2` by the Pearson r of the prediction
  ``r^T q`` on the trial set (SentEval and Kiros et al. use Adam with early stopping on
  the trial set instead; selection over the penalty is deterministic and gives the
  same model class). Reported on the test set: Pearson r, Spearman rho, MSE.

Reference encoders for baselines and tests: :class:`RandomEncoder` (vectors unrelated
to the sentence: chance level) and :class:`BagOfRandomWords` (mean of fixed random word
vectors).

Command line: ``python scripts/senteval_baseline.py --data_dir ../shared/data/senteval``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import scipy.optimize
import scipy.stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits

from lnorm.lab import text as text_lib
from lnorm.lab.data import senteval as data

Encoder = Callable[[list[str]], np.ndarray]

# Inverse L2 penalties of the logistic regression (sklearn's C: the penalty is
# ||w||^2 / (2 C) against the summed log loss), tried by inner CV on standardized features.
DEFAULT_CS = tuple(2.0**k for k in range(-12, 3, 2))  # 1/4096 ... 4
# L2 penalties of the SICK softmax regression, chosen on the trial set.
DEFAULT_L2 = tuple(10.0**k for k in range(-5, 1))  # 1e-5 ... 1
SCORES = np.arange(1.0, 6.0)  # r = (1, 2, 3, 4, 5)
# BLAS threads while fitting. These problems are small: more threads only oversubscribe
# the cores that training and the other folds already use.
BLAS_THREADS = 1


# ----------------------------------------------------------------------------------------
# Encoding.


def encode_sentences(encode: Encoder, sentences: Sequence[str], batch_size: int = 128):
  """Encodes ``sentences`` in batches, each distinct sentence once.

  Args:
    encode: ``list[str] -> float[n, D]``.
    sentences: ``N`` sentences (duplicates allowed).
    batch_size: sentences per call of ``encode``.

  Returns:
    ``float32[N, D]``, row ``i`` the vector of ``sentences[i]``.
  """
  unique = sorted(set(sentences))
  index = {s: i for i, s in enumerate(unique)}
  parts = []
  for start in range(0, len(unique), batch_size):
    batch = unique[start : start + batch_size]
    vecs = np.asarray(encode(list(batch)), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(batch):
      raise ValueError(f'encode returned shape {vecs.shape} for {len(batch)} sentences')
    parts.append(vecs)
  table = np.concatenate(parts, axis=0)
  if not np.all(np.isfinite(table)):
    raise ValueError('encode returned non-finite values')
  return table[np.array([index[s] for s in sentences], dtype=np.int64)]


class RandomEncoder:
  """Vectors drawn afresh from N(0, 1) for every sentence: unrelated to the text (chance)."""

  def __init__(self, dim: int = 300, seed: int = 0):
    self.dim = dim
    self._rng = np.random.default_rng(seed)

  def __call__(self, sentences: list[str]) -> np.ndarray:
    """``float32[len(sentences), dim]``."""
    return self._rng.standard_normal((len(sentences), self.dim)).astype(np.float32)


class BagOfRandomWords:
  """Mean of fixed random word vectors: ``v(s) = mean_w e(w)``, ``e(w) ~ N(0, I_dim)``.

  Each word's vector is drawn from a generator seeded with ``(seed, crc32(word))``, so
  it is the same in every process and needs no vocabulary. Words are
  :func:`lnorm.lab.text.tokenize` tokens (lowercased); the empty sentence maps to zeros.

  ``vocabulary`` (a set of words) restricts it to what a trained encoder can see: every
  other word becomes the one token :data:`lnorm.lab.text.UNK` (one shared vector), as
  the encoder's ``<unk>``. That measures how much of this floor comes from words outside
  the encoder's vocabulary.
  """

  def __init__(
    self, dim: int = 300, seed: int = 0, lower: bool = True, vocabulary: set | None = None
  ):
    self.dim = dim
    self.seed = seed
    self.lower = lower
    self.vocabulary = None if vocabulary is None else frozenset(vocabulary)
    self._vectors: dict[str, np.ndarray] = {}

  def word_vector(self, word: str) -> np.ndarray:
    """``float32[dim]``, the fixed vector of ``word``."""
    vec = self._vectors.get(word)
    if vec is None:
      rng = np.random.default_rng([self.seed, zlib.crc32(word.encode('utf-8'))])
      vec = rng.standard_normal(self.dim).astype(np.float32)
      self._vectors[word] = vec
    return vec

  def __call__(self, sentences: list[str]) -> np.ndarray:
    """``float32[len(sentences), dim]``."""
    out = np.zeros((len(sentences), self.dim), dtype=np.float32)
    for i, s in enumerate(sentences):
      tokens = text_lib.tokenize(s, lower=self.lower)
      if self.vocabulary is not None:
        tokens = [t if t in self.vocabulary else text_lib.UNK for t in tokens]
      if tokens:
        out[i] = np.mean([self.word_vector(t) for t in tokens], axis=0)
    return out


# ----------------------------------------------------------------------------------------
# Classification.


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple]:
  """Shuffled stratified folds: ``[(train_idx int64[.], test_idx int64[.]), ...]``.

  Deterministic for a given ``seed``; every example is in exactly one test fold, and each
  test fold holds each class in (nearly) the overall proportion.
  """
  skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
  return list(skf.split(np.zeros(len(labels)), labels))


def _standardize(train: np.ndarray, *others: np.ndarray, standardize: bool = True):
  """``(x - mean) / std`` with the training set's statistics; the arrays as they are if not
  ``standardize``."""
  if not standardize:
    return [train, *others]
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)
  return [(x - mean) / std for x in (train, *others)]


def _logreg(c: float, seed: int, warm_start: bool = False) -> LogisticRegression:
  return LogisticRegression(C=c, max_iter=1000, tol=1e-4, random_state=seed, warm_start=warm_start)


def fit_logistic(
  x: np.ndarray,
  y: np.ndarray,
  cs: Sequence[float] = DEFAULT_CS,
  inner_folds: int = 5,
  seed: int = 0,
) -> tuple[LogisticRegression, float, dict]:
  """Logistic regression with ``C`` chosen by inner stratified cross-validation.

  In each inner fold the ``C`` values are fitted in increasing order, each fit starting
  from the previous solution (a regularization path; same optimum, fewer iterations).

  Args:
    x: ``float[N, D]`` standardized features.
    y: ``int[N]`` labels.
    cs: candidate inverse penalties.
    inner_folds: folds of the inner cross-validation.
    seed: seed of the inner folds.

  Returns:
    ``(model refit on all of x, chosen C, {C: mean inner accuracy})``; ties go to the
    smaller ``C`` (stronger penalty).
  """
  cs = sorted(cs)
  accs = {c: [] for c in cs}
  if len(cs) > 1:
    for tr, va in stratified_folds(y, inner_folds, seed):
      model = _logreg(cs[0], seed, warm_start=True)
      for c in cs:
        model.set_params(C=c).fit(x[tr], y[tr])
        accs[c].append(np.mean(model.predict(x[va]) == y[va]))
  scores = {c: float(np.mean(a)) if a else float('nan') for c, a in accs.items()}
  best = cs[0] if len(cs) == 1 else max(cs, key=lambda c: (scores[c], -c))
  return _logreg(best, seed).fit(x, y), best, scores


def evaluate_classification(
  x: np.ndarray,
  y: np.ndarray,
  n_folds: int = 10,
  inner_folds: int = 5,
  cs: Sequence[float] = DEFAULT_CS,
  seed: int = 0,
  standardize: bool = True,
) -> dict:
  """Nested cross-validated accuracy of logistic regression (MR, CR, SUBJ, MPQA).

  Args:
    x: ``float[N, D]`` sentence vectors.
    y: ``int[N]`` labels.
    n_folds: outer folds (10 in SentEval and the paper).
    inner_folds: inner folds that choose ``C`` in every outer training fold.
    cs: candidate ``C`` values.
    seed: seed of the outer folds (the inner ones use ``seed + 1 + fold``).
    standardize: scale every feature by the training fold's mean and std (the default);
      False fits the raw vectors.

  Returns:
    ``{'accuracy': mean test-fold accuracy in %, 'std': its std over folds (%),
    'fold_accuracies': list, 'cs': chosen C per fold, 'n': N}``.
  """
  with threadpool_limits(limits=BLAS_THREADS, user_api='blas'):
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    accs, chosen = [], []
    for k, (tr, te) in enumerate(stratified_folds(y, n_folds, seed)):
      xtr, xte = _standardize(x[tr], x[te], standardize=standardize)
      model, c, _ = fit_logistic(xtr, y[tr], cs, inner_folds, seed + 1 + k)
      accs.append(100.0 * float(np.mean(model.predict(xte) == y[te])))
      chosen.append(c)
    return {
      'accuracy': float(np.mean(accs)),
      'std': float(np.std(accs)),
      'fold_accuracies': accs,
      'cs': chosen,
      'n': int(len(y)),
    }


def evaluate_train_test(
  x_train: np.ndarray,
  y_train: np.ndarray,
  x_test: np.ndarray,
  y_test: np.ndarray,
  inner_folds: int = 5,
  cs: Sequence[float] = DEFAULT_CS,
  seed: int = 0,
  standardize: bool = True,
) -> dict:
  """Accuracy on a fixed test set, ``C`` tuned by cross-validation on train (TREC).

  ``standardize`` as in :func:`evaluate_classification` (statistics of the training set).

  Returns:
    ``{'accuracy': test accuracy in %, 'cv_accuracy': best inner CV accuracy in %,
    'c': chosen C, 'n_train', 'n_test'}``.
  """
  with threadpool_limits(limits=BLAS_THREADS, user_api='blas'):
    xtr, xte = _standardize(
      np.asarray(x_train, np.float64), np.asarray(x_test, np.float64), standardize=standardize
    )
    model, c, scores = fit_logistic(xtr, np.asarray(y_train), cs, inner_folds, seed)
    acc = 100.0 * float(np.mean(model.predict(xte) == np.asarray(y_test)))
    return {
      'accuracy': acc,
      'cv_accuracy': 100.0 * scores[c],
      'c': c,
      'n_train': len(y_train),
      'n_test': len(y_test),
    }


# ----------------------------------------------------------------------------------------
# Relatedness.


def score_distribution(scores: np.ndarray) -> np.ndarray:
  """Tai et al.'s sparse target ``p`` over ``r = 1..5`` with ``r^T p = y`` exactly.

  Args:
    scores: ``float[N]`` gold scores in ``[1, 5]``.

  Returns:
    ``float64[N, 5]``: ``p[floor(y)] = floor(y) - y + 1``, ``p[floor(y) + 1] = y -
    floor(y)`` (1-based classes), zeros elsewhere.
  """
  y = np.clip(np.asarray(scores, np.float64), 1.0, 5.0)
  p = np.zeros((len(y), 5))
  lo = np.minimum(np.floor(y), 4.0)  # y = 5 puts all its mass on class 5 below
  frac = y - lo
  rows = np.arange(len(y))
  p[rows, lo.astype(int) - 1] = 1.0 - frac
  p[rows, lo.astype(int)] = frac
  return p


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """``[u * v, |u - v|]``: ``float[N, 2D]`` from two ``float[N, D]``."""
  return np.concatenate([u * v, np.abs(u - v)], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def fit_softmax_kl(
  x: np.ndarray, p: np.ndarray, l2: float, max_iter: int = 500, init: tuple | None = None
):
  """Softmax regression to target distributions: min mean KL(p || softmax(xW + b)) + l2/2 |W|^2.

  Args:
    x: ``float64[N, F]`` features.
    p: ``float64[N, K]`` target distributions (rows sum to 1).
    l2: penalty on ``W`` (not on ``b``).
    max_iter: L-BFGS iterations.
    init: ``(W, b)`` to start from; zeros by default.

  Returns:
    ``(W float64[F, K], b float64[K])`` by scipy's L-BFGS-B with the exact gradient
    ``x^T (q - p) / N + l2 W`` (the problem is convex: the start only changes the cost).
  """
  n, f = x.shape
  k = p.shape[1]
  entropy = float(np.sum(p[p > 0] * np.log(p[p > 0]))) / n

  def loss_grad(theta):
    w = theta[: f * k].reshape(f, k)
    b = theta[f * k :]
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = entropy - float(np.sum(p * logq)) / n + 0.5 * l2 * float(np.sum(w * w))
    d = (np.exp(logq) - p) / n
    gw = x.T @ d + l2 * w
    return loss, np.concatenate([gw.ravel(), d.sum(axis=0)])

  theta0 = np.zeros(f * k + k) if init is None else np.concatenate([init[0].ravel(), init[1]])
  res = scipy.optimize.minimize(
    loss_grad, theta0, jac=True, method='L-BFGS-B', options={'maxiter': max_iter}
  )
  return res.x[: f * k].reshape(f, k), res.x[f * k :]


def predict_scores(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Expected score ``r^T softmax(x W + b)``: ``float64[N]`` in ``[1, 5]``."""
  return _softmax(x @ w + b) @ SCORES


def relatedness_metrics(pred: np.ndarray, gold: np.ndarray) -> dict:
  """Pearson r, Spearman rho and mean squared error of ``pred`` against ``gold``."""
  return {
    'pearson': float(scipy.stats.pearsonr(pred, gold)[0]),
    'spearman': float(scipy.stats.spearmanr(pred, gold)[0]),
    'mse': float(np.mean((pred - gold) ** 2)),
  }


def evaluate_relatedness(
  train: tuple[np.ndarray, np.ndarray, np.ndarray],
  dev: tuple[np.ndarray, np.ndarray, np.ndarray],
  test: tuple[np.ndarray, np.ndarray, np.ndarray],
  l2s: Sequence[float] = DEFAULT_L2,
  standardize: bool = True,
) -> dict:
  """SICK relatedness, Tai et al. (2015) setup (module docstring).

  Args:
    train, dev, test: ``(u float[N, D], v float[N, D], score float[N])`` each.
    l2s: candidate penalties, chosen by dev Pearson r.
    standardize: scale the pair features by the training pairs' mean and std (the
      default); False fits them raw.

  Returns:
    ``{'pearson', 'spearman', 'mse'}`` on test, plus ``'l2'`` chosen and
    ``'dev_pearson'`` of it.
  """
  with threadpool_limits(limits=BLAS_THREADS, user_api='blas'):
    feats = [pair_features(np.asarray(u, np.float64), np.asarray(v, np.float64))
             for u, v, _ in (train, dev, test)]  # fmt: skip
    xtr, xdev, xte = _standardize(*feats, standardize=standardize)
    ptr = score_distribution(train[2])
    best, init = None, None
    for l2 in sorted(l2s, reverse=True):  # strongest penalty first, warm-starting the next
      w, b = fit_softmax_kl(xtr, ptr, l2, init=init)
      init = (w, b)
      r = relatedness_metrics(predict_scores(xdev, w, b), np.asarray(dev[2], np.float64))
      if best is None or r['pearson'] > best[0]:
        best = (r['pearson'], l2, w, b)
    dev_r, l2, w, b = best
    out = relatedness_metrics(predict_scores(xte, w, b), np.asarray(test[2], np.float64))
    return {**out, 'l2': l2, 'dev_pearson': dev_r}


# ----------------------------------------------------------------------------------------
# All tasks.


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Sorted indices ``int64[size]`` of a seeded subset with the classes' proportions."""
  if size >= len(labels):
    return np.arange(len(labels))
  idx, _ = train_test_split(
    np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
  )
  return np.sort(idx)


def evaluate_task(
  encode: Encoder,
  data_dir,
  task: str,
  n_folds: int = 10,
  inner_folds: int = 5,
  cs: Sequence[float] = DEFAULT_CS,
  l2s: Sequence[float] = DEFAULT_L2,
  seed: int = 0,
  batch_size: int = 128,
  max_examples: int | None = None,
  standardize: bool = True,
) -> dict:
  """Loads one task from ``data_dir`` (SentEval layout), encodes it, evaluates it.

  Args:
    encode: the encoder.
    data_dir: directory in SentEval's layout (``../shared/data/senteval``).
    task: one of :data:`lnorm.lab.data.senteval.TASKS`.
    n_folds, inner_folds, cs, l2s, seed: see the evaluation functions.
    batch_size: sentences per ``encode`` call.
    max_examples: for MR/CR/SUBJ/MPQA, evaluate a seeded stratified subset of this size
      (quick checks during training); None uses all.
    standardize: standardize the classifiers' features (the default) or fit raw vectors.

  Returns:
    The task's result dict, with ``'seconds'`` and ``'standardize'`` added.
  """
  start = time.perf_counter()
  d = data.load_task(data_dir, task)
  if task in data.BINARY_TASKS:
    sents, labels = d['sentences'], d['labels']
    if max_examples is not None:
      idx = stratified_subset(labels, max_examples, seed)
      sents, labels = [sents[i] for i in idx], labels[idx]
    x = encode_sentences(encode, sents, batch_size)
    out = evaluate_classification(x, labels, n_folds, inner_folds, cs, seed, standardize)
  elif task == 'TREC':
    xtr = encode_sentences(encode, d['train']['sentences'], batch_size)
    xte = encode_sentences(encode, d['test']['sentences'], batch_size)
    out = evaluate_train_test(
      xtr, d['train']['labels'], xte, d['test']['labels'], inner_folds, cs, seed, standardize
    )
  elif task == 'SICK':
    parts = []
    for split in ('train', 'validation', 'test'):
      s = d[split]
      u = encode_sentences(encode, s['sentence_a'], batch_size)
      v = encode_sentences(encode, s['sentence_b'], batch_size)
      parts.append((u, v, s['relatedness']))
    out = evaluate_relatedness(*parts, l2s=l2s, standardize=standardize)
  else:
    raise ValueError(f'unknown SentEval task {task!r}; choose from {data.TASKS}')
  out['seconds'] = time.perf_counter() - start
  out['standardize'] = standardize
  return out


def evaluate(encode: Encoder, data_dir, tasks: Sequence[str] = data.TASKS, **kwargs) -> dict:
  """:func:`evaluate_task` for each task: ``{task: result}``."""
  return {task: evaluate_task(encode, data_dir, task, **kwargs) for task in tasks}


def flat_metrics(results: dict, prefix: str = 'senteval/') -> dict:
  """Scalar metrics for ``metrics.jsonl``: ``{'senteval/MR': acc, 'senteval/SICK_r': ...}``."""
  out = {}
  for task, r in results.items():
    if task == 'SICK':
      out[f'{prefix}SICK_r'] = r['pearson']
      out[f'{prefix}SICK_rho'] = r['spearman']
      out[f'{prefix}SICK_mse'] = r['mse']
    else:
      out[f'{prefix}{task}'] = r['accuracy']
  return out


def format_table(results: dict) -> str:
  """A Markdown table of the results, one row per task."""
  rows = ['| task | metric | value | details |', '| --- | --- | --- | --- |']
  for task, r in results.items():
    if task == 'SICK':
      rows.append(
        f'| SICK | r / rho / MSE | {r["pearson"]:.4f} / {r["spearman"]:.4f} / '
        f'{r["mse"]:.4f} | l2={r["l2"]:g}, trial r={r["dev_pearson"]:.4f} |'
      )
    elif task == 'TREC':
      rows.append(
        f'| TREC | test accuracy (%) | {r["accuracy"]:.1f} | C={r["c"]:g}, train CV '
        f'{r["cv_accuracy"]:.1f}% |'
      )
    else:
      cs = sorted(set(r['cs']))
      rows.append(
        f'| {task} | {len(r["fold_accuracies"])}-fold CV accuracy (%) | {r["accuracy"]:.1f} '
        f'| ± {r["std"]:.1f} over folds, n={r["n"]}, C in {{{", ".join(f"{c:g}" for c in cs)}}} |'
      )
  return '\n'.join(rows)

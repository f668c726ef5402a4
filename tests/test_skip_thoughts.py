"""The skip-thoughts experiment: corpus cache, model, padding, learning, SentEval, end to end.

Everything runs on files the tests write: two small books and tiny SentEval sets in
SentEval's layout. The end-to-end run goes through ``python -m lnorm.main`` with the
``smoke`` config.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import skip_thoughts as st_config
from experiments import skip_thoughts as st
from lnorm.lab import metrics, models, optimizers, runner
from lnorm.lab import text as text_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

GUTENBERG = """\
The Project Gutenberg EBook of Cats, by Nobody

*** START OF THE PROJECT GUTENBERG EBOOK CATS ***

{body}

*** END OF THE PROJECT GUTENBERG EBOOK CATS ***

This licence text is not part of the book.
"""

SUBJECTS = ('the cat', 'a dog', 'my sister', 'the old man', 'her friend', 'the captain')
VERBS = ('saw', 'liked', 'followed', 'ignored', 'painted', 'heard')
OBJECTS = ('the garden', 'a red house', 'the sea', 'his letter', 'the long road', 'a bird')
POSITIVE = ('good', 'great', 'lovely', 'fine', 'wonderful', 'charming')
NEGATIVE = ('bad', 'awful', 'dull', 'poor', 'terrible', 'boring')


def _sentence(i: int) -> str:
  s = f'{SUBJECTS[i % 6]} {VERBS[(i // 6) % 6]} {OBJECTS[(i // 36) % 6]}'
  return s[0].upper() + s[1:] + '.'


def write_books(root: pathlib.Path) -> pathlib.Path:
  """Two books: Gutenberg-style prose (40 sentences) and one sentence per line (30)."""
  root.mkdir(parents=True, exist_ok=True)
  # Hard-wrapped paragraphs, as Gutenberg prints them (so the layout is detected as text).
  paragraphs = [
    textwrap.fill(' '.join(_sentence(i + j) for j in range(4)), 50) for i in range(0, 40, 4)
  ]
  (root / 'prose.txt').write_text(GUTENBERG.format(body='\n\n'.join(paragraphs)))
  (root / 'lines.txt').write_text('\n'.join(_sentence(7 * i + 3) for i in range(30)) + '\n')
  return root


def write_senteval(root: pathlib.Path) -> pathlib.Path:
  """MR (60 + 60 sentences, sentiment words) and SICK (40/10/20 pairs) in SentEval's layout."""
  rng = np.random.default_rng(0)
  (root / 'MR').mkdir(parents=True, exist_ok=True)
  for name, words in (('pos', POSITIVE), ('neg', NEGATIVE)):
    lines = [f'{SUBJECTS[rng.integers(6)]} was {words[rng.integers(6)]} .' for _ in range(60)]
    (root / 'MR' / f'rt-polarity.{name}').write_text('\n'.join(lines) + '\n', encoding='latin-1')
  (root / 'SICK').mkdir(parents=True, exist_ok=True)
  header = 'pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment'
  pid = 0
  for name, n in (('SICK_train.txt', 40), ('SICK_trial.txt', 10), ('SICK_test_annotated.txt', 20)):
    rows = [header]
    for _ in range(n):
      pid += 1
      a, b = _sentence(int(rng.integers(200))), _sentence(int(rng.integers(200)))
      score = 1.0 + 4.0 * rng.random()
      rows.append(f'{pid}\t{a}\t{b}\t{score:.2f}\tNEUTRAL')
    (root / 'SICK' / name).write_text('\n'.join(rows) + '\n')
  return root


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  return write_books(root / 'books'), write_senteval(root / 'senteval')


def _config(data_dirs, arg=''):
  books, senteval = data_dirs
  return st_config.get_config(f'smoke,data_dir={books},senteval_dir={senteval},{arg}')


def test_corpus_triples_stay_in_books_and_are_cached(tmp_path, data_dirs):
  tokens, centers = st.read_corpus(data_dirs[0])
  assert len(tokens) == 70 and len(centers) == 66  # 40 + 30 sentences, n - 2 triples each.
  assert 'licence' not in {t for s in tokens for t in s}  # The Gutenberg footer is gone.
  books = np.repeat([0, 1], [30, 40])  # 'lines.txt' sorts before 'prose.txt'.
  assert np.all(books[centers - 1] == books[centers]) and np.all(
    books[centers + 1] == books[centers]
  )
  config = _config(data_dirs)
  data = st.prepare_data(config, tmp_path, config.data_dir)
  assert (tmp_path / st.VOCAB_FILE).exists() and (tmp_path / st.CORPUS_FILE).exists()
  assert data['ids'].shape == (70, config.max_length) and data['ids'].dtype == np.int32
  assert len(data['train']) + len(data['valid']) == 66 and len(data['valid']) == config.num_valid
  assert not set(data['train']) & set(data['valid'])
  # Each sentence ends with <eos>, then padding.
  for ids, n in zip(data['ids'], data['lengths'], strict=True):
    assert ids[n - 1] == text_lib.EOS_ID and np.all(ids[n:] == text_lib.PAD_ID)
  batch = st.triple_batch(data, data['train'][:3])
  np.testing.assert_array_equal(batch['prev'], data['ids'][data['train'][:3] - 1])
  assert batch['cur'].shape == (3, config.max_length) and batch['next_len'].shape == (3,)
  # A second call reads the cache, whatever data_dir says now (resume uses the saved data).
  config.data_dir = str(tmp_path / 'gone')
  again = st.prepare_data(config, tmp_path, config.data_dir)
  assert again['vocab'] == data['vocab']
  np.testing.assert_array_equal(again['ids'], data['ids'])


def _model_and_params(norm='layer', conditioning='every_step', vocab=50, max_length=12):
  model = st.SkipThoughts(vocab, 8, 16, norm=norm, conditioning=conditioning)
  params, _ = models.linen(model, st.sample_batch(max_length)).init(jax.random.key(0))
  return model, params


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_padding_never_changes_vectors_or_losses(norm):
  model, params = _model_and_params(norm)
  seqs = [[5, 6, 7, 1], [8, 1], [9, 10, 11, 12, 13, 14, 1]]
  ids, lengths = text_lib.pad_batch(seqs, length=12)
  encode = jax.jit(lambda ids, n: model.apply({'params': params}, ids, n, method=model.encode))
  batch_vectors = encode(ids, lengths)
  garbage = np.where(ids == text_lib.PAD_ID, 17, ids)  # Padding holding other ids.
  np.testing.assert_allclose(encode(garbage, lengths), batch_vectors, atol=1e-6)
  for b, s in enumerate(seqs):  # Each sentence alone, without any padding.
    alone = encode(np.asarray([s], np.int32), np.asarray([len(s)], np.int32))
    np.testing.assert_allclose(alone[0], batch_vectors[b], rtol=1e-5, atol=1e-6)
  # The loss of a triple does not depend on the padded length either.
  loss_fn = st.make_loss_fn(model)

  def loss(length):
    p, pl = text_lib.pad_batch(seqs, length=length)
    c, cl = text_lib.pad_batch(seqs[::-1], length=length)
    b = {'prev': p, 'prev_len': pl, 'cur': c, 'cur_len': cl, 'next': c, 'next_len': cl}
    return float(loss_fn(params, {}, b, None)[0])

  assert loss(7) == pytest.approx(loss(12), rel=1e-5)


@pytest.mark.parametrize('conditioning', st.CONDITIONINGS)
def test_conditioning_modes(conditioning):
  model, params = _model_and_params('layer', conditioning)
  kernel = params['decoder_next']['cell']['input_kernel']
  assert kernel.shape[0] == (8 + 16 if conditioning == 'every_step' else 8)
  ids, lengths = text_lib.pad_batch([[5, 6, 1], [7, 1]], length=12)
  batch = {'prev': ids, 'prev_len': lengths, 'cur': ids, 'cur_len': lengths}
  batch.update(next=ids, next_len=lengths)
  logits_prev, logits_next = model.apply({'params': params}, batch)
  assert logits_prev.shape == logits_next.shape == (2, 12, 50)
  # The decoders depend on the sentence vector.
  other = dict(batch, cur=np.roll(ids, 1, axis=0), cur_len=np.roll(lengths, 1))
  assert not np.allclose(model.apply({'params': params}, other)[1], logits_next)


def test_loss_decreases_on_a_tiny_repeated_corpus():
  config = st_config.get_config('smoke,lr=0.01')
  rng = np.random.default_rng(0)
  seqs = [list(rng.integers(3, 50, rng.integers(2, 8))) + [text_lib.EOS_ID] for _ in range(6)]
  ids, lengths = text_lib.pad_batch(seqs, length=12)
  data = {'ids': ids, 'lengths': lengths}
  batch = st.triple_batch(data, np.array([1, 2, 3, 4, 1, 2, 3, 4]))
  model, params = _model_and_params('layer')
  tx, schedule = optimizers.make_optimizer(config, 100)
  state = runner.TrainState(jnp.int32(0), params, {}, tx.init(params))
  step = jax.jit(runner.make_train_step(st.make_loss_fn(model), tx, schedule))
  losses = []
  for _ in range(40):
    state, m = step(state, batch, jax.random.key(0))
    losses.append(float(m['loss']))
  assert losses[-1] < 0.5 * losses[0], losses[::10]
  assert all(np.isfinite(losses))


def test_encoder_and_senteval_on_a_small_slice(data_dirs):
  vocab = text_lib.Vocabulary.build([s.split() for s in ('the cat was good', 'a dog bad')], 20)
  model, params = _model_and_params('layer', vocab=len(vocab))
  encode = st.make_encoder(model, params, vocab, max_length=12, batch_size=4)
  vectors = encode(['the cat was good .', '', 'a dog was bad and the cat was bad too and more'])
  assert vectors.shape == (3, 16) and np.all(np.isfinite(vectors))
  one = encode(['the cat was good .'])
  np.testing.assert_allclose(one[0], vectors[0], rtol=1e-5, atol=1e-6)  # Batch-independent.
  results = st.senteval_results(encode, data_dirs[1], ['MR', 'SICK'], 2, 2, max_examples=60)
  assert 0 <= results['MR']['accuracy'] <= 100 and results['MR']['n'] == 60
  assert -1 <= results['SICK']['pearson'] <= 1


@pytest.mark.parametrize(
  'arg, match',
  [
    ('norm=batch', "norm must be one of 'none', 'layer'"),
    ('conditioning=sometimes', 'decoder_conditioning must be one of'),
    ('size=huge', 'size must be one of'),
    ('tasks=MR+FOO', "senteval_tasks entry must be one of .*got 'FOO'"),
    ('batch_size=-2', 'batch_size must be an integer >= 1'),
    ('steps=-1', 'num_steps must be an integer >= 0'),
    ('lr=0', 'learning_rate must be a positive number'),
    ('colour=red', "unknown config arg 'colour'"),
  ],
)
def test_bad_config_values_fail_clearly(arg, match):
  arg = arg if arg.startswith('size=') else f'smoke,{arg}'  # smoke would override the size.
  with pytest.raises(ValueError, match=match):
    runner.check_config(st_config.get_config(arg))


def test_cpu_size_evaluates_and_checkpoints_once_an_epoch(tmp_path, data_dirs):
  from lnorm.lab import sharding

  cpu = st_config.get_config('size=cpu')
  assert (cpu.num_epochs, cpu.senteval_per_epoch, cpu.evals_per_epoch) == (8, 1, 1)
  assert cpu.senteval_every_steps == cpu.checkpoint_every_steps == 0  # 0: each epoch's end
  assert st_config.get_config('size=cpu,senteval_every=80').senteval_per_epoch == 0
  config = _config(data_dirs, 'tasks=MR')
  config.senteval_every_steps, config.senteval_per_epoch = 0, 1
  runner.check_config(config)
  data = st.prepare_data(config, tmp_path, config.data_dir)
  experiment = st.make_experiment(config, tmp_path, sharding.make_mesh(), data)
  senteval_eval = next(e for e in experiment.evaluators if e.name == 'senteval')
  spe = experiment.train.steps_per_epoch
  due = [s for s in range(1, 3 * spe) if senteval_eval.is_due(s, spe, 10**6)]
  assert due == [spe, 2 * spe] and senteval_eval.at_start
  config.senteval_per_epoch = -1
  with pytest.raises(ValueError, match='senteval_per_epoch must be an integer >= 0'):
    runner.check_config(config)


def test_check_config_catches_overrides():
  config = st_config.get_config('smoke')
  config.max_length = 1
  with pytest.raises(ValueError, match='max_length must be an integer >= 2'):
    runner.check_config(config)
  for bad in (0.0, 1.5, -0.25):
    config = st_config.get_config('smoke')
    config.decoder_token_capacity = bad
    with pytest.raises(ValueError, match=r'decoder_token_capacity must be a fraction in \(0, 1\]'):
      runner.check_config(config)


def test_end_to_end_through_main_and_evaluate_checkpoint(tmp_path, data_dirs):
  books, senteval = data_dirs
  workdir = tmp_path / 'run'
  arg = f'smoke,steps=4,data_dir={books},senteval_dir={senteval},tasks=MR+SICK'
  env = dict(os.environ, JAX_PLATFORMS='cpu', LNORM_JAX_CACHE=str(tmp_path / 'cache'))
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  cmd = [sys.executable, '-m', 'lnorm.main', f'--config=configs/skip_thoughts.py:{arg}',
         f'--workdir={workdir}']  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == [0, 2, 4]
  for step in (0, 4):  # The untrained encoder first, then every senteval_every_steps (4).
    row = next(r for r in rows if r['step'] == step)
    assert 0 <= row['senteval/MR'] <= 100 and -1 <= row['senteval/SICK_r'] <= 1
    assert np.isfinite(row['valid/nll'])
  assert 'train/loss' in rows[1] and 'senteval/MR' not in rows[1]
  final = json.loads((workdir / 'final.json').read_text())
  assert final['step'] == 4 and not final['diverged'] and final['train_examples_per_s'] > 0
  assert (workdir / 'vocab.json').exists() and (workdir / 'corpus.npz').exists()
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()) == [4]
  # Any checkpoint can be evaluated afterwards; the result lands in the workdir.
  out = st.evaluate_checkpoint(workdir, tasks='MR', folds=2, inner_folds=2, max_examples=100)
  # The same protocol on the same checkpoint gives the number logged during training: the
  # logged scores are those of the trained parameters (not of the initial ones, say).
  assert out['step'] == 4
  assert out['metrics']['senteval/MR'] == pytest.approx(rows[-1]['senteval/MR'], abs=1e-9)
  assert rows[-1]['senteval/MR'] != rows[0]['senteval/MR'] or (
    rows[-1]['valid/nll'] != rows[0]['valid/nll']
  )
  # A quicker protocol than the full one names itself, so it never overwrites a full result.
  assert json.loads((workdir / 'senteval-4-f2i2n100.json').read_text())['step'] == 4
  full = {'folds': 10, 'inner_folds': 5, 'max_examples': 0}
  assert st.senteval_file(workdir, 4, encoder='gru_mean', protocol=full).name == (
    'senteval-4-gru_mean.json'
  )
  # Step 0 is the run's initial parameters (no checkpoint): the score logged at the start.
  untrained = st.evaluate_checkpoint(workdir, 0, tasks='MR', folds=2, inner_folds=2,
                                     max_examples=100)  # fmt: skip
  assert untrained['metrics']['senteval/MR'] == pytest.approx(rows[0]['senteval/MR'], abs=1e-9)
  # Raw features (SentEval's way) and the word-embedding ablation land beside it.
  raw = st.evaluate_checkpoint(
    workdir, 4, tasks='MR', folds=2, inner_folds=2, max_examples=100, standardize=False
  )
  bag = st.evaluate_checkpoint(
    workdir, tasks='SICK', folds=2, inner_folds=2, max_examples=100, encoder='embeddings'
  )
  assert raw['protocol']['standardize'] is False and raw['results']['MR']['standardize'] is False
  raw_file = workdir / 'senteval-4-raw-f2i2n100.json'
  assert json.loads(raw_file.read_text())['protocol'] == raw['protocol']
  assert (
    bag['protocol']['encoder'] == 'embeddings'
    and (workdir / 'senteval-4-embeddings-f2i2n100.json').exists()
  )
  with pytest.raises(ValueError, match='encoder must be one of'):
    st.evaluate_checkpoint(workdir, tasks='MR', encoder='lstm')
  # The conditioning ablation: with each triple's own vector it is valid/nll (16 held-out
  # triples, two batches of 8), and it is written beside the checkpoint.
  cond = st.conditioning_nll(workdir, batch_size=8)
  assert cond['step'] == 4 and cond['triples'] == 16
  assert cond['nll']['own'] == pytest.approx(rows[-1]['valid/nll'], rel=1e-5)
  assert set(cond['nll']) == set(st.CONDITIONING)
  assert json.loads((workdir / 'conditioning-4.json').read_text()) == cond


def test_embedding_bag_encoder_is_the_mean_of_the_model_embeddings():
  vocab = text_lib.Vocabulary.build([['the', 'cat', 'sat']], 10)
  table = np.arange(len(vocab) * 3, dtype=np.float32).reshape(len(vocab), 3)
  encode = st.make_embedding_bag_encoder({'embed': {'embedding': table}}, vocab, max_length=3)
  x = encode(['The cat sat', 'a zebra', ''])
  the, cat, unk = vocab.encode(['the', 'cat', 'zebra'])
  np.testing.assert_allclose(x[0], (table[the] + table[cat]) / 2)  # cut to max_length - 1 words
  np.testing.assert_allclose(x[1], table[unk])  # unknown words are <unk>
  np.testing.assert_array_equal(x[2], 0.0)


def test_paper_sizes_clipping_and_sentence_length():
  paper = st_config.get_config('')
  assert (paper.embed_dim, paper.hidden_dim, paper.vocab_size) == (620, 2400, 20000)
  assert paper.grad_clip_norm == 5.0 and paper.optimizer == 'adam' and paper.max_length == 30
  runner.check_config(paper)
  vocab = text_lib.Vocabulary.build([[f'w{i}' for i in range(50)]], 100)
  ids, lengths = st.encode_corpus([[f'w{i}' for i in range(50)], ['w1']], vocab, 30)
  assert ids.shape == (2, 30) and lengths.tolist() == [30, 2]  # 29 words + <eos>.
  assert ids[0, 29] == text_lib.EOS_ID and ids[1, 1] == text_lib.EOS_ID


def _nll_reference(states, targets, lengths, w, b):
  """Per-sentence summed NLL in float64 numpy, written out from the softmax."""
  logits = states.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
  logits -= logits.max(axis=-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
  picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  real = np.arange(targets.shape[1])[None, :] < lengths[:, None]
  return -(picked * real).sum(axis=1), real.sum(axis=1)


@pytest.mark.parametrize('capacity', [None, 13, 14, 15, 40])
def test_sequence_nll_packs_real_tokens_exactly(capacity):
  """Packed (capacity >= the 14 real tokens), overflowing (13: the unpacked path) and
  unpacked runs give the float64 reference's values and gradients; padding never counts."""
  rng = np.random.default_rng(0)
  n, t, h, v = 4, 5, 3, 7
  states = rng.normal(size=(n, t, h)).astype(np.float32)
  targets = rng.integers(0, v, (n, t)).astype(np.int32)
  lengths = np.array([5, 1, 3, 5], np.int32)  # 14 real tokens of 20.
  w = rng.normal(size=(h, v)).astype(np.float32)
  b = rng.normal(size=v).astype(np.float32)
  weights = np.arange(1.0, n + 1)  # A weighted sum tells the sentences' sums apart.

  def total(w, b, states):
    nll, tokens = st.sequence_nll(lambda x: x @ w + b, states, targets, lengths, capacity)
    return jnp.sum(nll * weights), (nll, tokens)

  (_, (nll, tokens)), grads = jax.jit(jax.value_and_grad(total, (0, 1, 2), has_aux=True))(
    w, b, states
  )
  ref_nll, ref_tokens = _nll_reference(states, targets, lengths, w, b)
  np.testing.assert_allclose(nll, ref_nll, rtol=1e-6)
  np.testing.assert_array_equal(tokens, ref_tokens)

  args64 = [w.astype(np.float64), b.astype(np.float64), states.astype(np.float64)]
  rng_idx = np.random.default_rng(1)
  for i, g in enumerate(grads):  # Central differences in float64 at three entries of each.
    for _ in range(3):
      idx = tuple(int(rng_idx.integers(d)) for d in args64[i].shape)
      hi, lo = [a.copy() for a in args64], [a.copy() for a in args64]
      hi[i][idx] += 1e-4
      lo[i][idx] -= 1e-4
      f = lambda a: _nll_reference(a[2], targets, lengths, a[0], a[1])[0] @ weights
      assert float(g[idx]) == pytest.approx((f(hi) - f(lo)) / 2e-4, rel=1e-4, abs=1e-5)
  # Padded positions get no gradient, and what they hold never matters.
  pad = np.arange(t)[None, :] >= lengths[:, None]
  assert np.all(np.asarray(grads[2])[pad] == 0.0)
  garbage = np.where(pad[..., None], 1e3, states).astype(np.float32)
  np.testing.assert_allclose(total(w, b, garbage)[1][0], nll, rtol=1e-6)


def test_packed_loss_equals_unpacked_loss_and_gradients():
  """The training loss with the packed output layer (the config's default) is the unpacked
  one, in value, both metrics and every parameter's gradient."""
  model, params = _model_and_params('layer')
  rng = np.random.default_rng(0)
  seqs = [list(rng.integers(3, 50, rng.integers(1, 11))) + [text_lib.EOS_ID] for _ in range(9)]
  ids, lengths = text_lib.pad_batch(seqs, length=12)
  batch = st.triple_batch({'ids': ids, 'lengths': lengths}, np.arange(1, 8))
  fraction = st_config.get_config('smoke').decoder_token_capacity
  assert fraction < 1 and st.token_capacity(fraction, 7, 12) >= sum(
    int(n) for n in np.concatenate([batch['prev_len'], batch['next_len']])
  )  # This batch fits the packed block: the packed path is what runs.
  results = []
  for capacity in (None, fraction):
    f = lambda p, c=capacity: st.make_loss_fn(model, c)(p, {}, batch, None)
    results.append(jax.jit(jax.value_and_grad(f, has_aux=True))(params))
  (loss, (m, _)), grads = results[0]
  (loss_p, (m_p, _)), grads_p = results[1]
  assert float(loss_p) == pytest.approx(float(loss), rel=1e-6)
  for k in m:
    assert float(m_p[k]) == pytest.approx(float(m[k]), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads, grads_p)
  # The unpacked loss is the mean NLL of the full logits the model's __call__ gives.
  logits_prev, logits_next = model.apply({'params': params}, batch)
  lp = jax.nn.log_softmax(jnp.concatenate([logits_prev, logits_next]))
  targets = np.concatenate([batch['prev'], batch['next']])
  real = np.arange(12)[None] < np.concatenate([batch['prev_len'], batch['next_len']])[:, None]
  picked = np.take_along_axis(np.asarray(lp), targets[..., None], -1)[..., 0]
  assert float(loss) == pytest.approx(-(picked * real).sum() / real.sum(), rel=1e-5)


def test_mean_pooling_is_the_mean_of_the_states_at_each_prefix():
  """``pooling='mean'`` (the ``gru_mean`` ablation) averages h_1 .. h_n: the last states of
  the sentence's prefixes of length 1 .. n; padding never counts."""
  model, params = _model_and_params('layer')
  ids, lengths = text_lib.pad_batch([[5, 6, 7, 1], [8, 1]], length=12)

  def encode(ids, lengths, pooling):
    return model.apply({'params': params}, ids, lengths, pooling, method=model.encode)

  mean = np.asarray(encode(ids, lengths, 'mean'))
  for b, n in enumerate(lengths):
    prefixes = [
      encode(ids[b : b + 1], np.asarray([k], np.int32), 'last')[0] for k in range(1, n + 1)
    ]
    np.testing.assert_allclose(mean[b], np.mean(prefixes, axis=0), rtol=1e-5, atol=1e-6)
  encoder = st.make_encoder(model, params, text_lib.Vocabulary.build([['a', 'b']], 5), 12,
                            pooling='mean')  # fmt: skip
  assert encoder(['a b', 'b']).shape == (2, 16)


def test_conditioned_nll_is_the_loss_with_own_vectors_and_differs_with_others():
  model, params = _model_and_params('layer')
  rng = np.random.default_rng(1)
  seqs = [list(rng.integers(3, 50, rng.integers(1, 11))) + [text_lib.EOS_ID] for _ in range(10)]
  ids, lengths = text_lib.pad_batch(seqs, length=12)
  batch = st.triple_batch({'ids': ids, 'lengths': lengths}, np.arange(1, 9))
  sp, np_, sn, nn_ = st.triple_nll(model, params, batch, None)
  own, tokens = st.conditioned_triple_nll(model, params, batch, 'own')
  np.testing.assert_allclose(own, sp + sn, rtol=1e-6)
  np.testing.assert_array_equal(tokens, np_ + nn_)
  other, _ = st.conditioned_triple_nll(model, params, batch, 'other')
  zero, _ = st.conditioned_triple_nll(model, params, batch, 'zero')
  assert not np.allclose(other, own) and not np.allclose(zero, own)
  # 'other' is triple i decoded from the vector of triple i + 4 (half the batch of 8).
  swapped = dict(batch, cur=np.roll(batch['cur'], 4, 0), cur_len=np.roll(batch['cur_len'], 4, 0))
  rolled, _ = st.conditioned_triple_nll(model, params, swapped, 'own')
  np.testing.assert_allclose(other, rolled, rtol=1e-6)
  # Zero vectors: the decoders' input is the embeddings and zeros.
  vectors = np.zeros((8, 16), np.float32)
  states = [
    model.apply({'params': params}, w, vectors, batch[w], method=model.decode_states)
    for w in ('prev', 'next')
  ]
  logits = model.apply({'params': params}, jnp.concatenate(states), method=model.logits)
  targets = np.concatenate([batch['prev'], batch['next']])
  real = np.arange(12)[None] < np.concatenate([batch['prev_len'], batch['next_len']])[:, None]
  lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), targets[..., None], -1)[..., 0]
  per_seq = -(lp * real).sum(-1)
  np.testing.assert_allclose(zero, per_seq[:8] + per_seq[8:], rtol=1e-5)
  with pytest.raises(ValueError, match='conditioning must be one of'):
    st.conditioned_triple_nll(model, params, batch, 'shuffled')

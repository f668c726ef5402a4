"""Tests of lnorm.lab.text: sentence splitting, tokenization, vocabulary, bucketed batching."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnorm.lab import text


@pytest.mark.parametrize(
  'paragraph, expected',
  [
    ('He left. She stayed.', ['He left.', 'She stayed.']),
    ('Mr. Darcy met Mrs. Bennet. Then Dr. Jones came.',
     ['Mr. Darcy met Mrs. Bennet.', 'Then Dr. Jones came.']),
    ('"Stop!" she said. "Why?" He did not answer.',
     ['"Stop!" she said.', '"Why?"', 'He did not answer.']),
    ('He left. "Wait!" she cried.', ['He left.', '"Wait!" she cried.']),
    ('J. R. R. Tolkien wrote it. It was long.', ['J. R. R. Tolkien wrote it.', 'It was long.']),
    ('He lived in the U.S. for years. No.', ['He lived in the U.S. for years.', 'No.']),
    ('It was I. She said no. Really?! Yes...', ['It was I.', 'She said no.', 'Really?!', 'Yes...']),
    ('(He went home.) Then he slept.', ['(He went home.)', 'Then he slept.']),
  ],
)  # fmt: skip
def test_split_sentences_rules(paragraph, expected):
  assert text.split_sentences(paragraph) == expected


def test_split_sentences_paragraphs_and_wrapped_lines():
  t = 'The first line\nwraps here. Second\r\nsentence\n\n  \nNew paragraph without stop\n\nLast.'
  assert text.split_sentences(t) == [
    'The first line wraps here.',
    'Second sentence',
    'New paragraph without stop',
    'Last.',
  ]
  assert text.split_sentences('') == []


@pytest.mark.parametrize(
  'sentence, expected',
  [
    ("It's fine; don't worry -- we'll go.",
     ['it', "'s", 'fine', ';', 'do', "n't", 'worry', '--', 'we', "'ll", 'go', '.']),
    ("Can't stop.", ['ca', "n't", 'stop', '.']),
    # Already tokenized SentEval text keeps its tokens; LaTeX quotes become '"'.
    ("it 's a `` conan `` , do n't miss it .",
     ['it', "'s", 'a', '"', 'conan', '"', ',', 'do', "n't", 'miss', 'it', '.']),
    ('“Curly” quotes, o’clock and well-known words...',
     ['"', 'curly', '"', 'quotes', ',', "o'clock", 'and', 'well-known', 'words', '...']),
    ('Mr. Darcy and J. Smith of the U.S. arrived, e.g. today.',
     ['mr.', 'darcy', 'and', 'j.', 'smith', 'of', 'the', 'u.s.', 'arrived', ',', 'e.g.',
      'today', '.']),
    ('It was I.', ['it', 'was', 'i', '.']),
  ],
)  # fmt: skip
def test_tokenize(sentence, expected):
  assert text.tokenize(sentence) == expected


def test_tokenize_options():
  assert text.tokenize("Don't Go", lower=False) == ['Do', "n't", 'Go']
  assert text.tokenize("Don't go", split_clitics=False) == ["don't", 'go']
  assert text.tokenize('') == []


def test_vocabulary_build_ranks_by_count_then_alphabet():
  sents = [['b', 'a', 'c'], ['a', 'b', 'd'], ['a', 'e'], ['<unk>']]
  vocab = text.Vocabulary.build(sents, size=3)
  # a:3, then b:2, then c/d/e:1 -> alphabetical 'c'.
  assert vocab.words == ['<pad>', '<eos>', '<unk>', 'a', 'b', 'c']
  assert len(vocab) == 6
  assert (text.PAD_ID, text.EOS_ID, text.UNK_ID) == (0, 1, 2)
  assert vocab.counts == [3, 2, 1]
  assert text.Vocabulary.build(sents, size=10, min_count=2).words[3:] == ['a', 'b']


def test_vocabulary_encode_decode_and_truncation():
  vocab = text.Vocabulary(['the', 'cat', 'sat'])
  ids = vocab.encode(['the', 'dog', 'sat'], add_eos=True)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [3, 2, 5, 1])
  assert vocab.decode(ids) == ['the', '<unk>', 'sat']
  assert vocab.decode([3, 4, 0, 0]) == ['the', 'cat']
  assert vocab.decode([3, 1, 4], strip=False) == ['the', '<eos>', 'cat']
  np.testing.assert_array_equal(
    vocab.encode(['the'] * 10, add_eos=True, max_length=4), [3, 3, 3, 1]
  )
  np.testing.assert_array_equal(vocab.encode(['cat'] * 10, max_length=3), [4, 4, 4])
  assert vocab.encode([]).shape == (0,)
  with pytest.raises(ValueError, match='reserved'):
    text.Vocabulary(['a', '<eos>'])
  with pytest.raises(ValueError, match='duplicate'):
    text.Vocabulary(['a', 'a'])


def test_vocabulary_save_load_roundtrip(tmp_path):
  vocab = text.Vocabulary.build([text.tokenize('Héllo wörld, héllo again!')], size=10)
  path = tmp_path / 'vocab.json'
  vocab.save(path)
  loaded = text.Vocabulary.load(path)
  assert loaded == vocab and loaded.counts == vocab.counts
  assert loaded.token_to_id('héllo') == 3
  path.write_text('{"format": "something else"}')
  with pytest.raises(ValueError, match='format'):
    text.Vocabulary.load(path)


def test_buckets_and_pad_batch():
  assert text.bucket_boundaries(30, 5) == (5, 10, 15, 20, 25, 30)
  assert text.bucket_boundaries(32, 10) == (10, 20, 30, 32)
  bounds = (5, 10, 30)
  assert [text.bucket_length(n, bounds) for n in (0, 5, 6, 30, 99)] == [5, 5, 10, 30, 30]
  seqs = [[4, 5, 6], [7], list(range(3, 43))]
  ids, lengths = text.pad_batch(seqs, max_length=30, boundaries=bounds)
  assert ids.shape == (3, 30) and ids.dtype == np.int32 and lengths.dtype == np.int32
  np.testing.assert_array_equal(lengths, [3, 1, 30])
  np.testing.assert_array_equal(ids[0, :4], [4, 5, 6, 0])
  np.testing.assert_array_equal(ids[2], np.arange(3, 33))
  assert np.all(ids[np.arange(30)[None, :] >= lengths[:, None]] == text.PAD_ID)
  ids, lengths = text.pad_batch([[4, 5], [6]], boundaries=bounds)
  assert ids.shape == (2, 5)
  ids, lengths = text.pad_batch([[4, 5, 6], [6]], length=2)
  np.testing.assert_array_equal(lengths, [2, 1])
  np.testing.assert_array_equal(ids, [[4, 5], [6, 0]])


def test_length_batches_partition_buckets_and_determinism():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 31, size=203)
  bounds = text.bucket_boundaries(30, 5)
  batches = list(text.length_batches(lengths, 16, bounds, seed=3))
  flat = np.concatenate(batches)
  assert sorted(flat.tolist()) == list(range(203))  # each example exactly once
  for b in batches:
    assert len(b) <= 16
    assert len({text.bucket_length(int(n), bounds) for n in lengths[b]}) == 1
  again = list(text.length_batches(lengths, 16, bounds, seed=3))
  assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
  other = list(text.length_batches(lengths, 16, bounds, seed=4))
  assert not all(
    len(a) == len(b) and np.array_equal(a, b) for a, b in zip(batches, other, strict=False)
  )
  full = list(text.length_batches(lengths, 16, bounds, seed=3, drop_remainder=True))
  assert all(len(b) == 16 for b in full)
  ordered = np.concatenate(list(text.length_batches(lengths, 16, bounds, seed=None)))
  assert np.all(np.diff([text.bucket_length(int(n), bounds) for n in lengths[ordered]]) >= 0)


def test_batch_sentences_pads_to_bucket():
  seqs = [np.arange(3, 3 + n, dtype=np.int32) for n in (2, 7, 12, 40, 3, 9)]
  seen = []
  for index, ids, lengths in text.batch_sentences(seqs, batch_size=2, max_length=30, seed=0):
    assert ids.shape[1] in text.bucket_boundaries(30) and ids.shape[1] >= lengths.max()
    for row, i in enumerate(index):
      n = min(len(seqs[i]), 30)
      assert lengths[row] == n
      np.testing.assert_array_equal(ids[row, :n], seqs[i][:n])
    seen.extend(index.tolist())
  assert sorted(seen) == list(range(6))


def test_padding_never_changes_a_scanned_cell():
  """The batching contract: with seq_lengths, the padded length and pad ids don't matter."""
  vocab_size, emb, hidden = 20, 4, 6
  embed = nn.Embed(vocab_size, emb)
  rnn = nn.RNN(nn.GRUCell(hidden), return_carry=True)
  key = jax.random.key(0)
  seqs = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13]]
  ids10, lengths = text.pad_batch(seqs, length=10)
  ids30, lengths30 = text.pad_batch(seqs, length=30)
  np.testing.assert_array_equal(lengths, lengths30)
  emb_params = embed.init(key, jnp.asarray(ids10))
  x10 = embed.apply(emb_params, jnp.asarray(ids10))
  rnn_params = rnn.init(key, x10, seq_lengths=jnp.asarray(lengths))

  def run(ids, lengths):
    x = embed.apply(emb_params, jnp.asarray(ids))
    return rnn.apply(rnn_params, x, seq_lengths=jnp.asarray(lengths))

  carry10, out10 = run(ids10, lengths)
  carry30, out30 = run(ids30, lengths)
  garbage = np.where(ids30 == text.PAD_ID, 17, ids30)  # padding holding other ids
  carry_g, out_g = run(garbage, lengths)
  np.testing.assert_allclose(carry10, carry30, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(carry10, carry_g, rtol=1e-6, atol=1e-6)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(out10[b, :n], out30[b, :n], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out10[b, :n], out_g[b, :n], rtol=1e-6, atol=1e-6)
  # Each sentence alone (no padding at all) gives the same final state.
  for b, s in enumerate(seqs):
    carry_b, _ = run(np.asarray([s], np.int32), np.asarray([len(s)], np.int32))
    np.testing.assert_allclose(carry10[b], carry_b[0], rtol=1e-5, atol=1e-6)

"""The question-answering data: DeepMind .question files, the top-4 pickles, the tfds
builder, and the books cloze stand-in, all on small files the tests write in those formats."""

import collections
import pickle
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lnorm.lab import text as text_lib
from lnorm.lab.data import cnn_qa

# ------------------------------------------------------------------------------------------
# DeepMind .question files.

# A file exactly as the released corpus writes it (cnn/questions/training/<sha1>.question).
QUESTION = (
  'http://web.archive.org/web/20150101/http://www.cnn.com/2015/01/01/story.html\n'
  '\n'
  '( @entity0 ) -- @entity1 met @entity2 in @entity0 on tuesday . @entity1 said it went well .\n'
  '\n'
  '@placeholder met @entity2 in the capital\n'
  '\n'
  '@entity1\n'
  '\n'
  '@entity0:Washington\n'
  '@entity1:Barack Obama\n'
  '@entity2:David Cameron\n'
)


def write_question_dir(root, n_train=6, n_valid=3, n_test=2):
  """A small corpus in the DeepMind layout; answers alternate between two entities."""
  for split, n in (('training', n_train), ('validation', n_valid), ('test', n_test)):
    (root / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      a, b = (i % 2, 1 - i % 2)
      context = f'@entity{a} saw @entity{b} at the market . the {split} story {i} ends'
      q = cnn_qa.Question(
        url=f'http://example.com/{split}/{i}',
        context=tuple(context.split()),
        question=tuple(f'@placeholder saw @entity{b} today'.split()),
        answer=f'@entity{a}',
        entities={'@entity0': 'Alice', '@entity1': 'Bob Smith'},
      )
      (root / split / f'{i:04x}.question').write_text(cnn_qa.format_question(q))
  return root


def test_parse_question_reads_the_deepmind_format():
  q = cnn_qa.parse_question(QUESTION, 'x.question')
  assert q.url.startswith('http://web.archive.org/')
  assert q.context[:4] == ('(', '@entity0', ')', '--') and q.context[-1] == '.'
  assert q.question == ('@placeholder', 'met', '@entity2', 'in', 'the', 'capital')
  assert q.answer == '@entity1'
  assert q.entities == {
    '@entity0': 'Washington', '@entity1': 'Barack Obama', '@entity2': 'David Cameron'
  }  # fmt: skip
  # Written back, it is the same file; CRLF line ends read the same.
  assert cnn_qa.format_question(q) == QUESTION
  assert cnn_qa.parse_question(QUESTION.replace('\n', '\r\n')) == q


def test_entity_names_may_hold_colons():
  q = cnn_qa.parse_question(QUESTION.replace('@entity2:David Cameron', '@entity2:Star Wars: IV'))
  assert q.entities['@entity2'] == 'Star Wars: IV'


@pytest.mark.parametrize(
  'edit, match',
  [
    (lambda t: t.replace('\n\n@placeholder', '\n@placeholder'), 'line 4 should be blank'),
    (lambda t: t.replace('@placeholder met', 'someone met'), '0 @placeholder tokens'),
    (lambda t: t.replace('met @entity2 in the', 'met @placeholder in the'), '2 @placeholder'),
    (lambda t: t.replace('\n@entity1\n\n@entity0:', '\nObama\n\n@entity0:'), 'answer .line 7'),
    (lambda t: t.replace('@entity1:Barack Obama', 'Barack Obama'), 'line 10 is'),
    (lambda t: '\n'.join(t.split('\n')[:5]), 'expected at least 7'),
    (lambda t: t.replace('( @entity0 ) -- @entity1 met @entity2 in @entity0 on tuesday . '
                         '@entity1 said it went well .', ''), 'context .line 3. is empty'),
  ],
)  # fmt: skip
def test_malformed_question_files_name_the_file_and_the_fault(tmp_path, edit, match):
  path = tmp_path / 'training' / 'bad.question'
  path.parent.mkdir()
  path.write_text(edit(QUESTION))
  with pytest.raises(cnn_qa.MalformedQuestionError, match=match) as e:
    cnn_qa.read_questions(tmp_path, 'training')
  assert 'bad.question' in str(e.value)


def test_read_questions_and_missing_folders(tmp_path):
  root = write_question_dir(tmp_path / 'qa')
  got = cnn_qa.read_questions(root, 'training')
  assert [q.url for q in got] == [f'http://example.com/training/{i}' for i in range(6)]
  assert len(cnn_qa.read_questions(root, 'training', max_examples=2)) == 2
  assert cnn_qa.available_splits(root) == ['training', 'validation', 'test']
  with pytest.raises(FileNotFoundError, match='no training/ folder'):
    cnn_qa.read_questions(tmp_path / 'nowhere', 'training')
  (tmp_path / 'empty' / 'training').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r'no \*\.question files'):
    cnn_qa.read_questions(tmp_path / 'empty', 'training')
  with pytest.raises(ValueError, match='split must be one of'):
    cnn_qa.read_questions(root, 'train')


def test_encode_questions_vocabulary_and_counts():
  def question(context, query, answer):
    return cnn_qa.Question('u', tuple(context.split()), tuple(query.split()), answer, {})

  train = [
    question('@entity0 and @entity3 ran far far away', '@placeholder ran', '@entity0'),
    question('the dog ran', '@placeholder ran', '@entity1'),  # Answer not in the context.
  ]
  valid = [question('@entity7 ran', 'a very long question @placeholder ran', '@entity7')]
  data = cnn_qa.encode_questions({'train': train, 'valid': valid}, vocab_size=2, max_query_len=4)
  words = data.words
  # Reserved, then every entity number up to the largest seen in any split, then the
  # placeholder, then the 2 most frequent words (ties alphabetical).
  assert words[:3] == list(text_lib.RESERVED)
  assert words[3:11] == [f'@entity{i}' for i in range(8)]
  assert words[11:] == ['@placeholder', 'ran', 'far']
  assert data.entity_ids.tolist() == list(range(3, 11))
  assert data.placeholder_id == 11 and data.pad_id == 0
  tr = data.splits['train']
  assert tr.docs[0].tolist() == [3, text_lib.UNK_ID, 6, 12, 13, 13, text_lib.UNK_ID]
  assert tr.queries[0].tolist() == [11, 12] and tr.answers.tolist() == [3, 4]
  assert data.stats['train'] == {
    'examples': 2, 'answer_absent': 1, 'dropped_long_query': 0, 'dropped_long_doc': 0
  }  # fmt: skip
  assert data.stats['valid']['dropped_long_query'] == 1 and len(data.splits['valid']) == 0
  # Long documents are cut (the answer may go: counted) or dropped.
  cut = cnn_qa.encode_questions({'train': train}, max_doc_len=1)
  assert [len(d) for d in cut.splits['train'].docs] == [1, 1]
  assert cut.stats['train']['answer_absent'] == 1
  train[0] = question('@entity0 and @entity3 ran far far away', '@placeholder ran', '@entity3')
  assert (
    cnn_qa.encode_questions({'train': train}, max_doc_len=3).stats['train']['answer_absent'] == 1
  )
  cut = cnn_qa.encode_questions({'train': train}, max_doc_len=2)
  assert cut.stats['train']['answer_absent'] == 2  # @entity3 was at position 2: cut out.
  dropped = cnn_qa.encode_questions({'train': train}, max_doc_len=3, long_docs='drop')
  assert len(dropped.splits['train']) == 1 and dropped.stats['train']['dropped_long_doc'] == 1
  with pytest.raises(ValueError, match='long_docs must be one of'):
    cnn_qa.encode_questions({'train': train}, long_docs='cut')


def test_load_question_dir(tmp_path):
  root = write_question_dir(tmp_path / 'qa')
  data = cnn_qa.load_question_dir(root, max_examples={'train': 4})
  assert sorted(data.splits) == ['test', 'train', 'valid']
  assert [len(data.splits[s]) for s in ('train', 'valid', 'test')] == [4, 3, 2]
  for split in data.splits.values():
    for d, q, a in zip(split.docs, split.queries, split.answers, strict=True):
      assert a in d and (q == data.placeholder_id).sum() == 1
      assert d.dtype == np.int32 and q.dtype == np.int32


# ------------------------------------------------------------------------------------------
# Top-4 pickles.


def py2_pickle(obj, protocol: int) -> bytes:
  """``obj`` (dicts, lists, str, int) pickled as Python 2's cPickle writes it.

  Protocol 0 (the default of ``cPickle.dump``): text opcodes, strings as ``S'...'``;
  protocol 2: ``SHORT_BINSTRING`` strings, ``BININT`` ints. Python 3 never writes these
  string opcodes, which is why such files need ``encoding='latin1'``.
  """
  out = bytearray(b'\x80\x02' if protocol == 2 else b'')

  def put(o):
    if isinstance(o, str):
      b = o.encode('latin-1')
      out.extend(b'U' + bytes([len(b)]) + b if protocol == 2 else b"S'" + b + b"'\n")
    elif isinstance(o, int):
      out.extend(b'J' + struct.pack('<i', o) if protocol == 2 else f'I{o}\n'.encode())
    elif isinstance(o, list):
      out.extend(b'(')
      for x in o:
        put(x)
      out.extend(b'l')
    elif isinstance(o, dict):
      out.extend(b'(')
      for k, v in o.items():
        put(k)
        put(v)
      out.extend(b'd')
    else:
      raise TypeError(type(o))

  put(obj)
  out.extend(b'.')
  return bytes(out)


TOP4_DICT = {'NIL': 0, 'EOS': 1, 'UNK': 2, 'NUM': 3, '@placeholder': 4, '@entity0': 5,
             '@entity1': 6, '@entity2': 7, 'the': 8, 'caf\xe9': 9, 'met': 10}  # fmt: skip


def write_top4(root, protocol=2, bytes_keys=False, answers_as_lists=True):
  """Top-4 pickles: 3 training and 2 validation examples."""
  root.mkdir(parents=True, exist_ok=True)
  train = {
    'pass': [[5, 10, 6, 1, 8, 9], [6, 10, 7], [7, 8, 5, 3]],
    'qs': [[4, 10, 6], [6, 10, 4], [4, 8]],
    'ans': [5, 7, 7],
  }
  valid = {'pass': [[5, 10, 7], [8, 7]], 'qs': [[4, 10, 7], [4]], 'ans': [5, 6]}
  for prefix, parts in (('train4', train), ('valid4', valid)):
    for part, value in parts.items():
      if part == 'ans' and answers_as_lists:
        value = [[a] for a in value]
      (root / f'{prefix}_{part}.pkl').write_bytes(py2_pickle(value, protocol))
  if bytes_keys:  # Python 3 pickles of bytes keys (as a 2to3 conversion may leave them).
    data = pickle.dumps({k.encode('utf-8'): v for k, v in TOP4_DICT.items()}, protocol=2)
  else:
    data = py2_pickle(TOP4_DICT, protocol)
  (root / 'dict.pkl').write_bytes(data)
  return train, valid


@pytest.mark.parametrize(
  'protocol, bytes_keys, answers_as_lists', [(2, False, True), (0, False, False), (2, True, True)]
)
def test_top4_pickles_load(tmp_path, protocol, bytes_keys, answers_as_lists):
  train, valid = write_top4(tmp_path, protocol, bytes_keys, answers_as_lists)
  assert cnn_qa.read_top4_dict(tmp_path) == TOP4_DICT  # Bytes decoded, latin-1 kept.
  data = cnn_qa.load_top4(tmp_path)
  assert data.words[:4] == list(cnn_qa.TOP4_RESERVED) and data.words[9] == 'caf\xe9'
  assert len(data.words) == 11 and data.placeholder_id == 4 and data.pad_id == 0
  assert data.entity_ids.tolist() == [5, 6, 7]
  for name, raw in (('train', train), ('valid', valid)):
    split = data.splits[name]
    assert [d.tolist() for d in split.docs] == raw['pass']
    assert [q.tolist() for q in split.queries] == raw['qs']
    assert split.answers.tolist() == raw['ans']
  assert data.stats['train']['answer_absent'] == 0
  assert data.stats['valid']['answer_absent'] == 1  # Answer 6 is not in [8, 7].
  cut = cnn_qa.load_top4(tmp_path, max_doc_len=2, max_query_len=2)
  assert [d.tolist() for d in cut.splits['train'].docs] == [[7, 8]]  # The one short query.
  assert cut.stats['train']['dropped_long_query'] == 2


def test_top4_errors_name_the_file(tmp_path):
  write_top4(tmp_path)
  (tmp_path / 'valid4_qs.pkl').unlink()
  with pytest.raises(FileNotFoundError, match='missing valid4_qs.pkl'):
    cnn_qa.load_top4(tmp_path)
  write_top4(tmp_path)
  (tmp_path / 'train4_ans.pkl').write_bytes(py2_pickle([[5], [7]], 2))
  with pytest.raises(cnn_qa.MalformedQuestionError, match='train4_ans.pkl: 2') as e:
    cnn_qa.load_top4(tmp_path)
  assert 'different numbers of examples' in str(e.value)
  write_top4(tmp_path)
  (tmp_path / 'train4_ans.pkl').write_bytes(py2_pickle([[5, 6], [7], [7]], 2))
  with pytest.raises(cnn_qa.MalformedQuestionError, match=r'answer 0 is \[5, 6\], not one id'):
    cnn_qa.load_top4(tmp_path)
  write_top4(tmp_path)
  (tmp_path / 'train4_pass.pkl').write_bytes(b'not a pickle')
  with pytest.raises(cnn_qa.MalformedQuestionError, match='train4_pass.pkl: not a readable'):
    cnn_qa.load_top4(tmp_path)
  write_top4(tmp_path)
  (tmp_path / 'train4_qs.pkl').write_bytes(py2_pickle([['a'], [1], [2]], 2))
  with pytest.raises(cnn_qa.MalformedQuestionError, match='example 0 is not a list of integer'):
    cnn_qa.load_top4(tmp_path)
  write_top4(tmp_path)
  (tmp_path / 'dict.pkl').write_bytes(py2_pickle({'the': 8}, 2))
  with pytest.raises(cnn_qa.MalformedQuestionError, match="no '@placeholder' word"):
    cnn_qa.load_top4(tmp_path)
  with pytest.raises(FileNotFoundError, match='no top-4 directory'):
    cnn_qa.load_top4(tmp_path / 'absent')


# ------------------------------------------------------------------------------------------
# tfds builder.


def test_cnn_questions_builder_roundtrip(tmp_path):
  manual = write_question_dir(tmp_path / 'manual', n_train=4, n_valid=2, n_test=1)
  builder = cnn_qa.prepare(manual, tmp_path / 'tfds')
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'validation', 'test')} == {
    'train': 4, 'validation': 2, 'test': 1
  }  # fmt: skip
  source = builder.as_data_source('train')
  expected = {q.url: q for q in cnn_qa.read_questions(manual, 'training')}
  for ex in source:
    q = expected[ex['url'].decode()]
    assert ex['context'].decode().split() == list(q.context)
    assert ex['question'].decode().split() == list(q.question)
    assert ex['answer'].decode() == q.answer
    assert [e.decode() for e in ex['entities']] == [f'{k}:{v}' for k, v in q.entities.items()]
  again = tfds.builder_from_directory(builder.data_dir)  # Without the manual files.
  assert len(again.as_data_source('validation')) == 2


def test_cnn_questions_builder_missing_training(tmp_path):
  (tmp_path / 'manual' / 'validation').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='no training/ folder'):
    cnn_qa.prepare(tmp_path / 'manual', tmp_path / 'tfds')


# ------------------------------------------------------------------------------------------
# The books cloze stand-in.

NAMES = ('Anne', 'Wentworth', 'Harville', 'Bath', 'Lyme')


def book_text(seed: int, n: int = 120) -> str:
  """A Gutenberg-style book whose names are capitalised mid-sentence and whose common
  words ('The', 'She') are capitalised only at sentence starts."""
  rng = np.random.default_rng(seed)
  verbs = ('met', 'saw', 'left', 'visited', 'remembered', 'admired')
  sentences = []
  for _ in range(n):
    a, b = rng.choice(NAMES, 2, replace=False)
    kind = rng.integers(3)
    if kind == 0:
      sentences.append(f'She said that {a} {rng.choice(verbs)} {b} at last.')
    elif kind == 1:
      sentences.append(f'The weather was fine, and {a} {rng.choice(verbs)} the sea.')
    else:
      sentences.append(f'"Indeed," said {a}, "the walk to {b} is long."')
  body = '\n\n'.join(' '.join(sentences[i : i + 3]) for i in range(0, n, 3))
  return (
    '*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n'
    f'{body}\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nLicence.\n'
  )


def write_books(root):
  root.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(('alpha', 'beta', 'gamma', 'delta')):
    (root / f'{name}.txt').write_text(book_text(i))
  return root


def test_find_entities_capitalisation_heuristic():
  sentences = [text_lib.tokenize(s, lower=False) for s in text_lib.split_sentences(
    book_text(0) + ' I think Mr. Smith said I am here. I went. I saw. I ran. I sat.'
  )]  # fmt: skip
  found = cnn_qa.find_entities(sentences, min_count=3)
  assert found == {n.lower() for n in NAMES}  # Not 'she', 'the', 'indeed', 'i', 'mr.'.
  # A word lower-cased in more than 10% of its mid-sentence uses is no entity.
  mixed = [
    ['we', 'saw', 'Rose'],
    ['we', 'saw', 'Rose'],
    ['a', 'red', 'rose'],
    ['we', 'saw', 'Rose'],
  ]
  assert cnn_qa.find_entities(mixed, min_count=3) == set()
  assert cnn_qa.find_entities(mixed[:2] + mixed[3:], min_count=3) == {'rose'}


def test_select_top_sentences():
  context = [s.split() for s in (
    'anne walked to the sea', 'the sea was grey and cold', 'nothing at all here',
    'anne liked the grey sea', 'a cold grey morning by the sea', 'the end',
  )]  # fmt: skip
  query = ['@placeholder', 'saw', 'the', 'grey', 'sea', 'with', 'anne']
  # Overlaps (content words, placeholder and stopwords out): 2, 2, 0, 3, 2, 0. The top
  # one, then the ties by nearness to the query (later first), back in their order.
  assert cnn_qa.select_top_sentences(context, query, 4) == [0, 1, 3, 4]
  assert cnn_qa.select_top_sentences(context, query, 2) == [3, 4]


def check_example(q: cnn_qa.Question, context_sentences=None):
  assert q.question.count(cnn_qa.PLACEHOLDER) == 1
  assert q.answer in q.context
  ids = sorted(cnn_qa.entity_number(e) for e in q.entities)
  assert ids == list(range(len(ids)))  # A permutation of 0..n-1 over the example's entities.
  used = {t for t in q.context + q.question if t.startswith('@entity')}
  assert used == set(q.entities)
  assert all(t == t.lower() for t in q.context + q.question)


@pytest.mark.parametrize('context', ['full', 'top4'])
def test_cloze_examples(context):
  text = book_text(3)
  sentences = [text_lib.tokenize(s, lower=False) for s in text_lib.split_sentences(text)]
  entities = cnn_qa.find_entities(sentences, min_count=3)
  stats = collections.Counter()
  examples = list(cnn_qa.cloze_examples('b', sentences, entities, seed=1, context=context,
                                        context_sentences=6, stats=stats))  # fmt: skip
  assert len(examples) > 20 and stats['examples'] == len(examples)
  for q in examples:
    check_example(q)
    index = int(q.url.rsplit('/', 2)[1])
    original = [t.lower() for t in sentences[index]]
    # The query is the book's sentence with the answer's name blanked out.
    name = q.entities[q.answer].lower()
    ids = {v.lower(): k for k, v in q.entities.items()}
    assert list(q.question) == [
      cnn_qa.PLACEHOLDER if t == name else ids.get(t, t) for t in original
    ]
    assert original.count(name) == 1
    if context == 'full':
      window = [t.lower() for s in sentences[index - 6 : index] for t in s]
      assert len(q.context) == len(window)
  # One question per usable entity of a query sentence (all of them with the full context).
  by_sentence = collections.defaultdict(set)
  for q in examples:
    by_sentence[int(q.url.rsplit('/', 2)[1])].add(q.entities[q.answer].lower())
  for index, answers in by_sentence.items():
    query = [t.lower() for t in sentences[index]]
    window = {t.lower() for s in sentences[index - 6 : index] for t in s}
    usable = {t for t in query if t in entities and query.count(t) == 1 and t in window}
    assert answers == usable if context == 'full' else answers <= usable
  assert any(len(a) > 1 for a in by_sentence.values())
  # Deterministic, and the seed matters.
  again = list(cnn_qa.cloze_examples('b', sentences, entities, seed=1, context=context,
                                     context_sentences=6))  # fmt: skip
  assert again == examples
  other = list(cnn_qa.cloze_examples('b', sentences, entities, seed=2, context=context,
                                     context_sentences=6))  # fmt: skip
  assert other != examples


def test_build_books_cloze_splits_by_book_and_is_deterministic(tmp_path):
  books = write_books(tmp_path / 'books')
  kwargs = dict(context='top4', valid_books=('beta',), test_books=('gamma',),
                context_sentences=6, min_entity_count=3)  # fmt: skip
  report = cnn_qa.build_books_cloze(books, tmp_path / 'a', **kwargs)
  cnn_qa.build_books_cloze(books, tmp_path / 'b', **kwargs)
  for split, books_in in (('training', {'alpha', 'delta'}), ('validation', {'beta'}),
                          ('test', {'gamma'})):  # fmt: skip
    files = sorted((tmp_path / 'a' / split).glob('*.question'))
    assert files and {f.name.split('-')[0] for f in files} == books_in
    assert len(files) == report['splits'][split]
    for f in files:  # The same bytes from a second build.
      assert f.read_bytes() == (tmp_path / 'b' / split / f.name).read_bytes()
    for q in cnn_qa.read_questions(tmp_path / 'a', split):
      check_example(q)
  assert cnn_qa.read_build_args(tmp_path / 'a')['context'] == 'top4'
  assert {n: b['split'] for n, b in report['books'].items()} == {
    'alpha': 'training', 'beta': 'validation', 'delta': 'training', 'gamma': 'test'
  }  # fmt: skip
  assert sum(b['examples'] for b in report['books'].values()) == sum(report['splits'].values())
  # The one loader serves the stand-in.
  data = cnn_qa.load_question_dir(tmp_path / 'a')
  assert data.stats['train']['answer_absent'] == 0
  # A rebuild with another seed replaces the files.
  cnn_qa.build_books_cloze(books, tmp_path / 'a', seed=5, **kwargs)
  assert cnn_qa.read_build_args(tmp_path / 'a')['seed'] == 5
  with pytest.raises(ValueError, match=r"held-out books \['omega'\] are not in"):
    cnn_qa.build_books_cloze(books, tmp_path / 'c', valid_books=('omega',), test_books=())


@pytest.mark.real_data
def test_books_cloze_on_a_real_book(tmp_path, shared_data):
  books = tmp_path / 'books'
  books.mkdir()
  (books / 'persuasion.txt').symlink_to(shared_data / 'books' / 'persuasion.txt')
  report = cnn_qa.build_books_cloze(books, tmp_path / 'out', valid_books=(), test_books=())
  assert report['books']['persuasion']['entities'] > 30
  assert report['splits']['training'] > 500
  qs = cnn_qa.read_questions(tmp_path / 'out', 'training', max_examples=200)
  names = collections.Counter(q.entities[q.answer] for q in qs)
  assert {'Anne', 'Wentworth', 'Elliot'} <= set(names)
  for q in qs:
    check_example(q)

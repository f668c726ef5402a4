"""Tests of the text data sources: book triples and SentEval readers, and their tfds builders."""

import numpy as np
import pytest

from lnorm.lab.data import books, senteval

# ------------------------------------------------------------------------------------------
# Books.

MODERN_GUTENBERG = """\
The Project Gutenberg EBook of A Test, by Nobody

This eBook is for the use of anyone anywhere at no cost.

*** START OF THE PROJECT GUTENBERG EBOOK A TEST ***

Produced by Volunteers

CHAPTER I

It was a dark night. Mr. Smith
walked home.

"Who is there?" he asked. Nobody answered.

End of Project Gutenberg's A Test, by Nobody

*** END OF THE PROJECT GUTENBERG EBOOK A TEST ***

Updated editions will replace the previous one.
"""

OLD_GUTENBERG = """\
*****The Project Gutenberg Etext of Old Poems*****

Please take a look at the important information in this header.

***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***
Why is this "Small Print!" statement here? You know: lawyers.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

This is the 1992 Project Gutenberg release of Old Poems.

The rose is red. The sky is blue.
The end is near.

End of The Project Gutenberg Etext of Old Poems
"""


def write_books(root):
  (root / 'modern.txt').write_text(MODERN_GUTENBERG)
  (root / 'old.txt').write_text(OLD_GUTENBERG, encoding='latin-1')
  (root / 'sub').mkdir()
  lines = 'the first sentence .\nthe second one !\n\nthe third ?\nthe fourth .\n'
  (root / 'sub' / 'corpus.txt').write_text(lines)


def test_strip_gutenberg_modern_and_old_markers():
  body = books.strip_gutenberg(MODERN_GUTENBERG)
  assert 'START OF' not in body and 'END OF' not in body and 'Gutenberg' not in body
  assert 'It was a dark night.' in body and 'Nobody answered.' in body
  assert 'Updated editions' not in body
  old = books.strip_gutenberg(OLD_GUTENBERG)
  assert 'SMALL PRINT' not in old and 'lawyers' not in old and 'Etext' not in old
  assert old.strip().startswith('The rose is red.')
  plain = 'Chapter 1\n\nA plain book. Without any header.\n'
  assert books.strip_gutenberg(plain) == plain


def test_book_sentences_layouts(tmp_path):
  write_books(tmp_path)
  assert books.book_sentences(tmp_path / 'modern.txt') == [
    'Produced by Volunteers',
    'CHAPTER I',
    'It was a dark night.',
    'Mr. Smith walked home.',
    '"Who is there?" he asked.',
    'Nobody answered.',
  ]
  assert books.book_sentences(tmp_path / 'old.txt') == [
    'The rose is red.',
    'The sky is blue.',
    'The end is near.',
  ]
  assert books.detect_layout((tmp_path / 'sub' / 'corpus.txt').read_text()) == 'lines'
  assert books.detect_layout(MODERN_GUTENBERG) == 'text'
  assert books.book_sentences(tmp_path / 'sub' / 'corpus.txt') == [
    'the first sentence .',
    'the second one !',
    'the third ?',
    'the fourth .',
  ]
  with pytest.raises(ValueError, match='layout'):
    books.book_sentences(tmp_path / 'old.txt', layout='xml')


def test_triples_are_contiguous_and_never_cross_books(tmp_path):
  write_books(tmp_path)
  triples = list(books.iter_triples(tmp_path))
  by_book = {}
  for t in triples:
    by_book.setdefault(t['book'], []).append(t)
  assert sorted(by_book) == ['modern', 'old', 'sub/corpus']
  for name, ts in by_book.items():
    path = tmp_path / f'{name}.txt'
    sents = books.book_sentences(path)
    assert len(ts) == len(sents) - 2
    for t in ts:
      i = t['index']
      assert (t['previous'], t['current'], t['next']) == tuple(sents[i - 1 : i + 2])
  assert by_book['old'][0]['previous'] == 'The rose is red.'


def test_books_missing_files_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    list(books.iter_triples(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match=r'no book files \(\*\.txt\)'):
    list(books.iter_triples(tmp_path))


# ------------------------------------------------------------------------------------------
# SentEval.


def write_senteval(root):
  """A tiny SentEval tree in the real formats (latin-1 TREC, CRLF SICK test, empty lines)."""
  for task, (folder, neg, pos) in senteval.BINARY_FILES.items():
    (root / folder).mkdir(parents=True)
    (root / folder / neg).write_text(f'a bad {task} one . \nworse . \n\n')
    (root / folder / pos).write_text(f'a good {task} one . \n')
  (root / 'TREC').mkdir()
  (root / 'TREC' / 'train_5500.label').write_bytes(
    'NUM:dist How far is it ?\nHUM:ind Who is the sister\xf0city man ?\n'
    'ABBR:exp What is the full form of .com ?\n'.encode('latin-1')
  )
  (root / 'TREC' / 'TREC_10.label').write_text('LOC:city What city ?\nDESC:def What is X ?\n')
  (root / 'SICK').mkdir()
  header = 'pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment'
  rows = {
    'SICK_train.txt': ['1\tA man runs\tA person runs\t4.5\tENTAILMENT', '2\tA\tB\t1\tNEUTRAL'],
    'SICK_trial.txt': ['4\tA cat\tNo cat\t3.6\tCONTRADICTION'],
    'SICK_test_annotated.txt': ['6\tX y\tX z\t3.3\tNEUTRAL', '7\tP\tQ\t5\tENTAILMENT'],
  }
  for name, lines in rows.items():
    eol = '\r\n' if name == 'SICK_test_annotated.txt' else '\n'
    (root / 'SICK' / name).write_bytes(eol.join([header, *lines, '']).encode())


def test_senteval_readers_on_written_files(tmp_path):
  write_senteval(tmp_path)
  mr = senteval.load_binary(tmp_path, 'MR')
  # Negatives first; the empty line is kept as SentEval keeps it.
  assert mr['sentences'] == ['a bad MR one .', 'worse .', '', 'a good MR one .']
  np.testing.assert_array_equal(mr['labels'], [0, 0, 0, 1])
  assert len(senteval.load_binary(tmp_path, 'MR', keep_empty=False)['sentences']) == 3
  assert senteval.load_binary(tmp_path, 'SUBJ')['sentences'][0] == 'a bad SUBJ one .'
  trec = senteval.load_trec(tmp_path)
  assert trec['train']['sentences'][1] == 'Who is the sister\xf0city man ?'  # latin-1
  assert [senteval.TREC_CLASSES[i] for i in trec['train']['labels']] == ['NUM', 'HUM', 'ABBR']
  assert [senteval.TREC_CLASSES[i] for i in trec['test']['labels']] == ['LOC', 'DESC']
  sick = senteval.load_sick(tmp_path)
  assert {k: len(v['sentence_a']) for k, v in sick.items()} == {
    'train': 2,
    'validation': 1,
    'test': 2,
  }
  test = sick['test']
  assert test['sentence_b'] == ['X z', 'Q']  # no '\r' left by the CRLF file
  np.testing.assert_allclose(test['relatedness'], [3.3, 5.0])
  assert test['relatedness'].dtype == np.float32
  np.testing.assert_array_equal(test['pair_id'], [6, 7])
  assert [senteval.SICK_ENTAILMENT[i] for i in sick['train']['entailment']] == [
    'ENTAILMENT',
    'NEUTRAL',
  ]


def test_senteval_missing_files_fail_clearly(tmp_path):
  write_senteval(tmp_path)
  (tmp_path / 'CR' / 'custrev.pos').unlink()
  with pytest.raises(FileNotFoundError, match=r'SentEval CR: missing CR/custrev.pos under'):
    senteval.load_task(tmp_path, 'CR')
  with pytest.raises(FileNotFoundError, match='SICK/SICK_train.txt'):
    senteval.load_sick(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='unknown SentEval task'):
    senteval.load_task(tmp_path, 'SST')
  with pytest.raises(ValueError, match='bad TREC line'):
    senteval.parse_trec_line('FOO:bar What ?')


# ------------------------------------------------------------------------------------------
# Real data (skipped without ../shared/data).


@pytest.mark.real_data
def test_real_senteval_counts(shared_data):
  root = shared_data / 'senteval'
  counts = {t: len(senteval.load_binary(root, t)['sentences']) for t in senteval.BINARY_TASKS}
  assert counts == {'MR': 10662, 'CR': 3775, 'SUBJ': 10000, 'MPQA': 10606}
  balance = {t: float(senteval.load_binary(root, t)['labels'].mean()) for t in ('MR', 'SUBJ')}
  assert balance == {'MR': 0.5, 'SUBJ': 0.5}
  trec = senteval.load_trec(root)
  assert (len(trec['train']['labels']), len(trec['test']['labels'])) == (5452, 500)
  assert set(trec['train']['labels'].tolist()) == set(range(6))
  sick = senteval.load_sick(root)
  assert [len(sick[s]['sentence_a']) for s in ('train', 'validation', 'test')] == [
    4500,
    500,
    4927,
  ]
  for part in sick.values():
    assert part['relatedness'].min() >= 1.0 and part['relatedness'].max() <= 5.0
    assert not any('\r' in s for s in part['sentence_b'])


@pytest.mark.real_data
def test_real_books_triples(shared_data):
  root = shared_data / 'books'
  files = books.book_files(root)
  assert len(files) == 16
  for path in files:
    sents = books.book_sentences(path)
    assert len(sents) > 300, path.name
    joined = ' '.join(sents).lower()
    assert 'gutenberg' not in joined and 'small print' not in joined, path.name
  n = 0
  for t in books.iter_triples(root):
    n += 1
    if n > 5000:
      break
    assert t['previous'] and t['current'] and t['next']
  assert n > 5000
  # The end of a Gutenberg book is its text, not the licence.
  ball = books.book_sentences(root / 'chesterton-ball.txt')
  assert 'ashes' in ball[-1]

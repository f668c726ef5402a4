"""The SentEval downstream sets of the paper's Table 3, read from SentEval's own file layout.

``manual_dir`` holds one folder per task, with SentEval's file names::

  MR/rt-polarity.{pos,neg}            10,662 movie-review snippets, 1 = positive
  CR/custrev.{pos,neg}                 3,775 product-review sentences, 1 = positive
  SUBJ/subj.{subjective,objective}    10,000 sentences, 1 = subjective
  MPQA/mpqa.{pos,neg}                 10,606 opinion phrases, 1 = positive
  TREC/train_5500.label, TREC_10.label 5,452 / 500 questions, 6 coarse classes
  SICK/SICK_train.txt, SICK_trial.txt, SICK_test_annotated.txt
                                      4,500 / 500 / 4,927 sentence pairs, relatedness 1-5

Files are read as UTF-8 and, when that fails, as latin-1 (``TREC/train_5500.label`` is
latin-1); line ends may be ``\\n`` or ``\\r\\n`` (the SICK test file has CRLF);
surrounding whitespace is stripped. Empty lines are skipped, except in the binary sets,
where SentEval keeps them (see :func:`load_binary`). The binary sets are returned
negative class first, then positive, in file order. TREC lines are ``COARSE:fine words``;
the label is the coarse class (:data:`TREC_CLASSES`, as SentEval does). SICK files are
tab-separated with a header (``pair_ID sentence_A sentence_B relatedness_score
entailment_judgment``).

Plain-Python readers (:func:`load_binary`, :func:`load_trec`, :func:`load_sick`,
:func:`load_task`) serve the evaluation directly, without TensorFlow or tfds.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

BINARY_TASKS = ('MR', 'CR', 'SUBJ', 'MPQA')
TASKS = (*BINARY_TASKS, 'TREC', 'SICK')

# task -> (folder, negative-class file, positive-class file) ; label 0 = first file.
BINARY_FILES = {
  'MR': ('MR', 'rt-polarity.neg', 'rt-polarity.pos'),
  'CR': ('CR', 'custrev.neg', 'custrev.pos'),
  'SUBJ': ('SUBJ', 'subj.objective', 'subj.subjective'),
  'MPQA': ('MPQA', 'mpqa.neg', 'mpqa.pos'),
}
BINARY_CLASSES = {
  'MR': ('negative', 'positive'),
  'CR': ('negative', 'positive'),
  'SUBJ': ('objective', 'subjective'),
  'MPQA': ('negative', 'positive'),
}
TREC_FILES = {'train': 'train_5500.label', 'test': 'TREC_10.label'}
TREC_CLASSES = ('ABBR', 'DESC', 'ENTY', 'HUM', 'LOC', 'NUM')
SICK_FILES = {
  'train': 'SICK_train.txt',
  'validation': 'SICK_trial.txt',
  'test': 'SICK_test_annotated.txt',
}
SICK_ENTAILMENT = ('NEUTRAL', 'ENTAILMENT', 'CONTRADICTION')


def task_files(task: str) -> list[str]:
  """The files a task needs, relative to ``manual_dir``."""
  if task in BINARY_FILES:
    folder, neg, pos = BINARY_FILES[task]
    return [f'{folder}/{neg}', f'{folder}/{pos}']
  if task == 'TREC':
    return [f'TREC/{name}' for name in TREC_FILES.values()]
  if task == 'SICK':
    return [f'SICK/{name}' for name in SICK_FILES.values()]
  raise ValueError(f'unknown SentEval task {task!r}; choose from {TASKS}')


def check_files(manual_dir: str | os.PathLike, task: str) -> pathlib.Path:
  """Returns ``manual_dir`` as a path; raises FileNotFoundError naming any missing file."""
  root = pathlib.Path(manual_dir).expanduser()
  missing = [name for name in task_files(task) if not (root / name).is_file()]
  if missing:
    raise FileNotFoundError(
      f'SentEval {task}: missing {", ".join(missing)} under {str(root)!r} (SentEval file '
      'layout expected, e.g. ../shared/data/senteval; see lnorm/data/senteval.py)'
    )
  return root


def read_lines(path: str | os.PathLike, keep_empty: bool = False) -> list[str]:
  """Stripped lines of a text file; UTF-8, else latin-1; LF or CRLF line ends.

  Args:
    path: the file.
    keep_empty: keep empty lines (as ``''``) instead of skipping them.
  """
  data = pathlib.Path(path).read_bytes()
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError:
    text = data.decode('latin-1')
  lines = [line.strip() for line in text.splitlines()]
  return lines if keep_empty else [line for line in lines if line]


def load_binary(manual_dir: str | os.PathLike, task: str, keep_empty: bool = True) -> dict:
  """MR, CR, SUBJ or MPQA.

  SentEval keeps the empty lines of these files as (empty) sentences: CR has 4 and MPQA
  3, which its counts (CR 3,775, MPQA 10,606) include. ``keep_empty=True`` does the same,
  so that the numbers are comparable; encoders must accept the empty string.

  Returns:
    ``{'sentences': list[str] (N), 'labels': int64[N]}``, label 0 for the first class of
    :data:`BINARY_CLASSES` (negative / objective), negatives first.
  """
  if task not in BINARY_FILES:
    raise ValueError(f'not a binary SentEval task: {task!r}; choose from {BINARY_TASKS}')
  root = check_files(manual_dir, task)
  folder, neg, pos = BINARY_FILES[task]
  neg_lines = read_lines(root / folder / neg, keep_empty)
  pos_lines = read_lines(root / folder / pos, keep_empty)
  labels = np.array([0] * len(neg_lines) + [1] * len(pos_lines), dtype=np.int64)
  return {'sentences': neg_lines + pos_lines, 'labels': labels}


def parse_trec_line(line: str) -> tuple[str, str]:
  """``'NUM:dist How far ...'`` -> ``('NUM', 'How far ...')`` (coarse label, question)."""
  label, _, question = line.partition(' ')
  coarse = label.split(':', 1)[0]
  if coarse not in TREC_CLASSES:
    raise ValueError(f'bad TREC line (label {label!r} not in {TREC_CLASSES}): {line!r}')
  return coarse, question.strip()


def load_trec(manual_dir: str | os.PathLike) -> dict:
  """TREC question types, coarse labels.

  Returns:
    ``{'train': {...}, 'test': {...}}``, each ``{'sentences': list[str], 'labels':
    int64[N]}`` with labels indexing :data:`TREC_CLASSES`.
  """
  root = check_files(manual_dir, 'TREC')
  out = {}
  for split, name in TREC_FILES.items():
    pairs = [parse_trec_line(line) for line in read_lines(root / 'TREC' / name)]
    out[split] = {
      'sentences': [q for _, q in pairs],
      'labels': np.array([TREC_CLASSES.index(c) for c, _ in pairs], dtype=np.int64),
    }
  return out


def load_sick(manual_dir: str | os.PathLike) -> dict:
  """SICK relatedness (and entailment labels).

  Returns:
    ``{'train', 'validation', 'test'}`` (train, trial, test_annotated), each
    ``{'pair_id': int64[N], 'sentence_a': list[str], 'sentence_b': list[str],
    'relatedness': float32[N] in [1, 5], 'entailment': int64[N]}`` with entailment
    indexing :data:`SICK_ENTAILMENT`.
  """
  root = check_files(manual_dir, 'SICK')
  out = {}
  for split, name in SICK_FILES.items():
    lines = read_lines(root / 'SICK' / name)
    header = lines[0].split('\t')
    if header[:4] != ['pair_ID', 'sentence_A', 'sentence_B', 'relatedness_score']:
      raise ValueError(f'{name}: unexpected SICK header {header}')
    rows = [line.split('\t') for line in lines[1:]]
    bad = [r for r in rows if len(r) < 5]
    if bad:
      raise ValueError(f'{name}: {len(bad)} rows with fewer than 5 fields, e.g. {bad[0]}')
    out[split] = {
      'pair_id': np.array([int(r[0]) for r in rows], dtype=np.int64),
      'sentence_a': [r[1].strip() for r in rows],
      'sentence_b': [r[2].strip() for r in rows],
      'relatedness': np.array([float(r[3]) for r in rows], dtype=np.float32),
      'entailment': np.array([SICK_ENTAILMENT.index(r[4].strip()) for r in rows], np.int64),
    }
  return out


def load_task(manual_dir: str | os.PathLike, task: str) -> dict:
  """One task: :func:`load_binary`, :func:`load_trec` or :func:`load_sick`."""
  if task in BINARY_FILES:
    return load_binary(manual_dir, task)
  if task == 'TREC':
    return load_trec(manual_dir)
  if task == 'SICK':
    return load_sick(manual_dir)
  raise ValueError(f'unknown SentEval task {task!r}; choose from {TASKS}')

"""SICK entailment as an order: a real-data stand-in for the text side of order embeddings.

Not the paper's data. The layer-norm paper's §6.1 trains order embeddings of captions and
images on MSCOCO, which is not on these machines. The order-embeddings paper (Vendrov
et al. 2016, §3.3, and its ``textual_entailment`` code) also embeds sentence pairs of an
entailment corpus in one order: a premise that entails its hypothesis lies *below* it
(further from the origin), so the hypothesis ``h`` and premise ``p`` of an entailment pair
should have ``E(h, p) = ||max(0, h - p)||^2 = 0``. SICK (``SICK_{train,trial,
test_annotated}.txt``, 4,500 / 500 / 4,927 pairs, read by
:func:`lnorm.lab.data.senteval.load_sick`) gives that task here: every pair judged
``ENTAILMENT`` (sentence A entails sentence B) is a positive, ``NEUTRAL`` and
``CONTRADICTION`` pairs are negatives ("entails vs not", 2 classes).

:func:`load_sick_order` returns, per split (``train``, ``dev`` = SICK trial, ``test``),
``{'premise': list[str], 'hypothesis': list[str], 'label': int32[N]}`` with label 1 for
entailment. The sentences are raw text; tokenize them with
:func:`lnorm.lab.text.tokenize`.
"""

from __future__ import annotations

import os

import numpy as np

from lnorm.lab.data import senteval

#: This project's split names and SICK's (``load_sick``'s) ones.
SPLITS = {'train': 'train', 'dev': 'validation', 'test': 'test'}
ENTAILMENT = senteval.SICK_ENTAILMENT.index('ENTAILMENT')


def load_sick_order(senteval_dir: str | os.PathLike) -> dict[str, dict]:
  """The SICK pairs as ordered (premise, hypothesis) pairs with 0/1 entailment labels.

  Args:
    senteval_dir: the SentEval directory (``SICK/`` inside it; e.g. ../shared/data/senteval).

  Returns:
    ``{'train', 'dev', 'test'}``, each ``{'premise': list[str] (sentence A),
    'hypothesis': list[str] (sentence B), 'label': int32[N]}`` (1: A entails B).

  Raises:
    FileNotFoundError: a SICK file is missing (named).
  """
  sick = senteval.load_sick(senteval_dir)
  out = {}
  for split, name in SPLITS.items():
    part = sick[name]
    out[split] = {
      'premise': list(part['sentence_a']),
      'hypothesis': list(part['sentence_b']),
      'label': (part['entailment'] == ENTAILMENT).astype(np.int32),
    }
  return out


def majority_rate(labels: np.ndarray) -> float:
  """The accuracy of always predicting the more frequent class, in percent."""
  labels = np.asarray(labels)
  if labels.size == 0:
    raise ValueError('majority_rate of no labels.')
  positive = float(np.mean(labels == 1))
  return 100.0 * max(positive, 1.0 - positive)

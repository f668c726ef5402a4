"""The COCO caption/feature loaders, on small files written in exactly the two layouts in use."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lnorm.lab.data import coco

WORDS = ('a', 'man', 'dog', 'red', 'bus', 'on', 'the', 'street', 'two', 'cats', 'sitting')


def _captions(n_images: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, rng.integers(3, 9))) for _ in range(5 * n_images)]


def _features(n_images: int, seed: int, dim: int = coco.FEATURE_DIM) -> np.ndarray:
  x = np.random.default_rng(seed).random((n_images, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_coco(
  root: pathlib.Path,
  layout: str,
  sizes: dict[str, int] | None = None,
  dim: int = coco.FEATURE_DIM,
  name: str = 'coco',
) -> pathlib.Path:
  """Caption and feature files of ``layout`` ('order' or 'vse'), ``sizes`` images per split.

  Captions are pre-tokenized lowercase words, five consecutive lines per image; features
  float32 [N, dim] with unit rows, as the order-embeddings ``coco.zip`` has them.
  """
  sizes = sizes or {'train': 6, 'dev': 3, 'test': 4}
  root.mkdir(parents=True, exist_ok=True)
  for i, (split, n) in enumerate(sizes.items()):
    caps_path, ims_path = coco.split_files(root, split, layout, name=name)
    ims_path.parent.mkdir(parents=True, exist_ok=True)
    caps_path.write_text('\n'.join(_captions(n, i)) + '\n')
    np.save(ims_path, _features(n, i, dim))
  return root


@pytest.mark.parametrize('layout', ['order', 'vse'])
def test_both_layouts_read_the_same_data(tmp_path, layout):
  root = write_coco(tmp_path / layout, layout)
  assert coco.detect_layout(root) == layout
  data = coco.load_coco(root)
  assert set(data) == {'train', 'dev', 'test'}
  for i, (split, n) in enumerate({'train': 6, 'dev': 3, 'test': 4}.items()):
    assert data[split]['captions'] == _captions(n, i)
    np.testing.assert_array_equal(np.asarray(data[split]['images']), _features(n, i))
    assert data[split]['images'].dtype == np.float32


def test_order_layout_file_names(tmp_path):
  assert coco.split_files(tmp_path, 'dev', 'order') == (
    tmp_path / 'val.txt',
    tmp_path / 'images' / '10crop' / 'val.npy',
  )
  assert coco.split_files(tmp_path, 'test', 'vse', name='f30k') == (
    tmp_path / 'f30k_test_caps.txt',
    tmp_path / 'f30k_test_ims.npy',
  )


def test_crlf_and_empty_captions_keep_the_alignment(tmp_path):
  root = write_coco(tmp_path, 'vse', {'train': 2, 'dev': 1, 'test': 1})
  lines = ['a man', '', 'a dog\x0cruns', 'two cats', 'a bus'] * 2
  (root / 'coco_train_caps.txt').write_bytes('\r\n'.join(lines).encode() + b'\r\n')
  captions = coco.load_split(root, 'train')['captions']
  assert len(captions) == 10 and captions[1] == '' and captions[2] == 'a dog\x0cruns'


def test_wrong_caption_count_fails_clearly(tmp_path):
  root = write_coco(tmp_path, 'order')
  with open(root / 'val.txt', 'a') as f:
    f.write('one caption too many\n')
  with pytest.raises(
    ValueError, match=r'val.txt: 16 captions for the 3 images .* expected 5 per image \(15\)'
  ):
    coco.load_split(root, 'dev')


def test_wrong_feature_width_fails_clearly(tmp_path):
  root = write_coco(tmp_path, 'vse', dim=512)
  with pytest.raises(ValueError, match=r'image features of shape \(6, 512\); expected \[N, 4096\]'):
    coco.load_split(root, 'train')
  assert coco.load_split(root, 'train', feature_dim=512)['images'].shape == (6, 512)


def test_missing_split_and_missing_data_fail_clearly(tmp_path):
  root = write_coco(tmp_path / 'a', 'order')
  (root / 'test.txt').unlink()
  with pytest.raises(
    FileNotFoundError, match=r"COCO split 'test' \(order layout\): missing .*test.txt"
  ):
    coco.load_coco(root)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    coco.detect_layout(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='no COCO data in .*train.txt with images/10crop'):
    coco.load_coco(tmp_path / 'empty')
  with pytest.raises(ValueError, match="unknown COCO split 'val'"):
    coco.load_split(root, 'val')
  with pytest.raises(ValueError, match="unknown COCO layout 'flat'"):
    coco.load_coco(root, layout='flat')


def test_both_layouts_in_one_directory_is_ambiguous(tmp_path):
  write_coco(tmp_path, 'order')
  write_coco(tmp_path, 'vse')
  with pytest.raises(ValueError, match='holds both COCO layouts'):
    coco.detect_layout(tmp_path)
  assert len(coco.load_split(tmp_path, 'dev', layout='vse')['captions']) == 15


def test_tfds_builder_roundtrip(tmp_path):
  manual = write_coco(tmp_path / 'manual', 'order', {'train': 3, 'dev': 2, 'test': 2})
  builder = coco.prepare(manual, tmp_path / 'tfds')
  assert builder.info.splits['train'].num_examples == 3
  source = builder.as_data_source('validation')
  first = source[0]
  assert [c.decode() for c in first['captions']] == _captions(2, 1)[:5]
  np.testing.assert_allclose(first['image_features'], _features(2, 1)[0])
  again = tfds.builder_from_directory(builder.data_dir)
  assert len(again.as_data_source('test')) == 2

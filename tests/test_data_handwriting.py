"""The handwriting data: the IAM-OnDB loader on files written in its exact layout, the
offsets, and the Hershey stand-in (format parser, rendering, writers, splits)."""

import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import handwriting as hw_config  # noqa: E402
from experiments import handwriting as hw  # noqa: E402
from lnorm.lab.data import hershey, iam_ondb  # noqa: E402

# ----------------------------------------------------------------------------------------
# IAM-OnDB, in the layout of lineStrokes-all.tar.gz and ascii-all.tar.gz.


def stroke_xml(strokes) -> str:
  """A lineStrokes file as IAM-OnDB writes it (whiteboard description, then the strokes)."""
  body = []
  t = 100.0
  for s in strokes:
    points = []
    for x, y in s:
      points.append(f'      <Point x="{x}" y="{y}" time="{t:.2f}"/>')
      t += 0.01
    body.append(
      f'    <Stroke colour="black" start_time="{t:.2f}" end_time="{t:.2f}">\n'
      + '\n'.join(points)
      + '\n    </Stroke>'
    )
  return (
    '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
    '<WhiteboardCaptureSession>\n'
    '  <WhiteboardDescription>\n'
    '    <SensorLocation corner="top_left"/>\n'
    '    <DiagonallyOppositeCoords x="6512" y="1376"/>\n'
    '    <VerticallyOppositeCoords x="966" y="1376"/>\n'
    '    <HorizontallyOppositeCoords x="6512" y="787"/>\n'
    '  </WhiteboardDescription>\n'
    '  <StrokeSet>\n' + '\n'.join(body) + '\n  </StrokeSet>\n'
    '</WhiteboardCaptureSession>\n'
  )


def transcription(lines) -> str:
  """An ascii/ file: the OCR'd form text, then the corrected lines after CSR:."""
  return 'OCR:\n\n' + '\n'.join(lines).upper() + '\n\nCSR:\n\n' + '\n'.join(lines) + '\n'


FORMS = {
  # form: [(text, strokes)]
  'a01-000u': [
    ('A MOVE to stop', [[(1073, 1058), (1080, 1050), (1090, 1047)], [(1100, 1060), (1105, 1070)]]),
    ('Mr. Gaitskell', [[(1200, 1000), (1210, 1001)], [(1220, 990)], [(1230, 995), (1240, 999)]]),
  ],
  'a01-001w': [('from nominating', [[(500, 700), (510, 690), (520, 700), (530, 712)]])],
  'b02-010x': [
    ('any more Labour', [[(10, 20), (11, 22), (13, 25)]]),
    ('life Peers', [[(40, 50), (41, 49)], [(45, 55), (47, 53)]]),
  ],
}


def write_iam(root: pathlib.Path, forms=FORMS, lists=True) -> None:
  for form, lines in forms.items():
    a, b = form.split('-')
    strokes_dir = root / 'lineStrokes' / a / f'{a}-{b[:3]}'
    ascii_dir = root / 'ascii' / a / f'{a}-{b[:3]}'
    strokes_dir.mkdir(parents=True, exist_ok=True)
    ascii_dir.mkdir(parents=True, exist_ok=True)
    for i, (_, strokes) in enumerate(lines, 1):
      (strokes_dir / f'{form}-{i:02d}.xml').write_text(stroke_xml(strokes), 'latin-1')
    (ascii_dir / f'{form}.txt').write_text(transcription([t for t, _ in lines]), 'latin-1')
  if lists:
    (root / 'trainset.txt').write_text('a01-000u\nb02-010x\n')
    (root / 'testset_v.txt').write_text('a01-001w\n')


def test_parse_strokes_flips_y_and_marks_stroke_ends(tmp_path):
  path = tmp_path / 'x.xml'
  path.write_text(stroke_xml([[(1, 2), (3, 5)], [(4, 4)], [(7, 1), (8, 0), (9, 2)]]))
  points = iam_ondb.parse_strokes(path)
  np.testing.assert_array_equal(
    points,
    [[1, -2, 0], [3, -5, 1], [4, -4, 1], [7, -1, 0], [8, 0, 0], [9, -2, 1]],
  )
  assert points.dtype == np.float32


def test_iter_lines_matches_csr_lines_to_files_in_order(tmp_path):
  write_iam(tmp_path)
  lines = list(iam_ondb.iter_lines(tmp_path))
  assert [ln['id'] for ln in lines] == [
    'a01-000u-01', 'a01-000u-02', 'a01-001w-01', 'b02-010x-01', 'b02-010x-02'
  ]  # fmt: skip
  expected = [t for form in FORMS.values() for t, _ in form]
  assert [ln['text'] for ln in lines] == expected
  got = lines[1]['points']
  np.testing.assert_array_equal(got[:, 0], [1200, 1210, 1220, 1230, 1240])
  np.testing.assert_array_equal(got[:, 1], [-1000, -1001, -990, -995, -999])
  np.testing.assert_array_equal(got[:, 2], [0, 1, 1, 0, 1])


def test_lines_are_ordered_by_their_number_not_by_name(tmp_path):
  forms = {'c03-000a': [(f'line {i}', [[(i, i), (i + 1, i)]]) for i in range(1, 12)]}
  write_iam(tmp_path, forms, lists=False)
  lines = list(iam_ondb.iter_lines(tmp_path))
  assert [ln['text'] for ln in lines] == [f'line {i}' for i in range(1, 12)]
  assert lines[9]['points'][0, 0] == 10


def test_line_count_mismatch_fails_clearly_or_is_skipped(tmp_path):
  write_iam(tmp_path)
  txt = tmp_path / 'ascii' / 'a01' / 'a01-001' / 'a01-001w.txt'
  txt.write_text(transcription(['from nominating', 'an extra line']))
  with pytest.raises(ValueError, match=r'form a01-001w has 1 stroke files .* but 2 CSR lines in'):
    list(iam_ondb.iter_lines(tmp_path))
  kept = list(iam_ondb.iter_lines(tmp_path, on_mismatch='skip'))
  assert len(kept) == 4 and all(ln['form'] != 'a01-001w' for ln in kept)
  with pytest.raises(ValueError, match='on_mismatch must be one of'):
    list(iam_ondb.iter_lines(tmp_path, on_mismatch='ignore'))


def test_missing_transcription_fails_clearly(tmp_path):
  write_iam(tmp_path)
  (tmp_path / 'ascii' / 'b02' / 'b02-010' / 'b02-010x.txt').unlink()
  with pytest.raises(FileNotFoundError, match='no transcription .*b02-010x.txt'):
    list(iam_ondb.iter_lines(tmp_path))
  assert len(list(iam_ondb.iter_lines(tmp_path, on_mismatch='skip'))) == 3


def test_malformed_files_name_the_file(tmp_path):
  write_iam(tmp_path)
  bad = tmp_path / 'lineStrokes' / 'a01' / 'a01-000' / 'a01-000u-02.xml'
  bad.write_text('<WhiteboardCaptureSession><StrokeSet><Stroke>')
  with pytest.raises(ValueError, match=r'a01-000u-02.xml: malformed XML'):
    list(iam_ondb.iter_lines(tmp_path))
  bad.write_text('<StrokeSet><Stroke><Point x="1" time="0"/></Stroke></StrokeSet>')
  with pytest.raises(ValueError, match=r'a01-000u-02.xml: a <Point> without numeric x and y'):
    list(iam_ondb.iter_lines(tmp_path))
  bad.write_text('<WhiteboardCaptureSession></WhiteboardCaptureSession>')
  with pytest.raises(ValueError, match=r'a01-000u-02.xml: no <StrokeSet>'):
    list(iam_ondb.iter_lines(tmp_path))
  bad.write_text(stroke_xml([[(1, 1)]]))
  txt = tmp_path / 'ascii' / 'a01' / 'a01-000' / 'a01-000u.txt'
  txt.write_text('OCR:\n\nA MOVE\n')
  with pytest.raises(ValueError, match=r'a01-000u.txt: no "CSR:" line'):
    list(iam_ondb.iter_lines(tmp_path))


def test_missing_folders_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match='lineStrokes.* does not exist; data_dir must hold'):
    list(iam_ondb.iter_lines(tmp_path))
  (tmp_path / 'lineStrokes').mkdir()
  (tmp_path / 'ascii').mkdir()
  with pytest.raises(FileNotFoundError, match='no stroke files'):
    list(iam_ondb.iter_lines(tmp_path))


def test_splits_from_the_form_lists_and_seeded_by_form(tmp_path):
  write_iam(tmp_path)
  lines = list(iam_ondb.iter_lines(tmp_path))
  lists = iam_ondb.read_form_lists(tmp_path)
  assert lists == {'trainset': ['a01-000u', 'b02-010x'], 'testset_v': ['a01-001w']}
  split = iam_ondb.split_lines(lines, lists, {'train': ['trainset'], 'valid': ['testset_v']})
  assert [ln['id'] for ln in split['valid']] == ['a01-001w-01']
  assert len(split['train']) == 4
  # A list that is absent: a seeded split by form (no form in two splits).
  seeded = iam_ondb.split_lines(
    lines, lists, {'train': ['trainset'], 'valid': ['testset_f']}, seed=1,
    fractions={'valid': 0.34},
  )  # fmt: skip
  forms = {s: {ln['form'] for ln in v} for s, v in seeded.items()}
  assert len(forms['valid']) == 1 and not forms['train'] & forms['valid']
  assert sum(len(v) for v in seeded.values()) == len(lines)
  again = iam_ondb.split_lines(
    lines, lists, {'train': ['trainset'], 'valid': ['testset_f']}, seed=1,
    fractions={'valid': 0.34},
  )  # fmt: skip
  assert again == seeded
  with pytest.raises(ValueError, match='name no line that was loaded'):
    iam_ondb.split_lines(lines, {'trainset': ['z99-999z']}, {'train': ['trainset']})


def test_offsets_standardisation_and_back():
  points = np.array([[10, 5, 0], [12, 4, 0], [15, 4, 1], [30, 8, 0], [31, 9, 1]], np.float32)
  off = iam_ondb.to_offsets(points)
  np.testing.assert_array_equal(off, [[2, -1, 0], [3, 0, 1], [15, 4, 0], [1, 1, 1]])
  mean, std = iam_ondb.offset_stats([off])
  np.testing.assert_allclose(mean, [5.25, 1.0])
  np.testing.assert_allclose(std, np.std(off[:, :2], axis=0), rtol=1e-6)
  z = iam_ondb.standardize(off, mean, std)
  np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-6)
  np.testing.assert_array_equal(z[:, 2], off[:, 2])
  back = iam_ondb.to_points(z, mean, std)
  np.testing.assert_allclose(back, points - [10, 5, 0], atol=1e-5)  # From the origin.


def test_tfds_builder_writes_one_split_per_list(tmp_path):
  manual = tmp_path / 'manual'
  write_iam(manual)
  builder = iam_ondb.prepare(manual, tmp_path / 'tfds')
  assert set(builder.info.splits) == {'trainset', 'testset_v'}
  source = builder.as_data_source('trainset')
  got = {ex['id'].decode(): ex for ex in source}
  assert sorted(got) == ['a01-000u-01', 'a01-000u-02', 'b02-010x-01', 'b02-010x-02']
  expected = {ln['id']: ln for ln in iam_ondb.iter_lines(manual)}
  for key, ex in got.items():
    np.testing.assert_array_equal(ex['points'], expected[key]['points'])
    assert ex['text'].decode() == expected[key]['text']


def test_experiment_prepares_iam_arrays(tmp_path):
  write_iam(tmp_path / 'iam')
  config = hw_config.get_config('data=iam,smoke')
  config.data_dir = str(tmp_path / 'iam')
  config.iam_train_lists, config.iam_valid_lists = 'trainset', 'testset_v'
  config.max_points = 3  # The 5-point lines are cut to 3 offsets; the text is kept whole.
  arrays, meta = hw.prepare_data(config, tmp_path / 'run')
  assert meta['num_lines'] == {'train': 4, 'valid': 1, 'test': 0}
  assert meta['num_cut']['train'] == 2 and meta['stand_in'] is False
  assert meta['alphabet'] == ''.join(
    sorted(set('A MOVE to stopMr. Gaitskellany more Labourlife Peers'))
  )
  train = arrays['train']
  assert train['strokes'].shape == (4, 3, 3) and train['text'].shape == (4, meta['max_chars'])
  np.testing.assert_array_equal(train['mask'].sum(1), [3, 3, 2, 3])
  np.testing.assert_array_equal(train['text_mask'].sum(1), [14, 13, 15, 10])
  first = ''.join(meta['alphabet'][i - 1] for i in train['text'][0, :14])
  assert first == 'A MOVE to stop'
  # Valid characters outside the training alphabet are id 0 (unknown), still unmasked.
  valid = arrays['valid']
  assert valid['text'][0, valid['text_mask'][0] > 0].min() == 0
  # The saved arrays are read back by a resumed run.
  again, meta2 = hw.prepare_data(config, tmp_path / 'run')
  assert meta2 == meta
  np.testing.assert_array_equal(again['train']['strokes'], train['strokes'])


def test_experiment_reports_missing_iam_clearly(tmp_path, monkeypatch):
  monkeypatch.setenv('LNORM_DATA_DIR', str(tmp_path))
  config = hw_config.get_config('data=iam,smoke')
  config.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='data_dir must hold lineStrokes/ and ascii/'):
    hw.prepare_data(config, None)


# ----------------------------------------------------------------------------------------
# Hershey fonts.


def test_parse_jhf_record_by_hand():
  # The exclamation mark of the Roman fonts: bounds (-5, 5), a bar and a dot.
  (glyph,) = hershey.parse_jhf('12345  9MWRFRT RRYQZR[SZRY\n')
  assert (glyph.left, glyph.right) == (-5, 5)
  assert len(glyph.strokes) == 2
  np.testing.assert_array_equal(glyph.strokes[0], [[0, -12], [0, 2]])
  np.testing.assert_array_equal(glyph.strokes[1], [[0, 7], [-1, 8], [0, 9], [1, 8], [0, 7]])


def test_parse_jhf_wrapped_record_and_errors():
  record = '12345 12H]SBLb RYBRb RLOZO RKUYU'
  wrapped = record[:20] + '\n' + record[20:] + '\n12345  1JZ\n'
  glyphs = hershey.parse_jhf(wrapped)
  assert len(glyphs) == 2 and len(glyphs[0].strokes) == 4 and not glyphs[1].strokes
  unwrapped = hershey.parse_jhf(record)[0].strokes
  assert all(np.array_equal(a, b) for a, b in zip(glyphs[0].strokes, unwrapped, strict=True))
  with pytest.raises(ValueError, match=r'font.jhf: the record at line 1 declares 12 vertices'):
    hershey.parse_jhf(record[:-2] + '\n', 'font.jhf')
  with pytest.raises(ValueError, match=r'font.jhf: line 2 is not a Hershey record'):
    hershey.parse_jhf('12345  1JZ\nhello world\n', 'font.jhf')


def write_font(path: pathlib.Path, count: int = 96) -> None:
  lines = ['12345  1JZ']
  for k in range(1, count):
    body = f'MW{chr(ord("R") + k % 5 - 2)}FRT RPRTR'
    lines.append(f'{k:5d}{len(body) // 2:3d}{body}')
  path.write_text('\n'.join(lines) + '\n')


def test_load_font_maps_records_to_ascii(tmp_path):
  write_font(tmp_path / 'cursive.jhf')
  font = hershey.load_font(tmp_path / 'cursive.jhf')
  assert sorted(font) == [chr(c) for c in range(32, 127)]
  assert not font[' '].strokes and len(font['!'].strokes) == 2
  write_font(tmp_path / 'short.jhf', 50)
  with pytest.raises(ValueError, match='50 glyphs; a font in ASCII order needs at least 95'):
    hershey.load_font(tmp_path / 'short.jhf')
  with pytest.raises(FileNotFoundError, match=r'no scripts.jhf in .*the fonts there are: cursive'):
    hershey.load_fonts(tmp_path, ['cursive', 'scripts'])


def _fonts(tmp_path):
  for name in hershey.SCRIPT_FONTS:
    write_font(tmp_path / f'{name}.jhf')
  return hershey.load_fonts(tmp_path, hershey.SCRIPT_FONTS)


def test_render_line_strokes_pen_ups_and_orientation(tmp_path):
  fonts = _fonts(tmp_path)
  style = hershey.WriterStyle(
    font='cursive', slant=0.0, scale_x=1.0, scale_y=1.0, spacing=0.0, word_spacing=0.0,
    step=1.0, jitter=0.0, jitter_wavelength=20.0, baseline_drift=0.0,
  )  # fmt: skip
  points = hershey.render_line('!! !', fonts, style, np.random.default_rng(0))
  assert points.dtype == np.float32 and points.shape[1] == 3
  # Two strokes per glyph, three glyphs: six pen-ups, the last on the last point.
  assert points[:, 2].sum() == 6 and points[-1, 2] == 1
  # '!' of the test font: bounds (-5, 5), a bar from (-1, -12) to (0, 2) in font units with
  # y down, so drawn from (4, 12) to (5, -2) once shifted by -left and flipped.
  np.testing.assert_allclose(points[0, :2], [4.0, 12.0])
  first_stroke = points[: np.flatnonzero(points[:, 2])[0] + 1]
  np.testing.assert_allclose(first_stroke[-1, :2], [5.0, -2.0], atol=1e-6)
  assert np.all(np.diff(first_stroke[:, 1]) < 0)
  # Arc-length step 1 (+-10% per stroke) on the 14.04-unit bar: 14 to 17 points.
  assert 14 <= len(first_stroke) <= 17
  # The third '!' starts after two advances and a space: 10 + 10 + 16 units.
  starts = np.concatenate([[0], np.flatnonzero(points[:, 2])[:-1] + 1])
  np.testing.assert_allclose(points[starts[4], :2], [36.0 + 4.0, 12.0])
  with pytest.raises(
    ValueError, match=r"characters \['\xe9'\] are not in the Hershey font 'cursive'"
  ):
    hershey.render_line('caf\u00e9', fonts, style, np.random.default_rng(0))


def test_writers_are_deterministic_and_differ(tmp_path):
  fonts = _fonts(tmp_path)
  a = hershey.writer_style(0, 3)
  assert a == hershey.writer_style(0, 3) and a != hershey.writer_style(0, 4)
  assert a != hershey.writer_style(1, 3)
  one = hershey.render_line('abc', fonts, a, np.random.default_rng(5))
  two = hershey.render_line('abc', fonts, a, np.random.default_rng(5))
  np.testing.assert_array_equal(one, two)
  jittered = hershey.render_line('abc', fonts, a, np.random.default_rng(6))
  assert jittered.shape != one.shape or not np.array_equal(jittered, one)


def test_text_lines_cut_at_words():
  sentences = ['The \u201cquick\u201d brown fox \u2014 jumps', 'over the na\u00efve dog.']
  lines = hershey.text_lines(sentences, max_chars=12, min_chars=4)
  assert lines == ['The "quick"', 'brown fox -', 'jumps over', 'the dog.']
  assert all(len(t) <= 12 for t in lines)


def test_make_dataset_splits_by_writer_and_fits_max_points(tmp_path):
  _fonts(tmp_path)
  texts = ['aa bb cc', 'dd ee', 'ff gg hh ii']
  kwargs = dict(
    num_writers=8, lines_per_writer=3, split_writers={'valid': 2, 'test': 1},
    max_points=80, seed=3,
  )  # fmt: skip
  data = hershey.make_dataset(tmp_path, texts, **kwargs)
  writers = {s: {ex['writer'] for ex in v} for s, v in data.items()}
  assert writers == {'train': set(range(5)), 'valid': {6, 7}, 'test': {5}}  # From the end.
  for items in data.values():
    for ex in items:
      assert len(ex['points']) <= 80 and ex['text']
      assert any(ex['text'] == t or t.startswith(ex['text'] + ' ') for t in texts)
  again = hershey.make_dataset(tmp_path, texts, **kwargs)
  for s in data:
    for x, y in zip(data[s], again[s], strict=True):
      assert x['text'] == y['text'] and np.array_equal(x['points'], y['points'])
  with pytest.raises(ValueError, match='leave none of the 8 to train on'):
    hershey.make_dataset(tmp_path, texts, **dict(kwargs, split_writers={'valid': 8}))


def test_acknowledgements_are_written(tmp_path):
  path = hershey.write_acknowledgements(tmp_path)
  text = path.read_text()
  assert 'Dr. A. V. Hershey' in text and 'U. S. National Bureau of Standards' in text
  assert 'James Hurt' in text and 'Cognition, Inc.' in text and 'Billerica, MA 01821' in text


@pytest.mark.real_data
def test_real_hershey_fonts_render(shared_data):
  fonts_dir = shared_data / 'hershey'
  if not fonts_dir.is_dir():
    pytest.skip('no hershey/ in the shared data')
  fonts = hershey.load_fonts(fonts_dir, hershey.SCRIPT_FONTS)
  for name, font in fonts.items():
    assert len(font) == 95 and not font[' '].strokes, name
    # Record order is ASCII: '.' is a narrow glyph, 'm' wider than 'i'.
    width = {c: g.right - g.left for c, g in font.items()}
    assert width['m'] > width['i'] and width['.'] < width['W'], name
    style = hershey.writer_style(0, 1, (name,))
    points = hershey.render_line('Hello world', fonts, style, np.random.default_rng(0))
    assert 100 < len(points) < 600 and points[-1, 2] == 1
  assert 'Hershey' in (fonts_dir / 'COPYRIGHT').read_text()

"""Bad input to the InterHuman build: strict errors, recorded skips, and nothing half-written.

Each case corrupts one clip of a small hand-made layout. In ``strict`` mode the build must stop
with a message naming the file and the problem and leave nothing in ``data_dir``; in ``skip``
mode it must leave the clip out and record it (id, file, reason) in ``build_report.json``.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from data_pipelines import interhuman
from data_pipelines import prepare
from finedual_jax.data import decompositions
from finedual_jax.data import pipeline
from finedual_jax.data import tokenizer as tokenizer_lib

CAPTIONS = ('Two people face each other and wave with the left hand.',
            'One person walks clockwise around the other.',
            'Both bow slowly.')
SPLITS = {'train': ['good', 'bad', 'other'], 'val': ['val1'], 'test': ['test1']}


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def make_layout(root: pathlib.Path, splits=SPLITS, frames: int = 24,
                captions=CAPTIONS) -> pathlib.Path:
  """A minimal InterHuman layout: random raw motions, the same captions for every clip."""
  for sub in ('annots', 'motions_processed/person1', 'motions_processed/person2', 'split'):
    (root / sub).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, ids in splits.items():
    for clip_id in ids:
      for person in (1, 2):
        np.save(root / f'motions_processed/person{person}/{clip_id}.npy',
                rng.normal(size=(frames, 492)).astype(np.float32))
      (root / f'annots/{clip_id}.txt').write_text(''.join(c + '\n' for c in captions))
  for split in interhuman.SPLITS:
    (root / f'split/{split}.txt').write_text(''.join(f'{c}\n' for c in splits.get(split, [])))
  return root


def _npy(root, clip_id='bad', person=1):
  return root / f'motions_processed/person{person}/{clip_id}.npy'


def _truncate(root):
  path = _npy(root)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path, r'not a readable \.npy array'


def _pickled_object(root):
  np.save(_npy(root), np.array([{'frames': 3}], dtype=object), allow_pickle=True)
  return _npy(root), r'not a readable \.npy array'


def _text_file(root):
  _npy(root).write_text('this is not an array')
  return _npy(root), r'not a readable \.npy array'


def _string_array(root):
  np.save(_npy(root), np.full((24, 492), 'x'))
  return _npy(root), 'expected a numeric array'


def _wrong_columns(root):
  np.save(_npy(root), np.zeros((24, 491), np.float32))
  return _npy(root), r'expected shape \(T, 492\), found \(24, 491\)'


def _nan_frames(root):
  raw = np.load(_npy(root, person=2))
  raw[5, 10] = np.nan
  raw[7, 0] = np.inf
  np.save(_npy(root, person=2), raw)
  return _npy(root, person=2), r'2 frame\(s\) with NaN/Inf, the first at frame 5'


def _length_mismatch(root):
  np.save(_npy(root, person=2), np.load(_npy(root, person=2))[:-3])
  return _npy(root, person=2), 'person2 has 21 frames and person1 has 24'


def _missing_captions(root):
  (root / 'annots/bad.txt').unlink()
  return root / 'annots/bad.txt', 'caption file missing'


def _empty_captions(root):
  (root / 'annots/bad.txt').write_text('\n  \n')
  return root / 'annots/bad.txt', 'no captions'


def _latin1_captions(root):
  (root / 'annots/bad.txt').write_bytes('Two people greet each other \xe0 la fran\xe7aise.\n'
                                        .encode('latin-1'))
  return root / 'annots/bad.txt', 'not UTF-8 text'


def _latin1_individual(root):
  folder = root / 'annots_individual/person1'
  folder.mkdir(parents=True)
  (folder / 'bad.txt').write_bytes('Une personne salue \xe0 gauche.\n'.encode('latin-1'))
  return folder / 'bad.txt', 'not UTF-8 text'


def _no_motion(root):
  for person in (1, 2):
    _npy(root, person=person).unlink()
  return _npy(root), 'motion file missing'


CASES = {f.__name__.lstrip('_'): f for f in (
    _truncate, _pickled_object, _text_file, _string_array, _wrong_columns, _nan_frames,
    _length_mismatch, _missing_captions, _empty_captions, _latin1_captions, _latin1_individual,
    _no_motion)}


def _leftovers(data_dir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob('*')) if data_dir.exists() else []


@pytest.mark.parametrize('case', sorted(CASES))
def test_strict_stops_naming_the_file_and_leaves_nothing(case, tmp_path):
  root = make_layout(tmp_path / 'raw')
  path, reason = CASES[case](root)
  data_dir = tmp_path / 'tfds'
  with pytest.raises(ValueError, match=rf'clip bad: {path}: .*{reason}'):
    prepare.prepare(root, data_dir)
  assert _leftovers(data_dir) == []


@pytest.mark.parametrize('case', sorted(CASES))
def test_skip_leaves_the_clip_out_and_records_it(case, tmp_path, capsys):
  root = make_layout(tmp_path / 'raw')
  path, reason = CASES[case](root)
  dataset_dir = prepare.prepare(root, tmp_path / 'tfds', on_error='skip')
  ids = {_text(pipeline.data_source(dataset_dir, 'train')[i]['clip_id']) for i in range(4)}
  assert ids == {'good', 'good_mirror', 'other', 'other_mirror'}
  report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
  assert report['on_error'] == 'skip'
  [skipped] = report['skipped']
  assert skipped['id'] == 'bad' and skipped['split'] == 'train'
  assert skipped['file'] == str(path)
  assert __import__('re').search(reason, skipped['reason'])
  assert report['splits']['train'] == {'listed': 3, 'clips': 2, 'mirrored': 2, 'ignored': 0,
                                       'skipped': 1}
  assert 'skipped 1' in capsys.readouterr().out  # The printed summary says so.
  assert prepare.is_complete(dataset_dir)


def test_short_clips_are_skipped_and_recorded_in_both_modes(tmp_path):
  for mode in interhuman.ON_ERROR:
    root = make_layout(tmp_path / mode / 'raw')
    raw = np.load(_npy(root))[:interhuman.MIN_FRAMES - 1]
    for person in (1, 2):
      np.save(_npy(root, person=person), raw)
    dataset_dir = prepare.prepare(root, tmp_path / mode / 'tfds', on_error=mode)
    report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
    assert [(s['id'], s['reason']) for s in report['skipped']] == [
        ('bad', f'shorter than {interhuman.MIN_FRAMES} frames ({interhuman.MIN_FRAMES - 1}).')]


def test_duplicate_ids_strict_names_the_split_file_and_line(tmp_path):
  root = make_layout(tmp_path / 'raw')
  (root / 'split/test.txt').write_text('test1\nother\n')
  with pytest.raises(ValueError, match=rf"{root / 'split/test.txt'}:2: duplicate id 'other' "
                     r'\(first listed in train\.txt line 3\)'):
    prepare.prepare(root, tmp_path / 'tfds')
  assert _leftovers(tmp_path / 'tfds') == []


def test_duplicate_ids_skip_keeps_the_first_listing(tmp_path):
  root = make_layout(tmp_path / 'raw')
  (root / 'split/train.txt').write_text('good\nbad\nother\ngood\n')
  dataset_dir = prepare.prepare(root, tmp_path / 'tfds', on_error='skip')
  assert len(pipeline.data_source(dataset_dir, 'train')) == 6
  report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
  assert [(s['id'], s['split']) for s in report['skipped']] == [('good', 'train')]
  assert 'duplicate id' in report['skipped'][0]['reason']


def test_a_failing_finalize_step_leaves_nothing_behind(tmp_path, monkeypatch):
  root = make_layout(tmp_path / 'raw')

  def broken(dataset_dir, *, vocab_size):
    raise OSError(f'disk full while writing {dataset_dir}')

  monkeypatch.setattr(prepare, 'build_artifacts', broken)
  with pytest.raises(OSError, match='disk full'):
    prepare.prepare(root, tmp_path / 'tfds')
  assert _leftovers(tmp_path / 'tfds') == []


def test_an_incomplete_existing_version_folder_is_not_overwritten(tmp_path):
  root = make_layout(tmp_path / 'raw')
  stale = tmp_path / 'tfds' / 'interhuman' / '0.1.0'
  stale.mkdir(parents=True)
  (stale / 'dataset_info.json').write_text('{}')
  with pytest.raises(FileExistsError, match=f'{stale} already exists; delete it'):
    prepare.prepare(root, tmp_path / 'tfds')
  assert _leftovers(tmp_path / 'tfds') == ['interhuman', 'interhuman/0.1.0',
                                           'interhuman/0.1.0/dataset_info.json']


def test_cli_reports_bad_input_with_exit_status_2(tmp_path, capsys):
  root = make_layout(tmp_path / 'raw')
  path, _ = _wrong_columns(root)
  assert prepare.main(['--manual_dir', str(root), '--data_dir', str(tmp_path / 'tfds')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: clip bad: ') and str(path) in err
  assert prepare.main(['--manual_dir', str(root), '--data_dir', str(tmp_path / 'tfds'),
                       '--on_error', 'skip']) == 0


# --- Per-person texts: JSONL decompositions, annots_individual/, rule-based fallback --------

def _record(clip_id, index, person1='A person waves.', person2='A person waves back.',
            overall=None):
  return decompositions.Decomposition(
      clip_id=clip_id, caption_index=index, overall=overall or CAPTIONS[index],
      person1=person1, person2=person2, model='test-llm', prompt_version='decompose_v1')


def _person_texts(dataset_dir, split, clip_id):
  source = pipeline.data_source(dataset_dir, split)
  for i in range(len(source)):
    example = source[i]
    if _text(example['clip_id']) == clip_id:
      return ([_text(t) for t in example['person1_texts']],
              [_text(t) for t in example['person2_texts']],
              [_text(t) for t in example['person_text_source']])
  raise KeyError(clip_id)


def test_text_sources_in_priority_order_and_counted(tmp_path):
  root = make_layout(tmp_path / 'raw')
  for person in (1, 2):  # in2IN's files for 'good' (2 lines: the third caption has none).
    folder = root / f'annots_individual/person{person}'
    folder.mkdir(parents=True)
    (folder / 'good.txt').write_text(f'File text {person}a.\nFile text {person}b.\n')
  jsonl = tmp_path / 'dec.jsonl'
  decompositions.write_jsonl(jsonl, [
      _record('good', 0, 'A person raises the left hand.', 'A person waves with the left hand.'),
      _record('val1', 2, 'A person bows.', 'A person bows too.')])
  dataset_dir = prepare.prepare(root, tmp_path / 'tfds', decomposition_files=[jsonl])
  person1, person2, sources = _person_texts(dataset_dir, 'train', 'good')
  assert sources == ['jsonl', 'file', 'rule']
  assert person1[:2] == ['A person raises the left hand.', 'File text 1b.']
  assert person2[:2] == ['A person waves with the left hand.', 'File text 2b.']
  # Mirrored copies swap the sides in the decomposed texts too.
  person1, person2, _ = _person_texts(dataset_dir, 'train', 'good_mirror')
  assert person1[0] == 'A person raises the right hand.'
  assert person2[1] == 'File text 2b.'
  assert _person_texts(dataset_dir, 'val', 'val1')[2] == ['rule', 'rule', 'jsonl']
  report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
  # 5 clips x 3 captions: 2 from JSONL, 1 from files, the rest rule-based.
  assert report['text_sources'] == {'jsonl': 2, 'file': 1, 'rule': 12}
  assert report['decomposition_files'] == [str(jsonl)]


def _write_lines(path, lines):
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return path


@pytest.mark.parametrize('line, strict_pattern', [
    ('{"clip_id": "good", "caption_index": 0', r'dec\.jsonl:2: not valid JSON'),
    ('["good", 0]', r'dec\.jsonl:2: expected a JSON object, found list'),
    ('{"clip_id": "good", "caption_index": 1, "overall": "x"}', r'dec\.jsonl:2: missing field'),
    (_record('good', 0, 'A', 'B').to_json(), r"dec\.jsonl:2: a second record for clip 'good' "
     r'caption 0 \(the first is on line 1\)'),
])
def test_malformed_decomposition_lines(line, strict_pattern, tmp_path):
  root = make_layout(tmp_path / 'raw')
  jsonl = _write_lines(tmp_path / 'dec.jsonl', [_record('good', 0).to_json(), line])
  with pytest.raises(ValueError, match=strict_pattern):
    prepare.prepare(root, tmp_path / 'strict', decomposition_files=[jsonl])
  assert _leftovers(tmp_path / 'strict') == []
  dataset_dir = prepare.prepare(root, tmp_path / 'skip', decomposition_files=[jsonl],
                                on_error='skip')
  report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
  [skipped] = report['skipped']
  assert skipped['file'] == str(jsonl) and skipped['line'] == 2
  assert _person_texts(dataset_dir, 'train', 'good')[2][0] == 'jsonl'  # Line 1 still counts.


@pytest.mark.parametrize('record, strict_pattern', [
    (_record('nobody', 0), r"dec\.jsonl: decomposition for unknown clip id 'nobody'"),
    (_record('good', 1, overall='Two people dance.'),
     r"clip good: decomposition for clip 'good' caption 1: its overall text 'Two people dance\.' "
     r'is not caption 1'),
    (_record('good', 7, overall='Extra.'),
     r"clip good: decomposition for clip 'good' caption 7: caption index 7 but the clip has 3"),
])
def test_decompositions_that_do_not_fit_the_data(record, strict_pattern, tmp_path):
  root = make_layout(tmp_path / 'raw')
  jsonl = _write_lines(tmp_path / 'dec.jsonl', [record.to_json()])
  with pytest.raises(ValueError, match=strict_pattern):
    prepare.prepare(root, tmp_path / 'strict', decomposition_files=[jsonl])
  assert _leftovers(tmp_path / 'strict') == []
  dataset_dir = prepare.prepare(root, tmp_path / 'skip', decomposition_files=[jsonl],
                                on_error='skip')
  report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
  assert len(report['skipped']) == 1 and report['skipped'][0]['id'] == record.clip_id
  assert 'jsonl' not in report['text_sources']


# --- Real LLM decompositions (InterControl's plans, ../shared/data) --------------------------

PLANS = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'intercontrol' / 'plans.json'


@pytest.mark.skipif(not PLANS.is_file(), reason=f'{PLANS} absent (shared data is not shipped '
                    'with the project)')
def test_real_llm_decompositions_are_ingested_and_tokenised(tmp_path):
  plans = json.loads(PLANS.read_text(encoding='utf-8'))
  ids = [f'p{i:04d}' for i in range(len(plans))]
  captions = {clip_id: f'{plan["text_person1"]} {plan["text_person2"]}'
              for clip_id, plan in zip(ids, plans)}
  root = make_layout(tmp_path / 'raw', {'train': ids[:-2], 'val': ids[-2:-1], 'test': ids[-1:]},
                     frames=16, captions=('placeholder',))
  for clip_id, caption in captions.items():
    (root / f'annots/{clip_id}.txt').write_text(caption + '\n', encoding='utf-8')
  # from_dict collapses whitespace, as reading does (some real texts have double spaces).
  records = [decompositions.from_dict({
      'clip_id': clip_id, 'caption_index': 0, 'overall': captions[clip_id],
      'person1': plan['text_person1'], 'person2': plan['text_person2'],
      'model': 'intercontrol-plans', 'prompt_version': 'unknown'})
      for clip_id, plan in zip(ids, plans)]
  jsonl = tmp_path / 'plans.jsonl'
  decompositions.write_jsonl(jsonl, records)
  assert decompositions.read_jsonl(jsonl)[0] == records  # The file format round-trips.
  dataset_dir = prepare.prepare(root, tmp_path / 'tfds', decomposition_files=[jsonl],
                                vocab_size=2000)
  report = json.loads((dataset_dir / interhuman.REPORT_FILE).read_text())
  assert report['text_sources'] == {'jsonl': len(plans)} and report['skipped'] == []
  person1, person2, _ = _person_texts(dataset_dir, 'val', ids[-2])
  assert (person1, person2) == ([records[-2].person1], [records[-2].person2])
  tok = tokenizer_lib.Tokenizer(dataset_dir / pipeline.TOKENIZER_FILE)
  texts = [t for r in records for t in (r.overall, r.person1, r.person2)]
  ids_ = tok.encode(texts, 160)
  assert not np.any(ids_ == tokenizer_lib.UNK_ID)
  assert [tok.decode(row) for row in ids_[:50]] == [t.lower() for t in texts[:50]]  # Case-folded.

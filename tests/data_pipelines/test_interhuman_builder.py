"""Tests for the InterHuman TFDS builder and the data set build, on the synthetic layout.

The synthetic set is built once per module (a build costs seconds); bad inputs use small
hand-made layouts made by copying a few of its clips and editing them.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from data_pipelines import interhuman
from data_pipelines import prepare
from finedual_jax.data import decompose
from finedual_jax.data import pipeline
from finedual_jax.data import tokenizer as tokenizer_lib
from finedual_jax.motion import features as features_lib
from finedual_jax.motion import skeleton


def _lines(path: pathlib.Path) -> list[str]:
  return [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _raw(root: pathlib.Path, clip_id: str, person: int) -> np.ndarray:
  return np.load(root / 'motions_processed' / f'person{person}' / f'{clip_id}.npy')


def _used_motion(root: pathlib.Path, clip_id: str, mirror: bool = False) -> np.ndarray:
  """[T, 2, 192] float32 reference: raw_to_used of the source files, optionally mirrored."""
  used = [features_lib.raw_to_used(_raw(root, clip_id, p)) for p in (1, 2)]
  positions, rotations = np.stack([u[0] for u in used]), np.stack([u[1] for u in used])
  if mirror:
    positions, rotations = features_lib.mirror_used(positions, rotations)
  num_frames = positions.shape[1]
  motion = np.concatenate([positions.reshape(2, num_frames, 66),
                           rotations.reshape(2, num_frames, 126)], axis=-1)
  return motion.transpose(1, 0, 2).astype(np.float32)


def _examples(dataset_dir: pathlib.Path, split: str) -> dict[str, dict]:
  source = pipeline.data_source(dataset_dir, split)
  examples = {}
  for i in range(len(source)):
    example = source[i]
    examples[_text(example['clip_id'])] = example
  assert len(examples) == len(source)  # Clip ids are unique within a split.
  return examples


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[bytes, int]]:
  return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  raw_dir = tmp_path_factory.mktemp('synthetic') / 'interhuman'
  data_dir = tmp_path_factory.mktemp('tfds')
  dataset_dir = prepare.prepare_synthetic(raw_dir, data_dir, clips_per_type=2)
  return raw_dir, data_dir, dataset_dir


@pytest.fixture(scope='module')
def examples(built):
  _, _, dataset_dir = built
  return {split: _examples(dataset_dir, split) for split in interhuman.SPLITS}


def _kept_ids(raw_dir: pathlib.Path, split: str) -> list[str]:
  ignored = set(_lines(raw_dir / 'split' / 'ignore_list.txt'))
  return [c for c in _lines(raw_dir / 'split' / f'{split}.txt')
          if c not in ignored and _raw(raw_dir, c, 1).shape[0] >= interhuman.MIN_FRAMES]


# --- The built synthetic set ----------------------------------------------------------------

def test_split_sizes_drop_ignored_and_short_clips_and_double_train(built, examples):
  raw_dir, _, _ = built
  ignored = set(_lines(raw_dir / 'split' / 'ignore_list.txt'))
  listed = {s: _lines(raw_dir / 'split' / f'{s}.txt') for s in interhuman.SPLITS}
  short = {c for ids in listed.values() for c in ids
           if _raw(raw_dir, c, 1).shape[0] < interhuman.MIN_FRAMES}
  # The generated set exercises both exclusions, so the counts below are not vacuous.
  assert ignored & set(listed['train']) and short
  for split in interhuman.SPLITS:
    kept = [c for c in listed[split] if c not in ignored and c not in short]
    expected_ids = set(kept) | ({f'{c}_mirror' for c in kept} if split == 'train' else set())
    assert set(examples[split]) == expected_ids, split
    assert len(examples[split]) == len(kept) * (2 if split == 'train' else 1)


def test_ignored_ids_never_appear(built, examples):
  raw_dir, _, _ = built
  ignored = set(_lines(raw_dir / 'split' / 'ignore_list.txt'))
  stored = {c.removesuffix('_mirror') for split in examples.values() for c in split}
  assert not stored & ignored


def test_motion_is_the_used_raw_columns_y_up(built, examples):
  raw_dir, _, _ = built
  for split, by_id in examples.items():
    for clip_id, example in by_id.items():
      if clip_id.endswith('_mirror'):
        continue
      motion = example['motion']
      assert motion.dtype == np.float32
      assert motion.shape == (example['num_frames'], 2, features_lib.USED_DIM)
      assert example['num_frames'] == _raw(raw_dir, clip_id, 1).shape[0]
      assert not example['mirrored']
      np.testing.assert_array_equal(motion, _used_motion(raw_dir, clip_id), err_msg=clip_id)


def test_mirrored_copies_are_mirror_used_with_sides_swapped_in_texts(built, examples):
  raw_dir, _, _ = built
  train = examples['train']
  mirrored_ids = [c for c in train if c.endswith('_mirror')]
  assert mirrored_ids
  changed_texts = 0
  for clip_id in mirrored_ids:
    original, mirrored = train[clip_id.removesuffix('_mirror')], train[clip_id]
    assert mirrored['mirrored'] and mirrored['num_frames'] == original['num_frames']
    np.testing.assert_array_equal(
        mirrored['motion'], _used_motion(raw_dir, clip_id.removesuffix('_mirror'), mirror=True))
    for key in ('captions', 'person1_texts', 'person2_texts'):
      before = [_text(t) for t in original[key]]
      after = [_text(t) for t in mirrored[key]]
      assert after == [interhuman.swap_sides(t) for t in before], (clip_id, key)
      changed_texts += sum(a != b for a, b in zip(after, before))
  assert changed_texts > 0  # Some texts name a side or a direction.


def test_person_texts_come_from_the_individual_files(built, examples):
  raw_dir, _, _ = built
  for split, by_id in examples.items():
    for clip_id, example in by_id.items():
      if clip_id.endswith('_mirror'):
        continue
      assert [_text(t) for t in example['captions']] == _lines(raw_dir / 'annots' / f'{clip_id}.txt')
      for p in (1, 2):
        individual = _lines(raw_dir / 'annots_individual' / f'person{p}' / f'{clip_id}.txt')
        assert [_text(t) for t in example[f'person{p}_texts']] == individual
      assert [_text(s) for s in example['person_text_source']] == [interhuman.TEXT_SOURCE_FILE] * 3


@pytest.mark.parametrize('text, expected', [
    ('counterclockwise', 'clockwise'),
    ('clockwise', 'counterclockwise'),
    ('Left', 'Right'),
    ('RIGHT', 'LEFT'),
    ('Counter-clockwise', 'Clockwise'),
    ('anticlockwise', 'clockwise'),
    ('turns leftward', 'turns rightward'),
    ('the rightmost one', 'the leftmost one'),
    ('raises the left hand, then turns right and circles clockwise.',
     'raises the right hand, then turns left and circles counterclockwise.'),
    ('leftover', 'leftover'),
    ('rightly', 'rightly'),
    ('a bright light', 'a bright light'),
    ('copyright', 'copyright'),
])
def test_swap_sides(text, expected):
  assert interhuman.swap_sides(text) == expected


def test_swap_sides_is_an_involution_on_canonical_words():
  text = 'Left then right, clockwise then counterclockwise, LEFT and Right.'
  assert interhuman.swap_sides(interhuman.swap_sides(text)) == text


def test_statistics_match_a_direct_numpy_computation(built):
  raw_dir, _, dataset_dir = built
  mean, std = pipeline.load_statistics(dataset_dir / pipeline.STATS_FILE)
  assert mean.shape == std.shape == (features_lib.FEATURE_DIM,)
  assert np.all(std >= pipeline.STD_FLOOR)
  rows = []
  for clip_id in _kept_ids(raw_dir, 'train'):
    for mirror in (False, True):
      feats = features_lib.interhuman_pair_features(
          _raw(raw_dir, clip_id, 1), _raw(raw_dir, clip_id, 2), mirror=mirror)
      rows.append(feats.reshape(-1, features_lib.FEATURE_DIM).astype(np.float64))
  rows = np.concatenate(rows)
  np.testing.assert_allclose(mean, rows.mean(axis=0), atol=1e-4)
  np.testing.assert_allclose(std, np.maximum(rows.std(axis=0), pipeline.STD_FLOOR), atol=1e-4,
                             rtol=1e-4)
  # Mirrored copies are in the statistics, so the mean lateral position of a joint is minus
  # that of its mirror joint (and 0 on the spine).
  mean_x = mean[features_lib.POSITIONS][0::3]
  np.testing.assert_allclose(mean_x, -mean_x[skeleton.MIRROR_PERMUTATION], atol=1e-5)


def test_tokenizer_is_built_and_covers_the_training_texts(built, examples):
  _, _, dataset_dir = built
  path = dataset_dir / pipeline.TOKENIZER_FILE
  assert path.is_file()
  tok = tokenizer_lib.Tokenizer(path)
  some = next(iter(examples['train'].values()))
  ids = tok.encode([_text(t) for t in some['captions']], 64)
  assert np.all(ids[:, 0] == tokenizer_lib.BOS_ID)
  assert not np.any(ids == tokenizer_lib.UNK_ID)


def test_preparing_again_reuses_the_build(built):
  raw_dir, data_dir, dataset_dir = built
  before_raw, before_data = _snapshot(raw_dir), _snapshot(data_dir)
  assert prepare.prepare_synthetic(raw_dir, data_dir, clips_per_type=2) == dataset_dir
  assert prepare.prepare(raw_dir, data_dir) == dataset_dir
  assert _snapshot(raw_dir) == before_raw
  assert _snapshot(data_dir) == before_data


# --- Hand-made layouts ----------------------------------------------------------------------

def _copy_layout(src: pathlib.Path, dst: pathlib.Path, splits: dict[str, list[str]],
                 ignore: list[str] = ()) -> pathlib.Path:
  """A new InterHuman layout at dst holding the clips named in splits, copied from src."""
  for split in interhuman.SPLITS:
    for clip_id in splits.get(split, []):
      for sub, ext in (('annots', 'txt'), ('motions_processed/person1', 'npy'),
                       ('motions_processed/person2', 'npy'), ('annots_individual/person1', 'txt'),
                       ('annots_individual/person2', 'txt')):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / sub / f'{clip_id}.{ext}', dst / sub / f'{clip_id}.{ext}')
  (dst / 'split').mkdir(parents=True, exist_ok=True)
  for split in interhuman.SPLITS:
    (dst / 'split' / f'{split}.txt').write_text(''.join(f'{c}\n' for c in splits.get(split, [])))
  (dst / 'split' / 'ignore_list.txt').write_text(''.join(f'{c}\n' for c in ignore))
  return dst


@pytest.fixture(scope='module')
def three_ids(built):
  raw_dir, _, _ = built
  kept = _kept_ids(raw_dir, 'train')
  return kept[0], kept[1], kept[2]


def test_missing_rule_texts_fall_back_to_the_rule_based_split(built, three_ids, tmp_path):
  raw_dir, _, _ = built
  with_files, without, other = three_ids
  # Every split needs a clip: TFDS refuses to write an empty split.
  root = _copy_layout(raw_dir, tmp_path / 'manual',
                      {'train': [with_files], 'val': [without], 'test': [other]})
  for p in (1, 2):
    (root / 'annots_individual' / f'person{p}' / f'{without}.txt').unlink()
  dataset_dir = interhuman.build(root, tmp_path / 'tfds')
  example = _examples(dataset_dir, 'val')[without]
  captions = [_text(t) for t in example['captions']]
  assert [_text(s) for s in example['person_text_source']] == [interhuman.TEXT_SOURCE_RULE] * 3
  splits = [decompose.rule_based_split(c) for c in captions]
  assert [_text(t) for t in example['person1_texts']] == [s[0] for s in splits]
  assert [_text(t) for t in example['person2_texts']] == [s[1] for s in splits]
  assert set(_examples(dataset_dir, 'train')) == {with_files, f'{with_files}_mirror'}


def test_missing_train_split_file_names_the_path(built, three_ids, tmp_path):
  raw_dir, _, _ = built
  root = _copy_layout(raw_dir, tmp_path / 'manual', {'train': list(three_ids)})
  missing = root / 'split' / 'train.txt'
  missing.unlink()
  with pytest.raises(FileNotFoundError, match=str(missing)):
    interhuman.build(root, tmp_path / 'tfds')


def test_wrong_motion_width_names_the_file(built, three_ids, tmp_path):
  raw_dir, _, _ = built
  root = _copy_layout(raw_dir, tmp_path / 'manual', {'train': list(three_ids)})
  bad = root / 'motions_processed' / 'person1' / f'{three_ids[1]}.npy'
  np.save(bad, np.load(bad)[:, :491])
  with pytest.raises(ValueError, match=rf'{bad}.*\(T, 492\).*491'):
    interhuman.build(root, tmp_path / 'tfds')


def test_person_length_mismatch_names_the_clip(built, three_ids, tmp_path):
  raw_dir, _, _ = built
  root = _copy_layout(raw_dir, tmp_path / 'manual', {'train': list(three_ids)})
  bad = root / 'motions_processed' / 'person2' / f'{three_ids[0]}.npy'
  np.save(bad, np.load(bad)[:-3])
  with pytest.raises(ValueError, match=rf'clip {three_ids[0]}\b.*same length'):
    interhuman.build(root, tmp_path / 'tfds')


def test_a_split_without_usable_clips_names_the_split_file(tmp_path):
  root = tmp_path / 'raw'
  for sub in ('annots', 'motions_processed/person1', 'motions_processed/person2', 'split'):
    (root / sub).mkdir(parents=True)
  rng = np.random.default_rng(0)
  for clip_id, frames in (('1', 40), ('2', 10), ('3', 40)):
    for person in (1, 2):
      np.save(root / f'motions_processed/person{person}/{clip_id}.npy',
              rng.normal(size=(frames, 492)).astype(np.float32))
    (root / f'annots/{clip_id}.txt').write_text('Two people wave.\n')
  (root / 'split/train.txt').write_text('1\n')
  (root / 'split/val.txt').write_text('3\n')
  (root / 'split/test.txt').write_text('2\n')  # Only a clip shorter than 15 frames.
  with pytest.raises(ValueError, match=r'test\.txt: no usable clip \(0 ignored, 1 skipped'):
    interhuman.build(root, tmp_path / 'tfds')

"""Tests for the Inter-X TFDS builder on a small generated .h5 layout and a fake SMPL-X file.

Both configs are built once per module; bad inputs use copies of the layout with one defect.
"""

from __future__ import annotations

import pathlib
import shutil

import h5py
import numpy as np
import pytest

from data_pipelines import interx
from finedual_jax.data import decompose
from finedual_jax.data import pipeline
from finedual_jax.data import representation
from finedual_jax.motion import features as features_lib
from finedual_jax.motion import rotation_features
from finedual_jax.motion import skeleton
from finedual_jax.motion import smplx

CLIPS = {  # split -> (clip id, frames); the 10-frame clip is too short and must be skipped.
    'train': [('G001T000A000R000', 40), ('G001T000A001R001', 33), ('G002T001A005R002', 10),
              ('G002T003A017R004', 25)],
    'val': [('G003T000A002R000', 30), ('G003T002A011R003', 21)],
    'test': [('G004T001A006R001', 28), ('G004T005A029R002', 36)],
}
CAPTIONS = ['One person waves at the other, and the other waves back.',
            'Two people shake hands.',
            'The first person pushes the second person who stumbles backwards.']


def _smooth_clip(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """(T, 56, 6) smooth random poses: sinusoidal axis-angles, walking translations, y-up."""
  t = np.arange(num_frames)[:, None, None] / 30.0
  amplitude = rng.uniform(0.0, 0.4, size=(1, 56, 6))
  frequency = rng.uniform(0.3, 1.5, size=(1, 56, 6))
  phase = rng.uniform(0.0, 2 * np.pi, size=(1, 56, 6))
  clip = amplitude * np.sin(2 * np.pi * frequency * t + phase)
  for p, (start, heading) in enumerate((([0.0, 0.0, 0.0], 0.3), ([0.4, 0.05, 1.5], 2.9))):
    clip[:, 0, 3 * p:3 * p + 3] += np.array([0.0, heading, 0.0])
    clip[:, 55, 3 * p:3 * p + 3] = np.array(start) + rng.normal(size=3) * 0.2 * t[:, 0]
  return clip.astype(np.float32)


def _write_layout(root: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  (root / 'motions').mkdir(parents=True)
  (root / 'texts').mkdir()
  (root / 'splits').mkdir()
  for split, clips in CLIPS.items():
    with h5py.File(root / 'motions' / f'{split}.h5', 'w') as f:
      for clip_id, num_frames in clips:
        f.create_dataset(clip_id, data=_smooth_clip(rng, num_frames), dtype='f4')
    (root / 'splits' / f'{split}.txt').write_text(''.join(c + '\n' for c, _ in clips))
    for clip_id, _ in clips:
      (root / 'texts' / f'{clip_id}.txt').write_text('\n'.join(CAPTIONS) + '\n', encoding='utf-8')


def _write_fake_smplx(path: pathlib.Path) -> None:
  """An .npz shaped like SMPL-X's: random vertices, convex joint regressor, SMPL-X's tree."""
  rng = np.random.default_rng(1)
  num_vertices, num_joints = 200, 55
  weights = rng.uniform(size=(num_joints, num_vertices)) * (
      rng.uniform(size=(num_joints, num_vertices)) < 0.05)
  weights[:, 0] += 1e-3
  parents = [2**32 - 1] + list(skeleton.PARENTS[1:]) + [15] * 3 + [20] * 15 + [21] * 15
  np.savez(path, v_template=rng.normal(size=(num_vertices, 3)) * np.array([0.3, 0.8, 0.15]),
           J_regressor=weights / weights.sum(axis=1, keepdims=True),
           kintree_table=np.array([parents, list(range(num_joints))], dtype=np.int64),
           shapedirs=np.zeros((num_vertices, 3, 10)))


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _examples(dataset_dir: pathlib.Path, split: str) -> dict[str, dict]:
  source = pipeline.data_source(dataset_dir, split)
  examples = {_text(source[i]['clip_id']): source[i] for i in range(len(source))}
  assert len(examples) == len(source)
  return examples


def _source_clip(root: pathlib.Path, split: str, clip_id: str) -> np.ndarray:
  with h5py.File(root / 'motions' / f'{split}.h5', 'r') as f:
    return f[clip_id][()].astype(np.float64)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('interx') / 'Inter-X'
  _write_layout(root)
  model = tmp_path_factory.mktemp('smplx') / 'SMPLX_NEUTRAL.npz'
  _write_fake_smplx(model)
  data_dir = tmp_path_factory.mktemp('tfds')
  rotations_dir = interx.build(root, data_dir)
  positions_dir = interx.build(root, data_dir, smplx_model=model)
  return root, model, rotations_dir, positions_dir


def test_split_sizes_and_short_clips_skipped(built):
  _, _, rotations_dir, positions_dir = built
  for dataset_dir in (rotations_dir, positions_dir):
    for split, clips in CLIPS.items():
      expected = {c for c, n in clips if n >= interx.MIN_FRAMES}
      assert set(_examples(dataset_dir, split)) == expected
  assert rotations_dir != positions_dir


def test_rotations_config_stores_the_conversion(built):
  root, _, rotations_dir, _ = built
  for split in CLIPS:
    for clip_id, example in _examples(rotations_dir, split).items():
      clip = _source_clip(root, split, clip_id)
      expected = rotation_features.interx_motion_to_stored(clip).astype(np.float32)
      assert example['motion'].shape == (clip.shape[0], 2, rotation_features.STORED_DIM)
      np.testing.assert_array_equal(example['motion'], expected)
      assert example['num_frames'] == clip.shape[0]
      feats = rotation_features.rotation_pair_features(example['motion'])
      assert feats.shape == (2, clip.shape[0] - 1, rotation_features.FEATURE_DIM)
      np.testing.assert_allclose(feats[0, 0, rotation_features.ROOT_POSITION][[0, 2]], 0.0,
                                 atol=1e-5)


def test_positions_config_is_smplx_forward_kinematics(built):
  root, model, _, positions_dir = built
  body = smplx.load_body_model(model)
  for split in CLIPS:
    for clip_id, example in _examples(positions_dir, split).items():
      clip = _source_clip(root, split, clip_id)
      motion = example['motion']
      assert motion.shape == (clip.shape[0], 2, features_lib.USED_DIM)
      for p in range(2):
        rows = clip[..., 3 * p:3 * p + 3]
        joints = body.joint_positions(rows[:, :22], rows[:, 55])  # y-up source: no turn.
        np.testing.assert_allclose(motion[:, p, :66].reshape(-1, 22, 3), joints, atol=1e-5)
        stored = rotation_features.interx_rows_to_stored(rows)
        np.testing.assert_allclose(motion[:, p, 66:], stored[:, 9:], atol=1e-6)
      # The InterHuman features (and thus every position loss) apply.
      feats = features_lib.canonical_pair_features(*representation.split_positions_motion(motion))
      assert feats.shape == (2, clip.shape[0] - 1, features_lib.FEATURE_DIM)


def test_texts(built):
  _, _, rotations_dir, positions_dir = built
  for dataset_dir in (rotations_dir, positions_dir):
    example = next(iter(_examples(dataset_dir, 'val').values()))
    assert [_text(t) for t in example['captions']] == CAPTIONS
    splits = [decompose.rule_based_split(c) for c in CAPTIONS]
    assert [_text(t) for t in example['person1_texts']] == [s[0] for s in splits]
    assert [_text(t) for t in example['person2_texts']] == [s[1] for s in splits]
    assert [_text(t) for t in example['person_text_source']] == ['rule'] * 3
    assert not example['mirrored']


def test_processed_caption_lines_keep_the_caption(tmp_path):
  path = tmp_path / 'G001T000A000R000.txt'
  path.write_text('Two people hug.#two/NUM people/NOUN hug/VERB#0.0#0.0\n\n', encoding='utf-8')
  assert interx.read_captions(path) == ['Two people hug.']


def test_positions_without_smplx_fails_at_once(tmp_path):
  with pytest.raises(ValueError, match=r"(?s)SMPLX_NEUTRAL.npz.*'rotations'.*foot contact"):
    interx.Interx(data_dir=str(tmp_path), config='positions')
  with pytest.raises(ValueError, match="only used by the 'positions' config"):
    interx.Interx(data_dir=str(tmp_path), config='rotations', smplx_model=tmp_path / 'm.npz')


def _broken_copy(built, tmp_path: pathlib.Path) -> pathlib.Path:
  root = tmp_path / 'Inter-X'
  shutil.copytree(built[0], root)
  return root


def _rewrite_clip(root: pathlib.Path, split: str, clip_id: str, data: np.ndarray) -> None:
  with h5py.File(root / 'motions' / f'{split}.h5', 'a') as f:
    del f[clip_id]
    f.create_dataset(clip_id, data=data)


def _build_fails(root: pathlib.Path, tmp_path: pathlib.Path, exception, match: str) -> None:
  with pytest.raises(exception, match=match):
    interx.build(root, tmp_path / 'tfds')


@pytest.mark.parametrize('missing', ['motions/val.h5', 'texts', 'splits/test.txt'])
def test_missing_layout_part(built, tmp_path, missing):
  root = _broken_copy(built, tmp_path)
  path = root / missing
  shutil.rmtree(path) if path.is_dir() else path.unlink()
  _build_fails(root, tmp_path, FileNotFoundError, f'{missing}.* not found')


def test_split_id_without_motion(built, tmp_path):
  root = _broken_copy(built, tmp_path)
  with (root / 'splits' / 'val.txt').open('a') as f:
    f.write('G009T000A000R000\n')
  _build_fails(root, tmp_path, ValueError, r"val.h5: clip 'G009T000A000R000' is listed")


def test_wrong_shape(built, tmp_path):
  root = _broken_copy(built, tmp_path)
  _rewrite_clip(root, 'test', 'G004T001A006R001', np.zeros((28, 55, 6), np.float32))
  _build_fails(root, tmp_path, ValueError, r"test.h5: clip 'G004T001A006R001' has shape \(28, 55")


def test_nan(built, tmp_path):
  root = _broken_copy(built, tmp_path)
  clip = _source_clip(root, 'val', 'G003T000A002R000')
  clip[3, 10, 2] = np.nan
  _rewrite_clip(root, 'val', 'G003T000A002R000', clip.astype(np.float32))
  _build_fails(root, tmp_path, ValueError, r"val.h5: clip 'G003T000A002R000' contains NaN")


@pytest.mark.parametrize('defect', ['missing', 'empty', 'not_utf8'])
def test_bad_caption_file(built, tmp_path, defect):
  root = _broken_copy(built, tmp_path)
  path = root / 'texts' / 'G003T002A011R003.txt'
  if defect == 'missing':
    path.unlink()
    _build_fails(root, tmp_path, FileNotFoundError, 'caption file missing: .*G003T002A011R003')
  elif defect == 'empty':
    path.write_text('\n  \n')
    _build_fails(root, tmp_path, ValueError, 'G003T002A011R003.txt: no captions')
  else:
    path.write_bytes('Two people hug.\n'.encode('utf-8') + b'\xff\xfe caf\xe9\n')
    _build_fails(root, tmp_path, ValueError, 'G003T002A011R003.txt: not UTF-8 .*byte 16')

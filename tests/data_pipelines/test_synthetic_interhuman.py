"""Tests of the synthetic InterHuman generator: layout, kinematic consistency, texts vs motion."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from data_pipelines import synthetic_interhuman as synth
from finedual_jax.motion import rotations
from finedual_jax.motion import skeleton

LEFT_WRIST, RIGHT_WRIST, HEAD, SPINE3 = 20, 21, 15, 9


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic') / 'interhuman'
  infos = synth.generate(root, seed=0, clips_per_type=3)
  return root, infos


def _load(root: pathlib.Path, clip_id: str):
  """Both persons' raw rows and y-up positions [T, 62, 3], plus captions and per-person texts."""
  raws = [np.load(root / 'motions_processed' / f'person{p}' / f'{clip_id}.npy') for p in (1, 2)]
  pos = [r[:, :186].reshape(len(r), 62, 3).astype(np.float64) @ skeleton.Z_UP_TO_Y_UP.T
         for r in raws]
  captions = (root / 'annots' / f'{clip_id}.txt').read_text().splitlines()
  texts = [(root / 'annots_individual' / f'person{p}' / f'{clip_id}.txt').read_text().splitlines()
           for p in (1, 2)]
  return raws, pos, captions, texts


def _clips(infos, interaction, min_frames=60):
  clips = [c for c in infos if c.interaction == interaction and c.num_frames >= min_frames]
  assert clips, f'no {interaction} clip of >= {min_frames} frames to check'
  return clips


def _pelvis_rotation(pos: np.ndarray) -> np.ndarray:
  """[T, 3, 3] Kabsch fit of the rest offsets of the pelvis' three children to their positions."""
  rest = skeleton.REST_OFFSETS[[1, 2, 3]]
  seen = pos[:, [1, 2, 3]] - pos[:, :1]
  u, _, vt = np.linalg.svd(np.einsum('ki,tkj->tij', rest, seen))
  v, ut = np.swapaxes(vt, -1, -2), np.swapaxes(u, -1, -2)
  fix = np.tile(np.eye(3), (len(pos), 1, 1))
  fix[:, 2, 2] = np.sign(np.linalg.det(v @ ut))
  return v @ fix @ ut


def _facing_angle(pos: np.ndarray) -> np.ndarray:
  forward = np.cross([0.0, 1.0, 0.0], pos[:, 2] - pos[:, 1])
  return np.unwrap(np.arctan2(forward[:, 0], forward[:, 2]))


def test_layout_is_exactly_interhumans(dataset):
  root, infos = dataset
  ids = [c.clip_id for c in infos]
  assert ids == [str(i) for i in range(1, len(infos) + 1)]
  expected = {'split/train.txt', 'split/val.txt', 'split/test.txt', 'split/ignore_list.txt'}
  for i in ids:
    expected |= {f'annots/{i}.txt', f'motions_processed/person1/{i}.npy',
                 f'motions_processed/person2/{i}.npy', f'annots_individual/person1/{i}.txt',
                 f'annots_individual/person2/{i}.txt'}
  found = {str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()}
  assert found == expected
  dirs = {str(p.relative_to(root)) for p in root.rglob('*') if p.is_dir()}
  assert dirs == {'annots', 'annots_individual', 'annots_individual/person1',
                  'annots_individual/person2', 'motions_processed', 'motions_processed/person1',
                  'motions_processed/person2', 'split'}

  splits = {s: (root / 'split' / f'{s}.txt').read_text().split() for s in synth.SPLITS}
  listed = sum(splits.values(), [])
  assert sorted(listed, key=int) == ids  # every clip in exactly one split
  for c in infos:
    assert c.clip_id in splits[c.split]
  ignored = (root / 'split' / 'ignore_list.txt').read_text().split()
  assert ignored and ignored == [c.clip_id for c in infos if c.ignored]
  assert set(ignored) <= set(splits['train'])
  for name in synth.INTERACTION_TYPES:
    assert any(c.split == 'train' and not c.ignored for c in infos if c.interaction == name)


def test_files_have_interhumans_shapes_and_texts(dataset):
  root, infos = dataset
  for c in infos:
    raws, _, captions, texts = _load(root, c.clip_id)
    for raw in raws:
      assert raw.dtype == np.float32 and raw.shape == (c.num_frames, 492)
      assert np.all(np.isfinite(raw))
    assert len(captions) == 3 and len(set(captions)) == 3
    for person_texts in texts:
      assert len(person_texts) == 3
      assert all(t.startswith('The person ') for t in person_texts)


def test_body_positions_are_forward_kinematics_of_stored_rotations(dataset):
  root, infos = dataset
  for c in infos:
    raws, pos, _, _ = _load(root, c.clip_id)
    for raw, p in zip(raws, pos):
      body = p[:, :22]
      local = rotations.sixd_to_matrix(
          raw[:, skeleton.RAW_ROT].reshape(-1, 21, 6).astype(np.float64))
      fk, _ = skeleton.forward_kinematics(body[:, 0], _pelvis_rotation(body), local)
      fk_zup = fk @ skeleton.Z_UP_TO_Y_UP  # back to the stored frame, as the file has it
      np.testing.assert_allclose(fk_zup, raw[:, :66].reshape(-1, 22, 3), atol=1e-4)


def test_hands_move_rigidly_with_their_wrists(dataset):
  root, infos = dataset
  for c in infos[:10]:
    _, pos, _, _ = _load(root, c.clip_id)
    for p in pos:
      for wrist, hand in ((LEFT_WRIST, slice(22, 42)), (RIGHT_WRIST, slice(42, 62))):
        reach = np.linalg.norm(p[:, hand] - p[:, wrist, None], axis=-1)
        assert np.all(reach.max(0) - reach.min(0) < 1e-4)
        assert np.all(reach < 0.25) and np.all(reach > 0.01)
      left_reach = np.linalg.norm(p[0, 22:42] - p[0, LEFT_WRIST], axis=-1)
      right_reach = np.linalg.norm(p[0, 42:62] - p[0, RIGHT_WRIST], axis=-1)
      np.testing.assert_allclose(left_reach, right_reach, atol=1e-4)  # mirror-image hands


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
  for name, seed in (('a', 3), ('b', 3), ('c', 4)):
    synth.generate(tmp_path / name, seed=seed, clips_per_type=1)
  first, again, other = ({str(p.relative_to(tmp_path / n)): p.read_bytes()
                          for p in (tmp_path / n).rglob('*') if p.is_file()} for n in 'abc')
  assert first == again
  motions = [k for k in first if k.endswith('.npy')]
  assert motions and all(first[k] != other[k] for k in motions)


def test_lengths_include_long_and_too_short_clips(dataset):
  _, infos = dataset
  lengths = [c.num_frames for c in infos]
  assert max(lengths) > 300 and min(lengths) < 15
  assert np.median(lengths) >= 60


def test_feet_on_the_floor_and_bones_rigid(dataset):
  root, infos = dataset
  for c in infos:
    _, pos, _, _ = _load(root, c.clip_id)
    for p in pos:
      assert abs(p[..., 1].min()) < 0.02
      # Some foot joint touches the floor in every frame: nobody floats or flies.
      assert np.all(p[:, list(skeleton.FOOT_JOINTS), 1].min(-1) < 0.03)
      lengths = skeleton.bone_lengths(p[:, :22])
      assert np.all(lengths.max(0) - lengths.min(0) < 1e-4)


def test_motion_is_smooth(dataset):
  root, infos = dataset
  for c in infos:
    _, pos, _, _ = _load(root, c.clip_id)
    for p in pos:
      accel = np.linalg.norm(np.diff(p[:, :22], n=2, axis=0), axis=-1)  # m / frame^2
      assert accel.max() < 0.2, c


def test_handshake_hands_meet(dataset):
  root, infos = dataset
  for c in _clips(infos, 'handshake'):
    _, pos, captions, texts = _load(root, c.clip_id)
    hand = 'left' if ' left' in captions[0] else 'right'
    assert all(hand in line for line in captions + texts[0] + texts[1])
    wrist = LEFT_WRIST if hand == 'left' else RIGHT_WRIST
    assert np.linalg.norm(pos[0][:, wrist] - pos[1][:, wrist], axis=-1).min() < 0.15


def test_push_sends_the_pushed_person_back(dataset):
  root, infos = dataset
  for c in _clips(infos, 'push'):
    _, pos, _, texts = _load(root, c.clip_id)
    pushed = [i for i in (0, 1) if any('stumble' in t or 'stagger' in t for t in texts[i])]
    assert len(pushed) == 1, texts
    victim, pusher = pos[pushed[0]][:, 0], pos[1 - pushed[0]][:, 0]
    gap = np.linalg.norm((victim - pusher)[:, [0, 2]], axis=-1)
    assert gap[-1] > gap[0] + 0.2
    away = (victim[0] - pusher[0])[[0, 2]] / gap[0]
    assert (victim[-1] - victim[0])[[0, 2]] @ away > 0.8  # several steps back


def test_walk_side_by_side_is_parallel(dataset):
  root, infos = dataset
  for c in _clips(infos, 'walk_side_by_side'):
    _, pos, _, _ = _load(root, c.clip_id)
    moves = [p[-1, 0, [0, 2]] - p[0, 0, [0, 2]] for p in pos]
    assert all(np.linalg.norm(m) > 1.0 for m in moves)
    cosine = moves[0] @ moves[1] / np.linalg.norm(moves[0]) / np.linalg.norm(moves[1])
    assert cosine > 0.95
    gap = np.linalg.norm((pos[0][:, 0] - pos[1][:, 0])[:, [0, 2]], axis=-1)
    assert gap.min() > 0.5 and gap.max() < 1.2


def test_bow_lowers_and_raises_the_head(dataset):
  root, infos = dataset
  for c in _clips(infos, 'bow'):
    _, pos, _, _ = _load(root, c.clip_id)
    for p in pos:
      head = p[:, HEAD, 1]
      assert head.min() < head[0] - 0.2
      assert head[-1] > head[0] - 0.03


def test_wave_raises_the_named_hand_above_the_head(dataset):
  root, infos = dataset
  for c in _clips(infos, 'wave'):
    _, pos, _, texts = _load(root, c.clip_id)
    for p, person_texts in zip(pos, texts):
      hand = 'left' if ' left ' in person_texts[0] else 'right'
      raised, other = (LEFT_WRIST, RIGHT_WRIST) if hand == 'left' else (RIGHT_WRIST, LEFT_WRIST)
      assert np.max(p[:, raised, 1] - p[:, HEAD, 1]) > 0.1
      assert np.max(p[:, other, 1] - p[:, HEAD, 1]) < -0.3


def test_hug_brings_the_chests_together(dataset):
  root, infos = dataset
  for c in _clips(infos, 'hug'):
    _, pos, _, _ = _load(root, c.clip_id)
    chest_gap = np.linalg.norm(pos[0][:, SPINE3] - pos[1][:, SPINE3], axis=-1)
    assert chest_gap.min() < 0.45
    assert chest_gap[0] > chest_gap.min() + 0.3  # they come together first


def test_circle_turns_both_around_the_centre(dataset):
  root, infos = dataset
  for c in _clips(infos, 'circle'):
    _, pos, captions, _ = _load(root, c.clip_id)
    centre = 0.5 * (pos[0][:, 0] + pos[1][:, 0])
    turns = []
    for p in pos:
      around = p[:, 0] - centre
      angle = np.unwrap(np.arctan2(around[:, 0], around[:, 2]))
      turns.append(angle[-1] - angle[0])
      facing_turn = _facing_angle(p)[-1] - _facing_angle(p)[0]
      assert abs(facing_turn) > np.pi / 2 and abs(facing_turn - turns[-1]) < 0.3
    assert min(abs(t) for t in turns) > np.pi / 2
    # Counterclockwise seen from above (y up) is a positive turn about +y.
    assert ('counterclockwise' in captions[0]) == (turns[0] > 0)


def test_dance_keeps_hands_joined(dataset):
  root, infos = dataset
  for c in _clips(infos, 'dance'):
    _, pos, _, _ = _load(root, c.clip_id)
    gaps = np.min([np.linalg.norm(pos[0][:, a] - pos[1][:, b], axis=-1)
                   for a in (LEFT_WRIST, RIGHT_WRIST) for b in (LEFT_WRIST, RIGHT_WRIST)], axis=0)
    assert np.mean(gaps < 0.2) > 0.7


def test_high_five_meets_overhead(dataset):
  root, infos = dataset
  for c in _clips(infos, 'high_five'):
    _, pos, captions, _ = _load(root, c.clip_id)
    wrist = LEFT_WRIST if ' left' in captions[0] else RIGHT_WRIST
    close = np.linalg.norm(pos[0][:, wrist] - pos[1][:, wrist], axis=-1) < 0.15
    overhead = np.all([p[:, wrist, 1] > p[:, HEAD, 1] for p in pos], axis=0)
    assert np.any(close & overhead)


def test_follower_walks_behind_the_leader(dataset):
  root, infos = dataset
  for c in _clips(infos, 'follow'):
    _, pos, _, texts = _load(root, c.clip_id)
    follower = [i for i in (0, 1) if any('behind' in t for t in texts[i])]
    assert len(follower) == 1, texts
    lead, follow = pos[1 - follower[0]], pos[follower[0]]
    moves = [p[-1, 0, [0, 2]] - p[0, 0, [0, 2]] for p in (lead, follow)]
    assert all(np.linalg.norm(m) > 1.0 for m in moves)
    middle = len(lead) // 2
    ahead = np.cross([0.0, 1.0, 0.0], lead[middle, 2] - lead[middle, 1])
    assert (lead[middle, 0] - follow[middle, 0]) @ ahead / np.linalg.norm(ahead) > 0.5


def test_large_sets_have_every_type_in_every_split(tmp_path):
  infos = synth.generate(tmp_path / 'big', clips_per_type=10)
  for split in synth.SPLITS:
    for name in synth.INTERACTION_TYPES:
      assert any(c.split == split and c.interaction == name and c.num_frames >= 15
                 for c in infos), (split, name)
  assert 0.7 < np.mean([c.split == 'train' for c in infos]) < 0.9


def test_refuses_a_non_empty_root(tmp_path):
  (tmp_path / 'old.txt').write_text('keep me')
  with pytest.raises(ValueError, match='not an empty directory'):
    synth.generate(tmp_path, clips_per_type=1)
  assert [p.name for p in tmp_path.iterdir()] == ['old.txt']


def test_command_line_prints_a_summary(tmp_path, capsys):
  synth.main(['--root', str(tmp_path / 'cli'), '--clips_per_type', '1', '--seed', '2'])
  out = capsys.readouterr().out.strip()
  assert out.startswith(f'Wrote {len(synth.INTERACTION_TYPES)} clips') and '\n' not in out
  assert (tmp_path / 'cli' / 'split' / 'train.txt').is_file()

"""Tests for the 262-d features: canonical frame, floors, velocities, contacts, mirroring, errors.

Clips are built by forward kinematics from chosen root placements, headings and local rotations,
so the canonical answer follows from the math: canonicalisation is the rigid motion that moves
person 1's frame-0 root to the origin and turns its heading to +z, and FK commutes with it.
"""

from __future__ import annotations

import numpy as np
import pytest

from finedual_jax.motion import features, rotations, skeleton

_MIRROR = np.diag([-1.0, 1.0, 1.0])  # x -> -x, the lateral axis in both the z-up and y-up frames.
_ATOL = 2e-5  # Features are float32; positions are a few metres.


def _local_rotations(num_frames: int, seed: int) -> np.ndarray:
  """[T, 21, 3, 3] smooth, clearly non-identity local rotations."""
  rng = np.random.default_rng(seed)
  base = rng.normal(scale=0.3, size=(21, 3))
  drift = rng.normal(scale=0.05, size=(21, 3))
  t = np.arange(num_frames)[:, None, None]
  return rotations.axis_angle_to_matrix(base + t * drift)


def _root_rotations(num_frames: int, heading: float, turn_rate: float = 0.03) -> np.ndarray:
  """[T, 3, 3] pure yaw ``heading`` at frame 0, then turning and tilting (tilt is 0 at frame 0)."""
  t = np.arange(num_frames)
  yaw = rotations.rotation_about_y(heading + turn_rate * t)
  tilt = rotations.axis_angle_to_matrix(0.2 * np.sin(0.3 * t)[:, None] * np.array([1.0, 0.0, 0.0]))
  return yaw @ tilt


def _root_positions(num_frames: int, start, velocity) -> np.ndarray:
  """[T, 3] y-up root positions moving at a constant velocity (metres per frame)."""
  return np.asarray(start, float) + np.arange(num_frames)[:, None] * np.asarray(velocity, float)


def _raw(root_pos: np.ndarray, root_rot: np.ndarray, local: np.ndarray, seed: int) -> np.ndarray:
  """An InterHuman raw (T, 492) z-up array for a y-up FK motion; unused columns hold noise."""
  positions, _ = skeleton.forward_kinematics(root_pos, root_rot, local)
  num_frames = positions.shape[0]
  rng = np.random.default_rng(seed)
  raw = rng.normal(size=(num_frames, skeleton.RAW_DIM))  # Hand columns must be ignored.
  # raw_to_used computes p_yup = p_zup @ Z^T, so p_zup = p_yup @ Z (Z is orthogonal).
  raw[:, skeleton.RAW_POS] = (positions @ skeleton.Z_UP_TO_Y_UP).reshape(num_frames, 66)
  raw[:, skeleton.RAW_ROT] = rotations.matrix_to_6d(local).reshape(num_frames, 126)
  return raw


def _heading_of(joints: np.ndarray) -> float:
  """Heading (radians, 0 = facing +z) of [22, 3] y-up joints, from the hips as in DESIGN §1.1."""
  across = joints[skeleton.RIGHT_HIP] - joints[skeleton.LEFT_HIP]
  forward = np.cross([0.0, 1.0, 0.0], across)
  return float(np.arctan2(forward[0], forward[2]))


def _angle_diff(a: float, b: float) -> float:
  return float(np.angle(np.exp(1j * (a - b))))


def _expected_canonical(root_pos, root_rot, local, heading1: float, origin_xz) -> np.ndarray:
  """[T, 22, 3] FK of the motion after the rigid canonical transform, put on its own floor."""
  turn = rotations.rotation_about_y(-heading1)
  origin = np.array([origin_xz[0], 0.0, origin_xz[1]])
  positions, _ = skeleton.forward_kinematics((root_pos - origin) @ turn.T, turn @ root_rot, local)
  return positions - np.array([0.0, positions[..., 1].min(), 0.0])


@pytest.fixture(scope='module')
def pair():
  """Person 1 faces -x at frame 0 and walks; person 2 stands on a 0.4 m box, turned 0.7 rad."""
  num_frames = 20
  p1 = dict(root_pos=_root_positions(num_frames, [2.0, 1.1, -1.0], [-0.02, 0.005, 0.01]),
            root_rot=_root_rotations(num_frames, -np.pi / 2), local=_local_rotations(num_frames, 1))
  p2 = dict(root_pos=_root_positions(num_frames, [0.5, 0.93 + 0.4, 0.2], [0.01, 0.0, -0.015]),
            root_rot=_root_rotations(num_frames, 0.7, -0.02), local=_local_rotations(num_frames, 2))
  raw1 = _raw(**p1, seed=3)
  raw2 = _raw(**p2, seed=4)
  return dict(num_frames=num_frames, p1=p1, p2=p2, raw1=raw1, raw2=raw2,
              feats=features.interhuman_pair_features(raw1, raw2))


def test_output_shape_dtype_and_row_count(pair):
  feats = pair['feats']
  assert feats.shape == (2, pair['num_frames'] - 1, features.FEATURE_DIM)
  assert feats.dtype == np.float32


def test_raw_to_used_inverts_the_z_up_layout(pair):
  positions, rots = features.raw_to_used(pair['raw1'])
  p = pair['p1']
  fk, _ = skeleton.forward_kinematics(p['root_pos'], p['root_rot'], p['local'])
  np.testing.assert_allclose(positions, fk, atol=1e-12)
  np.testing.assert_allclose(rotations.sixd_to_matrix(rots), pair['p1']['local'], atol=1e-12)


def test_person_facing_minus_x_is_turned_to_face_plus_z_with_root_at_origin(pair):
  feats = pair['feats']
  pos1 = features.feature_positions(feats[0])  # [T-1, 22, 3]
  np.testing.assert_allclose(pos1[0, 0, [0, 2]], [0.0, 0.0], atol=_ATOL)
  assert abs(_heading_of(pos1[0].astype(np.float64))) < 1e-5
  # The hips' forward direction is exactly +z (not merely its angle).
  across = pos1[0, skeleton.RIGHT_HIP] - pos1[0, skeleton.LEFT_HIP]
  forward = np.cross([0.0, 1.0, 0.0], across)
  np.testing.assert_allclose(forward / np.linalg.norm(forward), [0.0, 0.0, 1.0], atol=1e-5)


def test_canonical_positions_equal_fk_of_the_rigidly_moved_motion(pair):
  p1, p2, feats = pair['p1'], pair['p2'], pair['feats']
  origin_xz = p1['root_pos'][0, [0, 2]]
  for person, p in enumerate((p1, p2)):
    expected = _expected_canonical(p['root_pos'], p['root_rot'], p['local'], -np.pi / 2, origin_xz)
    np.testing.assert_allclose(features.feature_positions(feats[person]), expected[:-1],
                               atol=_ATOL, err_msg=f'person {person + 1}')


def test_person2_keeps_its_distance_bearing_and_relative_heading(pair):
  p1, p2, feats = pair['p1'], pair['p2'], pair['feats']
  delta = p2['root_pos'][0] - p1['root_pos'][0]
  pos2 = features.feature_positions(feats[1]).astype(np.float64)
  root2 = pos2[0, 0]
  np.testing.assert_allclose(np.hypot(root2[0], root2[2]), np.hypot(delta[0], delta[2]), atol=_ATOL)
  # Bearing of person 2 seen from person 1, measured from person 1's heading (-pi/2).
  bearing = _angle_diff(np.arctan2(delta[0], delta[2]), -np.pi / 2)
  assert abs(_angle_diff(np.arctan2(root2[0], root2[2]), bearing)) < 1e-5
  # Person 2's own heading relative to person 1's: 0.7 - (-pi/2).
  assert abs(_angle_diff(_heading_of(pos2[0]), 0.7 + np.pi / 2)) < 1e-5


def test_each_person_stands_on_its_own_floor(pair):
  positions = features.feature_positions(pair['feats'])  # [2, T-1, 22, 3]
  # The minimum is over all T frames, and the last frame has no feature row; add it back from
  # the velocities of the last row.
  last = positions[:, -1] + pair['feats'][:, -1, features.VELOCITIES].reshape(2, 22, 3)
  heights = np.concatenate([positions[..., 1], last[:, None, :, 1]], axis=1)
  # Person 1 was lifted and person 2 stood on a 0.4 m box: each is put on its own floor.
  np.testing.assert_allclose(heights.min(axis=(1, 2)), [0.0, 0.0], atol=1e-6)


def test_velocity_rows_are_position_differences(pair):
  feats = pair['feats'].astype(np.float64)
  pos = feats[..., features.POSITIONS]
  vel = feats[..., features.VELOCITIES]
  np.testing.assert_allclose(vel[:, :-1], pos[:, 1:] - pos[:, :-1], atol=_ATOL)
  # The last row's velocity needs frame T-1, which only the FK reference has.
  p1 = pair['p1']
  origin_xz = p1['root_pos'][0, [0, 2]]
  for person, p in enumerate((pair['p1'], pair['p2'])):
    expected = _expected_canonical(p['root_pos'], p['root_rot'], p['local'], -np.pi / 2, origin_xz)
    np.testing.assert_allclose(vel[person], (expected[1:] - expected[:-1]).reshape(-1, 66),
                               atol=_ATOL)
  assert np.abs(vel).max() > 1e-3  # The clip moves, so the check is not vacuous.


def test_local_rotation_columns_are_the_input_rotations_untouched(pair):
  feats = pair['feats']
  for person, p in enumerate((pair['p1'], pair['p2'])):
    expected = rotations.matrix_to_6d(p['local'][:-1]).reshape(-1, 126)
    np.testing.assert_array_equal(feats[person, :, features.ROTATIONS], expected.astype(np.float32))


def test_canonical_features_do_not_depend_on_the_world_placement(pair):
  # Moving and turning the whole pair rigidly about the vertical changes nothing.
  p1, p2 = pair['p1'], pair['p2']
  turn = rotations.rotation_about_y(1.3)
  shift = np.array([-3.0, 0.25, 4.0])
  raws = [_raw(p['root_pos'] @ turn.T + shift, turn @ p['root_rot'], p['local'], seed=9)
          for p in (p1, p2)]
  np.testing.assert_allclose(features.interhuman_pair_features(*raws), pair['feats'], atol=_ATOL)


# --- Foot contacts --------------------------------------------------------------------------

def _feet_clip(heights, speeds, num_frames: int = 6) -> np.ndarray:
  """[T, 22, 3] floor-aligned joints: everything at 1 m except the four foot joints.

  heights / speeds: per contact channel (left ankle, left toe, right ankle, right toe), the
  constant height and the speed along x in metres per frame.
  """
  positions = np.zeros((num_frames, 22, 3))
  positions[..., 1] = 1.0
  t = np.arange(num_frames)
  for channel, joint in enumerate(skeleton.FOOT_JOINTS):
    positions[:, joint, 0] = speeds[channel] * t
    positions[:, joint, 1] = heights[channel]
  return positions


@pytest.mark.parametrize('channel, threshold', [(0, 0.12), (1, 0.05), (2, 0.12), (3, 0.05)])
def test_contact_height_threshold_per_foot_joint(channel, threshold):
  high = [1.0] * 4
  still = [0.0] * 4
  below, above = list(high), list(high)
  below[channel] = threshold - 1e-3
  above[channel] = threshold + 1e-3
  expected = np.zeros(4)
  expected[channel] = 1.0
  contacts = features.foot_contacts(_feet_clip(below, still))
  assert contacts.shape == (5, 4)
  np.testing.assert_array_equal(contacts, np.broadcast_to(expected, (5, 4)))
  np.testing.assert_array_equal(features.foot_contacts(_feet_clip(above, still)), np.zeros((5, 4)))


def test_contact_velocity_threshold():
  low = [0.01] * 4
  # Squared per-frame speed against 0.001: 0.02 m/frame -> 4e-4 (contact), 0.04 -> 1.6e-3 (none).
  slow = features.foot_contacts(_feet_clip(low, [0.02] * 4))
  fast = features.foot_contacts(_feet_clip(low, [0.04] * 4))
  np.testing.assert_array_equal(slow, np.ones((5, 4)))
  np.testing.assert_array_equal(fast, np.zeros((5, 4)))
  mixed = features.foot_contacts(_feet_clip(low, [0.0, 0.04, 0.04, 0.0]))
  np.testing.assert_array_equal(mixed, np.broadcast_to([1.0, 0.0, 0.0, 1.0], (5, 4)))


def test_contacts_in_features_still_versus_sliding():
  # Rest pose, standing still: the toes are the lowest joints, so after the floor shift the toes
  # are at 0 and the ankles at 0.075 - 0.020 = 0.055 < 0.12: all four in contact. Sliding at
  # 0.1 m/frame breaks every contact.
  num_frames = 8
  local = np.broadcast_to(np.eye(3), (num_frames, 21, 3, 3))
  root_rot = np.broadcast_to(rotations.rotation_about_y(0.4), (num_frames, 3, 3))
  still = _raw(_root_positions(num_frames, [0.0, 0.93, 0.0], [0.0, 0.0, 0.0]), root_rot, local, 0)
  slide = _raw(_root_positions(num_frames, [1.0, 0.93, 0.0], [0.1, 0.0, 0.0]), root_rot, local, 1)
  feats = features.interhuman_pair_features(still, slide)
  np.testing.assert_array_equal(feats[0, :, features.CONTACTS], np.ones((num_frames - 1, 4)))
  np.testing.assert_array_equal(feats[1, :, features.CONTACTS], np.zeros((num_frames - 1, 4)))


# --- Mirroring ------------------------------------------------------------------------------

def test_mirror_twice_is_the_identity_exactly(pair):
  positions, rots = features.raw_to_used(pair['raw1'])
  once = features.mirror_used(positions, rots)
  twice = features.mirror_used(*once)
  assert not np.allclose(once[0], positions)
  np.testing.assert_array_equal(twice[0], positions)
  np.testing.assert_array_equal(twice[1], rots)


def test_mirrored_motion_is_fk_of_the_mirrored_rotations(pair):
  p = pair['p1']
  positions, rots = features.raw_to_used(pair['raw1'])
  m_pos, m_rot = features.mirror_used(positions, rots)
  m_local = rotations.sixd_to_matrix(m_rot)
  np.testing.assert_allclose(np.linalg.det(m_local), 1.0, atol=1e-9)
  np.testing.assert_allclose(np.swapaxes(m_local, -1, -2) @ m_local,
                             np.broadcast_to(np.eye(3), m_local.shape), atol=1e-9)
  # Reflecting a rotation is conjugating it by the mirror; the root's too.
  m_root_rot = _MIRROR @ p['root_rot'] @ _MIRROR
  fk, _ = skeleton.forward_kinematics(p['root_pos'] @ _MIRROR, m_root_rot, m_local)
  np.testing.assert_allclose(m_pos, fk, atol=1e-9)
  np.testing.assert_allclose(skeleton.bone_lengths(m_pos), skeleton.bone_lengths(positions),
                             atol=1e-9)
  # The left wrist of the mirrored body is where the right wrist was, reflected.
  np.testing.assert_allclose(m_pos[:, 20], positions[:, 21] @ _MIRROR, atol=1e-12)


def test_mirrored_features_are_the_reflected_canonical_features(pair):
  # Mirroring the world negates person 1's heading, so the canonical frame is reflected too:
  # positions and velocities are reflected with left/right joints exchanged, and the left and
  # right contact channels trade places.
  feats = pair['feats'].astype(np.float64)
  mirrored = features.interhuman_pair_features(pair['raw1'], pair['raw2'], mirror=True)
  perm = skeleton.MIRROR_PERMUTATION
  for part in (features.POSITIONS, features.VELOCITIES):
    expected = (feats[..., part].reshape(2, -1, 22, 3) @ _MIRROR)[..., perm, :]
    np.testing.assert_allclose(mirrored[..., part].reshape(2, -1, 22, 3), expected, atol=_ATOL)
  np.testing.assert_array_equal(mirrored[..., features.CONTACTS],
                                feats[..., features.CONTACTS][..., [2, 3, 0, 1]])
  pos = [features.raw_to_used(r) for r in (pair['raw1'], pair['raw2'])]
  _, m_rot = features.mirror_used(np.stack([p for p, _ in pos]), np.stack([r for _, r in pos]))
  np.testing.assert_array_equal(mirrored[..., features.ROTATIONS],
                                m_rot[:, :-1].reshape(2, -1, 126).astype(np.float32))


# --- Bad inputs -----------------------------------------------------------------------------

@pytest.mark.parametrize('which', ['raw1', 'raw2'])
def test_wrong_raw_shape_names_the_argument(pair, which):
  raws = {'raw1': pair['raw1'], 'raw2': pair['raw2']}
  raws[which] = raws[which][:, :491]
  with pytest.raises(ValueError, match=rf'{which}.*\(T, 492\).*491'):
    features.interhuman_pair_features(raws['raw1'], raws['raw2'])


def test_raw_to_used_rejects_wrong_rank_with_the_given_name():
  with pytest.raises(ValueError, match='my_clip'):
    features.raw_to_used(np.zeros((5, 2, 492)), name='my_clip')


def test_frame_count_mismatch_names_both_arguments(pair):
  with pytest.raises(ValueError, match=r'raw1 and raw2.*20 and 19'):
    features.interhuman_pair_features(pair['raw1'], pair['raw2'][:-1])


@pytest.mark.parametrize('shape', [(1, 5, 22, 3), (2, 5, 21, 3), (2, 5, 22), (2, 1, 22, 3)])
def test_canonical_rejects_bad_position_shapes(shape):
  with pytest.raises(ValueError, match='positions'):
    features.canonical_pair_features(np.zeros(shape), np.zeros((2, 5, 21, 6)))


def test_canonical_rejects_bad_rotation_shapes():
  positions = np.zeros((2, 5, 22, 3))
  positions[:, :, skeleton.LEFT_HIP, 0] = 0.1  # A well-defined facing direction.
  with pytest.raises(ValueError, match='rotations'):
    features.canonical_pair_features(positions, np.zeros((2, 6, 21, 6)))


def test_a_batch_of_clips_gives_each_clips_features_exactly(pair):
  # The input pipeline computes a batch in one call; each clip must come out as if alone.
  clips = [features.raw_to_used(pair['raw1']), features.raw_to_used(pair['raw2'])]
  positions = np.stack([np.stack([clips[0][0], clips[1][0]]), np.stack([clips[1][0], clips[0][0]])])
  rots = np.stack([np.stack([clips[0][1], clips[1][1]]), np.stack([clips[1][1], clips[0][1]])])
  batch = features.canonical_pair_features(positions, rots)
  assert batch.shape == (2, 2, pair['num_frames'] - 1, features.FEATURE_DIM)
  for i in range(2):
    np.testing.assert_array_equal(batch[i], features.canonical_pair_features(positions[i], rots[i]))
  np.testing.assert_array_equal(batch[0], pair['feats'])
  np.testing.assert_array_equal(features.canonical_pair_features(positions[None], rots[None])[0],
                                batch)

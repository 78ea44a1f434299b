"""Tests for BVH export: round trips through our reader, Euler conversions, header, bad inputs.

The synthetic clips' joint positions are exactly the forward kinematics of their stored local
rotations on the rest skeleton, so a correct file reproduces them to rounding: the tolerance
below (0.1 mm) is far tighter than the 1 cm a viewer would notice.
"""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import synthetic_motions
from finedual_jax.motion import bvh, features, rotations, skeleton

_TOL_M = 1e-4
_ORDERS = ('XYZ', 'XZY', 'YXZ', 'YZX', 'ZXY', 'ZYX')


@pytest.fixture(scope='module')
def clip():
  """One synthetic interaction: y-up positions [2, T, 22, 3] and 6D rotations [2, T, 21, 6]."""
  raw1, raw2, _ = synthetic_motions.perform('handshake', 60, np.random.default_rng(3))
  used = [features.raw_to_used(raw) for raw in (raw1, raw2)]
  return np.stack([u[0] for u in used]), np.stack([u[1] for u in used])


def _random_rotations(shape, rng) -> np.ndarray:
  """Uniformly random rotations [*shape, 3, 3] (from normalised Gaussian quaternions)."""
  q = rng.normal(size=tuple(shape) + (4,))
  w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
  return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                   2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                   2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                  axis=-1).reshape(tuple(shape) + (3, 3))


def _joint_positions(path) -> np.ndarray:
  return bvh.bvh_joint_positions(bvh.read_bvh(path), joint_names=bvh.SMPL_JOINT_NAMES)


def _channel_rotations(parsed: bvh.BvhData, name: str) -> np.ndarray:
  """[T, 3, 3] rotation a joint's channels encode (the file uses EULER_ORDER throughout)."""
  j = parsed.names.index(name)
  start = sum(len(c) for c in parsed.channels[:j]) + len(parsed.channels[j]) - 3
  return bvh.euler_to_matrix(np.deg2rad(parsed.frames[:, start:start + 3]))


def _max_error_m(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b, axis=-1).max())


# ----------------------------------------------------------------------------- round trips

def test_round_trip_with_the_clips_rotations(tmp_path, clip):
  positions, sixd = clip[0][0], clip[1][0]
  local = rotations.sixd_to_matrix(sixd)
  path = bvh.write_bvh(tmp_path / 'p1.bvh', positions, local)
  assert _max_error_m(_joint_positions(path), positions) < _TOL_M
  # The channels hold exactly the given rotations (not just something with the same positions).
  parsed = bvh.read_bvh(path)
  for j in (4, 15, 18, 20):  # a knee, the head, an elbow and a wrist
    np.testing.assert_allclose(_channel_rotations(parsed, bvh.SMPL_JOINT_NAMES[j]),
                               local[:, j - 1], atol=1e-6)


def test_pair_from_canonical_features_shares_one_world_frame(tmp_path, clip):
  feats = features.canonical_pair_features(*clip)  # [2, T-1, 262] float32, person 1's frame
  paths = bvh.write_pair_bvh(tmp_path / 'out' / 'sample_0.5', feats, fps=30)
  assert [p.name for p in paths] == ['sample_0.5_person1.bvh', 'sample_0.5_person2.bvh']
  for person, path in enumerate(paths):
    expected = features.feature_positions(feats[person]).astype(np.float64)
    assert _max_error_m(_joint_positions(path), expected) < _TOL_M


def test_ik_round_trip_from_positions_alone(tmp_path, clip):
  positions = clip[0][1]
  feats = np.zeros((positions.shape[0], 262))
  feats[:, features.POSITIONS] = positions.reshape(-1, 66)  # no rotations at all
  path = bvh.features_to_bvh(tmp_path / 'ik.bvh', feats, rotations='ik')
  assert _max_error_m(_joint_positions(path), positions) < _TOL_M


def test_ik_reproduces_bone_directions_when_bone_lengths_vary(tmp_path, clip):
  positions = clip[0][0]
  rng = np.random.default_rng(0)
  # Stretch every bone by up to +-5% per frame, keeping its direction.
  bones = positions[:, 1:] - positions[:, list(skeleton.PARENTS[1:])]
  stretch = 1.0 + 0.05 * rng.uniform(-1.0, 1.0, size=bones.shape[:2] + (1,))
  stretched = [positions[:, 0]]
  for j in range(1, skeleton.NUM_JOINTS):
    stretched.append(stretched[skeleton.PARENTS[j]] + stretch[:, j - 1] * bones[:, j - 1])
  stretched = np.stack(stretched, axis=1)
  got = _joint_positions(bvh.write_bvh(tmp_path / 'ik.bvh', stretched))

  def directions(p):
    b = p[:, 1:] - p[:, list(skeleton.PARENTS[1:])]
    return b / np.linalg.norm(b, axis=-1, keepdims=True)

  np.testing.assert_allclose(directions(got), directions(stretched), atol=1e-6)
  # What is left is each bone's deviation from its mean length, summed along the chain.
  deviation = np.abs(skeleton.bone_lengths(stretched) - skeleton.bone_lengths(stretched).mean(0))
  bound = [np.zeros(len(stretched))]
  for j in range(1, skeleton.NUM_JOINTS):
    bound.append(bound[skeleton.PARENTS[j]] + deviation[:, j - 1])
  error = np.linalg.norm(got - stretched, axis=-1)
  assert np.all(error <= np.stack(bound, axis=1) + 1e-6)


def test_given_root_rotation_is_used(tmp_path, clip):
  positions, sixd = clip[0][0], clip[1][0]
  root = bvh.solve_root_rotation(positions)
  tilt = bvh.euler_to_matrix(np.array([0.0, 0.3, 0.0]))
  path = bvh.write_bvh(tmp_path / 'a.bvh', positions, rotations.sixd_to_matrix(sixd),
                       root_rotation=root @ tilt)
  np.testing.assert_allclose(_channel_rotations(bvh.read_bvh(path), 'Pelvis'), root @ tilt,
                             atol=1e-6)


# ----------------------------------------------------------------------------- Euler angles

@pytest.mark.parametrize('order', _ORDERS)
def test_euler_round_trip_of_random_rotations(order):
  mats = _random_rotations((500,), np.random.default_rng(1))
  angles = bvh.matrix_to_euler(mats, order)
  np.testing.assert_allclose(bvh.euler_to_matrix(angles, order), mats, atol=1e-9)
  assert np.all(np.abs(angles[:, 1]) <= np.pi / 2 + 1e-12)


@pytest.mark.parametrize('order', _ORDERS)
def test_euler_round_trip_near_gimbal_lock(order):
  rng = np.random.default_rng(2)
  eps = np.array([0.0, 1e-12, -1e-12, 1e-9, 1e-6, -1e-6, 1e-3])
  middle = np.repeat(np.concatenate([np.pi / 2 - eps, eps - np.pi / 2]), 20)
  angles = np.stack([rng.uniform(-np.pi, np.pi, middle.shape), middle,
                     rng.uniform(-np.pi, np.pi, middle.shape)], axis=-1)
  mats = bvh.euler_to_matrix(angles, order)
  np.testing.assert_allclose(bvh.euler_to_matrix(bvh.matrix_to_euler(mats, order), order), mats,
                             atol=1e-9)


def test_euler_convention_matches_the_projects_xyz():
  angles = np.random.default_rng(3).uniform(-3.0, 3.0, size=(10, 3))
  np.testing.assert_allclose(bvh.euler_to_matrix(angles, 'XYZ'),
                             rotations.euler_xyz_to_matrix(angles), atol=1e-12)


def test_continuous_euler_keeps_rotations_and_removes_jumps():
  t = np.linspace(0.0, 1.0, 200)
  # Two full turns of heading with some sway, then a pitch through +-90 degrees.
  angles = np.stack([0.3 * np.sin(6 * t), 0.2 * np.cos(5 * t), 4 * np.pi * t], axis=-1)
  mats = bvh.euler_to_matrix(angles)
  principal = bvh.matrix_to_euler(mats)
  smooth = bvh.continuous_euler(principal)
  np.testing.assert_allclose(bvh.euler_to_matrix(smooth), mats, atol=1e-9)
  assert np.abs(np.diff(principal, axis=0)).max() > np.pi  # the principal angles wrap
  assert np.abs(np.diff(smooth, axis=0)).max() < 0.1
  pitch = bvh.euler_to_matrix(np.stack([0 * t, 2.5 * t, 0 * t], -1))  # x passes 90 degrees
  smooth = bvh.continuous_euler(bvh.matrix_to_euler(pitch))
  np.testing.assert_allclose(bvh.euler_to_matrix(smooth), pitch, atol=1e-9)
  assert np.abs(np.diff(smooth, axis=0)).max() < 0.1


def test_file_channels_reproduce_random_and_near_gimbal_rotations(tmp_path, clip):
  positions = clip[0][0][:20]
  rng = np.random.default_rng(4)
  local = _random_rotations((20, 21), rng)
  # Some joints sit at or next to the ZXY lock (x = +-90 degrees).
  lock = rng.uniform(-np.pi, np.pi, size=(20, 5, 3))
  lock[..., 1] = np.pi / 2 - np.array([0.0, 1e-9, 1e-6, 1e-4, -1e-3])[None, :]
  local[:, [3, 4, 17, 18, 19]] = bvh.euler_to_matrix(lock)
  root = _random_rotations((20,), rng)
  parsed = bvh.read_bvh(bvh.write_bvh(tmp_path / 'r.bvh', positions, local, root_rotation=root))
  np.testing.assert_allclose(_channel_rotations(parsed, 'Pelvis'), root, atol=1e-6)
  for j in range(1, skeleton.NUM_JOINTS):
    np.testing.assert_allclose(_channel_rotations(parsed, bvh.SMPL_JOINT_NAMES[j]),
                               local[:, j - 1], atol=1e-6, err_msg=bvh.SMPL_JOINT_NAMES[j])


# ----------------------------------------------------------------------------- header

def test_header_structure(tmp_path, clip):
  positions = clip[0][0][:17]
  path = bvh.write_bvh(tmp_path / 'h.bvh', positions, fps=20)
  parsed = bvh.read_bvh(path)
  assert sorted(parsed.names) == sorted(bvh.SMPL_JOINT_NAMES)
  assert parsed.names[0] == 'Pelvis' and parsed.parents[0] == -1
  for name, parent in zip(parsed.names[1:], parsed.parents[1:]):
    j = bvh.SMPL_JOINT_NAMES.index(name)
    assert parsed.names[parent] == bvh.SMPL_JOINT_NAMES[skeleton.PARENTS[j]], name
  assert parsed.channels[0] == ('Xposition', 'Yposition', 'Zposition', 'Zrotation', 'Xrotation',
                                'Yrotation')
  assert all(c == ('Zrotation', 'Xrotation', 'Yrotation') for c in parsed.channels[1:])
  assert parsed.frames.shape == (17, 6 + 3 * 21)
  assert parsed.frame_time == pytest.approx(1 / 20, abs=1e-8)
  assert path.read_text().count('End Site') == 5  # head, both wrists, both toes
  # OFFSETs: rest directions at this motion's mean bone lengths, in centimetres.
  order = [parsed.names.index(n) for n in bvh.SMPL_JOINT_NAMES]
  offsets = parsed.offsets[order] / bvh.UNITS_PER_METRE
  np.testing.assert_allclose(offsets[0], 0.0)
  np.testing.assert_allclose(np.linalg.norm(offsets[1:], axis=-1),
                             skeleton.bone_lengths(positions).mean(0), atol=1e-7)
  rest = skeleton.REST_OFFSETS[1:]
  np.testing.assert_allclose(offsets[1:] / np.linalg.norm(offsets[1:], axis=-1, keepdims=True),
                             rest / np.linalg.norm(rest, axis=-1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(parsed.frames[:, :3] / 100, positions[:, 0], atol=1e-7)


def test_reader_on_a_hand_written_file(tmp_path):
  # Another writer's conventions: tabs, ZYX channels, a root OFFSET and an End Site.
  path = tmp_path / 'tiny.bvh'
  path.write_text('HIERARCHY\nROOT hips\n{\n\tOFFSET 1 2 3\n\tCHANNELS 6 Xposition Yposition '
                  'Zposition Zrotation Yrotation Xrotation\n\tJOINT chest\n\t{\n\t\tOFFSET 0 10 0'
                  '\n\t\tCHANNELS 3 Zrotation Yrotation Xrotation\n\t\tEnd Site\n\t\t{\n\t\t\t'
                  'OFFSET 0 5 0\n\t\t}\n\t}\n}\nMOTION\nFrames: 2\nFrame Time: 0.05\n'
                  '0 100 0 0 0 0 0 0 0\n0 100 0 90 0 0 0 0 -90\n')
  parsed = bvh.read_bvh(path)
  assert parsed.names == ('hips', 'chest') and parsed.parents == (-1, 0)
  assert parsed.frame_time == 0.05 and parsed.frames.shape == (2, 9)
  got = bvh.bvh_joint_positions(parsed, units_per_metre=1.0)
  # Position channels replace the root's OFFSET; a 90 degree z turn sends +y to -x.
  np.testing.assert_allclose(got, [[[0, 100, 0], [0, 110, 0]], [[0, 100, 0], [-10, 100, 0]]],
                             atol=1e-12)
  np.testing.assert_allclose(bvh.bvh_joint_positions(parsed, units_per_metre=1.0,
                                                     joint_names=['chest'])[:, 0], got[:, 1])


# ----------------------------------------------------------------------------- bad inputs

def _good(clip):
  return clip[0][0][:5], rotations.sixd_to_matrix(clip[1][0][:5])


@pytest.mark.parametrize('case, match', [
    ('positions_shape', r'positions must have shape \[T, 22, 3\].*found shape \(5, 24, 3\)'),
    ('positions_empty', r'positions .* at least one frame'),
    ('positions_nan', r'positions .* finite.*index \(2, 7, 1\)'),
    ('local_frames', r'local_rotations must have shape \[T, 21, 3, 3\] with T = 5'),
    ('local_not_rotation', r'local_rotations .* rotation matrices.*index \(1, 3\)'),
    ('root_shape', r'root_rotation must have shape \[T, 3, 3\]'),
    ('fps', r'fps must be a positive number'),
    ('order', r'euler_order must be a permutation of "XYZ"'),
    ('names', r'joint_names must be 22 distinct names'),
])
def test_bad_write_inputs_raise_and_write_nothing(tmp_path, clip, case, match):
  positions, local = _good(clip)
  kwargs = {}
  if case == 'positions_shape':
    positions = np.zeros((5, 24, 3))
  elif case == 'positions_empty':
    positions = np.zeros((0, 22, 3))
  elif case == 'positions_nan':
    positions = positions.copy()
    positions[2, 7, 1] = np.nan
  elif case == 'local_frames':
    local = local[:4]
  elif case == 'local_not_rotation':
    local = local.copy()
    local[1, 3] *= 2.0
  elif case == 'root_shape':
    kwargs['root_rotation'] = np.eye(3)
  elif case == 'fps':
    kwargs['fps'] = 0
  elif case == 'order':
    kwargs['euler_order'] = 'ZZY'
  elif case == 'names':
    kwargs['joint_names'] = bvh.SMPL_JOINT_NAMES[:-1] + ('L Wrist',)
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=match):
    bvh.write_bvh(out / 'a.bvh', positions, local, **kwargs)
  assert not out.exists()


def test_bad_feature_inputs_raise(tmp_path, clip):
  feats = features.canonical_pair_features(*clip)
  with pytest.raises(ValueError, match=r"rotations must be 'features'.*or 'ik'"):
    bvh.features_to_bvh(tmp_path / 'a.bvh', feats[0], rotations='quaternions')
  with pytest.raises(ValueError, match=r'features must have shape \[T, 262\].*\(2, 59, 262\)'):
    bvh.features_to_bvh(tmp_path / 'a.bvh', feats)
  with pytest.raises(ValueError, match=r'features must have shape \[2, T, 262\]'):
    bvh.write_pair_bvh(tmp_path / 'a', feats[0])
  zero = feats[0].copy()
  zero[3, features.ROTATIONS.start + 6 * 17:features.ROTATIONS.start + 6 * 18] = 0.0
  with pytest.raises(ValueError, match=r"degenerate 6D.*frame 3, joint left_elbow.*'ik'"):
    bvh.features_to_bvh(tmp_path / 'a.bvh', zero)
  with pytest.raises(ValueError, match=r'degenerate 6D'):
    bvh.write_pair_bvh(tmp_path / 'pair', np.stack([feats[1], zero]))  # checked before writing
  assert list(tmp_path.iterdir()) == []
  bvh.features_to_bvh(tmp_path / 'a.bvh', zero, rotations='ik')  # IK needs no rotations


@pytest.mark.parametrize('text, match', [
    ('HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\nCHANNELS 3 Xrotation Yrotation Zrotation\n}\n',
     'no MOTION line'),
    ('HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\nCHANNELS 3 Xrotation Yrotation Spin\n}\nMOTION\n'
     'Frames: 1\nFrame Time: 0.1\n0 0 0\n', r'line 5: unknown channels \[.Spin.\]'),
    ('HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\nCHANNELS 3 Xrotation Yrotation Zrotation\n}\nMOTION\n'
     'Frames: 2\nFrame Time: 0.1\n0 0 0\n', 'Frames: 2 with 3 channels needs 6 values; found 3'),
    ('HIERARCHY\nROOT a\n{\nOFFSET 0 0\nCHANNELS 0\n}\nMOTION\nFrames: 0\nFrame Time: 1\n',
     'line 5: expected an OFFSET coordinate'),
    ('HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\nMOTION\nFrames: 0\nFrame Time: 1\n', 'unclosed braces'),
])
def test_malformed_files_raise(tmp_path, text, match):
  path = tmp_path / 'bad.bvh'
  path.write_text(text)
  with pytest.raises(ValueError, match=match):
    bvh.read_bvh(path)

"""Tests for the rotation-based representation (Inter-X without SMPL-X), with hand-made answers."""

from __future__ import annotations

import numpy as np
import pytest

from finedual_jax.data import representation
from finedual_jax.motion import rotation_features as rf
from finedual_jax.motion import rotations
from finedual_jax.motion import skeleton

IDENTITY_6D = rotations.matrix_to_6d(np.eye(3))


def _stored(translation: np.ndarray, root: np.ndarray, local: np.ndarray) -> np.ndarray:
  """[T, 3], [T, 3, 3], [T, 21, 6] -> one person's stored [T, 135]."""
  return np.concatenate([translation, rotations.matrix_to_6d(root),
                         local.reshape(len(translation), -1)], axis=-1)


def _heading(angle: float, num_frames: int) -> np.ndarray:
  return np.broadcast_to(rotations.rotation_about_y(np.float64(angle)), (num_frames, 3, 3))


def _pair(seed: int = 0, num_frames: int = 6) -> np.ndarray:
  """A random stored pair [T, 2, 135] with tilted root orientations."""
  rng = np.random.default_rng(seed)
  people = []
  for _ in range(2):
    translation = np.cumsum(rng.normal(size=(num_frames, 3)) * 0.05, axis=0) + rng.normal(size=3)
    root = rotations.axis_angle_to_matrix(rng.normal(size=(num_frames, 3)) * 0.3
                                          + np.array([0.0, rng.uniform(-3, 3), 0.0]))
    local = rotations.matrix_to_6d(rotations.axis_angle_to_matrix(
        rng.normal(size=(num_frames, 21, 3)) * 0.4))
    people.append(_stored(translation, root, local))
  return np.stack(people, axis=1)


def test_person_facing_minus_x_ends_facing_plus_z_at_origin():
  num_frames = 4
  # rotation_about_y(-pi/2) maps the body's forward +z to -x.
  root = _heading(-np.pi / 2, num_frames)
  np.testing.assert_allclose(root[0] @ np.array([0.0, 0.0, 1.0]), [-1.0, 0.0, 0.0], atol=1e-12)
  p1 = _stored(np.array([[2.0, 0.1, -3.0]] * num_frames), root, np.zeros((num_frames, 21, 6)))
  # Person 2 stands 2 m in front of person 1 (towards -x) and faces person 1 (+x).
  p2 = _stored(np.array([[0.0, 0.2, -3.0]] * num_frames), _heading(np.pi / 2, num_frames),
               np.zeros((num_frames, 21, 6)))
  feats = rf.rotation_pair_features(np.stack([p1, p2], axis=1))
  assert feats.shape == (2, num_frames - 1, rf.FEATURE_DIM) and feats.dtype == np.float32
  np.testing.assert_allclose(feats[0, 0, rf.ROOT_POSITION], [0.0, 0.1, 0.0], atol=1e-6)
  np.testing.assert_allclose(feats[0, :, rf.ROOT_ROTATION], np.tile(IDENTITY_6D, (3, 1)),
                             atol=1e-6)
  # Relative placement kept: person 2 is 2 m ahead (+z) and faces person 1 (-z).
  np.testing.assert_allclose(feats[1, 0, rf.ROOT_POSITION], [0.0, 0.2, 2.0], atol=1e-6)
  facing2 = rotations.sixd_to_matrix(feats[1, 0, rf.ROOT_ROTATION].astype(np.float64))
  np.testing.assert_allclose(facing2 @ np.array([0.0, 0.0, 1.0]), [0.0, 0.0, -1.0], atol=1e-6)


def test_tilted_root_uses_the_ground_projection_of_its_forward_axis():
  # Leaning forward 0.5 rad while facing -x: still canonicalised to face +z.
  root = rotations.rotation_about_y(np.float64(-np.pi / 2)) @ rotations.axis_angle_to_matrix(
      np.array([0.5, 0.0, 0.0]))
  p = _stored(np.zeros((2, 3)), np.stack([root, root]), np.zeros((2, 21, 6)))
  feats = rf.rotation_pair_features(np.stack([p, p], axis=1))
  canonical = rotations.sixd_to_matrix(feats[0, 0, rf.ROOT_ROTATION].astype(np.float64))
  forward = canonical @ np.array([0.0, 0.0, 1.0])
  assert abs(forward[0]) < 1e-6 and forward[2] > 0.8


def test_velocities_are_position_differences_and_locals_untouched():
  stored = _pair(seed=1, num_frames=7)
  feats = rf.rotation_pair_features(stored)
  full = rf.rotation_pair_features(np.concatenate([stored, stored[-1:]], axis=0))
  # Velocity at t = position at t+1 - position at t (the last row needs the appended frame).
  np.testing.assert_allclose(feats[:, :, rf.ROOT_VELOCITY],
                             full[:, 1:, rf.ROOT_POSITION] - full[:, :-1, rf.ROOT_POSITION],
                             atol=1e-5)
  np.testing.assert_array_equal(feats[:, :, rf.LOCAL_ROTATIONS],
                                stored[:-1, :, rf.STORED_LOCAL_ROTATIONS].transpose(1, 0, 2)
                                .astype(np.float32))


def test_features_do_not_depend_on_world_placement():
  stored = _pair(seed=2)
  rng = np.random.default_rng(5)
  turn = rotations.rotation_about_y(np.float64(rng.uniform(-np.pi, np.pi)))
  shift = rng.normal(size=3)
  moved = []
  for p in range(2):
    person = stored[:, p]
    root = turn @ rotations.sixd_to_matrix(person[:, rf.STORED_ROOT_ROTATION])
    moved.append(_stored(person[:, rf.STORED_TRANSLATION] @ turn.T + shift, root,
                         person[:, rf.STORED_LOCAL_ROTATIONS]))
  moved = np.stack(moved, axis=1)
  feats, feats_moved = rf.rotation_pair_features(stored), rf.rotation_pair_features(moved)
  np.testing.assert_allclose(feats_moved[..., :rf.ROOT_ROTATION.stop],
                             feats[..., :rf.ROOT_ROTATION.stop] + np.concatenate(
                                 [np.array([0.0, shift[1], 0.0]), np.zeros(9)]), atol=1e-5)
  np.testing.assert_allclose(feats_moved[..., rf.LOCAL_ROTATIONS], feats[..., rf.LOCAL_ROTATIONS],
                             atol=1e-6)


def test_interx_rows_conversion():
  rng = np.random.default_rng(4)
  rows = rng.normal(size=(5, rf.INTERX_NUM_ROWS, 3)) * 0.5
  stored = rf.interx_rows_to_stored(rows)
  assert stored.shape == (5, rf.STORED_DIM)
  np.testing.assert_array_equal(stored[:, rf.STORED_TRANSLATION], rows[:, 55])
  np.testing.assert_allclose(stored[:, rf.STORED_ROOT_ROTATION],
                             rotations.matrix_to_6d(rotations.axis_angle_to_matrix(rows[:, 0])))
  np.testing.assert_allclose(
      stored[:, rf.STORED_LOCAL_ROTATIONS].reshape(5, 21, 6),
      rotations.matrix_to_6d(rotations.axis_angle_to_matrix(rows[:, 1:22])))
  z_up = rf.interx_rows_to_stored(rows, up_axis='z')
  np.testing.assert_allclose(z_up[:, rf.STORED_TRANSLATION], rows[:, 55] @ skeleton.Z_UP_TO_Y_UP.T)
  np.testing.assert_allclose(
      rotations.sixd_to_matrix(z_up[:, rf.STORED_ROOT_ROTATION]),
      skeleton.Z_UP_TO_Y_UP @ rotations.axis_angle_to_matrix(rows[:, 0]), atol=1e-12)
  np.testing.assert_array_equal(z_up[:, rf.STORED_LOCAL_ROTATIONS],
                                stored[:, rf.STORED_LOCAL_ROTATIONS])
  motion = np.concatenate([rows, rows[::-1]], axis=-1)
  pair = rf.interx_motion_to_stored(motion)
  np.testing.assert_array_equal(pair[:, 0], stored)
  np.testing.assert_array_equal(pair[:, 1], rf.interx_rows_to_stored(rows[::-1]))
  with pytest.raises(ValueError, match=r'\(T, 56, 3\)'):
    rf.interx_rows_to_stored(rows[:, :55])
  with pytest.raises(ValueError, match='up_axis'):
    rf.interx_rows_to_stored(rows, up_axis='x')


def test_approximate_positions_rest_pose():
  feats = np.zeros((3, rf.FEATURE_DIM))
  feats[:, rf.ROOT_POSITION] = [1.0, 0.5, -2.0]
  feats[:, rf.ROOT_ROTATION] = IDENTITY_6D
  feats[:, rf.LOCAL_ROTATIONS] = np.tile(IDENTITY_6D, 21)
  positions = rf.approximate_positions(feats)
  expected = skeleton.REST_JOINTS - skeleton.REST_JOINTS[0] + np.array([1.0, 0.5, -2.0])
  np.testing.assert_allclose(positions, np.broadcast_to(expected, (3, 22, 3)), atol=1e-12)
  # A turned root turns the whole skeleton about the pelvis.
  feats[:, rf.ROOT_ROTATION] = rotations.matrix_to_6d(rotations.rotation_about_y(np.float64(1.0)))
  turned = rf.approximate_positions(feats[0])
  np.testing.assert_allclose(
      turned, (expected - expected[0]) @ rotations.rotation_about_y(np.float64(1.0)).T
      + expected[0], atol=1e-12)


def test_bad_shapes():
  with pytest.raises(ValueError, match=r'\[T, 2, 135\]'):
    rf.rotation_pair_features(np.zeros((4, 2, 134)))
  with pytest.raises(ValueError, match='at least 2 frames'):
    rf.rotation_pair_features(np.zeros((1, 2, 135)))
  with pytest.raises(ValueError, match='138'):
    rf.approximate_positions(np.zeros((2, 137)))


def test_the_representation_takes_a_batch_of_clips():
  clips = np.stack([_pair(seed, num_frames=7) for seed in range(3)])
  batch = representation.ROTATIONS.pair_features(clips)
  assert batch.shape == (3, 2, 6, rf.FEATURE_DIM)
  for clip, features in zip(clips, batch):
    np.testing.assert_array_equal(features, rf.rotation_pair_features(clip))

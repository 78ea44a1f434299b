"""Tests for the SMPL-X body-model reader and its forward kinematics, on a small fake model file."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest
import scipy.sparse

from finedual_jax.motion import rotations
from finedual_jax.motion import skeleton
from finedual_jax.motion import smplx

NUM_VERTICES = 300
NUM_JOINTS = 55  # SMPL-X: 22 body, jaw, 2 eyes, 2 x 15 hand joints.


def _fake_model(seed: int = 0) -> dict:
  """Arrays shaped like SMPL-X's: random vertices, convex joint regressor, SMPL-X's tree."""
  rng = np.random.default_rng(seed)
  v_template = rng.normal(size=(NUM_VERTICES, 3)) * np.array([0.3, 0.8, 0.15])
  weights = rng.uniform(size=(NUM_JOINTS, NUM_VERTICES)) * (
      rng.uniform(size=(NUM_JOINTS, NUM_VERTICES)) < 0.05)
  weights[:, 0] += 1e-3  # No empty row.
  regressor = weights / weights.sum(axis=1, keepdims=True)
  hand_parents = []
  for wrist, first in ((20, 25), (21, 40)):
    for finger in range(5):
      base = first + 3 * finger
      hand_parents += [wrist, base, base + 1]
  parents = [2**32 - 1] + list(skeleton.PARENTS[1:]) + [15, 15, 15] + hand_parents
  kintree = np.array([parents, list(range(NUM_JOINTS))], dtype=np.int64)
  shapedirs = rng.normal(size=(NUM_VERTICES, 3, 10)) * 0.01
  return {'v_template': v_template, 'J_regressor': regressor, 'kintree_table': kintree,
          'shapedirs': shapedirs, 'f': np.zeros((10, 3), np.int32)}


@pytest.fixture(scope='module')
def model_file(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp('smplx') / 'SMPLX_NEUTRAL.npz'
  np.savez(path, **_fake_model())
  return path


def _rest_joints(arrays: dict, betas=None) -> np.ndarray:
  vertices = arrays['v_template']
  if betas is not None:
    vertices = vertices + np.einsum('vcb,b->vc', arrays['shapedirs'][..., :len(betas)], betas)
  return (arrays['J_regressor'] @ vertices)[:22]


def _reference_fk(rest: np.ndarray, axis_angle: np.ndarray, translation: np.ndarray) -> np.ndarray:
  """Independent FK with 4x4 rigid transforms, as SMPL's ``lbs`` composes them, one frame."""
  transforms = []
  for j in range(22):
    local = np.eye(4)
    local[:3, :3] = rotations.axis_angle_to_matrix(axis_angle[j])
    parent = skeleton.PARENTS[j]
    local[:3, 3] = rest[j] if parent < 0 else rest[j] - rest[parent]
    transforms.append(local if parent < 0 else transforms[parent] @ local)
  return np.stack([t[:3, 3] for t in transforms]) + translation


def test_rest_joints_and_parents(model_file):
  arrays = _fake_model()
  body = smplx.load_body_model(model_file)
  np.testing.assert_allclose(body.rest_joints, _rest_joints(arrays), atol=1e-12)
  assert body.parents == skeleton.PARENTS
  betas = np.linspace(-1.0, 1.0, 4)
  shaped = smplx.load_body_model(model_file, betas=betas)
  np.testing.assert_allclose(shaped.rest_joints, _rest_joints(arrays, betas), atol=1e-12)


def test_zero_pose_is_rest_plus_translation(model_file):
  body = smplx.load_body_model(model_file)
  translation = np.array([[0.5, -0.2, 1.5], [0.0, 0.0, 0.0]])
  positions = body.joint_positions(np.zeros((2, 22, 3)), translation)
  np.testing.assert_allclose(positions, body.rest_joints + translation[:, None], atol=1e-12)


def test_global_orient_rotates_about_the_pelvis(model_file):
  body = smplx.load_body_model(model_file)
  aa = np.zeros((22, 3))
  aa[0] = [0.3, -1.2, 0.5]
  translation = np.array([1.0, 0.1, -2.0])
  rot = rotations.axis_angle_to_matrix(aa[0])
  pelvis = body.rest_joints[0]
  expected = pelvis + (body.rest_joints - pelvis) @ rot.T + translation
  np.testing.assert_allclose(body.joint_positions(aa, translation), expected, atol=1e-12)


def test_one_joint_moves_only_its_descendants(model_file):
  body = smplx.load_body_model(model_file)
  knee = 4  # left knee; descendants: left ankle 7, left foot 10.
  aa = np.zeros((22, 3))
  aa[knee] = [0.9, 0.1, -0.4]
  rot = rotations.axis_angle_to_matrix(aa[knee])
  moved = body.joint_positions(aa, np.zeros(3))
  rest = body.rest_joints
  expected = rest.copy()
  for j in (7, 10):
    expected[j] = rest[knee] + rot @ (rest[j] - rest[knee])
  np.testing.assert_allclose(moved, expected, atol=1e-12)


def test_random_pose_matches_reference(model_file):
  body = smplx.load_body_model(model_file)
  rng = np.random.default_rng(3)
  aa = rng.normal(size=(4, 22, 3)) * 0.6
  translation = rng.normal(size=(4, 3))
  positions = body.joint_positions(aa, translation)
  for t in range(4):
    np.testing.assert_allclose(positions[t], _reference_fk(body.rest_joints, aa[t], translation[t]),
                               atol=1e-10)


@pytest.mark.parametrize('variant', ['sparse_npz', 'pkl'])
def test_sparse_regressor_and_pickle(tmp_path, variant):
  arrays = _fake_model()
  sparse = scipy.sparse.csc_matrix(arrays['J_regressor'])
  if variant == 'sparse_npz':
    path = tmp_path / 'model.npz'
    np.savez(path, **dict(arrays, J_regressor=np.array(sparse, dtype=object)))
  else:
    path = tmp_path / 'model.pkl'
    with open(path, 'wb') as f:
      pickle.dump(dict(arrays, J_regressor=sparse), f, protocol=2)
  body = smplx.load_body_model(path)
  np.testing.assert_allclose(body.rest_joints, _rest_joints(arrays), atol=1e-12)


def test_errors_name_the_file_and_the_problem(tmp_path):
  arrays = _fake_model()
  missing = tmp_path / 'missing.npz'
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    smplx.load_body_model(missing)
  no_key = tmp_path / 'no_key.npz'
  np.savez(no_key, **{k: v for k, v in arrays.items() if k != 'J_regressor'})
  with pytest.raises(KeyError, match="no_key.npz.*'J_regressor' missing"):
    smplx.load_body_model(no_key)
  with pytest.raises(KeyError, match="'shapedirs' missing"):
    np.savez(no_key, **{k: v for k, v in arrays.items() if k != 'shapedirs'})
    smplx.load_body_model(no_key, betas=np.zeros(10))
  bad_shape = tmp_path / 'bad_shape.npz'
  np.savez(bad_shape, **dict(arrays, J_regressor=arrays['J_regressor'][:, :-1]))
  with pytest.raises(ValueError, match=r"bad_shape.npz.*'J_regressor' must have shape \[J, 300\]"):
    smplx.load_body_model(bad_shape)
  bad_tree = tmp_path / 'bad_tree.npz'
  kintree = arrays['kintree_table'].copy()
  kintree[0, 5] = 1
  np.savez(bad_tree, **dict(arrays, kintree_table=kintree))
  with pytest.raises(ValueError, match='bad_tree.npz.*parents'):
    smplx.load_body_model(bad_tree)
  wrong_type = tmp_path / 'model.obj'
  wrong_type.write_text('v 0 0 0\n')
  with pytest.raises(ValueError, match=r"model.obj.*expected \.npz or \.pkl"):
    smplx.load_body_model(wrong_type)
  body = smplx.BodyModel(rest_joints=skeleton.REST_JOINTS, parents=skeleton.PARENTS)
  with pytest.raises(ValueError, match=r'axis_angle: expected shape \[..., 22, 3\]'):
    body.joint_positions(np.zeros((3, 21, 3)), np.zeros((3, 3)))

"""The rotation-based two-person representation, for Inter-X without an SMPL-X model (DESIGN §1.3).

Joint positions of Inter-X need the licensed SMPL-X body model. Without it, a motion is kept as
what the release stores: root translation, root orientation and local joint rotations.

Stored layout per person per frame, ``STORED_DIM = 135``: ``[0:3]`` root translation (SMPL-X
``transl``, y-up, metres) · ``[3:9]`` global orientation 6D · ``[9:135]`` the 21 body joints'
local 6D rotations (6D layout of ``rotations.py``).

Feature layout per person per frame, ``FEATURE_DIM = 138``: ``[0:3]`` root position ·
``[3:6]`` root velocity ``pos[t+1] - pos[t]`` · ``[6:12]`` global orientation 6D ·
``[12:138]`` the 21 local 6D rotations, untouched. A T-frame clip gives T-1 rows (as §1.1).

What this representation cannot support: every loss that needs joint positions (velocity, bone
length, foot contact, distance map, joint affinity, relative orientation, interaction-distance
regression) must be switched off, and there is no floor correction (without joints the lowest
point of the body is unknown), so heights stay those of the source data.
"""

from __future__ import annotations

import numpy as np

from finedual_jax.motion import rotations
from finedual_jax.motion import skeleton

STORED_DIM = 3 + 6 + 6 * (skeleton.NUM_JOINTS - 1)  # 135
STORED_TRANSLATION = slice(0, 3)
STORED_ROOT_ROTATION = slice(3, 9)
STORED_LOCAL_ROTATIONS = slice(9, STORED_DIM)

FEATURE_DIM = 3 + STORED_DIM  # 138
ROOT_POSITION = slice(0, 3)
ROOT_VELOCITY = slice(3, 6)
ROOT_ROTATION = slice(6, 12)
LOCAL_ROTATIONS = slice(12, FEATURE_DIM)

# Inter-X's processed release: per frame 56 axis-angle rows of 3 (person 1 in channels 0:3,
# person 2 in 3:6): global orient, 21 body joints, jaw, 2 eyes, 2 x 15 hand joints, translation.
INTERX_NUM_ROWS = 56
INTERX_GLOBAL_ORIENT = 0
INTERX_BODY = slice(1, skeleton.NUM_JOINTS)  # rows 1..21
INTERX_TRANSLATION = 55
UP_AXES = ('y', 'z')

_UP = np.array([0.0, 1.0, 0.0])
_FORWARD = np.array([0.0, 0.0, 1.0])  # The SMPL body faces +z in its y-up rest frame.
_LEFT = np.array([1.0, 0.0, 0.0])


def interx_rows_to_stored(rows: np.ndarray, *, up_axis: str = 'y') -> np.ndarray:
  """One person's Inter-X axis-angle rows ``(T, 56, 3)`` -> stored ``(T, 135)`` float64, y-up.

  Args:
    rows: global orient, 21 body joints, ..., translation (row 55), as in the processed release.
    up_axis: the up axis of ``rows``: 'y' (the processed release, SMPL-X's own frame) or 'z'.
      For 'z', the translation and the global orientation are turned to y-up with
      ``skeleton.Z_UP_TO_Y_UP``. (SMPL-X rotates about the rest pelvis, not the origin, so the
      turned translation then differs from an exact y-up fit by a constant that depends on the
      body model; canonicalisation removes its horizontal part.)
  """
  rows = np.asarray(rows, dtype=np.float64)
  if rows.ndim != 3 or rows.shape[1:] != (INTERX_NUM_ROWS, 3):
    raise ValueError(f'rows: expected Inter-X axis-angle rows of shape (T, {INTERX_NUM_ROWS}, 3), '
                     f'found {rows.shape}.')
  if up_axis not in UP_AXES:
    raise ValueError(f'up_axis: expected one of {UP_AXES}, found {up_axis!r}.')
  translation = rows[:, INTERX_TRANSLATION]
  root = rotations.axis_angle_to_matrix(rows[:, INTERX_GLOBAL_ORIENT])
  if up_axis == 'z':
    translation = translation @ skeleton.Z_UP_TO_Y_UP.T
    root = skeleton.Z_UP_TO_Y_UP @ root
  local = rotations.matrix_to_6d(rotations.axis_angle_to_matrix(rows[:, INTERX_BODY]))
  return np.concatenate([translation, rotations.matrix_to_6d(root),
                         local.reshape(-1, 6 * (skeleton.NUM_JOINTS - 1))], axis=-1)


def interx_motion_to_stored(motion: np.ndarray, *, up_axis: str = 'y') -> np.ndarray:
  """One Inter-X clip ``(T, 56, 6)`` -> the stored pair ``(T, 2, 135)`` float64, y-up."""
  motion = np.asarray(motion)
  if motion.ndim != 3 or motion.shape[1:] != (INTERX_NUM_ROWS, 6):
    raise ValueError(f'motion: expected an Inter-X clip of shape (T, {INTERX_NUM_ROWS}, 6), '
                     f'found {motion.shape}.')
  return np.stack([interx_rows_to_stored(motion[..., 3 * p:3 * p + 3], up_axis=up_axis)
                   for p in (0, 1)], axis=1)


def _facing_rotation(root_rotation: np.ndarray) -> np.ndarray:
  """[3, 3] root orientation -> [3, 3] rotation about y that turns the body to face +z."""
  forward = root_rotation @ _FORWARD
  if np.hypot(forward[0], forward[2]) < 1e-6:
    # Facing straight up or down (lying): the heading follows from the body's left axis.
    forward = np.cross(root_rotation @ _LEFT, _UP)
  return rotations.rotation_about_y(-np.arctan2(forward[0], forward[2]))


def rotation_pair_features(stored: np.ndarray) -> np.ndarray:
  """Two persons' stored motion ``[T, 2, 135]`` -> ``[2, T-1, 138]`` float32 canonical features.

  Canonicalisation (per clip, after any crop): person 1's root xz at frame 0 goes to the origin
  and a rotation about y turns person 1 to face +z at frame 0 (facing = the root orientation
  applied to the body's forward axis +z, projected on the ground). Person 2 moves with the same
  translation and rotation, so the pair keeps its relative placement; velocities and global
  orientations turn alike; local rotations are untouched. No floor correction (see module doc).
  """
  stored = np.asarray(stored, dtype=np.float64)
  if stored.ndim != 3 or stored.shape[1:] != (2, STORED_DIM):
    raise ValueError(f'stored: expected shape [T, 2, {STORED_DIM}], found {stored.shape}.')
  if stored.shape[0] < 2:
    raise ValueError(f'stored: need at least 2 frames for velocities, found {stored.shape[0]}.')
  stored = stored.transpose(1, 0, 2)  # [2, T, 135]
  translation = stored[..., STORED_TRANSLATION]
  root = rotations.sixd_to_matrix(stored[..., STORED_ROOT_ROTATION])
  origin = translation[0, 0] * np.array([1.0, 0.0, 1.0])
  facing = _facing_rotation(root[0, 0])
  position = (translation - origin) @ facing.T
  root = facing @ root
  velocity = position[:, 1:] - position[:, :-1]
  features = np.concatenate([position[:, :-1], velocity, rotations.matrix_to_6d(root[:, :-1]),
                             stored[:, :-1, STORED_LOCAL_ROTATIONS]], axis=-1)
  return features.astype(np.float32)


def approximate_positions(features: np.ndarray) -> np.ndarray:
  """``[..., 138]`` features -> ``[..., 22, 3]`` joints, for drawing only.

  An approximation: forward kinematics of the rotations on the fixed SMPL rest skeleton of
  ``skeleton.py`` (not the subject's body), with the pelvis placed at the feature root position
  (the SMPL-X translation, which is offset from the true pelvis by the body model's rest pelvis
  position, so the feet need not touch y = 0). Never use it for losses or metrics.
  """
  features = np.asarray(features, dtype=np.float64)
  if features.shape[-1] != FEATURE_DIM:
    raise ValueError(f'features: expected last dimension {FEATURE_DIM}, found {features.shape}.')
  root = rotations.sixd_to_matrix(features[..., ROOT_ROTATION])
  local = rotations.sixd_to_matrix(
      features[..., LOCAL_ROTATIONS].reshape(*features.shape[:-1], skeleton.NUM_JOINTS - 1, 6))
  positions, _ = skeleton.forward_kinematics(features[..., ROOT_POSITION], root, local)
  return positions

"""The 262-d two-person motion representation (DESIGN §1.1), computed from InterHuman raw frames.

Per person per frame: ``[0:66]`` joint positions, ``[66:132]`` joint velocities
``pos[t+1] - pos[t]``, ``[132:258]`` local 6D rotations of the 21 non-root joints and
``[258:262]`` foot contacts (left ankle, left toe, right ankle, right toe). Both persons share
person 1's canonical frame: person 1's root at the origin at frame 0, facing +z, y up.
"""

from __future__ import annotations


import numpy as np

from finedual_jax.motion import skeleton

FEATURE_DIM = 262
POSITIONS = slice(0, 66)
VELOCITIES = slice(66, 132)
ROTATIONS = slice(132, 258)
CONTACTS = slice(258, 262)
USED_DIM = 66 + 126  # Raw columns kept per person: body positions and body 6D rotations.

# Contact rule (DESIGN §1.1): squared per-frame velocity below this and height below the
# per-joint threshold (ankles 0.12 m, toes 0.05 m), in the order of skeleton.FOOT_JOINTS.
CONTACT_VELOCITY_SQ = 0.001
CONTACT_HEIGHTS = np.array([0.12, 0.05, 0.12, 0.05])


def raw_to_used(raw: np.ndarray, *, name: str = 'raw') -> tuple[np.ndarray, np.ndarray]:
  """Splits one person's raw ``(T, 492)`` z-up frames into y-up body positions and rotations.

  Returns positions ``[T, 22, 3]`` (y-up, metres) and local 6D rotations ``[T, 21, 6]``.
  """
  raw = np.asarray(raw)
  if raw.ndim != 2 or raw.shape[1] != skeleton.RAW_DIM:
    raise ValueError(f'{name}: expected an InterHuman raw motion of shape (T, '
                     f'{skeleton.RAW_DIM}), found shape {raw.shape}.')
  raw = raw.astype(np.float64)
  positions = raw[:, skeleton.RAW_POS].reshape(-1, skeleton.NUM_JOINTS, 3)
  positions = positions @ skeleton.Z_UP_TO_Y_UP.T
  rotations = raw[:, skeleton.RAW_ROT].reshape(-1, skeleton.NUM_JOINTS - 1, 6)
  return positions, rotations


def mirror_used(positions: np.ndarray, rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors ``x -> -x`` (DESIGN §1.2): positions [..., 22, 3], 6D rotations [..., 21, 6].

  Mirroring is a reflection of the lateral axis, so it exchanges the left and right chains;
  conjugating a rotation by ``diag(-1, 1, 1)`` negates 6D components 1, 2 and 4 (see
  ``rotations.py`` for the layout). The lateral axis is x in both the z-up and y-up frames.
  """
  positions = positions * np.array([-1.0, 1.0, 1.0])
  positions = positions[..., skeleton.MIRROR_PERMUTATION, :]
  rotations = rotations * np.array([1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
  # Rotation i belongs to joint i + 1, so the joint permutation shifts by one.
  rotations = rotations[..., skeleton.MIRROR_PERMUTATION[1:] - 1, :]
  return positions, rotations


def _facing_angle(positions0: np.ndarray) -> np.ndarray:
  """[..., 66] joints at one frame -> [...] angle about y that turns the body to face +z."""
  across = (positions0[..., 3 * skeleton.RIGHT_HIP:3 * skeleton.RIGHT_HIP + 3]
            - positions0[..., 3 * skeleton.LEFT_HIP:3 * skeleton.LEFT_HIP + 3])
  # forward = up x across = (across_z, 0, -across_x), written out (np.cross is slow on 3-vectors).
  return -np.arctan2(across[..., 2], 0.0 - across[..., 0])


_FOOT_COLUMNS = (3 * np.asarray(skeleton.FOOT_JOINTS)[:, None] + np.arange(3)).ravel()
_FOOT_HEIGHT_COLUMNS = 3 * np.asarray(skeleton.FOOT_JOINTS) + 1


def foot_contacts(positions: np.ndarray) -> np.ndarray:
  """[T, 22, 3] floor-aligned positions -> [T-1, 4] contact flags (0/1) for frames 0..T-2."""
  feet = positions[:, list(skeleton.FOOT_JOINTS)]
  speed_sq = np.sum((feet[1:] - feet[:-1]) ** 2, axis=-1)
  low = feet[:-1, :, 1] < CONTACT_HEIGHTS
  return ((speed_sq < CONTACT_VELOCITY_SQ) & low).astype(np.float64)


def canonical_pair_features(positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:
  """Two persons' y-up world motion -> ``[..., 2, T-1, 262]`` float32 features in person 1's frame.

  Args:
    positions: [..., 2, T, 22, 3] body joint positions, y-up, metres; leading axes are
      independent clips (the input pipeline computes a batch in one call).
    rotations: [..., 2, T, 21, 6] local 6D rotations (left untouched by canonicalisation).
  """
  positions = np.asarray(positions, dtype=np.float64)
  if positions.ndim < 4 or positions.shape[-4] != 2 or positions.shape[-2:] != (22, 3):
    raise ValueError(f'positions: expected shape [..., 2, T, 22, 3], found {positions.shape}.')
  rotations = np.asarray(rotations)
  if rotations.shape != positions.shape[:-2] + (21, 6):
    raise ValueError(f'rotations: expected shape [..., 2, T, 21, 6] with [..., 2, T] = '
                     f'{list(positions.shape[:-2])} as in positions, found {rotations.shape}.')
  *lead, _, num_frames = positions.shape[:-2]
  if num_frames < 2:
    raise ValueError(f'positions: need at least 2 frames for velocities, found {num_frames}.')
  # Each person stands on its own floor, then both move rigidly with person 1's frame-0 pose.
  # The arithmetic runs on per-axis column views of [..., 2, T, 66]: numpy is several times
  # slower on broadcasts over 3-wide inner axes, and this runs in the input pipeline.
  flat = positions.reshape(*lead, 2, num_frames, 66)
  x, y, z = flat[..., 0::3], flat[..., 1::3], flat[..., 2::3]  # [..., 2, T, 22] each
  first = flat[..., 0, 0, :]  # Person 1 at frame 0: [..., 66].
  angle = _facing_angle(first)[..., None, None, None]  # About y: the floor shift cannot change it.
  cos, sin = np.cos(angle), np.sin(angle)
  # Person 1's frame-0 root xz to the origin.
  dx, dz = x - first[..., 0, None, None, None], z - first[..., 2, None, None, None]
  canonical = np.empty_like(flat)
  canonical[..., 0::3] = cos * dx + sin * dz
  canonical[..., 1::3] = y - y.min(axis=(-2, -1), keepdims=True)
  canonical[..., 2::3] = cos * dz - sin * dx
  velocities = canonical[..., 1:, :] - canonical[..., :-1, :]
  rows = num_frames - 1
  out = np.empty((*lead, 2, rows, FEATURE_DIM), np.float32)
  out[..., POSITIONS] = canonical[..., :-1, :]
  out[..., VELOCITIES] = velocities
  out[..., ROTATIONS] = rotations[..., :-1, :, :].reshape(*lead, 2, rows, 126)
  feet_speed_sq = np.square(velocities[..., _FOOT_COLUMNS]).reshape(
      *lead, 2, rows, 4, 3).sum(axis=-1)
  feet_low = canonical[..., :-1, _FOOT_HEIGHT_COLUMNS] < CONTACT_HEIGHTS
  out[..., CONTACTS] = (feet_speed_sq < CONTACT_VELOCITY_SQ) & feet_low
  return out


def interhuman_pair_features(raw1: np.ndarray, raw2: np.ndarray, mirror: bool = False) -> np.ndarray:
  """Two persons' InterHuman raw ``(T, 492)`` arrays -> ``(2, T-1, 262)`` float32 features.

  No crop and no person swap; ``mirror=True`` mirrors the motion first (DESIGN §1.2).
  """
  pos1, rot1 = raw_to_used(raw1, name='raw1')
  pos2, rot2 = raw_to_used(raw2, name='raw2')
  if pos1.shape[0] != pos2.shape[0]:
    raise ValueError(f'raw1 and raw2 must have the same number of frames, found '
                     f'{pos1.shape[0]} and {pos2.shape[0]}.')
  positions, rotations = np.stack([pos1, pos2]), np.stack([rot1, rot2])
  if mirror:
    positions, rotations = mirror_used(positions, rotations)
  return canonical_pair_features(positions, rotations)


def feature_positions(features: np.ndarray) -> np.ndarray:
  """[..., 262] de-normalised features -> [..., 22, 3] joint positions."""
  return np.asarray(features)[..., POSITIONS].reshape(*np.shape(features)[:-1], 22, 3)

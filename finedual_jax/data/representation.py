"""Motion representations a data set can store, and what each allows.

A built data set stores uncropped clips as ``motion`` [T, 2, stored_dim]; its representation is
recognised from that width:

* ``positions`` (192 stored, 262 features, DESIGN §1.1): InterHuman, and Inter-X converted with
  an SMPL-X model. Joint positions are exact, so every loss applies.
* ``rotations`` (135 stored, 138 features, ``motion.rotation_features``): Inter-X without an
  SMPL-X model. There are no joint positions: the losses in ``POSITION_TERMS`` are switched
  off, and the positions drawn for a sample are an approximation on the SMPL rest skeleton.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from finedual_jax.motion import features as features_lib
from finedual_jax.motion import rotation_features

# Loss terms that need joint positions (InterGen's geometric terms and the distance regression).
POSITION_TERMS = ('velocity', 'bone_length', 'foot_contact', 'distance_map', 'joint_affinity',
                  'relative_orientation', 'distance_regression')


def split_positions_motion(motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Stored [..., T, 2, 192] -> positions [..., 2, T, 22, 3] and 6D rotations [..., 2, T, 21, 6]."""
  motion = np.swapaxes(np.asarray(motion), -3, -2)  # [..., 2, T, 192]
  lead = motion.shape[:-1]
  # Positions in float64 (canonicalisation subtracts metres-scale offsets); the rotations are
  # only copied into the features, so they keep the stored precision.
  return (motion[..., :66].astype(np.float64).reshape(*lead, 22, 3),
          motion[..., 66:].reshape(*lead, 21, 6))


def _positions_pair_features(motion: np.ndarray) -> np.ndarray:
  return features_lib.canonical_pair_features(*split_positions_motion(motion))


def _rotations_pair_features(motion: np.ndarray) -> np.ndarray:
  motion = np.asarray(motion)
  if motion.ndim == 4:  # A batch of clips: canonicalised one by one.
    return np.stack([rotation_features.rotation_pair_features(clip) for clip in motion])
  return rotation_features.rotation_pair_features(motion)


@dataclasses.dataclass(frozen=True)
class Representation:
  """How stored clips become features, and features become joint positions."""
  name: str
  stored_dim: int
  feature_dim: int
  exact_positions: bool  # False: positions are for drawing only, position losses are off.
  # [T, 2, stored] -> [2, T-1, features]; also [B, T, 2, stored] -> [B, 2, T-1, features].
  pair_features: Callable[[np.ndarray], np.ndarray]
  positions: Callable[[np.ndarray], np.ndarray]      # [..., features] -> [..., 22, 3]

  def check_features(self, features: np.ndarray, where: str) -> None:
    if np.shape(features)[-1] != self.feature_dim:
      raise ValueError(f'{where}: expected {self.feature_dim}-d {self.name} features, found '
                       f'shape {np.shape(features)}.')


POSITIONS = Representation('positions', features_lib.USED_DIM, features_lib.FEATURE_DIM, True,
                           _positions_pair_features, features_lib.feature_positions)
ROTATIONS = Representation('rotations', rotation_features.STORED_DIM,
                           rotation_features.FEATURE_DIM, False,
                           _rotations_pair_features,
                           rotation_features.approximate_positions)
ALL = (POSITIONS, ROTATIONS)


def by_name(name: str) -> Representation:
  for representation in ALL:
    if representation.name == name:
      return representation
  raise ValueError(f'unknown motion representation {name!r}; expected one of '
                   f'{[r.name for r in ALL]}.')


def from_stored_dim(stored_dim: int, where: str = 'data set') -> Representation:
  for representation in ALL:
    if representation.stored_dim == stored_dim:
      return representation
  raise ValueError(f'{where}: stored motion width {stored_dim} matches no representation '
                   f'({", ".join(f"{r.name}: {r.stored_dim}" for r in ALL)}).')

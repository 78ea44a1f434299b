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


def _positions_pair_features(motion: np.ndarray) -> np.ndarray:
  motion = np.asarray(motion, np.float64).transpose(1, 0, 2)  # [2, T, 192]
  num_frames = motion.shape[1]
  return features_lib.canonical_pair_features(motion[..., :66].reshape(2, num_frames, 22, 3),
                                              motion[..., 66:].reshape(2, num_frames, 21, 6))


@dataclasses.dataclass(frozen=True)
class Representation:
  """How stored clips become features, and features become joint positions."""
  name: str
  stored_dim: int
  feature_dim: int
  exact_positions: bool  # False: positions are for drawing only, position losses are off.
  pair_features: Callable[[np.ndarray], np.ndarray]  # [T, 2, stored] -> [2, T-1, features]
  positions: Callable[[np.ndarray], np.ndarray]      # [..., features] -> [..., 22, 3]

  def check_features(self, features: np.ndarray, where: str) -> None:
    if np.shape(features)[-1] != self.feature_dim:
      raise ValueError(f'{where}: expected {self.feature_dim}-d {self.name} features, found '
                       f'shape {np.shape(features)}.')


POSITIONS = Representation('positions', features_lib.USED_DIM, features_lib.FEATURE_DIM, True,
                           _positions_pair_features, features_lib.feature_positions)
ROTATIONS = Representation('rotations', rotation_features.STORED_DIM,
                           rotation_features.FEATURE_DIM, False,
                           rotation_features.rotation_pair_features,
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

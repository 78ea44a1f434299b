"""The K = 5 body parts of FineDual's interaction graph and their inter-person distances.

(hyp., DESIGN §2.3) The paper's part split was not available; we use torso+head, left arm,
right arm, left leg and right leg of the SMPL 22-joint skeleton (``skeleton.JOINT_NAMES``).
The parts partition the 22 joints: every joint belongs to exactly one part.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from finedual_jax.motion import skeleton

PART_NAMES = ('torso', 'left_arm', 'right_arm', 'left_leg', 'right_leg')
PARTS = (
    (0, 3, 6, 9, 12, 15),  # pelvis, spine1-3, neck, head
    (13, 16, 18, 20),      # left collar, shoulder, elbow, wrist
    (14, 17, 19, 21),      # right collar, shoulder, elbow, wrist
    (1, 4, 7, 10),         # left hip, knee, ankle, toe
    (2, 5, 8, 11),         # right hip, knee, ankle, toe
)
NUM_PARTS = len(PARTS)

# Intra-person part adjacency (undirected pairs of part indices): the limbs hang off the torso.
KINEMATIC_EDGES = ((0, 1), (0, 2), (0, 3), (0, 4))

JOINT_TO_PART = tuple(
    next(k for k, part in enumerate(PARTS) if j in part) for j in range(skeleton.NUM_JOINTS))
"""[22] index of the part each joint belongs to."""

Array = Union[np.ndarray, jax.Array]


def part_distances(pos_a: Array, pos_b: Array) -> Array:
  """Part-to-part proximity of two persons: the interaction-distance ground truth.

  Args:
    pos_a: [..., 22, 3] joint positions of person a (metres).
    pos_b: [..., 22, 3] joint positions of person b, same leading shape.

  Returns:
    [..., K, K]: entry (i, j) is the minimum Euclidean distance between a joint of part i of
    person a and a joint of part j of person b. NumPy in -> NumPy out (dtype kept), else jnp.
  """
  xp = np if isinstance(pos_a, np.ndarray) and isinstance(pos_b, np.ndarray) else jnp
  diff = pos_a[..., :, None, :] - pos_b[..., None, :, :]
  squared = xp.sum(diff * diff, axis=-1)  # [..., 22, 22]
  rows = xp.stack([xp.min(squared[..., list(part), :], axis=-2) for part in PARTS], axis=-2)
  blocks = xp.stack([xp.min(rows[..., list(part)], axis=-1) for part in PARTS], axis=-1)
  # sqrt after the min (monotone) takes 25 square roots instead of 484.
  return xp.sqrt(blocks)

"""The SMPL 22-joint body skeleton, InterHuman's raw frame layout, and forward kinematics.

Frames: the body's rest frame is y-up with the body facing +z and its left side towards +x
(SMPL's canonical frame). InterHuman stores world data z-up; ``Z_UP_TO_Y_UP`` maps it to y-up.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES = (
    'pelvis', 'left_hip', 'right_hip', 'spine1', 'left_knee', 'right_knee', 'spine2',
    'left_ankle', 'right_ankle', 'spine3', 'left_foot', 'right_foot', 'neck', 'left_collar',
    'right_collar', 'head', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist',
)
NUM_JOINTS = 22
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)

# Rest-pose (T-pose) joint positions of an average adult, in metres, rest frame, rounded from
# the SMPL neutral body's joint regressor output. Bone lengths follow from their differences.
REST_JOINTS = np.array([
    [0.000, 0.930, 0.000],    # pelvis
    [0.070, 0.840, -0.005],   # left_hip
    [-0.070, 0.840, -0.005],  # right_hip
    [0.000, 1.045, -0.025],   # spine1
    [0.105, 0.475, -0.005],   # left_knee
    [-0.105, 0.475, -0.005],  # right_knee
    [0.000, 1.180, -0.025],   # spine2
    [0.090, 0.075, -0.045],   # left_ankle
    [-0.090, 0.075, -0.045],  # right_ankle
    [0.000, 1.235, 0.000],    # spine3
    [0.115, 0.020, 0.080],    # left_foot (toes)
    [-0.115, 0.020, 0.080],   # right_foot
    [0.000, 1.450, -0.035],   # neck
    [0.080, 1.360, -0.020],   # left_collar
    [-0.080, 1.360, -0.020],  # right_collar
    [0.000, 1.545, 0.020],    # head
    [0.175, 1.380, -0.025],   # left_shoulder
    [-0.175, 1.380, -0.025],  # right_shoulder
    [0.430, 1.375, -0.045],   # left_elbow
    [-0.430, 1.375, -0.045],  # right_elbow
    [0.685, 1.380, -0.050],   # left_wrist
    [-0.685, 1.380, -0.050],  # right_wrist
], dtype=np.float64)

REST_OFFSETS = np.concatenate(
    [REST_JOINTS[:1], REST_JOINTS[1:] - REST_JOINTS[list(PARENTS[1:])]], axis=0)
"""[22, 3] offset of each joint from its parent in the parent's rest frame (root: absolute)."""

LEFT_CHAIN = (1, 4, 7, 10, 13, 16, 18, 20)
RIGHT_CHAIN = (2, 5, 8, 11, 14, 17, 19, 21)
MIRROR_PERMUTATION = np.arange(NUM_JOINTS)
MIRROR_PERMUTATION[list(LEFT_CHAIN)] = RIGHT_CHAIN
MIRROR_PERMUTATION[list(RIGHT_CHAIN)] = LEFT_CHAIN

LEFT_HIP, RIGHT_HIP = 1, 2
FOOT_JOINTS = (7, 10, 8, 11)  # left ankle, left toe, right ankle, right toe: contact channels.

# InterHuman's raw per-person frame (DESIGN §1.2): 62 joint positions (22 body + 40 hand), then
# 51 joint 6D rotations (21 body + 30 hand). Only the body columns are used.
RAW_DIM = 492
RAW_NUM_POSITIONS = 62
RAW_NUM_ROTATIONS = 51
RAW_POS = slice(0, 3 * NUM_JOINTS)                                  # [0:66]
RAW_ROT_START = 3 * RAW_NUM_POSITIONS                               # 186
RAW_ROT = slice(RAW_ROT_START, RAW_ROT_START + 6 * (NUM_JOINTS - 1))  # [186:312]

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def bone_lengths(positions: np.ndarray) -> np.ndarray:
  """[..., 22, 3] joint positions -> [..., 21] lengths of the bones to each non-root joint."""
  return np.linalg.norm(positions[..., 1:, :] - positions[..., list(PARENTS[1:]), :], axis=-1)


def forward_kinematics(root_position: np.ndarray, root_rotation: np.ndarray,
                       local_rotations: np.ndarray,
                       offsets: np.ndarray = REST_OFFSETS) -> tuple[np.ndarray, np.ndarray]:
  """Places the skeleton.

  Args:
    root_position: [..., 3] pelvis position in the world.
    root_rotation: [..., 3, 3] pelvis orientation (rest frame -> world).
    local_rotations: [..., 21, 3, 3] rotation of each non-root joint relative to its parent.
    offsets: [22, 3] rest offsets (``REST_OFFSETS``; row 0 is ignored).

  Returns:
    positions [..., 22, 3] and global rotations [..., 22, 3, 3].
  """
  positions = [root_position]
  rotations = [root_rotation]
  for j in range(1, NUM_JOINTS):
    p = PARENTS[j]
    positions.append(positions[p] + np.einsum('...ij,j->...i', rotations[p], offsets[j]))
    rotations.append(rotations[p] @ local_rotations[..., j - 1, :, :])
  return np.stack(positions, axis=-2), np.stack(rotations, axis=-3)

"""Rotation conversions used by the data side (NumPy, any leading shape).

The 6D rotation layout of this project is ``R[..., :, :2].reshape(..., 6)``, i.e. the first two
columns of the rotation matrix interleaved by row: ``[R00, R01, R10, R11, R20, R21]``. With this
layout, mirroring ``x -> -x`` (conjugation by ``diag(-1, 1, 1)``) negates components 1, 2 and 4,
which is the rule DESIGN §1.2 states for InterHuman's 6D columns.
"""

from __future__ import annotations

import numpy as np


def matrix_to_6d(mat: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotation matrices -> [..., 6] (first two columns, row-interleaved)."""
  return mat[..., :, :2].reshape(*mat.shape[:-2], 6)


def sixd_to_matrix(d6: np.ndarray) -> np.ndarray:
  """[..., 6] -> [..., 3, 3] by Gram-Schmidt on the two stored columns (Zhou et al. 2019)."""
  a1 = d6[..., 0::2]
  a2 = d6[..., 1::2]
  b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
  a2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
  b2 = a2 / np.linalg.norm(a2, axis=-1, keepdims=True)
  b3 = np.cross(b1, b2)
  return np.stack([b1, b2, b3], axis=-1)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
  """[..., 3] axis-angle (radians along the axis) -> [..., 3, 3] via Rodrigues' formula."""
  aa = np.asarray(aa, dtype=np.float64)
  angle = np.linalg.norm(aa, axis=-1, keepdims=True)
  axis = aa / np.maximum(angle, 1e-12)
  x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
  zeros = np.zeros_like(x)
  k = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], axis=-1).reshape(*aa.shape[:-1], 3, 3)
  s = np.sin(angle)[..., None]
  c = np.cos(angle)[..., None]
  eye = np.broadcast_to(np.eye(3), k.shape)
  return eye + s * k + (1.0 - c) * (k @ k)


def rotation_about_y(angle: np.ndarray) -> np.ndarray:
  """[...] heading angles (radians) -> [..., 3, 3] rotations about the +y (up) axis."""
  angle = np.asarray(angle, dtype=np.float64)
  c, s = np.cos(angle), np.sin(angle)
  one, zero = np.ones_like(c), np.zeros_like(c)
  return np.stack([c, zero, s, zero, one, zero, -s, zero, c], axis=-1).reshape(*angle.shape, 3, 3)


def euler_xyz_to_matrix(angles: np.ndarray) -> np.ndarray:
  """[..., 3] intrinsic x-then-y-then-z Euler angles -> [..., 3, 3] (R = Rx @ Ry @ Rz)."""
  angles = np.asarray(angles, dtype=np.float64)
  rx = axis_angle_to_matrix(angles[..., 0:1] * np.array([1.0, 0.0, 0.0]))
  ry = axis_angle_to_matrix(angles[..., 1:2] * np.array([0.0, 1.0, 0.0]))
  rz = axis_angle_to_matrix(angles[..., 2:3] * np.array([0.0, 0.0, 1.0]))
  return rx @ ry @ rz

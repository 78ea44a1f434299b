"""BVH export of one person's motion on the SMPL 22-joint hierarchy, and a small BVH reader.

Files written here follow these conventions:
  * lengths (OFFSETs, root positions) are in **centimetres** (``UNITS_PER_METRE = 100``), the
    unit most BVH tools (MotionBuilder, Maya) assume; in Blender, import with scale 0.01 to get
    metres;
  * the world frame is the features' (DESIGN §1.1): y up, the rest pose facing +z with its left
    towards +x. Both persons of a sample share it, so their two files import into one scene;
  * every joint's rotation channels are ``Zrotation Xrotation Yrotation`` (``EULER_ORDER =
    'ZXY'``), in degrees: the joint's rotation relative to its parent is
    ``Rz(z) @ Rx(x) @ Ry(y)`` with the angles in channel order, which is how BVH readers such
    as Blender's compose channels. With y up, the heading of a turning body is the innermost
    angle, so turning never approaches gimbal lock; that needs a 90 degree rotation about x
    (a pitched-over body, a knee bent past a right angle). There the conversion stays exact and
    ``continuous_euler`` keeps the curves free of flips;
  * the root has ``Xposition Yposition Zposition`` channels (the absolute pelvis position) and
    a zero OFFSET, so readers that add the offset to the position and readers that replace it
    agree; the other joints have rotation channels only;
  * OFFSETs are the rest directions of ``skeleton.REST_OFFSETS`` scaled to this motion's own
    bone lengths (the mean over frames of ``|child - parent|``); leaves (head, wrists, toes)
    get End Sites of a fixed length (``END_SITES_M``).

The 262-d features carry no pelvis orientation; it is the least-squares rotation that takes the
pelvis' rest offsets to its children (hips and spine1) as observed (Kabsch). Local rotations come
from the features, or by inverse kinematics from the positions alone (``local_rotations=None``):
each joint swings its rest bone onto the observed bone with no twist relative to its parent, and
a joint with several children (spine3) fits all of them in the least-squares sense. The IK file
reproduces the positions exactly up to each bone's length varying around its mean.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import tempfile
from typing import NamedTuple, Sequence

import numpy as np

from finedual_jax.motion import features as features_lib
from finedual_jax.motion import rotations as rotations_lib
from finedual_jax.motion import skeleton

SMPL_JOINT_NAMES = (
    'Pelvis', 'L_Hip', 'R_Hip', 'Spine1', 'L_Knee', 'R_Knee', 'Spine2', 'L_Ankle', 'R_Ankle',
    'Spine3', 'L_Foot', 'R_Foot', 'Neck', 'L_Collar', 'R_Collar', 'Head', 'L_Shoulder',
    'R_Shoulder', 'L_Elbow', 'R_Elbow', 'L_Wrist', 'R_Wrist',
)
UNITS_PER_METRE = 100.0
EULER_ORDER = 'ZXY'
# End Sites of the leaves in their joint's rest frame, metres: top of the head, the hands, and
# the tips of the toes (which then touch the floor in the rest pose).
END_SITES_M = {
    15: (0.0, 0.10, 0.0), 20: (0.08, 0.0, 0.0), 21: (-0.08, 0.0, 0.0),
    10: (0.0, -0.02, 0.04), 11: (0.0, -0.02, 0.04),
}

_CHILDREN = tuple(tuple(c for c, p in enumerate(skeleton.PARENTS) if p == j)
                  for j in range(skeleton.NUM_JOINTS))
_ROOT_CHILDREN = list(_CHILDREN[0])
_CHANNEL_NAMES = frozenset(f'{a}{kind}' for a in 'XYZ' for kind in ('position', 'rotation'))
_ORTHONORMAL_TOL = 1e-3


# ----------------------------------------------------------------------------- Euler angles

def _axes(order: str) -> tuple[int, int, int]:
  """'ZXY' -> (2, 0, 1); raises ValueError for anything but three distinct axes."""
  if not isinstance(order, str) or sorted(order.upper()) != ['X', 'Y', 'Z']:
    raise ValueError(f'euler_order must be a permutation of "XYZ" such as "ZXY" or "ZYX"; found '
                     f'{order!r}.')
  return tuple('XYZ'.index(a) for a in order.upper())


def _axis_rotation(angle: np.ndarray, axis: int) -> np.ndarray:
  """[...] radians -> [..., 3, 3] right-handed rotations about x (0), y (1) or z (2)."""
  angle = np.asarray(angle, dtype=np.float64)
  c, s = np.cos(angle), np.sin(angle)
  a, b = (axis + 1) % 3, (axis + 2) % 3
  mat = np.zeros(angle.shape + (3, 3))
  mat[..., axis, axis] = 1.0
  mat[..., a, a] = c
  mat[..., b, b] = c
  mat[..., b, a] = s
  mat[..., a, b] = -s
  return mat


def euler_to_matrix(angles: np.ndarray, order: str = EULER_ORDER) -> np.ndarray:
  """[..., 3] radians -> [..., 3, 3] ``R_order[0](a0) @ R_order[1](a1) @ R_order[2](a2)``."""
  i, j, k = _axes(order)
  angles = np.asarray(angles, dtype=np.float64)
  return (_axis_rotation(angles[..., 0], i) @ _axis_rotation(angles[..., 1], j)
          @ _axis_rotation(angles[..., 2], k))


def matrix_to_euler(mat: np.ndarray, order: str = EULER_ORDER) -> np.ndarray:
  """[..., 3, 3] rotations -> [..., 3] radians with ``euler_to_matrix(result, order) == mat``.

  The middle angle lies in [-pi/2, pi/2]. Near gimbal lock (middle angle +-pi/2) the first angle
  is ill-conditioned, so the last one is read from what remains after undoing the first two,
  which absorbs the first angle's error: the product stays exact to rounding even at the lock.
  """
  i, j, k = _axes(order)
  mat = np.asarray(mat, dtype=np.float64)
  sign = 1.0 if (j - i) % 3 == 1 else -1.0  # e_j x e_k = sign * e_i
  # R e_k = cos(a1) (cos(a0) e_k - sign sin(a0) e_j) + sign sin(a1) e_i.
  col = mat[..., :, k]
  a1 = np.arctan2(sign * col[..., i], np.hypot(col[..., j], col[..., k]))
  a0 = np.arctan2(-sign * col[..., j], col[..., k])
  rest = np.swapaxes(_axis_rotation(a0, i) @ _axis_rotation(a1, j), -1, -2) @ mat
  a, b = (k + 1) % 3, (k + 2) % 3
  a2 = np.arctan2(rest[..., b, a], rest[..., a, a])
  return np.stack([a0, a1, a2], axis=-1)


def _wrap(angle: np.ndarray) -> np.ndarray:
  return (angle + np.pi) % (2.0 * np.pi) - np.pi


def continuous_euler(angles: np.ndarray) -> np.ndarray:
  """[T, ..., 3] radians -> the same rotations with angles that change as little as possible.

  Every Tait-Bryan rotation has two angle triples, ``(a0, a1, a2)`` and
  ``(a0 + pi, pi - a1, a2 + pi)``, each up to whole turns. Frame by frame this picks the triple
  and the turns closest to the previous frame, so curves do not jump by 360 degrees or flip at
  +-90 degrees, which matters to tools that interpolate or filter the channels.
  """
  angles = np.asarray(angles, dtype=np.float64)
  out = angles.copy()
  flip = np.array([np.pi, np.pi, np.pi])
  for t in range(1, angles.shape[0]):
    prev = out[t - 1]
    other = angles[t] * np.array([1.0, -1.0, 1.0]) + flip
    candidates = np.stack([angles[t], other])
    candidates = prev + _wrap(candidates - prev)
    dist = np.sum((candidates - prev) ** 2, axis=-1)
    out[t] = np.where((dist[1] < dist[0])[..., None], candidates[1], candidates[0])
  return out


# ----------------------------------------------------------------------- rotations from positions

def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _fit_rotation(rest: np.ndarray, observed: np.ndarray) -> np.ndarray:
  """Least-squares rotation R minimising sum_k |R rest_k - observed_k|^2 (Kabsch).

  rest: [K, 3] or [..., K, 3]; observed: [..., K, 3]. Returns [..., 3, 3] with det +1.
  """
  rest = np.broadcast_to(rest, observed.shape)
  h = np.einsum('...ki,...kj->...ij', observed, rest)
  u, _, vt = np.linalg.svd(h)
  d = np.sign(np.linalg.det(u @ vt))
  u[..., :, 2] *= np.where(d == 0.0, 1.0, d)[..., None]
  return u @ vt


def _swing(rest: np.ndarray, observed: np.ndarray) -> np.ndarray:
  """[3] rest bone, [..., 3] observed bone -> [..., 3, 3] shortest rotation taking one onto the
  other's direction (no twist). A zero-length observed bone gives the identity."""
  a = np.broadcast_to(_unit(rest), observed.shape)
  length = np.linalg.norm(observed, axis=-1, keepdims=True)
  b = np.where(length > 1e-9, observed / np.maximum(length, 1e-12), a)
  v = np.cross(a, b)
  c = np.sum(a * b, axis=-1)
  zero = np.zeros_like(c)
  k = np.stack([zero, -v[..., 2], v[..., 1], v[..., 2], zero, -v[..., 0],
                -v[..., 1], v[..., 0], zero], axis=-1).reshape(c.shape + (3, 3))
  opposite = c < -1.0 + 1e-9
  mat = np.eye(3) + k + (k @ k) / np.where(opposite, 1.0, 1.0 + c)[..., None, None]
  if np.any(opposite):
    # Half a turn about any axis perpendicular to the bone.
    helper = np.eye(3)[np.argmin(np.abs(a), axis=-1)]
    axis = _unit(np.cross(a, helper))
    half_turn = 2.0 * axis[..., :, None] * axis[..., None, :] - np.eye(3)
    mat = np.where(opposite[..., None, None], half_turn, mat)
  return mat


def solve_root_rotation(positions: np.ndarray,
                        offsets: np.ndarray = skeleton.REST_OFFSETS) -> np.ndarray:
  """[T, 22, 3] positions -> [T, 3, 3] pelvis orientation fitting the hips and spine1 (Kabsch)."""
  observed = positions[:, _ROOT_CHILDREN] - positions[:, :1]
  return _fit_rotation(offsets[_ROOT_CHILDREN], observed)


def solve_local_rotations(positions: np.ndarray, root_rotation: np.ndarray,
                          offsets: np.ndarray = skeleton.REST_OFFSETS) -> np.ndarray:
  """Swing-only IK: [T, 22, 3] positions, [T, 3, 3] root -> [T, 21, 3, 3] local rotations.

  Each joint's rotation turns its child's rest offset onto the observed bone, expressed in the
  parent's frame, by the shortest arc (twist 0); a joint with several children fits them all
  (Kabsch); a leaf keeps the identity.
  """
  num_frames = positions.shape[0]
  local = np.tile(np.eye(3), (num_frames, skeleton.NUM_JOINTS - 1, 1, 1))
  world = [root_rotation] + [None] * (skeleton.NUM_JOINTS - 1)
  for j in range(1, skeleton.NUM_JOINTS):
    parent = world[skeleton.PARENTS[j]]
    kids = list(_CHILDREN[j])
    if kids:
      bones = positions[:, kids] - positions[:, j:j + 1]            # [T, K, 3] world
      bones = np.einsum('tji,tkj->tki', parent, bones)             # in the parent's frame
      if len(kids) == 1:
        local[:, j - 1] = _swing(offsets[kids[0]], bones[:, 0])
      else:
        local[:, j - 1] = _fit_rotation(offsets[kids], bones)
    world[j] = parent @ local[:, j - 1]
  return local


def scaled_offsets(positions: np.ndarray) -> np.ndarray:
  """[T, 22, 3] positions -> [22, 3] rest offsets (metres) with this motion's mean bone lengths.

  Row 0 (the root) is zero: the root's position channels carry its absolute position.
  """
  lengths = skeleton.bone_lengths(positions).mean(axis=0)
  rest = skeleton.REST_OFFSETS[1:]
  offsets = np.zeros((skeleton.NUM_JOINTS, 3))
  offsets[1:] = rest / np.linalg.norm(rest, axis=-1, keepdims=True) * lengths[:, None]
  return offsets


# ----------------------------------------------------------------------------- writing

def _as_array(value, name: str, shape: tuple, expected: str) -> np.ndarray:
  """value as float64 with the given shape (None entries: any size >= 1), finite, or ValueError."""
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{name} must be a numeric array of shape {expected}; could not convert a '
                     f'{type(value).__name__}: {e}') from e
  if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
    raise ValueError(f'{name} must have shape {expected}; found shape {arr.shape}.')
  if any(s is None and a < 1 for s, a in zip(shape, arr.shape)):
    raise ValueError(f'{name} must have shape {expected} with at least one frame; found shape '
                     f'{arr.shape}.')
  bad = ~np.isfinite(arr)
  if bad.any():
    raise ValueError(f'{name} of shape {expected} must be finite; found {int(bad.sum())} NaN/inf '
                     f'values, the first at index {tuple(int(i) for i in np.argwhere(bad)[0])}.')
  return arr


def _check_rotations(mat: np.ndarray, name: str, expected: str) -> None:
  gram = np.swapaxes(mat, -1, -2) @ mat
  error = np.abs(gram - np.eye(3)).max(axis=(-1, -2))
  det = np.linalg.det(mat)
  bad = (error > _ORTHONORMAL_TOL) | (det < 0.0)
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f'{name} of shape {expected} must hold rotation matrices (orthonormal, det '
                     f'+1); {int(bad.sum())} are not, the first at index {first} (|R^T R - I| = '
                     f'{error[first]:.2g}, det = {det[first]:.3g}). Convert 6D rotations with '
                     'rotations.sixd_to_matrix, which orthonormalises them.')


def _atomic_write_text(path: pathlib.Path, text: str) -> pathlib.Path:
  """Writes text to a temp file next to path and renames it onto path (no partial files)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def _hierarchy(offsets_m: np.ndarray, names: Sequence[str],
               order: str) -> tuple[list[str], list[int]]:
  """HIERARCHY lines and the joints in the order their channels appear (depth first)."""
  rot_channels = ' '.join(f'{a}rotation' for a in order)
  lines, visited = ['HIERARCHY'], []

  def fmt(v) -> str:
    return ' '.join(f'{x * UNITS_PER_METRE:.6f}' for x in v)

  def visit(j: int, depth: int) -> None:
    pad = '  ' * depth
    visited.append(j)
    lines.append(f'{pad}{"ROOT" if j == 0 else "JOINT"} {names[j]}')
    lines.append(f'{pad}{{')
    lines.append(f'{pad}  OFFSET {fmt(offsets_m[j])}')
    if j == 0:
      lines.append(f'{pad}  CHANNELS 6 Xposition Yposition Zposition {rot_channels}')
    else:
      lines.append(f'{pad}  CHANNELS 3 {rot_channels}')
    for child in _CHILDREN[j]:
      visit(child, depth + 1)
    if not _CHILDREN[j]:
      lines.extend([f'{pad}  End Site', f'{pad}  {{', f'{pad}    OFFSET {fmt(END_SITES_M[j])}',
                    f'{pad}  }}'])
    lines.append(f'{pad}}}')

  visit(0, 0)
  return lines, visited


def _check_names(joint_names) -> tuple[str, ...]:
  names = tuple(joint_names)
  if (len(names) != skeleton.NUM_JOINTS or len(set(names)) != len(names)
      or not all(isinstance(n, str) and n and not re.search(r'\s|[{}]', n) for n in names)):
    raise ValueError(f'joint_names must be {skeleton.NUM_JOINTS} distinct names without spaces or '
                     f'braces, in skeleton.JOINT_NAMES order (e.g. bvh.SMPL_JOINT_NAMES); found '
                     f'{names!r}.')
  return names


def write_bvh(path, positions, local_rotations=None, *, root_rotation=None, fps: float = 30,
              joint_names: Sequence[str] = SMPL_JOINT_NAMES,
              euler_order: str = EULER_ORDER) -> pathlib.Path:
  """Writes one person's motion as a BVH file (centimetres, y up; see the module docstring).

  Args:
    path: the ``.bvh`` file to write (parent folders are created; written atomically).
    positions: [T, 22, 3] joint positions, y-up metres; the root channels take the pelvis'
      positions and the OFFSETs this motion's mean bone lengths.
    local_rotations: [T, 21, 3, 3] rotations of joints 1..21 relative to their parents (e.g.
      ``rotations.sixd_to_matrix`` of the features' 6D), or None to solve them from positions
      (swing-only IK).
    root_rotation: [T, 3, 3] pelvis orientation, or None to fit it to the hips and spine1.
    fps: frames per second; Frame Time is 1 / fps.
    joint_names: 22 names in ``skeleton.JOINT_NAMES`` order.
    euler_order: rotation channel order, a permutation of 'XYZ'.

  Returns:
    path as a ``pathlib.Path``.
  """
  positions = _as_array(positions, 'positions', (None, 22, 3), '[T, 22, 3] (frame, joint, xyz)')
  num_frames = positions.shape[0]
  if local_rotations is not None:
    expected = f'[T, 21, 3, 3] with T = {num_frames} as in positions'
    local_rotations = _as_array(local_rotations, 'local_rotations', (num_frames, 21, 3, 3),
                                expected)
    _check_rotations(local_rotations, 'local_rotations', expected)
  if root_rotation is not None:
    expected = f'[T, 3, 3] with T = {num_frames} as in positions'
    root_rotation = _as_array(root_rotation, 'root_rotation', (num_frames, 3, 3), expected)
    _check_rotations(root_rotation, 'root_rotation', expected)
  if not (isinstance(fps, (int, float, np.number)) and np.isfinite(fps) and fps > 0):
    raise ValueError(f'fps must be a positive number; found {fps!r}.')
  names = _check_names(joint_names)
  order = ''.join('XYZ'[a] for a in _axes(euler_order))

  offsets = scaled_offsets(positions)
  if root_rotation is None:
    root_rotation = solve_root_rotation(positions, offsets)
  if local_rotations is None:
    local_rotations = solve_local_rotations(positions, root_rotation, offsets)
  lines, visited = _hierarchy(offsets, names, order)

  # Joint j's channels: the root's orientation, else local rotation j - 1.
  all_rotations = np.concatenate([root_rotation[:, None], local_rotations], axis=1)
  angles = continuous_euler(matrix_to_euler(all_rotations[:, visited], order))
  values = np.concatenate([positions[:, 0] * UNITS_PER_METRE,
                           np.rad2deg(angles).reshape(num_frames, -1)], axis=1)
  out = io.StringIO()
  out.write('\n'.join(lines))
  out.write(f'\nMOTION\nFrames: {num_frames}\nFrame Time: {1.0 / fps:.8f}\n')
  np.savetxt(out, values, fmt='%.6f')
  return _atomic_write_text(pathlib.Path(path), out.getvalue())


def _sixd_to_rotations(sixd: np.ndarray) -> np.ndarray:
  """[..., 21, 6] feature rotations -> matrices, or a ValueError naming a degenerate 6D vector."""
  with np.errstate(invalid='ignore', divide='ignore'):
    mat = rotations_lib.sixd_to_matrix(sixd)
  bad = ~np.isfinite(mat).all(axis=(-1, -2))
  if bad.any():
    frame, joint = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f'features[:, 132:258] hold {int(bad.sum())} degenerate 6D rotations (two '
                     f'parallel or zero columns), the first at frame {frame}, joint '
                     f"{skeleton.JOINT_NAMES[joint + 1]}; use rotations='ik' to solve the "
                     'rotations from the positions instead.')
  return mat


def _person_inputs(feats: np.ndarray, rotations: str) -> tuple[np.ndarray, np.ndarray | None]:
  """[T, 262] features -> positions [T, 22, 3] and local rotations [T, 21, 3, 3] (None: IK)."""
  positions = features_lib.feature_positions(feats)
  if rotations == 'features':
    sixd = feats[:, features_lib.ROTATIONS].reshape(-1, skeleton.NUM_JOINTS - 1, 6)
    return positions, _sixd_to_rotations(sixd)
  if rotations == 'ik':
    return positions, None
  raise ValueError(f"rotations must be 'features' (the 6D rotations of the features) or 'ik' "
                   f'(solved from the positions); found {rotations!r}.')


def features_to_bvh(path, features, *, fps: float = 30, rotations: str = 'features',
                    joint_names: Sequence[str] = SMPL_JOINT_NAMES,
                    euler_order: str = EULER_ORDER) -> pathlib.Path:
  """Writes one person of a sample, [T, 262] de-normalised features, as a BVH file.

  ``rotations='features'`` uses the features' 6D local rotations (the file then shows what the
  rotation channels say, which for a generated sample may disagree a little with its positions);
  ``rotations='ik'`` solves them from the positions, so the file shows the positions.
  """
  feats = _as_array(features, 'features', (None, features_lib.FEATURE_DIM),
                    '[T, 262] (frame, de-normalised feature)')
  positions, local = _person_inputs(feats, rotations)
  return write_bvh(path, positions, local, fps=fps, joint_names=joint_names,
                   euler_order=euler_order)


def write_pair_bvh(out_stem, features, *, fps: float = 30, rotations: str = 'features',
                   joint_names: Sequence[str] = SMPL_JOINT_NAMES,
                   euler_order: str = EULER_ORDER) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes both persons of a sample, [2, T, 262], as ``<out_stem>_person1.bvh`` and
  ``<out_stem>_person2.bvh`` in the same world frame (import both into one scene).

  Both persons' inputs are checked before either file is written.
  """
  feats = _as_array(features, 'features', (2, None, features_lib.FEATURE_DIM),
                    '[2, T, 262] (person, frame, de-normalised feature)')
  inputs = [_person_inputs(feats[person], rotations) for person in range(2)]
  return tuple(write_bvh(f'{out_stem}_person{person + 1}.bvh', positions, local, fps=fps,
                         joint_names=joint_names, euler_order=euler_order)
               for person, (positions, local) in enumerate(inputs))


# ----------------------------------------------------------------------------- reading

class BvhData(NamedTuple):
  """A parsed BVH file; joints (End Sites excluded) in file order, parents before children."""
  names: tuple[str, ...]
  parents: tuple[int, ...]              # -1 for the root
  offsets: np.ndarray                   # [J, 3] in the file's units
  channels: tuple[tuple[str, ...], ...]  # per joint, e.g. ('Zrotation', 'Xrotation', 'Yrotation')
  frames: np.ndarray                    # [T, C] channel values in file order (degrees, file units)
  frame_time: float                     # seconds


def read_bvh(path) -> BvhData:
  """Parses a BVH file with one ROOT (HIERARCHY and MOTION); raises ValueError where malformed."""
  path = pathlib.Path(path)
  text = path.read_text()
  match = re.search(r'^\s*MOTION\s*$', text, flags=re.MULTILINE)
  if match is None:
    raise ValueError(f'{path}: no MOTION line; a BVH file has a HIERARCHY section, then MOTION.')
  head = text[:match.start()]
  tokens = [(tok, n) for n, line in enumerate(head.splitlines(), 1) for tok in line.split()]
  pos = 0

  def take(what: str) -> tuple[str, int]:
    nonlocal pos
    if pos >= len(tokens):
      raise ValueError(f'{path}: the hierarchy ends early; expected {what}.')
    pos += 1
    return tokens[pos - 1]

  def expect(word: str) -> None:
    tok, line = take(repr(word))
    if tok != word:
      raise ValueError(f'{path}, line {line}: expected {word!r}, found {tok!r}.')

  def number(what: str) -> float:
    tok, line = take(what)
    try:
      return float(tok)
    except ValueError:
      raise ValueError(f'{path}, line {line}: expected {what}, found {tok!r}.') from None

  expect('HIERARCHY')
  names, parents, offsets, channels = [], [], [], []
  stack = []  # open blocks: a joint index, or -1 for an End Site
  while pos < len(tokens):
    tok, line = take('a keyword')
    if tok in ('ROOT', 'JOINT'):
      if (tok == 'ROOT') != (not stack):
        raise ValueError(f'{path}, line {line}: {tok} {"outside" if tok == "JOINT" else "inside"} '
                         'a joint; a file holds one ROOT and JOINTs nested in it.')
      if names and not stack:
        raise ValueError(f'{path}, line {line}: a second ROOT; only one skeleton is supported.')
      if stack and stack[-1] < 0:
        raise ValueError(f'{path}, line {line}: a JOINT inside an End Site.')
      name, _ = take('a joint name')
      expect('{')
      parents.append(stack[-1] if stack else -1)
      names.append(name)
      offsets.append(None)
      channels.append(())
      stack.append(len(names) - 1)
    elif tok == 'End':
      expect('Site')
      expect('{')
      if not stack:
        raise ValueError(f'{path}, line {line}: an End Site outside a joint.')
      stack.append(-1)
    elif tok == 'OFFSET':
      if not stack:
        raise ValueError(f'{path}, line {line}: an OFFSET outside a joint.')
      offset = [number('an OFFSET coordinate') for _ in range(3)]
      if stack[-1] >= 0:
        offsets[stack[-1]] = offset
    elif tok == 'CHANNELS':
      if not stack or stack[-1] < 0:
        raise ValueError(f'{path}, line {line}: CHANNELS outside a joint.')
      count = number('a channel count')
      if count != int(count) or not 0 <= count <= 6:
        raise ValueError(f'{path}, line {line}: a channel count must be 0..6, found {count}.')
      chans = tuple(take('a channel name')[0] for _ in range(int(count)))
      unknown = [c for c in chans if c not in _CHANNEL_NAMES]
      if unknown:
        raise ValueError(f'{path}, line {line}: unknown channels {unknown}; expected names like '
                         'Xposition or Zrotation.')
      channels[stack[-1]] = chans
    elif tok == '}':
      if not stack:
        raise ValueError(f'{path}, line {line}: an unmatched closing brace.')
      stack.pop()
    else:
      raise ValueError(f'{path}, line {line}: unexpected {tok!r} in the hierarchy.')
  if stack or not names:
    raise ValueError(f'{path}: the hierarchy has {"unclosed braces" if stack else "no ROOT"}.')
  missing = [n for n, o in zip(names, offsets) if o is None]
  if missing:
    raise ValueError(f'{path}: joints without an OFFSET: {missing}.')

  motion = text[match.end():].split()
  first_line = head.count('\n') + 2
  if len(motion) < 5 or motion[0] != 'Frames:' or motion[2:4] != ['Frame', 'Time:']:
    raise ValueError(f'{path}, line {first_line}: MOTION must be followed by "Frames: N" and '
                     f'"Frame Time: seconds"; found {" ".join(motion[:5])!r}.')
  try:
    num_frames, frame_time = int(motion[1]), float(motion[4])
    values = np.array(motion[5:], dtype=np.float64)
  except ValueError as e:
    raise ValueError(f'{path}: a non-numeric value in the MOTION section: {e}') from None
  num_channels = sum(len(c) for c in channels)
  if values.size != num_frames * num_channels:
    raise ValueError(f'{path}: Frames: {num_frames} with {num_channels} channels needs '
                     f'{num_frames * num_channels} values; found {values.size}.')
  return BvhData(tuple(names), tuple(parents), np.array(offsets, dtype=np.float64),
                 tuple(channels), values.reshape(num_frames, num_channels), frame_time)


def bvh_joint_positions(parsed: BvhData, *, units_per_metre: float = UNITS_PER_METRE,
                        joint_names: Sequence[str] | None = None) -> np.ndarray:
  """Forward kinematics of a parsed file: [T, J, 3] joint positions in metres (End Sites left out).

  Joints are in file order, or in the order of ``joint_names`` when given (e.g.
  ``SMPL_JOINT_NAMES`` for ``skeleton.JOINT_NAMES`` order). Rotation channels compose left to
  right in their listed order; position channels replace the OFFSET on their axis.
  """
  num_frames = parsed.frames.shape[0]
  world_pos, world_rot = [], []
  column = 0
  for j, chans in enumerate(parsed.channels):
    values = parsed.frames[:, column:column + len(chans)]
    column += len(chans)
    translation = np.tile(parsed.offsets[j], (num_frames, 1))
    rot = np.tile(np.eye(3), (num_frames, 1, 1))
    for name, value in zip(chans, values.T):
      axis = 'XYZ'.index(name[0])
      if name.endswith('position'):
        translation[:, axis] = value
      else:
        rot = rot @ _axis_rotation(np.deg2rad(value), axis)
    parent = parsed.parents[j]
    if parent < 0:
      world_pos.append(translation)
      world_rot.append(rot)
    else:
      world_pos.append(world_pos[parent]
                       + np.einsum('tij,tj->ti', world_rot[parent], translation))
      world_rot.append(world_rot[parent] @ rot)
  positions = np.stack(world_pos, axis=1) / units_per_metre
  if joint_names is None:
    return positions
  missing = [n for n in joint_names if n not in parsed.names]
  if missing:
    raise ValueError(f'joint_names {missing} are not in the file, whose joints are '
                     f'{list(parsed.names)}.')
  return positions[:, [parsed.names.index(n) for n in joint_names]]

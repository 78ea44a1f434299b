"""Joint positions of the SMPL-X body from a user-supplied model file (no download, ever).

SMPL-X is licensed: users register at https://smpl-x.is.tue.mpg.de/ and pass the path of the
file they downloaded (``SMPLX_NEUTRAL.npz`` as distributed, or the ``.pkl``). Only what the 22
body joints need is read: ``v_template`` [V, 3], ``J_regressor`` [J, V] (dense, or a pickled
scipy sparse matrix as in the ``.pkl`` and in some converted ``.npz``), ``kintree_table`` [2, J]
and, when shape coefficients are given, ``shapedirs`` [V, 3, B]. A ``.pkl`` (and a sparse
regressor inside an ``.npz``) is unpickled, which runs code from the file: pass only model files
from a source you trust.

Convention (SMPL-X / ``lbs``): the pelvis sits at ``rest_joint[0] + translation`` and the global
orientation rotates the body about the pelvis; every other joint follows by forward kinematics
with the rest-pose bone offsets ``rest_joint[j] - rest_joint[parent[j]]``. Pose blend shapes do
not move joints, so the joints of a posed body depend only on the rest joints.

SMPL-X's first 22 joints are SMPL's 22 body joints with the same parents, so its positions plug
into the project's 22-joint skeleton (``skeleton.py``) and the InterHuman features unchanged.
"""

from __future__ import annotations

import dataclasses
import pathlib
import pickle
import zipfile

import numpy as np

from finedual_jax.motion import rotations
from finedual_jax.motion import skeleton

NUM_BODY_JOINTS = skeleton.NUM_JOINTS  # 22: pelvis + 21 body joints, SMPL's order.
_HINT = ('Pass the SMPL-X model file as downloaded from https://smpl-x.is.tue.mpg.de/ '
         '(e.g. models/smplx/SMPLX_NEUTRAL.npz).')


@dataclasses.dataclass(frozen=True)
class BodyModel:
  """The 22 body joints of an SMPL-X body of fixed shape.

  Attributes:
    rest_joints: [22, 3] rest-pose joint positions (``J_regressor @ v_shaped``), model frame.
    parents: parent index of each joint (-1 for the pelvis); equals ``skeleton.PARENTS``.
    source: the file the model was read from (for messages).
  """
  rest_joints: np.ndarray
  parents: tuple[int, ...]
  source: str = '<memory>'

  @property
  def offsets(self) -> np.ndarray:
    """[22, 3] offset of each joint from its parent in the rest pose (row 0: the pelvis)."""
    parents = np.array(self.parents[1:])
    return np.concatenate([self.rest_joints[:1],
                           self.rest_joints[1:] - self.rest_joints[parents]], axis=0)

  def joint_positions(self, axis_angle: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Posed body joints, in the frame the parameters are given in.

    Args:
      axis_angle: [..., 22, 3] global orientation (row 0) then the 21 body joints' local
        rotations, axis-angle in radians (SMPL-X ``global_orient`` and ``body_pose``).
      translation: [..., 3] SMPL-X ``transl``.

    Returns:
      [..., 22, 3] float64 joint positions.
    """
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    if axis_angle.shape[-2:] != (NUM_BODY_JOINTS, 3):
      raise ValueError(f'axis_angle: expected shape [..., {NUM_BODY_JOINTS}, 3] (global orient '
                       f'then 21 body joints), found {axis_angle.shape}.')
    if translation.shape != axis_angle.shape[:-2] + (3,):
      raise ValueError(f'translation: expected shape {axis_angle.shape[:-2] + (3,)} to match '
                       f'axis_angle {axis_angle.shape}, found {translation.shape}.')
    mats = rotations.axis_angle_to_matrix(axis_angle)
    root = self.rest_joints[0] + translation
    positions, _ = skeleton.forward_kinematics(root, mats[..., 0, :, :], mats[..., 1:, :, :],
                                               offsets=self.offsets)
    return positions


def _dense(value, path: pathlib.Path, key: str) -> np.ndarray:
  """A dense float64 array from an array, a 0-d object array or a scipy sparse matrix."""
  if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
    value = value.item()
  if hasattr(value, 'toarray'):  # scipy.sparse matrices and arrays.
    value = value.toarray()
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{path}: key {key!r} is not a numeric array (found {type(value).__name__}). '
                     f'{_HINT}') from e
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{path}: key {key!r} contains NaN or Inf.')
  return array


def _read_npz(path: pathlib.Path, keys: tuple[str, ...]) -> dict:
  out = {}
  with np.load(path, allow_pickle=False) as data:
    names = set(data.files)
    for key in keys:
      if key not in names:
        continue
      try:
        out[key] = data[key]
      except ValueError:
        # An object array (e.g. a sparse J_regressor saved with np.savez): only then unpickle,
        # which runs code from the file, so it must be the user's own trusted model file.
        with np.load(path, allow_pickle=True) as trusted:
          out[key] = trusted[key]
  return out


def _read_pkl(path: pathlib.Path) -> dict:
  try:
    with open(path, 'rb') as f:
      # The official SMPL-family pickles were written by Python 2.
      data = pickle.load(f, encoding='latin1')
  except ModuleNotFoundError as e:
    raise ValueError(f'{path}: unpickling needs the module {e.name!r}, which is not installed '
                     '(old SMPL pickles store chumpy arrays). Pass the .npz version of the model '
                     'instead.') from e
  except (pickle.UnpicklingError, EOFError) as e:
    raise ValueError(f'{path}: not a readable pickle ({e}). {_HINT}') from e
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a pickled dict of model arrays, found '
                     f'{type(data).__name__}. {_HINT}')
  return data


def _parents(kintree: np.ndarray, path: pathlib.Path) -> tuple[int, ...]:
  """Parents of the first 22 joints from a [2, J] kintree table (row 0 parent, row 1 joint)."""
  if kintree.ndim != 2 or kintree.shape[0] != 2 or kintree.shape[1] < NUM_BODY_JOINTS:
    raise ValueError(f'{path}: key \'kintree_table\' must have shape [2, J] with J >= '
                     f'{NUM_BODY_JOINTS}, found {kintree.shape}.')
  kintree = kintree.astype(np.int64)
  parent_of = dict(zip(kintree[1].tolist(), kintree[0].tolist()))
  parents = []
  for j in range(NUM_BODY_JOINTS):
    if j not in parent_of:
      raise ValueError(f'{path}: kintree_table has no entry for joint {j}.')
    # The root's parent is stored as -1 or as 2**32 - 1 (an unsigned -1).
    parents.append(-1 if j == 0 else parent_of[j])
  parents = tuple(parents)
  if parents != skeleton.PARENTS:
    raise ValueError(f'{path}: the body joints\' parents {parents} are not SMPL-X\'s '
                     f'{skeleton.PARENTS}; this is not an SMPL-X (or SMPL/SMPL-H) model file. '
                     f'{_HINT}')
  return parents


def load_body_model(path: str | pathlib.Path, betas: np.ndarray | None = None) -> BodyModel:
  """Reads an SMPL-X model file (``.npz`` or ``.pkl``) into a ``BodyModel``.

  Args:
    path: the user's SMPL-X model file.
    betas: [B] shape coefficients; None (default) is the mean shape (zeros), which is what the
      Inter-X release's own joint computation uses. ``shapedirs`` is only read when given.
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'SMPL-X model file not found: {path}. {_HINT}')
  keys = ('v_template', 'J_regressor', 'kintree_table') + (('shapedirs',) if betas is not None
                                                           else ())
  if path.suffix == '.npz':
    try:
      data = _read_npz(path, keys)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise ValueError(f'{path}: not a readable .npz file ({e}). {_HINT}') from e
  elif path.suffix == '.pkl':
    data = _read_pkl(path)
  else:
    raise ValueError(f'{path}: unsupported model file type {path.suffix!r}; expected .npz or '
                     f'.pkl. {_HINT}')
  for key in keys:
    if key not in data:
      raise KeyError(f'{path}: key {key!r} missing from the model file (it has '
                     f'{sorted(data)}). {_HINT}')

  v_template = _dense(data['v_template'], path, 'v_template')
  if v_template.ndim != 2 or v_template.shape[1] != 3:
    raise ValueError(f'{path}: key \'v_template\' must have shape [V, 3], found '
                     f'{v_template.shape}.')
  num_vertices = v_template.shape[0]
  regressor = _dense(data['J_regressor'], path, 'J_regressor')
  if regressor.ndim != 2 or regressor.shape[1] != num_vertices or (
      regressor.shape[0] < NUM_BODY_JOINTS):
    raise ValueError(f'{path}: key \'J_regressor\' must have shape [J, {num_vertices}] with J >= '
                     f'{NUM_BODY_JOINTS}, found {regressor.shape}.')
  parents = _parents(np.asarray(data['kintree_table']), path)

  vertices = v_template
  if betas is not None:
    betas = np.asarray(betas, dtype=np.float64).reshape(-1)
    shapedirs = _dense(data['shapedirs'], path, 'shapedirs')
    if (shapedirs.ndim != 3 or shapedirs.shape[:2] != (num_vertices, 3)
        or shapedirs.shape[2] < betas.shape[0]):
      raise ValueError(f'{path}: key \'shapedirs\' must have shape [{num_vertices}, 3, B] with '
                       f'B >= {betas.shape[0]} (the number of betas), found {shapedirs.shape}.')
    vertices = v_template + shapedirs[..., :betas.shape[0]] @ betas
  rest_joints = regressor[:NUM_BODY_JOINTS] @ vertices
  return BodyModel(rest_joints=rest_joints, parents=parents, source=str(path))

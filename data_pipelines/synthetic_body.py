"""Body animation for the synthetic InterHuman set: per-frame goals -> joint rotations.

Why procedural: tests and smoke runs need InterHuman-shaped data whose captions really describe
the motions, without the licensed download. Each interaction is a ``Scene`` of two ``Program``s
(per-frame goals: where the pelvis goes, where it faces, how the spine bends, where each wrist
should be) and ``animate`` turns a program into a pose sequence with a footstep planner (planted
feet never slide) and analytic two-bone IK for legs and arms. Joint positions are therefore
exactly the forward kinematics of the stored local rotations.

Frames: everything here is y-up (the skeleton's rest frame: the body faces +z, its left is +x);
a heading ``h`` means the body faces ``(sin h, 0, cos h)``. ``to_raw`` converts to InterHuman's
z-up 492-column rows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from finedual_jax.motion import rotations
from finedual_jax.motion import skeleton

_OFF = skeleton.REST_OFFSETS
UP = np.array([0.0, 1.0, 0.0])
_STAND = 0.912          # pelvis height of a relaxed stance (knees slightly bent)
_REACH = 0.766          # hip-to-ankle distance the planner allows (the straight leg is 0.769)
_ANKLE_Y = 0.06         # ankle height with the foot flat on the floor (the toes then touch it)
_FOOT_SIDE = 0.095      # lateral ankle offset from the pelvis in a relaxed stance
_DOUBLE_SUPPORT = 3     # frames both feet stay down between two steps
_STEP_TRIGGER = 0.07    # metres (or 0.25 m per radian of yaw) a foot may lag before it steps
SPEEDS = {'slow': (0.5, 0.7), 'normal': (0.9, 1.15), 'fast': (1.35, 1.55)}  # walking, m/s

# One finger per row, left hand in the wrist's rest frame (hand along +x, palm towards -y,
# thumb towards +z): base of the first joint, bone direction, lengths of its three bones.
_FINGERS = (
    ((0.025, -0.015, 0.030), (0.60, -0.25, 0.76), (0.035, 0.030, 0.025)),  # thumb
    ((0.085, 0.000, 0.025), (1.0, 0.0, 0.05), (0.038, 0.024, 0.020)),      # index
    ((0.090, 0.000, 0.005), (1.0, 0.0, 0.0), (0.042, 0.027, 0.022)),       # middle
    ((0.085, -0.002, -0.015), (1.0, 0.0, -0.05), (0.038, 0.025, 0.020)),   # ring
    ((0.075, -0.005, -0.032), (1.0, 0.0, -0.12), (0.030, 0.020, 0.018)),   # pinky
)


# ----------------------------------------------------------------------------- small helpers

def ease(u):
  """Minimum-jerk 0 -> 1 blend of u in [0, 1]: zero speed and acceleration at both ends."""
  u = np.clip(u, 0.0, 1.0)
  return u * u * u * (10.0 + u * (6.0 * u - 15.0))


def ramp(t, t0, t1):
  """0 before frame t0, 1 after t1, a smooth blend between."""
  return ease((t - t0) / max(t1 - t0, 1e-6))


def bump(t, t0, t1, t2, t3):
  """Rises over [t0, t1], holds 1, falls over [t2, t3]: the weight of a gesture."""
  return ramp(t, t0, t1) * (1.0 - ramp(t, t2, t3))


def travel(num_frames: int, t0: float, t1: float, accel: float) -> np.ndarray:
  """[T] progress 0 -> 1 between frames t0 and t1 at constant speed after smooth speed-ups.

  A trapezoid speed profile is how people walk from one place to another; the cruise speed is
  ``distance / (t1 - t0 - accel)`` per frame.
  """
  t = np.arange(int(math.ceil(max(t1, num_frames))) + 1, dtype=np.float64)
  a = min(accel, 0.45 * max(t1 - t0, 1e-6))
  s = np.cumsum(bump(t, t0, t0 + a, t1 - a, t1))
  if s[-1] <= 0.0:
    return (t[:num_frames] >= t0).astype(np.float64)
  return (s / s[-1])[:num_frames]


def wrap(angle):
  return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def facing(heading) -> np.ndarray:
  """[..., 3] unit vector a body with this heading faces."""
  h = np.asarray(heading, dtype=np.float64)
  return np.stack([np.sin(h), np.zeros_like(h), np.cos(h)], axis=-1)


def leftward(heading) -> np.ndarray:
  """[..., 3] unit vector to the left of a body with this heading."""
  h = np.asarray(heading, dtype=np.float64)
  return np.stack([np.cos(h), np.zeros_like(h), -np.sin(h)], axis=-1)


def ground(xz: np.ndarray) -> np.ndarray:
  """[..., 2] (x, z) ground positions -> [..., 3] points on the floor."""
  return np.stack([xz[..., 0], np.zeros_like(xz[..., 0]), xz[..., 1]], axis=-1)


def _rot_x(angle):
  angle = np.asarray(angle, dtype=np.float64)
  return rotations.axis_angle_to_matrix(angle[..., None] * np.array([1.0, 0.0, 0.0]))


def _rot_z(angle):
  angle = np.asarray(angle, dtype=np.float64)
  return rotations.axis_angle_to_matrix(angle[..., None] * np.array([0.0, 0.0, 1.0]))


def _unit(v):
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


# ----------------------------------------------------------------------------- programs

@dataclasses.dataclass
class Program:
  """Per-frame goals for one person's body (y-up world, metres, radians); ``animate`` poses it."""
  root_xz: np.ndarray       # [T, 2] ground (x, z) position of the pelvis
  heading: np.ndarray       # [T] yaw; the body faces (sin, 0, cos) of it
  crouch: np.ndarray        # [T] how far the pelvis sinks below the relaxed stance
  pelvis_pitch: np.ndarray  # [T] forward tilt of the pelvis (+ leans forward)
  spine_pitch: np.ndarray   # [T] forward bend shared by spine1..spine3
  spine_roll: np.ndarray    # [T] sideways lean of the torso
  neck_pitch: np.ndarray    # [T] nod (+ looks down)
  neck_yaw: np.ndarray      # [T] head turn (+ looks left)
  arm_target: np.ndarray    # [T, 2, 3] wrist goals of the left and right arm
  arm_weight: np.ndarray    # [T, 2] 0: the arm hangs and swings with the gait; 1: reaches its goal
  arm_pole: np.ndarray      # [T, 2, 3] where the elbow points while reaching
  step_frames: int = 10     # how long one step's swing lasts

  @classmethod
  def idle(cls, num_frames: int, xz, heading: float) -> Program:
    """A person standing still at xz, facing heading, arms hanging."""
    zeros = lambda *shape: np.zeros((num_frames,) + shape)
    return cls(np.tile(np.asarray(xz, dtype=np.float64), (num_frames, 1)),
               np.full(num_frames, float(heading)), zeros(), zeros(), zeros(), zeros(), zeros(),
               zeros(), zeros(2, 3), zeros(2), zeros(2, 3))

  def outward(self, arm: int) -> np.ndarray:
    """[T, 3] direction away from the body on the side of arm 0 (left) or 1 (right)."""
    return (1.0 if arm == 0 else -1.0) * leftward(self.heading)

  def shoulder(self, arm: int) -> np.ndarray:
    """[T, 3] rough shoulder position, for placing reach goals while planning."""
    return (ground(self.root_xz) + 0.175 * self.outward(arm)
            + (1.35 - self.crouch)[:, None] * UP)

  def look_at(self, target_xz: np.ndarray, weight=1.0) -> None:
    """Turns the head towards a ground point (within what a neck can do)."""
    d = target_xz - self.root_xz
    yaw = wrap(np.arctan2(d[:, 0], d[:, 1]) - self.heading)
    self.neck_yaw = self.neck_yaw + weight * np.clip(yaw, -0.9, 0.9)

  def placed(self, yaw: float, offset_xz: np.ndarray) -> Program:
    """The same program after turning the world by yaw about the up axis, then shifting it."""
    c, s = math.cos(yaw), math.sin(yaw)
    turn3 = rotations.rotation_about_y(np.float64(yaw))
    offset3 = np.array([offset_xz[0], 0.0, offset_xz[1]])
    return dataclasses.replace(
        self, root_xz=self.root_xz @ np.array([[c, s], [-s, c]]).T + offset_xz,
        heading=self.heading + yaw, arm_target=self.arm_target @ turn3.T + offset3,
        arm_pole=self.arm_pole @ turn3.T)


@dataclasses.dataclass
class Scene:
  """Both persons of one interaction, plus the facts its captions must state."""
  active: Program   # the initiator where the roles differ (the pusher, the first to wave...)
  passive: Program
  slots: dict       # e.g. {'variant': 'one', 'hand': 'right', 'speed': 'slow'}


# ----------------------------------------------------------------------------- body solver

def _two_bone_ik(root_pos, parent_rot, a, b, axis, target, pole):
  """Local rotations putting a two-bone chain's end on target with its middle joint towards pole.

  Args:
    root_pos: [T, 3] world position of the chain's first joint (hip, shoulder).
    parent_rot: [T, 3, 3] global rotation of that joint's parent.
    a, b: [3] rest offsets of the middle joint and of the end joint.
    axis: [3] hinge axis of the middle joint; a positive angle folds the chain.
    target, pole: [T, 3] world goal of the end joint; world direction the middle joint points.

  Returns:
    local rotations [T, 3, 3] of the first and of the middle joint. An unreachable goal leaves
    the chain straight and pointing at it.
  """
  ka, kb = axis @ a, axis @ b
  const = a @ a + b @ b + 2.0 * ka * kb
  cos_coef = 2.0 * (a @ b - ka * kb)
  sin_coef = 2.0 * a @ np.cross(axis, b)
  to = target - root_pos
  dist2 = np.sum(to * to, axis=-1)
  amp = math.hypot(cos_coef, sin_coef)
  bend = math.atan2(sin_coef, cos_coef) + np.arccos(np.clip((dist2 - const) / amp, -0.995, 1.0))
  mid = rotations.axis_angle_to_matrix(bend[:, None] * axis)
  reach = a + mid @ b
  # Columns (chain direction, hinge, side of the middle joint) in the joint's own frame and in
  # the world; the rotation maps one onto the other.
  local_x = _unit(reach)
  local_y = _unit(axis - np.sum(axis * local_x, -1, keepdims=True) * local_x)
  world_x = _unit(to)
  world_y = np.cross(pole, world_x)
  world_y = _unit(world_y - np.sum(world_y * world_x, -1, keepdims=True) * world_x)
  frame_l = np.stack([local_x, local_y, np.cross(local_x, local_y)], axis=-1)
  frame_w = np.stack([world_x, world_y, np.cross(world_x, world_y)], axis=-1)
  glob = frame_w @ np.swapaxes(frame_l, -1, -2)
  return np.swapaxes(parent_rot, -1, -2) @ glob, mid


def _plan_feet(root_xz, heading, step_frames):
  """Footsteps that follow the pelvis.

  A foot steps when it lags behind where it should land by more than a few centimetres, only
  while the other foot is down, and lands half a stance ahead so the pelvis passes over it.

  Returns:
    where each foot is (or will land) flat on the floor: [T, 2, 2] ankle (x, z), [T, 2] yaw;
    and the steps as (foot, lift-off frame) pairs.
  """
  num_frames = len(heading)
  side = np.array([1.0, -1.0])
  fwd = np.stack([np.sin(heading), np.cos(heading)], -1)
  left = np.stack([np.cos(heading), -np.sin(heading)], -1)
  neutral = (root_xz[:, None] + side[None, :, None] * _FOOT_SIDE * left[:, None]
             - 0.03 * fwd[:, None])
  neutral_yaw = heading[:, None] + 0.08 * side
  lead = step_frames + (step_frames + 2 * _DOUBLE_SUPPORT) // 2
  ahead = np.minimum(np.arange(num_frames) + lead, num_frames - 1)
  goal, goal_yaw, left_l = neutral[ahead].tolist(), neutral_yaw[ahead].tolist(), left.tolist()
  plant = [list(p) for p in neutral[0]]
  plant_yaw = list(neutral_yaw[0])
  anchor = np.tile(neutral[0], (num_frames, 1, 1))
  anchor_yaw = np.tile(neutral_yaw[0], (num_frames, 1))
  steps = []
  t = 0
  while t < num_frames:
    errors = []
    for i in range(2):
      dx, dz = goal[t][i][0] - plant[i][0], goal[t][i][1] - plant[i][1]
      # The foot on the side the body moves to goes first, so sidesteps do not cross the legs.
      lead_bias = 0.3 * max(0.0, side[i] * (dx * left_l[t][0] + dz * left_l[t][1]))
      dyaw = abs((goal_yaw[t][i] - plant_yaw[i] + math.pi) % (2 * math.pi) - math.pi)
      errors.append(math.hypot(dx, dz) + 0.25 * dyaw + lead_bias)
    i = int(errors[1] > errors[0])
    if errors[i] > _STEP_TRIGGER:
      steps.append((i, t))
      plant[i], plant_yaw[i] = goal[t][i], goal_yaw[t][i]
      anchor[t + 1:, i], anchor_yaw[t + 1:, i] = plant[i], plant_yaw[i]
      t += step_frames + _DOUBLE_SUPPORT
    else:
      t += 1
  return anchor, anchor_yaw, steps


def _place_feet(anchor, anchor_yaw, steps, step_frames, hip):
  """[T, 2, 3] ankle goals and [T, 2, 3, 3] foot rotations for planned footsteps.

  A foot far behind the hip rolls onto its toes (the heel rises) and one far ahead lands on its
  heel, which is how real legs reach long strides; the pivot point stays put, so nothing slides.
  ``hip`` is [T, 2, 3], where the hips would be at the relaxed pelvis height.
  """
  flat = np.concatenate([anchor[..., :1], np.full(anchor[..., :1].shape, _ANKLE_Y),
                         anchor[..., 1:]], -1)
  forward = facing(anchor_yaw)
  excess = np.linalg.norm(hip - flat, axis=-1) - (_REACH - 0.01)
  behind = np.sum((flat - hip) * forward, -1) < 0.0
  pitch = np.where(behind, 0.6 * ease(excess / 0.12), -0.35 * ease(excess / 0.1))
  heel = np.array([0.0, -0.06, -0.06])
  pivot = np.where((pitch > 0.0)[..., None], _OFF[[10, 11]], heel)  # toe or heel, foot frame
  yaw_rot = rotations.rotation_about_y(anchor_yaw)
  pivot_move = np.einsum('tkij,tkj->tki', yaw_rot - yaw_rot @ _rot_x(pitch), pivot)
  ankle = flat + pivot_move
  # Swinging feet travel from their lift-off pose to their landing pose.
  num_frames = anchor.shape[0]
  yaw = anchor_yaw.copy()
  for i, t0 in steps:
    # A step still in the air when the clip ends keeps heading for its landing pose.
    t1 = min(t0 + step_frames, num_frames - 1)
    frames = np.arange(t0 + 1, min(t0 + step_frames, num_frames))
    if len(frames) == 0:
      continue
    u = ease((frames - t0) / step_frames)[:, None]
    start, end = ankle[t0, i].copy(), ankle[t1, i].copy()
    lift = min(0.09, 0.03 + 0.12 * float(np.linalg.norm(end - start)))
    ankle[frames, i] = start + (end - start) * u
    ankle[frames, i, 1] += lift * np.sin(np.pi * (frames - t0) / step_frames)
    pitch[frames, i] = pitch[t0, i] + (pitch[t1, i] - pitch[t0, i]) * u[:, 0]
    yaw[frames, i] = yaw[t0, i] + wrap(yaw[t1, i] - yaw[t0, i]) * u[:, 0]
  return ankle, rotations.rotation_about_y(yaw) @ _rot_x(pitch)


def _smooth_below(x: np.ndarray, radius: int) -> np.ndarray:
  """A smooth curve that never exceeds x: a running minimum, then a blur of the same width."""
  win = np.lib.stride_tricks.sliding_window_view(np.pad(x, radius, mode='edge'), 2 * radius + 1)
  kernel = np.hanning(2 * radius + 3)[1:-1]
  return np.convolve(np.pad(win.min(-1), radius, mode='edge'), kernel / kernel.sum(), 'valid')


def hand_model(curl: float) -> tuple[np.ndarray, np.ndarray]:
  """[2, 20, 3] finger joint positions in each wrist's frame, [2, 15, 3, 3] finger rotations.

  Hands are left then right, fingers thumb..pinky, each three joints then its tip; the fingers
  are curled by ``curl`` (radians at the middle joint) and held still, so hands move rigidly.
  """
  points, rots = np.zeros((2, 20, 3)), np.zeros((2, 15, 3, 3))
  for hand, mirror in enumerate((np.array([1.0, 1.0, 1.0]), np.array([-1.0, 1.0, 1.0]))):
    for finger, (base, direction, lengths) in enumerate(_FINGERS):
      d = _unit(np.asarray(direction) * mirror)
      axis = _unit(np.cross(d, np.array([0.0, -1.0, 0.0])))  # curls towards the palm
      scale = (0.5, 0.7, 0.5) if finger == 0 else (0.8, 1.0, 0.7)
      chain = np.eye(3)
      pos = np.asarray(base) * mirror
      for joint in range(3):
        rot = rotations.axis_angle_to_matrix(axis * curl * scale[joint])
        rots[hand, 3 * finger + joint] = rot
        points[hand, 4 * finger + joint] = pos
        chain = chain @ rot
        pos = pos + chain @ (d * lengths[joint])
      points[hand, 4 * finger + 3] = pos
  return points, rots


def animate(prog: Program, curl: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
  """Poses a program: [T, 62, 3] y-up joint positions (22 body, 40 hand), [T, 51, 3, 3] local
  rotations (21 body joints 1..21 relative to their parents, then 30 finger joints)."""
  num_frames = len(prog.heading)
  heading = prog.heading
  root_rot = rotations.rotation_about_y(heading) @ _rot_x(prog.pelvis_pitch)
  anchor, anchor_yaw, steps = _plan_feet(prog.root_xz, heading, prog.step_frames)
  hip_off = np.einsum('tij,kj->tki', root_rot, _OFF[1:3])
  relaxed = np.stack([prog.root_xz[:, 0], _STAND - prog.crouch, prog.root_xz[:, 1]], -1)
  ankle, foot_rot = _place_feet(anchor, anchor_yaw, steps, prog.step_frames,
                                relaxed[:, None] + hip_off)
  # The pelvis sinks where the legs would otherwise be too short for the planned footsteps.
  horiz = np.linalg.norm(prog.root_xz[:, None] + hip_off[..., 0::2] - ankle[..., 0::2], axis=-1)
  limit = ankle[..., 1] + np.sqrt(np.maximum(_REACH**2 - horiz**2, 0.09)) - hip_off[..., 1]
  pelvis_y = _smooth_below(np.minimum(_STAND - prog.crouch, limit.min(-1)), 4)
  root_pos = np.stack([prog.root_xz[:, 0], pelvis_y, prog.root_xz[:, 1]], -1)

  local = np.tile(np.eye(3), (num_frames, 21, 1, 1))
  for joint, share in ((3, 0.35), (6, 0.35), (9, 0.3)):
    local[:, joint - 1] = _rot_x(share * prog.spine_pitch) @ _rot_z(share * prog.spine_roll)
  for joint in (12, 15):  # neck and head share the nod and the turn
    local[:, joint - 1] = (rotations.rotation_about_y(0.5 * prog.neck_yaw)
                           @ _rot_x(0.5 * prog.neck_pitch))
  pos0, rot0 = skeleton.forward_kinematics(root_pos, root_rot, local)

  x_axis = np.array([1.0, 0.0, 0.0])
  for k, (hip, knee, ank) in enumerate(((1, 4, 7), (2, 5, 8))):
    knee_pole = foot_rot[:, k, :, 2] * np.array([1.0, 0.0, 1.0])  # knee points along the foot
    local_hip, local_knee = _two_bone_ik(pos0[:, hip], root_rot, _OFF[knee], _OFF[ank], x_axis,
                                         ankle[:, k], knee_pole)
    local[:, hip - 1], local[:, knee - 1] = local_hip, local_knee
    knee_rot = root_rot @ local_hip @ local_knee
    local[:, ank - 1] = np.swapaxes(knee_rot, -1, -2) @ foot_rot[:, k]

  fwd, up = facing(heading), UP
  ankle_fwd = np.einsum('tkc,tc->tk', ankle - root_pos[:, None], fwd)
  for k, (collar, shoulder, elbow, wrist) in enumerate(((13, 16, 18, 20), (14, 17, 19, 21))):
    out = prog.outward(k)
    # Arms swing with the opposite leg, as in a natural gait.
    swing = np.clip(0.2 * (ankle_fwd[:, 1 - k] - ankle_fwd[:, k]), -0.2, 0.2)[:, None]
    hang = (pos0[:, shoulder] + 0.05 * out + (0.03 + swing) * fwd
            - np.sqrt(0.47**2 - swing**2) * up)
    w = prog.arm_weight[:, k, None]
    # Blend direction and reach from the shoulder rather than points, so a wrist going from
    # the hip to overhead sweeps in front of the body instead of through the shoulder.
    rest, goal = hang - pos0[:, shoulder], prog.arm_target[:, k] - pos0[:, shoulder]
    sweep = (1.0 - w) * _unit(rest) + w * _unit(goal) + w * (1.0 - w) * (1.2 * fwd + 0.4 * out)
    reach = (1.0 - w) * np.linalg.norm(rest, axis=-1, keepdims=True) + w * np.linalg.norm(
        goal, axis=-1, keepdims=True)
    target = pos0[:, shoulder] + reach * _unit(sweep)
    pole = (1.0 - w) * (0.3 * out - fwd) + w * prog.arm_pole[:, k]
    local[:, shoulder - 1], local[:, elbow - 1] = _two_bone_ik(
        pos0[:, shoulder], rot0[:, collar], _OFF[elbow], _OFF[wrist],
        np.array([0.0, 1.0 if k else -1.0, 0.0]), target, pole)

  pos, rot = skeleton.forward_kinematics(root_pos, root_rot, local)
  points, finger_rots = hand_model(curl)
  hands = [pos[:, w, None] + np.einsum('tij,nj->tni', rot[:, w], points[k])
           for k, w in enumerate((20, 21))]
  fingers = np.broadcast_to(finger_rots.reshape(30, 3, 3), (num_frames, 30, 3, 3))
  return (np.concatenate([pos] + hands, axis=1), np.concatenate([local, fingers], axis=1))


def to_raw(positions: np.ndarray, local_rotations: np.ndarray) -> np.ndarray:
  """[T, 62, 3] y-up positions and [T, 51, 3, 3] rotations -> [T, 492] float32 z-up rows, with
  the lowest joint over the clip on the floor."""
  positions = positions - np.array([0.0, positions[..., 1].min(), 0.0])
  zup = positions @ skeleton.Z_UP_TO_Y_UP  # rows: p_zup = Z_UP_TO_Y_UP.T @ p_yup
  num_frames = positions.shape[0]
  return np.concatenate([zup.reshape(num_frames, -1),
                         rotations.matrix_to_6d(local_rotations).reshape(num_frames, -1)],
                        axis=1).astype(np.float32)

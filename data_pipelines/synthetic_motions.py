"""Choreography of the synthetic interactions: one function per interaction type.

Each function builds a ``Scene`` (two ``Program``s of per-frame goals) that
``synthetic_body.animate`` turns into poses; the captions in ``synthetic_interhuman`` describe
exactly these motions.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from data_pipelines.synthetic_body import (SPEEDS, UP, Program, Scene, animate, bump, facing, ground,
                                           leftward, ramp, to_raw, travel)

# ----------------------------------------------------------------------------- choreography
# Each function builds a Scene in a pair frame (the active person near the origin facing +z,
# the other ahead of it); ``perform`` then places the pair anywhere in the world.

def _walk_speed(rng: np.random.Generator, fps: int, allow_slow: bool = True) -> float:
  labels = ('slow', 'normal', 'normal', 'fast') if allow_slow else ('normal', 'fast')
  return rng.uniform(*SPEEDS[labels[rng.integers(len(labels))]]) / fps


def _step_frames(metres_per_second: float, fps: int) -> int:
  # Faster walkers take quicker steps, which keeps the stride within the legs' reach.
  return int(round(np.clip(12.0 - 3.0 * metres_per_second, 7.0, 11.0) * fps / 30.0))


def speed_label(metres_per_second: float) -> str:
  """What a caption would call this walking speed: 'slow', 'normal' or 'fast'."""
  if metres_per_second < 0.8:
    return 'slow'
  return 'fast' if metres_per_second > 1.3 else 'normal'


def _facing_pair(num_frames, distance, shift=0.0):
  """Two idle persons facing each other, each shifted `shift` metres to its own left."""
  a = Program.idle(num_frames, (shift, 0.0), 0.0)
  b = Program.idle(num_frames, (-shift, distance), math.pi)
  return a, b


def _approach(rng, num_frames, fps, a, b, final_gap, both, max_walk):
  """Walks a and b (or only a) towards each other until `final_gap` apart; returns the speed."""
  t0, t1, acc = 0.05 * num_frames, 0.42 * num_frames, 0.4 * fps
  v = _walk_speed(rng, fps)
  walk = float(np.clip(v * (t1 - t0 - acc), 0.4, max_walk * (1 if both else 2)))
  left = 1.0 - travel(num_frames, t0, t1, acc)
  a.root_xz[:, 1] = -walk * left
  b.root_xz[:, 1] = final_gap + (walk if both else 0.0) * left
  if rng.random() < 0.6:  # step back after the contact
    back = rng.uniform(0.25, 0.45) * travel(num_frames, 0.8 * num_frames, 0.97 * num_frames, acc)
    a.root_xz[:, 1] -= back
    b.root_xz[:, 1] += back
  speed = walk / (t1 - t0 - acc) * fps
  a.step_frames = b.step_frames = _step_frames(speed, fps)
  return speed


def _handshake(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  hand = 'left' if rng.random() < 0.25 else 'right'
  k = 0 if hand == 'left' else 1
  both = rng.random() < 0.65
  gap = rng.uniform(0.66, 0.72)
  # Each stands a little to its own left (right for a left-handed shake) so the hands meet.
  a, b = _facing_pair(num_frames, gap, 0.07 if k else -0.07)
  speed = _approach(rng, num_frames, fps, a, b, gap, both, 1.6)
  w = bump(t, 0.3 * num_frames, 0.46 * num_frames, 0.72 * num_frames, 0.84 * num_frames)
  shake = 0.035 * np.sin(2 * np.pi * rng.uniform(2.0, 3.0) * (t - 0.46 * num_frames) / fps)
  shake *= bump(t, 0.44 * num_frames, 0.5 * num_frames, 0.66 * num_frames, 0.72 * num_frames)
  grip = np.stack([0 * t, rng.uniform(1.0, 1.06) + shake, np.full(num_frames, gap / 2)], -1)
  for p, q, own_side in ((a, b, -0.02), (b, a, 0.02)):
    p.arm_weight[:, k] = w
    p.arm_target[:, k] = grip + np.array([0.0, 0.0, own_side])
    p.arm_pole[:, k] = 0.6 * p.outward(k) - UP
    p.spine_pitch = 0.08 * w
    p.look_at(q.root_xz)
  return Scene(a, b, {'variant': 'both' if both else 'one', 'hand': hand,
                      'speed': speed_label(speed)})


def _wave(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  a, b = _facing_pair(num_frames, rng.uniform(2.0, 4.0))
  first = rng.random() < 0.5
  start = rng.uniform(0.06, 0.2) * num_frames
  starts = (start, start + (rng.uniform(0.12, 0.25) if first else rng.uniform(0.0, 0.04))
            * num_frames)
  hands = ['left' if rng.random() < 0.3 else 'right' for _ in range(2)]
  for p, q, t0, hand in ((a, b, starts[0], hands[0]), (b, a, starts[1], hands[1])):
    k = 0 if hand == 'left' else 1
    t3 = min(t0 + max(rng.uniform(0.45, 0.6) * num_frames, min(1.8 * fps, 0.75 * num_frames)),
             0.97 * num_frames)
    rise = min(0.5 * fps, 0.3 * (t3 - t0))
    osc = 0.1 * np.sin(2 * np.pi * rng.uniform(1.5, 2.5) * (t - t0) / fps)
    osc *= bump(t, t0 + 0.5 * rise, t0 + 1.2 * rise, t3 - 1.2 * rise, t3 - 0.5 * rise)
    out, fwd = p.outward(k), facing(p.heading)
    p.arm_weight[:, k] = bump(t, t0, t0 + rise, t3 - rise, t3)
    p.arm_target[:, k] = (p.shoulder(k) + 0.38 * UP + 0.14 * out + 0.1 * fwd
                          + osc[:, None] * leftward(p.heading))
    p.arm_pole[:, k] = out - 0.5 * UP - 0.3 * fwd
    p.look_at(q.root_xz)
  return Scene(a, b, {'variant': 'first' if first else 'both', 'hand_a': hands[0],
                      'hand_p': hands[1]})


def _push(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  contact_gap = rng.uniform(0.54, 0.58)
  a, b = _facing_pair(num_frames, contact_gap)
  tc = 0.35 * num_frames
  # The pusher steps in (at most 1 m/s), pushes at frame tc and follows through a little.
  step_in = min(rng.uniform(0.2, 0.5), (tc - 0.08 * num_frames - 0.3 * fps) / fps)
  to_go = 1.0 - travel(num_frames, 0.08 * num_frames, tc, 0.3 * fps)
  follow_through = 0.15 * travel(num_frames, tc, tc + 0.3 * fps, 0.1 * fps)
  a.root_xz[:, 1] = follow_through - max(step_in, 0.1) * to_go
  # The pushed person is thrown back fast, then slows down over a few stumbling steps.
  te = min(tc + rng.uniform(1.6, 2.1) * fps, 0.96 * num_frames)
  speed = ramp(t, tc, tc + 3) * np.clip(1.0 - (t - tc) / (te - tc), 0.0, 1.0)
  b.root_xz[:, 1] = contact_gap + rng.uniform(0.9, 1.4) * np.cumsum(speed) / speed.sum()
  b.step_frames = _step_frames(1.6, fps)
  chest = ground(b.root_xz) + 1.2 * UP + 0.13 * facing(b.heading)
  w = bump(t, 0.15 * num_frames, tc - 2, tc + 0.2 * fps, tc + 0.6 * fps)
  for k in range(2):
    a.arm_weight[:, k] = w
    a.arm_target[:, k] = chest + 0.14 * a.outward(k)
    a.arm_pole[:, k] = 0.5 * a.outward(k) - UP
  a.spine_pitch = 0.2 * bump(t, 0.2 * num_frames, tc, tc + 0.3 * fps, tc + 0.9 * fps)
  # Its torso is thrown back and its arms fly forward to catch its balance.
  thrown = bump(t, tc, tc + 0.12 * fps, tc + 0.5 * (te - tc), te)
  b.spine_pitch = -0.3 * thrown
  b.neck_pitch = 0.2 * thrown
  b.crouch = 0.04 * thrown
  flail = bump(t, tc + 2, tc + 0.35 * fps, te - 0.4 * fps, te)
  for k in range(2):
    b.arm_weight[:, k] = flail
    b.arm_target[:, k] = (b.shoulder(k) + 0.28 * facing(b.heading) - 0.1 * UP
                          + 0.22 * b.outward(k))
    b.arm_pole[:, k] = b.outward(k) - UP
  a.look_at(b.root_xz)
  return Scene(a, b, {})


def _hug(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  both = rng.random() < 0.6
  gap = rng.uniform(0.3, 0.34)
  a, b = _facing_pair(num_frames, gap)
  speed = _approach(rng, num_frames, fps, a, b, gap, both, 1.4)
  w = bump(t, 0.3 * num_frames, 0.45 * num_frames, 0.7 * num_frames, 0.82 * num_frames)
  high = rng.integers(2)  # whose arms go over the other's shoulders
  hold = int(0.55 * num_frames)
  for i, (p, q) in enumerate(((a, b), (b, a))):
    back = ground(q.root_xz[hold]) - 0.08 * facing(q.heading[hold])
    for k in range(2):
      p.arm_weight[:, k] = w
      p.arm_target[:, k] = (back + 0.05 * p.outward(k)[hold]
                            + (1.28 if i == high else 1.1) * UP)
      p.arm_pole[:, k] = p.outward(k) - 0.4 * UP - 0.2 * facing(p.heading)
    p.spine_pitch = 0.12 * w
    p.look_at(q.root_xz, 1.0 - w)
    p.neck_yaw = p.neck_yaw - 0.45 * w  # both heads turn right, so they pass each other
  return Scene(a, b, {'variant': 'both' if both else 'one', 'speed': speed_label(speed)})


def _path(s: np.ndarray, curve: float):
  """Ground points [T, 2] and headings [T] at arc length s along a path of constant curvature
  that starts at the origin facing +z."""
  heading = curve * s
  if abs(curve) < 1e-3:
    return np.stack([0.0 * s, s], -1), heading
  return np.stack([1.0 - np.cos(heading), np.sin(heading)], -1) / curve, heading


def _walk_plan(rng, num_frames, fps, t0, t1, min_distance):
  """How far a walk between frames t0 and t1 goes, its speed (m/s) and a gentle bend."""
  duration = t1 - t0 - 0.4 * fps
  distance = max(_walk_speed(rng, fps, num_frames >= 100) * duration, min_distance)
  return distance, distance / duration * fps, rng.uniform(-0.5, 0.5) / distance


def _walk_side_by_side(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  t0, t1, acc = rng.uniform(0.02, 0.1) * num_frames, rng.uniform(0.9, 0.98) * num_frames, 0.4 * fps
  distance, speed, curve = _walk_plan(rng, num_frames, fps, t0, t1, 1.3)
  centre, heading = _path(distance * travel(num_frames, t0, t1, acc), curve)
  gap = rng.uniform(0.6, 1.0) + 0.04 * np.sin(2 * np.pi * t / num_frames + rng.uniform(0, 6.3))
  a_side = 1.0 if rng.random() < 0.5 else -1.0  # +1: the active person walks on the left
  left = leftward(heading)[:, 0::2]
  a = Program.idle(num_frames, (0.0, 0.0), 0.0)
  b = Program.idle(num_frames, (0.0, 0.0), 0.0)
  for p, sign in ((a, a_side), (b, -a_side)):
    p.root_xz = centre + sign * 0.5 * gap[:, None] * left
    p.heading = heading.copy()
    p.step_frames = _step_frames(speed, fps)
  glance = rng.uniform(0.2, 0.7) * num_frames  # one of them looks at the other for a moment
  looker, other = (a, b) if rng.random() < 0.5 else (b, a)
  looker.look_at(other.root_xz, 0.6 * bump(t, glance, glance + 15, glance + 35, glance + 50))
  return Scene(a, b, {'side_a': 'left' if a_side > 0 else 'right',
                      'side_p': 'right' if a_side > 0 else 'left',
                      'speed': speed_label(speed)})


def _around_centre(num_frames, fps, radius, turn, t0, t1):
  """Two persons on opposite sides of a centre, facing it, turning by `turn` radians."""
  alpha = np.pi + turn * travel(num_frames, t0, t1, 0.4 * fps)
  u = np.stack([np.sin(alpha), np.cos(alpha)], -1)
  a = Program.idle(num_frames, (0.0, 0.0), 0.0)
  b = Program.idle(num_frames, (0.0, 0.0), 0.0)
  a.root_xz, a.heading = radius * u, alpha + np.pi
  b.root_xz, b.heading = -radius * u, alpha.copy()
  return a, b


def _circle(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t0, t1 = 0.04 * num_frames, 0.96 * num_frames
  seconds = (t1 - t0 - 0.4 * fps) / fps
  radius = rng.uniform(0.9, 1.4)
  turn = float(np.clip(rng.uniform(0.35, 0.7) * seconds / radius, 1.9, 4.4))
  radius = min(radius, seconds / turn)  # sidesteps no faster than 1 m/s
  sign = 1.0 if rng.random() < 0.5 else -1.0
  a, b = _around_centre(num_frames, fps, radius, sign * turn, t0, t1)
  a.step_frames = b.step_frames = _step_frames(1.0, fps)
  sidestep = radius * turn / seconds  # m/s; sidesteps are slower than walking
  speed = 'slow' if sidestep < 0.5 else ('fast' if sidestep > 0.85 else 'normal')
  return Scene(a, b, {'direction': 'counterclockwise' if sign > 0 else 'clockwise',
                      'speed': speed})


def _bow(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  a, b = _facing_pair(num_frames, rng.uniform(1.2, 2.4))
  first = rng.random() < 0.5
  start = rng.uniform(0.1, 0.25) * num_frames
  starts = (start, start + (rng.uniform(0.15, 0.25) if first else rng.uniform(0.0, 0.04))
            * num_frames)
  for p, q, t0 in ((a, b, starts[0]), (b, a, starts[1])):
    down = min(rng.uniform(0.5, 0.8) * fps, 0.12 * num_frames)
    hold = min(rng.uniform(0.4, 0.9) * fps, 0.12 * num_frames)
    w = bump(t, t0, t0 + down, t0 + down + hold, t0 + 2 * down + hold)
    depth = rng.uniform(0.9, 1.2)
    p.pelvis_pitch, p.spine_pitch, p.neck_pitch = 0.4 * depth * w, 0.6 * depth * w, 0.3 * depth * w
    p.crouch = 0.02 * w
    p.root_xz = p.root_xz - 0.07 * w[:, None] * facing(p.heading)[:, 0::2]  # hips go back
    p.look_at(q.root_xz, 1.0 - w)
  return Scene(a, b, {'variant': 'first' if first else 'both'})


def _dance(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  t0, t1 = 0.05 * num_frames, 0.95 * num_frames
  seconds = (t1 - t0 - 0.4 * fps) / fps
  turn = float(np.clip(rng.uniform(0.5, 1.2) * seconds, 1.5, 6.0))
  sign = 1.0 if rng.random() < 0.5 else -1.0
  radius = rng.uniform(0.33, 0.37)
  a, b = _around_centre(num_frames, fps, radius, sign * turn, t0, t1)
  sway = 2 * np.pi * rng.uniform(0.6, 0.9) * t / fps
  centre = 0.05 * np.sin(sway)[:, None] * leftward(a.heading)
  for p in (a, b):
    p.root_xz = p.root_xz + centre[:, 0::2]
    p.step_frames = _step_frames(1.0, fps)
  a.spine_roll, b.spine_roll = 0.08 * np.sin(sway), -0.08 * np.sin(sway)
  u = facing(b.heading)  # from the centre towards the active person
  release = rng.random() < 0.3
  w = 1.0 - ramp(t, 0.9 * num_frames, 0.98 * num_frames) if release else np.ones(num_frames)
  # The active person's left hand holds the partner's right and vice versa.
  for ka, kb, sgn in ((0, 1, 1.0), (1, 0, -1.0)):
    grip = (centre + sgn * 0.2 * leftward(a.heading)
            + (1.08 + 0.03 * np.sin(2 * sway))[:, None] * UP)
    for p, k, shift in ((a, ka, 0.025), (b, kb, -0.025)):  # each wrist on its own side
      p.arm_weight[:, k] = w
      p.arm_target[:, k] = grip + shift * u
      p.arm_pole[:, k] = 0.6 * p.outward(k) - UP
  return Scene(a, b, {'direction': 'counterclockwise' if sign > 0 else 'clockwise',
                      'variant': 'release' if release else 'hold'})


def _high_five(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t = np.arange(num_frames, dtype=np.float64)
  hand = 'left' if rng.random() < 0.25 else 'right'
  k = 0 if hand == 'left' else 1
  both = rng.random() < 0.65
  gap = rng.uniform(0.62, 0.68)
  a, b = _facing_pair(num_frames, gap, 0.05 if k else -0.05)
  speed = _approach(rng, num_frames, fps, a, b, gap, both, 1.6)
  # Hands go up while they arrive, slap together overhead for an instant, and come down.
  tc, swing = 0.5 * num_frames, 0.25 * fps
  w = bump(t, tc - 3 * swing, tc - swing, tc + 1.5 * swing, tc + 3.5 * swing)
  slap = bump(t, tc - swing, tc, tc + 0.2 * swing, tc + 1.2 * swing)
  meet = np.array([0.0, rng.uniform(1.6, 1.68), gap / 2])
  for p, q, own_side in ((a, b, -1.0), (b, a, 1.0)):
    p.arm_weight[:, k] = w
    p.arm_target[:, k] = meet + (own_side * (0.02 + 0.12 * (1.0 - slap)))[:, None] * [0, 0, 1]
    p.arm_pole[:, k] = p.outward(k) - 0.5 * UP
    p.look_at(q.root_xz)
  return Scene(a, b, {'variant': 'both' if both else 'one', 'hand': hand,
                      'speed': speed_label(speed)})


def _follow(num_frames: int, rng: np.random.Generator, fps: int) -> Scene:
  t0, t1, acc = rng.uniform(0.02, 0.08) * num_frames, rng.uniform(0.8, 0.9) * num_frames, 0.4 * fps
  delay = rng.uniform(0.5, 1.0) * fps  # the follower sets off a moment later
  distance, speed, curve = _walk_plan(rng, num_frames, fps, t0, t1, 1.5)
  a = Program.idle(num_frames, (0.0, 0.0), 0.0)
  b = Program.idle(num_frames, (0.0, 0.0), 0.0)
  a.root_xz, a.heading = _path(distance * travel(num_frames, t0, t1, acc), curve)
  b.root_xz, b.heading = _path(distance * travel(num_frames, t0 + delay, t1 + delay, acc)
                               - rng.uniform(1.0, 1.6), curve)
  a.step_frames = b.step_frames = _step_frames(speed, fps)
  b.look_at(a.root_xz, 0.5)
  return Scene(a, b, {'speed': speed_label(speed)})


CHOREOGRAPHIES: dict[str, Callable[[int, np.random.Generator, int], Scene]] = {
    'handshake': _handshake, 'wave': _wave, 'push': _push, 'hug': _hug,
    'walk_side_by_side': _walk_side_by_side, 'circle': _circle, 'bow': _bow, 'dance': _dance,
    'high_five': _high_five, 'follow': _follow,
}


def perform(interaction: str, num_frames: int, rng: np.random.Generator,
            fps: int = 30) -> tuple[np.ndarray, np.ndarray, dict]:
  """Raw [T, 492] float32 z-up rows of the active and the passive person, and the caption slots.

  Very short clips are cut from the middle of a normal-length performance, as a crop of a real
  recording would be.
  """
  full = num_frames if num_frames >= 45 else 3 * fps
  scene = CHOREOGRAPHIES[interaction](full, rng, fps)
  yaw, offset = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(-3.0, 3.0, size=2)
  start = 0 if full == num_frames else int(rng.integers(full // 3, full - num_frames - full // 6))
  raws = []
  for prog in (scene.active, scene.passive):
    positions, local = animate(prog.placed(yaw, offset), rng.uniform(0.2, 0.6))
    crop = slice(start, start + num_frames)
    raws.append(to_raw(positions[crop], local[crop]))
  return raws[0], raws[1], scene.slots

"""Renders two persons' joint positions as stick figures (GIF/MP4 clips, PNG key-frame strips).

Headless and fast: a fixed perspective camera is computed once per clip with NumPy, the 3D
bones are projected to 2D here, and matplotlib only draws 2D line collections on one reused
``Figure`` with an Agg canvas. The object API never touches pyplot or the global backend, so
this module works on machines without a display and does not disturb a notebook that has
already chosen an interactive backend (which is why it does not call ``matplotlib.use``).

Image sizes:
  * ``render_frames`` / ``render_gif``: every frame is exactly ``size_px`` x ``size_px``; a
    non-empty title takes a band at the top of that square (the scene shrinks to fit).
  * ``render_video``: the same frames, padded with one white row and column when ``size_px`` is
    odd (H.264 in yuv420p needs even sizes). MP4 needs an ffmpeg binary (``ffmpeg_available``).
  * ``render_strip``: ``panel_px * n`` wide, ``n = min(num_frames, T)``, and ``panel_px`` tall
    without a title or ``panel_px + title_band_px(panel_px)`` tall with one (band on top).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import textwrap
from typing import Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from PIL import Image

from finedual_jax.motion import skeleton

# Person 1 blue, person 2 red; left-side bones are a lighter shade so mirrored poses read right.
PERSON_COLORS = ('#1f5fbf', '#d62728')
PERSON_LEFT_COLORS = ('#6fa8ef', '#f08a8a')
_HEAD = skeleton.JOINT_NAMES.index('head')
_BONES = np.array([(j, p) for j, p in enumerate(skeleton.PARENTS) if p >= 0])  # [21, 2]
_VERTICAL_FOV_DEG = 30.0
_ELEVATION_DEG = 20.0
# Turning away from the view perpendicular to the persons' main axis gives a 3/4 view whose
# depth reads better, while still separating two persons who face each other.
_AZIMUTH_OFFSET_DEG = 20.0
_FLOOR_MARGIN_M = 0.5
_EXPECTED = '[2, T, 22, 3] (person, frame, joint, xyz in metres, y-up) with T >= 1'


def title_band_px(panel_px: int) -> int:
  """Height of the title band ``render_strip`` adds above its panels when given a title."""
  return max(24, round(panel_px * 0.2))


def _validate(positions) -> np.ndarray:
  """Returns positions as float64 [2, T, 22, 3] or raises ValueError saying what was wrong."""
  try:
    arr = np.asarray(positions, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'positions must be a numeric array of shape {_EXPECTED}; '
                     f'could not convert a {type(positions).__name__}: {e}') from e
  if arr.ndim != 4 or arr.shape[0] != 2 or arr.shape[2:] != (skeleton.NUM_JOINTS, 3):
    raise ValueError(f'positions must have shape {_EXPECTED}; found shape {arr.shape}. '
                     'Stack the two persons first and convert features to joint positions.')
  if arr.shape[1] < 1:
    raise ValueError(f'positions must have shape {_EXPECTED}; found shape {arr.shape}, '
                     'a clip without frames.')
  bad = ~np.isfinite(arr)
  if bad.any():
    person, frame, joint, _ = np.argwhere(bad)[0]
    raise ValueError(f'positions of shape {_EXPECTED} must be finite; found {int(bad.sum())} '
                     f'NaN/inf values, the first at person {person}, frame {frame}, joint '
                     f'{skeleton.JOINT_NAMES[joint]}.')
  return arr


def _wrap(text: str, width_px: float, font_px: float, max_lines: int) -> list[str]:
  """Wraps text to lines fitting width_px, ending with an ellipsis if it needs more lines."""
  # DejaVu Sans averages about 0.55 em per character; a cheap estimate avoids measuring text.
  chars = max(8, int(width_px / (0.55 * font_px)))
  lines = textwrap.wrap(' '.join(text.split()), chars)
  if len(lines) > max_lines:
    lines = lines[:max_lines]
    lines[-1] = lines[-1][:chars - 1].rstrip() + '\u2026'
  return lines


class _Camera:
  """A fixed perspective camera that sees the whole clip: [..., 3] world -> [..., 2] screen."""

  def __init__(self, pos: np.ndarray, floor_lo: np.ndarray, floor_hi: np.ndarray):
    pts = pos.reshape(-1, 3)
    # Look across the axis of largest horizontal spread (usually the line between the persons
    # or a walking direction) so the two persons overlap as little as possible on screen.
    xz = pts[:, [0, 2]] - pts[:, [0, 2]].mean(axis=0)
    _, vecs = np.linalg.eigh(xz.T @ xz + 1e-9 * np.eye(2))
    minor = vecs[:, 0]
    # Deterministic side: the camera sits towards +z (where a rest-pose body faces).
    if minor[1] < -1e-6 or (abs(minor[1]) <= 1e-6 and minor[0] < 0):
      minor = -minor
    az = np.arctan2(minor[0], minor[1]) + np.deg2rad(_AZIMUTH_OFFSET_DEG)
    el = np.deg2rad(_ELEVATION_DEG)
    to_camera = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    lo = np.array([floor_lo[0], 0.0, floor_lo[1]])
    hi = np.array([floor_hi[0], max(pts[:, 1].max(), 0.0), floor_hi[1]])
    lo[1] = min(pts[:, 1].min(), 0.0)
    target = (lo + hi) / 2
    radius = max(np.linalg.norm(hi - lo) / 2, 0.5)
    # Everything in the box lies in front of the camera, so depths stay positive.
    distance = 1.1 * radius / np.sin(np.deg2rad(_VERTICAL_FOV_DEG) / 2)
    self.eye = target + distance * to_camera
    self.forward = -to_camera
    self.right = np.cross(self.forward, [0.0, 1.0, 0.0])
    self.right /= np.linalg.norm(self.right)
    self.up = np.cross(self.right, self.forward)
    self.distance = distance

  def depth(self, p: np.ndarray) -> np.ndarray:
    return (p - self.eye) @ self.forward

  def project(self, p: np.ndarray) -> np.ndarray:
    rel = p - self.eye
    depth = rel @ self.forward
    return np.stack([rel @ self.right, rel @ self.up], axis=-1) / depth[..., None]


class _Renderer:
  """Draws frames of one clip on a single reused figure; only the moving artists change."""

  def __init__(self, pos: np.ndarray, size_px: int, title: str):
    if int(size_px) < 32:
      raise ValueError(f'size_px must be at least 32 pixels; found {size_px}.')
    self.pos = pos
    self.num_frames = pos.shape[1]
    size_px = int(size_px)
    # dpi == size_px makes the canvas exactly size_px square; sizes below are given in pixels
    # and converted to points with this factor.
    pt = 72.0 / size_px
    self.fig = Figure(figsize=(1, 1), dpi=size_px, facecolor='white')
    self.canvas = FigureCanvasAgg(self.fig)

    font_px = max(9.0, size_px / 30)
    lines = _wrap(title, size_px - 8, font_px, max_lines=3) if title else []
    band_px = len(lines) * 1.25 * font_px + 6 if lines else 0.0
    if lines:
      self.fig.text(0.5, 1 - 3 / size_px, '\n'.join(lines), ha='center', va='top',
                    fontsize=font_px * pt, linespacing=1.1)
    ax = self.fig.add_axes((0, 0, 1, 1 - band_px / size_px))
    ax.set_axis_off()
    self.ax = ax

    # Floor: a grid at y = 0 under the whole clip's horizontal extent.
    xz = pos[..., [0, 2]].reshape(-1, 2)
    span = np.ptp(xz, axis=0).max() + 2 * _FLOOR_MARGIN_M
    step = 0.5 if span <= 6 else 1.0 if span <= 12 else 2.0
    lo = np.floor((xz.min(axis=0) - _FLOOR_MARGIN_M) / step) * step
    hi = np.ceil((xz.max(axis=0) + _FLOOR_MARGIN_M) / step) * step
    self.cam = _Camera(pos, lo, hi)
    corners = np.array([[lo[0], 0, lo[1]], [hi[0], 0, lo[1]], [hi[0], 0, hi[1]],
                        [lo[0], 0, hi[1]]])
    ax.add_collection(PolyCollection([self.cam.project(corners)], facecolors='#f2f2f2',
                                     edgecolors='none', zorder=0))
    grid = [[[x, 0, lo[1]], [x, 0, hi[1]]] for x in np.arange(lo[0], hi[0] + step / 2, step)]
    grid += [[[lo[0], 0, z], [hi[0], 0, z]] for z in np.arange(lo[1], hi[1] + step / 2, step)]
    ax.add_collection(LineCollection(self.cam.project(np.array(grid)), colors='#c8c8c8',
                                     linewidths=1.0 * pt, zorder=1))

    # Limits from every joint of every frame and its floor shadow, with equal screen scale.
    shadow = pos * np.array([1.0, 0.0, 1.0])
    screen = self.cam.project(np.concatenate([pos, shadow]).reshape(-1, 3))
    s_lo, s_hi = screen.min(axis=0), screen.max(axis=0)
    centre = (s_lo + s_hi) / 2
    axes_aspect = (1 - band_px / size_px)  # height / width of the axes box in pixels
    half = max((s_hi[0] - s_lo[0]) / 2, (s_hi[1] - s_lo[1]) / 2 / axes_aspect, 1e-3) * 1.12
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half * axes_aspect, centre[1] + half * axes_aspect)

    is_left = np.isin(_BONES[:, 0], skeleton.LEFT_CHAIN)
    self.bone_colors = np.array(
        [PERSON_LEFT_COLORS[k] if left else PERSON_COLORS[k]
         for k in range(2) for left in is_left])  # [42] person-major
    self.bone_px = max(2.0, size_px / 110)
    self.pt = pt
    self.shadows = LineCollection([], colors='#d0d0d0', linewidths=self.bone_px * pt,
                                  capstyle='round', zorder=2)
    self.bones = LineCollection([], capstyle='round', joinstyle='round', zorder=3)
    self.heads = ax.scatter([0, 0], [0, 0], c=list(PERSON_COLORS), zorder=4,
                            edgecolors='none')
    ax.add_collection(self.shadows)
    ax.add_collection(self.bones)
    self.counter = self.fig.text(1 - 4 / size_px, 4 / size_px, '', ha='right', va='bottom',
                                 fontsize=max(8.0, size_px / 40) * pt, color='#555555')
    # Blitting: the floor, grid and title are drawn once and restored each frame, so only the
    # moving artists are redrawn (re-rendering the title's glyphs dominated the frame time).
    self.dynamic = (self.shadows, self.bones, self.heads, self.counter)
    for artist in self.dynamic:
      artist.set_animated(True)
    self.canvas.draw()
    self.background = self.canvas.copy_from_bbox(self.fig.bbox)

  def frame(self, t: int) -> np.ndarray:
    """[size_px, size_px, 3] uint8 image of frame t."""
    p = self.pos[:, t]  # [2, 22, 3]
    segments3d = np.concatenate([p[k][_BONES] for k in range(2)])  # [42, 2, 3]
    segments = self.cam.project(segments3d)
    depth = self.cam.depth(segments3d.mean(axis=1))
    # Painter's algorithm: far bones first so the nearer person's limbs are drawn on top.
    order = np.argsort(-depth, kind='stable')
    self.bones.set_segments(segments[order])
    self.bones.set_color(self.bone_colors[order])
    # Nearer bones are drawn thicker, a cheap depth cue.
    self.bones.set_linewidths(self.bone_px * self.pt * self.cam.distance / depth[order])
    self.shadows.set_segments(self.cam.project(segments3d * np.array([1.0, 0.0, 1.0])))
    heads = p[:, _HEAD]
    self.heads.set_offsets(self.cam.project(heads))
    head_px = 3.2 * self.bone_px * self.cam.distance / self.cam.depth(heads)
    self.heads.set_sizes((head_px * self.pt) ** 2)
    self.counter.set_text(f'{t + 1}/{self.num_frames}')
    self.canvas.restore_region(self.background)
    for artist in self.dynamic:
      self.fig.draw_artist(artist)
    return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def render_frames(positions, *, title: str = '', size_px: int = 384) -> np.ndarray:
  """Renders every frame of a two-person clip: [2, T, 22, 3] -> [T, size_px, size_px, 3] uint8.

  The camera and view limits are fixed for the whole clip; a non-empty title is drawn in a band
  at the top of each frame, and a ``t/T`` frame counter in the bottom-right corner.
  """
  pos = _validate(positions)
  renderer = _Renderer(pos, size_px, title)
  return np.stack([renderer.frame(t) for t in range(pos.shape[1])])


def _atomic_write(path, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """Calls write(tmp) for a temp file next to path, then renames it onto path.

  A failure anywhere leaves neither a half-written file nor a temp file behind, and an existing
  file at path stays as it was.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  os.close(fd)
  try:
    write(pathlib.Path(tmp))
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def render_gif(positions, path, *, title: str = '', fps: int = 30,
               size_px: int = 384) -> pathlib.Path:
  """Writes a two-person clip [2, T, 22, 3] as an animated GIF of exactly T frames; returns path.

  Frames are ``render_frames``'s (size_px square); each lasts 1/fps (GIF stores whole
  centiseconds, so 30 fps becomes 30 ms, and most viewers slow frames under 20 ms, i.e. above
  50 fps); the animation loops forever.
  """
  if not fps > 0:
    raise ValueError(f'fps must be positive; found {fps}.')
  frames = render_frames(positions, title=title, size_px=size_px)
  # One palette for the whole clip, from the first, middle and last frames, keeps colours from
  # flickering between frames; the few flat colours of the drawing fit in 256 entries.
  sample = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=0)
  palette = Image.fromarray(sample).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
  images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE)
            for f in frames]

  # Every frame differs at least in its counter, so Pillow never merges identical frames and
  # the file keeps exactly T frames.
  def write(tmp: pathlib.Path) -> None:
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, disposal=1)

  return _atomic_write(path, write)


def render_strip(positions, path, *, title: str = '', num_frames: int = 6,
                 panel_px: int = 256) -> pathlib.Path:
  """Writes a PNG of key frames of a two-person clip [2, T, 22, 3] side by side; returns path.

  The n = min(num_frames, T) key frames are evenly spaced with the first and last included. The
  image is ``panel_px * n`` wide and ``panel_px`` tall, plus ``title_band_px(panel_px)`` on top
  when a title is given. All panels share one camera.
  """
  if int(num_frames) < 1:
    raise ValueError(f'num_frames must be at least 1; found {num_frames}.')
  pos = _validate(positions)
  num_t = pos.shape[1]
  n = min(int(num_frames), num_t)
  # floor(x + 0.5) rather than round(): banker's rounding could pick one frame twice.
  times = np.floor(np.linspace(0, num_t - 1, n) + 0.5).astype(int)
  renderer = _Renderer(pos, panel_px, '')
  panels = [renderer.frame(t) for t in times]
  for panel in panels[1:]:
    panel[:, 0] = 200  # A thin grey divider between panels.
  strip = np.concatenate(panels, axis=1)
  if title:
    strip = np.concatenate([_title_band(title, strip.shape[1], title_band_px(panel_px)), strip])
  return _atomic_write(path, lambda tmp: Image.fromarray(strip).save(tmp, format='PNG'))


def _title_band(title: str, width_px: int, height_px: int) -> np.ndarray:
  """[height_px, width_px, 3] uint8 image of the wrapped title, centred, black on white."""
  # dpi == height_px: one inch is the band's height, so 72 / height_px points make a pixel.
  fig = Figure(figsize=(width_px / height_px, 1), dpi=height_px, facecolor='white')
  canvas = FigureCanvasAgg(fig)
  font_px = max(9.0, height_px / 4)
  max_lines = max(1, int((height_px - 6) // (1.2 * font_px)))
  lines = _wrap(title, width_px - 8, font_px, max_lines)
  fig.text(0.5, 0.5, '\n'.join(lines), ha='center', va='center',
           fontsize=font_px * 72.0 / height_px, linespacing=1.1)
  canvas.draw()
  band = np.asarray(canvas.buffer_rgba())[..., :3]
  # figsize * dpi may land a pixel short of width_px in floating point; pad to the exact size.
  out = np.full((height_px, width_px, 3), 255, dtype=np.uint8)
  h, w = min(height_px, band.shape[0]), min(width_px, band.shape[1])
  out[:h, :w] = band[:h, :w]
  return out


class FFmpegNotFoundError(RuntimeError):
  """No ffmpeg binary was found, so no MP4 can be written (GIFs and PNGs still can)."""


def _ffmpeg_exe() -> str | None:
  """The ffmpeg binary bundled with imageio-ffmpeg if installed, else one on PATH, else None."""
  try:
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  except ImportError:
    pass
  else:
    try:
      return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # installed without its binary (e.g. an sdist on an unusual platform)
      pass
  return shutil.which('ffmpeg')


def ffmpeg_available() -> bool:
  """Whether ``render_video`` can write MP4 files on this machine."""
  return _ffmpeg_exe() is not None


def render_video(positions, path, *, title: str = '', fps: int = 30,
                 size_px: int = 384) -> pathlib.Path:
  """Writes a two-person clip [2, T, 22, 3] as an H.264 MP4 of exactly T frames; returns path.

  Frames are ``render_frames``'s (size_px square, padded to an even size), encoded by ffmpeg
  (libx264, yuv420p, so browsers and slide software play it) at fps frames per second. Frames
  are drawn and piped one at a time, so long clips need no more memory than short ones.

  Raises:
    ValueError: bad positions, fps or size_px (nothing is written).
    FFmpegNotFoundError: no ffmpeg binary; ``pip install imageio-ffmpeg`` bundles one.
    RuntimeError: ffmpeg failed; its message is included.
  """
  if not fps > 0:
    raise ValueError(f'fps must be positive; found {fps}.')
  pos = _validate(positions)
  exe = _ffmpeg_exe()
  if exe is None:
    raise FFmpegNotFoundError(
        'render_video needs an ffmpeg binary to write MP4 files and found none: '
        '`pip install imageio-ffmpeg` installs one (it is a dependency of finedual_jax), or put '
        'a system ffmpeg on PATH (e.g. `apt-get install ffmpeg`). render_gif needs no ffmpeg.')
  renderer = _Renderer(pos, size_px, title)
  size = int(size_px)
  even = size + size % 2

  def write(tmp: pathlib.Path) -> None:
    command = [exe, '-nostdin', '-y', '-loglevel', 'error',
               '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', f'{even}x{even}', '-r', str(fps),
               '-i', 'pipe:0', '-an', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-crf', '18',
               '-movflags', '+faststart', '-f', 'mp4', str(tmp)]
    # ffmpeg's messages go to a file, not a pipe: a pipe nobody reads while frames are written
    # could fill up and block both processes.
    with tempfile.TemporaryFile() as log:
      proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=log)
      broken = False
      try:
        for t in range(renderer.num_frames):
          frame = renderer.frame(t)
          if even != size:
            frame = np.pad(frame, ((0, 1), (0, 1), (0, 0)), constant_values=255)
          try:
            proc.stdin.write(frame.tobytes())
          except BrokenPipeError:  # ffmpeg quit early; its log says why
            broken = True
            break
      finally:
        try:
          proc.stdin.close()
        except BrokenPipeError:
          broken = True
        code = proc.wait()
      if code != 0 or broken:
        log.seek(0)
        message = log.read().decode(errors='replace').strip()[-2000:]
        raise RuntimeError(f'ffmpeg ({exe}) failed with exit code {code} writing {path}: '
                           f'{message or "no message"}. A system ffmpeg may lack libx264; '
                           '`pip install imageio-ffmpeg` provides one that has it.')

  return _atomic_write(path, write)

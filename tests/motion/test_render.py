"""Tests for the stick-figure renderer: frame counts, sizes, colours, bad inputs, atomic writes."""

from __future__ import annotations

import os
from unittest import mock
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageSequence

from finedual_jax.motion import render, skeleton

_SIZE = 128  # Small frames keep the tests fast; the drawing is the same at any size.


def _two_persons(num_frames: int, approach_m: float) -> np.ndarray:
  """[2, T, 22, 3] rest poses facing each other, each walking approach_m towards the other."""
  s = np.linspace(0.0, 1.0, num_frames)[:, None, None]
  turn = np.diag([-1.0, 1.0, -1.0])  # Half a turn about y: person 2 faces -z, towards person 1.
  p1 = skeleton.REST_JOINTS + np.array([0.0, 0.0, -1.2]) + s * np.array([0.0, 0.0, approach_m])
  p2 = skeleton.REST_JOINTS @ turn.T + np.array([0.0, 0.0, 1.2]) - s * np.array(
      [0.0, 0.0, approach_m])
  return np.stack([p1, p2])


def _gif_frames(path) -> list[np.ndarray]:
  with Image.open(path) as im:
    return [np.asarray(f.convert('RGB')) for f in ImageSequence.Iterator(im)]


def _fraction_changed(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean(np.any(np.abs(a.astype(int) - b.astype(int)) > 16, axis=-1)))


def _count_near(image: np.ndarray, hex_colour: str, tol: int = 24) -> int:
  rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
  return int(np.sum(np.all(np.abs(image.astype(int) - rgb) <= tol, axis=-1)))


def test_gif_has_one_frame_per_time_step_and_shows_motion(tmp_path):
  num_frames = 12
  path = render.render_gif(_two_persons(num_frames, 0.6), tmp_path / 'clips' / 'a.gif',
                           title='two people walk towards each other', fps=20, size_px=_SIZE)
  assert path == tmp_path / 'clips' / 'a.gif'
  assert path.stat().st_size > 0
  with Image.open(path) as im:
    assert im.n_frames == num_frames
    assert im.info['loop'] == 0
    assert im.info['duration'] == 50
  frames = _gif_frames(path)
  assert len(frames) == num_frames
  assert frames[0].shape == (_SIZE, _SIZE, 3)
  assert _fraction_changed(frames[0], frames[-1]) > 0.01
  # Only the temp-file-free result is left in the folder.
  assert [p.name for p in path.parent.iterdir()] == ['a.gif']


def test_static_motion_gives_near_identical_frames():
  static = render.render_frames(_two_persons(5, 0.0), size_px=_SIZE)
  moving = render.render_frames(_two_persons(5, 0.6), size_px=_SIZE)
  assert static.shape == (5, _SIZE, _SIZE, 3) and static.dtype == np.uint8
  # Only the frame counter changes.
  assert _fraction_changed(static[0], static[-1]) < 0.005
  assert _fraction_changed(moving[0], moving[-1]) > 4 * _fraction_changed(static[0], static[-1])


def test_frames_keep_their_size_with_a_long_title():
  title = 'one person waves while the other walks in a wide circle around them ' * 4
  frames = render.render_frames(_two_persons(2, 0.3), title=title, size_px=_SIZE + 1)
  assert frames.shape == (2, _SIZE + 1, _SIZE + 1, 3)


@pytest.mark.parametrize('title', ['', 'two people shake hands'])
def test_strip_has_the_documented_size(tmp_path, title):
  panel = 96
  path = render.render_strip(_two_persons(20, 0.6), tmp_path / 'strip.png', title=title,
                             num_frames=6, panel_px=panel)
  band = render.title_band_px(panel) if title else 0
  with Image.open(path) as im:
    assert im.size == (6 * panel, panel + band)


def test_strip_of_a_short_clip_has_one_panel_per_frame(tmp_path):
  path = render.render_strip(_two_persons(3, 0.6), tmp_path / 'strip.png', num_frames=6,
                             panel_px=80)
  with Image.open(path) as im:
    assert im.size == (3 * 80, 80)


def test_both_persons_colours_appear(tmp_path):
  path = render.render_strip(_two_persons(8, 0.6), tmp_path / 'strip.png', num_frames=2,
                             panel_px=160)
  with Image.open(path) as im:
    image = np.asarray(im.convert('RGB'))
  for colour in render.PERSON_COLORS:
    assert _count_near(image, colour) > 50, colour


def test_single_frame_clip(tmp_path):
  path = render.render_gif(_two_persons(1, 0.0), tmp_path / 'one.gif', size_px=64)
  with Image.open(path) as im:
    assert im.n_frames == 1


def test_degenerate_positions_render():
  # Every joint at one point: nothing to frame, but rendering must not divide by zero.
  frames = render.render_frames(np.zeros((2, 2, 22, 3)), size_px=64)
  assert frames.shape == (2, 64, 64, 3)


@pytest.mark.parametrize('shape', [(22, 3), (1, 4, 22, 3), (2, 4, 24, 3), (2, 4, 22, 2),
                                   (2, 0, 22, 3), (3, 2, 4, 22, 3)])
def test_bad_shapes_raise_and_write_nothing(tmp_path, shape):
  out = tmp_path / 'out'
  for call in (lambda p: render.render_gif(p, out / 'a.gif'),
               lambda p: render.render_strip(p, out / 'a.png'),
               lambda p: render.render_frames(p)):
    with pytest.raises(ValueError, match=r'\[2, T, 22, 3\]') as info:
      call(np.zeros(shape))
    assert f'found shape {shape}' in str(info.value)
  assert not out.exists()


def test_non_finite_positions_raise_and_write_nothing(tmp_path):
  positions = _two_persons(4, 0.6)
  positions[1, 2, 15, 1] = np.nan
  with pytest.raises(ValueError, match=r'finite.*person 1, frame 2, joint head') as info:
    render.render_gif(positions, tmp_path / 'out' / 'a.gif')
  assert '[2, T, 22, 3]' in str(info.value)
  assert not (tmp_path / 'out').exists()


def test_failed_write_leaves_no_file_and_keeps_old_output(tmp_path, monkeypatch):
  def broken_save(self, fp, *args, **kwargs):
    with open(fp, 'wb') as f:
      f.write(b'half a file')
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', broken_save)
  with pytest.raises(OSError, match='disk full'):
    render.render_gif(_two_persons(2, 0.6), tmp_path / 'new.gif', size_px=64)
  assert list(tmp_path.iterdir()) == []
  old = tmp_path / 'old.png'
  old.write_bytes(b'previous strip')
  with pytest.raises(OSError, match='disk full'):
    render.render_strip(_two_persons(2, 0.6), old, panel_px=64)
  assert list(tmp_path.iterdir()) == [old]
  assert old.read_bytes() == b'previous strip'


_NO_FFMPEG = 'no ffmpeg binary (pip install imageio-ffmpeg, or put ffmpeg on PATH)'


def _mp4_frames(path) -> tuple[dict, list[np.ndarray]]:
  imageio_ffmpeg = pytest.importorskip('imageio_ffmpeg', reason='decoding needs imageio-ffmpeg')
  # By default imageio-ffmpeg starts its decoder with preexec_fn=os.setpgrp: a real fork,
  # which JAX warns about (and which can deadlock) once a test in this worker has run JAX.
  with mock.patch.dict(os.environ, {'IMAGEIO_FFMPEG_NO_PREVENT_SIGINT': '1'}):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta['size']
    return meta, [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]


@pytest.mark.skipif(not render.ffmpeg_available(), reason=_NO_FFMPEG)
def test_mp4_has_one_frame_per_time_step_and_shows_motion(tmp_path):
  num_frames = 12
  path = render.render_video(_two_persons(num_frames, 0.6), tmp_path / 'clips' / 'a.mp4',
                             title='two people walk towards each other', fps=20, size_px=_SIZE)
  assert path == tmp_path / 'clips' / 'a.mp4'
  assert path.stat().st_size > 0
  meta, frames = _mp4_frames(path)
  assert meta['fps'] == 20
  assert len(frames) == num_frames
  assert frames[0].shape == (_SIZE, _SIZE, 3)
  for a, b in zip(frames[:-1], frames[1:]):
    assert np.any(a != b)
  assert _fraction_changed(frames[0], frames[-1]) > 0.01
  # Lossy (chroma subsampling blurs thin coloured lines) but faithful and in order: every
  # decoded frame is close to its drawn frame, and much closer than to the clip's other end.
  drawn = render.render_frames(_two_persons(num_frames, 0.6), size_px=_SIZE,
                               title='two people walk towards each other').astype(int)
  decoded = np.stack(frames).astype(int)
  error = np.abs(decoded - drawn).mean(axis=(1, 2, 3))
  assert error.max() < 4.0
  assert np.all(error < np.abs(decoded - drawn[::-1]).mean(axis=(1, 2, 3))[[0, -1]].min() / 2)
  assert [p.name for p in path.parent.iterdir()] == ['a.mp4']


@pytest.mark.skipif(not render.ffmpeg_available(), reason=_NO_FFMPEG)
def test_mp4_of_odd_size_is_padded_to_even(tmp_path):
  path = render.render_video(_two_persons(3, 0.6), tmp_path / 'odd.mp4', size_px=65)
  _, frames = _mp4_frames(path)
  assert len(frames) == 3 and frames[0].shape == (66, 66, 3)


@pytest.mark.skipif(not render.ffmpeg_available(), reason=_NO_FFMPEG)
def test_mp4_is_written_without_forking_a_running_jax_process(tmp_path):
  # generate.py writes MP4s from the process that sampled: starting ffmpeg must not fork it
  # (subprocess forks for real only with a preexec_fn, and JAX's threads could deadlock the
  # child), and JAX says when something does.
  jnp.ones(2).block_until_ready()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    _, frames = _mp4_frames(render.render_video(_two_persons(2, 0.6), tmp_path / 'a.mp4',
                                                size_px=64))
  assert len(frames) == 2
  assert not [w for w in caught if 'os.fork()' in str(w.message)]


def test_mp4_without_ffmpeg_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setattr(render, '_ffmpeg_exe', lambda: None)
  assert not render.ffmpeg_available()
  with pytest.raises(render.FFmpegNotFoundError, match='pip install imageio-ffmpeg'):
    render.render_video(_two_persons(2, 0.6), tmp_path / 'out' / 'a.mp4')
  assert not (tmp_path / 'out').exists()


def test_mp4_bad_inputs_raise_and_write_nothing(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=r'\[2, T, 22, 3\]'):
    render.render_video(np.zeros((2, 4, 24, 3)), out / 'a.mp4')
  with pytest.raises(ValueError, match='fps must be positive'):
    render.render_video(_two_persons(2, 0.6), out / 'a.mp4', fps=0)
  assert not out.exists()


@pytest.mark.skipif(not render.ffmpeg_available(), reason=_NO_FFMPEG)
def test_failed_mp4_encoding_keeps_old_output(tmp_path, monkeypatch):
  old = tmp_path / 'old.mp4'
  old.write_bytes(b'previous video')
  # A binary that exits with an error stands in for an ffmpeg without libx264.
  monkeypatch.setattr(render, '_ffmpeg_exe', lambda: 'false')
  with pytest.raises(RuntimeError, match='exit code 1'):
    render.render_video(_two_persons(2, 0.6), old, size_px=64)
  assert list(tmp_path.iterdir()) == [old]
  assert old.read_bytes() == b'previous video'

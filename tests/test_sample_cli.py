"""The sample command on a tiny trained run: every artefact for every prompt and sample,
determinism, per-person text sources, and a clear error for each bad input."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from finedual_jax import generation
from finedual_jax import sample
from finedual_jax.data import decompositions
from finedual_jax.motion import bvh
from finedual_jax.motion import render

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = ['Two people hug.', 'One person pushes the other, who stumbles back.']


def _sample(workdir, out_dir, texts=PROMPTS, **settings):
  settings.setdefault('length', '12')
  settings.setdefault('ddim_steps', 3)
  settings.setdefault('video', 'off')
  stream = io.StringIO()
  index = sample.sample_prompts(workdir, sample.make_prompts(texts), out_dir,
                                sample.Settings(**settings), stream=stream)
  return json.loads(index.read_text()), stream.getvalue()


@pytest.fixture(scope='module')
def two_by_two(trained_run, tmp_path_factory):
  _, workdir, _ = trained_run
  out = tmp_path_factory.mktemp('samples')
  video = 'on' if render.ffmpeg_available() else 'off'
  index, printed = _sample(workdir, out, num_samples=2, batch_size=3, video=video)
  return workdir, out, index, printed


def test_every_prompt_and_sample_gets_every_artefact(two_by_two):
  workdir, out, index, printed = two_by_two
  records = index['samples']
  assert [(r['prompt_index'], r['sample']) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  keys = ['features', 'positions', 'gif', 'png', 'bvh_person1', 'bvh_person2']
  keys += ['mp4'] if index['video'] else []
  for record in records:
    assert record['text'] == PROMPTS[record['prompt_index']]
    assert record['person_source'] == 'rule-based' and record['num_frames'] == 12
    for key in keys:
      assert pathlib.Path(record[key]).is_file() and pathlib.Path(record[key]).parent == out
    assert np.load(record['features']).shape == (2, 12, 262)
    positions = np.load(record['positions'])
    assert positions.shape == (2, 12, 22, 3)
    with Image.open(record['gif']) as gif:
      assert gif.n_frames == 12
    parsed = bvh.read_bvh(record['bvh_person2'])
    assert parsed.frames.shape[0] == 12
    assert np.abs(bvh.bvh_joint_positions(parsed)[:, 0] - positions[1, :, 0]).max() < 1e-3
  assert index['checkpoint_step'] >= 6 and index['weights'] == 'ema' and index['ddim_steps'] == 3
  assert index['config']['model']['name'] == 'finedual'
  assert 'per-person texts (rule-based)' in printed and 'sampling [' in printed
  assert f'4 samples in {out}' in printed


def test_samples_depend_on_the_seed_only_not_on_batching(two_by_two, tmp_path):
  workdir, out, index, _ = two_by_two
  again, _ = _sample(workdir, tmp_path / 'a', num_samples=2, batch_size=4)
  for first, second in zip(index['samples'], again['samples']):
    np.testing.assert_allclose(np.load(first['features']), np.load(second['features']),
                               atol=1e-5)
  other, _ = _sample(workdir, tmp_path / 'b', texts=PROMPTS[:1], seed=1)
  assert not np.allclose(np.load(other['samples'][0]['features']),
                         np.load(index['samples'][0]['features']), atol=1e-3)
  draws = [np.load(r['features']) for r in index['samples'][:2]]
  assert not np.allclose(draws[0], draws[1], atol=1e-3)  # Two draws of one prompt differ.


def test_per_person_texts_from_a_decomposition_file(trained_run, tmp_path):
  _, workdir, _ = trained_run
  jsonl = tmp_path / 'dec.jsonl'
  decompositions.write_jsonl(jsonl, [decompositions.Decomposition(
      '7', 0, 'Two people hug.', 'A person opens the arms.', 'A person steps in.', 'llm-x',
      'decompose_v1')])
  prompts = sample.make_prompts(PROMPTS, decompositions=str(jsonl))
  assert prompts[0].person1 == 'A person opens the arms.'
  assert prompts[0].person_source == 'decomposition file (llm-x, decompose_v1)'
  assert prompts[1].person_source == 'rule-based'


@pytest.mark.parametrize('length, message', [
    ('0', 'length must be between 1 and 32 frames'),
    ('33', 'length must be between 1 and 32 frames'),
    ('2s', r'length must be between 1 and 32 frames .* found 60 \(2s\)'),
    ('abc', r'length: expected frames \(e\.g\. 90\) or seconds'),
])
def test_bad_lengths(trained_run, tmp_path, length, message):
  _, workdir, _ = trained_run
  with pytest.raises(ValueError, match=message):
    _sample(workdir, tmp_path, length=length)


def test_bad_texts_and_files(trained_run, tmp_path, monkeypatch):
  _, workdir, _ = trained_run
  with pytest.raises(ValueError, match='the prompt text is empty'):
    sample.make_prompts(['   '])
  with pytest.raises(ValueError, match=r'text is \d+ tokens long, more than the limit of 32'):
    _sample(workdir, tmp_path, texts=['Two people ' + 'slowly ' * 40 + 'hug.'])
  with pytest.raises(ValueError, match='with a prompt file use --decompositions'):
    sample.make_prompts(PROMPTS, 'A person hugs.', 'A person hugs back.')
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    _sample(tmp_path / 'nothing', tmp_path / 'out')
  assert not (tmp_path / 'nothing').exists()  # A reader leaves a mistyped workdir alone.
  bad = tmp_path / 'prompts.txt'
  bad.write_text('# only a comment\n\n')
  with pytest.raises(ValueError, match=rf'{bad}: no prompts'):
    generation.read_prompt_file(bad)
  bad.write_bytes('Deux personnes se saluent \xe0 distance.\n'.encode('latin-1'))
  with pytest.raises(ValueError, match=rf'{bad}: not UTF-8'):
    generation.read_prompt_file(bad)
  monkeypatch.setattr(render, 'ffmpeg_available', lambda: False)
  with pytest.raises(ValueError, match='--video=on but no ffmpeg was found'):
    _sample(workdir, tmp_path, video='on')


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', 'finedual_jax.sample', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_cli_prompt_file_and_bad_input_exit_codes(trained_run, tmp_path):
  _, workdir, _ = trained_run
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('# demo\nTwo people hug.\n\nTwo people bow to each other.\n')
  out = tmp_path / 'out'
  ok = _cli(f'--workdir={workdir}', f'--prompts={prompts}', f'--out_dir={out}', '--length=0.4s',
            '--ddim_steps=2', '--video=off')
  assert ok.returncode == 0, ok.stderr[-2000:]
  index = json.loads((out / 'samples.json').read_text())
  assert [r['text'] for r in index['samples']] == ['Two people hug.',
                                                   'Two people bow to each other.']
  assert index['length'] == 12 and len(list(out.glob('*.bvh'))) == 4
  # The other bad inputs are checked in-process above; here only that they exit non-zero.
  for args, message in (
      ([f'--workdir={workdir}'], 'give exactly one of --text and --prompts'),
      ([f'--workdir={tmp_path / "none"}', '--text=Two people hug.'], 'no checkpoint in'),
  ):
    bad = _cli(*args)
    assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr[-1000:])

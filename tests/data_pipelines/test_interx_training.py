"""Rotation-only Inter-X end to end: build with artefacts, read 138-d batches, train, sample.

Uses the .h5 fixture of test_interx_builder (no SMPL-X model, so position losses are off).
"""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import prepare
from experiments import default
from finedual_jax import trainer
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline
from finedual_jax.data import representation
from finedual_jax.motion import rotation_features

import test_interx_builder as fixture


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('interx_raw')
  fixture._write_layout(root)
  return prepare.prepare_interx(root, tmp_path_factory.mktemp('interx_tfds'), vocab_size=200)


def test_build_has_rotation_statistics_and_a_tokenizer(dataset_dir):
  assert dataset_dir.parts[-3:] == ('interx', 'rotations', '0.1.0')
  assert prepare.is_complete(dataset_dir)
  artifacts = pipeline.load_artifacts(dataset_dir)
  assert artifacts.representation is representation.ROTATIONS
  assert artifacts.mean.shape == artifacts.std.shape == (rotation_features.FEATURE_DIM,)
  source = pipeline.data_source(dataset_dir, 'train')
  rows = np.concatenate([rotation_features.rotation_pair_features(source[i]['motion'])
                         .reshape(-1, rotation_features.FEATURE_DIM) for i in range(len(source))])
  np.testing.assert_allclose(artifacts.mean, rows.mean(axis=0), atol=1e-4)


def test_eval_batches_are_the_normalised_rotation_features(dataset_dir):
  artifacts = pipeline.load_artifacts(dataset_dir)
  loader = pipeline.make_loader(dataset_dir, 'val', artifacts, batch_size=2, max_len=24,
                                max_text_len=32, train=False, seed=0, num_epochs=1)
  batch = next(iter(loader))
  batch_lib.check(batch, 2, 24, 32, rotation_features.FEATURE_DIM)
  element = pipeline.data_source(dataset_dir, 'val')[0]
  feats = rotation_features.rotation_pair_features(element['motion'][:25])  # [2, <=24, 138]
  rows = feats.shape[1]
  np.testing.assert_allclose(batch['motion'][0, :rows],
                             artifacts.normalise(feats.transpose(1, 0, 2)), atol=1e-5)
  assert np.all(batch['motion'][0, rows:] == 0) and batch['mask'][0].sum() == rows


def test_training_switches_position_losses_off_and_samples_rotation_features(
    dataset_dir, tmp_path, capsys):
  config = default.get_config('size=tiny')
  config.data.source = 'tfds'
  config.data.dataset_dir = str(dataset_dir)
  config.parallel.num_devices = 1
  config.train.batch_size = 2
  config.train.num_steps = 2
  config.sample.length = 12
  config.sample.text = fixture.CAPTIONS[1]  # Within the fixture's tiny vocabulary.
  config.sample.person1 = config.sample.person2 = ''  # The rule-based split.
  summary = trainer.train_and_evaluate(config, tmp_path / 'run')
  out = capsys.readouterr().out
  assert 'rotations representation without joint positions; losses off: ' in out
  off = out.split('losses off: ')[1].splitlines()[0].split(', ')
  assert set(off) == set(representation.POSITION_TERMS)
  assert {'simple', 'individual_nce', 'overall_nce'} <= set(summary['metrics'])
  assert not set(summary['metrics']) & set(representation.POSITION_TERMS)
  assert np.isfinite(summary['metrics']['total'])
  [record] = summary['samples']
  assert record['representation'] == 'rotations' and record['positions_exact'] is False
  assert np.load(record['features']).shape == (2, 12, rotation_features.FEATURE_DIM)
  assert np.load(record['positions']).shape == (2, 12, 22, 3)

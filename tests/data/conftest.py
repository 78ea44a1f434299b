"""Fixtures shared by the input-pipeline tests: a small synthetic InterHuman build."""

from __future__ import annotations

import pytest

from data_pipelines import prepare
from finedual_jax.data import pipeline


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
  raw_dir = tmp_path_factory.mktemp('synthetic') / 'interhuman'
  return prepare.prepare_synthetic(raw_dir, tmp_path_factory.mktemp('tfds'), clips_per_type=2)


@pytest.fixture(scope='module')
def artifacts(dataset_dir):
  return pipeline.load_artifacts(dataset_dir)

"""Precomputed frozen text features in place of the learned token encoder: the feature file,
the pipeline's batches, every denoiser's symmetries, and a tiny training run that samples."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import prepare
from data_pipelines import text_features as text_features_tool
from experiments import default
from finedual_jax import trainer
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline
from finedual_jax.data import text_features

import test_denoiser as denoiser_tests

LF, DF = 6, 12  # Feature tokens and width of the fake frozen encoder.


def _fake_encoder(texts, length=LF, dim=DF):
  """Deterministic stand-in for a frozen encoder: per-text seeded features, lengths 2..LF."""
  features = np.zeros((len(texts), length, dim), np.float32)
  lengths = np.zeros(len(texts), np.int32)
  for i, text in enumerate(texts):
    rng = np.random.default_rng(abs(hash(text_features.normalise_text(text))) % 2**32)
    lengths[i] = 2 + len(text.split()) % (length - 1)
    features[i, :lengths[i]] = rng.normal(size=(lengths[i], dim))
  return features, lengths


# --- The feature file -----------------------------------------------------------------------

def test_bank_round_trip_and_lookup(tmp_path):
  texts = ['Two people bow.', 'A person bows.', 'A  person   bows back.']
  features, lengths = _fake_encoder(texts)
  path = text_features_tool.write_bank(tmp_path / 'f.npz', texts, features, lengths)
  bank = text_features.TextFeatureBank(path)
  assert (bank.max_len, bank.dim) == (LF, DF)
  got, mask = bank.lookup(['A person bows back.', 'Two people bow.'])  # Whitespace-collapsed.
  np.testing.assert_array_equal(got[0], features[2])
  np.testing.assert_array_equal(mask[1], np.arange(LF) < lengths[0])
  with pytest.raises(ValueError, match=r"text 'Nobody moves\.' has no features in .*f\.npz"):
    bank.lookup(['Nobody moves.'])


@pytest.mark.parametrize('arrays, pattern', [
    (dict(texts=np.array(['a']), features=np.zeros((1, 2, 3), np.float32)), r'missing array.*lengths'),
    (dict(texts=np.array(['a']), features=np.zeros((2, 2, 3), np.float32), lengths=np.array([1])),
     r'"features" must be float \[N=1, L, D\]'),
    (dict(texts=np.array(['a']), features=np.zeros((1, 2, 3), np.float32), lengths=np.array([3])),
     r'"lengths" must lie in 1\.\.2'),
    (dict(texts=np.array(['a', 'a ']), features=np.zeros((2, 2, 3), np.float32),
          lengths=np.array([1, 1])), r"text 'a' appears twice"),
    (dict(texts=np.array(['a']), features=np.full((1, 2, 3), np.nan, np.float32),
          lengths=np.array([1])), 'NaN'),
])
def test_bank_rejects_bad_files_naming_them(tmp_path, arrays, pattern):
  path = tmp_path / 'bad.npz'
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=pattern) as info:
    text_features.TextFeatureBank(path)
  assert str(path) in str(info.value)


# --- Every denoiser on frozen features ------------------------------------------------------

def _feature_inputs():
  x, t, mask, _, _ = denoiser_tests._inputs()
  keys = jax.random.split(jax.random.key(5), 2)
  b = x.shape[0]
  text_mask = (jnp.arange(LF)[None, :] < jnp.array([4, 6])[:, None]).astype(jnp.float32)
  person_mask = (jnp.arange(LF)[None, None, :] <
                 jnp.array([[3, 5], [6, 2]])[:, :, None]).astype(jnp.float32)
  text = batch_lib.TextFeatures(jax.random.normal(keys[0], (b, LF, DF)) * text_mask[..., None],
                                text_mask)
  persons = batch_lib.TextFeatures(
      jax.random.normal(keys[1], (b, 2, LF, DF)) * person_mask[..., None], person_mask)
  return x, t, mask, text, persons


@pytest.fixture(scope='module', params=sorted(denoiser_tests.VARIANTS))
def frozen_setup(request):
  model = denoiser_tests._model(request.param)
  x, t, mask, text, persons = _feature_inputs()
  params = jax.jit(model.init)(jax.random.key(3), x, t, mask, text, persons)['params']
  assert 'token_embed' not in json.dumps(jax.tree.map(lambda a: 0, params))
  params = denoiser_tests.perturb(params)
  apply = jax.jit(lambda *a: model.apply({'params': params}, *a))
  return request.param, apply, (x, t, mask, text, persons)


def test_frozen_features_keep_person_swap_equivariance(frozen_setup):
  variant, apply, (x, t, mask, text, persons) = frozen_setup
  out, _ = apply(x, t, mask, text, persons)
  swapped_persons = jax.tree.map(lambda a: a[:, ::-1], persons)
  swapped, _ = apply(x[:, :, ::-1], t, mask, text, swapped_persons)
  np.testing.assert_allclose(np.asarray(swapped), np.asarray(out[:, :, ::-1]), atol=1e-5)


def test_padded_feature_tokens_never_matter_and_valid_ones_do(frozen_setup):
  variant, apply, (x, t, mask, text, persons) = frozen_setup
  out, _ = apply(x, t, mask, text, persons)
  noisy = text._replace(features=jnp.where(text.mask[..., None] > 0, text.features, 7.0))
  out2, _ = apply(x, t, mask, noisy, persons)
  np.testing.assert_allclose(np.asarray(out2), np.asarray(out), atol=1e-5)
  changed = text._replace(features=text.features.at[:, 0].add(1.0))
  out3, _ = apply(x, t, mask, changed, persons)
  assert not np.allclose(np.asarray(out3), np.asarray(out), atol=1e-4)


# --- Data to samples ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('frozen')
  dataset_dir = prepare.prepare_synthetic(root / 'raw', root / 'tfds', clips_per_type=2)
  texts_file = root / 'texts.txt'
  assert text_features_tool.main(['--dataset_dir', str(dataset_dir), '--out',
                                  str(texts_file)]) == 0
  texts = texts_file.read_text(encoding='utf-8').splitlines()
  texts += ['Two people bow to each other.', 'A person bows to the other person.',
            'A person bows back.']  # The sampled prompt must be in the file too.
  bank_path = text_features_tool.write_bank(root / 'features.npz', texts, *_fake_encoder(texts))
  return dataset_dir, bank_path


def test_batches_carry_the_features_of_their_texts(built):
  dataset_dir, bank_path = built
  artifacts = pipeline.load_artifacts(dataset_dir, text_features_file=str(bank_path))
  loader = pipeline.make_loader(dataset_dir, 'val', artifacts, batch_size=2, max_len=40,
                                max_text_len=48, train=False, seed=0, num_epochs=1)
  batch = next(iter(loader))
  batch_lib.check(batch, 2, 40, 48, text_features=(LF, DF))
  element = pipeline.data_source(dataset_dir, 'val')[0]
  decode = lambda v: v.decode('utf-8') if isinstance(v, bytes) else v
  want, want_mask = artifacts.text_features.lookup(
      [decode(element[k][0]) for k in ('captions', 'person1_texts', 'person2_texts')])
  np.testing.assert_array_equal(batch[batch_lib.TEXT_FEATURES][0], want[0])
  np.testing.assert_array_equal(batch[batch_lib.PERSON_FEATURES][0], want[1:])
  np.testing.assert_array_equal(batch[batch_lib.PERSON_FEATURE_MASK][0], want_mask[1:])


def test_training_and_sampling_on_frozen_features(built, tmp_path):
  dataset_dir, bank_path = built
  config = default.get_config('size=tiny')
  config.data.source = 'tfds'
  config.data.dataset_dir = str(dataset_dir)
  config.data.text_features_file = str(bank_path)
  config.parallel.num_devices = 1
  config.train.num_steps = 2
  config.sample.text = 'Two people bow to each other.'
  config.sample.person1 = 'A person bows to the other person.'
  config.sample.person2 = 'A person bows back.'
  config.sample.length = 10
  summary = trainer.train_and_evaluate(config, tmp_path / 'run')
  assert np.isfinite(summary['metrics']['total'])
  assert np.load(summary['samples'][0]['features']).shape == (2, 10, 262)
  _, model, state, artifacts, _ = trainer.load_trained(tmp_path / 'run')
  assert 'feature_proj' in state.params['text']['text_encoder']
  assert artifacts.text_feature_shape == (LF, DF)

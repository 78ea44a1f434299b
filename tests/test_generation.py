"""The sampler's batch chunks: a batch sampled a few examples at a time inside the one compiled
program gives the rows sampling it whole gives, and one example at a time (a CPU's default at
the bench size) makes each row independent of the batch it is in."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import default
from finedual_jax import generation
from finedual_jax import trainer
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.models.factory import build_model


@pytest.fixture(scope='module')
def tiny():
  config = default.get_config('size=tiny')
  model = build_model(config.model, vocab_size=64, max_text_len=config.data.max_text_len)
  params = trainer.init_params(model, config, jax.random.key(0))
  n, length, text_len = 5, 20, config.data.max_text_len
  inputs = (jax.random.normal(jax.random.key(1), (n, length, 2, model.feature_dim)),
            jnp.ones((n, length)).at[1, 15:].set(0.0),  # Row 1 is 15 frames long.
            jax.random.randint(jax.random.key(2), (n, text_len), 1, 64),
            jax.random.randint(jax.random.key(3), (n, 2, text_len), 1, 64))

  def sample(chunk, rows=slice(None)):
    fn = generation.make_sampler(model, Schedule.cosine(config.diffusion.num_steps),
                                 w_overall=2.0, w_individual=1.0, ddim_steps=3, chunk=chunk)
    return np.asarray(fn(params, *(a[rows] for a in inputs)))

  return sample


@pytest.mark.parametrize('chunk', [1, 2, 3])  # 2 and 3: the last chunk is padded.
def test_chunks_give_the_whole_batchs_samples(tiny, chunk):
  whole = tiny(0)
  assert whole.shape[0] == 5 and np.all(np.isfinite(whole))
  np.testing.assert_allclose(tiny(chunk), whole, rtol=1e-5, atol=1e-5)


def test_one_example_at_a_time_does_not_depend_on_the_batch(tiny):
  batch = tiny(1)
  np.testing.assert_array_equal(tiny(1, slice(2, 3))[0], batch[2])
  np.testing.assert_array_equal(tiny(1, slice(1, 3)), batch[1:3])


def test_chunk_size_defaults_per_backend_and_size_and_reads_the_environment(monkeypatch):
  monkeypatch.delenv(generation.CHUNK_ENV, raising=False)
  if jax.default_backend() == 'cpu':
    assert generation.sample_chunk_size(300, 512) == 1  # bench: one example's 1,800 rows.
    assert generation.sample_chunk_size(300, 1024) == 1  # Never less than one.
    assert generation.sample_chunk_size(32, 32) == generation.CPU_CHUNK_ELEMENTS // (6 * 32 * 32)
  else:
    assert generation.sample_chunk_size(300, 512) == 0
  monkeypatch.setenv(generation.CHUNK_ENV, '0')
  assert generation.sample_chunk_size(300, 512) == 0
  monkeypatch.setenv(generation.CHUNK_ENV, '4')
  assert generation.sample_chunk_size(32, 32) == 4
  for bad in ('-1', 'two'):
    monkeypatch.setenv(generation.CHUNK_ENV, bad)
    with pytest.raises(ValueError, match=f"{generation.CHUNK_ENV}: expected .* found '{bad}'"):
      generation.sample_chunk_size(300, 512)

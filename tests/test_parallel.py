"""The data-parallel step: 8 devices give the same parameters as 1 for the same global batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax import parallel
from finedual_jax import train_state
from finedual_jax import train_step
from finedual_jax.diffusion import losses
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.models.denoiser import FineDualDenoiser

GLOBAL_BATCH, T, L, V = 8, 16, 8, 40


def _batches(num):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(num):
    mask = (np.arange(T)[None] < rng.integers(4, T + 1, size=(GLOBAL_BATCH, 1))).astype(np.float32)
    out.append({'motion': (rng.normal(size=(GLOBAL_BATCH, T, 2, 262)) * mask[..., None, None]
                           ).astype(np.float32),
                'mask': mask,
                'text_tokens': rng.integers(1, V, size=(GLOBAL_BATCH, L)).astype(np.int32),
                'person_tokens': rng.integers(1, V, size=(GLOBAL_BATCH, 2, L)).astype(np.int32)})
  return out


def _train(num_devices, batches):
  mesh = parallel.make_mesh(num_devices)
  model = FineDualDenoiser(vocab_size=V, width=32, num_heads=2, ff_dim=64, text_width=32,
                           text_layers=1, text_heads=2, max_text_len=L, graph_hidden=16,
                           embed_dim=16)
  tx = train_state.make_optimizer(learning_rate=1e-3, warmup_steps=1, total_steps=10,
                                  weight_decay=1e-4, clip_norm=1.0)
  b = batches[0]
  params = model.init(jax.random.key(0), b['motion'][:1], jnp.zeros((1,), jnp.int32),
                      b['mask'][:1], b['text_tokens'][:1], b['person_tokens'][:1])['params']
  state = parallel.replicate(train_state.create(params, tx, jax.random.key(1)), mesh)
  # Every loss term on, InfoNCE included: its negatives come from the global batch.
  weights = dict(losses.INTERGEN_WEIGHTS, distance_regression=1.0, individual_nce=0.1,
                 overall_nce=0.1)
  step = parallel.data_parallel(train_step.make_train_step(
      model, tx, Schedule.cosine(1000), mean=jnp.zeros(262), std=jnp.ones(262), cond_drop_p=0.1,
      loss_weights=weights, geometric_max_t=700, nce_temperature=0.1, ema_decay=0.9), mesh)
  totals = []
  for batch in batches:
    state, metrics = step(state, parallel.to_device(batch, mesh))
    totals.append(float(metrics['total']))  # Block every step (DESIGN §7).
    assert {'distance_regression', 'individual_nce', 'overall_nce'} <= set(metrics)
  return jax.device_get(state), totals


def test_eight_devices_match_one_device():
  assert jax.device_count() >= 8, 'tests/conftest.py should give 8 fake CPU devices'
  batches = _batches(3)
  one, losses_one = _train(1, batches)
  eight, losses_eight = _train(8, batches)
  np.testing.assert_allclose(losses_eight, losses_one, rtol=1e-5)
  compared = []

  def close(path, x, y):
    # Attention key biases get an exactly-zero gradient (softmax ignores a constant added to
    # every logit of a query); Adam divides their round-off by eps = 1e-8 and moves them by up
    # to 1e-5 in either direction, whatever the device count. Every other leaf must match.
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      assert np.abs(x).max() < 1e-4, name
      return
    np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
    compared.append(name)

  for tree_one, tree_eight in ((one.params, eight.params), (one.ema_params, eight.ema_params)):
    jax.tree_util.tree_map_with_path(close, tree_one, tree_eight)
  assert len(compared) > 100
  assert int(one.step) == int(eight.step) == 3
  # The run did move: parameters differ from a fresh init (the zero head has learned).
  assert np.abs(np.asarray(one.params['head']['proj']['kernel'])).max() > 0


def test_batch_must_split_over_devices():
  mesh = parallel.make_mesh(8)
  with pytest.raises(ValueError, match='multiple of the number of devices'):
    parallel.local_batch_size(12, mesh)


def test_mesh_rejects_too_many_devices():
  with pytest.raises(ValueError, match='num_devices'):
    parallel.make_mesh(jax.device_count() + 1)

"""The data-parallel step: 8 devices give the same parameters as 1 for the same global batch, and so
do the pmap backend and gradient accumulation; a non-finite loss skips the update on the device."""

import functools

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


def _model():
  # One block of each kind and one graph round: the data-parallel mechanics under test do not
  # depend on depth, and each configuration below is one more compile of the whole step.
  return FineDualDenoiser(vocab_size=V, width=32, num_heads=2, ff_dim=64, individual_layers=1,
                          interaction_layers=1, refinement_layers=1, text_width=32,
                          text_layers=1, text_heads=2, max_text_len=L, graph_hidden=16,
                          graph_rounds=1, embed_dim=16)


def _optimizer():
  return train_state.make_optimizer(learning_rate=1e-3, warmup_steps=1, total_steps=10,
                                    weight_decay=1e-4, clip_norm=1.0)


@functools.cache
def _initial_state():
  """The state every configuration starts from, on the host (initialised once)."""
  b = _batches(1)[0]
  params = jax.jit(_model().init)(jax.random.key(0), b['motion'][:1], jnp.zeros((1,), jnp.int32),
                                  b['mask'][:1], b['text_tokens'][:1], b['person_tokens'][:1]
                                  )['params']
  state = train_state.create(params, _optimizer(), jax.random.key(1))
  # On the host, the key as raw data: the steps donate (delete) the device arrays they get.
  return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


@functools.cache
def _setup(num_devices, backend='shard_map', grad_accum_steps=1, nce=True,
           compute_dtype=jnp.float32):
  """(DataParallel, compiled step, initial state on the host); cached, so one compile each."""
  dp = parallel.DataParallel(parallel.make_mesh(num_devices), backend)
  # Every loss term on, InfoNCE included: its negatives come from the global batch. Under
  # gradient accumulation they come from the micro-batch instead, so the accumulation test
  # switches InfoNCE off to compare exactly.
  nce_weight = 0.1 if nce else 0.0
  weights = dict(losses.INTERGEN_WEIGHTS, distance_regression=1.0, individual_nce=nce_weight,
                 overall_nce=nce_weight)
  step = dp.compile(train_step.make_train_step(
      _model(), _optimizer(), Schedule.cosine(1000), mean=jnp.zeros(262), std=jnp.ones(262),
      cond_drop_p=0.1, loss_weights=weights, geometric_max_t=700, nce_temperature=0.1,
      ema_decay=0.9, grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype),
      donate=True)
  return dp, step, _initial_state()


@functools.cache
def _train(num_devices, backend='shard_map', grad_accum_steps=1, nce=True,
           compute_dtype=jnp.float32, num_steps=3):
  """``num_steps`` steps on the same global batches: (final state on the host, losses)."""
  dp, step, state = _setup(num_devices, backend, grad_accum_steps, nce, compute_dtype)
  state = dp.put(state.replace(rng=jax.random.wrap_key_data(state.rng)))
  totals = []
  for batch in _batches(num_steps):
    state, metrics = step(state, dp.to_device(batch))
    metrics = dp.fetch(metrics)  # Blocks every step (DESIGN §7).
    totals.append(metrics['total'])
    assert metrics['update_skipped'] == 0
    if nce:
      assert {'distance_regression', 'individual_nce', 'overall_nce'} <= set(metrics)
  return jax.device_get(dp.get(state)), totals


def _assert_same_parameters(a, b, atol=1e-5):
  compared = []

  def close(path, x, y):
    # Attention key biases get an exactly-zero gradient (softmax ignores a constant added to
    # every logit of a query); Adam divides their round-off by eps = 1e-8 and moves them by up
    # to 1e-5 in either direction, whatever the device count. Every other leaf must match.
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      assert np.abs(x).max() < 1e-4, name
      return
    np.testing.assert_allclose(x, y, atol=atol, err_msg=name)
    compared.append(name)

  for tree_a, tree_b in ((a.params, b.params), (a.ema_params, b.ema_params)):
    jax.tree_util.tree_map_with_path(close, tree_a, tree_b)
  assert len(compared) > 100
  assert int(a.step) == int(b.step) == 3
  # The run did move: parameters differ from a fresh init (the zero head has learned).
  assert np.abs(np.asarray(a.params['head']['proj']['kernel'])).max() > 0


def test_eight_devices_match_one_device():
  assert jax.device_count() >= 8, 'tests/conftest.py should give 8 fake CPU devices'
  one, losses_one = _train(1)
  eight, losses_eight = _train(8)
  np.testing.assert_allclose(losses_eight, losses_one, rtol=1e-5)
  _assert_same_parameters(one, eight)


def test_pmap_backend_matches_shard_map():
  """The same per-device step through jax.pmap (the state carries a leading device axis, but
  only inside parallel.py) gives the parameters of the shard_map run."""
  sharded, losses_sharded = _train(8)
  pmapped, losses_pmapped = _train(8, 'pmap')
  np.testing.assert_allclose(losses_pmapped, losses_sharded, rtol=1e-6)
  _assert_same_parameters(sharded, pmapped, atol=1e-6)


def test_gradient_accumulation_matches_the_whole_batch_at_once():
  """Batch 8 on 2 devices as 2 micro-batches of 4 (2 rows per device each) = batch 8 at once."""
  whole, losses_whole = _train(2, nce=False)
  accumulated, losses_accumulated = _train(2, grad_accum_steps=2, nce=False)
  np.testing.assert_allclose(losses_accumulated, losses_whole, rtol=1e-5)
  # The micro-batch means are summed in another order than the whole batch's mean; where a
  # gradient entry is near zero, Adam's normalised step carries that round-off into the
  # parameters (up to 2.6e-5 after three steps, one entry of a graph kernel, on JAX 0.8.2).
  _assert_same_parameters(whole, accumulated, atol=5e-5)


def test_a_non_finite_loss_skips_the_update_on_the_device():
  # The step of _train(2, nce=False), compiled already (functools.cache: same arguments, same way).
  dp, step, host_state = _setup(2, 'shard_map', 1, False, jnp.float32)
  batch = _batches(1)[0]
  batch['motion'][3, 0, 0, 0] = np.nan  # One value of one example.
  state, metrics = step(dp.put(host_state.replace(rng=jax.random.wrap_key_data(host_state.rng))),
                        dp.to_device(batch))
  metrics = dp.fetch(metrics)
  assert not np.isfinite(metrics['total'])
  assert metrics['update_skipped'] == 1 and metrics['skipped_steps'] == 1
  state = jax.device_get(dp.get(state))
  assert int(state.step) == 1 and int(state.skipped_steps) == 1
  for before, after in ((host_state.params, state.params),
                        (host_state.ema_params, state.ema_params),
                        (host_state.opt_state, state.opt_state)):
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      np.testing.assert_array_equal(x, y)


def test_bfloat16_compute_tracks_the_float32_losses():
  """Mixed precision: ten steps with the denoiser in bfloat16 follow the float32 run's losses
  within 1% at every step (0.2% measured after ten, on 8 devices) while parameters, EMA and
  optimizer state stay float32."""
  full, losses_full = _train(8, num_steps=10)  # The step of the eight-device test, compiled.
  half, losses_half = _train(8, compute_dtype=jnp.bfloat16, num_steps=10)
  relative = np.abs(np.asarray(losses_half) - losses_full) / np.asarray(losses_full)
  assert relative.max() < 0.01, relative
  assert relative.max() > 0  # It did compute in bfloat16.
  for tree in (half.params, half.ema_params, half.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} == {
        np.dtype(np.float32)}


def test_batch_must_split_over_devices():
  mesh = parallel.make_mesh(8)
  with pytest.raises(ValueError, match='multiple of the number of devices'):
    parallel.local_batch_size(12, mesh)
  with pytest.raises(ValueError, match='grad_accum_steps'):
    parallel.local_batch_size(8, mesh, grad_accum_steps=2)


def test_mesh_rejects_too_many_devices():
  with pytest.raises(ValueError, match='num_devices'):
    parallel.make_mesh(jax.device_count() + 1)
  with pytest.raises(ValueError, match='backend'):
    parallel.DataParallel(parallel.make_mesh(1), 'pjit')


def test_cpu_meshes_take_host_batches_and_the_step_places_their_rows():
  # On CPU devices to_device hands the host arrays over; the compiled step must then give each
  # device its own rows, exactly as with arrays placed by device_put.
  mesh = parallel.make_mesh(8)
  batch = _batches(1)[0]
  host = parallel.to_device(batch, mesh)
  assert all(isinstance(v, np.ndarray) for v in host.values())

  def per_device(state, b):  # Weighs each device's rows by its index: misplaced rows show.
    weight = jax.lax.axis_index(parallel.DATA_AXIS) + 1.0
    return state, {'sum': jax.lax.psum(weight * jnp.sum(b['mask']), parallel.DATA_AXIS)}

  step = parallel.data_parallel(per_device, mesh)
  placed = jax.device_put(host, parallel.batch_sharding(mesh))
  expected = sum((d + 1) * batch['mask'][d].sum() for d in range(GLOBAL_BATCH))
  for given in (host, placed):
    _, metrics = step(jnp.zeros(()), given)
    np.testing.assert_allclose(float(metrics['sum']), expected, rtol=1e-6)

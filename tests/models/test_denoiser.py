"""Denoiser shapes, person-swap equivariance, padding invariance and conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.models.denoiser import FineDualDenoiser

B, T, L, V = 2, 12, 8, 50


@pytest.fixture(scope='module')
def setup():
  model = FineDualDenoiser(vocab_size=V, width=32, num_heads=2, ff_dim=64, text_width=32,
                           text_layers=1, text_heads=2, max_text_len=L)
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (B, T, 2, 262))
  t = jnp.array([10, 700])
  mask = jnp.ones((B, T)).at[1, 9:].set(0.0)
  text = jax.random.randint(keys[1], (B, L), 4, V).at[:, 6:].set(0)
  persons = jax.random.randint(keys[2], (B, 2, L), 4, V).at[:, :, 5:].set(0)
  params = model.init(keys[3], x, t, mask, text, persons)['params']
  # The head is zero-initialised (the prediction starts at 0); perturb every weight so the
  # invariance tests see a network that actually mixes its inputs.
  leaves, tree = jax.tree.flatten(params)
  noise = jax.random.split(jax.random.key(9), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, noise)])
  apply = jax.jit(lambda *a: model.apply({'params': params}, *a))
  return apply, x, t, mask, text, persons


def test_output_shape_and_zero_init_head():
  model = FineDualDenoiser(vocab_size=V, width=32, num_heads=2, ff_dim=64, text_width=32,
                           text_layers=1, text_heads=2, max_text_len=L)
  x = jnp.ones((B, T, 2, 262))
  args = (x, jnp.zeros((B,), jnp.int32), jnp.ones((B, T)), jnp.ones((B, L), jnp.int32),
          jnp.ones((B, 2, L), jnp.int32))
  params = model.init(jax.random.key(0), *args)
  out = model.apply(params, *args)
  assert out.shape == (B, T, 2, 262)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_swapping_persons_and_their_texts_swaps_the_output(setup):
  apply, x, t, mask, text, persons = setup
  out = apply(x, t, mask, text, persons)
  swapped = apply(x[:, :, ::-1], t, mask, text, persons[:, ::-1])
  np.testing.assert_allclose(np.asarray(swapped), np.asarray(out[:, :, ::-1]), atol=1e-5)
  # Swapping only the motion (not the texts) is a different input and gives a different output.
  assert not np.allclose(np.asarray(apply(x[:, :, ::-1], t, mask, text, persons)),
                         np.asarray(out[:, :, ::-1]), atol=1e-3)


def test_padding_never_changes_valid_outputs(setup):
  apply, x, t, mask, text, persons = setup
  out = apply(x, t, mask, text, persons)
  x_garbage = x.at[1, 9:].set(1e3)
  text_garbage = text  # Text padding is id 0 by contract; garbage goes in motion padding only.
  out2 = apply(x_garbage, t, mask, text_garbage, persons)
  np.testing.assert_allclose(np.asarray(out2[1, :9]), np.asarray(out[1, :9]), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out2[0]), np.asarray(out[0]), atol=1e-5)


def test_texts_and_condition_dropout_change_the_prediction(setup):
  apply, x, t, mask, text, persons = setup
  out = np.asarray(apply(x, t, mask, text, persons))
  other_text = np.asarray(apply(x, t, mask, text[::-1], persons))
  assert not np.allclose(out, other_text, atol=1e-3)
  yes, no = jnp.ones((B,), bool), jnp.zeros((B,), bool)
  dropped = np.asarray(apply(x, t, mask, text, persons, yes, no))
  # With the overall text dropped, its content no longer matters.
  dropped_other = np.asarray(apply(x, t, mask, text[::-1], persons, yes, no))
  np.testing.assert_allclose(dropped, dropped_other, atol=1e-5)
  assert not np.allclose(dropped, out, atol=1e-3)

"""The Flax InterCLIP evaluator alone: shapes, scale, padding invariance, the CLIP loss."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.evaluation import evaluator as ev

B, T, L = 4, 12, 16
LENGTHS = np.array([12, 7, 3, 1])


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(B, T, 2, 262)).astype(np.float32)
  mask = (np.arange(T)[None] < LENGTHS[:, None]).astype(np.float32)
  tokens = np.zeros((B, L), np.int32)
  for i, n in enumerate([14, 9, 4, 1]):  # Start token 62, n ids, end token 63, padding 0.
    tokens[i, :n + 2] = [62] + list(rng.integers(1, 62, n)) + [63]
  return features, mask, tokens


@functools.cache
def _params():
  """Random params in the model's tree (NumPy-drawn: faster than compiling ``init``)."""
  model = ev.InterCLIP(**ev.tiny_config())
  shapes = jax.eval_shape(model.init, jax.random.key(0), *_inputs())['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), jnp.float32),
                        shapes)
  params['latent_scale'] = jnp.array([2.5])
  return params


def _model_and_params(**overrides):
  """The tiny model with behaviour-only ``overrides`` (no parameter changes), and its params."""
  return ev.InterCLIP(**ev.tiny_config(**overrides)), _params()


@functools.partial(jax.jit, static_argnums=0)
def _motion(model, params, features, mask):
  return model.apply({'params': params}, features, mask, method=ev.InterCLIP.encode_motion)


@functools.partial(jax.jit, static_argnums=0)
def _text(model, params, tokens):
  return model.apply({'params': params}, tokens, method=ev.InterCLIP.encode_text)


def test_shapes_and_norm_is_the_latent_scale():
  model, params = _model_and_params()
  features, mask, tokens = _inputs()
  motion, text = jax.jit(model.apply)({'params': params}, features, mask, tokens)
  assert motion.shape == text.shape == (B, 16)
  np.testing.assert_allclose(np.linalg.norm(motion, axis=-1), 2.5, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 2.5, rtol=1e-5)


def test_motion_ignores_padded_frames_and_contacts():
  model, params = _model_and_params()
  features, mask, _ = _inputs()
  reference = _motion(model, params, features, mask)
  junk = features.copy()
  junk[mask == 0] = np.nan  # Even non-finite padding must not leak into valid embeddings.
  junk[..., 258:] = 1e3     # The foot contacts are not an input of InterCLIP.
  np.testing.assert_allclose(_motion(model, params, junk, mask), reference, atol=1e-6)
  # Cropping the padding away (InterGen's evaluator pads each batch to its longest clip).
  np.testing.assert_allclose(_motion(model, params, features[:1, :12], mask[:1, :12]),
                             reference[:1], atol=1e-5)
  np.testing.assert_allclose(_motion(model, params, features[2:, :3], mask[2:, :3]),
                             reference[2:], atol=1e-5)


def test_motion_uses_valid_frames():
  model, params = _model_and_params()
  features, mask, _ = _inputs()
  changed = features.copy()
  changed[1, 0, 0, 0] += 1.0
  delta = np.abs(_motion(model, params, changed, mask) - _motion(model, params, features, mask))
  assert delta[1].max() > 1e-4 and delta[[0, 2, 3]].max() == 0


def test_text_padding_masked_when_asked():
  model, params = _model_and_params(mask_text_padding=True)
  _, _, tokens = _inputs()
  reference = _text(model, params, tokens)
  junk = np.where(tokens == 0, np.arange(L)[None] % 60 + 1, tokens).astype(np.int32)
  np.testing.assert_allclose(_text(model, params, junk), reference, atol=1e-6)


def test_official_text_encoder_attends_to_padding():
  # InterCLIP runs its text transformer without a padding mask: the padding ids matter (they
  # are always 0 there, so this is harmless for CLIP-tokenised input).
  model, params = _model_and_params()
  _, _, tokens = _inputs()
  junk = np.where(tokens == 0, 5, tokens).astype(np.int32)
  delta = np.abs(_text(model, params, junk) - _text(model, params, tokens))
  assert delta[1:].max() > 1e-4


def test_text_pools_at_the_end_token():
  model, params = _model_and_params(mask_text_padding=True)
  _, _, tokens = _inputs()
  changed = tokens.copy()
  changed[2, 1] = 7  # A real token of row 2.
  delta = np.abs(_text(model, params, changed) - _text(model, params, tokens))
  assert delta[2].max() > 1e-4 and delta[[0, 1, 3]].max() == 0


class _FlaxEncoderLayer(nn.Module):
  """The encoder layer written with flax's own attention and dense modules (the reference)."""
  num_heads: int
  ff_dim: int

  @nn.compact
  def __call__(self, x, attn_mask):
    h = nn.MultiHeadDotProductAttention(self.num_heads, name='self_attn')(x, x, mask=attn_mask)
    x = nn.LayerNorm(ev.LAYER_NORM_EPS, name='norm1')(x + h)
    h = nn.gelu(nn.Dense(self.ff_dim, name='linear1')(x), approximate=False)
    return nn.LayerNorm(ev.LAYER_NORM_EPS, name='norm2')(x + nn.Dense(x.shape[-1],
                                                                      name='linear2')(h))


def test_encoder_layer_computes_flax_modules_function_with_their_parameters():
  # Its faster products (2-D dense layers, chunked attention on a CPU) change nothing else: the
  # same parameter tree, outputs and gradients as flax's MultiHeadDotProductAttention and Dense.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 11, 32)), jnp.float32)
  attn_mask = jnp.asarray(np.arange(11)[None, None, None, :] < np.array([11, 6, 1])[:, None,
                                                                                  None, None])
  ours, reference = ev.EncoderLayer(4, 48), _FlaxEncoderLayer(4, 48)
  params = reference.init(jax.random.key(0), x, attn_mask)
  assert (jax.tree.structure(ours.init(jax.random.key(0), x, attn_mask, deterministic=True))
          == jax.tree.structure(params))
  run = lambda p, x: ours.apply(p, x, attn_mask, deterministic=True)
  np.testing.assert_allclose(run(params, x), reference.apply(params, x, attn_mask), atol=2e-5)
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  want = jax.grad(loss(lambda p, x: reference.apply(p, x, attn_mask)), argnums=(0, 1))(params, x)
  got = jax.grad(loss(run), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_dropout_only_in_training():
  model, params = _model_and_params()
  _, _, tokens = _inputs()
  train_text = jax.jit(lambda p, x, rng: model.apply(
      {'params': p}, x, deterministic=False, rngs={'dropout': rng},
      method=ev.InterCLIP.encode_text))
  delta = train_text(params, tokens, jax.random.key(1)) - _text(model, params, tokens)
  assert np.abs(np.asarray(delta)).max() > 1e-4


def test_bad_shapes_are_explained():
  model, params = _model_and_params()
  features, mask, tokens = _inputs()
  with pytest.raises(ValueError, match=r'\[B, T, 2, 262\]'):
    _motion(model, params, features.reshape(B, T, -1), mask)
  with pytest.raises(ValueError, match='context_length'):
    _text(model, params, np.zeros((B, 40), np.int32))


def _embeddings(seed, noise):
  rng = np.random.default_rng(seed)
  m = rng.normal(size=(8, 16))
  t = m + noise * rng.normal(size=m.shape)
  unit = lambda x: 4.0 * x / np.linalg.norm(x, axis=-1, keepdims=True)
  return jnp.asarray(unit(m), jnp.float32), jnp.asarray(unit(t), jnp.float32)


def test_clip_loss_symmetric_and_prefers_matches():
  m, t = _embeddings(0, noise=0.3)
  loss, parts = ev.clip_loss(m, t)
  swapped, swapped_parts = ev.clip_loss(t, m)
  np.testing.assert_allclose(loss, swapped, rtol=1e-6)
  np.testing.assert_allclose(parts['ce_from_motion'], swapped_parts['ce_from_text'], rtol=1e-6)
  shuffled, _ = ev.clip_loss(m, t[np.roll(np.arange(8), 1)])
  assert float(loss) < float(shuffled)
  assert float(loss) < np.log(8) < float(shuffled)


def test_clip_loss_reference_and_valid_mask():
  m, t = _embeddings(1, noise=1.0)
  logits = np.asarray(m, np.float64) @ np.asarray(t, np.float64).T
  ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
  loss, _ = ev.clip_loss(m, t)
  np.testing.assert_allclose(loss, 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)
  valid = np.array([True] * 5 + [False] * 3)
  masked, _ = ev.clip_loss(m, t, valid)
  subset, _ = ev.clip_loss(m[:5], t[:5])
  np.testing.assert_allclose(masked, subset, rtol=1e-5)


def test_config_round_trip_and_frozen_embeddings():
  model, params = _model_and_params()
  assert ev.InterCLIP(**ev.config_of(model)) == model
  assert ev.config_of(ev.InterCLIP())['vocab_size'] == 49408
  frozen = ev.frozen_text_embeddings(params)
  assert frozen['text_encoder']['token_embedding']['embedding']
  assert frozen['text_encoder']['positional_embedding']
  assert sum(jax.tree.leaves(frozen)) == 2

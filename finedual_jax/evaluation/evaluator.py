"""InterHuman's contrastive motion/text evaluator (InterCLIP's architecture) in Flax.

The InterHuman protocol (R-Precision, FID, Diversity, MM Dist, MModality; DESIGN §6) measures
generated motions in the embedding space of InterCLIP, the evaluator released with InterGen
(tr3e/InterGen: ``datasets/evaluator_models.py`` for ``InterCLIP``, ``models/nets.py`` for
``MotionEncoder``, ``configs/eval_model.yaml`` for its sizes). This is the same network, so the
official weights convert (``convert_interclip.py``) and a model trained here is comparable:

* motion: both persons' de-normalised 262-d features with the last 4 columns of each person
  (the foot contacts, ``[258:262]``) dropped -> 2 x 258 = 516 per frame -> Linear to 1024; a
  learned query token is prepended, then the sinusoidal encoding (interleaved sin/cos, max. 2000
  positions, dropout), 8 post-LN encoder layers (8 heads, FFN 2048, exact GELU, dropout 0.1)
  with a key padding mask (the query is always valid), LayerNorm, the query's output -> 512.
* text: CLIP ViT-L/14@336px's token and positional embeddings (frozen in the official model),
  8 post-LN encoder layers of width 768 (8 heads, FFN 2048), LayerNorm, the feature at the end
  token (the official code takes ``argmax`` of CLIP's ids, where the end token 49407 is the
  largest id) -> 512. CLIP's own 12-layer text transformer is *not* used. The official text
  encoder attends to every position, padding included (``mask_text_padding=False``); a model
  trained here may mask padding instead.
* both embeddings are L2-normalised and multiplied by one learned ``latent_scale`` (init 1), so
  ``m @ t.T`` equals the official logits ``latent_scale**2 * cos(m, t)``.

The module's fields are its configuration; the defaults are InterCLIP's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from finedual_jax.models import dense
from finedual_jax.models import layers

LAYER_NORM_EPS = 1e-5  # PyTorch's default; Flax's is 1e-6.


def positional_encoding(length: int, width: int) -> np.ndarray:
  """[length, width] sinusoids, interleaved (sin in even columns, cos in odd), as InterGen's."""
  position = np.arange(length, dtype=np.float32)[:, None]
  freqs = np.exp(np.arange(0, width, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / width))
  table = np.zeros((length, width), np.float32)
  table[:, 0::2] = np.sin(position * freqs)
  table[:, 1::2] = np.cos(position * freqs)
  return table


class EncoderLayer(nn.Module):
  """Post-LN transformer encoder layer, PyTorch's ``nn.TransformerEncoderLayer`` (GELU).

  flax's attention and dense modules (their parameters and names), with the denoisers' faster
  products: dense layers as 2-D products and, on a CPU, the fused attention kernel or the
  chunked attention (``models.dense``, ``models.layers.attention``). On a 2-core Xeon, with the
  chunked attention, the ``MotionEncoder`` took 6.3-6.5 s forward at batch 32, T = 300 against
  6.6-6.9 s with flax's own, and a forward and backward pass at batch 8 5.1 against 6.6 s.
  """
  num_heads: int
  ff_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, attn_mask: jax.Array | None, *, deterministic: bool):
    """x: [N, L, d]; attn_mask: [N, 1, L, L] bool (True = may attend) or None."""
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = dense.MultiHeadAttention(
        self.num_heads, dropout_rate=self.dropout, broadcast_dropout=False,
        deterministic=deterministic, attention_fn=layers.attention, name='self_attn')(
            x, x, mask=attn_mask)
    x = nn.LayerNorm(LAYER_NORM_EPS, name='norm1')(x + drop(h))
    h = nn.gelu(dense.Dense(self.ff_dim, name='linear1')(x), approximate=False)
    h = dense.Dense(x.shape[-1], name='linear2')(drop(h))
    return nn.LayerNorm(LAYER_NORM_EPS, name='norm2')(x + drop(h))


class TransformerEncoder(nn.Module):
  """A stack of post-LN layers without a final norm (``nn.TransformerEncoder(norm=None)``)."""
  num_layers: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None, *, deterministic: bool):
    """x: [N, L, d]; key_mask: [N, L] bool (False = padding, never attended) or None."""
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, self.ff_dim, self.dropout, name=f'layers_{i}')(
          x, attn_mask, deterministic=deterministic)
    return x


class MotionEncoder(nn.Module):
  """Two-person features [B, T, 2, D] and frame mask [B, T] -> unnormalised embedding [B, E]."""
  feature_dim: int = 262
  dropped_features: int = 4  # The trailing foot-contact columns, which InterCLIP ignores.
  width: int = 1024
  num_layers: int = 8
  num_heads: int = 8
  ff_dim: int = 2048
  dropout: float = 0.1
  max_positions: int = 2000  # Length of the official sinusoid table (query token + frames).
  embed_dim: int = 512

  @nn.compact
  def __call__(self, features: jax.Array, mask: jax.Array, *, deterministic: bool = True):
    batch, frames = features.shape[:2]
    if features.shape[2:] != (2, self.feature_dim):
      raise ValueError(f'MotionEncoder: features must be [B, T, 2, {self.feature_dim}] '
                       f'(de-normalised, DESIGN §1.1); got {features.shape}.')
    if frames + 1 > self.max_positions:
      raise ValueError(f'MotionEncoder: {frames} frames + the query token exceed max_positions='
                       f'{self.max_positions}; crop the motion or raise max_positions.')
    valid = mask > 0.5
    # Padded frames cannot reach the query token; zeroing them also keeps NaN/Inf padding out.
    x = jnp.where(valid[:, :, None, None], features, 0.0)
    x = x[..., :self.feature_dim - self.dropped_features].reshape(batch, frames, -1)
    x = dense.Dense(self.width, name='embed_motion')(x)
    query = self.param('query_token', nn.initializers.normal(1.0), (1, self.width))
    h = jnp.concatenate([jnp.broadcast_to(query[None], (batch, 1, self.width)), x], axis=1)
    h = h + positional_encoding(frames + 1, self.width)[None]
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    key_mask = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1)
    h = TransformerEncoder(self.num_layers, self.num_heads, self.ff_dim, self.dropout,
                           name='transformer')(h, key_mask, deterministic=deterministic)
    h = nn.LayerNorm(LAYER_NORM_EPS, name='out_ln')(h)
    return dense.Dense(self.embed_dim, name='out')(h[:, 0])


class TextEncoder(nn.Module):
  """Token ids [B, L] -> unnormalised embedding [B, E], read at each row's end token."""
  vocab_size: int = 49408     # CLIP's BPE vocabulary; our SentencePiece model's when trained here.
  width: int = 768
  num_layers: int = 8
  num_heads: int = 8
  ff_dim: int = 2048
  dropout: float = 0.1
  context_length: int = 77
  end_token: int = 49407      # CLIP's <|endoftext|>; data.tokenizer.EOS_ID for SentencePiece.
  mask_padding: bool = False  # The official model attends to the padding after the end token.
  embed_dim: int = 512

  @nn.compact
  def __call__(self, tokens: jax.Array, *, deterministic: bool = True):
    batch, length = tokens.shape
    if length > self.context_length:
      raise ValueError(f'TextEncoder: {length} tokens per text exceed context_length='
                       f'{self.context_length}; tokenise with that context length.')
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name='token_embedding')(tokens)
    positions = self.param('positional_embedding', nn.initializers.normal(0.01),
                           (self.context_length, self.width))
    x = x + positions[None, :length]
    # First end token (argmax of a boolean row); for CLIP ids it equals argmax of the ids.
    end = jnp.argmax(tokens == self.end_token, axis=-1)
    key_mask = jnp.arange(length)[None, :] <= end[:, None] if self.mask_padding else None
    x = TransformerEncoder(self.num_layers, self.num_heads, self.ff_dim, self.dropout,
                           name='transformer')(x, key_mask, deterministic=deterministic)
    x = nn.LayerNorm(LAYER_NORM_EPS, name='text_ln')(x)
    return dense.Dense(self.embed_dim, name='out')(x[jnp.arange(batch), end])


def _normalise(x: jax.Array, scale: jax.Array) -> jax.Array:
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, 1e-12) * scale


class InterCLIP(nn.Module):
  """Motion and text encoders sharing one learned embedding scale; fields = configuration."""
  # Motion side (configs/eval_model.yaml: INPUT_DIM 258 + 4, LATENT_DIM, NUM_LAYERS, FF_SIZE).
  feature_dim: int = 262
  dropped_features: int = 4
  motion_width: int = 1024
  motion_layers: int = 8
  motion_heads: int = 8
  motion_ff_dim: int = 2048
  max_positions: int = 2000
  # Text side (hard-coded in the official InterCLIP: width 768, 8 layers, 8 heads, FF_SIZE).
  vocab_size: int = 49408
  text_width: int = 768
  text_layers: int = 8
  text_heads: int = 8
  text_ff_dim: int = 2048
  context_length: int = 77
  end_token: int = 49407
  mask_text_padding: bool = False
  # Shared.
  embed_dim: int = 512
  dropout: float = 0.1

  def setup(self):
    self.motion_encoder = MotionEncoder(
        self.feature_dim, self.dropped_features, self.motion_width, self.motion_layers,
        self.motion_heads, self.motion_ff_dim, self.dropout, self.max_positions, self.embed_dim)
    self.text_encoder = TextEncoder(
        self.vocab_size, self.text_width, self.text_layers, self.text_heads, self.text_ff_dim,
        self.dropout, self.context_length, self.end_token, self.mask_text_padding,
        self.embed_dim)
    self.latent_scale = self.param('latent_scale', nn.initializers.ones, (1,))

  def encode_motion(self, features: jax.Array, mask: jax.Array, *,
                    deterministic: bool = True) -> jax.Array:
    """features: [B, T, 2, 262] de-normalised; mask: [B, T] -> [B, E], norm |latent_scale|."""
    emb = self.motion_encoder(features, mask, deterministic=deterministic)
    return _normalise(emb, self.latent_scale)

  def encode_text(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """tokens: [B, L] int -> [B, E], norm |latent_scale|."""
    return _normalise(self.text_encoder(tokens, deterministic=deterministic), self.latent_scale)

  def __call__(self, features, mask, tokens, *, deterministic: bool = True):
    """Both embeddings: ``(motion [B, E], text [B, E])``."""
    return (self.encode_motion(features, mask, deterministic=deterministic),
            self.encode_text(tokens, deterministic=deterministic))


def config_of(model: InterCLIP) -> dict[str, Any]:
  """The model's fields as a JSON-able dict: ``InterCLIP(**config_of(m))`` rebuilds ``m``."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(InterCLIP)
          if f.name not in ('parent', 'name')}


def tiny_config(**overrides) -> dict[str, Any]:
  """A few-thousand-parameter InterCLIP for tests (same structure, small sizes)."""
  config = dict(motion_width=32, motion_layers=2, motion_heads=4, motion_ff_dim=48,
                vocab_size=64, text_width=24, text_layers=2, text_heads=4, text_ff_dim=40,
                context_length=16, end_token=63, embed_dim=16, max_positions=200)
  config.update(overrides)
  return config


def frozen_text_embeddings(params: Any) -> Any:
  """A tree of bools like ``params``: True for the text token and positional embeddings.

  The official model never updates them (CLIP's, computed under ``torch.no_grad``); pass the
  inverse to ``optax.masked`` to reproduce that when fine-tuning from converted weights.
  """
  def frozen(path, _):
    keys = [getattr(p, 'key', None) for p in path]
    return 'text_encoder' in keys and keys[-1] in ('embedding', 'positional_embedding')
  return jax.tree_util.tree_map_with_path(frozen, params)


def clip_loss(motion_emb: jax.Array, text_emb: jax.Array,
              valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE over the batch (CLIP; InterCLIP's ``compute_clip_losses``).

  motion_emb, text_emb: [B, E] from ``encode_*`` (already scaled, so ``m @ t.T`` are the logits);
  valid: optional [B] bool for padded batches (invalid rows and columns take no part).
  Returns ``(loss, {'ce_from_motion', 'ce_from_text', 'clip'})``.
  """
  logits = motion_emb @ text_emb.T
  batch = logits.shape[0]
  valid = jnp.ones((batch,), bool) if valid is None else valid.astype(bool)
  pair = valid[:, None] & valid[None, :]
  logits = jnp.where(pair, logits, -1e9)
  labels = jnp.arange(batch)
  weights = valid.astype(logits.dtype) / jnp.maximum(jnp.sum(valid), 1)
  ce_motion = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights)
  ce_text = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits.T, labels) * weights)
  loss = 0.5 * (ce_motion + ce_text)
  return loss, {'ce_from_motion': ce_motion, 'ce_from_text': ce_text, 'clip': loss}

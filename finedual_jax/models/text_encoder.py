"""A learned transformer over SentencePiece tokens, shared by the overall and per-person texts.

Given ``TextFeatures`` (precomputed frozen features, e.g. CLIP's) instead of token ids, the
token embedding is replaced by a learned projection of those features; the transformer layers
on top then act as a trainable adapter (``depth=0`` keeps only the projection).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from finedual_jax.data.batch import TextFeatures
from finedual_jax.data.tokenizer import PAD_ID
from finedual_jax.models import dense
from finedual_jax.models import layers

NUM_ROLES = 2  # 0: the overall caption, 1: a per-person text.


class TextEncoder(nn.Module):
  """Tokens [N, L] (or TextFeatures [N, L, D] + [N, L]) and roles [N] -> token features
  [N, L, width], pooled [N, width], mask [N, L]."""
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  max_len: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens, roles: jax.Array, *, deterministic: bool = True):
    if isinstance(tokens, TextFeatures):
      mask = tokens.mask > 0
      x = dense.Dense(self.width, name='feature_proj')(tokens.features)
    else:
      mask = tokens != PAD_ID
      x = nn.Embed(self.vocab_size, self.width, name='token_embed')(tokens)
    length = mask.shape[1]
    if length > self.max_len:
      raise ValueError(f'text inputs have {length} tokens, more than the model\'s max_text_len '
                       f'{self.max_len}; raise config.data.max_text_len.')
    positions = self.param('position_embed', nn.initializers.normal(0.02),
                           (self.max_len, self.width))
    x = x + positions[None, :length]
    x = x + nn.Embed(NUM_ROLES, self.width, name='role_embed')(roles)[:, None, :]
    attn_mask = layers.attention_mask(mask, mask)
    for i in range(self.depth):
      h = nn.LayerNorm(name=f'ln_attn_{i}')(x)
      h = dense.MultiHeadAttention(self.num_heads, dropout_rate=self.dropout,
                                   deterministic=deterministic,
                                   attention_fn=layers.attention, name=f'attn_{i}')(
                                       h, h, mask=attn_mask)
      x = x + h
      h = nn.LayerNorm(name=f'ln_ffn_{i}')(x)
      x = x + layers.FeedForward(2 * self.width, self.dropout, name=f'ffn_{i}')(
          h, deterministic=deterministic)
    x = nn.LayerNorm(name='ln_out')(x)
    weights = mask.astype(x.dtype)[..., None]
    pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return x, pooled, mask

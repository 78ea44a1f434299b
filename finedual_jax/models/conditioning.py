"""Text conditions of a denoiser: the overall caption and the two per-person texts, encoded once.

Classifier-free guidance replaces a dropped condition by a learned null token (one for the
overall caption, one for the individual texts), per example.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from finedual_jax.data.batch import TextFeatures
from finedual_jax.models import dense
from finedual_jax.models.text_encoder import TextEncoder


class Conditions(NamedTuple):
  """Encoded texts, projected to the denoiser's width d. Streams are (b0p0, b0p1, b1p0, ...)."""
  overall_tokens: jax.Array   # [B, L, d]
  overall_mask: jax.Array     # [B, L] bool
  overall_pooled: jax.Array   # [B, d]
  person_tokens: jax.Array    # [2B, L, d] (zeros when the model ignores individual texts)
  person_mask: jax.Array      # [2B, L] bool
  person_pooled: jax.Array    # [2B, d]


class TextConditioner(nn.Module):
  """Token ids -> ``Conditions``; one shared encoder pass over all texts of the batch."""
  vocab_size: int
  width: int
  text_width: int
  text_layers: int
  text_heads: int
  max_text_len: int
  dropout: float = 0.0
  individual: bool = True  # False: encode only the overall caption (InterGen).

  @nn.compact
  def __call__(self, text_tokens, person_tokens, drop_overall, drop_individual, *,
               deterministic: bool) -> Conditions:
    """text_tokens: [B, L]; person_tokens: [B, 2, L] (or ``TextFeatures`` of [B, L, D] and
    [B, 2, L, D] with their masks); drop_*: [B] bool."""
    frozen = isinstance(text_tokens, TextFeatures)
    batch, length = (text_tokens.mask if frozen else text_tokens).shape[:2]
    # Roles: 0 overall, 1 individual. No person-1/person-2 role: it would break the symmetry.
    if self.individual:
      tokens = jax.tree.map(
          lambda overall, persons: jnp.concatenate(
              [overall, persons.reshape((2 * batch,) + persons.shape[2:])]),
          text_tokens, person_tokens)
      roles = jnp.concatenate([jnp.zeros((batch,), jnp.int32), jnp.ones((2 * batch,), jnp.int32)])
      drop = jnp.concatenate([drop_overall, jnp.repeat(drop_individual, 2)])
    else:
      tokens, roles, drop = text_tokens, jnp.zeros((batch,), jnp.int32), drop_overall
    encoder = TextEncoder(self.vocab_size, self.text_width, self.text_layers, self.text_heads,
                          self.max_text_len, self.dropout, name='text_encoder')
    tok, pooled, tok_mask = encoder(tokens, roles, deterministic=deterministic)
    project = dense.Dense(self.width, name='text_proj')
    tok, pooled = project(tok), project(pooled)
    null = self.param('null_text', nn.initializers.normal(0.02), (2, self.width))[roles]
    tok = jnp.where(drop[:, None, None], null[:, None, :], tok)
    tok_mask = jnp.where(drop[:, None], jnp.arange(length)[None, :] == 0, tok_mask)
    pooled = jnp.where(drop[:, None], null, pooled)
    if self.individual:
      return Conditions(tok[:batch], tok_mask[:batch], pooled[:batch], tok[batch:],
                        tok_mask[batch:], pooled[batch:])
    zeros = jnp.zeros((2 * batch,) + tok.shape[1:], tok.dtype)
    return Conditions(tok, tok_mask, pooled, zeros, jnp.zeros((2 * batch, length), bool),
                      jnp.zeros((2 * batch, self.width), tok.dtype))

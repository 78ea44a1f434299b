"""The batch contract: every key a training or sampling batch carries, with shape and dtype.

B is the batch size, T the padded number of motion rows, L the padded number of text tokens.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from finedual_jax.motion.features import FEATURE_DIM

MOTION = 'motion'                # float32 [B, T, 2, F]: normalised features (F = 262, or 138
                                 # for the rotation representation), zero where padded.
MASK = 'mask'                    # float32 [B, T]: 1 on valid rows, 0 on padding.
TEXT_TOKENS = 'text_tokens'      # int32 [B, L]: the overall caption.
PERSON_TOKENS = 'person_tokens'  # int32 [B, 2, L]: person 1's and person 2's texts.
# Only with precomputed frozen text features (data/text_features.py); Lf, Df from its file:
TEXT_FEATURES = 'text_features'              # float32 [B, Lf, Df], zero after each length.
TEXT_FEATURE_MASK = 'text_feature_mask'      # float32 [B, Lf]
PERSON_FEATURES = 'person_features'          # float32 [B, 2, Lf, Df]
PERSON_FEATURE_MASK = 'person_feature_mask'  # float32 [B, 2, Lf]


class TextFeatures(NamedTuple):
  """Frozen text features given to a denoiser in place of token ids ([..., L, D] and [..., L])."""
  features: Any
  mask: Any


def spec(batch_size: int, max_len: int, max_text_len: int, feature_dim: int = FEATURE_DIM,
         text_features: tuple[int, int] | None = None
         ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Key -> (shape, dtype) of a batch; ``text_features`` = (Lf, Df) adds the feature keys."""
  out = {
      MOTION: ((batch_size, max_len, 2, feature_dim), np.dtype(np.float32)),
      MASK: ((batch_size, max_len), np.dtype(np.float32)),
      TEXT_TOKENS: ((batch_size, max_text_len), np.dtype(np.int32)),
      PERSON_TOKENS: ((batch_size, 2, max_text_len), np.dtype(np.int32)),
  }
  if text_features is not None:
    length, dim = text_features
    f32 = np.dtype(np.float32)
    out.update({TEXT_FEATURES: ((batch_size, length, dim), f32),
                TEXT_FEATURE_MASK: ((batch_size, length), f32),
                PERSON_FEATURES: ((batch_size, 2, length, dim), f32),
                PERSON_FEATURE_MASK: ((batch_size, 2, length), f32)})
  return out


def text_inputs(batch: Mapping[str, Any]) -> tuple[Any, Any]:
  """What a denoiser conditions on: frozen features when the batch has them, else token ids."""
  if TEXT_FEATURES in batch:
    return (TextFeatures(batch[TEXT_FEATURES], batch[TEXT_FEATURE_MASK]),
            TextFeatures(batch[PERSON_FEATURES], batch[PERSON_FEATURE_MASK]))
  return batch[TEXT_TOKENS], batch[PERSON_TOKENS]


def check(batch: Mapping[str, np.ndarray], batch_size: int, max_len: int, max_text_len: int,
          feature_dim: int = FEATURE_DIM, text_features: tuple[int, int] | None = None) -> None:
  """Raises a ValueError naming the first key whose presence, shape or dtype breaks the contract."""
  for key, (shape, dtype) in spec(batch_size, max_len, max_text_len, feature_dim,
                                  text_features).items():
    if key not in batch:
      raise ValueError(f'batch: missing key {key!r}; expected keys {sorted(spec(1, 1, 1))}.')
    value = batch[key]
    if tuple(value.shape) != shape or np.dtype(value.dtype) != dtype:
      raise ValueError(f'batch[{key!r}]: expected {dtype.name}{list(shape)}, found '
                       f'{np.dtype(value.dtype).name}{list(value.shape)}.')

"""The batch contract: every key a training or sampling batch carries, with shape and dtype.

B is the batch size, T the padded number of motion rows, L the padded number of text tokens.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from finedual_jax.motion.features import FEATURE_DIM

MOTION = 'motion'                # float32 [B, T, 2, F]: normalised features (F = 262, or 138
                                 # for the rotation representation), zero where padded.
MASK = 'mask'                    # float32 [B, T]: 1 on valid rows, 0 on padding.
TEXT_TOKENS = 'text_tokens'      # int32 [B, L]: the overall caption.
PERSON_TOKENS = 'person_tokens'  # int32 [B, 2, L]: person 1's and person 2's texts.


def spec(batch_size: int, max_len: int, max_text_len: int, feature_dim: int = FEATURE_DIM
         ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Key -> (shape, dtype) of a batch."""
  return {
      MOTION: ((batch_size, max_len, 2, feature_dim), np.dtype(np.float32)),
      MASK: ((batch_size, max_len), np.dtype(np.float32)),
      TEXT_TOKENS: ((batch_size, max_text_len), np.dtype(np.int32)),
      PERSON_TOKENS: ((batch_size, 2, max_text_len), np.dtype(np.int32)),
  }


def check(batch: Mapping[str, np.ndarray], batch_size: int, max_len: int, max_text_len: int,
          feature_dim: int = FEATURE_DIM) -> None:
  """Raises a ValueError naming the first key whose presence, shape or dtype breaks the contract."""
  for key, (shape, dtype) in spec(batch_size, max_len, max_text_len, feature_dim).items():
    if key not in batch:
      raise ValueError(f'batch: missing key {key!r}; expected keys {sorted(spec(1, 1, 1))}.')
    value = batch[key]
    if tuple(value.shape) != shape or np.dtype(value.dtype) != dtype:
      raise ValueError(f'batch[{key!r}]: expected {dtype.name}{list(shape)}, found '
                       f'{np.dtype(value.dtype).name}{list(value.shape)}.')

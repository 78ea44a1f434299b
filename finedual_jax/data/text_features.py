"""Precomputed frozen text features (e.g. from a CLIP text tower) in place of the learned encoder.

Published two-person baselines condition on a frozen CLIP text encoder. This project never
downloads weights, so such features are computed by the user, offline, with whatever encoder
they have, and stored in one ``.npz``:

    texts     [N] str          every caption and per-person text the run will see (mirrored
                               copies included: ``python -m data_pipelines.text_features
                               --dataset_dir DIR --out texts.txt`` lists them)
    features  [N, L, D] float  per-token features, zero after each text's length
    lengths   [N] int          number of valid tokens (1..L) per text

Texts are matched after collapsing whitespace. ``config.data.text_features_file`` switches a
run to these features; the denoiser then projects them (``TextEncoder``) instead of embedding
SentencePiece tokens.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np


def normalise_text(text: str) -> str:
  return ' '.join(str(text).split())


class TextFeatureBank:
  """Text -> (features [L, D], mask [L]) lookups from a checked ``.npz`` file."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f'text feature file not found: {self.path}')
    try:
      with np.load(self.path, allow_pickle=False) as data:
        missing = {'texts', 'features', 'lengths'} - set(data.files)
        if missing:
          raise ValueError(f'{self.path}: missing array(s) {sorted(missing)}; expected texts [N], '
                           'features [N, L, D] and lengths [N].')
        texts, features, lengths = data['texts'], data['features'], data['lengths']
    except (OSError, EOFError) as e:
      raise ValueError(f'{self.path}: not a readable .npz file ({e}).') from None
    if texts.ndim != 1 or texts.dtype.kind not in 'US':
      raise ValueError(f'{self.path}: "texts" must be a 1-d string array, found {texts.dtype} '
                       f'{texts.shape}.')
    if features.ndim != 3 or features.shape[0] != texts.shape[0] or features.dtype.kind != 'f':
      raise ValueError(f'{self.path}: "features" must be float [N={texts.shape[0]}, L, D], found '
                       f'{features.dtype} {features.shape}.')
    if lengths.shape != texts.shape or lengths.dtype.kind not in 'iu':
      raise ValueError(f'{self.path}: "lengths" must be integers [N={texts.shape[0]}], found '
                       f'{lengths.dtype} {lengths.shape}.')
    max_len = features.shape[1]
    if np.any(lengths < 1) or np.any(lengths > max_len):
      raise ValueError(f'{self.path}: "lengths" must lie in 1..{max_len}; found '
                       f'{int(lengths.min())}..{int(lengths.max())}.')
    if not np.all(np.isfinite(features)):
      raise ValueError(f'{self.path}: "features" contains NaN/Inf.')
    self.index = {}
    for i, text in enumerate(texts):
      key = normalise_text(text.decode('utf-8') if isinstance(text, bytes) else text)
      if key in self.index:
        raise ValueError(f'{self.path}: text {key!r} appears twice (rows {self.index[key]} and '
                         f'{i}).')
      self.index[key] = i
    self.features = features.astype(np.float32)
    self.mask = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.float32)
    self.features *= self.mask[..., None]  # Padding never carries information.

  @property
  def max_len(self) -> int:
    return self.features.shape[1]

  @property
  def dim(self) -> int:
    return self.features.shape[2]

  def __contains__(self, text: str) -> bool:
    return normalise_text(text) in self.index

  def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """[n] texts -> features [n, L, D] float32 and mask [n, L] float32."""
    rows = []
    for text in texts:
      key = normalise_text(text)
      if key not in self.index:
        raise ValueError(f'text {key!r} has no features in {self.path}; compute features for it '
                       'with the encoder that made the file and add it.')
      rows.append(self.index[key])
    return self.features[rows], self.mask[rows]

"""SentencePiece tokenizer: trained on a data set's captions, saved with it, used everywhere."""

from __future__ import annotations

import io
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], path: str | os.PathLike, *, vocab_size: int = 1000) -> 'Tokenizer':
  """Trains a unigram model on ``texts`` (deterministically) and writes it to ``path``.

  ``vocab_size`` is an upper bound: small corpora (the synthetic data set) support fewer
  pieces, and the trainer then stops at what the text allows instead of failing.
  """
  texts = [t.strip() for t in texts if t.strip()]
  if not texts:
    raise ValueError(f'train_tokenizer({path}): no non-empty texts to train on.')
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type='unigram', character_coverage=1.0, hard_vocab_limit=False,
      normalization_rule_name='nmt_nfkc_cf',  # Case folding: captions vary in capitalisation.
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      num_threads=1,  # One thread keeps training reproducible.
      minloglevel=2)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(model.getvalue())
  os.replace(tmp, path)
  return Tokenizer(path)


class Tokenizer:
  """Encodes texts to fixed-length int32 token rows: BOS, pieces, EOS, then PAD (id 0)."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f'SentencePiece model not found: {self.path}. It is written by the '
                              'data set build (data_pipelines.prepare); build the data set first.')
    self._model_bytes = self.path.read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_bytes)

  def __getstate__(self):  # grain worker processes receive a pickled copy.
    return {'path': self.path, 'model': self._model_bytes}

  def __setstate__(self, state):
    self.path, self._model_bytes = state['path'], state['model']
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_bytes)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def num_tokens(self, text: str) -> int:
    """Length of ``text`` once encoded, BOS and EOS included."""
    return len(self._sp.encode(text)) + 2

  def encode(self, texts: Sequence[str] | str, max_len: int, *, truncate: bool = True) -> np.ndarray:
    """[N] texts (or one text) -> [N, max_len] (or [max_len]) int32 token ids.

    With ``truncate=False`` a text longer than ``max_len`` tokens raises a ValueError instead.
    """
    single = isinstance(texts, str)
    rows = []
    for text in ([texts] if single else texts):
      ids = [BOS_ID] + self._sp.encode(text) + [EOS_ID]
      if len(ids) > max_len:
        if not truncate:
          raise ValueError(f'text is {len(ids)} tokens long, more than the limit of {max_len}: '
                           f'{text[:80]!r}{"..." if len(text) > 80 else ""}')
        ids = ids[:max_len - 1] + [EOS_ID]
      rows.append(ids + [PAD_ID] * (max_len - len(ids)))
    out = np.asarray(rows, dtype=np.int32).reshape(len(rows), max_len)
    return out[0] if single else out

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)])

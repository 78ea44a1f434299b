"""CLIP's byte-level BPE tokeniser, for texts fed to converted InterCLIP weights.

The official evaluator tokenises with ``clip.tokenize(texts, truncate=True)`` (openai/CLIP's
``simple_tokenizer.py``): clean and lower-case the text, split it with CLIP's pre-tokeniser,
map each word's UTF-8 bytes to printable characters, apply the BPE merges, and frame the ids
as ``<|startoftext|> ... <|endoftext|>`` padded with 0 to a context of 77. The merges come from
``bpe_simple_vocab_16e6.txt.gz``, which the user supplies (it ships with the ``clip`` package);
nothing is downloaded. With that file the start and end ids are 49406 and 49407.

Two differences, both invisible on ASCII captions: ``ftfy.fix_text`` runs only when ftfy is
installed, and the pre-tokeniser's ``\\p{L}`` / ``\\p{N}`` classes are read from Python's
``unicodedata`` instead of the ``regex`` package.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import pathlib
import re
import unicodedata
from typing import Sequence

import numpy as np

CONTEXT_LENGTH = 77
START, END = '<|startoftext|>', '<|endoftext|>'
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 49408 ids in all.
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # In the pattern's order.


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
  """Every byte -> a printable character (printable Latin-1 bytes map to themselves).

  The order matters: the first 256 ids are this table's values in insertion order, the
  printable bytes first, then the others (mapped to U+0100 onwards) in byte order.
  """
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  table = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in table]
  table.update({b: chr(256 + n) for n, b in enumerate(others)})
  return table


def clean(text: str) -> str:
  """CLIP's ``basic_clean`` + ``whitespace_clean`` + lower-casing."""
  try:
    import ftfy  # pylint: disable=import-outside-toplevel
    text = ftfy.fix_text(text)
  except ImportError:
    pass
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r'\s+', ' ', text).strip().lower()


def _kind(ch: str) -> str:
  if ch.isspace():
    return 'space'
  category = unicodedata.category(ch)
  return {'L': 'letter', 'N': 'number'}.get(category[0], 'other')


def pre_tokenize(text: str) -> list[str]:
  """CLIP's pattern ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|
  [^\\s\\p{L}\\p{N}]+`` applied with ``findall`` (first alternative that matches wins)."""
  words, i = [], 0
  while i < len(text):
    rest = text[i:]
    special = next((s for s in (START, END) + _CONTRACTIONS if rest.startswith(s)), None)
    kind = _kind(text[i])
    if special is not None:
      words.append(special)
      i += len(special)
    elif kind == 'space':
      i += 1
    elif kind == 'number':
      words.append(text[i])
      i += 1
    else:
      j = i + 1
      while j < len(text) and _kind(text[j]) == kind:
        j += 1
      words.append(text[i:j])
      i = j
  return words


class ClipTokenizer:
  """``encode`` (ids of one text) and ``tokenize`` (framed, padded [N, 77] rows) like CLIP's."""

  def __init__(self, merges_path: str | os.PathLike):
    path = pathlib.Path(merges_path)
    if not path.is_file():
      raise FileNotFoundError(
          f'CLIP BPE merges not found: {path}. Pass the path of bpe_simple_vocab_16e6.txt.gz '
          '(it ships inside the `clip` package, clip/bpe_simple_vocab_16e6.txt.gz).')
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rt', encoding='utf-8') as f:
      lines = f.read().split('\n')
    # The first line is a version header; CLIP keeps the first NUM_MERGES merges after it.
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()][:NUM_MERGES]
    bad = [m for m in merges if len(m) != 2]
    if bad:
      raise ValueError(f'{path}: each merge line must hold two symbols; found {bad[0]!r}.')
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    vocab = list(self.byte_encoder.values())
    vocab += [v + '</w>' for v in vocab] + [''.join(m) for m in merges] + [START, END]
    self.encoder = {token: i for i, token in enumerate(vocab)}
    self.decoder = {i: token for token, i in self.encoder.items()}
    self.ranks = {m: i for i, m in enumerate(merges)}
    self.start_id, self.end_id = self.encoder[START], self.encoder[END]
    self._cache = {START: START, END: END}

  @property
  def vocab_size(self) -> int:
    """Number of ids (the embedding table's rows): 49408 with CLIP's merges."""
    return self.end_id + 1

  def bpe(self, word: str) -> str:
    """One pre-token (byte-mapped) -> its BPE symbols, space separated, the last ending '</w>'."""
    if word in self._cache:
      return self._cache[word]
    symbols = list(word[:-1]) + [word[-1] + '</w>']
    while len(symbols) > 1:
      pairs = set(zip(symbols, symbols[1:]))
      best = min(pairs, key=lambda p: self.ranks.get(p, float('inf')))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(symbols):  # Merge every occurrence of ``best``, left to right.
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    self._cache[word] = ' '.join(symbols)
    return self._cache[word]

  def encode(self, text: str) -> list[int]:
    """A text -> BPE ids, without the start and end tokens."""
    ids = []
    for word in pre_tokenize(clean(text)):
      mapped = ''.join(self.byte_encoder[b] for b in word.encode('utf-8'))
      ids.extend(self.encoder[symbol] for symbol in self.bpe(mapped).split(' '))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text (special tokens kept, word ends as spaces)."""
    text = ''.join(self.decoder[int(i)] for i in ids)
    raw = bytearray(self.byte_decoder[c] for c in text)
    return raw.decode('utf-8', errors='replace').replace('</w>', ' ')

  def tokenize(self, texts: Sequence[str] | str, context_length: int = CONTEXT_LENGTH, *,
               truncate: bool = True) -> np.ndarray:
    """Texts -> [N, context_length] int32: start, ids, end, then 0 (``clip.tokenize``).

    A text too long keeps its first ``context_length`` ids with the last replaced by the end
    token (``truncate=True``), or raises a ValueError.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.start_id] + self.encode(text) + [self.end_id]
      if len(ids) > context_length:
        if not truncate:
          raise ValueError(f'text is {len(ids)} tokens long, more than the context of '
                           f'{context_length}: {text[:80]!r}')
        ids = ids[:context_length]
        ids[-1] = self.end_id
      out[row, :len(ids)] = ids
    return out

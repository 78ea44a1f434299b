"""CLIP's BPE tokeniser on a tiny merges file made here (the real one is never downloaded)."""

import gzip
import os

import numpy as np
import pytest

from finedual_jax.evaluation import clip_tokenizer as ct

MERGES = ['h e', 'l l', 'he ll', 'hell o</w>', 'w o', 'r l', 'wo rl', 'worl d</w>', 'p u',
          'pu sh', 's h', 'e s</w>', 'pu sh']  # The repeated merge is harmless, as in CLIP.


def _write(tmp_path, merges, name='merges.txt.gz'):
  path = tmp_path / name
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
  return path


@pytest.fixture
def tok(tmp_path):
  return ct.ClipTokenizer(_write(tmp_path, MERGES))


def test_vocabulary_layout(tok):
  table = ct.bytes_to_unicode()
  assert len(set(table.values())) == 256
  assert all(table[b] == chr(b) for b in range(ord('!'), ord('~') + 1))
  assert tok.vocab_size == 256 + 256 + len(MERGES) + 2
  assert (tok.start_id, tok.end_id) == (tok.vocab_size - 2, tok.vocab_size - 1)
  assert tok.encoder['!'] == 0 and tok.encoder['!</w>'] == 256  # CLIP's id order.


def test_merges_lowercase_and_whitespace(tok):
  hello, world = tok.encoder['hello</w>'], tok.encoder['world</w>']
  assert tok.encode('hello world') == [hello, world]
  assert tok.encode('  HeLLo \t\n  WORLD ') == [hello, world]
  assert tok.encode('hello &amp;amp; world') == [hello, tok.encoder['&</w>'], world]


def test_pre_tokenizer_matches_clip_pattern():
  assert ct.pre_tokenize("they're 2 persons!! <|endoftext|>") == [
      'they', "'re", '2', 'persons', '!!', '<|endoftext|>']
  assert ct.pre_tokenize("12 ab3'sx") == ['1', '2', 'ab', '3', "'s", 'x']
  assert ct.pre_tokenize('a,b') == ['a', ',', 'b']


def test_byte_fallback_for_unseen_characters(tok):
  table = ct.bytes_to_unicode()
  for word in ('é', '😀'):  # A letter and a symbol: one pre-token each, 2 and 4 UTF-8 bytes.
    utf8 = word.encode('utf-8')
    expected = [tok.encoder[table[b]] for b in utf8[:-1]] + [tok.encoder[table[utf8[-1]] + '</w>']]
    assert tok.encode(word) == expected
  assert tok.decode(tok.encode('é😀')) == 'é 😀 '


def test_merge_order_is_by_rank(tmp_path):
  first = ct.ClipTokenizer(_write(tmp_path, ['e l', 'l l</w>'], 'a.gz'))
  second = ct.ClipTokenizer(_write(tmp_path, ['l l</w>', 'e l'], 'b.gz'))
  assert [first.decoder[i] for i in first.encode('ell')] == ['el', 'l</w>']
  assert [second.decoder[i] for i in second.encode('ell')] == ['e', 'll</w>']
  # Every occurrence of the best pair merges in one pass, left to right.
  third = ct.ClipTokenizer(_write(tmp_path, ['a a'], 'c.gz'))
  assert [third.decoder[i] for i in third.encode('aaaaa')] == ['aa', 'aa', 'a</w>']


def test_tokenize_frames_pads_and_truncates(tok):
  rows = tok.tokenize(['hello world', 'push'])
  assert rows.shape == (2, ct.CONTEXT_LENGTH) and rows.dtype == np.int32
  assert list(rows[0, :4]) == [tok.start_id, tok.encoder['hello</w>'], tok.encoder['world</w>'],
                               tok.end_id]
  assert not rows[0, 4:].any()
  assert int(np.argmax(rows[1])) == list(rows[1]).index(tok.end_id)  # Official pooling works.
  long = tok.tokenize('hello ' * 100)[0]
  assert long[0] == tok.start_id and long[-1] == tok.end_id and (long[1:-1] != 0).all()
  with pytest.raises(ValueError, match='context'):
    tok.tokenize('hello ' * 100, truncate=False)
  assert tok.tokenize('hello', context_length=5).shape == (1, 5)


def test_missing_or_bad_merges_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='bpe_simple_vocab_16e6'):
    ct.ClipTokenizer(tmp_path / 'nope.txt.gz')
  with pytest.raises(ValueError, match='two symbols'):
    ct.ClipTokenizer(_write(tmp_path, ['a b c']))


@pytest.mark.skipif(not os.path.isfile(os.environ.get('CLIP_BPE_PATH', '')),
                    reason='set CLIP_BPE_PATH to bpe_simple_vocab_16e6.txt.gz for the golden ids')
def test_golden_ids_with_the_real_merges():
  tok = ct.ClipTokenizer(os.environ['CLIP_BPE_PATH'])
  assert (tok.vocab_size, tok.start_id, tok.end_id) == (49408, 49406, 49407)
  # Ids from openai/CLIP's own SimpleTokenizer.
  assert tok.encode('One person pushes the other, who stumbles back.') == [
      637, 2533, 23828, 518, 1010, 267, 822, 16784, 840, 893, 269]

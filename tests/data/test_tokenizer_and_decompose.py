"""Tests for the SentencePiece tokenizer (on real LLM texts) and the rule-based caption split."""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest

from finedual_jax.data import decompose
from finedual_jax.data import tokenizer as tokenizer_lib

_SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
_PLANS = _SHARED_DATA / 'intercontrol' / 'plans.json'
_DEMO_PROMPTS = _SHARED_DATA / 'demo_prompts.txt'
_MAX_LEN = 96  # Longer than any text of the corpus once tokenised (checked below).


@pytest.fixture(scope='module')
def texts() -> list[str]:
  if not _PLANS.is_file():
    pytest.skip(f'real LLM texts not available: {_PLANS} is absent (shared data is not shipped).')
  records = json.loads(_PLANS.read_text(encoding='utf-8'))
  return [r[key] for r in records for key in ('text_person1', 'text_person2')]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('spm')


@pytest.fixture(scope='module')
def tok(texts, model_dir) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.train_tokenizer(texts, model_dir / 'a' / 'spm.model', vocab_size=500)


def _sample(texts: list[str], count: int = 6) -> list[str]:
  """A few ASCII texts (NFKC case folding is plain lower-casing on ASCII)."""
  return [t for t in texts if t.isascii()][::97][:count]


def test_training_is_deterministic(texts, tok, model_dir):
  again = tokenizer_lib.train_tokenizer(texts, model_dir / 'b' / 'spm.model', vocab_size=500)
  assert again.path.read_bytes() == tok.path.read_bytes()
  assert not list(model_dir.glob('*/*.tmp'))  # The atomic write leaves no temporary behind.


def test_vocabulary_is_bounded_and_special_ids_are_reserved(tok):
  assert 10 < tok.vocab_size <= 500
  sp = tok._sp  # pylint: disable=protected-access
  assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (
      tokenizer_lib.PAD_ID, tokenizer_lib.UNK_ID, tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID)


def test_encode_layout_bos_pieces_eos_then_padding(tok, texts):
  sample = _sample(texts)
  ids = tok.encode(sample, _MAX_LEN)
  assert ids.shape == (len(sample), _MAX_LEN) and ids.dtype == np.int32
  for row, text in zip(ids, sample):
    n = tok.num_tokens(text)
    assert 3 <= n <= _MAX_LEN
    assert row[0] == tokenizer_lib.BOS_ID
    assert row[n - 1] == tokenizer_lib.EOS_ID
    np.testing.assert_array_equal(row[n:], 0)
    inner = row[1:n - 1]
    assert np.all(inner > tokenizer_lib.EOS_ID)  # No special ids (and no UNK) among the pieces.
  single = tok.encode(sample[0], _MAX_LEN)
  assert single.shape == (_MAX_LEN,)
  np.testing.assert_array_equal(single, ids[0])


def test_every_corpus_text_fits_and_round_trips_normalised(tok, texts):
  lengths = [tok.num_tokens(t) for t in texts]
  assert max(lengths) <= _MAX_LEN
  for text in _sample(texts):
    assert tok.decode(tok.encode(text, _MAX_LEN)) == ' '.join(text.split()).lower()


def test_truncation_keeps_bos_and_eos(tok, texts):
  text = max(texts, key=len)
  ids = tok.encode(text, 8)
  full = tok.encode(text, _MAX_LEN)
  assert ids.shape == (8,)
  assert ids[0] == tokenizer_lib.BOS_ID and ids[-1] == tokenizer_lib.EOS_ID
  np.testing.assert_array_equal(ids[:7], full[:7])  # A prefix of the untruncated encoding.


def test_no_truncation_raises_naming_the_limit(tok, texts):
  text = max(texts, key=len)
  with pytest.raises(ValueError, match='limit of 8'):
    tok.encode([texts[0], text], 8, truncate=False)
  short = _sample(texts)[0]
  np.testing.assert_array_equal(tok.encode(short, _MAX_LEN, truncate=False),
                                tok.encode(short, _MAX_LEN))


def test_pickled_tokenizer_carries_its_model_and_encodes_identically(tok, texts, model_dir,
                                                                     tmp_path):
  sample = _sample(texts)
  # A copy whose file then disappears: the pickle must carry the model, not only the path.
  path = tmp_path / 'gone.model'
  path.write_bytes(tok.path.read_bytes())
  payload = pickle.dumps(tokenizer_lib.Tokenizer(path))
  path.unlink()
  clone = pickle.loads(payload)
  np.testing.assert_array_equal(clone.encode(sample, _MAX_LEN), tok.encode(sample, _MAX_LEN))
  assert clone.vocab_size == tok.vocab_size


def test_missing_model_and_empty_corpus_are_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.model'):
    tokenizer_lib.Tokenizer(tmp_path / 'nothing.model')
  with pytest.raises(ValueError, match='no non-empty texts'):
    tokenizer_lib.train_tokenizer(['', '   '], tmp_path / 'x.model')


# --- Rule-based split -----------------------------------------------------------------------

def test_role_split_with_who_clause():
  assert decompose.rule_based_split('One person pushes the other, who stumbles back.') == (
      'The person pushes the other.', 'The person stumbles back.')


def test_role_split_with_while():
  assert decompose.rule_based_split('one person waves while the other person bows') == (
      'The person waves.', 'The person bows.')


@pytest.mark.parametrize('caption, expected', [
    ('Two people hug each other.', 'The person hugs the other person.'),
    ('Both people are dancing.', 'The person is dancing.'),
    ('They walk and talk.', 'The person walks and talks.'),
    ('Two people watch one another and clap.', 'The person watches the other person and claps.'),
    ('The two carry a box.', 'The person carries a box.'),
])
def test_plural_subject_is_rewritten_for_both_persons(caption, expected):
  assert decompose.rule_based_split(caption) == (expected, expected)


def test_other_captions_are_given_to_both_unchanged_and_whitespace_is_collapsed():
  caption = 'Dancers  circle\tslowly.'
  assert decompose.rule_based_split(caption) == ('Dancers circle slowly.',) * 2


def test_split_is_deterministic():
  captions = ['One person pushes the other, who stumbles back.', 'Two people bow to each other.']
  assert [decompose.rule_based_split(c) for c in captions] == [
      decompose.rule_based_split(c) for c in captions]


@pytest.mark.parametrize('caption', ['', '   \n\t'])
def test_empty_caption_raises(caption):
  with pytest.raises(ValueError, match='empty'):
    decompose.rule_based_split(caption)


def test_demo_prompts_never_give_empty_texts():
  if not _DEMO_PROMPTS.is_file():
    pytest.skip(f'demo prompts not available: {_DEMO_PROMPTS} is absent.')
  captions = [line for line in _DEMO_PROMPTS.read_text(encoding='utf-8').splitlines() if line.strip()]
  assert captions
  for caption in captions:
    person1, person2 = decompose.rule_based_split(caption)
    assert person1.strip() and person2.strip(), caption
    assert (person1, person2) == decompose.rule_based_split(caption)


def test_conjunction_is_a_whole_word():
  person1, _ = decompose.rule_based_split('One person has the other person sit down.')
  assert person1 != 'The person h.'
  assert 'has' in person1


def test_participle_after_and_is_not_inflected():
  person1, _ = decompose.rule_based_split(
      'Two people are waving their hands and performing a dance step.')
  assert 'performings' not in person1
  assert person1 == 'The person is waving their hands and performing a dance step.'

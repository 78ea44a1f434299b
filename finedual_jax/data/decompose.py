"""Per-person texts for an overall caption when no LLM decomposition is available (DESIGN §1.4).

The rule is deterministic and deliberately simple: it splits captions of the common
"one person ..., (and/while) the other ..." form into the two roles and otherwise gives both
persons the caption with its plural subject rewritten ("Two people hug." -> "The person hugs
the other person."). A model trained with real decompositions should get real ones at sampling.
"""

from __future__ import annotations

import re

_ROLE_SPLIT = re.compile(
    r'^\s*(?:one person|one of them|a person|the first person|person 1)\s+(?P<a>.+?)'
    r'\s*(?:,\s*)?(?:\b(?:and|while|as)\b|,)\s+(?:the other(?: person)?|the second person|person 2)'
    r'(?:,\s*who)?\s+(?P<b>.+?)\s*[.!]?\s*$', re.IGNORECASE)
_WHO_SPLIT = re.compile(
    r'^\s*(?:one person|one of them|a person)\s+(?P<a>.+?\bthe other(?: person)?)\s*,?\s+who\s+'
    r'(?P<b>.+?)\s*[.!]?\s*$', re.IGNORECASE)
_PLURAL_SUBJECT = re.compile(r'^\s*(?:two people|two persons|the two people|the two|both people|'
                             r'both persons|both|they|two men|two women|a couple)\s+', re.IGNORECASE)
_OBJECT = re.compile(r'\b(?:each other|one another)\b', re.IGNORECASE)

# Third-person singular of the verb that follows a rewritten plural subject.
_IRREGULAR = {'are': 'is', 'have': 'has', 'do': 'does', 'go': 'goes'}


def _singular_verb(verb: str) -> str:
  lower = verb.lower()
  if lower in _IRREGULAR:
    return _IRREGULAR[lower]
  if lower.endswith(('s', 'x', 'z', 'ch', 'sh', 'o')):
    return verb + 'es'
  if lower.endswith('y') and len(lower) > 1 and lower[-2] not in 'aeiou':
    return verb[:-1] + 'ies'
  return verb + 's'


def _sentence(text: str) -> str:
  text = text.strip().rstrip('.!').strip()
  return f'The person {text}.'


def rule_based_split(caption: str) -> tuple[str, str]:
  """Overall caption -> (person 1 text, person 2 text), deterministically."""
  caption = ' '.join(caption.split())
  if not caption:
    raise ValueError('rule_based_split: the caption is empty.')
  match = _ROLE_SPLIT.match(caption) or _WHO_SPLIT.match(caption)
  if match:
    return _sentence(match.group('a')), _sentence(match.group('b'))
  subject = _PLURAL_SUBJECT.match(caption)
  if subject:
    rest = caption[subject.end():]
    verb, _, tail = rest.partition(' ')
    rest = (_singular_verb(verb) + (' ' + tail if tail else '')).strip()
    # A second verb joined by "and" agrees with the singular subject too.
    rest = re.sub(r'\band (?!the\b|a\b|an\b|their\b|his\b|her\b)([a-z]+(?<!ing))\b',
                  lambda m: 'and ' + _singular_verb(m.group(1)), rest)
    rest = _OBJECT.sub('the other person', rest)
    text = _sentence(rest)
    return text, text
  return caption, caption

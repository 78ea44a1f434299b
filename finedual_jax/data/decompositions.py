"""Per-person texts produced offline by an LLM (DESIGN §1.4): the JSONL record and its checks.

One JSON object per line::

    {"clip_id": "1234", "caption_index": 0, "overall": "Two people shake hands.",
     "person1": "A person reaches out a right hand.", "person2": "A person shakes it.",
     "model": "some-llm", "prompt_version": "decompose-v1"}

``data_pipelines.llm_decompose`` writes such files; the data set build reads them (they win over
``annots_individual/`` and over the rule-based split) and ``finedual_jax.sample`` can look texts
up in them by overall caption.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Iterable, Literal

from finedual_jax.data import text_files

FIELDS = ('clip_id', 'caption_index', 'overall', 'person1', 'person2', 'model', 'prompt_version')
OnError = Literal['strict', 'skip']


@dataclasses.dataclass(frozen=True)
class Decomposition:
  """One overall caption split into one text per person."""
  clip_id: str
  caption_index: int
  overall: str
  person1: str
  person2: str
  model: str
  prompt_version: str

  @property
  def key(self) -> tuple[str, int]:
    return self.clip_id, self.caption_index

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


def from_dict(record: object) -> Decomposition:
  """Validates one parsed JSON value; raises ValueError saying what is wrong with it."""
  if not isinstance(record, dict):
    raise ValueError(f'expected a JSON object, found {type(record).__name__}')
  missing = [f for f in FIELDS if f not in record]
  if missing:
    raise ValueError(f'missing field(s) {missing}; a record needs {list(FIELDS)}')
  index = record['caption_index']
  if isinstance(index, bool) or not isinstance(index, int) or index < 0:
    raise ValueError(f'"caption_index" must be an integer >= 0, found {index!r}')
  values = {}
  for field in FIELDS:
    if field == 'caption_index':
      continue
    value = record[field]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
      raise ValueError(f'"{field}" must be a string, found {type(value).__name__}')
    values[field] = ' '.join(str(value).split())
    if field in ('clip_id', 'overall', 'person1', 'person2') and not values[field]:
      raise ValueError(f'"{field}" is empty')
  return Decomposition(caption_index=index, **values)


def read_jsonl(path: str | pathlib.Path, on_error: OnError = 'strict'
               ) -> tuple[list[Decomposition], list[dict]]:
  """Reads a decomposition file; returns the records and the problems skipped.

  Each problem is ``{'file', 'line', 'reason'}``. With ``on_error='strict'`` the first problem
  raises a ValueError naming the file and line instead. A second record for the same
  (clip_id, caption_index) is a problem too: which one to trust would be a guess.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'decomposition file not found: {path}')
  lines = text_files.read_text(path).splitlines()
  records, problems, seen = [], [], {}
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      try:
        parsed = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'not valid JSON ({e.msg} at column {e.colno})') from None
      record = from_dict(parsed)
      if record.key in seen:
        raise ValueError(f'a second record for clip {record.clip_id!r} caption '
                         f'{record.caption_index} (the first is on line {seen[record.key]})')
    except ValueError as e:
      if on_error == 'strict':
        raise ValueError(f'{path}:{number}: {e}.') from None
      problems.append({'file': str(path), 'line': number, 'reason': str(e)})
      continue
    seen[record.key] = number
    records.append(record)
  return records, problems


def write_jsonl(path: str | pathlib.Path, records: Iterable[Decomposition]) -> None:
  """Writes records, one per line (UTF-8), replacing ``path`` atomically."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(''.join(r.to_json() + '\n' for r in records), encoding='utf-8')
  tmp.replace(path)

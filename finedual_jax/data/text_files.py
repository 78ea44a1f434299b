"""Reading the project's small text files (captions, split lists, prompts, JSONL) as UTF-8."""

from __future__ import annotations

import pathlib


def read_text(path: str | pathlib.Path) -> str:
  """The file's text; a file that is not UTF-8 gets a ValueError naming it and the byte."""
  path = pathlib.Path(path)
  try:
    return path.read_bytes().decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as '
                     'UTF-8.') from None


def read_lines(path: str | pathlib.Path) -> list[str]:
  """Non-blank lines of a UTF-8 text file, stripped."""
  return [line.strip() for line in read_text(path).splitlines() if line.strip()]

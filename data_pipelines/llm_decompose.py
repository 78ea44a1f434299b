"""Per-person texts for every InterHuman caption from any OpenAI-compatible chat endpoint.

    python -m data_pipelines.llm_decompose --manual_dir /path/to/InterHuman \
        --out decompositions.jsonl --model gpt-4o-mini [--limit 20]

Each overall caption of ``ROOT/annots/<id>.txt`` (for the clips of ``ROOT/split/<split>.txt``,
less ``ROOT/split/ignore_list.txt``) is sent with a versioned system prompt
(``prompts/decompose_v1.txt``) to ``{base_url}/chat/completions``; the reply must be a JSON
object ``{"person1": ..., "person2": ...}``. Valid replies become
``finedual_jax.data.decompositions`` records, appended to ``--out`` one line at a time.

The run can be stopped and started again at will: captions already in ``--out`` are not asked
again, every valid reply is cached in ``--cache_dir`` (so a new output file costs no request),
and a last line cut short by a kill is dropped. Captions that still fail after the retries are
listed in ``<out>.failures.json``; running again retries them.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import hashlib
import http.client
import json
import logging
import os
import pathlib
import re
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

from finedual_jax.data import decompositions

SPLITS = ('train', 'val', 'test')
DEFAULT_PROMPT = pathlib.Path(__file__).parent / 'prompts' / 'decompose_v1.txt'
DEFAULT_BASE_URL = 'https://api.openai.com/v1'
MAX_BACKOFF_S = 60.0
# A Retry-After is honoured up to this; a server asking for more is more likely misconfigured.
MAX_RETRY_AFTER_S = 600.0
_KEY_SEPARATOR = '\n\0\n'
_log = logging.getLogger(__name__)
_FENCE = re.compile(r'^```[A-Za-z]*[ \t]*\n?(.*?)\n?[ \t]*```$', re.DOTALL)


class InputError(ValueError):
  """An input (folder layout, caption file, output file, argument) is not usable as it is."""


class InvalidReply(ValueError):
  """The endpoint answered, but not with the JSON object the prompt asks for."""


class _Retryable(Exception):
  """A failed attempt worth repeating (rate limit, server error, network trouble)."""

  def __init__(self, reason: str, retry_after: float | None = None):
    super().__init__(reason)
    self.retry_after = retry_after


class _Fatal(Exception):
  """A failed attempt that repeating would not fix (a 4xx other than 408 and 429)."""


@dataclasses.dataclass(frozen=True)
class Caption:
  """One overall caption of one clip; ``caption_index`` counts the non-blank lines."""
  clip_id: str
  caption_index: int
  text: str

  @property
  def key(self) -> tuple[str, int]:
    return self.clip_id, self.caption_index


@dataclasses.dataclass(frozen=True)
class Summary:
  """Counts of one run; ``total`` = the sum of the other five."""
  total: int         # Captions of the chosen splits.
  already_done: int  # Found in the output file at the start.
  from_cache: int    # Written from the cache, no request.
  requested: int     # Answered validly by the endpoint in this run.
  failed: int        # Given up on; listed in the failures file.
  remaining: int     # Not processed because of ``limit``.


def failures_path(out: str | pathlib.Path) -> pathlib.Path:
  """Where the failures of a run writing ``out`` are listed."""
  out = pathlib.Path(out)
  return out.with_name(out.name + '.failures.json')


def _read_text(path: pathlib.Path, what: str) -> str:
  try:
    return path.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise InputError(f'{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start}); '
                     're-save it as UTF-8.') from None


def _lines(path: pathlib.Path, what: str) -> list[str]:
  return [line.strip() for line in _read_text(path, what).splitlines() if line.strip()]


def read_captions(manual_dir: str | pathlib.Path,
                  splits: Sequence[str] = SPLITS) -> list[Caption]:
  """Every caption of the clips listed in ``splits`` (ignored clips left out), in file order."""
  root = pathlib.Path(manual_dir)
  unknown = [s for s in splits if s not in SPLITS]
  if unknown or not splits:
    raise InputError(f'splits must be a non-empty subset of {list(SPLITS)}, found {list(splits)}.')
  for path in [root / 'annots'] + [root / 'split' / f'{s}.txt' for s in splits]:
    if not path.exists():
      raise FileNotFoundError(
          f'{path} not found: --manual_dir {root} must hold InterHuman\'s layout '
          f'(annots/<id>.txt and split/<split>.txt for the splits {list(splits)}).')
  ignore_path = root / 'split' / 'ignore_list.txt'
  ignored = set(_lines(ignore_path, 'the ignore list')) if ignore_path.is_file() else set()
  captions, seen = [], set()
  for split in splits:
    split_path = root / 'split' / f'{split}.txt'
    for clip_id in _lines(split_path, 'a split file'):
      if clip_id in ignored or clip_id in seen:
        continue
      seen.add(clip_id)
      annot_path = root / 'annots' / f'{clip_id}.txt'
      if not annot_path.is_file():
        raise FileNotFoundError(f'{annot_path} not found: clip {clip_id!r} is listed in '
                                f'{split_path} but has no caption file (add it, or list the clip '
                                f'in {ignore_path}).')
      texts = _lines(annot_path, 'a caption file')
      if not texts:
        _log.warning('%s holds no caption; clip %s is skipped.', annot_path, clip_id)
      captions.extend(Caption(clip_id, i, text) for i, text in enumerate(texts))
  return captions


def _same_text(a: str, b: str) -> bool:
  return ' '.join(a.split()).lower() == ' '.join(b.split()).lower()


def parse_reply(content: str) -> tuple[str, str]:
  """The (person1, person2) texts of a reply; raises InvalidReply saying what is wrong.

  The reply must be exactly one JSON object, optionally inside a fenced code block, with two
  different non-empty strings ``person1`` and ``person2``.
  """
  if not isinstance(content, str):
    raise InvalidReply(f'the message content is {type(content).__name__}, not text')
  text = content.strip()
  fenced = _FENCE.match(text)
  if fenced:
    text = fenced.group(1).strip()
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise InvalidReply(f'the reply is not one JSON object ({e.msg} at column {e.colno}): '
                       f'{content[:200]!r}') from None
  if not isinstance(value, dict):
    raise InvalidReply(f'the reply is JSON {type(value).__name__}, not an object: '
                       f'{content[:200]!r}')
  return _person_texts(value)


def _person_texts(value: dict) -> tuple[str, str]:
  """The two validated, whitespace-collapsed texts of a parsed reply or cache entry."""
  texts = []
  for field in ('person1', 'person2'):
    if field not in value:
      raise InvalidReply(f'the reply has no "{field}" (keys: {sorted(value)})')
    if not isinstance(value[field], str) or not value[field].strip():
      raise InvalidReply(f'"{field}" must be a non-empty string, found {value[field]!r}')
    texts.append(' '.join(value[field].split()))
  if _same_text(*texts):
    raise InvalidReply(f'"person1" and "person2" are the same text: {texts[0]!r}')
  return texts[0], texts[1]


def cache_key(prompt: str, model: str, caption: str) -> str:
  """The cache file stem of one request: sha256 of prompt, model and caption."""
  joined = _KEY_SEPARATOR.join((prompt, model, caption))
  return hashlib.sha256(joined.encode('utf-8')).hexdigest()


def _read_cache(path: pathlib.Path) -> tuple[str, str] | None:
  if not path.is_file():
    return None
  try:
    entry = json.loads(path.read_text(encoding='utf-8'))
    if not isinstance(entry, dict):
      raise ValueError(f'expected a JSON object, found {type(entry).__name__}')
    return _person_texts(entry)
  except ValueError as e:  # Also JSONDecodeError, UnicodeDecodeError and InvalidReply.
    _log.warning('ignoring unusable cache file %s (%s); asking again.', path, e)
    return None


def _write_atomically(path: pathlib.Path, data: str | bytes) -> None:
  """Replaces ``path`` by ``data`` (UTF-8 if text) so that readers never see half a file."""
  tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
  tmp.write_bytes(data.encode('utf-8') if isinstance(data, str) else data)
  os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """An OpenAI-compatible chat completions endpoint and the settings of each request."""
  base_url: str
  model: str
  api_key: str | None = None
  timeout: float = 60.0
  temperature: float = 0.0

  @property
  def url(self) -> str:
    return self.base_url.rstrip('/') + '/chat/completions'

  def complete(self, system: str, user: str) -> str:
    """One attempt: the reply's text; raises _Retryable, _Fatal or InvalidReply."""
    body = json.dumps({'model': self.model, 'temperature': self.temperature,
                       'messages': [{'role': 'system', 'content': system},
                                    {'role': 'user', 'content': user}]}).encode('utf-8')
    headers = {'Content-Type': 'application/json', 'Accept': 'application/json',
               'User-Agent': 'finedual-jax-llm-decompose'}
    if self.api_key:
      headers['Authorization'] = f'Bearer {self.api_key}'
    request = urllib.request.Request(self.url, data=body, headers=headers, method='POST')
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        raw = response.read()
    except urllib.error.HTTPError as e:
      reason = f'HTTP {e.code} from {self.url}: {_server_message(e)}'
      if e.code in (408, 429) or e.code >= 500:
        raise _Retryable(reason, _retry_after(e.headers.get('Retry-After'))) from None
      raise _Fatal(reason) from None
    except TimeoutError:
      raise _Retryable(f'no answer from {self.url} within {self.timeout} s') from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
      detail = e.reason if isinstance(e, urllib.error.URLError) else e
      raise _Retryable(f'connection to {self.url} failed: {detail}') from None
    try:
      return json.loads(raw.decode('utf-8'))['choices'][0]['message']['content']
    except (ValueError, KeyError, IndexError, TypeError):
      raise InvalidReply(f'the response is not a chat completion (no choices[0].message.content):'
                         f' {raw[:200]!r}') from None


def _server_message(error: urllib.error.HTTPError) -> str:
  try:
    text = error.read().decode('utf-8', errors='replace')
  except (OSError, http.client.HTTPException):
    return str(error.reason)
  try:
    detail = json.loads(text)['error']
    text = detail['message'] if isinstance(detail, dict) else str(detail)
  except (ValueError, KeyError, TypeError):
    pass
  text = ' '.join(text.split())
  return text[:500] or str(error.reason)


def _retry_after(value: str | None) -> float | None:
  """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent/bad."""
  if not value:
    return None
  try:
    seconds = float(value)
  except ValueError:
    try:
      seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
      return None
  return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class RequestFailed(Exception):
  """A caption could not be decomposed; the message is the reason recorded."""


def decompose(caption: str, prompt: str, endpoint: Endpoint, *, max_retries: int = 5,
              backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep
              ) -> tuple[str, str, str]:
  """(person1, person2, raw reply) for one caption, retrying; raises RequestFailed.

  Rate limits, server errors, network trouble and invalid replies are retried up to
  ``max_retries`` times, waiting ``backoff * 2**n`` seconds before retry n (at most
  MAX_BACKOFF_S), or longer when the server's Retry-After says so. Other 4xx fail at once.
  """
  last = None
  for attempt in range(max_retries + 1):
    try:
      content = endpoint.complete(prompt, caption)
      person1, person2 = parse_reply(content)
      return person1, person2, content
    except _Fatal as e:
      raise RequestFailed(str(e)) from None
    except (_Retryable, InvalidReply) as e:
      last = e
    if attempt == max_retries:
      break
    delay = min(backoff * 2 ** attempt, MAX_BACKOFF_S)
    retry_after = getattr(last, 'retry_after', None)
    if retry_after is not None:
      delay = max(delay, retry_after)
    _log.debug('attempt %d for %r failed (%s); retrying in %.1f s', attempt + 1, caption,
               last, delay)
    sleep(delay)
  kind = 'invalid reply' if isinstance(last, InvalidReply) else 'error'
  raise RequestFailed(f'gave up after {max_retries + 1} attempt(s); last {kind}: {last}')


def _check_last_line(out: pathlib.Path) -> None:
  """Drops a malformed last line of ``out`` (a run killed mid-write) and ends it with a newline."""
  data = out.read_bytes()
  lines = data.splitlines(keepends=True)
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    return
  try:
    decompositions.from_dict(json.loads(lines[-1].decode('utf-8')))
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors.
    _log.warning('%s: dropping its malformed last line %d (a run stopped mid-write?): %s',
                 out, len(lines), e)
    _write_atomically(out, b''.join(lines[:-1]))
    return
  if not data.endswith(b'\n'):
    with out.open('ab') as f:
      f.write(b'\n')


def _done_keys(out: pathlib.Path) -> set[tuple[str, int]]:
  """The (clip_id, caption_index) already in ``out``, after repairing a cut last line."""
  if not out.exists():
    return set()
  _check_last_line(out)
  try:
    records, problems = decompositions.read_jsonl(out, on_error='skip')
  except ValueError as e:
    raise InputError(str(e)) from None
  if problems:
    listed = '; '.join(f'line {p["line"]}: {p["reason"]}' for p in problems[:5])
    raise InputError(f'{out}: {len(problems)} malformed line(s) before the last one ({listed}). '
                     'Correct or delete them (or write to a new --out; the cache makes that '
                     'cheap), then run again.')
  return {r.key for r in records}


def run(manual_dir: str | pathlib.Path, out: str | pathlib.Path, *, base_url: str, model: str,
        api_key: str | None = None, prompt_path: str | pathlib.Path | None = None,
        cache_dir: str | pathlib.Path | None = None, splits: Sequence[str] = SPLITS,
        max_retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
        limit: int | None = None, temperature: float = 0.0,
        sleep: Callable[[float], None] = time.sleep) -> Summary:
  """Decomposes every caption of ``manual_dir`` not yet in ``out``; see the module docstring."""
  if not model:
    raise InputError('no model given: pass --model or set FINEDUAL_LLM_MODEL.')
  if not base_url.startswith(('http://', 'https://')):
    raise InputError(f'base_url must start with http:// or https://, found {base_url!r}.')
  for name, value in (('max_retries', max_retries), ('backoff', backoff),
                      ('temperature', temperature), ('limit', limit or 0)):
    if value < 0:
      raise InputError(f'{name} must be >= 0, found {value}.')
  if timeout <= 0:
    raise InputError(f'timeout must be > 0 seconds, found {timeout}.')
  out = pathlib.Path(out)
  prompt_path = pathlib.Path(prompt_path or DEFAULT_PROMPT)
  if not prompt_path.is_file():
    raise FileNotFoundError(f'prompt file not found: {prompt_path}')
  prompt = _read_text(prompt_path, 'the prompt').strip()
  if not prompt:
    raise InputError(f'{prompt_path}: the prompt is empty.')
  prompt_version = prompt_path.stem
  cache_dir = pathlib.Path(cache_dir) if cache_dir else out.with_name(out.name + '.cache')
  endpoint = Endpoint(base_url, model, api_key, timeout, temperature)

  captions = read_captions(manual_dir, splits)
  out.parent.mkdir(parents=True, exist_ok=True)
  cache_dir.mkdir(parents=True, exist_ok=True)
  done = _done_keys(out)
  todo = [c for c in captions if c.key not in done]
  counts = dict(from_cache=0, requested=0)
  failures = []
  processed = 0
  try:
    with out.open('a', encoding='utf-8') as sink:
      for caption in todo:
        if limit is not None and processed >= limit:
          break
        processed += 1
        cache_path = cache_dir / f'{cache_key(prompt, model, caption.text)}.json'
        texts = _read_cache(cache_path)
        if texts is not None:
          counts['from_cache'] += 1
        else:
          try:
            *texts, raw = decompose(caption.text, prompt, endpoint, max_retries=max_retries,
                                    backoff=backoff, sleep=sleep)
          except RequestFailed as e:
            _log.warning('clip %s caption %d failed: %s', caption.clip_id,
                         caption.caption_index, e)
            failures.append({'clip_id': caption.clip_id, 'caption_index': caption.caption_index,
                             'caption': caption.text, 'reason': str(e)})
            continue
          _write_atomically(cache_path, json.dumps(
              {'caption': caption.text, 'model': model, 'prompt_version': prompt_version,
               'person1': texts[0], 'person2': texts[1], 'raw': raw}, ensure_ascii=False))
          counts['requested'] += 1
        record = decompositions.from_dict({
            'clip_id': caption.clip_id, 'caption_index': caption.caption_index,
            'overall': caption.text, 'person1': texts[0], 'person2': texts[1], 'model': model,
            'prompt_version': prompt_version})
        sink.write(record.to_json() + '\n')
        sink.flush()
        if processed % 100 == 0:
          _log.info('%d/%d captions processed (%d failed)', processed, len(todo),
                    len(failures))
  finally:
    _write_atomically(failures_path(out), json.dumps(failures, ensure_ascii=False, indent=1))
  return Summary(total=len(captions), already_done=len(captions) - len(todo),
                 from_cache=counts['from_cache'], requested=counts['requested'],
                 failed=len(failures), remaining=len(todo) - processed)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (0 all done, 1 some failed, 2 bad input)."""
  parser = argparse.ArgumentParser(prog='python -m data_pipelines.llm_decompose',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--manual_dir', required=True, help='InterHuman-layout folder (read).')
  parser.add_argument('--out', required=True, help='output JSONL (appended to; resumable).')
  parser.add_argument('--splits', default=','.join(SPLITS),
                      help='comma-separated splits (default: %(default)s).')
  parser.add_argument('--base_url', default=os.environ.get('OPENAI_BASE_URL') or DEFAULT_BASE_URL,
                      help=f'endpoint root (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL}).')
  parser.add_argument('--model', default=os.environ.get('FINEDUAL_LLM_MODEL'),
                      help='model name (default: $FINEDUAL_LLM_MODEL; one of them is required).')
  parser.add_argument('--api_key_env', default='OPENAI_API_KEY',
                      help='environment variable holding the API key; without a key no '
                      'Authorization header is sent (default: %(default)s).')
  parser.add_argument('--prompt', default=str(DEFAULT_PROMPT),
                      help='system prompt file; its stem is the records\' prompt_version '
                      '(default: the packaged prompts/decompose_v1.txt).')
  parser.add_argument('--cache_dir', default=None, help='reply cache (default: <out>.cache).')
  parser.add_argument('--max_retries', type=int, default=5,
                      help='retries per caption (default: %(default)s).')
  parser.add_argument('--backoff', type=float, default=1.0,
                      help='seconds before the first retry, doubling each time, at most 60; '
                      'a longer Retry-After wins (default: %(default)s).')
  parser.add_argument('--timeout', type=float, default=60.0,
                      help='seconds per request (default: %(default)s).')
  parser.add_argument('--limit', type=int, default=None,
                      help='process at most this many captions in this run (to try things out).')
  parser.add_argument('--temperature', type=float, default=0.0,
                      help='sampling temperature (default: %(default)s).')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
  if not args.model:
    print('error: no model given: pass --model NAME or set FINEDUAL_LLM_MODEL.', file=sys.stderr)
    return 2
  try:
    summary = run(
        args.manual_dir, args.out, base_url=args.base_url, model=args.model,
        api_key=os.environ.get(args.api_key_env) or None, prompt_path=args.prompt,
        cache_dir=args.cache_dir, splits=[s.strip() for s in args.splits.split(',') if s.strip()],
        max_retries=args.max_retries, backoff=args.backoff, timeout=args.timeout,
        limit=args.limit, temperature=args.temperature)
  except (InputError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{args.out}: {summary.total} captions: {summary.already_done} already done, '
        f'{summary.from_cache} from cache, {summary.requested} requested, {summary.failed} failed'
        + (f', {summary.remaining} left for a later run (--limit)' if summary.remaining else '')
        + '.')
  if summary.failed:
    print(f'{summary.failed} caption(s) failed; see {failures_path(args.out)} for the reasons '
          '(running again retries them).', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Tests for the LLM decomposition tool against a real local HTTP server playing the endpoint.

The fake endpoint answers deterministically and can be told, per caption, to misbehave for its
next attempts. Back-off sleeps go to a recorder, so no test waits for real (the timeout test
waits for its 0.2 s timeout once).
"""

from __future__ import annotations

import http.server
import json
import pathlib
import threading

import pytest

from data_pipelines import llm_decompose
from finedual_jax.data import decompositions

MODEL = 'fake-llm-1'
PROMPT = llm_decompose.DEFAULT_PROMPT.read_text(encoding='utf-8').strip()
CAPTIONS = {  # clip id -> (split, captions); 0005 is train but ignored.
    '0001': ('train', ['Two people shake hands.',
                       'One person waves with the left hand, the other waves back.']),
    '0002': ('train', ['One person pushes the other.', 'Two people hug.',
                       'The first one bows — the second one claps.']),
    '0003': ('val', ['Two people dance together.']),
    '0004': ('test', ['Two people argue.']),
    '0005': ('train', ['An ignored clip.']),
}
TRAIN_VAL = ('train', 'val')
EXPECTED = {(clip_id, i): text for clip_id, (split, texts) in CAPTIONS.items()
            if split in TRAIN_VAL and clip_id != '0005' for i, text in enumerate(texts)}


def answer(caption: str) -> tuple[str, str]:
  return f'A person starts: {caption}', f'A person answers: {caption}'


class FakeEndpoint:
  """State of the fake endpoint: what it was asked and how it should answer next."""

  def __init__(self):
    self.requests = []  # {'caption', 'authorization', 'body'} per POST, in arrival order.
    self.problems = []  # Requests the fake found malformed.
    self.script = {}    # caption -> behaviours for its next attempts ('ok' once used up).
    self.release = threading.Event()  # Ends 'hang' answers early at teardown.
    self.lock = threading.Lock()
    self.base_url = ''

  def next_behaviour(self, caption: str) -> str:
    with self.lock:
      queue = self.script.get(caption, [])
      return queue.pop(0) if queue else 'ok'

  def captions_asked(self) -> list[str]:
    return [r['caption'] for r in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
  """POST /v1/chat/completions, checked and answered as the FakeEndpoint says."""

  def log_message(self, *args):  # Keep the test output quiet.
    pass

  def _send(self, status: int, payload: object, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode('utf-8')
    self.send_response(status)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    self.end_headers()
    self.wfile.write(data)

  def _reply(self, content: str) -> None:
    self._send(200, {'id': 'x', 'object': 'chat.completion', 'model': MODEL, 'choices': [
        {'index': 0, 'finish_reason': 'stop',
         'message': {'role': 'assistant', 'content': content}}]})

  def do_POST(self):  # pylint: disable=invalid-name
    fake: FakeEndpoint = self.server.fake
    body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
    messages = body.get('messages', [])
    problem = None
    if self.path != '/v1/chat/completions':
      problem = f'path {self.path}'
    elif body.get('model') != MODEL:
      problem = f'model {body.get("model")!r}'
    elif ([m.get('role') for m in messages] != ['system', 'user']
          or messages[0].get('content') != PROMPT):
      problem = f'messages {messages!r}'
    elif body.get('temperature') != 0:
      problem = f'temperature {body.get("temperature")!r}'
    if problem:
      fake.problems.append(problem)
      self._send(400, {'error': {'message': f'fake: bad request: {problem}'}})
      return
    caption = messages[1]['content']
    with fake.lock:
      fake.requests.append({'caption': caption, 'body': body,
                            'authorization': self.headers.get('Authorization')})
    behaviour = fake.next_behaviour(caption)
    person1, person2 = answer(caption)
    if behaviour == 'hang':
      fake.release.wait(5)
      behaviour = 'ok'
    if behaviour == 'ok':
      self._reply(json.dumps({'person1': person1, 'person2': person2}))
    elif behaviour == 'fenced':
      self._reply('\n```json\n' + json.dumps({'person1': person1, 'person2': person2}) + '\n```\n')
    elif behaviour == '500':
      self._send(500, {'error': {'message': 'fake: overloaded'}})
    elif behaviour.startswith('429:'):
      self._send(429, {'error': {'message': 'fake: slow down'}},
                 {'Retry-After': behaviour.split(':')[1]})
    elif behaviour == '400':
      self._send(400, {'error': {'message': 'fake: content policy says no'}})
    elif behaviour == 'drop':
      self.close_connection = True  # No answer at all: the client sees a broken connection.
    elif behaviour == 'same':
      self._reply(json.dumps({'person1': person1, 'person2': f'  {person1.upper()} '}))
    elif behaviour == 'missing':
      self._reply(json.dumps({'person1': person1}))
    elif behaviour == 'notjson':
      self._reply(f'Sure! Person 1: {person1} Person 2: {person2}')
    elif behaviour == 'empty':
      self._reply(json.dumps({'person1': person1, 'person2': '   '}))
    else:
      raise AssertionError(f'unknown behaviour {behaviour!r}')


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
  for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy',
               'ALL_PROXY'):
    monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake():
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  server.fake = FakeEndpoint()
  server.fake.base_url = f'http://127.0.0.1:{server.server_address[1]}/v1'
  # A short poll interval: shutdown() waits up to one interval.
  thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.01},
                            daemon=True)
  thread.start()
  yield server.fake
  server.fake.release.set()
  server.shutdown()
  server.server_close()
  thread.join(timeout=5)
  assert not server.fake.problems, server.fake.problems


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
  """A tiny InterHuman-like folder (captions only; this tool needs no motions)."""
  root = tmp_path / 'interhuman'
  (root / 'annots').mkdir(parents=True)
  (root / 'split').mkdir()
  splits = {'train': [], 'val': [], 'test': []}
  for clip_id, (split, texts) in CAPTIONS.items():
    # A blank line inside: caption indices count non-blank lines only.
    lines = texts[:1] + [''] + texts[1:]
    (root / 'annots' / f'{clip_id}.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    splits[split].append(clip_id)
  for split, ids in splits.items():
    (root / 'split' / f'{split}.txt').write_text('\n'.join(ids) + '\n', encoding='utf-8')
  (root / 'split' / 'ignore_list.txt').write_text('0005\n', encoding='utf-8')
  return root


def _run(root, out, fake, sleeps=None, **kwargs) -> llm_decompose.Summary:
  kwargs.setdefault('splits', TRAIN_VAL)
  return llm_decompose.run(root, out, base_url=fake.base_url, model=MODEL,
                           sleep=(sleeps if sleeps is not None else []).append, **kwargs)


def _records(out) -> dict[tuple[str, int], decompositions.Decomposition]:
  records, _ = decompositions.read_jsonl(out)  # Strict: any bad line fails the test.
  return {r.key: r for r in records}


def _failures(out) -> list[dict]:
  return json.loads(llm_decompose.failures_path(out).read_text(encoding='utf-8'))


@pytest.mark.parametrize('api_key', ['sk-test-123', None])
def test_happy_path_writes_every_caption(root, tmp_path, fake, api_key):
  out = tmp_path / 'out.jsonl'
  sleeps = []
  summary = _run(root, out, fake, sleeps, api_key=api_key)
  assert summary == llm_decompose.Summary(total=6, already_done=0, from_cache=0, requested=6,
                                          failed=0, remaining=0)
  records = _records(out)
  assert set(records) == set(EXPECTED)  # Ignored and test-split clips are left out.
  for key, record in records.items():
    assert record.overall == EXPECTED[key]
    assert (record.person1, record.person2) == answer(EXPECTED[key])
    assert (record.model, record.prompt_version) == (MODEL, 'decompose_v1')
  assert sorted(fake.captions_asked()) == sorted(EXPECTED.values())
  for request in fake.requests:
    assert request['body']['messages'][0] == {'role': 'system', 'content': PROMPT}
    assert request['body']['messages'][1] == {'role': 'user', 'content': request['caption']}
    expected_auth = f'Bearer {api_key}' if api_key else None
    assert request['authorization'] == expected_auth
  assert sleeps == []
  assert _failures(out) == []


def test_fenced_reply_is_accepted(root, tmp_path, fake):
  fake.script['Two people hug.'] = ['fenced']
  out = tmp_path / 'out.jsonl'
  assert _run(root, out, fake).failed == 0
  assert _records(out)[('0002', 1)].person2 == answer('Two people hug.')[1]


def test_cache_makes_a_second_run_free(root, tmp_path, fake):
  cache = tmp_path / 'cache'
  first, second = tmp_path / 'first.jsonl', tmp_path / 'second.jsonl'
  _run(root, first, fake, cache_dir=cache)
  asked = len(fake.requests)
  assert asked == len(EXPECTED)
  assert len(list(cache.glob('*.json'))) == len(EXPECTED)
  summary = _run(root, second, fake, cache_dir=cache)
  assert len(fake.requests) == asked  # Not a single request more.
  assert (summary.from_cache, summary.requested) == (len(EXPECTED), 0)
  assert second.read_text(encoding='utf-8') == first.read_text(encoding='utf-8')


def test_default_cache_sits_beside_the_output(root, tmp_path, fake):
  out = tmp_path / 'out.jsonl'
  _run(root, out, fake)
  assert len(list((tmp_path / 'out.jsonl.cache').glob('*.json'))) == len(EXPECTED)


def test_resume_after_limit_asks_only_the_rest(root, tmp_path, fake):
  out = tmp_path / 'out.jsonl'
  summary = _run(root, out, fake, limit=2)
  assert (summary.requested, summary.remaining) == (2, 4)
  first_asked = fake.captions_asked()
  assert len(_records(out)) == 2
  summary = _run(root, out, fake)
  assert (summary.already_done, summary.requested, summary.remaining) == (2, 4, 0)
  second_asked = fake.captions_asked()[2:]
  assert sorted(first_asked + second_asked) == sorted(EXPECTED.values())
  assert set(_records(out)) == set(EXPECTED)  # Strict read: no key twice.


def test_resume_repairs_a_truncated_last_line(root, tmp_path, fake, caplog):
  out = tmp_path / 'out.jsonl'
  _run(root, out, fake)
  lines = out.read_text(encoding='utf-8').splitlines(keepends=True)
  lost = json.loads(lines[-1])
  out.write_text(''.join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2], encoding='utf-8')
  with pytest.raises(ValueError):
    decompositions.read_jsonl(out)  # The simulated kill really broke the file.
  summary = _run(root, out, fake)
  assert (summary.already_done, summary.from_cache, summary.requested) == (5, 1, 0)
  assert 'malformed last line' in caplog.text
  records = _records(out)
  assert set(records) == set(EXPECTED)
  assert records[(lost['clip_id'], lost['caption_index'])].person1 == lost['person1']


def test_resume_refuses_a_malformed_line_in_the_middle(root, tmp_path, fake):
  out = tmp_path / 'out.jsonl'
  _run(root, out, fake)
  lines = out.read_text(encoding='utf-8').splitlines(keepends=True)
  out.write_text(lines[0] + '{"clip_id": \n' + ''.join(lines[1:]), encoding='utf-8')
  asked = len(fake.requests)
  with pytest.raises(llm_decompose.InputError, match=r'line 2'):
    _run(root, out, fake)
  assert len(fake.requests) == asked


def test_500_is_retried_with_exponential_backoff(root, tmp_path, fake):
  caption = 'Two people shake hands.'
  fake.script[caption] = ['500', '500']
  out, sleeps = tmp_path / 'out.jsonl', []
  summary = _run(root, out, fake, sleeps, backoff=1.5)
  assert summary.failed == 0
  assert sleeps == [1.5, 3.0]
  assert fake.captions_asked().count(caption) == 3
  assert _records(out)[('0001', 0)].person1 == answer(caption)[0]


def test_429_honours_retry_after(root, tmp_path, fake):
  caption = 'Two people hug.'
  fake.script[caption] = ['429:7', '429:0']
  out, sleeps = tmp_path / 'out.jsonl', []
  assert _run(root, out, fake, sleeps, backoff=1.0).failed == 0
  # The server's 7 s win over the first back-off; its 0 s does not shorten the second.
  assert sleeps == [7.0, 2.0]
  assert ('0002', 1) in _records(out)


def test_connection_drop_and_timeout_are_retried(root, tmp_path, fake):
  caption = 'Two people dance together.'
  fake.script[caption] = ['drop', 'hang']
  out, sleeps = tmp_path / 'out.jsonl', []
  assert _run(root, out, fake, sleeps, timeout=0.2).failed == 0
  assert sleeps == [1.0, 2.0]
  assert fake.captions_asked().count(caption) == 3
  assert ('0003', 0) in _records(out)


def test_backoff_is_capped_and_gives_up(root, tmp_path, fake):
  caption = 'One person pushes the other.'
  fake.script[caption] = ['500'] * 20
  out, sleeps = tmp_path / 'out.jsonl', []
  summary = _run(root, out, fake, sleeps, max_retries=8)
  assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
  assert fake.captions_asked().count(caption) == 9
  assert (summary.failed, summary.requested) == (1, 5)
  [failure] = _failures(out)
  assert failure['clip_id'] == '0002' and failure['caption_index'] == 0
  assert 'HTTP 500' in failure['reason'] and 'fake: overloaded' in failure['reason']
  assert ('0002', 0) not in _records(out)


def test_400_fails_at_once_with_the_server_message(root, tmp_path, fake):
  caption = 'Two people hug.'
  fake.script[caption] = ['400']
  out, sleeps = tmp_path / 'out.jsonl', []
  summary = _run(root, out, fake, sleeps)
  assert fake.captions_asked().count(caption) == 1
  assert sleeps == []
  assert (summary.failed, summary.requested) == (1, 5)
  [failure] = _failures(out)
  assert failure == {'clip_id': '0002', 'caption_index': 1, 'caption': caption,
                     'reason': failure['reason']}
  assert 'HTTP 400' in failure['reason'] and 'content policy says no' in failure['reason']
  # A later run retries the failed caption (and only it).
  assert _run(root, out, fake).requested == 1
  assert set(_records(out)) == set(EXPECTED)


@pytest.mark.parametrize('behaviour, reason', [
    ('same', 'are the same text'),
    ('missing', 'no "person2"'),
    ('notjson', 'not one JSON object'),
    ('empty', '"person2" must be a non-empty string'),
])
def test_invalid_replies_are_failures(root, tmp_path, fake, capsys, behaviour, reason):
  caption = 'The first one bows — the second one claps.'
  fake.script[caption] = [behaviour] * 3
  out, cache = tmp_path / 'out.jsonl', tmp_path / 'cache'
  status = llm_decompose.main([
      '--manual_dir', str(root), '--out', str(out), '--splits', 'train,val',
      '--base_url', fake.base_url, '--model', MODEL, '--cache_dir', str(cache),
      '--max_retries', '2', '--backoff', '0', '--api_key_env', 'FINEDUAL_TEST_NO_SUCH_KEY'])
  assert status == 1
  assert str(llm_decompose.failures_path(out)) in capsys.readouterr().err
  assert fake.captions_asked().count(caption) == 3
  [failure] = _failures(out)
  assert (failure['clip_id'], failure['caption_index'], failure['caption']) == ('0002', 2, caption)
  assert reason in failure['reason']
  assert ('0002', 2) not in _records(out)
  assert len(_records(out)) == len(EXPECTED) - 1
  assert not (cache / f'{llm_decompose.cache_key(PROMPT, MODEL, caption)}.json').exists()
  assert len(list(cache.glob('*.json'))) == len(EXPECTED) - 1


@pytest.mark.parametrize('content, expected', [
    ('{"person1": "A person a.", "person2": "A person b."}', ('A person a.', 'A person b.')),
    ('  \n```json\n{"person1": " A  person a. ", "person2": "A person b."}\n```  ',
     ('A person a.', 'A person b.')),
    ('```\n{"person1": "A person a.", "person2": "A person b.", "note": 1}\n```',
     ('A person a.', 'A person b.')),
])
def test_parse_reply_accepts(content, expected):
  assert llm_decompose.parse_reply(content) == expected


@pytest.mark.parametrize('content', [
    '[{"person1": "A person a.", "person2": "A person b."}]',
    'Here you go: {"person1": "A person a.", "person2": "A person b."}',
    '{"person1": "A person a.", "person2": "a  PERSON a."}',
    '{"person1": "A person a.", "person2": 3}',
    '{"person1": "", "person2": "A person b."}',
    '',
])
def test_parse_reply_rejects(content):
  with pytest.raises(llm_decompose.InvalidReply):
    llm_decompose.parse_reply(content)


def test_cli_reads_model_and_url_from_the_environment(root, tmp_path, fake, monkeypatch, capsys):
  monkeypatch.setenv('FINEDUAL_LLM_MODEL', MODEL)
  monkeypatch.setenv('OPENAI_BASE_URL', fake.base_url)
  monkeypatch.setenv('FINEDUAL_TEST_KEY', 'sk-env')
  out = tmp_path / 'out.jsonl'
  status = llm_decompose.main(['--manual_dir', str(root), '--out', str(out),
                               '--api_key_env', 'FINEDUAL_TEST_KEY'])
  assert status == 0
  assert len(_records(out)) == len(EXPECTED) + 1  # All splits: the test clip too.
  assert {r['authorization'] for r in fake.requests} == {'Bearer sk-env'}
  summary_line = '7 captions: 0 already done, 0 from cache, 7 requested, 0 failed'
  assert summary_line in capsys.readouterr().out


def test_cli_without_a_model_is_a_clear_error(root, tmp_path, fake, monkeypatch, capsys):
  monkeypatch.delenv('FINEDUAL_LLM_MODEL', raising=False)
  status = llm_decompose.main(['--manual_dir', str(root), '--out', str(tmp_path / 'o.jsonl'),
                               '--base_url', fake.base_url])
  assert status == 2
  err = capsys.readouterr().err
  assert '--model' in err and 'FINEDUAL_LLM_MODEL' in err
  assert fake.requests == []


@pytest.mark.parametrize('missing', ['annots', 'split/val.txt', ''])
def test_cli_missing_layout_exits_2_naming_the_path(root, tmp_path, fake, capsys, missing):
  target = root / missing if missing else tmp_path / 'no_such_folder' / 'annots'
  if missing == 'annots':
    for path in target.iterdir():
      path.unlink()
    target.rmdir()
  elif missing:
    target.unlink()
  manual_dir = root if missing else tmp_path / 'no_such_folder'
  status = llm_decompose.main(['--manual_dir', str(manual_dir), '--out', str(tmp_path / 'o.jsonl'),
                               '--model', MODEL, '--base_url', fake.base_url])
  assert status == 2
  err = capsys.readouterr().err
  assert str(target) in err and 'Traceback' not in err
  assert fake.requests == []


def test_cli_bad_caption_files_exit_2_naming_the_file(root, tmp_path, fake, capsys):
  args = ['--out', str(tmp_path / 'o.jsonl'), '--model', MODEL, '--base_url', fake.base_url,
          '--manual_dir', str(root)]
  bad = root / 'annots' / '0003.txt'
  bad.write_bytes(b'Two people \xff\xfe dance.\n')
  assert llm_decompose.main(args) == 2
  err = capsys.readouterr().err
  assert str(bad) in err and 'UTF-8' in err
  bad.unlink()
  assert llm_decompose.main(args) == 2
  err = capsys.readouterr().err
  assert str(bad) in err and "'0003'" in err and 'val.txt' in err
  assert fake.requests == []

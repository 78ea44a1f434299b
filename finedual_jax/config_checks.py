"""Checks a training config before anything is built or compiled.

``validate(config)`` collects every impossible value (with the field, the value found, what is
expected and how to fix it) and raises one ``ConfigError`` listing them all. Unknown fields
never get this far: configs are locked, so ml_collections rejects them when the file or the
command line sets them (``unknown_field_message`` words that error for the command line).
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Callable

import ml_collections

NAN_POLICIES = ('stop', 'skip')
BACKENDS = ('shard_map', 'pmap')  # finedual_jax.parallel.BACKENDS (this module imports no JAX).
# CPU priorities of the input pipeline's read-ahead thread (data.pipeline.read_ahead).
READ_AHEAD_PRIORITIES = ('idle', 'low', 'normal')
DATA_SOURCES = ('synthetic', 'tfds')
COMPUTE_DTYPES = ('float32', 'bfloat16')  # finedual_jax.models.precision.DTYPES.
GRAPH_MESSAGE_PASSING = ('dense', 'jraph')  # finedual_jax.models.interaction_graph.MESSAGE_PASSING.

_SECTIONS = ('data', 'diffusion', 'losses', 'optimizer', 'train', 'parallel', 'sample', 'model')


class ConfigError(ValueError):
  """A config value that cannot work; the message names every such field."""


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None,
             process_count: int = 1) -> None:
  """Raises ``ConfigError`` naming every field of ``config`` with an impossible value.

  ``device_count``: the devices JAX sees (all processes); None skips the checks that need it
  (the entry point validates once before ``jax.distributed.initialize``, the trainer again).
  """
  problems: list[str] = []

  def get(path: str) -> Any:
    node = config
    for key in path.split('.'):
      if key not in node:
        raise KeyError(path)
      node = node[key]
    return node

  def check(path: str, ok: Callable[[Any], bool], expected: str, fix: str = '') -> bool:
    try:
      value = get(path)
    except KeyError:
      problems.append(f'config.{path}: missing; the experiment file must define it '
                      '(see experiments/base.py).')
      return False
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      problems.append(f'config.{path} = {value!r}: expected {expected}.' + (f' {fix}' if fix else ''))
    return good

  positive_int = lambda x: _is_int(x) and x >= 1
  non_negative_int = lambda x: _is_int(x) and x >= 0
  finite = lambda x: _is_number(x) and math.isfinite(x)
  probability = lambda x: finite(x) and 0.0 <= x <= 1.0

  for section in _SECTIONS:
    if section not in config:
      problems.append(f'config.{section}: missing section; the experiment file must define it.')
  if problems:
    raise ConfigError(_message(problems))

  check('seed', _is_int, 'an integer')
  # data
  check('data.source', lambda x: x in DATA_SOURCES, f'one of {list(DATA_SOURCES)}')
  if get('data.source') == 'tfds':
    check('data.dataset_dir', lambda x: isinstance(x, str) and x.strip(),
          'a folder written by python -m data_pipelines.prepare (with data.source="tfds")')
  check('data.max_len', lambda x: _is_int(x) and x >= 2,
        'an integer >= 2 (feature rows per clip: velocities need two frames)')
  check('data.max_text_len', lambda x: _is_int(x) and x >= 3,
        'an integer >= 3 (tokens per text, BOS and EOS included)')
  check('data.clips_per_type', positive_int, 'an integer >= 1')
  check('data.vocab_size', lambda x: _is_int(x) and x >= 8, 'an integer >= 8')
  check('data.swap_before_p', probability, 'a probability in [0, 1]')
  check('data.swap_after_p', probability, 'a probability in [0, 1]')
  check('data.worker_count', non_negative_int, 'an integer >= 0 (0: no worker processes)')
  check('data.in_memory', lambda x: isinstance(x, bool), 'True or False')
  check('data.read_ahead', non_negative_int, 'an integer >= 0 (0: read in the loop)')
  check('data.read_ahead_priority', lambda x: x in READ_AHEAD_PRIORITIES,
        f'one of {list(READ_AHEAD_PRIORITIES)}')
  # diffusion
  check('diffusion.num_steps', lambda x: _is_int(x) and x >= 2, 'an integer >= 2')
  check('diffusion.ddim_steps', lambda x: positive_int(x) and x <= get('diffusion.num_steps'),
        'an integer between 1 and diffusion.num_steps')
  check('diffusion.cond_drop_p', lambda x: finite(x) and 0.0 <= x <= 1.0 / 3.0,
        'a probability in [0, 1/3] (each of the three drop modes has this probability)')
  for name in ('guidance_overall', 'guidance_individual'):
    check(f'diffusion.{name}', finite, 'a finite number')
  # losses
  for name, value in get('losses').items():
    if name == 'geometric_max_t':
      check('losses.geometric_max_t', non_negative_int, 'an integer >= 0 (a timestep)')
    elif name == 'nce_temperature':
      check('losses.nce_temperature', lambda x: finite(x) and x > 0, 'a number > 0')
    else:
      check(f'losses.{name}', lambda x: finite(x) and x >= 0,
            'a finite weight >= 0 (0 switches the term off)')
  # optimizer
  check('optimizer.learning_rate', lambda x: finite(x) and x > 0, 'a finite number > 0')
  check('optimizer.warmup_steps', non_negative_int, 'an integer >= 0')
  check('optimizer.weight_decay', lambda x: finite(x) and x >= 0, 'a finite number >= 0')
  check('optimizer.clip_norm', lambda x: _is_number(x) and x > 0,
        'a number > 0 (the global gradient-norm bound)')
  for name in ('b1', 'b2'):
    if name in get('optimizer'):
      check(f'optimizer.{name}', lambda x: finite(x) and 0 <= x < 1, 'a number in [0, 1)')
  # train
  check('train.num_steps', positive_int, 'an integer >= 1')
  accum_ok = check('train.grad_accum_steps', positive_int,
                   'an integer >= 1 (micro-batches per optimizer update)')
  batch_ok = check('train.batch_size', positive_int,
                   'an integer >= 1 (the global batch of one update, all devices together)')
  check('train.ema_decay', lambda x: finite(x) and 0 <= x < 1, 'a number in [0, 1)')
  check('train.log_every', positive_int, 'an integer >= 1 (steps between progress lines)')
  check('train.checkpoint_every', positive_int, 'an integer >= 1')
  check('train.max_to_keep', positive_int, 'an integer >= 1 (most recent checkpoints kept)')
  check('train.keep_every', non_negative_int,
        'an integer >= 0 (also keep every checkpoint whose step is a multiple; 0: off)')
  check('train.eval_every', non_negative_int, 'an integer >= 0 (0: no validation loss)')
  check('train.eval_batches', positive_int, 'an integer >= 1')
  check('train.eval_seed', _is_int, 'an integer')
  check('train.sample_every', non_negative_int, 'an integer >= 0 (0: no samples while training)')
  check('train.sample_prompts', positive_int, 'an integer >= 1')
  check('train.nan_policy', lambda x: x in NAN_POLICIES,
        f'one of {list(NAN_POLICIES)} (stop: save a diagnostic checkpoint and stop; skip: '
        'discard that update and go on)')
  # parallel
  check('parallel.backend', lambda x: x in BACKENDS, f'one of {list(BACKENDS)}')
  devices_ok = check('parallel.num_devices', non_negative_int,
                     'an integer >= 0 (0: every device JAX sees)')
  # sample
  check('sample.length', lambda x: _is_int(x) and 1 <= x <= get('data.max_len'),
        'a number of frames between 1 and data.max_len')
  check('sample.seed', _is_int, 'an integer')
  for name in ('text', 'person1', 'person2'):
    check(f'sample.{name}', lambda x: isinstance(x, str), 'a string')
  # model: the module's constructor is the schema (a typo there fails in models/factory.py);
  # here only what any attention model needs.
  model = get('model')
  if 'name' not in model:
    problems.append('config.model.name: missing; see finedual_jax/models/factory.py.')
  for name, value in model.items():
    if name.endswith(('width', 'layers', 'heads', 'dim', 'hidden', 'rounds', 'parts')):
      check(f'model.{name}', non_negative_int, 'an integer >= 0')
    elif name == 'dropout':
      check('model.dropout', lambda x: finite(x) and 0 <= x < 1, 'a rate in [0, 1)')
    elif name == 'compute_dtype':
      check('model.compute_dtype', lambda x: x in COMPUTE_DTYPES,
            f'one of {list(COMPUTE_DTYPES)} (parameters stay float32 either way)')
    elif name == 'remat':
      check('model.remat', lambda x: isinstance(x, bool), 'True or False')
    elif name == 'graph_message_passing':
      check('model.graph_message_passing', lambda x: x in GRAPH_MESSAGE_PASSING,
            f'one of {list(GRAPH_MESSAGE_PASSING)} (the same function)')
  for width, heads in (('width', 'num_heads'), ('text_width', 'text_heads')):
    w, h = model.get(width), model.get(heads)
    if _is_int(w) and _is_int(h) and h >= 1 and w % h:
      problems.append(f'config.model.{width} = {w} must be a multiple of config.model.{heads} '
                      f'= {h}.')

  if batch_ok and accum_ok:
    batch, accum = get('train.batch_size'), get('train.grad_accum_steps')
    devices = get('parallel.num_devices') if devices_ok else 0
    devices = devices or device_count
    if devices:
      if batch % (devices * accum):
        problems.append(
            f'config.train.batch_size = {batch}: must be a multiple of the devices ({devices}) '
            f'times config.train.grad_accum_steps ({accum}) = {devices * accum}; each device '
            f'runs {accum} equal micro-batch(es) per update. Try batch_size = '
            f'{max(1, batch // (devices * accum)) * devices * accum}.')
    elif batch % accum:
      problems.append(f'config.train.batch_size = {batch}: must be a multiple of '
                      f'config.train.grad_accum_steps = {accum}.')
    if batch % process_count:
      problems.append(f'config.train.batch_size = {batch}: must be a multiple of the number of '
                      f'processes ({process_count}).')
  if device_count is not None and devices_ok:
    asked = get('parallel.num_devices')
    if asked > device_count:
      problems.append(f'config.parallel.num_devices = {asked}: JAX sees only {device_count} '
                      'devices; use 0 for all of them.')
    elif process_count > 1 and asked not in (0, device_count):
      problems.append(f'config.parallel.num_devices = {asked}: a run of {process_count} '
                      f'processes uses every device ({device_count}); set it to 0.')
  if problems:
    raise ConfigError(_message(problems))


def _message(problems: list[str]) -> str:
  head = 'invalid config' + (f' ({len(problems)} problems)' if len(problems) > 1 else '') + ':'
  return '\n  '.join([head] + problems) + (
      '\nFix the experiment file or override on the command line, e.g. '
      '--config.train.batch_size=16.')


def unknown_field_message(error: Exception, argv: list[str]) -> str:
  """ml_collections' error for a command-line override of a field a locked config lacks ->
  one readable line naming the flag."""
  inner = error
  while inner.args and isinstance(inner.args[0], Exception):  # AttributeError(KeyError(...))
    inner = inner.args[0]
  text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
  lines = text.splitlines()
  name = lines[0].strip('\'"') if lines else '?'
  hint = ' '.join(lines[1:]).strip()
  flags = [a for a in argv if a.startswith('--config.')
           and re.search(rf'\.{re.escape(name)}(=|\.|$)', a.split('=', 1)[0] + '=')]
  where = f' in {flags[0]}' if flags else ''
  return (f'unknown config field "{name}"{where}. {hint} Configs are locked: a command-line '
          'override can only set a field the experiment file defines (see '
          'experiments/base.py).').replace('  ', ' ')

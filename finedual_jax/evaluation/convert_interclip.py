"""Converts the official InterCLIP evaluator weights (PyTorch) into Flax params for ``InterCLIP``.

    python -m finedual_jax.evaluation.convert_interclip --checkpoint eval_model/interclip.ckpt \\
        --out DIR

reads a PyTorch Lightning ``.ckpt`` (InterGen's ``prepare/download_evaluation_model.sh``), a
plain ``torch.save``'d state dict, or a ``.safetensors`` file, and writes ``DIR/params.msgpack``
and ``DIR/config.json`` (``load_converted`` reads them back). Torch is not needed: zip-format
checkpoints are read by a restricted unpickler that rebuilds tensors as NumPy arrays and never
imports or runs the checkpoint's classes (Lightning's hyper-parameters, callbacks and optimizer
state are read as inert placeholders and dropped).

State-dict names are those of tr3e/InterGen's ``InterCLIP`` (datasets/evaluator_models.py) and
``MotionEncoder`` (models/nets.py); Lightning prefixes them with ``model.``, which is stripped as
InterGen's ``build_models`` does.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import json
import pathlib
import pickle
import re
import struct
import sys
import zipfile
from typing import Any, Callable, Iterator

import flax
import jax
import ml_dtypes
import numpy as np

from finedual_jax.evaluation import evaluator

PREFIXES = ('model.', 'module.')  # Lightning's attribute, DDP's wrapper.
PARAMS_FILE, CONFIG_FILE = 'params.msgpack', 'config.json'
PE_BUFFER = 'motion_encoder.sequence_pos_encoder.pe'  # A fixed table, checked and not stored.

# ----------------------------------------------------------------------------- reading

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128, 'UntypedStorage': np.uint8}
_SAFE_BUILTINS = {'set', 'frozenset', 'slice', 'complex', 'bytearray', 'bytes', 'range', 'int',
                  'float', 'str', 'bool', 'list', 'dict', 'tuple'}


class _Opaque(dict):
  """Stands for any non-tensor object in a checkpoint; accepts whatever pickle hands it."""

  def __init__(self, *args, **kwargs):  # pylint: disable=super-init-not-called
    del args, kwargs

  def __setstate__(self, state):
    self.__dict__['_state'] = state

  def append(self, item):
    self.__dict__.setdefault('_items', []).append(item)

  def extend(self, items):
    self.__dict__.setdefault('_items', []).extend(items)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # A contiguous copy, detached from the shared storage.


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles ``data.pkl`` of a torch zip archive with a whitelist of callables."""

  def __init__(self, file, read_storage: Callable[[str, np.dtype], np.ndarray]):
    super().__init__(file)
    self._read_storage = read_storage

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGE_DTYPES:
      return np.dtype(_STORAGE_DTYPES[name])
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor
    if module == 'torch._utils' and name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
      return lambda data, *unused: data
    if module == 'torch._tensor' and name == '_rebuild_from_type_v2':
      return lambda func, new_type, args, state: func(*args)
    if module == 'collections' and name in ('OrderedDict', 'defaultdict'):
      return getattr(collections, name)
    if module == 'builtins' and name in _SAFE_BUILTINS:
      return getattr(builtins, name)
    if module == '_codecs' and name == 'encode':  # How protocol 2 pickles bytes.
      return lambda text, encoding='utf-8': text.encode(encoding)
    return type(name, (_Opaque,), {})

  def persistent_load(self, pid):
    kind, dtype, key = pid[:3]  # ('storage', storage type, key, location, numel)
    if kind != 'storage':
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r}')
    return self._read_storage(key, dtype)


def _read_torch_zip(path: pathlib.Path) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('data.pkl')]
    if not pickles:
      raise ValueError(f'{path}: a zip file without data.pkl is not a torch checkpoint.')
    root = pickles[0][:-len('data.pkl')]
    big_endian = (f'{root}byteorder' in names
                  and archive.read(f'{root}byteorder').decode().strip() == 'big')
    storages = {}

    def read_storage(key, dtype):
      if key not in storages:
        raw = np.frombuffer(archive.read(f'{root}data/{key}'),
                            dtype=dtype.newbyteorder('>') if big_endian else dtype)
        storages[key] = raw.astype(dtype) if big_endian else raw
      return storages[key]

    with archive.open(pickles[0]) as f:
      return _TorchUnpickler(f, read_storage).load()


_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_}


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """A ``.safetensors`` file -> {name: array} (u64 LE header size, JSON header, raw buffers)."""
  data = pathlib.Path(path).read_bytes()
  (header_size,) = struct.unpack('<Q', data[:8])
  header = json.loads(data[8:8 + header_size])
  body = memoryview(data)[8 + header_size:]
  tensors = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype {info["dtype"]}.')
    start, end = info['data_offsets']
    flat = np.frombuffer(body[start:end], dtype=np.dtype(_SAFETENSORS_DTYPES[info['dtype']]))
    tensors[name] = flat.reshape(info['shape']).copy()
  return tensors


def load_torch_state_dict(path: str | pathlib.Path,
                          prefixes: tuple[str, ...] = PREFIXES) -> dict[str, np.ndarray]:
  """A checkpoint file -> {official key: float32 array}, wrapper prefixes stripped.

  Accepts a Lightning ``.ckpt`` (its ``state_dict``), a ``torch.save``'d dict of tensors, or a
  ``.safetensors`` file. Zip-format torch files need no torch; legacy (pre-1.6) ones do.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'checkpoint not found: {path}. InterGen downloads it to '
                            'eval_model/interclip.ckpt (prepare/download_evaluation_model.sh).')
  if path.suffix == '.safetensors':
    raw = read_safetensors(path)
  elif zipfile.is_zipfile(path):
    raw = _read_torch_zip(path)
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError(f'{path} is not a zip-format torch checkpoint; reading the legacy format '
                       'needs torch (pip install torch), or re-save it with torch.save.') from e
    raw = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(raw, dict) and isinstance(raw.get('state_dict'), dict):
      raw = raw['state_dict']
    if isinstance(raw, dict):
      raw = {k: v.float().numpy() if isinstance(v, torch.Tensor) else v for k, v in raw.items()}
  if isinstance(raw, dict) and isinstance(raw.get('state_dict'), dict):
    raw = raw['state_dict']
  tensors = {k: v for k, v in raw.items() if isinstance(v, np.ndarray)} if isinstance(
      raw, dict) else {}
  if not tensors:
    found = list(raw)[:10] if isinstance(raw, dict) else type(raw).__name__
    raise ValueError(f'{path}: no tensors found (a state dict, or a dict with a "state_dict" '
                     f'entry, was expected); found {found}.')
  state = {}
  for key, value in tensors.items():
    name = key
    while name.startswith(prefixes):
      name = name[next(len(p) for p in prefixes if name.startswith(p)):]
    state[name] = np.asarray(value, np.float32)
  return state


# ----------------------------------------------------------------------------- mapping


def infer_config(state: dict[str, np.ndarray], **overrides) -> dict[str, Any]:
  """InterCLIP fields read off the tensor shapes; head counts (not in the shapes) default to
  InterCLIP's 8. ``end_token`` is the largest id, as the official ``argmax`` pooling implies."""
  config = evaluator.config_of(evaluator.InterCLIP())

  def shape(key, axis):
    return state[key].shape[axis] if key in state and state[key].ndim > axis else None

  def layers(prefix):
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r'(\d+)\.', k))}
    return max(found) + 1 if found else None

  inferred = dict(
      motion_width=shape('motion_encoder.query_token', 1),
      motion_layers=layers('motion_encoder.transformer.layers.'),
      motion_ff_dim=shape('motion_encoder.transformer.layers.0.linear1.weight', 0),
      max_positions=shape(PE_BUFFER, 0),
      vocab_size=shape('token_embedding.weight', 0),
      text_width=shape('token_embedding.weight', 1),
      context_length=shape('positional_embedding', 0),
      text_layers=layers('textTransEncoder.layers.'),
      text_ff_dim=shape('textTransEncoder.layers.0.linear1.weight', 0),
      embed_dim=shape('out.weight', 0))
  motion_in = shape('motion_encoder.embed_motion.weight', 1)
  if motion_in is not None:
    inferred['feature_dim'] = motion_in // 2 + config['dropped_features']
  if inferred['vocab_size'] is not None:
    inferred['end_token'] = inferred['vocab_size'] - 1
  config.update({k: v for k, v in inferred.items() if v is not None})
  config.update(overrides)
  return config


def _encoder_layers(torch_prefix: str, flax_prefix: tuple, num_layers: int, width: int,
                    heads: int, ff_dim: int) -> Iterator[tuple]:
  """(official key, its shape, flax path, transform) for a stack of post-LN encoder layers."""
  if width % heads:
    raise ValueError(f'{torch_prefix}: width {width} is not divisible by {heads} heads; pass the '
                     'right head count (--motion-heads / --text-heads).')
  head_dim = width // heads
  linear = lambda w: w.T
  for i in range(num_layers):
    t, f = f'{torch_prefix}{i}.', flax_prefix + (f'layers_{i}',)
    for j, name in enumerate(('query', 'key', 'value')):
      rows = slice(j * width, (j + 1) * width)
      yield (t + 'self_attn.in_proj_weight', (3 * width, width), f + ('self_attn', name, 'kernel'),
             lambda w, rows=rows: w[rows].T.reshape(width, heads, head_dim))
      yield (t + 'self_attn.in_proj_bias', (3 * width,), f + ('self_attn', name, 'bias'),
             lambda b, rows=rows: b[rows].reshape(heads, head_dim))
    yield (t + 'self_attn.out_proj.weight', (width, width), f + ('self_attn', 'out', 'kernel'),
           lambda w: w.T.reshape(heads, head_dim, width))
    yield t + 'self_attn.out_proj.bias', (width,), f + ('self_attn', 'out', 'bias'), None
    yield t + 'linear1.weight', (ff_dim, width), f + ('linear1', 'kernel'), linear
    yield t + 'linear1.bias', (ff_dim,), f + ('linear1', 'bias'), None
    yield t + 'linear2.weight', (width, ff_dim), f + ('linear2', 'kernel'), linear
    yield t + 'linear2.bias', (width,), f + ('linear2', 'bias'), None
    for norm in ('norm1', 'norm2'):
      yield t + f'{norm}.weight', (width,), f + (norm, 'scale'), None
      yield t + f'{norm}.bias', (width,), f + (norm, 'bias'), None


def parameter_map(config: dict[str, Any]) -> list[tuple]:
  """Every official InterCLIP tensor: (key, shape, flax path, transform or None)."""
  c = config
  m, t = ('motion_encoder',), ('text_encoder',)
  linear = lambda w: w.T
  motion_in = 2 * (c['feature_dim'] - c['dropped_features'])
  entries = [
      ('motion_encoder.query_token', (1, c['motion_width']), m + ('query_token',), None),
      ('motion_encoder.embed_motion.weight', (c['motion_width'], motion_in),
       m + ('embed_motion', 'kernel'), linear),
      ('motion_encoder.embed_motion.bias', (c['motion_width'],), m + ('embed_motion', 'bias'),
       None),
      ('motion_encoder.out_ln.weight', (c['motion_width'],), m + ('out_ln', 'scale'), None),
      ('motion_encoder.out_ln.bias', (c['motion_width'],), m + ('out_ln', 'bias'), None),
      ('motion_encoder.out.weight', (c['embed_dim'], c['motion_width']), m + ('out', 'kernel'),
       linear),
      ('motion_encoder.out.bias', (c['embed_dim'],), m + ('out', 'bias'), None),
      ('token_embedding.weight', (c['vocab_size'], c['text_width']),
       t + ('token_embedding', 'embedding'), None),
      ('positional_embedding', (c['context_length'], c['text_width']),
       t + ('positional_embedding',), None),
      ('text_ln.weight', (c['text_width'],), t + ('text_ln', 'scale'), None),
      ('text_ln.bias', (c['text_width'],), t + ('text_ln', 'bias'), None),
      ('out.weight', (c['embed_dim'], c['text_width']), t + ('out', 'kernel'), linear),
      ('out.bias', (c['embed_dim'],), t + ('out', 'bias'), None),
      ('latent_scale', (1,), ('latent_scale',), None)]
  entries += _encoder_layers('motion_encoder.transformer.layers.', m + ('transformer',),
                             c['motion_layers'], c['motion_width'], c['motion_heads'],
                             c['motion_ff_dim'])
  entries += _encoder_layers('textTransEncoder.layers.', t + ('transformer',), c['text_layers'],
                             c['text_width'], c['text_heads'], c['text_ff_dim'])
  return entries


def convert_state_dict(state: dict[str, np.ndarray], config: dict[str, Any],
                       source: str = 'checkpoint') -> dict[str, Any]:
  """Official state dict -> Flax params of ``InterCLIP(**config)``; every key is accounted for.

  Raises a ValueError naming each missing, unexpected or wrongly shaped key.
  """
  entries = parameter_map(config)
  expected = {key: shape for key, shape, _, _ in entries}
  expected[PE_BUFFER] = (config['max_positions'], config['motion_width'])
  missing = sorted(set(expected) - set(state) - {PE_BUFFER})  # An old torch may omit buffers.
  unexpected = sorted(set(state) - set(expected))
  wrong = sorted(f'{k}: expected {expected[k]}, found {state[k].shape}'
                 for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
  if missing or unexpected or wrong:
    lines = [f'{source} does not match InterCLIP with {_summary(config)}:']
    for title, items in (('missing', missing), ('unexpected', unexpected), ('wrong shape', wrong)):
      if items:
        lines.append(f'  {title} ({len(items)}): ' + ', '.join(items[:12])
                     + (' ...' if len(items) > 12 else ''))
    lines.append('Fix: pass the file of the official InterCLIP evaluator (a state dict with '
                 'InterGen\'s names), or override the inferred sizes (see --help).')
    raise ValueError('\n'.join(lines))
  if PE_BUFFER in state:
    # Torch's and NumPy's float32 exp differ by an ulp, so the tables differ by up to ~1e-4 at
    # position 2000 (embeddings by < 1e-6); another layout or period would differ by ~1.
    table = evaluator.positional_encoding(*expected[PE_BUFFER])
    if not np.allclose(state[PE_BUFFER], table, atol=1e-3):
      raise ValueError(f'{source}: {PE_BUFFER} is not the sinusoid table InterCLIP uses; this '
                       'checkpoint comes from a different model.')
  flat = {path: (fn(state[key]) if fn else state[key]).astype(np.float32)
          for key, _, path, fn in entries}
  params = flax.traverse_util.unflatten_dict(flat)
  _check_tree(params, config)
  return params


def _summary(config):
  keys = ('feature_dim', 'motion_width', 'motion_layers', 'motion_heads', 'vocab_size',
          'text_width', 'text_layers', 'text_heads', 'embed_dim')
  return ', '.join(f'{k}={config[k]}' for k in keys)


def _check_tree(params, config):
  """The converted tree must be exactly what ``InterCLIP(**config).init`` makes."""
  model = evaluator.InterCLIP(**config)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, 2, 2, config['feature_dim']), np.float32),
      np.ones((1, 2), np.float32), np.zeros((1, config['context_length']), np.int32)))['params']
  want = {k: v.shape for k, v in flax.traverse_util.flatten_dict(shapes).items()}
  got = {k: v.shape for k, v in flax.traverse_util.flatten_dict(params).items()}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:6]
    raise AssertionError(f'converter bug: params differ from the model tree at {diff}')


# ----------------------------------------------------------------------------- files


def save_converted(params: Any, config: dict[str, Any], out_dir: str | pathlib.Path,
                   source: dict[str, Any] | None = None, tokenizer: str = '') -> pathlib.Path:
  """Writes ``params.msgpack`` and ``config.json`` (``{'model': fields, 'source': ...}``).

  ``tokenizer`` says how texts become ids for this evaluator, ``'clip:<merges file>'`` or
  ``'sentencepiece:<model file>'`` (relative paths are relative to ``out_dir``); it is stored
  as config.json's ``tokenizer`` field when given (``evaluation.evaluator_files`` reads it).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / PARAMS_FILE).write_bytes(flax.serialization.msgpack_serialize(params))
  record = {'model': config, 'source': source or {}}
  if tokenizer:
    record['tokenizer'] = tokenizer
  (out / CONFIG_FILE).write_text(json.dumps(record, indent=2))
  return out


def load_converted(directory: str | pathlib.Path) -> tuple[evaluator.InterCLIP, Any]:
  """``(InterCLIP module, params)`` from a directory written by ``save_converted``."""
  directory = pathlib.Path(directory)
  for name in (PARAMS_FILE, CONFIG_FILE):
    if not (directory / name).is_file():
      raise FileNotFoundError(f'{directory / name} not found; write it with python -m '
                              'finedual_jax.evaluation.convert_interclip --checkpoint ... --out '
                              f'{directory}.')
  config = json.loads((directory / CONFIG_FILE).read_text())['model']
  params = flax.serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes())
  return evaluator.InterCLIP(**config), params


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m finedual_jax.evaluation.convert_interclip',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True,
                      help='interclip.ckpt (Lightning), a torch state dict, or .safetensors')
  parser.add_argument('--out', required=True, help='directory for params.msgpack and config.json')
  parser.add_argument('--motion-heads', type=int, default=8)
  parser.add_argument('--text-heads', type=int, default=8)
  parser.add_argument('--end-token', type=int, default=None,
                      help='id pooled by the text encoder (default: the largest id, as CLIP\'s)')
  parser.add_argument('--clip-merges', default='',
                      help='bpe_simple_vocab_16e6.txt.gz, recorded as the evaluator\'s tokenizer '
                      '(python -m finedual_jax.evaluate then needs no --evaluator_tokenizer)')
  args = parser.parse_args(argv)
  overrides = dict(motion_heads=args.motion_heads, text_heads=args.text_heads)
  if args.end_token is not None:
    overrides['end_token'] = args.end_token
  try:
    if args.clip_merges and not pathlib.Path(args.clip_merges).is_file():
      raise FileNotFoundError(f'--clip-merges: {args.clip_merges} not found; it ships inside the '
                              '`clip` package as clip/bpe_simple_vocab_16e6.txt.gz.')
    state = load_torch_state_dict(args.checkpoint)
    config = infer_config(state, **overrides)
    params = convert_state_dict(state, config, source=args.checkpoint)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  tokenizer = f'clip:{pathlib.Path(args.clip_merges).absolute()}' if args.clip_merges else ''
  out = save_converted(params, config, args.out,
                       source={'checkpoint': str(pathlib.Path(args.checkpoint).absolute())},
                       tokenizer=tokenizer)
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f'wrote {out / PARAMS_FILE} ({count:,} parameters) and {out / CONFIG_FILE}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

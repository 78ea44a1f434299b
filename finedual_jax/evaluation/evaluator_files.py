"""An evaluator on disk — weights, architecture and tokenizer — loaded into embedding functions.

Converted official weights (``convert_interclip``) and evaluators trained here
(``python -m finedual_jax.train_evaluator``) share one layout, ``save_converted``'s::

    DIR/params.msgpack   Flax params of ``InterCLIP``
    DIR/config.json      {"model": InterCLIP fields, "source": {...}, "tokenizer": SPEC}

where SPEC says how captions become ids: ``"clip:<bpe_simple_vocab_16e6.txt.gz>"`` (the
official evaluator's CLIP BPE) or ``"sentencepiece:<spm.model>"`` (a data set's tokenizer, for
evaluators trained here); a relative path is relative to DIR. A converted folder written
without ``--clip-merges`` has no SPEC: pass one with ``tokenizer=`` (the evaluate command's
``--evaluator_tokenizer``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from finedual_jax import xla_cpu
from finedual_jax.data import tokenizer as spm_tokenizer
from finedual_jax.evaluation import clip_tokenizer
from finedual_jax.evaluation import convert_interclip
from finedual_jax.evaluation import evaluator as evaluator_lib

TOKENIZER_KINDS = ('clip', 'sentencepiece')
SENTENCEPIECE_FILE = 'spm.model'  # Where train_evaluator copies the data set's tokenizer.


def parse_tokenizer_spec(spec: str, base_dir: pathlib.Path, where: str) -> tuple[str, pathlib.Path]:
  """'kind:path' -> (kind, absolute path), checking the kind and that the file exists."""
  kind, sep, path = str(spec).partition(':')
  if not sep or kind not in TOKENIZER_KINDS or not path:
    raise ValueError(f'{where}: tokenizer {spec!r} is not of the form "clip:<merges file>" or '
                     '"sentencepiece:<model file>".')
  resolved = pathlib.Path(path)
  resolved = resolved if resolved.is_absolute() else base_dir / resolved
  if not resolved.is_file():
    raise FileNotFoundError(f'{where}: the evaluator\'s {kind} tokenizer file {resolved} does not '
                            'exist; pass the right one with --evaluator_tokenizer '
                            f'{kind}:<path>.')
  return kind, resolved


def make_text_encoder(kind: str, path: pathlib.Path, model: evaluator_lib.InterCLIP, where: str
                      ) -> Callable[[Sequence[str]], np.ndarray]:
  """texts -> [N, context_length] int32 ids as the evaluator was trained on (truncating)."""
  if kind == 'clip':
    tokenizer = clip_tokenizer.ClipTokenizer(path)
    vocab, end = tokenizer.vocab_size, tokenizer.end_id
    encode = lambda texts: tokenizer.tokenize(list(texts), model.context_length)
  else:
    tokenizer = spm_tokenizer.Tokenizer(path)
    vocab, end = tokenizer.vocab_size, spm_tokenizer.EOS_ID
    encode = lambda texts: tokenizer.encode(list(texts), model.context_length)
  if vocab > model.vocab_size or end != model.end_token:
    raise ValueError(f'{where}: its {kind} tokenizer {path} ({vocab} ids, end token {end}) does '
                     f'not fit the model (vocab_size {model.vocab_size}, end_token '
                     f'{model.end_token}); pass the tokenizer it was trained with.')
  return encode


@dataclasses.dataclass
class Evaluator:
  """A loaded evaluator: ``embed_motions`` and ``embed_texts`` give NumPy embeddings [N, E]."""
  directory: pathlib.Path
  model: evaluator_lib.InterCLIP
  params: Any
  tokenizer: str                      # The resolved spec, 'kind:/abs/path'.
  encode_texts: Callable[[Sequence[str]], np.ndarray]
  source: dict
  batch_size: int = 64

  @property
  def feature_dim(self) -> int:
    return self.model.feature_dim

  @property
  def max_frames(self) -> int:
    """Longest motion (feature rows) the motion encoder accepts."""
    return self.model.max_positions - 1

  def describe(self) -> dict[str, Any]:
    return {'path': str(self.directory), 'tokenizer': self.tokenizer, 'source': self.source,
            'model': evaluator_lib.config_of(self.model)}

  @functools.cached_property
  def _motion_fn(self):
    # Forward only: on a CPU its products run through oneDNN (xla_cpu), as the sampler's do.
    # MotionEncoder at batch 32, T = 300 on a 2-core Xeon: 5.6 s against 6.3-6.5 s.
    return jax.jit(lambda p, f, m: self.model.apply({'params': p}, f, m,
                                                    method=evaluator_lib.InterCLIP.encode_motion),
                   compiler_options=xla_cpu.forward_compiler_options())

  @functools.cached_property
  def _text_fn(self):
    return jax.jit(lambda p, t: self.model.apply({'params': p}, t,
                                                 method=evaluator_lib.InterCLIP.encode_text),
                   compiler_options=xla_cpu.forward_compiler_options())

  def embed_motions(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """features [N, T, 2, D] de-normalised, mask [N, T] -> [N, E] float64.

    Fixed-shape batches (the last one padded), so one compilation serves any N.
    """
    features = np.asarray(features, np.float32)
    if features.shape[2:] != (2, self.feature_dim):
      raise ValueError(f'evaluator {self.directory}: expects motions [N, T, 2, '
                       f'{self.feature_dim}], got {features.shape}.')
    if features.shape[1] > self.max_frames:
      raise ValueError(f'evaluator {self.directory}: motions of {features.shape[1]} frames '
                       f'exceed its {self.max_frames} (max_positions - 1); evaluate shorter '
                       'motions (--max_frames).')
    mask = np.asarray(mask, np.float32)
    return self._batched(lambda f, m: self._motion_fn(self.params, f, m), features, mask)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """[N] captions -> [N, E] float64."""
    return self._batched(lambda t: self._text_fn(self.params, t), self.encode_texts(texts))

  def _batched(self, fn, *arrays) -> np.ndarray:
    n = arrays[0].shape[0]
    out = []
    for start in range(0, n, self.batch_size):
      chunk = [a[start:start + self.batch_size] for a in arrays]
      pad = self.batch_size - chunk[0].shape[0]
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) if pad else c for c in chunk]
      out.append(np.asarray(jax.device_get(fn(*map(jnp.asarray, chunk))))[:self.batch_size - pad])
    return np.concatenate(out).astype(np.float64)


def load(path: str | pathlib.Path, tokenizer: str = '', *, batch_size: int = 64) -> Evaluator:
  """Loads an evaluator folder (or a train_evaluator workdir, whose ``evaluator/`` it uses).

  ``tokenizer`` ('kind:path') overrides the folder's SPEC. Raises FileNotFoundError or
  ValueError naming the path and what is wrong.
  """
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f'evaluator {path} does not exist; convert the official weights '
                            '(python -m finedual_jax.evaluation.convert_interclip) or train one '
                            '(python -m finedual_jax.train_evaluator).')
  if path.is_dir() and not (path / convert_interclip.PARAMS_FILE).is_file() and (
      path / 'evaluator' / convert_interclip.PARAMS_FILE).is_file():
    path = path / 'evaluator'  # A train_evaluator workdir.
  if not path.is_dir():
    raise ValueError(f'evaluator {path} is a file; pass the folder holding '
                     f'{convert_interclip.PARAMS_FILE} and {convert_interclip.CONFIG_FILE}.')
  config_path = path / convert_interclip.CONFIG_FILE
  if not (config_path.is_file() and (path / convert_interclip.PARAMS_FILE).is_file()):
    raise FileNotFoundError(f'evaluator {path}: expected {convert_interclip.PARAMS_FILE} and '
                            f'{convert_interclip.CONFIG_FILE} in it (written by convert_interclip '
                            'or train_evaluator).')
  try:
    record = json.loads(config_path.read_text())
    record['model'].items()
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'{config_path}: not an evaluator config (a JSON object with a "model" '
                     f'entry): {e}') from None
  try:
    model, params = convert_interclip.load_converted(path)
  except (TypeError, ValueError) as e:
    raise ValueError(f'evaluator {path}: cannot rebuild InterCLIP from {config_path} or read '
                     f'{convert_interclip.PARAMS_FILE} ({e}).') from None
  _check_params(model, params, path)
  spec = tokenizer or record.get('tokenizer', '')
  if not spec:
    raise ValueError(f'evaluator {path}: {config_path.name} does not say which tokenizer it uses; '
                     'pass --evaluator_tokenizer clip:<bpe_simple_vocab_16e6.txt.gz> for the '
                     'official weights (or reconvert with --clip-merges).')
  kind, file = parse_tokenizer_spec(spec, path, f'evaluator {path}')
  encode = make_text_encoder(kind, file, model, f'evaluator {path}')
  return Evaluator(path, model, params, f'{kind}:{file}', encode, record.get('source', {}),
                   batch_size)


def _check_params(model: evaluator_lib.InterCLIP, params: Any, path: pathlib.Path) -> None:
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 2, 2, model.feature_dim)), jnp.ones((1, 2)),
      jnp.zeros((1, model.context_length), jnp.int32)))['params']
  want = jax.tree_util.tree_flatten_with_path(shapes)[0]
  got = jax.tree_util.tree_flatten_with_path(params)[0]
  want_shapes = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in want}
  got_shapes = {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in got}
  if want_shapes != got_shapes:
    diff = sorted(set(want_shapes.items()) ^ set(got_shapes.items()))[:4]
    raise ValueError(f'evaluator {path}: {convert_interclip.PARAMS_FILE} does not match the '
                     f'architecture in {convert_interclip.CONFIG_FILE} (first differences: '
                     f'{diff}).')

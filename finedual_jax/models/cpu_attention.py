"""Fused attention for CPUs: a C++ kernel behind ``jax.ffi``, built on first use.

XLA:CPU has no fused attention: ``chunked_attention`` runs the products as library calls and
the softmax, masks and layout changes as separate passes, and on a 2-core Zen 5 a [32, 300,
8, 64] attention's forward and backward spent ~40% of its time outside the products. This
kernel (``cpu_attention.cc``) does one (example, head) pair at a time, 48 query rows at a
time, so the scores and probabilities of a block stay in the core's cache; the products are
register-tiled loops over 16-float vectors, which reach 192-223 GFLOP/s on one core there
(the machine's ``jnp.dot`` peak, on two cores, measured 364-432 GFLOP/s).

It computes what ``chunked_attention.dot_product_attention`` computes (layout [batch, length,
heads, head_dim], boolean masks broadcastable to [batch, heads, q_len, k_len], a fully masked
row attends uniformly, the backward pass recomputes the probabilities from the saved
log-sum-exp), for float32 and head sizes that are a multiple of 16. Attention dropout takes
its keep-mask from ``dropout.keep_mask`` over the whole [batch, heads, q_len, k_len] score
tensor (a different stream of masks than the chunked version's, the same distribution).

Building: the source ships with the package and is compiled with the C++ compiler (``$CXX``,
else ``c++``) against the XLA FFI headers in jaxlib (``jax.ffi.include_dir()``), for this
machine (``-march=native``), into ``$FINEDUAL_KERNEL_CACHE`` (default
``~/.cache/finedual_jax``) under a name that hashes the source, the compiler, the flags,
JAX's versions and the CPU's model and flags (a library built for one CPU may not run on
another that shares the home directory); processes that build at the same time each write a
temporary file and rename it. Where no compiler is found or the build fails, ``available()``
is False with one warning that says why, and ``layers.attention`` uses the chunked version.
``FINEDUAL_CPU_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from finedual_jax.models import chunked_attention
from finedual_jax.models import dropout

OPT_OUT = 'FINEDUAL_CPU_KERNEL'
CACHE_ENV = 'FINEDUAL_KERNEL_CACHE'
SOURCE = pathlib.Path(__file__).with_name('cpu_attention.cc')
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-Wno-attributes',
         '-Wno-return-type')
_TARGETS = {'forward': 'finedual_attention_forward', 'backward': 'finedual_attention_backward'}
_SYMBOLS = {'forward': 'FinedualAttentionForward', 'backward': 'FinedualAttentionBackward'}


def enabled() -> bool:
  """Whether the kernel is wanted here: JAX's default backend is the CPU and
  ``FINEDUAL_CPU_KERNEL`` is not 0."""
  return os.environ.get(OPT_OUT, '1') != '0' and jax.default_backend() == 'cpu'


def supports(query: jax.Array, key: jax.Array, value: jax.Array) -> bool:
  """Whether the kernel computes this attention: float32 and a head size that is a multiple
  of 16."""
  return (all(x.dtype == jnp.float32 for x in (query, key, value))
          and query.shape[-1] % 16 == 0 and query.shape[-1] == key.shape[-1] == value.shape[-1])


def available() -> bool:
  """Whether the kernel is wanted here and built (building it on first call)."""
  return enabled() and _load() is not None


def library_path() -> pathlib.Path:
  """Where this source, compiler and jaxlib's kernel library is (or will be) cached."""
  root = pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / '.cache' / 'finedual_jax')
  digest = hashlib.sha256()
  # -march=native: a library built for one CPU may not run on another sharing this home.
  for part in (SOURCE.read_bytes(), _compiler(), ' '.join(FLAGS), jax.__version__,
               jaxlib.__version__, _cpu_identity()):
    digest.update(part if isinstance(part, bytes) else part.encode())
  return root / f'cpu_attention-{digest.hexdigest()[:16]}.so'


def _cpu_identity() -> str:
  """The machine's CPU model and instruction-set flags (Linux), else its architecture."""
  try:
    lines = pathlib.Path('/proc/cpuinfo').read_text().splitlines()
  except OSError:
    lines = []
  wanted = [line for line in lines if line.split(':')[0].strip() in ('model name', 'flags')]
  return '\n'.join(sorted(set(wanted))) or f'{platform.machine()} {platform.processor()}'


def _compiler() -> str:
  return os.environ.get('CXX') or 'c++'


@functools.cache
def _load() -> ctypes.CDLL | None:
  """Builds (if not cached), loads and registers the kernel; None, with a warning, if that
  fails."""
  try:
    path = library_path()
    if not path.exists():
      _build(path)
    library = ctypes.CDLL(str(path))
    for name, symbol in _SYMBOLS.items():
      jax.ffi.register_ffi_target(_TARGETS[name], jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform='cpu')
    return library
  except (OSError, RuntimeError, AttributeError) as e:
    warnings.warn(f'finedual_jax: the fused CPU attention kernel is not available ({e}); '
                  'attention runs as chunked XLA operations instead.', RuntimeWarning,
                  stacklevel=2)
    return None


def _build(path: pathlib.Path) -> None:
  compiler = shutil.which(_compiler())
  if compiler is None:
    raise RuntimeError(f'no C++ compiler {_compiler()!r} on PATH (set CXX)')
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    partial = pathlib.Path(tmp) / path.name
    command = [compiler, *FLAGS, '-I', jax.ffi.include_dir(), str(SOURCE), '-o', str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f'{" ".join(command)} failed with exit code {result.returncode}: '
                         f'{result.stderr.strip()[-2000:]}')
    os.replace(partial, path)


def _call(name: str, outputs, *args, scale: float, rate: float):
  keep_scale = 1.0 / dropout.keep_probability(rate) if rate else 1.0
  results = jax.ffi.ffi_call(_TARGETS[name], outputs, vmap_method='sequential')(
      *args, scale=np.float32(scale), keep_scale=np.float32(keep_scale),
      dropout=np.int32(rate > 0))
  # Inside shard_map the results vary over the mesh axes the query does (an FFI call's results
  # carry none), as the custom VJP's type check requires of the gradients.
  return tuple(_varying_like(r, args[0]) for r in results)


def _varying_like(x: jax.Array, like: jax.Array) -> jax.Array:
  aval = jax.typeof(like)
  manual = getattr(aval, 'manual_axis_type', None)  # JAX 0.10; earlier versions: vma.
  axes = tuple(sorted(manual.varying if manual is not None else getattr(aval, 'vma', ())))
  return jax.lax.pcast(x, axes, to='varying') if axes else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, mask, keep, scale, rate):
  return _forward(q, k, v, mask, keep, scale, rate)[0]


def _forward(q, k, v, mask, keep, scale, rate):
  batch, q_len, heads, _ = q.shape
  out, lse = _call('forward', (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                               jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32)),
                   q, k, v, mask, keep, scale=scale, rate=rate)
  return out, (q, k, v, mask, keep, out, lse)


def _backward(scale, rate, residuals, d_out):
  q, k, v, mask, keep, out, lse = residuals
  d_q, d_k, d_v = _call('backward', tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32)
                                          for x in (q, k, v)),
                        q, k, v, mask, keep, out, lse, d_out.astype(jnp.float32), scale=scale,
                        rate=rate)
  return d_q, d_k, d_v, None, None


_attention.defvjp(_forward, _backward)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None, *, dropout_rng: jax.Array | None = None,
                          dropout_rate: float = 0.0) -> jax.Array:
  """``chunked_attention.dot_product_attention``'s function, computed by the kernel (which
  must be ``available()``); see the module's docstring for what it supports."""
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError(f'cpu attention: query, key and value must be [batch, length, heads, '
                     f'head_dim], found shapes {query.shape}, {key.shape}, {value.shape}.')
  batch, q_len, heads, _ = query.shape
  k_len = key.shape[1]
  if key.shape != value.shape or key.shape[0] != batch or key.shape[2] != heads:
    raise ValueError(f'cpu attention: key {key.shape} and value {value.shape} must be '
                     f'[{batch}, k_len, {heads}, head_dim] for query {query.shape}.')
  if not supports(query, key, value):
    raise ValueError(f'cpu attention: expected float32 inputs with a head size that is a '
                     f'multiple of 16, found {query.dtype}/{key.dtype}/{value.dtype} and head '
                     f'size {query.shape[-1]}.')
  mask = chunked_attention.example_mask(mask, query, key, dropout_rng, dropout_rate,
                                        'cpu attention')
  if _load() is None:
    raise RuntimeError('cpu attention: the kernel could not be built (see the warning above).')
  rate = float(dropout_rate)
  if rate:
    keep = dropout.keep_mask(dropout_rng, (batch, heads, q_len, k_len), rate)
  else:
    keep = jnp.ones((1,), bool)
  return _attention(query, key, value, mask, keep, 1.0 / float(query.shape[-1]) ** 0.5, rate)

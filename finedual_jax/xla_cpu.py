"""oneDNN for the matrix products of forward-only programs (sampling) on XLA:CPU.

By default XLA:CPU (JAX 0.10) hands each dot to YNNPACK, whose kernels run the products whose
contraction or output is one 64-wide attention head slowly. On a 2-core AMD EPYC (Zen 4), the
scores and weighted sums of 512 (example, head) pairs at T = 300 ([300 x 64] x [64 x 300] and
[300 x 300] x [300 x 64]) ran at 86-94 GFLOP/s through YNNPACK and 140-180 GFLOP/s through
oneDNN, a [9600 x 512] @ [512 x 2048] dense layer at ~195 against ~215 GFLOP/s. A guided DDIM-50
run at the ``bench`` size took 8-12% less time at batch 4 (FineDual, InterGen, in2IN;
at batch 1 InterGen and in2IN 6-10% less, FineDual 2% more).

Training keeps XLA's default: its backward pass runs independent products (input and weight
gradients) side by side, and oneDNN products running concurrently slowed the whole FineDual
``bench`` step from 14.5 to 16.0 s although each product alone was as fast or faster. So the
option is per program (``jax.jit(..., compiler_options=...)``), not a process-wide XLA flag.

The fusion type must be ``individual_dot``: ``dot`` also pulls element-wise producers into the
oneDNN call, and for some of them (``(2 * x) @ w.T``) oneDNN fails to compile the partition and
the process dies (SIGILL). ``FINEDUAL_ONEDNN=0`` turns the option off, and so does a JAX whose
XLA does not know these (experimental) options or takes them without calling oneDNN (JAX 0.8.2):
they are tried once on a tiny program first.

JAX 0.10 cannot store a program with oneDNN calls in its persistent compilation cache
("ToProto is not implemented for thunk kind: onednn-fusion": a warning, and a fresh compile at
every start). Where that cache is on (``jax_compilation_cache_dir``) and such a program cannot
be stored, the options are not given, so the sampler is cached as the user asked.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import serialize_executable

OPT_OUT = 'FINEDUAL_ONEDNN'
ONEDNN_DOTS = {'xla_cpu_use_onednn': True,
               'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
# How a oneDNN call is named in the compiled program's text.
ONEDNN_CALL = '__onednn_fusion'


def forward_compiler_options() -> dict[str, Any] | None:
  """``compiler_options`` for a jitted forward-only program: oneDNN dots where JAX's default
  backend is the CPU, None (XLA's defaults) elsewhere, with ``FINEDUAL_ONEDNN=0``, or where
  the options give no oneDNN calls or programs that, with a persistent compilation cache on,
  cannot be stored."""
  if os.environ.get(OPT_OUT, '1') == '0' or jax.default_backend() != 'cpu':
    return None
  onednn, storable = _probe(tuple(ONEDNN_DOTS.items()))
  if not onednn or (_persistent_cache_on() and not storable):
    return None
  return dict(ONEDNN_DOTS)


def onednn_dots_available() -> bool:
  """Whether this JAX's XLA:CPU puts products on oneDNN with ``ONEDNN_DOTS`` (probed once)."""
  return _probe(tuple(ONEDNN_DOTS.items()))[0]


def _persistent_cache_on() -> bool:
  return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)


@functools.cache
def _probe(options: tuple[tuple[str, Any], ...]) -> tuple[bool, bool]:
  """Whether this JAX's XLA:CPU compiles a small product with ``options`` into a oneDNN call,
  and whether JAX can serialise the result (what its persistent compilation cache does)."""
  x = jnp.ones((8, 8), jnp.float32)
  try:
    compiled = jax.jit(lambda a: a @ a.T, compiler_options=dict(options)).lower(x).compile()
  except Exception:  # pylint: disable=broad-except  (an unknown option or value: XLA's error)
    return False, False
  if ONEDNN_CALL not in compiled.as_text():  # The options known, but no oneDNN (JAX 0.8.2).
    return False, False
  try:
    serialize_executable.serialize(compiled)
  except Exception:  # pylint: disable=broad-except  (XLA: not implemented for this thunk kind)
    return True, False
  return True, True

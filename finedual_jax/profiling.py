"""Where a compiled program's time goes, by model component, from a ``jax.profiler`` trace.

    breakdown = profiling.profile_components(compiled, args, trace_dir='/tmp/trace')

runs ``compiled(*args)`` under ``jax.profiler.trace`` (the trace stays in ``trace_dir`` for
TensorBoard, XProf or Perfetto), reads the trace back with ``jax.profiler.ProfileData`` and sums
the time of every event named after one of the program's HLO instructions. Each instruction's
``op_name`` metadata (the JAX name stack: ``jit(step)/transpose(jvp(FineDualDenoiser))/
interaction_0/self_attn/query/dot_general``) names the module it came from, and ``component``
maps that to the parts the model is made of: the attention's projections, the attention itself
(scores, softmax, weighted sum), feed-forward, AdaLN, the interaction graph, the distance
predictor, the text encoder, the losses and the optimizer (the training step's ``losses`` and
``optimizer`` name scopes), and everything else.

A fusion counts for the component of its root instruction: where XLA fuses element-wise work
of one module into a product of another, that time goes to the product's module.

On a CPU the events are XLA:CPU's thunks on the host threads, so the total is op time summed
over threads: with two products running side by side it exceeds the wall time. On a GPU only
the device planes are read (the "XLA Ops" line names HLO instructions), so host-side launches
are not counted twice; that path has not been run on a GPU yet.
"""

from __future__ import annotations

import collections
import pathlib
import re
from typing import Any, Callable, Sequence

PROJECTIONS = ('query', 'key', 'value', 'out')
COMPONENTS = ('attention projections', 'attention', 'feed-forward', 'AdaLN', 'interaction graph',
              'distance predictor', 'text encoder', 'losses', 'optimizer', 'other')

_ATTENTION_SCOPE = re.compile(r'^(self_attn|cross_attn|attn_\d+)$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.MULTILINE)


def _scopes(op_name: str) -> list[str]:
  """The name stack's identifiers in order, transformation wrappers unwrapped:
  'jit(step)/transpose(jvp(losses))/mul' -> ['jit', 'step', 'transpose', 'jvp', 'losses', 'mul']."""
  return re.findall(r'[A-Za-z_][\w]*', op_name)


def component(op_name: str) -> str:
  """The model component an instruction's ``op_name`` belongs to (one of ``COMPONENTS``)."""
  scopes = _scopes(op_name)
  if 'optimizer' in scopes:
    return 'optimizer'
  if 'losses' in scopes:
    return 'losses'
  if 'text' in scopes or 'text_encoder' in scopes:
    return 'text encoder'
  # Before the blocks' parts: these modules have LayerNorms ('ln_in') of their own.
  if {'graph', 'part_tokens', 'graph_out'} & set(scopes):
    return 'interaction graph'
  if 'distance' in scopes:
    return 'distance predictor'
  for i, scope in enumerate(scopes):
    if _ATTENTION_SCOPE.match(scope):
      following = scopes[i + 1] if i + 1 < len(scopes) else ''
      return 'attention projections' if following in PROJECTIONS else 'attention'
  if 'ffn' in scopes:
    return 'feed-forward'
  if any(scope.startswith('ln_') for scope in scopes):
    return 'AdaLN'
  return 'other'


def instruction_op_names(hlo_text: str) -> dict[str, str]:
  """{instruction name: op_name metadata} of every instruction of a compiled program's text."""
  return {name: op_name for name, op_name in _INSTRUCTION.findall(hlo_text)}


def event_times(trace_dir: str | pathlib.Path, names: set[str]) -> dict[str, int]:
  """Nanoseconds per event name over the trace in ``trace_dir``, for events named in
  ``names``; only device planes where the trace has any (GPU/TPU), else the host's."""
  import jax
  paths = sorted(pathlib.Path(trace_dir).glob('**/*.xplane.pb'))
  if not paths:
    raise FileNotFoundError(f'profiling: no *.xplane.pb under {trace_dir}: the profiler '
                            'wrote no trace.')
  data = jax.profiler.ProfileData.from_file(str(paths[-1]))
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith('/device:')]
  totals: dict[str, int] = collections.Counter()
  for plane in device or planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          totals[event.name] += event.duration_ns
  return totals


def profile_components(compiled, args: Sequence[Any], *, trace_dir: str | pathlib.Path,
                       calls: int = 2, call: Callable[..., Any] | None = None,
                       top: int = 10) -> dict[str, Any]:
  """Traces ``calls`` calls of ``compiled(*args)`` (or of ``call(*args)``, which must run
  ``compiled`` and block on its result) and returns op seconds per call by component, with
  the ``top`` instructions by time.

  Returns {'op_seconds_per_call', 'components': {component: seconds per call}, 'top_ops':
  [{'name', 'op_name', 'component', 'seconds_per_call'}], 'trace_dir'}.
  """
  import jax
  if calls < 1:
    raise ValueError(f'profiling: calls must be >= 1, found {calls}.')
  op_names = instruction_op_names(compiled.as_text())
  run = call or (lambda *a: jax.block_until_ready(compiled(*a)))
  trace_dir = pathlib.Path(trace_dir)
  trace_dir.mkdir(parents=True, exist_ok=True)
  with jax.profiler.trace(str(trace_dir)):
    for _ in range(calls):
      run(*args)
  times = event_times(trace_dir, set(op_names))
  if not times:
    raise RuntimeError(f'profiling: the trace in {trace_dir} has no events named after the '
                       'program\'s instructions; this backend\'s profiler names them otherwise.')
  by_component = {name: 0.0 for name in COMPONENTS}
  for name, ns in times.items():
    by_component[component(op_names[name])] += ns / 1e9 / calls
  ranked = sorted(times.items(), key=lambda item: -item[1])[:top]
  return {
      'op_seconds_per_call': sum(times.values()) / 1e9 / calls,
      'components': by_component,
      'top_ops': [{'name': name, 'op_name': op_names[name],
                   'component': component(op_names[name]), 'seconds_per_call': ns / 1e9 / calls}
                  for name, ns in ranked],
      'trace_dir': str(trace_dir),
  }


def format_components(label: str, profile: dict[str, Any]) -> str:
  """One line: the components' shares of op time, largest first."""
  total = profile['op_seconds_per_call']
  shares = sorted(profile['components'].items(), key=lambda item: -item[1])
  parts = ', '.join(f'{name} {seconds / total:.0%}' for name, seconds in shares if seconds > 0)
  return f'{label}: {total:.3g} s of op time per call: {parts}'

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

Each component's matrix-product FLOPs come from the same program text (``instruction_flops``:
2 * output elements * contracted size for every ``dot``, also inside fusions such as
XLA:CPU's YNNPACK and oneDNN calls) times the number of times the trace saw the instruction
run (a loop body's products run once per iteration), so each component also gets a rate:
how close its products came to the machine's peak. Only ``dot`` instructions are counted:
GPU library calls (cuBLAS ``custom-call``) and element-wise work count no FLOPs.

On a CPU the events are XLA:CPU's thunks on the host threads, so the total is op time summed
over threads: with two products running side by side it exceeds the wall time. On a GPU only
the device planes are read (the "XLA Ops" line names HLO instructions), so host-side launches
are not counted twice; that path has not been run on a GPU yet.
"""

from __future__ import annotations

import collections
import functools
import math
import pathlib
import re
from typing import Any, Callable, Sequence

PROJECTIONS = ('query', 'key', 'value', 'out')
COMPONENTS = ('attention projections', 'attention', 'feed-forward', 'AdaLN', 'interaction graph',
              'distance predictor', 'text encoder', 'losses', 'optimizer', 'other')

_ATTENTION_SCOPE = re.compile(r'^(self_attn|cross_attn|attn_\d+)$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.MULTILINE)
# One instruction line: name, result shape (the first array shape), opcode, operands, attributes.
_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?)\s([a-z][\w\-]*)\((.*?)\)(.*)$')
_SHAPE = re.compile(r'[a-z]\w*\[([\d,]*)\]')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')


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


def instruction_flops(hlo_text: str) -> dict[str, float]:
  """{instruction name: matrix-product FLOPs of one execution} for the instructions of a
  compiled program's text that are a ``dot`` or call computations containing dots (a fusion,
  a library call; nested calls included). ``while``/``call``/``conditional`` are left out:
  their bodies' instructions are traced as events of their own."""
  shapes: dict[str, list[int] | None] = {}
  own: dict[str, float] = collections.Counter()  # computation -> FLOPs of its own dots
  calls: dict[str, list[str]] = collections.defaultdict(list)
  candidates: list[tuple[str, float, list[str]]] = []
  computation = ''
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and ' = ' not in line:
      computation = header.group(1)
      continue
    match = _LINE.match(line)
    if match is None:
      continue
    name, shape, opcode, operands, attributes = match.groups()
    shapes[name] = _dims(shape)
    callees = re.findall(r'\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)', attributes)
    calls[computation].extend(callees)
    if opcode == 'dot':
      flops = _dot_flops(name, shapes, operands, attributes, line)
      own[computation] += flops
      candidates.append((name, flops, []))
    elif callees and opcode not in ('while', 'call', 'conditional'):
      candidates.append((name, 0.0, callees))

  @functools.cache
  def total(comp: str) -> float:  # HLO's call graph has no cycles.
    return own.get(comp, 0.0) + sum(total(c) for c in calls.get(comp, ()))

  result = {}
  for name, flops, callees in candidates:
    value = flops + sum(total(c) for c in callees)
    if value:
      result[name] = value
  return result


def _dims(shape_text: str) -> list[int] | None:
  """The dimensions of the first array shape in ``shape_text`` ('f32[2,3]{1,0}' -> [2, 3])."""
  match = _SHAPE.search(shape_text)
  return None if match is None else [int(d) for d in match.group(1).split(',') if d]


def _dot_flops(name: str, shapes: dict[str, list[int] | None], operands: str,
               attributes: str, line: str) -> float:
  """2 * output elements * contracted size; the left operand's shape is inline or defined
  earlier in the text."""
  lhs_name = re.search(r'%?([A-Za-z_][\w.\-]*)\s*(?:,|$)', operands)
  lhs = _dims(operands.split('%')[0]) or (shapes.get(lhs_name.group(1)) if lhs_name else None)
  out = shapes.get(name)
  contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', attributes)
  if lhs is None or out is None or contracting is None:
    raise ValueError(f'profiling: cannot read the shapes of dot {name!r} from the program text '
                     f'(line: {line.strip()[:200]!r}).')
  size = math.prod(lhs[int(d)] for d in contracting.group(1).split(',') if d)
  return 2.0 * size * math.prod(out)


def event_stats(trace_dir: str | pathlib.Path, names: set[str]) -> dict[str, tuple[int, int]]:
  """{event name: (nanoseconds, number of events)} over the trace in ``trace_dir``, for events
  named in ``names``; only device planes where the trace has any (GPU/TPU), else the host's.
  The count is how often the instruction ran."""
  import jax
  paths = sorted(pathlib.Path(trace_dir).glob('**/*.xplane.pb'))
  if not paths:
    raise FileNotFoundError(f'profiling: no *.xplane.pb under {trace_dir}: the profiler '
                            'wrote no trace.')
  data = jax.profiler.ProfileData.from_file(str(paths[-1]))
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith('/device:')]
  totals: dict[str, int] = collections.Counter()
  counts: dict[str, int] = collections.Counter()
  for plane in device or planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          totals[event.name] += event.duration_ns
          counts[event.name] += 1
  return {name: (totals[name], counts[name]) for name in totals}


def profile_components(compiled, args: Sequence[Any], *, trace_dir: str | pathlib.Path,
                       calls: int = 2, call: Callable[..., Any] | None = None,
                       top: int = 10) -> dict[str, Any]:
  """Traces ``calls`` calls of ``compiled(*args)`` (or of ``call(*args)``, which must run
  ``compiled`` and block on its result) and returns op seconds per call by component, with
  the ``top`` instructions by time.

  Returns {'op_seconds_per_call', 'components': {component: seconds per call},
  'flops_per_call': {component: matrix-product FLOPs per call}, 'top_ops': [{'name',
  'op_name', 'component', 'seconds_per_call', 'flops_per_call'}], 'trace_dir'}.
  """
  import jax
  if calls < 1:
    raise ValueError(f'profiling: calls must be >= 1, found {calls}.')
  text = compiled.as_text()
  op_names = instruction_op_names(text)
  flops = instruction_flops(text)
  run = call or (lambda *a: jax.block_until_ready(compiled(*a)))
  trace_dir = pathlib.Path(trace_dir)
  trace_dir.mkdir(parents=True, exist_ok=True)
  with jax.profiler.trace(str(trace_dir)):
    for _ in range(calls):
      run(*args)
  stats = event_stats(trace_dir, set(op_names))
  if not stats:
    raise RuntimeError(f'profiling: the trace in {trace_dir} has no events named after the '
                       'program\'s instructions; this backend\'s profiler names them otherwise.')
  by_component = {name: 0.0 for name in COMPONENTS}
  flops_by_component = {name: 0.0 for name in COMPONENTS}
  for name, (ns, count) in stats.items():
    by_component[component(op_names[name])] += ns / 1e9 / calls
    flops_by_component[component(op_names[name])] += flops.get(name, 0.0) * count / calls
  ranked = sorted(stats.items(), key=lambda item: -item[1][0])[:top]
  return {
      'op_seconds_per_call': sum(ns for ns, _ in stats.values()) / 1e9 / calls,
      'components': by_component,
      'flops_per_call': flops_by_component,
      'top_ops': [{'name': name, 'op_name': op_names[name],
                   'component': component(op_names[name]), 'seconds_per_call': ns / 1e9 / calls,
                   'flops_per_call': flops.get(name, 0.0) * count / calls}
                  for name, (ns, count) in ranked],
      'trace_dir': str(trace_dir),
  }


def format_components(label: str, profile: dict[str, Any]) -> str:
  """One line: the components' shares of op time, largest first, each with the rate of its
  matrix products (FLOPs over the component's op time) where it has any."""
  total = profile['op_seconds_per_call']
  flops = profile.get('flops_per_call', {})
  shares = sorted(profile['components'].items(), key=lambda item: -item[1])
  parts = []
  for name, seconds in shares:
    if seconds > 0:
      rate = flops.get(name, 0.0) / seconds / 1e9
      parts.append(f'{name} {seconds / total:.0%}' + (f' ({rate:.3g} GFLOP/s)' if rate else ''))
  return f'{label}: {total:.3g} s of op time per call: {", ".join(parts)}'

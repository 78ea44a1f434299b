"""Where a compiled program's time goes, by model component, from a ``jax.profiler`` trace.

    breakdown = profiling.profile_components(compiled, args, trace_dir='/tmp/trace')

runs ``compiled(*args)`` under ``jax.profiler.trace`` (the trace stays in ``trace_dir`` for
TensorBoard, XProf or Perfetto), reads the trace back with ``jax.profiler.ProfileData`` and sums
the time of the events of the program's HLO instructions. Each instruction's
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
XLA:CPU's YNNPACK and oneDNN calls and GPU Triton GEMMs; the same for cuBLAS/hipBLAS GEMM
custom calls, and the products of cuDNN's fused attention and of this project's fused CPU
attention) times the number of times each instruction ran: once per call, or, inside a loop
or a conditional, as often as the trace saw it (a loop body's products run once per
iteration). So each component also gets a rate: how close its products came to the machine's
peak. Element-wise work counts no FLOPs.

On a CPU the events are XLA:CPU's thunks on the host threads, so the total is op time summed
over threads: with two products running side by side it exceeds the wall time. On a GPU only
the device planes are read, so host-side launches are not counted twice; each kernel belongs
to the instruction its ``hlo_op`` statistic names (one instruction may launch several). The
GPU path is tested on hand-written program text and traces in XLA's formats; it has not been
run on a GPU yet.
"""

from __future__ import annotations

import collections
import functools
import math
import pathlib
import re
from typing import Any, Callable, NamedTuple, Sequence

PROJECTIONS = ('query', 'key', 'value', 'out')
COMPONENTS = ('attention projections', 'attention', 'feed-forward', 'AdaLN', 'interaction graph',
              'distance predictor', 'text encoder', 'losses', 'optimizer', 'other')

_ATTENTION_SCOPE = re.compile(r'^(self_attn|cross_attn|attn_\d+)$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.MULTILINE)
# One instruction line: name, result shape (the first array shape), opcode, operands, attributes.
_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?)\s([a-z][\w\-]*)\((.*?)\)(.*)$')
_SHAPE = re.compile(r'[a-z]\w*\[([\d,]*)\]')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
# An operand: its inline shape (with an optional layout) where the text has one, and its name.
_OPERAND = re.compile(r'(?:([a-z]\w*\[[\d,]*\])(?:\{[^}]*\})?\s+)?%?([A-Za-z_][\w.\-]*)')
_GEMM_TARGET = re.compile(r'custom_call_target="__cublas\$(?:gemm|lt\$matmul)')
_ATTENTION_TARGET = re.compile(r'custom_call_target="__cudnn\$fmha\w*')
# This project's fused CPU attention (models/cpu_attention.py): [B, T, H, D] operands q, k, v.
_CPU_ATTENTION_TARGET = re.compile(r'custom_call_target="finedual_attention_(forward|backward)"')


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
  compiled program's text that are a product or call computations containing products (a
  fusion, a library call; nested calls included). Products are ``dot`` instructions, GPU
  library GEMMs (cuBLAS/hipBLAS ``custom-call``s, read from their ``dot_dimension_numbers``)
  and cuDNN fused attention (its two products forward; five backward, the scores recomputed).
  ``while``/``call``/``conditional`` are left out: their bodies' instructions are traced as
  events of their own."""
  return _flops(_parse(hlo_text))


def _flops(program: _Program) -> dict[str, float]:
  @functools.cache
  def total(comp: str) -> float:  # HLO's call graph has no cycles.
    return (sum(flops for _, flops, _ in program.instructions.get(comp, ()))
            + sum(total(c) for c in program.calls.get(comp, ())))

  result = {}
  for instructions in program.instructions.values():
    for name, flops, callees in instructions:
      value = flops + sum(total(c) for c in callees)
      if value:
        result[name] = value
  return result


def repeated_instructions(hlo_text: str) -> set[str]:
  """The instructions that may run other than once per call of the program: those in the
  bodies and conditions of ``while`` loops and in ``conditional`` branches, nested calls
  included. The others run exactly once per call."""
  return _repeated(_parse(hlo_text))


def _repeated(program: _Program) -> set[str]:
  reached, stack = set(), list(program.repeated_roots)
  while stack:
    comp = stack.pop()
    if comp not in reached:
      reached.add(comp)
      stack.extend(program.calls.get(comp, ()))
  return {name for comp in reached for name, _, _ in program.instructions.get(comp, ())}


class _Program(NamedTuple):
  """A compiled program's text, parsed. ``instructions``: per computation, its instructions as
  (name, FLOPs of the instruction's own product, the computations it calls as a fusion or a
  library call); ``calls``: per computation, every computation its instructions call;
  ``repeated_roots``: the loop bodies and conditions and the conditional branches."""
  instructions: dict[str, list[tuple[str, float, list[str]]]]
  calls: dict[str, list[str]]
  repeated_roots: list[str]


def _parse(hlo_text: str) -> _Program:
  shapes: dict[str, list[int] | None] = {}
  instructions: dict[str, list] = collections.defaultdict(list)
  calls: dict[str, list[str]] = collections.defaultdict(list)
  repeated_roots: list[str] = []
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
    callees = re.findall(r'\b(?:calls|to_apply|body|condition|true_computation|'
                         r'false_computation)=%?([\w.\-]+)', attributes)
    branches = re.search(r'branch_computations=\{([^}]*)\}', attributes)
    if branches:
      callees += re.findall(r'%?([\w.\-]+)', branches.group(1))
    calls[computation].extend(callees)
    if opcode in ('while', 'conditional'):
      repeated_roots.extend(callees)
    flops = _product_flops(name, opcode, shapes, operands, attributes, line)
    looping = opcode in ('while', 'call', 'conditional')
    instructions[computation].append((name, flops, [] if looping else callees))
  return _Program(dict(instructions), dict(calls), repeated_roots)


def _dims(shape_text: str) -> list[int] | None:
  """The dimensions of the first array shape in ``shape_text`` ('f32[2,3]{1,0}' -> [2, 3])."""
  match = _SHAPE.search(shape_text)
  return None if match is None else [int(d) for d in match.group(1).split(',') if d]


def _operand_dims(operands: str, shapes: dict[str, list[int] | None]) -> list[list[int] | None]:
  """Each operand's dimensions, from its inline shape or the definition earlier in the text."""
  return [_dims(shape) if shape else shapes.get(name)
          for shape, name in _OPERAND.findall(operands)]


def _numbers(pattern: str, text: str) -> list[int] | None:
  match = re.search(pattern, text)
  return None if match is None else [int(d) for d in re.findall(r'\d+', match.group(1))]


def _attention_flops(scores: int, qk: int, v: int, *, backward: bool) -> float:
  """Products of fused attention over ``scores`` [batch, heads, q, k] elements, with head
  sizes ``qk`` (queries, keys) and ``v`` (values). Forward: the scores and the weighted sum.
  Backward: the recomputed scores and the gradients of the probabilities, the values, the
  queries and the keys."""
  return 2.0 * scores * ((3 * qk + 2 * v) if backward else (qk + v))


def _product_flops(name: str, opcode: str, shapes: dict[str, list[int] | None], operands: str,
                   attributes: str, line: str) -> float:
  """FLOPs of one execution of a product instruction (0 for any other): 2 * output elements *
  contracted size for a dot or GEMM; for fused attention 2 * the [batch, heads, q, k] score
  elements * the head sizes of the products it runs."""
  cpu_attention = opcode == 'custom-call' and _CPU_ATTENTION_TARGET.search(attributes)
  if cpu_attention:
    dims = _operand_dims(operands, shapes)
    if len(dims) < 3 or any(d is None or len(d) != 4 for d in dims[:3]):
      raise ValueError(f'profiling: cannot read the shapes of fused attention {name!r} from the '
                       f'program text (line: {line.strip()[:200]!r}).')
    (batch, q_len, heads, qk), k_len, v = dims[0], dims[1][1], dims[2][-1]
    return _attention_flops(batch * heads * q_len * k_len, qk, v,
                            backward=cpu_attention.group(1) == 'backward')
  attention = opcode == 'custom-call' and _ATTENTION_TARGET.search(attributes)
  if attention:
    scores = _numbers(r'"intermediate_tensor_shape":\s*\{.*?"dimensions":\s*\[([^\]]*)\]',
                      attributes)
    dims = _operand_dims(operands, shapes)
    if scores is None or len(dims) < 3 or dims[0] is None or dims[2] is None:
      raise ValueError(f'profiling: cannot read the shapes of fused attention {name!r} from the '
                       f'program text (line: {line.strip()[:200]!r}).')
    return _attention_flops(math.prod(scores), dims[0][-1], dims[2][-1],
                            backward='Backward' in attention.group(0))
  if opcode == 'dot':
    contracting = _numbers(r'lhs_contracting_dims=\{([\d,]*)\}', attributes)
  elif opcode == 'custom-call' and _GEMM_TARGET.search(attributes):
    contracting = _numbers(r'"lhs_contracting_dimensions":\s*\[([^\]]*)\]', attributes)
  else:
    return 0.0
  dims = _operand_dims(operands, shapes)
  out = shapes.get(name)
  lhs = dims[0] if dims else None
  if lhs is None or out is None or contracting is None or max(contracting, default=-1) >= len(lhs):
    kind = 'dot' if opcode == 'dot' else 'GEMM'
    raise ValueError(f'profiling: cannot read the shapes of {kind} {name!r} from the program '
                     f'text (line: {line.strip()[:200]!r}).')
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def event_stats(trace_dir: str | pathlib.Path, names: set[str],
                module: str | None = None) -> dict[str, tuple[int, int]]:
  """{instruction name: (nanoseconds, number of events)} over the trace in ``trace_dir``, for
  the instructions in ``names`` (and, given ``module``, of that HLO module only).

  An event belongs to the instruction its ``hlo_op`` statistic names (GPU kernels are named
  after the kernel, one instruction may launch several), else to the one it is named after
  (XLA:CPU's thunks). Only device planes are read where the trace has any (GPU/TPU; of a
  device plane, only its "XLA Ops" line where it has one, which would repeat the kernels'
  time), else the host's."""
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
    lines = list(plane.lines)
    lines = [line for line in lines if line.name == 'XLA Ops'] or lines
    for line in lines:
      for event in line.events:
        stats = dict(event.stats)
        name = str(stats.get('hlo_op', event.name))
        if name in names and (module is None or stats.get('hlo_module', module) == module):
          totals[name] += event.duration_ns
          counts[name] += 1
  return {name: (totals[name], counts[name]) for name in totals}


def profile_components(compiled, args: Sequence[Any], *, trace_dir: str | pathlib.Path,
                       calls: int = 2, call: Callable[..., Any] | None = None,
                       top: int = 10) -> dict[str, Any]:
  """Traces ``calls`` calls of ``compiled(*args)`` (or of ``call(*args)``, which must run
  ``compiled`` and block on its result) and returns op seconds per call by component, with
  the ``top`` instructions by time (``summarize`` of the trace).

  Returns {'op_seconds_per_call', 'components': {component: seconds per call},
  'flops_per_call': {component: matrix-product FLOPs per call}, 'top_ops': [{'name',
  'op_name', 'component', 'seconds_per_call', 'flops_per_call'}], 'trace_dir'}.
  """
  import jax
  if calls < 1:
    raise ValueError(f'profiling: calls must be >= 1, found {calls}.')
  text = compiled.as_text()
  run = call or (lambda *a: jax.block_until_ready(compiled(*a)))
  trace_dir = pathlib.Path(trace_dir)
  trace_dir.mkdir(parents=True, exist_ok=True)
  with jax.profiler.trace(str(trace_dir)):
    for _ in range(calls):
      run(*args)
  return dict(summarize(text, trace_dir, calls=calls, top=top), trace_dir=str(trace_dir))


def summarize(hlo_text: str, trace_dir: str | pathlib.Path, *, calls: int,
              top: int = 10) -> dict[str, Any]:
  """The breakdown of ``profile_components`` for a trace of ``calls`` calls of the compiled
  program whose text is ``hlo_text``. An instruction outside loops and conditionals ran once
  per call; one inside ran as often as the trace saw it (on a GPU, where one instruction may
  launch several kernels, its products are counted once per kernel)."""
  op_names = instruction_op_names(hlo_text)
  program = _parse(hlo_text)  # Once: a training step's text is megabytes.
  flops, repeated = _flops(program), _repeated(program)
  module = re.match(r'\s*HloModule\s+([\w.\-]+)', hlo_text)
  stats = event_stats(trace_dir, set(op_names), module.group(1) if module else None)
  if not stats:
    raise RuntimeError(f'profiling: the trace in {trace_dir} has no events of the program\'s '
                       'instructions; this backend\'s profiler names them otherwise.')

  def flops_per_call(name: str, count: int) -> float:
    return flops.get(name, 0.0) * (count / calls if name in repeated else 1.0)

  by_component = {name: 0.0 for name in COMPONENTS}
  flops_by_component = {name: 0.0 for name in COMPONENTS}
  for name, (ns, count) in stats.items():
    by_component[component(op_names[name])] += ns / 1e9 / calls
    flops_by_component[component(op_names[name])] += flops_per_call(name, count)
  ranked = sorted(stats.items(), key=lambda item: -item[1][0])[:top]
  return {
      'op_seconds_per_call': sum(ns for ns, _ in stats.values()) / 1e9 / calls,
      'components': by_component,
      'flops_per_call': flops_by_component,
      'top_ops': [{'name': name, 'op_name': op_names[name],
                   'component': component(op_names[name]), 'seconds_per_call': ns / 1e9 / calls,
                   'flops_per_call': flops_per_call(name, count)}
                  for name, (ns, count) in ranked],
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

"""The denoisers' transformer blocks in JAX and in PyTorch, timed on the same machine.

    pip install -e ".[torch]"   # PyTorch, needed only here (its CPU build is enough)
    python -m finedual_jax.torch_comparison --out blocks.json            # bench shapes

The performance targets (README, Performance) are set against PyTorch: its CPU kernels run a
transformer of this size close to the machine's matmul rate. This command measures how close
this project's blocks come on the machine it runs on. It builds a stack of the denoisers' AdaLN
block (``models.blocks.Block``: self-attention, cross-attention to the partner stream as in
InterGen's cooperative blocks, feed-forward; [2B, T, width] streams) and the same network in
PyTorch, loads the JAX parameters into it and checks that both compute the same outputs, then
times steps of each (JAX's first, then PyTorch's) and prints their step times and MFU against
the same FLOP count (XLA's cost analysis of the JAX step with textbook attention) and the same
matmul peak (``benchmark.matmul_peak``). A step is, with ``--mode train``, a training step
(forward, backward, Adam) and, with ``--mode sample``, one forward pass without gradients,
compiled as the sampler compiles its program (oneDNN products on a CPU) against PyTorch under
``torch.inference_mode``: what a guided DDIM step costs. The sampler runs one example at a
time, its three guidance branches together, so ``--streams 6`` is one DDIM step at batch 1:

    python -m finedual_jax.torch_comparison --out sampling.json --mode sample --streams 6 \
        --width 1024 --ff_dim 2048 --steps 20                   # paper width, one DDIM step

Measured on a 2-core Intel Xeon (AVX-512, AMX) at the ``bench`` shapes (8 blocks, batch 16
pairs, T = 300, width 512): see the README's Performance section.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from finedual_jax import host_memory


def inputs(streams: int, length: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Streams [N, T, d] (pairs of persons, interleaved), their frame masks (each pair one
  length, at least half the frames), a conditioning vector per stream and a target."""
  if streams % 2:
    raise ValueError(f'--streams must be even (pairs of persons), found {streams}.')
  rng = np.random.default_rng(seed)
  lengths = rng.integers((length + 1) // 2, length + 1, streams // 2).repeat(2)
  return {'x': rng.standard_normal((streams, length, width), dtype=np.float32),
          'mask': np.arange(length)[None] < lengths[:, None],
          'cond': rng.standard_normal((streams, width), dtype=np.float32),
          'target': rng.standard_normal((streams, length, width), dtype=np.float32)}


def jax_stack(layers: int, heads: int, ff_dim: int):
  """The JAX network: ``layers`` of ``blocks.Block``, each attending to the partner stream."""
  import flax.linen as nn

  from finedual_jax.models import blocks

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x, mask, cond):
      for i in range(layers):
        x = blocks.Block(heads, ff_dim, name=f'block_{i}')(
            x, mask, cond, blocks.partner(x), blocks.partner(mask), deterministic=True)
      return x

  return Stack()


def masked_mse(out, target, mask):
  """The loss both steps minimise: the squared error over valid frames."""
  return (((out - target) ** 2) * mask[..., None]).mean()


def torch_stack(params: dict[str, Any], heads: int):
  """The PyTorch network computing ``jax_stack``'s function with its parameters ``params``."""
  import torch
  import torch.nn.functional as F

  def linear(p: dict[str, Any], heads_in: bool = False) -> torch.nn.Linear:
    """A flax Dense/DenseGeneral as a Linear: kernels [in, out], [d, H, hd] (query, key,
    value) or, with ``heads_in``, [H, hd, d] (the attention's output)."""
    kernel = np.asarray(p['kernel'])
    kernel = kernel.reshape(-1, kernel.shape[-1]) if heads_in else kernel.reshape(
        kernel.shape[0], -1)
    layer = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
      layer.weight.copy_(torch.from_numpy(np.array(kernel.T, np.float32)))
      layer.bias.copy_(torch.from_numpy(np.array(p['bias'], np.float32).reshape(-1)))
    return layer

  class AdaLN(torch.nn.Module):
    def __init__(self, p):
      super().__init__()
      self.modulation = linear(p['Dense_0'])

    def forward(self, x, cond):
      shift, scale, gate = self.modulation(F.silu(cond))[:, None].chunk(3, dim=-1)
      normed = F.layer_norm(x, x.shape[-1:], eps=1e-6)  # flax's LayerNorm, no scale or bias.
      return normed * (1 + scale) + shift, gate

  class Attention(torch.nn.Module):
    def __init__(self, p):
      super().__init__()
      self.query, self.key, self.value = (linear(p[n]) for n in ('query', 'key', 'value'))
      self.out = linear(p['out'], heads_in=True)

    def forward(self, x, context, context_mask):
      split = lambda a: a.unflatten(-1, (heads, -1)).transpose(1, 2)  # [N, H, T, hd]
      out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(context)),
                                           split(self.value(context)),
                                           attn_mask=context_mask[:, None, None, :])
      return self.out(out.transpose(1, 2).flatten(-2))

  class Block(torch.nn.Module):
    def __init__(self, p):
      super().__init__()
      self.ln_self, self.ln_cross, self.ln_ffn = (AdaLN(p[n]) for n in
                                                  ('ln_self', 'ln_cross', 'ln_ffn'))
      self.self_attn, self.cross_attn = Attention(p['self_attn']), Attention(p['cross_attn'])
      self.ffn_in, self.ffn_out = linear(p['ffn']['Dense_0']), linear(p['ffn']['Dense_1'])

    def forward(self, x, mask, cond, context, context_mask):
      h, gate = self.ln_self(x, cond)
      x = x + gate * self.self_attn(h, h, mask)
      h, gate = self.ln_cross(x, cond)
      x = x + gate * self.cross_attn(h, context, context_mask)
      h, gate = self.ln_ffn(x, cond)
      return x + gate * self.ffn_out(F.gelu(self.ffn_in(h), approximate='tanh'))

  def partner(a):
    return a.unflatten(0, (-1, 2)).flip(1).flatten(0, 1)

  class Stack(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.blocks = torch.nn.ModuleList(Block(params[f'block_{i}'])
                                        for i in range(len(params)))

    def forward(self, x, mask, cond):
      for block in self.blocks:
        x = block(x, mask, cond, partner(x), partner(mask))
      return x

  return Stack()


MODES = ('train', 'sample')


def compare(*, streams: int, length: int, width: int, heads: int, ff_dim: int, layers: int,
            steps: int, mode: str = 'train', seed: int = 0, log=print) -> dict[str, Any]:
  """Builds both networks with the same parameters, checks their outputs agree, times
  ``steps`` steps of each (after one untimed step each) and returns the figures. A step is a
  training step (``mode='train'``) or a forward pass without gradients (``'sample'``).

  JAX's steps run first, then PyTorch's. Alternating them in one process slowed the JAX step
  at the ``bench`` shapes from ~9.9 to ~12.4 s on a 2-core Xeon (PyTorch's was unchanged).
  Each framework allocates and frees gigabytes per step; that the other's allocations then cost
  more is the likely cause, not a measured one."""
  if mode not in MODES:
    raise ValueError(f'--mode: expected one of {", ".join(MODES)}, found {mode!r}.')
  if width % heads:
    raise ValueError(f'--width {width} is not a multiple of --heads {heads}.')
  data = inputs(streams, length, width, seed)
  try:
    import torch
  except ImportError:
    raise RuntimeError('torch_comparison needs PyTorch: pip install torch (the CPU wheel is '
                       'enough).') from None
  import jax
  import jax.numpy as jnp

  from finedual_jax import benchmark
  from finedual_jax import xla_cpu
  from finedual_jax.data import benchmark as data_benchmark

  model = jax_stack(layers, heads, ff_dim)
  x, mask, cond, target = (jnp.asarray(data[k]) for k in ('x', 'mask', 'cond', 'target'))
  params = jax.jit(model.init)(jax.random.key(seed), x[:2], mask[:2], cond[:2])['params']
  # AdaLN's modulation starts at zero (each block the identity): move every parameter off its
  # initial value so that the outputs compared below depend on all of them.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  forward = lambda p: model.apply({'params': p}, x, mask, cond)
  torch_model = torch_stack(jax.device_get(params), heads)
  t_x, t_mask, t_cond, t_target = (torch.from_numpy(np.asarray(data[k]))
                                   for k in ('x', 'mask', 'cond', 'target'))
  with torch.no_grad():
    got = torch_model(t_x, t_mask, t_cond).numpy()
  want = np.asarray(jax.jit(forward)(params))
  difference = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))
  if not difference < 1e-3:
    raise RuntimeError(f'the PyTorch blocks do not compute the JAX blocks\' function (largest '
                       f'difference {difference:.2e} of the largest output); nothing to compare.')
  log(f'outputs agree: largest difference {difference:.1e} of the largest output')

  if mode == 'train':
    flops, run_jax, run_torch = _training_steps(
        forward, params, torch_model, lambda: masked_mse(torch_model(t_x, t_mask, t_cond),
                                                         t_target, t_mask),
        loss=lambda out: masked_mse(out, target, mask))
  else:
    # A new function to trace: jax.jit(forward) would reuse the trace made above, whose
    # attention (the fused kernel on a CPU) XLA's cost analysis does not count.
    flops = data_benchmark.model_flops(lambda: jax.jit(lambda p: forward(p)), params)
    compiled = jax.jit(forward, compiler_options=xla_cpu.forward_compiler_options())

    def run_jax() -> float:
      return benchmark.timed(lambda: compiled(params).block_until_ready())

    def run_torch() -> float:
      with torch.inference_mode():
        return benchmark.timed(lambda: torch_model(t_x, t_mask, t_cond))

  peak = benchmark.matmul_peak()
  times = {}
  for name, run in (('jax', run_jax), ('torch', run_torch)):
    run()  # Compilation and first-call work, untimed.
    times[name] = [run() for _ in range(steps)]
    log(f'{name}: ' + ', '.join(f'{t:.3f}' for t in times[name]) + ' s per step')
  peak = benchmark.best_peak([peak, benchmark.matmul_peak()])
  result = {'mode': mode, 'machine': data_benchmark.machine_info(),
            'shapes': {'streams': streams, 'length': length, 'width': width, 'heads': heads,
                       'ff_dim': ff_dim, 'layers': layers},
            'flops_per_step': flops, 'peak': peak, 'output_difference': difference,
            'versions': {'jax': jax.__version__, 'torch': torch.__version__},
            'torch_threads': torch.get_num_threads()}
  for name, seconds in times.items():
    median = statistics.median(seconds)
    result[name] = {'step_seconds': seconds, 'median_step_seconds': median,
                    'mfu': flops / median / peak['peak_flops_per_s']}
  result['jax_over_torch'] = result['jax']['median_step_seconds'] / result['torch'][
      'median_step_seconds']
  return result


def _training_steps(forward, params, torch_model, torch_loss, *, loss):
  """(FLOPs of the JAX step, run_jax, run_torch): each runs one Adam step on the network's
  loss and returns its seconds; JAX's parameters and optimizer state are donated and kept."""
  import jax
  import optax
  import torch

  from finedual_jax import benchmark
  from finedual_jax.data import benchmark as data_benchmark

  tx = optax.adam(1e-4)

  def jax_step(params, opt_state):
    value, grads = jax.value_and_grad(lambda p: loss(forward(p)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  flops = data_benchmark.model_flops(lambda: jax.jit(lambda p, o: jax_step(p, o)), params,
                                     tx.init(params))
  step = jax.jit(jax_step, donate_argnums=(0, 1))
  state = [params, tx.init(params)]
  optimizer = torch.optim.Adam(torch_model.parameters(), lr=1e-4)

  def jax_step_once():
    new_params, opt_state, value = step(*state)
    value.block_until_ready()
    state[:] = [new_params, opt_state]

  def torch_step_once():
    optimizer.zero_grad(set_to_none=True)
    torch_loss().backward()
    optimizer.step()

  return flops, lambda: benchmark.timed(jax_step_once), lambda: benchmark.timed(torch_step_once)


def format_result(result: dict[str, Any]) -> str:
  s = result['shapes']
  step = {'train': 'training step', 'sample': 'forward pass'}[result['mode']]
  lines = [f'{s["layers"]} blocks, {s["streams"]} streams x {s["length"]} frames, width '
           f'{s["width"]}, {s["heads"]} heads, FFN {s["ff_dim"]}: '
           f'{result["flops_per_step"] / 1e9:.1f} GFLOP per {step}, peak '
           f'{result["peak"]["peak_flops_per_s"] / 1e9:.1f} GFLOP/s']
  for name, label in (('jax', f'JAX {result["versions"]["jax"]}'),
                      ('torch', f'PyTorch {result["versions"]["torch"]}')):
    r = result[name]
    lines.append(f'{label:>20}: {r["median_step_seconds"] * 1e3:9,.0f} ms per {step}  MFU '
                 f'{r["mfu"]:.1%}')
  lines.append(f'JAX / PyTorch time per {step}: {result["jax_over_torch"]:.2f}')
  return '\n'.join(lines)


def main() -> None:
  from absl import app
  from absl import flags

  from finedual_jax.data import benchmark as data_benchmark

  out = flags.DEFINE_string('out', None, 'JSON file the figures are written to.', required=True)
  streams = flags.DEFINE_integer('streams', 32, 'Streams (two per pair: batch 16).',
                                 lower_bound=2)
  length = flags.DEFINE_integer('length', 300, 'Frames per stream.', lower_bound=1)
  width = flags.DEFINE_integer('width', 512, 'Model width.', lower_bound=1)
  heads = flags.DEFINE_integer('heads', 8, 'Attention heads.', lower_bound=1)
  ff_dim = flags.DEFINE_integer('ff_dim', 1024, 'Feed-forward width.', lower_bound=1)
  layers = flags.DEFINE_integer('layers', 8, 'Blocks.', lower_bound=1)
  steps = flags.DEFINE_integer('steps', 6, 'Timed steps of each.', lower_bound=1)
  mode = flags.DEFINE_enum('mode', 'train', list(MODES),
                           'train: training steps (forward, backward, Adam); sample: forward '
                           'passes without gradients, as a DDIM step runs them.')

  def run(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    try:
      result = compare(streams=streams.value, length=length.value, width=width.value,
                       heads=heads.value, ff_dim=ff_dim.value, layers=layers.value,
                       steps=steps.value, mode=mode.value)
    except (ValueError, RuntimeError) as e:
      raise app.UsageError(str(e)) from None
    print(format_result(result))
    print(f'wrote {data_benchmark.write_json(out.value, result)}', flush=True)

  app.run(run)


if __name__ == '__main__':
  # Both frameworks on glibc (with huge pages where the machine has them) unless
  # FINEDUAL_JEMALLOC asks for jemalloc: with the commands' jemalloc configuration PyTorch's
  # training step at the bench shapes took 15.7-20.1 s against 12.2-14.3 s on glibc (2-core
  # AMD EPYC Zen 4), while JAX's changed by a few per cent (11.8 against 12.0-12.4 s).
  host_memory.reexec_for_host_memory(jemalloc_by_default=False)
  main()

"""Op time by model component from a jax.profiler trace (finedual_jax/profiling.py)."""

import jax
import jax.numpy as jnp
import pytest

from finedual_jax import profiling

# op_name metadata as XLA:CPU's compiled FineDual step carries it.
STEP = 'jit(step)/transpose(jvp(FineDualDenoiser))'


@pytest.mark.parametrize('op_name, want', [
    (f'{STEP}/interaction_0/self_attn/query/dot_general', 'attention projections'),
    (f'{STEP}/individual_1/cross_attn/out/dot_general', 'attention projections'),
    ('jit(step)/(psum_invariant:transpose(jvp(FineDualDenoiser))/individual_0/cross_attn/key/'
     'psum_invariant)', 'attention projections'),
    (f'{STEP}/interaction_0/self_attn/while/body/closed_call/bqhd,bkhd->bhqk/dot_general',
     'attention'),
    ('jit(step)/jvp(FineDualDenoiser)/block_3/self_attn/dot_product_attention/exp', 'attention'),
    (f'{STEP}/refinement_1/ffn/Dense_1/dot_general', 'feed-forward'),
    (f'{STEP}/interaction_2/ln_cross/mul', 'AdaLN'),
    (f'{STEP}/graph/round_1/msg_out/dot_general', 'interaction graph'),
    (f'{STEP}/part_tokens/dot_general', 'interaction graph'),
    (f'{STEP}/distance/pair_hidden/dot_general', 'distance predictor'),
    (f'{STEP}/distance/ln_in/mul', 'distance predictor'),  # Not AdaLN.
    (f'{STEP}/graph/round_0/ln/reduce_sum', 'interaction graph'),
    (f'{STEP}/text/text_encoder/attn_1/query/dot_general', 'text encoder'),
    ('jit(step)/transpose(jvp(losses))/reduce_sum', 'losses'),
    ('jit(step)/optimizer/mul', 'optimizer'),
    (f'{STEP}/head/proj/dot_general', 'other'),
    ('jit(step)/jvp()/sub', 'other'),
])
def test_each_op_name_maps_to_its_component(op_name, want):
  assert profiling.component(op_name) == want


def test_instruction_names_are_read_from_the_program_text():
  text = '''
  %ynn_fusion.12 = f32[7200,512]{1,0} fusion(%p), kind=kCustom, metadata={op_name="a/ffn/dot"}
  ROOT %bitcast_dynamic-update-slice_fusion.2 = f32[4]{0} fusion(%q), metadata={op_name="b/x"}
  %constant.1 = f32[] constant(0)
'''
  assert profiling.instruction_op_names(text) == {
      'ynn_fusion.12': 'a/ffn/dot', 'bitcast_dynamic-update-slice_fusion.2': 'b/x'}


def test_a_traced_program_is_broken_down_by_its_name_scopes(tmp_path):
  def program(x, w):
    with jax.named_scope('ffn'):
      h = jnp.tanh(x @ w) @ w.T
    with jax.named_scope('losses'):
      # h is an output too: otherwise XLA fuses everything into one instruction, which counts
      # for the component of its root (the loss's reduction).
      return h, jnp.mean(jnp.square(h - x))

  x, w = jnp.ones((512, 256)), jnp.full((256, 1024), 0.01)
  compiled = jax.jit(program).lower(x, w).compile()
  profile = profiling.profile_components(compiled, (x, w), trace_dir=tmp_path / 'trace',
                                         calls=3, top=3)
  components = profile['components']
  assert set(components) == set(profiling.COMPONENTS)
  assert components['feed-forward'] > 0 and components['losses'] > 0
  assert sum(components.values()) == pytest.approx(profile['op_seconds_per_call'])
  # The two products dominate, and the top instructions say where they came from.
  assert components['feed-forward'] > components['losses']
  assert len(profile['top_ops']) <= 3
  assert profile['top_ops'][0]['component'] == 'feed-forward'
  # Both products, counted once per call: 2 * 512 * 256 * 1024 FLOPs each.
  assert profile['flops_per_call']['feed-forward'] == 2 * (2 * 512 * 256 * 1024)
  assert profile['flops_per_call']['losses'] == 0
  assert profile['top_ops'][0]['flops_per_call'] > 0
  assert list((tmp_path / 'trace').glob('**/*.xplane.pb'))  # Kept for TensorBoard/XProf.
  line = profiling.format_components('program', profile)
  assert line.startswith('program: ') and 'feed-forward' in line


def test_products_are_counted_in_fusions_with_inline_or_defined_shapes():
  # Two styles of compiled text: operand shapes inline (newer XLA), or only names whose
  # definitions carry the shapes; a fusion and a nested call count their computations' dots,
  # a while loop does not (its body's instructions are events of their own).
  text = '''HloModule m, entry_computation_layout={(f32[8,4]{1,0})->f32[8,2]{1,0}}

%inner (p.0: f32[8,4], p.1: f32[4,2]) -> f32[8,2] {
  %p.0 = f32[8,4]{1,0} parameter(0)
  %p.1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,2]{1,0} dot(%p.0, %p.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%outer (q.0: f32[3,8,4], q.1: f32[3,4,5]) -> f32[3,8,5] {
  %q.0 = f32[3,8,4]{2,1,0} parameter(0)
  %q.1 = f32[3,4,5]{2,1,0} parameter(1)
  %dot.2 = f32[3,8,5]{2,1,0} dot(f32[3,8,4]{2,1,0} %q.0, f32[3,4,5]{2,1,0} %q.1), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
  ROOT %call.1 = f32[8,2]{1,0} call(%x, %y), to_apply=%inner
}

ENTRY %main (a: f32[8,4]) -> f32[8,2] {
  %a = f32[8,4]{1,0} parameter(0)
  %ynn_fusion.3 = f32[3,8,5]{2,1,0} fusion(%a, %a), kind=kCustom, calls=%outer, metadata={op_name="x"}
  %while.1 = (s32[], f32[8,2]{1,0}) while(%t), condition=%cond, body=%inner
  ROOT %dot.9 = f32[8,2]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
'''
  flops = profiling.instruction_flops(text)
  assert flops['dot.1'] == 2 * 8 * 2 * 4
  assert flops['dot.2'] == 2 * 3 * 8 * 5 * 4
  assert flops['ynn_fusion.3'] == flops['dot.2'] + flops['dot.1']
  assert flops['dot.9'] == 2 * 8 * 2 * 4
  assert 'while.1' not in flops and 'a' not in flops
  with pytest.raises(ValueError, match="cannot read the shapes of dot 'dot.4'"):
    profiling.instruction_flops('ENTRY %e () -> f32[2] {\n  %dot.4 = f32[2]{0} dot(%u, %v)\n}')


def test_each_run_of_a_loop_body_counts_its_products(tmp_path):
  def program(x, w):
    with jax.named_scope('ffn'):
      return jax.lax.map(lambda a: jnp.tanh(a @ w), x)

  x, w = jnp.ones((4, 256, 128)), jnp.ones((128, 512))
  compiled = jax.jit(program).lower(x, w).compile()
  profile = profiling.profile_components(compiled, (x, w), trace_dir=tmp_path, calls=3)
  assert profile['flops_per_call']['feed-forward'] == 4 * 2 * 256 * 128 * 512
  assert sum(profile['flops_per_call'].values()) == profile['flops_per_call']['feed-forward']
  line = profiling.format_components('loop', profile)
  rate = 4 * 2 * 256 * 128 * 512 / profile['components']['feed-forward'] / 1e9
  assert f'feed-forward 100% ({rate:.3g} GFLOP/s)' in line


def test_missing_traces_and_bad_call_counts_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='no \\*.xplane.pb under'):
    profiling.event_stats(tmp_path, {'x'})
  compiled = jax.jit(lambda x: x + 1).lower(jnp.ones(3)).compile()
  with pytest.raises(ValueError, match='calls must be >= 1, found 0'):
    profiling.profile_components(compiled, (jnp.ones(3),), trace_dir=tmp_path, calls=0)


# A compiled GPU program's text in the style XLA prints it: cuBLAS GEMMs as custom calls (a
# tuple of the result and a workspace), a Triton GEMM as a fusion, cuDNN's fused attention
# forward and backward, and a loop whose body runs an element-wise fusion.
GPU_PROGRAM = '''HloModule jit_step, entry_computation_layout={(f32[64,512]{1,0})->f32[64,512]{1,0}}

%triton_gemm (t.0: f32[64,512], t.1: f32[512,256]) -> f32[64,256] {
  %t.0 = f32[64,512]{1,0} parameter(0)
  %t.1 = f32[512,256]{1,0} parameter(1)
  ROOT %dot.7 = f32[64,256]{1,0} dot(%t.0, %t.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (b.0: (s32[], f32[64,512])) -> (s32[], f32[64,512]) {
  %b.0 = (s32[], f32[64,512]{1,0}) parameter(0)
  %loop_add_fusion = f32[64,512]{1,0} fusion(%b.0), kind=kLoop, calls=%add, metadata={op_name="jit(step)/optimizer/add"}
}

%cond (c.0: (s32[], f32[64,512])) -> pred[] {
  %c.0 = (s32[], f32[64,512]{1,0}) parameter(0)
  ROOT %compare.1 = pred[] compare(%c.0, %c.0), direction=LT
}

ENTRY %main (x: f32[64,512], w: f32[512,512], q: bf16[4,300,8,64]) -> f32[64,512] {
  %x = f32[64,512]{1,0} parameter(0)
  %w = f32[512,512]{1,0} parameter(1)
  %q = bf16[4,300,8,64]{3,2,1,0} parameter(2)
  %custom-call.1 = (f32[64,512]{1,0}, s8[4194304]{0}) custom-call(f32[64,512]{1,0} %x, f32[512,512]{1,0} %w), custom_call_target="__cublas$gemm", metadata={op_name="jit(step)/jvp(FineDualDenoiser)/block_0/ffn/Dense_0/dot_general"}, backend_config={"operation_queue_id":"0","gemm_backend_config":{"alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}
  %custom-call.2 = (f32[512,512]{1,0}, s8[0]{0}) custom-call(%x, %x), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(step)/transpose(jvp(FineDualDenoiser))/block_0/self_attn/query/dot_general"}, backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["0"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %gemm_fusion.3 = f32[64,256]{1,0} fusion(%x, %w), kind=kCustom, calls=%triton_gemm, metadata={op_name="jit(step)/jvp(FineDualDenoiser)/graph/msg/dot_general"}, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %custom-call.4 = (bf16[4,300,8,64]{3,2,1,0}, f32[4,8,300]{2,1,0}, u8[0]{0}) custom-call(bf16[4,300,8,64]{3,2,1,0} %q, bf16[4,300,8,64]{3,2,1,0} %q, bf16[4,300,8,64]{3,2,1,0} %q), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(step)/jvp(FineDualDenoiser)/block_0/self_attn/dot_product_attention/fmha"}, backend_config={"cudnn_fmha_backend_config":{"fmha_scale":0.125,"intermediate_tensor_shape":{"element_type":"BF16","dimensions":["4","8","300","300"],"tuple_shapes":[]},"bmm1_dot_dimension_numbers":{"lhs_contracting_dimensions":["3"],"rhs_contracting_dimensions":["3"],"lhs_batch_dimensions":["0","2"],"rhs_batch_dimensions":["0","2"]}}}
  %custom-call.5 = (bf16[4,300,8,64]{3,2,1,0}, bf16[4,300,8,64]{3,2,1,0}, bf16[4,300,8,64]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q, %custom-call.4), custom_call_target="__cudnn$fmhaSoftmaxBackward", metadata={op_name="jit(step)/transpose(jvp(FineDualDenoiser))/block_0/self_attn/dot_product_attention/fmha"}, backend_config={"cudnn_fmha_backend_config":{"intermediate_tensor_shape":{"element_type":"BF16","dimensions":["4","8","300","300"]}}}
  %while.1 = (s32[], f32[64,512]{1,0}) while(%x), condition=%cond, body=%body, metadata={op_name="jit(step)/optimizer/while"}
  ROOT %add.2 = f32[64,512]{1,0} add(%x, %x), metadata={op_name="jit(step)/jvp(losses)/add"}
}
'''


def test_gpu_library_products_are_counted():
  flops = profiling.instruction_flops(GPU_PROGRAM)
  assert flops['custom-call.1'] == 2 * 64 * 512 * 512    # cuBLAS, inline operand shapes.
  assert flops['custom-call.2'] == 2 * 512 * 512 * 64    # cuBLASLt, x^T x: contracts the rows.
  assert flops['gemm_fusion.3'] == 2 * 64 * 256 * 512    # Triton: the dot in its computation.
  scores = 4 * 8 * 300 * 300
  assert flops['custom-call.4'] == 2 * scores * (64 + 64)          # QK^T and PV.
  assert flops['custom-call.5'] == 2 * scores * (3 * 64 + 2 * 64)  # Five products backward.
  assert {'while.1', 'add.2', 'loop_add_fusion'}.isdisjoint(flops)
  unreadable = GPU_PROGRAM.replace('"lhs_contracting_dimensions":["0"]', '"lhs_contracting_dimensions":["7"]')
  with pytest.raises(ValueError, match="cannot read the shapes of GEMM 'custom-call.2'"):
    profiling.instruction_flops(unreadable)
  no_scores = GPU_PROGRAM.replace('"intermediate_tensor_shape":{"element_type":"BF16","dimensions"', '"x":{"y"')
  with pytest.raises(ValueError, match="fused attention 'custom-call.4'"):
    profiling.instruction_flops(no_scores)


def test_loop_bodies_and_branches_are_the_repeated_instructions():
  text = GPU_PROGRAM.replace(
      '  ROOT %add.2', '  %conditional.1 = f32[2]{0} conditional(%p, %x, %x), '
      'branch_computations={%triton_gemm, %cond}\n  ROOT %add.2')
  assert profiling.repeated_instructions(GPU_PROGRAM) == {'b.0', 'loop_add_fusion', 'c.0',
                                                          'compare.1'}
  assert profiling.repeated_instructions(text) == {
      'b.0', 'loop_add_fusion', 'c.0', 'compare.1', 't.0', 't.1', 'dot.7'}


def _write_trace(directory, planes: str):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'host.xplane.pb').write_bytes(
      jax.profiler.ProfileData.text_proto_to_serialized_xspace(planes))


def _events(line_name: str, events: list[tuple[str, int, dict[str, str]]]) -> str:
  """A text-proto XPlane line: events (kernel name, duration in µs, {stat: value})."""
  lines = [f'lines {{ id: 1 name: "{line_name}"']
  for i, (name, micros, stats) in enumerate(events):
    stat = ' '.join(f'stats {{ metadata_id: {["hlo_op", "hlo_module"].index(k) + 1} '
                    f'str_value: "{v}" }}' for k, v in stats.items())
    lines.append(f'  events {{ metadata_id: {100 + i} offset_ps: {i * 10**9} '
                 f'duration_ps: {micros * 10**6} {stat} }}')
  lines.append('}')
  lines += [f'event_metadata {{ key: {100 + i} value {{ id: {100 + i} name: "{name}" }} }}'
            for i, (name, _, _) in enumerate(events)]
  lines += ['stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }',
            'stat_metadata { key: 2 value { id: 2 name: "hlo_module" } }']
  return '\n'.join(lines)


def test_a_gpu_trace_is_read_from_its_kernels_hlo_op_statistics(tmp_path):
  # Two calls. Each ran the cuBLAS GEMM as two kernels (split K), the fused attention, and a
  # loop whose body ran three times; a kernel of another program and the host's launch events
  # must not count.
  op = lambda name, module='jit_step': {'hlo_op': name, 'hlo_module': module}
  kernels = []
  for _ in range(2):
    kernels += [('sm90_xmma_gemm_f32f32_splitk', 30, op('custom-call.1')),
                ('splitKreduce_kernel', 2, op('custom-call.1')),
                ('cudnn_generated_fort_native_sdpa', 40, op('custom-call.4')),
                ('triton_gemm_fusion', 8, op('gemm_fusion.3')),
                ('other_program_kernel', 500, op('custom-call.1', 'jit_other'))]
    kernels += [('loop_add_fusion', 1, op('loop_add_fusion'))] * 3
  host = _events('tf_pjrt_thread', [('custom-call.1', 1000, {})])
  _write_trace(tmp_path, f'planes {{ id: 1 name: "/device:GPU:0"\n'
                         f'{_events("Stream #7(Compute)", kernels)} }}\n'
                         f'planes {{ id: 2 name: "/host:CPU"\n{host} }}')
  profile = profiling.summarize(GPU_PROGRAM, tmp_path, calls=2)
  assert profile['op_seconds_per_call'] == pytest.approx((30 + 2 + 40 + 8 + 3) * 1e-6)
  assert profile['components']['feed-forward'] == pytest.approx(32e-6)
  assert profile['components']['attention'] == pytest.approx(40e-6)
  assert profile['components']['optimizer'] == pytest.approx(3e-6)
  flops = profile['flops_per_call']
  assert flops['feed-forward'] == 2 * 64 * 512 * 512  # Once per call, not once per kernel.
  assert flops['attention'] == 2 * (4 * 8 * 300 * 300) * 128
  assert flops['interaction graph'] == 2 * 64 * 256 * 512
  assert profile['top_ops'][0]['name'] == 'custom-call.4'
  line = profiling.format_components('gpu', profile)
  assert f'feed-forward 39% ({2 * 64 * 512 * 512 / 32e-6 / 1e9:.3g} GFLOP/s)' in line

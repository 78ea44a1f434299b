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

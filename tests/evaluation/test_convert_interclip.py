"""Converting InterCLIP's PyTorch weights: parity with a PyTorch twin of the official model.

The PyTorch modules below are written here with the official state-dict names (tr3e/InterGen
``datasets/evaluator_models.py`` and ``models/nets.py``) at tiny sizes; ``torch`` is optional.
Without it, the mapping and the file formats are still tested on synthetic state dicts.
"""

import functools
import json
import math
import struct

import jax
import numpy as np
import pytest

from finedual_jax.evaluation import convert_interclip as conv
from finedual_jax.evaluation import evaluator as ev

B, T, CONTEXT = 3, 10, 16
LENGTHS = [10, 6, 2]
SIZES = dict(feature_dim=262, motion_width=32, motion_layers=2, motion_heads=4, motion_ff_dim=48,
             max_positions=200, vocab_size=64, text_width=24, text_layers=2, text_heads=4,
             text_ff_dim=40, context_length=CONTEXT, embed_dim=16)


@pytest.fixture(scope='module')
def torch():
  return pytest.importorskip('torch', reason='the parity tests need PyTorch (pip install '
                             'torch==2.13.0); the rest of this file runs without it',
                             exc_type=ImportError)


def _torch_interclip(torch, s):
  """A PyTorch InterCLIP with the official module names and sizes ``s``, random weights."""
  nn = torch.nn

  def encoder(width, heads, ff_dim, layers):
    layer = nn.TransformerEncoderLayer(d_model=width, nhead=heads, dim_feedforward=ff_dim,
                                       dropout=0.1, activation='gelu', batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=layers)

  class PositionalEncoding(nn.Module):

    def __init__(self, width, max_len):
      super().__init__()
      position = torch.arange(max_len, dtype=torch.float32)[:, None]
      freqs = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
      pe = torch.zeros(max_len, width)
      pe[:, 0::2], pe[:, 1::2] = torch.sin(position * freqs), torch.cos(position * freqs)
      self.register_buffer('pe', pe)
      self.dropout = nn.Dropout(0.1)

    def forward(self, x):
      return self.dropout(x + self.pe[None, :x.shape[1]])

  class MotionEncoder(nn.Module):

    def __init__(self):
      super().__init__()
      w = s['motion_width']
      self.query_token = nn.Parameter(torch.randn(1, w))
      self.embed_motion = nn.Linear(2 * (s['feature_dim'] - 4), w)
      self.sequence_pos_encoder = PositionalEncoding(w, s['max_positions'])
      self.transformer = encoder(w, s['motion_heads'], s['motion_ff_dim'], s['motion_layers'])
      self.out_ln = nn.LayerNorm(w)
      self.out = nn.Linear(w, s['embed_dim'])

    def forward(self, motions, mask):  # motions: [B, T, 2 * 262] as InterGen concatenates them.
      b, t, _ = motions.shape
      x = self.embed_motion(motions.reshape(b, t, 2, -1)[..., :-4].reshape(b, t, -1))
      h = torch.cat([self.query_token.expand(b, -1)[:, None], x], dim=1)
      valid = torch.cat([torch.ones(b, 1, dtype=torch.bool), mask > 0.5], dim=1)
      h = self.transformer(self.sequence_pos_encoder(h), src_key_padding_mask=~valid)
      return self.out(self.out_ln(h)[:, 0])

  class InterCLIP(nn.Module):

    def __init__(self):
      super().__init__()
      self.motion_encoder = MotionEncoder()
      self.token_embedding = nn.Embedding(s['vocab_size'], s['text_width'])
      self.positional_embedding = nn.Parameter(torch.randn(s['context_length'], s['text_width']))
      self.latent_scale = nn.Parameter(torch.Tensor([1]))
      self.textTransEncoder = encoder(s['text_width'], s['text_heads'], s['text_ff_dim'],
                                      s['text_layers'])
      self.text_ln = nn.LayerNorm(s['text_width'])
      self.out = nn.Linear(s['text_width'], s['embed_dim'])

    def encode_motion(self, motions, mask):
      emb = self.motion_encoder(motions, mask)
      return emb / emb.norm(dim=-1, keepdim=True) * self.latent_scale

    def encode_text(self, tokens):
      x = self.token_embedding(tokens) + self.positional_embedding
      x = self.text_ln(self.textTransEncoder(x))
      emb = self.out(x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)])
      return emb / emb.norm(dim=-1, keepdim=True) * self.latent_scale

  torch.manual_seed(0)
  model = InterCLIP()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if 'norm' not in name and '_ln' not in name else 0.1)
              + (1.0 if name.endswith(('norm1.weight', 'norm2.weight', 'ln.weight')) else 0.0))
    model.latent_scale.fill_(1.7)
  return model.eval()


def _inputs():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(B, T, 2, 262)).astype(np.float32)
  mask = (np.arange(T)[None] < np.array(LENGTHS)[:, None]).astype(np.float32)
  tokens = np.zeros((B, CONTEXT), np.int32)
  for i, n in enumerate([14, 6, 0]):  # Start 62, ids, end 63 (the largest id, as in CLIP).
    tokens[i, :n + 2] = [62] + list(rng.integers(0, 62, n)) + [63]
  return features, mask, tokens


def _flax_embeddings(state):
  config = conv.infer_config(state, motion_heads=4, text_heads=4)
  params = conv.convert_state_dict(state, config)
  motion, text = _jitted_apply(tuple(sorted(config.items())))({'params': params}, *_inputs())
  return np.asarray(motion), np.asarray(text)


@functools.cache
def _jitted_apply(config_items):
  return jax.jit(ev.InterCLIP(**dict(config_items)).apply)


def _write_safetensors(path, tensors):
  """The documented layout: u64 LE header size, JSON header, then the raw little-endian data."""
  header, chunks, offset = {'__metadata__': {'format': 'pt'}}, [], 0
  for name, array in tensors.items():
    raw = np.ascontiguousarray(array, '<f4').tobytes()
    header[name] = {'dtype': 'F32', 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  encoded = json.dumps(header).encode()
  encoded += b' ' * (-len(encoded) % 8)
  path.write_bytes(struct.pack('<Q', len(encoded)) + encoded + b''.join(chunks))


class _LightningHparams:  # Stands for a config object pickled into Lightning's checkpoint.

  def __init__(self):
    self.LATENT_DIM, self.name = 32, b'interclip'


@pytest.fixture(scope='module')
def reference(torch, tmp_path_factory):
  """(torch model, its embeddings on ``_inputs()``, a Lightning-like .ckpt of it)."""
  model = _torch_interclip(torch, SIZES)
  features, mask, tokens = _inputs()
  with torch.no_grad():
    motion = model.encode_motion(torch.from_numpy(features.reshape(B, T, -1)),
                                 torch.from_numpy(mask)).numpy()
    text = model.encode_text(torch.from_numpy(tokens).long()).numpy()
  trained = _torch_interclip(torch, SIZES)  # Optimizer state: tensors the reader must skip.
  optimizer = torch.optim.AdamW(trained.parameters())
  trained.encode_text(torch.from_numpy(tokens).long()).sum().backward()
  optimizer.step()
  path = tmp_path_factory.mktemp('ckpt') / 'interclip.ckpt'
  shared = torch.arange(10, dtype=torch.bfloat16)
  torch.save({'epoch': 3, 'global_step': 120, 'pytorch-lightning_version': '2.1.0',
              'state_dict': {f'model.{k}': v for k, v in model.state_dict().items()},
              'optimizer_states': [optimizer.state_dict()],
              'hyper_parameters': {'cfg': _LightningHparams()},
              'callbacks': {'view': shared[2:5], 'base': shared}}, path)
  return model, motion, text, path


@pytest.mark.filterwarnings('ignore:The PyTorch API of nested tensors')
def test_parity_with_pytorch_lightning_ckpt(reference):
  _, motion, text, path = reference
  state = conv.load_torch_state_dict(path)
  assert not any(k.startswith('model.') for k in state)
  flax_motion, flax_text = _flax_embeddings(state)
  np.testing.assert_allclose(flax_motion, motion, atol=1e-5)
  np.testing.assert_allclose(flax_text, text, atol=1e-5)
  assert not np.allclose(motion[0], motion[1])  # The batch holds different lengths.


def test_parity_other_formats(reference, torch, tmp_path):
  model, motion, text, path = reference
  state = conv.load_torch_state_dict(path)
  _write_safetensors(tmp_path / 'w.safetensors', state)
  torch.save(model.state_dict(), tmp_path / 'plain.pt')  # Not wrapped, no prefix.
  torch.save(model.state_dict(), tmp_path / 'legacy.pt', _use_new_zipfile_serialization=False)
  for name in ('w.safetensors', 'legacy.pt'):
    flax_motion, flax_text = _flax_embeddings(conv.load_torch_state_dict(tmp_path / name))
    np.testing.assert_allclose(flax_motion, motion, atol=1e-5)
    np.testing.assert_allclose(flax_text, text, atol=1e-5)
  plain = conv.load_torch_state_dict(tmp_path / 'plain.pt')
  assert sorted(plain) == sorted(state)


def test_reader_matches_torch_load(reference, torch):
  _, _, _, path = reference
  ours = conv.load_torch_state_dict(path)
  theirs = torch.load(path, weights_only=False)['state_dict']
  assert sorted(ours) == sorted(k[len('model.'):] for k in theirs)
  for key, value in theirs.items():
    np.testing.assert_array_equal(ours[key[len('model.'):]], value.numpy())


def _synthetic_state(sizes=SIZES, seed=0):
  rng = np.random.default_rng(seed)
  config = conv.infer_config({}, **sizes)
  state = {key: rng.normal(size=shape).astype(np.float32)
           for key, shape, _, _ in conv.parameter_map(config)}
  state[conv.PE_BUFFER] = ev.positional_encoding(sizes['max_positions'], sizes['motion_width'])
  return state


def test_mapping_layout_without_torch():
  state = _synthetic_state()
  config = conv.infer_config(state, motion_heads=4, text_heads=4)
  assert config['feature_dim'] == 262 and config['end_token'] == 63
  assert config['motion_layers'] == 2 and config['max_positions'] == 200
  params = conv.convert_state_dict(state, config)
  attn = params['motion_encoder']['transformer']['layers_1']['self_attn']
  torch_attn = 'motion_encoder.transformer.layers.1.self_attn.'
  w = state[torch_attn + 'in_proj_weight']
  np.testing.assert_array_equal(attn['key']['kernel'].reshape(32, 32), w[32:64].T)
  np.testing.assert_array_equal(attn['value']['bias'].reshape(32),
                                state[torch_attn + 'in_proj_bias'][64:])
  np.testing.assert_array_equal(attn['out']['kernel'].reshape(32, 32),
                                state[torch_attn + 'out_proj.weight'].T)
  np.testing.assert_array_equal(params['text_encoder']['text_ln']['scale'], state['text_ln.weight'])
  np.testing.assert_array_equal(params['text_encoder']['out']['kernel'], state['out.weight'].T)


def test_errors_name_the_keys():
  state = _synthetic_state()
  config = conv.infer_config(state, motion_heads=4, text_heads=4)
  broken = dict(state)
  del broken['text_ln.bias']
  broken['extra.weight'] = np.zeros(3, np.float32)
  broken['motion_encoder.out.bias'] = np.zeros(5, np.float32)
  with pytest.raises(ValueError) as info:
    conv.convert_state_dict(broken, config, source='my.ckpt')
  message = str(info.value)
  assert 'my.ckpt' in message and 'missing (1): text_ln.bias' in message
  assert 'unexpected (1): extra.weight' in message
  assert 'motion_encoder.out.bias: expected (16,), found (5,)' in message
  wrong_pe = dict(state)
  wrong_pe[conv.PE_BUFFER] = wrong_pe[conv.PE_BUFFER] + 1.0
  with pytest.raises(ValueError, match='sinusoid'):
    conv.convert_state_dict(wrong_pe, config)
  with pytest.raises(ValueError, match='divisible'):
    conv.convert_state_dict(state, dict(config, motion_heads=5))


def test_cli_writes_loadable_params(tmp_path, capsys):
  state = _synthetic_state()
  _write_safetensors(tmp_path / 'interclip.safetensors',
                     {f'model.{k}': v for k, v in state.items()})
  code = conv.main(['--checkpoint', str(tmp_path / 'interclip.safetensors'),
                    '--out', str(tmp_path / 'out'), '--motion-heads', '4', '--text-heads', '4'])
  assert code == 0 and 'parameters' in capsys.readouterr().out
  model, params = conv.load_converted(tmp_path / 'out')
  assert (model.motion_heads, model.vocab_size, model.end_token) == (4, 64, 63)
  expected = conv.convert_state_dict(state, ev.config_of(model))
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  # A wrong file is reported, not a traceback.
  assert conv.main(['--checkpoint', str(tmp_path / 'missing.ckpt'), '--out', str(tmp_path)]) == 1
  assert 'not found' in capsys.readouterr().err

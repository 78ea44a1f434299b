"""FineDual's interaction-aware graph network over the two persons' body parts (DESIGN §2.3).

The only module of the project that imports jraph. Per frame, one graph per PAIR: nodes are
the K part tokens of person 0 then the K of person 1; edges are the intra-person kinematic
edges (both directions, both persons) and all inter-person part pairs (both directions).
Inter-person edges carry the predicted part distance d̂ and are gated by
``sigmoid((D_K - d̂) / τ)``, so parts far apart stop exchanging messages.

Vectorisation: the topology is the same for every (pair, frame), so it is built once in NumPy
(``graph_topology``) and used as compile-time constants. All B * T graphs share it: the node
features are laid out node-major, [2K, B * T, H], and every message acts on the leading node /
edge axis and broadcasts over the frame axis — what ``vmap`` over graphs would do, without
offsets. ``message_passing='jraph'`` (the default) carries them in one ``jraph.GraphsTuple``
through jraph's gathers and ``segment_sum``; ``'dense'`` computes the same messages and sums
from static slices of the node terms (``_MessagePassingRound``).

Person symmetry: swapping the persons permutes the nodes (i <-> K + i); the edge set, the edge
types and the distances (edge "stream s part i -> partner part j" reads d̂[s][i, j]) map onto
themselves, and no weight depends on a node's person, so the outputs swap with the inputs.

jraph 0.0.6.dev0 is frozen since 2022: some helpers in ``jraph._src.utils`` (e.g.
``zero_out_padding``) call ``jax.tree_map``, which JAX removed. Only ``GraphsTuple``,
``GraphNetwork`` and ``segment_sum`` are used here; they go through ``jax.tree_util``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from finedual_jax.models import dense
from finedual_jax.motion import body_parts

INTRA, INTER = 0, 1  # edge types


class GraphTopology(NamedTuple):
  """Static edge lists of one pair-frame graph (nodes: person 0's K parts, then person 1's).

  Edges are ordered intra-person first, then inter-person.
  """
  senders: np.ndarray          # [E] int32 node index
  receivers: np.ndarray        # [E] int32 node index
  edge_type: np.ndarray        # [E] int32, INTRA or INTER
  distance_index: np.ndarray   # [E_inter] index into the [2, K, K] table (sender person, i, j)
  num_intra: int


@functools.lru_cache(maxsize=None)
def graph_topology(num_parts: int,
                   kinematic_edges: tuple[tuple[int, int], ...] = body_parts.KINEMATIC_EDGES,
                   ) -> GraphTopology:
  """The fixed edge lists of one pair-frame graph, built once per (K, kinematic edges).

  E = 2 persons * 2 directions * len(kinematic_edges) + 2 directions * K * K.
  """
  for i, j in kinematic_edges:
    if not (0 <= i < num_parts and 0 <= j < num_parts and i != j):
      raise ValueError(f'graph_topology: kinematic edge ({i}, {j}) is not a pair of distinct '
                       f'part indices in [0, {num_parts}); fix body_parts.KINEMATIC_EDGES or '
                       f'InteractionGraph.num_parts.')
  k = num_parts
  senders, receivers, distance_index = [], [], []
  for person in (0, 1):
    for i, j in kinematic_edges:
      senders += [person * k + i, person * k + j]
      receivers += [person * k + j, person * k + i]
  num_intra = len(senders)
  # Edge "part i of person p -> part j of the partner" reads d̂[p][i, j]; person 1's half
  # mirrors person 0's, so the person swap maps the edge list onto itself.
  for person in (0, 1):
    for i in range(k):
      for j in range(k):
        senders.append(person * k + i)
        receivers.append((1 - person) * k + j)
        distance_index.append(person * k * k + i * k + j)
  edge_type = [INTRA] * num_intra + [INTER] * (len(senders) - num_intra)
  arrays = [np.asarray(a, np.int32) for a in (senders, receivers, edge_type, distance_index)]
  for a in arrays:
    a.setflags(write=False)  # shared by every caller through the cache
  return GraphTopology(*arrays, num_intra=num_intra)


MESSAGE_PASSING = ('dense', 'jraph')


class _MessagePassingRound(nn.Module):
  """One round: gated messages MLP([x_s, x_r, e]) summed at receivers, residual node update.

  The message MLP is Dense -> gelu -> Dense. Both of its linear layers are moved off the edges,
  which are 6.6x more numerous than the nodes (E = 66 vs 2K = 10), without changing the function:
  the first layer on the concatenation [y_s, y_r, e] is a sum of per-input projections, whose
  node terms are computed per node; the last layer commutes with the gated sum,
  sum_e g_e (W h_e + b) = W (sum_e g_e h_e) + b sum_e g_e, so it is applied after aggregation.

  Two ways to send and sum the messages, the same function (a test compares them):
  ``'jraph'`` runs ``jraph.GraphNetwork`` on the edge lists (gathers at senders and receivers,
  ``segment_sum`` at receivers); ``'dense'`` uses that the topology is a compile-time constant:
  every edge is a static slice of its sender's and receiver's terms and every receiver's sum a
  chain of adds, so there is no gather and no scatter (the gathers' transposes), and XLA does
  not materialise the [E, N, h] edge tensors. At the ``bench`` shapes ([32, 300, 5, 128], two
  rounds) on a 2-core AMD EPYC (Zen 4), medians of 7 calls in separate runs: forward 178-210 ms
  against 224-237 ms for ``'jraph'``, forward and backward 699-711 ms against 811-932 ms. But
  its program is larger (per-edge element-wise ops), so it compiles slower: the FineDual
  ``bench`` step 37.5 against 34.9 s, the tiny model's one- and eight-device steps about 30 s
  more in ``tests/test_parallel.py``; and in the whole ``bench`` step the graph's share of op
  time stayed at 9%. ``'jraph'`` therefore stays the default; ``'dense'`` is there for long
  runs on a CPU.
  """
  hidden: int
  distance_feature: bool  # the edges carry a distance (InteractionGraph.gated)
  num_parts: int
  message_passing: str  # InteractionGraph.message_passing

  @nn.compact
  def __call__(self, nodes: jax.Array, type_embedding: jax.Array,
               distance: jax.Array | None, gate: jax.Array | None) -> jax.Array:
    """nodes: [2K, N, H]; type_embedding: [2, e] (INTRA, INTER); distance, gate: [2, K, K, N],
    entry [p, i, j] for the edge from part i of person p to part j of the partner (None when
    ungated: every gate 1, no distance feature). Returns the updated nodes, [2K, N, H]."""
    x = nodes
    width = x.shape[-1]
    y = nn.LayerNorm(name='ln')(x)
    send = dense.Dense(self.hidden, name='msg_sender')(y)
    recv = dense.Dense(self.hidden, use_bias=False, name='msg_receiver')(y)
    type_term = dense.Dense(self.hidden, use_bias=False, name='msg_edge_type')(type_embedding)
    # A [1, hidden] Dense on the scalar distance, written as a broadcast product: XLA's CPU
    # matmul with a contraction of size 1 took about twice as long.
    distance_kernel = None
    if self.distance_feature:
      distance_kernel = self.param('msg_edge_distance', nn.initializers.lecun_normal(),
                                   (1, self.hidden))[0]
    msg_out = dense.Dense(width, use_bias=False, name='msg_out')
    msg_out_bias = self.param('msg_out_bias', nn.initializers.zeros, (width,))
    update_hidden = dense.Dense(self.hidden, name='update_hidden')
    update_out = dense.Dense(width, name='update_out')

    messages = {'dense': _dense_messages, 'jraph': _jraph_messages}[self.message_passing]
    # Sums over each node's incoming edges of gate * gelu(pre-activation), and of the gates.
    hidden_sum, gate_sum = messages(send, recv, type_term, distance_kernel, distance, gate,
                                    self.num_parts)
    aggregated = msg_out(hidden_sum) + gate_sum * msg_out_bias
    h = jnp.concatenate([y, aggregated], axis=-1)
    return x + update_out(nn.gelu(update_hidden(h)))


def _dense_messages(send, recv, type_term, distance_kernel, distance, gate, k):
  """Fixed topology, no gathers or scatters. send, recv: [2K, N, h]; type_term: [2, h].

  A [2, K, K, N, h] broadcast of the inter-person edges summed over the senders was slower on
  XLA:CPU (its reductions over a middle axis and their transposes went to YNNPACK, ~0.5 GB/s),
  and so was one stacked [E, N, h] tensor (its concatenations).
  """
  topology = graph_topology(k)
  n, hidden = send.shape[1:]
  # Per-node arrays through split, whose transpose is a concatenation (indexing send[s] would
  # transpose to one full-size pad per use). The edge type's term goes into the receivers'
  # terms, so its gradient is one sum per node set instead of one per edge.
  send = _unstack(send)
  recv = {INTRA: _unstack(recv + type_term[INTRA]), INTER: _unstack(recv + type_term[INTER])}
  if distance is not None:
    distance, gate = (_unstack(a.reshape(2 * k * k, n, 1)) for a in (distance, gate))
  hidden_sum = [jnp.zeros((n, hidden), send[0].dtype)] * (2 * k)
  gate_sum = [jnp.zeros((n, 1), send[0].dtype)] * (2 * k)
  for e, (s, r, kind) in enumerate(zip(topology.senders, topology.receivers, topology.edge_type)):
    pre = send[s] + recv[kind][r]
    edge_gate = 1.0
    if kind == INTER and distance is not None:  # Intra edges: distance 0, gate 1.
      index = topology.distance_index[e - topology.num_intra]
      pre = pre + distance[index] * distance_kernel
      edge_gate = gate[index]
    hidden_sum[r] = hidden_sum[r] + edge_gate * nn.gelu(pre)
    gate_sum[r] = gate_sum[r] + edge_gate
  return jnp.stack(hidden_sum), jnp.stack(gate_sum)


def _unstack(x: jax.Array) -> list[jax.Array]:
  return [part[0] for part in jnp.split(x, x.shape[0])]


def _jraph_messages(send, recv, type_term, distance_kernel, distance, gate, k):
  """The edge lists through jraph.GraphNetwork: gathers, then segment sums at receivers."""
  topology = graph_topology(k)
  n = send.shape[1]
  num_edges, num_intra = len(topology.senders), topology.num_intra
  edges: dict[str, Any] = {'type': type_term[topology.edge_type][:, None, :]}
  if distance is None:
    edges['gate'] = jnp.ones((num_edges, 1, 1), send.dtype)
  else:
    inter = distance.reshape(2 * k * k, n)[topology.distance_index]  # [E_inter, N]
    inter_gate = gate.reshape(2 * k * k, n)[topology.distance_index]
    # Intra edges have no distance (feature 0; the type embedding tells them apart), gate 1.
    edges['distance'] = jnp.concatenate(
        [jnp.zeros((num_intra, n), inter.dtype), inter])[..., None]
    edges['gate'] = jnp.concatenate(
        [jnp.ones((num_intra, n), inter_gate.dtype), inter_gate])[..., None]

  def update_edge_fn(edges, sent, received, _):
    pre = sent['send'] + received['recv'] + edges['type']
    if distance_kernel is not None:
      pre = pre + edges['distance'] * distance_kernel
    gate = jnp.broadcast_to(edges['gate'], pre.shape[:-1] + (1,))
    return {'hidden': gate * nn.gelu(pre), 'gate': gate}

  def update_node_fn(_, __, received, ___):
    return received  # the segment sums over each node's incoming edges

  graph = jraph.GraphsTuple(
      nodes={'send': send, 'recv': recv}, edges=edges, senders=topology.senders,
      receivers=topology.receivers, globals=None, n_node=np.array([2 * k]),
      n_edge=np.array([num_edges]))
  sums = jraph.GraphNetwork(update_edge_fn, update_node_fn)(graph).nodes
  return sums['hidden'], jnp.broadcast_to(sums['gate'], sums['hidden'].shape[:-1] + (1,))


class InteractionGraph(nn.Module):
  """Exchanges information between the two persons' body parts, gated by predicted distance.

  ``gated=False`` is the "no distance predictor" ablation: inter-person edges ungated and no
  distance edge feature (``predicted_distances`` is ignored and may be None).
  Parameters: ``edge_type_embedding`` [2, hidden] (intra, inter) shared by the rounds, and one
  ``round_{r}`` of MLPs per round.
  """
  hidden: int
  num_parts: int = body_parts.NUM_PARTS
  rounds: int = 2
  distance_threshold: float = 1.0  # D_K, metres (hyp.: the paper's "DK")
  temperature: float = 0.1         # τ, metres: width of the gate's transition
  gated: bool = True
  message_passing: str = 'jraph'   # or 'dense': see _MessagePassingRound

  @nn.compact
  def __call__(self, part_tokens: jax.Array,
               predicted_distances: jax.Array | None = None) -> jax.Array:
    """part_tokens: [2B, T, K, H] streams stacked (b0p0, b0p1, b1p0, ...);
    predicted_distances: [2B, T, K, K] (``DistancePredictor`` output) or None if not gated.

    Returns [2B, T, K, H]: each stream's own K part nodes after message passing.
    """
    streams, frames, k, width = part_tokens.shape
    if streams % 2 or k != self.num_parts:
      raise ValueError(f'InteractionGraph: part_tokens must be [2B, T, K={self.num_parts}, H] '
                       f'with 2 streams per pair; got {part_tokens.shape}.')
    if self.message_passing not in MESSAGE_PASSING:
      raise ValueError(f'InteractionGraph: message_passing must be one of {MESSAGE_PASSING}, '
                       f'got {self.message_passing!r}.')
    if self.gated:
      expected = (streams, frames, k, k)
      if predicted_distances is None or predicted_distances.shape != expected:
        found = None if predicted_distances is None else predicted_distances.shape
        raise ValueError(f'InteractionGraph(gated=True) needs predicted_distances of shape '
                         f'{expected}, got {found}; pass the DistancePredictor output or set '
                         f'gated=False for the ablation.')
    pairs, n = streams // 2, streams // 2 * frames

    # Node-major: [B, 2, T, K, H] -> [2 persons, K, B, T, H] -> [2K, N, H].
    nodes = part_tokens.reshape(pairs, 2, frames, k, width).transpose(1, 3, 0, 2, 4)
    nodes = nodes.reshape(2 * k, n, width)

    type_embedding = self.param('edge_type_embedding', nn.initializers.normal(1.0),
                                (2, self.hidden))
    distance = gate = None
    if self.gated:
      # [p, i, j, N]: the edge from part i of person p to part j of the partner reads d̂[p][i, j].
      distance = predicted_distances.reshape(pairs, 2, frames, k, k).transpose(1, 3, 4, 0, 2)
      distance = distance.reshape(2, k, k, n)
      gate = jax.nn.sigmoid((self.distance_threshold - distance) / self.temperature)
    for r in range(self.rounds):
      nodes = _MessagePassingRound(self.hidden, self.gated, k, self.message_passing,
                                   name=f'round_{r}')(nodes, type_embedding, distance, gate)

    out = nodes.reshape(2, k, pairs, frames, width).transpose(2, 0, 3, 1, 4)
    return out.reshape(streams, frames, k, width)


def dense_reference(module: InteractionGraph, params: Any, part_tokens: Any,
                    predicted_distances: Any | None = None) -> np.ndarray:
  """NumPy (float64) re-implementation of ``InteractionGraph`` with dense adjacency matrices.

  For tests: same hyperparameters (``module``'s fields) and parameters (``params``, the
  module's Flax params dict), but the graph is a [2K, 2K] adjacency / edge-type / distance
  matrix per pair-frame instead of jraph edge lists. Returns [2B, T, K, H].
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  tokens = np.asarray(part_tokens, np.float64)
  streams, frames, k, width = tokens.shape
  # Per pair-frame nodes [person 0's parts, person 1's parts]: [N, 2K, H].
  x = np.concatenate([tokens[0::2], tokens[1::2]], axis=2).reshape(-1, 2 * k, width)

  # [receiver, sender] matrices.
  adjacency = np.zeros((2 * k, 2 * k))
  edge_type = np.full((2 * k, 2 * k), INTRA)
  for person in (0, 1):
    for i, j in body_parts.KINEMATIC_EDGES:
      adjacency[person * k + j, person * k + i] = adjacency[person * k + i, person * k + j] = 1
  adjacency[:k, k:] = adjacency[k:, :k] = 1
  edge_type[:k, k:] = edge_type[k:, :k] = INTER
  inter = edge_type == INTER

  distance = np.zeros((x.shape[0], 2 * k, 2 * k))
  gate = np.broadcast_to(adjacency, distance.shape).copy()
  if module.gated:
    d = np.asarray(predicted_distances, np.float64)
    d0, d1 = d[0::2].reshape(-1, k, k), d[1::2].reshape(-1, k, k)
    # Sender part i of person 0 -> receiver part j of person 1 reads d0[i, j], and vice versa.
    distance[:, k:, :k] = d0.swapaxes(-1, -2)
    distance[:, :k, k:] = d1.swapaxes(-1, -2)
    sig = 1.0 / (1.0 + np.exp(-(module.distance_threshold - distance) / module.temperature))
    gate = np.where(inter, sig, 1.0) * adjacency

  def gelu(a):  # flax.linen.gelu's default (tanh) approximation
    return 0.5 * a * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (a + 0.044715 * a ** 3)))

  type_embedding = p['edge_type_embedding'][edge_type]  # [2K, 2K, hidden]
  for r in range(module.rounds):
    q = p[f'round_{r}']
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + 1e-6) * q['ln']['scale'] + q['ln']['bias']
    send = y @ q['msg_sender']['kernel'] + q['msg_sender']['bias']     # [N, 2K(s), h]
    recv = y @ q['msg_receiver']['kernel']                             # [N, 2K(r), h]
    pre = send[:, None, :, :] + recv[:, :, None, :] + type_embedding @ q['msg_edge_type']['kernel']
    if module.gated:
      pre = pre + distance[..., None] * q['msg_edge_distance'][0]
    message = gelu(pre) @ q['msg_out']['kernel'] + q['msg_out_bias']  # [N, r, s, H]
    aggregated = np.einsum('nrs,nrsh->nrh', gate, message)
    h = np.concatenate([y, aggregated], axis=-1)
    x = x + (gelu(h @ q['update_hidden']['kernel'] + q['update_hidden']['bias'])
             @ q['update_out']['kernel'] + q['update_out']['bias'])

  out = x.reshape(streams // 2, frames, 2, k, width).transpose(0, 2, 1, 3, 4)
  return out.reshape(streams, frames, k, width)

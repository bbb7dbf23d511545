"""Dense-layer structure found automatically in any ``apply(params, x)``.

The structured Gram and K-FAC need, for every dense layer, its inputs ``A``
and its backpropagated pre-activation gradients ``B`` (``LayerFactors``,
``ngdjax._src.models``). The library's own models provide them; for any other
model (flax, equinox, plain pytrees) this module finds them in the traced
computation:

1. ``apply`` is traced once on one example (``x`` of shape ``(1, ...)``,
   shapes only) with ``jax.make_jaxpr``; calls to ``jit`` are inlined.
2. A *dense layer* is a ``dot_general`` without batch dimensions that
   contracts an input-dependent activation ``h`` with a parameter leaf ``W``,
   where ``W`` reaches the ``dot_general`` only through layout operations
   (transpose, reshape, unit-dimension broadcasts, dtype conversion) and
   constant scalar factors, and is used nowhere else. Per example, all free
   dimensions of ``h`` must have size one (one output row per example: a
   token or pixel axis shares the weight and is not a rank-one layer). A
   *bias* is a leaf that reaches, the same way, an ``add`` with the layer
   output (possibly after layout operations, e.g. equinox's transpose), the
   output being used nowhere else.
3. The model is then evaluated by an interpreter of its jaxpr on the whole
   batch (a second trace, with the same operations, in which each layer's
   activation and output have one example axis; otherwise the one-example
   trace ``vmap``-ed over examples), which records each layer's ``h`` and
   adds a zero perturbation to each layer output; one VJP per output with
   respect to the perturbations gives ``B`` for every layer at once, as
   ``models.mlp`` does. No per-example weight gradient is formed, and the
   operations are those of ``apply`` itself, so XLA shares the forward pass
   with an optimizer's own (NGD and K-FAC steps on a flax MLP compile to
   the flops of the same steps on ``ngdjax.mlp``).

Every other parameter leaf (layer-norm scales, embeddings, convolution
kernels, weights used twice, biases that do not fit the pattern) is on the
*generic path*: its per-example Jacobian is taken exactly (``vmap`` of
``jacrev`` over those leaves only) and its Gram ``J_g J_g^T`` is added. The
sum is therefore exactly ``J J^T`` for every model that satisfies the
library's assumption that example ``i``'s outputs depend on ``x[i]`` alone.

``describe_structure`` reports what was found, so a user can see why a model
is fast (everything matched) or slow (large leaves on the generic path).

Example:

  >>> import jax, jax.numpy as jnp, ngdjax
  >>> def apply(params, x):
  ...   h = jnp.tanh(x @ params["w1"] + params["b1"])
  ...   return h @ params["w2"]
  >>> params = {"w1": jnp.ones((3, 8)), "b1": jnp.zeros(8),
  ...           "w2": jnp.ones((8, 2))}
  >>> report = ngdjax.describe_structure(apply, params, jnp.ones((5, 3)))
  >>> [(layer.weight, layer.bias) for layer in report.layers]
  [("['w1']", "['b1']"), ("['w2']", None)]
  >>> report.generic
  ()
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from ngdjax._src import checks
from ngdjax._src.linalg import as_columns
from ngdjax._src.models import LayerFactors, Model
from ngdjax._src.typing import Array, Params

# Primitives that only move or relabel entries: a chain of them from a leaf
# is a permutation of its entries (unit broadcasts are checked separately).
LAYOUT_PRIMITIVES = frozenset({
    "transpose", "reshape", "squeeze", "expand_dims", "broadcast_in_dim",
    "convert_element_type", "copy", "copy_p",
})
# Call primitives whose body is inlined, so layers inside jitted helpers are
# found too.
INLINED_PRIMITIVES = frozenset({"pjit", "jit", "closed_call", "core_call"})
SCALE_PRIMITIVES = frozenset({"mul", "div"})


# --------------------------------------------------------------------------
# A flat graph of the traced computation.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Node:
  eqn: Any  # the JaxprEqn
  ins: tuple  # per operand: ("v", value id) or ("c", literal value)
  outs: tuple[int, ...]  # value ids


@dataclasses.dataclass
class _Graph:
  nodes: list[_Node]
  consts: dict[int, Any]  # value id -> constant
  in_ids: list[int]  # leaves, then x
  outs: list[tuple]  # refs of the outputs
  avals: dict[int, Any]  # value id -> abstract value


def _flatten_jaxpr(closed) -> _Graph:
  """Flattens a ClosedJaxpr into nodes, inlining ``jit`` calls."""
  nodes, consts, avals = [], {}, {}
  counter = itertools.count()

  def run(jaxpr, const_vals, in_refs):
    env = {}
    for var, value in zip(jaxpr.constvars, const_vals, strict=True):
      i = next(counter)
      consts[i] = value
      avals[i] = var.aval
      env[var] = ("v", i)
    for var, ref in zip(jaxpr.invars, in_refs, strict=True):
      env[var] = ref

    def read(atom):
      if isinstance(atom, jex_core.Literal):
        return ("c", atom.val)
      return env[atom]

    for eqn in jaxpr.eqns:
      ins = tuple(read(a) for a in eqn.invars)
      inner = eqn.params.get("jaxpr")
      if eqn.primitive.name in INLINED_PRIMITIVES and inner is not None:
        if isinstance(inner, jex_core.ClosedJaxpr):
          outs = run(inner.jaxpr, inner.consts, ins)
        else:
          outs = run(inner, (), ins)
        for var, ref in zip(eqn.outvars, outs, strict=True):
          env[var] = ref
        continue
      out_ids = tuple(next(counter) for _ in eqn.outvars)
      for var, i in zip(eqn.outvars, out_ids, strict=True):
        env[var] = ("v", i)
        avals[i] = var.aval
      nodes.append(_Node(eqn, ins, out_ids))
    return [read(a) for a in jaxpr.outvars]

  in_ids = [next(counter) for _ in closed.jaxpr.invars]
  for var, i in zip(closed.jaxpr.invars, in_ids, strict=True):
    avals[i] = var.aval
  outs = run(closed.jaxpr, closed.consts, [("v", i) for i in in_ids])
  return _Graph(nodes, consts, in_ids, outs, avals)


def _bind(eqn, *args):
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older jax: (subfuns, params)
    subfuns, params = params
  out = eqn.primitive.bind(*subfuns, *args, **params)
  return out if eqn.primitive.multiple_results else [out]


def _evaluate(graph: _Graph, inputs, taps: dict, records: Sequence[int]):
  """Runs the graph; adds ``taps[id]`` to value ``id``; returns the outputs
  and the values of ``records``."""
  env = dict(graph.consts)
  env.update(zip(graph.in_ids, inputs, strict=True))

  def read(ref):
    return env[ref[1]] if ref[0] == "v" else ref[1]

  for node in graph.nodes:
    outs = _bind(node.eqn, *(read(r) for r in node.ins))
    for i, value in zip(node.outs, outs, strict=True):
      env[i] = value + taps[i] if i in taps else value
  return [read(r) for r in graph.outs], [env[i] for i in records]


# --------------------------------------------------------------------------
# Matching dense layers.
# --------------------------------------------------------------------------


class DenseLayerInfo(NamedTuple):
  """One matched dense layer, as reported by ``describe_structure``.

  Attributes:
    weight: path of the weight leaf (``jax.tree_util.keystr``).
    weight_shape: its shape.
    bias: path of the bias leaf, or ``None``.
    bias_shape: its shape, or ``None``.
    fan_in: ``a``, rows of the layer matrix ``M`` (inputs, plus one for the
      bias).
    fan_out: ``b``, columns of ``M`` (outputs).
  """

  weight: str
  weight_shape: tuple[int, ...]
  bias: str | None
  bias_shape: tuple[int, ...] | None
  fan_in: int
  fan_out: int


class GenericLeafInfo(NamedTuple):
  """A parameter leaf on the exact generic (per-example Jacobian) path."""

  path: str
  shape: tuple[int, ...]
  reason: str


class StructureReport(NamedTuple):
  """What ``describe_structure`` found.

  Attributes:
    layers: the matched dense layers, in the order of the computation.
    generic: parameter leaves on the generic path, with the reason.
  """

  layers: tuple[DenseLayerInfo, ...]
  generic: tuple[GenericLeafInfo, ...]

  def __str__(self) -> str:
    lines = [f"{len(self.layers)} dense layer(s) matched "
             "(structured: no per-example weight gradients):"]
    for lay in self.layers:
      bias = (f" + bias {lay.bias} {lay.bias_shape}" if lay.bias else "")
      lines.append(f"  {lay.weight} {lay.weight_shape}{bias} -> M "
                   f"({lay.fan_in}, {lay.fan_out})")
    size = sum(int(np.prod(g.shape)) for g in self.generic)
    lines.append(f"{len(self.generic)} leaf/leaves ({size} parameters) on the "
                 "generic path (exact per-example Jacobian):")
    for g in self.generic:
      lines.append(f"  {g.path} {g.shape}: {g.reason}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Scale:
  """A constant scalar factor met on a chain: ``value`` or ``1 / value``."""

  ref: tuple
  invert: bool


@dataclasses.dataclass(frozen=True)
class _Layer:
  dot: int  # node index of the dot_general
  weight_leaf: int
  weight_chain: tuple[_Node, ...]  # layout nodes from the leaf to W'
  weight_scales: tuple[_Scale, ...]
  w_pos: int  # operand position of W' in the dot_general
  h_ref: tuple  # the activation operand
  out_id: int  # z, where the perturbation is added
  bias_leaf: int | None
  bias_chain: tuple[_Node, ...]
  bias_scales: tuple[_Scale, ...]
  z_chain: tuple[_Node, ...]  # layout/scale nodes from z onwards
  fan_in: int  # K, without the bias
  fan_out: int  # F
  z_scales: tuple[_Scale, ...] = ()


def _is_unit_broadcast(node: _Node, avals) -> bool:
  """A broadcast_in_dim that only inserts unit dimensions (a reshape)."""
  (ref,) = node.ins[:1]
  shape_in = tuple(avals[ref[1]].shape) if ref[0] == "v" else ()
  shape_out = tuple(node.eqn.params["shape"])
  dims = tuple(int(d) for d in node.eqn.params["broadcast_dimensions"])
  if list(dims) != sorted(dims):
    return False
  if any(shape_out[d] != s for d, s in zip(dims, shape_in, strict=True)):
    return False
  return all(shape_out[k] == 1 for k in range(len(shape_out))
             if k not in dims)


class _Analysis:
  """Consumers, input dependence and constness of every value."""

  def __init__(self, graph: _Graph, n_leaves: int):
    self.graph = graph
    self.consumers: dict[int, list[tuple[int, int]]] = {}
    for k, node in enumerate(graph.nodes):
      for pos, ref in enumerate(node.ins):
        if ref[0] == "v":
          self.consumers.setdefault(ref[1], []).append((k, pos))
    for ref in graph.outs:
      if ref[0] == "v":
        self.consumers.setdefault(ref[1], []).append((-1, 0))
    self.producer = {i: k for k, node in enumerate(graph.nodes)
                     for i in node.outs}
    leaf_ids = set(graph.in_ids[:n_leaves])
    x_id = graph.in_ids[n_leaves]
    self.x_dep, self.param_dep = {x_id}, set(leaf_ids)
    for node in graph.nodes:
      ids = [r[1] for r in node.ins if r[0] == "v"]
      if any(i in self.x_dep for i in ids):
        self.x_dep.update(node.outs)
      if any(i in self.param_dep for i in ids):
        self.param_dep.update(node.outs)

  def only_consumer(self, value_id):
    uses = self.consumers.get(value_id, [])
    return uses[0] if len(uses) == 1 and uses[0][0] >= 0 else None

  def constant_scalar(self, ref):
    """A ref to a size-1 constant equal to ``ref``'s value, or None."""
    if ref[0] == "c":
      return ref if np.size(ref[1]) == 1 else None
    i = ref[1]
    if i in self.x_dep or i in self.param_dep:
      return None
    if int(np.prod(self.graph.avals[i].shape)) == 1:
      return ref
    k = self.producer.get(i)
    if k is not None:
      node = self.graph.nodes[k]
      if node.eqn.primitive.name in ("broadcast_in_dim",
                                     "convert_element_type"):
        return self.constant_scalar(node.ins[0])
    return None

  def follow(self, value_id, partial=False):
    """From a leaf, the layout/scale chain to its one non-layout consumer.

    Returns ``(chain, scales, end_value, (node index, operand))``, or None
    when a value on the way has several consumers (or is an output); with
    ``partial`` the chain up to there, with ``None`` as the consumer.
    """
    chain, scales, cur = [], [], value_id
    while True:
      use = self.only_consumer(cur)
      if use is None:
        return (tuple(chain), tuple(scales), cur, None) if partial else None
      k, pos = use
      node = self.graph.nodes[k]
      name = node.eqn.primitive.name
      if name in LAYOUT_PRIMITIVES and len(node.outs) == 1 and (
          name != "broadcast_in_dim" or _is_unit_broadcast(node,
                                                           self.graph.avals)):
        chain.append(node)
        cur = node.outs[0]
        continue
      if name in SCALE_PRIMITIVES and (name == "mul" or pos == 0):
        other = self.constant_scalar(node.ins[1 - pos])
        if other is not None and tuple(self.graph.avals[node.outs[0]].shape) \
            == tuple(self.graph.avals[cur].shape):
          scales.append(_Scale(other, invert=name == "div"))
          chain.append(node)
          cur = node.outs[0]
          continue
      return tuple(chain), tuple(scales), cur, (k, pos)


def _leaf_paths(params) -> list[str]:
  return [jax.tree_util.keystr(path)
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _match(graph: _Graph, n_leaves: int):
  """Dense layers and the reasons the other leaves were not matched."""
  an = _Analysis(graph, n_leaves)
  leaf_ids = graph.in_ids[:n_leaves]
  ends = {}  # leaf index -> follow() result
  for li, i in enumerate(leaf_ids):
    ends[li] = an.follow(i)
  layers, used, reasons = [], set(), {}
  for li, end in ends.items():
    if end is None:
      reasons[li] = "used more than once (or unused)"
      continue
    chain, scales, w_id, (k, pos) = end
    node = graph.nodes[k]
    if node.eqn.primitive.name == "add":
      reasons[li] = "added to something other than a dense-layer output"
      continue
    if node.eqn.primitive.name != "dot_general":
      reasons[li] = f"feeds {node.eqn.primitive.name}, not a dense layer"
      continue
    (lc, rc), (lb, rb) = node.eqn.params["dimension_numbers"]
    if lb or rb:
      reasons[li] = "dot_general with batch dimensions"
      continue
    h_ref = node.ins[1 - pos]
    if h_ref[0] != "v" or h_ref[1] not in an.x_dep:
      reasons[li] = "dot_general with an input-independent operand"
      continue
    h_shape = graph.avals[h_ref[1]].shape
    w_shape = graph.avals[w_id].shape
    h_contract = tuple(lc if pos == 1 else rc)
    w_contract = tuple(rc if pos == 1 else lc)
    h_free = [d for d in range(len(h_shape)) if d not in h_contract]
    if int(np.prod([h_shape[d] for d in h_free])) != 1:
      reasons[li] = ("shared over positions within an example (e.g. a token "
                     "or pixel axis)")
      continue
    fan_in = int(np.prod([w_shape[d] for d in w_contract]))
    fan_out = int(np.prod(w_shape)) // max(fan_in, 1)
    layer = _Layer(k, li, chain, scales, pos, h_ref, node.outs[0], None, (),
                   (), (), fan_in, fan_out)
    layers.append(layer)
    used.add(li)
  layers.sort(key=lambda lay: lay.dot)  # the order of the computation
  # Biases: a leaf whose chain ends in an add with a layer's output.
  by_add = {}
  for li, end in ends.items():
    if li in used or end is None:
      continue
    chain, scales, b_id, (k, pos) = end
    if graph.nodes[k].eqn.primitive.name == "add":
      by_add[(k, 1 - pos)] = (li, chain, scales, b_id)
  for idx, layer in enumerate(layers):
    # From the layer output z, layout operations and constant factors (the
    # NTK scale 1/sqrt(fan_in), equinox's transpose) up to the next real
    # operation: the factors are folded into the layer inputs, so that B is
    # the gradient with respect to the pre-activation the next operation
    # sees; if that operation adds a bias leaf, the bias joins the layer.
    chain, scales, cur, use = an.follow(layer.out_id, partial=True)
    layer = layers[idx] = dataclasses.replace(layer, z_chain=chain,
                                              z_scales=scales)
    if use is None:
      continue
    k, pos = use
    node = graph.nodes[k]
    if node.eqn.primitive.name == "add" and (k, pos) in by_add:
      li, b_chain, b_scales, b_id = by_add[(k, pos)]
      b_size = int(np.prod(graph.avals[graph.in_ids[li]].shape))
      if (b_size == layer.fan_out and tuple(graph.avals[b_id].shape)
          == tuple(graph.avals[cur].shape)):
        del by_add[(k, pos)]
        layers[idx] = dataclasses.replace(
            layer, bias_leaf=li, bias_chain=b_chain, bias_scales=b_scales)
        used.add(li)
        reasons.pop(li, None)
  for li in range(n_leaves):
    if li not in used and li not in reasons:
      reasons[li] = "added to something other than a matched layer output"
  return layers, reasons


# --------------------------------------------------------------------------
# The structure object used by gram and kfac.
# --------------------------------------------------------------------------


def _replay(chain, value):
  """Applies the layout operations of ``chain`` (scales skipped)."""
  for node in chain:
    if node.eqn.primitive.name in LAYOUT_PRIMITIVES:
      (value,) = _bind(node.eqn, value)
  return value


class LayerStructure(NamedTuple):
  """Layer factors of any model, plus its generic (unmatched) leaves.

  Attributes:
    layer_factors: ``(params, x (n, ...)) -> tuple[LayerFactors, ...]`` of
      the matched dense layers.
    to_layer_matrices: ``params -> tuple of (a_l, b_l)`` layer matrices
      ``M_l`` (weight in ``(fan_in, fan_out)`` layout, bias as last row).
    from_layer_matrices: ``(mats, generic=None) -> params``: the inverse;
      the generic leaves are taken from ``generic`` (a flat ``(p_g,)``
      vector in leaf order) or are zero.
    generic_jacobian: ``(params, x) -> (n c, p_g)`` Jacobian with respect
      to the generic leaves, flattened leaf by leaf; ``None`` if there are
      none.
    report: the ``StructureReport``.
  """

  layer_factors: Callable[[Params, Array], tuple[LayerFactors, ...]]
  to_layer_matrices: Callable[[Params], tuple[Array, ...]]
  from_layer_matrices: Callable[..., Params]
  generic_jacobian: Callable[[Params, Array], Array] | None
  report: StructureReport


def _inverse(to_matrix, shape, dtype, mat):
  """The leaf whose image under ``to_matrix`` is ``mat``.

  ``to_matrix`` only permutes entries (and may convert the dtype), so its
  inverse is its linear transpose.
  """
  spec = jax.ShapeDtypeStruct(shape, dtype)
  out = jax.eval_shape(to_matrix, spec)
  (leaf,) = jax.linear_transpose(to_matrix, spec)(mat.astype(out.dtype))
  return leaf.astype(dtype)


def _trace(apply, params, x, batch=1):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  specs = [jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v))
           for v in leaves]
  x_spec = jax.ShapeDtypeStruct((batch,) + tuple(x.shape[1:]),
                                jnp.result_type(x))

  def flat_apply(leaf_values, xi):
    return apply(jax.tree_util.tree_unflatten(treedef, leaf_values), xi)

  closed = jax.make_jaxpr(flat_apply)(specs, x_spec)
  return _flatten_jaxpr(closed), leaves, treedef


def _scale_value(scales, env_read, dtype):
  value = jnp.ones((), dtype)
  for s in scales:
    v = jnp.reshape(env_read(s.ref), ()).astype(dtype)
    value = value / v if s.invert else value * v
  return value


def _structure_for_apply(apply, params, x) -> LayerStructure:
  graph, leaves0, treedef = _trace(apply, params, x)
  n_leaves = len(leaves0)
  layers, reasons = _match(graph, n_leaves)
  paths = _leaf_paths(params)
  generic_idx = sorted(reasons)
  shapes = [tuple(jnp.shape(v)) for v in leaves0]
  dtypes = [jnp.result_type(v) for v in leaves0]

  def read_const(ref):
    return graph.consts[ref[1]] if ref[0] == "v" else ref[1]

  # Constant scales are read from the graph's constants (or literals); a
  # scale computed inside the graph from constants is evaluated here.
  def scale_of(scales, dtype):
    for s in scales:
      if s.ref[0] == "v" and s.ref[1] not in graph.consts:
        raise _Unsupported
    return _scale_value(scales, read_const, dtype)

  ok_layers = []
  for lay in layers:
    try:
      scale_of(lay.weight_scales + lay.z_scales + lay.bias_scales,
               jnp.float32)
    except _Unsupported:
      reasons[lay.weight_leaf] = "scaled by a computed constant"
      if lay.bias_leaf is not None:
        reasons[lay.bias_leaf] = "bias of an unmatched layer"
      continue
    ok_layers.append(lay)
  layers = ok_layers
  # Integer leaves (step counters, PRNG keys) have no derivative: they are
  # constants here, and zero in from_layer_matrices.
  constant_idx = [li for li in sorted(reasons)
                  if not jnp.issubdtype(dtypes[li], jnp.inexact)]
  generic_idx = [li for li in sorted(reasons) if li not in constant_idx]

  def h_order(lay):
    node = graph.nodes[lay.dot]
    (lc, rc), _ = node.eqn.params["dimension_numbers"]
    h_contract = tuple(int(d) for d in (lc if lay.w_pos == 1 else rc))
    w_contract = tuple(int(d) for d in (rc if lay.w_pos == 1 else lc))
    return h_contract, w_contract

  def weight_to_matrix(lay, leaf):
    w = _replay(lay.weight_chain, leaf)
    _, w_contract = h_order(lay)
    free = tuple(d for d in range(w.ndim) if d not in w_contract)
    return jnp.transpose(w, w_contract + free).reshape(lay.fan_in,
                                                       lay.fan_out)

  def bias_to_row(lay, leaf):
    t = _replay(lay.bias_chain, leaf)  # the shape of the add's operand
    z_aval = graph.avals[lay.out_id]
    z_spec = jax.ShapeDtypeStruct(z_aval.shape, t.dtype)
    if lay.z_chain:
      (t,) = jax.linear_transpose(lambda z: _replay(lay.z_chain, z),
                                  z_spec)(t)
    return t.reshape(1, lay.fan_out)

  def layer_input(lay, h, dtype):
    # The chain's constant factors k (after the dot) and s_W (on the weight)
    # go into A; B is then du/dz / k (layer_factors), the gradient at the
    # pre-activation; a bias enters with its own factor s_b.
    h_contract, _ = h_order(lay)
    free = tuple(d for d in range(h.ndim) if d not in h_contract)
    a = jnp.transpose(h, h_contract + free).reshape(lay.fan_in)
    a = a * scale_of(lay.weight_scales + lay.z_scales, a.dtype)
    if lay.bias_leaf is not None:
      a = jnp.concatenate([a, scale_of(lay.bias_scales, a.dtype)[None]])
    return a.astype(dtype)

  def batched_plan(x):
    """The layers in a trace on the whole batch, or None.

    Evaluating the batch-``n`` trace runs exactly the operations of
    ``apply(params, x)`` (no ``vmap`` of one example), so XLA can share the
    forward pass with the optimizer's own. The batch-1 trace stays the one
    analysed: the two traces must have the same operations, and each layer's
    activation and output must have one axis that is the example axis.
    """
    n = x.shape[0]
    if n < 2:
      return None
    try:
      graph_n = _trace(apply, params, x, batch=n)[0]
    except Exception:  # noqa: BLE001 - batch-dependent code: vmap path
      return None
    if [nd.eqn.primitive for nd in graph.nodes] != [
        nd.eqn.primitive for nd in graph_n.nodes]:
      return None
    where = {i: (k, j) for k, nd in enumerate(graph.nodes)
             for j, i in enumerate(nd.outs)}
    where.update({i: (-1, j) for j, i in enumerate(graph.in_ids)})

    def id_n(i):
      k, j = where[i]
      return graph_n.in_ids[j] if k < 0 else graph_n.nodes[k].outs[j]

    def example_axis(i, allowed):
      s1, sn = graph.avals[i].shape, graph_n.avals[id_n(i)].shape
      if len(s1) != len(sn):
        return None
      diff = [d for d, (a, b) in enumerate(zip(s1, sn, strict=True))
              if a != b]
      if len(diff) != 1 or s1[diff[0]] != 1 or sn[diff[0]] != n or (
          diff[0] not in allowed):
        return None
      return diff[0]

    plan = []
    for lay in layers:
      if lay.h_ref[1] not in where or lay.out_id not in where:
        return None
      h_contract, _ = h_order(lay)
      h_rank = len(graph.avals[lay.h_ref[1]].shape)
      e_h = example_axis(lay.h_ref[1], set(range(h_rank)) - set(h_contract))
      e_z = example_axis(lay.out_id,
                         set(range(len(graph.avals[lay.out_id].shape))))
      if e_h is None or e_z is None:
        return None
      plan.append((id_n(lay.h_ref[1]), e_h, id_n(lay.out_id), e_z))
    return graph_n, plan

  def layer_factors_batched(leaves, x, graph_n, plan):
    n = x.shape[0]

    def run(eps):
      taps = {z_id: e for (_, _, z_id, _), e in zip(plan, eps, strict=True)}
      outs, hs = _evaluate(graph_n, [*leaves, x], taps,
                           [h_id for h_id, _, _, _ in plan])
      u = outs[0].reshape(n, -1)
      inputs = []
      for lay, h, (_, e_h, _, _) in zip(layers, hs, plan, strict=True):
        h_contract, _ = h_order(lay)
        rest = tuple(d for d in range(h.ndim)
                     if d not in h_contract and d != e_h)
        a = jnp.transpose(h, (e_h,) + h_contract + rest).reshape(
            n, lay.fan_in)
        a = a * scale_of(lay.weight_scales + lay.z_scales, a.dtype)
        if lay.bias_leaf is not None:
          col = jnp.broadcast_to(scale_of(lay.bias_scales, a.dtype), (n, 1))
          a = jnp.concatenate([a, col], axis=1)
        inputs.append(a.astype(u.dtype))
      return u, inputs

    zeros = [jnp.zeros(graph_n.avals[z_id].shape, graph_n.avals[z_id].dtype)
             for _, _, z_id, _ in plan]
    u, pullback, inputs = jax.vjp(run, zeros, has_aux=True)
    c = u.shape[1]
    cot = jnp.broadcast_to(jnp.eye(c, dtype=u.dtype)[:, None, :], (c, n, c))
    grads = jax.vmap(pullback)(cot)[0]  # each (c, *z shape)
    return tuple(
        LayerFactors(inputs=a, output_grads=jnp.swapaxes(
            jnp.moveaxis(g, e_z + 1, 1).reshape(c, n, lay.fan_out)
            / scale_of(lay.z_scales, g.dtype), 0, 1).astype(a.dtype))
        for lay, a, g, (_, _, _, e_z) in zip(layers, inputs, grads, plan,
                                             strict=True))

  def layer_factors(params, x):
    leaves = jax.tree_util.tree_leaves(params)
    planned = batched_plan(x)
    if planned is not None:
      return layer_factors_batched(leaves, x, *planned)
    records = [lay.h_ref[1] for lay in layers]

    def one(xi, eps):
      taps = {lay.out_id: e for lay, e in zip(layers, eps, strict=True)}
      outs, hs = _evaluate(graph, [*leaves, xi[None]], taps, records)
      u = outs[0].reshape(-1)
      inputs = [layer_input(lay, h, u.dtype)
                for lay, h in zip(layers, hs, strict=True)]
      return u, inputs

    n = x.shape[0]
    zeros = [jnp.zeros((n,) + tuple(graph.avals[lay.out_id].shape),
                       graph.avals[lay.out_id].dtype) for lay in layers]
    u, pullback, inputs = jax.vjp(
        lambda eps: jax.vmap(one)(x, eps), zeros, has_aux=True)
    c = u.shape[1]
    # One VJP per output k with cotangent e_k on every example: per-example
    # pre-activation gradients of every layer at once (examples are
    # independent), as models.mlp does.
    cot = jnp.broadcast_to(jnp.eye(c, dtype=u.dtype)[:, None, :], (c, n, c))
    grads = jax.vmap(pullback)(cot)[0]
    return tuple(
        LayerFactors(inputs=a, output_grads=jnp.swapaxes(
            g.reshape(c, n, lay.fan_out)
            / scale_of(lay.z_scales, g.dtype), 0, 1).astype(a.dtype))
        for lay, a, g in zip(layers, inputs, grads, strict=True))

  def to_layer_matrices(params):
    leaves = jax.tree_util.tree_leaves(params)
    mats = []
    for lay in layers:
      m = weight_to_matrix(lay, leaves[lay.weight_leaf])
      if lay.bias_leaf is not None:
        row = bias_to_row(lay, leaves[lay.bias_leaf]).astype(m.dtype)
        m = jnp.concatenate([m, row], axis=0)
      mats.append(m)
    return tuple(mats)

  def from_layer_matrices(mats, generic=None):
    out = [None] * n_leaves
    for lay, m in zip(layers, mats, strict=True):
      out[lay.weight_leaf] = _inverse(
          lambda leaf, lay=lay: weight_to_matrix(lay, leaf),
          shapes[lay.weight_leaf], dtypes[lay.weight_leaf], m[: lay.fan_in])
      if lay.bias_leaf is not None:
        out[lay.bias_leaf] = _inverse(
            lambda leaf, lay=lay: bias_to_row(lay, leaf),
            shapes[lay.bias_leaf], dtypes[lay.bias_leaf], m[lay.fan_in:])
    for li in constant_idx:
      out[li] = jnp.zeros(shapes[li], dtypes[li])
    offset = 0
    for li in generic_idx:
      size = int(np.prod(shapes[li]))
      if generic is None:
        out[li] = jnp.zeros(shapes[li], dtypes[li])
      else:
        out[li] = generic[offset:offset + size].reshape(shapes[li]).astype(
            dtypes[li])
      offset += size
    return jax.tree_util.tree_unflatten(treedef, out)

  generic_jacobian = None
  if generic_idx:

    def generic_jacobian(params, x):
      leaves = jax.tree_util.tree_leaves(params)

      def f(gl, xi):
        ll = list(leaves)
        for li, v in zip(generic_idx, gl, strict=True):
          ll[li] = v
        p = jax.tree_util.tree_unflatten(treedef, ll)
        return as_columns(apply(p, xi[None]))[0]

      jac = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(
          [leaves[li] for li in generic_idx], x)  # leaves (n, c, *s)
      n, c = jac[0].shape[:2]
      return jnp.concatenate([j.reshape(n * c, -1) for j in jac], axis=1)

  report = StructureReport(
      layers=tuple(
          DenseLayerInfo(
              weight=paths[lay.weight_leaf],
              weight_shape=shapes[lay.weight_leaf],
              bias=None if lay.bias_leaf is None else paths[lay.bias_leaf],
              bias_shape=(None if lay.bias_leaf is None
                          else shapes[lay.bias_leaf]),
              fan_in=lay.fan_in + (lay.bias_leaf is not None),
              fan_out=lay.fan_out)
          for lay in layers),
      generic=tuple(GenericLeafInfo(paths[li], shapes[li], reasons[li])
                    for li in generic_idx))
  return LayerStructure(layer_factors, to_layer_matrices,
                        from_layer_matrices, generic_jacobian, report)


class _Unsupported(Exception):
  pass


def _structure_for_model(model: Model, params) -> LayerStructure:
  mats = jax.eval_shape(model.to_layer_matrices, params)
  report = StructureReport(
      layers=tuple(
          DenseLayerInfo(f"layer {k}", tuple(m.shape), None, None,
                         m.shape[0], m.shape[1])
          for k, m in enumerate(mats)),
      generic=())

  def from_layer_matrices(mats, generic=None):
    del generic  # a Model's layer matrices hold all its parameters
    return model.from_layer_matrices(mats)

  return LayerStructure(model.layer_factors, model.to_layer_matrices,
                        from_layer_matrices, None, report)


def layer_structure(apply_or_model, params: Params, x: Array
                    ) -> LayerStructure:
  """The layer structure of a ``Model`` or of a bare ``apply(params, x)``.

  For a ``Model`` with ``layer_factors`` (``two_layer_relu``, ``mlp``) its
  own closed forms are used and nothing is generic. For a bare function the
  dense layers are found in the traced computation (module docstring).
  Shapes only are used (``x`` may be a tracer); call it inside ``jit``.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree.
    x: ``(n, ...)`` inputs (only ``x.shape[1:]`` and the dtype matter).

  Returns:
    A ``LayerStructure``.
  """
  if isinstance(apply_or_model, Model):
    if apply_or_model.layer_factors is not None and (
        apply_or_model.to_layer_matrices is not None
        and apply_or_model.from_layer_matrices is not None):
      return _structure_for_model(apply_or_model, params)
    apply_or_model = apply_or_model.apply
  return _structure_for_apply(apply_or_model, params, x)


def describe_structure(apply_or_model, params: Params, x: Array
                       ) -> StructureReport:
  """Which dense layers were found, and which leaves are on the generic path.

  ``print(ngdjax.describe_structure(apply, params, x))`` lists each matched
  layer (weight and bias paths, shapes, the layer matrix ``(a, b)``) and each
  generic leaf with its shape and why it was not matched. Matched layers cost
  what ``ngdjax.mlp``'s structured Gram costs; generic leaves cost a
  per-example Jacobian (``O(n c p_g)`` memory).

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree.
    x: ``(n, ...)`` inputs (one example is enough).

  Returns:
    A ``StructureReport`` (its ``str`` is a readable table).
  """
  if not isinstance(apply_or_model, Model) and not callable(apply_or_model):
    raise ValueError(
        "apply_or_model must be an ngdjax Model or a function apply(params, "
        f"x), got {type(apply_or_model).__name__}")
  checks.check_inputs("x", x, any_shape=True)
  if not jax.tree_util.tree_leaves(params):
    raise ValueError("params has no array leaves")
  return layer_structure(apply_or_model, params, x).report

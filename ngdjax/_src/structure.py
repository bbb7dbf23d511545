"""A model's layer structure, analysed once into one value.

The structured Gram and K-FAC need, for every layer whose Jacobian is an
outer product (dense layers, dense layers shared over tokens, convolutions,
elementwise norm scales, embedding lookups: ``ngdjax._src.layer_kinds``;
docs/guide/layers.md), the layer's inputs ``A`` and the
back-propagated gradients ``S`` at its pre-activations. The library's own
models provide them in closed form; for any other model (flax, equinox,
plain pytrees) this module finds them in the traced computation:

1. ``analyse`` traces ``apply`` once on one example (``x`` of shape
   ``(1, ...)``, shapes only) with ``jax.make_jaxpr``; calls to ``jit`` are
   inlined. Each parameter leaf is followed through layout operations
   (transpose, reshape, unit broadcasts, dtype conversion) and constant
   scalar factors to the operation that uses it; that operation's kind
   (``layer_kinds.MATCHERS``: ``dot_general``, ``conv_general_dilated``,
   ``mul``, ``gather``) decides whether the leaf is a layer's weight. A
   *bias* is a leaf that reaches, the same way (broadcasts over positions
   allowed), an ``add`` with the layer output, adding the same value at
   every position. The result is a ``Plan``: the layers by kind and the
   other leaves with the reason they were not matched.
2. ``model_structure`` turns the plan into a ``Structure``, the one value
   that the Gram, NGD and K-FAC take. Its ``factors`` evaluate the model by
   an interpreter of the jaxpr on the whole batch (a second trace, with the
   same operations, in which each layer's activation and output have one
   example axis; otherwise the one-example trace ``vmap``-ed over
   examples), recording each layer's input and adding a zero perturbation
   to each layer output; one VJP per output row with respect to the
   perturbations gives every layer's ``S`` at once (or one VJP for a given
   output cotangent). No per-example weight gradient is formed, and the
   operations are those of ``apply`` itself, so XLA shares the forward pass
   with an optimizer's own.

Every other parameter leaf (weights used twice, gathers that are not row
lookups, biases that do not fit the pattern) is on the *generic path*: its
per-example Jacobian is taken exactly (``vmap`` of ``jacrev`` over those
leaves only). Sums over layers and generic leaves are therefore exact for
every model that satisfies the library's assumption that example ``i``'s
outputs depend on ``x[i]`` alone.

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
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ngdjax._src import checks
from ngdjax._src.jaxpr_graph import Analysis, Graph, evaluate, leaf_paths
from ngdjax._src.jaxpr_graph import trace as trace_apply
from ngdjax._src.layer_kinds import (
    MATCHERS,
    ConvLayer,
    DenseLayer,
    EmbedLayer,
    Layer,
    ScaleLayer,
    SharedDenseLayer,
    bias_rows,
    bias_to_rows,
    match_scale,
)
from ngdjax._src.linalg import as_columns, pad_rows
from ngdjax._src.models import LayerFactors, Model
from ngdjax._src.typing import Array, Params

# Operations whose weight may be a broadcast of the leaf (a scale repeated
# over positions).
REPLICATED_WEIGHTS = frozenset({"mul"})

# --------------------------------------------------------------------------
# The report.
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


class SharedLayerInfo(NamedTuple):
  """A weight applied at ``positions`` tokens or pixels of each example.

  Attributes as ``DenseLayerInfo``, plus ``positions`` (``T``).
  """

  weight: str
  weight_shape: tuple[int, ...]
  bias: str | None
  bias_shape: tuple[int, ...] | None
  fan_in: int
  fan_out: int
  positions: int


class ConvLayerInfo(NamedTuple):
  """A convolution (``lax.conv_general_dilated``) with a parameter kernel.

  Attributes:
    kernel, kernel_shape, bias, bias_shape: leaf paths and shapes.
    fan_in: ``a``, rows of the layer matrix (input channels per group times
      kernel positions, plus one for the bias).
    fan_out: output channels.
    positions: ``T``, output positions per example.
    groups: ``feature_group_count``.
    window_strides, padding: of the convolution.
  """

  kernel: str
  kernel_shape: tuple[int, ...]
  bias: str | None
  bias_shape: tuple[int, ...] | None
  fan_in: int
  fan_out: int
  positions: int
  groups: int
  window_strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]


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
    conv: the matched convolutions.
    shared: the matched shared-weight dense layers.
    norm: elementwise scales (normalisation gains; a shift added after one
      is its bias), as ``SharedLayerInfo`` with ``fan_in`` 1 (plus the
      shift) and ``fan_out`` the number of features.
    embed: embedding lookups (a ``gather`` of table rows by tokens), as
      ``SharedLayerInfo`` with ``fan_in`` the vocabulary ``V``, ``fan_out``
      the row size and ``positions`` the tokens per example.
  """

  layers: tuple[DenseLayerInfo, ...]
  generic: tuple[GenericLeafInfo, ...]
  conv: tuple[ConvLayerInfo, ...] = ()
  shared: tuple[SharedLayerInfo, ...] = ()
  norm: tuple[SharedLayerInfo, ...] = ()
  embed: tuple[SharedLayerInfo, ...] = ()

  def __str__(self) -> str:
    def bias(lay):
      return f" + bias {lay.bias} {lay.bias_shape}" if lay.bias else ""

    lines = [f"{len(self.layers)} dense layer(s) matched "
             "(structured: no per-example weight gradients):"]
    lines += [f"  {lay.weight} {lay.weight_shape}{bias(lay)} -> M "
              f"({lay.fan_in}, {lay.fan_out})" for lay in self.layers]
    if self.shared:
      lines.append(f"{len(self.shared)} shared-weight dense layer(s):")
      lines += [f"  {lay.weight} {lay.weight_shape}{bias(lay)} -> M "
                f"({lay.fan_in}, {lay.fan_out}) at {lay.positions} "
                "positions" for lay in self.shared]
    if self.conv:
      lines.append(f"{len(self.conv)} convolution(s):")
      lines += [f"  {lay.kernel} {lay.kernel_shape}{bias(lay)} -> M "
                f"({lay.fan_in}, {lay.fan_out}) at {lay.positions} "
                f"positions, {lay.groups} group(s), strides "
                f"{lay.window_strides}" for lay in self.conv]
    if self.norm:
      lines.append(f"{len(self.norm)} elementwise scale(s) (norm gains):")
      lines += [f"  {lay.weight} {lay.weight_shape}{bias(lay)} at "
                f"{lay.positions} positions" for lay in self.norm]
    if self.embed:
      lines.append(f"{len(self.embed)} embedding(s):")
      lines += [f"  {lay.weight} {lay.weight_shape}: {lay.fan_in} rows of "
                f"{lay.fan_out} at {lay.positions} tokens"
                for lay in self.embed]
    size = sum(math.prod(g.shape) for g in self.generic)
    lines.append(f"{len(self.generic)} leaf/leaves ({size} parameters) on the "
                 "generic path (exact per-example Jacobian):")
    lines += [f"  {g.path} {g.shape}: {g.reason}" for g in self.generic]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The plan: a pure analysis of the traced computation.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """The layers of a traced ``apply`` and the reasons for the rest.

  Attributes:
    graph: the one-example graph (``jaxpr_graph.Graph``).
    layers: matched layers in the order of the computation.
    reasons: leaf index -> why it is not part of a layer (generic leaves
      and integer constants).
    paths, shapes, dtypes: of every leaf; treedef: of ``params``.
  """

  graph: Graph
  layers: tuple[Layer, ...]
  reasons: dict[int, str]
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]
  treedef: Any

  @property
  def constant_leaves(self) -> tuple[int, ...]:
    """Integer leaves (step counters, PRNG keys): no derivative."""
    return tuple(li for li in sorted(self.reasons)
                 if not jnp.issubdtype(self.dtypes[li], jnp.inexact))

  @property
  def generic_leaves(self) -> tuple[int, ...]:
    return tuple(li for li in sorted(self.reasons)
                 if li not in self.constant_leaves)

  def restrict(self, kinds) -> Plan:
    """The plan with the layers of other kinds moved to the generic path."""
    reasons = dict(self.reasons)
    for lay in self.layers:
      if lay.kind not in kinds:
        reasons[lay.weight_leaf] = f"{lay.kind} layer (generic here)"
        if lay.has_bias:
          reasons[lay.bias_leaf] = f"bias of a {lay.kind} layer"
    layers = tuple(lay for lay in self.layers if lay.kind in kinds)
    return dataclasses.replace(self, layers=layers, reasons=reasons)


def _match_weights(an: Analysis, n_leaves: int):
  """Layers whose weight is a leaf, and reasons for the other leaves."""
  graph = an.graph
  layers, reasons = [], {}
  for li in range(n_leaves):
    chain = an.follow(graph.in_ids[li], broadcasts=True)
    if chain.use is None:
      reasons[li] = "used more than once (or unused)"
      continue
    name = graph.nodes[chain.use[0]].name
    matcher = MATCHERS.get(name)
    if matcher is None:
      reasons[li] = ("added to something other than a layer output"
                     if name == "add" else
                     f"feeds {name}, not a recognised layer")
      continue
    if chain.broadcast and name not in REPLICATED_WEIGHTS:
      reasons[li] = f"replicated before {name}"
      continue
    found = matcher(an, li, chain)
    if isinstance(found, str):
      reasons[li] = found
    else:
      layers.append(found)
  return sorted(layers, key=lambda lay: lay.op), reasons


def _attach_biases(an: Analysis, layers, reasons):
  """Each layer with its output chain and, if one fits, its bias leaf."""
  graph = an.graph
  by_add = {}  # (add node, operand of the layer side) -> (leaf, chain)
  for li in list(reasons):
    chain = an.follow(graph.in_ids[li], broadcasts=True)
    if chain.use is not None and graph.nodes[chain.use[0]].name == "add":
      k, pos = chain.use
      by_add[(k, 1 - pos)] = (li, chain)
  out = []
  for lay in layers:
    # From the layer output z, layout operations and constant factors (the
    # NTK scale 1/sqrt(fan_in), equinox's transpose) up to the next real
    # operation: the factors are folded into the layer inputs, so that S is
    # the gradient with respect to the pre-activation the next operation
    # sees; if that operation adds a bias leaf, the bias joins the layer.
    z_chain = an.follow(lay.out_id)
    lay = dataclasses.replace(lay, z_chain=z_chain)
    # (An embedding's one-hot inputs have no constant column: a vector added
    # after a lookup is an elementwise shift of its own, ``_match_shifts``.)
    if (z_chain.use is not None and z_chain.use in by_add
        and lay.kind != "embed"):
      li, chain = by_add[z_chain.use]
      if bias_rows(lay, z_chain, chain, graph.shape(graph.in_ids[li]),
                   graph.shape(z_chain.end)):
        del by_add[z_chain.use]
        lay = dataclasses.replace(lay, bias_leaf=li, bias=chain)
        reasons.pop(li, None)
    out.append(lay)
  return tuple(out)


def _match_shifts(an: Analysis, layers, reasons):
  """Leaves added at every position that are no layer's bias (a layer
  norm's shift after its scale): elementwise layers of their own."""
  graph, found = an.graph, []
  for li in sorted(reasons):
    chain = an.follow(graph.in_ids[li], broadcasts=True)
    if chain.use is None or graph.nodes[chain.use[0]].name != "add":
      continue
    lay = match_scale(an, li, chain)
    if isinstance(lay, ScaleLayer):
      found.append(dataclasses.replace(lay, z_chain=an.follow(lay.out_id)))
      del reasons[li]
  return tuple(sorted((*layers, *found), key=lambda lay: lay.op))


def analyse(apply: Callable, params: Params, x: Array) -> Plan:
  """The ``Plan`` of a bare ``apply(params, x)`` (module docstring).

  Shapes only are used (``params`` and ``x`` may be tracers).
  """
  graph, leaves, treedef = trace_apply(apply, params, x)
  an = Analysis(graph, len(leaves))
  layers, reasons = _match_weights(an, len(leaves))
  layers = _attach_biases(an, layers, reasons)
  layers = _match_shifts(an, layers, reasons)
  used = {lay.weight_leaf for lay in layers} | {
      lay.bias_leaf for lay in layers if lay.has_bias}
  for li in range(len(leaves)):
    if li not in used and li not in reasons:
      reasons[li] = "added to something other than a layer output"
  return Plan(graph, layers, reasons, tuple(leaf_paths(params)),
              tuple(tuple(jnp.shape(v)) for v in leaves),
              tuple(jnp.result_type(v) for v in leaves), treedef)


def _report(plan: Plan) -> StructureReport:
  p, s = plan.paths, plan.shapes

  def bias(lay):
    return ((p[lay.bias_leaf], s[lay.bias_leaf]) if lay.has_bias
            else (None, None))

  def fan_in(lay):
    return lay.fan_in + lay.has_bias

  dense = tuple(
      DenseLayerInfo(p[lay.weight_leaf], s[lay.weight_leaf], *bias(lay),
                     fan_in(lay), lay.fan_out)
      for lay in plan.layers if isinstance(lay, DenseLayer))
  shared = tuple(
      SharedLayerInfo(p[lay.weight_leaf], s[lay.weight_leaf], *bias(lay),
                      fan_in(lay), lay.fan_out, lay.positions)
      for lay in plan.layers if isinstance(lay, SharedDenseLayer))
  conv = tuple(
      ConvLayerInfo(p[lay.weight_leaf], s[lay.weight_leaf], *bias(lay),
                    fan_in(lay), lay.fan_out, lay.positions, lay.groups,
                    lay.window_strides, lay.padding)
      for lay in plan.layers if isinstance(lay, ConvLayer))
  norm = tuple(
      SharedLayerInfo(p[lay.weight_leaf], s[lay.weight_leaf], *bias(lay),
                      fan_in(lay), lay.fan_out, lay.positions)
      for lay in plan.layers if isinstance(lay, ScaleLayer))
  embed = tuple(
      SharedLayerInfo(p[lay.weight_leaf], s[lay.weight_leaf], None, None,
                      lay.fan_in, lay.fan_out, lay.positions)
      for lay in plan.layers if isinstance(lay, EmbedLayer))
  generic = tuple(GenericLeafInfo(p[li], s[li], plan.reasons[li])
                  for li in plan.generic_leaves)
  return StructureReport(dense, generic, conv, shared, norm, embed)


# --------------------------------------------------------------------------
# Evaluating the plan: layer factors.
# --------------------------------------------------------------------------


def _example_axis(s1, sn, n, allowed):
  if len(s1) != len(sn):
    return None
  diff = [d for d, (a, b) in enumerate(zip(s1, sn, strict=True)) if a != b]
  if len(diff) != 1 or s1[diff[0]] != 1 or sn[diff[0]] != n or (
      diff[0] not in allowed):
    return None
  return diff[0]


def _batched_graph(apply, params, plan: Plan, x):
  """The layers in a trace on the whole batch, or None.

  Evaluating the batch-``n`` trace runs exactly the operations of
  ``apply(params, x)`` (no ``vmap`` of one example), so XLA can share the
  forward pass with the optimizer's own. The batch-1 trace stays the one
  analysed: the two traces must have the same operations, and each layer's
  activation and output must have one axis that is the example axis.

  Returns:
    ``(graph_n, [(h id, h example axis, z id, z example axis)])``.
  """
  graph, n = plan.graph, x.shape[0]
  if n < 2:
    return None
  try:
    graph_n = trace_apply(apply, params, x, batch=n)[0]
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

  found = []
  for lay in plan.layers:
    if lay.h_ref[1] not in where or lay.out_id not in where:
      return None
    h_n, z_n = id_n(lay.h_ref[1]), id_n(lay.out_id)
    e_h = _example_axis(lay.h_shape, graph_n.shape(h_n), n,
                        lay.example_axes_h())
    e_z = _example_axis(lay.z_shape, graph_n.shape(z_n), n,
                        lay.example_axes_z())
    if e_h is None or e_z is None:
      return None
    found.append((h_n, e_h, z_n, e_z))
  return graph_n, found


def _cotangent_sets(u_shape, cotangents, dtype):
  """``(r, n, c)`` output cotangents: ``e_k`` on every example (``r = c``)
  by default, one given ``(n, c)``, or ``(n, c, r)`` given rows."""
  n, c = u_shape
  if cotangents is None:
    return jnp.broadcast_to(jnp.eye(c, dtype=dtype)[:, None, :], (c, n, c))
  cot = jnp.asarray(cotangents, dtype)
  if cot.ndim == 2:
    return cot.reshape(1, n, c)
  return jnp.moveaxis(cot.reshape(n, c, -1), 2, 0)


def _traced_factors(apply, plan: Plan, params, x, cotangents=None):
  """Every layer's ``LayerFactors`` (per kind, ``layer_kinds``)."""
  leaves = jax.tree_util.tree_leaves(params)
  layers, n = plan.layers, x.shape[0]
  if not layers:
    return ()
  batched = _batched_graph(apply, params, plan, x)
  if batched is not None:
    graph_n, ids = batched

    def run(eps):
      taps = {z: e for (_, _, z, _), e in zip(ids, eps, strict=True)}
      outs, hs = evaluate(graph_n, [*leaves, x], taps,
                          [h for h, _, _, _ in ids])
      hs = [jnp.moveaxis(h, e_h, 0).reshape((n,) + lay.h_shape)
            for h, lay, (_, e_h, _, _) in zip(hs, layers, ids, strict=True)]
      return outs[0].reshape(n, -1), hs

    zeros = [jnp.zeros(graph_n.shape(z), graph_n.avals[z].dtype)
             for _, _, z, _ in ids]
  else:

    def one(xi, eps):
      taps = {lay.out_id: e for lay, e in zip(layers, eps, strict=True)}
      outs, hs = evaluate(plan.graph, [*leaves, xi[None]], taps,
                          [lay.h_ref[1] for lay in layers])
      return outs[0].reshape(-1), hs

    def run(eps):
      return jax.vmap(one)(x, eps)

    zeros = [jnp.zeros((n,) + lay.z_shape,
                       plan.graph.avals[lay.out_id].dtype) for lay in layers]
  u, pullback, hs = jax.vjp(run, zeros, has_aux=True)
  cots = _cotangent_sets(u.shape, cotangents, u.dtype)
  grads = jax.vmap(pullback)(cots)[0]  # per layer (r, *z shape)
  out = []
  for k, (lay, h, g) in enumerate(zip(layers, hs, grads, strict=True)):
    if batched is not None:
      e_z = batched[1][k][3]
      g = jnp.moveaxis(g, e_z + 1, 1).reshape((g.shape[0], n) + lay.z_shape)
    if jnp.issubdtype(h.dtype, jnp.inexact):  # (not an embedding's tokens)
      h = h.astype(u.dtype)
    out.append(lay.factors(h, jnp.swapaxes(g, 0, 1)))
  return tuple(out)


# --------------------------------------------------------------------------
# Parameters <-> layer matrices, the generic Jacobian.
# --------------------------------------------------------------------------


def _inverse(to_matrix, shape, dtype, mat):
  """The leaf whose image under ``to_matrix`` is ``mat``.

  ``to_matrix`` only permutes entries (and may convert the dtype), so its
  inverse is its linear transpose.
  """
  spec = jax.ShapeDtypeStruct(shape, dtype)
  out = jax.eval_shape(to_matrix, spec)
  (leaf,) = jax.linear_transpose(to_matrix, spec)(mat.astype(out.dtype))
  return leaf.astype(dtype)


def _bias_row(plan: Plan, lay: Layer, leaf):
  end = plan.graph.shape(lay.z_chain.end)
  return bias_to_rows(lay, lay.z_chain, lay.bias, leaf, end)[0][None]


def _to_layer_matrices(plan: Plan, tree) -> tuple[Array, ...]:
  leaves = jax.tree_util.tree_leaves(tree)
  mats = []
  for lay in plan.layers:
    m = lay.weight_matrix(leaves[lay.weight_leaf])
    if lay.has_bias:
      row = _bias_row(plan, lay, leaves[lay.bias_leaf]).astype(m.dtype)
      m = jnp.concatenate([m, row], axis=0)
    mats.append(m)
  return tuple(mats)


def _from_layer_matrices(plan: Plan, mats, generic=None) -> Params:
  out = [None] * len(plan.shapes)
  sh, dt = plan.shapes, plan.dtypes
  for lay, m in zip(plan.layers, mats, strict=True):
    li = lay.weight_leaf
    out[li] = _inverse(lay.weight_matrix, sh[li], dt[li], m[: lay.fan_in])
    if lay.has_bias:
      li = lay.bias_leaf
      out[li] = _inverse(lambda leaf, lay=lay: _bias_row(plan, lay, leaf),
                         sh[li], dt[li], m[lay.fan_in:])
  for li in plan.constant_leaves:
    out[li] = jnp.zeros(sh[li], dt[li])
  offset = 0
  for li in plan.generic_leaves:
    size = math.prod(sh[li])
    if generic is None:
      out[li] = jnp.zeros(sh[li], dt[li])
    else:
      out[li] = generic[offset:offset + size].reshape(sh[li]).astype(dt[li])
    offset += size
  return jax.tree_util.tree_unflatten(plan.treedef, out)


def _generic_jacobian(apply, plan: Plan, params, x) -> Array:
  """``(n c, p_g)``: Jacobian of the generic leaves, leaf by leaf."""
  idx = plan.generic_leaves

  def per_example(leaves, xs):
    def f(gl, xi):
      ll = list(leaves)
      for li, v in zip(idx, gl, strict=True):
        ll[li] = v
      p = jax.tree_util.tree_unflatten(plan.treedef, ll)
      return as_columns(apply(p, xi[None]))[0]

    jac = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(
        [leaves[li] for li in idx], xs)  # leaves (n, c, *s)
    n, c = jac[0].shape[:2]
    return jnp.concatenate([j.reshape(n, c, -1) for j in jac], axis=2)

  jac = _on_example_shards(per_example, jax.tree_util.tree_leaves(params), x)
  return jac.reshape(-1, jac.shape[-1])


def _on_example_shards(fn, consts, x):
  """``fn(consts, x)`` for a per-example ``fn`` (row ``i`` of the result
  depends on ``x[i]`` alone), each device of the mesh in context (a step
  traced under ``parallel.mesh_context``) running its own rows.

  Left to the SPMD partitioner, the per-example kernel gradients of a
  convolution (``vmap`` of its VJP with the example axis sharded) come out
  wrong on jax 0.10 with 4 CPU devices; inside ``shard_map`` each device
  runs the one-device program. ``check_vma=False``: the replicated
  ``consts`` must not have their cotangents summed over devices (the
  derivatives are per example). Without a one-axis ``Auto`` mesh in
  context (or inside ``shard_map`` already) ``fn`` runs as is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or len(mesh.axis_names) != 1
      or mesh.axis_types[0] != jax.sharding.AxisType.Auto):
    return fn(consts, x)
  axis = mesh.axis_names[0]
  n = x.shape[0]
  xp, _ = pad_rows(x, mesh.shape[axis])
  spec = jax.sharding.PartitionSpec
  out = jax.shard_map(fn, mesh=mesh, in_specs=(spec(), spec(axis)),
                      out_specs=spec(axis), check_vma=False)(consts, xp)
  return out[:n]


# --------------------------------------------------------------------------
# The structure object.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelLayer:
  """A dense layer of a library ``Model`` (closed-form factors)."""

  kind = "dense"
  fan_in: int  # rows of M, the bias row included
  fan_out: int
  has_bias = False
  positions = 1
  groups = 1

  def expand(self, f: LayerFactors):
    return DenseLayer.expand(self, f)


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
  """A model's layer structure: the one value curvature code takes.

  Build it with ``model_structure(apply_or_model, params, x)`` (shapes
  only; inside ``jit`` is fine) once per step and pass it on.

  Attributes:
    apply: ``apply(params, x)`` of the model.
    layers: the layers, in the order of the computation; each has a
      ``kind`` (``"dense"``, ``"shared"``, ``"conv"``), ``fan_in`` /
      ``fan_out`` (its layer matrix ``M`` is ``(fan_in + has_bias,
      fan_out)``), ``positions`` (``T``), ``groups`` (``G``) and
      ``expand`` (``ngdjax._src.layer_kinds``).
    report: the ``StructureReport``.
    plan: the ``Plan`` of a traced model (``None`` for a library model).
  """

  apply: Callable[[Params, Array], Array]
  layers: tuple[Any, ...]
  report: StructureReport
  plan: Plan | None
  _factors: Callable = dataclasses.field(repr=False)
  _to_mats: Callable = dataclasses.field(repr=False)
  _from_mats: Callable = dataclasses.field(repr=False)
  _generic: Callable | None = dataclasses.field(repr=False)

  def factors(self, params: Params, x: Array, cotangents: Array | None = None
              ) -> tuple[LayerFactors, ...]:
    """Every layer's ``LayerFactors(inputs, output_grads)``.

    Shapes per kind (``layer_kinds``): dense ``(n, a)``, ``(n, r, b)``;
    shared ``(n, T, a)``, ``(n, r, T, b)``; conv ``(n, *in_spatial,
    in_channels)``, ``(n, r, *out_spatial, out_channels)``. The ``r`` rows
    of ``output_grads`` are the gradients of the outputs along

    * ``cotangents=None``: each output ``k`` (``r = c``; ``c`` VJPs),
    * ``cotangents`` ``(n, c)``: that output cotangent (``r = 1``; one VJP),
    * ``cotangents`` ``(n, c, r)``: each of its ``r`` columns.
    """
    return self._factors(params, x, cotangents)

  def expand(self, factors) -> tuple[tuple[Array, Array], ...]:
    """Per layer ``(A (n, T, G, a), S (n, r, T, G, b_g))``: the common form
    ``dU_ik / dM_g = sum_t A[i, t, g] S[i, k, t, g]^T`` of every kind."""
    return tuple(lay.expand(f)
                 for lay, f in zip(self.layers, factors, strict=True))

  def to_layer_matrices(self, tree: Params) -> tuple[Array, ...]:
    """``tree`` (shaped like params, e.g. a gradient) as layer matrices."""
    return self._to_mats(tree)

  def from_layer_matrices(self, mats, generic: Array | None = None
                          ) -> Params:
    """The inverse of ``to_layer_matrices``; the generic leaves from the
    flat ``generic`` ``(p_g,)`` (leaf order) or zero."""
    return self._from_mats(mats, generic)

  @property
  def has_generic(self) -> bool:
    return self._generic is not None

  def generic_jacobian(self, params: Params, x: Array) -> Array:
    """``(n c, p_g)`` exact Jacobian of the generic leaves."""
    if self._generic is None:
      raise ValueError("this model has no generic leaves")
    return self._generic(params, x)

  def only(self, kinds) -> Structure:
    """The structure with layers of other kinds on the generic path."""
    if self.plan is None:
      return self
    return _traced_structure(self.apply, self.plan.restrict(tuple(kinds)))


def _traced_structure(apply, plan: Plan) -> Structure:
  generic = None
  if plan.generic_leaves:

    def generic(params, x):
      return _generic_jacobian(apply, plan, params, x)

  return Structure(
      apply, plan.layers, _report(plan), plan,
      lambda params, x, cot: _traced_factors(apply, plan, params, x, cot),
      lambda tree: _to_layer_matrices(plan, tree),
      lambda mats, g: _from_layer_matrices(plan, mats, g), generic)


def _model_structure(model: Model, params) -> Structure:
  mats = jax.eval_shape(model.to_layer_matrices, params)
  report = StructureReport(
      layers=tuple(
          DenseLayerInfo(f"layer {k}", tuple(m.shape), None, None,
                         m.shape[0], m.shape[1])
          for k, m in enumerate(mats)),
      generic=())

  def factors(params, x, cotangents):
    fs = model.layer_factors(params, x)
    if cotangents is None:
      return fs
    n, c = x.shape[0], fs[0].output_grads.shape[1]
    rows = jnp.asarray(cotangents).reshape(n, c, -1)
    return tuple(LayerFactors(f.inputs, jnp.einsum(
        "ikr,ikb->irb", rows.astype(f.output_grads.dtype), f.output_grads))
                 for f in fs)

  def from_mats(mats, generic=None):
    del generic  # a Model's layer matrices hold all its parameters
    return model.from_layer_matrices(mats)

  return Structure(
      model.apply, tuple(ModelLayer(*m.shape) for m in mats), report, None,
      factors, model.to_layer_matrices, from_mats, None)


def has_closed_form(model) -> bool:
  """Whether ``model`` is a ``Model`` with closed-form layer factors."""
  return isinstance(model, Model) and None not in (
      model.layer_factors, model.to_layer_matrices, model.from_layer_matrices)


def model_structure(apply_or_model, params: Params, x: Array) -> Structure:
  """The ``Structure`` of a ``Model`` or of a bare ``apply(params, x)``.

  For a ``Model`` with ``layer_factors`` (``two_layer_relu``, ``mlp``) its
  own closed forms are used and nothing is generic. For a bare function the
  layers are found in the traced computation (module docstring). Shapes
  only are used (``x`` may be a tracer); call it inside ``jit``.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree.
    x: ``(n, ...)`` inputs (only ``x.shape[1:]`` and the dtype matter).

  Returns:
    A ``Structure``.
  """
  if isinstance(apply_or_model, Structure):
    return apply_or_model
  if has_closed_form(apply_or_model):
    return _model_structure(apply_or_model, params)
  if isinstance(apply_or_model, Model):
    apply_or_model = apply_or_model.apply
  return _traced_structure(apply_or_model, analyse(apply_or_model, params, x))


class LayerStructure(NamedTuple):
  """The dense layers of any model, plus its generic (other) leaves.

  A view of ``Structure`` restricted to dense layers (convolutions and
  shared-weight layers count as generic here).

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


def layer_structure(apply_or_model, params: Params, x: Array
                    ) -> LayerStructure:
  """The dense-layer view (``LayerStructure``) of ``model_structure``."""
  st = model_structure(apply_or_model, params, x).only(("dense",))
  return LayerStructure(
      lambda p, z: st.factors(p, z), st.to_layer_matrices,
      st.from_layer_matrices,
      st.generic_jacobian if st.has_generic else None, st.report)


def describe_structure(apply_or_model, params: Params, x: Array
                       ) -> StructureReport:
  """Which layers were found, and which leaves are on the generic path.

  ``print(ngdjax.describe_structure(apply, params, x))`` lists each matched
  layer by kind (dense, shared-weight dense, convolution: weight and bias
  paths, shapes, the layer matrix ``(a, b)``) and each generic leaf with
  its shape and why it was not matched. Matched layers cost what
  ``ngdjax.mlp``'s structured Gram costs; generic leaves cost a per-example
  Jacobian (``O(n c p_g)`` memory).

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
  return model_structure(apply_or_model, params, x).report

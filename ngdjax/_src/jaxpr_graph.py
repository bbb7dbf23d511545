"""A flat, analysable graph of a traced ``apply(params, x)``.

The structure analysis (``ngdjax._src.structure``) works on this graph:
``trace`` makes a jaxpr of ``apply`` on abstract values (shapes only) and
flattens it (``jit`` calls are inlined, so layers inside jitted helpers are
seen); ``Analysis`` knows each value's consumers, producer and whether it
depends on the inputs or on the parameters, and follows a parameter leaf
through layout operations (transpose, reshape, unit broadcasts, dtype
conversion) and constant scalar factors to the operation that really uses
it; ``evaluate`` runs the graph on concrete (or traced) arrays, recording
chosen values and adding perturbations ("taps") to others.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

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


@dataclasses.dataclass(frozen=True)
class Node:
  eqn: Any  # the JaxprEqn
  ins: tuple  # per operand: ("v", value id) or ("c", literal value)
  outs: tuple[int, ...]  # value ids

  @property
  def name(self) -> str:
    return self.eqn.primitive.name

  @property
  def params(self) -> dict:
    return self.eqn.params


@dataclasses.dataclass
class Graph:
  nodes: list[Node]
  consts: dict[int, Any]  # value id -> constant
  in_ids: list[int]  # leaves, then x
  outs: list[tuple]  # refs of the outputs
  avals: dict[int, Any]  # value id -> abstract value

  def shape(self, value_id) -> tuple[int, ...]:
    return tuple(self.avals[value_id].shape)


def _flatten_jaxpr(closed) -> Graph:
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
      nodes.append(Node(eqn, ins, out_ids))
    return [read(a) for a in jaxpr.outvars]

  in_ids = [next(counter) for _ in closed.jaxpr.invars]
  for var, i in zip(closed.jaxpr.invars, in_ids, strict=True):
    avals[i] = var.aval
  outs = run(closed.jaxpr, closed.consts, [("v", i) for i in in_ids])
  return Graph(nodes, consts, in_ids, outs, avals)


def trace(apply, params, x, batch=1):
  """``(graph, leaves, treedef)`` of ``apply`` on ``batch`` rows of ``x``.

  Only shapes and dtypes are used (``x`` and ``params`` may be tracers).
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  specs = [jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v))
           for v in leaves]
  x_spec = jax.ShapeDtypeStruct((batch,) + tuple(x.shape[1:]),
                                jnp.result_type(x))

  def flat_apply(leaf_values, xi):
    return apply(jax.tree_util.tree_unflatten(treedef, leaf_values), xi)

  closed = jax.make_jaxpr(flat_apply)(specs, x_spec)
  return _flatten_jaxpr(closed), leaves, treedef


def bind(eqn, *args):
  """Applies the primitive of ``eqn`` (with its parameters) to ``args``."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older jax: (subfuns, params)
    subfuns, params = params
  out = eqn.primitive.bind(*subfuns, *args, **params)
  return out if eqn.primitive.multiple_results else [out]


def evaluate(graph: Graph, inputs, taps: dict, records: Sequence[int]):
  """Runs the graph; adds ``taps[id]`` to value ``id``; returns the outputs
  and the values of ``records``."""
  env = dict(graph.consts)
  env.update(zip(graph.in_ids, inputs, strict=True))

  def read(ref):
    return env[ref[1]] if ref[0] == "v" else ref[1]

  for node in graph.nodes:
    outs = bind(node.eqn, *(read(r) for r in node.ins))
    for i, value in zip(node.outs, outs, strict=True):
      env[i] = value + taps[i] if i in taps else value
  return [read(r) for r in graph.outs], [env[i] for i in records]


def replay(chain, value):
  """Applies the layout operations of ``chain`` (scales skipped)."""
  for node in chain:
    if node.name in LAYOUT_PRIMITIVES:
      (value,) = bind(node.eqn, value)
  return value


def leaf_paths(params) -> list[str]:
  return [jax.tree_util.keystr(path)
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def is_unit_broadcast(node: Node, avals) -> bool:
  """A broadcast_in_dim that only inserts unit dimensions (a reshape)."""
  (ref,) = node.ins[:1]
  shape_in = tuple(avals[ref[1]].shape) if ref[0] == "v" else ()
  shape_out = tuple(node.params["shape"])
  dims = tuple(int(d) for d in node.params["broadcast_dimensions"])
  if list(dims) != sorted(dims):
    return False
  if any(shape_out[d] != s for d, s in zip(dims, shape_in, strict=True)):
    return False
  return all(shape_out[k] == 1 for k in range(len(shape_out))
             if k not in dims)


@dataclasses.dataclass(frozen=True)
class Scale:
  """A constant scalar factor met on a chain: ``value`` or ``1 / value``."""

  value: Any  # a concrete scalar (array or Python number)
  invert: bool


def scale_value(scales: Sequence[Scale], dtype):
  """The product of ``scales`` as a scalar of ``dtype``."""
  value = jnp.ones((), dtype)
  for s in scales:
    v = jnp.reshape(jnp.asarray(s.value), ()).astype(dtype)
    value = value / v if s.invert else value * v
  return value


@dataclasses.dataclass(frozen=True)
class Chain:
  """What ``Analysis.follow`` found from a value to its real consumer.

  Attributes:
    nodes: layout and scale nodes on the way.
    scales: the constant factors among them.
    end: the value id the consumer reads.
    use: ``(node index, operand position)`` of the consumer, or ``None``
      (the value is used more than once, or is an output).
    broadcast: the chain contains a broadcast that replicates entries.
  """

  nodes: tuple[Node, ...]
  scales: tuple[Scale, ...]
  end: int
  use: tuple[int, int] | None
  broadcast: bool = False


class Analysis:
  """Consumers, input dependence and constness of every value."""

  def __init__(self, graph: Graph, n_leaves: int):
    self.graph = graph
    self.n_leaves = n_leaves
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
    """The concrete value of a size-1 constant ``ref``, or None."""
    if ref[0] == "c":
      return ref[1] if np.size(ref[1]) == 1 else None
    i = ref[1]
    if i in self.x_dep or i in self.param_dep:
      return None
    if i in self.graph.consts:
      value = self.graph.consts[i]
      return value if np.size(value) == 1 else None
    k = self.producer.get(i)
    if k is not None:
      node = self.graph.nodes[k]
      if node.name in ("broadcast_in_dim", "convert_element_type"):
        return self.constant_scalar(node.ins[0])
    return None

  def follow(self, value_id, *, broadcasts=False) -> Chain:
    """From a value, the layout/scale chain to its one real consumer.

    With ``broadcasts``, broadcasts that replicate entries (a bias added at
    every position) are followed too; otherwise only unit broadcasts.
    """
    nodes, scales, cur, replicated = [], [], value_id, False
    avals = self.graph.avals
    while True:
      use = self.only_consumer(cur)
      if use is None:
        return Chain(tuple(nodes), tuple(scales), cur, None, replicated)
      k, pos = use
      node = self.graph.nodes[k]
      if node.name in LAYOUT_PRIMITIVES and len(node.outs) == 1:
        unit = node.name != "broadcast_in_dim" or is_unit_broadcast(node,
                                                                    avals)
        if unit or broadcasts:
          replicated = replicated or not unit
          nodes.append(node)
          cur = node.outs[0]
          continue
      if node.name in SCALE_PRIMITIVES and (node.name == "mul" or pos == 0):
        other = self.constant_scalar(node.ins[1 - pos])
        if other is not None and tuple(avals[node.outs[0]].shape) == tuple(
            avals[cur].shape):
          scales.append(Scale(other, invert=node.name == "div"))
          nodes.append(node)
          cur = node.outs[0]
          continue
      return Chain(tuple(nodes), tuple(scales), cur, (k, pos), replicated)

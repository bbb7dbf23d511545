"""Layer kinds the structure analysis recognises, one record per kind.

Every kind is a linear map of a parameter leaf ``W`` (its *layer matrix*
``M``, ``(a, b)``: fan-in rows, plus one row for a bias, by fan-out
columns) applied to an input-dependent activation at ``T`` positions of an
example, in ``G`` groups:

    z[t, g, o] = sum_a A[t, g, a] M[a, g * b_g + o]

so that the derivative of output ``k`` of example ``i`` with respect to
``M`` is ``sum_t A_it S_ikt^T`` (per group), with ``S`` the gradient of
that output with respect to the layer's pre-activations ``z``. ``expand``
gives every kind in this one form, ``A`` ``(n, T, G, a)`` and ``S``
``(n, r, T, G, b_g)``:

* ``DenseLayer``: ``dot_general`` of an activation with ``W`` and one output
  row per example (``T = G = 1``), e.g. ``flax.linen.Dense`` on vectors.
* ``SharedDenseLayer``: the same ``W`` applied at every token or position of
  an example (``T`` = number of positions), e.g. a dense layer of a
  transformer (Grosse & Martens 2016 and Eschenhagen et al. 2023 call this
  weight sharing).
* ``ConvLayer``: any ``lax.conv_general_dilated`` (strides, padding, input
  and kernel dilation, any layout, feature groups ``G``); ``A`` are the
  input patches of the ``T`` output positions (KFC, Grosse & Martens 2016).

A kind is found by its ``match`` function (listed in ``MATCHERS`` by the
primitive that consumes the parameter leaf); adding a kind is adding a
record and an entry there. Each record holds what the traced computation
says about the layer (shapes are those of a one-example trace) and maps

* the recorded activation ``h`` (``(n, *h_shape)``) and the gradients
  ``g`` at the layer output (``(n, r, *z_shape)``) to the layer's factors
  (``factors``; documented per kind),
* a parameter leaf to the layer matrix (``weight_matrix``),
* a pre-activation-shaped array to ``(T, b)`` rows (``z_rows``), which
  checks and reads biases.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ngdjax._src.jaxpr_graph import Analysis, Chain, replay, scale_value
from ngdjax._src.models import LayerFactors
from ngdjax._src.typing import Array


@dataclasses.dataclass(frozen=True)
class Layer:
  """What all kinds share.

  Attributes:
    op: index of the operation (``dot_general``, ``conv_general_dilated``)
      in the graph.
    weight_leaf: index of the weight leaf (``tree_leaves`` order).
    weight: the chain from the leaf to the operation's operand.
    w_pos: operand position of the weight.
    h_ref: the activation operand.
    h_shape: its shape in the one-example trace.
    out_id: the operation's output ``z`` (where perturbations are added).
    z_shape: its shape in the one-example trace.
    fan_in: rows of ``M`` without the bias row (per group).
    fan_out: columns of ``M`` (all groups).
    z_chain: the layout/scale chain from ``z`` to the next operation.
    bias_leaf: index of the bias leaf, or ``None``.
    bias: the chain from the bias leaf to the add.
  """

  kind: ClassVar[str] = "layer"
  op: int
  weight_leaf: int
  weight: Chain
  w_pos: int
  h_ref: tuple
  h_shape: tuple[int, ...]
  out_id: int
  z_shape: tuple[int, ...]
  fan_in: int
  fan_out: int
  z_chain: Chain | None = None
  bias_leaf: int | None = None
  bias: Chain | None = None

  @property
  def has_bias(self) -> bool:
    return self.bias_leaf is not None

  @property
  def groups(self) -> int:
    return 1

  @property
  def positions(self) -> int:
    """``T``, positions per example sharing the weight."""
    return 1

  def input_scale(self, dtype):
    """The constant factors on the weight and after ``z``: they go into
    ``A`` so that ``S`` is the gradient at the scaled pre-activation."""
    z_scales = self.z_chain.scales if self.z_chain else ()
    return scale_value(self.weight.scales + z_scales, dtype)

  def output_scale(self, dtype):
    return scale_value(self.z_chain.scales if self.z_chain else (), dtype)

  def bias_scale(self, dtype):
    return scale_value(self.bias.scales, dtype)

  def with_bias_column(self, a: Array) -> Array:
    """``a`` ``(..., fan_in)`` with the bias input appended if any."""
    if not self.has_bias:
      return a
    col = jnp.broadcast_to(self.bias_scale(a.dtype), a.shape[:-1] + (1,))
    return jnp.concatenate([a, col], axis=-1)

  def example_axes_h(self) -> set[int]:
    """Axes of the activation that may hold the examples of a batch."""
    return set(range(len(self.h_shape)))

  def example_axes_z(self) -> set[int]:
    return set(range(len(self.z_shape)))


# --------------------------------------------------------------------------
# dot_general: dense and shared-weight dense layers.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _DotLayer(Layer):
  h_contract: tuple[int, ...] = ()
  w_contract: tuple[int, ...] = ()

  @property
  def h_free(self) -> tuple[int, ...]:
    return tuple(d for d in range(len(self.h_shape))
                 if d not in self.h_contract)

  @property
  def positions(self) -> int:
    return math.prod(self.h_shape[d] for d in self.h_free)

  def example_axes_h(self) -> set[int]:
    return set(self.h_free)

  def weight_matrix(self, leaf: Array) -> Array:
    """``(fan_in, fan_out)``: contracted dims of ``W`` as rows."""
    w = replay(self.weight.nodes, leaf)
    free = tuple(d for d in range(w.ndim) if d not in self.w_contract)
    return jnp.transpose(w, self.w_contract + free).reshape(self.fan_in,
                                                            self.fan_out)

  def input_rows(self, h: Array) -> Array:
    """``(n, T, a)`` scaled layer inputs (bias column appended)."""
    n = h.shape[0]
    perm = (0,) + tuple(d + 1 for d in self.h_free + self.h_contract)
    a = jnp.transpose(h, perm).reshape(n, self.positions, self.fan_in)
    return self.with_bias_column(a * self.input_scale(a.dtype))

  def z_rows(self, z: Array) -> Array:
    """``(..., T, b)`` from pre-activation-shaped ``(..., *z_shape)``.

    ``dot_general`` orders its output as (free dims of the left operand,
    free dims of the right one).
    """
    lead = z.shape[: z.ndim - len(self.z_shape)]
    t, b = self.positions, self.fan_out
    if self.w_pos == 1:
      return z.reshape(lead + (t, b))
    return jnp.swapaxes(z.reshape(lead + (b, t)), -1, -2)


@dataclasses.dataclass(frozen=True)
class DenseLayer(_DotLayer):
  """One output row per example (``T = 1``).

  Factors (as ``ngdjax.mlp``'s ``layer_factors``): ``inputs`` ``(n, a)``
  (scaled as they enter the product, a constant column appended for the
  bias), ``output_grads`` ``(n, r, b)``.
  """

  kind: ClassVar[str] = "dense"

  def factors(self, h: Array, g: Array) -> LayerFactors:
    a = self.input_rows(h)[:, 0]
    s = self.z_rows(g)[:, :, 0] / self.output_scale(g.dtype)
    return LayerFactors(a, s.astype(a.dtype))

  def expand(self, f: LayerFactors):
    return f.inputs[:, None, None, :], f.output_grads[:, :, None, None, :]


@dataclasses.dataclass(frozen=True)
class SharedDenseLayer(_DotLayer):
  """One weight at ``T`` positions of each example (tokens, heads).

  Factors: ``inputs`` ``(n, T, a)`` (scaled, bias column appended),
  ``output_grads`` ``(n, r, T, b)``.
  """

  kind: ClassVar[str] = "shared"

  def factors(self, h: Array, g: Array) -> LayerFactors:
    a = self.input_rows(h)
    s = self.z_rows(g) / self.output_scale(g.dtype)
    return LayerFactors(a, s.astype(a.dtype))

  def expand(self, f: LayerFactors):
    return f.inputs[:, :, None, :], f.output_grads[:, :, :, None, :]


def _x_operand(an: Analysis, node, index: int):
  """Operand ``index`` of ``node`` when it is a value computed from the
  inputs ``x`` (a layer's data side), else ``None``."""
  ref = node.ins[index]
  return ref if ref[0] == "v" and ref[1] in an.x_dep else None


def _weight_op(an: Analysis, chain: Chain, weight_pos: int, data_pos: int,
               reasons: tuple[str, str]):
  """``(op index, node, data operand)`` of the op that uses the leaf as
  operand ``weight_pos``, or the reason it is no layer: ``reasons[0]`` when
  the leaf is another operand, ``reasons[1]`` when operand ``data_pos``
  does not depend on the inputs."""
  k, pos = chain.use
  node = an.graph.nodes[k]
  if pos != weight_pos:
    return reasons[0]
  h_ref = _x_operand(an, node, data_pos)
  if h_ref is None:
    return reasons[1]
  return k, node, h_ref


def match_dot(an: Analysis, li: int, chain: Chain):
  """A dense or shared-weight layer fed by leaf ``li``, or the reason not."""
  graph = an.graph
  k, pos = chain.use
  node = graph.nodes[k]
  (lc, rc), (lb, rb) = node.params["dimension_numbers"]
  if lb or rb:
    return "dot_general with batch dimensions"
  h_ref = _x_operand(an, node, 1 - pos)
  if h_ref is None:
    return "dot_general with an input-independent operand"
  h_shape = graph.shape(h_ref[1])
  w_shape = graph.shape(chain.end)
  h_contract = tuple(int(d) for d in (lc if pos == 1 else rc))
  w_contract = tuple(int(d) for d in (rc if pos == 1 else lc))
  fan_in = math.prod(w_shape[d] for d in w_contract)
  fan_out = math.prod(w_shape) // max(fan_in, 1)
  positions = math.prod(h_shape[d] for d in range(len(h_shape))
                        if d not in h_contract)
  cls = DenseLayer if positions == 1 else SharedDenseLayer
  return cls(op=k, weight_leaf=li, weight=chain, w_pos=pos, h_ref=h_ref,
             h_shape=h_shape, out_id=node.outs[0],
             z_shape=graph.shape(node.outs[0]), fan_in=fan_in,
             fan_out=fan_out, h_contract=h_contract, w_contract=w_contract)


# --------------------------------------------------------------------------
# Convolutions.
# --------------------------------------------------------------------------

_SPATIAL = "HWDEFGJKLMPQRSTUVXYZ"  # letters for canonical dimension strings


@dataclasses.dataclass(frozen=True)
class ConvLayer(Layer):
  """A ``lax.conv_general_dilated`` whose kernel is a parameter leaf.

  The convolution's own parameters are kept: ``window_strides``,
  ``padding`` (explicit ``(low, high)`` pairs), ``lhs_dilation``,
  ``rhs_dilation``, ``feature_group_count`` (``G``), ``dimension_numbers``
  (the traced ``ConvDimensionNumbers``), the kernel's ``filter_shape``
  (spatial) and ``in_channels`` / ``out_channels``.

  Factors are in a canonical channels-last layout, whatever the model's:
  ``inputs`` ``(n, *in_spatial, in_channels)``, the activation as fed to
  the convolution (unscaled); ``output_grads`` ``(n, r, *out_spatial,
  out_channels)``, the gradient of each output row at the convolution's
  output (divided by a constant factor after it, if any). ``patches``
  turns ``inputs`` into ``A`` ``(n, T, G, a)``; the layer matrix ``M`` is
  ``(a, out_channels)`` with rows ordered (input channel of the group,
  then the kernel's spatial positions, row-major), bias last.
  """

  kind: ClassVar[str] = "conv"
  window_strides: tuple[int, ...] = ()
  padding: tuple[tuple[int, int], ...] = ()
  lhs_dilation: tuple[int, ...] = ()
  rhs_dilation: tuple[int, ...] = ()
  feature_group_count: int = 1
  dimension_numbers: tuple = ()
  filter_shape: tuple[int, ...] = ()
  in_channels: int = 0
  out_channels: int = 0
  out_spatial: tuple[int, ...] = ()

  @property
  def groups(self) -> int:
    return self.feature_group_count

  def example_axes_h(self) -> set[int]:
    return {int(self.dimension_numbers.lhs_spec[0])}

  def example_axes_z(self) -> set[int]:
    return {int(self.dimension_numbers.out_spec[0])}

  @property
  def positions(self) -> int:
    return math.prod(self.out_spatial)

  def _canonical(self, value: Array, spec, lead: int) -> Array:
    """``(*lead, *shape per spec)`` -> ``(*lead, *spatial, channels)``;
    the spec's batch dimension (size 1 per example) is dropped."""
    batch, feature, *spatial = (lead + int(d) for d in spec)
    perm = tuple(range(lead)) + (batch, *spatial, feature)
    out = jnp.transpose(value, perm)
    return out.reshape(out.shape[:lead] + out.shape[lead + 1:])

  def weight_matrix(self, leaf: Array) -> Array:
    rhs = replay(self.weight.nodes, leaf)
    out_dim, in_dim, *spatial = (int(d) for d in
                                 self.dimension_numbers.rhs_spec)
    return jnp.transpose(rhs, (in_dim, *spatial, out_dim)).reshape(
        self.fan_in, self.fan_out)

  def z_rows(self, z: Array) -> Array:
    lead = z.ndim - len(self.z_shape)
    out = self._canonical(z, self.dimension_numbers.out_spec, lead)
    return out.reshape(out.shape[:lead] + (self.positions, self.fan_out))

  def factors(self, h: Array, g: Array) -> LayerFactors:
    inputs = self._canonical(h, self.dimension_numbers.lhs_spec, 1)
    s = self._canonical(g, self.dimension_numbers.out_spec, 2)
    s = s / self.output_scale(g.dtype)
    return LayerFactors(inputs, s.astype(inputs.dtype))

  def patches(self, inputs: Array) -> Array:
    """``A`` ``(n, T, G, a)``: the (scaled) input patch of every output
    position, in the row order of ``M``, with the bias input appended."""
    nd = len(self.filter_shape)
    sp = _SPATIAL[:nd]
    spec = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    p = jax.lax.conv_general_dilated_patches(
        inputs, self.filter_shape, self.window_strides, self.padding,
        lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation,
        dimension_numbers=spec, precision=jax.lax.Precision.HIGHEST)
    n = inputs.shape[0]
    # Patch features are ordered (input channel, kernel position); a group
    # reads a contiguous block of input channels.
    p = p.reshape(n, self.positions, self.groups, self.fan_in)
    return self.with_bias_column(p * self.input_scale(p.dtype))

  def expand(self, f: LayerFactors):
    n, r = f.output_grads.shape[:2]
    s = f.output_grads.reshape(n, r, self.positions, self.groups,
                               self.fan_out // self.groups)
    return self.patches(f.inputs), s


def match_conv(an: Analysis, li: int, chain: Chain):
  """A convolution whose kernel is leaf ``li``, or the reason not."""
  graph = an.graph
  found = _weight_op(an, chain, 1, 0,
                     ("convolution input, not its kernel",
                      "convolution of an input-independent operand"))
  if isinstance(found, str):
    return found
  k, node, h_ref = found
  pos, prm = 1, node.params
  if prm["batch_group_count"] != 1:
    return "convolution with batch_group_count > 1"
  dn = prm["dimension_numbers"]
  rhs_shape = graph.shape(chain.end)
  lhs_shape = graph.shape(h_ref[1])
  z_shape = graph.shape(node.outs[0])
  out_dim, in_dim, *rhs_spatial = (int(d) for d in dn.rhs_spec)
  filter_shape = tuple(rhs_shape[d] for d in rhs_spatial)
  cin = lhs_shape[int(dn.lhs_spec[1])]
  cout = rhs_shape[out_dim]
  return ConvLayer(
      op=k, weight_leaf=li, weight=chain, w_pos=pos, h_ref=h_ref,
      h_shape=lhs_shape, out_id=node.outs[0], z_shape=z_shape,
      fan_in=rhs_shape[in_dim] * math.prod(filter_shape), fan_out=cout,
      window_strides=tuple(prm["window_strides"]),
      padding=tuple(tuple(p) for p in prm["padding"]),
      lhs_dilation=tuple(prm["lhs_dilation"]),
      rhs_dilation=tuple(prm["rhs_dilation"]),
      feature_group_count=int(prm["feature_group_count"]),
      dimension_numbers=dn, filter_shape=filter_shape, in_channels=cin,
      out_channels=cout,
      out_spatial=tuple(z_shape[int(d)] for d in dn.out_spec[2:]))


# The primitive that consumes a leaf (after layout operations and constant
# factors) -> the function that tries to make it a layer.
MATCHERS = {
    "dot_general": match_dot,
    "conv_general_dilated": match_conv,
}


def bias_rows(layer: Layer, z_chain: Chain, bias: Chain, leaf_shape,
              z_end_shape) -> bool:
  """Whether ``bias`` (a chain from a leaf to the add after ``z_chain``)
  adds the same ``fan_out`` values at every position of the layer.

  Checked on concrete integer-valued entries (layout operations only, so
  exact), at trace time.
  """
  size = math.prod(leaf_shape)
  if size != layer.fan_out:
    return False
  with jax.ensure_compile_time_eval():
    beta = jnp.arange(size, dtype=jnp.float32).reshape(leaf_shape)
    rows = bias_to_rows(layer, z_chain, bias, beta, z_end_shape)
    rows = np.asarray(rows)
  return bool(np.all(rows == rows[:1]) and np.array_equal(
      np.sort(rows[0]), np.arange(size)))


def bias_to_rows(layer: Layer, z_chain: Chain, bias: Chain, leaf: Array,
                 z_end_shape) -> Array:
  """The bias as added at each position, ``(T, b)`` in ``M``'s columns."""
  t = replay(bias.nodes, leaf)  # the add's operand
  # ``add`` broadcasts unit dimensions of its operands.
  t = jnp.broadcast_to(t, z_end_shape)
  z_spec = jax.ShapeDtypeStruct(layer.z_shape, t.dtype)
  if z_chain.nodes:
    (t,) = jax.linear_transpose(lambda z: replay(z_chain.nodes, z),
                                z_spec)(t)
  return layer.z_rows(t.reshape(layer.z_shape))



# --------------------------------------------------------------------------
# Elementwise scales: normalisation gains (and their shifts as the bias).
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScaleLayer(Layer):
  """``z = h * gamma`` with ``gamma`` (``d`` entries) repeated over ``T``
  positions, e.g. a layer norm's scale; a shift added after it is its
  bias (``M`` is ``(1 + has_bias, d)``: rows ``gamma`` and the shift).

  In the common form each feature is its own group (``G = d``, ``a = 1``
  plus the bias, ``b_g = 1``), so the Gram of the layer is that of
  ``d (1 + has_bias)`` parameters. Factors: ``inputs`` ``(n, T, d)`` (the
  scaled ``h``), ``output_grads`` ``(n, r, T, d)``.
  """

  kind: ClassVar[str] = "norm"
  order: tuple[int, ...] = ()  # flat z index of (feature, position) pairs
  shift: bool = False  # z = h + gamma: the input is a constant one

  @property
  def positions(self) -> int:
    return len(self.order) // self.fan_out

  @property
  def groups(self) -> int:
    return self.fan_out

  def _rows(self, value: Array, lead: int) -> Array:
    flat = value.reshape(value.shape[:lead] + (-1,))
    picked = jnp.take(flat, jnp.asarray(self.order), axis=-1)
    picked = picked.reshape(value.shape[:lead] + (self.fan_out,
                                                   self.positions))
    return jnp.swapaxes(picked, -1, -2)

  def weight_matrix(self, leaf: Array) -> Array:
    w = jnp.broadcast_to(replay(self.weight.nodes, leaf), self.z_shape)
    return self._rows(w, 0)[:1]

  def z_rows(self, z: Array) -> Array:
    return self._rows(z, z.ndim - len(self.z_shape))

  def factors(self, h: Array, g: Array) -> LayerFactors:
    # h may broadcast over features (flax's LayerNorm multiplies its scale
    # into rsqrt(var) first: the tap is then that product).
    h = jnp.broadcast_to(h, h.shape[:1] + self.z_shape)
    if self.shift:
      h = jnp.ones_like(h)
    a = self._rows(h, 1) * self.input_scale(h.dtype)
    s = self._rows(g, 2) / self.output_scale(g.dtype)
    return LayerFactors(a, s.astype(a.dtype))

  def expand(self, f: LayerFactors):
    return (self.with_bias_column(f.inputs[..., None]),
            f.output_grads[..., None])


def match_scale(an: Analysis, li: int, chain: Chain):
  """An elementwise scale by leaf ``li`` (replicated over positions)."""
  graph = an.graph
  k, pos = chain.use
  node = graph.nodes[k]
  h_ref = node.ins[1 - pos]
  z_shape = graph.shape(node.outs[0])
  if h_ref[0] != "v" or h_ref[1] not in an.x_dep:
    return f"{node.name} with an input-independent value"
  h_shape = graph.shape(h_ref[1])
  if len(h_shape) != len(z_shape) or any(
      a not in (1, b) for a, b in zip(h_shape, z_shape, strict=True)):
    return "multiplies an activation of another shape"
  d = math.prod(graph.shape(graph.in_ids[li]))
  with jax.ensure_compile_time_eval():
    idx = jnp.arange(d, dtype=jnp.float32).reshape(graph.shape(
        graph.in_ids[li]))
    idx = np.asarray(jnp.broadcast_to(replay(chain.nodes, idx), z_shape))
  flat = idx.reshape(-1).astype(np.int64)
  counts = np.bincount(flat, minlength=d)
  if np.any(counts != counts[0]) or counts[0] == 0:
    return "scale not repeated evenly over positions"
  order = tuple(int(i) for i in np.argsort(flat, kind="stable"))
  return ScaleLayer(op=k, weight_leaf=li, weight=chain, w_pos=pos,
                    h_ref=h_ref, h_shape=h_shape, out_id=node.outs[0],
                    z_shape=z_shape, fan_in=1, fan_out=d, order=order,
                    shift=node.name == "add")


MATCHERS["mul"] = match_scale


# --------------------------------------------------------------------------
# Embeddings: rows of a table picked by integer tokens.
# --------------------------------------------------------------------------

# ``lax.GatherScatterMode`` names whose out-of-range tokens read nothing
# (``jnp.take``'s default fills them), or the nearest row (clip).
_FILL_MODES = ("FILL_OR_DROP",)
_CLIP_MODES = ("CLIP",)


@dataclasses.dataclass(frozen=True)
class EmbedLayer(Layer):
  """``z[t] = W[tok_t]``: a ``gather`` of rows of a ``(V, D)`` table by
  integer tokens computed from the inputs (``flax.linen.Embed``,
  ``equinox.nn.Embedding``, ``jnp.take(W, ids, axis=0)``, ``W[ids]``).

  As a matrix product, ``z[t] = onehot(tok_t) @ W``: a shared-weight layer
  with one-hot inputs (``fan_in = V``, ``fan_out = D``, ``T`` tokens per
  example, ``M = W``, no bias). The one-hot is never formed by the Gram
  (``gram_forms``' ``"embed"`` form: ``A_it . A_jt'`` is ``[tok_it ==
  tok_jt']``).

  Factors: ``inputs`` ``(n, T)`` the tokens (``int32``; a token out of
  range of a filling gather is mapped to 0 with its gradient zeroed, a
  clipping gather's is clipped), ``output_grads`` ``(n, r, T, D)`` the
  gradients at the picked rows, constant factors on the table or after
  the gather folded in. ``expand`` gives the common form with the one-hot
  ``A`` ``(n, T, 1, V)`` (dense: for small ``V`` only).
  """

  kind: ClassVar[str] = "embed"
  mode: str = "PROMISE_IN_BOUNDS"
  component: int = 0  # of the index vector that picks the row

  @property
  def positions(self) -> int:
    return math.prod(self.h_shape[:-1])

  def example_axes_h(self) -> set[int]:
    return set(range(len(self.h_shape) - 1))

  def weight_matrix(self, leaf: Array) -> Array:
    return replay(self.weight.nodes, leaf).reshape(self.fan_in, self.fan_out)

  def z_rows(self, z: Array) -> Array:
    lead = z.shape[: z.ndim - len(self.z_shape)]
    return z.reshape(lead + (self.positions, self.fan_out))

  def factors(self, h: Array, g: Array) -> LayerFactors:
    n, v = h.shape[0], self.fan_in
    ids = h[..., self.component].reshape(n, self.positions).astype(
        jnp.int32)
    s = self.z_rows(g) * self.input_scale(g.dtype) / self.output_scale(
        g.dtype)
    if self.mode in _CLIP_MODES:
      ids = jnp.clip(ids, 0, v - 1)
    else:  # out of range: no row is read (fill) or none is promised
      ok = (ids >= 0) & (ids < v)
      s = s * ok[:, None, :, None].astype(s.dtype)
      ids = jnp.where(ok, ids, 0)
    return LayerFactors(ids, s)

  def expand(self, f: LayerFactors):
    a = jax.nn.one_hot(f.inputs, self.fan_in, dtype=f.output_grads.dtype)
    return a[:, :, None, :], f.output_grads[:, :, :, None, :]


def match_gather(an: Analysis, li: int, chain: Chain):
  """An embedding lookup of rows of leaf ``li``, or the reason not."""
  graph = an.graph
  found = _weight_op(an, chain, 0, 1,
                     ("gather indices, not its table",
                      "gather with input-independent indices"))
  if isinstance(found, str):
    return found
  k, node, h_ref = found
  pos, prm = 0, node.params
  dn = prm["dimension_numbers"]
  w_shape = graph.shape(chain.end)
  h_shape = graph.shape(h_ref[1])
  z_shape = graph.shape(node.outs[0])
  rest = w_shape[1:]
  smap = tuple(int(d) for d in dn.start_index_map)
  collapsed = tuple(int(d) for d in dn.collapsed_slice_dims)
  mode = getattr(prm.get("mode"), "name", str(prm.get("mode")))
  kept = len(w_shape) - len(collapsed)  # slice dims in the output
  # Row 0.. of the table's axis 0, whole rows: the start indices of the
  # other axes (an index vector (row, 0) of ``W[i]`` under ``vmap``) can
  # only be 0 when clipped or promised in bounds.
  if (0 not in smap or collapsed not in ((0,), ())
      or tuple(getattr(dn, "operand_batching_dims", ()))
      or tuple(prm["slice_sizes"]) != (1, *rest)
      or not h_shape or h_shape[-1] != len(smap)
      or (len(smap) > 1 and mode in _FILL_MODES)
      or tuple(dn.offset_dims) != tuple(range(len(z_shape) - kept,
                                              len(z_shape)))):
    return "gather that is not a lookup of whole rows"
  return EmbedLayer(op=k, weight_leaf=li, weight=chain, w_pos=pos,
                    h_ref=h_ref, h_shape=h_shape, out_id=node.outs[0],
                    z_shape=z_shape, fan_in=w_shape[0],
                    fan_out=math.prod(rest), mode=mode,
                    component=smap.index(0))


MATCHERS["gather"] = match_gather

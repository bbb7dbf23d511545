"""Jacobians, Jacobian products and the empirical Gram matrix ``G = J J^T``.

Conventions (docs/math.md): outputs ``u`` are ``(n, c)`` and flattened
row-major, ``vec(u)[i * c + k] = u[i, k]`` (length ``N = n c``); parameters are
flattened in ``jax.flatten_util.ravel_pytree`` order; ``G = J J^T`` has no
``1/n``.

Every function takes either a ``Model`` or a bare ``apply(params, x)`` with
any params pytree (flax variables, equinox arrays, plain dicts) and inputs
``x`` of shape ``(n, ...)`` (vectors ``(n, d)``, images ``(n, H, W, C)``);
outputs are ``(n,)`` or ``(n, c)``. The outputs of example ``i`` must depend
on ``x[i]`` alone (no batch statistics), which is what makes per-example and
chunked evaluation exact.

``gram`` has several implementations of one quantity (after neural-tangents'
``NtkImplementation``), all tested against a dense ``jax.jacrev`` reference:

* ``"jacobian"``: materialise per-example Jacobians (``(N, p)`` in total) and
  contract leaf by leaf, ``G = sum_leaf J_leaf J_leaf^T``. ``O(N^2 p)`` flops,
  ``O(N p)`` memory. Fastest for small ``p``.
* ``"products"``: never holds ``J``. For a block of examples ``C``, VJPs give
  the rows ``J_C`` (``(|C| c, p)``) and JVPs with those rows as tangents give
  ``J_D J_C^T`` for every block ``D``. ``O(N^2 p)`` flops, memory bounded by
  ``chunk_size`` (``O(chunk c p)`` plus the activations of one block).
* ``"structured"``: the closed form of dense layers:
  ``G = sum_l (A_l A_l^T) (x) (B_l B_l^T)``, an elementwise product of an
  input Gram and a backpropagated-gradient Gram per layer. For the two-layer
  net this is ``(X X^T) * (S S^T) / m`` (docs/math.md): ``O(n^2 (d + m))``
  instead of ``O(n^2 m d)``. ``Model``s provide their layer factors; for a
  bare ``apply`` the dense layers (``dot_general`` of an activation with a
  parameter leaf, plus its bias) are found in the traced computation
  (``ngdjax.describe_structure``), and every other leaf (layer norms,
  convolution kernels, shared weights) adds its exact ``J_g J_g^T`` from a
  per-example Jacobian of those leaves only. Exact for every model.
* ``"auto"``: ``"structured"`` for a ``Model`` with layer factors, and for a
  bare ``apply`` in which at least one dense layer is found and the generic
  leaves' Jacobian fits in ``AUTO_JACOBIAN_BYTES``; otherwise ``"jacobian"``
  when ``J`` fits in ``AUTO_JACOBIAN_BYTES``, else ``"products"``.

Example:

  >>> import jax, ngdjax
  >>> model = ngdjax.models.two_layer_relu(width=128)
  >>> params = model.init(jax.random.key(0), in_dim=4)
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (8, 4)))
  >>> ngdjax.gram(model, params, x).shape
  (8, 8)
  >>> ngdjax.jacobian(model, params, x).shape
  (8, 512)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec

from ngdjax._src import checks, gram_forms, parallel, precision, structure
from ngdjax._src.linalg import as_columns, pad_rows, self_outer
from ngdjax._src.models import LayerFactors, Model
from ngdjax._src.typing import Array, Params

ApplyOrModel = Callable[[Params, Array], Array] | Model

# "auto" materialises the Jacobian only below this size (bytes).
AUTO_JACOBIAN_BYTES = 1 << 28


class GramMethod(enum.Enum):
  """Implementations of ``gram``; see the module docstring for trade-offs.

  ``JACOBIAN``: per-example Jacobians, contracted leaf by leaf (small ``p``).
  ``PRODUCTS``: VJPs and JVPs, never holds ``J`` (bounded memory).
  ``STRUCTURED``: ``sum_l (A_l A_l^T) (x) (B_l B_l^T)`` over dense layers,
  from a ``Model``'s layer factors or, for a bare ``apply``, from the dense
  layers found automatically in its traced computation, plus the exact
  Gram of the parameters on the generic path (``describe_structure``).
  ``AUTO``: ``STRUCTURED`` when a ``Model`` has layer factors or a bare
  ``apply`` has at least one dense layer (and its generic Jacobian fits in
  ``AUTO_JACOBIAN_BYTES``), else ``JACOBIAN`` or ``PRODUCTS`` by size.
  """

  JACOBIAN = "jacobian"
  PRODUCTS = "products"
  STRUCTURED = "structured"
  AUTO = "auto"


def split_model(apply_or_model: ApplyOrModel) -> tuple[Callable, Model | None]:
  """Returns ``(apply, model_or_None)`` for a ``Model`` or a bare function."""
  if isinstance(apply_or_model, Model):
    return apply_or_model.apply, apply_or_model
  if isinstance(apply_or_model, structure.Structure):
    return apply_or_model.apply, None
  if callable(apply_or_model):
    return apply_or_model, None
  raise ValueError(
      "apply_or_model must be an ngdjax Model or a function "
      f"apply(params, x), got {type(apply_or_model).__name__}"
  )


def outputs_2d(apply: Callable, params: Params, x: Array) -> Array:
  """``apply`` with outputs as ``(n, c)`` (``linalg.as_columns``)."""
  return as_columns(apply(params, x))


def _per_example(apply: Callable) -> Callable:
  """``(params, x_i (d,)) -> (c,)`` from a batched ``apply``."""
  return lambda params, xi: outputs_2d(apply, params, xi[None])[0]


def _check_chunk(chunk_size):
  return checks.check_chunk_size(chunk_size)


def check_params_and_inputs(params, x, name="x", apply_or_model=None,
                            any_shape=None):
  """Validates a params pytree and an ``(n, d)`` input array (ValueError).

  With ``apply_or_model`` the params are checked against the model: a
  ``Model``'s ``init`` structure (missing/extra keys, leaf shapes, named by
  path), and for a bare ``apply`` an abstract evaluation on one example.
  Inputs may be ``(n, ...)`` of any rank for a bare ``apply`` (images
  ``(n, H, W, C)``); ``any_shape`` overrides that choice.

  Returns:
    ``x`` as an array (lists are converted).
  """
  if any_shape is None:
    any_shape = apply_or_model is not None and not isinstance(
        apply_or_model, Model)
  x = checks.check_inputs(name, x, any_shape=any_shape)
  if apply_or_model is None:
    checks.check_params(params, floating=False)
    return x
  apply, model = split_model(apply_or_model)
  checks.check_model_params(model, params, x)
  if model is None:  # a Model's params were checked against its init
    checks.check_apply(apply, params, x)
  return x


def output_dim(apply_or_model: ApplyOrModel, params: Params, x: Array) -> int:
  """Number of outputs ``c`` (from the model, or by shape evaluation)."""
  apply, model = split_model(apply_or_model)
  if model is not None:
    return model.out_dim
  out = jax.eval_shape(lambda p, z: outputs_2d(apply, p, z), params,
                       checks.leading_rows(x))
  return out.shape[1]


# --------------------------------------------------------------------------
# Jacobian and Jacobian-vector products.
# --------------------------------------------------------------------------


@precision.curvature
def per_example_jacobian(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    chunk_size: int | None = None,
) -> Params:
  """Per-example Jacobians as a pytree like ``params``, leaves ``(n, c, *s)``.

  Computed by ``vmap`` of reverse mode over examples (``O(n c p)``), in blocks
  of ``chunk_size`` examples via ``lax.map``.
  """
  apply, _ = split_model(apply_or_model)
  chunk_size = _check_chunk(chunk_size)
  jac_one = jax.jacrev(_per_example(apply))
  return jax.lax.map(lambda xi: jac_one(params, xi), x, batch_size=chunk_size)


@precision.curvature
def jacobian(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    chunk_size: int | None = None,
) -> Array:
  """The Jacobian ``J = d vec(u) / d theta``.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x) -> (n, c)``.
    params: parameter pytree.
    x: inputs, ``(n, d)`` (``(n, ...)`` for a bare ``apply``).
    chunk_size: examples per ``vmap`` block (bounds intermediate memory).

  Returns:
    ``(n * c, p)`` array, columns in ``ravel_pytree(params)`` order.
  """
  x = check_params_and_inputs(params, x, apply_or_model=apply_or_model)
  chunk_size = _check_chunk(chunk_size)
  per_ex = per_example_jacobian(apply_or_model, params, x, chunk_size)
  n = x.shape[0]
  leaves = jax.tree_util.tree_leaves(per_ex)
  c = leaves[0].shape[1]
  # ravel_pytree flattens leaves in tree order, each leaf row-major.
  return jnp.concatenate([leaf.reshape(n * c, -1) for leaf in leaves], axis=1)


def _blocks(x: Array, chunk_size: int) -> tuple[Array, int]:
  """``x`` padded and reshaped to ``(blocks, chunk_size, ...)``; pad count."""
  xp, pad = pad_rows(x, chunk_size)
  return xp.reshape((-1, chunk_size) + x.shape[1:]), pad


def outputs(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    chunk_size: int | None = None,
) -> Array:
  """``u = apply(params, x)`` as ``(n, c)``, in blocks of ``chunk_size``."""
  apply, _ = split_model(apply_or_model)
  if chunk_size is None or chunk_size >= x.shape[0]:
    return outputs_2d(apply, params, x)
  xb, _ = _blocks(x, chunk_size)
  u = jax.lax.map(lambda xc: outputs_2d(apply, params, xc), xb)
  return u.reshape(-1, u.shape[-1])[: x.shape[0]]


@precision.curvature
def jvp(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    tangent: Params,
    chunk_size: int | None = None,
) -> Array:
  """``J t`` as a flat ``(n * c,)`` vector; ``tangent`` is like ``params``.

  With ``chunk_size`` the examples are processed in blocks (``lax.map``), so
  activation memory is that of ``chunk_size`` examples.

  Raises:
    ValueError: on NaN/Inf or malformed ``params``, ``x`` or ``tangent``
      (``tangent`` must have the structure and leaf shapes of ``params``),
      or a ``chunk_size`` that is not a positive integer.
  """
  apply, _ = split_model(apply_or_model)
  x = check_params_and_inputs(params, x, apply_or_model=apply_or_model)
  chunk_size = _check_chunk(chunk_size)
  checks.check_params(tangent, params, name="tangent")

  def one(xc):
    return jax.jvp(lambda p: outputs_2d(apply, p, xc), (params,),
                   (tangent,))[1]

  if chunk_size is None or chunk_size >= x.shape[0]:
    return one(x).reshape(-1)
  xb, _ = _blocks(x, chunk_size)
  out = jax.lax.map(one, xb)
  return out.reshape(-1)[: x.shape[0] * out.shape[-1]]


def _check_output_vector_call(apply_or_model, params, x, v, chunk_size,
                              v_layout):
  """The checks ``vjp`` and ``gram_vp`` share, before tracing.

  ``v`` has ``n * c`` entries: also ``(n, c)`` when ``v_layout`` is
  ``"per_example"``, or ``(n c, k)`` (``k`` vectors) when ``"stacked"``.

  Returns:
    ``(apply, x, chunk_size, n, c, v)``, validated.
  """
  apply, _ = split_model(apply_or_model)
  x = check_params_and_inputs(params, x, apply_or_model=apply_or_model)
  chunk_size = _check_chunk(chunk_size)
  n = x.shape[0]
  c = output_dim(apply_or_model, params, x)
  shapes = ((n, c),) if v_layout == "per_example" else ((n * c, -1),)
  v = checks.check_vector("v", v, n * c, of=f"n * c = {n} * {c}",
                          shapes=shapes)
  return apply, x, chunk_size, n, c, v


@precision.curvature
def vjp(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    v: Array,
    chunk_size: int | None = None,
) -> Params:
  """``J^T v``, a pytree like ``params``; ``v`` is ``(n c,)`` or ``(n, c)``.

  With ``chunk_size`` the sum over examples is accumulated block by block
  (``lax.scan``; padded rows carry ``v = 0``), bounding activation memory.

  Raises:
    ValueError: on NaN/Inf or malformed ``params``, ``x`` or ``v`` (``v``
      must have ``n * c`` entries), or a ``chunk_size`` that is not a
      positive integer.
  """
  apply, x, chunk_size, n, c, v = _check_output_vector_call(
      apply_or_model, params, x, v, chunk_size, v_layout="per_example")

  def one(xc, vc):
    u, pullback = jax.vjp(lambda p: outputs_2d(apply, p, xc), params)
    return pullback(vc.reshape(u.shape).astype(u.dtype))[0]

  if chunk_size is None or chunk_size >= n:
    return one(x, v)
  v2 = v.reshape(n, -1)
  xb, pad = _blocks(x, chunk_size)
  vb, _ = _blocks(jnp.concatenate([v2, jnp.zeros((pad,) + v2.shape[1:],
                                                 v2.dtype)]) if pad else v2,
                  chunk_size)

  def accumulate(total, block):
    return jax.tree_util.tree_map(jnp.add, total, one(*block)), None

  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  return jax.lax.scan(accumulate, zero, (xb, vb))[0]


@precision.curvature
def gram_vp(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    v: Array,
    chunk_size: int | None = None,
) -> Array:
  """Gram-vector product ``G v = J (J^T v)`` without forming ``G`` or ``J``.

  One VJP and one JVP (``O(n c p)`` each, like two gradient evaluations). With
  ``chunk_size`` both run over blocks of examples (``J^T v`` is accumulated by
  ``lax.scan``), so activation memory is that of ``chunk_size`` examples.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree.
    x: ``(n, d)`` inputs.
    v: ``(n * c,)`` vector, or ``(n * c, k)`` for ``k`` vectors at once.
    chunk_size: examples per block; ``None`` processes all at once.

  Returns:
    ``G v`` with the shape of ``v``.

  Raises:
    ValueError: on NaN/Inf or malformed ``params``, ``x`` or ``v`` (``v``
      must have ``n * c`` rows), or a ``chunk_size`` that is not a positive
      integer.
  """
  apply, x, chunk_size, n, c, v = _check_output_vector_call(
      apply_or_model, params, x, v, chunk_size, v_layout="stacked")
  if v.ndim == 2:
    return jax.vmap(
        lambda col: gram_vp(apply_or_model, params, x, col, chunk_size),
        in_axes=1,
        out_axes=1,
    )(v)
  jt_v = vjp(apply, params, x, v.reshape(n, c), chunk_size)
  return jvp(apply, params, x, jt_v, chunk_size)


def gram_operator(apply_or_model: ApplyOrModel, params: Params, x: Array,
                  chunk_size: int | None) -> Callable[[Array], Array]:
  """``vec (n c,) -> G vec``, prepared once for the many products of an
  iterative solve.

  A ``Model`` with ``gram_product`` (``two_layer_relu``: its activation
  pattern computed here once and kept as bits, ``ngdjax._src.relu_pattern``)
  gives its own product; otherwise every call is ``gram_vp``. Inputs are
  not validated here (the callers' steps have done it).
  """
  product = (apply_or_model.gram_product
             if isinstance(apply_or_model, Model) else None)
  if product is None:
    return lambda vec: gram_vp(apply_or_model, params, x, vec,
                               chunk_size).astype(vec.dtype)
  n = x.shape[0]
  matvec = product(params, x, chunk_size)
  return lambda vec: matvec(vec.reshape(n, -1)).reshape(vec.shape).astype(
      vec.dtype)


# --------------------------------------------------------------------------
# Gram matrices.
# --------------------------------------------------------------------------


def _gram_jacobian(apply, params, x1, x2, chunk_size):
  j1 = per_example_jacobian(apply, params, x1, chunk_size)
  j2 = j1 if x2 is None else per_example_jacobian(apply, params, x2, chunk_size)
  total = 0.0
  for a, b in zip(
      jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2), strict=True
  ):
    a = a.reshape(a.shape[0] * a.shape[1], -1)
    b = b.reshape(b.shape[0] * b.shape[1], -1)
    total = total + a @ b.T
  return total


# Default block of the "products" method: at most this many examples, and
# at most AUTO_JACOBIAN_BYTES of Jacobian rows per block. A block of JVPs
# holds (block c) x block examples' activations, so the block is kept small.
PRODUCTS_MAX_BLOCK = 128


def _default_products_chunk(apply, params, x) -> int:
  p = ravel_pytree(params)[0].size
  c = jax.eval_shape(lambda p_, z: outputs_2d(apply, p_, z), params,
                     checks.leading_rows(x)).shape[1]
  rows = AUTO_JACOBIAN_BYTES // max(1, c * p * x.dtype.itemsize)
  return int(max(1, min(PRODUCTS_MAX_BLOCK, rows)))


def _gram_products(apply, params, x1, x2, chunk_size):
  """``G[D, C] = J_D J_C^T``: rows of ``J_C`` by VJP, products by JVP."""
  x2 = x1 if x2 is None else x2
  n1, n2 = x1.shape[0], x2.shape[0]
  chunk = chunk_size or _default_products_chunk(apply, params, x1)
  chunk = min(chunk, max(n1, n2))
  jac_one = jax.jacrev(_per_example(apply))

  def column_block(xc):
    # Rows of J for the examples in xc: leaves (chunk, c, *s) -> (chunk c, *s).
    rows = jax.vmap(lambda xi: jac_one(params, xi))(xc)
    rows = jax.tree_util.tree_map(
        lambda leaf: leaf.reshape((-1,) + leaf.shape[2:]), rows
    )
    # J_D t for each row t, over blocks D of x1: (n1 c, chunk c).
    cols = jax.lax.map(
        lambda xd: jax.vmap(lambda t: jvp(apply, params, xd, t), out_axes=1)(
            rows
        ),
        pad_rows(x1, chunk)[0].reshape((-1, chunk) + x1.shape[1:]),
    )
    return cols.reshape(-1, cols.shape[-1])

  x2p, _ = pad_rows(x2, chunk)
  blocks = jax.lax.map(
      column_block, x2p.reshape((-1, chunk) + x2.shape[1:])
  )  # (blocks2, n1p c, chunk c)
  c = blocks.shape[-1] // chunk
  g = jnp.moveaxis(blocks, 0, 1).reshape(blocks.shape[1], -1)
  return g[: n1 * c, : n2 * c]


def structured_gram_from_factors(
    factors1: tuple[LayerFactors, ...],
    factors2: tuple[LayerFactors, ...] | None = None,
    chunk_size: int | None = None,
) -> Array:
  """``G = sum_l (A_l A_l^T) (x) (B_l B_l^T)`` from layer factors.

  ``G[(i, k), (j, q)] = sum_l (a_li . a_lj) (b_lik . b_ljq)`` with ``a`` the
  layer inputs and ``b`` the pre-activation gradients, i.e. the Jacobian rows
  ``vec(a_li b_lik^T)`` contracted without being formed.

  Args:
    factors1: per-layer factors of the row examples (``n1`` of them).
    factors2: of the column examples; ``None`` means the same as ``factors1``.
    chunk_size: row examples per block (bounds the ``(chunk, c, n2, c)``
      intermediate); ``None`` computes all rows at once.

  Returns:
    ``(n1 c, n2 c)`` array.
  """
  symmetric = factors2 is None
  factors2 = factors1 if factors2 is None else factors2
  n1, c = factors1[0].output_grads.shape[:2]
  n2 = factors2[0].output_grads.shape[0]

  def rows(block, against=factors2):
    total = 0.0
    for (a1, b1), f2 in zip(block, against, strict=True):
      input_gram = a1 @ f2.inputs.T  # (chunk, n2)
      if c == 1:
        grad_gram = b1[:, 0] @ f2.output_grads[:, 0].T
        total = total + input_gram * grad_gram
      else:
        grad_gram = jnp.einsum("ikb,jqb->ikjq", b1, f2.output_grads)
        total = total + input_gram[:, None, :, None] * grad_gram
    return total.reshape(total.shape[0] * c, -1)

  if chunk_size is None or chunk_size >= n1:
    if symmetric:
      return _self_gram(factors1)
    return rows(factors1)
  padded = []
  for a1, b1 in factors1:
    a1p, _ = pad_rows(a1, chunk_size)
    b1p, _ = pad_rows(b1, chunk_size)
    padded.append(
        LayerFactors(
            a1p.reshape(-1, chunk_size, a1.shape[1]),
            b1p.reshape((-1, chunk_size) + b1.shape[1:]),
        )
    )
  out = jax.lax.map(rows, tuple(padded))
  return out.reshape(-1, n2 * c)[: n1 * c]


def _self_gram(factors: tuple[LayerFactors, ...]) -> Array:
  """``sum_l (A_l A_l^T) (x) (B_l B_l^T)`` with symmetric products.

  Both factor Grams are symmetric, so ``linalg.self_outer`` multiplies only
  their upper blocks (measured: 0.5 to 0.67 of the time of ``S S^T`` at
  n = 1024 to 2048 on CPU).
  """
  n, c = factors[0].output_grads.shape[:2]
  total = 0.0
  for f in factors:
    input_gram = self_outer(f.inputs)  # (n, n)
    grad_gram = self_outer(f.output_grads.reshape(n * c, -1))  # (nc, nc)
    if c == 1:
      total = total + input_gram * grad_gram
    else:
      total = total + (grad_gram.reshape(n, c, n, c)
                       * input_gram[:, None, :, None]).reshape(n * c, n * c)
  return total


def structured_gram_vp(factors: tuple[LayerFactors, ...], v: Array) -> Array:
  """``G v = sum_l J_l (J_l^T v)`` from layer factors; ``v`` is ``(n, c)``.

  ``J_l^T v = A_l^T (sum_k v_k B_lk)`` is an ``(a_l, b_l)`` matrix and
  ``(J_l t)[i, k] = A_l[i] t B_l[i, k]``: ``4 n a_l b_l`` flops per layer,
  the cost of a JVP plus a VJP without re-running the network (for
  iterative solvers that reuse one set of factors).

  Returns:
    ``(n, c)`` array.
  """
  out = jnp.zeros_like(v)
  for f in factors:
    t = f.inputs.T @ jnp.einsum("ik,ikb->ib", v, f.output_grads)
    out = out + jnp.einsum("ib,ikb->ik", f.inputs @ t, f.output_grads)
  return out


def _structure_and_forms(apply_or_model, params, x, block):
  """The model's ``Structure`` and each layer's Gram form for blocks of
  ``block`` examples (``gram_forms.choose_forms``)."""
  st = structure.model_structure(apply_or_model, params, x)
  c = output_dim(st.apply, params, x)
  itemsize = jnp.dtype(x.dtype).itemsize
  return st, gram_forms.choose_forms(st, block, c, itemsize)


def _gram_structured(apply_or_model, params, x1, x2, chunk_size):
  """``G`` from the model's structure: each layer in its cheapest exact
  form (``gram_forms``), generic leaves by their Jacobian."""
  n1 = x1.shape[0]
  n_max = max(n1, n1 if x2 is None else x2.shape[0])
  chunked = chunk_size is not None and chunk_size < n_max
  if x2 is None and chunked:
    # Block by block into one buffer.
    return gram_blocks(apply_or_model, params, x1, chunk_size,
                       GramMethod.STRUCTURED)
  st, forms = _structure_and_forms(apply_or_model, params, x1,
                                   chunk_size if chunked else n_max)

  def feats(x):
    return gram_forms.features(st, forms, params, x)

  if not chunked:
    f1 = feats(x1)
    if x2 is None:
      return gram_forms.self_gram(forms, f1)
    return gram_forms.cross(forms, f1, feats(x2))
  return _gram_structured_streamed(feats, forms, x1, x2, chunk_size)


def _gram_structured_streamed(feats, forms, x1, x2, chunk_size):
  """The cross-Gram block by block, never holding all features.

  For each block of rows the features are computed once, and for each
  block of columns again (``lax.map`` over both), so memory is the
  features of two blocks plus the output. The price is recomputing the
  column features once per row block: ``n / chunk`` extra factor passes
  (for the two-layer net ``2 n m d`` flops each, against the Gram's
  ``2 n^2 m``: a fraction ``d / chunk`` more work).
  """
  n1, n2 = x1.shape[0], x2.shape[0]
  rows_b, _ = _blocks(x1, chunk_size)
  cols_b, _ = _blocks(x2, chunk_size)

  def row_block(xr):
    fr = feats(xr)
    blocks = jax.lax.map(lambda xc: gram_forms.cross(forms, fr, feats(xc)),
                         cols_b)  # (col blocks, chunk c, chunk c)
    return jnp.moveaxis(blocks, 0, 1).reshape(blocks.shape[1], -1)

  g = jax.lax.map(row_block, rows_b)  # (row blocks, chunk c, n2p c)
  g = g.reshape(-1, g.shape[-1])
  c = g.shape[0] // rows_b.shape[0] // chunk_size
  return g[: n1 * c, : n2 * c]


def gram_blocks(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    block: int,
    method: str | GramMethod = "auto",
    *,
    lower_only: bool = False,
    diag_shift=0.0,
    dtype=None,
) -> Array:
  """``G + diag_shift I`` built block by block in one ``(N, N)`` buffer.

  The examples are cut into ``k = ceil(n / block)`` blocks (the last one
  starts at ``n - block``, overlapping its neighbour, so no padding and no
  final slice: every entry written is an exact entry of ``G``). A
  ``lax.fori_loop`` over row blocks ``I`` computes ``I``'s layer factors
  (or, for the generic methods, takes its inputs) once, then for each
  ``J < I`` the block ``G[I, J]`` from ``J``'s freshly computed factors,
  written in place with ``dynamic_update_slice`` (and its transpose into
  ``G[J, I]`` unless ``lower_only``), then the diagonal block from the
  symmetric product (``linalg.self_outer``). So only the lower block
  triangle is multiplied (``n^2 (d + m)`` flops for the two-layer net, the
  symmetric floor), nothing of size ``N^2`` exists besides the buffer, and
  the price is recomputing each column block's factors once per row block
  (a fraction ``~ d / block`` of the Gram's flops for the two-layer net).

  With ``lower_only=True`` the upper block triangle is left unwritten
  (partly zero): the input of ``jax.lax.linalg.cholesky(...,
  symmetrize_input=False)``, which reads the lower triangle only.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree.
    x: ``(n, d)`` inputs.
    block: examples per block.
    method: as in ``gram``; ``"auto"`` is resolved on one block.
    lower_only: write only the lower block triangle.
    diag_shift: scalar added to the diagonal (a damping ``lam``).
    dtype: of the buffer (default: that of the Gram blocks).

  Returns:
    ``(n c, n c)`` array.
  """
  n = x.shape[0]
  b = max(1, min(int(block), n))
  k = -(-n // b)
  resolved = resolve_gram_method(apply_or_model, params,
                                 checks.leading_rows(x, b), method)
  if resolved is GramMethod.STRUCTURED:
    st, forms = _structure_and_forms(apply_or_model, params, x, b)

    def factors(xb):
      return gram_forms.features(st, forms, params, xb)

    def cross(fi, fj):
      return gram_forms.cross(forms, fi, fj)

    def self_gram(fi):
      return gram_forms.self_gram(forms, fi)
  else:

    def factors(xb):
      return xb

    def cross(xi, xj):
      return gram(apply_or_model, params, xi, xj, method=resolved.value)

    def self_gram(xi):
      return gram(apply_or_model, params, xi, method=resolved.value)

  shape = jax.eval_shape(lambda xb: self_gram(factors(xb)),
                         checks.leading_rows(x, b))
  bc = shape.shape[0]  # block * c
  c = bc // b
  dtype = shape.dtype if dtype is None else dtype
  shift = jnp.asarray(diag_shift, dtype)

  def start(i):
    return jnp.minimum(i * b, n - b)

  def rows(i):
    return jax.lax.dynamic_slice_in_dim(x, start(i), b)

  def row_step(i, g):
    si = start(i) * c
    fi = factors(rows(i))

    def col_step(j, g):
      sj = start(j) * c
      blk = cross(fi, factors(rows(j))).astype(g.dtype)
      g = jax.lax.dynamic_update_slice(g, blk, (si, sj))
      if not lower_only:
        g = jax.lax.dynamic_update_slice(g, blk.T, (sj, si))
      return g

    g = jax.lax.fori_loop(0, i, col_step, g)
    # Written after every off-diagonal block of its rows, so the overlap of
    # the last block ends with the shifted diagonal.
    diag = self_gram(fi).astype(g.dtype)
    diag = diag + shift * jnp.eye(bc, dtype=g.dtype)
    return jax.lax.dynamic_update_slice(g, diag, (si, si))

  g0 = jnp.zeros((n * c, n * c), dtype)
  return jax.lax.fori_loop(0, k, row_step, g0)


def parse_gram_method(method, name: str = "method") -> GramMethod:
  """``method`` (a name or a ``GramMethod``) as a ``GramMethod``; the one
  check of every Gram-method argument (ValueError naming ``name``)."""
  try:
    return GramMethod(method)
  except ValueError:
    choices = [m.value for m in GramMethod]
    raise ValueError(
        f"{name} must be one of {choices}, got {method!r}"
    ) from None


def resolve_gram_method(
    apply_or_model: ApplyOrModel, params: Params, x: Array, method
) -> GramMethod:
  """The method ``"auto"`` stands for, for these arguments."""
  method = parse_gram_method(method)
  if method is not GramMethod.AUTO:
    return method
  st = structure.model_structure(apply_or_model, params, x)
  if st.plan is None:  # a Model's closed-form layer factors
    return GramMethod.STRUCTURED
  n_out = x.shape[0] * output_dim(st.apply, params, x)
  if st.layers:
    p_generic = sum(math.prod(g.shape) for g in st.report.generic)
    if n_out * p_generic * x.dtype.itemsize <= AUTO_JACOBIAN_BYTES:
      return GramMethod.STRUCTURED
  p = ravel_pytree(params)[0].size
  if n_out * p * x.dtype.itemsize <= AUTO_JACOBIAN_BYTES:
    return GramMethod.JACOBIAN
  return GramMethod.PRODUCTS


@precision.curvature
def gram(
    apply_or_model: ApplyOrModel,
    params: Params,
    x: Array,
    x2: Array | None = None,
    *,
    method: str | GramMethod = "auto",
    chunk_size: int | None = None,
    mesh=None,
) -> Array:
  """The empirical Gram (neural tangent kernel) matrix ``G = J J^T``.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x) -> (n, c)`` or
      ``(n,)``, with any params pytree.
    params: parameter pytree.
    x: ``(n, ...)`` inputs (rows of ``G``).
    x2: optional ``(n2, ...)`` inputs for a cross-Gram ``J(x) J(x2)^T`` (for
      predictions on test points); ``None`` means ``x2 = x``.
    method: ``"auto"``, ``"structured"``, ``"products"`` or ``"jacobian"``
      (see the module docstring for the trade-offs).
    chunk_size: examples per block; bounds the memory of every method's
      intermediates (``"products"`` never holds more than ``chunk_size``
      Jacobian rows; its default block is at most ``PRODUCTS_MAX_BLOCK``
      examples and ``AUTO_JACOBIAN_BYTES`` of rows; ``"structured"`` with a
      block streams the layer factors).
    mesh: optional one-axis ``jax.sharding.Mesh``: shard the example axis
      over its devices (``sharded_gram``); the result is
      sharded by rows. Not combined with ``x2``.

  Returns:
    ``(n c, n2 c)`` array; index ``i * c + k`` is output ``k`` of example
    ``i``.

  Raises:
    ValueError: on malformed inputs or an unavailable method.
  """
  apply, model = split_model(apply_or_model)
  x = check_params_and_inputs(params, x, apply_or_model=apply_or_model)
  if x2 is not None:
    x2 = checks.check_inputs(
        "x2", x2, any_shape=model is None,
        in_dim=x.shape[1] if model is not None else tuple(x.shape[1:]))
  chunk_size = _check_chunk(chunk_size)
  resolved = resolve_gram_method(apply_or_model, params, x, method)
  if mesh is not None:
    if x2 is not None:
      raise ValueError("x2 is not supported together with mesh")
    return sharded_gram(
        apply_or_model, params, x, mesh, resolved.value, chunk_size
    )
  if resolved is GramMethod.STRUCTURED:
    return _gram_structured(apply_or_model, params, x, x2, chunk_size)
  if resolved is GramMethod.JACOBIAN:
    return _gram_jacobian(apply, params, x, x2, chunk_size)
  return _gram_products(apply, params, x, x2, chunk_size)


def sharded_gram(
    apply_or_model,
    params,
    x: Array,
    mesh: Mesh,
    method: str = "auto",
    chunk_size: int | None = None,
) -> Array:
  """``G = J J^T`` with the example axis sharded over ``mesh``.

  Equals ``ngdjax.gram(apply_or_model, params, x, method=method)``; see the
  module docstring for what each device computes and communicates. ``params``
  are replicated.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree (replicated on every device).
    x: ``(n, d)`` inputs; padded internally to a multiple of the device count.
    mesh: a one-axis ``Mesh`` (``data_mesh()``).
    method: as in ``ngdjax.gram``.
    chunk_size: examples per block within each device.

  Returns:
    ``(n c, n c)`` array sharded by rows over ``mesh``.
  """
  mesh = parallel.auto_mesh(mesh)  # any axis type (ngdjax._src.parallel)
  with parallel.mesh_context(mesh):
    params, x = parallel.to_auto((params, x), mesh)
    return _sharded_gram(apply_or_model, params, x, mesh, method, chunk_size)


def _sharded_gram(apply_or_model, params, x, mesh, method, chunk_size):
  axis = parallel.mesh_axis(mesh)
  resolved = resolve_gram_method(apply_or_model, params, x, method)
  n = x.shape[0]
  c = output_dim(apply_or_model, params, x)
  xp, _ = parallel.pad_to_devices(x, mesh)
  xp = jax.device_put(xp, parallel.row_sharding(mesh))
  replicated = PartitionSpec()
  st = None
  if resolved is GramMethod.STRUCTURED:
    st = structure.model_structure(apply_or_model, params, x)

  if st is not None and not st.has_generic and all(
      lay.kind == "dense" for lay in st.layers):

    def local_rows(params, x_local):
      # Dense layers only: the factors of every device's examples are
      # all-gathered (O(n (a + c b)) per layer), never a Jacobian.
      mine = st.factors(params, x_local)
      everyone = tuple(
          LayerFactors(
              jax.lax.all_gather(f.inputs, axis, tiled=True),
              jax.lax.all_gather(f.output_grads, axis, tiled=True),
          )
          for f in mine
      )
      return structured_gram_from_factors(mine, everyone, chunk_size)

  else:

    def local_rows(params, x_local):
      x_all = jax.lax.all_gather(x_local, axis, tiled=True)
      return gram(
          st or apply_or_model, params, x_local, x_all,
          method=resolved.value, chunk_size=chunk_size,
      )

  g = jax.shard_map(
      local_rows,
      mesh=mesh,
      in_specs=(replicated, PartitionSpec(axis, None)),
      out_specs=PartitionSpec(axis, None),
      check_vma=False,
  )(params, xp)
  return g if g.shape[0] == n * c else g[: n * c, : n * c]


def gram_vp_sharded(apply_or_model, params, x, v, mesh):
  """``G v`` with examples sharded: local VJPs summed over devices (psum),
  then local JVPs. ``v`` is ``(n c,)``; the result has the shape of ``v``."""
  mesh = parallel.auto_mesh(mesh)  # any axis type (ngdjax._src.parallel)
  with parallel.mesh_context(mesh):
    params, x, v = parallel.to_auto((params, x, v), mesh)
    return _gram_vp_sharded(apply_or_model, params, x, v, mesh)


def _gram_vp_sharded(apply_or_model, params, x, v, mesh):
  axis = parallel.mesh_axis(mesh)
  apply, _ = split_model(apply_or_model)
  n = x.shape[0]
  c = v.shape[0] // n
  xp, pad = parallel.pad_to_devices(x, mesh)
  v2 = v.reshape(n, c)
  if pad:
    v2 = jnp.concatenate([v2, jnp.zeros((pad, c), v2.dtype)])

  def local(params, x_local, v_local):
    jt_v = vjp(apply, params, x_local, v_local)
    jt_v = jax.lax.psum(jt_v, axis)
    return jvp(apply, params, x_local, jt_v).reshape(-1, c)

  out = jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec(axis, None),
                PartitionSpec(axis, None)),
      out_specs=PartitionSpec(axis, None),
      check_vma=False,
  )(params, xp, v2)
  return out[:n].reshape(-1)

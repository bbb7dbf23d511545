"""The exact Gram ``G = J J^T`` of a ``Structure``, per layer in its
cheapest form.

Every layer (``ngdjax._src.layer_kinds``) has the common factors
``A`` ``(n, T, G, a)`` and ``S`` ``(n, r, T, G, b_g)``: example ``i``'s
Jacobian row ``k`` with respect to the layer matrix is
``J_ik = sum_t A_it S_ikt^T`` (per group). Its Gram block can be formed in
three exact ways; ``choose_forms`` picks one per layer from a FLOP and
memory model (flops per pair of examples, ``r`` rows each):

* ``"outer"`` (dense layers, ``T = G = 1``): ``(A A^T) * (S S^T)``, an
  input Gram times a gradient Gram, ``2 (a + r^2 b)`` per pair (docs/math.md's
  ``(X X^T) * (S S^T) / m`` for the two-layer net). Always the cheapest for
  ``T = 1``.
* ``"patch"``: ``sum_{t,t'} (A_it . A_jt') (S_ikt . S_jlt')``, per pair
  ``2 G T^2 (a + r^2 b_g)`` plus ``2 r^2 T^2 G`` for the elementwise
  product and sum; memory ``(n r T)^2 G`` for a block of ``n`` examples.
  Cheap for few positions and large layers.
* ``"jacobian"``: form the per-example Jacobian rows ``J_ik`` (``(n r,
  G a b_g)``, ``r T G a b_g`` flops per example) and multiply, ``2 r^2 G a
  b_g`` per pair. Cheaper for convolutions with many output positions
  (``T^2 (a + r^2 b_g) > r^2 a b_g``), e.g. a first conv layer.
* ``"embed"`` (embedding lookups, whose ``A`` are one-hot rows of the
  vocabulary ``V``): the patch form with ``A_it . A_jt' = [tok_it ==
  tok_jt']``, i.e. ``G[ik, jl] = sum over position pairs holding the same
  token of S_ikt . S_jlt'`` (two positions update the same table row
  exactly when their tokens agree); ``2 T^2 r^2 D`` per pair plus the
  token comparison, no ``V``-sized array. The ``"jacobian"`` form (per
  example ``(r, V D)`` rows, mostly zero) is kept for tiny vocabularies.

Parameters outside any layer (``Structure.generic_jacobian``) are one more
``"jacobian"`` block. The features of a block of examples (``features``)
are computed once and contracted against another block's (``cross``) or
their own (``self_gram``), so ``jacobian.gram_blocks`` bounds memory by
the features of two blocks plus the ``(N, N)`` result.
"""

from __future__ import annotations

import jax.numpy as jnp

from ngdjax._src.linalg import self_outer
from ngdjax._src.typing import Array

# The patch form's intermediate (n r T)^2 G may not exceed this (bytes).
PATCH_MAX_BYTES = 1 << 28
# The elementwise product and sum of the patch form run at memory speed:
# count each entry this many flops.
PATCH_ENTRY_COST = 8


def layer_costs(layer, block: int, r: int, itemsize: int = 4):
  """``{form: flops per pair of examples}`` for ``layer`` (memory-feasible
  forms only), with ``block`` examples per side and ``r`` rows each."""
  t, g = layer.positions, layer.groups
  a = layer.fan_in + layer.has_bias
  bg = layer.fan_out // g
  costs = {"jacobian": 2 * r * r * g * a * bg}
  if layer.kind == "embed":
    if (block * r * t) ** 2 * itemsize <= PATCH_MAX_BYTES:
      costs["embed"] = 2 * t * t * r * r * bg + PATCH_ENTRY_COST * (
          r * r * t * t)
    return costs
  if t == 1 and g == 1:
    return {"outer": 2 * (a + r * r * bg)}
  patch = 2 * g * t * t * (a + r * r * bg) + (
      PATCH_ENTRY_COST * r * r * t * t * g)
  if g * (block * r * t) ** 2 * itemsize <= PATCH_MAX_BYTES:
    costs["patch"] = patch
  return costs


def choose_forms(structure, block: int, r: int, itemsize: int = 4
                 ) -> tuple[str, ...]:
  """The cheapest form of every layer of ``structure`` (module docstring)."""
  forms = []
  for lay in structure.layers:
    costs = layer_costs(lay, block, r, itemsize)
    forms.append(min(costs, key=costs.get))
  return tuple(forms)


def features(structure, forms, params, x, cotangents=None) -> tuple:
  """Per layer the arrays its form contracts, then the generic Jacobian.

  ``"outer"``: ``(A (n, a), S (n, r, b))``; ``"patch"``: ``(A, S)`` as
  expanded; ``"jacobian"``: ``(n r, p_l)`` Jacobian rows. The ``r`` rows
  of example ``i`` are its outputs (``cotangents=None``, ``r = c``) or the
  columns of ``cotangents[i]`` (``(n, c, r)``): the rows of ``Gamma J``
  for a block-diagonal ``Gamma``, whose Gram is ``Gamma G Gamma^T``.
  """
  out = []
  factors = structure.factors(params, x, cotangents)
  for form, lay, f in zip(forms, structure.layers, factors, strict=True):
    if form == "embed":
      out.append(tuple(f))  # tokens (n, T), gradients (n, r, T, D)
      continue
    a, s = lay.expand(f)
    if form == "outer":
      out.append((a[:, 0, 0], s[:, :, 0, 0]))
    elif form == "patch":
      out.append((a, s))
    else:
      n, r = s.shape[:2]
      j = jnp.einsum("itga,iktgb->ikgab", a, s)
      out.append(j.reshape(n * r, -1))
  if structure.has_generic:
    jac = structure.generic_jacobian(params, x)
    if cotangents is not None:
      n = x.shape[0]
      rows = cotangents.reshape(n, -1, cotangents.shape[-1] if
                                cotangents.ndim == 3 else 1)
      jac = jnp.einsum("ikr,ikp->irp", rows.astype(jac.dtype),
                       jac.reshape(n, rows.shape[1], -1))
      jac = jac.reshape(-1, jac.shape[-1])
    out.append(jac)
  return tuple(out)


def row_gram(structure, params, x, rows) -> Array:
  """``Gamma G Gamma^T`` ``(n r, n r)`` for per-example rows ``rows``
  ``(n, c, r)`` (``Gamma`` block diagonal with blocks ``rows[i]^T``).

  The rows are pushed through the backward pass (``r`` VJPs instead of
  ``c``), then each layer's Gram in its cheapest form: for the empirical
  and Monte Carlo Fisher (``r = 1``) an ``n x n`` problem with ``c^2``
  times fewer flops than the ``N x N`` Gram.
  """
  forms = choose_forms(structure, x.shape[0], rows.shape[-1],
                       jnp.dtype(x.dtype).itemsize)
  return self_gram(forms, features(structure, forms, params, x, rows))


def product_operator(structure, params, x):
  """``v (n, c) -> G v (n, c)`` from factors computed once.

  Per layer ``J^T v = sum_ik v_ik sum_t A_it S_ikt^T`` (a layer matrix) and
  ``(J M)_ik = sum_t A_it^T M S_ikt``: ``4 n r T G a b_g`` flops per
  product, without re-running the network (for iterative solvers); generic
  leaves by their Jacobian.
  """
  factors = structure.factors(params, x)
  jac = (structure.generic_jacobian(params, x) if structure.has_generic
         else None)

  def matvec(v):
    out = jnp.zeros(v.shape, v.dtype)
    for lay, f in zip(structure.layers, factors, strict=True):
      if lay.kind == "embed":
        out = out + _embed_product(lay, f, v)
        continue
      a, s = lay.expand(f)
      m = jnp.einsum("itga,iktgb,ik->gab", a, s, v.astype(s.dtype))
      p = jnp.einsum("itga,gab->itgb", a, m)
      out = out + jnp.einsum("itgb,iktgb->ik", p, s).astype(v.dtype)
    if jac is not None:
      gv = jac @ (jac.T @ v.reshape(-1).astype(jac.dtype))
      out = out + gv.reshape(v.shape).astype(v.dtype)
    return out

  return matvec


def _embed_product(layer, f, v):
  """``J (J^T v)`` of an embedding: ``J^T v`` scatter-adds ``sum_k v_ik
  S_ikt`` into the rows ``tok_it`` of a ``(V, D)`` matrix; ``J M`` gathers
  them back, ``(J M)_ik = sum_t M[tok_it] . S_ikt``."""
  ids, s = f
  rows = jnp.einsum("iktd,ik->itd", s, v.astype(s.dtype))
  m = jnp.zeros((layer.fan_in, s.shape[-1]), s.dtype).at[ids].add(rows)
  return jnp.einsum("itd,iktd->ik", m[ids], s).astype(v.dtype)


def _embed(f1, f2):
  (t1, s1), (t2, s2) = f1, f2
  n1, r, t, _ = s1.shape
  n2, _, t2n, _ = s2.shape
  same = (t1[:, :, None, None] == t2[None, None]).astype(s1.dtype)
  ss = s1.reshape(n1 * r * t, -1) @ s2.reshape(n2 * r * t2n, -1).T
  prod = ss.reshape(n1, r, t, n2, r, t2n) * same[:, None, :, :, None, :]
  return prod.sum(axis=(2, 5)).reshape(n1 * r, n2 * r)


def _outer(f1, f2):
  (a1, s1), (a2, s2) = f1, f2
  n1, r = s1.shape[:2]
  n2 = s2.shape[0]
  if f2 is f1:
    input_gram = self_outer(a1)
    grad_gram = self_outer(s1.reshape(n1 * r, -1))
  else:
    input_gram = a1 @ a2.T
    grad_gram = s1.reshape(n1 * r, -1) @ s2.reshape(n2 * r, -1).T
  if r == 1:
    return input_gram * grad_gram
  return (grad_gram.reshape(n1, r, n2, r)
          * input_gram[:, None, :, None]).reshape(n1 * r, n2 * r)


def _patch(f1, f2):
  (a1, s1), (a2, s2) = f1, f2
  n1, r, t, g, _ = s1.shape
  n2 = s2.shape[0]
  total = 0.0
  for k in range(g):
    aa = a1[:, :, k].reshape(n1 * t, -1) @ a2[:, :, k].reshape(n2 * t, -1).T
    ss = (s1[:, :, :, k].reshape(n1 * r * t, -1)
          @ s2[:, :, :, k].reshape(n2 * r * t, -1).T)
    prod = ss.reshape(n1, r, t, n2, r, t) * aa.reshape(n1, 1, t, n2, 1, t)
    total = total + prod.sum(axis=(2, 5))
  return total.reshape(n1 * r, n2 * r)


def cross(forms, f1, f2) -> Array:
  """``G[rows of f1, rows of f2]`` from two blocks' ``features``."""
  total = 0.0
  for k, (p, q) in enumerate(zip(f1, f2, strict=True)):
    form = forms[k] if k < len(forms) else "jacobian"
    if form == "outer":
      total = total + _outer(p, q)
    elif form == "patch":
      total = total + _patch(p, q)
    elif form == "embed":
      total = total + _embed(p, q)
    else:
      total = total + p @ q.T
  return total


def self_gram(forms, f) -> Array:
  """``cross(forms, f, f)``, multiplying only one triangle where it can."""
  total = 0.0
  for k, p in enumerate(f):
    form = forms[k] if k < len(forms) else "jacobian"
    if form == "outer":
      total = total + _outer(p, p)
    elif form == "patch":
      total = total + _patch(p, p)
    elif form == "embed":
      total = total + _embed(p, p)
    else:
      total = total + self_outer(p)
  return total


def gram_flops(structure, n: int, r: int, forms) -> int:
  """Flops of the symmetric Gram of ``n`` examples with ``forms`` (the
  benchmark's model: half the pairs, as ``self_outer`` multiplies)."""
  total = 0
  for lay, form in zip(structure.layers, forms, strict=True):
    total += layer_costs(lay, n, r, itemsize=0)[form] * n * n // 2
  return total

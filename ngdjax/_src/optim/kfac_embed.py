"""K-FAC blocks of embedding lookups, with the token counts as a vector.

An embedding ``z[i, t] = W[tok_it]`` (rows of a ``(V, D)`` table read at
the ``T`` tokens of each example; ``layer_kinds.EmbedLayer``) is a
shared-weight layer whose inputs are one-hot rows of the vocabulary,
``z[i, t] = e_{tok_it}^T W``. With ``s[i, k, t]`` ``(D,)`` the gradient of
output row ``k`` of example ``i`` at ``z[i, t]``, its ``"expand"`` factors
(``kfac_conv``: every position counts as an example; Grosse & Martens
2016, Eschenhagen et al. 2023) are

    A~ = sum_{i,t} e_tok e_tok^T / (n T) = diag(counts) / (n T),
    B~ = sum_{i,k,t} s s^T / n,

``counts[v]`` the number of positions holding token ``v``. The input
factor is diagonal, so the block ``n A~ (x) B~`` (plus its damping)
preconditions every row of the table on its own: in the full-batch mode,
with ``m = n T`` rows and ``B`` the ``(m r, D)`` gradient rows,

    delta_v = m (counts_v + lam_A)^{-1} grad_v (B^T B + lam_B)^{-1},

the dense update of ``kfac.factored_update`` with the one-hot ``A``
(``A^T A = diag(counts)``, ``A^T Y`` the sum of the rows of ``Y`` at each
token): a token absent from the batch gets only the damping, ``lam_A``.

This module keeps ``A~`` as a length-``V`` vector throughout: the counts
are a scatter-add of the tokens, ``A^T Y`` a scatter-add of rows, the damped
inverse elementwise. Neither the ``(m, V)`` one-hot nor a ``V x V``
matrix is formed. Per step, ``O(m r D + V D)`` for the statistics and the
row scaling plus the ``B`` side as for a dense layer: a ``D x D`` solve
(``O(D^3 + min(m, V) D^2)``) or, in dual form (``m r < D``), an
``(m r) x (m r)`` one.

Tokens out of the table's range are as in the one-hot form
(``EmbedLayer.factors``): a filling lookup's count at token 0 with a zero
gradient row, a clipping one's at the clipped token.

Example:

  >>> import jax.numpy as jnp
  >>> from ngdjax._src.optim import kfac_embed
  >>> ids = jnp.array([[0, 2, 2]])                  # n = 1, T = 3
  >>> kfac_embed.token_counts(ids, 4, jnp.float32)
  Array([1., 0., 2., 0.], dtype=float32)
  >>> rows = jnp.arange(6.0).reshape(1, 3, 2)       # (n, T, D)
  >>> kfac_embed.token_sums(ids, rows, 4)           # A^T rows, (V, D)
  Array([[0., 1.],
         [0., 0.],
         [6., 8.],
         [0., 0.]], dtype=float32)
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ngdjax._src.linalg import self_outer
from ngdjax._src.optim import solvers
from ngdjax._src.typing import Array


class EmbedFactors(NamedTuple):
  """An embedding's factors on a batch.

  Attributes:
    ids: ``(n, T)`` int32 tokens (in range; ``EmbedLayer.factors``).
    output_grads: ``(n, r, T, D)`` gradients of each output row at the
      looked-up rows.
    vocab: ``V``, the table's rows (a Python int).
  """

  ids: Array
  output_grads: Array
  vocab: int


class EmbedKFACFactors(NamedTuple):
  """An embedding's running factors (``inverse="eigh"``).

  Attributes:
    inputs_cov: ``(V,)`` running average of the diagonal ``counts / (n
      T)``.
    grads_cov: ``(D, D)`` running average of ``B^T H B / n``.
    inputs_eigvals: ``(V,)`` ``inputs_cov`` at the last refresh (its own
      eigenvalues; the eigenvectors are the identity).
    grads_eigvals, grads_eigvecs: ``(D,)``, ``(D, D)`` eigendecomposition
      of ``grads_cov`` at the last refresh.
  """

  inputs_cov: Array
  grads_cov: Array
  inputs_eigvals: Array
  grads_eigvals: Array
  grads_eigvecs: Array


class EmbedKFACInverses(NamedTuple):
  """An embedding's running factors and damped inverses
  (``inverse="cholesky"``).

  Attributes:
    inputs_cov: ``(V,)`` running average of ``counts / (n T)``.
    grads_cov: ``(D, D)`` running average of ``B^T H B / n``.
    inputs_inv: ``(V,)`` ``1 / (inputs_cov + d_A)`` at the last refresh.
    grads_inv: ``(D, D)`` ``(grads_cov + d_B I)^{-1}`` at the last refresh.
  """

  inputs_cov: Array
  grads_cov: Array
  inputs_inv: Array
  grads_inv: Array


def init_state(vocab: int, width: int, dtype, inverse: str):
  """Zero running factors and identity inverses for a ``(V, D)`` table."""
  eye = jnp.eye(width, dtype=dtype)
  za, zb = jnp.zeros((vocab,), dtype), jnp.zeros((width, width), dtype)
  if inverse == "cholesky":
    return EmbedKFACInverses(za, zb, jnp.ones((vocab,), dtype), eye)
  return EmbedKFACFactors(za, zb, za, jnp.zeros((width,), dtype), eye)


def token_counts(ids: Array, vocab: int, dtype) -> Array:
  """``counts[v]``: the positions of ``ids`` (any shape) holding ``v``,
  ``(V,)`` (``diag(A^T A)`` of the one-hot ``A``)."""
  return jnp.zeros((vocab,), dtype).at[ids.reshape(-1)].add(1)


def token_sums(ids: Array, rows: Array, vocab: int) -> Array:
  """``A^T Y`` for the one-hot ``A`` of ``ids`` ``(n, T)``: ``(V, k)``,
  row ``v`` the sum of the rows of ``Y`` (``(n, T, k)`` or ``(n T, k)``)
  at the positions holding ``v``."""
  k = rows.shape[-1]
  return jnp.zeros((vocab, k), rows.dtype).at[ids.reshape(-1)].add(
      rows.reshape(-1, k))


def factors(f: EmbedFactors) -> tuple[Array, Array]:
  """The ``"expand"`` per-example factor averages: ``(A~ (V,) = counts /
  (n T), B~ (D, D) = sum_{i,k,t} s s^T / n)`` (``kfac_conv.factors`` with
  the one-hot inputs, its diagonal kept as a vector)."""
  n, t = f.ids.shape
  dtype = f.output_grads.dtype
  rows = f.output_grads.reshape(-1, f.output_grads.shape[-1])
  return (token_counts(f.ids, f.vocab, dtype) / (n * t),
          self_outer(rows.T) / n)


def diagonal_inverse(d: Array, *, pinv: bool = False
                     ) -> tuple[Array, Array]:
  """``(diag(d)^{-1} as a vector, failed)``: ``1 / d``, or 0 where ``d``
  is zero (the pseudo-inverse, as ``solvers.psd_solve`` falls back to).

  ``pinv`` (zero damping by construction): entries below ``V eps max(d)``
  count as zero, as in ``solvers.eigh_solve``. Otherwise every positive
  entry is inverted, and ``failed`` is 1 when some entry was not (what
  ``psd_solve``'s Cholesky would count as a fallback).
  """
  if pinv:
    d = solvers.clamp_spectrum(d)  # the eigh pseudo-inverse's threshold
  keep = d > 0
  inv = jnp.where(keep, 1.0 / jnp.where(keep, d, 1.0), 0.0)
  failed = 0 if pinv else jnp.any(~keep)
  return inv, jnp.asarray(failed, jnp.int32)


def _rows(f: EmbedFactors, h: Array) -> tuple[Array, Array, Array]:
  """``(B (m, r, D), h_e (m, r), Y = Gamma B (m, D))`` with the ``m = n
  T`` positions as rows ``(i, t)``: ``h_e[(i, t)] = h[i]``."""
  n, r, t, d = f.output_grads.shape
  grads = jnp.swapaxes(f.output_grads, 1, 2).reshape(n * t, r, d)
  h_e = jnp.repeat(h, t, axis=0)
  return grads, h_e, jnp.einsum("ik,ikb->ib", h_e, grads)


def _gamma_t(h_e: Array) -> Array:
  """``Gamma^T`` ``(m r, m)``: column ``j`` holds ``h_e[j]`` at rows
  ``(j, k)``."""
  m, r = h_e.shape
  eye = jnp.eye(m, dtype=h_e.dtype)
  return (h_e[:, :, None] * eye[:, None, :]).reshape(m * r, m)


def factored_update(
    f: EmbedFactors,
    h: Array,
    lam_a,
    lam_b,
    *,
    dual_b: bool,
    pinv_a: bool = False,
    pinv_b: bool = False,
) -> tuple[Array, Array]:
  """``m (diag(counts) + lam_A)^{-1} A^T Gamma B (B^T B + lam_B)^{-1}``,
  ``m = n T`` (``kfac.factored_update`` with the one-hot ``A``).

  Args:
    f: the embedding's factors (``output_grads`` in the Fisher's rows).
    h: ``(n, r)`` the gradient weights (``sum_k h_ik B_ik`` is the
      gradient's row).
    lam_a, lam_b: damping added to ``diag(counts)`` and ``B^T B``.
    dual_b: solve the ``B`` side in dual form, ``(m r) x (m r)``.
    pinv_a, pinv_b: pseudo-inverses (zero damping, singular factor).

  Returns:
    ``(delta (V, D), failed)``: the preconditioned gradient (the update is
    ``-eta * delta``) and the number of Cholesky fallbacks.
  """
  grads, h_e, y = _rows(f, h)
  m, r, d = grads.shape
  bf = grads.reshape(m * r, d)
  if dual_b:
    # Gamma B (B^T B + lam_B)^{-1} = Gamma (B B^T + lam_B)^{-1} B.
    k_t, f1 = solvers.psd_solve(self_outer(bf), _gamma_t(h_e), lam_b,
                                pinv=pinv_b)
    y = token_sums(f.ids, k_t.T @ bf, f.vocab)
  else:
    # The D x D solve against the fewer of the m position rows and the V
    # token rows (the scatter-add commutes with it).
    if f.vocab < m:
      y = token_sums(f.ids, y, f.vocab)
    s, f1 = solvers.psd_solve(self_outer(bf.T), y.T, lam_b, pinv=pinv_b)
    y = s.T if f.vocab < m else token_sums(f.ids, s.T, f.vocab)
  counts = token_counts(f.ids, f.vocab, y.dtype)
  inv_a, f2 = diagonal_inverse(counts + lam_a, pinv=pinv_a)
  return m * inv_a[:, None] * y, f1 + f2


def exact_update(
    f: EmbedFactors,
    h: Array,
    damping,
    lam_a,
    lam_b,
    *,
    dual_b: bool,
) -> Array:
  """``(F + lam I)^{-1} vec(A^T Gamma B)`` with ``F = (diag(counts) +
  lam_A) (x) (B^T B + lam_B I) / m`` (``kfac.exact_update`` with the
  one-hot ``A``, whose eigenvectors are the identity and eigenvalues the
  counts: exact, so none is clamped).

  With ``B^T B = Q diag(beta) Q^T``: ``delta_v = [(A^T Gamma B Q)_v /
  ((counts_v + lam_A)(beta + lam_B) / m + lam)] Q^T``; in dual form ``Q``
  comes from ``B B^T = U diag U^T`` (``B^T U``).

  Returns:
    ``(V, D)``: the preconditioned gradient.
  """
  grads, h_e, _ = _rows(f, h)
  eb, right, back = solvers.output_factor_eigh(grads, h_e, dual=dual_b)
  core = token_sums(f.ids, right, f.vocab)
  core = solvers.divide_by_kronecker_spectrum(
      core, token_counts(f.ids, f.vocab, core.dtype) + lam_a,
      solvers.clamp_spectrum(eb) + lam_b, grads.shape[0], damping)
  return back(core)

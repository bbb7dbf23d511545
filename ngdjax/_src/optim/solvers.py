"""Damped positive semi-definite solves: Cholesky with a fallback, and CG.

``psd_solve`` solves ``(M + lam I) x = b`` for a symmetric PSD ``M``.

* Cholesky first (``k^3 / 3`` flops), then a check of the solve, not only of
  its finiteness. A numerically singular matrix often factors "successfully"
  with round-off pivots and returns a finite but meaningless ``x`` of norm
  ``~ ||b|| / eps``. The factorisation counts as failed when

  - ``x`` is not finite (Cholesky of an indefinite matrix gives NaN), or
  - the smallest eigenvalue of ``A = M + lam I`` is numerically zero,
    ``lambda_min(A) <= tol_A = k * eps * max_j A_jj``: the pseudo-inverse's
    cut-off below (``max_j A_jj <= ||A||_2``). Two bounds from the factor
    ``A = L L^T``, both ``>= lambda_min``, so neither can flag a matrix
    whose ``lambda_min`` is above ``tol_A``: the smallest pivot ``L_ii^2`` (a
    Schur complement's diagonal), and three steps of inverse iteration with
    the factor, ``1 / ||A^{-1} z||`` (``6 k^2`` flops against ``k^3 / 3``),
    which finds a tiny eigenvalue that the pivots hide; or
  - the relative residual ``||(M + lam I) x - b|| / ||b||`` exceeds
    ``RESIDUAL_TOL`` (a solve that does not solve).
* Fallback. On failure the solve switches, inside the same jitted step
  (``lax.cond``, so the ``O(k^3)`` eigendecomposition only runs when
  needed), to the damped pseudo-inverse

      x = Q diag(phi(e)) Q^T b,  phi(e) = 1 / (e + lam) if e + lam > tol
                                          else 0,

  with ``M = Q diag(e) Q^T`` and ``tol = k * eps(dtype) * max|e + lam|``. It
  is the minimum-norm solution on the numerically determined subspace:
  directions ``M`` cannot resolve at this precision are left untouched
  rather than amplified by ``1 / eps``. Raising the damping and retrying was
  considered and not used: it biases every direction, costs another
  factorisation and still has no guarantee of success in float32.
  The caller reports the flag in ``info`` (``cholesky_failed``).
* With ``pinv=True`` (the damping is the constant 0 and the matrix may be
  singular by construction) the pseudo-inverse is used directly.
* Half precision (``float16``, ``bfloat16``: no Cholesky or ``eigh``
  kernels) is solved in ``float32`` and returned in the input's dtype.

``cg`` is (preconditioned) conjugate gradients on ``(A + lam I) x = b``
for a matrix-free ``A``, with the iteration count, final relative residual
and a failure flag reported. On a singular ``A`` with zero damping and an
inconsistent ``b`` (repeated inputs with different targets) plain CG
divides by round-off curvature and returns an iterate of norm
``~ 1 / eps``. Here, with ``tau = 32 eps`` (``roundoff_level``) and
``c_max`` the largest Rayleigh quotient ``p^T (A + lam I) p / p^T p`` seen:

* Breakdown is detected: a search direction of numerically zero curvature,
  ``p^T (A + lam I) p <= tau c_max ||p||^2``, stops the iteration before
  the division. A non-finite iterate counts as a breakdown, and so does
  iterate growth: every CG iterate satisfies ``||x|| <= 2 ||b|| /
  lambda_min(A + lam I)``, and ``lambda_min >= max(lam, tau c_max)`` on a
  system CG can resolve, so ``||x|| max(lam, tau c_max) > 10 ||b||`` means
  an eigenvalue below the numerical cut-off was inverted. Neither test
  grows with ``k``: the worst-case ``k eps c_max`` used before is
  ``0.016 c_max`` at ``k = 131072`` in float32 and called the damped
  ``G + 1e-3 I`` of a two-layer net singular.
* Fallback: CG is rerun from zero on the damped system
  ``(A + (lam + sqrt(eps) c_max) I) x = b``, which is positive definite
  with condition number at most ``1 / sqrt(eps)``: Tikhonov regularisation,
  the iterative counterpart of ``psd_solve``'s pseudo-inverse (directions
  with eigenvalues far above ``sqrt(eps) c_max`` are solved as before, the
  numerically null ones are damped, not amplified by ``1 / eps``). For NGD,
  ``J^T x`` does not see the null-space part of ``x`` at all. Should the
  rerun also fail, ``x = 0`` (no step).
* ``failed = 1`` when the fallback was used (``info["cg_failed"]``);
  ``residual`` is then that of the damped system. Plain non-convergence
  within ``maxiter`` (a deliberately truncated CG) is not a failure: it
  shows as ``residual > tol``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngdjax._src.linalg import self_outer
from ngdjax._src.typing import Array


def _eps(dtype) -> float:
  return float(jnp.finfo(dtype).eps)


def clamp_spectrum(e: Array) -> Array:
  """Zeroes eigenvalues below ``k * eps * max(e)`` (and negative round-off).

  ``e`` is the spectrum of a PSD matrix of size ``k``; what remains is the
  part a pseudo-inverse should invert.
  """
  tol = e.shape[0] * _eps(e.dtype) * jnp.max(jnp.abs(e))
  return jnp.where(e > tol, e, 0.0)


def output_factor_eigh(grads: Array, weights: Array, *, dual: bool):
  """The eigenbasis of a K-FAC block's output side, ``B^T B = Q diag(beta)
  Q^T`` with ``B`` the ``(n c, b)`` rows of ``grads`` ``(n, c, b)``, and the
  loss-weighted rows ``(Gamma B)_i = sum_k weights[i, k] grads[i, k]``
  projected on it.

  In dual form (``dual``: fewer rows than ``b``) ``Q = B^T U`` comes from
  ``B B^T = U diag(beta) U^T`` (no division by singular values; the
  gradient has no component outside the range of ``B^T``).

  Returns:
    ``(beta, right, back)``: ``beta`` the spectrum, ``right`` ``(n, q)``
    the projected rows ``Gamma B Q``, and ``back`` mapping a ``(r, q)``
    core to ``(r, b)`` (``core Q^T``).
  """
  n, c, b = grads.shape
  rows = grads.reshape(n * c, b)
  if dual:
    beta, u = jnp.linalg.eigh(self_outer(rows))
    right = jnp.einsum("ik,ikq->iq", weights, u.reshape(n, c, n * c))
    return beta, right, lambda core: (core @ u.T) @ rows
  beta, q = jnp.linalg.eigh(self_outer(rows.T))
  right = jnp.einsum("ik,ikb->ib", weights, grads) @ q
  return beta, right, lambda core: core @ q.T


def divide_by_kronecker_spectrum(core: Array, alpha: Array, beta: Array,
                                 rows: int, damping) -> Array:
  """``core / (alpha beta^T / rows + damping)`` elementwise, a zero
  denominator giving 0 (the pseudo-inverse): the damped inverse of a
  Kronecker block ``(A (x) B) / rows + damping I`` in its eigenbasis."""
  den = alpha[:, None] * beta[None, :] / rows + damping
  return core * jnp.where(den > 0, 1.0 / jnp.where(den > 0, den, 1.0), 0.0)


def eigh_solve(mat: Array, rhs: Array, damping: Array) -> Array:
  """``(mat + damping I)^+ rhs`` by eigendecomposition (module docstring)."""
  e, q = jnp.linalg.eigh(0.5 * (mat + mat.T))
  e = e + damping
  tol = e.shape[0] * _eps(e.dtype) * jnp.max(jnp.abs(e))
  keep = e > tol
  inv = jnp.where(keep, 1.0 / jnp.where(keep, e, 1.0), 0.0)
  coeff = q.T @ rhs
  coeff = coeff * (inv if rhs.ndim == 1 else inv[:, None])
  return q @ coeff


# Rows and columns per diagonal block of the library's Cholesky: the largest
# matrix LAPACK (or XLA's own Cholesky) is ever given.
CHOLESKY_BLOCK = 1024
_HIGHEST = jax.lax.Precision.HIGHEST


def tile_cholesky(t: Array) -> Array:
  """Lower Cholesky factor of a small tile from its lower triangle.

  LAPACK reads column-major; handing it ``sym(t).T`` (whose column-major
  layout is ``t``'s row-major one) keeps XLA from giving the buffer ``t``
  was sliced from a column-major copy.
  """
  lower = jnp.tril(t)
  sym = lower + jnp.tril(t, -1).T
  return jax.lax.linalg.cholesky(sym.T, symmetrize_input=False)


def solve_transposed(lower: Array, t: Array) -> Array:
  """``X`` with ``X L^T = t`` for a lower-triangular tile ``L``, as
  ``(L X^T = t^T)^T`` given to LAPACK through transposes that are free in
  its column-major view (``tile_cholesky``)."""
  return jax.lax.linalg.triangular_solve(
      lower.T, t.T, left_side=True, lower=False, transpose_a=True).T


def solve_tile(diag: Array, r: Array, *, transpose: bool) -> Array:
  """``L^{-1} r`` (``L^{-T} r``) for the lower triangle of the tile
  ``diag`` and ``r`` ``(b, k)``, through ``diag.T`` (``tile_cholesky``)."""
  return jax.lax.linalg.triangular_solve(
      diag.T, r, left_side=True, lower=False, transpose_a=not transpose)


def blocked_cholesky(a: Array, *, block: int | None = None
                     ) -> tuple[Array, Array]:
  """Lower Cholesky factor of the matrix whose lower triangle ``a`` holds.

  A blocked "up-looking" (row by row of blocks, left-looking within a row)
  Cholesky owned by the library, on ``a``'s own buffer: with ``b = block``
  and ``L_IJ`` the ``b x b`` tiles, for each block row ``I`` in order and
  each ``J <= I``,

      T   = A_IJ - sum_{K < J} L_IK L_JK^T      (products of b x b tiles)
      L_IJ = T L_JJ^{-T}   (J < I),     L_II = chol(T),

  each ``L_IJ`` written over ``A_IJ`` (``lax.dynamic_update_slice`` in
  ``fori_loop``s, so XLA updates the buffer in place: no second ``N x N``
  array, ``compiled.memory_analysis()`` shows it). Only ``b x b`` matrices
  ever reach a Cholesky or triangular-solve kernel (LAPACK on CPU, cuSOLVER
  on GPU, XLA's own on TPU), whatever ``N``: large LAPACK calls are where
  some builds crash (OpenBLAS 0.3.30's threaded ``spotrf`` segfaults at
  ``N = 32767``). The flops are the ``N^3 / 3`` of any Cholesky, almost all
  in ``b x b x b`` matrix products at the matmul rate; ``N mod b`` trailing
  rows form a last, shorter block row. Tiles are read by row blocks of the
  row-major buffer, whose upper triangle is never read.

  Args:
    a: ``(N, N)``; its lower triangle holds the symmetric positive definite
      matrix (the strict upper triangle is ignored).
    block: tile size ``b`` (default ``CHOLESKY_BLOCK``).

  Returns:
    ``(chol, ok)``: ``chol``'s lower triangle is ``L`` (``A = L L^T``), its
    strict upper triangle is unspecified (``a``'s, or zero within the
    diagonal tiles); ``ok`` is False when a diagonal block's factorisation
    broke down (a non-finite or non-positive pivot).
  """
  size = a.shape[0]
  b = max(1, min(int(block or CHOLESKY_BLOCK), size))
  full, rem = divmod(size, b)

  def schur(a, r0, h, c0, w, nk):
    # A[R, C] - sum_{K < nk} L[R, K] L[C, K]^T, K over b-wide blocks.
    def body(k, acc):
      left = jax.lax.dynamic_slice(a, (r0, k * b), (h, b))
      right = jax.lax.dynamic_slice(a, (c0, k * b), (w, b))
      return acc - jnp.matmul(left, right.T, precision=_HIGHEST)

    start = jax.lax.dynamic_slice(a, (r0, c0), (h, w))
    return jax.lax.fori_loop(0, nk, body, start)

  def diag_factor(t):
    chol = tile_cholesky(t)
    d = jnp.diagonal(chol)
    return chol, jnp.all(jnp.isfinite(d) & (d > 0))

  def off_diag(a, r0, h, j):
    # L_IJ = T L_JJ^{-T}: solve X L_JJ^T = T.
    t = schur(a, r0, h, j * b, b, j)
    ljj = jax.lax.dynamic_slice(a, (j * b, j * b), (b, b))
    lij = solve_transposed(ljj, t)
    return jax.lax.dynamic_update_slice(a, lij, (r0, j * b))

  def block_row(r0, h, nblocks, carry):
    a, ok = carry
    a = jax.lax.fori_loop(0, nblocks, lambda j, a: off_diag(a, r0, h, j), a)
    chol, ok_i = diag_factor(schur(a, r0, h, r0, h, nblocks))
    a = jax.lax.dynamic_update_slice(a, chol.astype(a.dtype), (r0, r0))
    return a, ok & ok_i

  carry = (a, jnp.ones((), bool))
  carry = jax.lax.fori_loop(
      0, full, lambda i, c: block_row(i * b, b, i, c), carry)
  if rem:
    carry = block_row(full * b, rem, full, carry)
  return carry


def tri_solve(chol: Array, rhs: Array, *, transpose: bool,
              block: int | None = None) -> Array:
  """``L^{-1} rhs`` (or ``L^{-T} rhs``) from the lower triangle of ``chol``.

  Block substitution touching ``chol`` only through ``(block, N)`` row
  panels (contiguous in the row-major buffer, so XLA keeps its layout: a
  column panel would make it copy the whole matrix to column-major). Blocks
  of ``block`` rows, then the ``N mod block`` remaining ones; only
  ``block x block`` triangles reach a triangular-solve kernel.

  * ``L y = r``, blocks in order: ``y_I = L_II^{-1} (r_I - L[I, :] y)``
    with ``y`` still zero from block ``I`` on, so the unspecified upper
    triangle only meets zeros.
  * ``L^T z = r``, blocks in reverse: ``z_I = L_II^{-T} r_I``, then
    ``r -= L[I, :]^T z_I`` restricted to the entries before block ``I``.

  ``rhs`` is ``(N,)`` or ``(N, r)``; ``O(N^2 r)`` flops, ``O(block N)``
  temporaries (for one right-hand side).
  """
  size = rhs.shape[0]
  rhs2 = rhs.reshape(size, -1)
  b = min(block or CHOLESKY_BLOCK, size)
  full, rem = divmod(size, b)

  def diag_solve(s, bb, r):
    diag = jax.lax.dynamic_slice(chol, (s, s), (bb, bb))
    return solve_tile(diag, r, transpose=transpose)

  def forward(s, bb, y):
    panel = jax.lax.dynamic_slice(chol, (s, 0), (bb, size))
    r = (jax.lax.dynamic_slice_in_dim(rhs2, s, bb)
         - jnp.matmul(panel, y, precision=_HIGHEST))
    return jax.lax.dynamic_update_slice_in_dim(y, diag_solve(s, bb, r), s,
                                               0)

  def backward(s, bb, carry):
    z, r = carry
    zi = diag_solve(s, bb, jax.lax.dynamic_slice_in_dim(r, s, bb))
    panel = jax.lax.dynamic_slice(chol, (s, 0), (bb, size))
    # (z_I^T L[I, :])^T: the row-major panel is never transposed (a copy).
    update = jnp.matmul(zi.T, panel, precision=_HIGHEST).T
    before = (jnp.arange(size) < s)[:, None]
    r = r - jnp.where(before, update, 0.0)
    return jax.lax.dynamic_update_slice_in_dim(z, zi, s, 0), r

  if not transpose:
    y = jax.lax.fori_loop(0, full, lambda i, y: forward(i * b, b, y),
                          jnp.zeros_like(rhs2))
    out = forward(full * b, rem, y) if rem else y
    return out.reshape(rhs.shape)
  carry = (jnp.zeros_like(rhs2), rhs2)
  if rem:
    carry = backward(full * b, rem, carry)
  carry = jax.lax.fori_loop(
      0, full, lambda t, c: backward((full - 1 - t) * b, b, c), carry)
  return carry[0].reshape(rhs.shape)


def row_norms_lower(chol: Array, block: int | None = None) -> Array:
  """``A_jj = sum_{k <= j} L_jk^2`` by row panels (no ``N x N`` temporary)."""
  size = chol.shape[0]
  b = min(block or CHOLESKY_BLOCK, size)
  full, rem = divmod(size, b)

  def panel_norms(s, bb, out):
    panel = jax.lax.dynamic_slice(chol, (s, 0), (bb, size))
    rows = s + jnp.arange(bb)[:, None]
    keep = jnp.arange(size)[None, :] <= rows
    norms = jnp.sum(jnp.where(keep, jnp.square(panel), 0.0), axis=1)
    return jax.lax.dynamic_update_slice(out, norms, (s,))

  out = jax.lax.fori_loop(0, full, lambda i, o: panel_norms(i * b, b, o),
                          jnp.zeros((size,), chol.dtype))
  return panel_norms(full * b, rem, out) if rem else out


def cho_solve(chol: Array, rhs: Array, *,
              block: int | None = None) -> Array:
  """``(L L^T)^{-1} rhs`` with ``tri_solve`` (``4 N^2`` flops)."""
  return tri_solve(chol, tri_solve(chol, rhs, transpose=False, block=block),
                   transpose=True, block=block)


def psd_solve(
    mat: Array, rhs: Array, damping, *, pinv: bool = False
) -> tuple[Array, Array]:
  """Solves ``(mat + damping I) x = rhs`` for symmetric PSD ``mat``.

  Args:
    mat: ``(k, k)`` symmetric positive semi-definite.
    rhs: ``(k,)`` or ``(k, r)``.
    damping: scalar ``>= 0``.
    pinv: use the eigendecomposition pseudo-inverse directly (for matrices
      singular by construction with zero damping).

  Returns:
    ``(x, failed)``: ``x`` shaped like ``rhs``; ``failed`` an int32 scalar,
    1 when Cholesky failed and the pseudo-inverse fallback was used.
  """
  dtype = jnp.result_type(mat, rhs)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    x, failed = psd_solve(mat.astype(jnp.float32), rhs.astype(jnp.float32),
                          damping, pinv=pinv)
    return x.astype(dtype), failed
  damping = jnp.asarray(damping, mat.dtype)
  if pinv:
    return eigh_solve(mat, rhs, damping), jnp.zeros((), jnp.int32)
  eye = jnp.eye(mat.shape[0], dtype=mat.dtype)
  a = mat + damping * eye
  if a.shape[0] > CHOLESKY_BLOCK:
    # Never one large LAPACK call (blocked_cholesky).
    chol, _ = blocked_cholesky(a)
    solve = functools.partial(cho_solve, chol)
  else:
    chol = jnp.linalg.cholesky(a)
    solve = functools.partial(jax.scipy.linalg.cho_solve, (chol, True))
  x = solve(rhs)
  ok = _cholesky_ok(a, chol, x, rhs, solve)
  x = jax.lax.cond(
      ok, lambda: x, lambda: eigh_solve(mat, rhs, damping).astype(x.dtype)
  )
  return x, jnp.logical_not(ok).astype(jnp.int32)


# psd_solve: a Cholesky solve whose relative residual exceeds this failed.
RESIDUAL_TOL = 1e-2
# psd_solve: steps of inverse iteration estimating lambda_min.
INVERSE_ITERATIONS = 3


def _cholesky_ok(a: Array, chol: Array, x: Array, rhs: Array,
                 solve: Callable[[Array], Array]) -> Array:
  """Whether a Cholesky solve of ``a x = rhs`` is trustworthy (docstring)."""
  k = a.shape[0]
  finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(
      jnp.diagonal(chol)))
  tol = k * _eps(a.dtype) * jnp.max(jnp.abs(jnp.diagonal(a)))
  pivots_ok = jnp.all(jnp.square(jnp.diagonal(chol)) > tol)
  # Inverse iteration from a fixed vector: 1 / ||A^{-1} z|| >= lambda_min
  # for every unit z, and tends to it.
  z = jnp.cos(1.0 + 2.3 * jnp.arange(k, dtype=a.dtype))
  lam_est = jnp.asarray(jnp.inf, a.dtype)
  for _ in range(INVERSE_ITERATIONS):
    w = solve(z / jnp.linalg.norm(z))
    w_norm = jnp.linalg.norm(w)
    lam_est = 1.0 / w_norm
    z = w
  eig_ok = lam_est > tol
  safe_x = jnp.where(jnp.isfinite(x), x, 0.0)
  rhs_norm = jnp.linalg.norm(rhs)
  residual = jnp.linalg.norm(a @ safe_x - rhs)
  residual_ok = residual <= RESIDUAL_TOL * jnp.where(rhs_norm > 0, rhs_norm,
                                                     1.0)
  return finite & pivots_ok & eig_ok & residual_ok


class CGResult(NamedTuple):
  """Outcome of ``cg``.

  Attributes:
    x: ``(k,)`` approximate solution.
    iterations: ``()`` int32, matrix-vector products used (both runs).
    residual: ``()`` relative residual ``||b - (A + lam I) x|| / ||b||`` of
      ``x`` for the system solved (the damped one after a fallback;
      recursive residual; 0 when ``b = 0``).
    failed: ``()`` int32, 1 when CG broke down on a numerically singular
      system and the damped fallback was used (module docstring).
  """

  x: Array
  iterations: Array
  residual: Array
  failed: Array


# cg: the fallback adds this multiple of sqrt(eps) * c_max to the damping.
CG_FALLBACK_DAMPING = 1.0
# cg: an iterate this many times longer than ||b|| / lambda_min bound is
# numerical garbage (a CG iterate of the exact solve stays within 2 x).
CG_GROWTH_SLACK = 10.0


# cg: curvature below this many eps times the largest one seen is round-off.
ROUNDOFF_FACTOR = 32.0


def roundoff_level(dtype) -> float:
  """``tau = 32 eps``: relative curvature indistinguishable from zero.

  A Rayleigh quotient ``p^T A p / p^T p`` below ``tau c_max`` (``c_max``
  the largest one seen) is at the level of the product's round-off. It does
  not grow with the size ``k``: ``k eps``, the worst-case bound used before,
  is 0.016 at ``k = 131072`` in float32, far above the damping ``1e-3`` of
  a positive definite ``G + 1e-3 I``, which it declared singular.
  """
  return ROUNDOFF_FACTOR * _eps(dtype)


def _pcg_loop(op, precond, b, threshold, maxiter, null_tol):
  """Preconditioned CG from ``x0 = 0``; ``(x, r, k, stalled, c_max)``.

  ``precond`` applies ``M^{-1}`` (symmetric positive definite); the
  stopping test is on the unpreconditioned residual ``r``.
  """

  def cond(state):
    _, r, _, _, k, stalled, _ = state
    return (jnp.linalg.norm(r) > threshold) & (k < maxiter) & ~stalled

  def body(state):
    x, r, p, rz, k, _, c_max = state
    ap = op(p)
    curvature = p @ ap
    pp = p @ p
    c_max = jnp.maximum(c_max, curvature / jnp.where(pp > 0, pp, 1.0))
    # p in the numerical null space of the operator: alpha would be ~1/eps.
    stalled = (curvature <= null_tol * c_max * pp) | ~jnp.isfinite(curvature)
    alpha = jnp.where(stalled, 0.0, rz / jnp.where(stalled, 1.0, curvature))
    x = x + alpha * p
    r = r - alpha * ap
    z = precond(r)
    rz_new = r @ z
    beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
    return x, r, z + beta * p, rz_new, k + 1, stalled, c_max

  z0 = precond(b)
  init = (jnp.zeros_like(b), b, z0, b @ z0, jnp.zeros((), jnp.int32),
          jnp.zeros((), bool), jnp.zeros((), b.dtype))
  x, r, _, _, k, stalled, c_max = jax.lax.while_loop(cond, body, init)
  return x, r, k, stalled, c_max


def cg(
    matvec: Callable[[Array], Array],
    b: Array,
    damping,
    tol: float,
    maxiter: int,
    *,
    preconditioner: Callable[[Array], Array] | None = None,
) -> CGResult:
  """(Preconditioned) CG for ``(A + damping I) x = b``, ``A`` PSD, ``x0 = 0``.

  Stops when ``||r|| <= tol ||b||`` (``r`` the residual of the system
  itself, never the preconditioned one), after ``maxiter`` iterations, or
  at a breakdown (module docstring), which triggers the damped fallback
  instead of a ``1 / eps`` step.

  Args:
    matvec: ``v -> A v`` for ``(k,)`` vectors.
    b: ``(k,)`` right-hand side.
    damping: ``lam >= 0``.
    tol: relative residual at which to stop.
    maxiter: iteration cap (per run; the fallback reruns from zero).
    preconditioner: optional ``r -> M^{-1} r`` with ``M`` symmetric
      positive definite, ``M ~ A + lam I`` (e.g. ``nystrom_preconditioner``
      of ``ngdjax._src.optim.preconditioners``); ``None`` is ``M = I``.
  """
  damping = jnp.asarray(damping, b.dtype)
  precond = (lambda r: r) if preconditioner is None else (
      lambda r: preconditioner(r).astype(b.dtype))
  b_norm = jnp.linalg.norm(b)
  threshold = tol * b_norm
  null_tol = roundoff_level(b.dtype)
  eps = _eps(b.dtype)

  def solve(lam):
    return _pcg_loop(lambda v: matvec(v) + lam * v, precond, b, threshold,
                     maxiter, null_tol)

  x, r, k, stalled, c_max = solve(damping)
  r_norm = jnp.linalg.norm(r)
  x_norm = jnp.linalg.norm(x)
  # ||x|| <= 2 ||b|| / lambda_min(A + lam I) for every CG iterate, and
  # lambda_min >= max(lam, what round-off resolves): an iterate beyond that
  # inverted round-off.
  floor = jnp.maximum(damping, null_tol * c_max)
  trouble = (stalled | ~jnp.isfinite(x_norm) | ~jnp.isfinite(r_norm)
             | (x_norm * floor > CG_GROWTH_SLACK * b_norm))

  def fallback():
    lam = damping + CG_FALLBACK_DAMPING * math.sqrt(eps) * jnp.where(
        jnp.isfinite(c_max) & (c_max > 0), c_max, 1.0)
    x2, r2, k2, _, _ = solve(lam)
    r2_norm = jnp.linalg.norm(r2)
    bad = ~jnp.all(jnp.isfinite(x2)) | ~jnp.isfinite(r2_norm)
    return (jnp.where(bad, 0.0, x2), jnp.where(bad, b_norm, r2_norm),
            k + k2)

  x, r_norm, k = jax.lax.cond(trouble, fallback, lambda: (x, r_norm, k))
  residual = r_norm / jnp.where(b_norm > 0, b_norm, 1.0)
  return CGResult(x, k, residual, trouble.astype(jnp.int32))

"""``(G + lam I) v = b`` with one ``N x N`` buffer: the NGD step at scale.

The Cholesky NGD step of ``ngdjax.optim.ngd`` on ``N = n c`` outputs needs
``G`` (``N^2`` words) and its factor. Built naively, ``G``, its assembly
copies, ``G + lam I``, the factor and the solve's workspace are live at once
(11.5-16 bytes per entry in float32). Here, when ``N`` exceeds
one block:

1. ``jacobian.gram_blocks(..., lower_only=True, diag_shift=lam)`` writes
   the lower block triangle of ``G + lam I`` into one buffer, block by block
   (each row block's layer factors computed once; only ``n^2 (d + m)``
   flops for the two-layer net);
2. the buffer is factorised in place by the library's blocked Cholesky
   (``solvers.blocked_cholesky``): LAPACK (or XLA's Cholesky on other
   backends) only ever factorises ``cholesky_block``-sized diagonal
   blocks, the rest is matrix products written back with
   ``dynamic_update_slice``, so no LAPACK build's large-matrix path (the
   threaded ``spotrf`` of OpenBLAS 0.3.30 segfaults at ``N = 32767``) is
   reached at any ``N``, and the same code runs in place on every backend;
3. the two triangular solves run block by block on that buffer, through
   row panels only (``tri_solve``, ``O(N^2)`` flops, ``O(block N)``
   temporaries);
4. the solve is checked without ``G``: the pivots ``L_ii^2`` and an
   inverse-iteration estimate of ``lambda_min`` against
   ``N eps max_j A_jj`` (``A_jj`` from the factor's row norms), and the
   relative residual ``||G v + lam v - b|| / ||b||`` with ``G v`` from the
   matrix-free ``gram_vp`` (one VJP and one JVP, which also gives the
   ``G v`` that Levenberg-Marquardt needs);
5. on failure the step falls back to conjugate gradients with the same
   matrix-free products (``lax.cond``, so it only runs when needed): no
   second ``N x N`` array, where the eigendecomposition pseudo-inverse of
   ``solvers.psd_solve`` would double the memory (and at ``N = 32768`` take
   hours on a CPU). CG from ``x = 0`` stays in the range of ``G + lam I``:
   on a singular system it tends to the minimum-norm solution.

Peak memory is one ``N x N`` buffer (4 bytes per entry in float32) plus
``O(block (N + p_layer))``: ``compiled.memory_analysis()`` of a jitted step
shows it (tested), and ``benchmarks/scale.py`` measures peak RSS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ngdjax._src.jacobian import gram_blocks, gram_operator
from ngdjax._src.optim import solvers
from ngdjax._src.typing import Array

# Examples per block of the Gram when the caller gives no chunk_size.
DEFAULT_BLOCK = 2048
# The failure criteria are those of solvers.psd_solve.
RESIDUAL_TOL = solvers.RESIDUAL_TOL
INVERSE_ITERATIONS = solvers.INVERSE_ITERATIONS
# CG fallback: iteration cap and tolerance.
FALLBACK_MAXITER = 200
FALLBACK_TOL = 1e-6


def block_size(n: int, chunk_size: int | None) -> int:
  """Examples per Gram block: ``chunk_size``, else ``DEFAULT_BLOCK``."""
  return min(n, chunk_size or DEFAULT_BLOCK)


def use_lean_solve(n: int, chunk_size: int | None) -> bool:
  """Whether ``gram_cholesky_solve`` pays off: more than one block."""
  return n > block_size(n, chunk_size)


def _eps(dtype) -> float:
  return float(jnp.finfo(dtype).eps)


def factor_ok(chol: Array, x: Array, residual: Array, *,
              block: int | None = None) -> Array:
  """Whether a Cholesky solve is trustworthy, from the factor alone.

  ``x`` finite; smallest pivot ``L_ii^2`` and an inverse-iteration estimate
  of ``lambda_min(A)`` (both upper bounds of it) above ``N eps max_j A_jj``
  with ``A_jj = ||L_j||^2`` (row norms of the lower triangle); relative
  residual (computed by the caller) at most ``RESIDUAL_TOL``. The same
  criteria as ``solvers.psd_solve``, without the matrix ``A``.
  """
  size = chol.shape[0]
  a_diag = solvers.row_norms_lower(chol, block=block)
  tol = size * _eps(chol.dtype) * jnp.max(a_diag)
  pivots_ok = jnp.all(jnp.square(jnp.diagonal(chol)) > tol)
  z = jnp.cos(1.0 + 2.3 * jnp.arange(size, dtype=chol.dtype))
  lam_est = jnp.asarray(jnp.inf, chol.dtype)
  for _ in range(INVERSE_ITERATIONS):
    w = solvers.cho_solve(chol, z / jnp.linalg.norm(z), block=block)
    lam_est = 1.0 / jnp.linalg.norm(w)
    z = w
  finite = jnp.all(jnp.isfinite(x)) & jnp.isfinite(residual)
  return (finite & pivots_ok & (lam_est > tol)
          & (residual <= RESIDUAL_TOL))


def gram_cholesky_solve(
    apply_or_model,
    params,
    x: Array,
    rhs: Array,
    damping,
    method: str = "auto",
    chunk_size: int | None = None,
    cholesky_block: int | None = None,
) -> tuple[Array, Array, Array]:
  """``v = (G + lam I)^{-1} rhs`` with one ``N x N`` buffer (module doc).

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree.
    x: ``(n, d)`` inputs.
    rhs: ``(N,)`` right-hand side, ``N = n c``.
    damping: ``lam >= 0`` (scalar, may be traced).
    method: the Gram method (``jacobian.gram``).
    chunk_size: examples per Gram block (default ``DEFAULT_BLOCK``), and per
      block of the matrix-free products.
    cholesky_block: tile size of ``solvers.blocked_cholesky`` and of the
      triangular solves: the largest matrix a LAPACK (or XLA) Cholesky or
      triangular-solve kernel is given (default
      ``solvers.CHOLESKY_BLOCK``).

  Returns:
    ``(v, gv, failed)``: the solution, ``G v`` (matrix-free), and an int32
    flag, 1 when the Cholesky solve failed the checks and CG was used.
  """
  dtype = rhs.dtype
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    # No half-precision Cholesky kernels: solve in float32 (as psd_solve).
    v, gv, failed = gram_cholesky_solve(
        apply_or_model, params, x, rhs.astype(jnp.float32), damping,
        method, chunk_size, cholesky_block)
    return v.astype(dtype), gv.astype(dtype), failed
  n = x.shape[0]
  block = block_size(n, chunk_size)
  lam = jnp.asarray(damping, dtype)
  a = gram_blocks(apply_or_model, params, x, block, method,
                  lower_only=True, diag_shift=lam, dtype=dtype)
  chol, factored = solvers.blocked_cholesky(a, block=cholesky_block)
  v = solvers.cho_solve(chol, rhs, block=cholesky_block)

  matvec = gram_operator(apply_or_model, params, x, block)

  def factor_checks(v, residual):
    return factored & factor_ok(chol, v, residual, block=cholesky_block)

  return checked_solve(v, factor_checks, rhs, lam, matvec)


def checked_solve(v, factor_checks, rhs, lam, matvec):
  """The check of a Cholesky solution ``v`` and the CG fallback.

  ``G v`` from the matrix-free ``matvec``; the solve passes when
  ``factor_checks`` (a boolean, or ``(v, residual) -> bool``) holds, ``v``
  is finite and the relative residual ``||G v + lam v - rhs|| / ||rhs||`` is
  at most ``RESIDUAL_TOL``; else CG (module docstring). Returns ``(v, G v,
  failed)``.
  """
  safe_v = jnp.where(jnp.isfinite(v), v, 0.0)
  gv = matvec(safe_v)
  rhs_norm = jnp.linalg.norm(rhs)
  residual = jnp.linalg.norm(gv + lam * safe_v - rhs) / jnp.where(
      rhs_norm > 0, rhs_norm, 1.0)
  ok = (factor_checks(v, residual) if callable(factor_checks)
        else factor_checks)
  ok = ok & jnp.all(jnp.isfinite(v)) & (residual <= RESIDUAL_TOL)

  def fallback():
    maxiter = min(rhs.shape[0], FALLBACK_MAXITER)
    # CG returns its iterate of smallest residual (never a 1 / eps one).
    w = solvers.cg(matvec, rhs, lam, FALLBACK_TOL, maxiter).x
    return w, matvec(w)

  v, gv = jax.lax.cond(ok, lambda: (safe_v, gv), fallback)
  return v, gv, jnp.logical_not(ok).astype(jnp.int32)

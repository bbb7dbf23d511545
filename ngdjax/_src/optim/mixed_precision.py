"""Float32-accurate NGD solves from a Gram built at the fast precision.

On a GPU or TPU the ``n^2 p`` Gram ``G = J J^T`` dominates an NGD step, and
a float32 matmul at ``HIGHEST`` precision costs several times the fast
(TF32 / bfloat16) one. The fast Gram ``G~`` is off by ``|G~ - G| ~ u |J|^2``
entrywise (``u = 2^-11`` for TF32, ``2^-8`` for bfloat16); solved directly,
``(G~ + lam I)^{-1} g`` is off by about ``u kappa`` (``kappa`` the condition
number of ``G + lam I``): percents at ``lam = 1e-3``.

``precision="mixed"`` keeps the fast Gram as a *preconditioner* only:

    M = L L^T = G~ + lam I           (Cholesky of the fast Gram, n^3 / 3)
    solve (G + lam I) v = g          by CG preconditioned with M^{-1},

where every product ``G w = J (J^T w)`` is exact (one JVP and one VJP at
``HIGHEST``, ``O(n p)`` each, no ``n x n`` matrix). The first iterate is the
fast direct solution ``M^{-1} g``; each further iteration shrinks the error
by about ``|I - M^{-1} (G + lam I)| ~ u kappa`` when that is below one, and
CG's Krylov acceleration still converges in few steps when a handful of
eigenvalues of ``M^{-1} (G + lam I)`` are far from one (it is ``I`` plus a
perturbation of small numerical rank). Cost: ``n^2 p`` at the fast rate
plus ``k`` exact ``O(n p)`` products, against ``n^2 p`` at the slow rate.

When the fast Gram is too far off (``u kappa >> 1``: tiny damping, nearly
singular ``G``) CG may not reach ``tol`` in ``maxiter`` products, and the
fast Cholesky may fail outright. Then the step falls back to the Gram built
at ``HIGHEST`` and the ordinary Cholesky solve (``info["mixed_fallback"]
= 1``, the cost of ``precision="highest"`` on top). ``info`` reports
``mixed_products`` (exact Gram-vector products used) and
``mixed_residual`` (the relative residual reached by CG).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ngdjax._src.optim import solvers
from ngdjax._src.typing import Array

# Relative residual ||(G + lam I) v - g|| / ||g|| the refinement stops at:
# about 10 float32 unit roundoffs, the backward error of a float32 Cholesky.
TOL = 1e-6
# Exact products before the fallback to the HIGHEST-precision Gram.
MAXITER = 16


def refined_solve(
    fast_kernel: Array,
    matvec: Callable[[Array], Array],
    rhs: Array,
    damping,
    exact_kernel: Callable[[], Array],
    *,
    tol: float = TOL,
    maxiter: int = MAXITER,
) -> tuple[Array, dict]:
  """``(G + lam I)^{-1} rhs`` at float32 accuracy from a fast ``G~``.

  Args:
    fast_kernel: ``(k, k)`` ``G~``, the Gram at the fast precision.
    matvec: ``w -> G w`` computed exactly, ``(k,) -> (k,)``.
    rhs: ``(k,)``.
    damping: ``lam >= 0``.
    exact_kernel: ``() -> G`` at ``HIGHEST`` precision, traced into the
      fallback branch only (run when the refinement does not converge).
    tol: relative residual at which CG stops.
    maxiter: exact products allowed before the fallback.

  Returns:
    ``(v, info)``; ``info`` holds ``mixed_products`` (int32),
    ``mixed_residual`` (relative residual, ``rhs.dtype``),
    ``mixed_fallback`` (int32, 1 when the Gram was rebuilt at ``HIGHEST``)
    and ``cholesky_failed`` (int32, of the fallback's solve).
  """
  dtype = rhs.dtype
  lam = jnp.asarray(damping, dtype)
  a = fast_kernel.astype(dtype) + lam * jnp.eye(rhs.shape[0], dtype=dtype)
  chol = jnp.linalg.cholesky(a)
  chol_ok = jnp.all(jnp.isfinite(chol))
  safe = jnp.where(chol_ok, chol, jnp.eye(rhs.shape[0], dtype=dtype))

  def precondition(r):
    return jax.scipy.linalg.cho_solve((safe, True), r)

  result = solvers.cg(matvec, rhs, lam, tol, maxiter,
                      preconditioner=precondition)
  converged = (chol_ok & (result.failed == 0)
               & (result.residual <= tol) & jnp.all(jnp.isfinite(result.x)))

  def fallback():
    v, failed = solvers.psd_solve(exact_kernel().astype(dtype), rhs, lam)
    return v, failed

  v, failed = jax.lax.cond(
      converged, lambda: (result.x, jnp.zeros((), jnp.int32)), fallback)
  info = {
      "mixed_products": result.iterations.astype(jnp.int32),
      "mixed_residual": result.residual.astype(dtype),
      "mixed_fallback": (~converged).astype(jnp.int32),
      "cholesky_failed": failed,
  }
  return v, info

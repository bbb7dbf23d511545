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

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

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
  chol = jnp.linalg.cholesky(a)
  x = jax.scipy.linalg.cho_solve((chol, True), rhs)
  ok = _cholesky_ok(a, chol, x, rhs)
  x = jax.lax.cond(
      ok, lambda: x, lambda: eigh_solve(mat, rhs, damping).astype(x.dtype)
  )
  return x, jnp.logical_not(ok).astype(jnp.int32)


# psd_solve: a Cholesky solve whose relative residual exceeds this failed.
RESIDUAL_TOL = 1e-2
# psd_solve: steps of inverse iteration estimating lambda_min.
INVERSE_ITERATIONS = 3


def _cholesky_ok(a: Array, chol: Array, x: Array, rhs: Array) -> Array:
  """Whether a Cholesky solve of ``a x = rhs`` is trustworthy (docstring)."""
  k = a.shape[0]
  finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(chol))
  tol = k * _eps(a.dtype) * jnp.max(jnp.abs(jnp.diagonal(a)))
  pivots_ok = jnp.all(jnp.square(jnp.diagonal(chol)) > tol)
  # Inverse iteration from a fixed vector: 1 / ||A^{-1} z|| >= lambda_min
  # for every unit z, and tends to it.
  z = jnp.cos(1.0 + 2.3 * jnp.arange(k, dtype=a.dtype))
  lam_est = jnp.asarray(jnp.inf, a.dtype)
  for _ in range(INVERSE_ITERATIONS):
    w = jax.scipy.linalg.cho_solve((chol, True), z / jnp.linalg.norm(z))
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

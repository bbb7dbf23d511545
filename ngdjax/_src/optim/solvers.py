"""Damped positive semi-definite solves: Cholesky with a fallback, and CG.

``psd_solve`` solves ``(M + lam I) x = b`` for a symmetric PSD ``M``.

* Cholesky first (``k^3 / 3`` flops).
* Fallback. Cholesky of a numerically singular matrix (float32, an
  undamped Gram with near-parallel rows, a K-FAC factor with more columns
  than rows) fails with NaN. The solve then switches, inside the same jitted
  step (``lax.cond``, so the ``O(k^3)`` eigendecomposition only runs when
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

``cg`` is conjugate gradients on ``(A + lam I) x = b`` for a matrix-free
``A``, with the iteration count and final relative residual reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


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
  damping = jnp.asarray(damping, mat.dtype)
  if pinv:
    return eigh_solve(mat, rhs, damping), jnp.zeros((), jnp.int32)
  eye = jnp.eye(mat.shape[0], dtype=mat.dtype)
  chol = jnp.linalg.cholesky(mat + damping * eye)
  x = jax.scipy.linalg.cho_solve((chol, True), rhs)
  ok = jnp.all(jnp.isfinite(x))
  x = jax.lax.cond(
      ok, lambda: x, lambda: eigh_solve(mat, rhs, damping).astype(x.dtype)
  )
  return x, jnp.logical_not(ok).astype(jnp.int32)


class CGResult(NamedTuple):
  """Outcome of ``cg``.

  Attributes:
    x: ``(k,)`` approximate solution.
    iterations: ``()`` int32, matrix-vector products used.
    residual: ``()`` final ``||b - (A + lam I) x|| / ||b||`` (recursive
      residual; 0 when ``b = 0``).
  """

  x: Array
  iterations: Array
  residual: Array


def cg(
    matvec: Callable[[Array], Array],
    b: Array,
    damping,
    tol: float,
    maxiter: int,
) -> CGResult:
  """Conjugate gradients for ``(A + damping I) x = b``, ``A`` PSD, ``x0 = 0``.

  Stops when ``||r|| <= tol ||b||`` or after ``maxiter`` iterations. A
  zero curvature ``p^T A p`` (a singular ``A`` with zero damping, on an
  inconsistent right-hand side) stops the iteration instead of dividing by
  zero.
  """
  damping = jnp.asarray(damping, b.dtype)
  b_norm = jnp.linalg.norm(b)
  threshold = tol * b_norm

  def op(v):
    return matvec(v) + damping * v

  def cond(state):
    _, r, _, _, k, stalled = state
    return (jnp.linalg.norm(r) > threshold) & (k < maxiter) & ~stalled

  def body(state):
    x, r, p, rs, k, _ = state
    ap = op(p)
    curvature = p @ ap
    stalled = curvature <= 0
    alpha = jnp.where(stalled, 0.0, rs / jnp.where(stalled, 1.0, curvature))
    x = x + alpha * p
    r = r - alpha * ap
    rs_new = r @ r
    p = r + jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0) * p
    return x, r, p, rs_new, k + 1, stalled

  init = (jnp.zeros_like(b), b, b, b @ b, jnp.zeros((), jnp.int32),
          jnp.zeros((), bool))
  x, r, _, _, k, _ = jax.lax.while_loop(cond, body, init)
  residual = jnp.linalg.norm(r) / jnp.where(b_norm > 0, b_norm, 1.0)
  return CGResult(x, k, residual)

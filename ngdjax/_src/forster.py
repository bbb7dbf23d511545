"""The Forster transform: radial isotropic position of the rows of ``x``.

Given ``x`` (``(n, d)``, ``n >= d``) with its rows in general position, find an
invertible ``A`` (``(d, d)``) such that ``Z = normalize_rows(x A)`` satisfies

    Z^T Z = (n / d) I                                        (docs/math.md)

Then every leverage score ``z_i^T (Z^T Z)^{-1} z_i`` equals ``d / n`` and
K-FAC's output-space update on ``Z`` is natural gradient descent up to the
scale ``d`` (docs/math.md, K-FAC, Forster). Accuracy is measured by

    error(Z) = ||Z^T Z - (n/d) I||_F / (n/d).

``A`` is unique only up to a positive scale and a right orthogonal factor
(``A Q`` gives ``Z Q``, which is just as isotropic); ``M = A A^T`` is unique up
to scale, and ``Z Z^T`` is unique. Both methods return ``A`` scaled so that
``A[0, 0] = 1`` (the appendix's normalisation).

Methods (``ForsterMethod``):

* ``"fixed_point"``: Algorithm 1 of the appendix, exactly:
  ``Z <- normalize_rows(x)``, ``A <- I``; repeat ``T = (Z^T Z)^{-1/2}``
  (eigendecomposition), ``Z <- normalize_rows(Z T)``, ``A <- A T``,
  ``A <- A / A[0, 0]``. It is Tyler's M-estimator iteration in disguise:
  ``M_{k+1} = (sum_i x_i x_i^T / (x_i^T M_k x_i))^{-1}``. Linear convergence,
  about ``2 / (d + 2)`` per step on Gaussian data, slower near degeneracy;
  ``O(n d^2)`` per step.
* ``"newton"``: Newton's method on the geodesically convex potential of
  radial isotropic position (Barthe's potential; Tyler's likelihood)

      phi(M) = sum_i log(x_i^T M x_i) - (n/d) log det M,     M = A A^T,

  in the chart ``M(S) = A exp(S) A^T`` around the current ``A`` (``S``
  symmetric). With ``u_i`` the rows of ``Z`` and ``C = Z^T Z``, the gradient
  at ``S = 0`` is ``G = C - (n/d) I`` (the isotropy residual itself) and the
  Hessian acts as ``H[S] = (S C + C S) / 2 - sum_i (u_i^T S u_i) u_i u_i^T``.
  The Newton system is solved matrix-free by conjugate gradients (each product
  ``O(n d^2)``, memory ``O(n d)``, so large ``d`` is fine), preconditioned by
  the inverse of ``S -> (S C + C S) / 2``, which makes the first CG iterate
  Algorithm 1's step to first order. A line search on ``phi`` (convex along
  the chart's lines; best power-of-two step) makes it globally convergent.
  It starts from whitening, ``A = (x_n^T x_n)^{-1/2}`` on the row-normalised
  inputs, so the whole method is invariant under ``x -> x L``: anisotropy
  costs nothing. Converges quadratically: 3-8 steps to 1e-10 where
  Algorithm 1 takes 10-40, and 5-7 where Algorithm 1 takes hundreds (a
  subspace holding just under ``k n / d`` rows). Per step it costs about
  three times Algorithm 1, so on easy data the two take similar time
  (``benchmarks/forster.py``).

Degenerate inputs. The transform exists only if no ``k``-dimensional subspace
holds more than ``k n / d`` rows, nor exactly ``k n / d`` unless the rest
lie in a complementary subspace (Forster 2002 asks for general position).
Otherwise ``phi`` is unbounded below, the iterations drive ``A`` to a singular
matrix, and Algorithm 1 can report a tiny error on its own ``Z`` while
``normalize_rows(x A)`` is far from isotropic (docs/math.md: ``cond(A)`` about
1e18). This module never reports such an ``A`` as converged:

* rank-deficient ``x`` (every row in a ``(d-1)``-dimensional subspace) and
  ``n < d`` are refused before anything is traced;
* the jitted loop stops when ``cond(A)`` exceeds ``max_cond``, when the error
  stops decreasing (``patience`` steps without a 0.1% improvement of the best
  error) or when a value is not finite;
* ``error`` and ``converged`` are always those of ``Z = normalize_rows(x A)``
  recomputed from the returned ``A`` (not of an iterate that may have
  drifted from it);
* on failure ``forster`` looks for the rows that collapse (rows that ``A``
  shrinks far more than the others), reports the dimension of the subspace
  they span against ``k n / d``, and raises ``ValueError`` (or, with
  ``raise_on_failure=False``, returns ``converged=False`` and a ``reason``).

``perturb=`` adds a tiny seeded random perturbation first (the appendix's
Remark 5); it is opt-in because it changes the data, and on degenerate data
the transform then rests on the perturbation: ``A`` amplifies it (``cond(A)``
grows like ``1 / perturb``), and the unperturbed rows mapped by ``A`` are not
isotropic.

Example:

  >>> import jax, jax.numpy as jnp
  >>> from ngdjax._src.forster import apply_forster, forster
  >>> scales = jnp.array([1.0, 10.0, 100.0, 1000.0])
  >>> x = jax.random.normal(jax.random.key(0), (50, 4)) * scales
  >>> res = forster(x)
  >>> res.A.shape, res.Z.shape, bool(res.converged)
  ((4, 4), (50, 4), True)
  >>> apply_forster(res, x[:3]).shape
  (3, 4)
"""

from __future__ import annotations

import enum
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngdjax._src import checks
from ngdjax._src.linalg import normalize_rows, symmetrize
from ngdjax._src.typing import Array

# Relative decrease of the best error that counts as progress (stall test).
_PROGRESS = 1e-3
# Backtracking halvings before a Newton line search gives up.
_MAX_HALVINGS = 40
# Armijo sufficient-decrease constant.
_ARMIJO = 1e-4


class ForsterMethod(enum.Enum):
  """Implementations of ``forster``; see the module docstring."""

  FIXED_POINT = "fixed_point"
  NEWTON = "newton"


class ForsterStatus(enum.IntEnum):
  """Why the iteration stopped (``ForsterResult.status``)."""

  CONVERGED = 0
  MAX_ITERS = 1
  STALLED = 2
  ILL_CONDITIONED = 3
  NONFINITE = 4
  INCONSISTENT = 5
  RUNNING = 6  # internal: never returned


_REASONS = {
    ForsterStatus.CONVERGED: "converged: error <= tol",
    ForsterStatus.MAX_ITERS: (
        "max_iters reached before the error fell below tol; raise max_iters"
        " or use method='newton'"
    ),
    ForsterStatus.STALLED: (
        "stalled: the error stopped decreasing above tol (the data is"
        " degenerate, or so close to it that tol is below the accuracy that"
        " cond(A) allows in this dtype; raise patience if it was still"
        " improving slowly)"
    ),
    ForsterStatus.ILL_CONDITIONED: (
        "ill-conditioned: cond(A) exceeded max_cond; the rows are not in"
        " general position (some k-dim subspace holds >= k n / d rows) or"
        " numerically close to it"
    ),
    ForsterStatus.NONFINITE: "non-finite values appeared during the iteration",
    ForsterStatus.INCONSISTENT: (
        "inconsistent: Algorithm 1's own iterate Z reached tol but"
        " normalize_rows(x A) did not. They drift apart when A is too"
        " ill-conditioned to be applied in this dtype (degenerate data; see"
        " cond(A)) or through round-off accumulated over many steps (then"
        " use method='newton', which recomputes Z from x A at every step,"
        " or a looser tol)"
    ),
}


class ForsterResult(NamedTuple):
  """Result of ``forster``. All fields are arrays (the tuple is a pytree).

  Attributes:
    A: ``(d, d)`` transform, ``A[0, 0] = 1``.
    Z: ``(n, d)`` ``normalize_rows(x A)`` (of the perturbed ``x`` when
      ``perturb`` was given).
    iterations: ``()`` int32, updates of ``A`` performed (Newton steps for
      ``"newton"``).
    error: ``()`` ``||Z^T Z - (n/d) I||_F / (n/d)`` of ``Z`` above.
    converged: ``()`` bool, ``error <= tol`` with ``cond <= max_cond`` and all
      values finite.
    cond: ``()`` 2-norm condition number of ``A``.
    history: ``(max_iters + 1,)`` error after each update (``history[0]`` is
      the starting point), NaN after the last one.
    status: ``()`` int32, a ``ForsterStatus`` code; see ``reason``.
    cg_iterations: ``()`` int32, conjugate-gradient products in total (the
      inner work of ``"newton"``; 0 for ``"fixed_point"``).
  """

  A: Array
  Z: Array
  iterations: Array
  error: Array
  converged: Array
  cond: Array
  history: Array
  status: Array
  cg_iterations: Array

  @property
  def reason(self) -> str:
    """Human-readable ``status`` (concrete results only, not under jit)."""
    return _REASONS[ForsterStatus(int(self.status))]


def isotropy_error(z: Array) -> Array:
  """``||Z^T Z - (n/d) I||_F / (n/d)`` for ``z`` of shape ``(n, d)``."""
  z = checks.check_array("z", z, ndim=2)
  n, d = z.shape
  return _error_of_gram(_gram(z), n, d)


def _gram(z: Array) -> Array:
  """``Z^T Z``, exactly symmetric.

  Under jit XLA may sum ``(i, j)`` and ``(j, i)`` in different orders; near
  convergence ``Z^T Z - (n/d) I`` is so small that this asymmetry is a large
  part of it, and conjugate gradients (which only produce symmetric
  corrections) would stall on it.
  """
  return symmetrize(z.T @ z)


def _error_of_gram(c: Array, n: int, d: int) -> Array:
  target = n / d
  return jnp.linalg.norm(c - target * jnp.eye(d, dtype=c.dtype)) / target


def _cond(a: Array) -> Array:
  s = jnp.linalg.svd(a, compute_uv=False)
  return s[0] / s[-1]


def _stalled(hist: Array, k: Array, patience: int) -> Array:
  """No 0.1% improvement of the best error within the last ``patience``."""
  idx = jnp.arange(hist.shape[0])
  inf = jnp.asarray(jnp.inf, hist.dtype)
  filled = jnp.where(jnp.isnan(hist), inf, hist)
  best_before = jnp.min(jnp.where(idx <= k - patience, filled, inf))
  best_recent = jnp.min(
      jnp.where((idx > k - patience) & (idx <= k), filled, inf)
  )
  return (k >= patience) & (best_recent > (1.0 - _PROGRESS) * best_before)


def _next_status(err, cond, hist, k, tol, max_cond, patience):
  """Status after update ``k`` (``RUNNING`` when the loop should go on)."""
  s = ForsterStatus
  status = jnp.where(
      _stalled(hist, k, patience), s.STALLED, s.RUNNING
  )
  status = jnp.where(cond > max_cond, s.ILL_CONDITIONED, status)
  status = jnp.where(err <= tol, s.CONVERGED, status)
  status = jnp.where(
      jnp.isfinite(err) & jnp.isfinite(cond), status, s.NONFINITE
  )
  return status.astype(jnp.int32)


def _inv_sqrt_psd(c: Array) -> Array:
  """``C^{-1/2}`` of a symmetric positive definite ``C`` through ``eigh``."""
  w, v = jnp.linalg.eigh(symmetrize(c))
  return (v * jax.lax.rsqrt(w)) @ v.T


# --------------------------------------------------------------------------
# Algorithm 1 (fixed point).


class _FixedPointState(NamedTuple):
  k: Array  # () int32, updates done
  z: Array  # (n, d) iterate of Algorithm 1
  c: Array  # (d, d) z^T z, carried so it is computed once per step
  a: Array  # (d, d) accumulated transform, a[0, 0] = 1
  hist: Array  # (max_iters + 1,) error history, NaN padded
  status: Array  # () int32 ForsterStatus


def _fixed_point(xn, tol, max_cond, max_iters, patience):
  n, d = xn.shape
  dtype = xn.dtype
  c0 = _gram(xn)
  err0 = _error_of_gram(c0, n, d)
  hist = jnp.full((max_iters + 1,), jnp.nan, dtype).at[0].set(err0)
  a0 = jnp.eye(d, dtype=dtype)
  status0 = _next_status(
      err0, jnp.asarray(1.0, dtype), hist, jnp.int32(0), tol, max_cond,
      patience,
  )
  init = _FixedPointState(jnp.int32(0), xn, c0, a0, hist, status0)

  def cond_fn(s):
    return (s.status == ForsterStatus.RUNNING) & (s.k < max_iters)

  def body(s):
    t = _inv_sqrt_psd(s.c)
    # Algorithm 1 propagates Z itself (Z <- normalize(Z T)), not x A; the
    # two drift apart when A is numerically singular (or by round-off over
    # many steps), which is checked after the loop.
    z = normalize_rows(s.z @ t)
    a = s.a @ t
    a = a / a[0, 0]
    c = _gram(z)
    err = _error_of_gram(c, n, d)
    k = s.k + 1
    hist = s.hist.at[k].set(err)
    status = _next_status(err, _cond(a), hist, k, tol, max_cond, patience)
    return _FixedPointState(k, z, c, a, hist, status)

  s = jax.lax.while_loop(cond_fn, body, init)
  return s.a, s.k, s.hist, s.status, jnp.int32(0)


# --------------------------------------------------------------------------
# Newton's method on Barthe's potential.


class _NewtonState(NamedTuple):
  k: Array  # () int32, Newton steps done
  a: Array  # (d, d) transform, a[0, 0] = 1
  u: Array  # (n, d) normalize_rows(xn a)
  c: Array  # (d, d) u^T u
  err: Array  # () error of u
  hist: Array  # (max_iters + 1,) error history, NaN padded
  status: Array  # () int32 ForsterStatus
  cg: Array  # () int32, CG products so far


def _hessian_vp(s_mat, u, c, target):
  """``H[S] + target * tr(S) / d * I`` (the chart's Hessian, made definite).

  ``H`` annihilates ``S = I`` (a change of scale, to which ``phi`` is
  blind); adding ``target * tr(S) / d * I`` fixes that direction without
  changing the solution, because the gradient is traceless.
  """
  d = c.shape[0]
  q = jnp.sum((u @ s_mat) * u, axis=1)  # u_i^T S u_i
  h = symmetrize(s_mat @ c) - (u.T * q) @ u
  return h + (target * jnp.trace(s_mat) / d) * jnp.eye(d, dtype=c.dtype)


def _newton_direction(u, c, g, err, target, max_cg):
  """Inexact Newton direction by preconditioned conjugate gradients."""
  ec, vc = jnp.linalg.eigh(c)
  denom = 0.5 * (ec[:, None] + ec[None, :])

  def precond(r):
    # Inverse of S -> (S C + C S) / 2, diagonal in C's eigenbasis.
    return vc @ ((vc.T @ r @ vc) / denom) @ vc.T

  b = -g
  bnorm = jnp.linalg.norm(b)
  # Forcing term (Eisenstat & Walker): loose far from the solution, tight
  # near it, so the outer convergence stays quadratic with few products.
  eta = jnp.minimum(0.5, err)

  def cg_cond(st):
    j, _, r, _, _ = st
    return (j < max_cg) & (jnp.linalg.norm(r) > eta * bnorm)

  def cg_body(st):
    j, x, r, p, rz = st
    hp = _hessian_vp(p, u, c, target)
    php = jnp.vdot(p, hp)
    alpha = rz / jnp.where(php > 0, php, 1.0)
    x = x + alpha * p
    r = r - alpha * hp
    zr = precond(r)
    rz_new = jnp.vdot(r, zr)
    p = zr + (rz_new / jnp.where(rz != 0, rz, 1.0)) * p
    return j + 1, x, r, p, rz_new

  z0 = precond(b)
  init = (jnp.int32(0), jnp.zeros_like(b), b, z0, jnp.vdot(b, z0))
  j, x, *_ = jax.lax.while_loop(cg_cond, cg_body, init)
  # CG on a positive semi-definite operator always yields descent; keep a
  # safeguard for round-off (fall back to the preconditioned gradient).
  x = jnp.where(jnp.vdot(g, x) < 0, x, z0)
  return symmetrize(x), j


def _line_search(u, s_mat, g, target):
  """Step length along ``M(t) = A exp(t S) A^T``; returns ``(t, lam, v)``.

  With ``S = V diag(lam) V^T`` and ``W = U V`` (unit rows), the change of
  ``phi`` along the line is

      phi(t) - phi(0) = sum_i log1p(sum_j W_ij^2 expm1(t lam_j))
                        - (n/d) t sum_j lam_j,

  ``O(n d)`` per trial once ``W`` is formed. Written with ``log1p``/``expm1``
  because near the solution the decrease (about ``err^2``) is far below the
  round-off of ``phi`` itself, and a search on ``phi`` would accept noise.

  ``t`` is halved from 1 until the Armijo condition holds and halving no
  longer lowers ``phi``: ``phi`` is convex in ``t``, so this is the best power
  of two. Far from the solution a full Newton step can satisfy Armijo while
  overshooting the minimum along the line by orders of magnitude in
  ``cond(A)`` (seen on near-degenerate data), which the second test prevents.
  """
  lam, v = jnp.linalg.eigh(s_mat)
  w2 = (u @ v) ** 2
  w2 = w2 / jnp.sum(w2, axis=1, keepdims=True)
  slope = jnp.vdot(g, s_mat)

  def dphi(t):
    tl = t * lam
    # A step that rescales M by more than e^600 is never accepted (it
    # would overflow expm1); halving brings it back in range.
    delta = w2 @ jnp.expm1(jnp.minimum(tl, 600.0))
    val = jnp.sum(jnp.log1p(delta)) - target * jnp.sum(tl)
    return jnp.where(jnp.max(tl) > 600.0, jnp.inf, val)

  def ls_cond(st):
    j, t, f_t, f_half = st
    armijo = f_t <= _ARMIJO * t * slope
    return (j < _MAX_HALVINGS) & (~armijo | (f_half < f_t))

  def ls_body(st):
    j, t, _, f_half = st
    return j + 1, 0.5 * t, f_half, dphi(0.25 * t)

  one = jnp.asarray(1.0, u.dtype)
  j, t, f_t, _ = jax.lax.while_loop(
      ls_cond, ls_body, (jnp.int32(0), one, dphi(one), dphi(0.5 * one))
  )
  # A failed search returns t = 0 (no step); the caller then stops.
  t = jnp.where((j < _MAX_HALVINGS) & (f_t < 0), t, 0.0)
  return t, lam, v


def _newton(xn, tol, max_cond, max_iters, patience):
  n, d = xn.shape
  dtype = xn.dtype
  target = n / d
  max_cg = min(d * (d + 1) // 2, 200)
  a0 = _inv_sqrt_psd(_gram(xn))
  a0 = a0 / a0[0, 0]
  u0 = normalize_rows(xn @ a0)
  c0 = _gram(u0)
  err0 = _error_of_gram(c0, n, d)
  hist = jnp.full((max_iters + 1,), jnp.nan, dtype).at[0].set(err0)
  status0 = _next_status(
      err0, _cond(a0), hist, jnp.int32(0), tol, max_cond, patience
  )
  init = _NewtonState(
      jnp.int32(0), a0, u0, c0, err0, hist, status0, jnp.int32(0)
  )

  def cond_fn(s):
    return (s.status == ForsterStatus.RUNNING) & (s.k < max_iters)

  def body(s):
    g = s.c - target * jnp.eye(d, dtype=dtype)
    s_mat, j = _newton_direction(s.u, s.c, g, s.err, target, max_cg)
    t, lam, v = _line_search(s.u, s_mat, g, target)
    # M <- A exp(t S) A^T, i.e. A <- A exp(t S / 2).
    a = s.a @ ((v * jnp.exp(0.5 * t * lam)) @ v.T)
    a = a / a[0, 0]
    # Recomputing Z from x (rather than updating it) keeps Z = normalize(x A)
    # exact to round-off, so the error tested is the error reported.
    u = normalize_rows(xn @ a)
    c = _gram(u)
    err = _error_of_gram(c, n, d)
    k = s.k + 1
    hist = s.hist.at[k].set(err)
    status = _next_status(err, _cond(a), hist, k, tol, max_cond, patience)
    # No step that lowers phi at working precision: waiting for the stall
    # test would only repeat this step.
    status = jnp.where(
        (t == 0) & (status == ForsterStatus.RUNNING),
        ForsterStatus.STALLED,
        status,
    ).astype(jnp.int32)
    return _NewtonState(k, a, u, c, err, hist, status, s.cg + j)

  s = jax.lax.while_loop(cond_fn, body, init)
  return s.a, s.k, s.hist, s.status, s.cg


# --------------------------------------------------------------------------
# Public entry points.


@functools.partial(jax.jit, static_argnames=("method", "max_iters"))
def _forster_jit(xn, tol, max_cond, patience, *, method, max_iters):
  """The jitted iteration on row-normalised ``xn``; see ``forster``."""
  n, d = xn.shape
  run = _newton if method == ForsterMethod.NEWTON.value else _fixed_point
  a, k, hist, status, cg = run(xn, tol, max_cond, max_iters, patience)
  z = normalize_rows(xn @ a)
  err = isotropy_error(z)
  cond = _cond(a)
  finite = jnp.isfinite(err) & jnp.isfinite(cond) & jnp.all(jnp.isfinite(a))
  ok = finite & (err <= tol) & (cond <= max_cond)
  s = ForsterStatus
  # The loop's status refers to its own iterate; the claim is re-checked on
  # Z = normalize(x A). A "converged" iterate whose recomputed Z misses tol
  # is the silent failure of docs/math.md and is reported as such.
  status = jnp.where(
      ok,
      s.CONVERGED,
      jnp.where(
          ~finite,
          s.NONFINITE,
          jnp.where(
              status == s.CONVERGED,
              jnp.where(cond > max_cond, s.ILL_CONDITIONED, s.INCONSISTENT),
              jnp.where(status == s.RUNNING, s.MAX_ITERS, status),
          ),
      ),
  ).astype(jnp.int32)
  return ForsterResult(
      A=a,
      Z=z,
      iterations=k,
      error=err,
      converged=status == s.CONVERGED,
      cond=cond,
      history=hist,
      status=status,
      cg_iterations=cg,
  )


def _compute_dtype(x) -> np.dtype:
  """float64 stays float64 (when x64 is on); everything else is float32."""
  dt = np.dtype(x.dtype)
  if dt == np.float64 and jax.config.jax_enable_x64:
    return np.dtype(np.float64)
  if np.issubdtype(dt, np.integer) and jax.config.jax_enable_x64:
    return np.dtype(np.float64)
  # eigh and svd need float32 at least, so half floats are promoted.
  return np.dtype(np.float32)


def _defaults(dtype: np.dtype) -> tuple[float, float]:
  """``(tol, max_cond)`` defaults for a compute dtype."""
  eps = float(np.finfo(dtype).eps)
  # tol: a little above the round-off of Z^T Z; max_cond: past it, x A loses
  # more than 1% of its relative accuracy in the worst direction.
  tol = 1e-10 if dtype == np.float64 else 1e-5
  return tol, 1e-2 / eps


def _check_rank(x: np.ndarray, dtype: np.dtype) -> None:
  """Refuses ``x`` whose rows span fewer than ``d`` dimensions."""
  n, d = x.shape
  xe = x / np.linalg.norm(x, axis=1, keepdims=True)
  # Columns are equilibrated first so that strongly anisotropic (but full
  # rank) data is not mistaken for rank-deficient data.
  xe = xe / np.maximum(np.linalg.norm(xe, axis=0), 1e-300)
  s = np.linalg.svd(xe, compute_uv=False)
  rtol = max(n, d) * float(np.finfo(dtype).eps)
  rank = int(np.sum(s > rtol * s[0]))
  if rank < d:
    raise ValueError(
        f"x has rank {rank} < d = {d} (singular values down to "
        f"{s[-1] / s[0]:.2g} of the largest): every row lies in a "
        f"{rank}-dimensional subspace, so no invertible A can make "
        "Z^T Z = (n/d) I. Drop redundant or constant columns, project x onto "
        "its top right singular vectors (x @ vt[:rank].T), or pass a small "
        "perturb= to force general position."
    )


def _parallel_rows(xn: np.ndarray) -> tuple[int, int]:
  """``(count, row)``: the largest set of parallel unit rows and one member."""
  # Sign-canonical directions (largest entry positive), rounded so that
  # round-off does not split a set of parallel rows.
  idx = np.argmax(np.abs(xn), axis=1)
  sign = np.sign(xn[np.arange(xn.shape[0]), idx])
  keys = np.round(xn * sign[:, None], 9)
  _, first, counts = np.unique(
      keys, axis=0, return_index=True, return_counts=True
  )
  best = int(np.argmax(counts))
  return int(counts[best]), int(first[best])


def _collapsed_rows(xn: np.ndarray, a: np.ndarray):
  """Rows that ``A`` shrinks far more than the rest, and the span they lie in.

  On degenerate data the iterations drive ``A`` towards a map that kills the
  over-full subspace, so the (unit) rows inside it have ``||x_i A||``
  orders of magnitude below the others. The set is cut at the largest gap
  (in log scale) of those norms when it exceeds 10x; its dimension is cut
  at the largest gap of its singular values when that exceeds 100x (so a
  chance gap among generic rows is not mistaken for a subspace).

  Returns:
    ``(count, dim, dist)`` (``dist``: the largest relative distance of those
    rows to their ``dim``-dimensional span) or ``None``.
  """
  if not np.all(np.isfinite(a)):
    return None
  r = np.maximum(np.linalg.norm(xn @ a, axis=1), 1e-300)
  order = np.argsort(r)
  gaps = np.diff(np.log10(r[order]))
  if gaps.size == 0 or gaps.max() < 1.0:
    return None
  count = int(np.argmax(gaps)) + 1
  rows = xn[order[:count]]
  _, sv, vt = np.linalg.svd(rows, full_matrices=False)
  sgaps = -np.diff(np.log10(np.maximum(sv, 1e-300)))
  dim = int(np.argmax(sgaps)) + 1
  if sgaps[dim - 1] < 2.0:
    return None
  resid = rows - (rows @ vt[:dim].T) @ vt[:dim]
  return count, dim, float(np.max(np.linalg.norm(resid, axis=1)))


def _diagnosis(x: np.ndarray, a: np.ndarray) -> str:
  """A sentence naming the subspace that holds too many rows, if found."""
  n, d = x.shape
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  count, row = _parallel_rows(xn)
  if count > n / d:
    return (
        f" {count} rows of x are parallel to row {row}, more than n / d = "
        f"{n / d:g}: a line holds too many rows, so the transform does not "
        "exist."
    )
  found = _collapsed_rows(xn, a)
  if found is None:
    return ""
  count, dim, dist = found
  if not (dim < d and count >= dim * n / d):
    return ""
  where = (
      f"{count} of the n = {n} rows of x lie in a {dim}-dimensional "
      f"subspace (to a relative distance {dist:.1g}), at least "
      f"k n / d = {dim * n / d:g} for k = {dim}"
  )
  if dist <= 1e3 * np.finfo(np.float64).eps * d:
    return f" {where}: the rows are not in general position and the " + (
        "transform does not exist."
    )
  return f" {where}: the transform exists but its A is ill-conditioned " + (
      "(cond(A) grows as that distance shrinks), too much so for tol in "
      "this dtype (loosen tol, or remove the near-degeneracy)."
  )


def _failure_message(res: ForsterResult, x: np.ndarray, method: str) -> str:
  return (
      f"forster(method={method!r}) did not converge after "
      f"{int(res.iterations)} iterations: {res.reason}. Final error "
      f"{float(res.error):.3g}, cond(A) {float(res.cond):.3g}."
      + _diagnosis(x, np.asarray(res.A, np.float64))
      + " Fixes: remove duplicated or collinear rows, project x to fewer "
      "dimensions, pass perturb= (a seeded random perturbation, e.g. 1e-4; "
      "cond(A) grows like 1/perturb), or pass raise_on_failure=False to "
      "inspect the result."
  )


def forster(
    x,
    *,
    tol: float | None = None,
    max_iters: int = 500,
    method: str | ForsterMethod = "newton",
    perturb: float | None = None,
    seed: int = 0,
    max_cond: float | None = None,
    patience: int = 10,
    raise_on_failure: bool = True,
) -> ForsterResult:
  """Forster transform: ``Z = normalize_rows(x A)`` with ``Z^T Z = (n/d) I``.

  Validation (shapes, NaN/Inf, zero rows, ``n < d``, rank) runs in Python on
  concrete inputs before anything is traced; the iteration itself is one
  jitted ``lax.while_loop``, compiled once per shape, dtype, ``method`` and
  ``max_iters`` (``tol``, ``max_cond`` and ``patience`` are traced). Rows are
  normalised first (the transform is blind to row scales). ``forster`` may
  itself be called under ``jit``; then value checks and ``raise_on_failure``
  are skipped, and the caller must look at ``converged``.

  Args:
    x: ``(n, d)`` inputs with ``n >= d``, finite, no zero rows, rank ``d``.
      float64 stays float64 (with ``jax_enable_x64``); other dtypes are
      computed in float32.
    tol: target for ``||Z^T Z - (n/d) I||_F / (n/d)``; default 1e-10 in
      float64, 1e-5 in float32.
    max_iters: most updates of ``A`` (fixed-point steps or Newton steps).
    method: ``"newton"`` (default; Newton's method on Barthe's potential,
      quadratic convergence) or ``"fixed_point"`` (Algorithm 1 exactly).
    perturb: opt-in relative size of a seeded Gaussian perturbation added to
      each row (``x_i + perturb ||x_i|| g_i / sqrt(d)``, ``g_i ~ N(0, I)``),
      the appendix's remark for data not in general position. ``Z`` is then
      that of the perturbed rows; ``None`` (default) leaves ``x`` untouched.
    seed: seed of the perturbation.
    max_cond: stop, and do not claim convergence, once ``cond(A)`` exceeds
      this; default ``0.01 / eps`` of the compute dtype (4.5e13 in float64,
      8.4e4 in float32).
    patience: stop when the best error has not improved by 0.1% in this many
      updates (lack of progress: degenerate data, or ``tol`` below what the
      dtype allows).
    raise_on_failure: when the result has not converged, raise
      ``ValueError`` with the reason and, when one is found, the subspace
      that holds too many rows. With ``False`` the result is returned with
      ``converged=False``; ``result.reason`` says why.

  Returns:
    A ``ForsterResult`` (``A`` ``(d, d)`` with ``A[0, 0] = 1``, ``Z``
    ``(n, d)``, ``iterations``, ``error``, ``converged``, ``cond``,
    ``history``, ``status``, ``cg_iterations``).

  Raises:
    ValueError: bad input, ``n < d``, rank-deficient ``x``, or (with
      ``raise_on_failure``) no convergence, including degenerate data.

  References:
    Forster, "A linear lower bound on the unbounded error probabilistic
    communication complexity", JCSS 2002 (Theorem 4.1); Zhang, Martens &
    Grosse 2019, Appendix A, Algorithm 1; Barthe, "On a reverse form of the
    Brascamp-Lieb inequality", Invent. Math. 1998; Tyler, "A
    distribution-free M-estimator of multivariate scatter", Ann. Stat. 1987.
  """
  try:
    method = ForsterMethod(method).value
  except ValueError:
    choices = ", ".join(repr(m.value) for m in ForsterMethod)
    raise ValueError(
        f"method must be one of {choices}, got {method!r}"
    ) from None
  x = checks.check_array("x", x, ndim=2)
  n, d = x.shape
  if n < d:
    raise ValueError(
        f"x has n = {n} rows but d = {d} columns: Z^T Z = (n/d) I needs "
        f"rank d, but {n} rows span at most {n} dimensions, so the target "
        "is unreachable. No transform is needed there: with d >= n the "
        "row-space projection P_X is already the identity, "
        "so K-FAC on x is already natural gradient descent. Use x as is, "
        "or project it onto its row space (d' = n columns) first."
    )
  checks.check_nonzero_rows("x", x)
  checks.check_scalar("max_iters", max_iters, positive=True, integer=True)
  checks.check_scalar("patience", patience, positive=True, integer=True)
  checks.check_scalar("seed", seed, integer=True)
  dtype = _compute_dtype(x)
  default_tol, default_cond = _defaults(dtype)
  tol = default_tol if tol is None else tol
  max_cond = default_cond if max_cond is None else max_cond
  checks.check_scalar("tol", tol, positive=True)
  checks.check_scalar("max_cond", max_cond, positive=True)
  concrete = checks.is_concrete(x)
  x = jnp.asarray(x, dtype)
  if perturb is not None:
    checks.check_scalar("perturb", perturb, positive=True)
    g = jax.random.normal(jax.random.key(int(seed)), (n, d), dtype)
    scale = jnp.linalg.norm(x, axis=1, keepdims=True) * (perturb / d**0.5)
    x = x + scale * g
  if concrete:
    _check_rank(np.asarray(x, np.float64), dtype)
  xn = normalize_rows(x)
  res = _forster_jit(
      xn,
      jnp.asarray(tol, dtype),
      jnp.asarray(max_cond, dtype),
      jnp.asarray(patience, jnp.int32),
      method=method,
      max_iters=int(max_iters),
  )
  if concrete and raise_on_failure and not bool(res.converged):
    raise ValueError(_failure_message(res, np.asarray(x, np.float64), method))
  return res


def apply_forster(transform: ForsterResult | Array, x_new) -> Array:
  """Applies a fitted transform to new inputs: ``normalize_rows(x_new A)``.

  Use it for test data so that it goes through the same map as the training
  rows (``Z`` of the fit equals ``apply_forster(result, x)`` up to round-off
  when no perturbation was used). New rows are not isotropic in general.

  Args:
    transform: a ``ForsterResult`` or its ``A`` (``(d, d)``).
    x_new: ``(m, d)`` inputs, finite, no zero rows.

  Returns:
    ``(m, d)`` unit rows ``normalize_rows(x_new A)``.
  """
  a = transform.A if isinstance(transform, ForsterResult) else transform
  a = checks.check_square("transform", a)
  x_new = checks.check_inputs("x_new", x_new, in_dim=a.shape[0])
  checks.check_nonzero_rows("x_new", x_new)
  out = jnp.asarray(x_new) @ a
  # A nonzero row can still be mapped to zero by a singular A.
  checks.check_nonzero_rows("x_new @ A", out)
  return normalize_rows(out)

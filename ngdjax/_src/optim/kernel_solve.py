"""``(G + lam I) v = b`` with one ``N x N`` buffer: the NGD step at scale.

The Cholesky NGD step of ``ngdjax.optim.ngd`` on ``N = n c`` outputs needs
``G`` (``N^2`` words) and its factor. Built naively, ``G``, its assembly
copies, ``G + lam I``, the factor and the solve's workspace are live at once
(11.5-16 bytes per entry in float32, issue 15). Here, when ``N`` exceeds
one block:

1. ``jacobian.gram_blocks(..., lower_only=True, diag_shift=lam)`` writes
   the lower block triangle of ``G + lam I`` into one buffer, block by block
   (each row block's layer factors computed once; only ``n^2 (d + m)``
   flops for the two-layer net);
2. the buffer is factorised in place (``cholesky_in_place``: on CPU LAPACK's
   ``potrf`` called on the row-major buffer itself, whose lower triangle is
   the upper triangle of the column-major matrix LAPACK sees; XLA's own
   Cholesky lowering inserts a layout copy and a second output buffer);
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
import numpy as np

try:  # jaxlib's CPU LAPACK FFI targets: internal, so optional (see below).
  from jaxlib import lapack as _lapack
except ImportError:  # pragma: no cover - depends on the jaxlib build
  _lapack = None

from ngdjax._src.jacobian import gram_blocks, gram_vp
from ngdjax._src.optim import solvers
from ngdjax._src.typing import Array

# Examples per block of the Gram when the caller gives no chunk_size.
DEFAULT_BLOCK = 2048
# Rows per block of the triangular solves.
SOLVE_BLOCK = 1024
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


def _potrf_cpu(a: Array) -> tuple[Array, Array]:
  """LAPACK ``potrf`` in place on a row-major buffer (module docstring).

  Row-major ``a`` is, to LAPACK, the column-major ``a^T``; its ``uplo='U'``
  factor ``U`` with ``a^T = U^T U`` is, read back row-major, the lower ``L``
  with ``A = L L^T``. The other triangle is left as it was.
  """
  target = _lapack.prepare_lapack_call("potrf_ffi", np.dtype(a.dtype))
  call = jax.ffi.ffi_call(
      target,
      (jax.ShapeDtypeStruct(a.shape, a.dtype),
       jax.ShapeDtypeStruct((), jnp.int32)),
      input_output_aliases={0: 0},
  )
  chol, info = call(a, uplo=np.uint8(ord("U")))
  return chol, info == 0


def _cholesky_generic(a: Array) -> tuple[Array, Array]:
  chol = jax.lax.linalg.cholesky(a, symmetrize_input=False)
  return chol, jnp.all(jnp.isfinite(jnp.diagonal(chol)))


def cholesky_in_place(a: Array) -> tuple[Array, Array]:
  """Lower Cholesky factor of the matrix whose lower triangle ``a`` holds.

  Returns ``(chol, ok)``: ``chol``'s lower triangle is ``L`` (``A = L
  L^T``), its strict upper triangle is unspecified but finite where ``a``'s
  was; ``ok`` is False when the factorisation broke down. On CPU (float32,
  float64) the factor overwrites ``a``'s buffer; elsewhere it is
  ``jax.lax.linalg.cholesky(a, symmetrize_input=False)``.
  """
  # The in-place CPU call uses jaxlib internals; a jaxlib without them
  # (another version) gets XLA's Cholesky (one more N x N buffer).
  if (a.dtype not in (jnp.float32, jnp.float64)
      or not hasattr(_lapack, "prepare_lapack_call")):
    return _cholesky_generic(a)
  return jax.lax.platform_dependent(a, cpu=_potrf_cpu,
                                    default=_cholesky_generic)


def tri_solve(chol: Array, rhs: Array, *, transpose: bool,
              block: int = SOLVE_BLOCK) -> Array:
  """``L^{-1} rhs`` (or ``L^{-T} rhs``) from the lower triangle of ``chol``.

  Block substitution touching ``chol`` only through ``(block, N)`` row
  panels (contiguous in the row-major buffer, so XLA keeps its layout: a
  column panel would make it copy the whole matrix to column-major). Blocks
  of ``block`` rows, then the ``N mod block`` remaining ones.

  * ``L y = r``, blocks in order: ``y_I = L_II^{-1} (r_I - L[I, :] y)``
    with ``y`` still zero from block ``I`` on, so the unspecified upper
    triangle only meets zeros.
  * ``L^T z = r``, blocks in reverse: ``z_I = L_II^{-T} r_I``, then
    ``r -= L[I, :]^T z_I`` restricted to the entries before block ``I``.

  ``rhs`` is ``(N,)``; ``O(N^2)`` flops, ``O(block N)`` temporaries.
  """
  size = rhs.shape[0]
  b = min(block, size)
  full, rem = divmod(size, b)

  def diag_solve(s, bb, r):
    diag = jax.lax.dynamic_slice(chol, (s, s), (bb, bb))
    # Given as the upper factor L_II^T: LAPACK's column-major view of it is
    # the row-major block itself, so XLA keeps chol row-major.
    return jax.lax.linalg.triangular_solve(
        diag.T, r[:, None], left_side=True, lower=False,
        transpose_a=not transpose)[:, 0]

  def forward(s, bb, y):
    panel = jax.lax.dynamic_slice(chol, (s, 0), (bb, size))
    r = jax.lax.dynamic_slice(rhs, (s,), (bb,)) - panel @ y
    return jax.lax.dynamic_update_slice(y, diag_solve(s, bb, r), (s,))

  def backward(s, bb, carry):
    z, r = carry
    zi = diag_solve(s, bb, jax.lax.dynamic_slice(r, (s,), (bb,)))
    panel = jax.lax.dynamic_slice(chol, (s, 0), (bb, size))
    update = zi @ panel
    before = jnp.arange(size) < s
    r = r - jnp.where(before, update, 0.0)
    return jax.lax.dynamic_update_slice(z, zi, (s,)), r

  if not transpose:
    y = jax.lax.fori_loop(0, full, lambda i, y: forward(i * b, b, y),
                          jnp.zeros_like(rhs))
    return forward(full * b, rem, y) if rem else y
  carry = (jnp.zeros_like(rhs), rhs)
  if rem:
    carry = backward(full * b, rem, carry)
  carry = jax.lax.fori_loop(
      0, full, lambda t, c: backward((full - 1 - t) * b, b, c), carry)
  return carry[0]


def _row_norms_lower(chol: Array, block: int = SOLVE_BLOCK) -> Array:
  """``A_jj = sum_{k <= j} L_jk^2`` by row panels (no ``N x N`` temporary)."""
  size = chol.shape[0]
  b = min(block, size)
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


def cho_solve(chol: Array, rhs: Array) -> Array:
  """``(L L^T)^{-1} rhs`` with ``tri_solve`` (``4 N^2`` flops)."""
  return tri_solve(chol, tri_solve(chol, rhs, transpose=False),
                   transpose=True)


def _eps(dtype) -> float:
  return float(jnp.finfo(dtype).eps)


def factor_ok(chol: Array, x: Array, residual: Array) -> Array:
  """Whether a Cholesky solve is trustworthy, from the factor alone.

  ``x`` finite; smallest pivot ``L_ii^2`` and an inverse-iteration estimate
  of ``lambda_min(A)`` (both upper bounds of it) above ``N eps max_j A_jj``
  with ``A_jj = ||L_j||^2`` (row norms of the lower triangle); relative
  residual (computed by the caller) at most ``RESIDUAL_TOL``. The same
  criteria as ``solvers.psd_solve``, without the matrix ``A``.
  """
  size = chol.shape[0]
  a_diag = _row_norms_lower(chol)
  tol = size * _eps(chol.dtype) * jnp.max(a_diag)
  pivots_ok = jnp.all(jnp.square(jnp.diagonal(chol)) > tol)
  z = jnp.cos(1.0 + 2.3 * jnp.arange(size, dtype=chol.dtype))
  lam_est = jnp.asarray(jnp.inf, chol.dtype)
  for _ in range(INVERSE_ITERATIONS):
    w = cho_solve(chol, z / jnp.linalg.norm(z))
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

  Returns:
    ``(v, gv, failed)``: the solution, ``G v`` (matrix-free), and an int32
    flag, 1 when the Cholesky solve failed the checks and CG was used.
  """
  dtype = rhs.dtype
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    # No half-precision Cholesky kernels: solve in float32 (as psd_solve).
    v, gv, failed = gram_cholesky_solve(
        apply_or_model, params, x, rhs.astype(jnp.float32), damping,
        method, chunk_size)
    return v.astype(dtype), gv.astype(dtype), failed
  n = x.shape[0]
  block = block_size(n, chunk_size)
  lam = jnp.asarray(damping, dtype)
  a = gram_blocks(apply_or_model, params, x, block, method,
                  lower_only=True, diag_shift=lam, dtype=dtype)
  chol, factored = cholesky_in_place(a)
  v = cho_solve(chol, rhs)

  def matvec(vec):
    return gram_vp(apply_or_model, params, x, vec, block).astype(vec.dtype)

  safe_v = jnp.where(jnp.isfinite(v), v, 0.0)
  gv = matvec(safe_v)
  rhs_norm = jnp.linalg.norm(rhs)
  residual = jnp.linalg.norm(gv + lam * safe_v - rhs) / jnp.where(
      rhs_norm > 0, rhs_norm, 1.0)
  ok = factored & factor_ok(chol, v, residual)

  def fallback():
    maxiter = min(rhs.shape[0], FALLBACK_MAXITER)
    # CG returns its iterate of smallest residual (never a 1 / eps one).
    w = solvers.cg(matvec, rhs, lam, FALLBACK_TOL, maxiter).x
    return w, matvec(w)

  v, gv = jax.lax.cond(ok, lambda: (v, gv), fallback)
  return v, gv, jnp.logical_not(ok).astype(jnp.int32)

"""``(G + lam I) v = b`` by Cholesky over a device mesh, ``G`` never gathered.

Layout: block rows. With ``P`` devices and ``n`` examples padded to ``n_p``
(a multiple of ``P`` tiles of ``t`` examples), device ``q`` holds the rows
of examples ``[q R, (q + 1) R)`` of ``A = G + lam I`` (``R = n_p / P``),
``R c x n_p c`` words, and only those rows ever exist on it. Padded
examples get identity rows and columns (``A = diag(A_real, I)``), so the
padded solve restricted to the real entries is the real one.

* Gram rows: the inputs (``n x d``, small) are all-gathered, then device
  ``q`` computes its row block against one tile of examples at a time
  (``ngdjax.gram`` of its rows against ``t`` columns), written in place.
* Factorisation, right-looking by tiles of ``b = t c`` columns: for each
  tile ``k``, its owner factorises ``A_kk`` (the one ``b x b`` Cholesky,
  broadcast with ``psum``), every device solves its rows of the panel
  ``L[:, k] = A[:, k] L_kk^{-T}`` (``b x b`` triangular solves), the panel
  (``n_p c x b``) is all-gathered, and each device updates its own tiles
  ``A_ij -= L_ik L_jk^T`` (``k < j <= i``, ``b x b x b`` products). So
  panels move (``N b`` words per tile, ``N^2`` in all), the matrix does
  not; per device memory is its ``N^2 / P`` rows plus one panel.
* Triangular solves, tile by tile in order (reverse order for ``L^T``):
  the owner of tile ``i`` computes ``y_i`` from its rows, ``psum``
  broadcasts it (``b`` words per tile).

Block rows leave the devices unevenly loaded (device ``q`` owns a share of
the ``N^3 / 3`` flops that grows with ``q``); what this layout buys is that
each device's rows are exactly the rows it computed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ngdjax._src import parallel
from ngdjax._src.jacobian import gram, gram_vp_sharded, output_dim
from ngdjax._src.linalg import pad_rows
from ngdjax._src.optim import kernel_solve, solvers
from ngdjax._src.typing import Array

_HIGHEST = jax.lax.Precision.HIGHEST


def _at(*index):
  """Start indices of one integer type (x64 mixes int64 literals with the
  int32 of ``axis_index``)."""
  return tuple(jnp.asarray(i, jnp.int32) for i in index)


# The all-gathered panel (N x t c) is at most this fraction of a device's
# rows of G (N x R c).
PANEL_FRACTION = 4


def tile_examples(n: int, c: int, devices: int, block: int | None,
                  chunk_size: int | None = None) -> int:
  """Examples per tile ``t``: ``t c <= block`` (``CHOLESKY_BLOCK``), at
  most ``chunk_size``, and at most a ``1 / PANEL_FRACTION`` of a device's
  ``ceil(n / P)`` examples, so that the panel adds at most a quarter to the
  device's ``N^2 / P`` words."""
  block = block or solvers.CHOLESKY_BLOCK
  per_device = math.ceil(n / devices)
  share = math.ceil(per_device / PANEL_FRACTION)
  return max(1, min(block // c, chunk_size or block, share))


def padded_examples(n: int, t: int, devices: int) -> int:
  """``n_p``: ``n`` rounded up to a multiple of ``P t``."""
  return devices * t * -(-n // (devices * t))


def _local_gram_rows(apply_or_model, params, x_local, x_all, lam, n, t,
                     method, chunk_size, axis, rows_local=None,
                     rows_all=None):
  """Device's rows of ``A`` (``(R c, n_p c)``), tile of columns by tile;
  padded examples get identity rows and columns. With ``rows`` (``S``,
  ``(n, c_out, c)``) the kernel is ``S^T G S``: each Gram tile is
  multiplied by the rows of its examples (``S_i^T G_ij S_j``)."""
  r = x_local.shape[0]
  n_p = x_all.shape[0]
  c = (output_dim(apply_or_model, params, x_local[:1]) if rows_local is None
       else rows_local.shape[-1])
  q = jax.lax.axis_index(axis).astype(jnp.int32)

  rows = q * r * c + jnp.arange(r * c)  # global row indices
  real_row = rows < n * c

  def column_tile(j, a):
    j = jnp.asarray(j, jnp.int32)
    xj = jax.lax.dynamic_slice_in_dim(x_all, j * t, t)
    # Row blocks of t examples too: no column padding up to chunk_size,
    # and layer factors of t examples at a time.
    blk = gram(apply_or_model, params, x_local, xj, method=method,
               chunk_size=min(chunk_size or t, t)).astype(a.dtype)
    if rows_local is not None:
      sj = jax.lax.dynamic_slice_in_dim(rows_all, j * t, t)
      k = rows_local.shape[1]
      blk = jnp.einsum("ika,ikjl,jlb->iajb", rows_local,
                       blk.reshape(r, k, t, k), sj).reshape(r * c, t * c)
    cols = j * t * c + jnp.arange(t * c)
    keep = real_row[:, None] & (cols < n * c)[None, :]
    diag = rows[:, None] == cols[None, :]
    shift = jnp.where(real_row[:, None], lam, 1.0).astype(a.dtype)
    blk = jnp.where(keep, blk, 0.0) + jnp.where(diag, shift, 0.0)
    return jax.lax.dynamic_update_slice(a, blk, _at(0, j * t * c))

  a = jnp.zeros((r * c, n_p * c), x_local.dtype)
  return jax.lax.fori_loop(0, n_p // t, column_tile, a)


def _factor_local(a, b, axis, devices):
  """Right-looking tile Cholesky of the row-sharded matrix (module
  docstring); ``a`` is this device's ``(R c, N_p)`` rows. Returns ``(L's
  rows, ok)``."""
  rows, size = a.shape
  local_tiles = rows // b
  tiles = size // b
  q = jax.lax.axis_index(axis).astype(jnp.int32)
  first = q * local_tiles  # global tile index of local tile 0

  def step(k, carry):
    a, ok = carry
    k = jnp.asarray(k, jnp.int32)
    owner = k // local_tiles
    mine = owner == q
    kl = jnp.clip(k - first, 0, local_tiles - 1)
    akk = jax.lax.dynamic_slice(a, _at(kl * b, k * b), (b, b))
    lkk = solvers.tile_cholesky(akk)
    lkk = jax.lax.psum(jnp.where(mine, lkk, 0.0), axis)
    d = jnp.diagonal(lkk)
    ok = ok & jnp.all(jnp.isfinite(d) & (d > 0))

    def panel_tile(i, a):
      # Rows of tile i: L_ik = A_ik L_kk^{-T} below the diagonal, L_kk on it.
      i = jnp.asarray(i, jnp.int32)
      gi = first + i
      aik = jax.lax.dynamic_slice(a, _at(i * b, k * b), (b, b))
      lik = solvers.solve_transposed(lkk, aik)
      new = jnp.where(gi > k, lik, jnp.where(gi == k, lkk, aik))
      return jax.lax.dynamic_update_slice(a, new, _at(i * b, k * b))

    a = jax.lax.fori_loop(0, local_tiles, panel_tile, a)
    mine_panel = jax.lax.dynamic_slice(a, _at(0, k * b), (rows, b))
    panel = jax.lax.all_gather(mine_panel, axis, tiled=True)  # (N_p, b)

    def update_tile(i, a):
      i = jnp.asarray(i, jnp.int32)
      gi = first + i
      lik = jax.lax.dynamic_slice(a, _at(i * b, k * b), (b, b))

      def col(j, a):
        j = jnp.asarray(j, jnp.int32)
        ljk = jax.lax.dynamic_slice_in_dim(panel, j * b, b)
        aij = jax.lax.dynamic_slice(a, _at(i * b, j * b), (b, b))
        aij = aij - jnp.matmul(lik, ljk.T, precision=_HIGHEST)
        return jax.lax.dynamic_update_slice(a, aij, _at(i * b, j * b))

      # Tiles k < j <= gi (none when gi <= k).
      return jax.lax.fori_loop(k + 1, jnp.maximum(gi + 1, k + 1), col, a)

    a = jax.lax.fori_loop(0, local_tiles, update_tile, a)
    return a, ok

  del devices
  return jax.lax.fori_loop(0, tiles, step, (a, jnp.ones((), bool)))


def _solve_local(chol, rhs, b, axis, transpose):
  """``L^{-1} rhs`` (``L^{-T}`` with ``transpose``) for row-sharded ``L``
  (this device's ``(R c, N_p)`` rows) and a replicated ``rhs`` (``(N_p,
  r)``); the result is replicated. Only ``b x b`` tiles of ``L`` are read.
  Returns ``(result, chol)``: ``chol`` travels through the loops' carry,
  so XLA does not copy it per loop."""
  rows, size = chol.shape
  local_tiles = rows // b
  tiles = size // b
  q = jax.lax.axis_index(axis).astype(jnp.int32)
  first = q * local_tiles

  def row_of(k):
    return k // local_tiles == q, jnp.clip(k - first, 0, local_tiles - 1)

  def forward(k, carry):
    y, chol = carry
    k = jnp.asarray(k, jnp.int32)
    mine, kl = row_of(k)

    def minus(j, r):  # r - L_kj y_j over the tiles j < k
      lkj = jax.lax.dynamic_slice(chol, _at(kl * b, j * b), (b, b))
      yj = jax.lax.dynamic_slice_in_dim(y, j * b, b)
      return r - jnp.matmul(lkj, yj, precision=_HIGHEST)

    r = jax.lax.fori_loop(0, k, minus,
                          jax.lax.dynamic_slice_in_dim(rhs, k * b, b))
    diag = jax.lax.dynamic_slice(chol, _at(kl * b, k * b), (b, b))
    yk = solvers.solve_tile(diag, r, transpose=False)
    yk = jax.lax.psum(jnp.where(mine, yk, 0.0), axis)
    return jax.lax.dynamic_update_slice_in_dim(y, yk, k * b, 0), chol

  def backward(t, carry):
    z, r, chol = carry
    k = jnp.asarray(tiles - 1 - t, jnp.int32)
    mine, kl = row_of(k)
    diag = jax.lax.dynamic_slice(chol, _at(kl * b, k * b), (b, b))
    zk = solvers.solve_tile(diag, jax.lax.dynamic_slice_in_dim(r, k * b, b),
                            transpose=True)
    zk = jax.lax.psum(jnp.where(mine, zk, 0.0), axis)

    def minus(j, r):  # r_j -= L_kj^T z_k over the tiles j < k (owner only)
      lkj = jax.lax.dynamic_slice(chol, _at(kl * b, j * b), (b, b))
      update = jnp.matmul(zk.T, lkj, precision=_HIGHEST).T
      rj = jax.lax.dynamic_slice_in_dim(r, j * b, b)
      rj = rj - jnp.where(mine, update, 0.0)
      return jax.lax.dynamic_update_slice_in_dim(r, rj, j * b, 0)

    # Each device subtracts its own rows' share; the sum over devices is
    # the whole update (only the owner's is non-zero).
    mine_r = jax.lax.fori_loop(0, k, minus, jnp.zeros_like(r))
    r = r + jax.lax.psum(mine_r, axis)
    return (jax.lax.dynamic_update_slice_in_dim(z, zk, k * b, 0), r, chol)

  if not transpose:
    return jax.lax.fori_loop(0, tiles, forward, (jnp.zeros_like(rhs), chol))
  z, _, chol = jax.lax.fori_loop(0, tiles, backward,
                                 (jnp.zeros_like(rhs), rhs, chol))
  return z, chol


def _row_norms_local(chol, b, axis):
  """``(A_jj, L_jj)`` over this device's rows, by tiles (no ``R c x N``
  temporary); both all-gathered, ``(N_p,)``. Returns ``(norms, pivots,
  chol)``."""
  rows, size = chol.shape
  q = jax.lax.axis_index(axis).astype(jnp.int32)

  def one(i, carry):
    norms, pivots, chol = carry
    i = jnp.asarray(i, jnp.int32)
    panel = jax.lax.dynamic_slice(chol, _at(i * b, 0), (b, size))
    index = q * rows + i * b + jnp.arange(b)
    keep = jnp.arange(size)[None, :] <= index[:, None]
    tile_norms = jnp.sum(jnp.where(keep, jnp.square(panel), 0.0), axis=1)
    diag = jnp.diagonal(jax.lax.dynamic_slice(
        panel, _at(0, q * rows + i * b), (b, b)))
    return (jax.lax.dynamic_update_slice_in_dim(norms, tile_norms, i * b, 0),
            jax.lax.dynamic_update_slice_in_dim(pivots, diag, i * b, 0),
            chol)

  zero = jnp.zeros((rows,), chol.dtype)
  norms, pivots, chol = jax.lax.fori_loop(0, rows // b, one,
                                          (zero, zero, chol))
  gather = lambda v: jax.lax.all_gather(v, axis, tiled=True)  # noqa: E731
  return gather(norms), gather(pivots), chol


def sharded_cholesky_solve(apply_or_model, params, x: Array, rhs: Array,
                           damping, mesh, *, method: str = "auto",
                           chunk_size: int | None = None,
                           block: int | None = None,
                           rows: Array | None = None):
  """``v = (G + lam I)^{-1} rhs`` on ``mesh``, ``G`` kept in block rows;
  with ``rows`` (``S``, ``(n, c, r)``) the kernel ``S^T G S`` instead of
  ``G`` (the true Fisher of a loss with output Hessian ``S S^T``), ``rhs``
  and ``v`` of size ``n r``.

  Returns ``(v, ok, checks)``: ``v`` ``(N,)`` replicated; ``ok`` False when
  a diagonal block's factorisation broke down; ``checks`` ``(pivot_min,
  lam_est, tol)`` for ``kernel_solve.factor_ok``'s criteria: the smallest
  pivot ``L_ii^2``, an inverse-iteration estimate of ``lambda_min(A)`` and
  ``N eps max_j A_jj`` over the real (unpadded) entries.
  """
  mesh = parallel.auto_mesh(mesh)
  axis = parallel.mesh_axis(mesh)
  devices = mesh.devices.size
  n = x.shape[0]
  c = (output_dim(apply_or_model, params, x[:1]) if rows is None
       else rows.shape[-1])
  t = tile_examples(n, c, devices, block, chunk_size)
  n_p = padded_examples(n, t, devices)
  b = t * c
  dtype = rhs.dtype
  xp, _ = pad_rows(x, n_p) if n_p > n else (x, 0)
  # Padded examples: zero rows (their A rows are identity rows anyway).
  rows_p = None if rows is None else jnp.concatenate(
      [rows, jnp.zeros((n_p - n,) + rows.shape[1:], rows.dtype)])
  rhs_p = jnp.concatenate([rhs, jnp.zeros(((n_p - n) * c,), dtype)])
  lam = jnp.asarray(damping, dtype)
  size = n_p * c

  def local(params, x_local, rhs_all, lam, rows_local):
    x_all = jax.lax.all_gather(x_local, axis, tiled=True)
    rows_all = (None if rows_local is None else
                jax.lax.all_gather(rows_local, axis, tiled=True))
    a = _local_gram_rows(apply_or_model, params, x_local, x_all, lam, n, t,
                         method, chunk_size, axis, rows_local,
                         rows_all).astype(dtype)
    chol, ok = _factor_local(a, b, axis, devices)

    def cho_solve(r, chol):
      y, chol = _solve_local(chol, r[:, None], b, axis, transpose=False)
      z, chol = _solve_local(chol, y, b, axis, transpose=True)
      return z[:, 0], chol

    v, chol = cho_solve(rhs_all, chol)
    norms, pivots, chol = _row_norms_local(chol, b, axis)
    real = jnp.arange(size) < n * c
    tol = n * c * float(jnp.finfo(dtype).eps) * jnp.max(
        jnp.where(real, norms, 0.0))
    pivot_min = jnp.min(jnp.where(real, jnp.square(pivots), jnp.inf))
    z = jnp.where(real, jnp.cos(1.0 + 2.3 * jnp.arange(size, dtype=dtype)),
                  0.0)
    lam_est = jnp.asarray(jnp.inf, dtype)
    for _ in range(solvers.INVERSE_ITERATIONS):
      w, chol = cho_solve(z / jnp.linalg.norm(z), chol)
      lam_est = 1.0 / jnp.linalg.norm(w)
      z = w
    return v, ok, jnp.stack([pivot_min, lam_est, tol])

  with parallel.mesh_context(mesh):
    params, xp, rows_p = parallel.to_auto((params, xp, rows_p), mesh)
    v, ok, checks = jax.shard_map(
        local, mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(),
                  PartitionSpec(), PartitionSpec(axis)),
        out_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )(params, xp, rhs_p, lam, rows_p)
  return v[: n * c], ok, checks


def gram_cholesky_solve_sharded(apply_or_model, params, x: Array,
                                rhs: Array, damping, mesh, *,
                                method: str = "auto",
                                chunk_size: int | None = None,
                                block: int | None = None,
                                rows: Array | None = None):
  """``kernel_solve.gram_cholesky_solve`` over ``mesh``: the same checks
  (pivots, inverse iteration, matrix-free residual) and CG fallback, with
  ``G`` in block rows (``sharded_cholesky_solve``) and the products
  sharded (``jacobian.gram_vp_sharded``). Returns ``(v, gv, failed)``;
  with ``rows`` (``S``) the kernel ``K = S^T G S`` and ``gv = K v``."""
  dtype = rhs.dtype
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    v, gv, failed = gram_cholesky_solve_sharded(
        apply_or_model, params, x, rhs.astype(jnp.float32), damping, mesh,
        method=method, chunk_size=chunk_size, block=block,
        rows=None if rows is None else rows.astype(jnp.float32))
    return v.astype(dtype), gv.astype(dtype), failed
  lam = jnp.asarray(damping, dtype)
  v, factored, (pivot_min, lam_est, tol) = sharded_cholesky_solve(
      apply_or_model, params, x, rhs, lam, mesh, method=method,
      chunk_size=chunk_size, block=block, rows=rows)

  def matvec(vec):
    if rows is not None:
      n = x.shape[0]
      sv = jnp.einsum("ikb,ib->ik", rows, vec.reshape(n, -1)).reshape(-1)
      gsv = gram_vp_sharded(apply_or_model, params, x, sv, mesh)
      return jnp.einsum("ika,ik->ia", rows,
                        gsv.reshape(n, -1)).reshape(-1).astype(vec.dtype)
    return gram_vp_sharded(apply_or_model, params, x, vec,
                           mesh).astype(vec.dtype)

  ok = factored & (pivot_min > tol) & (lam_est > tol)
  return kernel_solve.checked_solve(v, ok, rhs, lam, matvec)

"""Low-rank preconditioners for CG on kernel systems ``(K + mu I) x = b``.

For ``N`` too large to store ``K`` (the Gram ``G = J J^T``, or the
true-Fisher kernel ``S^T G S`` of cross-entropy NGD), CG runs on matrix-free
products, each a pass over the network (``~8 n m d`` flops for the two-layer
net); its iteration count grows with the condition number of
``K + mu I``, which for a network's Gram is large: a few hundred eigenvalues
of order ``n / d`` above a bulk of order one. A rank-``k`` approximation
``K ~= F F^T`` that captures the top of the spectrum removes it.

Built here from ``k`` columns of ``K``, never the whole matrix: a column
block ``K[:, E]`` (the ``c`` outputs of examples ``E``) costs ``2 n |E|
(d + m)`` flops for the two-layer net (a cross-Gram), so ``k`` in the
hundreds costs about one matrix-free product.

* Pivots by block randomly pivoted Cholesky (Chen, Epperly, Tropp & Webber,
  "Randomly pivoted Cholesky", 2023): in each of ``k / s`` rounds, ``s``
  examples drawn without replacement with probability proportional to the
  residual diagonal ``diag(K - F F^T)`` (summed over an example's outputs;
  Gumbel top-``s``), their columns ``C = K[:, E] - F F[E]^T``, and ``F``
  extended by ``C R^{-1}`` with ``R^T R = C[E] + delta I`` (a Cholesky
  factor with a round-off shift ``delta``, so a pivot already explained by
  ``F`` adds round-off instead of ``1 / eps``; an eigendecomposition,
  clamped like a pseudo-inverse, where that fails). This is
  the column Nystrom approximation ``K[:, P] K[P, P]^+ K[P, :]`` on the
  chosen pivots ``P``, and ``F F^T <= K``.
* Preconditioner (Frangella, Tropp & Udell, "Randomized Nystrom
  preconditioning", SIAM J. Matrix Anal. Appl. 2023): with the thin SVD
  ``F = U diag(sqrt(l)) V^T`` (from the ``k x k`` eigendecomposition of
  ``F^T F``), ``l`` descending,

      M^{-1} = (l_k + mu) U (diag(l) + mu I)^{-1} U^T + (I - U U^T),

  symmetric positive definite. With ``k`` past the top of the spectrum the
  preconditioned condition number is about ``(lambda_{k+1} + mu) / (l_k +
  mu)`` times that of the remaining bulk.

Cost: ``F`` and ``U`` are ``N x k`` (one of them live at a time after the
build), one application of ``M^{-1}`` is ``4 N k`` flops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import PartitionSpec

from ngdjax._src import gram_forms, parallel
from ngdjax._src.jacobian import gram
from ngdjax._src.linalg import pad_rows
from ngdjax._src.optim import solvers
from ngdjax._src.typing import Array

_HIGHEST = jax.lax.Precision.HIGHEST

# The default rank: at most MAX_COLUMNS columns of K, and at most
# N / COLUMN_FRACTION. A network's kernel has a few eigenvalues far above
# the damping and a bulk near it (the digits true-Fisher kernel, N = 2560,
# damping 0.3: condition 590, 23 eigenvalues above 10 mu; 160 columns leave
# (lambda_161 + mu) / mu = 1.8), so the top few hundred columns remove
# most of the condition number, while the build's ``O(k^3 + N k^2)``
# factorisations stay below ``N^3 / 4096`` and ``N^3 / 256``: cheaper
# than the exact Cholesky at every N. For the two-layer Gram (d = 256,
# n = 32768, damping 1e-3, tolerance 1e-3) CG took 27, 14 and 10 products
# with 512, 1024 and 2048 columns; 1024 keeps ``F`` (``N x k``) at 0.5 GB
# for n = 131072 in float32.
MAX_COLUMNS = 1024
COLUMN_FRACTION = 16
# Rounds of the block randomly pivoted Cholesky by default: each is one
# pass over all examples (their features), so few rounds, each adaptive.
ROUNDS = 4


def default_rank(n: int, c: int) -> int:
  """Pivot examples (``c`` columns each) of the default preconditioner of
  an ``N = n c`` kernel: ``min(MAX_COLUMNS, N / COLUMN_FRACTION) / c``, at
  least one."""
  return max(1, min(MAX_COLUMNS, (n * c) // COLUMN_FRACTION) // c)


class Nystrom(NamedTuple):
  """A rank-``k`` preconditioner for ``K + mu I``.

  Attributes:
    basis: ``(N, k)`` orthonormal columns ``U`` (zero columns for a rank
      below ``k``).
    eigvals: ``(k,)`` ``l``, descending (zero where ``U`` is).
    rank: ``()`` int32, the numerical rank of ``F`` (columns kept).
  """

  basis: Array
  eigvals: Array
  rank: Array

  def inverse(self, damping) -> Callable[[Array], Array]:
    """``r -> M^{-1} r`` (module docstring) for the damping ``mu``."""
    scale = _inverse_scale(self.eigvals, damping, self.basis.dtype)
    return lambda r: _apply_inverse(self.basis, scale, r)


def _inverse_scale(eigvals: Array, damping, dtype) -> Array:
  """``(l_k + mu) / (l + mu)`` per kept column (1 for the zero ones)."""
  mu = jnp.asarray(damping, dtype)
  keep = eigvals > 0
  last = jnp.min(jnp.where(keep, eigvals, jnp.inf))
  last = jnp.where(jnp.isfinite(last), last, 0.0)
  return jnp.where(keep, (last + mu) / (eigvals + mu), 1.0)


def _apply_inverse(basis: Array, scale: Array, r: Array,
                   total=lambda a: a) -> Array:
  """``r + U ((scale - 1) * U^T r)``: ``M^{-1} r`` for ``U`` = ``basis``
  (its rows and ``r``'s on this device; ``total`` sums ``U^T r`` over
  the devices)."""
  coeff = total(jnp.matmul(basis.T, r, precision=_HIGHEST))
  return r + jnp.matmul(basis, (scale - 1.0) * coeff, precision=_HIGHEST)


def _gumbel_scores(weights: Array, gumbel: Array) -> Array:
  """``log w + g`` (Gumbel top-k keys); zero weights below every positive
  one (``-1e30 + g``)."""
  logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights,
                                                    1.0)), -jnp.inf)
  return jnp.where(weights > 0, logits + gumbel, -1e30 + gumbel)


def _sample_without_replacement(key, weights: Array, count: int) -> Array:
  """``count`` indices drawn with probability ``~ weights``, no repeats
  (Gumbel top-``count``; zero weights only after the positive ones)."""
  gumbel = jax.random.gumbel(key, weights.shape, weights.dtype)
  return jax.lax.top_k(_gumbel_scores(weights, gumbel), count)[1]


class Layout(NamedTuple):
  """Where the rows of ``K``'s columns and of ``F`` live: all on this
  device (``local_layout``), or this device's block of examples of a
  mesh (``_mesh_layout``, inside ``shard_map``).

  Attributes:
    examples: ``n``, the examples of the whole kernel (unpadded).
    offset: global index of this device's first example.
    total: sum over the devices (``psum``; the identity on one device).
    largest: max over the devices (``pmax``).
    sample: ``(key, weights (R,), count) -> (count,)`` global example
      indices, drawn as ``_sample_without_replacement`` draws them from
      all ``n`` weights.
  """

  examples: int
  offset: Array | int
  total: Callable[[Array], Array]
  largest: Callable[[Array], Array]
  sample: Callable


def local_layout(n: int) -> Layout:
  """All ``n`` examples on this device."""
  same = lambda a: a  # noqa: E731
  return Layout(n, 0, same, same, _sample_without_replacement)


def take_rows(layout: Layout, local: Array, idx: Array) -> Array:
  """``global[idx]`` (``(s, ...)``, on every device) for the array whose
  rows ``[offset, offset + R)`` are ``local`` (``(R, ...)``): each device
  contributes the rows it owns, zeros elsewhere, summed (``s`` rows
  cross devices, never the array)."""
  pos = idx - layout.offset
  mine = (pos >= 0) & (pos < local.shape[0])
  rows = local[jnp.clip(pos, 0, local.shape[0] - 1)]
  mine = mine.reshape(mine.shape + (1,) * (local.ndim - 1))
  return layout.total(jnp.where(mine, rows, jnp.zeros_like(rows)))


def _whiten(cols: Array, core: Array, scale: Array) -> Array:
  """``C R^{-1}`` with ``R^T R = C_E`` (``core``, PSD up to round-off):
  ``C L^{-T}`` with ``L`` the Cholesky factor of ``C_E + delta I``,
  ``delta = s c eps max_j K_jj`` (``scale``), so that a pivot already
  explained by ``F`` adds a column of round-off size, not ``1 / eps``
  (``F F^T`` stays below ``K``). Where that factorisation fails, the
  clamped pseudo-inverse root from an eigendecomposition (rare, and an
  eigendecomposition costs ~30 Cholesky factorisations on a CPU)."""
  size = core.shape[0]
  delta = size * float(jnp.finfo(core.dtype).eps) * scale
  core = 0.5 * (core + core.T)
  chol = solvers.tile_cholesky(core + delta * jnp.eye(size, dtype=core.dtype))

  def by_cholesky():
    return solvers.solve_transposed(chol, cols)

  def by_eigh():
    e, q = jnp.linalg.eigh(core)
    tol = jnp.maximum(delta, size * float(jnp.finfo(core.dtype).eps)
                      * jnp.max(jnp.abs(e)))
    inv_root = jnp.where(e > tol, jax.lax.rsqrt(jnp.where(e > tol, e, 1.0)),
                         0.0)
    return jnp.matmul(cols, q * inv_root, precision=_HIGHEST)

  return jax.lax.cond(jnp.all(jnp.isfinite(chol)), by_cholesky, by_eigh)


def rp_cholesky(
    columns: Callable[[Array], Array],
    diagonal: Array,
    rank: int,
    key,
    *,
    block: int | None = None,
    layout: Layout | None = None,
) -> Array:
  """``F`` (``N x k``) with ``F F^T`` the Nystrom approximation of ``K``
  on pivots drawn by block randomly pivoted Cholesky (module docstring).

  Args:
    columns: ``idx (s,) -> K[:, E]`` as ``(N, s c)`` for the examples
      ``idx``, their outputs in order (column ``j c + k`` is output ``k`` of
      example ``idx[j]``); with a mesh ``layout``, this device's rows.
    diagonal: ``(n, c)`` diagonal of ``K`` (``N = n c``); with a mesh
      ``layout``, this device's ``(R, c)`` rows.
    rank: pivot examples (columns of ``F``: ``rank c``).
    key: PRNG key.
    block: pivot examples per round (default ``ceil(rank / ROUNDS)``:
      each round is one pass over the examples).
    layout: where the rows live (default ``local_layout``: all here).
      With a device's block of a mesh (``sharded_factor``), ``F``'s rows
      stay on the device of their examples; only the ``s c`` pivot rows
      of ``F`` and of the new columns cross devices (``take_rows``).

  Returns:
    ``(N, k)``, ``k = ceil(rank / block) block c`` (columns of a pivot
    already explained by the others, and of the last round's repeats, are
    zero); with a mesh ``layout``, this device's ``(R c, k)`` rows.
  """
  layout = layout or local_layout(diagonal.shape[0])
  n_here, c = diagonal.shape
  rank = int(min(rank, layout.examples))
  s = int(min(block or -(-rank // ROUNDS), rank))
  rounds = -(-rank // s)
  dtype = diagonal.dtype
  f = jnp.zeros((n_here * c, rounds * s * c), dtype)
  scale = layout.largest(jnp.max(diagonal))
  residual = diagonal

  def pivot_rows(a, idx):  # rows of the pivots' outputs, (s c, cols)
    return take_rows(layout, a.reshape(n_here, c, -1), idx).reshape(s * c,
                                                                     -1)

  def one_round(t, carry):
    f, residual, taken = carry
    # Chosen examples carry zero weight (their residual is ~0; round-off
    # could leave it positive).
    weights = jnp.where(taken, 0.0, jnp.maximum(residual.sum(axis=1), 0.0))
    idx = layout.sample(jax.random.fold_in(key, t), weights, s)
    pos = idx - layout.offset  # out of this device's range: dropped
    taken = taken.at[jnp.where((pos >= 0) & (pos < n_here), pos, n_here)
                     ].set(True, mode="drop")
    cols = columns(idx).astype(dtype)
    cols = cols - jnp.matmul(f, pivot_rows(f, idx).T, precision=_HIGHEST)
    new = _whiten(cols, pivot_rows(cols, idx), scale)  # (N, s c)
    f = jax.lax.dynamic_update_slice(f, new, (0, t * s * c))
    residual = residual - jnp.square(new).sum(axis=1).reshape(n_here, c)
    return f, residual, taken

  f, _, _ = jax.lax.fori_loop(
      0, rounds, one_round, (f, residual, jnp.zeros((n_here,), bool)))
  return f


def from_factor(f: Array, *, block: int = 8192,
                total: Callable[[Array], Array] | None = None) -> Nystrom:
  """``Nystrom`` from ``F`` (``N x k``): the thin SVD of ``F`` from the
  eigendecomposition of ``F^T F`` (``2 N k^2`` flops). ``U = F V
  diag(l)^{-1/2}`` is written over ``F``'s buffer ``block`` rows at a time
  (one ``N x k`` array, not two). With ``total`` (``psum`` over a mesh)
  ``f`` is this device's rows of ``F``: ``F^T F`` is the sum of the
  devices' ``k x k`` pieces, the rotation is local, and the result holds
  this device's rows of ``U``."""
  eps = float(jnp.finfo(f.dtype).eps)
  gram = jnp.matmul(f.T, f, precision=_HIGHEST)
  if total is not None:
    gram = total(gram)
  e, v = jnp.linalg.eigh(0.5 * (gram + gram.T))
  e, v = e[::-1], v[:, ::-1]
  keep = e > f.shape[1] * eps * jnp.max(jnp.abs(e))
  inv_sv = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, e, 1.0)), 0.0)
  rotate = v * inv_sv
  n = f.shape[0]
  rows = min(block, n)

  def one(i, f):
    blk = jax.lax.dynamic_slice_in_dim(f, i * rows, rows)
    blk = jnp.matmul(blk, rotate, precision=_HIGHEST)
    return jax.lax.dynamic_update_slice_in_dim(f, blk, i * rows, axis=0)

  full = n // rows
  basis = jax.lax.fori_loop(0, full, one, f)
  if full * rows < n:  # the remainder rows (static)
    basis = basis.at[full * rows:].set(jnp.matmul(
        basis[full * rows:], rotate, precision=_HIGHEST))
  return Nystrom(basis, jnp.where(keep, e, 0.0),
                 jnp.sum(keep).astype(jnp.int32))


_CLOCK_ORIGIN = time.perf_counter()


def wall_clock(dependency: Array) -> Array:
  """Seconds (``float32``, from an arbitrary origin) read on the host when
  ``dependency`` has been computed; inside ``jit`` too (``io_callback``).
  The difference of two readings times what lies between them in the data
  flow (a preconditioner's build)."""

  def now(_):
    return np.float32(time.perf_counter() - _CLOCK_ORIGIN)

  return io_callback(
      now, jax.ShapeDtypeStruct((), jnp.float32),
      jnp.sum(dependency.reshape(-1)[:1]))


def gram_diagonal_blocks(apply_or_model, params, x: Array, *,
                         method: str = "auto",
                         chunk_size: int | None = None) -> Array:
  """``G_ii`` (``(n, c, c)``), each example's own ``c x c`` Gram block,
  ``chunk_size`` examples at a time (one-example Grams, vmapped)."""
  n = x.shape[0]
  chunk = min(n, chunk_size or n)

  def one(xi):
    return gram(apply_or_model, params, xi[None], method=method)

  xp, _ = pad_rows(x, chunk)
  blocks = jax.lax.map(jax.vmap(one), xp.reshape((-1, chunk) + x.shape[1:]))
  return blocks.reshape((-1,) + blocks.shape[2:])[:n]


def _feature_diagonal(forms, feats, r: int) -> Array:
  """``(n, r)`` squared norms of the rows ``J_ik`` (the diagonal of the
  Gram of ``feats``, from ``gram_forms.features``) without any pair of
  examples: ``|A_i|^2 |S_ik|^2`` (outer), ``sum_{g,t,t'} (A_itg .
  A_it'g) (S_iktg . S_ikt'g)`` (patch), ``sum_{t,t'} [tok_it = tok_it']
  (S_ikt . S_ikt')`` (embed), row norms (Jacobian rows)."""
  total = 0.0
  for k, p in enumerate(feats):
    form = forms[k] if k < len(forms) else "jacobian"
    if form == "outer":
      a, s = p
      total = total + (jnp.sum(jnp.square(a), axis=1)[:, None]
                       * jnp.sum(jnp.square(s), axis=2))
    elif form == "embed":
      # sum_{t,t'} [tok_it = tok_it'] (S_ikt . S_ikt'), as gram_forms.
      tok, s = p
      same = (tok[:, :, None] == tok[:, None, :]).astype(s.dtype)
      ss = jnp.einsum("iktd,ikud->iktu", s, s, precision=_HIGHEST)
      total = total + jnp.einsum("itu,iktu->ik", same, ss)
    elif form == "patch":
      a, s = p
      aa = jnp.einsum("itga,iuga->igtu", a, a, precision=_HIGHEST)
      ss = jnp.einsum("iktgb,ikugb->ikgtu", s, s, precision=_HIGHEST)
      total = total + jnp.einsum("igtu,ikgtu->ik", aa, ss)
    else:
      total = total + jnp.sum(jnp.square(p), axis=1).reshape(-1, r)
  return total


def _row_blocks(n: int, block: int, fn, out_rows: Array) -> Array:
  """``out_rows`` (``(n, ...)``) with the rows of every block of ``block``
  examples replaced by ``fn(start)`` (``(block, ...)``); the last block
  starts at ``n - block`` (overlapping, no padding)."""
  def step(i, out):
    start = jnp.minimum(i * block, n - block)
    blk = fn(start).astype(out.dtype)
    return jax.lax.dynamic_update_slice_in_dim(out, blk, start, axis=0)

  return jax.lax.fori_loop(0, -(-n // block), step, out_rows)


def _dtype(params, x: Array):
  """The kernel's dtype: ``x``'s when floating, else (integer tokens)
  the parameters' floating dtype."""
  if jnp.issubdtype(x.dtype, jnp.floating):
    return x.dtype
  return jnp.result_type(*[leaf for leaf in jax.tree_util.tree_leaves(params)
                           if jnp.issubdtype(leaf.dtype, jnp.floating)])


class KernelSketch(NamedTuple):
  """The two things a Nystrom build reads from a kernel ``K = Gamma G
  Gamma^T`` (``Gamma`` block diagonal, ``r`` rows per example).

  Attributes:
    diagonal: ``() -> (n, r)``, the diagonal of ``K``.
    columns: ``idx (s,) -> (n r, s r)``, ``K[:, E]`` for the examples
      ``idx`` (``rp_cholesky``'s ``columns``).
    pivot_columns: ``(x_E (s, ...), rows_E (s, c, r) or None) -> (n r, s
      r)``, the same columns from the pivots' inputs (and rows), which
      may live on another device (``sharded_factor``).
  """

  diagonal: Callable[[], Array]
  columns: Callable[[Array], Array]
  pivot_columns: Callable[[Array, Array | None], Array]


def _sketch(x, rows, diagonal, pivot_columns) -> KernelSketch:
  def columns(idx):
    return pivot_columns(x[idx], None if rows is None else rows[idx])

  return KernelSketch(diagonal, columns, pivot_columns)


def structured_sketch(st, params, x: Array, *, rows: Array | None = None,
                      chunk_size: int | None = None) -> KernelSketch:
  """Diagonal and columns of ``G`` (``rows=None``) or ``S^T G S``
  (``rows = S``, ``(n, c, r)``) from the layer factors of a ``Structure``
  (``ngdjax._src.gram_forms``), ``chunk_size`` examples at a time.

  A column block ``K[:, E]`` is one pass over the examples: each block's
  features (one forward pass and ``r`` VJPs, with ``rows`` pushed through
  the backward pass) contracted against the ``s`` pivots' features in the
  layers' cheapest forms (for a dense layer ``(A A_E^T) * (S S_E^T)``,
  ``2 n s (a + r^2 b)`` flops); the diagonal is one such pass without a
  contraction. No ``(n, p)`` Jacobian of the layers and no ``n x n``
  array: memory ``O(chunk (d + m))`` plus the ``(n r, s r)`` result.
  """
  n = x.shape[0]
  block = min(n, chunk_size or n)
  r = (rows.shape[-1] if rows is not None else
       jax.eval_shape(st.apply, params, x[:1]).shape[-1])
  forms = gram_forms.choose_forms(st, block, r,
                                  jnp.dtype(_dtype(params, x)).itemsize)

  def feats(start, size):
    xb = jax.lax.dynamic_slice_in_dim(x, start, size)
    rb = (None if rows is None else
          jax.lax.dynamic_slice_in_dim(rows, start, size))
    return gram_forms.features(st, forms, params, xb, rb)

  def diagonal():
    out = jnp.zeros((n, r), _dtype(params, x))
    return _row_blocks(
        n, block, lambda s: _feature_diagonal(forms, feats(s, block), r),
        out)

  def pivot_columns(x_piv, rows_piv):
    pivots = gram_forms.features(st, forms, params, x_piv, rows_piv)
    k = x_piv.shape[0] * r
    out = jnp.zeros((n, r, k), _dtype(params, x))

    def blk(start):
      return gram_forms.cross(forms, feats(start, block), pivots
                              ).reshape(block, r, k)

    return _row_blocks(n, block, blk, out).reshape(n * r, k)

  return _sketch(x, rows, diagonal, pivot_columns)


def generic_sketch(apply_or_model, params, x: Array, *,
                   rows: Array | None = None, method: str = "auto",
                   chunk_size: int | None = None) -> KernelSketch:
  """``structured_sketch`` for a model without a structured Gram: per
  example ``c x c`` Gram blocks and cross-Grams against the pivots
  (``jacobian.gram``), ``rows`` applied afterwards."""

  def diagonal():
    blocks = gram_diagonal_blocks(apply_or_model, params, x, method=method,
                                  chunk_size=chunk_size)
    if rows is None:
      return jnp.diagonal(blocks, axis1=1, axis2=2).astype(_dtype(params, x))
    return jnp.einsum("ika,ikl,ila->ia", rows, blocks, rows).astype(
        _dtype(params, x))

  def pivot_columns(x_piv, rows_piv):
    cols = gram(apply_or_model, params, x, x_piv, method=method,
                chunk_size=chunk_size)
    if rows is None:
      return cols
    n, c = rows.shape[:2]
    cols = jnp.einsum("ika,ikm->iam", rows, cols.reshape(n, c, -1))
    cols = cols.reshape(n * rows.shape[-1], x_piv.shape[0], c)
    return jnp.einsum("Nsk,ska->Nsa", cols, rows_piv).reshape(
        cols.shape[0], -1)

  return _sketch(x, rows, diagonal, pivot_columns)


# --------------------------------------------------------------------------
# Over a device mesh: F and U row-sharded like the examples.
# --------------------------------------------------------------------------


def _mesh_layout(axis: str, n: int, n_here: int, devices: int) -> Layout:
  """This device's block of ``n_here`` examples (inside ``shard_map``;
  ``n`` real examples padded to ``devices n_here``).

  Sampling draws the one-device Gumbel variates for all ``n`` examples
  (the same key: ``n`` words on every device, replicated), keeps this
  device's slice, takes its local top ``min(s, R)`` scores and merges the
  ``P min(s, R)`` candidates (all-gathered) into the global top ``s``:
  the one-device draw, without gathering the diagonal. Padded examples
  score ``-inf``: never drawn (there are at least ``s`` real ones).
  """
  offset = jax.lax.axis_index(axis).astype(jnp.int32) * n_here

  def sample(key, weights, count):
    gumbel = jax.random.gumbel(key, (n,), weights.dtype)
    gumbel = jnp.pad(gumbel, (0, devices * n_here - n))
    gumbel = jax.lax.dynamic_slice_in_dim(gumbel, offset, n_here)
    real = offset + jnp.arange(n_here) < n
    score = jnp.where(real, _gumbel_scores(weights, gumbel), -jnp.inf)
    top, pos = jax.lax.top_k(score, min(count, n_here))
    top = jax.lax.all_gather(top, axis, tiled=True)
    ids = jax.lax.all_gather(pos.astype(jnp.int32) + offset, axis,
                             tiled=True)
    return ids[jax.lax.top_k(top, count)[1]]

  return Layout(n, offset, lambda a: jax.lax.psum(a, axis),
                lambda a: jax.lax.pmax(a, axis), sample)


def sharded_factor(make_sketch: Callable, params, x: Array, mesh, *,
                   rank: int, key, rows: Array | None = None,
                   block: int | None = None) -> Nystrom:
  """The preconditioner of ``rp_cholesky`` and ``from_factor`` over the
  one-axis ``mesh``, built where the examples are.

  The ``n`` examples (``rows`` too) are padded to ``P R`` and split in
  blocks of ``R``; inside ``shard_map`` device ``q`` builds
  ``make_sketch(params, x_q, rows_q)`` on its own examples and computes
  the diagonal and the pivot columns ``K[X_q, E]`` of its rows only
  (``R r x s r``). What crosses devices: the pivots' inputs and rows,
  and the pivots' rows of ``F`` and of the new columns (``take_rows``, ``s
  r x k`` words), the ``P min(s, R)`` sampling candidates, ``max_j
  K_jj`` and the ``k x k`` ``F^T F`` (``psum``). The ``s r x s r`` pivot
  block, its Cholesky or eigendecomposition and the ``k x k``
  eigendecomposition are computed on every device (replicated). ``F``
  and ``U`` are never gathered: each device holds ``R r x k`` words.

  Args:
    make_sketch: ``(params, x_q, rows_q) -> KernelSketch`` for a block of
      examples (``structured_sketch`` or ``generic_sketch``).
    params: parameters (replicated).
    x: ``(n, ...)`` inputs.
    mesh: one-axis mesh over the examples.
    rank: pivot examples.
    key: PRNG key (the one-device build's: same pivots, same ``F``).
    rows: optional ``(n, c, r)`` rows ``Gamma`` of the kernel.
    block: pivot examples per round (``rp_cholesky``).

  Returns:
    ``Nystrom`` whose ``basis`` is ``(P R r, k)``, rows split over the
    mesh (``PartitionSpec(axis)``), zero on the padded examples; apply it
    with ``mesh_inverse``.
  """
  mesh = parallel.auto_mesh(mesh)
  axis = parallel.mesh_axis(mesh)
  devices = mesh.devices.size
  n = x.shape[0]
  xp, pad = pad_rows(x, devices)
  rows_p = None if rows is None else jnp.concatenate(
      [rows, jnp.zeros((pad,) + rows.shape[1:], rows.dtype)])
  n_here = xp.shape[0] // devices

  def local(params, x_here, rows_here, key_data):
    layout = _mesh_layout(axis, n, n_here, devices)
    real = layout.offset + jnp.arange(n_here) < n
    sketch = make_sketch(params, x_here, rows_here)
    diag = sketch.diagonal()
    diag = jnp.where(real[:, None], diag, jnp.zeros_like(diag))
    real_rows = jnp.repeat(real, diag.shape[1])[:, None]

    def columns(idx):
      x_piv = take_rows(layout, x_here, idx)
      rows_piv = (None if rows_here is None
                  else take_rows(layout, rows_here, idx))
      cols = sketch.pivot_columns(x_piv, rows_piv)
      return jnp.where(real_rows, cols, jnp.zeros_like(cols))

    f = rp_cholesky(columns, diag, rank, jax.random.wrap_key_data(key_data),
                    block=block, layout=layout)
    return from_factor(f, total=layout.total)

  spec = PartitionSpec
  with parallel.mesh_context(mesh):
    params, xp, rows_p = parallel.to_auto((params, xp, rows_p), mesh)
    return jax.shard_map(
        local, mesh=mesh,
        in_specs=(spec(), spec(axis), spec(axis), spec()),
        out_specs=Nystrom(spec(axis), spec(), spec()),
        check_vma=False,
    )(params, xp, rows_p, jax.random.key_data(key))


def mesh_inverse(pre: Nystrom, damping, mesh, size: int
                 ) -> Callable[[Array], Array]:
  """``r -> M^{-1} r`` (``Nystrom.inverse``) for the row-sharded ``pre``
  of ``sharded_factor`` and ``r`` of ``size`` (``n r``) entries: ``r`` is
  padded and split like ``U``'s rows, each device multiplies its rows
  (``U_q^T r_q``, summed by ``psum``: ``k`` words) and forms its rows of
  the result. ``U`` never moves."""
  mesh = parallel.auto_mesh(mesh)
  axis = parallel.mesh_axis(mesh)
  scale = _inverse_scale(pre.eigvals, damping, pre.basis.dtype)
  padded = pre.basis.shape[0]

  def local(basis, scale, r):
    return _apply_inverse(basis, scale, r,
                          total=lambda a: jax.lax.psum(a, axis))

  def apply(r):
    rp = jnp.pad(r.astype(pre.basis.dtype), (0, padded - size))
    spec = PartitionSpec
    with parallel.mesh_context(mesh):
      out = jax.shard_map(local, mesh=mesh,
                          in_specs=(spec(axis), spec(), spec(axis)),
                          out_specs=spec(axis), check_vma=False,
                          )(pre.basis, scale, rp)
    return out[:size]

  return apply

"""Small linear-algebra helpers shared across modules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ngdjax._src import checks
from ngdjax._src.typing import Array


def normalize_rows(x: Array, eps: float = 0.0) -> Array:
  """Scales each row of ``x`` (``(n, d)``) to unit Euclidean norm.

  Zero rows have no direction: they raise (on concrete input) rather than
  silently turning into NaN. ``eps`` is added to the norms (``eps = 0`` keeps
  the rows exactly unit).
  """
  x = checks.check_array("x", x, ndim=2)
  checks.check_nonzero_rows("x", x)
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def lambda_min(g: Array) -> Array:
  """Smallest eigenvalue of a symmetric matrix ``g`` (``(N, N)``).

  Uses ``eigvalsh`` on the symmetrised matrix, so round-off asymmetry of a
  computed Gram does not matter. Half precision (``float16``,
  ``bfloat16``, which ``eigvalsh`` does not implement) is computed in
  ``float32`` and returned in the input's dtype.
  """
  g = checks.check_square("g", g)
  half = jnp.issubdtype(g.dtype, jnp.floating) and g.dtype.itemsize < 4
  gw = g.astype(jnp.float32) if half else g
  return jnp.linalg.eigvalsh(0.5 * (gw + gw.T))[0].astype(
      g.dtype if half else gw.dtype)


def symmetrize(a: Array) -> Array:
  """``(a + a^T) / 2``."""
  return 0.5 * (a + a.T)


# linalg.self_outer splits a product into this many row blocks from this
# many rows on.
SELF_OUTER_BLOCKS = 4
SELF_OUTER_MIN_ROWS = 512


def self_outer(
    a: Array,
    blocks: int = SELF_OUTER_BLOCKS,
    min_rows: int = SELF_OUTER_MIN_ROWS,
) -> Array:
  """``a a^T`` (``(k, k)`` for ``a`` ``(k, r)``), exploiting its symmetry.

  From ``min_rows`` rows on, only the ``blocks (blocks + 1) / 2`` upper
  blocks are multiplied and the lower ones are their transposes: about
  ``(blocks + 1) / (2 blocks)`` of the matmul work (XLA has no ``syrk``).
  """
  k = a.shape[0]
  if k < min_rows:
    return a @ a.T
  bounds = np.linspace(0, k, blocks + 1).astype(int)
  parts = [a[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
  rows = [[None] * blocks for _ in range(blocks)]
  for p in range(blocks):
    for q in range(p, blocks):
      rows[p][q] = parts[p] @ parts[q].T
      if q > p:
        rows[q][p] = rows[p][q].T
  return jnp.block(rows)


def pad_rows(x: Array, multiple: int) -> tuple[Array, int]:
  """Pads ``x`` with copies of its first row to a multiple of ``multiple``."""
  n = x.shape[0]
  pad = (-n) % multiple
  if pad:
    x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
  return x, pad


def as_columns(u: Array) -> Array:
  """Outputs or targets as ``(n, c)``: a 1-D ``(n,)`` array is one column.

  The one place where the library's ``(n,)``-or-``(n, c)`` convention for
  outputs is turned into the ``(n, c)`` layout every formula uses.
  """
  return u[:, None] if u.ndim == 1 else u

"""Input validation shared by every public entry point.

Each check raises ``ValueError`` naming the offending argument and, where there
is one, the fix. Checks on *values* (NaN, zero rows, symmetry) only run on
concrete arrays: inside ``jax.jit`` the arguments are tracers and only their
shapes can be checked, so public functions validate before they trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np


def is_concrete(x) -> bool:
  """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def check_array(
    name: str,
    x,
    ndim: int | Sequence[int] | None = None,
    *,
    allow_empty: bool = False,
    finite: bool = True,
):
  """Checks rank, emptiness and finiteness of an array argument.

  Args:
    name: argument name used in the error message.
    x: the array (numpy, jax or array-like).
    ndim: required rank, or a sequence of allowed ranks.
    allow_empty: whether a zero-size array is accepted.
    finite: whether NaN/Inf are rejected (only checked on concrete arrays).

  Returns:
    ``x`` as an array (jax arrays and tracers are returned unchanged).
  """
  if not hasattr(x, "shape"):
    try:
      x = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - re-raised with the name
      raise ValueError(f"{name} must be an array, got {type(x)}") from e
  if ndim is not None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
      want = " or ".join(str(a) for a in allowed)
      raise ValueError(
          f"{name} must have {want} dimensions, got shape {tuple(x.shape)}"
      )
  if not allow_empty and x.size == 0:
    raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
  if finite and is_concrete(x) and x.size:
    if not np.issubdtype(np.asarray(x).dtype, np.number):
      raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(np.asarray(x))):
      raise ValueError(f"{name} contains NaN or Inf values")
  return x


def check_inputs(
    name: str, x, in_dim: int | None = None, *, any_shape: bool = False
):
  """Checks a design matrix ``x`` of shape ``(n, d)``.

  ``any_shape=True`` accepts ``(n, ...)`` of any rank ``>= 1`` (models given
  as ``apply(params, x)``, e.g. on images ``(n, H, W, C)``); ``in_dim`` is
  then compared with ``x.shape[1]`` when ``x`` has that axis.
  """
  x = check_array(name, x, ndim=None if any_shape else 2)
  if any_shape and x.ndim < 1:
    raise ValueError(f"{name} must have a leading example axis, got a scalar")
  if in_dim is not None and x.ndim > 1 and x.shape[1] != in_dim:
    raise ValueError(
        f"{name} has {x.shape[1]} features but the model expects {in_dim}"
    )
  return x


def check_nonzero_rows(name: str, x, rtol: float = 0.0):
  """Rejects rows of (numerically) zero norm, whose direction is undefined."""
  if is_concrete(x):
    norms = np.linalg.norm(np.asarray(x), axis=-1)
    bad = np.flatnonzero(norms <= rtol * max(float(norms.max()), 1e-300))
    if bad.size:
      raise ValueError(
          f"{name} has {bad.size} row(s) of zero norm (first: row "
          f"{int(bad[0])}); remove them or add a bias feature"
      )
  return x


def check_unit_rows(name: str, x, atol: float = 1e-5):
  """Requires every row of ``x`` to have unit Euclidean norm."""
  check_nonzero_rows(name, x)
  if is_concrete(x):
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=-1)
    worst = float(np.max(np.abs(norms - 1.0)))
    if worst > atol:
      raise ValueError(
          f"{name} must have unit-norm rows (largest deviation {worst:.3g}); "
          "use ngdjax.normalize_rows"
      )
  return x


def check_targets(name: str, y, n: int, out_dim: int | None = None):
  """Checks targets of shape ``(n,)`` or ``(n, c)`` against ``n`` examples."""
  y = check_array(name, y, ndim=(1, 2))
  if y.shape[0] != n:
    raise ValueError(
        f"{name} has {y.shape[0]} rows but the inputs have {n} examples"
    )
  if out_dim is not None:
    c = 1 if y.ndim == 1 else y.shape[1]
    if c != out_dim:
      raise ValueError(
          f"{name} has {c} output column(s) but the model has {out_dim}"
      )
  return y


def check_scalar(
    name: str,
    value,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    integer: bool = False,
):
  """Checks a hyper-parameter: finite, and optionally > 0, >= 0 or integral."""
  if not is_concrete(value):
    return value  # a traced schedule value; checked where it is made
  try:
    v = float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a number, got {value!r}") from e
  if not math.isfinite(v):
    raise ValueError(f"{name} must be finite, got {value!r}")
  if positive and v <= 0:
    raise ValueError(f"{name} must be positive, got {value!r}")
  if nonnegative and v < 0:
    raise ValueError(f"{name} must be non-negative, got {value!r}")
  if integer and v != int(v):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  return value


def check_square(name: str, a, *, symmetric: bool = False, psd: bool = False):
  """Checks a square matrix; optionally symmetric and positive semi-definite.

  The PSD test allows eigenvalues down to ``-1e-6 * ||a||_2`` (relative)
  so that round-off in a computed Gram is not rejected.
  """
  a = check_array(name, a, ndim=2)
  if a.shape[0] != a.shape[1]:
    raise ValueError(f"{name} must be square, got shape {tuple(a.shape)}")
  if (symmetric or psd) and is_concrete(a):
    an = np.asarray(a, dtype=np.float64)
    scale = max(float(np.max(np.abs(an))), 1e-300)
    asym = float(np.max(np.abs(an - an.T)))
    if asym > 1e-6 * scale:
      raise ValueError(
          f"{name} must be symmetric (max |a - a^T| = {asym:.3g})"
      )
    if psd:
      eig_min = float(np.linalg.eigvalsh(0.5 * (an + an.T))[0])
      if eig_min < -1e-6 * scale * an.shape[0]:
        raise ValueError(
            f"{name} must be positive semi-definite (smallest eigenvalue "
            f"{eig_min:.3g})"
        )
  return a

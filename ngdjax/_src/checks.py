"""Input validation shared by every public entry point.

Each check raises ``ValueError`` naming the offending argument and, where there
is one, the fix. Checks on *values* (NaN, zero rows, symmetry) only run on
concrete arrays: inside ``jax.jit`` the arguments are tracers and only their
shapes can be checked, so public functions validate before they trace.

Array-likes (lists, tuples, numpy arrays) are converted once, here: every
``check_*`` that takes an array returns it as an array, and callers use the
returned value. ``bfloat16`` and ``float16`` are numeric and accepted;
operations without a half-precision kernel (``eigh``, Cholesky) compute in
``float32`` internally (``solvers.psd_solve``, ``linalg.lambda_min``).

Multi-process runs: a global ``jax.Array`` that spans other
processes (``not x.is_fully_addressable``) cannot be copied to this host with
``np.asarray``. Checks never do that: on such arrays they check shapes and
dtypes, and finiteness and row norms by a ``jnp`` reduction whose (replicated)
scalar result every process can read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType


def is_concrete(x) -> bool:
  """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def is_local(x) -> bool:
  """True when this process can read all of ``x`` (``np.asarray`` is safe).

  False for tracers and for global ``jax.Array``s with shards on other
  processes.
  """
  if not is_concrete(x):
    return False
  if isinstance(x, jax.Array):
    return bool(x.is_fully_addressable)
  return True


def _to_host(x) -> np.ndarray:
  """``x`` as numpy; only for ``is_local`` arrays."""
  return np.asarray(x)


def as_array(name: str, x):
  """``x`` as an array: jax arrays, tracers and numpy arrays unchanged.

  Python lists, tuples and scalars become ``jnp`` arrays (of JAX's default
  dtype for their kind), so every function accepts array-likes.
  """
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return x
  try:
    arr = np.asarray(x)
  except Exception as e:  # noqa: BLE001 - re-raised with the name
    raise ValueError(
        f"{name} must be an array, got {type(x).__name__}: {e}"
    ) from e
  if arr.dtype == object or not _numeric(arr.dtype):
    raise ValueError(
        f"{name} must be a numeric array (or a nested list of numbers), got "
        f"{type(x).__name__} holding {arr.dtype}"
    )
  return jnp.asarray(arr)


def _numeric(dtype) -> bool:
  # jnp.issubdtype knows bfloat16 and the other ml_dtypes; np.issubdtype
  # does not (it says bfloat16 is not a number).
  try:
    return bool(jnp.issubdtype(dtype, jnp.number)
                or jnp.issubdtype(dtype, jnp.bool_))
  except TypeError:
    return False


def check_dtype(name: str, x, *, floating: bool = False):
  """Requires a numeric (or, with ``floating``, a floating-point) dtype."""
  dtype = x.dtype
  if not _numeric(dtype) or jnp.issubdtype(dtype, jnp.bool_):
    raise ValueError(
        f"{name} must have a numeric dtype, got {dtype}"
    )
  if floating and not jnp.issubdtype(dtype, jnp.inexact):
    raise ValueError(
        f"{name} must be floating point, got dtype {dtype}; cast it, e.g. "
        f"{name}.astype(jnp.float32)"
    )
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise ValueError(f"{name} must be real, got dtype {dtype}")
  return x


def all_finite(x) -> bool | None:
  """Whether every entry of ``x`` is finite; ``None`` for a tracer.

  Local arrays are checked on the host; global arrays spanning other
  processes by a ``jnp`` reduction (never ``np.asarray``).
  """
  if not is_concrete(x):
    return None
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return True
  if is_local(x):
    return bool(np.all(np.isfinite(_to_host(x))))
  return bool(jnp.all(jnp.isfinite(x)))


def check_sequence(name: str, value, *, example: str = "") -> tuple:
  """Requires a sequence (list, tuple, array) and returns it as a tuple.

  A bare number or a string is refused with the argument's name, e.g.
  ``mlp(widths=8)`` where ``widths=(8,)`` was meant.
  """
  if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    hint = f", e.g. {example}" if example else ""
    raise ValueError(
        f"{name} must be a sequence{hint}, got {type(value).__name__} "
        f"{value!r}"
    )
  return tuple(value)


def check_features(name: str, x, size: int, what: str):
  """Requires ``x.shape[-1] == size``: the features a layer or kernel takes.

  ``what`` completes the message, e.g. ``"the model's first layer takes"``
  gives ``x has 5 features but the model's first layer takes 4``. Shapes
  are static, so this also runs under ``jax.jit``.
  """
  got = x.shape[-1] if getattr(x, "ndim", 0) >= 1 else "no feature axis"
  if got != size:
    raise ValueError(f"{name} has {got} features but {what} {size}")
  return x


def check_state(name: str, state, expected: type):
  """Requires the state type an optimizer's ``init`` returns.

  ``ngd(...).step`` given the ``GDState`` of ``gd`` otherwise fails deep
  inside with an ``AttributeError``.
  """
  if not isinstance(state, expected):
    raise ValueError(
        f"{name} is a {type(state).__name__}, not the {expected.__name__} "
        "this optimizer's init returns; pass the state from the same "
        "optimizer's init"
    )
  return state


def compute_dtype_inputs(name: str, x, params, *, integers: bool = False):
  """``x`` in the floating dtype the model computes in.

  Half-precision inputs (``float16``, ``bfloat16``) of a model whose
  parameters are wider are cast up to the parameters' dtype, as the
  model's own output would be (NumPy promotion), so that every product in
  a step shares one dtype. Integer or boolean inputs are refused (naming
  ``name``) unless ``integers`` (a bare ``apply`` may take token ids).
  """
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    if integers:
      return x
    return check_dtype(name, x, floating=True)
  floats = [leaf.dtype for leaf in jax.tree_util.tree_leaves(params)
            if jnp.issubdtype(getattr(leaf, "dtype", None), jnp.floating)]
  if floats and jnp.issubdtype(x.dtype, jnp.floating):
    target = jnp.result_type(*floats)
    if jnp.finfo(x.dtype).bits < jnp.finfo(target).bits:
      return x.astype(target)
  return x


def check_array(
    name: str,
    x,
    ndim: int | Sequence[int] | None = None,
    *,
    allow_empty: bool = False,
    finite: bool = True,
):
  """Checks rank, emptiness, dtype and finiteness of an array argument.

  Args:
    name: argument name used in the error message.
    x: the array (numpy, jax or array-like).
    ndim: required rank, or a sequence of allowed ranks.
    allow_empty: whether a zero-size array is accepted.
    finite: whether NaN/Inf are rejected (only checked on concrete arrays)
      and the dtype must be numeric.

  Returns:
    ``x`` as an array (jax arrays and tracers are returned unchanged; lists
    become jax arrays).
  """
  x = as_array(name, x)
  if ndim is not None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
      want = " or ".join(str(a) for a in allowed)
      raise ValueError(
          f"{name} must have {want} dimensions, got shape {tuple(x.shape)}"
      )
  if not allow_empty and x.size == 0:
    raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
  if finite:
    check_dtype(name, x)
    # all_finite never copies a global array spanning other processes to
    # the host: it checks those with a jnp reduction.
    if x.size and all_finite(x) is False:
      raise ValueError(f"{name} contains NaN or Inf values")
  return x


def check_inputs(name: str, x, in_dim: int | None = None, *,
                 any_shape: bool = False):
  """Checks inputs: a design matrix ``(n, d)``, or ``(n, ...)``.

  Args:
    name: argument name for messages.
    x: the inputs (array-like).
    in_dim: expected number of features ``d`` (``x.shape[1]``); with
      ``any_shape`` it may also be a tuple, the expected ``x.shape[1:]``.
    any_shape: accept any rank ``>= 1`` (images ``(n, h, w, c)``, scalar
      inputs ``(n,)``) for functions that only need the example axis first;
      the default requires ``(n, d)``.

  Returns:
    ``x`` as an array.
  """
  if any_shape:
    x = check_array(name, x)
    if x.ndim < 1:
      raise ValueError(
          f"{name} must have an example axis first, (n, ...), got a scalar"
      )
  else:
    x = check_array(name, x, ndim=2)
  if in_dim is not None:
    if isinstance(in_dim, (tuple, list)):
      if tuple(x.shape[1:]) != tuple(in_dim):
        raise ValueError(
            f"{name} has examples of shape {tuple(x.shape[1:])} but the "
            f"model expects {tuple(in_dim)}"
        )
    elif x.ndim < 2 or x.shape[1] != in_dim:
      got = x.shape[1] if x.ndim >= 2 else "no feature axis"
      raise ValueError(
          f"{name} has {got} features but the model expects {in_dim}"
      )
  return x


def _row_norms(x):
  """Euclidean norms of the rows (host numpy when local, else jnp)."""
  if is_local(x):
    xh = _to_host(x)
    if not np.issubdtype(xh.dtype, np.floating) or xh.dtype.itemsize < 4:
      xh = xh.astype(np.float64)
    return np.linalg.norm(xh.reshape(xh.shape[0], -1), axis=-1)
  return jnp.linalg.norm(
      x.reshape(x.shape[0], -1).astype(jnp.float32), axis=-1)


def check_nonzero_rows(name: str, x, rtol: float = 0.0):
  """Rejects rows of (numerically) zero norm, whose direction is undefined."""
  if is_concrete(x):
    x = as_array(name, x)
    if x.size == 0:
      return x
    norms = _row_norms(x)
    if not is_local(x):
      bad_count = int(jnp.sum(norms <= rtol * jnp.maximum(norms.max(),
                                                           1e-300)))
      if bad_count:
        raise ValueError(
            f"{name} has {bad_count} row(s) of zero norm; remove them or add "
            "a bias feature"
        )
      return x
    bad = np.flatnonzero(norms <= rtol * max(float(norms.max()), 1e-300))
    if bad.size:
      raise ValueError(
          f"{name} has {bad.size} row(s) of zero norm (first: row "
          f"{int(bad[0])}); remove them or add a bias feature"
      )
  return x


def check_unit_rows(name: str, x, atol: float = 1e-5):
  """Requires every row of ``x`` to have unit Euclidean norm."""
  x = check_nonzero_rows(name, x)
  if is_concrete(x):
    norms = _row_norms(x)
    worst = float(np.max(np.abs(norms - 1.0)) if is_local(x)
                  else jnp.max(jnp.abs(norms - 1.0)))
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


def check_probabilities(name: str, y):
  """Requires the rows of ``y`` ``(n, c)`` to be probability vectors.

  Entries ``>= -tol`` and row sums within ``tol`` of 1, ``tol = max(1e-6,
  10 c eps)`` (softmax outputs and label smoothing pass in float32). Only
  checked when ``y`` holds local values (not under ``jit``).
  """
  if not (is_concrete(y) and is_local(y)):
    return y
  arr = np.asarray(y)
  tol = max(1e-6, 10 * arr.shape[1] * float(np.finfo(arr.dtype).eps))
  sums = arr.sum(axis=1)
  bad_sum = np.flatnonzero(np.abs(sums - 1.0) > tol)
  if (arr < -tol).any():
    row = int(np.flatnonzero((arr < -tol).any(axis=1))[0])
    raise ValueError(
        f"{name} must hold class probabilities (n, c) or integer labels "
        f"(n,); row {row} has a negative entry ({float(arr[row].min()):.3g})"
    )
  if bad_sum.size:
    row = int(bad_sum[0])
    raise ValueError(
        f"{name} must hold class probabilities (n, c) or integer labels "
        f"(n,); {bad_sum.size} row(s) do not sum to 1 (row {row} sums to "
        f"{float(sums[row]):.6g})"
    )
  return y


def check_vector(name: str, v, size: int, *, of: str = "",
                 shapes: Sequence[tuple[int, ...]] = ()):
  """Checks a vector of length ``size`` (or one of the extra ``shapes``).

  Args:
    name: argument name for messages.
    v: the array.
    size: required length of a 1-D ``v``.
    of: what the length is, for the message (``"n * c = 5 * 1"``).
    shapes: other accepted shapes (a leading ``-1`` entry matches any
      size), e.g. ``((n, c),)`` for a vector given as a matrix.

  Returns:
    ``v`` as an array.
  """
  v = check_array(name, v, allow_empty=size == 0)
  ok = v.shape == (size,)
  for shape in shapes:
    ok = ok or (len(shape) == v.ndim and all(
        s == -1 or s == t for s, t in zip(shape, v.shape, strict=True)))
  if not ok:
    want = f"({size},)" + "".join(
        " or (" + ", ".join("k" if s == -1 else str(s) for s in shape) + ")"
        for shape in shapes)
    why = f" ({of})" if of else ""
    raise ValueError(
        f"{name} must have shape {want}{why}, got {tuple(v.shape)}"
    )
  return v


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
  if isinstance(value, (bool, str, bytes)) or (
      hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.bool_)):
    raise ValueError(f"{name} must be a number, got {value!r}")
  if hasattr(value, "shape") and getattr(value, "size", 1) != 1:
    raise ValueError(
        f"{name} must be a scalar, got shape {tuple(value.shape)}"
    )
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


def check_chunk_size(chunk_size, name: str = "chunk_size") -> int | None:
  """``None`` or a positive integer (examples per block); returns an int.

  The one check of every ``chunk_size`` argument in the library.
  """
  if chunk_size is None:
    return None
  check_scalar(name, chunk_size, positive=True, integer=True)
  return int(chunk_size)


def check_choice(name: str, value, choices: Sequence[Any]):
  """Requires ``value`` to be one of ``choices`` (strings compare as is)."""
  if value not in tuple(choices):
    raise ValueError(
        f"{name} must be one of {list(choices)}, got {value!r}"
    )
  return value


# --------------------------------------------------------------------------
# Parameter pytrees.
# --------------------------------------------------------------------------


def _path_str(name: str, path) -> str:
  return name + jax.tree_util.keystr(path)


def check_params(params, expected=None, *, name: str = "params",
                 finite: bool = True, floating: bool = True,
                 context: str = ""):
  """Checks a parameter pytree; optionally against an expected structure.

  Args:
    params: the pytree (dicts, lists, NamedTuples, flax/equinox trees).
    expected: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the
      structure and shapes ``params`` must have (e.g. from
      ``expected_model_params``); ``None`` checks the leaves only.
    name: argument name for messages.
    finite: reject NaN/Inf leaves (concrete leaves only).
    floating: require floating-point leaves.
    context: appended to shape messages (e.g. the inputs' shape).

  Raises:
    ValueError: naming ``params`` and the path of the bad leaf, e.g.
      ``params['W'] has shape (16, 2) but the model expects (16, 3)``, a
      missing or unexpected key, a non-finite or non-floating leaf.
  """
  leaves_p, treedef = jax.tree_util.tree_flatten_with_path(params)
  if not leaves_p:
    raise ValueError(
        f"{name} has no array leaves (got {type(params).__name__}); pass "
        "the pytree returned by model.init"
    )
  if expected is not None:
    exp_p, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    given = {jax.tree_util.keystr(p): leaf for p, leaf in leaves_p}
    want = {jax.tree_util.keystr(p): leaf for p, leaf in exp_p}
    missing = [k for k in want if k not in given]
    extra = [k for k in given if k not in want]
    if missing or extra:
      parts = []
      if missing:
        parts.append("missing " + ", ".join(name + k for k in missing))
      if extra:
        parts.append("unexpected " + ", ".join(name + k for k in extra))
      raise ValueError(
          f"{name} does not have the model's structure: "
          + "; ".join(parts)
          + f" (expected leaves: {', '.join(name + k for k in want)})"
      )
    if treedef != exp_def:
      raise ValueError(
          f"{name} does not have the model's pytree structure: got "
          f"{treedef}, expected {exp_def}"
      )
    for key, leaf in given.items():
      shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
      if shape != tuple(want[key].shape):
        raise ValueError(
            f"{name}{key} has shape {shape} but the model expects "
            f"{tuple(want[key].shape)}{context}"
        )
  for path, leaf in leaves_p:
    leaf_name = _path_str(name, path)
    leaf = as_array(leaf_name, leaf)
    check_dtype(leaf_name, leaf, floating=floating)
    if finite and leaf.size and all_finite(leaf) is False:
      raise ValueError(f"{leaf_name} contains NaN or Inf values")
  return params


@functools.lru_cache(maxsize=64)
def _expected_params_cached(init, in_shape, x64):
  del x64  # part of the cache key: init's dtype follows jax_enable_x64
  in_dim = in_shape[0] if len(in_shape) == 1 else in_shape
  return jax.eval_shape(lambda k: init(k, in_dim), jax.random.key(0))


def expected_model_params(model, x):
  """The params structure ``model.init`` makes for inputs like ``x``.

  ``model`` is an ngdjax ``Model`` (anything with ``init(key, in_dim)``);
  evaluated with ``jax.eval_shape`` (no FLOPs) and cached. Returns ``None``
  when ``init`` cannot be evaluated abstractly for these inputs.
  """
  try:
    return _expected_params_cached(
        model.init, tuple(x.shape[1:]), bool(jax.config.jax_enable_x64))
  except Exception:  # noqa: BLE001 - no expectation: leaf checks only
    return None


def check_model_params(model, params, x, *, name: str = "params",
                       finite: bool = True):
  """``check_params`` against ``model.init``'s structure for inputs ``x``.

  For a bare ``apply`` function (``model`` is ``None``) only the leaves
  are checked; mismatches surface in ``check_apply``.
  """
  expected = None if model is None else expected_model_params(model, x)
  return check_params(
      params, expected, name=name, finite=finite,
      context=f" for inputs x of shape {tuple(x.shape)}")


def leading_rows(x, k: int = 1) -> jax.ShapeDtypeStruct:
  """The abstract shape of ``x[:k]``, for ``jax.eval_shape``.

  Slicing ``x`` itself would run a computation on it: on a global array
  of an ``Explicit`` mesh that raises, and on one spanning other processes
  it is a collective; the shape is all ``eval_shape`` needs.
  """
  return jax.ShapeDtypeStruct((k,) + tuple(x.shape[1:]), x.dtype)


def check_not_split(name: str, x) -> None:
  """Refuses ``x`` split over an ``Explicit`` mesh axis when the call has
  no ``mesh=``.

  Such an array (``jax.device_put`` with a ``NamedSharding`` of
  ``jax.make_mesh``'s mesh) carries its sharding in its type, and JAX then
  refuses the step's slices and contractions with a sharding-type error
  deep inside; the library shards a step only over the mesh it is given.
  """
  try:
    sharding = jax.typeof(x).sharding
  except (TypeError, AttributeError):
    return
  mesh = getattr(sharding, "mesh", None)
  if not any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
    return
  axes = [a for a in sharding.spec if a is not None]
  if axes:
    raise ValueError(
        f"{name} is split over the mesh axes {axes} of an Explicit mesh "
        "(jax.make_mesh) but the optimizer was built without mesh=; pass "
        "mesh=that mesh to run the step sharded, or replicate "
        f"{name}")


def check_apply(apply, params, x, *, name: str = "params"):
  """Evaluates ``apply(params, x[:1])`` abstractly; a failure names both.

  Returns:
    The ``jax.ShapeDtypeStruct`` of one example's outputs.

  Raises:
    ValueError: when ``apply`` cannot run on ``params`` and ``x`` (a params
      tree of another model, inputs of the wrong width).
  """
  # A shape, not x[:1]: slicing a sharded (Explicit-axis) array is a gather
  # JAX may refuse without an output sharding.
  one = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)
  try:
    return jax.eval_shape(apply, params, one)
  except Exception as e:  # noqa: BLE001 - re-raised with the names
    raise ValueError(
        f"{name} and x do not fit the model: apply(params, x) raised "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
        f"(x has shape {tuple(x.shape)}); pass params made by the model's "
        "init for inputs of this shape"
    ) from e


def check_square(name: str, a, *, symmetric: bool = False, psd: bool = False):
  """Checks a square matrix; optionally symmetric and positive semi-definite.

  The PSD test allows eigenvalues down to ``-1e-6 * ||a||_2`` (relative)
  so that round-off in a computed Gram is not rejected. Value checks run on
  local concrete arrays only.
  """
  a = check_array(name, a, ndim=2)
  if a.shape[0] != a.shape[1]:
    raise ValueError(f"{name} must be square, got shape {tuple(a.shape)}")
  if (symmetric or psd) and is_local(a):
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

"""The matmul precision of every curvature computation: one policy.

On GPUs and TPUs JAX multiplies float32 matrices at reduced precision by
default: TF32 on NVIDIA GPUs since Ampere (10 mantissa bits), one bfloat16
pass on TPUs (7 bits). A second-order step amplifies that rounding through
the solve, so ngdjax computes curvature (Gram matrices, Jacobian-vector
products, layer factors, K-FAC statistics, the solves) at float32 accuracy
by default, whatever ``jax_default_matmul_precision`` says. One
``precision=`` argument trades accuracy for speed explicitly:

* ``"highest"`` (default): every dot and convolution traced inside the
  library call, the user's model and the transposes and VJPs built from it
  included, runs at ``lax.Precision.HIGHEST`` (float32 to float32 accuracy;
  on a GPU about 3-8x the time of a TF32 matmul, on a TPU six bfloat16
  passes; on CPU free, since XLA's CPU dots are exact anyway).
* ``"default"``: JAX's own choice, i.e. ``jax_default_matmul_precision``
  if the user set it, else the backend's fastest (TF32, bfloat16).
* ``"fast"``: ``lax.Precision.DEFAULT`` explicitly (the backend's fastest),
  whatever the global flag says.
* ``"mixed"`` (NGD): the ``n^2 p`` Gram at the fast precision, float32
  accuracy recovered with a few exact Gram-vector products
  (``ngdjax._src.optim.mixed_precision``); everything else as ``"highest"``.

How it works: ``lax.dot_general`` and ``lax.conv_general_dilated`` read
``jax_default_matmul_precision`` when they are traced (an explicit
``precision=`` on a call wins), and the transpose of a dot traced later (a
VJP) reads it again when it is built. ``scope`` enters
``jax.default_matmul_precision`` around a library call, so everything that
call traces follows the policy; jit caches key on the setting, so a
function traced under another setting is traced again. A dot whose
``precision`` the user's model sets explicitly keeps it. Cholesky and
triangular solves are library calls (LAPACK, cuSOLVER) or TPU expansions
that XLA runs at full precision.

Half precision: parameters and inputs in ``bfloat16`` or ``float16`` are
cast to ``float32`` for the curvature (``upcast``); optimizer steps cast
the new parameters and state back to the caller's dtypes.

Nested library calls inherit the enclosing call's setting (``precision=
None``, the default of every entry point, means "the enclosing library
call's, else ``"highest"``").
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

PRECISIONS = ("highest", "default", "fast", "mixed")
HALF_DTYPES = (jnp.bfloat16, jnp.float16)

# (policy, the user's jax_default_matmul_precision at the outermost library
# call) while a library call is being traced; None outside. Read only at
# trace time, like jax's own configuration contexts.
_ACTIVE: contextvars.ContextVar[tuple[str, str | None] | None] = (
    contextvars.ContextVar("ngdjax_precision", default=None))


def resolve(precision, name: str = "precision") -> str:
  """``precision`` checked: one of ``PRECISIONS`` (``None``: the enclosing
  library call's setting, else ``"highest"``).

  Raises:
    ValueError: naming ``name`` for anything else.
  """
  if precision is None:
    active = _ACTIVE.get()
    return "highest" if active is None else active[0]
  if not isinstance(precision, str) or precision not in PRECISIONS:
    raise ValueError(
        f"{name} must be one of {list(PRECISIONS)} (or None), got "
        f"{precision!r}")
  return precision


def matmul_setting(policy: str, user: str | None) -> str | None:
  """The ``jax_default_matmul_precision`` value that ``policy`` stands for,
  given the user's own value ``user``."""
  if policy in ("highest", "mixed"):
    return "highest"
  if policy == "fast":
    return "default"
  return user


@contextlib.contextmanager
def scope(precision=None) -> Iterator[str]:
  """Trace the enclosed code under the policy ``precision``; yields it.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> with scope("highest"):
    ...   jaxpr = jax.make_jaxpr(jnp.dot)(jnp.ones((2, 2)), jnp.ones((2, 2)))
    >>> "HIGHEST" in str(jaxpr)
    True
  """
  active = _ACTIVE.get()
  policy = resolve(precision)
  user = (jax.config.jax_default_matmul_precision if active is None
          else active[1])
  token = _ACTIVE.set((policy, user))
  try:
    with jax.default_matmul_precision(matmul_setting(policy, user)):
      yield policy
  finally:
    _ACTIVE.reset(token)


def _upcast_leaf(leaf):
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and any(dtype == d for d in HALF_DTYPES):
    return jnp.asarray(leaf, jnp.float32)
  return leaf


def upcast(tree):
  """``bfloat16``/``float16`` array leaves of ``tree`` as ``float32``; other
  leaves (functions, meshes, integers) unchanged."""
  return jax.tree_util.tree_map(_upcast_leaf, tree)


def like(tree, reference):
  """``tree``'s array leaves cast to the dtypes of ``reference``'s (same
  structure); the inverse of ``upcast`` for results."""
  def cast(t, r):
    dtype = getattr(r, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      return t
    return t.astype(dtype)

  return jax.tree_util.tree_map(cast, tree, reference)


def curvature(fn: Callable) -> Callable:
  """Decorate a curvature entry point: it runs under ``scope`` and gains a
  keyword ``precision=None`` (``PRECISIONS``); half-precision array
  arguments are cast to ``float32``."""

  @functools.wraps(fn)
  def wrapped(*args, precision=None, **kwargs):
    with scope(precision):
      args, kwargs = upcast((args, kwargs))
      return fn(*args, **kwargs)

  return wrapped


def step(fn: Callable, precision=None) -> Callable:
  """An optimizer's ``step(params, state, x, y) -> (params, state, info)``
  under ``scope(precision)``: half-precision ``params``/``state``/batch are
  cast to ``float32`` for the step, and the new params and state back to
  the caller's dtypes (a jitted loop keeps its carry types)."""
  policy = resolve(precision)

  @functools.wraps(fn)
  def wrapped(params, state, *batch, **kwargs):
    with scope(policy):
      new_params, new_state, info = fn(*upcast((params, state, *batch)),
                                       **kwargs)
    return like(new_params, params), like(new_state, state), info

  return wrapped


def update(fn: Callable, precision=None) -> Callable:
  """An optax ``update(updates, state, params=None, **extra)`` under
  ``scope(precision)``, with the half-precision casts of ``step``."""
  policy = resolve(precision)

  @functools.wraps(fn)
  def wrapped(updates, state, params=None, **extra):
    with scope(policy):
      new_updates, new_state = fn(*upcast((updates, state, params)),
                                  **upcast(extra))
    reference = params if updates is None else updates
    if reference is not None:
      new_updates = like(new_updates, reference)
    return new_updates, like(new_state, state)

  return wrapped

"""Linearised (NTK-regime) dynamics: closed-form GD and NGD trajectories.

docs/math.md (linearised dynamics). With the Jacobian frozen at ``theta_0``
(``f_lin(theta) = f(theta_0) + J (theta - theta_0)``) gradient descent and
natural gradient descent on the sum-of-squares loss are linear dynamical
systems whose trajectories have closed forms in the eigenbasis of the Gram
matrix ``G = J J^T`` (``N x N``, ``N = n c``).

Sign convention: docs/math.md writes ``y - u(t) = exp(-G t) (y - u(0))``; this
module works with the residual ``r = vec(u - y)`` (the same equation
multiplied by -1), so every function takes ``r0 = vec(u(0) - y)`` and returns
``u(t) - y``, ``w(t) - w(0)`` or ``u_test(t)``. Outputs are flattened
row-major, ``vec(u)[i * c + k] = u[i, k]`` (docs/math.md, conventions).

All trajectories share one form. With ``G = V diag(s) V^T`` and a per-mode
decay ``e_i(t)``,

    u(t) - y          =  V diag(e(t)) V^T r0
    w(t) - w(0)       = -J^T a(t),        a(t) = V diag(phi(t)) V^T r0
    u_test(t)         =  u_test(0) - G_test,train a(t)

with ``phi_i = (1 - e_i) / s_i`` (because ``u(t) - u(0) = J (w(t) - w(0))
= -G a(t)``). The decays, with ``kappa_i = s_i`` for GD and
``kappa_i = s_i / (s_i + lam)`` for NGD damped by ``lam`` (its output-space
generator is ``G (G + lam I)^{-1}``):

    flow (learning_rate=None):       e_i(t) = exp(-kappa_i t)
    steps (learning_rate=eta):       e_i(k) = (1 - eta kappa_i)^k

Undamped NGD has ``kappa_i = 1``: ``e = exp(-t)`` or ``(1 - eta)^k`` for every
mode, so ``u(t) - y`` stays on the segment from ``r0`` to 0 (a straight line
in output space) while GD bends towards the slow modes. Both weight paths end
at the minimum-norm least-squares solution ``-J^T G^{-1} r0``
(``min_norm_solution``).

One symmetric eigendecomposition serves every time in ``t``; ``t = inf``
gives the limits exactly. Eigenvalues at or below ``N * eps * s_max`` are
treated as zero: those modes (the null space of ``J^T``) cannot move, and
``G^{-1}`` is then the pseudo-inverse, so a singular ``G`` (``N > p``) still
gives the minimum-norm least-squares solution of ``numpy.linalg.pinv``.

Example:

  >>> import jax, jax.numpy as jnp, ngdjax
  >>> from ngdjax import linearized
  >>> model = ngdjax.two_layer_relu(width=32)
  >>> params0 = model.init(jax.random.key(0), in_dim=3)
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (4, 3)))
  >>> y = jnp.ones((4, 1))
  >>> lin = linearized.linearize(model, params0)   # a Model, out_dim 1
  >>> g = ngdjax.gram(model, params0, x)            # (4, 4)
  >>> r0 = (model.apply(params0, x) - y).reshape(-1)
  >>> t = jnp.array([0.0, 1.0, jnp.inf])
  >>> linearized.residuals(g, r0, t, method="ngd").shape
  (3, 4)
  >>> linearized.weights(model, g, r0, t, params=params0, x=x).shape
  (3, 96)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ngdjax._src import checks, linalg, precision
from ngdjax._src.jacobian import (
  ApplyOrModel,
  gram,
  output_dim,
  split_model,
  vjp,
)
from ngdjax._src.jacobian import (
  check_params_and_inputs as _check_params_and_inputs,
)
from ngdjax._src.models import Model
from ngdjax._src.typing import Array, Params

METHODS = ("gd", "ngd")


# --------------------------------------------------------------------------
# The linearised model.
# --------------------------------------------------------------------------


def linearize(
    apply_or_model: ApplyOrModel, params0: Params
) -> Callable[[Params, Array], Array] | Model:
  """The first-order Taylor model of a network around ``params0``.

  ``f_lin(params, x) = f(params0, x) + J(x) (params - params0)`` with
  ``J = d vec(f) / d params`` at ``params0`` (docs/math.md). Evaluated by
  one ``jax.jvp`` (forward mode), which returns ``f(params0, x)`` and
  ``J (params - params0)`` together without forming ``J``.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x) -> (n, c)``.
    params0: the linearisation point, a parameter pytree.

  Returns:
    For a bare function, ``f_lin(params, x)`` with the same output shape as
    ``apply``. For a ``Model``, a ``Model`` whose ``apply`` is ``f_lin``,
    whose ``init`` returns ``params0`` (it ignores its key and ``in_dim``:
    the linearised model is defined around that point), and which keeps
    ``out_dim``, the layer-matrix maps and ``kernel_inf``. Its
    ``layer_factors(params, x)`` are the original model's at ``params0``
    for every ``params``: ``f_lin`` is affine in ``params``, so its Jacobian,
    Gram and Fisher are those at ``params0`` everywhere.

  Raises:
    ValueError: if ``params0`` has no leaves or holds NaN/Inf.
  """
  apply, model = split_model(apply_or_model)
  leaves = jax.tree_util.tree_leaves(params0)
  if not leaves:
    raise ValueError("params0 has no array leaves")
  for leaf in leaves:
    checks.check_array("params0", leaf, allow_empty=True)

  def apply_lin(params, x):
    # The tangent must have params0's dtypes for jax.jvp.
    delta = jax.tree_util.tree_map(
        lambda p, p0: (p - p0).astype(jnp.result_type(p0)), params, params0
    )
    out0, out_delta = jax.jvp(lambda p: apply(p, x), (params0,), (delta,))
    return out0 + out_delta

  if model is None:
    return apply_lin

  layer_factors = None
  if model.layer_factors is not None:

    def layer_factors(params, x):
      del params  # the Jacobian of f_lin does not depend on params
      return model.layer_factors(params0, x)

  gram_product = None
  if model.gram_product is not None:

    def gram_product(params, x, chunk_size):
      del params  # as layer_factors: the Jacobian at params0
      return model.gram_product(params0, x, chunk_size)

  return model._replace(
      init=lambda key, in_dim: params0,
      apply=apply_lin,
      name=f"linearized({model.name})",
      layer_factors=layer_factors,
      gram_product=gram_product,
  )


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


def _check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  return method


def _check_hyper(method, learning_rate, damping):
  if learning_rate is not None:
    checks.check_scalar("learning_rate", learning_rate, positive=True)
  checks.check_scalar("damping", damping, nonnegative=True)
  if method == "gd" and checks.is_concrete(damping) and float(damping) != 0:
    raise ValueError(
        'damping applies to method="ngd" only (the GD update has no solve); '
        f"got damping={damping!r} with method='gd'"
    )


def _check_gram(name: str, g) -> Array:
  g = checks.check_square(name, g, symmetric=True, psd=True)
  return jnp.asarray(g)


def _check_vector(name: str, v, size: int, size_of: str) -> Array:
  """A flat length-``size`` vector from ``(size,)`` or ``(n, c)``."""
  v = checks.check_array(name, v, ndim=(1, 2))
  if v.size != size:
    raise ValueError(
        f"{name} has {v.size} entries (shape {tuple(v.shape)}) but {size_of} "
        f"is {size}; flatten outputs row-major, vec(u)[i * c + k] = u[i, k]"
    )
  return jnp.asarray(v).reshape(-1)


def _check_times(t, discrete: bool) -> Array:
  """``t`` as a 1-D float array of non-negative times (``inf`` allowed)."""
  t = checks.check_array("t", t, ndim=(0, 1), finite=False)
  if checks.is_concrete(t):
    tn = np.asarray(t, dtype=np.float64)
    if np.any(np.isnan(tn)):
      raise ValueError("t contains NaN")
    if np.any(tn < 0):
      raise ValueError(f"t must be non-negative, got min(t) = {tn.min():g}")
    finite = tn[np.isfinite(tn)]
    if discrete and np.any(finite != np.round(finite)):
      raise ValueError(
          "t must hold whole step counts (or inf) when learning_rate is "
          "given; use learning_rate=None for continuous time"
      )
  return jnp.atleast_1d(jnp.asarray(t))


def _split_jacobian_or_model(jac_or_model, params, x):
  """``(J, None)`` for an array, ``(None, apply_or_model)`` otherwise."""
  if isinstance(jac_or_model, Model) or callable(jac_or_model):
    if params is None or x is None:
      raise ValueError(
          "params and x are required when the first argument is a model or "
          "an apply function (the matrix-free form)"
      )
    _check_params_and_inputs(params, x)
    return None, jac_or_model
  if params is not None or x is not None:
    raise ValueError(
        "params and x are only used with a model; the first argument is a "
        "Jacobian array"
    )
  return jnp.asarray(checks.check_array("J", jac_or_model, ndim=2)), None


def _rows(j, model, params, x) -> int:
  if j is not None:
    return j.shape[0]
  return x.shape[0] * output_dim(model, params, x)


def _gram_for(j, model, params, x, g):
  """``G`` as given (validated against ``J``), or computed from it."""
  n_out = _rows(j, model, params, x)
  if g is None:
    return j @ j.T if j is not None else gram(model, params, x)
  g = _check_gram("G", g)
  if g.shape[0] != n_out:
    what = "J has" if j is not None else "x and the model give"
    raise ValueError(
        f"G is {g.shape[0]} x {g.shape[0]} but {what} {n_out} output rows"
    )
  return g


# --------------------------------------------------------------------------
# Spectral core (one eigendecomposition for all times).
# --------------------------------------------------------------------------


def _eigh(g: Array) -> tuple[Array, Array, Array]:
  """Eigenvalues (clipped), eigenvectors and the mask of non-null modes."""
  s, v = jnp.linalg.eigh(linalg.symmetrize(g))
  # Round-off puts the eigenvalues of a singular Gram at about +-N eps s_max;
  # modes at or below that are the null space of J^T and cannot move.
  cutoff = g.shape[0] * jnp.finfo(s.dtype).eps * jnp.maximum(s[-1], 0.0)
  live = s > cutoff
  return jnp.where(live, s, 0.0), v, live


def _decay(s, live, t, method, learning_rate, damping):
  """Per-mode ``e(t)`` and ``1 - e(t)``, each ``(len(t), N)``.

  ``e = exp(-kappa t)`` (flow) or ``(1 - eta kappa)^k`` (steps), with
  ``kappa = s`` (GD) or ``s / (s + lam)`` (NGD); null modes keep ``e = 1``.
  ``1 - e`` is computed directly (``expm1``/``log1p``) so that ``phi =
  (1 - e) / s`` keeps its precision when ``kappa t`` is small.
  """
  safe_s = jnp.where(live, s, 1.0)
  if method == "gd":
    kappa = s
  else:
    kappa = jnp.where(live, s / (safe_s + damping), 0.0)
  t = t.astype(s.dtype)[:, None]
  kappa = kappa[None, :]
  if learning_rate is None:
    log_e = -kappa * t  # NaN only for null modes at t = inf; masked below
    e, one_minus_e = jnp.exp(log_e), -jnp.expm1(log_e)
  else:
    x = learning_rate * kappa
    finite = jnp.isfinite(t)
    k = jnp.where(finite, t, 0.0)
    contracting = x < 1  # 0 < 1 - x: the log form is exact and accurate
    log_e = k * jnp.log1p(-jnp.where(contracting, x, 0.0))
    power = jnp.power(1.0 - x, k)  # any sign of 1 - x; k is integral
    e = jnp.where(contracting, jnp.exp(log_e), power)
    one_minus_e = jnp.where(contracting, -jnp.expm1(log_e), 1.0 - power)
    # k = inf: 0 when the iteration contracts (|1 - eta kappa| < 1), else no
    # limit exists (it oscillates or diverges): NaN says so.
    limit = jnp.where(jnp.abs(1.0 - x) < 1, 0.0, jnp.nan)
    e = jnp.where(finite, e, limit)
    one_minus_e = jnp.where(finite, one_minus_e, 1.0 - limit)
  e = jnp.where(live, e, 1.0)
  one_minus_e = jnp.where(live, one_minus_e, 0.0)
  return e, one_minus_e


# The cores below are jitted (method static) although the library otherwise
# leaves jit to the caller: eagerly, their ~40 small primitives would each be
# compiled on every new shape; one compilation per shape is much cheaper, and
# inside a caller's jit a nested jit is simply inlined.
@functools.partial(jax.jit, static_argnames="method")
def _spectral(g, r0, t, method, learning_rate, damping):
  """``(e, phi, V, V^T r0)`` for the trajectory formulas of the docstring."""
  s, v, live = _eigh(g)
  e, one_minus_e = _decay(s, live, t, method, learning_rate, damping)
  phi = one_minus_e / jnp.where(live, s, 1.0)
  return e, phi, v, v.T @ r0.astype(v.dtype)


@functools.partial(jax.jit, static_argnames="method")
def _dual_coefficients(g, r0, t, method, learning_rate, damping):
  """``a(t) = V diag(phi(t)) V^T r0``, ``(len(t), N)``: ``w - w0 = -J^T a``."""
  _, phi, v, coeffs = _spectral(g, r0, t, method, learning_rate, damping)
  return (phi * coeffs) @ v.T


def _check_dynamics(t, method, learning_rate, damping) -> Array:
  """Validates the arguments every trajectory shares; returns ``t`` as 1-D."""
  _check_method(method)
  _check_hyper(method, learning_rate, damping)
  return _check_times(t, discrete=learning_rate is not None)


# --------------------------------------------------------------------------
# Public trajectories.
# --------------------------------------------------------------------------


@precision.curvature
def residuals(
    G: Array,
    r0: Array,
    t: Array,
    method: str = "gd",
    *,
    learning_rate: float | None = None,
    damping: float = 0.0,
) -> Array:
  """Residuals ``u(t) - y`` of GD or NGD on the linearised model.

  docs/math.md (linearised dynamics), in terms of ``r = u - y``:

      GD  flow:  r(t) = exp(-G t) r0           steps:  (I - eta G)^k r0
      NGD flow:  r(t) = exp(-G (G + lam I)^{-1} t) r0   (= exp(-t) r0)
      NGD steps: r(k) = (I - eta G (G + lam I)^{-1})^k r0  (= (1-eta)^k r0)

  (the parenthesised forms for ``lam = 0`` and invertible ``G``).

  Args:
    G: ``(N, N)`` symmetric positive semi-definite Gram ``J J^T``.
    r0: initial residual ``vec(u(0) - y)``, ``(N,)`` (or ``(n, c)``,
      flattened row-major).
    t: times, scalar or ``(T,)``, non-negative; ``inf`` gives the limit. With
      a ``learning_rate`` they are step counts (whole numbers or ``inf``).
    method: ``"gd"`` or ``"ngd"``.
    learning_rate: ``None`` for the continuous flows, else the step size
      ``eta`` of the discrete iteration. A step size with
      ``|1 - eta kappa_i| >= 1`` for some mode has no limit: ``t = inf``
      gives NaN there (finite step counts are still exact).
    damping: ``lam >= 0``, NGD only.

  Returns:
    ``(T, N)`` array of ``u(t) - y``, row ``j`` for ``t[j]``.

  Raises:
    ValueError: on a non-symmetric, non-PSD or non-finite ``G``, a
      mismatched ``r0``, negative or NaN times, non-integral step counts, a
      non-positive learning rate, negative damping or damping with GD.
  """
  t = _check_dynamics(t, method, learning_rate, damping)
  G = _check_gram("G", G)
  r0 = _check_vector("r0", r0, G.shape[0], "the size of G")
  e, _, v, coeffs = _spectral(G, r0, t, method, learning_rate, damping)
  return (e * coeffs) @ v.T


@precision.curvature
def weights(
    jac_or_model: Array | ApplyOrModel,
    G: Array | None,
    r0: Array,
    t: Array,
    method: str = "gd",
    *,
    learning_rate: float | None = None,
    damping: float = 0.0,
    params: Params | None = None,
    x: Array | None = None,
) -> Array:
  """Weight displacements ``w(t) - w(0)`` of GD or NGD on the linearised model.

  docs/math.md (linearised dynamics) with ``r0 = u(0) - y``:
  ``w(t) - w(0) = -J^T a(t)``,

      GD  flow:  a(t) = G^{-1} (I - exp(-G t)) r0
      NGD flow:  a(t) = (1 - exp(-t)) G^{-1} r0     (lam = 0)

  and in general ``a = V diag((1 - e_i) / s_i) V^T r0`` with the decays of the
  module docstring (discrete steps and damping included).

  Args:
    jac_or_model: the Jacobian ``J`` at ``w(0)``, ``(N, p)``; or (matrix-free)
      a ``Model`` / ``apply`` function, with ``params`` and ``x``: then
      ``J^T a`` is one VJP per time and ``J`` is never formed.
    G: ``(N, N)`` Gram ``J J^T``, or ``None`` to compute it (``J J^T``, or
      ``ngdjax.gram(model, params, x)``).
    r0: ``vec(u(0) - y)``, ``(N,)`` or ``(n, c)``.
    t: times (or step counts), as in ``residuals``.
    method: ``"gd"`` or ``"ngd"``.
    learning_rate: ``None`` (flow) or the step size.
    damping: NGD damping ``lam >= 0``.
    params: the linearisation point ``w(0)`` (matrix-free form only).
    x: ``(n, d)`` training inputs (matrix-free form only).

  Returns:
    ``(T, p)`` array of ``w(t) - w(0)``, flattened in ``ravel_pytree(params)``
    order (``jax.vmap(unravel)`` turns rows back into pytrees).

  Raises:
    ValueError: as ``residuals``, and when ``J``/``x`` and ``G`` disagree.
  """
  t = _check_dynamics(t, method, learning_rate, damping)
  j, model = _split_jacobian_or_model(jac_or_model, params, x)
  G = _gram_for(j, model, params, x, G)
  r0 = _check_vector("r0", r0, G.shape[0], "the number of output rows")
  a = _dual_coefficients(G, r0, t, method, learning_rate, damping)
  if j is not None:
    return -a @ j
  # One VJP per time; vmap shares the forward pass (params, x are unbatched).
  jt = jax.vmap(lambda ai: ravel_pytree(vjp(model, params, x, ai))[0])
  return -jt(a)


@precision.curvature
def predict(
    G_test_train: Array,
    G: Array,
    r0: Array,
    u0_test: Array,
    t: Array,
    method: str = "gd",
    *,
    learning_rate: float | None = None,
    damping: float = 0.0,
) -> Array:
  """Test outputs ``u_test(t)`` of GD or NGD on the linearised model.

  ``u_test(t) = u_test(0) + J_test (w(t) - w(0)) = u_test(0) - K a(t)`` with
  the cross-Gram ``K = J_test J^T`` (docs/math.md: predictions follow
  through ``G_test,train G^{-1}``); e.g. for the GD flow
  ``u_test(t) = u_test(0) - K G^{-1} (I - exp(-G t)) r0``.

  Args:
    G_test_train: ``(N_test, N)`` cross-Gram, e.g.
      ``ngdjax.gram(model, params0, x_test, x2=x_train)``.
    G: ``(N, N)`` training Gram.
    r0: ``vec(u(0) - y)`` on the training set, ``(N,)`` or ``(n, c)``.
    u0_test: test outputs at ``w(0)``, ``(N_test,)`` or ``(n_test, c)``.
    t: times (or step counts), as in ``residuals``.
    method: ``"gd"`` or ``"ngd"``.
    learning_rate: ``None`` (flow) or the step size.
    damping: NGD damping ``lam >= 0``.

  Returns:
    ``(T, N_test)`` array of test outputs (flattened row-major).

  Raises:
    ValueError: as ``residuals``, and on mismatched shapes.
  """
  t = _check_dynamics(t, method, learning_rate, damping)
  G = _check_gram("G", G)
  k = checks.check_array("G_test_train", G_test_train, ndim=2)
  if k.shape[1] != G.shape[0]:
    raise ValueError(
        f"G_test_train has {k.shape[1]} columns but G is {G.shape[0]} x "
        f"{G.shape[0]}; pass J_test J_train^T"
    )
  r0 = _check_vector("r0", r0, G.shape[0], "the size of G")
  u0_test = _check_vector(
      "u0_test", u0_test, k.shape[0], "the number of rows of G_test_train"
  )
  a = _dual_coefficients(G, r0, t, method, learning_rate, damping)
  return u0_test[None, :] - a @ jnp.asarray(k).T


# --------------------------------------------------------------------------
# The common limit.
# --------------------------------------------------------------------------


class MinNormSolution(NamedTuple):
  """The end point shared by the GD and NGD weight paths.

  Attributes:
    delta: ``(p,)`` ``w(inf) - w(0) = J^T G^{-1} (y - u(0))``, flattened in
      ``ravel_pytree`` order.
    norm: scalar ``||delta|| = sqrt(r0^T G^{-1} r0)``.
  """

  delta: Array
  norm: Array


def _cholesky_solve(chol, g, b):
  del g
  return jax.scipy.linalg.cho_solve((chol, True), b)


def _pinv_solve(chol, g, b):
  del chol
  s, v, live = _eigh(g)
  return v @ jnp.where(live, (v.T @ b) / jnp.where(live, s, 1.0), 0.0)


@jax.jit
def _solve_psd(g: Array, b: Array) -> Array:
  """``G^{-1} b`` by Cholesky; the pseudo-inverse when ``G`` is singular."""
  g = linalg.symmetrize(g)
  chol = jnp.linalg.cholesky(g)
  pivots = jnp.diagonal(chol) ** 2
  scale = jnp.max(jnp.diagonal(g))
  # A singular Gram (N > p) either fails (NaN) or, often, "succeeds" with
  # round-off pivots (seen up to ~1e-11 relative in float64) and a garbage
  # solution. Pivots above sqrt(eps) relative are far from that; anything
  # else (singular or very ill-conditioned) goes to the eigendecomposition.
  ok = jnp.all(jnp.isfinite(chol)) & jnp.all(
      pivots > jnp.sqrt(jnp.finfo(g.dtype).eps) * scale
  )
  return jax.lax.cond(ok, _cholesky_solve, _pinv_solve, chol, g, b)


@precision.curvature
def min_norm_solution(
    jac_or_model: Array | ApplyOrModel,
    G: Array | None,
    r0: Array,
    *,
    params: Params | None = None,
    x: Array | None = None,
) -> MinNormSolution:
  """The minimum-norm least-squares step ``J^T G^{-1} (y - u(0))``.

  docs/math.md (linearised dynamics): ``w(inf) - w(0)`` for GD and NGD
  (flow or convergent steps, any damping) on the linearised model, i.e.
  ``-pinv(J) r0``, with norm
  ``sqrt(r0^T G^{-1} r0)`` (since ``||J^T a||^2 = a^T G a``). Solved by one
  Cholesky factorisation of ``G``; a singular ``G`` falls back to its
  pseudo-inverse (one eigendecomposition).

  Args:
    jac_or_model: ``J`` ``(N, p)``, or a ``Model`` / ``apply`` with ``params``
      and ``x`` (matrix-free: one VJP).
    G: ``(N, N)`` Gram, or ``None`` to compute it from ``J`` or the model.
    r0: ``vec(u(0) - y)``, ``(N,)`` or ``(n, c)``.
    params: the linearisation point (model form only).
    x: ``(n, d)`` training inputs (model form only).

  Returns:
    ``MinNormSolution(delta (p,), norm)``.

  Raises:
    ValueError: on a non-symmetric, non-PSD or non-finite ``G`` or
      mismatched shapes.
  """
  j, model = _split_jacobian_or_model(jac_or_model, params, x)
  G = _gram_for(j, model, params, x, G)
  r0 = _check_vector("r0", r0, G.shape[0], "the number of output rows")
  a = _solve_psd(G, r0.astype(G.dtype))
  if j is not None:
    delta = -(a @ j)
  else:
    delta = -ravel_pytree(vjp(model, params, x, a))[0]
  norm = jnp.sqrt(jnp.maximum(jnp.dot(r0, a), 0.0))
  return MinNormSolution(delta=delta, norm=norm)

"""The paper's conditions and measures, computed on a network during training.

Each function measures one quantity of docs/math.md, tested on its own
against a dense ``numpy`` reference:

* ``gram_lambda_min``: ``lambda_min(G)`` with ``G = J J^T`` (Condition 1;
  Lemma 6 compares ``lambda_min(G(0))`` with ``(3/4) lambda_0``).
* ``jacobian_change_norm``: ``||J(theta) - J(theta_0)||_2`` (Condition 2,
  Lemma 7), densely for small problems, else by matrix-free block power
  iteration on ``(J - J_0)(J - J_0)^T`` built from JVPs and VJPs.
* ``distance_from_init`` and ``distance_bound``: ``||theta - theta_0||``
  against ``R = 3 ||y - u(0)|| / sqrt(lambda_0)`` (docs/math.md).
* ``activation_flips``: the fraction of the two-layer net's activation
  pattern ``S_ir = 1{w_r^T x_i > 0}`` that changed since initialisation.
* ``generalization_measure``: ``sqrt(2 y^T G_inf^{-1} y / n)`` (Theorem 6).
* ``fit_power_law``: least squares in log-log coordinates with the standard
  error of the exponent.
* ``contraction_ratios``: ``||r(k+1)||^2 / ||r(k)||^2`` per step (Theorem 1
  bounds it by ``1 - eta``).

Example:

  >>> import jax, numpy as np, ngdjax
  >>> fit = ngdjax.diagnostics.fit_power_law([1, 10, 100], [2.0, 0.2, 0.02])
  >>> round(fit.exponent, 6), round(fit.prefactor, 6)
  (-1.0, 2.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ngdjax._src import checks, precision
from ngdjax._src.jacobian import gram, jacobian, jvp, split_model, vjp
from ngdjax._src.kernels import relu_gram_inf
from ngdjax._src.linalg import lambda_min
from ngdjax._src.typing import Array, Params

# jacobian_change_norm(method="auto") materialises both Jacobians below this
# many entries (N * p); above it, the power iteration never holds J.
DENSE_JACOBIAN_ENTRIES = 1 << 22


# --------------------------------------------------------------------------
# Condition 1: the smallest eigenvalue of the Gram matrix.
# --------------------------------------------------------------------------


@precision.curvature
def gram_lambda_min(model, params: Params, x: Array, *, method: str = "auto",
                    chunk_size: int | None = None) -> Array:
  """``lambda_min(G)`` of the empirical Gram ``G = J J^T`` (Condition 1).

  Args:
    model: a ``Model`` or ``apply(params, x)``.
    params: parameters at which ``G`` is taken.
    x: ``(n, d)`` inputs.
    method: ``ngdjax.gram`` method.
    chunk_size: passed to ``ngdjax.gram``.

  Returns:
    Scalar, the smallest eigenvalue of the ``(n c, n c)`` Gram.
  """
  return lambda_min(gram(model, params, x, method=method,
                         chunk_size=chunk_size))


def relative_error(a: Array, reference: Array, *,
                   norm: str = "fro") -> Array:
  """``||a - ref|| / ||ref||`` in the Frobenius (``"fro"``) or max-abs
  (``"max"``) norm; e.g. ``G(0)`` against ``G_inf`` (C5)."""
  checks.check_array("a", a)
  checks.check_array("reference", reference)
  if a.shape != reference.shape:
    raise ValueError(
        f"a has shape {tuple(a.shape)} but reference has "
        f"{tuple(reference.shape)}"
    )
  diff = a - reference
  if norm == "fro":
    return jnp.linalg.norm(diff) / jnp.linalg.norm(reference)
  if norm == "max":
    return jnp.max(jnp.abs(diff)) / jnp.max(jnp.abs(reference))
  raise ValueError(f'norm must be "fro" or "max", got {norm!r}')


# --------------------------------------------------------------------------
# Condition 2: Jacobian stability ||J(theta) - J(theta_0)||_2.
# --------------------------------------------------------------------------


class SpectralNormEstimate(NamedTuple):
  """A spectral norm and how it was obtained.

  Attributes:
    norm: the estimate of ``||A||_2`` (a lower bound that converges to it
      for the power method; exact up to round-off for the dense path).
    iterations: block power iterations run (0 for the dense path).
    converged: whether the relative change of the estimate fell below the
      tolerance (always ``True`` for the dense path).
    method: ``"dense"`` or ``"power"``.
  """

  norm: float
  iterations: int
  converged: bool
  method: str


def _check_same_structure(params, params0):
  flat, _ = ravel_pytree(params)
  flat0, _ = ravel_pytree(params0)
  if flat.shape != flat0.shape:
    raise ValueError(
        f"params has {flat.size} entries but params0 has {flat0.size}; "
        "pass the same network at two parameter values"
    )


@functools.partial(jax.jit, static_argnums=0)
def _difference_gram_block(apply, theta, theta0, x, block):
  """``A A^T block`` for ``A = J(theta) - J(theta0)``, block ``(N, b)``."""

  def one(v):
    g = jax.tree_util.tree_map(jnp.subtract, vjp(apply, theta, x, v),
                               vjp(apply, theta0, x, v))
    return jvp(apply, theta, x, g) - jvp(apply, theta0, x, g)

  return jax.vmap(one, in_axes=1, out_axes=1)(block)


@precision.curvature
def jacobian_change_norm(
    model,
    params: Params,
    params0: Params,
    x: Array,
    *,
    method: str = "auto",
    block_size: int = 4,
    max_iters: int = 200,
    tol: float = 1e-7,
    seed: int = 0,
) -> SpectralNormEstimate:
  """``||J(theta) - J(theta_0)||_2``, the quantity of Condition 2 / Lemma 7.

  ``"dense"`` forms both ``(N, p)`` Jacobians and takes the largest
  singular value of their difference. ``"power"`` never forms ``J``: with
  ``A = J(theta) - J(theta_0)``,

      A t   = jvp(theta, t) - jvp(theta_0, t)
      A^T v = vjp(theta, v) - vjp(theta_0, v)

  and block power (subspace) iteration with Rayleigh-Ritz runs on the
  ``(N, N)`` operator ``A A^T`` in output space (``N = n c`` is smaller than
  ``p`` for an over-parameterised net). Its top Ritz value converges to
  ``||A||_2^2`` from below. ``"structured"`` (a ``Model`` with
  ``layer_factors`` whose layer inputs are the same at both parameters, as
  in ``two_layer_relu``: ``J_l = A_l (x) B_l`` and ``A_l`` fixed) forms
  ``A A^T = sum_l (A_l A_l^T) * (dB_l dB_l^T)``, ``dB_l = B_l - B_l(0)``,
  exactly in ``N^2 p`` flops without cancellation, and takes its top
  eigenvalue (the cheap exact choice for a wide two-layer net). ``"auto"``
  is dense when ``N p`` is below ``DENSE_JACOBIAN_ENTRIES``.

  Args:
    model: a ``Model`` or ``apply(params, x)``.
    params: current parameters ``theta``.
    params0: initial parameters ``theta_0`` (same structure).
    x: ``(n, d)`` inputs.
    method: ``"auto"``, ``"dense"``, ``"power"`` or ``"structured"``.
    block_size: vectors iterated together (a block converges faster than a
      single vector when the top singular values are close).
    max_iters: iteration cap of the power method.
    tol: relative change of the estimate at which the power method stops.
    seed: seed of the random start block.

  Returns:
    A ``SpectralNormEstimate``.
  """
  apply, _ = split_model(model)
  checks.check_inputs("x", x)
  _check_same_structure(params, params0)
  checks.check_scalar("block_size", block_size, positive=True, integer=True)
  checks.check_scalar("max_iters", max_iters, positive=True, integer=True)
  checks.check_scalar("tol", tol, positive=True)
  p = ravel_pytree(params)[0].size
  big_n = math.prod(jax.eval_shape(apply, params, x).shape)  # N = n c
  if method == "auto":
    method = "dense" if big_n * p <= DENSE_JACOBIAN_ENTRIES else "power"
  if method == "dense":
    diff = jacobian(model, params, x) - jacobian(model, params0, x)
    # ||A||_2^2 is the top eigenvalue of the smaller of A A^T and A^T A
    # (``norm(A, 2)`` would run a full SVD, whose p x p factor does not fit
    # for a wide net).
    small = diff @ diff.T if diff.shape[0] <= diff.shape[1] else diff.T @ diff
    top = float(jnp.linalg.eigvalsh(small)[-1])
    return SpectralNormEstimate(math.sqrt(max(top, 0.0)), 0, True, "dense")
  if method == "structured":
    return _jacobian_change_structured(model, params, params0, x)
  if method != "power":
    raise ValueError(f'method must be "auto", "dense", "power" or '
                     f'"structured", got {method!r}')

  b = min(int(block_size), big_n)
  dtype = ravel_pytree(params)[0].dtype
  # Any start block works; the classic threefry stream compiles ~7x faster
  # on CPU than the partitionable one (see ngdjax.experiment.runner).
  with jax.threefry_partitionable(False):
    block = jax.random.normal(jax.random.key(seed), (big_n, b), dtype)
  block, _ = jnp.linalg.qr(block)
  estimate, converged, it = 0.0, False, 0
  for it in range(1, int(max_iters) + 1):  # noqa: B007 - used after loop
    product = _difference_gram_block(apply, params, params0, x, block)
    # Rayleigh-Ritz on span(block): the top eigenvalue of block^T A A^T block.
    ritz = float(jnp.linalg.eigvalsh(block.T @ product)[-1])
    new = math.sqrt(max(ritz, 0.0))
    if new == 0.0 or abs(new - estimate) <= tol * new:
      converged = True
      estimate = new
      break
    estimate = new
    block, _ = jnp.linalg.qr(product)
  return SpectralNormEstimate(estimate, it, converged, "power")


def _jacobian_change_structured(model, params, params0,
                                x) -> SpectralNormEstimate:
  if getattr(model, "layer_factors", None) is None:
    raise ValueError('method="structured" needs a Model with layer_factors')
  factors = model.layer_factors(params, x)
  factors0 = model.layer_factors(params0, x)
  for f, f0 in zip(factors, factors0, strict=True):
    if not bool(jnp.array_equal(f.inputs, f0.inputs)):
      raise ValueError('method="structured" needs layer inputs that do not '
                       "change with the parameters (two_layer_relu); use "
                       '"power"')
  top = _difference_gram_top(
      tuple(f.inputs for f in factors),
      tuple(f.output_grads - f0.output_grads
            for f, f0 in zip(factors, factors0, strict=True)))
  return SpectralNormEstimate(math.sqrt(max(float(top), 0.0)), 0, True,
                              "structured")


@jax.jit
def _difference_gram_top(inputs, grad_changes) -> Array:
  total = 0.0
  for a, db in zip(inputs, grad_changes, strict=True):
    n, c = db.shape[:2]
    input_gram = a @ a.T
    grad_gram = db.reshape(n * c, -1) @ db.reshape(n * c, -1).T
    if c == 1:
      total = total + input_gram * grad_gram
    else:
      total = total + (grad_gram.reshape(n, c, n, c)
                       * input_gram[:, None, :, None]).reshape(n * c, n * c)
  return jnp.linalg.eigvalsh(total)[-1]


# --------------------------------------------------------------------------
# Distance from initialisation and the radius R of Condition 2.
# --------------------------------------------------------------------------


def distance_from_init(params: Params, params0: Params) -> Array:
  """``||theta - theta_0||_2`` over all trainable parameters (flattened)."""
  _check_same_structure(params, params0)
  return jnp.linalg.norm(ravel_pytree(params)[0] - ravel_pytree(params0)[0])


def distance_bound(y: Array, u0: Array, lambda_0: float) -> Array:
  """``R = 3 ||y - u(0)|| / sqrt(lambda_0)`` (Condition 2, docs/math.md).

  Theorem 1's proof keeps ``||theta(k) - theta(0)|| <= R`` along NGD.

  Args:
    y: targets, ``(n,)`` or ``(n, c)``.
    u0: outputs at initialisation, same number of entries as ``y``.
    lambda_0: ``lambda_min(G_inf)`` (or of ``G(0)``), positive.
  """
  checks.check_array("y", y, ndim=(1, 2))
  checks.check_array("u0", u0, ndim=(1, 2))
  checks.check_scalar("lambda_0", lambda_0, positive=True)
  if y.size != u0.size:
    raise ValueError(
        f"y has {y.size} entries but u0 has {u0.size}; pass outputs on the "
        "same examples"
    )
  r = jnp.reshape(y, -1) - jnp.reshape(u0, -1).astype(jnp.result_type(y))
  return 3.0 * jnp.linalg.norm(r) / jnp.sqrt(lambda_0)


# --------------------------------------------------------------------------
# Activation-pattern flips of the two-layer net.
# --------------------------------------------------------------------------


def _first_layer(w, name):
  if isinstance(w, dict):
    if "W" not in w:
      raise ValueError(f'{name} must be a (m, d) array or params {{"W": ...}}')
    w = w["W"]
  return checks.check_array(name, w, ndim=2)


def activation_pattern(w, x: Array) -> Array:
  """``S_ir = 1{w_r^T x_i > 0}``, ``(n, m)`` bool (docs/math.md).

  Strict ``>`` like ``two_layer_relu``'s autodiff convention (the paper's
  ``>=`` differs on a set of measure zero).

  Args:
    w: ``(m, d)`` first-layer weights, or two-layer params ``{"W": w}``.
    x: ``(n, d)`` inputs.
  """
  w = _first_layer(w, "w")
  checks.check_inputs("x", x, in_dim=w.shape[1])
  return x @ w.T > 0


def activation_flips(w, w0, x: Array) -> Array:
  """Fraction of entries of ``S`` (``(n, m)``) that differ from ``S(0)``.

  The proof of Theorem 3 needs few flips: a neuron whose pattern on ``x_i``
  changes moves the Jacobian row ``J_i``.

  Args:
    w: ``(m, d)`` current weights (or params ``{"W": w}``).
    w0: ``(m, d)`` initial weights (or params).
    x: ``(n, d)`` inputs.

  Returns:
    Scalar in ``[0, 1]``: ``mean_{i, r} 1{S_ir != S_ir(0)}``.
  """
  w = _first_layer(w, "w")
  w0 = _first_layer(w0, "w0")
  if w.shape != w0.shape:
    raise ValueError(f"w has shape {tuple(w.shape)} but w0 has "
                     f"{tuple(w0.shape)}")
  changed = activation_pattern(w, x) != activation_pattern(w0, x)
  return jnp.mean(changed.astype(jnp.result_type(float)))


# --------------------------------------------------------------------------
# Generalization measure (Theorem 6).
# --------------------------------------------------------------------------


@precision.curvature
def generalization_measure(x: Array, y: Array, *,
                           g_inf: Array | None = None) -> Array:
  """``sqrt(2 y^T G_inf^{-1} y / n)``, the data-dependent term of Theorem 6.

  For ``c`` outputs (``y`` of shape ``(n, c)``, ``G_inf`` of the scalar
  network, ``(n, n)``) the quadratic form is summed over outputs,
  ``trace(Y^T G_inf^{-1} Y)``, which is ``vec(Y)^T (G_inf (x) I_c)^{-1}
  vec(Y)`` for the ``c``-output net's Gram.

  Args:
    x: ``(n, d)`` unit-norm inputs (the theorem's setting).
    y: ``(n,)`` or ``(n, c)`` targets.
    g_inf: ``(n, n)`` precomputed ``relu_gram_inf(x)``; computed if omitted.

  Returns:
    Scalar.

  Raises:
    ValueError: on bad shapes, non-unit rows, or a numerically singular
      ``G_inf`` (two parallel rows).
  """
  checks.check_inputs("x", x)
  checks.check_unit_rows("x", x)
  checks.check_targets("y", y, x.shape[0])
  n = x.shape[0]
  if g_inf is None:
    g_inf = _relu_gram_inf(x)  # x was validated above
  else:
    checks.check_square("g_inf", g_inf)
    if g_inf.shape[0] != n:
      raise ValueError(f"g_inf is {g_inf.shape[0]} x {g_inf.shape[0]} but "
                       f"x has {n} rows")
  quad = _quadratic_form(g_inf, jnp.reshape(y, (n, -1)))
  if checks.is_concrete(quad) and not bool(jnp.isfinite(quad)):
    raise ValueError(
        "g_inf is numerically singular (Cholesky failed; smallest eigenvalue "
        f"{float(lambda_min(g_inf)):.3g}); are two rows of x parallel?"
    )
  return jnp.sqrt(2.0 * quad / n)


# --------------------------------------------------------------------------
# Power laws and per-step contraction.
# --------------------------------------------------------------------------


# Jitted: one compilation per shape instead of one per eager operation.
_relu_gram_inf = jax.jit(relu_gram_inf)


@jax.jit
def _quadratic_form(g: Array, y: Array) -> Array:
  """``trace(y^T g^{-1} y)`` by Cholesky; NaN when ``g`` is not PD."""
  factor = jax.scipy.linalg.cho_factor(g, lower=True)
  y = y.astype(g.dtype)
  return jnp.sum(y * jax.scipy.linalg.cho_solve(factor, y))


class PowerLawFit(NamedTuple):
  """``y ~ prefactor * x^exponent``, fitted by least squares on logs.

  Attributes:
    exponent: slope of ``log y`` on ``log x``.
    exponent_stderr: its standard error, ``sqrt(s^2 / S_xx)`` with
      ``s^2 = RSS / (k - 2)`` and ``S_xx = sum (log x - mean log x)^2``
      (the usual OLS slope error; assumes independent log-normal noise).
    prefactor: ``exp(intercept)``.
    r_squared: fraction of the variance of ``log y`` explained.
    num_points: ``k``.
  """

  exponent: float
  exponent_stderr: float
  prefactor: float
  r_squared: float
  num_points: int

  def predict(self, x) -> np.ndarray:
    return self.prefactor * np.asarray(x, float) ** self.exponent

  def interval(self, z: float = 2.0) -> tuple[float, float]:
    """``exponent -+ z * stderr``."""
    return (self.exponent - z * self.exponent_stderr,
            self.exponent + z * self.exponent_stderr)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit:
  """Fits ``y = C x^a`` by ordinary least squares in log-log coordinates.

  Repeated ``x`` values (several seeds per width) are fine: every point
  enters the fit, so the standard error reflects the scatter across seeds.

  Args:
    x: positive abscissae, at least two distinct values.
    y: positive ordinates, same length, at least 3 points (the standard
      error needs a residual degree of freedom).

  Returns:
    A ``PowerLawFit``.
  """
  xa = np.asarray(x, dtype=np.float64).reshape(-1)
  ya = np.asarray(y, dtype=np.float64).reshape(-1)
  if xa.shape != ya.shape:
    raise ValueError(f"x has {xa.size} points but y has {ya.size}")
  if xa.size < 3:
    raise ValueError(f"x needs at least 3 points for a standard error, "
                     f"got {xa.size}")
  for name, v in (("x", xa), ("y", ya)):
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
      raise ValueError(f"{name} must be finite and positive for a log-log "
                       "fit")
  lx, ly = np.log(xa), np.log(ya)
  sxx = float(np.sum((lx - lx.mean()) ** 2))
  if sxx == 0.0:
    raise ValueError("x needs at least two distinct values")
  slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
  intercept = float(ly.mean() - slope * lx.mean())
  resid = ly - (intercept + slope * lx)
  rss = float(np.sum(resid**2))
  tss = float(np.sum((ly - ly.mean()) ** 2))
  stderr = math.sqrt(rss / (xa.size - 2) / sxx)
  r2 = 1.0 - rss / tss if tss > 0 else 1.0
  return PowerLawFit(slope, stderr, math.exp(intercept), r2, int(xa.size))


def contraction_ratios(residual_norms: Sequence[float]) -> np.ndarray:
  """``||r(k+1)||^2 / ||r(k)||^2`` for consecutive steps.

  Theorem 1 bounds each ratio by ``1 - eta`` (Theorem 2 by
  ``1 - 2 eta mu L / (mu + L)``). A step from a zero residual has ratio 0
  if it stays at zero and ``inf`` otherwise (never a silent NaN).

  Args:
    residual_norms: ``(K,)`` norms ``||y - u(k)||`` (not squared),
      non-negative and finite; ``K >= 2``.

  Returns:
    ``(K - 1,)`` float64 array.
  """
  r = np.asarray(residual_norms, dtype=np.float64).reshape(-1)
  if r.size < 2:
    raise ValueError("residual_norms needs at least 2 steps, got "
                     f"{r.size}")
  if not np.all(np.isfinite(r)) or np.any(r < 0):
    raise ValueError("residual_norms must be finite and non-negative")
  num, den = r[1:] ** 2, r[:-1] ** 2
  out = np.where(num == 0, 0.0, np.inf)
  np.divide(num, den, out=out, where=den > 0)
  return out

"""Infinite-width Gram matrices (neural tangent kernels) and ``lambda_0``.

All kernels are expectations over the random initialisation, in the closed
forms of the arc-cosine kernels (Cho & Saul 2009): for pre-activations
``(u, v)`` jointly Gaussian with variances ``q1, q2`` and correlation
``cos(theta)``,

    E[1{u > 0} 1{v > 0}] = (pi - theta) / (2 pi)
    E[relu(u) relu(v)]   = sqrt(q1 q2) (sin(theta) + (pi - theta) cos(theta))
                           / (2 pi)

Angles are never taken as ``arccos`` of a computed cosine: round-off puts
the cosine of two equal rows at ``1 - 1e-16``, whose ``arccos`` is
``1.5e-8``, which costs half the digits of every kernel that is linear in
the angle (``G_inf``'s diagonal came out ``0.4999999966``). The first
layer's angle is ``theta = 2 atan2(||a - b||, ||a + b||)`` of the normalised
rows ``a, b`` (accurate to round-off at every angle, 0 on the diagonal), and
the deep kernel's recursion carries ``1 - cos(theta)`` forward in a form
without cancellation (``_next_angles``), so every kernel is accurate to
round-off in absolute terms, on the diagonal and for near-parallel pairs.

Example:

  >>> import jax, ngdjax
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(0), (6, 3)))
  >>> ngdjax.relu_gram_inf(x).shape
  (6, 6)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ngdjax._src import checks, precision
from ngdjax._src.linalg import lambda_min
from ngdjax._src.typing import Array

# Elements of the (batch, n2, d) differences formed per chunk of rows.
_CHUNK_ELEMENTS = 1 << 22


@jax.jit
def _row_angles(x: Array, x2: Array) -> Array:
  """``(n, n2)`` angles between the rows of ``x`` and ``x2`` (no zero rows).

  ``theta = 2 atan2(||a - b||, ||a + b||)`` for the normalised rows ``a, b``:
  both norms are sums of squares without cancellation, so the angle is
  accurate to round-off near 0 and near pi (``arccos`` of the inner product
  is not: its error is ``eps / sin(theta)``). Costs ``n n2 d``, formed in
  chunks of rows. Jitted: the chunked map compiles once per shape, not
  once per eager call.
  """
  a = x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True))
  b = x2 / jnp.sqrt(jnp.sum(x2 * x2, -1, keepdims=True))

  def row(ai):
    diff = ai - b
    add = ai + b
    return 2.0 * jnp.arctan2(jnp.sqrt(jnp.sum(diff * diff, -1)),
                             jnp.sqrt(jnp.sum(add * add, -1)))

  batch = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0] * b.shape[1]))
  return jax.lax.map(row, a, batch_size=min(batch, a.shape[0]))


def _sin_minus_theta_cos(theta: Array) -> Array:
  """``sin(theta) - theta cos(theta)``, by its series below 1/2.

  The two terms cancel to ``theta^3 / 3`` near 0; the series
  ``sum_k (-1)^(k+1) 2k theta^(2k+1) / (2k+1)!`` (to ``k = 8``: error below
  ``1e-18`` relative at 1/2) has no cancellation.
  """
  small = jnp.minimum(theta, 0.5)
  t2 = small * small
  series = jnp.zeros_like(small)
  term = small  # theta^(2k+1) / (2k+1)! at k = 0
  for k in range(1, 9):
    term = term * t2 / ((2 * k) * (2 * k + 1))
    series = series + (-1) ** (k + 1) * 2 * k * term
  direct = jnp.sin(theta) - theta * jnp.cos(theta)
  return jnp.where(theta < 0.5, series, direct)


def _arc_cosine_1(theta: Array, cos: Array) -> Array:
  """``(sin(theta) + (pi - theta) cos(theta)) / (2 pi)``."""
  return (jnp.sin(theta) + (jnp.pi - theta) * cos) / (2 * jnp.pi)


def _next_angles(theta: Array, q: Array, w_std: float,
                 b_std: float) -> tuple[Array, Array]:
  """Angles and variances of the next layer's pre-activations.

  With ``s_i = w_std sqrt(q_i / 2)`` the next covariance is ``Sigma'_ij =
  s_i s_j f(theta) + b^2``, ``f = 2 _arc_cosine_1``, so
  ``1 - cos(theta') = (P + s_i s_j (1 - f)) / sqrt(Sigma'_ii Sigma'_jj)``
  with ``P = b^2 (s_i - s_j)^2 / (sqrt(Sigma'_ii Sigma'_jj) + s_i s_j +
  b^2)`` (Lagrange's identity for the vectors ``(s_i, b), (s_j, b)``) and
  ``1 - f = (pi (1 - cos theta) - (sin theta - theta cos theta)) / pi``:
  no term cancels, so ``theta' = 2 asin(sqrt((1 - cos theta') / 2))`` keeps
  its absolute accuracy near 0 (a ReLU layer maps every angle into ``[0,
  pi/2]``, where ``asin`` is well conditioned).
  """
  s = w_std * jnp.sqrt(q / 2.0)
  q_next = s * s + b_std**2
  ss = s[:, None] * s[None, :]
  norm = jnp.sqrt(q_next[:, None] * q_next[None, :])
  versine = 2.0 * jnp.sin(theta / 2.0) ** 2
  one_minus_f = (jnp.pi * versine - _sin_minus_theta_cos(theta)) / jnp.pi
  ds = s[:, None] - s[None, :]
  p = b_std**2 * ds * ds / (norm + ss + b_std**2)
  versine_next = (p + ss * one_minus_f) / norm
  half = jnp.clip(versine_next / 2.0, 0.0, 1.0)
  return 2.0 * jnp.arcsin(jnp.sqrt(half)), q_next


def _check_x(x, name="x"):
  x = checks.check_inputs(name, x)
  return checks.check_nonzero_rows(name, x)


@precision.curvature
def relu_gram_inf(x: Array, x2: Array | None = None) -> Array:
  """``G_inf`` of the two-layer ReLU net with only ``W`` trained (docs/math.md).

  ``G_inf[i, j] = x_i^T x_j (pi - theta_ij) / (2 pi)`` with ``theta_ij``
  the angle between ``x_i`` and ``x_j`` (``_row_angles``, accurate near 0
  and pi). This is
  ``E_w[x_i^T x_j 1{w^T x_i >= 0} 1{w^T x_j >= 0}]`` for ``w ~ N(0, nu^2 I)``,
  independent of ``nu`` and valid for rows of any non-zero norm (the paper
  takes unit rows, where the cosine is the inner product).

  Args:
    x: ``(n, d)`` inputs, no zero rows.
    x2: optional ``(n2, d)`` inputs for the cross-kernel.

  Returns:
    ``(n, n2)`` kernel matrix.
  """
  x = _check_x(x)
  x2 = x if x2 is None else checks.check_features(
      "x2", _check_x(x2, "x2"), x.shape[1], "x has")
  inner = x @ x2.T
  theta = _row_angles(x, x2)
  return inner * (jnp.pi - theta) / (2 * jnp.pi)


@precision.curvature
def relu_covariance_inf(x: Array, nu: float = 1.0) -> Array:
  """``E_w[relu(w^T x_i) relu(w^T x_j)]``, ``w ~ N(0, nu^2 I)``: ``(n, n)``."""
  x = _check_x(x)
  sq = jnp.sum(x * x, -1)
  theta = _row_angles(x, x)
  scale = nu**2 * jnp.sqrt(sq[:, None] * sq[None, :])
  return scale * _arc_cosine_1(theta, jnp.cos(theta))


@precision.curvature
def two_layer_ntk_inf(x: Array, nu: float = 1.0) -> Array:
  """NTK of the two-layer ReLU net when the output layer ``a`` is trained too.

  ``Theta = relu_gram_inf(x) + E[relu(w^T x_i) relu(w^T x_j)]``: the first
  term from ``W``, the second from ``a`` (``df / da_r = relu(w_r^T x) /
  sqrt(m)``). Unlike ``G_inf`` the second term depends on ``nu``.
  """
  checks.check_scalar("nu", nu, positive=True)
  return relu_gram_inf(x) + relu_covariance_inf(x, nu)


@precision.curvature
def relu_ntk_inf(
    x: Array, depth: int, *, w_std: float = 1.0, b_std: float = 0.0
) -> Array:
  """Infinite-width NTK of ``ngdjax.models.mlp`` with ReLU, one output.

  The arc-cosine recursion (Jacot et al. 2018; Arora et al. 2019) in the
  parameterisation of ``models.mlp``:

      Sigma_1 = w_std^2 X X^T / d + b_std^2,           Theta_1 = Sigma_1
      Sigma_{l+1} = w_std^2 E[relu(u) relu(v)] + b_std^2
      Sigma'_{l+1} = w_std^2 E[relu'(u) relu'(v)]
      Theta_{l+1} = Sigma_{l+1} + Theta_l * Sigma'_{l+1}

  with ``(u, v) ~ N(0, Sigma_l)``; the result is ``Theta_{depth + 1}``.

  Args:
    x: ``(n, d)`` inputs.
    depth: number of hidden layers.
    w_std: weight scale ``sigma_w``.
    b_std: bias scale ``sigma_b`` (0 for no bias).

  Returns:
    ``(n, n)`` kernel (``kron`` with ``I_c`` for ``c`` outputs).
  """
  x = checks.check_inputs("x", x)
  checks.check_scalar("depth", depth, nonnegative=True, integer=True)
  checks.check_scalar("w_std", w_std, positive=True)
  checks.check_scalar("b_std", b_std, nonnegative=True)
  if float(b_std) == 0.0:
    checks.check_nonzero_rows("x", x)
  w_std, b_std = float(w_std), float(b_std)
  sigma = w_std**2 * (x @ x.T) / x.shape[1] + b_std**2
  theta_ntk = sigma
  if int(depth) == 0:
    return theta_ntk
  # Sigma_1 = z z^T for the rows z_i = (w_std x_i / sqrt(d), b_std): its
  # angles are the rows' (accurate near 0 and pi), and each layer carries
  # them on without forming a cosine (_next_angles).
  z = jnp.concatenate(
      [w_std * x / jnp.sqrt(x.shape[1]),
       jnp.full((x.shape[0], 1), b_std, x.dtype)], axis=1)
  theta = _row_angles(z, z)
  q = jnp.sum(z * z, -1)
  for _ in range(int(depth)):
    root = jnp.sqrt(q[:, None] * q[None, :])
    e_act = root * _arc_cosine_1(theta, jnp.cos(theta))
    e_der = (jnp.pi - theta) / (2 * jnp.pi)
    sigma = w_std**2 * e_act + b_std**2
    theta_ntk = sigma + theta_ntk * (w_std**2 * e_der)
    theta, q = _next_angles(theta, q, w_std, b_std)
  return theta_ntk


@precision.curvature
def lambda_0(x: Array) -> Array:
  """``lambda_0 = lambda_min(G_inf)`` for the two-layer net (Condition 1)."""
  return lambda_min(relu_gram_inf(x))

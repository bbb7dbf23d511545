"""Infinite-width Gram matrices (neural tangent kernels) and ``lambda_0``.

All kernels are expectations over the random initialisation, in the closed
forms of the arc-cosine kernels (Cho & Saul 2009): for pre-activations
``(u, v)`` jointly Gaussian with variances ``q1, q2`` and correlation
``cos(theta)``,

    E[1{u > 0} 1{v > 0}] = (pi - theta) / (2 pi)
    E[relu(u) relu(v)]   = sqrt(q1 q2) (sin(theta) + (pi - theta) cos(theta))
                           / (2 pi)

Cosines are clipped into ``[-1, 1]`` before ``arccos`` (round-off can push a
computed cosine of two equal rows slightly above 1, and ``arccos`` would
return NaN).

Example:

  >>> import jax, ngdjax
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(0), (6, 3)))
  >>> ngdjax.relu_gram_inf(x).shape
  (6, 6)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ngdjax._src import checks
from ngdjax._src.linalg import lambda_min

Array = jax.Array


def _angles(gram: Array, diag1: Array, diag2: Array) -> tuple[Array, Array]:
  """``(cos, theta)`` of a covariance with diagonals ``diag1, diag2``."""
  norms = jnp.sqrt(diag1[:, None] * diag2[None, :])
  cos = jnp.clip(gram / norms, -1.0, 1.0)
  return cos, jnp.arccos(cos)


def _check_x(x, name="x"):
  x = checks.check_inputs(name, x)
  return checks.check_nonzero_rows(name, x)


def relu_gram_inf(x: Array, x2: Array | None = None) -> Array:
  """``G_inf`` of the two-layer ReLU net with only ``W`` trained (MATH.md 3).

  ``G_inf[i, j] = x_i^T x_j (pi - arccos(cos_ij)) / (2 pi)`` with
  ``cos_ij = x_i^T x_j / (||x_i|| ||x_j||)``. This is
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
  x2 = x if x2 is None else _check_x(x2, "x2")
  inner = x @ x2.T
  _, theta = _angles(inner, jnp.sum(x * x, -1), jnp.sum(x2 * x2, -1))
  return inner * (jnp.pi - theta) / (2 * jnp.pi)


def relu_covariance_inf(x: Array, nu: float = 1.0) -> Array:
  """``E_w[relu(w^T x_i) relu(w^T x_j)]``, ``w ~ N(0, nu^2 I)``: ``(n, n)``."""
  x = _check_x(x)
  inner = x @ x.T
  sq = jnp.sum(x * x, -1)
  cos, theta = _angles(inner, sq, sq)
  scale = nu**2 * jnp.sqrt(sq[:, None] * sq[None, :])
  return scale * (jnp.sin(theta) + (jnp.pi - theta) * cos) / (2 * jnp.pi)


def two_layer_ntk_inf(x: Array, nu: float = 1.0) -> Array:
  """NTK of the two-layer ReLU net when the output layer ``a`` is trained too.

  ``Theta = relu_gram_inf(x) + E[relu(w^T x_i) relu(w^T x_j)]``: the first
  term from ``W``, the second from ``a`` (``df / da_r = relu(w_r^T x) /
  sqrt(m)``). Unlike ``G_inf`` the second term depends on ``nu``.
  """
  checks.check_scalar("nu", nu, positive=True)
  return relu_gram_inf(x) + relu_covariance_inf(x, nu)


def relu_ntk_inf(
    x: Array, depth: int, w_std: float = 1.0, b_std: float = 0.0
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
  sigma = w_std**2 * (x @ x.T) / x.shape[1] + b_std**2
  if float(b_std) == 0.0:
    checks.check_nonzero_rows("x", x)
  theta_ntk = sigma
  for _ in range(int(depth)):
    diag = jnp.diag(sigma)
    cos, theta = _angles(sigma, diag, diag)
    root = jnp.sqrt(diag[:, None] * diag[None, :])
    e_act = root * (jnp.sin(theta) + (jnp.pi - theta) * cos) / (2 * jnp.pi)
    e_der = (jnp.pi - theta) / (2 * jnp.pi)
    sigma = w_std**2 * e_act + b_std**2
    theta_ntk = sigma + theta_ntk * (w_std**2 * e_der)
  return theta_ntk


def lambda_0(x: Array) -> Array:
  """``lambda_0 = lambda_min(G_inf)`` for the two-layer net (Condition 1)."""
  return lambda_min(relu_gram_inf(x))

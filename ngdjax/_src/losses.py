"""Losses in output space, in the sum convention (MATH.md 1 and Theorem 2).

A ``Loss`` bundles the value ``L(u, y) = sum_i l(u_i, y_i)``, its gradient in
``u`` and the constants of Theorem 2: every ``l(., y)`` is ``mu``-strongly
convex with an ``L``-Lipschitz gradient (``mu I <= d^2 l / du^2 <= L I``).

Example:

  >>> import jax.numpy as jnp, ngdjax
  >>> loss = ngdjax.losses.squared()
  >>> float(loss.value(jnp.array([1.0, 2.0]), jnp.zeros(2)))
  2.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngdjax._src import checks

Array = jax.Array


class Loss(NamedTuple):
  """A loss in output space.

  Attributes:
    value: ``(u, y) -> scalar``, summed over examples and outputs.
    grad: ``(u, y) -> array shaped like u``, ``d L / d u``.
    mu: strong-convexity constant in ``u``.
    L: Lipschitz constant of ``grad`` in ``u``.
    name: short name used in reports.
  """

  value: Callable[[Array, Array], Array]
  grad: Callable[[Array, Array], Array]
  mu: float
  L: float
  name: str

  @property
  def rate_factor(self) -> float:
    """``2 mu L / (mu + L)``: Theorem 2 contracts by ``1 - eta * this``."""
    return 2 * self.mu * self.L / (self.mu + self.L)


def squared() -> Loss:
  """``L = 1/2 sum ||u_i - y_i||^2``; ``grad = u - y``; ``mu = L = 1``."""
  return Loss(
      value=lambda u, y: 0.5 * jnp.sum((u - y) ** 2),
      grad=lambda u, y: u - y,
      mu=1.0,
      L=1.0,
      name="squared",
  )


def squared_log_cosh(alpha: float = 1.0) -> Loss:
  """``l(e) = e^2 / 2 + alpha log cosh(e)`` with ``e = u - y``, summed.

  Its second derivative ``1 + alpha sech^2(e)`` lies in ``[1, 1 + alpha]``,
  so it is smooth and strongly convex with ``mu = 1`` and ``L = 1 + alpha``
  but not quadratic: the loss of choice to exercise Theorem 2.
  """
  checks.check_scalar("alpha", alpha, nonnegative=True)
  alpha = float(alpha)

  def log_cosh(e):
    # log cosh(e) = |e| + log1p(exp(-2|e|)) - log 2, stable for large |e|.
    a = jnp.abs(e)
    return a + jnp.log1p(jnp.exp(-2 * a)) - jnp.log(2.0)

  return Loss(
      value=lambda u, y: jnp.sum(0.5 * (u - y) ** 2 + alpha * log_cosh(u - y)),
      grad=lambda u, y: (u - y) + alpha * jnp.tanh(u - y),
      mu=1.0,
      L=1.0 + alpha,
      name=f"squared_log_cosh(alpha={alpha:g})",
  )


LOSSES: dict[str, Callable[..., Loss]] = {
    "squared": squared,
    "squared_log_cosh": squared_log_cosh,
}


def get(loss: str | Loss) -> Loss:
  """A ``Loss`` from a name in ``LOSSES`` or a ``Loss`` (returned as is)."""
  if isinstance(loss, Loss):
    return loss
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
  return LOSSES[loss]()

"""Losses in output space, in the sum convention (docs/math.md, Theorem 2).

A ``Loss`` bundles the value ``L(u, y) = sum_i l(u_i, y_i)``, its gradient in
``u`` and the constants of Theorem 2: every ``l(., y)`` is ``mu``-strongly
convex with an ``L``-Lipschitz gradient (``mu I <= d^2 l / du^2 <= L I``).

For the Fisher (natural gradient of a likelihood, docs/math.md) a loss also
carries its per-example output metric ``H_i``: ``None`` means the identity,
which is the Hessian of the squared loss and the Gauss-Newton metric that
Theorem 2 uses for every regression loss; ``softmax_cross_entropy`` gives
``H_i = diag(p_i) - p_i p_i^T`` together with a factor ``S_i`` (``S_i S_i^T
= H_i``) and the coordinates ``h_i`` of the gradient (``S_i h_i = g_i``)
that the symmetric kernel form needs, and a sampler of the model's own
predictive distribution for the Monte Carlo Fisher.

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
from ngdjax._src.keyed import by_value
from ngdjax._src.typing import Array


class Loss(NamedTuple):
  """A loss in output space.

  Attributes:
    value: ``(u, y) -> scalar``, summed over examples and outputs.
    grad: ``(u, y) -> array shaped like u``, ``d L / d u``.
    mu: strong-convexity constant in ``u``.
    L: Lipschitz constant of ``grad`` in ``u``.
    name: short name used in reports.
    hessian: ``(u (n, c), y) -> H (n, c, c)``, the per-example output
      metric of the Fisher; ``None`` is the identity (module docstring).
    hessian_root: ``(u, y) -> (S (n, c, c), h (n, c))`` with
      ``S_i S_i^T = H_i`` and ``S_i h_i = grad_i``; ``None`` with a
      ``hessian`` means an eigendecomposition is used.
    sample: ``(key, u) -> y``: targets drawn from the model's predictive
      distribution (the Monte Carlo Fisher), shaped like ``y``.
    labels: targets may be integer class labels ``(n,)`` (one-hot encoded by
      the optimizers before the loss sees them).
  """

  value: Callable[[Array, Array], Array]
  grad: Callable[[Array, Array], Array]
  mu: float
  L: float
  name: str
  hessian: Callable[[Array, Array], Array] | None = None
  hessian_root: Callable[[Array, Array], tuple[Array, Array]] | None = None
  sample: Callable[[Array, Array], Array] | None = None
  labels: bool = False

  def output_hessian(self, u: Array, y: Array) -> Array:
    """``H`` ``(n, c, c)``: the per-example output metric (identity if None)."""
    if self.hessian is not None:
      return self.hessian(u, y)
    n, c = u.shape
    return jnp.broadcast_to(jnp.eye(c, dtype=u.dtype), (n, c, c))

  def residual(self, u: Array, y: Array) -> Array:
    """``u - y`` for regression, ``p - y`` for a classifier (``info``)."""
    return self.grad(u, y) if self.labels else u - y

  @property
  def rate_factor(self) -> float:
    """``2 mu L / (mu + L)``: Theorem 2 contracts by ``1 - eta * this``."""
    return 2 * self.mu * self.L / (self.mu + self.L)


def squared() -> Loss:
  """``L = 1/2 sum ||u_i - y_i||^2``; ``grad = u - y``; ``mu = L = 1``."""
  return Loss(
      mu=1.0,
      L=1.0,
      name="squared",
      **by_value(
          ("squared",),
          value=lambda u, y: 0.5 * jnp.sum((u - y) ** 2),
          grad=lambda u, y: u - y,
          sample=lambda key, u: u + jax.random.normal(key, u.shape, u.dtype),
      ),
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
      mu=1.0,
      L=1.0 + alpha,
      name=f"squared_log_cosh(alpha={alpha:g})",
      **by_value(
          ("squared_log_cosh", alpha),
          value=lambda u, y: jnp.sum(
              0.5 * (u - y) ** 2 + alpha * log_cosh(u - y)),
          grad=lambda u, y: (u - y) + alpha * jnp.tanh(u - y),
      ),
  )


def _as_distribution(u: Array, y: Array) -> Array:
  """One-hot rows for integer labels ``(n,)``; ``(n, c)`` targets as is."""
  y = jnp.asarray(y)
  if y.ndim == 1:
    return jax.nn.one_hot(y, u.shape[-1], dtype=u.dtype)
  return y.astype(u.dtype)


def softmax_cross_entropy() -> Loss:
  """``L = -sum_i sum_k y_ik log p_ik``, ``p_i = softmax(u_i)`` (docs/math.md).

  Targets are integer labels ``(n,)`` or rows of class probabilities
  ``(n, c)`` (one-hot or soft). With rows summing to one,
  ``grad_i = p_i - y_i`` and the output Hessian is the Fisher metric
  ``H_i = diag(p_i) - p_i p_i^T`` (PSD, ``H_i 1 = 0``); for other rows the
  gradient is the exact ``s_i p_i - y_i`` (``s_i`` the row sum). Not
  strongly convex (``mu = 0``); ``L = 1/2`` bounds ``H_i``'s spectrum.

  ``hessian_root`` returns ``S_i = diag(sqrt p_i) (I - sqrt p_i sqrt
  p_i^T)`` (``S_i S_i^T = H_i``, since the bracket is a projector) and
  ``h_i = P_i (g_i / sqrt p_i)``, which satisfies ``S_i h_i = g_i`` because
  ``g_i`` is orthogonal to ``1``. The probabilities are taken from
  ``log_softmax`` and floored at the smallest normal number of the dtype
  before the square roots and the division, so ``h`` is finite for any
  finite logits; the floor changes ``H`` by at most that number.

  Example:

    >>> import jax.numpy as jnp, ngdjax
    >>> loss = ngdjax.losses.softmax_cross_entropy()
    >>> u = jnp.zeros((2, 4))
    >>> round(float(loss.value(u, jnp.array([0, 3]))), 4)  # 2 log 4
    2.7726
    >>> loss.output_hessian(u, jnp.array([0, 3])).shape
    (2, 4, 4)
  """

  def value(u, y):
    y = _as_distribution(u, y)
    return -jnp.sum(y * jax.nn.log_softmax(u, axis=-1))

  def grad(u, y):
    y = _as_distribution(u, y)
    p = jax.nn.softmax(u, axis=-1)
    return p * jnp.sum(y, axis=-1, keepdims=True) - y

  def hessian(u, y):
    del y
    p = jax.nn.softmax(u, axis=-1)
    return jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]

  def hessian_root(u, y):
    logp = jax.nn.log_softmax(u, axis=-1)
    floor = jnp.log(jnp.finfo(u.dtype).tiny)
    logp = jnp.maximum(logp, floor)
    root = jnp.exp(0.5 * logp)  # sqrt p, (n, c)
    p = jnp.square(root)
    s_mat = jax.vmap(jnp.diag)(root) - p[:, :, None] * root[:, None, :]
    h = grad(u, y) * jnp.exp(-0.5 * logp)
    # Project out sqrt p (exactly zero in exact arithmetic).
    h = h - root * jnp.sum(root * h, axis=-1, keepdims=True)
    return s_mat, h

  def sample(key, u):
    labels = jax.random.categorical(key, u, axis=-1)
    return jax.nn.one_hot(labels, u.shape[-1], dtype=u.dtype)

  return Loss(
      mu=0.0,
      L=0.5,
      name="softmax_cross_entropy",
      labels=True,
      **by_value(
          ("softmax_cross_entropy",),
          value=value,
          grad=grad,
          hessian=hessian,
          hessian_root=hessian_root,
          sample=sample,
      ),
  )


LOSSES: dict[str, Callable[..., Loss]] = {
    "squared": squared,
    "squared_log_cosh": squared_log_cosh,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def get(loss: str | Loss) -> Loss:
  """A ``Loss`` from a name in ``LOSSES`` or a ``Loss`` (returned as is)."""
  if isinstance(loss, Loss):
    return loss
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
  return LOSSES[loss]()

"""The local quadratic model: step size and momentum from exact curvature.

Martens & Grosse (2015, sections 6-7), in the library's sum convention
(``docs/math``): with ``h(theta) = sum_i l(u_i, y_i)``, the gradient ``g =
sum_i J_i^T grad_u l_i``, the exact curvature ``C = sum_i J_i^T H_i J_i``
(the generalised Gauss-Newton matrix, the Fisher for the losses of
``ngdjax.losses``) and the damping ``lam``, the model of the loss change is

    M(delta) = g^T delta + 1/2 delta^T (C + lam I) delta.

Each step has two candidate vectors: the preconditioned direction ``Delta =
-P^{-1} g`` (K-FAC's or NGD's) and the previous update ``v``. The update
``delta = alpha Delta + mu v`` minimises ``M`` over ``(alpha, mu)``:

    [ Delta^T C~ Delta   Delta^T C~ v ] [alpha]     [ g^T Delta ]
    [ v^T C~ Delta       v^T C~ v     ] [ mu  ] = - [ g^T v     ]

with ``C~ = C + lam I``. Every entry comes from output-space products: ``a^T
C b = sum_i (J_i a)^T H_i (J_i b)`` (one JVP per vector, on the batch of the
gradient) and ``g^T a = sum_i grad_u l_i . (J_i a)`` (the chain rule), so
no parameter-space curvature is ever formed. Fallbacks:

* the 2 x 2 matrix is not positive definite (the first step, where ``v =
  0``; ``v`` parallel to ``Delta``): the 1-D minimiser ``alpha = -g^T Delta
  / Delta^T C~ Delta``, ``mu = 0``;
* ``Delta^T C~ Delta <= 0`` or not finite (a loss whose output Hessian is
  not PSD, a non-finite direction): no minimiser; the step is rejected.

With a fixed learning rate ``eta`` the coefficient ``alpha = eta`` is kept
and only ``mu`` would be chosen, which the library does not offer
(``momentum="adaptive"`` needs ``learning_rate="adaptive"``); with a fixed
momentum ``mu`` the model is minimised over ``alpha`` alone, ``alpha =
-(g^T Delta + mu Delta^T C~ v) / Delta^T C~ Delta``.

Example:

  >>> import jax.numpy as jnp
  >>> from ngdjax._src.optim import quadratic
  >>> quad = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  >>> lin = jnp.array([-2.0, -1.0])
  >>> c = quadratic.coefficients(quad, lin, lr=None, mu=None)
  >>> float(c.alpha), float(c.mu), float(c.change)
  (1.0, 1.0, -1.5)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngdjax._src import checks
from ngdjax._src.optim import damping as damping_lib
from ngdjax._src.typing import Array

ADAPTIVE = "adaptive"


class Settings(NamedTuple):
  """Resolved step-control settings of ``ngd`` and ``kfac``.

  Attributes:
    learning_rate: a number, array or schedule, or ``"adaptive"``.
    momentum: ``"adaptive"`` or a number in ``[0, 1)``.
    damping: a number, array, schedule or ``LevenbergMarquardt``
      (``"adaptive"`` resolved to ``damping.ADAPTIVE``).
    quadratic: True when the step evaluates the quadratic model (any of the
      three is adaptive): rejection of bad steps, ``rho`` against ``M``.
  """

  learning_rate: object
  momentum: object
  damping: object
  quadratic: bool


def settings(learning_rate, momentum, damping) -> Settings:
  """Validates and resolves ``learning_rate``, ``momentum`` and ``damping``.

  ``momentum=None`` is ``"adaptive"`` with an adaptive learning rate and 0
  otherwise; ``damping=None`` is ``"adaptive"`` with an adaptive learning
  rate and 0 otherwise.

  Raises:
    ValueError: a misspelt string, a momentum outside ``[0, 1)``, or
      ``momentum="adaptive"`` with a fixed learning rate (the model would
      have to choose ``mu`` for a step size it may not change).
  """
  if isinstance(learning_rate, str) and learning_rate != ADAPTIVE:
    raise ValueError(
        'learning_rate must be a positive number, a schedule or "adaptive", '
        f"got {learning_rate!r}"
    )
  adaptive_lr = learning_rate == ADAPTIVE if isinstance(
      learning_rate, str) else False
  if momentum is None:
    momentum = ADAPTIVE if adaptive_lr else 0.0
  if isinstance(momentum, str):
    if momentum != ADAPTIVE:
      raise ValueError(
          'momentum must be a number in [0, 1) or "adaptive", got '
          f"{momentum!r}"
      )
    if not adaptive_lr:
      raise ValueError(
          'momentum="adaptive" needs learning_rate="adaptive" (the '
          "quadratic model chooses both together); give a number for "
          "momentum with a fixed learning rate"
      )
  else:
    checks.check_scalar("momentum", momentum, nonnegative=True)
    if checks.is_concrete(momentum) and not float(momentum) < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
  if damping is None:
    damping = ADAPTIVE if adaptive_lr else 0.0
  if isinstance(damping, str):
    damping_lib.resolve(damping)  # ValueError naming damping if misspelt
    damping = damping_lib.ADAPTIVE
  adaptive_damping = damping is damping_lib.ADAPTIVE
  quadratic = adaptive_lr or adaptive_damping or momentum == ADAPTIVE
  return Settings(learning_rate, momentum, damping, quadratic)


MODEL_BATCHES = (1, 2)


def check_model_batches(model_batches, cfg: Settings, example_inputs):
  """Validates ``model_batches``; the inputs to shape the stored batch.

  Returns:
    ``example_inputs`` as an array when ``model_batches == 2``, else
    ``None`` (nothing is stored).

  Raises:
    ValueError: ``model_batches`` not 1 or 2; 2 with a fixed learning rate
      (the model chooses nothing then) or without ``example_inputs``.
  """
  if isinstance(model_batches, bool) or model_batches not in MODEL_BATCHES:
    raise ValueError(
        f"model_batches must be 1 (the current batch) or 2 (the current "
        f"and the previous batch), got {model_batches!r}")
  if model_batches == 1:
    return None
  if not isinstance(cfg.learning_rate, str):  # strings are "adaptive"
    raise ValueError(
        'model_batches=2 needs learning_rate="adaptive": the two-batch '
        "model chooses the step size and momentum")
  if example_inputs is None:
    raise ValueError(
        "example_inputs: model_batches=2 stores the previous batch in the "
        "state, whose shape init must know; pass a batch of inputs "
        "(n, ...) shaped like the training batches")
  return checks.check_inputs("example_inputs", example_inputs,
                             any_shape=True)


def output_inner(loss, u: Array, y: Array, a: Array, b: Array) -> Array:
  """``a^T C b = sum_i a_i^T H_i b_i`` for output tangents ``J a``, ``J b``.

  Args:
    loss: a ``Loss`` (``H_i`` its output metric; the identity when
      ``loss.hessian`` is ``None``).
    u, y: ``(n, c)`` outputs and targets.
    a, b: ``(n, c)`` output tangents.
  """
  if loss.hessian is None:
    return jnp.sum(a * b)
  h = loss.hessian(u, y).astype(a.dtype)
  return jnp.einsum("ik,ikl,il->", a, h, b)


def tree_vdot(a, b) -> Array:
  """``sum`` of the leafwise inner products of two pytrees."""
  leaves = jax.tree_util.tree_map(lambda p, q: jnp.vdot(p, q), a, b)
  return sum(jax.tree_util.tree_leaves(leaves))


def model_terms(loss, u, y, grad_u, j_delta, j_v, sq) -> tuple[Array, Array]:
  """The model's ``(quad (2, 2), lin (2,))``, ``M(c) = lin.c + c^T quad c/2``.

  Args:
    loss, u, y: as in ``output_inner``; ``grad_u`` ``(n, c)`` its gradient.
    j_delta, j_v: ``J Delta`` and ``J v``, ``(n, c)``.
    sq: ``(Delta.Delta, Delta.v, v.v)`` times ``lam`` (the damping term).
  """
  dd = output_inner(loss, u, y, j_delta, j_delta) + sq[0]
  dv = output_inner(loss, u, y, j_delta, j_v) + sq[1]
  vv = output_inner(loss, u, y, j_v, j_v) + sq[2]
  quad = jnp.stack([jnp.stack([dd, dv]), jnp.stack([dv, vv])])
  lin = jnp.stack([jnp.sum(grad_u * j_delta), jnp.sum(grad_u * j_v)])
  return quad, lin


class Coefficients(NamedTuple):
  """The step ``delta = alpha Delta + mu v`` and the model's verdict.

  Attributes:
    alpha, mu: ``()`` the coefficients (0 when ``bad_model``).
    change: ``()`` ``M(delta)``, the predicted change of the loss.
    fallback: ``()`` int32, 1 when the 2 x 2 system was not positive
      definite and the 1-D minimiser was used (momentum adaptive only).
    bad_model: ``()`` bool, ``Delta^T C~ Delta <= 0`` or a non-finite
      model: the step must be rejected.
  """

  alpha: Array
  mu: Array
  change: Array
  fallback: Array
  bad_model: Array


def coefficients(quad: Array, lin: Array, *, lr, mu) -> Coefficients:
  """``(alpha, mu)`` minimising the model (module docstring).

  Args:
    quad, lin: from ``model_terms``.
    lr: ``None`` to choose ``alpha``, else the fixed ``alpha``.
    mu: ``None`` to choose ``mu`` (needs ``lr=None``), else the fixed
      momentum.
  """
  a, b, c = quad[0, 0], quad[0, 1], quad[1, 1]
  ga, gb = lin[0], lin[1]
  finite = jnp.all(jnp.isfinite(quad)) & jnp.all(jnp.isfinite(lin))
  bad = ~(a > 0) | ~finite
  safe_a = jnp.where(bad, 1.0, a)
  fallback = jnp.zeros((), jnp.int32)
  if lr is not None:
    alpha = jnp.asarray(lr, a.dtype)
    mom = jnp.asarray(0.0 if mu is None else mu, a.dtype)
  elif mu is not None:
    mom = jnp.asarray(mu, a.dtype)
    alpha = -(ga + mom * b) / safe_a
  else:
    det = a * c - b * b
    # Positive definite with a margin for round-off in det.
    pd = (a > 0) & (c > 0) & (det > 8 * jnp.finfo(a.dtype).eps * a * c)
    safe_det = jnp.where(pd, det, 1.0)
    alpha = jnp.where(pd, (b * gb - c * ga) / safe_det, -ga / safe_a)
    mom = jnp.where(pd, (b * ga - a * gb) / safe_det, 0.0)
    fallback = (~pd).astype(jnp.int32)
  alpha = jnp.where(bad, 0.0, alpha)
  mom = jnp.where(bad, 0.0, mom)
  coef = jnp.stack([alpha, mom])
  change = coef @ lin + 0.5 * coef @ quad @ coef
  change = jnp.where(bad, 0.0, change)
  return Coefficients(alpha, mom, change, fallback, bad)

"""Damping for the curvature solves: fixed, scheduled, or Levenberg-Marquardt.

Every curvature-based optimizer (``ngd``, ``kfac``) takes ``damping`` as

* a number ``lam >= 0``: fixed;
* a callable ``count -> lam`` (an optax-style schedule of the step count);
* ``levenberg_marquardt(...)``: adapted by the reduction ratio rule below,
  every ``every`` steps (default: after every step);
* ``"adaptive"``: ``ADAPTIVE``, Martens & Grosse (2015, section 6.5)'s rule
  for the quadratic-model step (``ngdjax.optim.quadratic``): every ``T = 5``
  steps, ``lam <- omega lam`` when ``rho > 3/4`` and ``lam <- lam / omega``
  when ``rho < 1/4``, ``omega = (19/20)^T``, starting from ``lam = n`` (one
  per example of the first batch: kfac-jax's mean-convention damping 1 in
  the library's sum convention), within ``[1e-8 n, 1e8 n]``.

Reduction ratio (Levenberg-Marquardt; More 1978, Martens 2010 section 4.1).
A step ``delta`` is judged by

    rho = (L(theta + delta) - L(theta)) / (L(u + J delta) - L(u))

the actual change of the loss over the change predicted by the *linearised
network*: the loss evaluated exactly at the first-order outputs
``u + J delta``. ``J delta`` costs nothing extra for NGD (it is ``-eta G v``,
with ``G`` and ``v`` already at hand) and one JVP for K-FAC. For the squared
loss the prediction is exactly the Gauss-Newton quadratic model that the
step minimises (so ``rho = 1`` on a linear model); for a non-quadratic loss
it keeps the loss's own curvature and isolates what damping is for, the
network's nonlinearity. Then

    rho < lower  ->  lam <- lam * increase     (model too optimistic)
    rho > upper  ->  lam <- lam * decrease     (model trustworthy)

clipped to ``[min_damping, max_damping]``. With a fixed learning rate the
step is always taken (as in K-FAC and Hessian-free): only the damping of
the next step changes. With the quadratic-model step
(``learning_rate="adaptive"``) the prediction is the quadratic model
without its damping term, ``M(delta) - lam ||delta||^2 / 2`` (Martens &
Grosse 2015, section 6.5; kfac-jax's default): the damping is the trust
region's, not a prediction of the loss. A step that increases the loss is
rejected (``ngdjax.optim.quadratic``).

Degenerate predictions. When the linearised model itself predicts an
*increase* (``predicted > 0``: a step longer than the model's minimiser,
which K-FAC with a large ``eta`` can take, or NGD with ``eta > 2``), the raw
quotient would be positive and could read as a good step; ``rho`` is set to
0 instead, so the damping grows. When nothing is predicted
(``predicted == 0``: a zero gradient), ``rho = 1`` and the damping relaxes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from ngdjax._src import checks
from ngdjax._src.typing import Array


class LevenbergMarquardt(NamedTuple):
  """Settings of the adaptive damping rule (see the module docstring).

  Attributes:
    init: damping of the first step (``> 0``: the rule is multiplicative).
    decrease: factor in ``(0, 1)`` applied when ``rho > upper``.
    increase: factor ``> 1`` applied when ``rho < lower``.
    lower: reduction-ratio threshold below which damping increases.
    upper: threshold above which damping decreases (``lower < upper``).
    min_damping: floor (``>= 0``), keeps the rule from reaching 0 exactly.
    max_damping: ceiling.
    every: adapt every this many steps (at steps ``0, every, 2 every,
      ...``); the ratio is measured on those steps.
    per_example: ``init``, ``min_damping`` and ``max_damping`` are per
      example: times the batch size ``n`` (the first step's damping is ``n
      init``; sum convention), so that one setting suits every batch size.
  """

  init: float = 1.0
  decrease: float = 2.0 / 3.0
  increase: float = 1.5
  lower: float = 0.25
  upper: float = 0.75
  min_damping: float = 1e-8
  max_damping: float = 1e8
  every: int = 1
  per_example: bool = False


def levenberg_marquardt(
    init: float = 1.0,
    *,
    decrease: float = 2.0 / 3.0,
    increase: float = 1.5,
    lower: float = 0.25,
    upper: float = 0.75,
    min_damping: float = 1e-8,
    max_damping: float = 1e8,
    every: int = 1,
    per_example: bool = False,
) -> LevenbergMarquardt:
  """Validated ``LevenbergMarquardt`` settings; pass as ``damping=``.

  The defaults are Martens (2010)'s ``2/3`` and ``3/2`` with thresholds
  ``1/4`` and ``3/4``, applied after every step; ``damping="adaptive"`` is
  ``ADAPTIVE`` (the K-FAC paper's slower rule, every 5 steps).
  """
  checks.check_scalar("init", init, positive=True)
  checks.check_scalar("decrease", decrease, positive=True)
  checks.check_scalar("increase", increase, positive=True)
  checks.check_scalar("lower", lower)
  checks.check_scalar("upper", upper)
  checks.check_scalar("min_damping", min_damping, nonnegative=True)
  checks.check_scalar("max_damping", max_damping, positive=True)
  checks.check_scalar("every", every, positive=True, integer=True)
  if not isinstance(per_example, bool):
    raise ValueError(f"per_example must be a bool, got {per_example!r}")
  if not decrease < 1.0:
    raise ValueError(f"decrease must be in (0, 1), got {decrease!r}")
  if not increase > 1.0:
    raise ValueError(f"increase must be > 1, got {increase!r}")
  if not lower < upper:
    raise ValueError(
        f"lower must be below upper, got lower={lower!r}, upper={upper!r}"
    )
  if not min_damping <= init <= max_damping:
    raise ValueError(
        f"init must lie in [min_damping, max_damping] = [{min_damping!r}, "
        f"{max_damping!r}], got {init!r}"
    )
  return LevenbergMarquardt(
      float(init), float(decrease), float(increase), float(lower),
      float(upper), float(min_damping), float(max_damping), int(every),
      per_example,
  )


# Martens & Grosse (2015, section 6.5): omega = (19/20)^T every T = 5 steps.
_EVERY = 5
ADAPTIVE = LevenbergMarquardt(
    init=1.0, decrease=(19 / 20) ** _EVERY, increase=(20 / 19) ** _EVERY,
    lower=0.25, upper=0.75, min_damping=1e-8, max_damping=1e8,
    every=_EVERY, per_example=True,
)


class DampingRule(NamedTuple):
  """A resolved ``damping`` argument (internal to the optimizers).

  Attributes:
    initial: value stored in the optimizer state by ``init`` (a number, or
      an array when the damping was given as one, possibly traced).
    current: ``(state_damping (), count ()) -> damping of this step``: the
      state's value for a constant or Levenberg-Marquardt (so a constant can
      be swept by replacing it in the state), the schedule's otherwise.
    adaptive: the Levenberg-Marquardt settings, or ``None``.
    static_zero: True when the damping is the constant 0 (the solvers then
      use pseudo-inverses where a factor is known to be singular).
    schedule: the schedule ``count -> lam``, or ``None``.
  """

  initial: Any
  current: Callable[[Array, Array], Array]
  adaptive: LevenbergMarquardt | None
  static_zero: bool
  schedule: Callable[[Array], Array] | None = None


def resolve(damping, name: str = "damping") -> DampingRule:
  """Validates ``damping`` (number, array, schedule or ``LevenbergMarquardt``).

  A traced array is accepted unchecked (the optimizers flag an invalid value
  inside the step, ``ngdjax.optim.core``). ``"adaptive"`` is ``ADAPTIVE``.
  """
  if isinstance(damping, str):
    if damping != "adaptive":
      raise ValueError(
          f'{name} must be a number, a schedule, "adaptive" or '
          f"levenberg_marquardt(...), got {damping!r}"
      )
    damping = ADAPTIVE
  if isinstance(damping, LevenbergMarquardt):
    lm = levenberg_marquardt(**damping._asdict())  # hand-built tuples
    return DampingRule(lm.init, lambda lam, count: lam, lm, False)
  if callable(damping):
    try:
      first = damping(jnp.zeros((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - re-raised with the name
      raise ValueError(
          f"{name} is callable but cannot be evaluated at step 0: {e}"
      ) from e
    checks.check_scalar(f"{name}(0)", first, nonnegative=True)
    initial = float(first) if checks.is_concrete(first) else first
    return DampingRule(initial, lambda lam, count: damping(count), None,
                       False, damping)
  if getattr(damping, "shape", ()) != ():
    raise ValueError(f"{name} must be a scalar, got shape {damping.shape}")
  checks.check_scalar(name, damping, nonnegative=True)
  if not checks.is_concrete(damping):
    return DampingRule(damping, lambda lam, count: lam, None, False)
  value = float(damping)
  return DampingRule(value, lambda lam, count: lam, None, value == 0.0)


def reduction_ratio(actual: Array, predicted: Array) -> Array:
  """``rho = actual / predicted`` for loss changes (module docstring).

  Args:
    actual: ``L(theta + delta) - L(theta)``, scalar.
    predicted: ``L(u + J delta) - L(u)``, scalar (negative when the model
      predicts a decrease).

  Returns:
    ``actual / predicted`` when ``predicted < 0``; 0 when ``predicted > 0``
    (the model predicts an increase: treated as a failed step); 1 when
    ``predicted == 0``.
  """
  decrease = predicted < 0
  safe = jnp.where(decrease, predicted, -1.0)
  return jnp.where(decrease, actual / safe,
                   jnp.where(predicted > 0, 0.0, 1.0))


def lm_update(rule: LevenbergMarquardt, damping: Array, rho: Array) -> Array:
  """Next damping from the reduction ratio (module docstring)."""
  factor = jnp.where(
      rho < rule.lower, rule.increase, jnp.where(rho > rule.upper,
                                                 rule.decrease, 1.0)
  )
  # A NaN ratio (a diverged step) is treated as a failed model: more damping.
  factor = jnp.where(jnp.isnan(rho), rule.increase, factor)
  new = jnp.clip(damping * factor, rule.min_damping, rule.max_damping)
  return new.astype(damping.dtype)

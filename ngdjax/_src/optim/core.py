"""The one step that every curvature optimizer (``ngd``, ``kfac``) shares.

NGD and K-FAC differ only in how they turn a batch into a preconditioned
direction ``d`` (the update is ``-eta d``). Everything around it lives here,
once: the state, the hyper-parameters, damping (fixed, scheduled or
Levenberg-Marquardt), momentum, the quadratic-model step, the ``info`` dict
and the fault handling.

Step control. With a fixed learning rate the update is ``-eta d`` (plus
``mu v``, the previous update, with a fixed ``momentum``). With
``learning_rate="adaptive"`` (and ``momentum="adaptive"``, and/or
``damping="adaptive"``) the update ``alpha (-d) + mu v`` minimises the damped
quadratic model on the batch (``ngdjax.optim.quadratic``; Martens & Grosse
2015, sections 6-7): ``info`` reports ``learning_rate`` (``alpha``),
``momentum`` (``mu``), ``model_change`` (``M(delta)``), ``loss_after``,
``reduction_ratio``, ``step_rejected``, ``bad_model`` and
``model_fallback``. A step the model cannot vouch for (no minimiser, a loss
that goes up on the batch, a non-finite update) is rejected: the params and
``v`` stay as they were and a Levenberg-Marquardt damping is raised at once.
Per step this costs one JVP for NGD (``J d`` comes with its solve) or two
for K-FAC (``J d``, ``J v``, one linearisation) and one forward pass.

Hyper-parameters in the state (optax ``inject_hyperparams`` style). A
constant ``learning_rate`` or ``damping`` is stored in the state by ``init``
and read from it by ``step``, so one jitted step serves a sweep:

    opt = ngd(model, learning_rate=0.1)
    step = jax.jit(opt.step)                         # compiled once
    for lr in (0.05, 0.1, 0.2):
      state = opt.init(params)._replace(learning_rate=jnp.asarray(lr))
      ...

Both may also be arrays (including tracers: ``jax.vmap`` or ``jax.jit`` over
a function that builds the optimizer from its learning rate) or schedules
``count -> value``; a schedule is evaluated at the step count and the value
used is stored back in the state.

Faults inside a jitted step (docs/guide, "Bad input"):

* Params holding NaN/Inf raise ``ValueError`` before tracing when they are
  concrete; when traced, ``info["params_nonfinite"] = 1``.
* A learning rate or damping that is NaN, infinite or negative at this step
  (a schedule gone bad, a state edited by hand) is replaced by the last
  valid value, which the state holds (``state.learning_rate``,
  ``state.damping``), and flagged: ``info["learning_rate_invalid"]``,
  ``info["damping_invalid"]``. If no valid value was ever held the update
  is not applied.
* ``info["diverged"] = 1`` when the loss at the step's params or the
  update is non-finite, the loss after the step (Levenberg-Marquardt) is
  non-finite, or the loss exceeds ``DIVERGENCE_FACTOR`` times the loss of
  the first step (``state.loss_scale``). A non-finite update is never
  applied: the params are returned unchanged and
  ``info["update_skipped"] = 1``. A finite but exploding step is applied and
  flagged; the caller decides (the experiments stop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ngdjax._src import checks
from ngdjax._src import precision as precision_lib
from ngdjax._src.optim import base, quadratic, solvers
from ngdjax._src.optim import damping as damping_lib
from ngdjax._src.typing import Array, Params

DIVERGENCE_FACTOR = 1e4
step_settings = quadratic.settings  # ngd's and kfac's argument check


class CurvatureState(NamedTuple):
  """State of ``ngd`` and ``kfac``.

  Attributes:
    count: ``()`` int32, steps taken (the schedules' argument).
    damping: ``()`` float (params dtype): for a constant damping, the value
      used by every step (replace it to sweep); for Levenberg-Marquardt the
      damping of the next step; for a schedule the last valid value.
    learning_rate: ``()`` float: for a constant step size, the value used
      (replace it to sweep); for a schedule the last valid value.
    loss_scale: ``()`` float: the loss of the first step (the divergence
      reference); NaN before it.
    key: ``(2,)`` uint32 PRNG key data, split at every step (Monte Carlo
      Fisher; unused otherwise).
    curvature: the direction's own state (``()`` for NGD; K-FAC's running
      factor averages and cached eigendecompositions).
    velocity: the previous update ``v``, shaped like params (zeros before
      the first step and after a rejected one), or ``()`` without momentum.
    momentum: ``()`` float: a fixed momentum (replace it to sweep), or the
      last ``mu`` chosen by the quadratic model.
    previous: ``(x (n, ...), y (n, c))``, the previous batch, which the
      quadratic model of ``model_batches=2`` adds to the current one
      (zeros before the first step), or ``()``.
  """

  count: Array
  damping: Array
  learning_rate: Array
  loss_scale: Array
  key: Array
  curvature: Any
  velocity: Any = ()
  momentum: Any = ()
  previous: Any = ()


class Direction(NamedTuple):
  """What a curvature method returns for one batch.

  Attributes:
    u: ``(n, c)`` outputs at params.
    direction: the preconditioned gradient ``d``, shaped like params.
    output_change: ``J d`` ``(n, c)`` when the method has it at no cost
      (NGD: ``G v``), else ``None`` (one JVP is then taken for
      Levenberg-Marquardt).
    curvature: the method's next state.
    diagnostics: the solver's scalars for ``info``.
  """

  u: Array
  direction: Params
  output_change: Array | None
  curvature: Any
  diagnostics: dict


class Method(NamedTuple):
  """A curvature method: ``init`` and ``direction``.

  ``direction(params, curvature, x, y, lam, key, count) -> Direction``;
  ``y`` is ``(n, c)`` (labels already one-hot), ``lam`` the damping of the
  step, ``key`` a fresh PRNG key.
  """

  init: Callable[[Params], Any]
  direction: Callable[..., Direction]


def hyperparameter(value, name: str, *, positive: bool):
  """Validates a constant or schedule; returns ``(initial, schedule)``.

  ``schedule`` is ``None`` for a constant (the step reads the state). A
  traced value is accepted as is (it cannot be checked before tracing; the
  step flags it if it is invalid).
  """
  if callable(value):
    try:
      first = value(jnp.zeros((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - re-raised with the name
      raise ValueError(
          f"{name} is callable but cannot be evaluated at step 0: {e}"
      ) from e
    checks.check_scalar(f"{name}(0)", first, nonnegative=True)
    return first, value
  if hasattr(value, "shape") and getattr(value, "shape", ()) != ():
    raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
  checks.check_scalar(name, value, positive=positive,
                      nonnegative=not positive)
  return value, None


def check_params(params) -> None:
  """Rejects non-finite params before tracing (when they are concrete)."""
  leaves = jax.tree_util.tree_leaves(params)
  if leaves and all(checks.is_concrete(leaf) for leaf in leaves):
    for leaf in leaves:
      # checks.all_finite: no np.asarray of a global multi-process array.
      if checks.all_finite(leaf) is False:
        raise ValueError(
            "params contains NaN or Inf values (a diverged run? restart from "
            "a checkpoint or lower the learning rate)"
        )


def all_finite(tree) -> Array:
  """``()`` bool: every leaf of ``tree`` is finite."""
  leaves = jax.tree_util.tree_leaves(tree)
  out = jnp.array(True)
  for leaf in leaves:
    out = out & jnp.all(jnp.isfinite(leaf))
  return out


def valid_value(value, fallback, *, positive: bool):
  """``(value or fallback, invalid flag)`` for a learning rate or damping.

  ``value`` is used when finite and ``> 0`` (``positive``) or ``>= 0``;
  otherwise ``fallback`` (the last valid value). ``usable`` is False when
  the fallback is not valid either.
  """
  def ok(v):
    return jnp.isfinite(v) & ((v > 0) if positive else (v >= 0))

  good = ok(value)
  chosen = jnp.where(good, value, fallback)
  return chosen, ~good, ok(chosen)


def guarded_update(params, direction, lr, usable) -> tuple[Params, Array]:
  """``params - lr d`` unless that is non-finite or ``usable`` is False.

  Returns:
    ``(new_params, skipped)`` with ``skipped`` an int32 flag.
  """
  new = base.tree_axpy(-lr, direction, params)
  apply = usable & all_finite(new)
  new = jax.tree_util.tree_map(lambda a, b: jnp.where(apply, a, b), new,
                               params)
  return new, (~apply).astype(jnp.int32)


def divergence(loss0, loss_scale, finite_update) -> tuple[Array, Array]:
  """``(diverged flag, next loss_scale)`` (module docstring)."""
  scale = jnp.where(jnp.isnan(loss_scale), loss0, loss_scale)
  exploded = jnp.abs(loss0) > DIVERGENCE_FACTOR * jnp.abs(scale) + 1e-30
  diverged = ~jnp.isfinite(loss0) | ~finite_update | exploded
  return diverged.astype(jnp.int32), scale.astype(loss_scale.dtype)


def hessian_root(loss, u, y) -> tuple[Array, Array]:
  """``(S (n, c, c), h (n, c))`` with ``S S^T = H`` and ``S h = grad_u L``.

  From ``loss.hessian_root`` when the loss has one, else from each ``H_i``'s
  eigendecomposition, ``S_i = Q_i diag(sqrt e_i)`` and ``h_i = diag(e_i^{-1/2})
  Q_i^T g_i`` on the eigenvalues above ``c eps max e`` (a gradient outside
  the range of ``H`` loses that component: the Fisher cannot see it).
  """
  if loss.hessian_root is not None:
    s_mat, h = loss.hessian_root(u, y)
    return s_mat.astype(u.dtype), h.astype(u.dtype)
  e, q = jnp.linalg.eigh(loss.hessian(u, y).astype(u.dtype))
  e = jax.vmap(solvers.clamp_spectrum)(e)
  root = jnp.sqrt(e)
  inv = jnp.where(root > 0, 1.0 / jnp.where(root > 0, root, 1.0), 0.0)
  g = loss.grad(u, y).astype(u.dtype)
  h = inv * jnp.einsum("ikj,ik->ij", q, g)
  return q * root[:, None, :], h


def key_data(key) -> Array:
  """Raw ``uint32`` data of a PRNG key (typed or raw; ``None``: key 0)."""
  if key is None:
    key = jax.random.key(0)
  if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
    return jax.random.key_data(key)
  key = jnp.asarray(key)
  if key.dtype != jnp.uint32:
    raise ValueError(f"key must be a jax PRNG key, got dtype {key.dtype}")
  return key


def make(
    model_or_apply,
    apply: Callable,
    loss,
    learning_rate,
    damping,
    method: Method,
    mesh=None,
    key=None,
    jvp_fn: Callable | None = None,
    precision=None,
    momentum=0.0,
    model_batches: int = 1,
    example_inputs=None,
) -> base.Optimizer:
  """An ``Optimizer`` around a curvature ``method`` (module docstring).

  Args:
    model_or_apply: what ``check_batch`` inspects (a ``Model`` or apply).
    apply: ``apply(params, x)``.
    loss: a validated ``Loss``.
    learning_rate: number, array, schedule or ``"adaptive"``.
    damping: number, array, schedule, ``LevenbergMarquardt`` or
      ``"adaptive"``.
    method: the direction.
    mesh: optional example-axis mesh (validated by the caller).
    key: PRNG key for sampled curvature (``None``: ``jax.random.key(0)``).
    jvp_fn: ``(params, x, tangent) -> (n, c)``, the output change for
      Levenberg-Marquardt when the method does not provide it.
    precision: the matmul policy of the step (``ngdjax.precision``).
    momentum: a number in ``[0, 1)`` (heavy ball: ``delta = -eta d + mu
      v``) or ``"adaptive"`` (``ngdjax.optim.quadratic``).
    model_batches: 1 or 2: the batches the quadratic model is built on,
      the current one or the current and the previous (``_model_step``).
    example_inputs: a batch of inputs ``(n, ...)``, for the shape of the
      stored previous batch (``model_batches=2`` only).

  Returns:
    ``Optimizer(init, step)``.
  """
  cfg = quadratic.settings(learning_rate, momentum, damping)
  example_inputs = quadratic.check_model_batches(model_batches, cfg,
                                                 example_inputs)
  adaptive_lr = isinstance(cfg.learning_rate, str)
  adaptive_mu = isinstance(cfg.momentum, str)
  if adaptive_lr:
    lr0, lr_schedule = 0.0, None
  else:
    lr0, lr_schedule = hyperparameter(cfg.learning_rate, "learning_rate",
                                      positive=True)
  mu0 = 0.0 if adaptive_mu else cfg.momentum
  with_velocity = adaptive_mu or not (checks.is_concrete(mu0)
                                      and float(mu0) == 0.0)
  rule = damping_lib.resolve(cfg.damping)
  lam_schedule = None if rule.adaptive is not None else rule.schedule
  key = key_data(key)
  if jvp_fn is None:
    def jvp_fn(params, x, tangent):
      f = base.outputs_fn(apply, x)
      return jax.jvp(f, (params,), (tangent,))[1]

  def init(params) -> CurvatureState:
    dtype = base.param_dtype(params)
    velocity = (jax.tree_util.tree_map(jnp.zeros_like, params)
                if with_velocity else ())
    return CurvatureState(
        count=jnp.zeros((), jnp.int32),
        damping=jnp.asarray(rule.initial, dtype),
        learning_rate=jnp.asarray(lr0, dtype),
        loss_scale=jnp.full((), jnp.nan, dtype),
        key=key,
        curvature=method.init(params),
        velocity=velocity,
        momentum=jnp.asarray(mu0, dtype),
        previous=empty_batch(params),
    )

  def empty_batch(params):
    """Zeros shaped like a checked batch ``(x, y (n, c))``, or ``()``."""
    if example_inputs is None:
      return ()
    # The dtype the step computes in (check_batch casts half-precision x).
    x = checks.compute_dtype_inputs("example_inputs", example_inputs, params,
                                    integers=True)
    u = jax.eval_shape(base.outputs_fn(apply, x), params)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params), x.dtype)
    return (jnp.zeros_like(x), jnp.zeros(u.shape, dtype))

  def hyperparameters(state, n):
    dtype = state.damping.dtype
    lam_raw = (state.damping if lam_schedule is None
               else jnp.asarray(lam_schedule(state.count), dtype))
    if rule.adaptive is not None and rule.adaptive.per_example:
      # init is per example: the sum convention's damping scales with n.
      lam_raw = jnp.where(state.count == 0, n * lam_raw, lam_raw)
    lam, lam_bad, lam_ok = valid_value(lam_raw, state.damping,
                                       positive=False)
    lam = jnp.where(lam_ok, lam, 0.0).astype(dtype)
    if adaptive_lr:
      return lam, lam_bad, lam_ok, None, jnp.array(False), jnp.array(True)
    lr_raw = (state.learning_rate if lr_schedule is None
              else jnp.asarray(lr_schedule(state.count), dtype))
    lr, lr_bad, lr_ok = valid_value(lr_raw, state.learning_rate,
                                    positive=True)
    return (lam, lam_bad, lam_ok, jnp.where(lr_ok, lr, 0.0).astype(dtype),
            lr_bad, lr_ok)

  def step(params, state: CurvatureState, x, y):
    checks.check_state("state", state, CurvatureState)
    _check_same_optimizer(state, jax.eval_shape(init, params))
    check_params(params)
    x, y = base.check_batch(model_or_apply, params, x, y, loss)
    x, y = base.shard_batch(x, y, mesh)
    previous = _check_previous(state.previous, x, y)
    dtype = state.damping.dtype
    lam, lam_bad, lam_ok, lr, lr_bad, lr_ok = hyperparameters(state,
                                                              x.shape[0])
    next_key, subkey = jax.random.split(jax.random.wrap_key_data(state.key))
    d = method.direction(params, state.curvature, x, y, lam, subkey,
                         state.count)
    loss0 = loss.value(d.u, y)
    diverged, scale = divergence(loss0, state.loss_scale,
                                 all_finite(d.direction))
    ctx = _StepInputs(apply, loss, _per_batch(rule, x.shape[0]), jvp_fn,
                      params, state, x, y, d, loss0, lam, lr,
                      None if adaptive_mu else state.momentum,
                      lr_ok & lam_ok, with_velocity, previous)
    out = _model_step(ctx) if cfg.quadratic else _fixed_step(ctx)
    info = base.base_info(loss0, loss.residual(d.u, y), out.update_norm,
                          lam, out.learning_rate, dtype)
    info.update(d.diagnostics)
    info.update(out.info)
    info["diverged"] = diverged | out.loss_after_nonfinite
    info["update_skipped"] = out.skipped
    info["learning_rate_invalid"] = lr_bad.astype(jnp.int32)
    info["damping_invalid"] = lam_bad.astype(jnp.int32)
    info["params_nonfinite"] = (~all_finite(params)).astype(jnp.int32)
    step_lr = (out.learning_rate if adaptive_lr
               else jnp.where(lr_ok, lr, state.learning_rate))
    new_state = CurvatureState(
        count=state.count + 1,
        damping=out.damping.astype(dtype),
        learning_rate=jnp.asarray(step_lr).astype(dtype),
        loss_scale=scale,
        key=jax.random.key_data(next_key),
        curvature=d.curvature,
        velocity=out.velocity,
        momentum=jnp.asarray(out.momentum).astype(dtype),
        previous=(tuple(new.astype(old.dtype) for new, old in
                        zip((x, y), previous, strict=True))
                  if previous else ()),
    )
    return out.params, new_state, info

  return base.Optimizer(
      init, base.step_on_mesh(precision_lib.step(step, precision), mesh))


def _check_same_optimizer(state: CurvatureState, want: CurvatureState):
  """``state`` must come from this optimizer's ``init``: ``ngd``, ``kfac``
  (full-batch or running factors) and momentum or none share the state
  type but not its ``curvature`` and ``velocity`` fields."""
  for field in ("curvature", "velocity", "previous"):
    got = jax.tree_util.tree_structure(getattr(state, field))
    expected = jax.tree_util.tree_structure(getattr(want, field))
    if got != expected:
      raise ValueError(
          f"state: its {field} does not match this optimizer's (a state "
          "from another optimizer's init, e.g. ngd's given to a mini-batch "
          "kfac, or one built with other momentum settings); pass the "
          "state from the same optimizer's init")


class _StepInputs(NamedTuple):
  """What ``_fixed_step`` and ``_model_step`` need from ``make``'s step."""

  apply: Callable
  loss: Any
  rule: damping_lib.DampingRule
  jvp_fn: Callable
  params: Params
  state: CurvatureState
  x: Array
  y: Array
  d: Direction
  loss0: Array
  lam: Array  # () damping of this step
  lr: Array | None  # () fixed learning rate; None: adaptive
  mu: Array | None  # () fixed momentum; None: adaptive
  usable: Array  # () bool: the learning rate and damping are valid
  with_velocity: bool
  previous: tuple  # (x, y) of the previous batch (model_batches=2), or ()


class _StepOutputs(NamedTuple):
  params: Params
  velocity: Any
  damping: Array  # () the next step's damping
  learning_rate: Array  # () the alpha used
  momentum: Array  # () the mu used
  update_norm: Array
  skipped: Array  # () int32
  loss_after_nonfinite: Array  # () int32
  info: dict


def _check_previous(previous, x, y) -> tuple:
  """The stored previous batch, checked against this one's shapes.

  ``model_batches=2`` keeps each batch for the next step's model, so every
  batch must be shaped like ``example_inputs`` (and ``y`` like its
  outputs); the new batch is cast to the stored dtypes so that the state
  keeps one structure (one compilation).
  """
  if not previous:
    return ()
  for name, new, old in (("x", x, previous[0]), ("y", y, previous[1])):
    if new.shape != old.shape:
      raise ValueError(
          f"{name}: model_batches=2 keeps the previous batch, so every batch "
          f"must have the shape of example_inputs' batch, {old.shape}; got "
          f"{new.shape} (drop or pad the last, smaller batch)")
  return previous


def _per_batch(rule, n: int):
  """The rule with per-example Levenberg-Marquardt bounds times ``n``."""
  lm = rule.adaptive
  if lm is None or not lm.per_example:
    return rule
  return rule._replace(adaptive=lm._replace(
      min_damping=n * lm.min_damping, max_damping=n * lm.max_damping))


def _adapt_every(rule, count) -> Array:
  """Whether Levenberg-Marquardt adapts at this step (every ``every``)."""
  return count % rule.adaptive.every == 0


def _fixed_step(s: _StepInputs) -> _StepOutputs:
  """A fixed learning rate: ``delta = -eta d`` (``+ mu v`` with momentum);
  Levenberg-Marquardt against the linearised network
  (``ngdjax.optim.damping``)."""
  dtype = s.lam.dtype
  info = {}
  if s.with_velocity:
    delta = jax.tree_util.tree_map(
        lambda a, v: (-s.lr * a + s.mu * v).astype(a.dtype), s.d.direction,
        s.state.velocity)
    new_params, skipped = guarded_update(s.params, delta, -1.0, s.usable)
    velocity = jax.tree_util.tree_map(
        lambda t: jnp.where(skipped > 0, jnp.zeros_like(t), t), delta)
    update_norm = base.tree_norm(delta)
    info["momentum"] = jnp.asarray(s.mu, dtype)
  else:
    new_params, skipped = guarded_update(s.params, s.d.direction, s.lr,
                                         s.usable)
    velocity = ()
    update_norm = s.lr * base.tree_norm(s.d.direction)
  next_lam = s.lam
  bad_after = jnp.zeros((), jnp.int32)
  if s.rule.adaptive is not None:
    if s.with_velocity:
      du = s.jvp_fn(s.params, s.x, delta).reshape(s.d.u.shape)
    else:
      du = s.d.output_change
      if du is None:
        du = s.jvp_fn(s.params, s.x, s.d.direction)
      du = -s.lr * du.reshape(s.d.u.shape)
    # Predicted change: the loss at the linearised outputs u + J delta
    # (ngdjax.optim.damping explains the choice).
    predicted = s.loss.value(s.d.u + du, s.y) - s.loss0
    loss1 = s.loss.value(base.outputs_fn(s.apply, s.x)(new_params), s.y)
    rho = damping_lib.reduction_ratio(loss1 - s.loss0, predicted)
    next_lam = jnp.where(_adapt_every(s.rule, s.state.count),
                         damping_lib.lm_update(s.rule.adaptive, s.lam, rho),
                         s.lam)
    bad_after = (~jnp.isfinite(loss1)).astype(jnp.int32)
    info["reduction_ratio"] = rho.astype(dtype)
    info["loss_after"] = loss1.astype(dtype)
  mu = s.mu if s.mu is not None else jnp.zeros((), dtype)
  return _StepOutputs(new_params, velocity, next_lam, s.lr, mu, update_norm,
                      skipped, bad_after, info)


def _model_step(s: _StepInputs) -> _StepOutputs:
  """The quadratic-model step (``ngdjax.optim.quadratic``).

  ``delta = alpha Delta + mu v`` with ``Delta = -d``; the loss at ``theta +
  delta`` on the batch gives ``rho = (h(theta + delta) - h(theta)) /
  (M(delta) - lam ||delta||^2 / 2)`` (the undamped model, as in
  ``ngdjax.optim.damping``). The step is rejected (params and ``v``
  reset, damping raised by the rule's ``increase`` at once when it is
  Levenberg-Marquardt) when
  the model has no minimiser (``Delta^T C~ Delta <= 0``), when the loss
  does not decrease (``rho < 0``, including a non-finite loss), or when the
  update is not finite. Levenberg-Marquardt adapts every ``every`` steps.

  With the previous batch (``model_batches=2``, from the second step on),
  ``M``, ``h`` and the damping term are sums over both batches
  (``quadratic.model_terms`` of each, the damping ``lam`` once per batch,
  so two copies of one batch give the one-batch step), and ``rho`` and
  the rejection judge the loss of both.
  """
  dtype = s.lam.dtype
  f = base.outputs_fn(s.apply, s.x)
  neg = jax.tree_util.tree_map(jnp.negative, s.d.direction)  # Delta
  if s.with_velocity:
    _, lin = jax.linearize(f, s.params)
    j_v = lin(s.state.velocity)
  else:
    lin = lambda t: s.jvp_fn(s.params, s.x, t)  # noqa: E731
    j_v = jnp.zeros_like(s.d.u)
  if s.d.output_change is not None:
    j_delta = -s.d.output_change.reshape(s.d.u.shape)
  else:
    j_delta = lin(neg).reshape(s.d.u.shape)
  j_v = j_v.reshape(s.d.u.shape)
  v = s.state.velocity if s.with_velocity else None
  sq = jnp.stack([quadratic.tree_vdot(neg, neg),
                  quadratic.tree_vdot(neg, v) if v is not None else 0.0,
                  quadratic.tree_vdot(v, v) if v is not None else 0.0])
  sq = s.lam * sq.astype(dtype)
  grad_u = s.loss.grad(s.d.u, s.y).astype(s.d.u.dtype)
  quad, linear = quadratic.model_terms(s.loss, s.d.u, s.y, grad_u, j_delta,
                                       j_v, sq)
  batches = jnp.ones((), dtype)  # the damping counts once per batch
  if s.previous:
    # Delta minimises the current batch's model exactly when the curvature
    # is the batch's own (NGD), which leaves alpha = 1 and mu = 0 with
    # nothing to choose; on two batches the model weighs Delta, fitted to
    # this batch, against v, fitted to the last one.
    has_previous = s.state.count > 0
    x_p, y_p = s.previous
    f_p = base.outputs_fn(s.apply, x_p)
    u_p, lin_p = jax.linearize(f_p, s.params)
    j_delta_p = lin_p(neg).reshape(u_p.shape)
    j_v_p = lin_p(v).reshape(u_p.shape) if v is not None else jnp.zeros_like(
        u_p)
    terms_p = quadratic.model_terms(
        s.loss, u_p, y_p, s.loss.grad(u_p, y_p).astype(u_p.dtype), j_delta_p,
        j_v_p, sq)
    quad, linear = (jnp.where(has_previous, a + b, a)
                    for a, b in zip((quad, linear), terms_p, strict=True))
    batches = jnp.where(has_previous, 2.0, 1.0).astype(dtype)
  coef = quadratic.coefficients(quad, linear, lr=s.lr, mu=s.mu)
  if v is None:
    delta = jax.tree_util.tree_map(lambda a: (coef.alpha * a).astype(a.dtype),
                                   neg)
  else:
    delta = jax.tree_util.tree_map(
        lambda a, b: (coef.alpha * a + coef.mu * b).astype(a.dtype), neg, v)
  new = base.tree_axpy(1.0, delta, s.params)
  loss1 = s.loss.value(f(new), s.y)
  actual = loss1 - s.loss0
  if s.previous:
    actual_p = s.loss.value(f_p(new), y_p) - s.loss.value(u_p, y_p)
    actual = jnp.where(has_previous, actual + actual_p, actual)
  # rho against the undamped model M(delta) - lam |delta|^2 / 2 (Martens &
  # Grosse 2015, section 6.5; kfac-jax's default): the damping term is the
  # trust region's, not a prediction of the loss.
  c_vec = jnp.stack([coef.alpha, coef.mu])
  sq_mat = jnp.stack([jnp.stack([sq[0], sq[1]]), jnp.stack([sq[1], sq[2]])])
  predicted = coef.change - 0.5 * batches * (c_vec @ sq_mat @ c_vec)
  rho = damping_lib.reduction_ratio(actual, predicted)
  finite = all_finite(new) & s.usable
  rejected = coef.bad_model | ~(actual <= 0) | ~finite
  keep = lambda a, b: jnp.where(rejected, b, a)  # noqa: E731
  new_params = jax.tree_util.tree_map(keep, new, s.params)
  velocity = ()
  if v is not None:
    velocity = jax.tree_util.tree_map(
        lambda t: jnp.where(rejected, jnp.zeros_like(t), t), delta)
  next_lam = s.lam
  if s.rule.adaptive is not None:
    lm = s.rule.adaptive
    raised = jnp.clip(s.lam * lm.increase, lm.min_damping, lm.max_damping)
    adapted = jnp.where(_adapt_every(s.rule, s.state.count),
                        damping_lib.lm_update(lm, s.lam, rho), s.lam)
    next_lam = jnp.where(rejected, raised, adapted)
  info = {
      "momentum": coef.mu.astype(dtype),
      "model_change": coef.change.astype(dtype),
      "reduction_ratio": rho.astype(dtype),
      "loss_after": loss1.astype(dtype),
      "step_rejected": rejected.astype(jnp.int32),
      "bad_model": coef.bad_model.astype(jnp.int32),
      # The first step has no previous update: not a fallback.
      "model_fallback": jnp.where(s.state.count > 0, coef.fallback, 0),
  }
  update_norm = jnp.where(rejected, 0.0, base.tree_norm(delta))
  return _StepOutputs(new_params, velocity, next_lam, coef.alpha, coef.mu,
                      update_norm, (~finite).astype(jnp.int32),
                      jnp.zeros((), jnp.int32), info)


# --------------------------------------------------------------------------
# The same direction as an optax gradient transformation.
# --------------------------------------------------------------------------


class PreconditionerState(NamedTuple):
  """State of ``ngd_preconditioner`` and ``kfac_preconditioner``.

  Attributes:
    count: ``()`` int32, updates made (the damping schedule's argument).
    info: the last update's diagnostics, scalars: ``loss``,
      ``residual_norm``, ``damping``, ``damping_invalid`` and the method's
      (``cholesky_failed`` or ``cg_iterations``/``cg_residual``); zeros
      before the first update.
    key: ``(2,)`` uint32 PRNG key data (Monte Carlo Fisher).
    curvature: the method's own state (K-FAC's running factors).
  """

  count: Array
  info: dict
  key: Array
  curvature: Any


def preconditioner(
    model_or_apply, loss, damping, method: Method, key, info_keys: dict,
    name: str, precision=None,
) -> optax.GradientTransformationExtraArgs:
  """``method``'s direction as an optax transformation.

  ``update(updates, state, params, x=x, y=y)`` returns the preconditioned
  gradient at ``params`` on the batch, in place of ``updates`` (the
  direction needs ``grad_u L``, which the parameter gradient does not
  determine); chain a step-size rule after it. A damping schedule value
  that is NaN or negative is replaced by the last valid one and flagged
  (``info["damping_invalid"]``).

  Args:
    model_or_apply, loss: as in ``make``.
    damping: a number, array or schedule (Levenberg-Marquardt needs the loss
      after the step, which a gradient transformation never sees).
    method: the direction.
    key: PRNG key (Monte Carlo Fisher).
    info_keys: the method's diagnostics, ``name -> dtype`` (``None``: the
      params' dtype).
    name: the public function's name, for error messages.
    precision: the matmul policy of the update (``ngdjax.precision``).
  """
  if isinstance(damping, damping_lib.LevenbergMarquardt):
    raise ValueError(
        f"damping: {name} supports a fixed or scheduled damping; use the "
        "optimizer itself for Levenberg-Marquardt"
    )
  rule = damping_lib.resolve(damping)
  key = key_data(key)

  def init_fn(params) -> PreconditionerState:
    dtype = base.param_dtype(params)
    info = {k: jnp.zeros((), dtype) for k in ("loss", "residual_norm")}
    info["damping"] = jnp.asarray(rule.initial, dtype)
    info["damping_invalid"] = jnp.zeros((), jnp.int32)
    for k, kind in info_keys.items():
      info[k] = jnp.zeros((), dtype if kind is None else kind)
    return PreconditionerState(jnp.zeros((), jnp.int32), info, key,
                               method.init(params))

  def update_fn(updates, state, params=None, *, x=None, y=None, **extra):
    del extra  # other transformations' extra arguments
    if params is None:
      raise ValueError(f"params: {name}.update needs params")
    if x is None or y is None:
      raise ValueError(
          "x, y: pass the batch as extra arguments, "
          "tx.update(grads, state, params, x=x, y=y)"
      )
    x, y = base.check_batch(model_or_apply, params, x, y, loss)
    dtype = base.param_dtype(params)
    raw = (rule.initial if rule.schedule is None
           else rule.schedule(state.count))
    lam, bad, ok = valid_value(jnp.asarray(raw, dtype),
                               state.info["damping"], positive=False)
    lam = jnp.where(ok, lam, 0.0).astype(dtype)
    next_key, subkey = jax.random.split(jax.random.wrap_key_data(state.key))
    d = method.direction(params, state.curvature, x, y, lam, subkey,
                         state.count)
    info = {
        "loss": loss.value(d.u, y).astype(dtype),
        "residual_norm": jnp.linalg.norm(loss.residual(d.u, y)).astype(dtype),
        "damping": lam,
        "damping_invalid": bad.astype(jnp.int32),
    }
    for k in info_keys:
      info[k] = d.diagnostics[k].astype(state.info[k].dtype)
    # The incoming updates are replaced (their dtypes kept); None is
    # accepted, since the direction does not depend on them.
    direction = jax.tree_util.tree_map(
        lambda t, ref: t.astype(ref.dtype), d.direction,
        params if updates is None else updates)
    return direction, PreconditionerState(
        state.count + 1, info, jax.random.key_data(next_key), d.curvature)

  return optax.GradientTransformationExtraArgs(
      init_fn, precision_lib.update(update_fn, precision))

"""Gradient descent, and any optax optimizer, in the ``Optimizer`` shape.

The baselines against which NGD and K-FAC are compared (docs/math.md):
full-batch gradient descent on the sum loss,
``theta <- theta - eta J^T grad_u L(u)``, and a wrapper that runs any
``optax.GradientTransformation`` with the same ``init``/``step`` signature
and ``info`` keys.

Example:

  >>> import jax, jax.numpy as jnp, optax, ngdjax
  >>> from ngdjax.optim import optax_optimizer
  >>> model = ngdjax.two_layer_relu(width=64)
  >>> params = model.init(jax.random.key(0), in_dim=3)
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (8, 3)))
  >>> opt = optax_optimizer(model, optax.adam(1e-2))
  >>> state = opt.init(params)
  >>> params, state, info = jax.jit(opt.step)(params, state, x, x[:, 0])
  >>> float(info["damping"])
  0.0
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ngdjax._src.jacobian import split_model
from ngdjax._src.optim import base, core
from ngdjax._src.typing import Array


class GDState(NamedTuple):
  """State of ``gd``.

  Attributes:
    count: ``()`` int32, steps taken (the schedule's argument).
    learning_rate: ``()`` float: the constant step size (replace it to
      sweep with one compiled step), or a schedule's last valid value.
    loss_scale: ``()`` float: loss of the first step (divergence
      reference, ``ngdjax.optim.core``); NaN before it.
  """

  count: Array
  learning_rate: Array
  loss_scale: Array


class OptaxState(NamedTuple):
  """State of ``optax_optimizer``.

  Attributes:
    count: ``()`` int32, steps taken.
    inner: the wrapped transformation's state.
    loss_scale: ``()`` float: loss of the first step (divergence
      reference, ``ngdjax.optim.core``); NaN before it.
  """

  count: Array
  inner: Any
  loss_scale: Array


def _loss_and_grad(apply, loss, params, x, y):
  """``(u (n, c), L, dL/dtheta)`` by one forward and one VJP."""
  u, pullback = jax.vjp(base.outputs_fn(apply, x), params)
  value = loss.value(u, y)
  grads = pullback(loss.grad(u, y).astype(u.dtype))[0]
  return u, value, grads


def _fault_info(info, loss0, loss_scale, grads, skipped, params):
  """Adds the fault flags of ``ngdjax.optim.core``; returns the scale."""
  diverged, scale = core.divergence(loss0, loss_scale,
                                    core.all_finite(grads))
  info["diverged"] = diverged | skipped
  info["update_skipped"] = skipped
  info["params_nonfinite"] = (~core.all_finite(params)).astype(jnp.int32)
  return scale


def gd(
    model_or_apply, learning_rate: base.ScalarOrSchedule, *, loss="squared"
) -> base.Optimizer:
  """Full-batch gradient descent, ``theta <- theta - eta grad L(theta)``.

  ``L`` is the sum loss of docs/math.md, so the gradient is
  ``J^T grad_u L(u)`` (no ``1/n``). Faults are handled as in
  ``ngdjax.optim.core``: non-finite params raise before tracing, a
  learning-rate schedule that turns NaN/negative falls back to the last
  valid value (``info["learning_rate_invalid"]``), a non-finite update is
  not applied (``info["update_skipped"]``) and ``info["diverged"]`` flags a
  non-finite or exploding loss.

  Args:
    model_or_apply: a ``Model`` or ``apply(params, x) -> (n, c)``.
    learning_rate: ``eta > 0`` (number or scalar array, held in the state),
      or a schedule ``count -> eta``.
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``.

  Returns:
    ``Optimizer(init, step)``; info has ``loss``, ``residual_norm``,
    ``update_norm``, ``damping`` (always 0), ``learning_rate``,
    ``grad_norm`` and the fault flags.
  """
  apply, _ = split_model(model_or_apply)
  lr0, schedule = core.hyperparameter(learning_rate, "learning_rate",
                                      positive=True)
  loss = base.check_loss(loss)

  def init(params) -> GDState:
    dtype = base.param_dtype(params)
    return GDState(jnp.zeros((), jnp.int32), jnp.asarray(lr0, dtype),
                   jnp.full((), jnp.nan, dtype))

  def step(params, state: GDState, x, y):
    core.check_params(params)
    x, y = base.check_batch(model_or_apply, params, x, y, loss)
    dtype = base.param_dtype(params)
    lr_raw = (state.learning_rate if schedule is None
              else jnp.asarray(schedule(state.count), dtype))
    lr, lr_bad, lr_ok = core.valid_value(lr_raw, state.learning_rate,
                                         positive=True)
    lr = jnp.where(lr_ok, lr, 0.0).astype(dtype)
    u, value, grads = _loss_and_grad(apply, loss, params, x, y)
    grad_norm = base.tree_norm(grads)
    new_params, skipped = core.guarded_update(params, grads, lr, lr_ok)
    info = base.base_info(value, loss.residual(u, y), lr * grad_norm, 0.0,
                          lr, dtype)
    info["grad_norm"] = grad_norm.astype(dtype)
    scale = _fault_info(info, value, state.loss_scale, grads, skipped,
                        params)
    info["learning_rate_invalid"] = lr_bad.astype(jnp.int32)
    new_lr = jnp.where(lr_ok, lr, state.learning_rate).astype(dtype)
    return new_params, GDState(state.count + 1, new_lr, scale), info

  return base.Optimizer(init, step)


def optax_optimizer(
    model_or_apply, tx: optax.GradientTransformation, *, loss="squared"
) -> base.Optimizer:
  """Runs an optax transformation as an ngdjax ``Optimizer``.

  ``step`` computes the full-batch gradient of the sum loss, feeds it to
  ``tx.update`` and applies the result. A
  ``GradientTransformationExtraArgs`` (for instance a chain that contains
  ``ngd_preconditioner``) also receives the batch as ``x=x, y=y``. A
  non-finite update (a schedule inside ``tx`` that turned NaN, an overflow)
  is not applied: the params and ``tx``'s state stay as they were, and
  ``info["update_skipped"]`` and ``info["diverged"]`` are set.

  Args:
    model_or_apply: a ``Model`` or ``apply(params, x) -> (n, c)``.
    tx: any ``optax.GradientTransformation``.
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``.

  Returns:
    ``Optimizer(init, step)``; info has ``loss``, ``residual_norm``,
    ``update_norm``, ``damping`` (0), ``learning_rate`` (``nan``: the step
    size lives inside ``tx``), ``grad_norm`` and the fault flags.
  """
  apply, _ = split_model(model_or_apply)
  loss = base.check_loss(loss)
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(
        f"tx must be an optax.GradientTransformation, got {type(tx).__name__}"
    )
  extra_args = isinstance(tx, optax.GradientTransformationExtraArgs)

  def init(params) -> OptaxState:
    dtype = base.param_dtype(params)
    return OptaxState(jnp.zeros((), jnp.int32), tx.init(params),
                      jnp.full((), jnp.nan, dtype))

  def step(params, state: OptaxState, x, y):
    core.check_params(params)
    x, y = base.check_batch(model_or_apply, params, x, y, loss)
    dtype = base.param_dtype(params)
    u, value, grads = _loss_and_grad(apply, loss, params, x, y)
    if extra_args:
      updates, inner = tx.update(grads, state.inner, params, x=x, y=y)
    else:
      updates, inner = tx.update(grads, state.inner, params)
    new_params = optax.apply_updates(params, updates)
    ok = core.all_finite(new_params)
    new_params = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b),
                                        new_params, params)
    inner = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), inner,
                                   state.inner)
    skipped = (~ok).astype(jnp.int32)
    info = base.base_info(value, loss.residual(u, y), base.tree_norm(updates),
                          0.0, jnp.nan, dtype)
    info["grad_norm"] = base.tree_norm(grads).astype(dtype)
    scale = _fault_info(info, value, state.loss_scale, grads, skipped,
                        params)
    return new_params, OptaxState(state.count + 1, inner, scale), info

  return base.Optimizer(init, step)

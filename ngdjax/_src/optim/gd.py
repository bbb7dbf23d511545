"""Gradient descent, and any optax optimizer, in the ``Optimizer`` shape.

The baselines against which NGD and K-FAC are compared (MATH.md 2 and 6):
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
from ngdjax._src.optim import base

Array = jax.Array
Params = Any


class GDState(NamedTuple):
  """State of ``gd``.

  Attributes:
    count: ``()`` int32, steps taken (the schedule's argument).
  """

  count: Array


class OptaxState(NamedTuple):
  """State of ``optax_optimizer``.

  Attributes:
    count: ``()`` int32, steps taken.
    inner: the wrapped transformation's state.
  """

  count: Array
  inner: Any


def _loss_and_grad(apply, loss, params, x, y):
  """``(u (n, c), L, dL/dtheta)`` by one forward and one VJP."""
  u, pullback = jax.vjp(base.outputs_fn(apply, x), params)
  value = loss.value(u, y)
  grads = pullback(loss.grad(u, y).astype(u.dtype))[0]
  return u, value, grads


def gd(
    model_or_apply, learning_rate: base.ScalarOrSchedule, loss="squared"
) -> base.Optimizer:
  """Full-batch gradient descent, ``theta <- theta - eta grad L(theta)``.

  ``L`` is the sum loss of MATH.md 1, so the gradient is
  ``J^T grad_u L(u)`` (no ``1/n``).

  Args:
    model_or_apply: a ``Model`` or ``apply(params, x) -> (n, c)``.
    learning_rate: ``eta > 0`` or a schedule ``count -> eta``.
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``.

  Returns:
    ``Optimizer(init, step)``; info has ``loss``, ``residual_norm``,
    ``update_norm``, ``damping`` (always 0), ``learning_rate`` and
    ``grad_norm``.
  """
  apply, _ = split_model(model_or_apply)
  lr_fn = base.check_learning_rate(learning_rate)
  loss = base.check_loss(loss)

  def init(params) -> GDState:
    base.param_dtype(params)
    return GDState(jnp.zeros((), jnp.int32))

  def step(params, state: GDState, x, y):
    x, y = base.check_batch(model_or_apply, params, x, y)
    dtype = base.param_dtype(params)
    lr = jnp.asarray(lr_fn(state.count), dtype)
    u, value, grads = _loss_and_grad(apply, loss, params, x, y)
    grad_norm = base.tree_norm(grads)
    new_params = base.tree_axpy(-lr, grads, params)
    info = base.base_info(value, u, y, lr * grad_norm, 0.0, lr, dtype)
    info["grad_norm"] = grad_norm.astype(dtype)
    return new_params, GDState(state.count + 1), info

  return base.Optimizer(init, step)


def optax_optimizer(
    model_or_apply, tx: optax.GradientTransformation, loss="squared"
) -> base.Optimizer:
  """Runs an optax transformation as an ngdjax ``Optimizer``.

  ``step`` computes the full-batch gradient of the sum loss, feeds it to
  ``tx.update`` and applies the result. A
  ``GradientTransformationExtraArgs`` (for instance a chain that contains
  ``ngd_preconditioner``) also receives the batch as ``x=x, y=y``.

  Args:
    model_or_apply: a ``Model`` or ``apply(params, x) -> (n, c)``.
    tx: any ``optax.GradientTransformation``.
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``.

  Returns:
    ``Optimizer(init, step)``; info has ``loss``, ``residual_norm``,
    ``update_norm``, ``damping`` (0), ``learning_rate`` (``nan``: the step
    size lives inside ``tx``) and ``grad_norm``.
  """
  apply, _ = split_model(model_or_apply)
  loss = base.check_loss(loss)
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(
        f"tx must be an optax.GradientTransformation, got {type(tx).__name__}"
    )
  extra_args = isinstance(tx, optax.GradientTransformationExtraArgs)

  def init(params) -> OptaxState:
    base.param_dtype(params)
    return OptaxState(jnp.zeros((), jnp.int32), tx.init(params))

  def step(params, state: OptaxState, x, y):
    x, y = base.check_batch(model_or_apply, params, x, y)
    dtype = base.param_dtype(params)
    u, value, grads = _loss_and_grad(apply, loss, params, x, y)
    if extra_args:
      updates, inner = tx.update(grads, state.inner, params, x=x, y=y)
    else:
      updates, inner = tx.update(grads, state.inner, params)
    new_params = optax.apply_updates(params, updates)
    info = base.base_info(value, u, y, base.tree_norm(updates), 0.0,
                          jnp.nan, dtype)
    info["grad_norm"] = base.tree_norm(grads).astype(dtype)
    return new_params, OptaxState(state.count + 1, inner), info

  return base.Optimizer(init, step)

"""The shape every ngdjax optimizer shares, and the plumbing they reuse.

An optimizer is ``Optimizer(init, step)``, a pair of pure functions:

    state = opt.init(params)
    params, state, info = opt.step(params, state, x, y)

``step`` is full-batch on ``(x, y)`` (``x`` ``(n, d)``, ``y`` ``(n,)`` or
``(n, c)``) and is meant to be wrapped in ``jax.jit`` by the caller: the
library never jits. ``info`` is a dict of scalar arrays; every optimizer
reports at least ``loss`` (at the params the step started from),
``residual_norm`` (``||u - y||``), ``update_norm`` (``||theta_new -
theta||``), ``damping`` and ``learning_rate``, plus its solver's diagnostics.

Hyper-parameters are validated in Python when the optimizer is built;
``step`` validates its batch before it traces (shapes always, values when the
arrays are concrete), so bad input raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngdjax._src import checks, parallel
from ngdjax._src import losses as losses_lib
from ngdjax._src.jacobian import output_dim, outputs_2d, split_model
from ngdjax._src.linalg import as_columns
from ngdjax._src.typing import Array, Params

Schedule = Callable[[Array], Array]
ScalarOrSchedule = float | Schedule


class Optimizer(NamedTuple):
  """A full-batch optimizer as two pure functions.

  Attributes:
    init: ``params -> state``.
    step: ``(params, state, x (n, d), y (n,) | (n, c)) -> (params, state,
      info)`` with ``info`` a dict of scalar arrays.
  """

  init: Callable[[Params], Any]
  step: Callable[[Params, Any, Array, Array], tuple[Params, Any, dict]]


def check_learning_rate(learning_rate, name: str = "learning_rate"):
  """Validates a step size: a positive finite number or a schedule.

  A schedule is any callable of the (int32) step count, as in optax; it is
  evaluated once at count 0 here, so a schedule that returns NaN or a
  negative value is caught before anything is traced.

  Returns:
    A callable ``count -> step size``.
  """
  if callable(learning_rate):
    try:
      first = learning_rate(jnp.zeros((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - re-raised with the name
      raise ValueError(
          f"{name} is callable but cannot be evaluated at step 0: {e}"
      ) from e
    checks.check_scalar(f"{name}(0)", first, nonnegative=True)
    return learning_rate
  checks.check_scalar(name, learning_rate, positive=True)
  value = float(learning_rate)
  return lambda count: value


def check_loss(loss) -> losses_lib.Loss:
  """A ``Loss`` from a name or a ``Loss`` (``ValueError`` otherwise)."""
  if not isinstance(loss, (str, losses_lib.Loss)):
    raise ValueError(
        f"loss must be a name in {sorted(losses_lib.LOSSES)} or an "
        f"ngdjax.losses.Loss, got {type(loss).__name__}"
    )
  return losses_lib.get(loss)


def outputs_fn(apply: Callable, x: Array) -> Callable[[Params], Array]:
  """``params -> u`` with ``u`` as ``(n, c)`` (a 1-D output is a column)."""

  return lambda params: outputs_2d(apply, params, x)


def check_batch(apply_or_model, params, x, y, loss=None) -> tuple[Array, Array]:
  """The thin check ``step`` runs before tracing anything.

  Shapes are checked always (they are static under ``jit``); NaN/Inf only
  when ``x``/``y`` hold values. For a loss that takes class labels
  (``softmax_cross_entropy``), integer targets ``(n,)`` are checked against
  the number of classes (values in ``[0, c)`` when concrete) and one-hot
  encoded in the outputs' dtype.

  Returns:
    ``(x, y)`` with ``y`` as ``(n, c)``.
  """
  # Params are checked against the model's structure (named paths instead
  # of KeyError / dot_general errors); values are the step's concern.
  apply, model = split_model(apply_or_model)
  # A bare apply takes inputs of any shape (n, ...).
  x = checks.check_inputs("x", x, any_shape=model is None)
  # Integer x only for a bare apply (token ids); half-precision x of a
  # wider model is computed in the model's dtype.
  x = checks.compute_dtype_inputs("x", x, params, integers=model is None)
  checks.check_model_params(model, params, x, finite=False)
  if model is None:
    checks.check_apply(apply, params, x)
  c = output_dim(apply_or_model, params, x)
  if (loss is not None and loss.labels and hasattr(y, "ndim") and y.ndim == 1
      and jnp.issubdtype(y.dtype, jnp.integer)):
    y = checks.check_array("y", y, ndim=1)
    if y.shape[0] != x.shape[0]:
      raise ValueError(
          f"y has {y.shape[0]} rows but the inputs have {x.shape[0]} examples"
      )
    if checks.is_local(y):  # never np.asarray a multi-process array
      bad = (np.asarray(y) < 0) | (np.asarray(y) >= c)
      if bad.any():
        raise ValueError(
            f"y holds class labels outside [0, {c}) (the model has {c} "
            f"outputs), e.g. {int(np.asarray(y)[bad][0])}"
        )
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params), x.dtype)
    return x, jax.nn.one_hot(y, c, dtype=dtype)
  if (loss is not None and loss.labels and hasattr(y, "ndim")
      and y.ndim == 1 and c > 1):
    raise ValueError(
        f"y: {loss.name} takes integer class labels (n,) or class "
        f"probabilities (n, c); got a {y.dtype} array of shape {y.shape} "
        "(use y.astype(int) for labels)"
    )
  y = checks.check_targets("y", y, x.shape[0], out_dim=c)
  if loss is not None and loss.labels:
    y = checks.check_probabilities("y", y)
  y = jnp.asarray(y)
  return x, as_columns(y)


def check_mesh(mesh):
  """Validates an optional example-axis mesh (``ngdjax.parallel``).

  Returns:
    ``None``, or the mesh with its axis of type ``Auto``
    (``parallel.auto_mesh``: a ``jax.make_mesh`` mesh has ``Explicit`` axes).
  """
  if mesh is None:
    return None
  return parallel.auto_mesh(mesh)  # raises ValueError naming ``mesh``


def step_on_mesh(step: Callable, mesh) -> Callable:
  """``step`` traced under ``parallel.mesh_context(mesh)``.

  So that a step runs the same inside ``jax.set_mesh`` of the user's
  (possibly ``Explicit``) mesh as outside it; ``mesh=None`` returns ``step``.
  """
  return parallel.on_mesh(step, mesh)


def shard_batch(x: Array, y: Array, mesh) -> tuple[Array, Array]:
  """Constrains the example axis of ``x`` and ``y`` to be split over ``mesh``.

  Everything downstream (forward pass, VJPs, factor reductions) is then
  partitioned by JAX's SPMD compiler, with the reductions over examples
  turned into all-reduces; ``mesh=None`` returns the inputs unchanged
  (and refuses inputs split over an ``Explicit`` mesh: a ValueError).
  """
  if mesh is None:
    checks.check_not_split("x", x)
    checks.check_not_split("y", y)
    return x, y
  return (jax.lax.with_sharding_constraint(x, parallel.row_sharding(mesh)),
          jax.lax.with_sharding_constraint(y, parallel.row_sharding(mesh)))


def param_dtype(params) -> jnp.dtype:
  """The floating dtype of the parameters (for the state's scalars)."""
  leaves = jax.tree_util.tree_leaves(params)
  if not leaves:
    raise ValueError("params has no array leaves")
  dtype = jnp.result_type(*leaves)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"params must be floating point, got dtype {dtype}")
  return dtype


def tree_norm(tree) -> Array:
  """Euclidean norm of all leaves of a pytree together."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))


def tree_axpy(alpha, x, y):
  """``alpha * x + y`` leaf by leaf, keeping each leaf of ``y``'s dtype."""
  return jax.tree_util.tree_map(
      lambda a, b: (b + alpha * a).astype(b.dtype), x, y
  )


def base_info(loss_value, residual, update_norm, damping, learning_rate,
              dtype):
  """The info keys every optimizer reports, as scalars of ``dtype``.

  ``residual`` is ``Loss.residual(u, y)``: ``u - y`` for regression, ``p - y``
  for a classifier.
  """
  return {
      "loss": jnp.asarray(loss_value, dtype),
      "residual_norm": jnp.linalg.norm(residual).astype(dtype),
      "update_norm": jnp.asarray(update_norm, dtype),
      "damping": jnp.asarray(damping, dtype),
      "learning_rate": jnp.asarray(learning_rate, dtype),
  }


FISHERS = ("true", "empirical", "monte_carlo")


def check_fisher(fisher: str, loss) -> str:
  """Validates ``fisher=`` for ``loss`` (NGD's and K-FAC's one check)."""
  checks.check_choice("fisher", fisher, FISHERS)
  if fisher == "monte_carlo" and loss.sample is None:
    raise ValueError(
        f'fisher="monte_carlo" needs a loss with a sampler; {loss.name} has '
        'none (use fisher="true")'
    )
  return fisher

"""Exact natural gradient descent in kernel ("dual") form (MATH.md 2).

    theta <- theta - eta * J^T (G + lam I)^{-1} grad_u L(u),   G = J J^T

For the squared loss ``grad_u L = u - y = r`` and this is ``F^+ grad L``
with ``F = J^T J`` (exactly, when ``G`` is invertible and ``lam = 0``); for
any loss of ``ngdjax.losses`` it is the update of Theorem 2. Cost per step:
one ``N x N`` Gram (``N = n c``), one ``N x N`` solve and one VJP; never a
``p x p`` matrix, and for models with layer factors never an ``(N, p)``
Jacobian.

Solvers:

* ``"cholesky"``: ``G`` from ``ngdjax.gram`` (``gram_method="auto"`` picks
  the structured closed form for ``Model``s), then ``psd_solve``: Cholesky,
  with the eigendecomposition pseudo-inverse as the fallback when Cholesky
  fails (``info["cholesky_failed"] = 1``; see ``ngdjax.optim.solvers``).
* ``"cg"``: conjugate gradients with matrix-free ``G v`` products, for ``N``
  too large to hold ``G``: the structured form ``sum_l J_l (J_l^T v)`` from
  layer factors for ``Model``s, ``ngdjax.gram_vp`` when ``chunk_size`` is
  given, else one ``jax.linearize`` shared by every product. Reports
  ``cg_iterations``, ``cg_residual`` and ``cg_failed`` (1 when CG missed
  ``cg_tol``: breakdown on a numerically singular ``G + lam I`` or
  ``cg_maxiter`` reached; the step then uses the iterate with the smallest
  residual, never a ``1 / eps`` one; see ``ngdjax.optim.solvers``).

Example:

  >>> import jax, jax.numpy as jnp, ngdjax
  >>> from ngdjax.optim import ngd
  >>> model = ngdjax.two_layer_relu(width=256)
  >>> params = model.init(jax.random.key(0), in_dim=3)
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (8, 3)))
  >>> y = jnp.sin(3 * x[:, 0])
  >>> opt = ngd(model, learning_rate=1.0, damping=1e-6)
  >>> state = opt.init(params)
  >>> step = jax.jit(opt.step)
  >>> params, state, info = step(params, state, x, y)
  >>> sorted(info)[:4]
  ['cholesky_failed', 'damping', 'learning_rate', 'loss']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ngdjax._src import checks
from ngdjax._src.jacobian import (
  GramMethod,
  gram,
  gram_vp,
  outputs,
  split_model,
  structured_gram_vp,
  vjp,
)
from ngdjax._src.optim import base, solvers
from ngdjax._src.optim import damping as damping_lib

Array = jax.Array
Params = Any

SOLVERS = ("cholesky", "cg")


class NGDState(NamedTuple):
  """State of ``ngd``.

  Attributes:
    count: ``()`` int32, steps taken (the schedules' argument).
    damping: ``()`` float (params dtype): the damping of the next step for
      Levenberg-Marquardt, else the damping of the last step.
  """

  count: Array
  damping: Array


class _Config(NamedTuple):
  """Validated, static settings shared by ``ngd`` and the preconditioner."""

  apply: Callable
  model: Any
  loss: Any
  solver: str
  gram_method: str
  chunk_size: int | None
  cg_tol: float
  cg_maxiter: int | None
  mesh: Any = None


class _Direction(NamedTuple):
  u: Array  # (n, c) outputs at params
  grad_u: Array  # (n, c) dL/du
  v: Array  # (N,) (G + lam I)^{-1} grad_u
  gv: Array  # (N,) G v: the output change of a unit step is -G v
  direction: Params  # J^T v, shaped like params
  diagnostics: dict  # solver diagnostics (scalars)


def _check_config(
    model_or_apply, loss, solver, gram_method, chunk_size, cg_tol, cg_maxiter
) -> _Config:
  apply, model = split_model(model_or_apply)
  loss = base.check_loss(loss)
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  try:
    method = GramMethod(gram_method)
  except ValueError:
    choices = [m.value for m in GramMethod]
    raise ValueError(
        f"gram_method must be one of {choices}, got {gram_method!r}"
    ) from None
  if chunk_size is not None:
    checks.check_scalar("chunk_size", chunk_size, positive=True,
                         integer=True)
    chunk_size = int(chunk_size)
  checks.check_scalar("cg_tol", cg_tol, nonnegative=True)
  if cg_maxiter is not None:
    checks.check_scalar("cg_maxiter", cg_maxiter, positive=True,
                         integer=True)
    cg_maxiter = int(cg_maxiter)
  return _Config(apply, model, loss, solver, method.value, chunk_size,
                 float(cg_tol), cg_maxiter)


def _structured(cfg: _Config) -> bool:
  return (
      cfg.model is not None
      and cfg.model.layer_factors is not None
      and cfg.gram_method in ("auto", "structured")
  )


def _direction(cfg: _Config, params, x, y, lam) -> _Direction:
  """``v = (G + lam I)^{-1} grad_u L`` and ``J^T v`` (MATH.md 2)."""
  f = base.outputs_fn(cfg.apply, x)
  if cfg.chunk_size is None:
    u, pullback = jax.vjp(f, params)
  else:
    # Bounded memory: outputs and J^T v in blocks of chunk_size examples.
    u = outputs(cfg.apply, params, x, cfg.chunk_size)
    pullback = lambda w: (vjp(cfg.apply, params, x, w, cfg.chunk_size),)  # noqa: E731
  n, c = u.shape
  g = cfg.loss.grad(u, y).astype(u.dtype)
  g_flat = g.reshape(-1)
  lam = jnp.asarray(lam, u.dtype)
  if cfg.solver == "cholesky":
    g_mat = gram(cfg.model or cfg.apply, params, x,
                 method=cfg.gram_method, chunk_size=cfg.chunk_size,
                 mesh=cfg.mesh)
    g_mat = g_mat.astype(u.dtype)
    if cfg.mesh is not None:
      # The N x N factorisation runs replicated: G (row-sharded) is
      # all-gathered once; N^2 words against the N^2 p of the Gram.
      g_mat = jax.lax.with_sharding_constraint(
          g_mat, jax.sharding.NamedSharding(cfg.mesh,
                                            jax.sharding.PartitionSpec()))
    v, failed = solvers.psd_solve(g_mat, g_flat, lam)
    gv = g_mat @ v
    diagnostics = {"cholesky_failed": failed}
  else:
    if _structured(cfg):
      factors = cfg.model.layer_factors(params, x)

      def matvec(vec):
        return structured_gram_vp(factors, vec.reshape(n, c)).reshape(-1)
    elif cfg.chunk_size is not None:

      def matvec(vec):
        return gram_vp(cfg.apply, params, x, vec, cfg.chunk_size)
    else:
      # One linearisation shared by every product: J v and J^T v reuse the
      # forward pass instead of re-running it per CG iteration.
      _, jvp_fn = jax.linearize(f, params)
      transpose = jax.linear_transpose(jvp_fn, params)

      def matvec(vec):
        return jvp_fn(transpose(vec.reshape(n, c))[0]).reshape(-1)

    maxiter = cfg.cg_maxiter or n * c
    result = solvers.cg(matvec, g_flat, lam, cfg.cg_tol, maxiter)
    v = result.x
    gv = matvec(v)
    diagnostics = {
        "cg_iterations": result.iterations,
        "cg_residual": result.residual.astype(u.dtype),
        "cg_failed": result.failed,
    }
  direction = pullback(v.reshape(n, c))[0]
  return _Direction(u, g, v, gv, direction, diagnostics)


def ngd(
    model_or_apply,
    learning_rate: base.ScalarOrSchedule,
    damping: float | Callable | damping_lib.LevenbergMarquardt = 0.0,
    loss="squared",
    solver: str = "cholesky",
    gram_method: str = "auto",
    chunk_size: int | None = None,
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
    mesh=None,
) -> base.Optimizer:
  """Exact NGD, ``theta <- theta - eta J^T (G + lam I)^{-1} grad_u L``.

  MATH.md 2 (Theorem 1 for the squared loss, Theorem 2 for a general one;
  on a linear model ``eta = 1`` and ``lam = 0`` solve in one step).

  Args:
    model_or_apply: a ``Model`` or ``apply(params, x) -> (n, c)`` with any
      params pytree (flax, equinox, plain) and ``x`` ``(n, ...)``.
    learning_rate: ``eta > 0``, or a schedule ``count -> eta``.
    damping: ``lam >= 0``, a schedule ``count -> lam``, or
      ``levenberg_marquardt(...)`` (see ``ngdjax.optim.damping``).
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``.
    solver: ``"cholesky"`` (default) or ``"cg"`` (module docstring).
    gram_method: passed to ``ngdjax.gram`` (``"auto"`` is the fastest the
      model allows: structured for ``Model``s and for bare ``apply``
      functions whose dense layers are found, see
      ``ngdjax.describe_structure``).
    chunk_size: examples per block for the Gram / Gram-vector products.
    cg_tol: relative residual at which CG stops.
    cg_maxiter: CG iteration cap (default ``N = n c``).
    mesh: optional one-axis ``jax.sharding.Mesh`` (``ngdjax.parallel``): the
      example axis is split over its devices. The Gram is computed by row
      blocks (``ngdjax.parallel.sharded_gram``), gathered, and the
      ``N x N`` Cholesky solve runs replicated; with ``solver="cg"`` the
      Gram-vector products stay sharded (only ``p``-sized reductions cross
      devices). Params stay replicated. Results equal the unsharded step.

  Returns:
    ``Optimizer(init, step)``; ``step(params, state, x, y)`` returns info
    with ``loss``, ``residual_norm``, ``update_norm``, ``damping``,
    ``learning_rate``, then ``cholesky_failed`` (cholesky) or
    ``cg_iterations`` and ``cg_residual`` (cg), and for Levenberg-Marquardt
    ``reduction_ratio`` and ``loss_after`` (the loss at the new params).

  Raises:
    ValueError: non-finite or negative ``learning_rate``/``damping``, an
      unknown solver/method/loss, or (from ``step``) a malformed batch.
  """
  lr_fn = base.check_learning_rate(learning_rate)
  rule = damping_lib.resolve(damping)
  cfg = _check_config(model_or_apply, loss, solver, gram_method, chunk_size,
                      cg_tol, cg_maxiter)._replace(mesh=base.check_mesh(mesh))

  def init(params) -> NGDState:
    dtype = base.param_dtype(params)
    return NGDState(jnp.zeros((), jnp.int32), jnp.asarray(rule.initial, dtype))

  def step(params, state: NGDState, x, y):
    x, y = base.check_batch(model_or_apply, params, x, y)
    x, y = base.shard_batch(x, y, cfg.mesh)
    dtype = state.damping.dtype
    lam = jnp.asarray(rule.current(state.damping, state.count), dtype)
    lr = jnp.asarray(lr_fn(state.count), dtype)
    d = _direction(cfg, params, x, y, lam)
    new_params = base.tree_axpy(-lr, d.direction, params)
    loss0 = cfg.loss.value(d.u, y)
    info = base.base_info(loss0, d.u, y, lr * base.tree_norm(d.direction),
                          lam, lr, dtype)
    info.update(d.diagnostics)
    next_lam = lam
    if rule.adaptive is not None:
      # Predicted change: the loss at the linearised outputs u - eta G v
      # (ngdjax.optim.damping explains the choice).
      u_lin = d.u - lr * d.gv.reshape(d.u.shape)
      predicted = cfg.loss.value(u_lin, y) - loss0
      loss1 = cfg.loss.value(base.outputs_fn(cfg.apply, x)(new_params), y)
      rho = damping_lib.reduction_ratio(loss1 - loss0, predicted)
      next_lam = damping_lib.lm_update(rule.adaptive, lam, rho)
      info["reduction_ratio"] = rho.astype(dtype)
      info["loss_after"] = loss1.astype(dtype)
    return new_params, NGDState(state.count + 1, next_lam), info

  return base.Optimizer(init, base.step_on_mesh(step, cfg.mesh))


# --------------------------------------------------------------------------
# As an optax preconditioner.
# --------------------------------------------------------------------------


class NGDPreconditionerState(NamedTuple):
  """State of ``ngd_preconditioner``.

  Attributes:
    count: ``()`` int32, updates made (the damping schedule's argument).
    info: the last update's diagnostics, scalars: ``loss``,
      ``residual_norm``, ``damping`` and the solver's (``cholesky_failed``
      or ``cg_iterations``/``cg_residual``); zeros before the first update.
  """

  count: Array
  info: dict


def ngd_preconditioner(
    model_or_apply,
    damping: float | Callable = 0.0,
    loss="squared",
    solver: str = "cholesky",
    gram_method: str = "auto",
    chunk_size: int | None = None,
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """NGD's direction as an optax transformation (MATH.md 2).

  ``update(updates, state, params, x=x, y=y)`` returns the natural gradient
  ``J^T (G + lam I)^{-1} grad_u L(u)`` at ``params`` on the batch
  ``(x, y)``, in place of ``updates``; chain a step-size rule after it:

      tx = optax.chain(ngd_preconditioner(model), optax.sgd(0.5,
                       momentum=0.9))
      updates, opt_state = tx.update(grads, opt_state, params, x=x, y=y)
      params = optax.apply_updates(params, updates)

  The direction needs ``grad_u L`` (output space), which the incoming
  parameter gradient does not determine, so the incoming ``updates`` are
  *replaced*, not transformed: put transformations that modify the gradient
  (weight decay, clipping) after this one. ``optax.sgd(eta)`` after it is
  exactly ``ngd(model, eta, damping)``.

  Args:
    model_or_apply, damping, loss, solver, gram_method, chunk_size, cg_tol,
      cg_maxiter: as in ``ngd``. Damping is fixed or scheduled; the
      Levenberg-Marquardt rule needs the loss after the step, which a
      gradient transformation never sees (use ``ngd`` for it).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  if isinstance(damping, damping_lib.LevenbergMarquardt):
    raise ValueError(
        "damping: ngd_preconditioner supports a fixed or scheduled damping; "
        "use ngdjax.optim.ngd for Levenberg-Marquardt"
    )
  rule = damping_lib.resolve(damping)
  cfg = _check_config(model_or_apply, loss, solver, gram_method, chunk_size,
                      cg_tol, cg_maxiter)
  solver_keys = (
      ("cholesky_failed",) if solver == "cholesky"
      else ("cg_iterations", "cg_residual", "cg_failed")
  )

  def init_fn(params) -> NGDPreconditionerState:
    dtype = base.param_dtype(params)
    info = {k: jnp.zeros((), dtype) for k in ("loss", "residual_norm",
                                              "damping")}
    for k in solver_keys:
      info[k] = jnp.zeros((), dtype if k == "cg_residual" else jnp.int32)
    return NGDPreconditionerState(jnp.zeros((), jnp.int32), info)

  def update_fn(updates, state, params=None, *, x=None, y=None, **extra):
    del extra  # other transformations' extra arguments
    if params is None:
      raise ValueError("params: ngd_preconditioner.update needs params")
    if x is None or y is None:
      raise ValueError(
          "x, y: pass the batch as extra arguments, "
          "tx.update(grads, state, params, x=x, y=y)"
      )
    x, y = base.check_batch(model_or_apply, params, x, y)
    dtype = base.param_dtype(params)
    lam = jnp.asarray(rule.current(None, state.count), dtype)
    d = _direction(cfg, params, x, y, lam)
    info = {
        "loss": cfg.loss.value(d.u, y).astype(dtype),
        "residual_norm": jnp.linalg.norm(d.u - y).astype(dtype),
        "damping": lam,
    }
    info.update(d.diagnostics)
    direction = jax.tree_util.tree_map(
        lambda t, ref: t.astype(ref.dtype), d.direction, updates
    )
    return direction, NGDPreconditionerState(state.count + 1, info)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

"""Exact natural gradient descent in kernel ("dual") form (docs/math.md).

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
  When ``n`` exceeds one block (``chunk_size``, default 2048 examples), with
  no mesh, for ``fisher="true"`` on a regression loss:
  ``kernel_solve.gram_cholesky_solve``, one ``N x N``
  buffer built and factorised in place, CG as its fallback. With a mesh
  (same cases): ``sharded_solve.gram_cholesky_solve_sharded``, ``G`` kept
  in the block rows each device computed, never gathered. Every Cholesky
  is the library's blocked one (``solvers.blocked_cholesky``): no LAPACK
  call on a matrix larger than ``solvers.CHOLESKY_BLOCK``.
* ``"cg"``: conjugate gradients with matrix-free ``G v`` products, for ``N``
  too large to hold ``G``: ``ngdjax.gram_vp`` in blocks when ``chunk_size``
  is given (memory of one block; a model's own ``gram_product`` instead
  where it has one, ``jacobian.gram_operator``), else the structured form
  ``sum_l J_l (J_l^T v)`` from layer factors for ``Model``s, else one
  ``jax.linearize`` shared by every product. Reports ``cg_iterations``,
  ``cg_residual`` and ``cg_failed`` (1 when CG broke down on a numerically
  singular ``G + lam I``, e.g. zero damping and repeated inputs with
  different targets, and the step came from the damped fallback solve,
  never a ``1 / eps`` step; a ``cg_maxiter`` reached before ``cg_tol``
  shows in ``cg_residual`` only; see ``ngdjax.optim.solvers``). With
  ``preconditioner="nystrom"``: preconditioned CG, the preconditioner of
  rank ``preconditioner_rank`` built from that many examples' Gram columns
  (``ngdjax._src.optim.nystrom``; ``N`` beyond memory); with a mesh it is
  built and applied in the devices' example blocks like the products, its
  ``N x k`` basis never gathered (``nystrom.sharded_factor``).

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
  >>> int(info["cholesky_failed"]), int(info["diverged"])
  (0, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ngdjax._src import checks, gram_forms, structure
from ngdjax._src import precision as precision_lib
from ngdjax._src.jacobian import (
  GramMethod,
  gram,
  gram_operator,
  gram_vp_sharded,
  output_dim,
  outputs,
  parse_gram_method,
  resolve_gram_method,
  split_model,
  vjp,
)
from ngdjax._src.optim import (
  base,
  core,
  kernel_solve,
  mixed_precision,
  nystrom,
  sharded_solve,
  solvers,
)
from ngdjax._src.optim import damping as damping_lib
from ngdjax._src.typing import Array, Params

SOLVERS = ("cholesky", "cg")
# solver="cg": preconditioners (None: plain CG).
PRECONDITIONERS = (None, "nystrom")
# Default rank (pivot examples) of the Nystrom preconditioner: None is
# nystrom.default_rank (from the system size).
PRECONDITIONER_RANK = None


NGDState = core.CurvatureState  # count, damping, learning_rate, ...


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
  fisher: str = "true"
  preconditioner: str | None = None
  preconditioner_rank: int | None = PRECONDITIONER_RANK
  precision: str = "highest"


class _Direction(NamedTuple):
  u: Array  # (n, c) outputs at params
  grad_u: Array  # (n, c) dL/du
  v: Array  # (N,) (G + lam I)^{-1} grad_u
  gv: Array  # (N,) G v: the output change of a unit step is -G v
  direction: Params  # J^T v, shaped like params
  diagnostics: dict  # solver diagnostics (scalars)


def _check_config(
    model_or_apply, loss, solver, gram_method, chunk_size, cg_tol, cg_maxiter,
    fisher="true", preconditioner=None,
    preconditioner_rank=PRECONDITIONER_RANK,
) -> _Config:
  apply, model = split_model(model_or_apply)
  loss = base.check_loss(loss)
  base.check_fisher(fisher, loss)
  checks.check_choice("solver", solver, SOLVERS)
  method = parse_gram_method(gram_method, name="gram_method")
  chunk_size = checks.check_chunk_size(chunk_size)
  checks.check_scalar("cg_tol", cg_tol, nonnegative=True)
  if cg_maxiter is not None:
    checks.check_scalar("cg_maxiter", cg_maxiter, positive=True,
                         integer=True)
    cg_maxiter = int(cg_maxiter)
  checks.check_choice("preconditioner", preconditioner, PRECONDITIONERS)
  if preconditioner is not None and (solver != "cg" or fisher != "true"):
    raise ValueError(
        f"preconditioner={preconditioner!r} needs solver='cg' and "
        f"fisher='true', got solver={solver!r}, fisher={fisher!r}")
  if preconditioner_rank is not None:
    checks.check_scalar("preconditioner_rank", preconditioner_rank,
                        positive=True, integer=True)
    preconditioner_rank = int(preconditioner_rank)
  return _Config(apply, model, loss, solver, method.value, chunk_size,
                 float(cg_tol), cg_maxiter, fisher=fisher,
                 preconditioner=preconditioner,
                 preconditioner_rank=preconditioner_rank)


def _structure(cfg: _Config, params, x):
  """The model's ``Structure`` when the Gram is structured, else ``None``
  (built once per step; every structured path below takes it)."""
  if cfg.gram_method not in ("auto", "structured"):
    return None
  st = structure.model_structure(cfg.model or cfg.apply, params, x)
  if resolve_gram_method(st, params, x, cfg.gram_method) is not (
      GramMethod.STRUCTURED):
    return None
  return st


def _mixed(cfg: _Config) -> bool:
  """Whether the step refines a fast Gram (``ngdjax._src.optim.
  mixed_precision``; the true Fisher of a regression loss, unsharded;
  elsewhere ``"mixed"`` computes as ``"highest"``)."""
  return (cfg.precision == "mixed" and cfg.solver == "cholesky"
          and cfg.mesh is None and cfg.fisher == "true"
          and cfg.loss.hessian is None)


def _gram_operator(cfg: _Config, params, x, f, n, c, st=None):
  """``(G or None, vec -> G vec)`` for the configured solver; ``st`` is
  the model's ``Structure`` (``_structure``) or ``None``."""
  if cfg.solver == "cholesky":
    g_mat = gram(st or cfg.model or cfg.apply, params, x,
                 method=cfg.gram_method, chunk_size=cfg.chunk_size,
                 mesh=cfg.mesh, precision="fast" if _mixed(cfg) else None)
    if cfg.mesh is not None:
      # The N x N factorisation runs replicated: G (row-sharded) is
      # all-gathered once; N^2 words against the N^2 p of the Gram.
      g_mat = jax.lax.with_sharding_constraint(
          g_mat, jax.sharding.NamedSharding(cfg.mesh,
                                            jax.sharding.PartitionSpec()))
    return g_mat, lambda vec: g_mat.astype(vec.dtype) @ vec
  if st is not None and cfg.chunk_size is None and c == 1:
    # All layer factors at once: O(n (d + m)) memory; with chunk_size the
    # blocked gram_vp below keeps memory at O(chunk (d + m)). A product
    # from the factors costs 4 n c T a b flops per layer against about
    # 4 n T a b for the linearised J (J^T v) below, so it only pays for
    # one output per example (where it also skips the network's
    # nonlinearities); with c = 64 outputs it was ~30x slower.
    matvec = gram_forms.product_operator(st, params, x)
    return None, lambda vec: matvec(vec.reshape(n, c)).reshape(-1)
  if cfg.chunk_size is not None:
    # Prepared once for every product: the model's own where it has one
    # (two_layer_relu: the activation pattern kept as bits, two matmuls per
    # product where gram_vp re-runs the forward pass for four); not with a
    # mesh, where gram_vp's blocks follow the examples' sharding.
    model = cfg.model if cfg.mesh is None and st is not None else None
    return None, gram_operator(model or cfg.apply, params, x,
                               cfg.chunk_size)
  # One linearisation shared by every product: J v and J^T v reuse the
  # forward pass instead of re-running it per CG iteration.
  _, jvp_fn = jax.linearize(f, params)
  transpose = jax.linear_transpose(jvp_fn, params)
  return None, lambda vec: jvp_fn(transpose(vec.reshape(n, c))[0]).reshape(-1)


def _solve(cfg: _Config, kernel, matvec, rhs, lam, build=None):
  """``(kernel + lam I)^{-1} rhs``: Cholesky on ``kernel`` or CG on
  ``matvec``; returns ``(solution, diagnostics)``. ``build`` (CG with a
  preconditioner): ``() -> (lam -> (r -> M^{-1} r), diagnostics)``."""
  if kernel is not None:
    sol, failed = solvers.psd_solve(kernel, rhs, lam)
    return sol, {"cholesky_failed": failed}
  maxiter = cfg.cg_maxiter or rhs.shape[0]
  extra, precond = {}, None
  if build is not None:
    inverse, extra = build()
    precond = inverse(lam)
  result = solvers.cg(matvec, rhs, lam, cfg.cg_tol, maxiter,
                      preconditioner=precond)
  return result.x, {"cg_iterations": result.iterations,
                    "cg_residual": result.residual.astype(rhs.dtype),
                    "cg_failed": result.failed, **extra}


def _nystrom_builder(cfg: _Config, params, x, key, rows=None):
  """``() -> (inverse, diagnostics)`` for ``G`` (``rows=None``) or the
  true-Fisher kernel ``S^T G S`` (``rows = S``, ``(n, c, c)``): pivots by
  randomly pivoted Cholesky on kernel columns (``ngdjax._src.optim.nystrom``;
  from the layer factors when the Gram is structured); ``inverse(lam)``
  is ``r -> M^{-1} r``; diagnostics: its rank and build time (seconds,
  host clock) for ``info``. With a mesh, built and applied sharded like
  the products (``nystrom.sharded_factor``, ``nystrom.mesh_inverse``):
  each device holds its examples' rows of the ``N x k`` basis."""
  model = cfg.model or cfg.apply
  key = jax.random.key(0) if key is None else key
  st = _structure(cfg, params, x)
  n = x.shape[0]
  r = rows.shape[-1] if rows is not None else output_dim(model, params, x)
  rank = cfg.preconditioner_rank or nystrom.default_rank(n, r)

  def make_sketch(params, xs, rows):
    if st is not None:
      return nystrom.structured_sketch(st, params, xs, rows=rows,
                                       chunk_size=cfg.chunk_size)
    return nystrom.generic_sketch(model, params, xs, rows=rows,
                                  method=cfg.gram_method,
                                  chunk_size=cfg.chunk_size)

  def build():
    if cfg.mesh is not None:
      # No host clock: a host callback in a step whose inputs sit on an
      # Explicit mesh (jax.make_mesh) fails to lower ("mesh should be the
      # same across the entire program"); the seconds are NaN.
      pre = nystrom.sharded_factor(make_sketch, params, x, cfg.mesh,
                                   rank=rank, key=key, rows=rows)
      return (lambda lam: nystrom.mesh_inverse(pre, lam, cfg.mesh, n * r),
              {"preconditioner_rank": pre.rank,
               "preconditioner_seconds": jnp.full((), jnp.nan,
                                                 pre.basis.dtype)})
    t0 = nystrom.wall_clock(x)
    xs = x + (0.0 * t0).astype(x.dtype)  # built after t0
    sketch = make_sketch(params, xs, rows)
    f = nystrom.rp_cholesky(sketch.columns, sketch.diagonal(), rank, key)
    pre = nystrom.from_factor(f)
    t1 = nystrom.wall_clock(pre.basis)
    return pre.inverse, {"preconditioner_rank": pre.rank,
                         "preconditioner_seconds": (t1 - t0).astype(
                             pre.basis.dtype)}

  return build


def _relative(residual: Array, rhs: Array) -> Array:
  """``||residual|| / ||rhs||`` (0 for ``rhs = 0``)."""
  norm = jnp.linalg.norm(rhs)
  return (jnp.linalg.norm(residual) / jnp.where(norm > 0, norm, 1.0)
          ).astype(rhs.dtype)


def _hessian_kernel_solve(cfg: _Config, params, x, u, y, lam, key, st,
                          g_mat, gmv):
  """The true Fisher of a loss with an output Hessian ``H = S S^T``:
  ``v = S w``, ``(S^T G S + lam I) w = h`` (``ngd`` docstring).

  ``st`` is the ``Structure`` when the kernel is built rows first
  (``gram_forms.row_gram``), else ``None`` (from ``g_mat``, or matrix-free
  through ``gmv``). Returns ``(v, diagnostics, G v or None)``; ``G v`` is
  computed here when CG's true residual needs it.
  """
  n, c = u.shape
  s_mat, h = core.hessian_root(cfg.loss, u, y)
  if st is not None:
    kernel = gram_forms.row_gram(st, params, x, s_mat).astype(u.dtype)
  elif g_mat is not None:
    blocks = g_mat.reshape(n, c, n, c)
    kernel = jnp.einsum("ika,ikjl,jlb->iajb", s_mat, blocks, s_mat)
    kernel = kernel.reshape(n * c, n * c)
  else:
    kernel = None

  def kmv(w):
    sw = jnp.einsum("ikb,ib->ik", s_mat, w.reshape(n, c)).reshape(-1)
    return jnp.einsum("ika,ik->ia", s_mat,
                      gmv(sw).reshape(n, c)).reshape(-1)

  build = (_nystrom_builder(cfg, params, x, key, rows=s_mat)
           if cfg.preconditioner is not None else None)
  w, diagnostics = _solve(cfg, kernel, kmv, h.reshape(-1), lam, build)
  v = jnp.einsum("ikb,ib->ik", s_mat, w.reshape(n, c)).reshape(-1)
  gv = None
  if "cg_residual" in diagnostics:
    # K w = S^T G S w = S^T (G v): the true residual from G v.
    gv = gmv(v)
    kw = jnp.einsum("ika,ik->ia", s_mat, gv.reshape(n, c)).reshape(-1)
    diagnostics["cg_residual"] = _relative(kw + lam * w - h.reshape(-1),
                                           h.reshape(-1))
  return v, diagnostics, gv


def _direction(cfg: _Config, params, x, y, lam, key=None) -> _Direction:
  """``v`` with ``J^T v = (J^T H J + lam I)^{-1} J^T g`` (docs/math.md).

  * ``fisher="true"``, ``H = I`` (regression losses): ``(G + lam I) v = g``.
  * ``fisher="true"`` with an output Hessian: the symmetric form
    ``v = S (S^T G S + lam I)^{-1} h`` (``ngd`` docstring).
  * ``"empirical"``: ``v_i = w_i g_i``, ``(K + lam I) w = 1_n``,
    ``K_ij = g_i^T G_ij g_j``.
  * ``"monte_carlo"``: ``v = (g - w * s) / lam`` with ``s_i`` the gradient
    at a sampled label and ``(K_s + lam I) w = Gamma_s G g`` (Woodbury).
  """
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
  if (cfg.solver == "cholesky" and cfg.mesh is not None
      and cfg.fisher == "true" and cfg.loss.hessian is None):
    # G stays in the block rows its devices computed (sharded_solve).
    v, gv, failed = sharded_solve.gram_cholesky_solve_sharded(
        cfg.model or cfg.apply, params, x, g_flat, lam, cfg.mesh,
        method=cfg.gram_method, chunk_size=cfg.chunk_size)
    direction = pullback(v.reshape(n, c))[0]
    return _Direction(u, g, v, gv, direction, {"cholesky_failed": failed})
  if (cfg.solver == "cholesky" and cfg.mesh is not None
      and cfg.fisher == "true"):
    # An output Hessian S S^T: S^T G S in block rows too (sharded_solve).
    s_mat, h = core.hessian_root(cfg.loss, u, y)
    w, _, failed = sharded_solve.gram_cholesky_solve_sharded(
        cfg.model or cfg.apply, params, x, h.reshape(-1), lam, cfg.mesh,
        method=cfg.gram_method, chunk_size=cfg.chunk_size, rows=s_mat)
    v = jnp.einsum("ikb,ib->ik", s_mat, w.reshape(n, -1)).reshape(-1)
    gv = gram_vp_sharded(cfg.model or cfg.apply, params, x, v, cfg.mesh)
    direction = pullback(v.reshape(n, c))[0]
    return _Direction(u, g, v, gv.astype(u.dtype), direction,
                      {"cholesky_failed": failed})
  if (cfg.solver == "cholesky" and cfg.mesh is None
      and cfg.fisher == "true" and cfg.loss.hessian is None
      and not _mixed(cfg)
      and kernel_solve.use_lean_solve(n, cfg.chunk_size)):
    # More than one Gram block: one N x N buffer, factorised in place.
    v, gv, failed = kernel_solve.gram_cholesky_solve(
        cfg.model or cfg.apply, params, x, g_flat, lam,
        method=cfg.gram_method, chunk_size=cfg.chunk_size)
    direction = pullback(v.reshape(n, c))[0]
    return _Direction(u, g, v, gv, direction, {"cholesky_failed": failed})
  st = _structure(cfg, params, x)
  rows_first = (cfg.solver == "cholesky" and cfg.mesh is None
                and cfg.chunk_size is None and st is not None
                and not (cfg.fisher == "true" and cfg.loss.hessian is None))
  if rows_first:
    # The kernels below are Gamma G Gamma^T for per-example rows Gamma:
    # the rows go through the backward pass first (``gram_forms.row_gram``),
    # never through the N x N Gram.
    g_mat = None
    _, gmv = _gram_operator(cfg._replace(solver="cg"), params, x, f, n, c,
                            st)
  else:
    g_mat, gmv = _gram_operator(cfg, params, x, f, n, c, st)
  if g_mat is not None:
    g_mat = g_mat.astype(u.dtype)

  def kernel_of(rows):
    """``K = Gamma G Gamma^T`` for ``Gamma`` holding ``rows`` ``(n, c)``."""
    if rows_first:
      return gram_forms.row_gram(st, params, x,
                                 rows[:, :, None]).astype(u.dtype)
    if g_mat is None:
      return None
    blocks = g_mat.reshape(n, c, n, c)
    return jnp.einsum("ik,ikjl,jl->ij", rows, blocks, rows)

  def kernel_vp(rows):
    return lambda w: jnp.sum(rows * gmv((rows * w[:, None]).reshape(-1))
                             .reshape(n, c), axis=1)

  precond = cfg.preconditioner is not None
  if _mixed(cfg):
    # The fast Gram preconditions CG on exact products.
    _, exact_gmv = _gram_operator(cfg._replace(solver="cg"), params, x, f,
                                  n, c, st)
    v, diagnostics = mixed_precision.refined_solve(
        g_mat, exact_gmv, g_flat, lam, lambda: gram(
            st or cfg.model or cfg.apply, params, x, method=cfg.gram_method,
            chunk_size=cfg.chunk_size))
  elif cfg.fisher == "true" and cfg.loss.hessian is None:
    build = _nystrom_builder(cfg, params, x, key) if precond else None
    v, diagnostics = _solve(cfg, g_mat, gmv, g_flat, lam, build)
    if "cg_residual" in diagnostics:
      # The true relative residual, from the G v computed below anyway.
      gv = gmv(v)
      diagnostics["cg_residual"] = _relative(gv + lam * v - g_flat, g_flat)
      direction = pullback(v.reshape(n, c))[0]
      return _Direction(u, g, v, gv, direction, diagnostics)
  elif cfg.fisher == "true":
    v, diagnostics, gv = _hessian_kernel_solve(
        cfg, params, x, u, y, lam, key, st if rows_first else None, g_mat,
        gmv)
    if gv is not None:
      direction = pullback(v.reshape(n, c))[0]
      return _Direction(u, g, v, gv, direction, diagnostics)
  elif cfg.fisher == "empirical":
    w, diagnostics = _solve(cfg, kernel_of(g), kernel_vp(g),
                            jnp.ones((n,), u.dtype), lam)
    v = (g * w[:, None]).reshape(-1)
  else:  # monte_carlo
    sampled = cfg.loss.grad(u, cfg.loss.sample(key, u)).astype(u.dtype)
    rhs = jnp.sum(sampled * gmv(g_flat).reshape(n, c), axis=1)
    w, diagnostics = _solve(cfg, kernel_of(sampled), kernel_vp(sampled),
                            rhs, lam)
    v = ((g - sampled * w[:, None]) / lam).reshape(-1)
  gv = gmv(v)
  direction = pullback(v.reshape(n, c))[0]
  return _Direction(u, g, v, gv, direction, diagnostics)


def ngd(
    model_or_apply,
    learning_rate: base.ScalarOrSchedule | str = "adaptive",
    *,
    damping: float | Callable | damping_lib.LevenbergMarquardt | str
    | None = None,
    loss="squared",
    solver: str = "cholesky",
    gram_method: str = "auto",
    chunk_size: int | None = None,
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
    mesh=None,
    fisher: str = "true",
    key=None,
    preconditioner: str | None = None,
    preconditioner_rank: int | None = PRECONDITIONER_RANK,
    precision: str | None = None,
    momentum: float | str | None = None,
    model_batches: int = 1,
    example_inputs=None,
) -> base.Optimizer:
  """Exact NGD, ``theta <- theta - eta (J^T H J + lam I)^{-1} J^T g``.

  docs/math.md (kernel form, cross-entropy Fisher; Theorem 1 for the
  squared loss, Theorem 2 for a general regression loss, the Fisher for
  softmax cross-entropy; on a linear model
  with the squared loss ``eta = 1`` and ``lam = 0`` solve in one step).
  Always through the push-through identity ``(J^T H J + lam I)^{-1} J^T =
  J^T (H G + lam I)^{-1}``: an ``N x N`` (``N = n c``) or ``n x n`` solve,
  never a ``p x p`` matrix.

  Fisher (``fisher=``), with ``g = grad_u L`` and ``H`` the loss's output
  metric (``Loss.hessian``; the identity for the regression losses, so all
  three coincide with today's NGD for ``"true"``):

  * ``"true"`` (exact, default). For ``H = I``: ``(G + lam I) v = g``. For
    softmax cross-entropy ``H`` is singular (``H_i 1 = 0``) and ``H G`` is
    not symmetric, so the symmetric PSD form is used: with ``H_i = S_i
    S_i^T`` and ``g_i = S_i h_i`` (``g_i`` lies in the range of ``H_i``:
    both are orthogonal to ``1``; ``ngdjax.losses.softmax_cross_entropy``
    gives ``S`` and ``h`` in closed form, with probabilities floored at the
    dtype's smallest normal number), ``Z = S^T J`` gives ``F = Z^T Z`` and
    ``J^T g = Z^T h``, so ``(F + lam I)^{-1} J^T g = Z^T (Z Z^T + lam
    I)^{-1} h = J^T S (S^T G S + lam I)^{-1} h``: ``v = S w`` with the
    Cholesky (or CG) solve ``(S^T G S + lam I) w = h``. At ``lam = 0`` the
    pseudo-inverse of ``F`` results (``psd_solve``'s fallback).
  * ``"empirical"``: ``F = U^T U``, rows ``U_i = J_i^T g_i``;
    ``(U^T U + lam I)^{-1} U^T 1 = U^T (K + lam I)^{-1} 1`` with
    ``K_ij = g_i^T G_ij g_j``, an ``n x n`` solve; ``v_i = w_i g_i``.
  * ``"monte_carlo"``: ``U`` built from ``s_i = grad_u l(u_i, y~_i)`` with
    ``y~_i`` drawn from the model (``Loss.sample``, one draw per example
    and step, key in the state). ``J^T g`` is not in the rows' span, so by
    Woodbury (``lam > 0`` required) ``(U^T U + lam I)^{-1} J^T g = J^T (g -
    Gamma_s^T w) / lam`` with ``(K_s + lam I) w = Gamma_s G g``.

  Args:
    model_or_apply: a ``Model`` or ``apply(params, x) -> (n, c)`` with any
      params pytree (flax, equinox, plain) and ``x`` ``(n, ...)``; the
      structured Gram serves both (``ngdjax.describe_structure``).
    learning_rate: ``eta > 0`` (a number or a scalar array, stored in the
      state so one compiled step serves a sweep), a schedule
      ``count -> eta`` (``ngdjax.optim.core``), or ``"adaptive"``
      (default): the step size (and momentum) minimising the damped
      quadratic model on the batch (``ngdjax.optim.quadratic``; one JVP
      and one forward pass more per step).
    damping: ``lam >= 0`` (number or array, stored in the state), a
      schedule ``count -> lam``, ``levenberg_marquardt(...)`` or
      ``"adaptive"`` (``ngdjax.optim.damping``). ``None`` (default):
      ``"adaptive"`` with an adaptive learning rate, else 0.
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``. With
      ``"softmax_cross_entropy"`` the targets are integer labels ``(n,)`` or
      class probabilities ``(n, c)``.
    solver: ``"cholesky"`` (default) or ``"cg"`` (module docstring).
    gram_method: passed to ``ngdjax.gram`` (``"auto"`` is the fastest the
      model allows: structured for ``Model``s).
    chunk_size: examples per block for the Gram / Gram-vector products.
    cg_tol: relative residual at which CG stops.
    cg_maxiter: CG iteration cap (default the system size).
    mesh: optional one-axis ``jax.sharding.Mesh`` (``ngdjax.parallel``): the
      example axis is split over its devices. For the true-Fisher Cholesky
      step each device computes and keeps its block rows of ``G`` (of
      ``S^T G S`` for a loss with an output Hessian, e.g. cross-entropy),
      and the factorisation and solves move ``N x b`` panels, never the
      matrix (``sharded_solve``); the empirical and Monte Carlo kernels are
      gathered and solved replicated; with
      ``solver="cg"`` the Gram-vector products stay sharded (only
      ``p``-sized reductions cross devices), and so does the Nystrom
      preconditioner: each device computes the diagonal and pivot
      columns of its own examples and keeps their rows of the ``N x k``
      basis; only ``k x k`` pieces and the pivots' rows cross devices
      (``nystrom.sharded_factor``, docs/guide/parallel.md). Params stay
      replicated.
      Results equal the unsharded step.
    fisher: ``"true"``, ``"empirical"`` or ``"monte_carlo"`` (above).
    key: PRNG key for ``"monte_carlo"`` and the preconditioner's pivots
      (default ``jax.random.key(0)``).
    preconditioner: ``solver="cg"``, ``fisher="true"`` only: ``"nystrom"``
      preconditions CG with a rank-``preconditioner_rank`` Nystrom
      approximation of the kernel built from that many examples' Gram
      columns, pivots by randomly pivoted Cholesky, never the whole Gram
      (``ngdjax._src.optim.nystrom``); ``None`` is plain CG.
    preconditioner_rank: pivot examples of the preconditioner (``c``
      columns each), rebuilt at every step; ``None``: at most
      ``nystrom.MAX_COLUMNS`` (1024) columns and ``N / nystrom.COLUMN_FRACTION``
      (``nystrom.default_rank``).
    precision: ``"highest"`` (default: float32-accurate curvature on every
      backend), ``"default"``, ``"fast"`` or ``"mixed"`` (the Gram at the
      fast precision, refined to float32 accuracy by preconditioned CG with
      exact products; ``ngdjax._src.optim.mixed_precision``). See
      ``ngdjax.precision``.
    momentum: ``"adaptive"``, a number in ``[0, 1)`` or ``None`` (as in
      ``kfac``).
    model_batches: the batches the quadratic model of
      ``learning_rate="adaptive"`` is built on: 1 (default) or 2 (the
      current and the previous batch). NGD's direction is the exact
      minimiser of the damped model on its own batch, so with 1 the model
      always returns ``learning_rate = 1`` and ``momentum = 0`` (full-batch
      NGD); in mini-batch training 2 lets it weigh the direction fitted to
      this batch against the update fitted to the last one (one
      linearisation and one forward pass more per step;
      docs/guide/step_control.md).
    example_inputs: a batch of inputs ``(n, ...)`` shaped like the
      training batches, for ``model_batches=2`` (the state stores the
      previous batch; every batch must have this shape).

  Returns:
    ``Optimizer(init, step)``; ``step(params, state, x, y)`` returns info
    with ``loss``, ``residual_norm`` (``||u - y||``; ``||p - y||`` for a
    classifier), ``update_norm``, ``damping``, ``learning_rate``, then
    ``cholesky_failed`` (cholesky) or ``cg_iterations`` (products),
    ``cg_residual`` (for ``fisher="true"`` the true relative residual of the
    kernel system, ``||(K + lam I) v - b|| / ||b||``, else CG's recursive
    one) and ``cg_failed`` (cg), with a preconditioner also
    ``preconditioner_rank`` (columns kept) and ``preconditioner_seconds``
    (its build, host wall clock; NaN with a mesh), the fault flags of
    ``ngdjax.optim.core``
    (``diverged``, ``update_skipped``, ``learning_rate_invalid``,
    ``damping_invalid``, ``params_nonfinite``), and for
    Levenberg-Marquardt ``reduction_ratio`` and ``loss_after`` (the loss at
    the new params), and
    with ``precision="mixed"`` ``mixed_products`` (exact Gram-vector
    products), ``mixed_residual`` and ``mixed_fallback`` (1: the Gram was
    rebuilt at ``HIGHEST``).

  Raises:
    ValueError: non-finite or negative ``learning_rate``/``damping``, an
      unknown solver/method/loss/fisher, ``fisher="monte_carlo"`` with zero
      damping, or (from ``step``) non-finite params or a malformed batch.
  """
  cfg = _check_config(model_or_apply, loss, solver, gram_method, chunk_size,
                      cg_tol, cg_maxiter, fisher, preconditioner,
                      preconditioner_rank)._replace(
                          mesh=base.check_mesh(mesh),
                          precision=precision_lib.resolve(precision))
  learning_rate, momentum, damping, _ = core.step_settings(
      learning_rate, momentum, damping)
  _check_monte_carlo_damping(fisher, damping)

  def direction(params, curvature, x, y, lam, key, count):
    del count
    d = _direction(cfg, params, x, y, lam, key)
    return core.Direction(d.u, d.direction, d.gv.reshape(d.u.shape),
                          curvature, d.diagnostics)

  method = core.Method(init=lambda params: (), direction=direction)
  return core.make(model_or_apply, cfg.apply, cfg.loss, learning_rate,
                   damping, method, mesh=cfg.mesh, key=key,
                   precision=cfg.precision, momentum=momentum,
                   model_batches=model_batches, example_inputs=example_inputs)


def _check_monte_carlo_damping(fisher, damping):
  if (fisher == "monte_carlo" and not callable(damping)
      and not isinstance(damping, damping_lib.LevenbergMarquardt)
      and checks.is_concrete(damping) and float(damping) == 0.0):
    raise ValueError(
        'damping must be positive with fisher="monte_carlo" (the Woodbury '
        "form divides by it)"
    )


# --------------------------------------------------------------------------
# As an optax preconditioner.
# --------------------------------------------------------------------------


NGDPreconditionerState = core.PreconditionerState


def ngd_preconditioner(
    model_or_apply,
    damping: float | Callable = 0.0,
    *,
    loss="squared",
    solver: str = "cholesky",
    gram_method: str = "auto",
    chunk_size: int | None = None,
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
    fisher: str = "true",
    key=None,
    preconditioner: str | None = None,
    preconditioner_rank: int | None = PRECONDITIONER_RANK,
    precision: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """NGD's direction as an optax transformation (docs/math.md).

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
      cg_maxiter, fisher, key, preconditioner, preconditioner_rank,
      precision: as in
      ``ngd``. Damping is fixed or scheduled; the
      Levenberg-Marquardt rule needs the loss after the step, which a
      gradient transformation never sees (use ``ngd`` for it).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  cfg = _check_config(model_or_apply, loss, solver, gram_method, chunk_size,
                      cg_tol, cg_maxiter, fisher, preconditioner,
                      preconditioner_rank)._replace(
                          precision=precision_lib.resolve(precision))
  _check_monte_carlo_damping(fisher, damping)
  info_keys = ({"cholesky_failed": jnp.int32} if solver == "cholesky"
               else {"cg_iterations": jnp.int32, "cg_residual": None,
                     "cg_failed": jnp.int32})
  if preconditioner is not None:
    info_keys.update(preconditioner_rank=jnp.int32,
                     preconditioner_seconds=None)
  if _mixed(cfg):
    info_keys.update(mixed_products=jnp.int32, mixed_residual=None,
                     mixed_fallback=jnp.int32)

  def direction(params, curvature, x, y, lam, key, count):
    del count
    d = _direction(cfg, params, x, y, lam, key)
    return core.Direction(d.u, d.direction, None, curvature, d.diagnostics)

  method = core.Method(init=lambda params: (), direction=direction)
  return core.preconditioner(model_or_apply, cfg.loss, damping, method, key,
                             info_keys, "ngd_preconditioner",
                             precision=cfg.precision)

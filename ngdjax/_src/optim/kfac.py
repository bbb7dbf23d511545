"""K-FAC for dense-layer networks, in primal and dual form (MATH.md 4).

Notation (per layer ``l``, from ``Model.layer_factors``): ``A`` ``(n, a)``
the layer inputs, ``B`` ``(n, c, b)`` the backpropagated pre-activation
gradients, so that ``d u[i, k] / d M[a, b] = A[i, a] B[i, k, b]`` for the
layer matrix ``M`` ``(a, b)``. With ``g = grad_u L(u)`` ``(n, c)`` and
``Gamma`` the ``(n, n c)`` matrix ``Gamma[i, (i, k)] = g[i, k]``, the
gradient is ``grad_M L = A^T Gamma B`` and the layer's Gauss-Newton block
``F_l = J_l^T J_l = sum_{i,k} (A_i A_i^T) (x) (B_ik B_ik^T)`` (the GGN of the
squared loss, used as the curvature for every loss, as NGD does in
Theorem 2). K-FAC replaces it, in the library's sum convention, by

    F_kfac,l = (A^T A) (x) (B^T B) / n           (B as an (n c, b) matrix)

and is block-diagonal over layers. With damping on each factor,

    Delta M = - eta * n * (A^T A + lam_A I)^{-1} A^T Gamma B
                        (B^T B + lam_B I)^{-1}.

For ``two_layer_relu`` the layer matrix is ``M = W^T`` ``(d, m)``,
``A = X`` and ``B = S~`` (rows ``s_i = a * S_i / sqrt(m)``), ``Gamma =
diag(r)`` for the squared loss, and this is MATH.md 4's
``Delta W = - eta n (S~^T S~ + lam_S I)^{-1} S~^T R X (X^T X + lam_X I)^{-1}``
transposed (``lam_A = lam_X``, ``lam_B = lam_S``). The two-layer net is
the one-layer special case of the generic code; nothing is special-cased.

Damping (``damping = lam``, ``damping_split``, ``factor_damping``):

* ``"pi"`` (default): factored Tikhonov damping with Martens & Grosse's
  (2015, section 6.3) pi-adjusted split of ``lam`` between the factors of
  ``F_kfac = (A^T A / n) (x) (B^T B)``:
  ``(A^T A / n + pi sqrt(lam) I) (x) (B^T B + sqrt(lam) / pi I)`` with
  ``pi^2 = (tr(A^T A / n) / a) / (tr(B^T B) / b)``, i.e.
  ``lam_A = n pi sqrt(lam)``, ``lam_B = sqrt(lam) / pi``. (The split is the
  same wherever the ``1/n`` is put: ``pi`` absorbs it.)
* ``"exact"``: ``(F_kfac + lam I)^{-1}`` exactly, through eigendecompositions
  of the factors (more expensive than Cholesky: use for references and
  small layers).
* ``factor_damping=(lam_in, lam_out)``: fixed amounts added to ``A^T A`` and
  ``B^T B`` themselves (MATH.md 4's ``lam_X``, ``lam_S`` for the two-layer
  net), on top of either split.

Undamped (``damping=0``, no factor damping) the inverses are
pseudo-inverses, as in MATH.md 4's ``P_S = S~ (S~^T S~)^+ S~^T``.

Primal and dual forms. Each factor is inverted either in its own size
(primal: ``a x a`` for ``A^T A``) or, by the push-through identity
``(A^T A + lam I)^{-1} A^T = A^T (A A^T + lam I)^{-1}``, in the number of
rows (dual: ``n x n``; ``n c x n c`` for the ``B`` side). ``form="auto"``
picks, per factor, whichever is smaller; ``"primal"``/``"dual"`` force one.
Both are exact, so they agree to rounding. For the two-layer net with
``m > n > d`` "auto" is primal on ``X^T X`` and dual on ``S~``: an ``n x n``
solve instead of an ``m x m`` one.

Output-space effect (MATH.md 4): for the two-layer net, undamped,
``J Delta theta = - eta n (P_S * P_X) r``; with ``S~`` of full row rank and
Forster-isotropic inputs (``X^T X = (n/d) I``, unit rows) this is
``- eta d r``, so ``eta = 1/d`` is a full natural-gradient step.

Factors are recomputed on the full batch at every step (no running
averages): the setting of the paper's Theorem 4.

Example:

  >>> import jax, jax.numpy as jnp, ngdjax
  >>> from ngdjax.optim import kfac
  >>> model = ngdjax.two_layer_relu(width=512)
  >>> params = model.init(jax.random.key(0), in_dim=4)
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (16, 4)))
  >>> opt = kfac(model, learning_rate=0.25, damping=1e-3)
  >>> state = opt.init(params)
  >>> params, state, info = jax.jit(opt.step)(params, state, x, x[:, 0])
  >>> info["update_norm"].shape
  ()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ngdjax._src import checks, structure
from ngdjax._src.jacobian import jvp, split_model
from ngdjax._src.linalg import self_outer
from ngdjax._src.optim import base, solvers
from ngdjax._src.optim import damping as damping_lib

Array = jax.Array
Params = Any

FORMS = ("auto", "primal", "dual")
SPLITS = ("pi", "exact")


class KFACState(NamedTuple):
  """State of ``kfac``.

  Attributes:
    count: ``()`` int32, steps taken (the schedules' argument).
    damping: ``()`` float (params dtype): the damping of the next step for
      Levenberg-Marquardt, else the damping of the last step.
  """

  count: Array
  damping: Array


def use_dual(form: str, rows: int, dim: int) -> bool:
  """Whether a factor with ``rows`` rows and ``dim`` columns is solved dual.

  The dual solve is ``rows x rows``, the primal ``dim x dim``; "auto" takes
  the smaller (ties go to primal).
  """
  if form == "auto":
    return rows < dim
  return form == "dual"


def pi_split(inputs: Array, grads: Array, damping) -> tuple[Array, Array]:
  """``(lam_A, lam_B)`` of the pi-adjusted split (module docstring).

  Args:
    inputs: ``A``, ``(n, a)``.
    grads: ``B`` as ``(n c, b)``.
    damping: ``lam >= 0``.

  Returns:
    ``lam_A = n pi sqrt(lam)`` and ``lam_B = sqrt(lam) / pi`` with
    ``pi^2 = (tr(A^T A) / (n a)) / (tr(B^T B) / b)``; ``pi = 1`` when a
    factor is zero (no information to balance).
  """
  n, a = inputs.shape
  mean_a = jnp.sum(jnp.square(inputs)) / (n * a)
  mean_b = jnp.sum(jnp.square(grads)) / grads.shape[1]
  ok = (mean_a > 0) & (mean_b > 0)
  pi = jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a / jnp.where(ok, mean_b,
                                                               1.0), 1.0)),
                 1.0)
  root = jnp.sqrt(jnp.asarray(damping, inputs.dtype))
  return n * pi * root, root / pi


def _gamma_dense(g: Array) -> Array:
  """``Gamma`` ``(n, n c)`` with ``Gamma[i, (i, k)] = g[i, k]``."""
  n, c = g.shape
  eye = jnp.eye(n, dtype=g.dtype)
  return (eye[:, :, None] * g[:, None, :]).reshape(n, n * c)


def factored_update(
    inputs: Array,
    grads: Array,
    g: Array,
    lam_a,
    lam_b,
    dual_a: bool,
    dual_b: bool,
    pinv_a: bool = False,
    pinv_b: bool = False,
) -> tuple[Array, Array]:
  """``n (A^T A + lam_A)^{-1} A^T Gamma B (B^T B + lam_B)^{-1}`` for a layer.

  The products are ordered so that no ``(n, n c)`` intermediate is formed
  unless both factors are dual, and every solve has as few right-hand sides
  as the form allows (for the two-layer net with a dual ``S~`` side: an
  ``n x n`` solve against ``d`` columns).

  Args:
    inputs: ``A`` ``(n, a)``.
    grads: ``B`` ``(n, c, b)``.
    g: ``grad_u L`` ``(n, c)``.
    lam_a, lam_b: damping added to ``A^T A`` and ``B^T B``.
    dual_a, dual_b: solve that factor in dual (push-through) form.
    pinv_a, pinv_b: use pseudo-inverses (zero damping, singular factor).

  Returns:
    ``(delta (a, b), failed)``: the preconditioned gradient (the update is
    ``-eta * delta``) and the number of Cholesky fallbacks.
  """
  n, c, b = grads.shape
  a = inputs.shape[1]
  bf = grads.reshape(n * c, b)

  def right_dual(t):  # t (r, n c) -> t (B B^T + lam_B)^{-1} B, (r, b)
    s, failed = solvers.psd_solve(self_outer(bf), t.T, lam_b, pinv=pinv_b)
    return s.T @ bf, failed

  def right_primal(y):  # y (r, b) = t B -> y (B^T B + lam_B)^{-1}
    s, failed = solvers.psd_solve(self_outer(bf.T), y.T, lam_b, pinv=pinv_b)
    return s.T, failed

  if dual_a and dual_b:
    # K = (A A^T + lam_A)^{-1} Gamma (B B^T + lam_B)^{-1} is (n, n c) and
    # delta = A^T K B; multiply out in the cheaper order (flops / 2n):
    # (A^T K) B costs n^2 c + a c (n + b), A^T (K B) costs b (n + n c + a).
    k_t, f1 = solvers.psd_solve(self_outer(bf), _gamma_dense(g).T, lam_b,
                                pinv=pinv_b)  # K^T before the A side
    if n * n * c + a * c * (n + b) < b * (n + n * c + a):
      k, f2 = solvers.psd_solve(self_outer(inputs), k_t.T, lam_a, pinv=pinv_a)
      delta = (inputs.T @ k) @ bf
    else:
      s, f2 = solvers.psd_solve(self_outer(inputs), k_t.T @ bf, lam_a,
                                pinv=pinv_a)
      delta = inputs.T @ s
  elif dual_a:
    t, f1 = right_primal(jnp.einsum("ik,ikb->ib", g, grads))
    s, f2 = solvers.psd_solve(self_outer(inputs), t, lam_a, pinv=pinv_a)
    delta = inputs.T @ s
  elif dual_b:
    # A^T Gamma as (a, n c): column (i, k) is A[i] g[i, k].
    z = (inputs.T[:, :, None] * g[None, :, :]).reshape(a, n * c)
    t, f1 = right_dual(z)
    delta, f2 = solvers.psd_solve(self_outer(inputs.T), t, lam_a, pinv=pinv_a)
  else:
    t, f1 = right_primal(inputs.T @ jnp.einsum("ik,ikb->ib", g, grads))
    delta, f2 = solvers.psd_solve(self_outer(inputs.T), t, lam_a, pinv=pinv_a)
  return n * delta, f1 + f2


def exact_update(
    inputs: Array,
    grads: Array,
    g: Array,
    damping,
    lam_a,
    lam_b,
    dual_a: bool,
    dual_b: bool,
) -> Array:
  """``(F_kfac + lam I)^{-1} vec(A^T Gamma B)`` for a layer, exactly.

  ``F_kfac = (A^T A + lam_A I) (x) (B^T B + lam_B I) / n``. With
  ``A^T A = Q_A diag(alpha) Q_A^T`` and ``B^T B = Q_B diag(beta) Q_B^T`` the
  result is ``Q_A [(Q_A^T G_M Q_B) / ((alpha + lam_A)(beta + lam_B)^T / n +
  lam)] Q_B^T``. In dual form the eigenvectors come from ``A A^T = U diag
  U^T`` (``A^T U`` spans the range of ``A^T A``, and the gradient has no
  component outside it): ``A^T U [(U^T Gamma ...) / ...]``, with no division
  by singular values. Eigenvalues below ``k eps max`` count as 0 and a zero
  denominator as a pseudo-inverse.

  Returns:
    ``(a, b)``: the preconditioned gradient (the update is ``-eta`` times
    it).
  """
  n, c, b = grads.shape
  bf = grads.reshape(n * c, b)
  if dual_b:
    eb, ub = jnp.linalg.eigh(self_outer(bf))
    right = jnp.einsum("ik,ikq->iq", g, ub.reshape(n, c, n * c))
  else:
    eb, qb = jnp.linalg.eigh(self_outer(bf.T))
    right = jnp.einsum("ik,ikb->ib", g, grads) @ qb
  if dual_a:
    ea, ua = jnp.linalg.eigh(self_outer(inputs))
    core = ua.T @ right
  else:
    ea, qa = jnp.linalg.eigh(self_outer(inputs.T))
    core = qa.T @ (inputs.T @ right)
  ea = solvers.clamp_spectrum(ea) + lam_a
  eb = solvers.clamp_spectrum(eb) + lam_b
  den = ea[:, None] * eb[None, :] / n + damping
  core = core * jnp.where(den > 0, 1.0 / jnp.where(den > 0, den, 1.0), 0.0)
  core = (core @ ub.T) @ bf if dual_b else core @ qb.T
  return inputs.T @ (ua @ core) if dual_a else qa @ core


def _check_model(model):
  """A ``Model`` or a bare ``apply`` (its layers are found when tracing)."""
  split_model(model)  # ValueError naming the argument if neither
  return model


def kfac(
    model,
    learning_rate: base.ScalarOrSchedule,
    damping: float | Callable | damping_lib.LevenbergMarquardt = 0.0,
    loss="squared",
    form: str = "auto",
    damping_split: str = "pi",
    factor_damping: tuple[float, float] | None = None,
    mesh=None,
) -> base.Optimizer:
  """K-FAC with exact full-batch factors (MATH.md 4; module docstring).

  ``Delta M_l = - eta n (A^T A + lam_A)^{-1} A^T Gamma B (B^T B +
  lam_B)^{-1}`` for every layer ``l`` (or the exact ``(F_kfac + lam
  I)^{-1}`` with ``damping_split="exact"``).

  Args:
    model: a ``Model`` with layer factors (``two_layer_relu``, ``mlp``),
      or a bare ``apply(params, x)`` with any params pytree (flax,
      equinox, plain) and ``x`` ``(n, ...)``: its dense layers are found in
      the traced computation (``ngdjax.describe_structure``) and get the
      K-FAC update; all unmatched leaves together (layer norms, convolution
      kernels, shared weights) get their exact damped Gauss-Newton block
      ``(J_g^T J_g + lam I)^{-1} J_g^T grad_u L``, solved in kernel form
      (``N x N``, ``N = n c``; a pseudo-inverse when ``damping=0``).
    learning_rate: ``eta > 0`` or a schedule ``count -> eta``.
    damping: ``lam >= 0``, a schedule, or ``levenberg_marquardt(...)`` (the
      predicted reduction uses ``J delta`` from one JVP).
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``; its gradient
      ``grad_u L`` replaces the residual ``r``.
    form: ``"auto"`` (per factor, the smaller solve), ``"primal"`` or
      ``"dual"``.
    damping_split: ``"pi"`` or ``"exact"``.
    factor_damping: optional ``(lam_in, lam_out) >= 0`` added to ``A^T A``
      and ``B^T B`` of every layer.
    mesh: optional one-axis ``jax.sharding.Mesh``: the example axis of the
      batch is split over its devices and the factor products
      (``A^T A``, ``B^T B`` or their dual ``n x n`` forms) are partitioned
      by the SPMD compiler, reductions over examples becoming all-reduces;
      the factor solves run replicated. Results equal the unsharded step.

  Returns:
    ``Optimizer(init, step)``. Info: ``loss``, ``residual_norm``,
    ``update_norm``, ``damping``, ``learning_rate``, ``cholesky_failed``
    (factor solves that fell back to the pseudo-inverse, summed over
    layers), and for Levenberg-Marquardt ``reduction_ratio`` and
    ``loss_after``.

  Raises:
    ValueError: a model that is neither a Model nor callable, bad
      hyper-parameters, or
      (from ``step``) a malformed batch.
  """
  model = _check_model(model)
  lr_fn = base.check_learning_rate(learning_rate)
  base.check_mesh(mesh)
  rule = damping_lib.resolve(damping)
  loss = base.check_loss(loss)
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
  if damping_split not in SPLITS:
    raise ValueError(
        f"damping_split must be one of {SPLITS}, got {damping_split!r}"
    )
  if factor_damping is None:
    lam_in, lam_out = 0.0, 0.0
  else:
    try:
      lam_in, lam_out = factor_damping
    except (TypeError, ValueError):
      raise ValueError(
          "factor_damping must be a pair (lam_in, lam_out), got "
          f"{factor_damping!r}"
      ) from None
    checks.check_scalar("factor_damping[0]", lam_in, nonnegative=True)
    checks.check_scalar("factor_damping[1]", lam_out, nonnegative=True)
    lam_in, lam_out = float(lam_in), float(lam_out)

  def preconditioned(params, x, g, lam):
    """Per layer ``(F_kfac,l + damping)^{-1} grad_l``, as params."""
    deltas, failed = [], jnp.zeros((), jnp.int32)
    st = structure.layer_structure(model, params, x)
    for f in st.layer_factors(params, x):
      n, c, b = f.output_grads.shape
      dual_a = use_dual(form, n, f.inputs.shape[1])
      dual_b = use_dual(form, n * c, b)
      if damping_split == "exact":
        delta = exact_update(f.inputs, f.output_grads, g, lam, lam_in,
                             lam_out, dual_a, dual_b)
      else:
        split_a, split_b = pi_split(f.inputs, f.output_grads.reshape(n * c, b),
                                    lam)
        delta, fl = factored_update(
            f.inputs, f.output_grads, g, lam_in + split_a, lam_out + split_b,
            dual_a, dual_b,
            pinv_a=rule.static_zero and lam_in == 0.0,
            pinv_b=rule.static_zero and lam_out == 0.0,
        )
        failed = failed + fl
      deltas.append(delta)
    generic = None
    if st.generic_jacobian is not None:
      # Unmatched leaves: their exact damped Gauss-Newton block, in kernel
      # form (J_g^T J_g + lam)^{-1} J_g^T g = J_g^T (J_g J_g^T + lam)^{-1} g.
      jac = st.generic_jacobian(params, x)
      v, fl = solvers.psd_solve(self_outer(jac), g.reshape(-1), lam,
                                pinv=rule.static_zero)
      generic, failed = jac.T @ v, failed + fl
    return st.from_layer_matrices(deltas, generic), failed

  def init(params) -> KFACState:
    dtype = base.param_dtype(params)
    return KFACState(jnp.zeros((), jnp.int32), jnp.asarray(rule.initial, dtype))

  def step(params, state: KFACState, x, y):
    x, y = base.check_batch(model, params, x, y)
    x, y = base.shard_batch(x, y, mesh)
    apply = split_model(model)[0]
    dtype = state.damping.dtype
    lam = jnp.asarray(rule.current(state.damping, state.count), dtype)
    lr = jnp.asarray(lr_fn(state.count), dtype)
    u = base.outputs_fn(apply, x)(params)
    g = loss.grad(u, y).astype(u.dtype)
    direction, failed = preconditioned(params, x, g, lam)
    new_params = base.tree_axpy(-lr, direction, params)
    loss0 = loss.value(u, y)
    info = base.base_info(loss0, u, y, lr * base.tree_norm(direction), lam,
                          lr, dtype)
    info["cholesky_failed"] = failed
    next_lam = lam
    if rule.adaptive is not None:
      step_tree = jax.tree_util.tree_map(lambda t: -lr * t, direction)
      du = jvp(model, params, x, step_tree).reshape(u.shape)
      predicted = loss.value(u + du, y) - loss0
      loss1 = loss.value(base.outputs_fn(apply, x)(new_params), y)
      rho = damping_lib.reduction_ratio(loss1 - loss0, predicted)
      next_lam = damping_lib.lm_update(rule.adaptive, lam, rho)
      info["reduction_ratio"] = rho.astype(dtype)
      info["loss_after"] = loss1.astype(dtype)
    return new_params, KFACState(state.count + 1, next_lam), info

  return base.Optimizer(init, base.step_on_mesh(step, mesh))

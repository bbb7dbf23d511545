"""Exact NGD against dense references, and its rates (docs/math.md,
"Natural gradient in kernel form").

References are computed in numpy from a dense ``jax.jacrev`` Jacobian; each
test compiles as few functions as it can, since compilation dominates the
run time of tiny problems. The dense-reference step tests run with and
without ``jit`` (``chex.variants``).
"""

import functools
import math
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

import ngdjax
from ngdjax.optim import (
    levenberg_marquardt,
    ngd,
    ngd_preconditioner,
    optax_optimizer,
)


def _unit_rows(n, d, seed):
  x = np.random.default_rng(seed).standard_normal((n, d))
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _targets(n, c, seed=0):
  y = np.random.default_rng(seed).standard_normal((n, c))
  return jnp.asarray(y if c > 1 else y[:, 0])


def _init(model, d, seed):
  """Gaussian params shaped like ``model.init``'s, drawn by numpy."""
  shapes = jax.eval_shape(lambda k: model.init(k, d), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape)), shapes)


def _linear(params, x):
  return x @ params["w"]


def _tanh_net(params, x):
  return jnp.tanh(x @ params[0]) @ params[1]


def _np_loss(name, e):
  """``(value, grad)`` of a loss at residuals ``e = u - y``, in numpy."""
  if name == "squared":
    return 0.5 * np.sum(e**2), e
  assert name == "squared_log_cosh"  # alpha = 1
  return np.sum(0.5 * e**2 + np.log(np.cosh(e))), e + np.tanh(e)


def _cases():
  rng = np.random.default_rng(3)
  return [
      ("two_layer_c1", ngdjax.two_layer_relu(16)),
      ("two_layer_c2", ngdjax.two_layer_relu(16, out_dim=2, nu=0.7)),
      ("mlp_c2", ngdjax.mlp([6, 5], out_dim=2, activation="tanh")),
      ("bare_tanh", _tanh_net,
       [jnp.asarray(rng.standard_normal((3, 7))),
        jnp.asarray(rng.standard_normal((7, 2)))]),
  ]


CASES = [c if len(c) == 3 else (*c, _init(c[1], 3, seed=4)) for c in _cases()]
IDS = [c[0] for c in CASES]


@functools.partial(jax.jit, static_argnums=0)
def _dense_jacobian(fn, params, x):
  """The dense ``(J, vec(u))`` of ``fn`` at ``params`` by ``jax.jacrev``."""
  apply = getattr(fn, "apply", fn)
  flat, unravel = ravel_pytree(params)
  out = lambda f: apply(unravel(f), x).reshape(-1)  # noqa: E731
  return jax.jacrev(out)(flat), out(flat)


def _run_and_reference(opt, fn, params, x, y, lr, lam, loss_name,
                       variant=jax.jit):
  """The step and ``ref = -eta J^T (J J^T + lam I)^{-1} g`` (numpy).

  The step from ``opt.init`` runs under ``variant`` (``jax.jit`` or a chex
  variant's wrapper). Returns a namespace with ``delta`` (flat
  ``theta_new - theta``), ``ref``, ``info``, ``state``, ``jac`` ``(N, p)``,
  ``u`` and ``g`` (``(N,)``) and ``loss`` (the loss at ``u``).
  """
  step = variant(lambda p, a, b: opt.step(p, opt.init(p), a, b))
  new, state, info = jax.tree_util.tree_map(np.asarray, step(params, x, y))
  delta = np.asarray(ravel_pytree(new)[0] - ravel_pytree(params)[0])
  jac, u = map(np.asarray, _dense_jacobian(fn, params, x))
  loss, g = _np_loss(loss_name, u - np.asarray(y).reshape(-1))
  v = np.linalg.solve(jac @ jac.T + lam * np.eye(len(u)), g)
  return types.SimpleNamespace(delta=delta, ref=-lr * jac.T @ v, info=info,
                               state=state, jac=jac, u=u, g=g, loss=loss)


# One (damping, loss) setting per model keeps the number of compilations low
# while every model, both losses and both damping regimes are covered.
SETTINGS = [(0.0, "squared"), (0.3, "squared_log_cosh"), (0.3, "squared"),
            (0.0, "squared_log_cosh")]


# The structured case (mlp: several layers, c = 2) uses the factored
# product sum_l J_l (J_l^T v); bare functions use jax.linearize or gram_vp.
CG_CASES = [
    ("mlp_c2_structured", CASES[2][1], CASES[2][2], None, "auto"),
    ("bare_linearized", CASES[3][1], CASES[3][2], None, "auto"),
    ("bare_gram_vp_chunked", CASES[3][1], CASES[3][2], 2, "products"),
]


class DenseReferenceTest(chex.TestCase):
  """The exact NGD step against its dense reference, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (case[0], case, setting)
      for case, setting in zip(CASES, SETTINGS, strict=True))
  def test_cholesky_update_matches_dense(self, case, setting):
    _, fn, params = case
    lam, loss_name = setting
    x = _unit_rows(5, 3, seed=1)
    c = 1 if "c1" in case[0] else 2
    y = _targets(5, c)
    opt = ngd(fn, 0.7, damping=lam, loss=loss_name)
    r = _run_and_reference(opt, fn, params, x, y, 0.7, lam, loss_name,
                           self.variant)
    delta, jac, g = r.delta, r.jac, r.g
    np.testing.assert_allclose(delta, r.ref, rtol=1e-9, atol=1e-11)
    assert int(r.info["cholesky_failed"]) == 0
    np.testing.assert_allclose(r.info["update_norm"], np.linalg.norm(r.ref),
                               rtol=1e-9)
    np.testing.assert_allclose(r.info["loss"], r.loss, rtol=1e-12)
    np.testing.assert_allclose(r.info["residual_norm"],
                               np.linalg.norm(r.u - np.asarray(y).ravel()),
                               rtol=1e-12)
    if lam == 0.0:
      # J^T G^{-1} g = J^+ g = F^+ J^T g for full row rank J (N < p).
      np.testing.assert_allclose(delta, -0.7 * np.linalg.pinv(jac) @ g,
                                 rtol=1e-7, atol=1e-9)
      fisher = jac.T @ jac
      np.testing.assert_allclose(
          delta, -0.7 * np.linalg.pinv(fisher, rcond=1e-10) @ (jac.T @ g),
          rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(CG_CASES)
  def test_cg_update_matches_dense(self, fn, params, chunk_size, method):
    x = _unit_rows(5, 3, seed=2)
    y = _targets(5, 2, seed=1)
    opt = ngd(fn, 0.5, damping=0.2, solver="cg", cg_tol=1e-13,
              cg_maxiter=200, chunk_size=chunk_size, gram_method=method)
    r = _run_and_reference(opt, fn, params, x, y, 0.5, 0.2, "squared",
                           self.variant)
    np.testing.assert_allclose(r.delta, r.ref, rtol=1e-9, atol=1e-11)
    assert 0 < int(r.info["cg_iterations"]) <= 200
    assert float(r.info["cg_residual"]) <= 1e-13
    assert int(r.info["cg_failed"]) == 0


@functools.partial(jax.jit, static_argnums=(0, 1))
def _one_step(fn, loss_name, params, x, y, eta):
  """One NGD step with a traced step size (one compilation for all eta)."""
  opt = ngd(fn, lambda count: eta, loss=loss_name)
  return opt.step(params, opt.init(params), x, y)


def test_linear_model_converges_in_one_step():
  """Linear model: ``eta = 1`` gives ``u = y`` after one step (docs/math.md,
  "Natural gradient in kernel form")."""
  x = _unit_rows(6, 10, seed=6)
  y = _targets(6, 3, seed=6)
  w = np.random.default_rng(7).standard_normal((10, 3))
  params = {"w": jnp.asarray(w)}
  r0 = np.asarray(x) @ w - np.asarray(y)
  new, _, info = _one_step(_linear, "squared", params, x, y, 1.0)
  np.testing.assert_allclose(info["residual_norm"], np.linalg.norm(r0))
  np.testing.assert_allclose(np.asarray(x) @ np.asarray(new["w"]), y,
                             atol=1e-12)
  # eta = 0.3: the residual shrinks by exactly 1 - eta.
  new, _, _ = _one_step(_linear, "squared", params, x, y, 0.3)
  np.testing.assert_allclose(
      np.asarray(x) @ np.asarray(new["w"]) - np.asarray(y), 0.7 * r0,
      atol=1e-12)


@pytest.fixture(scope="module")
def wide():
  """n = 32 unit rows, m = 16384: Conditions 1-2 hold (docs/math.md,
  "The theorems, as the experiments check them")."""
  n, d, m = 32, 8, 16384
  model = ngdjax.two_layer_relu(m)
  params = _init(model, d, seed=11)
  x = _unit_rows(n, d, seed=11)
  y = jnp.asarray(np.random.default_rng(12).choice([-1.0, 1.0], n))
  return model, params, x, y


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _trajectory(model, loss_name, steps, params, x, y, eta):
  """``||u(k) - y||^2`` for ``k = 0..steps`` of NGD with a traced eta."""
  opt = ngd(model, lambda count: eta, loss=loss_name)

  def body(carry, _):
    p, s = carry
    sq = jnp.sum((model.apply(p, x)[:, 0] - y) ** 2)
    p, s, _ = opt.step(p, s, x, y)
    return (p, s), sq

  (p, _), sq = jax.lax.scan(body, (params, opt.init(params)), None,
                            length=steps)
  return jnp.append(sq, jnp.sum((model.apply(p, x)[:, 0] - y) ** 2))


@pytest.mark.parametrize("eta", [0.25, 0.5])
def test_theorem1_contraction_on_a_wide_net(wide, eta):
  sq = np.asarray(_trajectory(wide[0], "squared", 4, *wide[1:], eta))
  ratios = sq[1:] / sq[:-1]
  # Theorem 1's bound, and the linearised rate (1 - eta)^2 it is loose for.
  assert np.all(ratios <= 1 - eta), ratios
  np.testing.assert_allclose(ratios, (1 - eta) ** 2, atol=0.03)


def test_eta_one_reaches_1e6_of_the_initial_loss_in_3_steps(wide):
  sq = np.asarray(_trajectory(wide[0], "squared", 4, *wide[1:], 1.0))
  assert sq[3] <= 1e-6 * sq[0], sq


@pytest.mark.parametrize("eta", [0.25, 0.5])
def test_theorem2_rate_on_squared_log_cosh(wide, eta):
  """``||u - y||^2`` contracts by ``1 - 2 eta mu L / (mu + L)`` per step."""
  loss = ngdjax.losses.squared_log_cosh(alpha=1.0)
  sq = np.asarray(_trajectory(wide[0], "squared_log_cosh", 3, *wide[1:],
                              eta))
  ratios = sq[1:] / sq[:-1]
  bound = 1 - eta * loss.rate_factor
  assert np.all(ratios <= bound), (ratios, bound)
  # The squared loss's rate (1 - eta)^2 is beaten: the log-cosh term really
  # changes the step.
  assert np.all(ratios < (1 - eta) ** 2 - 0.01), ratios


def test_cholesky_failure_falls_back_in_float32():
  """Rank-4 Gram of 64 examples in float32: Cholesky gives NaN, the step
  does not, and it equals the float64 minimum-norm step."""
  x64 = np.asarray(_unit_rows(64, 4, seed=9))
  y64 = np.asarray(_targets(64, 1, seed=9))
  x, y = jnp.asarray(x64, jnp.float32), jnp.asarray(y64, jnp.float32)
  params = {"w": jnp.full((4,), 0.1, jnp.float32)}
  opt = ngd(_linear, 1.0)

  @jax.jit
  def run(p, a, b):
    chol = jnp.linalg.cholesky(a @ a.T)
    return jnp.all(jnp.isfinite(chol)), opt.step(p, opt.init(p), a, b)

  chol_ok, (new, state, info) = run(params, x, y)
  assert not chol_ok, "precondition: float32 Cholesky of this Gram must fail"
  assert int(info["cholesky_failed"]) == 1
  assert new["w"].dtype == jnp.float32 and state.damping.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(new["w"])))
  ref = 0.1 - np.linalg.pinv(x64) @ (x64 @ np.full(4, 0.1) - y64)
  np.testing.assert_allclose(new["w"], ref, rtol=2e-3, atol=2e-3)


def test_second_call_does_not_recompile():
  params = {"w": jnp.zeros((3, 2))}
  x = _unit_rows(6, 3, seed=0)
  y = _targets(6, 2)
  opt = ngd(_linear, 0.5, damping=levenberg_marquardt(init=1e-2))
  chex.clear_trace_counter()  # the counter is keyed by code location
  step = jax.jit(chex.assert_max_traces(opt.step, n=1))
  p, s, _ = step(params, opt.init(params), x, y)
  p, s, _ = step(p, s, x, y)
  p, s, _ = step(p, s, x, y)
  assert step._cache_size() == 1


def _sin_net(params, x):
  return jnp.sin(3.0 * x @ params["w"])


def test_levenberg_marquardt_ratio_matches_a_dense_prediction():
  """rho = actual / (L(u + J delta) - L(u)), J from jacrev."""
  params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((3,
                                                                       2)))}
  x = _unit_rows(4, 3, seed=1)
  y = _targets(4, 2, seed=2)
  lm = levenberg_marquardt(init=0.05, decrease=0.5, increase=4.0)
  opt = ngd(_sin_net, 1.0, damping=lm, loss="squared_log_cosh")
  r = _run_and_reference(opt, _sin_net, params, x, y, 1.0, 0.05,
                         "squared_log_cosh")
  delta, info, state, jac = r.delta, r.info, r.state, r.jac
  u = np.sin(3.0 * np.asarray(x) @ np.asarray(params["w"])).reshape(-1)
  w_new = np.asarray(params["w"]) + delta.reshape(3, 2)
  u_new = np.sin(3.0 * np.asarray(x) @ w_new).reshape(-1)
  yv = np.asarray(y).reshape(-1)
  loss0 = _np_loss("squared_log_cosh", u - yv)[0]
  predicted = _np_loss("squared_log_cosh", u + jac @ delta - yv)[0] - loss0
  rho = (_np_loss("squared_log_cosh", u_new - yv)[0] - loss0) / predicted
  np.testing.assert_allclose(info["reduction_ratio"], rho, rtol=1e-9)
  np.testing.assert_allclose(info["damping"], 0.05)
  expected = 0.05 * (4.0 if rho < 0.25 else 0.5 if rho > 0.75 else 1.0)
  np.testing.assert_allclose(state.damping, expected, rtol=1e-12)


def test_levenberg_marquardt_relaxes_when_linear_boosts_when_not():
  x = _unit_rows(5, 8, seed=3)
  y = _targets(5, 1, seed=3)
  params = {"w": jnp.zeros((8,))}
  lm = levenberg_marquardt(init=1.0)

  @jax.jit
  def run(p, a, b, p_sin):
    linear = ngd(_linear, 1.0, damping=lm)
    # A step far outside the region where sin's linearisation holds.
    wiggly = ngd(lambda q, z: jnp.sin(20.0 * z @ q["w"]), 1.0, damping=lm)
    return (linear.step(p, linear.init(p), a, b)[1:],
            wiggly.step(p_sin, wiggly.init(p_sin), a, 3 * b)[1:])

  (state, info), (state_sin, info_sin) = run(params, x, y,
                                             {"w": jnp.ones((8,))})
  np.testing.assert_allclose(info["reduction_ratio"], 1.0, rtol=1e-10)
  np.testing.assert_allclose(state.damping, 2.0 / 3.0)
  assert float(info_sin["reduction_ratio"]) < 0.25
  np.testing.assert_allclose(state_sin.damping, 1.5)


def test_damping_and_learning_rate_schedules():
  fn, params = CASES[0][1], CASES[0][2]
  x = _unit_rows(5, 3, seed=8)
  y = _targets(5, 1, seed=8)
  opt = ngd(fn, optax.linear_schedule(1.0, 0.5, 4),
            damping=lambda count: 0.5 ** count)

  @jax.jit
  def three_steps(p, a, b):
    def body(carry, _):
      p, s = carry
      p_new, s, info = opt.step(p, s, a, b)
      return (p_new, s), (p_new["W"] - p["W"], info)

    return jax.lax.scan(body, (p, opt.init(p)), None, length=3)[1]

  deltas, infos = three_steps(params, x, y)
  out = [(deltas[k].ravel(), {key: v[k] for key, v in infos.items()})
         for k in range(3)]
  outputs = lambda w: fn.apply({"W": w}, x)[:, 0]  # noqa: E731
  jac_and_u = jax.jit(lambda w: (jax.jacrev(outputs)(w), outputs(w)))
  w = np.asarray(params["W"])
  for k, (delta, info) in enumerate(out):
    lr, lam = 1.0 - 0.125 * k, 0.5**k
    np.testing.assert_allclose(info["damping"], lam)
    np.testing.assert_allclose(info["learning_rate"], lr)
    jac, u = map(np.asarray, jac_and_u(jnp.asarray(w)))
    jac = jac.reshape(5, -1)
    r = u - np.asarray(y)
    ref = -lr * jac.T @ np.linalg.solve(jac @ jac.T + lam * np.eye(5), r)
    np.testing.assert_allclose(delta, ref, rtol=1e-9, atol=1e-11)
    w = w + np.asarray(delta).reshape(w.shape)


def _losses(opt, params, x, y, steps):
  """Losses before each of ``steps`` jitted steps and after the last."""
  step = jax.jit(opt.step)
  state = opt.init(params)
  losses = []
  for _ in range(steps + 1):
    params, state, info = step(params, state, x, y)
    losses.append(float(info["loss"]))
  return np.asarray(losses)


def test_optax_preconditioner_equals_ngd_and_trains_with_momentum():
  model = ngdjax.two_layer_relu(64, out_dim=2)
  params = _init(model, 3, seed=4)
  x = _unit_rows(6, 3, seed=10)
  y = _targets(6, 2, seed=10)
  tx = optax.chain(ngd_preconditioner(model, damping=1e-3), optax.sgd(0.5))
  opt = ngd(model, 0.5, damping=1e-3)

  @jax.jit
  def both(p, a, b):
    grads = jax.tree_util.tree_map(jnp.zeros_like, p)
    updates, state = tx.update(grads, tx.init(p), p, x=a, y=b)
    return updates, state, opt.step(p, opt.init(p), a, b)[0]

  updates, state, new = both(params, x, y)
  np.testing.assert_allclose(updates["W"], new["W"] - params["W"],
                             rtol=1e-10)
  info = state[0].info
  assert int(info["cholesky_failed"]) == 0
  np.testing.assert_allclose(info["damping"], 1e-3)

  # In the library's optax wrapper, with momentum and the CG solver.
  tx = optax.chain(ngd_preconditioner(model, damping=1e-3, solver="cg"),
                   optax.sgd(0.5, momentum=0.5))
  losses = _losses(optax_optimizer(model, tx), params, x, y, steps=12)
  assert losses[-1] < 1e-2 * losses[0], losses


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"learning_rate": lambda c: -0.1}, "learning_rate"),
        ({"damping": -1e-3}, "damping"),
        ({"damping": math.inf}, "damping"),
        ({"damping": lambda c: math.nan}, "damping"),
        ({"solver": "lu"}, "solver"),
        ({"gram_method": "fast"}, "gram_method"),
        ({"loss": "hinge"}, "loss"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"cg_tol": -1.0}, "cg_tol"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
  args = {"learning_rate": 1.0, **kwargs}
  with pytest.raises(ValueError, match=match):
    ngd(ngdjax.two_layer_relu(8), **args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"init": 0.0}, "init"),
        ({"decrease": 1.5}, "decrease"),
        ({"increase": 0.5}, "increase"),
        ({"lower": 0.8, "upper": 0.5}, "lower"),
        ({"min_damping": -1.0}, "min_damping"),
    ],
)
def test_bad_levenberg_marquardt_settings_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    levenberg_marquardt(**kwargs)


def test_bad_batches_raise():
  model = ngdjax.two_layer_relu(8, out_dim=2)
  params = _init(model, 3, seed=0)
  opt = ngd(model, 1.0)
  state = opt.init(params)
  x = _unit_rows(5, 3, seed=0)
  with pytest.raises(ValueError, match="y"):
    opt.step(params, state, x, jnp.zeros((4, 2)))  # 4 rows, 5 examples
  with pytest.raises(ValueError, match="y"):
    opt.step(params, state, x, jnp.zeros((5, 3)))  # 3 outputs, model has 2
  with pytest.raises(ValueError, match="x"):
    opt.step(params, state, x.at[0, 0].set(jnp.nan), jnp.zeros((5, 2)))
  with pytest.raises(ValueError, match="x"):
    opt.step(params, state, x[:, 0], jnp.zeros((5, 2)))
  # Shapes are checked while tracing too.
  with pytest.raises(ValueError, match="y"):
    jax.jit(opt.step)(params, state, x, jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="gram_method"):
    ngd(_linear, 1.0, gram_method="dense")
  with pytest.raises(ValueError, match="damping"):
    ngd_preconditioner(model, damping=levenberg_marquardt())
  tx = ngd_preconditioner(model)
  with pytest.raises(ValueError, match="x, y"):
    tx.update(params, tx.init(params), params)


def test_chunked_step_equals_unchunked():
  """chunk_size bounds memory (streamed Gram, blocked outputs and VJP)."""
  model = ngdjax.two_layer_relu(64, out_dim=2)
  params = model.init(jax.random.key(0), 3)
  x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (11, 3)))
  y = jnp.stack([jnp.sin(3 * x[:, 0]), jnp.cos(x[:, 1])], axis=1)
  out = []
  for chunk in (None, 4):
    opt = ngdjax.ngd(model, learning_rate=0.7, damping=1e-4, chunk_size=chunk)
    out.append(jax.jit(opt.step)(params, opt.init(params), x, y))
  np.testing.assert_allclose(out[1][0]["W"], out[0][0]["W"], atol=1e-12)
  np.testing.assert_allclose(out[1][2]["loss"], out[0][2]["loss"], rtol=1e-12)


# --------------------------------------------------------------------------
# CG on singular systems.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_cg_on_a_singular_gram_flags_and_takes_a_bounded_step(dtype):
  """Repeated inputs with inconsistent targets, zero damping: G is singular
  and grad_u L is not in its range. Plain CG took a step of norm 1e8
  (float32) / 1e17 (float64); now the step stays the size of the Cholesky
  path's pseudo-inverse step and ``cg_failed`` says what happened."""
  model = ngdjax.models.two_layer_relu(width=16)
  x1 = _unit_rows(2, 3, seed=4)
  x = jnp.concatenate([x1, x1]).astype(dtype)
  y = jnp.asarray([1.0, -1.0, -1.0, 1.0], dtype)
  params = jax.tree.map(lambda a: a.astype(dtype),
                        model.init(jax.random.key(0), 3))
  norms = {}
  for solver in ("cg", "cholesky"):
    opt = ngd(model, 1.0, damping=0.0, solver=solver)
    new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
    assert np.all(np.isfinite(np.asarray(new["W"])))
    norms[solver] = float(info["update_norm"])
  assert int(info["cholesky_failed"]) == 1
  opt = ngd(model, 1.0, damping=0.0, solver="cg")
  _, _, info = opt.step(params, opt.init(params), x, y)
  assert int(info["cg_failed"]) == 1
  assert float(info["cg_residual"]) <= 1.0  # never worse than no step
  assert norms["cg"] <= 5 * norms["cholesky"], norms


def test_cg_fallback_on_a_linear_model_and_truncation_is_no_failure():
  x = _unit_rows(6, 3, seed=5)
  y = _targets(6, 1, seed=5)
  params = {"w": jnp.asarray([0.3, -0.2, 0.1])}
  # Rank-3 Gram of 6 examples, inconsistent y: CG breaks down, and the
  # damped fallback gives the least-squares step (J^T annihilates the
  # null-space part of v), as the Cholesky path's pseudo-inverse does.
  opt = ngd(_linear, 1.0, damping=0.0, solver="cg")
  new, _, info = opt.step(params, opt.init(params), x, y)
  assert int(info["cg_failed"]) == 1
  xn, yn, w = np.asarray(x), np.asarray(y), np.asarray(params["w"])
  ref = w - np.linalg.pinv(xn) @ (xn @ w - yn)
  np.testing.assert_allclose(new["w"], ref, rtol=1e-6, atol=1e-7)
  # A deliberately truncated CG is not a failure: it shows in cg_residual.
  opt = ngd(_linear, 1.0, damping=1e-3, solver="cg", cg_maxiter=1)
  new, _, info = opt.step(params, opt.init(params), x, y)
  assert int(info["cg_failed"]) == 0 and int(info["cg_iterations"]) == 1
  assert float(info["cg_residual"]) > 1e-6
  assert np.all(np.isfinite(np.asarray(new["w"])))
  tx = ngd_preconditioner(_linear, damping=1e-3, solver="cg")
  state = tx.init(params)
  assert int(state.info["cg_failed"]) == 0
  _, state = tx.update(params, state, params, x=x, y=y)
  assert int(state.info["cg_failed"]) == 0

"""Closed-form linearised dynamics against independent references.

References: ``scipy.linalg.expm``, RK4 integration of the weight ODEs, plain
GD/NGD update loops on the linearised model, ``numpy.linalg.pinv`` and
``numpy.linalg.matrix_power``; Jacobians by ``jax.jacrev`` on flat params.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import ngdjax
from ngdjax import linearized

D = 3


def _inputs(n, seed):
  x = np.random.default_rng(seed).standard_normal((n, D))
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _dense_jacobian(apply, params, x):
  flat, unravel = ravel_pytree(params)
  # jit: one compilation instead of many eagerly dispatched primitives.
  jac = jax.jit(jax.jacrev(lambda w, z: apply(unravel(w), z).reshape(-1)))
  return np.asarray(jac(flat, x))


def _problem(model, n=4, n_test=3, with_test=True):
  params0 = jax.jit(model.init, static_argnums=1)(jax.random.key(0), D)
  x = _inputs(n, 1)
  y = np.random.default_rng(3).standard_normal((n, model.out_dim))
  u0 = np.asarray(model.apply(params0, x))
  jac = _dense_jacobian(model.apply, params0, x)
  prob = types.SimpleNamespace(
      model=model, params0=params0, x=x, y=y, J=jac, G=jac @ jac.T,
      r0=(u0 - y).reshape(-1),
  )
  if with_test:
    prob.x_test = _inputs(n_test, 2)
    prob.J_test = _dense_jacobian(model.apply, params0, prob.x_test)
    prob.G_test = prob.J_test @ jac.T
    prob.u0_test = np.asarray(model.apply(params0, prob.x_test)).reshape(-1)
  return prob


@pytest.fixture(scope="module")
def relu2():
  """Two-layer ReLU, two outputs: N = 8, p = 48."""
  return _problem(ngdjax.two_layer_relu(16, out_dim=2))


@pytest.fixture(scope="module")
def mlp1():
  """Tanh MLP with biases, one output: N = 5, p = 31."""
  model = ngdjax.mlp([6], out_dim=1, activation="tanh")
  return _problem(model, n=5, with_test=False)


def _generator(g, method, damping):
  """Output-space generator A in dr/dt = -A r."""
  if method == "gd":
    return g
  return g @ np.linalg.inv(g + damping * np.eye(len(g)))


def _preconditioner(g, method, damping):
  """M in dw/dt = -J^T M r."""
  if method == "gd":
    return np.eye(len(g))
  return np.linalg.inv(g + damping * np.eye(len(g)))


DYNAMICS = [("gd", 0.0), ("ngd", 0.0), ("ngd", 0.3)]
DYN_IDS = ["gd", "ngd", "ngd_damped"]


# --------------------------------------------------------------------------
# linearize
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["relu2", "mlp1"])
def test_linearize_value_and_derivative(name, request):
  prob = request.getfixturevalue(name)
  model, params0, x = prob.model, prob.params0, prob.x
  lin = linearized.linearize(model, params0)
  assert isinstance(lin, ngdjax.Model)
  assert lin.out_dim == model.out_dim
  flat0, unravel = ravel_pytree(params0)
  assert np.array_equal(ravel_pytree(lin.init(None, D))[0], flat0)

  # jit: one compilation is cheaper than eager dispatch on 2 shared cores.
  apply_lin = jax.jit(lin.apply)
  u0 = np.asarray(model.apply(params0, x))
  np.testing.assert_allclose(apply_lin(params0, x), u0, rtol=1e-13)

  # Away from params0: exactly affine with slope J(params0) ...
  delta = 0.7 * np.random.default_rng(5).standard_normal(flat0.shape)
  params1 = unravel(flat0 + delta)
  expected = u0.reshape(-1) + prob.J @ delta
  np.testing.assert_allclose(
      np.asarray(apply_lin(params1, x)).reshape(-1), expected, rtol=1e-11,
      atol=1e-12,
  )
  # ... while the network itself has moved off its tangent plane.
  u1 = np.asarray(model.apply(params1, x)).reshape(-1)
  assert np.max(np.abs(u1 - expected)) > 1e-3

  # Its Jacobian and Gram at params1 are those at params0, by every method.
  np.testing.assert_allclose(
      _dense_jacobian(lin.apply, params1, x), prob.J, rtol=1e-11, atol=1e-12
  )
  # The structured Gram uses the carried layer factors (at params0).
  structured = jax.jit(
      lambda p, z: ngdjax.gram(lin, p, z, method="structured")
  )
  np.testing.assert_allclose(
      structured(params1, x), prob.G, rtol=1e-10, atol=1e-12
  )

  bare = linearized.linearize(model.apply, params0)
  assert not isinstance(bare, ngdjax.Model)
  np.testing.assert_allclose(bare(params1, x), apply_lin(params1, x))


# --------------------------------------------------------------------------
# Continuous time
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method,damping", DYNAMICS, ids=DYN_IDS)
def test_flow_residuals_match_expm(relu2, method, damping):
  t = np.array([0.0, 0.3, 1.0, 5.0])
  got = linearized.residuals(relu2.G, relu2.r0, t, method, damping=damping)
  a = _generator(relu2.G, method, damping)
  want = np.stack([scipy.linalg.expm(-a * ti) @ relu2.r0 for ti in t])
  assert got.shape == (len(t), len(relu2.r0))
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _rk4(field, w0, h, steps):
  def step(w, _):
    k1 = field(w)
    k2 = field(w + 0.5 * h * k1)
    k3 = field(w + 0.5 * h * k2)
    k4 = field(w + h * k3)
    return w + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

  return jax.lax.scan(step, w0, None, length=steps)[0]


@pytest.mark.parametrize("method,damping", DYNAMICS, ids=DYN_IDS)
def test_flow_matches_rk4_on_linearised_model(mlp1, method, damping):
  prob = mlp1
  lin = linearized.linearize(prob.model, prob.params0)
  flat0, unravel = ravel_pytree(prob.params0)
  y = jnp.asarray(prob.y)
  precond = jnp.asarray(_preconditioner(prob.G, method, damping))

  def field(w):
    # dw/dt = -J^T M r with J^T from reverse mode through f_lin at w.
    r, pullback = jax.vjp(
        lambda v: (lin.apply(unravel(v), prob.x) - y).reshape(-1), w
    )
    return -pullback(precond @ r)[0]

  # RK4 with h = 0.01 in blocks of 50 steps; keep t = 0.5, 1 and 2.
  run = jax.jit(functools.partial(_rk4, field, h=1e-2, steps=50))
  w, ws = flat0, []
  for block in range(1, 5):
    w = run(w)
    if block in (1, 2, 4):
      ws.append(w)
  t = np.array([0.5, 1.0, 2.0])

  got_w = linearized.weights(
      prob.J, prob.G, prob.r0, t, method, damping=damping
  )
  want_w = np.stack([np.asarray(wi - flat0) for wi in ws])
  np.testing.assert_allclose(got_w, want_w, rtol=1e-8, atol=1e-10)

  got_r = linearized.residuals(prob.G, prob.r0, t, method, damping=damping)
  want_r = np.stack(
      [np.asarray(lin.apply(unravel(wi), prob.x) - y).reshape(-1) for wi in ws]
  )
  np.testing.assert_allclose(got_r, want_r, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------
# Discrete steps
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,damping,eta",
    [("gd", 0.0, None), ("ngd", 0.0, 0.4), ("ngd", 0.2, 0.7), ("ngd", 0, 1.0)],
    ids=["gd", "ngd", "ngd_damped", "ngd_eta1"],
)
def test_steps_match_update_loops(relu2, method, damping, eta):
  prob = relu2
  if eta is None:  # GD: a stable step for this Gram
    eta = 1.5 / np.linalg.eigvalsh(prob.G)[-1]
  lin = linearized.linearize(prob.model, prob.params0)
  flat0, unravel = ravel_pytree(prob.params0)
  y = jnp.asarray(prob.y)

  def loss(w):
    return 0.5 * jnp.sum((lin.apply(unravel(w), prob.x) - y) ** 2)

  @jax.jit
  def step(w):
    if method == "gd":  # w <- w - eta grad L = w - eta J^T r
      return w - eta * jax.grad(loss)(w)
    # w <- w - eta J^T (G + lam I)^{-1} r, J of f_lin at the current w.
    jac = jax.jacrev(
        lambda v: lin.apply(unravel(v), prob.x).reshape(-1)
    )(w)
    r = lin.apply(unravel(w), prob.x).reshape(-1) - y.reshape(-1)
    g = jac @ jac.T
    return w - eta * jac.T @ jnp.linalg.solve(g + damping * jnp.eye(len(g)), r)

  ks = [0, 1, 2, 7, 20]
  w, ws = flat0, {}
  for k in range(ks[-1] + 1):
    ws[k] = w
    w = step(w)
  kw = dict(method=method, learning_rate=eta, damping=damping)

  want_w = np.stack([np.asarray(ws[k] - flat0) for k in ks])
  got_w = linearized.weights(prob.J, prob.G, prob.r0, ks, **kw)
  np.testing.assert_allclose(got_w, want_w, rtol=1e-9, atol=1e-11)

  want_r = np.stack([
      np.asarray(lin.apply(unravel(ws[k]), prob.x) - y).reshape(-1)
      for k in ks
  ])
  got_r = linearized.residuals(prob.G, prob.r0, ks, **kw)
  np.testing.assert_allclose(got_r, want_r, rtol=1e-9, atol=1e-11)

  want_test = np.stack([
      np.asarray(lin.apply(unravel(ws[k]), prob.x_test)).reshape(-1)
      for k in ks
  ])
  got_test = linearized.predict(
      prob.G_test, prob.G, prob.r0, prob.u0_test, ks, **kw
  )
  np.testing.assert_allclose(got_test, want_test, rtol=1e-9, atol=1e-11)


def test_steps_match_matrix_powers_and_divergence(relu2):
  g, r0 = relu2.G, relu2.r0
  s_max = np.linalg.eigvalsh(g)[-1]
  ks = np.array([0, 1, 3, 6])
  for eta in (0.3 / s_max, 1.9 / s_max, 2.5 / s_max):  # slow, oscillating,
    got = linearized.residuals(g, r0, ks, "gd", learning_rate=eta)  # diverging
    step = np.eye(len(g)) - eta * g
    want = np.stack([np.linalg.matrix_power(step, k) @ r0 for k in ks])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  # A divergent iteration has no limit: NaN at inf, not a silent 0.
  assert np.all(np.isnan(
      linearized.residuals(g, r0, [np.inf], "gd", learning_rate=2.5 / s_max)
  ))
  # A convergent one reaches 0.
  np.testing.assert_allclose(
      linearized.residuals(g, r0, np.inf, "gd", learning_rate=1.9 / s_max),
      np.zeros((1, len(r0))),
      atol=1e-14,
  )


# --------------------------------------------------------------------------
# Weights, predictions and the common limit
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method,damping", DYNAMICS, ids=DYN_IDS)
def test_weights_and_predictions_consistent_with_jacobians(
    relu2, method, damping
):
  prob = relu2
  t = np.array([0.0, 0.5, 2.0, np.inf])
  w = linearized.weights(prob.J, prob.G, prob.r0, t, method, damping=damping)
  r = linearized.residuals(prob.G, prob.r0, t, method, damping=damping)
  u = linearized.predict(
      prob.G_test, prob.G, prob.r0, prob.u0_test, t, method, damping=damping
  )
  assert w.shape == (len(t), prob.J.shape[1])
  assert u.shape == (len(t), len(prob.u0_test))
  np.testing.assert_allclose(w[0], 0.0, atol=0)
  np.testing.assert_allclose(
      np.asarray(w) @ prob.J.T, r - prob.r0[None], rtol=1e-10, atol=1e-12
  )
  np.testing.assert_allclose(
      u, prob.u0_test[None] + np.asarray(w) @ prob.J_test.T, rtol=1e-10,
      atol=1e-12,
  )
  # w(t) - w(0) lies in the row space of J (the minimum-norm subspace).
  proj = np.linalg.pinv(prob.J) @ prob.J
  np.testing.assert_allclose(
      np.asarray(w) @ proj.T, w, rtol=1e-10, atol=1e-12
  )


def test_gd_and_ngd_paths_differ_then_meet_at_min_norm(relu2):
  prob = relu2
  t = np.array([0.5, 2.0, np.inf])
  w_gd = np.asarray(linearized.weights(prob.J, prob.G, prob.r0, t, "gd"))
  w_ngd = np.asarray(linearized.weights(prob.J, prob.G, prob.r0, t, "ngd"))
  w_damped = np.asarray(
      linearized.weights(prob.J, prob.G, prob.r0, t, "ngd", damping=0.5)
  )
  w_steps = np.asarray(
      linearized.weights(
          prob.J, prob.G, prob.r0, [np.inf], "ngd", learning_rate=0.5
      )
  )
  scale = np.linalg.norm(w_ngd[-1])
  for k in range(2):
    assert np.linalg.norm(w_gd[k] - w_ngd[k]) > 1e-3 * scale

  want = -np.linalg.pinv(prob.J) @ prob.r0  # min-norm least squares
  for path in (w_gd, w_ngd, w_damped, w_steps):
    np.testing.assert_allclose(path[-1], want, rtol=1e-9, atol=1e-11)

  sol = linearized.min_norm_solution(prob.J, prob.G, prob.r0)
  np.testing.assert_allclose(sol.delta, want, rtol=1e-9, atol=1e-11)
  np.testing.assert_allclose(sol.norm, np.linalg.norm(want), rtol=1e-9)
  # Matrix-free and G-free forms.
  sol_mf = linearized.min_norm_solution(
      prob.model, None, prob.r0, params=prob.params0, x=prob.x
  )
  np.testing.assert_allclose(sol_mf.delta, want, rtol=1e-9, atol=1e-11)
  sol_j = linearized.min_norm_solution(prob.J, None, prob.r0)
  np.testing.assert_allclose(sol_j.norm, np.linalg.norm(want), rtol=1e-9)

  for method in ("gd", "ngd"):
    np.testing.assert_allclose(
        linearized.residuals(prob.G, prob.r0, np.inf, method)[0], 0.0,
        atol=1e-12,
    )


def test_ngd_output_path_is_a_straight_line(relu2):
  g, r0 = relu2.G, relu2.r0
  t = np.array([0.0, 0.1, 0.7, 3.0])
  unit = r0 / np.linalg.norm(r0)

  def off_line(path):
    path = np.asarray(path)
    return np.linalg.norm(path - np.outer(path @ unit, unit), axis=1)

  flow = linearized.residuals(g, r0, t, "ngd")
  np.testing.assert_allclose(off_line(flow), 0.0, atol=1e-12)
  np.testing.assert_allclose(flow, np.exp(-t)[:, None] * r0, rtol=1e-12)
  steps = linearized.residuals(g, r0, [0, 1, 4], "ngd", learning_rate=0.3)
  np.testing.assert_allclose(
      steps, 0.7 ** np.array([0, 1, 4])[:, None] * r0, rtol=1e-12
  )
  # GD (and damped NGD) bend: different modes decay at different rates.
  assert np.max(off_line(linearized.residuals(g, r0, t, "gd"))) > 1e-2
  damped = linearized.residuals(g, r0, t, "ngd", damping=1.0)
  assert np.max(off_line(damped)) > 1e-3


def test_matrix_free_weights_match_dense(relu2):
  prob = relu2
  t = np.array([0.0, 1.0, np.inf])
  want = linearized.weights(prob.J, prob.G, prob.r0, t, "gd")
  for model in (prob.model, prob.model.apply):
    got = linearized.weights(
        model, None, prob.r0, t, "gd", params=prob.params0, x=prob.x
    )
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  got = linearized.weights(
      prob.model, prob.G, prob.r0.reshape(-1, 2), t, "ngd", learning_rate=0.5,
      params=prob.params0, x=prob.x,
  )
  want = linearized.weights(
      prob.J, None, prob.r0, t, "ngd", learning_rate=0.5
  )
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# Singular Gram (N > p): pseudo-inverse limits
# --------------------------------------------------------------------------


def test_singular_gram_gives_pinv_limits():
  x = _inputs(6, 7)  # N = 6 outputs, p = 3 weights: rank(G) = 3

  def apply(params, z):
    return z @ params["v"]

  params0 = {"v": jnp.asarray([[0.2], [-0.1], [0.4]])}
  y = np.random.default_rng(8).standard_normal(6)
  jac = _dense_jacobian(apply, params0, x)
  g = jac @ jac.T
  r0 = np.asarray(apply(params0, x)).reshape(-1) - y
  pinv = np.linalg.pinv(jac)
  proj = jac @ pinv  # onto range(J), the modes that can move

  want_w = -pinv @ r0
  for method in ("gd", "ngd"):
    w = linearized.weights(jac, g, r0, np.inf, method)[0]
    np.testing.assert_allclose(w, want_w, rtol=1e-9, atol=1e-11)
    r = linearized.residuals(g, r0, np.inf, method)[0]
    np.testing.assert_allclose(r, r0 - proj @ r0, atol=1e-11)
  # NGD with the pseudo-inverse: the movable part decays like exp(-t).
  r1 = linearized.residuals(g, r0, 1.0, "ngd")[0]
  want_r1 = (r0 - proj @ r0) + np.exp(-1.0) * proj @ r0
  np.testing.assert_allclose(r1, want_r1, rtol=1e-9, atol=1e-11)
  # GD flow matches expm even though G is singular.
  np.testing.assert_allclose(
      linearized.residuals(g, r0, 2.0, "gd")[0],
      scipy.linalg.expm(-2.0 * g) @ r0, rtol=1e-10, atol=1e-12,
  )
  sol = linearized.min_norm_solution(jac, g, r0)  # Cholesky fails: fallback
  np.testing.assert_allclose(sol.delta, want_w, rtol=1e-9, atol=1e-11)
  np.testing.assert_allclose(sol.norm, np.linalg.norm(want_w), rtol=1e-9)


def test_limits_on_random_singular_grams():
  # Rank-deficient Grams on which Cholesky sometimes "succeeds" with
  # round-off pivots; the answer must still be pinv's.
  rng = np.random.default_rng(11)
  finite_cholesky = 0
  for _ in range(16):
    jac = rng.standard_normal((6, 5)) * rng.lognormal(0.0, 1.0, size=5)
    g, r0 = jac @ jac.T, rng.standard_normal(6)
    finite_cholesky += bool(np.all(np.isfinite(jnp.linalg.cholesky(g))))
    want = -np.linalg.pinv(jac) @ r0
    sol = linearized.min_norm_solution(jac, g, r0)
    np.testing.assert_allclose(sol.delta, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sol.norm, np.linalg.norm(want), rtol=1e-8)
    # The eigendecomposition's null-mode cutoff gives the same limit.
    w_inf = linearized.weights(jac, g, r0, [1.0, np.inf], "ngd")[1]
    np.testing.assert_allclose(w_inf, want, rtol=1e-8, atol=1e-10)
  assert finite_cholesky > 0  # the case the pivot test exists for


# --------------------------------------------------------------------------
# jit, shapes
# --------------------------------------------------------------------------


def test_jit_and_shapes(relu2):
  g, r0 = jnp.asarray(relu2.G), jnp.asarray(relu2.r0)
  t = jnp.array([0.0, 1.0, jnp.inf])
  eager = linearized.residuals(g, r0, t, "ngd", damping=0.1)
  jitted = jax.jit(
      functools.partial(linearized.residuals, method="ngd")
  )(g, r0, t, damping=0.1)
  np.testing.assert_allclose(jitted, eager, rtol=1e-12)
  sol = jax.jit(linearized.min_norm_solution)(jnp.asarray(relu2.J), g, r0)
  np.testing.assert_allclose(
      sol.delta, -np.linalg.pinv(relu2.J) @ relu2.r0, rtol=1e-9, atol=1e-11
  )
  assert linearized.residuals(g, r0, 1.0).shape == (1, len(r0))
  np.testing.assert_allclose(
      linearized.residuals(g, r0.reshape(4, 2), t),
      linearized.residuals(g, r0, t),
  )


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def _bad_cases(prob):
  g, r0, jac, t = prob.G, prob.r0, prob.J, np.array([0.0, 1.0])
  n_out = len(r0)
  asym = g.copy()
  asym[0, 1] += 0.5
  not_psd = g - 2 * np.linalg.eigvalsh(g)[-1] * np.outer(r0, r0) / (r0 @ r0)
  nan_g = g.copy()
  nan_g[0, 0] = np.nan
  res, wts, pred = linearized.residuals, linearized.weights, linearized.predict
  mns = linearized.min_norm_solution
  return [
      ("G", lambda: res(asym, r0, t)),
      ("G", lambda: res(not_psd, r0, t)),
      ("G", lambda: res(nan_g, r0, t)),
      ("G", lambda: res(g[:, :-1], r0, t)),
      ("r0", lambda: res(g, r0[:-1], t)),
      ("r0", lambda: res(g, np.full(n_out, np.nan), t)),
      ("t", lambda: res(g, r0, [1.0, -0.5])),
      ("t", lambda: res(g, r0, [np.nan])),
      ("t", lambda: res(g, r0, [1.5], learning_rate=0.1)),
      ("t", lambda: res(g, r0, np.ones((2, 2)))),
      ("method", lambda: res(g, r0, t, method="adam")),
      ("learning_rate", lambda: res(g, r0, t, learning_rate=0.0)),
      ("learning_rate", lambda: res(g, r0, t, learning_rate=np.nan)),
      ("damping", lambda: res(g, r0, t, "ngd", damping=-1.0)),
      ("damping", lambda: res(g, r0, t, "gd", damping=0.1)),
      ("G", lambda: wts(jac[:-1], g, r0, t)),
      ("G", lambda: wts(jac, not_psd, r0, t)),
      ("J", lambda: wts(np.full_like(jac, np.nan), g, r0, t)),
      ("r0", lambda: wts(jac, None, r0[:-1], t)),
      ("t", lambda: wts(jac, g, r0, [-1.0])),
      ("params", lambda: wts(prob.model, g, r0, t)),
      ("params", lambda: wts(jac, g, r0, t, params=prob.params0)),
      ("G", lambda: wts(prob.model, g[:4, :4], r0, t, params=prob.params0,
                        x=prob.x)),
      ("G_test_train", lambda: pred(prob.G_test[:, :-1], g, r0,
                                    prob.u0_test, t)),
      ("u0_test", lambda: pred(prob.G_test, g, r0, prob.u0_test[:-1], t)),
      ("G", lambda: pred(prob.G_test, asym, r0, prob.u0_test, t)),
      ("G", lambda: mns(jac, not_psd, r0)),
      ("r0", lambda: mns(jac, g, r0[:-1])),
      ("params0", lambda: linearized.linearize(
          prob.model, {"W": jnp.full((16, D), jnp.nan)})),
      ("apply_or_model", lambda: linearized.linearize(3, prob.params0)),
  ]


def test_bad_input_raises_value_error_naming_argument(relu2):
  for name, call in _bad_cases(relu2):
    with pytest.raises(ValueError, match=rf"\b{name}\b") as info:
      call()
    # The message starts with (or mentions) the argument it is about.
    assert name in str(info.value), (name, str(info.value))

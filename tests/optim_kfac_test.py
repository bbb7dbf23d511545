"""K-FAC against explicit Kronecker products, and its output update
(docs/math.md, "K-FAC")."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ngdjax
from ngdjax.optim import kfac, levenberg_marquardt

FORMS = ("auto", "primal", "dual")


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


def _all_forms(make, params, x, y, forms=FORMS):
  """One jitted call running the step in each form (one compilation)."""
  opts = [make(form) for form in forms]

  def run(p, a, b):
    return [opt.step(p, opt.init(p), a, b) for opt in opts]

  return jax.jit(run)(params, x, y)


def _output_signs(model, m, d):
  """The fixed output layer ``a`` ``(m, c)``, probed through the model.

  With every row of ``W`` equal to ``e_1`` and ``x = e_1`` every unit is
  active, so ``d u_k / d W[r, 0] = a[r, k] / sqrt(m)``.
  """
  w = np.zeros((m, d))
  w[:, 0] = 1.0
  e1 = np.eye(1, d)
  jac = jax.jit(jax.jacrev(lambda p: model.apply(p, e1)[0]))({"W": w})["W"]
  return np.asarray(jac[:, :, 0]).T * math.sqrt(m)  # jac is (c, m, d)


def _two_layer_reference(model, params, x, y, lr, split, lam, lam_in, lam_out):
  """docs/math.md, "K-FAC", with explicit ``kron``: ``-eta (F_kfac +
  damping)^+ grad``.

  Built from the definitions (``S = 1{X W^T > 0}``, ``s_i = a * S_i /
  sqrt(m)``, gradient by ``jax.grad``), not from the model's factors. The
  layer matrix is ``M = W^T`` ``(d, m)``: ``F = (X^T X) (x) (S~^T S~) / n``.
  """
  w = np.asarray(params["W"])
  m, d = w.shape
  xn, yn = np.asarray(x), np.asarray(y).reshape(x.shape[0], -1)
  n, c = yn.shape
  a = _output_signs(model, m, d)
  s = (xn @ w.T > 0).astype(float)
  s_tilde = (s[:, None, :] * a.T[None]).reshape(n * c, m) / math.sqrt(m)
  fa, fb = xn.T @ xn, s_tilde.T @ s_tilde
  # grad_W of 1/2 ||u - y||^2 = J^T r, with J_(i,k) = vec(s_ik x_i^T).
  r = np.asarray(model.apply(params, x)) - yn
  grad_m = np.einsum("ia,ik,ikb->ab", xn, r, s_tilde.reshape(n, c, m))
  if split == "pi":
    pi = math.sqrt((np.trace(fa) / (n * d)) / (np.trace(fb) / m))
    lam_a = lam_in + n * pi * math.sqrt(lam)
    lam_b = lam_out + math.sqrt(lam) / pi
    f = np.kron(fa + lam_a * np.eye(d), fb + lam_b * np.eye(m)) / n
  else:
    f = (np.kron(fa + lam_in * np.eye(d), fb + lam_out * np.eye(m)) / n
         + lam * np.eye(d * m))
  delta = np.linalg.pinv(f, rcond=1e-10, hermitian=True) @ grad_m.ravel()
  return -lr * delta.reshape(d, m).T


# (out_dim, damping_split, damping, factor_damping)
TWO_LAYER_SETTINGS = [
    (1, "pi", 0.05, (0.2, 0.01)),
    (2, "pi", 0.0, None),  # undamped: pseudo-inverses (m > n)
    (2, "exact", 0.1, (0.3, 0.02)),
]


@pytest.mark.parametrize("c,split,lam,factor_damping", TWO_LAYER_SETTINGS)
def test_two_layer_matches_explicit_kronecker(c, split, lam, factor_damping):
  n, d, m = 5, 3, 6
  model = ngdjax.two_layer_relu(m, out_dim=c)
  params = _init(model, d, seed=1)
  x = _unit_rows(n, d, seed=2)
  y = _targets(n, c, seed=3)
  lam_in, lam_out = factor_damping or (0.0, 0.0)
  ref = _two_layer_reference(model, params, x, y, 0.3, split, lam, lam_in,
                             lam_out)
  results = _all_forms(
      lambda form: kfac(model, 0.3, damping=lam, form=form,
                        damping_split=split, factor_damping=factor_damping),
      params, x, y)
  for form, (new, _, info) in zip(FORMS, results, strict=True):
    np.testing.assert_allclose(new["W"] - params["W"], ref, rtol=1e-9,
                               atol=1e-11, err_msg=form)
    assert int(info["cholesky_failed"]) == 0
    np.testing.assert_allclose(info["update_norm"], np.linalg.norm(ref),
                               rtol=1e-9)


def _mlp_reference(model, params, x, y, lr, split, lam):
  """Block-diagonal ``-eta (F_kfac,l + damping)^+ grad_l`` with ``kron``.

  The factors come from ``model.layer_factors``; they are first checked
  against ``jax.jacrev`` (every Jacobian row is ``vec(A_i B_ik^T)``).
  """
  n = x.shape[0]
  yn = np.asarray(y).reshape(n, -1)

  @jax.jit
  def dense(mats):
    apply = lambda ms: model.apply(model.from_layer_matrices(ms), x)  # noqa
    loss = lambda ms: 0.5 * jnp.sum((apply(ms) - yn) ** 2)  # noqa: E731
    return (jax.jacrev(apply)(mats), jax.grad(loss)(mats),
            model.layer_factors(model.from_layer_matrices(mats), x))

  jac, grads, factors = dense(model.to_layer_matrices(params))
  deltas = []
  for f, j, g in zip(factors, jac, grads, strict=True):
    a, b = np.asarray(f.inputs), np.asarray(f.output_grads)
    np.testing.assert_allclose(j, np.einsum("ia,ikb->ikab", a, b),
                               atol=1e-12)
    bf = b.reshape(-1, b.shape[2])
    fa, fb = a.T @ a, bf.T @ bf
    if split == "pi" and lam == 0:
      # (P (x) Q)^+ = P^+ (x) Q^+: per-factor cut-offs, as the factors have
      # very different scales.
      pinv = functools.partial(np.linalg.pinv, rcond=1e-10, hermitian=True)
      vec = n * np.kron(pinv(fa), pinv(fb)) @ np.ravel(g)
    else:
      if split == "pi":
        pi = math.sqrt((np.trace(fa) / a.size) / (np.trace(fb) / len(fb)))
        fa = fa + n * pi * math.sqrt(lam) * np.eye(len(fa))
        fb = fb + math.sqrt(lam) / pi * np.eye(len(fb))
        f_kfac = np.kron(fa, fb) / n
      else:
        f_kfac = np.kron(fa, fb) / n + lam * np.eye(len(fa) * len(fb))
      vec = np.linalg.solve(f_kfac, np.ravel(g))
    deltas.append(-lr * vec.reshape(g.shape))
  return deltas


# Every form for the pi split; the other settings in the form that stresses
# them most (forced dual has rank-deficient factors; auto mixes the forms).
@pytest.mark.parametrize("split,lam,forms", [("pi", 0.1, FORMS),
                                             ("pi", 0.0, ("dual",)),
                                             ("exact", 0.05, ("auto",))])
def test_mlp_matches_explicit_kronecker(split, lam, forms):
  # Layer shapes (a, b): (4, 5), (6, 7), (8, 2) with n = 6, n c = 12, so
  # "auto" mixes primal and dual factors and "dual" has rank-deficient ones.
  model = ngdjax.mlp([5, 7], out_dim=2, activation="tanh")
  params = _init(model, 3, seed=5)
  x = _unit_rows(6, 3, seed=6)
  y = _targets(6, 2, seed=7)
  ref = _mlp_reference(model, params, x, y, 0.4, split, lam)
  results = _all_forms(
      lambda form: kfac(model, 0.4, damping=lam, form=form,
                        damping_split=split), params, x, y, forms)
  old = model.to_layer_matrices(params)
  for form, (new, _, _) in zip(forms, results, strict=True):
    for layer, (n_mat, o_mat, r) in enumerate(
        zip(model.to_layer_matrices(new), old, ref, strict=True)):
      np.testing.assert_allclose(n_mat - o_mat, r, rtol=1e-8, atol=1e-10,
                                 err_msg=f"{form}, layer {layer}")


def test_primal_equals_dual_to_float64_precision():
  """The push-through identity at m > n > d (docs/math.md, "K-FAC")."""
  model = ngdjax.two_layer_relu(96)
  params = _init(model, 4, seed=2)
  x = _unit_rows(20, 4, seed=3)
  y = _targets(20, 1, seed=4)
  results = _all_forms(lambda form: kfac(model, 1.0, damping=1e-3,
                                        form=form), params, x, y,
                       ("primal", "dual"))
  deltas = [ravel_pytree(r[0])[0] - ravel_pytree(params)[0] for r in results]
  scale = float(jnp.linalg.norm(deltas[0]))
  assert scale > 0
  for delta in deltas[1:]:
    assert float(jnp.linalg.norm(delta - deltas[0])) <= 1e-10 * scale


def _isotropic_rows(n, d, seed):
  """Unit rows with ``X^T X = (n/d) I`` (a rotated harmonic frame).

  ``x_j = sqrt(2/d) [cos(2 pi k j / n), sin(2 pi k j / n)]_k`` for ``d/2``
  distinct frequencies ``0 < k < n/2``: each row has norm 1 and the columns
  are orthogonal with squared norm ``n/d``. What the Forster transform
  produces, built directly.
  """
  freqs = np.array([1, 2, 3, 5, 6, 7])[: d // 2]
  ang = 2 * np.pi * np.arange(n)[:, None] * freqs[None] / n
  x = math.sqrt(2 / d) * np.concatenate([np.cos(ang), np.sin(ang)], axis=1)
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
  return jnp.asarray(x @ q)


def _ill_conditioned_rows(n, d, seed):
  x = np.random.default_rng(seed).standard_normal((n, d))
  x = x * np.logspace(0, -2.2, d)
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def wide_kfac_step():
  """One jitted undamped K-FAC step with eta = 1/d on a wide net."""
  n, d, m = 32, 8, 16384
  model = ngdjax.two_layer_relu(m)
  params = _init(model, d, seed=7)
  y = jnp.asarray(np.random.default_rng(8).choice([-1.0, 1.0], n))
  opt = kfac(model, 1.0 / d)

  @jax.jit
  def run(x):
    new, _, info = opt.step(params, opt.init(params), x, y)
    # First-order output change J (theta_new - theta) by one JVP.
    delta = jax.tree_util.tree_map(jnp.subtract, new, params)
    du = ngdjax.jvp(model, params, x, delta)
    r = model.apply(params, x)[:, 0] - y
    loss_after = 0.5 * jnp.sum((model.apply(new, x)[:, 0] - y) ** 2)
    return du, r, info["loss"], loss_after

  return run, n, d


def test_forster_isotropic_inputs_make_kfac_natural_gradient(wide_kfac_step):
  """docs/math.md, "The Forster transform": with ``X^T X = (n/d) I`` and
  unit rows, ``J Delta theta = -eta d r``; ``eta = 1/d`` is an NGD step
  with ``eta = 1``."""
  run, n, d = wide_kfac_step
  x = _isotropic_rows(n, d, seed=9)
  np.testing.assert_allclose(x.T @ x, (n / d) * np.eye(d), atol=1e-12)
  np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1.0, atol=1e-12)
  du, r, loss0, loss1 = run(x)
  np.testing.assert_allclose(du, -r, rtol=1e-8, atol=1e-10)
  # What is left is the network's nonlinearity (NGD with eta = 1 leaves a
  # similar 0.6%; the ill-conditioned inputs below leave about 50%).
  assert float(loss1) < 2e-2 * float(loss0), (loss1, loss0)


def test_ill_conditioned_inputs_do_not_solve_in_one_step(wide_kfac_step):
  """Same step on rows with ``cond(X^T X) ~ 1e4``: ``J Delta theta =
  -eta n h * r`` with leverage scores ``h`` far from ``d/n``."""
  run, n, d = wide_kfac_step
  x = _ill_conditioned_rows(n, d, seed=10)
  xn = np.asarray(x)
  cond = np.linalg.cond(xn.T @ xn)
  assert 3e3 < cond < 3e4, cond
  h = np.einsum("ia,ab,ib->i", xn, np.linalg.inv(xn.T @ xn), xn)
  du, r, loss0, loss1 = run(x)
  np.testing.assert_allclose(du, -(n / d) * h * np.asarray(r), rtol=1e-7,
                             atol=1e-9)
  assert np.ptp(n * h / d) > 1.0  # leverages really spread
  assert float(loss1) > 0.25 * float(loss0), (loss1, loss0)


def _np_log_cosh_loss(e):
  return np.sum(0.5 * e**2 + np.log(np.cosh(e)))


LM_MODEL = ngdjax.mlp([6], out_dim=2, activation="tanh")
LM = levenberg_marquardt(init=0.01, decrease=0.5, increase=3.0)


@jax.jit
def _lm_step_and_jacobian(params, x, y, eta):
  """One LM-damped K-FAC step (eta traced: one compilation) and dense J."""
  opt = kfac(LM_MODEL, lambda count: eta, damping=LM, loss="squared_log_cosh")
  new, state, info = opt.step(params, opt.init(params), x, y)
  flat, unravel = ravel_pytree(params)
  apply = lambda f: LM_MODEL.apply(unravel(f), x).reshape(-1)  # noqa: E731
  return (ravel_pytree(new)[0] - flat, state, info, jax.jacrev(apply)(flat),
          apply(flat), LM_MODEL.apply(new, x).reshape(-1))


@pytest.mark.parametrize("eta", [0.3, 3.0])
def test_levenberg_marquardt_ratio_matches_a_dense_prediction(eta):
  """``rho = actual / (L(u + J delta) - L(u))``, ``J`` by jacrev; a step
  the model itself predicts to increase the loss (eta = 3) gets rho = 0."""
  params = _init(LM_MODEL, 3, seed=3)
  x = _unit_rows(5, 3, seed=4)
  y = 2.0 * _targets(5, 2, seed=5)
  delta, state, info, jac, u, u_new = jax.tree_util.tree_map(
      np.asarray, _lm_step_and_jacobian(params, x, y, eta))
  yv = np.asarray(y).reshape(-1)
  loss0 = _np_log_cosh_loss(u - yv)
  predicted = _np_log_cosh_loss(u + jac @ delta - yv) - loss0
  actual = _np_log_cosh_loss(u_new - yv) - loss0
  rho = actual / predicted if predicted < 0 else 0.0
  assert (predicted < 0) == (eta < 1)  # both branches are exercised
  np.testing.assert_allclose(info["reduction_ratio"], rho, rtol=1e-8)
  expected = 0.01 * (3.0 if rho < 0.25 else 0.5 if rho > 0.75 else 1.0)
  np.testing.assert_allclose(state.damping, expected, rtol=1e-12)


def test_cholesky_failure_falls_back_in_float32():
  """A tiny traced damping on an ``m x m`` factor of rank ``n`` (primal
  form, float32): Cholesky fails, the step stays finite and close to the
  float64 pseudo-inverse step."""
  n, d, m = 8, 3, 64
  model = ngdjax.two_layer_relu(m)
  params64 = _init(model, d, seed=4)
  x64 = _unit_rows(n, d, seed=11)
  y64 = _targets(n, 1, seed=12)
  params = jax.tree_util.tree_map(lambda t: t.astype(jnp.float32), params64)
  x, y = x64.astype(jnp.float32), y64.astype(jnp.float32)
  opt = kfac(model, 0.5, damping=lambda count: 1e-30, form="primal")
  new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
  assert int(info["cholesky_failed"]) >= 1
  assert new["W"].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(new["W"])))
  ref = _two_layer_reference(model, params64, x64, y64, 0.5, "pi", 0.0, 0.0,
                             0.0)
  err = np.linalg.norm(np.asarray(new["W"] - params["W"]) - ref)
  assert err <= 1e-3 * np.linalg.norm(ref), err


def test_mlp_training_decreases_the_loss_without_recompiling():
  # Each layer's K-FAC step moves the outputs by about -eta * rank * r
  # (docs/math.md, "K-FAC"), so the safe step size of a deep net is well
  # below 1.
  model = ngdjax.mlp([32, 32], out_dim=1)
  params = _init(model, 4, seed=1)
  x = _unit_rows(16, 4, seed=2)
  y = _targets(16, 1, seed=3)
  opt = kfac(model, 0.1, damping=levenberg_marquardt(init=1e-3))
  traces = []

  def counted(p, s, a, b):
    traces.append(1)  # runs once per trace, not per call
    return opt.step(p, s, a, b)

  step = jax.jit(counted)
  state = opt.init(params)
  losses = []
  for _ in range(8):
    params, state, info = step(params, state, x, y)
    losses.append(float(info["loss"]))
  assert len(traces) == 1 and step._cache_size() == 1
  assert losses[-1] < 0.1 * losses[0], losses


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"damping": -1.0}, "damping"),
        ({"damping": math.nan}, "damping"),
        ({"form": "both"}, "form"),
        ({"damping_split": "sqrt"}, "damping_split"),
        ({"factor_damping": (0.1, -0.1)}, "factor_damping"),
        ({"factor_damping": 0.1}, "factor_damping"),
        ({"loss": 3}, "loss"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
  args = {"learning_rate": 1.0, **kwargs}
  with pytest.raises(ValueError, match=match):
    kfac(ngdjax.two_layer_relu(8), **args)


def test_bad_model_and_batch_raise():
  with pytest.raises(ValueError, match="model"):
    kfac(42, 1.0)  # neither a Model nor an apply function
  model = ngdjax.two_layer_relu(8)
  params = _init(model, 3, seed=0)
  opt = kfac(model, 1.0)
  x = _unit_rows(5, 3, seed=0)
  with pytest.raises(ValueError, match="y"):
    opt.step(params, opt.init(params), x, jnp.zeros((6,)))
  with pytest.raises(ValueError, match="x"):
    opt.step(params, opt.init(params), x.at[1, 1].set(jnp.inf), jnp.zeros(5))



def test_minibatch_eigh_update_in_float32_matches_float64():
  # A cutoff relative to the largest denominator (a pseudo-inverse's) would
  # drop directions the small damping keeps: the float32 step of a small MLP
  # was 60 % off the float64 one.
  from ngdjax._src.optim import kfac as kfac_lib
  rng = np.random.default_rng(0)
  n, lam = 128, 1e-3

  def spd(k):
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return (q * np.logspace(0, -6, k)) @ q.T

  cov_a, cov_b, grad_m = spd(65), spd(64), rng.standard_normal((65, 64))
  pi = np.sqrt((np.trace(cov_a) / 65) / (np.trace(cov_b) / 64))
  delta = np.sqrt(lam / n)
  want = np.linalg.solve(cov_a + pi * delta * np.eye(65), grad_m) @ \
      np.linalg.inv(cov_b + delta / pi * np.eye(64)) / n
  f32 = lambda t: jnp.asarray(t, jnp.float32)  # noqa: E731
  factors = kfac_lib.KFACFactors(
      f32(cov_a), f32(cov_b), *jnp.linalg.eigh(f32(cov_a)),
      *jnp.linalg.eigh(f32(cov_b)))
  got = kfac_lib.averaged_update(factors, f32(grad_m), n, lam, 0.0, 0.0,
                                 "pi")
  err = np.linalg.norm(np.asarray(got, np.float64) - want)
  assert err < 1e-2 * np.linalg.norm(want), err  # cond ~ 1e5


def test_a_state_of_another_optimizer_is_named():
  model = ngdjax.mlp((4,), out_dim=1)
  params = model.init(jax.random.key(0), in_dim=3)
  x, y = jnp.ones((4, 3)), jnp.ones((4,))
  minibatch = kfac(model, 0.1, damping=1.0, factor_decay=0.9)
  plain = ngdjax.optim.ngd(model, 0.1, damping=1.0)
  for opt, other in ((minibatch, plain), (plain, minibatch)):
    with pytest.raises(ValueError, match="state: its curvature"):
      opt.step(params, other.init(params), x, y)
  with pytest.raises(TypeError):
    levenberg_marquardt(1.0, 0.5)  # options after init are keyword-only

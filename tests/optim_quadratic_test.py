"""The quadratic-model step (learning rate and momentum) and its damping.

Every chosen ``(alpha, mu)`` is checked against the 2 x 2 system built from
explicit ``jax.jacrev`` Jacobians and numpy in float64.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ngdjax
from ngdjax._src.optim import damping as damping_lib
from ngdjax._src.optim import quadratic
from ngdjax.optim import kfac, levenberg_marquardt, ngd

MODEL = ngdjax.mlp([6], out_dim=3, activation="tanh")
LAM = 0.3


def _problem(seed=0, n=7, labels=False):
  rng = np.random.default_rng(seed)
  params = MODEL.init(jax.random.key(seed), 4)
  x = jnp.asarray(rng.standard_normal((n, 4)))
  if labels:
    y = jnp.asarray(rng.integers(0, 3, n))
  else:
    y = jnp.asarray(rng.standard_normal((n, 3)))
  return params, x, y


def _dense(params, x, y, loss_name):
  """``(g, C, h)``: gradient, exact GGN and loss value from explicit J."""
  flat, unravel = ravel_pytree(params)
  u = np.asarray(MODEL.apply(params, x))
  jac = np.asarray(jax.jacrev(
      lambda p: MODEL.apply(unravel(p), x).reshape(-1))(flat))
  n, c = u.shape
  if loss_name == "squared":
    yv = np.asarray(y)
    grad_u = u - yv
    hess = np.broadcast_to(np.eye(c), (n, c, c))
  else:
    p = np.exp(u - u.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad_u = p - np.eye(c)[np.asarray(y)]
    hess = np.stack([np.diag(q) - np.outer(q, q) for q in p])
  jac = jac.reshape(n, c, -1)
  g = np.einsum("ikp,ik->p", jac, grad_u)
  curv = np.einsum("ikp,ikl,ilq->pq", jac, hess, jac)
  return g, curv


def _direction(make, params, x, y):
  """``Delta = -P^{-1} g``: a unit fixed step of the same method."""
  opt = make(1.0, 0.0)
  new = opt.step(params, opt.init(params), x, y)[0]
  return np.asarray(ravel_pytree(new)[0] - ravel_pytree(params)[0])


METHODS = {
    "kfac": lambda lr, mu, loss="squared": kfac(
        MODEL, lr, damping=LAM, momentum=mu, loss=loss),
    "ngd": lambda lr, mu, loss="squared": ngd(
        MODEL, lr, damping=LAM, momentum=mu, loss=loss),
}


@pytest.mark.parametrize("loss", ["squared", "softmax_cross_entropy"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_steps_match_the_dense_two_by_two_system(name, loss):
  params, x, y = _problem(labels=loss != "squared")
  make = lambda lr, mu: METHODS[name](lr, mu, loss)  # noqa: E731
  opt = make("adaptive", "adaptive")
  state = opt.init(params)
  step = jax.jit(opt.step)
  v = None
  for _ in range(2):
    flat = np.asarray(ravel_pytree(params)[0])
    g, curv = _dense(params, x, y, loss)
    damped = curv + LAM * np.eye(flat.size)
    delta = _direction(make, params, x, y)
    if v is None:  # the first step: the 1-D minimiser, mu = 0
      alpha = -(g @ delta) / (delta @ damped @ delta)
      mu = 0.0
    else:
      basis = np.stack([delta, v], axis=1)
      alpha, mu = np.linalg.solve(basis.T @ damped @ basis, -basis.T @ g)
    update = alpha * delta + mu * (0 if v is None else v)
    model = g @ update + 0.5 * update @ damped @ update
    params, state, info = step(params, state, x, y)
    np.testing.assert_allclose(info["learning_rate"], alpha, rtol=1e-8)
    np.testing.assert_allclose(info["momentum"], mu, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(info["model_change"], model, rtol=1e-8)
    # rho against the undamped model (Martens & Grosse 2015, section 6.5).
    undamped = g @ update + 0.5 * update @ curv @ update
    np.testing.assert_allclose(
        info["reduction_ratio"],
        (info["loss_after"] - info["loss"]) / undamped, rtol=1e-7)
    assert int(info["step_rejected"]) == 0
    assert int(info["model_fallback"]) == 0
    np.testing.assert_allclose(ravel_pytree(params)[0], flat + update,
                               rtol=1e-9, atol=1e-12)
    v = update
    np.testing.assert_allclose(ravel_pytree(state.velocity)[0], v,
                               rtol=1e-9, atol=1e-12)


def test_fixed_momentum_chooses_only_the_step_size():
  params, x, y = _problem(seed=1)
  make = METHODS["kfac"]
  opt = make("adaptive", 0.5)
  state = opt.init(params)
  params, state, _ = opt.step(params, state, x, y)
  v = np.asarray(ravel_pytree(state.velocity)[0])
  flat = np.asarray(ravel_pytree(params)[0])
  g, curv = _dense(params, x, y, "squared")
  damped = curv + LAM * np.eye(flat.size)
  delta = _direction(make, params, x, y)
  alpha = -(g @ delta + 0.5 * delta @ damped @ v) / (delta @ damped @ delta)
  new, _, info = opt.step(params, state, x, y)
  np.testing.assert_allclose(info["learning_rate"], alpha, rtol=1e-8)
  np.testing.assert_allclose(info["momentum"], 0.5)
  np.testing.assert_allclose(ravel_pytree(new)[0],
                             flat + alpha * delta + 0.5 * v, rtol=1e-9)


def test_coefficients_fall_back_to_one_dimension():
  # v parallel to Delta: the 2 x 2 matrix is singular.
  quad = jnp.array([[2.0, 4.0], [4.0, 8.0]])
  lin = jnp.array([-1.0, -2.0])
  c = quadratic.coefficients(quad, lin, lr=None, mu=None)
  assert int(c.fallback) == 1
  np.testing.assert_allclose([c.alpha, c.mu], [0.5, 0.0])
  np.testing.assert_allclose(c.change, -0.25)
  # Non-positive curvature along Delta: no minimiser, a rejected step.
  bad = quadratic.coefficients(jnp.array([[-1.0, 0.0], [0.0, 1.0]]), lin,
                               lr=None, mu=None)
  assert bool(bad.bad_model)
  np.testing.assert_allclose([bad.alpha, bad.mu, bad.change], 0.0)


def _negative_curvature_loss():
  """Squared loss whose output metric claims ``H = -I`` (the direction's
  factors still see ``I`` through ``hessian_root``)."""
  sq = ngdjax.losses.squared()
  return sq._replace(
      name="negative",
      hessian=lambda u, y: -jnp.broadcast_to(
          jnp.eye(u.shape[1], dtype=u.dtype), u.shape + u.shape[-1:]),
      hessian_root=lambda u, y: (
          jnp.broadcast_to(jnp.eye(u.shape[1], dtype=u.dtype),
                           u.shape + u.shape[-1:]), u - y),
      sample=None)


@pytest.mark.parametrize("name", ["kfac", "ngd"])
def test_a_negative_curvature_model_is_rejected(name):
  params, x, y = _problem(seed=2)
  lm = levenberg_marquardt(init=1e-3)
  make = {"kfac": kfac, "ngd": ngd}[name]
  opt = make(MODEL, "adaptive", damping=lm, loss=_negative_curvature_loss())
  state = opt.init(params)
  new, state, info = jax.jit(opt.step)(params, state, x, y)
  assert int(info["bad_model"]) == 1
  assert int(info["step_rejected"]) == 1
  assert int(info["diverged"]) == 0
  chex.assert_trees_all_equal(new, params)
  np.testing.assert_allclose(state.damping, 1e-3 * lm.increase)
  assert float(info["update_norm"]) == 0.0
  np.testing.assert_allclose(ravel_pytree(state.velocity)[0], 0.0)


def test_a_step_that_increases_the_loss_is_rejected():
  # sin(50 x.w): the model's minimiser lands far outside the region where
  # the linearisation holds.
  def apply(p, z):
    return jnp.sin(50.0 * z @ p["w"])

  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((5, 8)))
  y = 3 * jnp.asarray(rng.standard_normal(5))
  params = {"w": jnp.ones((8,))}
  opt = ngd(apply, "adaptive", damping=levenberg_marquardt(init=1e-6))
  new, state, info = opt.step(params, opt.init(params), x, y)
  assert float(info["loss_after"]) > float(info["loss"])
  assert float(info["reduction_ratio"]) < 0
  assert int(info["step_rejected"]) == 1
  chex.assert_trees_all_equal(new, params)
  np.testing.assert_allclose(state.damping, 1e-6 * 1.5)


def test_adaptive_defaults_compile_once_and_adapt_every_five_steps():
  params, x, y = _problem(seed=4, n=12)
  opt = kfac(MODEL, factor_decay=0.9, inverse_every=3, fisher="monte_carlo")
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(opt.step, n=1))
  state = opt.init(params)
  rule = damping_lib.ADAPTIVE
  lam = None
  for k in range(11):
    batch = slice(k % 2, k % 2 + 10)
    params, state, info = step(params, state, x[batch], y[batch])
    if k == 0:  # per example: n times init
      np.testing.assert_allclose(info["damping"], 10 * rule.init)
    expected = info["damping"]
    if int(info["step_rejected"]):
      expected = expected * rule.increase
    elif k % rule.every == 0:
      rho = float(info["reduction_ratio"])
      expected = expected * (rule.decrease if rho > 0.75 else
                             rule.increase if rho < 0.25 else 1.0)
    np.testing.assert_allclose(state.damping, expected, rtol=1e-12)
    lam = state.damping
    for key in ("learning_rate", "momentum", "reduction_ratio"):
      assert np.isfinite(float(info[key]))
  assert lam is not None
  assert step._cache_size() == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rate="adaptve"), "learning_rate"),
    (dict(learning_rate=0.1, momentum="adaptive"), "momentum"),
    (dict(momentum="fast"), "momentum"),
    (dict(momentum=1.0), "momentum"),
    (dict(damping="adaptiv"), "damping"),
])
@pytest.mark.parametrize("make", [kfac, ngd], ids=["kfac", "ngd"])
def test_bad_settings_raise(make, kwargs, match):
  with pytest.raises(ValueError, match=match):
    make(MODEL, **kwargs)


def test_defaults_resolve_by_learning_rate():
  adaptive = quadratic.settings("adaptive", None, None)
  assert adaptive.momentum == "adaptive"
  assert adaptive.damping is damping_lib.ADAPTIVE and adaptive.quadratic
  fixed = quadratic.settings(0.1, None, None)
  assert (fixed.momentum, fixed.damping, fixed.quadratic) == (0.0, 0.0,
                                                              False)
  assert quadratic.settings(0.1, None, "adaptive").quadratic


def test_fixed_momentum_with_fixed_learning_rate_is_heavy_ball():
  params, x, y = _problem(seed=5)
  opt = kfac(MODEL, 0.2, damping=LAM, momentum=0.9)
  plain = kfac(MODEL, 0.2, damping=LAM)
  state = opt.init(params)
  p1, state, _ = opt.step(params, state, x, y)
  d1 = ravel_pytree(p1)[0] - ravel_pytree(params)[0]
  p2, state, info = opt.step(p1, state, x, y)
  q2 = plain.step(p1, plain.init(p1), x, y)[0]
  np.testing.assert_allclose(ravel_pytree(p2)[0],
                             ravel_pytree(q2)[0] + 0.9 * d1, rtol=1e-10)
  np.testing.assert_allclose(info["momentum"], 0.9)


# --------------------------------------------------------------------------
# model_batches=2: the model on the current and the previous batch.
# --------------------------------------------------------------------------


def _dense_loss(params, x, y, loss_name) -> float:
  u = np.asarray(MODEL.apply(params, x))
  if loss_name == "squared":
    return 0.5 * float(np.sum((u - np.asarray(y)) ** 2))
  shifted = u - u.max(1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  return -float(np.sum(logp[np.arange(len(u)), np.asarray(y)]))


TWO_BATCH = {
    "kfac": lambda lr, mu, loss="squared", **kw: kfac(
        MODEL, lr, damping=LAM, momentum=mu, loss=loss, **kw),
    "ngd": lambda lr, mu, loss="squared", **kw: ngd(
        MODEL, lr, damping=LAM, momentum=mu, loss=loss, **kw),
}


@pytest.mark.parametrize("loss", ["squared", "softmax_cross_entropy"])
@pytest.mark.parametrize("name", sorted(TWO_BATCH))
def test_two_batch_model_matches_the_dense_system_on_both_batches(name, loss):
  params, x, y = _problem(seed=6, n=14, labels=loss != "squared")
  batches = [(x[:7], y[:7]), (x[7:], y[7:]), (x[:7], y[:7])]
  make = lambda lr, mu, **kw: TWO_BATCH[name](lr, mu, loss, **kw)  # noqa
  opt = make("adaptive", "adaptive", model_batches=2,
             example_inputs=x[:7])
  state = opt.init(params)
  step = jax.jit(opt.step)
  v = None
  for k, (xb, yb) in enumerate(batches):
    flat = np.asarray(ravel_pytree(params)[0])
    used = [(xb, yb)] + ([batches[k - 1]] if k else [])
    g = sum(_dense(params, a, b, loss)[0] for a, b in used)
    curv = sum(_dense(params, a, b, loss)[1] for a, b in used)
    damped = curv + len(used) * LAM * np.eye(flat.size)
    delta = _direction(make, params, xb, yb)  # the current batch's only
    if v is None:
      alpha, mu = -(g @ delta) / (delta @ damped @ delta), 0.0
    else:
      basis = np.stack([delta, v], axis=1)
      alpha, mu = np.linalg.solve(basis.T @ damped @ basis, -basis.T @ g)
    update = alpha * delta + mu * (0 if v is None else v)
    unflat = ravel_pytree(params)[1](jnp.asarray(flat + update))
    actual = sum(_dense_loss(unflat, a, b, loss)
                 - _dense_loss(params, a, b, loss) for a, b in used)
    undamped = g @ update + 0.5 * update @ curv @ update
    params, state, info = step(params, state, xb, yb)
    np.testing.assert_allclose(info["learning_rate"], alpha, rtol=1e-8)
    np.testing.assert_allclose(info["momentum"], mu, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(
        info["model_change"], g @ update + 0.5 * update @ damped @ update,
        rtol=1e-8)
    np.testing.assert_allclose(info["reduction_ratio"], actual / undamped,
                               rtol=1e-7)
    assert int(info["step_rejected"]) == 0
    np.testing.assert_allclose(ravel_pytree(params)[0], flat + update,
                               rtol=1e-9, atol=1e-12)
    v = update
  # Mini-batch NGD: the two-batch model does choose (not 1 and 0).
  assert abs(float(info["learning_rate"]) - 1.0) > 1e-3
  assert abs(float(info["momentum"])) > 1e-3


@pytest.mark.parametrize("name", sorted(TWO_BATCH))
def test_two_copies_of_one_batch_give_the_one_batch_step(name):
  params, x, y = _problem(seed=7)
  one = TWO_BATCH[name]("adaptive", "adaptive")
  two = TWO_BATCH[name]("adaptive", "adaptive", model_batches=2,
                        example_inputs=x)
  p1, s1, p2, s2 = params, one.init(params), params, two.init(params)
  for _ in range(3):
    p1, s1, i1 = one.step(p1, s1, x, y)
    p2, s2, i2 = two.step(p2, s2, x, y)
    for key in ("learning_rate", "momentum", "reduction_ratio", "damping"):
      np.testing.assert_allclose(i2[key], i1[key], rtol=1e-9, atol=1e-13)
  chex.assert_trees_all_close(p2, p1, rtol=1e-9, atol=1e-13)


def test_ngd_one_batch_model_is_the_direction_itself():
  # NGD's direction minimises its own batch's damped model: alpha = 1 and
  # mu = 0 whatever v is (the reason model_batches=2 exists).
  params, x, y = _problem(seed=8, n=14)
  opt = TWO_BATCH["ngd"]("adaptive", "adaptive")
  state = opt.init(params)
  for batch in (slice(0, 7), slice(7, 14), slice(0, 7)):
    params, state, info = opt.step(params, state, x[batch], y[batch])
    np.testing.assert_allclose(info["learning_rate"], 1.0, rtol=1e-8)
    np.testing.assert_allclose(info["momentum"], 0.0, atol=1e-8)


def test_two_batch_state_scans_with_one_structure():
  params, x, y = _problem(seed=9, n=21)
  opt = TWO_BATCH["ngd"]("adaptive", "adaptive", model_batches=2,
                         example_inputs=x[:7])
  xs, ys = x.reshape(3, 7, 4), y.reshape(3, 7, 3)

  def body(carry, batch):
    p, s = carry
    p, s, info = opt.step(p, s, *batch)
    return (p, s), info["learning_rate"]

  (p_scan, s_scan), _ = jax.lax.scan(body, (params, opt.init(params)),
                                     (xs, ys))
  p, s = params, opt.init(params)
  for k in range(3):
    p, s, _ = opt.step(p, s, xs[k], ys[k])
  chex.assert_trees_all_close(p_scan, p, rtol=1e-10)
  np.testing.assert_array_equal(s_scan.previous[0], xs[2])


@pytest.mark.parametrize("kwargs, match", [
    (dict(model_batches=3, example_inputs=np.zeros((7, 4))), "model_batches"),
    (dict(model_batches=True, example_inputs=np.zeros((7, 4))),
     "model_batches"),
    (dict(model_batches=2), "example_inputs"),
    (dict(model_batches=2, learning_rate=0.1, momentum=0.0,
          example_inputs=np.zeros((7, 4))), "learning_rate"),
    (dict(model_batches=2, example_inputs=np.zeros(())), "example_inputs"),
])
@pytest.mark.parametrize("make", [kfac, ngd], ids=["kfac", "ngd"])
def test_bad_model_batches_raise(make, kwargs, match):
  with pytest.raises(ValueError, match=match):
    make(MODEL, **kwargs)


def test_a_batch_of_another_shape_is_named():
  params, x, y = _problem(seed=10, n=14)
  opt = ngd(MODEL, model_batches=2, example_inputs=x[:7])
  with pytest.raises(ValueError, match="x: model_batches=2"):
    opt.step(params, opt.init(params), x[:6], y[:6])

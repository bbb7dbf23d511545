"""The shared curvature step: hyper-parameters in the state and faults."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ngdjax
from ngdjax.optim import gd, kfac, levenberg_marquardt, ngd, optax_optimizer

MODEL = ngdjax.mlp([6], out_dim=2, activation="tanh")


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = MODEL.init(jax.random.key(seed), 3)
  x = jnp.asarray(rng.standard_normal((5, 3)))
  y = jnp.asarray(rng.standard_normal((5, 2)))
  return params, x, y


def _leaves(tree):
  return [np.asarray(t) for t in jax.tree_util.tree_leaves(tree)]


def _finite(tree):
  return all(np.all(np.isfinite(t)) for t in _leaves(tree))


@pytest.mark.parametrize("make", [
    lambda lr: ngd(MODEL, lr, damping=1e-2),
    lambda lr: kfac(MODEL, lr, damping=1e-2),
    lambda lr: gd(MODEL, lr),
], ids=["ngd", "kfac", "gd"])
def test_learning_rate_sweep_compiles_once(make):
  params, x, y = _problem()
  rates = (0.05, 0.1, 0.3)
  # The reference: an optimizer built with each rate as a Python number.
  expected = {}
  for lr in rates:
    fresh = make(lr)
    expected[lr] = fresh.step(params, fresh.init(params), x, y)[0]
  opt = make(0.1)
  chex.clear_trace_counter()  # the counter is keyed by code location
  step = jax.jit(chex.assert_max_traces(opt.step, n=1))
  for lr in rates:
    state = opt.init(params)._replace(learning_rate=jnp.asarray(lr))
    new, _, info = step(params, state, x, y)
    np.testing.assert_allclose(info["learning_rate"], lr)
    chex.assert_trees_all_close(new, expected[lr], rtol=1e-10, atol=1e-13)
  assert step._cache_size() == 1

  # A learning rate traced through the optimizer's constructor.
  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(lr):
    opt = make(lr)
    return opt.step(params, opt.init(params), x, y)[0]

  for lr in rates:
    chex.assert_trees_all_close(run(jnp.asarray(lr)), expected[lr],
                                rtol=1e-10, atol=1e-13)


def test_damping_sweep_compiles_once():
  params, x, y = _problem()
  opt = ngd(MODEL, 0.5, damping=0.1)
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(opt.step, n=1))
  for lam in (0.01, 0.1):
    state = opt.init(params)._replace(damping=jnp.asarray(lam))
    new, _, info = step(params, state, x, y)
    np.testing.assert_allclose(info["damping"], lam)
    fresh = ngd(MODEL, 0.5, damping=lam)
    chex.assert_trees_all_close(
        new, fresh.step(params, fresh.init(params), x, y)[0], rtol=1e-10)
  assert step._cache_size() == 1


OPTIMIZERS = {
    "ngd": lambda: ngd(MODEL, 0.5, damping=1e-2),
    "ngd_cg": lambda: ngd(MODEL, 0.5, damping=1e-2, solver="cg"),
    "kfac": lambda: kfac(MODEL, 0.5, damping=1e-2),
    "gd": lambda: gd(MODEL, 0.1),
    "adam": lambda: optax_optimizer(MODEL, optax.adam(1e-2)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_nonfinite_params_raise_or_are_flagged(name):
  params, x, y = _problem()
  opt = OPTIMIZERS[name]()
  state = opt.init(params)
  bad = jax.tree_util.tree_map(lambda t: t, params)
  bad[0]["W"] = bad[0]["W"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="params contains NaN"):
    opt.step(bad, state, x, y)
  new, _, info = jax.jit(opt.step)(bad, state, x, y)
  assert int(info["params_nonfinite"]) == 1
  assert int(info["diverged"]) == 1


@pytest.mark.parametrize("name", ["ngd", "kfac"])
def test_bad_damping_schedule_falls_back_and_flags(name):
  params, x, y = _problem()
  make = {"ngd": ngd, "kfac": kfac}[name]
  # Valid at step 0, then NaN, then negative.
  sched = lambda c: jnp.where(c == 0, 0.1, jnp.where(c == 1, jnp.nan, -1.0))  # noqa: E731
  opt = make(MODEL, 0.5, damping=sched)
  ref = make(MODEL, 0.5, damping=0.1)
  step, ref_step = jax.jit(opt.step), jax.jit(ref.step)
  p, s = params, opt.init(params)
  rp, rs = params, ref.init(params)
  for k in range(3):
    p, s, info = step(p, s, x, y)
    rp, rs, _ = ref_step(rp, rs, x, y)
    assert int(info["damping_invalid"]) == (k > 0)
    np.testing.assert_allclose(info["damping"], 0.1)
    # The fallback is the last value.
    chex.assert_trees_all_close(p, rp, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["ngd", "kfac", "gd"])
def test_bad_learning_rate_schedule_falls_back_and_flags(name):
  params, x, y = _problem()
  make = {"ngd": lambda lr: ngd(MODEL, lr, damping=0.1),
          "kfac": lambda lr: kfac(MODEL, lr, damping=0.1),
          "gd": lambda lr: gd(MODEL, lr)}[name]
  opt = make(lambda c: jnp.where(c == 0, 0.2, jnp.nan))
  ref = make(0.2)
  p, s, rp, rs = params, opt.init(params), params, ref.init(params)
  for k in range(2):
    p, s, info = jax.jit(opt.step)(p, s, x, y)
    rp, rs, _ = ref.step(rp, rs, x, y)
    assert int(info["learning_rate_invalid"]) == k
    assert int(info["update_skipped"]) == 0
  assert _finite(p)
  chex.assert_trees_all_close(p, rp, rtol=1e-10, atol=1e-13)


def test_optax_nan_schedule_skips_the_update():
  params, x, y = _problem()
  sched = lambda c: jnp.where(c == 0, 1e-2, jnp.nan)  # noqa: E731
  opt = optax_optimizer(MODEL, optax.sgd(sched))
  p, s, info0 = opt.step(params, opt.init(params), x, y)
  p1, s, info1 = jax.jit(opt.step)(p, s, x, y)
  assert int(info0["update_skipped"]) == 0
  assert int(info1["update_skipped"]) == 1 and int(info1["diverged"]) == 1
  chex.assert_trees_all_close(p1, p, rtol=0)


@pytest.mark.parametrize("name", ["ngd", "kfac", "gd", "lm"])
def test_divergence_is_flagged_and_params_stay_finite(name):
  params, x, y = _problem()
  make = {
      "ngd": lambda: ngd(MODEL, 100.0, damping=1e-3),
      "kfac": lambda: kfac(MODEL, 100.0, damping=1e-3),
      "gd": lambda: gd(MODEL, 100.0),
      "lm": lambda: ngd(MODEL, 100.0, damping=levenberg_marquardt(1e-3)),
  }[name]
  opt = make()
  step = jax.jit(opt.step)
  p, s = params, opt.init(params)
  flags = []
  for _ in range(8):
    p, s, info = step(p, s, x, y * 1e3)
    flags.append(int(info["diverged"]))
    assert _finite(p)
  assert flags[0] == 0 or name == "lm"
  assert max(flags) == 1, flags


def test_no_divergence_on_a_converging_run():
  params, x, y = _problem()
  opt = ngd(MODEL, 0.5, damping=1e-3)
  step = jax.jit(opt.step)
  p, s = params, opt.init(params)
  for _ in range(5):
    p, s, info = step(p, s, x, y)
    assert int(info["diverged"]) == 0
    assert math.isfinite(float(info["loss"]))

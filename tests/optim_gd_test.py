"""GD and the optax wrapper against ``jax.grad`` of the sum loss."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ngdjax
from ngdjax.optim import gd, optax_optimizer


def _unit_rows(n, d, seed):
  x = np.random.default_rng(seed).standard_normal((n, d))
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _mlp_and_data():
  model = ngdjax.mlp([6, 5], out_dim=2, activation="tanh")
  shapes = jax.eval_shape(lambda k: model.init(k, 3), jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape)), shapes)
  x = _unit_rows(7, 3, seed=1)
  y = jnp.asarray(rng.standard_normal((7, 2)))
  return model, params, x, y


def _sum_loss(model, params, x, y):
  """docs/math.md, "Conventions": ``L = 1/2 sum_i ||u_i - y_i||^2`` (no 1/n)."""
  return 0.5 * jnp.sum((model.apply(params, x) - y) ** 2)


class GradientReferenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gd_and_optax_sgd_match_the_gradient_of_the_sum_loss(self):
    model, params, x, y = _mlp_and_data()
    schedule = lambda count: 0.3 * 0.5**count  # noqa: E731
    opts = [gd(model, 0.3), gd(model, schedule),
            optax_optimizer(model, optax.sgd(0.3))]

    @self.variant
    def run(p, a, b):
      grads = jax.grad(lambda q: _sum_loss(model, q, a, b))(p)
      out = []
      for opt in opts:
        p1, s1, info1 = opt.step(p, opt.init(p), a, b)
        p2, s2, info2 = opt.step(p1, s1, a, b)
        out.append((p1, info1, info2, s2.count))
      return grads, _sum_loss(model, p, a, b), out

    grads, loss, out = run(params, x, y)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.3 * g, params,
                                      grads)
    grad_norm = math.sqrt(sum(float(jnp.sum(g**2))
                              for g in jax.tree_util.tree_leaves(grads)))
    for p1, info1, _, count in out:
      chex.assert_trees_all_close(p1, expected, rtol=1e-12, atol=1e-14)
      np.testing.assert_allclose(info1["loss"], loss, rtol=1e-12)
      np.testing.assert_allclose(info1["grad_norm"], grad_norm, rtol=1e-12)
      np.testing.assert_allclose(info1["update_norm"], 0.3 * grad_norm,
                                 rtol=1e-12)
      np.testing.assert_allclose(info1["residual_norm"],
                                 math.sqrt(2 * float(loss)), rtol=1e-12)
      assert float(info1["damping"]) == 0.0
      assert int(count) == 2
    # The schedule halves the step size at the second step.
    np.testing.assert_allclose(out[0][2]["learning_rate"], 0.3)
    np.testing.assert_allclose(out[1][2]["learning_rate"], 0.15)


def test_optax_adam_trains_without_recompiling():
  model, params, x, y = _mlp_and_data()
  opt = optax_optimizer(model, optax.adam(0.05))
  chex.clear_trace_counter()  # the counter is keyed by code location
  step = jax.jit(chex.assert_max_traces(opt.step, n=1))
  state = opt.init(params)
  losses = []
  for _ in range(30):
    params, state, info = step(params, state, x, y)
    losses.append(float(info["loss"]))
  assert step._cache_size() == 1
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.75 * losses[0], losses


def test_bare_function_and_one_dimensional_targets():
  def apply(params, x):
    return x @ params  # (n,) output: a single column

  x = _unit_rows(4, 3, seed=2)
  y = jnp.asarray([1.0, -1.0, 0.5, 0.0])
  params = jnp.zeros(3)
  new, _, info = jax.jit(gd(apply, 1.0).step)(params, gd(apply, 1.0).init(
      params), x, y)
  np.testing.assert_allclose(new, np.asarray(x).T @ np.asarray(y),
                             rtol=1e-12)
  np.testing.assert_allclose(info["loss"], 0.5 * float(jnp.sum(y**2)))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda m: gd(m, -0.1), "learning_rate"),
        (lambda m: gd(m, math.nan), "learning_rate"),
        (lambda m: gd(m, lambda count: math.inf), "learning_rate"),
        (lambda m: gd(m, 0.1, loss="l1"), "loss"),
        (lambda m: optax_optimizer(m, "adam"), "tx"),
        (lambda m: gd("not a model", 0.1), "apply_or_model"),
    ],
)
def test_bad_hyperparameters_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build(ngdjax.two_layer_relu(4))


def test_bad_batches_raise():
  model, params, x, y = _mlp_and_data()
  for opt in (gd(model, 0.1), optax_optimizer(model, optax.sgd(0.1))):
    state = opt.init(params)
    with pytest.raises(ValueError, match="y"):
      opt.step(params, state, x, y[:5])
    with pytest.raises(ValueError, match="y"):
      opt.step(params, state, x, y[:, :1])
    with pytest.raises(ValueError, match="x"):
      opt.step(params, state, x.at[2, 0].set(jnp.nan), y)

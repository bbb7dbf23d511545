"""Losses: gradients against autodiff, curvature against mu and L."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax import losses


@pytest.mark.parametrize("loss", [losses.squared(), losses.squared_log_cosh(),
                                  losses.squared_log_cosh(3.0)])
def test_grad_and_curvature_bounds(loss):
  rng = np.random.default_rng(0)
  u = jnp.asarray(rng.standard_normal((5, 2)) * 3)
  y = jnp.asarray(rng.standard_normal((5, 2)))
  np.testing.assert_allclose(loss.grad(u, y), jax.grad(loss.value)(u, y),
                             atol=1e-12)
  # The Hessian in u is diagonal; its entries lie in [mu, L].
  e = jnp.linspace(-30.0, 30.0, 2001)
  curv = jax.vmap(jax.grad(jax.grad(lambda t: loss.value(t, 0.0))))(e)
  assert float(curv.min()) >= loss.mu - 1e-12
  assert float(curv.max()) <= loss.L + 1e-12
  assert float(curv.max()) >= loss.L - 1e-6  # L is attained (at e = 0)


def test_squared_is_half_sum():
  u = jnp.array([[1.0, 2.0], [3.0, 0.0]])
  assert float(losses.squared().value(u, jnp.zeros((2, 2)))) == 7.0


def test_log_cosh_is_stable_for_large_residuals():
  loss = losses.squared_log_cosh(1.0)
  big = jnp.array([1e4])
  v = loss.value(big, jnp.zeros(1))
  np.testing.assert_allclose(v, 0.5e8 + 1e4 - np.log(2.0), rtol=1e-12)


def test_rate_factor():
  loss = losses.squared_log_cosh(1.0)
  assert loss.rate_factor == pytest.approx(2 * 1 * 2 / 3)
  assert losses.squared().rate_factor == 1.0


def test_get_and_bad_input():
  assert losses.get("squared").name == "squared"
  with pytest.raises(ValueError, match="loss must be one of"):
    losses.get("hinge")
  with pytest.raises(ValueError, match="alpha must be non-negative"):
    losses.squared_log_cosh(-1.0)


def test_softmax_cross_entropy_against_autodiff():
  loss = losses.get("softmax_cross_entropy")
  rng = np.random.default_rng(1)
  u = jnp.asarray(rng.standard_normal((4, 3)) * 2)
  labels = jnp.asarray([0, 2, 1, 2])
  onehot = jax.nn.one_hot(labels, 3)
  ref = -np.sum(jax.nn.log_softmax(u)[np.arange(4), labels])
  np.testing.assert_allclose(loss.value(u, labels), ref, rtol=1e-12)
  np.testing.assert_allclose(loss.value(u, onehot), ref, rtol=1e-12)
  np.testing.assert_allclose(loss.grad(u, labels),
                             jax.grad(loss.value)(u, onehot), atol=1e-12)
  hess = jax.hessian(loss.value)(u, onehot)  # (4, 3, 4, 3)
  blocks = np.stack([hess[i, :, i, :] for i in range(4)])
  np.testing.assert_allclose(loss.output_hessian(u, onehot), blocks,
                             atol=1e-12)
  s_mat, h = loss.hessian_root(u, onehot)
  np.testing.assert_allclose(np.einsum("ijk,ilk->ijl", s_mat, s_mat), blocks,
                             atol=1e-12)
  np.testing.assert_allclose(np.einsum("ijk,ik->ij", s_mat, h),
                             loss.grad(u, onehot), atol=1e-12)
  # The identity metric of the regression losses.
  np.testing.assert_array_equal(
      losses.squared().output_hessian(u, u)[1], np.eye(3))


def test_softmax_cross_entropy_root_is_finite_when_saturated():
  loss = losses.softmax_cross_entropy()
  u = jnp.asarray([[0.0, 800.0, -800.0]], jnp.float64)
  s_mat, h = loss.hessian_root(u, jnp.asarray([2]))
  assert np.all(np.isfinite(s_mat)) and np.all(np.isfinite(h))
  assert np.isfinite(float(loss.value(u, jnp.asarray([2]))))


def test_losses_compare_by_value():
  """Equal builds are one static argument of a jitted function."""
  assert ngdjax.losses.squared_log_cosh(1) == (
      ngdjax.losses.squared_log_cosh(1.0))
  assert hash(ngdjax.losses.softmax_cross_entropy()) == hash(
      ngdjax.losses.softmax_cross_entropy())
  assert ngdjax.losses.squared_log_cosh(1.0) != (
      ngdjax.losses.squared_log_cosh(2.0))
  assert ngdjax.losses.squared() != ngdjax.losses.squared_log_cosh(0.0)
  replaced = ngdjax.losses.squared()._replace(grad=lambda u, y: 2 * (u - y))
  assert replaced != ngdjax.losses.squared()

  @chex.assert_max_traces(n=1)
  def value(loss, u, y):
    return loss.value(u, y)

  f = jax.jit(value, static_argnums=0)
  u = jnp.ones((3, 2))
  f(ngdjax.losses.squared_log_cosh(0.5), u, 0 * u)
  f(ngdjax.losses.squared_log_cosh(0.5), u, 0 * u)  # no second trace

"""Tests for ngdjax.diagnostics, each against a dense numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngdjax import data, diagnostics, kernels, models
from ngdjax._src.jacobian import jacobian as dense_jacobian

N, D, M = 6, 3, 16


@pytest.fixture(scope="module")
def setup():
  x, y = data.sphere(N, D, seed=0)
  model = models.two_layer_relu(M)
  with jax.threefry_partitionable(False):  # cheaper to compile on CPU
    params0 = model.init(jax.random.key(1), D)
    # A finite move away from init, large enough to flip some patterns.
    params = {"W": params0["W"] + 0.5 * jax.random.normal(jax.random.key(2),
                                                          (M, D))}
  return model, params0, params, x, y


def test_gram_lambda_min_matches_dense(setup):
  model, _, params, x, _ = setup
  j = np.asarray(dense_jacobian(model, params, x))
  want = np.linalg.eigvalsh(j @ j.T)[0]
  got = diagnostics.gram_lambda_min(model, params, x)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["fro", "max"])
def test_relative_error(norm):
  a = np.array([[1.0, 2.0], [3.0, 4.0]])
  b = np.array([[1.0, 2.5], [3.0, 3.0]])
  ref = {"fro": np.linalg.norm(a - b) / np.linalg.norm(b),
         "max": 1.0 / 3.0}[norm]
  np.testing.assert_allclose(diagnostics.relative_error(a, b, norm=norm), ref)
  with pytest.raises(ValueError, match="norm must be"):
    diagnostics.relative_error(a, b, norm="nuc")
  with pytest.raises(ValueError, match="reference has"):
    diagnostics.relative_error(a, b[:1])


@pytest.mark.parametrize("method", ["dense", "power", "structured"])
def test_jacobian_change_norm_matches_numpy(setup, method):
  model, params0, params, x, _ = setup
  j = np.asarray(dense_jacobian(model, params, x))
  j0 = np.asarray(dense_jacobian(model, params0, x))
  want = np.linalg.norm(j - j0, 2)
  assert want > 0.1
  got = diagnostics.jacobian_change_norm(model, params, params0, x,
                                         method=method, tol=1e-12,
                                         max_iters=500)
  assert got.method == method and got.converged
  np.testing.assert_allclose(got.norm, want,
                             rtol=1e-12 if method != "power" else 1e-6)


def test_jacobian_change_norm_two_outputs_bare_apply():
  # A bare apply function with two outputs, through the power path.
  model = models.two_layer_relu(M, out_dim=2)
  x, _ = data.sphere(N, D, seed=3)
  with jax.threefry_partitionable(False):
    p0 = model.init(jax.random.key(0), D)
  p1 = {"W": p0["W"] * 1.3 + 0.2}
  j = np.asarray(dense_jacobian(model.apply, p1, x))
  j0 = np.asarray(dense_jacobian(model.apply, p0, x))
  got = diagnostics.jacobian_change_norm(model.apply, p1, p0, x,
                                         method="power", tol=1e-12,
                                         max_iters=500)
  np.testing.assert_allclose(got.norm, np.linalg.norm(j - j0, 2), rtol=1e-6)


def test_jacobian_change_norm_zero_and_bad_input(setup):
  model, params0, _, x, _ = setup
  got = diagnostics.jacobian_change_norm(model, params0, params0, x,
                                         method="power")
  assert got.norm == 0.0 and got.converged
  with pytest.raises(ValueError, match="params0 has"):
    diagnostics.jacobian_change_norm(model, params0, {"W": jnp.ones((2, 3))},
                                     x)
  with pytest.raises(ValueError, match="method must be"):
    diagnostics.jacobian_change_norm(model, params0, params0, x,
                                     method="svd")


def test_distance_from_init_and_bound(setup):
  model, params0, params, x, y = setup
  want = np.linalg.norm(np.asarray(params["W"] - params0["W"]))
  np.testing.assert_allclose(
      diagnostics.distance_from_init(params, params0), want)
  u0 = model.apply(params0, x)
  lam0 = float(kernels.lambda_0(x))
  ref = 3 * np.linalg.norm(np.asarray(y) - np.asarray(u0)) / np.sqrt(lam0)
  np.testing.assert_allclose(diagnostics.distance_bound(y, u0, lam0), ref)
  with pytest.raises(ValueError, match="lambda_0 must be positive"):
    diagnostics.distance_bound(y, u0, 0.0)
  with pytest.raises(ValueError, match="u0 has"):
    diagnostics.distance_bound(y, u0[:2], lam0)


def test_activation_flips_counts_changed_signs(setup):
  _, params0, params, x, _ = setup
  w, w0 = np.asarray(params["W"]), np.asarray(params0["W"])
  xs = np.asarray(x)
  want = np.mean((xs @ w.T > 0) != (xs @ w0.T > 0))
  assert 0 < want < 1
  np.testing.assert_allclose(diagnostics.activation_flips(params, params0, x),
                             want)
  np.testing.assert_allclose(diagnostics.activation_flips(w, w, x), 0.0)
  with pytest.raises(ValueError, match="but w0 has"):
    diagnostics.activation_flips(w, w[:3], x)
  with pytest.raises(ValueError, match="x has 2 features"):
    diagnostics.activation_flips(w, w0, xs[:, :2])


def test_generalization_measure_matches_dense(setup):
  _, _, _, x, y = setup
  g = np.asarray(kernels.relu_gram_inf(x))
  ys = np.asarray(y)
  want = np.sqrt(2 * ys[:, 0] @ np.linalg.solve(g, ys[:, 0]) / N)
  np.testing.assert_allclose(diagnostics.generalization_measure(x, y), want,
                             rtol=1e-10)
  np.testing.assert_allclose(
      diagnostics.generalization_measure(x, y[:, 0], g_inf=g), want,
      rtol=1e-10)
  # Two outputs: the quadratic form summed over columns.
  y2 = np.concatenate([ys, 2 * ys], axis=1)
  np.testing.assert_allclose(diagnostics.generalization_measure(x, y2),
                             want * np.sqrt(5), rtol=1e-10)


def test_generalization_measure_bad_input(setup):
  _, _, _, x, y = setup
  with pytest.raises(ValueError, match="unit-norm rows"):
    diagnostics.generalization_measure(2 * x, y)
  with pytest.raises(ValueError, match="y has 3 rows"):
    diagnostics.generalization_measure(x, y[:3])
  parallel = x.at[-1].set(x[0])
  with pytest.raises(ValueError, match="numerically singular"):
    diagnostics.generalization_measure(parallel, y)


def test_fit_power_law_recovers_known_exponent():
  rng = np.random.default_rng(0)
  x = np.repeat(2.0 ** np.arange(4, 14), 5)
  sigma = 0.1
  y = 3.0 * x**-0.5 * np.exp(sigma * rng.normal(size=x.size))
  fit = diagnostics.fit_power_law(x, y)
  lx = np.log(x)
  expected_se = sigma / np.sqrt(np.sum((lx - lx.mean()) ** 2))
  assert abs(fit.exponent + 0.5) < 3 * expected_se
  np.testing.assert_allclose(fit.exponent_stderr, expected_se, rtol=0.3)
  np.testing.assert_allclose(fit.prefactor, 3.0, rtol=0.1)
  assert fit.r_squared > 0.95 and fit.num_points == 50
  lo, hi = fit.interval(3.0)
  assert lo < -0.5 < hi
  np.testing.assert_allclose(fit.predict([1.0]), [fit.prefactor])


def test_fit_power_law_exact_and_bad_input():
  fit = diagnostics.fit_power_law([1, 2, 4, 8], [5, 10, 20, 40])
  np.testing.assert_allclose([fit.exponent, fit.prefactor], [1.0, 5.0])
  assert fit.exponent_stderr < 1e-12 and fit.r_squared == pytest.approx(1.0)
  with pytest.raises(ValueError, match="at least 3 points"):
    diagnostics.fit_power_law([1, 2], [1, 2])
  with pytest.raises(ValueError, match="y must be finite and positive"):
    diagnostics.fit_power_law([1, 2, 3], [1, 0, 2])
  with pytest.raises(ValueError, match="two distinct values"):
    diagnostics.fit_power_law([2, 2, 2], [1, 2, 3])


def test_contraction_ratios():
  r = [4.0, 2.0, 1.0, 0.0, 0.0]
  np.testing.assert_allclose(diagnostics.contraction_ratios(r),
                             [0.25, 0.25, 0.0, 0.0])
  assert np.isinf(diagnostics.contraction_ratios([0.0, 1.0])[0])
  with pytest.raises(ValueError, match="at least 2 steps"):
    diagnostics.contraction_ratios([1.0])
  with pytest.raises(ValueError, match="finite and non-negative"):
    diagnostics.contraction_ratios([1.0, np.nan])


def test_jacobian_change_norm_structured_needs_fixed_layer_inputs(setup):
  _, _, _, x, _ = setup
  net = models.mlp([4, 4])
  p0 = net.init(jax.random.key(0), D)
  p1 = jax.tree_util.tree_map(lambda t: t + 0.1, p0)
  with pytest.raises(ValueError, match="layer inputs that do not change"):
    diagnostics.jacobian_change_norm(net, p1, p0, x, method="structured")
  with pytest.raises(ValueError, match="needs a Model with layer_factors"):
    diagnostics.jacobian_change_norm(lambda p, z: z @ p["w"], {"w": jnp.ones(
        (D, 1))}, {"w": jnp.zeros((D, 1))}, x, method="structured")

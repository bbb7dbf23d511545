"""Infinite-width kernels against their formulas and Monte Carlo estimates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax


def _mean_gram(model, x, seeds):
  """Mean empirical Gram over ``seeds`` random initialisations (one jit)."""
  keys = jax.random.split(jax.random.key(0), seeds)
  grams = jax.jit(jax.vmap(
      lambda k: ngdjax.gram(model, model.init(k, x.shape[1]), x)))(keys)
  return np.asarray(grams.mean(0))


def _sphere(n, d, seed=0):
  x = np.random.default_rng(seed).standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_relu_gram_inf_equals_formula():
  x = _sphere(7, 4)
  expected = np.empty((7, 7))
  for i in range(7):
    for j in range(7):
      cos = min(1.0, max(-1.0, float(x[i] @ x[j])))
      expected[i, j] = x[i] @ x[j] * (np.pi - np.arccos(cos)) / (2 * np.pi)
  np.testing.assert_allclose(ngdjax.relu_gram_inf(jnp.asarray(x)), expected,
                             atol=1e-14)
  # Diagonal of unit rows: theta = 0, G_ii = 1/2.
  np.testing.assert_allclose(np.diag(expected), 0.5, atol=1e-12)


def test_relu_gram_inf_clips_cosine_of_duplicate_rows():
  x = _sphere(3, 5)
  x = np.concatenate([x, x[:1] * (1 + 1e-16)])  # duplicate row: cos may be > 1
  g = ngdjax.relu_gram_inf(jnp.asarray(x))
  assert np.all(np.isfinite(g))


def test_relu_gram_inf_non_unit_rows_is_expectation():
  """For rows of any norm, G_inf = E[x_i.x_j 1{w.x_i>0} 1{w.x_j>0}]."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 3)) * np.array([[0.5], [2.0], [1.0], [3.0]])
  w = rng.standard_normal((400_000, 3)) * 2.0  # nu = 2: no dependence on nu
  s = (x @ w.T > 0).astype(float)
  mc = (x @ x.T) * (s @ s.T) / w.shape[0]
  np.testing.assert_allclose(ngdjax.relu_gram_inf(jnp.asarray(x)), mc,
                             atol=2e-2)


def test_average_gram_approaches_g_inf_with_width():
  """Mean of G(0) over random nets -> G_inf; the error falls with width."""
  x = jnp.asarray(_sphere(6, 3, seed=1))
  g_inf = np.asarray(ngdjax.relu_gram_inf(x))
  errors = []
  # Frobenius error of the mean of 8 nets: about 1 / sqrt(8 m) per entry.
  for width in [16, 256, 16384]:
    model = ngdjax.two_layer_relu(width)
    errors.append(np.linalg.norm(_mean_gram(model, x, 8) - g_inf))
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 2e-2, errors


def test_two_layer_ntk_inf_matches_monte_carlo():
  """Training a too adds E[relu(w.x_i) relu(w.x_j)] (depends on nu)."""
  nu = 0.7
  x = _sphere(4, 3, seed=2)
  rng = np.random.default_rng(5)
  w = nu * rng.standard_normal((400_000, 3))
  pre = x @ w.T
  s = (pre > 0).astype(float)
  h = np.maximum(pre, 0)
  mc = ((x @ x.T) * (s @ s.T) + h @ h.T) / w.shape[0]
  out = ngdjax.two_layer_ntk_inf(jnp.asarray(x), nu=nu)
  np.testing.assert_allclose(out, mc, atol=1e-2)


@pytest.mark.parametrize("depth,b_std", [(1, 0.0), (2, 0.3)])
def test_deep_ntk_matches_average_empirical_gram(depth, b_std):
  """Deep ReLU NTK vs Monte Carlo mean of the empirical NTK of wide MLPs."""
  x = jnp.asarray(_sphere(4, 3, seed=4))
  w_std = 1.4
  theta = np.asarray(
      ngdjax.relu_ntk_inf(x, depth=depth, w_std=w_std, b_std=b_std)
  )
  errors = []
  for width in [16, 2048]:
    model = ngdjax.mlp([width] * depth, w_std=w_std, b_std=b_std or None)
    rel = np.abs(_mean_gram(model, x, 10) - theta).max() / np.abs(theta).max()
    errors.append(rel)
  assert errors[1] < errors[0], errors
  assert errors[1] < 0.05, errors
  # The model's kernel_inf is this kernel.
  model = ngdjax.mlp([8] * depth, w_std=w_std, b_std=b_std or None)
  np.testing.assert_allclose(model.kernel_inf(x), theta, atol=1e-14)


def test_deep_ntk_depth_zero_is_linear_kernel():
  x = jnp.asarray(_sphere(5, 4))
  out = ngdjax.relu_ntk_inf(x, depth=0, w_std=2.0, b_std=0.5)
  np.testing.assert_allclose(out, 4.0 * x @ x.T / 4 + 0.25, atol=1e-14)


def test_lambda_0_and_lambda_min():
  x = jnp.asarray(_sphere(10, 5))
  g = np.asarray(ngdjax.relu_gram_inf(x))
  np.testing.assert_allclose(ngdjax.lambda_0(x), np.linalg.eigvalsh(g)[0],
                             rtol=1e-10)
  assert ngdjax.lambda_0(x) > 0


def test_two_layer_kernel_inf_multi_output():
  x = jnp.asarray(_sphere(3, 2))
  model = ngdjax.two_layer_relu(8, out_dim=2)
  np.testing.assert_allclose(
      model.kernel_inf(x), np.kron(ngdjax.relu_gram_inf(x), np.eye(2))
  )


class TestBadInput:

  def test_zero_row(self):
    x = np.ones((3, 2))
    x[1] = 0
    with pytest.raises(ValueError, match="x has 1 row.* of zero norm"):
      ngdjax.relu_gram_inf(x)

  def test_nan(self):
    with pytest.raises(ValueError, match="x contains NaN"):
      ngdjax.relu_gram_inf(np.full((2, 2), np.nan))

  def test_empty(self):
    with pytest.raises(ValueError, match="x is empty"):
      ngdjax.relu_gram_inf(np.ones((0, 2)))

  def test_wrong_rank(self):
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
      ngdjax.relu_ntk_inf(np.ones(3), depth=1)

  def test_bad_depth(self):
    with pytest.raises(ValueError, match="depth must be an integer"):
      ngdjax.relu_ntk_inf(np.ones((2, 2)), depth=1.5)

  def test_lambda_min_not_square(self):
    with pytest.raises(ValueError, match="g must be square"):
      ngdjax.lambda_min(np.ones((2, 3)))

"""Infinite-width kernels against their formulas and Monte Carlo estimates."""

import decimal

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


# --------------------------------------------------------------------------
# Accuracy near parallel rows, against a 50-digit reference (decimal).
# --------------------------------------------------------------------------

_CTX = decimal.Context(prec=50)
_PI = decimal.Decimal(
    "3.14159265358979323846264338327950288419716939937510582097494")


def _dnorm(v):
  return _CTX.sqrt(sum((t * t for t in v), decimal.Decimal(0)))


def _datan(z):
  """arctan(z), z >= 0, by halving the argument and a Taylor series."""
  with decimal.localcontext(_CTX):
    if z > 1:
      return _PI / 2 - _datan(1 / z)
    halvings = 0
    while z > decimal.Decimal("0.01"):
      z = z / (1 + (1 + z * z).sqrt())
      halvings += 1
    total, term, k = decimal.Decimal(0), z, 0
    while abs(term) > decimal.Decimal("1e-60"):
      total += term / (2 * k + 1)
      term *= -z * z
      k += 1
    return total * 2**halvings


def _dsin_cos(t):
  with decimal.localcontext(_CTX):
    sin, cos, term, k = decimal.Decimal(0), decimal.Decimal(0), \
        decimal.Decimal(1), 0
    while abs(term) > decimal.Decimal("1e-60") or k < 4:
      if k % 4 == 0:
        cos += term
      elif k % 4 == 1:
        sin += term
      elif k % 4 == 2:
        cos -= term
      else:
        sin -= term
      k += 1
      term = term * t / k
    return sin, cos


def _dangle(a, b):
  """Angle of two Decimal vectors: 2 atan(||a^ - b^|| / ||a^ + b^||)."""
  with decimal.localcontext(_CTX):
    na, nb = _dnorm(a), _dnorm(b)
    ua = [t / na for t in a]
    ub = [t / nb for t in b]
    diff = _dnorm([p - q for p, q in zip(ua, ub, strict=True)])
    add = _dnorm([p + q for p, q in zip(ua, ub, strict=True)])
    if add == 0:
      return _PI
    return 2 * _datan(diff / add)


def _dec(x):
  return [[decimal.Decimal(float(t)) for t in row] for row in np.asarray(x)]


def _ref_gram_inf(x):
  rows = _dec(x)
  with decimal.localcontext(_CTX):
    return np.array([[float(sum((p * q for p, q in zip(a, b, strict=True)),
                                decimal.Decimal(0))
                            * (_PI - _dangle(a, b)) / (2 * _PI))
                      for b in rows] for a in rows])


def _ref_ntk(x, depth, w_std, b_std):
  """The arc-cosine recursion of relu_ntk_inf in 50 digits."""
  rows = _dec(x)
  n, d = len(rows), len(rows[0])
  with decimal.localcontext(_CTX):
    w2 = decimal.Decimal(w_std) ** 2
    b2 = decimal.Decimal(b_std) ** 2
    sigma = [[w2 * sum((p * q for p, q in zip(a, b, strict=True)),
                       decimal.Decimal(0)) / d + b2 for b in rows]
             for a in rows]
    ntk = [row[:] for row in sigma]
    for _ in range(depth):
      new = [[None] * n for _ in range(n)]
      for i in range(n):
        for j in range(n):
          qi, qj, c = sigma[i][i], sigma[j][j], sigma[i][j]
          root = (qi * qj).sqrt()
          # The angle of the 2x2 covariance, as the angle between
          # (sqrt(qi), 0) and (c / sqrt(qj), sqrt(qi - c^2 / qj)).
          perp = max(qi - c * c / qj, decimal.Decimal(0)).sqrt()
          t = _dangle([qi.sqrt(), decimal.Decimal(0)], [c / qj.sqrt(), perp])
          sin, cos = _dsin_cos(t)
          e_act = root * (sin + (_PI - t) * cos) / (2 * _PI)
          e_der = (_PI - t) / (2 * _PI)
          new[i][j] = w2 * e_act + b2
          ntk[i][j] = new[i][j] + ntk[i][j] * w2 * e_der
      sigma = new
    return np.array([[float(v) for v in row] for row in ntk])


def _near_parallel(angles, d=5, seed=7):
  """Rows of different norms: a base row, and rows at ``angles`` from it."""
  rng = np.random.default_rng(seed)
  u = rng.standard_normal(d)
  u /= np.linalg.norm(u)
  v = rng.standard_normal(d)
  v -= (v @ u) * u
  v /= np.linalg.norm(v)
  rows = [u] + [np.cos(t) * u + np.sin(t) * v for t in angles]
  rows.append(-rows[1])  # near-antiparallel to the base row
  scales = 0.5 + np.arange(len(rows)) / len(rows)
  return np.array(rows) * scales[:, None]


_ANGLES = (1e-8, 1e-6, 1e-3, 0.7, np.pi - 1e-7)


def test_relu_gram_inf_exact_near_parallel_rows():
  x = _near_parallel(_ANGLES)
  got = np.asarray(ngdjax.relu_gram_inf(jnp.asarray(x)))
  np.testing.assert_allclose(got, _ref_gram_inf(x), rtol=0, atol=1e-14)
  # Unit rows: the diagonal is exactly 1/2 (arccos gave 0.4999999966).
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  np.testing.assert_allclose(np.diag(ngdjax.relu_gram_inf(unit)), 0.5,
                             rtol=0, atol=1e-15)
  # The cross-kernel agrees with the square one.
  np.testing.assert_allclose(
      ngdjax.relu_gram_inf(jnp.asarray(x[:3]), jnp.asarray(x)), got[:3],
      rtol=0, atol=1e-15)


def test_relu_covariance_inf_exact_near_parallel_rows():
  x = _near_parallel(_ANGLES, seed=8)
  rows = _dec(x)
  with decimal.localcontext(_CTX):
    want = np.array([[float(_dnorm(a) * _dnorm(b) * (
        _dsin_cos(t)[0] + (_PI - t) * _dsin_cos(t)[1]) / (2 * _PI))
                      for b in rows for t in [_dangle(a, b)]]
                     for a in rows])
  got = ngdjax.kernels.relu_covariance_inf(jnp.asarray(x))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("depth,b_std", [(1, 0.0), (3, 0.0), (3, 0.4)])
def test_relu_ntk_inf_exact_near_parallel_rows(depth, b_std):
  x = _near_parallel(_ANGLES, seed=9)
  got = np.asarray(ngdjax.relu_ntk_inf(jnp.asarray(x), depth=depth,
                                       w_std=1.3, b_std=b_std))
  want = _ref_ntk(x, depth, 1.3, b_std)
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-14 * np.abs(want).max())


def test_relu_ntk_inf_large_angles_accurate():
  """Generic angles (no near-parallel pair) through several layers."""
  x = _sphere(5, 4, seed=3) * np.array([[1.0], [2.0], [0.5], [1.5], [3.0]])
  got = np.asarray(ngdjax.relu_ntk_inf(jnp.asarray(x), depth=4, w_std=1.2,
                                       b_std=0.3))
  want = _ref_ntk(x, 4, 1.2, 0.3)
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-14 * np.abs(want).max())

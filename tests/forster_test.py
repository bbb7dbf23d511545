"""Forster transform against dense numpy references (float64 unless noted).

Every property is checked on quantities recomputed here in numpy from the
returned ``A`` (never on the error the code reports about itself), and
Algorithm 1 is compared step for step with a ten-line numpy transcription of
the appendix. Shapes are shared across tests so that the jitted loop compiles
only a handful of times.
"""


import jax
import numpy as np
import pytest

from ngdjax._src import forster as forster_lib
from ngdjax._src.forster import (
    ForsterResult,
    ForsterStatus,
    apply_forster,
    forster,
    isotropy_error,
)

N, D = 200, 8
METHODS = ["fixed_point", "newton"]


def _normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _iso_error(z):
  """``||Z^T Z - (n/d) I||_F / (n/d)`` in float64 numpy."""
  z = np.asarray(z, np.float64)
  n, d = z.shape
  return np.linalg.norm(z.T @ z - (n / d) * np.eye(d)) / (n / d)


def _z_of(x, a):
  """``normalize_rows(x A)`` in float64 numpy."""
  return _normalize(np.asarray(x, np.float64) @ np.asarray(a, np.float64))


def _gaussian(n=N, d=D, seed=0):
  return np.random.default_rng(seed).standard_normal((n, d))


def _anisotropic(n=N, d=D, seed=0):
  # Column scales spanning 1e4, and correlated columns.
  rng = np.random.default_rng(seed)
  mix = np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)
  return rng.standard_normal((n, d)) @ mix * np.logspace(0, 4, d)


def _half_in_plane(n=500, d=10, seed=0):
  """Half the rows exactly in a 2-dim subspace (n/2 > 2 n/d); docs/math.md,
  "The Forster transform"."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  x[: n // 2] = rng.standard_normal((n // 2, 2)) @ rng.standard_normal((2, d))
  return x


def _harmonic_frame(n=N, d=D):
  """Unit rows with ``Z^T Z = (n/d) I`` exactly: a harmonic tight frame."""
  k = np.arange(n)[:, None]
  j = np.arange(1, d // 2 + 1)[None, :]
  ang = 2 * np.pi * k * j / n
  return np.sqrt(2.0 / d) * np.concatenate([np.cos(ang), np.sin(ang)], axis=1)


def _algorithm1_reference(x, iters):
  """The appendix's Algorithm 1, transcribed in numpy (docs/math.md, "The
  Forster transform")."""
  z = _normalize(x)
  a = np.eye(x.shape[1])
  for _ in range(iters):
    w, v = np.linalg.eigh(z.T @ z)
    t = (v / np.sqrt(w)) @ v.T
    z = _normalize(z @ t)
    a = a @ t
    a = a / a[0, 0]
  return a


def _check_transform(x, res, tol):
  """Checks every documented property of a converged result."""
  a = np.asarray(res.A, np.float64)
  z_ref = _z_of(x, a)
  assert bool(res.converged), res.reason
  assert res.status == ForsterStatus.CONVERGED
  assert _iso_error(z_ref) < tol
  np.testing.assert_allclose(np.asarray(res.Z), z_ref, atol=10 * tol)
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(res.Z, np.float64), axis=1), 1.0, atol=tol
  )
  assert a[0, 0] == pytest.approx(1.0, abs=tol)
  assert float(res.error) == pytest.approx(_iso_error(z_ref), abs=tol)
  assert float(res.cond) == pytest.approx(np.linalg.cond(a), rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data", [_gaussian, _anisotropic])
def test_isotropic_to_1e_10(method, data):
  x = data()
  res = forster(x, tol=1e-10, method=method)
  _check_transform(x, res, tol=1e-10)
  # The anisotropic data needs A to undo the column scales.
  if data is _anisotropic:
    assert float(res.cond) > 1e3


def test_fixed_point_is_algorithm_1():
  x = _anisotropic()
  res = forster(x, method="fixed_point")
  a_ref = _algorithm1_reference(x, int(res.iterations))
  np.testing.assert_allclose(np.asarray(res.A), a_ref, rtol=1e-8, atol=1e-8)


def test_history():
  x = _gaussian()
  res = forster(x, method="fixed_point")
  k = int(res.iterations)
  hist = np.asarray(res.history)
  assert hist.shape == (501,)
  assert hist[0] == pytest.approx(_iso_error(_normalize(x)), rel=1e-10)
  assert hist[k] <= 1e-10 and np.all(np.isfinite(hist[: k + 1]))
  assert np.all(np.isnan(hist[k + 1 :]))
  # Linear convergence: every step of Algorithm 1 reduces the error here.
  assert np.all(np.diff(hist[: k + 1]) < 0)


@pytest.mark.parametrize("method", METHODS)
def test_already_isotropic_gives_identity(method):
  frame = _harmonic_frame()
  assert _iso_error(frame) < 1e-12
  # Row scales do not matter: normalize_rows(x) is the frame.
  scales = np.logspace(-3, 3, N)[np.random.default_rng(1).permutation(N)]
  x = frame * scales[:, None]
  res = forster(x, method=method)
  np.testing.assert_allclose(np.asarray(res.A), np.eye(D), atol=1e-10)
  np.testing.assert_allclose(np.asarray(res.Z), frame, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_invariance_under_linear_map(method):
  x = _gaussian()
  rng = np.random.default_rng(3)
  lmap = rng.standard_normal((D, D)) + 3 * np.eye(D)
  assert np.linalg.cond(lmap) > 5
  res = forster(x, method=method)
  res_l = forster(x @ lmap, method=method)
  _check_transform(x @ lmap, res_l, tol=1e-10)
  # Z is unique up to a right orthogonal factor, so Z Z^T is unique.
  z, z_l = np.asarray(res.Z), np.asarray(res_l.Z)
  np.testing.assert_allclose(z_l @ z_l.T, z @ z.T, atol=1e-8)
  # M = A A^T is unique up to scale: M_l is proportional to L^-1 M L^-T.
  a, a_l = np.asarray(res.A), np.asarray(res_l.A)
  lin = np.linalg.inv(lmap)
  m_expect = lin @ a @ a.T @ lin.T
  m_l = a_l @ a_l.T
  np.testing.assert_allclose(
      m_l / m_l[0, 0], m_expect / m_expect[0, 0], rtol=1e-7, atol=1e-9
  )


def test_methods_agree_and_newton_needs_fewer_iterations():
  x = _anisotropic()
  fp = forster(x, method="fixed_point")
  nt = forster(x, method="newton")
  z_fp, z_nt = np.asarray(fp.Z), np.asarray(nt.Z)
  np.testing.assert_allclose(z_nt @ z_nt.T, z_fp @ z_fp.T, atol=1e-8)
  m_fp = np.asarray(fp.A) @ np.asarray(fp.A).T
  m_nt = np.asarray(nt.A) @ np.asarray(nt.A).T
  np.testing.assert_allclose(
      m_nt / m_nt[0, 0], m_fp / m_fp[0, 0], rtol=1e-7, atol=1e-9
  )
  assert int(nt.iterations) < int(fp.iterations) / 2
  assert int(nt.cg_iterations) > 0 and int(fp.cg_iterations) == 0


def test_near_critical_data_is_not_refused():
  # 46 of 200 rows exactly in a 2-dim subspace: just below 2 n / d = 50, so
  # the transform exists (no false "degenerate" verdict) but Algorithm 1
  # converges slowly; Newton's method does not care.
  x = _gaussian()
  rng = np.random.default_rng(4)
  x[:46] = rng.standard_normal((46, 2)) @ rng.standard_normal((2, D))
  fp = forster(x, method="fixed_point")
  nt = forster(x, method="newton")
  _check_transform(x, fp, tol=1e-10)
  _check_transform(x, nt, tol=1e-10)
  assert int(fp.iterations) > 100 and int(nt.iterations) < 10


@pytest.mark.parametrize("method", METHODS)
def test_float32(method):
  x = _gaussian().astype(np.float32)
  res = forster(x, method=method)  # default float32 tol is 1e-5
  assert res.A.dtype == np.float32 and res.Z.dtype == np.float32
  assert bool(res.converged), res.reason
  assert _iso_error(_z_of(x, res.A)) < 1e-4
  np.testing.assert_allclose(np.asarray(res.A)[0, 0], 1.0, rtol=1e-6)
  ref = forster(x.astype(np.float64), method=method)
  np.testing.assert_allclose(
      np.asarray(res.Z) @ np.asarray(res.Z).T,
      np.asarray(ref.Z) @ np.asarray(ref.Z).T,
      atol=1e-4,
  )


def _duplicated_rows():
  # 40 rows parallel to one direction (more than n / d = 25).
  x = _gaussian()
  x[:40] = x[0] * np.linspace(0.5, 2.0, 40)[:, None]
  return x


def _mostly_in_hyperplane():
  # 190 of 200 rows in a 7-dim coordinate subspace (more than 7 n / d = 175).
  x = _gaussian()
  x[:190, -1] = 0.0
  return x


def _few_rows_rank_deficient():
  x = _gaussian()
  return x @ np.diag([1.0] * (D - 1) + [0.0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "make, match",
    [
        (_half_in_plane, "250 of the n = 500 rows .* 2-dimensional subspace"),
        (_duplicated_rows, "40 rows of x are parallel to row 0"),
        (_mostly_in_hyperplane, "190 of the n = 200 rows .* 7-dimensional"),
        (_few_rows_rank_deficient, "rank 7 < d = 8"),
    ],
)
def test_degenerate_inputs_refused(method, make, match):
  x = make()
  with pytest.raises(ValueError, match=match):
    forster(x, method=method)
  if "rank" in match:
    return  # refused before the iteration
  res = forster(x, method=method, raise_on_failure=False)
  assert not bool(res.converged)
  assert res.reason and not res.reason.startswith("converged")
  # Whatever is reported, it is not an isotropic transform.
  assert _iso_error(_z_of(x, res.A)) > 1e-3


def test_silent_failure_of_algorithm_1_is_caught():
  # docs/math.md, "The Forster transform": with the safeguards off (no cond
  # limit, no stall test),
  # Algorithm 1's own iterate reaches tol while cond(A) explodes and
  # normalize_rows(x A) is nowhere near isotropic.
  x = _half_in_plane()
  res = forster(
      x,
      method="fixed_point",
      max_cond=1e300,
      patience=10_000,
      raise_on_failure=False,
  )
  k = int(res.iterations)
  assert float(res.history[k]) <= 1e-10  # the iterate "converged"
  assert res.status == ForsterStatus.INCONSISTENT
  assert not bool(res.converged)
  assert float(res.cond) > 1e12
  assert _iso_error(_z_of(x, res.A)) > 0.1
  with pytest.raises(ValueError, match="inconsistent"):
    forster(x, method="fixed_point", max_cond=1e300, patience=10_000)


@pytest.mark.parametrize("method", METHODS)
def test_perturb_is_opt_in_and_seeded(method):
  x = _half_in_plane()
  res = forster(x, method=method, perturb=1e-3, seed=1)
  # Z is the transform of the perturbed rows, which are in general position.
  x_pert = x + (
      np.linalg.norm(x, axis=1, keepdims=True)
      * 1e-3
      / np.sqrt(x.shape[1])
      * np.asarray(jax.random.normal(jax.random.key(1), x.shape))
  )
  _check_transform(x_pert, res, tol=1e-10)
  # The isotropy of degenerate data rests on the perturbation itself: A
  # blows it up, and the unperturbed rows are far from isotropic.
  assert _iso_error(_z_of(x, res.A)) > 0.1
  again = forster(x, method=method, perturb=1e-3, seed=1)
  np.testing.assert_array_equal(np.asarray(again.A), np.asarray(res.A))
  other = forster(x, method=method, perturb=1e-3, seed=2)
  assert not np.allclose(np.asarray(other.A), np.asarray(res.A))


def test_max_iters_reported_or_raised():
  x = _anisotropic()
  res = forster(x, method="fixed_point", max_iters=2, raise_on_failure=False)
  assert res.status == ForsterStatus.MAX_ITERS
  assert not bool(res.converged) and int(res.iterations) == 2
  assert res.reason.startswith("max_iters")
  with pytest.raises(ValueError, match="did not converge after 2"):
    forster(x, method="fixed_point", max_iters=2)


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.ones(5), {}, "x must have 2 dimensions"),
        (np.zeros((0, 3)), {}, "x is empty"),
        (_gaussian(N, D) * np.nan, {}, "x contains NaN or Inf"),
        (np.where(np.eye(N, D) > 0, np.inf, 1.0), {}, "NaN or Inf"),
        (np.vstack([_gaussian(10, 3), np.zeros((1, 3))]), {}, "zero norm"),
        (_gaussian(3, 5), {}, "n = 3 rows but d = 5 .* No transform is needed"),
        (_gaussian(), {"method": "magic"}, "method must be one of"),
        (_gaussian(), {"tol": -1.0}, "tol must be positive"),
        (_gaussian(), {"tol": float("nan")}, "tol must be finite"),
        (_gaussian(), {"max_iters": 0}, "max_iters must be positive"),
        (_gaussian(), {"max_iters": 2.5}, "max_iters must be an integer"),
        (_gaussian(), {"perturb": 0.0}, "perturb must be positive"),
        (_gaussian(), {"max_cond": -1.0}, "max_cond must be positive"),
    ],
)
def test_bad_input(x, kwargs, match):
  with pytest.raises(ValueError, match=match):
    forster(x, **kwargs)


def test_apply_forster():
  x = _anisotropic()
  res = forster(x, method="newton")
  assert isinstance(res, ForsterResult)
  np.testing.assert_allclose(
      np.asarray(apply_forster(res, x)), np.asarray(res.Z), atol=1e-12
  )
  x_new = _anisotropic(seed=5)[:7]
  out = np.asarray(apply_forster(res.A, x_new))
  np.testing.assert_allclose(out, _z_of(x_new, res.A), atol=1e-12)
  with pytest.raises(ValueError, match="x_new has 3 features"):
    apply_forster(res, x_new[:, :3])
  with pytest.raises(ValueError, match="x_new has 1 row"):
    apply_forster(res, np.vstack([x_new, np.zeros((1, D))]))
  with pytest.raises(ValueError, match="NaN or Inf"):
    apply_forster(res, x_new * np.nan)
  with pytest.raises(ValueError, match="must be square"):
    apply_forster(np.ones((D, 3)), x_new)


def test_isotropy_error_matches_reference():
  x = _anisotropic()
  assert float(isotropy_error(x)) == pytest.approx(_iso_error(x), rel=1e-12)


def test_jit_compatible_and_compiled_once():
  x = _gaussian()
  eager = forster(x, method="fixed_point")
  jitted = jax.jit(
      lambda x: forster(x, method="fixed_point", raise_on_failure=False)
  )(x)
  np.testing.assert_allclose(
      np.asarray(jitted.A), np.asarray(eager.A), atol=1e-12
  )

  before = forster_lib._forster_jit._cache_size()
  forster(_gaussian(seed=7), method="fixed_point", tol=1e-9, patience=5)
  assert forster_lib._forster_jit._cache_size() == before

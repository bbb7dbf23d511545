"""Damped PSD solves (ngdjax/_src/optim/solvers.py): CG against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngdjax._src.optim import solvers


def _spd(k, cond, seed=0):
  """``Q diag(e) Q^T`` with eigenvalues log-spaced over ``cond``."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((k, k)))
  e = np.logspace(0, np.log10(cond), k)
  return (q * e) @ q.T


@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_cg_equals_numpy_solve(damping):
  a = _spd(40, 1e3)
  b = np.cos(np.arange(40.0))
  res = solvers.cg(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), damping,
                   1e-12, 200)
  ref = np.linalg.solve(a + damping * np.eye(40), b)
  assert int(res.failed) == 0
  np.testing.assert_allclose(np.asarray(res.x), ref, rtol=1e-8)
  assert float(res.residual) <= 1e-12


def test_preconditioned_cg_equals_numpy_solve_in_fewer_iterations():
  """An exact low-rank part in the preconditioner (the top eigenpairs):
  same solution, far fewer products on an ill-conditioned matrix."""
  k, rank, lam = 60, 12, 1e-2
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((k, k)))
  e = np.concatenate([np.logspace(2, 5, rank), np.logspace(-1, 0, k - rank)])
  a = (q * e) @ q.T
  order = np.argsort(e)[::-1][:rank]
  u, top = q[:, order], e[order]
  floor = e[np.argsort(e)[::-1][rank]]

  def precond(r):  # Nystrom form: (top_k+1 + lam) U (L + lam)^-1 U^T + I-UU^T
    ur = jnp.asarray(u).T @ r
    return (r - jnp.asarray(u) @ ur
            + jnp.asarray(u) @ ((floor + lam) / (top + lam) * ur))

  b = jnp.asarray(np.sin(np.arange(k) + 0.5))
  ref = np.linalg.solve(a + lam * np.eye(k), np.asarray(b))
  plain = solvers.cg(lambda v: jnp.asarray(a) @ v, b, lam, 1e-10, 500)
  pre = solvers.cg(lambda v: jnp.asarray(a) @ v, b, lam, 1e-10, 500,
                   preconditioner=precond)
  for res in (plain, pre):
    np.testing.assert_allclose(np.asarray(res.x), ref, rtol=1e-6)
  assert int(pre.iterations) * 3 < int(plain.iterations), (
      int(pre.iterations), int(plain.iterations))


def test_damped_system_at_large_size_is_not_called_singular():
  """Half the eigenvalues 100, half 0, damping 1e-3, k = 131072, float32:
  positive definite, solved in two products. The old breakdown test
  (``||x|| k eps c_max > ||b||``) declared it singular and returned a
  relative residual of 1."""
  k = 131072
  e = jnp.where(jnp.arange(k) % 2 == 0, 100.0, 0.0).astype(jnp.float32)
  b = jnp.cos(jnp.arange(k, dtype=jnp.float32))
  res = jax.jit(lambda b: solvers.cg(lambda v: e * v, b, 1e-3, 1e-5, 50))(b)
  assert int(res.failed) == 0
  assert float(res.residual) <= 1e-5
  np.testing.assert_allclose(np.asarray(res.x), np.asarray(b / (e + 1e-3)),
                             rtol=1e-4)
  old_trouble = (float(jnp.linalg.norm(res.x)) * k * 1.19e-7 * 100
                 > float(jnp.linalg.norm(b)))
  assert old_trouble  # the case the old test misjudged


def test_cg_singular_undamped_still_falls_back():
  """Rank-2 PSD matrix, zero damping, b outside its range: breakdown, the
  damped fallback, a bounded x."""
  rng = np.random.default_rng(3)
  f = rng.standard_normal((8, 2))
  a = f @ f.T
  b = rng.standard_normal(8)
  res = solvers.cg(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), 0.0,
                   1e-12, 100)
  assert int(res.failed) == 1
  assert np.all(np.isfinite(np.asarray(res.x)))
  # The damped re-solve (lam = sqrt(eps) c_max): ||x|| ~ ||b|| /
  # sqrt(eps), far below the ||b|| / eps of plain CG.
  eps = np.finfo(float).eps
  assert float(jnp.linalg.norm(res.x)) < 1e-3 * np.linalg.norm(b) / eps

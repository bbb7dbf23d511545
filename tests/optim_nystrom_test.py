"""Nystrom / randomly pivoted Cholesky preconditioners for kernel CG
(ngdjax/_src/optim/nystrom.py), against dense numpy on tiny problems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax._src.optim import nystrom


def _problem(n=30, d=5, c=2, shift=0.0, seed=1):
  model = ngdjax.two_layer_relu(64, out_dim=c)
  params = model.init(jax.random.key(0), d)
  x = ngdjax.normalize_rows(
      jax.random.normal(jax.random.key(seed), (n, d)) + shift)
  return model, params, x


def _columns(g, c):
  g = jnp.asarray(g)
  return lambda idx: g[:, (idx[:, None] * c + jnp.arange(c)).reshape(-1)]


@pytest.mark.parametrize("rank,block", [(30, 4), (30, 30), (12, 5)])
def test_rp_cholesky_is_a_nystrom_approximation(rank, block):
  """All pivots: F F^T = G exactly. Fewer: F F^T = G[:, P] G[P, P]^+
  G[P, :] on the pivots P it chose, below G (PSD remainder)."""
  model, params, x = _problem()
  g = np.asarray(ngdjax.gram(model, params, x))
  diag = jnp.asarray(np.diag(g).reshape(30, 2))
  f = np.asarray(nystrom.rp_cholesky(_columns(g, 2), diag, rank,
                                     jax.random.key(3), block=block))
  approx = f @ f.T
  if rank == 30:
    np.testing.assert_allclose(approx, g, atol=1e-12)
  else:
    assert np.linalg.eigvalsh(g - approx)[0] > -1e-10
    # Pivots: the rows F reproduces exactly.
    exact = np.where(np.abs(np.diag(g - approx)) < 1e-10)[0]
    assert len(exact) >= 2 * rank - 2
    p = exact
    ref = g[:, p] @ np.linalg.pinv(g[np.ix_(p, p)]) @ g[p, :]
    np.testing.assert_allclose(approx, ref, atol=1e-8)


def test_inverse_equals_the_dense_formula():
  rng = np.random.default_rng(0)
  f = rng.standard_normal((20, 6))
  pre = nystrom.from_factor(jnp.asarray(f))
  u, sv, _ = np.linalg.svd(f, full_matrices=False)
  lam, mu = sv**2, 0.3
  dense = (lam[-1] + mu) * (u / (lam + mu)) @ u.T + np.eye(20) - u @ u.T
  r = rng.standard_normal(20)
  np.testing.assert_allclose(np.asarray(pre.inverse(mu)(jnp.asarray(r))),
                             dense @ r, rtol=1e-10)
  assert int(pre.rank) == 6


def test_preconditioned_ngd_step_equals_exact_step_in_fewer_products():
  """Inputs around a common direction: a few eigenvalues of G far above a
  bulk (condition ~1e4 with the damping). Same step as the Cholesky one;
  the Nystrom preconditioner of rank 40 more than halves the products."""
  model = ngdjax.two_layer_relu(256)
  params = model.init(jax.random.key(0), 8)
  x = ngdjax.normalize_rows(
      jax.random.normal(jax.random.key(1), (300, 8)) + 1.0)
  y = jnp.sin(3 * x[:, 0])
  ref_opt = ngdjax.ngd(model, 0.5, damping=1e-3)
  ref, _, _ = jax.jit(ref_opt.step)(params, ref_opt.init(params), x, y)
  iters = {}
  for pc in (None, "nystrom"):
    opt = ngdjax.ngd(model, 0.5, damping=1e-3, solver="cg",
                     preconditioner=pc, preconditioner_rank=40,
                     cg_tol=1e-9, chunk_size=64)
    new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
    np.testing.assert_allclose(new["W"], ref["W"], rtol=1e-6, atol=1e-9)
    assert float(info["cg_residual"]) <= 1e-8
    iters[pc] = int(info["cg_iterations"])
  assert 2 * iters["nystrom"] < iters[None], iters
  assert int(info["preconditioner_rank"]) == 40
  assert float(info["preconditioner_seconds"]) >= 0


def test_true_fisher_cross_entropy_cg_equals_cholesky():
  """The N = n c true-Fisher system S^T G S of softmax cross-entropy."""
  model, params, x = _problem(n=20, d=4, c=3)
  labels = jnp.arange(20) % 3
  steps = []
  for kw in ({}, {"solver": "cg", "preconditioner": "nystrom",
                  "preconditioner_rank": 6, "cg_tol": 1e-10}):
    opt = ngdjax.ngd(model, 0.5, damping=1e-2,
                     loss="softmax_cross_entropy", **kw)
    steps.append(jax.jit(opt.step)(params, opt.init(params), x, labels))
  np.testing.assert_allclose(steps[1][0]["W"], steps[0][0]["W"], rtol=1e-7,
                             atol=1e-10)
  assert float(steps[1][2]["cg_residual"]) <= 1e-9


def test_bad_preconditioner_arguments():
  model, _, _ = _problem()
  with pytest.raises(ValueError, match="preconditioner"):
    ngdjax.ngd(model, 0.5, preconditioner="nystrom")  # cholesky solver
  with pytest.raises(ValueError, match="preconditioner"):
    ngdjax.ngd(model, 0.5, solver="cg", preconditioner="jacobi")
  with pytest.raises(ValueError, match="preconditioner_rank"):
    ngdjax.ngd(model, 0.5, solver="cg", preconditioner="nystrom",
               preconditioner_rank=0)

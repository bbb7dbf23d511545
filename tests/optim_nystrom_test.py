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
  # Rows rotated in place by blocks of 8 (two blocks and a remainder).
  pre = nystrom.from_factor(jnp.asarray(f), block=8)
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


def _conv_apply(p, x):
  """A conv layer (patch form), a dense head and a generic leaf (``off``
  enters through ``sin``: Jacobian rows)."""
  z = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jnp.tanh(z + jnp.sin(p["off"]))
  return h.reshape(h.shape[0], -1) @ p["v"]


def _embed_apply(p, x):
  """An embedding table (gather by the integer ids in x) and a dense
  head: the structured sketch's "embed" form."""
  h = jnp.tanh(p["embed"][x.astype(jnp.int32)])  # (n, T, D)
  return h.reshape(h.shape[0], -1) @ p["out"]


@pytest.mark.parametrize("case", ["dense_rows", "conv", "embed"])
def test_sketch_equals_dense_kernel(case):
  """Diagonal and pivot columns of G and S^T G S from layer factors (and
  from cross-Grams) equal the dense kernel, with a ragged last chunk."""
  if case == "embed":
    keys = jax.random.split(jax.random.key(0), 2)
    params = {"embed": jax.random.normal(keys[0], (50, 3)),
              "out": jax.random.normal(keys[1], (4 * 3, 2))}
    model = _embed_apply
    # Integer tokens: the kernel in the parameters' dtype.
    x = jnp.asarray(np.random.default_rng(2).integers(0, 50, (11, 4)),
                    jnp.int32)
  elif case == "conv":
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"w": 0.3 * jax.random.normal(keys[0], (3, 3, 8, 16)),
              "off": 0.1 * jax.random.normal(keys[1], (16,)),
              "v": 0.3 * jax.random.normal(keys[2], (64, 2))}
    model, x = _conv_apply, jax.random.normal(keys[3], (11, 4, 4, 8))
  else:
    model, params, x = _problem(n=11, c=2)
  n, c = 11, 2
  g = np.asarray(ngdjax.gram(model, params, x, method="jacobian"))
  rows = jax.random.normal(jax.random.key(5), (n, c, c))
  idx = jnp.array([3, 10])
  cols = (np.asarray(idx)[:, None] * c + np.arange(c)).reshape(-1)
  st = ngdjax.models.model_structure(model, params, x)
  for r in (None, rows) if case == "dense_rows" else (None,):
    k = g if r is None else np.einsum(
        "ika,ikjl,jlb->iajb", r, g.reshape(n, c, n, c), r).reshape(22, 22)
    for sketch in (nystrom.structured_sketch(st, params, x, rows=r,
                                             chunk_size=4),
                   nystrom.generic_sketch(model, params, x, rows=r,
                                          chunk_size=4)):
      np.testing.assert_allclose(np.asarray(sketch.diagonal()).reshape(-1),
                                 np.diag(k), rtol=1e-10)
      np.testing.assert_allclose(np.asarray(sketch.columns(idx)),
                                 k[:, cols], rtol=1e-10, atol=1e-12)


def test_one_device_mesh_factor_equals_unsharded():
  """nystrom.sharded_factor and mesh_inverse (inside shard_map) on a
  one-device mesh: the same F F^T = U diag(l) U^T and M^{-1} r as
  rp_cholesky and from_factor. The 4-device cases (tests/multidevice) are
  slow-marked; this keeps the mesh path in the default run."""
  from ngdjax import parallel

  model, params, x = _problem(n=12, d=4, c=2)
  st = ngdjax.models.model_structure(model, params, x)
  key = jax.random.key(3)
  mesh = parallel.data_mesh(jax.devices()[:1])
  r = jnp.cos(jnp.arange(24.0))

  def make(p, z, rows):
    return nystrom.structured_sketch(st, p, z, rows=rows)

  @jax.jit
  def both(p, z):
    sketch = make(p, z, None)
    ref = nystrom.from_factor(nystrom.rp_cholesky(
        sketch.columns, sketch.diagonal(), 4, key))
    out = nystrom.sharded_factor(make, p, z, mesh, rank=4, key=key)
    return (ref, out, ref.inverse(0.1)(r),
            nystrom.mesh_inverse(out, 0.1, mesh, 24)(r))

  ref, out, ref_r, out_r = both(params, x)
  np.testing.assert_allclose(
      (out.basis * out.eigvals) @ out.basis.T,
      (ref.basis * ref.eigvals) @ ref.basis.T, atol=1e-12)
  np.testing.assert_allclose(out_r, ref_r, atol=1e-12)


@pytest.mark.slow
def test_one_device_mesh_preconditioned_step_equals_unsharded():
  """The mesh path (nystrom.sharded_factor and mesh_inverse inside
  shard_map) on a one-device mesh: the same step, rank and products as
  without a mesh. The 4-device cases run in tests/multidevice."""
  from ngdjax import parallel

  model, params, x = _problem(n=12, d=4, c=2)
  y = jnp.sin(3 * x[:, :2])
  results = []
  for m in (None, parallel.data_mesh(jax.devices()[:1])):
    opt = ngdjax.ngd(model, 0.5, damping=1e-3, solver="cg", mesh=m,
                     preconditioner="nystrom", preconditioner_rank=4,
                     cg_tol=1e-12)
    results.append(jax.jit(opt.step)(params, opt.init(params), x, y))
  (p0, _, i0), (p1, _, i1) = results
  np.testing.assert_allclose(p1["W"], p0["W"], rtol=1e-10, atol=1e-12)
  for k in ("preconditioner_rank", "cg_iterations"):
    assert int(i1[k]) == int(i0[k]), k

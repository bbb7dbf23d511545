"""The lean Gram + Cholesky solve (ngdjax/_src/optim/kernel_solve.py).

Every piece against a dense reference (float64, tiny), and the compiled
step's memory against a model in N (one N x N buffer), which is what the
lean path is for.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax._src.jacobian import gram_blocks
from ngdjax._src.optim import kernel_solve, solvers

MODELS = {
    "two_layer_c1": ngdjax.two_layer_relu(32),
    "two_layer_c2": ngdjax.two_layer_relu(16, out_dim=2),
    "mlp_c2": ngdjax.mlp([8, 8], out_dim=2),
}


def _x(n, seed=2):
  x = np.random.default_rng(seed).standard_normal((n, 3))
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _dense_gram(model, params, x):
  jac = jax.jacrev(lambda p: model.apply(p, x).reshape(-1))(params)
  jac = np.concatenate([np.asarray(leaf).reshape(leaf.shape[0], -1)
                        for leaf in jax.tree_util.tree_leaves(jac)], axis=1)
  return jac @ jac.T


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["structured", "jacobian", "products"])
@pytest.mark.parametrize("n,block", [(7, 3), (10, 4)])
def test_gram_blocks_equals_dense(name, method, n, block):
  model = MODELS[name]
  params = model.init(jax.random.key(1), 3)
  x = _x(n)
  ref = _dense_gram(model, params, x)
  full = gram_blocks(model, params, x, block, method)
  np.testing.assert_allclose(np.asarray(full), ref, atol=1e-12)
  lower = gram_blocks(model, params, x, block, method, lower_only=True,
                      diag_shift=0.25)
  np.testing.assert_allclose(np.tril(np.asarray(lower)),
                             np.tril(ref + 0.25 * np.eye(len(ref))),
                             atol=1e-12)


@pytest.mark.parametrize("size,block", [(9, 3), (10, 4), (7, 1), (5, 16)])
def test_tri_solve_ignores_upper_triangle(size, block):
  rng = np.random.default_rng(0)
  a = rng.standard_normal((size, size))
  chol = np.linalg.cholesky(a @ a.T + size * np.eye(size))
  buffer = chol + np.triu(rng.standard_normal((size, size)), 1)
  rhs = rng.standard_normal(size)
  for transpose, ref in ((False, np.linalg.solve(chol, rhs)),
                         (True, np.linalg.solve(chol.T, rhs))):
    out = solvers.tri_solve(jnp.asarray(buffer), jnp.asarray(rhs),
                                 transpose=transpose, block=block)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10)


@pytest.mark.parametrize("size,block", [(37, 8), (32, 8), (6, 16), (5, 1)])
def test_blocked_cholesky_equals_numpy(size, block):
  """Tiles of 8 with a 5-row edge block (37 = 4 * 8 + 5), exact multiples,
  one block and 1 x 1 tiles; the upper triangle is never read."""
  rng = np.random.default_rng(1)
  a = rng.standard_normal((size, size))
  spd = a @ a.T + np.eye(size)
  buffer = np.tril(spd) + np.triu(rng.standard_normal((size, size)), 1)
  chol, ok = jax.jit(lambda m: solvers.blocked_cholesky(m, block=block))(
      jnp.asarray(buffer))
  assert bool(ok)
  np.testing.assert_allclose(np.tril(np.asarray(chol)),
                             np.linalg.cholesky(spd), rtol=1e-10, atol=1e-12)
  bad = np.tril(spd) - 2 * np.abs(np.linalg.eigvalsh(spd)).max() * np.eye(
      size)
  _, ok = solvers.blocked_cholesky(jnp.asarray(bad), block=block)
  assert not bool(ok)


def test_tri_solve_matrix_rhs():
  rng = np.random.default_rng(2)
  a = rng.standard_normal((13, 13))
  chol = np.linalg.cholesky(a @ a.T + 13 * np.eye(13))
  rhs = rng.standard_normal((13, 3))
  out = solvers.cho_solve(jnp.asarray(chol), jnp.asarray(rhs), block=4)
  np.testing.assert_allclose(np.asarray(out),
                             np.linalg.solve(chol @ chol.T, rhs), rtol=1e-10)


def test_psd_solve_above_one_block_equals_numpy(monkeypatch):
  monkeypatch.setattr(solvers, "CHOLESKY_BLOCK", 8)
  rng = np.random.default_rng(3)
  a = rng.standard_normal((21, 21))
  spd = a @ a.T
  rhs = rng.standard_normal((21, 2))
  x, failed = solvers.psd_solve(jnp.asarray(spd), jnp.asarray(rhs), 0.1)
  assert int(failed) == 0
  np.testing.assert_allclose(np.asarray(x),
                             np.linalg.solve(spd + 0.1 * np.eye(21), rhs),
                             rtol=1e-9)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("chunk", [2, 5])
def test_gram_cholesky_solve_equals_dense(name, chunk):
  model = MODELS[name]
  params = model.init(jax.random.key(1), 3)
  x = _x(11)
  g = _dense_gram(model, params, x)
  rhs = np.cos(np.arange(len(g)))
  ref = np.linalg.solve(g + 0.1 * np.eye(len(g)), rhs)
  v, gv, failed = jax.jit(
      lambda p, z: kernel_solve.gram_cholesky_solve(
          model, p, z, jnp.asarray(rhs), 0.1, chunk_size=chunk))(params, x)
  assert int(failed) == 0
  np.testing.assert_allclose(np.asarray(v), ref, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(np.asarray(gv), g @ ref, rtol=1e-9, atol=1e-12)


def test_singular_system_falls_back_to_min_norm_solution():
  """Repeated inputs, zero damping: Cholesky fails the checks; CG from 0
  gives the minimum-norm solution of the consistent system."""
  model = MODELS["two_layer_c1"]
  params = model.init(jax.random.key(1), 3)
  x = jnp.concatenate([_x(5), _x(5)])
  g = _dense_gram(model, params, x)
  rhs = g @ np.sin(np.arange(len(g)))  # in the range of G
  v, gv, failed = kernel_solve.gram_cholesky_solve(
      model, params, x, jnp.asarray(rhs), 0.0, chunk_size=3)
  assert int(failed) == 1
  np.testing.assert_allclose(np.asarray(v), np.linalg.pinv(g) @ rhs,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gv), rhs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("damping", [1e-3, "lm"])
def test_ngd_lean_step_equals_dense_step(damping):
  """ngd with more examples than chunk_size takes the lean path; it equals
  the one-block step (Levenberg-Marquardt also uses its G v)."""
  model = MODELS["two_layer_c2"]
  params = model.init(jax.random.key(0), 3)
  x = _x(13)
  y = jnp.stack([jnp.sin(3 * x[:, 0]), jnp.cos(x[:, 1])], axis=1)
  assert kernel_solve.use_lean_solve(13, 4)
  assert not kernel_solve.use_lean_solve(13, None)
  out = []
  for chunk in (None, 4):
    lam = (ngdjax.optim.levenberg_marquardt(1e-2) if damping == "lm"
           else damping)
    opt = ngdjax.ngd(model, learning_rate=0.7, damping=lam, chunk_size=chunk)
    state = opt.init(params)
    p, state, info = jax.jit(opt.step)(params, state, x, y)
    out.append((p, state, info))
  np.testing.assert_allclose(out[1][0]["W"], out[0][0]["W"], atol=1e-11)
  for key in out[0][2]:
    np.testing.assert_allclose(out[1][2][key], out[0][2][key], rtol=1e-9,
                               atol=1e-12, err_msg=key)


def test_compiled_step_holds_one_n_by_n_buffer():
  """Memory model (float32): the jitted Cholesky step's temporaries are one
  N x N buffer plus O(block (N + m)); the one-block path holds several."""
  n, d, m, block = 1024, 16, 256, 128
  model = ngdjax.two_layer_relu(m)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32),
                                  model.init(jax.random.key(0), d))
  x = _x(n).astype(jnp.float32)
  x = jnp.tile(x, (1, 6))[:, :d]
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  y = jnp.sin(3 * x[:, 0])

  def temp_bytes(chunk):
    opt = ngdjax.ngd(model, learning_rate=1.0, damping=1e-3,
                     chunk_size=chunk)
    compiled = jax.jit(opt.step).lower(params, opt.init(params), x,
                                       y).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip("no memory analysis on this backend")
    return analysis.temp_size_in_bytes

  entries = n * n
  lean = temp_bytes(block)
  assert lean <= 4 * entries + 4 * 16 * block * (n + m), lean / entries
  assert temp_bytes(None) > 8 * entries  # the model can fail


_FACTOR_OPS = re.compile(
    r"cholesky|potrf|triangular_solve|trsm", re.IGNORECASE)


def _factor_operand_dims(text):
  """Every tensor dimension on the lines of Cholesky / triangular-solve ops
  (LAPACK custom calls or XLA ops) of a StableHLO or HLO module text."""
  dims = []
  for line in text.splitlines():
    if _FACTOR_OPS.search(line) and ("custom_call" in line
                                     or "stablehlo." in line
                                     or "custom-call" in line):
      for shape in re.findall(r"tensor<([0-9x]+)x?[a-z]", line):
        dims += [int(v) for v in shape.split("x") if v]
      for shape in re.findall(r"f(?:32|64)\[([0-9,]+)\]", line):
        dims += [int(v) for v in shape.split(",") if v]
  return dims


@pytest.mark.parametrize("name,n,chunk", [("two_layer_c2", 40, 8),
                                          ("two_layer_c1", 12, None)])
def test_no_factorisation_larger_than_the_block(monkeypatch, name, n, chunk):
  """No Cholesky or triangular-solve op in the lowered NGD step (lean path
  with chunk_size, and psd_solve's one-block path without) gets an operand
  dimension larger than the block (7 here: N = 80 and 12)."""
  block = 7
  monkeypatch.setattr(solvers, "CHOLESKY_BLOCK", block)
  model = MODELS[name]
  params = model.init(jax.random.key(0), 3)
  x = _x(n)
  y = jnp.sin(3 * x[:, :model.out_dim])
  opt = ngdjax.ngd(model, learning_rate=1.0, damping=1e-3, chunk_size=chunk)
  lowered = jax.jit(opt.step).lower(params, opt.init(params), x, y)
  for text in (lowered.as_text(), lowered.compile().as_text()):
    dims = _factor_operand_dims(text)
    assert dims, "no factorisation found: the test would be vacuous"
    assert max(dims) <= block, max(dims)
  # The step still equals the one with a LAPACK call per system.
  monkeypatch.setattr(solvers, "CHOLESKY_BLOCK", 1024)
  ref = jax.jit(opt.step)(params, opt.init(params), x, y)
  monkeypatch.setattr(solvers, "CHOLESKY_BLOCK", block)
  out = jax.jit(opt.step)(params, opt.init(params), x, y)
  np.testing.assert_allclose(out[0]["W"], ref[0]["W"], rtol=1e-9, atol=1e-12)

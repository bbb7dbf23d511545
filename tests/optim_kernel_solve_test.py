"""The lean Gram + Cholesky solve (ngdjax/_src/optim/kernel_solve.py).

Every piece against a dense reference (float64, tiny), and the compiled
step's memory against a model in N (one N x N buffer), which is what the
lean path is for.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax._src.jacobian import gram_blocks
from ngdjax._src.optim import kernel_solve

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
    out = kernel_solve.tri_solve(jnp.asarray(buffer), jnp.asarray(rhs),
                                 transpose=transpose, block=block)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10)


def test_cholesky_in_place_reads_lower_triangle():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((6, 6))
  spd = a @ a.T + np.eye(6)
  buffer = np.tril(spd) + np.triu(rng.standard_normal((6, 6)), 1)
  chol, ok = jax.jit(kernel_solve.cholesky_in_place)(jnp.asarray(buffer))
  assert bool(ok)
  np.testing.assert_allclose(np.tril(np.asarray(chol)),
                             np.linalg.cholesky(spd), rtol=1e-12)
  _, ok = kernel_solve.cholesky_in_place(jnp.asarray(-np.eye(3)))
  assert not bool(ok)


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

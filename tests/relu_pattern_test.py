"""The two-layer ReLU Gram product from bit-packed activation patterns,
against ``G = J J^T`` from a dense ``jax.jacrev`` Jacobian (float64), and
its use by ``ngd``'s CG step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax._src import models, relu_pattern


def _problem(n, d, m, c, seed=0):
  model = ngdjax.two_layer_relu(m, c)
  params = model.init(jax.random.key(seed), d)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, d)))
  v = jnp.asarray(rng.standard_normal((n, c)))
  return model, params, x, v


def _dense_product(model, params, x, v):
  jac = jax.jacrev(lambda w: model.apply({"W": w}, x).reshape(-1))(
      params["W"])
  jac = np.asarray(jac).reshape(v.size, -1)
  return (jac @ (jac.T @ np.asarray(v).reshape(-1))).reshape(v.shape)


@pytest.mark.parametrize("chunk_size,c", [(None, 1), (6, 3), (7, 1),
                                          (50, 3)])
def test_product_equals_dense_gram(chunk_size, c):
  # m = 13: the last byte of the packed pattern is part padding; n = 18
  # with chunk 7: the last block is part padding.
  model, params, x, v = _problem(18, 4, 13, c)
  a = models.output_layer(13, c, 0)
  got = relu_pattern.gram_product(params, x, jnp.asarray(a), chunk_size)(v)
  np.testing.assert_allclose(got, _dense_product(model, params, x, v),
                             rtol=1e-12, atol=1e-12)


def test_pattern_is_packed_eight_units_per_byte():
  _, params, x, _ = _problem(8, 3, 20, 1)
  bits = relu_pattern.packed_pattern(x.reshape(2, 4, 3), params["W"])
  assert bits.shape == (2, 4, 3) and bits.dtype == jnp.uint8
  want = np.asarray(x @ params["W"].T > 0).reshape(2, 4, 20)
  np.testing.assert_array_equal(
      np.unpackbits(np.asarray(bits), axis=-1, count=20), want)


def test_zero_preactivation_is_off_as_autodiff():
  # w_0 . x_2 = 0 exactly: relu'(0) = 0 (autodiff's convention), so unit 0
  # is off for example 2; ">= 0" would add a_0 x_2 / sqrt(m) to its row.
  model, params, x, v = _problem(5, 3, 16, 1)
  params = {"W": params["W"].at[0].set(jnp.array([1.0, 0.0, 0.0]))}
  x = x.at[2].set(jnp.array([0.0, 1.0, -2.0]))
  got = model.gram_product(params, x, 2)(v)
  np.testing.assert_allclose(got, _dense_product(model, params, x, v),
                             rtol=1e-12, atol=1e-12)


def test_linearized_model_products_use_the_jacobian_at_params0():
  model, params0, x, v = _problem(9, 3, 24, 2)
  lin = ngdjax.linearize(model, params0)
  other = {"W": params0["W"] + 0.7}
  got = lin.gram_product(other, x, 4)(v)
  np.testing.assert_allclose(got, _dense_product(model, params0, x, v),
                             rtol=1e-12, atol=1e-12)


def test_cg_step_uses_the_model_product():
  # A model whose product is 2 G: the CG step must change (and match the
  # step for the kernel 2 G), so the hook is the product CG runs.
  model, params, x, _ = _problem(12, 3, 32, 1)
  y = jnp.sin(x[:, 0])

  def doubled(params, x, chunk_size):
    prod = relu_pattern.gram_product(params, x,
                                     jnp.asarray(models.output_layer(32)),
                                     chunk_size)
    return lambda v: 2.0 * prod(v)

  def step(mdl):
    opt = ngdjax.ngd(mdl, 1.0, damping=0.1, solver="cg", cg_tol=1e-12,
                     cg_maxiter=200, chunk_size=5)
    return jax.jit(opt.step)(params, opt.init(params), x, y)[0]["W"]

  jac = jax.jacrev(lambda w: model.apply({"W": w}, x).reshape(-1))(
      params["W"]).reshape(12, -1)
  g = np.asarray(jac @ jac.T)
  resid = np.asarray(model.apply(params, x))[:, 0] - np.asarray(y)
  for mdl, scale in ((model, 1.0), (model._replace(gram_product=doubled),
                                    2.0)):
    coef = np.linalg.solve(scale * g + 0.1 * np.eye(12), resid)
    want = np.asarray(params["W"]) - (np.asarray(jac).T @ coef).reshape(
        params["W"].shape)
    np.testing.assert_allclose(step(mdl), want, rtol=1e-8, atol=1e-10)


def test_cross_entropy_cg_step_with_the_model_product_equals_cholesky():
  # c = 3 outputs, the true Fisher of softmax cross-entropy: CG runs on
  # S^T G S through the model's product (chunked), Cholesky on the Gram.
  model, params, x, _ = _problem(10, 3, 24, 3)
  labels = jnp.arange(10) % 3
  kw = {"loss": "softmax_cross_entropy", "damping": 0.05}
  cg = ngdjax.ngd(model, 1.0, solver="cg", cg_tol=1e-12, cg_maxiter=300,
                  chunk_size=4, **kw)
  chol = ngdjax.ngd(model, 1.0, **kw)
  got = jax.jit(cg.step)(params, cg.init(params), x, labels)[0]["W"]
  want = jax.jit(chol.step)(params, chol.init(params), x, labels)[0]["W"]
  np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_gram_operator_takes_the_models_product_and_equals_gram_vp():
  from ngdjax._src import jacobian

  model, params, x, v = _problem(11, 3, 16, 2)
  flat = v.reshape(-1)
  want = ngdjax.gram_vp(model, params, x, flat, 4)
  np.testing.assert_allclose(
      jacobian.gram_operator(model, params, x, 4)(flat), want, rtol=1e-12)
  # A model whose product is wrong shows which product the operator runs.
  wrong = model._replace(gram_product=lambda p, z, b: lambda u: 0.0 * u)
  assert float(jnp.abs(
      jacobian.gram_operator(wrong, params, x, 4)(flat)).max()) == 0.0


def test_cholesky_checks_run_on_the_models_product():
  # The solve is checked with G v from the model's product: a product of
  # 2 G makes the exact Cholesky solution fail its residual check.
  from ngdjax._src.optim import kernel_solve

  model, params, x, _ = _problem(12, 3, 32, 1)
  rhs = jnp.cos(jnp.arange(12.0))

  def doubled(params, x, chunk_size):
    prod = relu_pattern.gram_product(params, x,
                                     jnp.asarray(models.output_layer(32)),
                                     chunk_size)
    return lambda u: 2.0 * prod(u)

  for mdl, failed in ((model, 0), (model._replace(gram_product=doubled), 1)):
    _, _, flag = kernel_solve.gram_cholesky_solve(
        mdl, params, x, rhs, 0.1, chunk_size=4)
    assert int(flag) == failed

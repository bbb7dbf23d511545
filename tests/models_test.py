"""Models: parameterisation, layer factors and bad arguments."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ngdjax


def _x(n=6, d=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n, d)))


def test_two_layer_matches_paper_formula():
  m, nu = 64, 0.5
  model = ngdjax.two_layer_relu(m, nu=nu, output_seed=3)
  params = model.init(jax.random.key(1), 3)
  assert list(params) == ["W"]  # only W is trainable
  assert ravel_pytree(params)[0].size == m * 3
  w = np.asarray(params["W"])
  a = ngdjax.models.output_layer(m, 1, output_seed=3)[:, 0]
  x = np.asarray(_x())
  expected = np.maximum(x @ w.T, 0) @ a / np.sqrt(m)
  np.testing.assert_allclose(model.apply(params, jnp.asarray(x))[:, 0],
                             expected, atol=1e-13)
  assert set(np.unique(a)) == {-1.0, 1.0}


def test_two_layer_init_statistics():
  nu = 0.3
  params = ngdjax.two_layer_relu(4096, nu=nu).init(jax.random.key(0), 8)
  w = np.asarray(params["W"])
  assert w.shape == (4096, 8)
  assert abs(w.std() - nu) < 0.01 * nu * 3
  assert abs(w.mean()) < 0.01


@pytest.mark.parametrize(
    "model",
    [ngdjax.two_layer_relu(8, out_dim=2),
     ngdjax.mlp([5, 4], out_dim=2, activation="tanh"),
     ngdjax.mlp([5], out_dim=1, b_std=None)],
    ids=["two_layer", "mlp_bias", "mlp_nobias"],
)
def test_layer_factors_are_outer_products_of_the_jacobian(model):
  """d u[i,k] / d M_l[a,b] = inputs[i,a] * output_grads[i,k,b]."""
  params = model.init(jax.random.key(2), 3)
  x = _x()
  per_ex = jax.vmap(
      jax.jacrev(lambda p, xi: model.apply(p, xi[None])[0]),
      in_axes=(None, 0),
  )(params, x)
  # Per-example Jacobians in layer-matrix layout, (n, c, a, b) per layer.
  mats_jac = jax.vmap(jax.vmap(model.to_layer_matrices))(per_ex)
  factors = model.layer_factors(params, x)
  assert len(factors) == len(mats_jac)
  for f, jac in zip(factors, mats_jac, strict=True):
    outer = jnp.einsum("ia,ikb->ikab", f.inputs, f.output_grads)
    np.testing.assert_allclose(outer, jac, atol=1e-13)


def test_layer_matrices_round_trip():
  model = ngdjax.mlp([4, 3], out_dim=2)
  params = model.init(jax.random.key(0), 5)
  back = model.from_layer_matrices(model.to_layer_matrices(params))
  flat1, _ = ravel_pytree(params)
  flat2, _ = ravel_pytree(back)
  np.testing.assert_array_equal(flat1, flat2)
  assert [m.shape for m in model.to_layer_matrices(params)] == [
      (6, 4), (5, 3), (4, 2)]


def test_mlp_ntk_parameterisation():
  """z_1 = w_std x W_0 / sqrt(d) + b_std b_0, ..., linear output."""
  w_std, b_std = 1.3, 0.2
  model = ngdjax.mlp([4], out_dim=1, activation="relu", w_std=w_std,
                     b_std=b_std)
  p = model.init(jax.random.key(0), 3)
  x = np.asarray(_x())
  h = np.maximum(w_std * x @ np.asarray(p[0]["W"]) / np.sqrt(3)
                 + b_std * np.asarray(p[0]["b"]), 0)
  u = w_std * h @ np.asarray(p[1]["W"]) / 2 + b_std * np.asarray(p[1]["b"])
  np.testing.assert_allclose(model.apply(p, jnp.asarray(x)), u, atol=1e-13)


def test_custom_activation():
  model = ngdjax.mlp([4], activation=jnp.sin)
  p = model.init(jax.random.key(0), 2)
  x = _x(3, 2)
  h = jnp.sin(x @ p[0]["W"] / jnp.sqrt(2.0) + 0.1 * p[0]["b"])
  np.testing.assert_allclose(
      model.apply(p, x), h @ p[1]["W"] / 2.0 + 0.1 * p[1]["b"], atol=1e-13
  )


class TestBadArguments:

  def test_width(self):
    with pytest.raises(ValueError, match="width must be positive"):
      ngdjax.two_layer_relu(0)
    with pytest.raises(ValueError, match="width must be an integer"):
      ngdjax.two_layer_relu(2.5)

  def test_nu(self):
    with pytest.raises(ValueError, match="nu must be finite"):
      ngdjax.two_layer_relu(4, nu=float("nan"))

  def test_activation(self):
    with pytest.raises(ValueError, match="activation must be one of"):
      ngdjax.mlp([4], activation="sigmoidish")

  def test_in_dim(self):
    with pytest.raises(ValueError, match="in_dim must be positive"):
      ngdjax.two_layer_relu(4).init(jax.random.key(0), 0)

  def test_widths(self):
    with pytest.raises(ValueError, match="widths must be positive"):
      ngdjax.mlp([4, -1])


# --------------------------------------------------------------------------
# Equality by value .
# --------------------------------------------------------------------------


@pytest.mark.parametrize("build,same,other", [
    (lambda: ngdjax.two_layer_relu(8, out_dim=2, nu=0.5, output_seed=1),
     lambda: ngdjax.models.two_layer_relu(
         width=np.int64(8), out_dim=2, nu=np.float64(0.5), output_seed=1),
     lambda: ngdjax.two_layer_relu(8, out_dim=2, nu=0.5, output_seed=2)),
    (lambda: ngdjax.two_layer_relu(8, nu=1),
     lambda: ngdjax.two_layer_relu(8, nu=1.0),
     lambda: ngdjax.two_layer_relu(8, nu=2)),
    (lambda: ngdjax.mlp([5, 4], out_dim=2, activation="tanh"),
     lambda: ngdjax.mlp((5, 4), out_dim=2, activation="tanh", b_std=0.1),
     lambda: ngdjax.mlp([5, 4], out_dim=2, activation="tanh", w_std=2.0)),
    (lambda: ngdjax.mlp([4], activation=jnp.sin, b_std=None),
     lambda: ngdjax.mlp([4], activation=jnp.sin, b_std=None),
     lambda: ngdjax.mlp([4], activation=jnp.sin, b_std=0.0)),
], ids=["two_layer", "two_layer_int_nu", "mlp", "mlp_custom_activation"])
def test_equal_arguments_give_equal_models(build, same, other):
  a, b, c = build(), same(), other()
  assert a is not b and a.apply is not b.apply
  assert a == b and not a != b and hash(a) == hash(b)
  assert {a: 1}[b] == 1
  assert a.name == b.name
  assert a != c and not a == c
  # Each field compares by value too (optimizers take model.apply alone).
  for fa, fb in zip(a, b, strict=True):
    assert fa == fb and hash(fa) == hash(fb)
  x = _x()
  params = a.init(jax.random.key(0), 3)
  np.testing.assert_array_equal(a.apply(params, x), b.apply(params, x))


@pytest.mark.parametrize("other", [
    lambda: ngdjax.two_layer_relu(8, nu=0.5, output_seed=1),
    lambda: ngdjax.two_layer_relu(9),
    lambda: ngdjax.two_layer_relu(8, out_dim=2),
    lambda: ngdjax.mlp([8]),
], ids=["nu_seed", "width", "out_dim", "mlp"])
def test_different_arguments_give_unequal_models(other):
  a, b = ngdjax.two_layer_relu(8), other()
  assert a != b and a.apply != b.apply


def test_replacing_a_field_or_linearizing_breaks_equality():
  """A model with a swapped function must not reuse the original's trace."""
  model = ngdjax.two_layer_relu(8)
  assert model._replace(apply=lambda p, x: x) != ngdjax.two_layer_relu(8)
  lin = ngdjax.linearize(model, model.init(jax.random.key(0), 3))
  assert lin != model and lin != ngdjax.two_layer_relu(8)


def test_jit_with_a_static_model_compiles_once_for_equal_builds():
  chex.clear_trace_counter()

  @functools.partial(jax.jit, static_argnums=0)
  @chex.assert_max_traces(n=1)
  def outputs(model, params, x):
    return model.apply(params, x)

  x = _x()
  params = ngdjax.two_layer_relu(16).init(jax.random.key(0), 3)
  first = outputs(ngdjax.two_layer_relu(16), params, x)
  second = outputs(ngdjax.two_layer_relu(16), params, x)
  np.testing.assert_array_equal(first, second)
  assert outputs._cache_size() == 1
  # A different model is a new compilation.
  with pytest.raises(AssertionError, match="traced > 1 times"):
    outputs(ngdjax.two_layer_relu(16, nu=0.5), params, x)


def test_user_built_models_compare_by_identity_of_their_functions():
  def init(key, in_dim):
    return {"w": jnp.ones((in_dim,))}

  def apply(params, x):
    return (x @ params["w"])[:, None]

  a = ngdjax.Model(init=init, apply=apply, out_dim=1, name="linear")
  b = ngdjax.Model(init=init, apply=apply, out_dim=1, name="linear")
  c = ngdjax.Model(init=init, apply=lambda p, x: apply(p, x), out_dim=1,
                   name="linear")
  assert a == b and hash(a) == hash(b)
  assert a != c
  assert a.apply is apply  # user functions are not wrapped
  params = a.init(jax.random.key(0), 3)
  g = ngdjax.gram(a, params, _x())
  np.testing.assert_allclose(g, np.asarray(_x()) @ np.asarray(_x()).T,
                             atol=1e-12)

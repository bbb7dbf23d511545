"""Every Jacobian/Gram method against a dense ``jax.jacrev`` reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

import ngdjax


def _inputs(n=5, d=3, seed=1):
  x = np.random.default_rng(seed).standard_normal((n, d))
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _bare_linear(params, x):
  """A bare apply function (no Model) with two outputs."""
  return x @ params["V"] + jnp.sin(x) @ params["U"]


def _bare_tanh_net(params, x):
  return jnp.tanh(x @ params[0]) @ params[1]


def _cases():
  """(name, apply_or_model, params) triples covering models and bare fns."""
  key = jax.random.key(0)
  d = 3
  two1 = ngdjax.two_layer_relu(16)
  two3 = ngdjax.two_layer_relu(16, out_dim=3, nu=0.5)
  mlp1 = ngdjax.mlp([8, 6], out_dim=1)
  mlp2 = ngdjax.mlp([7], out_dim=2, activation="tanh", b_std=None)
  k1, k2 = jax.random.split(key)
  return [
      ("two_layer_c1", two1, two1.init(key, d)),
      ("two_layer_c3", two3, two3.init(key, d)),
      ("mlp_relu_c1", mlp1, mlp1.init(key, d)),
      ("mlp_tanh_c2", mlp2, mlp2.init(key, d)),
      ("bare_two_layer", two1.apply, two1.init(key, d)),
      (
          "bare_linear",
          _bare_linear,
          {"V": jax.random.normal(k1, (d, 2)),
           "U": jax.random.normal(k2, (d, 2))},
      ),
      (
          "bare_tanh",
          _bare_tanh_net,
          [jax.random.normal(k1, (d, 5)), jax.random.normal(k2, (5,))],
      ),
  ]


CASES = _cases()
IDS = [c[0] for c in CASES]


def _dense_jacobian(apply_or_model, params, x):
  apply = getattr(apply_or_model, "apply", apply_or_model)
  flat, unravel = ravel_pytree(params)
  return jax.jacrev(lambda f: apply(unravel(f), x).reshape(-1))(flat)


@pytest.mark.parametrize("name,fn,params", CASES, ids=IDS)
def test_jacobian_matches_jacrev(name, fn, params, chunk_size=2):
  x = _inputs()
  ref = _dense_jacobian(fn, params, x)
  out = ngdjax.jacobian(fn, params, x, chunk_size=chunk_size)
  np.testing.assert_allclose(out, ref, atol=1e-13)


class DenseReferenceTest(chex.TestCase):
  """``gram`` and ``gram_vp`` against ``jacrev``, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f"{name}_{method}", fn, params, method)
      for name, fn, params in CASES
      for method in ("jacobian", "products", "structured"))
  def test_gram_methods_match_dense(self, fn, params, method, chunk_size=2):
    # A bare function's dense layers are found in its traced computation
    # (ngdjax._src.structure); every other leaf is on the exact generic path.
    x = _inputs()
    j = _dense_jacobian(fn, params, x)
    out = self.variant(lambda p, z: ngdjax.gram(
        fn, p, z, method=method, chunk_size=chunk_size))(params, x)
    chex.assert_shape(out, (j.shape[0], j.shape[0]))
    np.testing.assert_allclose(out, j @ j.T, atol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f"{name}_chunk_{chunk_size}", fn, params, chunk_size)
      for name, fn, params in CASES for chunk_size in (None, 3))
  def test_gram_vp_matches_dense(self, fn, params, chunk_size):
    x = _inputs()
    j = _dense_jacobian(fn, params, x)
    g = j @ j.T
    rng = np.random.default_rng(3)
    v = jnp.asarray(rng.standard_normal(g.shape[0]))
    vs = jnp.asarray(rng.standard_normal((g.shape[0], 2)))
    gram_vp = self.variant(lambda p, z, vec: ngdjax.gram_vp(
        fn, p, z, vec, chunk_size=chunk_size))
    out, outs = gram_vp(params, x, v), gram_vp(params, x, vs)
    chex.assert_shape((out, outs), ((g.shape[0],), (g.shape[0], 2)))
    np.testing.assert_allclose(out, g @ v, atol=1e-12)
    np.testing.assert_allclose(outs, g @ vs, atol=1e-12)


@pytest.mark.parametrize("name,fn,params", CASES, ids=IDS)
@pytest.mark.parametrize("method", ["jacobian", "products", "structured"])
def test_cross_gram_matches_dense(name, fn, params, method):
  x, x2 = _inputs(5), 1.5 * _inputs(3, seed=7)
  j1 = _dense_jacobian(fn, params, x)
  j2 = _dense_jacobian(fn, params, x2)
  out = ngdjax.gram(fn, params, x, x2, method=method)
  np.testing.assert_allclose(out, j1 @ j2.T, atol=1e-12)


def test_jvp_and_vjp_match_dense():
  name, fn, params = CASES[1]
  x = _inputs()
  j = _dense_jacobian(fn, params, x)
  flat, unravel = ravel_pytree(params)
  t = jnp.asarray(np.random.default_rng(0).standard_normal(flat.size))
  np.testing.assert_allclose(ngdjax.jvp(fn, params, x, unravel(t)), j @ t,
                             atol=1e-13)
  v = jnp.asarray(np.random.default_rng(1).standard_normal(j.shape[0]))
  np.testing.assert_allclose(ravel_pytree(ngdjax.vjp(fn, params, x, v))[0],
                             j.T @ v, atol=1e-13)


def test_two_layer_structured_equals_paper_formula():
  """G = (X X^T) * (S S^T) / m, and the multi-output form (docs/math.md,
  "The two-layer ReLU network")."""
  m, c = 32, 2
  model = ngdjax.two_layer_relu(m, out_dim=c)
  params = model.init(jax.random.key(4), 4)
  x = np.asarray(_inputs(6, 4))
  w = np.asarray(params["W"])
  s = (x @ w.T > 0).astype(float)
  a = ngdjax.models.output_layer(m, c, output_seed=0)
  expected = np.zeros((6 * c, 6 * c))
  assert set(np.unique(a)) <= {-1.0, 1.0}
  for i in range(6):
    for j in range(6):
      for k in range(c):
        for q in range(c):
          expected[i * c + k, j * c + q] = (
              x[i] @ x[j] * np.sum(a[:, k] * a[:, q] * s[i] * s[j]) / m
          )
  out = ngdjax.gram(model, params, jnp.asarray(x), method="structured")
  np.testing.assert_allclose(out, expected, atol=1e-13)
  single = ngdjax.two_layer_relu(m)
  out1 = ngdjax.gram(single, params, jnp.asarray(x), method="structured")
  np.testing.assert_allclose(out1, (x @ x.T) * (s @ s.T) / m, atol=1e-13)


def test_auto_picks_structured_where_dense_layers_are_found():
  from ngdjax._src.jacobian import GramMethod, resolve_gram_method

  x = _inputs()
  for name, fn, params in CASES:
    got = resolve_gram_method(fn, params, x, "auto")
    assert got is GramMethod.STRUCTURED, name
  # No layer (the parameters enter through a sum): the small Jacobian.
  got = resolve_gram_method(lambda p, z: jnp.sin(z * jnp.sum(p)),
                            jnp.ones(3), x, "auto")
  assert got is GramMethod.JACOBIAN


def test_gram_is_jittable_and_float32():
  model = ngdjax.two_layer_relu(64)
  params = model.init(jax.random.key(0), 3)
  params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
  x = _inputs().astype(jnp.float32)
  for method in ["jacobian", "products", "structured"]:
    # Full float32 matmuls: on GPUs JAX's default precision multiplies in
    # TF32 (~5e-4 relative error, README "Speed and memory"), which this
    # float32 tolerance is not about.
    with jax.default_matmul_precision("float32"):
      g = jax.jit(lambda p, z, m=method: ngdjax.gram(model, p, z, method=m))(
          params32, x
      )
    assert g.dtype == jnp.float32
    ref = ngdjax.gram(model, params, _inputs(), method="jacobian")
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


class TestBadInput:
  model = ngdjax.two_layer_relu(8)
  params = model.init(jax.random.key(0), 3)

  def test_wrong_rank(self):
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
      ngdjax.gram(self.model, self.params, jnp.ones(3))

  def test_nan(self):
    x = np.ones((4, 3))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
      ngdjax.gram(self.model, self.params, x)
    with pytest.raises(ValueError, match="x contains NaN"):
      ngdjax.jacobian(self.model, self.params, x)

  def test_nan_params(self):
    bad = {"W": self.params["W"].at[0, 0].set(jnp.inf)}
    with pytest.raises(ValueError, match=r"params\[.W.\] contains NaN"):
      ngdjax.gram(self.model, bad, _inputs())

  def test_empty(self):
    with pytest.raises(ValueError, match="x is empty"):
      ngdjax.gram(self.model, self.params, jnp.ones((0, 3)))

  def test_unknown_method(self):
    with pytest.raises(ValueError, match="method must be one of"):
      ngdjax.gram(self.model, self.params, _inputs(), method="fast")

  def test_bad_chunk(self):
    with pytest.raises(ValueError, match="chunk_size must be positive"):
      ngdjax.gram(self.model, self.params, _inputs(), chunk_size=0)

  def test_mismatched_x2(self):
    with pytest.raises(ValueError, match="x2 has 4 features"):
      ngdjax.gram(self.model, self.params, _inputs(), jnp.ones((2, 4)))

  def test_gram_vp_wrong_length(self):
    with pytest.raises(ValueError, match=r"v must have shape \(5,\)"):
      ngdjax.gram_vp(self.model, self.params, _inputs(), jnp.ones(7))

  def test_not_callable(self):
    with pytest.raises(ValueError, match="apply_or_model"):
      ngdjax.gram(3, self.params, _inputs())


@pytest.mark.parametrize("model", [ngdjax.two_layer_relu(16),
                                   ngdjax.mlp([6], out_dim=2)],
                         ids=["two_layer", "mlp_c2"])
def test_large_self_gram_uses_symmetric_blocks_and_matches_dense(model):
  n = 515  # linalg.self_outer splits from 512 rows on: uneven blocks
  params = model.init(jax.random.key(0), 3)
  x = _inputs(n)
  j = _dense_jacobian(model, params, x)
  out = ngdjax.gram(model, params, x, method="structured")
  np.testing.assert_allclose(out, j @ j.T, atol=1e-12)


@pytest.mark.parametrize("name,fn,params", CASES[:4], ids=IDS[:4])
def test_structured_gram_vp_matches_dense(name, fn, params):
  from ngdjax._src.jacobian import structured_gram_vp

  x = _inputs()
  j = _dense_jacobian(fn, params, x)
  v = np.random.default_rng(5).standard_normal((x.shape[0], fn.out_dim))
  out = structured_gram_vp(fn.layer_factors(params, x), jnp.asarray(v))
  np.testing.assert_allclose(out.reshape(-1), j @ j.T @ v.reshape(-1),
                             atol=1e-12)


@pytest.mark.parametrize("name,fn,params", CASES[1:4] + CASES[5:6],
                         ids=IDS[1:4] + IDS[5:6])
def test_chunked_products_and_streamed_cross_gram(name, fn, params):
  from ngdjax._src.jacobian import outputs

  x, x2 = _inputs(7), _inputs(5, seed=9)
  j = _dense_jacobian(fn, params, x)
  flat, unravel = ravel_pytree(params)
  rng = np.random.default_rng(4)
  t = jnp.asarray(rng.standard_normal(flat.size))
  v = jnp.asarray(rng.standard_normal(j.shape[0]))
  np.testing.assert_allclose(ngdjax.jvp(fn, params, x, unravel(t), 3),
                             j @ t, atol=1e-12)
  np.testing.assert_allclose(
      ravel_pytree(ngdjax.vjp(fn, params, x, v, chunk_size=3))[0], j.T @ v,
      atol=1e-12)
  apply = getattr(fn, "apply", fn)
  u = apply(params, x)
  np.testing.assert_allclose(
      outputs(fn, params, x, 3),
      u.reshape(x.shape[0], -1), atol=1e-14)
  if isinstance(fn, ngdjax.Model):
    j2 = _dense_jacobian(fn, params, x2)
    out = ngdjax.gram(fn, params, x, x2, method="structured", chunk_size=2)
    np.testing.assert_allclose(out, j @ j2.T, atol=1e-12)

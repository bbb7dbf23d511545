"""Tests for ngdjax._src.checks: the one validation layer.

Each failure the public-API fault suite found has a minimal reproduction
here: Python lists, half precision, NaN and malformed vectors in the
Jacobian products, ``chunk_size=0``, malformed params pytrees, arrays this
process cannot read, and the solve checks of ``psd_solve``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax._src import checks
from ngdjax._src.optim import solvers


def _setup(width=16, n=5, d=3):
  model = ngdjax.models.two_layer_relu(width=width)
  params = model.init(jax.random.key(0), in_dim=d)
  x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (n, d)))
  return model, params, x


# --------------------------------------------------------------------------
# Array-likes and dtypes (issue item 6).
# --------------------------------------------------------------------------


def test_python_lists_are_accepted_everywhere():
  model, params, x = _setup()
  xl = np.asarray(x).tolist()
  np.testing.assert_allclose(ngdjax.gram(model, params, xl),
                             ngdjax.gram(model, params, x))
  np.testing.assert_allclose(ngdjax.jvp(model, params, xl, params),
                             ngdjax.jvp(model, params, x, params))
  np.testing.assert_allclose(ngdjax.relu_gram_inf(xl),
                             ngdjax.relu_gram_inf(x))
  np.testing.assert_allclose(ngdjax.lambda_0(xl), ngdjax.lambda_0(x))
  v = [1.0, 2.0, 3.0, 4.0, 5.0]
  np.testing.assert_allclose(ngdjax.gram_vp(model, params, xl, v),
                             ngdjax.gram(model, params, x) @ jnp.asarray(v),
                             rtol=1e-10)


def test_non_numeric_input_names_the_argument():
  with pytest.raises(ValueError, match="x must be a numeric array"):
    ngdjax.relu_gram_inf([["a", "b"], ["c", "d"]])
  with pytest.raises(ValueError, match="x must have a numeric dtype"):
    ngdjax.relu_gram_inf(np.ones((3, 2), bool))


def test_half_precision_lambda_0_and_kfac():
  model, params, x = _setup()
  want = float(ngdjax.lambda_0(x))
  # Half-precision inputs get their curvature in float32 (the precision
  # policy); the error left is the inputs' own rounding, ~ eps * ||G||.
  for dtype, atol in ((jnp.float16, 0.03), (jnp.bfloat16, 0.15)):
    got = ngdjax.lambda_0(x.astype(dtype))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, atol=atol)
  p16 = jax.tree.map(lambda a: a.astype(jnp.float16), params)
  opt = ngdjax.kfac(model, 0.1)
  new, _, info = opt.step(p16, opt.init(p16), x.astype(jnp.float16),
                          jnp.ones(5, jnp.float16))
  assert new["W"].dtype == jnp.float16
  assert bool(jnp.all(jnp.isfinite(new["W"])))
  assert np.isfinite(float(info["loss"]))


def test_bfloat16_is_numeric():
  model, params, x = _setup()
  g = ngdjax.relu_gram_inf(x.astype(jnp.bfloat16))
  np.testing.assert_allclose(np.asarray(g, np.float64),
                             ngdjax.relu_gram_inf(x), atol=0.02)
  pb = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  gb = ngdjax.gram(model, pb, x.astype(jnp.bfloat16))
  np.testing.assert_allclose(np.asarray(gb, np.float64),
                             ngdjax.gram(model, params, x), atol=0.05)
  bad = x.astype(jnp.bfloat16).at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="x contains NaN"):
    ngdjax.relu_gram_inf(bad)


# --------------------------------------------------------------------------
# jvp / vjp / gram_vp (issue item 3).
# --------------------------------------------------------------------------


PRODUCTS = {
    "jvp": lambda m, p, x, **kw: ngdjax.jvp(m, p, x, p, **kw),
    "vjp": lambda m, p, x, **kw: ngdjax.vjp(m, p, x, jnp.ones(x.shape[0]),
                                            **kw),
    "gram_vp": lambda m, p, x, **kw: ngdjax.gram_vp(
        m, p, x, jnp.ones(x.shape[0]), **kw),
}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_products_reject_nan_inputs(name):
  model, params, x = _setup()
  with pytest.raises(ValueError, match="x contains NaN"):
    PRODUCTS[name](model, params, x.at[1, 2].set(jnp.nan))
  bad = {"W": params["W"].at[0, 0].set(jnp.inf)}
  with pytest.raises(ValueError, match=r"params\['W'\] contains NaN"):
    PRODUCTS[name](model, bad, x)


@pytest.mark.parametrize("name", sorted(PRODUCTS) + ["gram", "jacobian"])
@pytest.mark.parametrize("chunk", [0, -2, 1.5, "4"])
def test_bad_chunk_size_names_it(name, chunk):
  model, params, x = _setup()
  fns = dict(PRODUCTS, gram=ngdjax.gram, jacobian=ngdjax.jacobian)
  with pytest.raises(ValueError, match="chunk_size"):
    fns[name](model, params, x, chunk_size=chunk)


def test_nan_vectors_and_tangents():
  model, params, x = _setup()
  v = jnp.ones(5).at[2].set(jnp.nan)
  with pytest.raises(ValueError, match="v contains NaN"):
    ngdjax.vjp(model, params, x, v)
  with pytest.raises(ValueError, match="v contains NaN"):
    ngdjax.gram_vp(model, params, x, v)
  t = {"W": params["W"].at[0, 0].set(jnp.nan)}
  with pytest.raises(ValueError, match=r"tangent\['W'\] contains NaN"):
    ngdjax.jvp(model, params, x, t)


def test_wrong_length_vectors_name_the_argument_and_length():
  model, params, x = _setup()
  with pytest.raises(ValueError, match=r"v must have shape \(5,\).*got \(7,\)"):
    ngdjax.vjp(model, params, x, jnp.ones(7))
  with pytest.raises(ValueError, match=r"v must have shape \(5,\).*got \(7,\)"):
    ngdjax.gram_vp(model, params, x, jnp.ones(7))
  with pytest.raises(ValueError, match=r"tangent\['W'\] has shape \(16, 2\)"):
    ngdjax.jvp(model, params, x, {"W": jnp.ones((16, 2))})
  # The accepted shapes still work: (n, c) for vjp, (n c, k) for gram_vp.
  g = ngdjax.gram(model, params, x)
  vs = jax.random.normal(jax.random.key(2), (5, 2))
  np.testing.assert_allclose(ngdjax.gram_vp(model, params, x, vs), g @ vs,
                             rtol=1e-10)
  jt = ngdjax.vjp(model, params, x, vs[:, :1])
  jac = ngdjax.jacobian(model, params, x)
  np.testing.assert_allclose(jt["W"].reshape(-1), jac.T @ vs[:, 0],
                             rtol=1e-10)


def test_products_still_trace_under_jit():
  model, params, x = _setup()
  v = jnp.arange(5.0)
  f = jax.jit(lambda p, x, v: ngdjax.gram_vp(model, p, x, v, chunk_size=2))
  np.testing.assert_allclose(f(params, x, v),
                             ngdjax.gram(model, params, x) @ v, rtol=1e-10)


# --------------------------------------------------------------------------
# Malformed params pytrees (issue item 5).
# --------------------------------------------------------------------------


def test_malformed_params_name_the_leaf():
  model, params, x = _setup()
  y = jnp.ones(5)
  with pytest.raises(ValueError, match=r"missing params\['W'\]"):
    ngdjax.gram(model, {"V": params["W"]}, x)
  with pytest.raises(ValueError, match=r"params\['W'\] has shape \(16, 2\) "
                     r"but the model expects \(16, 3\)"):
    ngdjax.gram(model, {"W": params["W"][:, :2]}, x)
  with pytest.raises(ValueError, match="params has no array leaves"):
    ngdjax.gram(model, {}, x)
  extra = {"W": params["W"], "b": jnp.ones(3)}
  for opt in (ngdjax.kfac(model, 0.1), ngdjax.ngd(model, 0.1),
              ngdjax.gd(model, 0.1)):
    with pytest.raises(ValueError, match=r"unexpected params\['b'\]"):
      opt.step(extra, opt.init(params), x, y)
    with pytest.raises(ValueError, match=r"params\['W'\] has shape"):
      opt.step({"W": params["W"][:, :2]}, opt.init(params), x, y)


def test_bare_apply_mismatch_names_params_and_x():
  _, _, x = _setup()

  def apply(params, x):
    return jnp.tanh(x @ params["w"]) @ params["v"]

  good = {"w": jnp.ones((3, 4)), "v": jnp.ones(4)}
  assert ngdjax.gram(apply, good, x).shape == (5, 5)
  with pytest.raises(ValueError, match="params and x do not fit the model"):
    ngdjax.gram(apply, {"w": jnp.ones((2, 4)), "v": jnp.ones(4)}, x)
  with pytest.raises(ValueError, match="params and x do not fit the model"):
    ngdjax.gram(apply, {"w": jnp.ones((3, 4))}, x)
  opt = ngdjax.ngd(apply, 0.1)
  with pytest.raises(ValueError, match="params and x do not fit the model"):
    opt.step({"w": jnp.ones((2, 4)), "v": jnp.ones(4)}, opt.init(good), x,
             jnp.ones(5))


def test_check_params_structure_and_values():
  like = {"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4)]}
  checks.check_params({"a": np.ones((2, 3)), "b": [np.ones(4)]}, like)
  with pytest.raises(ValueError, match=r"params\['b'\]\[0\] has shape"):
    checks.check_params({"a": np.ones((2, 3)), "b": [np.ones(5)]}, like)
  with pytest.raises(ValueError, match=r"params\['a'\] contains NaN"):
    checks.check_params({"a": np.full((2, 3), np.nan), "b": [np.ones(4)]})
  with pytest.raises(ValueError, match=r"params\['a'\] must be floating"):
    checks.check_params({"a": np.ones((2, 3), int), "b": [np.ones(4)]})
  # Values of tracers are not checked; shapes are.
  jax.jit(lambda p: checks.check_params(p, like) and 0)(
      {"a": jnp.ones((2, 3)), "b": [jnp.ones(4)]})


# --------------------------------------------------------------------------
# Inputs of any shape; arrays spanning other processes.
# --------------------------------------------------------------------------


def test_check_inputs_any_shape_option():
  images = np.ones((4, 8, 8, 1))
  with pytest.raises(ValueError, match="x must have 2 dimensions"):
    checks.check_inputs("x", images)
  assert checks.check_inputs("x", images, any_shape=True).shape == images.shape
  checks.check_inputs("x", images, in_dim=(8, 8, 1), any_shape=True)
  with pytest.raises(ValueError, match=r"examples of shape \(8, 8, 1\)"):
    checks.check_inputs("x", images, in_dim=(8, 8, 3), any_shape=True)
  with pytest.raises(ValueError, match="x has 3 features"):
    checks.check_inputs("x", np.ones((4, 3)), in_dim=2, any_shape=True)
  with pytest.raises(ValueError, match="x contains NaN"):
    checks.check_inputs("x", np.full((2, 2, 2), np.nan), any_shape=True)


def test_global_arrays_are_never_copied_to_the_host(monkeypatch):
  # A global jax.Array spanning other processes cannot be read with
  # np.asarray; simulate one by declaring every array non-local and making
  # the host copy fail.
  monkeypatch.setattr(checks, "is_local",
                      lambda x: False if checks.is_concrete(x) else False)

  def no_host_copy(x):
    raise AssertionError("np.asarray on a non-addressable array")

  monkeypatch.setattr(checks, "_to_host", no_host_copy)
  x = jnp.ones((4, 3))
  checks.check_inputs("x", x)
  with pytest.raises(ValueError, match="x contains NaN"):
    checks.check_inputs("x", x.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="1 row"):
    checks.check_nonzero_rows("x", x.at[2].set(0.0))
  checks.check_unit_rows("x", x / jnp.sqrt(3.0))
  checks.check_params({"W": x})
  checks.check_square("g", jnp.eye(3), psd=True)  # value checks skipped


def test_is_local_on_real_arrays():
  assert checks.is_local(np.ones(3)) and checks.is_local(jnp.ones(3))
  jax.jit(lambda x: checks.is_local(x) and x)(jnp.ones(3))
  assert not jax.jit(lambda x: jnp.asarray(checks.is_local(x)))(jnp.ones(3))


def test_check_scalar_rejects_bools_and_vectors():
  with pytest.raises(ValueError, match="learning_rate must be a number"):
    checks.check_scalar("learning_rate", True)
  with pytest.raises(ValueError, match="must be a scalar"):
    checks.check_scalar("damping", np.ones(3))
  assert checks.check_chunk_size(None) is None
  assert checks.check_chunk_size(np.int64(4)) == 4
  with pytest.raises(ValueError, match="method must be one of"):
    checks.check_choice("method", "bogus", ("a", "b"))


# --------------------------------------------------------------------------
# psd_solve: check the solve, not only its finiteness (issue item 2).
# --------------------------------------------------------------------------


def _tiny_eigenvalue_gram(tiny, seed=2, k=6):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(k, k)))
  e = np.array([3.0, 2.0, 1.0, 0.5, 0.25, tiny])[:k]
  g = q @ np.diag(e) @ q.T
  return 0.5 * (g + g.T), rng.normal(size=k), q, e


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_psd_solve_flags_a_gram_that_factors_with_tiny_pivots(seed):
  g, b, q, e = _tiny_eigenvalue_gram(5e-16, seed)
  # The bug: Cholesky "succeeds" and returns a finite x of norm ~1e14+.
  chol = np.linalg.cholesky(g)
  x_chol = np.linalg.solve(chol.T, np.linalg.solve(chol, b))
  assert np.all(np.isfinite(x_chol)) and np.linalg.norm(x_chol) > 1e13
  x, failed = solvers.psd_solve(jnp.asarray(g), jnp.asarray(b), 0.0)
  assert int(failed) == 1
  # The fallback is the pseudo-inverse on the numerically resolved subspace.
  keep = e > 1e-10
  want = q[:, keep] @ ((q[:, keep].T @ b) / e[keep])
  np.testing.assert_allclose(x, want, rtol=1e-8)


def test_psd_solve_keeps_cholesky_on_well_conditioned_and_damped_systems():
  g, b, _, _ = _tiny_eigenvalue_gram(1e-6)
  x, failed = solvers.psd_solve(jnp.asarray(g), jnp.asarray(b), 0.0)
  assert int(failed) == 0
  np.testing.assert_allclose(g @ np.asarray(x), b, atol=1e-9)
  g, b, _, _ = _tiny_eigenvalue_gram(0.0)
  x, failed = solvers.psd_solve(jnp.asarray(g), jnp.asarray(b), 1e-3)
  assert int(failed) == 0
  np.testing.assert_allclose((g + 1e-3 * np.eye(6)) @ np.asarray(x), b,
                             atol=1e-9)
  # Several right-hand sides (K-FAC's use) and a zero one.
  rhs = np.stack([b, 2 * b, 0 * b], axis=1)
  x, failed = solvers.psd_solve(jnp.asarray(g), jnp.asarray(rhs), 1e-3)
  assert int(failed) == 0 and x.shape == (6, 3)
  np.testing.assert_allclose(x[:, 2], 0.0)


def test_psd_solve_float32_and_half_precision():
  g, b, _, _ = _tiny_eigenvalue_gram(0.1)
  want = np.linalg.solve(g, b)
  for dtype, rtol in ((jnp.float32, 1e-4), (jnp.float16, 0.05),
                      (jnp.bfloat16, 0.1)):
    x, failed = solvers.psd_solve(jnp.asarray(g, dtype), jnp.asarray(b, dtype),
                                  0.0)
    assert x.dtype == dtype and int(failed) == 0
    np.testing.assert_allclose(np.asarray(x, np.float64), want, rtol=rtol,
                               atol=rtol * np.abs(want).max())


# --------------------------------------------------------------------------
# The last bad inputs of the fault suite: each names its argument, or (half
# precision) is computed in the model's dtype.
# --------------------------------------------------------------------------


def _mlp_batch(dtype=jnp.float32):
  model = ngdjax.mlp([8], out_dim=1)
  params = jax.tree.map(lambda a: a.astype(jnp.float32),
                        model.init(jax.random.key(0), in_dim=4))
  x = jax.random.normal(jax.random.key(1), (6, 4), jnp.float32)
  return model, params, x.astype(dtype), jnp.ones((6,), jnp.float32)


@pytest.mark.parametrize("make", [ngdjax.kfac, ngdjax.ngd])
def test_integer_inputs_are_refused_naming_x(make):
  model, params, x, y = _mlp_batch(jnp.int32)
  opt = make(model, 0.1, damping=1e-3)
  with pytest.raises(ValueError, match=r"^x must be floating point"):
    opt.step(params, opt.init(params), x, y)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("make", [ngdjax.kfac, ngdjax.ngd])
def test_half_precision_inputs_compute_in_the_models_dtype(make, dtype):
  model, params, x, y = _mlp_batch(dtype)
  opt = make(model, 0.1, damping=1e-3)
  new, _, info = opt.step(params, opt.init(params), x, y)
  # The same step as on the float32 inputs the half-precision ones round to.
  ref, _, ref_info = opt.step(params, opt.init(params),
                              x.astype(jnp.float32), y)
  assert jax.tree.leaves(new)[0].dtype == jnp.float32
  np.testing.assert_allclose(info["loss"], ref_info["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compute_dtype_inputs_keeps_integers_for_a_bare_apply():
  ids = jnp.arange(4)
  assert checks.compute_dtype_inputs("x", ids, {"w": jnp.ones(3)},
                                     integers=True) is ids
  x = jnp.ones((2, 3), jnp.float64)  # wider than the params: unchanged
  assert checks.compute_dtype_inputs(
      "x", x, {"w": jnp.ones(3, jnp.float32)}).dtype == jnp.float64


@pytest.mark.parametrize("make", [ngdjax.kfac, ngdjax.ngd])
def test_state_of_another_optimizer_is_named(make):
  model, params, x, y = _mlp_batch()
  opt = make(model, 0.1, damping=1e-3)
  gd_state = ngdjax.gd(model, 0.1).init(params)
  with pytest.raises(ValueError, match=r"^state is a GDState, not the "):
    opt.step(params, gd_state, x, y)


def test_model_apply_with_wrong_feature_count_is_named():
  model, params, x, _ = _mlp_batch()
  with pytest.raises(ValueError, match="x has 5 features but the model's "
                     "first layer takes 4"):
    model.apply(params, jnp.ones((6, 5)))
  two, p2, x2 = _setup(d=3)
  with pytest.raises(ValueError, match="x has 4 features but the model's W "
                     "takes 3"):
    two.apply(p2, jnp.ones((5, 4)))
  # Also under jit (shapes are static).
  with pytest.raises(ValueError, match="x has 4 features"):
    jax.jit(two.apply)(p2, jnp.ones((5, 4)))
  assert two.apply(p2, x2).shape == (5, 1)


def test_relu_gram_inf_cross_kernel_with_wrong_feature_count_is_named():
  x = ngdjax.normalize_rows(jnp.ones((3, 4)) + jnp.eye(3, 4))
  with pytest.raises(ValueError, match="x2 has 5 features but x has 4"):
    ngdjax.relu_gram_inf(x, jnp.ones((2, 5)))
  assert ngdjax.relu_gram_inf(x, x[:2]).shape == (3, 2)


@pytest.mark.parametrize("widths", [8, "8", 8.0])
def test_mlp_widths_must_be_a_sequence(widths):
  with pytest.raises(ValueError, match=r"^widths must be a sequence"):
    ngdjax.mlp(widths=widths)
  assert ngdjax.mlp(widths=(8,)).init(jax.random.key(0), 2)[0]["W"].shape == (
      2, 8)

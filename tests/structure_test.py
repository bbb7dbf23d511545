"""Automatic dense-layer structure (``ngdjax._src.structure``).

Matched layers are checked against the library's own closed forms (a bare
``ngdjax.mlp`` apply must give exactly ``Model.layer_factors``), unmatched
patterns must land on the generic path, and every Gram against ``jacrev``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ngdjax
from ngdjax._src import gram_forms, structure


def _x(n=5, shape=(3,), seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n, *shape)))


def _exact_gram(apply, params, x):
  flat, unravel = ravel_pytree(params)
  j = jax.jacrev(lambda f: apply(unravel(f), x).reshape(-1))(flat)
  return j @ j.T


def _check_gram(apply, params, x):
  g = ngdjax.gram(apply, params, x)
  ref = _exact_gram(apply, params, x)
  assert float(jnp.max(jnp.abs(g - ref)) / jnp.max(jnp.abs(ref))) < 1e-10


@pytest.mark.parametrize("b_std", [0.1, None])
def test_bare_mlp_apply_gives_the_models_own_factors(b_std):
  """NTK scaling (``w_std h W / sqrt(n_l)``, ``b_std b``): the constant
  factors go into the layer inputs exactly as ``mlp`` puts them."""
  model = ngdjax.mlp([6, 4], out_dim=2, w_std=1.3, b_std=b_std)
  params = model.init(jax.random.key(0), 3)
  x = _x()
  st = structure.layer_structure(model.apply, params, x)
  assert len(st.report.layers) == 3 and not st.report.generic
  for got, want in zip(st.layer_factors(params, x),
                       model.layer_factors(params, x), strict=True):
    np.testing.assert_allclose(got.inputs, want.inputs, atol=1e-14)
    np.testing.assert_allclose(got.output_grads, want.output_grads,
                               atol=1e-14)
  for got, want in zip(st.to_layer_matrices(params),
                       model.to_layer_matrices(params), strict=True):
    np.testing.assert_array_equal(got, want)
  _check_gram(model.apply, params, x)


def test_report_lists_layers_and_generic_leaves():
  def apply(p, x):
    h = jnp.tanh(x @ p["dense"]["w"] + p["dense"]["b"])
    return (h * p["gain"]) @ p["head"]

  params = {"dense": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)},
            "gain": jnp.ones(4), "head": jnp.ones((4, 2))}
  report = ngdjax.describe_structure(apply, params, _x())
  assert report.layers == (
      structure.DenseLayerInfo("['dense']['w']", (3, 4), "['dense']['b']",
                               (4,), 4, 4),
      structure.DenseLayerInfo("['head']", (4, 2), None, None, 4, 2),
  )
  assert not report.generic
  assert [(g.weight, g.weight_shape) for g in report.norm] == [
      ("['gain']", (4,))]
  text = str(report)
  assert "2 dense layer(s)" in text and "['gain'] (4,)" in text


def test_layer_matrices_round_trip_with_transposed_and_generic_leaves():
  def apply(p, x):  # weight stored (out, in), bias added after a transpose
    z = jax.lax.dot_general(p["w"], x, (((1,), (1,)), ((), ())))  # (4, n)
    h = jnp.tanh(z.T + p["b"]) * p["s"]
    return h @ p["v"]

  params = jax.tree_util.tree_map(
      lambda a: jax.random.normal(jax.random.key(a.size), a.shape),
      {"w": jnp.ones((4, 3)), "b": jnp.ones(4), "s": jnp.ones(4),
       "v": jnp.ones((4, 2))})
  x = _x()
  st = structure.layer_structure(apply, params, x)
  mats = st.to_layer_matrices(params)
  np.testing.assert_array_equal(mats[0][:3], params["w"].T)
  np.testing.assert_array_equal(mats[0][3], params["b"])
  back = st.from_layer_matrices(mats, params["s"])
  for k in params:
    np.testing.assert_array_equal(back[k], params[k])
  zeros = st.from_layer_matrices(mats)
  np.testing.assert_array_equal(zeros["s"], jnp.zeros(4))
  _check_gram(apply, params, x)


def test_weight_sharing_and_unsupported_patterns_are_generic():
  def apply(p, x):
    h = jnp.tanh(x @ p["tied"])
    h = jnp.tanh(h @ p["tied"])  # used twice: cannot be one layer
    t = jnp.einsum("nd,hde->nhe", h, p["heads"])  # free dim of W: fine
    pos = jnp.tanh(t @ p["shared"])  # (n, heads, e): shared over heads
    return pos.sum(1) @ p["out"]

  keys = jax.random.split(jax.random.key(3), 4)
  params = {"tied": jax.random.normal(keys[0], (3, 3)),
            "heads": jax.random.normal(keys[1], (2, 3, 4)),
            "shared": jax.random.normal(keys[2], (4, 4)),
            "out": jax.random.normal(keys[3], (4, 2))}
  x = _x()
  report = ngdjax.describe_structure(apply, params, x)
  generic = {g.path: g.reason for g in report.generic}
  assert "used more than once" in generic["['tied']"]
  assert "['shared']" not in generic  # a shared-weight layer now
  assert [(lay.weight, lay.positions) for lay in report.shared] == [
      ("['shared']", 2)]
  assert [lay.weight for lay in report.layers] == ["['heads']", "['out']"]
  _check_gram(apply, params, x)


def test_batched_dot_general_and_jitted_helpers():
  @jax.jit
  def dense(w, b, h):  # a layer inside a jit call is found (inlined)
    return h @ w + b

  def apply(p, x):
    h = jnp.tanh(dense(p["w"], p["b"], x))
    # A dot_general with batch dimensions is not a dense layer.
    g = jax.lax.dot_general(h.reshape(-1, 2, 2), p["blocks"],
                            (((2,), (1,)), ((1,), (0,))))  # (2, n, 2)
    return jnp.moveaxis(g, 0, 1).reshape(x.shape[0], -1)

  keys = jax.random.split(jax.random.key(5), 3)
  params = {"w": jax.random.normal(keys[0], (3, 4)),
            "b": jax.random.normal(keys[1], (4,)),
            "blocks": jax.random.normal(keys[2], (2, 2, 2))}
  x = _x()
  report = ngdjax.describe_structure(apply, params, x)
  assert [(lay.weight, lay.bias) for lay in report.layers] == [
      ("['w']", "['b']")]
  assert "batch dimensions" in report.generic[0].reason
  _check_gram(apply, params, x)


def test_gram_on_images_is_jittable_without_recompiling():
  traces = []

  def apply(p, x):
    traces.append(1)
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w"])
    return (h @ p["v"])[:, 0]  # (n,) outputs

  params = {"w": jax.random.normal(jax.random.key(0), (12, 5)),
            "v": jax.random.normal(jax.random.key(1), (5, 1))}
  x = _x(n=4, shape=(2, 3, 2))
  fn = jax.jit(lambda p, z: ngdjax.gram(apply, p, z))
  g = fn(params, x)
  count = len(traces)
  fn(params, 2.0 * x)
  assert len(traces) == count  # second call: no retrace
  ref = _exact_gram(apply, params, x)
  np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)


def test_models_without_dense_layers_fall_back():
  def apply(p, x):
    return jnp.sin(x * p)

  params = jnp.ones(3)
  x = _x()
  assert not ngdjax.describe_structure(apply, params, x).layers
  _check_gram(apply, params, x)
  g = ngdjax.gram(apply, params, x, method="structured")  # generic only
  np.testing.assert_allclose(g, _exact_gram(apply, params, x), atol=1e-12)


def test_integer_leaves_are_constants_and_bad_input_raises():
  def apply(p, x):
    return jnp.tanh(x @ p["w"]) * p["count"].astype(x.dtype)

  params = {"w": jnp.ones((3, 2)), "count": jnp.asarray(2, jnp.int32)}
  x = _x()
  st = structure.layer_structure(apply, params, x)
  assert st.generic_jacobian is None
  back = st.from_layer_matrices(st.to_layer_matrices(params))
  np.testing.assert_array_equal(back["w"], params["w"])
  assert back["count"].dtype == jnp.int32
  j = jax.jacrev(lambda w: apply({**params, "w": w}, x).reshape(-1))(
      params["w"]).reshape(x.shape[0] * 2, -1)
  from ngdjax._src.jacobian import structured_gram_from_factors

  g = structured_gram_from_factors(st.layer_factors(params, x))
  np.testing.assert_allclose(g, j @ j.T, atol=1e-12)
  with pytest.raises(ValueError, match="x contains NaN"):
    ngdjax.describe_structure(apply, params, x.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="apply_or_model"):
    ngdjax.describe_structure("not a model", params, x)


def test_whole_batch_and_per_example_evaluation_agree():
  """The factors come from the batch-n trace (shared forward pass) when it
  has the operations of the one-example trace, else from a vmap of the
  one-example trace (n = 1 here): both must give the same factors."""
  def apply(p, x):  # weight (out, in): the example axis of z comes last
    z = jax.lax.dot_general(p["w"], x, (((1,), (1,)), ((), ())))
    h = jax.nn.relu(z.T / 2.0 + 0.5 * p["b"])
    return h @ p["v"]

  keys = jax.random.split(jax.random.key(7), 3)
  params = {"w": jax.random.normal(keys[0], (4, 3)),
            "b": jax.random.normal(keys[1], (4,)),
            "v": jax.random.normal(keys[2], (4, 2))}
  x = _x(n=4)
  st = structure.layer_structure(apply, params, x)
  whole = st.layer_factors(params, x)
  rows = [st.layer_factors(params, x[i:i + 1]) for i in range(4)]
  for k, f in enumerate(whole):
    np.testing.assert_allclose(
        f.inputs, jnp.concatenate([r[k].inputs for r in rows]), atol=1e-14)
    np.testing.assert_allclose(
        f.output_grads, jnp.concatenate([r[k].output_grads for r in rows]),
        atol=1e-14)
  _check_gram(apply, params, x)
  _check_gram(apply, params, x[:1])


# --------------------------------------------------------------------------
# Convolutions and shared-weight layers: the expanded factors reproduce the
# Jacobian, dU_ik / dM_g = sum_t A[i, t, g] S[i, k, t, g]^T.
# --------------------------------------------------------------------------


def _cnn(nchw, groups=2, stride=2, padding="VALID"):
  dn = ("NCHW", "OIHW", "NCHW") if nchw else ("NHWC", "HWIO", "NHWC")

  def bias(b):
    return b[:, None, None] if nchw else b

  def apply(p, x):
    h = jax.lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME",
                                     dimension_numbers=dn)
    h = jnp.tanh(h + bias(p["b1"]))
    h = jax.lax.conv_general_dilated(
        h, p["k2"], (stride, stride), padding, rhs_dilation=(1, 2),
        dimension_numbers=dn, feature_group_count=groups)
    h = jnp.tanh(h * 0.5 + bias(p["b2"]))
    return h.reshape(h.shape[0], -1) @ p["w"] + p["b"]

  x = _x(n=4, shape=(1, 7, 8) if nchw else (7, 8, 1))
  z = jax.eval_shape(
      lambda: jax.lax.conv_general_dilated(
          jnp.zeros((1, 7, 8, 4)), jnp.zeros((3, 3, 4 // groups, 6)),
          (stride, stride), padding, rhs_dilation=(1, 2),
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=groups))
  shapes = {"k1": (4, 1, 3, 3) if nchw else (3, 3, 1, 4), "b1": (4,),
            "k2": (6, 4 // groups, 3, 3) if nchw else (3, 3, 4 // groups, 6),
            "b2": (6,), "w": (int(np.prod(z.shape)), 3), "b": (3,)}
  keys = jax.random.split(jax.random.key(0), len(shapes))
  params = {k: jax.random.normal(key, s)
            for key, (k, s) in zip(keys, shapes.items(), strict=True)}
  return apply, params, x


def _check_expanded_factors(apply, params, x):
  st = structure.model_structure(apply, params, x)
  expanded = st.expand(st.factors(params, x))
  jac = jax.jacrev(lambda q: jnp.atleast_2d(apply(q, x)))(params)
  n, c = jax.tree_util.tree_leaves(jac)[0].shape[:2]
  for i in range(n):
    for k in range(c):
      mats = st.to_layer_matrices(
          jax.tree_util.tree_map(lambda a, i=i, k=k: a[i, k], jac))
      for (a, s), m in zip(expanded, mats, strict=True):
        dm = jnp.einsum("tga,tgb->agb", a[i], s[i, k])
        np.testing.assert_allclose(dm.reshape(m.shape), m, atol=1e-11)
  return st


@pytest.mark.parametrize("nchw,groups,padding",
                         [(False, 1, "SAME"), (True, 2, "VALID")])
def test_conv_layers_are_found_and_their_factors_are_exact(nchw, groups,
                                                           padding):
  apply, params, x = _cnn(nchw, groups, padding=padding)
  st = _check_expanded_factors(apply, params, x)
  report = st.report
  assert not report.generic, str(report)
  assert [(lay.kernel, lay.bias, lay.groups) for lay in report.conv] == [
      ("['k1']", "['b1']", 1), ("['k2']", "['b2']", groups)]
  assert [lay.weight for lay in report.layers] == ["['w']"]
  f = st.factors(params, x)
  assert f[0].inputs.shape == (4, 7, 8, 1)  # channels last, as fed
  assert f[0].output_grads.shape == (4, 3, 7, 8, 4)
  # One backward pass for a given output cotangent.
  cot = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3)))
  for got, want in zip(st.factors(params, x, cot), f, strict=True):
    np.testing.assert_allclose(
        got.output_grads[:, 0],
        jnp.einsum("ik,ik...->i...", cot, want.output_grads), atol=1e-12)
  back = st.from_layer_matrices(st.to_layer_matrices(params))
  for k in params:
    np.testing.assert_array_equal(back[k], params[k])


def test_shared_weight_layer_factors_are_exact():
  def apply(p, x):  # (n, tokens, d): one weight at every token
    h = jnp.tanh(x @ p["w"] + p["b"])
    return jnp.einsum("ntd,td->n", h, p["v"])[:, None]

  keys = jax.random.split(jax.random.key(4), 3)
  params = {"w": jax.random.normal(keys[0], (3, 4)),
            "b": jax.random.normal(keys[1], (4,)),
            "v": jax.random.normal(keys[2], (5, 4))}
  x = _x(n=3, shape=(5, 3))
  st = structure.model_structure(apply, params, x)
  assert [(lay.weight, lay.bias, lay.positions)
          for lay in st.report.shared] == [("['w']", "['b']", 5)]
  # v contracts tokens and features: a dense layer with a = 5 * 4.
  assert [lay.weight for lay in st.report.layers] == ["['v']"]
  expanded = st.expand(st.factors(params, x))
  jac = jax.jacrev(lambda q: apply(q, x))(params)
  for i in range(3):
    m, _ = st.to_layer_matrices(
        jax.tree_util.tree_map(lambda a, i=i: a[i, 0], jac))
    a, s = expanded[0]
    np.testing.assert_allclose(
        jnp.einsum("tga,tgb->agb", a[i], s[i, 0]).reshape(m.shape), m,
        atol=1e-12)


@pytest.mark.parametrize("nchw,groups,padding",
                         [(False, 1, "SAME"), (True, 2, "VALID")])
def test_conv_gram_is_exact_in_every_form_and_chunked(nchw, groups, padding):

  apply, params, x = _cnn(nchw, groups, padding=padding)
  ref = _exact_gram(apply, params, x)
  st = structure.model_structure(apply, params, x)
  for form in ("patch", "jacobian"):
    forms = tuple("outer" if lay.kind == "dense" else form
                  for lay in st.layers)
    f = gram_forms.features(st, forms, params, x)
    np.testing.assert_allclose(gram_forms.self_gram(forms, f), ref,
                               atol=1e-10 * float(jnp.max(ref)))
    f2 = gram_forms.features(st, forms, params, x[:2])
    np.testing.assert_allclose(gram_forms.cross(forms, f, f2),
                               ref[:, :6], atol=1e-10 * float(jnp.max(ref)))
  _check_gram(apply, params, x)
  for chunk in (None, 3):
    g = ngdjax.gram(apply, params, x, method="structured", chunk_size=chunk)
    np.testing.assert_allclose(g, ref, atol=1e-10 * float(jnp.max(ref)))
  x2 = 0.5 * x[:3]
  flat, unravel = ravel_pytree(params)
  j2 = jax.jacrev(lambda f: apply(unravel(f), x2).reshape(-1))(flat)
  j1 = jax.jacrev(lambda f: apply(unravel(f), x).reshape(-1))(flat)
  g = ngdjax.gram(apply, params, x, x2, method="structured", chunk_size=2)
  np.testing.assert_allclose(g, j1 @ j2.T, atol=1e-10 * float(jnp.max(ref)))


def test_gram_forms_cost_model_picks_per_layer():
  from ngdjax._src import gram_forms

  apply, params, x = _cnn(False, 1, padding="SAME")
  st = structure.model_structure(apply, params, x)
  # First conv: 56 positions, a = 10, b = 4: the Jacobian rows are cheaper
  # than T^2 patch products; the dense layer is always "outer".
  forms = gram_forms.choose_forms(st, block=128, r=3)
  assert forms[0] == "jacobian" and forms[-1] == "outer"


def _flax_transformer():
  nn = pytest.importorskip("flax.linen")

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):  # x: (n, tokens, features)
      h = nn.LayerNorm()(x)
      h = nn.SelfAttention(num_heads=2, qkv_features=4)(h)
      x = x + h
      h = nn.LayerNorm()(x)
      h = nn.Dense(4)(jax.nn.gelu(nn.Dense(8)(h)))
      x = x + h
      return nn.Dense(2)(x.mean(axis=1))

  x = _x(n=3, shape=(5, 4))
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  Block().init(jax.random.key(0), x))
  return Block().apply, params, x


def _norm_embedding():
  def apply(p, x):  # x: (n, tokens) integer ids stored as floats
    ids = x.astype(jnp.int32)
    h = p["embed"][ids]  # (n, T, d)
    mu = h.mean(-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-3)
    h = h * p["scale"] + p["shift"]
    return jnp.tanh(h).reshape(h.shape[0], -1) @ p["out"]

  keys = jax.random.split(jax.random.key(8), 4)
  params = {"embed": jax.random.normal(keys[0], (7, 3)),
            "scale": 1.0 + 0.1 * jax.random.normal(keys[1], (3,)),
            "shift": 0.1 * jax.random.normal(keys[2], (3,)),
            "out": jax.random.normal(keys[3], (4 * 3, 2))}
  x = jnp.asarray(np.random.default_rng(2).integers(0, 7, (5, 4)),
                  jnp.float64)
  return apply, params, x


def _flax_norm_embedding():
  nn = pytest.importorskip("flax.linen")

  class Tagger(nn.Module):
    @nn.compact
    def __call__(self, x):  # x: (n, tokens) integer ids stored as floats
      h = nn.Embed(6, 3)(x.astype(jnp.int32))
      h = nn.Dense(4)(nn.LayerNorm()(h))
      return nn.Dense(2)(jnp.tanh(h).reshape(h.shape[0], -1))

  x = jnp.asarray(np.random.default_rng(3).integers(0, 6, (4, 3)),
                  jnp.float64)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  Tagger().init(jax.random.key(1), x))
  return Tagger().apply, params, x


@pytest.mark.parametrize(
    "case", [pytest.param("transformer", marks=pytest.mark.slow),
             "norm_embedding",
             pytest.param("flax_norm_embedding", marks=pytest.mark.slow)])
def test_sequence_models_gram_is_exact_on_every_path(case):
  apply, params, x = {"transformer": _flax_transformer,
                      "norm_embedding": _norm_embedding,
                      "flax_norm_embedding": _flax_norm_embedding}[case]()
  ref = _exact_gram(apply, params, x)
  tol = 1e-10 * float(jnp.max(jnp.abs(ref)))
  for method, chunk in [("auto", None), ("structured", None),
                        ("structured", 2), ("jacobian", 2),
                        ("products", 2)]:
    g = ngdjax.gram(apply, params, x, method=method, chunk_size=chunk)
    np.testing.assert_allclose(g, ref, atol=tol, err_msg=method)
  report = ngdjax.describe_structure(apply, params, x)
  if case == "transformer":
    assert len(report.shared) >= 4, str(report)  # q, k, v, out, MLP
    # The LayerNorm scales and shifts (a shift after flax's scale-into-
    # rsqrt product is an elementwise layer of its own).
    assert len(report.norm) == 4 and not report.generic, str(report)
  else:
    # The table is an embedding of its own; nothing is generic.
    assert len(report.embed) == 1 and not report.generic, str(report)
    vocab = {"norm_embedding": 7, "flax_norm_embedding": 6}[case]
    assert report.embed[0][4:] == (vocab, 3, x.shape[1]), str(report)
    if case == "norm_embedding":
      assert [(lay.weight, lay.bias) for lay in report.norm] == [
          ("['scale']", "['shift']")]
    _check_embedding_forms(apply, params, x, ref, tol)
  _check_expanded_factors(apply, params, x)


def _check_embedding_forms(apply, params, x, ref, tol):
  """Both exact forms of the embedding's Gram block, its matrix-free
  product and a row Gram (Gamma G Gamma^T) against the dense reference."""
  st = structure.model_structure(apply, params, x)
  auto = gram_forms.choose_forms(st, x.shape[0], ref.shape[0] // x.shape[0])
  v = jnp.cos(jnp.arange(ref.shape[0], dtype=ref.dtype))
  rows = jnp.sin(jnp.arange(ref.shape[0], dtype=ref.dtype)).reshape(
      x.shape[0], -1, 1)

  @jax.jit  # one compilation: op-by-op dispatch of the pieces is slower
  def pieces(params, x):
    grams = []
    for form in ("embed", "jacobian"):
      forms = tuple(form if lay.kind == "embed" else f
                    for lay, f in zip(st.layers, auto, strict=True))
      grams.append(gram_forms.self_gram(
          forms, gram_forms.features(st, forms, params, x)))
    gv = gram_forms.product_operator(st, params, x)(v.reshape(x.shape[0],
                                                              -1))
    return grams, gv.reshape(-1), gram_forms.row_gram(st, params, x, rows)

  grams, gv, row_gram = pieces(params, x)
  for form, g in zip(("embed", "jacobian"), grams, strict=True):
    np.testing.assert_allclose(g, ref, atol=tol, err_msg=form)
  np.testing.assert_allclose(gv, ref @ v, atol=tol * 10)
  gamma = jax.scipy.linalg.block_diag(*[r.T for r in rows])
  np.testing.assert_allclose(row_gram, gamma @ ref @ gamma.T, atol=tol)


def test_equinox_embedding_under_vmap_is_an_embedding():
  # equinox's Embedding indexes W[i] per token; under vmap that is a gather
  # with an index vector (row, 0) in clip mode: still whole rows.
  eqx = pytest.importorskip("equinox")
  emb = eqx.nn.Embedding(9, 4, key=jax.random.key(0))
  params = {"w": emb.weight.astype(jnp.float64),
            "out": jnp.cos(jnp.arange(24.0)).reshape(12, 2)}

  def apply(p, x):
    def one(ids):
      table = eqx.nn.Embedding(weight=p["w"])
      return jnp.tanh(jax.vmap(table)(ids)).reshape(-1) @ p["out"]
    return jax.vmap(one)(x.astype(jnp.int32))

  x = jnp.asarray(np.random.default_rng(0).integers(0, 9, (4, 3)),
                  jnp.float64)
  report = ngdjax.describe_structure(apply, params, x)
  assert len(report.embed) == 1 and not report.generic, str(report)
  _check_gram(apply, params, x)

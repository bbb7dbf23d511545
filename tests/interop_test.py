"""ngdjax on flax (linen, nnx), equinox and plain-JAX models.

Every fast result is compared with a dense reference: ``jax.jacrev`` of the
flattened outputs for the Gram, the products and the NGD step, an explicit
Kronecker product for K-FAC. The README's "Bring your own model" snippets
are run as they are written.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ngdjax

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")

RTOL = 1e-10


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _x(n=5, shape=(3,), seed=1):
  x = np.random.default_rng(seed).standard_normal((n, *shape))
  return jnp.asarray(x)


def _digits(n=6, channels_last=True):
  from sklearn.datasets import load_digits

  images = load_digits().data[:n] / 16.0
  shape = (n, 8, 8, 1) if channels_last else (n, 1, 8, 8)
  return jnp.asarray(images.reshape(shape))


def _dense_jacobian(apply, params, x):
  flat, unravel = ravel_pytree(params)
  return jax.jacrev(lambda f: apply(unravel(f), x).reshape(-1))(flat)


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --------------------------------------------------------------------------
# Models: (apply, params, x, number of dense layers that must be matched).
# --------------------------------------------------------------------------


def flax_mlp(bias=True, c=2):
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.tanh(nn.Dense(6, use_bias=bias)(x))
      x = nn.relu(nn.Dense(4, use_bias=bias)(x))
      return nn.Dense(c, use_bias=bias)(x)

  x = _x()
  params = _f64(MLP().init(jax.random.key(0), x))
  return MLP().apply, params, x, 3


def nnx_mlp(bias=True, c=2):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      kw = {"use_bias": bias, "param_dtype": jnp.float64, "rngs": rngs}
      self.l1 = nnx.Linear(3, 6, **kw)
      self.l2 = nnx.Linear(6, c, **kw)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  graphdef, state = nnx.split(MLP(nnx.Rngs(0)))

  def apply(state, x):
    return nnx.merge(graphdef, state)(x)

  return apply, state, _x(), 2


def eqx_mlp(bias=True, c=2):
  net = eqx.nn.MLP(3, c, 6, 2, activation=jnp.tanh, use_bias=bias,
                   use_final_bias=bias, key=jax.random.key(0))
  params, static = eqx.partition(net, eqx.is_array)

  def apply(params, x):
    return jax.vmap(eqx.combine(params, static))(x)

  return apply, _f64(params), _x(), 3


def plain_mlp(bias=True, c=2):
  keys = jax.random.split(jax.random.key(0), 4)
  params = {"w1": jax.random.normal(keys[0], (3, 6)),
            "w2": jax.random.normal(keys[1], (6, c))}
  if bias:
    params["b1"] = jax.random.normal(keys[2], (6,))
    params["b2"] = jax.random.normal(keys[3], (c,))

  def apply(p, x):
    h = x @ p["w1"] + (p["b1"] if bias else 0.0)
    return jnp.tanh(h) @ p["w2"] + (p["b2"] if bias else 0.0)

  return apply, _f64(params), _x(), 2


def plain_scalar_output():
  """Outputs ``(n,)``; weight stored transposed and scaled (NTK style)."""
  keys = jax.random.split(jax.random.key(1), 3)
  params = {"w": jax.random.normal(keys[0], (7, 3)),
            "b": jax.random.normal(keys[1], (7,)),
            "v": jax.random.normal(keys[2], (7,))}

  def apply(p, x):
    h = jax.nn.gelu((x @ p["w"].T) / np.sqrt(3.0) + 0.1 * p["b"])
    return h @ p["v"] / np.sqrt(7.0)

  return apply, _f64(params), _x(), 2


def flax_cnn():
  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(3, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), (2, 2))
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(nn.Dense(8)(x))
      return nn.Dense(3)(x)

  x = _digits()
  params = _f64(CNN().init(jax.random.key(0), x))
  return CNN().apply, params, x, 2


def eqx_cnn():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  net = eqx.nn.Sequential([
      eqx.nn.Conv2d(1, 3, kernel_size=3, key=k1),
      eqx.nn.Lambda(jax.nn.relu),
      eqx.nn.Lambda(jnp.ravel),
      eqx.nn.Linear(3 * 6 * 6, 8, key=k2),
      eqx.nn.Lambda(jnp.tanh),
      eqx.nn.Linear(8, 2, key=k3),
  ])
  params, static = eqx.partition(net, eqx.is_array)

  def apply(params, x):
    return jax.vmap(eqx.combine(params, static))(x)

  return apply, _f64(params), _digits(5, channels_last=False), 2


def plain_layernorm_tied():
  """A layer-norm scale and a weight used twice: both on the generic path."""
  keys = jax.random.split(jax.random.key(2), 3)
  params = {"w": jax.random.normal(keys[0], (4, 4)),
            "scale": 1.0 + 0.1 * jax.random.normal(keys[1], (4,)),
            "out": jax.random.normal(keys[2], (4, 2))}

  def apply(p, x):
    h = jnp.tanh(x @ p["w"])
    h = jnp.tanh(h @ p["w"])  # tied
    mu = h.mean(-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-3)
    return (h * p["scale"]) @ p["out"]

  return apply, _f64(params), _x(shape=(4,)), 1


CASES = {
    "flax_mlp": flax_mlp,
    "flax_mlp_nobias": lambda: flax_mlp(bias=False),
    "flax_mlp_c1": lambda: flax_mlp(c=1),
    "nnx_mlp": nnx_mlp,
    "nnx_mlp_nobias_c3": lambda: nnx_mlp(bias=False, c=3),
    "eqx_mlp": eqx_mlp,
    "eqx_mlp_nobias": lambda: eqx_mlp(bias=False),
    "plain_mlp": plain_mlp,
    "plain_mlp_nobias_c1": lambda: plain_mlp(bias=False, c=1),
    "plain_scalar_output": plain_scalar_output,
    "flax_cnn_digits": flax_cnn,
    "eqx_cnn_digits": eqx_cnn,
    "plain_layernorm_tied": plain_layernorm_tied,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_gram_is_exact_and_structured(name):
  apply, params, x, n_layers = CASES[name]()
  report = ngdjax.describe_structure(apply, params, x)
  assert len(report.layers) == n_layers, str(report)
  j = _dense_jacobian(apply, params, x)
  g = ngdjax.gram(apply, params, x)
  assert _rel(g, j @ j.T) <= RTOL


@pytest.mark.parametrize("name", ["eqx_cnn_digits", "plain_layernorm_tied"])
def test_chunked_and_cross_gram(name):
  apply, params, x, _ = CASES[name]()
  j = _dense_jacobian(apply, params, x)
  g = ngdjax.gram(apply, params, x, method="structured", chunk_size=2)
  assert _rel(g, j @ j.T) <= RTOL
  x2 = 0.5 * x[:3]
  j2 = _dense_jacobian(apply, params, x2)
  assert _rel(ngdjax.gram(apply, params, x, x2), j @ j2.T) <= RTOL


def test_products_jacobian_and_vectors_on_images():
  apply, params, x, _ = flax_cnn()
  j = _dense_jacobian(apply, params, x)
  np.testing.assert_allclose(ngdjax.jacobian(apply, params, x), j,
                             atol=1e-12)
  for method in ("products", "jacobian"):
    g = ngdjax.gram(apply, params, x, method=method, chunk_size=4)
    assert _rel(g, j @ j.T) <= RTOL, method
  flat, unravel = ravel_pytree(params)
  t = jnp.asarray(np.random.default_rng(0).standard_normal(flat.size))
  v = jnp.asarray(np.random.default_rng(1).standard_normal(j.shape[0]))
  np.testing.assert_allclose(ngdjax.jvp(apply, params, x, unravel(t)),
                             j @ t, atol=1e-10)
  np.testing.assert_allclose(
      ravel_pytree(ngdjax.vjp(apply, params, x, v))[0], j.T @ v, atol=1e-10)


@pytest.mark.parametrize("name", ["flax_mlp", "eqx_cnn_digits",
                                  "plain_scalar_output"])
def test_ngd_step_matches_dense(name):
  apply, params, x, _ = CASES[name]()
  u = apply(params, x)
  y = jnp.asarray(np.random.default_rng(5).standard_normal(u.shape))
  lr, lam = 0.7, 1e-3
  opt = ngdjax.ngd(apply, learning_rate=lr, damping=lam)
  new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
  j = _dense_jacobian(apply, params, x)
  r = (u - y).reshape(-1)
  flat, _ = ravel_pytree(params)
  want = flat - lr * j.T @ np.linalg.solve(j @ j.T + lam * np.eye(r.size), r)
  np.testing.assert_allclose(ravel_pytree(new)[0], want, rtol=1e-9,
                             atol=1e-10)
  assert int(info["cholesky_failed"]) == 0


# --------------------------------------------------------------------------
# K-FAC against explicit Kronecker products.
# --------------------------------------------------------------------------


def _manual_factors(forward, mats, x):
  """``A_l`` and ``B_l`` of a hand-written forward ``(mats, x, eps) -> (u,
  inputs)``, by jacrev with respect to pre-activation perturbations."""
  n = x.shape[0]
  eps = [jnp.zeros((n, m.shape[1])) for m in mats]
  u, inputs = forward(mats, x, eps)
  jac = jax.jacrev(lambda e: forward(mats, x, e)[0])(eps)
  idx = jnp.arange(n)
  grads = [jl[idx, :, idx, :] for jl in jac]  # (n, c, b): example-diagonal
  return u, inputs, grads


def _kronecker_step(inputs, grads, g, lam):
  """``(F_kfac + lam I)^{-1} grad`` per layer, dense: ``F_kfac =
  (A^T A) (x) (B^T B) / n`` (B as ``(n c, b)``), vec row-major."""
  n = g.shape[0]
  out = []
  for a, b in zip(inputs, grads, strict=True):
    a, b = np.asarray(a), np.asarray(b)
    bf = b.reshape(-1, b.shape[-1])
    f = np.kron(a.T @ a, bf.T @ bf) / n + lam * np.eye(a.shape[1]
                                                       * b.shape[-1])
    grad = np.einsum("ia,ik,ikb->ab", a, np.asarray(g), b)
    out.append(np.linalg.solve(f, grad.reshape(-1)).reshape(grad.shape))
  return out


# The mini-batch mode (running factors, here of one batch) needs
# example_inputs for a bare apply; with decay 0 it is the same step.
MODES = {"full_batch": lambda x: {},
         "mini_batch": lambda x: {"factor_decay": 0.0, "inverse_every": 2,
                                  "example_inputs": x[:1]}}


@pytest.mark.parametrize("mode", list(MODES))
def test_kfac_on_flax_mlp_equals_kronecker_reference(mode):
  apply, params, x, _ = flax_mlp(bias=True, c=2)
  p = params["params"]
  names = ["Dense_0", "Dense_1", "Dense_2"]
  mats = [jnp.concatenate([p[k]["kernel"], p[k]["bias"][None]]) for k in names]
  acts = [jnp.tanh, jax.nn.relu, None]

  def forward(mats, x, eps):
    h, inputs = x, []
    for m, act, e in zip(mats, acts, eps, strict=True):
      a = jnp.concatenate([h, jnp.ones((h.shape[0], 1))], axis=1)
      inputs.append(a)
      z = a @ m + e
      h = z if act is None else act(z)
    return h, inputs

  u, inputs, grads = _manual_factors(forward, mats, x)
  np.testing.assert_allclose(u, apply(params, x), atol=1e-12)
  y = jnp.asarray(np.random.default_rng(3).standard_normal(u.shape))
  lam = 1e-2
  deltas = _kronecker_step(inputs, grads, u - y, lam)
  opt = ngdjax.kfac(apply, learning_rate=1.0, damping=lam,
                    damping_split="exact", **MODES[mode](x))
  new, _, _ = jax.jit(opt.step)(params, opt.init(params), x, y)
  for k, m, delta in zip(names, mats, deltas, strict=True):
    want = np.asarray(m) - delta
    got = np.concatenate([new["params"][k]["kernel"],
                          new["params"][k]["bias"][None]])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", list(MODES))
def test_kfac_generic_leaves_get_their_exact_block(mode):
  """A squared scale vector (a leaf outside any layer) gets ``(J_s^T J_s
  + lam)^{-1} J_s^T g``; the dense layers around it their Kronecker
  update. (A plain scale is a norm layer with per-feature Kronecker
  blocks: optim_kfac_conv_test.)"""
  keys = jax.random.split(jax.random.key(4), 4)
  params = _f64({"w1": jax.random.normal(keys[0], (3, 5)),
                 "b1": jax.random.normal(keys[1], (5,)),
                 "s": 1.0 + 0.1 * jax.random.normal(keys[2], (5,)),
                 "w2": jax.random.normal(keys[3], (5, 2))})

  def apply(p, x):
    return (jnp.tanh(x @ p["w1"] + p["b1"]) * p["s"] ** 2) @ p["w2"]

  report = ngdjax.describe_structure(apply, params, _x())
  assert [leaf.path for leaf in report.generic] == ["['s']"]

  def forward(mats, x, eps):
    a1 = jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)
    h = jnp.tanh(a1 @ mats[0] + eps[0]) * params["s"] ** 2
    return h @ mats[1] + eps[1], [a1, h]

  x = _x(n=6)
  mats = [jnp.concatenate([params["w1"], params["b1"][None]]), params["w2"]]
  u, inputs, grads = _manual_factors(forward, mats, x)
  y = jnp.zeros_like(u)
  g = u - y
  lam = 1e-2
  d1, d2 = _kronecker_step(inputs, grads, g, lam)
  js = jax.jacrev(lambda s: apply({**params, "s": s}, x).reshape(-1))(
      params["s"])
  ds = np.linalg.solve(js.T @ js + lam * np.eye(5), js.T @ g.reshape(-1))
  opt = ngdjax.kfac(apply, learning_rate=1.0, damping=lam,
                    damping_split="exact", **MODES[mode](x))
  new, _, _ = jax.jit(opt.step)(params, opt.init(params), x, y)
  np.testing.assert_allclose(new["s"], params["s"] - ds, rtol=1e-9)
  np.testing.assert_allclose(new["w2"], params["w2"] - d2, rtol=1e-9)
  np.testing.assert_allclose(new["w1"], params["w1"] - d1[:-1], rtol=1e-9)
  np.testing.assert_allclose(new["b1"], params["b1"] - d1[-1], rtol=1e-9)


@pytest.mark.parametrize("name", ["eqx_mlp", "nnx_mlp", "flax_cnn_digits"])
def test_kfac_step_runs_jitted_on_other_libraries(name):
  apply, params, x, _ = CASES[name]()
  y = jnp.zeros_like(apply(params, x))
  opt = ngdjax.kfac(apply, learning_rate=0.1, damping=1e-3)
  new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(
      params)
  loss_after = 0.5 * jnp.sum(apply(new, x) ** 2)
  assert float(loss_after) < float(info["loss"])


@pytest.mark.parametrize("name", ["eqx_mlp", "flax_cnn_digits"])
def test_kfac_mini_batch_classifier_on_other_libraries(name):
  # Running factors, refreshed every 2 steps, cross-entropy with integer
  # labels, batches of different sizes than example_inputs; without
  # example_inputs the error names it.
  apply, params, x, _ = CASES[name]()
  c = apply(params, x).shape[1]
  labels = jnp.arange(x.shape[0]) % c
  kw = {"loss": "softmax_cross_entropy", "factor_decay": 0.9,
        "inverse_every": 2, "fisher": "monte_carlo"}
  with pytest.raises(ValueError, match="example_inputs"):
    ngdjax.kfac(apply, 0.1, damping=1.0, **kw).init(params)
  opt = ngdjax.kfac(apply, 0.1, damping=1.0, example_inputs=x[:2], **kw)
  step = jax.jit(opt.step)
  state, p = opt.init(params), params
  losses = []
  for _ in range(4):
    p, state, info = step(p, state, x, labels)
    losses.append(float(info["loss"]))
    assert int(info["diverged"]) == 0
  assert losses[-1] < losses[0]
  with pytest.raises(ValueError, match="example_inputs"):
    ngdjax.kfac(apply, 0.3, example_inputs=jnp.zeros(()), **kw)


# --------------------------------------------------------------------------
# The README's "Bring your own model" snippets, as written.
# --------------------------------------------------------------------------


def _readme_snippets():
  text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  start = text.index("### Bring your own model")
  end = text.index("\n#", start + 1)
  return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_readme_has_a_flax_and_an_equinox_example():
  snippets = _readme_snippets()
  assert len(snippets) == 2
  assert "flax" in snippets[0] and "equinox" in snippets[1]


@pytest.mark.parametrize("index", [0, 1])
def test_readme_snippet_runs_and_its_gram_is_exact(index, capsys):
  namespace = {}
  exec(_readme_snippets()[index], namespace)  # noqa: S102 - our own README
  assert "dense layer(s) matched" in capsys.readouterr().out
  apply = namespace.get("apply") or namespace["MLP"]().apply
  params, x = namespace["params"], namespace["x"]
  assert np.isfinite(float(namespace["info"]["loss"]))
  j = _dense_jacobian(apply, params, x)
  assert _rel(namespace["G"], j @ j.T) <= 1e-5  # the README is float32


@pytest.mark.parametrize("make", [ngdjax.optim.ngd, ngdjax.optim.kfac],
                         ids=["ngd", "kfac"])
def test_two_batch_model_on_a_flax_apply_with_half_precision_inputs(make):
  # model_batches=2 stores the previous batch in the dtype the step
  # computes in (float16 inputs of a float64 model are cast up), so the
  # state keeps one structure: one compilation, float16 or not.
  apply, params, _, _ = flax_mlp()
  x = _x(n=12, seed=3)
  y = jnp.asarray(np.random.default_rng(4).integers(0, 2, 12))
  steps = {}
  for dtype in (jnp.float64, jnp.float16):
    xd = x.astype(dtype)
    extra = {"factor_decay": 0.9} if make is ngdjax.optim.kfac else {}
    opt = make(apply, loss="softmax_cross_entropy", model_batches=2,
               example_inputs=xd[:4], **extra)
    step = jax.jit(opt.step)
    p, state = params, opt.init(params)
    for k in range(3):
      p, state, info = step(p, state, xd[4 * k:4 * k + 4],
                            y[4 * k:4 * k + 4])
    assert state.previous[0].dtype == jnp.float64
    assert step._cache_size() == 1
    assert int(info["step_rejected"]) == 0
    steps[dtype] = float(info["learning_rate"])
  # The float16 inputs only round x: the chosen step sizes stay close.
  np.testing.assert_allclose(steps[jnp.float16], steps[jnp.float64],
                             rtol=1e-2)

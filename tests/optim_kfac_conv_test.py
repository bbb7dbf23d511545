"""Tests for the convolution K-FAC maths against dense references (float64)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ngdjax
from ngdjax._src import structure
from ngdjax._src.optim import kfac_conv as kc

# (input shape, kernel shape, strides, padding, dimension numbers, groups,
#  lhs dilation, rhs dilation): 1-D/2-D/3-D, NHWC/NCHW, SAME/VALID/explicit.
CASES = {
    "nhwc_same_stride": ((2, 7, 6, 4), (3, 3, 4, 6), (2, 1), "SAME",
                         ("NHWC", "HWIO", "NHWC"), 1, None, None),
    "nchw_grouped_dilated": ((2, 4, 7, 6), (6, 2, 3, 2), (1, 2),
                             ((1, 2), (0, 1)), ("NCHW", "OIHW", "NCHW"), 2,
                             (2, 1), (1, 2)),
    "1d_valid": ((2, 9, 4), (3, 4, 8), (2,), "VALID", ("NWC", "WIO", "NWC"),
                 1, None, (2,)),
    "3d_grouped": ((2, 3, 4, 5, 4), (2, 2, 2, 2, 4), (1, 2, 1), "SAME",
                   ("NDHWC", "DHWIO", "NDHWC"), 2, None, None),
    "depthwise_negative_pad": ((2, 6, 6, 3), (3, 3, 1, 6), (1, 1),
                               ((-1, 1), (1, 0)), ("NHWC", "HWIO", "NHWC"), 3,
                               None, None),
}


def _case(name, seed=0):
  xs, ws, strides, pad, dn, g, ld, rd = CASES[name]
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x, w = jax.random.normal(k1, xs), jax.random.normal(k2, ws)
  spec = kc.conv_spec(xs, ws, strides, pad, lhs_dilation=ld, rhs_dilation=rd,
                      dimension_numbers=dn, feature_group_count=g)
  b = jax.random.normal(k3, (spec.out_channels,))
  return spec, x, w, b


@pytest.mark.parametrize("name", sorted(CASES))
def test_patches_times_matrices_is_the_convolution(name):
  spec, x, w, b = _case(name)
  z = lax.conv_general_dilated(
      x, w, spec.window_strides, CASES[name][3],
      lhs_dilation=CASES[name][6], rhs_dilation=CASES[name][7],
      dimension_numbers=CASES[name][4],
      feature_group_count=spec.feature_group_count,
      precision=lax.Precision.HIGHEST)
  shape = [1] * z.ndim
  shape[spec.dimension_numbers.out_spec[1]] = -1
  z = z + b.reshape(shape)
  a = kc.patches(spec, x, bias=True)
  m = kc.kernel_to_matrices(spec, w, b)
  assert a.shape == (2, spec.positions, spec.groups, spec.fan_in(True))
  assert m.shape == (spec.groups, spec.fan_in(True), spec.fan_out)
  np.testing.assert_allclose(jnp.einsum("ntga,gab->ntgb", a, m),
                             kc.output_rows(spec, z), atol=1e-12)
  kernel, bias = kc.matrices_to_kernel(spec, m, bias=True)
  np.testing.assert_array_equal(kernel, w)
  np.testing.assert_array_equal(bias, b)
  kernel, bias = kc.matrices_to_kernel(spec, m[:, :-1])
  np.testing.assert_array_equal(kernel, w)
  assert bias is None


def test_conv_spec_rejects_batch_groups_and_bad_groups():
  with pytest.raises(ValueError, match="batch_group_count"):
    kc.conv_spec((2, 4, 4, 2), (3, 3, 2, 2), (1, 1), "SAME",
                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                 batch_group_count=2)
  with pytest.raises(ValueError, match="feature_group_count"):
    kc.conv_spec((2, 4, 4, 3), (3, 3, 3, 4), (1, 1), "SAME",
                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                 feature_group_count=2)


def _net(spec, head):
  """``u = head(conv(x) + eps)`` per example: outputs, patches and the
  pre-activation gradients ``s (n, c, T, G, b)`` from a zero tap ``eps``."""

  def outputs(w, b, x, eps):
    return head(kc.conv(spec, x, w, b) + eps)

  def grads(w, b, x):
    z = kc.conv(spec, x, w, b)

    def one(xi, zi):
      f = lambda e: head(kc.conv(spec, xi[None], w, b) + e[None])[0]
      return jax.jacrev(f)(jnp.zeros_like(zi))  # (c, *z)

    jac = jax.vmap(one)(x, z)  # (n, c, *z_i)
    n, c = jac.shape[:2]
    rows = kc.output_rows(spec, jac.reshape(n * c, *z.shape[1:]))
    return rows.reshape(n, c, *rows.shape[1:])

  return outputs, grads


def _weight_jacobian(spec, outputs, w, b, x):
  """``d u[i, k] / d M_g`` from ``jax.jacrev`` through the kernel map,
  ``(n, c, G, a, b)``."""

  def of_m(m):
    kernel, bias = kc.matrices_to_kernel(spec, m, bias=True)
    return outputs(kernel, bias, x, 0.0)

  return jax.jacrev(of_m)(kc.kernel_to_matrices(spec, w, b))


@pytest.mark.parametrize("name", ["nhwc_same_stride", "nchw_grouped_dilated",
                                  "3d_grouped"])
def test_per_example_grads_match_jacrev(name):
  spec, x, w, b = _case(name)
  v = jax.random.normal(jax.random.key(5), (spec.out_channels * spec.positions,
                                            3))

  def head(z):  # a nonlinear head: every position mixes into 3 outputs
    return jnp.tanh(z).reshape(z.shape[0], -1) @ v

  outputs, grads = _net(spec, head)
  a = kc.patches(spec, x, bias=True)
  s = grads(w, b, x)
  got = kc.per_example_grads(a, s)
  want = _weight_jacobian(spec, outputs, w, b, x)
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert np.abs(want).max() > 0.1


def _dense_blocks(jac):
  """The exact Gauss-Newton block of each group, ``sum_{i,k} vec vec^T``
  of ``jac`` ``(n, c, G, a, b)``: ``(G, a b, a b)``."""
  n, c, g = jac.shape[:3]
  rows = jac.reshape(n * c, g, -1)
  return jnp.einsum("rgp,rgq->gpq", rows, rows)


@pytest.mark.parametrize("name", ["nhwc_same_stride", "nchw_grouped_dilated",
                                  "1d_valid", "3d_grouped"])
def test_expand_exact_for_linear_net_with_loss_over_positions(name):
  # conv -> 1x1 map per position (a deep linear network applied at every
  # position), each position its own outputs: expand is the exact block.
  spec, x, w, b = _case(name)
  v = jax.random.normal(jax.random.key(6), (spec.out_channels, 2))
  out_spec = spec.dimension_numbers.out_spec

  def head(z):
    h = jnp.transpose(z, (out_spec[0], *out_spec[2:], out_spec[1]))
    return (h @ v).reshape(z.shape[0], -1)  # (n, T * 2)

  outputs, grads = _net(spec, head)
  cov_a, cov_b = kc.factors(kc.patches(spec, x, bias=True), grads(w, b, x),
                            "expand")
  exact = _dense_blocks(_weight_jacobian(spec, outputs, w, b, x))
  np.testing.assert_allclose(kc.kronecker_curvature(cov_a, cov_b, x.shape[0]),
                             exact, atol=1e-10 * np.abs(exact).max())
  # Reduce is not exact here (positions are not summed before the loss).
  ra, rb = kc.factors(kc.patches(spec, x, bias=True), grads(w, b, x),
                      "reduce")
  assert not np.allclose(kc.kronecker_curvature(ra, rb, x.shape[0]), exact,
                         atol=1e-6 * np.abs(exact).max())


@pytest.mark.parametrize("name", ["nhwc_same_stride", "nchw_grouped_dilated",
                                  "1d_valid", "depthwise_negative_pad"])
def test_reduce_exact_for_linear_net_summed_over_positions(name):
  spec, x, w, b = _case(name)
  v = jax.random.normal(jax.random.key(7), (spec.out_channels, 3))
  out_spec = spec.dimension_numbers.out_spec

  def head(z):  # positions summed before the (any) loss
    h = jnp.transpose(z, (out_spec[0], *out_spec[2:], out_spec[1]))
    return jnp.sum((h @ v).reshape(z.shape[0], -1, 3), axis=1)

  outputs, grads = _net(spec, head)
  a, s = kc.patches(spec, x, bias=True), grads(w, b, x)
  cov_a, cov_b = kc.factors(a, s, "reduce")
  exact = _dense_blocks(_weight_jacobian(spec, outputs, w, b, x))
  np.testing.assert_allclose(kc.kronecker_curvature(cov_a, cov_b, x.shape[0]),
                             exact, atol=1e-10 * np.abs(exact).max())
  ea, eb = kc.factors(a, s, "expand")
  assert not np.allclose(kc.kronecker_curvature(ea, eb, x.shape[0]), exact,
                         atol=1e-6 * np.abs(exact).max())


def test_one_position_is_the_dense_block():
  # A 1x1 convolution on a 1x1 image is a dense layer: both variants give
  # the dense K-FAC factors that the structure finds for the same network.
  n, d, m, c = 5, 4, 6, 3
  k1, k2, k3, k4 = jax.random.split(jax.random.key(8), 4)
  x = jax.random.normal(k1, (n, d))
  w, b = jax.random.normal(k2, (d, m)), jax.random.normal(k3, (m,))
  v = jax.random.normal(k4, (m, c))

  def dense_apply(params, x):
    return jnp.tanh(x @ params["w"] + params["b"]) @ params["v"]

  params = {"w": w, "b": b, "v": v}
  first = structure.layer_structure(dense_apply, params, x).layer_factors(
      params, x)[0]
  dense_a = first.inputs.T @ first.inputs / n
  bf = first.output_grads.reshape(-1, m)
  dense_b = bf.T @ bf / n

  spec = kc.conv_spec((n, 1, 1, d), (1, 1, d, m), (1, 1), "VALID",
                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  head = lambda z: jnp.tanh(z.reshape(z.shape[0], m)) @ v
  _, grads = _net(spec, head)
  xi = x.reshape(n, 1, 1, d)
  a = kc.patches(spec, xi, bias=True)
  s = grads(w.reshape(1, 1, d, m), b, xi)
  for approx in kc.APPROXIMATIONS:
    cov_a, cov_b = kc.factors(a, s, approx)
    np.testing.assert_allclose(cov_a[0], dense_a, atol=1e-12)
    np.testing.assert_allclose(cov_b[0], dense_b, atol=1e-12)


def test_factors_rejects_unknown_approximation():
  a, s = jnp.ones((2, 3, 1, 4)), jnp.ones((2, 1, 3, 1, 2))
  with pytest.raises(ValueError, match="approximation"):
    kc.factors(a, s, "both")


# --------------------------------------------------------------------------
# The K-FAC step on a tiny CNN against explicit Kronecker products.
# --------------------------------------------------------------------------

LAYOUTS = {
    "nhwc": (("NHWC", "HWIO", "NHWC"), (4, 6, 6, 2), (3, 3, 2, 4),
             (2, 2, 2, 4)),
    "nchw": (("NCHW", "OIHW", "NCHW"), (4, 2, 6, 6), (4, 2, 3, 3),
             (4, 2, 2, 2)),
}


def _tiny_cnn(layout):
  """conv 3x3 stride 2 "SAME" + bias, tanh, grouped (G = 2) conv 2x2
  "VALID" + bias, tanh, dense to 3 outputs.

  Returns ``tapped(params, x, taps)`` (a perturbation added to each layer's
  pre-activation), the two conv specs, the shapes of the taps, params and
  inputs; ``apply`` is ``tapped`` with zero taps.
  """
  dn, xs, w1s, w2s = LAYOUTS[layout]
  s1 = kc.conv_spec(xs, w1s, (2, 2), "SAME", dimension_numbers=dn)
  z1 = jax.eval_shape(lambda x, w: kc.conv(s1, x, w),
                      jax.ShapeDtypeStruct(xs, jnp.float64),
                      jax.ShapeDtypeStruct(w1s, jnp.float64)).shape
  s2 = kc.conv_spec(z1, w2s, (1, 1), "VALID", dimension_numbers=dn,
                    feature_group_count=2)
  z2 = jax.eval_shape(lambda x, w: kc.conv(s2, x, w),
                      jax.ShapeDtypeStruct(z1, jnp.float64),
                      jax.ShapeDtypeStruct(w2s, jnp.float64)).shape
  c_axis = dn[2].index("C")

  def bias(b):
    shape = [1, 1, 1, 1]
    shape[c_axis] = -1
    return b.reshape(shape)

  def tapped(p, x, taps):
    z = lax.conv_general_dilated(x, p["c1"]["w"], (2, 2), "SAME",
                                 dimension_numbers=dn)
    h = jnp.tanh(z + bias(p["c1"]["b"]) + taps[0])
    z = lax.conv_general_dilated(h, p["c2"]["w"], (1, 1), "VALID",
                                 dimension_numbers=dn, feature_group_count=2)
    h = jnp.tanh(z + bias(p["c2"]["b"]) + taps[1])
    return h.reshape(h.shape[0], -1) @ p["d"]["w"] + p["d"]["b"] + taps[2]

  keys = jax.random.split(jax.random.key(3), 6)
  params = {
      "c1": {"w": 0.5 * jax.random.normal(keys[0], w1s),
             "b": 0.1 * jax.random.normal(keys[1], (s1.out_channels,))},
      "c2": {"w": 0.5 * jax.random.normal(keys[2], w2s),
             "b": 0.1 * jax.random.normal(keys[3], (s2.out_channels,))},
      "d": {"w": 0.5 * jax.random.normal(keys[4], (int(np.prod(z2[1:])), 3)),
            "b": 0.1 * jax.random.normal(keys[5], (3,))},
  }
  x = jax.random.normal(jax.random.key(4), xs)
  taps = (z1[1:], z2[1:], (3,))
  return tapped, (s1, s2), taps, params, x


def _reference_step(cnn, labels, lr, lam, approx, split="pi"):
  """``-eta (n (A~ + pi d I) (x) (B~ + d / pi I))^{-1} vec(grad_M)`` per
  layer and group (``d = sqrt(lam / n)``, ``pi^2 = (tr A~ / a) / (tr B~ /
  b)``; ``split="exact"``: ``(n A~ (x) B~ + lam I)^{-1}``), in numpy,
  for the true Fisher of softmax cross-entropy: ``A~`` and ``B~ = sum
  s^T H s / n`` from explicit sums over the patches and the
  per-example Jacobians of the outputs at each pre-activation (jacrev)."""
  tapped, specs, tap_shapes, params, x = cnn
  n = x.shape[0]
  u = np.asarray(tapped(params, x, (0.0, 0.0, 0.0)))
  prob = np.exp(u - u.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  hess = np.stack([np.diag(q) - np.outer(q, q) for q in prob])
  jac = jax.vmap(jax.jacrev(
      lambda xi, taps: tapped(params, xi[None],
                              [t[None] for t in taps])[0], argnums=1))(
      x, [jnp.zeros((n, *s)) for s in tap_shapes])  # [layer] (n, c, *z_i)

  def loss(p):
    logits = tapped(p, x, (0.0, 0.0, 0.0))
    return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(n), labels])

  grads = jax.grad(loss)(params)
  h1 = jnp.tanh(kc.conv(specs[0], x, params["c1"]["w"], params["c1"]["b"]))
  h2 = jnp.tanh(kc.conv(specs[1], h1, params["c2"]["w"], params["c2"]["b"]))
  flat = np.asarray(h2.reshape(n, -1))
  a_rows = [np.asarray(kc.patches(specs[0], x, bias=True)),
            np.asarray(kc.patches(specs[1], h1, bias=True)),
            np.concatenate([flat, np.ones((n, 1))], 1)[:, None, None]]
  grad_ms = [np.asarray(kc.kernel_to_matrices(specs[0], grads["c1"]["w"],
                                              grads["c1"]["b"])),
             np.asarray(kc.kernel_to_matrices(specs[1], grads["c2"]["w"],
                                              grads["c2"]["b"])),
             np.concatenate([grads["d"]["w"], grads["d"]["b"][None]])[None]]
  deltas = []
  for layer, a in enumerate(a_rows):
    s = np.asarray(jac[layer])
    if layer < 2:
      s = np.asarray(kc.output_rows(specs[layer], s.reshape(-1, *s.shape[2:])))
    s = s.reshape(n, 3, a.shape[1], a.shape[2], -1)  # (n, c, T, G, b)
    per_group = []
    for g in range(a.shape[2]):
      ag, sg = a[:, :, g], s[:, :, :, g]
      if approx == "expand":
        cov_a = np.einsum("ita,itb->ab", ag, ag) / (n * a.shape[1])
        cov_b = np.einsum("ikta,ikl,iltb->ab", sg, hess, sg) / n
      else:
        am, ss = ag.mean(1), sg.sum(2)
        cov_a = am.T @ am / n
        cov_b = np.einsum("ika,ikl,ilb->ab", ss, hess, ss) / n
      da, db = cov_a.shape[0], cov_b.shape[0]
      pi = math.sqrt((np.trace(cov_a) / da) / (np.trace(cov_b) / db))
      d = math.sqrt(lam / n)
      if split == "pi":
        curv = n * np.kron(cov_a + pi * d * np.eye(da),
                           cov_b + d / pi * np.eye(db))
      else:
        curv = n * np.kron(cov_a, cov_b) + lam * np.eye(da * db)
      per_group.append(np.linalg.solve(curv, grad_ms[layer][g].reshape(-1))
                       .reshape(da, db))
    deltas.append(jnp.asarray(np.stack(per_group)))
  out = {}
  for name, spec, delta in zip(("c1", "c2"), specs, deltas, strict=False):
    kernel, b = kc.matrices_to_kernel(spec, delta, bias=True)
    out[name] = {"w": params[name]["w"] - lr * kernel,
                 "b": params[name]["b"] - lr * b}
  out["d"] = {"w": params["d"]["w"] - lr * deltas[2][0, :-1],
              "b": params["d"]["b"] - lr * deltas[2][0, -1]}
  return out


def _assert_tree_close(got, want, rtol):
  for path, w in jax.tree_util.tree_flatten_with_path(want)[0]:
    g = functools.reduce(lambda t, k: t[k.key], path, got)
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max(),
                               err_msg=jax.tree_util.keystr(path))


def _cnn_apply(cnn):
  tapped = cnn[0]
  return lambda p, x: tapped(p, x, (0.0, 0.0, 0.0))


def _finds_convolutions() -> bool:
  cnn = _tiny_cnn("nhwc")
  report = ngdjax.describe_structure(_cnn_apply(cnn), cnn[3], cnn[4])
  return not report.generic


needs_conv_structure = pytest.mark.skipif(
    not _finds_convolutions(),
    reason="the structure analysis does not yet find convolution layers")


# (layout, weight sharing, damping split, options): the full-batch mode
# (expand: the dense layers' Cholesky machinery on the n T rows, primal and
# dual; reduce: eigendecompositions) and the running factors' first step
# (the batch's own factors) with both inverses.
STEP_CASES = [
    ("nhwc", "expand", "pi", {}),
    ("nhwc", "expand", "pi", {"factor_decay": 0.9, "inverse": "cholesky"}),
    ("nhwc", "reduce", "exact", {"factor_decay": 0.9}),
    ("nchw", "expand", "exact", {"form": "dual"}),
    ("nchw", "reduce", "pi", {}),
]


@needs_conv_structure
@pytest.mark.parametrize("layout,approx,split,kwargs", STEP_CASES)
def test_kfac_step_on_a_cnn_matches_explicit_kronecker(layout, approx, split,
                                                        kwargs):
  cnn = _tiny_cnn(layout)
  params, x = cnn[3], cnn[4]
  labels = jnp.array([0, 2, 1, 2])
  lr, lam = 0.3, 0.05
  want = _reference_step(cnn, labels, lr, lam, approx, split)
  apply = _cnn_apply(cnn)
  assert ngdjax.describe_structure(apply, params, x).generic == ()
  opt = ngdjax.kfac(apply, lr, damping=lam, loss="softmax_cross_entropy",
                    weight_sharing=approx, damping_split=split,
                    example_inputs=x, **kwargs)
  got, _, info = jax.jit(opt.step)(params, opt.init(params), x, labels)
  assert int(info["cholesky_failed"]) == 0
  _assert_tree_close(got, want, 1e-9)


@needs_conv_structure
def test_running_factors_average_two_batches():
  # Two steps with factor_decay: the second step's factors are the
  # weighted mean w F_1 + (1 - w) F_2 of the two batches' (each at its own
  # params), w = average_weight(decay, 2); checked through the explicit
  # Kronecker step built from the averaged factors.
  cnn = _tiny_cnn("nhwc")
  tapped, specs, taps, params, x = cnn
  x2 = jax.random.normal(jax.random.key(9), x.shape)
  labels, labels2 = jnp.array([0, 2, 1, 2]), jnp.array([1, 1, 0, 2])
  apply = _cnn_apply(cnn)
  decay, lam = 0.6, 0.05
  opt = ngdjax.kfac(apply, 0.3, damping=lam, loss="softmax_cross_entropy",
                    factor_decay=decay, example_inputs=x)
  step = jax.jit(opt.step)
  p1, state, _ = step(params, opt.init(params), x, labels)
  _, state, _ = step(p1, state, x2, labels2)
  w = (decay - decay**2) / (1 - decay**2)
  first = opt.init(params)
  _, s_a, _ = step(params, first, x, labels)
  _, s_b, _ = step(p1, opt.init(params), x2, labels2)
  for got, fa, fb in zip(state.curvature, s_a.curvature, s_b.curvature,
                         strict=True):
    np.testing.assert_allclose(got.inputs_cov,
                               w * fa.inputs_cov + (1 - w) * fb.inputs_cov,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.grads_cov,
                               w * fa.grads_cov + (1 - w) * fb.grads_cov,
                               rtol=1e-12, atol=1e-14)
  # The conv layers' running factors carry their group axis.
  shapes = [f.inputs_cov.shape for f in state.curvature]
  assert shapes[1][0] == 2 and len(shapes[1]) == 3
  del tapped, specs, taps


@needs_conv_structure
def test_monte_carlo_kfac_reduces_the_loss_on_a_cnn():
  cnn = _tiny_cnn("nhwc")
  params, x = cnn[3], cnn[4]
  labels = jnp.array([0, 2, 1, 2])
  apply = _cnn_apply(cnn)
  opt = ngdjax.kfac(apply, 0.2, damping=0.1, loss="softmax_cross_entropy",
                    fisher="monte_carlo", factor_decay=0.9, inverse_every=2,
                    example_inputs=x)
  step = jax.jit(opt.step)
  state = opt.init(params)
  losses = []
  for _ in range(6):
    params, state, info = step(params, state, x, labels)
    losses.append(float(info["loss"]))
  assert losses[-1] < 0.5 * losses[0]


def _norm_embedding_model():
  vocab, width, tokens = 7, 3, 4

  def apply(p, x):  # x: (n, tokens) integer ids stored as floats
    h = jnp.take(p["embed"], x.astype(jnp.int32), axis=0)
    mu = h.mean(-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-3)
    h = h * p["scale"] + p["shift"]
    return jnp.tanh(h).reshape(h.shape[0], -1) @ p["out"]

  keys = jax.random.split(jax.random.key(8), 4)
  params = {"embed": jax.random.normal(keys[0], (vocab, width)),
            "scale": 1.0 + 0.1 * jax.random.normal(keys[1], (width,)),
            "shift": 0.1 * jax.random.normal(keys[2], (width,)),
            "out": jax.random.normal(keys[3], (tokens * width, 2))}
  x = jnp.asarray(np.random.default_rng(2).integers(0, vocab, (5, tokens)),
                  jnp.float64)
  return apply, params, x


def test_norm_and_embedding_blocks_are_their_kronecker_blocks():
  # Norm gains and shifts: one (2 x 2) (x) (1 x 1) block per feature;
  # the embedding: diag(token counts) (x) B^T B (its one-hot input factor
  # is diagonal). Full batch, "exact" split, squared loss: delta =
  # (F_kfac + lam)^{-1} grad per block, with A and B from jax.jacrev of a
  # perturbation at the layer outputs (not from the library's factors).
  apply, params, x = _norm_embedding_model()
  y = jnp.sin(jnp.arange(10.0)).reshape(5, 2)
  lam, n, t, d = 0.1, 5, 4, 3
  opt = ngdjax.kfac(apply, learning_rate=1.0, damping=lam,
                    damping_split="exact")
  new, _, _ = jax.jit(opt.step)(params, opt.init(params), x, y)
  grad = jax.grad(lambda p: 0.5 * jnp.sum((apply(p, x) - y) ** 2))(params)

  def perturbed(eps_e, eps_s):  # eps at the lookup and at h * scale
    ids = x.astype(jnp.int32)
    h = params["embed"][ids] + eps_e
    mu = h.mean(-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-3)
    z = h * params["scale"] + eps_s + params["shift"]
    return jnp.tanh(z).reshape(n, -1) @ params["out"], h

  zeros = jnp.zeros((n, t, d))
  s_e, s_s = jax.jacrev(lambda a, b: perturbed(a, b)[0], (0, 1))(zeros, zeros)
  h = perturbed(zeros, zeros)[1]
  # s_*: (n, c, n, t, d): the gradient of output (i, k) at (j, t, :)
  s_e = jnp.einsum("ikitd->iktd", s_e)
  s_s = jnp.einsum("ikitd->iktd", s_s)
  for f in range(d):
    a_f = np.stack([np.asarray(h[..., f]).ravel(), np.ones(n * t)], 1)
    b_f = np.asarray(s_s[..., f]).ravel()
    fisher = np.kron(a_f.T @ a_f, [[b_f @ b_f]]) / (n * t)
    g_f = np.array([grad["scale"][f], grad["shift"][f]])
    got = np.array([params["scale"][f] - new["scale"][f],
                    params["shift"][f] - new["shift"][f]])
    np.testing.assert_allclose(got, np.linalg.solve(
        fisher + lam * np.eye(2), g_f), rtol=1e-9)
  counts = np.bincount(np.asarray(x, int).ravel(), minlength=7)
  b = np.asarray(s_e).reshape(-1, d)
  fisher = np.kron(np.diag(counts), b.T @ b) / (n * t)
  ref = np.linalg.solve(fisher + lam * np.eye(7 * d),
                        np.asarray(grad["embed"]).ravel())
  np.testing.assert_allclose(params["embed"] - new["embed"],
                             ref.reshape(7, d), rtol=1e-9, atol=1e-12)

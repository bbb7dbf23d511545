"""Tests for the convolution K-FAC maths against dense references (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

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

"""Kronecker-factored curvature of convolution layers (KFC and its variants).

A convolution ``lax.conv_general_dilated`` with feature groups ``G`` is, per
group ``g``, one layer matrix ``M_g`` ``(a, b)`` applied at every output
position ``t = 1..T``: ``z[i, t, g] = a[i, t, g] @ M_g`` with ``a[i, t, g]``
the patch of example ``i`` under the kernel at ``t`` (the group's ``C / G``
input channels times the kernel's ``K`` spatial taps, plus a constant 1
when the layer has a bias, whose row is the bias) and ``b = O / G`` the
group's output channels. With ``s[i, k, t, g]`` the gradient of output
``k`` of example ``i`` with respect to ``z[i, t, g]`` (the pre-activation
gradients), the per-example Jacobian rows are

    d u[i, k] / d M_g = sum_t a[i, t, g] s[i, k, t, g]^T          (a, b)

and the layer's Gauss-Newton block is the sum of their outer products.
A grouped convolution's weight is block-diagonal over groups; each group
gets its own Kronecker block (the blocks between groups are dropped, as
K-FAC drops the blocks between layers), so every array below carries a
group axis ``G`` (1 for an ordinary convolution).

Two Kronecker approximations, in the library's sum convention, written as
per-example factor averages ``A~ (a, a)`` and ``B~ (b, b)`` whose
curvature is ``n A~ (x) B~`` (the convention of ``kfac``'s running
factors):

* ``"expand"`` (KFC, Grosse & Martens 2016; Eschenhagen et al. 2023): every
  position counts as an example, ``A~ = sum_{i,t} a a^T / (n T)`` and
  ``B~ = sum_{i,k,t} s s^T / n``, i.e. ``F ~= (A_e^T A_e / (n T)) (x)
  (B_e^T B_e)`` with ``A_e`` the ``n T`` patches and ``B_e`` the ``n c T``
  gradient rows. Exact for a deep linear network whose loss is a sum over
  positions (each position its own output).
* ``"reduce"`` (Eschenhagen et al. 2023): positions are aggregated first,
  ``a~_i = (1/T) sum_t a[i, t]`` and ``s~_ik = sum_t s[i, k, t]``, then the
  dense formula ``A~ = sum_i a~ a~^T / n``, ``B~ = sum_{i,k} s~ s~^T / n``.
  Exact for a deep linear network whose positions are summed (or averaged)
  before the loss. Cheaper: ``n`` rows instead of ``n T``.

For ``T = 1`` both are the dense block ``(A^T A / n) (x) (B^T B)``.

Patches are cut by slicing the padded (and, for ``lhs_dilation``,
interior-padded) input once per kernel tap, so they are exact in every
precision and cost only memory traffic.

Example:

  >>> import jax, jax.numpy as jnp
  >>> from jax import lax
  >>> from ngdjax._src.optim import kfac_conv
  >>> x = jnp.ones((2, 6, 6, 3))                       # NHWC
  >>> w = jnp.ones((3, 3, 3, 8))                       # HWIO
  >>> spec = kfac_conv.conv_spec(x.shape, w.shape, (2, 2), "SAME",
  ...                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  >>> kfac_conv.patches(spec, x, bias=True).shape       # (n, T, G, a)
  (2, 9, 1, 28)
  >>> kfac_conv.kernel_to_matrices(spec, w, jnp.zeros(8)).shape
  (1, 28, 8)
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ngdjax._src.typing import Array

APPROXIMATIONS = ("expand", "reduce")


class SharedFactors(NamedTuple):
  """A weight-sharing layer's factors on a batch.

  Attributes:
    patches: ``(n, T, G, a)`` layer inputs ``a[i, t, g]`` (bias column
      last).
    output_grads: ``(n, c, T, G, b)`` pre-activation gradients of each
      output ``k``.
  """

  patches: Array
  output_grads: Array


class ConvSpec(NamedTuple):
  """A convolution's shapes and ``lax.conv_general_dilated`` parameters.

  Attributes:
    lhs_shape: the input's shape (any batch size), in the layout of
      ``dimension_numbers.lhs_spec``.
    rhs_shape: the kernel's shape, layout ``rhs_spec``.
    window_strides: per spatial dimension.
    padding: explicit ``(low, high)`` per spatial dimension.
    lhs_dilation, rhs_dilation: per spatial dimension.
    dimension_numbers: a ``lax.ConvDimensionNumbers``.
    feature_group_count: ``G``.
  """

  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  window_strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  dimension_numbers: lax.ConvDimensionNumbers
  feature_group_count: int

  @property
  def groups(self) -> int:
    return self.feature_group_count

  @property
  def kernel_spatial(self) -> tuple[int, ...]:
    return tuple(self.rhs_shape[d] for d in self.dimension_numbers.rhs_spec[2:])

  @property
  def in_channels(self) -> int:
    return self.lhs_shape[self.dimension_numbers.lhs_spec[1]]

  @property
  def out_channels(self) -> int:
    return self.rhs_shape[self.dimension_numbers.rhs_spec[0]]

  @property
  def out_spatial(self) -> tuple[int, ...]:
    """Output size per spatial dimension."""
    lhs = self.dimension_numbers.lhs_spec
    out = []
    for j, k in enumerate(self.kernel_spatial):
      size = self.lhs_shape[lhs[2 + j]]
      dilated = (size - 1) * self.lhs_dilation[j] + 1 if size else 0
      padded = dilated + sum(self.padding[j])
      window = (k - 1) * self.rhs_dilation[j] + 1
      out.append(max(0, (padded - window) // self.window_strides[j] + 1))
    return tuple(out)

  @property
  def positions(self) -> int:
    """``T``, the number of output positions per example."""
    return int(np.prod(self.out_spatial))

  def fan_in(self, bias: bool) -> int:
    """``a``: one group's input channels times the kernel taps (+ 1)."""
    return (self.in_channels // self.groups * int(np.prod(self.kernel_spatial))
            + int(bias))

  @property
  def fan_out(self) -> int:
    """``b``: one group's output channels."""
    return self.out_channels // self.groups


def conv_spec(
    lhs_shape,
    rhs_shape,
    window_strides=None,
    padding="VALID",
    *,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
) -> ConvSpec:
  """A ``ConvSpec`` from ``lax.conv_general_dilated``'s arguments.

  Accepts what ``lax.conv_general_dilated`` accepts (padding strings or
  pairs, dimension numbers as strings, a ``ConvDimensionNumbers`` or
  ``None``), and the parameters of a traced ``conv_general_dilated``
  equation (``conv_spec(lhs.shape, rhs.shape, **eqn.params)`` minus
  ``precision`` and ``preferred_element_type``).

  Raises:
    ValueError: ``batch_group_count != 1`` (a gradient-of-conv form, not a
      layer) or inconsistent shapes.
  """
  lhs_shape, rhs_shape = tuple(lhs_shape), tuple(rhs_shape)
  nsp = len(lhs_shape) - 2
  if nsp < 1 or len(rhs_shape) != len(lhs_shape):
    raise ValueError(f"lhs_shape {lhs_shape} and rhs_shape {rhs_shape} are "
                     "not a convolution's")
  if batch_group_count != 1:
    raise ValueError("batch_group_count must be 1 for a convolution layer, "
                     f"got {batch_group_count}")
  dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  strides = tuple(window_strides or (1,) * nsp)
  lhs_dil = tuple(lhs_dilation or (1,) * nsp)
  rhs_dil = tuple(rhs_dilation or (1,) * nsp)
  if isinstance(padding, str):
    in_sp = [(lhs_shape[d] - 1) * s + 1
             for d, s in zip(dn.lhs_spec[2:], lhs_dil, strict=True)]
    k_sp = [(rhs_shape[d] - 1) * s + 1
            for d, s in zip(dn.rhs_spec[2:], rhs_dil, strict=True)]
    padding = lax.padtype_to_pads(in_sp, k_sp, strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  groups = int(feature_group_count)
  c_in = lhs_shape[dn.lhs_spec[1]]
  if c_in % groups or rhs_shape[dn.rhs_spec[0]] % groups or (
      rhs_shape[dn.rhs_spec[1]] * groups != c_in):
    raise ValueError(f"feature_group_count={groups} does not divide the "
                     f"channels of lhs {lhs_shape} and rhs {rhs_shape}")
  return ConvSpec(lhs_shape, rhs_shape, strides, padding, lhs_dil, rhs_dil,
                  dn, groups)


def conv(spec: ConvSpec, x: Array, kernel: Array, bias=None) -> Array:
  """The convolution ``spec`` describes, plus ``bias`` ``(O,)`` on the
  output's feature axis (a reference for tests and examples)."""
  z = lax.conv_general_dilated(
      x, kernel, spec.window_strides, spec.padding,
      lhs_dilation=spec.lhs_dilation, rhs_dilation=spec.rhs_dilation,
      dimension_numbers=spec.dimension_numbers,
      feature_group_count=spec.feature_group_count,
      precision=lax.Precision.HIGHEST)
  if bias is not None:
    shape = [1] * z.ndim
    shape[spec.dimension_numbers.out_spec[1]] = -1
    z = z + bias.reshape(shape)
  return z


def patches(spec: ConvSpec, x: Array, *, bias: bool = False) -> Array:
  """The layer inputs ``a[i, t, g]``: ``(n, T, G, a)``.

  Args:
    spec: the convolution.
    x: its input ``(n, ...)`` in the ``lhs_spec`` layout.
    bias: append the constant 1 (the bias row of ``M_g``).

  Returns:
    ``(n, T, G, a)``: feature index ``(channel within the group, kernel
    tap)`` in row-major order, taps in the kernel's spatial order; ``T``
    row-major over the output's spatial dimensions (``output_rows``).
  """
  dn = spec.dimension_numbers
  h = jnp.transpose(x, dn.lhs_spec)  # (n, C, *spatial)
  n, c = h.shape[:2]
  config = [(0, 0, 0), (0, 0, 0)] + [
      (lo, hi, d - 1) for (lo, hi), d in zip(spec.padding, spec.lhs_dilation,
                                               strict=True)]
  h = lax.pad(h, jnp.zeros((), h.dtype), config)
  out = spec.out_spatial
  taps = []
  for tap in itertools.product(*(range(k) for k in spec.kernel_spatial)):
    start = [t * d for t, d in zip(tap, spec.rhs_dilation, strict=True)]
    limit = [s + (o - 1) * st + 1 for s, o, st in
             zip(start, out, spec.window_strides, strict=True)]
    taps.append(lax.slice(h, (0, 0, *start), (n, c, *limit),
                          (1, 1, *spec.window_strides)))
  p = jnp.stack(taps, axis=2)  # (n, C, K, *out)
  p = p.reshape(n, c, len(taps), -1)
  p = jnp.transpose(p, (0, 3, 1, 2))  # (n, T, C, K)
  g = spec.groups
  p = p.reshape(n, p.shape[1], g, (c // g) * len(taps))
  if bias:
    p = jnp.concatenate([p, jnp.ones(p.shape[:-1] + (1,), p.dtype)], -1)
  return p


def output_rows(spec: ConvSpec, z: Array) -> Array:
  """An output-shaped array ``(n, ...)`` (``out_spec`` layout) as
  ``(n, T, G, b)`` rows: ``z[i, t, g]`` is the group's ``b`` channels at
  position ``t`` (the order of ``patches``)."""
  out_spec = spec.dimension_numbers.out_spec
  h = jnp.transpose(z, (out_spec[0], *out_spec[2:], out_spec[1]))
  return h.reshape(h.shape[0], -1, spec.groups, spec.fan_out)


def kernel_to_matrices(spec: ConvSpec, kernel: Array, bias=None) -> Array:
  """The layer matrices ``M_g``: ``(G, a, b)``, the bias as the last row.

  ``z[i, t, g] = patches(spec, x)[i, t, g] @ M_g`` and ``output_rows(spec,
  conv(spec, x, kernel, bias)) == z``.
  """
  rhs = spec.dimension_numbers.rhs_spec
  w = jnp.transpose(kernel, rhs)  # (O, I, *k)
  g, b = spec.groups, spec.fan_out
  w = w.reshape(g, b, -1)
  m = jnp.swapaxes(w, 1, 2)  # (G, I K, b)
  if bias is not None:
    m = jnp.concatenate([m, bias.reshape(g, 1, b).astype(m.dtype)], axis=1)
  return m


def matrices_to_kernel(spec: ConvSpec, mats: Array, *, bias: bool = False):
  """Inverse of ``kernel_to_matrices``: ``(kernel, bias or None)``."""
  rhs = spec.dimension_numbers.rhs_spec
  g, b = spec.groups, spec.fan_out
  w_rows = mats[:, :-1] if bias else mats
  canon = tuple(spec.rhs_shape[d] for d in rhs)  # (O, I, *k)
  w = jnp.swapaxes(w_rows, 1, 2).reshape(canon)
  kernel = jnp.transpose(w, np.argsort(rhs))
  return kernel, (mats[:, -1].reshape(g * b) if bias else None)


def per_example_grads(a: Array, s: Array) -> Array:
  """``sum_t a[i, t, g] s[i, k, t, g]^T``: ``(n, c, G, a, b)``.

  Args:
    a: ``(n, T, G, a)`` patches.
    s: ``(n, c, T, G, b)`` pre-activation gradients, one row per output
      direction ``k``.
  """
  return jnp.einsum("itga,iktgb->ikgab", a, s)


def _outer(rows: Array) -> Array:
  """``sum_r rows[r]^T rows[r]`` per group: ``(r, G, k) -> (G, k, k)``."""
  return jnp.einsum("rga,rgb->gab", rows, rows)


def factors(a: Array, s: Array, approximation: str = "expand"
            ) -> tuple[Array, Array]:
  """The per-example factor averages ``(A~ (G, a, a), B~ (G, b, b))``.

  The layer's curvature is approximated by ``n A~ (x) B~`` per group
  (module docstring).

  Args:
    a: ``(n, T, G, a)`` patches (``patches``).
    s: ``(n, c, T, G, b)`` pre-activation gradients: for the true Fisher the
      rows ``H_i^{1/2}``-weighted, one sampled row for the Monte Carlo and
      the gradient for the empirical Fisher (``c`` = 1).
    approximation: ``"expand"`` or ``"reduce"``.
  """
  n, t = a.shape[:2]
  if approximation == "expand":
    cov_a = _outer(a.reshape(n * t, *a.shape[2:])) / (n * t)
    cov_b = _outer(s.reshape(-1, *s.shape[3:])) / n
  elif approximation == "reduce":
    cov_a = _outer(jnp.mean(a, axis=1)) / n
    cov_b = _outer(jnp.sum(s, axis=2).reshape(-1, *s.shape[3:])) / n
  else:
    raise ValueError(f"approximation must be one of {APPROXIMATIONS}, got "
                     f"{approximation!r}")
  return cov_a, cov_b


def kronecker_curvature(cov_a: Array, cov_b: Array, n: int) -> Array:
  """The dense ``n A~_g (x) B~_g`` per group, ``(G, a b, a b)`` (rows in
  the row-major order of ``M_g``; for tests and small layers)."""
  return n * jax.vmap(jnp.kron)(cov_a, cov_b)

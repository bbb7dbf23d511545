"""Models as ``init``/``apply`` pairs, with the structure the fast methods use.

Two families (docs/math.md, two-layer net):

* ``two_layer_relu``: the paper's network
  ``f(x) = (1/sqrt(m)) sum_r a_r relu(w_r^T x)``, ``w_r ~ N(0, nu^2 I)``,
  ``a_r ~ Uniform{-1, +1}`` fixed. Only ``W`` (shape ``(m, d)``) is trainable.
* ``mlp``: a fully connected network in the NTK parameterisation.

Both are dense-layer networks, so the Jacobian of every output with respect to
each weight matrix is an outer product. A ``Model`` exposes that structure
through ``layer_factors``: for layer ``l`` it returns ``inputs`` (``(n, a_l)``)
and ``output_grads`` (``(n, c, b_l)``) with

    d u[i, k] / d M_l[a, b] = inputs[i, a] * output_grads[i, k, b],

where ``M_l`` is the layer's weight matrix in ``(fan_in, fan_out)`` layout
(a bias is the last row of ``M_l``, with a constant input column). The
structured Gram, K-FAC's Kronecker factors and the per-layer updates are all
built from these factors without per-example weight gradients.

Models built by ``two_layer_relu`` and ``mlp`` compare and hash by value:
two builds with equal arguments are ``==`` and hash equal, so a jitted
function taking the model as a static argument compiles once for both.

Example:

  >>> import jax, ngdjax
  >>> model = ngdjax.models.two_layer_relu(width=64)
  >>> params = model.init(jax.random.key(0), in_dim=3)
  >>> params["W"].shape
  (64, 3)
  >>> model.apply(params, jax.numpy.ones((5, 3))).shape
  (5, 1)
  >>> model == ngdjax.models.two_layer_relu(width=64)
  True
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngdjax._src import checks, kernels, relu_pattern
from ngdjax._src.keyed import by_value
from ngdjax._src.typing import Array, Params


class LayerFactors(NamedTuple):
  """The outer-product structure of one dense layer's Jacobian.

  Attributes:
    inputs: ``(n, a)`` layer inputs (scaled as they enter the matmul; a
      constant column is appended when the layer has a bias).
    output_grads: ``(n, c, b)`` derivative of output ``k`` of example ``i``
      with respect to the layer's pre-activations.
  """

  inputs: Array
  output_grads: Array


class Model(NamedTuple):
  """A network as pure functions, plus optional structure.

  Attributes:
    init: ``(key, in_dim) -> params``.
    apply: ``(params, x (n, d)) -> (n, out_dim)``; example ``i``'s outputs
      depend on ``x[i]`` only.
    out_dim: number of outputs ``c``.
    name: a short description, used in reports.
    layer_factors: ``(params, x) -> tuple[LayerFactors, ...]`` or ``None``.
    to_layer_matrices: ``params -> tuple of (a_l, b_l) arrays``, the trainable
      parameters rearranged in the ``M_l`` layout of ``layer_factors``.
    from_layer_matrices: the inverse of ``to_layer_matrices``.
    kernel_inf: ``x -> (N, N)`` infinite-width Gram of this model's trainable
      parameters, or ``None``.
    gram_product: ``(params, x, chunk_size) -> (v (n, c) -> G v (n, c))``,
      a matrix-free ``G = J J^T`` product prepared once and applied many
      times (CG's products), or ``None`` (the generic chunked product).
      Like ``layer_factors`` it must agree with ``apply``.

  Equality and hashing are a tuple's, field by field. The functions of a
  model built by ``two_layer_relu`` or ``mlp`` compare by the builder's
  (normalised) arguments, so equal builds are equal models; other
  functions compare by identity.
  """

  init: Callable[[Array, int], Params]
  apply: Callable[[Params, Array], Array]
  out_dim: int
  name: str = "model"
  layer_factors: Callable[[Params, Array], tuple[LayerFactors, ...]] | None = (
      None
  )
  to_layer_matrices: Callable[[Params], tuple[Array, ...]] | None = None
  from_layer_matrices: Callable[[Sequence[Array]], Params] | None = None
  kernel_inf: Callable[[Array], Array] | None = None
  gram_product: Callable[..., Callable[[Array], Array]] | None = None


def _check_width(name: str, value) -> int:
  checks.check_scalar(name, value, positive=True, integer=True)
  return int(value)


# --------------------------------------------------------------------------
# The paper's two-layer ReLU network.
# --------------------------------------------------------------------------


def two_layer_relu(
    width: int, out_dim: int = 1, *, nu: float = 1.0, output_seed: int = 0
) -> Model:
  """The two-layer ReLU network of docs/math.md (two-layer net).

  ``f(x) = (1/sqrt(m)) relu(x W^T) a`` with ``W`` ``(m, d)``, rows
  ``~ N(0, nu^2 I)``, and ``a`` ``(m, c)`` with entries uniform in
  ``{-1, +1}``, fixed. ``a`` is drawn once, when the model is built, from
  ``output_seed``, and lives in the model rather than in the params, so
  every optimizer (and ``ravel_pytree``) sees ``W`` alone; ``init``'s key
  draws ``W``.

  The activation pattern is ``S = 1{x W^T > 0}`` (autodiff's convention for
  ``relu'(0) = 0``; the paper's ``>= 0`` differs on a set of measure zero).

  Args:
    width: number of hidden units ``m``.
    out_dim: number of outputs ``c``.
    nu: standard deviation of the first-layer weights.
    output_seed: seed of the fixed output layer ``a``.

  Returns:
    A ``Model`` with params ``{"W": (m, d)}``, its layer factors
    (``inputs = X``, ``output_grads[i, k, r] = a[r, k] S[i, r] / sqrt(m)``),
    ``kernel_inf = relu_gram_inf`` (``kron`` with ``I_c`` for ``c > 1``)
    and ``gram_product`` from ``S`` kept as bits (``ngdjax._src.
    relu_pattern``: two ``n x m x d`` matmuls per product, not four).
  """
  m = _check_width("width", width)
  c = _check_width("out_dim", out_dim)
  checks.check_scalar("nu", nu, positive=True)
  nu = float(nu)  # so that nu=1 and nu=1.0 build equal models, same name
  a = jnp.asarray(output_layer(m, c, output_seed), dtype=jnp.float32)

  def init(key, in_dim: int) -> Params:
    d = _check_width("in_dim", in_dim)
    dtype = jnp.zeros(()).dtype  # float64 when jax_enable_x64 is set
    return {"W": nu * jax.random.normal(key, (m, d), dtype)}

  def apply(params, x):
    w = params["W"]
    checks.check_features("x", x, w.shape[1], "the model's W takes")
    hidden = jax.nn.relu(x @ w.T)
    return hidden @ a.astype(hidden.dtype) / math.sqrt(m)

  def layer_factors(params, x):
    w = params["W"]
    pattern = (x @ w.T > 0).astype(x.dtype)  # S, (n, m)
    # output_grads[i, k, r] = a[r, k] S[i, r] / sqrt(m).
    grads = pattern[:, None, :] * (a.T.astype(x.dtype) / math.sqrt(m))[None]
    return (LayerFactors(inputs=x, output_grads=grads),)

  def to_layer_matrices(params):
    return (params["W"].T,)

  def from_layer_matrices(mats):
    (mat,) = mats
    return {"W": mat.T}

  def kernel_inf(x):
    g = kernels.relu_gram_inf(x)
    return g if c == 1 else jnp.kron(g, jnp.eye(c, dtype=g.dtype))

  def gram_product(params, x, chunk_size):
    return relu_pattern.gram_product(params, x, a, chunk_size)

  try:
    key = ("two_layer_relu", m, c, nu, operator.index(output_seed))
  except TypeError:  # a seed numpy takes but that is not an integer
    key = None
  return _keyed_model(key, f"two_layer_relu(m={m}, c={c}, nu={nu})", c,
                      init, apply, layer_factors, to_layer_matrices,
                      from_layer_matrices, kernel_inf, gram_product)


def _keyed_model(key, name, out_dim, init, apply, layer_factors,
                 to_layer_matrices, from_layer_matrices, kernel_inf,
                 gram_product=None) -> Model:
  """A ``Model`` whose functions compare and hash by ``key`` (the
  builder's arguments; ``ngdjax._src.keyed``)."""
  return Model(
      out_dim=out_dim,
      name=name,
      **by_value(
          key,
          init=init,
          apply=apply,
          layer_factors=layer_factors,
          to_layer_matrices=to_layer_matrices,
          from_layer_matrices=from_layer_matrices,
          kernel_inf=kernel_inf,
          gram_product=gram_product,
      ),
  )


def output_layer(width: int, out_dim: int = 1, output_seed: int = 0):
  """The fixed output layer ``a`` of ``two_layer_relu``: ``(m, c)`` of +-1.

  Drawn with numpy from ``output_seed`` so that it is a constant of the
  model, not a traced value.
  """
  signs = np.random.default_rng(output_seed).integers(
      0, 2, size=(width, out_dim)
  )
  return 2.0 * signs - 1.0


# --------------------------------------------------------------------------
# Multi-layer perceptron in the NTK parameterisation.
# --------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "erf": jax.scipy.special.erf,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "identity": lambda z: z,
}


class _MLPSpec(NamedTuple):
  """The settings of ``mlp``; its functions are methods of this record."""

  widths: tuple[int, ...]
  c: int
  phi: Callable[[Array], Array]
  w_std: float
  b_std: float | None

  def init(self, key, in_dim: int) -> Params:
    d = _check_width("in_dim", in_dim)
    dtype = jnp.zeros(()).dtype
    sizes = (d, *self.widths, self.c)
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
      kw, kb = jax.random.split(k)
      layer = {"W": jax.random.normal(kw, (fan_in, fan_out), dtype)}
      if self.b_std is not None:
        layer["b"] = jax.random.normal(kb, (fan_out,), dtype)
      params.append(layer)
    return params

  def layer_inputs(self, h):
    scaled = self.w_std * h / math.sqrt(h.shape[-1])
    if self.b_std is not None:
      ones = jnp.full(h.shape[:-1] + (1,), self.b_std, h.dtype)
      scaled = jnp.concatenate([scaled, ones], axis=-1)
    return scaled

  def forward(self, params, x, perturbations=None):
    """Returns outputs and each layer's (scaled) inputs.

    ``perturbations`` are added to the pre-activations; differentiating the
    outputs with respect to them at zero gives the backpropagated
    pre-activation gradients.
    """
    checks.check_features("x", x, params[0]["W"].shape[0],
                          "the model's first layer takes")
    h, inputs = x, []
    for depth, layer in enumerate(params):
      z = self.w_std * h @ layer["W"] / math.sqrt(h.shape[-1])
      if self.b_std is not None:
        z = z + self.b_std * layer["b"]
      inputs.append(self.layer_inputs(h))
      if perturbations is not None:
        z = z + perturbations[depth]
      h = self.phi(z) if depth + 1 < len(params) else z
    return h, inputs

  def apply(self, params, x):
    return self.forward(params, x)[0]

  def layer_factors(self, params, x):
    zeros = [jnp.zeros((x.shape[0], lay["W"].shape[1]), x.dtype)
             for lay in params]
    _, pullback, inputs = jax.vjp(
        lambda eps: self.forward(params, x, eps), zeros, has_aux=True
    )
    # One VJP per output k, with cotangent e_k on every example: since each
    # example's outputs depend on its own row only, this gives per-example
    # pre-activation gradients (n, fan_out) for every layer at once.
    cotangents = jnp.broadcast_to(
        jnp.eye(self.c, dtype=x.dtype)[:, None, :], (self.c, x.shape[0],
                                                     self.c)
    )
    grads = jax.vmap(pullback)(cotangents)[0]  # list of (c, n, fan_out)
    return tuple(
        LayerFactors(inputs=inp, output_grads=jnp.swapaxes(g, 0, 1))
        for inp, g in zip(inputs, grads, strict=True)
    )

  def to_layer_matrices(self, params):
    mats = []
    for layer in params:
      mat = layer["W"]
      if self.b_std is not None:
        mat = jnp.concatenate([mat, layer["b"][None]], axis=0)
      mats.append(mat)
    return tuple(mats)

  def from_layer_matrices(self, mats):
    if self.b_std is not None:
      return [{"W": mat[:-1], "b": mat[-1]} for mat in mats]
    return [{"W": mat} for mat in mats]

  def kernel_inf(self, x):
    g = kernels.relu_ntk_inf(
        x, depth=len(self.widths), w_std=self.w_std, b_std=self.b_std or 0.0
    )
    return g if self.c == 1 else jnp.kron(g, jnp.eye(self.c, dtype=g.dtype))


def mlp(
    widths: Sequence[int],
    out_dim: int = 1,
    *,
    activation: str | Callable[[Array], Array] = "relu",
    w_std: float = 1.0,
    b_std: float | None = 0.1,
) -> Model:
  """A fully connected network in the NTK parameterisation.

  ``z_1 = w_std x W_0 / sqrt(d) + b_std b_0``,
  ``z_{l+1} = w_std phi(z_l) W_l / sqrt(n_l) + b_std b_l``; the output is the
  last ``z`` (linear). All trainable entries are drawn from ``N(0, 1)``, so the
  scale lives in ``w_std`` and ``b_std`` and the infinite-width NTK exists.

  Args:
    widths: hidden layer widths, e.g. ``(512, 512)`` for two hidden layers.
    out_dim: number of outputs ``c``.
    activation: a name in ``ACTIVATIONS`` or a callable.
    w_std: weight scale ``sigma_w``.
    b_std: bias scale ``sigma_b``; ``None`` means no bias parameters.

  Returns:
    A ``Model`` with params ``[{"W": (fan_in, fan_out), "b": (fan_out,)}, ...]``
    and layer factors ``inputs = [w_std h_l / sqrt(n_l), b_std]``,
    ``output_grads = du / dz_{l+1}`` (backpropagated by one VJP per output).
    ``kernel_inf`` is the deep ReLU NTK when ``activation == "relu"``.
  """
  widths = tuple(_check_width("widths", w) for w in checks.check_sequence(
      "widths", widths, example="(512,) or (512, 512)"))
  c = _check_width("out_dim", out_dim)
  checks.check_scalar("w_std", w_std, positive=True)
  w_std = float(w_std)
  if b_std is not None:
    checks.check_scalar("b_std", b_std, nonnegative=True)
    b_std = float(b_std)
  if isinstance(activation, str):
    if activation not in ACTIVATIONS:
      raise ValueError(
          f"activation must be one of {sorted(ACTIVATIONS)} or a callable, "
          f"got {activation!r}"
      )
    act_name, phi = activation, ACTIVATIONS[activation]
  else:
    act_name, phi = getattr(activation, "__name__", "custom"), activation
  spec = _MLPSpec(widths, c, phi, w_std, b_std)
  init, apply = spec.init, spec.apply
  layer_factors = spec.layer_factors
  to_layer_matrices = spec.to_layer_matrices
  from_layer_matrices = spec.from_layer_matrices
  kernel_inf = spec.kernel_inf if act_name == "relu" else None

  key = ("mlp", widths, c, activation, w_std, b_std)
  return _keyed_model(key, f"mlp(widths={list(widths)}, c={c}, {act_name})",
                      c, init, apply, layer_factors, to_layer_matrices,
                      from_layer_matrices, kernel_inf)


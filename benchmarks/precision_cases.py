"""Float32 curvature against float64: the cases the precision policy is held to.

Each case is a model, parameters, inputs and targets; ``quantities`` computes
every curvature result the library returns for it (Gram, Gram-vector
product, one NGD step by Cholesky and by CG, K-FAC full-batch and
mini-batch steps, the infinite-width Gram, a mixed-precision NGD step) at a
dtype and ``precision=``; ``errors`` gives each float32 result's relative
error against the float64 one. ``tests/precision_test.py`` runs these under
emulated TF32/bfloat16 rounding; ``python -m benchmarks.accelerator`` runs
them on a device.

Needs ``jax_enable_x64``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import ngdjax


class Case(NamedTuple):
  name: str
  model: Any  # a Model or apply(params, x)
  params: Any  # float64 pytree
  x: np.ndarray  # float64 (n, ...)
  y: np.ndarray  # float64 (n, c)
  quantities: tuple[str, ...]  # which results apply to this model


ALL = ("gram", "gram_vp", "ngd_cholesky", "ngd_cg", "kfac", "kfac_minibatch",
       "relu_gram_inf", "ngd_mixed")


def _cast(tree, dtype):
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, dtype)
      if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


def _targets(key, n, c):
  return np.asarray(jax.random.normal(key, (n, c), jnp.float64))


def two_layer(n: int = 128, d: int = 8, width: int = 256) -> Case:
  model = ngdjax.two_layer_relu(width=width)
  params = _cast(model.init(jax.random.key(0), in_dim=d), jnp.float64)
  x = ngdjax.normalize_rows(
      jax.random.normal(jax.random.key(1), (n, d), jnp.float64))
  return Case("two-layer", model, params, np.asarray(x),
              _targets(jax.random.key(2), n, 1), ALL)


def mlp(n: int = 128, d: int = 8, widths=(64, 64)) -> Case:
  model = ngdjax.mlp(widths, out_dim=1)
  params = _cast(model.init(jax.random.key(0), in_dim=d), jnp.float64)
  x = jax.random.normal(jax.random.key(1), (n, d), jnp.float64)
  return Case("mlp", model, params, np.asarray(x),
              _targets(jax.random.key(2), n, 1),
              tuple(q for q in ALL if q != "relu_gram_inf"))


def cnn(n: int = 64, side: int = 8, channels: int = 4) -> Case:
  """A small flax CNN (conv, relu, conv, relu, dense) on ``side``^2
  single-channel images."""
  import flax.linen as nn

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(channels, (3, 3))(x))
      x = nn.relu(nn.Conv(channels, (3, 3))(x))
      return nn.Dense(1)(x.reshape(x.shape[0], -1))

  module = CNN()
  x = np.asarray(jax.random.normal(jax.random.key(1), (n, side, side, 1),
                                   jnp.float64))
  params = _cast(module.init(jax.random.key(0), x[:1].astype(np.float32)),
                 jnp.float64)
  return Case("flax-cnn", module.apply, params, x,
              _targets(jax.random.key(2), n, 1),
              ("gram", "gram_vp", "ngd_cholesky", "ngd_cg", "ngd_mixed"))


CASES: dict[str, Callable[[], Case]] = {
    "two-layer": two_layer, "mlp": mlp, "flax-cnn": cnn}


def _step_update(opt, params, x, y) -> jax.Array:
  state = opt.init(params)
  new, _, info = jax.jit(opt.step)(params, state, x, y)
  update = ravel_pytree(new)[0] - ravel_pytree(params)[0]
  return update, info


def quantities(case: Case, dtype, precision: str | None, *,
               damping: float = 1e-3, names=None) -> dict[str, np.ndarray]:
  """Every result of ``case`` (``names``, default all that apply) computed
  in ``dtype`` with ``precision=``; float64 numpy arrays."""
  params, x, y = _cast(case.params, dtype), jnp.asarray(case.x, dtype), \
      jnp.asarray(case.y, dtype)
  model = case.model
  names = case.quantities if names is None else names
  out = {}
  kw = {"precision": precision}
  for name in names:
    if name not in case.quantities:
      continue
    if name == "gram":
      r = jax.jit(lambda p, x: ngdjax.gram(model, p, x, **kw))(params, x)
    elif name == "gram_vp":
      v = jnp.asarray(np.cos(np.arange(x.shape[0] * y.shape[1])), dtype)
      r = jax.jit(lambda p, x, v: ngdjax.gram_vp(model, p, x, v, **kw))(
          params, x, v)
    elif name == "ngd_cholesky":
      r, _ = _step_update(ngdjax.ngd(model, 1.0, damping=damping, **kw),
                          params, x, y)
    elif name == "ngd_cg":
      r, _ = _step_update(ngdjax.ngd(model, 1.0, damping=damping, solver="cg",
                                     cg_tol=1e-10, **kw), params, x, y)
    elif name == "kfac":
      r, _ = _step_update(ngdjax.kfac(model, 1.0, damping=damping, **kw),
                          params, x, y)
    elif name == "kfac_minibatch":
      # inverse="cholesky": the default eigh refresh clamps the factors'
      # small eigenvalues at a dtype-dependent level, so its float32 step
      # differs from float64 by itself (60 % on the MLP, on CPU).
      r, _ = _step_update(ngdjax.kfac(model, 1.0, damping=damping,
                                      factor_decay=0.95,
                                      inverse="cholesky", **kw),
                          params, x, y)
    elif name == "relu_gram_inf":
      r = jax.jit(lambda x: ngdjax.relu_gram_inf(x, **kw))(x)
    elif name == "ngd_mixed":
      mixed = "mixed" if precision in (None, "highest") else precision
      r, _ = _step_update(ngdjax.ngd(model, 1.0, damping=damping,
                                     precision=mixed),
                          params, x, y)
    else:
      raise ValueError(f"unknown quantity {name!r}")
    out[name] = np.asarray(r, np.float64)
  return out


def relative_error(a: np.ndarray, ref: np.ndarray) -> float:
  return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def errors(case: Case, precision: str | None, reference=None, *,
           damping: float = 1e-3, names=None) -> dict[str, float]:
  """Relative error of each float32 result against float64 (``reference``:
  ``quantities(case, float64, "highest")`` when given, to reuse it)."""
  if reference is None:
    reference = quantities(case, jnp.float64, "highest", damping=damping,
                           names=names)
  got = quantities(case, jnp.float32, precision, damping=damping,
                   names=names)
  # The mixed step is held to the exact float64 step.
  return {k: relative_error(v, reference.get(k, reference.get(
      "ngd_cholesky"))) for k, v in got.items()}

"""The digits CNN of ``benchmarks/cnn.py``, and kfac-jax's K-FAC step on it.

    $KFAC_JAX_PYTHON benchmarks/kfac_jax_cnn.py --repeats=5

Prints one JSON object: kfac-jax's K-FAC step and an SGD step on the same
net, in milliseconds (amortised per step over cycles of ``--every`` steps,
median and min over ``--repeats`` cycles), the load average and the
versions. kfac-jax is never an ngdjax dependency: ``cnn.py`` runs this
file with the interpreter of a separate environment that has it.

The net and the data (``cnn_init``, ``cnn_apply``, ``digits_split``) are
defined here with plain ``jax.lax`` so that both scripts use the same ones
(``cnn.py`` imports them); this file imports nothing from ngdjax.

The net: conv 3x3x1x32 (stride 1, "SAME", bias, ReLU), conv 3x3x32x64
(stride 2, "SAME", bias, ReLU), dense 1024 -> 10, on scikit-learn's 8x8
digits (pixels / 16, NHWC), softmax cross-entropy.

kfac-jax's settings: Monte Carlo Fisher (``estimation_mode=
"fisher_gradients"``), running factors (``curvature_ema=0.95``, updated
every step), inverses every ``--every`` steps, fixed learning rate, no
momentum, fixed damping ``lam'`` (its mean convention: ngdjax's ``lam =
n lam'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")


def digits_split(seed: int = 0):
  """``(x_train, y_train, x_test, y_test)``: stratified 80/20 split,
  ``x`` ``(n, 8, 8, 1)`` float32 in ``[0, 1]``, ``y`` integer labels."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  bunch = load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  x_tr, x_te, y_tr, y_te = train_test_split(
      x, bunch.target, test_size=0.2, stratify=bunch.target,
      random_state=seed)
  return x_tr, y_tr, x_te, y_te


def cnn_init(key, dtype=jnp.float32):
  """He-normal kernels, zero biases."""
  k1, k2, k3 = jax.random.split(key, 3)

  def he(k, shape, fan_in):
    return (jax.random.normal(k, shape, dtype)
            * np.sqrt(2.0 / fan_in)).astype(dtype)

  return {
      "conv1": {"w": he(k1, (3, 3, 1, 32), 9), "b": jnp.zeros(32, dtype)},
      "conv2": {"w": he(k2, (3, 3, 32, 64), 288), "b": jnp.zeros(64, dtype)},
      "dense": {"w": he(k3, (1024, 10), 1024) / np.sqrt(2.0),
                "b": jnp.zeros(10, dtype)},
  }


def cnn_apply(params, x):
  """Logits ``(n, 10)`` for images ``(n, 8, 8, 1)``."""
  h = lax.conv_general_dilated(x, params["conv1"]["w"], (1, 1), "SAME",
                               dimension_numbers=DN)
  h = jax.nn.relu(h + params["conv1"]["b"].reshape(1, 1, 1, -1))
  h = lax.conv_general_dilated(h, params["conv2"]["w"], (2, 2), "SAME",
                               dimension_numbers=DN)
  h = jax.nn.relu(h + params["conv2"]["b"].reshape(1, 1, 1, -1))
  h = h.reshape(h.shape[0], -1)
  return h @ params["dense"]["w"] + params["dense"]["b"]


def batches(x, y, batch, seed=0):
  """Endless shuffled mini-batches (each epoch a new permutation)."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(x.shape[0])
    for lo in range(0, x.shape[0] - batch + 1, batch):
      idx = order[lo:lo + batch]
      yield jnp.asarray(x[idx]), jnp.asarray(y[idx])


def alternate(cycles: dict, states: dict, repeats: int) -> dict:
  """Times ``cycles[name](state) -> state`` (one warm-up call each, then
  ``repeats`` calls, the methods alternating so that load from other
  processes affects all alike); seconds per call, per name."""
  times = {name: [] for name in cycles}
  for r in range(repeats + 1):
    for name, run in cycles.items():
      t0 = time.perf_counter()
      states[name] = run(states[name])
      jax.block_until_ready(states[name])
      if r:
        times[name].append(time.perf_counter() - t0)
  return times


def _summary(times, every):
  ms = [1e3 * t / every for t in times]
  return {"median_ms": statistics.median(ms), "min_ms": min(ms)}


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--every", type=int, default=5)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--learning-rate", type=float, default=0.05)
  parser.add_argument("--damping", type=float, default=0.03,
                      help="kfac-jax's (mean-convention) damping lam'")
  args = parser.parse_args(argv)
  import kfac_jax

  x_tr, y_tr, _, _ = digits_split()
  data = batches(x_tr, y_tr, args.batch)
  params = cnn_init(jax.random.key(0))

  def loss_fn(p, batch):
    xb, yb = batch
    logits = cnn_apply(p, xb)
    kfac_jax.register_softmax_cross_entropy_loss(logits, yb)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

  opt = kfac_jax.Optimizer(
      value_and_grad_func=jax.value_and_grad(loss_fn),
      l2_reg=0.0,
      estimation_mode="fisher_gradients",
      curvature_ema=0.95,
      curvature_update_period=1,
      inverse_update_period=args.every,
      multi_device=False,
      num_burnin_steps=0,
  )
  rng = jax.random.key(1)
  sgd_params = jax.tree_util.tree_map(jnp.copy, params)  # kfac-jax donates
  state = opt.init(params, rng, next(data))
  lr = jnp.asarray(args.learning_rate)
  mom = jnp.asarray(0.0)
  damp = jnp.asarray(args.damping)
  counter = {"k": 0}

  def kfac_cycle(carry):
    p, s = carry
    for _ in range(args.every):
      p, s, _ = opt.step(p, s, rng, batch=next(data),
                         global_step_int=counter["k"], learning_rate=lr,
                         momentum=mom, damping=damp)
      counter["k"] += 1
    return p, s

  @jax.jit
  def sgd_step(p, batch):
    g = jax.grad(loss_fn)(p, batch)
    return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)

  def sgd_cycle(p):
    for _ in range(args.every):
      p = sgd_step(p, next(data))
    return p

  times = alternate({"kfac": kfac_cycle, "sgd": sgd_cycle},
                    {"kfac": (params, state),
                     "sgd": sgd_params},
                    args.repeats)
  # which block each layer got (conv layers must be Kronecker-factored)
  blocks = [type(b).__name__ for b in opt._estimator.blocks]  # noqa: SLF001
  print(json.dumps({
      "kfac_jax_step": _summary(times["kfac"], args.every),
      "sgd_step": _summary(times["sgd"], args.every),
      "blocks": blocks,
      "load_average": os.getloadavg(),
      "jax": jax.__version__,
      "kfac_jax": getattr(kfac_jax, "__version__", "?"),
  }))


if __name__ == "__main__":
  main()

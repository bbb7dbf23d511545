"""kfac-jax on ``benchmarks/train.py``'s autoencoder; prints one JSON line.

Run by ``benchmarks/train.py`` with a separate interpreter that has
kfac-jax 0.0.8 and jax 0.9.1 installed (kfac-jax is never a dependency of
ngdjax, and ngdjax is not importable there). Same data, architecture,
initialisation and batches as ``benchmarks/train.py``: both rebuild the
data and initialisation from numpy with the same seed, and the batches are
the index arrays ``benchmarks/train.py`` drew
(``ngdjax.experiment.epoch_batches``) and saved with ``np.save`` as one
``(steps, batch)`` array, read from ``--batches``;
kfac-jax's recommended adaptive settings: learning rate, momentum and
damping from the quadratic model (``use_adaptive_*``), Monte Carlo Fisher
(its default ``fisher_gradients`` estimator), factor EMA 0.95, inverses
every 5 steps, initial damping 1 (mean convention), no L2 penalty, no
curvature burn-in.

Loss: kfac-jax's registration ``weight * sum ||u - y||^2 / batch`` with
``weight = 1/2`` is the per-example mean of ``1/2 ||u - y||^2``, the
figure ``benchmarks/train.py`` prints (ngdjax's sum loss over ``n``).

    $KFAC_JAX_PYTHON benchmarks/kfac_jax_train.py --batches ORDER.npy
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as benchmarks/train.py

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_task import apply, digits_01, init_params  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", required=True,
                      help="a .npy (steps, batch) array of example indices")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--initial_damping", type=float, default=1.0)
  args = parser.parse_args()
  x_all = jnp.asarray(digits_01())
  n = x_all.shape[0]

  def loss_fn(params, batch):
    x, y = batch
    u = apply(params, x)
    kfac_jax.register_squared_error_loss(u, y, weight=0.5)
    return 0.5 * jnp.sum((u - y) ** 2) / x.shape[0]

  optimizer = kfac_jax.Optimizer(
      value_and_grad_func=jax.value_and_grad(loss_fn),
      l2_reg=0.0,
      use_adaptive_learning_rate=True,
      use_adaptive_momentum=True,
      use_adaptive_damping=True,
      initial_damping=args.initial_damping,
      curvature_ema=0.95,
      inverse_update_period=5,
      # Its burn-in needs a data iterator; every method starts cold here.
      num_burnin_steps=0,
      multi_device=False,
  )
  params = jax.tree_util.tree_map(jnp.asarray, init_params(args.seed))
  order = np.load(args.batches)
  key = jax.random.key(args.seed)
  first = (x_all[order[0]], x_all[order[0]])
  state = optimizer.init(params, key, first)
  full = jax.jit(lambda p: 0.5 * jnp.sum((apply(p, x_all) - x_all) ** 2) / n)
  initial = float(full(params))
  # Compile outside the clock: one step on a copy, discarded.
  # (kfac-jax donates its arguments: the warm-up gets copies.)
  copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731
  warm = optimizer.step(copy(params), copy(state), key, batch=first,
                        global_step_int=0)
  jax.block_until_ready(warm)
  curve, clock, cpu = [], 0.0, 0.0
  for k, idx in enumerate(order):
    key, sub = jax.random.split(key)
    start, start_cpu = time.perf_counter(), time.process_time()
    params, state, stats = optimizer.step(
        params, state, sub, batch=(x_all[idx], x_all[idx]),
        global_step_int=k)
    jax.block_until_ready(params)
    clock += time.perf_counter() - start
    cpu += time.process_time() - start_cpu
    if (k + 1) % 10 == 0 or k + 1 == len(order):
      curve.append((k + 1, clock, float(full(params)),
                    *(float(stats[name]) for name in
                      ("learning_rate", "momentum", "damping", "rho"))))
  print(json.dumps({
      "method": "kfac_jax", "initial_loss": initial,
      "final_loss": curve[-1][2], "seconds": clock, "cpu_seconds": cpu,
      # (step, seconds, full-data loss, learning rate, momentum, damping,
      #  rho); kfac-jax's damping is in its mean convention.
      "curve": curve,
      "load_average": os.getloadavg(),
      "versions": {"kfac_jax": kfac_jax.__version__,
                   "jax": jax.__version__},
  }))


if __name__ == "__main__":
  main()

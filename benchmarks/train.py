"""Adaptive K-FAC and NGD against Adam, SGD and kfac-jax: loss vs steps/s.

Two tasks, every method from the same initialisation on the same batches:

* ``autoencoder``: the K-FAC paper's kind of benchmark, a tanh autoencoder
  64-128-64-16-64-128-64 (linear output) on the 1797 scikit-learn digits
  scaled to [0, 1], squared error, batch 256, 300 steps. The figure is the
  full-data loss as the per-example mean of ``1/2 ||u - y||^2`` (ngdjax's
  sum loss over ``n``; kfac-jax's ``register_squared_error_loss`` with
  weight 1/2). Methods: ``ngdjax.kfac`` with ``learning_rate``,
  ``momentum`` and ``damping`` all ``"adaptive"`` (Monte Carlo Fisher,
  factor decay 0.95, inverses every 5 steps); ``ngdjax.ngd`` with the same
  three settings (Monte Carlo and empirical Fisher, and the exact Fisher,
  each by CG on the batch, at most 50 iterations); Adam and SGD (mean
  loss; best of a small learning-rate grid, the only methods given a
  grid); kfac-jax 0.0.8 with its adaptive settings (``kfac_jax_train.py``,
  run with ``--kfac_jax_python`` when that interpreter exists); and the
  adaptive K-FAC with ``damping=levenberg_marquardt(init=lam0)`` for
  ``lam0`` = 0.01, 0.1, 1, 10 times the batch size.
* ``classifier``: ``experiments.train``'s digits task (MLP 64-512-10 ReLU,
  batch 64, softmax cross-entropy), 200 steps of K-FAC and NGD with the
  adaptive defaults (no grid), D1's units exactly (``d1_seeds.py``, which
  runs them on several seeds): the test accuracy and the first step at
  which it reaches 97 %.
* ``model_batches``: the milliseconds per step of that NGD with the
  quadratic model on one batch and on two (``model_batches_cost``).

Seconds are training time only (a discarded warm-up step compiles; the
full-data evaluation is off the clock). The machine is shared: the load
average is printed beside every timing, which is one run (no repeats).

    python benchmarks/train.py --out /tmp/ngdjax_train
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# OpenBLAS (numpy's and jaxlib's LAPACK: Cholesky, eigh) runs its own
# threads; on a machine whose cores are busy they spin against the other
# processes and one 129 x 129 eigh takes 90 ms instead of 2 ms. Both sides
# of every comparison (this process and kfac-jax's) get one BLAS thread
# unless the caller set it; XLA's own matmuls keep their thread pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ngdjax.experiment.batching import epoch_batches as batches
from ngdjax.optim import gd, kfac, levenberg_marquardt, ngd, optax_optimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autoencoder_task as task  # noqa: E402
import d1_seeds  # noqa: E402
from autoencoder_task import apply, digits_01  # noqa: E402

# An interpreter with kfac-jax 0.0.8 and jax 0.9.1 (never a dependency).
KFAC_JAX = os.environ.get("KFAC_JAX_PYTHON", "")


def init_params(seed):
  """``autoencoder_task.init_params`` as jax arrays."""
  return jax.tree_util.tree_map(jnp.asarray, task.init_params(seed))


def train(opt, params, x_all, order, evaluate, every=10):
  """Runs ``opt`` on the batches; ``[(step, seconds, metric)]``, info."""
  step = jax.jit(opt.step)
  state = opt.init(params)
  first = x_all[order[0]]
  jax.block_until_ready(step(params, state, first, first))  # compiles
  curve, clock = [(0, 0.0, evaluate(params))], 0.0
  # Flags summed on the device: no host round trip inside the loop.
  rejected = diverged = jnp.zeros((), jnp.int32)
  for k, idx in enumerate(order):
    xb = x_all[idx]
    start = time.perf_counter()
    params, state, info = step(params, state, xb, xb)
    jax.block_until_ready(params)
    clock += time.perf_counter() - start
    rejected = rejected + info.get("step_rejected", 0)
    diverged = diverged + info["diverged"]
    if (k + 1) % every == 0 or k + 1 == len(order):
      curve.append((k + 1, clock, evaluate(params)))
  flags = {"rejected": int(rejected), "diverged": int(diverged),
           "compiles": step._cache_size()}
  return curve, flags


def autoencoder(args):
  x_all = jnp.asarray(digits_01())
  n = x_all.shape[0]
  order = batches(n, args.batch, args.steps, args.seed)
  params0 = init_params(args.seed)
  full = jax.jit(lambda p: 0.5 * jnp.sum((apply(p, x_all) - x_all) ** 2) / n)

  def evaluate(p):
    return float(full(p))

  example = x_all[:args.batch]
  adaptive = dict(learning_rate="adaptive", momentum="adaptive")

  def kfac_opt(damping="adaptive", model_batches=1):
    return kfac(apply, **adaptive, damping=damping, fisher="monte_carlo",
                factor_decay=0.95, inverse_every=5, example_inputs=example,
                model_batches=model_batches)

  def ngd_opt(fisher, model_batches=1):
    two = (dict(model_batches=2, example_inputs=example)
           if model_batches == 2 else {})
    return ngd(apply, **adaptive, damping="adaptive", fisher=fisher,
               solver="cg", cg_maxiter=50, cg_tol=1e-4, **two)

  runs = {"kfac": kfac_opt, "ngd_monte_carlo": lambda: ngd_opt("monte_carlo"),
          "ngd_empirical": lambda: ngd_opt("empirical"),
          "ngd_true_cg": lambda: ngd_opt("true")}
  # The quadratic model on the current and the previous batch.
  for fisher in ("monte_carlo", "empirical", "true"):
    runs[f"ngd2_{fisher}"] = lambda f=fisher: ngd_opt(f, model_batches=2)
  runs["kfac2"] = lambda: kfac_opt(model_batches=2)
  for lr in args.adam_lrs:
    runs[f"adam_{lr:g}"] = lambda lr=lr: optax_optimizer(apply,
                                                         optax.adam(lr))
  for lr in args.sgd_lrs:  # on the mean loss: the sum loss at lr / batch
    runs[f"sgd_{lr:g}"] = lambda lr=lr: gd(apply, lr / args.batch)
  if args.lm_sweep:
    for mult in (0.01, 0.1, 1.0, 10.0):
      lam0 = mult * args.batch
      runs[f"kfac_lm_{mult:g}n"] = lambda lam0=lam0: kfac_opt(
          levenberg_marquardt(init=lam0))
  results = {}
  for name, make in runs.items():
    if args.only and not any(name.startswith(o) for o in args.only):
      continue
    curve, flags = train(make(), params0, x_all, order, evaluate)
    results[name] = {"curve": curve, "final_loss": curve[-1][2],
                     "seconds": curve[-1][1], "initial_loss": curve[0][2],
                     "max_loss": max(c[2] for c in curve), **flags,
                     "load_average": os.getloadavg()}
    _print_row(name, results[name])
  r = None
  if args.kfac_jax_python and os.path.exists(args.kfac_jax_python):
    r = _kfac_jax_run(args, order)
    if r is not None:
      curve = [(0, 0.0, r["initial_loss"])] + [tuple(c[:3])
                                               for c in r["curve"]]
      results["kfac_jax"] = {"curve": curve, "final_loss": r["final_loss"],
                             "seconds": r["seconds"],
                             "initial_loss": r["initial_loss"],
                             "max_loss": max(c[2] for c in curve),
                             "load_average": r["load_average"]}
      _print_row("kfac_jax", results["kfac_jax"])
  return results


def _kfac_jax_run(args, order):
  """One kfac-jax run in its own interpreter on the batches ``order``
  (handed over in a file: ngdjax is not importable there); its JSON line,
  or None."""
  here = os.path.dirname(os.path.abspath(__file__))
  path = os.path.join(args.out, "autoencoder_batches.npy")
  np.save(path, np.stack(order))
  out = subprocess.run(
      [args.kfac_jax_python, os.path.join(here, "kfac_jax_train.py"),
       "--batches", path, "--seed", str(args.seed)],
      capture_output=True, text=True, check=False)
  if out.returncode != 0:
    print("kfac-jax run failed:", out.stderr[-2000:], file=sys.stderr)
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def wall_time(args):
  """The issue's adaptive K-FAC call against kfac-jax, interleaved.

  ``args.repeats`` rounds, each one 300-step run of ``ngdjax.kfac(apply,
  learning_rate="adaptive", momentum="adaptive", damping="adaptive",
  fisher="monte_carlo", factor_decay=0.95, inverse_every=5,
  example_inputs=x)`` (one compiled step for all rounds, fresh state) then
  one of kfac-jax (its own interpreter). Both loops block on the params
  after every step and time only the steps; wall seconds and the process's
  CPU seconds (all threads) are reported, medians over the rounds, with
  the load average of each round.
  """
  x_all = jnp.asarray(digits_01())
  n = x_all.shape[0]
  order = batches(n, args.batch, args.steps, args.seed)
  params0 = init_params(args.seed)
  full = jax.jit(lambda p: 0.5 * jnp.sum((apply(p, x_all) - x_all) ** 2) / n)
  opt = kfac(apply, learning_rate="adaptive", momentum="adaptive",
             damping="adaptive", fisher="monte_carlo", factor_decay=0.95,
             inverse_every=5, example_inputs=x_all[:args.batch])
  step = jax.jit(opt.step)
  first = x_all[order[0]]
  jax.block_until_ready(step(params0, opt.init(params0), first, first))
  rounds = {"ngdjax": [], "kfac_jax": []}
  for _ in range(args.repeats):
    params, state = params0, opt.init(params0)
    clock = cpu = 0.0
    for idx in order:
      xb = x_all[idx]
      start, start_cpu = time.perf_counter(), time.process_time()
      params, state, _ = step(params, state, xb, xb)
      jax.block_until_ready(params)
      clock += time.perf_counter() - start
      cpu += time.process_time() - start_cpu
    rounds["ngdjax"].append({"seconds": clock, "cpu_seconds": cpu,
                             "final_loss": float(full(params)),
                             "load_average": os.getloadavg()})
    if args.kfac_jax_python and os.path.exists(args.kfac_jax_python):
      r = _kfac_jax_run(args, order)
      if r is not None:
        rounds["kfac_jax"].append({k: r[k] for k in (
            "seconds", "cpu_seconds", "final_loss", "load_average")})
  out = {"compiles": step._cache_size(), "rounds": rounds}
  for name, rs in rounds.items():
    if not rs:
      continue
    out[name] = {k: float(np.median([r[k] for r in rs]))
                 for k in ("seconds", "cpu_seconds", "final_loss")}
    loads = "; ".join(", ".join(f"{v:.1f}" for v in r["load_average"])
                      for r in rs)
    print(f"wall time {name:8s} median {out[name]['seconds']:6.2f} s wall, "
          f"{out[name]['cpu_seconds']:6.2f} s CPU, final "
          f"{out[name]['final_loss']:.4f} ({len(rs)} rounds; seconds "
          + ", ".join(f"{r['seconds']:.2f}" for r in rs)
          + f"; load {loads})", flush=True)
  if rounds["kfac_jax"]:
    ours, theirs = out["ngdjax"], out["kfac_jax"]
    print(f"ngdjax / kfac-jax: {ours['seconds'] / theirs['seconds']:.2f} x "
          f"wall, {ours['cpu_seconds'] / theirs['cpu_seconds']:.2f} x CPU; "
          f"ngdjax compiled its step {out['compiles']} time(s)", flush=True)
  return out


def _print_row(name, r):
  load = ", ".join(f"{v:.1f}" for v in r["load_average"])
  extra = ""
  if "rejected" in r:
    extra = f"  rejected {r['rejected']:3d}  diverged {r['diverged']:3d}"
  print(f"{name:22s} final {r['final_loss']:.4f}  max {r['max_loss']:.4f}"
        f"  {r['seconds']:7.2f} s{extra}  load {load}", flush=True)


def classifier(args):
  """D1's task exactly (``d1_seeds.run``: its data, split, initialisation
  and batches): K-FAC and NGD with the adaptive defaults, no grid."""
  results = {}
  for name in ("kfac", "ngd"):
    r = d1_seeds.run(args.seed, name, steps=args.classifier_steps)
    results[name] = {"curve": r["curve"],
                     "final_accuracy": r["final_test_accuracy"],
                     "steps_to_97": r["steps_to_target"],
                     "seconds_to_97": r["seconds_to_target"],
                     "load_average": r["load_average"]}
    print("classifier " + d1_seeds.row(args.seed, name, r), flush=True)
  return results


def statistics_cost(args, repeats=5, steps=20):
  """Milliseconds per step of the autoencoder: SGD, and K-FAC (Monte Carlo,
  fixed step) with statistics every step or never (only at step 0), no
  inverse refresh after step 0; and the adaptive K-FAC of ``autoencoder``.

  Median over ``repeats`` blocks of ``steps`` steps, all in this process.
  """
  x_all = jnp.asarray(digits_01())
  order = batches(x_all.shape[0], args.batch, steps + 1, args.seed)
  params = init_params(args.seed)
  example = x_all[:args.batch]
  never = 10 ** 9

  def kfac_fixed(every):
    return kfac(apply, 0.1, damping=float(args.batch), fisher="monte_carlo",
                factor_decay=0.95, inverse_every=never,
                statistics_every=every, example_inputs=example)

  makers = {
      "sgd": lambda: gd(apply, 0.1 / args.batch),
      "kfac_statistics_every_step": lambda: kfac_fixed(1),
      "kfac_no_statistics": lambda: kfac_fixed(never),
      "kfac_adaptive (inverses every 5)": lambda: kfac(
          apply, fisher="monte_carlo", factor_decay=0.95, inverse_every=5,
          example_inputs=example),
  }
  out = {}
  for name, make in makers.items():
    opt = make()
    step = jax.jit(opt.step)
    p, state = params, opt.init(params)
    xb = x_all[order[0]]
    p, state, _ = jax.block_until_ready(step(p, state, xb, xb))  # step 0
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for idx in order[1:]:
        xb = x_all[idx]
        p, state, _ = step(p, state, xb, xb)
      jax.block_until_ready(p)
      times.append(1e3 * (time.perf_counter() - start) / steps)
    out[name] = {"ms_per_step": float(np.median(times)),
                 "ms_min": float(np.min(times)),
                 "load_average": os.getloadavg()}
  for name, r in out.items():
    ratio = r["ms_per_step"] / out["sgd"]["ms_per_step"]
    print(f"{name:34s} {r['ms_per_step']:8.2f} ms/step (min "
          f"{r['ms_min']:.2f}) = {ratio:5.1f} x SGD  load "
          + ", ".join(f"{v:.1f}" for v in r["load_average"]), flush=True)
  return out


def model_batches_cost(args, repeats=5, steps=20):
  """Milliseconds per step of D1's adaptive NGD (MLP 64-512-10, batch 64,
  exact Fisher by Cholesky): the quadratic model on one batch and on two.

  The rounds alternate between the two optimizers (median of ``repeats``
  blocks of ``steps`` steps, one process). Beside them is a FLOP model of
  what the second batch adds, in forward-pass units of ``2 n P`` flops
  (``P`` weights): a linearisation (a forward pass and two JVPs, 3 units)
  and a forward pass at the new params (1 unit).
  """
  config = d1_seeds.settings.get_config("digits")
  ds = d1_seeds.exp.load(config)
  n = int(config.batch_size)
  x_all = jnp.asarray(ds.x_train)
  labels = jnp.asarray(ds.labels_train)
  model = d1_seeds.exp.models.mlp((512,), out_dim=10, activation="relu")
  params0 = model.init(jax.random.key(args.seed), x_all.shape[1])
  order = batches(x_all.shape[0], n, steps + 1, args.seed)
  example = x_all[:n]
  steppers = {}
  for count in (1, 2):
    extra = (dict(model_batches=2, example_inputs=example)
             if count == 2 else {})
    opt = ngd(model, loss="softmax_cross_entropy", **extra)
    step = jax.jit(opt.step)
    p, state, _ = jax.block_until_ready(step(
        params0, opt.init(params0), x_all[order[0]], labels[order[0]]))
    steppers[count] = [step, p, state, []]
  for _ in range(repeats):
    for entry in steppers.values():
      step, p, state, times = entry
      start = time.perf_counter()
      for idx in order[1:]:
        p, state, _ = step(p, state, x_all[idx], labels[idx])
      jax.block_until_ready(p)
      times.append(1e3 * (time.perf_counter() - start) / steps)
      entry[1], entry[2] = p, state
  weights = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(
      params0))
  extra_flops = 4 * 2 * n * weights
  out = {}
  for count, (_, _, _, times) in steppers.items():
    out[count] = {"ms_per_step": float(np.median(times)),
                  "ms_min": float(np.min(times))}
  ratio = out[2]["ms_per_step"] / out[1]["ms_per_step"]
  load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
  print(f"NGD, model on 1 batch  {out[1]['ms_per_step']:7.2f} ms/step "
        f"(min {out[1]['ms_min']:.2f})\n"
        f"NGD, model on 2 batches {out[2]['ms_per_step']:7.2f} ms/step "
        f"(min {out[2]['ms_min']:.2f}) = {ratio:.2f} x; the second batch's "
        f"FLOP model {extra_flops / 1e6:.1f} MFLOP (4 forward passes of "
        f"{n} x {weights} weights)  load {load}", flush=True)
  out["ratio"] = ratio
  out["extra_mflop"] = extra_flops / 1e6
  return out


def plot(results, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, r in results.items():
    if name.startswith(("adam_", "sgd_")) and not r.get("best"):
      continue
    if not np.isfinite(r["final_loss"]):
      continue  # diverged: listed in the table only
    steps, secs, loss = zip(*r["curve"], strict=True)
    axes[0].plot(steps, loss, label=name)
    axes[1].plot(secs, loss, label=name)
  for ax, xlabel in zip(axes, ("step", "seconds"), strict=True):
    ax.set_yscale("log")
    ax.set_ylim(0.05, 20.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("full-data loss (mean 1/2||u-y||^2)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("tanh autoencoder on digits, batch 256")
  fig.tight_layout()
  path = os.path.join(out, "autoencoder.png")
  fig.savefig(path, dpi=120)
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="/tmp/ngdjax_train")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--adam_lrs", type=float, nargs="*",
                 default=[1e-3, 3e-3, 1e-2])
  p.add_argument("--sgd_lrs", type=float, nargs="*",
                 default=[0.003, 0.01, 0.03])
  p.add_argument("--no_lm_sweep", dest="lm_sweep", action="store_false")
  p.add_argument("--only", nargs="*", default=None,
                 help="run only the autoencoder methods with these prefixes")
  p.add_argument("--tasks", nargs="*",
                 default=["autoencoder", "classifier", "statistics",
                          "walltime", "model_batches"])
  p.add_argument("--classifier_steps", type=int, default=200)
  p.add_argument("--repeats", type=int, default=3,
                 help="interleaved rounds of the walltime task")
  p.add_argument("--kfac_jax_python", default=KFAC_JAX)
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"load {os.getloadavg()}")
  out = {}
  if "autoencoder" in args.tasks:
    res = autoencoder(args)
    for prefix in ("adam_", "sgd_"):
      group = {k: v for k, v in res.items() if k.startswith(prefix)}
      if group:
        best = min(group, key=lambda k: group[k]["final_loss"])
        res[best]["best"] = True
        print(f"best {prefix[:-1]}: {best}")
    out["autoencoder"] = res
    print("figure:", plot(res, args.out))
  if "classifier" in args.tasks:
    out["classifier"] = classifier(args)
  if "walltime" in args.tasks:
    out["walltime"] = wall_time(args)
  if "statistics" in args.tasks:
    out["statistics"] = statistics_cost(args)
  if "model_batches" in args.tasks:
    out["model_batches"] = model_batches_cost(args)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
  main()

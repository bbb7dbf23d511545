"""K-FAC on a small CNN: one step against SGD and kfac-jax, and training.

    python benchmarks/cnn.py                 # step times + kfac-jax
    python benchmarks/cnn.py --train         # also test accuracy vs steps
    python benchmarks/cnn.py --quick         # tiny run: checks it works

The net and data (``kfac_jax_cnn.py``): conv 3x3x1x32 (stride 1) and conv
3x3x32x64 (stride 2), "SAME", biases, ReLU, dense 1024 -> 10, on
scikit-learn's 8x8 digits, batch 256, softmax cross-entropy. ngdjax's
K-FAC: Monte Carlo Fisher, running factors (``factor_decay=0.95``, updated
every step), inverses every 5 steps (``--every``), ``inverse="cholesky"``
(kfac-jax's default refresh; ``"eigh"`` also timed), the conv layers on
their Kronecker-factored blocks (``weight_sharing="expand"``). kfac-jax
0.0.8 runs the same net in its own interpreter (``--kfac-jax-python``,
default: the ``KFAC_JAX_PYTHON`` environment variable; skipped when
unset) through ``kfac_jax_cnn.py``, before and after ngdjax's timings.

Timing: amortised time per step over cycles of ``--every`` steps (one
inverse refresh per cycle), after one warm-up cycle (compilation excluded),
median and min over ``--repeats`` cycles, methods alternating within the
process. Ratios within one process are the robust figures; the kfac-jax
ratio compares two processes run one after the other on a shared
machine, so the load average is printed with every figure.

FLOP model (multiply-add = 2; n = 256, conv2 T = 16 positions, a = 289,
dense a = 1025): forward + backward ``~6 n sum_l T_l a_l b_l`` = 0.16
GFLOP (SGD); K-FAC adds one backward pass for the sampled labels
(~0.05 GFLOP), the factor products ``2 n sum_l T_l (a_l^2 + b_l^2)`` =
0.90 GFLOP (0.54 of it the dense layer's 1025 x 1025 input factor), the
preconditioning ``2 sum_l a_l b_l (a_l + b_l)`` = 0.07 GFLOP, and per
refresh ``sum 7/3 (a^3 + b^3)`` (Cholesky and inverse) = 2.6 GFLOP, 0.5
per step amortised: K-FAC / SGD ~ 9 by flops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kfac_jax_cnn as net  # noqa: E402  (the shared net and data)

import ngdjax  # noqa: E402

# An interpreter with kfac-jax 0.0.8 and jax 0.9.1 (never a dependency).
KFAC_JAX_PYTHON = os.environ.get("KFAC_JAX_PYTHON", "")


def make_kfac(x_example, *, learning_rate, damping, every,
              inverse="cholesky", weight_sharing="expand"):
  """ngdjax's Monte Carlo K-FAC for the CNN (``damping`` in the sum
  convention: kfac-jax's ``lam'`` times the batch size)."""
  return ngdjax.kfac(
      net.cnn_apply, learning_rate, damping=damping,
      loss="softmax_cross_entropy", fisher="monte_carlo", factor_decay=0.95,
      inverse_every=every, inverse=inverse, weight_sharing=weight_sharing,
      example_inputs=x_example, key=jax.random.key(1))


def _sum_loss(p, x, y):
  logp = jax.nn.log_softmax(net.cnn_apply(p, x))
  return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1))


def time_steps(args, data, params):
  """Per-step milliseconds (median, min) of SGD and the K-FAC variants."""
  xb, _ = next(data)
  batch = xb.shape[0]
  lam = args.damping * batch
  lr = args.learning_rate

  @jax.jit
  def sgd_step(p, x, y):
    g = jax.grad(_sum_loss)(p, x, y)
    return jax.tree_util.tree_map(lambda a, b: a - lr / batch * b, p, g)

  def sgd_cycle(p):
    for _ in range(args.every):
      p = sgd_step(p, *next(data))
    return p

  cycles, states = {"sgd": sgd_cycle}, {"sgd": params}
  for inverse in ("cholesky", "eigh"):
    opt = make_kfac(xb, learning_rate=lr, damping=lam, every=args.every,
                    inverse=inverse)
    step = jax.jit(opt.step)

    def cycle(carry, step=step):
      p, s = carry
      for _ in range(args.every):
        p, s, _ = step(p, s, *next(data))
      return p, s

    cycles[f"kfac_{inverse}"] = cycle
    states[f"kfac_{inverse}"] = (params, opt.init(params))
  times = net.alternate(cycles, states, args.repeats)
  return {name: net._summary(t, args.every) for name, t in times.items()}


def run_kfac_jax(args):
  """kfac-jax's figures from its own interpreter, or None."""
  if not (args.kfac_jax_python and os.path.exists(args.kfac_jax_python)):
    return None
  cmd = [args.kfac_jax_python, str(Path(__file__).with_name(
      "kfac_jax_cnn.py")), f"--repeats={args.repeats}",
         f"--every={args.every}", f"--batch={args.batch}",
         f"--learning-rate={args.learning_rate}",
         f"--damping={args.damping}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    print("kfac-jax run failed:\n" + out.stderr[-2000:])
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def train(args, x_tr, y_tr, x_te, y_te):
  """K-FAC training: test accuracy every ``--eval-every`` steps."""
  data = net.batches(x_tr, y_tr, args.batch, seed=1)
  params = net.cnn_init(jax.random.key(0))
  opt = make_kfac(x_tr[:args.batch], learning_rate=args.learning_rate,
                  damping=args.damping * args.batch, every=args.every)
  step = jax.jit(opt.step)
  state = opt.init(params)
  accuracy = jax.jit(lambda p, x, y: jnp.mean(
      jnp.argmax(net.cnn_apply(p, x), 1) == y))
  curve = []
  for k in range(1, args.train_steps + 1):
    params, state, info = step(params, state, *next(data))
    if k % args.eval_every == 0 or k == args.train_steps:
      acc = float(accuracy(params, jnp.asarray(x_te), jnp.asarray(y_te)))
      curve.append({"step": k, "loss": float(info["loss"]) / args.batch,
                    "test_accuracy": acc})
      print(f"  step {k:4d}  batch loss/n {curve[-1]['loss']:.4f}  "
            f"test accuracy {acc:.4f}")
  return curve


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--every", type=int, default=5)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--learning-rate", type=float, default=0.05)
  parser.add_argument("--damping", type=float, default=0.03,
                      help="kfac-jax's mean-convention damping lam' "
                           "(ngdjax gets batch * lam')")
  parser.add_argument("--train", action="store_true")
  parser.add_argument("--train-steps", type=int, default=200)
  parser.add_argument("--eval-every", type=int, default=10)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-kfac-jax", action="store_true")
  parser.add_argument("--no-timing", action="store_true")
  parser.add_argument("--kfac-jax-python", default=KFAC_JAX_PYTHON)
  parser.add_argument("--json", default="", help="write the figures here")
  args = parser.parse_args(argv)
  if args.quick:
    args.repeats, args.train_steps, args.eval_every = 1, 4, 2
    args.no_kfac_jax = True

  x_tr, y_tr, x_te, y_te = net.digits_split()
  params = net.cnn_init(jax.random.key(0))
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch "
        f"{args.batch}, inverses every {args.every} steps")
  print(ngdjax.describe_structure(net.cnn_apply, params, x_tr[:2]))
  figures = {}
  if not args.no_timing:
    if not args.no_kfac_jax:
      figures["kfac_jax_before"] = run_kfac_jax(args)
    figures["load_average_before"] = os.getloadavg()
    figures["ngdjax"] = time_steps(
        args, net.batches(x_tr, y_tr, args.batch), params)
    figures["load_average_after"] = os.getloadavg()
    if not args.no_kfac_jax:
      figures["kfac_jax_after"] = run_kfac_jax(args)
    _print_times(figures)
  if args.train:
    figures["training"] = train(args, x_tr, y_tr, x_te, y_te)
  if args.json:
    Path(args.json).write_text(json.dumps(figures, indent=1))


def _print_times(figures):
  ours = figures["ngdjax"]
  sgd = ours["sgd"]["median_ms"]
  print(f"load average {figures['load_average_before']} -> "
        f"{figures['load_average_after']}")
  for name, t in ours.items():
    print(f"  ngdjax {name:14s} {t['median_ms']:9.1f} ms (min "
          f"{t['min_ms']:.1f})  {t['median_ms'] / sgd:6.1f}x SGD")
  runs = [figures.get(k) for k in ("kfac_jax_before", "kfac_jax_after")]
  runs = [r for r in runs if r]
  if not runs:
    return
  kj = float(np.median([r["kfac_jax_step"]["median_ms"] for r in runs]))
  kj_sgd = float(np.median([r["sgd_step"]["median_ms"] for r in runs]))
  print(f"  kfac-jax {kj:9.1f} ms ({kj / kj_sgd:.1f}x its SGD step, "
        f"{kj_sgd:.1f} ms; loads {[r['load_average'] for r in runs]}; "
        f"blocks {runs[0]['blocks']})")
  for name in ours:
    if name.startswith("kfac"):
      rel = ours[name]["median_ms"] / kj
      print(f"  ngdjax {name} / kfac-jax: {rel:.2f}x (medians; "
            f"SGD-normalised {rel * kj_sgd / sgd:.2f}x)")


if __name__ == "__main__":
  main()

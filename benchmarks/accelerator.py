"""One command for a device: float32 correctness, matmul rates, step timings.

    python -m benchmarks.accelerator [--quick] [--output=table.md]

On whatever device JAX sees (GPU, TPU or CPU), writes a markdown report:

1. Correctness: each float32 curvature result of ``benchmarks/
   precision_cases.py`` (Gram, Gram-vector product, NGD by Cholesky and CG,
   K-FAC full-batch and mini-batch, the infinite-width Gram, NGD with
   ``precision="mixed"``) computed on the device, against float64 computed
   on the CPU, beside the CPU's own float32 error. PASS when the device's
   error under the default policy is within 10x of the CPU's.
2. The device's float32 matmul rate at each precision (``highest``,
   ``default``), measured on square products.
3. Gram, NGD and K-FAC step times at each precision, beside a floor: the
   step's matmul FLOPs (a model printed with the table) divided by the
   measured rate at that precision; peak device memory where the backend
   reports it (``memory_stats``).

``--quick`` runs tiny sizes (CI, on CPU, well under a minute). Timings are
the median and minimum of repeated runs after one compile, with the load
average printed (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import ngdjax  # noqa: E402
from benchmarks import precision_cases as pc  # noqa: E402

PRECISIONS = ("highest", "default")
FACTOR = 10.0  # PASS: device error within this factor of the CPU's.


def _time(fn, *args, repeats: int) -> tuple[float, float]:
  """(median, min) seconds of ``fn(*args)`` after a compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times), min(times)


def _peak_bytes(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats:
    return None
  return stats.get("peak_bytes_in_use")


def correctness(cases, device) -> list[str]:
  """Markdown rows: per case and quantity, CPU and device float32 errors."""
  cpu = jax.devices("cpu")[0]
  rows = ["| case | quantity | CPU f32 error | device error (default "
          "policy) | ratio | device, precision=\"default\" | check |",
          "|---|---|---|---|---|---|---|"]
  for case in cases:
    with jax.default_device(cpu):
      ref = pc.quantities(case, jnp.float64, "highest")
      cpu_err = pc.errors(case, None, ref)
    if device.platform == "cpu":
      # Same device: the same numbers (CPU dots are exact at any precision).
      dev_err, fast_err = cpu_err, {}
    else:
      with jax.default_device(device):
        dev_err = pc.errors(case, None, ref)
        fast_err = pc.errors(case, "default", ref,
                             names=[q for q in case.quantities
                                    if q != "ngd_mixed"])
    for q, e_cpu in cpu_err.items():
      e_dev = dev_err[q]
      base = cpu_err["ngd_cholesky"] if q == "ngd_mixed" else e_cpu
      ok = e_dev <= FACTOR * max(base, 1e-7)
      fast = fast_err.get(q)
      rows.append(
          f"| {case.name} | {q} | {e_cpu:.1e} | {e_dev:.1e} | "
          f"{e_dev / base:.1f} | {'' if fast is None else f'{fast:.1e}'} | "
          f"{'PASS' if ok else 'FAIL'} |")
  return rows


def matmul_rates(size: int, repeats: int) -> dict[str, float]:
  """float32 FLOP/s of a ``size``-square matmul at each precision."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  rates = {}
  for prec in PRECISIONS:
    f = jax.jit(lambda a, prec=prec: jnp.matmul(a, a, precision=prec))
    _, best = _time(f, a, repeats=repeats)
    rates[prec] = 2 * size**3 / best
  return rates


def _mlp_problem(n: int, d: int, widths):
  model = ngdjax.mlp(widths, out_dim=1)
  params = jax.tree_util.tree_map(
      lambda a: a.astype(jnp.float32),
      model.init(jax.random.key(0), in_dim=d))
  x = jax.random.normal(jax.random.key(1), (n, d), jnp.float32)
  y = jax.random.normal(jax.random.key(2), (n, 1), jnp.float32)
  return model, params, x, y


def gram_flops(n: int, d: int, widths) -> float:
  """Matmul FLOPs of the structured Gram of an MLP: per layer ``l`` with
  input width ``a_l`` (+1 for the bias) and output width ``b_l``, the two
  ``n x n`` products ``A A^T`` and ``B B^T``: ``2 n^2 (a_l + b_l)``."""
  dims = (d, *widths, 1)
  return sum(2.0 * n * n * (a + 1 + b) for a, b in zip(dims, dims[1:],
                                                       strict=False))


def steps(n: int, d: int, widths, rates, repeats: int, device):
  """Markdown rows: Gram, NGD and K-FAC step times per precision."""
  model, params, x, y = _mlp_problem(n, d, widths)
  g_flops = gram_flops(n, d, widths)
  chol_flops = n**3 / 3.0
  p = sum(a.size for a in jax.tree_util.tree_leaves(params))
  rows = [f"MLP widths {widths}, n = {n}, d = {d}, p = {p}; floor = "
          f"matmul FLOPs / the measured rate (Gram {g_flops:.2e}, NGD "
          f"+ Cholesky n^3/3 = {chol_flops:.2e}; K-FAC's floor is not "
          "modelled).", "",
          "| computation | precision | median s | min s | floor s | "
          "min / floor | process peak device MB after its first run | "
          "load avg |",
          "|---|---|---|---|---|---|---|---|"]
  jobs = []
  for prec in PRECISIONS:
    jobs.append(("gram", prec, jax.jit(
        lambda p, x, prec=prec: ngdjax.gram(model, p, x, precision=prec)),
        (params, x), g_flops / rates[prec]))
  for prec in (*PRECISIONS, "mixed"):
    opt = ngdjax.ngd(model, 1.0, damping=1e-3, precision=prec)
    rate = rates["default" if prec == "mixed" else prec]
    jobs.append(("ngd step", prec, jax.jit(opt.step),
                 (params, opt.init(params), x, y),
                 (g_flops + chol_flops) / rate))
  for prec in PRECISIONS:
    opt = ngdjax.kfac(model, 1.0, damping=1e-3, precision=prec)
    jobs.append(("kfac step", prec, jax.jit(opt.step),
                 (params, opt.init(params), x, y), None))
  with jax.default_device(device):
    # Compile everything, then time the jobs in turn, round after round, so
    # that load changes hit every precision alike.
    jobs = [(*job[:3], jax.device_put(job[3], device), job[4])
            for job in jobs]
    peaks = []
    for _, _, fn, args, _ in jobs:
      jax.block_until_ready(fn(*args))
      peaks.append(_peak_bytes(device))
    times = [[] for _ in jobs]
    loads = []
    for _ in range(repeats):
      for i, (_, _, fn, args, _) in enumerate(jobs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[i].append(time.perf_counter() - t)
      loads.append(os.getloadavg()[0])
    load = statistics.median(loads)
    for (name, prec, _, _, floor), ts, peak in zip(jobs, times, peaks,
                                                   strict=True):
      med, best = statistics.median(ts), min(ts)
      floor_s = "" if floor is None else f"{floor:.2e}"
      ratio = "" if floor is None else f"{best / floor:.1f}"
      mb = "n/a" if peak is None else f"{peak / 2**20:.0f}"
      rows.append(f"| {name} | {prec} | {med:.2e} | {best:.2e} | "
                  f"{floor_s} | {ratio} | {mb} | {load:.1f} |")
  return rows


def report(quick: bool, n: int | None = None, width: int | None = None,
           correct: bool = True) -> str:
  device = jax.devices()[0]
  if quick:
    cases = [pc.two_layer(n=16, d=4, width=32)._replace(
        quantities=("gram", "ngd_cholesky", "ngd_mixed"))]
    size, repeats, bench = 256, 3, [64, 4, (32, 32)]
  else:
    cases = [pc.two_layer(), pc.mlp(), pc.cnn()]
    size, repeats, bench = 4096, 10, [4096, 32, (1024, 1024)]
  if n is not None:
    bench[0] = n
  if width is not None:
    bench[2] = (width, width)
  cases = cases if correct else []
  lines = [f"# ngdjax on {device.platform}: {device.device_kind}",
           "", f"jax {jax.__version__}, {'quick' if quick else 'full'} "
           f"mode, load average {os.getloadavg()[0]:.1f} at start.", "",
           "## float32 against float64 (damping 1e-3)", ""]
  lines += correctness(cases, device)
  rates = matmul_rates(size, repeats)
  lines += ["", f"## float32 matmul rate ({size}^2, best of {repeats})", "",
            "| precision | TFLOP/s |", "|---|---|"]
  lines += [f"| {k} | {v / 1e12:.3f} |" for k, v in rates.items()]
  lines += ["", "## Steps", ""]
  lines += steps(*bench, rates, repeats, device)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes (CI on CPU)")
  parser.add_argument("--output", default=None,
                      help="write the markdown table here too")
  parser.add_argument("--n", type=int, default=None,
                      help="examples in the step benchmarks")
  parser.add_argument("--width", type=int, default=None,
                      help="hidden width (two layers) of the step MLP")
  parser.add_argument("--no-correctness", action="store_true",
                      help="timings only")
  args = parser.parse_args(argv)
  text = report(args.quick, args.n, args.width, not args.no_correctness)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text)
  return 1 if "| FAIL |" in text else 0


if __name__ == "__main__":
  sys.exit(main())

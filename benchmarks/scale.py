"""Gram and NGD-step time and peak memory versus n, and versus device count.

    python benchmarks/scale.py                 # README table (CPU: ~3 min)
    python benchmarks/scale.py --quick         # tiny sizes: checks it runs
    python benchmarks/scale.py --single 32768  # one step: time, FLOP floor,
                                               # peak RSS
    python benchmarks/scale.py --single 131072 --solver cg \
        --preconditioner nystrom --cg-tol 1e-3 --chunk 2048
    python benchmarks/scale.py --cg-131072     # the same, plus one Gram-vector
                                               # product timed alone
    python benchmarks/scale.py --digits --cg-tol 1e-4
                                               # true-Fisher CG vs Cholesky
    /usr/bin/time -v python benchmarks/scale.py --memory-check
                                               # n=4096, d=256, m=16384 in one
                                               # process (within 8 GB)

Every configuration runs in a child process so that its peak memory is its
own: the child reports its peak resident set size (``getrusage``; on an
accelerator also the device's ``peak_bytes_in_use``). Times are wall-clock
of the compiled call (``lower().compile()`` first, timed apart). Ratios are
against the smallest n in the same run. The device-count sweep simulates
devices on the CPU with ``--xla_force_host_platform_device_count``: the
devices share the machine's cores, so it measures the overhead of sharding,
not a speed-up.

The same script runs as is on a GPU machine (``jax[cuda]`` installed): the
child processes see the accelerator, and the device sweep is skipped there
unless several devices are present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_CHILD_FLAG = "--child"


def _matmul_rate(size: int = 4096, repeats: int = 3) -> float:
  """float32 matmul rate of this process (flop/s), best of ``repeats``."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  mm = jax.jit(lambda u: u @ u.T)
  jax.block_until_ready(mm(a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * size**3 / best


def step_flops(n: int, d: int, m: int, solver: str = "cholesky") -> float:
  """The Cholesky NGD step's floor: symmetric Gram ``n^2 (d + m)``,
  Cholesky ``n^3 / 3``, forward and VJP ``4 n m d`` (two-layer net)."""
  if solver != "cholesky":
    return 4 * n * m * d
  return n * n * (d + m) + n**3 / 3 + 4 * n * m * d


def cg_step_flops(n: int, d: int, m: int, products: int, rank: int | None,
                  rounds: int = 4) -> float:
  """The preconditioned-CG step's floor (two-layer net, ``two_layer_relu``'s
  pattern product, ``c = 1``): the gradient's forward pass and VJP ``4 n m
  d``; the activation pattern ``2 n m d``; ``products + 1`` products (CG's
  and the true residual's) at ``4 n m d``; and, with ``rank`` columns, the
  Nystrom build: a forward pass for the diagonal and one per round ``2 n m
  d`` each, the columns ``2 n k (d + m)``, and ``~5 n k^2`` for the
  rounds' updates and the basis (``nystrom.rp_cholesky``, ``from_factor``).
  The preconditioner's ``4 n k`` per iteration is left out."""
  nmd = n * m * d
  flops = 4 * nmd + 2 * nmd + (products + 1) * 4 * nmd
  if rank:
    flops += (rounds + 1) * 2 * nmd + 2 * n * rank * (d + m) + 5 * n * rank**2
  return flops


def _child(spec: dict) -> dict:
  """Runs one configuration and returns its times (called in a subprocess).

  Each function is compiled ahead (``lower().compile()``, timed apart) and
  run ``repeats`` times; the best run is reported. With ``floor`` the
  float32 matmul rate is measured after the step, in the same process, and
  the step's FLOP floor (``step_flops``) is converted to seconds.
  """
  import jax
  import jax.numpy as jnp

  import ngdjax

  n, d, m = spec["n"], spec["d"], spec["m"]
  chunk = spec.get("chunk")
  repeats = spec.get("repeats", 1)
  solver = spec.get("solver", "cholesky")
  out = {"devices": jax.device_count(), "platform": jax.default_backend()}
  model = ngdjax.two_layer_relu(m)
  params = model.init(jax.random.key(0), d)
  x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (n, d)))
  y = jnp.sin(3 * x[:, 0])
  mesh = ngdjax.parallel.data_mesh() if spec.get("mesh") else None

  def timed(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    best, res = float("inf"), None
    for _ in range(repeats):
      t0 = time.perf_counter()
      res = jax.block_until_ready(compiled(*args))
      best = min(best, time.perf_counter() - t0)
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None)
    return res, best, compile_s, temp

  if spec.get("gram", True):
    gram_fn = lambda p, x: ngdjax.gram(  # noqa: E731
        model, p, x, method=spec.get("method", "auto"), chunk_size=chunk,
        mesh=mesh)
    _, out["gram_s"], out["gram_compile_s"], _ = timed(gram_fn, params, x)
  if spec.get("time_product"):
    # One matrix-free G v (what each CG iteration costs), timed alone: the
    # model's product (the activation pattern computed once, as bits; the
    # pattern's pass timed apart and subtracted) and the generic one
    # (gram_vp: the forward pass re-run for the VJP and for the JVP).
    vec = jnp.ones((n, 1), jnp.float32)
    from ngdjax._src import relu_pattern

    def pattern(p, x):
      xb = ngdjax._src.linalg.pad_rows(x, chunk)[0]
      return relu_pattern.packed_pattern(xb.reshape(-1, chunk, d), p["W"])

    _, out["pattern_s"], _, _ = timed(pattern, params, x)
    prod = lambda p, x, v: model.gram_product(p, x, chunk)(v)  # noqa: E731
    _, with_pattern, _, _ = timed(prod, params, x, vec)
    out["product_s"] = with_pattern - out["pattern_s"]
    generic = lambda p, x, v: ngdjax.gram_vp(  # noqa: E731
        model, p, x, v.reshape(-1), chunk)
    _, out["generic_product_s"], _, _ = timed(generic, params, x, vec)
  if spec.get("time_build"):
    # The Nystrom preconditioner's build alone (as ngd builds it).
    from ngdjax._src import structure
    from ngdjax._src.optim import nystrom

    def build(p, x):
      st = structure.model_structure(model, p, x)
      sketch = nystrom.structured_sketch(st, p, x, chunk_size=chunk)
      diag = sketch.diagonal()
      rank = spec.get("rank") or nystrom.default_rank(*diag.shape)
      f = nystrom.rp_cholesky(sketch.columns, diag, rank, jax.random.key(0))
      return nystrom.from_factor(f).eigvals

    _, out["build_s"], _, _ = timed(build, params, x)
  if spec.get("step", True):
    extra = {}
    if spec.get("preconditioner"):
      extra = {"preconditioner": spec["preconditioner"],
               "preconditioner_rank": spec.get("rank")}
    opt = ngdjax.ngd(model, learning_rate=1.0, damping=1e-3, chunk_size=chunk,
                     solver=solver, mesh=mesh, cg_tol=spec.get("cg_tol", 1e-6),
                     cg_maxiter=spec.get("cg_maxiter"), **extra)
    (_, _, info), out["step_s"], out["step_compile_s"], temp = timed(
        opt.step, params, opt.init(params), x, y)
    out["step_temp_bytes_per_entry"] = None if temp is None else temp / n**2
    out["step_fallback"] = int(info.get("cholesky_failed", 0))
    if "cg_iterations" in info:
      out["cg_iterations"] = int(info["cg_iterations"])
      out["cg_residual"] = float(info["cg_residual"])
      out["cg_failed"] = int(info["cg_failed"])
    for k in ("preconditioner_rank", "preconditioner_seconds"):
      if k in info:
        out[k] = float(info[k])
    if spec.get("floor"):
      # Measured after the step, so that its arrays do not add to the
      # step's peak memory.
      out["matmul_gflops"] = _matmul_rate() / 1e9
      flops = step_flops(n, d, m, solver)
      if solver == "cg" and "cg_iterations" in out:
        flops = cg_step_flops(n, d, m, out["cg_iterations"],
                              out.get("preconditioner_rank"))
      floor = flops / (out["matmul_gflops"] * 1e9)
      out["floor_s"] = floor
      out["step / floor"] = out["step_s"] / floor
  if "matmul_gflops" not in out and spec.get("time_product"):
    out["matmul_gflops"] = _matmul_rate() / 1e9
  stats = jax.devices()[0].memory_stats() or {}
  out["device_peak_bytes"] = stats.get("peak_bytes_in_use")
  return out


def digits_true_fisher(rank: int | None, cg_tol: float,
                       repeats: int = 7) -> dict:
  """The N = n c true-Fisher step of cross-entropy NGD on digits (MLP
  64-512-10, batch 256, float32, damping 0.3 as ``benchmarks/steps.py``):
  exact Cholesky against Nystrom-preconditioned CG; median step times in
  one process (interleaved), and the relative difference of the updates.
  ``rank=None``: the library's default rank."""
  import jax
  import jax.numpy as jnp

  import ngdjax

  ds = ngdjax.data.digits(classes=tuple(range(10)), targets="onehot",
                          test_fraction=0.2, seed=0)
  x_all = jnp.asarray(ds.x_train * np.sqrt(ds.x_train.shape[1]),
                      jnp.float32)
  idx = np.random.default_rng(0).choice(x_all.shape[0], 256, replace=False)
  x, labels = x_all[idx], jnp.asarray(ds.labels_train)[idx]
  model = ngdjax.mlp((512,), out_dim=10, w_std=float(np.sqrt(2.0)))
  params = jax.tree_util.tree_map(lambda t: t.astype(jnp.float32),
                                  model.init(jax.random.key(0), 64))
  kw = {"loss": "softmax_cross_entropy", "damping": 0.3}
  opts = {"cholesky": ngdjax.ngd(model, 0.5, **kw),
          "cg_nystrom": ngdjax.ngd(model, 0.5, solver="cg",
                                   preconditioner="nystrom",
                                   preconditioner_rank=rank, cg_tol=cg_tol,
                                   **kw),
          "cg_plain": ngdjax.ngd(model, 0.5, solver="cg", cg_tol=cg_tol,
                                 **kw)}
  out, updates = {"load_before": os.getloadavg()}, {}
  steps, times = {}, {name: [] for name in opts}
  for name, opt in opts.items():
    step = jax.jit(opt.step)
    state = opt.init(params)
    steps[name] = (step, state)
    res = jax.block_until_ready(step(params, state, x, labels))
    updates[name] = jax.flatten_util.ravel_pytree(jax.tree_util.tree_map(
        lambda a, b: a - b, res[0], params))[0]
    for k in ("cg_iterations", "cg_residual", "preconditioner_rank",
              "preconditioner_seconds"):
      if k in res[2]:
        out[f"{name}_{k}"] = float(res[2][k])
  # Interleaved, so that a change of the machine's load hits all three.
  for _ in range(repeats):
    for name, (step, state) in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, state, x, labels))
      times[name].append(time.perf_counter() - t0)
  for name in opts:
    out[name + "_s"] = float(np.median(times[name]))
  ref = updates["cholesky"]
  for name in ("cg_nystrom", "cg_plain"):
    out[name + "_update_rel_diff"] = float(
        jnp.linalg.norm(updates[name] - ref) / jnp.linalg.norm(ref))
    out[name + " / cholesky"] = out[name + "_s"] / out["cholesky_s"]
  out["load_after"] = os.getloadavg()
  return out


def _run_child(spec: dict, devices: int | None = None) -> dict:
  env = dict(os.environ)
  # The child imports this checkout's ngdjax, not an installed copy.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(
      [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  if devices:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}")
    env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.Popen(
      [sys.executable, __file__, _CHILD_FLAG, json.dumps(spec)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
  stdout, stderr = proc.communicate()
  if proc.returncode != 0:
    return {"error": stderr.strip().splitlines()[-1] if stderr else "failed"}
  result = json.loads(stdout.strip().splitlines()[-1])
  result["peak_rss_gb"] = result.pop("peak_rss_kb") / 2**20
  result["bytes_per_entry"] = result["peak_rss_gb"] * 2**30 / spec["n"]**2
  return result


def _print_table(title, rows, keys):
  print(f"\n{title}")
  print("  " + "".join(f"{k:>14}" for k in keys))
  for row in rows:
    cells = []
    for k in keys:
      v = row.get(k)
      if isinstance(v, float):
        cells.append(f"{v:>14.3f}")
      else:
        cells.append(f"{'-' if v is None else v!s:>14}")
    print("  " + "".join(cells))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--memory-check", action="store_true")
  parser.add_argument("--d", type=int, default=256)
  parser.add_argument("--m", type=int, default=16384)
  parser.add_argument("--ns", default="512,1024,2048,4096")
  parser.add_argument("--chunk", type=int, default=1024)
  parser.add_argument("--budget-gb", type=float, default=24.0)
  parser.add_argument(
      "--single", type=int, default=None, metavar="N",
      help="one step at n=N (d, m, --chunk, --solver) in a child process: "
      "compile and step time, the FLOP floor from a matmul rate measured "
      "in the same process, peak RSS and bytes per Gram entry")
  parser.add_argument("--solver", default="cholesky")
  parser.add_argument("--cg-maxiter", type=int, default=None)
  parser.add_argument("--cg-tol", type=float, default=1e-6)
  parser.add_argument("--preconditioner", default=None,
                      help="with --solver cg: 'nystrom'")
  parser.add_argument("--rank", type=int, default=None,
                      help="the preconditioner's rank (pivot examples; "
                      "default: the library's rule)")
  parser.add_argument("--with-gram", action="store_true",
                      help="with --single: also time the Gram alone")
  parser.add_argument("--cg-131072", action="store_true",
                      help="the preconditioned-CG step at n=131072 (cg-tol "
                      "1e-3, chunk 2048, --rank), with one product timed")
  parser.add_argument(
      "--split", type=int, default=None, metavar="N",
      help="at n=N (d, m, --chunk, --rank): the Nystrom build and one "
      "Gram-vector product timed alone, and the matmul rate (no CG step)")
  parser.add_argument("--digits", action="store_true",
                      help="the digits true-Fisher step: Cholesky against "
                      "Nystrom-preconditioned CG (--rank, --cg-tol)")
  args = parser.parse_args()

  if args.digits:
    print(json.dumps(digits_true_fisher(args.rank, args.cg_tol), indent=1))
    return
  if args.memory_check:
    spec = {"n": 4096, "d": 256, "m": 16384}
    print(json.dumps(_child(spec)))
    return
  if args.split:
    spec = {"n": args.split, "d": args.d, "m": args.m, "chunk": args.chunk,
            "rank": args.rank, "gram": False, "step": False,
            "time_product": True, "time_build": True,
            "load_before": os.getloadavg()}
    res = _run_child(spec)
    res.update(spec, load_after=os.getloadavg())
    print(json.dumps(res, indent=1))
    return
  if args.cg_131072:
    args.single, args.solver, args.preconditioner = 131072, "cg", "nystrom"
    args.cg_tol, args.chunk = 1e-3, 2048
  if args.single:
    spec = {"n": args.single, "d": args.d, "m": args.m, "chunk": args.chunk,
            "solver": args.solver, "floor": True, "gram": args.with_gram,
            "cg_maxiter": args.cg_maxiter, "cg_tol": args.cg_tol,
            "preconditioner": args.preconditioner, "rank": args.rank,
            "time_product": args.cg_131072,
            "load_before": os.getloadavg()}
    res = _run_child(spec)
    res.update(spec)
    res["load_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    return

  if args.quick:
    d, m, ns, chunk = 8, 64, [32, 64], 16
  else:
    d, m, ns, chunk = args.d, args.m, [int(v) for v in args.ns.split(",")], \
        args.chunk
  rows = []
  for n in ns:
    for c in (None, chunk):
      res = _run_child({"n": n, "d": d, "m": m, "chunk": c})
      res.update(n=n, chunk=c or "-")
      rows.append(res)
  base = {r["chunk"]: r for r in rows if r["n"] == ns[0]}
  for r in rows:
    b = base[r["chunk"]]
    if "gram_s" in r and "gram_s" in b:
      r["gram / n0"] = r["gram_s"] / b["gram_s"]
      r["step / n0"] = r["step_s"] / b["step_s"]
  _print_table(
      f"two-layer ReLU d={d} m={m}: structured Gram and one NGD step "
      "(Cholesky), each in its own process",
      rows, ["n", "chunk", "gram_s", "gram / n0", "step_s", "step / n0",
             "peak_rss_gb", "error"])

  # Largest n within the budget. The n x n terms (the Gram, its Cholesky
  # factor, workspace) dominate at large n; their bytes per entry are
  # measured at a small width, where the n-linear factor memory is small,
  # from the slope of peak memory against n^2.
  big_ns = [256, 512] if args.quick else [4096, 8192, 16384]
  quad = []
  for n in big_ns:
    res = _run_child({"n": n, "d": 64, "m": 1024, "chunk": chunk})
    res.update(n=n, chunk=chunk, m=1024, d=64)
    quad.append(res)
  _print_table(f"n x n memory (d=64, m=1024, chunk={chunk})", quad,
               ["n", "gram_s", "step_s", "peak_rss_gb", "error"])
  ok = [r for r in quad if "peak_rss_gb" in r]
  if len(ok) >= 2:
    n_sq = np.array([r["n"] for r in ok], float) ** 2
    mem = np.array([r["peak_rss_gb"] for r in ok]) * 2**30
    slope = (mem[-1] - mem[-2]) / (n_sq[-1] - n_sq[-2])  # bytes per entry
    base_gb = max(r["peak_rss_gb"] for r in rows if r["chunk"] == chunk)
    largest = np.sqrt(max(args.budget_gb - base_gb, 0) * 2**30 / slope)
    print(f"  {slope:.1f} bytes per Gram entry at peak ("
          f"{slope / 4:.1f} float32 n x n buffers live); with chunk={chunk}"
          f" the rest stays below {base_gb:.2f} GB, so the largest n in "
          f"{args.budget_gb:g} GB is about {int(largest):,} (Cholesky "
          "solver; beyond it use solver='cg', which holds no n x n array)")

  if args.quick:
    sweep_n, sweep_m = 32, 64
  else:
    sweep_n, sweep_m = 2048, 4096
  sweep = []
  for devices in (1, 2, 4):
    res = _run_child({"n": sweep_n, "d": d, "m": sweep_m, "mesh": True},
                     devices=devices)
    res.update(simulated_devices=devices)
    sweep.append(res)
  for r in sweep:
    if "gram_s" in r and "gram_s" in sweep[0]:
      r["gram / 1 dev"] = r["gram_s"] / sweep[0]["gram_s"]
      r["step / 1 dev"] = r["step_s"] / sweep[0]["step_s"]
  _print_table(
      f"sharded over simulated CPU devices, n={sweep_n} d={d} m={sweep_m} "
      "(devices share the same cores)",
      sweep, ["simulated_devices", "gram_s", "gram / 1 dev", "step_s",
              "step / 1 dev", "peak_rss_gb", "error"])


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == _CHILD_FLAG:
    import resource

    result = _child(json.loads(sys.argv[2]))
    result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))
  else:
    main()

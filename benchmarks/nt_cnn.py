"""neural-tangents' empirical NTK of the Gram benchmark's CNN.

    $NT_PYTHON benchmarks/nt_cnn.py --n 48 128 1024

Prints one JSON line per (n, implementation): the time of neural-tangents'
``empirical_ntk_fn`` (``trace_axes=()``, so the full ``(n, n, 10, 10)``
kernel, i.e. ``G = J J^T`` of ngdjax up to the order of its entries) on
``n`` digits images, in float32, min and median over ``--repeats`` calls
after a warm-up call (compilation excluded), the first call's time, the
peak resident memory and the load average. ``benchmarks/gram.py --cnn``
runs this file with the interpreter of a separate environment that has
neural-tangents (``NT_PYTHON``; neural-tangents 0.6.5 imports
``jax.core.Jaxpr`` and fails on jax 0.10, so it needs an older jax, e.g.
``pip install neural-tangents jax==0.4.35 jaxlib==0.4.35 tf2jax==0.3.6``)
and prints its figures beside ngdjax's; neural-tangents is never an ngdjax
dependency.

Each case runs in a child process (``--one``) watched for memory: above
``--max-gib`` of resident memory it stops and reports ``"out of memory"``
(the machine is shared), and after ``--timeout`` seconds ``"timeout"``.

The net (``cnn_model``, shared with ``gram.py``, plain ``jax.lax`` so that
both interpreters run it): conv 3x3x1x32 (SAME), conv 3x3x32x64 (stride 2,
SAME), biases, ReLU, dense 1024 -> 10, on 8x8x1 digits (``digits``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp

# neural-tangents' implementations (``nt.NtkImplementation``).
IMPLEMENTATIONS = {1: "jacobian_contraction", 2: "ntk_vector_products",
                   3: "structured_derivatives"}


def cnn_model():
  """``(apply, params)`` of the CNN, float32, fixed random init."""
  dn = ("NHWC", "HWIO", "NHWC")

  def apply(p, x):
    h = jax.lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME",
                                     dimension_numbers=dn)
    h = jax.nn.relu(h + p["b1"])
    h = jax.lax.conv_general_dilated(h, p["k2"], (2, 2), "SAME",
                                     dimension_numbers=dn)
    h = jax.nn.relu(h + p["b2"])
    return h.reshape(h.shape[0], -1) @ p["w"] + p["b"]

  shapes = {"k1": (3, 3, 1, 32), "b1": (32,), "k2": (3, 3, 32, 64),
            "b2": (64,), "w": (4 * 4 * 64, 10), "b": (10,)}
  keys = jax.random.split(jax.random.key(0), len(shapes))
  params = {k: jax.random.normal(key, s) / (s[0] * s[1] if len(s) == 4
                                            else s[0]) ** 0.5
            for key, (k, s) in zip(keys, shapes.items(), strict=True)}
  return apply, params


def digits(n):
  """``(n, 8, 8, 1)`` float32 digits images (tiled; uniform noise without
  scikit-learn)."""
  try:
    from sklearn.datasets import load_digits
    data = load_digits().data / 16.0
  except ImportError:
    data = jax.random.uniform(jax.random.key(3), (1797, 64))
  reps = -(-n // data.shape[0])
  return jnp.asarray(jnp.tile(jnp.asarray(data), (reps, 1))[:n].reshape(
      n, 8, 8, 1), jnp.float32)


def _rss_gib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 2**20
  return 0.0


def _watch(max_gib: float):
  """Stops the process above ``max_gib`` resident memory."""
  while True:
    if _rss_gib() > max_gib:
      print(json.dumps({"error": f"out of memory (> {max_gib} GiB RSS)"}),
            flush=True)
      os._exit(3)
    time.sleep(0.02)


def one(n: int, implementation: int, repeats: int, max_gib: float) -> dict:
  """Times one case in this process."""
  import neural_tangents as nt

  threading.Thread(target=_watch, args=(max_gib,), daemon=True).start()
  apply, params = cnn_model()
  x = digits(n)
  kernel = jax.jit(nt.empirical_ntk_fn(
      apply, trace_axes=(), vmap_axes=0, implementation=implementation))
  start = time.perf_counter()
  k = jax.block_until_ready(kernel(x, None, params))
  first = time.perf_counter() - start
  times, loads = [], []
  for _ in range(repeats):
    loads.append(os.getloadavg())
    start = time.perf_counter()
    jax.block_until_ready(kernel(x, None, params))
    times.append(time.perf_counter() - start)
  return {"n": n, "implementation": IMPLEMENTATIONS[implementation],
          "shape": list(k.shape), "first_s": first, "min_s": min(times),
          "median_s": statistics.median(times), "load_averages": loads,
          "peak_rss_gib": resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 2**20,
          "jax": jax.__version__, "neural_tangents": nt.__version__}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, nargs="+", default=[48, 128, 1024])
  parser.add_argument("--implementations", type=int, nargs="+",
                      default=sorted(IMPLEMENTATIONS))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--max-gib", type=float, default=6.0)
  parser.add_argument("--timeout", type=float, default=900.0)
  parser.add_argument("--one", action="store_true",
                      help="run the first case in this process")
  args = parser.parse_args(argv)
  if args.one:
    print(json.dumps(one(args.n[0], args.implementations[0], args.repeats,
                         args.max_gib)), flush=True)
    return
  for n in args.n:
    for impl in args.implementations:
      cmd = [sys.executable, __file__, "--one", "--n", str(n),
             "--implementations", str(impl), "--repeats", str(args.repeats),
             "--max-gib", str(args.max_gib)]
      try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=args.timeout, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        errors = [ln for ln in out.stderr.splitlines() if "Error" in ln]
        errors.append(f"exit code {out.returncode}")
        result = json.loads(lines[-1]) if lines else {"error": errors[0]}
      except subprocess.TimeoutExpired:
        result = {"error": f"timeout ({args.timeout} s)"}
      result.update(n=n, implementation=IMPLEMENTATIONS[impl])
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

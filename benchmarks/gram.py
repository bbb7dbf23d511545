"""Times every Gram method, as ratios to a matmul-only floor, with FLOP counts.

Usage:
  python benchmarks/gram.py            # the sizes of the README
  python benchmarks/gram.py --quick    # tiny sizes, checks the script runs

The floor for the two-layer net is the three matmuls that any method must do
(``X W^T`` for the activation pattern, ``S S^T`` and ``X X^T``), timed in the
same process on arrays of the same shapes; for the MLP it is one forward pass
plus the per-layer ``A A^T`` and ``B B^T`` matmuls. Every time is the median of
``--repeats`` runs after a warm-up call (compilation excluded), in float32.

"Bring your own model": a flax.linen MLP (3 hidden layers of 512, biases,
n = 256, d = 64) given as a bare ``module.apply``; its default Gram (dense
layers found automatically) against the structured Gram of ``ngdjax.mlp`` of
the same shape and against ``method="jacobian"`` on the flax model. Skipped
when flax is not installed.

CNN (``--cnn``): conv 3x3x1x32 (SAME), conv 3x3x32x64 (stride 2, SAME), dense
to 10 classes, on 8x8x1 digits, written with ``lax.conv_general_dilated``;
its structured Gram at ``--cnn-n`` examples with ``chunk_size=128`` (the
convolutions in the form ``gram_forms`` picks), against the floor ``2 N^2
p_conv`` flops at the matmul rate measured in the same process (an ``(N',
p_conv) x (p_conv, N')`` product), with the peak resident memory of the
process (``ru_maxrss``, after the Gram and before the rate measurement) and
the load average (the machine is shared: timings are noisy); then
neural-tangents' empirical NTK of the same net at the same ``n``
(``nt_cnn.py``, run with the interpreter ``NT_PYTHON`` of a separate
environment; skipped when unset).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nt_cnn  # noqa: E402  (the CNN, shared with neural-tangents' run)

import ngdjax  # noqa: E402


def _time(fn, *args, repeats=3):
  """Median wall time of ``fn(*args)`` after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)



def _method_rows(model, params, x, methods, flops, repeats):
  """``(method, seconds, flops)`` of ``gram(..., method=m)`` for each m."""
  rows = []
  for method in methods:
    fn = jax.jit(lambda p, x, method=method: ngdjax.gram(model, p, x,
                                                        method=method))
    rows.append(
        (method, _time(fn, params, x, repeats=repeats), flops[method])
    )
  return rows

def _sphere(key, n, d):
  return ngdjax.normalize_rows(jax.random.normal(key, (n, d)))


def two_layer(n, d, m, methods, repeats):
  key_x, key_w, key_s = jax.random.split(jax.random.key(0), 3)
  x = _sphere(key_x, n, d)
  model = ngdjax.two_layer_relu(m)
  params = model.init(key_w, d)
  s = (jax.random.uniform(key_s, (n, m)) > 0.5).astype(jnp.float32)

  floor = _time(
      jax.jit(lambda x, w, s: ((x @ w.T) > 0, s @ s.T, x @ x.T)),
      x, params["W"], s, repeats=repeats,
  )
  flops = {
      "floor": 2 * n * m * d + 2 * n * n * m + 2 * n * n * d,
      "structured": 2 * n * m * d + 2 * n * n * m + 2 * n * n * d,
      "jacobian": 2 * n * m * d + 2 * n * n * m * d,
      "products": 2 * n * n * m * d * 2,
  }
  rows = [("matmul floor", floor, flops["floor"]),
          *_method_rows(model, params, x, methods, flops, repeats)]
  return f"two-layer ReLU n={n} d={d} m={m}", floor, rows


def mlp(n, d, width, depth, methods, repeats):
  key_x, key_w = jax.random.split(jax.random.key(1))
  x = _sphere(key_x, n, d)
  model = ngdjax.mlp([width] * depth)
  params = model.init(key_w, d)
  sizes = [d] + [width] * depth + [1]
  p = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
  fwd = sum(2 * n * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
  factor_grams = sum(2 * n * n * (a + 1 + b)
                     for a, b in zip(sizes[:-1], sizes[1:], strict=True))

  def floor_fn(params, x):
    acts = [model.apply(params, x)]
    h = x
    for layer in params[:-1]:
      h = jax.nn.relu(h @ layer["W"])
      acts.append(h @ h.T)
    return acts

  floor = _time(jax.jit(floor_fn), params, x, repeats=repeats)
  flops = {
      "structured": 3 * fwd + factor_grams,
      "jacobian": 3 * fwd + 2 * n * n * p,
      "products": 2 * 3 * fwd * n + 2 * n * n * p,
  }
  rows = [("forward + factor-Gram floor", floor, fwd + factor_grams),
          *_method_rows(model, params, x, methods, flops, repeats)]
  return f"MLP n={n} d={d} width={width} hidden layers={depth}", floor, rows


def flax_mlp(n, d, width, depth, repeats):
  """Default Gram of a flax MLP vs ngdjax.mlp's structured Gram (ratios)."""
  try:
    import flax.linen as nn
  except ImportError:
    print("\nflax not installed: bring-your-own-model case skipped")
    return None

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      for _ in range(depth):
        x = nn.relu(nn.Dense(width)(x))
      return nn.Dense(1)(x)

  key_x, key_w = jax.random.split(jax.random.key(2))
  x = _sphere(key_x, n, d)
  flax_params = MLP().init(key_w, x)
  model = ngdjax.mlp([width] * depth)
  params = model.init(key_w, d)
  fns = {
      "ngdjax.mlp structured": (jax.jit(lambda p, x: ngdjax.gram(
          model, p, x, method="structured")), params),
      "flax default (auto)": (jax.jit(lambda p, x: ngdjax.gram(
          MLP().apply, p, x)), flax_params),
      "flax jacobian": (jax.jit(lambda p, x: ngdjax.gram(
          MLP().apply, p, x, method="jacobian")), flax_params),
  }
  times = {k: _time(fn, p, x, repeats=repeats) for k, (fn, p) in fns.items()}
  print(f"\nflax.linen MLP n={n} d={d} width={width} hidden layers={depth}")
  base = times["ngdjax.mlp structured"]
  for k, t in times.items():
    print(f"  {k:<28}{t:>10.4f} s {t / base:>8.2f} x ngdjax.mlp")
  auto = times["flax default (auto)"]
  print(f"  flax auto / ngdjax.mlp structured = {auto / base:.2f} "
        "(target <= 1.5)")
  print(f"  flax jacobian / flax auto = {times['flax jacobian'] / auto:.1f} "
        "(target >= 50)")
  return times


def cnn(n, chunk, repeats):
  """The CNN's structured Gram against ``2 N^2 p_conv`` at the matmul rate."""
  from ngdjax._src import gram_forms, structure

  apply, params = nt_cnn.cnn_model()
  x = nt_cnn.digits(n)
  c = 10
  big = n * c
  p_conv = sum(params[k].size for k in ("k1", "b1", "k2", "b2"))
  st = structure.model_structure(apply, params, x)
  forms = gram_forms.choose_forms(st, chunk, c)
  print(f"\nCNN on digits n={n} (N={big}), chunk_size={chunk}, float32; "
        f"p_conv={p_conv}; forms per layer: "
        f"{[(lay.kind, f) for lay, f in zip(st.layers, forms, strict=True)]}")
  fn = jax.jit(lambda p, x: ngdjax.gram(apply, p, x, chunk_size=chunk))
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  start = time.perf_counter()
  jax.block_until_ready(fn(params, x))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    load = os.getloadavg()
    start = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    times.append(time.perf_counter() - start)
    print(f"  gram run: {times[-1]:.2f} s (load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f})")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  # The matmul rate on a product of the same inner size (the floor's).
  m = min(big, 2048)
  a = jax.random.normal(jax.random.key(5), (m, p_conv), jnp.float32)
  mm = jax.jit(lambda a: a @ a.T)
  t_mm = min(_time(mm, a, repeats=1) for _ in range(max(repeats, 2)))
  rate = 2 * m * m * p_conv / t_mm
  floor = 2 * big * big * p_conv / rate
  best = min(times)
  print(f"  first call (compile + run) {first:.1f} s; min {best:.2f} s, "
        f"median {statistics.median(times):.2f} s of {repeats}")
  print(f"  matmul rate {rate / 1e9:.1f} GFLOP/s ({m}x{p_conv} @ its "
        f"transpose, min of runs); 2 N^2 p_conv = "
        f"{2 * big * big * p_conv / 1e12:.2f} TFLOP -> floor {floor:.2f} s")
  print(f"  gram / floor = {best / floor:.2f} (target <= 2)")
  print(f"  peak RSS {rss:.2f} GiB (before the Gram {rss0:.2f} GiB; "
        f"G itself {big * big * 4 / 2**30:.2f} GiB); load average now "
        f"{os.getloadavg()}")
  return best / floor


def neural_tangents(n, repeats):
  """neural-tangents' empirical NTK of the same CNN, in the interpreter
  ``NT_PYTHON`` (``nt_cnn.py``); skipped when unset."""
  python = os.environ.get("NT_PYTHON", "")
  if not python:
    print("  neural-tangents: skipped (set NT_PYTHON, see nt_cnn.py)")
    return
  out = subprocess.run(
      [python, str(Path(__file__).resolve().parent / "nt_cnn.py"), "--n",
       str(n), "--implementations", "1", "2", "--repeats", str(repeats)],
      capture_output=True, text=True, check=False)
  for line in out.stdout.splitlines():
    if line.startswith("{"):
      r = json.loads(line)
      if "error" in r:
        print(f"  neural-tangents {r['implementation']}: {r['error']}")
      else:
        print(f"  neural-tangents {r['implementation']}: min "
              f"{r['min_s']:.2f} s, median {r['median_s']:.2f} s, peak RSS "
              f"{r['peak_rss_gib']:.2f} GiB (jax {r['jax']}, load "
              f"{r['load_averages'][0][0]:.2f})")


def _print(title, floor, rows):
  print(f"\n{title}")
  print(f"  {'method':<28}{'time (s)':>10}{'/ floor':>10}{'GFLOP':>10}")
  for name, t, flops in rows:
    print(f"  {name:<28}{t:>10.4f}{t / floor:>10.2f}{flops / 1e9:>10.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cnn", action="store_true",
                      help="only the CNN Gram (see the module docstring)")
  parser.add_argument("--cnn-n", type=int, default=1024)
  args = parser.parse_args()
  if args.cnn:
    cnn(args.cnn_n, 128, args.repeats)
    neural_tangents(args.cnn_n, args.repeats)
    return
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32")
  all_methods = ["structured", "jacobian", "products"]
  if args.quick:
    _print(*two_layer(64, 8, 128, all_methods, 1))
    _print(*mlp(32, 8, 32, 3, all_methods, 1))
    flax_mlp(32, 8, 32, 3, 1)
    cnn(64, 16, 1)
    return
  flax_mlp(256, 64, 512, 3, args.repeats)
  _print(*two_layer(1024, 128, 4096, all_methods, args.repeats))
  # The dense methods need ~1e13 flops here; only the structured one runs.
  _print(*two_layer(4096, 256, 16384, ["structured"], args.repeats))
  _print(*mlp(256, 128, 512, 3, all_methods, args.repeats))


if __name__ == "__main__":
  main()

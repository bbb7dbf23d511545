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
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import ngdjax


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


def _print(title, floor, rows):
  print(f"\n{title}")
  print(f"  {'method':<28}{'time (s)':>10}{'/ floor':>10}{'GFLOP':>10}")
  for name, t, flops in rows:
    print(f"  {name:<28}{t:>10.4f}{t / floor:>10.2f}{flops / 1e9:>10.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32")
  all_methods = ["structured", "jacobian", "products"]
  if args.quick:
    _print(*two_layer(64, 8, 128, all_methods, 1))
    _print(*mlp(32, 8, 32, 3, all_methods, 1))
    flax_mlp(32, 8, 32, 3, 1)
    return
  flax_mlp(256, 64, 512, 3, args.repeats)
  _print(*two_layer(1024, 128, 4096, all_methods, args.repeats))
  # The dense methods need ~1e13 flops here; only the structured one runs.
  _print(*two_layer(4096, 256, 16384, ["structured"], args.repeats))
  _print(*mlp(256, 128, 512, 3, all_methods, args.repeats))


if __name__ == "__main__":
  main()

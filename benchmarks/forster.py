"""Forster transform: Algorithm 1 (fixed point) against Newton's method.

Prints, for four kinds of data (Gaussian; anisotropic, column scales
spanning 1e4; near-degenerate, half the rows within 1e-3 of a 2-dim
subspace; near-critical, just under 2 n / d rows exactly in a 2-dim
subspace), the iterations, the inner conjugate-gradient products of Newton's
method, the final error, cond(A) and the median wall time of each method,
and the time ratio Newton / Algorithm 1, measured in one process.
Only the jitted iteration is timed (validation, identical for both, is done
once outside the timer); jit compilation is excluded by a warm-up call.

    python benchmarks/forster.py [--n 1000] [--d 20] [--repeats 9]

FLOP model per update (n rows, d columns): Algorithm 1 costs ``~4 n d^2``
(``Z^T Z`` and ``Z T``) plus an ``eigh``; a Newton step costs ``~6 n d^2``
(``x A``, ``Z^T Z``, ``Z V``) plus ``~4 n d^2`` per CG product, plus two
``eigh``. Newton wins when its iteration count falls faster than its
per-iteration cost rises: always in iterations, in time once Algorithm 1
needs many steps (near-critical data: hundreds of steps against 7).
"""

from __future__ import annotations

import argparse
import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

# The implementation module, for its private jitted loop and defaults.
from ngdjax._src import forster as forster_lib  # noqa: E402
from ngdjax.experiment import timing  # noqa: E402

METHODS = ("fixed_point", "newton")
KINDS = ("gaussian", "anisotropic", "near_degenerate", "near_critical")


def make_data(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
  """``(n, d)`` data of one of ``KINDS``."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  if kind == "gaussian":
    return x
  if kind == "anisotropic":
    return x * np.logspace(0, 4, d)  # column scales span 1e4
  if kind == "near_degenerate":
    # Half the rows within 1e-3 of a 2-dimensional subspace.
    basis = rng.standard_normal((2, d))
    half = n // 2
    x[:half] = rng.standard_normal((half, 2)) @ basis
    x[:half] += 1e-3 * rng.standard_normal((half, d))
    return x
  if kind == "near_critical":
    # Just under 2 n / d rows exactly in a 2-dim subspace: the transform
    # exists, but Algorithm 1's linear rate tends to 1 near the threshold.
    count = int(0.96 * 2 * n / d)
    basis = rng.standard_normal((2, d))
    x[:count] = rng.standard_normal((count, 2)) @ basis
    return x
  raise ValueError(f"unknown kind {kind!r}")


def time_methods(xn, tol, max_cond, repeats, max_iters=5000):
  """Median seconds of each method's jitted iteration, and its result.

  The methods are timed alternately, so that load from other processes on
  a shared machine affects both alike.
  """
  runs = {
      m: functools.partial(
          forster_lib._forster_jit, xn, tol, max_cond, jnp.int32(10),
          method=m, max_iters=max_iters,
      )
      for m in METHODS
  }
  results = {m: jax.block_until_ready(run()) for m, run in runs.items()}
  times = timing.interleaved(runs, repeats)
  return {m: (statistics.median(times[m]), results[m]) for m in METHODS}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=1000)
  parser.add_argument("--d", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--tol", type=float, default=1e-10)
  args = parser.parse_args()
  print(
      f"n={args.n} d={args.d} float64 tol={args.tol:g} "
      f"median of {args.repeats} ({jax.devices()[0].platform})"
  )
  header = (
      f"{'data':<16} {'method':<12} {'iters':>5} {'cg':>5} {'error':>9} "
      f"{'cond(A)':>9} {'ms':>8} {'newton/alg1':>11}"
  )
  print(header)
  print("-" * len(header))
  for kind in KINDS:
    x = make_data(kind, args.n, args.d)
    # One validation, as forster() does it, outside the timer.
    forster_lib.forster(x, tol=args.tol, max_iters=5000)
    xn = forster_lib.normalize_rows(jnp.asarray(x))
    tol = jnp.asarray(args.tol)
    max_cond = jnp.asarray(forster_lib._defaults(np.float64)[1])
    rows = time_methods(xn, tol, max_cond, args.repeats)
    ratio = rows["newton"][0] / rows["fixed_point"][0]
    for method, (sec, res) in rows.items():
      assert bool(res.converged), (kind, method, res.reason)
      print(
          f"{kind:<16} {method:<12} {int(res.iterations):>5d} "
          f"{int(res.cg_iterations):>5d} {float(res.error):>9.1e} "
          f"{float(res.cond):>9.2e} {1e3 * sec:>8.2f} "
          + (f"{ratio:>11.2f}" if method == "newton" else f"{'':>11}")
      )


if __name__ == "__main__":
  main()

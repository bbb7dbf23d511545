"""C7: the Forster transform, Algorithm 1 against Newton's method.

``docs/math.md`` ("The Forster transform"): Algorithm 1 of the appendix
(``forster(method="fixed_point")``) converges linearly to radial isotropic
position; Newton's method on Barthe's convex potential (``method="newton"``),
the faster alternative the appendix invites for, converges quadratically and is
invariant under ``x -> x L``.

Measured on each kind of data (``make_data``): the error ``||Z^T Z - (n/d)
I||_F / (n/d)`` after every update (Newton's ``history[0]`` is after its
whitening start), updates to ``tol``, Newton's conjugate-gradient products,
the final error, ``cond(A)`` and the wall time of the jitted iteration
(median of ``repeats`` interleaved calls after a compiling one; reported,
not required: a Newton step costs a few Algorithm 1 steps,
``benchmarks/forster.py``).

Settings and presets: ``configs/forster_convergence.py``; results of earlier
runs: ``docs/results.md``."""

from __future__ import annotations

import functools
import statistics
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import forster_convergence as settings
from experiments import common
from ngdjax import forster
from ngdjax.experiment import plots, timing, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key

METHODS = ("fixed_point", "newton")
KINDS = ("gaussian", "anisotropic", "near_degenerate", "near_critical")
_STYLES = {"fixed_point": ("Algorithm 1 (fixed point)", "C0", "o"),
           "newton": ("Newton (Barthe's potential)", "C3", "s")}


def make_data(kind: str, n: int, d: int, rng: np.random.Generator, *,
              anisotropy: float = 1e4, degenerate_noise: float = 1e-3,
              critical_fraction: float = 0.96) -> np.ndarray:
  """``(n, d)`` standard normal data of one kind of ``KINDS`` (those of
  ``benchmarks/forster.py``; parameters as in
  ``configs/forster_convergence.py``). The near-critical rows in a plane
  are just under the existence threshold ``2 n / d``, where Algorithm 1's
  linear rate tends to 1."""
  x = rng.standard_normal((n, d))
  if kind == "gaussian":
    return x
  if kind == "anisotropic":
    return x * np.logspace(0, np.log10(anisotropy), d)
  if kind == "near_degenerate":
    basis = rng.standard_normal((2, d))
    half = n // 2
    x[:half] = rng.standard_normal((half, 2)) @ basis
    x[:half] += degenerate_noise * rng.standard_normal((half, d))
    return x
  if kind == "near_critical":
    count = int(critical_fraction * 2 * n / d)
    basis = rng.standard_normal((2, d))
    x[:count] = rng.standard_normal((count, 2)) @ basis
    return x
  raise ValueError(f"unknown data kind {kind!r}; known: {KINDS}")


@functools.lru_cache(maxsize=16)
def _jitted_forster(method: str, tol: float, max_iters: int):
  # One per setting and process: every data kind and rerun reuses its code.
  return jax.jit(functools.partial(forster, tol=tol, max_iters=max_iters,
                                   method=method))


def _timed(calls: dict[str, Any], repeats: int) -> dict[str, float]:
  """Median seconds per call, the calls interleaved (shared-machine load
  then affects every method alike)."""
  times = timing.interleaved(calls, repeats)
  return {m: statistics.median(ts) for m, ts in times.items()}


CHECKS = (
    verdicts.Check("both_converge", (("runs_not_converged", "==", 0),),
                   "both methods converge on every kind of data",
                   verdicts.THEOREM),
    verdicts.Check("newton_fewer_iterations",
                   (("kinds_newton_not_fewer", "==", 0),),
                   "Newton takes fewer updates than Algorithm 1 on every "
                   "kind of data"),
)


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs both methods on every kind of data; figures, text, details."""
  kinds = list(config.kinds)
  r.start_progress(len(kinds), interval_s=2.0)

  def one(kind, log):
    rng = np.random.default_rng([config.seed, zlib.crc32(kind.encode())])
    x = make_data(kind, config.n, config.d, rng,
                  anisotropy=config.anisotropy,
                  degenerate_noise=config.degenerate_noise,
                  critical_fraction=config.critical_fraction)
    # Under jit forster skips its input checks (a numpy SVD): the calls time
    # the iteration alone. The first compiles and gives the result.
    xj = jax.numpy.asarray(x)
    calls = {m: functools.partial(
        _jitted_forster(m, float(config.tol), int(config.max_iters)), xj)
             for m in METHODS}
    results = {m: jax.block_until_ready(call()) for m, call in calls.items()}
    seconds = _timed(calls, config.repeats)
    out = {"kind": kind}
    for m, res in results.items():
      hist = np.asarray(res.history, np.float64)[: int(res.iterations) + 1]
      for k, e in enumerate(hist):
        log(step=k, kind=kind, method=m, error=float(e))
      out[m] = {
          "iterations": int(res.iterations), "converged": bool(res.converged),
          "error": float(res.error), "cond": float(res.cond),
          "cg_products": int(res.cg_iterations), "time_s": seconds[m],
          "reason": res.reason, "history": hist.tolist()}
    return out

  results = {k: r.unit(unit_key(kind=k), functools.partial(one, k))
             for k in kinds}
  figures = _plot(r, config, results)
  measured = {
      "runs_not_converged": sum(not results[k][m]["converged"]
                                for k in kinds for m in METHODS),
      "kinds_newton_not_fewer": sum(
          results[k]["newton"]["iterations"]
          >= results[k]["fixed_point"]["iterations"] for k in kinds),
  }
  parts = []
  for k in kinds:
    fp, nt = results[k]["fixed_point"], results[k]["newton"]
    for m, res in (("fixed_point", fp), ("newton", nt)):
      for field in ("iterations", "error", "cond", "time_s", "converged"):
        measured[f"{k}/{m}/{field}"] = res[field]
    measured[f"{k}/newton/cg_products"] = nt["cg_products"]
    measured[f"{k}/time_ratio_newton_over_alg1"] = (
        nt["time_s"] / fp["time_s"])
    parts.append(f"{k}: " + ", ".join(
        f"{name} {res['iterations']} it ({1e3 * res['time_s']:.1f} ms)"
        f"{'' if res['converged'] else ' NOT CONVERGED'}"
        for name, res in (("Alg. 1", fp), ("Newton", nt))))
  text = (f"iterations to error <= {config.tol:g} (n={config.n}, "
          f"d={config.d}, float{'64' if jax.config.jax_enable_x64 else '32'}"
          "): " + "; ".join(parts))
  expectation = (f"error <= {config.tol:g}; {{criteria}} (wall time "
                 "reported, not required)")
  details = {k: {m: {f: v for f, v in results[k][m].items()
                     if f != "history"} for m in METHODS} for k in kinds}
  return Outcome(measured, text, expectation, figures, details)


def _plot(r: Run, config, results) -> list[str]:
  """Error vs iteration, one panel per kind, from ``metrics.jsonl``."""
  from matplotlib.ticker import MaxNLocator

  records = [rec for rec in r.records() if "error" in rec]
  kinds = list(config.kinds)
  cols = min(2, len(kinds))
  rows = -(-len(kinds) // cols)
  fig = plots.figure((5.2 * cols, 3.8 * rows), left=0.09, right=0.98,
                     bottom=0.08, top=0.9, hspace=0.42, wspace=0.22)
  for i, kind in enumerate(kinds):
    ax = fig.add_subplot(rows, cols, i + 1)
    for m in METHODS:
      (xs, ys), = plots.series_from_records(
          records, "step", "error",
          where=lambda rec, m=m, kind=kind: (rec["kind"] == kind
                                             and rec["method"] == m)).values()
      res = results[kind][m]
      label, color, marker = _STYLES[m]
      ax.plot(xs, np.maximum(ys, 1e-300), marker=marker,
              ms=3 if len(xs) < 60 else 0, lw=1.3, color=color,
              label=f"{label}: {res['iterations']} it, "
                    f"{1e3 * res['time_s']:.1f} ms")
    ax.axhline(config.tol, color="gray", ls=":", lw=1.2,
               label=f"tol = {config.tol:g}")
    ax.set(yscale="log", xlabel="iteration (updates of A)",
           ylabel="||Z^T Z - (n/d) I||_F / (n/d)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(kind.replace("_", "-"), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5)
  fig.suptitle(f"C7: Forster transform, error vs iteration (n={config.n}, "
               f"d={config.d})", fontsize=11)
  fig.savefig(r.path("error_vs_iteration.png"), dpi=100, bbox_inches="tight")
  return ["error_vs_iteration.png"]


SPEC = Experiment(
    name="forster_convergence", claim="C7",
    title="Forster transform: Algorithm 1 and Newton's method converge",
    row="Forster transform (Algorithm 1)",
    get_config=settings.get_config, measure=measure, checks=CHECKS,
    rules=(Rule("len(kinds)", ">=", 1, "a non-empty subset"),
           Rule("each(kinds)", "in", KINDS),
           Rule("n", ">=", "d", "the transform needs n >= d")))


if __name__ == "__main__":
  common.main(SPEC)

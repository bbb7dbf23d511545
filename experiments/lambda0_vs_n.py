"""C8: ``lambda_0`` against the number of points ``n`` uniform on the sphere.

Theorem 5 (``docs/math.md`` ("The two-layer ReLU network")): for inputs uniform
on ``S^{d-1}``, ``lambda_0 = lambda_min(G_inf) >= C n^(-beta)`` with ``beta``
in ``(0, 1/2)`` (from the kernel's spectrum ``lambda_n = Omega(n^{-1-beta})``,
Xie et al. 2016), so Theorem 3's width ``m = Omega(n^4 / lambda_0^4)`` stays
polynomial in ``n``.

Measured, for every ``n`` and repetition (fresh points): ``lambda_0`` and
the largest off-diagonal cosine (the closest pair). The checks read the
theorem's form on the power law fitted over all points and on the lower
envelope (the per-``n`` minimum: a fit of the bound, not of the mean).
Reported, not checked: ``R^2`` of the power and exponential fits (an ``R^2``
threshold passed at 0.907 on one draw and failed at 0.879 on another).

The proof (appendix D.4) cannot stand as written: its Chernoff step needs
``lambda_u = Omega(u^{-1-beta})`` large, but the kernel's eigenvalues sum to
``E[G_inf]_ii = 1/2``, so ``n lambda_n <= 1/2``, which the step's constants
contradict; the checks test the statement.

Settings and presets: ``configs/lambda0_vs_n.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from configs import lambda0_vs_n as settings
from experiments import analysis, common
from ngdjax import data, diagnostics, kernels
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key

# One compilation per n; the value checks that jit skips have nothing to
# catch in data.sphere's points (unit rows, never parallel).
_lambda_0 = jax.jit(kernels.lambda_0)


def _exponential_fit(n, lam) -> tuple[float, float, float]:
  """``log lambda_0 ~ a + b n`` by least squares: ``(b, a, R^2)``."""
  x, y = np.asarray(n, float), np.log(np.asarray(lam, float))
  slope, intercept = np.polyfit(x, y, 1)
  rss = float(np.sum((y - intercept - slope * x) ** 2))
  tss = float(np.sum((y - y.mean()) ** 2))
  return slope, intercept, 1.0 - rss / tss if tss > 0 else 1.0


CHECKS = (
    verdicts.Check(
        "power_bound", (("reps", ">=", 4), ("beta_upper", "<", "max_beta")),
        "fit over all (n, rep) points, >= 4 reps: -(exponent - 2 stderr) < "
        "1/2", verdicts.THEOREM),
    verdicts.Check(
        "envelope_bound", (("envelope_beta_upper", "<", "max_beta"),),
        "fit of the per-n minimum over reps: -(exponent - 2 stderr) < 1/2",
        verdicts.THEOREM),
)


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs the sweep; the figures the checks judge and the report's text."""
  ns = [int(n) for n in config.ns]

  def rows(n):
    for s in range(config.reps):
      x, _ = data.sphere(n, config.d, seed=r.key(unit_key(n=n, rep=s)))
      cos = np.array(x @ x.T)
      np.fill_diagonal(cos, -1.0)
      yield {"lambda_0": float(_lambda_0(x)), "max_cos": float(cos.max())}

  # Work per unit: a fixed cost (compilation, ~1 unit) plus the n^3 of the
  # eigendecompositions, which overtakes it near n = 600 on a CPU core.
  n_all, columns = analysis.repetition_sweep(
      r, "n", ns, config.reps, rows, lambda n: 1.0 + (n / 600) ** 3)
  lam = columns["lambda_0"]
  if np.any(lam <= 0):
    raise ValueError(f"lambda_0 <= 0 for some sample (min {lam.min():.3g})"
                     "; the points are degenerate")
  fit = diagnostics.fit_power_law(n_all, lam)
  ns_sorted = np.array(sorted(set(n_all.tolist())))
  envelope = np.array([lam[n_all == n].min() for n in ns_sorted])
  env = diagnostics.fit_power_law(ns_sorted, envelope)
  slope, intercept, r2_exp = _exponential_fit(n_all, lam)
  figures = _plot(r, config, fit, slope, intercept)
  measured = {
      "exponent": fit.exponent,
      "exponent_stderr": fit.exponent_stderr,
      "beta_upper": -fit.interval()[0],
      "envelope_exponent": env.exponent,
      "envelope_exponent_stderr": env.exponent_stderr,
      "envelope_beta_upper": -env.interval()[0],
      "max_beta": float(config.max_beta),
      "reps": int(config.reps),
      "prefactor": fit.prefactor,
      "r_squared_power": fit.r_squared,
      "r_squared_exponential": r2_exp,
      "lambda_0_at_largest_n": float(lam[n_all == n_all.max()].mean()),
  }
  text = (
      f"lambda_0 ~ {fit.prefactor:.3g} n^({fit.exponent:.3f} +- "
      f"{fit.exponent_stderr:.3f}) over all points (beta <= "
      f"{measured['beta_upper']:.3f} at 2 stderr); lower envelope ~ "
      f"n^({env.exponent:.3f} +- {env.exponent_stderr:.3f}) (beta <= "
      f"{measured['envelope_beta_upper']:.3f}); R^2 {fit.r_squared:.3f} "
      f"(power) vs {r2_exp:.3f} (exponential), not judged; d={config.d}, "
      f"n={ns[0]}..{ns[-1]}, {config.reps} reps")
  return Outcome(measured, text, "lambda_0 >= C n^(-beta), 0 < beta < 1/2 "
                 "(Theorem 5): {criteria}", figures)


def _plot(r: Run, config, fit, slope, intercept) -> list[str]:
  """The figure, from ``metrics.jsonl``."""
  records = [rec for rec in r.records() if "rep" in rec]
  series, ux = plots.runs_and_mean(records, "n", "lambda_0", "samples",
                                   "mean over samples")
  grid = np.geomspace(ux.min(), ux.max(), 50)
  plots.line_plot(
      r.path("lambda0_vs_n.png"),
      series + [
          plots.Series(grid, fit.predict(grid),
                       f"power fit: n^({fit.exponent:.3f} +- "
                       f"{fit.exponent_stderr:.3f}), R^2 {fit.r_squared:.3f}",
                       "dashed", color="C1"),
          plots.Series(grid, np.exp(intercept + slope * grid),
                       "exponential fit: exp(a + b n)", "dashed",
                       color="C2")],
      xlabel="number of points n", ylabel="lambda_0 = lambda_min(G_inf)",
      title=f"C8: lambda_0 vs n, uniform on S^{config.d - 1}",
      logx=True, logy=True, xticks=ux)
  return ["lambda0_vs_n.png"]


SPEC = Experiment(
    name="lambda0_vs_n", claim="C8",
    title="lambda_0 vs n for sphere data: bounded below by a power of n",
    row="lambda_0 vs n on the sphere (Theorem 5)",
    get_config=settings.get_config, measure=measure, checks=CHECKS,
    rules=(Rule("len(ns)", ">=", 3, "sample sizes for a fit"),
           Rule("reps", ">=", 4, "a confidence interval over repetitions")))


if __name__ == "__main__":
  common.main(SPEC)

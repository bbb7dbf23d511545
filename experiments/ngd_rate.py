"""C1: NGD contracts the squared residual by ``1 - eta`` per step (Theorem 1).

``docs/math.md`` ("The theorems"): under Conditions 1-2 (``||J - J(0)||_2 <=
(C/3) sqrt(lambda_min(G(0)))`` in the ball of radius ``R``, ``C < 1/2``) and
``eta <= (1 - 2C) / (1 + C)^2``, exact NGD on the squared loss has ``||y -
u(k+1)||^2 <= (1 - eta) ||y - u(k)||^2``; widening the net makes ``C`` small
(Theorem 3). ``eta = 1`` asks ``C = 0`` (the linear model, one step): outside
the theorem at every finite width, it is measured as a limit, the first-step
ratio (at most ``4C + C^2``, the proof's eqn. 27) vanishing with width.

Measured per width, repetition (fresh ``W``, fixed data on the sphere) and
``eta`` (the same ``W`` for every ``eta``): every step's ratio ``||r(k+1)||^2
/ ||r(k)||^2`` and, from ``||J(k) - J(0)||_2`` at the iterates, the run's
Condition 2 constant ``C`` (a lower estimate of the ball's). ``C`` falls
with width (about ``m^(-0.28)``) and grows with ``n``: at ``n = 8`` it is
about 0.32 at ``m = 2^18`` and 0.22 at ``m = 2^20``, hence widths ``2^18
.. 2^20`` and ``eta = 0.1``.

Settings and presets: ``configs/ngd_rate.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import ml_collections

from configs import ngd_rate as settings
from experiments import analysis, common
from experiments import ngd_training as training
from ngdjax import diagnostics
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run


def _theorem1(c: float, eta: float) -> tuple[float, bool]:
  # Theorem 1 also needs C < 1/2 (where its step limit is 0).
  eta_max = analysis.theorem1_eta_max(c)
  return eta_max, c < 0.5 and eta <= eta_max


def checks(config) -> tuple[verdicts.Check, ...]:
  """``rate_checks`` for every ``eta < 1``; ``eta1_vanishes`` at 1."""
  etas = [float(e) for e in config.learning_rates]
  out = training.rate_checks(
      [e for e in etas if e < 1.0], "g", "Theorem 1",
      "measured C < 1/2 and eta <= (1 - 2C)/(1 + C)^2")
  if 1.0 in etas:
    out += (verdicts.Check(
        "eta1_vanishes", (("eta1_first_ratio_exponent_upper", "<", 0.0),),
        "eta = 1 (outside the theorem unless C = 0): the first-step ratio's "
        "fitted exponent in m + 2 stderr < 0"),)
  return out


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs the sweep; the figures the checks judge and the report's text."""
  etas = [float(e) for e in config.learning_rates]
  # eta = 1's bound is 0, which no finite width meets: eta1_vanishes.
  rates = training.rate_sweep(
      r, config, etas, {eta: 1.0 - eta for eta in etas}, _theorem1,
      name="Theorem 1", fmt="g", key_fmt="g",
      rated=[eta for eta in etas if eta < 1.0], first_ratio=True)
  measured = rates.measured()
  fit, eta1_text, rows = None, "", [u for u in rates.results
                                     if u["eta"] == 1.0]
  if rows:
    fit = diagnostics.fit_power_law([u["width"] for u in rows],
                                    [u["first_ratio"] for u in rows])
    measured.update(eta1_first_ratio_exponent=fit.exponent,
                    eta1_first_ratio_exponent_stderr=fit.exponent_stderr,
                    eta1_first_ratio_exponent_upper=(
                        fit.exponent + 2 * fit.exponent_stderr))
    eta1_text = (f"; eta=1 first-step ratio ~ m^({fit.exponent:.2f} +- "
                 f"{fit.exponent_stderr:.2f}), "
                 f"{rates.at_widest[1.0]:.2g} at m={rates.widest}")
  text = rates.text(config, what="Condition 2 constant ", extra=eta1_text)
  expectation = (f"per-step ratio <= (1 - eta)(1 + {config.ratio_rtol:g}); "
                 "{criteria}")
  return Outcome(measured, text, expectation,
                 _plot(r, config, rates, rows, fit), rates.details())


def _plot(r: Run, config, rates, rows, fit) -> list[str]:
  """Figures from ``metrics.jsonl`` and the units."""
  widths = sorted({u["width"] for u in rates.results})
  figures = training.ratio_figure(
      r, rates, ylabel="||r(k+1)||^2 / ||r(k)||^2",
      title=f"C1: NGD per-step ratio (dots: every step; n={config.n}, "
            f"d={config.d})", bound_label="Theorem 1: 1 - eta = {:g}")
  if fit is not None:
    figures.append(training.width_figure(
        r, "eta1_first_step.png",
        plots.runs_and_mean(rows, "width", "first_ratio", "runs",
                            color=f"C{rates.etas.index(1.0)}")[0]
        + [training.fit_series(rows, fit, digits=2)], widths,
        ylabel="||r(1)||^2 / ||r(0)||^2 at eta = 1",
        title="C1: NGD with eta = 1 (one step in the linear limit)"))
  figures += training.residual_figure(
      r, rates, ylabel="||y - u(k)|| / ||y - u(0)||",
      title="C1: residuals at the widest (lines) and narrowest (dots) width")
  figures.append(training.width_figure(
      r, "condition2.png",
      [training.mean_series([u for u in rates.results if u["eta"] == eta],
                            "C", f"eta={eta:g}", f"C{i}", "line")
       for i, eta in enumerate(rates.etas)], widths,
      ylabel="C = 3 max_k ||J(k) - J(0)||_2 / sqrt(lambda_min(G(0)))",
      title="C1: measured Condition 2 constant (Theorem 1 needs C < 1/2)",
      hlines=[(0.5, "C = 1/2")]))
  return figures


SPEC = Experiment(
    name="ngd_rate", claim="C1",
    title=("NGD rate (Theorem 1): ||r(k+1)||^2 <= (1 - eta) ||r(k)||^2 for "
           "wide nets"),
    row="NGD rate (Theorem 1)",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("len(widths)", ">=", 3), Rule("len(learning_rates)", ">=", 1),
           Rule("each(learning_rates)", ">", 0),
           Rule("each(learning_rates)", "<=", 1, "Theorem 1's range"),
           *training.RATE_RULES))


if __name__ == "__main__":
  common.main(SPEC)

"""C1: NGD contracts the squared residual by ``1 - eta`` per step (Theorem 1).

MATH.md 2: under Conditions 1-2 (``||J - J(0)||_2 <= (C/3)
sqrt(lambda_min(G(0)))`` in the ball of radius ``R``, ``C < 1/2``) and
``eta <= (1 - 2C) / (1 + C)^2``, exact NGD on the squared loss has

    ||y - u(k+1)||^2 <= (1 - eta) ||y - u(k)||^2.

Theorem 3 makes ``C`` as small as wanted by widening the net, so the rate
should hold for wide enough nets; at ``eta = 1`` it asks ``C = 0`` (the
linear model, which converges in one step), so ``eta = 1`` is outside the
theorem for every finite width and is measured as its limit instead: the
proof's eqn. (27) gives a first-step ratio of at most ``4C + C^2``, which
should vanish as the width grows.

Measured, for every width ``m``, repetition (fresh ``W``; the data are
fixed) and step size ``eta`` (the same initialisation for every ``eta``):
exact NGD (``ngdjax.optim.ngd``, damping 0) on the two-layer ReLU net,
``n`` points uniform on the sphere with Gaussian targets, for
``config.num_steps`` steps or until ``||r(k)|| <= config.residual_floor
||r(0)||`` (round-off). Every per-step ratio ``||r(k+1)||^2 / ||r(k)||^2``
(``diagnostics.contraction_ratios``) and, at every iterate,
``||J(k) - J(0)||_2`` exactly from the net's structure
(``diagnostics.jacobian_change_norm``), from which the run's Condition 2
constant ``C = 3 max_k ||J(k) - J(0)||_2 / sqrt(lambda_min(G(0)))`` and
Theorem 1's step limit ``(1 - 2C) / (1 + C)^2`` follow. ``C`` is measured
at the iterates only, so it is a lower estimate of the ball's.

Pass criterion (stated before measuring), with a ratio ``rho`` counted as
within ``1 - eta`` when ``rho <= (1 - eta)(1 + config.ratio_rtol)``:

* ``theorem`` (inside the hypotheses): at least one run has a measured
  ``C < 1/2`` and ``eta <= (1 - 2C) / (1 + C)^2``, and every such run has
  all ratios within ``1 - eta``; FAIL when no run qualifies. The summary
  carries ``runs_inside_hypotheses`` and ``runs_total``.
* ``rate_wide`` (observation, mostly outside the hypotheses): for every
  ``eta < 1`` in the sweep there is a width ``m*`` below the widest width
  from which on every run (every repetition, every step) has all ratios
  within ``1 - eta``;
* ``eta1_vanishes`` (observation, when ``1.0`` is in the sweep): the
  first-step ratio at ``eta = 1`` falls with width: the power law fitted
  over all (width, repetition) points has ``exponent + 2 stderr < 0``.

The checks are data (``checks``, evaluated by ``verdict`` on the summary's
``measured``), so their pass logic is tested on made-up measurements.

Condition 2's ``C`` falls with width (about ``m^(-0.28)``) and grows with
``n``: at ``n = 8`` it is about 0.32 at ``m = 2^18`` and 0.22 at ``m =
2^20``, so the presets reach widths ``2^18 .. 2^20`` (``||J - J(0)||_2`` is
exact and cheap there, ``method="structured"``) and a small step (``eta =
0.1``) to put runs inside the hypotheses. configs/ngd_rate.py has the
numbers seen.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections

from ngdjax import data, diagnostics
from ngdjax.experiment import analysis, plots, verdicts
from ngdjax.experiment import ngd_training as training
from ngdjax.experiment.runner import Run

NAME = "ngd_rate"
CLAIM = "C1"
TITLE = ("NGD rate (Theorem 1): ||r(k+1)||^2 <= (1 - eta) ||r(k)||^2 for "
         "wide nets")


def default_config() -> ml_collections.ConfigDict:
  """The full run (its fields are the experiment's schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 16  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale
  # From a narrow net (p = m d barely above n) to ones wide enough that the
  # measured Condition 2 constant is below 1/2 (m >= 2^18 at n = 16).
  c.widths = (8, 16, 64, 256, 1024, 4096, 16384, 262144, 1048576)
  # 0.1 and 0.25 lie within Theorem 1's step limit where C < 0.28.
  c.learning_rates = (0.1, 0.25, 0.5, 1.0)
  c.reps = 2  # initialisations per width (shared by every eta)
  c.num_steps = 8
  c.residual_floor = 1e-10  # stop once ||r(k)|| / ||r(0)|| is this small
  c.ratio_rtol = 1e-9  # round-off allowance on ratio <= 1 - eta
  return c


def _check(config) -> None:
  if len(config.widths) < 3:
    raise ValueError("config.widths needs at least 3 widths")
  if not config.learning_rates or any(
      not 0 < float(e) <= 1 for e in config.learning_rates):
    raise ValueError("config.learning_rates must be non-empty, each in "
                     f"(0, 1], got {tuple(config.learning_rates)}")
  if config.num_steps < 1:
    raise ValueError(f"config.num_steps must be >= 1, got "
                     f"{config.num_steps}")
  if config.reps < 1:
    raise ValueError(f"config.reps must be >= 1, got {config.reps}")


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs C1 and returns its summary (also written to ``summary.json``)."""
  with Run(workdir, config, default_config(), name=NAME, claim=CLAIM) as r:
    _check(config)
    x, y = data.sphere(config.n, config.d, seed=r.key("data"))
    etas = [float(e) for e in config.learning_rates]
    results = training.sweep(
        r, config, functools.partial(training.rate_unit, r, config, x, y,
                                     theorem=_theorem1, first_ratio=True),
        etas=etas)
    return _summarise(r, config, results, etas)


def _theorem1(c: float, eta: float) -> tuple[float, bool]:
  """Theorem 1's step limit for ``C``, and whether ``eta`` meets it.

  The theorem also needs ``C < 1/2`` (its limit is 0 from there on).
  """
  eta_max = analysis.theorem1_eta_max(c)
  return eta_max, c < 0.5 and eta <= eta_max


HYPOTHESES = "measured C < 1/2 and eta <= (1 - 2C)/(1 + C)^2"


def checks(etas) -> tuple[verdicts.Check, ...]:
  """C1's pass criterion as data on the summary's ``measured``."""
  etas = [float(e) for e in etas]
  out = training.rate_checks([e for e in etas if e < 1.0], "g", "Theorem 1",
                             HYPOTHESES)
  if 1.0 in etas:
    out += (verdicts.Check(
        "eta1_vanishes", (("eta1_first_ratio_exponent_upper", "<", 0.0),),
        "eta = 1 (outside the theorem unless C = 0): the first-step ratio's "
        "fitted exponent in m + 2 stderr < 0"),)
  return out


def verdict(measured, etas) -> dict[str, bool]:
  """C1's checks on a measured dict (pure: no experiment is run)."""
  return verdicts.evaluate(checks(etas), measured)


def _summarise(r: Run, config, results, etas) -> dict[str, Any]:
  rtol = config.ratio_rtol
  rates = training.rate_sweep(results, etas,
                              {eta: 1.0 - eta for eta in etas}, rtol)
  sub_one = [eta for eta in etas if eta < 1.0]
  fit = None
  if 1.0 in etas:
    rows = [u for u in results if u["eta"] == 1.0]
    fit = diagnostics.fit_power_law([u["width"] for u in rows],
                                    [u["first_ratio"] for u in rows])
  # eta = 1's bound is 0, which no finite width meets: eta1_vanishes rates
  # it instead.
  failures = [u for u in results if u["eta"] < 1.0 and not u["holds"]]

  measured = rates.measured(failures, "g")
  if fit is not None:
    measured["eta1_first_ratio_exponent"] = fit.exponent
    measured["eta1_first_ratio_exponent_stderr"] = fit.exponent_stderr
    measured["eta1_first_ratio_exponent_upper"] = (
        fit.exponent + 2 * fit.exponent_stderr)
  check_list = checks(etas)
  passed = verdicts.evaluate(check_list, measured)

  fail_text = training.failure_text(
      failures,
      lambda u: f"m={u['width']} eta={u['eta']:g} ({u['max_ratio']:.3g})")
  eta1_text = ("" if fit is None else
               f"; eta=1 first-step ratio ~ m^({fit.exponent:.2f} +- "
               f"{fit.exponent_stderr:.2f}), "
               f"{rates.at_widest[1.0]:.2g} at m={rates.widest}")
  text = (
      f"{rates.rate_text(sub_one, 'g', 'g')}; {fail_text}; measured "
      f"Condition 2 constant {rates.hypotheses_text('Theorem 1')}"
      f"{eta1_text} (n={config.n}, d={config.d}, {config.reps} reps)")
  expectation = (f"per-step ratio <= (1 - eta)(1 + {rtol:g}); "
                 + verdicts.criteria_text(check_list))
  figures = _plot(r, config, results, etas, fit)
  return r.finish(
      passed=all(passed.values()),
      checks=passed,
      measured=measured,
      measured_text=text,
      expectation=expectation,
      figures=figures,
      title=TITLE,
      details={**rates.details(),
               "check_kinds": verdicts.kinds(check_list)},
  )


def _plot(r: Run, config, results, etas, fit) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  records = [rec for rec in r.records() if "ratio" in rec]
  widths = sorted({u["width"] for u in results})
  series = []
  for i, eta in enumerate(etas):
    if eta < 1.0:  # eta = 1's bound is 0: drawn on its own below
      series += training.ratio_series(
          records, results, eta, 1 - eta, f"eta={eta:g}: max over steps",
          f"Theorem 1: 1 - eta = {1 - eta:g}", f"C{i}")
  figures = []
  if series:
    figures.append("ratio_vs_width.png")
    plots.line_plot(
        r.path(figures[-1]), series, xlabel="width m",
        ylabel="||r(k+1)||^2 / ||r(k)||^2",
        title=f"C1: NGD per-step ratio (dots: every step; n={config.n}, "
              f"d={config.d})",
        logx=True, logy=True, xticks=widths)
  if fit is not None:
    rows = [u for u in results if u["eta"] == 1.0]
    xs = [u["width"] for u in rows]
    ys = [u["first_ratio"] for u in rows]
    ux, mean, _, _ = plots.mean_by_x(xs, ys)
    color = f"C{etas.index(1.0)}"
    figures.append("eta1_first_step.png")
    plots.line_plot(
        r.path(figures[-1]),
        [plots.Series(xs, ys, "runs", "scatter", color=color),
         plots.Series(ux, mean, "mean over reps", color=color),
         plots.Series(ux, fit.predict(ux),
                      f"fit: m^({fit.exponent:.2f} +- "
                      f"{fit.exponent_stderr:.2f})", "dashed", color="gray")],
        xlabel="width m", ylabel="||r(1)||^2 / ||r(0)||^2 at eta = 1",
        title="C1: NGD with eta = 1 (one step in the linear limit)",
        logx=True, logy=True, xticks=widths)

  series = training.residual_series(
      r.records(), etas, widths[-1], widths[0],
      {eta: 1 - eta if eta < 1 else None for eta in etas})
  figures.append("residuals.png")
  plots.line_plot(
      r.path(figures[-1]), series, xlabel="NGD step k",
      ylabel="||y - u(k)|| / ||y - u(0)||",
      title="C1: residuals at the widest (lines) and narrowest (dots) "
            "width", logy=True)

  series = []
  for i, eta in enumerate(etas):
    rows = [u for u in results if u["eta"] == eta]
    xs = [u["width"] for u in rows]
    ux, mean, _, _ = plots.mean_by_x(xs, [u["C"] for u in rows])
    series.append(plots.Series(ux, mean, f"eta={eta:g}", color=f"C{i}"))
  figures.append("condition2.png")
  plots.line_plot(
      r.path(figures[-1]), series, xlabel="width m",
      ylabel="C = 3 max_k ||J(k) - J(0)||_2 / sqrt(lambda_min(G(0)))",
      title="C1: measured Condition 2 constant (Theorem 1 needs C < 1/2)",
      logx=True, logy=True, xticks=widths,
      hlines=[(0.5, "C = 1/2")])
  return figures

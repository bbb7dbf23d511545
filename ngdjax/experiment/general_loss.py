"""C2: NGD with a general strongly convex, smooth loss (Theorem 2).

MATH.md 2: for a loss ``l(u_i, y_i)`` that is ``mu``-strongly convex in
``u`` with an ``L``-Lipschitz gradient, the update ``theta <- theta - eta
J^T G^{-1} grad_u L(u)`` contracts

    ||u(k+1) - y||^2 <= (1 - 2 eta mu L / (mu + L)) ||u(k) - y||^2

when ``||P(k)||_2 <= C`` (which Condition 2 with the same ``C`` gives) and
``eta < 2 / (mu + L) * (1 - (1 + kappa) C) / (1 + C)^2``, ``kappa = L / mu``
(appendix eqn. 33). For wide nets ``C -> 0`` and the step limit tends to
``2 / (mu + L)``, where the bound is tight for the linearised model.

The loss is ``losses.squared_log_cosh(alpha)``: ``l(e) = e^2 / 2 + alpha
log cosh(e)``, ``mu = 1``, ``L = 1 + alpha``, smooth and strongly convex but
not quadratic, so NGD's output update is no longer a rescaling of the
residual. Step sizes are fractions of the limit: ``eta = f * 2 / (mu +
L)`` for ``f`` in ``config.eta_fractions``.

Measured, for every width, repetition (fresh ``W``; the data are fixed) and
``eta``: exact NGD with this loss (``ngdjax.optim.ngd(..., loss=...)``,
damping 0) on the two-layer ReLU net, ``n`` points uniform on the sphere
with Gaussian targets (residuals of order 1, where ``l''`` ranges over
``[mu, L]``), for ``config.num_steps`` steps or until ``||u(k) - y|| <=
config.residual_floor ||u(0) - y||``. Every per-step ratio ``||u(k+1) -
y||^2 / ||u(k) - y||^2``, and ``||J(k) - J(0)||_2`` at every iterate
(exact, ``method="structured"``), giving the run's ``C = 3 max_k ||J(k) -
J(0)||_2 / sqrt(lambda_min(G(0)))`` (a lower estimate: iterates only).

Pass criterion (stated before measuring), a ratio ``rho`` counting as
within the bound ``b = 1 - 2 eta mu L / (mu + L)`` when ``rho <= b (1 +
config.ratio_rtol)``:

* ``theorem`` (inside the hypotheses): at least one run has a measured
  ``(1 + kappa) C < 1`` (``C < 1/3`` at ``kappa = 2``) and ``eta`` below
  the step limit, and every such run has all ratios within ``b``; FAIL when
  no run qualifies (``runs_inside_hypotheses``, ``runs_total``);
* ``rate_wide`` (observation): for every ``eta`` in the sweep there is a
  width ``m*`` below the widest from which on every run (every
  repetition, every step) has all ratios within ``b``.

Seen (configs/general_loss.py has the numbers): the ratios stay well inside
the bound from m = 64 on (at ``eta = 0.9 * 2/(mu + L)`` they sit at ``(1 -
2 eta)^2 = 0.04`` against 0.2); m = 8 breaks it at every step size. The
measured ``C`` is below 1/3 only at widths ``~2^19`` and beyond (``n = 8``),
and there the step limit is about ``0.23 * 2/(mu + L)``, so the presets
carry ``f = 0.1`` and widths up to ``2^20``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections

from ngdjax import data
from ngdjax.experiment import analysis, plots, verdicts
from ngdjax.experiment import ngd_training as training
from ngdjax.experiment.runner import Run, unit_key

NAME = "general_loss"
CLAIM = "C2"
TITLE = ("General loss (Theorem 2): ||u(k+1) - y||^2 <= (1 - 2 eta mu L / "
         "(mu + L)) ||u(k) - y||^2")


def default_config() -> ml_collections.ConfigDict:
  """The full run (its fields are the experiment's schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 8  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale
  # Up to widths where the measured C < 1/3 (Theorem 2 at kappa = 2).
  c.widths = (8, 64, 512, 4096, 16384, 262144, 1048576)
  c.alpha = 1.0  # squared_log_cosh(alpha): mu = 1, L = 1 + alpha
  # eta = f * 2 / (mu + L): Theorem 2's step limit as C -> 0 is f < 1; at
  # C ~ 0.25 it is f < 0.17, hence f = 0.1.
  c.eta_fractions = (0.1, 0.25, 0.5, 0.9)
  c.reps = 2  # initialisations per width (shared by every eta)
  c.num_steps = 8
  c.residual_floor = 1e-10  # stop once ||r(k)|| / ||r(0)|| is this small
  c.ratio_rtol = 1e-9  # round-off allowance on ratio <= bound
  return c


def _check(config) -> None:
  if len(config.widths) < 2:
    raise ValueError("config.widths needs at least 2 widths")
  if not config.eta_fractions or any(
      not 0 < float(f) < 1 for f in config.eta_fractions):
    raise ValueError("config.eta_fractions must be non-empty, each in "
                     f"(0, 1), got {tuple(config.eta_fractions)}")
  if config.alpha <= 0:
    raise ValueError(f"config.alpha must be positive (alpha = 0 is the "
                     f"squared loss of C1), got {config.alpha}")
  if config.num_steps < 1 or config.reps < 1:
    raise ValueError("config.num_steps and config.reps must be >= 1")


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs C2 and returns its summary (also written to ``summary.json``)."""
  with Run(workdir, config, default_config(), name=NAME, claim=CLAIM) as r:
    _check(config)
    loss = training.loss_for("squared_log_cosh", float(config.alpha))
    mu, lip = loss.mu, loss.L
    x, y = data.sphere(config.n, config.d, seed=r.key("data"))
    etas = [float(f) * 2.0 / (mu + lip) for f in config.eta_fractions]

    def theorem2(c, eta):
      """Theorem 2's step limit for ``C``, and whether ``eta`` is below it."""
      eta_max = analysis.theorem2_eta_max(c, mu, lip)
      return eta_max, eta < eta_max

    results = training.sweep(
        r, config, functools.partial(training.rate_unit, r, config, x, y,
                                     theorem=theorem2, loss=loss),
        etas=etas,
        # eta = f * 2 / (mu + L) is rarely short: name it by 6 digits.
        key=lambda m, s, eta: unit_key(width=m, rep=s, eta=f"{eta:.6g}"))
    return _summarise(r, config, results, etas, loss)


HYPOTHESES = ("measured (1 + kappa) C < 1 (C < 1/3 at kappa = 2) and eta < "
              "2/(mu + L) (1 - (1 + kappa) C)/(1 + C)^2")


def checks(etas) -> tuple[verdicts.Check, ...]:
  """C2's pass criterion as data on the summary's ``measured``."""
  return training.rate_checks([float(e) for e in etas], ".4g", "Theorem 2",
                              HYPOTHESES)


def verdict(measured, etas) -> dict[str, bool]:
  """C2's checks on a measured dict (pure: no experiment is run)."""
  return verdicts.evaluate(checks(etas), measured)


def _summarise(r: Run, config, results, etas, loss) -> dict[str, Any]:
  factor = loss.rate_factor  # 2 mu L / (mu + L)
  bound = {eta: 1.0 - eta * factor for eta in etas}
  for u in results:
    u["bound"] = bound[u["eta"]]
  rates = training.rate_sweep(results, etas, bound, config.ratio_rtol)
  failures = [u for u in results if not u["holds"]]
  measured = {
      "loss": loss.name,
      "mu": loss.mu,
      "L": loss.L,
      "rate_factor": factor,
      "eta_limit": 2.0 / (loss.mu + loss.L),
      **rates.measured(failures, ".4g", with_bound=True),
  }

  fail_text = training.failure_text(
      failures,
      lambda u: (f"m={u['width']} eta={u['eta']:.3g} ({u['max_ratio']:.3g}"
                 f" > {u['bound']:.3g})"))
  text = (
      f"{loss.name} (mu={loss.mu:g}, L={loss.L:g}): "
      f"{rates.rate_text(etas, '.3g', '.3g')}; {fail_text}; measured "
      f"{rates.hypotheses_text('Theorem 2')} (n={config.n}, d={config.d}, "
      f"{config.reps} reps)")
  check_list = checks(etas)
  passed = verdicts.evaluate(check_list, measured)
  expectation = (
      f"per-step ratio <= (1 - 2 eta mu L/(mu + L)) (1 + "
      f"{config.ratio_rtol:g}) = 1 - {factor:.4g} eta, eta = f * 2/(mu + L),"
      f" f in {tuple(config.eta_fractions)}; "
      + verdicts.criteria_text(check_list))
  figures = _plot(r, config, results, etas, bound, loss)
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


def _plot(r: Run, config, results, etas, bound, loss) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  records = r.records()
  widths = sorted({u["width"] for u in results})
  series = []
  for i, eta in enumerate(etas):
    series += training.ratio_series(
        [rec for rec in records if "ratio" in rec], results, eta,
        bound[eta], f"eta={eta:.3g}: max over steps",
        f"Theorem 2: 1 - 2 eta mu L/(mu+L) = {bound[eta]:.3g}", f"C{i}")
  f1 = "ratio_vs_width.png"
  plots.line_plot(
      r.path(f1), series, xlabel="width m",
      ylabel="||u(k+1) - y||^2 / ||u(k) - y||^2",
      title=f"C2: NGD per-step ratio, {loss.name} (dots: every step)",
      logx=True, logy=True, xticks=widths)
  f2 = "residuals.png"
  plots.line_plot(
      r.path(f2),
      training.residual_series(records, etas, widths[-1], widths[0], bound),
      xlabel="NGD step k", ylabel="||u(k) - y|| / ||u(0) - y||",
      title=f"C2: {loss.name}, widest (lines) / narrowest (dots) width",
      logy=True)
  return [f1, f2]

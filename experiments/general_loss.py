"""C2: NGD with a general strongly convex, smooth loss (Theorem 2).

``docs/math.md`` ("The theorems"): for a loss ``l(u_i, y_i)`` that is
``mu``-strongly convex in ``u`` with an ``L``-Lipschitz gradient, NGD (``theta
<- theta - eta J^T G^{-1} grad_u L(u)``) contracts ``||u(k+1) - y||^2 <= (1 - 2
eta mu L / (mu + L)) ||u(k) - y||^2`` under Condition 2 if ``eta < 2 / (mu + L)
* (1 - (1 + kappa) C) / (1 + C)^2``, ``kappa = L / mu`` (appendix eqn. 33).

Measured as C1 (the same sweep, ``C`` and checks) with the loss
``losses.squared_log_cosh(alpha)`` (``e^2 / 2 + alpha log cosh(e)``, ``mu =
1``, ``L = 1 + alpha``, not quadratic) and ``eta = f * 2 / (mu + L)`` for
``f`` in ``config.eta_fractions``. The measured ``C`` is below 1/3
(``kappa = 2``) only from widths ``~2^19`` (``n = 8``), where the step
limit is about ``0.23 * 2/(mu + L)``: hence ``f = 0.1`` and widths up to
``2^20``.

Settings and presets: ``configs/general_loss.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import ml_collections

from configs import general_loss as settings
from experiments import analysis, common
from experiments import ngd_training as training
from ngdjax import losses
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key


def _loss_and_etas(config):
  loss = losses.squared_log_cosh(config.alpha)
  return loss, [float(f) * 2.0 / (loss.mu + loss.L)
                for f in config.eta_fractions]


def checks(config):
  """``rate_checks`` for every eta of the sweep."""
  return training.rate_checks(
      _loss_and_etas(config)[1], ".4g", "Theorem 2",
      "measured (1 + kappa) C < 1 (C < 1/3 at kappa = 2) and eta < 2/(mu + "
      "L) (1 - (1 + kappa) C)/(1 + C)^2")


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs the sweep; the figures the checks judge and the report's text."""
  loss, etas = _loss_and_etas(config)
  mu, lip, factor = loss.mu, loss.L, loss.rate_factor  # 2 mu L / (mu + L)

  def theorem2(c, eta):
    eta_max = analysis.theorem2_eta_max(c, mu, lip)
    return eta_max, eta < eta_max

  rates = training.rate_sweep(
      r, config, etas, {eta: 1.0 - eta * factor for eta in etas}, theorem2,
      name="Theorem 2", fmt=".3g", key_fmt=".4g", with_bound=True, loss=loss,
      # eta = f * 2 / (mu + L) is rarely short: name it by 6 digits.
      key=lambda m, s, eta: unit_key(width=m, rep=s, eta=f"{eta:.6g}"))
  measured = {"loss": loss.name, "mu": mu, "L": lip, "rate_factor": factor,
              "eta_limit": 2.0 / (mu + lip), **rates.measured()}
  text = rates.text(config, prefix=f"{loss.name} (mu={mu:g}, L={lip:g}): ")
  expectation = (
      f"per-step ratio <= (1 - 2 eta mu L/(mu + L)) (1 + "
      f"{config.ratio_rtol:g}) = 1 - {factor:.4g} eta, eta = f * 2/(mu + L),"
      f" f in {tuple(config.eta_fractions)}; {{criteria}}")
  figures = training.ratio_figure(
      r, rates, ylabel="||u(k+1) - y||^2 / ||u(k) - y||^2",
      title=f"C2: NGD per-step ratio, {loss.name} (dots: every step)",
      bound_label="Theorem 2: 1 - 2 eta mu L/(mu+L) = {:.3g}")
  figures += training.residual_figure(
      r, rates, ylabel="||u(k) - y|| / ||u(0) - y||",
      title=f"C2: {loss.name}, widest (lines) / narrowest (dots) width")
  return Outcome(measured, text, expectation, figures, rates.details())


SPEC = Experiment(
    name="general_loss", claim="C2",
    title=("General loss (Theorem 2): ||u(k+1) - y||^2 <= (1 - 2 eta mu L / "
           "(mu + L)) ||u(k) - y||^2"),
    row="General loss (Theorem 2)",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("len(widths)", ">=", 2), Rule("len(eta_fractions)", ">=", 1),
           Rule("each(eta_fractions)", ">", 0),
           Rule("each(eta_fractions)", "<", 1, "of Theorem 2's limit"),
           Rule("alpha", ">", 0, "alpha = 0 is the squared loss of C1"),
           *training.RATE_RULES))


if __name__ == "__main__":
  common.main(SPEC)

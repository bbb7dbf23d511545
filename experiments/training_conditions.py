"""C3: the conditions of Theorem 1's proof, measured along NGD training.

The proof (appendix B, Lemmas 2-4; ``docs/math.md`` ("The theorems")) keeps, at
every iterate ``k`` of exact NGD on the squared loss, ``lambda_min(G(k)) >=
(4/9) lambda_min(G(0))`` (Lemma 2) and ``||w(k) - w(0)|| <= R = 3 ||y - u(0)||
/ sqrt(lambda_min(G(0)))`` (Lemma 3); in that ball at most a fraction ``2 (R /
(nu delta))^{2/3} m^{-1/3}`` of the activations flip (Lemmas 7-8, probability
``1 - delta``).

Measured per width and repetition (fresh ``W``, fixed data on the sphere)
at every iterate of NGD at ``eta = config.learning_rate``; ``R`` with
``lambda_min(G_inf)`` for ``lambda_min(G(0))`` is reported beside it. The
checks are observations: the lemmas' hypothesis (Condition 2 with ``C <
1/2``) is not met at these widths (C1). The flip bound is >= 1 (a fraction
cannot break it) below ``m ~ 1e5``: reported, not checked.

Settings and presets: ``configs/training_conditions.py``; results of earlier
runs: ``docs/results.md``."""

from __future__ import annotations

import math

import ml_collections

from configs import training_conditions as settings
from experiments import analysis, common
from experiments import ngd_training as training
from ngdjax import data, diagnostics, kernels, lambda_min
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.runner import Experiment, Outcome, Run

CHECKS = (
    verdicts.Check("gram", (("m_star/gram", "<", "widest_width"),),
                   "min_k lambda_min(G(k)) >= fraction lambda_min(G(0)) at "
                   "every width >= m*, m* below the widest"),
    verdicts.Check("distance", (("m_star/distance", "<", "widest_width"),),
                   "max_k ||w(k)-w(0)|| <= factor ||y-u(0)||/"
                   "sqrt(lambda_min(G(0))) at every width >= m*, m* below "
                   "the widest"),
    verdicts.Check("flips_shrink", (("flips_exponent_upper", "<", 0.0),),
                   "flipped fraction falls with width: fitted exponent + 2 "
                   "stderr < 0"),
)


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs the sweep; the figures the checks judge and the report's text."""
  x, y = data.sphere(config.n, config.d, seed=r.key("data"))
  lam0 = float(lambda_min(kernels.relu_gram_inf(x)))
  scale = config.distance_factor / 3.0  # distance_bound's factor is 3

  def one(m, s, u0, t):
    lam_g0, r_meas = t["lambda_min_G"][0], max(t["distance"])
    return {
        "width": m, "rep": s, "lambda_min_G0": lam_g0,
        "lambda_ratio_min": (min(t["lambda_min_G"]) / lam_g0
                             if lam_g0 > 0 else -math.inf),
        "distance_max": r_meas,
        "distance_bound": (
            scale * float(diagnostics.distance_bound(y, u0, lam_g0))
            if lam_g0 > 0 else math.inf),
        "distance_bound_lambda_0": scale * float(
            diagnostics.distance_bound(y, u0, lam0)),
        "flips_max": max(t["flips"]), "flips_final": t["flips"][-1],
        "flip_bound": analysis.lemma8_flip_bound(
            r_meas, float(config.nu), float(config.delta), m),
        "steps": t["steps"], "reached_floor": t["reached_floor"],
        "cholesky_failed_steps": int(sum(t["cholesky_failed"])),
    }

  results = training.sweep(r, config, x, y, one)
  ws = [u["width"] for u in results]
  ok = {
      "gram": [u["lambda_ratio_min"] >= config.lambda_fraction
               for u in results],
      "distance": [u["distance_max"] <= u["distance_bound"]
                   for u in results],
  }
  m_star = {k: analysis.threshold_width(ws, v) for k, v in ok.items()}
  positive = [(u["width"], u["flips_max"]) for u in results
              if u["flips_max"] > 0]
  fit = None
  if len({w for w, _ in positive}) >= 2 and len(positive) >= 3:
    fit = diagnostics.fit_power_law(*zip(*positive, strict=True))
  widest = max(ws)
  nonvacuous = [u for u in results if u["flip_bound"] < 1.0]
  wide = [u for u in results if u["width"] == widest]
  measured = {
      "lambda_0": lam0, "widest_width": widest, "runs": len(results),
      "lambda_ratio_min_overall": min(u["lambda_ratio_min"] for u in results),
      **{f"{k}_at_widest": reduce(u[k] for u in wide) for k, reduce in (
          ("lambda_ratio_min", min), ("distance_max", max),
          ("distance_bound", min), ("distance_bound_lambda_0", min),
          ("flips_max", max), ("flip_bound", min))},
      **{f"distance_over_bound_max_{where}": max(
          u["distance_max"] / u["distance_bound"] for u in units)
         for where, units in (("at_widest", wide), ("overall", results))},
      # Below this width the flip bound is >= 1 and says nothing.
      "flip_bound_vacuous_below": max(
          8 * (u["distance_max"] / (config.nu * config.delta)) ** 2
          for u in wide),
      "flips_exponent": None if fit is None else fit.exponent,
      "flips_exponent_stderr": None if fit is None else fit.exponent_stderr,
      "flips_exponent_upper": (None if fit is None else
                               fit.exponent + 2 * fit.exponent_stderr),
      # Runs where the flip bound is < 1 (can be broken) and those breaking.
      "flip_bound_nonvacuous_runs": len(nonvacuous),
      "flip_bound_nonvacuous_breaking": sum(
          u["flips_max"] > u["flip_bound"] for u in nonvacuous),
      "cholesky_failed_steps": sum(u["cholesky_failed_steps"]
                                   for u in results),
      **{f"m_star/{k}": m for k, m in m_star.items()},
  }

  def star(k):
    return "none" if m_star[k] is None else f"{m_star[k]:.0f}"

  fails = {k: sorted({u["width"] for u, good in zip(results, v, strict=True)
                      if not good}) for k, v in ok.items()}
  fail_text = "; ".join(f"{k} fails at m = {v}" for k, v in fails.items()
                        if v) or "no width fails"
  fit_text = ("no fit (too few runs with flips)" if fit is None else
              f"~ m^({fit.exponent:.3f} +- {fit.exponent_stderr:.3f})")
  text = (
      f"min_k lambda_min(G(k))/lambda_min(G(0)) = "
      f"{measured['lambda_ratio_min_at_widest']:.3g} at m={widest} "
      f"(>= {config.lambda_fraction:.3g} for m >= {star('gram')}; lowest "
      f"{measured['lambda_ratio_min_overall']:.3g}); max_k ||w(k)-w(0)|| = "
      f"{measured['distance_max_at_widest']:.3g} vs bound "
      f"{measured['distance_bound_at_widest']:.3g} at m={widest} (within "
      f"for m >= {star('distance')}; with lambda_0 = lambda_min(G_inf) the "
      f"bound is {measured['distance_bound_lambda_0_at_widest']:.3g}); "
      f"flipped fraction {measured['flips_max_at_widest']:.3g} at m={widest}"
      f" vs Lemma 7-8 bound {measured['flip_bound_at_widest']:.3g} (a "
      f"detail, not a check: the bound is vacuous, >= 1, below m ~ "
      f"{measured['flip_bound_vacuous_below']:.2g}; < 1 in "
      f"{len(nonvacuous)} runs, broken in "
      f"{measured['flip_bound_nonvacuous_breaking']}), {fit_text}; "
      f"{fail_text} "
      f"(n={config.n}, d={config.d}, eta={config.learning_rate:g}, "
      f"{config.reps} reps)")
  expectation = (
      f"at every iterate: lambda_min(G(k)) >= {config.lambda_fraction:.3g} "
      f"lambda_min(G(0)); ||w(k)-w(0)|| <= {config.distance_factor:g} "
      f"||y-u(0)||/sqrt(lambda_min(G(0))); {{criteria}}")
  return Outcome(measured, text, expectation,
                 _plot(r, config, results, fit, m_star), {"runs": results})


def _plot(r: Run, config, results, fit, m_star) -> list[str]:
  """Figures from ``metrics.jsonl`` and the units."""
  widths = sorted({u["width"] for u in results})
  lemma2 = [(config.lambda_fraction,
             f"Lemma 2: {config.lambda_fraction:.3g}")]
  training.width_figure(
      r, "lambda_min.png",
      plots.runs_and_mean(results, "width", "lambda_ratio_min", "runs")[0],
      widths, logy=False, ylabel="min_k lambda_min(G(k)) / lambda_min(G(0))",
      title="C3: Lemma 2, the Gram stays positive definite", hlines=lemma2,
      vlines=([] if m_star["gram"] is None
              else [(m_star["gram"], f"m* = {m_star['gram']:.0f}")]))
  training.path_figure(
      r, config, "C3", "lambda_path.png", "lambda_min_G", widths,
      normalise=True, ylabel="lambda_min(G(k)) / lambda_min(G(0))",
      hlines=lemma2)
  training.width_figure(
      r, "distance.png",
      plots.runs_and_mean(results, "width", "distance_max", None,
                          "max_k ||w(k) - w(0)|| (mean over reps)")[0]
      + [training.mean_series(results, "distance_bound", "Lemma 3: 3 ||y - "
                              "u(0)|| / sqrt(lambda_min(G(0)))", "C3"),
         training.mean_series(results, "distance_bound_lambda_0",
                              "same with lambda_0 = lambda_min(G_inf)",
                              "C2")],
      widths, ylabel="distance from initialisation",
      title="C3: Lemma 3, the weights stay in the ball")
  series = plots.runs_and_mean(
      results, "width", "flips_max", None,
      "max_k flipped fraction (mean over reps)")[0] + [training.mean_series(
          results, "flip_bound", "Lemma 7-8: 2 (R/(nu delta))^(2/3) "
          f"m^(-1/3), delta={config.delta:g}", "C3")]
  if fit is not None:
    series.append(training.fit_series(results, fit))
  training.width_figure(
      r, "flips.png", series, widths,
      ylabel="fraction of activations flipped",
      title="C3: activation-pattern flips along training",
      hlines=[(1.0, "fraction 1 (a bound above says nothing)")])
  return ["lambda_min.png", "lambda_path.png", "distance.png", "flips.png"]


SPEC = Experiment(
    name="training_conditions", claim="C3",
    title=("Conditions along training: lambda_min(G(k)) >= (4/9) "
           "lambda_min(G(0)), ||w(k) - w(0)|| <= 3 ||y - u(0)|| / "
           "sqrt(lambda_min(G(0))), few activation flips"),
    row="Conditions along training (Theorem 1's proof)",
    get_config=settings.get_config, measure=measure, checks=CHECKS,
    rules=training.FIXED_STEP_RULES)


if __name__ == "__main__":
  common.main(SPEC)

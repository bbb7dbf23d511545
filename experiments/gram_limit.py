"""C5: the Gram matrix at initialisation converges to ``G_inf`` with width.

For the two-layer ReLU net (``docs/math.md`` ("The two-layer ReLU network")) on
``n`` points uniform on the sphere, ``G(0) = (X X^T) * (S S^T) / m`` is an
average of ``m`` i.i.d. terms with mean ``G_inf``, so ``||G(0) - G_inf|| /
||G_inf||`` should fall like ``m^{-1/2}``. Lemma 6 turns this into
``lambda_min(G(0)) >= (3/4) lambda_0`` once ``m = Omega(n log(n / delta) /
lambda_0)``.

Measured, for every width ``m`` and repetition (fresh ``W``, fixed data):
the relative error of ``G(0)`` in the Frobenius and max-abs norms and
``lambda_min(G(0)) / lambda_0``. The checks observe the limit; Lemma 6 is a
probability bound, its width scale is reported beside them.

Settings and presets: ``configs/gram_limit.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from configs import gram_limit as settings
from experiments import analysis, common
from ngdjax import data, diagnostics, gram, kernels, lambda_min
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key
from ngdjax.models import two_layer_relu


@functools.partial(jax.jit, static_argnums=(0, 1))
def _initial_grams(model, d, keys, x):
  """``G(0)`` for each key's initialisation, ``(reps, n, n)``: one
  compilation per width, one ``(n, m)`` activation pattern alive at a time
  (what follows is ``(n, n)`` at every width and runs eagerly)."""
  return jax.lax.map(
      lambda key: gram(model, model.init(key, d), x, method="structured"),
      keys)


def checks(config) -> tuple[verdicts.Check, ...]:
  """C5's pass criterion as data on the summary's ``measured``."""
  lo = config.expected_exponent - config.exponent_tolerance
  hi = config.expected_exponent + config.exponent_tolerance
  return (
      verdicts.Check(
          "exponent", (("exponent", ">=", lo), ("exponent", "<=", hi)),
          f"fitted exponent of the {config.error_norm} error in "
          f"[{lo:g}, {hi:g}]"),
      verdicts.Check(
          "lemma6", (("m_star", "<", "widest_width"),),
          f"lambda_min(G(0)) >= {config.lambda_fraction:g} lambda_0 at "
          "every width >= m*, m* below the widest width"),
  )


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs the sweep; the figures the checks judge and the report's text."""
  x, _ = data.sphere(config.n, config.d, seed=r.key("data"))
  g_inf = kernels.relu_gram_inf(x)
  lam0 = float(lambda_min(g_inf))

  def rows(m):
    keys = jnp.stack([r.key(unit_key(width=m, rep=s))
                      for s in range(config.reps)])
    model = two_layer_relu(m, nu=config.nu)
    for g0 in _initial_grams(model, config.d, keys, x):
      row = {f"rel_error_{k}": diagnostics.relative_error(g0, g_inf, norm=k)
             for k in ("fro", "max")}
      row["lambda_min_ratio"] = lambda_min(g0) / lam0
      yield {k: float(v) for k, v in row.items()}

  # Work per unit ~ a fixed cost (compilation) plus n^2 m for the Gram.
  widths, columns = analysis.repetition_sweep(
      r, "width", [int(m) for m in config.widths], config.reps, rows,
      lambda m: 1.0 + m / 4096)
  fits = {k: diagnostics.fit_power_law(widths, columns[f"rel_error_{k}"])
          for k in ("fro", "max")}
  fit = fits[config.error_norm]
  ratios = columns["lambda_min_ratio"]
  m_star = analysis.threshold_width(widths, ratios >= config.lambda_fraction)
  lemma6_scale = config.n * math.log(config.n / config.delta) / lam0

  figures = _plot(r, config, fits, m_star)
  measured = {
      "widest_width": float(widths.max()),
      "exponent": fit.exponent,
      "exponent_stderr": fit.exponent_stderr,
      "exponent_max_norm": fits["max"].exponent,
      "exponent_max_norm_stderr": fits["max"].exponent_stderr,
      "r_squared": fit.r_squared,
      "lambda_0": lam0,
      "m_star": m_star,
      "lemma6_width_scale": lemma6_scale,
      "min_lambda_ratio_at_largest_width":
          float(ratios[widths == widths.max()].min()),
  }
  m_star_text = "none in the sweep" if m_star is None else f"{m_star:.0f}"
  text = (
      f"{config.error_norm} rel. error ~ m^({fit.exponent:.3f} +- "
      f"{fit.exponent_stderr:.3f}) (max-abs: {fits['max'].exponent:.3f} +- "
      f"{fits['max'].exponent_stderr:.3f}); lambda_min(G(0)) >= "
      f"{config.lambda_fraction:g} lambda_0 for m >= {m_star_text} (n="
      f"{config.n}, d={config.d}, lambda_0={lam0:.3g}, {config.reps} reps)")
  expectation = ("{criteria} (Lemma 6 scale n log(n/delta)/lambda_0 = "
                 f"{lemma6_scale:.3g})")
  return Outcome(measured, text, expectation, figures)


def _plot(r: Run, config, fits, m_star) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  # Per-repetition lines (the per-unit lines hold lists).
  records = [rec for rec in r.records() if "rep" in rec]
  series = []
  for k, label, color in (("fro", "Frobenius", "C0"),
                          ("max", "max-abs", "C1")):
    runs, ux = plots.runs_and_mean(records, "width", f"rel_error_{k}", None,
                                   f"{label} (mean over reps)", color)
    fit = fits[k]
    series += runs + [plots.Series(
        ux, fit.predict(ux), f"{label} fit: m^({fit.exponent:.3f} +- "
        f"{fit.exponent_stderr:.3f})", "dashed", color=color)]
  ref = (fits[config.error_norm].predict(ux[:1])[0]
         * (ux / ux[0]) ** config.expected_exponent)
  series.append(plots.Series(ux, ref,
                             f"expected slope {config.expected_exponent:g}",
                             "dashed", color="gray"))
  plots.line_plot(r.path("gram_error.png"), series, xlabel="width m",
                  ylabel="||G(0) - G_inf|| / ||G_inf||",
                  title=f"C5: G(0) -> G_inf (n={config.n}, d={config.d})",
                  logx=True, logy=True, xticks=ux)
  series, ux = plots.runs_and_mean(records, "width", "lambda_min_ratio",
                                   "repetitions", "mean")
  plots.line_plot(
      r.path("lambda_min.png"), series, xlabel="width m",
      ylabel="lambda_min(G(0)) / lambda_0",
      title="C5: Lemma 6, lambda_min(G(0)) >= (3/4) lambda_0",
      logx=True, xticks=ux,
      hlines=[(config.lambda_fraction,
               f"Lemma 6: {config.lambda_fraction:g} lambda_0")],
      vlines=[] if m_star is None else [(m_star, f"m* = {m_star:.0f}")])
  return ["gram_error.png", "lambda_min.png"]


SPEC = Experiment(
    name="gram_limit", claim="C5",
    title="G(0) -> G_inf with width; lambda_min(G(0)) >= (3/4) lambda_0",
    row="G(0) -> G_inf with width (Lemma 6)",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("error_norm", "in", ("fro", "max")),
           Rule("len(widths)", ">=", 3, "widths for a fit")))


if __name__ == "__main__":
  common.main(SPEC)

"""C5: the Gram matrix at initialisation converges to ``G_inf`` with width.

For the two-layer ReLU net (MATH.md 3) on ``n`` points uniform on the
sphere, ``G(0) = (X X^T) * (S S^T) / m`` is an average of ``m`` i.i.d. terms
with mean ``G_inf``, so ``||G(0) - G_inf|| / ||G_inf||`` should fall like
``m^{-1/2}``. Lemma 6 turns this into ``lambda_min(G(0)) >= (3/4) lambda_0``
once ``m = Omega(n log(n / delta) / lambda_0)``.

Measured, for every width ``m`` and repetition (fresh ``W``; the data are
fixed): the relative error of ``G(0)`` in the Frobenius and max-abs norms and
``lambda_min(G(0)) / lambda_0``.

Pass criterion (stated before measuring): the exponent of the power law
fitted to the ``config.error_norm`` error over all (width, repetition)
points lies within ``config.exponent_tolerance`` of ``-1/2``, and there is a
width ``m*`` below the widest in the sweep from which on every repetition
at every larger width has ``lambda_min(G(0)) >= config.lambda_fraction *
lambda_0``. Both are observations of the limit (Lemma 6 is a probability
bound whose width scale is reported beside them); the checks are data
(``checks``, ``verdict``).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ngdjax import data, diagnostics, kernels, models
from ngdjax._src.jacobian import gram
from ngdjax._src.linalg import lambda_min
from ngdjax.experiment import analysis, plots, verdicts
from ngdjax.experiment.runner import Run, unit_key

NAME = "gram_limit"
CLAIM = "C5"
TITLE = "G(0) -> G_inf with width; lambda_min(G(0)) >= (3/4) lambda_0"


def default_config() -> ml_collections.ConfigDict:
  """The full run (its fields are the experiment's schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 64  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale (G_inf does not depend on it)
  # From below n (where G(0) has rank <= m d and is singular) to far above.
  c.widths = tuple(2**k for k in range(2, 18))  # 4 .. 131072
  c.reps = 8  # independent initialisations per width
  c.error_norm = "fro"  # error whose exponent is checked: "fro" or "max"
  c.expected_exponent = -0.5
  c.exponent_tolerance = 0.1  # pass if |exponent - expected| <= this
  c.lambda_fraction = 0.75  # Lemma 6
  c.delta = 0.1  # failure probability in Lemma 6's width scale (reported)
  return c


@functools.partial(jax.jit, static_argnums=(0, 1))
def _initial_grams(model, d, keys, x):
  """``G(0)`` for each key's initialisation, ``(reps, n, n)``.

  One compilation per width (``lax.map`` traces the body once and keeps one
  ``(n, m)`` activation pattern alive at a time). Everything downstream has
  the shape ``(n, n)`` whatever the width, so it runs eagerly and compiles
  once for the whole sweep.
  """
  return jax.lax.map(
      lambda key: gram(model, model.init(key, d), x, method="structured"),
      keys)


@functools.lru_cache(maxsize=64)
def _model(width: int, nu: float) -> models.Model:
  # One Model object per (width, nu) in a process: it is a static argument
  # of the jitted _initial_grams, so a rerun (resume, tests, reproduce)
  # reuses the compiled code instead of compiling every width again.
  return models.two_layer_relu(width, nu=nu)


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


def verdict(measured, config) -> dict[str, bool]:
  """C5's checks on a measured dict (pure: no experiment is run)."""
  return verdicts.evaluate(checks(config), measured)


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs C5 and returns its summary (also written to ``summary.json``)."""
  with Run(workdir, config, default_config(), name=NAME, claim=CLAIM) as r:
    if config.error_norm not in ("fro", "max"):
      raise ValueError(f'config.error_norm must be "fro" or "max", got '
                       f"{config.error_norm!r}")
    if len(config.widths) < 3:
      raise ValueError("config.widths needs at least 3 widths for a fit")
    x, _ = data.sphere(config.n, config.d, seed=r.key("data"))
    g_inf = kernels.relu_gram_inf(x)
    lam0 = float(lambda_min(g_inf))
    widths_run = [int(m) for m in config.widths]
    # Work per unit ~ a fixed cost (compilation) plus n^2 m for the Gram.
    work = {m: 1.0 + m / 4096 for m in widths_run}
    r.start_progress(len(widths_run), interval_s=2.0,
                     work=sum(work.values()))

    def measure(m, log):
      model = _model(m, float(config.nu))
      keys = jnp.stack([r.key(unit_key(width=m, rep=s))
                        for s in range(config.reps)])
      out = {"rel_error_fro": [], "rel_error_max": [],
             "lambda_min_ratio": []}
      for s, g0 in enumerate(_initial_grams(model, config.d, keys, x)):
        row = {
            "rel_error_fro": diagnostics.relative_error(g0, g_inf, "fro"),
            "rel_error_max": diagnostics.relative_error(g0, g_inf, "max"),
            "lambda_min_ratio": lambda_min(g0) / lam0,
        }
        row = {k: float(v) for k, v in row.items()}
        log(width=m, rep=s, **row)
        for k, v in row.items():
          out[k].append(v)
      return {"width": m, **out}

    # A unit is one width (all its repetitions): the resume granularity.
    results = [r.unit(unit_key(width=m), functools.partial(measure, m),
                      work=work[m]) for m in widths_run]
    reps = config.reps
    widths = np.repeat([u["width"] for u in results], reps).astype(float)
    errors = {k: np.concatenate([u[f"rel_error_{k}"] for u in results])
              for k in ("fro", "max")}
    fits = {k: diagnostics.fit_power_law(widths, e)
            for k, e in errors.items()}
    fit = fits[config.error_norm]
    ratios = np.concatenate([u["lambda_min_ratio"] for u in results])
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
        f"{config.lambda_fraction:g} lambda_0 for m >= {m_star_text} "
        f"(n={config.n}, d={config.d}, lambda_0={lam0:.3g}, "
        f"{config.reps} reps)"
    )
    check_list = checks(config)
    passed = verdicts.evaluate(check_list, measured)
    expectation = (verdicts.criteria_text(check_list)
                   + f" (Lemma 6 scale n log(n/delta)/lambda_0 = "
                   f"{lemma6_scale:.3g})")
    return r.finish(
        passed=all(passed.values()),
        checks=passed,
        details={"check_kinds": verdicts.kinds(check_list)},
        measured=measured,
        measured_text=text,
        expectation=expectation,
        figures=figures,
        title=TITLE,
    )


def _plot(r: Run, config, fits, m_star) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  # Per-repetition lines (the per-unit lines hold lists).
  records = [rec for rec in r.records() if "rep" in rec]
  series = []
  for k, label, color in (("fro", "Frobenius", "C0"),
                          ("max", "max-abs", "C1")):
    (xs, ys), = plots.series_from_records(records, "width",
                                          f"rel_error_{k}").values()
    ux, mean, _, _ = plots.mean_by_x(xs, ys)
    fit = fits[k]
    series += [
        plots.Series(xs, ys, None, "scatter", color=color),
        plots.Series(ux, mean, f"{label} (mean over reps)", color=color),
        plots.Series(ux, fit.predict(ux),
                     f"{label} fit: m^({fit.exponent:.3f} +- "
                     f"{fit.exponent_stderr:.3f})", "dashed", color=color),
    ]
  first = fits[config.error_norm]
  ux = np.unique([rec["width"] for rec in records]).astype(float)
  ref = first.predict(ux[:1])[0] * (ux / ux[0]) ** config.expected_exponent
  series.append(plots.Series(ux, ref,
                             f"expected slope {config.expected_exponent:g}",
                             "dashed", color="gray"))
  f1 = "gram_error.png"
  plots.line_plot(r.path(f1), series, xlabel="width m",
                  ylabel="||G(0) - G_inf|| / ||G_inf||",
                  title=f"C5: G(0) -> G_inf (n={config.n}, d={config.d})",
                  logx=True, logy=True, xticks=ux)
  (xs, ys), = plots.series_from_records(records, "width",
                                        "lambda_min_ratio").values()
  ux, mean, _, _ = plots.mean_by_x(xs, ys)
  f2 = "lambda_min.png"
  plots.line_plot(
      r.path(f2),
      [plots.Series(xs, ys, "repetitions", "scatter", color="C0"),
       plots.Series(ux, mean, "mean", color="C0")],
      xlabel="width m", ylabel="lambda_min(G(0)) / lambda_0",
      title="C5: Lemma 6, lambda_min(G(0)) >= (3/4) lambda_0",
      logx=True, xticks=ux,
      hlines=[(config.lambda_fraction,
               f"Lemma 6: {config.lambda_fraction:g} lambda_0")],
      vlines=[] if m_star is None else [(m_star, f"m* = {m_star:.0f}")],
  )
  return [f1, f2]

"""C9: the generalization measure ``sqrt(2 y^T G_inf^{-1} y / n)`` separates
true from random labels and grows with label noise (Theorem 6).

Theorem 6 (``docs/math.md``, "The theorems"): with probability ``1 - delta``
the population loss of the network trained to fit ``y`` (a loss in ``[0, 1]``,
1-Lipschitz, e.g. the ramp loss, which bounds the 0-1 error) is at most

    sqrt(2 y^T G_inf^{-1} y / n) + 3 sqrt(log(6 / delta) / (2 n)) + eps.

Data: scikit-learn's 8x8 digits 4 vs 9 (``+-1`` targets). Label noise flips
exactly ``round(p n)`` training labels, random labels draw each uniformly,
test labels stay true (Zhang et al. 2017); repetition ``rep`` uses seed
``seed + rep``. Flipping ``p`` and ``1 - p`` give mirror images (``y ->
-y``, which leaves the measure unchanged), so the sweep is ``p`` in ``[0,
1/2]``; ``p = 1`` checks the invariance. ``"centred"`` inputs subtract the
pixels' training mean before normalising the rows (raw pixels are
non-negative: mean cosine 0.71), ``"raw"`` do not; the first preprocessing
is judged (whole sweep), the others reported (true and random labels).

Measured per condition and repetition: the measure, the bound (without
``eps``), the test error of the infinite-width net trained to zero loss from
``u(0) = 0`` (the kernel interpolant ``G_inf(x, X) G_inf^{-1} y``,
``docs/math.md``, "Linearised dynamics"), and a finite
``two_layer_relu(width)`` trained by exact NGD: its errors and Theorem 6's
finite-width chain (Lemmas 11 and 12, eqn. 72).

At the main task's ``n = 256`` the bound's second term alone is 0.27, so
the bound sits near or above 1 and cannot speak for a loss in ``[0, 1]``.
The bound is therefore also measured where ``n`` is larger: a binary task
over all ten digits (``digit < bound_split`` is ``+1``), true and random
labels, at each ``n`` of ``bound_ns`` up to every training image, with the
kernel interpolant's test error beside it and the measure's fitted trend in
``n`` (and the ``n`` where that trend would bring the bound below 1).
``bound_holds`` judges the bound at the largest ``n``, as measured.

Settings and presets: ``configs/generalization.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import generalization as settings
from experiments import common
from ngdjax import (
  data,
  diagnostics,
  kernels,
  linearized,
  models,
  normalize_rows,
)
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key
from ngdjax.optim import ngd

RANDOM = "random"
TRUE = "noise=0"


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _train(model, params, x, y, x_test, steps, damping, lr):
  """``steps`` NGD steps; the losses along the way and the final outputs."""
  opt = ngd(model, learning_rate=lambda count: lr, damping=damping)

  def body(carry, _):
    p, s = carry
    p, s, info = opt.step(p, s, x, y)
    return (p, s), info["residual_norm"]

  (p, _), norms = jax.lax.scan(body, (params, opt.init(params)), None,
                               length=steps)
  dw = p["W"] - params["W"]
  return (norms, model.apply(p, x), model.apply(p, x_test),
          jnp.max(jnp.linalg.norm(dw, axis=1)), jnp.linalg.norm(dw))


def _conditions(config) -> list[str]:
  return [f"noise={float(p):g}" for p in config.label_noise] + [RANDOM]


def _inputs(ds, prep: str):
  """Training and test inputs: unit rows of the raw or centred pixels."""
  x, x_test = (np.asarray(a, np.float64) for a in (ds.x_train, ds.x_test))
  if prep == "centred":
    mean = x.mean(axis=0, keepdims=True)
    x, x_test = x - mean, x_test - mean
  return tuple(jnp.asarray(normalize_rows(a), ds.y_train.dtype)
               for a in (x, x_test))


def _sweep(config) -> list[float]:
  """The noise fractions in ``[0, 1/2]``, increasing."""
  return sorted(float(p) for p in config.label_noise if p <= 0.5)


def _validate(config) -> None:
  sweep = _sweep(config)
  if len(sweep) < 2 or sweep[0] != 0.0:
    raise ValueError("config.label_noise needs 0 and at least one more "
                     "fraction in (0, 1/2]")


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """One unit per (preprocessing, labels, repetition): the whole sweep for
  the judged (first) preprocessing, true and random labels for the others;
  the figures."""
  # Equal models hash equal, so reruns reuse _train's compiled code.
  model = models.two_layer_relu(int(config.width), nu=float(config.nu))
  first, *others = config.preprocessing
  units = ([(first, c, rep) for rep in range(config.reps)
            for c in _conditions(config)]
           + [(prep, c, rep) for prep in others for rep in range(config.reps)
              for c in (TRUE, RANDOM)])
  sizes = [(n, rep) for n in config.bound_ns for rep in range(config.reps)]
  r.start_progress(len(units) + len(sizes), interval_s=2.0)
  results = [r.unit(unit_key(prep=prep, rep=rep, labels=c),
                    functools.partial(_unit, r, config, model, prep, c, rep))
             for prep, c, rep in units]
  # Theorem 6 where its bound can speak: a larger n.
  bound_runs = [r.unit(unit_key(task="all_digits", n=n, rep=rep),
                       functools.partial(_bound_unit, config, first, n, rep))
                for n, rep in sizes]
  return _summarise(r, config, results, bound_runs)


def _kernel_fit(x, y, x_test, y_test, g_inf) -> tuple[float, float]:
  """Theorem 6's measure and the test error of the infinite-width net
  trained to zero loss from ``u(0) = 0``: the kernel interpolant
  ``u_test = G_inf(x_test, x) G_inf^{-1} y``; ``y`` is ``(n, 1)``,
  ``y_test`` ``(n_test,)`` in ``{-1, 1}``."""
  measure = float(diagnostics.generalization_measure(x, y, g_inf=g_inf))
  u_inf = linearized.predict(kernels.relu_gram_inf(x_test, x), g_inf,
                             -y, jnp.zeros(x_test.shape[0], y.dtype),
                             jnp.array([jnp.inf]), method="ngd")[-1]
  return measure, float(jnp.mean(jnp.sign(u_inf) != y_test))


def _bound_unit(config, prep, n, rep, log) -> dict[str, Any]:
  """Theorem 6 on the binary task over all ten digits (``digit <
  bound_split`` is ``+1``) with ``n`` training images (0: all): the
  measure and bound for true and for random labels, and the kernel
  interpolant's test error."""
  del log
  ds = data.digits(classes=tuple(range(10)), targets="onehot",
                   test_fraction=config.test_fraction,
                   seed=int(config.seed) + rep, n_train=int(n) or None,
                   normalize=False)
  x, x_test = _inputs(ds, prep)

  def signs(labels):
    return jnp.where(jnp.asarray(labels) < config.bound_split, 1.0,
                     -1.0).astype(x.dtype)

  y, y_test = signs(ds.labels_train)[:, None], signs(ds.labels_test)
  g_inf = kernels.relu_gram_inf(x)
  measure, test_error_inf = _kernel_fit(x, y, x_test, y_test, g_inf)
  rng = np.random.default_rng(int(config.seed) + rep)
  y_random = jnp.asarray(rng.choice([-1.0, 1.0], size=y.shape), x.dtype)
  measure_random = float(diagnostics.generalization_measure(
      x, y_random, g_inf=g_inf))
  size = x.shape[0]
  second = 3 * math.sqrt(math.log(6 / config.delta) / (2 * size))
  return {"prep": prep, "rep": rep, "n_train": size,
          "n_test": int(x_test.shape[0]), "measure": measure,
          "bound": measure + second, "measure_random": measure_random,
          "test_error_inf": test_error_inf,
          "positive_fraction": float(jnp.mean(y > 0))}


def _unit(r: Run, config, model, prep, condition, rep,
          log) -> dict[str, Any]:
  noise = None if condition == RANDOM else float(condition.split("=")[1])
  options = ({"random_labels": True} if noise is None
             else {"label_noise": noise})
  ds = data.digits(classes=tuple(config.classes), targets="pm1",
                   test_fraction=config.test_fraction,
                   seed=int(config.seed) + rep, n_train=config.n_train,
                   normalize=False, **options)
  x, x_test = _inputs(ds, prep)
  ds = ds._replace(x_train=x, x_test=x_test)
  y = ds.y_train
  n = x.shape[0]
  g_inf = kernels.relu_gram_inf(x)
  # numpy's LAPACK eigvalsh: several times faster than jnp's on CPU here.
  lam0 = float(np.linalg.eigvalsh(np.asarray(g_inf, np.float64))[0])
  measure, test_error_inf = _kernel_fit(x, y, ds.x_test, ds.y_test[:, 0],
                                        g_inf)
  # The initialisation depends on the repetition only: every condition of a
  # repetition trains the same net on the same inputs.
  params0 = model.init(r.key("init", f"rep={rep}"), x.shape[1])
  u0 = model.apply(params0, x)
  norms, u_train, u_test, neuron_max, distance = _train(
      model, params0, x, y, ds.x_test, int(config.train_steps),
      float(config.ngd_damping), jnp.asarray(config.ngd_lr, y.dtype))
  # Lemma 12 / eqn. (72): the infinite-width distance sqrt(r0^T G_inf^-1
  # r0), r0 = y - u(0); and the lemma's sqrt(y^T G_inf^-1 y).
  kernel_distance_r0 = float(diagnostics.generalization_measure(
      x, y - u0, g_inf=g_inf)) * math.sqrt(n / 2)
  # Lemma 11: max_r ||w_r - w_r(0)|| <= 4 sqrt(n) ||y - u(0)|| / (sqrt(m)
  # lambda_0).
  lemma11 = (4 * math.sqrt(n) * float(jnp.linalg.norm(y - u0))
             / (math.sqrt(int(config.width)) * lam0))
  norms = np.asarray(norms, np.float64)
  y_norm = float(jnp.linalg.norm(y))
  fit = float(jnp.linalg.norm(u_train - y)) / y_norm
  for k, v in enumerate([float(s / y_norm) for s in norms] + [fit]):
    log(step=k, rep=rep, labels=condition, prep=prep, residual_rel=v)
  second = 3 * math.sqrt(math.log(6 / config.delta) / (2 * n))
  return {
      "prep": prep, "labels": condition, "rep": rep, "lambda_0": lam0,
      "neuron_distance_max": float(neuron_max), "lemma11_bound": lemma11,
      "distance": float(distance), "kernel_distance_r0": kernel_distance_r0,
      "kernel_distance_y": measure * math.sqrt(n / 2), "noise": noise,
      "wrong_labels": float(np.mean(ds.labels_train
                                    != ds.clean_labels_train)),
      "measure": measure, "bound": measure + second,
      "test_error_inf": test_error_inf, "fit": fit,
      "train_error": float(jnp.mean(jnp.sign(u_train) != y)),
      "test_error": float(jnp.mean(jnp.sign(u_test) != ds.y_test)),
      "n_train": n, "n_test": int(ds.x_test.shape[0]),
  }


def checks(config) -> tuple[verdicts.Check, ...]:
  """On the judged preprocessing, ``config.preprocessing[0]``."""
  tol = config.lemma12_rtol
  return (
      verdicts.Check("separates", (("separation_gap", ">", 0.0),),
                     "smallest random-label measure > largest true-label "
                     "one"),
      verdicts.Check("grows_with_noise", (("noise_step_min", ">", 0.0),),
                     "mean measure strictly increasing in p on [0, 1/2]"),
      verdicts.Check(
          "test_error_grows",
          (("error_gap_random", ">=", config.min_error_gap),
           ("error_gap_noise", ">=", config.min_error_gap)),
          "kernel interpolant's test error with random labels and at the "
          f"largest p <= 1/2 >= true-label error + {config.min_error_gap:g}"),
      verdicts.Check(
          "bound_holds",
          (("bound_large_n_max", "<", 1.0),
           ("kernel_bound_margin_large_n_min", ">=", 0.0),
           ("kernel_bound_margin_min", ">=", 0.0),
           ("finite_fitted_true_runs", ">=", 1),
           ("finite_bound_margin_min", ">=", 0.0)),
          "Theorem 6's bound for true labels at the largest n of the "
          f"all-digits task (digits < {config.bound_split} vs the rest) is "
          "< 1 (not vacuous for a [0, 1] loss) and above the kernel "
          "interpolant's test error there; on the main task above the test "
          "error of the kernel interpolant and of every finite net that fits "
          "(>= 1 such run)",
          verdicts.THEOREM),
      verdicts.Check(
          "lemma11",
          (("finite_fitted_true_runs", ">=", 1),
           ("lemma11_ratio_max", "<=", 1.0)),
          "max_r ||w_r - w_r(0)|| <= 4 sqrt(n) ||y - u(0)|| / (sqrt(m) "
          "lambda_0) in every fitted true-label run", verdicts.THEOREM),
      verdicts.Check(
          "lemma12",
          (("finite_fitted_true_runs", ">=", 1),
           ("lemma12_ratio_max", "<=", 1.0 + tol),
           ("lemma12_ratio_min", ">=", 1.0 - tol)),
          f"||w - w(0)|| within {tol:g} (relative) of sqrt(r0^T G_inf^-1 "
          "r0), r0 = y - u(0) (eqn. 72), in every fitted true-label run"),
  )


def _chain(config, runs) -> dict[str, Any]:
  """Theorem 6's finite-width chain over true-label runs: the fitted finite
  nets' Lemma 11 and 12 ratios and bound margins."""
  true = [u for u in runs if u["labels"] == TRUE]
  fitted = [u for u in true if u["fit"] <= config.fit_tol]
  out = {
      "finite_fitted_true_runs": len(fitted),
      "bound_true_labels_max": max(u["bound"] for u in true),
      "kernel_bound_margin_min": min(u["bound"] - u["test_error_inf"]
                                     for u in true),
      "lemma11_ratio_all_max": max(u["neuron_distance_max"]
                                   / u["lemma11_bound"] for u in true),
      "lemma12_ratio_all": [u["distance"] / u["kernel_distance_r0"]
                            for u in true],
      "lemma12_ratio_y_all": [u["distance"] / u["kernel_distance_y"]
                              for u in true],
  }
  if fitted:
    ratios = [u["distance"] / u["kernel_distance_r0"] for u in fitted]
    out.update({
        "finite_bound_margin_min": min(u["bound"] - u["test_error"]
                                       for u in fitted),
        "lemma11_ratio_max": max(u["neuron_distance_max"] / u["lemma11_bound"]
                                 for u in fitted),
        "lemma12_ratio_max": max(ratios),
        "lemma12_ratio_min": min(ratios),
    })
  return out


def _bound_trend(config, runs) -> tuple[dict[str, Any], str]:
  """The all-digits task's measured figures per n and the report's text."""
  sizes = sorted({u["n_train"] for u in runs})

  def mean(key, n):
    return float(np.mean([u[key] for u in runs if u["n_train"] == n]))

  largest = [u for u in runs if u["n_train"] == sizes[-1]]
  fit = diagnostics.fit_power_law([u["n_train"] for u in runs],
                                  [u["measure"] for u in runs])
  measured = {
      "bound_ns": sizes,
      "bound_by_n": [mean("bound", n) for n in sizes],
      "bound_measure_by_n": [mean("measure", n) for n in sizes],
      "bound_measure_random_by_n": [mean("measure_random", n)
                                    for n in sizes],
      "bound_test_error_inf_by_n": [mean("test_error_inf", n)
                                    for n in sizes],
      "bound_large_n": sizes[-1],
      "bound_large_n_max": max(u["bound"] for u in largest),
      "kernel_bound_margin_large_n_min": min(
          u["bound"] - u["test_error_inf"] for u in largest),
      "bound_measure_exponent": fit.exponent,
      "bound_measure_exponent_stderr": fit.exponent_stderr,
      "bound_below_one_n_extrapolated": _below_one(config, fit),
  }
  text = (
      f"; Theorem 6 on all digits (< {config.bound_split} vs the rest, true "
      "labels, mean of "
      f"{len(largest)}): bound " + ", ".join(
          f"{b:.3g} at n={n}" for n, b in zip(
              sizes, measured["bound_by_n"], strict=True))
      + f" (kernel test error {measured['bound_test_error_inf_by_n'][-1]:.3f}"
      f", random-label measure {measured['bound_measure_random_by_n'][-1]:.3g}"
      f" at n={sizes[-1]}); measure ~ n^({fit.exponent:.3f} +- "
      f"{fit.exponent_stderr:.3f})")
  below = measured["bound_below_one_n_extrapolated"]
  text += (", so the bound would fall below 1 near n ~ "
           f"{below:.2g} (extrapolated)" if below is not None
           else ", which never brings the bound below 1")
  return measured, text


def _below_one(config, fit) -> float | None:
  """The smallest ``n`` (on a geometric grid up to ``1e9``) where the fitted
  measure plus Theorem 6's second term is below 1; ``None`` if none."""
  for n in np.geomspace(2.0, 1e9, 2000):
    second = 3 * math.sqrt(math.log(6 / config.delta) / (2 * n))
    if float(fit.predict(np.array([n]))[0]) + second < 1.0:
      return float(n)
  return None


def _summarise(r: Run, config, all_results, bound_runs) -> Outcome:
  from scipy.stats import spearmanr  # 0.5 s to import: only when needed

  primary = config.preprocessing[0]
  results = [u for u in all_results if u["prep"] == primary]
  conds = _conditions(config)

  def values(condition, key, runs=results):
    return np.array([u[key] for u in runs if u["labels"] == condition])

  def per(key, reduce=np.mean):
    return {c: float(reduce(values(c, key))) for c in conds}

  swept = [f"noise={p:g}" for p in _sweep(config)]
  mean_measure = per("measure")
  mean_error = per("test_error_inf")
  mean_error_net = per("test_error")
  fits = {c: bool(np.all(values(c, "fit") <= config.fit_tol)) for c in conds}
  # p = 1 is left out of the rank correlation: its labels are the mirror
  # image of the true ones, so its error against the true labels is ~1.
  ranked = [u for u in results if u["labels"] != "noise=1"]
  rank = float(spearmanr([u["measure"] for u in ranked],
                         [u["test_error_inf"] for u in ranked]).statistic)
  measured = {
      "conditions": conds,
      "measure_mean": list(mean_measure.values()),
      "measure_std": list(per("measure", np.std).values()),
      "test_error_inf_mean": list(mean_error.values()),
      "test_error_inf_std": list(per("test_error_inf", np.std).values()),
      "finite_net_test_error_mean": list(mean_error_net.values()),
      "finite_net_fit_max": list(per("fit", np.max).values()),
      "bound_true_labels": float(values(TRUE, "bound").mean()),
      "spearman_measure_vs_test_error": rank,
      "n_train": results[0]["n_train"], "n_test": results[0]["n_test"],
      "preprocessing": primary,
      "separation_gap": float(values(RANDOM, "measure").min()
                              - values(TRUE, "measure").max()),
      "noise_step_min": float(np.min(np.diff([mean_measure[c]
                                              for c in swept]))),
      "error_gap_random": mean_error[RANDOM] - mean_error[TRUE],
      "error_gap_noise": mean_error[swept[-1]] - mean_error[TRUE],
      **_chain(config, results),
  }
  others = {}
  for prep in config.preprocessing[1:]:
    runs = [u for u in all_results if u["prep"] == prep]
    ch = _chain(config, runs)
    others[prep] = {
        "measure_true_mean": float(values(TRUE, "measure", runs).mean()),
        "measure_random_mean": float(values(RANDOM, "measure", runs).mean()),
        "test_error_inf_true_mean": float(
            values(TRUE, "test_error_inf", runs).mean()),
        **{k: ch[k] for k in ("bound_true_labels_max",
                              "finite_fitted_true_runs",
                              "lemma11_ratio_all_max", "lemma12_ratio_all")},
    }
  measured["other_preprocessing"] = others
  if "noise=1" in mean_measure:
    gaps = [abs(a - b) / b for a, b in zip(values("noise=1", "measure"),
                                           values(TRUE, "measure"),
                                           strict=True)]
    measured["flip_all_relative_gap"] = float(max(gaps))
  trend, trend_text = _bound_trend(config, bound_runs)
  measured.update(trend)
  figures = _plot(r, config) + [_plot_bound(r, config, trend)]

  def fmt(table, spec=".3g"):
    return ", ".join(f"{c.replace('noise=', 'p=')}: {v:{spec}}"
                     for c, v in table.items())

  def ratios(values):
    return ", ".join(f"{v:.3f}" for v in values)

  bound = measured["bound_true_labels"]
  text = (
      f"measure (mean of {config.reps}) {fmt(mean_measure)}; test "
      f"error of the infinite-width net (kernel interpolant, true test "
      f"labels) {fmt(mean_error, '.3f')}; Theorem 6 bound for true "
      f"labels {bound:.4g}{' (vacuous, >= 1)' if bound >= 1 else ''} "
      f"(delta={config.delta:g}); Spearman(measure, test error; p <= 1/2 and "
      f"random) {rank:.2f}; "
      f"finite net (m={config.width}, NGD eta={config.ngd_lr:g}, "
      f"{config.train_steps} steps): fits "
      f"{fmt({c: 'yes' if v else 'no' for c, v in fits.items()}, 's')}"
      f", test error {fmt(mean_error_net, '.2f')} (digits "
      f"{config.classes[0]} vs {config.classes[1]}, "
      f"n={measured['n_train']}, n_test={measured['n_test']})")
  if "flip_all_relative_gap" in measured:
    text += (f"; p=1 (y -> -y) measure equals p=0 to "
             f"{measured['flip_all_relative_gap']:.1g}")
  text += (
      f"; inputs {primary}; finite-width chain (true labels, "
      f"{measured['finite_fitted_true_runs']} of {config.reps} finite nets "
      f"fit): Lemma 11 per-neuron distance / bound max "
      f"{measured['lemma11_ratio_all_max']:.3g}, Lemma 12 ||w - w(0)|| / "
      f"sqrt(r0^T G_inf^-1 r0) {ratios(measured['lemma12_ratio_all'])} "
      f"(/ sqrt(y^T G_inf^-1 y): {ratios(measured['lemma12_ratio_y_all'])})")
  for prep, o in others.items():
    text += (f"; inputs {prep}: measure true {o['measure_true_mean']:.3g}, "
             f"random {o['measure_random_mean']:.3g}, bound "
             f"{o['bound_true_labels_max']:.3g}, kernel test error "
             f"{o['test_error_inf_true_mean']:.3f}, Lemma 12 ratio "
             f"{ratios(o['lemma12_ratio_all'])}")
  text += trend_text
  return Outcome(measured, text, figures=figures,
                 details={"observations": {"finite_net_fits": fits},
                          "runs": all_results, "bound_runs": bound_runs})


def _plot_bound(r: Run, config, trend) -> str:
  """Theorem 6's bound, the measure and the test error against ``n``."""
  ns = trend["bound_ns"]
  series = [
      plots.Series(ns, trend["bound_by_n"], "Theorem 6 bound (true labels)",
                   color="C0"),
      plots.Series(ns, trend["bound_measure_by_n"],
                   "measure sqrt(2 y^T G_inf^{-1} y / n)", "dashed",
                   color="C0"),
      plots.Series(ns, trend["bound_measure_random_by_n"],
                   "measure, random labels", "dashed", color="C3"),
      plots.Series(ns, trend["bound_test_error_inf_by_n"],
                   "kernel interpolant's test error", color="C2"),
  ]
  plots.line_plot(
      r.path("bound_vs_n.png"), series, xlabel="training images n",
      ylabel="loss scale", logx=True, xticks=ns,
      title=(f"C9: Theorem 6 on all digits (< {config.bound_split} vs the "
             f"rest), delta={config.delta:g}"),
      hlines=[(1.0, "1: the bound's edge for a [0, 1] loss")])
  return "bound_vs_n.png"


def _plot(r: Run, config) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  primary = config.preprocessing[0]
  records = [rec for rec in r.records()
             if rec.get("prep", primary) == primary]
  units = [rec for rec in records if "measure" in rec and "labels" in rec]
  noisy = [rec for rec in units if rec["labels"] != RANDOM]
  xs = np.array([rec["noise"] for rec in noisy])
  n = units[0]["n_train"]
  second = 3 * math.sqrt(math.log(6 / config.delta) / (2 * n))
  net_x, net_mean, _, _ = plots.mean_by_x(
      xs, np.array([plots.as_float(rec["test_error"]) for rec in noisy]))
  net = plots.Series(net_x, net_mean, f"finite net, m={config.width}, NGD "
                     f"{config.train_steps} steps (mean)", "dashed",
                     color="C7")
  for fname, key, ylabel, title, hlines, extra in (
      ("measure.png", "measure", "sqrt(2 y^T G_inf^{-1} y / n)",
       f"C9: Theorem 6's measure on digits {config.classes[0]} vs "
       f"{config.classes[1]} (n={n}; bound adds {second:.2f})", [], []),
      ("test_error.png", "test_error_inf", "test error (true test labels)",
       "C9: test error of the infinite-width net trained to zero loss "
       "(kernel interpolant)", [(0.5, "chance (0.5)")], [net])):
    ys = np.array([plots.as_float(rec[key]) for rec in noisy])
    in_sweep = xs <= 0.5
    ux, mean, std, _ = plots.mean_by_x(xs[in_sweep], ys[in_sweep])
    rand = np.array([plots.as_float(rec[key]) for rec in units
                     if rec["labels"] == RANDOM])
    series = [
        plots.Series(xs, ys, "repetitions", "scatter", color="C0"),
        plots.Series(ux, mean, "label noise p (mean +- std)", yerr=std,
                     color="C0"),
        plots.Series([0.0, 1.0], [rand.mean()] * 2,
                     f"random labels (mean of {rand.size})", "dashed",
                     color="C3"),
    ]
    if np.any(xs == 1.0):
      series.append(plots.Series(
          [1.0], [ys[xs == 1.0].mean()],
          "p = 1: every label flipped (y -> -y)", "line", color="C2"))
    plots.line_plot(r.path(fname), series + extra,
                    xlabel="fraction p of training labels flipped",
                    ylabel=ylabel, title=title,
                    xticks=sorted(set(_sweep(config)) | {1.0}),
                    hlines=hlines)

  curves = plots.series_from_records(records, "step", "residual_rel",
                                     group="labels")
  series = []
  for i, cond in enumerate(_conditions(config)):
    ux, mean, _, _ = plots.mean_by_x(*curves[cond])
    keep = mean > 0
    series.append(plots.Series(ux[keep], mean[keep],
                               cond.replace("noise=", "noise p="),
                               color=f"C{i}"))
  plots.line_plot(r.path("training_residual.png"), series,
                  xlabel="NGD step k",
                  ylabel="||u(k) - y|| / ||y|| (mean over repetitions)",
                  title=f"C9: the finite nets trained by NGD (eta="
                  f"{config.ngd_lr:g}, m={config.width}): observation",
                  logy=True,
                  hlines=[(config.fit_tol, f"fit_tol {config.fit_tol:g}")])
  return ["measure.png", "test_error.png", "training_residual.png"]


SPEC = Experiment(
    name="generalization", claim="C9",
    title=("Generalization measure sqrt(2 y^T G_inf^{-1} y / n): true vs "
           "random labels and label noise on digits 4 vs 9 (Theorem 6)"),
    row="Generalization measure (Theorem 6)",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("len(classes)", "in", (2,), "two digits, +-1 targets"),
           Rule("each(label_noise)", ">=", 0),
           Rule("each(label_noise)", "<=", 1),
           Rule("label_noise", "distinct"),
           Rule("width", ">=", "n_train",
                "the nets must be able to interpolate"),
           Rule("reps", ">=", 1), Rule("train_steps", ">=", 1),
           Rule("len(preprocessing)", ">=", 1),
           Rule("each(preprocessing)", "in", ("centred", "raw")),
           Rule("preprocessing", "distinct"),
           Rule("len(bound_ns)", ">=", 2, "a trend in n"),
           Rule("each(bound_ns)", ">=", 0), Rule("bound_ns", "distinct"),
           Rule("bound_split", ">", 0), Rule("bound_split", "<", 10)),
    validate=_validate)


if __name__ == "__main__":
  common.main(SPEC)

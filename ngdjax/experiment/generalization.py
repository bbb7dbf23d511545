"""C9: the generalization measure ``sqrt(2 y^T G_inf^{-1} y / n)`` separates
true from random labels and grows with label noise (Theorem 6).

MATH.md 3, Theorem 6: with probability ``1 - delta`` the population loss of
the network trained to fit ``y`` (a loss bounded in ``[0, 1]`` and
1-Lipschitz, e.g. the ramp loss, which bounds the 0-1 error) is at most

    sqrt(2 y^T G_inf^{-1} y / n) + 3 sqrt(log(6 / delta) / (2 n)) + eps.

The data-dependent first term (``ngdjax.diagnostics.generalization_measure``)
is small when ``y`` lies along the top eigenvectors of ``G_inf`` (labels the
kernel finds smooth) and large for labels it cannot predict: random labels,
or true labels with a fraction flipped.

Data: scikit-learn's 8x8 digits 4 vs 9 (``ngdjax.data.digits``: unit rows,
``+-1`` targets, stratified split with ``test_fraction`` held out, ``n_train``
training examples). Label noise flips exactly ``round(p n)`` training labels;
random labels draw every training label uniformly; the test labels are
always the true ones (Zhang et al. 2017's protocol). Each repetition ``rep``
uses ``seed + rep`` for the split, the subsample and the corruption; within
a repetition every condition shares the inputs.

For two classes, flipping a fraction ``p`` and ``1 - p`` of the labels give
label vectors that are mirror images in distribution (``y -> -y``), and the
measure is invariant under ``y -> -y``. So the noise sweep over which the
measure should grow is ``p`` in ``[0, 1/2]`` (at ``p = 1/2`` the labels are
independent of the images, as with random labels); ``p = 1`` (every label
flipped, exactly ``-y``) is measured as a check of that invariance, and its
test error against the true labels is the mirror of the clean one.

Measured, for each condition (``label_noise`` fractions and random labels)
and repetition:

* the measure, and the Theorem 6 bound with ``delta`` (without ``eps``);
* the trained net in the theorem's regime: the infinite-width limit of the
  two-layer net trained to zero loss from ``u(0) = 0``, the kernel
  interpolant ``u(x) = G_inf(x, X) G_inf^{-1} y``
  (``ngdjax.linearized.predict`` at ``t = inf`` with the cross-kernel
  ``relu_gram_inf(x_test, x)``; MATH.md 6); its 0-1 test error against the
  true test labels;
* a finite net, ``two_layer_relu(width)`` trained by exact NGD
  (``ngdjax.optim.ngd``, ``eta = ngd_lr``, ``train_steps`` steps) from a
  random initialisation: its relative training residual ``||u - y|| /
  ||y||``, training and test errors.

Inputs: the raw 8x8 pixels are non-negative, so unit rows have mean cosine
0.71 and the +-1 labels fall in ``G_inf``'s small eigen-directions;
``preprocessing = "centred"`` subtracts the training mean of the pixels
before normalising the rows (judged), ``"raw"`` normalises the raw pixels
(reported, true and random labels).

Theorem 6's finite-width chain, for the finite net trained by NGD from
``w(0)``: Lemma 11's per-neuron distance ``max_r ||w_r - w_r(0)|| <= 4
sqrt(n) ||y - u(0)|| / (sqrt(m) lambda_0)``, Lemma 12's total distance
against the infinite-width one ``sqrt(r0^T G_inf^-1 r0)`` (eqn. 72, ``r0 =
y - u(0)``; the lemma writes ``y^T G_inf^-1 y``, also reported), and the
trained net's test error against the bound, beside the kernel
interpolant's.

Pass criterion (stated before measuring; checks as data, ``checks``,
``verdict``; on the judged preprocessing):

* ``separates`` (observation): the smallest measure with random labels
  exceeds the largest with true labels (over repetitions);
* ``grows_with_noise`` (observation): the measure's mean over repetitions
  increases strictly along the noise fractions in ``[0, 1/2]``;
* ``test_error_grows`` (observation): the infinite-width net's mean test
  error with random labels, and at the largest noise fraction in ``[0,
  1/2]``, exceeds the true-label one by at least ``min_error_gap``;
* ``bound_holds`` (theorem): the bound for true labels is below 1 (a
  bound >= 1 on a loss in ``[0, 1]`` cannot be broken, so it FAILs rather
  than passing vacuously), and is above the test error of the kernel
  interpolant in every repetition and of every finite net that fits
  (``||u - y|| <= fit_tol ||y||``; at least one must);
* ``lemma11`` (theorem): Lemma 11's bound holds in every fitted true-label
  run (at least one);
* ``lemma12`` (observation of eqn. 72): ``||w - w(0)||`` lies within
  ``lemma12_rtol`` (relative) of ``sqrt(r0^T G_inf^-1 r0)`` in every
  fitted true-label run.

Observation without a criterion (``details["observations"]``): whether the
finite net fits, per condition, and its test error.

Changed after the first measurement (stated so that it is not hidden): the
first version trained only the finite net (small preset: m = 2048, NGD at
``eta = 1``, 10 steps), required every run to interpolate
(``trained_to_zero``) and took the test errors from it. Seen: with true
labels (and ``p = 1``) it interpolates (residual below 1e-15, test error 0.0
against the true labels, 0.99-1.0 for ``p = 1``), but with ``p = 0.2, 0.5``
and random labels NGD diverges (final residual 1.6 .. 15 ``||y||``; also
0.21 .. 0.58 after 60 steps at ``eta = 0.5`` or ``0.25`` or with
Levenberg-Marquardt damping, m = 2048; m = 8192 at ``eta = 1`` diverges as
well). That is the theory's own prediction, not a bug: the weights must move
``sqrt(r^T G^{-1} r)`` (``r = u(0) - y``; for ``u(0) = 0`` this is the
measure times ``sqrt(n / 2)``, about 6 times larger for noisy labels than
for true ones), so the width Theorem 3 needs grows with the measure. The
test errors of the criterion are therefore those of the infinite-width net,
the object of Theorem 6; the finite net is reported beside them.

Results of both presets: ``configs/generalization.py``.
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

from ngdjax import data, diagnostics, kernels, linearized, models
from ngdjax._src.linalg import normalize_rows
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.runner import Run, unit_key
from ngdjax.optim import ngd

NAME = "generalization"
CLAIM = "C9"
TITLE = ("Generalization measure sqrt(2 y^T G_inf^{-1} y / n): true vs random "
         "labels and label noise on digits 4 vs 9 (Theorem 6)")
RANDOM = "random"


def default_config() -> ml_collections.ConfigDict:
  """The full run (its fields are the experiment's schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.classes = (4, 9)
  c.n_train = 256  # training examples (of 271 after the split)
  c.test_fraction = 0.25
  c.label_noise = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)  # fractions flipped
  c.reps = 3  # repetitions: split, subsample and corruption seeds
  c.width = 4096  # hidden units of the trained net
  c.nu = 1.0
  c.ngd_lr = 1.0
  c.ngd_damping = 0.0
  c.train_steps = 10
  c.delta = 0.1  # Theorem 6's failure probability (the bound's 2nd term)
  c.fit_tol = 1e-3  # finite net fits if ||u - y|| <= this ||y||
  c.min_error_gap = 0.1  # test_error_grows
  # Inputs: "centred" subtracts the training mean of the raw pixels before
  # the rows are normalised, "raw" normalises the raw (non-negative)
  # pixels. The first is judged (the whole sweep); the others are reported
  # (true and random labels).
  c.preprocessing = ("centred", "raw")
  # Lemma 12 / eqn. (72): ||w - w(0)|| within this of sqrt(r0^T G_inf^-1 r0).
  c.lemma12_rtol = 0.1
  return c


@functools.lru_cache(maxsize=16)
def _model(width: int, nu: float) -> models.Model:
  # One Model per (width, nu): a static argument of _train, so reruns and
  # every condition reuse its compiled code.
  return models.two_layer_relu(width, nu=nu)


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


def _units(config) -> list[tuple[str, str, int]]:
  """``(prep, condition, rep)``: the whole sweep for the judged (first)
  preprocessing, true and random labels for the others."""
  preps = list(config.preprocessing)
  out = [(preps[0], c, rep) for rep in range(config.reps)
         for c in _conditions(config)]
  for prep in preps[1:]:
    out += [(prep, c, rep) for rep in range(config.reps)
            for c in ("noise=0", RANDOM)]
  return out


def _inputs(ds, prep: str):
  """Training and test inputs: unit rows of the raw or centred pixels."""
  x, x_test = np.asarray(ds.x_train, np.float64), np.asarray(ds.x_test,
                                                              np.float64)
  if prep == "centred":
    mean = x.mean(axis=0, keepdims=True)
    x, x_test = x - mean, x_test - mean
  dtype = ds.y_train.dtype
  return (jnp.asarray(normalize_rows(x), dtype),
          jnp.asarray(normalize_rows(x_test), dtype))


def _sweep(config) -> list[float]:
  """The noise fractions in ``[0, 1/2]``, increasing."""
  return sorted(float(p) for p in config.label_noise if p <= 0.5)


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs C9 and returns its summary (also written to ``summary.json``)."""
  with Run(workdir, config, default_config(), name=NAME, claim=CLAIM) as r:
    if len(config.classes) != 2:
      raise ValueError(f"config.classes must hold two digits (+-1 targets), "
                       f"got {tuple(config.classes)}")
    noise = [float(p) for p in config.label_noise]
    if any(not 0 <= p <= 1 for p in noise) or len(set(noise)) != len(noise):
      raise ValueError(f"config.label_noise must be distinct fractions in "
                       f"[0, 1], got {tuple(config.label_noise)}")
    sweep = _sweep(config)
    if len(sweep) < 2 or sweep[0] != 0.0:
      raise ValueError("config.label_noise needs 0 and at least one more "
                       "fraction in (0, 1/2]")
    if config.width < config.n_train:
      raise ValueError(f"config.width ({config.width}) must be >= "
                       f"config.n_train ({config.n_train}): the nets must "
                       "be able to interpolate")
    if config.reps < 1 or config.train_steps < 1:
      raise ValueError("config.reps and config.train_steps must be >= 1")
    preps = list(config.preprocessing)
    if not preps or any(p not in ("centred", "raw") for p in preps) or len(
        set(preps)) != len(preps):
      raise ValueError(f'config.preprocessing must list distinct "centred"'
                       f' / "raw", got {tuple(config.preprocessing)}')
    model = _model(int(config.width), float(config.nu))
    units = _units(config)
    r.start_progress(len(units), interval_s=2.0)
    results = [
        r.unit(unit_key(prep=prep, rep=rep, labels=c),
               functools.partial(_measure, r, config, model, prep, c, rep))
        for prep, c, rep in units
    ]
    return _finish(r, config, results)


def _measure(r: Run, config, model, prep, condition, rep,
             log) -> dict[str, Any]:
  if condition == RANDOM:
    options = {"random_labels": True}
  else:
    options = {"label_noise": float(condition.split("=")[1])}
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
  measure = float(diagnostics.generalization_measure(x, y, g_inf))
  # The infinite-width net trained to zero loss from u(0) = 0: the kernel
  # interpolant, u_test = G_inf(x_test, x) G_inf^{-1} y.
  u_inf = linearized.predict(kernels.relu_gram_inf(ds.x_test, x), g_inf,
                             -y, jnp.zeros(ds.x_test.shape[0], y.dtype),
                             jnp.array([jnp.inf]), method="ngd")[-1]
  test_error_inf = float(jnp.mean(jnp.sign(u_inf) != ds.y_test[:, 0]))
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
      x, y - u0, g_inf)) * math.sqrt(n / 2)
  kernel_distance_y = measure * math.sqrt(n / 2)
  # Lemma 11: max_r ||w_r - w_r(0)|| <= 4 sqrt(n) ||y - u(0)|| / (sqrt(m)
  # lambda_0).
  lemma11 = (4 * math.sqrt(n) * float(jnp.linalg.norm(y - u0))
             / (math.sqrt(int(config.width)) * lam0))
  norms = np.asarray(norms, np.float64)
  y_norm = float(jnp.linalg.norm(y))
  fit = float(jnp.linalg.norm(u_train - y)) / y_norm
  for k, v in enumerate(norms):
    log(step=k, rep=rep, labels=condition, prep=prep,
        residual_rel=float(v / y_norm))
  log(step=len(norms), rep=rep, labels=condition, prep=prep,
      residual_rel=fit)
  train_error = float(jnp.mean(jnp.sign(u_train) != y))
  test_error = float(jnp.mean(jnp.sign(u_test) != ds.y_test))
  second = 3 * math.sqrt(math.log(6 / config.delta) / (2 * n))
  return {
      "prep": prep,
      "labels": condition,
      "rep": rep,
      "lambda_0": lam0,
      "neuron_distance_max": float(neuron_max),
      "lemma11_bound": lemma11,
      "distance": float(distance),
      "kernel_distance_r0": kernel_distance_r0,
      "kernel_distance_y": kernel_distance_y,
      "noise": None if condition == RANDOM else options["label_noise"],
      "wrong_labels": float(np.mean(ds.labels_train
                                    != ds.clean_labels_train)),
      "measure": measure,
      "bound": measure + second,
      "test_error_inf": test_error_inf,
      "fit": fit,
      "train_error": train_error,
      "test_error": test_error,
      "n_train": n,
      "n_test": int(ds.x_test.shape[0]),
  }


def checks(config) -> tuple[verdicts.Check, ...]:
  """C9's pass criterion as data on the summary's ``measured`` (the judged
  preprocessing, ``config.preprocessing[0]``)."""
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
          (("bound_true_labels_max", "<", 1.0),
           ("kernel_bound_margin_min", ">=", 0.0),
           ("finite_fitted_true_runs", ">=", 1),
           ("finite_bound_margin_min", ">=", 0.0)),
          "Theorem 6's bound for true labels is < 1 (not vacuous for a "
          "[0, 1] loss) and above the test error of the kernel interpolant "
          "and of every finite net that fits (>= 1 such run)",
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


def verdict(measured, config) -> dict[str, bool]:
  """C9's checks on a measured dict (pure: no experiment is run)."""
  return verdicts.evaluate(checks(config), measured)


def _chain(config, runs) -> dict[str, Any]:
  """Theorem 6's finite-width chain over true-label runs: the fitted finite
  nets' Lemma 11 and 12 ratios and bound margins."""
  true = [u for u in runs if u["labels"] == "noise=0"]
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


def _finish(r: Run, config, all_results) -> dict[str, Any]:
  primary = config.preprocessing[0]
  results = [u for u in all_results if u["prep"] == primary]

  def values(condition, key):
    return np.array([u[key] for u in results if u["labels"] == condition])

  sweep = _sweep(config)
  conds = [f"noise={p:g}" for p in sweep]
  true = "noise=0"
  mean_measure = {c: float(values(c, "measure").mean())
                  for c in _conditions(config)}
  mean_error = {c: float(values(c, "test_error_inf").mean())
                for c in _conditions(config)}
  mean_error_net = {c: float(values(c, "test_error").mean())
                    for c in _conditions(config)}
  fits = {c: bool(np.all(values(c, "fit") <= config.fit_tol))
          for c in _conditions(config)}
  observations = {"finite_net_fits": fits}
  # p = 1 is left out of the rank correlation: its labels are the mirror
  # image of the true ones, so its error against the true labels is ~1.
  ranked = [u for u in results if u["labels"] != "noise=1"]
  rank = _spearman([u["measure"] for u in ranked],
                   [u["test_error_inf"] for u in ranked])
  measured = {
      "conditions": _conditions(config),
      "measure_mean": [mean_measure[c] for c in _conditions(config)],
      "measure_std": [float(values(c, "measure").std())
                      for c in _conditions(config)],
      "test_error_inf_mean": [mean_error[c] for c in _conditions(config)],
      "test_error_inf_std": [float(values(c, "test_error_inf").std())
                             for c in _conditions(config)],
      "finite_net_test_error_mean": [mean_error_net[c]
                                     for c in _conditions(config)],
      "finite_net_fit_max": [float(values(c, "fit").max())
                             for c in _conditions(config)],
      "bound_true_labels": float(values(true, "bound").mean()),
      "spearman_measure_vs_test_error": rank,
      "n_train": results[0]["n_train"],
      "n_test": results[0]["n_test"],
      "preprocessing": primary,
      "separation_gap": float(values(RANDOM, "measure").min()
                              - values(true, "measure").max()),
      "noise_step_min": float(np.min(np.diff([mean_measure[c]
                                              for c in conds]))),
      "error_gap_random": mean_error[RANDOM] - mean_error[true],
      "error_gap_noise": mean_error[conds[-1]] - mean_error[true],
      **_chain(config, results),
  }
  others = {}
  for prep in config.preprocessing[1:]:
    runs = [u for u in all_results if u["prep"] == prep]
    ch = _chain(config, runs)
    others[prep] = {
        "measure_true_mean": float(np.mean([u["measure"] for u in runs
                                            if u["labels"] == true])),
        "measure_random_mean": float(np.mean([u["measure"] for u in runs
                                              if u["labels"] == RANDOM])),
        "test_error_inf_true_mean": float(np.mean(
            [u["test_error_inf"] for u in runs if u["labels"] == true])),
        "bound_true_labels_max": ch["bound_true_labels_max"],
        "finite_fitted_true_runs": ch["finite_fitted_true_runs"],
        "lemma11_ratio_all_max": ch["lemma11_ratio_all_max"],
        "lemma12_ratio_all": ch["lemma12_ratio_all"],
    }
  measured["other_preprocessing"] = others
  check_list = checks(config)
  checks_ = verdicts.evaluate(check_list, measured)
  if "noise=1" in mean_measure:
    gaps = [abs(a - b) / b for a, b in zip(values("noise=1", "measure"),
                                           values(true, "measure"),
                                           strict=True)]
    measured["flip_all_relative_gap"] = float(max(gaps))
  figures = _plot(r, config)

  def fmt(cs, table, spec=".3g"):
    return ", ".join(f"{c.replace('noise=', 'p=')}: {table[c]:{spec}}"
                     for c in cs)

  def fmt_fits(table):
    return ", ".join(f"{c.replace('noise=', 'p=')}: "
                     f"{'yes' if v else 'no'}" for c, v in table.items())

  shown = _conditions(config)
  bound = measured["bound_true_labels"]
  text = (
      f"measure (mean of {config.reps}) {fmt(shown, mean_measure)}; test "
      f"error of the infinite-width net (kernel interpolant, true test "
      f"labels) {fmt(shown, mean_error, '.3f')}; Theorem 6 bound for true "
      f"labels {bound:.4g}{' (vacuous, >= 1)' if bound >= 1 else ''} "
      f"(delta={config.delta:g}); Spearman(measure, test error; p <= 1/2 and "
      f"random) {rank:.2f}; "
      f"finite net (m={config.width}, NGD eta={config.ngd_lr:g}, "
      f"{config.train_steps} steps): fits {fmt_fits(fits)}, test error "
      f"{fmt(shown, mean_error_net, '.2f')} (digits {config.classes[0]} vs "
      f"{config.classes[1]}, n={measured['n_train']}, "
      f"n_test={measured['n_test']})")
  if "flip_all_relative_gap" in measured:
    text += (f"; p=1 (y -> -y) measure equals p=0 to "
             f"{measured['flip_all_relative_gap']:.1g}")
  fitted = measured["finite_fitted_true_runs"]
  text += (
      f"; inputs {primary}; finite-width chain (true labels, "
      f"{fitted} of {config.reps} finite nets fit): Lemma 11 per-neuron "
      f"distance / bound max {measured['lemma11_ratio_all_max']:.3g}, "
      f"Lemma 12 ||w - w(0)|| / sqrt(r0^T G_inf^-1 r0) "
      + ", ".join(f"{v:.3f}" for v in measured["lemma12_ratio_all"])
      + " (/ sqrt(y^T G_inf^-1 y): "
      + ", ".join(f"{v:.3f}" for v in measured["lemma12_ratio_y_all"])
      + ")")
  for prep, o in others.items():
    text += (f"; inputs {prep}: measure true {o['measure_true_mean']:.3g}, "
             f"random {o['measure_random_mean']:.3g}, bound "
             f"{o['bound_true_labels_max']:.3g}, kernel test error "
             f"{o['test_error_inf_true_mean']:.3f}, Lemma 12 ratio "
             + ", ".join(f"{v:.3f}" for v in o["lemma12_ratio_all"]))
  expectation = verdicts.criteria_text(check_list)
  return r.finish(
      passed=all(checks_.values()),
      checks=checks_,
      measured=measured,
      measured_text=text,
      expectation=expectation,
      figures=figures,
      title=TITLE,
      details={"observations": observations, "runs": all_results,
               "check_kinds": verdicts.kinds(check_list)},
  )


def _spearman(a, b) -> float:
  """Rank correlation (average ranks for ties)."""
  from scipy.stats import spearmanr

  value = spearmanr(a, b).statistic
  return float(value) if np.isfinite(value) else float("nan")


def _plot(r: Run, config) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  primary = config.preprocessing[0]
  records = [rec for rec in r.records()
             if rec.get("prep", primary) == primary]
  units = [rec for rec in records if "measure" in rec]
  sweep = _sweep(config)
  figures = []
  for key, ylabel, fname, extra in (
      ("measure", "sqrt(2 y^T G_inf^{-1} y / n)", "measure.png", None),
      ("test_error_inf", "test error (true test labels)", "test_error.png",
       (0.5, "chance (0.5)"))):
    noisy = [rec for rec in units if rec["labels"] != RANDOM]
    xs = np.array([rec["noise"] for rec in noisy])
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
    if key == "test_error_inf":
      net = np.array([plots.as_float(rec["test_error"]) for rec in noisy])
      ux2, mean2, _, _ = plots.mean_by_x(xs, net)
      series.append(plots.Series(
          ux2, mean2, f"finite net, m={config.width}, NGD "
          f"{config.train_steps} steps (mean)", "dashed", color="C7"))
    if key == "measure":
      bound_second = 3 * math.sqrt(math.log(6 / config.delta)
                                   / (2 * units[0]["n_train"]))
      title = (f"C9: Theorem 6's measure on digits {config.classes[0]} vs "
               f"{config.classes[1]} (n={units[0]['n_train']}; bound adds "
               f"{bound_second:.2f})")
    else:
      title = ("C9: test error of the infinite-width net trained to zero "
               "loss (kernel interpolant)")
    plots.line_plot(r.path(fname), series,
                    xlabel="fraction p of training labels flipped",
                    ylabel=ylabel, title=title,
                    xticks=sorted(set(sweep) | {1.0}),
                    hlines=[extra] if extra else [])
    figures.append(fname)

  series = []
  for i, cond in enumerate(_conditions(config)):
    where = (lambda rec, cond=cond: rec.get("labels") == cond
             and "residual_rel" in rec)
    (xs, ys), = plots.series_from_records(records, "step", "residual_rel",
                                          where=where).values()
    ux, mean, _, _ = plots.mean_by_x(xs, ys)
    keep = mean > 0
    series.append(plots.Series(ux[keep], mean[keep],
                               cond.replace("noise=", "noise p="),
                               color=f"C{i}"))
  fname = "training_residual.png"
  plots.line_plot(r.path(fname), series, xlabel="NGD step k",
                  ylabel="||u(k) - y|| / ||y|| (mean over repetitions)",
                  title=f"C9: the finite nets trained by NGD (eta="
                  f"{config.ngd_lr:g}, m={config.width}): observation",
                  logy=True,
                  hlines=[(config.fit_tol, f"fit_tol {config.fit_tol:g}")])
  figures.append(fname)
  return figures

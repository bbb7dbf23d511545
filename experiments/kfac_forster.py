"""C6: K-FAC's rate depends on ``cond(X^T X)``; after the Forster transform
K-FAC with ``eta = 1/d`` is natural gradient descent (Theorem 4).

``docs/math.md`` ("K-FAC", "The Forster transform"): for the two-layer ReLU net
with ``m >= n``, K-FAC's first-order output update is ``-eta n diag(h) r`` with
the leverage scores ``h_i = x_i^T (X^T X)^{-1} x_i``. At Theorem 4's step ``eta
= lambda_min(X^T X) / n`` every ``eta n h_i`` lies in ``[1/kappa, 1]`` (``kappa
= cond(X^T X)``), so ``||r(k+1)||^2 / ||r(k)||^2 <= (1 - 1/kappa)^2``. After
the Forster transform ``Z`` every ``n h_i = d``: K-FAC at ``eta = 1/d`` is NGD
at ``eta = 1``, whatever ``kappa`` was.

Measured per ``kappa`` (inputs from ``conditioned_inputs``, one ``W(0)``),
undamped K-FAC: ``steps`` steps at Theorem 4's step and at ``eta =
fixed_eta_times_d / d`` (the rate: geometric mean of the per-step ratios
while ``||r(k)||`` is in ``(residual_floor, diverge_factor] ||r(0)||``; its
leverage-score prediction; Theorem 4's hypotheses, ``_hypotheses``), and one
step from ``W(0)`` of K-FAC (``eta = 1/d``) and NGD (``eta = 1``) on ``X``
and on ``Z``.

Settings and presets: ``configs/kfac_forster.py``; results of earlier runs:
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

from configs import kfac_forster as settings
from experiments import common
from ngdjax import data, diagnostics, forster, jvp
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key
from ngdjax.models import two_layer_relu
from ngdjax.optim import kfac, ngd

# One step from W(0), "<method>_<inputs>": (label, colour, style) in figures.
ONE_STEP = {
    "kfac_raw": ("K-FAC, eta = 1/d, raw X", "C0", "line"),
    "kfac_forster": ("K-FAC, eta = 1/d, Forster Z", "C3", "line"),
    "ngd_forster": ("NGD, eta = 1, Forster Z", "black", "dashed"),
    "ngd_raw": ("NGD, eta = 1, raw X", "C2", "dashed"),
}


def _scaled_rows(z0: np.ndarray, log_alpha: float) -> np.ndarray:
  d = z0.shape[1]
  x = z0 * np.exp(-log_alpha * np.arange(d) / (d - 1))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def gram_cond(x: np.ndarray) -> float:
  """``cond(X^T X)`` in float64."""
  x = np.asarray(x, np.float64)
  e = np.linalg.eigvalsh(x.T @ x)
  return float(e[-1] / e[0])


def conditioned_inputs(z0: np.ndarray, kappa: float,
                       rtol: float = 1e-6) -> np.ndarray:
  """``X = normalize_rows(z0 diag(alpha^(-j/(d-1))))`` with ``cond(X^T X) =
  kappa`` (to ``rtol``), ``alpha >= 1`` by bisection on ``log alpha``.
  ``z0``: ``(n, d)`` unit rows, ``n > d``, best isotropic (then ``kappa =
  1`` is ``z0``); ``kappa >= cond(z0^T z0)``."""
  z0 = np.asarray(z0, np.float64)
  cond0 = gram_cond(z0)
  if kappa < cond0 * (1 - rtol):
    raise ValueError(f"kappa={kappa:g} is below cond(z0^T z0) = {cond0:g}")
  if kappa <= cond0 * (1 + rtol):
    return z0
  lo, hi = 0.0, 1.0
  while gram_cond(_scaled_rows(z0, hi)) < kappa:
    lo, hi = hi, 2 * hi
    if hi > 1e3:
      raise ValueError(f"cannot reach cond(X^T X) = {kappa:g}")
  target = math.log(kappa)
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    c = math.log(gram_cond(_scaled_rows(z0, mid)))
    if abs(c - target) <= rtol:
      return _scaled_rows(z0, mid)
    lo, hi = (mid, hi) if c < target else (lo, mid)
  return _scaled_rows(z0, hi)


def leverage_scores(x: np.ndarray) -> np.ndarray:
  """``h_i = x_i^T (X^T X)^{-1} x_i``, ``(n,)`` (they sum to ``d``)."""
  x = np.asarray(x, np.float64)
  return np.einsum("ij,ij->i", x, np.linalg.solve(x.T @ x, x.T).T)


_QUADRATURE = 4  # midpoints of the rule for int_0^1 J(w(k) + s dw) ds


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _kfac_sweep(model, params, x, y, eta, steps, hypotheses):
  """``steps`` steps of undamped K-FAC at ``eta``: ``(||u(k) - y||, k = 0
  .. steps)`` and, with ``hypotheses``, per step ``k``: ``lambda_min(S~
  S~^T)`` at ``w(k)`` (``S~`` the rows ``a * S_i / sqrt(m)``), ``||int_0^1
  J(w(k) + s dw) ds - J(w(k))||_2`` (midpoint rule, exact per point for the
  two-layer net), ``||J(k) dw||`` and ``||u(k+1) - u(k) - J(k) dw||`` (terms
  (1) and (2) of eqn. (48)).
  """
  opt = kfac(model, learning_rate=lambda count: eta, damping=0.0)
  input_gram = x @ x.T

  def grads(p):
    return model.layer_factors(p, x)[0].output_grads.reshape(x.shape[0], -1)

  def body(carry, _):
    p, st = carry
    if not hypotheses:
      p, st, info = opt.step(p, st, x, y)
      return (p, st), (info["residual_norm"],)
    b = grads(p)
    lam_s = jnp.linalg.eigvalsh(b @ b.T)[0]
    p1, st, info = opt.step(p, st, x, y)
    delta = jax.tree_util.tree_map(jnp.subtract, p1, p)
    first = jvp(model, p, x, delta).reshape(y.shape)
    second = model.apply(p1, x) - model.apply(p, x) - first
    mean_b = sum(grads(jax.tree_util.tree_map(
        lambda a, da, t=(q + 0.5) / _QUADRATURE: a + t * da, p, delta))
                 for q in range(_QUADRATURE)) / _QUADRATURE
    db = mean_b - b
    jac = jnp.sqrt(jnp.maximum(
        jnp.linalg.eigvalsh(input_gram * (db @ db.T))[-1], 0.0))
    return (p1, st), (info["residual_norm"], lam_s, jac,
                      jnp.linalg.norm(first), jnp.linalg.norm(second))

  (p, _), out = jax.lax.scan(body, (params, opt.init(params)), None,
                             length=steps)
  last = jnp.linalg.norm(model.apply(p, x) - y)
  return (jnp.concatenate([out[0], last[None]]),) + out[1:]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _one_step(model, method, params, x, y, eta):
  """Outputs after one step from ``params`` and the first-order update."""
  lr = lambda count: eta  # a traced step size: one compilation
  opt = (kfac(model, learning_rate=lr, damping=0.0) if method == "kfac"
         else ngd(model, learning_rate=lr, damping=0.0))
  p1, _, _ = opt.step(params, opt.init(params), x, y)
  delta = jax.tree_util.tree_map(jnp.subtract, p1, params)
  return model.apply(p1, x), jvp(model, params, x, delta).reshape(y.shape)


def counted_steps(norms, floor: float, diverge: float) -> int:
  """Steps ``k`` whose ratio counts: ``||r(j)||`` in ``(floor, diverge]
  ||r(0)||`` for all ``j <= k`` and ``||r(k+1)||`` finite."""
  norms = np.asarray(norms, np.float64)
  inside = (floor * norms[0] < norms) & (norms <= diverge * norms[0])
  counts = inside[:-1] & np.isfinite(norms[1:])
  return int(np.cumprod(counts).sum())  # the leading run of counted steps


def rate(norms, floor: float, diverge: float) -> tuple[float, np.ndarray]:
  """Geometric-mean per-step ratio of ``||r||^2`` and the counted ratios."""
  norms = np.asarray(norms, np.float64)
  k = counted_steps(norms, floor, diverge)
  if k == 0:
    return float("nan"), np.zeros(0)
  ratios = diagnostics.contraction_ratios(norms[: k + 1])
  return float((norms[k] / norms[0]) ** (2.0 / k)), ratios


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Runs every ``kappa``; the figures the checks judge and the text."""
  conds = [float(k) for k in config.conds]
  x_sphere, y = data.sphere(config.n, config.d, seed=r.key("data"))
  z0 = np.asarray(forster(x_sphere).Z, np.float64)
  model = two_layer_relu(config.width, nu=config.nu)
  params0 = model.init(r.key("init"), config.d)
  r.start_progress(len(conds), interval_s=2.0)
  results = [r.unit(unit_key(cond=k), functools.partial(
      _measure, config, model, params0, z0, y, k)) for k in conds]
  return _summarise(r, config, results)


def _hypotheses(config, eig, norms, lam_s, jac, first, second):
  """Theorem 4's hypotheses along the theorem sweep's counted steps:
  ``lambda_min(S~(k) S~(k)^T) >= lambda_S / 2`` (``lambda_S`` at ``k = 0``,
  as in Condition 1); ``||int J - J(k)||_2 <= sqrt(lambda_min(S~ S~^T))
  lambda_min(X^T X) / lambda_max(X^T X)`` (the proof's Condition 2 with
  constant 1; ``X X^T`` of the text has rank ``d < n``, hence ``X^T X``);
  ``||(2)|| / ||(1)|| <= max_second_order``."""
  k = max(1, counted_steps(norms, config.residual_floor,
                           config.diverge_factor))
  lam_s, jac, first, second = lam_s[:k], jac[:k], first[:k], second[:k]
  rhs = np.sqrt(np.maximum(lam_s, 0.0)) * eig[0] / eig[-1]
  lam_ratio = float(lam_s.min() / lam_s[0]) if lam_s[0] > 0 else 0.0
  with np.errstate(divide="ignore", invalid="ignore"):
    jac_ratio = float(np.max(np.where(rhs > 0, jac / rhs, np.inf)))
    so = float(np.max(np.where(first > 0, second / first, np.inf)))
  inside = bool(lam_ratio >= 0.5 and jac_ratio <= 1.0
                and so <= config.max_second_order)
  return {"lambda_S": float(lam_s[0]), "lambda_S_ratio_min": lam_ratio,
          "jacobian_condition_ratio_max": jac_ratio,
          "second_order_ratio_max": so, "inside": inside}


def _measure(config, model, params0, z0, y, kappa, log):
  """Both sweeps and the one-step comparisons at one ``kappa``."""
  n, d, dtype = config.n, config.d, y.dtype
  x64 = conditioned_inputs(z0, kappa)
  eig = np.linalg.eigvalsh(x64.T @ x64)
  nh = n * leverage_scores(x64)
  x = jnp.asarray(x64, dtype)
  r0 = np.asarray(model.apply(params0, x) - y, np.float64).reshape(-1)
  out: dict[str, Any] = {
      "cond": kappa, "cond_achieved": float(eig[-1] / eig[0]),
      "lambda_min": float(eig[0]), "lambda_max": float(eig[-1]),
      "nh_min": float(nh.min()), "nh_max": float(nh.max())}
  etas = {"theorem": float(eig[0] / n),
          "fixed": float(config.fixed_eta_times_d / d)}
  for sweep, eta in etas.items():
    norms, *hypotheses = (np.asarray(v, np.float64) for v in _kfac_sweep(
        model, params0, x, y, jnp.asarray(eta, dtype), int(config.steps),
        sweep == "theorem"))
    if hypotheses:
      out["hypotheses"] = _hypotheses(config, eig, norms, *hypotheses)
    factors = 1.0 - eta * nh
    with np.errstate(over="ignore"):
      pred = np.array([np.linalg.norm(factors**k * r0)
                       for k in range(config.steps + 1)])
    limits = (config.residual_floor, config.diverge_factor)
    measured_rate, ratios = rate(norms, *limits)
    predicted_rate, _ = rate(pred, *limits)
    for k in range(config.steps + 1):
      log(step=k, sweep=sweep, cond=kappa,
          residual_rel=float(norms[k] / norms[0]),
          predicted_rel=float(pred[k] / pred[0]))
    out[sweep] = {
        "eta": eta, "rate": measured_rate, "predicted_rate": predicted_rate,
        "max_ratio": float(ratios.max()) if ratios.size else float("nan"),
        "counted_steps": int(ratios.size),
        "envelope": float(np.max(factors**2)),
        "max_eta_nh": float(eta * nh.max()),
        "bound": (1.0 - 1.0 / kappa) ** 2 if sweep == "theorem" else None,
        "residual_rel": (norms / norms[0]).tolist()}

  fz = forster(x)
  one: dict[str, Any] = {}
  after = {}
  for name in ONE_STEP:
    method, on = name.split("_")
    inputs = fz.Z if on == "forster" else x
    eta = 1.0 / d if method == "kfac" else 1.0
    u1, du = _one_step(model, method, params0, inputs, y,
                       jnp.asarray(eta, dtype))
    res0 = float(jnp.linalg.norm(model.apply(params0, inputs) - y))
    one[name] = float(jnp.linalg.norm(u1 - y)) / res0
    after[name] = (np.asarray(u1, np.float64), np.asarray(du, np.float64),
                   res0)
  (u_k, du_k, res0), (u_n, du_n, _) = (after["kfac_forster"],
                                       after["ngd_forster"])
  one["first_order_gap"] = float(np.linalg.norm(du_k - du_n) / res0)
  one["output_gap"] = float(np.linalg.norm(u_k - u_n) / res0)
  one["forster_error"] = float(fz.error)
  one["forster_cond_A"] = float(fz.cond)
  one["cond_Z"] = gram_cond(fz.Z)
  log(cond=kappa, kind="one_step", **{k: one[k] for k in ONE_STEP})
  out["one_step"] = one
  return out


def checks(config) -> tuple[verdicts.Check, ...]:
  """C6's pass criterion as data on the summary's ``measured``."""
  return (
      verdicts.Check(
          "theorem_bound",
          (("conds_inside_hypotheses", ">=", 1),
           ("conds_inside_breaking_bound", "==", 0)),
          ">= 1 cond with Theorem 4's hypotheses met (lambda_min(S S^T) >= "
          "lambda_S/2, Jacobian condition <= 1, second-order term <= "
          f"{config.max_second_order:g} of the first), and there 1 - ratio "
          f">= (1 - {config.bound_rtol:g}) (1 - (1 - 1/kappa)^2) at every "
          "step (a relative tolerance on the contraction)", verdicts.THEOREM),
      verdicts.Check(
          "bound_all_conds", (("conds_breaking_bound", "==", 0),),
          "the same bound at every cond, hypotheses met or not"),
      verdicts.Check(
          "degrades",
          (("rates_finite", "is", True),
           ("rate_largest_drop", "<=", config.monotone_tol),
           ("rate_rise", ">=", config.min_rise)),
          f"rate non-decreasing in kappa (tol {config.monotone_tol:g}), "
          f"rising by >= {config.min_rise:g}"),
      verdicts.Check(
          "leverage_prediction",
          (("rate_prediction_gap_max", "<=", config.rate_tol),),
          f"|rate - leverage-score prediction| <= {config.rate_tol:g}"),
      verdicts.Check(
          "forster_one_step",
          (("one_step_forster_max", "<=", config.one_step_tol),),
          "one step of K-FAC+Forster (eta=1/d) and of NGD on Z (eta=1) "
          f"leaves <= {config.one_step_tol:g} ||r0||"),
      verdicts.Check(
          "equals_ngd",
          (("first_order_gap_max", "<=", config.first_order_tol),
           ("output_gap_max", "<=", config.match_tol)),
          f"K-FAC+Forster = NGD: first order within "
          f"{config.first_order_tol:g}, outputs within {config.match_tol:g} "
          "||r0||"),
  )


def _breaks_bound(t, rtol: float) -> bool:
  """``1 - max_ratio < (1 - rtol)(1 - bound)``: a tolerance relative to the
  guaranteed decrease ``1 - bound ~ 2/kappa`` (an absolute 0.02 made the
  check unbreakable for ``kappa >= 100``)."""
  return not (np.isfinite(t["max_ratio"])
              and 1.0 - t["max_ratio"] >= (1.0 - rtol) * (1.0 - t["bound"]))


def _summarise(r: Run, config, results) -> Outcome:
  conds = [u["cond"] for u in results]
  thm = [u["theorem"] for u in results]
  fixed = [u["fixed"] for u in results]
  rates = np.array([t["rate"] for t in thm])
  one = [u["one_step"] for u in results]
  hyp = [u["hypotheses"] for u in results]
  breaks = [_breaks_bound(t, config.bound_rtol) for t in thm]

  # The fixed sweep: its prediction where that converges, > 1 elsewhere.
  fixed_ok = [bool(np.isfinite(f["rate"])) and (
      abs(f["rate"] - f["predicted_rate"]) <= config.rate_tol
      if f["predicted_rate"] <= 1.0 else f["rate"] > 1.0) for f in fixed]
  observations = {
      "fixed_sweep_matches_prediction": all(fixed_ok),
      "fixed_sweep_matches_prediction_per_cond": fixed_ok,
      "ngd_raw_one_step": all(o["ngd_raw"] <= config.one_step_tol
                              for o in one)}
  figures = _plot(r, config, results)
  fixed_stable = [c for c, f in zip(conds, fixed, strict=True)
                  if f["predicted_rate"] <= 1.0]
  measured = {
      "conds": conds,
      **{f"theorem_{k}": [t[k] for t in thm]
         for k in ("rate", "predicted_rate", "bound", "max_ratio", "eta")},
      "fixed_eta": fixed[0]["eta"],
      **{f"fixed_{k}": [f[k] for f in fixed]
         for k in ("rate", "predicted_rate")},
      "fixed_max_stable_cond": max(fixed_stable) if fixed_stable else None,
      "nh_range": [[u["nh_min"], u["nh_max"]] for u in results],
      **{f"one_step_{k}": [o[k] for o in one] for k in ONE_STEP},
      **{f"{k}_max": max(o[k] for o in one)
         for k in ("first_order_gap", "output_gap")},
      "conds_inside_hypotheses": sum(h["inside"] for h in hyp),
      "conds_inside_breaking_bound": sum(
          b for b, h in zip(breaks, hyp, strict=True) if h["inside"]),
      "conds_breaking_bound": int(sum(breaks)),
      **{k: [h[k] for h in hyp] for k in (
          "lambda_S_ratio_min", "jacobian_condition_ratio_max",
          "second_order_ratio_max")},
      "rates_finite": bool(np.all(np.isfinite(rates))),
      "rate_largest_drop": float(np.max(-np.diff(rates))),
      "rate_rise": float(rates[-1] - rates[0]),
      "rate_prediction_gap_max": float(max(
          abs(t["rate"] - t["predicted_rate"]) if np.isfinite(t["rate"])
          else np.inf for t in thm)),
      "one_step_forster_max": max(max(o["kfac_forster"], o["ngd_forster"])
                                  for o in one),
  }

  def fmt(key):
    return ", ".join(f"{plots.as_float(x):.3g}" for x in measured[key])

  m = measured
  text = (
      f"K-FAC rate (per-step ||r||^2 ratio, eta = lambda_min/n) at cond "
      f"{fmt('conds')}: {fmt('theorem_rate')} (leverage prediction "
      f"{fmt('theorem_predicted_rate')}; bound (1-1/kappa)^2 "
      f"{fmt('theorem_bound')}); fixed eta = {m['fixed_eta']:.3g}: "
      f"{fmt('fixed_rate')}; one step ||r(1)||/||r(0)||: K-FAC+Forster "
      f"(eta=1/d) {fmt('one_step_kfac_forster')}, NGD on Z (eta=1) "
      f"{fmt('one_step_ngd_forster')}, NGD on X {fmt('one_step_ngd_raw')}, "
      f"K-FAC on raw X (eta=1/d) {fmt('one_step_kfac_raw')}; K-FAC vs NGD "
      f"on Z: first-order gap {m['first_order_gap_max']:.2g}, outputs "
      f"{m['output_gap_max']:.2g} ||r0||; Theorem 4's hypotheses per cond: "
      f"min_k lambda_min(S S^T)/lambda_S {fmt('lambda_S_ratio_min')} (>= "
      f"0.5), Jacobian condition {fmt('jacobian_condition_ratio_max')} (<= "
      f"1), second/first-order term {fmt('second_order_ratio_max')} (<= "
      f"{config.max_second_order:g}): met at {m['conds_inside_hypotheses']} "
      f"of {len(conds)} conds (n={config.n}, d={config.d}, m={config.width})"
      "; observations (no criterion): fixed sweep matches its prediction: "
      f"{observations['fixed_sweep_matches_prediction']}, NGD on raw X "
      f"within {config.one_step_tol:g}: {observations['ngd_raw_one_step']}")
  return Outcome(measured, text, figures=figures, details={
      "observations": observations, "per_cond": [dict(u) for u in results]})


def _plot(r: Run, config, results) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  records = r.records()
  conds = [u["cond"] for u in results]
  # Rates per cond come from the per-unit lines.
  units = sorted((rec for rec in records if "theorem" in rec),
                 key=lambda rec: rec["cond"])
  # 1 - rate (the per-step decrease of ||r||^2) on log-log axes: the bound
  # 1 - (1 - 1/kappa)^2 ~ 2/kappa is a line; a diverging rate (> 1) has no
  # point here (it is in summary.json and the residual figure's data).
  series = []
  for sweep, color, label in (
      ("theorem", "C3", "eta = lambda_min(X^T X) / n"),
      ("fixed", "C0", f"fixed eta = {config.fixed_eta_times_d:g} / d")):
    for key, style, name in (("rate", "line", f"K-FAC, {label}"),
                             ("predicted_rate", "dashed",
                              "  leverage-score prediction")):
      xs, ys = np.array([(rec["cond"], 1.0 - plots.as_float(rec[sweep][key]))
                         for rec in units]).T
      if np.any(ys > 0):
        series.append(plots.Series(xs[ys > 0], ys[ys > 0], name, style,
                                   color=color))
  fine = np.geomspace(max(min(conds), 1.0), max(conds), 100)
  series.append(plots.Series(fine, 1 - (1 - 1 / fine) ** 2,
                             "Theorem 4: 1 - (1 - 1/kappa)^2 (lower bound)",
                             "dashed", color="gray"))
  plots.line_plot(
      r.path("rate_vs_cond.png"), series, xlabel="cond(X^T X)",
      ylabel="1 - rate (rate: geom. mean ||r(k+1)||^2 / ||r(k)||^2)",
      title=f"C6: K-FAC's per-step decrease vs input conditioning "
      f"(n={config.n}, d={config.d}, m={config.width})", logx=True,
      logy=True, xticks=conds)

  series = []
  for i, k in enumerate(conds):
    where = (lambda rec, k=k: rec.get("sweep") == "theorem"
             and rec.get("cond") == k)
    for key, label, style in (("residual_rel", f"cond {k:g}", "line"),
                              ("predicted_rel", None, "dashed")):
      (xs, ys), = plots.series_from_records(records, "step", key,
                                            where=where).values()
      keep = ys > config.residual_floor * 1e-2
      series.append(plots.Series(xs[keep], ys[keep], label, style,
                                 color=f"C{i}"))
  plots.line_plot(
      r.path("residuals_theorem_step.png"), series, xlabel="K-FAC step k",
      ylabel="||u(k) - y|| / ||u(0) - y||",
      title="C6: K-FAC at eta = lambda_min(X^T X)/n (dashed: leverage-score "
      "prediction)", logy=True)

  ones = sorted((rec for rec in records if rec.get("kind") == "one_step"),
                key=lambda rec: rec["cond"])
  oc = [rec["cond"] for rec in ones]
  series = [plots.Series(oc, [plots.as_float(rec[name]) for rec in ones],
                         label, style, color=color)
            for name, (label, color, style) in ONE_STEP.items()]
  plots.line_plot(
      r.path("forster_one_step.png"), series,
      xlabel="cond(X^T X) of the raw inputs",
      ylabel="one step: ||u(1) - y|| / ||u(0) - y||",
      title="C6: one step from W(0): K-FAC after Forster vs NGD",
      logx=True, logy=True, xticks=oc,
      hlines=[(config.one_step_tol, f"criterion {config.one_step_tol:g}")])
  return ["rate_vs_cond.png", "residuals_theorem_step.png",
          "forster_one_step.png"]


SPEC = Experiment(
    name="kfac_forster", claim="C6",
    title=("K-FAC's rate depends on cond(X^T X); after the Forster transform "
           "K-FAC (eta = 1/d) equals NGD (Theorem 4)"),
    row="K-FAC and the Forster transform (Theorem 4)",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("n", ">", "d", "X^T X must be invertible"),
           Rule("d", ">=", 2),
           Rule("width", ">=", "n", "so that P_S = I, docs/math.md 'K-FAC'"),
           Rule("len(conds)", ">=", 2),
           Rule("each(conds)", ">=", 1),
           Rule("conds", "increasing"),
           Rule("steps", ">=", 1)))


if __name__ == "__main__":
  common.main(SPEC)

"""Exact NGD on the two-layer ReLU net, measured at every iterate (C1-C4).

``train``: ``ngdjax.optim.ngd`` with damping 0 (the theorems' update), with
the diagnostics of every iterate (``||J(k) - J(0)||_2`` exact from the
net's structure: seconds at widths up to ``10^6``); ``sweep``: one run per
(width, repetition[, step size]) (the fields C1-C4 share are in their
``configs/``);
``rate_sweep`` .. ``residual_figure``: C1 and C2's rate analysis; the rest:
figure parts. The theory's constants are in ``analysis``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import analysis
from ngdjax import data, diagnostics, losses, models
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Run, unit_key
from ngdjax.optim import ngd


@functools.partial(jax.jit, static_argnums=(0, 1))
def _ngd_step(model, loss, params, x, y, learning_rate):
  # The step size is traced (a schedule returning it), so one compilation
  # per (width, loss) serves every eta of a sweep.
  opt = ngd(model, learning_rate=lambda count: learning_rate, damping=0.0,
            loss=loss)
  params, _, info = opt.step(params, opt.init(params), x, y)
  return params, info["cholesky_failed"]


@functools.partial(jax.jit, static_argnums=0)
def _measure(model, params, params0, x, y):
  return {
      "residual_norm": jnp.linalg.norm(model.apply(params, x) - y),
      "lambda_min_G": diagnostics.gram_lambda_min(model, params, x,
                                                  method="structured"),
      "distance": diagnostics.distance_from_init(params, params0),
      "flips": diagnostics.activation_flips(params, params0, x),
  }


def train(model: models.Model, params0: Any, x: jax.Array, y: jax.Array, *,
          learning_rate: float, num_steps: int,
          loss: losses.Loss | str = "squared", residual_floor: float = 1e-10,
          jacobian: bool = False, log: Callable[..., None] | None = None,
          **tags: Any) -> dict[str, Any]:
  """Runs exact NGD from ``params0`` and measures every iterate.

  Stops after ``num_steps`` steps or at the first iterate with ``||u(k) -
  y|| <= residual_floor ||u(0) - y||`` (below, ratios are round-off);
  ``log`` (a ``Run.unit`` logger) gets every iterate with ``tags``.

  Returns:
    Lists over the iterates ``k = 0..K``: ``residual_norm``,
    ``lambda_min_G``, ``distance``, ``flips`` and, with ``jacobian``,
    ``jacobian_change`` (``||J(k) - J(0)||_2``) and ``jacobian_converged``;
    over the steps: ``ratios`` (``||r(k+1)||^2 / ||r(k)||^2``) and
    ``cholesky_failed`` (solves that fell back to the pseudo-inverse); and
    ``steps`` (``K``), ``reached_floor``.
  """
  eta = jnp.asarray(learning_rate, params0["W"].dtype)
  out: dict[str, list] = {k: [] for k in (
      "residual_norm", "lambda_min_G", "distance", "flips", "cholesky_failed",
      *(("jacobian_change", "jacobian_converged") if jacobian else ()))}
  params, k = params0, 0
  while True:
    row = {k_: float(v) for k_, v in
           _measure(model, params, params0, x, y).items()}
    if jacobian:
      if k == 0:
        row["jacobian_change"], converged = 0.0, True
      else:
        est = diagnostics.jacobian_change_norm(model, params, params0, x,
                                               method="structured")
        row["jacobian_change"], converged = float(est.norm), est.converged
      out["jacobian_converged"].append(bool(converged))
    for k_, v in row.items():
      out[k_].append(v)
    r0 = out["residual_norm"][0]
    rel = row["residual_norm"] / r0 if r0 > 0 else 0.0
    if k > 0:
      row["ratio"] = float(diagnostics.contraction_ratios(
          out["residual_norm"][-2:])[0])
    if log is not None:
      log(step=k, residual_rel=rel, **tags, **row)
    if k >= num_steps or rel <= residual_floor:
      break
    params, failed = _ngd_step(model, loss, params, x, y, eta)
    out["cholesky_failed"].append(int(failed))
    k += 1
  ratios = (diagnostics.contraction_ratios(out["residual_norm"]).tolist()
            if k > 0 else [])
  return {**out, "ratios": ratios, "steps": k,
          "reached_floor": bool(rel <= residual_floor)}


def sweep(r: Run, config: ml_collections.ConfigDict, x: jax.Array,
          y: jax.Array, summarise: Callable[..., dict[str, Any]], *,
          etas: Sequence[float] | None = None,
          key: Callable[..., str] | None = None, work_width: float = 4096.0,
          **train_kw: Any) -> list[dict[str, Any]]:
  """Per unit ``(m, s[, eta])`` over ``config.widths``, ``range(
  config.reps)`` and ``etas``, in order: ``summarise(*unit, u(0), t)``, ``t``
  the lists of ``train(..., **train_kw)`` at ``eta`` (default
  ``config.learning_rate``) from the unit's ``W`` (the same for every eta),
  or that reloaded. ``key(*unit)`` names a unit (default ``unit_key(width=m,
  rep=s[, eta=eta])``), its share of the progress is ``1 + m / work_width``.
  """
  widths = [int(m) for m in config.widths]
  reps = range(config.reps)
  if etas is None:
    units = [(m, s) for m in widths for s in reps]
  else:
    units = [(m, s, eta) for m in widths for s in reps for eta in etas]
  if key is None:
    def key(*unit):
      return unit_key(**_tags(unit))

  def measure(unit, log):
    model = models.two_layer_relu(unit[0], nu=config.nu)
    params0 = model.init(r.key(unit_key(width=unit[0], rep=unit[1])),
                         config.d)
    eta = float(config.learning_rate) if etas is None else unit[2]
    t = train(model, params0, x, y, learning_rate=eta,
              num_steps=config.num_steps, residual_floor=config.residual_floor,
              log=log, **_tags(unit), **train_kw)
    return summarise(*unit, model.apply(params0, x), t)

  work = [1.0 + unit[0] / work_width for unit in units]
  r.start_progress(len(units), interval_s=2.0, work=sum(work))
  return [r.unit(key(*unit), functools.partial(measure, unit), work=w)
          for unit, w in zip(units, work, strict=True)]


def _tags(unit: tuple) -> dict[str, Any]:
  return dict(zip(("width", "rep", "eta"), unit, strict=False))


# C1 and C2's ranges besides their step sizes; C3 and C4's: one step size in
# Theorem 1's range, a fit over widths.
RATE_RULES = (Rule("num_steps", ">=", 1), Rule("reps", ">=", 1))
FIXED_STEP_RULES = (
    Rule("len(widths)", ">=", 3, "for a fit"), Rule("learning_rate", ">", 0),
    Rule("learning_rate", "<=", 1, "Theorem 1's range"),
    Rule("delta", ">", 0), Rule("delta", "<", 1, "a probability"),
    *RATE_RULES)

# ``theorem(C, eta) -> (eta_max, in_theorem)`` (C1, C2): a theorem's largest
# step for a measured ``C``; whether ``eta`` meets its hypotheses.
Theorem = Callable[[float, float], tuple[float, bool]]


@dataclasses.dataclass(frozen=True)
class RateSweep:
  """Where a C1/C2 sweep's rate holds, per step size (see ``rate_sweep``)."""

  results: list[dict[str, Any]]  # the units, each marked with ``holds``
  etas: list[float]  # the sweep's step sizes, in order
  rated: list[float]  # those whose bound the checks judge
  bound: dict[float, float]  # per eta: the theorem's bound on a ratio
  theorem: str  # "Theorem 1"
  fmt: str  # eta's format in texts and figures
  key_fmt: str  # eta's format in the ``measured`` keys
  with_bound: bool  # report each eta's bound (C2; C1's is 1 - eta)
  widest: int  # the widest width of the sweep
  m_star: dict[float, float | None]  # per eta: from which width it holds
  at_widest: dict[float, float]  # per eta: the largest ratio at ``widest``
  in_theorem: list[dict[str, Any]]  # the runs meeting the hypotheses
  c_at_widest: float  # the largest measured ``C`` at ``widest``

  @property
  def failures(self) -> list[dict[str, Any]]:
    """The runs of a rated eta that break its bound."""
    return [u for u in self.results
            if u["eta"] in self.rated and not u["holds"]]

  def measured(self) -> dict[str, Any]:
    """The figures ``rate_checks`` judge, and the runs' health."""
    results = self.results
    out = {
        "widest_width": self.widest, "runs_total": len(results),
        "runs_inside_hypotheses": len(self.in_theorem),
        "runs_inside_breaking_rate": sum(not u["holds"]
                                         for u in self.in_theorem),
        "runs_failing_rate": len(self.failures),
        "C_min": min(u["C"] for u in results), "C_at_widest": self.c_at_widest,
        "cholesky_failed_steps": sum(u["cholesky_failed_steps"]
                                     for u in results),
        "power_iteration_converged": all(u["power_iteration_converged"]
                                         for u in results),
    }
    for eta in self.etas:
      tag = format(eta, self.key_fmt)
      out[f"max_ratio_at_widest/eta={tag}"] = self.at_widest[eta]
      if self.with_bound:
        out[f"bound/eta={tag}"] = self.bound[eta]
      out[f"m_star/eta={tag}"] = self.m_star[eta]
    return out

  def text(self, config: ml_collections.ConfigDict, prefix: str = "",
           what: str = "", extra: str = "") -> str:
    """The report's line: per rated eta the largest ratio at the widest
    width and ``m*``, the runs breaking the bound, the measured ``C``."""
    fmt, fails, inside = self.fmt, self.failures, self.in_theorem
    rate = "; ".join(
        f"eta={eta:{fmt}}: max ratio at m={self.widest} "
        f"{self.at_widest[eta]:.3g} (bound {self.bound[eta]:{fmt}})"
        f", holds for m >= "
        f"{'none' if self.m_star[eta] is None else f'{self.m_star[eta]:.0f}'}"
        for eta in self.rated)
    fail = ("no run breaks the bound" if not fails else "breaks: " + ", ".join(
        f"m={u['width']} eta={u['eta']:{fmt}} ({u['max_ratio']:.3g}"
        + (f" > {u['bound']:.3g})" if self.with_bound else ")")
        for u in fails[:4]) + (" ..." if len(fails) > 4 else ""))
    where = ", ".join(f"m={u['width']} eta={u['eta']:.3g} C={u['C']:.3f} "
                      f"(max ratio {u['max_ratio']:.4g}"
                      f"{'' if u['holds'] else ' BREAKS the rate'})"
                      for u in inside[:6]) + (" ..." if len(inside) > 6
                                               else "")
    cs = [u["C"] for u in self.results]
    return (f"{prefix}{rate}; {fail}; measured {what}C = {min(cs):.2g}.."
            f"{max(cs):.3g} ({self.c_at_widest:.2g} at the widest), "
            f"{self.theorem}'s hypotheses hold in {len(inside)} of "
            f"{len(self.results)} runs" + (f": {where}" if inside else "")
            + f"{extra} (n={config.n}, d={config.d}, {config.reps} reps)")

  def details(self) -> dict[str, Any]:
    """The units without their per-step ratios (kept in the unit files)."""
    return {"runs": [{k: v for k, v in u.items() if k != "ratios"}
                     for u in self.results]}


def rate_sweep(r: Run, config: ml_collections.ConfigDict,
               etas: Sequence[float], bound: dict[float, float],
               theorem: Theorem, *, name: str, fmt: str, key_fmt: str,
               rated: Sequence[float] | None = None,
               with_bound: bool = False, key: Callable[..., str] | None = None,
               loss: losses.Loss | str = "squared",
               first_ratio: bool = False) -> RateSweep:
  """Runs the C1/C2 sweep (``theorem`` judges each run's ``C``) and finds
  per eta where the rate holds: where ``max_ratio <= bound[eta] (1 +
  config.ratio_rtol)``; ``first_ratio``: keep each run's first ratio too
  (C1 at ``eta = 1``). The other arguments are ``RateSweep``'s fields."""

  def unit(width, rep, eta, u0, t):
    lam_g0 = t["lambda_min_G"][0]
    c = analysis.condition2_constant(max(t["jacobian_change"]), lam_g0)
    eta_max, in_theorem = theorem(c, eta)
    return {
        "width": width, "rep": rep, "eta": eta, "max_ratio": max(t["ratios"]),
        **({"first_ratio": t["ratios"][0]} if first_ratio else {}),
        "ratios": t["ratios"], "lambda_min_G0": lam_g0, "C": c,
        "eta_max": eta_max, "in_theorem": bool(in_theorem),
        "steps": t["steps"], "reached_floor": t["reached_floor"],
        "cholesky_failed_steps": int(sum(t["cholesky_failed"])),
        "power_iteration_converged": all(t["jacobian_converged"]),
    }

  x, y = data.sphere(config.n, config.d, seed=r.key("data"))
  results = sweep(r, config, x, y, unit, etas=etas, key=key, loss=loss,
                  jacobian=True)
  for u in results:
    if with_bound:
      u["bound"] = bound[u["eta"]]
    u["holds"] = u["max_ratio"] <= bound[u["eta"]] * (1.0 + config.ratio_rtol)
  widest = max(u["width"] for u in results)
  m_star, at_widest = {}, {}
  for eta in etas:
    rows = [u for u in results if u["eta"] == eta]
    m_star[eta] = analysis.threshold_width([u["width"] for u in rows],
                                           [u["holds"] for u in rows])
    at_widest[eta] = max(u["max_ratio"] for u in rows
                         if u["width"] == widest)
  return RateSweep(results, list(etas),
                   list(etas) if rated is None else list(rated), bound,
                   name, fmt, key_fmt, with_bound, widest, m_star,
                   at_widest, [u for u in results if u["in_theorem"]],
                   max(u["C"] for u in results if u["width"] == widest))


def rate_checks(etas: Sequence[float], key_fmt: str, theorem: str,
                hypotheses: str) -> tuple[verdicts.Check, ...]:
  """The checks C1 and C2 share, on ``RateSweep.measured``; ``theorem``
  FAILS when no run meets ``hypotheses``."""
  wide = tuple((f"m_star/eta={format(e, key_fmt)}", "<", "widest_width")
               for e in etas)
  return (
      verdicts.Check("rate_wide", wide,
                     "per eta, every run at every width >= m* within the "
                     "bound, m* below the widest width",
                     verdicts.OBSERVATION),
      verdicts.Check("theorem", (("runs_inside_hypotheses", ">=", 1),
                                 ("runs_inside_breaking_rate", "==", 0)),
                     f">= 1 run with {hypotheses} ({theorem}'s hypotheses), "
                     "and every such run within the bound", verdicts.THEOREM))


def ratio_figure(r: Run, rates: RateSweep, *, ylabel: str, title: str,
                 bound_label: str) -> list[str]:
  """``ratio_vs_width.png``: per rated eta, every step's ratio of every
  run (dots, from ``metrics.jsonl``), the largest per width (line) and the
  bound (dashed, labelled ``bound_label.format(bound)``)."""
  records = r.records()
  results = rates.results
  widths = sorted({u["width"] for u in results})
  series = []
  for i, eta in enumerate(rates.etas):
    got = eta in rates.rated and plots.series_from_records(
        records, "width", "ratio", where=lambda rec, e=eta: rec.get(
            "eta") == e)
    if not got:
      continue
    (xs, ys), = got.values()
    mx = [max(u["max_ratio"] for u in results
              if u["eta"] == eta and u["width"] == m) for m in widths]
    b, color = rates.bound[eta], f"C{i}"
    series += [plots.Series(xs, ys, None, "scatter", color=color),
               plots.Series(widths, mx, f"eta={eta:{rates.fmt}}: max over "
                            "steps", color=color),
               plots.Series([widths[0], widths[-1]], [b] * 2,
                            bound_label.format(b), "dashed", color=color)]
  return [width_figure(r, "ratio_vs_width.png", series, widths,
                       ylabel=ylabel, title=title)] if series else []


def residual_figure(r: Run, rates: RateSweep, *, ylabel: str,
                    title: str) -> list[str]:
  """``residuals.png``: ``||r(k)|| / ||r(0)||`` against ``k`` for rep 0,
  the widest width as lines, the narrowest as dots, and per eta with a
  positive bound ``b`` on the squared ratio the reference ``b^(k/2)``."""
  rep0 = [rec for rec in r.records()
          if "residual_rel" in rec and rec.get("rep") == 0]
  widths = sorted({u["width"] for u in rates.results})
  series = []
  for i, eta in enumerate(rates.etas):
    for m, style in ((widths[-1], "line"), (widths[0], "scatter")):
      got = plots.series_from_records(
          rep0, "step", "residual_rel",
          where=lambda rec, e=eta, w=m: rec["eta"] == e and rec["width"] == w)
      if not got:
        continue
      (ks, res), = got.values()
      series.append(plots.Series(ks, res, f"eta={eta:.3g}, m={m}", style,
                                 color=f"C{i}"))
      b = rates.bound[eta]
      if m == widths[-1] and b > 0:
        series.append(plots.Series(ks, b ** (ks / 2),
                                   f"bound {b:.3g}^(k/2)", "dashed",
                                   color=f"C{i}"))
  plots.line_plot(r.path("residuals.png"), series, xlabel="NGD step k",
                  ylabel=ylabel, title=title, logy=True)
  return ["residuals.png"]


def mean_series(units: Sequence[dict[str, Any]], key: str, label: str,
                color: str, style: str = "dashed") -> plots.Series:
  """``key``'s mean over the repetitions against the width."""
  ux, mean, _, _ = plots.mean_by_x([u["width"] for u in units],
                                   [u[key] for u in units])
  return plots.Series(ux, mean, label, style, color=color)


def fit_series(units: Sequence[dict[str, Any]], fit: Any,
               digits: int = 3) -> plots.Series:
  """A power-law ``fit`` at the units' widths (dashed, gray)."""
  ux = np.unique(np.asarray([u["width"] for u in units], float))
  return plots.Series(
      ux, fit.predict(ux), f"fit: m^({fit.exponent:.{digits}f} +- "
      f"{fit.exponent_stderr:.{digits}f})", "dashed", color="gray")


def width_figure(r: Run, name: str, series: Sequence[plots.Series],
                 widths: Sequence[int], logy: bool = True, **kw: Any) -> str:
  """Draws ``name``: ``series`` against the width on a log axis with the
  widths as ticks (``kw``: ``line_plot``'s labels and lines)."""
  plots.line_plot(r.path(name), series, xlabel="width m", logx=True,
                  logy=logy, xticks=widths, **kw)
  return name


def path_figure(r: Run, config: ml_collections.ConfigDict, claim: str,
                name: str, key: str, widths: Sequence[int], first_step: int = 0,
                normalise: bool = False, **kw: Any) -> str:
  """Draws ``name``: ``key`` against the NGD step in repetition 0, a line
  per width, from step ``first_step``; ``normalise``: divided by its value
  at step 0 (widths where that is not positive left out)."""
  records, series = r.records(), []
  for i, m in enumerate(widths):
    got = plots.series_from_records(
        records, "step", key, where=lambda rec, w=m: rec.get("rep") == 0
        and rec["width"] == w and rec["step"] >= first_step)
    if not got:
      continue
    (ks, ys), = got.values()
    if normalise and not ys[0] > 0:
      continue
    series.append(plots.Series(ks, ys / ys[0] if normalise else ys,
                               f"m={m}", color=f"C{i % 10}"))
  plots.line_plot(r.path(name), series, xlabel="NGD step k", title=(
      f"{claim}: along training (eta={config.learning_rate:g}, rep 0)"), **kw)
  return name

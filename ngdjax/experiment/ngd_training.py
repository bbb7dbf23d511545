"""Exact NGD on the two-layer ReLU net, with the paper's per-step diagnostics.

Shared by C1 (``ngd_rate``), C2 (``general_loss``), C3
(``training_conditions``) and C4 (``jacobian_stability``): one training loop
that runs ``ngdjax.optim.ngd`` (damping 0, the theorems' update) and records,
at every iterate ``k``,

* ``residual_norm``: ``||u(k) - y||`` (so the per-step contraction of
  Theorems 1 and 2 is ``diagnostics.contraction_ratios`` of it);
* ``lambda_min_G``: ``lambda_min(G(k))`` (Lemma 2 keeps it above
  ``(4/9) lambda_min(G(0))``);
* ``distance``: ``||w(k) - w(0)||`` (Lemma 3 keeps it below
  ``3 ||y - u(0)|| / sqrt(lambda_min(G(0)))``);
* ``flips``: the fraction of the activation pattern that changed;
* ``jacobian_change`` (optional): ``||J(k) - J(0)||_2``, exactly, from the
  two-layer net's structure (``diagnostics.jacobian_change_norm``,
  ``method="structured"``: the top eigenvalue of an ``n x n`` matrix, so
  widths up to ``10^6`` cost seconds; Condition 2).

It also holds the theory's constants as functions of measured figures, so the
four experiments evaluate them one way: the Condition 2 constant ``C`` of a
trajectory, the largest step size Theorems 1 and 2 allow for it, and the
Lemma 7 / Lemma 8 bounds at a measured radius.

And the parts of the four runs that are the same: the sweep over (width,
repetition[, step size]) units with its initialisation (``init_net``,
``sweep``), C3 and C4's config check, and C1 and C2's rate analysis (one
unit's measurement, ``rate_unit``; per step size where the rate holds,
``rate_sweep``; the figures and text built from it).

Conventions (MATH.md 1-3): sum loss, ``G = J J^T``, scalar output. Where
MATH.md 2 writes ``lambda_0`` for ``lambda_min(G(0))`` (Conditions 1-2,
Theorem 1's proof, Lemmas 2-3) the code says ``lambda_min(G(0))``;
``lambda_0`` is ``lambda_min(G_inf)`` (MATH.md 3).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ngdjax import diagnostics, losses, models
from ngdjax.experiment import analysis, plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Run, unit_key
from ngdjax.experiment.verdicts import Check
from ngdjax.optim import ngd

Log = Callable[..., None]


@functools.lru_cache(maxsize=64)
def two_layer_model(width: int, nu: float) -> models.Model:
  """``models.two_layer_relu(width, nu=nu)``, one object per process.

  The model is a static argument of the jitted step and measurement: one
  object per (width, nu) lets a rerun (resume, tests, reproduce) reuse the
  compiled code instead of compiling every width again.
  """
  return models.two_layer_relu(int(width), nu=float(nu))


@functools.lru_cache(maxsize=16)
def loss_for(name: str, alpha: float = 1.0) -> losses.Loss:
  """``losses.squared()`` or ``losses.squared_log_cosh(alpha)``, cached.

  Cached for the same reason as ``two_layer_model``: the loss is static in
  the jitted step and a new ``Loss`` would compile again.
  """
  if name == "squared":
    return losses.squared()
  if name == "squared_log_cosh":
    return losses.squared_log_cosh(float(alpha))
  raise ValueError(f'loss must be "squared" or "squared_log_cosh", got '
                   f"{name!r}")


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
          loss: losses.Loss | None = None, residual_floor: float = 1e-10,
          jacobian: bool = False, log: Log | None = None,
          **tags: Any) -> dict[str, Any]:
  """Runs exact NGD from ``params0`` and measures every iterate.

  Training stops after ``num_steps`` steps, or earlier at the first iterate
  with ``||u(k) - y|| <= residual_floor * ||u(0) - y||``: below that the
  residual is round-off and a ratio of two of them says nothing about the
  theorems. Every step taken therefore starts above the floor, and every
  entry of ``ratios`` is a meaningful contraction.

  Args:
    model: a two-layer ReLU ``Model`` (``two_layer_model``).
    params0: initial parameters ``{"W": (m, d)}``.
    x: ``(n, d)`` inputs.
    y: ``(n, 1)`` targets.
    learning_rate: ``eta``.
    num_steps: the most NGD steps to take.
    loss: a ``losses.Loss``; default the squared loss (Theorem 1).
    residual_floor: the relative residual at which training stops.
    jacobian: also measure ``||J(k) - J(0)||_2`` (power iteration) at every
      iterate ``k >= 1`` (exact, ``method="structured"``).
    log: ``log(step=k, **values)``, e.g. a ``Run.unit`` logger; each
      iterate is logged with ``tags`` added.
    **tags: fields added to every logged line (``width=..., eta=...``).

  Returns:
    A dict of lists over the iterates ``k = 0..K``: ``residual_norm``,
    ``lambda_min_G``, ``distance``, ``flips`` and, with ``jacobian``,
    ``jacobian_change`` (0 at ``k = 0``) and ``jacobian_converged``; over
    the steps ``k = 0..K-1``: ``ratios`` (``||r(k+1)||^2 / ||r(k)||^2``) and
    ``cholesky_failed`` (steps whose Gram solve fell back to the
    pseudo-inverse); and ``steps`` (``K``), ``reached_floor``.
  """
  loss = loss_for("squared") if loss is None else loss
  eta = jnp.asarray(learning_rate, params0["W"].dtype)
  out: dict[str, list] = {k: [] for k in ("residual_norm", "lambda_min_G",
                                          "distance", "flips",
                                          "cholesky_failed")}
  if jacobian:
    out["jacobian_change"], out["jacobian_converged"] = [], []
  params = params0
  r0 = None
  k = 0
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
    if r0 is None:
      r0 = row["residual_norm"]
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
  result: dict[str, Any] = dict(out)
  result["ratios"] = diagnostics.contraction_ratios(
      out["residual_norm"]).tolist() if k > 0 else []
  result["steps"] = k
  result["reached_floor"] = bool(rel <= residual_floor)
  return result


# --------------------------------------------------------------------------
# The theory's constants, evaluated at measured figures.
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# The sweep all four experiments run: one unit per width and repetition
# (and, in C1 and C2, step size).
# --------------------------------------------------------------------------


def init_net(r: Run, config: ml_collections.ConfigDict, width: int,
             rep: int) -> tuple[models.Model, Any]:
  """``(model, params0)`` for one width and repetition of a sweep.

  The key names only the width and the repetition, so every step size of a
  C1/C2 sweep starts from the same ``W`` and a resumed run draws it again.
  """
  model = two_layer_model(width, float(config.nu))
  return model, model.init(r.key(unit_key(width=width, rep=rep)), config.d)


def _unit_key(width: int, rep: int, eta: float | None = None) -> str:
  if eta is None:
    return unit_key(width=width, rep=rep)
  return unit_key(width=width, rep=rep, eta=eta)


def sweep(r: Run, config: ml_collections.ConfigDict,
          measure: Callable[..., dict[str, Any]], *,
          etas: Sequence[float] | None = None,
          key: Callable[..., str] | None = None,
          work_width: float = 4096.0) -> list[dict[str, Any]]:
  """Runs (or reloads) ``measure`` on every unit of the sweep, in order.

  The units are ``(m, s)`` for ``m`` in ``config.widths`` and ``s <
  config.reps`` or, given ``etas``, ``(m, s, eta)``; ``measure(*unit,
  log)`` computes one and ``key(*unit)`` names it for resuming (by default
  ``unit_key(width=m, rep=s[, eta=eta])``). A unit's share of the progress
  is ``1 + m / work_width``: a fixed cost (compilation, power iterations)
  plus one that grows with the width.
  """
  widths = [int(m) for m in config.widths]
  reps = range(config.reps)
  if etas is None:
    units = [(m, s) for m in widths for s in reps]
  else:
    units = [(m, s, eta) for m in widths for s in reps for eta in etas]
  key = _unit_key if key is None else key
  work = [1.0 + unit[0] / work_width for unit in units]
  r.start_progress(len(units), interval_s=2.0, work=sum(work))
  return [r.unit(key(*unit), functools.partial(measure, *unit), work=w)
          for unit, w in zip(units, work, strict=True)]


# C3 and C4: one step size in Theorem 1's range, a fit over widths.
FIXED_STEP_RULES = (
    Rule("len(widths)", ">=", 3, "for a fit"),
    Rule("learning_rate", ">", 0),
    Rule("learning_rate", "<=", 1, "Theorem 1's range"),
    Rule("delta", ">", 0), Rule("delta", "<", 1, "a probability"),
    Rule("num_steps", ">=", 1), Rule("reps", ">=", 1),
)


# --------------------------------------------------------------------------
# The rate analysis shared by C1 (Theorem 1) and C2 (Theorem 2).
# --------------------------------------------------------------------------

# ``theorem(C, eta) -> (eta_max, in_theorem)``: a theorem's largest step for
# a measured Condition 2 constant ``C``, and whether ``eta`` meets all of its
# hypotheses.
Theorem = Callable[[float, float], tuple[float, bool]]


def rate_unit(r: Run, config: ml_collections.ConfigDict, x: jax.Array,
              y: jax.Array, width: int, rep: int, eta: float, log: Log, *,
              theorem: Theorem, loss: losses.Loss | None = None,
              first_ratio: bool = False) -> dict[str, Any]:
  """One C1/C2 unit: NGD from ``init_net`` with the Jacobian measured.

  Returns the run's per-step ratios, their maximum, its Condition 2
  constant ``C`` and ``theorem``'s verdict on it, and the run's health
  (steps, Cholesky fallbacks, power-iteration convergence); with
  ``first_ratio`` also the first step's ratio (C1's ``eta = 1`` check).
  """
  model, params0 = init_net(r, config, width, rep)
  t = train(model, params0, x, y, learning_rate=eta,
            num_steps=config.num_steps, loss=loss,
            residual_floor=config.residual_floor, jacobian=True, log=log,
            width=width, rep=rep, eta=eta)
  lam_g0 = t["lambda_min_G"][0]
  c = analysis.condition2_constant(max(t["jacobian_change"]), lam_g0)
  eta_max, in_theorem = theorem(c, eta)
  unit = {"width": width, "rep": rep, "eta": eta,
          "max_ratio": max(t["ratios"])}
  if first_ratio:
    unit["first_ratio"] = t["ratios"][0]
  unit.update({
      "ratios": t["ratios"],
      "lambda_min_G0": lam_g0,
      "C": c,
      "eta_max": eta_max,
      "in_theorem": bool(in_theorem),
      "steps": t["steps"],
      "reached_floor": t["reached_floor"],
      "cholesky_failed_steps": int(sum(t["cholesky_failed"])),
      "power_iteration_converged": all(t["jacobian_converged"]),
  })
  return unit


@dataclasses.dataclass(frozen=True)
class RateSweep:
  """Where a C1/C2 sweep's rate holds, per step size (see ``rate_sweep``)."""

  results: list[dict[str, Any]]  # the units, each marked with ``holds``
  etas: list[float]  # the sweep's step sizes, in order
  bound: dict[float, float]  # per eta: the theorem's bound on a ratio
  widest: int  # the widest width of the sweep
  m_star: dict[float, float | None]  # per eta: from which width it holds
  at_widest: dict[float, float]  # per eta: the largest ratio at ``widest``
  in_theorem: list[dict[str, Any]]  # the runs meeting the hypotheses

  @property
  def c_at_widest(self) -> float:
    """The largest measured ``C`` at the widest width."""
    return max(u["C"] for u in self.results if u["width"] == self.widest)

  def measured(self, failures: Sequence[dict[str, Any]], eta_format: str,
               with_bound: bool = False) -> dict[str, Any]:
    """The summary's figures; per-eta keys end in ``eta=`` + ``eta_format``.

    ``failures``: the runs counted as breaking the rate. ``with_bound``
    also reports each eta's bound (C2, where it depends on the loss; C1's
    is ``1 - eta``).
    """
    results, widest = self.results, self.widest
    out = {
        "widest_width": widest,
        "runs_total": len(results),
        "runs_inside_hypotheses": len(self.in_theorem),
        "runs_inside_breaking_rate": sum(not u["holds"]
                                         for u in self.in_theorem),
        "runs_failing_rate": len(failures),
        "C_min": min(u["C"] for u in results),
        "C_at_widest": self.c_at_widest,
        "cholesky_failed_steps": sum(u["cholesky_failed_steps"]
                                     for u in results),
        "power_iteration_converged": all(u["power_iteration_converged"]
                                         for u in results),
    }
    for eta in self.etas:
      tag = format(eta, eta_format)
      out[f"max_ratio_at_widest/eta={tag}"] = self.at_widest[eta]
      if with_bound:
        out[f"bound/eta={tag}"] = self.bound[eta]
      out[f"m_star/eta={tag}"] = self.m_star[eta]
    return out

  def rate_text(self, etas: Sequence[float], eta_format: str,
                bound_format: str) -> str:
    """Per eta: the largest ratio at the widest width, the bound, ``m*``."""
    return "; ".join(
        f"eta={eta:{eta_format}}: max ratio at m={self.widest} "
        f"{self.at_widest[eta]:.3g} (bound {self.bound[eta]:{bound_format}})"
        f", holds for m >= "
        f"{'none' if self.m_star[eta] is None else f'{self.m_star[eta]:.0f}'}"
        for eta in etas)

  def hypotheses_text(self, theorem: str) -> str:
    """The measured ``C``'s range and how many runs meet ``theorem``'s."""
    cs = [u["C"] for u in self.results]
    inside = self.in_theorem
    where = ", ".join(f"m={u['width']} eta={u['eta']:.3g} C={u['C']:.3f} "
                      f"(max ratio {u['max_ratio']:.4g}"
                      f"{'' if u['holds'] else ' BREAKS the rate'})"
                      for u in inside[:6]) + (" ..." if len(inside) > 6
                                               else "")
    return (f"C = {min(cs):.2g}..{max(cs):.3g} ({self.c_at_widest:.2g} at "
            f"the widest), {theorem}'s hypotheses hold in "
            f"{len(inside)} of {len(self.results)} runs"
            + (f": {where}" if inside else ""))

  def details(self) -> dict[str, Any]:
    """The units without their per-step ratios (kept in the unit files)."""
    return {"runs": [{k: v for k, v in u.items() if k != "ratios"}
                     for u in self.results]}


def rate_sweep(results: list[dict[str, Any]], etas: Sequence[float],
               bound: dict[float, float], rtol: float) -> RateSweep:
  """Marks each unit's ``holds`` and finds, per eta, where the rate holds.

  A unit holds when its largest ratio is within its eta's ``bound``:
  ``max_ratio <= bound (1 + rtol)``, ``rtol`` allowing for round-off.
  ``m_star`` is the smallest width from which on every run holds
  (``analysis.threshold_width``; None when a run at the widest width
  fails; ``rate_checks`` asks it to lie below the widest width).
  """
  for u in results:
    u["holds"] = u["max_ratio"] <= bound[u["eta"]] * (1.0 + rtol)
  widest = max(u["width"] for u in results)
  m_star, at_widest = {}, {}
  for eta in etas:
    rows = [u for u in results if u["eta"] == eta]
    m_star[eta] = analysis.threshold_width([u["width"] for u in rows],
                                  [u["holds"] for u in rows])
    at_widest[eta] = max(u["max_ratio"] for u in rows
                         if u["width"] == widest)
  return RateSweep(results, list(etas), bound, widest, m_star, at_widest,
                   [u for u in results if u["in_theorem"]])


def rate_checks(etas: Sequence[float], eta_format: str, theorem: str,
                hypotheses: str) -> tuple[Check, ...]:
  """The checks C1 and C2 share, as data on ``RateSweep.measured``.

  ``rate_wide`` (observation): for each eta in ``etas`` the rate holds at
  every width from ``m*`` on, ``m*`` below the widest width (so the
  widest width alone is not enough). ``theorem`` (inside the hypotheses):
  at least one run meets ``hypotheses`` and none of those breaks the rate;
  it FAILS when no run qualifies.
  """
  wide = tuple((f"m_star/eta={format(e, eta_format)}", "<", "widest_width")
               for e in etas)
  return (
      Check("rate_wide", wide,
            "per eta, every run at every width >= m* within the bound, m* "
            "below the widest width", verdicts.OBSERVATION),
      Check("theorem", (("runs_inside_hypotheses", ">=", 1),
                        ("runs_inside_breaking_rate", "==", 0)),
            f">= 1 run with {hypotheses} ({theorem}'s hypotheses), and "
            "every such run within the bound", verdicts.THEOREM),
  )


def failure_text(failures: Sequence[dict[str, Any]],
                 describe: Callable[[dict[str, Any]], str]) -> str:
  """The first four runs that break the bound, each by ``describe``."""
  if not failures:
    return "no run breaks the bound"
  return ("breaks: " + ", ".join(describe(u) for u in failures[:4])
          + (" ..." if len(failures) > 4 else ""))


# --------------------------------------------------------------------------
# Figures shared by C1 and C2 (drawn from metrics.jsonl records), and
# by C3 and C4 (drawn from the units).
# --------------------------------------------------------------------------


def ratio_series(records, results, eta: float, bound: float | None,
                 label: str, bound_label: str,
                 color: str) -> list[plots.Series]:
  """Ratios against width for one step size.

  Every step's ratio of every run (dots, from ``records``, the lines
  ``train`` logged), the largest per width (line, from the units'
  ``max_ratio``) and ``bound`` (dashed).
  """
  got = plots.series_from_records(
      records, "width", "ratio", where=lambda rec: rec.get("eta") == eta)
  if not got:
    return []
  (xs, ys), = got.values()
  widths = sorted({u["width"] for u in results})
  mx = [max(u["max_ratio"] for u in results
            if u["eta"] == eta and u["width"] == m) for m in widths]
  out = [plots.Series(xs, ys, None, "scatter", color=color),
         plots.Series(widths, mx, label, color=color)]
  if bound is not None:
    out.append(plots.Series([widths[0], widths[-1]], [bound] * 2,
                            bound_label, "dashed", color=color))
  return out


def residual_series(records, etas, widest: int, narrowest: int,
                    bounds: dict[float, float | None]) -> list[plots.Series]:
  """``||r(k)|| / ||r(0)||`` against ``k`` for repetition 0.

  The widest width as lines, the narrowest as dots, and for each ``eta``
  with a per-step bound ``b`` on the squared ratio the reference
  ``b^(k/2)`` (dashed).
  """
  rep0 = [rec for rec in records
          if "residual_rel" in rec and rec.get("rep") == 0]
  series = []
  for i, eta in enumerate(etas):
    for m, style in ((widest, "line"), (narrowest, "scatter")):
      got = plots.series_from_records(
          rep0, "step", "residual_rel",
          where=lambda rec, e=eta, w=m: rec["eta"] == e and rec["width"] == w)
      if not got:
        continue
      (ks, res), = got.values()
      series.append(plots.Series(ks, res, f"eta={eta:.3g}, m={m}", style,
                                 color=f"C{i}"))
      b = bounds.get(eta)
      if m == widest and b is not None and b > 0:
        series.append(plots.Series(ks, b ** (ks / 2),
                                   f"bound {b:.3g}^(k/2)", "dashed",
                                   color=f"C{i}"))
  return series


def by_width(results: Sequence[dict[str, Any]],
             key: str) -> tuple[list[Any], Any, Any]:
  """``(ys, ux, mean)``: ``key`` of every unit, and its mean per width.

  For C3 and C4's figures: ``ys`` lines up with the units' widths (the
  dots), ``mean`` over the repetitions at the sorted widths ``ux`` (the
  line).
  """
  ys = [u[key] for u in results]
  ux, mean, _, _ = plots.mean_by_x([u["width"] for u in results], ys)
  return ys, ux, mean

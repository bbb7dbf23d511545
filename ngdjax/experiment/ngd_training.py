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
* ``jacobian_change`` (optional): ``||J(k) - J(0)||_2`` by the matrix-free
  power iteration of ``diagnostics.jacobian_change_norm`` (Condition 2).

It also holds the theory's constants as functions of measured figures, so the
four experiments evaluate them one way: the Condition 2 constant ``C`` of a
trajectory, the largest step size Theorems 1 and 2 allow for it, and the
Lemma 7 / Lemma 8 bounds at a measured radius.

Conventions (MATH.md 1-3): sum loss, ``G = J J^T``, scalar output. Where
MATH.md 2 writes ``lambda_0`` for ``lambda_min(G(0))`` (Conditions 1-2,
Theorem 1's proof, Lemmas 2-3) the code says ``lambda_min(G(0))``;
``lambda_0`` is ``lambda_min(G_inf)`` (MATH.md 3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ngdjax import diagnostics, losses, models
from ngdjax.experiment import plots
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
      iterate ``k >= 1``.
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
                                               method="power")
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


def condition2_constant(jacobian_change: float,
                        lambda_min_g0: float) -> float:
  """``C = 3 ||J - J(0)||_2 / sqrt(lambda_min(G(0)))`` (Condition 2).

  Condition 2 asks ``||J - J(0)||_2 <= (C / 3) sqrt(lambda_min(G(0)))``
  over the whole ball of radius ``R``; this is the smallest ``C`` that
  holds at the measured iterates, a lower estimate of the ball's.
  """
  if lambda_min_g0 <= 0:
    return math.inf
  return 3.0 * float(jacobian_change) / math.sqrt(lambda_min_g0)


def theorem1_eta_max(c: float) -> float:
  """``(1 - 2C) / (1 + C)^2``, Theorem 1's largest step; 0 for ``C >= 1/2``."""
  return (1.0 - 2.0 * c) / (1.0 + c) ** 2 if c < 0.5 else 0.0


def theorem2_eta_max(c: float, mu: float, lipschitz: float) -> float:
  """``2 / (mu + L) * (1 - (1 + kappa) C) / (1 + C)^2``, ``kappa = L / mu``.

  Theorem 2's largest step (appendix eqn. 33); 0 when ``(1 + kappa) C >=
  1``.
  """
  kappa = lipschitz / mu
  if (1.0 + kappa) * c >= 1.0:
    return 0.0
  return 2.0 / (mu + lipschitz) * (1.0 - (1.0 + kappa) * c) / (1.0 + c) ** 2


def lemma7_bound(n: int, radius: float, nu: float, delta: float,
                 width: float) -> float:
  """``sqrt(2 n R^{2/3} / (nu^{2/3} delta^{2/3} m^{1/3}))`` (Lemma 7).

  Bounds ``||J - J(0)||_2`` over the ball ``||w - w(0)|| <= R`` with
  probability ``1 - delta``.
  """
  return math.sqrt(2.0 * n * radius ** (2 / 3)
                   / ((nu * delta) ** (2 / 3) * width ** (1 / 3)))


def lemma8_flip_bound(radius: float, nu: float, delta: float,
                      width: float) -> float:
  """``2 k / m`` with ``k = (R m / (nu delta))^{2/3}`` (Lemmas 7-8).

  The proof of Lemma 8 (appendix eqn. 46) shows that no example has ``2k``
  or more flipped neurons inside the ball of radius ``R`` when Lemma 7's
  event holds (probability ``1 - delta``): the flipped fraction of the
  ``(n, m)`` activation pattern is at most ``2 (R / (nu delta))^{2/3}
  m^{-1/3}``. Not capped at 1: the bound says nothing (is vacuous) below
  ``m = 8 (R / (nu delta))^2``, and the figures show how far it is from 1.
  """
  return 2.0 * (radius / (nu * delta)) ** (2 / 3) / width ** (1 / 3)


# --------------------------------------------------------------------------
# Figures shared by C1 and C2 (drawn from metrics.jsonl records).
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

"""C10: linearised GD and NGD reach the same minimum-norm solution by
different paths; NGD with ``eta = 1`` gets there in one step.

``docs/math.md`` ("Linearised dynamics") (the appendix's equations 108-110).
With the Jacobian ``J`` of the two-layer ReLU net frozen at ``w(0)``, ``G = J
J^T`` and ``r0 = u(0) - y``:

    GD :  u(t) - y = exp(-G t) r0,  w(t) - w(0) = -J^T G^{-1} (I - exp(-G t)) r0
    NGD:  u(t) - y = exp(-t) r0,    w(t) - w(0) = -(1 - exp(-t)) J^T G^{-1} r0

(discrete steps: ``(I - eta G)^k`` and ``(1 - eta)^k``). Both end at
``w* = -pinv(J) r0``, the minimum-norm least-squares solution; NGD's paths
are straight segments, GD's are not; NGD at ``eta = 1`` has ``u(1) = y``.

Measured on ``n`` points uniform on the sphere with Gaussian targets, for
the flows and discrete steps of ``ngdjax.linearized``, against dense numpy
references, to the round-off tolerance ``tol = roundoff_factor * eps *
cond(G)``. Sanity details (identities, not checks): NGD's output path is
straight; the closed forms match ``scipy.linalg.expm`` and
``explicit_steps`` numpy iterations. Extra, without a criterion: the real
network trained by ``real_steps`` exact NGD steps against the linearised
prediction (their gap vanishes as the width grows).

Settings and presets: ``configs/linearized_paths.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.linalg

from configs import linearized_paths as settings
from experiments import analysis, common
from ngdjax import data, gram, jacobian, linearized, models
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run

KINDS = ("gd_flow", "ngd_flow", "gd_steps", "ngd_steps")
_LABELS = {"gd_flow": "GD flow", "ngd_flow": "NGD flow",
           "gd_steps": "GD steps", "ngd_steps": "NGD steps"}
_COLORS = {kind: "C0" if kind.startswith("gd") else "C3" for kind in KINDS}
_CONVERGE = "for the discrete iterations to converge"


def _relative(a, b) -> float:
  """``||a - b|| / ||b||`` in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _step_grid(lr: float, rate: float, decay: float, num: int) -> np.ndarray:
  """Whole step counts from 0 until ``(1 - lr rate)^k <= decay``."""
  last = math.ceil(math.log(decay) / math.log1p(-lr * rate))
  ks = np.unique(np.round(np.geomspace(1, max(last, 2), num)))
  return np.concatenate([[0.0], ks])


def _padded(t: np.ndarray, config) -> np.ndarray:
  """``t`` padded with ``inf`` to ``num_times + 2`` entries: one length for
  every trajectory, so the library's jitted cores compile once per method."""
  return np.concatenate([t, np.full(config.num_times + 2 - len(t), np.inf)])


def _try_ngd():
  """``ngdjax.optim.ngd``, or ``None`` where the optimizers are missing."""
  try:
    from ngdjax.optim import ngd
  except ImportError:
    return None
  return ngd


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """The linearised model and the real network (two units), the figures."""
  x, y = data.sphere(config.n, config.d, seed=r.key("data"))
  model = models.two_layer_relu(config.width, nu=config.nu)
  params0 = model.init(r.key("init"), config.d)
  g, j = gram(model, params0, x), jacobian(model, params0, x)
  r0 = (model.apply(params0, x) - y).reshape(-1)
  r.start_progress(2, interval_s=2.0)
  lin = r.unit("linearized", lambda log: _linearized(
      config, model, params0, x, y, g, j, r0, log))
  real = r.unit("real_network", lambda log: _real_network(
      config, model, params0, x, y, g, j, r0, log))
  figures = _plot(r, config, lin)
  tol = lin["tol"]
  sanity = {
      "ngd_straight": lin["ngd_output_deviation"] <= tol,
      "closed_forms": lin["closed_form_error_max"] <= tol,
  }
  measured = {k: v for k, v in lin.items() if not isinstance(v, dict)}
  measured.update({f"real/{k}": v for k, v in real.items()
                   if not isinstance(v, list)})
  real_text = (
      "real network skipped (ngdjax.optim unavailable)"
      if real.get("skipped") else
      f"extra, real net trained by exact NGD (eta {config.real_lr:g}): "
      f"outputs off the linearised prediction by at most "
      f"{real['output_gap_max']:.2g} ||r0|| (residual after "
      f"{config.real_steps} steps {real['residual_real'][-1]:.2g} "
      f"||r0||), weights end {real['weight_gap_last']:.2g} ||w*|| from "
      "the linearised end point")
  text = (
      "end points vs -pinv(J) r0: max rel. error {limit_error_max:.2g}; GD "
      "weight path strays {gd_weight_path_gap:.3g} ||w*|| from NGD's "
      "(same-time gap up to {same_time_gap:.3g}); output path off its "
      "segment: NGD {ngd_output_deviation:.2g}, GD {gd_output_deviation:.3g}"
      " ||r0||; NGD eta=1: ||u(1) - y|| = {ngd_one_step_closed_form:.2g} "
      "(closed form), {ngd_one_step_actual:.2g} (actual step) ||r0||; "
      "closed forms vs expm/explicit steps {closed_form_error_max:.2g}; "
      "{real_text} (n={n}, m={width}, cond(G)={cond_G:.3g}); sanity "
      "(identities, not checks): {sanity}").format(
          **lin, real_text=real_text, n=config.n, width=config.width,
          sanity=", ".join(f"{k} {'ok' if v else 'FAILED'}"
                           for k, v in sanity.items()))
  expectation = (f"round-off tol = {config.roundoff_factor:g} eps cond(G) = "
                 f"{tol:.2g}; {{criteria}}")
  return Outcome(measured, text, expectation, figures,
                 {"sanity": sanity, "real_network": real,
                  "limit_errors": lin["limit_errors"],
                  "closed_form_errors": lin["closed_form_errors"]})


def checks(config) -> tuple[verdicts.Check, ...]:
  """``tol`` is measured: it scales with ``cond(G)``."""
  return (
      verdicts.Check("same_limit", (("limit_error_max", "<=", "tol"),),
                     "every end point within tol of -pinv(J) r0",
                     verdicts.THEOREM),
      verdicts.Check(
          "paths_differ",
          (("gd_weight_path_gap", ">=", config.min_path_gap),),
          f"GD's weight path strays >= {config.min_path_gap:g} ||w*|| from "
          "NGD's"),
      verdicts.Check(
          "ngd_one_step", (("ngd_one_step_closed_form", "<=", "tol"),
                           ("ngd_one_step_actual", "<=", "tol")),
          "NGD at eta = 1 reaches y in one step (closed form and the "
          "optimiser's step), to tol", verdicts.THEOREM),
  )


def _linearized(config, model, params0, x, y, g, j, r0,
                log) -> dict[str, Any]:
  """Every measurement on the linearised model (one resumable unit)."""
  g64 = np.asarray(g, np.float64)
  eig = np.linalg.eigvalsh(g64)
  lam_max, lam_min = float(eig[-1]), float(eig[0])
  cond = lam_max / lam_min
  eps = float(jnp.finfo(g.dtype).eps)
  tol = config.roundoff_factor * eps * cond

  # The dense reference: the minimum-norm least-squares step.
  j64, r64 = np.asarray(j, np.float64), np.asarray(r0, np.float64)
  w_star = -np.linalg.pinv(j64) @ r64
  w_norm = float(np.linalg.norm(w_star))
  r_norm = float(np.linalg.norm(r64))

  eta_gd = config.gd_lr / lam_max
  eta_ngd = config.ngd_lr
  t_end = math.log(1 / config.decay) / lam_min
  flow_t = np.concatenate(
      [[0.0], np.geomspace(1e-2 / lam_max, t_end, config.num_times)])
  settings = {  # kind: (method, learning rate, times or step counts)
      "gd_flow": ("gd", None, flow_t),
      "ngd_flow": ("ngd", None, flow_t),
      "gd_steps": ("gd", eta_gd, _step_grid(eta_gd, lam_min, config.decay,
                                            config.num_times)),
      "ngd_steps": ("ngd", eta_ngd, _step_grid(eta_ngd, 1.0, config.decay,
                                               config.num_times)),
  }

  limit_errors = {}
  paths = {}
  for kind, (method, lr, t) in settings.items():
    tp = _padded(t, config)
    res = np.asarray(linearized.residuals(g, r0, tp, method,
                                          learning_rate=lr), np.float64)
    w = np.asarray(linearized.weights(j, g, r0, tp, method,
                                      learning_rate=lr), np.float64)
    limit_errors[kind] = _relative(w[-1], w_star)  # t = inf
    paths[kind] = (t, res[: len(t)], w[: len(t)])
  mns = linearized.min_norm_solution(j, g, r0)
  limit_errors["min_norm_solution"] = _relative(mns.delta, w_star)
  limit_errors["min_norm_norm"] = abs(float(mns.norm) - w_norm) / w_norm

  # Where paths go: GD's weight path against NGD's segment [0, w*], and
  # each output path against the segment [u(0), y] (r: [r0, 0]).
  zero_w = np.zeros_like(w_star)
  gd_w = paths["gd_flow"][2]
  gd_weight_gap = float(analysis.segment_deviation(gd_w, zero_w, w_star).max()
                        / w_norm)
  same_time_gap = float(np.max(np.linalg.norm(
      gd_w - paths["ngd_flow"][2], axis=1)) / w_norm)
  zero_r = np.zeros_like(r64)
  deviation = {kind: float(analysis.segment_deviation(res, r64, zero_r).max()
                           / r_norm)
               for kind, (_, res, _) in paths.items()}
  ngd_weight_deviation = max(
      float(analysis.segment_deviation(paths[k][2], zero_w, w_star).max()
            / w_norm)
      for k in ("ngd_flow", "ngd_steps"))

  # 2-D picture of the weight paths: along w*, and along the direction in
  # which GD's path strays furthest from it.
  e1, e2 = analysis.excursion_plane(gd_w, w_star)

  for kind, (t, res, w) in paths.items():
    lr = settings[kind][1]
    # A step k of size eta is compared with the flow at time k eta.
    time = t if lr is None else t * lr
    res_norm = np.linalg.norm(res, axis=1) / r_norm
    dist = np.linalg.norm(w - w_star, axis=1) / w_norm
    for i in range(len(t)):
      log(step=i, kind=kind, t=float(time[i]), steps=float(t[i]),
          residual_rel=float(res_norm[i]), weight_dist_rel=float(dist[i]),
          path_x=float(w[i] @ e1 / w_norm), path_y=float(w[i] @ e2 / w_norm))

  # NGD with eta = 1: the closed form, and one actual step of the
  # optimizer on the linearised model.
  one = linearized.residuals(g, r0, _padded(np.array([1.0]), config), "ngd",
                            learning_rate=1.0)[0]
  one_closed = float(np.linalg.norm(np.asarray(one, np.float64)) / r_norm)
  lin_model = linearized.linearize(model, params0)
  ngd = _try_ngd()
  if ngd is not None:
    opt = ngd(lin_model, learning_rate=1.0, damping=0.0)
    params1, _, _ = jax.jit(opt.step)(params0, opt.init(params0), x, y)
    one_step_how = "ngdjax.optim.ngd"
  else:  # the optimizers are missing: the same step, written out
    a = np.linalg.solve(g64, r64)
    params1 = {"W": params0["W"] - (a @ j64).reshape(params0["W"].shape)}
    one_step_how = "explicit dense step (ngdjax.optim unavailable)"
  u1 = np.asarray(lin_model.apply(params1, x) - y, np.float64)
  one_actual = float(np.linalg.norm(u1) / r_norm)

  # The closed forms against dense references.
  cf = {}
  for i in np.unique(np.linspace(1, len(flow_t) - 1, 5).astype(int)):
    ref = scipy.linalg.expm(-g64 * flow_t[i]) @ r64
    cf[f"gd_flow_residual_vs_expm@t={flow_t[i]:.3g}"] = (
        float(np.linalg.norm(paths["gd_flow"][1][i] - ref) / r_norm))
  ngd_flow_ref = np.exp(-flow_t)[:, None] * r64
  cf["ngd_flow_residual_vs_exp(-t)r0"] = float(
      np.max(np.linalg.norm(paths["ngd_flow"][1] - ngd_flow_ref, axis=1))
      / r_norm)
  k = config.explicit_steps
  for kind, method, lr in (("gd_steps", "gd", eta_gd),
                           ("ngd_steps", "ngd", eta_ngd)):
    w = np.zeros_like(w_star)
    for _ in range(k):
      r = r64 + j64 @ w
      w = w - lr * (j64.T @ (r if method == "gd"
                             else np.linalg.solve(g64, r)))
    closed = linearized.weights(j, g, r0, float(k), method,
                                learning_rate=lr)[0]
    cf[f"{kind}_weights_vs_{k}_explicit_steps"] = _relative(closed, w)

  return {
      "lambda_max_G": lam_max, "lambda_min_G": lam_min, "cond_G": cond,
      "tol": tol, "num_weights": int(j.shape[1]), "r0_norm": r_norm,
      "w_star_norm": w_norm, "eta_gd": eta_gd, "eta_ngd": eta_ngd,
      "t_end": t_end, "limit_error_max": max(limit_errors.values()),
      "gd_weight_path_gap": gd_weight_gap, "same_time_gap": same_time_gap,
      "ngd_output_deviation": max(deviation["ngd_flow"],
                                  deviation["ngd_steps"]),
      "gd_output_deviation": max(deviation["gd_flow"],
                                 deviation["gd_steps"]),
      "ngd_weight_deviation": ngd_weight_deviation,
      "ngd_one_step_closed_form": one_closed,
      "ngd_one_step_actual": one_actual, "ngd_one_step_how": one_step_how,
      "closed_form_error_max": max(cf.values()),
      "limit_errors": limit_errors, "closed_form_errors": cf,
  }


def _real_network(config, model, params0, x, y, g, j, r0,
                  log) -> dict[str, Any]:
  """Exact NGD on the real network against the linearised prediction."""
  ngd = _try_ngd()
  if ngd is None:
    return {"skipped": True}
  r_norm = float(jnp.linalg.norm(r0))
  w_norm = float(linearized.min_norm_solution(j, g, r0).norm)
  ks = _padded(np.arange(config.real_steps + 1, dtype=np.float64), config)
  res_lin = linearized.residuals(g, r0, ks, "ngd",
                                 learning_rate=config.real_lr)
  w_lin = linearized.weights(j, g, r0, ks, "ngd",
                               learning_rate=config.real_lr)
  opt = ngd(model, learning_rate=config.real_lr, damping=0.0)
  step = jax.jit(opt.step)
  params, state = params0, opt.init(params0)
  rows = []
  for k in range(config.real_steps + 1):
    if k:
      params, state, _ = step(params, state, x, y)
    res = (model.apply(params, x) - y).reshape(-1)
    dw = (params["W"] - params0["W"]).reshape(-1)
    rows.append({
        "output_gap": float(jnp.linalg.norm(res - res_lin[k]) / r_norm),
        "weight_gap": float(jnp.linalg.norm(dw - w_lin[k]) / w_norm),
        "residual_real": float(jnp.linalg.norm(res) / r_norm),
        "residual_linearized": float(jnp.linalg.norm(res_lin[k]) / r_norm),
    })
    log(step=k, kind="real_network", **rows[-1])
  out = {key: [row[key] for row in rows] for key in rows[0]}
  return {"skipped": False, **out, "output_gap_last": out["output_gap"][-1],
          "weight_gap_last": out["weight_gap"][-1],
          "output_gap_max": max(out["output_gap"])}


def _label(kind, lin, flow_suffix=""):
  """Legend entry; discrete steps name their step size."""
  if kind.endswith("flow"):
    return _LABELS[kind]
  lr = lin["eta_gd"] if kind == "gd_steps" else lin["eta_ngd"]
  return f"{_LABELS[kind]} (eta = {lr:.3g}{flow_suffix})"


def _plot(r: Run, config, lin) -> list[str]:
  """Figures from ``metrics.jsonl``: residuals and distances to ``w*``
  against time, the weight paths in the plane of ``w*`` and GD's largest
  excursion."""
  records = [rec for rec in r.records() if rec.get("kind") in KINDS]
  setting = f"(n={config.n}, m={config.width}, cond(G)={lin['cond_G']:.3g})"
  for fname, key, ylabel, title in (
      ("residual_norm.png", "residual_rel", "||u(t) - y|| / ||u(0) - y||",
       "linearised residuals"),
      ("weight_distance.png", "weight_dist_rel",
       "||w(t) - w(0) - w*|| / ||w*||", "distance to min-norm w*")):
    curves = plots.series_from_records(records, "t", key, group="kind")
    series = []
    for kind in KINDS:
      xs, ys = curves[kind]
      # Log axes; values far below the decay the grids were built for
      # (NGD's exp(-t) at GD's time scale) would only stretch the axis.
      keep = (xs > 0) & (ys > 1e-3 * config.decay)
      series.append(plots.Series(
          xs[keep], ys[keep], _label(kind, lin, ", at t = k eta"),
          "line" if kind.endswith("flow") else "scatter",
          color=_COLORS[kind]))
    plots.line_plot(r.path(fname), series, xlabel="time t", ylabel=ylabel,
                    title=f"C10: {title} {setting}", logx=True, logy=True)

  fig = plots.figure((6.0, 4.2), left=0.13, right=0.97, bottom=0.13,
                     top=0.91)
  ax = fig.add_subplot()
  xs, ys = (plots.series_from_records(records, "step", c, group="kind")
            for c in ("path_x", "path_y"))
  top = max(float(np.max(ys[kind][1])) for kind in KINDS)
  for kind in KINDS:
    coords = xs[kind][1], ys[kind][1]
    if kind.endswith("flow"):
      ax.plot(*coords, lw=2, color=_COLORS[kind], label=_LABELS[kind],
              zorder=2)
    else:
      ax.scatter(*coords, s=14, color=_COLORS[kind], alpha=0.5, zorder=3,
                 label=_label(kind, lin))
  ax.set_ylim(-0.05 * top, 1.7 * top)  # room for the legend
  ax.plot([0], [0], "ko", ms=9, label="w(0)", zorder=4)
  ax.plot([1], [0], "*", color="C2", ms=16, mec="black",
          label="w* = -pinv(J) r0 (min-norm solution)", zorder=4)
  ax.set(xlabel="component along w*: <w(t) - w(0), w*> / ||w*||^2",
         ylabel="component orthogonal to w*, / ||w*||")
  ax.set_title(f"C10: linearised weight paths (GD strays "
               f"{lin['gd_weight_path_gap']:.2g} ||w*||; same end point)",
               fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc="upper right")
  fig.savefig(r.path("weight_paths.png"), dpi=110, bbox_inches="tight")
  return ["residual_norm.png", "weight_distance.png", "weight_paths.png"]


SPEC = Experiment(
    name="linearized_paths", claim="C10",
    title=("Linearised GD and NGD: same minimum-norm limit, different paths; "
           "NGD in one step at eta = 1"),
    row="Linearised GD vs NGD (Theorem 7)",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("gd_lr", ">", 0), Rule("gd_lr", "<", 2, _CONVERGE),
           Rule("ngd_lr", ">", 0), Rule("ngd_lr", "<", 2, _CONVERGE),
           Rule("real_steps", ">=", 1),
           Rule("real_steps", "<", "num_times")))


if __name__ == "__main__":
  common.main(SPEC)

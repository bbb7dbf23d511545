"""C11: the appendix's Figure 1, output-space paths of GD and NGD.

``docs/math.md`` ("Linearised dynamics"): on the linearised network, gradient
flow moves the outputs by ``u(t) - y = exp(-G t) (u(0) - y)``, natural-gradient
flow by ``exp(-t) (u(0) - y)``: NGD moves every output, and the whole output
vector, along the straight segment from ``u(0)`` to ``y``; GD shrinks ``G``'s
fast eigen-directions first and bends; both end at ``y``. The appendix draws
this on MNIST 4 vs 9 with two outputs; here on scikit-learn's 8x8 digits (no
download), unit rows, one-hot targets, ``two_layer_relu(width, out_dim=2)``.

Measured at the random initialisation with the closed forms of
``ngdjax.linearized.residuals``: how far each example's 2-D path and the
whole output vector stray from their segments (the check would fail if
``G`` were a multiple of ``I``). NGD's straightness (to ``tol =
roundoff_factor * 2n * eps``), both ending at ``y`` and GD matching
``scipy.linalg.expm`` are identities: sanity details, not checks.

Settings and presets: ``configs/figure1.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.linalg

from configs import figure1 as settings
from experiments import analysis, common
from ngdjax import data, gram, linearized, models
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run

METHODS = ("gd", "ngd")
_LABELS = {"gd": "GD flow", "ngd": "NGD flow"}
_STYLE = {"gd": dict(color="C0", ls="-"), "ngd": dict(color="C3", ls="--")}


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """The paths (one unit), the figures and the report's text."""
  ds = data.digits(classes=tuple(config.classes), targets="onehot",
                   n_train=config.n_train, seed=config.seed)
  x, y = ds.x_train, ds.y_train
  model = models.two_layer_relu(config.width, out_dim=2, nu=config.nu)
  params0 = model.init(r.key("init"), x.shape[1])
  # Drawn: the first examples of class 0, then of class 1 (half each).
  half, labels = config.examples // 2, np.asarray(ds.labels_train)
  shown = [int(i) for k, want in ((0, half), (1, config.examples - half))
           for i in np.flatnonzero(labels == k)[:want]]
  r.start_progress(1)
  res = r.unit("paths", lambda log: _paths(config, model, params0, x, y,
                                           shown, log))
  figures = _plot(r, config, res, ds.classes)
  tol = res["tol"]
  sanity = {
      "ngd_straight": res["ngd_deviation_max"] <= tol,
      "both_reach_y": max(res["gd_end"], res["ngd_end"]) <= tol,
      "closed_form": res["closed_form_error"] <= tol,
  }
  text = (
      "max deviation from the straight segment u(0) -> y, relative: NGD "
      "{ngd_deviation_max:.2g} (every example and the whole vector), GD "
      "{gd_deviation_vector:.3g} (whole vector), per example median "
      "{gd_deviation_median:.3g}, max {gd_deviation_examples_max:.3g}; "
      "||u(inf) - y|| / ||r0||: GD {gd_end:.2g}, NGD {ngd_end:.2g}; at the "
      "last drawn time GD {gd_end_drawn:.2g} (digits {classes[0]} vs "
      "{classes[1]}, n={n_train}, m={width}, cond(G)={cond_G:.3g}); sanity "
      "(identities, not checks): {sanity}").format(
          **res, classes=config.classes, n_train=config.n_train,
          width=config.width, sanity=", ".join(
              f"{k} {'ok' if v else 'FAILED'}" for k, v in sanity.items()))
  expectation = (
      "{criteria}; sanity, not judged: NGD straight to round-off tol = "
      f"{config.roundoff_factor:g} N eps = {tol:.2g}, both end at y, GD "
      "matches expm")
  return Outcome(
      {k: v for k, v in res.items() if not isinstance(v, list)}, text,
      expectation, figures,
      {"sanity": sanity, "shown_examples": shown,
       "shown_labels": [int(ds.classes[k]) for k in labels[shown]],
       "deviation_per_shown_example": {
           m: res[f"{m}_deviation_shown"] for m in METHODS}})


def checks(config) -> tuple[verdicts.Check, ...]:
  return (verdicts.Check(
      "gd_curves", (("gd_deviation_vector", ">=", config.min_path_gap),),
      f"GD's whole-vector path strays >= {config.min_path_gap:g} ||r0|| from "
      "the straight segment"),)


def _paths(config, model, params0, x, y, shown, log) -> dict[str, Any]:
  """The closed-form output paths and their measurements."""
  n = x.shape[0]
  u0 = model.apply(params0, x)
  r0 = (u0 - y).reshape(-1)
  g = gram(model, params0, x)
  eig = np.linalg.eigvalsh(np.asarray(g, np.float64))
  lam_max, lam_min = float(eig[-1]), float(eig[0])
  eps = float(jnp.finfo(g.dtype).eps)
  tol = config.roundoff_factor * 2 * n * eps
  t_end = math.log(1 / config.decay) / lam_min
  t = np.concatenate([[0.0], np.geomspace(1e-3 / lam_max, t_end,
                                          config.num_times), [np.inf]])
  u0_64 = np.asarray(u0, np.float64)
  y64 = np.asarray(y, np.float64)
  r64 = np.asarray(r0, np.float64)
  r_norm = float(np.linalg.norm(r64))
  out: dict[str, Any] = {"lambda_max_G": lam_max, "lambda_min_G": lam_min,
                         "cond_G": lam_max / lam_min, "tol": tol,
                         "t_end": t_end, "r0_norm": r_norm}
  paths, outputs = {}, {}
  for m in METHODS:
    res = np.asarray(linearized.residuals(g, r0, t, m), np.float64)
    out[f"{m}_end"] = float(np.linalg.norm(res[-1]) / r_norm)
    out[f"{m}_end_drawn"] = float(np.linalg.norm(res[-2]) / r_norm)
    paths[m] = res = res[:-1]  # the drawn (finite) times
    outputs[m] = u = res.reshape(len(res), n, 2) + y64[None]
    dev = np.array([
        analysis.segment_deviation(u[:, i], u0_64[i], y64[i]).max()
        / np.linalg.norm(y64[i] - u0_64[i]) for i in range(n)])
    vec = float(analysis.segment_deviation(res, r64, np.zeros_like(r64)).max()
                / r_norm)
    out[f"{m}_deviation_vector"] = vec
    out[f"{m}_deviation_examples_max"] = float(dev.max())
    out[f"{m}_deviation_median"] = float(np.median(dev))
    out[f"{m}_deviation_max"] = max(vec, float(dev.max()))
    out[f"{m}_deviation_shown"] = dev[shown].tolist()

  # The whole output vector in the plane of the segment (e1, towards y)
  # and of GD's largest excursion from it (e2).
  e1, e2 = analysis.excursion_plane(paths["gd"] - r64, -r64)
  for m, res in paths.items():
    moved = res - r64
    for k in range(len(res)):
      log(step=k, method=m, t=float(t[k]),
          residual_rel=float(np.linalg.norm(res[k]) / r_norm),
          proj_x=float(moved[k] @ e1 / r_norm),
          proj_y=float(moved[k] @ e2 / r_norm),
          shown_u=outputs[m][k, shown].tolist())

  # The drawn GD path against a dense matrix exponential.
  g64 = np.asarray(g, np.float64)
  errors = [np.linalg.norm(scipy.linalg.expm(-g64 * t[k]) @ r64
                           - paths["gd"][k]) / r_norm
            for k in np.linspace(1, config.num_times, 5).astype(int)]
  out["closed_form_error"] = float(max(errors))
  out["shown_u0"] = u0_64[shown].tolist()
  out["shown_y"] = y64[shown].tolist()
  return out


def _plot(r: Run, config, res, classes) -> list[str]:
  """``figure1.png`` (per-example planes) and ``whole_vector.png``."""
  records = [rec for rec in r.records() if "shown_u" in rec]
  paths = {}
  for m in METHODS:
    rows = sorted((rec for rec in records if rec["method"] == m),
                  key=lambda rec: rec["step"])
    paths[m] = {k: np.array([rec[k] for rec in rows], float)
                for k in ("shown_u", "proj_x", "proj_y", "t", "residual_rel")}
  u0 = np.asarray(res["shown_u0"])
  y = np.asarray(res["shown_y"])
  count = u0.shape[0]
  cols = min(3, count)
  rows_ = -(-count // cols)
  fig = plots.figure((4.0 * cols, 3.9 * rows_ + 0.5), left=0.07, right=0.98,
                     bottom=0.08, top=0.84, hspace=0.42, wspace=0.3)
  for i in range(count):
    ax = fig.add_subplot(rows_, cols, i + 1)
    for m in METHODS:
      ax.plot(*paths[m]["shown_u"][:, i].T, lw=2, label=_LABELS[m],
              **_STYLE[m])
    ax.plot(*u0[i], "ko", ms=8, label="u(0) (random init)")
    ax.plot(*y[i], "*", color="C2", mec="black", ms=15, label="target y")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel=f"output 1 (digit {classes[0]})",
           ylabel=f"output 2 (digit {classes[1]})")
    label = classes[int(np.argmax(y[i]))]
    ax.set_title(f"example of digit {label}: off the line by GD "
                 f"{res['gd_deviation_shown'][i]:.2f}, NGD "
                 f"{res['ngd_deviation_shown'][i]:.0e}", fontsize=8.5)
    ax.grid(True, alpha=0.3)
  handles, labels = fig.axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9,
             bbox_to_anchor=(0.5, 0.935), frameon=False)
  fig.suptitle(
      f"C11 (appendix Figure 1): output-space paths of linearised GD and NGD"
      f"\nfrom a random initialisation, digits {classes[0]} vs {classes[1]}, "
      f"two outputs (n={config.n_train}, m={config.width})", fontsize=10.5,
      y=0.995)
  fig.savefig(r.path("figure1.png"), dpi=100, bbox_inches="tight")

  fig = plots.figure((11.0, 4.3), left=0.07, right=0.98, bottom=0.13,
                     top=0.88, wspace=0.25)
  ax = fig.add_subplot(1, 2, 1)
  for m in METHODS:
    ax.plot(paths[m]["proj_x"], paths[m]["proj_y"], lw=2, label=_LABELS[m],
            **_STYLE[m])
  ax.plot([0], [0], "ko", ms=8, label="u(0)")
  ax.plot([1], [0], "*", color="C2", mec="black", ms=15, label="y")
  ax.set(xlabel="along y - u(0): <u(t) - u(0), y - u(0)> / ||y - u(0)||^2",
         ylabel="orthogonal (GD's largest excursion), / ||y - u(0)||")
  ax.set_title(f"whole output vector (R^{2 * config.n_train}): GD strays "
               f"{res['gd_deviation_vector']:.2f}, NGD "
               f"{res['ngd_deviation_vector']:.0e}", fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  ax = fig.add_subplot(1, 2, 2)
  for m in METHODS:
    t, res_rel = paths[m]["t"], paths[m]["residual_rel"]
    keep = (t > 0) & (res_rel > 1e-3 * config.decay)
    ax.plot(t[keep], res_rel[keep], lw=2, label=_LABELS[m], **_STYLE[m])
  ax.set(xscale="log", yscale="log", xlabel="time t",
         ylabel="||u(t) - y|| / ||u(0) - y||")
  ax.set_title(f"residual (cond(G) = {res['cond_G']:.3g})", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(r.path("whole_vector.png"), dpi=100, bbox_inches="tight")
  return ["figure1.png", "whole_vector.png"]


SPEC = Experiment(
    name="figure1", claim="C11",
    title=("The appendix's Figure 1: output-space paths of linearised GD and "
           "NGD on digits 4 vs 9, two outputs"),
    row="The appendix's Figure 1",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("len(classes)", "in", (2,), "two outputs"),
           Rule("examples", ">=", 2), Rule("examples", "<=", "n_train")))


if __name__ == "__main__":
  common.main(SPEC)

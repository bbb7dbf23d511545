"""C12: training curves of NGD, K-FAC (with and without the Forster
transform), GD and Adam on digits 4 vs 9, across widths, with wall-clock.

``docs/math.md`` ("The theorems", "K-FAC", "The Forster transform"): NGD
contracts the residual by ``1 - eta`` per step whatever ``cond(G)`` (Theorem
1); K-FAC by ``1 - eta n h_i`` per coordinate (leverage scores ``h_i``), ``1 -
eta d`` for every ``i`` after the Forster transform; ``cond(G)`` sets GD's
speed. So NGD and K-FAC after Forster should reach a small loss in far fewer
steps than GD and Adam.

Data: digits 4 vs 9 projected onto their top ``pca_dim`` right singular
vectors, unit rows: on the raw pixels (7 zero in every image, some lit in
one image only) the Forster transform does not exist (Newton stalls at
isotropy error 2.65, Algorithm 1 stops at ``cond(A)`` 7e13).

Methods, from one initialisation per width, full batch: ``ngd``; ``kfac``
at ``eta = 1 / (n max_i h_i)`` (no coordinate overshoots, to first order);
``kfac_forster`` on ``forster(X).Z`` at ``eta = 1/d``, its clock starting
at the transform's time; ``gd`` and ``adam`` at each listed step size, the
one with the fewest steps to the target compared. K-FAC adds
``kfac_factor_damping`` (1e-10) to each factor, undamped to about 1e-9 but
solved by Cholesky: the ``eigh`` that zero damping needs took 0.85 s instead
of 10 ms under load. Steps are timed until the loss is on the host,
compilation excluded; a baseline that never reaches the target counts as
``budget + 1`` steps. Wall-clock is reported, not judged.

Settings and presets: ``configs/training_curves.py``; results of earlier runs:
``docs/results.md``.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import training_curves as settings
from experiments import common
from ngdjax import data, forster, gram, models
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key
from ngdjax.optim import gd, kfac, ngd, optax_optimizer

METHODS = ("ngd", "kfac", "kfac_forster", "gd", "adam")
FAST = ("ngd", "kfac_forster")
BASELINES = ("gd", "adam")
_LABELS = {"ngd": "NGD", "kfac": "K-FAC", "kfac_forster": "K-FAC + Forster",
           "gd": "GD", "adam": "Adam"}
_COLORS = {"ngd": "C3", "kfac": "C0", "kfac_forster": "C1", "gd": "C2",
           "adam": "C4"}
_DIVERGED = 1e6


def _make(model, method: str, lr, damping: float):
  """``method``'s optimizer at step size ``lr`` (may be traced); ``damping``
  is NGD's damping or K-FAC's factor damping."""
  if method == "ngd":
    return ngd(model, learning_rate=lambda count: lr, damping=damping)
  if method in ("kfac", "kfac_forster"):
    return kfac(model, learning_rate=lambda count: lr, damping=0.0,
                factor_damping=(damping, damping))
  if method == "gd":
    return gd(model, learning_rate=lambda count: lr)
  if method == "adam":
    return optax_optimizer(model, optax.adam(lr))
  raise ValueError(f"unknown method {method!r}")


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _step(model, method, damping, params, state, x, y, lr):
  """One step; ``lr`` is traced, so every step size shares a compilation."""
  return _make(model, method, lr, damping).step(params, state, x, y)


@functools.partial(jax.jit, static_argnums=0)
def _loss(model, params, x, y):
  """``L = 1/2 ||u - y||^2``, compiled (no eager dispatch inside timings)."""
  return 0.5 * jnp.sum(jnp.square(model.apply(params, x) - y))


def prepare_inputs(x: np.ndarray, dim: int) -> np.ndarray:
  """``(n, d)`` rows projected onto their top ``dim`` right singular vectors
  (``1 <= dim <= min(n, d)``): ``(n, dim)`` float64 unit rows."""
  x = np.asarray(x, np.float64)
  if not 1 <= dim <= min(x.shape):
    raise ValueError(f"pca_dim must lie in [1, {min(x.shape)}], got {dim}")
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  xp = x @ vt[:dim].T
  norms = np.linalg.norm(xp, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError("a row has no component in the kept directions")
  return xp / norms


def steps_to(losses_rel, target: float) -> int | None:
  """First step ``k`` with ``L(k) <= target L(0)``, or ``None``."""
  hits = np.flatnonzero(np.asarray(losses_rel, np.float64) <= target)
  return int(hits[0]) if hits.size else None


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """The setup unit, one unit per (width, method, step size), the figures."""
  ds = data.digits(classes=tuple(config.classes), targets="pm1",
                   seed=config.seed, n_train=config.n_train)
  x64 = prepare_inputs(ds.x_train, int(config.pca_dim))
  n, d = x64.shape
  y = ds.y_train
  x = jnp.asarray(x64, y.dtype)
  nh = n * np.einsum("ij,ij->i", x64,
                     np.linalg.solve(x64.T @ x64, x64.T).T)
  fz = forster(x)
  inputs = {"raw": x, "forster": fz.Z}

  def describe(log):
    del log
    start = time.perf_counter()
    jax.block_until_ready(forster(x))  # warm: the transform's own cost
    eig = np.linalg.eigvalsh(x64.T @ x64)
    return {"n": n, "d": d, "nh_min": float(nh.min()),
            "nh_max": float(nh.max()), "cond_xtx": float(eig[-1] / eig[0]),
            "forster_error": float(fz.error),
            "forster_iterations": int(fz.iterations),
            "forster_seconds": time.perf_counter() - start}

  # A unit, so that a resumed run keeps the Forster time its K-FAC +
  # Forster curves were drawn with.
  setup = r.unit("setup", describe)
  hypers = {"gd": config.gd_scales, "adam": config.adam_lrs}
  runs = [(int(m), method, float(h)) for m in config.widths
          for method in METHODS for h in hypers.get(method, (1.0,))]
  work = {k: 1.0 + (config.first_order_steps if k[1] in BASELINES
                    else config.curvature_steps * 20) * k[0] / 2048
          for k in runs}
  r.start_progress(len(runs), interval_s=5.0, work=sum(work.values()))
  grams, results = {}, []
  for m, method, hyper in runs:
    # Equal models hash equal, so reruns reuse _step's compiled code.
    model = models.two_layer_relu(m, nu=float(config.nu))
    params0 = model.init(r.key("init", f"width={m}"), d)
    if m not in grams and method == "gd":
      g0 = np.asarray(gram(model, params0, x), np.float64)
      grams[m] = float(np.linalg.eigvalsh(g0)[-1])
    results.append(r.unit(
        unit_key(width=m, method=method, hyper=f"{hyper:g}"),
        functools.partial(_train, config, model, m, params0, inputs, y,
                          method, hyper, setup, grams.get(m)),
        work=work[m, method, hyper]))
  return _summarise(r, config, setup, results)


def _train(config, model, width, params0, inputs, y, method, hyper, setup,
           lambda_max, log) -> dict[str, Any]:
  """One training run; logs the loss and wall-clock after every step."""
  lr = hyper / lambda_max if method == "gd" else {
      "ngd": config.ngd_lr, "kfac": config.kfac_scale / setup["nh_max"],
      "kfac_forster": config.kfac_forster_scale / setup["d"],
      "adam": hyper}[method]
  x = inputs["forster" if method == "kfac_forster" else "raw"]
  steps = (config.first_order_steps if method in BASELINES
           else config.curvature_steps)
  damping = float(config.ngd_damping if method == "ngd"
                  else config.kfac_factor_damping)
  opt = _make(model, method, 1.0, damping)
  state0 = opt.init(params0)
  lr_arr = jnp.asarray(lr, y.dtype)
  # Warm-up (compiles; discarded), then the timed run from the same start.
  jax.block_until_ready(_step(model, method, damping, params0, state0, x, y,
                              lr_arr))
  loss0 = float(_loss(model, params0, x, y))
  clock = setup["forster_seconds"] if method == "kfac_forster" else 0.0
  log(step=0, width=width, method=method, hyper=hyper,
      loss_rel=1.0, seconds=clock)
  params, state, status = params0, state0, "budget"
  losses, seconds = [1.0], [clock]
  for k in range(1, steps + 1):
    start = time.perf_counter()
    params, state, _ = _step(model, method, damping, params, state, x, y,
                             lr_arr)
    loss = float(_loss(model, params, x, y)) / loss0
    clock += time.perf_counter() - start
    losses.append(loss)
    seconds.append(clock)
    log(step=k, width=width, method=method, hyper=hyper,
        loss_rel=loss, seconds=clock)
    if not math.isfinite(loss) or loss > _DIVERGED:
      status = "diverged"
      break
    if loss <= config.stop_fraction:
      status = "stopped"
      break
  hit = steps_to(losses, config.target_fraction)
  return {
      "width": width, "method": method, "hyper": hyper,
      "learning_rate": float(lr), "loss0": loss0,
      "final_loss_rel": losses[-1], "steps_run": len(losses) - 1,
      "status": status, "steps_to_target": hit,
      "seconds_to_target": None if hit is None else seconds[hit],
      "seconds_per_step": (seconds[-1] - seconds[0]) / max(1,
                                                           len(losses) - 1),
  }


def _best(candidates: list[dict[str, Any]]) -> dict[str, Any]:
  """Fewest steps to the target; ties (or none reached) by final loss."""
  def key(u):
    steps = u["steps_to_target"]
    final = u["final_loss_rel"]
    return (math.inf if steps is None else steps,
            final if math.isfinite(final) else math.inf)
  return min(candidates, key=key)


def checks(config) -> tuple[verdicts.Check, ...]:
  """A fast method that never reached the target fails."""
  return tuple(verdicts.Check(
      f"{fast}_fast",
      tuple((f"m{int(m)}/{fast}/steps_to_target", "<=",
             f"m{int(m)}/{base}/effective_steps_over_speedup")
            for m in config.widths for base in BASELINES),
      f"{_LABELS[fast]} needs <= 1/{config.speedup:g} of the steps of "
      "the best GD and Adam at every width") for fast in FAST)


def _label(method, u, plot=False) -> str:
  """``method``'s name with its (chosen) step size: report or legend."""
  h, lr = u["hyper"], u["learning_rate"]
  if plot:
    extra = {"gd": f"eta = {h:g} / lambda_max(G(0))", "adam": f"lr = {h:g}",
             "kfac": f"eta = {lr:.3g} = 1/(n max h)",
             "kfac_forster": f"eta = 1/d = {lr:.3g}",
             "ngd": f"eta = {lr:g}"}[method]
  else:
    extra = {"gd": f"eta={h:g}/lambda_max", "adam": f"lr={h:g}"}.get(method)
  return _LABELS[method] + (f" ({extra})" if extra else "")


def _summarise(r: Run, config, setup, results) -> Outcome:
  widths = [int(m) for m in config.widths]
  table = {str(m): {method: _best([u for u in results if u["width"] == m
                                   and u["method"] == method])
                    for method in METHODS} for m in widths}
  figures = _plot(r, config, table)
  measured: dict[str, Any] = {"setup": setup}
  for m in widths:
    for method, u in table[str(m)].items():
      for k in ("steps_to_target", "seconds_to_target", "final_loss_rel",
                "seconds_per_step"):
        measured[f"m{m}/{method}/{k}"] = u[k]
      if method in BASELINES:
        steps = u["steps_to_target"]
        measured[f"m{m}/{method}/best_hyper"] = u["hyper"]
        measured[f"m{m}/{method}/effective_steps_over_speedup"] = (
            (config.first_order_steps + 1 if steps is None else steps)
            / config.speedup)

  def show(u):
    s = u["steps_to_target"]
    if s is None:
      how = ", diverged" if u["status"] == "diverged" else ""
      return (f">{u['steps_run']} steps (final "
              f"{u['final_loss_rel']:.2g}{how})")
    return f"{s} steps/{u['seconds_to_target']:.2g}s"

  parts = [f"m={m}: " + ", ".join(
      f"{_label(method, u)} {show(u)}"
      for method, u in table[str(m)].items()) for m in widths]
  text = (
      "steps (and seconds) to L <= {target:g} L(0): {parts} (digits "
      "{classes[0]} vs {classes[1]}, n={n}, d={d} (PCA), cond(X^T X)="
      "{cond_xtx:.3g}, n h in [{nh_min:.3g}, {nh_max:.3g}])").format(
          target=config.target_fraction, parts="; ".join(parts),
          classes=config.classes, **setup)
  expectation = (
      f"NGD (eta={config.ngd_lr:g}) and K-FAC+Forster (eta=1/d) reach "
      f"L <= {config.target_fraction:g} L(0) in <= 1/{config.speedup:g} of "
      f"the steps of the best GD and the best Adam, at every width "
      f"(budgets: {config.curvature_steps} / {config.first_order_steps} "
      "steps; a baseline that never got there counts as budget + 1)")
  return Outcome(measured, text, expectation, figures, {"runs": results})


def _plot(r: Run, config, table) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  records = [rec for rec in r.records() if "loss_rel" in rec]
  figures = []
  floor = config.stop_fraction * 1e-2
  for m_key, row in table.items():
    m = int(m_key)
    for xkey, xlabel, suffix in (
        ("step", "step (log axis; step 0 drawn at 0.5)", "step"),
        ("seconds", "wall-clock seconds (compilation excluded)", "time")):
      curves = plots.series_from_records(records, xkey, "loss_rel",
                                         group="unit")
      series = []
      for method, best in row.items():
        key = unit_key(width=m, method=method, hyper=f"{best['hyper']:g}")
        if key not in curves:
          continue
        xs, ys = curves[key]
        # Log axes: the starting point of a step axis sits at 1 (step 0
        # is drawn at 0.5), and losses below the floor are clipped.
        xs = np.where(xs <= 0, 0.5 if xkey == "step" else np.nan, xs)
        keep = np.isfinite(xs) & np.isfinite(ys) & (ys > floor)
        series.append(plots.Series(xs[keep], ys[keep],
                                   _label(method, best, plot=True),
                                   color=_COLORS[method]))
      fname = f"loss_vs_{suffix}_m{m}.png"
      plots.line_plot(
          r.path(fname), series, xlabel=xlabel, ylabel="L(k) / L(0)",
          title=f"C12: training loss on digits {config.classes[0]} vs "
          f"{config.classes[1]}, width m={m}", logx=True, logy=True,
          hlines=[(config.target_fraction,
                   f"target {config.target_fraction:g} L(0)")])
      figures.append(fname)
  return figures


SPEC = Experiment(
    name="training_curves", claim="C12",
    title=("Training curves of NGD, K-FAC (with and without Forster), GD and "
           "Adam on digits 4 vs 9, across widths, with wall-clock"),
    row="Training curves",
    get_config=settings.get_config, measure=measure, checks=checks,
    rules=(Rule("len(classes)", "in", (2,), "two digits"),
           Rule("len(widths)", ">=", 1),
           Rule("each(widths)", ">=", "n_train", "so that K-FAC's P_S = I"),
           Rule("len(gd_scales)", ">=", 1), Rule("len(adam_lrs)", ">=", 1),
           Rule("curvature_steps", ">=", 1),
           Rule("first_order_steps", ">=", 1),
           Rule("stop_fraction", ">", 0),
           Rule("stop_fraction", "<", "target_fraction"),
           Rule("target_fraction", "<", 1)))


if __name__ == "__main__":
  common.main(SPEC)

"""C12: training curves of NGD, K-FAC (with and without the Forster
transform), GD and Adam on digits 4 vs 9, across widths, with wall-clock.

MATH.md 2, 4-5: NGD contracts the residual by ``1 - eta`` per step whatever
the conditioning of the Gram matrix (Theorem 1); K-FAC by ``1 - eta n h_i``
per coordinate (leverage scores ``h_i`` of the inputs), which after the
Forster transform is ``1 - eta d`` for every ``i``, so K-FAC at
``eta = 1/d`` is NGD at ``eta = 1``. Gradient descent contracts the
eigen-direction ``k`` of ``G`` by ``1 - eta lambda_k(G)`` with ``eta <
2 / lambda_max(G)``: its speed is set by ``cond(G)``. So on real data (where
``cond(G)`` is large) NGD and K-FAC after Forster should reach a small loss
in far fewer steps than GD and Adam.

Data: scikit-learn's 8x8 digits 4 vs 9 (``ngdjax.data.digits``, ``+-1``
targets, ``n_train`` training images), projected onto their top
``pca_dim`` right singular vectors (no centring) and renormalised to unit
rows, for every method alike. Why project: the raw 64 pixels include 7 that
are zero in every training image and pixels lit in a single image (leverage
score 1), so the rows are far from general position and the Forster
transform does not exist (measured on the 57 non-constant pixels: Newton
stalls at isotropy error 2.65, Algorithm 1 stops at ``cond(A)`` 7e13);
after the projection it converges in a few Newton steps.

Methods, all on ``two_layer_relu(width)`` from one initialisation per width,
full batch, sum loss ``L = 1/2 ||u - y||^2`` (``ngdjax.optim``):

* ``ngd``: exact NGD at ``eta = ngd_lr``, damping ``ngd_damping``;
* ``kfac``: K-FAC on the projected inputs at ``eta = kfac_scale /
  (n max_i h_i)`` (the largest step at which no coordinate overshoots, to
  first order);
* ``kfac_forster``: K-FAC on ``Z = forster(X).Z`` at ``eta =
  kfac_forster_scale / d``; its wall-clock starts at the (warm) time of the
  Forster transform.

Both K-FAC runs add ``kfac_factor_damping`` (1e-10) to each factor and no
pi-split damping: the factors' smallest eigenvalues are many orders larger,
so this is the undamped update of MATH.md 4 to about 1e-9, but it is solved
by Cholesky instead of the eigendecomposition pseudo-inverse that exactly
zero damping selects. Seen on this machine: a 256 x 256 ``eigh`` sometimes
took 0.85 s instead of about 10 ms while other processes ran, which made the
undamped K-FAC's wall-clock 40 times NGD's; with Cholesky a K-FAC step
costs about as much as an NGD step, as it should.
* ``gd``: gradient descent at ``eta = s / lambda_max(G(0))`` for each ``s``
  in ``gd_scales``;
* ``adam``: ``optax.adam(lr)`` for each ``lr`` in ``adam_lrs``.

For GD and Adam the step size with the fewest steps to the target is the
one compared (ties: the lower final loss), so the baselines are not
handicapped by one poor choice. Each run stops after its step budget
(``curvature_steps`` for the first three, ``first_order_steps`` for the
baselines), when the loss falls below ``stop_fraction L(0)``, or when it
exceeds ``1e6 L(0)``. Wall-clock: every step is timed until the loss at
the new parameters is on the host (one compiled forward pass, which every
method pays), compilation excluded (one warm-up step is run and discarded
first).

Measured, per width and method: the loss after every step, relative to
``L(0)``, against steps and seconds; the steps and seconds to reach
``target_fraction L(0)`` (``None`` when the budget ran out).

Pass criterion (stated before measuring), at every width: NGD
(``ngd_fast``) and K-FAC after Forster (``kfac_forster_fast``) each reach
the target, in at most ``1 / speedup`` times the steps of the best GD and of
the best Adam; a baseline that never reached it counts as ``budget + 1``
steps (so the check can only be in the fast methods' favour by a margin the
budget allows: ``speedup * steps <= budget + 1``).

Wall-clock numbers are reported but not part of the criterion: they depend
on the machine and on what else runs on it.

Results of both presets: ``configs/training_curves.py``.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ngdjax import data, models
from ngdjax._src.forster import forster
from ngdjax._src.jacobian import gram
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.runner import Run, unit_key
from ngdjax.optim import gd, kfac, ngd, optax_optimizer

NAME = "training_curves"
CLAIM = "C12"
TITLE = ("Training curves of NGD, K-FAC (with and without Forster), GD and "
         "Adam on digits 4 vs 9, across widths, with wall-clock")
METHODS = ("ngd", "kfac", "kfac_forster", "gd", "adam")
FAST = ("ngd", "kfac_forster")
BASELINES = ("gd", "adam")
_LABELS = {"ngd": "NGD", "kfac": "K-FAC", "kfac_forster": "K-FAC + Forster",
           "gd": "GD", "adam": "Adam"}
_COLORS = {"ngd": "C3", "kfac": "C0", "kfac_forster": "C1", "gd": "C2",
           "adam": "C4"}
_DIVERGED = 1e6


def default_config() -> ml_collections.ConfigDict:
  """The full run (its fields are the experiment's schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.classes = (4, 9)
  c.n_train = 256
  c.pca_dim = 32  # inputs projected onto this many singular vectors
  c.widths = (512, 2048, 8192)  # >= n_train: K-FAC's P_S = I
  c.nu = 1.0
  c.ngd_lr = 1.0
  c.ngd_damping = 0.0
  c.kfac_scale = 1.0  # kfac: eta = this / (n max_i h_i)
  c.kfac_factor_damping = 1e-10  # added to both factors: Cholesky solves
  c.kfac_forster_scale = 1.0  # kfac_forster: eta = this / d
  c.gd_scales = (1.0, 1.9)  # gd: eta = s / lambda_max(G(0))
  c.adam_lrs = (1e-3, 1e-2, 1e-1)
  c.curvature_steps = 40  # budget of ngd, kfac, kfac_forster
  c.first_order_steps = 1000  # budget of gd, adam
  c.target_fraction = 1e-4  # "small loss": L <= this L(0)
  c.stop_fraction = 1e-14  # a run stops below this L(0)
  c.speedup = 10.0  # fast methods need <= 1/speedup of the baselines' steps
  return c


@functools.lru_cache(maxsize=16)
def _model(width: int, nu: float) -> models.Model:
  # One Model per (width, nu): a static argument of _step, so reruns reuse
  # its compiled code.
  return models.two_layer_relu(width, nu=nu)


def _make(model, method: str, lr, damping: float):
  """The optimizer of ``method`` at step size ``lr`` (may be traced).

  ``damping`` is NGD's damping, or K-FAC's factor damping.
  """
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
  """Rows projected onto the top ``dim`` right singular vectors, unit norm.

  Args:
    x: ``(n, d)`` inputs.
    dim: ``1 <= dim <= min(n, d)``.

  Returns:
    ``(n, dim)`` float64 unit rows.
  """
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


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs C12 and returns its summary (also written to ``summary.json``)."""
  with Run(workdir, config, default_config(), name=NAME, claim=CLAIM) as r:
    if len(config.classes) != 2:
      raise ValueError(f"config.classes must hold two digits, got "
                       f"{tuple(config.classes)}")
    if not config.widths or min(config.widths) < config.n_train:
      raise ValueError(f"config.widths must be >= config.n_train "
                       f"({config.n_train}) so that K-FAC's P_S = I, got "
                       f"{tuple(config.widths)}")
    if not config.gd_scales or not config.adam_lrs:
      raise ValueError("config.gd_scales and config.adam_lrs must be "
                       "non-empty")
    if min(config.curvature_steps, config.first_order_steps) < 1:
      raise ValueError("config.curvature_steps and config.first_order_steps "
                       "must be >= 1")
    if not 0 < config.stop_fraction < config.target_fraction < 1:
      raise ValueError("need 0 < config.stop_fraction < "
                       "config.target_fraction < 1")
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
              "nh_max": float(nh.max()),
              "cond_xtx": float(eig[-1] / eig[0]),
              "forster_error": float(fz.error),
              "forster_iterations": int(fz.iterations),
              "forster_seconds": time.perf_counter() - start}

    # A unit, so that a resumed run keeps the Forster time its K-FAC +
    # Forster curves were drawn with.
    setup = r.unit("setup", describe)

    runs = []
    for m in config.widths:
      for method in METHODS:
        if method == "gd":
          runs += [(int(m), method, float(s)) for s in config.gd_scales]
        elif method == "adam":
          runs += [(int(m), method, float(lr)) for lr in config.adam_lrs]
        else:
          runs.append((int(m), method, 1.0))
    budget = {"curvature": int(config.curvature_steps),
              "first_order": int(config.first_order_steps)}
    work = {k: 1.0 + (budget["first_order"] if k[1] in BASELINES
                      else budget["curvature"] * 20) * k[0] / 2048
            for k in runs}
    r.start_progress(len(runs), interval_s=5.0, work=sum(work.values()))
    grams = {}
    results = []
    for key in runs:
      m, method, hyper = key
      model = _model(m, float(config.nu))
      params0 = model.init(r.key("init", f"width={m}"), d)
      if m not in grams and method == "gd":
        g0 = np.asarray(gram(model, params0, x), np.float64)
        grams[m] = float(np.linalg.eigvalsh(g0)[-1])
      results.append(r.unit(
          unit_key(width=m, method=method, hyper=f"{hyper:g}"),
          functools.partial(_train, config, model, m, params0, inputs, y,
                            method, hyper, setup, grams.get(m)),
          work=work[key]))
    return _finish(r, config, setup, results)


def _train(config, model, width, params0, inputs, y, method, hyper, setup,
           lambda_max, log) -> dict[str, Any]:
  """One training run; logs the loss and wall-clock after every step."""
  d = setup["d"]
  if method == "ngd":
    lr = config.ngd_lr
  elif method == "kfac":
    lr = config.kfac_scale / setup["nh_max"]
  elif method == "kfac_forster":
    lr = config.kfac_forster_scale / d
  elif method == "gd":
    lr = hyper / lambda_max
  else:
    lr = hyper
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
  params, state = params0, state0
  losses, seconds = [1.0], [clock]
  status = "budget"
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
  """C12's pass criterion as data on the summary's ``measured``: per fast
  method, at every width its steps to the target are at most
  ``effective_steps / speedup`` of every baseline (a baseline that never
  reached the target counts as its budget + 1; a fast method that never
  reached it fails)."""
  out = []
  for fast in FAST:
    conds = tuple(
        (f"m{int(m)}/{fast}/steps_to_target", "<=",
         f"m{int(m)}/{base}/effective_steps_over_speedup")
        for m in config.widths for base in BASELINES)
    out.append(verdicts.Check(
        f"{fast}_fast", conds,
        f"{_LABELS[fast]} needs <= 1/{config.speedup:g} of the steps of "
        "the best GD and Adam at every width"))
  return tuple(out)


def verdict(measured, config) -> dict[str, bool]:
  """C12's checks on a measured dict (pure: no experiment is run)."""
  return verdicts.evaluate(checks(config), measured)


def _finish(r: Run, config, setup, results) -> dict[str, Any]:
  widths = [int(m) for m in config.widths]
  table: dict[str, dict[str, Any]] = {}
  for m in widths:
    row = {}
    for method in METHODS:
      cands = [u for u in results if u["width"] == m
               and u["method"] == method]
      row[method] = _best(cands)
    table[str(m)] = row
  budget_fo = int(config.first_order_steps)

  def effective(u):
    return budget_fo + 1 if u["steps_to_target"] is None else u[
        "steps_to_target"]

  figures = _plot(r, config, table)
  measured: dict[str, Any] = {"setup": setup}
  for m in widths:
    for base in BASELINES:
      measured[f"m{m}/{base}/effective_steps_over_speedup"] = (
          effective(table[str(m)][base]) / config.speedup)

  for m in widths:
    for method in METHODS:
      u = table[str(m)][method]
      measured[f"m{m}/{method}/steps_to_target"] = u["steps_to_target"]
      measured[f"m{m}/{method}/seconds_to_target"] = u["seconds_to_target"]
      measured[f"m{m}/{method}/final_loss_rel"] = u["final_loss_rel"]
      measured[f"m{m}/{method}/seconds_per_step"] = u["seconds_per_step"]
      if method in BASELINES:
        measured[f"m{m}/{method}/best_hyper"] = u["hyper"]
  check_list = checks(config)
  checks_ = verdicts.evaluate(check_list, measured)

  def show(u):
    s = u["steps_to_target"]
    if s is None:
      how = ", diverged" if u["status"] == "diverged" else ""
      return (f">{u['steps_run']} steps (final "
              f"{u['final_loss_rel']:.2g}{how})")
    return f"{s} steps/{u['seconds_to_target']:.2g}s"

  parts = []
  for m in widths:
    row = table[str(m)]
    cells = []
    for method in METHODS:
      label = _LABELS[method]
      if method == "gd":
        label += f" (eta={row[method]['hyper']:g}/lambda_max)"
      elif method == "adam":
        label += f" (lr={row[method]['hyper']:g})"
      cells.append(f"{label} {show(row[method])}")
    parts.append(f"m={m}: " + ", ".join(cells))
  text = (f"steps (and seconds) to L <= {config.target_fraction:g} L(0): "
          + "; ".join(parts)
          + f" (digits {config.classes[0]} vs {config.classes[1]}, "
          f"n={setup['n']}, d={setup['d']} (PCA), cond(X^T X)="
          f"{setup['cond_xtx']:.3g}, n h in [{setup['nh_min']:.3g}, "
          f"{setup['nh_max']:.3g}])")
  expectation = (
      f"NGD (eta={config.ngd_lr:g}) and K-FAC+Forster (eta=1/d) reach "
      f"L <= {config.target_fraction:g} L(0) in <= 1/{config.speedup:g} of "
      f"the steps of the best GD and the best Adam, at every width "
      f"(budgets: {config.curvature_steps} / {config.first_order_steps} "
      "steps; a baseline that never got there counts as budget + 1)")
  return r.finish(
      passed=all(checks_.values()),
      checks=checks_,
      measured=measured,
      measured_text=text,
      expectation=expectation,
      figures=figures,
      title=TITLE,
      details={"runs": results, "check_kinds": verdicts.kinds(check_list)},
  )


def _plot(r: Run, config, table) -> list[str]:
  """Figures from ``metrics.jsonl`` (so they can be redrawn from files)."""
  records = [rec for rec in r.records() if "loss_rel" in rec]
  figures = []
  floor = config.stop_fraction * 1e-2
  for m_key, row in table.items():
    m = int(m_key)
    for xkey, xlabel, logx, suffix in (
        ("step", "step (log axis; step 0 drawn at 0.5)", True, "step"),
        ("seconds", "wall-clock seconds (compilation excluded)", True,
         "time")):
      series = []
      for method in METHODS:
        best = row[method]
        where = (lambda rec, m=m, method=method, h=best["hyper"]:
                 rec["width"] == m and rec["method"] == method
                 and rec["hyper"] == h)
        got = plots.series_from_records(records, xkey, "loss_rel",
                                        where=where)
        if not got:
          continue
        (xs, ys), = got.values()
        # Log axes: the starting point of a step axis sits at 1 (step 0
        # is drawn at 0.5), and losses below the floor are clipped.
        xs = np.where(xs <= 0, 0.5 if xkey == "step" else np.nan, xs)
        keep = np.isfinite(xs) & np.isfinite(ys) & (ys > floor)
        label = _LABELS[method]
        if method == "gd":
          label += f" (eta = {best['hyper']:g} / lambda_max(G(0)))"
        elif method == "adam":
          label += f" (lr = {best['hyper']:g})"
        elif method == "kfac":
          label += f" (eta = {best['learning_rate']:.3g} = 1/(n max h))"
        elif method == "kfac_forster":
          label += f" (eta = 1/d = {best['learning_rate']:.3g})"
        else:
          label += f" (eta = {best['learning_rate']:g})"
        series.append(plots.Series(xs[keep], ys[keep], label,
                                   color=_COLORS[method]))
      fname = f"loss_vs_{suffix}_m{m}.png"
      plots.line_plot(
          r.path(fname), series, xlabel=xlabel, ylabel="L(k) / L(0)",
          title=f"C12: training loss on digits {config.classes[0]} vs "
          f"{config.classes[1]}, width m={m}", logx=logx, logy=True,
          hlines=[(config.target_fraction,
                   f"target {config.target_fraction:g} L(0)")])
      figures.append(fname)
  return figures

"""Train a classifier on real data: NGD, K-FAC, Adam and SGD side by side.

A demonstration beyond the paper's claims (``docs/guide/experiments.md``): an
MLP (``ngdjax.mlp``, ReLU, NTK parameterisation) on all 10 classes of
scikit-learn's 8x8 digits (1797 images; stratified 80/20 split, fixed seed),
or on MNIST IDX files when ``config.data_dir`` is set, trained with
mini-batches and the softmax cross-entropy (sum over the batch):

* ``ngd``: ``ngd(model, lr, damping, loss="softmax_cross_entropy",
  fisher="true")``: the exact Fisher natural gradient in kernel form on each
  batch (an ``N x N`` Cholesky solve, ``N = batch * 10``; ``docs/math.md``,
  "The Fisher of cross-entropy"), for each ``lr`` in ``ngd_lrs`` and
  ``damping`` in ``ngd_dampings``;
* ``kfac``: ``kfac(..., loss="softmax_cross_entropy")`` with running factor
  averages (``kfac_decay``), updated every ``kfac_statistics_every`` steps,
  and their damped inverses (``kfac_inverse="cholesky"``) or
  eigendecompositions (``"eigh"``) refreshed every ``kfac_inverse_every``
  steps, for
  each ``lr`` in ``kfac_lrs`` and ``damping`` in ``kfac_dampings``;
  By default both grids are ``("adaptive",)``: one run each, with the step
  size and momentum chosen by the quadratic model and Levenberg-Marquardt
  damping (``ngdjax.optim.quadratic``; two JVPs and a forward pass more per
  step); numbers in ``*_lrs`` / ``*_dampings`` give a grid instead. The
  model is built on the current and the previous batch
  (``ngd_model_batches=2``, ``kfac_model_batches=2``): NGD's direction
  minimises its own batch's model exactly, so on that batch alone the model
  would always return step size 1 and momentum 0, and K-FAC's one-batch
  model lets it fall from its best accuracy late in longer runs;
* ``adam``: ``optax.adam(lr)``, for each ``lr`` in ``adam_lrs``;
* ``sgd``: plain mini-batch SGD on the batch-mean loss at each ``lr`` in
  ``sgd_lrs`` (the library's ``gd`` on the sum loss at ``lr / batch``).

With ``cosine_decay`` every method's step size decays to 0 over its
budget (off by default). Adam and SGD get a small learning-rate grid; NGD
and K-FAC run once with the adaptive settings by default, or over their
learning rate x damping grid when numbers are given. By one rule for all
four, the best run of each is reported: fewest steps to the target
accuracy, ties and misses by final accuracy. A best point on the
edge of its grid means the grid did not bracket the optimum, so the grid
grows by the same rule for all four (``extend_grid``): one more point one
grid ratio beyond that edge, on each axis where the best sits at an end,
for up to ``grid_extensions`` rounds (default 2); ``best_on_grid_edge``
says where the best still sits on an edge afterwards. The rule reads the
test accuracy (there is no validation split), so every method's figure is
the best of its grid on the test set, an optimistic estimate for all four
alike, and the more points a grid has, the more optimistic. Every method
sees the same initialisation and the same sequence of batches (reshuffled
every epoch from the config's seed). The grid points of NGD and K-FAC share one
compiled step (the learning rate and damping live in the optimizer state).

Measured, per method: the batch loss (mean per example) after every step,
the test accuracy every ``eval_every`` steps, against steps and seconds
(training time only: the clock stops while evaluating; compilation excluded
by a discarded warm-up step); the steps and seconds to ``target_accuracy``
and the final test accuracy. ``summary.json`` holds ``test_accuracy`` and
``seconds_to_97`` (plus ``steps_to_97``) at its top level and in
``measured``, each a dict keyed ``ngd``, ``kfac``, ``adam``, ``sgd``
(``None`` where the target was not reached; the keys keep the name "97"
whatever ``target_accuracy`` is).

Pass criterion (a demonstration, not a claim of the paper): NGD and K-FAC
each reach ``target_accuracy`` on the test set within their budget. The
comparison with Adam and SGD is reported as measured, whichever wins.
Wall-clock depends on the machine and its load.

Digits preset (``small`` is the same run, used by
``experiments.reproduce``; MLP 64-512-10, batch 64)::

  python -m experiments.train --config=configs/train.py:digits \
      --workdir=/tmp/ngdjax/train_digits

MNIST from IDX files (``train-images-idx3-ubyte[.gz]`` etc. in DIR)::

  python -m experiments.train --config=configs/train.py:mnist \
      --config.data_dir=DIR --workdir=/tmp/ngdjax/train_mnist

Settings and presets: ``configs/train.py``; results of earlier runs:
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

from configs import train as settings
from experiments import common
from ngdjax import data, models
from ngdjax.experiment import plots, verdicts
from ngdjax.experiment.batching import epoch_batches
from ngdjax.experiment.config import Rule
from ngdjax.experiment.runner import Experiment, Outcome, Run, unit_key
from ngdjax.optim import gd, kfac, ngd, optax_optimizer

METHODS = ("ngd", "kfac", "adam", "sgd")
CURVATURE = ("ngd", "kfac")
_LABELS = {"ngd": "NGD (Fisher, kernel form)", "kfac": "K-FAC",
           "adam": "Adam", "sgd": "SGD"}
_COLORS = {"ngd": "C3", "kfac": "C0", "adam": "C4", "sgd": "C2"}
LOSS = "softmax_cross_entropy"


def load(config) -> data.Dataset:
  """The data set of ``config``, pixels standardised.

  Each pixel is centred and scaled by its training mean and standard
  deviation (pixels constant on the training set become 0), so that the NTK
  parameterisation's ``1/sqrt(d)`` gives O(1) pre-activations.
  """
  classes = tuple(range(10))
  if config.data_dir:
    ds = data.mnist(config.data_dir, classes=classes, targets="onehot",
                    seed=config.seed, n_train=config.n_train or None,
                    n_test=config.n_test or None, normalize=False)
  else:
    ds = data.digits(classes=classes, targets="onehot",
                     test_fraction=config.test_fraction, seed=config.seed,
                     normalize=False)
  x_train = np.asarray(ds.x_train, np.float64)
  mean, std = x_train.mean(axis=0), x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)

  def standardise(x):
    return ((np.asarray(x, np.float64) - mean) / std).astype(
        np.asarray(ds.x_train).dtype)

  return ds._replace(x_train=standardise(ds.x_train),
                     x_test=standardise(ds.x_test))


def _setting(value):
  """A grid value: ``"adaptive"`` as is, a number as a float."""
  return value if isinstance(value, str) else float(value)


def _fmt(value) -> str:
  return value if isinstance(value, str) else f"{value:g}"


def _model_batches(config, method: str, lr, example_inputs) -> dict:
  """``model_batches`` (and a batch to shape what it stores) for an
  adaptive run; a fixed learning rate has no quadratic model to widen."""
  count = int(config[f"{method}_model_batches"])
  if not isinstance(lr, str) or count == 1:
    return {}
  return dict(model_batches=count, example_inputs=example_inputs)


def _make(model, method: str, lr: float, config, batch: int, steps: int,
          damping: float | None = None, example_inputs=None):
  if config.cosine_decay and not isinstance(lr, str):
    lr = optax.cosine_decay_schedule(lr, steps)
  if method == "ngd":
    return ngd(model, lr, damping=damping, loss=LOSS, fisher="true",
               **_model_batches(config, method, lr, example_inputs))
  if method == "kfac":
    return kfac(model, lr, damping=damping, loss=LOSS,
                factor_decay=config.kfac_decay,
                inverse_every=config.kfac_inverse_every,
                statistics_every=config.kfac_statistics_every,
                inverse=config.kfac_inverse,
                **_model_batches(config, method, lr, example_inputs))
  if method == "adam":
    return optax_optimizer(model, optax.adam(lr), loss=LOSS)
  if method == "sgd":
    return gd(model, (lambda c: lr(c) / batch) if callable(lr) else lr / batch,
              loss=LOSS)
  raise ValueError(f"unknown method {method!r}")


@functools.partial(jax.jit, static_argnums=0)
def _accuracy(model, params, x, labels):
  return jnp.mean(jnp.argmax(model.apply(params, x), axis=-1) == labels)


def measure(r: Run, config: ml_collections.ConfigDict) -> Outcome:
  """Trains every grid point; the best of each method is measured."""
  ds = load(config)
  n, d = ds.x_train.shape
  batch = min(int(config.batch_size), n)
  model = models.mlp(tuple(int(w) for w in config.widths), out_dim=10,
                     activation="relu", w_std=float(config.w_std))
  params0 = model.init(r.key("init"), d)
  runs = [(m, _setting(lr), _setting(lam)) for m in CURVATURE
          for lr in config[f"{m}_lrs"] for lam in config[f"{m}_dampings"]]
  runs += [("adam", float(lr), None) for lr in config.adam_lrs]
  runs += [("sgd", float(lr), None) for lr in config.sgd_lrs]
  compiled = {}  # method -> (optimizer, jitted step): one compilation
  results = []
  for _ in range(int(config.grid_extensions) + 1):
    if not runs:
      break
    r.start_progress(len(runs))
    results += [
        r.unit(_unit(m, lr, lam),
               functools.partial(_train, config, model, params0, ds, batch,
                                 m, lr, lam, compiled))
        for m, lr, lam in runs
    ]
    runs = extend_grid(results)
  return _summarise(r, config, ds, batch, results)


def _beyond(values, value: float) -> float | None:
  """The next point outward when ``value`` is an end of ``values``.

  The grid's own ratio continues: ``value * max / second largest`` past the
  top, ``value * min / second smallest`` past the bottom; ``None`` when
  ``value`` is interior or the axis has a single value (no ratio to
  continue).
  """
  if any(isinstance(v, str) for v in (*values, value)):
    return None  # "adaptive": no grid axis to extend
  ordered = sorted(set(values))
  if len(ordered) < 2:
    return None
  if value == ordered[-1]:
    return value * ordered[-1] / ordered[-2]
  if value == ordered[0]:
    return value * ordered[0] / ordered[1]
  return None


def extend_grid(results: list[dict[str, Any]]) -> list[tuple]:
  """Grid points to add where a method's best lies on its grid's edge.

  A best point at the end of an axis (learning rate; damping for NGD and
  K-FAC) means the grid did not bracket the optimum. For each method, each
  axis on which its best (``_best``) sits at an end gets one new point one
  grid ratio further out, the other coordinate kept (``_beyond``). Points
  already run are skipped. Returns ``[(method, lr, damping or None)]``.
  """
  new = []
  for m in METHODS:
    runs = [u for u in results if u["method"] == m]
    if not runs:
      continue
    best = _best(runs)
    tried = {(u["lr"], u["damping"]) for u in runs}
    axes = ("lr", "damping") if m in CURVATURE else ("lr",)
    for axis in axes:
      nxt = _beyond([u[axis] for u in runs], best[axis])
      if nxt is None:
        continue
      point = {"lr": best["lr"], "damping": best["damping"], axis: nxt}
      if (point["lr"], point["damping"]) not in tried:
        new.append((m, point["lr"], point["damping"]))
        tried.add((point["lr"], point["damping"]))
  return new


def _unit(method, lr, damping) -> str:
  if damping is None:
    return unit_key(method=method, lr=_fmt(lr))
  return unit_key(method=method, lr=_fmt(lr), damping=_fmt(damping))


def _train(config, model, params0, ds, batch, method, lr, damping, compiled,
           log):
  """One training run; logs loss and test accuracy against steps/seconds.

  NGD's and K-FAC's grid points reuse the first point's compiled step
  (``compiled``), with their learning rate and damping put in the state.
  """
  steps = (config.curvature_steps if method in CURVATURE
           else config.first_order_steps)
  reuse = (method in CURVATURE and not config.cosine_decay
           and not isinstance(lr, str) and not isinstance(damping, str))
  if reuse and method in compiled:
    opt, step = compiled[method]
  else:
    opt = _make(model, method, lr, config, batch, steps, damping,
                jnp.asarray(ds.x_train[:batch]))
    step = jax.jit(opt.step)
    if reuse:
      compiled[method] = (opt, step)
  x_all = jnp.asarray(ds.x_train)
  labels = jnp.asarray(ds.labels_train)
  x_test = jnp.asarray(ds.x_test)
  labels_test = jnp.asarray(ds.labels_test)
  order = epoch_batches(x_all.shape[0], batch, steps, int(config.seed))
  state = opt.init(params0)
  if reuse:
    dtype = state.damping.dtype
    state = state._replace(learning_rate=jnp.asarray(lr, dtype),
                           damping=jnp.asarray(damping, dtype))
  # Warm-up (compiles; discarded).
  jax.block_until_ready(step(params0, state, x_all[order[0]],
                             labels[order[0]]))
  params = params0
  clock = 0.0
  acc = float(_accuracy(model, params, x_test, labels_test))
  tag = {"method": method, "lr": lr}
  if damping is not None:
    tag["damping"] = damping
  log(step=0, **tag, test_accuracy=acc, seconds=0.0)
  evals = [(0, 0.0, acc)]
  status = "budget"
  for k in range(1, steps + 1):
    idx = order[k - 1]
    start = time.perf_counter()
    params, state, info = step(params, state, x_all[idx], labels[idx])
    loss = float(info["loss"]) / batch
    clock += time.perf_counter() - start
    record = {**tag, "loss": loss, "seconds": clock}
    if k % config.eval_every == 0 or k == steps:
      acc = float(_accuracy(model, params, x_test, labels_test))
      record["test_accuracy"] = acc
      evals.append((k, clock, acc))
    log(step=k, **record)
    if int(info["diverged"]) or not math.isfinite(loss):
      status = "diverged"
      break
  hit = next((e for e in evals if e[2] >= config.target_accuracy), None)
  return {
      "method": method, "lr": _setting(lr), "damping": damping,
      "steps_run": k,
      "status": status,
      "final_test_accuracy": evals[-1][2],
      "best_test_accuracy": max(e[2] for e in evals),
      "steps_to_target": None if hit is None else hit[0],
      "seconds_to_target": None if hit is None else hit[1],
      "seconds_per_step": clock / max(k, 1),
  }


def _best(candidates: list[dict[str, Any]]) -> dict[str, Any]:
  """Fewest steps to the target; ties and misses by final accuracy."""
  def key(u):
    steps = u["steps_to_target"]
    return (math.inf if steps is None else steps,
            -u["final_test_accuracy"])
  return min(candidates, key=key)


def _summarise(r: Run, config, ds, batch, results) -> Outcome:
  best = {m: _best([u for u in results if u["method"] == m])
          for m in METHODS}
  figures = _plot(r, config, best)
  measured = {
      "test_accuracy": {m: best[m]["final_test_accuracy"] for m in METHODS},
      "seconds_to_97": {m: best[m]["seconds_to_target"] for m in METHODS},
      "steps_to_97": {m: best[m]["steps_to_target"] for m in METHODS},
      "seconds_per_step": {m: best[m]["seconds_per_step"] for m in METHODS},
      "learning_rate": {m: best[m]["lr"] for m in METHODS},
      "damping": {m: best[m].get("damping") for m in CURVATURE},
      # True where the best still sits on an edge of its (extended) grid.
      "best_on_grid_edge": {m: any(p[0] == m for p in extend_grid(results))
                            for m in METHODS},
  }

  def show(m):
    u = best[m]
    reach = ("not reached" if u["steps_to_target"] is None else
             f"{u['steps_to_target']} steps/{u['seconds_to_target']:.3g}s")
    setting = f"lr={_fmt(u['lr'])}"
    if u.get("damping") is not None:
      setting += f", damping={_fmt(u['damping'])}"
    if measured["best_on_grid_edge"][m]:
      setting += ", on the grid's edge"
    return (f"{_LABELS[m].split(' (')[0]} ({setting}) {reach}, final "
            f"{100 * u['final_test_accuracy']:.1f}%")

  source = "MNIST" if config.data_dir else "digits (10 classes)"
  text = (f"to {100 * config.target_accuracy:g}% test accuracy on {source}, "
          f"n={ds.x_train.shape[0]}, batch {batch}: "
          + "; ".join(show(m) for m in METHODS))
  how = {m: _how_chosen(config, m) for m in CURVATURE}
  how = (f"each {how['ngd']}" if how["ngd"] == how["kfac"]
         else f"NGD {how['ngd']}; K-FAC {how['kfac']}")
  expectation = (
      f"demonstration (not a paper claim): NGD and K-FAC reach "
      f"{100 * config.target_accuracy:g}% test accuracy within "
      f"{config.curvature_steps} steps ({how}); "
      "Adam/SGD best of their lr grids, reported as measured; every grid "
      f"extended past a winning edge ({config.grid_extensions} rounds)")
  return Outcome(measured, text, expectation, figures, {"runs": results})


def _how_chosen(config, method: str) -> str:
  """How NGD's or K-FAC's reported run was chosen, for the criteria text:
  one run with every setting adaptive (the default), else a grid."""
  values = (*config[f"{method}_lrs"], *config[f"{method}_dampings"])
  if len(values) == 2 and all(isinstance(v, str) for v in values):
    batches = int(config[f"{method}_model_batches"])
    return ("one run with the adaptive learning rate, momentum and "
            "damping, no grid, the quadratic model on "
            + ("the batch" if batches == 1 else
               "the current and the previous batch"))
  return "the best of its lr x damping grid"


def _plot(r: Run, config, best) -> list[str]:
  records = [rec for rec in r.records() if "step" in rec and "unit" in rec]
  chosen = {m: _unit(m, best[m]["lr"], best[m].get("damping"))
            for m in METHODS}
  figures = []
  for y_key, ylabel, logy in (("test_accuracy", "test accuracy", False),
                              ("loss", "batch loss (mean per example)",
                               True)):
    for x_key, xlabel in (("step", "step"), ("seconds", "seconds")):
      series = []
      for m in METHODS:
        pts = [(rec[x_key], rec[y_key]) for rec in records
               if rec["unit"] == chosen[m] and y_key in rec
               and rec.get(x_key) is not None]
        if not pts:
          continue
        xs, ys = zip(*pts, strict=True)
        label = f"{_LABELS[m]}, lr={_fmt(best[m]['lr'])}"
        if best[m].get("damping") is not None:
          label += f", damping={_fmt(best[m]['damping'])}"
        series.append(plots.Series(x=xs, y=ys, color=_COLORS[m],
                                   label=label, style="line"))
      name = f"{y_key}_vs_{x_key}.png"
      plots.line_plot(
          r.path(name), series, xlabel=xlabel, ylabel=ylabel, logy=logy,
          hlines=([(config.target_accuracy, "target")]
                  if y_key == "test_accuracy" else ()),
          title=f"{y_key.replace('_', ' ')} vs {x_key}")
      figures.append(name)
  return figures


# A demonstration: "reaches the target" is an observation, not a theorem.
CHECKS = tuple(
    verdicts.Check(f"{m}_reaches_target", ((("steps_to_97", m), ">=", 0),),
                   f"{m} reaches the target accuracy within its budget")
    for m in CURVATURE)

_GRIDS = ("adam_lrs", "sgd_lrs", "ngd_lrs", "ngd_dampings", "kfac_lrs",
          "kfac_dampings")
SPEC = Experiment(
    name="train", claim="D1",
    title=("Classifier on real data (demonstration): NGD, K-FAC, Adam and "
           "SGD with mini-batches"),
    row="Classifier on real data (demonstration, not a paper claim)",
    get_config=settings.get_config, measure=measure, checks=CHECKS,
    rules=(*(Rule(f"len({g})", ">=", 1) for g in _GRIDS),
           *(Rule(f, ">=", 1) for f in ("curvature_steps",
                                         "first_order_steps", "eval_every",
                                         "batch_size")),
           Rule("target_accuracy", ">", 0), Rule("target_accuracy", "<=", 1),
           Rule("grid_extensions", ">=", 0),
           Rule("kfac_inverse", "in", ("eigh", "cholesky")),
           Rule("ngd_model_batches", "in", (1, 2)),
           Rule("kfac_model_batches", "in", (1, 2))),
    # The interface: summary.json's test_accuracy and seconds_to_97.
    headline=("test_accuracy", "seconds_to_97", "steps_to_97"))


if __name__ == "__main__":
  common.main(SPEC)

"""One optimizer step of each method, as time ratios, beside a FLOP model.

    python benchmarks/steps.py                  # n=2048, d=128, m=8192 + MLP
    python benchmarks/steps.py --quick          # tiny sizes: checks it runs
    python benchmarks/steps.py --dtype float64
    python benchmarks/steps.py --digits-only    # the classifier steps only

Every step is the user-facing ``jax.jit(opt.step)`` on one full batch. Times
are medians of ``--repeats`` calls after a warm-up call (compilation
excluded), with ``block_until_ready``; the methods are timed alternately so
that load from other processes on a shared machine affects all alike. Only
ratios measured in this one process are meaningful.

Two-layer net (``c = 1``), FLOP model of the dominant terms (multiply-add =
2 flops):

* GD: forward ``2 n m d`` + VJP ``2 n m d``.
* NGD (Cholesky, structured Gram ``(X X^T) * (S S^T) / m``): forward and VJP
  ``4 n m d``, activation pattern ``2 n m d``, Gram ``2 n^2 (m + d)`` times
  5/8 from 512 rows on (``linalg.self_outer`` multiplies only the upper
  blocks of a symmetric product; the same applies to K-FAC's factors),
  Cholesky ``n^3 / 3``. Against GD: ``1.5 + n (m + d) / (2 m d) + ...``:
  about ``n / (2 d)`` for ``m >> d``, so NGD/GD grows with ``n / d``.
* K-FAC primal: ``S~^T S~`` ``2 n m^2`` and its Cholesky ``m^3 / 3``.
* K-FAC auto (dual on ``S~``, primal on ``X^T X``): ``S~ S~^T`` ``2 n^2 m``
  and an ``n x n`` Cholesky ``n^3 / 3``.
* K-FAC dual (both factors dual): ``X X^T`` and two ``n x n`` solves with
  ``n`` right-hand sides (``4 n^3``) on top of auto's ``S~`` side.

For the MLP the model is summed over layers (``a_l`` inputs incl. bias,
``b_l`` outputs): GD ``6 n sum a_l b_l``; NGD adds the Gram
``2 n^2 sum (a_l + b_l)``; K-FAC primal ``sum 2 n (a_l^2 + b_l^2) +
(a_l^3 + b_l^3) / 3``, auto the smaller of each factor's two forms.
``xla`` is the compiler's own count (``cost_analysis``), which leaves out
the LAPACK calls (Cholesky, triangular solves, eigh).

"Bring your own model": NGD and K-FAC steps on a flax.linen MLP given as a
bare ``module.apply`` (3 hidden layers of 512 with biases, n = 256, d = 64;
dense layers found automatically) against the same steps on ``ngdjax.mlp``
of the same shape (skipped when flax is not installed).

Digits classifier: the MLP of ``configs/train.py`` (64-512-10,
ReLU) with softmax cross-entropy on mini-batches of 256 digits; SGD (``gd``
on the batch), NGD with the true Fisher in kernel form (``N = 2560``
Cholesky) and with the empirical Fisher (``n x n`` kernel from the layer
factors contracted with ``g``) and the Monte Carlo Fisher, K-FAC (true
and Monte Carlo Fisher) with running factors and eigendecompositions
refreshed every 10 steps, the factor statistics updated every step
(``kfac``, ``kfac_mc``) or every 10 steps (``kfac_s``, ``kfac_mc_s``:
``statistics_every=10``), and with ``inverse="cholesky"`` (``*_ch``)
(``_digits_flops`` gives the FLOP model). Each
method is timed over runs of 10 consecutive steps carrying its state (one
full cycle: K-FAC pays one refresh and one or ten statistics updates per
run), batches rotating, methods interleaved; the figure is the amortised
time per step (run time / 10), median and min over ``--repeats`` runs.
``--digits-methods=ngd_emp,kfac_mc_s`` times a subset, ``--digits-every``
sets the cycle (default 10).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import ngdjax
from ngdjax._src.linalg import SELF_OUTER_BLOCKS, SELF_OUTER_MIN_ROWS
from ngdjax.experiment import timing
from ngdjax.optim import gd, kfac, ngd


def _interleaved_times(fns: dict, repeats: int) -> dict:
  """Seconds of each call of each zero-argument function, timed alternately.

  Returns ``{name: (median, min)}``: on a shared machine the minimum is the
  figure least disturbed by other processes, the median the typical one.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())  # warm-up: compile
  times = timing.interleaved(fns, repeats)
  return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def _xla_flops(step, *args) -> float:
  try:
    cost = step.lower(*args).compile().cost_analysis()
    if isinstance(cost, list):
      cost = cost[0]
    return float(cost.get("flops", float("nan")))
  except Exception:  # noqa: BLE001 - informational only
    return float("nan")


def _data(n, d, c, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y = rng.choice([-1.0, 1.0], (n, c))
  return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _run(title, model, params, x, y, optimizers, models, repeats):
  """Times every optimizer's jitted step; prints times, flops, ratios."""
  steps, fns, infos = {}, {}, {}
  for name, opt in optimizers.items():
    step = jax.jit(opt.step)
    state = opt.init(params)
    steps[name] = (step, state)
    fns[name] = (lambda s=step, st=state: s(params, st, x, y))
  times = _interleaved_times(fns, repeats)
  for name, (step, state) in steps.items():
    infos[name] = step(params, state, x, y)[2]
  print(f"\n{title}")
  header = (f"{'method':<12} {'median ms':>10} {'min ms':>9} {'/ gd':>6} "
            f"{'(min)':>6} {'model GF':>9} {'xla GF':>7} {'fallback':>8}")
  print(header)
  print("-" * len(header))
  gd_med, gd_min = times["gd"]
  for name, (med, low) in times.items():
    step, state = steps[name]
    flops = _xla_flops(step, params, state, x, y)
    failed = int(infos[name].get("cholesky_failed", 0))
    print(f"{name:<12} {1e3 * med:>10.1f} {1e3 * low:>9.1f} "
          f"{med / gd_med:>6.2f} {low / gd_min:>6.2f} "
          f"{models[name] / 1e9:>9.2f} {flops / 1e9:>7.2f} {failed:>8d}")
  return times


def _sym(rows: int) -> float:
  """Fraction of an ``a a^T`` product's work ``linalg.self_outer`` does."""
  if rows < SELF_OUTER_MIN_ROWS:
    return 1.0
  return (SELF_OUTER_BLOCKS + 1) / (2 * SELF_OUTER_BLOCKS)


def _problem(model, n, d, dtype, damping, kfac_lr, forms):
  """Params, data and the optimizers timed on ``model``."""
  params = jax.tree_util.tree_map(lambda t: t.astype(dtype),
                                  model.init(jax.random.key(0), d))
  x, y = _data(n, d, 1, dtype)
  optimizers = {"gd": gd(model, 0.1),
                "ngd": ngd(model, 1.0, damping=damping)}
  for form in forms:
    optimizers[f"kfac_{form}"] = kfac(model, kfac_lr, damping=damping,
                                      form=form)
  return params, x, y, optimizers


def two_layer(n, d, m, dtype, repeats, damping):
  model = ngdjax.two_layer_relu(m)
  params, x, y, optimizers = _problem(model, n, d, dtype, damping, 1.0 / d,
                                      ("auto", "primal", "dual"))
  common = 4 * n * m * d
  models = {
      "gd": common,
      "ngd": (common + 2 * n * m * d + 2 * n * n * (m + d) * _sym(n)
              + n**3 / 3),
      "kfac_auto": (common + 2 * n * d * d * _sym(d)
                    + 2 * n * n * m * _sym(n)
                    + (d**3 + n**3) / 3 + 2 * n * n * d + 2 * d * d * m),
      "kfac_primal": (common + 2 * n * d * d * _sym(d)
                      + 2 * n * m * m * _sym(m)
                      + (d**3 + m**3) / 3 + 2 * m * d * (m + d)),
      # Both factors dual: two n x n solves with n right-hand sides.
      "kfac_dual": (common + 2 * n * n * (d + m) * _sym(n) + 2 * n**3 / 3
                    + 4 * n**3 + 2 * n * n * d + 2 * n * d * m),
  }
  times = _run(f"two_layer_relu n={n} d={d} m={m} {dtype.__name__} "
               f"damping={damping:g} median of {repeats} "
               f"({jax.devices()[0].platform})",
               model, params, x, y, optimizers, models, repeats)
  return times, models


def mlp(n, d, widths, dtype, repeats, damping):
  model = ngdjax.mlp(widths, out_dim=1)
  params, x, y, optimizers = _problem(model, n, d, dtype, damping, 0.1,
                                      ("auto", "primal"))
  sizes = (d, *widths, 1)
  layers = [(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
  gd_flops = 6 * n * sum(a * b for a, b in layers)

  def factor(k, rows, dual):
    return (2 * rows * rows * k * _sym(rows) + rows**3 / 3) if dual else (
        2 * rows * k * k * _sym(k) + k**3 / 3)

  models = {
      "gd": gd_flops,
      "ngd": (gd_flops + 2 * n * n * sum(a + b for a, b in layers) * _sym(n)
              + n**3 / 3),
      "kfac_auto": gd_flops + sum(factor(a, n, n < a) + factor(b, n, n < b)
                                  for a, b in layers),
      "kfac_primal": gd_flops + sum(factor(a, n, False) + factor(b, n, False)
                                    for a, b in layers),
  }
  times = _run(f"mlp widths={list(widths)} n={n} d={d} {dtype.__name__} "
               f"damping={damping:g} median of {repeats}",
               model, params, x, y, optimizers, models, repeats)
  return times, models


def flax_mlp(n, d, width, depth, dtype, repeats, damping):
  """NGD and K-FAC steps: flax MLP (bare apply) / ngdjax.mlp, same shape."""
  try:
    import flax.linen as nn
  except ImportError:
    print("\nflax not installed: bring-your-own-model case skipped")
    return

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      for _ in range(depth):
        x = nn.relu(nn.Dense(width, param_dtype=dtype)(x))
      return nn.Dense(1, param_dtype=dtype)(x)

  x, y = _data(n, d, 1, dtype)
  model = ngdjax.mlp([width] * depth, out_dim=1)
  params = {
      "mlp": jax.tree_util.tree_map(lambda t: t.astype(dtype),
                                    model.init(jax.random.key(0), d)),
      "flax": MLP().init(jax.random.key(0), x),
  }
  fns, flops = {}, {}
  for label, fn in (("mlp", model), ("flax", MLP().apply)):
    for name, opt in (("ngd", ngd(fn, 1.0, damping=damping)),
                      ("kfac", kfac(fn, 0.1, damping=damping))):
      step, state, p = jax.jit(opt.step), opt.init(params[label]), params[
          label]
      fns[f"{name}_{label}"] = (lambda s=step, st=state, p=p: s(p, st, x, y))
      flops[f"{name}_{label}"] = _xla_flops(step, p, state, x, y)
  times = _interleaved_times(fns, repeats)
  print(f"\nflax.linen MLP vs ngdjax.mlp, widths {[width] * depth}, n={n}, "
        f"d={d}, {dtype.__name__}, median (min) of {repeats}")
  for name in ("ngd", "kfac"):
    med = times[f"{name}_flax"][0] / times[f"{name}_mlp"][0]
    low = times[f"{name}_flax"][1] / times[f"{name}_mlp"][1]
    print(f"  {name}: flax {1e3 * times[f'{name}_flax'][0]:.1f} ms, mlp "
          f"{1e3 * times[f'{name}_mlp'][0]:.1f} ms, flax / mlp = {med:.2f} "
          f"(min {low:.2f}) (target <= 1.5); xla flops flax / mlp = "
          f"{flops[f'{name}_flax'] / flops[f'{name}_mlp']:.2f}")


def digits(batch, dtype, repeats, inverse_every=10, widths=(512,),
           only=()):
  """Mini-batch steps on the digits MLP: NGD / SGD and K-FAC / SGD."""
  ds = ngdjax.data.digits(classes=tuple(range(10)), targets="onehot",
                          test_fraction=0.2, seed=0)
  x_all = jnp.asarray(ds.x_train * np.sqrt(ds.x_train.shape[1]), dtype)
  labels = jnp.asarray(ds.labels_train)
  model = ngdjax.mlp(widths, out_dim=10, w_std=float(np.sqrt(2.0)))
  params = jax.tree_util.tree_map(lambda t: t.astype(dtype),
                                  model.init(jax.random.key(0), 64))
  loss = "softmax_cross_entropy"
  kf = {"loss": loss, "factor_decay": 0.95, "inverse_every": inverse_every}
  # kfac*: statistics every step; kfac*_s: statistics every inverse_every
  # steps (T_1 = T_3); *_ch: inverse="cholesky" (damped inverses at each
  # refresh instead of eigendecompositions): the cheapest amortised cycle.
  optimizers = {
      "sgd": gd(model, 0.3 / batch, loss=loss),
      "ngd": ngd(model, 0.5, damping=0.3, loss=loss),
      "ngd_emp": ngd(model, 0.5, damping=0.3, loss=loss, fisher="empirical"),
      "ngd_mc": ngd(model, 0.5, damping=0.3, loss=loss,
                    fisher="monte_carlo"),
      "kfac": kfac(model, 0.5, damping=0.3, **kf),
      "kfac_mc": kfac(model, 0.5, damping=0.3, fisher="monte_carlo", **kf),
      "kfac_s": kfac(model, 0.5, damping=0.3,
                     statistics_every=inverse_every, **kf),
      "kfac_mc_s": kfac(model, 0.5, damping=0.3, fisher="monte_carlo",
                        statistics_every=inverse_every, **kf),
      "kfac_ch": kfac(model, 0.5, damping=0.3, inverse="cholesky", **kf),
      "kfac_s_ch": kfac(model, 0.5, damping=0.3, inverse="cholesky",
                        statistics_every=inverse_every, **kf),
      "kfac_mc_s_ch": kfac(model, 0.5, damping=0.3, fisher="monte_carlo",
                           inverse="cholesky",
                           statistics_every=inverse_every, **kf),
  }
  if only:
    optimizers = {k: v for k, v in optimizers.items()
                  if k == "sgd" or k in only}
  rng = np.random.default_rng(0)
  batches = [(x_all[i], labels[i]) for i in
             (rng.choice(x_all.shape[0], batch, replace=False)
              for _ in range(inverse_every))]
  fns = {}
  for name, opt in optimizers.items():
    step = jax.jit(opt.step)
    carry = {"params": params, "state": opt.init(params)}

    def run(step=step, carry=carry):
      p, st = carry["params"], carry["state"]
      for xb, yb in batches:
        p, st, info = step(p, st, xb, yb)
      carry["params"], carry["state"] = p, st
      return info["loss"]

    fns[name] = run
  times = _interleaved_times(fns, repeats)
  per_step = {k: (v[0] / len(batches), v[1] / len(batches))
              for k, v in times.items()}
  print(f"\ndigits MLP widths={list(widths)} batch={batch} "
        f"{np.dtype(dtype).name}: per-step time over runs of {len(batches)} "
        f"steps, median of {repeats}")
  flops = _digits_flops(batch, (64, *widths, 10), inverse_every)
  for name, (med, low) in per_step.items():
    print(f"{name:<8} {1e3 * med:>9.2f} ms (min {1e3 * low:.2f}) "
          f"/ sgd {med / per_step['sgd'][0]:7.2f} "
          f"(min {low / per_step['sgd'][1]:7.2f}) "
          f"model {flops[name] / 1e6:8.1f} MF "
          f"(/ sgd {flops[name] / flops['sgd']:6.2f})")
  return per_step, flops


def _digits_flops(n, sizes, inverse_every) -> dict:
  """FLOP model of one digits step (dominant terms; module docstring).

  Layers ``(a_l, b_l)`` (bias row included), ``c`` classes, ``N = n c``.
  SGD ``6 n sum a_l b_l`` (forward and backward). Layer factors: a forward
  ``2 n sum a_l b_l`` and ``c`` pre-activation VJPs ``2 n c sum_{l>0} c
  b_{l-1}`` (rough). NGD true Fisher: the rows ``S`` contracted into ``B``
  (``2 n c^2 b_l``), Grams ``2 N^2 b_l`` and ``2 n^2 a_l`` (symmetric-product
  fraction applied), the ``N x N`` Cholesky ``N^3 / 3``. NGD empirical and
  Monte Carlo: ``n x n`` Grams ``2 n^2 (a_l + b_l)`` and ``n^3 / 3``; Monte
  Carlo also ``G g`` (``4 n sum a_l b_l``).
  K-FAC (mini-batch mode): the gradient (SGD's cost) and the
  preconditioning through the cached eigenvectors ``4 (a_l^2 b_l + a_l
  b_l^2)`` at every step; on statistics steps (every ``T_1``) the layer
  factors and the factor products ``2 n a_l^2`` and ``2 R b_l^2`` (``R = N``
  rows for the true Fisher, ``n`` for Monte Carlo); every ``inverse_every``
  steps ``eigh`` at about ``9 k^3`` per factor. ``inverse="cholesky"``:
  preconditioning ``2 (a_l^2 b_l + a_l b_l^2)``, refresh: Cholesky
  ``k^3 / 3`` and the solve against ``I`` ``2 k^3`` per factor. Amortised
  per step over a cycle.
  """
  c = sizes[-1]
  layers = [(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
  big_n = n * c
  sgd = 6 * n * sum(a * b for a, b in layers)
  factors = 2 * n * sum(a * b for a, b in layers) + 2 * n * c * c * sum(
      b for _, b in layers[:-1])
  true = sgd + factors + sum(
      2 * n * c * c * b + 2 * big_n**2 * b * _sym(big_n)
      + 2 * n * n * a * _sym(n) for a, b in layers) + big_n**3 / 3
  emp = sgd + factors + sum(2 * n * c * b + 2 * n * n * (a + b) * _sym(n)
                            for a, b in layers) + n**3 / 3

  def kfac_flops(rows, stats_every, cholesky=False):
    products = 2 if cholesky else 4
    precondition = sum(products * (a * a * b + a * b * b) for a, b in layers)
    statistics = factors + sum(2 * n * a * a * _sym(a)
                               + 2 * rows * b * b * _sym(b)
                               for a, b in layers)
    per_k3 = (1 / 3 + 2) if cholesky else 9
    refresh = sum(per_k3 * (a**3 + b**3) for a, b in layers)
    return (sgd + precondition + statistics / stats_every
            + refresh / inverse_every)

  # Monte Carlo: also the right-hand side Gamma_s G g, one structured
  # G g product (J^T g, then J) of 4 n sum a_l b_l.
  mc = emp + 4 * n * sum(a * b for a, b in layers)
  return {"sgd": sgd, "ngd": true, "ngd_emp": emp, "ngd_mc": mc,
          "kfac": kfac_flops(big_n, 1), "kfac_mc": kfac_flops(n, 1),
          "kfac_s": kfac_flops(big_n, inverse_every),
          "kfac_mc_s": kfac_flops(n, inverse_every),
          "kfac_ch": kfac_flops(big_n, 1, True),
          "kfac_s_ch": kfac_flops(big_n, inverse_every, True),
          "kfac_mc_s_ch": kfac_flops(n, inverse_every, True)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=2048)
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--m", type=int, default=8192)
  parser.add_argument("--mlp-n", type=int, default=1024)
  parser.add_argument("--mlp-widths", default="2048,2048")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--damping", type=float, default=1e-3)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "float64"))
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes, to check that the script runs")
  parser.add_argument("--digits-batch", type=int, default=256)
  parser.add_argument("--digits-methods", default="",
                      help="comma-separated subset of the digits methods "
                      "(sgd is always timed)")
  parser.add_argument("--digits-every", type=int, default=10,
                      help="K-FAC's inverse refresh period (and the "
                      "statistics period of the *_s methods): the cycle")
  parser.add_argument("--digits-only", action="store_true",
                      help="only the digits classifier's mini-batch steps")
  args = parser.parse_args()
  if args.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  dtype = np.float64 if args.dtype == "float64" else np.float32
  widths = tuple(int(w) for w in args.mlp_widths.split(","))
  if args.quick:
    args.n, args.d, args.m, args.mlp_n, widths = 64, 8, 256, 32, (64, 64)
    args.repeats = 2

  if args.quick:
    args.digits_batch = 32
  only = tuple(args.digits_methods.split(",")) if args.digits_methods else ()
  dig = digits(args.digits_batch, dtype, args.repeats, only=only,
               inverse_every=args.digits_every)
  if args.digits_only:
    _print_digits(dig)
    return
  t2, f2 = two_layer(args.n, args.d, args.m, dtype, args.repeats,
                     args.damping)
  tm, fm = mlp(args.mlp_n, args.d, widths, dtype, args.repeats,
               args.damping)
  if args.quick:
    flax_mlp(32, 8, 32, 3, dtype, args.repeats, args.damping)
  else:
    flax_mlp(256, 64, 512, 3, dtype, args.repeats, args.damping)

  def ratio(times, flops, a, b):
    med, low = times[a][0] / times[b][0], times[a][1] / times[b][1]
    return f"{med:.2f} (min {low:.2f}) [model {flops[a] / flops[b]:.2f}]"

  print("\nratios of median times (of minimum times) [FLOP model]")
  for label, times, flops in (("two_layer", t2, f2), ("mlp", tm, fm)):
    print(f"  {label}: NGD / GD = {ratio(times, flops, 'ngd', 'gd')}")
    print(f"  {label}: K-FAC primal / auto = "
          f"{ratio(times, flops, 'kfac_primal', 'kfac_auto')}")
  print(f"  two_layer: K-FAC primal / dual = "
        f"{ratio(t2, f2, 'kfac_primal', 'kfac_dual')}")
  _print_digits(dig)


def _print_digits(result):
  per_step, flops = result
  print("\nratios to SGD, amortised per step over a full cycle: measured "
        "median (min) [FLOP model]")
  for name in per_step:
    if name == "sgd":
      continue
    target = 2.0 if name.startswith("kfac") else 4.0
    med = per_step[name][0] / per_step["sgd"][0]
    low = per_step[name][1] / per_step["sgd"][1]
    print(f"  digits: {name:<12} / sgd = {med:6.2f} (min {low:6.2f}) "
          f"[model {flops[name] / flops['sgd']:5.2f}] [target <= {target:g}]")


if __name__ == "__main__":
  main()

"""D1's NGD and K-FAC runs (the digits classifier) on several seeds.

For each seed, the ``digits`` preset of ``configs/train.py`` with
``config.seed`` set to it (so its own stratified split, initialisation and
batch order), and NGD and K-FAC with the adaptive defaults (one run each,
no grid), run by ``experiments.train._train`` exactly as ``python -m
experiments.train --config=configs/train.py:digits --config.seed=S`` runs
those two units (in float64, the experiments' default, with the same
initialisation key and PRNG stream as inside its ``Run``). Adam and SGD
are not run. Prints one row per seed and method:
the first evaluated step at which the test accuracy reaches the target
(``None``: not within the budget), the best and the final test accuracy
(with the number of test images right), and the seconds (training only;
one run, no repeats, the load average printed beside it).

    python benchmarks/d1_seeds.py                   # seeds 0-9
    python benchmarks/d1_seeds.py --seeds 0 --methods ngd --json out.json
    python benchmarks/d1_seeds.py --methods ngd --model-batches 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from configs import train as settings  # noqa: E402
from experiments import train as exp  # noqa: E402
from ngdjax.experiment.runner import seed_key  # noqa: E402


def run(seed: int, method: str, *, steps: int | None = None,
        preset: str = "digits", model_batches: int | None = None) -> dict:
  """One D1 unit (``method`` in ``experiments.train.CURVATURE``) at
  ``seed`` with the preset's settings (adaptive by default);
  ``model_batches`` overrides the config's ``{method}_model_batches``.

  Returns ``experiments.train._train``'s result plus ``curve`` (``[(step,
  seconds, test accuracy)]`` at every evaluation), ``n_test`` and
  ``load_average``.
  """
  config = settings.get_config(preset)
  config.seed = int(seed)
  if steps is not None:
    config.curvature_steps = int(steps)
  if model_batches is not None:
    config[f"{method}_model_batches"] = int(model_batches)
  records = []

  def log(**values):
    records.append(values)

  # As experiments.train runs: float64 (experiments.common's --float64
  # default) and, inside its Run, the classic threefry stream.
  with jax.enable_x64(True), jax.threefry_partitionable(False):
    ds = exp.load(config)
    model = exp.models.mlp(tuple(int(w) for w in config.widths),
                           out_dim=10, activation="relu",
                           w_std=float(config.w_std))
    params0 = model.init(seed_key(config.seed, "init"), ds.x_train.shape[1])
    batch = min(int(config.batch_size), ds.x_train.shape[0])
    lr = exp._setting(config[f"{method}_lrs"][0])
    damping = exp._setting(config[f"{method}_dampings"][0])
    out = exp._train(config, model, params0, ds, batch, method, lr, damping,
                     {}, log)
  out["curve"] = [(r["step"], r["seconds"], r["test_accuracy"])
                  for r in records if "test_accuracy" in r]
  out["n_test"] = int(ds.x_test.shape[0])
  out["load_average"] = os.getloadavg()
  return out


def row(seed: int, method: str, r: dict) -> str:
  """One line of the table."""
  n = r["n_test"]
  best, final = r["best_test_accuracy"], r["final_test_accuracy"]
  load = ", ".join(f"{v:.1f}" for v in r["load_average"])
  return (f"seed {seed}  {method:5s}  to target: "
          f"{str(r['steps_to_target']):>4s}  best {100 * best:5.1f}% "
          f"({round(best * n)}/{n})  final {100 * final:5.1f}% "
          f"({round(final * n)}/{n})  {r['steps_run']} steps "
          f"{r['seconds_per_step'] * r['steps_run']:6.1f} s  load {load}")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
  p.add_argument("--methods", nargs="*", default=list(exp.CURVATURE),
                 choices=list(exp.CURVATURE))
  p.add_argument("--steps", type=int, default=None,
                 help="budget (default: the preset's curvature_steps)")
  p.add_argument("--model-batches", type=int, default=None, choices=(1, 2),
                 help="the adaptive step's model on 1 or 2 batches "
                 "(default: the config's, NGD 2 and K-FAC 1)")
  p.add_argument("--json", default="", help="write the results here")
  args = p.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, float64",
        flush=True)
  results = {}
  for seed in args.seeds:
    for method in args.methods:
      r = run(seed, method, steps=args.steps,
              model_batches=args.model_batches)
      results[f"{method}/seed={seed}"] = r
      print(row(seed, method, r), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
  main()

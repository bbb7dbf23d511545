"""K-FAC on an embedding model: the vector form of the embedding's block
against the one-hot form it replaced.

    python benchmarks/kfac_embed.py            # V = 1000, 10000, 50000
    python benchmarks/kfac_embed.py --quick    # tiny run: checks it works

The model: a bag-of-tokens classifier, embedding ``V -> D = 64``, mean over
``T = 16`` tokens, dense ``64 -> 10`` (bias), softmax cross-entropy, batch
``n = 256``; tokens drawn from a Zipf law (exponent 1.1) over the
vocabulary, so that many tokens of a large vocabulary are absent from a
batch. Two K-FAC settings (``ngdjax.kfac``, fixed learning rate and
damping):

* ``mini``: Monte Carlo Fisher, running factors (``factor_decay=0.95``),
  inverses every ``--every`` steps by Cholesky (``inverse="cholesky"``);
  time per step amortised over cycles of ``--every`` steps (one refresh
  per cycle).
* ``full``: the full-batch mode (true Fisher, ``c = 10`` rows per
  example, factors and solves every step).

"vector" is the library's embedding block (``kfac_embed``: the token
counts as a length-``V`` vector); "one-hot" sets
``kfac._ONE_HOT_EMBEDDINGS`` (the shared-layer form on the ``(n T, V)``
one-hot inputs, ``V x V`` running factors). The one-hot form is skipped
above ``--one-hot-max-mini`` / ``--one-hot-max-full`` (its size is printed
instead, and up to ``--one-hot-compile-max`` the memory of its compiled
step). Per configuration: step milliseconds (median and min over
``--repeats`` cycles, at most ``--one-hot-repeats`` for the one-hot form,
after one warm-up cycle that compiles; vector and
one-hot alternate within each repeat), XLA's memory of the compiled step
(arguments + temporaries + outputs, ``memory_analysis``: the peak of its
buffer assignment), the running state's bytes, and the load average
(``os.getloadavg``) at each timing: the machine is shared, so the ratios
within one process are the robust figures.

FLOP model (multiply-add = 2, ``m = n T = 4096`` token positions, ``D =
64``, ``c = 10``). Vector form, per statistics step: counts and row sums
``O(m D + V D)``, ``B^T B`` ``2 m D^2`` = 34 MFLOP (``r = 1`` row for the
Monte Carlo Fisher; ``x c`` for the true Fisher), the row scaling ``V
D`` and the ``D x D`` side ``2 V D^2`` (8 MFLOP per 1000 tokens); refresh
``O(V + D^3)``. One-hot form: ``A^T A`` on the one-hot ``(m, V)`` is
``2 m V^2`` (8.2 GFLOP at ``V = 1000``, 820 at 10000) per statistics step
and the ``V x V`` refresh ``~7/3 V^3`` (2.3 TFLOP at 10000); in the full
batch mode ``form="auto"`` solves the input side dual, ``2 m^2 V`` for ``A
A^T`` (34 GFLOP at 1000) plus an ``m x m`` solve (``m^3 / 3`` = 23 GFLOP).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ngdjax
from ngdjax._src.optim import kfac as kfac_lib

WIDTH, TOKENS, CLASSES = 64, 16, 10


def bag_of_tokens(p, x):
  """``(n, T)`` token ids (stored as floats) -> ``(n, 10)`` logits."""
  h = jnp.take(p["embed"], x.astype(jnp.int32), axis=0)  # (n, T, D)
  return jnp.mean(h, axis=1) @ p["w"] + p["b"]


def init(key, vocab, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {"embed": jax.random.normal(k1, (vocab, WIDTH), dtype),
          "w": jax.random.normal(k2, (WIDTH, CLASSES), dtype)
          / np.sqrt(WIDTH),
          "b": jnp.zeros((CLASSES,), dtype)}


def batches(vocab, n, count, seed=0):
  """``count`` batches ``(x (n, T) float32, y (n,) int32)``: Zipf tokens."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, vocab + 1) ** 1.1
  p /= p.sum()
  out = []
  for _ in range(count):
    x = rng.choice(vocab, size=(n, TOKENS), p=p).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    out.append((jnp.asarray(x), jnp.asarray(y)))
  return out


def make(mode, x_example, every, lam):
  if mode == "mini":
    return ngdjax.kfac(bag_of_tokens, 0.1, damping=lam,
                       loss="softmax_cross_entropy", fisher="monte_carlo",
                       factor_decay=0.95, inverse_every=every,
                       inverse="cholesky", example_inputs=x_example,
                       key=jax.random.key(1))
  return ngdjax.kfac(bag_of_tokens, 0.1, damping=lam,
                     loss="softmax_cross_entropy")


def _bytes(tree) -> int:
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize
             for a in jax.tree_util.tree_leaves(tree))


def prepare(mode, one_hot, params, data, every, lam, run=True):
  """``(cycle, carry, memory)``: one cycle of ``every`` steps (traced with
  the embedding form ``one_hot`` picks), its first carry and memory
  figures; only the memory figures (compiled, not run) without ``run``."""
  kfac_lib._ONE_HOT_EMBEDDINGS = one_hot  # read when the step is traced
  try:
    opt = make(mode, data[0][0], every, lam)
    state_shape = jax.eval_shape(opt.init, params)
    step = jax.jit(opt.step).lower(params, state_shape, *data[0]).compile()
    state = opt.init(params) if run else None
  finally:
    kfac_lib._ONE_HOT_EMBEDDINGS = False
  mem = step.memory_analysis()
  memory = {"state_mb": _bytes(state_shape) / 2**20}
  if mem is not None:
    memory["xla_mb"] = (mem.argument_size_in_bytes + mem.temp_size_in_bytes
                        + mem.output_size_in_bytes) / 2**20
    memory["temp_mb"] = mem.temp_size_in_bytes / 2**20

  def cycle(carry):
    p, s, k = carry
    for _ in range(every):
      p, s, _ = step(p, s, *data[k % len(data)])
      k += 1
    jax.block_until_ready(p)
    return p, s, k

  return cycle, (params, state, 0), memory


def run_vocab(args, mode, vocab):
  params = init(jax.random.key(0), vocab)
  data = batches(vocab, args.batch, 8)
  lam = args.damping * args.batch
  every = args.every if mode == "mini" else 1
  limit = args.one_hot_max_mini if mode == "mini" else args.one_hot_max_full
  forms = ["vector"] + (["one_hot"] if vocab <= limit else [])
  result = {"mode": mode, "vocab": vocab, "batch": args.batch}
  cycles, carries = {}, {}
  for form in forms:
    t0 = time.perf_counter()
    cycles[form], carries[form], result[form] = prepare(
        mode, form == "one_hot", params, data, every, lam)
    carries[form] = cycles[form](carries[form])  # warm-up
    result[form]["compile_and_warmup_s"] = time.perf_counter() - t0
  if "one_hot" not in forms:
    m = args.batch * TOKENS
    why = (f"a V x V float32 factor is {4 * vocab**2 / 2**30:.1f} GiB"
           if mode == "mini" else
           f"A A^T alone is 2 (n T)^2 V = {2 * m * m * vocab / 1e12:.1f} "
           "TFLOP per step")
    result["one_hot"] = {
        "not_run": f"V = {vocab} > the limit: {why}, the one-hot (n T, V) "
                   f"{4 * m * vocab / 2**30:.2f} GiB"}
    if vocab <= args.one_hot_compile_max:  # its compiled memory only
      result["one_hot"].update(prepare(mode, True, params, data, every, lam,
                                       run=False)[2])
  times = {form: [] for form in forms}
  loads = []
  for rep in range(args.repeats):
    for form in forms:
      if form == "one_hot" and rep >= args.one_hot_repeats:
        continue
      t0 = time.perf_counter()
      carries[form] = cycles[form](carries[form])
      times[form].append((time.perf_counter() - t0) / every * 1e3)
    loads.append(os.getloadavg()[0])
  for form in forms:
    result[form]["step_ms_median"] = statistics.median(times[form])
    result[form]["step_ms_min"] = min(times[form])
  result["load_avg_1min"] = [round(v, 2) for v in loads]
  if "one_hot" in times:
    result["one_hot_over_vector"] = (result["one_hot"]["step_ms_median"]
                                     / result["vector"]["step_ms_median"])
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocabs", default="1000,10000,50000")
  parser.add_argument("--modes", default="mini,full")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--every", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--damping", type=float, default=1e-3,
                      help="kfac-jax's mean-convention lam' (times batch)")
  parser.add_argument("--one-hot-max-mini", type=int, default=10000)
  parser.add_argument("--one-hot-max-full", type=int, default=50000)
  parser.add_argument("--one-hot-compile-max", type=int, default=50000,
                      help="above the --one-hot-max-* limits, compile the "
                      "one-hot step (memory figures) up to this V")
  parser.add_argument("--one-hot-repeats", type=int, default=3,
                      help="at most this many timed cycles of the one-hot "
                      "form (slow at large V)")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  if args.quick:
    args.vocabs, args.batch, args.repeats = "300", 16, 1
  print(json.dumps({"jax": jax.__version__,
                    "devices": [str(d) for d in jax.devices()],
                    "cpus": os.cpu_count()}))
  results = []
  for mode in args.modes.split(","):
    for vocab in (int(v) for v in args.vocabs.split(",")):
      results.append(run_vocab(args, mode, vocab))
      print(json.dumps(results[-1]), flush=True)
  return results


if __name__ == "__main__":
  main()

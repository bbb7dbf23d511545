"""Gram and NGD-step time versus the number of processes (``jax.distributed``).

    python benchmarks/processes.py                  # 1 and 2 processes
    python benchmarks/processes.py --n 4096 --m 8192 --procs 1,2

Each configuration launches ``P`` processes on this machine, joined by a
coordinator on 127.0.0.1 (gloo collectives), each with one CPU device and
only its own rows of the batch (``jax.make_array_from_process_local_data``);
process 0 prints the jitted sharded Gram's and one NGD step's (Cholesky)
median time after a warm-up, beside the FLOP model of the whole problem
(structured Gram ``2 n^2 (d + m)`` before the symmetric saving, Cholesky
``n^3 / 3``). On a 2-core machine two processes share the cores, so this
measures the cost of the collectives and the split, not a speed-up; on a
cluster the same script shows the scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

_WORKER = "--worker"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _median_time(fn, repeats):
  import jax

  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def worker(pid, nproc, port, n, d, m, repeats):
  import jax

  jax.config.update("jax_num_cpu_devices", 1)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=nproc, process_id=pid,
                             initialization_timeout=60)
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec

  import ngdjax

  mesh = jax.make_mesh((nproc,), ("data",))
  rows = NamedSharding(mesh, PartitionSpec("data"))
  model = ngdjax.two_layer_relu(m)
  params = model.init(jax.random.key(0), d)
  rng = np.random.default_rng(0)
  x_all = rng.standard_normal((n, d)).astype(np.float32)
  x_all /= np.linalg.norm(x_all, axis=1, keepdims=True)
  y_all = np.sin(3 * x_all[:, :1])
  per = n // nproc
  mine = slice(pid * per, (pid + 1) * per)
  x = jax.make_array_from_process_local_data(rows, x_all[mine], (n, d))
  y = jax.make_array_from_process_local_data(rows, y_all[mine], (n, 1))
  del x_all, y_all

  gram = jax.jit(lambda p, z: ngdjax.gram(model, p, z, mesh=mesh))
  opt = ngdjax.ngd(model, learning_rate=0.5, damping=1e-3, mesh=mesh)
  state = opt.init(params)
  step = jax.jit(opt.step)
  out = {
      "processes": nproc,
      "n": n, "d": d, "m": m,
      "gram_s": _median_time(lambda: gram(params, x), repeats),
      "step_s": _median_time(lambda: step(params, state, x, y)[0], repeats),
      "gram_gflop": 2 * n * n * (d + m) / 1e9,
      "cholesky_gflop": n**3 / 3 / 1e9,
  }
  if pid == 0:
    print(json.dumps(out), flush=True)
  jax.distributed.shutdown()


def launch(nproc, args):
  port = _free_port()
  cmd = [sys.executable, __file__, _WORKER, str(nproc), str(port),
         str(args.n), str(args.d), str(args.m), str(args.repeats)]
  env = dict(os.environ)
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
  procs = [subprocess.Popen(cmd + [str(pid)], env=env,
                            stdout=subprocess.PIPE, text=True)
           for pid in range(nproc)]
  try:
    outs = [p.communicate(timeout=args.timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  if any(p.returncode for p in procs):
    raise RuntimeError(f"{nproc} processes: exit codes "
                       f"{[p.returncode for p in procs]}")
  return json.loads(outs[0].strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--d", type=int, default=256)
  parser.add_argument("--m", type=int, default=4096)
  parser.add_argument("--procs", default="1,2")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--timeout", type=float, default=600)
  args = parser.parse_args()
  base = None
  print(f"two-layer ReLU n={args.n} d={args.d} m={args.m}, float32, one CPU "
        "device per process")
  print("processes   Gram (s)   NGD step (s)   Gram / 1 proc   step / 1 proc")
  for nproc in [int(p) for p in args.procs.split(",")]:
    r = launch(nproc, args)
    base = base or r
    print(f"{nproc:9d} {r['gram_s']:10.3f} {r['step_s']:14.3f} "
          f"{r['gram_s'] / base['gram_s']:15.2f} "
          f"{r['step_s'] / base['step_s']:15.2f}")
  print(f"FLOP model: Gram {r['gram_gflop']:.1f} GFLOP (before the symmetric "
        f"saving), Cholesky {r['cholesky_gflop']:.1f} GFLOP")


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == _WORKER:
    nproc_, port_, n_, d_, m_, reps_, pid_ = map(int, sys.argv[2:9])
    worker(pid_, nproc_, port_, n_, d_, m_, reps_)
  else:
    main()

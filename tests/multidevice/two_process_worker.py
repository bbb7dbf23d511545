"""One of two processes of a real multi-process run (``jax.distributed``).

Launched twice by ``tests/parallel_test.py``:

    python two_process_worker.py PROCESS_ID PORT OUT_DIR

Each process has 2 CPU devices; the two join through a coordinator on
127.0.0.1:PORT into one 4-device mesh made the way JAX users make it
(``jax.make_mesh``, Explicit axes). Each process builds the global batch
from its own rows only (``jax.make_array_from_process_local_data``) and runs
the sharded Gram, Gram-vector product, NGD steps (Cholesky, CG, CG with
the Nystrom preconditioner) and a K-FAC step. Process 0 gathers the
results (``process_allgather``) and writes them to ``OUT_DIR/results.npz``;
the test compares them with a one-process run that it computes from
``problem()`` and ``steps(None)`` (importing this file changes no JAX
setting).
"""

import sys

import jax

if __name__ == "__main__":
  # Before JAX's backend starts: 2 CPU devices, collectives across processes.
  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_num_cpu_devices", 2)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import ngdjax  # noqa: E402
from ngdjax import parallel  # noqa: E402

N, D, WIDTH = 16, 3, 32


def problem():
  """The whole data set (the test builds it the same way for its reference)."""
  model = ngdjax.two_layer_relu(WIDTH)
  # numpy draws: the same in the workers and the test (whose conftest picks
  # another threefry stream).
  rng = np.random.default_rng(0)
  params = {"W": jnp.asarray(rng.standard_normal((WIDTH, D)))}
  x = rng.standard_normal((N, D))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y = np.sin(3 * x[:, :1])
  return model, params, x, y


def steps(mesh):
  """The optimizers compared, by name (``mesh=None``: one process)."""
  model = ngdjax.two_layer_relu(WIDTH)
  return {
      "ngd_cholesky": ngdjax.ngd(model, learning_rate=0.5, damping=1e-3,
                                 mesh=mesh),
      "ngd_cg": ngdjax.ngd(model, learning_rate=0.5, damping=1e-3,
                           solver="cg", cg_tol=1e-12, cg_maxiter=200,
                           mesh=mesh),
      # The preconditioner built and applied in the processes' row blocks.
      "ngd_cg_nystrom": ngdjax.ngd(model, learning_rate=0.5, damping=1e-3,
                                   solver="cg", preconditioner="nystrom",
                                   preconditioner_rank=4, cg_tol=1e-12,
                                   cg_maxiter=200, mesh=mesh),
      "kfac": ngdjax.kfac(model, learning_rate=0.3, damping=1e-3, mesh=mesh),
  }


def float32_problem(params, x, y):
  """The problem in float32 (the arrays keep their sharding)."""
  return jax.tree.map(lambda a: a.astype(jnp.float32), (params, x, y))


def local_rows(sharding, shape):
  """The contiguous range of global rows this process's devices hold."""
  index = sharding.addressable_devices_indices_map(shape)
  starts = sorted(s[0].start or 0 for s in index.values())
  stops = sorted(s[0].stop or shape[0] for s in index.values())
  assert starts[1:] == stops[:-1], "rows of one process are not contiguous"
  return slice(starts[0], stops[-1])


def main(process_id, port, out_dir):
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=process_id,
                             initialization_timeout=60)
  assert jax.process_count() == 2 and jax.device_count() == 4
  assert jax.local_device_count() == 2
  mesh = jax.make_mesh((4,), ("data",))
  model, params, x_all, y_all = problem()
  rows = NamedSharding(mesh, PartitionSpec("data"))
  mine = local_rows(rows, x_all.shape)
  # Only this process's examples enter the library.
  x_local, y_local = x_all[mine], y_all[mine]
  del x_all, y_all
  x = jax.make_array_from_process_local_data(rows, x_local, (N, D))
  y = jax.make_array_from_process_local_data(rows, y_local, (N, 1))
  assert not x.is_fully_addressable
  v = jax.make_array_from_process_local_data(
      rows, np.cos(np.arange(N))[mine], (N,))

  out = {"rows": np.array([mine.start, mine.stop])}
  gather = multihost_utils.process_allgather
  out["gram"] = gather(ngdjax.gram(model, params, x, mesh=mesh), tiled=True)
  out["gram_jit"] = gather(
      jax.jit(lambda p, z: ngdjax.gram(model, p, z, mesh=mesh))(params, x),
      tiled=True)
  out["gram_products"] = gather(
      ngdjax.gram(model, params, x, method="products", mesh=mesh), tiled=True)
  out["gram_vp"] = gather(
      parallel.gram_vp_sharded(model, params, x, v, mesh), tiled=True)
  for name, opt in steps(mesh).items():
    new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
    out[name + "/W"] = gather(new["W"], tiled=True)
    out[name + "/loss"] = gather(info["loss"], tiled=True)
  # float32, the Cholesky step with G in block rows (never gathered).
  p32, x32, y32 = float32_problem(params, x, y)
  opt = steps(mesh)["ngd_cholesky"]
  new, _, _ = jax.jit(opt.step)(p32, opt.init(p32), x32, y32)
  out["ngd_cholesky_f32/W"] = gather(new["W"], tiled=True)
  if process_id == 0:
    np.savez(f"{out_dir}/results.npz", **out)
  multihost_utils.sync_global_devices("done")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

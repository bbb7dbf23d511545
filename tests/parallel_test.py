"""Runs the multi-device cases in a process with 4 simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` only takes effect if it
is set before JAX initialises its backend, and this pytest process has already
done so (conftest imports jax), so the cases in ``tests/multidevice/`` run in
a child pytest whose environment sets the flag.
"""

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import ngdjax
from ngdjax import parallel

CASES = pathlib.Path(__file__).parent / "multidevice" / "sharded_cases.py"
WORKER = pathlib.Path(__file__).parent / "multidevice" / "two_process_worker.py"


def _run_sharded_cases(marker: str, keywords: str = ""):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  )
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       "-p", "no:xdist", "-o", "addopts=", "-m", marker,
       *(["-k", keywords] if keywords else []), str(CASES)],
      env=env, capture_output=True, text=True, timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


# The default cases run in two child processes, split by name, so that the
# two pytest-xdist workers share them instead of one worker running them all.
@pytest.mark.parametrize("keywords", ["gram", "not gram"])
def test_sharded_cases_on_four_cpu_devices(keywords):
  _run_sharded_cases("not slow", keywords)


@pytest.mark.slow
def test_slow_sharded_cases_on_four_cpu_devices():
  _run_sharded_cases("slow")


def test_one_device_mesh_equals_unsharded():
  mesh = parallel.data_mesh(jax.devices()[:1])
  model = ngdjax.two_layer_relu(8)
  params = model.init(jax.random.key(0), 3)
  x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (5, 3)))
  ref = ngdjax.gram(model, params, x)
  out = ngdjax.gram(model, params, x, mesh=mesh)
  assert float(abs(out - ref).max()) < 1e-13


def test_bad_mesh():
  model = ngdjax.two_layer_relu(8)
  params = model.init(jax.random.key(0), 3)
  x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (5, 3)))
  with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
    ngdjax.gram(model, params, x, mesh="data")
  with pytest.raises(ValueError, match="x2 is not supported"):
    ngdjax.gram(model, params, x, x, mesh=parallel.data_mesh())


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _load_worker():
  spec = importlib.util.spec_from_file_location("two_process_worker", WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_two_processes_equal_one(tmp_path):
  """Two processes (2 CPU devices each) joined by jax.distributed, each
  holding only its own rows, give the one-process Gram and steps."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  env["JAX_PLATFORMS"] = "cpu"
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, str(WORKER), str(i), str(port), str(tmp_path)],
          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True)
      for i in range(2)
  ]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=480)[0])
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        logs.append(p.communicate()[0])
  codes = [p.returncode for p in procs]
  assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(
      log[-3000:] for log in logs)

  worker = _load_worker()
  out = np.load(tmp_path / "results.npz")
  model, params, x, y = worker.problem()
  assert list(out["rows"]) == [0, worker.N // 2]  # process 0 held half
  ref = np.asarray(ngdjax.gram(model, params, x))
  np.testing.assert_allclose(out["gram"], ref, atol=1e-13)
  np.testing.assert_allclose(out["gram_jit"], ref, atol=1e-13)
  np.testing.assert_allclose(out["gram_products"], ref, atol=1e-12)
  v = np.cos(np.arange(worker.N))
  np.testing.assert_allclose(out["gram_vp"], ref @ v, atol=1e-12)
  for name, opt in worker.steps(None).items():
    new, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
    np.testing.assert_allclose(out[name + "/W"], np.asarray(new["W"]),
                               atol=1e-10, err_msg=name)
    np.testing.assert_allclose(out[name + "/loss"], float(info["loss"]),
                               rtol=1e-12, err_msg=name)
  p32, x32, y32 = worker.float32_problem(params, jax.numpy.asarray(x),
                                         jax.numpy.asarray(y))
  opt = worker.steps(None)["ngd_cholesky"]
  new, _, _ = jax.jit(opt.step)(p32, opt.init(p32), x32, y32)
  scale = float(np.abs(np.asarray(new["W"]) - np.asarray(params["W"])).max())
  np.testing.assert_allclose(out["ngd_cholesky_f32/W"], np.asarray(new["W"]),
                             atol=1e-5 * scale)

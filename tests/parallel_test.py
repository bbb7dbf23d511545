"""Runs the multi-device cases in a process with 4 simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` only takes effect if it
is set before JAX initialises its backend, and this pytest process has already
done so (conftest imports jax), so the cases in ``tests/multidevice/`` run in
a child pytest whose environment sets the flag.
"""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

import ngdjax
from ngdjax import parallel

CASES = pathlib.Path(__file__).parent / "multidevice" / "sharded_cases.py"


def test_sharded_cases_on_four_cpu_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  )
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       "-p", "no:xdist", "-o", "addopts=", str(CASES)],
      env=env, capture_output=True, text=True, timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


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

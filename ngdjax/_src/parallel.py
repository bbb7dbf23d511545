"""Device meshes for the example axis (JAX's SPMD runtime).

This module is the lowest layer of the multi-device code: meshes, row
shardings and padding. The sharded Gram and Gram-vector products that use it
live with the other Gram implementations (``ngdjax._src.jacobian``:
``sharded_gram``, ``gram_vp_sharded``); the public ``ngdjax.parallel``
re-exports both.

The Gram matrix has one row block per device: device ``k`` holds examples
``X_k`` and computes ``G[X_k, :] = J(X_k) J(X)^T``. The result is a global
``(N, N)`` array sharded by rows (``PartitionSpec(axis, None)``); downstream
solves either gather it (``replicate``) or work on it sharded (CG via
``gram_vp``, whose VJP is a sum over devices and JVP is local).

What crosses devices:

* ``structured``: the per-layer factors of each device's examples are
  all-gathered (``O(n (a + c b))`` per layer), never a Jacobian;
* ``products`` / ``jacobian``: the inputs ``x`` are all-gathered and each
  device computes the cross-Gram of its rows against all examples.

Multi-host jobs call ``jax.distributed.initialize()`` first (the experiments'
``--jax_distributed`` flag does); ``data_mesh()`` then spans every device of
every process.

Example (4 simulated CPU devices, ``XLA_FLAGS`` set before importing jax):

  >>> mesh = ngdjax.parallel.data_mesh()                     # doctest: +SKIP
  >>> g = ngdjax.gram(model, params, x, mesh=mesh)           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ngdjax._src.linalg import pad_rows

Array = jax.Array

DATA_AXIS = "data"


def data_mesh(
    devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS
) -> Mesh:
  """A one-axis mesh over ``devices`` (default: all devices) for examples."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty")
  return Mesh(np.asarray(devices), (axis_name,))


def mesh_axis(mesh: Mesh) -> str:
  """The name of the one axis of ``mesh`` (ValueError for other meshes)."""
  if not isinstance(mesh, Mesh):
    raise ValueError(
        f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}"
    )
  if len(mesh.axis_names) != 1:
    raise ValueError(
        "mesh must have exactly one axis (the example axis), got axes "
        f"{mesh.axis_names}; build one with ngdjax.parallel.data_mesh()"
    )
  return mesh.axis_names[0]


def pad_to_devices(x: Array, mesh: Mesh) -> tuple[Array, int]:
  """Pads rows of ``x`` (with copies of row 0) to a multiple of the devices.

  Returns the padded array and the number of padded rows; results computed
  on padded rows are sliced off by the callers.
  """
  return pad_rows(x, mesh.devices.size)


def shard_rows(x: Array, mesh: Mesh) -> Array:
  """Places ``x`` with its first axis split over the mesh (no padding)."""
  axis = mesh_axis(mesh)
  spec = PartitionSpec(axis, *([None] * (x.ndim - 1)))
  return jax.device_put(x, NamedSharding(mesh, spec))


def row_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """``NamedSharding`` splitting axis 0 over the mesh, the rest replicated."""
  spec = PartitionSpec(mesh_axis(mesh), *([None] * (ndim - 1)))
  return NamedSharding(mesh, spec)


def replicate(a: Array, mesh: Mesh) -> Array:
  """Gathers ``a`` onto every device of ``mesh`` (for a replicated solve)."""
  return jax.device_put(a, NamedSharding(mesh, PartitionSpec()))

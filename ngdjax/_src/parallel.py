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

Meshes of any axis type are accepted: ``jax.make_mesh`` now makes
``Explicit`` axes, under which ``with_sharding_constraint`` and ``shard_map``
on an ``Auto`` mesh are refused. The library computes on ``auto_mesh(mesh)``
(same devices and axis name, ``Auto`` type) and traces its sharded code under
``mesh_context(mesh)``, so a user's explicit mesh, arrays placed on it, and a
surrounding ``jax.set_mesh(mesh)`` all work unchanged.

Multi-host jobs call ``jax.distributed.initialize()`` first (the experiments'
``--jax_distributed`` flag does); ``data_mesh()`` then spans every device of
every process.

Example (4 simulated CPU devices, ``XLA_FLAGS`` set before importing jax):

  >>> mesh = ngdjax.parallel.data_mesh()                     # doctest: +SKIP
  >>> g = ngdjax.gram(model, params, x, mesh=mesh)           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ngdjax._src.linalg import pad_rows
from ngdjax._src.typing import Array

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


def auto_mesh(mesh: Mesh) -> Mesh:
  """``mesh`` with its axis of type ``Auto`` (the library's sharded code).

  ``jax.make_mesh`` gives ``Explicit`` axes by default; the library's
  sharding constraints and ``shard_map`` calls need ``Auto`` ones. Same
  devices, same axis name: arrays placed on either mesh stay where they are.
  """
  mesh_axis(mesh)
  if all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names,
              axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def mesh_context(mesh: Mesh | None):
  """Context that traces the library's sharded code on ``auto_mesh(mesh)``.

  Needed when the caller runs under ``jax.set_mesh`` of an ``Explicit``
  mesh: JAX then checks every constraint and ``shard_map`` against that
  context. ``mesh=None`` gives a context that does nothing.
  """
  if mesh is None:
    return contextlib.nullcontext()
  return jax.sharding.use_abstract_mesh(auto_mesh(mesh).abstract_mesh)


def _explicit_spec(leaf) -> PartitionSpec | None:
  """The spec of ``leaf``'s sharding type when its mesh has Explicit axes."""
  try:
    sharding = jax.typeof(leaf).sharding
  except (TypeError, AttributeError):
    return None
  mesh = getattr(sharding, "mesh", None)
  types = getattr(mesh, "axis_types", ())
  if any(t == AxisType.Explicit for t in types):
    return sharding.spec
  return None


def to_auto(tree, mesh: Mesh):
  """Moves leaves typed on an ``Explicit`` mesh onto ``auto_mesh(mesh)``.

  Same devices and partition, so nothing moves; only the array's type
  changes (JAX refuses to mix arrays of the two meshes in one operation).
  Other leaves are returned as they are. Call under ``mesh_context``.
  """
  auto = auto_mesh(mesh)

  def one(leaf):
    spec = _explicit_spec(leaf)
    if spec is None:
      return leaf
    return jax.lax.with_sharding_constraint(leaf, NamedSharding(auto, spec))

  return jax.tree_util.tree_map(one, tree)


def on_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
  """``fn`` under ``mesh_context(mesh)``, its arguments through ``to_auto``.

  ``fn`` itself for ``mesh=None``.
  """
  if mesh is None:
    return fn

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with mesh_context(mesh):
      args, kwargs = to_auto((args, kwargs), mesh)
      return fn(*args, **kwargs)

  return wrapped


def pad_to_devices(x: Array, mesh: Mesh) -> tuple[Array, int]:
  """Pads rows of ``x`` (with copies of row 0) to a multiple of the devices.

  Returns the padded array and the number of padded rows; results computed
  on padded rows are sliced off by the callers.
  """
  return pad_rows(x, mesh.devices.size)


def shard_rows(x: Array, mesh: Mesh) -> Array:
  """Places ``x`` with its first axis split over the mesh (no padding)."""
  return jax.device_put(x, row_sharding(mesh, x.ndim))


def row_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """``NamedSharding`` splitting axis 0 over the mesh, the rest replicated."""
  spec = PartitionSpec(mesh_axis(mesh), *([None] * (ndim - 1)))
  return NamedSharding(auto_mesh(mesh), spec)


def replicate(a: Array, mesh: Mesh) -> Array:
  """Gathers ``a`` onto every device of ``mesh`` (for a replicated solve)."""
  return jax.device_put(a, NamedSharding(auto_mesh(mesh), PartitionSpec()))

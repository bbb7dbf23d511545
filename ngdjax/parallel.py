"""Sharding the example axis over a device mesh (JAX's SPMD runtime).

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
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# ``ngdjax.jacobian`` is also the name of a function re-exported by the package,
# so import the module's names, not the module through the package.
from ngdjax.jacobian import (
    GramMethod,
    _pad_rows,
    gram,
    jvp,
    output_dim,
    resolve_gram_method,
    split_model,
    structured_gram_from_factors,
    vjp,
)
from ngdjax.models import LayerFactors

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


def _axis(mesh: Mesh) -> str:
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
  return _pad_rows(x, mesh.devices.size)


def shard_rows(x: Array, mesh: Mesh) -> Array:
  """Places ``x`` with its first axis split over the mesh (no padding)."""
  axis = _axis(mesh)
  spec = PartitionSpec(axis, *([None] * (x.ndim - 1)))
  return jax.device_put(x, NamedSharding(mesh, spec))


def row_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """``NamedSharding`` splitting axis 0 over the mesh, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(_axis(mesh), *([None] * (ndim - 1))))


def sharded_gram(
    apply_or_model,
    params,
    x: Array,
    mesh: Mesh,
    method: str = "auto",
    chunk_size: int | None = None,
) -> Array:
  """``G = J J^T`` with the example axis sharded over ``mesh``.

  Equals ``ngdjax.gram(apply_or_model, params, x, method=method)``; see the
  module docstring for what each device computes and communicates. ``params``
  are replicated.

  Args:
    apply_or_model: a ``Model`` or ``apply(params, x)``.
    params: parameter pytree (replicated on every device).
    x: ``(n, d)`` inputs; padded internally to a multiple of the device count.
    mesh: a one-axis ``Mesh`` (``data_mesh()``).
    method: as in ``ngdjax.gram``.
    chunk_size: examples per block within each device.

  Returns:
    ``(n c, n c)`` array sharded by rows over ``mesh``.
  """
  axis = _axis(mesh)
  _, model = split_model(apply_or_model)
  resolved = resolve_gram_method(apply_or_model, params, x, method)
  n = x.shape[0]
  c = output_dim(apply_or_model, params, x)
  xp, _ = pad_to_devices(x, mesh)
  xp = jax.device_put(xp, row_sharding(mesh))
  replicated = PartitionSpec()

  if resolved is GramMethod.STRUCTURED:

    def local_rows(params, x_local):
      mine = model.layer_factors(params, x_local)
      everyone = tuple(
          LayerFactors(
              jax.lax.all_gather(f.inputs, axis, tiled=True),
              jax.lax.all_gather(f.output_grads, axis, tiled=True),
          )
          for f in mine
      )
      return structured_gram_from_factors(mine, everyone, chunk_size)

  else:

    def local_rows(params, x_local):
      x_all = jax.lax.all_gather(x_local, axis, tiled=True)
      return gram(
          apply_or_model, params, x_local, x_all, method=resolved.value,
          chunk_size=chunk_size,
      )

  g = jax.shard_map(
      local_rows,
      mesh=mesh,
      in_specs=(replicated, PartitionSpec(axis, None)),
      out_specs=PartitionSpec(axis, None),
      check_vma=False,
  )(params, xp)
  return g if g.shape[0] == n * c else g[: n * c, : n * c]


def replicate(a: Array, mesh: Mesh) -> Array:
  """Gathers ``a`` onto every device of ``mesh`` (for a replicated solve)."""
  return jax.device_put(a, NamedSharding(mesh, PartitionSpec()))


def gram_vp_sharded(apply_or_model, params, x, v, mesh):
  """``G v`` with examples sharded: local VJPs summed over devices (psum),
  then local JVPs. ``v`` is ``(n c,)``; the result has the shape of ``v``."""
  axis = _axis(mesh)
  apply, _ = split_model(apply_or_model)
  n = x.shape[0]
  c = v.shape[0] // n
  xp, pad = pad_to_devices(x, mesh)
  v2 = v.reshape(n, c)
  if pad:
    v2 = jnp.concatenate([v2, jnp.zeros((pad, c), v2.dtype)])

  def local(params, x_local, v_local):
    jt_v = vjp(apply, params, x_local, v_local)
    jt_v = jax.lax.psum(jt_v, axis)
    return jvp(apply, params, x_local, jt_v).reshape(-1, c)

  out = jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec(axis, None),
                PartitionSpec(axis, None)),
      out_specs=PartitionSpec(axis, None),
      check_vma=False,
  )(params, xp, v2)
  return out[:n].reshape(-1)

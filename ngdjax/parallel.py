"""Sharding the example axis over a device mesh.

Meshes and row shardings come from ``ngdjax._src.parallel``; the sharded Gram
and Gram-vector products from ``ngdjax._src.jacobian``. ``ngdjax.gram``,
``ngdjax.ngd`` and ``ngdjax.kfac`` take ``mesh=`` directly.
"""

from ngdjax._src.jacobian import gram_vp_sharded, sharded_gram
from ngdjax._src.parallel import (
    DATA_AXIS,
    data_mesh,
    mesh_axis,
    pad_to_devices,
    replicate,
    row_sharding,
    shard_rows,
)

__all__ = [
    "DATA_AXIS",
    "data_mesh",
    "gram_vp_sharded",
    "mesh_axis",
    "pad_to_devices",
    "replicate",
    "row_sharding",
    "shard_rows",
    "sharded_gram",
]

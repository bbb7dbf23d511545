"""Test configuration: float64 everywhere, so dense references are exact.

Tests that exercise float32 behaviour ask for it with explicit dtypes.
"""

import jax

jax.config.update("jax_enable_x64", True)
# Random draws compile ~5x faster on CPU with the classic stream; results
# never depend on which stream is used.
jax.config.update("jax_threefry_partitionable", False)

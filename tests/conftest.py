"""Test configuration: float64 everywhere, so dense references are exact.

Tests that exercise float32 behaviour ask for it with explicit dtypes.
"""

import jax

jax.config.update("jax_enable_x64", True)

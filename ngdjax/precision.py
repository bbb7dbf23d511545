"""The matmul precision policy of every curvature computation
(``ngdjax._src.precision``): float32-accurate by default on every backend;
``precision=`` on each entry point trades accuracy for speed."""

from ngdjax._src.precision import PRECISIONS, scope

__all__ = ["PRECISIONS", "scope"]

"""Linearised model, closed-form GD/NGD trajectories (``_src.linearized``)."""

from ngdjax._src.linearized import (
    METHODS,
    MinNormSolution,
    linearize,
    min_norm_solution,
    predict,
    residuals,
    weights,
)

__all__ = [
    "METHODS",
    "MinNormSolution",
    "linearize",
    "min_norm_solution",
    "predict",
    "residuals",
    "weights",
]

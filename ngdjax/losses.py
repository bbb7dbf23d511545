"""Losses in output space with their gradients (``ngdjax._src.losses``)."""

from ngdjax._src.losses import (
    LOSSES,
    Loss,
    get,
    softmax_cross_entropy,
    squared,
    squared_log_cosh,
)

__all__ = [
    "LOSSES",
    "Loss",
    "get",
    "softmax_cross_entropy",
    "squared",
    "squared_log_cosh",
]

"""Infinite-width Gram matrices and ``lambda_0`` (``ngdjax._src.kernels``)."""

from ngdjax._src.kernels import (
    lambda_0,
    relu_covariance_inf,
    relu_gram_inf,
    relu_ntk_inf,
    two_layer_ntk_inf,
)

__all__ = [
    "lambda_0",
    "relu_covariance_inf",
    "relu_gram_inf",
    "relu_ntk_inf",
    "two_layer_ntk_inf",
]

"""Synthetic sphere data, digits and IDX files (``ngdjax._src.data``)."""

from ngdjax._src.data import (
    MNIST_FILES,
    SPHERE_TARGETS,
    TARGETS,
    Dataset,
    digits,
    mnist,
    read_idx,
    sphere,
)

__all__ = [
    "Dataset",
    "MNIST_FILES",
    "SPHERE_TARGETS",
    "TARGETS",
    "digits",
    "mnist",
    "read_idx",
    "sphere",
]

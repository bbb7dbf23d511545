"""Models as ``init``/``apply`` pairs (``ngdjax._src.models``)."""

from ngdjax._src.models import (
    ACTIVATIONS,
    LayerFactors,
    Model,
    mlp,
    output_layer,
    two_layer_relu,
)

__all__ = [
    "ACTIVATIONS",
    "LayerFactors",
    "Model",
    "mlp",
    "output_layer",
    "two_layer_relu",
]

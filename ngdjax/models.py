"""Models as ``init``/``apply`` pairs (``ngdjax._src.models``)."""

from ngdjax._src.models import (
    ACTIVATIONS,
    LayerFactors,
    Model,
    mlp,
    output_layer,
    two_layer_relu,
)
from ngdjax._src.structure import (
    DenseLayerInfo,
    GenericLeafInfo,
    LayerStructure,
    StructureReport,
    describe_structure,
    layer_structure,
)

__all__ = [
    "ACTIVATIONS",
    "DenseLayerInfo",
    "GenericLeafInfo",
    "LayerFactors",
    "LayerStructure",
    "Model",
    "StructureReport",
    "describe_structure",
    "layer_structure",
    "mlp",
    "output_layer",
    "two_layer_relu",
]

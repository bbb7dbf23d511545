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
    ConvLayerInfo,
    DenseLayerInfo,
    GenericLeafInfo,
    LayerStructure,
    SharedLayerInfo,
    Structure,
    StructureReport,
    describe_structure,
    layer_structure,
    model_structure,
)

__all__ = [
    "ACTIVATIONS",
    "ConvLayerInfo",
    "DenseLayerInfo",
    "GenericLeafInfo",
    "LayerFactors",
    "LayerStructure",
    "Model",
    "SharedLayerInfo",
    "Structure",
    "StructureReport",
    "describe_structure",
    "layer_structure",
    "mlp",
    "model_structure",
    "output_layer",
    "two_layer_relu",
]

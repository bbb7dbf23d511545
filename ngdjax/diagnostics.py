"""The paper's conditions measured in training (``_src.diagnostics``)."""

from ngdjax._src.diagnostics import (
    DENSE_JACOBIAN_ENTRIES,
    PowerLawFit,
    SpectralNormEstimate,
    activation_flips,
    activation_pattern,
    contraction_ratios,
    distance_bound,
    distance_from_init,
    fit_power_law,
    generalization_measure,
    gram_lambda_min,
    jacobian_change_norm,
    relative_error,
)

__all__ = [
    "DENSE_JACOBIAN_ENTRIES",
    "PowerLawFit",
    "SpectralNormEstimate",
    "activation_flips",
    "activation_pattern",
    "contraction_ratios",
    "distance_bound",
    "distance_from_init",
    "fit_power_law",
    "generalization_measure",
    "gram_lambda_min",
    "jacobian_change_norm",
    "relative_error",
]

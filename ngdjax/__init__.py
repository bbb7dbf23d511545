"""ngdjax: natural gradient descent for over-parameterised networks, in JAX.

Implements Zhang, Martens & Grosse, "Fast Convergence of Natural Gradient
Descent for Over-parameterized Neural Networks" (NeurIPS 2019). See
``MATH.md`` for the conventions (sum loss, ``G = J J^T``).
"""

from ngdjax import (
    data,
    diagnostics,
    kernels,
    linearized,
    losses,
    models,
    parallel,
)
from ngdjax.forster import (
    ForsterResult,
    apply_forster,
    forster,
    isotropy_error,
)
from ngdjax.jacobian import (
    GramMethod,
    gram,
    gram_vp,
    jacobian,
    jvp,
    per_example_jacobian,
    vjp,
)
from ngdjax.kernels import (
    lambda_0,
    relu_gram_inf,
    relu_ntk_inf,
    two_layer_ntk_inf,
)
from ngdjax.linalg import lambda_min, normalize_rows
from ngdjax.linearized import MinNormSolution, linearize, min_norm_solution
from ngdjax.losses import Loss
from ngdjax.models import LayerFactors, Model, mlp, two_layer_relu

__version__ = "0.1.0"

__all__ = [
    "ForsterResult",
    "GramMethod",
    "LayerFactors",
    "Loss",
    "MinNormSolution",
    "Model",
    "__version__",
    "apply_forster",
    "data",
    "diagnostics",
    "forster",
    "gram",
    "gram_vp",
    "jacobian",
    "isotropy_error",
    "jvp",
    "kernels",
    "lambda_0",
    "lambda_min",
    "linearize",
    "linearized",
    "losses",
    "min_norm_solution",
    "mlp",
    "models",
    "normalize_rows",
    "parallel",
    "per_example_jacobian",
    "relu_gram_inf",
    "relu_ntk_inf",
    "two_layer_ntk_inf",
    "two_layer_relu",
    "vjp",
]

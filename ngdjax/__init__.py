"""ngdjax: natural gradient descent for over-parameterised networks, in JAX.

Implements Zhang, Martens & Grosse, "Fast Convergence of Natural Gradient
Descent for Over-parameterized Neural Networks" (NeurIPS 2019). The
conventions (sum loss, ``G = J J^T``, no ``1/n``) are in ``docs/math.md``.
"""

from ngdjax import (
    data,
    diagnostics,
    kernels,
    linearized,
    losses,
    models,
    optim,
    parallel,
    precision,
)
from ngdjax._src.forster import (
    ForsterResult,
    apply_forster,
    forster,
    isotropy_error,
)
from ngdjax._src.jacobian import (
    GramMethod,
    gram,
    gram_vp,
    jacobian,
    jvp,
    per_example_jacobian,
    vjp,
)
from ngdjax._src.kernels import (
    lambda_0,
    relu_gram_inf,
    relu_ntk_inf,
    two_layer_ntk_inf,
)
from ngdjax._src.linalg import lambda_min, normalize_rows
from ngdjax._src.linearized import MinNormSolution, linearize, min_norm_solution
from ngdjax._src.losses import Loss
from ngdjax._src.models import LayerFactors, Model, mlp, two_layer_relu
from ngdjax._src.structure import StructureReport, describe_structure
from ngdjax.optim import (
    GDState,
    KFACState,
    LevenbergMarquardt,
    NGDPreconditionerState,
    NGDState,
    OptaxState,
    Optimizer,
    gd,
    kfac,
    kfac_preconditioner,
    levenberg_marquardt,
    ngd,
    ngd_preconditioner,
    optax_optimizer,
)

__version__ = "0.1.0"

__all__ = [
    "ForsterResult",
    "GDState",
    "GramMethod",
    "KFACState",
    "LayerFactors",
    "LevenbergMarquardt",
    "Loss",
    "MinNormSolution",
    "Model",
    "NGDPreconditionerState",
    "NGDState",
    "OptaxState",
    "Optimizer",
    "StructureReport",
    "__version__",
    "apply_forster",
    "data",
    "describe_structure",
    "diagnostics",
    "forster",
    "gd",
    "gram",
    "gram_vp",
    "isotropy_error",
    "jacobian",
    "jvp",
    "kernels",
    "kfac",
    "kfac_preconditioner",
    "lambda_0",
    "lambda_min",
    "levenberg_marquardt",
    "linearize",
    "linearized",
    "losses",
    "min_norm_solution",
    "mlp",
    "models",
    "ngd",
    "ngd_preconditioner",
    "normalize_rows",
    "optax_optimizer",
    "optim",
    "parallel",
    "per_example_jacobian",
    "precision",
    "relu_gram_inf",
    "relu_ntk_inf",
    "two_layer_ntk_inf",
    "two_layer_relu",
    "vjp",
]

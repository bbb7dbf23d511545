"""ngdjax's implementation modules (private: import the public names from
``ngdjax`` and its public submodules, which re-export them).

Layers, lowest first (each imports only from the ones above it; tested by
``tests/package_test.py``):

    typing, checks, linalg, parallel         type aliases, validation, dense
                                             algebra, meshes
    kernels, losses, models, structure       infinite-width kernels, losses,
                                             nets, dense layers found in any
                                             apply function
    jacobian                                 Jacobians, products, Gram (local,
                                             blocked and sharded)
    forster, linearized, diagnostics, data   the paper's tools built on them
    optim/                                   solvers, kernel_solve, damping,
                                             base, core (the shared curvature
                                             step), gd, ngd, kfac
"""

"""ngdjax's implementation modules (private: import the public names from
``ngdjax`` and its public submodules, which re-export them).

Layers, lowest first (each imports only from the ones above it):

    checks, linalg, parallel (meshes)       validation, dense algebra, meshes
    kernels, losses, models                 infinite-width kernels, losses, nets
    jacobian                                Jacobians, products, Gram (local
                                            and sharded)
    forster, linearized, diagnostics        the paper's tools built on them
    data                                    data sets
    optim/                                  optimizers
"""

"""Optimizer implementations; the public names are in ``ngdjax.optim``."""

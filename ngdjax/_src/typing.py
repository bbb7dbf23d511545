"""Type aliases shared by every implementation module (one definition each).

* ``Array``: a ``jax.Array`` (what the library returns).
* ``ArrayLike``: anything the public functions accept as an array
  (``jax.typing.ArrayLike``: arrays, numpy arrays, Python scalars; lists are
  converted by ``checks``).
* ``Params``: a parameter pytree (flax variables, equinox arrays, dicts).
* ``ApplyFn``: ``apply(params, x (n, ...)) -> (n,) or (n, c)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Params = Any
ApplyFn = Callable[[Params, Array], Array]

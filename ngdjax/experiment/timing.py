"""Wall-clock timing on a shared machine: calls interleaved, every result
waited for.

Benchmarks and the experiments that report seconds time several methods
the same way: each round calls every method once, in turn, so load from
other processes affects them alike; each call's result is waited for with
``jax.block_until_ready`` (JAX dispatches asynchronously). Report the
median (typical) and the minimum (least disturbed) beside the load average.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def interleaved(calls: Mapping[str, Callable[[], Any]],
                repeats: int) -> dict[str, list[float]]:
  """Seconds of ``repeats`` calls of each zero-argument function.

  Args:
    calls: ``{name: fn}``; compile (call once) beforehand so that the
      first round is not a compilation.
    repeats: rounds; each calls every function once, in order.

  Returns:
    ``{name: [seconds of each call]}``.
  """
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(repeats):
    for name, fn in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times

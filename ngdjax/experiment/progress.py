"""Progress logging with an ETA, through absl logging.

The ETA extrapolates from the units finished *in this process*: units skipped
on resume took no time now and would make the estimate optimistic.

Example:

  >>> progress = Progress(total=4, name="demo", interval_s=0.0)
  >>> progress.skip()
  >>> progress.update(width=64)
  >>> progress.done, progress.total
  (2, 4)
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging


def format_seconds(seconds: float) -> str:
  """``"42s"``, ``"3m05s"`` or ``"1h02m"``."""
  seconds = max(0.0, float(seconds))
  if seconds < 60:
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
  if seconds < 3600:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
  return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
  """Counts finished units and logs ``done/total``, elapsed time and ETA.

  Units may carry an amount of work (e.g. ``n^3`` for an eigendecomposition
  of an ``n x n`` Gram): the ETA then extrapolates seconds per unit of work,
  not per unit, which matters when the last units are the largest.

  Args:
    total: number of units in the run.
    name: prefix of every log line (the experiment's name).
    interval_s: minimum seconds between two log lines (the first and the
      last unit are always logged).
    work: total work of all units; default ``total`` (one per unit).
  """

  def __init__(self, total: int, name: str = "run",
               interval_s: float = 5.0, work: float | None = None):
    self.total = int(total)
    self.name = name
    self.interval_s = float(interval_s)
    self.work = float(total if work is None else work)
    self.done = 0
    self.skipped = 0
    self.work_done = 0.0
    self.work_skipped = 0.0
    self.start = time.monotonic()
    self._last_log = -float("inf")

  def skip(self, n: int = 1, work: float | None = None) -> None:
    """Counts ``n`` units finished by an earlier run (resume)."""
    w = float(n if work is None else work)
    self.done += n
    self.skipped += n
    self.work_done += w
    self.work_skipped += w

  def eta_s(self) -> float | None:
    """Seconds left, from this process's rate; ``None`` before any unit."""
    fresh = self.work_done - self.work_skipped
    if self.done - self.skipped <= 0 or fresh <= 0:
      return None
    rate = (time.monotonic() - self.start) / fresh
    return rate * max(self.work - self.work_done, 0.0)

  def update(self, n: int = 1, work: float | None = None,
             **info: Any) -> None:
    """Counts ``n`` units finished now and logs (rate-limited)."""
    self.done += n
    self.work_done += float(n if work is None else work)
    now = time.monotonic()
    last = self.done >= self.total
    if not last and now - self._last_log < self.interval_s:
      return
    self._last_log = now
    eta = self.eta_s()
    details = " ".join(f"{k}={v}" for k, v in info.items())
    logging.info(
        "%s [%d/%d] %3.0f%% elapsed %s ETA %s%s%s",
        self.name, self.done, self.total,
        100.0 * self.work_done / max(self.work, 1e-300),
        format_seconds(now - self.start),
        "?" if eta is None else format_seconds(eta),
        f" (resumed {self.skipped})" if self.skipped else "",
        f" {details}" if details else "",
    )

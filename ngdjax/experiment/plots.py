"""PNG figures from a run's files (``metrics.jsonl``, ``summary.json``).

Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas,
never through ``pyplot``: no global backend is switched and no window opens,
so plotting works on headless machines and leaves a user's session alone.

Example:

  >>> import tempfile, os
  >>> path = os.path.join(tempfile.mkdtemp(), "demo.png")
  >>> _ = line_plot(path, [Series([1, 10, 100], [1.0, 0.3, 0.1], "error")],
  ...               xlabel="width m", ylabel="relative error",
  ...               logx=True, logy=True)
  >>> os.path.exists(path)
  True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class Series:
  """One curve.

  Attributes:
    x, y: coordinates (same length).
    label: legend entry (``None`` keeps it out of the legend).
    style: ``"line"`` (line and markers), ``"scatter"`` (markers only) or
      ``"dashed"`` (a reference line, no markers).
    yerr: optional error bars, same length as ``y``.
    color: a matplotlib colour; ``None`` takes the next in the cycle. Give
      a fit, its data and its mean one colour so they read as a group.
  """

  x: Sequence[float]
  y: Sequence[float]
  label: str | None = None
  style: str = "line"
  yerr: Sequence[float] | None = None
  color: str | None = None


def as_float(value: Any) -> float:
  """A metrics value as float (``"NaN"``/``"Infinity"`` strings included)."""
  return float("nan") if value is None else float(value)


def series_from_records(
    records: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    group: str | None = None,
    where: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
  """Columns ``x`` and ``y`` of metrics records, split by ``group``.

  Records lacking ``x`` or ``y`` (or rejected by ``where``) are skipped, and
  each group is sorted by ``x``.

  Returns:
    ``{group value: (xs, ys)}``; the single key is ``None`` without a group.
  """
  out: dict[Any, list[tuple[float, float]]] = {}
  for r in records:
    if x not in r or y not in r or (where is not None and not where(r)):
      continue
    g = r.get(group) if group is not None else None
    out.setdefault(g, []).append((as_float(r[x]), as_float(r[y])))
  result = {}
  for g, pairs in out.items():
    pairs.sort()
    xs, ys = zip(*pairs, strict=True)
    result[g] = (np.asarray(xs), np.asarray(ys))
  return result


def mean_by_x(xs: Sequence[float], ys: Sequence[float]):
  """Mean, standard deviation and count of ``ys`` at each distinct ``x``."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  ux = np.unique(xs)
  means = np.array([ys[xs == u].mean() for u in ux])
  stds = np.array([ys[xs == u].std() for u in ux])
  counts = np.array([(xs == u).sum() for u in ux])
  return ux, means, stds, counts


def line_plot(
    path: str | os.PathLike,
    series: Sequence[Series],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    hlines: Sequence[tuple[float, str]] = (),
    vlines: Sequence[tuple[float, str]] = (),
    xticks: Sequence[float] | None = None,
    figsize: tuple[float, float] = (6.0, 4.2),
) -> Path:
  """Draws ``series`` into a PNG at ``path``, with labelled axes and legend.

  Args:
    path: output file (``.png``).
    series: the curves.
    xlabel, ylabel: axis labels (required: an unlabelled axis is a bug).
    title: figure title.
    logx, logy: logarithmic axes (use them for rates, widths and sizes).
    hlines, vlines: reference lines ``(position, legend label)``.
    xticks: label exactly these x values, in plain numbers (the swept
      widths or sample sizes read better than ``3 x 10^1``).
    figsize: inches.

  Returns:
    The path written.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  # Fixed margins: a layout engine would cost a third of the drawing time,
  # and the legend lives inside the axes anyway.
  fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
  ax = fig.add_subplot()
  for s in series:
    x = np.asarray(s.x, float)
    y = np.asarray(s.y, float)
    kw = {"label": s.label, "color": s.color}
    if s.style == "scatter":
      ax.scatter(x, y, s=12, alpha=0.45, **kw)
    elif s.style == "dashed":
      ax.plot(x, y, "--", lw=1.5, **kw)
    elif s.yerr is not None:
      ax.errorbar(x, y, yerr=np.asarray(s.yerr, float), marker="o", ms=4,
                  capsize=3, **kw)
    else:
      ax.plot(x, y, marker="o", ms=4, **kw)
  for pos, label in hlines:
    ax.axhline(pos, color="gray", ls=":", lw=1.5, label=label)
  for pos, label in vlines:
    ax.axvline(pos, color="black", ls="-.", lw=1.0, label=label)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  if xticks is not None:
    from matplotlib.ticker import NullFormatter

    ticks = sorted(set(float(t) for t in xticks))
    if len(ticks) > 10:  # keep labels from colliding
      ticks = ticks[:: -(-len(ticks) // 10)]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(True, which="both" if (logx or logy) else "major", alpha=0.3)
  if any(s.label for s in series) or hlines or vlines:
    ax.legend(fontsize=8)
  path = Path(path)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  return path


# --------------------------------------------------------------------------
# C5-C8: the scatter of every run and the line of their mean.
# --------------------------------------------------------------------------


def runs_and_mean(records, x: str, y: str, runs_label: str | None = None,
                  mean_label: str | None = "mean over reps",
                  color: str = "C0") -> tuple[list[Series], np.ndarray]:
  """Column ``y`` against ``x`` of ``records``: every point as a scatter and
  the mean at each distinct ``x`` as a line, one colour.

  Returns:
    ``([scatter, mean line], distinct xs)``.
  """
  (xs, ys), = series_from_records(records, x, y).values()
  ux, mean, _, _ = mean_by_x(xs, ys)
  return [Series(xs, ys, runs_label, "scatter", color=color),
          Series(ux, mean, mean_label, color=color)], ux


# --------------------------------------------------------------------------
# C10, C11: figures ``line_plot`` does not draw (paths in a plane, panels).
# --------------------------------------------------------------------------


def figure(figsize: tuple[float, float], **margins: float):
  """A ``matplotlib.figure.Figure`` on the Agg canvas (never ``pyplot``),
  with ``subplots_adjust(**margins)``."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  fig.subplots_adjust(**margins)
  return fig

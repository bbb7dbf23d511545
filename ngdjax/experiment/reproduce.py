"""Runs every registered experiment and writes ``report.md``.

One row per claim of the paper (``CLAIMS``, C1..C12): what is measured, the
bound or expectation, PASS / FAIL (or ERROR, or NOT RUN for claims whose
experiment is not implemented yet), and links to the figures. Each
experiment runs in its own sub-workdir ``<workdir>/<claim>_<name>_<preset>``;
a rerun skips every experiment whose ``summary.json`` is there for the same
config (and an interrupted experiment resumes from its finished units).

Adding an experiment for a claim:

1. ``ngdjax/experiment/<name>.py`` with ``CLAIM``, ``default_config()`` and
   ``run(config, workdir) -> summary`` (``Run.finish`` writes the summary).
2. ``configs/<name>.py`` with ``get_config(arg)`` and a ``small`` preset.
3. ``experiments/<name>.py``, the absl entry point (copy one).
4. Set ``experiment="<name>"`` in the claim's entry of ``CLAIMS``.
5. A smoke test calling ``run`` with a tiny config.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from absl import logging

from ngdjax.experiment import config as config_lib
from ngdjax.experiment import metrics
from ngdjax.experiment.progress import Progress, format_seconds

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"
NOT_IMPLEMENTED = "NOT RUN (not implemented)"


@dataclasses.dataclass(frozen=True)
class Claim:
  """One row of the report.

  Attributes:
    id: ``"C1"`` .. ``"C12"``.
    title: the claim in words, with its theorem or lemma.
    measures: what the experiment measures (shown until it has run).
    expectation: the bound or expectation (shown until it has run; the
      experiment's summary states its own, with numbers).
    experiment: module name in ``ngdjax.experiment`` and ``configs/``, or
      ``None`` while not implemented.
  """

  id: str
  title: str
  measures: str
  expectation: str
  experiment: str | None = None


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "NGD rate (Theorem 1)",
          "per-step ratio ||r(k+1)||^2 / ||r(k)||^2, several widths and eta",
          "<= 1 - eta", experiment="ngd_rate"),
    Claim("C2", "General loss (Theorem 2)",
          "measured contraction with a strongly convex, smooth loss",
          "<= 1 - 2 eta mu L / (mu + L)", experiment="general_loss"),
    Claim("C3", "Conditions along training (Theorem 1's proof)",
          "lambda_min(G(k)), ||w(k) - w(0)||, activation-pattern flips",
          "lambda_min(G(k)) >= (4/9) lambda_min(G(0)); ||w(k) - w(0)|| <= "
          "3 ||y - u(0)|| / sqrt(lambda_0)", experiment="training_conditions"),
    Claim("C4", "Jacobian stability (Lemma 7)",
          "||J(k) - J(0)||_2 vs width, fitted exponent",
          "below the Lemma 7 bound, decaying with width",
          experiment="jacobian_stability"),
    Claim("C5", "G(0) -> G_inf with width (Lemma 6)",
          "relative error of G(0) vs width (fitted exponent); "
          "lambda_min(G(0)) / lambda_0",
          "exponent about -1/2; lambda_min(G(0)) >= (3/4) lambda_0 past a "
          "width", experiment="gram_limit"),
    Claim("C6", "K-FAC and the Forster transform (Theorem 4)",
          "K-FAC rate vs cond(X^T X); K-FAC after Forster vs NGD",
          "rate depends on cond(X^T X); after Forster equal to NGD "
          "(eta = 1/d)", experiment="kfac_forster"),
    Claim("C7", "Forster transform (Algorithm 1)",
          "error vs iteration, Algorithm 1 and the faster method",
          "converges; the faster method needs fewer iterations",
          experiment="forster_convergence"),
    Claim("C8", "lambda_0 vs n on the sphere (Theorem 5)",
          "lambda_0 = lambda_min(G_inf) vs n, fitted power",
          "bounded below by a power of n", experiment="lambda0_vs_n"),
    Claim("C9", "Generalization measure (Theorem 6)",
          "sqrt(2 y^T G_inf^{-1} y / n), true vs random labels and label "
          "noise on digits 4/9, beside the test error",
          "larger for random labels, growing with label noise",
          experiment="generalization"),
    Claim("C10", "Linearised GD vs NGD (Section 6 of MATH.md)",
          "end points and paths of linearised GD and NGD; NGD at eta = 1",
          "same minimum-norm limit, different paths; NGD in one step",
          experiment="linearized_paths"),
    Claim("C11", "The appendix's Figure 1",
          "output-space paths of GD and NGD on digits 4 vs 9, two outputs",
          "NGD moves on a straight line, GD does not",
          experiment="figure1"),
    Claim("C12", "Training curves",
          "loss vs step and wall-clock: NGD, K-FAC (with and without "
          "Forster), GD, Adam on digits across widths",
          "NGD and K-FAC after Forster converge in the fewest steps",
          experiment="training_curves"),
    # A demonstration beyond the paper's claims (not a claim of the paper).
    Claim("D1", "Classifier on real data (demonstration, not a paper claim)",
          "test accuracy vs steps and seconds: NGD (Fisher), K-FAC, Adam, "
          "SGD with mini-batches on the 10 digits",
          "NGD and K-FAC reach 97% test accuracy", experiment="train"),
)


def default_configs_dir() -> Path:
  """``configs/`` of the checkout this package was imported from."""
  return Path(__file__).resolve().parents[2] / "configs"


def _select(only: str | Sequence[str] | None) -> list[Claim]:
  if not only:
    return list(CLAIMS)
  ids = [s.strip() for s in (only.split(",") if isinstance(only, str)
                             else only) if s.strip()]
  known = {c.id for c in CLAIMS}
  unknown = [i for i in ids if i not in known]
  if unknown:
    raise ValueError(f"only names unknown claims {unknown}; known: "
                     f"{[c.id for c in CLAIMS]}")
  return [c for c in CLAIMS if c.id in ids]


def _finished(subdir: Path, config) -> dict[str, Any] | None:
  """The summary of a finished run of ``config`` in ``subdir``, if any."""
  summary = metrics.read_summary(subdir)
  config_path = subdir / metrics.CONFIG_FILE
  if summary is None or not config_path.exists():
    return None
  if metrics.read_json(config_path) != metrics.to_jsonable(config):
    return None
  return summary


def run(workdir: str | os.PathLike, full: bool = False,
        only: str | Sequence[str] | None = None,
        configs_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Runs the registered experiments and writes ``report.md``.

  Args:
    workdir: directory for the report and one sub-workdir per experiment.
    full: use each config's full preset instead of ``small``.
    only: claim ids to run (``"C5,C8"`` or a sequence); default all.
    configs_dir: the ``configs/`` directory; default the checkout's.

  Returns:
    ``{"rows": [...], "counts": {...}, "report": path}``; each row has
    ``claim``, ``title``, ``status`` (PASS, FAIL, ERROR or NOT RUN),
    ``measured``, ``expectation``, ``figures`` and ``workdir``.
  """
  workdir = config_lib.check_workdir(workdir)
  claims = _select(only)
  configs_dir = Path(configs_dir) if configs_dir else default_configs_dir()
  preset = "full" if full else "small"
  runnable = [c for c in claims if c.experiment]
  if runnable and not configs_dir.is_dir():
    raise ValueError(f"configs_dir {str(configs_dir)!r} is not a directory; "
                     "pass the repository's configs/")
  # Load every config before running anything: a broken one fails now.
  configs = {
      c.id: config_lib.load_config_file(
          f"{configs_dir / (c.experiment + '.py')}"
          f"{'' if full else ':small'}")
      for c in runnable
  }
  start = time.monotonic()
  progress = Progress(len(runnable), "reproduce", interval_s=0.0)
  rows = []
  for claim in claims:
    if not claim.experiment:
      rows.append(_row(claim, "NOT RUN", NOT_IMPLEMENTED))
      continue
    subdir = workdir / f"{claim.id}_{claim.experiment}_{preset}"
    config = configs[claim.id]
    summary = _finished(subdir, config)
    if summary is not None:
      logging.info("%s: finished earlier in %s, skipped", claim.id, subdir)
      progress.skip()
      rows.append(_row(claim, "PASS" if summary["passed"] else "FAIL",
                       summary=summary, subdir=subdir, workdir=workdir,
                       skipped=True))
      continue
    logging.info("%s: running %s (%s preset) in %s", claim.id,
                 claim.experiment, preset, subdir)
    t0 = time.monotonic()
    try:
      module = importlib.import_module(
          f"ngdjax.experiment.{claim.experiment}")
      summary = module.run(config, subdir)
    except Exception as e:  # noqa: BLE001 - reported in the row, not lost
      logging.error("%s failed:\n%s", claim.id, traceback.format_exc())
      rows.append(_row(claim, "ERROR", f"{type(e).__name__}: {e}",
                       subdir=subdir, workdir=workdir,
                       elapsed=time.monotonic() - t0))
      progress.update(claim=claim.id)
      continue
    rows.append(_row(claim, "PASS" if summary["passed"] else "FAIL",
                     summary=summary, subdir=subdir, workdir=workdir,
                     elapsed=time.monotonic() - t0))
    progress.update(claim=claim.id, status=rows[-1]["status"])
  counts = {s: sum(r["status"] == s for r in rows)
            for s in ("PASS", "FAIL", "ERROR", "NOT RUN")}
  result = {"preset": preset, "rows": rows, "counts": counts,
            "elapsed_s": time.monotonic() - start}
  report = workdir / REPORT_FILE
  _write_report(report, result)
  metrics.write_json_atomic(workdir / REPORT_JSON, result)
  result["report"] = str(report)
  return result


def _row(claim: Claim, status: str, note: str = "", *,
         summary: dict[str, Any] | None = None, subdir: Path | None = None,
         workdir: Path | None = None, elapsed: float | None = None,
         skipped: bool = False) -> dict[str, Any]:
  rel = None if subdir is None else os.path.relpath(subdir, workdir)
  figures = []
  if summary is not None:
    figures = [f"{rel}/{f}" for f in summary.get("figures", [])]
  return {
      "claim": claim.id,
      "title": claim.title,
      "status": status,
      "measured": (summary or {}).get("measured_text") or claim.measures,
      "expectation": (summary or {}).get("expectation") or claim.expectation,
      "checks": (summary or {}).get("checks", {}),
      "check_kinds": ((summary or {}).get("details") or {}).get(
          "check_kinds", {}),
      "note": note,
      "figures": figures,
      "workdir": rel,
      "elapsed_s": elapsed if elapsed is not None
                   else (summary or {}).get("elapsed_s"),
      "skipped": skipped,
  }


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _write_report(path: Path, result: dict[str, Any]) -> None:
  counts = result["counts"]
  lines = [
      "# ngdjax: reproduction report",
      "",
      f"Preset: **{result['preset']}**; "
      f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['ERROR']} "
      f"ERROR, {counts['NOT RUN']} NOT RUN; "
      f"{format_seconds(result['elapsed_s'])} in this invocation "
      f"(jax {jax.__version__}, "
      f"{'float64' if jax.config.jax_enable_x64 else 'float32'}, "
      f"{jax.default_backend()}, "
      f"{datetime.datetime.now().isoformat(timespec='seconds')}).",
      "",
      "A check is PASS only when the measured figures meet the criterion "
      "stated in the expectation column; a FAIL keeps its numbers. Each "
      "check is marked [theorem] when it tests a theorem inside its "
      "measured hypotheses, [observation] when it tests the paper's "
      "prediction outside them (or an empirical claim).",
      "",
      "| Claim | Measured | Bound / expectation | Result | Figures |",
      "|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    status = r["status"]
    if r["note"]:
      status = r["note"] if status == "NOT RUN" else f"{status}: {r['note']}"
    figs = ", ".join(f"[{Path(f).stem}]({f})" for f in r["figures"])
    lines.append(
        f"| **{r['claim']}** {_cell(r['title'])} | {_cell(r['measured'])} | "
        f"{_cell(r['expectation'])} | **{_cell(status)}** | {figs} |"
    )
  lines += ["", "## Details", ""]
  for r in result["rows"]:
    if r["workdir"] is None:
      continue
    kinds = r.get("check_kinds") or {}
    checks = ", ".join(
        f"{k}{' [' + kinds[k] + ']' if k in kinds else ''}: "
        f"{'ok' if v else 'FAILED'}" for k, v in r["checks"].items())
    took = ("" if r["elapsed_s"] is None
            else f", {format_seconds(r['elapsed_s'])}")
    again = " (finished earlier, reused)" if r["skipped"] else ""
    lines.append(f"- {r['claim']}: `{r['workdir']}/`{took}{again}"
                 f"{'; ' + checks if checks else ''}")
    lines += [f"  ![{r['claim']} {Path(f).stem}]({f})" for f in r["figures"]]
  text = "\n".join(lines) + "\n"
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)

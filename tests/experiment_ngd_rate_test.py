"""Smoke test of C1 (``experiments.ngd_rate``) and its helpers."""

import json
import math
from pathlib import Path

import pytest

from experiments import analysis, ngd_rate
from ngdjax.experiment import config as config_lib

SPEC = ngd_rate.SPEC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = ngd_rate.SPEC.default_config()
  c.n, c.d, c.widths, c.reps, c.num_steps = 6, 3, (4, 16, 64), 1, 3
  return c


def test_ngd_rate_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n"] == 6
  assert saved["claim"] == "C1" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"rate_wide", "theorem", "eta1_vanishes"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == SPEC.verdict(saved["measured"], config)
  assert summary["figures"] == ["ratio_vs_width.png", "eta1_first_step.png",
                                "residuals.png", "condition2.png"]
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  steps = [rec for rec in records if "ratio" in rec]
  assert steps and all(rec["jacobian_change"] >= 0 for rec in steps)
  runs = saved["details"]["runs"]
  assert len(runs) == 3 * 4  # widths x etas
  for u in runs:  # the summary's verdict follows from its own numbers
    assert u["holds"] == (u["max_ratio"] <= (1 - u["eta"]) * (1 + 1e-9))
  m = saved["measured"]
  assert m["runs_total"] == len(runs)
  assert m["runs_inside_hypotheses"] == sum(u["in_theorem"] for u in runs)
  assert isinstance(m["runs_inside_hypotheses"], int)
  # Tiny nets are far outside Theorem 1: no run qualifies, so the theorem
  # check FAILs rather than passing vacuously.
  assert m["runs_inside_hypotheses"] == 0
  assert saved["checks"]["theorem"] is False
  assert saved["details"]["check_kinds"]["theorem"] == "theorem"
  again = SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 12
  assert again["measured"] == saved["measured"]


def test_bad_learning_rate_fails_at_start(tmp_path):
  config = _tiny()
  config.learning_rates = (0.5, 1.5)
  with pytest.raises(ValueError, match="learning_rates"):
    SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = Path(__file__).resolve().parents[1] / "configs" / "ngd_rate.py"
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, ngd_rate.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")


def test_theory_constants():
  assert analysis.theorem1_eta_max(0.0) == 1.0
  assert analysis.theorem1_eta_max(0.5) == 0.0
  assert analysis.theorem1_eta_max(0.1) == pytest.approx(0.8 / 1.21)
  # Theorem 2 reduces to 2 / (mu + L) at C = 0 and to Theorem 1's limit
  # for the squared loss (mu = L = 1).
  assert analysis.theorem2_eta_max(0.0, 1.0, 2.0) == pytest.approx(2 / 3)
  assert analysis.theorem2_eta_max(0.1, 1.0, 1.0) == pytest.approx(
      0.8 / 1.21)
  assert analysis.theorem2_eta_max(0.5, 1.0, 1.0) == 0.0
  assert analysis.condition2_constant(1.0, 4.0) == 1.5
  assert math.isinf(analysis.condition2_constant(1.0, 0.0))
  # Lemma 7 squared is n times the Lemma 8 flip bound (before the cap).
  b7 = analysis.lemma7_bound(8, 2.0, 1.0, 0.1, 1e6)
  b8 = analysis.lemma8_flip_bound(2.0, 1.0, 0.1, 1e6)
  assert b7**2 == pytest.approx(8 * b8)
  # Vacuous (>= 1) up to m = 8 (R / (nu delta))^2.
  assert analysis.lemma8_flip_bound(2.0, 1.0, 0.1, 3200.0) == pytest.approx(1)

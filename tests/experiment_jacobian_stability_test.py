"""Smoke test of C4 (``experiments.jacobian_stability``)."""

import json
from pathlib import Path

import pytest

from experiments import analysis, jacobian_stability
from ngdjax.experiment import config as config_lib

SPEC = jacobian_stability.SPEC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = jacobian_stability.SPEC.default_config()
  c.n, c.d, c.widths, c.reps, c.num_steps = 6, 3, (4, 16, 64), 1, 3
  return c


def test_jacobian_stability_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n"] == 6
  assert saved["claim"] == "C4" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"decays", "below_lemma7"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == SPEC.verdict(saved["measured"])
  assert summary["figures"] == ["jacobian_change.png", "jacobian_path.png"]
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  steps = [rec for rec in records if "jacobian_change" in rec]
  assert all(rec["jacobian_change"] >= 0 for rec in steps)
  for u in saved["details"]["runs"]:
    assert u["lemma7_bound"] == pytest.approx(analysis.lemma7_bound(
        6, u["distance_max"], 1.0, 0.1, u["width"]))
  again = SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 3
  assert again["measured"] == saved["measured"]


def test_bad_delta_fails_at_start(tmp_path):
  config = _tiny()
  config.delta = 1.5
  with pytest.raises(ValueError, match="delta"):
    SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = (Path(__file__).resolve().parents[1] / "configs"
          / "jacobian_stability.py")
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, jacobian_stability.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")

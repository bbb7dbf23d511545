"""Smoke test of C3 (``experiments.training_conditions``)."""

import json
from pathlib import Path

import pytest

from experiments import training_conditions
from ngdjax.experiment import config as config_lib

SPEC = training_conditions.SPEC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = training_conditions.SPEC.default_config()
  c.n, c.d, c.widths, c.reps, c.num_steps = 6, 3, (4, 16, 64), 1, 4
  return c


def test_training_conditions_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n"] == 6
  assert saved["claim"] == "C3" and isinstance(saved["passed"], bool)
  # The Lemma 7-8 flip bound is >= 1 at these widths: a detail, not a
  # check (a fraction cannot break it).
  assert set(saved["checks"]) == {"gram", "distance", "flips_shrink"}
  m = saved["measured"]
  assert m["flip_bound_nonvacuous_runs"] == sum(
      u["flip_bound"] < 1 for u in saved["details"]["runs"])
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == SPEC.verdict(saved["measured"])
  assert summary["figures"] == ["lambda_min.png", "lambda_path.png",
                                "distance.png", "flips.png"]
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  steps = [rec for rec in records if "lambda_min_G" in rec]
  assert {rec["width"] for rec in steps} == {4, 16, 64}
  assert all(rec["step"] > 0 or rec["distance"] == 0 for rec in steps)
  for u in saved["details"]["runs"]:
    assert u["distance_max"] >= 0 and 0 <= u["flips_max"] <= 1
  again = SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 3
  assert again["measured"] == saved["measured"]


def test_bad_learning_rate_fails_at_start(tmp_path):
  config = _tiny()
  config.learning_rate = 1.5
  with pytest.raises(ValueError, match="learning_rate"):
    SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = (Path(__file__).resolve().parents[1] / "configs"
          / "training_conditions.py")
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, training_conditions.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")

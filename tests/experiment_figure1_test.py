"""Smoke test of C11 (``experiments.figure1``)."""

import json
from pathlib import Path

import pytest

from experiments import figure1
from ngdjax.experiment import config as config_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = figure1.SPEC.default_config()
  c.n_train, c.width, c.examples, c.num_times = 8, 32, 2, 10
  return c


def test_figure1_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = figure1.SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n_train"] == 8
  assert saved["claim"] == "C11" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"gd_curves"}
  # The identities are sanity details, all true.
  assert saved["details"]["sanity"] == {"ngd_straight": True,
                                        "both_reach_y": True,
                                        "closed_form": True}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == figure1.SPEC.verdict(saved["measured"], config)
  assert summary["figures"] == ["figure1.png", "whole_vector.png"]
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  paths = [rec for rec in records if "shown_u" in rec]
  assert len(paths) == 2 * (config.num_times + 1)
  assert all(len(rec["shown_u"]) == 2 for rec in paths)
  # One example of each digit is drawn.
  assert sorted(saved["details"]["shown_labels"]) == [4, 9]
  m = saved["measured"]
  assert m["ngd_deviation_max"] < m["gd_deviation_vector"]
  again = figure1.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 1
  assert again["measured"] == saved["measured"]


def test_three_classes_fail_at_start(tmp_path):
  config = _tiny()
  config.classes = (4, 9, 1)
  with pytest.raises(ValueError, match="config.classes"):
    figure1.SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = Path(__file__).resolve().parents[1] / "configs" / "figure1.py"
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, figure1.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")

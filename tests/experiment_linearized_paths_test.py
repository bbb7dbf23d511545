"""Smoke test of C10 (``experiments.linearized_paths``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import analysis, linearized_paths
from ngdjax.experiment import config as config_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["residual_norm.png", "weight_distance.png", "weight_paths.png"]


def _tiny():
  c = linearized_paths.SPEC.default_config()
  c.n, c.d, c.width, c.num_times = 6, 3, 64, 12
  c.explicit_steps, c.real_steps = 5, 2
  return c


def _files(workdir):
  summary = json.loads((workdir / "summary.json").read_text())
  records = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((workdir / "config.json").read_text())["n"] == 6
  for f in summary["figures"]:
    assert (workdir / f).read_bytes()[:8] == PNG_MAGIC
  return summary, records


def test_linearized_paths_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = linearized_paths.SPEC.run(config, tmp_path)
  saved, records = _files(tmp_path)
  assert saved["claim"] == "C10" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"same_limit", "paths_differ",
                                  "ngd_one_step"}
  assert set(saved["details"]["sanity"]) == {"ngd_straight", "closed_forms"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == linearized_paths.SPEC.verdict(saved["measured"],
                                                          config)
  assert summary["figures"] == FIGURES
  kinds = {rec.get("kind") for rec in records}
  assert set(linearized_paths.KINDS) | {"real_network"} <= kinds
  m = saved["measured"]
  assert m["ngd_output_deviation"] < m["gd_output_deviation"]
  assert m["real/skipped"] is False
  again = linearized_paths.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 2
  assert again["measured"] == saved["measured"]


def test_linearized_paths_without_optimizers(tmp_path, monkeypatch):
  monkeypatch.setattr(linearized_paths, "_try_ngd", lambda: None)
  linearized_paths.SPEC.run(_tiny(), tmp_path)
  saved, _ = _files(tmp_path)
  assert saved["measured"]["real/skipped"] is True
  assert saved["measured"]["ngd_one_step_how"].startswith("explicit")
  assert "skipped" in saved["measured_text"]


def test_segment_deviation():
  points = np.array([[0.0, 0.0], [0.5, 1.0], [2.0, 0.0], [-1.0, 0.0]])
  dist = analysis.segment_deviation(points, [0.0, 0.0], [1.0, 0.0])
  np.testing.assert_allclose(dist, [0.0, 1.0, 1.0, 1.0])


def test_bad_learning_rate_fails_at_start(tmp_path):
  config = _tiny()
  config.gd_lr = 2.5
  with pytest.raises(ValueError, match="gd_lr"):
    linearized_paths.SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = Path(__file__).resolve().parents[1] / "configs" / "linearized_paths.py"
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, linearized_paths.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")

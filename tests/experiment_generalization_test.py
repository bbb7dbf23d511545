"""Smoke test of C9 (``experiments.generalization``)."""

import json
import math
from pathlib import Path

import pytest

from experiments import generalization
from ngdjax.experiment import config as config_lib

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["measure.png", "test_error.png", "training_residual.png",
           "bound_vs_n.png"]


def _tiny():
  c = generalization.SPEC.default_config()
  c.n_train, c.width, c.reps, c.train_steps = 40, 64, 2, 2
  c.label_noise = (0.0, 0.5, 1.0)
  c.bound_ns = (30, 60)
  return c


def test_generalization_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = generalization.SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n_train"] == 40
  assert saved["claim"] == "C9" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"separates", "grows_with_noise",
                                  "test_error_grows", "bound_holds",
                                  "lemma11", "lemma12"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == generalization.SPEC.verdict(saved["measured"],
                                                        config)
  assert summary["figures"] == FIGURES
  for f in FIGURES:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  runs = saved["details"]["runs"]
  # Centred: three noise levels + random labels; raw: true + random.
  assert len(runs) == config.reps * (4 + 2)
  assert sum("residual_rel" in rec for rec in records) == len(runs) * (
      config.train_steps + 1)
  # Centred inputs are unit rows of mean-free pixels: the Lemma 12 ratio
  # and the chain are measured for both preprocessings.
  assert {u["prep"] for u in runs} == {"centred", "raw"}
  assert all(u["lemma11_bound"] > 0 and u["kernel_distance_r0"] > 0
             for u in runs)
  assert "raw" in saved["measured"]["other_preprocessing"]
  m = saved["measured"]
  # Flipping every label is y -> -y: the measure is exactly invariant.
  assert m["flip_all_relative_gap"] < 1e-10
  # The training labels really were corrupted as asked.
  noisy = [u for u in runs if u["labels"] == "noise=0.5"
           and u["prep"] == "centred"]
  assert all(u["wrong_labels"] == 0.5 for u in noisy)
  again = generalization.SPEC.run(config, tmp_path)
  # Theorem 6 on the all-digits task at each n of bound_ns: the bound is
  # the measure plus 3 sqrt(log(6 / delta) / (2 n)).
  bound_runs = saved["details"]["bound_runs"]
  assert len(bound_runs) == config.reps * 2
  assert m["bound_ns"] == [30, 60] and m["bound_large_n"] == 60
  for u in bound_runs:
    second = 3 * (math.log(6 / config.delta) / (2 * u["n_train"])) ** 0.5
    assert u["bound"] == pytest.approx(u["measure"] + second)
    assert 0 < u["positive_fraction"] < 1  # both classes present
  assert m["bound_large_n_max"] == max(u["bound"] for u in bound_runs
                                       if u["n_train"] == 60)
  again = generalization.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == len(runs) + len(bound_runs)
  assert again["measured"] == saved["measured"]


def test_sweep_without_clean_labels_fails_at_start(tmp_path):
  config = _tiny()
  config.label_noise = (0.2, 0.5)
  with pytest.raises(ValueError, match="config.label_noise"):
    generalization.SPEC.run(config, tmp_path)


def test_presets_match_schema():
  path = REPO / "configs" / "generalization.py"
  for spec in (str(path), f"{path}:small"):
    config_lib.check_config(config_lib.load_config_file(spec),
                            generalization.SPEC.default_config())

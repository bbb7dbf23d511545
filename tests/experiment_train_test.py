"""Smoke test of the classifier demonstration (``ngdjax.experiment.train``)."""

import json
import struct
from pathlib import Path

import numpy as np

from ngdjax.experiment import config as config_lib
from ngdjax.experiment import train

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = train.default_config()
  c.widths, c.batch_size, c.eval_every = (8,), 16, 2
  c.adam_lrs, c.sgd_lrs = (1e-2,), (0.3,)
  c.curvature_steps, c.first_order_steps = 3, 4
  c.kfac_inverse_every = 2
  return c


def test_train_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = train.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert saved["passed"] == all(saved["checks"].values())
  for key in ("test_accuracy", "seconds_to_97", "steps_to_97"):
    assert set(saved["measured"][key]) == {"ngd", "kfac", "adam", "sgd"}
  for acc in saved["measured"]["test_accuracy"].values():
    assert 0.0 <= acc <= 1.0
  assert len(summary["figures"]) == 4
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  for u in saved["details"]["runs"]:
    steps = [rec for rec in records if rec.get("method") == u["method"]
             and rec.get("lr") == u["lr"] and "step" in rec]
    assert len(steps) == u["steps_run"] + 1
    assert np.all(np.diff([rec["seconds"] for rec in steps]) >= 0)
    assert sum("test_accuracy" in rec for rec in steps) >= 2
  again = train.run(config, tmp_path)
  assert again["resumed_units"] == len(saved["details"]["runs"])
  assert again["measured"]["test_accuracy"] == saved["measured"][
      "test_accuracy"]


def _write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", s) for s in array.shape)
  path.write_bytes(header + array.tobytes())


def test_train_reads_mnist_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  data_dir = tmp_path / "mnist"
  data_dir.mkdir()
  for prefix, n in (("train", 60), ("t10k", 30)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 255, (n, 4, 4))
    _write_idx(data_dir / f"{prefix}-images-idx3-ubyte", images)
    _write_idx(data_dir / f"{prefix}-labels-idx1-ubyte", labels)
  config = _tiny()
  config.data_dir = str(data_dir)
  summary = train.run(config, tmp_path / "run")
  assert "MNIST" in summary["measured_text"]
  assert "n=60" in summary["measured_text"]


def test_presets_match_schema():
  path = REPO / "configs" / "train.py"
  for spec in (str(path), f"{path}:small", f"{path}:digits",
               f"{path}:mnist"):
    config_lib.check_config(config_lib.load_config_file(spec),
                            train.default_config())

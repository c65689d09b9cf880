"""Metrics log and progress bar."""

import io
import json

import pytest

from experiments.training.metrics import MetricsLog, Progress


def test_resume_drops_records_after_the_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  log = MetricsLog(path, resume_step=None)
  for step in (2, 4, 6):
    log.write({"split": "train", "step": step, "loss": 1.0 / step})
  with path.open("a") as f:
    f.write('{"split": "train", "st')  # a line cut off by a kill
  resumed = MetricsLog(path, resume_step=4)
  assert [r["step"] for r in resumed.records] == [2, 4]
  resumed.write({"split": "test", "step": 5, "accuracy": 0.5})
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in lines] == [2, 4, 5]
  assert MetricsLog(path, resume_step=None).records == [] and path.read_text() == ""


def test_plain_progress_line_counts_and_shows_postfix():
  stream = io.StringIO()
  progress = Progress(3, initial=1, description="cp epoch 1/2", stream=stream, use_tqdm=False)
  progress.update(1, loss=0.25)
  progress.update(1)
  progress.close()
  assert stream.getvalue().rstrip("\n").split("\r")[-1] == "cp epoch 1/2 3/3  loss 0.25"
  silent = io.StringIO()
  quiet = Progress(3, enabled=False, stream=silent)  # with or without tqdm
  quiet.update(3)
  quiet.close()
  assert silent.getvalue() == ""


def test_tqdm_progress_when_installed():
  pytest.importorskip("tqdm")
  stream = io.StringIO()
  progress = Progress(4, initial=2, description="tt epoch 2/3", stream=stream)
  progress.update(1, loss=0.5)
  progress.update(1)
  progress.close()
  last = stream.getvalue().split("\r")[-1]
  assert last.startswith("tt epoch 2/3: 100%") and "4/4" in last and "loss 0.5" in last

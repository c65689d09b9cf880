"""A training run SIGKILLed mid-epoch and restarted with the same command ends exactly like an uninterrupted one."""

import json
import os
import signal
import time

import jax
import numpy as np
from experiment_subprocess import run, start

from experiments.training.checkpoint import read_checkpoint
from experiments.training.metrics import TIMING_FIELDS

# 192 synthetic images in batches of 32: 6 steps per epoch, 2 epochs; a checkpoint every 2 steps.
ARGS = [
  "--preset",
  "tiny",
  "--scheme",
  "cp",
  "--set",
  "data.synthetic_train=192",
  "--set",
  "train.epochs=2",
  "--set",
  "train.log_every_steps=1",
  "--set",
  "train.checkpoint_every_steps=2",
]
HANG_AT = 9  # epoch 2, batch 3: after the checkpoint of step 8 (epoch 2, batch 2), before the next
TIMEOUT = 240

# Runs experiments.training.train's command line; with EFFICONV_TEST_HANG_AT set it stops dead after that step,
# so the test can kill it at a known point (the kill itself is a real SIGKILL).
WRAPPER = """
import os, sys, time
from experiments.training import train
hang_at = int(os.environ.get("EFFICONV_TEST_HANG_AT", "0"))
def on_step(step):
  if step == hang_at:
    print("hanging at step", step, flush=True)
    time.sleep(600)
train.main(sys.argv[1:], on_step=on_step)
"""


def _wait_for(predicate, process, log, what: str) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not predicate():
    if process.poll() is not None:
      raise AssertionError(f"training exited with {process.returncode} before {what}:\n{log.read_text()}")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.2)


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
  wrapper = tmp_path / "train_wrapper.py"
  wrapper.write_text(WRAPPER)
  killed, reference = tmp_path / "killed", tmp_path / "reference"

  log = tmp_path / "killed.log"
  process = start([str(wrapper), *ARGS, "--workdir", str(killed)], log, EFFICONV_TEST_HANG_AT=str(HANG_AT))
  checkpoint = killed / "checkpoints" / "8"
  _wait_for(lambda: checkpoint.is_dir() and "hanging at step 9" in log.read_text(), process, log, "checkpoint 8")
  os.kill(process.pid, signal.SIGKILL)
  process.wait(timeout=30)
  assert process.returncode == -signal.SIGKILL
  assert max(r["step"] for r in _records(killed)) == HANG_AT  # steps after the checkpoint were logged...

  resumed = run([str(wrapper), *ARGS, "--workdir", str(killed)], timeout=TIMEOUT)
  assert "Resuming from checkpoint at step 8 (epoch 1, batch 2)" in resumed.stderr
  run([str(wrapper), *ARGS, "--workdir", str(reference)], timeout=TIMEOUT)

  # ...and are dropped and recomputed: the logs agree record for record (timings aside).
  assert _records(killed) == _records(reference)
  assert [r["step"] for r in _records(killed) if r["split"] == "train"] == list(range(1, 13))
  final_killed = read_checkpoint(killed / "checkpoints")
  final_reference = read_checkpoint(reference / "checkpoints")
  assert int(final_killed["step"]) == int(final_reference["step"]) == 12
  for part in ("params", "rest", "opt_state"):
    a, b = jax.tree.leaves(final_killed[part]), jax.tree.leaves(final_reference[part])
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

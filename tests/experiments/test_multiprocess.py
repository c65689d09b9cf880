"""Two JAX processes on localhost train data-parallel to what one process computes, autotune agreeing.

Cost: three fresh processes at once (the two of the distributed run, and the single-process reference), each
training a tiny VGG with one ``CPConv`` on ``implementation="autotune"`` for two steps on 8×8
images: about 7 s of CPU each, ~30 s of CPU in all. The processes are killed (SIGKILL: a process whose peer
died waits in JAX's shutdown), and the test fails with their logs, ``TIMEOUT_S`` after the start. Before
autotune shared process 0's choice, process 1 crashed here and process 0 hung.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import numpy as np
from experiment_subprocess import start

TIMEOUT_S = 300

# Runs the training command line, then writes this process's copy of the parameters and its autotune cache.
SCRIPT = """
import json, sys
import jax
import numpy as np
from efficonv.planning import tuning
from experiments.training import train

out = sys.argv[1]
result = train.main(sys.argv[2:])
np.savez(out + ".npz", *(np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(result.params)))
record = {
  "processes": jax.process_count(),
  "devices": result.parallel.num_devices,
  "losses": [r["loss"] for r in result.history if r["split"] == "train"],
  "autotune": tuning.cache(),
}
with open(out + ".json", "w") as f:
  json.dump(record, f)
"""

# compare_fashion_mnist's tiny preset cut down: one CPConv (stem 1→4 dense, stage 4→4 CP) on 8×8 images, a
# global batch of 8 (4 rows per process), two steps, SGD (whose updates follow the gradients' rounding
# smoothly, unlike Adam's first steps).
TRAIN = [
  "--config=compare_fashion_mnist",
  "--preset=tiny",
  "--scheme=cp",
  "--set=model.implementation=autotune",
  "--set=model.stem_features=4",
  "--set=model.stage_features=(4,)",
  "--set=model.stage_depth=1",
  "--set=data.synthetic_shape=(8,8,1)",
  "--set=data.synthetic_train=16",
  "--set=data.synthetic_test=8",
  "--set=train.batch_size=8",
  "--set=train.epochs=1",
  "--set=optim.name=sgd",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return int(s.getsockname()[1])


def test_two_processes_match_one_and_share_autotune_choices(tmp_path):
  script = tmp_path / "train_and_dump.py"
  script.write_text(SCRIPT)
  port = _free_port()
  runs = {
    f"process{i}": [
      f"--workdir={tmp_path / 'two'}",
      f"--coordinator-address=localhost:{port}",
      "--num-processes=2",
      f"--process-id={i}",
    ]
    for i in (0, 1)
  }
  runs["single"] = [f"--workdir={tmp_path / 'one'}"]
  procs = {
    name: start([str(script), str(tmp_path / name), *TRAIN, *argv], tmp_path / f"{name}.log")
    for name, argv in runs.items()
  }
  deadline = time.monotonic() + TIMEOUT_S
  try:
    codes = {name: p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for name, p in procs.items()}
  except subprocess.TimeoutExpired:  # e.g. one process crashed and the other waits in a collective
    codes = {name: p.poll() for name, p in procs.items()}
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = "\n".join(f"--- {name} (exit {codes[name]}):\n{(tmp_path / f'{name}.log').read_text()}" for name in procs)
  assert codes == dict.fromkeys(procs, 0), logs

  out = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in procs}
  params = {name: list(np.load(tmp_path / f"{name}.npz").values()) for name in procs}
  assert [(out[n]["processes"], out[n]["devices"]) for n in procs] == [(2, 2), (2, 2), (1, 1)]
  # One decision, process 0's: process 1 holds the very entries (times included) that process 0 measured.
  assert out["process0"]["autotune"], "no layer was autotuned"
  assert out["process1"]["autotune"] == out["process0"]["autotune"]
  # Both processes hold the same replicated parameters, bit for bit.
  for a, b in zip(params["process0"], params["process1"], strict=True):
    np.testing.assert_array_equal(a, b)
  # And what one process computes from the same global batches, up to summation order (and, were its own
  # measurement to pick another path, that path's rounding).
  np.testing.assert_allclose(out["process0"]["losses"], out["single"]["losses"], rtol=1e-5)
  for a, b in zip(params["process0"], params["single"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

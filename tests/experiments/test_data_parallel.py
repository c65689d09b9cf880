"""Training data-parallel on 4 (fake CPU) devices computes what training on 1 device computes."""

import json

import pytest
from experiment_subprocess import run

# Runs in a fresh process: the device count is fixed when JAX starts.
SCRIPT = """
import json, sys
import jax
import numpy as np
from experiments.common import config
from experiments.training import train
from experiments.training.checkpoint import read_checkpoint

assert jax.device_count() == 4, jax.devices()
cfg = config.override(config.load("compare_cifar10", "tiny"), ["data.synthetic_train=128", "train.epochs=1"])
out = {}
for n in (1, 4):
  run_cfg = config.override(cfg, [f"train.num_devices={n}"])
  result = train.train(run_cfg, f"{sys.argv[1]}/devices{n}")
  leaf = jax.tree.leaves(result.params)[0]
  out[n] = {
    "devices": result.parallel.num_devices,
    "param_devices": len(leaf.sharding.device_set),
    "replicated": bool(leaf.sharding.is_fully_replicated),
    "losses": [r["loss"] for r in result.history if r["split"] == "train"],
    "test": result.test,
  }
a, b = (
  jax.tree.leaves({k: v for k, v in read_checkpoint(f"{sys.argv[1]}/devices{n}/checkpoints").items()
                   if k in ("params", "rest", "opt_state")})
  for n in (1, 4)
)
out["max_abs_diff"] = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                          for x, y in zip(a, b))
out["max_abs"] = max(float(np.max(np.abs(np.asarray(x, np.float64)))) for x in a)
print("RESULT", json.dumps(out))
"""


def test_four_device_training_matches_one_device(tmp_path):
  script = tmp_path / "data_parallel.py"
  script.write_text(SCRIPT)
  result = run([str(script), str(tmp_path)], timeout=300, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = json.loads(result.stdout.split("RESULT", 1)[1])
  one, four = out["1"], out["4"]
  assert (one["devices"], one["param_devices"]) == (1, 1)
  assert (four["devices"], four["param_devices"], four["replicated"]) == (4, 4, True)
  # The ResNet (BatchNorm over the global batch), augmentation and AdamW, 4 steps: only summation order differs.
  assert four["losses"] == pytest.approx(one["losses"], rel=1e-5)
  assert four["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-5)
  assert out["max_abs_diff"] <= 1e-5 * max(out["max_abs"], 1.0)

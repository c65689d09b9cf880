"""experiments.training.train's helpers (whole runs are tested in test_resume.py, test_data_parallel.py, test_compare.py)."""

import dataclasses
import json

import pytest

from experiments.common import config
from experiments.training.train import _check_or_write_config, load_datasets


def test_workdir_refuses_a_run_that_trains_differently(tmp_path):
  cfg = config.load("compare_fashion_mnist", "tiny")
  path = tmp_path / "config.json"
  _check_or_write_config(cfg, path)
  assert json.loads(path.read_text())["model"]["stage_features"] == [8, 8]
  # Same training, other report settings or display: accepted.
  _check_or_write_config(config.override(cfg, ["train.progress=True", "schemes=dense", "bench.repeats=5"]), path)
  _check_or_write_config(cfg.with_scheme("dense"), path)
  for change in ("train.epochs=3", "optim.learning_rate=0.5", "data.synthetic_train=64"):
    with pytest.raises(ValueError, match="workdir"):
      _check_or_write_config(config.override(cfg, [change]), path)
  with pytest.raises(ValueError, match="model"):
    _check_or_write_config(cfg.with_scheme("cp"), path)


def test_load_datasets_cuts_subsets_and_checks_classes(tmp_path):
  data_cfg = config.DataConfig(name="synthetic", synthetic_shape=(8, 8, 1), synthetic_train=30, synthetic_test=20)
  train, test = load_datasets(dataclasses.replace(data_cfg, train_examples=12, test_examples=50), 10)
  assert (len(train), len(test)) == (12, 20)
  assert train.images.shape == (12, 8, 8, 1)
  full_train, _ = load_datasets(data_cfg, 10)
  assert (full_train.images[:12] == train.images).all()
  with pytest.raises(ValueError, match="num_classes"):  # checked before any file is read
    load_datasets(config.DataConfig(name="cifar10", data_dir=str(tmp_path)), 100)

"""Experiment configs: every config and preset loads, overrides parse, bad names are refused."""

import pytest

from experiments.common import config
from experiments.schemes import SCHEMES


@pytest.mark.parametrize("name", ["compare_fashion_mnist", "compare_cifar10"])
@pytest.mark.parametrize("preset", config.PRESETS)
def test_every_config_and_preset_loads(name, preset):
  cfg = config.load(name, preset)
  assert (cfg.name, cfg.preset) == (name, preset)
  assert cfg.baseline in cfg.schemes and set(cfg.schemes) <= set(SCHEMES)
  assert cfg.expected
  if preset == "tiny":
    assert cfg.data.name == "synthetic" and not cfg.train.progress
  else:
    assert cfg.schemes == SCHEMES


def test_full_fashion_mnist_trains_on_everything():
  full, quick = config.load("compare_fashion_mnist", "full"), config.load("compare_fashion_mnist", "quick")
  assert full.data.train_examples is None and full.train.epochs > quick.train.epochs
  assert full.model.stage_features == (32, 64)


def test_override_parses_literals_and_keeps_types():
  cfg = config.load(config.DEFAULT_CONFIG, "quick")
  out = config.override(
    cfg,
    [
      "train.epochs=3",
      "optim.learning_rate=1",
      "model.stage_features=8,16",
      "model.scheme=tt",
      "train.num_devices=None",
      "data.name=mnist",
      "schemes=dense",
    ],
  )
  assert out.train.epochs == 3
  assert out.optim.learning_rate == 1.0 and isinstance(out.optim.learning_rate, float)
  assert out.model.stage_features == (8, 16) and out.model.scheme == "tt"
  assert out.train.num_devices is None and out.data.name == "mnist" and out.schemes == ("dense",)
  assert cfg.train.epochs == 1  # the original is unchanged
  assert cfg.with_scheme("cp").model.scheme == "cp"


def test_bad_names_are_refused():
  with pytest.raises(ValueError, match="preset"):
    config.load(config.DEFAULT_CONFIG, "huge")
  with pytest.raises(ValueError, match="name"):
    config.load("no_such_config")
  with pytest.raises(ValueError, match="name"):
    config.load("../etc")
  cfg = config.load(config.DEFAULT_CONFIG, "tiny")
  with pytest.raises(ValueError, match="config field"):
    config.override(cfg, ["train.epoch=3"])
  with pytest.raises(ValueError, match=r"section\.field=value"):
    config.override(cfg, ["train.epochs"])

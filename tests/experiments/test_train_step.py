"""The training pieces of the experiments: the jitted step, evaluation, optimizer, synthetic data."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from experiments import data
from experiments.common.config import ModelConfig, OptimConfig
from experiments.data.synthetic import synthetic_datasets
from experiments.training.optim import decay_mask, learning_rate_schedule, make_optimizer
from experiments.training.steps import evaluate, init_model, make_parallel, make_predict, make_train_step, shard_batch

TINY = ModelConfig(scheme="cp", stem_features=4, stage_features=(8,), stage_depth=1)
IMAGE_SHAPE = (12, 12, 1)


@pytest.fixture(scope="module")
def tiny_model():
  return init_model(TINY, IMAGE_SHAPE, seed=0)


@pytest.fixture(scope="module")
def tiny_data():
  return synthetic_datasets(IMAGE_SHAPE, 16, 10, seed=1)


def test_train_step_reduces_loss_on_a_batch(tiny_model, tiny_data):
  graphdef, params, rest = tiny_model
  optimizer = make_optimizer(OptimConfig(name="adamw", learning_rate=3e-3, warmup_fraction=0.0), total_steps=100)
  parallel = make_parallel(1)
  step = make_train_step(graphdef, optimizer, parallel, dataset_name="fashion_mnist", augment=False)
  images, labels = shard_batch(parallel, tiny_data[0].images, tiny_data[0].labels)
  key = jax.random.PRNGKey(0)
  opt_state = optimizer.init(params)
  # The step reports the loss before its update: the second call sees the loss after one update.
  new_params, new_rest, opt_state, before = step(params, rest, opt_state, images, labels, key, 0)
  _, _, _, after = step(new_params, new_rest, opt_state, images, labels, key, 1)
  assert float(after["loss"]) < float(before["loss"])
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new_params)
  assert all(jax.tree.leaves(changed))
  # BatchNorm running statistics moved towards the batch's.
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), rest, new_rest)))


def test_evaluate_ignores_padding_and_batch_size(tiny_model, tiny_data):
  graphdef, params, rest = tiny_model
  predict, parallel, test = make_predict(graphdef), make_parallel(1), tiny_data[1]
  whole = evaluate(predict, params, rest, test, 16, parallel)  # one padded batch
  pieces = evaluate(predict, params, rest, test, 4, parallel)  # 4 + 4 + 2 (padded)
  assert whole["accuracy"] == pieces["accuracy"]
  assert whole["loss"] == pytest.approx(pieces["loss"], rel=1e-5)
  logits = np.asarray(predict(params, rest, data.normalize(test.images, test.name)), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert whole["loss"] == pytest.approx(-log_probs[np.arange(len(test)), test.labels].mean(), rel=1e-5)
  assert whole["accuracy"] == np.mean(logits.argmax(-1) == test.labels)


def test_schedule_warms_up_then_decays_to_the_end_fraction():
  cfg = OptimConfig(learning_rate=0.4, warmup_fraction=0.1, end_lr_fraction=0.25)
  schedule = learning_rate_schedule(cfg, 100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.2)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(55)) == pytest.approx(0.1 + 0.3 * 0.5, rel=1e-5)  # halfway down the cosine
  assert float(schedule(100)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="total_steps"):
    learning_rate_schedule(cfg, 0)


def test_weight_decay_spares_biases_and_norms():
  params = {
    "kernel": np.ones((3, 3, 2, 2), np.float32),
    "bias": np.ones(2, np.float32),
    "scale": np.ones(2, np.float32),
  }
  assert decay_mask(params) == {"kernel": True, "bias": False, "scale": False}
  optimizer = make_optimizer(
    OptimConfig(name="sgd", learning_rate=1.0, weight_decay=0.5, momentum=0.0, nesterov=False, warmup_fraction=0.0), 10
  )
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = optimizer.update(zeros, optimizer.init(params), params)
  assert np.allclose(updates["kernel"], -0.5) and np.allclose(updates["bias"], 0.0)
  with pytest.raises(ValueError, match=r"cfg\.name"):
    make_optimizer(dataclasses.replace(OptimConfig(), name="lion"), 10)


def test_clip_norm_limits_the_update():
  params = {"w": np.zeros((2, 2), np.float32)}
  optimizer = make_optimizer(
    OptimConfig(
      name="sgd", learning_rate=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, warmup_fraction=0.0, clip_norm=1.0
    ),
    10,
  )
  updates, _ = optimizer.update({"w": np.full((2, 2), 10.0, np.float32)}, optimizer.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_synthetic_data_is_deterministic_and_balanced():
  a_train, a_test = synthetic_datasets((8, 8, 3), 40, 20, seed=3)
  b_train, _ = synthetic_datasets((8, 8, 3), 40, 20, seed=3)
  assert a_train.images.shape == (40, 8, 8, 3) and a_train.images.dtype == np.uint8
  assert a_test.labels.dtype == np.int32 and a_train.name == "cifar10"
  np.testing.assert_array_equal(a_train.images, b_train.images)
  assert np.bincount(a_train.labels).tolist() == [4] * 10
  with pytest.raises(ValueError, match="image_shape"):
    synthetic_datasets((8, 8, 2), 4, 4)


def test_shard_batch_and_parallel_validate():
  parallel = make_parallel(1)
  (x,) = shard_batch(parallel, np.arange(6.0).reshape(3, 2))
  np.testing.assert_array_equal(np.asarray(x), np.arange(6.0).reshape(3, 2))
  with pytest.raises(ValueError, match="num_devices"):
    make_parallel(jax.device_count() + 1)

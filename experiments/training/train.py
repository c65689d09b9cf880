"""Training one model of an experiment, resumable and data-parallel.

Usage::

  python -m experiments.training.train --config compare_fashion_mnist --preset quick --scheme cp --workdir results/cp

The workdir receives ``config.json``, ``metrics.jsonl`` (JSON lines, :mod:`experiments.training.metrics`) and
``checkpoints/<step>/`` (Orbax, :mod:`experiments.training.checkpoint`). A checkpoint is saved every
``train.checkpoint_every_steps`` steps and at the end of every epoch.

Resuming: run the same command with the same workdir. Training restarts from the latest complete checkpoint
— parameters, BatchNorm statistics, optimizer state, step — and the data iterator continues with the same
epoch and skips the batches already seen (:func:`experiments.data.batches` orders epoch ``e`` by
``(seed, e)`` only; augmentation keys are ``fold_in(key, step)``), so the resumed run computes exactly what an
uninterrupted one does. A workdir holding a run of a different config is refused.

Data parallelism: the global batch is sharded over a 1-D mesh ``("data",)`` of all local devices (or the
first ``train.num_devices``), parameters are replicated (:mod:`experiments.training.steps`). To try it on a CPU, fake
devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.

Multi-host (or several processes on one host): start the same command once per process with
``--distributed``, which calls :func:`jax.distributed.initialize` first (:func:`initialize_distributed`). On
Cloud TPU and SLURM it needs nothing more; elsewhere give ``--coordinator-address HOST:PORT`` (process 0's
host, a free port), ``--num-processes N`` and ``--process-id I``, or set ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read with ``--distributed``); each of the three flags implies
``--distributed``. CPU collectives go over
gloo (JAX's default). The mesh then spans every process's devices; every process reads the same global batch
(same seed, same order) and contributes the rows of its own devices
(:func:`jax.make_array_from_process_local_data`), so the run computes what one process with the same global
batch computes, up to float summation order; metrics are global; layers on ``implementation="autotune"`` run
process 0's choices (:mod:`efficonv.planning.tuning`); at the end the processes check that they hold the
same parameters (:func:`jax.experimental.multihost_utils.assert_equal` of per-array sums); Orbax writes each checkpoint once, so the workdir must
be on a file system all processes share. Two processes on one machine::

  python -m experiments.training.train --config compare_fashion_mnist --preset tiny --scheme cp \\
    --workdir /tmp/mp --coordinator-address localhost:12355 --num-processes 2 --process-id 0 &
  python -m experiments.training.train --config compare_fashion_mnist --preset tiny --scheme cp \\
    --workdir /tmp/mp --coordinator-address localhost:12355 --num-processes 2 --process-id 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from experiments import data
from experiments.cli import add_config_arguments, config_from_args, setup_logging
from experiments.common.config import DataConfig, ExperimentConfig
from experiments.data.synthetic import synthetic_datasets
from experiments.training.checkpoint import Checkpointer
from experiments.training.metrics import MetricsLog, Progress
from experiments.training.optim import learning_rate_schedule, make_optimizer
from experiments.training.steps import (
  Parallel,
  State,
  evaluate,
  init_model,
  make_parallel,
  make_predict,
  make_train_step,
  replicate,
  shard_batch,
)

logger = logging.getLogger("experiments.training.train")

# Fields that may differ between the run in a workdir and the command resuming it.
_RESUMABLE_DIFFERENCES = ("progress", "num_devices")


@dataclasses.dataclass
class TrainResult:
  """What a training run leaves behind.

  Attributes:
    graphdef: the model's graph; ``steps.merge(graphdef, params, rest)`` rebuilds the model.
    params: trained parameters.
    rest: BatchNorm running statistics.
    history: every metrics record of the run (also in ``metrics.jsonl``).
    test: the final ``{"loss", "accuracy"}`` on the test split.
    steps: training steps taken in total.
    elapsed_s: training wall time in total (over all resumptions, evaluation excluded).
    parallel: the mesh the run used.
    opt_state: the final optimizer state.
    train_step: the run's jitted training step (:func:`experiments.training.steps.make_train_step`).
    predict: the run's jitted inference function (:func:`experiments.training.steps.make_predict`).
  """

  graphdef: nnx.GraphDef
  params: State
  rest: State
  history: list[dict[str, Any]]
  test: dict[str, float]
  steps: int
  elapsed_s: float
  parallel: Parallel
  opt_state: Any
  train_step: Callable[..., Any]
  predict: Callable[..., Any]


def load_datasets(cfg: DataConfig, num_classes: int) -> tuple[data.Dataset, data.Dataset]:
  """The train and test splits ``cfg`` asks for, cut to ``train_examples``/``test_examples``.

  Raises:
    ValueError: naming ``num_classes`` when the model's classes differ from the dataset's.
  """
  if cfg.name == "synthetic":
    train_set, test_set = synthetic_datasets(
      cfg.synthetic_shape, cfg.synthetic_train, cfg.synthetic_test, num_classes=num_classes
    )
  else:
    classes = data.get_spec(cfg.name).num_classes
    if classes != num_classes:
      raise ValueError(f"num_classes must be {classes} for {cfg.name}, got {num_classes}")
    train_set = data.load(cfg.name, "train", data_dir=cfg.data_dir)
    test_set = data.load(cfg.name, "test", data_dir=cfg.data_dir)
  return _subset(train_set, cfg.train_examples), _subset(test_set, cfg.test_examples)


def _subset(dataset: data.Dataset, count: int | None) -> data.Dataset:
  if count is None or count >= len(dataset):
    return dataset
  return dataclasses.replace(dataset, images=dataset.images[:count], labels=dataset.labels[:count])


def train(
  cfg: ExperimentConfig,
  workdir: str | os.PathLike[str],
  *,
  datasets: tuple[data.Dataset, data.Dataset] | None = None,
  on_step: Callable[[int], None] | None = None,
) -> TrainResult:
  """Trains ``cfg.model`` on ``cfg.data``, resuming from the latest checkpoint in ``workdir`` if there is one.

  Args:
    cfg: the experiment config (``cfg.model.scheme`` picks the scheme).
    workdir: directory for config, metrics and checkpoints.
    datasets: ``(train, test)`` to use instead of loading ``cfg.data`` (e.g. shared by several runs).
    on_step: called with the step count after each training step (and after its checkpoint, if any).

  Returns:
    The :class:`TrainResult`.

  Raises:
    ValueError: when ``workdir`` holds a run of another config, or the batch size does not suit the data or
      the devices.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  main_process = jax.process_index() == 0
  if main_process:  # one process writes the workdir's files; the others check them once written (below)
    _check_or_write_config(cfg, workdir / "config.json")
  train_set, test_set = datasets if datasets is not None else load_datasets(cfg.data, cfg.model.num_classes)
  tc = cfg.train
  parallel = make_parallel(tc.num_devices)
  if jax.process_count() > 1:
    logger.info(
      "process %d of %d: %d of the %d devices",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      parallel.num_devices,
    )
  if tc.batch_size % parallel.num_devices:
    raise ValueError(f"train.batch_size must be a multiple of the {parallel.num_devices} devices, got {tc.batch_size}")
  steps_per_epoch = data.num_batches(len(train_set), tc.batch_size)
  if steps_per_epoch == 0:
    raise ValueError(f"train.batch_size must be at most the {len(train_set)} training examples, got {tc.batch_size}")
  total_steps = steps_per_epoch * tc.epochs
  optimizer = make_optimizer(cfg.optim, total_steps)
  schedule = learning_rate_schedule(cfg.optim, total_steps)

  graphdef, params, rest = init_model(cfg.model, train_set.images.shape[1:], tc.seed)
  params, rest = replicate(parallel, (params, rest))
  state = {
    "params": params,
    "rest": rest,
    "opt_state": replicate(parallel, optimizer.init(params)),
    "step": replicate(parallel, jnp.asarray(0, jnp.int32)),
    "epoch": replicate(parallel, jnp.asarray(0, jnp.int32)),
    "batch_in_epoch": replicate(parallel, jnp.asarray(0, jnp.int32)),
    "rng": replicate(parallel, jax.random.PRNGKey(tc.seed)),
    "elapsed_s": replicate(parallel, jnp.asarray(0.0, jnp.float32)),
  }
  checkpointer = Checkpointer(workdir / "checkpoints", keep=tc.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is not None:
    state = checkpointer.restore(latest, state)
    logger.info(
      "Resuming from checkpoint at step %d (epoch %d, batch %d) in %s",
      latest,
      int(state["epoch"]),
      int(state["batch_in_epoch"]),
      workdir,
    )
  if main_process:
    log = MetricsLog(workdir / "metrics.jsonl", resume_step=latest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("experiments.training.train: config.json and metrics.jsonl written")
  if not main_process:
    _check_or_write_config(cfg, workdir / "config.json")
    log = MetricsLog(workdir / "metrics.jsonl", resume_step=latest, write=False)

  train_step = make_train_step(
    graphdef, optimizer, parallel, dataset_name=train_set.name, augment=cfg.data.augment, schedule=schedule
  )
  predict = make_predict(graphdef)
  params, rest, opt_state, rng = state["params"], state["rest"], state["opt_state"], state["rng"]
  step, elapsed = int(state["step"]), float(state["elapsed_s"])

  def save(epoch: int, batch: int) -> None:
    snapshot = {
      "params": params,
      "rest": rest,
      "opt_state": opt_state,
      "step": replicate(parallel, jnp.asarray(step, jnp.int32)),
      "epoch": replicate(parallel, jnp.asarray(epoch, jnp.int32)),
      "batch_in_epoch": replicate(parallel, jnp.asarray(batch, jnp.int32)),
      "rng": rng,
      # Every process saves the same state, so process 0's clock.
      "elapsed_s": replicate(parallel, jnp.asarray(multihost_utils.broadcast_one_to_all(np.float32(elapsed)))),
    }
    checkpointer.save(step, snapshot)

  for epoch in range(step // steps_per_epoch, tc.epochs):
    start = step - epoch * steps_per_epoch
    progress = Progress(
      steps_per_epoch,
      initial=start,
      description=f"{cfg.model.scheme} epoch {epoch + 1}/{tc.epochs}",
      enabled=tc.progress,
    )
    sums: dict[str, jax.Array] | None = None
    window_steps, window_start = 0, time.perf_counter()
    for images, labels in data.batches(
      train_set.images, train_set.labels, tc.batch_size, seed=tc.seed, epoch=epoch, start_batch=start
    ):
      x, y = shard_batch(parallel, images, labels)
      params, rest, opt_state, metrics = train_step(params, rest, opt_state, x, y, rng, step)
      step += 1
      window_steps += 1
      learning_rate = metrics.pop("learning_rate")
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      batch = step - epoch * steps_per_epoch
      epoch_end = batch == steps_per_epoch
      checkpoint_now = step % tc.checkpoint_every_steps == 0 or epoch_end
      # Windows close at every checkpoint, so a resumed run averages over the same windows.
      if step % tc.log_every_steps == 0 or checkpoint_now:
        means = {name: float(value) / window_steps for name, value in jax.device_get(sums).items()}
        seconds = time.perf_counter() - window_start
        elapsed += seconds
        record = {
          "split": "train",
          "step": step,
          "epoch": epoch + batch / steps_per_epoch,
          "learning_rate": float(learning_rate),
          **means,
          "images_per_s": window_steps * tc.batch_size / max(seconds, 1e-9),
          "elapsed_s": elapsed,
        }
        log.write(record)
        progress.update(0, loss=means["loss"], images_per_s=round(record["images_per_s"]))
        sums, window_steps, window_start = None, 0, time.perf_counter()
      progress.update(1)
      if checkpoint_now and not epoch_end:
        save(epoch, batch)
      if on_step is not None:
        on_step(step)
    progress.close()
    test = evaluate(predict, params, rest, test_set, tc.eval_batch_size or tc.batch_size, parallel)
    log.write({"split": "test", "step": step, "epoch": epoch + 1, **test})
    logger.info(
      "%s epoch %d: test accuracy %.4f, loss %.4f", cfg.model.scheme, epoch + 1, test["accuracy"], test["loss"]
    )
    save(epoch + 1, 0)
  checkpointer.close()
  if jax.process_count() > 1:
    _check_replicas(params)

  tests = [r for r in log.records if r["split"] == "test"]
  final = {"loss": tests[-1]["loss"], "accuracy": tests[-1]["accuracy"]} if tests else {}
  return TrainResult(
    graphdef, params, rest, list(log.records), final, step, elapsed, parallel, opt_state, train_step, predict
  )


def _check_replicas(params: Any) -> None:
  """Raises unless every process ends with the same parameters (one float64 sum per array compared)."""
  sums = np.array([np.asarray(leaf.addressable_data(0), np.float64).sum() for leaf in jax.tree.leaves(params)])
  # Compared as their bits: the gather behind assert_equal would round float64 to JAX's default float32.
  multihost_utils.assert_equal(sums.view(np.uint32), "the processes ended training with different parameters")
  logger.info(
    "process %d of %d: parameters equal on every process (sums of %d arrays compared)",
    jax.process_index(),
    jax.process_count(),
    sums.size,
  )


def config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
  """``cfg`` as JSON-ready nested dicts (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _check_or_write_config(cfg: ExperimentConfig, path: Path) -> None:
  """Writes ``config.json``, or checks that the run already there trains the same way.

  Only what shapes the training counts (``model``, ``data``, ``optim``, ``train`` except the fields in
  ``_RESUMABLE_DIFFERENCES``); the list of schemes, the benchmark settings and the names may differ.
  """
  if path.exists():
    saved, current = json.loads(path.read_text()), config_dict(cfg)
    for d in (saved, current):
      for name in _RESUMABLE_DIFFERENCES:
        d.get("train", {}).pop(name, None)
    sections = ("model", "data", "optim", "train")
    if any(saved.get(section) != current[section] for section in sections):
      raise ValueError(
        f"workdir must be empty or hold a run of the same config; {path} differs from this config in "
        f"{[section for section in sections if saved.get(section) != current[section]]} "
        "(use a new workdir, or delete the old one)"
      )
    return
  path.write_text(json.dumps(config_dict(cfg), indent=2) + "\n")


def initialize_distributed(
  coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """Calls :func:`jax.distributed.initialize`, the arguments left ``None`` read from the environment.

  ``JAX_COORDINATOR_ADDRESS`` is read by JAX itself; ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` here. What
  is still missing, JAX detects on Cloud TPU, SLURM and Open MPI.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator.
    num_processes: how many processes take part.
    process_id: this process, in ``[0, num_processes)``.

  Raises:
    ValueError: naming ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` when set to something other than an int.
  """
  if num_processes is None:
    num_processes = _int_env("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _int_env("JAX_PROCESS_ID")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name} must be an int, got {value!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  add_config_arguments(parser)
  parser.add_argument("--scheme", default=None, help="overrides model.scheme")
  parser.add_argument("--workdir", default=None, help="default: results/train/<config>_<preset>_<scheme>")
  parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
  parser.add_argument("--coordinator-address", default=None, help="host:port of process 0 (implies --distributed)")
  parser.add_argument("--num-processes", type=int, default=None, help="processes in the run (implies --distributed)")
  parser.add_argument("--process-id", type=int, default=None, help="this process's index (implies --distributed)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, on_step: Callable[[int], None] | None = None) -> TrainResult:
  """The command line; ``on_step`` as for :func:`train` (for tests)."""
  args = parse_args(argv)
  setup_logging()
  if args.distributed or any(v is not None for v in (args.coordinator_address, args.num_processes, args.process_id)):
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  cfg = config_from_args(args)
  if args.scheme is not None:
    cfg = cfg.with_scheme(args.scheme)
  workdir = args.workdir or os.path.join("results", "train", f"{args.config}_{args.preset}_{cfg.model.scheme}")
  result = train(cfg, workdir, on_step=on_step)
  print(json.dumps({"scheme": cfg.model.scheme, "steps": result.steps, **result.test}))
  return result


if __name__ == "__main__":
  main()

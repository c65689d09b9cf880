"""Pure, jitted training and evaluation steps on a split NNX model, data-parallel over a device mesh.

The model is split once into ``(graphdef, params, rest)`` — ``rest`` holds the BatchNorm statistics — and
every step is a pure function of those states that merges the model inside ``jax.jit``; no NNX object crosses
the jit boundary, so each step compiles once.

Data parallelism: a 1-D :class:`jax.sharding.Mesh` with axis ``"data"`` over the devices; the batch is sharded
along its first axis, parameters and optimizer state are replicated. The steps are written for the global
batch (the loss is a mean over all of it, BatchNorm statistics too), and XLA inserts the all-reduces, so a
step on ``n`` devices computes what it computes on one, up to float summation order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from efficonv.nnx import set_objective
from efficonv.typing import Array
from experiments import data
from experiments.common.config import ModelConfig
from experiments.models import build_model

State = Any
Metrics = dict[str, Array]

_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Parallel:
  """The device mesh and the two shardings the steps use.

  Attributes:
    mesh: 1-D mesh, axis ``"data"``.
    replicated: parameters, optimizer state, scalars.
    batch: arrays sharded along their first (batch) axis.
  """

  mesh: Mesh
  replicated: NamedSharding
  batch: NamedSharding

  @property
  def num_devices(self) -> int:
    return int(self.mesh.devices.size)


def make_parallel(num_devices: int | None = None) -> Parallel:
  """A data-parallel mesh over the first ``num_devices`` devices (all of them, on all hosts, when ``None``).

  Raises:
    ValueError: naming ``num_devices`` when it is not in ``[1, jax.device_count()]``, or when a subset is
      asked for in a multi-process run.
  """
  available = jax.device_count()
  if num_devices is None:
    devices = jax.devices()
  elif not 1 <= num_devices <= available:
    raise ValueError(f"num_devices must be in [1, {available}] (the devices JAX sees) or None, got {num_devices}")
  elif jax.process_count() > 1 and num_devices != available:
    raise ValueError(f"num_devices must be None (all devices) in a multi-process run, got {num_devices}")
  else:
    devices = jax.devices()[:num_devices]
  mesh = Mesh(np.asarray(devices), ("data",))
  return Parallel(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))


def shard_batch(parallel: Parallel, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Places global host batches on the mesh, split along the batch axis.

  Every process holds the same global batch (the data order depends only on the seed); each contributes the
  rows of its devices, so this also works across hosts.

  Args:
    parallel: the mesh.
    *arrays: ``(B, ...)`` numpy arrays with ``B`` a multiple of the number of devices.

  Returns:
    Global :class:`jax.Array`\\ s of the same shapes, sharded over ``"data"``.

  Raises:
    ValueError: naming the batch size when it does not divide evenly.
  """
  out = []
  for array in arrays:
    size = array.shape[0]
    if size % parallel.num_devices:
      raise ValueError(f"batch size must be a multiple of the number of devices {parallel.num_devices}, got {size}")
    # This process's rows: those of its devices (contiguous, as the mesh lists each process's devices together).
    rows = [index[0].indices(size) for index in parallel.batch.addressable_devices_indices_map(array.shape).values()]
    local = array[min(r[0] for r in rows) : max(r[1] for r in rows)]
    out.append(jax.make_array_from_process_local_data(parallel.batch, local, array.shape))
  return tuple(out)


def replicate(parallel: Parallel, tree: Any) -> Any:
  """Copies every array leaf of ``tree`` to all devices of the mesh.

  In a multi-process run every process passes the same values, and each global array is built from this
  process's copy (``jax.device_put`` of a process-local ``jax.Array`` onto a mesh spanning processes gives, in
  JAX 0.10, arrays that Orbax cannot save: their per-device pieces are not single-device arrays).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, parallel.replicated)

  def leaf(x: Any) -> jax.Array:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, parallel.replicated, lambda index: host[index])

  return jax.tree.map(leaf, tree)


def init_model(cfg: ModelConfig, image_shape: Sequence[int], seed: int) -> tuple[nnx.GraphDef, State, State]:
  """Builds the model and splits it into ``(graphdef, params, rest)``.

  The parameters are initialized in one jitted computation, compiled without XLA's backend optimizations
  (compiling the random-number code of a whole model with them takes seconds; running it unoptimized takes
  milliseconds, once).

  Args:
    cfg: the model config.
    image_shape: ``(H, W, C)``.
    seed: parameter seed.

  Returns:
    ``(graphdef, params, rest)``: ``params`` the :class:`flax.nnx.Param` state, ``rest`` everything else
    (BatchNorm running statistics).
  """

  def build() -> nnx.Module:
    return build_model(cfg, image_shape, rngs=nnx.Rngs(seed))

  graphdef, _, _ = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
  initialize = jax.jit(lambda: nnx.split(build(), nnx.Param, ...)[1:]).lower().compile(_FAST_COMPILE)
  params, rest = initialize()
  return graphdef, params, rest


def merge(graphdef: nnx.GraphDef, params: State, rest: State) -> nnx.Module:
  """The model, rebuilt from its split states (copies, so the states can be reused)."""
  return nnx.merge(graphdef, params, rest, copy=True)


def preprocess(images: Array, dataset_name: str, key: Array | None = None) -> Array:
  """``uint8`` images → standardized ``float32``, randomly cropped and flipped first when ``key`` is given."""
  if key is not None:
    images = data.random_crop_flip(key, images)
  return data.normalize(images, dataset_name)


def make_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  parallel: Parallel,
  *,
  dataset_name: str,
  augment: bool,
  schedule: optax.Schedule | None = None,
) -> Callable[[State, State, Any, Array, Array, Array, Array], tuple[State, State, Any, Metrics]]:
  """The jitted training step.

  ``step(params, rest, opt_state, images, labels, base_key, step_index)`` →
  ``(params, rest, opt_state, metrics)`` with ``metrics = {"loss", "accuracy", "grad_norm"}`` (means over the
  global batch), and ``"learning_rate"`` (of this step) when ``schedule`` is given. Augmentation draws from
  ``fold_in(base_key, step_index)``, so it depends only on the seed and the step, which keeps resumed runs
  identical.

  Args:
    graphdef: the model's graph.
    optimizer: the optax transformation.
    parallel: the mesh; outputs are replicated on it.
    dataset_name: normalization statistics (:func:`experiments.data.normalize`).
    augment: random crop and flip of the training images.
    schedule: the optimizer's learning-rate schedule, to report the rate.

  Returns:
    The jitted step.
  """

  def step(params, rest, opt_state, images, labels, base_key, step_index):
    key = jax.random.fold_in(base_key, step_index) if augment else None
    x = preprocess(images, dataset_name, key)

    def loss_fn(params: State, rest: State) -> tuple[Array, tuple[Array, State]]:
      model = merge(graphdef, params, rest)
      # "auto" layers pick the path with the fastest forward+backward here (inference keeps its own).
      set_objective(model, "training")
      logits = model(x, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels),
      "grad_norm": optax.tree.norm(grads),
    }
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(step_index), jnp.float32)
    return params, rest, opt_state, metrics

  return jax.jit(step, out_shardings=parallel.replicated)


def make_predict(graphdef: nnx.GraphDef) -> Callable[[State, State, Array], Array]:
  """The jitted inference forward pass: ``predict(params, rest, x)`` → logits, ``x`` standardized floats."""
  return jax.jit(lambda params, rest, x: merge(graphdef, params, rest)(x, train=False))


def evaluate(
  predict: Callable[[State, State, Array], Array],
  params: State,
  rest: State,
  dataset: data.Dataset,
  batch_size: int,
  parallel: Parallel,
) -> dict[str, float]:
  """Loss and accuracy over a whole split, in fixed-size batches (the last one padded, the padding ignored).

  The images are standardized on the host and the logits come from ``predict``, so evaluation shares the
  compiled inference function (and its compilation) with the throughput measurement.

  Args:
    predict: from :func:`make_predict`.
    params: model parameters.
    rest: BatchNorm statistics.
    dataset: the split.
    batch_size: rounded up to a multiple of the number of devices.
    parallel: the mesh.

  Returns:
    ``{"loss", "accuracy"}``: mean cross-entropy and accuracy over the split.
  """
  batch_size = -(-batch_size // parallel.num_devices) * parallel.num_devices
  loss_sum, correct = 0.0, 0
  for start in range(0, len(dataset), batch_size):
    images = dataset.images[start : start + batch_size]
    labels = dataset.labels[start : start + batch_size]
    count = len(labels)
    if count < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
    (x,) = shard_batch(parallel, np.asarray(data.normalize(images, dataset.name)))
    logits = np.asarray(multihost_utils.process_allgather(predict(params, rest, x), tiled=True), np.float64)[:count]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    loss_sum += float(-log_probs[np.arange(count), labels].sum())
    correct += int((logits.argmax(axis=-1) == labels).sum())
  total = max(len(dataset), 1)
  return {"loss": loss_sum / total, "accuracy": correct / total}

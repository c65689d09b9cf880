"""Orbax checkpoints of the training state, for resuming a killed run exactly where it stopped.

A checkpoint is one pytree: parameters, BatchNorm statistics, optimizer state, the step, the epoch and batch
within it, the base PRNG key and the elapsed training time. Saves are asynchronous (training continues while
the files are written) and atomic: Orbax writes into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores training-state pytrees under ``directory/<step>``.

  Args:
    directory: where the step directories go (created if missing).
    keep: how many of the most recent checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2):
    if keep < 1:
      raise ValueError(f"keep must be at least 1, got {keep}")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(os.fspath(os.path.abspath(directory)), options=options)

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None``."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Starts saving ``state`` as checkpoint ``step`` (returns before the files are written)."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, like: Any) -> Any:
    """Restores checkpoint ``step`` with the structure, dtypes and shardings of ``like``.

    Args:
      step: a step from :meth:`latest_step`.
      like: a pytree shaped like the saved one (e.g. a freshly initialized state); its arrays' shardings
        place the restored arrays.

    Returns:
      The restored pytree.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    """Blocks until pending saves are written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def read_checkpoint(directory: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
  """Reads a checkpoint without a template, as nested dicts of arrays (for inspection and tests).

  Also a checkpoint written by a multi-process run, read by one process.

  Args:
    directory: the checkpoints directory (``<workdir>/checkpoints``).
    step: which checkpoint; the latest complete one when ``None``.

  Returns:
    ``{"params", "rest", "opt_state", "step", "epoch", "batch_in_epoch", "rng", "elapsed_s"}``, every NNX
    variable as ``{"value": array}``.

  Raises:
    ValueError: naming ``directory`` when it holds no complete checkpoint (or not ``step``).
  """
  path = os.path.abspath(directory)
  # Finished checkpoints are directories named by their step; unfinished ones carry a temporary suffix.
  steps = sorted(int(name) for name in (os.listdir(path) if os.path.isdir(path) else []) if name.isdigit())
  step = (steps[-1] if steps else None) if step is None else step
  if step is None or step not in steps:
    raise ValueError(f"directory must hold a complete checkpoint{'' if step is None else f' {step}'}: {path}")
  item = os.path.join(path, str(step), "default")
  with ocp.StandardCheckpointer() as checkpointer:
    # Onto this process's first device, whatever topology saved it (a multi-process run's checkpoint too,
    # which Orbax refuses to restore without a target).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = ocp.StandardCheckpointHandler().metadata(pathlib.Path(item)).tree  # shapes and dtypes
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    return checkpointer.restore(item, target)

"""The TensorLy peer of :mod:`experiments.bench.decompose`: ``parafac``, ``partial_tucker`` and ``tensor_train``.

The same fits as efficonv's (same rank, sweeps, SVD init, ``tol=0``) on the NumPy backend (float32 and, for
CP, float64) and ``parafac`` on TensorLy's JAX backend (eager: it cannot be jitted). TensorLy is optional:
:func:`version` is ``None`` when it is not installed, and the benchmark then skips these columns.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from experiments.common.timing import Stats, time_call


def version() -> str | None:
  """TensorLy's version, or ``None`` when it is not installed."""
  if importlib.util.find_spec("tensorly") is None:
    return None
  import tensorly

  return str(tensorly.__version__)


def relative_error(kernel: np.ndarray, approx: Any) -> float:
  """``‖kernel − approx‖ / ‖kernel‖`` in float64."""
  kernel = np.asarray(kernel, np.float64)
  return float(np.linalg.norm(kernel - np.asarray(approx, np.float64)) / np.linalg.norm(kernel))


def numpy_cases(
  kernel: np.ndarray,
  *,
  cp_rank: int,
  cp_sweeps: int,
  tucker_ranks: tuple[int, int],
  tucker_sweeps: int,
  tt_modes: tuple[tuple[int, int], tuple[int, int]],
  tt_ranks: tuple[int, int],
) -> dict[str, tuple[Callable[[], Any], Callable[[Any], float]]]:
  """TensorLy (NumPy backend) calls equivalent to efficonv's: ``label -> (call, error of its result)``.

  Args:
    kernel: the ``(kh, kw, C_in, C_out)`` kernel, float32.
    cp_rank: CP rank.
    cp_sweeps: ALS sweeps (no early stop).
    tucker_ranks: Tucker-2 ranks of the channel modes.
    tucker_sweeps: HOOI sweeps.
    tt_modes: ``(in_modes, out_modes)`` of two channel cores.
    tt_ranks: TT ranks after the spatial core and between the channel cores.

  Returns:
    Calls labelled ``cp/tensorly-numpy-f32``, ``cp/tensorly-numpy-f64``, ``tucker2/tensorly-numpy-f32`` and
    ``tt/tensorly-numpy-f32``.
  """
  import tensorly as tl
  from tensorly.decomposition import parafac, partial_tucker, tensor_train

  tl.set_backend("numpy")
  k64 = kernel.astype(np.float64)
  c_in, c_out = tt_modes
  taps = kernel.shape[0] * kernel.shape[1]
  reordered = kernel.reshape(taps, *c_in, *c_out).transpose(0, 1, 3, 2, 4).reshape(taps, c_in[0] * c_out[0], -1)

  def parafac_call(w: np.ndarray) -> Callable[[], Any]:
    return lambda: parafac(w, cp_rank, n_iter_max=cp_sweeps, tol=0, init="svd")

  def tucker_call() -> Any:
    return partial_tucker(kernel, rank=list(tucker_ranks), modes=[2, 3], n_iter_max=tucker_sweeps, tol=0)

  def tucker_err(result: Any) -> float:
    (core, factors), _ = result
    return relative_error(kernel, tl.tenalg.multi_mode_dot(core, factors, modes=[2, 3]))

  return {
    "cp/tensorly-numpy-f32": (parafac_call(kernel), lambda r: relative_error(kernel, tl.cp_to_tensor(r))),
    "cp/tensorly-numpy-f64": (parafac_call(k64), lambda r: relative_error(kernel, tl.cp_to_tensor(r))),
    "tucker2/tensorly-numpy-f32": (tucker_call, tucker_err),
    "tt/tensorly-numpy-f32": (
      lambda: tensor_train(reordered, rank=[1, *tt_ranks, 1]),
      lambda r: relative_error(reordered, tl.tt_to_tensor(r)),
    ),
  }


def jax_parafac(kernel: np.ndarray, *, cp_rank: int, cp_sweeps: int, repeats: int) -> tuple[Stats, float]:
  """TensorLy's ``parafac`` on its JAX backend (eager; it cannot be jitted), timed with ``time_call``.

  The warm-up call is untimed: eager JAX compiles every new primitive/shape once (seconds), later calls hit
  that cache, so the timed calls are TensorLy-on-JAX at its steady state.

  Returns:
    ``(statistics, relative error of the last fit)``.
  """
  import tensorly as tl
  from tensorly.decomposition import parafac

  tl.set_backend("jax")
  result: list[Any] = []

  def call() -> Any:
    out = parafac(tl.tensor(kernel), cp_rank, n_iter_max=cp_sweeps, tol=0, init="svd")
    result[:] = [out]
    return out.factors

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # the SVD init on the 3-long spatial modes
      stats = time_call(lambda: jax.block_until_ready(call()), repeats=repeats, warmup=1)
    return stats, relative_error(kernel, tl.cp_to_tensor(result[0]))
  finally:
    tl.set_backend("numpy")


def cp_errors_over_seeds(kernel: np.ndarray, *, cp_rank: int, cp_sweeps: int, seeds: Sequence[int]) -> list[float]:
  """``parafac`` (NumPy, float32) errors over the seeds of its SVD init's random columns."""
  import tensorly as tl
  from tensorly.decomposition import parafac

  tl.set_backend("numpy")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    return [
      relative_error(
        kernel,
        tl.cp_to_tensor(parafac(kernel, cp_rank, n_iter_max=cp_sweeps, tol=0, init="svd", random_state=seed)),
      )
      for seed in seeds
    ]

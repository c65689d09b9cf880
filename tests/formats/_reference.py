"""Shared helpers of the format tests: random formats and an independent dense reference.

The reference is written here from :func:`jax.lax.conv_general_dilated` and
:func:`jax.numpy.pad` alone (never through :mod:`efficonv.kernels`), so a
padding bug in the kernels cannot hide in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import efficonv
from efficonv.typing import Array, Dtype

FORMAT_NAMES = ("CP", "Tucker2", "TT", "Spatial", "Separable")
DEPTHWISE_FORMATS = ("CP", "TT", "Separable")  # formats with a depthwise step
IMPLEMENTATIONS = ("factorized", "reconstructed", "auto")

# flax.nnx.Conv's pad modes for the string paddings it pads itself.
_NNX_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect"}


def _normal(rng: np.random.Generator, shape: Sequence[int], dtype: Dtype, std: float) -> Array:
  # NumPy's generator: jax.random compiles a sampler per shape, which the property test would pay per example.
  return jnp.asarray(std * rng.standard_normal(tuple(shape), np.float32), dtype)


def random_input(seed: int, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
  """A standard normal NHWC input."""
  return _normal(np.random.default_rng(seed), shape, dtype, 1.0)


def make_format(
  name: str,
  seed: int,
  *,
  kernel_size: tuple[int, int],
  in_features: int | None = None,
  out_features: int | None = None,
  rank: int | tuple[int, ...] = 2,
  in_modes: tuple[int, ...] = (2, 3),
  out_modes: tuple[int, ...] = (2, 2),
  dtype: Dtype = jnp.float32,
) -> efficonv.Format:
  """A format with random normal factors (std chosen so the output is O(1)).

  Args:
    name: one of :data:`FORMAT_NAMES`.
    seed: seed of the NumPy generator.
    kernel_size: ``(kh, kw)``.
    in_features, out_features: channels (all formats but TT, which takes its
      channels from ``in_modes``/``out_modes``).
    rank: CP/Spatial rank, Separable depth multiplier, Tucker2 ``(R1, R2)``
      (an int means ``(rank, rank)``), TT ranks ``(r_0..r_{d-1})`` (an int
      means that rank everywhere).
    in_modes, out_modes: TT channel modes, of equal length ``d``.
    dtype: factor dtype.

  Returns:
    The format.
  """
  kh, kw = kernel_size
  rng = np.random.default_rng(seed)
  if name == "TT":
    d = len(in_modes)
    ranks = (rank,) * d if isinstance(rank, int) else tuple(rank)
    full = (*ranks, 1)
    spatial = _normal(rng, (kh, kw, ranks[0]), dtype, 1.0)
    cores = tuple(
      _normal(rng, (full[k], in_modes[k], out_modes[k], full[k + 1]), dtype, 1.0 / math.sqrt(full[k])) for k in range(d)
    )
    return efficonv.TT(spatial, cores)
  assert in_features is not None and out_features is not None
  cin, cout = in_features, out_features
  if name == "CP":
    assert isinstance(rank, int)
    return efficonv.CP(
      _normal(rng, (cin, rank), dtype, 1.0),
      _normal(rng, (kh, rank), dtype, 1.0),
      _normal(rng, (kw, rank), dtype, 1.0),
      _normal(rng, (rank, cout), dtype, 1.0 / math.sqrt(rank)),
    )
  if name == "Tucker2":
    r1, r2 = (rank, rank) if isinstance(rank, int) else rank
    return efficonv.Tucker2(
      _normal(rng, (cin, r1), dtype, 1.0),
      _normal(rng, (kh, kw, r1, r2), dtype, 1.0 / math.sqrt(r1)),
      _normal(rng, (r2, cout), dtype, 1.0 / math.sqrt(r2)),
    )
  if name == "Spatial":
    assert isinstance(rank, int)
    return efficonv.Spatial(
      _normal(rng, (kh, cin, rank), dtype, 1.0), _normal(rng, (kw, rank, cout), dtype, 1.0 / math.sqrt(rank))
    )
  if name == "Separable":
    assert isinstance(rank, int)
    return efficonv.Separable(
      _normal(rng, (kh, kw, cin, rank), dtype, 1.0), _normal(rng, (cin * rank, cout), dtype, 1.0)
    )
  raise AssertionError(f"unknown format {name!r}")


def effective_size(kernel: int, dilation: int) -> int:
  return (kernel - 1) * dilation + 1


def as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else (value[0], value[1])


def reference_conv(
  x: Array,
  kernel: Array,
  *,
  strides: int | tuple[int, int] = 1,
  padding: str | int | tuple[tuple[int, int], tuple[int, int]] = "SAME",
  dilation: int | tuple[int, int] = 1,
) -> Array:
  """Dense conv straight from ``lax`` (NHWC/HWIO, ``precision="highest"``).

  ``"CIRCULAR"``/``"REFLECT"`` pad as :class:`flax.nnx.Conv` does — by
  ``((e - 1) // 2, e // 2)`` with the dilated kernel extent ``e`` — then run ``VALID``.
  """
  s, d = as_pair(strides), as_pair(dilation)
  if isinstance(padding, str) and padding in _NNX_PAD_MODES:
    eh, ew = effective_size(kernel.shape[0], d[0]), effective_size(kernel.shape[1], d[1])
    pads = ((0, 0), ((eh - 1) // 2, eh // 2), ((ew - 1) // 2, ew // 2), (0, 0))
    x = jnp.pad(x, pads, mode=_NNX_PAD_MODES[padding])
    padding = "VALID"
  elif isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=s,
    padding=padding,
    rhs_dilation=d,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision="highest",
  )


def padded_size(n: int, kernel: int, stride: int, dilation: int, padding: object, axis: int) -> int:
  """Padded length of one spatial axis under ``padding``, computed from the definitions."""
  e = effective_size(kernel, dilation)
  if padding == "VALID":
    return n
  if padding == "SAME":
    return n + max((-(-n // stride) - 1) * stride + e - n, 0)
  if padding in _NNX_PAD_MODES:
    return n + e - 1
  if isinstance(padding, int):
    return n + 2 * padding
  lo, hi = padding[axis]  # type: ignore[index]
  return n + lo + hi


def assert_close(actual: Array, expected: Array, rel: float = 1e-5, err_msg: str = "") -> None:
  """``|actual - expected| <= rel * max|expected|`` elementwise (tolerance relative to the output scale)."""
  expected = np.asarray(expected, np.float64)
  scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=rel * scale, err_msg=err_msg)

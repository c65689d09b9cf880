"""The time of a network's non-conv part: the network with every conv swapped for a near-free stand-in.

:func:`efficonv.search` predicts a compressed network's time as this part plus each conv's time. Measuring
it as ``network − Σ convs timed alone`` fails when the network's fused program runs its convs faster (or
slower) than they run alone: the difference is then not the rest of the network. Swapping each conv for a
stand-in of the same output shape, which only reads a strided slice of its input and copies channels, keeps
every normalization, activation, pool and head in place with inputs that depend on the data (nothing folds
away), at the cost of one copy per conv.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[Any, ...]


class ConvStandIn(nnx.Module):
  """Maps a conv's input to an array of its output's shape and dtype, by a strided slice and a channel copy.

  Args:
    out_shapes: ``((input_shape, output_shape), …)``: the conv's output shape at each input shape it is
      called with.
    strides: the conv's spatial strides (the slice's step).
    dtype: the conv's output dtype.
  """

  def __init__(
    self, out_shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...], strides: tuple[int, int], dtype: Any
  ) -> None:
    self.out_shapes = out_shapes
    self.strides = strides
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    shapes = dict(self.out_shapes)
    if tuple(x.shape) not in shapes:
      raise ValueError(f"x must have one of the traced input shapes {sorted(shapes)}, got {tuple(x.shape)}")
    _, height, width, channels = shapes[tuple(x.shape)]
    sliced = x[:, :: self.strides[0], :: self.strides[1], :][:, :height, :width, :]
    short = ((0, 0), (0, height - sliced.shape[1]), (0, width - sliced.shape[2]), (0, 0))
    if any(after for _, after in short):
      sliced = jnp.pad(sliced, short)
    copied = jnp.take(sliced, np.arange(channels) % x.shape[-1], axis=-1)
    return copied.astype(self.dtype)


def stand_in_network(
  model: nnx.Module,
  calls: list[tuple[Path, tuple[int, ...]]],
  convs: dict[Path, nnx.Conv],
  replace: Callable[[nnx.Module, Path, nnx.Module], None],
) -> nnx.Module | None:
  """A copy of ``model`` with every conv of ``calls`` swapped for a :class:`ConvStandIn`.

  Args:
    model: the network.
    calls: its conv calls in forward order (:func:`efficonv.compression.conv_calls`).
    convs: ``{path: conv}`` of ``model``.
    replace: sets the module at a path (``efficonv.compression._replace``).

  Returns:
    The copy, or ``None`` when some conv is a stack (``nnx.vmap``-made: called inside a transform, where a
    stand-in cannot take its place) or is not called on NHWC inputs.
  """
  shapes: dict[Path, dict[tuple[int, ...], tuple[tuple[int, ...], Any]]] = {}
  for path, shape in calls:
    conv = convs[path]
    if conv.kernel.ndim != 4 or len(shape) != 4:
      return None
    graphdef, state = nnx.split(conv)
    out = jax.eval_shape(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, jax.ShapeDtypeStruct(shape, jnp.float32))
    shapes.setdefault(path, {})[shape] = (tuple(int(d) for d in out.shape), out.dtype)
  copy = nnx.clone(model)
  for path, by_shape in shapes.items():
    conv = convs[path]
    strides = (1, 1) if conv.strides is None else conv.strides
    strides = (strides, strides) if isinstance(strides, int) else tuple(int(s) for s in strides)
    out_shapes = tuple((i, o) for i, (o, _) in sorted(by_shape.items()))
    dtype = next(iter(by_shape.values()))[1]
    replace(copy, path, ConvStandIn(out_shapes, (strides[0], strides[1]), dtype))
  return copy

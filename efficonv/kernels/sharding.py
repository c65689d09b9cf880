"""How the convolutions run on arrays sharded over an Explicit mesh: data parallel, factors gathered.

Under :func:`jax.make_mesh`'s default (Explicit axes, jax ≥ 0.7) every array's sharding is part of its type,
and each op must be able to infer its output's sharding. A factorized conv is a chain of small einsums,
pads, strided slices and grouped convs whose intermediates have rank or mode axes no caller can name, and
many combinations (a rank axis sharded on both sides of a contraction, a grouped conv on a sharded
channel axis, a reshape that merges a sharded axis) have no inferable sharding. So the kernels of this
package take a simple, always well-typed route, the one of fully sharded data parallelism (FSDP):

* the input keeps its batch (leading) axis's sharding; any sharding of its spatial or channel axes is
  gathered;
* every factor (and bias) is gathered to a replicated copy for the computation; its stored sharding is a
  storage layout, and the gradient flows back to it (as a reduce-scatter).

For convolutions this is usually also the cheaper route: the factors are small (that is the point of a
factorized kernel), while sharding a rank or channel axis would all-reduce activations of the layer's full
output size. Under an Auto mesh, or outside any mesh, shardings are not part of the types and
:func:`data_parallel` returns its arguments unchanged (XLA's partitioner decides then).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from efficonv.typing import Array


def explicit_spec(x: Any) -> tuple[Any, ...] | None:
  """The partition spec in ``x``'s type when it names an Explicit mesh axis, else ``None``.

  Example:
    >>> import jax.numpy as jnp
    >>> explicit_spec(jnp.ones(3)) is None
    True
  """
  sharding = getattr(jax.typeof(x), "sharding", None) if hasattr(x, "shape") else None
  spec = getattr(sharding, "spec", None)
  if spec is None or all(entry is None for entry in spec):
    return None
  return tuple(spec)


def batch_shards(x: Any) -> int:
  """How many ways an Explicit mesh splits ``x``'s leading (batch) axis (1 when it is not typed as sharded).

  Example:
    >>> import jax.numpy as jnp
    >>> batch_shards(jnp.ones((4, 2)))
    1
  """
  spec = explicit_spec(x)
  if spec is None or not spec or spec[0] is None:
    return 1
  names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  mesh = jax.typeof(x).sharding.mesh
  return math.prod(mesh.shape[name] for name in names)


def _reshard(x: Any, spec: tuple[Any, ...]) -> Any:
  current = explicit_spec(x)
  if current == spec or (current is None and all(entry is None for entry in spec)):
    return x
  return jax.sharding.reshard(x, NamedSharding(jax.typeof(x).sharding.mesh, PartitionSpec(*spec)))


def with_out_sharding(y: Array, out_sharding: Any) -> Array:
  """``y`` resharded to ``out_sharding`` (a ``PartitionSpec`` or ``NamedSharding``), as ``nnx.Conv``'s argument.

  A reshard where the spec names only Explicit mesh axes; a sharding constraint (XLA's partitioner then
  follows it) where it names Auto ones, which :func:`jax.sharding.reshard` rejects.
  """
  spec = out_sharding.spec if isinstance(out_sharding, NamedSharding) else out_sharding
  mesh = out_sharding.mesh if isinstance(out_sharding, NamedSharding) else jax.sharding.get_abstract_mesh()
  names = [n for entry in spec if entry is not None for n in (entry if isinstance(entry, tuple) else (entry,))]
  if all(n in mesh.explicit_axes for n in names) and (names or mesh.explicit_axes):
    return jax.sharding.reshard(y, out_sharding)
  return jax.lax.with_sharding_constraint(y, out_sharding)


def data_parallel(x: Array, params: Any) -> tuple[Array, Any]:
  """``x`` sharded over its batch axis only and every array of ``params`` replicated, on an Explicit mesh.

  Arrays whose types carry no Explicit sharding (Auto meshes, no mesh, ``None`` leaves) pass unchanged.

  Args:
    x: the conv input ``(N, H, W, C)``.
    params: any pytree of arrays (a :class:`efficonv.Format`, a bias, a tuple of kernels).

  Returns:
    ``(x, params)`` resharded for the data-parallel computation.

  Example:
    >>> import jax.numpy as jnp
    >>> x, (w,) = data_parallel(jnp.ones((2, 4, 4, 3)), (jnp.ones((3, 5)),))
    >>> x.shape, w.shape
    ((2, 4, 4, 3), (3, 5))
  """
  spec = explicit_spec(x)
  if spec is not None:
    x = _reshard(x, (spec[0],) + (None,) * (len(spec) - 1))

  def gather(a: Any) -> Any:
    if explicit_spec(a) is None:
      return a
    return _reshard(a, (None,) * a.ndim)

  return x, jax.tree.map(gather, params)

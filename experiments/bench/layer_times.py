"""Per-layer time breakdown of a network: each conv (dense or factorized) timed alone at its real input shape.

The conv call sites of the dense network and their input shapes come from
:func:`efficonv.compression.conv_calls` (an abstract trace). :func:`efficonv.compress` and
:func:`efficonv.compression.replace_dense` keep every layer at its path, so the same paths name the layers of
the compressed and of the efficonv-dense builds. Each layer ``layer(x)`` is jitted alone, compiled with the
compiler options of its network's build, and all layers of all builds are timed together, interleaved
(:func:`experiments.common.timing.measure`). What the sum of the layers leaves of the whole network's time
(BatchNorm, ReLU, pooling, the residual adds, the head, and whatever XLA fuses across layers) is reported as
``rest``.

Example:
  >>> from flax import nnx
  >>> from experiments.bench.layer_times import layer_sites, module_at
  >>> from experiments.models import build_model, network_config
  >>> cfg, shape = network_config("vgg11_cifar", width_divisor=16)
  >>> model = build_model(cfg, shape, rngs=nnx.Rngs(0))
  >>> sites = layer_sites(model, shape)
  >>> sites[0], sites[1]
  (('stem/conv', ('stem', 'conv'), (1, 32, 32, 3)), ('layers/0/conv', ('layers', 0, 'conv'), (1, 16, 16, 4)))
  >>> type(module_at(model, sites[1][1])).__name__
  'Conv'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficonv import cost
from efficonv.compression import conv_calls
from experiments.common.config import BenchConfig
from experiments.common.timing import compile_fn, measure

Site = tuple[str, tuple[Any, ...], tuple[int, ...]]
"""``(name, path, input shape at batch 1)`` of one conv call."""


def layer_sites(model: nnx.Module, image_shape: Sequence[int]) -> list[Site]:
  """The conv calls of ``model`` (a network of plain or efficonv ``nnx.Conv``) in forward order.

  Args:
    model: the dense network.
    image_shape: ``(H, W, C)`` of one image.

  Returns:
    ``[(name, path, input shape with batch 1), …]``; a conv called twice appears once.
  """
  sites, seen = [], set()
  for path, shape in conv_calls(model, (1, *image_shape)):
    if path not in seen:
      seen.add(path)
      sites.append(("/".join(str(p) for p in path), tuple(path), tuple(shape)))
  return sites


def module_at(model: nnx.Module, path: Sequence[Any]) -> Any:
  """The submodule of ``model`` at ``path`` (attribute names and list indices)."""
  node: Any = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node


def layer_kind(layer: Any, input_shape: Sequence[int]) -> str:
  """The layer's class and what a call on ``input_shape`` runs (``CPConv:factorized``, ``Conv:im2col``).

  A plain :class:`flax.nnx.Conv` is ``nnx.Conv``; an :class:`efficonv.nnx.Conv` names its dense formulation,
  a factorized layer the path of its plan.
  """
  if hasattr(layer, "implementation_for"):
    return f"Conv:{layer.implementation_for(input_shape)[0]}"
  if hasattr(layer, "plan"):
    return f"{type(layer).__name__}:{layer.plan(input_shape).implementation}"
  return "nnx.Conv" if isinstance(layer, nnx.Conv) else type(layer).__name__


def time_layers(
  builds: Mapping[str, tuple[nnx.Module, Mapping[str, str]]],
  sites: Sequence[Site],
  batch_size: int,
  bench: BenchConfig,
  deadline: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
  """Times every site's layer of every build alone on a random batch of its real input shape.

  Args:
    builds: name → ``(network, XLA compiler options)``; every network has a layer at each site's path.
    sites: :func:`layer_sites` of the dense network.
    batch_size: the batch of the inputs.
    bench: warm-up, repeats and ``min_seconds``.
    deadline: a :func:`time.perf_counter` value after which no further round of timed calls starts.

  Returns:
    build name → one record per site: ``layer``, ``kind`` (:func:`layer_kind`), ``input_shape``, ``macs``
    (nominal, :func:`efficonv.cost.macs` of the layer), and the timing statistics (``ms`` the median).

  Raises:
    ValueError: naming ``batch_size`` when it is not positive.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  rng = np.random.default_rng(0)
  inputs = {}
  for _, _, shape in sites:
    full = (batch_size, *shape[1:])
    if full not in inputs:
      inputs[full] = jnp.asarray(rng.normal(size=full), jnp.float32)
  candidates, meta = {}, {}
  for build, (model, options) in builds.items():
    for name, path, shape in sites:
      layer = module_at(model, path)
      graphdef, state = nnx.split(layer)
      x = inputs[(batch_size, *shape[1:])]
      fn = compile_fn(lambda state, x, graphdef=graphdef: nnx.merge(graphdef, state)(x), (state, x), options)
      key = f"{build}|{name}"
      candidates[key] = (fn, (state, x))
      macs = getattr(layer, "cost_macs", None)
      meta[key] = (
        build,
        name,
        layer_kind(layer, x.shape),
        x.shape,
        int(macs(x.shape)) if macs else cost.macs(layer, x.shape),
      )
  for fn, args in candidates.values():  # every executable runs once before any timing
    jax.block_until_ready(fn(*args))
  stats = measure(
    candidates, repeats=bench.repeats, warmup=bench.warmup, min_seconds=bench.min_seconds, deadline=deadline
  )
  out: dict[str, list[dict[str, Any]]] = {build: [] for build in builds}
  for key, (build, name, kind, shape, macs) in meta.items():
    out[build].append(
      {"layer": name, "kind": kind, "input_shape": list(shape), "macs": macs, "ms": stats[key].median_ms}
      | stats[key].as_dict()
    )
  return out


def breakdown_rows(layers: Sequence[dict[str, Any]], whole_ms: float) -> dict[str, Any]:
  """The layers' total and the ``rest`` of the whole network's time (``whole − Σ layers``).

  Example:
    >>> breakdown_rows([{"ms": 2.0}, {"ms": 3.0}], 6.5)
    {'layers_ms': 5.0, 'whole_ms': 6.5, 'rest_ms': 1.5, 'layers_fraction': 0.7692307692307693}
  """
  total = float(sum(r["ms"] for r in layers))
  return {
    "layers_ms": total,
    "whole_ms": whole_ms,
    "rest_ms": whole_ms - total,
    "layers_fraction": total / whole_ms if whole_ms > 0 else float("nan"),
  }

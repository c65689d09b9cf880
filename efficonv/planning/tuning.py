"""``implementation="autotune"``: measure every path once per shape, keep the fastest.

The cost model behind ``implementation="auto"`` (:mod:`efficonv.planning.cost_model`)
is fitted to one machine. ``"autotune"`` replaces it by a measurement on the
machine at hand: the first time a format meets an input shape, every candidate —
the factorized sequence on each depthwise path, and the reconstructed dense
conv — is compiled and timed on random data of the same shapes and dtypes, and
the fastest is remembered. Later calls with the same key reuse the choice
without measuring.

It works under :func:`jax.jit`: the measurement runs while the caller is traced
(shapes are static there), on concrete arrays of its own, and only the choice
enters the traced program. Times do not depend on the factor values, so traced
factors are fine.

The cache lives in memory (:func:`cache`, :func:`clear_cache`) and, when the
environment variable ``EFFICONV_AUTOTUNE_CACHE`` names a JSON file, on disk
too: it is read at the first lookup and rewritten atomically after each new
measurement, so a second process on the same machine does not measure again.
Keys include the backend and device kind; a file copied to another machine
does not mislead it, its entries just never match.

Several processes (:func:`jax.distributed.initialize`, ``jax.process_count() > 1``)
must run the same program, or their collectives mismatch; timed separately they
can pick different paths. So there one decision is shared: process 0 decides
(from its cache, or by measuring) and publishes the entry in the distributed
runtime's key-value store under a hash of the key; every other process waits for
it (up to :data:`SHARE_TIMEOUT_S`), never measures, and keeps it in memory only
(only process 0 writes the cache file). The first decision published for a key
stands for the rest of the run, :func:`clear_cache` notwithstanding. The store,
not a device collective, carries it because the decision is taken while the
caller is traced, where a collective would be staged into the caller's program,
and because it needs no agreement on the order in which processes meet shapes;
it does need process 0 to meet every shape the others meet.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from efficonv.formats import CP
  >>> fmt = CP.init(jax.random.key(0), 16, 16, (3, 3), rank=4)
  >>> plan = fmt.plan((2, 8, 8, 16), implementation="autotune")
  >>> plan.implementation in ("factorized", "reconstructed")
  True
  >>> fmt.conv(jnp.ones((2, 8, 8, 16)), implementation="autotune").shape
  (2, 8, 8, 16)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficonv.kernels import _options as opt
from efficonv.kernels import targets
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.dense import DENSE_IMPLEMENTATIONS
from efficonv.kernels.depthwise import depthwise_implementation as resolve_depthwise
from efficonv.kernels.shapes import conv_geometry, dense_macs
from efficonv.planning.plan import OBJECTIVES, Plan
from efficonv.planning.protocol import PlannableFormat
from efficonv.planning.timing import median_seconds
from efficonv.typing import PrecisionLike

CACHE_ENV = "EFFICONV_AUTOTUNE_CACHE"
SHARE_TIMEOUT_S = 1800.0
"""How long a process other than 0 waits for process 0's decision (process 0 may be measuring many layers)."""
_STORE_PREFIX = "efficonv/autotune/"

_lock = threading.Lock()
_cache: dict[str, dict[str, Any]] = {}
_loaded_from: str | None = None


def cache() -> dict[str, dict[str, Any]]:
  """A copy of the in-memory cache: ``{key: {"choice": [impl, depthwise], "times_ms": {...}}}``."""
  with _lock:
    return {k: dict(v) for k, v in _cache.items()}


def clear_cache() -> None:
  """Forgets every choice in memory (the file named by ``EFFICONV_AUTOTUNE_CACHE`` is left alone)."""
  global _loaded_from
  with _lock:
    _cache.clear()
    _loaded_from = None


def _load_file() -> None:
  global _loaded_from
  path = os.environ.get(CACHE_ENV)
  if not path or path == _loaded_from:
    return
  _loaded_from = path
  if os.path.exists(path):
    try:
      with open(path) as f:
        entries = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{CACHE_ENV}={path!r} is not a readable JSON autotune cache ({e}); delete or fix it") from e
    if not isinstance(entries, dict):
      raise ValueError(f"{CACHE_ENV}={path!r} must hold a JSON object, got {type(entries).__name__}")
    _cache.update(entries)


def _save_file() -> None:
  path = os.environ.get(CACHE_ENV)
  if not path:
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".autotune-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(_cache, f, indent=1, sort_keys=True)
  os.replace(tmp, path)  # atomic: a reader never sees half a file


def _decide(key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """The cache entry for ``key``: cached, else measured; in a multi-process run, process 0's for every process."""
  if jax.process_count() > 1:
    return _shared(key, measure)
  return _local(key, measure)


def _local(key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  with _lock:
    _load_file()
    entry = _cache.get(key)
  if entry is None:
    entry = measure()
    with _lock:
      _cache[key] = entry
      _save_file()
  return entry


def _store() -> Any:
  """The distributed runtime's client (its key-value store), ``None`` without :func:`jax.distributed.initialize`."""
  from jax._src import distributed  # no public accessor; orbax reads it the same way

  return distributed.global_state.client


def _shared(key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  client = _store()
  if client is None:
    raise RuntimeError(
      f"implementation='autotune' in a run of {jax.process_count()} processes shares process 0's choice through "
      "jax.distributed; call jax.distributed.initialize() first"
    )
  name = _STORE_PREFIX + hashlib.sha256(key.encode()).hexdigest()
  if jax.process_index() == 0:
    try:
      value = client.key_value_try_get(name)  # already decided in this run
    except jax.errors.JaxRuntimeError:  # not found
      value = json.dumps(_local(key, measure))
      try:
        client.key_value_set(name, value)
      except jax.errors.JaxRuntimeError:  # another thread published first: its decision stands
        value = client.key_value_try_get(name)
  else:
    try:
      value = client.blocking_key_value_get(name, int(SHARE_TIMEOUT_S * 1000))
    except jax.errors.JaxRuntimeError as e:
      raise RuntimeError(
        f"implementation='autotune': process {jax.process_index()} waited {SHARE_TIMEOUT_S:g} s for process 0's "
        f"choice for {key}; every process must trace the same layers on the same shapes "
        "(efficonv.planning.tuning.SHARE_TIMEOUT_S sets the wait)"
      ) from e
  entry: dict[str, Any] = json.loads(value)
  with _lock:
    _cache[key] = entry  # what this process runs, visible in cache(); only process 0 writes the file
  return entry


def _key(
  fmt: PlannableFormat,
  input_shape: tuple[int, ...],
  dtype: Any,
  strides: Any,
  padding: Any,
  dilation: Any,
  depthwise: str,
  objective: str,
  precision: Any,
  backend: str,
) -> str:
  factors = [(tuple(a.shape), jnp.dtype(a.dtype).name) for a in fmt.arrays()]
  device = jax.devices(backend)[0].device_kind
  return repr(
    (
      type(fmt).__name__,
      factors,
      input_shape,
      jnp.dtype(dtype).name,
      opt.pair(strides, "strides"),
      padding if isinstance(padding, str) else repr(padding),
      opt.pair(dilation, "dilation"),
      depthwise,
      objective,
      repr(precision),
      backend,
      device,
    )
  )


def _local_backend(backend: str | None) -> str:
  """``backend`` (by default the one planned for), checked to have a device here to measure on.

  Raises:
    ValueError: naming the backend, when this process has no device of it (autotune cannot plan for a
      platform it cannot run on, e.g. while exporting for CUDA from a CPU host).
  """
  backend = backend or targets.current_backend()
  try:
    jax.devices(backend)
  except RuntimeError as e:
    raise ValueError(
      f"implementation='autotune' measures on the platform it plans for, and this process has no {backend!r} "
      "device: plan with implementation='auto' (the cost model) or a forced implementation instead"
    ) from e
  return backend


def _candidates(fmt: PlannableFormat, depthwise: str) -> list[tuple[str, str | None]]:
  if not fmt.has_depthwise:
    paths: list[str | None] = [None]
  elif depthwise == "auto":
    paths = ["shift", "xla"]
  else:
    paths = [depthwise]
  return [("factorized", p) for p in paths] + [("reconstructed", None)]


def autotune(
  fmt: PlannableFormat,
  input_shape: Sequence[int],
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  dtype: Any = None,
  precision: PrecisionLike = None,
  depthwise_implementation: str = "auto",
  objective: str = "inference",
  backend: str | None = None,
  repeats: int = 5,
  min_seconds: float = 0.02,
) -> Plan:
  """Measures every implementation of ``fmt.conv`` on ``input_shape`` and returns the fastest as a plan.

  Multi-process runs (``jax.process_count() > 1``, after :func:`jax.distributed.initialize`): only process 0
  measures (or reads its cache); its choice reaches every other process through the distributed runtime's
  key-value store, so all processes compile the same program and their collectives match. The others wait for
  it up to :data:`SHARE_TIMEOUT_S` and write no cache file.

  Args:
    fmt: the factorized kernel (its factors may be tracers; only shapes and dtypes are used).
    input_shape: NHWC input shape.
    strides, padding, dilation, precision: the conv options.
    dtype: input dtype; the format's dtype when ``None``.
    depthwise_implementation: ``"auto"`` tries both depthwise paths; ``"shift"``/``"xla"`` only that one.
    objective: ``"inference"`` times the forward pass; ``"training"`` the forward pass and the gradients
      of the input and every factor (``jax.vjp`` and its pullback).
    backend: JAX platform to measure on; the default backend when ``None``.
    repeats: at least this many timed calls per candidate (median).
    min_seconds: and at least this long per candidate.

  Returns:
    A :class:`efficonv.planning.Plan` whose ``reason`` lists every measured time and whose
    ``estimated_*_s`` fields hold the measured medians.

  Raises:
    ValueError: naming ``objective``, ``repeats`` or ``min_seconds`` when out of range, or an input the
      format cannot take.
    RuntimeError: in a multi-process run without :func:`jax.distributed`, or when process 0's choice does not
      come within :data:`SHARE_TIMEOUT_S`.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  if not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive int, got {repeats!r}")
  if not min_seconds >= 0:
    raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
  resolve_depthwise(depthwise_implementation, "cpu")  # validates the name
  backend = _local_backend(backend)
  shape, _ = targets.representative_shape(input_shape)
  g = conv_geometry(shape, fmt.kernel_size, fmt.in_features, strides, padding, dilation)
  dtype = jnp.dtype(dtype or fmt.dtype)
  key = _key(fmt, shape, dtype, strides, padding, dilation, depthwise_implementation, objective, precision, backend)

  def measure() -> dict[str, Any]:
    return _measure(
      fmt,
      shape,
      dtype,
      strides,
      padding,
      dilation,
      precision,
      depthwise_implementation,
      objective,
      backend,
      repeats,
      min_seconds,
    )

  entry = _decide(key, measure)
  impl, dw = entry["choice"]
  times = entry["times_ms"]
  factorized_ms = min(v for k, v in times.items() if k.startswith("factorized"))
  reason = f"autotuned on {backend} ({objective}): " + ", ".join(f"{k} {v:.3g} ms" for k, v in times.items())
  dense = dense_macs(g, fmt.kernel_size, fmt.in_features, fmt.out_features)
  return Plan(
    impl, dw, reason, sum(m for _, m in fmt.steps(g)), dense, factorized_ms / 1e3, times["reconstructed"] / 1e3
  )


def _measure(
  fmt: PlannableFormat,
  shape: tuple[int, ...],
  dtype: Any,
  strides: Any,
  padding: Any,
  dilation: Any,
  precision: Any,
  depthwise: str,
  objective: str,
  backend: str,
  repeats: int,
  min_seconds: float,
) -> dict[str, Any]:
  device = jax.local_devices(backend=backend)[0]  # jax.devices() starts with process 0's, elsewhere not addressable
  rng = np.random.default_rng(0)

  def random_like(a: Any) -> jax.Array:
    # Concrete device arrays even while an outer jit traces (device_put would be staged there).
    with jax.ensure_compile_time_eval():
      return jax.device_put(rng.standard_normal(a.shape).astype(jnp.dtype(a.dtype)), device)

  concrete = jax.tree.map(random_like, fmt)
  x = random_like(jax.ShapeDtypeStruct(shape, dtype))
  times: dict[str, float] = {}
  for impl, dw in _candidates(fmt, depthwise):

    def forward(f: Any, x: jax.Array, impl: str = impl, dw: str | None = dw) -> jax.Array:
      return f.conv(
        x,
        strides=strides,
        padding=padding,
        dilation=dilation,
        implementation=impl,
        depthwise_implementation=dw or "auto",
        precision=precision,
      )

    if objective == "training":
      out = jax.eval_shape(forward, concrete, x)
      cotangent = random_like(out)

      def step(f: Any, x: jax.Array, forward: Any = forward, cotangent: jax.Array = cotangent) -> Any:
        y, pullback = jax.vjp(forward, f, x)
        return y, pullback(cotangent)

      fn: Any = step
    else:
      fn = forward
    # Compiled ahead of time and called directly, so this also runs while an outer jit is tracing.
    compiled = jax.jit(fn).lower(concrete, x).compile()
    name = impl if dw is None else f"{impl}/{dw}"
    median, _ = median_seconds(functools.partial(compiled, concrete, x), repeats=repeats, min_seconds=min_seconds)
    times[name] = median * 1e3
  best = min(times, key=times.__getitem__)
  impl, _, dw = best.partition("/")
  return {"choice": [impl, dw or None], "times_ms": times}


def autotune_dense(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  feature_group_count: int = 1,
  dtype: Any = jnp.float32,
  precision: PrecisionLike = None,
  objective: str = "inference",
  backend: str | None = None,
  repeats: int = 5,
  min_seconds: float = 0.02,
) -> tuple[str, str]:
  """Measures every dense formulation of :func:`efficonv.kernels.conv` on these shapes; returns the fastest.

  The dense counterpart of :func:`autotune`, with the same cache (memory, and the file named by
  ``EFFICONV_AUTOTUNE_CACHE``), the same sharing of process 0's choice in a multi-process run, and the same statistic (:func:`efficonv.planning.median_seconds`). Candidates
  are compiled with XLA's default options: a caller compiling with other options (``compiler_options=``)
  gets choices measured under the defaults, which the reason says.

  Args:
    input_shape: ``(N, H, W, C_in)``.
    kernel_shape: ``(kh, kw, C_in // feature_group_count, C_out)``.
    strides: int or ``(sh, sw)``.
    padding: any form of :func:`efficonv.kernels.resolve_padding`.
    dilation: kernel dilation.
    feature_group_count: channel groups (above 1 only ``"xla"`` runs, so nothing is measured).
    dtype: input and kernel dtype.
    precision: the precision the conv will run with.
    objective: ``"inference"`` times the forward pass, ``"training"`` also the gradients of input and kernel.
    backend: the JAX platform to measure on; the default backend when ``None``.
    repeats: at least this many timed calls per candidate (median).
    min_seconds: and at least this long per candidate.

  Returns:
    ``(formulation, reason)``; the reason lists every measured time.

  Raises:
    ValueError: naming ``objective`` when unknown, or an option the conv cannot take.
    RuntimeError: as :func:`autotune`, in a multi-process run.

  Example:
    >>> from efficonv.planning import autotune_dense
    >>> name, reason = autotune_dense((1, 4, 4, 8), (3, 3, 8, 8))
    >>> name in ("xla", "xla_valid", "im2col", "shift"), reason.startswith("autotuned on")
    (True, True)
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  backend = _local_backend(backend)
  if feature_group_count != 1:
    return "xla", f"feature_group_count={feature_group_count}: only XLA's conv takes groups (nothing measured)"
  shape, _ = targets.representative_shape(input_shape)
  kshape, dtype = tuple(int(v) for v in kernel_shape), jnp.dtype(dtype)
  key = repr(
    (
      "dense",
      shape,
      kshape,
      dtype.name,
      opt.pair(strides, "strides"),
      padding if isinstance(padding, str) else repr(padding),
      opt.pair(dilation, "dilation"),
      objective,
      repr(precision),
      backend,
      jax.devices(backend)[0].device_kind,
    )
  )

  def measure() -> dict[str, Any]:
    device = jax.local_devices(backend=backend)[0]
    rng = np.random.default_rng(0)
    with jax.ensure_compile_time_eval():  # concrete arrays even while an outer jit traces
      x = jax.device_put(rng.standard_normal(shape).astype(dtype), device)
      w = jax.device_put(rng.standard_normal(kshape).astype(dtype), device)
    times: dict[str, float] = {}
    for impl in DENSE_IMPLEMENTATIONS:

      def forward(x: jax.Array, w: jax.Array, impl: str = impl) -> jax.Array:
        return dense_conv(
          x, w, strides=strides, padding=padding, dilation=dilation, precision=precision, implementation=impl
        )

      fn: Any = forward
      if objective == "training":
        fn = jax.grad(lambda x, w, f=forward: jnp.sum(f(x, w) ** 2), argnums=(0, 1))
      compiled = jax.jit(fn).lower(x, w).compile()
      median, _ = median_seconds(functools.partial(compiled, x, w), repeats=repeats, min_seconds=min_seconds)
      times[impl] = median * 1e3
    return {"choice": [min(times, key=times.__getitem__), None], "times_ms": times}

  entry = _decide(key, measure)
  times = entry["times_ms"]
  reason = f"autotuned on {backend} ({objective}, default XLA options): " + ", ".join(
    f"{k} {v:.3g} ms" for k, v in times.items()
  )
  return entry["choice"][0], reason

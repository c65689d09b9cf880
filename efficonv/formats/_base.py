"""Shared machinery of the factorized-kernel formats.

A format is a frozen dataclass whose fields are the factor arrays (a JAX
pytree, so it passes through ``jit``, ``vmap`` and ``grad``). Subclasses
define the factor shapes, the dense reconstruction, the factorized
application and their MAC count; this base class turns that into
``conv(..., implementation="factorized" | "reconstructed" | "auto")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from efficonv._typing import Array, PrecisionLike
from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.depthwise import depthwise_implementation as resolve_depthwise

Implementation = Literal["auto", "autotune", "factorized", "reconstructed"]
IMPLEMENTATIONS = ("auto", "autotune", "factorized", "reconstructed")
Objective = Literal["inference", "training"]
OBJECTIVES = ("inference", "training")


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Resolved sizes of one convolution call.

  Attributes:
    batch: N.
    in_hw: input ``(H, W)``.
    padded_hw: ``(H + top + bottom, W + left + right)``.
    out_hw: output ``(H', W')``.
    strides, dilation: ``(h, w)`` pairs.
    pads: ``((top, bottom), (left, right))``.
    mode: pad mode (``"constant"``, ``"wrap"``, ``"reflect"``).
  """

  batch: int
  in_hw: tuple[int, int]
  padded_hw: tuple[int, int]
  out_hw: tuple[int, int]
  strides: tuple[int, int]
  dilation: tuple[int, int]
  pads: opt.PadPairs
  mode: opt.PadMode


def geometry(
  input_shape: Sequence[int],
  kernel_hw: tuple[int, int],
  in_features: int,
  strides: int | Sequence[int],
  padding: opt.PaddingLike,
  dilation: int | Sequence[int],
) -> Geometry:
  """Validates an NHWC ``input_shape`` and resolves the geometry of a conv on it."""
  shape = tuple(int(v) for v in input_shape)
  if len(shape) != 4:
    raise ValueError(f"input_shape must be NHWC (rank 4), got {shape}")
  if shape[-1] != in_features:
    raise ValueError(f"input must have {in_features} channels in its last axis (NHWC), got shape {shape}")
  s = opt.pair(strides, "strides")  # type: ignore[arg-type]
  d = opt.pair(dilation, "dilation")  # type: ignore[arg-type]
  pads, mode = opt.resolve_padding(padding, (shape[1], shape[2]), kernel_hw, s, d)
  padded = (shape[1] + pads[0][0] + pads[0][1], shape[2] + pads[1][0] + pads[1][1])
  out = (
    opt.output_size(padded[0], kernel_hw[0], s[0], d[0], 0, 0),
    opt.output_size(padded[1], kernel_hw[1], s[1], d[1], 0, 0),
  )
  return Geometry(shape[0], (shape[1], shape[2]), padded, out, s, d, pads, mode)


# Sustained throughput (multiply-accumulates per second) of each kind of step,
# per backend, and a fixed cost per launched step. Only the ratios matter for
# `auto`; the values are those of the model, not peak hardware numbers. CPU:
# least-squares fit (relative errors) of this model to the median forward
# times of every forced implementation in `python -m experiments.bench_layers --quick`
# and `python -m experiments.auto_sweep` (refit: `python -m experiments.fit_rates PATH...`),
# 2-core AMD EPYC shared with other jobs, jax 0.10.2, float32, N=8, 32×32×64 to
# 8×8×256, 3×3 and 5×5. With them `auto` was within 7% of the faster path on all
# 48 measured forward cases, ranks past the crossover included; only a case at
# MAC ratio 1.07 (CP rank 4C) flips with the machine's load. Each launched step
# costs ~0.1 ms there (thread hand-offs under contention), which dominates small
# factorized layers. GPU numbers are conservative guesses until the timing suite
# measures them.
_RATES: dict[str, dict[str, float]] = {
  "cpu": {"conv": 5.5e10, "dot": 9e10, "depthwise_shift": 7.5e9, "depthwise_xla": 0.5e9, "step": 1.4e-4},
  "gpu": {"conv": 2e13, "dot": 3e13, "depthwise_shift": 1e12, "depthwise_xla": 1e12, "step": 5e-6},
  "tpu": {"conv": 5e13, "dot": 5e13, "depthwise_shift": 1e12, "depthwise_xla": 1e12, "step": 5e-6},
}


# Forward+backward time over forward time of each kind of step (the gradients of the input and of the
# weights), for ``objective="training"``. CPU: non-negative least-squares fit, with the forward rates above
# held fixed, to the forward+backward medians of every forced implementation in
# `python -m experiments.bench_layers --quick` (experiments/results/bench_layers_quick/; refit:
# `python -m experiments.fit_rates`). With them `auto` picks the faster path in all 24 forward+backward
# cases. The values are a joint fit, not per-kind physics: ``dot`` comes out low because the forward model
# already over-charges the small matmuls of these layers, and ``step`` carries the per-operation overhead of
# the backward pass. The shift-and-add depthwise backward is the expensive one (kernel gradient reduced tile
# by tile; with a depth multiplier, sums over (N, H, W, C, m) arrays); the XLA grouped depthwise backward
# is not fitted (it takes seconds on CPU and is never the candidate there).
_TRAINING_FACTOR: dict[str, dict[str, float]] = {
  "cpu": {
    "conv": 2.12,
    "dot": 0.19,
    "depthwise_shift": 7.37,
    "depthwise_shift_multiplier": 9.53,
    "depthwise_xla": 3.0,
    "step": 3.51,
  },
  # Until the GPU suite measures them: a backward pass costs about twice the forward for every kind.
  "gpu": dict.fromkeys(("conv", "dot", "depthwise_shift", "depthwise_shift_multiplier", "depthwise_xla", "step"), 3.0),
}


def _rates(backend: str) -> dict[str, float]:
  return _RATES.get(backend, _RATES["gpu"])


def _training_factor(backend: str) -> dict[str, float]:
  return _TRAINING_FACTOR.get(backend, _TRAINING_FACTOR["gpu"])


@dataclasses.dataclass(frozen=True)
class Plan:
  """What :meth:`Format.conv` will run for one input shape, and why.

  Attributes:
    implementation: ``"factorized"`` or ``"reconstructed"``.
    depthwise: the depthwise path inside the factorized sequence
      (``"shift"``/``"xla"``), or ``None`` when the format has none.
    reason: a human-readable justification (estimated times or "forced").
    factorized_macs: MACs of the factorized sequence (batch included).
    dense_macs: MACs of the dense conv with the reconstructed kernel.
    estimated_factorized_s: cost-model time of the factorized path.
    estimated_reconstructed_s: cost-model time of the reconstructed path.
  """

  implementation: str
  depthwise: str | None
  reason: str
  factorized_macs: int
  dense_macs: int
  estimated_factorized_s: float
  estimated_reconstructed_s: float

  @property
  def mac_ratio(self) -> float:
    """Dense MACs over factorized MACs (the ideal speedup)."""
    return self.dense_macs / max(self.factorized_macs, 1)


class Format:
  """Base class of the factorized-kernel formats (see the subclasses)."""

  # Names of the array fields, in constructor order.
  _fields: ClassVar[tuple[str, ...]] = ()
  has_depthwise: ClassVar[bool] = False

  # --- to be provided by subclasses -------------------------------------
  @property
  def kernel_size(self) -> tuple[int, int]:
    raise NotImplementedError

  @property
  def in_features(self) -> int:
    raise NotImplementedError

  @property
  def out_features(self) -> int:
    raise NotImplementedError

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    """The dense HWIO kernel ``(kh, kw, C_in, C_out)`` this format represents."""
    raise NotImplementedError

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    raise NotImplementedError

  def _steps(self, g: Geometry) -> list[tuple[str, int]]:
    """The factorized sequence as ``(kind, MACs)`` steps, kind in ``_RATES``."""
    raise NotImplementedError

  # --- shared --------------------------------------------------------------
  def _arrays(self) -> list[Array]:
    leaves = []
    for name in self._fields:
      value = getattr(self, name)
      leaves.extend(value if isinstance(value, tuple) else [value])
    return leaves

  @property
  def dtype(self) -> jnp.dtype:
    """The result dtype of the factors."""
    return jnp.result_type(*self._arrays())

  def params(self) -> int:
    """Number of parameters of the factors (no bias)."""
    return sum(int(a.size) for a in self._arrays())

  def dense_params(self) -> int:
    """Number of parameters of the dense kernel it replaces."""
    kh, kw = self.kernel_size
    return kh * kw * self.in_features * self.out_features

  def macs(
    self,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
  ) -> int:
    """Multiply-accumulates of the factorized sequence on ``input_shape`` (NHWC, batch included)."""
    g = geometry(input_shape, self.kernel_size, self.in_features, strides, padding, dilation)
    return sum(m for _, m in self._steps(g))

  def dense_macs(
    self,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
  ) -> int:
    """Multiply-accumulates of the dense conv with the reconstructed kernel."""
    g = geometry(input_shape, self.kernel_size, self.in_features, strides, padding, dilation)
    return _dense_macs(g, self.kernel_size, self.in_features, self.out_features)

  def plan(
    self,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    implementation: Implementation = "auto",
    depthwise_implementation: str = "auto",
    objective: Objective = "inference",
    backend: str | None = None,
    dtype: Any = None,
    precision: PrecisionLike = None,
  ) -> Plan:
    """Chooses between the factorized sequence and the reconstructed dense conv.

    ``"auto"`` uses a cost model: each step's MACs divided by the measured
    throughput of that kind of step on ``backend`` (dense conv, matmul,
    shift-and-add or grouped depthwise), plus a fixed cost per step; for
    ``objective="training"`` each step's time is scaled by its measured
    forward+backward over forward ratio. For CP at small rank that picks the
    factorized path; near full rank the dense conv wins and is picked.
    ``"autotune"`` measures instead (see :mod:`efficonv.autotune`).

    Args:
      input_shape: NHWC shape of the input.
      strides, padding, dilation: the conv options.
      implementation: ``"auto"`` (cost model) or ``"autotune"`` (measured) decide;
        ``"factorized"``/``"reconstructed"`` force.
      depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
      objective: ``"inference"`` (forward pass) or ``"training"`` (forward and backward).
      backend: JAX platform; the default backend when ``None``.
      dtype: input dtype, for ``"autotune"``; the format's dtype when ``None``.
      precision: for ``"autotune"``, the precision the conv will run with.

    Returns:
      A :class:`Plan`.
    """
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if objective not in OBJECTIVES:
      raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    backend = backend or jax.default_backend()
    g = geometry(input_shape, self.kernel_size, self.in_features, strides, padding, dilation)
    # Validated for every format, so that a typo fails the same way whatever the format.
    dw_resolved = resolve_depthwise(depthwise_implementation, backend)
    if implementation == "autotune":
      from efficonv.autotune import autotune  # lazy: autotune imports this module

      return autotune(
        self,
        input_shape,
        strides=strides,
        padding=padding,
        dilation=dilation,
        dtype=dtype,
        precision=precision,
        depthwise_implementation=depthwise_implementation,
        objective=objective,
        backend=backend,
      )
    dw = dw_resolved if self.has_depthwise else None
    rates = _rates(backend)
    train = _training_factor(backend) if objective == "training" else None
    steps = self._steps(g)
    dense = _dense_macs(g, self.kernel_size, self.in_features, self.out_features)
    t_fact = 0.0
    for kind, m in steps:
      factor_kind = kind
      if kind in ("depthwise", "depthwise_multiplier"):
        factor_kind = f"depthwise_{dw}_multiplier" if kind == "depthwise_multiplier" else f"depthwise_{dw}"
        kind = f"depthwise_{dw}"
      t_step = m / rates[kind] + rates["step"]
      if train is not None:
        t_step *= train.get(factor_kind, train[kind])
      t_fact += t_step
    kh, kw = self.kernel_size
    rebuild = self.params() * kh * kw  # an upper bound on the reconstruction einsum
    conv_s = dense / rates["conv"]
    rebuild_s = rebuild / rates["dot"] + 2 * rates["step"]
    if train is not None:
      conv_s, rebuild_s = conv_s * train["conv"], rebuild_s * train["dot"]
    t_dense = conv_s + rebuild_s
    fact_macs = sum(m for _, m in steps)
    if implementation == "auto":
      chosen = "factorized" if t_fact <= t_dense else "reconstructed"
      reason = (
        f"auto on {backend} ({objective}): estimated factorized {t_fact * 1e3:.3g} ms vs reconstructed "
        f"{t_dense * 1e3:.3g} ms (MAC ratio {dense / max(fact_macs, 1):.3g})"
      )
    else:
      chosen = implementation
      reason = "forced by implementation="
    return Plan(chosen, dw if chosen == "factorized" else None, reason, fact_macs, dense, t_fact, t_dense)

  def conv(
    self,
    x: Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    implementation: Implementation = "auto",
    depthwise_implementation: str = "auto",
    objective: Objective = "inference",
    precision: PrecisionLike = None,
  ) -> Array:
    """Applies the factorized kernel to ``x``.

    Equal, up to float error, to
    ``lax.conv_general_dilated(x, self.to_dense(), strides, padding, rhs_dilation=dilation)``
    with NHWC/HWIO dimension numbers.

    Args:
      x: ``(N, H, W, C_in)``.
      strides: int or ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int, or ``((lo, hi), (lo, hi))``.
      dilation: kernel dilation.
      implementation: ``"factorized"`` (the cheap sequence), ``"reconstructed"``
        (build the dense kernel, one dense conv), ``"auto"`` (cost model) or
        ``"autotune"`` (measured once per shape; see :meth:`plan`).
      depthwise_implementation: for formats with a depthwise step:
        ``"auto"``, ``"shift"`` (shift-and-add) or ``"xla"`` (grouped conv).
      objective: what ``"auto"``/``"autotune"`` optimise: ``"inference"`` (forward) or
        ``"training"`` (forward and backward).
      precision: passed to XLA.

    Returns:
      ``(N, H', W', C_out)``.
    """
    opt.check_input(x, channels=self.in_features)
    p = self.plan(
      x.shape,
      strides=strides,
      padding=padding,
      dilation=dilation,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      objective=objective,
      dtype=x.dtype,
      precision=precision,
    )
    if p.implementation == "reconstructed":
      kernel = self.to_dense(precision=precision).astype(self.dtype)
      return dense_conv(x, kernel, strides=strides, padding=padding, dilation=dilation, precision=precision)  # type: ignore[arg-type]
    return self._factorized(x, strides, padding, dilation, p.depthwise or "auto", precision)


def _dense_macs(g: Geometry, kernel_hw: tuple[int, int], cin: int, cout: int) -> int:
  return g.batch * g.out_hw[0] * g.out_hw[1] * kernel_hw[0] * kernel_hw[1] * cin * cout


def check_factor(name: str, value: Any, ndim: int) -> tuple[int, ...] | None:
  """Returns the trailing ``ndim`` dims of a factor, or ``None`` for non-arrays.

  Non-array leaves appear when JAX rebuilds pytrees internally (e.g. with
  ``object()`` sentinels); leading extra axes are allowed for stacks of formats
  produced by ``vmap``.

  Raises:
    ValueError: naming ``name`` when the factor has fewer than ``ndim`` axes.
  """
  shape = getattr(value, "shape", None)
  if shape is None:
    return None
  if len(shape) < ndim:
    raise ValueError(f"{name} must have {ndim} axes, got shape {tuple(shape)}")
  return tuple(int(v) for v in shape[len(shape) - ndim :])


def register(cls: type) -> type:
  """Makes a format dataclass a JAX pytree whose leaves are its arrays.

  Unflattening does not call the constructor, so the shape checks of
  ``__post_init__`` run only when a format is built by hand. JAX and its
  libraries rebuild pytrees whose leaves are not factors of the right rank:
  ``jax.tree.map(jnp.sum, fmt)`` (used by ``optax.clip_by_global_norm`` and
  ``optax.tree_utils.tree_norm``), dtypes, or sentinels; those must not raise.
  Keys are the field names (``GetAttrKey``), as with
  :func:`jax.tree_util.register_dataclass`.
  """
  fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]

  def flatten_with_keys(fmt: Any) -> tuple[list[tuple[Any, Any]], None]:
    return [(jax.tree_util.GetAttrKey(name), getattr(fmt, name)) for name in fields], None

  def flatten(fmt: Any) -> tuple[list[Any], None]:
    return [getattr(fmt, name) for name in fields], None

  def unflatten(_: None, children: Sequence[Any]) -> Any:
    fmt = object.__new__(cls)
    for name, value in zip(fields, children):
      object.__setattr__(fmt, name, value)  # frozen dataclass: bypass __setattr__
    return fmt

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
  return cls

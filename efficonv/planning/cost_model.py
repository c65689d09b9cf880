"""The cost model behind ``implementation="auto"``: estimated seconds of each path of a conv.

A path is a list of :class:`Term` s — MACs of one kind of work plus the steps it launches — and its time is

.. math:: t = \\sum_i f_{\\mathrm{factor}_i} \\frac{\\mathrm{MACs}_i}{\\mathrm{rate}_{\\mathrm{kind}_i}}
  + f_{\\mathrm{step}} \\cdot \\mathrm{launches} \\cdot t_{\\mathrm{step}}

with the rates of :data:`efficonv.planning.RATES` and, for ``objective="training"``, the forward+backward
factors ``f`` of :data:`efficonv.planning.TRAINING_FACTORS` (all 1 for inference). The same accounting fits
the tables (``experiments.planner.fit_rates``) and makes the decision (:func:`plan_conv`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from efficonv.kernels import _options as opt
from efficonv.kernels import targets
from efficonv.kernels.depthwise import depthwise_implementation as resolve_depthwise
from efficonv.kernels.shapes import Geometry, conv_geometry, dense_macs
from efficonv.planning.plan import Plan, check_implementation, check_objective
from efficonv.planning.protocol import PlannableFormat
from efficonv.planning.rates import rates_for, training_factors_for
from efficonv.planning.tuning import autotune
from efficonv.typing import PrecisionLike


class Term(NamedTuple):
  """One kind of work in a path.

  Attributes:
    rate_kind: the key of its throughput in a :data:`~efficonv.planning.RATES` row (``"conv"``, ``"dot"``,
      ``"depthwise_shift"``, ``"depthwise_xla"``).
    factor_kind: the key of its forward+backward factor in a :data:`~efficonv.planning.TRAINING_FACTORS`
      row (``rate_kind``, or ``"depthwise_shift_multiplier"`` for a shift-and-add depthwise step with a depth
      multiplier).
    macs: multiply-accumulates.
    launches: steps it launches (each costs the row's fixed ``"step"`` time).
  """

  rate_kind: str
  factor_kind: str
  macs: int
  launches: int


def path_terms(fmt: PlannableFormat, g: Geometry, implementation: str, depthwise: str | None) -> list[Term]:
  """The terms of running ``fmt`` on geometry ``g`` as ``implementation``.

  Args:
    fmt: the format.
    g: the conv's geometry (:func:`efficonv.kernels.conv_geometry`).
    implementation: ``"factorized"`` (the format's own steps) or ``"reconstructed"`` (the reconstruction
      einsum — :meth:`~efficonv.Format.reconstruction_macs`, paid once per call whatever the batch, in two
      steps — then one dense conv).
    depthwise: the depthwise path (``"shift"``/``"xla"``) of a factorized sequence with depthwise steps.

  Returns:
    One term per step (factorized) or two (reconstructed).

  Raises:
    ValueError: naming ``implementation`` or ``depthwise`` when they cannot be costed.
  """
  if implementation == "reconstructed":
    return [
      Term("conv", "conv", dense_macs(g, fmt.kernel_size, fmt.in_features, fmt.out_features), 0),
      Term("dot", "dot", fmt.reconstruction_macs(), 2),
    ]
  if implementation != "factorized":
    raise ValueError(f"implementation must be 'factorized' or 'reconstructed' to be costed, got {implementation!r}")
  terms = []
  for kind, macs in fmt.steps(g):
    if kind.startswith("depthwise"):
      if depthwise not in ("shift", "xla"):
        raise ValueError(f"depthwise must be 'shift' or 'xla' for a format with depthwise steps, got {depthwise!r}")
      rate_kind = f"depthwise_{depthwise}"
      multiplier = kind == "depthwise_multiplier" and depthwise == "shift"
      terms.append(Term(rate_kind, rate_kind + ("_multiplier" if multiplier else ""), macs, 1))
    else:
      terms.append(Term(kind, kind, macs, 1))
  return terms


def estimate_seconds(
  terms: Sequence[Term],
  rates: Mapping[str, float],
  factors: Mapping[str, float] | None = None,
) -> float:
  """The model's time of a path (the formula in the module docstring).

  Args:
    terms: from :func:`path_terms`.
    rates: a row of :data:`~efficonv.planning.RATES`.
    factors: a row of :data:`~efficonv.planning.TRAINING_FACTORS` for the forward+backward time; ``None``
      for the forward time.

  Returns:
    Seconds.
  """

  def factor(kind: str) -> float:
    if factors is None:
      return 1.0
    return factors.get(kind, factors.get(kind.removesuffix("_multiplier"), 1.0))

  seconds = 0.0
  for t in terms:
    seconds += factor(t.factor_kind) * t.macs / rates[t.rate_kind]
    seconds += factor("step") * t.launches * rates["step"]
  return seconds


def plan_conv(
  fmt: PlannableFormat,
  input_shape: Sequence[int],
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  implementation: str = "auto",
  depthwise_implementation: str = "auto",
  objective: str = "inference",
  backend: str | None = None,
  dtype: Any = None,
  precision: PrecisionLike = None,
) -> Plan:
  """Chooses between ``fmt``'s factorized sequence and the reconstructed dense conv (see :meth:`efficonv.Format.plan`).

  ``backend=None`` plans for the backend planned for (:func:`efficonv.planning.plan_for`; by default the
  default backend); symbolic sizes in ``input_shape`` are planned for stand-ins
  (:func:`efficonv.kernels.targets.representative_shape`), which the reason names.

  Returns:
    A :class:`~efficonv.planning.Plan`.

  Raises:
    ValueError: naming ``implementation``, ``objective``, ``depthwise_implementation`` or the input that
      does not fit.
  """
  check_implementation(implementation)
  check_objective(objective)
  backend = backend or targets.current_backend()
  # Symbolic sizes (jax.export) are planned for stand-ins (efficonv.kernels.targets); the reason says so.
  input_shape, note = targets.representative_shape(input_shape)
  plan = _plan_conv(
    fmt,
    input_shape,
    strides,
    padding,
    dilation,
    implementation,
    depthwise_implementation,
    objective,
    backend,
    dtype,
    precision,
  )
  return dataclasses.replace(plan, reason=f"{plan.reason} ({note})") if note else plan


def _plan_conv(
  fmt: PlannableFormat,
  input_shape: tuple[int, ...],
  strides: int | Sequence[int],
  padding: opt.PaddingLike,
  dilation: int | Sequence[int],
  implementation: str,
  depthwise_implementation: str,
  objective: str,
  backend: str,
  dtype: Any,
  precision: PrecisionLike,
) -> Plan:
  g = conv_geometry(input_shape, fmt.kernel_size, fmt.in_features, strides, padding, dilation)
  # Validated for every format, so that a typo fails the same way whatever the format.
  dw_resolved = resolve_depthwise(depthwise_implementation, backend)
  if implementation == "autotune":
    return autotune(
      fmt,
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
  dw = dw_resolved if fmt.has_depthwise else None
  rates = rates_for(backend)
  factors = training_factors_for(backend) if objective == "training" else None
  fact_terms = path_terms(fmt, g, "factorized", dw)
  t_fact = estimate_seconds(fact_terms, rates, factors)
  t_dense = estimate_seconds(path_terms(fmt, g, "reconstructed", None), rates, factors)
  fact_macs = sum(t.macs for t in fact_terms)
  dense = dense_macs(g, fmt.kernel_size, fmt.in_features, fmt.out_features)
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

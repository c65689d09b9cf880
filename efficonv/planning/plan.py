"""What a format's ``conv`` will run for one input shape, and the names of the choices."""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple, get_args

Implementation = Literal["auto", "autotune", "factorized", "reconstructed"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
Objective = Literal["inference", "training"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
StepKind = Literal["conv", "dot", "depthwise", "depthwise_multiplier"]
STEP_KINDS: tuple[str, ...] = get_args(StepKind)


class Step(NamedTuple):
  """One step of a factorized sequence, for the cost model.

  Attributes:
    kind: ``"dot"`` (a 1×1 conv or channel contraction), ``"conv"`` (a dense spatial conv),
      ``"depthwise"`` (a per-channel spatial conv) or ``"depthwise_multiplier"`` (a depthwise conv with a
      depth multiplier above 1, whose backward pass costs more).
    macs: multiply-accumulates of the step, batch included.
  """

  kind: str
  macs: int


def check_implementation(implementation: object) -> str:
  """Returns ``implementation`` when it is one of :data:`IMPLEMENTATIONS`.

  Raises:
    ValueError: naming ``implementation`` and the allowed values.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  return str(implementation)


def check_objective(objective: object) -> str:
  """Returns ``objective`` when it is one of :data:`OBJECTIVES`.

  Raises:
    ValueError: naming ``objective`` and the allowed values.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  return str(objective)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What :meth:`efficonv.Format.conv` will run for one input shape, and why.

  Attributes:
    implementation: ``"factorized"`` or ``"reconstructed"``.
    depthwise: the depthwise path inside the factorized sequence (``"shift"``/``"xla"``), or ``None`` when
      the reconstructed path runs or the format has no depthwise step.
    reason: a human-readable justification (estimated or measured times, or "forced").
    factorized_macs: MACs of the factorized sequence (batch included).
    dense_macs: MACs of the dense conv with the reconstructed kernel.
    estimated_factorized_s: cost-model (or measured) time of the factorized path.
    estimated_reconstructed_s: cost-model (or measured) time of the reconstructed path.
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

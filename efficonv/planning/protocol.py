"""What the planner needs of a factorized format (the formats implement it; the planner never imports them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from efficonv.kernels.shapes import Geometry
from efficonv.planning.plan import Step
from efficonv.typing import Array


class PlannableFormat(Protocol):
  """A factorized kernel the planner can cost, time and run (:class:`efficonv.Format`)."""

  @property
  def has_depthwise(self) -> bool:
    """Whether the factorized sequence has a depthwise step (then it has two paths)."""
    ...

  @property
  def kernel_size(self) -> tuple[int, int]: ...

  @property
  def in_features(self) -> int: ...

  @property
  def out_features(self) -> int: ...

  @property
  def dtype(self) -> Any: ...

  def params(self) -> int: ...

  def arrays(self) -> list[Array]: ...

  def steps(self, g: Geometry) -> list[Step]: ...

  def reconstruction_macs(self) -> int: ...

  def conv(
    self,
    x: Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Any = "SAME",
    dilation: int | Sequence[int] = 1,
    implementation: Any = "auto",
    depthwise_implementation: str = "auto",
    objective: Any = "inference",
    precision: Any = None,
  ) -> Array: ...

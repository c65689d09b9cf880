"""What :mod:`experiments.bench.layers` times: the shapes, the schemes, their variants.

Ranks are chosen per scheme so that the factorized MACs are roughly 4–16×
below the dense conv's (where the scheme allows it):

=================  ==========================================  =====================
scheme             layer                                       MAC ratio (3×3, C)
=================  ==========================================  =====================
``cp``             ``CPConv(rank=C/4)``                        ~17
``tucker2``        ``TuckerConv(rank=(C/4, C/4))``             ~8.5
``tt``             ``TTConv(rank=(2, 4))``, 2 cores            5–11 (C = 64…256)
``spatial``        ``SpatialConv(rank=C/4)``                   ~6
``separable_m1``   ``SeparableConv(depth_multiplier=1)``       ~8
``separable_m4``   ``SeparableConv(depth_multiplier=4)``       ~2
``bottleneck``     ``Bottleneck(width=C/4, activation=relu)``  ~8.5
``stacked``        ``StackedConv(small 3×3, relu)``            1.39 (5×5 only)
=================  ==========================================  =====================

TT with ranks 8 on two cores costs *more* MACs than the dense conv at
C = 64 (MAC ratio 0.89), so the spatial rank is 2 and the inner rank 4.
Spatial at rank C/2 saves only 3×; C/4 is used. Separable with multiplier 4
and stacked convs cannot reach 4× at these sizes; they are timed as asked.
Stacked 3×3s only exist for the 5×5 shape (a 3×3 "stack" is the dense conv).

Every layer is built with ``use_bias=False``: it then computes exactly what
the dense conv it is compared with computes (bias adds are not MACs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from flax import nnx

from efficonv.nnx import Bottleneck, CPConv, FactorizedConv, SeparableConv, SpatialConv, StackedConv, TTConv, TuckerConv


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmarked convolution: NHWC input ``(n, h, w, c)``, ``c → c``, ``k×k`` kernel, SAME, stride 1."""

  n: int
  h: int
  w: int
  c: int
  k: int

  @property
  def input_shape(self) -> tuple[int, int, int, int]:
    return (self.n, self.h, self.w, self.c)

  @property
  def kernel_size(self) -> tuple[int, int]:
    return (self.k, self.k)

  @property
  def dense_macs(self) -> int:
    return self.n * self.h * self.w * self.k * self.k * self.c * self.c

  @property
  def label(self) -> str:
    return f"{self.n}x{self.h}x{self.w}x{self.c} k{self.k}"


SPATIAL_SHAPES: tuple[tuple[int, int, int, int], ...] = (
  (32, 32, 64, 3),
  (16, 16, 128, 3),
  (8, 8, 256, 3),
  (16, 16, 128, 5),
)
BATCHES_FULL = (1, 8, 64)
BATCHES_QUICK = (8,)


def shapes(batches: Sequence[int]) -> list[Shape]:
  """Every ``(batch, spatial shape)`` combination, batch-major."""
  return [Shape(n, h, w, c, k) for n in batches for (h, w, c, k) in SPATIAL_SHAPES]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One way to run one scheme.

  Attributes:
    scheme: e.g. ``"cp"``.
    implementation: ``"factorized"``, ``"reconstructed"`` or ``"auto"``.
    depthwise: ``"shift"``/``"xla"`` when forced for a factorized scheme with a
      depthwise step; ``None`` otherwise.
    layer: the NNX layer (no bias).
    note: the layer and its ranks.
  """

  scheme: str
  implementation: str
  depthwise: str | None
  layer: nnx.Module
  note: str

  @property
  def label(self) -> str:
    """``scheme/implementation[/depthwise]``."""
    return "/".join(p for p in (self.scheme, self.implementation, self.depthwise) if p)


LayerBuilder = Callable[[Shape, nnx.Rngs], nnx.Module]


@dataclasses.dataclass(frozen=True)
class Scheme:
  """A factorization scheme and how its layer is built for a shape.

  Attributes:
    name: the scheme label.
    build: ``(shape, rngs) -> layer`` with ``implementation="auto"`` and no bias.
    describe: ``shape -> note`` (the layer and its ranks).
    has_depthwise: whether the factorized path has a depthwise step (timed
      through both ``"shift"`` and ``"xla"``).
    switchable: whether the layer is a :class:`FactorizedConv` with a dense
      reconstruction (``factorized``/``reconstructed``/``auto`` all timed);
      otherwise only its own (factorized) forward is timed.
    applies: ``shape -> bool``, whether the scheme exists for the shape.
  """

  name: str
  build: LayerBuilder
  describe: Callable[[Shape], str]
  has_depthwise: bool = False
  switchable: bool = True
  applies: Callable[[Shape], bool] = lambda s: True

  def variants(self, shape: Shape, rngs: nnx.Rngs) -> list[Variant]:
    """The variants of this scheme on ``shape``, all sharing one set of factors."""
    layer = self.build(shape, rngs)
    note = self.describe(shape)
    if not self.switchable:
      return [Variant(self.name, "factorized", None, layer, note)]
    assert isinstance(layer, FactorizedConv)
    out = []
    for dw in ("shift", "xla") if self.has_depthwise else (None,):
      forced = type(layer).from_format(
        layer.format, use_bias=False, implementation="factorized", depthwise_implementation=dw or "auto"
      )
      out.append(Variant(self.name, "factorized", dw, forced, note))
    out.append(
      Variant(
        self.name,
        "reconstructed",
        None,
        type(layer).from_format(layer.format, use_bias=False, implementation="reconstructed"),
        note,
      )
    )
    out.append(Variant(self.name, "auto", None, layer, note))
    return out


def _tt_ranks(shape: Shape) -> tuple[int, int]:
  del shape
  return (2, 4)


SCHEMES: tuple[Scheme, ...] = (
  Scheme(
    "cp",
    lambda s, r: CPConv(s.c, s.c, s.kernel_size, rank=s.c // 4, use_bias=False, rngs=r),
    lambda s: f"CPConv rank {s.c // 4}",
    has_depthwise=True,
  ),
  Scheme(
    "tucker2",
    lambda s, r: TuckerConv(s.c, s.c, s.kernel_size, rank=(s.c // 4, s.c // 4), use_bias=False, rngs=r),
    lambda s: f"TuckerConv ranks ({s.c // 4}, {s.c // 4})",
  ),
  Scheme(
    "tt",
    lambda s, r: TTConv(s.c, s.c, s.kernel_size, rank=_tt_ranks(s), use_bias=False, rngs=r),
    lambda s: f"TTConv ranks {_tt_ranks(s)}, 2 cores",
    has_depthwise=True,
  ),
  Scheme(
    "spatial",
    lambda s, r: SpatialConv(s.c, s.c, s.kernel_size, rank=s.c // 4, use_bias=False, rngs=r),
    lambda s: f"SpatialConv rank {s.c // 4}",
  ),
  Scheme(
    "separable_m1",
    lambda s, r: SeparableConv(s.c, s.c, s.kernel_size, depth_multiplier=1, use_bias=False, rngs=r),
    lambda s: "SeparableConv depth_multiplier 1",
    has_depthwise=True,
  ),
  Scheme(
    "separable_m4",
    lambda s, r: SeparableConv(s.c, s.c, s.kernel_size, depth_multiplier=4, use_bias=False, rngs=r),
    lambda s: "SeparableConv depth_multiplier 4",
    has_depthwise=True,
  ),
  Scheme(
    "bottleneck",
    lambda s, r: Bottleneck(s.c, s.c, s.kernel_size, width=s.c // 4, activation=nnx.relu, use_bias=False, rngs=r),
    lambda s: f"Bottleneck width {s.c // 4}, relu",
    switchable=False,
  ),
  Scheme(
    "stacked",
    lambda s, r: StackedConv(s.c, s.c, s.kernel_size, small_kernel_size=3, activation=nnx.relu, use_bias=False, rngs=r),
    lambda s: f"StackedConv {(s.k - 1) // 2}× 3×3, relu",
    switchable=False,
    applies=lambda s: s.k > 3,
  ),
)


def variants_for(shape: Shape, schemes: Sequence[Scheme] = SCHEMES, seed: int = 0) -> list[Variant]:
  """Every variant of every applicable scheme on ``shape``."""
  rngs = nnx.Rngs(seed)
  return [v for scheme in schemes if scheme.applies(shape) for v in scheme.variants(shape, rngs)]

"""The convolution schemes compared by the experiments, and the layer each one puts in place of a conv.

Every model in :mod:`experiments.models` keeps its first conv (the stem: few input channels, nothing to gain)
a dense 3×3 and builds every later ``k×k`` conv with :func:`scheme_conv` — except ``spatial_stem`` (or any
scheme of :data:`STEM_FACTORIZABLE` with ``ModelConfig.factorize_stem``), which builds the stem with the
scheme's layer too (:func:`stem_conv`). With ``C_in = C_out = C`` and
``k = 3`` the MACs per output pixel are:

================  ==================================================  ==============================
scheme            layer                                               MACs / pixel (default ranks)
================  ==================================================  ==============================
``dense``         ``nnx.Conv`` k×k                                    ``9C²``
``dense5``        ``nnx.Conv`` 5×5 (the reference of ``stacked``)     ``25C²``
``stacked``       ``StackedConv``: two 3×3 with ReLU, 5×5 field       ``18C²`` (vs ``dense5``)
``spatial``       ``SpatialConv`` k×1 then 1×k, rank ``C/2``          ``3C²``
``spatial_stem``  ``spatial``, the stem a ``SpatialConv`` too         as ``spatial`` (vs ``spatial``)
``bottleneck``    ``Bottleneck`` 1×1 → k×k → 1×1, ReLU, width ``C/2``  ``3.25C²``
``separable_m1``  ``SeparableConv``, depth multiplier m = 1             ``9mC + mC²``
``separable_m4``  ``SeparableConv``, depth multiplier m = 4             ``9mC + mC²``
``separable_m8``  ``SeparableConv``, depth multiplier m = 8             ``9mC + mC²``
``cp``            ``CPConv``, rank ``C``                              ``≈2C²``
``tucker2``       ``TuckerConv`` (linear), ranks ``(C/2, C/2)``       ``3.25C²``
``tt``            ``TTConv``, ranks ``(3, C/4)``, two channel modes   ``≈9C²`` (compresses params)
``wide``          ``nnx.Conv``; pairs of convs merged, ``√2×`` wider  as ``dense``, half the layers
================  ==================================================  ==============================

Design of ``stacked``: a ``StackedConv`` replacing a 3×3 could only be two 2×2s, which nobody uses. The
claim worth testing is VGG's — two 3×3 convs replace one 5×5 with ``18/25`` of the cost and an extra
nonlinearity — so ``stacked`` is compared with the ``dense5`` network (the same network with 5×5 kernels),
given as its reference by :data:`REFERENCE`; both are also compared with the 3×3 ``dense`` baseline.

Design of ``wide`` (the claim: fewer but wider layers run faster at equal MACs, because a wide conv uses the
hardware better than two narrow ones in sequence): each run of ``n`` convs at one resolution becomes
``ceil(n/2)`` convs ``√2×`` as wide — the MACs of a ``C→C`` pair, ``2·9C²``, equal those of one ``√2C→√2C``
conv. In a ResNet the two convs of each basic block merge into one. Widths are rounded to multiples of 4.

Design of ``spatial_stem`` (the claim, Szegedy et al. 2016: factorizing convs hurts near the input, so keep
the first layers dense): the ``spatial`` network with the stem also a ``SpatialConv`` (3×1 then 1×3),
compared with ``spatial`` (:data:`REFERENCE`), so the stem is the only difference. Its rank is
``spatial_rank · stem_features`` clipped to ``3·C_in``, the rank of a full 3×3 kernel on ``C_in`` input
channels: on 1-channel images (Fashion-MNIST) the stem gets rank 3, can represent every dense stem, and costs
``9 + 9C`` instead of ``9C`` MACs per pixel — the comparison measures what the factorized parametrization
does to training, not a loss of capacity. (Every ``spatial`` rank is clipped to ``k·min(C_in, C_out)``;
only such narrow inputs reach the bound.)

The linear layers get no bias (a BatchNorm follows each); the nonlinear ones (``stacked``, ``bottleneck``)
keep their inner biases. Ranks are fractions of the layer's output channels (:class:`ModelConfig`), rounded
and at least 1.
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx

from efficonv.layer_options import tt_modes
from efficonv.nnx import (
  Bottleneck,
  CPConv,
  SeparableConv,
  SpatialConv,
  StackedConv,
  TTConv,
  TuckerConv,
)
from experiments.common.config import ModelConfig

SCHEMES: tuple[str, ...] = (
  "dense",
  "dense5",
  "stacked",
  "spatial",
  "spatial_stem",
  "bottleneck",
  "separable_m1",
  "separable_m4",
  "separable_m8",
  "cp",
  "tucker2",
  "tt",
  "wide",
)
"""Every scheme, in table order."""

REFERENCE: dict[str, str] = {"stacked": "dense5", "spatial_stem": "spatial"}
"""Schemes whose natural reference is not the ``dense`` baseline."""

STEM_VARIANTS: dict[str, str] = {"spatial_stem": "spatial"}
"""Schemes that are another scheme (the value) with the stem factorized too."""

STEM_FACTORIZABLE: tuple[str, ...] = ("spatial", "cp", "tucker2")
"""Schemes whose layer may replace the stem (``ModelConfig.factorize_stem``): linear factorizations of a
3×3 kernel that take any number of input channels. Not ``dense``/``dense5``/``wide`` (nothing factorized),
``stacked`` (a 5×5 field), ``bottleneck`` (nonlinear), ``separable*`` (a 1-channel depthwise step is a dense
conv) or ``tt`` (its channel modes need factorable channel counts)."""

_SEPARABLE_PREFIX = "separable_m"


def check_scheme(scheme: str) -> str:
  """Returns ``scheme`` if it is one of :data:`SCHEMES`.

  Raises:
    ValueError: naming ``scheme`` otherwise.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  return scheme


def reference_of(scheme: str, baseline: str = "dense") -> str:
  """The scheme ``scheme`` is best compared with: :data:`REFERENCE` or ``baseline``."""
  return REFERENCE.get(check_scheme(scheme), baseline)


def base_scheme(scheme: str) -> str:
  """The scheme whose layer ``scheme`` builds: ``spatial`` for ``spatial_stem``, else ``scheme`` itself."""
  return STEM_VARIANTS.get(check_scheme(scheme), scheme)


def factorizes_stem(cfg: ModelConfig) -> bool:
  """Whether the model's stem is built with the scheme's layer (``factorize_stem`` or a :data:`STEM_VARIANTS`)."""
  return cfg.factorize_stem or check_scheme(cfg.scheme) in STEM_VARIANTS


def stem_conv(cfg: ModelConfig, in_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """The stem: a dense 3×3 ``in_features → stem_features`` conv, or the scheme's 3×3 layer (:func:`factorizes_stem`).

  Args:
    cfg: ``scheme``, ``factorize_stem``, ``stem_features`` and the ranks.
    in_features: channels of the images.
    rngs: parameter initialization.

  Returns:
    A stride-1 ``SAME`` module mapping ``(N, H, W, in_features)`` to ``(N, H, W, stem_features)``.

  Raises:
    ValueError: naming ``cfg.factorize_stem`` when the stem is to be factorized with a scheme not in
      :data:`STEM_FACTORIZABLE`.
  """
  if not factorizes_stem(cfg):
    return nnx.Conv(in_features, cfg.stem_features, (3, 3), use_bias=False, rngs=rngs)
  scheme = base_scheme(cfg.scheme)
  if scheme not in STEM_FACTORIZABLE:
    raise ValueError(
      f"cfg.factorize_stem needs a scheme whose layer can replace the stem, one of {STEM_FACTORIZABLE}, "
      f"got scheme {cfg.scheme!r}"
    )
  # The stem stays 3×3 whatever kernel_size the later convs use.
  stem_cfg = dataclasses.replace(cfg, kernel_size=3)
  return scheme_conv(scheme, in_features, cfg.stem_features, strides=1, cfg=stem_cfg, rngs=rngs)


def fraction_rank(fraction: float, features: int, bound: int | None = None) -> int:
  """``round(fraction · features)``, at least 1 and at most ``bound``.

  Raises:
    ValueError: naming ``fraction`` when it is not positive.
  """
  if not fraction > 0:
    raise ValueError(f"fraction must be positive, got {fraction!r}")
  rank = max(1, round(fraction * features))
  return rank if bound is None else min(rank, bound)


def widen(features: int, factor: float) -> int:
  """``features · factor`` rounded to a multiple of 4 (at least 4)."""
  return max(4, 4 * round(features * factor / 4))


def scheme_kernel_size(scheme: str, cfg: ModelConfig) -> int:
  """The receptive field of the scheme's convs: ``large_kernel_size`` for ``dense5``/``stacked``."""
  return cfg.large_kernel_size if check_scheme(scheme) in ("dense5", "stacked") else cfg.kernel_size


def scheme_conv(
  scheme: str,
  in_features: int,
  out_features: int,
  *,
  strides: int,
  cfg: ModelConfig,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """The layer ``scheme`` puts in place of a ``k×k`` conv (padding ``SAME``).

  Args:
    scheme: one of :data:`SCHEMES`.
    in_features: input channels.
    out_features: output channels.
    strides: stride of the conv.
    cfg: ranks, kernel sizes and ``implementation``.
    rngs: parameter initialization.

  Returns:
    A module mapping ``(N, H, W, in_features)`` to ``(N, H / strides, W / strides, out_features)``.

  Raises:
    ValueError: naming ``scheme`` when it is unknown.
  """
  scheme = base_scheme(scheme)
  k = scheme_kernel_size(scheme, cfg)
  common = {"strides": strides, "padding": "SAME", "rngs": rngs}
  factorized = {**common, "use_bias": False, "implementation": cfg.implementation}
  if scheme in ("dense", "dense5", "wide"):
    return nnx.Conv(in_features, out_features, (k, k), use_bias=False, **common)
  if scheme == "stacked":
    return StackedConv(in_features, out_features, k, small_kernel_size=3, activation=nnx.relu, **common)
  if scheme == "spatial":
    # Bound: the rank of the (k·C_in)×(k·C_out) unfolding (reached only by narrow inputs, e.g. a 1-channel stem).
    rank = fraction_rank(cfg.spatial_rank, out_features, k * min(in_features, out_features))
    return SpatialConv(in_features, out_features, k, rank=rank, **factorized)
  if scheme == "bottleneck":
    width = fraction_rank(cfg.bottleneck_width, out_features)
    return Bottleneck(in_features, out_features, k, width=width, activation=nnx.relu, **common)
  if scheme.startswith(_SEPARABLE_PREFIX):
    multiplier = int(scheme[len(_SEPARABLE_PREFIX) :])
    return SeparableConv(in_features, out_features, k, depth_multiplier=multiplier, **factorized)
  if scheme == "cp":
    return CPConv(in_features, out_features, k, rank=fraction_rank(cfg.cp_rank, out_features), **factorized)
  if scheme == "tucker2":
    r = fraction_rank(cfg.tucker_rank, out_features)
    return TuckerConv(in_features, out_features, k, rank=(min(r, in_features), r), **factorized)
  if scheme == "tt":
    in_modes, out_modes = tt_modes(in_features, out_features, None, None)
    r0 = min(cfg.tt_spatial_rank, k * k)
    # Bound of r_1: the smaller side of the unfolding (k²·c_1·s_1) × (c_2·s_2).
    bound = min(k * k * in_modes[0] * out_modes[0], math.prod(in_modes[1:]) * math.prod(out_modes[1:]))
    r1 = fraction_rank(cfg.tt_rank, out_features, bound)
    return TTConv(in_features, out_features, k, rank=(r0, r1), in_modes=in_modes, out_modes=out_modes, **factorized)
  raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")

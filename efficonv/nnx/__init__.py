"""Flax NNX layers: drop-in replacements for :class:`flax.nnx.Conv` (the primary API)."""

from efficonv.nnx._base import FactorizedConv as FactorizedConv
from efficonv.nnx._base import set_objective as set_objective
from efficonv.nnx.bottleneck import Bottleneck as Bottleneck
from efficonv.nnx.conv import Conv as Conv
from efficonv.nnx.cp import CPConv as CPConv
from efficonv.nnx.separable import SeparableConv as SeparableConv
from efficonv.nnx.spatial import SpatialConv as SpatialConv
from efficonv.nnx.stacked import StackedConv as StackedConv
from efficonv.nnx.tt import TTConv as TTConv
from efficonv.nnx.tucker import TuckerConv as TuckerConv

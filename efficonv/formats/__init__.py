"""Factorized-kernel formats: pytrees with ``to_dense()`` and ``conv()``."""

from efficonv.formats._base import Format as Format
from efficonv.formats._base import Plan as Plan
from efficonv.formats.cp import CP as CP
from efficonv.formats.separable import Separable as Separable
from efficonv.formats.spatial import Spatial as Spatial
from efficonv.formats.tt import TT as TT
from efficonv.formats.tucker2 import Tucker2 as Tucker2

"""Factorized-kernel formats: pytrees with ``to_dense()`` and ``conv()``, each owning its scheme's facts."""

from efficonv.formats.cp import CP as CP
from efficonv.formats.format import Format as Format
from efficonv.formats.format import Unfolding as Unfolding
from efficonv.formats.ranks import RankLike as RankLike
from efficonv.formats.separable import Separable as Separable
from efficonv.formats.spatial import Spatial as Spatial
from efficonv.formats.tt import TT as TT
from efficonv.formats.tucker2 import Tucker2 as Tucker2

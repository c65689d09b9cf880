"""efficonv: every scheme for speeding up convolutions, done right in JAX."""

from efficonv import cost as cost
from efficonv import decompose as decompose
from efficonv import kernels as kernels
from efficonv import rank as rank
from efficonv.compress import Policy as Policy
from efficonv.compress import compress as compress
from efficonv.formats import CP as CP
from efficonv.formats import TT as TT
from efficonv.formats import Format as Format
from efficonv.formats import Plan as Plan
from efficonv.formats import Separable as Separable
from efficonv.formats import Spatial as Spatial
from efficonv.formats import Tucker2 as Tucker2

__version__ = "0.1.0"

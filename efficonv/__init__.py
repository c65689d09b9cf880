"""efficonv: every scheme for speeding up convolutions, done right in JAX.

The pure-JAX parts — :mod:`efficonv.kernels`, the formats (:class:`CP`, :class:`Tucker2`, :class:`TT`,
:class:`Spatial`, :class:`Separable`), :mod:`efficonv.planning`, :mod:`efficonv.decompose`,
:mod:`efficonv.rank` and :mod:`efficonv.schemes` — import without Flax. The Flax parts —
:mod:`efficonv.nnx`, :mod:`efficonv.linen`, :mod:`efficonv.cost`, :func:`compress` and :func:`search` — are
imported on first use (``efficonv.nnx`` or ``from efficonv import nnx``).
"""

import importlib
from typing import Any

from efficonv import decompose as decompose
from efficonv import kernels as kernels
from efficonv import planning as planning
from efficonv import rank as rank
from efficonv import schemes as schemes
from efficonv.formats import CP as CP
from efficonv.formats import TT as TT
from efficonv.formats import Format as Format
from efficonv.formats import Separable as Separable
from efficonv.formats import Spatial as Spatial
from efficonv.formats import Tucker2 as Tucker2
from efficonv.planning import Plan as Plan

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself); these need Flax.
_LAZY = {
  "nnx": ("efficonv.nnx", None),
  "linen": ("efficonv.linen", None),
  "cost": ("efficonv.cost", None),
  "compress": ("efficonv.compression", "compress"),
  "Policy": ("efficonv.compression", "Policy"),
  "search": ("efficonv.policy_search", "search"),
  "SearchReport": ("efficonv.policy_search", "SearchReport"),
}


def __getattr__(name: str) -> Any:
  if name not in _LAZY:
    raise AttributeError(f"module 'efficonv' has no attribute {name!r}")
  module_name, attribute = _LAZY[name]
  module = importlib.import_module(module_name)
  value = module if attribute is None else getattr(module, attribute)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__() -> list[str]:
  return sorted([*globals(), *_LAZY])

"""The scheme registry: one table from each scheme's name to its format, layers and decomposition.

The scheme's own facts (name, valid ranks, unfoldings, factor shapes, cost steps) live on its format class
(:class:`efficonv.Format`); this table only joins each format to the code that uses it elsewhere. The layers
are imported when first asked for, so that ``efficonv.schemes`` (and the formats, decompositions and rank
rules that consult it) import without Flax.

* ``cp``: :class:`~efficonv.CP`, ``efficonv.nnx.CPConv``, ``efficonv.linen.CPConv``, :func:`efficonv.decompose.cp`
* ``tucker2``: :class:`~efficonv.Tucker2`, ``TuckerConv`` (both), :func:`efficonv.decompose.tucker2`
* ``tt``: :class:`~efficonv.TT`, ``TTConv`` (both), :func:`efficonv.decompose.tt`
* ``spatial``: :class:`~efficonv.Spatial`, ``SpatialConv`` (both), :func:`efficonv.decompose.spatial`
* ``separable``: :class:`~efficonv.Separable`, ``SeparableConv`` (both), :func:`efficonv.decompose.separable`

Example:
  >>> from efficonv import schemes
  >>> schemes.names()
  ('cp', 'tucker2', 'tt', 'spatial', 'separable')
  >>> schemes.get("tucker2").format.max_rank((3, 3, 64, 32))
  (64, 32)
  >>> schemes.get("cp").nnx_layer.__name__
  'CPConv'
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from efficonv.formats import CP, TT, Format, Separable, Spatial, Tucker2


@dataclasses.dataclass(frozen=True)
class Scheme:
  """One row of the registry.

  Attributes:
    format: the format class; its :attr:`~efficonv.Format.scheme` is the scheme's name.
    nnx_path: ``"module:Name"`` of the NNX layer.
    linen_path: ``"module:Name"`` of the Linen layer.
    decompose_path: ``"module:name"`` of the decomposition function, ``fn(kernel, rank, **options) ->
      (format, FitInfo)``.
  """

  format: type[Format]
  nnx_path: str
  linen_path: str
  decompose_path: str

  @property
  def name(self) -> str:
    """The scheme's name (the format's)."""
    return self.format.scheme

  @property
  def nnx_layer(self) -> Any:
    """The NNX layer class (imports Flax)."""
    return _load(self.nnx_path)

  @property
  def linen_layer(self) -> Any:
    """The Linen layer class (imports Flax)."""
    return _load(self.linen_path)

  @property
  def decompose(self) -> Callable[..., tuple[Format, Any]]:
    """The decomposition function."""
    return _load(self.decompose_path)


def _load(path: str) -> Any:
  module, _, name = path.partition(":")
  return getattr(importlib.import_module(module), name)


SCHEMES: dict[str, Scheme] = {
  s.name: s
  for s in (
    Scheme(CP, "efficonv.nnx:CPConv", "efficonv.linen:CPConv", "efficonv.decompose:cp"),
    Scheme(Tucker2, "efficonv.nnx:TuckerConv", "efficonv.linen:TuckerConv", "efficonv.decompose:tucker2"),
    Scheme(TT, "efficonv.nnx:TTConv", "efficonv.linen:TTConv", "efficonv.decompose:tt"),
    Scheme(Spatial, "efficonv.nnx:SpatialConv", "efficonv.linen:SpatialConv", "efficonv.decompose:spatial"),
    Scheme(Separable, "efficonv.nnx:SeparableConv", "efficonv.linen:SeparableConv", "efficonv.decompose:separable"),
  )
}


def names() -> tuple[str, ...]:
  """Every scheme's name, in registry order."""
  return tuple(SCHEMES)


def get(name: str) -> Scheme:
  """The registry row of scheme ``name``.

  Raises:
    ValueError: naming ``scheme`` and the known names.
  """
  try:
    return SCHEMES[name]
  except (KeyError, TypeError):
    raise ValueError(f"scheme must be one of {names()}, got {name!r}") from None


def of_format(fmt: Format | type[Format]) -> Scheme:
  """The registry row of a format (instance or class).

  Raises:
    ValueError: naming ``fmt`` when it is not a registered format.
  """
  cls = fmt if isinstance(fmt, type) else type(fmt)
  for scheme in SCHEMES.values():
    if scheme.format is cls:
      return scheme
  raise ValueError(
    f"fmt must be one of the registered formats {[s.format.__name__ for s in SCHEMES.values()]}, got {cls!r}"
  )

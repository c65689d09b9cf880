"""The scheme registry, and each scheme's rank range as the one fact every user of it agrees on."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np
import pytest

import efficonv
from efficonv import schemes
from efficonv.formats.tt import tt_rank_bounds

SHAPES = [(3, 3, 6, 4), (3, 3, 8, 8), (1, 3, 4, 6), (5, 5, 2, 12)]
TT_OPTIONS = {(3, 3, 6, 4): {"in_modes": (2, 3), "out_modes": (2, 2)}}


def _options(scheme: str, shape: tuple[int, ...]) -> dict[str, Any]:
  return TT_OPTIONS.get(shape, {}) if scheme == "tt" else {}


def test_registry_names_are_the_formats_names() -> None:
  assert schemes.names() == ("cp", "tucker2", "tt", "spatial", "separable")
  for name in schemes.names():
    row = schemes.get(name)
    assert row.name == row.format.scheme == name
    assert schemes.of_format(row.format) is row


def test_registry_rows_resolve_to_the_layers_and_decompositions() -> None:
  for name in schemes.names():
    row = schemes.get(name)
    assert row.nnx_layer.format_type is row.format
    assert callable(row.decompose) and row.decompose.__name__ == name
    assert row.linen_layer.__module__.startswith("efficonv.linen")


def test_unknown_scheme_names_the_argument() -> None:
  with pytest.raises(ValueError, match=r"scheme must be one of .*'tucker'"):
    schemes.get("tucker")
  with pytest.raises(ValueError, match="fmt must be one of the registered formats"):
    schemes.of_format(int)  # type: ignore[arg-type]  # deliberately wrong


def _candidate_ranks(scheme: str, shape: tuple[int, ...], options: dict[str, Any]) -> list[Any]:
  top = schemes.get(scheme).format.max_rank(shape, **options)
  if isinstance(top, tuple):
    axes = [sorted({1, max(1, t // 2), t, t + 1}) for t in top]
    return list(itertools.product(*axes))
  return sorted({1, max(1, top // 2), top, top + 1})


def _accepts(fn: Any, *args: Any, **kwargs: Any) -> bool:
  try:
    jax.eval_shape(lambda: fn(*args, **kwargs))
  except ValueError:
    return False
  return True


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scheme", schemes.names())
def test_init_decompose_and_rank_rules_accept_the_same_ranks(scheme: str, shape: tuple[int, int, int, int]) -> None:
  """``Format.init``, the decomposition and ``rank.Fixed`` (unclipped) agree on every rank, valid or not."""
  row = schemes.get(scheme)
  options = _options(scheme, shape)
  kernel = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  kh, kw, cin, cout = shape
  for rank in _candidate_ranks(scheme, shape, options):
    by_init = _accepts(row.format.init, jax.random.key(0), cin, cout, (kh, kw), rank, **options)
    by_decompose = _accepts(row.decompose, kernel, rank, **options)
    choice = efficonv.rank.choose_rank(scheme, shape, rank, **options)
    assert by_init == by_decompose == (not choice.details["clipped"]), (scheme, shape, rank)


def test_tt_init_and_decompose_agree_on_the_issue_example() -> None:
  """(1, 6) for a 3×3 kernel with modes (2, 3)/(2, 2): r_1 ≤ r_0·c_1·s_1 = 4, so both reject it."""
  w = np.ones((3, 3, 6, 4), np.float32)
  modes = {"in_modes": (2, 3), "out_modes": (2, 2)}
  with pytest.raises(ValueError, match=r"rank\[1\] must be in \[1, 4\]"):
    efficonv.TT.init(jax.random.key(0), 6, 4, 3, (1, 6), **modes)
  with pytest.raises(ValueError, match=r"rank\[1\] must be in \[1, 4\]"):
    efficonv.decompose.tt(w, (1, 6), **modes)
  assert efficonv.TT.init(jax.random.key(0), 6, 4, 3, (1, 4), **modes).rank == (1, 4)
  assert tt_rank_bounds((3, 3, 6, 4), (1, 6), **modes) == ((1, 4), (9, 4))


def test_integer_like_ranks_are_accepted() -> None:
  for value in (np.int64(3), jax.numpy.int32(3)):
    assert efficonv.CP.init(jax.random.key(0), 8, 8, 3, value).rank == 3
  assert efficonv.Tucker2.check_rank((np.int32(2), 3), (3, 3, 8, 8)) == (2, 3)
  with pytest.raises(ValueError, match=r"rank must be an int for scheme .cp."):
    efficonv.CP.check_rank(2.5, (3, 3, 8, 8))


@pytest.mark.parametrize("scheme", schemes.names())
def test_abstract_instances_cost_like_real_ones(scheme: str) -> None:
  shape = (3, 3, 8, 8)
  row = schemes.get(scheme)
  rank = row.format.rank_family(2, shape)
  real = row.format.init(jax.random.key(0), 8, 8, 3, rank)
  abstract = row.format.abstract(shape, rank)
  assert abstract.params() == real.params()
  assert abstract.macs((2, 8, 8, 8)) == real.macs((2, 8, 8, 8))
  assert abstract.plan((2, 8, 8, 8)).implementation == real.plan((2, 8, 8, 8)).implementation


@pytest.mark.parametrize("scheme", schemes.names())
def test_unfoldings_are_the_same_for_numpy_and_jax(scheme: str) -> None:
  kernel = np.random.default_rng(1).standard_normal((3, 3, 4, 6))
  fmt = schemes.get(scheme).format
  for a, b in zip(fmt.unfoldings(kernel), fmt.unfoldings(jax.numpy.asarray(kernel))):
    assert a.name == b.name
    np.testing.assert_allclose(np.asarray(b.matrix), a.matrix, rtol=1e-6)

"""Tests of option normalisation: ``pair``, ``resolve_padding``, ``pad_input``, ``output_size``."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv.kernels import effective_size, output_size, pad_input, pair, resolve_padding


@pytest.mark.parametrize(
  ("value", "expected"),
  [(1, (1, 1)), (3, (3, 3)), ((2, 3), (2, 3)), ([2, 1], (2, 1)), (np.int64(2), (2, 2)), ((np.int32(2), 1), (2, 1))],
)
def test_pair_accepts_ints_and_pairs(value: object, expected: tuple[int, int]) -> None:
  assert pair(value, "strides") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, (1, 0), 1.5, (1.5, 2), (2,), (1, 2, 3), True, "2", None])
@pytest.mark.parametrize("name", ["strides", "dilation"])
def test_pair_rejects_naming_the_argument(value: object, name: str) -> None:
  with pytest.raises(ValueError, match=f"^{name} must"):
    pair(value, name)  # type: ignore[arg-type]


def test_effective_size_and_output_size() -> None:
  # A 3-tap kernel dilated by 2 spans 5 pixels; 11 + 1 + 2 padded pixels give (14 - 5) // 2 + 1 = 5 outputs.
  assert effective_size(3, 2) == 5
  assert effective_size(1, 4) == 1
  assert output_size(11, 3, 2, 2, 1, 2) == 5


_GRID = list(itertools.product(range(1, 10), range(1, 6), range(1, 4), range(1, 4)))


def test_same_matches_lax_padtype_to_pads() -> None:
  for n, k, s, d in _GRID:
    pads, mode = resolve_padding("SAME", (n, n + 1), (k, 1), (s, 1), (d, 1))
    assert mode == "constant"
    expected = jax.lax.padtype_to_pads((n, n + 1), (effective_size(k, d), 1), (s, 1), "SAME")
    assert [tuple(p) for p in pads] == [tuple(p) for p in expected], (n, k, s, d)


@pytest.mark.parametrize(("padding", "mode"), [("CIRCULAR", "wrap"), ("REFLECT", "reflect"), ("circular", "wrap")])
def test_circular_and_reflect_pad_like_nnx_conv(padding: str, mode: str) -> None:
  # flax.nnx.Conv pads ((e - 1) // 2, e // 2) around each axis, e the dilated kernel extent.
  for n, k, s, d in _GRID:
    e = effective_size(k, d)
    if mode == "reflect" and e // 2 >= n:
      continue  # rejected, see test_reflect_needs_input_larger_than_its_pad
    # The width axis: 2 taps dilated by 3 span 4 pixels, padded (1, 2).
    pads, got_mode = resolve_padding(padding, (n, 9), (k, 2), (s, 1), (d, 3))
    assert got_mode == mode
    assert pads == (((e - 1) // 2, e // 2), (1, 2)), (n, k, s, d)


@pytest.mark.parametrize(
  ("padding", "expected"),
  [
    ("VALID", ((0, 0), (0, 0))),
    ("valid", ((0, 0), (0, 0))),
    (2, ((2, 2), (2, 2))),
    (np.int32(1), ((1, 1), (1, 1))),
    ((1, 2), ((1, 1), (2, 2))),
    (((1, 2), (0, 1)), ((1, 2), (0, 1))),
    ([[3, 0], [1, 1]], ((3, 0), (1, 1))),
    (np.array([[1, 2], [0, 1]]), ((1, 2), (0, 1))),
  ],
)
def test_explicit_forms(padding: object, expected: tuple) -> None:
  pads, mode = resolve_padding(padding, (7, 7), (3, 3), (1, 1), (1, 1))  # type: ignore[arg-type]
  assert pads == expected
  assert mode == "constant"
  assert all(type(v) is int for p in pads for v in p)


@pytest.mark.parametrize(
  "padding",
  ["FULL", "", -1, (1, -1), ((1, 2), (0, -1)), ((1,), (2, 3)), ((1, 2), (3, 4), (5, 6)), (1, 2, 3), 1.5,
   ((1.5, 1), (0, 1)), ("a", "b"), (1, (2, 3)), True, None],
)  # fmt: skip
def test_bad_padding_names_padding(padding: object) -> None:
  with pytest.raises(ValueError, match=r"^padding must be 'SAME', 'VALID', 'CIRCULAR', 'REFLECT'"):
    resolve_padding(padding, (7, 7), (3, 3), (1, 1), (1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
  ("padding", "in_hw", "kernel_hw", "dilation"),
  [("VALID", (2, 7), (3, 3), (1, 1)), ("VALID", (7, 4), (3, 3), (1, 2)), (((0, 0), (1, 0)), (5, 3), (2, 5), (1, 1))],
)
def test_padded_input_smaller_than_kernel(padding: object, in_hw: tuple, kernel_hw: tuple, dilation: tuple) -> None:
  with pytest.raises(ValueError, match=r"^padding .* fewer than the dilated kernel extent"):
    resolve_padding(padding, in_hw, kernel_hw, (1, 1), dilation)  # type: ignore[arg-type]


def test_reflect_needs_input_larger_than_its_pad() -> None:
  # A 5-tap kernel pads 2 on each side; reflecting 2 pixels needs at least 3.
  resolve_padding("REFLECT", (3, 3), (5, 5), (1, 1), (1, 1))
  with pytest.raises(ValueError, match=r"^padding 'REFLECT' needs input axis 1 larger than its pad 2"):
    resolve_padding("REFLECT", (2, 3), (5, 5), (1, 1), (1, 1))


@pytest.mark.parametrize("mode", ["constant", "wrap", "reflect"])
def test_pad_input_matches_numpy(mode: str) -> None:
  x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
  pads = ((1, 2), (3, 0))
  out = pad_input(jnp.asarray(x), pads, mode)  # type: ignore[arg-type]
  np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (1, 2), (3, 0), (0, 0)), mode=mode))
  assert pad_input(x, ((0, 0), (0, 0)), mode) is x  # type: ignore[arg-type]

"""Every format × implementation × option equals the dense conv with its reconstructed kernel.

The reference is :func:`jax.lax.conv_general_dilated` on ``fmt.to_dense()``
(``precision="highest"``); ``"CIRCULAR"``/``"REFLECT"`` are padded as
:class:`flax.nnx.Conv` does, in :mod:`._reference`, never through
:mod:`efficonv.kernels`. Shapes are small and odd.

Each case compiles, so the full matrix runs every implementation under its
cheaper variant on CPU: the factorized sequences under ``jit`` (run eagerly,
every shift-and-add slice compiles on its own, ~3× slower), the one-conv
``"reconstructed"`` path eagerly (its few ops compile once and are reused
across cases; ``"auto"`` picks it at these sizes for all formats but Spatial).
A subset runs every implementation under the other variant.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import efficonv

from ._reference import (
  DEPTHWISE_FORMATS,
  FORMAT_NAMES,
  IMPLEMENTATIONS,
  assert_close,
  effective_size,
  make_format,
  padded_size,
  random_input,
  reference_conv,
)

# One non-square kernel per format; the property test below draws every size in 1..5 × 1..5.
# Even heights and widths both appear: CIRCULAR/REFLECT pad them asymmetrically.
KERNEL_SIZES = {"CP": (2, 3), "Tucker2": (1, 3), "TT": (3, 2), "Spatial": (5, 3), "Separable": (4, 1)}
RANKS: dict[str, int | tuple[int, ...]] = {"CP": 3, "Tucker2": (3, 2), "TT": (2, 3), "Spatial": 3, "Separable": 2}
IN_FEATURES, OUT_FEATURES = 6, 4  # TT: in_modes (2, 3), out_modes (2, 2)
INPUT_SHAPE = (2, 11, 9, IN_FEATURES)  # odd, non-square

PADDINGS = ("SAME", "VALID", ((1, 2), (0, 1)), "CIRCULAR", "REFLECT", 1)
PADDING_IDS = ("SAME", "VALID", "explicit", "CIRCULAR", "REFLECT", "int")


def _cases() -> list[tuple[str, str, str]]:
  """(format, implementation, depthwise implementation); both depthwise paths where there is one."""
  cases = []
  for name, impl in itertools.product(FORMAT_NAMES, IMPLEMENTATIONS):
    depthwise = ("shift", "xla") if name in DEPTHWISE_FORMATS and impl == "factorized" else ("auto",)
    cases.extend((name, impl, dw) for dw in depthwise)
  return cases


CASES = _cases()
CASE_IDS = [f"{n}-{i}-dw_{d}" for n, i, d in CASES]


@functools.cache
def _format(name: str) -> efficonv.Format:
  return make_format(
    name,
    FORMAT_NAMES.index(name),
    kernel_size=KERNEL_SIZES[name],
    in_features=IN_FEATURES,
    out_features=OUT_FEATURES,
    rank=RANKS[name],
  )


@functools.cache
def _input() -> jax.Array:
  return random_input(100, INPUT_SHAPE)


@functools.cache
def _reference(name: str, strides: object, padding: object, dilation: object) -> np.ndarray:
  kernel = _format(name).to_dense(precision="highest")
  return np.asarray(reference_conv(_input(), kernel, strides=strides, padding=padding, dilation=dilation))  # type: ignore[arg-type]


def _conv_fn(strides: object, padding: object, dilation: object, impl: str, dw: str) -> Callable:
  def apply(x: jax.Array, fmt: efficonv.Format) -> jax.Array:
    return fmt.conv(
      x,
      strides=strides,  # type: ignore[arg-type]
      padding=padding,  # type: ignore[arg-type]
      dilation=dilation,  # type: ignore[arg-type]
      implementation=impl,  # type: ignore[arg-type]
      depthwise_implementation=dw,
      precision="highest",
    )

  return apply


def _check(case: tuple[str, str, str], strides: object, padding: object, dilation: object, jit: bool) -> None:
  name, impl, dw = case
  fn = _conv_fn(strides, padding, dilation, impl, dw)
  out = (jax.jit(fn) if jit else fn)(_input(), _format(name))
  expected = _reference(name, strides, padding, dilation)
  chex.assert_shape(out, expected.shape)
  chex.assert_type(out, jnp.float32)
  assert_close(out, expected, 1e-5)


# Variant of the full matrix per implementation (see the module docstring); the subset runs the other one.
FULL_MATRIX_JIT = {"factorized": True, "reconstructed": False, "auto": False}


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS, ids=PADDING_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_dense_reference(case: tuple[str, str, str], padding: object, strides: int, dilation: int) -> None:
  _check(case, strides, padding, dilation, jit=FULL_MATRIX_JIT[case[1]])


@pytest.mark.parametrize("padding", PADDINGS[2:4], ids=PADDING_IDS[2:4])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_dense_reference_other_variant(case: tuple[str, str, str], padding: object) -> None:
  # The other variant than the full matrix, with different strides and dilation per axis.
  _check(case, (2, 1), padding, (1, 2), jit=not FULL_MATRIX_JIT[case[1]])


# --- property test over random shapes and options ---------------------------------------------------------


@st.composite
def _conv_problem(draw: st.DrawFn) -> dict:
  name = draw(st.sampled_from(FORMAT_NAMES))
  kernel_size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
  if name == "TT":
    d = draw(st.integers(1, 3))
    in_modes = tuple(draw(st.lists(st.integers(1, 3), min_size=d, max_size=d)))
    out_modes = tuple(draw(st.lists(st.integers(1, 3), min_size=d, max_size=d)))
    rank: int | tuple[int, ...] = tuple(draw(st.lists(st.integers(1, 3), min_size=d, max_size=d)))
    cin = int(np.prod(in_modes))
    fmt_kwargs = {"in_modes": in_modes, "out_modes": out_modes, "rank": rank}
  else:
    cin, cout = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    rank = (draw(st.integers(1, 4)), draw(st.integers(1, 4))) if name == "Tucker2" else draw(st.integers(1, 4))
    fmt_kwargs = {"in_features": cin, "out_features": cout, "rank": rank}
  explicit = st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3)))
  padding = draw(st.one_of(st.sampled_from(["SAME", "VALID", "CIRCULAR", "REFLECT"]), st.integers(0, 3), explicit))
  pair = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
  return {
    "name": name,
    "fmt_kwargs": {"kernel_size": kernel_size, **fmt_kwargs},
    "input_shape": (draw(st.integers(1, 2)), draw(st.integers(1, 11)), draw(st.integers(1, 11)), cin),
    "strides": draw(pair),
    "dilation": draw(pair),
    "padding": padding,
    "implementation": draw(st.sampled_from(IMPLEMENTATIONS)),
    "depthwise": draw(st.sampled_from(["shift", "xla"])),
    "seed": draw(st.integers(0, 2**16)),
  }


# 60 random problems per run (the fixed-case tests above cover each format and path); 200 cost the suite ~20 s.
@settings(max_examples=60, deadline=None)
@given(problem=_conv_problem())
def test_property_matches_dense_reference(problem: dict) -> None:
  fmt = make_format(problem["name"], problem["seed"], **problem["fmt_kwargs"])
  x = random_input(problem["seed"] + 1, problem["input_shape"])
  strides, dilation, padding = problem["strides"], problem["dilation"], problem["padding"]
  s = (strides, strides) if isinstance(strides, int) else strides
  d = (dilation, dilation) if isinstance(dilation, int) else dilation
  conv = _conv_fn(strides, padding, dilation, problem["implementation"], problem["depthwise"])

  @jax.jit
  def conv_and_reference(x: jax.Array, fmt: efficonv.Format) -> tuple[jax.Array, jax.Array]:
    # One compiled program per example: the new shapes of every example cost a compilation each.
    kernel = fmt.to_dense(precision="highest")
    return conv(x, fmt), reference_conv(x, kernel, strides=s, padding=padding, dilation=d)

  kh, kw = fmt.kernel_size
  n_in = problem["input_shape"][1:3]
  padded = [padded_size(n, k, si, di, padding, axis) for axis, (n, k, si, di) in enumerate(zip(n_in, (kh, kw), s, d))]
  extent = [effective_size(kh, d[0]), effective_size(kw, d[1])]
  if any(p < e for p, e in zip(padded, extent)):
    with pytest.raises(ValueError, match="fewer than the dilated kernel extent"):
      conv(x, fmt)
    return
  if padding == "REFLECT" and any((e - 1) // 2 >= n or e // 2 >= n for e, n in zip(extent, n_in)):
    with pytest.raises(ValueError, match="padding 'REFLECT' needs input axis"):
      conv(x, fmt)
    return
  out, expected = conv_and_reference(x, fmt)
  out_hw = tuple((p - e) // si + 1 for p, e, si in zip(padded, extent, s))
  chex.assert_shape(out, (problem["input_shape"][0], *out_hw, fmt.out_features))
  chex.assert_shape(expected, out.shape)
  assert_close(out, expected, 1e-5)


# --- gradients (float64) -----------------------------------------------------------------------------------


def _grad_cases() -> list[tuple[str, str]]:
  return [(n, dw) for n in FORMAT_NAMES for dw in (("shift", "xla") if n in DEPTHWISE_FORMATS else ("auto",))]


@pytest.mark.parametrize(("name", "dw"), _grad_cases())
def test_factorized_gradients(name: str, dw: str) -> None:
  x64_before = jax.config.jax_enable_x64
  with jax.enable_x64(True):
    fmt = make_format(
      name,
      7,
      kernel_size=(3, 2),
      in_features=IN_FEATURES,
      out_features=OUT_FEATURES,
      rank=RANKS[name],
      dtype=jnp.float64,
    )
    x = random_input(8, (1, 7, 6, IN_FEATURES), jnp.float64)
    chex.assert_type(jax.tree.leaves(fmt), jnp.float64)

    @jax.jit
    def f(x: jax.Array, fmt: efficonv.Format) -> jax.Array:
      return fmt.conv(
        x, strides=2, padding="REFLECT", dilation=(1, 2), implementation="factorized", depthwise_implementation=dw
      )

    check_grads(f, (x, fmt), order=1, modes=["fwd", "rev"])
  assert jax.config.jax_enable_x64 == x64_before  # the float64 context did not leak


# --- low precision -----------------------------------------------------------------------------------------


def _bf16_cases() -> list[tuple[str, str, str]]:
  return [(n, i, dw) for n, i, dw in CASES if i != "auto"]


@pytest.mark.parametrize("case", _bf16_cases(), ids=lambda c: "-".join(c))
def test_bfloat16_matches_float32_reference(case: tuple[str, str, str]) -> None:
  name, impl, dw = case
  fmt = jax.tree.map(lambda a: a.astype(jnp.bfloat16), _format(name))
  x = _input().astype(jnp.bfloat16)
  fn = _conv_fn(2, "SAME", 1, impl, dw)
  out = (jax.jit(fn) if FULL_MATRIX_JIT[impl] else fn)(x, fmt)
  chex.assert_type(out, jnp.bfloat16)
  # Reference in float32 from the same (bfloat16-rounded) values: only the arithmetic differs.
  fmt32 = jax.tree.map(lambda a: a.astype(jnp.float32), fmt)
  expected = reference_conv(x.astype(jnp.float32), fmt32.to_dense(precision="highest"), strides=2, padding="SAME")
  assert_close(out.astype(jnp.float32), expected, 2e-2)


@pytest.mark.parametrize("impl", ["factorized", "reconstructed"])
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_mixed_dtypes_promote(name: str, impl: str) -> None:
  # Every path promotes like jnp (bfloat16 with float32 gives float32), so `auto` may pick either.
  fmt32, x32 = _format(name), _input()
  fmt16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), fmt32)
  expected_from = jax.tree.map(lambda a: a.astype(jnp.float32), fmt16)
  # (format, input, format whose float32 dense kernel is the reference, tolerance): with bfloat16 factors the
  # reconstructed path rounds its dense kernel to bfloat16, the factorized path does not.
  for fmt, x, ref_fmt, rel in ((fmt32, x32.astype(jnp.bfloat16), fmt32, 1e-5), (fmt16, x32, expected_from, 2e-2)):
    expected = reference_conv(x.astype(jnp.float32), ref_fmt.to_dense(precision="highest"))
    # The XLA depthwise conv is the depthwise path that needs the promotion (shift-and-add is jnp arithmetic).
    fn = _conv_fn(1, "SAME", 1, impl, "xla")
    out = (jax.jit(fn) if FULL_MATRIX_JIT[impl] else fn)(x, fmt)
    chex.assert_type(out, jnp.float32)
    assert_close(out, expected, rel)

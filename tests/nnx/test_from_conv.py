"""``from_conv``: a trained ``nnx.Conv`` becomes a factorized layer with the same output.

At an exact rank (the maximal rank of the SVD-based schemes, or the rank a
kernel was built with) the layer reproduces the conv to float32 accuracy for
every conv option; at a lower rank its output differs from the conv's by
exactly the conv of the kernel residual whose size ``info.relative_error``
reports. The planted kernels are built here with NumPy, independently of
:mod:`efficonv.decompose`.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficonv import nnx as enn
from efficonv.convert import conv_padding
from efficonv.typing import Array

from ._layers import IN_FEATURES, OUT_FEATURES, random_input, reference_conv

KERNEL_SIZE = (3, 2)
KH, KW = KERNEL_SIZE
IN_MODES, OUT_MODES = (2, 3), (2, 2)  # TT channel factorizations of IN_FEATURES=6 and OUT_FEATURES=4
TT_KWARGS = {"in_modes": IN_MODES, "out_modes": OUT_MODES}
SCHEMES = ("CPConv", "TuckerConv", "SpatialConv", "SeparableConv", "TTConv")

# Maximal ranks (exact for any kernel), from the shapes alone.
# TT bond k separates (kh·kw, c_1 s_1 … c_k s_k) from the rest; each side bounds the rank.
_TT_MAX = (min(KH * KW, 2 * 2 * 3 * 2), min(KH * KW * 2 * 2, 3 * 2))
FULL_RANK: dict[str, Any] = {
  "TuckerConv": (IN_FEATURES, OUT_FEATURES),
  "SpatialConv": min(KH * IN_FEATURES, KW * OUT_FEATURES),
  "SeparableConv": min(KH * KW, OUT_FEATURES),
  "TTConv": _TT_MAX,
}
# Non-maximal ranks a kernel is planted with (CP has no exact "full" rank that ALS reaches, only planted ones).
PLANTED_RANK: dict[str, Any] = {
  "CPConv": 3,
  "TuckerConv": (3, 2),
  "SpatialConv": 3,
  "SeparableConv": 2,
  "TTConv": (2, 3),
}
# The planted ranks are lossy on a random kernel (and reusing them saves a compile of each fit).
LOW_RANK = PLANTED_RANK

# (strides, padding, kernel_dilation, use_bias): every padding form nnx.Conv takes, strides, dilation, no bias.
CONV_OPTIONS: list[tuple[Any, Any, Any, bool]] = [
  (1, "SAME", 1, True),
  (2, "VALID", 1, True),
  ((2, 1), ((1, 2), (0, 1)), (1, 2), True),
  (1, "CIRCULAR", 2, False),
  (2, "REFLECT", 1, True),
  (2, [1, (0, 2)], 1, True),  # flax's per-axis mix of an int and a pair
]

LOW_RANK_OPTIONS: dict[str, Any] = {"strides": 2, "padding": ((1, 0), (2, 1)), "kernel_dilation": 2}


def planted_kernel(name: str, rank: Any, seed: int = 0) -> np.ndarray:
  """An HWIO kernel of exactly ``rank`` in the scheme of layer ``name``."""
  rng = np.random.default_rng(seed)
  g = rng.standard_normal
  cin, cout = IN_FEATURES, OUT_FEATURES
  if name == "CPConv":
    w = np.einsum("xr,yr,cr,sr->xycs", g((KH, rank)), g((KW, rank)), g((cin, rank)), g((cout, rank)))
  elif name == "TuckerConv":
    r1, r2 = rank
    w = np.einsum("ca,xyab,bs->xycs", g((cin, r1)), g((KH, KW, r1, r2)), g((r2, cout)))
  elif name == "SpatialConv":
    w = np.einsum("xck,yks->xycs", g((KH, cin, rank)), g((KW, rank, cout)))
  elif name == "SeparableConv":
    w = np.einsum("xycj,cjs->xycs", g((KH, KW, cin, rank)), g((cin, rank, cout)))
  else:  # TT, C-order channel raveling: c = c_1·C_2 + c_2, s = s_1·S_2 + s_2
    r0, r1 = rank
    spatial, core1, core2 = g((KH, KW, r0)), g((r0, IN_MODES[0], OUT_MODES[0], r1)), g((r1, IN_MODES[1], OUT_MODES[1]))
    w = np.einsum("xyp,pasq,qbt->xyabst", spatial, core1, core2).reshape(KH, KW, cin, cout)
  return (w / np.linalg.norm(w) * 3.0).astype(np.float32)


def make_conv(kernel: np.ndarray | None = None, **options: Any) -> nnx.Conv:
  """An ``nnx.Conv`` with ``kernel`` (random when ``None``) and a non-zero bias."""
  conv = nnx.Conv(IN_FEATURES, OUT_FEATURES, KERNEL_SIZE, rngs=nnx.Rngs(0), **options)
  if kernel is not None:
    conv.kernel[...] = jnp.asarray(kernel)
  if conv.bias is not None:
    conv.bias[...] = jnp.linspace(-1.0, 1.0, OUT_FEATURES)
  return conv


def from_conv(name: str, conv: nnx.Conv, rank: Any, **kwargs: Any) -> tuple[Any, Any]:
  extra = TT_KWARGS if name == "TTConv" else {}
  return getattr(enn, name).from_conv(conv, rank, return_info=True, **extra, **kwargs)


def as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else (value[0], value[1])


def relative(a: Array, b: Array) -> float:
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize("name", SCHEMES)
def test_exact_rank_reproduces_the_conv_for_every_option(name: str) -> None:
  if name == "CPConv":
    kernel, rank = planted_kernel(name, PLANTED_RANK[name]), PLANTED_RANK[name]
  else:
    kernel, rank = np.asarray(make_conv().kernel[...]), FULL_RANK[name]
  cases, pairs = [], []
  for strides, padding, dilation, use_bias in CONV_OPTIONS:
    case = f"strides={strides} padding={padding} dilation={dilation} use_bias={use_bias}"
    conv = make_conv(kernel, strides=strides, padding=padding, kernel_dilation=dilation, use_bias=use_bias)
    layer, info = from_conv(name, conv, rank, implementation="factorized")
    assert float(info.relative_error) < 1e-5, case
    assert (layer.strides, layer.kernel_dilation) == (as_pair(strides), as_pair(dilation)), case
    assert layer.use_bias == use_bias and (layer.bias is not None) == use_bias, case
    if use_bias:
      np.testing.assert_array_equal(np.asarray(layer.bias[...]), np.asarray(conv.bias[...]))
    cases.append(case)
    pairs.append((conv, layer))
  # One compiled program for all the options (eager dispatch of each would dominate the run time).
  outputs = jax.jit(lambda x: [(conv(x), layer(x)) for conv, layer in pairs])(random_input())
  for case, (y_ref, y) in zip(cases, outputs):
    assert y.shape == y_ref.shape, case
    assert relative(y, y_ref) < 1e-5, case


@pytest.mark.parametrize("name", [n for n in SCHEMES if n != "CPConv"])
def test_planted_low_rank_kernel_decomposes_exactly(name: str) -> None:
  rank = PLANTED_RANK[name]
  conv = make_conv(planted_kernel(name, rank, seed=1), **LOW_RANK_OPTIONS)
  layer, info = from_conv(name, conv, rank, implementation="factorized")
  assert layer.format.rank == rank
  assert float(info.relative_error) < 1e-5
  x = random_input()
  assert relative(layer(x), conv(x)) < 1e-5


@pytest.mark.parametrize("name", SCHEMES)
def test_low_rank_output_error_is_the_reported_kernel_error(name: str) -> None:
  conv = make_conv(**LOW_RANK_OPTIONS)
  kernel = conv.kernel[...]
  layer, info = from_conv(name, conv, LOW_RANK[name], implementation="factorized")
  rel = float(info.relative_error)
  assert rel > 1e-2  # a lossy rank, so the checks below are not about float noise

  residual = layer.to_dense() - kernel
  kernel_norm = float(jnp.linalg.norm(kernel.ravel()))
  np.testing.assert_allclose(float(jnp.linalg.norm(residual.ravel())) / kernel_norm, rel, rtol=1e-4)

  x = random_input()
  y_ref, y = conv(x), layer(x)
  # The conv is linear in its kernel: the output error is the conv of the kernel residual.
  error = reference_conv(x, residual, None, **LOW_RANK_OPTIONS)
  scale = float(jnp.max(jnp.abs(y_ref)))
  np.testing.assert_allclose(np.asarray(y - y_ref), np.asarray(error), atol=1e-5 * scale)
  # Cauchy–Schwarz per output: |Σ patch·E[..., s]| ≤ ||patch|| ||E[..., s]||, so
  # ||y - y_ref|| ≤ sqrt(Σ_positions ||patch||²) · rel · ||W||.
  patch_energy = reference_conv(x * x, jnp.ones((KH, KW, IN_FEATURES, 1)), None, **LOW_RANK_OPTIONS)
  bound = float(jnp.sqrt(jnp.sum(patch_energy))) * rel * kernel_norm
  assert float(jnp.linalg.norm((y - y_ref).ravel())) <= bound * (1 + 1e-4)


def test_from_conv_leaves_the_conv_alone_and_returns_only_the_layer_by_default() -> None:
  conv = make_conv()
  kernel, bias = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
  layer = enn.TuckerConv.from_conv(conv, FULL_RANK["TuckerConv"])
  assert isinstance(layer, enn.TuckerConv)
  np.testing.assert_array_equal(np.asarray(conv.kernel[...]), kernel)
  layer.bias[...] = layer.bias[...] + 1.0  # the layer owns its bias
  np.testing.assert_array_equal(np.asarray(conv.bias[...]), bias)


BAD_CONVS = {
  "grouped": lambda: nnx.Conv(IN_FEATURES, OUT_FEATURES + 2, KERNEL_SIZE, feature_group_count=2, rngs=nnx.Rngs(0)),
  "1-D": lambda: nnx.Conv(IN_FEATURES, OUT_FEATURES, (3,), rngs=nnx.Rngs(0)),
  "input_dilation": lambda: nnx.Conv(IN_FEATURES, OUT_FEATURES, KERNEL_SIZE, input_dilation=2, rngs=nnx.Rngs(0)),
  "not a conv": lambda: nnx.Linear(IN_FEATURES, OUT_FEATURES, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("bad", tuple(BAD_CONVS))
def test_unsupported_conv_is_rejected_naming_conv(bad: str) -> None:
  conv = BAD_CONVS[bad]()
  for name in SCHEMES:
    with pytest.raises(ValueError, match=r"^conv must"):
      from_conv(name, conv, PLANTED_RANK[name])


# (rank, the offending value the message must show)
OUT_OF_RANGE: dict[str, list[tuple[Any, int]]] = {
  # CP: at most prod(shape) / max(shape) terms.
  "CPConv": [(KH * KW * IN_FEATURES * OUT_FEATURES // max(KH, KW, IN_FEATURES, OUT_FEATURES) + 1,) * 2, (0, 0)],
  "TuckerConv": [((IN_FEATURES + 1, 2), IN_FEATURES + 1), ((2, OUT_FEATURES + 1), OUT_FEATURES + 1)],
  "SpatialConv": [(FULL_RANK["SpatialConv"] + 1,) * 2],
  "SeparableConv": [(FULL_RANK["SeparableConv"] + 1,) * 2, (0, 0)],
  "TTConv": [((_TT_MAX[0] + 1, 2), _TT_MAX[0] + 1), ((2, _TT_MAX[1] + 1), _TT_MAX[1] + 1)],
}


@pytest.mark.parametrize("name", SCHEMES)
def test_rank_out_of_range_is_rejected_naming_rank(name: str) -> None:
  conv = make_conv()
  for rank, shown in OUT_OF_RANGE[name]:
    with pytest.raises(ValueError, match=r"rank") as excinfo:
      from_conv(name, conv, rank)
    assert re.search(rf"got .*\b{shown}\b", str(excinfo.value)), (rank, str(excinfo.value))  # shows the value


@pytest.mark.parametrize(
  ("padding", "expected"),
  [
    ("CIRCULAR", "CIRCULAR"),
    (1, ((1, 1), (1, 1))),
    ([1, (0, 2)], ((1, 1), (0, 2))),
    ([(2, 1), (0, 3)], ((2, 1), (0, 3))),
  ],
)
def test_conv_padding_turns_every_nnx_conv_padding_into_one_efficonv_form(padding: Any, expected: Any) -> None:
  conv = nnx.eval_shape(lambda: nnx.Conv(IN_FEATURES, OUT_FEATURES, KERNEL_SIZE, padding=padding, rngs=nnx.Rngs(0)))
  assert conv_padding(conv) == expected
  x = jax.ShapeDtypeStruct((1, 10, 9, IN_FEATURES), jnp.float32)
  options = {"rank": 2, "padding": conv_padding(conv)}
  ours = jax.eval_shape(lambda x: enn.CPConv(IN_FEATURES, OUT_FEATURES, KERNEL_SIZE, **options, rngs=nnx.Rngs(0))(x), x)
  theirs = jax.eval_shape(
    lambda x: nnx.Conv(IN_FEATURES, OUT_FEATURES, KERNEL_SIZE, padding=padding, rngs=nnx.Rngs(0))(x), x
  )
  assert ours.shape == theirs.shape

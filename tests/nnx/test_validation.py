"""Bad arguments raise ``ValueError`` naming the argument; the signatures mirror ``nnx.Conv``.

Constructors run under ``nnx.eval_shape`` (abstractly: the checks are plain
Python, so they raise the same, and nothing is compiled).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from efficonv import nnx as enn

from ._layers import (
  FORMAT_LAYER_NAMES,
  IN_FEATURES,
  LAYER_NAMES,
  LAYER_OPTIONS,
  construct,
  make_layer,
)


def _raises(argument: str, name: str, **overrides: Any) -> None:
  """``argument``: the name the message starts with; ``rank[i]`` also matches the formats' ``ranks[i]``."""
  pattern = re.escape(argument).replace(r"rank\[", r"ranks?\[")
  with pytest.raises(ValueError, match=pattern):
    nnx.eval_shape(lambda: construct(name, **overrides))


BAD_RANKS = [
  ("CPConv", {"rank": 0}, "rank"),
  ("CPConv", {"rank": 10_000}, "rank"),
  ("CPConv", {"rank": 2.5}, "rank"),
  ("SpatialConv", {"rank": 0}, "rank"),
  ("SpatialConv", {"rank": 10_000}, "rank"),
  ("TuckerConv", {"rank": (0, 2)}, "rank[0]"),
  ("TuckerConv", {"rank": (IN_FEATURES + 1, 2)}, "rank[0]"),
  ("TuckerConv", {"rank": (2, 100)}, "rank[1]"),
  ("TuckerConv", {"rank": (1, 2, 3)}, "rank"),
  ("Bottleneck", {"width": (1, 2, 3)}, "width"),
  ("Bottleneck", {"width": 0}, "width"),
  ("Bottleneck", {"width": (2, 0)}, "width"),
  ("Bottleneck", {"width": 2.5}, "width"),
  ("TTConv", {"rank": 0}, "rank[0]"),
  ("TTConv", {"rank": (2, 100)}, "rank[1]"),
  ("TTConv", {"rank": (1, 2, 3)}, "rank"),
  ("TTConv", {"in_modes": (2, 2)}, "in_modes"),  # 4 != 6 input channels
  ("TTConv", {"out_modes": (2, 3)}, "out_modes"),  # 6 != 4 output channels
  ("TTConv", {"in_modes": (6,), "out_modes": (2, 2)}, "out_modes"),  # lengths differ
  ("SeparableConv", {"depth_multiplier": 0}, "depth_multiplier"),
  ("SeparableConv", {"depth_multiplier": 7}, "depth_multiplier"),  # > min(kh·kw, C_out) = 4
  ("StackedConv", {"kernel_size": 4, "small_kernel_size": 3}, "small_kernel_size"),  # 3 does not cover 4
  ("StackedConv", {"kernel_size": (5, 3), "small_kernel_size": 3}, "kernel_size"),  # 2 convs vertically, 1 across
  ("StackedConv", {"small_kernel_size": 1}, "small_kernel_size"),
  ("StackedConv", {"hidden_features": 0}, "hidden_features"),
]


@pytest.mark.parametrize(("name", "overrides", "argument"), BAD_RANKS, ids=[f"{n}-{a}-{o}" for n, o, a in BAD_RANKS])
def test_bad_rank_options(name: str, overrides: dict, argument: str) -> None:
  _raises(argument, name, **overrides)


BAD_CONV_OPTIONS = [
  ({"padding": "FULL"}, "padding"),
  ({"padding": ((1, 2), (0,))}, "padding"),
  ({"padding": -1}, "padding"),
  ({"strides": 0}, "strides"),
  ({"strides": (1, 2, 3)}, "strides"),
  ({"kernel_dilation": 0}, "kernel_dilation"),
  ({"kernel_size": 0}, "kernel_size"),
]


@pytest.mark.parametrize("name", LAYER_NAMES)
@pytest.mark.parametrize(("overrides", "argument"), BAD_CONV_OPTIONS, ids=[str(o) for o, _ in BAD_CONV_OPTIONS])
def test_bad_conv_options(name: str, overrides: dict, argument: str) -> None:
  _raises(argument, name, **overrides)


@pytest.mark.parametrize("name", FORMAT_LAYER_NAMES)
def test_bad_implementation(name: str) -> None:
  _raises("implementation", name, implementation="fast")
  _raises("depthwise_implementation", name, depthwise_implementation="fast")


@pytest.mark.parametrize("name", ["Bottleneck", "StackedConv"])
def test_blocks_take_no_implementation(name: str) -> None:
  """The blocks always run their own convs: there is no path to choose, so no argument pretends there is."""
  with pytest.raises(TypeError, match="implementation"):
    construct(name, implementation="factorized")
  assert not hasattr(make_layer(name), "plan")


@pytest.mark.parametrize("name", LAYER_NAMES)
@pytest.mark.parametrize(("in_features", "out_features", "argument"), [(0, 4, "in_features"), (6, -1, "out_features")])
def test_bad_channel_counts(name: str, in_features: int, out_features: int, argument: str) -> None:
  options = {k: v for k, v in LAYER_OPTIONS[name].items() if k != "kernel_size"}
  with pytest.raises(ValueError, match=argument):
    nnx.eval_shape(lambda: getattr(enn, name)(in_features, out_features, 3, **options, rngs=nnx.Rngs(0)))


BAD_INPUTS = [
  ((10, 9, IN_FEATURES + 1), "3-D input with the wrong channels"),
  ((10, IN_FEATURES), "2-D input"),
  ((2, 10, 9, IN_FEATURES - 1), "wrong channel count"),
  ((2, 10, 9), "channels missing"),
]


@pytest.mark.parametrize("name", [*LAYER_NAMES, "Bottleneck-relu", "StackedConv-relu"])
@pytest.mark.parametrize("shape", [s for s, _ in BAD_INPUTS], ids=[why for _, why in BAD_INPUTS])
def test_bad_inputs_name_inputs(name: str, shape: tuple[int, ...]) -> None:
  layer = make_layer(name.split("-")[0], **({"activation": nnx.relu} if name.endswith("relu") else {}))
  with pytest.raises(ValueError, match=r"inputs must .*got shape " + re.escape(str(shape))):
    layer(jnp.zeros(shape))


def test_input_smaller_than_the_kernel_names_padding() -> None:
  layer = make_layer("CPConv", padding="VALID", kernel_dilation=2)  # dilated (5, 3) kernel
  with pytest.raises(ValueError, match="padding"):
    layer(jnp.zeros((1, 4, 9, IN_FEATURES)))


def test_from_format_rejects_the_wrong_format_and_bias() -> None:
  cp = make_layer("CPConv").format
  with pytest.raises(ValueError, match=r"fmt must be an efficonv\.Tucker2, got CP"):
    enn.TuckerConv.from_format(cp)
  with pytest.raises(ValueError, match=r"fmt must be an efficonv\.CP, got Tucker2"):
    enn.CPConv.from_format(make_layer("TuckerConv").format)
  with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(3,\)"):
    nnx.eval_shape(lambda: enn.CPConv.from_format(cp, bias=jnp.zeros(3)))
  with pytest.raises(ValueError, match="bias was given but use_bias=False"):
    nnx.eval_shape(lambda: enn.CPConv.from_format(cp, bias=jnp.zeros(4), use_bias=False))
  with pytest.raises(ValueError, match="padding"):
    nnx.eval_shape(lambda: enn.CPConv.from_format(cp, padding="FULL"))


def test_to_dense_of_a_nonlinear_bottleneck_raises() -> None:
  layer = nnx.eval_shape(lambda: construct("Bottleneck", activation=nnx.relu))
  with pytest.raises(ValueError, match="activation"):
    layer.to_dense()


# ---------------------------------------------------------------------------- signatures
SHARED_WITH_NNX_CONV = ("strides", "padding", "kernel_dilation", "use_bias", "dtype", "param_dtype", "precision")
# The arguments each layer adds to nnx.Conv's (TT's modes, the blocks' shape arguments).
SCHEME_ARGUMENTS = {
  "CPConv": ("rank",),
  "TuckerConv": ("rank",),
  "SpatialConv": ("rank",),
  "TTConv": ("rank", "in_modes", "out_modes"),
  "SeparableConv": ("depth_multiplier",),
  "Bottleneck": ("width", "activation"),
  "StackedConv": ("small_kernel_size", "hidden_features", "activation"),
}


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_signature_mirrors_nnx_conv(name: str) -> None:
  """``(in_features, out_features, kernel_size, strides=1, *, …)`` as ``nnx.Conv``, with its defaults and order."""
  params = inspect.signature(getattr(enn, name).__init__).parameters
  conv = inspect.signature(nnx.Conv.__init__).parameters
  names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
  assert names[:5] == ["self", "in_features", "out_features", "kernel_size", "strides"]
  assert all(params[n].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for n in names[1:5])
  assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names[5:])
  # The scheme's own arguments come first after the star, then nnx.Conv's options in nnx.Conv's order.
  scheme = SCHEME_ARGUMENTS[name]
  assert tuple(names[5 : 5 + len(scheme)]) == scheme
  options = names[5 + len(scheme) :]
  assert [n for n in options if n in conv] == [n for n in conv if n in params][5:]
  for option in (*SHARED_WITH_NNX_CONV, "bias_init", "kernel_init", "rngs"):
    assert option in params, option
  for option in SHARED_WITH_NNX_CONV:
    assert params[option].default == conv[option].default, option
  assert params["rngs"].default is inspect.Parameter.empty  # required, as in nnx.Conv


@pytest.mark.parametrize("name", ["TTConv", "SeparableConv"])
def test_explicit_signatures_agree_with_the_base(name: str) -> None:
  """The layers that spell out their signature take the base's options with the base's defaults and types."""
  base = inspect.signature(enn.FactorizedConv.__init__).parameters
  params = inspect.signature(getattr(enn, name).__init__).parameters
  shared = [n for n in params if n not in SCHEME_ARGUMENTS[name]]
  assert shared == [n for n in base if n not in ("rank", "scheme_args")]
  for n in shared:
    assert (params[n].kind, params[n].default, params[n].annotation) == (
      base[n].kind,
      base[n].default,
      base[n].annotation,
    ), n


def test_strides_is_positional_as_in_nnx_conv() -> None:
  layer = nnx.eval_shape(lambda: enn.CPConv(8, 8, 3, 2, rank=2, rngs=nnx.Rngs(0)))
  assert layer.strides == (2, 2)
  y = jax.eval_shape(lambda x: enn.CPConv(8, 8, 3, 2, rank=2, rngs=nnx.Rngs(0))(x), jnp.zeros((1, 9, 9, 8)))
  assert y.shape == (1, 5, 5, 8)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_every_layer_takes_strides_fourth(name: str) -> None:
  options = {k: v for k, v in LAYER_OPTIONS[name].items() if k != "kernel_size"}
  kernel_size = LAYER_OPTIONS[name]["kernel_size"]
  layer = nnx.eval_shape(lambda: getattr(enn, name)(IN_FEATURES, 4, kernel_size, (2, 1), **options, rngs=nnx.Rngs(0)))
  assert layer.strides == (2, 1)


def test_only_strides_is_positional() -> None:
  """``CPConv(8, 8, 3, 2, 4)`` cannot silently mean rank 4: the rank and every other option are keywords."""
  with pytest.raises(TypeError):
    enn.CPConv(8, 8, 3, 2, 4, rngs=nnx.Rngs(0))  # type: ignore[misc]


@pytest.mark.parametrize(
  ("name", "rank", "expected"),
  [
    ("CPConv", 3, 3),
    ("SpatialConv", 3, 3),
    ("TuckerConv", (3, 2), (3, 2)),
    ("TuckerConv", 2, (2, 2)),
    ("TTConv", 2, (2, 2)),
  ],
)
def test_rank_keyword(name: str, rank: Any, expected: Any) -> None:
  """One keyword, ``rank=``, for every scheme with a rank (an int, or a tuple where the scheme has several)."""
  fmt = nnx.eval_shape(lambda: construct(name, rank=rank).format)
  assert fmt.rank == expected
  with pytest.raises(TypeError):
    construct(name, ranks=rank)

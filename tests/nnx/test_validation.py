"""Bad arguments raise ``ValueError`` naming the argument; the signatures mirror ``nnx.Conv``.

Constructors run under ``nnx.eval_shape`` (abstractly: the checks are plain
Python, so they raise the same, and nothing is compiled).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import jax.numpy as jnp
import pytest
from flax import nnx

from efficonv import nnx as enn

from ._layers import IN_FEATURES, INPUT_SHAPE, LAYER_NAMES, LAYER_OPTIONS, construct, make_layer


def _raises(argument: str, name: str, **overrides: Any) -> None:
  with pytest.raises(ValueError, match=re.escape(argument)):
    nnx.eval_shape(lambda: construct(name, **overrides))


BAD_RANKS = [
  ("CPConv", {"rank": 0}, "rank"),
  ("CPConv", {"rank": 10_000}, "rank"),
  ("CPConv", {"rank": 2.5}, "rank"),
  ("SpatialConv", {"rank": 0}, "rank"),
  ("SpatialConv", {"rank": 10_000}, "rank"),
  ("TuckerConv", {"ranks": (0, 2)}, "rank[0]"),
  ("TuckerConv", {"ranks": (IN_FEATURES + 1, 2)}, "rank[0]"),
  ("TuckerConv", {"ranks": (2, 100)}, "rank[1]"),
  ("TuckerConv", {"ranks": (1, 2, 3)}, "rank"),
  ("Bottleneck", {"ranks": (1, 2, 3)}, "rank"),
  ("Bottleneck", {"ranks": None, "width": 0}, "rank[0]"),
  ("TTConv", {"ranks": 0}, "rank[0]"),
  ("TTConv", {"ranks": (2, 100)}, "rank[1]"),
  ("TTConv", {"ranks": (1, 2, 3)}, "rank"),
  ("TTConv", {"in_modes": (2, 2)}, "in_modes"),  # 4 != 6 input channels
  ("TTConv", {"out_modes": (2, 3)}, "out_modes"),  # 6 != 4 output channels
  ("TTConv", {"in_modes": (6,), "out_modes": (2, 2)}, "out_modes"),  # lengths differ
  ("SeparableConv", {"depth_multiplier": 0}, "depth_multiplier"),
  ("SeparableConv", {"depth_multiplier": 7}, "depth_multiplier"),  # > min(kh·kw, C_out) = 4
  ("StackedConv", {"kernel_size": 4, "small_kernel_size": 3}, "small_kernel_size"),  # 3 does not cover 4
  ("StackedConv", {"kernel_size": (5, 3), "small_kernel_size": 3}, "kernel_size"),  # 2 convs vertically, 1 across
  ("StackedConv", {"small_kernel_size": 1}, "small_kernel_size"),
  ("StackedConv", {"features": 0}, "features"),
  ("Bottleneck", {"width": 2, "ranks": (2, 2)}, "width"),
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


@pytest.mark.parametrize("name", [n for n in LAYER_NAMES if n != "StackedConv"])
def test_bad_implementation(name: str) -> None:
  _raises("implementation", name, implementation="fast")
  _raises("depthwise_implementation", name, depthwise_implementation="fast")


@pytest.mark.parametrize("name", LAYER_NAMES)
@pytest.mark.parametrize(("in_features", "out_features", "argument"), [(0, 4, "in_features"), (6, -1, "out_features")])
def test_bad_channel_counts(name: str, in_features: int, out_features: int, argument: str) -> None:
  options = {k: v for k, v in LAYER_OPTIONS[name].items() if k != "kernel_size"}
  with pytest.raises(ValueError, match=argument):
    nnx.eval_shape(lambda: getattr(enn, name)(in_features, out_features, 3, **options, rngs=nnx.Rngs(0)))


BAD_INPUTS = [
  ((10, 9, IN_FEATURES + 1), "3-D input with the wrong channels"),
  ((1, *INPUT_SHAPE), "5-D input"),
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


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_signature_mirrors_nnx_conv(name: str) -> None:
  """Positional ``(in_features, out_features, kernel_size)``, every option keyword-only, ``nnx.Conv``'s defaults."""
  params = inspect.signature(getattr(enn, name).__init__).parameters
  conv = inspect.signature(nnx.Conv.__init__).parameters
  names = list(params)
  assert names[:4] == ["self", "in_features", "out_features", "kernel_size"]
  assert all(params[n].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for n in names[1:4])
  assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names[4:])
  for option in (*SHARED_WITH_NNX_CONV, "bias_init", "kernel_init", "rngs"):
    assert option in params, option
  for option in SHARED_WITH_NNX_CONV:
    assert params[option].default == conv[option].default, option
  assert params["rngs"].default is inspect.Parameter.empty  # required, as in nnx.Conv


def test_positional_options_are_rejected() -> None:
  """Options are keyword-only, so ``CPConv(6, 4, 3, 2)`` cannot silently mean strides (or rank) 2."""
  with pytest.raises(TypeError):
    enn.CPConv(6, 4, 3, 2, rngs=nnx.Rngs(0))  # type: ignore[misc]

"""``efficonv._stand_in``: the near-free stand-ins that time a network's non-conv part."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from efficonv._stand_in import ConvStandIn, stand_in_network
from efficonv.compression import _replace, conv_calls


@pytest.mark.parametrize(
  ("strides", "padding", "features"),
  [(1, "SAME", 4), (2, "SAME", 6), (1, "VALID", 3), (2, ((2, 2), (0, 1)), 8), ((1, 3), "SAME", 4)],
)
def test_stand_in_has_the_convs_output_shape_and_depends_on_the_input(strides, padding, features) -> None:
  conv = nnx.Conv(4, features, (3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 4))
  model = nnx.Sequential(conv)
  copy = stand_in_network(model, conv_calls(model, x.shape), {("layers", 0): conv}, _replace)
  assert isinstance(copy.layers[0], ConvStandIn) and type(model.layers[0]) is nnx.Conv  # model not modified
  y = copy(x)
  assert y.shape == conv(x).shape and y.dtype == conv(x).dtype
  assert not jnp.array_equal(copy(x + 1.0), y)
  with pytest.raises(ValueError, match=r"x must have one of the traced input shapes"):
    copy(x[:1])


def test_a_stack_of_convs_has_no_stand_in_network() -> None:
  @nnx.split_rngs(splits=2)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def stack(rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(4, 4, (3, 3), rngs=rngs)

  convs = stack(nnx.Rngs(0))
  assert convs.kernel.ndim == 5
  model = nnx.Sequential(nnx.Conv(4, 4, (3, 3), rngs=nnx.Rngs(1)))
  fake_calls = [(("layers", 0), (2, 8, 8, 4))]
  assert stand_in_network(model, fake_calls, {("layers", 0): convs}, _replace) is None

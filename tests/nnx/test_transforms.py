"""Factorized layers under NNX transforms: a stack made by ``nnx.vmap``, applied by ``nnx.scan``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficonv import cost
from efficonv import nnx as enn

LAYERS = 3
SHAPE = (2, 6, 6, 4)


@nnx.split_rngs(splits=LAYERS)
@nnx.vmap(in_axes=(0,), out_axes=0)
def _create(rngs: nnx.Rngs) -> enn.CPConv:
  return enn.CPConv(4, 4, 3, rank=2, bias_init=nnx.initializers.normal(1.0), rngs=rngs)


@functools.cache
def _stack_parts() -> tuple[nnx.GraphDef, nnx.State]:
  # Initialized once, in one compiled program (eagerly, every initializer op would compile on its own).
  graphdef = nnx.graphdef(nnx.eval_shape(_create, nnx.Rngs(0)))
  return graphdef, jax.jit(lambda: nnx.state(_create(nnx.Rngs(0))))()


def _stack() -> enn.CPConv:
  graphdef, state = _stack_parts()
  return nnx.merge(graphdef, jax.tree.map(lambda a: a, state))  # fresh Variables for each test


def _layer(stack: enn.CPConv, i: int) -> enn.CPConv:
  graphdef, state = nnx.split(stack)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def test_a_stack_knows_its_shape_and_a_layer_has_none() -> None:
  stack = _stack()
  assert stack.stack_shape == (LAYERS,)
  assert _layer(stack, 0).stack_shape == ()


def test_a_stack_costs_every_layer_bias_included() -> None:
  stack = _stack()
  one = _layer(stack, 1)
  assert cost.params(one) == 4 * 2 + 3 * 2 + 3 * 2 + 2 * 4 + 4
  assert cost.params(stack) == LAYERS * cost.params(one)
  assert cost.macs(stack, SHAPE) == LAYERS * cost.macs(one, SHAPE)


def test_scan_over_a_stack_applies_each_layer_in_turn() -> None:
  stack = _stack()

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def apply(x: jax.Array, layer: enn.CPConv) -> jax.Array:
    return layer(x)

  @nnx.jit
  def scanned_and_one_by_one(stack: enn.CPConv, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    expected = x
    for i in range(LAYERS):
      expected = _layer(stack, i)(expected)
    return apply(x, stack), expected

  got, expected = scanned_and_one_by_one(stack, jax.random.normal(jax.random.key(1), SHAPE))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert stack.plan(SHAPE).implementation == _layer(stack, 0).plan(SHAPE).implementation


@pytest.mark.parametrize("what", ["call", "to_dense"])
def test_calling_or_densifying_a_stack_directly_raises_naming_scan(what: str) -> None:
  stack = _stack()
  with pytest.raises(ValueError, match=r"stack of 3 layers .*\(3,\).*nnx.scan"):
    stack(jnp.ones(SHAPE)) if what == "call" else stack.to_dense()


BLOCKS = {
  "Bottleneck": lambda rngs: enn.Bottleneck(4, 4, 3, width=2, rngs=rngs),
  "StackedConv": lambda rngs: enn.StackedConv(4, 4, 5, rngs=rngs),
  "Conv": lambda rngs: enn.Conv(4, 4, (3, 3), rngs=rngs),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_stacks_of_the_other_layers_cost_every_layer_and_refuse_a_direct_call(name: str) -> None:
  @nnx.split_rngs(splits=LAYERS)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs: nnx.Rngs) -> nnx.Module:
    return BLOCKS[name](rngs)

  stack, one = nnx.eval_shape(create, nnx.Rngs(0)), nnx.eval_shape(lambda: BLOCKS[name](nnx.Rngs(0)))  # shapes only
  assert cost.params(stack) == LAYERS * cost.params(one)
  assert cost.macs(stack, SHAPE) == LAYERS * cost.macs(one, SHAPE)
  with pytest.raises(ValueError, match=r"stack of 3 layers .*nnx.scan"):
    stack(jax.ShapeDtypeStruct(SHAPE, jnp.float32))

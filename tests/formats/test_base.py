"""Tests of the machinery shared by every format: ``conv``'s dispatch, ``plan``, pytree behaviour, bad input."""

from __future__ import annotations

from collections.abc import Iterator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import efficonv
import efficonv.cost
import efficonv.kernels
import efficonv.planning

from ._reference import DEPTHWISE_FORMATS, FORMAT_NAMES, assert_close, make_format, random_input

IN_FEATURES, OUT_FEATURES = 6, 4
KERNEL_SIZE = (3, 2)
# Ranks chosen so no factorized step has the dense kernel's shape (3, 2, 6, 4).
RANKS: dict[str, int | tuple[int, ...]] = {"CP": 3, "Tucker2": (3, 2), "TT": (2, 3), "Spatial": 3, "Separable": 2}


def _format(name: str, seed: int = 0) -> efficonv.Format:
  return make_format(
    name, seed, kernel_size=KERNEL_SIZE, in_features=IN_FEATURES, out_features=OUT_FEATURES, rank=RANKS[name]
  )


def _input(shape: tuple[int, ...] = (2, 7, 9, IN_FEATURES)) -> jax.Array:
  return random_input(1, shape)


def _construct(name: str, leaves: tuple | list) -> efficonv.Format:
  """Calls the format's constructor (which checks the shapes) on its leaves."""
  if name == "TT":
    return efficonv.TT(leaves[0], tuple(leaves[1:]))
  return getattr(efficonv, name)(*leaves)


def _equations(jaxpr: object, primitive: str) -> Iterator[object]:
  """Every equation of ``primitive`` in a jaxpr, sub-jaxprs (``jit``, ``custom_jvp``, ...) included."""
  for eqn in jaxpr.eqns:  # type: ignore[attr-defined]
    if eqn.primitive.name == primitive:
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner, primitive)


def _conv_kernel_shapes(fn: object, *args: object) -> list[tuple[int, ...]]:
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr  # type: ignore[arg-type]
  return [tuple(eqn.invars[1].aval.shape) for eqn in _equations(jaxpr, "conv_general_dilated")]  # type: ignore[attr-defined]


# --- conv dispatches to what plan() says -----------------------------------------------------------------


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_implementation_is_honoured(name: str) -> None:
  fmt, x = _format(name), _input()
  dense_shape = (*KERNEL_SIZE, IN_FEATURES, OUT_FEATURES)
  for dw in ("shift", "xla") if name in DEPTHWISE_FORMATS else ("auto",):
    shapes = _conv_kernel_shapes(
      lambda x, dw=dw: fmt.conv(x, implementation="factorized", depthwise_implementation=dw), x
    )
    assert dense_shape not in shapes
    if dw == "shift":  # shift-and-add depthwise steps and einsum 1×1s: no convolution at all
      assert shapes == []
  assert _conv_kernel_shapes(lambda x: fmt.conv(x, implementation="reconstructed"), x) == [dense_shape]


@pytest.mark.parametrize("rank", [8, 576])
def test_auto_follows_plan(rank: int) -> None:
  # Traced only (make_jaxpr), so the realistic 8×32×32×64 shape costs nothing to compile.
  fmt = efficonv.CP(jnp.zeros((64, rank)), jnp.zeros((3, rank)), jnp.zeros((3, rank)), jnp.zeros((rank, 64)))
  x = jnp.zeros((8, 32, 32, 64))
  plan = fmt.plan(x.shape)
  shapes = _conv_kernel_shapes(lambda x: fmt.conv(x), x)
  assert ((3, 3, 64, 64) in shapes) == (plan.implementation == "reconstructed")


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_plan_fields(name: str) -> None:
  fmt, shape = _format(name), (2, 7, 9, IN_FEATURES)
  kwargs = {"strides": 2, "padding": "CIRCULAR", "dilation": (1, 2)}
  for impl in ("auto", "factorized", "reconstructed"):
    plan = fmt.plan(shape, implementation=impl, backend="cpu", **kwargs)  # type: ignore[arg-type]
    assert isinstance(plan, efficonv.Plan)
    assert plan.implementation in ("factorized", "reconstructed")
    if impl != "auto":
      assert plan.implementation == impl
    assert plan.reason
    assert plan.factorized_macs == fmt.macs(shape, **kwargs)  # type: ignore[arg-type]
    assert plan.dense_macs == fmt.dense_macs(shape, **kwargs)  # type: ignore[arg-type]
    assert plan.mac_ratio == pytest.approx(plan.dense_macs / plan.factorized_macs)
    assert plan.estimated_factorized_s > 0 and plan.estimated_reconstructed_s > 0
    if plan.implementation == "factorized" and name in DEPTHWISE_FORMATS:
      assert plan.depthwise == "shift"  # auto on CPU
    else:
      assert plan.depthwise is None
  forced = fmt.plan(shape, implementation="factorized", depthwise_implementation="xla", backend="cpu")
  assert forced.depthwise == ("xla" if name in DEPTHWISE_FORMATS else None)
  on_gpu = fmt.plan(shape, implementation="factorized", backend="gpu")
  assert on_gpu.depthwise == ("xla" if name in DEPTHWISE_FORMATS else None)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_dense_counts(name: str) -> None:
  fmt = _format(name)
  kh, kw = KERNEL_SIZE
  assert fmt.dense_params() == kh * kw * IN_FEATURES * OUT_FEATURES
  assert fmt.params() == sum(leaf.size for leaf in jax.tree.leaves(fmt))
  # VALID, stride 2 on 7×9: a 3×2 kernel gives 3×4 outputs.
  expected = 2 * 3 * 4 * kh * kw * IN_FEATURES * OUT_FEATURES
  assert fmt.dense_macs((2, 7, 9, IN_FEATURES), strides=2, padding="VALID") == expected
  assert fmt.dtype == jnp.float32
  assert fmt.kernel_size == KERNEL_SIZE
  assert (fmt.in_features, fmt.out_features) == (IN_FEATURES, OUT_FEATURES)
  assert fmt.to_dense().shape == (*KERNEL_SIZE, IN_FEATURES, OUT_FEATURES)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_reconstruction_macs_are_those_of_to_dense(name: str) -> None:
  # The planner charges the "reconstructed" path these MACs on every call; they must be the einsums' own
  # (counted on the traced to_dense), not a bound: an underestimate made CP pick a rebuild costing its rank
  # times the dense kernel at batch 1. The leading term is exact; einsum's order for the small ones may differ.
  fmt = _format(name)
  traced = efficonv.cost.macs_of_fn(lambda f: f.to_dense(), fmt)
  assert fmt.reconstruction_macs() == pytest.approx(traced, rel=0.15)
  g = efficonv.kernels.conv_geometry((1, 7, 9, IN_FEATURES), KERNEL_SIZE, IN_FEATURES, 1, "SAME", 1)
  terms = efficonv.planning.path_terms(fmt, g, "reconstructed", None)
  assert fmt.reconstruction_macs() in [t.macs for t in terms]


# --- bad input ---------------------------------------------------------------------------------------------

_BAD_CONV_CALLS = [
  ((7, 9, 6), {}, r"^x must be an NHWC array of rank 4"),
  ((2, 7, 9, 5), {}, r"^x must have 6 channels"),
  ((2, 7, 9, 6), {"padding": "FULL"}, r"^padding must be 'SAME', 'VALID', 'CIRCULAR', 'REFLECT'"),
  ((2, 7, 9, 6), {"padding": -1}, r"^padding must be"),
  ((2, 7, 9, 6), {"padding": ((1,), (2, 3))}, r"^padding must be"),
  ((2, 7, 9, 6), {"strides": 0}, r"^strides must be >= 1"),
  ((2, 7, 9, 6), {"dilation": 0}, r"^dilation must be >= 1"),
  ((2, 2, 9, 6), {"padding": "VALID"}, r"^padding 'VALID' leaves input axis 1 with 2 pixels, fewer than .* 3"),
  ((2, 7, 9, 6), {"padding": "VALID", "dilation": 4}, r"^padding 'VALID' leaves input axis 1 with 7 pixels"),
  ((2, 1, 9, 6), {"padding": "REFLECT"}, r"^padding 'REFLECT' needs input axis 1 larger than its pad 1, got 1"),
  ((2, 7, 9, 6), {"implementation": "fast"}, r"^implementation must be one of \('auto', 'autotune', 'factorized'"),
  ((2, 7, 9, 6), {"depthwise_implementation": "fast"}, r"^depthwise implementation must be one of"),
]


@pytest.mark.parametrize(("x_shape", "kwargs", "match"), _BAD_CONV_CALLS)
@pytest.mark.parametrize("impl", ["factorized", "reconstructed"])
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_conv_bad_input(name: str, impl: str, x_shape: tuple, kwargs: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    _format(name).conv(jnp.zeros(x_shape), **{"implementation": impl, **kwargs})


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_plan_and_macs_bad_input(name: str) -> None:
  fmt = _format(name)
  for method in (fmt.plan, fmt.macs, fmt.dense_macs):
    with pytest.raises(ValueError, match=r"^input_shape must be NHWC \(rank 4\)"):
      method((7, 9, 6))
    with pytest.raises(ValueError, match=r"^input must have 6 channels"):
      method((2, 7, 9, 3))
    with pytest.raises(ValueError, match=r"^strides must be >= 1"):
      method((2, 7, 9, 6), strides=0)
    with pytest.raises(ValueError, match=r"^padding must be"):
      method((2, 7, 9, 6), padding="FULL")


# --- pytree behaviour --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_leaves_are_the_factors_keyed_by_field(name: str) -> None:
  fmt = _format(name)
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(fmt)[0]]
  if name == "TT":
    assert paths == [".spatial", ".cores[0]", ".cores[1]"]
  else:
    assert paths == [f".{field}" for field in type(fmt)._fields]
  rebuilt = jax.tree.unflatten(jax.tree.structure(fmt), jax.tree.leaves(fmt))
  assert type(rebuilt) is type(fmt)
  chex.assert_trees_all_equal(rebuilt, fmt)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_jit_takes_formats_as_arguments_and_builds_them(name: str) -> None:
  fmt, x = _format(name), _input()
  eager = fmt.conv(x, implementation="factorized", precision="highest")
  jitted = jax.jit(lambda f, x: f.conv(x, implementation="factorized", precision="highest"))(fmt, x)
  assert_close(jitted, eager, 1e-6)
  # Constructed from traced leaves inside jit (shape checks run on tracers).
  rebuilt = jax.jit(lambda *leaves: _construct(name, leaves).to_dense(precision="highest"))(*jax.tree.leaves(fmt))
  assert_close(rebuilt, fmt.to_dense(precision="highest"), 1e-6)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_vmap_over_a_stack_of_formats(name: str) -> None:
  fmts = [_format(name, seed) for seed in range(3)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *fmts)
  assert type(stacked) is type(fmts[0])
  # Trailing-axis properties still read the per-format sizes.
  assert stacked.kernel_size == KERNEL_SIZE and stacked.in_features == IN_FEATURES
  x = _input()
  kwargs = {"strides": 2, "padding": "REFLECT", "implementation": "factorized", "precision": "highest"}
  out = jax.jit(jax.vmap(lambda f: f.conv(x, **kwargs)))(stacked)  # type: ignore[arg-type]
  chex.assert_shape(out, (3, 2, 4, 5, OUT_FEATURES))
  for i, fmt in enumerate(fmts):
    assert_close(out[i], fmt.conv(x, **kwargs), 1e-5)  # type: ignore[arg-type]
  # A stack built by hand is accepted too (shape checks look at trailing axes).
  by_hand = _construct(name, jax.tree.leaves(stacked))
  chex.assert_trees_all_equal(by_hand, stacked)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_grad_with_respect_to_factors(name: str) -> None:
  fmt, x = _format(name), _input()

  def loss(f: efficonv.Format, impl: str) -> jax.Array:
    return jnp.sum(f.conv(x, strides=2, padding="CIRCULAR", implementation=impl, precision="highest") ** 2)  # type: ignore[arg-type]

  grads = jax.jit(jax.grad(loss), static_argnums=1)(fmt, "factorized")
  assert type(grads) is type(fmt)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, fmt)
  # The gradient through the dense reconstruction is the same function's gradient.
  expected = jax.jit(jax.grad(loss), static_argnums=1)(fmt, "reconstructed")
  for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    assert_close(g, e, 1e-4)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_tree_map(name: str) -> None:
  fmt = _format(name)
  # Every dense entry is a product of one entry of each factor: doubling all factors scales it by 2**n_factors.
  doubled = jax.tree.map(lambda a: 2 * a, fmt)
  assert type(doubled) is type(fmt)
  scale = 2.0 ** len(jax.tree.leaves(fmt))
  assert_close(doubled.to_dense(precision="highest"), scale * fmt.to_dense(precision="highest"), 1e-6)
  # Maps to leaves that are not factors (scalars, dtypes) must not trip the constructor's shape checks.
  sums = jax.tree.map(jnp.sum, fmt)
  np.testing.assert_allclose(jax.tree.leaves(sums), [float(jnp.sum(a)) for a in jax.tree.leaves(fmt)], rtol=1e-6)
  assert jax.tree.leaves(jax.tree.map(lambda a: a.dtype, fmt)) == [jnp.float32] * len(jax.tree.leaves(fmt))
  shapes = jax.eval_shape(lambda f: f, fmt)
  assert [s.shape for s in jax.tree.leaves(shapes)] == [a.shape for a in jax.tree.leaves(fmt)]


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_optax_clips_and_updates_formats(name: str) -> None:
  fmt = _format(name)
  clip = optax.clip_by_global_norm(1.0)

  @jax.jit
  def norms_and_clipped(f: efficonv.Format) -> tuple[jax.Array, jax.Array, efficonv.Format]:
    clipped, _ = clip.update(f, clip.init(f))
    return optax.tree_utils.tree_norm(f), optax.tree_utils.tree_norm(clipped), clipped

  norm, clipped_norm, clipped = norms_and_clipped(fmt)
  np.testing.assert_allclose(norm, np.sqrt(sum(float(jnp.sum(a**2)) for a in jax.tree.leaves(fmt))), rtol=1e-5)
  assert type(clipped) is type(fmt)
  np.testing.assert_allclose(clipped_norm, 1.0, rtol=1e-5)

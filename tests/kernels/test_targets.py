"""Planning for the platforms and the symbolic sizes of a staged program (``efficonv.kernels.targets``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv.kernels import conv, depthwise, targets

X = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32)
DW = jax.ShapeDtypeStruct((3, 3, 4, 1), jnp.float32)


def _export(fn, *args, **kwargs) -> jax.export.Exported:  # type: ignore[no-untyped-def]
  return jax.export.export(jax.jit(fn), **kwargs)(*args)


def test_representative_shape_replaces_symbolic_sizes_and_says_so() -> None:
  shape = jax.export.symbolic_shape("b, h, 5, 4")
  assert targets.representative_shape(shape) == (
    (targets.SYMBOLIC_BATCH, targets.SYMBOLIC_SPATIAL, 5, 4),
    f"planned for batch {targets.SYMBOLIC_BATCH} (symbolic b), height {targets.SYMBOLIC_SPATIAL} (symbolic h)",
  )
  with targets.plan_for(batch=3, spatial=(6, 7)):
    assert targets.representative_shape(shape)[0] == (3, 6, 5, 4)
  assert targets.representative_shape((1, 2, 3, 4)) == ((1, 2, 3, 4), "")
  with pytest.raises(ValueError, match="concrete channel count"):
    targets.representative_shape(jax.export.symbolic_shape("b, 5, 5, c"))


@pytest.mark.parametrize(
  ("kwargs", "argument"),
  [
    ({"platforms": "gpu0"}, "platforms"),
    ({"platforms": ()}, "platforms"),
    ({"batch": 0}, "batch"),
    ({"spatial": (1, 2, 3)}, "spatial"),
  ],
)
def test_plan_for_rejects_bad_arguments_naming_them(kwargs: dict, argument: str) -> None:
  with pytest.raises(ValueError, match=argument), targets.plan_for(**kwargs):
    pass


def test_plan_for_sets_the_planned_backends_and_restores_them() -> None:
  default = targets.planned_backends()
  with targets.plan_for(platforms=("cpu", "cuda", "rocm")):
    assert targets.planned_backends() == ("cpu", "gpu")
    with pytest.raises(ValueError, match="several backends"):
      targets.current_backend()
    with targets.plan_for(platforms="tpu"):
      assert targets.current_backend() == "tpu"
  assert targets.planned_backends() == default


def test_a_platform_dependent_kernel_refuses_to_lower_elsewhere_and_a_forced_one_does_not() -> None:
  # Depthwise "auto" is shift-and-add on CPU and XLA's grouped conv elsewhere.
  auto = lambda x, k: depthwise(x, k)  # noqa: E731
  with pytest.raises(ValueError, match=r"planned this conv for \('cpu',\).*\('tpu',\)"):
    _export(auto, X, DW, platforms=("tpu",))
  _export(lambda x, k: depthwise(x, k, implementation="xla"), X, DW, platforms=("tpu",))
  with targets.plan_for(platforms=("cpu", "tpu")):
    both = _export(auto, X, DW, platforms=("cpu", "tpu"))
  assert "stablehlo.case" in both.mlir_module()
  x, k = jax.random.normal(jax.random.key(0), X.shape), jax.random.normal(jax.random.key(1), DW.shape)
  np.testing.assert_allclose(both.call(x, k), jax.jit(auto)(x, k), rtol=1e-5, atol=1e-5)


def test_a_program_of_gradients_alone_is_checked_too() -> None:
  w = jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32)
  x = jax.ShapeDtypeStruct((2, 2, 2, 4), jnp.float32)  # 2×2 maps: im2col on CPU, XLA's conv on GPU
  grad = jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2))
  with pytest.raises(ValueError, match="planned this conv for"):
    _export(grad, w, x, platforms=("cuda",))
  with targets.plan_for(platforms="cuda"):
    assert "stablehlo.convolution" in _export(grad, w, x, platforms=("cuda",)).mlir_module()

"""Tests of ``depthwise``: shift-and-add and XLA paths against a per-channel reference."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv.kernels import depthwise, depthwise_implementation, depthwise_shift, depthwise_xla

_DN = ("NHWC", "HWIO", "NHWC")
_NNX_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect"}
HIGHEST = "highest"  # no TF32 on GPU: the tolerances are float32 ones


def _normal(seed: int, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _reference(x: jax.Array, kernel: jax.Array, strides: tuple, padding: object, dilation: tuple) -> np.ndarray:
  """Output channel ``c·m + j`` is input channel ``c`` convolved with ``kernel[..., c, j]``, one dense conv each."""
  kh, kw, c, m = kernel.shape
  if isinstance(padding, str) and padding in _NNX_MODES:
    eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    pads = ((0, 0), ((eh - 1) // 2, eh // 2), ((ew - 1) // 2, ew // 2), (0, 0))
    x, padding = jnp.pad(x, pads, mode=_NNX_MODES[padding]), "VALID"
  outs = [
    jax.lax.conv_general_dilated(
      x[..., ci : ci + 1],
      kernel[:, :, ci : ci + 1, j : j + 1],
      strides,
      padding,
      rhs_dilation=dilation,
      dimension_numbers=_DN,
      precision="highest",
    )
    for ci in range(c)
    for j in range(m)
  ]
  return np.concatenate([np.asarray(o) for o in outs], axis=-1)


def _assert_close(actual: jax.Array, expected: np.ndarray, rel: float = 1e-5) -> None:
  scale = max(float(np.max(np.abs(expected))), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=0, atol=rel * scale)


_PADDINGS = ["SAME", "VALID", ((1, 2), (0, 1)), "CIRCULAR", "REFLECT"]


@pytest.mark.parametrize(("strides", "dilation"), [((1, 1), (1, 1)), ((2, 1), (1, 2))])
@pytest.mark.parametrize("padding", _PADDINGS, ids=["SAME", "VALID", "explicit", "CIRCULAR", "REFLECT"])
@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_shift_and_xla_match_grouped_reference(
  multiplier: int, padding: object, strides: tuple, dilation: tuple
) -> None:
  x, kernel = _normal(0, (2, 9, 8, 3)), _normal(1, (3, 2, 3, multiplier))
  expected = _reference(x, kernel, strides, padding, dilation)
  for impl in ("shift", "xla"):
    out = depthwise(
      x, kernel, strides=strides, padding=padding, dilation=dilation, implementation=impl, precision=HIGHEST
    )  # type: ignore[arg-type]
    chex.assert_shape(out, expected.shape)
    _assert_close(out, expected)


@pytest.mark.parametrize("impl", ["shift", "xla"])
def test_jit_matches_eager(impl: str) -> None:
  x, kernel = _normal(2, (2, 7, 9, 4)), _normal(3, (1, 3, 4, 2))
  kwargs = {"strides": 2, "padding": "CIRCULAR", "dilation": (2, 1), "implementation": impl, "precision": HIGHEST}
  eager = depthwise(x, kernel, **kwargs)  # type: ignore[arg-type]
  jitted = jax.jit(lambda x, k: depthwise(x, k, **kwargs))(x, kernel)  # type: ignore[arg-type]
  _assert_close(jitted, np.asarray(eager))
  _assert_close(eager, _reference(x, kernel, (2, 2), "CIRCULAR", (2, 1)))


def test_implementation_per_backend() -> None:
  assert depthwise_implementation("auto", "cpu") == "shift"
  assert depthwise_implementation("auto", "gpu") == "xla"
  assert depthwise_implementation("auto", "tpu") == "xla"
  assert depthwise_implementation("shift", "gpu") == "shift"
  assert depthwise_implementation("xla", "cpu") == "xla"
  assert depthwise_implementation("auto") == depthwise_implementation("auto", jax.default_backend())


@pytest.mark.parametrize("impl", ["shift", "xla"])
def test_bfloat16_keeps_dtype(impl: str) -> None:
  x, kernel = _normal(6, (2, 8, 8, 4), jnp.bfloat16), _normal(7, (3, 3, 4, 2), jnp.bfloat16)
  out = depthwise(x, kernel, implementation=impl)  # type: ignore[arg-type]
  chex.assert_type(out, jnp.bfloat16)
  expected = _reference(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), "SAME", (1, 1))
  _assert_close(out, expected, 2e-2)


@pytest.mark.parametrize("impl", ["shift", "xla"])
def test_mixed_dtypes_promote(impl: str) -> None:
  x, kernel = _normal(8, (1, 6, 5, 2), jnp.bfloat16), _normal(9, (2, 3, 2, 3))
  out = depthwise(x, kernel, implementation=impl, precision=HIGHEST)  # type: ignore[arg-type]
  chex.assert_type(out, jnp.float32)
  _assert_close(out, _reference(x.astype(jnp.float32), kernel, (1, 1), "SAME", (1, 1)))


@pytest.mark.parametrize(
  ("x_shape", "kernel_shape", "kwargs", "match"),
  [
    ((8, 8, 3), (3, 3, 3, 1), {}, r"^x must be an NHWC array of rank 4"),
    ((1, 8, 8, 3), (3, 3, 4, 1), {}, r"^kernel must have shape \(kh, kw, 3, depth_multiplier\)"),
    ((1, 8, 8, 3), (3, 3, 3), {}, r"^kernel must have shape"),
    ((1, 8, 8, 3), (3, 3, 3, 1), {"implementation": "cudnn"}, r"^depthwise implementation must be one of"),
    ((1, 8, 8, 3), (3, 3, 3, 1), {"strides": 0}, r"^strides must be >= 1"),
    ((1, 8, 8, 3), (3, 3, 3, 1), {"dilation": 0}, r"^dilation must be >= 1"),
    ((1, 8, 8, 3), (3, 3, 3, 1), {"padding": "FULL"}, r"^padding must be"),
    ((1, 8, 2, 3), (3, 3, 3, 1), {"padding": "VALID"}, r"^padding 'VALID' leaves input axis 2 with 2 pixels"),
  ],
)
def test_bad_input(x_shape: tuple, kernel_shape: tuple, kwargs: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    depthwise(jnp.zeros(x_shape), jnp.zeros(kernel_shape), **kwargs)


def test_unknown_implementation_for_resolver() -> None:
  with pytest.raises(ValueError, match=r"^depthwise implementation must be one of \('auto', 'shift', 'xla'\)"):
    depthwise_implementation("fast")


def test_forced_helpers_pass_options_through() -> None:
  x, kernel = _normal(10, (1, 7, 7, 2)), _normal(11, (3, 3, 2, 1))
  expected = _reference(x, kernel, (2, 2), "VALID", (1, 1))
  for fn in (depthwise_shift, depthwise_xla):
    _assert_close(fn(x, kernel, strides=2, padding="VALID", precision=HIGHEST), expected)


# --- derivatives of the shift path (custom JVP, kernel tangent tiled over images) ---------------------------

_depthwise_module = importlib.import_module("efficonv.kernels.depthwise")


@pytest.fixture
def tiny_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
  """Tiles of one or two images, so the tiled kernel tangent really runs as a loop on small tests."""
  monkeypatch.setattr(_depthwise_module, "_TILE_BYTES", 2 * 6 * 6 * 3 * 4)


@pytest.mark.parametrize(
  ("n", "image_bytes", "tile_bytes", "expected"),
  [(8, 100, 250, 2), (6, 100, 350, 3), (7, 100, 350, 1), (4, 500, 100, 1), (4, 10, 1000, 4)],
)
def test_images_per_tile_is_the_largest_divisor_that_fits(
  monkeypatch: pytest.MonkeyPatch, n: int, image_bytes: int, tile_bytes: int, expected: int
) -> None:
  monkeypatch.setattr(_depthwise_module, "_TILE_BYTES", tile_bytes)
  assert _depthwise_module._images_per_tile(n, image_bytes) == expected


@pytest.mark.usefixtures("tiny_tiles")
@pytest.mark.parametrize(("m", "strides", "dilation"), [(1, (1, 1), (1, 1)), (2, (2, 1), (1, 2)), (3, (1, 1), (2, 2))])
def test_shift_gradients_match_xla(m: int, strides: tuple, dilation: tuple) -> None:
  x, kernel = _normal(0, (6, 4, 4, 3)), _normal(1, (3, 3, 3, m))
  cotangent = _normal(2, depthwise_xla(x, kernel, strides=strides, dilation=dilation).shape)

  def loss(impl: str):
    return lambda x, k: jnp.vdot(depthwise(x, k, strides=strides, dilation=dilation, implementation=impl), cotangent)

  for argnums in ((0, 1), (0,), (1,)):
    got = jax.jit(jax.grad(loss("shift"), argnums=argnums))(x, kernel)
    want = jax.grad(loss("xla"), argnums=argnums)(x, kernel)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("tiny_tiles")
@pytest.mark.usefixtures("tiny_tiles")
def test_shift_forward_mode_and_second_order() -> None:
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 4, 4, 3)), jnp.float64)
    kernel = jnp.asarray(np.random.default_rng(4).standard_normal((3, 3, 3, 2)), jnp.float64)
    jax.test_util.check_grads(
      lambda x, k: depthwise_shift(x, k, strides=(2, 1)), (x, kernel), order=2, modes=("fwd", "rev")
    )
    ones = (jnp.ones_like(kernel),)
    jvp_shift = jax.jvp(lambda k: depthwise_shift(x, k), (kernel,), ones)[1]
    jvp_xla = jax.jvp(lambda k: depthwise_xla(x, k, precision=HIGHEST), (kernel,), ones)[1]
    np.testing.assert_allclose(jvp_shift, jvp_xla, rtol=1e-10, atol=1e-10)


def test_shift_gradient_keeps_bfloat16() -> None:
  x, kernel = _normal(5, (2, 5, 5, 4), jnp.bfloat16), _normal(6, (3, 3, 4, 1), jnp.bfloat16)
  gx, gk = jax.grad(lambda x, k: depthwise_shift(x, k).astype(jnp.float32).sum(), argnums=(0, 1))(x, kernel)
  assert gx.dtype == jnp.bfloat16 and gk.dtype == jnp.bfloat16
  want = jax.grad(lambda k: depthwise_xla(x.astype(jnp.float32), k, precision=HIGHEST).sum())(
    kernel.astype(jnp.float32)
  )
  np.testing.assert_allclose(np.asarray(gk, np.float32), want, rtol=2e-2, atol=2e-1)

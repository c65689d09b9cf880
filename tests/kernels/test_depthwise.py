"""Tests of ``depthwise``: shift-and-add and XLA paths against a per-channel reference."""

from __future__ import annotations

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

"""Tests of :mod:`experiments.bench.peers` and the efficonv-versus-peers ratios (no timing assertions).

Every peer computes the *same* function as the efficonv layer it is compared
with (same weights), so the benchmark compares like with like.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import peers
from experiments.bench.cases import SCHEMES, Shape
from experiments.bench.layers_report import markdown, peer_ratios, summary_text
from experiments.bench.peers import keras_separable, tltorch_convs, torch_sequences

SHAPE_K3 = Shape(1, 8, 8, 8, 3)
SHAPE_K5 = Shape(1, 8, 8, 8, 5)  # the only kind of shape with a "stacked" scheme


def _x(shape: Shape) -> np.ndarray:
  return np.random.default_rng(0).standard_normal(shape.input_shape, np.float32)


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


def _torch_nhwc(torch: Any, module: Any, x: np.ndarray, channels_last: bool) -> np.ndarray:
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  m = module.to(memory_format=fmt)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
  with torch.no_grad():
    return m(xt).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def layers() -> dict[str, Any]:
  """efficonv's default layer of every scheme on the 8×8×8 k3 shape, plus ``stacked`` at k5 (its only kind)."""
  from flax import nnx

  out = peers.efficonv_layers(SHAPE_K3)
  assert set(out) == {s.name for s in SCHEMES if s.applies(SHAPE_K3)} and "stacked" not in out
  (stacked,) = [s for s in SCHEMES if s.name == "stacked"]
  assert stacked.applies(SHAPE_K5)
  out["stacked"] = stacked.build(SHAPE_K5, nnx.Rngs(0))
  return out


def _shape_of(scheme: str) -> Shape:
  return SHAPE_K5 if scheme == "stacked" else SHAPE_K3


def test_torch_sequences_compute_the_efficonv_layers(layers: dict[str, Any]) -> None:
  torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (bench extra)")
  assert set(layers) == {s.name for s in SCHEMES}
  for name, layer in layers.items():
    x = _x(_shape_of(name))
    expected = np.asarray(layer(jnp.asarray(x)))
    module = torch_sequences.torch_sequence(torch, name, layer)
    for channels_last in (False, True):
      _close(_torch_nhwc(torch, module, x, channels_last), expected)


def test_torch_sequences_have_the_efficonv_input_gradient(layers: dict[str, Any]) -> None:
  torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (bench extra)")
  for name, layer in layers.items():
    x = _x(_shape_of(name))
    cot = np.random.default_rng(1).standard_normal(x.shape, np.float32)
    _, pullback = jax.vjp(layer, jnp.asarray(x))
    (expected,) = pullback(jnp.asarray(cot))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    torch_sequences.torch_sequence(torch, name, layer)(xt).backward(torch.from_numpy(cot.transpose(0, 3, 1, 2).copy()))
    _close(xt.grad.permute(0, 2, 3, 1).numpy(), np.asarray(expected))


def test_torch_dense_is_the_same_conv() -> None:
  torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (bench extra)")
  x = _x(SHAPE_K3)
  kernel = np.random.default_rng(2).standard_normal((3, 3, 8, 8), np.float32)
  expected = jax.lax.conv_general_dilated(
    jnp.asarray(x), jnp.asarray(kernel), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  _close(_torch_nhwc(torch, torch_sequences.torch_sequence(torch, "dense", kernel), x, True), np.asarray(expected))


def test_torch_sequence_rejects_unknown_schemes_and_biased_layers(layers: dict[str, Any]) -> None:
  torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (bench extra)")
  from flax import nnx

  from efficonv.nnx import CPConv

  with pytest.raises(ValueError, match="scheme"):
    torch_sequences.torch_sequence(torch, "nope", layers["cp"])
  biased = CPConv(8, 8, 3, rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="use_bias=False"):
    torch_sequences.torch_sequence(torch, "cp", biased)


def test_tltorch_convs_compute_the_efficonv_layers(layers: dict[str, Any]) -> None:
  torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (bench extra)")
  tl = pytest.importorskip("tensorly", reason="TensorLy is an optional peer (test/bench extra)")
  pytest.importorskip("tltorch", reason="TensorLy-Torch is an optional peer (bench extra)")
  # The import above set TensorLy's backend to PyTorch; the peers' own import must leave it alone.
  tl.set_backend("numpy")
  tltorch, _ = tltorch_convs.import_tltorch()
  assert tl.get_backend() == "numpy"
  x = _x(SHAPE_K3)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with tl.backend_context("pytorch"):
    for scheme, implementation in tltorch_convs.TLTORCH_CASES:
      module = tltorch_convs.tltorch_conv(tltorch, torch, scheme, layers[scheme], implementation)
      with torch.no_grad():
        got = module(xt).permute(0, 2, 3, 1).numpy()
      _close(got, np.asarray(layers[scheme](jnp.asarray(x))))
  assert tl.get_backend() == "numpy"


def test_keras_separable_computes_the_efficonv_layers(monkeypatch: pytest.MonkeyPatch, layers: dict[str, Any]) -> None:
  if "keras" not in sys.modules:
    monkeypatch.setenv("KERAS_BACKEND", "jax")
  keras = pytest.importorskip("keras", reason="Keras is an optional peer (bench extra)")
  if keras.backend.backend() != "jax":
    pytest.skip(f"keras runs the {keras.backend.backend()} backend, the peer needs jax")
  x = jnp.asarray(_x(SHAPE_K3))
  for scheme in keras_separable.KERAS_SCHEMES:
    k = keras_separable.keras_separable(keras, layers[scheme], SHAPE_K3.input_shape)
    _close(np.asarray(k(x)), np.asarray(layers[scheme](x)))


@pytest.mark.parametrize(
  ("peer", "module", "reason"),
  [
    ("torch", "torch", "torch is not importable"),
    ("tltorch", "tltorch", "tltorch is not importable"),
    ("keras", "keras", "keras is not importable"),
  ],
)
def test_a_missing_peer_is_skipped_with_its_reason(
  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], peer: str, module: str, reason: str
) -> None:
  monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
  records, notes = peers.run([SHAPE_K3], repeats=1, max_seconds=0.01, peers=(peer,))
  assert records == []
  assert len(notes) == 1 and notes[0].startswith(f"{peer} peers skipped: {reason}")
  assert reason in capsys.readouterr().out


def test_keras_with_another_backend_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
  fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "torch"))
  monkeypatch.setitem(sys.modules, "keras", fake)
  records, notes = peers.run([SHAPE_K3], repeats=1, max_seconds=0.01, peers=("keras",))
  assert records == [] and "already imported with the 'torch' backend" in notes[0]


def test_parse_peers() -> None:
  assert peers.parse_peers("all") == peers.PEERS == peers.parse_peers("")
  assert peers.parse_peers("none") == ()
  assert peers.parse_peers("keras, torch") == ("torch", "keras")
  with pytest.raises(ValueError, match="peers"):
    peers.parse_peers("torch,caffe")
  with pytest.raises(ValueError, match="peers"):
    peers.run([SHAPE_K3], repeats=1, max_seconds=0.01, peers=("caffe",))


def test_run_smoke_records_every_peer_case() -> None:
  pytest.importorskip("torch", reason="PyTorch is an optional peer (bench extra)")
  shape = Shape(1, 4, 4, 8, 3)
  records, notes = peers.run([shape], repeats=1, max_seconds=0.001, peers=("torch",))
  names = {s.name for s in SCHEMES if s.applies(shape)} | {"dense"}
  got = {(r["peer"], r["scheme"], r["pass"]) for r in records}
  assert got == {
    (p, s, q) for p in ("torch", "torch_channels_last") for s in names for q in ("forward", "forward_backward")
  }
  assert all(r["median_ms"] > 0 and r["speedup_vs_torch_dense"] > 0 for r in records)
  assert any("versions: torch" in n for n in notes)


def _rec(variant: str, implementation: str, ms: float, pass_name: str = "forward") -> dict[str, Any]:
  return {
    "variant": variant,
    "scheme": variant.split("/")[0],
    "implementation": implementation,
    "depthwise": None,
    "auto_choice": "factorized/shift" if implementation == "auto" else None,
    "shape_label": "1x8x8x8 k3",
    "pass": pass_name,
    "median_ms": ms,
    "iqr_ms": 0.1,
    "macs": 100,
    "gflops": 1.0,
    "mac_ratio": 4.0,
    "speedup": 2.0,
    "speedup_over_mac_ratio": 0.5,
    "dense_method": "dense/lax",
    "dense_median_ms": 2.0,
  }


def _peer(peer: str, scheme: str, implementation: str, ms: float, layout: str = "nchw") -> dict[str, Any]:
  parts = (peer, scheme) + ((implementation,) if implementation != "sequence" else ())
  return {
    "variant": "/".join(parts),
    "peer": peer,
    "scheme": scheme,
    "implementation": implementation,
    "layout": layout,
    "shape_label": "1x8x8x8 k3",
    "pass": "forward",
    "median_ms": ms,
    "iqr_ms": 0.1,
  }


def test_peer_ratios_match_the_default_layer_and_apply_the_targets() -> None:
  records = [
    _rec("dense/lax", "lax", 2.0),
    _rec("dense/eigen", "eigen", 1.6),
    _rec("cp/factorized/shift", "factorized", 0.5),  # faster, but auto is what a user gets
    _rec("cp/auto", "auto", 1.0),
    _rec("cp/auto", "auto", 9.0, pass_name="forward_backward"),
    _rec("bottleneck/factorized", "factorized", 0.8),
  ]
  peer_records = [
    _peer("tltorch", "cp", "factorized", 3.0),
    _peer("tltorch", "cp", "reconstructed", 0.5),
    _peer("torch_channels_last", "cp", "sequence", 0.9, "channels_last"),
    _peer("torch_channels_last", "bottleneck", "sequence", 1.6, "channels_last"),
    _peer("torch", "dense", "sequence", 0.8),
    _peer("keras_jax", "separable_m1", "sequence", 1.0, "nhwc"),  # no efficonv record: not matched
  ]
  ratios = peer_ratios(records, peer_records)
  by_peer = {r["peer_variant"]: r for r in ratios}
  assert set(by_peer) == {
    "tltorch/cp/factorized",
    "tltorch/cp/reconstructed",
    "torch_channels_last/cp",
    "torch_channels_last/bottleneck",
    "torch/dense",
  }
  tl_cp = by_peer["tltorch/cp/factorized"]
  assert tl_cp["efficonv_variant"] == "cp/auto" and tl_cp["ratio"] == 3.0
  assert tl_cp["target"] == 2.0 and tl_cp["meets_target"] is True
  assert (
    by_peer["tltorch/cp/reconstructed"]["target"] is None
    and by_peer["tltorch/cp/reconstructed"]["meets_target"] is None
  )
  cl_cp = by_peer["torch_channels_last/cp"]
  assert cl_cp["ratio"] == pytest.approx(0.9) and cl_cp["target"] == 1.0 and cl_cp["meets_target"] is False
  assert by_peer["torch_channels_last/bottleneck"]["ratio"] == 2.0
  dense = by_peer["torch/dense"]
  assert dense["efficonv_variant"] == "dense/eigen" and dense["ratio"] == pytest.approx(0.5) and dense["target"] is None

  result = {
    "machine": {"command": "x"},
    "records": records,
    "peers": {"records": peer_records, "notes": ["n"]},
    "peer_ratios": ratios,
  }
  text = markdown(result)
  assert "## efficonv versus peers" in text
  assert "| 1x8x8x8 k3 | forward | cp | cp/auto | 1.000 | torch_channels_last/cp | 0.900 | 0.90 | 1x | **no** |" in text
  summary = summary_text(result)
  assert "peers: 2 of 3 targets met; worst cp vs torch_channels_last/cp" in summary


def test_add_speedups_uses_the_dense_conv_of_the_same_layout() -> None:
  records = [
    _peer("torch", "dense", "sequence", 2.0),
    _peer("torch_channels_last", "dense", "sequence", 1.0, "channels_last"),
    _peer("torch", "cp", "sequence", 0.5),
    _peer("keras_jax", "separable_m1", "sequence", 0.25, "nhwc"),
    {**_peer("tltorch", "cp", "factorized", 1.0), "shape_label": "other"},
  ]
  peers.add_speedups(records)
  assert [r["speedup_vs_torch_dense"] for r in records] == [1.0, 1.0, 4.0, 4.0, None]

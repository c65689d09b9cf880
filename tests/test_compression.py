"""``efficonv.compress`` on a small trained CNN: exactness, the report's numbers, selection and fine-tuning.

The CNN (three 3×3 convs and a linear head on 1×16×16 images) is trained for a
few dozen Adam steps on a synthetic three-class stripes data set, once per
module. Its second and third convs have the same kernel shape, so one rank fits
both and each decomposition compiles once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import efficonv
from efficonv import cost, schemes
from efficonv import nnx as enn
from efficonv import rank as rank_rules
from efficonv.compression import Report

BATCH, SIZE, CLASSES, WIDTH = 24, 16, 3, 8
INPUT_SHAPE = (BATCH, SIZE, SIZE, 1)
PATHS = ("conv1", "conv2", "conv3")
# Exact ranks for the (3, 3, 8, 8) kernels of conv2 and conv3. TT gets an int, which the fit clips to
# the maximal (exact) ranks.
EXACT_RANK: dict[str, Any] = {"tucker2": (WIDTH, WIDTH), "spatial": 3 * WIDTH, "separable": WIDTH, "tt": 10**3}
CP_RANK = 3  # planted for the exact test; lossy on the trained kernels


class CNN(nnx.Module):
  """conv1 (SAME) → conv2 (stride 2) → conv3 (stride 2, VALID) → linear head."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, WIDTH, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(WIDTH, WIDTH, (3, 3), strides=2, rngs=rngs)
    self.conv3 = nnx.Conv(WIDTH, WIDTH, (3, 3), strides=2, padding="VALID", rngs=rngs)
    self.head = nnx.Linear(3 * 3 * WIDTH, CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.conv3(x))
    return self.head(x.reshape(x.shape[0], -1))


def stripes(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """Class 0: horizontal stripes, 1: vertical, 2: diagonal; random phase and period, plus noise."""
  k_label, k_phase, k_period, k_noise = jax.random.split(key, 4)
  labels = jax.random.randint(k_label, (n,), 0, CLASSES)
  phase = jax.random.uniform(k_phase, (n, 1, 1), maxval=2 * math.pi)
  period = jax.random.uniform(k_period, (n, 1, 1), minval=3.0, maxval=6.0)
  rows, cols = jnp.meshgrid(jnp.arange(SIZE), jnp.arange(SIZE), indexing="ij")
  coordinate = jnp.stack([rows, cols, rows + cols])[labels]  # (n, SIZE, SIZE)
  images = jnp.sin(2 * math.pi * coordinate / period + phase)
  images = images + 0.3 * jax.random.normal(k_noise, images.shape)
  return images[..., None], labels


def loss_fn(model: nnx.Module, x: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, labels: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, labels)
  optimizer.update(model, grads)
  return loss


def fit(model: nnx.Module, x: jax.Array, labels: jax.Array, steps: int, learning_rate: float) -> list[float]:
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
  return [float(train_step(model, optimizer, x, labels)) for _ in range(steps)]


@pytest.fixture(scope="module")
def data() -> tuple[jax.Array, jax.Array]:
  return stripes(jax.random.key(0), BATCH)


@pytest.fixture(scope="module")
def trained(data: tuple[jax.Array, jax.Array]) -> CNN:
  model = CNN(nnx.Rngs(0))
  losses = fit(model, *data, steps=40, learning_rate=1e-2)
  assert losses[-1] < 0.5 * losses[0]  # it learned something: its kernels are trained, not random
  return model


def params_snapshot(model: nnx.Module) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(p): np.array(v) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
  }


def relative(a: jax.Array, b: jax.Array) -> float:
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def plant_cp(model: CNN, rank: int) -> CNN:
  """A copy of ``model`` whose conv2/conv3 kernels have CP rank ``rank`` (same Frobenius norms)."""
  planted = nnx.clone(model)
  rng = np.random.default_rng(0)
  for path in ("conv2", "conv3"):
    conv = getattr(planted, path)
    factors = [rng.standard_normal((n, rank)) for n in conv.kernel.shape]
    kernel = np.einsum("xr,yr,cr,sr->xycs", *factors)
    kernel *= float(jnp.linalg.norm(conv.kernel[...].ravel())) / np.linalg.norm(kernel)
    conv.kernel[...] = jnp.asarray(kernel, jnp.float32)
  return planted


@pytest.mark.parametrize("scheme", ["cp", "tucker2", "spatial", "separable", "tt"])
def test_exact_ranks_reproduce_the_trained_model(scheme: str, trained: CNN, data: tuple[jax.Array, jax.Array]) -> None:
  model = plant_cp(trained, CP_RANK) if scheme == "cp" else trained
  rank = CP_RANK if scheme == "cp" else EXACT_RANK[scheme]
  compressed, report = efficonv.compress(
    model, efficonv.Policy(scheme=scheme, rank=rank, implementation="factorized", force=True), input_shape=INPUT_SHAPE
  )
  replaced = [r for r in report.layers if r.scheme not in ("skipped", "dense")]
  assert [r.path for r in replaced] == ["conv2", "conv3"]
  assert all(isinstance(getattr(compressed, r.path), schemes.get(scheme).nnx_layer) for r in replaced)
  total_error = sum(r.relative_error for r in replaced)
  assert total_error < 1e-4
  # Two lossless-up-to-float32 layers: the output moves by at most a small multiple of their kernel errors.
  tolerance = 1e-4 + 10 * total_error
  x, _ = data
  assert relative(compressed(x), model(x)) < tolerance


def test_lossy_model_is_the_model_with_the_reconstructed_kernels(
  trained: CNN, data: tuple[jax.Array, jax.Array]
) -> None:
  compressed, report = efficonv.compress(trained, efficonv.Policy(scheme="cp", rank=CP_RANK), input_shape=INPUT_SHAPE)
  reference = nnx.clone(trained)
  for r in report.layers[1:]:
    kernel = getattr(trained, r.path).kernel[...]
    dense = getattr(compressed, r.path).to_dense()
    assert r.relative_error > 1e-2  # lossy
    np.testing.assert_allclose(relative(dense, kernel), r.relative_error, rtol=1e-4)
    getattr(reference, r.path).kernel[...] = dense
  x, _ = data
  y, y_reference, y_original = compressed(x), reference(x), trained(x)
  assert relative(y, y_reference) < 1e-5
  assert relative(y, y_original) > 1e-3


def test_report_counts_match_the_cost_model(trained: CNN) -> None:
  policy = efficonv.Policy(scheme="cp", rank=CP_RANK, implementation="factorized")
  compressed, report = efficonv.compress(trained, policy, input_shape=INPUT_SHAPE)
  assert [r.path for r in report.layers] == list(PATHS)
  out_sizes = {"conv1": SIZE, "conv2": SIZE // 2, "conv3": (SIZE // 2 - 3) // 2 + 1}
  in_shapes = {"conv1": INPUT_SHAPE, "conv2": (BATCH, SIZE, SIZE, WIDTH), "conv3": (BATCH, SIZE // 2, SIZE // 2, WIDTH)}
  for r in report.layers:
    original, new = getattr(trained, r.path), getattr(compressed, r.path)
    assert r.input_shape == in_shapes[r.path]
    cin = r.input_shape[-1]
    assert r.macs_before == BATCH * out_sizes[r.path] ** 2 * 9 * cin * WIDTH  # N·H'·W'·kh·kw·C_in·C_out
    assert r.params_before == 9 * cin * WIDTH + WIDTH == cost.params(original)
    assert r.macs_before == cost.macs(original, r.input_shape)
    assert r.params_after == cost.params(new)
    assert r.macs_after == cost.macs(new, r.input_shape)
    if r.path == "conv1":
      assert (r.scheme, r.rank, r.macs_after, r.params_after) == ("skipped", None, r.macs_before, r.params_before)
    else:
      assert (r.scheme, r.rank, r.rank_reason) == ("cp", CP_RANK, "given")
      assert r.macs_after < r.macs_before and r.params_after < r.params_before
      assert r.implementation == "factorized"
  assert report.macs_before == sum(r.macs_before for r in report.layers)
  assert report.macs_after == sum(r.macs_after for r in report.layers)
  assert report.params_before == sum(r.params_before for r in report.layers)
  assert report.params_after == sum(r.params_after for r in report.layers)
  # Whole models (traced): everything but the convs (the head) is the same before and after.
  head_macs = cost.macs(trained, INPUT_SHAPE) - report.macs_before
  assert head_macs == BATCH * 3 * 3 * WIDTH * CLASSES
  assert cost.macs(compressed, INPUT_SHAPE) - report.macs_after == head_macs
  assert cost.params(trained) - report.params_before == cost.params(compressed) - report.params_after


def test_report_renders_to_markdown_and_json(trained: CNN) -> None:
  _, report = efficonv.compress(trained, efficonv.Policy(scheme="cp", rank=CP_RANK), input_shape=INPUT_SHAPE)
  lines = report.to_markdown().splitlines()
  assert len(lines) == 2 + len(PATHS)
  assert lines[0].startswith("| layer |")
  for line, r in zip(lines[2:], report.layers):
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == [r.path, r.scheme, str(r.rank)]
    assert f"{r.macs_before:,} → {r.macs_after:,}" in cells
  decoded = json.loads(report.to_json())
  assert decoded == json.loads(json.dumps(report.to_dict()))
  assert [layer["path"] for layer in decoded["layers"]] == list(PATHS)
  assert decoded["layers"][1]["rank"] == CP_RANK
  assert decoded["layers"][1]["input_shape"] == [BATCH, SIZE, SIZE, WIDTH]
  assert decoded["totals"] == {
    "params_before": report.params_before,
    "params_after": report.params_after,
    "macs_before": report.macs_before,
    "macs_after": report.macs_after,
  }


def replaced_paths(report: Report) -> list[str]:
  return [r.path for r in report.layers if r.scheme not in ("skipped", "dense")]


def test_skip_first(trained: CNN) -> None:
  # Spatial rank 3 is exact for conv1 (min(kh·C_in, kw·C_out) = 3) and valid for conv2/conv3.
  compressed, report = efficonv.compress(trained, efficonv.Policy(scheme="spatial", rank=3), input_shape=INPUT_SHAPE)
  assert replaced_paths(report) == ["conv2", "conv3"]
  assert type(compressed.conv1) is nnx.Conv and "skip_first" in report.layers[0].rank_reason
  # conv1 (1 input channel) costs more factorized than dense: never-worse keeps it unless forced.
  compressed, report = efficonv.compress(
    trained, efficonv.Policy(scheme="spatial", rank=3, skip_first=False, force=True), input_shape=INPUT_SHAPE
  )
  assert replaced_paths(report) == list(PATHS)
  assert isinstance(compressed.conv1, enn.SpatialConv) and report.layers[0].relative_error < 1e-5


@pytest.mark.parametrize(
  ("include", "expected"),
  [
    (["conv3"], ["conv3"]),
    ("conv3", ["conv3"]),  # one path as a string (not a substring test)
    (("conv2", "conv3"), ["conv2", "conv3"]),
    (lambda path, conv: conv.padding == "VALID", ["conv3"]),
  ],
  ids=["list", "string", "tuple", "predicate"],
)
def test_include(include: Any, expected: list[str], trained: CNN) -> None:
  compressed, report = efficonv.compress(
    trained, efficonv.Policy(scheme="cp", rank=CP_RANK, include=include), input_shape=INPUT_SHAPE
  )
  assert replaced_paths(report) == expected
  for r in report.layers:
    assert isinstance(getattr(compressed, r.path), enn.CPConv) == (r.path in expected)
  assert report.layers[1].rank_reason == ("given" if "conv2" in expected else "not included")


def test_include_predicate_sees_path_and_conv(trained: CNN) -> None:
  seen: list[tuple[str, type]] = []

  def include(path: str, conv: nnx.Conv) -> bool:
    seen.append((path, type(conv)))
    return False

  _, report = efficonv.compress(
    trained, efficonv.Policy(scheme="cp", rank=CP_RANK, include=include, skip_first=False), input_shape=INPUT_SHAPE
  )
  assert seen == [(path, nnx.Conv) for path in PATHS]
  assert replaced_paths(report) == []


def test_unknown_include_paths_are_rejected_naming_them(trained: CNN) -> None:
  policy = efficonv.Policy(scheme="cp", rank=CP_RANK, include=["conv2", "block9/conv", "head"])
  with pytest.raises(ValueError, match=r"include.*'block9/conv', 'head'"):
    efficonv.compress(trained, policy, input_shape=INPUT_SHAPE)
  with pytest.raises(ValueError, match=r"include.*\['conv'\]"):  # a string is one path, never a substring
    efficonv.compress(trained, efficonv.Policy(scheme="cp", rank=CP_RANK, include="conv"), input_shape=INPUT_SHAPE)


def test_original_is_unchanged_by_compress_and_by_fine_tuning_the_copy(
  trained: CNN, data: tuple[jax.Array, jax.Array]
) -> None:
  before = params_snapshot(trained)
  compressed, _ = efficonv.compress(trained, efficonv.Policy(scheme="cp", rank=CP_RANK), input_shape=INPUT_SHAPE)
  assert type(trained.conv2) is nnx.Conv and type(trained.conv3) is nnx.Conv
  x, labels = data
  loss_before = float(loss_fn(compressed, x, labels))
  losses = fit(compressed, x, labels, steps=25, learning_rate=1e-3)
  loss_after = float(loss_fn(compressed, x, labels))
  assert losses[0] == pytest.approx(loss_before, rel=1e-5)
  assert loss_after < loss_before
  assert isinstance(compressed.conv2, enn.CPConv)  # fine-tuned as factors, not densified
  after = params_snapshot(trained)
  assert after.keys() == before.keys()
  for key in before:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)


class ListNet(nnx.Module):
  """A stem conv, then convs held in an ``nnx.List`` (paths ``blocks/0``, ``blocks/1``)."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(1, WIDTH, (3, 3), rngs=rngs)
    self.blocks = nnx.List([nnx.Conv(WIDTH, WIDTH, (3, 3), strides=2, rngs=rngs) for _ in range(2)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.stem(x)
    for block in self.blocks:
      x = nnx.relu(block(x))
    return x


def test_convs_in_an_nnx_list(data: tuple[jax.Array, jax.Array]) -> None:
  model = ListNet(nnx.Rngs(1))
  compressed, report = efficonv.compress(
    model, efficonv.Policy(scheme="tucker2", rank=EXACT_RANK["tucker2"], force=True), input_shape=INPUT_SHAPE
  )
  assert [r.path for r in report.layers] == ["stem", "blocks/0", "blocks/1"]
  assert replaced_paths(report) == ["blocks/0", "blocks/1"]
  assert all(isinstance(block, enn.TuckerConv) for block in compressed.blocks)
  assert compressed.blocks[1].strides == (2, 2)
  x, _ = data
  assert relative(compressed(x), model(x)) < 1e-4
  _, report = efficonv.compress(
    model,
    efficonv.Policy(scheme="tucker2", rank=EXACT_RANK["tucker2"], include=["blocks/1"], force=True),
    input_shape=INPUT_SHAPE,
  )
  assert replaced_paths(report) == ["blocks/1"]


class DropoutNet(nnx.Module):
  """Needs ``train``: ``model(x, train=...)``."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, WIDTH, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(WIDTH, WIDTH, (3, 3), strides=2, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.conv2(self.dropout(nnx.relu(self.conv1(x)), deterministic=not train))


def test_forward_for_models_with_extra_arguments(data: tuple[jax.Array, jax.Array]) -> None:
  model = DropoutNet(nnx.Rngs(2))
  policy = efficonv.Policy(scheme="tucker2", rank=EXACT_RANK["tucker2"], force=True)
  with pytest.raises(TypeError, match="train"):
    efficonv.compress(model, policy, input_shape=INPUT_SHAPE)
  forward: Callable[[nnx.Module, jax.Array], jax.Array] = lambda m, x: m(x, train=False)  # noqa: E731
  compressed, report = efficonv.compress(model, policy, input_shape=INPUT_SHAPE, forward=forward)
  assert replaced_paths(report) == ["conv2"]
  x, _ = data
  assert relative(compressed(x, train=False), model(x, train=False)) < 1e-4


class DepthwiseNet(nnx.Module):
  """A depthwise (grouped) conv between two plain ones: no factorized layer reproduces it."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, WIDTH, (3, 3), rngs=rngs)
    self.depthwise = nnx.Conv(WIDTH, WIDTH, (3, 3), feature_group_count=WIDTH, rngs=rngs)
    self.conv2 = nnx.Conv(WIDTH, WIDTH, (3, 3), strides=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv2(nnx.relu(self.depthwise(nnx.relu(self.conv1(x)))))


def test_ineligible_convs_are_skipped_or_rejected_when_named() -> None:
  model = DepthwiseNet(nnx.Rngs(3))
  policy = efficonv.Policy(scheme="tucker2", rank=EXACT_RANK["tucker2"], force=True)
  compressed, report = efficonv.compress(model, policy, input_shape=INPUT_SHAPE)
  assert replaced_paths(report) == ["conv2"]
  depthwise = report.layers[1]
  assert depthwise.path == "depthwise" and "feature_group_count" in depthwise.rank_reason
  assert depthwise.macs_before == depthwise.macs_after == cost.macs(model.depthwise, depthwise.input_shape)
  assert type(compressed.depthwise) is nnx.Conv
  named = efficonv.Policy(scheme="tucker2", rank=EXACT_RANK["tucker2"], include=["depthwise"], force=True)
  with pytest.raises(ValueError, match=r"include.*'depthwise'.*feature_group_count"):
    efficonv.compress(model, named, input_shape=INPUT_SHAPE)


def test_vbmf_rule_for_tucker2(trained: CNN) -> None:
  rule = rank_rules.VBMF()
  _, report = efficonv.compress(trained, efficonv.Policy(scheme="tucker2", rank=rule), input_shape=INPUT_SHAPE)
  for r in report.layers[1:]:
    conv = getattr(trained, r.path)
    choice = rank_rules.choose_rank(
      "tucker2", conv.kernel[...], rule, input_shape=r.input_shape, strides=conv.strides, padding=conv.padding
    )
    assert r.rank == choice.rank and r.rank_reason == choice.reason
    assert r.rank_reason and 1 <= r.rank[0] <= WIDTH and 1 <= r.rank[1] <= WIDTH


def test_mac_reduction_rule_for_cp(trained: CNN) -> None:
  _, report = efficonv.compress(
    trained, efficonv.Policy(scheme="cp", rank=rank_rules.MacReduction(4)), input_shape=INPUT_SHAPE
  )
  assert replaced_paths(report) == ["conv2", "conv3"]
  for r in report.layers[1:]:
    assert r.macs_before / r.macs_after >= 4
    assert r.rank_reason
    # The largest such rank: one more term would miss the target (the rule's own claim, checked on the layer).
    conv = getattr(trained, r.path)
    bigger = enn.CPConv.from_format(
      efficonv.CP.init(jax.random.key(0), WIDTH, WIDTH, (3, 3), r.rank + 1),
      strides=conv.strides,
      padding=conv.padding,
    )
    assert r.macs_before / cost.macs(bigger, r.input_shape) < 4


# --- the convs that stay dense: efficonv.nnx.Conv ------------------------------------------------


@pytest.mark.parametrize("implementation", ["auto", "xla", "im2col"])
def test_replace_dense_keeps_the_outputs(implementation: str, trained: CNN, data: tuple[jax.Array, jax.Array]) -> None:
  from efficonv.compression import replace_dense
  from efficonv.nnx import Conv as FastConv

  fast = replace_dense(trained, implementation)
  convs = [node for _, node in nnx.iter_graph(fast) if isinstance(node, nnx.Conv)]
  assert convs and all(type(c) is FastConv and c.implementation == implementation for c in convs)
  assert all(type(node) is nnx.Conv for _, node in nnx.iter_graph(trained) if isinstance(node, nnx.Conv))
  x = data[0][:4]
  np.testing.assert_allclose(fast(x), trained(x), rtol=1e-4, atol=1e-5)


def test_policy_dense_implementation_turns_the_kept_convs_into_efficonv_convs(
  trained: CNN, data: tuple[jax.Array, jax.Array]
) -> None:
  from efficonv.nnx import Conv as FastConv

  plain, _ = efficonv.compress(trained, efficonv.Policy(scheme="cp", rank=CP_RANK), input_shape=INPUT_SHAPE)
  policy = efficonv.Policy(scheme="cp", rank=CP_RANK, dense_implementation="im2col")
  fast, report = efficonv.compress(trained, policy, input_shape=INPUT_SHAPE)
  assert type(fast.conv1) is FastConv and fast.conv1.implementation == "im2col"
  assert report.layers[0].implementation == "dense/im2col"
  np.testing.assert_allclose(fast(data[0][:4]), plain(data[0][:4]), rtol=1e-4, atol=1e-5)
  # A model of efficonv convs compresses like one of nnx.Convs: their calls are traced too.
  from efficonv.compression import replace_dense

  _, again = efficonv.compress(
    replace_dense(trained), efficonv.Policy(scheme="cp", rank=CP_RANK), input_shape=INPUT_SHAPE
  )
  assert [(r.path, r.scheme, r.input_shape) for r in again.layers] == [
    (r.path, r.scheme, r.input_shape) for r in report.layers
  ]


def test_bad_dense_implementation_names_the_argument() -> None:
  from efficonv.compression import replace_dense

  with pytest.raises(ValueError, match=r"policy\.dense_implementation"):
    efficonv.Policy(scheme="cp", rank=2, dense_implementation="fast")
  with pytest.raises(ValueError, match="implementation must be 'auto', 'autotune' or one of"):
    replace_dense(nnx.Conv(1, 1, (1, 1), rngs=nnx.Rngs(0)), "fast")


# --- per-layer policies, their JSON, replay -------------------------------------------------------


def test_policy_json_round_trip_is_lossless() -> None:
  policy = efficonv.Policy(
    scheme="tt",
    rank=rank_rules.Energy(0.9),
    skip_first=False,
    include=["conv2", "conv3"],
    implementation="factorized",
    dense_implementation="im2col",
    decompose_kwargs={"in_modes": [2, 4], "out_modes": (4, 2)},
    layers={
      "conv1": "dense",
      "conv2": ["tucker2", [4, 3]],
      "conv3": ("cp", rank_rules.MacReduction(4), {"n_iter": 50, "tol": 0.0}),
      "block/0": ("spatial", rank_rules.VBMF()),
      "block/1": ("separable", rank_rules.Fixed(2)),
      "block/2": ("tt", rank_rules.ParamFraction(0.25)),
    },
    force=["conv2"],
  )
  assert policy.layers["conv2"] == ("tucker2", (4, 3)) and policy.decompose_kwargs["in_modes"] == (2, 4)
  text = policy.to_json()
  again = efficonv.Policy.from_json(text)
  assert again == policy
  assert again.to_json() == text
  assert json.loads(text)["layers"]["conv3"][1] == {"rule": "MacReduction", "reduction": 4.0}
  for rule in (rank_rules.VBMF(), rank_rules.Fixed((2, 3)), 7, (3, 4)):
    plain = efficonv.Policy(scheme="tucker2", rank=rule)
    assert efficonv.Policy.from_json(plain.to_json()) == plain


def test_policy_json_rejects_what_it_cannot_write() -> None:
  with pytest.raises(ValueError, match="include"):
    efficonv.Policy(scheme="cp", rank=2, include=lambda path, conv: True).to_json()
  with pytest.raises(ValueError, match="decompose_kwargs"):
    efficonv.Policy(scheme="cp", rank=2, decompose_kwargs={"key": jax.random.key(0)}).to_json()
  with pytest.raises(ValueError, match=r"data has keys that are not Policy fields.*'ranks'"):
    efficonv.Policy.from_dict({"scheme": "cp", "ranks": 2})
  with pytest.raises(ValueError, match=r"rule of efficonv\.rank"):
    efficonv.Policy.from_dict({"scheme": "cp", "rank": {"rule": "Magic"}})


@pytest.mark.parametrize(
  ("layers", "match"),
  [
    ({"conv2": "sparse"}, r"policy\.layers\['conv2'\] must be 'dense'"),
    ({"conv2": ("cp",)}, r"policy\.layers\['conv2'\] must be"),
    ({"conv2": ("svd", 2)}, r"policy\.layers\['conv2'\]'s scheme must be one of"),
    ({"conv2": ("cp", 2.5)}, r"policy\.layers\['conv2'\]'s rank must be"),
    ({"conv2": ("cp", 2, [1])}, r"policy\.layers\['conv2'\]'s decompose_kwargs must be a dict"),
  ],
)
def test_bad_layer_entries_name_the_path(layers: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    efficonv.Policy(scheme="cp", rank=2, layers=layers)


def test_per_layer_policy_overrides_the_uniform_fields(trained: CNN) -> None:
  policy = efficonv.Policy(
    scheme="cp", rank=CP_RANK, layers={"conv1": ("spatial", 3), "conv3": ("tucker2", (4, 4))}, force=["conv1"]
  )  # conv1 is named, so skip_first does not apply to it; spatial costs more MACs there, hence force
  compressed, report = efficonv.compress(trained, policy, input_shape=INPUT_SHAPE)
  assert [(r.path, r.scheme, r.rank) for r in report.layers] == [
    ("conv1", "spatial", 3),
    ("conv2", "cp", CP_RANK),
    ("conv3", "tucker2", (4, 4)),
  ]
  assert isinstance(compressed.conv1, enn.SpatialConv) and isinstance(compressed.conv3, enn.TuckerConv)
  assert report.policy.layers == {"conv1": ("spatial", 3), "conv2": ("cp", CP_RANK), "conv3": ("tucker2", (4, 4))}
  only, report = efficonv.compress(trained, efficonv.Policy(layers={"conv2": ("cp", 2)}), input_shape=INPUT_SHAPE)
  assert replaced_paths(report) == ["conv2"] and type(only.conv3) is nnx.Conv
  assert "policy.rank is None" in report.layers[2].rank_reason
  with pytest.raises(ValueError, match=r"policy\.layers names paths that are not convs: \['head'\]"):
    efficonv.compress(trained, efficonv.Policy(layers={"head": "dense"}), input_shape=INPUT_SHAPE)
  with pytest.raises(ValueError, match=r"policy\.force names paths that are not convs: \['conv9'\]"):
    efficonv.compress(trained, efficonv.Policy(scheme="cp", rank=2, force="conv9"), input_shape=INPUT_SHAPE)


def structure(model: nnx.Module) -> dict[str, Any]:
  """Each state leaf's path with its shape and dtype, and each module's type and configuration."""
  leaves = {
    jax.tree_util.keystr(p): (tuple(v.shape), str(v.dtype))
    for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))
  }
  modules = {
    "/".join(map(str, p)): (type(m).__name__, getattr(m, "strides", None), getattr(m, "padding", None))
    for p, m in nnx.iter_graph(model)
    if isinstance(m, nnx.Module)
  }
  return {"leaves": leaves, "modules": modules}


@pytest.mark.parametrize(
  ("scheme", "rule"),
  [("cp", rank_rules.MacReduction(4)), ("tucker2", rank_rules.VBMF()), ("tt", rank_rules.Energy(0.6))],
)
def test_report_policy_replays_the_compression(scheme: str, rule: Any, trained: CNN) -> None:
  compressed, report = efficonv.compress(
    trained, efficonv.Policy(scheme=scheme, rank=rule, dense_implementation="xla"), input_shape=INPUT_SHAPE
  )
  resolved = report.policy
  assert set(resolved.layers) == set(PATHS) and resolved.include is None
  for r in report.layers:
    assert resolved.layers[r.path] == ("dense" if r.rank is None else (r.scheme, r.rank))
  policy = efficonv.Policy.from_json(resolved.to_json())
  rebuilt, again = efficonv.compress(trained, policy, input_shape=INPUT_SHAPE, decompose=False)
  assert structure(rebuilt) == structure(compressed)
  assert [(r.path, r.rank, r.macs_after) for r in again.layers] == [
    (r.path, r.rank, r.macs_after) for r in report.layers
  ]
  assert replaced_paths(again) == replaced_paths(report)
  assert all(math.isnan(r.relative_error) for r in again.layers if r.rank is not None)
  assert again.policy == policy


def test_decompose_false_runs_under_eval_shape(trained: CNN) -> None:
  policy = efficonv.Policy(scheme="cp", rank=rank_rules.MacReduction(4))
  abstract = nnx.eval_shape(
    lambda: efficonv.compress(CNN(nnx.Rngs(5)), policy, input_shape=INPUT_SHAPE, decompose=False)[0]
  )
  compressed, _ = efficonv.compress(trained, policy, input_shape=INPUT_SHAPE)
  assert structure(abstract) == structure(compressed)
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree_util.tree_leaves(nnx.state(abstract)))
  with pytest.raises(ValueError, match=r"policy\.rank.*Energy.*decompose=False"):
    efficonv.compress(
      trained, efficonv.Policy(scheme="cp", rank=rank_rules.Energy(0.9)), input_shape=INPUT_SHAPE, decompose=False
    )


RESTORE_SCRIPT = """
import sys
import jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
from flax import nnx
sys.path.insert(0, sys.argv[1])
import efficonv
from test_compression import CNN, INPUT_SHAPE
directory = sys.argv[2]
policy = efficonv.Policy.from_json(open(directory + "/policy.json").read())
abstract = nnx.eval_shape(
  lambda: efficonv.compress(CNN(nnx.Rngs(123)), policy, input_shape=INPUT_SHAPE, decompose=False)[0]
)
graphdef, abstract_state = nnx.split(abstract)
state = ocp.StandardCheckpointer().restore(directory + "/state", abstract_state)
model = nnx.merge(graphdef, state)
np.save(directory + "/restored.npy", np.asarray(model(jnp.asarray(np.load(directory + "/x.npy")))))
"""


def test_saved_compressed_model_restores_in_a_new_process(
  trained: CNN, data: tuple[jax.Array, jax.Array], tmp_path: Any
) -> None:
  import os
  import subprocess
  import sys

  ocp = pytest.importorskip("orbax.checkpoint")
  compressed, report = efficonv.compress(
    trained, efficonv.Policy(scheme="tucker2", rank=rank_rules.VBMF()), input_shape=INPUT_SHAPE
  )
  assert replaced_paths(report)  # something to restore beyond the dense layers
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", nnx.state(compressed))
  checkpointer.wait_until_finished()
  (tmp_path / "policy.json").write_text(report.policy.to_json())
  x = np.asarray(data[0][:4])
  np.save(tmp_path / "x.npy", x)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  done = subprocess.run(
    [sys.executable, "-c", RESTORE_SCRIPT, tests_dir, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    cwd=os.path.dirname(tests_dir),
  )
  assert done.returncode == 0, done.stderr[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "restored.npy"), np.asarray(compressed(jnp.asarray(x))))


# --- never worse than dense ---------------------------------------------------------------------


@pytest.mark.parametrize(
  ("scheme", "rule"),
  [("tt", rank_rules.Energy(0.9)), ("spatial", rank_rules.Energy(0.95)), ("tucker2", rank_rules.Energy(0.99))],
)
def test_costlier_candidates_stay_dense_unless_forced(scheme: str, rule: Any, trained: CNN) -> None:
  _, forced_report = efficonv.compress(
    trained, efficonv.Policy(scheme=scheme, rank=rule, force=True), input_shape=INPUT_SHAPE
  )
  costlier = [r.path for r in forced_report.layers if r.macs_after > r.macs_before]
  assert costlier  # the rule does make layers costlier here
  compressed, report = efficonv.compress(trained, efficonv.Policy(scheme=scheme, rank=rule), input_shape=INPUT_SHAPE)
  for r, f in zip(report.layers, forced_report.layers):
    assert r.macs_after <= r.macs_before
    if r.path in costlier:
      assert (r.scheme, r.rank) == ("dense", None) and type(getattr(compressed, r.path)) is nnx.Conv
      assert (
        r.rank_reason
        == f"candidate {scheme} rank {f.rank if isinstance(f.rank, int) else tuple(f.rank)} costs {f.macs_after:,} MACs > dense {r.macs_before:,}"
      )
      assert report.policy.layers[r.path] == "dense"
    else:
      assert (r.scheme, r.rank, r.macs_after) == (f.scheme, f.rank, f.macs_after)
  assert report.macs_after <= report.macs_before
  # Forcing one layer by path replaces only that one anyway.
  one = costlier[0]
  _, by_path = efficonv.compress(
    trained, efficonv.Policy(scheme=scheme, rank=rule, force=[one]), input_shape=INPUT_SHAPE
  )
  assert [r.scheme == "dense" for r in by_path.layers] == [r.path in costlier and r.path != one for r in report.layers]


class _Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs) -> None:
    self.conv = nnx.Conv(4, 4, (3, 3), bias_init=nnx.initializers.normal(1.0), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.conv(x))


class _ScannedNet(nnx.Module):
  """A stem conv, then three blocks stacked by nnx.vmap and applied by nnx.scan (the flax idiom)."""

  def __init__(self, rngs: nnx.Rngs) -> None:
    self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs: nnx.Rngs) -> _Block:
      return _Block(rngs)

    self.blocks = create(rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def apply(x: jax.Array, block: _Block) -> jax.Array:
      return block(x)

    return apply(self.stem(x), self.blocks)


SCANNED_SHAPE = (2, 6, 6, 1)


def _scanned_net() -> _ScannedNet:
  # Initialized in one compiled program (eagerly, every initializer op would compile on its own).
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: _ScannedNet(nnx.Rngs(0))))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(_ScannedNet(nnx.Rngs(0))))())


def test_compress_factorizes_each_layer_of_a_scanned_stack_and_stacks_them_back() -> None:
  net = _scanned_net()
  x = jax.random.normal(jax.random.key(1), SCANNED_SHAPE)
  policy = efficonv.Policy(scheme="tucker2", rank=(4, 4), force=True)  # exact: the output must not move
  small, report = efficonv.compress(net, policy, input_shape=SCANNED_SHAPE)
  np.testing.assert_allclose(
    nnx.jit(lambda m, x: m(x))(small, x), nnx.jit(lambda m, x: m(x))(net, x), rtol=1e-4, atol=1e-4
  )
  assert isinstance(small.blocks.conv, enn.TuckerConv) and small.blocks.conv.stack_shape == (3,)
  row = report.layers[1]
  assert (row.path, row.scheme, row.rank, row.input_shape) == ("blocks/conv", "tucker2", (4, 4), (2, 6, 6, 4))
  assert row.params_before == 3 * (9 * 16 + 4) and row.params_after == cost.params(small.blocks.conv)
  assert row.macs_before == 3 * 2 * 36 * 9 * 16 and row.macs_after == cost.macs(small.blocks.conv, row.input_shape)
  assert row.relative_error < 1e-4 and "each of the 3 stacked layers" in row.rank_reason
  # The checkpoint-restore recipe: the same structure again, abstractly.
  again = nnx.eval_shape(lambda: efficonv.compress(net, report.policy, input_shape=SCANNED_SHAPE, decompose=False)[0])
  assert jax.tree.map(jnp.shape, nnx.state(again)) == jax.tree.map(jnp.shape, nnx.state(small))


def test_compress_gives_a_stack_the_largest_rank_its_layers_choose() -> None:
  net = _scanned_net()
  kernel = np.array(net.blocks.conv.kernel[...])
  u = np.asarray(jax.random.normal(jax.random.key(2), (3, 3, 4, 1)))
  kernel[0] = u * np.arange(1, 5)  # layer 0's kernel has rank 1 over its output channels
  net.blocks.conv.kernel[...] = jnp.asarray(kernel)
  policy = efficonv.Policy(scheme="tucker2", rank=rank_rules.Energy(0.999), force=True)
  _, report = efficonv.compress(net, policy, input_shape=SCANNED_SHAPE)
  row = report.layers[1]
  assert row.rank == (4, 4) and "the stack takes the largest, (4, 4)" in row.rank_reason
  assert "per stacked layer (" in row.rank_reason


def test_a_stack_left_dense_becomes_a_stack_of_efficonv_convs() -> None:
  net = _scanned_net()
  policy = efficonv.Policy(layers={"blocks/conv": "dense"}, dense_implementation="auto")
  fast, report = efficonv.compress(net, policy, input_shape=SCANNED_SHAPE)
  assert type(fast.blocks.conv) is enn.Conv and fast.blocks.conv.kernel.shape == (3, 3, 3, 4, 4)
  assert report.layers[1].implementation == "dense/auto"
  x = jax.random.normal(jax.random.key(1), SCANNED_SHAPE)
  run = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(run(fast, x), run(net, x), rtol=1e-5, atol=1e-5)

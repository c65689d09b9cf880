"""Models and schemes of the experiments: every scheme builds, has the right shapes and the documented costs.

Shapes are checked with ``nnx.eval_shape``/``jax.eval_shape`` (tracing only), so all schemes and both
architectures run in seconds.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import efficonv
from efficonv import cost
from efficonv.nnx import CPConv, SpatialConv, TuckerConv
from efficonv.rank import MacReduction
from experiments.common.config import ModelConfig
from experiments.models import NETWORKS, VGG, ResNet, build_model, network_config, stage_layout
from experiments.schemes import SCHEMES, STEM_FACTORIZABLE, base_scheme, reference_of, scheme_conv, stem_conv, widen


def _abstract_model(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> nnx.Module:
  return nnx.eval_shape(lambda: build_model(cfg, image_shape, rngs=nnx.Rngs(0)))


def _output_shape(model: nnx.Module, x_shape: tuple[int, ...], **kwargs: bool) -> tuple[int, ...]:
  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state, copy=True)(x, **kwargs)

  return jax.eval_shape(forward, state, jax.ShapeDtypeStruct(x_shape, jnp.float32)).shape


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
  ("arch", "image_shape", "stages"),
  [("vgg", (28, 28, 1), (8, 16)), ("resnet", (32, 32, 3), (8, 16, 16))],
)
def test_every_scheme_builds_with_logits_shape(scheme, arch, image_shape, stages):
  cfg = ModelConfig(arch=arch, scheme=scheme, num_classes=7, stem_features=8, stage_features=stages, stage_depth=2)
  model = _abstract_model(cfg, image_shape)
  assert isinstance(model, VGG if arch == "vgg" else ResNet)
  for train in (True, False):
    assert _output_shape(model, (3, *image_shape), train=train) == (3, 7)


def test_first_conv_stays_dense_and_later_convs_follow_the_scheme():
  model = _abstract_model(ModelConfig(scheme="cp", stem_features=8, stage_features=(8, 16)), (28, 28, 1))
  assert type(model.stem.conv) is nnx.Conv
  assert [type(layer.conv).__name__ for layer in model.layers] == ["CPConv"] * 4


def test_spatial_stem_factorizes_the_stem_too_and_differs_from_spatial_only_there():
  cfg = ModelConfig(scheme="spatial", stem_features=8, stage_features=(8, 16))
  plain = _abstract_model(cfg, (28, 28, 1))
  stem = _abstract_model(ModelConfig(scheme="spatial_stem", stem_features=8, stage_features=(8, 16)), (28, 28, 1))
  assert type(plain.stem.conv) is nnx.Conv
  assert type(stem.stem.conv) is SpatialConv
  assert stem.stem.conv.kernel_size == (3, 3)
  assert [type(layer.conv) for layer in stem.layers] == [SpatialConv] * 4
  # Only the stem differs: dense 3·3·1·8 = 72 parameters vs spatial rank min(8/2, 3·1) = 3: 3·1·3 + 3·3·8 = 81.
  assert stem.stem.conv.vertical.shape == (3, 1, 3)
  assert cost.params(stem) - cost.params(plain) == 81 - 72
  assert cost.params(stem.layers) == cost.params(plain.layers)
  assert cost.macs(stem, (1, 28, 28, 1)) > cost.macs(plain, (1, 28, 28, 1))
  assert reference_of("spatial_stem") == "spatial" and base_scheme("spatial_stem") == "spatial"
  # The flag does the same for any scheme that allows it; the stem stays 3×3 when the later convs are not.
  same = _abstract_model(dataclasses.replace(cfg, factorize_stem=True), (28, 28, 1))
  assert cost.params(same) == cost.params(stem)
  big = _abstract_model(dataclasses.replace(cfg, factorize_stem=True, kernel_size=5), (28, 28, 1))
  assert big.stem.conv.kernel_size == (3, 3) and big.layers[0].conv.kernel_size == (5, 5)


@pytest.mark.parametrize(("scheme", "layer"), [("spatial", SpatialConv), ("cp", CPConv), ("tucker2", TuckerConv)])
@pytest.mark.parametrize(
  ("arch", "image_shape", "stages"),
  [("vgg", (28, 28, 1), (8, 16)), ("resnet", (32, 32, 3), (8, 16))],
)
def test_factorize_stem_builds_the_stem_with_the_scheme_layer(scheme, layer, arch, image_shape, stages):
  cfg = ModelConfig(arch=arch, scheme=scheme, stem_features=8, stage_features=stages, factorize_stem=True)
  model = _abstract_model(cfg, image_shape)
  assert type(model.stem.conv) is layer
  assert (model.stem.conv.in_features, model.stem.conv.out_features) == (image_shape[2], 8)
  assert cost.params(model) != cost.params(_abstract_model(dataclasses.replace(cfg, factorize_stem=False), image_shape))
  for train in (True, False):
    assert _output_shape(model, (2, *image_shape), train=train) == (2, 10)


def test_factorized_stem_runs_on_real_arrays():
  model = build_model(
    ModelConfig(scheme="spatial_stem", stem_features=4, stage_features=(4, 8)), (28, 28, 1), rngs=nnx.Rngs(0)
  )
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  stem_out = model.stem.conv(x)
  assert stem_out.shape == (2, 28, 28, 4)
  # The spatial stem computes a 3×3 conv with its reconstructed kernel.
  dense = jax.lax.conv_general_dilated(
    x, model.stem.conv.to_dense(), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(stem_out, dense, rtol=1e-4, atol=1e-5)
  assert model(x).shape == (2, 10)


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if base_scheme(s) not in STEM_FACTORIZABLE])
def test_factorize_stem_refuses_schemes_that_cannot_replace_the_stem(scheme):
  with pytest.raises(ValueError, match="factorize_stem"):
    build_model(ModelConfig(scheme=scheme, factorize_stem=True), (28, 28, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="factorize_stem"):
    stem_conv(ModelConfig(scheme=scheme, factorize_stem=True), 1, rngs=nnx.Rngs(0))


def test_wide_merges_pairs_and_widens_by_sqrt2():
  cfg = ModelConfig(scheme="wide", stage_features=(32, 64), stage_depth=3)
  assert stage_layout(cfg) == [[44, 44], [92, 92]]  # ceil(3/2) convs, 32·√2 = 45.3 → 44, 64·√2 = 90.5 → 92
  assert stage_layout(ModelConfig(stage_features=(32, 64), stage_depth=3)) == [[32] * 3, [64] * 3]
  resnet = _abstract_model(
    ModelConfig(arch="resnet", scheme="wide", stage_features=(8, 16), stage_depth=2), (32, 32, 3)
  )
  assert [len(block.convs) for block in resnet.blocks] == [1, 1, 1, 1]
  assert widen(8, 2**0.5) == 12


def _zeros_layer(scheme: str, channels: int) -> nnx.Module:
  """The layer with zero parameters: costs depend on shapes only, and this skips initializing them."""
  abstract = nnx.eval_shape(
    lambda: scheme_conv(scheme, channels, channels, strides=1, cfg=ModelConfig(), rngs=nnx.Rngs(0))
  )
  graphdef, state = nnx.split(abstract)
  return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def _per_pixel_macs(scheme: str, channels: int) -> float:
  # Large maps, so the extra rows/columns some factorized steps compute on the padding (≈ 2/128) hardly count.
  return cost.macs(_zeros_layer(scheme, channels), (1, 128, 128, channels)) / 128**2


@pytest.mark.parametrize(
  ("scheme", "expected"),
  [
    # The table in experiments/schemes.py, for C = 16 (ranks: spatial C/2, CP C, Tucker/bottleneck C/2).
    ("dense", 9 * 16**2),
    ("dense5", 25 * 16**2),
    ("spatial", 3 * 8 * 16 + 3 * 8 * 16),
    ("bottleneck", 16 * 8 + 9 * 8 * 8 + 8 * 16),
    ("tucker2", 16 * 8 + 9 * 8 * 8 + 8 * 16),
    ("cp", 16 * 16 + 3 * 16 + 3 * 16 + 16 * 16),
    ("separable_m1", 9 * 16 + 16 * 16),
    ("separable_m4", 9 * 4 * 16 + 4 * 16 * 16),
    ("separable_m8", 9 * 8 * 16 + 8 * 16 * 16),
  ],
)
def test_scheme_costs_match_the_documented_table(scheme, expected):
  assert _per_pixel_macs(scheme, 16) == pytest.approx(expected, rel=0.02)


def test_stacked_costs_18_of_the_25_of_a_dense_5x5():
  # Two 3×3 convs on an input padded for 5×5: the first one's output is 2 pixels larger per side pair.
  assert cost.macs(_zeros_layer("stacked", 16), (1, 8, 8, 16)) == (10 * 10 + 8 * 8) * 9 * 16 * 16
  assert reference_of("stacked") == "dense5"
  assert reference_of("cp") == "dense"


@pytest.mark.parametrize("scheme", ["spatial", "cp", "tucker2", "tt", "separable_m4", "bottleneck", "stacked"])
def test_scheme_conv_strides(scheme):
  layer = nnx.eval_shape(lambda: scheme_conv(scheme, 8, 16, strides=2, cfg=ModelConfig(), rngs=nnx.Rngs(0)))
  assert _output_shape(layer, (2, 9, 9, 8)) == (2, 5, 5, 16)


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match="scheme"):
    build_model(ModelConfig(scheme="fancy"), (28, 28, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="arch"):
    build_model(ModelConfig(arch="vit"), (28, 28, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="input_shape"):
    build_model(ModelConfig(), (1, 28, 28, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="input_shape"):
    build_model(ModelConfig(stage_features=(8, 8, 8)), (4, 4, 1), rngs=nnx.Rngs(0))  # three 2×2 pools
  with pytest.raises(ValueError, match="stage_depth"):
    stage_layout(ModelConfig(stage_depth=0))


# --- The realistic networks (experiments.models.NETWORKS) ------------------------------------------------------


@pytest.mark.parametrize("name", list(NETWORKS))
def test_realistic_networks_give_logits(name):
  cfg, shape = network_config(name)
  model = _abstract_model(cfg, shape)
  assert _output_shape(model, (2, *shape)) == (2, cfg.num_classes)
  assert _output_shape(model, (2, *shape), train=True) == (2, cfg.num_classes)


def test_vgg11_cifar_macs_match_the_hand_count():
  cfg, shape = network_config("vgg11_cifar")
  # (pixels of the conv's output map, C_in, C_out): stem at 32², pool; 128 at 16², pool; 256×2 at 8²; ...
  convs = [(32 * 32, 3, 64), (16 * 16, 64, 128), (8 * 8, 128, 256), (8 * 8, 256, 256)]
  convs += [(4 * 4, 256, 512), (4 * 4, 512, 512), (2 * 2, 512, 512), (2 * 2, 512, 512)]
  expected = sum(9 * p * cin * cout for p, cin, cout in convs) + 512 * 10  # flattened 1×1×512 → 10 logits
  assert cost.macs(_abstract_model(cfg, shape), (1, *shape)) == expected
  assert [len(stage) for stage in stage_layout(cfg)] == [1, 2, 2, 2]


def test_imagenet_resnets_have_their_published_costs():
  # ResNet-18: 1.82 G multiply-adds, ResNet-50: 4.1 G (He et al. 2016, Table 1, 224×224).
  r18, shape = network_config("resnet18_imagenet")
  r50, _ = network_config("resnet50_imagenet")
  assert cost.macs(_abstract_model(r18, shape), (1, *shape)) / 1e9 == pytest.approx(1.81, abs=0.02)
  model = _abstract_model(r50, shape)
  assert cost.macs(model, (1, *shape)) / 1e9 == pytest.approx(4.09, abs=0.02)
  assert [type(c.conv) for c in model.blocks[0].convs] == [nnx.Conv] * 3
  assert model.blocks[0].convs[2].conv.out_features == 4 * 64 and model.blocks[-1].convs[2].conv.out_features == 2048
  assert model.stem.conv.kernel_size == (7, 7) and model.stem.conv.strides == 2


def test_bottleneck_blocks_put_the_scheme_in_the_3x3_conv_with_the_stride():
  cfg, shape = network_config("resnet50_imagenet", "cp", width_divisor=16)
  model = _abstract_model(cfg, shape)
  block = model.blocks[3]  # the first block of stage 2: stride 2, projected shortcut
  assert [type(c.conv) for c in block.convs] == [nnx.Conv, CPConv, nnx.Conv]
  assert block.convs[1].conv.strides == (2, 2) and block.projection is not None
  assert _output_shape(model, (1, *shape)) == (1, 1000)
  with pytest.raises(ValueError, match="wide"):
    _abstract_model(dataclasses.replace(cfg, scheme="wide"), shape)
  with pytest.raises(ValueError, match="imagenet_stem"):
    _abstract_model(dataclasses.replace(cfg, scheme="spatial_stem"), shape)
  with pytest.raises(ValueError, match="imagenet_stem"):
    _abstract_model(dataclasses.replace(network_config("vgg11_cifar")[0], imagenet_stem=True), (32, 32, 3))


def test_network_config_names_bad_arguments():
  with pytest.raises(ValueError, match="name"):
    network_config("alexnet")
  with pytest.raises(ValueError, match="width_divisor"):
    network_config("vgg11_cifar", width_divisor=0)
  with pytest.raises(ValueError, match="scheme"):
    network_config("vgg11_cifar", "fancy")
  assert network_config("vgg16_cifar", width_divisor=16)[0].stage_features == (4, 8, 16, 32, 32)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_compress_works_on_every_realistic_network(name):
  # 4–8 channels: few distinct kernel shapes to decompose, the layout (paths, strides, blocks) of the real one.
  cfg, shape = network_config(name, width_divisor=64)
  model = build_model(cfg, shape, rngs=nnx.Rngs(0))
  small, report = efficonv.compress(
    model, efficonv.Policy(scheme="tucker2", rank=MacReduction(4)), input_shape=(1, *shape)
  )
  replaced = [r for r in report.layers if r.scheme == "tucker2"]
  kept = [r for r in report.layers[1:] if r.scheme != "tucker2"]
  # Only 1×1 convs (ResNet projections) may stay dense: factorized they would cost more (never worse).
  assert report.layers[0].scheme == "skipped" and all(r.scheme == "dense" for r in kept) and replaced
  assert sum(r.macs_after for r in replaced) < sum(r.macs_before for r in replaced) / 3
  assert _output_shape(small, (1, *shape)) == (1, cfg.num_classes)

"""Factorized layers with per-factor sharding train under ``nnx.jit`` on 2 (fake CPU) devices, batch-sharded.

A model holds every scheme on the ``"factorized"`` and ``"reconstructed"`` paths, CP also on the XLA depthwise
path, and the two blocks; its factors carry sharding annotations (``kernel_init`` wrapped by
:func:`flax.nnx.with_partitioning`, ``factor_metadata``, ``bias_metadata``). Two SGD steps on a 2-device
Explicit mesh must give the losses and parameters of the same steps on a 1-device mesh, and keep every
annotated sharding. The shift-and-add kernel tangent's batch tiling is forced at these tiny shapes (a small
tile budget), so its tiled transpose runs with a sharded batch too. On a 2-device Auto mesh the same model,
with every layer switched to ``"auto"`` (which picks one of the two paths per layer, asserted), must give the
same results too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh process: the device count is fixed when JAX starts.
SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import efficonv.kernels.depthwise as depthwise
from efficonv import nnx as enn

assert jax.device_count() == 2, jax.devices()
depthwise._TILE_BYTES = 2048  # tiles of 2 images per shard at 6×6×4 float32 (the batch has 4 per shard)
C = 4
# LeCun's variance from a plain normal draw: its eager init compiles faster than lecun_normal's truncated normal.
SHARD_OUT = nnx.with_partitioning(nnx.initializers.variance_scaling(1.0, "fan_in", "normal"), (None, None, None, "data"))
FACTOR_SHARDINGS = {  # one rank (or multiplier) axis sharded per scheme, over the batch's mesh axis (FSDP)
  "CPConv": {"first": {"out_sharding": (None, "data")}},
  "SeparableConv": {"depthwise": {"out_sharding": (None, None, None, "data")}},
  "TTConv": {"cores": [{"out_sharding": (None, None, None, "data")}, {}]},
  "TuckerConv": {"core": {"out_sharding": (None, None, "data", None)}},
  "SpatialConv": {"vertical": {"out_sharding": (None, None, "data")}},
}


def model(rngs):
  layers = []
  for impl in ("factorized", "reconstructed"):
    kw = dict(kernel_init=SHARD_OUT, implementation=impl, bias_metadata={"out_sharding": ("data",)}, rngs=rngs)
    layers += [
      enn.CPConv(C, C, 3, rank=2, factor_metadata=FACTOR_SHARDINGS["CPConv"], **kw),
      enn.SeparableConv(C, C, 3, depth_multiplier=2, factor_metadata=FACTOR_SHARDINGS["SeparableConv"], **kw),
      enn.TTConv(C, C, 3, rank=2, in_modes=(2, 2), out_modes=(2, 2), factor_metadata=FACTOR_SHARDINGS["TTConv"], **kw),
      enn.TuckerConv(C, C, 3, rank=2, factor_metadata=FACTOR_SHARDINGS["TuckerConv"], **kw),
      enn.SpatialConv(C, C, 3, rank=2, factor_metadata=FACTOR_SHARDINGS["SpatialConv"], **kw),
    ]
  layers += [
    enn.CPConv(C, C, 3, rank=2, depthwise_implementation="xla", implementation="factorized", rngs=rngs),
    enn.Bottleneck(C, C, 3, width=2, kernel_init=nnx.initializers.normal(0.3), rngs=rngs),
    enn.StackedConv(C, C, 5, kernel_init=SHARD_OUT, rngs=rngs),
  ]
  return nnx.Sequential(*layers)


def on(mesh, m):
  # m's graph with its parameters moved to the same specs on mesh.
  graphdef, state = nnx.split(m)
  return nnx.merge(graphdef, jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, a.sharding.spec)), state))


def train(mesh, m):
  x = jax.random.normal(jax.random.key(1), (8, 6, 6, C))
  y = jax.random.normal(jax.random.key(2), (8, 6, 6, C))
  with jax.set_mesh(mesh):
    x, y = jax.device_put((x, y), P("data"))
    opt = nnx.Optimizer(m, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt, x, y):
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)
      opt.update(m, grads)
      return loss

    losses = [float(step(m, opt, x, y)) for _ in range(2)]
    # out_sharding, as nnx.Conv's: here the output's channels over the mesh axis.
    channels = nnx.jit(lambda m, x: m.layers[0](x, out_sharding=P(None, None, None, "data")))(m, x)
    flat = nnx.to_flat_state(nnx.state(m, nnx.Param))
    return {
      "losses": losses,
      "out_spec": list(channels.sharding.spec),
      "params": {"/".join(map(str, k)): np.asarray(v[...]).tolist() for k, v in flat},
      "specs": {"/".join(map(str, k)): list(v[...].sharding.spec) for k, v in flat},
      "annotated": [list(v.get_metadata().get("out_sharding") or ()) for _, v in flat],
    }


explicit = jax.make_mesh((2,), ("data",))
with jax.set_mesh(explicit):
  full = model(nnx.Rngs(0))
single = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
auto_mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
one, auto = on(single, full), on(auto_mesh, full)
# The same model with every layer on "auto": the cost model picks one of the two paths per layer.
out = {"auto_paths": []}
for layer in auto.layers:
  if isinstance(layer, enn.FactorizedConv):
    layer.implementation = "auto"
    out["auto_paths"].append(layer.plan((8, 6, 6, C)).implementation)
out.update(one=train(single, one), explicit=train(explicit, full), auto=train(auto_mesh, auto))
print("RESULT", json.dumps(out))
"""


def run_script() -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # Unoptimized compilation: the test checks results, not speed, and all three runs use the same flags.
  env["XLA_FLAGS"] = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_force_host_platform_device_count=2"
  )
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
  result = subprocess.run(
    [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )
  assert result.returncode == 0, result.stdout + result.stderr
  return json.loads(result.stdout.split("RESULT", 1)[1])


def test_sharded_factors_train_data_parallel_on_explicit_and_auto_meshes() -> None:
  out = run_script()
  one, explicit, auto = out["one"], out["explicit"], out["auto"]
  assert one["losses"][1] < one["losses"][0]  # the steps train
  np.testing.assert_allclose(explicit["losses"], one["losses"], rtol=1e-5)
  assert explicit["params"].keys() == one["params"].keys()
  for name, value in one["params"].items():
    np.testing.assert_allclose(explicit["params"][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
  # Every annotation (the kernel's C_out name moved onto the factors, the per-factor rank names, the biases)
  # is the sharding the Explicit run's parameters keep after training.
  specs = explicit["specs"]
  for (name, spec), names in zip(specs.items(), explicit["annotated"]):
    assert spec == (names or [None] * len(spec)), (name, spec, names)
  assert specs["layers/0/first"] == [None, "data"] and specs["layers/0/last"] == [None, "data"]
  assert specs["layers/0/bias"] == ["data"]
  assert specs["layers/2/cores/0"] == [None, None, None, "data"] and specs["layers/2/cores/1"] == [None] * 4
  assert specs["layers/2/spatial"] == [None, None, None]  # TT's channel modes take no dense-kernel name
  assert specs["layers/12/kernels/0"] == [None, None, None, "data"]  # StackedConv: with_partitioning as nnx.Conv
  for run in out.values():
    if isinstance(run, dict):
      assert run["out_spec"] == [None, None, None, "data"]
  # On the Auto mesh, with every layer on "auto" (either path: the same maths up to float rounding).
  assert len(out["auto_paths"]) == 11 and set(out["auto_paths"]) <= {"factorized", "reconstructed"}
  np.testing.assert_allclose(auto["losses"], one["losses"], rtol=1e-5)
  for name, value in one["params"].items():
    np.testing.assert_allclose(auto["params"][name], value, rtol=1e-4, atol=1e-6, err_msg=f"auto: {name}")


# In this process (one CPU device): how the annotations reach the factors, and the errors.
def _one_device_mesh():
  import jax

  return jax.make_mesh((1, 1, 1, 1), ("rows", "cols", "data", "model"), devices=jax.devices()[:1])


def test_kernel_sharding_names_move_onto_the_factor_axes() -> None:
  import jax
  from flax import nnx

  from efficonv import nnx as enn

  init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("rows", "cols", "data", "model"), note="x")
  with jax.set_mesh(_one_device_mesh()):
    # Abstract layers (nothing drawn or compiled): the metadata is all this test reads.
    layer = nnx.eval_shape(
      lambda: enn.CPConv(
        4,
        6,
        3,
        rank=2,
        kernel_init=init,
        factor_metadata={"vertical": {"out_sharding": (None, "model")}},
        rngs=nnx.Rngs(0),
      )
    )
    dense = {"out_sharding": (None, None, "data", "model")}
    tt = nnx.eval_shape(lambda: enn.TTConv(4, 6, 3, rank=2, kernel_metadata=dense, rngs=nnx.Rngs(0)))
    sep = nnx.eval_shape(lambda: enn.SeparableConv(4, 6, 3, kernel_metadata=dense, rngs=nnx.Rngs(0)))
  meta = {name: getattr(layer, name).get_metadata() for name in ("first", "vertical", "horizontal", "last")}
  assert meta["first"]["out_sharding"] == ("data", None)
  assert meta["vertical"]["out_sharding"] == (None, "model")  # factor_metadata overrides the mapped ("rows", None)
  assert meta["horizontal"]["out_sharding"] == ("cols", None)
  assert meta["last"]["out_sharding"] == (None, "model")
  assert all(m["note"] == "x" for m in meta.values())  # other metadata is copied to every factor
  assert layer.bias.get_metadata().get("out_sharding") is None  # the bias has its own bias_metadata
  assert tt.spatial.get_metadata()["out_sharding"] == (None, None, None)
  assert [c.get_metadata()["out_sharding"] for c in tt.cores] == [(None,) * 4] * 2
  assert sep.depthwise.get_metadata()["out_sharding"] == (None, None, "data", None)
  assert sep.pointwise.get_metadata()["out_sharding"] == ("data", "model")


def test_bad_metadata_is_rejected_naming_the_argument() -> None:
  import pytest
  from flax import nnx

  from efficonv import nnx as enn

  with pytest.raises(ValueError, match=r"kernel_init/kernel_metadata sharding must name the 4 axes"):
    nnx.eval_shape(
      lambda: enn.CPConv(4, 6, 3, rank=2, kernel_metadata={"out_sharding": (None, "model")}, rngs=nnx.Rngs(0))
    )
  with pytest.raises(ValueError, match=r"factor_metadata\['first'\] sharding must name the 2 axes of first"):
    nnx.eval_shape(
      lambda: enn.CPConv(
        4, 6, 3, rank=2, factor_metadata={"first": {"out_sharding": (None, None, "m")}}, rngs=nnx.Rngs(0)
      )
    )
  with pytest.raises(ValueError, match=r"factor_metadata keys must be factors of CP"):
    nnx.eval_shape(lambda: enn.CPConv(4, 6, 3, rank=2, factor_metadata={"kernel": {}}, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"factor_metadata\['cores'\] must be a mapping \(for all 2 arrays\)"):
    nnx.eval_shape(lambda: enn.TTConv(4, 6, 3, rank=2, factor_metadata={"cores": [{}]}, rngs=nnx.Rngs(0)))

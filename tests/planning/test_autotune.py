"""Tests of ``implementation="autotune"`` and of the ``objective`` the cost model optimises."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficonv.formats import CP, Separable, Tucker2
from efficonv.nnx import CPConv, SeparableConv, set_objective
from efficonv.planning import tuning as autotune

SHAPE = (2, 8, 8, 8)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
  autotune.clear_cache()
  yield
  autotune.clear_cache()


def _cp() -> CP:
  return CP.init(jax.random.key(0), 8, 8, (3, 3), rank=3)


def _forbid_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
  def fail(*args: object, **kwargs: object) -> None:
    raise AssertionError("measured again although the choice was cached")

  monkeypatch.setattr(autotune, "_measure", fail)


@pytest.mark.parametrize("objective", ["inference", "training"])
def test_picks_the_fastest_measured_candidate_and_caches_it(monkeypatch: pytest.MonkeyPatch, objective: str) -> None:
  plan = _cp().plan(SHAPE, implementation="autotune", objective=objective)
  (entry,) = autotune.cache().values()
  times = entry["times_ms"]
  assert set(times) == {"factorized/shift", "factorized/xla", "reconstructed"}
  best = min(times, key=times.__getitem__)
  assert [plan.implementation, plan.depthwise] == entry["choice"]
  assert best == (plan.implementation if plan.depthwise is None else f"{plan.implementation}/{plan.depthwise}")
  assert f"({objective})" in plan.reason and all(name in plan.reason for name in times)
  assert plan.estimated_reconstructed_s == pytest.approx(times["reconstructed"] / 1e3)
  _forbid_measuring(monkeypatch)
  again = _cp().plan(SHAPE, implementation="autotune", objective=objective)
  assert again == plan


def test_keys_separate_objectives_shapes_and_forced_depthwise() -> None:
  fmt = _cp()
  fmt.plan(SHAPE, implementation="autotune")
  fmt.plan(SHAPE, implementation="autotune", objective="training")
  fmt.plan((1, 8, 8, 8), implementation="autotune")
  fmt.plan(SHAPE, implementation="autotune", depthwise_implementation="shift")
  entries = list(autotune.cache().values())
  assert len(entries) == 4
  assert set(entries[-1]["times_ms"]) == {"factorized/shift", "reconstructed"}


def test_format_without_depthwise_has_two_candidates() -> None:
  fmt = Tucker2.init(jax.random.key(1), 8, 8, (3, 3), rank=(4, 4))
  fmt.plan(SHAPE, implementation="autotune")
  (entry,) = autotune.cache().values()
  assert set(entry["times_ms"]) == {"factorized", "reconstructed"}


def test_runs_while_jit_traces_and_matches_the_dense_conv() -> None:
  fmt = _cp()
  x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
  y = jax.jit(lambda f, x: f.conv(x, implementation="autotune"))(fmt, x)
  want = fmt.conv(x, implementation="reconstructed", precision="highest")
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
  assert len(autotune.cache()) == 1


def test_layer_with_autotune_and_gradients() -> None:
  layer = CPConv(8, 8, (3, 3), rank=3, implementation="autotune", rngs=nnx.Rngs(0))
  x = jnp.ones(SHAPE)
  grads = jax.tree.leaves(nnx.grad(lambda m: m(x).sum())(layer))
  assert len(grads) == 5  # four CP factors and the bias
  assert all(np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0 for g in grads)
  assert layer.plan(SHAPE).reason.startswith("autotuned on cpu (inference)")


def test_file_cache_is_written_and_reused(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
  path = tmp_path / "sub" / "autotune.json"  # type: ignore[operator]
  monkeypatch.setenv(autotune.CACHE_ENV, str(path))
  plan = _cp().plan(SHAPE, implementation="autotune")
  on_disk = json.loads(path.read_text())
  assert next(iter(on_disk.values()))["choice"] == [plan.implementation, plan.depthwise]
  autotune.clear_cache()  # a new process: nothing in memory
  _forbid_measuring(monkeypatch)
  assert _cp().plan(SHAPE, implementation="autotune") == plan


def test_corrupt_cache_file_names_the_variable(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
  path = tmp_path / "autotune.json"  # type: ignore[operator]
  path.write_text("{not json")
  monkeypatch.setenv(autotune.CACHE_ENV, str(path))
  with pytest.raises(ValueError, match=r"^EFFICONV_AUTOTUNE_CACHE=.* is not a readable JSON autotune cache"):
    _cp().plan(SHAPE, implementation="autotune")


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"objective": "speed"}, r"^objective must be one of \('inference', 'training'\), got 'speed'"),
    ({"repeats": 0}, r"^repeats must be a positive int, got 0"),
    ({"min_seconds": -1.0}, r"^min_seconds must be >= 0, got -1.0"),
    ({"depthwise_implementation": "cudnn"}, r"^depthwise implementation must be one of"),
  ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    autotune.autotune(_cp(), SHAPE, **kwargs)


def test_plan_rejects_unknown_objective() -> None:
  with pytest.raises(ValueError, match=r"^objective must be one of \('inference', 'training'\), got 'train'"):
    _cp().plan(SHAPE, objective="train")  # type: ignore[arg-type]


def test_training_objective_uses_backward_factors() -> None:
  # Separable conv, depth multiplier 4, on CPU: the forward pass is cheaper factorized, but the
  # shift-and-add backward with a multiplier is slow, so for training the dense conv wins.
  fmt = Separable.init(jax.random.key(2), 64, 64, (3, 3), depth_multiplier=4)
  inference = fmt.plan((8, 32, 32, 64), backend="cpu")
  training = fmt.plan((8, 32, 32, 64), backend="cpu", objective="training")
  assert inference.implementation == "factorized" and training.implementation == "reconstructed"
  assert training.estimated_factorized_s > 3 * inference.estimated_factorized_s
  cp = CP.init(jax.random.key(3), 64, 64, (3, 3), rank=16)
  assert cp.plan((8, 32, 32, 64), backend="cpu", objective="training").implementation == "factorized"


def test_set_objective_reaches_nested_layers() -> None:
  class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
      self.a = CPConv(8, 8, (3, 3), rank=2, rngs=rngs)
      self.blocks = nnx.List([SeparableConv(8, 8, (3, 3), rngs=rngs), nnx.Conv(8, 8, (3, 3), rngs=rngs)])

  net = Net(nnx.Rngs(0))
  assert set_objective(net, "training") == 2
  assert net.a.objective == "training" and net.blocks[0].objective == "training"
  assert "(training)" in net.blocks[0].plan(SHAPE).reason
  with pytest.raises(ValueError, match=r"^objective must be one of"):
    set_objective(net, "fast")


class _Store:
  """The distributed runtime's key-value store, as tuning uses it (one dict shared by the fake processes)."""

  def __init__(self) -> None:
    self.values: dict[str, str] = {}

  def key_value_try_get(self, name: str) -> str:
    if name not in self.values:
      raise jax.errors.JaxRuntimeError(f"NOT_FOUND: {name}")
    return self.values[name]

  def key_value_set(self, name: str, value: str) -> None:
    if name in self.values:
      raise jax.errors.JaxRuntimeError(f"ALREADY_EXISTS: {name}")
    self.values[name] = value

  def blocking_key_value_get(self, name: str, timeout_in_ms: int) -> str:
    if name not in self.values:
      raise jax.errors.JaxRuntimeError(f"DEADLINE_EXCEEDED: {name} after {timeout_in_ms} ms")
    return self.values[name]


def _as_process(monkeypatch: pytest.MonkeyPatch, index: int, store: _Store | None) -> None:
  """This process plays process ``index`` of two, sharing ``store`` with the other."""
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: index)
  monkeypatch.setattr(autotune, "_store", lambda: store)


def test_processes_run_process_0s_choice(monkeypatch: pytest.MonkeyPatch) -> None:
  # Measured times stand in (what is shared is under test, not the timing).
  times = {"factorized/shift": 2.0, "factorized/xla": 3.0, "reconstructed": 1.0}
  monkeypatch.setattr(autotune, "_measure", lambda *args: {"choice": ["reconstructed", None], "times_ms": times})
  store = _Store()
  _as_process(monkeypatch, 0, store)
  plan = _cp().plan(SHAPE, implementation="autotune")
  assert (plan.implementation, plan.depthwise) == ("reconstructed", None)
  (published,) = store.values.values()
  assert json.loads(published)["choice"] == [plan.implementation, plan.depthwise]
  measured = autotune.cache()
  _forbid_measuring(monkeypatch)
  autotune.clear_cache()
  assert _cp().plan(SHAPE, implementation="autotune") == plan  # process 0 keeps what it published

  # Process 1 had measured the other way on its own (its cache says so); it runs process 0's choice.
  (key,) = measured
  _as_process(monkeypatch, 1, store)
  monkeypatch.setattr(autotune, "_cache", {key: {"choice": ["factorized", "shift"], "times_ms": {}}})
  assert _cp().plan(SHAPE, implementation="autotune") == plan
  assert autotune.cache() == measured


def test_dense_autotune_is_shared_too(monkeypatch: pytest.MonkeyPatch) -> None:
  store = _Store()
  _as_process(monkeypatch, 0, store)
  name, reason = autotune.autotune_dense((1, 4, 4, 8), (3, 3, 8, 8))
  _as_process(monkeypatch, 1, store)
  autotune.clear_cache()
  assert autotune.autotune_dense((1, 4, 4, 8), (3, 3, 8, 8)) == (name, reason)


def test_a_process_waiting_in_vain_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
  _as_process(monkeypatch, 1, _Store())
  _forbid_measuring(monkeypatch)
  with pytest.raises(RuntimeError, match=r"^implementation='autotune': process 1 waited 1800 s for process 0's"):
    _cp().plan(SHAPE, implementation="autotune")
  _as_process(monkeypatch, 1, None)
  with pytest.raises(RuntimeError, match=r"call jax.distributed.initialize\(\) first$"):
    _cp().plan(SHAPE, implementation="autotune")

"""``efficonv.search``: candidates, sensitivities, allocation to a target, and the policy it returns.

The network is tiny (a 1→4 stem, two 4→4 3×3 convs, global pooling, a linear head, on 8×8 images); its
``conv2`` kernel is planted exactly Tucker-2 rank (2, 2), ``conv3`` is full rank, so that replacing ``conv2``
by a (2, 2) Tucker-2 costs nothing and replacing ``conv3`` does. Both have the same shape, so each
Tucker-2 rank compiles one fit. One search with timing runs per module; the other targets reuse its tables
(``allocate``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import efficonv
from efficonv import cost, policy_search
from efficonv import rank as rank_rules
from efficonv.policy_search import Candidate, LayerTable, SearchReport, _allocate, _ranks, allocate, verify

C, SIZE, CLASSES = 4, 8, 3
INPUT_SHAPE = (2, SIZE, SIZE, 1)
RANKS = ((2, 2), (1, 1))


class Net(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, C, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(C, C, (3, 3), rngs=rngs)
    self.conv3 = nnx.Conv(C, C, (3, 3), rngs=rngs)
    self.head = nnx.Linear(C, CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.conv3(x))
    return self.head(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def net() -> Net:
  model = Net(nnx.Rngs(0))
  k = jax.random.split(jax.random.key(1), 3)
  core = jax.random.normal(k[0], (3, 3, 2, 2))
  u, v = jax.random.normal(k[1], (C, 2)), jax.random.normal(k[2], (C, 2))
  model.conv2.kernel[...] = jnp.einsum("hwab,ia,ob->hwio", core, u, v) / 3.0  # exactly Tucker-2 (2, 2)
  return model


@pytest.fixture(scope="module")
def calibration() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return rng.standard_normal((16, SIZE, SIZE, 1)).astype(np.float32), rng.integers(0, CLASSES, 16)


@pytest.fixture(scope="module")
def searched(net: Net, calibration: tuple[np.ndarray, np.ndarray]) -> tuple[efficonv.Policy, SearchReport]:
  return efficonv.search(
    net,
    rank_rules.MacReduction(1.3),
    input_shape=INPUT_SHAPE,
    data=calibration[0],
    schemes=("tucker2",),
    ranks=RANKS,
    measure_time=True,
    repeats=3,
    min_seconds=0.0,
  )


def test_meets_a_mac_target_by_decomposing_the_insensitive_layer(net: Net, searched) -> None:
  policy, report = searched
  assert report.target_met and report.predicted_mac_ratio >= 1.3
  # One layer suffices for 1.3×; the exactly low-rank one is free, the other is not.
  assert policy.layers == {"conv1": "dense", "conv2": ("tucker2", (2, 2)), "conv3": "dense"}
  assert report.choice("conv2").sensitivity < 1e-4 and report.choice("conv2").relative_error < 1e-4
  lossy = [c for c in report.layers[2].candidates if c.scheme == "tucker2"]
  assert [c.rank for c in lossy] == list(RANKS) and min(c.sensitivity for c in lossy) > 1e-2
  assert report.layers[0].note.startswith("first conv") and len(report.layers[0].candidates) == 1
  assert report.network_macs == cost.macs(net, INPUT_SHAPE)
  # A stricter target needs both layers: conv3 then takes its least sensitive candidate that fits.
  policy2, report2 = allocate(report, rank_rules.MacReduction(2.0))
  assert report2.target_met and report2.predicted_mac_ratio >= 2.0
  assert policy2.layers["conv2"] != "dense" and policy2.layers["conv3"] != "dense"


def test_compress_applies_the_policy_and_the_sensitivity_is_the_compressed_network_error(
  net: Net, searched, calibration
) -> None:
  _, report = searched
  x = jnp.asarray(calibration[0])
  lossy = report.layers[2].candidates[1]
  policy = efficonv.Policy(layers={"conv1": "dense", "conv2": ("tucker2", (2, 2)), "conv3": ("tucker2", lossy.rank)})
  small, compressed = efficonv.compress(net, policy, input_shape=INPUT_SHAPE)
  assert [r.rank for r in compressed.layers] == [None, (2, 2), lossy.rank]
  assert [r.macs_after for r in compressed.layers] == [t.candidates[i].macs for t, i in zip(report.layers, (0, 1, 1))]
  assert [r.params_after for r in compressed.layers] == [
    t.candidates[i].params for t, i in zip(report.layers, (0, 1, 1))
  ]
  # conv2 is exact, so the network's error is conv3's alone: the sensitivity the table holds.
  error = float(jnp.linalg.norm(small(x) - net(x)) / jnp.linalg.norm(net(x)))
  assert error == pytest.approx(lossy.sensitivity, rel=1e-3)
  assert compressed.layers[2].relative_error == pytest.approx(lossy.relative_error, rel=1e-4)


def test_speedup_target_is_met_on_the_measured_tables_or_warns(searched) -> None:
  _, report = searched
  assert report.timed and report.network_seconds > 0
  assert all(c.seconds >= 0 for t in report.layers for c in t.candidates) and report.call_overhead_seconds > 0
  assert allocate(report, rank_rules.Speedup(1.0))[1].predicted_speedup == pytest.approx(1.0)  # dense: exact
  # The time model of the module docstring: the rest of the network (measured with stand-ins for the convs),
  # plus each choice's time alone, dense choices scaled by alpha so that the dense point is the network.
  assert 0 < report.rest_seconds and math.isnan(report.measured_seconds) and report.verification == ()
  given = sum(t.given_seconds for t in report.layers)
  rest = min(report.rest_seconds, report.network_seconds)
  alpha = (report.network_seconds - rest) / given

  def cost(c) -> float:
    return c.seconds * (alpha if c.scheme == "dense" else 1.0)

  # The fastest point of the tables: every layer at its fastest candidate.
  fastest = [min(range(len(t.candidates)), key=lambda i, t=t: cost(t.candidates[i])) for t in report.layers]
  best = dataclasses.replace(report, chosen=tuple(fastest)).predicted_speedup
  reachable = rank_rules.Speedup(max(1.0, 1.0 + (best - 1.0) / 2))
  _, met = allocate(report, reachable)
  assert met.target_met and met.predicted_speedup >= reachable.speedup * (1 - 1e-9)
  assert met.predicted_seconds == pytest.approx(
    rest + sum(cost(t.candidates[i]) for t, i in zip(met.layers, met.chosen))
  )
  with pytest.warns(UserWarning, match=r"Speedup\(speedup=1000000\.0\) cannot be met.*predicted speedup"):
    _, unmet = allocate(report, rank_rules.Speedup(1e6))
  assert not unmet.target_met and unmet.predicted_speedup == pytest.approx(best)


def test_reference_seconds_sets_what_the_speedup_is_relative_to(searched) -> None:
  _, measured = searched
  # Deterministic times (each layer's MACs at 1 GMAC/s, 0.1 ms for the rest), so that the compressed
  # candidates are faster than dense whatever the machine's load did to the measured ones.
  layers = tuple(
    dataclasses.replace(
      t,
      candidates=tuple(dataclasses.replace(c, seconds=c.macs * 1e-9) for c in t.candidates),
      given_seconds=t.candidates[0].macs * 1e-9,
    )
    for t in measured.layers
  )
  report = dataclasses.replace(
    measured, layers=layers, network_seconds=sum(t.given_seconds for t in layers) + 1e-4, rest_seconds=1e-4
  )
  with pytest.warns(UserWarning, match="cannot be met"):
    cheapest = allocate(report, rank_rules.Speedup(1e6))[1].predicted_seconds
  assert cheapest < report.network_seconds
  faster = (cheapest + report.network_seconds) / 2  # say, a dense build faster than the model as given
  _, plain = allocate(report, rank_rules.Speedup(1.0))
  _, relative = allocate(report, rank_rules.Speedup(1.0), reference_seconds=faster)
  assert relative.baseline_seconds == faster and plain.baseline_seconds == report.network_seconds
  # The same time model; a Speedup(1) against the faster reference needs a point at least that fast.
  assert relative.predicted_seconds <= faster * (1 + 1e-9) < plain.predicted_seconds
  assert relative.predicted_speedup == pytest.approx(faster / relative.predicted_seconds)
  assert "the reference" in relative.to_markdown()
  assert json.loads(relative.to_json())["network"]["reference_seconds"] == faster
  for bad in (0.0, -1.0, math.inf, "1"):
    with pytest.raises(ValueError, match="reference_seconds must be None or a positive"):
      allocate(report, rank_rules.Speedup(1.0), reference_seconds=bad)
  untimed = dataclasses.replace(report, network_seconds=math.nan)
  with pytest.raises(ValueError, match=r"reference_seconds=1\.0 needs measured times"):
    allocate(untimed, rank_rules.MacReduction(1.2), reference_seconds=1.0)


def test_reference_call_is_timed_in_pairs_with_the_model(net: Net, calibration) -> None:
  graphdef, state = nnx.split(net)
  x = jnp.zeros(INPUT_SHAPE)
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()

  def reference() -> tuple:  # a "network" that is the model run twice
    return compiled(state, x), compiled(state, x)

  kwargs = dict(input_shape=INPUT_SHAPE, data=calibration[0], schemes=("tucker2",), ranks=RANKS, repeats=3)
  _, report = efficonv.search(net, rank_rules.MacReduction(1.3), measure_time=True, reference=reference, **kwargs)
  # the model's measured time times the median paired ratio (about 2)
  assert report.baseline_seconds == report.reference_seconds
  assert 1.2 < report.reference_seconds / report.network_seconds < 3.5
  with pytest.raises(ValueError, match="reference must be None or a callable"):
    efficonv.search(net, rank_rules.MacReduction(1.3), measure_time=True, reference=0.02, **kwargs)
  with pytest.raises(ValueError, match="reference and reference_seconds are alternatives"):
    efficonv.search(
      net, rank_rules.MacReduction(1.3), measure_time=True, reference=reference, reference_seconds=0.02, **kwargs
    )
  with pytest.raises(ValueError, match="reference needs measured times"):
    efficonv.search(net, rank_rules.MacReduction(1.3), reference=reference, **kwargs)


def test_the_model_as_given_is_compiled_once(net: Net, calibration, monkeypatch) -> None:
  from efficonv import policy_search

  given = nnx.graphdef(net)
  compiled_given = []
  original = policy_search._network_call

  def counting(model, forward, shape):
    compiled_given.append(nnx.graphdef(model) == given)
    return original(model, forward, shape)

  monkeypatch.setattr(policy_search, "_network_call", counting)
  graphdef, state = nnx.split(net)
  x = jnp.zeros(INPUT_SHAPE)
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # whether the target is met as measured is the machine's
    _, report = efficonv.search(
      net,
      rank_rules.Speedup(1.0),
      input_shape=INPUT_SHAPE,
      data=calibration[0],
      schemes=("tucker2",),
      ranks=RANKS[:1],
      repeats=3,
      min_seconds=0.0,
      verify_rounds=1,
      reference=functools.partial(compiled, state, x),
    )
  # the given network's time, the reference's ratio and the verification round share one compiled call;
  # then the stand-in network and the one assembled point (all dense at 1×: the given structure) are compiled
  assert len(report.verification) == 1
  assert compiled_given[:2] == [True, False] and len(compiled_given) == 3


def test_a_speedup_search_times_its_point_assembled(net: Net, calibration) -> None:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # whether a 1.0× target is met as measured is the machine's
    policy, report = efficonv.search(
      net,
      rank_rules.Speedup(1.0),
      input_shape=INPUT_SHAPE,
      data=calibration[0],
      schemes=("tucker2",),
      ranks=RANKS[:1],
      repeats=3,
      min_seconds=0.0,
      verify_rounds=1,
    )
  (only,) = report.verification
  assert only.chosen == report.chosen and report.measured_seconds == only.measured_seconds > 0
  assert report.target_met == (report.measured_seconds <= report.baseline_seconds)
  assert policy == report.policy


def _deterministic(report: SearchReport, per_second: float = 1e-8, rest: float = 1e-5) -> SearchReport:
  """``report`` with every time made from MACs (``per_second`` seconds per MAC) and a fixed rest."""
  layers = tuple(
    dataclasses.replace(
      t,
      candidates=tuple(dataclasses.replace(c, seconds=c.macs * per_second) for c in t.candidates),
      given_seconds=t.candidates[0].macs * per_second,
    )
    for t in report.layers
  )
  network = sum(t.given_seconds for t in layers) + rest
  return dataclasses.replace(report, layers=layers, network_seconds=network, rest_seconds=rest)


def test_verify_assembles_the_point_and_reallocates_when_it_misses(net: Net, searched, monkeypatch) -> None:
  _, measured = searched
  report = _deterministic(measured)
  # The assembled network, "timed": its MACs at the tables' rate plus 20 µs per factorized layer, which the
  # tables do not know about, so that the tables' first point misses its budget.
  per_layer = 2e-5

  def assembled_seconds(model, given, given_seconds, forward, shape):
    total = report.rest_seconds
    for t in report.layers:
      layer = getattr(model, t.path)
      if isinstance(layer, efficonv.nnx.FactorizedConv):
        rank = layer.format.rank
        rank = tuple(int(r) for r in rank) if isinstance(rank, tuple) else int(rank)
        total += next(c.seconds for c in t.candidates if c.rank == rank) + per_layer
      else:
        total += t.candidates[0].seconds
    return total

  monkeypatch.setattr(policy_search, "_assembled_seconds", assembled_seconds)
  # A target the tables meet with one layer at its (2, 2) rank (conv2, exact), and the assembled network
  # does not: after fitting β on it the next round needs a cheaper point.
  one = allocate(report, rank_rules.MacReduction(1.3))[1]
  target = rank_rules.Speedup(report.network_seconds / (one.predicted_seconds + per_layer / 2))
  _, first = allocate(report, target)
  assert first.target_met and first.policy.layers["conv3"] == "dense"
  policy, verified = verify(first, net, input_shape=INPUT_SHAPE, rounds=3)
  rounds = verified.verification
  assert len(rounds) >= 2 and rounds[0].chosen == first.chosen
  assert rounds[0].measured_seconds == pytest.approx(rounds[0].predicted_seconds + per_layer)
  assert rounds[0].measured_seconds > report.network_seconds / target.speedup  # the first point misses
  assert verified.target_met and verified.measured_seconds <= report.network_seconds / target.speedup
  assert verified.measured_speedup >= target.speedup and policy.layers != first.policy.layers
  assert verified.predicted_penalty > first.predicted_penalty
  # The β that chose it, fitted on the first point: its factorized convs' measured share over their times alone.
  factorized = sum(t.candidates[i].seconds for t, i in zip(report.layers, first.chosen) if i > 0)
  assert rounds[1].chosen == verified.chosen
  assert verified.factorized_scale == pytest.approx((factorized + per_layer) / factorized)
  assert verified.predicted_seconds == pytest.approx(
    rounds[1].predicted_seconds
    + (verified.factorized_scale - 1) * policy_search._factorized_seconds(verified, verified.chosen)
  )
  data = json.loads(verified.to_json())
  assert data["measured"]["speedup"] == pytest.approx(verified.measured_speedup)
  assert [v["chosen"] for v in data["verification"]] == [list(v.chosen) for v in rounds]
  assert "measured as assembled" in verified.to_markdown()
  # A target no timed point meets: the fastest one measured, with a warning.
  with pytest.warns(UserWarning, match="cannot be met with these candidates"):
    _, cheapest = allocate(report, rank_rules.Speedup(1e6))
  with pytest.warns(UserWarning, match="not met as measured"):
    _, unmet = verify(cheapest, net, input_shape=INPUT_SHAPE, rounds=2)
  assert not unmet.target_met and unmet.measured_seconds == min(v.measured_seconds for v in unmet.verification)
  # The cheapest point, offered again after it missed, is not timed again: no faster point is left.
  chosen = [v.chosen for v in unmet.verification]
  assert len(chosen) == len(set(chosen)) == 1
  with pytest.raises(ValueError, match="report must have measured times and a Speedup target"):
    verify(allocate(report, rank_rules.MacReduction(1.3))[1], net, input_shape=INPUT_SHAPE)
  with pytest.raises(ValueError, match="rounds must be an int >= 1"):
    verify(first, net, input_shape=INPUT_SHAPE, rounds=0)


def test_policy_and_report_round_trip_through_json(searched, tmp_path) -> None:
  policy, report = searched
  assert efficonv.Policy.from_json(policy.to_json()) == policy == report.policy
  data = json.loads(report.to_json())
  assert data["target"] == {"target": "MacReduction", "reduction": 1.3}
  assert [layer["chosen"] for layer in data["layers"]] == list(report.chosen)
  assert data["predicted"]["mac_ratio"] == report.predicted_mac_ratio
  markdown = report.to_markdown()
  assert markdown.count("**chosen**") == 3 and "| conv2 |" in markdown
  pytest.importorskip("matplotlib", reason="SearchReport.plot needs matplotlib (the experiments extra)")
  report.plot(tmp_path / "search.png")
  assert (tmp_path / "search.png").stat().st_size > 1000


def test_loss_increase_metric_and_decompose_kwargs_reach_the_policy(net: Net, calibration) -> None:
  x, y = calibration

  def loss_fn(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  policy, report = efficonv.search(
    net,
    rank_rules.ParamFraction(0.95),
    input_shape=INPUT_SHAPE,
    data=[(x[:8], y[:8]), (x[8:], y[8:])],
    loss_fn=loss_fn,
    schemes=("tucker2",),
    ranks=RANKS[:1],
    decompose_kwargs={"tucker2": {"n_iter": 5}},
  )
  assert report.metric == "loss_increase" and not report.timed and math.isnan(report.predicted_speedup)
  assert abs(report.layers[1].candidates[1].sensitivity) < 1e-4  # exact: no loss change
  assert report.target_met and report.predicted_param_fraction <= 0.95
  assert policy.layers["conv2"] == ("tucker2", (2, 2), {"n_iter": 5})
  with pytest.raises(ValueError, match="needs measured times"):
    allocate(report, rank_rules.Speedup(2))


def test_ranks_are_rounded_to_a_multiple_and_deduplicated(net: Net) -> None:
  shape = (2, SIZE, SIZE, C)
  found = _ranks("tucker2", net.conv2, shape, [(3, 3), (2, 1), (1, 1)], 2, {})
  assert found == [((4, 4), "(3, 3)"), ((2, 2), "(2, 1), (1, 1)")]
  assert _ranks("cp", net.conv2, shape, [rank_rules.MacReduction(2)], None, {})[0][1] == "MacReduction(2)"


def _brute_force(costs, penalties, budget):
  best = None
  for chosen in itertools.product(*(range(len(c)) for c in costs)):
    if sum(c[i] for c, i in zip(costs, chosen)) <= budget:
      p = sum(q[i] for q, i in zip(penalties, chosen))
      best = p if best is None else min(best, p)
  return best


def test_allocation_meets_the_budget_at_the_least_penalty() -> None:
  rng = np.random.default_rng(0)
  exact = met_count = 0
  for _ in range(40):
    costs, penalties = [], []
    for _ in range(4):
      n = int(rng.integers(2, 5))
      cost_ = [10.0, *sorted(rng.uniform(1, 10, n - 1), reverse=True)]
      penalty = [0.0, *sorted(rng.uniform(0, 1, n - 1))]
      costs.append(cost_)
      penalties.append(penalty)
    budget = float(rng.uniform(10, 40))
    chosen, met = _allocate(costs, penalties, budget)
    total = sum(c[i] for c, i in zip(costs, chosen))
    assert met == (sum(min(c) for c in costs) <= budget)
    if not met:
      assert chosen == [int(np.argmin(c)) for c in costs]  # the cheapest point
      continue
    met_count += 1
    assert total <= budget
    penalty = sum(p[i] for p, i in zip(penalties, chosen))
    for layer, j in itertools.product(range(4), range(5)):
      if j < len(costs[layer]) and penalties[layer][j] < penalties[layer][chosen[layer]]:
        assert total - costs[layer][chosen[layer]] + costs[layer][j] > budget
    exact += penalty <= _brute_force(costs, penalties, budget) + 1e-12
  assert met_count >= 30 and exact == met_count


def test_allocation_on_hand_made_tables_picks_the_cheap_insensitive_layers() -> None:
  def table(path, dense_s, options):
    dense = Candidate("dense", None, "", 100, 10, dense_s, 0.0, 0.0)
    cands = [Candidate("cp", r, "", 100 // (k + 2), 5, s, e, e) for k, (r, s, e) in enumerate(options)]
    return LayerTable(path, (1, 8, 8, 4), (dense, *cands), "", dense_s)

  layers = (
    table("a", 4.0, [(8, 2.0, 0.01), (4, 1.0, 0.02)]),  # cheap to compress
    table("b", 4.0, [(8, 2.0, 0.5), (4, 1.0, 0.9)]),  # sensitive
  )
  report = SearchReport(
    rank_rules.Speedup(1.0), "output_error", layers, (0, 0), True, 300, 30, 12.0, efficonv.Policy(layers={"a": "dense"})
  )
  # Network 12 s = rest 4 s + 4 + 4. Speedup 1.25 (9.6 s) is met by layer a alone, at its smallest rank.
  policy, chosen = allocate(report, rank_rules.Speedup(1.25))
  assert policy.layers == {"a": ("cp", 4), "b": "dense"}
  assert chosen.predicted_seconds == pytest.approx(9.0) and chosen.predicted_speedup == pytest.approx(12 / 9)
  # 8 s needs b too; then a can go back to its larger rank (the clean-up pass) and still fit.
  policy, chosen = allocate(report, rank_rules.Speedup(1.5))
  assert policy.layers == {"a": ("cp", 8), "b": ("cp", 8)} and chosen.predicted_seconds == pytest.approx(8.0)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"target": rank_rules.Energy(0.9)}, "target must be"),
    ({"target": 4.0}, "target must be"),
    ({"input_shape": (8, 8, 1)}, "input_shape must be NHWC"),
    ({"schemes": ("nope",)}, "schemes must name"),
    ({"schemes": ()}, "schemes must be a non-empty"),
    ({"ranks": rank_rules.MacReduction(2)}, "ranks must be a non-empty sequence"),
    ({"ranks": {"cp": [2]}}, "one entry per scheme"),
    ({"multiple_of": 0}, "multiple_of must be"),
    ({"data": None}, "data must be calibration data"),
    ({"data": []}, "non-empty iterable"),
    ({"data": np.zeros((4, 6, 6, 1), np.float32)}, r"data's batch 0 must be an \(n, 8, 8, 1\) array"),
    ({"data": (np.zeros((4, 8, 8, 1), np.float32), np.zeros(4))}, r"data's batch 1 .*as \[\(x, y\)\]"),
    ({"loss_fn": lambda out, y: out.mean()}, "no labels: loss_fn needs"),
    ({"decompose_kwargs": {"nope": {}}}, "decompose_kwargs must be keyed"),
    ({"implementation": "fast"}, "implementation must be"),
    ({"dense_implementation": "fast"}, "dense_implementation must be"),
    ({"include": ["conv9"]}, "include names paths that are not convs"),
    ({"verify_rounds": -1}, "verify_rounds must be an int >= 0"),
  ],
)
def test_bad_arguments_are_rejected_naming_them(net: Net, kwargs, match) -> None:
  args = {"target": rank_rules.MacReduction(2), "input_shape": INPUT_SHAPE, "data": np.zeros((4, 8, 8, 1), np.float32)}
  args.update(kwargs)
  target = args.pop("target")
  with pytest.raises(ValueError, match=match):
    efficonv.search(net, target, **args)


def test_speedup_is_a_target_not_a_rank_rule() -> None:
  assert rank_rules.Speedup(4).speedup == 4.0
  with pytest.raises(ValueError, match="speedup must be a finite float >= 1"):
    rank_rules.Speedup(0.5)
  with pytest.raises(ValueError, match=r"whole-network target of efficonv\.search"):
    rank_rules.choose_rank("cp", (3, 3, 4, 4), rank_rules.Speedup(2))
  with pytest.raises(ValueError, match="rank must be an int"):
    efficonv.Policy(rank=rank_rules.Speedup(2))

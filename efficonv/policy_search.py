"""Compression that aims at a whole-network target: per-layer (cost, sensitivity) tables, one global choice.

:func:`search` does what Qualcomm AIMET's greedy compression-ratio selection does, with the schemes of
:mod:`efficonv.schemes` and times measured on the device at hand:

1. **Candidates.** For every conv it may replace, every requested scheme at several ranks (by default the
   ranks of :class:`~efficonv.rank.MacReduction` ``2, 3, 4, 6, 8, 12, 16``, resolved per layer by
   :func:`efficonv.rank.choose_rank`, rounded to ``multiple_of`` when given), plus ``"dense"``. A candidate
   with at least the dense conv's MACs is not one (:func:`efficonv.compress` would keep the conv dense).
2. **Costs.** MACs and parameters from the formats' formulas; with a :class:`~efficonv.rank.Speedup` target
   (or ``measure_time=True``) also the measured time (:func:`efficonv.planning.median_seconds`) of every
   candidate layer and of every dense conv, each compiled alone at the input shape it has in the network,
   and of the whole network once.
3. **Sensitivity.** On the calibration ``data``, the network's output with that one conv's kernel replaced
   by the candidate's fitted decomposition (:mod:`efficonv.decompose`, the fit :func:`efficonv.compress`
   makes; its reconstructed kernel, which the factorized layer computes exactly up to rounding, so one
   compiled forward pass serves every candidate): the relative L2 error of the outputs, or, with
   ``loss_fn``, the increase of the loss.
4. **Allocation** (:func:`allocate`): the least total penalty whose cost meets the target, a multiple-choice
   knapsack over the tables: the better of a dynamic program over costs rounded up to 1/4096 of the budget
   and AIMET's greedy path (from the dense network, the move with the least added penalty per unit of cost
   saved, until the target is met), each followed by a clean-up pass that swaps single layers to less
   sensitive candidates while the budget holds. Deterministic (ties go to the earlier candidate).

**What is predicted.** Layers are assumed to act independently: the penalty of a choice is the sum over
layers of the squared relative output error (so the predicted output error is the root of the sum, as for
uncorrelated errors) or of the loss increase. Costs add up:

* MACs: ``network MACs (efficonv.cost.macs) − Σ dense conv MACs + Σ chosen candidates' MACs``; the
  :class:`~efficonv.rank.MacReduction` target is the whole-network ratio.
* parameters: likewise (:func:`efficonv.cost.params`, biases included);
  :class:`~efficonv.rank.ParamFraction` is the whole-network fraction.
* time: ``T_rest + Σ_conv t'(choice)``. Each conv's ``t`` is its median time alone minus that of a
  trivial compiled call (the dispatch overhead the network pays once, not once per conv), at least 0.
  ``T_rest`` is measured: the network with every conv swapped for a near-free stand-in of its output shape
  (:mod:`efficonv._stand_in`; normalization, activations, pooling and the head stay). A network compiled
  whole does not run its dense convs in the sum of their times alone (on XLA:CPU with its default library
  fusion a 64–512-channel VGG's convs summed to more than the network), so a dense choice counts
  ``t' = α t`` with ``α = (T_network − T_rest) / Σ_conv t(given)``, and a factorized one ``t' = β t``
  (``β = 1`` until :func:`verify` measures it): the dense point predicts ``T_network`` exactly. (Without stand-ins — convs inside an NNX transform —
  ``T_rest = max(T_network − Σ t(given), 0)``.) The predicted speedup is ``T_ref / T`` at ``input_shape``'s
  batch size, where ``T_ref`` is ``T_network`` (the model as given) unless the caller gives
  ``reference_seconds`` (the fastest dense build it can run, say) or ``reference`` (a call of that build,
  timed in alternating pairs with the model as given), and a ``Speedup(x)`` target is met when the time is at
  most ``T_ref / x``.

**Verified, for a Speedup target** (:func:`verify`). Per-layer times do not add up exactly (a compressed
network fuses and schedules differently; per-layer times move by tens of percent between runs), so the
chosen point is assembled (:func:`efficonv.compress` with ``decompose=False``) and timed whole; ``β`` is set
to what makes the model predict the measured time there (the factorized convs' share of it over the sum of
their times alone: the dense and non-conv parts are already calibrated on the network as given), and the
allocation is made again, for at most ``verify_rounds`` points. The point returned meets the target as measured when any timed point does.

Example:
  >>> import jax, numpy as np
  >>> from flax import nnx
  >>> import efficonv
  >>> net = nnx.Sequential(nnx.Conv(3, 16, (3, 3), rngs=nnx.Rngs(0)), nnx.relu,
  ...                      nnx.Conv(16, 16, (3, 3), rngs=nnx.Rngs(1)), nnx.relu,
  ...                      nnx.Conv(16, 16, (3, 3), rngs=nnx.Rngs(2)))
  >>> x = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
  >>> policy, report = efficonv.search(net, efficonv.rank.MacReduction(1.5), input_shape=(1, 8, 8, 3), data=x,
  ...                                  schemes=("tucker2",), ranks=(efficonv.rank.MacReduction(3),))
  >>> report.target_met, round(report.predicted_mac_ratio, 2)
  (True, 2.86)
  >>> policy.layers  # efficonv.compress(net, policy, input_shape=(1, 8, 8, 3)) applies it
  {'layers/0': 'dense', 'layers/2': ('tucker2', (7, 7)), 'layers/4': ('tucker2', (7, 7))}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficonv import cost
from efficonv import rank as rank_lib
from efficonv import schemes as schemes_lib
from efficonv._stand_in import stand_in_network
from efficonv.compression import (
  DENSE,
  Policy,
  _candidate_macs,
  _conv_options,
  _name,
  _replace,
  compress,
  conv_calls,
  fast_conv,
  layer_of_format,
)
from efficonv.convert import conv_kernel
from efficonv.kernels.dense import check_layer_implementation
from efficonv.planning.plan import check_implementation
from efficonv.planning.timing import median_seconds, median_time_ratio

#: The MAC reductions whose ranks are every scheme's candidates by default.
DEFAULT_REDUCTIONS = (2, 3, 4, 6, 8, 12, 16)
METRICS = ("output_error", "loss_increase")

Forward = Callable[[nnx.Module, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One choice for one conv: ``"dense"`` or a scheme at a rank, with its costs and sensitivity.

  Attributes:
    scheme: ``"dense"`` or a scheme of :mod:`efficonv.schemes`.
    rank: the resolved rank (``None`` for dense).
    rules: the rank rules that resolved to this rank (``""`` for dense).
    macs: MACs of the layer at its input shape (batch included).
    params: parameters of the layer (bias included).
    seconds: measured time of the layer alone at its input shape (NaN when not measured).
    sensitivity: relative L2 error of the network's outputs on the calibration data, or the loss increase
      (:attr:`SearchReport.metric`), with this layer alone replaced; 0 for dense.
    relative_error: ``||W − Ŵ||_F / ||W||_F`` of the kernel fit (0 for dense).
  """

  scheme: str
  rank: Any
  rules: str
  macs: int
  params: int
  seconds: float
  sensitivity: float
  relative_error: float


@dataclasses.dataclass(frozen=True)
class LayerTable:
  """Every candidate of one conv, dense first.

  Attributes:
    path: the conv's path (``"/"``-joined).
    input_shape: its NHWC input shape in the network.
    candidates: ``candidates[0]`` is dense; a conv the search may not replace has only that one.
    note: why it has no other candidate (``""`` when it has).
    given_seconds: measured time of the conv as it is in the model (NaN when not measured); differs from
      the dense candidate's when ``dense_implementation`` turns kept convs into :class:`efficonv.nnx.Conv`.
  """

  path: str
  input_shape: tuple[int, ...]
  candidates: tuple[Candidate, ...]
  note: str
  given_seconds: float


@dataclasses.dataclass(frozen=True)
class Verification:
  """One point :func:`verify` assembled and timed.

  Attributes:
    chosen: the candidate index of each layer.
    predicted_seconds: the tables' time of the point (with ``β = 1``).
    measured_seconds: the assembled network's measured time.
  """

  chosen: tuple[int, ...]
  predicted_seconds: float
  measured_seconds: float


@dataclasses.dataclass(frozen=True)
class SearchReport:
  """What :func:`search` measured and chose.

  Attributes:
    target: the target (:data:`efficonv.rank.TARGETS`).
    metric: ``"output_error"`` (relative L2 of the outputs) or ``"loss_increase"``.
    layers: one :class:`LayerTable` per conv, in forward order.
    chosen: the index of the chosen candidate of each layer (aligned with ``layers``).
    target_met: whether the chosen point meets the target (when not, it is the cheapest point found).
    network_macs, network_params: of the model as given (:mod:`efficonv.cost`, on ``input_shape``).
    network_seconds: measured time of the model as given at ``input_shape`` (NaN when not measured).
    policy: the per-layer policy of the chosen point (every conv named).
    call_overhead_seconds: the time of a trivial compiled call, subtracted from every layer's time (NaN when
      nothing was timed).
    reference_seconds: the time a :class:`~efficonv.rank.Speedup` target and :attr:`predicted_speedup` are
      relative to, when the caller gave one or a ``reference`` call (e.g. the fastest dense build of the
      network, which may be faster than the model as given); NaN: ``network_seconds``.
    rest_seconds: measured time of the network with every conv swapped for a near-free stand-in of its
      output shape: the part of the time that is not a conv (NaN when not measured: the time model then
      takes ``network_seconds − Σ given_seconds``, at least 0).
    factorized_scale: ``β`` of the time model (module docstring), the factor on the factorized candidates'
      times alone that this point was allocated with: 1 from the tables alone; from :func:`verify`, the one
      fitted on the point it timed before this one (so that :attr:`predicted_seconds` is a prediction
      made before this point was timed).
    measured_seconds: the chosen point's whole network, assembled (:func:`efficonv.compress` with
      ``decompose=False``) and timed by :func:`verify` (NaN when not verified).
    verification: every point :func:`verify` assembled and timed, in order.
  """

  target: Any
  metric: str
  layers: tuple[LayerTable, ...]
  chosen: tuple[int, ...]
  target_met: bool
  network_macs: int
  network_params: int
  network_seconds: float
  policy: Policy
  call_overhead_seconds: float = math.nan
  reference_seconds: float = math.nan
  rest_seconds: float = math.nan
  factorized_scale: float = 1.0
  measured_seconds: float = math.nan
  verification: tuple[Verification, ...] = ()

  def choice(self, path: str) -> Candidate:
    """The chosen candidate of the conv at ``path``.

    Raises:
      ValueError: naming ``path`` when it is not a conv of the report.
    """
    for table, index in zip(self.layers, self.chosen):
      if table.path == path:
        return table.candidates[index]
    raise ValueError(f"path must be one of {[t.path for t in self.layers]}, got {path!r}")

  @property
  def predicted_macs(self) -> int:
    """Whole-network MACs of the chosen point."""
    return _total(self, "macs", self.chosen)

  @property
  def predicted_params(self) -> int:
    """Whole-network parameters of the chosen point."""
    return _total(self, "params", self.chosen)

  @property
  def predicted_seconds(self) -> float:
    """Predicted whole-network time of the chosen point (NaN when nothing was timed)."""
    return _total(self, "seconds", self.chosen)

  @property
  def predicted_mac_ratio(self) -> float:
    """Network MACs over those of the chosen point."""
    return self.network_macs / max(self.predicted_macs, 1)

  @property
  def predicted_param_fraction(self) -> float:
    """Parameters of the chosen point over the network's."""
    return self.predicted_params / max(self.network_params, 1)

  @property
  def baseline_seconds(self) -> float:
    """The time speedups are relative to: ``reference_seconds`` when given, else ``network_seconds``."""
    return self.reference_seconds if math.isfinite(self.reference_seconds) else self.network_seconds

  @property
  def predicted_speedup(self) -> float:
    """:attr:`baseline_seconds` over the predicted time of the chosen point (NaN when nothing was timed)."""
    if not self.timed:
      return math.nan
    predicted = self.predicted_seconds
    return self.baseline_seconds / predicted if predicted > 0 else math.inf

  @property
  def measured_speedup(self) -> float:
    """:attr:`baseline_seconds` over :attr:`measured_seconds` (NaN when not verified)."""
    return self.baseline_seconds / self.measured_seconds if self.measured_seconds > 0 else math.nan

  @property
  def predicted_penalty(self) -> float:
    """The allocation's objective at the chosen point: Σ sensitivity² (output error) or Σ loss increase."""
    return sum(_penalty(self.metric, t.candidates[i].sensitivity) for t, i in zip(self.layers, self.chosen))

  @property
  def predicted_output_error(self) -> float:
    """``√(Σ e²)`` of the chosen layers' output errors (NaN for ``"loss_increase"``)."""
    return math.sqrt(self.predicted_penalty) if self.metric == "output_error" else math.nan

  @property
  def timed(self) -> bool:
    """Whether the tables hold measured times."""
    return math.isfinite(self.network_seconds)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict: the tables, the chosen point, the predictions and the policy."""
    return {
      "target": _target_to_json(self.target),
      "metric": self.metric,
      "target_met": self.target_met,
      "network": {
        "macs": self.network_macs,
        "params": self.network_params,
        "seconds": _json_float(self.network_seconds),
        "call_overhead_seconds": _json_float(self.call_overhead_seconds),
        "reference_seconds": _json_float(self.reference_seconds),
        "rest_seconds": _json_float(self.rest_seconds),
      },
      "predicted": {
        "macs": self.predicted_macs,
        "params": self.predicted_params,
        "seconds": _json_float(self.predicted_seconds),
        "mac_ratio": self.predicted_mac_ratio,
        "param_fraction": self.predicted_param_fraction,
        "speedup": _json_float(self.predicted_speedup),
        "penalty": self.predicted_penalty,
        "output_error": _json_float(self.predicted_output_error),
        "factorized_scale": _json_float(self.factorized_scale),
      },
      "measured": {"seconds": _json_float(self.measured_seconds), "speedup": _json_float(self.measured_speedup)},
      "verification": [dataclasses.asdict(v) | {"chosen": list(v.chosen)} for v in self.verification],
      "layers": [
        {
          "path": t.path,
          "input_shape": list(t.input_shape),
          "note": t.note,
          "given_seconds": _json_float(t.given_seconds),
          "chosen": i,
          "candidates": [
            {
              **dataclasses.asdict(c),
              "rank": list(c.rank) if isinstance(c.rank, tuple) else c.rank,
              "seconds": _json_float(c.seconds),
            }
            for c in t.candidates
          ],
        }
        for t, i in zip(self.layers, self.chosen)
      ],
      "policy": self.policy.to_dict(),
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  def to_markdown(self) -> str:
    """A summary line and one table row per candidate (the chosen ones marked)."""
    summary = (
      f"Target {_target_label(self.target)} ({'met' if self.target_met else 'NOT met'}): predicted MAC ratio "
      f"{self.predicted_mac_ratio:.2f}×, parameters {self.predicted_param_fraction:.3f}× dense"
    )
    if self.timed:
      reference = (
        f"; the reference {1e3 * self.reference_seconds:.3g} ms, the model as given {1e3 * self.network_seconds:.3g} ms"
        if math.isfinite(self.reference_seconds)
        else ""
      )
      summary += (
        f", speedup {self.predicted_speedup:.2f}× ({1e3 * self.baseline_seconds:.3g} ms → "
        f"{1e3 * self.predicted_seconds:.3g} ms{reference})"
      )
      if math.isfinite(self.measured_seconds):
        summary += (
          f", measured as assembled {self.measured_speedup:.2f}× ({1e3 * self.measured_seconds:.3g} ms, "
          f"{len(self.verification)} point(s) timed)"
        )
    if self.metric == "output_error":
      summary += f", output error {self.predicted_output_error:.3g} (√Σe²)."
    else:
      summary += f", loss increase {self.predicted_penalty:.3g} (Σ)."
    rows = [
      summary,
      "",
      f"| layer | candidate | rank | rules | MACs | params | ms | {self.metric.replace('_', ' ')} | fit error | |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, chosen in zip(self.layers, self.chosen):
      for i, c in enumerate(t.candidates):
        note = " (" + t.note + ")" if t.note and i == 0 else ""
        rows.append(
          f"| {t.path if i == 0 else ''} | {c.scheme}{note} | {'' if c.rank is None else c.rank} | {c.rules} | "
          f"{c.macs:,} | {c.params:,} | {f'{1e3 * c.seconds:.3g}' if math.isfinite(c.seconds) else '—'} | {c.sensitivity:.3g} | {c.relative_error:.3g} | "
          f"{'**chosen**' if i == chosen else ''} |"
        )
    return "\n".join(rows)

  def plot(self, path: str | os.PathLike[str]) -> None:
    """Saves a figure of every layer's sensitivity against its cost (relative to dense), chosen points starred.

    The cost is the target's: time for :class:`~efficonv.rank.Speedup`, parameters for
    :class:`~efficonv.rank.ParamFraction`, MACs otherwise.

    Raises:
      ImportError: when matplotlib is not installed (it is not a dependency of efficonv; the experiments
        extra has it).
    """
    try:
      import matplotlib

      matplotlib.use("Agg")
      import matplotlib.pyplot as plt
    except ImportError as e:
      raise ImportError("SearchReport.plot needs matplotlib: pip install matplotlib (or efficonv[experiments])") from e
    field = _cost_field(self.target)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, chosen in zip(self.layers, self.chosen):
      if len(t.candidates) < 2:
        continue
      base = getattr(t.candidates[0], field)
      order = sorted(range(len(t.candidates)), key=lambda i: getattr(t.candidates[i], field))
      xs = [getattr(t.candidates[i], field) / base for i in order]
      ys = [t.candidates[i].sensitivity for i in order]
      (line,) = ax.plot(xs, ys, marker=".", label=t.path)
      c = t.candidates[chosen]
      ax.scatter([getattr(c, field) / base], [c.sensitivity], marker="*", s=150, color=line.get_color())
    ax.set_yscale("symlog", linthresh=1e-3)  # dense is at 0
    ax.set_xlabel(f"{ {'seconds': 'time', 'params': 'parameters', 'macs': 'MACs'}[field] } / dense conv's")
    ax.set_ylabel(self.metric.replace("_", " "))
    ax.set_title(f"{_target_label(self.target)}: per-layer sensitivity (★ chosen)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def search(
  model: nnx.Module,
  target: Any,
  *,
  input_shape: Sequence[int],
  data: Any,
  loss_fn: Callable[[Any, Any], Any] | None = None,
  schemes: Sequence[str] = ("cp", "tucker2"),
  ranks: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
  multiple_of: int | None = None,
  decompose_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
  skip_first: bool = True,
  include: Sequence[str] | None = None,
  implementation: str = "auto",
  dense_implementation: str | None = None,
  forward: Forward | None = None,
  measure_time: bool | None = None,
  repeats: int = 5,
  min_seconds: float = 0.02,
  reference_seconds: float | None = None,
  reference: Callable[[], Any] | None = None,
  verify_rounds: int = 3,
) -> tuple[Policy, SearchReport]:
  """Chooses a scheme and rank (or dense) for every conv so that the network meets ``target`` at the least
  predicted loss (see the module docstring for the tables, the model of the prediction and the allocation).

  Args:
    model: an NNX model with ``nnx.Conv`` layers (not modified).
    target: :class:`~efficonv.rank.MacReduction`, :class:`~efficonv.rank.ParamFraction` (whole network) or
      :class:`~efficonv.rank.Speedup` (predicted from measured times on this device).
    input_shape: NHWC shape of one input batch: the shapes the convs are costed and timed at.
    data: calibration data: one input batch (an array), or an iterable of ``(x, y)`` pairs (or of input
      batches when there is no ``loss_fn``); every ``x`` of shape ``(n, *input_shape[1:])``.
    loss_fn: ``loss_fn(outputs, y) -> scalar`` (mean over the batch): the sensitivity is then the increase
      of the loss averaged over the batches, instead of the relative L2 error of the outputs.
    schemes: the schemes of the candidates (:func:`efficonv.schemes.names`).
    ranks: the rank rules (or ranks) of the candidates, for every scheme, or ``{scheme: rules}``; each is
      resolved per layer by :func:`efficonv.rank.choose_rank`. Default: ``MacReduction`` of
      :data:`DEFAULT_REDUCTIONS`.
    multiple_of: round every rank (each entry of a tuple rank) to the nearest multiple of this, at least
      one multiple, then clip to the valid range (hardware-friendly widths).
    decompose_kwargs: ``{scheme: keywords}`` for that scheme's :mod:`efficonv.decompose` function (e.g.
      ``{"cp": {"n_restarts": 1, "n_iter": 50}}`` to make CP's many fits affordable); the returned policy
      carries them, so that :func:`efficonv.compress` makes the same fits.
    skip_first: leave the first conv of the forward pass dense (as :class:`efficonv.Policy` does).
    include: only these conv paths are candidates (``None``: every eligible conv).
    implementation: ``implementation`` of the factorized layers (timed so, and in the policy).
    dense_implementation: the policy's ``dense_implementation`` (convs left dense are timed as they will run).
    forward: ``forward(model, x)`` when the model is not called as ``model(x)`` (jit-compatible).
    measure_time: time the candidates and the network; ``None``: only for a ``Speedup`` target.
    repeats, min_seconds: of each timing (:func:`efficonv.planning.median_seconds`).
    reference_seconds: the time (at ``input_shape``) that a ``Speedup`` target and the predicted speedup are
      relative to, when it is not the model as given: e.g. the fastest dense build of the network, timed by
      the caller the same way (another formulation of its convs, other compiler options). ``None``: the model
      as given, measured here. The time model itself is always the measured model's.
    reference: instead of ``reference_seconds``, a call (no arguments, at ``input_shape``) of the network the
      speedups are relative to. It is timed in alternating pairs with the model as given
      (:func:`efficonv.planning.median_time_ratio`), and its time is the model's measured time times the
      median ratio: two networks timed one after the other, seconds apart, see the machine in different
      states, which moved a ``Speedup`` target by as much as the margins it is met by.
    verify_rounds: for a ``Speedup`` target, at most this many points are assembled and timed whole
      (:func:`verify`): the returned one meets the target as measured, not only as predicted, when any
      does. ``0``: the tables' prediction alone.

  Returns:
    ``(policy, report)``: ``policy`` names every conv (``"dense"`` or ``(scheme, rank)``, with the scheme's
    ``decompose_kwargs`` when given) and ``efficonv.compress(model, policy, input_shape=...)`` applies it;
    ``report`` is the :class:`SearchReport` (:func:`allocate` reuses its tables for another target). When
    the target cannot be met, a ``UserWarning`` says so and the cheapest point found is returned
    (``report.target_met`` is ``False``).

  Raises:
    ValueError: naming ``target``, ``input_shape``, ``data``, ``loss_fn``, ``schemes``, ``ranks``,
      ``multiple_of``, ``decompose_kwargs``, ``include``, ``implementation``, ``dense_implementation``,
      ``repeats``, ``min_seconds``, ``reference_seconds``, ``reference`` or ``verify_rounds`` when invalid.
  """
  _check_target(target)
  shape = _check_input_shape(input_shape)
  scheme_names = _check_schemes(schemes)
  rules = _check_ranks(ranks, scheme_names)
  if multiple_of is not None and (isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1):
    raise ValueError(f"multiple_of must be None or an int >= 1, got {multiple_of!r}")
  kwargs_by_scheme = _check_decompose_kwargs(decompose_kwargs)
  check_layer_implementation(dense_implementation or "auto", "dense_implementation")
  check_implementation(implementation)
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive int, got {repeats!r}")
  if not min_seconds >= 0:
    raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
  if loss_fn is not None and not callable(loss_fn):
    raise ValueError(f"loss_fn must be None or a callable (outputs, y) -> scalar, got {loss_fn!r}")
  _check_rounds(verify_rounds, "verify_rounds", allow_zero=True)
  batches = _check_data(data, shape, loss_fn is not None)
  forward = forward or (lambda m, x: m(x))
  timed = isinstance(target, rank_lib.Speedup) if measure_time is None else bool(measure_time)
  reference_s = _check_reference_seconds(reference_seconds, timed)
  if reference is not None:
    if not callable(reference):
      raise ValueError(f"reference must be None or a callable of no arguments, got {reference!r}")
    if reference_seconds is not None:
      raise ValueError("reference and reference_seconds are alternatives: give at most one")
    if not timed:
      raise ValueError("reference needs measured times: give a Speedup target or measure_time=True")
  overhead = _call_overhead(repeats, min_seconds) if timed else math.nan
  time_of = functools.partial(_layer_seconds, repeats=repeats, min_seconds=min_seconds, overhead=overhead)

  work = nnx.clone(model)
  calls = conv_calls(work, shape, forward)
  convs = {tuple(p): node for p, node in nnx.iter_graph(work) if isinstance(node, nnx.Conv)}
  names = {_name(p) for p in convs}
  if include is not None:
    include = (include,) if isinstance(include, str) else tuple(include)
    unknown = [p for p in include if p not in names]
    if unknown:
      raise ValueError(f"include names paths that are not convs: {unknown}; convs are {sorted(names)}")
  counts: dict[tuple[Any, ...], int] = {}
  for path, _ in calls:
    counts[path] = counts.get(path, 0) + 1
  network_macs = cost.macs(work, shape)
  network_params = cost.params(work)
  # The model as given is compiled once: its time, the reference's ratio to it and every verification round
  # use this call.
  given = _network_call(work, forward, shape) if timed else None
  network_seconds = (
    median_seconds(given, repeats=repeats, min_seconds=min_seconds)[0] if given is not None else math.nan
  )
  if reference is not None and given is not None:
    reference_s = network_seconds * _paired_ratio(reference, given)
  stand_ins = stand_in_network(work, calls, convs, _replace) if timed else None
  rest_seconds = math.nan if stand_ins is None else _network_seconds(stand_ins, forward, shape, repeats, min_seconds)

  sensitivity = _Sensitivity(work, forward, batches, loss_fn)
  tables: list[LayerTable] = []
  seen: set[tuple[Any, ...]] = set()
  for index, (path, call_shape) in enumerate(calls):
    if path in seen:
      continue
    seen.add(path)
    conv, name = convs[path], _name(path)
    macs, params = cost.macs(conv, call_shape), cost.params(conv)
    given_s = time_of(conv, call_shape) if timed else math.nan
    kept = fast_conv(conv, dense_implementation) if dense_implementation and type(conv) is nnx.Conv else conv
    dense_s = (time_of(kept, call_shape) if kept is not conv else given_s) if timed else math.nan
    dense = Candidate(DENSE, None, "", macs, params, dense_s, 0.0, 0.0)
    note = _why_dense(conv, name, index, counts[path], skip_first, include)
    candidates = [dense]
    if not note:
      for scheme in scheme_names:
        for rank, labels in _ranks(
          scheme, conv, call_shape, rules[scheme], multiple_of, kwargs_by_scheme.get(scheme, {})
        ):
          options = _options(scheme, kwargs_by_scheme.get(scheme, {}))
          cand_macs = _candidate_macs(scheme, rank, options, conv, call_shape)
          if cand_macs >= macs:  # never worse: compress would keep the conv dense
            continue
          entry = schemes_lib.get(scheme)
          fmt, info = entry.decompose(conv_kernel(conv), rank, **kwargs_by_scheme.get(scheme, {}))
          seconds = math.nan
          if timed:  # the layer compress builds, timed alone; its structure is enough (times do not depend on values)
            layer = nnx.eval_shape(lambda e=entry, f=fmt, c=conv: layer_of_format(e.nnx_layer, f, c, implementation))
            seconds = time_of(layer, call_shape)
          candidates.append(
            Candidate(
              scheme,
              _plain(fmt.rank),
              labels,
              cand_macs,
              fmt.params() + (0 if conv.bias is None else int(conv.bias.size)),
              seconds,
              sensitivity.of(conv, fmt.to_dense()),
              float(info.relative_error),
            )
          )
      if len(candidates) == 1:
        note = "no candidate has fewer MACs than the dense conv"
    tables.append(LayerTable(name, call_shape, tuple(candidates), note, given_s))

  provisional = SearchReport(
    target,
    sensitivity.metric,
    tuple(tables),
    (0,) * len(tables),
    True,
    network_macs,
    network_params,
    network_seconds,
    Policy(
      layers={t.path: DENSE for t in tables},
      implementation=implementation,
      dense_implementation=dense_implementation,
      skip_first=False,
    ),
    overhead,
    reference_s,
    rest_seconds,
  )
  if timed and isinstance(target, rank_lib.Speedup) and verify_rounds:
    return _verify(
      provisional, target, work, shape, forward, kwargs_by_scheme, verify_rounds, stacklevel=3, given=given
    )
  return _allocate_report(provisional, target, kwargs_by_scheme, stacklevel=3)


def _check_reference_seconds(value: Any, timed: bool) -> float:
  """``reference_seconds`` as a float (NaN for ``None``)."""
  if value is None:
    return math.nan
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
    raise ValueError(f"reference_seconds must be None or a positive finite number of seconds, got {value!r}")
  if not timed:
    raise ValueError(f"reference_seconds={value!r} needs measured times: give a Speedup target or measure_time=True")
  return float(value)


def allocate(
  report: SearchReport,
  target: Any,
  *,
  decompose_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
  reference_seconds: float | None = None,
) -> tuple[Policy, SearchReport]:
  """Chooses the point of ``report``'s tables that meets ``target`` at the least predicted penalty.

  Reuses the candidates, costs and sensitivities :func:`search` measured (no model, data or timing needed):
  search once, then allocate for every target.

  Args:
    report: a :class:`SearchReport`.
    target: as for :func:`search`; a :class:`~efficonv.rank.Speedup` needs tables with times.
    decompose_kwargs: ``{scheme: keywords}`` the returned policy carries; ``None`` keeps those of
      ``report.policy``.
    reference_seconds: a new reference time for the speedups (see :func:`search`); ``None`` keeps
      ``report``'s.

  Returns:
    ``(policy, report)`` for ``target`` (see :func:`search`).

  Raises:
    ValueError: naming ``target`` when it is not a target, or a ``Speedup`` and ``report`` has no times;
      naming ``reference_seconds`` when it is not a positive number or ``report`` has no times.
  """
  if decompose_kwargs is None:
    decompose_kwargs = _policy_kwargs(report.policy)
  if reference_seconds is not None:
    report = dataclasses.replace(report, reference_seconds=_check_reference_seconds(reference_seconds, report.timed))
  return _allocate_report(report, target, decompose_kwargs, stacklevel=3)


def verify(
  report: SearchReport,
  model: nnx.Module,
  *,
  input_shape: Sequence[int],
  forward: Forward | None = None,
  rounds: int = 3,
) -> tuple[Policy, SearchReport]:
  """Assembles the chosen point of ``report`` and times it whole; re-allocates until it meets the target.

  The tables' time model (module docstring) adds times measured one layer at a time; a network compiled
  whole fuses and schedules differently. Each round builds the point's structure (:func:`efficonv.compress`
  with ``decompose=False``: random factors, which time as the fitted ones do) and times it at
  ``input_shape`` in alternating pairs with ``model`` (:func:`efficonv.planning.median_time_ratio`, at least
  20 pairs and 0.5 s): its time is ``report.network_seconds`` times the median ratio, so that a machine
  whose speed moved since the tables were timed moves both alike. The round then fits
  :attr:`SearchReport.factorized_scale` (``β``: the factorized convs' share of the measured time, that is
  the measured time less the calibrated dense and non-conv part, over the sum of their times alone), and
  the next round allocates with it; when that gives again a point that missed, ``β`` grows to the least
  value at which that point misses by 1% of the budget, until a new point comes. It stops when a point that met repeats, when
  no faster point is left, when one meets the target within 10% of its budget, or after ``rounds`` points.
  Of the points timed, it returns the least-penalty one that meets the target as measured, else the
  fastest one measured (with a ``UserWarning``; ``target_met`` is then ``False``).

  Args:
    report: a :class:`SearchReport` with times and a :class:`~efficonv.rank.Speedup` target, from
      :func:`search` or :func:`allocate` (its ``factorized_scale`` is not reused: the first round starts from the
      tables alone).
    model: the model ``report`` was searched on.
    input_shape: the shape it was timed at.
    forward: as for :func:`search`.
    rounds: at most this many points are timed.

  Returns:
    ``(policy, report)`` with :attr:`~SearchReport.measured_seconds` and
    :attr:`~SearchReport.verification` set.

  Raises:
    ValueError: naming ``report`` when its target is not a ``Speedup`` or it has no times, ``input_shape``
      or ``rounds`` when invalid.
  """
  if not isinstance(report.target, rank_lib.Speedup) or not report.timed:
    raise ValueError(f"report must have measured times and a Speedup target, got target {report.target!r}")
  shape = _check_input_shape(input_shape)
  _check_rounds(rounds, "rounds", allow_zero=False)
  return _verify(
    report,
    report.target,
    model,
    shape,
    forward or (lambda m, x: m(x)),
    _policy_kwargs(report.policy),
    rounds,
    stacklevel=3,
  )


# A verified point this close under its budget is taken without another round.
_CLOSE_ENOUGH = 0.1
# When the tables offer again a point that missed, they are asked for one that would miss by this much of
# the budget.
_TIGHTEN = 0.01
# A measured time under the calibrated dense and non-conv part is noise, not free factorized convs.
_LEAST_SCALE = 0.1
# Each assembled point is timed against the given network in at least this many alternating pairs and this
# long: one whole-network ratio decides the round.
_VERIFY_REPEATS, _VERIFY_MIN_SECONDS = 20, 0.5


def _verify(
  report: SearchReport,
  target: Any,
  model: nnx.Module,
  shape: tuple[int, ...],
  forward: Forward,
  decompose_kwargs: Mapping[str, Mapping[str, Any]],
  rounds: int,
  stacklevel: int,
  given: Callable[[], Any] | None = None,
) -> tuple[Policy, SearchReport]:
  budget = _budget(report, target)
  if given is None:
    given = _network_call(model, forward, shape)
  scale = 1.0
  timed: list[tuple[Policy, SearchReport]] = []
  tables: list[float] = []

  def allocated(scale: float) -> tuple[Policy, SearchReport]:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # the verdict is the measurement's, given below
      return _allocate_report(
        dataclasses.replace(report, factorized_scale=scale, verification=()), target, decompose_kwargs, 0
      )

  def fixed_and_factorized(point: SearchReport) -> tuple[float, float]:
    factorized = _factorized_seconds(point, point.chosen)
    return point.predicted_seconds - point.factorized_scale * factorized, factorized

  for _ in range(rounds):
    policy, point = allocated(scale)
    seen = {p.chosen: p for _, p in timed}
    # A point timed before: done if it met the budget; if it missed, ask the tables for one faster as that
    # point measured: the least β at which it no longer fits (and at least a step more).
    while point.chosen in seen and seen[point.chosen].measured_seconds > budget:
      fixed, factorized = fixed_and_factorized(point)
      if factorized <= 0:
        break
      scale = max(((1 + _TIGHTEN) * budget - fixed) / factorized, (1 + _TIGHTEN) * scale)
      policy, tighter = allocated(scale)
      if tighter.chosen == point.chosen:
        break
      point = tighter
    if point.chosen in seen:
      break
    assembled, _ = compress(model, policy, input_shape=shape, forward=forward, decompose=False)
    measured = _assembled_seconds(assembled, given, report.network_seconds, forward, shape)
    fixed, factorized = fixed_and_factorized(point)
    timed.append((policy, dataclasses.replace(point, measured_seconds=measured)))
    tables.append(fixed + factorized)
    if factorized > 0:
      scale = max((measured - fixed) / factorized, _LEAST_SCALE)
    if (1 - _CLOSE_ENOUGH) * budget <= measured <= budget:
      break
  history = tuple(Verification(p.chosen, t, p.measured_seconds) for (_, p), t in zip(timed, tables))
  meeting = [(policy, p) for policy, p in timed if p.measured_seconds <= budget]
  if meeting:
    policy, best = min(meeting, key=lambda pair: pair[1].predicted_penalty)
  else:
    policy, best = min(timed, key=lambda pair: pair[1].measured_seconds)
    warnings.warn(
      f"target {target!r} is not met as measured: of the {len(timed)} point(s) assembled and timed, the fastest "
      f"reaches {best.baseline_seconds / best.measured_seconds:.3g}× (predicted {best.predicted_speedup:.3g}×); "
      "returning it (report.target_met is False)",
      UserWarning,
      stacklevel=stacklevel,
    )
  return policy, dataclasses.replace(best, target_met=bool(meeting), verification=history)


def _check_rounds(value: Any, name: str, allow_zero: bool) -> None:
  least = 0 if allow_zero else 1
  if isinstance(value, bool) or not isinstance(value, int) or value < least:
    raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _allocate_report(
  report: SearchReport, target: Any, decompose_kwargs: Mapping[str, Mapping[str, Any]], stacklevel: int
) -> tuple[Policy, SearchReport]:
  _check_target(target)
  field = _cost_field(target)
  if field == "seconds" and not report.timed:
    raise ValueError(
      f"target {target!r} needs measured times, and report's tables have none: search with a Speedup target "
      "or measure_time=True"
    )
  costs = _costs(report, field)
  penalties = [[_penalty(report.metric, c.sensitivity) for c in t.candidates] for t in report.layers]
  budget = _budget(report, target)
  fixed = _rest(report, field)
  # A relative slack, so that a target met exactly (the dense point at Speedup(1)) is not lost to rounding.
  chosen, met = _allocate(costs, penalties, budget - fixed + 1e-9 * abs(budget))
  if not met:
    best = dataclasses.replace(report, chosen=tuple(chosen))
    warnings.warn(
      f"target {target!r} cannot be met with these candidates: the cheapest point reaches "
      f"{_achieved(best, target)}; returning it (report.target_met is False)",
      UserWarning,
      stacklevel=stacklevel,
    )
  layers: dict[str, Any] = {}
  for t, i in zip(report.layers, chosen):
    c = t.candidates[i]
    if c.scheme == DENSE:
      layers[t.path] = DENSE
    else:
      kwargs = dict(decompose_kwargs.get(c.scheme, {}))
      layers[t.path] = (c.scheme, c.rank, kwargs) if kwargs else (c.scheme, c.rank)
  policy = dataclasses.replace(report.policy, layers=layers)
  return policy, dataclasses.replace(report, target=target, chosen=tuple(chosen), target_met=met, policy=policy)


# --- allocation -------------------------------------------------------------------------------------------


def _allocate(costs: list[list[float]], penalties: list[list[float]], budget: float) -> tuple[list[int], bool]:
  """One candidate index per layer with ``Σ cost ≤ budget`` at the least ``Σ penalty`` found, and whether the
  budget is met (when not: the cheapest point).

  The better of two solutions of this multiple-choice knapsack, each followed by the clean-up pass
  (:func:`_improve`): a dynamic program over costs rounded up to multiples of ``budget / _BINS`` (so that its
  solution fits; optimal up to that rounding) and AIMET's greedy path (:func:`_greedy`).
  """
  cheapest = [min(range(len(c)), key=list(zip(c, p)).__getitem__) for c, p in zip(costs, penalties)]
  if sum(c[j] for c, j in zip(costs, cheapest)) > budget:
    return cheapest, False
  found = [_improve(costs, penalties, budget, _greedy(costs, penalties, budget))]
  programmed = _knapsack(costs, penalties, budget)
  if programmed is not None:
    found.append(_improve(costs, penalties, budget, programmed))
  return min(found, key=lambda chosen: sum(p[j] for p, j in zip(penalties, chosen))), True


# Cost resolution of the dynamic program, in parts of the budget.
_BINS = 1 << 12


def _knapsack(costs: list[list[float]], penalties: list[list[float]], budget: float) -> list[int] | None:
  """The least-penalty choice with ``Σ ceil(cost / unit) ≤ _BINS``, ``unit = budget / _BINS`` (``None``: none)."""
  if budget <= 0:
    return None
  unit = budget / _BINS

  def weight(c: float) -> int:
    return max(math.ceil(c / unit - 1e-9), 0)

  best = np.full(_BINS + 1, np.inf)  # best[b]: least penalty of the layers so far at total weight b
  best[0] = 0.0
  picks = []
  for cs, ps in zip(costs, penalties):
    new, pick = np.full(_BINS + 1, np.inf), np.full(_BINS + 1, -1)
    for j, (c, p) in enumerate(zip(cs, ps)):
      w = weight(c)
      if w > _BINS:
        continue
      shifted = np.full(_BINS + 1, np.inf)
      shifted[w:] = best[: _BINS + 1 - w] + p
      better = shifted < new  # strict: a tie keeps the earlier candidate
      new[better], pick[better] = shifted[better], j
    best = new
    picks.append(pick)
  if not np.isfinite(best).any():
    return None
  b = int(np.argmin(best))  # the first least penalty: the lightest weight among them
  chosen = []
  for cs, pick in zip(reversed(costs), reversed(picks)):
    j = int(pick[b])
    chosen.append(j)
    b -= weight(cs[j])
  return chosen[::-1]


def _greedy(costs: list[list[float]], penalties: list[list[float]], budget: float) -> list[int]:
  """From all-dense (index 0), the move (one layer to any cheaper candidate) with the least added penalty per
  unit of cost saved, until ``Σ cost ≤ budget`` (AIMET's greedy; the caller checks that the cheapest point fits).
  """
  chosen = [0] * len(costs)
  total = sum(c[0] for c in costs)
  while total > budget:
    best: tuple[float, int, int] | None = None
    for layer, (cs, ps) in enumerate(zip(costs, penalties)):
      here = chosen[layer]
      for j, (c, p) in enumerate(zip(cs, ps)):
        saved = cs[here] - c
        if saved > 0:
          ratio = (p - ps[here]) / saved
          if best is None or ratio < best[0]:
            best = (ratio, layer, j)
    if best is None:
      break
    _, layer, j = best
    total -= costs[layer][chosen[layer]] - costs[layer][j]
    chosen[layer] = j
  return chosen


def _improve(costs: list[list[float]], penalties: list[list[float]], budget: float, chosen: list[int]) -> list[int]:
  """While some swap of one layer to a less penalized candidate keeps ``Σ cost ≤ budget``, makes the one that
  removes the most penalty."""
  chosen = list(chosen)
  total = sum(c[j] for c, j in zip(costs, chosen))
  while True:
    swap: tuple[float, int, int] | None = None
    for layer, (cs, ps) in enumerate(zip(costs, penalties)):
      here = chosen[layer]
      for j, (c, p) in enumerate(zip(cs, ps)):
        gain = ps[here] - p
        if gain > 0 and total - cs[here] + c <= budget and (swap is None or gain > swap[0]):
          swap = (gain, layer, j)
    if swap is None:
      return chosen
    _, layer, j = swap
    total += costs[layer][j] - costs[layer][chosen[layer]]
    chosen[layer] = j


def _cost_field(target: Any) -> str:
  if isinstance(target, rank_lib.Speedup):
    return "seconds"
  if isinstance(target, rank_lib.ParamFraction):
    return "params"
  return "macs"


def _rest(report: SearchReport, field: str) -> float:
  """The part of the network's cost outside its convs (see the module docstring)."""
  if field == "macs":
    return float(report.network_macs - sum(t.candidates[0].macs for t in report.layers))
  if field == "params":
    return float(report.network_params - sum(t.candidates[0].params for t in report.layers))
  return _rest_seconds(report)


def _rest_seconds(report: SearchReport) -> float:
  """``T_rest``: measured with stand-ins when it was, else ``T_network − Σ t(given)``; at most ``T_network``."""
  if math.isfinite(report.rest_seconds):
    return min(max(report.rest_seconds, 0.0), report.network_seconds)
  return max(report.network_seconds - sum(t.given_seconds for t in report.layers), 0.0)


def _dense_scale(report: SearchReport) -> float:
  """``α``: a dense conv's share of the network's time per second it takes alone (see the module docstring)."""
  given = sum(t.given_seconds for t in report.layers)
  return (report.network_seconds - _rest_seconds(report)) / given if given > 0 else 1.0


def _costs(report: SearchReport, field: str) -> list[list[float]]:
  """Each layer's candidates' costs in the network (``t'`` of the module docstring for ``"seconds"``)."""
  alpha, beta = (_dense_scale(report), report.factorized_scale) if field == "seconds" else (1.0, 1.0)
  return [
    [float(getattr(c, field)) * (alpha if c.scheme == "dense" else beta) for c in t.candidates] for t in report.layers
  ]


def _factorized_seconds(report: SearchReport, chosen: Sequence[int]) -> float:
  """``Σ t`` of the factorized candidates among ``chosen`` (times alone: the part ``β`` multiplies)."""
  return sum(t.candidates[i].seconds for t, i in zip(report.layers, chosen) if t.candidates[i].scheme != "dense")


def _total(report: SearchReport, field: str, chosen: Sequence[int]) -> Any:
  if field == "seconds" and not report.timed:
    return math.nan
  value = _rest(report, field) + sum(row[i] for row, i in zip(_costs(report, field), chosen))
  return value if field == "seconds" else round(value)


def _budget(report: SearchReport, target: Any) -> float:
  if isinstance(target, rank_lib.MacReduction):
    return report.network_macs / target.reduction
  if isinstance(target, rank_lib.ParamFraction):
    return report.network_params * target.fraction
  return report.baseline_seconds / target.speedup


def _achieved(report: SearchReport, target: Any) -> str:
  if isinstance(target, rank_lib.MacReduction):
    return f"a MAC ratio of {report.predicted_mac_ratio:.3g}"
  if isinstance(target, rank_lib.ParamFraction):
    return f"a parameter fraction of {report.predicted_param_fraction:.3g}"
  return f"a predicted speedup of {report.predicted_speedup:.3g}"


def _penalty(metric: str, sensitivity: float) -> float:
  return sensitivity * sensitivity if metric == "output_error" else sensitivity


def _policy_kwargs(policy: Policy) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = {}
  for choice in policy.layers.values():
    if not isinstance(choice, str) and len(choice) == 3:
      out[choice[0]] = dict(choice[2])
  return out


# --- sensitivity ------------------------------------------------------------------------------------------


class _Sensitivity:
  """The network's outputs on the calibration batches with one conv's kernel swapped; one compiled forward."""

  def __init__(self, model: nnx.Module, forward: Forward, batches: list[tuple[Any, Any]], loss_fn: Any) -> None:
    self.model, self.batches, self.loss_fn = model, batches, loss_fn
    self.metric = "output_error" if loss_fn is None else "loss_increase"
    graphdef = nnx.graphdef(model)
    self.run = jax.jit(lambda state, x: forward(nnx.merge(graphdef, state), x))
    self.reference = self._outputs()
    if loss_fn is not None:
      self.base_loss = self._loss(self.reference)
    else:
      self.norm2 = sum(_sq_norm(out) for out in self.reference)
      if not self.norm2 > 0:
        raise ValueError("data must give the network nonzero outputs for the relative output error; it gives zeros")

  def _outputs(self) -> list[Any]:
    state = nnx.state(self.model)
    return [self.run(state, x) for x, _ in self.batches]

  def _loss(self, outputs: list[Any]) -> float:
    sizes = [len(x) for x, _ in self.batches]
    values = [float(self.loss_fn(out, y)) for out, (_, y) in zip(outputs, self.batches)]
    return sum(v * n for v, n in zip(values, sizes)) / sum(sizes)

  def of(self, conv: nnx.Conv, kernel: Any) -> float:
    original = conv.kernel[...]
    conv.kernel[...] = jnp.asarray(kernel, original.dtype).reshape(original.shape)
    try:
      outputs = self._outputs()
    finally:
      conv.kernel[...] = original
    if self.loss_fn is not None:
      return self._loss(outputs) - self.base_loss
    diff2 = sum(_sq_norm(jax.tree.map(lambda a, b: a - b, out, ref)) for out, ref in zip(outputs, self.reference))
    return math.sqrt(diff2 / self.norm2)


def _sq_norm(tree: Any) -> float:
  return float(sum(jnp.sum(jnp.square(jnp.asarray(leaf, jnp.float32))) for leaf in jax.tree.leaves(tree)))


# --- timing -----------------------------------------------------------------------------------------------


def _random_input(shape: tuple[int, ...]) -> jax.Array:
  return jnp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def _call_overhead(repeats: int, min_seconds: float) -> float:
  """Median time of a compiled call that does (almost) nothing: what every call pays whatever it computes."""
  x = jnp.zeros((1,), jnp.float32)
  compiled = jax.jit(lambda x: x + 1).lower(x).compile()
  return median_seconds(functools.partial(compiled, x), repeats=max(repeats, 20), min_seconds=min_seconds)[0]


def _layer_seconds(
  layer: nnx.Module, shape: tuple[int, ...], *, repeats: int, min_seconds: float, overhead: float
) -> float:
  """Median time of ``layer(x)`` compiled alone at ``shape`` less ``overhead``, at least 0 (abstract leaves, from
  ``nnx.eval_shape``, get random values)."""
  graphdef, state = nnx.split(layer)
  rng = np.random.default_rng(0)
  state = jax.tree.map(
    lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype)) if isinstance(a, jax.ShapeDtypeStruct) else a,
    state,
  )
  x = _random_input(shape)
  compiled = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).compile()
  median = median_seconds(functools.partial(compiled, state, x), repeats=repeats, min_seconds=min_seconds)[0]
  return max(median - overhead, 0.0)


def _network_call(model: nnx.Module, forward: Forward, shape: tuple[int, ...]) -> Callable[[], Any]:
  """``forward(model, x)`` compiled at ``shape``, as a call with no arguments."""
  graphdef, state = nnx.split(model)
  x = _random_input(shape)
  compiled = jax.jit(lambda state, x: forward(nnx.merge(graphdef, state), x)).lower(state, x).compile()
  return functools.partial(compiled, state, x)


def _network_seconds(
  model: nnx.Module, forward: Forward, shape: tuple[int, ...], repeats: int, min_seconds: float
) -> float:
  return median_seconds(_network_call(model, forward, shape), repeats=repeats, min_seconds=min_seconds)[0]


def _assembled_seconds(
  model: nnx.Module, given: Callable[[], Any], given_seconds: float, forward: Forward, shape: tuple[int, ...]
) -> float:
  """``model``'s time at ``shape``: ``given_seconds`` times its median ratio to the ``given`` network's call."""
  return _paired_ratio(_network_call(model, forward, shape), given) * given_seconds


def _paired_ratio(call: Callable[[], Any], given: Callable[[], Any]) -> float:
  """The median time ratio of ``call`` to ``given``, timed in alternating pairs (the verification's count)."""
  ratio, _ = median_time_ratio(call, given, repeats=_VERIFY_REPEATS, min_seconds=_VERIFY_MIN_SECONDS)
  return ratio


# --- candidates -------------------------------------------------------------------------------------------


def _why_dense(
  conv: nnx.Conv, name: str, index: int, calls: int, skip_first: bool, include: tuple[str, ...] | None
) -> str:
  """Why the conv has only the dense candidate (``""`` when it has others)."""
  try:
    conv_kernel(conv)
  except ValueError as e:
    return f"not factorizable: {e}"
  if calls > 1:
    return f"called {calls} times (a shared conv stays dense)"
  if skip_first and index == 0:
    return "first conv of the forward pass (skip_first)"
  if include is not None and name not in include:
    return "not included"
  return ""


def _options(scheme: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
  return {k: kwargs[k] for k in schemes_lib.get(scheme).format.option_names if k in kwargs}


def _ranks(
  scheme: str,
  conv: nnx.Conv,
  shape: tuple[int, ...],
  rules: Sequence[Any],
  multiple_of: int | None,
  kwargs: Mapping[str, Any],
) -> list[tuple[Any, str]]:
  """The distinct ranks the rules give for this conv, in the rules' order, each with the rules that gave it."""
  options = _options(scheme, kwargs)
  fmt_cls = schemes_lib.get(scheme).format
  kernel_shape = tuple(int(d) for d in conv.kernel.shape)
  kernel = conv_kernel(conv)
  found: dict[Any, list[str]] = {}
  for rule in rules:
    choice = rank_lib.choose_rank(scheme, kernel, rule, input_shape=shape, **_conv_options(conv), **options)
    rank = choice.rank
    if multiple_of is not None:
      rank = _round(rank, multiple_of)
    rank, _ = fmt_cls.clip_rank(rank, kernel_shape, **options)
    found.setdefault(_plain(rank), []).append(_rule_label(rule))
  return [(rank, ", ".join(labels)) for rank, labels in found.items()]


def _round(rank: Any, multiple: int) -> Any:
  def one(r: int) -> int:
    return multiple * max(1, math.floor(int(r) / multiple + 0.5))

  return tuple(one(r) for r in rank) if isinstance(rank, (tuple, list)) else one(rank)


def _plain(rank: Any) -> Any:
  return tuple(int(r) for r in rank) if isinstance(rank, (tuple, list)) else int(rank)


def _rule_label(rule: Any) -> str:
  if dataclasses.is_dataclass(rule):
    values = [getattr(rule, f.name) for f in dataclasses.fields(rule)]
    return f"{type(rule).__name__}({', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)})"
  return str(rule)


# --- arguments --------------------------------------------------------------------------------------------


def _check_target(target: Any) -> None:
  if not isinstance(target, rank_lib.TARGETS):
    raise ValueError(
      "target must be efficonv.rank.MacReduction(x), ParamFraction(x) or Speedup(x) (a whole-network target), "
      f"got {target!r}"
    )


def _target_label(target: Any) -> str:
  return _rule_label(target)


def _target_to_json(target: Any) -> dict[str, Any]:
  return {"target": type(target).__name__, **{f.name: getattr(target, f.name) for f in dataclasses.fields(target)}}


def _json_float(value: float) -> float | None:
  return value if math.isfinite(value) else None


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
  try:
    shape = tuple(int(v) for v in input_shape)
  except (TypeError, ValueError):
    shape = ()
  if len(shape) != 4 or min(shape) < 1:
    raise ValueError(f"input_shape must be NHWC (4 positive ints), got {input_shape!r}")
  return shape


def _check_schemes(value: Any) -> tuple[str, ...]:
  names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Iterable) else ()
  if not names:
    raise ValueError(f"schemes must be a non-empty sequence of scheme names {schemes_lib.names()}, got {value!r}")
  unknown = [s for s in names if s not in schemes_lib.names()]
  if unknown:
    raise ValueError(f"schemes must name schemes of {schemes_lib.names()}, got {unknown}")
  return tuple(dict.fromkeys(names))


def _check_ranks(value: Any, names: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
  default = tuple(rank_lib.MacReduction(r) for r in DEFAULT_REDUCTIONS)
  if value is None:
    return {s: default for s in names}
  if isinstance(value, Mapping):
    missing = [s for s in names if s not in value]
    extra = [s for s in value if s not in names]
    if missing or extra:
      raise ValueError(f"ranks as a dict must have one entry per scheme {list(names)}, got keys {list(value)}")
    return {s: _check_rules(value[s], f"ranks[{s!r}]") for s in names}
  rules = _check_rules(value, "ranks")
  return {s: rules for s in names}


def _check_rules(value: Any, name: str) -> tuple[Any, ...]:
  if isinstance(value, (str, rank_lib.RULES)) or not isinstance(value, Iterable):
    raise ValueError(f"{name} must be a non-empty sequence of rank rules (efficonv.rank) or ranks, got {value!r}")
  rules = tuple(value)
  bad = [r for r in rules if isinstance(r, rank_lib.Speedup) or isinstance(r, (str, float, bool))]
  if not rules or bad:
    raise ValueError(f"{name} must be a non-empty sequence of rank rules (efficonv.rank) or ranks, got {value!r}")
  return rules


def _check_decompose_kwargs(value: Any) -> dict[str, dict[str, Any]]:
  if value is None:
    return {}
  if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
    raise ValueError(f"decompose_kwargs must be a dict {{scheme: {{keyword: value}}}}, got {value!r}")
  unknown = [s for s in value if s not in schemes_lib.names()]
  if unknown:
    raise ValueError(f"decompose_kwargs must be keyed by schemes of {schemes_lib.names()}, got {unknown}")
  return {s: dict(kw) for s, kw in value.items()}


def _check_data(data: Any, input_shape: tuple[int, ...], needs_labels: bool) -> list[tuple[Any, Any]]:
  """``[(x, y or None), ...]``, each ``x`` a ``(n, H, W, C)`` array of ``input_shape``'s image shape."""
  if data is None:
    raise ValueError("data must be calibration data (an input batch or an iterable of (x, y)), got None")
  items = [data] if hasattr(data, "shape") else list(data) if isinstance(data, Iterable) else None
  if not items:
    raise ValueError(f"data must be an input batch or a non-empty iterable of (x, y) pairs, got {type(data).__name__}")
  batches = []
  for i, item in enumerate(items):
    if isinstance(item, (tuple, list)) and len(item) == 2:
      x, y = item
    else:
      x, y = item, None
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4 or shape[1:] != input_shape[1:] or shape[0] < 1:
      raise ValueError(
        f"data's batch {i} must be an (n, {', '.join(map(str, input_shape[1:]))}) array (or an (x, y) pair of "
        f"one; give a single (x, y) pair as [(x, y)]), got {type(x).__name__} of shape {shape}"
      )
    if needs_labels and y is None:
      raise ValueError(f"data's batch {i} has no labels: loss_fn needs (x, y) pairs")
    batches.append((jnp.asarray(x), y))
  return batches

"""Fits the cost-model tables (:data:`efficonv.planning.RATES`, ``TRAINING_FACTORS``) to measured layer timings.

Run as ``python -m experiments.planner.fit_rates [RESULTS_JSON ...]`` (default: the
quick ``bench_layers`` results; :mod:`experiments.planner.auto_sweep` output is accepted too,
and several files are pooled). The model is :mod:`efficonv.planning.cost_model`'s, and the accounting of
every path is the library's own (:func:`efficonv.planning.path_terms`):

.. math:: t \\approx \\sum_{\\text{terms}} \\frac{\\text{MACs}_i}{\\text{rate}_{k(i)}} + \\text{launches} \\cdot t_\\text{step}

with one rate per step kind (``conv``, ``dot``, ``depthwise_shift``,
``depthwise_xla``) and a fixed per-step cost. The forward timings of every
forced variant (``factorized`` with each depthwise path, ``reconstructed``)
and of the plain ``lax`` dense conv give one equation each; the inverse rates
and the step cost are fitted by non-negative least squares on *relative*
errors. The script then reports, for every shape and scheme, which
implementation ``auto`` picks under the current and the fitted rates, and
that choice's measured time over the best one's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from efficonv.kernels import conv_geometry
from efficonv.planning import RATES, TRAINING_FACTORS, path_terms
from experiments.bench.cases import SCHEMES, Shape
from experiments.common import results
from experiments.common.results import RESULTS_DIR

KINDS = ("conv", "dot", "depthwise_shift", "depthwise_xla")
# Training factors: forward+backward over forward time, per kind (see efficonv.planning.TRAINING_FACTORS).
FACTOR_KINDS = ("conv", "dot", "depthwise_shift", "depthwise_shift_multiplier", "depthwise_xla", "step")
DEFAULT_RESULTS = str(RESULTS_DIR / "bench_layers_quick" / "results.json")


def _shape(record: Mapping[str, Any]) -> Shape:
  s = record["shape"]
  return Shape(s["n"], s["h"], s["w"], s["c"], s["k"])


def format_steps(fmt: Any, shape: Shape, implementation: str, depthwise: str | None) -> tuple[dict[str, int], int]:
  """``({kind: MACs}, number of steps)`` of ``fmt`` run on ``shape`` as ``implementation``.

  The library's accounting (:func:`efficonv.planning.path_terms`), summed per rate kind.
  """
  macs: dict[str, int] = {}
  launches = 0
  for term in _terms(fmt, shape, implementation, depthwise):
    macs[term.rate_kind] = macs.get(term.rate_kind, 0) + term.macs
    launches += term.launches
  return macs, launches


def _terms(fmt: Any, shape: Shape, implementation: str, depthwise: str | None) -> list[Any]:
  g = conv_geometry(shape.input_shape, fmt.kernel_size, fmt.in_features, 1, "SAME", 1)
  return path_terms(fmt, g, implementation, depthwise)


def step_macs(record: Mapping[str, Any], formats: Mapping[tuple[str, str], Any]) -> tuple[dict[str, int], int] | None:
  """``({kind: MACs}, number of steps)`` of the computation a forward record timed, or ``None``.

  Records that carry ``steps``/``n_steps`` (:mod:`experiments.planner.auto_sweep`) give them directly.
  """
  if "steps" in record:
    return dict(record["steps"]), int(record["n_steps"])
  shape = _shape(record)
  if record["scheme"] == "dense":
    return ({"conv": shape.dense_macs}, 1) if record["implementation"] == "lax" else None
  fmt = formats.get((record["scheme"], record["shape_label"]))
  if fmt is None or record["implementation"] not in ("factorized", "reconstructed"):
    return None
  return format_steps(fmt, shape, record["implementation"], record["depthwise"])


def _formats(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Any]:
  """The format of every switchable scheme on every shape (rebuilt like the benchmark built it)."""
  from flax import nnx

  out = {}
  for label, shape in {r["shape_label"]: _shape(r) for r in records if "steps" not in r}.items():
    rngs = nnx.Rngs(0)
    for scheme in SCHEMES:
      if scheme.applies(shape):
        layer = scheme.build(shape, rngs)
        if scheme.switchable:
          out[(scheme.name, label)] = layer.format
  return out


def fit(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Fitted rates (MACs/s per kind) and ``step`` (seconds) from forward records."""
  formats = _formats(records)
  rows, used = [], set()
  for r in records:
    if r["pass"] != "forward":
      continue
    sm = step_macs(r, formats)
    if sm is None:
      continue
    macs, n_steps = sm
    t = r["median_ms"] * 1e-3
    rows.append([macs.get(k, 0) / t for k in KINDS] + [n_steps / t])
    used.update(k for k in macs if macs[k])
  a = np.asarray(rows, np.float64)
  scale = a.max(axis=0)
  scale[scale == 0] = 1.0
  inverse, _ = nnls(a / scale, np.ones(len(rows)))
  inverse = inverse / scale
  rates = {k: (1.0 / inverse[i] if inverse[i] > 0 else float("inf")) for i, k in enumerate(KINDS)}
  rates["step"] = float(inverse[-1])
  return rates


def decisions(records: Sequence[Mapping[str, Any]], rates: Mapping[str, float]) -> list[dict[str, Any]]:
  """For every forward (shape, scheme) with both forced paths: what ``rates`` would pick, and its measured cost.

  ``auto`` runs the shift-and-add depthwise path on CPU, so the factorized
  candidate is ``factorized`` with ``depthwise`` ``"shift"`` or ``None``.
  ``choice_over_best`` divides the chosen path's median by the fastest forced
  path's (including ``factorized`` with the XLA depthwise).
  """
  formats = _formats(records)

  def predict(record: Mapping[str, Any]) -> float | None:
    sm = step_macs(record, formats)
    if sm is None:
      return None
    macs, n_steps = sm
    return sum(m / rates[k] for k, m in macs.items()) + n_steps * rates["step"]

  return _choices(records, "forward", predict)


def _choices(
  records: Sequence[Mapping[str, Any]], pass_name: str, predict: Callable[[Mapping[str, Any]], float | None]
) -> list[dict[str, Any]]:
  """For every ``(shape, scheme)`` of ``pass_name`` with both forced paths: the path ``predict`` (model
  seconds of a record, or ``None``) rates faster, and that path's measured median over the best one's."""
  groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for r in records:
    if r["pass"] == pass_name and r["implementation"] in ("factorized", "reconstructed"):
      groups.setdefault((r["shape_label"], r["scheme"]), []).append(r)
  out = []
  for (label, scheme), rows in groups.items():
    fact = next((r for r in rows if r["implementation"] == "factorized" and r["depthwise"] in ("shift", None)), None)
    recon = next((r for r in rows if r["implementation"] == "reconstructed"), None)
    if fact is None or recon is None:
      continue
    predicted = {name: predict(rec) for name, rec in (("factorized", fact), ("reconstructed", recon))}
    if any(v is None for v in predicted.values()):
      continue
    choice = min(predicted, key=predicted.__getitem__)
    measured = {"factorized": fact["median_ms"], "reconstructed": recon["median_ms"]}
    out.append(
      {
        "shape_label": label,
        "scheme": scheme,
        "choice": choice,
        "choice_over_best": measured[choice] / min(r["median_ms"] for r in rows),
        "predicted_ms": {k: v * 1e3 for k, v in predicted.items()},
        "measured_ms": measured,
      }
    )
  return out


def forward_times(
  record: Mapping[str, Any], formats: Mapping[tuple[str, str], Any], rates: Mapping[str, float]
) -> dict[str, float] | None:
  """Model forward seconds of the computation ``record`` timed, split by training-factor kind, or ``None``.

  The library's terms (:func:`efficonv.planning.path_terms`): a shift-and-add step with a depth multiplier
  > 1 is its own kind (``depthwise_shift_multiplier``) because its backward differs; every launched step's
  fixed cost is kind ``step``; a reconstructed run is the dense conv (``conv``) plus the reconstruction
  einsum (``dot``) and its two launches.
  """
  shape = _shape(record)
  if record["scheme"] == "dense":
    if record["implementation"] != "lax":
      return None
    return {"conv": shape.dense_macs / rates["conv"], "step": rates["step"]}
  fmt = formats.get((record["scheme"], record["shape_label"]))
  if fmt is None or record["implementation"] not in ("factorized", "reconstructed"):
    return None
  out: dict[str, float] = {}
  for term in _terms(fmt, shape, record["implementation"], record["depthwise"]):
    out[term.factor_kind] = out.get(term.factor_kind, 0.0) + term.macs / rates[term.rate_kind]
    out["step"] = out.get("step", 0.0) + term.launches * rates["step"]
  return out


def fit_training_factors(records: Sequence[Mapping[str, Any]], rates: Mapping[str, float]) -> dict[str, float]:
  """Training factors per kind from the forward+backward records, by non-negative least squares.

  Each record gives one equation ``t_fb ≈ Σ_kind factor_kind · t_forward,kind`` with the forward times of
  the cost model (``rates``), weighted by ``1 / t_fb`` (relative errors). Kinds no record exercises keep
  their current value.
  """
  formats = _formats(records)
  rows, targets = [], []
  for r in records:
    if r["pass"] != "forward_backward":
      continue
    times = forward_times(r, formats, rates)
    if times is None:
      continue
    t = r["median_ms"] * 1e-3
    rows.append([times.get(k, 0.0) / t for k in FACTOR_KINDS])
    targets.append(1.0)
  a = np.asarray(rows, np.float64)
  factors, _ = nnls(a, np.asarray(targets))
  current = TRAINING_FACTORS["cpu"]
  return {k: (float(factors[i]) if a[:, i].any() else current[k]) for i, k in enumerate(FACTOR_KINDS)}


def training_decisions(
  records: Sequence[Mapping[str, Any]], rates: Mapping[str, float], factors: Mapping[str, float]
) -> list[dict[str, Any]]:
  """Like :func:`decisions`, for the forward+backward pass and ``objective="training"``."""
  formats = _formats(records)

  def predict(record: Mapping[str, Any]) -> float | None:
    times = forward_times(record, formats, rates)
    return None if times is None else sum(factors[k] * v for k, v in times.items())

  return _choices(records, "forward_backward", predict)


def _print_choices(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
  worst = max(c["choice_over_best"] for c in rows)
  print(f"\n{title}: worst choice/best {worst:.2f}")
  for c in rows:
    flag = "" if c["choice_over_best"] <= 1.10 else "   <-- beyond 10%"
    pred = ", ".join(f"{k} {v:.3g}" for k, v in c["predicted_ms"].items())
    meas = ", ".join(f"{k} {v:.3g}" for k, v in c["measured_ms"].items())
    print(
      f"  {c['shape_label']:16s} {c['scheme']:13s} -> {c['choice']:13s} choice/best {c['choice_over_best']:.2f}"
      f"  (predicted ms: {pred}; measured ms: {meas}){flag}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Prints the fitted rates and the decisions under the current and the fitted rates."""
  paths = list(sys.argv[1:] if argv is None else argv) or [DEFAULT_RESULTS]
  records = []
  for path in paths:
    with open(path) as f:
      kind = "auto_sweep" if "decisions" in json.load(f) else "bench_layers"
    records.extend(results.load(path, kind)["records"])
  fitted = fit(records)
  print("fitted CPU rates: " + ", ".join(f"{k}={v:.3g}" for k, v in fitted.items()))
  print("current CPU rates: " + ", ".join(f"{k}={v:.3g}" for k, v in RATES["cpu"].items()))
  result: dict[str, Any] = {"fitted": fitted, "current": dict(RATES["cpu"])}
  for name, rates in (("current", RATES["cpu"]), ("fitted", fitted)):
    rows = decisions(records, rates)
    _print_choices(f"auto with the {name} rates (forward)", rows)
    result[name] = {"rates": dict(rates), "decisions": rows}
  if any(r["pass"] == "forward_backward" for r in records):
    factors = fit_training_factors(records, RATES["cpu"])
    print("\nfitted CPU training factors: " + ", ".join(f"{k}={v:.3g}" for k, v in factors.items()))
    print("current CPU training factors: " + ", ".join(f"{k}={v:.3g}" for k, v in TRAINING_FACTORS["cpu"].items()))
    result["training"] = {"fitted": factors, "current": dict(TRAINING_FACTORS["cpu"])}
    for name, f in (("current", TRAINING_FACTORS["cpu"]), ("fitted", factors)):
      rows = training_decisions(records, RATES["cpu"], f)
      _print_choices(f"auto with the {name} training factors (forward+backward)", rows)
      result["training"][name + "_decisions"] = rows
  return result


if __name__ == "__main__":
  main()

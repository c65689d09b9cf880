"""The results files: a typed schema of every record they hold, and the one loader that reads them.

Every writer builds its records as these :class:`~typing.TypedDict` s (they are plain dicts, so the JSON is
unchanged) and every reader gets them from :func:`load`, which checks the required fields and maps legacy
scheme names to today's (:data:`LEGACY_SCHEME_NAMES`), so results committed before a rename keep loading.

=================  ==========================================  ===========================================
kind               file (written by)                           records
=================  ==========================================  ===========================================
``compare``        ``compare.json`` (``claims.compare``)       :class:`ComparePayload`, :class:`CompareRow`
``compress``       ``compress.json`` (``claims.compress``)     :class:`CompressPayload`, :class:`CompressRow`
``bench_layers``   ``results.json`` (``bench.layers``)         :class:`LayersPayload`, :class:`LayerRecord`,
                                                               :class:`PeerRecord`
``bench_network``  ``results.json`` (``bench.network``)        :class:`NetworkPayload`, :class:`NetworkRecord`
``auto_sweep``     ``results.json`` (``planner.auto_sweep``)   :class:`AutoSweepPayload` (layer records)
``quick_timing``   ``results*.json`` (``bench.quick_timing``)  :class:`QuickTimingPayload`
``decompose``      ``bench_decompose*.json``                   :class:`DecomposePayload`
                   (``bench.decompose``)
=================  ==========================================  ===========================================

Example:
  >>> from experiments.common import results
  >>> results.scheme_name("separable4/no_ynn"), results.scheme_name("tucker"), results.scheme_name("cp")
  ('separable_m4/no_ynn', 'tucker2', 'cp')
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
"""``experiments/results``: where the commands write by default, and where committed results live."""

LEGACY_SCHEME_NAMES: dict[str, str] = {
  "tucker": "tucker2",
  "separable1": "separable_m1",
  "separable4": "separable_m4",
  "separable8": "separable_m8",
}
"""Scheme names of results written before the experiments used the library's names (``tucker2``) and one
spelling of the separable variants (``separable_m<multiplier>``): old name → name today."""


def scheme_name(name: str) -> str:
  """Today's name of a scheme or of a build of one (``"<scheme>/<build>"``, e.g. ``separable4/no_ynn``)."""
  scheme, sep, build = name.partition("/")
  return LEGACY_SCHEME_NAMES.get(scheme, scheme) + sep + build


# --- Shared records -------------------------------------------------------------------------------------------


class TimingStats(TypedDict):
  """:meth:`experiments.common.timing.Stats.as_dict`: the statistics of one timed function (ms)."""

  median_ms: float
  q1_ms: float
  q3_ms: float
  min_ms: float
  repeats: int
  iqr_ms: float


class MachineInfo(TypedDict, total=False):
  """:func:`experiments.common.environment.machine_info` (plus ``date``/``device_kind`` in an environment)."""

  platform: str
  cpu_model: str
  cpu_count: int
  usable_cpus: int
  python: str
  jax: str
  jaxlib: str
  backend: str
  devices: list[str]
  xla_flags: str
  compiler_options: dict[str, Any]
  load_average: list[float] | None
  command: str
  date: str
  device_kind: str


class Shape(TypedDict):
  """A benchmarked conv: NHWC input ``(n, h, w, c)``, ``c → c``, ``k×k`` (:class:`experiments.bench.cases.Shape`)."""

  n: int
  h: int
  w: int
  c: int
  k: int


# --- Claims: compare and compress -----------------------------------------------------------------------------


class _CompareRowRequired(TypedDict):
  scheme: str
  reference: str
  params: int
  macs: int
  test_accuracy: float
  test_loss: float
  train_steps: int
  train_elapsed_s: float
  history: list[dict[str, Any]]
  inference_images_per_s: float
  inference_ms_per_image: float
  latency_ms: float
  train_images_per_s: float


class CompareRow(_CompareRowRequired, total=False):
  """One scheme of a comparison run (``compare.json`` ``results``).

  ``bench_stats`` (measurement → :class:`TimingStats`) replaced ``bench_rounds`` (measurement → seconds per
  call of each round) when the timing became one statistic; old files keep the latter. The ratios against
  the ``reference`` row are set by :func:`experiments.claims.report.add_ratios`.
  """

  bench_stats: dict[str, TimingStats]
  bench_rounds: dict[str, list[float]]
  mac_reduction: float
  param_reduction: float
  inference_speedup: float
  latency_speedup: float
  train_speedup: float
  accuracy_delta: float


class ComparePayload(TypedDict):
  """``compare.json``: the config (``dataclasses.asdict`` of it), where it ran, and one row per scheme."""

  config: dict[str, Any]
  environment: MachineInfo
  bench_batch_size: int
  results: list[CompareRow]


class _CompressDenseRequired(TypedDict):
  params: int
  macs: int
  test_accuracy: float
  train_steps: int
  inference_images_per_s: float
  latency_ms: float


class CompressDense(_CompressDenseRequired, total=False):
  """The dense baseline of a compression run (``compress.json`` ``dense``)."""

  test_accuracy_after_ft: float
  bench_stats: dict[str, TimingStats]
  bench_rounds: dict[str, list[float]]
  fastest_dense: dict[str, str]
  dense_builds: dict[str, dict[str, float]]


class _CompressRowRequired(TypedDict):
  variant: str
  scheme: str
  rule: str
  params: int
  macs: int
  mac_ratio: float
  accuracy_dense: float
  accuracy_before_ft: float
  accuracy_after_ft: float
  drop_points: float
  finetune_steps: int
  inference_images_per_s: float
  latency_ms: float
  inference_speedup: float
  latency_speedup: float


class CompressRow(_CompressRowRequired, total=False):
  """One compressed variant (``compress.json`` ``results``)."""

  conv_mac_ratio: float
  loss_before_ft: float
  loss_after_ft: float
  finetune_losses: list[float]
  finetune_s: float
  compress_s: float
  report: dict[str, Any]
  report_markdown: str
  bench_stats: dict[str, TimingStats]
  bench_rounds: dict[str, list[float]]
  measured_speedup_vs_dense: float
  stages: list[dict[str, Any]]
  accuracy_after_ft_seeds: list[float]
  # Search variants (efficonv.search) only:
  searched_schemes: list[str]
  predicted_speedup: float
  search_measured_speedup: float
  predicted_mac_ratio: float
  search_target_met: bool
  search_s: float
  search: dict[str, Any]
  search_reference: dict[str, Any]
  search_markdown: str
  uniform_at_same_speed: list[dict[str, Any]]


class CompressPayload(TypedDict):
  """``compress.json``."""

  config: dict[str, Any]
  compress: dict[str, Any]
  environment: MachineInfo
  bench_batch_size: int
  dense: CompressDense
  results: list[CompressRow]


# --- Benchmarks -----------------------------------------------------------------------------------------------


class _LayerRecordRequired(TimingStats):
  variant: str
  scheme: str
  implementation: str
  depthwise: str | None
  shape: Shape
  shape_label: str
  # `pass` is a keyword: the functional TypedDict syntax would be needed to declare it; it is checked by
  # REQUIRED_EXTRA below instead.
  macs: int
  dense_macs: int
  mac_ratio: float
  dense_median_ms: float


class LayerRecord(_LayerRecordRequired, total=False):
  """One timed function of the layer benchmark (and of the auto sweep), plus its ``pass`` field.

  ``scheme`` is a name of :data:`experiments.bench.cases.SCHEMES` or ``"dense"`` (the sweep appends the
  rank, ``"cp rank 64"``); ``pass`` is ``"forward"`` or ``"forward_backward"``.
  """

  executed_macs: int
  compiler_options: dict[str, str]
  note: str
  auto_choice: str | None
  gflops: float
  dense_method: str
  speedup: float
  speedup_over_mac_ratio: float
  steps: dict[str, int]
  n_steps: int
  estimated_ms: float


class PeerRecord(TimingStats):
  """One timed function of a peer (:func:`experiments.bench.peers.base.record`), plus its ``pass`` field."""

  variant: str
  peer: str
  scheme: str
  implementation: str
  layout: str
  shape_label: str
  speedup_vs_torch_dense: float | None


class LayersPayload(TypedDict):
  """``bench_layers*/results.json``."""

  machine: MachineInfo
  config: dict[str, Any]
  records: list[LayerRecord]
  skipped: list[str]
  peers: dict[str, Any]
  peer_ratios: list[dict[str, Any]]


class _NetworkRecordRequired(TypedDict):
  variant: str
  scheme: str
  compiler_options: dict[str, str]
  measurement: str
  batch_size: int
  label: str
  params: int
  macs: int
  ms: float
  ms_per_image: float
  images_per_s: float
  dense_variant: str
  dense_ms: float
  speedup: float
  mac_ratio: float
  speedup_over_mac_ratio: float
  reference: str
  reference_speedup: float | None


class NetworkRecord(_NetworkRecordRequired, total=False):
  """One network build × measurement of the network benchmark.

  ``ms`` is the median call (with the other :class:`TimingStats` fields); files written before the timing
  became one statistic hold ``rounds_ms`` (each round's ms per call) and the fastest round as ``ms``.
  """

  median_ms: float
  q1_ms: float
  q3_ms: float
  min_ms: float
  repeats: int
  iqr_ms: float
  rounds_ms: list[float]


class NetworkPayload(TypedDict):
  """``bench_network*/results.json``."""

  command: str
  machine: MachineInfo
  versions: dict[str, str]
  config: dict[str, Any]
  dense_fastest: dict[str, str]
  skipped: list[str]
  records: list[NetworkRecord]
  wall_s: float


class AutoSweepPayload(TypedDict):
  """``auto_sweep/results.json``: layer records of both forced paths, and the decisions."""

  machine: MachineInfo
  records: list[LayerRecord]
  decisions: list[dict[str, Any]]


class QuickTimingPayload(TypedDict):
  """``quick_timing/results*.json``."""

  machine: MachineInfo
  config: dict[str, Any]
  plans: dict[str, Any]
  dense_best: str
  dense_best_median_ms: float
  records: list[dict[str, Any]]
  targets: dict[str, Any]


class DecomposePayload(TypedDict):
  """``bench_decompose*.json``: per kernel, the records of every decomposition (error and timing)."""

  benchmark: str
  shape: list[int]
  settings: dict[str, Any]
  machine: MachineInfo
  results: list[dict[str, Any]]


# --- Loading --------------------------------------------------------------------------------------------------

Payload = (
  ComparePayload
  | CompressPayload
  | LayersPayload
  | NetworkPayload
  | AutoSweepPayload
  | QuickTimingPayload
  | DecomposePayload
)


class CpQualityPayload(TypedDict):
  """``cp_quality/cp_quality.json`` (:mod:`experiments.bench.cp_quality`): CP errors and speed against TensorLy."""

  benchmark: str
  settings: dict[str, Any]
  machine: MachineInfo
  quality: list[dict[str, Any]]
  speed: dict[str, Any] | None


class DenseConvPayload(TypedDict):
  """``bench_dense_conv/*.json`` (:mod:`experiments.bench.dense_conv`): every dense formulation per shape."""

  machine: dict[str, Any]
  cases: list[dict[str, Any]]


class AssembledTimingPayload(TypedDict):
  """``<compress workdir>/assembled_timing.json`` (:mod:`experiments.bench.assembled_timing`).

  Per variant, the time ratio to dense of the fitted model and of the same structure with random
  factors, one entry per round, and their summaries.
  """

  machine: dict[str, Any]
  config: dict[str, Any]
  variants: dict[str, dict[str, Any]]


_SCHEMAS: dict[str, tuple[type, dict[str, type]]] = {
  "compare": (ComparePayload, {"results": CompareRow}),
  "compress": (CompressPayload, {"results": CompressRow}),
  "bench_layers": (LayersPayload, {"records": LayerRecord}),
  "bench_network": (NetworkPayload, {"records": NetworkRecord}),
  "auto_sweep": (AutoSweepPayload, {"records": LayerRecord}),
  "quick_timing": (QuickTimingPayload, {}),
  "decompose": (DecomposePayload, {}),
  "dense_conv": (DenseConvPayload, {}),
  "cp_quality": (CpQualityPayload, {}),
  "assembled_timing": (AssembledTimingPayload, {}),
}
KINDS: tuple[str, ...] = tuple(_SCHEMAS)
"""The kinds of results file :func:`load` reads."""

# Required fields a TypedDict cannot declare (`pass` is a Python keyword).
_REQUIRED_EXTRA: dict[type, tuple[str, ...]] = {LayerRecord: ("pass",), PeerRecord: ("pass",)}
# The fields holding scheme names, per record type (a build suffix "/no_ynn" is kept).
_SCHEME_FIELDS: dict[type, tuple[str, ...]] = {
  CompareRow: ("scheme", "reference"),
  CompressRow: ("scheme",),
  LayerRecord: ("scheme",),
  NetworkRecord: ("scheme", "variant", "dense_variant", "reference"),
}


def missing_fields(record: Mapping[str, Any], schema: type) -> list[str]:
  """The required fields of the TypedDict ``schema`` that ``record`` lacks."""
  required = [*getattr(schema, "__required_keys__", ()), *_REQUIRED_EXTRA.get(schema, ())]
  return sorted(k for k in required if k not in record)


def _check(record: Any, schema: type, where: str) -> None:
  if not isinstance(record, dict):
    raise ValueError(f"{where} must be a JSON object ({schema.__name__}), got {type(record).__name__}")
  missing = missing_fields(record, schema)
  if missing:
    raise ValueError(f"{where} must hold the fields of {schema.__name__}, it lacks {missing}")


def _rename_config(config: dict[str, Any]) -> None:
  model = config.get("model")
  if isinstance(model, dict) and isinstance(model.get("scheme"), str):
    model["scheme"] = scheme_name(model["scheme"])
  if isinstance(config.get("schemes"), list):
    config["schemes"] = [scheme_name(s) for s in config["schemes"]]
  if isinstance(config.get("baseline"), str):
    config["baseline"] = scheme_name(config["baseline"])


def normalize(payload: dict[str, Any], kind: str) -> dict[str, Any]:
  """Applies :data:`LEGACY_SCHEME_NAMES` to every scheme name of a payload of ``kind`` (in place).

  Returns:
    ``payload``.
  """
  _, lists = _SCHEMAS[kind]
  for key, schema in lists.items():
    for record in payload[key]:
      for name in _SCHEME_FIELDS.get(schema, ()):
        if isinstance(record.get(name), str):
          record[name] = scheme_name(record[name])
  if isinstance(payload.get("config"), dict):
    _rename_config(payload["config"])
  if kind == "bench_network" and isinstance(payload.get("dense_fastest"), dict):
    payload["dense_fastest"] = {k: scheme_name(v) for k, v in payload["dense_fastest"].items()}
  return payload


def load(path: str | os.PathLike[str], kind: str) -> Payload:
  """Reads a results file of ``kind``, checks its schema and maps legacy scheme names.

  Args:
    path: the JSON file.
    kind: one of :data:`KINDS`.

  Returns:
    The payload, typed by its schema.

  Raises:
    ValueError: naming ``kind`` when unknown, or the file when it is not JSON or lacks a required field.
  """
  if kind not in _SCHEMAS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  path = Path(path)
  try:
    payload = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"results file {str(path)!r} must be JSON: {e}") from None
  return validate(payload, kind, str(path))


def validate(payload: Any, kind: str, where: str = "payload") -> Payload:
  """Checks ``payload`` against the schema of ``kind`` and maps legacy scheme names (see :func:`load`).

  Raises:
    ValueError: naming ``where`` and the missing fields.
  """
  schema, lists = _SCHEMAS[kind]
  _check(payload, schema, f"{kind} file {where!r}")
  for key, record_schema in lists.items():
    if not isinstance(payload[key], list):
      raise ValueError(f"{kind} file {where!r} must hold a list under {key!r}")
    for i, record in enumerate(payload[key]):
      _check(record, record_schema, f"{kind} file {where!r} {key}[{i}]")
  if kind == "compress":
    _check(payload["dense"], CompressDense, f"compress file {where!r} dense")
  if kind == "bench_layers":
    for i, record in enumerate(payload["peers"].get("records", [])):
      _check(record, PeerRecord, f"bench_layers file {where!r} peers.records[{i}]")
  return cast(Payload, normalize(payload, kind))


def write(path: str | os.PathLike[str], payload: Payload | Mapping[str, Any], indent: int = 2) -> None:
  """Writes a payload as JSON (arrays with ``tolist`` become lists), ending in a newline."""
  Path(path).write_text(json.dumps(payload, indent=indent, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)

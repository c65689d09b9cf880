"""The comparison's outputs: ``compare.json``, ``compare.md`` and two plots.

* ``compare.json``: config, environment, and one record per scheme (costs, accuracy, timings, the timing
  statistics of every measurement, the metrics history).
* ``compare.md``: the table, with each scheme's ratios against its reference (``dense``, or ``dense5`` for
  ``stacked``).
* ``pareto.png``: test accuracy against inference time per image, and against batch-1 latency, with the
  Pareto front (the schemes no other scheme beats on both axes).
* ``curves.png``: training loss against step and test accuracy against epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from experiments.common import results
from experiments.common.results import ComparePayload, CompareRow

Row = CompareRow


def add_ratios(rows: list[Row]) -> list[Row]:
  """Adds each row's ratios against its ``reference`` row (same list).

  Adds ``mac_reduction`` and ``param_reduction`` (reference / scheme: above 1 is cheaper),
  ``inference_speedup``, ``latency_speedup`` and ``train_speedup`` (above 1 is faster) and
  ``accuracy_delta`` (scheme − reference, in points of percent).

  Returns:
    ``rows``, updated in place.
  """
  by_scheme = {r["scheme"]: r for r in rows}
  for row in rows:
    ref = by_scheme.get(row["reference"])
    if ref is None:
      continue
    row["mac_reduction"] = ref["macs"] / row["macs"]
    row["param_reduction"] = ref["params"] / row["params"]
    row["inference_speedup"] = row["inference_images_per_s"] / ref["inference_images_per_s"]
    row["latency_speedup"] = ref["latency_ms"] / row["latency_ms"]
    row["train_speedup"] = row["train_images_per_s"] / ref["train_images_per_s"]
    row["accuracy_delta"] = 100.0 * (row["test_accuracy"] - ref["test_accuracy"])
  return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point dominates (lower or equal cost and higher or equal value, one strictly).

  Args:
    points: ``(cost, value)`` pairs, e.g. ``(ms per image, accuracy)``.

  Returns:
    The indices of the front, by increasing cost.
  """
  front = []
  for i, (c, v) in enumerate(points):
    dominated = any((c2 <= c and v2 >= v) and (c2 < c or v2 > v) for c2, v2 in points)
    if not dominated:
      front.append(i)
  return sorted(front, key=lambda i: points[i][0])


def _fmt_ratio(value: float | None) -> str:
  return "—" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def markdown_table(rows: Sequence[Row], batch_size: int, latency_batch_size: int) -> str:
  """The results table in GitHub Markdown."""
  header = (
    "| scheme | vs | params | MACs/image | MAC cut | test acc | Δ acc (pt) "
    f"| infer img/s (b={batch_size}) | infer speedup | latency ms (b={latency_batch_size}) "
    f"| latency speedup | train img/s (b={batch_size}) | train speedup |"
  )
  lines = [header, "|" + "---|" * (header.count("|") - 1)]
  for r in rows:
    delta = r.get("accuracy_delta")
    lines.append(
      f"| {r['scheme']} | {r['reference']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {_fmt_ratio(r.get('mac_reduction'))} "
      f"| {100 * r['test_accuracy']:.2f}% | {'—' if delta is None else f'{delta:+.2f}'} "
      f"| {r['inference_images_per_s']:,.0f} | {_fmt_ratio(r.get('inference_speedup'))} "
      f"| {r['latency_ms']:.2f} | {_fmt_ratio(r.get('latency_speedup'))} "
      f"| {r['train_images_per_s']:,.0f} | {_fmt_ratio(r.get('train_speedup'))} |"
    )
  return "\n".join(lines)


def write_markdown(path: Path, payload: ComparePayload, command: str) -> None:
  """Writes ``compare.md``: what was run, where, the table and how to read it."""
  cfg, env, rows = payload["config"], payload["environment"], payload["results"]
  train, data, bench = cfg["train"], cfg["data"], cfg["bench"]
  subset = data["train_examples"] if data["train_examples"] is not None else "all"
  text = f"""# {cfg["name"]} ({cfg["preset"]})

Command: `{command}`

{env["date"]} · JAX {env["jax"]} on {env["backend"]} ({env["device_kind"]}, {len(env["devices"])} device(s);
{env["cpu_model"]}, {env["usable_cpus"]} usable cores, load average {env["load_average"]} at the end) ·
{cfg["model"]["arch"]} {cfg["model"]["stage_features"]} ·
{data["name"]} (train examples: {subset}) · {train["epochs"]} epoch(s), batch {train["batch_size"]},
{cfg["optim"]["name"]} lr {cfg["optim"]["learning_rate"]}

Expected: {cfg["expected"]}

{markdown_table(rows, payload["bench_batch_size"], bench["latency_batch_size"])}

How to read it:

- *vs*: the reference of the ratios — `dense` (the 3×3 network), or `dense5` for `stacked` (two 3×3 in
  place of each 5×5). *MAC cut*: reference MACs / scheme MACs. Speedups: scheme throughput / reference
  throughput (latency: reference / scheme); above 1× is faster.
- MACs per image from `efficonv.cost.macs` (traced forward pass, the factorized layers as they run with
  `implementation="{cfg["model"]["implementation"]}"`); params include BatchNorm and biases.
- Timings: jitted, one device, after compilation and {bench["warmup"]} warm-up call(s); the median of at least
  {bench["repeats"]} calls and {bench["min_seconds"]} s per function, all models interleaved (other processes
  share this machine; `experiments.common.timing`).
  Training throughput times a full step (forward, backward, optimizer update).
- Test accuracy after the last epoch, one seed ({train["seed"]}); differences below a few tenths of a point
  are within seed noise.

![accuracy vs inference time](pareto.png)

![training curves](curves.png)
"""
  path.write_text(text)


def plot_pareto(path: Path, rows: Sequence[Row]) -> None:
  """Accuracy against ms per image (batched) and against batch-1 latency, Pareto fronts drawn."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  for ax, key, label in (
    (axes[0], "inference_ms_per_image", "inference time per image (ms, batched)"),
    (axes[1], "latency_ms", "latency (ms, one call)"),
  ):
    points = [(r[key], 100 * r["test_accuracy"]) for r in rows]
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    for r, (x, y) in zip(rows, points):
      ax.annotate(r["scheme"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(points)
    ax.plot(
      [points[i][0] for i in front],
      [points[i][1] for i in front],
      color="tab:red",
      lw=1,
      marker="o",
      markersize=11,
      markerfacecolor="none",  # rings, so a front of one point shows too
      label="Pareto front",
    )
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
  fig.suptitle("Accuracy vs inference time (up and left is better)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(path: Path, rows: Sequence[Row]) -> None:
  """Training loss against step, and test accuracy against epoch (a bar per scheme after a single epoch)."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 5))
  colors = plt.get_cmap("tab20").colors
  tests = {r["scheme"]: [h for h in r["history"] if h["split"] == "test"] for r in rows}
  one_epoch = max((len(t) for t in tests.values()), default=0) <= 1
  for i, r in enumerate(rows):
    color = colors[(2 * i) % 20 + (2 * i) // 20]  # the dark shades first, then the light ones
    train = [h for h in r["history"] if h["split"] == "train"]
    ax_loss.plot([h["step"] for h in train], [h["loss"] for h in train], label=r["scheme"], lw=1, color=color)
    test = tests[r["scheme"]]
    if one_epoch:
      ax_acc.barh(i, 100 * r["test_accuracy"], color=color)
    else:
      ax_acc.plot([h["epoch"] for h in test], [100 * h["accuracy"] for h in test], marker="o", lw=1, color=color)
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("training loss")
  ax_loss.set_yscale("log")
  ax_loss.legend(fontsize=8, ncol=2)
  if one_epoch:
    accuracies = [100 * r["test_accuracy"] for r in rows]
    ax_acc.set_yticks(range(len(rows)), [r["scheme"] for r in rows])
    ax_acc.invert_yaxis()
    ax_acc.set_xlim(max(0.0, min(accuracies) - 5), min(100.0, max(accuracies) + 2))
    ax_acc.set_xlabel("test accuracy (%)")
  else:
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(workdir: str | os.PathLike[str], payload: ComparePayload, command: str) -> dict[str, Path]:
  """Writes all outputs into ``workdir``.

  Args:
    workdir: the comparison's directory.
    payload: the :class:`~experiments.common.results.ComparePayload`.
    command: the command line, for the report header.

  Returns:
    Output name → path.
  """
  workdir = Path(workdir)
  paths = {
    "json": workdir / "compare.json",
    "markdown": workdir / "compare.md",
    "pareto": workdir / "pareto.png",
    "curves": workdir / "curves.png",
  }
  results.write(paths["json"], payload)
  write_markdown(paths["markdown"], payload, command)
  plot_pareto(paths["pareto"], payload["results"])
  plot_curves(paths["curves"], payload["results"])
  return paths

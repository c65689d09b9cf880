"""Markdown tables, the auto-versus-best and efficonv-versus-peers checks, and the plot of :mod:`experiments.bench.layers`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUTO_TOLERANCE = 1.10  # auto must be within 10% of the best forced variant


def auto_vs_best(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """For every shape, pass and switchable scheme: ``auto``'s choice against the measured best.

  ``best`` is the fastest *forced* variant (``factorized`` with each depthwise
  path, ``reconstructed``). Two ratios are given: ``choice_over_best`` uses
  the forced variant ``auto`` resolves to (the quality of the decision, free
  of timing noise: auto runs the identical computation), and
  ``measured_over_best`` times the ``auto`` layer itself.

  Returns:
    One dict per (shape, pass, scheme) with an ``auto`` record.
  """
  out = []
  for auto in (r for r in records if r["implementation"] == "auto"):
    forced = [
      r
      for r in records
      if r["scheme"] == auto["scheme"]
      and r["shape_label"] == auto["shape_label"]
      and r["pass"] == auto["pass"]
      and r["implementation"] in ("factorized", "reconstructed")
    ]
    if not forced:
      continue
    best = min(forced, key=lambda r: r["median_ms"])
    label = {"/".join(p for p in (r["implementation"], r["depthwise"]) if p): r for r in forced}
    choice = label.get(auto["auto_choice"])
    choice_ms = choice["median_ms"] if choice is not None else auto["median_ms"]
    out.append(
      {
        "shape_label": auto["shape_label"],
        "pass": auto["pass"],
        "scheme": auto["scheme"],
        "auto_choice": auto["auto_choice"],
        "best": "/".join(p for p in (best["implementation"], best["depthwise"]) if p),
        "best_ms": best["median_ms"],
        "choice_over_best": choice_ms / best["median_ms"],
        "measured_over_best": auto["median_ms"] / best["median_ms"],
      }
    )
  return out


PEER_TARGETS_DOC = (
  "targets: efficonv CP >= 2x tltorch CP factorized; every efficonv scheme >= 1x its PyTorch channels_last sequence"
)


def peer_target(peer: dict[str, Any]) -> float | None:
  """The speedup efficonv should reach over ``peer`` (``None``: no target, shown for information).

  ``tltorch`` CP ``factorized``: 2; a ``torch_channels_last`` factorized
  sequence: 1; anything else (dense convs, NCHW, other implementations, Keras): none.
  """
  if peer["peer"] == "tltorch" and peer["scheme"] == "cp" and peer["implementation"] == "factorized":
    return 2.0
  if peer["peer"] == "torch_channels_last" and peer["scheme"] != "dense":
    return 1.0
  return None


def _default_records(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
  """``(shape, pass, scheme) ->`` the record a user gets by default.

  That is the ``auto`` layer, or a scheme's only variant (``bottleneck``,
  ``stacked``), or for ``dense`` the fastest dense implementation.
  """
  groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for r in records:
    groups.setdefault((r["shape_label"], r["pass"], r["scheme"]), []).append(r)
  out = {}
  for key, rows in groups.items():
    if key[2] == "dense":
      out[key] = min(rows, key=lambda r: r["median_ms"])
      continue
    auto = [r for r in rows if r["implementation"] == "auto"]
    if auto:
      out[key] = auto[0]
    elif len(rows) == 1:
      out[key] = rows[0]
  return out


def peer_ratios(records: Sequence[dict[str, Any]], peer_records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """efficonv's default layer against every peer of the same scheme, shape and pass.

  Args:
    records: :mod:`experiments.bench.layers` records (``scheme``,
      ``implementation``, ``shape_label``, ``pass``, ``median_ms``).
    peer_records: :func:`experiments.bench.peers.run` records (``peer``, ``scheme``, ...).

  Returns:
    One dict per matched peer record: ``shape_label``, ``pass``, ``scheme``,
    ``efficonv_variant``, ``efficonv_ms``, ``peer``, ``peer_variant``,
    ``peer_ms``, ``ratio`` (peer median / efficonv median: > 1 when efficonv
    is faster), ``target`` (:func:`peer_target`) and ``meets_target``
    (``None`` without a target).
  """
  default = _default_records(records)
  out = []
  for p in peer_records:
    e = default.get((p["shape_label"], p["pass"], p["scheme"]))
    if e is None:
      continue
    ratio = p["median_ms"] / e["median_ms"]
    target = peer_target(p)
    out.append(
      {
        "shape_label": p["shape_label"],
        "pass": p["pass"],
        "scheme": p["scheme"],
        "efficonv_variant": e["variant"],
        "efficonv_ms": e["median_ms"],
        "peer": p["peer"],
        "peer_variant": p["variant"],
        "peer_ms": p["median_ms"],
        "ratio": ratio,
        "target": target,
        "meets_target": None if target is None else ratio >= target,
      }
    )
  return out


def _fmt_macs(m: float) -> str:
  return f"{m / 1e6:.1f}M"


def _machine_lines(machine: dict[str, Any]) -> list[str]:
  keys = (
    "command",
    "platform",
    "cpu_model",
    "cpu_count",
    "usable_cpus",
    "jax",
    "jaxlib",
    "backend",
    "xla_flags",
    "dense_compiler_options",
    "load_average_before",
    "load_average_after",
    "wall_seconds",
  )
  return [f"- {k}: `{machine.get(k)}`" for k in keys if k in machine]


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def markdown(result: dict[str, Any]) -> str:
  """The full Markdown report: machine, dense baselines, every variant per pass, auto vs best, peers."""
  records = result["records"]
  lines = ["# Layer benchmark", "", "## Machine", "", *_machine_lines(result["machine"]), ""]
  lines += [
    "Times are medians of interleaved calls of jitted, ahead-of-time compiled functions after warm-up "
    "(IQR = interquartile range). Speedup = fastest dense median (same shape, pass and run) / median; "
    "MAC ratio = dense MACs / the layer's factorized MACs (`macs()` / `cost_macs`). GFLOP/s counts the "
    "MACs actually executed (the dense conv's for `reconstructed`), ×3 for forward+backward.",
    "",
  ]
  for pass_name in ("forward", "forward_backward"):
    rows = [r for r in records if r["pass"] == pass_name]
    if not rows:
      continue
    lines += [f"## {pass_name}", ""]
    table = []
    for r in rows:
      table.append(
        [
          r["shape_label"],
          r["variant"],
          f"{r['median_ms']:.3f}",
          f"{r['iqr_ms']:.3f}",
          _fmt_macs(r["macs"]),
          f"{r['gflops']:.1f}",
          f"{r['mac_ratio']:.2f}",
          f"{r['speedup']:.2f}",
          f"{r['speedup_over_mac_ratio']:.2f}",
          r["dense_method"],
        ]
      )
    lines += _table(
      table,
      [
        "shape",
        "variant",
        "median ms",
        "IQR ms",
        "MACs",
        "GFLOP/s",
        "MAC ratio",
        "speedup",
        "speedup/MAC ratio",
        "dense baseline",
      ],
    )
    lines.append("")
  checks = auto_vs_best(records)
  if checks:
    lines += [
      "## auto versus the best forced implementation",
      "",
      f"`choice/best`: time of the variant `auto` runs / best forced variant (target <= {AUTO_TOLERANCE:.2f}); "
      "`measured/best`: the `auto` layer's own median / best.",
      "",
    ]
    table = [
      [
        c["shape_label"],
        c["pass"],
        c["scheme"],
        str(c["auto_choice"]),
        c["best"],
        f"{c['choice_over_best']:.2f}",
        f"{c['measured_over_best']:.2f}",
        "yes" if c["choice_over_best"] <= AUTO_TOLERANCE else "**no**",
      ]
      for c in checks
    ]
    lines += _table(
      table, ["shape", "pass", "scheme", "auto chose", "best", "choice/best", "measured/best", "within 10%"]
    )
    lines.append("")
  if result.get("skipped"):
    lines += ["## Not timed", "", *[f"- {line}" for line in result["skipped"]], ""]
  peers = result.get("peers", {})
  lines += ["## Peers (PyTorch, TensorLy-Torch, Keras)", ""]
  lines += [f"- {n}" for n in peers.get("notes", [])]
  if peers.get("records"):
    table = [
      [
        p["shape_label"],
        p["pass"],
        p["variant"],
        p.get("layout", ""),
        f"{p['median_ms']:.3f}",
        f"{p['iqr_ms']:.3f}",
        "-" if p.get("speedup_vs_torch_dense") is None else f"{p['speedup_vs_torch_dense']:.2f}",
      ]
      for p in peers["records"]
    ]
    lines += [
      "",
      *_table(
        table, ["shape", "pass", "peer", "layout", "median ms", "IQR ms", "speedup vs torch dense (same layout)"]
      ),
    ]
  lines.append("")
  ratios = result.get("peer_ratios")
  if ratios is None:
    ratios = peer_ratios(records, peers.get("records", []))
  if ratios:
    lines += [
      "## efficonv versus peers",
      "",
      "ratio = peer median / efficonv median (> 1: efficonv faster); efficonv is the default layer (`auto`, the "
      f"only variant, or the fastest dense implementation). {PEER_TARGETS_DOC}.",
      "",
    ]
    table = [
      [
        c["shape_label"],
        c["pass"],
        c["scheme"],
        c["efficonv_variant"],
        f"{c['efficonv_ms']:.3f}",
        c["peer_variant"],
        f"{c['peer_ms']:.3f}",
        f"{c['ratio']:.2f}",
        "-" if c["target"] is None else f"{c['target']:.0f}x",
        "-" if c["meets_target"] is None else ("yes" if c["meets_target"] else "**no**"),
      ]
      for c in ratios
    ]
    lines += _table(table, ["shape", "pass", "scheme", "efficonv", "ms", "peer", "peer ms", "ratio", "target", "met"])
    lines.append("")
  return "\n".join(lines)


def summary_text(result: dict[str, Any]) -> str:
  """A short printed summary: auto's speedup per scheme and shape, and the auto-vs-best check."""
  lines = []
  for pass_name in ("forward", "forward_backward"):
    lines.append(f"{pass_name}: speedup (speedup/MAC ratio) of the default layer (auto, or the only variant)")
    rows = [
      r
      for r in result["records"]
      if r["pass"] == pass_name and (r["implementation"] == "auto" or r["scheme"] in ("bottleneck", "stacked"))
    ]
    for shape in dict.fromkeys(r["shape_label"] for r in rows):
      cells = [
        f"{r['scheme']} {r['speedup']:.2f}x ({r['speedup_over_mac_ratio']:.2f})"
        for r in rows
        if r["shape_label"] == shape
      ]
      dense = next(r for r in rows if r["shape_label"] == shape)
      lines.append(f"  {shape} [dense {dense['dense_method']} {dense['dense_median_ms']:.2f} ms]: " + ", ".join(cells))
  checks = auto_vs_best(result["records"])
  if checks:
    worst = max(checks, key=lambda c: c["choice_over_best"])
    misses = [c for c in checks if c["choice_over_best"] > AUTO_TOLERANCE]
    lines.append(
      f"auto vs best: worst choice/best {worst['choice_over_best']:.2f} ({worst['scheme']} {worst['shape_label']} "
      f"{worst['pass']}: chose {worst['auto_choice']}, best {worst['best']}); {len(misses)} of {len(checks)} beyond 10%"
    )
  ratios = result.get("peer_ratios")
  if ratios is None:
    ratios = peer_ratios(result["records"], result.get("peers", {}).get("records", []))
  targeted = [c for c in ratios if c["target"] is not None]
  if targeted:
    misses = [c for c in targeted if not c["meets_target"]]
    worst = min(targeted, key=lambda c: c["ratio"] / c["target"])
    lines.append(
      f"peers: {len(targeted) - len(misses)} of {len(targeted)} targets met; worst {worst['scheme']} vs "
      f"{worst['peer_variant']} {worst['shape_label']} {worst['pass']}: {worst['ratio']:.2f}x "
      f"(target {worst['target']:.0f}x)"
    )
  return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: str) -> str | None:
  """Speedup versus MAC ratio, log-log, with ``y = x``; one panel per pass. Returns the path, or ``None`` without matplotlib."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  points = [r for r in records if r["scheme"] != "dense"]
  passes = [p for p in ("forward", "forward_backward") if any(r["pass"] == p for r in points)]
  if not passes:
    return None
  fig, axes = plt.subplots(1, len(passes), figsize=(6.5 * len(passes), 5.5), squeeze=False)
  schemes = list(dict.fromkeys(r["scheme"] for r in points))
  colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(schemes)}
  markers = {"factorized": "o", "reconstructed": "x", "auto": "*"}
  for ax, pass_name in zip(axes[0], passes):
    rows = [r for r in points if r["pass"] == pass_name]
    for r in rows:
      ax.scatter(
        r["mac_ratio"],
        r["speedup"],
        color=colors[r["scheme"]],
        marker=markers.get(r["implementation"], "o"),
        s=60 if r["implementation"] == "auto" else 25,
        alpha=0.8,
      )
    lo = min(min(r["mac_ratio"] for r in rows), min(r["speedup"] for r in rows)) / 1.5
    hi = max(max(r["mac_ratio"] for r in rows), max(r["speedup"] for r in rows)) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (speedup = MAC ratio)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MAC ratio (dense MACs / factorized MACs)")
    ax.set_ylabel("speedup over the fastest dense conv")
    ax.set_title(pass_name)
    for s in schemes:
      ax.scatter([], [], color=colors[s], label=s)
    for impl, m in markers.items():
      ax.scatter([], [], color="black", marker=m, label=impl)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path

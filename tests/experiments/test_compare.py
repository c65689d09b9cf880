"""``python -m experiments.claims.compare`` end to end on the tiny synthetic preset."""

import json

from experiment_subprocess import run


def test_compare_writes_report_for_every_scheme(tmp_path):
  workdir = tmp_path / "run"
  result = run(["-m", "experiments.claims.compare", "--preset", "tiny", "--workdir", str(workdir)], timeout=300)
  payload = json.loads((workdir / "compare.json").read_text())
  rows = {r["scheme"]: r for r in payload["results"]}
  assert list(rows) == ["dense", "cp", "wide"]
  assert payload["config"]["preset"] == "tiny" and payload["environment"]["backend"] == "cpu"
  dense, cp = rows["dense"], rows["cp"]
  assert dense["inference_speedup"] == 1.0 and dense["mac_reduction"] == 1.0
  assert cp["macs"] < dense["macs"] and cp["params"] < dense["params"]
  assert cp["mac_reduction"] == dense["macs"] / cp["macs"]
  for row in rows.values():
    assert row["train_steps"] == 16 and 0.0 <= row["test_accuracy"] <= 1.0
    assert min(row["inference_images_per_s"], row["train_images_per_s"], 1 / row["latency_ms"]) > 0
    train_losses = [h["loss"] for h in row["history"] if h["split"] == "train"]
    assert train_losses[-1] < train_losses[0]
  markdown = (workdir / "compare.md").read_text()
  assert markdown in result.stdout
  assert all(f"| {scheme} | dense |" in markdown for scheme in rows)
  for name in ("pareto.png", "curves.png"):
    assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # Rerunning finds every run finished (resumes at the last checkpoint, trains nothing) and reports the same.
  run(
    ["-m", "experiments.claims.compare", "--preset", "tiny", "--workdir", str(workdir), "--schemes", "dense,cp"],
    timeout=300,
  )
  again = {r["scheme"]: r for r in json.loads((workdir / "compare.json").read_text())["results"]}
  assert list(again) == ["dense", "cp"]
  assert again["cp"]["test_accuracy"] == cp["test_accuracy"] and again["cp"]["history"] == cp["history"]

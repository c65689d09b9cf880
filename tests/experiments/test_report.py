"""The comparison report: ratios against references and the Pareto front."""

from experiments.claims.report import add_ratios, markdown_table, pareto_front


def _row(scheme, reference, macs, accuracy, images_per_s):
  return {
    "scheme": scheme,
    "reference": reference,
    "params": macs // 10,
    "macs": macs,
    "test_accuracy": accuracy,
    "inference_images_per_s": images_per_s,
    "latency_ms": 1000 / images_per_s,
    "train_images_per_s": images_per_s / 2,
  }


def test_ratios_use_each_rows_reference():
  rows = add_ratios(
    [
      _row("dense", "dense", 900, 0.90, 100.0),
      _row("cp", "dense", 300, 0.88, 150.0),
      _row("dense5", "dense", 2500, 0.91, 40.0),
      _row("stacked", "dense5", 1800, 0.92, 50.0),
    ]
  )
  cp, stacked = rows[1], rows[3]
  assert cp["mac_reduction"] == 3.0 and cp["inference_speedup"] == 1.5 and cp["latency_speedup"] == 1.5
  assert abs(cp["accuracy_delta"] - (-2.0)) < 1e-9
  assert abs(stacked["mac_reduction"] - 2500 / 1800) < 1e-12 and stacked["train_speedup"] == 1.25
  table = markdown_table(rows, 128, 1).splitlines()
  assert len(table) == 2 + 4 and table[0].count("|") == table[1].count("|") == table[3].count("|")
  assert "| cp | dense |" in table[3] and "3.00×" in table[3]


def test_pareto_front_keeps_only_undominated_points():
  points = [(1.0, 0.80), (2.0, 0.90), (1.5, 0.85), (3.0, 0.89), (0.5, 0.70), (2.0, 0.88)]
  assert pareto_front(points) == [4, 0, 2, 1]
  assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # ties dominate nobody

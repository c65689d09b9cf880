"""The runs a verdict reads: ``compare.json`` and ``compress.json`` files, found and loaded.

Loading goes through :func:`experiments.common.results.load`, which checks the schema and maps legacy
scheme names, so runs written before a rename are judged under today's names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.common import results

if TYPE_CHECKING:
  from experiments.claims.verdicts.rules import Rules


@dataclasses.dataclass(frozen=True)
class Run:
  """One results file.

  Attributes:
    path: where it was read from (as given or found).
    kind: ``"compare"`` or ``"compress"``.
    payload: its JSON (:class:`~experiments.common.results.ComparePayload` or
      :class:`~experiments.common.results.CompressPayload`, scheme names as today).
  """

  path: str
  kind: str
  payload: dict[str, Any]

  @property
  def environment(self) -> dict[str, Any]:
    """Where and how the run was made (:class:`~experiments.common.results.MachineInfo`)."""
    return self.payload.get("environment", {})

  @property
  def command(self) -> str:
    """The command that made the run, as recorded in it."""
    return self.environment.get("command") or "(not recorded)"

  @property
  def rows(self) -> dict[str, dict[str, Any]]:
    """Compare rows by scheme, compress rows by variant name."""
    key = "scheme" if self.kind == "compare" else "variant"
    return {r[key]: r for r in self.payload["results"]}

  def loaded(self) -> bool:
    """Whether the 1-minute load average at the end exceeded the usable cores (timings under contention)."""
    load, cores = self.environment.get("load_average"), self.environment.get("usable_cpus")
    return bool(load) and bool(cores) and load[0] > cores

  def timing_band(self, rules: Rules) -> float:
    """The timing noise band of this run: wider when the machine was loaded beyond its cores."""
    return rules.loaded_timing_band if self.loaded() else rules.timing_band

  def steps(self, schemes: Sequence[str] = ()) -> int:
    """Training steps: the fewest among ``schemes`` (compare; all rows if empty), the dense baseline's (compress)."""
    if self.kind == "compress":
      return int(self.payload["dense"]["train_steps"])
    rows = self.rows
    return min(int(rows[s]["train_steps"]) for s in (schemes or rows))


def find_files(paths: Sequence[str], filename: str, argument: str) -> list[Path]:
  """The results files named by ``paths``: files as given; for a directory its ``filename``, else all below it.

  Raises:
    ValueError: naming ``argument`` when a path does not exist or a directory holds no ``filename``.
  """
  found: list[Path] = []
  for given in paths:
    path = Path(given)
    if path.is_file():
      found.append(path)
    elif path.is_dir():
      files = [path / filename] if (path / filename).is_file() else sorted(path.rglob(filename))
      if not files:
        raise ValueError(f"{argument} must name {filename} files or directories holding one, {given!r} has none")
      found += files
    else:
      raise ValueError(f"{argument} must name existing {filename} files or directories, got {given!r}")
  unique: list[Path] = []
  for path in found:
    if path.resolve() not in {p.resolve() for p in unique}:
      unique.append(path)
  return unique


def load_run(path: Path, kind: str) -> Run:
  """Reads one ``compare.json`` (``kind="compare"``) or ``compress.json`` (``kind="compress"``).

  The file is read by :func:`experiments.common.results.load`: its schema is checked and legacy scheme names
  are mapped to today's.

  Raises:
    ValueError: naming ``--compare``/``--compress`` and the file when it is not such a payload.
  """
  try:
    payload = results.load(path, kind)
  except ValueError as e:
    raise ValueError(f"--{kind} file {str(path)!r} must be the payload of experiments.claims.{kind}: {e}") from None
  return Run(str(path), kind, dict(payload))

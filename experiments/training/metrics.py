"""Metrics as JSON lines, and a progress bar with throughput on stderr.

Each line of ``metrics.jsonl`` is one record ``{"split": "train" | "test", "step": ..., "epoch": ..., ...}``.
A resumed run first drops the records written after the checkpoint it resumes from (a killed run may have
logged steps it then lost), so the file of a resumed run equals that of an uninterrupted one except for the
timing fields in :data:`TIMING_FIELDS`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

TIMING_FIELDS = ("images_per_s", "elapsed_s")
"""Record fields that depend on the machine and the moment, not on the computation."""


class MetricsLog:
  """Appends records to a JSON-lines file and keeps them in memory.

  Args:
    path: the ``.jsonl`` file (created if missing).
    resume_step: keep only existing records with ``step <= resume_step``; ``None`` starts a new file.
    write: ``False`` reads the file (on resume) but never writes it, keeping records in memory only: the
      processes other than 0 of a multi-process run (their records are process 0's up to the timings).
  """

  def __init__(self, path: str | os.PathLike[str], *, resume_step: int | None, write: bool = True):
    self.path = Path(path)
    self.write_file = write
    self.records: list[dict[str, Any]] = []
    if resume_step is not None and self.path.exists():
      for line in self.path.read_text().splitlines():
        # A line cut off by the kill is not valid JSON; it is after the checkpoint anyway.
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record.get("step", 0) <= resume_step:
          self.records.append(record)
    if write:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with self.path.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in self.records)

  def write(self, record: dict[str, Any]) -> None:
    """Appends ``record`` (JSON-serializable values) to the file and to :attr:`records`."""
    self.records.append(record)
    if not self.write_file:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()


class Progress:
  """A per-epoch progress bar: tqdm when installed, else a plain line refreshed on stderr.

  Args:
    total: steps in the epoch.
    initial: steps already done (on resume).
    description: shown before the bar.
    enabled: ``False`` shows nothing.
    stream: where to write (default ``sys.stderr``).
    use_tqdm: ``None`` uses tqdm if it is installed; ``False`` always draws the plain line.
  """

  def __init__(
    self,
    total: int,
    *,
    initial: int = 0,
    description: str = "",
    enabled: bool = True,
    stream: TextIO | None = None,
    use_tqdm: bool | None = None,
  ):
    self.total, self.count, self.description, self.enabled = total, initial, description, enabled
    self.stream = stream or sys.stderr
    self._last_draw = 0.0
    self._postfix = ""
    self._bar = None
    if enabled and use_tqdm is not False:
      try:
        from tqdm.auto import tqdm
      except ImportError:
        pass
      else:
        self._bar = tqdm(total=total, initial=initial, desc=description, file=self.stream, dynamic_ncols=True)

  def update(self, steps: int = 1, **postfix: float) -> None:
    """Advances by ``steps``; ``postfix`` values (e.g. ``loss=0.3, images_per_s=1200``) are shown after it."""
    self.count += steps
    if postfix:
      self._postfix = "  ".join(f"{k} {_format(v)}" for k, v in postfix.items())
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(steps)
      if postfix:
        self._bar.set_postfix_str(self._postfix, refresh=False)
      return
    now = time.monotonic()
    if now - self._last_draw >= 1.0 or self.count >= self.total:
      self._last_draw = now
      self.stream.write(f"\r{self.description} {self.count}/{self.total}  {self._postfix}")
      self.stream.flush()

  def close(self) -> None:
    """Finishes the bar (a newline for the plain one)."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    else:
      self.stream.write(f"\r{self.description} {self.count}/{self.total}  {self._postfix}\n")
      self.stream.flush()


def _format(value: float) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)

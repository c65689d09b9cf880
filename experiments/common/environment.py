"""What a timing ran on: platform, cores, library versions, XLA flags, load; plus date and device for a run."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any

import jax
import jaxlib


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def load_average() -> list[float] | None:
  """The 1/5/15-minute load averages (``None`` where the OS has none).

  On a machine shared with other jobs a load above the core count means the
  timings were taken under contention; it is recorded next to them.
  """
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def machine_info(compiler_options: dict[str, Any] | None = None, command: str | None = None) -> dict[str, Any]:
  """A JSON-ready description of the machine and software a timing ran on.

  Args:
    compiler_options: per-executable XLA options used by the run, recorded as given.
    command: the command line that ran the timing (``python`` and ``sys.argv`` when ``None``).

  Returns:
    A dict with ``platform``, ``cpu_model``, ``cpu_count``, ``usable_cpus``,
    ``python``, ``jax``, ``jaxlib``, ``backend``, ``devices``, ``xla_flags``
    (the ``XLA_FLAGS`` environment variable), ``compiler_options``,
    ``load_average`` and ``command``.
  """
  return {
    "platform": platform.platform(),
    "cpu_model": _cpu_model(),
    "cpu_count": os.cpu_count(),
    "usable_cpus": _usable_cpus(),
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "compiler_options": compiler_options or {},
    "load_average": load_average(),
    "command": command if command is not None else " ".join([os.path.basename(sys.executable), *sys.argv]),
  }


def environment(command: str | None = None) -> dict[str, Any]:
  """Where a run's numbers were measured: :func:`machine_info` plus ``date`` (UTC) and ``device_kind``.

  Args:
    command: the command line of the run (see :func:`machine_info`).

  Returns:
    The JSON-ready :class:`experiments.common.results.MachineInfo` of the run.
  """
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "device_kind": jax.devices()[0].device_kind,
    **machine_info(command=command),
  }

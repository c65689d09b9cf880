"""How the decomposition fits are compiled: on XLA:CPU, with LLVM at ``-O1``.

A fit is a loop of many small ops (Gram matrices, ``R × R`` solves, normalizations) around a few GEMMs that
XLA:CPU runs through library calls. Much of such a program's compile time goes to LLVM's default ``-O2``
pipeline optimizing the small ops' loop fusions (the layout copies around each LAPACK call among them),
which does not make them measurably faster. The fits are compiled per kernel shape and rank, so a
whole-network decomposition or a rank search compiles many of them: at ``-O1`` they compile markedly
faster and run as fast (measurements: the README's "Decomposition" section).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

import jax

# XLA debug options of the CPU compile of a fit (passed per executable: no process-wide flag).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}

P = ParamSpec("P")
R = TypeVar("R")


def on_cpu(array: Any) -> bool:
  """Whether ``array`` is a concrete array that lives on CPU devices only (``False`` for a tracer)."""
  if isinstance(array, jax.core.Tracer) or not isinstance(array, jax.Array):
    return False
  return all(device.platform == "cpu" for device in array.devices())


class FitJit(Generic[P, R]):
  """``jax.jit`` of a fit, compiled with :data:`CPU_COMPILER_OPTIONS` when its first argument is on CPU.

  Inside a caller's trace (``jit``, ``vmap``, ``grad``) the fit is inlined into the caller's program and
  compiled with the caller's options; called on concrete arrays elsewhere it is the plain ``jax.jit``.
  """

  def __init__(self, fun: Callable[P, R], static_argnames: Sequence[str]) -> None:
    self._plain = jax.jit(fun, static_argnames=tuple(static_argnames))
    self._cpu = jax.jit(fun, static_argnames=tuple(static_argnames), compiler_options=CPU_COMPILER_OPTIONS)
    functools.update_wrapper(self, fun)

  def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
    compiled = self._cpu if args and on_cpu(args[0]) else self._plain
    return compiled(*args, **kwargs)


def fit_jit(*static_argnames: str) -> Callable[[Callable[P, R]], FitJit[P, R]]:
  """Decorator: :class:`FitJit` with ``static_argnames``."""
  return lambda fun: FitJit(fun, static_argnames)

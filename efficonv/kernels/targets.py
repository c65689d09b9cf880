"""What a traced conv's choices are made for: the platforms the program will run on, and its symbolic sizes.

efficonv chooses while tracing: a format's factorized or reconstructed path (``implementation="auto"`` or
``"autotune"``), the depthwise path, the dense formulation of :func:`efficonv.kernels.conv`. Each choice
depends on a platform and on concrete sizes. Under :func:`jax.jit` both are at hand; a program staged with
:func:`jax.export.export` may run on another platform (``platforms=("cuda",)`` from a CPU host) and have
symbolic sizes. This module holds the two answers, for every choice:

* **Platforms.** By default a choice is made for :func:`jax.default_backend`, and the result of every conv
  whose choice depends on the platform carries a check: lowering the program for a platform it was not
  planned for fails with a ``ValueError`` naming the platforms, never a silent CPU plan in a GPU artifact.
  Inside :func:`plan_for` (``platforms=("cpu", "cuda")``) each choice is made for each platform given;
  where they differ, the program holds one branch per platform (:func:`jax.lax.platform_dependent`),
  resolved when the program is compiled. A choice that is the same on every platform (a forced path)
  carries no check and exports anywhere. ``implementation="autotune"`` measures, so it plans only for a
  platform with a device here.
* **Symbolic sizes.** A choice needs concrete sizes. A symbolic batch is planned as :data:`SYMBOLIC_BATCH`
  images and a symbolic height or width as :data:`SYMBOLIC_SPATIAL` pixels (or the sizes given to
  :func:`plan_for`); the program itself keeps its symbolic shapes. Plans say so in their reason.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from efficonv.kernels import conv, targets
  >>> f = jax.jit(lambda x, w: conv(x, w))
  >>> x, w = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32), jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32)
  >>> with targets.plan_for(platforms=("cpu", "cuda")):
  ...   exported = jax.export.export(f, platforms=("cpu", "cuda"))(x, w)
  >>> exported.platforms
  ('cpu', 'cuda')
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import jax
import jax.extend.core as jex
from jax.interpreters import ad, batching, mlir

from efficonv.typing import Array

#: Batch size a choice is planned for when the batch is symbolic.
SYMBOLIC_BATCH = 8
#: Height and width a choice is planned for when they are symbolic.
SYMBOLIC_SPATIAL = 32

#: The backends efficonv plans for, each with the lowering platforms (``jax.export`` names) it covers.
BACKEND_PLATFORMS: dict[str, tuple[str, ...]] = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}
_BACKEND_OF = {"gpu": "gpu", **{p: b for b, ps in BACKEND_PLATFORMS.items() for p in ps}}


@dataclasses.dataclass(frozen=True)
class _Context:
  backends: tuple[str, ...] | None = None  # None: jax.default_backend()
  batch: int | None = None
  spatial: tuple[int, int] | None = None
  inside: bool = False  # tracing one branch of a per-platform choice (its result is checked once, outside)


_DEFAULT = _Context()
_context: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("efficonv_targets", default=None)


def _get() -> _Context:
  return _context.get() or _DEFAULT


def backend_of(platform: str) -> str:
  """The backend (``"cpu"``, ``"gpu"``, ``"tpu"``) whose plans serve ``platform`` (``"cuda"``, ``"rocm"``, ...).

  Raises:
    ValueError: naming ``platform`` and the known names.
  """
  if platform not in _BACKEND_OF:
    raise ValueError(f"platform must be one of {sorted(_BACKEND_OF)}, got {platform!r}")
  return _BACKEND_OF[platform]


@contextlib.contextmanager
def plan_for(
  platforms: str | Sequence[str] | None = None,
  *,
  batch: int | None = None,
  spatial: int | Sequence[int] | None = None,
) -> Iterator[None]:
  """Within this block, convs are planned for ``platforms`` and symbolic sizes as ``batch``/``spatial``.

  Use it around :func:`jax.export.export` (or any lowering for another platform than the default one).
  JAX reuses the trace of a function it traced before, whatever the plan then; so entering and leaving a
  block that changes the plan clears JAX's caches (:func:`jax.clear_caches`), and what runs after it is
  compiled again.

  Args:
    platforms: a platform or several (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``, or ``"gpu"`` for both
      GPU platforms), as given to ``jax.export.export(..., platforms=)``; ``None`` keeps the enclosing
      choice (by default, :func:`jax.default_backend`).
    batch: the batch size to plan for when the batch is symbolic (default :data:`SYMBOLIC_BATCH`).
    spatial: the height and width to plan for when they are symbolic, an int or ``(h, w)`` (default
      :data:`SYMBOLIC_SPATIAL`).

  Raises:
    ValueError: naming ``platforms``, ``batch`` or ``spatial`` when malformed.
  """
  outer = _get()
  backends = outer.backends
  if platforms is not None:
    names = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    if not names or not all(isinstance(p, str) and p in _BACKEND_OF for p in names):
      raise ValueError(f"platforms must be one or more of {sorted(_BACKEND_OF)}, got {platforms!r}")
    backends = tuple(dict.fromkeys(backend_of(p) for p in names))
  if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
    raise ValueError(f"batch must be a positive int, got {batch!r}")
  hw = outer.spatial
  if spatial is not None:
    pair = (spatial, spatial) if isinstance(spatial, int) else tuple(spatial)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
      raise ValueError(f"spatial must be a positive int or a pair (h, w) of them, got {spatial!r}")
    hw = (pair[0], pair[1])
  inner = _Context(backends, batch or outer.batch, hw, outer.inside)
  # JAX reuses a function's trace whatever this context was when it was made: start and end on fresh traces.
  changed = inner != outer
  if changed:
    jax.clear_caches()
  token = _context.set(inner)
  try:
    yield
  finally:
    _context.reset(token)
    if changed:
      jax.clear_caches()


def planned_backends() -> tuple[str, ...]:
  """The backends choices are made for here (:func:`plan_for`; by default the default backend's)."""
  backends = _get().backends
  if backends is not None:
    return backends
  default = jax.default_backend()
  return (_BACKEND_OF.get(default, default),)


def current_backend() -> str:
  """The one backend a choice is made for here.

  Raises:
    ValueError: when :func:`plan_for` names several platforms and this is not inside one of
      :func:`dispatch`'s branches (pass a backend explicitly, or let :func:`dispatch` choose per platform).
  """
  backends = planned_backends()
  if len(backends) != 1:
    raise ValueError(
      f"convs are planned for several backends {backends} (efficonv.planning.plan_for): this choice needs "
      "backend= or a single platform"
    )
  return backends[0]


def representative_shape(shape: Sequence[Any], name: str = "input_shape") -> tuple[tuple[int, ...], str]:
  """``shape`` (NHWC) with its symbolic sizes replaced by the sizes choices are planned for.

  Args:
    shape: ``(N, H, W, C)``; ``N``, ``H`` and ``W`` may be symbolic (:func:`jax.export.symbolic_shape`).
    name: what ``shape`` is, for errors.

  Returns:
    ``(concrete shape, note)``: the note says what stood in for what (``""`` when nothing was symbolic).

  Raises:
    ValueError: naming ``name`` when ``shape`` is not rank 4 or its channel count is symbolic.

  Example:
    >>> import jax
    >>> from efficonv.kernels.targets import representative_shape
    >>> representative_shape(jax.export.symbolic_shape("b, 16, 16, 8"))
    ((8, 16, 16, 8), 'planned for batch 8 (symbolic b)')
  """
  dims = tuple(shape)
  if len(dims) != 4:
    raise ValueError(f"{name} must be NHWC (rank 4), got {dims}")
  if jax.export.is_symbolic_dim(dims[3]):
    raise ValueError(f"{name} must have a concrete channel count (axis 3), got {dims}")
  ctx = _get()
  stand_in = (ctx.batch or SYMBOLIC_BATCH, *(ctx.spatial or (SYMBOLIC_SPATIAL, SYMBOLIC_SPATIAL)))
  out, notes = [], []
  for axis, (d, what) in enumerate(zip(dims[:3], ("batch", "height", "width"))):
    if jax.export.is_symbolic_dim(d):
      out.append(stand_in[axis])
      notes.append(f"{what} {stand_in[axis]} (symbolic {d})")
    else:
      out.append(int(d))
  note = "planned for " + ", ".join(notes) if notes else ""
  return (*out, int(dims[3])), note


def dispatch(
  operand: Array,
  decide: Callable[[str], Hashable],
  run: Callable[[Any, Array], Array],
  *,
  probe: bool = True,
) -> Array:
  """``run(decide(backend), operand)`` for the backend the program runs on.

  ``decide`` is called for every planned backend (:func:`planned_backends`); platforms whose choices are
  equal share one branch, and when they differ :func:`jax.lax.platform_dependent` keeps them all. The
  result is checked (:func:`check_platforms`) unless the choice is the same on every backend efficonv
  knows, which ``probe=True`` tests by calling ``decide`` for them too (so ``decide`` must then be cheap and
  need no device: not for autotune).

  Args:
    operand: the array the branches take (other arrays may be closed over).
    decide: the choice for a backend (hashable: choices are compared).
    run: computes the result of a choice.
    probe: whether ``decide`` may be called for backends not planned for.

  Returns:
    The result.
  """
  ctx = _get()
  backends = planned_backends()
  choices: dict[Hashable, list[str]] = {}
  for b in backends:
    choices.setdefault(decide(b), []).append(b)
  if len(choices) == 1:
    (choice,) = choices
    y = run(choice, operand)
  else:
    branches: dict[str, Callable[[Array], Array]] = {}
    for choice, group in choices.items():
      fn = functools.partial(_run_in, run, choice, tuple(group), ctx)
      branches.update({p: fn for b in group for p in BACKEND_PLATFORMS[b]})
    # The default branch is lowered only for a platform not planned for; the check below then fails it.
    y = jax.lax.platform_dependent(operand, default=next(iter(branches.values())), **branches)
  if ctx.inside:
    return y
  if probe and len({decide(b) for b in BACKEND_PLATFORMS} | set(choices)) == 1:
    return y
  return check_platforms(y, backends)


def _run_in(run: Callable[[Any, Array], Array], choice: Any, group: tuple[str, ...], ctx: _Context, x: Array) -> Array:
  with _inside(ctx, group):
    return run(choice, x)


@contextlib.contextmanager
def _inside(ctx: _Context, backends: tuple[str, ...]) -> Iterator[None]:
  token = _context.set(dataclasses.replace(ctx, backends=backends, inside=True))
  try:
    yield
  finally:
    _context.reset(token)


def check_platforms(y: Array, backends: Sequence[str] | None = None) -> Array:
  """``y``, marked as planned for ``backends``: lowering for another platform raises a ``ValueError``.

  An identity with no cost in the compiled program; inside one of :func:`dispatch`'s branches it is left
  out (the dispatch checks its result once).

  Args:
    y: a conv's result.
    backends: the backends it was planned for (default :func:`planned_backends`).

  Returns:
    ``y``.
  """
  if _get().inside:
    return y
  planned = tuple(backends) if backends is not None else planned_backends()
  return _planned_for_p.bind(y, backends=planned)


_planned_for_p = jex.Primitive("efficonv_planned_for")
_planned_for_p.def_impl(lambda y, *, backends: y)
_planned_for_p.def_abstract_eval(lambda y, *, backends: y)
# Linear: tangents and cotangents carry the check too, so a program of gradients alone is checked as well.
ad.deflinear2(_planned_for_p, lambda ct, y, *, backends: [_planned_for_p.bind(ct, backends=backends)])
batching.primitive_batchers[_planned_for_p] = lambda args, dims, *, backends: (
  _planned_for_p.bind(args[0], backends=backends),
  dims[0],
)


def _planned_for_lowering(ctx: Any, y: Any, *, backends: tuple[str, ...]) -> list[Any]:
  lowering = tuple(ctx.module_context.platforms)  # the platforms this program is lowered for
  unplanned = [p for p in lowering if _BACKEND_OF.get(p, p) not in backends]
  if unplanned:
    raise ValueError(
      f"efficonv planned this conv for {backends} but the program is lowered for {lowering}: its choices "
      f"(implementation='auto'/'autotune', depthwise or dense formulation) would be wrong on {unplanned}. "
      f"Trace it inside efficonv.planning.plan_for(platforms={lowering!r}), or force every implementation."
    )
  return [y]


mlir.register_lowering(_planned_for_p, _planned_for_lowering)

"""Replace the convolutions of a trained NNX model by factorized layers.

The seed's headline method (Lebedev et al. 2014; Kim et al. 2016): decompose
each trained kernel, swap the layer for the factorized sequence, then
fine-tune the whole network with an ordinary optax loop.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import efficonv
  >>> class Net(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
  ...     self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.conv2(nnx.relu(self.conv1(x)))
  >>> net = Net(nnx.Rngs(0))
  >>> small, report = efficonv.compress(net, efficonv.Policy(scheme="tucker2", rank=(8, 8)),
  ...                                   input_shape=(1, 28, 28, 1))
  >>> [(r.path, r.scheme, r.rank) for r in report.layers]
  [('conv1', 'skipped', None), ('conv2', 'tucker2', (8, 8))]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv import cost, schemes
from efficonv.convert import conv_kernel, conv_padding

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Policy:
  """Which convs to replace, by which scheme, at which rank.

  Attributes:
    scheme: a name of :mod:`efficonv.schemes` (``"cp"``, ``"tucker2"``, ``"tt"``, ``"spatial"``,
      ``"separable"``).
    rank: a rank of the scheme's kind (int; ``(R1, R2)`` for Tucker-2; TT
      ranks; the depth multiplier for separable) or a rule from
      :mod:`efficonv.rank` (``MacReduction(4)``, ``ParamFraction(0.25)``,
      ``Energy(0.9)``, ``VBMF()``, …) evaluated per layer.
    skip_first: leave the first conv of the forward pass alone (as Lebedev
      et al. and Szegedy et al. advise: factoring the input layer hurts most
      and saves least).
    include: ``None`` (every eligible conv), a sequence of layer paths
      (``"block1/conv"``; a single string is one path), or a predicate
      ``(path, conv) -> bool``. Eligible: 2-D, ``feature_group_count=1``,
      no input dilation, no mask (others are skipped, or rejected when
      ``include`` names them).
    implementation: ``implementation`` of the new layers.
    dense_implementation: ``None`` leaves the convs that stay dense as they are; a dense formulation
      (``"auto"`` or one of :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS`) turns each of them into an
      :class:`efficonv.nnx.Conv` with that ``implementation`` and the same state (:func:`replace_dense`).
    decompose_kwargs: passed to the :mod:`efficonv.decompose` function
      (e.g. ``{"n_iter": 200}``; TT ``in_modes``/``out_modes``).
  """

  scheme: str = "cp"
  rank: Any = None
  skip_first: bool = True
  include: Sequence[str] | Callable[[str, nnx.Conv], bool] | None = None
  implementation: str = "auto"
  dense_implementation: str | None = None
  decompose_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    schemes.get(self.scheme)  # raises, naming the scheme and the known names
    if self.rank is None:
      raise ValueError("rank must be given: a rank for the scheme or a rule from efficonv.rank")
    if self.dense_implementation is not None:
      _check_dense_implementation(self.dense_implementation, "policy.dense_implementation")
    if isinstance(self.include, str):  # one path, not a sequence of one-letter paths (nor a substring test)
      object.__setattr__(self, "include", (self.include,))


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """What :func:`compress` did to one conv.

  Attributes:
    path: the layer's path in the model (``"/"``-joined).
    input_shape: NHWC input shape seen in the traced forward pass.
    scheme: the scheme used (``"skipped"`` for convs left alone).
    rank: the rank used (``None`` when skipped).
    rank_reason: why that rank (the rule's explanation, or "given").
    params_before, params_after: parameters of the layer (bias included).
    macs_before, macs_after: MACs of the layer on ``input_shape`` (:mod:`efficonv.cost`).
    relative_error: ``||W - Ŵ||_F / ||W||_F`` of the kernel fit.
    degeneracy: the fit's degeneracy measure (largest term over ``||W||``).
    implementation: what the new layer runs on ``input_shape`` (``plan``).
  """

  path: str
  input_shape: tuple[int, ...]
  scheme: str
  rank: Any
  rank_reason: str
  params_before: int
  params_after: int
  macs_before: int
  macs_after: int
  relative_error: float
  degeneracy: float
  implementation: str


@dataclasses.dataclass(frozen=True)
class Report:
  """Per-layer report of :func:`compress`, with totals.

  The totals sum every conv listed; skipped convs count the same before and
  after, so the totals are those of all the model's convs.
  """

  layers: tuple[LayerReport, ...]

  @property
  def macs_before(self) -> int:
    return sum(r.macs_before for r in self.layers)

  @property
  def macs_after(self) -> int:
    return sum(r.macs_after for r in self.layers)

  @property
  def params_before(self) -> int:
    return sum(r.params_before for r in self.layers)

  @property
  def params_after(self) -> int:
    return sum(r.params_after for r in self.layers)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict."""
    return {
      "layers": [dataclasses.asdict(r) for r in self.layers],
      "totals": {
        "params_before": self.params_before,
        "params_after": self.params_after,
        "macs_before": self.macs_before,
        "macs_after": self.macs_after,
      },
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, default=str)

  def to_markdown(self) -> str:
    """A Markdown table, one row per conv."""
    rows = [
      "| layer | scheme | rank | why | params | MACs | MAC ratio | rel. error | degeneracy | runs |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in self.layers:
      ratio = r.macs_before / max(r.macs_after, 1)
      rows.append(
        f"| {r.path} | {r.scheme} | {r.rank} | {r.rank_reason} | {r.params_before:,} → {r.params_after:,} | "
        f"{r.macs_before:,} → {r.macs_after:,} | {ratio:.2f}× | {r.relative_error:.3g} | {r.degeneracy:.3g} | "
        f"{r.implementation} |"
      )
    return "\n".join(rows)


def conv_calls(
  model: nnx.Module, input_shape: Sequence[int], forward: Callable[[nnx.Module, jax.Array], Any] | None = None
) -> list[tuple[Path, tuple[int, ...]]]:
  """The ``nnx.Conv`` layers of ``model`` in forward order, with their input shapes.

  Traces ``forward(model, x)`` abstractly (``jax.eval_shape``: no FLOPs) and
  records each conv call.

  Returns:
    ``[(path, input_shape), …]`` in call order; a conv called twice appears twice.
  """
  from efficonv.nnx.conv import Conv as FastConv  # a subclass of nnx.Conv with its own __call__

  forward = forward or (lambda m, x: m(x))
  graphdef, state = nnx.split(model)
  calls: list[tuple[Path, tuple[int, ...]]] = []
  originals: dict[type, Any] = {cls: cls.__dict__["__call__"] for cls in (nnx.Conv, FastConv)}

  def traced(state: Any) -> Any:
    copy = nnx.merge(graphdef, state)
    paths = {id(node): tuple(path) for path, node in nnx.iter_graph(copy) if isinstance(node, nnx.Conv)}
    inside: set[int] = set()  # a FastConv that falls back to nnx.Conv.__call__ is one call, not two

    def recording(cls: type) -> Callable[..., jax.Array]:
      def call(self: nnx.Conv, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        if id(self) in inside:
          return originals[cls](self, inputs, *args, **kwargs)
        calls.append((paths[id(self)], tuple(int(v) for v in inputs.shape)))
        inside.add(id(self))
        try:
          return originals[cls](self, inputs, *args, **kwargs)
        finally:
          inside.discard(id(self))

      return call

    for cls in originals:
      cls.__call__ = recording(cls)  # type: ignore[method-assign]  # restored in the finally below
    try:
      return forward(copy, jnp.zeros(tuple(input_shape), jnp.float32))
    finally:
      for cls, original in originals.items():
        cls.__call__ = original  # type: ignore[method-assign]  # the class's own method again

  jax.eval_shape(traced, state)
  return calls


def compress(
  model: nnx.Module,
  policy: Policy,
  *,
  input_shape: Sequence[int],
  forward: Callable[[nnx.Module, jax.Array], Any] | None = None,
) -> tuple[nnx.Module, Report]:
  """Returns a copy of ``model`` with selected convs replaced by factorized layers.

  Each selected :class:`flax.nnx.Conv` has its kernel decomposed by the
  policy's scheme (:mod:`efficonv.decompose`) at the policy's rank (or the
  rank its :mod:`efficonv.rank` rule chooses for that layer), and is
  replaced by the matching :mod:`efficonv.nnx` layer built with
  ``from_conv`` (same strides, padding, dilation and bias). The result is an
  ordinary NNX model: ``nnx.Optimizer``/optax fine-tune it as any other. The
  input model is not modified.

  Args:
    model: an NNX model containing ``nnx.Conv`` layers.
    policy: what to replace and how (:class:`Policy`).
    input_shape: NHWC shape of one input batch, for tracing the forward pass
      (layer order and per-layer shapes), MAC counts and MAC-based rank rules.
    forward: ``forward(model, x)`` when the model is not called as ``model(x)``.

  Returns:
    ``(new_model, report)``; ``report.layers`` lists every conv, skipped ones
    included, in forward order.

  Raises:
    ValueError: naming ``input_shape`` when it is not NHWC, ``policy`` when
      ``include`` names a path that is not a conv or a conv that cannot be
      factorized (grouped, 1-D/3-D, input-dilated or masked).
  """
  if len(tuple(input_shape)) != 4:
    raise ValueError(f"input_shape must be NHWC (rank 4), got {tuple(input_shape)}")
  # New Variable objects: a plain split/merge would share them, and fine-tuning the
  # copy would then update the original's kept layers in place.
  new_model = nnx.clone(model)
  calls = conv_calls(new_model, input_shape, forward)
  convs = {tuple(path): node for path, node in nnx.iter_graph(new_model) if isinstance(node, nnx.Conv)}
  if isinstance(policy.include, Sequence) and not isinstance(policy.include, str):
    known = {_name(p) for p in convs}
    unknown = [p for p in policy.include if p not in known]
    if unknown:
      raise ValueError(f"policy.include names paths that are not convs: {unknown}; convs are {sorted(known)}")
  seen: set[Path] = set()
  reports = []
  for index, (path, shape) in enumerate(calls):
    if path in seen:  # a shared conv is replaced once, at its first call
      continue
    seen.add(path)
    conv = convs[path]
    name = _name(path)
    selected = _selected(policy, name, conv) and not (policy.skip_first and index == 0)
    ineligible = _ineligible(conv)
    if selected and ineligible and not (policy.include is None or callable(policy.include)):
      raise ValueError(f"policy.include names {name!r}, which cannot be factorized: {ineligible}")
    macs_before = cost.macs(conv, shape)
    params_before = cost.params(conv)
    if not selected or ineligible:
      if index == 0 and policy.skip_first:
        reason = "first conv of the forward pass (skip_first)"
      else:
        reason = f"not factorizable: {ineligible}" if selected else "not included"
      reports.append(
        LayerReport(
          name,
          shape,
          "skipped",
          None,
          reason,
          params_before,
          params_before,
          macs_before,
          macs_before,
          0.0,
          0.0,
          "dense",
        )
      )
      continue
    rank, reason = _rank_for(policy, conv, shape)
    layer_cls = schemes.get(policy.scheme).nnx_layer
    layer, info = layer_cls.from_conv(
      conv, rank, implementation=policy.implementation, return_info=True, **policy.decompose_kwargs
    )
    _replace(new_model, path, layer)
    reports.append(
      LayerReport(
        name,
        shape,
        policy.scheme,
        _plain(layer.format.rank),
        reason,
        params_before,
        cost.params(layer),
        macs_before,
        cost.macs(layer, shape),
        float(info.relative_error),
        float(info.degeneracy),
        layer.plan(shape).implementation,
      )
    )
  if policy.dense_implementation is not None:
    kept = {tuple(p) for p, node in nnx.iter_graph(new_model) if type(node) is nnx.Conv}
    new_model = _swap_dense(new_model, kept, policy.dense_implementation)
    reports = [
      dataclasses.replace(r, implementation=f"dense/{policy.dense_implementation}") if r.scheme == "skipped" else r
      for r in reports
    ]
  return new_model, Report(tuple(reports))


def _check_dense_implementation(value: object, name: str) -> str:
  from efficonv.kernels import DENSE_IMPLEMENTATIONS

  if value not in ("auto", "autotune") and value not in DENSE_IMPLEMENTATIONS:
    raise ValueError(f"{name} must be 'auto', 'autotune' or one of {DENSE_IMPLEMENTATIONS}, got {value!r}")
  return str(value)


def fast_conv(conv: nnx.Conv, implementation: str = "auto") -> nnx.Conv:
  """An :class:`efficonv.nnx.Conv` with ``conv``'s configuration and a copy of its state.

  Raises:
    ValueError: naming ``implementation`` when it is not a dense formulation, or ``conv`` when it is not an
      ``nnx.Conv``.
  """
  from efficonv.nnx.conv import Conv as FastConv

  _check_dense_implementation(implementation, "implementation")
  if not isinstance(conv, nnx.Conv):
    raise ValueError(f"conv must be a flax.nnx.Conv, got {type(conv).__name__}")
  layer = FastConv(
    conv.in_features,
    conv.out_features,
    conv.kernel_size,
    conv.strides,
    padding=conv.padding,
    input_dilation=conv.input_dilation,
    kernel_dilation=conv.kernel_dilation,
    feature_group_count=conv.feature_group_count,
    use_bias=conv.bias is not None,
    mask=conv.mask,
    dtype=conv.dtype,
    param_dtype=conv.param_dtype,
    precision=conv.precision,
    implementation=implementation,
    rngs=nnx.Rngs(0),
  )
  nnx.update(layer, nnx.clone(nnx.state(conv)))
  return layer


def replace_dense(model: nnx.Module, implementation: str = "auto") -> nnx.Module:
  """A copy of ``model`` whose every plain :class:`flax.nnx.Conv` is an :class:`efficonv.nnx.Conv`.

  The fastest dense network efficonv can build from ``model``: the same weights and outputs (up to float
  rounding), each conv running ``implementation`` (``"auto"``: per shape and backend,
  :func:`efficonv.kernels.dense_implementation`). The input model is not modified.

  Args:
    model: an NNX model.
    implementation: ``"auto"`` or one of :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS`.

  Returns:
    The new model.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.compression import replace_dense
    >>> net = nnx.Sequential(nnx.Conv(3, 8, (3, 3), rngs=nnx.Rngs(0)), nnx.relu)
    >>> fast = replace_dense(net)
    >>> type(fast.layers[0]).__module__, bool(jnp.allclose(fast(jnp.ones((1, 4, 4, 3))), net(jnp.ones((1, 4, 4, 3)))))
    ('efficonv.nnx.conv', True)
  """
  _check_dense_implementation(implementation, "implementation")
  new_model = nnx.clone(model)
  paths = {tuple(p) for p, node in nnx.iter_graph(new_model) if type(node) is nnx.Conv}
  return _swap_dense(new_model, paths, implementation)


def _swap_dense(model: nnx.Module, paths: set[Path], implementation: str) -> nnx.Module:
  convs = {tuple(p): node for p, node in nnx.iter_graph(model) if tuple(p) in paths}
  for path, conv in convs.items():
    _replace(model, path, fast_conv(conv, implementation))
  return model


def _name(path: Path) -> str:
  return "/".join(str(p) for p in path)


def _selected(policy: Policy, name: str, conv: nnx.Conv) -> bool:
  if policy.include is None:
    return True
  if callable(policy.include):
    return bool(policy.include(name, conv))
  return name in policy.include


def _ineligible(conv: nnx.Conv) -> str:
  """Why no factorized layer can replace ``conv`` (``""`` when one can)."""
  try:
    conv_kernel(conv)
  except ValueError as e:
    return str(e)
  return ""


def _plain(rank: Any) -> Any:
  return tuple(int(r) for r in rank) if isinstance(rank, tuple) else int(rank)


def _rank_for(policy: Policy, conv: nnx.Conv, input_shape: tuple[int, ...]) -> tuple[Any, str]:
  rank = policy.rank
  if isinstance(rank, (int, tuple, list)) and not isinstance(rank, bool):
    return (tuple(rank) if isinstance(rank, list) else rank), "given"
  from efficonv import rank as rank_lib

  fmt = schemes.get(policy.scheme).format
  kwargs = {k: policy.decompose_kwargs[k] for k in fmt.option_names if k in policy.decompose_kwargs}
  choice = rank_lib.choose_rank(
    policy.scheme,
    conv_kernel(conv),
    rank,
    input_shape=input_shape,
    strides=1 if conv.strides is None else conv.strides,
    padding=conv_padding(conv),
    dilation=1 if conv.kernel_dilation is None else conv.kernel_dilation,
    **kwargs,
  )
  return choice.rank, choice.reason


def _replace(model: nnx.Module, path: Path, layer: nnx.Module) -> None:
  parent: Any = model
  for key in path[:-1]:
    parent = parent[key] if isinstance(key, int) else getattr(parent, key)
  last = path[-1]
  if isinstance(last, int):
    parent[last] = layer
  else:
    setattr(parent, last, layer)

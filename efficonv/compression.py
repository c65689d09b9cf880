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
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficonv import cost, schemes
from efficonv import rank as rank_lib
from efficonv.convert import conv_kernel, conv_padding
from efficonv.kernels.dense import check_layer_implementation

Path = tuple[Any, ...]


# The per-layer choice of a Policy: "dense", or (scheme, rank), or (scheme, rank, decompose_kwargs).
LayerChoice = Union[str, tuple[str, Any], tuple[str, Any, dict[str, Any]]]
DENSE = "dense"


@dataclasses.dataclass(frozen=True)
class Policy:
  """Which convs to replace, by which scheme, at which rank; uniform, per layer, or both.

  The uniform fields (``scheme``, ``rank``, ``skip_first``, ``include``, ``decompose_kwargs``) decide for
  the convs that ``layers`` does not name; a conv named in ``layers`` gets exactly its entry (``include``
  and ``skip_first`` do not apply to it).

  Example:
    >>> from efficonv import Policy, rank
    >>> policy = Policy(scheme="cp", rank=rank.MacReduction(4), layers={"block1/conv": ("tucker2", (8, 8))})
    >>> Policy.from_json(policy.to_json()) == policy
    True

  Attributes:
    scheme: a name of :mod:`efficonv.schemes` (``"cp"``, ``"tucker2"``, ``"tt"``, ``"spatial"``,
      ``"separable"``).
    rank: a rank of the scheme's kind (int; ``(R1, R2)`` for Tucker-2; TT
      ranks; the depth multiplier for separable) or a rule from
      :mod:`efficonv.rank` (``MacReduction(4)``, ``ParamFraction(0.25)``,
      ``Energy(0.9)``, ``VBMF()``, …) evaluated per layer. ``None`` only with ``layers``: the convs it does
      not name stay dense.
    skip_first: leave the first conv of the forward pass alone (as Lebedev
      et al. and Szegedy et al. advise: factoring the input layer hurts most
      and saves least).
    include: ``None`` (every eligible conv), a sequence of layer paths
      (``"block1/conv"``; a single string is one path), or a predicate
      ``(path, conv) -> bool`` (which :meth:`to_json` cannot write). Eligible: 2-D,
      ``feature_group_count=1``, no input dilation, no mask (others are skipped, or rejected when
      ``include`` names them).
    implementation: ``implementation`` of the new layers.
    dense_implementation: ``None`` leaves the convs that stay dense as they are; a dense formulation
      (``"auto"`` or one of :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS`) turns each of them into an
      :class:`efficonv.nnx.Conv` with that ``implementation`` and the same state (:func:`replace_dense`).
    decompose_kwargs: passed to the :mod:`efficonv.decompose` function of ``scheme``
      (e.g. ``{"n_iter": 200}``; TT ``in_modes``/``out_modes``), for the convs of that scheme whose
      ``layers`` entry has no keywords of its own.
    layers: ``{path: choice}`` with ``choice`` ``"dense"`` (left alone), ``(scheme, rank)`` (``rank`` a
      rank or a rule, as above) or ``(scheme, rank, decompose_kwargs)``.
    force: a replacement whose factorized layer costs more MACs than the dense conv is not made (the conv
      stays dense and the report says why) unless ``force`` is ``True`` or names the conv's path (a
      sequence of paths; a single string is one path).
  """

  scheme: str = "cp"
  rank: Any = None
  skip_first: bool = True
  include: Sequence[str] | Callable[[str, nnx.Conv], bool] | None = None
  implementation: str = "auto"
  dense_implementation: str | None = None
  decompose_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  layers: Mapping[str, LayerChoice] = dataclasses.field(default_factory=dict)
  force: bool | Sequence[str] = False

  def __post_init__(self) -> None:
    schemes.get(self.scheme)  # raises, naming the scheme and the known names
    layers = self.layers
    if not isinstance(layers, Mapping) or not all(isinstance(k, str) for k in layers):
      raise ValueError(f"policy.layers must be a dict from path strings to choices, got {layers!r}")
    object.__setattr__(self, "layers", {path: _layer_choice(path, choice) for path, choice in layers.items()})
    if self.rank is None and not self.layers:
      raise ValueError("rank must be given: a rank for the scheme or a rule from efficonv.rank")
    if self.rank is not None:
      object.__setattr__(self, "rank", _canonical_rank(self.rank, "rank"))
    if self.dense_implementation is not None:
      check_layer_implementation(self.dense_implementation, "policy.dense_implementation")
    if isinstance(self.include, str):  # one path, not a sequence of one-letter paths (nor a substring test)
      object.__setattr__(self, "include", (self.include,))
    elif isinstance(self.include, Sequence):
      object.__setattr__(self, "include", tuple(self.include))
    force = self.force
    if isinstance(force, str):
      force = (force,)
    if not isinstance(force, bool):
      if not isinstance(force, Sequence) or not all(isinstance(p, str) for p in force):
        raise ValueError(f"policy.force must be a bool or a sequence of layer paths, got {self.force!r}")
      force = tuple(force)
    object.__setattr__(self, "force", force)
    object.__setattr__(self, "decompose_kwargs", _canonical_kwargs(self.decompose_kwargs, "decompose_kwargs"))

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (rank rules as ``{"rule": class name, **fields}``); :meth:`from_dict` inverts it.

    Raises:
      ValueError: naming ``include`` when it is a predicate, or ``decompose_kwargs`` when a value is not
        JSON (e.g. a PRNG key or a format to warm-start from).
    """
    if callable(self.include):
      raise ValueError(
        "policy.include is a predicate, which cannot be serialized: give a sequence of paths instead "
        "(a compression's report.policy names every conv)"
      )
    return {
      "scheme": self.scheme,
      "rank": _rank_to_json(self.rank),
      "skip_first": self.skip_first,
      "include": None if self.include is None else list(self.include),
      "implementation": self.implementation,
      "dense_implementation": self.dense_implementation,
      "decompose_kwargs": _kwargs_to_json(self.decompose_kwargs, "decompose_kwargs"),
      "layers": {
        path: choice if isinstance(choice, str) else _choice_to_json(path, choice)
        for path, choice in self.layers.items()
      },
      "force": self.force if isinstance(self.force, bool) else list(self.force),
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Policy:
    """The policy :meth:`to_dict` wrote.

    Raises:
      ValueError: naming ``data`` (not a dict, unknown keys) or the field whose value is invalid.
    """
    if not isinstance(data, Mapping):
      raise ValueError(f"data must be a dict of Policy fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ValueError(f"data has keys that are not Policy fields: {unknown}; fields are {sorted(known)}")
    fields = dict(data)
    if "rank" in fields:
      fields["rank"] = _rank_from_json(fields["rank"], "rank")
    if "layers" in fields and isinstance(fields["layers"], Mapping):
      fields["layers"] = {
        path: choice if isinstance(choice, str) else _choice_from_json(path, choice)
        for path, choice in fields["layers"].items()
      }
    return cls(**fields)

  def to_json(self, indent: int | None = 2) -> str:
    """The policy as JSON text (:meth:`to_dict`); ``Policy.from_json(p.to_json()) == p``."""
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_json(cls, text: str) -> Policy:
    """The policy :meth:`to_json` wrote."""
    return cls.from_dict(json.loads(text))

  def forced(self, path: str) -> bool:
    """Whether the replacement of the conv at ``path`` is made even when it costs more MACs than the conv."""
    return self.force is True or (not isinstance(self.force, bool) and path in self.force)


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """What :func:`compress` did to one conv.

  Attributes:
    path: the layer's path in the model (``"/"``-joined).
    input_shape: NHWC input shape seen in the traced forward pass.
    scheme: the scheme used: ``"skipped"`` for convs left alone by the policy, ``"dense"`` for convs
      whose replacement would have cost more MACs (``rank_reason`` says how many).
    rank: the rank used (``None`` when skipped or dense).
    rank_reason: why that rank (the rule's explanation, or "given").
    params_before, params_after: parameters of the layer (bias included).
    macs_before, macs_after: MACs of the layer on ``input_shape`` (:mod:`efficonv.cost`).
    relative_error: ``||W - Ŵ||_F / ||W||_F`` of the kernel fit (NaN with ``decompose=False``).
    degeneracy: the fit's degeneracy measure (largest term over ``||W||``; NaN with ``decompose=False``).
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

  Attributes:
    layers: one :class:`LayerReport` per conv, in forward order.
    policy: the policy applied, resolved: every conv named in ``Policy.layers`` with a numeric rank (or
      ``"dense"``), so that ``compress(model, report.policy, ...)`` rebuilds the same structure.
  """

  layers: tuple[LayerReport, ...]
  policy: Policy | None = None

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
    """A JSON-ready dict (with the resolved ``policy``'s :meth:`Policy.to_dict` when there is one)."""
    out: dict[str, Any] = {
      "layers": [dataclasses.asdict(r) for r in self.layers],
      "totals": {
        "params_before": self.params_before,
        "params_after": self.params_after,
        "macs_before": self.macs_before,
        "macs_after": self.macs_after,
      },
    }
    if self.policy is not None:
      out["policy"] = self.policy.to_dict()
    return out

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
  # Each conv carries its path as a static attribute: NNX transforms (nnx.scan over a stack made by nnx.vmap)
  # call copies of the convs, which only their graph definition, attributes included, follows into.
  tagged = nnx.clone(model)
  for path, node in nnx.iter_graph(tagged):
    if isinstance(node, nnx.Conv):
      setattr(node, "_efficonv_path", tuple(path))  # noqa: B010  # an attribute nnx.Conv does not declare
  graphdef, state = nnx.split(tagged)
  calls: list[tuple[Path, tuple[int, ...]]] = []
  originals: dict[type, Any] = {cls: cls.__dict__["__call__"] for cls in (nnx.Conv, FastConv)}

  def traced(state: Any) -> Any:
    copy = nnx.merge(graphdef, state)
    inside: set[int] = set()  # a FastConv that falls back to nnx.Conv.__call__ is one call, not two

    def recording(cls: type) -> Callable[..., jax.Array]:
      def call(self: nnx.Conv, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        path = getattr(self, "_efficonv_path", None)
        if id(self) in inside or path is None:  # None: a conv made during the forward pass, not the model's
          return originals[cls](self, inputs, *args, **kwargs)
        calls.append((path, tuple(int(v) for v in inputs.shape)))
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
  decompose: bool = True,
) -> tuple[nnx.Module, Report]:
  """Returns a copy of ``model`` with selected convs replaced by factorized layers.

  Each selected :class:`flax.nnx.Conv` has its kernel decomposed by its scheme
  (:mod:`efficonv.decompose`) at its rank (or the rank its :mod:`efficonv.rank` rule chooses for that
  layer), and is replaced by the matching :mod:`efficonv.nnx` layer built with ``from_conv`` (same
  strides, padding, dilation and bias). A replacement that would cost more MACs than the conv is not
  made unless ``policy.force`` says so: the conv stays dense, and its report says why. The result is an
  ordinary NNX model: ``nnx.Optimizer``/optax fine-tune it as any other. The input model is not
  modified.

  ``report.policy`` is the policy that was applied, with every conv named in ``layers`` and every rank
  resolved to a number: ``compress(model, report.policy, input_shape=...)`` builds the same structure
  again. With ``decompose=False`` nothing is fitted: each factorized layer gets random factors of its
  rank (``Format.init``), which is enough to restore a checkpoint of the compressed model, even under
  :func:`flax.nnx.eval_shape` (no arrays allocated). The recipe, in a new process::

    policy = efficonv.Policy.from_json(saved_policy_json)  # report.policy.to_json(), saved with the weights
    abstract = nnx.eval_shape(lambda: efficonv.compress(Net(nnx.Rngs(0)), policy, input_shape=shape,
                                                        decompose=False)[0])
    graphdef, abstract_state = nnx.split(abstract)
    state = ocp.StandardCheckpointer().restore(path, abstract_state)  # saved from nnx.state(compressed)
    compressed = nnx.merge(graphdef, state)

  Example:
    >>> from flax import nnx
    >>> import efficonv
    >>> net = nnx.Sequential(nnx.Conv(3, 32, (3, 3), rngs=nnx.Rngs(0)), nnx.Conv(32, 32, (3, 3), rngs=nnx.Rngs(1)))
    >>> small, report = efficonv.compress(net, efficonv.Policy(scheme="cp", rank=efficonv.rank.MacReduction(4)),
    ...                                   input_shape=(1, 8, 8, 3))
    >>> report.policy.layers
    {'layers/0': 'dense', 'layers/1': ('cp', 32)}
    >>> again, _ = efficonv.compress(net, efficonv.Policy.from_json(report.policy.to_json()),
    ...                              input_shape=(1, 8, 8, 3), decompose=False)
    >>> again.layers[1].format.rank
    32

  Args:
    model: an NNX model containing ``nnx.Conv`` layers.
    policy: what to replace and how (:class:`Policy`).
    input_shape: NHWC shape of one input batch, for tracing the forward pass
      (layer order and per-layer shapes), MAC counts and MAC-based rank rules.
    forward: ``forward(model, x)`` when the model is not called as ``model(x)``.
    decompose: ``False`` builds the factorized layers with random factors instead of fitting the kernels
      (ranks must be numbers or :class:`~efficonv.rank.ParamFraction`/:class:`~efficonv.rank.MacReduction`,
      which need only shapes); their reports have ``relative_error`` and ``degeneracy`` NaN.

  Returns:
    ``(new_model, report)``; ``report.layers`` lists every conv, skipped ones
    included, in forward order; ``report.policy`` is the resolved per-layer policy.

  Raises:
    ValueError: naming ``input_shape`` when it is not NHWC, ``policy`` when
      ``include``, ``layers`` or ``force`` name a path that is not a conv, or ``include``/``layers`` a conv
      that cannot be factorized (grouped, 1-D/3-D, input-dilated or masked), or ``policy.rank`` when
      ``decompose=False`` and its rule needs the kernel's values (:class:`~efficonv.rank.Energy`,
      :class:`~efficonv.rank.VBMF`).
  """
  if len(tuple(input_shape)) != 4:
    raise ValueError(f"input_shape must be NHWC (rank 4), got {tuple(input_shape)}")
  # New Variable objects: a plain split/merge would share them, and fine-tuning the
  # copy would then update the original's kept layers in place.
  new_model = nnx.clone(model)
  calls = conv_calls(new_model, input_shape, forward)
  convs = {tuple(path): node for path, node in nnx.iter_graph(new_model) if isinstance(node, nnx.Conv)}
  known = {_name(p) for p in convs}
  for field, paths in (
    ("include", policy.include if isinstance(policy.include, tuple) else ()),
    ("layers", tuple(policy.layers)),
    ("force", () if isinstance(policy.force, bool) else policy.force),
  ):
    unknown = [p for p in paths if p not in known]
    if unknown:
      raise ValueError(f"policy.{field} names paths that are not convs: {unknown}; convs are {sorted(known)}")
  seen: set[Path] = set()
  reports = []
  resolved: dict[str, LayerChoice] = {}
  for index, (path, shape) in enumerate(calls):
    if path in seen:  # a shared conv is replaced once, at its first call
      continue
    seen.add(path)
    conv = convs[path]
    name = _name(path)
    stack = _stack_shape(conv)
    layers = _layers_of(conv, stack)  # [conv], or one conv per layer of a stack (compressed one by one)
    ineligible = _ineligible(layers[0])
    macs_before = cost.macs(conv, shape)
    params_before = cost.params(conv)
    choice, reason = _choice_for(policy, name, conv, index)
    if choice != DENSE and ineligible:
      if name in policy.layers:
        raise ValueError(f"policy.layers names {name!r}, which cannot be factorized: {ineligible}")
      if isinstance(policy.include, tuple):
        raise ValueError(f"policy.include names {name!r}, which cannot be factorized: {ineligible}")
      choice, reason = DENSE, f"not factorizable: {ineligible}"
    kept = LayerReport(
      name, shape, "skipped", None, reason, params_before, params_before, macs_before, macs_before, 0.0, 0.0, "dense"
    )
    if choice == DENSE:
      resolved[name] = DENSE
      reports.append(kept)
      continue
    scheme, rule, kwargs, own_kwargs = choice
    rank, reason = _stack_rank([_rank_for(scheme, rule, kwargs, c, shape, name, decompose) for c in layers])
    options = {k: kwargs[k] for k in schemes.get(scheme).format.option_names if k in kwargs}
    candidate = _candidate_macs(scheme, rank, options, layers[0], shape) * len(layers)
    if candidate > macs_before and not policy.forced(name):
      reason = f"candidate {scheme} rank {_shown(rank)} costs {candidate:,} MACs > dense {macs_before:,}"
      resolved[name] = DENSE
      reports.append(dataclasses.replace(kept, scheme=DENSE, rank_reason=reason))
      continue
    layer_cls = schemes.get(scheme).nnx_layer
    if decompose:
      fits = [
        layer_cls.from_conv(c, rank, implementation=policy.implementation, return_info=True, **kwargs) for c in layers
      ]
      parts = [layer for layer, _ in fits]
      # A stack reports its worst-fitted layer.
      error = max(float(info.relative_error) for _, info in fits)
      degeneracy = max(float(info.degeneracy) for _, info in fits)
    else:
      parts = [_untrained_layer(layer_cls, c, rank, options, policy.implementation) for c in layers]
      error = degeneracy = math.nan
    layer = _stacked(parts, stack)
    _replace(new_model, path, layer)
    plain = _plain(layer.format.rank)
    resolved[name] = (scheme, plain, kwargs) if own_kwargs else (scheme, plain)
    reports.append(
      LayerReport(
        name,
        shape,
        scheme,
        plain,
        reason,
        params_before,
        cost.params(layer),
        macs_before,
        cost.macs(layer, shape),
        error,
        degeneracy,
        layer.plan(shape).implementation,
      )
    )
  if policy.dense_implementation is not None:
    kept_paths = {tuple(p) for p, node in nnx.iter_graph(new_model) if type(node) is nnx.Conv}
    new_model = _swap_dense(new_model, kept_paths, policy.dense_implementation)
    reports = [
      dataclasses.replace(r, implementation=f"dense/{policy.dense_implementation}")
      if r.scheme in ("skipped", DENSE)
      else r
      for r in reports
    ]
  applied = dataclasses.replace(policy, include=None, layers=resolved)
  return new_model, Report(tuple(reports), applied)


def _choice_for(policy: Policy, name: str, conv: nnx.Conv, index: int) -> tuple[Any, str]:
  """``("dense", why)`` or ``((scheme, rank or rule, decompose kwargs, kwargs are the entry's own), why)``."""
  if name in policy.layers:
    entry = policy.layers[name]
    if entry == DENSE:
      return DENSE, "dense in policy.layers"
    if len(entry) == 3:
      return (entry[0], entry[1], entry[2], True), "given"
    kwargs = policy.decompose_kwargs if entry[0] == policy.scheme else {}
    return (entry[0], entry[1], kwargs, False), "given"
  if policy.skip_first and index == 0:
    return DENSE, "first conv of the forward pass (skip_first)"
  if not _selected(policy, name, conv):
    return DENSE, "not included"
  if policy.rank is None:
    return DENSE, "not in policy.layers (policy.rank is None)"
  return (policy.scheme, policy.rank, policy.decompose_kwargs, False), "given"


def fast_conv(conv: nnx.Conv, implementation: str = "auto") -> nnx.Conv:
  """An :class:`efficonv.nnx.Conv` with ``conv``'s configuration and a copy of its state.

  Raises:
    ValueError: naming ``implementation`` when it is not a dense formulation, or ``conv`` when it is not an
      ``nnx.Conv``.
  """
  from efficonv.nnx.conv import Conv as FastConv

  check_layer_implementation(implementation, "implementation")
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
  check_layer_implementation(implementation, "implementation")
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


def _stack_shape(conv: nnx.Conv) -> tuple[int, ...]:
  """The leading axes of a stack of convs (``nnx.vmap`` over their constructor); ``()`` for one conv."""
  shape = tuple(conv.kernel.shape)
  return shape[: len(shape) - len(conv.kernel_size) - 2]


def _layers_of(conv: nnx.Conv, stack: tuple[int, ...]) -> list[nnx.Conv]:
  """``[conv]``, or for a stack one conv per layer (its slice of every parameter), in flat order."""
  if not stack:
    return [conv]
  graphdef, state = nnx.split(conv)
  count = math.prod(stack)
  flat = jax.tree.map(lambda a: a.reshape(count, *a.shape[len(stack) :]), state)
  return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], flat)) for i in range(count)]


def _stacked(layers: list[Any], stack: tuple[int, ...]) -> Any:
  """The one layer, or for a stack the layers' parameters stacked back into ``stack`` leading axes."""
  if not stack:
    return layers[0]
  graphdef, _ = nnx.split(layers[0])
  states = [nnx.state(layer) for layer in layers]
  return nnx.merge(graphdef, jax.tree.map(lambda *a: jnp.stack(a).reshape(*stack, *a[0].shape), *states))


def _stack_rank(choices: list[tuple[Any, str]]) -> tuple[Any, str]:
  """One rank for every layer of a stack (they share their factor shapes): the largest of each entry."""
  ranks = [rank for rank, _ in choices]
  rank, reason = choices[0]
  if all(r == rank for r in ranks):
    return rank, reason if len(choices) == 1 else f"{reason} (each of the {len(choices)} stacked layers)"
  largest = tuple(max(parts) for parts in zip(*ranks)) if isinstance(rank, tuple) else max(ranks)
  shown = ", ".join(_shown(r) for r in ranks)
  return largest, f"per stacked layer {shown}; the stack takes the largest, {_shown(largest)}"


def _plain(rank: Any) -> Any:
  return tuple(int(r) for r in rank) if isinstance(rank, tuple) else int(rank)


def _rank_for(
  scheme: str,
  rule: Any,
  kwargs: Mapping[str, Any],
  conv: nnx.Conv,
  input_shape: tuple[int, ...],
  name: str,
  decompose: bool,
) -> tuple[Any, str]:
  if isinstance(rule, (int, tuple)):
    return rule, "given"
  if not decompose and isinstance(rule, (rank_lib.Energy, rank_lib.VBMF)):
    raise ValueError(
      f"policy.rank (or policy.layers[{name!r}]'s rank) {rule!r} needs the trained kernel's values, which "
      "decompose=False does not read: give the resolved ranks (report.policy of the compression to rebuild)"
    )
  fmt = schemes.get(scheme).format
  options = {k: kwargs[k] for k in fmt.option_names if k in kwargs}
  choice = rank_lib.choose_rank(
    scheme,
    conv_kernel(conv) if decompose else tuple(int(d) for d in conv.kernel.shape),
    rule,
    input_shape=input_shape,
    strides=1 if conv.strides is None else conv.strides,
    padding=conv_padding(conv),
    dilation=1 if conv.kernel_dilation is None else conv.kernel_dilation,
    **options,
  )
  return choice.rank, choice.reason


def _conv_options(conv: nnx.Conv) -> dict[str, Any]:
  return {
    "strides": 1 if conv.strides is None else conv.strides,
    "padding": conv_padding(conv),
    "dilation": 1 if conv.kernel_dilation is None else conv.kernel_dilation,
  }


def _candidate_macs(
  scheme: str, rank: Any, options: Mapping[str, Any], conv: nnx.Conv, input_shape: tuple[int, ...]
) -> int:
  """MACs of the factorized layer of ``scheme`` at ``rank`` that would replace ``conv`` (shapes only)."""
  fmt_cls = schemes.get(scheme).format
  shape = tuple(int(d) for d in conv.kernel.shape)
  rank, _ = fmt_cls.clip_rank(rank, shape, **options)  # as the decompositions clip an int rank
  fmt = fmt_cls.abstract(shape, rank, **options)
  return int(fmt.macs(input_shape, **_conv_options(conv)))


def _untrained_layer(
  layer_cls: Any, conv: nnx.Conv, rank: Any, options: Mapping[str, Any], implementation: str
) -> nnx.Module:
  """The layer ``from_conv`` would build, with random factors (``Format.init``) instead of fitted ones."""
  fmt = layer_cls.format_type.init(
    jax.random.key(0), conv.in_features, conv.out_features, conv.kernel_size, rank, dtype=conv.param_dtype, **options
  )
  return layer_of_format(layer_cls, fmt, conv, implementation)


def layer_of_format(layer_cls: Any, fmt: Any, conv: nnx.Conv, implementation: str) -> nnx.Module:
  """The layer of ``layer_cls`` with the factors ``fmt`` that replaces ``conv`` (its options, bias and dtypes)."""
  conv_options = _conv_options(conv)
  return layer_cls.from_format(
    fmt,
    strides=conv_options["strides"],
    padding=conv_options["padding"],
    kernel_dilation=conv_options["dilation"],
    use_bias=conv.bias is not None,
    bias=conv.bias[...] if conv.bias is not None else None,
    dtype=conv.dtype,
    param_dtype=conv.param_dtype,
    precision=conv.precision,
    implementation=implementation,
  )


def _shown(rank: Any) -> str:
  return str(tuple(int(r) for r in rank)) if isinstance(rank, (tuple, list)) else str(int(rank))


def _replace(model: nnx.Module, path: Path, layer: nnx.Module) -> None:
  parent: Any = model
  for key in path[:-1]:
    parent = parent[key] if isinstance(key, int) else getattr(parent, key)
  last = path[-1]
  if isinstance(last, int):
    parent[last] = layer
  else:
    setattr(parent, last, layer)


def _canonical_rank(value: Any, name: str) -> Any:
  """A rank as an int or a tuple of ints, or a rule of :mod:`efficonv.rank`; raises naming ``name``."""
  if isinstance(value, rank_lib.RULES):
    return value
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value)
  if (
    isinstance(value, (list, tuple))
    and value
    and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
  ):
    return tuple(int(v) for v in value)
  raise ValueError(
    f"{name} must be an int, a tuple of ints or a rule from efficonv.rank "
    f"({', '.join(r.__name__ for r in rank_lib.RULES)}), got {value!r}"
  )


def _canonical_kwargs(value: Any, name: str) -> dict[str, Any]:
  """``value`` as a dict with lists turned into tuples (so that a JSON round trip compares equal)."""
  if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
    raise ValueError(f"{name} must be a dict from keyword names to values, got {value!r}")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}


def _layer_choice(path: str, choice: Any) -> LayerChoice:
  name = f"policy.layers[{path!r}]"
  if isinstance(choice, str):
    if choice != DENSE:
      raise ValueError(f"{name} must be 'dense', (scheme, rank) or (scheme, rank, decompose_kwargs), got {choice!r}")
    return DENSE
  if not isinstance(choice, (list, tuple)) or len(choice) not in (2, 3):
    raise ValueError(f"{name} must be 'dense', (scheme, rank) or (scheme, rank, decompose_kwargs), got {choice!r}")
  scheme = choice[0]
  if scheme not in schemes.names():
    raise ValueError(f"{name}'s scheme must be one of {schemes.names()}, got {scheme!r}")
  rank = _canonical_rank(choice[1], f"{name}'s rank")
  if len(choice) == 2:
    return (scheme, rank)
  return (scheme, rank, _canonical_kwargs(choice[2], f"{name}'s decompose_kwargs"))


def _rank_to_json(rank: Any) -> Any:
  if rank is None or isinstance(rank, int):
    return rank
  if isinstance(rank, tuple):
    return list(rank)
  fields = {f.name: getattr(rank, f.name) for f in dataclasses.fields(rank)}
  return {"rule": type(rank).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def _rank_from_json(value: Any, name: str) -> Any:
  if value is None:
    return None
  if isinstance(value, Mapping):
    rules = {r.__name__: r for r in rank_lib.RULES}
    fields = dict(value)
    rule = rules.get(fields.pop("rule", None))
    if rule is None:
      raise ValueError(f"{name} must name a rule of efficonv.rank ({sorted(rules)}) under 'rule', got {value!r}")
    return rule(**fields)
  return _canonical_rank(value, name)


def _kwargs_to_json(kwargs: Mapping[str, Any], name: str) -> dict[str, Any]:
  out = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
  try:
    json.dumps(out)
  except TypeError as e:
    raise ValueError(f"policy.{name} must hold only JSON values (numbers, strings, lists) to be written: {e}") from e
  return out


def _choice_to_json(path: str, choice: tuple) -> list[Any]:
  out = [choice[0], _rank_to_json(choice[1])]
  if len(choice) == 3:
    out.append(_kwargs_to_json(choice[2], f"layers[{path!r}]'s decompose_kwargs"))
  return out


def _choice_from_json(path: str, choice: Any) -> Any:
  if isinstance(choice, (list, tuple)) and len(choice) in (2, 3):
    return (choice[0], _rank_from_json(choice[1], f"policy.layers[{path!r}]'s rank"), *choice[2:])
  return choice  # _layer_choice rejects it, naming the path

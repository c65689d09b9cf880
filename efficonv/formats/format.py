"""The ``Format`` base class: a factorized kernel, its algebra, and its scheme's facts.

A format is a frozen dataclass whose fields are the factor arrays (a JAX pytree, so it passes through
``jit``, ``vmap`` and ``grad``). Each subclass is the one place its scheme's knowledge lives:

* its name (:attr:`Format.scheme`) and whether it has depthwise steps;
* its valid ranks for a kernel shape (:meth:`Format.max_rank`, :meth:`Format.check_rank`,
  :meth:`Format.clip_rank`) and the one-parameter family of ranks the budget rules search
  (:meth:`Format.rank_family`);
* the unfoldings whose spectra choose its ranks (:meth:`Format.unfoldings`,
  :meth:`Format.rank_from_unfoldings`);
* the factor shapes of a rank, hence random initialization (:meth:`Format.init`) and shape-only instances
  for costing (:meth:`Format.abstract`);
* the steps of its factorized sequence for the cost model (:meth:`Format.steps`).

This base class turns them into ``conv(..., implementation="factorized" | "reconstructed" | "auto" |
"autotune")``; the decision itself is :mod:`efficonv.planning`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from efficonv.formats.init import Initializer, init_factors
from efficonv.formats.ranks import KernelShape, RankLike, as_int, check_in_range, check_kernel_shape, single_rank
from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.dense import dense_implementation
from efficonv.kernels.shapes import Geometry, conv_geometry, dense_macs
from efficonv.kernels.sharding import data_parallel
from efficonv.kernels.targets import dispatch
from efficonv.planning import Implementation, Objective, Plan, Step, plan_conv
from efficonv.typing import Array, Dtype, PrecisionLike

F = TypeVar("F", bound="Format")


class Unfolding(NamedTuple):
  """A matrix (or a stack of matrices sharing one spectrum budget) whose singular values choose a rank.

  Attributes:
    name: what it is, for rank reasons (``"C_in-unfolding"``).
    matrix: ``(m, n)``, or ``(B, m, n)`` for a stack whose ``i``-th components are kept or dropped together
      (a separable kernel's per-channel slices).
  """

  name: str
  matrix: Any


class Format:
  """Base class of the factorized-kernel formats (see the subclasses)."""

  #: The scheme's one name (``"cp"``, ``"tucker2"``, ``"tt"``, ``"spatial"``, ``"separable"``).
  scheme: ClassVar[str] = ""
  #: Names of the array fields, in constructor order.
  _fields: ClassVar[tuple[str, ...]] = ()
  #: Whether the factorized sequence has a depthwise step (then it has two paths, shift-and-add and XLA's).
  has_depthwise: ClassVar[bool] = False
  #: The keyword options of :meth:`scheme_options` (TT: the channel factorizations).
  option_names: ClassVar[tuple[str, ...]] = ()
  #: Whether :meth:`rank_from_unfoldings` gives only a lower bound (CP: the rank rules say so).
  rank_from_unfoldings_is_lower_bound: ClassVar[bool] = False

  # --- the scheme's rank space (class methods; ``shape`` is the dense kernel's (kh, kw, C_in, C_out)) -------

  @classmethod
  def scheme_options(cls, shape: Sequence[int], **options: Any) -> dict[str, Any]:
    """Validates the scheme's extra options for a kernel shape and fills in their defaults.

    Only TT has any (``in_modes``, ``out_modes``); the others reject every option given a value.

    Raises:
      TypeError: naming an option the scheme does not take (as for an unexpected keyword argument).
      ValueError: naming an option that does not fit ``shape``.
    """
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
      raise TypeError(f"scheme {cls.scheme!r} takes no option {given} (only 'tt' has options: in_modes, out_modes)")
    return {}

  @classmethod
  def max_rank(cls, shape: Sequence[int], **options: Any) -> RankLike:
    """The largest rank of the scheme for a kernel of ``shape`` beyond which nothing can be gained."""
    raise NotImplementedError

  @classmethod
  def normalize_rank(cls, rank: Any, shape: Sequence[int], **options: Any) -> RankLike:
    """``rank`` in the scheme's canonical form (an int, or a tuple of ints), without range checks.

    Integer-like values (NumPy or concrete JAX integers) are accepted.

    Raises:
      ValueError: naming ``rank`` when it has the wrong kind for the scheme.
    """
    value = as_int(rank)
    if value is None:
      raise ValueError(f"rank must be an int for scheme {cls.scheme!r}, got {rank!r}")
    return value

  @classmethod
  def clip_rank(cls, rank: Any, shape: Sequence[int], **options: Any) -> tuple[RankLike, bool]:
    """Clips a requested rank (each entry ``≥ 1``) into the valid range; returns ``(rank, clipped)``."""
    shape = check_kernel_shape(shape)
    value = cls.normalize_rank(rank, shape, **options)
    top = cls.max_rank(shape, **options)
    if isinstance(value, tuple) and isinstance(top, tuple):
      out: RankLike = tuple(min(v, t) for v, t in zip(value, top))
    else:
      out = min(single_rank(value), single_rank(top))
    return out, out != value

  @classmethod
  def check_rank(cls, rank: Any, shape: Sequence[int], *, name: str = "rank", **options: Any) -> RankLike:
    """``rank`` normalized, or a ``ValueError`` naming ``name`` when it is outside the valid range.

    Raises:
      ValueError: naming ``name`` (with the entry index for tuples), the range and why.
    """
    shape = check_kernel_shape(shape)
    value = cls.normalize_rank(rank, shape, **options)
    top = cls.max_rank(shape, **options)
    if isinstance(value, tuple) and isinstance(top, tuple):
      for k, (v, t) in enumerate(zip(value, top)):
        check_in_range(f"{name}[{k}]", v, t, cls._rank_bound_reason())
      return value
    return check_in_range(name, value, single_rank(top), cls._rank_bound_reason())

  @classmethod
  def _rank_bound_reason(cls) -> str:
    return "the scheme's maximal rank"

  @classmethod
  def rank_family(cls, t: int, shape: Sequence[int], **options: Any) -> RankLike:
    """Member ``t ≥ 1`` of the one-parameter family of ranks along which params and MACs grow.

    The budget rules (:class:`efficonv.rank.ParamFraction`, :class:`efficonv.rank.MacReduction`) search it.
    """
    return min(t, single_rank(cls.max_rank(shape, **options)))

  @classmethod
  def family_size(cls, shape: Sequence[int], **options: Any) -> int:
    """Number of members ``t = 1 … T`` of :meth:`rank_family`."""
    top = cls.max_rank(shape, **options)
    return max(top) if isinstance(top, tuple) else int(top)

  @classmethod
  def unfoldings(cls, kernel: Any, **options: Any) -> list[Unfolding]:
    """The unfoldings of a dense HWIO kernel whose singular values choose the rank (NumPy or JAX arrays)."""
    raise NotImplementedError

  @classmethod
  def rank_from_unfoldings(cls, ranks: Sequence[int], shape: Sequence[int], **options: Any) -> RankLike:
    """Combines one rank per :meth:`unfoldings` entry into a rank of the scheme (before clipping)."""
    return int(ranks[0])

  @classmethod
  def factor_shapes(cls, shape: Sequence[int], rank: RankLike, **options: Any) -> list[tuple[int, ...]]:
    """The shapes of the factors, in :attr:`_fields` order (lists flattened), for a valid ``rank``."""
    raise NotImplementedError

  @classmethod
  def terms_per_entry(cls, rank: RankLike) -> int:
    """How many products of factor entries sum into one kernel entry (for the variance-matched init)."""
    return math.prod(rank) if isinstance(rank, tuple) else int(rank)

  @classmethod
  def from_factors(cls: type[F], factors: Sequence[Any]) -> F:
    """Builds the format from its factors listed flat, in :meth:`factor_shapes` order."""
    return cls(*factors)

  @classmethod
  def init(
    cls: type[F],
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    rank: Any,
    *,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
    **options: Any,
  ) -> F:
    """Random factors whose reconstructed kernel has LeCun-normal variance (:mod:`efficonv.formats.init`).

    Args:
      key: PRNG key.
      in_features: ``C_in``.
      out_features: ``C_out``.
      kernel_size: ``k`` or ``(kh, kw)``.
      rank: the scheme's rank (:meth:`check_rank`).
      dtype: parameter dtype.
      initializer: the dense kernel's initializer (as ``kernel_init`` of :class:`flax.nnx.Conv`): the
        factors are scaled so the reconstructed kernel has the variance of its draw
        (:func:`efficonv.formats.init.init_factors`); ``None``: LeCun normal's.
      **options: the scheme's options (TT: ``in_modes``, ``out_modes``).

    Returns:
      The format.

    Raises:
      ValueError: naming ``rank`` (or an option) when it does not fit the kernel shape.
    """
    kh, kw = opt.pair(kernel_size, "kernel_size")
    shape = check_kernel_shape((kh, kw, in_features, out_features), "(kernel_size, in_features, out_features)")
    options = cls.scheme_options(shape, **options)
    rank = cls.check_rank(rank, shape, **options)
    shapes = cls.factor_shapes(shape, rank, **options)
    factors = init_factors(key, shapes, cls.terms_per_entry(rank), shape, dtype, initializer)
    return cls.from_factors(factors)

  @classmethod
  def abstract(cls: type[F], shape: Sequence[int], rank: Any, *, dtype: Dtype = jnp.float32, **options: Any) -> F:
    """The format with ``rank`` for a kernel of ``shape``, with shape-only leaves (for ``params``/``macs``/``plan``).

    Example:
      >>> from efficonv import CP
      >>> CP.abstract((3, 3, 64, 64), 16).params()
      2144
    """
    shape = check_kernel_shape(shape)
    options = cls.scheme_options(shape, **options)
    rank = cls.check_rank(rank, shape, **options)
    return cls.from_factors([jax.ShapeDtypeStruct(s, dtype) for s in cls.factor_shapes(shape, rank, **options)])

  # --- an instance: the factors --------------------------------------------------------------------------

  @property
  def rank(self) -> Any:
    """The rank of these factors (an int or a tuple, as :meth:`check_rank` takes it)."""
    raise NotImplementedError

  @property
  def kernel_size(self) -> tuple[int, int]:
    raise NotImplementedError

  @property
  def in_features(self) -> int:
    raise NotImplementedError

  @property
  def out_features(self) -> int:
    raise NotImplementedError

  @property
  def kernel_shape(self) -> KernelShape:
    """``(kh, kw, C_in, C_out)`` of the dense kernel."""
    return (*self.kernel_size, self.in_features, self.out_features)

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    """The dense HWIO kernel ``(kh, kw, C_in, C_out)`` this format represents."""
    raise NotImplementedError

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    raise NotImplementedError

  def steps(self, g: Geometry) -> list[Step]:
    """The factorized sequence on geometry ``g`` as cost-model steps (:class:`efficonv.planning.Step`)."""
    raise NotImplementedError

  #: The dense kernel's axes, as :meth:`factor_axes` names them.
  KERNEL_AXES: ClassVar[tuple[str, str, str, str]] = ("kh", "kw", "C_in", "C_out")

  def factor_axes(self) -> list[tuple[str | None, ...]]:
    """For each factor (flat, in :meth:`arrays` order), which dense-kernel axis each of its axes runs along.

    An entry is one of :attr:`KERNEL_AXES` when the factor's axis has that axis's size and its blocks
    split the dense kernel along it (so one sharding of the dense kernel's axes fits the factors), and
    ``None`` for rank, multiplier and mode axes. The NNX layers map ``kernel_init``'s and
    ``kernel_metadata``'s sharding names onto the factors with it.
    """
    raise NotImplementedError

  def reconstruction_macs(self) -> int:
    """Multiply-accumulates of :meth:`to_dense` (its einsums contracted in their cheapest order).

    The ``"reconstructed"`` path pays them on every call, whatever the batch, which is what makes it lose
    to the factorized path at small batches even where its dense conv is fast.
    """
    raise NotImplementedError

  def arrays(self) -> list[Array]:
    """The factor arrays, flat, in :attr:`_fields` order."""
    leaves: list[Array] = []
    for name in self._fields:
      value = getattr(self, name)
      leaves.extend(value if isinstance(value, tuple) else [value])
    return leaves

  @property
  def dtype(self) -> Any:
    """The result dtype of the factors."""
    return jnp.result_type(*self.arrays())

  def params(self) -> int:
    """Number of parameters of the factors (no bias)."""
    return sum(int(np.prod(a.shape)) for a in self.arrays())

  def dense_params(self) -> int:
    """Number of parameters of the dense kernel it replaces."""
    return math.prod(self.kernel_shape)

  def _geometry(self, input_shape: Sequence[int], strides: Any, padding: Any, dilation: Any) -> Geometry:
    return conv_geometry(input_shape, self.kernel_size, self.in_features, strides, padding, dilation)

  def macs(
    self,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
  ) -> int:
    """Multiply-accumulates of the factorized sequence on ``input_shape`` (NHWC, batch included)."""
    return sum(s.macs for s in self.steps(self._geometry(input_shape, strides, padding, dilation)))

  def dense_macs(
    self,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
  ) -> int:
    """Multiply-accumulates of the dense conv with the reconstructed kernel."""
    g = self._geometry(input_shape, strides, padding, dilation)
    return dense_macs(g, self.kernel_size, self.in_features, self.out_features)

  def plan(
    self,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    implementation: Implementation = "auto",
    depthwise_implementation: str = "auto",
    objective: Objective = "inference",
    backend: str | None = None,
    dtype: Any = None,
    precision: PrecisionLike = None,
  ) -> Plan:
    """Chooses between the factorized sequence and the reconstructed dense conv.

    ``"auto"`` uses the cost model of :mod:`efficonv.planning.cost_model`: each step's MACs divided by the
    throughput of that kind of step on ``backend`` (dense conv, matmul, shift-and-add or grouped depthwise),
    plus a fixed cost per step; for ``objective="training"`` each term is scaled by its forward+backward
    factor. For CP at small rank that picks the factorized path; near full rank the dense conv wins and is
    picked. ``"autotune"`` measures instead (:func:`efficonv.planning.autotune`).

    Args:
      input_shape: NHWC shape of the input.
      strides: int or ``(sh, sw)``.
      padding: any form of :func:`efficonv.kernels.resolve_padding`.
      dilation: kernel dilation.
      implementation: ``"auto"`` (cost model) or ``"autotune"`` (measured) decide;
        ``"factorized"``/``"reconstructed"`` force.
      depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
      objective: ``"inference"`` (forward pass) or ``"training"`` (forward and backward).
      backend: JAX platform; the default backend when ``None``.
      dtype: input dtype, for ``"autotune"``; the format's dtype when ``None``.
      precision: for ``"autotune"``, the precision the conv will run with.

    Returns:
      A :class:`efficonv.planning.Plan`.

    Example:
      >>> import jax
      >>> from efficonv import CP
      >>> CP.init(jax.random.key(0), 64, 64, (3, 3), rank=8).plan((8, 32, 32, 64)).implementation
      'factorized'
    """
    return plan_conv(
      self,
      input_shape,
      strides=strides,
      padding=padding,
      dilation=dilation,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      objective=objective,
      backend=backend,
      dtype=dtype,
      precision=precision,
    )

  def conv(
    self,
    x: Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    implementation: Implementation = "auto",
    depthwise_implementation: str = "auto",
    objective: Objective = "inference",
    precision: PrecisionLike = None,
  ) -> Array:
    """Applies the factorized kernel to ``x``.

    Equal, up to float error, to
    ``lax.conv_general_dilated(x, self.to_dense(), strides, padding, rhs_dilation=dilation)``
    with NHWC/HWIO dimension numbers. On an Explicit mesh it runs data parallel over ``x``'s batch sharding,
    with the factors gathered for the computation (:mod:`efficonv.kernels.sharding`).

    Args:
      x: ``(N, H, W, C_in)``.
      strides: int or ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int, or ``((lo, hi), (lo, hi))``.
      dilation: kernel dilation.
      implementation: ``"factorized"`` (the cheap sequence), ``"reconstructed"`` (build the dense kernel,
        one dense conv), ``"auto"`` (cost model) or ``"autotune"`` (measured once per shape; see
        :meth:`plan`).
      depthwise_implementation: for formats with a depthwise step: ``"auto"``, ``"shift"`` (shift-and-add)
        or ``"xla"`` (grouped conv).
      objective: what ``"auto"``/``"autotune"`` optimise: ``"inference"`` (forward) or ``"training"``
        (forward and backward).
      precision: passed to XLA.

    Returns:
      ``(N, H', W', C_out)``.
    """
    opt.check_input(x, channels=self.in_features)
    # On an Explicit mesh: data parallel over x's batch sharding, the factors gathered (efficonv.kernels.sharding).
    x, fmt = data_parallel(x, self)

    def decide(backend: str) -> tuple[str, str | None, str | None]:
      p = fmt.plan(
        x.shape,
        strides=strides,
        padding=padding,
        dilation=dilation,
        implementation=implementation,
        depthwise_implementation=depthwise_implementation,
        objective=objective,
        backend=backend,
        dtype=x.dtype,
        precision=precision,
      )
      if p.implementation != "reconstructed":
        return p.implementation, p.depthwise, None
      itemsize = jnp.dtype(jnp.result_type(x, fmt.dtype)).itemsize
      dense, _ = dense_implementation(
        x.shape, fmt.kernel_shape, strides, padding, dilation, backend=backend, itemsize=itemsize
      )
      return p.implementation, None, dense

    def run(choice: tuple[str, str | None, str | None], x: Array) -> Array:
      impl, depthwise, dense = choice
      if impl == "reconstructed":
        kernel = fmt.to_dense(precision=precision).astype(fmt.dtype)
        return dense_conv(
          x,
          kernel,
          strides=strides,
          padding=padding,
          dilation=dilation,
          precision=precision,
          implementation=dense or "auto",
        )
      return fmt._factorized(x, strides, padding, dilation, depthwise or "auto", precision)

    # One plan per platform planned for (efficonv.planning.plan_for), checked against the lowering platform.
    return dispatch(x, decide, run, probe=implementation != "autotune")

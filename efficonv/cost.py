"""The cost model: parameter and multiply-accumulate (MAC) counts you can trust.

Two functions cover every object efficonv deals with:

* :func:`params` — number of parameters.
* :func:`macs` — multiply-accumulates of one forward pass on an input shape.

and :func:`macs_of_fn` / :func:`macs_of_jaxpr` count the MACs of any JAX
function by walking its jaxpr.

What :func:`macs` dispatches on, in this order:

1. A factor format (:class:`efficonv.CP`, ...): the format's own
   :meth:`~efficonv.Format.macs`, i.e. the MACs of the factorized sequence (the
   formulas live in the formats, once).
2. An object with the cost protocol — a method ``cost_macs(input_shape) -> int``
   (and, for :func:`params`, ``cost_params() -> int``). efficonv's NNX layers
   implement it: they report the MACs of their factorized sequence with their
   own strides, padding and dilation.
3. Any :class:`flax.nnx.Module` (``nnx.Conv``, ``nnx.Linear``, a whole model):
   its forward pass is traced on an input of ``input_shape`` and the MACs of
   the jaxpr are counted (:func:`macs_of_jaxpr`). This is exact for any model
   structure and always counts what actually runs (e.g. the reconstructed
   dense conv where a layer's ``implementation="auto"`` picks it).

A stack of layers made by ``nnx.vmap`` over a layer's constructor (every parameter with leading stack
axes, applied with ``nnx.scan``) counts every layer: its parameters all, its MACs those of each layer
on ``input_shape`` (the input each layer gets) times the number of layers. efficonv's layers do so
themselves; a stack of ``nnx.Conv`` is counted here.
4. A dense HWIO kernel array ``(kh, kw, C_in, C_out)``: the dense convolution.

Counting conventions:

* One MAC is one product that is accumulated into an output; FLOPs ≈ 2·MACs.
  The batch is included.
* Counts are nominal: a conv output element costs every tap of the kernel,
  including taps that fall on zero padding or on the holes of an
  ``lhs_dilation`` (transposed conv). This matches the formats' formulas.
* Bias adds, activations, normalization, pooling, residual adds and other
  elementwise work are not MACs. The one exception is a contraction that a
  kernel runs as elementwise ``mul`` + ``add`` (the shift-and-add depthwise
  conv): it marks its multiplies with
  :func:`efficonv.kernels._mac_scope.elementwise_macs` and they are counted,
  so tracing a factorized layer gives the same MACs as its format, on either
  depthwise path.
* In a jaxpr: ``conv_general_dilated`` costs
  ``N·H'·W'·kh·kw·(C_in/groups)·C_out`` (the output size times the kernel's
  spatial size times its input features); ``dot_general`` costs the output
  size times the contracted size; a ``scan`` costs ``length`` times its body;
  a ``cond`` costs its branches' (common) MACs.

Relation to XLA (measured with jax 0.10.2 on CPU,
``jax.jit(f).lower(x).compile().cost_analysis()["flops"]``): XLA counts 2 flops
per conv or dot MAC but, for convolutions, only the taps that land on real
input (padding taps are skipped), and 1 flop per element for elementwise ops.
So for a program made of convs and dots with ``VALID`` padding,
``flops == 2 * macs`` exactly; with ``SAME`` padding XLA reports less; and a
shift-and-add depthwise step (``kh·kw`` multiplies, ``kh·kw - 1`` adds and one
identity ``reduce_precision`` per output, see :func:`efficonv.kernels.depthwise.fusion_fence`)
reports ``2·MACs``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> import efficonv
  >>> from efficonv import cost
  >>> conv = nnx.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0))
  >>> cost.params(conv), cost.macs(conv, (1, 8, 8, 16))
  (4640, 294912)
  >>> f = efficonv.CP(jnp.ones((16, 4)), jnp.ones((3, 4)), jnp.ones((3, 4)), jnp.ones((4, 32)))
  >>> cost.params(f), cost.macs(f, (1, 8, 8, 16))
  (216, 14016)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficonv.formats import Format
from efficonv.kernels import _options as opt
from efficonv.kernels._mac_scope import MAC_SCOPE
from efficonv.kernels.shapes import conv_geometry, dense_macs
from efficonv.typing import Dtype

__all__ = ["macs", "macs_of_fn", "macs_of_jaxpr", "params"]

_SUPPORTED = (
  "an efficonv format, an object with cost_params()/cost_macs(input_shape) "
  "(efficonv's NNX layers), a flax.nnx.Module, or a dense HWIO kernel array"
)


def params(obj: Any) -> int:
  """Number of parameters of ``obj``.

  Args:
    obj: an efficonv format (its factors; no bias), an object with a
      ``cost_params() -> int`` method (efficonv's NNX layers: factors and
      bias), a :class:`flax.nnx.Module` (the total size of its
      :class:`flax.nnx.Param` leaves — biases and normalization scales
      included, batch statistics and RNG state excluded), or an array (its
      size; e.g. a dense HWIO kernel).

  Returns:
    The parameter count.

  Raises:
    ValueError: naming ``obj`` when its type is not one of the above.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv import cost
    >>> cost.params(nnx.Conv(3, 8, (3, 3), rngs=nnx.Rngs(0)))  # 3·3·3·8 + 8
    224
    >>> cost.params(jnp.zeros((3, 3, 3, 8)))
    216
  """
  if isinstance(obj, Format):
    return obj.params()
  if callable(getattr(obj, "cost_params", None)):
    return int(obj.cost_params())
  if isinstance(obj, nnx.Module):
    leaves = jax.tree.leaves(nnx.state(obj, nnx.Param))
    return sum(math.prod(leaf.shape) for leaf in leaves if hasattr(leaf, "shape"))
  if _is_array(obj):
    return math.prod(obj.shape)
  raise ValueError(f"obj must be {_SUPPORTED}; got {type(obj).__name__}")


def macs(
  obj: Any,
  input_shape: Sequence[int],
  *,
  strides: int | Sequence[int] | None = None,
  padding: opt.PaddingLike | None = None,
  dilation: int | Sequence[int] | None = None,
  dtype: Dtype = jnp.float32,
) -> int:
  """Multiply-accumulates of one forward pass of ``obj`` on ``input_shape``.

  See the module docstring for the dispatch order and counting conventions
  (nominal counts, bias adds and other elementwise work excluded).

  Args:
    obj: an efficonv format, an object with ``cost_macs(input_shape)``
      (efficonv's NNX layers), a :class:`flax.nnx.Module` (traced), or a dense
      HWIO kernel ``(kh, kw, C_in, C_out)``.
    input_shape: shape of the input, NHWC ``(N, H, W, C_in)`` for formats,
      kernels and conv layers (batch included in the count); any shape the
      module accepts for a traced module.
    strides: conv strides, int or ``(sh, sw)``; formats and kernels only
      (default 1). Layers and modules use their own.
    padding: ``"SAME"`` (default), ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``,
      an int or ``((lo, hi), (lo, hi))``; formats and kernels only.
    dilation: kernel dilation; formats and kernels only (default 1).
    dtype: dtype of the example input a module is traced with.

  Returns:
    The MAC count (a Python int).

  Raises:
    ValueError: naming ``obj`` for an unsupported type, ``input_shape`` when
      it is not a shape the object accepts (rank, channels), and
      ``strides``/``padding``/``dilation`` when given for an object that has
      its own.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv import cost
    >>> kernel = jnp.zeros((3, 3, 16, 32))
    >>> cost.macs(kernel, (2, 8, 8, 16), strides=2)  # 2·4·4 · 3·3·16·32
    147456
  """
  conv_options = {"strides": strides, "padding": padding, "dilation": dilation}
  if isinstance(obj, Format):
    shape = _check_input_shape(input_shape, rank=4, channels=obj.in_features)
    return obj.macs(shape, **_with_defaults(conv_options))
  if callable(getattr(obj, "cost_macs", None)):
    _reject_conv_options(obj, conv_options)
    shape = _check_input_shape(input_shape, channels=_in_features(obj))
    return int(obj.cost_macs(shape))
  if isinstance(obj, nnx.Module):
    _reject_conv_options(obj, conv_options)
    return _traced_module_macs(obj, input_shape, dtype)
  if _is_array(obj):
    if len(obj.shape) != 4:
      raise ValueError(f"obj as a dense kernel must be HWIO (kh, kw, C_in, C_out) of rank 4, got shape {obj.shape}")
    kh, kw, cin, cout = (int(v) for v in obj.shape)
    shape = _check_input_shape(input_shape, rank=4, channels=cin)
    options = _with_defaults(conv_options)
    g = conv_geometry(shape, (kh, kw), cin, options["strides"], options["padding"], options["dilation"])
    return dense_macs(g, (kh, kw), cin, cout)
  raise ValueError(f"obj must be {_SUPPORTED}; got {type(obj).__name__}")


def macs_of_fn(fn: Callable[..., Any], *args: Any, **static_kwargs: Any) -> int:
  """MACs of ``fn(*args, **static_kwargs)``, counted on its jaxpr.

  ``fn`` is traced with :func:`jax.make_jaxpr` (nothing is computed, so
  ``args`` may be :class:`jax.ShapeDtypeStruct`) and the jaxpr is counted by
  :func:`macs_of_jaxpr`, recursing into ``jit``, ``custom_jvp``/``custom_vjp``,
  ``checkpoint`` and call sub-jaxprs.

  Args:
    fn: a function of arrays, or a :class:`flax.nnx.Module` (its state is
      passed through :func:`flax.nnx.split`/:func:`flax.nnx.merge`, so modules
      that update batch statistics or RNG counters can be traced and are left
      untouched).
    *args: example arguments, traced (arrays, ``ShapeDtypeStruct``\\ s, pytrees).
    **static_kwargs: keyword arguments passed as they are, not traced (e.g.
      ``train=False``).

  Returns:
    The MAC count.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from efficonv import cost
    >>> x = jax.ShapeDtypeStruct((8, 5), jnp.float32)
    >>> w = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    >>> cost.macs_of_fn(lambda x, w: jnp.tanh(x @ w) @ w.T, x, w)  # 8·5·3 + 8·3·5
    240
  """
  if isinstance(fn, nnx.Module):
    graphdef, state = nnx.split(fn)

    def forward(state: Any, *inputs: Any) -> Any:
      return nnx.merge(graphdef, state)(*inputs, **static_kwargs)

    return macs_of_jaxpr(jax.make_jaxpr(forward)(state, *args))
  return macs_of_jaxpr(jax.make_jaxpr(lambda *inputs: fn(*inputs, **static_kwargs))(*args))


def macs_of_jaxpr(jaxpr: jex.ClosedJaxpr | jex.Jaxpr) -> int:
  """MACs of a (closed) jaxpr: its convs, dots and marked elementwise multiplies.

  Args:
    jaxpr: e.g. the result of :func:`jax.make_jaxpr`.

  Returns:
    The MAC count.

  Raises:
    ValueError: naming ``jaxpr`` when MACs sit inside a ``while`` loop (its
      trip count is unknown at trace time; ``lax.scan`` and ``fori_loop`` with
      static bounds are counted), inside a ``cond`` whose branches differ in
      MACs, or inside an unknown primitive with several sub-jaxprs.
  """
  if isinstance(jaxpr, jex.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  if not isinstance(jaxpr, jex.Jaxpr):
    raise ValueError(f"jaxpr must be a jax ClosedJaxpr or Jaxpr, got {type(jaxpr).__name__}")
  return _count(jaxpr, in_mac_scope=False)


def _count(jaxpr: jex.Jaxpr, in_mac_scope: bool) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    # Sub-jaxprs carry name stacks relative to their call site, so the scope is inherited.
    scoped = in_mac_scope or MAC_SCOPE in str(eqn.source_info.name_stack)
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif name == "dot_general":
      total += _dot_macs(eqn)
    elif name == "mul":
      total += _size(eqn.outvars[0]) if scoped else 0
    elif name == "scan":
      total += int(eqn.params["length"]) * _count(eqn.params["jaxpr"].jaxpr, scoped)
    elif name == "while":
      inner = _count(eqn.params["body_jaxpr"].jaxpr, scoped) + _count(eqn.params["cond_jaxpr"].jaxpr, scoped)
      if inner:
        raise ValueError(
          f"jaxpr has a while loop with {inner} MACs per iteration and a trip count unknown at trace time; "
          "use lax.scan (or fori_loop with static bounds) to count it"
        )
    elif name == "cond":
      branches = {_count(b.jaxpr, scoped) for b in eqn.params["branches"]}
      if len(branches) > 1:
        raise ValueError(f"jaxpr has a cond whose branches cost different MACs {sorted(branches)}; no single count")
      total += branches.pop()
    else:
      subs = list(jex.jaxprs_in_params(eqn.params))
      if len(subs) == 1:  # jit, closed_call, checkpoint, custom_jvp_call, custom_vjp_call, ...
        total += _count(subs[0], scoped)
      elif subs:
        raise ValueError(f"jaxpr has a {name!r} with {len(subs)} sub-jaxprs; efficonv.cost cannot tell which runs")
  return total


def _size(var: Any) -> int:
  return math.prod(var.aval.shape)


def _shape(var: Any) -> tuple[int, ...]:
  return var.aval.shape


def _conv_macs(eqn: jex.JaxprEqn) -> int:
  # rhs_spec = (out-feature dim, in-feature dim, *spatial dims). The in-feature
  # size is already C_in / feature_group_count, and with batch_group_count the
  # output's batch is already divided, so this holds for grouped convs too.
  rhs_shape = _shape(eqn.invars[1])
  dims = eqn.params["dimension_numbers"]
  rhs_spec = dims.rhs_spec if dims is not None else tuple(range(len(rhs_shape)))
  taps = math.prod(rhs_shape[d] for d in rhs_spec[2:])
  return _size(eqn.outvars[0]) * taps * int(rhs_shape[rhs_spec[1]])


def _dot_macs(eqn: jex.JaxprEqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = _shape(eqn.invars[0])
  return _size(eqn.outvars[0]) * math.prod(lhs_shape[d] for d in lhs_contract)


def _traced_module_macs(model: nnx.Module, input_shape: Sequence[int], dtype: Dtype) -> int:
  shape = _check_input_shape(input_shape, channels=_in_features(model))
  if isinstance(model, nnx.Conv):
    spatial = len(model.kernel_size)
    stack = model.kernel.shape[: model.kernel.ndim - spatial - 2]
    if stack:  # a stack of convs (nnx.vmap over the constructor): each layer on input_shape
      graphdef, state = nnx.split(model)
      k = len(stack)  # one layer's shapes are enough: the trace computes nothing
      one = nnx.merge(graphdef, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[k:], a.dtype), state))
      return math.prod(stack) * _traced_module_macs(one, shape, dtype)
    if len(shape) not in (spatial + 1, spatial + 2):
      raise ValueError(
        f"input_shape must be (N, *spatial, C) with {spatial} spatial axes (rank {spatial + 2}) for "
        f"{type(model).__name__} with kernel_size {tuple(model.kernel_size)}, got {shape}"
      )
  try:
    return macs_of_fn(model, jax.ShapeDtypeStruct(shape, dtype))
  except (TypeError, ValueError) as e:
    raise ValueError(f"input_shape {shape} is not an input {type(model).__name__} accepts: {e}") from e


def _check_input_shape(input_shape: Any, *, rank: int | None = None, channels: int | None = None) -> tuple[int, ...]:
  if _is_array(input_shape) or isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
    raise ValueError(f"input_shape must be a sequence of ints such as x.shape, got {type(input_shape).__name__}")
  try:
    shape = tuple(int(v) for v in input_shape)
  except TypeError as e:
    raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from e
  if any(v < 1 for v in shape):
    raise ValueError(f"input_shape must have positive sizes, got {shape}")
  if rank == 4 and len(shape) != 4:
    raise ValueError(f"input_shape must be NHWC (N, H, W, C) of rank 4, got {shape}")
  if rank is not None and len(shape) != rank:
    raise ValueError(f"input_shape must have rank {rank}, got {shape}")
  if channels is not None and (not shape or shape[-1] != channels):
    raise ValueError(f"input_shape must have {channels} channels in its last axis, got {shape}")
  return shape


def _in_features(obj: Any) -> int | None:
  value = getattr(obj, "in_features", None)
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def _with_defaults(options: dict[str, Any]) -> dict[str, Any]:
  defaults = {"strides": 1, "padding": "SAME", "dilation": 1}
  return {k: defaults[k] if v is None else v for k, v in options.items()}


def _reject_conv_options(obj: Any, options: dict[str, Any]) -> None:
  for name, value in options.items():
    if value is not None:
      raise ValueError(
        f"{name} applies to formats and dense kernels only; {type(obj).__name__} uses its own, got {name}={value!r}"
      )


def _is_array(obj: Any) -> bool:
  return isinstance(obj, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))

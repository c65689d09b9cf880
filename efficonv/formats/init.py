"""Random factor initialization that preserves the dense kernel's variance.

:class:`flax.nnx.Conv` initializes its kernel with LeCun normal: every entry has
variance ``1 / fan_in`` with ``fan_in = kh·kw·C_in``. A factorized kernel is a
sum of ``P`` products of ``q`` independent zero-mean factors, so an entry of
the reconstructed kernel has variance ``P·∏σ_i²``. Setting every factor to

.. math:: \\sigma^2 = \\left(\\frac{1}{\\mathrm{fan\\_in} \\cdot P}\\right)^{1/q}

gives the reconstructed kernel exactly LeCun's variance, for any rank (a peer,
tltorch, returns std 0.0003 for its TT layers where 0.02 is asked). With another
initializer of the dense kernel (``kernel_init``), its variance replaces ``1 / fan_in``
(:func:`init_factors`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from efficonv.typing import Array, Dtype

Initializer = Callable[[jax.Array, Sequence[int], Dtype], Array]


def factor_std(fan_in: int, n_terms: int, n_factors: int, scale: float = 1.0) -> float:
  """Standard deviation of each factor so the product has variance ``scale / fan_in``.

  Args:
    fan_in: ``kh·kw·C_in`` of the dense kernel.
    n_terms: ``P``, the number of rank-one (or chain) terms summed per entry.
    n_factors: ``q``, the number of factors multiplied in each term.
    scale: variance scale (1 for LeCun).

  Returns:
    The per-factor standard deviation.
  """
  return (scale / (fan_in * n_terms)) ** (1.0 / (2 * n_factors))


def kernel_variance(initializer: Initializer, key: jax.Array, kernel_shape: Sequence[int], dtype: Dtype) -> Array:
  """The variance of ``initializer``'s draw of the dense kernel ``kernel_shape``, measured on one draw.

  Initializers are opaque functions of the shape (a variance-scaling initializer computes its fan-in from
  it), so one dense draw is the one way to learn the variance they target; it costs what
  :class:`flax.nnx.Conv` spends on its kernel, once, at initialization.

  Raises:
    ValueError: naming ``kernel_init`` when the draw (if concrete) has a mean far from zero: a product of
      zero-mean factors can match a variance, not a mean (``ones``, ``constant(c)``).

  Example:
    >>> import jax
    >>> v = kernel_variance(jax.nn.initializers.lecun_normal(), jax.random.key(0), (3, 3, 16, 16), "float32")
    >>> abs(float(v) * 3 * 3 * 16 - 1) < 0.1
    True
  """
  dense = jnp.asarray(initializer(key, tuple(kernel_shape), dtype), jnp.float32)
  mean, variance = jnp.mean(dense), jnp.var(dense)
  try:
    m, v = float(mean), float(variance)
  except jax.errors.ConcretizationTypeError:  # traced (e.g. under nnx.eval_shape): nothing to check
    return variance
  if abs(m) > 5 * (v / dense.size) ** 0.5:
    raise ValueError(
      f"kernel_init must draw zero-mean kernels for a factorized layer (its factors are scaled to match the "
      f"kernel's variance, not its mean), got a {tuple(kernel_shape)} draw with mean {m:.3g} and std {v**0.5:.3g}"
    )
  return variance


def init_factors(
  key: jax.Array,
  shapes: Sequence[Sequence[int]],
  n_terms: int,
  kernel_shape: Sequence[int],
  dtype: Dtype = jnp.float32,
  initializer: Initializer | None = None,
) -> list[Array]:
  """Draws normal factors of the given ``shapes`` whose reconstructed kernel has the target variance.

  The target is LeCun's ``1 / fan_in`` (``fan_in = kh·kw·C_in``), or, with ``initializer``, the variance of
  ``initializer``'s draw of the dense kernel (:func:`kernel_variance`): the initializer describes the
  *dense* kernel, as ``kernel_init`` does for :class:`flax.nnx.Conv`, and every factor gets the std of
  :func:`factor_std` for that variance. A zero variance (``zeros``) zeroes the last factor only and draws
  the others for LeCun's variance, so the kernel starts at zero and the gradients still reach every factor.

  Args:
    key: PRNG key.
    shapes: one shape per factor.
    n_terms: number of terms summed per reconstructed entry.
    kernel_shape: ``(kh, kw, C_in, C_out)`` of the dense kernel.
    dtype: parameter dtype.
    initializer: the dense kernel's initializer (``None``: LeCun normal's variance).

  Returns:
    The factors, in order.

  Raises:
    ValueError: from :func:`kernel_variance`, for an initializer whose draws are not zero-mean.
  """
  kh, kw, cin, _ = (int(v) for v in kernel_shape)
  fan_in = kh * kw * cin
  *keys, dense_key = jax.random.split(key, len(shapes) + 1)
  lecun = factor_std(fan_in, n_terms, len(shapes))
  if initializer is None:
    stds: list[Any] = [lecun] * len(shapes)
  else:
    variance = kernel_variance(initializer, dense_key, kernel_shape, dtype)
    matched = lecun * (variance * fan_in) ** (1.0 / (2 * len(shapes)))
    last = len(shapes) - 1
    stds = [jnp.where(variance > 0, matched, 0.0 if i == last else lecun) for i in range(len(shapes))]
  return [(std * jax.random.normal(k, tuple(s), dtype)).astype(dtype) for std, k, s in zip(stds, keys, shapes)]


def balanced_modes(n: int, d: int) -> tuple[int, ...]:
  """Factors ``n`` into ``d`` integers as equal as possible (largest first).

  Example:
    >>> balanced_modes(64, 2), balanced_modes(96, 3)
    ((8, 8), (6, 4, 4))
  """
  if n < 1 or d < 1:
    raise ValueError(f"balanced_modes needs n >= 1 and d >= 1, got n={n}, d={d}")
  primes = []
  m, p = n, 2
  while p * p <= m:
    while m % p == 0:
      primes.append(p)
      m //= p
    p += 1
  if m > 1:
    primes.append(m)
  modes = [1] * d
  for q in sorted(primes, reverse=True):
    modes[modes.index(min(modes))] *= q
  return tuple(sorted(modes, reverse=True))

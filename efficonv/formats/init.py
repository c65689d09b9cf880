"""Random factor initialization that preserves the dense kernel's variance.

:class:`flax.nnx.Conv` initializes its kernel with LeCun normal: every entry has
variance ``1 / fan_in`` with ``fan_in = kh·kw·C_in``. A factorized kernel is a
sum of ``P`` products of ``q`` independent zero-mean factors, so an entry of
the reconstructed kernel has variance ``P·∏σ_i²``. Setting every factor to

.. math:: \\sigma^2 = \\left(\\frac{1}{\\mathrm{fan\\_in} \\cdot P}\\right)^{1/q}

gives the reconstructed kernel exactly LeCun's variance, for any rank (a peer,
tltorch, returns std 0.0003 for its TT layers where 0.02 is asked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def init_factors(
  key: jax.Array,
  shapes: Sequence[Sequence[int]],
  n_terms: int,
  fan_in: int,
  dtype: Dtype = jnp.float32,
  initializer: Initializer | None = None,
) -> list[Array]:
  """Draws factors of the given ``shapes``.

  Args:
    key: PRNG key.
    shapes: one shape per factor.
    n_terms: number of terms summed per reconstructed entry.
    fan_in: fan-in of the dense kernel.
    dtype: parameter dtype.
    initializer: when given, each factor is ``initializer(key, shape, dtype)``
      instead (no variance matching).

  Returns:
    The factors, in order.
  """
  keys = jax.random.split(key, len(shapes))
  if initializer is not None:
    return [initializer(k, tuple(s), dtype) for k, s in zip(keys, shapes)]
  std = factor_std(fan_in, n_terms, len(shapes))
  return [std * jax.random.normal(k, tuple(s), dtype) for k, s in zip(keys, shapes)]


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

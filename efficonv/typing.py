"""Type aliases shared across efficonv."""

from __future__ import annotations

from typing import Any, Union

import jax
import numpy as np

Array = jax.Array
ArrayLike = Union[jax.Array, np.ndarray]
Dtype = Any
PrecisionLike = Union[None, str, jax.lax.Precision, tuple[Any, Any]]

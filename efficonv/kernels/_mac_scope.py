"""Marks elementwise multiplies that are multiply-accumulates, for :mod:`efficonv.cost`.

:func:`efficonv.cost.macs_of_fn` counts the MACs of a traced function from its
``conv_general_dilated`` and ``dot_general`` equations. A kernel that runs a
contraction as elementwise ``mul`` + ``add`` (the shift-and-add depthwise conv)
traces its loop inside :func:`elementwise_macs`; the counter then counts every
``mul`` inside that scope as one MAC per output element, and no other ``mul``.
The scope is a :func:`jax.named_scope`: metadata only, it changes no computation.
"""

from __future__ import annotations

import contextlib

import jax

MAC_SCOPE = "efficonv_elementwise_macs"


def elementwise_macs() -> contextlib.AbstractContextManager[None]:
  """Context manager: every ``mul`` traced inside is one MAC per output element."""
  return jax.named_scope(MAC_SCOPE)

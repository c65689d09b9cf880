"""The optimizer: AdamW or SGD with momentum, linear warm-up then cosine decay, decay of kernels only."""

from __future__ import annotations

from typing import Any

import jax
import optax

from experiments.common.config import OptimConfig

OPTIMIZERS = ("adamw", "sgd")


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over ``warmup_fraction`` of the steps, then cosine decay.

  .. math::
    \\eta(t) = \\eta_0 \\frac{t}{T_w} \\ (t < T_w), \\qquad
    \\eta(t) = \\eta_0 \\Big(f + (1 - f)\\,\\frac{1 + \\cos(\\pi (t - T_w) / (T - T_w))}{2}\\Big) \\ (t \\ge T_w)

  with :math:`f` = ``end_lr_fraction``.

  Args:
    cfg: the optimizer config.
    total_steps: ``T``, all training steps.

  Returns:
    The schedule, step → learning rate.

  Raises:
    ValueError: naming ``total_steps`` when it is not positive.
  """
  if total_steps < 1:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  warmup = min(round(cfg.warmup_fraction * total_steps), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.learning_rate,
    warmup_steps=warmup,
    decay_steps=total_steps,
    end_value=cfg.learning_rate * cfg.end_lr_fraction,
  )


def decay_mask(params: Any) -> Any:
  """``True`` for the leaves to decay: arrays with two or more axes (kernels and factors, not biases or norms)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """Builds the optimizer.

  * ``"adamw"``: Adam with decoupled weight decay ``weight_decay · lr`` (Loshchilov & Hutter 2019).
  * ``"sgd"``: L2 weight decay added to the gradient, then SGD with (Nesterov) momentum.

  Both optionally clip the global gradient norm first.

  Args:
    cfg: the optimizer config.
    total_steps: all training steps (for the schedule).

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: naming ``cfg.name`` when it is not one of :data:`OPTIMIZERS`.
  """
  schedule = learning_rate_schedule(cfg, total_steps)
  parts = [] if cfg.clip_norm is None else [optax.clip_by_global_norm(cfg.clip_norm)]
  if cfg.name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_mask))
  elif cfg.name == "sgd":
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
  else:
    raise ValueError(f"cfg.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
  return optax.chain(*parts)

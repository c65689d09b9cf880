"""Strict JAX settings for the whole suite (equinox style): no implicit rank promotion."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

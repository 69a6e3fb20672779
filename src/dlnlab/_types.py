"""Type aliases shared by every package (one place; import them from here)."""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
"""A JAX array."""

PyTree = Any
"""A JAX pytree (nested tuples / NamedTuples / dataclass pytrees of arrays)."""

Weights = tuple
"""Weights ``(W_1, ..., W_L)``, ``W_l`` of shape ``(d_l, d_{l-1})`` (optionally with run axes)."""

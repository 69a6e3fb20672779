"""Up-front argument checks that fail with one line: the argument, its value and the rule.

Checks run only on concrete values: inside ``jit``/``vmap`` the values are tracers and the
checks are skipped (shapes, which are static, are still checked).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


def is_concrete(value) -> bool:
    """True when ``value`` holds numbers (not a JAX tracer inside a transformation)."""
    leaves = jax.tree_util.tree_leaves(value)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


SHOW_LIMIT = 80
"""Longest echo of a value in an error message (characters); longer ones end in ``...``."""


def shorten(text: str, limit: int = SHOW_LIMIT) -> str:
    """``text`` on one line and at most ``limit`` characters (``...`` marks a cut)."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def show(value) -> str:
    """Short printable form of a value for an error message: one line, at most
    :data:`SHOW_LIMIT` characters (arrays of more than 8 entries by their shape)."""
    if isinstance(value, np.ndarray | jax.Array):
        arr = np.asarray(value)
        if arr.size <= 8:
            return shorten(np.array2string(arr.ravel() if arr.ndim > 1 else arr, precision=6,
                                           separator=","))
        return f"array of shape {arr.shape}"
    return shorten(repr(value))


def fail(name: str, value, rule: str) -> None:
    """Raise the one-line error: ``name=value: rule``."""
    raise ValueError(f"{name}={show(value)}: {rule}")


def check(condition: bool, name: str, value, rule: str) -> None:
    if not condition:
        fail(name, value, rule)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        fail(name, value, "must be an integer >= 1")
    return int(value)


def finite_scalar(name: str, value, *, minimum: float | None = None, strict: bool = False,
                  maximum: float | None = None) -> None:
    """Check a scalar (skipped for tracers): finite and within bounds."""
    if not is_concrete(value):
        return
    try:
        arr = np.asarray(value, dtype=np.float64)  # scalars or per-mode arrays: every entry
    except (TypeError, ValueError, OverflowError):
        fail(name, value, "must be a real number (or an array of them)")
    if not np.all(np.isfinite(arr)):
        fail(name, value, "must be finite")
    if minimum is not None:
        bad = np.any(arr <= minimum) if strict else np.any(arr < minimum)
        if bad:
            fail(name, value, f"must be {'>' if strict else '>='} {minimum:g}")
    if maximum is not None and np.any(arr > maximum):
        fail(name, value, f"must be <= {maximum:g}")


def finite_array(name: str, value) -> None:
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        fail(name, value, "must contain only finite values")


def psd_matrix(name: str, matrix, size: int | None = None) -> None:
    """Symmetric positive semidefinite, up to a relative tolerance of rounding size."""
    if not is_concrete(matrix):
        return
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        fail(name, matrix, f"must be a square matrix, got shape {m.shape}")
    if size is not None and m.shape[0] != size:
        fail(name, matrix, f"must have shape ({size}, {size}), got {m.shape}")
    if not np.all(np.isfinite(m)):
        fail(name, matrix, "must contain only finite values")
    scale = max(np.abs(m).max(), 1e-300)
    if np.abs(m - m.T).max() > 1e-6 * scale:
        fail(name, matrix, "must be symmetric")
    if np.linalg.eigvalsh(m).min() < -1e-6 * scale:
        fail(name, matrix, "must be positive semidefinite (an eigenvalue is negative)")


def widths_tuple(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    """Layer widths ``(d_0, d_1, ..., d_L)``: at least two positive integers."""
    try:
        items = tuple(widths)
    except TypeError:
        fail(name, widths, "must be a sequence of layer widths (d_in, d_1, ..., d_out)")
    if len(items) < 2:
        fail(name, widths, "must list at least d_in and d_out (depth >= 1)")
    for w in items:
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1:
            fail(name, widths, "every width must be an integer >= 1")
    return tuple(int(w) for w in items)


def check_weights(weights, d_in: int | None = None, d_out: int | None = None) -> tuple[int, ...]:
    """Shapes of a weight tuple chain: ``W_l`` is ``(d_l, d_{l-1})``. Returns the widths."""
    if not isinstance(weights, tuple | list) or len(weights) == 0:
        fail("weights", weights if isinstance(weights, tuple | list) else type(weights).__name__,
             "must be a non-empty tuple of 2-D arrays")
    widths = []
    for index, w in enumerate(weights, start=1):
        shape = getattr(w, "shape", None)
        if shape is None or len(shape) != 2:
            fail(f"weights[{index - 1}]", shape, "each layer must be a 2-D array (d_l, d_{l-1})")
        if index == 1:
            widths.append(shape[1])
        elif shape[1] != widths[-1]:
            fail(f"weights[{index - 1}].shape", shape,
                 f"layer {index} must take {widths[-1]} inputs (the previous layer's outputs)")
        widths.append(shape[0])
    if d_in is not None and widths[0] != d_in:
        fail("weights[0].shape", tuple(weights[0].shape), f"first layer must take d_in={d_in} inputs")
    if d_out is not None and widths[-1] != d_out:
        fail("weights[-1].shape", tuple(weights[-1].shape),
             f"last layer must give d_out={d_out} outputs")
    return tuple(int(w) for w in widths)


"""Partial products of a deep linear network (docs/theory.md §1, paper Prop. 3.1).

Weights are a tuple ``(W_1, ..., W_L)``, ``W_l`` of shape ``(d_l, d_{l-1})``. With
``W = W_L ... W_1``:

- ``A_l = W_L ... W_{l+1}`` (shape ``(d_out, d_l)``), the product left of layer l;
- ``B_l = W_{l-1} ... W_1`` (shape ``(d_{l-1}, d_in)``), the product right of layer l;
- ``W = A_l W_l B_l`` for every l; empty products are identities.

All functions are pure and jit/vmap-able; the layer loop is over the (static) depth.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._types import Array


def end_to_end(weights: tuple[Array, ...]) -> Array:
    """``W = W_L ... W_1``, shape ``(d_out, d_in)``."""
    out = weights[0]
    for w in weights[1:]:
        out = w @ out
    return out


def partial_products(weights: tuple[Array, ...]) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """``(A, B)`` with ``A[l-1] = W_L ... W_{l+1}`` and ``B[l-1] = W_{l-1} ... W_1``.

    Computed by one suffix and one prefix sweep: ``2L`` matrix products in all.
    """
    depth = len(weights)
    dtype = weights[0].dtype
    rights = [jnp.eye(weights[0].shape[1], dtype=dtype)]
    for w in weights[:-1]:
        rights.append(w @ rights[-1])
    lefts = [jnp.eye(weights[-1].shape[0], dtype=dtype)]
    for w in reversed(weights[1:]):
        lefts.append(lefts[-1] @ w)
    lefts.reverse()
    assert len(lefts) == len(rights) == depth
    return tuple(lefts), tuple(rights)


def span_product(weights: tuple[Array, ...], first: int, last: int) -> Array:
    """``W_last ... W_first`` for 1-based layer indices; identity when ``last < first``.

    ``C_{ml} = W_{m-1} ... W_{l+1}`` is ``span_product(weights, l + 1, m - 1)``.
    """
    if last < first:
        size = weights[first - 1].shape[1] if first <= len(weights) else weights[-1].shape[0]
        return jnp.eye(size, dtype=weights[0].dtype)
    out = weights[first - 1]
    for w in weights[first:last]:
        out = w @ out
    return out


def layer_widths(weights: tuple[Array, ...]) -> tuple[int, ...]:
    """``(d_0, d_1, ..., d_L)``."""
    return (weights[0].shape[1],) + tuple(w.shape[0] for w in weights)


def num_parameters(weights: tuple[Array, ...]) -> int:
    return sum(w.size for w in weights)


def flatten_weights(weights: tuple[Array, ...]) -> Array:
    """``theta = (vec W_1, ..., vec W_L)`` with column-stacking ``vec`` (docs/theory.md §1)."""
    return jnp.concatenate([w.T.reshape(-1) for w in weights])


def unflatten_weights(theta: Array, widths: tuple[int, ...]) -> tuple[Array, ...]:
    """Inverse of :func:`flatten_weights` for widths ``(d_0, ..., d_L)``."""
    out = []
    offset = 0
    for d_prev, d_next in zip(widths[:-1], widths[1:], strict=True):
        size = d_prev * d_next
        out.append(theta[offset:offset + size].reshape(d_prev, d_next).T)
        offset += size
    return tuple(out)

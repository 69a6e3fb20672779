"""Initialisations: Gaussian, balanced, and aligned-and-balanced states (docs/theory.md §1, §6).

``widths = (d_0, d_1, ..., d_L)`` with ``d_0 = d_in`` and ``d_L = d_out``; the result is a
tuple ``(W_1, ..., W_L)``, ``W_l`` of shape ``(d_l, d_{l-1})``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from .._types import Array
from .products import end_to_end
from .task import Task, random_orthonormal


def _dtype(dtype):
    return jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype


def init_gaussian(key, widths: Sequence[int], gamma: float, dtype=None) -> tuple[Array, ...]:
    """I.i.d. ``N(0, w^-gamma)`` entries, ``w = d_{l-1}`` the layer's fan-in.

    ``gamma = 1`` is the standard (LeCun) scale; ``gamma > 1`` shrinks the end-to-end map as
    depth grows (the rich, saddle-to-saddle regime); the paper's default is ``gamma = 2``.
    """
    widths = v.widths_tuple("widths", widths)
    v.finite_scalar("gamma", gamma, minimum=0.0)
    dtype = _dtype(dtype)
    keys = jax.random.split(key, len(widths) - 1)
    return tuple(
        jax.random.normal(k, (d_next, d_prev), dtype=dtype) * jnp.asarray(
            float(d_prev) ** (-0.5 * float(gamma)), dtype)
        for k, d_prev, d_next in zip(keys, widths[:-1], widths[1:], strict=True)
    )


def balanced_factorization(key, end_to_end_map, widths: Sequence[int],
                           dtype=None) -> tuple[Array, ...]:
    """Balanced weights whose product is ``end_to_end_map`` (Arora et al. 2018).

    With the SVD ``W = U S V^T`` truncated to ``k = min(widths)`` values and hidden bases
    ``O_l`` (``d_l x k``, orthonormal columns, Haar from ``key``; ``O_0 = V``, ``O_L = U``):
    ``W_l = O_l S^(1/L) O_{l-1}^T``. Then ``W_{l+1}^T W_{l+1} = W_l W_l^T = O_l S^(2/L) O_l^T``.
    ``rank(W)`` must not exceed the narrowest hidden width.
    """
    widths = v.widths_tuple("widths", widths)
    w = np.asarray(end_to_end_map, dtype=np.float64)
    if w.shape != (widths[-1], widths[0]):
        v.fail("end_to_end_map.shape", w.shape, f"must be (d_out, d_in) = {(widths[-1], widths[0])}")
    v.finite_array("end_to_end_map", w)
    depth = len(widths) - 1
    k = min(widths)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    if np.any(s[k:] > 1e-10 * max(s[0], 1e-300)):
        v.fail("end_to_end_map", w, f"rank exceeds the narrowest width {k}: no factorization")
    u, s, vv = u[:, :k], s[:k], vt[:k].T
    dtype = _dtype(dtype)
    keys = jax.random.split(key, max(depth - 1, 1))
    bases = [vv] + [np.asarray(random_orthonormal(keys[i], widths[i + 1], k, jnp.float32),
                               dtype=np.float64) for i in range(depth - 1)] + [u]
    bases = [np.linalg.qr(b)[0] if 0 < i < depth else b for i, b in enumerate(bases)]
    root = s ** (1.0 / depth)
    return tuple(jnp.asarray((bases[l + 1] * root) @ bases[l].T, dtype=dtype)
                 for l in range(depth))


def init_balanced(key, widths: Sequence[int], gamma: float, dtype=None) -> tuple[Array, ...]:
    """Balanced counterpart of :func:`init_gaussian`: same end-to-end map, balanced layers.

    Draws the Gaussian initialisation from ``key`` and re-factorises its product with
    :func:`balanced_factorization`, so ``init_gaussian`` and ``init_balanced`` with one key
    give the same function and differ only in balance.
    """
    k_gauss, k_bases = jax.random.split(key)
    gaussian = init_gaussian(k_gauss, widths, gamma, dtype=jnp.float32)
    product = np.asarray(end_to_end(tuple(w.astype(jnp.float32) for w in gaussian)))
    return balanced_factorization(k_bases, product, widths, dtype=dtype)


def init_aligned(task: Task, amplitudes, widths: Sequence[int], key=None,
                 dtype=None) -> tuple[Array, ...]:
    """Aligned and balanced weights with mode amplitudes ``amplitudes`` (docs/theory.md §6).

    Every layer is diagonal in the teacher's bases with per-mode value ``c_a = |a_a|^(1/L)``;
    the last layer carries the sign of ``a_a`` (any sign pattern is allowed). Hidden bases are
    the first ``k`` coordinate vectors (``key=None``) or Haar-random from ``key``:
    ``W_1 = O_1 diag(c) V_k^T``, ``W_l = O_l diag(c) O_{l-1}^T``, ``W_L = U_k diag(sign(a) c)
    O_{L-1}^T``. Then ``u_a^T W v_b = a_a delta_ab`` and ``W_{l+1}^T W_{l+1} = W_l W_l^T``.
    """
    widths = v.widths_tuple("widths", widths)
    if widths[0] != task.d_in or widths[-1] != task.d_out:
        v.fail("widths", widths, f"must start at d_in={task.d_in} and end at d_out={task.d_out}")
    a = np.asarray(amplitudes, dtype=np.float64).ravel()
    v.finite_array("amplitudes", a)
    k = a.size
    if k == 0 or k > task.num_modes:
        v.fail("amplitudes", a, f"must give 1..{task.num_modes} mode amplitudes")
    if k > min(widths):
        v.fail("amplitudes", a, f"{k} modes do not fit through the narrowest width {min(widths)}")
    depth = len(widths) - 1
    dtype = _dtype(dtype) if dtype is not None else task.dtype
    u = np.asarray(task.left, dtype=np.float64)[:, :k]
    vv = np.asarray(task.right, dtype=np.float64)[:, :k]
    if key is None:
        hidden = [np.eye(widths[i], k) for i in range(1, depth)]
    else:
        keys = jax.random.split(key, max(depth - 1, 1))
        hidden = [np.linalg.qr(np.asarray(random_orthonormal(keys[i - 1], widths[i], k,
                                                             jnp.float32), np.float64))[0]
                  for i in range(1, depth)]
    bases = [vv] + hidden + [u]
    c = np.abs(a) ** (1.0 / depth)
    sign = np.where(a < 0, -1.0, 1.0)
    layers = []
    for l in range(depth):
        diag = c * sign if l == depth - 1 else c
        layers.append(jnp.asarray((bases[l + 1] * diag) @ bases[l].T, dtype=dtype))
    return tuple(layers)

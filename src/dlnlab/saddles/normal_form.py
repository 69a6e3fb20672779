"""Gauge-fixed normal form of rank-r critical points and the constraint energy (docs/saddles.md).

Whitened inputs, teacher ``M = U diag(s) V^T`` (``d_out x d_in``). Pick a rank ``r`` and a subset
``S`` of ``r`` teacher directions; ``U_S = U[:, S]`` (``d_out x r``) and ``U_Q``
(``d_out x (d_out - r)``) an orthonormal basis of its complement: the other teacher directions
``U[:, not S]`` first, then a fixed completion of ``U``'s columns. The normal form with residual
blocks ``Z = (Z_1, ..., Z_L)`` is, for depth ``L >= 2`` and widths ``d_l >= r``::

    W_1 = [ U_S^T M ; Z_1 ]            (d_1 x d_0),    Z_1 : (d_1 - r) x d_0
    W_l = blockdiag(I_r, Z_l)          (d_l x d_{l-1}), Z_l : (d_l - r) x (d_{l-1} - r)
    W_L = [ U_S , U_Q Z_L ]            (d_L x d_{L-1}), Z_L : (d_L - r) x (d_{L-1} - r)

so that ``W = W_L ... W_1 = P_S M + U_Q mu(Z)`` with the fibre map ``mu(Z) = Z_L ... Z_1``.
With ``sigma = U_Q^T M`` (``(d_out - r) x d_in``) the cyclic products are

    dmu_l(Z) = Z_{l-1} ... Z_1  sigma^T  Z_L ... Z_{l+1}        (l = 1..L; empty product = I),

of the shape of ``Z_l^T``, and the constraint energy is
``E(Z) = 0.5 ||mu||_F^2 + 0.5 sum_l ||dmu_l||_F^2``.

Exact identities (derived in docs/saddles.md, tested in tests/test_saddles_normal_form.py):

- the population gradient at the assembled weights is, whenever ``mu = 0``,
  ``grad_{W_1} = [0; -dmu_1^T]``, ``grad_{W_l} = blockdiag(0, -dmu_l^T)``,
  ``grad_{W_L} = [0, -U_Q dmu_L^T]``, hence ``||grad L||_F^2 = 2 E(Z)`` on the fibre ``mu = 0``;
- ``E(Z) = 0`` iff ``grad L = 0`` and ``rank W = r`` (a critical point with ``mu != 0`` has
  rank above ``r``: it belongs to a larger stratum, and ``E > 0`` there);
- two zero blocks ``Z_a = Z_b = 0`` (``a != b``) give ``E = 0`` exactly: every ``dmu_l`` and ``mu``
  contain at least one of them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from .._types import Array
from ..core.task import Task

Residuals = tuple[Array, ...]


class NormalForm(NamedTuple):
    """The fixed matrices of the normal form for one rank ``r`` and subset ``S`` (a pytree).

    - ``signal_left`` ``(d_out, r)``: ``U_S``;
    - ``complement`` ``(d_out, d_out - r)``: ``U_Q``, orthonormal, ``U_S^T U_Q = 0``;
    - ``signal_right`` ``(r, d_in)``: ``U_S^T M`` (first rows of ``W_1``);
    - ``sigma`` ``(d_out - r, d_in)``: ``sigma = U_Q^T M`` (the cyclic constraints' matrix).
    """

    signal_left: Array
    complement: Array
    signal_right: Array
    sigma: Array

    @property
    def rank(self) -> int:
        return self.signal_left.shape[1]

    @property
    def d_in(self) -> int:
        return self.sigma.shape[1]

    @property
    def d_out(self) -> int:
        return self.signal_left.shape[0]


def subset_tuple(task: Task, subset: Sequence[int]) -> tuple[int, ...]:
    """Validated subset ``S``: distinct mode indices (0-based) of non-zero singular values."""
    try:
        items = tuple(subset)
    except TypeError:
        v.fail("subset", subset, "must be a sequence of mode indices (0-based)")
    for a in items:
        if isinstance(a, bool) or not isinstance(a, int | np.integer):
            v.fail("subset", subset, "mode indices must be integers")
    items = tuple(int(a) for a in items)
    if len(set(items)) != len(items):
        v.fail("subset", subset, "mode indices must be distinct")
    m = task.num_modes
    if any(a < 0 or a >= m for a in items):
        v.fail("subset", subset, f"mode indices must lie in 0..{m - 1} (the teacher has {m} modes)")
    s = np.asarray(task.spectrum, dtype=np.float64)
    if any(s[a] <= 0.0 for a in items):
        v.fail("subset", subset, "must index non-zero singular values (so that rank(P_S M) = r)")
    return tuple(sorted(items))


def normal_form(task: Task, subset: Sequence[int]) -> NormalForm:
    """The normal form of the rank-``|S|`` stratum ``W = P_S M`` (whitened population loss).

    ``U_Q = [U[:, not S], U_perp]`` where ``U_perp`` completes the teacher's left basis
    (a QR completion, fixed for a given task). Arrays in the task's dtype.
    """
    if not task.whitened:
        v.fail("task.input_covariance", "set", "the saddle normal form needs whitened inputs "
               "(docs/saddles.md: sigma = U_Q^T M holds for S_x = I)")
    subset = subset_tuple(task, subset)
    u = np.asarray(task.left, dtype=np.float64)
    m = np.asarray(task.teacher, dtype=np.float64)
    d_out, modes = u.shape
    rest = [a for a in range(modes) if a not in subset]
    u_s = u[:, list(subset)]
    columns = [u[:, rest]]
    if d_out > modes:
        q_full, _ = np.linalg.qr(u, mode="complete")
        columns.append(q_full[:, modes:])
    u_q = np.concatenate(columns, axis=1) if columns else np.zeros((d_out, 0))
    dtype = task.dtype
    return NormalForm(
        signal_left=jnp.asarray(u_s, dtype=dtype),
        complement=jnp.asarray(u_q, dtype=dtype),
        signal_right=jnp.asarray(u_s.T @ m, dtype=dtype),
        sigma=jnp.asarray(u_q.T @ m, dtype=dtype),
    )


def residual_shapes(widths: Sequence[int], rank: int) -> tuple[tuple[int, int], ...]:
    """Shapes of ``(Z_1, ..., Z_L)`` for widths ``(d_0, ..., d_L)`` and rank ``r``.

    ``Z_1``: ``(d_1 - r, d_0)``; ``Z_l``: ``(d_l - r, d_{l-1} - r)``; ``Z_L``:
    ``(d_L - r, d_{L-1} - r)`` (zero-size blocks allowed where a width equals ``r``).
    """
    widths = v.widths_tuple("widths", widths)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 0:
        v.fail("rank", rank, "must be an integer >= 0")
    rank = int(rank)
    depth = len(widths) - 1
    if depth < 2:
        v.fail("widths", widths, "the normal form needs depth L >= 2 (at least one hidden layer)")
    if min(widths[1:]) < rank:
        v.fail("widths", widths, f"hidden and output widths must be >= the rank r={rank}")
    if widths[0] < rank:
        v.fail("widths", widths, f"d_in must be >= the rank r={rank}")
    shapes = [(widths[1] - rank, widths[0])]
    shapes += [(widths[l] - rank, widths[l - 1] - rank) for l in range(2, depth + 1)]
    return tuple(shapes)


def _check_residuals(form: NormalForm, residuals) -> None:
    if not isinstance(residuals, tuple | list) or len(residuals) < 2:
        v.fail("residuals", type(residuals).__name__, "must be a tuple (Z_1, ..., Z_L), L >= 2")
    r = form.rank
    prev = form.d_in
    for index, z in enumerate(residuals, start=1):
        if z.ndim != 2 or z.shape[1] != prev:
            v.fail(f"residuals[{index - 1}].shape", tuple(z.shape),
                   f"Z_{index} must take {prev} inputs")
        prev = z.shape[0]
    if residuals[-1].shape[0] != form.d_out - r:
        v.fail(f"residuals[{len(residuals) - 1}].shape", tuple(residuals[-1].shape),
               f"Z_L must have d_out - r = {form.d_out - r} rows")


@jax.jit
def assemble_weights(form: NormalForm, residuals: Residuals) -> tuple[Array, ...]:
    """Weights ``(W_1, ..., W_L)`` of the normal form (module docstring) for residuals ``Z``.

    The widths follow from the residual shapes: ``d_l = r + Z_l.shape[0]`` for hidden layers.
    """
    _check_residuals(form, residuals)
    r = form.rank
    dtype = form.sigma.dtype
    first = jnp.concatenate([form.signal_right, residuals[0].astype(dtype)], axis=0)
    middle = []
    for z in residuals[1:-1]:
        top = jnp.concatenate([jnp.eye(r, dtype=dtype), jnp.zeros((r, z.shape[1]), dtype)], axis=1)
        bottom = jnp.concatenate([jnp.zeros((z.shape[0], r), dtype), z.astype(dtype)], axis=1)
        middle.append(jnp.concatenate([top, bottom], axis=0))
    last = jnp.concatenate([form.signal_left, form.complement @ residuals[-1].astype(dtype)], axis=1)
    return (first, *middle, last)


@jax.jit
def constraint_residuals(residuals: Residuals, sigma: Array) -> tuple[Array, tuple[Array, ...]]:
    """``(mu, (dmu_1, ..., dmu_L))`` with ``mu = Z_L ... Z_1`` (``(d_out - r) x d_in``) and
    ``dmu_l = Z_{l-1} ... Z_1 sigma^T Z_L ... Z_{l+1}`` (the shape of ``Z_l^T``).

    One prefix and one suffix sweep: ``O(L)`` matrix products for all ``L + 1`` matrices.
    """
    depth = len(residuals)
    dtype = sigma.dtype
    prefixes = [jnp.eye(residuals[0].shape[1], dtype=dtype)]          # Z_l ... Z_1, l = 0..L
    for z in residuals:
        prefixes.append(z @ prefixes[-1])
    suffixes = [jnp.eye(residuals[-1].shape[0], dtype=dtype)]          # Z_L ... Z_l, l = L+1..1
    for z in reversed(residuals):
        suffixes.append(suffixes[-1] @ z)
    suffixes.reverse()                                                  # suffixes[l-1] = Z_L..Z_l
    cyclic = tuple(prefixes[l - 1] @ sigma.T @ suffixes[l] for l in range(1, depth + 1))
    return prefixes[-1], cyclic


@jax.jit
def constraint_energy(residuals: Residuals, sigma: Array) -> Array:
    """``E(Z) = 0.5 ||mu(Z)||_F^2 + 0.5 sum_l ||dmu_l(Z)||_F^2`` (fibre + cyclic constraints)."""
    mu, cyclic = constraint_residuals(residuals, sigma)
    return 0.5 * (jnp.sum(mu * mu) + sum(jnp.sum(c * c) for c in cyclic))


@jax.jit
def energy_gradient(residuals: Residuals, sigma: Array) -> Residuals:
    """``grad_Z E`` by reverse-mode autodiff (a tuple shaped like ``residuals``)."""
    return jax.grad(constraint_energy)(tuple(residuals), sigma)


def random_residuals(key, widths: Sequence[int], rank: int, scale: float = 1.0,
                     dtype=None) -> Residuals:
    """Gaussian residuals, entries ``N(0, scale^2 / fan_in)`` (fan-in = the block's columns)."""
    shapes = residual_shapes(widths, rank)
    v.finite_scalar("scale", scale, minimum=0.0)
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
    return _gaussian_blocks(key, jnp.asarray(scale, dtype), shapes=shapes, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _gaussian_blocks(key, scale, *, shapes, dtype):
    keys = jax.random.split(key, len(shapes))
    return tuple(jax.random.normal(k, s, dtype=dtype) * (scale / float(np.sqrt(max(s[1], 1))))
                 for k, s in zip(keys, shapes, strict=True))


def exact_residuals(key, widths: Sequence[int], rank: int, zero_layers: tuple[int, int] = (1, 2),
                    scale: float = 1.0, dtype=None) -> Residuals:
    """The cheap exact construction: Gaussian residuals with ``Z_a = Z_b = 0`` (1-based ``a != b``).

    Every ``dmu_l`` and ``mu`` contain ``Z_a`` or ``Z_b``, so ``E(Z) = 0`` exactly and the assembled
    weights are a critical point of rank ``r``.
    """
    shapes = residual_shapes(widths, rank)
    depth = len(shapes)
    try:
        a, b = (int(x) for x in zero_layers)
    except (TypeError, ValueError):
        v.fail("zero_layers", zero_layers, "must be two layer indices (1-based)")
    if a == b or not (1 <= a <= depth and 1 <= b <= depth):
        v.fail("zero_layers", zero_layers, f"must be two distinct layers in 1..{depth}")
    z = random_residuals(key, widths, rank, scale, dtype)
    return tuple(jnp.zeros_like(x) if l in (a, b) else x for l, x in enumerate(z, start=1))


def zero_residuals(widths: Sequence[int], rank: int, dtype=None) -> Residuals:
    """All residual blocks zero (``W = P_S M`` with the narrowest signal path)."""
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
    return tuple(jnp.zeros(s, dtype) for s in residual_shapes(widths, rank))


def stratum_loss(task: Task, subset: Sequence[int]) -> float:
    """Population loss of every rank-r critical point of the stratum: ``0.5 sum_{q not in S} s_q^2
    + 0.5 tr S_eps`` (the loss of ``W = P_S M``, whitened)."""
    subset = subset_tuple(task, subset)
    s = np.asarray(task.spectrum, dtype=np.float64)
    rest = [a for a in range(s.size) if a not in subset]
    noise = 0.0 if task.label_covariance is None else float(np.trace(np.asarray(task.label_covariance)))
    return 0.5 * float(np.sum(s[rest] ** 2)) + 0.5 * noise

"""Hessian of the population loss: products, dense matrix, block Lanczos (small end of the spectrum).

Parameters are stacked as ``theta = (vec W_1, ..., vec W_L)`` (column-stacking ``vec``, docs/theory.md §1),
``P = sum_l d_l d_{l-1}``. The Hessian-vector product is forward-over-reverse: ``H v`` is the
``jax.jvp`` of the analytic population gradient ``A_l^T D S_x B_l^T`` (``dlnlab.population_gradient``)
along ``v``, exact to rounding at the cost of about two gradients.

Block Lanczos with full re-orthogonalisation (Golub & Underwood 1977; Golub & Van Loan §10.3.6):
from an orthonormal start block ``Q_1`` (``P x b``), ``H Q_j = Q_{j-1} B_{j-1}^T + Q_j A_j + Q_{j+1}
B_j``; the Ritz values of the block-tridiagonal ``T`` (``mb x mb``) approximate the extreme
eigenvalues of ``H`` and, by Cauchy interlacing, the ``i``-th smallest Ritz value is ``>=`` the
``i``-th smallest eigenvalue. A block of size ``b`` resolves eigenvalues of multiplicity up to ``b``.
The same run gives a stochastic Lanczos quadrature (Golub & Meurant; Ubaru, Chen & Saad 2017) of
``tr f(H)`` with the ``b`` Haar-distributed start columns as probes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from ..core.loss import population_gradient
from ..core.products import flatten_weights, layer_widths, unflatten_weights
from ..core.task import Task


def flat_gradient(theta: Array, widths: tuple[int, ...], task: Task) -> Array:
    """``grad L(theta)`` of the population loss, flattened like ``theta`` (shape ``(P,)``)."""
    return flatten_weights(population_gradient(unflatten_weights(theta, widths), task))


def hessian_vector_product(weights, task: Task, vector) -> tuple[Array, ...]:
    """``H v`` for a direction ``v`` shaped like ``weights`` (a tuple of layer arrays).

    ``d/de grad L(weights + e v)`` at ``e = 0``, by ``jax.jvp`` of the analytic gradient.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    return jax.jvp(lambda w: population_gradient(w, task), (tuple(weights),), (tuple(vector),))[1]


def flat_hessian_vector_product(theta: Array, widths: tuple[int, ...], task: Task,
                                vector: Array) -> Array:
    """``H v`` on flat vectors ``theta, v`` of shape ``(P,)``."""
    return jax.jvp(lambda t: flat_gradient(t, widths, task), (theta,), (vector,))[1]


def dense_hessian(weights, task: Task) -> Array:
    """The ``P x P`` Hessian of the population loss (``jax.jacfwd`` of the gradient, symmetrised).

    ``O(P)`` Hessian-vector products and ``P^2`` memory: small networks only.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    widths = layer_widths(weights)
    theta = flatten_weights(weights)
    h = jax.jacfwd(lambda t: flat_gradient(t, widths, task))(theta)
    return 0.5 * (h + h.T)


class LanczosResult(NamedTuple):
    """Output of :func:`block_lanczos` (``K = num_blocks * block_size`` Ritz pairs).

    - ``ritz_values`` ``(K,)`` ascending; ``ritz_residuals`` ``(K,)``: ``||H x_k - theta_k x_k||``
      for the unit Ritz vector ``x_k`` (there is an eigenvalue within this distance);
    - ``probe_weights`` ``(b, K)``: ``(q_j^T x_k)^2`` for each start column ``q_j`` (quadrature
      weights of stochastic Lanczos quadrature);
    - ``basis`` ``(P, K)`` and ``ritz_coefficients`` ``(K, K)``: Ritz vectors are
      ``basis @ ritz_coefficients``.
    """

    ritz_values: Array
    ritz_residuals: Array
    probe_weights: Array
    basis: Array
    ritz_coefficients: Array


def _orthogonalise(block: Array, basis: Array) -> Array:
    """Classical Gram-Schmidt of ``block`` against ``basis`` twice ("twice is enough")."""
    for _ in range(2):
        block = block - basis @ (basis.T @ block)
    return block


def block_lanczos(matvec, start: Array, num_blocks: int) -> LanczosResult:
    """Block Lanczos with full re-orthogonalisation for a symmetric operator.

    ``matvec`` maps a block ``(P, b)`` to ``H`` times it; ``start`` ``(P, b)`` (any full-rank block:
    it is orthonormalised by QR; Gaussian entries give Haar probes); ``num_blocks`` = ``m``
    (static). Needs ``m b <= P``. When the Krylov space is exhausted the next block is drawn from
    the rounding residual and re-orthogonalised; its coupling ``B_j`` is then ~0 and the Ritz values
    stay those of ``H`` on an orthonormal subspace (interlacing still holds).
    """
    p, b = start.shape
    num_blocks = v.positive_int("num_blocks", num_blocks)
    if num_blocks * b > p:
        v.fail("num_blocks", num_blocks, f"num_blocks * block_size = {num_blocks * b} exceeds P = {p}")
    dtype = start.dtype
    q0, _ = jnp.linalg.qr(start)
    basis = jnp.zeros((p, (num_blocks + 1) * b), dtype).at[:, :b].set(q0)

    def body(carry, j):
        basis, q_prev, b_prev = carry
        q = jax.lax.dynamic_slice_in_dim(basis, j * b, b, axis=1)
        w = matvec(q)
        a = q.T @ w
        a = 0.5 * (a + a.T)
        w = w - q @ a - q_prev @ b_prev.T
        w = _orthogonalise(w, basis)
        q_next, _ = jnp.linalg.qr(w)
        q_next = q_next - basis @ (basis.T @ q_next)             # rank-deficient w: stay orthogonal
        q_next, _ = jnp.linalg.qr(q_next)
        b_next = q_next.T @ w
        basis = jax.lax.dynamic_update_slice_in_dim(basis, q_next, (j + 1) * b, axis=1)
        return (basis, q, b_next), (a, b_next)

    init = (basis, jnp.zeros((p, b), dtype), jnp.zeros((b, b), dtype))
    (basis, _, _), (diag, off) = jax.lax.scan(body, init, jnp.arange(num_blocks))
    k = num_blocks * b
    t = jnp.zeros((k, k), dtype)
    for j in range(num_blocks):                      # static assembly of the block tridiagonal T
        t = t.at[j * b:(j + 1) * b, j * b:(j + 1) * b].set(diag[j])
        if j + 1 < num_blocks:
            t = t.at[(j + 1) * b:(j + 2) * b, j * b:(j + 1) * b].set(off[j])
            t = t.at[j * b:(j + 1) * b, (j + 1) * b:(j + 2) * b].set(off[j].T)
    values, vectors = jnp.linalg.eigh(t)
    residuals = jnp.linalg.norm(off[-1] @ vectors[-b:, :], axis=0)
    return LanczosResult(values, residuals, vectors[:b, :] ** 2, basis[:, :k], vectors)


def hessian_lanczos(key, weights, task: Task, num_blocks: int = 40,
                    block_size: int = 8) -> LanczosResult:
    """:func:`block_lanczos` on the population-loss Hessian at ``weights`` (Gaussian start block)."""
    v.check_weights(weights, task.d_in, task.d_out)
    block_size = v.positive_int("block_size", block_size)
    widths = layer_widths(weights)
    theta = flatten_weights(weights)
    start = jax.random.normal(key, (theta.size, block_size), dtype=theta.dtype)
    hvp = jax.vmap(lambda x: flat_hessian_vector_product(theta, widths, task, x),
                   in_axes=1, out_axes=1)
    return block_lanczos(hvp, start, num_blocks)

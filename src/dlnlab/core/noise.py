"""Gradient-noise covariance and exact samplers (docs/theory.md §3, paper Prop. 3.2, App. B, G).

The per-sample noise of layer l is ``xi_l = A_l^T R B_l^T`` with one random matrix ``R``
(``d_out x d_in``) shared by all layers:

- online: ``R = D (x x^T - S_x) - eps x^T``;
- offline: ``R_i - Rbar`` with ``R_i = (W x_i - y_i) x_i^T`` for a uniformly drawn sample i.

``Sigma(theta)`` is the covariance of the stacked ``(vec xi_1, ..., vec xi_L)`` (column-stacking
``vec``); a batch of size B has ``Sigma / B`` (with replacement) or
``Sigma * (n - B) / (B (n - 1))`` (offline, without replacement).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from .loss import data_moments, end_to_end, error
from .products import partial_products
from .task import Task


def batch_factor(task: Task, batch_size, replacement: bool = True):
    """Multiplier of the one-sample covariance for a batch: ``1/B``, or ``(n-B)/(B(n-1))``.

    The finite-population factor applies only offline without replacement (zero at ``B = n``).
    """
    if v.is_concrete(batch_size):
        v.finite_scalar("batch_size", batch_size, minimum=1.0)
        if not task.online and not replacement and batch_size > task.data.num_samples:
            v.fail("batch_size", batch_size, f"must be <= the data set size "
                   f"n={task.data.num_samples} when sampling without replacement")
    if task.online or replacement:
        return 1.0 / batch_size
    n = task.data.num_samples
    if n == 1:
        return jnp.zeros((), task.dtype) * batch_size
    return (n - batch_size) / (batch_size * (n - 1.0))


def offline_residuals(weights, task: Task) -> Array:
    """Centred per-sample matrices ``R_i - Rbar``, shape ``(n, d_out, d_in)`` (App. G)."""
    v.check_weights(weights, task.d_in, task.d_out)
    x, y = task.data
    e = x @ end_to_end(weights).T - y
    sxx, syx = data_moments(task)
    rbar = end_to_end(weights) @ sxx - syx
    return jnp.einsum("ni,nj->nij", e, x) - rbar[None]


def residual_covariance(weights, task: Task) -> Array:
    """``Cov(vec R)``, shape ``(d_out d_in, d_out d_in)`` (column-stacking ``vec``).

    Online (docs/theory.md §3, with the symmetric root ``S_x^{1/2}``):
    ``(S^½ ⊗ D S^½)(I + K)(S^½ ⊗ D S^½)^T + S_x ⊗ S_eps``. Offline: ``(1/n) sum_i vec R~_i vec R~_i^T``.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    if not task.online:
        r = offline_residuals(weights, task)
        flat = jnp.swapaxes(r, 1, 2).reshape(r.shape[0], -1)      # vec = column stacking
        return flat.T @ flat / r.shape[0]
    d = error(weights, task)
    d_out, d_in = d.shape
    root = jnp.eye(d_in, dtype=d.dtype) if task.whitened else task.input_sqrt
    factor = jnp.kron(root, d @ root)                              # vec(D S^½ G S^½)
    k = commutation_matrix(d_in, d_in, d.dtype)
    cov = factor @ (jnp.eye(d_in * d_in, dtype=d.dtype) + k) @ factor.T
    if task.label_covariance is not None:
        cov = cov + jnp.kron(task.input_cov(), task.label_covariance)
    return cov


def commutation_matrix(rows: int, cols: int, dtype=None) -> Array:
    """``K`` with ``K vec(X) = vec(X^T)`` for ``X`` of shape ``(rows, cols)``.

    ``X[i, j]`` sits at ``j * rows + i`` in ``vec X`` and at ``i * cols + j`` in ``vec X^T``.
    """
    i, j = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij")
    k = jnp.zeros((rows * cols, rows * cols), dtype=dtype or jnp.zeros(()).dtype)
    return k.at[(i * cols + j).ravel(), (j * rows + i).ravel()].set(1.0)


def noise_jacobian(weights) -> Array:
    """Stacked ``J = [B_1 ⊗ A_1^T; ...; B_L ⊗ A_L^T]`` with ``vec xi = J vec R``, ``(P, d_out d_in)``."""
    v.check_weights(weights)
    lefts, rights = partial_products(weights)
    return jnp.concatenate([jnp.kron(b, a.T) for a, b in zip(lefts, rights, strict=True)],
                           axis=0)


def noise_covariance(weights, task: Task, batch_size=1, replacement: bool = True) -> Array:
    """Dense ``Sigma(theta) * factor``, shape ``(P, P)``, ``P = sum_l d_l d_{l-1}`` (Prop. 3.2).

    Blocks ``Sigma_lm = (B_l ⊗ A_l^T) Cov(vec R) (B_m ⊗ A_m^T)^T``; stacked order
    ``vec W_1, ..., vec W_L``. ``factor`` is :func:`batch_factor` (1 for ``batch_size=1``
    online). The reference implementation: ``O(P^2 d^2)`` memory, for small networks only.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    factor = batch_factor(task, batch_size, replacement)   # validates before the O(P^2) work
    j = noise_jacobian(weights)
    return factor * (j @ residual_covariance(weights, task) @ j.T)


# ---------------------------------------------------------------------------- samplers
def noise_normals_shape(task: Task) -> tuple[tuple[int, ...], ...]:
    """Shapes of the standard normals consumed by :func:`noise_from_normals` for one sample."""
    if task.online:
        return ((task.d_in, task.d_in), (task.d_out, task.d_in))
    return ((task.data.num_samples,),)


def draw_noise_normals(key, task: Task, num_samples: int | None = None):
    """Standard normals for :func:`noise_from_normals` (optionally with a leading axis)."""
    lead = () if num_samples is None else (num_samples,)
    shapes = noise_normals_shape(task)
    keys = jax.random.split(key, len(shapes))
    return tuple(jax.random.normal(k, lead + s, dtype=task.dtype)
                 for k, s in zip(keys, shapes, strict=True))


def noise_residual_from_normals(weights, task: Task, normals, batch_size=1,
                                replacement: bool = True) -> Array:
    """The Gaussian ``R~`` (``d_out x d_in``) whose layer maps give exact-law noise (§3.1, §3.2).

    Online: ``Z`` ``(d_in, d_in)`` and ``Z'`` ``(d_out, d_in)`` standard normal,
    ``Gt = (Z + Z^T)/sqrt 2`` (``Cov vec Gt = I + K``), ``R~ = D S^½ Gt S^½ - S_eps^½ Z' S^½``.
    Offline: ``w`` ``(n,)`` standard normal, ``R~ = sum_i w_i sqrt(1/n) (R_i - Rbar)``.
    Scaled by ``sqrt(batch factor)``.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    scale = jnp.sqrt(batch_factor(task, batch_size, replacement))
    if not task.online:
        (w,) = normals
        r = offline_residuals(weights, task)
        return scale * jnp.tensordot(w, r, axes=1) / jnp.sqrt(r.shape[0] * 1.0)
    z, z_label = normals
    g = (z + z.T) * math.sqrt(0.5)
    d = error(weights, task)
    if task.whitened:
        r = d @ g
        if task.label_covariance is not None:
            r = r - task.label_sqrt @ z_label
    else:
        root = task.input_sqrt
        r = d @ root @ g @ root
        if task.label_covariance is not None:
            r = r - task.label_sqrt @ z_label @ root
    return scale * r


def noise_from_normals(weights, task: Task, normals, batch_size=1,
                       replacement: bool = True) -> tuple[Array, ...]:
    """Map standard normals to a gradient-noise sample ``(xi_1, ..., xi_L)`` with exact law.

    ``xi_l = A_l^T R~ B_l^T`` with the same ``R~`` for every layer (so the cross-layer blocks
    are right). Deterministic in ``normals``: reusing normals reuses the Brownian increment.
    Cost ``O(L d^3)`` (online) or ``O(n d^2 + L d^3)`` (offline), against ``O(P^3)`` for a
    dense factorisation.
    """
    r = noise_residual_from_normals(weights, task, normals, batch_size, replacement)
    lefts, rights = partial_products(weights)
    return tuple(a.T @ r @ b.T for a, b in zip(lefts, rights, strict=True))


def sample_noise(key, weights, task: Task, num_samples: int, batch_size=1,
                 replacement: bool = True) -> tuple[Array, ...]:
    """``num_samples`` exact Gaussian noise draws ``xi ~ N(0, Sigma(theta) * factor)``.

    Structured sampler (docs/theory.md §4, online and offline): returns a tuple of arrays of shape
    ``(num_samples, d_l, d_{l-1})``. Batch size 1 by default.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    num_samples = v.positive_int("num_samples", num_samples)
    normals = draw_noise_normals(key, task, num_samples)
    lefts, rights = partial_products(weights)
    r = jax.vmap(lambda n: noise_residual_from_normals(weights, task, n, batch_size,
                                                       replacement))(normals)
    return tuple(jnp.einsum("oi,soj,kj->sik", a, r, b)                # A^T R~ B^T
                 for a, b in zip(lefts, rights, strict=True))


def sample_noise_dense(key, weights, task: Task, num_samples: int, batch_size=1,
                       replacement: bool = True) -> tuple[Array, ...]:
    """Reference sampler: factorise the dense ``Sigma`` by ``eigh`` (it is singular, so a plain
    Cholesky fails) with negative rounding eigenvalues clipped. Same output as
    :func:`sample_noise`; ``O(P^3)``: small networks only."""
    num_samples = v.positive_int("num_samples", num_samples)
    sigma = noise_covariance(weights, task, batch_size, replacement)
    evals, evecs = jnp.linalg.eigh(sigma)
    root = evecs * jnp.sqrt(jnp.clip(evals, 0.0, None))[None, :]
    z = jax.random.normal(key, (num_samples, sigma.shape[0]), dtype=sigma.dtype)
    theta = z @ root.T
    out, offset = [], 0
    for w in weights:
        size = w.size
        block = theta[:, offset:offset + size].reshape(num_samples, w.shape[1], w.shape[0])
        out.append(jnp.swapaxes(block, 1, 2))                      # undo column stacking
        offset += size
    return tuple(out)


def noise_trace(weights, task: Task, batch_size=1, replacement: bool = True) -> Array:
    """``tr Sigma(theta) * factor``: the total gradient-noise variance, without forming ``Sigma``.

    Online, with ``X_l = A_l^T D S^½``, ``Y_l = S^½ B_l^T`` and ``Gt`` of covariance ``I + K``:
    ``E||X Gt Y||^2 = ||X||^2 ||Y||^2 + tr(X^T X Y Y^T)``; label noise adds
    ``||A_l^T S_eps^½||^2 ||Y_l||^2`` (docs/theory.md §5.4). Offline:
    ``(1/n) sum_i sum_l ||A_l^T (R_i - Rbar) B_l^T||^2``. Sets the isotropic temperature
    ``T = eta tr(Sigma) / (2 B P)`` (docs/theory.md §4).
    """
    v.check_weights(weights, task.d_in, task.d_out)
    factor = batch_factor(task, batch_size, replacement)
    lefts, rights = partial_products(weights)
    total = jnp.zeros((), weights[0].dtype)
    if not task.online:
        r = offline_residuals(weights, task)                       # (n, d_out, d_in)
        for a, b in zip(lefts, rights, strict=True):
            total = total + jnp.sum(jnp.einsum("oi,noj,kj->nik", a, r, b) ** 2) / r.shape[0]
        return factor * total
    d = error(weights, task)
    root = task.input_sqrt if not task.whitened else None
    for a, b in zip(lefts, rights, strict=True):
        x = a.T @ d if root is None else a.T @ d @ root
        y = b.T if root is None else root @ b.T
        yy = jnp.sum(y * y)
        total = total + jnp.sum(x * x) * yy + jnp.trace((x.T @ x) @ (y @ y.T))
        if task.label_covariance is not None:
            la = a.T @ task.label_sqrt
            total = total + jnp.sum(la * la) * yy
    return factor * total

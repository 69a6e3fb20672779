"""Mode amplitudes, NTK operator, modewise diffusion and Ito drift (docs/theory.md §5, Prop. 3.3-3.4).

Amplitude of a linear functional ``a = u^T W v``; its gradient is ``d a / d W_l = A_l^T u v^T B_l^T``
and ``N = Theta(u v^T) = sum_l p_l q_l^T`` with ``p_l = A_l A_l^T u``, ``q_l = B_l^T B_l v``.
That rank-L form is what every function here works with: the noise projection is
``<grad a, xi> = <N, R> = sum_l p_l^T R q_l``.

Exact, at any state (not only aligned/balanced):

- diffusion (rate of quadratic variation) ``D_a = eta c Var(<N_a, R>)``,
  online ``Var = ||F||^2 + tr(F F) + tr(N^T S_eps N S_x)`` with ``F = S_x^½ D^T N S_x^½``;
- Ito drift ``mu_Ito = eta c sum_{l<m} p_{m}^T E[R Gamma_lm R] q_{l}``,
  ``Gamma_lm = B_m^T C_ml A_l^T``, online
  ``E[R Gamma R] = D S_x D^T Gamma^T S_x + tr(Gamma D S_x) D S_x + S_eps Gamma^T S_x``;

with ``c`` the batch factor (``1/B``; offline without replacement ``(n-B)/(B(n-1))``). Offline
the expectations are averages over the data set of the centred ``R_i - Rbar``.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from .loss import data_moments, end_to_end, error, error_matrix
from .noise import batch_factor
from .products import partial_products, span_product
from .task import Task


def mode_amplitudes(weights, task: Task) -> Array:
    """``a_a = u_a^T W v_a`` for the ``r = min(d_in, d_out)`` teacher modes, shape ``(r,)``."""
    v.check_weights(weights, task.d_in, task.d_out)
    return jnp.einsum("oa,oi,ia->a", task.left, end_to_end(weights), task.right)


def cross_mode_amplitudes(weights, task: Task) -> Array:
    """``a_ab = u_a^T W v_b``, shape ``(r, r)`` (``mode``, ``mode2``); the diagonal is the modes."""
    v.check_weights(weights, task.d_in, task.d_out)
    return task.left.T @ end_to_end(weights) @ task.right


def ntk_operator(weights, x: Array) -> Array:
    """``Theta(X) = sum_l A_l A_l^T X B_l^T B_l`` for ``X`` of shape ``(d_out, d_in)`` (Prop. 3.3).

    Gradient flow moves the end-to-end map by ``dW/dt = -Theta(D S_x)``.
    """
    v.check_weights(weights)
    lefts, rights = partial_products(weights)
    return sum(a @ a.T @ x @ b.T @ b for a, b in zip(lefts, rights, strict=True))


def functional_factors(weights, left: Array, right: Array) -> tuple[Array, Array]:
    """``P[l] = A_l A_l^T left`` ``(L, d_out, k)`` and ``Q[l] = B_l^T B_l right`` ``(L, d_in, k)``.

    For column i of ``left``/``right`` (``u_i``, ``v_i``): ``Theta(u_i v_i^T) = sum_l P[l,:,i]
    Q[l,:,i]^T``.
    """
    lefts, rights = partial_products(weights)
    p = jnp.stack([a @ (a.T @ left) for a in lefts])
    q = jnp.stack([b.T @ (b @ right) for b in rights])
    return p, q


def gradient_flow_mode_drift(weights, task: Task) -> Array:
    """``-u_a^T Theta(G) v_a`` per mode: the gradient-flow drift of ``a_a`` at any state.

    ``G = D S_x`` online (docs/theory.md §5), ``W S_xx - S_yx`` offline. Shape ``(r,)``.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    p, q = functional_factors(weights, task.left, task.right)
    g = error_matrix(weights, task)
    return -jnp.einsum("loa,oi,lia->a", p, g, q)


def _noise_projections_offline(weights, task: Task, p: Array, q: Array) -> Array:
    """``c_{i,a} = <N_a, R_i - Rbar> = sum_l p_la^T (R_i - Rbar) q_la``, shape ``(n, k)``."""
    x, y = task.data
    e = x @ end_to_end(weights).T - y
    sxx, syx = data_moments(task)
    rbar = end_to_end(weights) @ sxx - syx
    return (jnp.einsum("no,loa,ni,lia->na", e, p, x, q)
            - jnp.einsum("loa,oi,lia->a", p, rbar, q)[None, :])


def amplitude_covariation(weights, task: Task, left: Array, right: Array, learning_rate,
                          batch_size=1, replacement: bool = True,
                          diagonal: bool = False) -> Array:
    """``d[a_i, a_j]/dt`` for amplitudes ``a_i = left[:, i]^T W right[:, i]`` (docs/theory.md §5).

    ``eta c (<F_i, F_j> + tr(F_i F_j) + tr(N_i^T S_eps N_j S_x))`` online, ``eta c Cov_n(<N_i,
    R>, <N_j, R>)`` offline. Shape ``(k, k)``, or ``(k,)`` with ``diagonal=True``.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0)
    scale = learning_rate * batch_factor(task, batch_size, replacement)
    p, q = functional_factors(weights, left, right)
    if not task.online:
        c = _noise_projections_offline(weights, task, p, q)
        n = c.shape[0]
        cov = jnp.einsum("na,na->a", c, c) / n if diagonal else c.T @ c / n
        return scale * cov
    sx = task.input_cov()
    d = error(weights, task)
    alpha = jnp.einsum("oi,loa->lia", d, p)                  # D^T p_la      (L, d_in, k)
    s_alpha = jnp.einsum("ij,lja->lia", sx, alpha)           # S D^T p_la
    s_q = jnp.einsum("ij,lja->lia", sx, q)                   # S q_la
    spec = "lia,mib->lamb" if not diagonal else "lia,mia->lma"
    aa = jnp.einsum(spec, alpha, s_alpha)                    # p^T D S D^T p'
    qq = jnp.einsum(spec, q, s_q)                            # q^T S q'
    qa = jnp.einsum(spec, q, s_alpha)                        # q_l^T S D^T p'_m
    if diagonal:
        # tr(F F) term: (q_la^T S D^T p_ma)(q_ma^T S D^T p_la) = qa[l,m] qa[m,l]
        total = aa * qq + qa * jnp.swapaxes(qa, 0, 1)
        if task.label_covariance is not None:
            total = total + jnp.einsum("loa,op,mpa->lma", p, task.label_covariance, p) * qq
        return scale * total.sum(axis=(0, 1))
    total = aa * qq + qa * jnp.transpose(qa, (2, 3, 0, 1))
    if task.label_covariance is not None:
        total = total + jnp.einsum("loa,op,mpb->lamb", p, task.label_covariance, p) * qq
    return scale * total.sum(axis=(0, 2))


def modewise_diffusion(weights, task: Task, learning_rate, batch_size=1,
                       replacement: bool = True) -> Array:
    """Exact modewise diffusion ``D_a(theta)`` per teacher mode, shape ``(r,)`` (Prop. 3.3).

    Whitened, online: ``D_a = (eta/B)(||F||^2 + tr(F F) + tr(N_a^T S_eps N_a))``,
    ``F = D^T N_a``, ``N_a = Theta(u_a v_a^T)``; ``d[a_a]_t = D_a dt``.
    """
    return amplitude_covariation(weights, task, task.left, task.right, learning_rate,
                                 batch_size, replacement, diagonal=True)


def mode_covariation(weights, task: Task, learning_rate, batch_size=1,
                     replacement: bool = True) -> Array:
    """``d[a_a, a_b]/dt`` for all pairs of teacher modes, shape ``(r, r)``; diagonal = diffusion."""
    return amplitude_covariation(weights, task, task.left, task.right, learning_rate,
                                 batch_size, replacement)


def _expected_r_gamma_r(weights, task: Task, gamma: Array) -> Array:
    """``E[R~ Gamma R~]`` (``d_out x d_in``) for the one-sample noise matrix ``R~``."""
    if not task.online:
        x, y = task.data
        e = x @ end_to_end(weights).T - y
        sxx, syx = data_moments(task)
        rbar = end_to_end(weights) @ sxx - syx
        weight = jnp.einsum("ni,io,no->n", x, gamma, e)       # x_i^T Gamma e_i
        return (e * weight[:, None]).T @ x / x.shape[0] - rbar @ gamma @ rbar
    sx = task.input_cov()
    ds = error_matrix(weights, task)                          # D S_x
    d = error(weights, task)
    out = (ds @ d.T) @ gamma.T @ sx + jnp.trace(gamma @ ds) * ds
    if task.label_covariance is not None:
        out = out + task.label_covariance @ gamma.T @ sx
    return out


def amplitude_ito_drift(weights, task: Task, left: Array, right: Array, learning_rate,
                        batch_size=1, replacement: bool = True) -> Array:
    """Ito drift ``(eta c/2) tr(Hess a_i Sigma)`` of ``a_i = left_i^T W right_i``, shape ``(k,)``.

    Only mixed layer pairs enter (``a`` is multilinear): ``eta c sum_{l<m} p_m^T E[R Gamma_lm R]
    q_l`` with ``Gamma_lm = B_m^T C_ml A_l^T`` (docs/theory.md §5). Zero at depth 1.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0)
    depth = len(weights)
    k = left.shape[1]
    if depth == 1:
        return jnp.zeros((k,), dtype=weights[0].dtype)
    scale = learning_rate * batch_factor(task, batch_size, replacement)
    lefts, rights = partial_products(weights)
    p, q = functional_factors(weights, left, right)
    total = jnp.zeros((k,), dtype=weights[0].dtype)
    for l in range(1, depth + 1):
        for m in range(l + 1, depth + 1):
            c_ml = span_product(weights, l + 1, m - 1)
            gamma = rights[m - 1].T @ c_ml @ lefts[l - 1].T   # B_m^T C_ml A_l^T (d_in, d_out)
            expected = _expected_r_gamma_r(weights, task, gamma)
            total = total + jnp.einsum("oa,oi,ia->a", p[m - 1], expected, q[l - 1])
    return scale * total


def ito_drift(weights, task: Task, learning_rate, batch_size=1,
              replacement: bool = True) -> Array:
    """Exact Ito drift of every teacher mode amplitude, shape ``(r,)`` (Prop. 3.4, docs/theory.md §5)."""
    return amplitude_ito_drift(weights, task, task.left, task.right, learning_rate, batch_size,
                               replacement)

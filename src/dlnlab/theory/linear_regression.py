"""Stationary weight fluctuations of a single-layer linear network (docs/theory.md §10; second seed
Gross et al., Phys. Rev. Research 6, 033103 (2024), eqs. 2.14-2.34).

Same time convention as everywhere here: ``t = step * eta``; the paper's ``lambda`` is our
``eta`` and its ``S`` our batch size ``B``. Near the solution ``w*`` SGD is modelled by the
Ornstein-Uhlenbeck process ``dw = -H (w - w*) dt + sqrt(eta) C^½ dW`` with ``C`` the covariance
of the *batch* gradient noise at ``w*``. Its stationary covariance ``M`` solves the Lyapunov
equation (2.29)

    H M + M H = eta C,

whose solution in the eigenbasis ``H = V diag(omega) V^T`` is ``M~_ij = eta C~_ij / (omega_i +
omega_j)``, equivalently (2.30-2.31) ``M = (eta/2) H^-1 (C + Q)`` with the antisymmetric
``Q~_ij = (omega_i - omega_j) / (omega_i + omega_j) C~_ij`` (broken detailed balance). Detailed
balance would give ``M_db = (eta/2) H^-1 C`` (2.33), and with ``C ≈ sigma^2 H / B`` (infinite
data, 2.20) the isotropic ``M = eta sigma^2 / (2B) I`` (2.34).

Weights are vectorised by column stacking, so for ``d_out`` outputs the Hessian is
``S_xx ⊗ I_{d_out}``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from ..core.loss import data_moments
from ..core.noise import noise_covariance
from ..core.task import Task


class LyapunovSolution(NamedTuple):
    """``covariance`` M (2.29/2.30), ``antisymmetric`` Q (2.31), ``detailed_balance`` (2.33)."""

    covariance: Array
    antisymmetric: Array
    detailed_balance: Array


def solve_lyapunov(hessian, noise_cov, learning_rate, rtol: float = 1e-12) -> LyapunovSolution:
    """Solve ``H M + M H = eta C`` for symmetric PSD ``H`` by eigendecomposition (2.29-2.33).

    Directions with ``omega_i + omega_j <= rtol * max(omega)`` (flat directions of an
    overparameterised model, where ``C`` vanishes too) get zero: the pseudo-inverse solution.
    """
    h = jnp.asarray(hessian)
    c = jnp.asarray(noise_cov, h.dtype)
    v.psd_matrix("hessian", h)
    v.psd_matrix("noise_cov", c, h.shape[0])
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0)
    omega, basis = jnp.linalg.eigh(h)
    c_tilde = basis.T @ c @ basis
    total = omega[:, None] + omega[None, :]
    keep = total > rtol * jnp.max(jnp.abs(omega))
    safe = jnp.where(keep, total, 1.0)
    m_tilde = jnp.where(keep, learning_rate * c_tilde / safe, 0.0)
    q_tilde = jnp.where(keep, (omega[:, None] - omega[None, :]) / safe * c_tilde, 0.0)
    inv = jnp.where(omega > rtol * jnp.max(jnp.abs(omega)), 1.0 / jnp.where(omega > 0, omega, 1.0),
                    0.0)
    detailed = 0.5 * learning_rate * (basis * inv) @ basis.T @ c
    return LyapunovSolution(basis @ m_tilde @ basis.T, basis @ q_tilde @ basis.T, detailed)


def isotropic_covariance(num_weights: int, learning_rate, batch_size, label_noise) -> Array:
    """``eta sigma^2 / (2 B) I`` (2.34): the infinite-data, detailed-balance limit."""
    num_weights = v.positive_int("num_weights", num_weights)
    return (learning_rate * label_noise**2 / (2 * batch_size)) * jnp.eye(num_weights)


class SingleLayerFluctuations(NamedTuple):
    """Stationary fluctuation theory of a single-layer net at its solution ``w*``."""

    solution: Array          # w* (d_out, d_in)
    hessian: Array           # H = S_xx ⊗ I_{d_out}, (P, P)
    noise_covariance: Array  # C = batch gradient-noise covariance at w*, (P, P)
    covariance: Array        # M solving H M + M H = eta C
    antisymmetric: Array     # Q
    detailed_balance: Array  # (eta/2) H^+ C
    isotropic: Array         # eta sigma^2 / (2B) I (infinite-data limit); NaN if S_eps is not sigma^2 I


def single_layer_fluctuations(task: Task, learning_rate, batch_size=1,
                              replacement: bool = True) -> SingleLayerFluctuations:
    """Everything of §II.C of the second seed paper for a single-layer net on ``task``.

    Offline (``task.data``): ``w* = S_yx S_xx^+`` (minimum-norm least squares, 2.7) and ``C`` is
    the finite-data noise at ``w*`` (2.14-2.17; ``(n-B)/(B(n-1))`` without replacement).
    Online: ``w* = M`` and ``C = (S_x ⊗ S_eps) / B`` (2.19-2.20 at ``w = w*``: D = 0).
    """
    v.positive_int("batch_size", batch_size)
    if task.online:
        solution = task.teacher
        sxx = task.input_cov()
    else:
        sxx, syx = data_moments(task)
        solution = syx @ jnp.linalg.pinv(sxx, hermitian=True)
    weights = (solution,)
    hess = jnp.kron(sxx, jnp.eye(task.d_out, dtype=sxx.dtype))
    noise = noise_covariance(weights, task, batch_size, replacement)
    lyap = solve_lyapunov(hess, noise, learning_rate)
    try:
        sigma = task.label_noise_std
        iso = isotropic_covariance(hess.shape[0], learning_rate, batch_size, sigma)
    except ValueError:      # anisotropic S_eps: no isotropic reference (the rest holds)
        iso = jnp.full(hess.shape, jnp.nan, hess.dtype)
    return SingleLayerFluctuations(solution, hess, noise, lyap.covariance, lyap.antisymmetric,
                                   lyap.detailed_balance, iso.astype(hess.dtype))

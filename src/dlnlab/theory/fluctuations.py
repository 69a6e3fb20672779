"""Linearised weight fluctuations of SGD near a solution, for any depth (docs/theory.md §12; second
seed Gross et al., Phys. Rev. Research 6, 033103 (2024), Secs. II-III).

Conventions as everywhere here: time ``t = step * eta`` (the paper's ``lambda`` is our learning
rate ``eta``, its ``S`` our batch size ``B``, its ``P`` the number of samples ``n``, its ``N`` the
input dimension ``d_in``); weights are stacked as ``theta = (vec W_1, ..., vec W_L)`` with
column-stacking ``vec`` (``dlnlab.flatten_weights``), ``P = sum_l d_l d_{l-1}`` parameters.

Near a gradient-descent solution ``theta*`` (a critical point of the training loss), SGD with
learning rate ``eta`` and batch size ``B`` is, to first order in ``dtheta = theta - theta*``,
the Ornstein-Uhlenbeck process (paper eqs. 2.13, 2.29, 3.26)

    d dtheta = -H dtheta dt + sqrt(eta) C^½ dW_t,

with the *drift* ``H`` = Hessian of the training loss at ``theta*`` (:func:`training_loss_hessian`)
and the *diffusion* ``C`` = covariance of the batch-gradient noise at ``theta*``
(``dlnlab.noise_covariance``, the exact finite-data law). Its stationary covariance solves
``H M + M H = eta C`` (:func:`stationary_covariance`); discrete-time SGD on the same quadratic has
``Sigma = (I - eta H) Sigma (I - eta H) + eta^2 C`` (:func:`discrete_stationary_covariance`).

Zero modes. For depth ``L >= 2`` the Hessian is singular: every point of the manifold of minima
is a minimum (the rescaling ("gauge") orbits ``W_{k+1} -> W_{k+1} G^-1, W_k -> G W_k`` are part
of it). At a critical point with error matrix ``G = 0`` (every global minimum whose end-to-end map
is the least-squares solution) ``H = J^T (S_xx ⊗ I) J`` and ``C = J^T Cov(vec R) J`` with the same
``J = d vec W / d theta``, so ``range C ⊆ range J^T = range H`` when ``S_xx`` is invertible: the
noise has *no* component along the zero modes, which therefore stay where gradient descent put
them (their variance is zero to this order). Along gauge tangents this holds at *any* weights
(:func:`gauge_tangents`). We solve the Lyapunov equation on the range of ``H`` and report the
fraction of ``C`` outside it (``kernel_noise_fraction``), which quantifies any violation (e.g. a
rank-limited network, where ``G != 0`` at the minimum).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.stats

from .. import _validation as v
from .._types import Array
from ..core.loss import data_moments, error_matrix, gradient
from ..core.noise import batch_factor, noise_covariance, noise_jacobian
from ..core.products import end_to_end, flatten_weights, layer_widths, partial_products, span_product
from ..core.task import Task

_RANK_RTOL = 1e-9


# ============================================================================ Lyapunov solvers
class StationaryFluctuations(NamedTuple):
    """Stationary law of ``d dtheta = -H dtheta dt + sqrt(eta) C^½ dW`` (paper eqs. 2.29-2.33).

    All matrices ``(P, P)``; ``rates`` and ``basis`` describe the range of ``H`` (rank ``r``).
    """

    covariance: np.ndarray        # M, H M + M H = eta C on range(H), zero on its kernel (2.29/2.30)
    antisymmetric: np.ndarray     # Q with M = (eta/2) H^+ (C + Q), Q = -Q^T (2.30-2.31)
    detailed_balance: np.ndarray  # (eta/2) H^+ C, the detailed-balance approximation (2.33)
    rates: np.ndarray             # (r,) non-zero eigenvalues omega_k of H, ascending (2.27, 3.38)
    basis: np.ndarray             # (P, r) orthonormal eigenvectors of H for ``rates``
    kernel_noise_fraction: float  # ||C - Pi C Pi||_F / ||C||_F, Pi the projector on range(H)


def _symmetric(name: str, matrix, size: int | None = None, *, psd: bool) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        v.fail(f"{name}.shape", m.shape, "must be a non-empty square matrix")
    if size is not None and m.shape[0] != size:
        v.fail(f"{name}.shape", m.shape, f"must be ({size}, {size}) like the drift")
    if psd:
        v.psd_matrix(name, m)
    else:
        v.finite_array(name, m)
    return 0.5 * (m + m.T)


def _range(drift: np.ndarray, rank_rtol: float) -> tuple[np.ndarray, np.ndarray]:
    omega, basis = np.linalg.eigh(drift)
    scale = max(float(np.max(np.abs(omega))), 1e-300)
    keep = omega > rank_rtol * scale
    return omega[keep], basis[:, keep]


def _kernel_fraction(diffusion: np.ndarray, basis: np.ndarray) -> float:
    norm = float(np.linalg.norm(diffusion))
    if norm == 0.0:
        return 0.0
    left = basis @ (basis.T @ diffusion)                 # C - Pi C Pi = (I - Pi) C + Pi C (I - Pi)
    outside = diffusion - left
    mixed = left - (left @ basis) @ basis.T
    return float(np.sqrt(np.sum(outside**2) + np.sum(mixed**2)) / norm)


def stationary_covariance(drift, diffusion, learning_rate, *,
                          rank_rtol: float = _RANK_RTOL) -> StationaryFluctuations:
    """Stationary covariance of the linearised SGD dynamics (paper eqs. 2.29-2.33, 3.29).

    Solves ``H M + M H = eta C`` on the range of the drift ``H`` (eigenvalues above
    ``rank_rtol * max|omega|``) with ``scipy.linalg.solve_continuous_lyapunov`` and sets ``M = 0``
    on the kernel, where the linearised dynamics has no restoring force and (at a minimum with
    invertible ``S_xx``) no noise either; ``kernel_noise_fraction`` says how much noise the
    projection drops. In the eigenbasis ``H = V diag(omega) V^T`` this is
    ``M~_ij = eta C~_ij / (omega_i + omega_j)`` (:func:`dlnlab.theory.solve_lyapunov`).

    Args: ``drift`` ``H`` ``(P, P)`` symmetric positive semidefinite (units 1/time, time
    ``t = step * eta``); ``diffusion`` ``C`` ``(P, P)`` PSD, the batch-gradient noise
    covariance; ``learning_rate`` ``eta > 0``.
    Raises ``ValueError`` for non-square, asymmetric or indefinite matrices, mismatched shapes
    or a non-positive learning rate.
    """
    h = _symmetric("drift", drift, psd=True)
    c = _symmetric("diffusion", diffusion, h.shape[0], psd=True)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("rank_rtol", rank_rtol, minimum=0.0, strict=True)
    omega, basis = _range(h, rank_rtol)
    return _stationary_on_range(c, float(learning_rate), omega, basis)


def _stationary_on_range(c, eta, omega, basis) -> StationaryFluctuations:
    c_tilde = basis.T @ c @ basis
    m_tilde = scipy.linalg.solve_continuous_lyapunov(np.diag(omega), eta * c_tilde)
    m_tilde = 0.5 * (m_tilde + m_tilde.T)
    total = omega[:, None] + omega[None, :]
    q_tilde = (omega[:, None] - omega[None, :]) / total * c_tilde
    detailed = 0.5 * eta * (basis / omega[None, :]) @ basis.T @ c
    return StationaryFluctuations(basis @ m_tilde @ basis.T, basis @ q_tilde @ basis.T, detailed,
                                  omega, basis, _kernel_fraction(c, basis))


def discrete_stationary_covariance(drift, diffusion, learning_rate, *,
                                   rank_rtol: float = _RANK_RTOL) -> np.ndarray:
    """Exact stationary covariance of discrete-time SGD on the quadratic (beyond the paper).

    ``dtheta_{k+1} = (I - eta H) dtheta_k - eta xi_k`` with ``Cov xi_k = C`` has
    ``Sigma = (I - eta H) Sigma (I - eta H) + eta^2 C``, solved on the range of ``H`` with
    ``scipy.linalg.solve_discrete_lyapunov`` (zero on the kernel, as in
    :func:`stationary_covariance`). In the eigenbasis of ``H``:
    ``Sigma~_ij = eta C~_ij / (omega_i + omega_j - eta omega_i omega_j)``, so
    ``Sigma - M = O(eta)`` relative to the continuous ``M`` (the gap
    ``eta C~_ij eta omega_i omega_j / ((omega_i + omega_j)(omega_i + omega_j - eta omega_i omega_j))``).

    Shapes ``(P, P)``; units of ``theta^2``. Exact for additive noise; for a single-layer net
    the multiplicative part of the minibatch noise adds a further ``O(eta)`` term (docs/theory.md
    §12). Raises ``ValueError`` as :func:`stationary_covariance`, and when ``eta * omega_max >= 2``
    (discrete SGD diverges: no stationary law).
    """
    h = _symmetric("drift", drift, psd=True)
    c = _symmetric("diffusion", diffusion, h.shape[0], psd=True)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("rank_rtol", rank_rtol, minimum=0.0, strict=True)
    eta = float(learning_rate)
    omega, basis = _range(h, rank_rtol)
    if omega.size and eta * omega.max() >= 2.0:
        v.fail("learning_rate", eta, f"must be < 2 / largest curvature = {2.0 / omega.max():.6g}"
               " (discrete SGD has no stationary law beyond it)")
    return _discrete_on_range(c, eta, omega, basis)


def _discrete_on_range(c, eta, omega, basis) -> np.ndarray:
    step = np.diag(1.0 - eta * omega)
    sigma = scipy.linalg.solve_discrete_lyapunov(step, eta**2 * (basis.T @ c @ basis))
    sigma = 0.5 * (sigma + sigma.T)
    return basis @ sigma @ basis.T


class Relaxation(NamedTuple):
    """Mean relaxation of the modes of the linearised dynamics (paper eq. 2.27)."""

    rates: np.ndarray            # (r,) omega_k ascending (1/time)
    basis: np.ndarray            # (P, r) modes V (columns)
    solution_modes: np.ndarray   # (r,) z*_k = V^T theta*
    mean_modes: np.ndarray       # (T, r) <z_k(t)> = z*_k + exp(-omega_k t) (z_k(0) - z*_k)
    mode_variance: np.ndarray    # (T, r) Var z_k(t) from a deterministic start
    excess_loss: np.ndarray      # (T,) <L(t)> - L(theta*) = ½ sum_k omega_k (<z_k - z*_k>^2 + Var z_k)


def ou_relaxation(drift, diffusion, learning_rate, solution, initial, times, *,
                  rank_rtol: float = _RANK_RTOL) -> Relaxation:
    """Relaxation of ``z = V^T theta`` towards ``z* = V^T theta*`` (paper eqs. 2.25-2.27).

    Mean ``<z_k(t)> = z*_k + exp(-omega_k t) (z_k(0) - z*_k)`` and, from a deterministic start,
    ``Cov z~(t)_ij = M~_ij (1 - exp(-(omega_i + omega_j) t))`` with ``M`` of
    :func:`stationary_covariance`; the mean excess loss of the quadratic is
    ``½ sum_k omega_k (<z_k - z*_k>^2 + Var z_k)``. ``solution``, ``initial`` ``(P,)`` (for a
    network: ``flatten_weights``); ``times`` ``(T,)`` in ``t = step * eta``. Kernel modes are
    left out (they do not move). Raises ``ValueError`` for wrong shapes or negative times.
    """
    h = _symmetric("drift", drift, psd=True)
    size = h.shape[0]
    theta_star = np.asarray(solution, dtype=np.float64).reshape(-1)
    theta_0 = np.asarray(initial, dtype=np.float64).reshape(-1)
    for name, vec in (("solution", theta_star), ("initial", theta_0)):
        if vec.size != size:
            v.fail(f"{name}.size", vec.size, f"must equal the drift size {size}")
        v.finite_array(name, vec)
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    v.finite_array("times", t)
    if np.any(t < 0):
        v.fail("times", times, "must be >= 0")
    stat = stationary_covariance(h, diffusion, learning_rate, rank_rtol=rank_rtol)
    omega, basis = stat.rates, stat.basis
    z_star, z_0 = basis.T @ theta_star, basis.T @ theta_0
    decay = np.exp(-np.outer(t, omega))
    mean = z_star[None, :] + decay * (z_0 - z_star)[None, :]
    m_diag = np.diag(basis.T @ stat.covariance @ basis)
    var = m_diag[None, :] * (1.0 - decay**2)
    excess = 0.5 * np.sum(omega[None, :] * ((mean - z_star[None, :]) ** 2 + var), axis=1)
    return Relaxation(omega, basis, z_star, mean, var, excess)


def _transient_factors(omega, eta, times, discrete):
    """``(T, r)`` per-mode decay ``e^{-omega t}`` (continuous) or ``(1 - eta omega)^{t/eta}``
    (discrete SGD, ``t = step * eta``)."""
    t = times[:, None]
    if discrete:
        return np.exp(t / eta * np.log1p(-eta * omega)[None, :])
    return np.exp(-t * omega[None, :])


def _transient_inputs(drift, diffusion, learning_rate, times, discrete, rank_rtol):
    h = _symmetric("drift", drift, psd=True)
    c = _symmetric("diffusion", diffusion, h.shape[0], psd=True)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("rank_rtol", rank_rtol, minimum=0.0, strict=True)
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size == 0:
        v.fail("times", times, "must hold at least one time")
    v.finite_array("times", t)
    if np.any(t < 0):
        v.fail("times", times, "must be >= 0")
    eta = float(learning_rate)
    omega, basis = _range(h, rank_rtol)
    if discrete:
        if omega.size and eta * omega.max() >= 2.0:
            v.fail("learning_rate", eta, f"must be < 2 / largest curvature = "
                   f"{2.0 / omega.max():.6g} (discrete SGD has no stationary law beyond it)")
        stationary = basis.T @ _discrete_on_range(c, eta, omega, basis) @ basis
    else:
        stationary = basis.T @ _stationary_on_range(c, eta, omega, basis).covariance @ basis
    return eta, t, omega, basis, stationary


def transient_covariance(drift, diffusion, learning_rate, times, *, discrete: bool = False,
                         rank_rtol: float = _RANK_RTOL) -> np.ndarray:
    """Covariance of the linearised SGD fluctuations at ``times`` after a start AT the solution
    (``dtheta(0) = 0``; docs/theory.md §10, beyond the paper).

    Continuous (the OU model of paper eqs. 2.25-2.29): ``M(t) = M - e^{-Ht} M e^{-Ht}``, i.e. in
    the eigenbasis ``H = V diag(omega) V^T``, ``M~_ij(t) = M~_ij (1 - e^{-(omega_i + omega_j) t})``
    with ``M`` of :func:`stationary_covariance` (eq. 2.30). ``discrete=True``: SGD on the quadratic
    with additive noise, ``Sigma_k = Sigma - A^k Sigma A^k``, ``A = I - eta H``, ``k = t / eta``
    steps, ``Sigma`` of :func:`discrete_stationary_covariance`. Every mode with
    ``(omega_i + omega_j) t >> 1`` has reached ``M``; slower ones grow like ``eta C~_ij t``.

    Args as :func:`stationary_covariance`; ``times`` ``(T,)`` in ``t = step * eta``, ``>= 0``.
    Returns ``(T, P, P)``, units of ``theta^2``; zero on the kernel of ``H``. Raises
    ``ValueError`` for bad matrices, a non-positive learning rate, negative or non-finite times,
    and (discrete) ``eta omega_max >= 2``.
    """
    eta, t, omega, basis, stationary = _transient_inputs(drift, diffusion, learning_rate, times,
                                                         discrete, rank_rtol)
    decay = _transient_factors(omega, eta, t, discrete)                    # (T, r)
    tilde = stationary[None] * (1.0 - decay[:, :, None] * decay[:, None, :])
    return np.einsum("pi,tij,qj->tpq", basis, tilde, basis)


def window_covariance(drift, diffusion, learning_rate, times, *, discrete: bool = False,
                      rank_rtol: float = _RANK_RTOL) -> np.ndarray:
    """The mean of :func:`transient_covariance` over ``times`` (a recording window), ``(P, P)``:
    ``M~_ij (1 - (1/T) sum_t e^{-(omega_i + omega_j) t})`` (or the discrete factors), the
    expectation of the time-averaged second moment ``(1/T) sum_t dtheta_t dtheta_t^T`` of runs
    started at the solution. Equals ``M`` (eq. 2.30) on every mode pair relaxed before the window
    (docs/theory.md §10). Same arguments and errors as :func:`transient_covariance`; memory
    ``O(P^2)`` whatever the number of times."""
    eta, t, omega, basis, stationary = _transient_inputs(drift, diffusion, learning_rate, times,
                                                         discrete, rank_rtol)
    mean_decay = np.zeros_like(stationary)
    for chunk in np.array_split(t, max(1, t.size // 64)):
        decay = _transient_factors(omega, eta, chunk, discrete)
        mean_decay += np.einsum("ti,tj->ij", decay, decay)
    tilde = stationary * (1.0 - mean_decay / t.size)
    return basis @ tilde @ basis.T


# ============================================================================ single layer (Sec. II)
def sample_space_matrix(task: Task) -> Array:
    """The sample-space matrix ``K`` of eq. 2.18, one ``(d_out, d_out)`` block per sample.

    ``K_mu = r_mu r_mu^T / n`` with ``r_mu = w* x_mu - y_mu`` the residual of the least-squares
    solution ``w* = S_yx S_xx^+``; the noise covariance at ``w*`` is then (eq. 2.17, batch factor
    ``f = 1/B`` or ``(n-B)/(B(n-1))``) ``C = f sum_mu (x_mu x_mu^T) ⊗ K_mu`` (column stacking).
    For one output ``K[:, 0, 0]`` is the diagonal of the paper's ``K`` (``r = (Pi - 1) eps`` with
    ``Pi`` of :func:`sample_space_projector`). Shape ``(n, d_out, d_out)``.
    Raises ``ValueError`` for an online task.
    """
    x, y = _offline(task)
    sxx, syx = data_moments(task)
    w = syx @ jnp.linalg.pinv(sxx, hermitian=True)
    r = x @ w.T - y
    return jnp.einsum("ni,nj->nij", r, r) / x.shape[0]


def sample_space_projector(task: Task) -> Array:
    """``Pi = X (X^T X)^+ X^T`` ``(n, n)`` for inputs ``X`` ``(n, d_in)`` (the paper's
    ``X^T (X X^T)^+ X`` below eq. 2.18, its X being our ``X^T``): the projector on the span of the
    input columns; ``Pi = 1`` when over-parameterised (``d_in >= n``, full rank) and
    ``<Pi_ii> = d_in / n`` otherwise. Raises ``ValueError`` for an online task."""
    x, _ = _offline(task)
    return x @ jnp.linalg.pinv(x.T @ x, hermitian=True) @ x.T


def hessian_noise_covariance(task: Task, batch_size=1, replacement: bool = True) -> Array:
    """The Hessian approximation of the noise (eq. 2.20): ``f (S_xx ⊗ S_eps)``, ``(P, P)``.

    With ``S_eps = sigma^2 I`` this is ``sigma^2 H / B``. ``S_xx`` is the data moment offline and
    ``S_x`` online, where the formula is exact at ``w* = M``. Raises ``ValueError`` for a bad
    batch size.
    """
    v.positive_int("batch_size", batch_size)
    factor = batch_factor(task, batch_size, replacement)
    sxx = task.input_cov() if task.online else data_moments(task)[0]
    seps = (jnp.zeros((task.d_out, task.d_out), sxx.dtype) if task.label_covariance is None
            else task.label_covariance)
    return factor * jnp.kron(sxx, seps)


def single_layer_discrete_covariance(task: Task, learning_rate, batch_size=1,
                                     replacement: bool = True, *, rtol: float = 1e-12,
                                     max_iterations: int = 500) -> np.ndarray:
    """Exact stationary covariance of discrete-time SGD on a single-layer net (beyond the paper).

    With ``dw = w - w*`` and the batch Hessian ``H_B = S_xx^B ⊗ I``, SGD is exactly
    ``dw_{k+1} = (I - eta H_B) dw_k - eta g_B(w*)``; the mean relaxes to 0 and the second moment
    obeys, at stationarity,

        Sigma = (I - eta H) Sigma (I - eta H) + eta^2 f K(Sigma) + eta^2 C,
        K(Sigma) = E_i[h_i Sigma h_i] - H Sigma H,   h_i = x_i x_i^T ⊗ I_{d_out},

    with ``C`` the noise at ``w*`` (``noise_covariance``) and ``f`` the batch factor (``1/B``, or
    ``(n-B)/(B(n-1))`` offline without replacement; online ``E_x`` over ``N(0, S_x)`` by Isserlis).
    ``K`` is the multiplicative part of the minibatch noise that
    :func:`discrete_stationary_covariance` (additive noise) leaves out; both are ``O(eta)``
    corrections to the continuous ``M``. Solved by the fixed-point iteration
    ``Sigma <- DLyap(eta^2 (C + f K(Sigma)))`` (contraction ``~ eta f E|x|^2 / 2``) to ``rtol``.
    Shape ``(P, P)``, ``P = d_in d_out``. Offline with ``d_in >= n`` everything vanishes.

    Raises ``ValueError`` for bad inputs, when ``eta omega_max >= 2``, and when the iteration does
    not converge (the second moment diverges: learning rate too large for this batch size).
    """
    v.positive_int("batch_size", batch_size)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    max_iterations = v.positive_int("max_iterations", max_iterations)
    eta = float(learning_rate)
    fluct_weights, sxx = _single_layer_solution(task)
    d_out, d_in = task.d_out, task.d_in
    h = np.kron(sxx, np.eye(d_out))
    c = np.asarray(noise_covariance((fluct_weights,), task, batch_size, replacement),
                   dtype=np.float64)
    f = float(batch_factor(task, batch_size, replacement))
    omega, basis = _range(h, _RANK_RTOL)
    if omega.size and eta * omega.max() >= 2.0:
        v.fail("learning_rate", eta, f"must be < 2 / largest curvature = {2.0 / omega.max():.6g}"
               " (discrete SGD has no stationary law beyond it)")
    step = np.diag(1.0 - eta * omega)
    x = None if task.online else np.asarray(task.data.inputs, dtype=np.float64)

    def fourth(sigma):                          # E_i[h_i Sigma h_i] - H Sigma H
        s4 = sigma.reshape(d_in, d_out, d_in, d_out)
        if x is not None:
            q = np.einsum("nj,jalb,nl->nab", x, s4, x)
            e = np.einsum("np,nq,nab->paqb", x, x, q) / x.shape[0]
        else:
            e = (np.einsum("pj,ql,jalb->paqb", sxx, sxx, s4)
                 + np.einsum("pl,qj,jalb->paqb", sxx, sxx, s4)
                 + np.einsum("pq,jl,jalb->paqb", sxx, sxx, s4))
        e = e.reshape(h.shape)
        return e - h @ sigma @ h

    def lyap(q):
        q_r = basis.T @ (0.5 * (q + q.T)) @ basis
        return basis @ scipy.linalg.solve_discrete_lyapunov(step, eta**2 * q_r) @ basis.T

    sigma = lyap(c)
    for _ in range(max_iterations):
        new = lyap(c + f * fourth(sigma))
        change = np.linalg.norm(new - sigma)
        sigma = new
        if not np.isfinite(change) or change <= rtol * max(np.linalg.norm(sigma), 1e-300):
            break
    if not np.all(np.isfinite(sigma)) or change > rtol * max(np.linalg.norm(sigma), 1e-300):
        v.fail("learning_rate", eta, f"the second moment of SGD does not converge at batch size "
               f"{batch_size} (no stationary law; lower the learning rate)")
    return 0.5 * (sigma + sigma.T)


def _single_layer_solution(task: Task):
    if task.online:
        return task.teacher, np.asarray(task.input_cov(), dtype=np.float64)
    sxx, syx = data_moments(task)
    return syx @ jnp.linalg.pinv(sxx, hermitian=True), np.asarray(sxx, dtype=np.float64)


def _offline(task: Task):
    if task.data is None:
        v.fail("task.data", None, "this quantity needs an offline task (use task.with_data)")
    return task.data


# ============================================================================ any depth (Sec. III)
def training_loss_hessian(weights, task: Task) -> Array:
    """Hessian of the training loss with respect to ``theta`` (the drift matrix), ``(P, P)``.

    ``H = J^T (S ⊗ I_{d_out}) J + R(G)``: ``J = [B_l^T ⊗ A_l]_l`` (``d vec W / d theta``) and
    ``S = S_xx`` (offline) or ``S_x`` (online); the residual part pairs layers ``l < m``,
    ``dtheta_m^T R_ml dtheta_l = tr(G^T A_m dW_m C_ml dW_l B_l)`` with the error matrix ``G``
    (``dlnlab.error_matrix``) and ``C_ml = W_{m-1} ... W_{l+1}``. ``R`` vanishes where
    ``G = 0``. Units 1/time (``t = step * eta``). Source: docs/theory.md §12 (paper eq. 3.27
    for ``L = 2`` in its transformed basis). Raises ``ValueError`` for mismatched weights.
    """
    widths = v.check_weights(weights, task.d_in, task.d_out)
    jac = noise_jacobian(weights).T                                    # (d_out d_in, P)
    sxx = task.input_cov() if task.online else data_moments(task)[0]
    hess = jac.T @ jnp.kron(sxx, jnp.eye(task.d_out, dtype=sxx.dtype)) @ jac
    g = error_matrix(weights, task)
    lefts, rights = partial_products(weights)
    offsets = np.cumsum([0] + [w.size for w in weights])
    depth = len(weights)
    for m in range(2, depth + 1):
        for ell in range(1, m):
            x = rights[ell - 1] @ g.T @ lefts[m - 1]                  # (d_{l-1}, d_m)
            c = span_product(weights, ell + 1, m - 1)                  # (d_{m-1}, d_l)
            d_m, d_m1, d_l, d_l1 = widths[m], widths[m - 1], widths[ell], widths[ell - 1]
            block = jnp.einsum("da,bc->badc", x, c).reshape(d_m1 * d_m, d_l1 * d_l)
            rows = slice(offsets[m - 1], offsets[m])
            cols = slice(offsets[ell - 1], offsets[ell])
            hess = hess.at[rows, cols].add(block).at[cols, rows].add(block.T)
    return hess


def gauge_tangents(weights) -> Array:
    """Tangents of the rescaling orbits, ``(P, sum_k d_k^2)`` over hidden layers ``k``.

    For hidden width ``d_k`` and ``X = E_ab`` (``d_k x d_k``): ``dW_k = X W_k``,
    ``dW_{k+1} = -W_{k+1} X`` (stacked), the derivative of
    ``(W_k, W_{k+1}) -> (e^{sX} W_k, W_{k+1} e^{-sX})`` which leaves ``W`` unchanged. The loss is
    flat along them, they are zero modes of the Hessian at a critical point, and the gradient
    noise is orthogonal to them at any weights: ``<xi, t> = tr(B_{k+1} R^T A_k X) -
    tr(B_{k+1} R^T A_k X) = 0`` (docs/theory.md §12). Empty ``(P, 0)`` for depth 1.
    """
    widths = v.check_weights(weights)
    sizes = [w.size for w in weights]
    offsets = np.cumsum([0] + sizes)
    columns = []
    for k in range(1, len(weights)):                  # hidden layer between W_k and W_{k+1}
        d = widths[k]
        w_k, w_next = weights[k - 1], weights[k]
        eye = jnp.eye(d, dtype=w_k.dtype)
        # X = E_ab: dW_k[p, j] = delta_pa W_k[b, j];  dW_{k+1}[i, q] = -W_{k+1}[i, a] delta_bq
        d_first = jnp.einsum("pa,bj->abpj", eye, w_k)                  # (a, b, d_k, d_{k-1})
        d_second = -jnp.einsum("ia,bq->abiq", w_next, eye)             # (a, b, d_{k+1}, d_k)
        first = jnp.swapaxes(d_first, 2, 3).reshape(d * d, -1)         # column-stacked vec
        second = jnp.swapaxes(d_second, 2, 3).reshape(d * d, -1)
        full = jnp.zeros((d * d, offsets[-1]), w_k.dtype)
        full = full.at[:, offsets[k - 1]:offsets[k]].set(first)
        full = full.at[:, offsets[k]:offsets[k + 1]].set(second)
        columns.append(full.T)
    if not columns:
        return jnp.zeros((offsets[-1], 0), weights[0].dtype)
    return jnp.concatenate(columns, axis=1)


def project_to_minimum(weights, task: Task) -> tuple[Array, ...]:
    """A global minimum of the training loss next to ``weights``, changing only ``W_1``.

    ``W_1 -> A_1^+ W* + (I - A_1^+ A_1) W_1`` with ``W*`` the least-squares end-to-end map
    (``S_yx S_xx^+`` offline, the teacher online) and ``A_1 = W_L ... W_2``: then
    ``W_L ... W_1 = W*`` when ``A_1`` has full row rank ``d_out`` (every width ``>= d_out``), so
    ``G = 0`` and the loss gradient vanishes. The part of ``W_1`` in the kernel of ``A_1`` (the
    initialisation's imprint) is kept. Raises ``ValueError`` when ``A_1`` is rank-deficient.
    """
    v.check_weights(weights, task.d_in, task.d_out)
    if task.online:
        target = task.teacher
    else:
        sxx, syx = data_moments(task)
        target = syx @ jnp.linalg.pinv(sxx, hermitian=True)
    if len(weights) == 1:
        return (target,)
    a = end_to_end(weights[1:])
    if int(np.linalg.matrix_rank(np.asarray(a))) < task.d_out:
        v.fail("weights", layer_widths(weights), "W_L ... W_2 must have full row rank d_out "
               "(every hidden width >= d_out) for a minimum with these upper layers")
    pinv = jnp.linalg.pinv(a)
    first = pinv @ target + (jnp.eye(a.shape[1], dtype=a.dtype) - pinv @ a) @ weights[0]
    return (first,) + tuple(weights[1:])


class LinearisedFluctuations(NamedTuple):
    """Linearised SGD fluctuations around ``theta*`` (paper Sec. III, any depth, docs §12)."""

    solution: np.ndarray          # theta* (P,) = flatten_weights(weights)
    widths: tuple[int, ...]       # (d_0, ..., d_L)
    drift: np.ndarray             # H (P, P): Hessian of the training loss at theta*
    diffusion: np.ndarray         # C (P, P): batch-gradient noise covariance at theta*
    stationary: StationaryFluctuations
    discrete_covariance: np.ndarray  # Sigma (P, P): discrete SGD on the quadratic; NaN if eta omega >= 2
    gradient_norm: float          # ||grad L(theta*)|| (should be ~0: theta* is a critical point)


def linearised_fluctuations(weights, task: Task, learning_rate, batch_size=1,
                            replacement: bool = True, *, rank_rtol: float = _RANK_RTOL,
                            gradient_rtol: float = 1e-6) -> LinearisedFluctuations:
    """Drift, diffusion and stationary covariances of SGD near the solution ``weights``.

    ``H`` = :func:`training_loss_hessian`; ``C`` = ``noise_covariance(weights, task, B)`` (online:
    fresh samples; offline: the fixed data set, with or without replacement);
    ``M`` = :func:`stationary_covariance` (continuous time, eq. 3.29 with the zero modes
    projected out) and ``Sigma`` = :func:`discrete_stationary_covariance` (all NaN when
    ``eta * omega_max >= 2``: discrete SGD diverges there). For ``L = 2``,
    ``N_o = 1``, whitened inputs and ``n -> infinity`` this reduces to the paper's eqs. 3.27-3.34
    (``C = sigma^2 H / B``, so ``M = (eta sigma^2 / 2B) Pi_range(H)``).

    Raises ``ValueError`` for bad inputs, when ``||grad L|| > gradient_rtol * ||H||_2 *
    ||theta||`` (not a critical point: linearising there is meaningless) and when ``H`` has a
    negative eigenvalue below ``-1e-6 ||H||_2`` (a saddle).
    """
    v.check_weights(weights, task.d_in, task.d_out)
    v.positive_int("batch_size", batch_size)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("gradient_rtol", gradient_rtol, minimum=0.0, strict=True)
    v.finite_scalar("rank_rtol", rank_rtol, minimum=0.0, strict=True)
    theta = np.asarray(flatten_weights(weights), dtype=np.float64)
    h = np.asarray(training_loss_hessian(weights, task), dtype=np.float64)
    h = 0.5 * (h + h.T)
    omega_all, vectors = np.linalg.eigh(h)                # one decomposition serves every solve
    largest = max(float(np.max(np.abs(omega_all))), 1e-300)
    grad = float(np.linalg.norm(np.asarray(flatten_weights(gradient(weights, task)))))
    scale = largest * max(np.linalg.norm(theta), 1e-300)
    if grad > gradient_rtol * scale:
        v.fail("weights", f"|grad L|={grad:.3e}", f"must be a critical point of the training loss "
               f"(|grad L| <= {gradient_rtol:g} x |H| |theta| = {gradient_rtol * scale:.3e}); "
               "run gradient descent to convergence or use project_to_minimum")
    if omega_all.min() < -1e-6 * largest:
        v.fail("weights", f"min eig H={omega_all.min():.3e}", "must be a minimum (the Hessian has a "
               "negative eigenvalue: a saddle, where no stationary law exists)")
    keep = omega_all > rank_rtol * largest
    omega, basis = omega_all[keep], vectors[:, keep]
    c = np.asarray(noise_covariance(weights, task, batch_size, replacement), dtype=np.float64)
    c = 0.5 * (c + c.T)
    eta = float(learning_rate)
    stat = _stationary_on_range(c, eta, omega, basis)
    if omega.size and eta * omega.max() >= 2.0:
        sigma = np.full_like(h, np.nan)            # discrete SGD diverges: labelled, not fatal
    else:
        sigma = _discrete_on_range(c, eta, omega, basis)
    return LinearisedFluctuations(theta, layer_widths(weights), h, c, stat, sigma, grad)


# ============================================================================ per layer (Fig. 9)
def layer_slices(widths) -> tuple[slice, ...]:
    """Slices of ``theta`` holding ``vec W_l`` for widths ``(d_0, ..., d_L)``."""
    widths = v.widths_tuple("widths", widths)
    offsets = np.cumsum([0] + [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)])
    return tuple(slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True))


class VarianceCurvature(NamedTuple):
    """Variance and curvature along the covariance eigenvectors of one layer (paper Fig. 9)."""

    variance: np.ndarray     # (k,) eigenvalues of Cov(vec dW_l), descending (units theta^2)
    curvature: np.ndarray    # (k,) a_i^T H_ll a_i: dL(s a_i) = ½ curvature s^2 at a minimum
    directions: np.ndarray   # (k, d_l, d_{l-1}) eigenvectors a_i as weight matrices


def layer_variance_curvature(covariance, hessian, widths, layer: int) -> VarianceCurvature:
    """Eigen-decompose the layer block ``Cov(vec dW_l)`` of ``covariance`` and measure the loss
    curvature along each eigenvector with the other layers fixed (paper eqs. 3.31, 3.37, Fig. 9).

    ``covariance``, ``hessian`` ``(P, P)`` in the stacked order (theory ``M`` or an empirical
    covariance of ``flatten_weights`` samples); ``widths`` ``(d_0, ..., d_L)``; ``layer`` 1-based.
    At a minimum the loss is exactly quadratic in one layer: ``L(W_l + s A) - L = ½ kappa s^2``
    with ``kappa = vec(A)^T H_ll vec(A)``. Raises ``ValueError`` for shape mismatches or a layer
    out of range.
    """
    slices = layer_slices(widths)
    widths = tuple(int(w) for w in widths)
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or not \
            1 <= layer <= len(slices):
        v.fail("layer", layer, f"must be an integer in 1..{len(slices)}")
    total = slices[-1].stop
    m = _symmetric("covariance", covariance, total, psd=False)
    h = _symmetric("hessian", hessian, total, psd=False)
    block = slices[layer - 1]
    variance, vectors = np.linalg.eigh(m[block, block])
    order = np.argsort(variance)[::-1]
    variance, vectors = variance[order], vectors[:, order]
    curvature = np.sum(vectors * (h[block, block] @ vectors), axis=0)     # a_i^T H_ll a_i
    d_l, d_prev = widths[layer], widths[layer - 1]
    directions = np.swapaxes(vectors.T.reshape(-1, d_prev, d_l), 1, 2)
    return VarianceCurvature(variance, curvature, directions)


class FlatnessFit(NamedTuple):
    """Fit of ``log variance = c + (psi / 2) log curvature``, i.e. ``variance ~ F^-psi`` with the
    flatness ``F = curvature^-½`` (the paper's inverse variance-flatness relation, eq. 3.37)."""

    exponent: float                          # psi (= 2 x slope); NaN if the curvature is constant
    exponent_standard_error: float           # 2 x linregress standard error of the slope
    exponent_interval: tuple[float, float]   # paired percentile-bootstrap interval of psi
    curvature_slope: float                   # d log curvature / d log variance (0: flat, no IVFR)
    curvature_slope_standard_error: float
    curvature_slope_interval: tuple[float, float]
    num_directions: int                      # directions used (variance and curvature > floor)


def fit_flatness_exponent(variance, curvature, *, rtol: float = 1e-8,
                          confidence_level: float = 0.95, num_resamples: int = 2000,
                          seed: int = 0) -> FlatnessFit:
    """Least-squares fits in log-log space of variance against curvature, both ways.

    ``psi = 2 d log variance / d log curvature`` (``psi = 2`` for the second layer of a two-layer
    net, eq. 3.37) and ``d log curvature / d log variance`` (≈ 0 for the first layer: curvature
    flat along its covariance eigenvectors), with ``scipy.stats.linregress`` standard errors and
    paired ``scipy.stats.bootstrap`` intervals over directions (``seed`` fixes the resampling).
    Directions whose variance or curvature is below ``rtol`` times the largest are left out (the
    linear theory's zero modes). Raises ``ValueError`` for mismatched shapes, negative values or
    fewer than 3 usable directions.
    """
    var = np.asarray(variance, dtype=np.float64).reshape(-1)
    kap = np.asarray(curvature, dtype=np.float64).reshape(-1)
    if var.shape != kap.shape:
        v.fail("curvature.shape", kap.shape, f"must match variance.shape {var.shape}")
    v.finite_array("variance", var)
    v.finite_array("curvature", kap)
    v.finite_scalar("confidence_level", confidence_level, minimum=0.0, strict=True, maximum=0.999999)
    num_resamples = v.positive_int("num_resamples", num_resamples)
    v.finite_scalar("rtol", rtol, minimum=0.0)
    if var.size and (var.min() < -rtol * np.abs(var).max() or kap.min() < -rtol * np.abs(kap).max()):
        v.fail("variance", "negative entries", "variance and curvature must be >= 0")
    keep = (var > rtol * var.max()) & (kap > rtol * kap.max()) if var.size else var > 0
    if int(keep.sum()) < 3:
        v.fail("variance", int(keep.sum()), "needs >= 3 directions with positive variance and curvature")
    x, y = np.log(kap[keep]), np.log(var[keep])

    def slope(a, b, axis=-1):
        a_c = a - a.mean(axis=axis, keepdims=True)
        b_c = b - b.mean(axis=axis, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):   # a degenerate resample: NaN
            return (a_c * b_c).sum(axis=axis) / (a_c * a_c).sum(axis=axis)

    def fit(a, b):
        if np.ptp(a) <= 1e-12 * max(np.abs(a).max(), 1.0):
            return np.nan, np.nan, (np.nan, np.nan)
        res = scipy.stats.linregress(a, b)
        boot = scipy.stats.bootstrap((a, b), slope, paired=True, vectorized=True,
                                     confidence_level=confidence_level,
                                     n_resamples=num_resamples, method="percentile",
                                     rng=np.random.default_rng(seed))
        ci = boot.confidence_interval
        return float(res.slope), float(res.stderr), (float(ci.low), float(ci.high))

    s_var, se_var, ci_var = fit(x, y)
    s_kap, se_kap, ci_kap = fit(y, x)
    return FlatnessFit(2.0 * s_var, 2.0 * se_var, (2.0 * ci_var[0], 2.0 * ci_var[1]),
                       s_kap, se_kap, ci_kap, int(keep.sum()))


# ============================================================================ two layers, closed forms
def _two_layer(first, second):
    w1 = np.asarray(first, dtype=np.float64)
    w2 = np.asarray(second, dtype=np.float64)
    v.check_weights((w1, w2))
    return w1, w2


def two_layer_relaxation_rates(first, second, input_variance=1.0) -> np.ndarray:
    """Non-zero relaxation rates of a two-layer net at a minimum with ``S_x = sigma_x^2 I``
    (paper eq. 3.38): ``sigma_x^2 (mu_k + nu_j)`` for the eigenvalues ``mu_k`` of ``W_1^T W_1``
    (``d_in`` of them) and ``nu_j`` of ``W_2 W_2^T`` (``d_out``), ascending, ``(d_in d_out,)``.

    For ``d_out = 1``: ``sigma_x^2 (D_1k + D_2)`` (``k <= d_h``) and ``sigma_x^2 D_2``
    (multiplicity ``d_in - d_h``); the other ``d_h (d_in + d_out) - d_in d_out`` rates are zero.
    Units 1/time (``t = step * eta``). Raises ``ValueError`` for shapes that do not chain.
    """
    w1, w2 = _two_layer(first, second)
    v.finite_scalar("input_variance", input_variance, minimum=0.0, strict=True)
    mu = np.linalg.eigvalsh(w1.T @ w1)
    nu = np.linalg.eigvalsh(w2 @ w2.T)
    return np.sort(input_variance * (mu[:, None] + nu[None, :]).ravel())


def two_layer_second_layer_theory(first, second, learning_rate, batch_size, label_variance,
                                  input_variance=1.0) -> tuple[np.ndarray, np.ndarray]:
    """Paper eqs. 3.34 and 3.37 for ``d_out = 1``: ``(variance, curvature)``, each ``(d_h,)``.

    ``variance_i = (eta sigma^2 / 2B) D_1i / (D_1i + D_2)`` along the eigenvectors ``a_i`` of
    ``W_1 W_1^T = A D_1 A^T`` (``D_2 = |W_2|^2``) and ``curvature_i = sigma_x^2 D_1i``; sorted by
    descending ``D_1``. Valid in the paper's limit (whitened ``S_x = sigma_x^2 I``, Hessian noise
    ``C = sigma^2 H / B``, i.e. ``n -> infinity`` or online, ``label_variance = sigma^2``).
    Raises ``ValueError`` unless ``d_out = 1``.
    """
    w1, w2 = _two_layer(first, second)
    if w2.shape[0] != 1:
        v.fail("second.shape", w2.shape, "eq. 3.34 is for one output (d_out = 1)")
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.positive_int("batch_size", batch_size)
    v.finite_scalar("label_variance", label_variance, minimum=0.0)
    v.finite_scalar("input_variance", input_variance, minimum=0.0, strict=True)
    d1 = np.sort(np.linalg.eigvalsh(w1 @ w1.T))[::-1]
    d2 = float(np.sum(w2 * w2))
    variance = learning_rate * label_variance / (2.0 * batch_size) * d1 / (d1 + d2)
    return variance, input_variance * d1

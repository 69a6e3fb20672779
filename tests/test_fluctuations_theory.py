"""Linearised SGD fluctuation theory, any depth (docs/theory.md §12; second seed paper Secs. II-III).

Every formula is checked against an independent computation (scipy solvers, a long simulation, finite
differences of ``dlnlab.gradient``, Monte Carlo minibatch gradients from ``dlnlab.minibatch_gradient``),
and each test also shows that a deliberately wrong formula fails the same check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import dlnlab as d
from conftest import assert_close_mc, assert_rejected_mc, check_covariance_mc, random_psd
from dlnlab import theory as th
from dlnlab.theory import fluctuations as fl

NUM_CHAINS = 128


def _rotated(key, rates):
    q = np.asarray(d.random_orthonormal(key, len(rates), len(rates)))
    return (q * np.asarray(rates)) @ q.T


def _anisotropic_pair(key):
    """A drift with rates 0.5, 1, 3 and a diffusion that does not commute with it."""
    k1, k2 = jax.random.split(key)
    h = _rotated(k1, [0.5, 1.0, 3.0])
    c = _rotated(k2, [2.0, 0.3, 0.05])
    return h, c


def _van_loan(drift, diffusion, dt):
    """Exact OU transition over ``dt``: ``(e^{-H dt}, int_0^dt e^{-Hs} C e^{-Hs} ds)`` from one
    matrix exponential (Van Loan 1978) — independent of any Lyapunov solver."""
    n = drift.shape[0]
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = drift
    block[:n, n:] = diffusion
    block[n:, n:] = -drift
    e = scipy.linalg.expm(block * dt)
    phi = e[n:, n:].T                                      # e^{-H dt}
    return phi, phi @ e[:n, n:]


def _chain_covariances(step, noise_root, key, num_steps, burn_in):
    """Per-chain sample covariances (known mean 0) of ``x_{k+1} = step x_k + noise_root z_k``."""
    size = step.shape[0]
    step, noise_root = jnp.asarray(step), jnp.asarray(noise_root)

    def body(carry, z):
        x, acc = carry
        x = x @ step.T + z @ noise_root.T
        return (x, acc + jnp.einsum("ci,cj->cij", x, x)), None

    def run(k):
        k1, k2 = jax.random.split(k)
        x = jnp.zeros((NUM_CHAINS, size))
        z = jax.random.normal(k1, (burn_in, NUM_CHAINS, size))
        (x, _), _ = jax.lax.scan(body, (x, jnp.zeros((NUM_CHAINS, size, size))), z)
        z = jax.random.normal(k2, (num_steps, NUM_CHAINS, size))
        (_, acc), _ = jax.lax.scan(body, (x, jnp.zeros((NUM_CHAINS, size, size))), z)
        return acc / num_steps

    return np.asarray(jax.jit(run)(key))


def _mean_and_error(per_chain):
    return per_chain.mean(axis=0), per_chain.std(axis=0, ddof=1) / np.sqrt(per_chain.shape[0])


# ------------------------------------------------------------------------------ Lyapunov solvers
def test_stationary_covariance_against_scipy_eigenbasis_and_the_q_form(key):
    """On a full-rank drift: scipy's solver on the full problem, the eigenbasis formula of
    ``solve_lyapunov`` and ``M = (eta/2) H^-1 (C + Q)`` with Q antisymmetric all agree; the
    detailed-balance form (2.33) does not (C does not commute with H)."""
    k1, k2 = jax.random.split(key)
    h, c, eta = random_psd(k1, 7, 0.1), random_psd(k2, 7, 0.1), 0.07
    sol = fl.stationary_covariance(h, c, eta)
    m = sol.covariance
    np.testing.assert_allclose(m, scipy.linalg.solve_continuous_lyapunov(h, eta * c), rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_allclose(m, th.solve_lyapunov(h, c, eta).covariance, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(sol.antisymmetric, -sol.antisymmetric.T, atol=1e-14)
    np.testing.assert_allclose(m, 0.5 * eta * np.linalg.solve(h, c + sol.antisymmetric),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(sol.detailed_balance, 0.5 * eta * np.linalg.solve(h, c), rtol=1e-10)
    assert np.linalg.norm(sol.detailed_balance - m) > 1e-2 * np.linalg.norm(m)   # wrong formula
    np.testing.assert_allclose(np.sort(sol.rates), np.linalg.eigvalsh(h), rtol=1e-12)
    assert sol.kernel_noise_fraction == 0.0 or sol.kernel_noise_fraction < 1e-14


def test_singular_drift_is_solved_on_its_range_and_reports_noise_outside_it(key):
    """A drift with a 2-dimensional kernel: the covariance equals the Lyapunov solution of the
    reduced problem, vanishes on the kernel, and noise put into the kernel is reported."""
    k1, k2 = jax.random.split(key)
    basis = np.asarray(d.random_orthonormal(k1, 6, 6))
    range_basis = basis[:, :4]
    h = range_basis @ np.diag([0.3, 1.0, 2.0, 4.0]) @ range_basis.T
    c_reduced = random_psd(k2, 4, 0.2)
    c = range_basis @ c_reduced @ range_basis.T
    sol = fl.stationary_covariance(h, c, 0.1)
    reduced = scipy.linalg.solve_continuous_lyapunov(np.diag([0.3, 1.0, 2.0, 4.0]), 0.1 * c_reduced)
    np.testing.assert_allclose(sol.covariance, range_basis @ reduced @ range_basis.T, rtol=1e-9,
                               atol=1e-14)
    np.testing.assert_allclose(sol.covariance @ basis[:, 4:], 0.0, atol=1e-14)
    assert sol.rates.size == 4 and sol.kernel_noise_fraction < 1e-13
    leak = basis[:, 4:5] @ basis[:, 4:5].T
    assert fl.stationary_covariance(h, c + 0.1 * leak, 0.1).kernel_noise_fraction > 1e-2


def test_lyapunov_solution_against_a_long_linear_sde_simulation(key):
    """128 chains of the OU process ``dx = -H x dt + sqrt(eta) C^½ dW`` stepped with its exact
    transition (Van Loan), 20,000 steps of ``dt = 0.2`` each (4,000 relaxation times of the
    slowest mode): the stationary covariance equals the Lyapunov solution within 5 standard
    errors (independent chains: the standard error includes the autocorrelation); the
    symmetrised detailed-balance form is rejected."""
    h, c = _anisotropic_pair(key)
    eta = 0.1
    step, noise = _van_loan(h, eta * c, 0.2)
    per_chain = _chain_covariances(step, np.linalg.cholesky(noise), jax.random.fold_in(key, 1),
                                   20_000, 200)
    mean, se = _mean_and_error(per_chain)
    exact = fl.stationary_covariance(h, c, eta).covariance
    iid_var = (np.outer(np.diag(exact), np.diag(exact)) + exact**2) / (20_000 * NUM_CHAINS)
    ess = np.min(iid_var / se**2) * 20_000 * NUM_CHAINS                  # effective sample size
    assert_close_mc(mean, exact, se, what=f"OU covariance (effective samples >= {ess:.0f})")
    db = fl.stationary_covariance(h, c, eta).detailed_balance
    assert_rejected_mc(mean, 0.5 * (db + db.T), se, what="detailed-balance covariance")


def test_discrete_lyapunov_against_a_long_discrete_sgd_run_on_a_quadratic(key):
    """SGD on ``½ x^T H x`` with Gaussian gradient noise of covariance C, ``eta = 0.2`` (so
    ``eta omega`` up to 0.6): 128 chains of 20,000 steps. The discrete Lyapunov solution matches
    within 5 standard errors; the continuous-time ``M`` is rejected (the O(eta) gap); scipy's
    solver equals the eigenbasis closed form ``eta C~ / (omega_i + omega_j - eta omega_i omega_j)``."""
    h, c = _anisotropic_pair(key)
    eta = 0.2
    sigma = fl.discrete_stationary_covariance(h, c, eta)
    omega, basis = np.linalg.eigh(h)
    c_tilde = basis.T @ c @ basis
    closed = eta * c_tilde / (omega[:, None] + omega[None, :] - eta * np.outer(omega, omega))
    np.testing.assert_allclose(sigma, basis @ closed @ basis.T, rtol=1e-10, atol=1e-15)
    step = np.eye(3) - eta * h
    per_chain = _chain_covariances(step, eta * np.linalg.cholesky(c), jax.random.fold_in(key, 2),
                                   20_000, 200)
    mean, se = _mean_and_error(per_chain)
    assert_close_mc(mean, sigma, se, what="discrete SGD covariance")
    continuous = fl.stationary_covariance(h, c, eta).covariance
    assert_rejected_mc(mean, continuous, se, what="continuous-time covariance")
    gap = np.linalg.norm(sigma - continuous) / np.linalg.norm(continuous)
    gap_small = (np.linalg.norm(fl.discrete_stationary_covariance(h, c, eta / 10)
                                - fl.stationary_covariance(h, c, eta / 10).covariance)
                 / np.linalg.norm(fl.stationary_covariance(h, c, eta / 10).covariance))
    assert 7.0 < gap / gap_small < 13.0                       # the gap is O(eta)


def test_ou_relaxation_against_gradient_flow_and_the_exact_transition(key):
    """Single layer, offline (Fig. 4 setting scaled down): the mean modes (2.27) equal the
    gradient flow integrated by scipy, the mode variances equal the exact transition covariance
    from a deterministic start; ``1 - exp(-omega t)`` in place of ``1 - exp(-2 omega t)`` fails."""
    task = d.Task.from_spectrum(key, 5, 1, [1.0], label_noise=0.3).with_data(
        jax.random.fold_in(key, 3), 7)
    fluct = th.single_layer_fluctuations(task, 0.1, batch_size=2)
    h, c = np.asarray(fluct.hessian), np.asarray(fluct.noise_covariance)
    w_star = np.asarray(fluct.solution).ravel()
    w0 = np.zeros(5)
    times = np.array([0.0, 0.5, 2.0, 10.0])
    rel = fl.ou_relaxation(h, c, 0.1, w_star, w0, times)
    sxx, syx = (np.asarray(a) for a in d.data_moments(task))
    flow = scipy.integrate.solve_ivp(lambda t, w: -(sxx @ w - syx.ravel()), (0, 10), w0,
                                     t_eval=times, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(rel.mean_modes, flow.y.T @ rel.basis, atol=1e-8)
    for i, t in enumerate(times[1:], start=1):
        _, cov_t = _van_loan(h, 0.1 * c, t)
        np.testing.assert_allclose(rel.mode_variance[i], np.diag(rel.basis.T @ cov_t @ rel.basis),
                                   rtol=1e-8, atol=1e-16)
        mean_dev = flow.y[:, i] - w_star
        excess = 0.5 * (mean_dev @ h @ mean_dev + np.trace(h @ cov_t))
        np.testing.assert_allclose(rel.excess_loss[i], excess, rtol=1e-8)
    m_diag = np.diag(rel.basis.T @ fl.stationary_covariance(h, c, 0.1).covariance @ rel.basis)
    wrong = m_diag * (1 - np.exp(-rel.rates * times[1]))
    assert np.max(np.abs(wrong - rel.mode_variance[1]) / rel.mode_variance[1]) > 0.1


# ------------------------------------------------------------------------------ single layer
def test_sample_space_matrix_gives_the_noise_and_vanishes_when_overparameterised(key):
    """Eq. 2.17: ``C = f sum_mu x_mu x_mu^T ⊗ K_mu`` equals ``noise_covariance`` at ``w*`` (two
    outputs, both batch factors); K = 0 and C = 0 when ``d_in >= n`` (eq. 2.16), the projector is
    the identity there and has mean diagonal ``d_in / n`` otherwise. The Hessian approximation
    (2.20) is not the finite-n noise."""
    task = d.Task.from_spectrum(key, 6, 2, [1.0, 0.4], label_noise=0.5).with_data(
        jax.random.fold_in(key, 4), 30)
    kmat = np.asarray(fl.sample_space_matrix(task))
    x = np.asarray(task.data.inputs)
    fl_single = th.single_layer_fluctuations(task, 0.1, batch_size=5, replacement=False)
    factor = (30 - 5) / (5 * 29)
    c = factor * np.einsum("ni,nj,nab->jbia", x, x, kmat).reshape(12, 12)   # (col, row) = vec order
    np.testing.assert_allclose(c, fl_single.noise_covariance, rtol=1e-10, atol=1e-14)
    pi = np.asarray(fl.sample_space_projector(task))
    np.testing.assert_allclose(pi @ pi, pi, atol=1e-12)
    np.testing.assert_allclose(np.trace(pi) / 30, 6 / 30, rtol=1e-12)
    hess_approx = np.asarray(fl.hessian_noise_covariance(task, 5, replacement=False))
    assert np.linalg.norm(hess_approx - c) > 0.05 * np.linalg.norm(c)
    over = d.Task.from_spectrum(key, 12, 1, [1.0], label_noise=0.5).with_data(
        jax.random.fold_in(key, 5), 9)
    np.testing.assert_allclose(fl.sample_space_matrix(over), 0.0, atol=1e-20)
    np.testing.assert_allclose(fl.sample_space_projector(over), np.eye(9), atol=1e-11)


def test_zero_stationary_fluctuations_when_overparameterised(key):
    """``d_in >= n``: the noise at the minimum-norm interpolant vanishes, so M = 0 and the
    discrete covariance too; the Hessian-approximated noise (2.20) would predict eta sigma^2/2B
    on the range of H — rejected."""
    task = d.Task.from_spectrum(key, 10, 1, [1.0], label_noise=0.5).with_data(
        jax.random.fold_in(key, 6), 8)
    fluct = th.single_layer_fluctuations(task, 0.1, batch_size=2)
    h, c = np.asarray(fluct.hessian), np.asarray(fluct.noise_covariance)
    assert np.abs(c).max() < 1e-24
    result = fl.stationary_covariance(h, c, 0.1)
    assert np.abs(result.covariance).max() < 1e-22 and result.rates.size == 8
    assert np.abs(fl.discrete_stationary_covariance(h, c, 0.1)).max() < 1e-22
    wrong = fl.stationary_covariance(h, np.asarray(fl.hessian_noise_covariance(task, 2)), 0.1)
    np.testing.assert_allclose(np.trace(wrong.covariance), 8 * 0.1 * 0.25 / 4, rtol=1e-8)


def test_isotropic_limit_as_the_sample_number_grows(key):
    """Relative distance of M (2.30) from the isotropic ``eta sigma^2 / 2B`` (2.34), averaged over
    16 data sets, at n/N = 4, 16, 64, 256 (N = 5): it decreases, from n/N = 16 on with a log-log
    slope near -1/2 (measured -0.51: the O(n^-1/2) sampling fluctuation of C about sigma^2 H / B).
    The detailed-balance error
    ||M_db - M|| / ||M|| also shrinks. The isotropic value without the batch size stays O(1) away."""
    ratios = np.array([4, 16, 64, 256])
    dist, db_err, wrong = [], [], []
    for ratio in ratios:
        per_set = []
        for s in range(16):
            task = d.Task.from_spectrum(key, 5, 1, [1.0], label_noise=0.5).with_data(
                jax.random.fold_in(key, 100 * int(ratio) + s), int(5 * ratio))
            f = th.single_layer_fluctuations(task, 0.1, batch_size=4)
            m, iso = np.asarray(f.covariance), np.asarray(f.isotropic)
            per_set.append((np.linalg.norm(m - iso) / np.linalg.norm(iso),
                            np.linalg.norm(np.asarray(f.detailed_balance) - m) / np.linalg.norm(m),
                            np.linalg.norm(m - 4 * iso) / np.linalg.norm(4 * iso)))
        a = np.mean(per_set, axis=0)
        dist.append(a[0])
        db_err.append(a[1])
        wrong.append(a[2])
    slope = np.polyfit(np.log(ratios[1:]), np.log(dist[1:]), 1)[0]
    assert np.all(np.diff(dist) < 0) and -0.65 < slope < -0.38, (dist, slope)
    assert np.all(np.diff(db_err) < 0), db_err
    assert min(wrong) > 0.5                                   # eta sigma^2 / 2 (no 1/B): rejected


# ------------------------------------------------------------------------------ any depth
@pytest.mark.parametrize("widths,online", [((4, 3, 2), False), ((3, 4, 3, 2), True),
                                           ((3, 2, 3, 2, 2), False)])
def test_drift_hessian_against_finite_differences_of_the_gradient(key, widths, online):
    """At random (non-critical) weights, the analytic Hessian equals central differences of
    ``dlnlab.gradient`` (error O(h^2) ~ 1e-10); the Gauss-Newton part alone fails."""
    task, weights = _state(key, widths, online, critical=False)
    h = np.asarray(fl.training_loss_hessian(weights, task))
    theta = np.asarray(d.flatten_weights(weights))
    step = 1e-5

    def grad(t):
        return np.asarray(d.flatten_weights(d.gradient(d.unflatten_weights(jnp.asarray(t), widths),
                                                       task)))

    fd = np.stack([(grad(theta + step * e) - grad(theta - step * e)) / (2 * step)
                   for e in np.eye(theta.size)], axis=1)
    scale = np.abs(h).max()
    np.testing.assert_allclose(h, fd, atol=1e-7 * scale)
    jac = np.asarray(d.noise_jacobian(weights)).T
    sxx = np.asarray(task.input_cov() if online else d.data_moments(task)[0])
    gauss_newton = jac.T @ np.kron(sxx, np.eye(widths[-1])) @ jac
    assert np.abs(gauss_newton - fd).max() > 1e-3 * scale


def _state(key, widths, online, critical=True, label_noise=0.4, num_samples=12):
    k_task, k_w, k_data = jax.random.split(key, 3)
    spectrum = np.linspace(1.0, 0.4, min(widths[0], widths[-1]))
    task = d.Task.from_spectrum(k_task, widths[0], widths[-1], spectrum, label_noise=label_noise)
    if not online:
        task = task.with_data(k_data, num_samples)
    weights = d.init_gaussian(k_w, widths, 1.0)
    return task, (fl.project_to_minimum(weights, task) if critical else weights)


@pytest.mark.parametrize("widths,online", [((4, 3, 1), False), ((3, 4, 3, 2), True)])
def test_zero_modes_carry_no_noise(key, widths, online):
    """Gauge tangents are orthogonal to the gradient noise at any weights, and zero modes of H at
    a minimum; the range of H has dimension d_in d_out and holds all of the noise."""
    task, weights = _state(key, widths, online, critical=False)
    tangents = np.asarray(fl.gauge_tangents(weights))
    c_any = np.asarray(d.noise_covariance(weights, task, 1))
    assert np.abs(tangents.T @ c_any @ tangents).max() < 1e-13 * np.abs(c_any).max()
    h_any = np.asarray(fl.training_loss_hessian(weights, task))
    assert np.abs(h_any @ tangents).max() > 1e-3 * np.abs(h_any).max()   # not critical: curved
    task, weights = _state(key, widths, online)
    result = fl.linearised_fluctuations(weights, task, 0.05, 2)
    tangents = np.asarray(fl.gauge_tangents(weights))
    assert np.abs(result.drift @ tangents).max() < 1e-12 * np.abs(result.drift).max()
    assert result.stationary.rates.size == widths[0] * widths[-1]
    assert result.stationary.kernel_noise_fraction < 1e-12
    assert np.abs(result.stationary.covariance @ tangents).max() < 1e-12 * np.abs(
        result.stationary.covariance).max()


def _minibatch_gradients(key, weights, task, batch, replacement, num):
    def one(k):
        if task.online:
            x, y = d.sample_batch(k, task, batch)
        else:
            x, y = d.sample_data_batch(k, task, batch, replacement)
        return d.flatten_weights(d.minibatch_gradient(weights, x, y))

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, num)))


@pytest.mark.parametrize("replacement", [True, False])
def test_diffusion_against_monte_carlo_minibatch_gradients_offline(key, replacement):
    """Two layers at a minimum on 12 samples, batch 4: the covariance of 20,000 minibatch gradients
    (``dlnlab.minibatch_gradient`` on ``sample_data_batch``) equals the diffusion matrix within 3
    Monte Carlo rms errors (Frobenius); the other sampling scheme's factor is rejected."""
    task, weights = _state(key, (5, 3, 1), online=False)
    result = fl.linearised_fluctuations(weights, task, 0.1, 4, replacement)
    g = _minibatch_gradients(jax.random.fold_in(key, 7), weights, task, 4, replacement, 20_000)
    full = np.asarray(d.flatten_weights(d.gradient(weights, task)))
    other = d.noise_covariance(weights, task, 4, not replacement)
    check_covariance_mc(g - full, result.diffusion, np.asarray(other), what="offline diffusion")


def test_diffusion_against_monte_carlo_online_deep_with_label_covariance(key):
    """Depth 3, two outputs, online with an anisotropic label-noise covariance at the teacher
    (a minimum): the minibatch-gradient covariance equals the diffusion matrix; the isotropic
    label noise of the same trace is rejected."""
    k_task, k_w = jax.random.split(key)
    label_cov = np.array([[0.5, 0.3], [0.3, 0.25]])
    task = d.Task.from_spectrum(k_task, 3, 2, [1.0, 0.5], label_noise=label_cov)
    weights = fl.project_to_minimum(d.init_gaussian(k_w, (3, 3, 2, 2), 1.0), task)
    result = fl.linearised_fluctuations(weights, task, 0.1, 2)
    g = _minibatch_gradients(jax.random.fold_in(key, 8), weights, task, 2, True, 20_000)
    iso = d.Task(task.teacher, label_noise=float(np.sqrt(np.trace(label_cov) / 2)))
    wrong = d.noise_covariance(weights, iso, 2)
    check_covariance_mc(g, result.diffusion, np.asarray(wrong), what="online diffusion")


def test_two_layer_closed_forms_of_the_paper(key):
    """Whitened online inputs ``S_x = 0.5 I``, one output, teacher = W_2 W_1 (so C = sigma^2 H / B
    exactly, the paper's limit): relaxation rates (3.38) and second-layer variances and curvatures
    (3.34, 3.37) equal the numeric theory; the first-layer curvature is flat (= sigma_x^2 D_2) along
    its non-zero-variance directions; the approximation D_1 / D_2 of eq. 3.36 differs."""
    weights = d.init_gaussian(key, (6, 4, 1), 1.0)
    task = d.Task(d.end_to_end(weights), label_noise=0.3, input_covariance=0.5 * np.eye(6))
    result = fl.linearised_fluctuations(weights, task, 0.1, 10)
    np.testing.assert_allclose(np.sort(result.stationary.rates),
                               fl.two_layer_relaxation_rates(*weights, 0.5), rtol=1e-10)
    second = fl.layer_variance_curvature(result.stationary.covariance, result.drift, result.widths, 2)
    variance, curvature = fl.two_layer_second_layer_theory(*weights, 0.1, 10, 0.09, 0.5)
    np.testing.assert_allclose(second.variance, variance, rtol=1e-9)
    np.testing.assert_allclose(second.curvature, curvature, rtol=1e-9)
    d1 = curvature / 0.5
    approx = 0.1 * 0.09 / 20 * d1 / float(np.sum(np.asarray(weights[1]) ** 2))
    assert np.max(np.abs(approx - variance) / variance) > 0.05
    first = fl.layer_variance_curvature(result.stationary.covariance, result.drift, result.widths, 1)
    live = first.variance > 1e-10 * first.variance.max()
    assert live.sum() == 6
    np.testing.assert_allclose(first.curvature[live], 0.5 * np.sum(np.asarray(weights[1]) ** 2),
                               rtol=1e-9)


def test_layer_curvature_is_the_loss_perturbation(key):
    """At a minimum, ``L(W_l + s A_i) - L = ½ kappa_i s^2`` exactly (the loss is quadratic in one
    layer) for the covariance eigenvectors of each layer (Fig. 9), measured with
    ``dlnlab.empirical_loss``; twice the curvature fails."""
    task, weights = _state(key, (4, 3, 2), online=False)
    result = fl.linearised_fluctuations(weights, task, 0.1, 3)
    base = float(d.empirical_loss(weights, task))
    for layer in (1, 2):
        vc = fl.layer_variance_curvature(result.stationary.covariance, result.drift, result.widths,
                                         layer)
        for kappa, direction in zip(vc.curvature[:3], vc.directions[:3], strict=True):
            moved = list(weights)
            moved[layer - 1] = moved[layer - 1] + 0.3 * direction
            delta = float(d.empirical_loss(tuple(moved), task)) - base
            np.testing.assert_allclose(delta, 0.5 * kappa * 0.09, rtol=1e-8, atol=1e-15)
            assert abs(delta - kappa * 0.09) > 1e-3 * delta


def test_flatness_exponent_fit(key):
    """On synthetic ``variance = curvature^(psi/2) x lognormal`` data the fit recovers psi within its
    95% interval and standard error, and rejects psi = 0 and 4; constant curvature gives psi = NaN
    and a curvature slope of exactly 0. On the two-layer theory with a small first layer
    (D_1 << D_2, eq. 3.36) psi is within 0.05 of 2."""
    rng = np.random.default_rng(0)
    kappa = np.exp(rng.uniform(-4, 0, 60))
    var = kappa ** 1.0 * np.exp(0.1 * rng.standard_normal(60))
    fit = fl.fit_flatness_exponent(var, kappa, seed=1)
    assert fit.num_directions == 60
    assert fit.exponent_interval[0] < 2.0 < fit.exponent_interval[1]
    assert abs(fit.exponent - 2.0) < 5 * fit.exponent_standard_error
    assert not fit.exponent_interval[0] < 0.0 < fit.exponent_interval[1]
    assert not fit.exponent_interval[0] < 4.0 < fit.exponent_interval[1]
    flat = fl.fit_flatness_exponent(var, np.full(60, 0.3), seed=1)
    assert np.isnan(flat.exponent) and abs(flat.curvature_slope) < 1e-12
    k1, k2 = jax.random.split(key)
    w1 = 0.05 * jax.random.normal(k1, (20, 30)) / np.sqrt(30)
    w2 = jax.random.normal(k2, (1, 20)) / np.sqrt(20)
    variance, curvature = fl.two_layer_second_layer_theory(w1, w2, 0.1, 10, 0.1, 1 / 30)
    theory_fit = fl.fit_flatness_exponent(variance, curvature)
    assert abs(theory_fit.exponent - 2.0) < 0.05


def test_inputs_are_validated_with_one_line_errors(key):
    h, c = _anisotropic_pair(key)
    with pytest.raises(ValueError, match=r"^learning_rate=1\.0: must be < 2 / largest curvature"):
        fl.discrete_stationary_covariance(h, c, 1.0)
    with pytest.raises(ValueError, match=r"^diffusion\.shape=\(2, 2\): must be \(3, 3\)"):
        fl.stationary_covariance(h, np.eye(2), 0.1)
    with pytest.raises(ValueError, match=r"^drift=.*positive semidefinite"):
        fl.stationary_covariance(-h, c, 0.1)
    task, weights = _state(key, (4, 3, 1), online=False, critical=False)
    with pytest.raises(ValueError, match=r"^weights=.*must be a critical point"):
        fl.linearised_fluctuations(weights, task, 0.1, 2)
    zero = tuple(jnp.zeros_like(w) for w in weights)           # a critical point, but a saddle
    with pytest.raises(ValueError, match=r"^weights='min eig H=.*must be a minimum"):
        fl.linearised_fluctuations(zero, task.online_task(), 0.1, 2)
    with pytest.raises(ValueError, match=r"^layer=3: must be an integer in 1\.\.2"):
        fl.layer_variance_curvature(np.eye(15), np.eye(15), (4, 3, 1), 3)
    with pytest.raises(ValueError, match=r"^task\.data=None"):
        fl.sample_space_matrix(task.online_task())
    with pytest.raises(ValueError, match=r"^second\.shape=\(2, 3\)"):
        fl.two_layer_second_layer_theory(np.ones((3, 4)), np.ones((2, 3)), 0.1, 1, 1.0)
    # the theory of a diverging learning rate is labelled (NaN), not fatal
    task, weights = _state(key, (4, 3, 1), online=False)
    result = fl.linearised_fluctuations(weights, task, 100.0, 2)
    assert np.all(np.isnan(result.discrete_covariance)) and np.all(np.isfinite(
        result.stationary.covariance))


def _sgd_chain_covariances(key, task, w_star, eta, batch, replacement, num_steps, burn_in,
                           num_chains=128):
    """Per-chain second moments of ``vec(W - W*)`` under real minibatch SGD (``dlnlab`` core)."""
    w_star = jnp.asarray(w_star)

    def step(w, k):
        if task.online:
            x, y = d.sample_batch(k, task, batch)
        else:
            x, y = d.sample_data_batch(k, task, batch, replacement)
        w = w - eta * d.minibatch_gradient((w,), x, y)[0]
        dw = d.flatten_weights((w - w_star,))
        return w, jnp.outer(dw, dw)

    def chain(k):
        k1, k2 = jax.random.split(k)
        w, _ = jax.lax.scan(step, w_star, jax.random.split(k1, burn_in))
        _, moments = jax.lax.scan(step, w, jax.random.split(k2, num_steps))
        return moments.mean(axis=0)

    return np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(key, num_chains)))


@pytest.mark.parametrize("online,replacement", [(False, True), (False, False), (True, True)])
def test_single_layer_discrete_covariance_against_real_sgd(key, online, replacement):
    """Real minibatch SGD on a single-layer net (3 inputs, 2 outputs; offline on 10 samples with
    or without replacement, or online), ``eta = 0.2``, batch 2, 128 chains of 2,000 steps: the exact discrete
    covariance (additive + multiplicative noise) matches within 5 standard errors; the
    additive-noise discrete Lyapunov solution and the continuous-time M are rejected."""
    task = d.Task.from_spectrum(key, 3, 2, [1.0, 0.5], label_noise=0.5)
    if not online:
        task = task.with_data(jax.random.fold_in(key, 9), 10)
    eta, batch = 0.2, 2
    exact = fl.single_layer_discrete_covariance(task, eta, batch, replacement)
    single = th.single_layer_fluctuations(task, eta, batch_size=batch, replacement=replacement)
    per_chain = _sgd_chain_covariances(jax.random.fold_in(key, 10), task, single.solution, eta,
                                       batch, replacement, 2_000, 200)
    mean, se = _mean_and_error(per_chain)
    assert_close_mc(mean, exact, se, what="discrete SGD covariance (multiplicative noise)")
    additive = fl.discrete_stationary_covariance(single.hessian, single.noise_covariance, eta)
    assert_rejected_mc(mean, additive, se, what="additive-noise discrete covariance")
    assert_rejected_mc(mean, single.covariance, se, what="continuous-time covariance")

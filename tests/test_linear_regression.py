"""Single-layer fluctuation theory of the second seed paper (docs/theory.md §10)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.linalg import solve_continuous_lyapunov

import dlnlab as d
from conftest import random_psd
from dlnlab import theory as th


def test_lyapunov_solution_against_scipy_and_the_q_form(key):
    """H M + M H = eta C (2.29) against scipy's Bartels-Stewart solver; M = (eta/2) H^-1 (C + Q)
    with Q antisymmetric (2.30-2.31); the detailed-balance form (2.33) differs unless [H, C] = 0."""
    k1, k2 = jax.random.split(key)
    h, c, eta = random_psd(k1, 6, 0.1), random_psd(k2, 6, 0.1), 0.05
    sol = th.solve_lyapunov(h, c, eta)
    m = np.asarray(sol.covariance)
    np.testing.assert_allclose(m, solve_continuous_lyapunov(h, eta * c), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(h @ m + m @ h, eta * c, atol=1e-13)
    q = np.asarray(sol.antisymmetric)
    np.testing.assert_allclose(q, -q.T, atol=1e-14)
    np.testing.assert_allclose(m, 0.5 * eta * np.linalg.solve(h, c + q), rtol=1e-10, atol=1e-14)
    db = np.asarray(sol.detailed_balance)
    np.testing.assert_allclose(db, 0.5 * eta * np.linalg.solve(h, c), rtol=1e-10)
    assert np.linalg.norm(db - m) > 1e-3 * np.linalg.norm(m)     # broken detailed balance
    # Commuting case: C = f(H) gives Q = 0 and the detailed-balance form is exact.
    c_comm = h @ h + 0.3 * h
    sol = th.solve_lyapunov(h, c_comm, eta)
    np.testing.assert_allclose(sol.antisymmetric, 0.0, atol=1e-13)
    np.testing.assert_allclose(sol.detailed_balance, sol.covariance, rtol=1e-10)


def test_singular_hessian_gives_the_pseudo_inverse_solution():
    """Flat directions (omega = 0) with no noise get zero variance, not inf/NaN."""
    h = np.diag([2.0, 1.0, 0.0])
    c = np.diag([1.0, 0.5, 0.0])
    sol = th.solve_lyapunov(h, c, 0.1)
    np.testing.assert_allclose(sol.covariance, np.diag([0.025, 0.025, 0.0]), atol=1e-15)


def _paper_noise_covariance(x, y, w, batch):
    """Eq. 2.14-2.15 of the seed paper, written out in numpy for one output:
    C = (1/S) [ (1/P) sum_mu grad l^mu grad l^mu^T - grad L grad L^T ], grad l^mu = (w.x - y) x."""
    per_sample = (x @ w - y)[:, None] * x                  # (P, N)
    mean = per_sample.mean(axis=0)
    return (per_sample.T @ per_sample / len(x) - np.outer(mean, mean)) / batch


@pytest.mark.parametrize("n", [12, 40])
def test_single_layer_noise_and_solution_match_the_paper(key, n):
    """w* = S_yx S_xx^-1 (2.7), C at w* equals eq. 2.15 (it is not zero at w* when N < P:
    only the sum of the per-sample gradients vanishes), H = S_xx."""
    task = d.Task.from_spectrum(key, 5, 1, [1.0], label_noise=0.4).with_data(
        jax.random.fold_in(key, n), n)
    fl = th.single_layer_fluctuations(task, 0.1, batch_size=3)
    x, y = (np.asarray(a) for a in task.data)
    w_star = np.linalg.solve(x.T @ x, x.T @ y[:, 0])
    np.testing.assert_allclose(np.asarray(fl.solution)[0], w_star, rtol=1e-10)
    np.testing.assert_allclose(fl.hessian, x.T @ x / n, rtol=1e-12)
    paper = _paper_noise_covariance(x, y[:, 0], w_star, 3)
    np.testing.assert_allclose(fl.noise_covariance, paper, rtol=1e-9, atol=1e-15)
    assert np.linalg.norm(paper) > 1e-3                       # genuinely nonzero
    np.testing.assert_allclose(np.asarray(fl.hessian) @ fl.covariance
                               + np.asarray(fl.covariance) @ fl.hessian, 0.1 * paper, atol=1e-13)


def test_large_data_limit_is_isotropic(key):
    """P -> infinity: C -> sigma^2 H / B (2.20) and M -> eta sigma^2 / (2B) I (2.34); the online
    task is that limit exactly, and finite data sets approach it."""
    sigma, eta, batch = 0.5, 0.1, 2
    online = d.Task.from_spectrum(key, 4, 1, [1.0], label_noise=sigma)
    fl = th.single_layer_fluctuations(online, eta, batch)
    np.testing.assert_allclose(fl.noise_covariance, sigma**2 * np.eye(4) / batch, atol=1e-15)
    np.testing.assert_allclose(fl.covariance, fl.isotropic, atol=1e-15)
    np.testing.assert_allclose(fl.isotropic, eta * sigma**2 / (2 * batch) * np.eye(4), atol=1e-15)
    errors = []
    for n in (40, 4_000, 400_000):
        offline = online.with_data(jax.random.fold_in(key, n), n)
        m = np.asarray(th.single_layer_fluctuations(offline, eta, batch).covariance)
        errors.append(np.linalg.norm(m - np.asarray(fl.isotropic)) / np.linalg.norm(fl.isotropic))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02


def test_multi_output_hessian_uses_column_stacking(key):
    """For d_out > 1 the Hessian of the empirical loss in vec(W) is S_xx ⊗ I (autodiff check)."""
    task = d.Task.from_spectrum(key, 3, 2, [1.0, 0.5], label_noise=0.3).with_data(key, 20)
    fl = th.single_layer_fluctuations(task, 0.1)

    def loss(theta):
        return d.empirical_loss(d.unflatten_weights(theta, (3, 2)), task)

    from dlnlab.core.products import flatten_weights
    hess = jax.hessian(loss)(flatten_weights((fl.solution,)))
    np.testing.assert_allclose(fl.hessian, hess, rtol=1e-12, atol=1e-14)
    assert np.linalg.norm(jax.grad(loss)(flatten_weights((fl.solution,)))) < 1e-12   # w* is optimal

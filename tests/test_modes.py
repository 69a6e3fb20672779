"""Modes, NTK, modewise diffusion and Ito drift at arbitrary states (docs/theory.md §5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from conftest import assert_close_mc, assert_rejected_mc, random_state
from dlnlab.core.products import flatten_weights, partial_products, span_product, unflatten_weights


def _mode_gradients(weights, task, left=None, right=None):
    """Autodiff gradient (N_modes, P) of a_i = left_i^T W right_i in stacked coordinates."""
    left = task.left if left is None else left
    right = task.right if right is None else right
    widths = d.layer_widths(weights)

    def amplitudes(theta):
        w = d.end_to_end(unflatten_weights(theta, widths))
        return jnp.einsum("oa,oi,ia->a", left, w, right)

    theta = flatten_weights(weights)
    return np.asarray(jax.jacfwd(amplitudes)(theta)), amplitudes, theta


STATES = [((3, 4, 2), 0.6, True), ((3, 4, 2), 0.0, False), ((2, 3, 4, 3), 0.4, False),
          ((4, 3, 3, 2, 3), 0.3, True)]


@pytest.mark.parametrize("widths,label_noise,whitened", STATES)
def test_diffusion_and_ito_equal_dense_and_autodiff(key, widths, label_noise, whitened):
    """Exact identities (float64, <= 1e-10 relative): D_a = (eta/B) grad a^T Sigma grad a,
    covariation = (eta/B) grad a_a^T Sigma grad a_b, mu_Ito = (eta/2B) tr(Hess a Sigma)."""
    task, weights = random_state(key, widths, label_noise, whitened)
    eta, batch = 0.05, 3
    sigma = np.asarray(d.noise_covariance(weights, task, batch_size=batch))
    grads, amplitudes, theta = _mode_gradients(weights, task)
    cov_ref = eta * grads @ sigma @ grads.T
    cov = np.asarray(d.mode_covariation(weights, task, eta, batch))
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10, atol=1e-12 * np.abs(cov_ref).max())
    np.testing.assert_allclose(d.modewise_diffusion(weights, task, eta, batch), np.diag(cov_ref),
                               rtol=1e-10, atol=1e-12 * np.abs(cov_ref).max())
    hessians = np.asarray(jax.jacfwd(jax.jacrev(amplitudes))(theta))   # (modes, P, P)
    ito_ref = 0.5 * eta * np.einsum("aij,ij->a", hessians, sigma)
    np.testing.assert_allclose(d.ito_drift(weights, task, eta, batch), ito_ref, rtol=1e-10,
                               atol=1e-12 * np.abs(ito_ref).max())


def test_cross_amplitude_diffusion_is_the_same_formula(key):
    """§5: the diffusion of a_ab uses N = Theta(u_a v_b^T): compare with the dense route."""
    task, weights = random_state(key, (3, 4, 3), 0.5, False)
    left = task.left[:, [0, 1, 2]]
    right = task.right[:, [1, 2, 0]]       # cross amplitudes a_12, a_23, a_31
    grads, _, _ = _mode_gradients(weights, task, left, right)
    sigma = np.asarray(d.noise_covariance(weights, task))
    ours = d.amplitude_covariation(weights, task, left, right, 0.1)
    np.testing.assert_allclose(ours, 0.1 * grads @ sigma @ grads.T, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("widths,label_noise,whitened", STATES[:3])
def test_diffusion_and_ito_against_monte_carlo_of_sgd_noise(key, widths, label_noise, whitened):
    """§10.4: D_a and mu_Ito against Monte Carlo over true per-sample gradients (x, eps drawn
    from the task), at random non-aligned states; a formula missing a term is rejected."""
    task, weights = random_state(key, widths, label_noise, whitened)
    eta, n = 0.1, 200_000
    x, y = d.sample_batch(jax.random.fold_in(key, 11), task, n)
    mean = d.population_gradient(weights, task)
    xi = [g - m[None] for g, m in zip(d.per_sample_gradients(weights, x, y), mean, strict=True)]

    # Diffusion: (eta/B) E[<grad a, xi>^2] with <grad a_a, xi> = sum_l <A_l^T u v^T B_l^T, xi_l>.
    lefts, rights = partial_products(weights)
    proj = sum(jnp.einsum("oa,ok,nkj,ji,ia->na", task.left, a, g, b, task.right)
               for a, b, g in zip(lefts, rights, xi, strict=True))
    z2 = np.asarray(proj) ** 2
    diff_mc, diff_se = eta * z2.mean(0), eta * z2.std(0) / np.sqrt(n)
    exact = np.asarray(d.modewise_diffusion(weights, task, eta))
    assert_close_mc(diff_mc, exact, diff_se, what="modewise diffusion")
    # Wrong: drop the commutation term tr(F F) (Cov(vec G) = I instead of I + K).
    err = np.asarray(d.error(weights, task))
    sx = np.asarray(task.input_cov())
    ntk = [np.asarray(d.ntk_operator(weights, jnp.outer(task.left[:, a], task.right[:, a])))
           for a in range(task.num_modes)]
    label = None if task.label_covariance is None else np.asarray(task.label_covariance)

    def without_commutation(nn):
        value = np.trace(nn.T @ err @ sx @ err.T @ nn @ sx)       # ||F||^2 only
        return value if label is None else value + np.trace(nn.T @ label @ nn @ sx)

    wrong = np.array([eta * without_commutation(nn) for nn in ntk])
    assert_rejected_mc(diff_mc, wrong, diff_se, what="diffusion without tr(FF)")

    # Ito drift: (eta/B) E[sum_{l<m} u^T A_m xi_m C_ml xi_l B_l v].
    depth = len(weights)
    ito_samples = 0.0
    for l in range(1, depth + 1):
        for m in range(l + 1, depth + 1):
            c_ml = span_product(weights, l + 1, m - 1)
            ito_samples = ito_samples + jnp.einsum(
                "oa,ok,nkp,pq,nqj,ji,ia->na", task.left, lefts[m - 1], xi[m - 1], c_ml, xi[l - 1],
                rights[l - 1], task.right)
    ito_samples = np.asarray(ito_samples)
    ito_mc, ito_se = eta * ito_samples.mean(0), eta * ito_samples.std(0) / np.sqrt(n)
    ito_exact = np.asarray(d.ito_drift(weights, task, eta))
    assert_close_mc(ito_mc, ito_exact, ito_se, what="Ito drift")
    # Wrong: drop the trace term tr(Gamma D S) D S of E[R Gamma R] (a Wick pairing forgotten).
    p, q = d.functional_factors(weights, task.left, task.right)
    wrong_ito = np.zeros(task.num_modes)
    for l in range(1, depth + 1):
        for m in range(l + 1, depth + 1):
            gamma = np.asarray(rights[m - 1].T @ span_product(weights, l + 1, m - 1) @ lefts[l - 1].T)
            expected = err @ sx @ err.T @ gamma.T @ sx
            if label is not None:
                expected = expected + label @ gamma.T @ sx
            wrong_ito += eta * np.einsum("oa,oi,ia->a", np.asarray(p[m - 1]), expected,
                                         np.asarray(q[l - 1]))
    assert_rejected_mc(ito_mc, wrong_ito, ito_se, what="Ito drift without the trace term")


@pytest.mark.parametrize("replacement", [True, False])
def test_offline_diffusion_and_ito_equal_dense(key, replacement):
    """Offline (finite data set): the same identities with Sigma_n and the batch factor."""
    task, weights = random_state(key, (3, 4, 2, 3), 0.5, True, data=11)
    eta, batch = 0.05, 4
    sigma = np.asarray(d.noise_covariance(weights, task, batch, replacement))
    grads, amplitudes, theta = _mode_gradients(weights, task)
    np.testing.assert_allclose(d.mode_covariation(weights, task, eta, batch, replacement),
                               eta * grads @ sigma @ grads.T, rtol=1e-10, atol=1e-14)
    hessians = np.asarray(jax.jacfwd(jax.jacrev(amplitudes))(theta))
    np.testing.assert_allclose(d.ito_drift(weights, task, eta, batch, replacement),
                               0.5 * eta * np.einsum("aij,ij->a", hessians, sigma),
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("offline", [False, True])
def test_ntk_and_gradient_flow_drift_against_jvp(key, offline):
    """dW/dt along -grad L equals -Theta(G) (jax.jvp), and so does each mode's drift."""
    task, weights = random_state(key, (3, 5, 4, 2), 0.3, False, data=17 if offline else None)
    direction = tuple(-g for g in d.gradient(weights, task))
    _, w_dot = jax.jvp(d.end_to_end, (weights,), (direction,))
    theta_g = d.ntk_operator(weights, d.error_matrix(weights, task))
    np.testing.assert_allclose(w_dot, -theta_g, rtol=1e-11, atol=1e-13)
    _, a_dot = jax.jvp(lambda w: d.mode_amplitudes(w, task), (weights,), (direction,))
    np.testing.assert_allclose(d.gradient_flow_mode_drift(weights, task), a_dot, rtol=1e-11,
                               atol=1e-13)
    # And the gradient itself is the autodiff gradient of the training loss.
    auto = jax.grad(d.training_loss)(weights, task)
    for ours, ref in zip(d.gradient(weights, task), auto, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-13)


def test_population_loss_is_the_expected_sample_loss(key):
    """0.5 tr(D S_x D^T) + 0.5 tr(S_eps) = E[0.5 ||W x - y||^2] (Monte Carlo)."""
    task, weights = random_state(key, (3, 4, 2), 0.7, False)
    x, y = d.sample_batch(jax.random.fold_in(key, 3), task, 200_000)
    r = np.asarray(x @ d.end_to_end(weights).T - y)
    losses = 0.5 * np.sum(r * r, axis=1)
    exact = float(d.population_loss(weights, task))
    assert_close_mc(losses.mean(), exact, losses.std() / np.sqrt(len(losses)), what="loss")
    without_noise_term = exact - 0.5 * float(np.trace(task.label_covariance))
    assert_rejected_mc(losses.mean(), without_noise_term, losses.std() / np.sqrt(len(losses)),
                       what="loss without tr(S_eps)")


def test_mode_amplitudes_and_cross_modes(key):
    task, weights = random_state(key, (4, 3, 3), 0.0, True)
    w = np.asarray(d.end_to_end(weights))
    cross = np.asarray(d.cross_mode_amplitudes(weights, task))
    np.testing.assert_allclose(cross, np.asarray(task.left).T @ w @ np.asarray(task.right), atol=1e-14)
    np.testing.assert_allclose(d.mode_amplitudes(weights, task), np.diag(cross), atol=1e-14)

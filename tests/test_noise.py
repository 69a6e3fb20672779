"""Gradient-noise covariance and samplers (docs/theory.md §3-§4)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from conftest import check_covariance_mc, random_state
from dlnlab.core.products import flatten_weights


def _stack(per_layer):
    """Column-stacked ``theta`` for every sample: ``(N, P)`` from a tuple of ``(N, d_l, d_{l-1})``."""
    return np.concatenate([np.asarray(jnp.swapaxes(g, 1, 2)).reshape(g.shape[0], -1)
                           for g in per_layer], axis=1)


def _wrong_covariance_without_commutation(weights, task):
    """Sigma with (I + K) replaced by I: the natural mistake of treating x x^T - S as white."""
    err = d.error(weights, task)
    d_in = task.d_in
    root = np.eye(d_in) if task.whitened else np.asarray(task.input_sqrt)
    factor = np.kron(root, np.asarray(err) @ root)
    cov = factor @ factor.T
    if task.label_covariance is not None:
        cov = cov + np.kron(np.asarray(task.input_cov()), np.asarray(task.label_covariance))
    j = np.asarray(d.noise_jacobian(weights))
    return j @ cov @ j.T


CASES = [
    # widths, label noise, whitened
    ((3, 2), 0.0, True),          # L = 1, non-square
    ((3, 2), 0.7, False),
    ((3, 4, 2), 0.0, True),       # L = 2, non-square layers
    ((3, 4, 2), 0.7, True),
    ((4, 3, 5, 2), 0.5, False),   # L = 3
    ((2, 3, 2, 3), 0.0, False),
]


@pytest.mark.parametrize("widths,label_noise,whitened", CASES)
def test_block_covariance_matches_per_sample_gradients(key, widths, label_noise, whitened):
    """§10.1: Sigma (block formula) = empirical covariance of 10^5 true per-sample gradients."""
    task, weights = random_state(key, widths, label_noise, whitened)
    x, y = d.sample_batch(jax.random.fold_in(key, 1), task, 100_000)
    per_sample = _stack(d.per_sample_gradients(weights, x, y))
    noise = per_sample - np.asarray(flatten_weights(d.population_gradient(weights, task)))
    sigma = np.asarray(d.noise_covariance(weights, task))
    wrong = _wrong_covariance_without_commutation(weights, task)
    check_covariance_mc(noise, sigma, wrong, what=f"Sigma {widths} sigma={label_noise}")


def test_per_sample_gradient_is_autodiff_gradient(key):
    """The per-sample gradient formula A^T (W x - y) x^T B^T equals jax.grad of 0.5||Wx - y||^2."""
    task, weights = random_state(key, (3, 4, 5, 2), 0.3, False)
    x, y = d.sample_batch(key, task, 7)
    ours = d.per_sample_gradients(weights, x, y)

    def loss(ws, xi, yi):
        r = d.end_to_end(ws) @ xi - yi
        return 0.5 * jnp.sum(r * r)

    auto = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(weights, x, y)
    for a, b in zip(ours, auto, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_noise_covariance_is_psd_with_bounded_rank(key):
    """Sigma is symmetric PSD of rank <= d_out d_in (so a plain Cholesky factorisation fails)."""
    task, weights = random_state(key, (3, 4, 5, 2), 0.0, True)
    sigma = np.asarray(d.noise_covariance(weights, task))
    np.testing.assert_allclose(sigma, sigma.T, atol=1e-13)
    evals = np.linalg.eigvalsh(sigma)
    assert evals.min() > -1e-12 * evals.max()
    assert np.sum(evals > 1e-10 * evals.max()) <= task.d_out * task.d_in < sigma.shape[0]


@pytest.mark.parametrize("widths,label_noise,whitened", [CASES[1], CASES[3], CASES[4]])
def test_structured_and_dense_samplers_have_the_exact_covariance(key, widths, label_noise, whitened):
    """§10.2: the O(L d^3) structured sampler and the dense eigh sampler both draw N(0, Sigma/B)."""
    task, weights = random_state(key, widths, label_noise, whitened)
    batch = 4
    sigma = np.asarray(d.noise_covariance(weights, task, batch_size=batch))
    wrong = _wrong_covariance_without_commutation(weights, task) / batch
    fast = _stack(d.sample_noise(jax.random.fold_in(key, 2), weights, task, 100_000, batch_size=batch))
    check_covariance_mc(fast, sigma, wrong, what="structured sampler")
    dense = _stack(d.sample_noise_dense(jax.random.fold_in(key, 3), weights, task, 100_000,
                                        batch_size=batch))
    check_covariance_mc(dense, sigma, wrong, what="dense eigh sampler")


@pytest.mark.parametrize("replacement", [True, False])
def test_offline_sampler_has_the_finite_data_covariance(key, replacement):
    """§3.2: sum_i w_i (R_i - Rbar) with w_i ~ N(0, c/n) has covariance c Sigma_n."""
    task, weights = random_state(key, (3, 4, 2), 0.5, True)
    task = task.with_data(jax.random.fold_in(key, 4), 9)
    sigma = np.asarray(d.noise_covariance(weights, task, batch_size=3, replacement=replacement))
    samples = _stack(d.sample_noise(jax.random.fold_in(key, 5), weights, task, 100_000, batch_size=3,
                                    replacement=replacement))
    other = np.asarray(d.noise_covariance(weights, task, batch_size=3, replacement=not replacement))
    check_covariance_mc(samples, sigma, other, what=f"offline sampler replacement={replacement}")


def _batch_gradient(weights, task, index):
    x, y = task.data
    return np.asarray(flatten_weights(d.minibatch_gradient(weights, x[np.array(index)],
                                                           y[np.array(index)])))


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_without_replacement_factor_by_enumeration(key, batch):
    """§10.3: over all C(n, B) batches, Cov(batch gradient) = Sigma_n (n - B) / (B (n - 1))."""
    task, weights = random_state(key, (3, 4, 2), 0.5, True)
    n = 5
    task = task.with_data(jax.random.fold_in(key, 6), n)
    grads = np.array([_batch_gradient(weights, task, idx)
                      for idx in itertools.combinations(range(n), batch)])
    centred = grads - grads.mean(axis=0)
    exact = centred.T @ centred / len(grads)
    ours = np.asarray(d.noise_covariance(weights, task, batch_size=batch, replacement=False))
    scale = max(np.abs(exact).max(), 1e-300)
    np.testing.assert_allclose(ours, exact, atol=1e-10 * scale)
    # The batch mean is the full-data gradient, as unbiasedness requires.
    np.testing.assert_allclose(grads.mean(axis=0),
                               np.asarray(flatten_weights(d.gradient(weights, task))), atol=1e-12)
    if 1 < batch < n:  # at B = 1 both factors are 1
        wrong = np.asarray(d.noise_covariance(weights, task, batch_size=batch, replacement=True))
        assert np.abs(wrong - exact).max() > 1e-3 * scale   # the with-replacement factor is wrong


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_with_replacement_factor_by_enumeration(key, batch):
    """Over all n^B ordered batches drawn with replacement, Cov = Sigma_n / B."""
    task, weights = random_state(key, (2, 3, 2), 0.3, False)
    n = 4
    task = task.with_data(jax.random.fold_in(key, 7), n)
    grads = np.array([_batch_gradient(weights, task, idx)
                      for idx in itertools.product(range(n), repeat=batch)])
    centred = grads - grads.mean(axis=0)
    exact = centred.T @ centred / len(grads)
    ours = np.asarray(d.noise_covariance(weights, task, batch_size=batch))
    np.testing.assert_allclose(ours, exact, atol=1e-10 * np.abs(exact).max())


def test_offline_covariance_tends_to_online_for_large_data(key):
    """Sigma_n -> Sigma as n grows (law of large numbers); the offline path is not a separate law."""
    task, weights = random_state(key, (3, 4, 2), 0.5, False)
    online = np.asarray(d.noise_covariance(weights, task))
    errors = []
    for n in (1_000, 100_000):
        offline = np.asarray(d.noise_covariance(weights, task.with_data(jax.random.fold_in(key, n), n)))
        errors.append(np.linalg.norm(offline - online) / np.linalg.norm(online))
    # The error of an average of n samples shrinks like n^-1/2: a factor ~10 here.
    assert errors[1] < errors[0] / 4
    assert errors[1] < 0.05


def test_commutation_matrix_transposes(key):
    x = np.asarray(jax.random.normal(key, (3, 5)))
    k = np.asarray(d.commutation_matrix(3, 5))
    np.testing.assert_array_equal(k @ x.T.reshape(-1), x.reshape(-1))  # vec X -> vec X^T


@pytest.mark.parametrize("kwargs", [dict(), dict(label_noise=0.4),
                                    dict(label_noise=0.4, input_covariance=np.diag(np.arange(1.0, 6.0)))])
def test_noise_trace_equals_dense_trace(kwargs):
    """Closed-form tr(Sigma) (docs/theory.md §5.4) against the trace of the dense block formula."""
    task = d.Task.from_spectrum(jax.random.key(1), 5, 4, [1.0, 0.5], **kwargs)
    weights = d.init_gaussian(jax.random.key(2), (5, 3, 4), 0.5)
    for batch in (1, 3):
        np.testing.assert_allclose(d.noise_trace(weights, task, batch),
                                   jnp.trace(d.noise_covariance(weights, task, batch)), rtol=1e-10)
    offline = task.with_data(jax.random.key(3), 17)
    for replacement in (True, False):
        np.testing.assert_allclose(d.noise_trace(weights, offline, 3, replacement),
                                   jnp.trace(d.noise_covariance(weights, offline, 3, replacement)),
                                   rtol=1e-10)

"""The second-order stationary mean of each mode (docs/theory.md §13, dlnlab.theory.mean_shift).

Independent references: the analytic Hessian of `training_loss_hessian` (finite differences of
its trace against the JAX third derivative), the one-mode law of docs/theory.md §9 (first order
and quadrature), the gauge tangents, and a long online-SGD simulation of a width-3 network started
at the minimum. Each test also rejects a wrong formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close_mc, assert_rejected_mc
from dlnlab.core.products import flatten_weights, unflatten_weights
from dlnlab.core.task import Task
from dlnlab.experiments.config import validate_config
from dlnlab.experiments.run import run_experiment
from dlnlab.theory import (
    first_order_moments,
    gauge_tangents,
    single_layer_discrete_covariance,
    stationary_moments,
)
from dlnlab.theory.fluctuations import training_loss_hessian
from dlnlab.theory.mean_shift import (
    mode_amplitude_expansion,
    mode_layer_scales,
    per_sample_hessian_excess,
    rank_one_mean_shift,
    sgd_discrete_covariance,
    solution_weights,
    stationary_mean_shift,
    third_derivative_contraction,
)


def _task(d_in, d_out, spectrum, sigma, seed=1, **kw):
    return Task.from_spectrum(jax.random.key(seed), d_in, d_out, spectrum, label_noise=sigma,
                              dtype=jnp.float64, **kw)


def test_third_derivative_contraction_matches_finite_differences_of_the_hessian_trace():
    # Non-critical weights, depth 3, anisotropic inputs: every part of the Hessian (residual
    # terms included) changes with theta. Reference: central differences of tr(H(theta) Sigma)
    # with the analytic Hessian of docs/theory.md §12 (no JAX derivative of order > 0 involved).
    task = _task(2, 2, [1.0, 0.5], 0.3, input_covariance=np.array([[1.0, 0.3], [0.3, 0.7]]))
    widths = (2, 3, 2, 2)
    keys = jax.random.split(jax.random.key(7), 3)
    weights = tuple(0.7 * jax.random.normal(k, (widths[i + 1], widths[i]), jnp.float64)
                    for i, k in enumerate(keys))
    theta = np.asarray(flatten_weights(weights))
    p = theta.size
    a = np.asarray(jax.random.normal(jax.random.key(3), (p, p), jnp.float64))
    sigma = a @ a.T / p
    exact = third_derivative_contraction(weights, task, sigma)

    def trace(t):
        h = training_loss_hessian(unflatten_weights(jnp.asarray(t), widths), task)
        return float(np.sum(np.asarray(h) * sigma))

    step = 1e-5
    numeric = np.array([(trace(theta + step * e) - trace(theta - step * e)) / (2 * step)
                        for e in np.eye(p)])
    scale = np.max(np.abs(numeric))
    assert np.max(np.abs(exact - numeric)) <= 1e-7 * scale
    # Wrong formula: only the diagonal of Sigma (the off-diagonal couplings dropped).
    wrong = third_derivative_contraction(weights, task, np.diag(np.diag(sigma)))
    assert np.max(np.abs(wrong - numeric)) > 1e-2 * scale


@pytest.mark.parametrize("depth,s,sigma,eta", [(2, 1.0, 0.5, 0.01), (3, 0.7, 1.0, 0.02),
                                               (4, 1.3, 0.5, 0.01)])
def test_width_one_is_the_one_mode_law(depth, s, sigma, eta):
    # A width-1 network has no transverse directions: the theory must be the one-mode law of
    # docs/theory.md §9, m - s = -(eta/B)((L-1)/2) sigma^2 s^(1-2/L) (an independent closed form).
    task = _task(1, 1, [s], sigma)
    weights = solution_weights(task, (1,) * (depth + 1))
    shift = stationary_mean_shift(weights, task, eta, 1, covariance="continuous")
    first = float(np.asarray(first_order_moments([s], depth, eta, 1, sigma)[1])[0]) - s
    assert abs(float(shift.shift[0]) - first) <= 1e-10 * abs(first)
    assert shift.kernel_force_fraction <= 1e-8
    # Dropping the curvature term 1/2 tr(Hess a Sigma) is off by a factor 3/2 (L = 2) and more.
    assert abs(float(shift.linear[0]) - first) >= 0.3 * abs(first)
    # The exact stationary mean of the one-mode SDE (quadrature) differs by O(eta^2): halving
    # eta divides the residual by about 4 while the shift itself halves.
    residual = []
    for rate in (eta, eta / 2):
        exact = float(np.asarray(stationary_moments([s], depth, rate, 1, sigma).mean)[0]) - s
        theory = float(stationary_mean_shift(weights, task, rate, 1,
                                             covariance="continuous").shift[0])
        residual.append(abs(exact - theory))
    assert residual[1] <= residual[0] / 3.0
    assert residual[0] <= 0.1 * abs(first)


@pytest.mark.parametrize("depth,d_in,d_out,hidden,s,sigma,batch", [
    (2, 4, 2, 3, 1.5, 1.0, 1), (3, 3, 5, 4, 2.0, 0.7, 2)])
def test_rank_one_closed_form_and_hidden_width(depth, d_in, d_out, hidden, s, sigma, batch):
    task = _task(d_in, d_out, [s], sigma)
    widths = (d_in,) + (hidden,) * (depth - 1) + (d_out,)
    closed = rank_one_mean_shift(s, depth, d_in, d_out, 0.01, batch, sigma)
    for key in (None, jax.random.key(5)):          # hidden bases: coordinates or Haar
        weights = solution_weights(task, widths, key=key)
        got = stationary_mean_shift(weights, task, 0.01, batch, covariance="continuous")
        assert abs(float(got.shift[0]) - closed) <= 1e-9 * abs(closed)
    # A wider hidden layer changes nothing (idle units); the one-mode law is far away.
    wider = (d_in,) + (hidden + 2,) * (depth - 1) + (d_out,)
    got = stationary_mean_shift(solution_weights(task, wider), task, 0.01, batch,
                                covariance="continuous")
    assert abs(float(got.shift[0]) - closed) <= 1e-9 * abs(closed)
    one_mode = rank_one_mean_shift(s, depth, 1, 1, 0.01, batch, sigma)
    assert abs(closed - one_mode) >= 0.3 * abs(closed)
    # An unbalanced point on the same manifold gives another value (the drift matters).
    scales = np.linspace(0.7, 1.4, depth)
    moved = solution_weights(task, widths, layer_scales=scales)
    np.testing.assert_allclose(np.prod(mode_layer_scales(moved, task, 1)), s, rtol=1e-12)
    other = stationary_mean_shift(moved, task, 0.01, batch, covariance="continuous")
    assert abs(float(other.shift[0]) - closed) >= 1e-3 * abs(closed)


def test_kernel_components_do_not_reach_the_modes():
    # a is gauge invariant: its gradient is orthogonal to every rescaling tangent, so the
    # kernel part of mu never enters grad a . mu (checked at a rank-two, unbalanced minimum).
    task = _task(3, 3, [1.0, 0.5], 0.5)
    widths = (3, 3, 3, 3)
    weights = solution_weights(task, widths, key=jax.random.key(2),
                               layer_scales=[[1.2, 0.9], [0.8, 1.0], [1.0, 1.1]])
    tangents = np.asarray(gauge_tangents(weights))
    shift = stationary_mean_shift(weights, task, 0.01, 1)
    jac, _ = mode_amplitude_expansion(weights, task, shift.covariance)
    assert np.max(np.abs(jac @ tangents)) <= 1e-12 * np.linalg.norm(jac) * np.linalg.norm(tangents)
    np.testing.assert_allclose(jac @ (shift.mean_displacement + tangents @ np.ones(tangents.shape[1])),
                               shift.linear, atol=1e-14)
    # mu lies in the range of H; the same tangent directions are not orthogonal to the
    # amplitudes' Hessian part, so the construction is not vacuous.
    assert np.max(np.abs(tangents.T @ shift.mean_displacement)) <= 1e-10
    assert np.linalg.norm(jac) > 0.1


def test_random_hessian_term_against_monte_carlo_and_the_single_layer_solver():
    # E[h Sigma h] - H Sigma H for the per-sample Hessian h of 0.5 |W(theta) x - y|^2 at a
    # minimum (depth 2, 3 inputs, 2 outputs: the vec index order matters), against 40,000
    # sampled Hessians (JAX, independent of the Isserlis formula), elementwise within 5 SE.
    sigma = 0.8
    task = _task(3, 2, [1.0], sigma)
    widths = (3, 2, 2)
    weights = solution_weights(task, widths, key=jax.random.key(4))
    theta = flatten_weights(weights)
    p = theta.size
    a = np.asarray(jax.random.normal(jax.random.key(9), (p, p), jnp.float64))
    cov = a @ a.T / p
    formula = per_sample_hessian_excess(weights, task, cov)

    def sample_loss(t, x, eps):
        w = unflatten_weights(t, widths)
        y = task.teacher @ x + eps
        return 0.5 * jnp.sum((w[1] @ w[0] @ x - y) ** 2)

    n = 40_000
    kx, ke = jax.random.split(jax.random.key(11))
    xs = jax.random.normal(kx, (n, 3), jnp.float64)
    es = sigma * jax.random.normal(ke, (n, 2), jnp.float64)
    hs = np.asarray(jax.vmap(jax.hessian(sample_loss), in_axes=(None, 0, 0))(theta, xs, es))
    hcov = np.einsum("nij,jk,nkl->nil", hs, cov, hs)
    h = hs.mean(axis=0)
    estimate = hcov.mean(axis=0) - h @ cov @ h
    se = hcov.std(axis=0, ddof=1) / np.sqrt(n)
    assert_close_mc(estimate, formula, se + 1e-12, what="E[h Sigma h] - H Sigma H")
    # Wrong formula: the label-noise part of the residual Hessian left out.
    gauss_newton = per_sample_hessian_excess(weights, task.replace(label_covariance=None,
                                                                   label_sqrt=None), cov)
    assert_rejected_mc(estimate, gauss_newton, se + 1e-12, what="without the residual part")
    # Depth 1: the fixed point equals the single-layer exact discrete covariance (§12).
    task1 = _task(3, 2, [1.0, 0.5], 0.5)
    ours = sgd_discrete_covariance((np.asarray(task1.teacher),), task1, 0.2, 2, rtol=1e-11)
    exact = np.asarray(single_layer_discrete_covariance(task1, 0.2, 2))
    np.testing.assert_allclose(ours, exact, atol=1e-7 * np.abs(exact).max())


def test_online_sgd_from_the_minimum_has_the_transverse_mean():
    # Width 3, depth 2, rank-one teacher: SGD (the engine) started at the balanced minimum.
    # Theory (discrete Sigma): -(eta sigma^2/2B)(L-1)[1 + 4/L] = 3x the one-mode law. Each run's
    # time average over t in [3, 15] is one independent sample, so the standard error over
    # runs is honest whatever the autocorrelation. At this eta the O(eta^2) terms the theory
    # leaves out (docs/theory.md §13) are ~7% of the shift, about one standard error.
    eta, sigma, runs = 0.02, 0.5, 2048
    config = validate_config({
        "name": "mean-shift-test", "seed": 3, "runs": runs, "methods": ["sgd"],
        "dtype": "float32",
        "task": {"d_in": 3, "d_out": 3, "hidden": [3], "spectrum": [1.0], "label_noise": sigma},
        "init": {"kind": "solution"},
        "training": {"learning_rate": eta, "batch_size": 1, "horizon": 15.0},
        "record": {"points": 61, "spacing": "linear", "variables": ["amplitude", "diffusion"]}})
    ds = run_experiment(config)
    a = ds.amplitude.sel(method_name="sgd").isel(mode=0).transpose("run", "time").values
    window = ds.time.values >= 3.0
    per_run = a[:, window].astype(np.float64).mean(axis=1) - 1.0
    mean, se = per_run.mean(), per_run.std(ddof=1) / np.sqrt(runs)
    task = _task(3, 3, [1.0], sigma)
    theory = stationary_mean_shift(solution_weights(task, (3, 3, 3)), task, eta, 1)
    assert_close_mc(mean, theory.shift[0], se, what="SGD mean shift vs transverse theory")
    one_mode = float(np.asarray(first_order_moments([1.0], 2, eta, 1, sigma)[1])[0]) - 1.0
    assert_rejected_mc(mean, one_mode, se, what="one-mode law")


def test_bad_inputs_are_one_line_errors():
    task = _task(2, 2, [1.0], 0.5)
    weights = solution_weights(task, (2, 2, 2))
    with pytest.raises(ValueError, match=r"^covariance='x': must be one of"):
        stationary_mean_shift(weights, task, 0.01, covariance="x")
    with pytest.raises(ValueError, match=r"^covariance.shape=\(3, 3\): must be"):
        third_derivative_contraction(weights, task, np.eye(3))
    with pytest.raises(ValueError, match=r"^layer_scales=.*must be > 0"):
        solution_weights(task, (2, 2, 2), layer_scales=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"^weights=.*critical point"):
        moved = (weights[0] * 1.1, weights[1])
        stationary_mean_shift(moved, task, 0.01)
    with pytest.raises(ValueError, match=r"^depth=0: must be an integer >= 1"):
        rank_one_mean_shift(1.0, 0, 2, 2, 0.01)

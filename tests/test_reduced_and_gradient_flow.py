"""Reduced modewise SDE (docs/theory.md §6) and gradient-flow curves and learning times."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

import dlnlab as d
from dlnlab import theory as th


def _aligned(key, depth, amplitudes, label_noise=0.4, d_in=5, d_out=4, hidden=6, random_bases=True):
    task = d.Task.from_spectrum(key, d_in, d_out, [1.0, 0.7, 0.3], label_noise=label_noise)
    widths = (d_in,) + (hidden,) * (depth - 1) + (d_out,)
    weights = d.init_aligned(task, amplitudes, widths,
                             key=jax.random.fold_in(key, 1) if random_bases else None)
    return task, weights


def _relative(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("amplitudes", [[0.8, -0.3, 0.05, 0.2], [0.95, 0.4, 0.0, 0.0],
                                        [-0.5, 0.65, 0.31, -0.01]])
def test_reduced_formulas_equal_exact_at_aligned_balanced_states(key, depth, amplitudes):
    """docs/theory.md §6: at aligned, balanced states (any sign pattern, random hidden bases) the reduced
    drift (coupled), Ito drift and diffusion equal the exact §5 formulas to float64 rounding."""
    task, weights = _aligned(key, depth, amplitudes)
    a = np.asarray(amplitudes)
    np.testing.assert_allclose(d.mode_amplitudes(weights, task), a, atol=1e-14)
    cross = np.asarray(d.cross_mode_amplitudes(weights, task))
    np.testing.assert_allclose(cross - np.diag(np.diag(cross)), 0.0, atol=1e-14)   # aligned
    for w_l, w_next in zip(weights[:-1], weights[1:], strict=True):                  # balanced
        np.testing.assert_allclose(w_next.T @ w_next, w_l @ w_l.T, atol=1e-13)
    eta, batch, sigma = 0.03, 2, 0.4
    s = task.spectrum
    exact_ito = d.ito_drift(weights, task, eta, batch)
    exact_diff = d.modewise_diffusion(weights, task, eta, batch)
    exact_gf = d.gradient_flow_mode_drift(weights, task)
    assert _relative(th.reduced_ito_drift(a, s, depth, eta, batch, sigma), exact_ito) < 1e-10
    assert _relative(th.reduced_diffusion(a, s, depth, eta, batch, sigma), exact_diff) < 1e-10
    assert _relative(th.gradient_flow_drift(a, s, depth), exact_gf) < 1e-10
    assert _relative(th.reduced_drift(a, s, depth, eta, batch, sigma), exact_gf + exact_ito) < 1e-10
    # Cross-mode diffusion vanishes at aligned, balanced states.
    cov = np.asarray(d.mode_covariation(weights, task, eta, batch))
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-12 * np.abs(cov).max())


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_decoupled_form_exact_only_when_other_modes_rest(key, depth):
    """The paper's decoupled drift equals the exact one when the other modes are at rest, and
    misses a real drift when another mode is in transit (docs/theory.md §6)."""
    eta, batch, sigma = 0.03, 1, 0.4
    rest = [0.6, 0.0, 0.0, 0.0]
    task, weights = _aligned(key, depth, rest)
    exact = d.ito_drift(weights, task, eta, batch)
    decoupled = th.reduced_ito_drift(rest, task.spectrum, depth, eta, batch, sigma, coupled=False)
    # Mode 1 is the only one away from 0: its partners rest, so its decoupled drift is exact ...
    assert float(decoupled[0]) == pytest.approx(float(exact[0]), rel=1e-10)
    # ... while the resting modes 2, 3 do feel mode 1 (delta_b K_ab with a_b = 0.6), which the
    # decoupled form sets to 0.
    assert np.all(np.abs(np.asarray(exact[1:3])) > 1e-4) and np.all(np.asarray(decoupled[1:]) == 0)
    transit = [0.9, 0.35, 0.0, 0.0]
    task, weights = _aligned(key, depth, transit)
    exact = np.asarray(d.ito_drift(weights, task, eta, batch))
    decoupled = np.asarray(th.reduced_ito_drift(transit, task.spectrum, depth, eta, batch, sigma,
                                                coupled=False))
    # Mode 3 is at rest (a = 0): its diffusion is 0 but the exact drift is not (k = L-1 term).
    assert float(d.modewise_diffusion(weights, task, eta, batch)[2]) == pytest.approx(0.0, abs=1e-15)
    assert decoupled[2] == 0.0
    s = np.asarray(task.spectrum)
    delta = np.asarray(transit) - s
    predicted = eta / batch * delta[2] * sum(delta[b] * abs(transit[b]) ** ((3 * depth - 4) / depth)
                                             * np.sign(transit[b]) for b in (0, 1))
    assert exact[2] == pytest.approx(predicted, rel=1e-10)
    assert abs(exact[2]) > 1e-4


def test_reduced_special_cases():
    """L = 1: no Ito drift, D = (eta/B)(2 delta^2 + sigma^2); L = 2, sigma = 0: Saxe's drift and
    D = 8 (eta/B) a^2 (s - a)^2; L = 1 at a = 0 gives 0, not NaN."""
    a = jnp.array([0.0, 0.3, -0.2])
    s = jnp.array([1.0, 0.5, 0.25])
    np.testing.assert_array_equal(th.reduced_ito_drift(a, s, 1, 0.1, 2, 0.5), 0.0)
    np.testing.assert_allclose(th.reduced_diffusion(a, s, 1, 0.1, 2, 0.5),
                               0.05 * (2 * (a - s) ** 2 + 0.25), rtol=1e-14)
    # Saxe's 2 a (s - a) for a >= 0; a negative mode is pushed towards 0: 2 |a| (s - a).
    np.testing.assert_allclose(th.gradient_flow_drift(a, s, 2), 2 * jnp.abs(a) * (s - a), rtol=1e-14)
    np.testing.assert_allclose(th.reduced_diffusion(a, s, 2, 0.1, 2), 0.4 * a**2 * (s - a) ** 2,
                               rtol=1e-14)
    assert np.all(np.isfinite(th.reduced_drift(a, s, 3, 0.1, 1, 0.2)))


# ---------------------------------------------------------------------------- gradient flow
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7])
def test_learning_time_against_adaptive_quadrature(depth):
    """t(a) = int_{a0}^{a} dx / (L x^(2-2/L) (s - x)) by scipy's adaptive quadrature."""
    s = np.array([1.0, 0.667, 0.333])
    a0 = 2e-3
    for fraction in (0.5, 0.9):
        ours = np.asarray(th.learning_time(fraction, s, depth, a0))
        ref = [quad(lambda x, si=si: 1 / (depth * x ** (2 - 2 / depth) * (si - x)), a0, fraction * si,
                    epsabs=0, epsrel=1e-13, limit=1000)[0] for si in s]
        np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_half_learning_time_closed_form_at_depth_two():
    s, a0 = np.array([2.0, 1.0, 0.3]), 1e-3
    np.testing.assert_allclose(th.half_learning_time(s, 2, a0), np.log(s / a0 - 1) / (2 * s), rtol=1e-13)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_gradient_flow_curve_against_stiff_ode_solver(depth):
    """Curves (closed forms at L = 1, 2; RK4 in the logit variable otherwise) against scipy's
    Radau with tight tolerances, from below s, above s, at zero and for a zero singular value."""
    s = np.array([1.0, 0.5, 0.8, 0.0])
    a0 = np.array([1e-2, 0.9, 0.0, 0.3])
    times = np.linspace(0.0, 30.0, 61)
    ours = np.asarray(th.gradient_flow_curve(times, s, depth, a0))

    def rhs(_, a):
        return depth * np.abs(a) ** (2 - 2 / depth) * (s - a)

    ref = solve_ivp(rhs, (0, times[-1]), a0, method="Radau", t_eval=times, rtol=1e-12,
                    atol=1e-14).y.T
    np.testing.assert_allclose(ours, ref, rtol=2e-8, atol=1e-10)


def test_curve_passes_through_half_at_t_half():
    s = np.array([1.0, 0.667, 0.333])
    for depth in (2, 3, 4, 5):
        t_half = np.asarray(th.half_learning_time(s, depth, 2e-3))
        curve = np.asarray(th.gradient_flow_curve(t_half, s, depth, 2e-3))
        np.testing.assert_allclose(np.diag(curve), s / 2, rtol=1e-9)


@pytest.mark.parametrize("depth", [2, 3])
def test_gradient_descent_on_the_network_follows_the_predicted_curve(key, depth):
    """Independent: GD on the full network (all layers, d_in != d_out) from an aligned balanced
    start, Richardson-extrapolated to eta -> 0, tracks gradient_flow_curve per mode."""
    task = d.Task.from_spectrum(key, 5, 4, [1.0, 0.6, 0.3])
    a0 = np.array([0.05, 0.05, 0.05])
    widths = (5,) + (4,) * (depth - 1) + (4,)
    weights = d.init_aligned(task, a0, widths, key=jax.random.fold_in(key, 2))
    horizon = 8.0

    def run(eta):
        steps = int(round(horizon / eta))

        def step(w, _):
            return tuple(wl - eta * g for wl, g in zip(w, d.gradient(w, task), strict=True)), None

        final, _ = jax.lax.scan(step, weights, None, length=steps)
        return np.asarray(d.mode_amplitudes(final, task))[:3]

    coarse, fine = run(2e-3), run(1e-3)
    extrapolated = 2 * fine - coarse              # GD error is O(eta): cancel the first order
    predicted = np.asarray(th.gradient_flow_curve(np.array([horizon]), task.spectrum[:3], depth, a0))[0]
    first_order_error = np.max(np.abs(fine - coarse))
    assert first_order_error > 1e-6                # the discretisation is visible ...
    np.testing.assert_allclose(extrapolated, predicted, atol=first_order_error / 20)  # ... and removed

"""Issue 16 "Trust every number": the stationary law at large eta/B and the rank bottleneck.

docs/theory.md §9 (when the stationary law exists, its support, its tails) and §7 (modes a
narrow network cannot learn). Every quadrature value here is checked against an independent
computation: a closed form (depth 1), scipy's adaptive quadrature written from the formulas, or
a simulation of the reduced SDE with Monte Carlo standard errors; each check also shows that a
wrong formula (the old window-cut grid, the first-order law, dropping the Ito drift) is rejected.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from conftest import assert_close_mc, assert_rejected_mc
from dlnlab import theory as th


def _student_variance(rate, sigma):
    """Depth 1: p ∝ (2 (a - s)^2 + sigma^2)^(-1 - 1/(2r)), a Student-t with nu = 1 + 1/r degrees
    of freedom and scale sigma / sqrt(2 nu): variance sigma^2 / (2 (nu - 2)) = r sigma^2 / (2 (1 - r))."""
    return rate * sigma**2 / (2 * (1 - rate))


def _window_cut_moments(s, depth, rate, sigma, num_points=20001, width=40.0):
    """The old algorithm, for the record: a uniform grid of +-40 first-order standard deviations
    around s, cut at a = 0, trapezoid moments. Written from the formulas of docs/theory.md §6."""
    std = math.sqrt(rate * depth / 2 * sigma**2 * s ** (2 - 2 / depth))
    half = num_points // 2
    lower = max(s - width * std, s * 1e-9)
    a = np.concatenate([np.linspace(lower, s, half + 1)[:-1],
                        np.linspace(s, s + width * std, num_points - half)])
    mu = depth * a ** (2 - 2 / depth) * (s - a) + rate * depth * (depth - 1) / 2 * a ** (
        3 - 4 / depth) * (2 * (a - s) ** 2 + sigma**2)
    diff = rate * depth**2 * a ** (4 - 4 / depth) * (2 * (s - a) ** 2 + sigma**2)
    g = 2 * mu / diff
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(a))])
    logp = cumulative - cumulative[half] - np.log(diff)
    p = np.exp(logp - logp.max())
    p /= np.trapezoid(p, a)
    mean = np.trapezoid(a * p, a)
    return mean, np.trapezoid((a - mean) ** 2 * p, a)


def _reference_moments(s, depth, rate, sigma, ito=True):
    """Independent reference: nested scipy ``quad`` of p ∝ (1/D) exp(int_s^a 2 mu / D) over
    ln a in (ln s - 40, ln s + 60) (tails beyond are below 1e-12 for the cases used here)."""
    def mu(a):
        ito_term = rate * depth * (depth - 1) / 2 * a ** (3 - 4 / depth) * (
            2 * (a - s) ** 2 + sigma**2) if ito else 0.0
        return depth * a ** (2 - 2 / depth) * (s - a) + ito_term

    def diff(a):
        return rate * depth**2 * a ** (4 - 4 / depth) * (2 * (s - a) ** 2 + sigma**2)

    def log_p(y):
        a = math.exp(y)
        inner = quad(lambda w: 2 * mu(math.exp(w)) / diff(math.exp(w)) * math.exp(w),
                     math.log(s), y, epsabs=1e-12, epsrel=1e-11, limit=200)[0]
        return inner - math.log(diff(a)) + y                 # density in y = ln a

    lo, hi = math.log(s) - 40, math.log(s) + 60
    points = [math.log(s) + d for d in (-3, -1, -0.3, 0.0, 0.3, 1, 3)]

    def moment(k, centre=0.0):
        return quad(lambda y: (math.exp(y) - centre) ** k * math.exp(log_p(y)), lo, hi,
                    points=points, epsabs=0, epsrel=1e-11, limit=400)[0]

    mass = moment(0)
    mean = moment(1) / mass
    return mean, moment(2, mean) / mass


# ------------------------------------------------------------------------------ depth 1
@pytest.mark.parametrize("rate,sigma", [(0.4, 0.5), (0.05, 1.0), (0.2, 0.7), (0.8, 0.3)])
def test_depth_one_is_a_student_t_law(rate, sigma):
    """L = 1: mean = mode = s and variance r sigma^2 / (2 (1 - r)) exactly; the first-order
    r sigma^2 / 2 is its small-r limit. The issue's case eta/B = 0.4, sigma = 0.5: 1/12."""
    s = 1.0
    m = th.stationary_moments([s], 1, rate, 1, sigma)
    assert bool(m.exists[0])
    assert float(m.variance[0]) == pytest.approx(_student_variance(rate, sigma), rel=1e-9)
    assert float(m.mean[0]) == pytest.approx(s, abs=1e-12)
    assert float(m.mode[0]) == pytest.approx(s, abs=1e-9)
    if (rate, sigma) == (0.4, 0.5):
        assert float(m.variance[0]) == pytest.approx(1 / 12, rel=1e-9)
        old_mean, old_var = _window_cut_moments(s, 1, rate, sigma)
        assert old_var == pytest.approx(0.0723, abs=1e-4)       # the value the issue reported
        assert abs(old_var - 1 / 12) > 1e-2


def test_depth_one_density_matches_the_closed_form():
    s, rate, sigma = 1.3, 0.3, 0.8
    grid, p = (np.asarray(x) for x in th.stationary_density(s, 1, rate, 1, sigma))
    exact = (2 * (grid - s) ** 2 + sigma**2) ** (-1 - 1 / (2 * rate))
    nu = 1 + 1 / rate                                           # normalise: Student-t
    scale = sigma / math.sqrt(2 * nu)
    norm = math.gamma((nu + 1) / 2) / (math.gamma(nu / 2) * math.sqrt(nu * math.pi) * scale)
    exact *= norm / sigma ** (-2 - 1 / rate)
    np.testing.assert_allclose(p, exact, rtol=1e-8)


def test_depth_one_variance_is_infinite_from_eta_over_b_one():
    m = th.stationary_moments([1.0, 0.5], 1, 1.5, 1, 0.5)
    assert np.all(np.asarray(m.exists)) and np.all(np.isinf(np.asarray(m.variance)))
    np.testing.assert_allclose(m.mean, [1.0, 0.5], atol=1e-12)


# ------------------------------------------------------------------------------ existence
@pytest.mark.parametrize("s,sigma", [(1.0, 3.0), (1.0, 1.0), (0.5, 0.2), (2.0, 0.0)])
def test_depth_two_normalisability_boundary(s, sigma):
    """L = 2: p ~ a^k near 0 with k = s / (r (2 s^2 + sigma^2)) - 3/2; a law exists iff k > -1,
    i.e. r (2 s^2 + sigma^2) < 2 s. Just inside: finite moments; just outside: NaN, no error."""
    critical = 2 * s / (2 * s**2 + sigma**2)
    inside = th.stationary_moments([s], 2, 0.97 * critical, 1, sigma)
    outside = th.stationary_moments([s], 2, 1.03 * critical, 1, sigma)
    assert bool(inside.exists[0]) and not bool(outside.exists[0])
    assert np.isfinite(float(inside.mean[0])) and np.isfinite(float(inside.variance[0]))
    assert all(math.isnan(float(x[0])) for x in (outside.mean, outside.mode, outside.variance))
    assert bool(th.stationary_law_exists(s, 2, 0.97 * critical, 1, sigma))
    assert not bool(th.stationary_law_exists(s, 2, 1.03 * critical, 1, sigma))
    if sigma > 0:
        with pytest.raises(ValueError, match="^learning_rate=.*no stationary law"):
            th.stationary_density(s, 2, 1.03 * critical, 1, sigma)
        # Just inside, the mass piles up near 0 (k close to -1): the mean is far below s.
        assert float(inside.mean[0]) < 0.5 * s


def test_issue_case_depth_two_has_no_stationary_law():
    """eta/B = 0.25, sigma = 3, s = 1: 0.25 * 11 = 2.75 >= 2, the law is not normalisable (the old
    code reported mean 0.118, variance 0.198). Depths 1 and >= 3 always have one."""
    m = th.stationary_moments([1.0], 2, 0.25, 1, 3.0)
    assert not bool(m.exists[0]) and math.isnan(float(m.mean[0]))
    for depth in (1, 3, 4):
        assert bool(th.stationary_moments([1.0], depth, 0.25, 1, 3.0).exists[0])


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_depth_two_power_law_exponent_at_zero(rate):
    """The density near 0 follows a^k with k = s / (r (2 s^2 + sigma^2)) - 3/2: measured as the
    log-log slope of the independent grid formula ``stationary_log_density``."""
    s, sigma = 1.0, 1.0
    grid = np.concatenate([np.geomspace(1e-9, s, 40001)])
    logp = np.asarray(th.stationary_log_density(grid, s, 2, rate, 1, sigma))
    i, j = np.searchsorted(grid, [1e-8, 1e-7])
    slope = (logp[j] - logp[i]) / (math.log(grid[j]) - math.log(grid[i]))
    assert slope == pytest.approx(s / (rate * (2 * s**2 + sigma**2)) - 1.5, abs=1e-5)


def test_no_label_noise_large_rate():
    """Without label noise: Dirac at s, except depth 2 with r s >= 1 (a = 0 attracts too)."""
    m = th.stationary_moments([2.0, 0.4], 2, 0.6, 1, 0.0)        # r s = 1.2 and 0.24
    np.testing.assert_array_equal(np.asarray(m.exists), [False, True])
    assert math.isnan(float(m.mean[0])) and float(m.mean[1]) == 0.4


# ------------------------------------------------------------------ independent quadrature
@pytest.mark.parametrize("depth,s,rate,sigma", [(2, 1.0, 0.2, 1.0), (2, 0.7, 0.05, 0.5),
                                                (3, 1.0, 0.25, 3.0), (4, 1.0, 0.1, 0.6)])
def test_moments_against_nested_adaptive_quadrature(depth, s, rate, sigma):
    """Mean and variance against nested scipy ``quad`` written from the formulas; the old
    window-cut grid and the law without the Ito drift are rejected by far more than the error."""
    m = th.stationary_moments([s], depth, rate, 1, sigma)
    mean, var = _reference_moments(s, depth, rate, sigma)
    assert float(m.mean[0]) == pytest.approx(mean, rel=1e-7)
    assert float(m.variance[0]) == pytest.approx(var, rel=1e-6)
    no_ito_mean, _ = _reference_moments(s, depth, rate, sigma, ito=False)
    assert abs(no_ito_mean - mean) > 1e3 * abs(float(m.mean[0]) - mean)


# ------------------------------------------------------------------ reduced-SDE simulation
def _simulate(key, depth, s, rate, sigma, paths=1200, h=5e-4, burn=5.0, every=0.25,
              records=240):
    """Euler-Maruyama of the 1-D reduced SDE (docs/theory.md §6): in ``a`` at L = 1, in
    ``y = ln a`` at L = 2 (Ito: dy = (mu/a - D/(2a^2)) dt + sqrt(D)/a dW, no step crosses 0).
    Returns samples ``(records, paths)``."""

    def drift_noise(x):
        if depth == 1:
            mu = th.reduced_drift(x, s, 1, rate, 1, sigma, coupled=False)
            return mu, jnp.sqrt(th.reduced_diffusion(x, s, 1, rate, 1, sigma))
        a = jnp.exp(x)
        c = rate * (2 * (s - a) ** 2 + sigma**2)
        return 2 * (s - a) - c, 2 * jnp.sqrt(c)

    def em(x, k):
        mu, root = drift_noise(x)
        return x + h * mu + math.sqrt(h) * root * jax.random.normal(k, x.shape), None

    def advance(x, k, steps):
        return jax.lax.scan(em, x, jax.random.split(k, steps))[0]

    @jax.jit
    def run(k):
        k_burn, k_rec = jax.random.split(k)
        x0 = jnp.full((paths,), s if depth == 1 else math.log(s))
        x = advance(x0, k_burn, int(burn / h))

        def segment(x, kk):
            x = advance(x, kk, int(every / h))
            return x, x

        return jax.lax.scan(segment, x, jax.random.split(k_rec, records))[1]

    out = np.asarray(run(key))
    return out if depth == 1 else np.exp(out)


def test_stationary_law_against_reduced_sde_simulation(key):
    """Per-path time averages are independent across paths: standard errors from their spread
    (autocorrelation inside a path is then accounted for). L = 1, eta/B = 0.25 (variance, exact
    1/24; first order rejected); L = 1, eta/B = 0.4 (CDF incl. the mass below 0 that the old
    grid cut away); L = 2, eta/B = 0.1 (far from first order: mean and CDF against the
    quadrature; the first-order mean and the no-Ito law rejected)."""
    s = 1.0
    # Depth 1, eta/B = 0.25: variance (nu = 5: the fourth moment is finite, the SE is honest).
    rate, sigma = 0.25, 0.5
    samples = _simulate(jax.random.fold_in(key, 1), 1, s, rate, sigma, h=1e-3, records=160)
    m = th.stationary_moments([s], 1, rate, 1, sigma)
    path_vars = ((samples - s) ** 2).mean(axis=0)
    se = path_vars.std() / math.sqrt(path_vars.size)
    assert float(m.variance[0]) == pytest.approx(_student_variance(rate, sigma), rel=1e-9)
    assert_close_mc(path_vars.mean(), float(m.variance[0]), se, what="L=1 variance")
    assert_rejected_mc(path_vars.mean(), float(m.variance_first_order[0]), se,
                       what="first-order variance")
    # Depth 1, eta/B = 0.4 (the issue's case; nu = 3.5, heavy tails): the law crosses a = 0,
    # which the old grid cut away. The fraction of time below 0 and the CDF, against the
    # quadrature density; the old window-cut law (no mass below 0) is rejected.
    rate = 0.4
    samples = _simulate(jax.random.fold_in(key, 3), 1, s, rate, sigma, h=1e-3, records=160)
    grid, p = (np.asarray(x) for x in th.stationary_density(s, 1, rate, 1, sigma))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    points = np.array([0.0, 0.5, 0.8, 1.0, 1.3])
    fractions = (samples[..., None] < points).mean(axis=0)        # (paths, points)
    se = fractions.std(0) / math.sqrt(fractions.shape[0])
    assert_close_mc(fractions.mean(0), np.interp(points, grid, cdf), se, what="L=1 CDF")
    assert_rejected_mc(fractions.mean(0)[0], 0.0, se[0], what="window-cut grid (no mass < 0)")
    # Depth 2: mean and CDF (a^-3.5 tail: the variance of a^2 is infinite, so no variance SE).
    rate, sigma = 0.1, 1.0
    samples = _simulate(jax.random.fold_in(key, 2), 2, s, rate, sigma, h=1e-3, records=160)
    m = th.stationary_moments([s], 2, rate, 1, sigma)
    path_means = samples.mean(axis=0)
    se = path_means.std() / math.sqrt(path_means.size)
    assert_close_mc(path_means.mean(), float(m.mean[0]), se, what="L=2 mean")
    assert_rejected_mc(path_means.mean(), float(m.mean_first_order[0]), se,
                       what="first-order mean")
    no_ito_mean, _ = _reference_moments(s, 2, rate, sigma, ito=False)
    assert_rejected_mc(path_means.mean(), no_ito_mean, se, what="law without Ito drift")
    grid, p = (np.asarray(x) for x in th.stationary_density(s, 2, rate, 1, sigma))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    points = np.array([0.5, 0.8, 1.0, 1.2, 1.6])
    fractions = (samples[..., None] < points).mean(axis=0)        # (paths, points)
    assert_close_mc(fractions.mean(0), np.interp(points, grid, cdf),
                    fractions.std(0) / math.sqrt(fractions.shape[0]), what="L=2 CDF")


# ------------------------------------------------------------------------------ bottleneck
def test_reachable_modes():
    np.testing.assert_array_equal(th.reachable_modes([1.0, 0.5], (3, 1, 2)), [True, False])
    np.testing.assert_array_equal(th.reachable_modes(3, (5, 4, 4, 2)), [True, True, False])
    np.testing.assert_array_equal(th.reachable_modes(2, (2, 6, 6, 3)), [True, True])
    with pytest.raises(ValueError, match="^widths="):
        th.reachable_modes(2, (3,))


def test_mode_summary_marks_unreachable_modes():
    rows = th.mode_summary([1.0, 0.5], 2, 0.01, 1, 0.1, 0.002, widths=(3, 1, 2))
    assert rows[0]["reachable"] and rows[0]["t_half"] > 0 and rows[0]["a_peak"] is not None
    assert not rows[1]["reachable"]
    for key in ("t_half", "a_peak", "stationary_mean", "stationary_variance", "stationary_mode"):
        assert rows[1][key] is None
    assert "unreachable" in rows[1]["note"] and "1" in rows[1]["note"]
    full = th.mode_summary([1.0, 0.5], 2, 0.01, 1, 0.1, 0.002)
    assert full[0]["t_half"] == rows[0]["t_half"] and all(r["reachable"] for r in full)
    with pytest.raises(ValueError, match="^widths="):
        th.mode_summary([1.0, 0.5], 2, 0.01, 1, 0.1, 0.002, widths=(3, 2))


def test_mode_summary_without_stationary_law():
    rows = th.mode_summary([1.0, 0.3], 2, 0.25, 1, 3.0, 0.002)
    assert rows[0]["stationary_exists"] is False and rows[0]["stationary_mean"] is None
    assert "no stationary law" in rows[0]["note"]

"""Diffusion peak (docs/theory.md §8) and stationary law of a mode (docs/theory.md §9)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from conftest import assert_close_mc, assert_rejected_mc
from dlnlab import theory as th


def _first_local_max(depth, s, sigma):
    """Independent numerical peak: first +/- sign change of D_a on a fine grid, then Brent."""
    grid = np.linspace(1e-6, s, 200_001)
    f = np.asarray(th.reduced_diffusion(grid, s, depth, 1.0, 1, sigma))
    slope = np.diff(f)
    turns = np.nonzero((slope[:-1] > 0) & (slope[1:] <= 0))[0]
    if len(turns) == 0:
        return None
    i = turns[0]
    res = minimize_scalar(lambda a: -float(th.reduced_diffusion(a, s, depth, 1.0, 1, sigma)),
                          bounds=(grid[i - 1], grid[i + 2]), method="bounded",
                          options={"xatol": 1e-13})
    return res.x


@pytest.mark.parametrize("depth", [2, 3, 4, 8])
@pytest.mark.parametrize("s,sigma", [(1.0, 0.0), (1.0, 0.2), (0.667, 0.15), (2.0, 0.5)])
def test_peak_location_against_numerical_argmax(depth, s, sigma):
    """docs/theory.md §8: eq. 9 equals the numerical local argmax of D_a; existence follows eq. 10."""
    peak = th.diffusion_peak(np.array([s]), depth, sigma)
    numerical = _first_local_max(depth, s, sigma)
    p = 4 - 4 / depth
    exists = s**2 > p * (p + 2) * sigma**2 / 2
    assert bool(peak.exists[0]) == exists == (numerical is not None)
    if exists:
        assert float(peak.amplitude[0]) == pytest.approx(numerical, rel=1e-7)
        assert float(peak.amplitude[0]) < s           # the peak precedes learning
    else:
        assert math.isnan(float(peak.amplitude[0]))


@pytest.mark.parametrize("depth", [2, 3, 4, 8])
def test_existence_boundary_eq10(depth):
    """Just inside eq. 10 a local maximum exists; just outside, D_a increases on all of (0, s)."""
    threshold = th.local_threshold(depth)
    p = 4 - 4 / depth
    assert threshold == pytest.approx(2 / (p * (p + 2)), rel=1e-15)
    inside, outside = math.sqrt(threshold * (1 - 1e-3)), math.sqrt(threshold * (1 + 1e-3))
    assert _first_local_max(depth, 1.0, inside) is not None
    assert _first_local_max(depth, 1.0, outside) is None
    assert bool(th.diffusion_peak(np.array([1.0]), depth, inside).exists[0])
    assert not bool(th.diffusion_peak(np.array([1.0]), depth, outside).exists[0])


@pytest.mark.parametrize("depth,quoted", [(2, 0.1803), (3, 0.1141), (4, 0.0940), (8, 0.0727)])
def test_global_threshold(depth, quoted):
    """At the global threshold D_a(a_peak) = D_a(s); below it the peak is the maximum on (0, s],
    above it D_a(s) is larger. Values quoted in docs/theory.md §8; 5 sqrt 5 - 11 at L = 2."""
    rho = th.global_threshold(depth)
    assert rho == pytest.approx(quoted, abs=5e-5)
    if depth == 2:
        assert rho == pytest.approx(5 * math.sqrt(5) - 11, rel=1e-12)

    def values(r):
        sigma = math.sqrt(r)
        a = float(th.diffusion_peak(np.array([1.0]), depth, sigma).amplitude[0])
        f = lambda x: float(th.reduced_diffusion(x, 1.0, depth, 1.0, 1, sigma))  # noqa: E731
        return f(a), f(1.0)

    at_peak, at_s = values(rho)
    assert at_peak == pytest.approx(at_s, rel=1e-9)
    below, above = values(rho * 0.99), values(rho * 1.01)
    assert below[0] > below[1] and above[0] < above[1]
    assert bool(th.diffusion_peak(np.array([1.0]), depth, math.sqrt(rho * 0.99)).is_global[0])
    assert not bool(th.diffusion_peak(np.array([1.0]), depth, math.sqrt(rho * 1.01)).is_global[0])


def test_peak_without_label_noise_and_depth_one():
    s = np.array([1.0, 0.5])
    for depth in (2, 3, 4, 10):
        np.testing.assert_allclose(th.diffusion_peak(s, depth).amplitude,
                                   s * (2 * depth - 2) / (3 * depth - 2), rtol=1e-14)
    assert not np.any(th.diffusion_peak(s, 1, 0.1).exists)


# ---------------------------------------------------------------------------- stationary law
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_quadrature_moments_converge_to_first_order(depth):
    """docs/theory.md §9 (quadrature): (quadrature - first order) is O((eta/B)^2): halving eta/B divides the
    residual by ~4, so the first-order formulas are the correct leading terms, including the
    mean BELOW s; the paper's mean above s is rejected."""
    s, sigma = 0.8, 0.7
    residuals = []
    for rate in (4e-3, 2e-3, 1e-3):
        m = th.stationary_moments([s], depth, rate, 1, sigma)
        residuals.append([float(m.mean[0] - m.mean_first_order[0]),
                          float(m.variance[0] - m.variance_first_order[0]),
                          float(m.mode[0] - m.mode_first_order[0])])
        shift = rate * (depth - 1) / 2 * sigma**2 * s ** (1 - 2 / depth)
        if depth > 1:
            assert float(m.mean[0]) < s                        # below s ...
            paper = s + shift                                  # ... not above (seed paper)
            assert abs(float(m.mean[0]) - paper) > 10 * abs(residuals[-1][0])
    residuals = np.abs(np.array(residuals))
    for column, name in zip(residuals.T, ("mean", "variance", "mode"), strict=True):
        if column.max() < 1e-7 * s:     # exact at first order (L = 1 mean is s): quadrature noise
            continue
        ratios = column[:-1] / column[1:]
        assert np.all((ratios > 3.0) & (ratios < 5.0)), f"{name}: ratios {ratios}"


def test_depth_one_is_the_isotropic_linear_regression_result():
    """L = 1: variance eta sigma^2 / (2B) to first order (second seed paper, eq. 2.34); exactly
    r sigma^2 / (2 (1 - r)), r = eta/B (the reduced SDE's law is a Student-t), mean exactly s."""
    m = th.stationary_moments([1.3], 1, 0.002, 4, 0.5)
    assert float(m.variance[0]) == pytest.approx(0.002 * 0.25 / 8, rel=1e-3)
    assert float(m.variance[0]) == pytest.approx(0.0005 * 0.25 / (2 * (1 - 0.0005)), rel=1e-10)
    assert float(m.mean[0]) == pytest.approx(1.3, abs=1e-9)


def test_density_is_normalised_and_mode_solves_the_stationarity_condition():
    """The density integrates to 1, its moments are those reported, and the mode is the root of
    2 mu = D' (p'/p = (2 mu - D')/D), found here independently by Brent's method."""
    from scipy.optimize import brentq

    s, depth, rate, sigma = 1.0, 3, 0.01, 0.6
    grid, p = (np.asarray(x) for x in th.stationary_density(s, depth, rate, 1, sigma))
    # The display grid holds all but 2e-10 of the mass (tails beyond the 1e-10 quantiles).
    assert np.trapezoid(p, grid) == pytest.approx(1.0, abs=1e-9)
    m = th.stationary_moments([s], depth, rate, 1, sigma)
    assert np.trapezoid(grid * p, grid) == pytest.approx(float(m.mean[0]), abs=1e-9)

    def condition(a):
        mu = float(th.reduced_drift(a, s, depth, rate, 1, sigma, coupled=False))
        slope = float(jax.grad(lambda x: th.reduced_diffusion(x, s, depth, rate, 1, sigma))(a))
        return 2 * mu - slope

    root = brentq(condition, 0.8 * s, s, xtol=1e-15)
    assert float(m.mode[0]) == pytest.approx(root, abs=1e-12)
    assert grid[np.argmax(p)] == pytest.approx(root, abs=2 * (grid[1] - grid[0]))


def test_no_label_noise_collapses_to_dirac():
    m = th.stationary_moments([1.0, 0.5], 4, 0.01, 1, 0.0)
    np.testing.assert_array_equal(m.mean, [1.0, 0.5])
    np.testing.assert_array_equal(m.variance, 0.0)


@pytest.mark.slow
def test_quadrature_law_against_reduced_sde_simulation(key):
    """docs/theory.md §9: the quadrature law against a long Euler-Maruyama simulation of the 1-D reduced SDE
    (the paper's example L = 2, s = sigma = 1, eta/B = 0.02). Per-path time averages are
    independent across paths, so standard errors come from the spread over paths."""
    depth, s, sigma, rate = 2, 1.0, 1.0, 0.02
    paths, h, burn, record_every, records = 4000, 5e-4, 6.0, 0.5, 80

    def drift_diff(a):
        mu = th.reduced_drift(a, s, depth, rate, 1, sigma, coupled=False)
        return mu, jnp.sqrt(th.reduced_diffusion(a, s, depth, rate, 1, sigma))

    def em(a, k):
        mu, root = drift_diff(a)
        return a + h * mu + math.sqrt(h) * root * jax.random.normal(k, a.shape), None

    def advance(a, k, steps):
        return jax.lax.scan(em, a, jax.random.split(k, steps))[0]

    @jax.jit
    def run(k):
        k_burn, k_rec = jax.random.split(k)
        a = advance(jnp.full((paths,), s), k_burn, int(burn / h))

        def segment(a, kk):
            a = advance(a, kk, int(record_every / h))
            return a, a

        _, recorded = jax.lax.scan(segment, a, jax.random.split(k_rec, records))
        return recorded                                       # (records, paths)

    samples = np.asarray(run(key))
    m = th.stationary_moments([s], depth, rate, 1, sigma)
    path_means = samples.mean(axis=0)
    mean_est, mean_se = path_means.mean(), path_means.std() / math.sqrt(paths)
    assert_close_mc(mean_est, float(m.mean[0]), mean_se, what="stationary mean")
    paper_mean = s + rate * (depth - 1) / 2 * sigma**2 * s ** (1 - 2 / depth)
    assert_rejected_mc(mean_est, paper_mean, mean_se, what="paper's mean above s")
    path_vars = ((samples - float(m.mean[0])) ** 2).mean(axis=0)
    # EM bias in the variance is O(h * rate of relaxation) ~ 1e-3 relative: far below the SE.
    assert_close_mc(path_vars.mean(), float(m.variance[0]), path_vars.std() / math.sqrt(paths),
                    what="stationary variance")
    # Distribution: CDF at several quantiles against the quadrature CDF.
    grid, p = (np.asarray(x) for x in th.stationary_density(s, depth, rate, 1, sigma))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    points = float(m.mean[0]) + math.sqrt(float(m.variance[0])) * np.array([-2, -1, 0, 1, 2])
    fractions = (samples[..., None] < points).mean(axis=0)   # (paths, points)
    assert_close_mc(fractions.mean(0), np.interp(points, grid, cdf),
                    fractions.std(0) / math.sqrt(paths), what="stationary CDF")
    # A Gaussian with the same mean and variance is not the law (it is skewed): rejected.
    from scipy.stats import norm
    gaussian = norm.cdf(points, float(m.mean[0]), math.sqrt(float(m.variance[0])))
    assert_rejected_mc(fractions.mean(0), gaussian, fractions.std(0) / math.sqrt(paths),
                       k=3.0, what="Gaussian approximation")

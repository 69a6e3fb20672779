"""Analysis helpers against brute force and textbook values; the config additions the
reproduction needs (aligned and balanced inits, a subset of observables, the RK4 step)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import stats as sps

from dlnlab.analysis import (
    crossing_times,
    diffusion_peaks,
    linear_fit,
    mean_and_se,
    moments_with_se,
    wilson_interval,
)
from dlnlab.experiments.config import validate_config


def _crossing_loop(t, x, level):
    for i in range(len(x)):
        if x[i] >= level:
            return t[0] if i == 0 else t[i - 1] + (level - x[i - 1]) * (t[i] - t[i - 1]) / (
                x[i] - x[i - 1])
    return math.nan


def test_crossing_times_match_a_loop():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 50))
    x = np.cumsum(rng.normal(0.1, 1.0, (7, 5, 50)), axis=-1)
    levels = rng.normal(2.0, 2.0, (7, 5))
    got = crossing_times(t, x, levels)
    for i in range(7):
        for j in range(5):
            want = _crossing_loop(t, x[i, j], levels[i, j])
            if math.isnan(want):
                assert math.isnan(got[i, j])
            else:
                assert got[i, j] == pytest.approx(want, rel=1e-12)


def test_diffusion_peak_is_the_maximum_before_reaching_s():
    t = np.linspace(0, 10, 11)
    a = np.array([[0.0, .1, .2, .5, .9, 1.0, 1.2, 1.0, 1.0, 1.0, 1.0]])
    d = np.array([[0.0, 1.0, 2.0, 5.0, 3.0, 1.0, 9.0, 0.0, 0.0, 0.0, 0.0]])
    t_peak, a_peak, d_peak = diffusion_peaks(t, a, d, np.array([1.0]))
    # the later, larger value at t = 6 comes after a reached s at t = 5: not the peak
    assert (t_peak[0], a_peak[0], d_peak[0]) == (3.0, 0.5, 5.0)
    # a mode with s = 0 has no peak
    assert np.isnan(diffusion_peaks(t, a, d, np.array([0.0]))[0][0])


def test_linear_fit_matches_scipy():
    rng = np.random.default_rng(1)
    x = np.linspace(0.1, 2, 9)
    y = 3 * x + 0.5 + rng.normal(0, 0.1, x.size)
    fit = linear_fit(x, y)
    ref = sps.linregress(x, y)
    assert fit["slope"] == pytest.approx(ref.slope, rel=1e-12)
    assert fit["intercept"] == pytest.approx(ref.intercept, rel=1e-12)
    assert fit["r2"] == pytest.approx(ref.rvalue**2, rel=1e-12)
    assert fit["slope_se"] == pytest.approx(ref.stderr, rel=1e-10)
    assert fit["intercept_se"] == pytest.approx(ref.intercept_stderr, rel=1e-10)


def test_wilson_interval_textbook_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_moments_and_their_standard_errors_on_gaussian_samples():
    """Skewness and excess kurtosis of Gaussian samples lie within 5 of their SEs of 0, and a
    skewed law (exponential: skewness 2, excess kurtosis 6) is rejected by the same band."""
    rng = np.random.default_rng(2)
    g = moments_with_se(rng.normal(1.0, 2.0, 20000))
    assert abs(g["skewness"]) < 5 * g["skewness_se"]
    assert abs(g["excess_kurtosis"]) < 5 * g["excess_kurtosis_se"]
    assert abs(g["mean"] - 1.0) < 5 * g["mean_se"]
    e = moments_with_se(rng.exponential(1.0, 20000))
    assert abs(e["skewness"]) > 5 * e["skewness_se"]
    mean, se, n = mean_and_se([1.0, 2.0, np.nan, 3.0])
    assert (mean, n) == (2.0, 3) and se == pytest.approx(1 / math.sqrt(3))


# ----------------------------------------------------------------------------- config additions


def _small(**changes):
    data = {"runs": 3, "methods": ["sgd"], "task": {"d_in": 4, "d_out": 4, "hidden": [5, 5],
                                                      "spectrum": [1.0, 0.5]},
            "training": {"horizon": 0.5}, "record": {"points": 3}}
    for key, value in changes.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return validate_config(data)


def test_aligned_init_is_aligned_and_balanced():
    from dlnlab.core.modes import cross_mode_amplitudes
    from dlnlab.engine.observables import balance
    from dlnlab.experiments.run import build_task, initial_weights

    config = _small(init__kind="aligned", init__amplitude=0.01)
    task = build_task(config)
    weights = initial_weights(config, task=task)
    for run in range(config.runs):
        w = tuple(layer[run] for layer in weights)
        cross = np.asarray(cross_mode_amplitudes(w, task))
        np.testing.assert_allclose(cross, 0.01 * np.eye(4), atol=1e-7)
        residual, _ = balance(w)
        assert np.all(np.asarray(residual) < 1e-5)
    # hidden bases differ between runs (Haar-random per run)
    assert not np.allclose(np.asarray(weights[0][0]), np.asarray(weights[0][1]))


def test_balanced_init_runs_in_an_experiment():
    """Regression: ``init.kind = "balanced"`` used to fail under vmap (host-side SVD)."""
    from dlnlab.engine.observables import balance
    from dlnlab.experiments.run import initial_weights, run_experiment

    config = _small(init__kind="balanced")
    weights = initial_weights(config)
    for run in range(config.runs):
        residual, _ = balance(tuple(layer[run] for layer in weights))
        assert np.all(np.asarray(residual) < 1e-4)
    ds = run_experiment(config)
    assert float(ds.balance_residual.isel(time=0).max()) < 1e-4


def test_recording_a_subset_of_observables():
    from dlnlab.experiments.run import run_experiment

    ds = run_experiment(_small(record__variables=["amplitude", "diffusion"]))
    assert {"loss", "amplitude", "diffusion"} <= set(ds.data_vars)
    assert "cross_amplitude" not in ds and "balance_residual" not in ds
    with pytest.raises(ValueError, match="record.variables.*unknown observable 'nope'"):
        _small(record__variables=["amplitude", "diffusion", "nope"])
    with pytest.raises(ValueError, match="must include 'amplitude' and 'diffusion'"):
        _small(record__variables=["amplitude"])


def test_simulate_rejects_an_unknown_observable():
    from dlnlab.dynamics import GradientDescent, Hyperparameters
    from dlnlab.engine import simulate
    from dlnlab.experiments.run import build_task, initial_weights

    config = _small()
    with pytest.raises(ValueError, match="observables"):
        simulate(GradientDescent(build_task(config)), initial_weights(config),
                 Hyperparameters(0.01), jax.random.key(0), [0, 1], observables=["bogus"])


def test_gradient_flow_step_defaults_to_the_learning_rate():
    assert _small().step_size("gf") == 0.01
    assert _small(gf__step_size=0.005).step_size("gf") == 0.005
    with pytest.raises(ValueError, match="gf.step_size"):
        _small(gf__step_size=0.003)

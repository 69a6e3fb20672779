"""Analysis helpers against brute force and textbook values (events, statistics, the summaries
and claim rows the studies share); the config additions the reproduction needs (aligned and
balanced inits, a subset of observables, the RK4 step)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps

from dlnlab.analysis import (
    bootstrap_ratio_se,
    claim_row,
    crossing_times,
    diffusion_peaks,
    finite_median,
    finite_quartiles,
    format_number,
    json_safe,
    linear_fit,
    mean_and_se,
    median_abs_deviation_from,
    moments_with_se,
    peak_rows,
    peak_rows_with_deviation,
    teacher_rank,
    training_parameters,
    transit_deviation,
    verdict_summary,
    wilson_interval,
    with_events,
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


def test_finite_median_quartiles_and_width_ignore_non_finite_entries():
    x = np.array([[3.0, np.nan, 1.0], [np.inf, 2.0, 10.0]])
    kept = np.array([3.0, 1.0, 2.0, 10.0])
    assert finite_median(x) == np.median(kept) == 2.5
    assert finite_quartiles(x) == (np.percentile(kept, 25), np.percentile(kept, 75))
    assert math.isnan(finite_median([np.nan])) and all(map(math.isnan, finite_quartiles([])))
    # median of |x - 2| over the finite entries: |1|, |-1|, |0|, |8| -> 1
    assert median_abs_deviation_from(x, 2.0) == 1.0


def test_bootstrap_ratio_se_is_the_sd_of_resampled_ratios():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 2.0, 200), np.append(rng.normal(0, 1.0, 150), np.nan)
    got = bootstrap_ratio_se(x, y, np.std, draws=50, seed=7)
    ref_rng = np.random.default_rng(7)
    yf = y[np.isfinite(y)]
    ratios = []
    for _ in range(50):                              # the same draws, in the same order
        xs = x[ref_rng.integers(0, x.size, x.size)]
        ys = yf[ref_rng.integers(0, yf.size, yf.size)]
        ratios.append(np.std(xs) / np.std(ys))
    assert got == pytest.approx(np.std(ratios, ddof=1), rel=1e-12)
    # and it measures the spread of a ratio near 2 (sd about 2 * sqrt(1/(2*200) + 1/(2*150)))
    assert 0.05 < got < 0.3


def test_claim_rows_and_json_safe_values():
    row = claim_row("x-1", "A claim.", "Fig. 1", "x", "measured", {"v": np.float64(1.5)},
                    "rule", "supported")
    assert list(row) == ["id", "claim", "paper", "figure", "measured", "values", "criterion",
                         "verdict"]
    with pytest.raises(ValueError, match="verdict='maybe'"):
        claim_row("x-1", "A claim.", "Fig. 1", "x", "m", {}, "rule", "maybe")
    safe = json_safe({"a": np.float32(2.0), "b": [np.nan, (np.int64(3), np.inf)], "c": "s"})
    assert safe == {"a": 2.0, "b": [None, [3, None]], "c": "s"}
    assert type(safe["a"]) is float and type(safe["b"][1][0]) is int
    assert format_number(np.nan) == "nan" and format_number(0.123456) == "0.123"
    claims = [{"verdict": "refuted"}, {"verdict": "supported"}, {"verdict": "refuted"}]
    assert verdict_summary(claims) == "1 supported, 2 refuted"


def _run_dataset():
    """Two methods, 3 runs, 2 modes (plus one with s = 0), amplitudes rising linearly."""
    t = np.linspace(0.0, 10.0, 11)
    s = np.array([1.0, 0.5, 0.0])
    speed = np.array([[[0.2], [0.1], [0.05]], [[0.25], [0.125], [0.1]]])   # (method, run, 1)
    amp = np.minimum(speed[..., None] * t[None, None, None, :] * s[None, None, :, None],
                     s[None, None, :, None])                  # (method, run, mode, time)
    amp = np.moveaxis(amp, 2, 3)                              # (method, run, time, mode)
    diff = amp * (s - amp)                                    # peaks at a = s / 2
    ds = xr.Dataset({"amplitude": (("method_name", "run", "time", "mode"), amp),
                     "diffusion": (("method_name", "run", "time", "mode"), diff),
                     "reduced_diffusion": (("method_name", "run", "time", "mode"), 1.1 * diff),
                     "spectrum": ("mode", s),
                     "theory_peak_amplitude": ("mode", s / 2)},
                    coords={"method_name": ["sgd", "sde"], "run": [0, 1, 2], "time": t,
                            "mode": [0, 1, 2]})
    ds.attrs.update(learning_rate=0.01, depth=4, unrelated="x")
    return ds


def test_dataset_summaries_select_count_and_read_parameters():
    ds = _run_dataset()
    assert teacher_rank(ds) == 2
    assert training_parameters(ds) == {"learning_rate": 0.01, "depth": 4}
    sde = ds.sel(method_name="sde")
    np.testing.assert_array_equal(sde.amplitude.values, ds.amplitude.values[1])
    events = with_events(ds, 2)
    assert events.sizes["mode"] == 2
    # run 0 of sgd: a = 0.2 t s, so a = 0.9 s at t = 4.5 and a = s / 2 at t = 2.5
    assert float(events.t_90.isel(method_name=0, run=0, mode=0)) == pytest.approx(4.5)
    assert float(events.t_half.isel(method_name=0, run=0, mode=1)) == pytest.approx(2.5)


def test_transit_deviation_and_peak_rows_against_loops():
    ds = with_events(_run_dataset(), 2)
    d = ds.sel(method_name="sgd")
    dev = transit_deviation(d).values
    for a in range(2):
        s = float(d.spectrum[a])
        amp, diff, red = (d[v].isel(mode=a).values.ravel()
                          for v in ("amplitude", "diffusion", "reduced_diffusion"))
        keep = (amp >= 0.1 * s) & (amp <= 0.9 * s)
        assert dev[a] == pytest.approx(np.median(np.abs(diff - red)[keep] / red[keep]), rel=1e-12)
    rows = peak_rows(d, "SGD")
    assert [r["mode"] for r in rows] == [1, 2]
    for a, r in enumerate(rows):
        before = valid = 0
        for run in range(3):
            tp, t9 = float(d.t_peak.isel(run=run, mode=a)), float(d.t_90.isel(run=run, mode=a))
            if np.isfinite(tp) and np.isfinite(t9):
                valid += 1
                before += tp < t9
        assert (r["runs"], r["peak_before_90_fraction"]) == (valid, before / valid)
        assert r["peak_before_90_ci95"] == list(wilson_interval(before, valid))
        assert r["a_peak_predicted"] == float(d.spectrum[a]) / 2
        # the diffusion a (s - a) peaks at the record closest to a = s / 2
        assert abs(r["a_at_peak_median"] - float(d.spectrum[a]) / 2) <= 0.1 * float(d.spectrum[a])
    with_dev = peak_rows_with_deviation(d, "SGD")
    assert [r["transit_relative_deviation_median"] for r in with_dev] == pytest.approx(list(dev))


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
    from dlnlab.engine import balance
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
    from dlnlab.engine import balance
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


def test_recording_rejects_an_unknown_observable():
    """What the engine records is checked before anything runs (the engine's option object)."""
    from dlnlab.engine import Recording

    with pytest.raises(ValueError, match="observables='bogus'"):
        Recording([0, 1], observables=["bogus"])
    assert "diffusion" in Recording([0, 1], observables=["diffusion"]).observables


def test_gradient_flow_step_defaults_to_the_learning_rate():
    assert _small().step_size("gf") == 0.01
    assert _small(gf__step_size=0.005).step_size("gf") == 0.005
    with pytest.raises(ValueError, match="gf.step_size"):
        _small(gf__step_size=0.003)

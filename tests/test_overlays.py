"""Theory overlays a user can trust (issue 16): the rank bottleneck (item 3), a gradient-flow
overlay honest for random starts beside the aligned one (item 4), events the record grid cannot
resolve and a default grid that resolves them (item 7)."""

from __future__ import annotations

import numpy as np
import pytest

from dlnlab.analysis import learning_events
from dlnlab.analysis.events import MIN_TRANSITION_RECORDS
from dlnlab.experiments import run_experiment, summarise, validate_config
from dlnlab.experiments.run import record_times
from dlnlab.experiments.run_table import summary_rows, unresolved_notes
from dlnlab.theory import gradient_flow_curve, half_learning_time


def _spacing(config, spacing: str, points: int):
    """``config`` with another record grid."""
    return validate_config(config.model_dump() | {"record": {"points": points, "spacing": spacing}})


GD_DEFAULT = validate_config({"runs": 8, "methods": ["gd"], "record": {"points": 100}})


@pytest.fixture(scope="module")
def linear_run():
    return run_experiment(_spacing(GD_DEFAULT, "linear", 100))


@pytest.fixture(scope="module")
def adaptive_run():
    return run_experiment(_spacing(GD_DEFAULT, "adaptive", 100))


def test_unreachable_modes_have_no_theory_and_are_marked():
    config = validate_config({"runs": 2, "methods": ["gd"], "task": {
        "d_in": 3, "d_out": 3, "hidden": [1], "spectrum": [1.0, 0.5]},
        "training": {"horizon": 20.0}, "record": {"points": 21, "spacing": "linear"}})
    ds = run_experiment(config)
    assert ds.theory_reachable.values.tolist() == [True, False, False]
    for name in ("theory_gf_amplitude", "theory_gf_amplitude_aligned"):
        assert np.all(np.isnan(ds[name].sel(mode=2).values))
        assert np.all(np.isfinite(ds[name].sel(mode=1).values))
    for name in ("theory_peak_amplitude", "theory_t_half_aligned", "theory_t_half_effective"):
        assert np.isnan(float(ds[name].sel(mode=2)))
    rows = summarise(ds)["methods"]["gd"]["modes"]
    assert [r["reachable"] for r in rows] == [True, False]
    assert rows[1]["t_half"] is None and rows[1]["t_half_theory_aligned"] is None
    table = summary_rows(summarise(ds))
    assert table[1][3] == "unreachable" and table[0][3] != "unreachable"


def test_effective_overlay_lands_among_the_runs_and_the_aligned_one_lags(linear_run):
    ds = linear_run
    s = ds.spectrum.values[:3]
    t_half = learning_events(ds.isel(method_name=0)).t_half.transpose("run", "mode").values
    effective = ds.theory_t_half_effective.values[:3]
    aligned = ds.theory_t_half_aligned.values[:3]
    assert ds.theory_gf_fitted.values[:3].all() and ds.attrs["theory_gf_fitted_to"] == "gd"
    for k in range(3):
        assert np.nanmin(t_half[:, k]) <= effective[k] <= np.nanmax(t_half[:, k])
        # a random start learns earlier than the aligned start of the same amplitude
        assert aligned[k] > max(np.nanmedian(t_half[:, k]), effective[k])
    # The curves are gradient flow from the stated starts (independent evaluation).
    for name, start in (("theory_gf_amplitude", ds.theory_effective_initial_amplitude),
                        ("theory_gf_amplitude_aligned", np.minimum(ds.theory_initial_amplitude, s[0]))):
        expected = np.asarray(gradient_flow_curve(ds.time.values, s, 4, start.values[:3]))
        np.testing.assert_allclose(ds[name].values[:, :3], expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(effective, np.asarray(half_learning_time(
        s, 4, ds.theory_effective_initial_amplitude.values[:3])), rtol=1e-9)
    assert "effective" in ds.theory_gf_amplitude.attrs["long_name"]
    assert "aligned" in ds.theory_gf_amplitude_aligned.attrs["long_name"]
    row = summarise(ds)["methods"]["gd"]["modes"][0]
    assert row["t_half_theory_effective"] == pytest.approx(effective[0])
    assert row["t_half_theory_aligned"] == pytest.approx(aligned[0])


def test_linear_grid_flags_the_transition_it_cannot_resolve(linear_run):
    summary = summarise(linear_run)
    rows = summary["methods"]["gd"]["modes"]
    events = learning_events(linear_run.isel(method_name=0)).transpose("run", "mode")
    t = linear_run.time.values
    for k, row in enumerate(rows):
        counts = [np.sum((t >= a) & (t <= b)) for a, b in
                  zip(events.t_10.values[:, k], events.t_90.values[:, k], strict=True)]
        assert row["records_across_transition"] == float(np.median(counts))
        assert row["resolved"] == (np.median(counts) >= MIN_TRANSITION_RECORDS)
    assert rows[0]["resolved"] is False                  # dt = 1: mode 1 moves in ~2.5
    table = summary_rows(summary)
    assert table[0][3].endswith("*")
    assert any(n.startswith("gd mode 1: unresolved: ") for n in unresolved_notes(summary))


def test_adaptive_grid_resolves_every_transition_within_the_same_budget(adaptive_run):
    assert adaptive_run.sizes["time"] <= 100
    rows = summarise(adaptive_run)["methods"]["gd"]["modes"]
    assert all(r["resolved"] for r in rows), [r["records_across_transition"] for r in rows]


def test_adaptive_record_times_do_not_depend_on_the_number_of_runs():
    few = record_times(_spacing(validate_config({"runs": 2}), "adaptive", 120))
    many = record_times(_spacing(validate_config({"runs": 40}), "adaptive", 120))
    np.testing.assert_array_equal(few, many)
    assert few[0] == 0.0 and few[-1] == pytest.approx(100.0) and few.size <= 120
    steps = few / 0.01
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    assert np.all(np.diff(few) > 0)

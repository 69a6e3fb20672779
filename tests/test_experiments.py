"""Experiments, configs, run directories, `dlnlab run` / `dlnlab bench` (issue 3)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

from dlnlab import cli
from dlnlab.analysis import crossing_times
from dlnlab.analysis.stats import censored_median
from dlnlab.dynamics import matched_temperature
from dlnlab.experiments import (
    build_task,
    initial_weights,
    load_config,
    run_experiment,
    summarise,
    validate_config,
)
from dlnlab.io import atomic_write_dataset, load_results, write_run
from dlnlab.theory import diffusion_peak

# run configs only (saddles, sweep and golden-path examples have their own models and tests)
EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").glob("*.toml")
                  if not p.name.startswith(("saddles_", "sweep_", "golden_path_")))
TINY = ["runs=3", 'record.spacing="linear"', "training.horizon=2", "record.points=11", "sde.step_size=0.005",
        "isotropic.step_size=0.005", "reduced.step_size=0.005"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = cli.main(["run", "--quiet", "--out", str(out), *sum((["--set", s] for s in TINY), [])])
    assert code == 0
    return out


def test_examples_are_valid_configs():
    assert len(EXAMPLES) >= 4
    for path in EXAMPLES:
        config = load_config(path)
        assert config.training.num_steps > 0


def test_default_config_is_the_papers_task():
    c = load_config(None)
    assert (c.task.d_in, c.task.d_out, c.task.depth) == (12, 12, 4)
    np.testing.assert_allclose(c.task.spectrum, [1, 2 / 3, 1 / 3])
    assert (c.init.gamma, c.training.learning_rate, c.training.batch_size) == (2.0, 0.01, 1)
    assert (c.task.label_noise, c.training.horizon, c.runs) == (0.0, 100.0, 32)
    assert c.methods == ["gd", "sgd", "sde", "isotropic", "reduced"]
    assert c.step_size("sde") == pytest.approx(0.001)


@pytest.mark.parametrize("override, field", [
    ("runs=0", "runs"),
    ("training.learning_rate=-0.1", "training.learning_rate"),
    ("task.spectrum=[0.5, 1.0]", "task.spectrum"),
    ("methods=[\"sgd\", \"adam\"]", "methods"),
    ("sde.step_size=0.003", "sde.step_size"),
    ("task.hidden=[12, 0]", "task.hidden"),
    ("nonsense.key=1", "nonsense"),
    ("training.schedule=[{time = 500.0, batch_size = 4}]", "schedule"),
    ("dtype=\"float16\"", "dtype"),
])
def test_bad_config_is_one_line_naming_the_field(override, field, capsys):
    assert cli.main(["run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert field in err


def test_missing_config_file_and_bad_override(capsys, tmp_path):
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("runs = [")
    assert cli.main(["run", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert cli.main(["run", "--set", "runs"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_run_directory_is_complete_and_self_consistent(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.toml", "results.nc", "summary.json", "figures"} <= names
    assert not any(n.startswith(".work") or n.endswith(".tmp") for n in names)
    figures = {p.name for p in (tiny_run / "figures").iterdir()}
    assert {f"{n}.{e}" for n in ("amplitudes", "diffusion", "loss") for e in ("png", "pdf")} <= figures
    ds = load_results(tiny_run)
    assert list(ds.method_name.values) == ["gd", "sgd", "sde", "isotropic", "reduced"]
    assert ds.sizes["run"] == 3 and ds.sizes["time"] == 11
    assert ds.amplitude.dims == ("method_name", "run", "time", "mode")
    assert ds.cross_amplitude.dims == ("method_name", "run", "time", "mode", "mode2")
    np.testing.assert_allclose(ds.time.values, np.linspace(0, 2, 11))
    # The recorded step is t / h for every method.
    for m, h in zip(ds.method_name.values, ds.step_size.values, strict=True):
        np.testing.assert_array_equal(ds.step.sel(method_name=m).values.ravel(),
                                      np.round(ds.time.values / h).astype(int))
    # Theory overlay = the theory library on the same inputs.
    peak = diffusion_peak(np.asarray([1.0, 2 / 3, 1 / 3]), 4, 0.0)
    np.testing.assert_allclose(ds.theory_peak_amplitude.values[:3], peak.amplitude, rtol=1e-6)
    # Every method starts from the same weights: identical amplitudes at t = 0 (reduced: |a|).
    a0 = ds.amplitude.isel(time=0)
    for m in ("sgd", "sde", "isotropic"):
        np.testing.assert_array_equal(a0.sel(method_name=m).values, a0.sel(method_name="gd").values)
    # float32 amplitudes from two reduction orders: |error| <= d_in d_out eps ||W(0)||_F.
    norm = np.sqrt((ds.singular_value.isel(time=0).sel(method_name="gd").values ** 2).sum(-1))
    atol = 144 * np.finfo(np.float32).eps * norm.max()
    np.testing.assert_allclose(a0.sel(method_name="reduced").values,
                               np.abs(a0.sel(method_name="gd").values), rtol=0, atol=atol)
    # The resolved config reruns to the same config.
    assert load_config(tiny_run / "config.toml") == load_config(None, TINY)
    assert "jax_version" in ds.attrs and ds.attrs["seed"] == 0


def test_summary_numbers_come_from_the_dataset(tiny_run):
    ds = load_results(tiny_run)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summarise(ds), default=float)) | {
        k: summary[k] for k in ("config", "provenance")}
    row = summary["methods"]["sgd"]["modes"][0]
    amp = ds.amplitude.sel(method_name="sgd").isel(mode=0).transpose("run", "time").values
    times = np.array([_first_crossing(ds.time.values, amp[r], 0.5) for r in range(amp.shape[0])])
    # Kaplan-Meier: runs that did not cross are censored at the horizon, never dropped.
    assert row["t_half"] == json.loads(json.dumps(censored_median(times, float(ds.time.values[-1]))))
    assert row["t_half"]["runs"] == 3 and row["t_half"]["crossed"] == int(np.isfinite(times).sum())


def _first_crossing(times, values, level):
    """Independent loop: first time ``values >= level``, linear interpolation between records."""
    for i, x in enumerate(values):
        if x >= level:
            if i == 0:
                return float(times[0])
            t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
            return float(t0 + (level - v0) * (t1 - t0) / (v1 - v0))
    return float("nan")


def test_first_crossing_interpolates():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    assert crossing_times(t, np.array([0.0, 0.2, 0.6, 1.0]), 0.5) == pytest.approx(1.75)
    assert _first_crossing(t, np.array([0.0, 0.2, 0.6, 1.0]), 0.5) == pytest.approx(1.75)
    assert np.isnan(crossing_times(t, np.zeros(4), 0.5))


def test_matched_temperature_is_mean_trace_over_parameters():
    config = load_config(None, ["runs=4"])
    task = build_task(config)
    weights = initial_weights(config)
    from dlnlab.core import noise_covariance

    traces = [float(np.trace(noise_covariance(tuple(w[i] for w in weights), task)))
              for i in range(4)]
    expected = 0.01 * np.mean(traces) / (2 * 576)
    assert matched_temperature(weights, task, 0.01, 1) == pytest.approx(expected, rel=1e-4)


def test_initial_weights_of_run_i_do_not_depend_on_the_number_of_runs():
    config = load_config(None)
    few, many = initial_weights(config, 3), initial_weights(config, 7)
    for a, b in zip(few, many, strict=True):
        np.testing.assert_array_equal(a, b[:3])


def test_interrupted_experiment_resumes_from_finished_methods(tmp_path):
    config = validate_config({"runs": 2, "methods": ["gd", "sgd"],
                              "training": {"horizon": 1.0}, "record": {"points": 5}})
    calls = []

    def factory(method, total):
        calls.append(method)
        if method == "sgd" and calls.count("sgd") == 1:
            raise KeyboardInterrupt        # the run dies in its second method
        return None

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, progress_factory=factory, partial_dir=tmp_path)
    assert (tmp_path / "gd.nc").exists() and not (tmp_path / "sgd.nc").exists()
    data = run_experiment(config, progress_factory=factory, partial_dir=tmp_path)
    assert calls == ["gd", "sgd", "sgd"]               # gd was not recomputed
    fresh = run_experiment(config)
    xr.testing.assert_allclose(data.amplitude, fresh.amplitude)


def test_atomic_writes_leave_no_complete_looking_file(tmp_path, monkeypatch):
    ds = xr.Dataset({"x": ("t", np.arange(3.0))})
    target = tmp_path / "results.nc"

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(OSError):
        write_run(tmp_path, "seed = 0\n", ds, {"ok": True})
    assert not target.exists() and not (tmp_path / "summary.json").exists()
    monkeypatch.undo()
    atomic_write_dataset(ds, target)
    xr.testing.assert_equal(xr.load_dataset(target, engine="h5netcdf"), ds)


def test_label_noise_overlays_use_the_stationary_law():
    from dlnlab.theory import stationary_moments

    config = load_config(EXAMPLES[[p.name for p in EXAMPLES].index("label_noise.toml")],
                         ["runs=2", "training.horizon=0.2", "record.points=3"])
    data = run_experiment(config)
    m = stationary_moments([1.0], 2, 0.02, 1, 1.0)
    np.testing.assert_allclose(data.theory_stationary_mean.values[0], m.mean[0], rtol=1e-10)
    assert data.theory_stationary_mean.values[0] < 1.0           # below s (docs/theory.md §9)


def test_bench_json_schema(capsys, monkeypatch):
    from dlnlab import benchmarks

    results = benchmarks.run_benchmarks(quick=True, progress=False, runs=8, min_seconds=0.05,
                                        recording_steps=200)
    for r in results:
        assert {"name", "config", "run_steps_per_s", "baseline_run_steps_per_s", "ratio",
                "device"} <= set(r)
        assert r["run_steps_per_s"] > 0
        assert "at the start" in r["load_average"]           # every number says the load it ran at
    assert [r["name"] for r in results] == ["online_sgd", "anisotropic_sde", "anisotropic_sde_floor",
                                            "online_sgd_vs_before", "online_sgd_kernel_vs_xla",
                                            "anisotropic_sde_vs_before", "recording", "record_loss_only"]
    sgd = results[0]
    assert sgd["ratio"] == pytest.approx(sgd["run_steps_per_s"] / sgd["baseline_run_steps_per_s"])
    # the floor row: 1 / (144 normals at their measured cost + 36,288 FLOP at the measured peak),
    # against the SDE row's rate
    floor, sde = results[2], results[1]
    seconds = 144 * floor["normal_seconds"] + 36288 / (floor["peak_gflop_per_second"] * 1e9)
    assert floor["run_steps_per_s"] == pytest.approx(1 / seconds, rel=1e-12)
    assert floor["baseline_run_steps_per_s"] == sde["run_steps_per_s"]
    assert floor["ratio"] == pytest.approx(floor["run_steps_per_s"] / sde["run_steps_per_s"])
    assert jax.numpy.isfinite(results[6]["peak_rss_mb"])
    assert "today: " in results[3]["baseline"]      # says whether the compiled kernel ran


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_runs(path):
    """Each example in its smallest form: runs, horizon and record points cut, the rest as given
    (batch_switch keeps its switch by scaling the horizon past it)."""
    config = load_config(path)
    horizon = 0.2 if not config.training.schedule else config.training.schedule[-1].time + 0.1
    config = load_config(path, ["runs=2", f"training.horizon={horizon}", "record.points=3"])
    data = run_experiment(config)
    assert list(data.method_name.values) == config.methods
    assert np.all(np.isfinite(data.loss.values))
    assert set(np.unique(data.status.values)) == {"ok"}

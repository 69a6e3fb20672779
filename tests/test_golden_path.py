"""The Golden-Path protocol (`dlnlab golden-path`): shared initialisation, arms, null tests, config
validation, the command end to end. The metrics library itself is tested in
``tests/test_golden_path_metrics.py``."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dlnlab.cli import main
from dlnlab.experiments.config import validate_config
from dlnlab.experiments.protocols import PROTOCOLS
from dlnlab.experiments.protocols.golden_path import (
    analyse,
    arm_configs,
    describe,
    golden_path_study,
    load_golden_path_config,
    run_golden_path,
    validate_golden_path,
)
from dlnlab.experiments.run import build_task, initial_weights, record_times, run_experiment, run_method
from dlnlab.plot.golden_path import readable_log_axis

TINY = {"seeds": 3, "training": {"horizon": 3.0, "learning_rate": 0.02}, "record": {"points": 16},
        "task": {"d_in": 4, "d_out": 4, "hidden": [5, 4], "spectrum": [2.0, 1.0]},
        "init": {"gamma": 1.0}, "metrics": {"bootstrap_resamples": 100, "top_k": 3},
        "offline_samples": 8}


# ------------------------------------------------------------------------------ init.shared
def test_shared_init_gives_every_run_run_zeros_weights_and_keeps_each_runs_noise():
    base = {"runs": 3, "methods": ["sgd"], "dtype": "float64", "training": {"horizon": 0.5},
            "record": {"points": 5, "spacing": "linear"}}
    shared = validate_config({**base, "init": {"shared": True}})
    independent = validate_config(base)
    w_shared, w_independent = initial_weights(shared), initial_weights(independent)
    for a, b in zip(w_shared, w_independent, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.broadcast_to(np.asarray(b)[:1], a.shape))
        assert float(np.abs(np.asarray(b)[1] - np.asarray(b)[0]).max()) > 0   # runs differ otherwise
    # the noise of run i does not depend on init.shared: both configs, from the same weights,
    # give the same trajectories, and the runs still differ from each other (their noise differs)
    task = build_task(shared)
    times = record_times(shared, task)
    a = run_method(shared, "sgd", task, w_shared, times)
    b = run_method(independent, "sgd", task, w_shared, times)
    np.testing.assert_array_equal(a.loss.values, b.loss.values)
    assert np.abs(a.loss.values[:, 1:] - a.loss.values[:1, 1:]).max() > 0


# ------------------------------------------------------------------------------ null tests
def _gd_dataset(config):
    experiments = arm_configs(config)
    return run_experiment(experiments["gd"])


def test_gd_against_itself_gives_every_distance_exactly_zero():
    config = validate_golden_path({**TINY, "arms": ["sgd"]})
    gd = _gd_dataset(config)
    runs = xr.concat([gd.isel(run=[0])] * config.seeds, dim="run", data_vars="all").assign_coords(
        run=np.arange(config.seeds))
    ds = analyse(config, {"gd": gd, "sgd": runs})
    for name in ("d_r", "d_m", "d_sigma", "d_shape", "d_sigma_w"):
        for suffix in ("", "_level"):
            values = ds[f"{name}{suffix}"].values
            assert np.all(values[np.isfinite(values)] == 0.0), name
        assert np.all(ds[name].values == 0.0) and np.all(ds[f"{name}_high"].values == 0.0)
    for name in ("parameter_distance", "relative_parameter_distance", "function_distance",
                 "mean_layer_distance"):
        assert np.all(ds[name].values == 0.0), name
    np.testing.assert_allclose(ds.cosine_similarity.values, 1.0, rtol=1e-14)
    assert int(ds.runs_at_checkpoint.min()) == config.seeds


def test_full_batch_offline_sgd_without_replacement_reproduces_offline_gd():
    """Epochs of one batch holding the whole data set are GD on that data set: equal to rounding
    (float64), over the whole trajectory; one sample fewer per batch is far from it."""
    config = validate_golden_path({**TINY, "arms": ["offline_sgd_epochs"],
                                   "training": {**TINY["training"], "batch_size": 8}})
    experiments = arm_configs(config)
    gd = run_experiment(experiments["offline_gd"]).parameters.isel(method_name=0, run=0).values
    sgd = run_experiment(experiments["offline_sgd_epochs"]).parameters.isel(method_name=0).values
    scale = np.abs(gd).max(axis=-1)                                      # (time,)
    error = np.abs(sgd - gd[None]).max(axis=-1) / scale                   # (run, time)
    assert error.max() <= 1e-9, error.max()
    assert np.abs(sgd[:, -1] - gd[-1]).max() > 0 or error.max() == 0      # the arm did run SGD
    smaller = validate_golden_path({**TINY, "arms": ["offline_sgd_epochs"],
                                    "training": {**TINY["training"], "batch_size": 7}})
    part = run_experiment(arm_configs(smaller)["offline_sgd_epochs"]).parameters.isel(method_name=0)
    assert (np.abs(part.values - gd[None]).max(axis=-1) / scale).max() > 1e-6


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("overrides", "expected"), [
    (["sedes=4"], "sedes=4: unknown field; did you mean seeds?"),
    (['arms=["sgd", "adam"]'], "arms='adam': unknown arm; one of sgd, offline_sgd"),
    (["arms=[]"], "arms=[]: needs at least one arm"),
    (["init.shared=false"], "init.shared=False: the Golden Path compares runs from one"),
    (["task.num_samples=10"], "task.num_samples=10: the task is online"),
    (["metrics.loss_levels=5"], "metrics.loss_levels=5: Input should be greater than or equal to 20"),
    (["metrics.escape.drop=0.01"], "metrics.escape.drop=0.01: must exceed tolerance=0.05"),
    (["seeds=1"], "seeds=1: Input should be greater than or equal to 2"),
    (['arms=["reduced"]'], "arms='reduced': unknown arm"),
    (["metrics.top_k=99"], "metrics.top_k=99: must be <= the narrowest width 12"),
    (["switch_time=500.0"], "switch_time=500.0: must lie before the horizon 100"),
    (["kernel='maybe'"], "kernel='maybe': Input should be a valid boolean"),
])
def test_bad_config_is_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ValueError) as error:
        load_golden_path_config(None, overrides)
    text = str(error.value)
    assert "\n" not in text and text.startswith(expected), text


def test_the_kernel_switch_reaches_every_arm():
    """``kernel`` (default true) is every arm's experiment ``kernel``; false runs the XLA step,
    which the arm's dataset records."""
    default = validate_golden_path({**TINY, "arms": ["sgd", "momentum_sgd"]})
    assert all(arm.kernel for arm in arm_configs(default).values())
    config = validate_golden_path({**TINY, "arms": ["sgd", "momentum_sgd"], "kernel": False})
    arms = arm_configs(config)
    assert set(arms) == {"gd", "sgd", "momentum_sgd"} and not any(a.kernel for a in arms.values())
    assert list(run_experiment(arms["sgd"]).step_kernel.values) == ["xla"]


@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    ((123, [], "x"), {}, "config_path=123: must be a path"),
    ((None, "seeds=4", "x"), {}, "overrides='seeds=4': must be a list of key=value strings"),
    ((None, [4], "x"), {}, "overrides=[4]: must be a list of key=value strings"),
    ((None, [], 42), {}, "out=42: must be a folder path"),
    ((None, [], "x"), {"quiet": "yes"}, "quiet='yes': must be True or False"),
])
def test_wrong_argument_types_at_the_python_door_are_one_value_error_line(tmp_path, args, kwargs,
                                                                          expected):
    args = args[:2] + ((str(tmp_path / args[2]) if isinstance(args[2], str) else args[2]),)
    with pytest.raises(ValueError) as error:
        run_golden_path(*args, **kwargs)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="config_path=42"):
        load_golden_path_config(42)


def test_recording_the_weights_of_the_reduced_sde_is_refused_before_anything_runs():
    with pytest.raises(ValueError) as error:
        validate_config({"methods": ["gd", "reduced"],
                         "record": {"variables": ["loss", "amplitude", "diffusion", "parameters"]}})
    assert str(error.value).startswith("record.variables=") and "'reduced'" in str(error.value)
    assert "\n" not in str(error.value)


def test_cli_prints_a_bad_arm_as_one_error_line_and_exits_2(capsys, tmp_path):
    code = main(["golden-path", "--set", 'arms=["nope"]', "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: arms='nope': unknown arm")
    assert not (tmp_path / "x").exists()


def test_arms_share_seed_init_and_record_times_and_differ_in_method_and_data():
    config = validate_golden_path(TINY)
    arms = arm_configs(config)
    assert list(arms) == ["gd", "offline_gd", "sgd", "offline_sgd", "offline_sgd_epochs", "sde",
                          "batch_switch"]
    assert arms["gd"].runs == arms["offline_gd"].runs == 1
    assert all(arms[a].runs == 3 for a in config.arms)
    assert all(c.init.shared and c.seed == config.seed for c in arms.values())
    assert arms["offline_sgd"].task.num_samples == 8 and arms["sgd"].task.num_samples == 0
    assert not arms["offline_sgd_epochs"].training.replacement
    assert arms["batch_switch"].training.schedule[0].time == 1.5
    times = {a: tuple(record_times(c)) for a, c in arms.items()}
    assert len(set(times.values())) == 1
    assert "golden-path" in PROTOCOLS and golden_path_study(config).name == "golden-path"


# ------------------------------------------------------------------------------ command
def test_command_writes_every_file_and_a_rerun_reuses_the_arms(tmp_path):
    out = tmp_path / "gp"
    overrides = [f"{k}={json.dumps(v)}" for k, v in TINY.items() if not isinstance(v, dict)]
    overrides += [f"{section}.{k}={json.dumps(v)}" for section, values in TINY.items()
                  if isinstance(values, dict) for k, v in values.items()]
    overrides.append('arms=["sgd", "offline_sgd_epochs"]')
    assert run_golden_path(None, overrides, out, quiet=True) == out
    for name in ("config.toml", "golden_path.nc", "golden_path.md", "claims.json", "claims.md",
                 "numbers.csv", "numbers.md", "run.json"):
        assert (out / name).is_file(), name
    for stem in ("pattern_distances", "distances", "rank_heatmaps", "modes"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    claims = json.loads((out / "claims.json").read_text())
    assert {c["id"].split(":")[0] for c in claims} == {
        "parameter_distance_large", "function_distance_small", "rank_pattern_matches",
        "spectrum_shape_matches", "cross_before_diagonal"}
    assert all(set(c) == {"id", "claim", "paper", "figure", "measured", "values", "criterion",
                          "verdict"} for c in claims)
    ds = xr.load_dataset(out / "golden_path.nc")
    final = ds.sel(arm="sgd").isel(time=-1)
    report = (out / "golden_path.md").read_text()
    assert f"{float(final.relative_parameter_distance_mean):.3g}" in report
    assert f"{float(final.function_distance_mean):.3g}" in report
    assert "| sgd | 3 |" in report
    # every variable and coordinate in the file says what it is; time-like ones carry units
    _assert_described(ds)
    # the setup states each reference's actual escapes (not the padded dim size) and the record count
    gd_escapes = int(np.isfinite(ds.reference_escape_time.sel(arm="sgd")).sum())
    assert f"gd {gd_escapes} escape" in report and "escapes x" not in report
    assert f"{ds.time.size} record times" in report
    # the resolved config reproduces itself; a rerun simulates nothing
    assert load_golden_path_config(out / "config.toml") == load_golden_path_config(None, overrides)
    first = json.loads((out / "run.json").read_text())
    assert not any(a["cached"] for a in first["arms"])
    run_golden_path(out / "config.toml", [], out, quiet=True)
    assert all(a["cached"] for a in json.loads((out / "run.json").read_text())["arms"])
    assert jax.config.jax_enable_x64


# ------------------------------------------------------------------------------ metadata, figures
def _assert_described(ds):
    for name, var in {**ds.data_vars, **ds.coords}.items():
        assert var.attrs.get("long_name") and len(var.attrs.get("description", "")) > 10, name
    for name in ("time", "offset", "checkpoint", "escape_time", "level_time", "t_cross", "t_diag",
                 "reference_escape_time"):
        assert ds[name].attrs["units"] == "t = step x learning rate", name
    # interval ends name their rule and the run-count variable that says how many runs they cover
    for name, count in (("d_r_low", "runs_at_checkpoint"), ("function_distance_high_level",
                                                            "runs_at_checkpoint_level"),
                        ("relative_parameter_distance_low_window", "runs_at_checkpoint_window")):
        text = ds[name].attrs["description"]
        assert "percentile bootstrap" in text and f"{ds.attrs['bootstrap_resamples']} resamples" in text
        assert f"runs covered: {count};" in text and count in ds.data_vars, name


def test_every_variable_of_the_analysed_dataset_is_described_and_a_new_one_is_refused():
    config = validate_golden_path({**TINY, "arms": ["sgd"]})
    gd = _gd_dataset(config)
    runs = xr.concat([gd.isel(run=[0])] * config.seeds, dim="run", data_vars="all").assign_coords(
        run=np.arange(config.seeds))
    ds = analyse(config, {"gd": gd, "sgd": runs})
    _assert_described(ds)
    with pytest.raises(KeyError, match="undescribed_variable"):
        describe(ds.assign(undescribed_variable=ds.loss), config)


@pytest.mark.parametrize("limits", [(0.25, 0.6), (0.15, 0.45), (0.02, 0.45), (1e-6, 0.7)])
def test_log_axis_tick_labels_do_not_overlap(limits):
    """A loss-level axis over about a decade: matplotlib's default labels minor ticks there
    ("4x10^-1" runs into "3x10^-1" at this width); after readable_log_axis no two labels overlap
    and at least two remain inside the view."""
    fig = Figure(figsize=(3, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.geomspace(*limits, 50)
    ax.plot(x, x)
    ax.set_xscale("log")
    ax.invert_xaxis()
    readable_log_axis(ax.xaxis)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels(which="both")
             if t.get_text() and t.get_visible()]
    low, high = sorted(ax.get_xlim())
    inside = [t for t in ax.xaxis.get_majorticklocs() if low <= t <= high]
    assert len(inside) >= 2 and len(boxes) >= 2
    boxes.sort(key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:], strict=False):
        assert a.x1 <= b.x0, (limits, a, b)


def test_an_arm_whose_runs_all_diverged_is_labelled_in_every_claim_without_warnings():
    """Divergence is a labelled outcome: no numpy or matplotlib warning, and every claim row and
    the numbers say how many runs diverged (not only "0 runs")."""
    import warnings

    from dlnlab.experiments.protocols.golden_path import claims, numbers
    from dlnlab.plot.golden_path import golden_path_figures

    config = validate_golden_path({**TINY, "arms": ["sgd"]})
    gd = _gd_dataset(config)
    runs = xr.concat([gd.isel(run=[0])] * config.seeds, dim="run", data_vars="all").assign_coords(
        run=np.arange(config.seeds))
    late = runs.time > runs.time[runs.time.size // 2]
    runs = runs.assign(diverged_step=xr.zeros_like(runs.diverged_step) + 3,
                       parameters=runs.parameters.where(~late, np.nan),
                       loss=runs.loss.where(~late, np.inf),
                       cross_amplitude=runs.cross_amplitude.where(~late, 1e300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = analyse(config, {"gd": gd, "sgd": runs})
        rows, claim_rows = numbers(ds), claims(ds)
        figures = golden_path_figures(ds)
    assert rows[0]["diverged"] == config.seeds and rows[0]["runs"] == 0
    note = f"{config.seeds} of {config.seeds} runs diverged"
    assert len(claim_rows) == 5 and all(note in c["measured"] for c in claim_rows)
    assert all(c["verdict"] == "not testable" for c in claim_rows)
    assert set(figures) == {"pattern_distances", "distances", "rank_heatmaps", "modes"}
    from dlnlab.experiments.protocols.golden_path import report_markdown

    timing = {"simulation_seconds": 1.0, "analysis_seconds": 1.0}
    report = report_markdown(config, ds, rows, claim_rows, [], timing)
    assert f"| sgd | 0 ({config.seeds} of {config.seeds} diverged) | all {config.seeds} runs diverged |" \
        in report


def test_the_default_example_is_the_default_config_and_lists_every_field():
    """examples/golden_path_default.toml is what `dlnlab golden-path` runs without a config, and
    every field of GoldenPathConfig appears in it (a commented line for an optional one), with
    a comment giving its rule."""
    import re
    from pathlib import Path

    from pydantic import BaseModel

    from dlnlab.experiments.protocols.golden_path import GoldenPathConfig

    path = Path(__file__).resolve().parents[1] / "examples" / "golden_path_default.toml"
    assert load_golden_path_config(path) == load_golden_path_config(None)
    section, listed = "", set()
    for line in path.read_text().splitlines():
        if m := re.match(r"^\[([\w.]+)\]", line):
            section = m.group(1) + "."
        elif m := re.match(r"^#? ?(\w+) = .*#", line):
            listed.add(section + m.group(1))

    def fields(model, prefix=""):
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                yield from fields(info.annotation, prefix + name + ".")
            else:
                yield prefix + name
    missing = sorted(set(fields(GoldenPathConfig)) - listed)
    assert not missing, missing

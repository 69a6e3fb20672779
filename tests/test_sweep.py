"""The sweep engine core (issue 13): sweep files, grid expansion, keys, chunking and growing
invariance, compilation counting, resume, failures, and agreement with independent
single-point simulations. Tiny configs (d = 3, depth 2) keep every sweep to seconds."""

from __future__ import annotations

import json
import re
import shutil

import jax
import numpy as np
import pytest

from dlnlab.dynamics import kernels
from dlnlab.dynamics.registry import get_method
from dlnlab.engine import Recording, run_keys, simulate, steps_for_times
from dlnlab.experiments import build_task, record_times, validate_config
from dlnlab.sweep import (
    InProcessExecutor,
    open_sweep,
    read_manifest,
    run_chunk,
    run_sweep,
    run_sweep_file,
    sweep_from_dict,
)
from dlnlab.sweep.chunks import INIT_STREAM, NOISE_STREAM, initial_weights_for_keys, point_run_keys
from dlnlab.sweep.config import point_identity

BASE = {"methods": ["sgd"], "dtype": "float64",
        "task": {"d_in": 3, "d_out": 3, "hidden": [3], "spectrum": [1.0, 0.5]},
        "training": {"horizon": 2.0},
        "record": {"points": 6, "spacing": "linear", "variables": ["loss", "amplitude", "diffusion"]}}


def sweep(grid=None, zips=None, runs=3, base=None, **extra):
    data = {"name": "t", "runs": runs, "base": json.loads(json.dumps(base or BASE)),
            "grid": grid or {}, **extra}
    if zips is not None:
        data["zip"] = zips
    return sweep_from_dict(data)


def values(ds, names=("loss", "amplitude", "diverged_step", "time")):
    return {n: np.asarray(ds[n].values) for n in names}


def assert_identical(a, b):
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("grid, zips, message", [
    ({"training.learnig_rate": [0.1]}, None,
     "grid.training.learnig_rate: unknown config field; did you mean training.learning_rate?"),
    ({"training.learning_rate": [0.1, -0.1]}, None,
     "grid.training.learning_rate[1]=-0.1: Input should be greater than 0"),
    ({"training.learning_rate": [0.1, 0.1]}, None,
     "grid.training.learning_rate[1]=0.1: repeats grid.training.learning_rate[0]"),
    ({"training.learning_rate": []}, None,
     "grid.training.learning_rate=[]: must be a non-empty list of values"),
    ({"training": [1]}, None, "grid.training: is a section; sweep one of its fields"),
    ({"runs": [1, 2]}, None, "grid.runs: cannot be swept (set runs at the top of the sweep file"),
    ({"task.label_noise": [0.0, 0.1]}, [{"task.label_noise": [0.2]}],
     "zip[0].task.label_noise: axis given twice (also in grid)"),
    (None, [{"training.learning_rate": [0.1, 0.2], "task.label_noise": [0.0]}],
     "zip[0].task.label_noise: 1 values, but zip[0].training.learning_rate has 2"),
    ({"task.hidden": [[3], [0]]}, None, "grid.task.hidden[1]=[0]: every hidden width must be >= 1"),
    ({"training.learning_rate": ["0.1"]}, None,
     "grid.training.learning_rate[0]='0.1': Input should be a valid number"),
])
def test_invalid_axes_are_one_line_errors(grid, zips, message):
    with pytest.raises(ValueError) as info:
        sweep(grid, zips)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_a_point_that_breaks_a_rule_across_axes_names_its_values():
    s = sweep({"training.learning_rate": [0.01, 0.5], "training.horizon": [0.1, 1.0]})
    with pytest.raises(ValueError, match=r"^point training.learning_rate=0.5, "
                                         r"training.horizon=0.1: training.horizon=0.1: shorter"):
        s.points()


def test_sweep_file_base_path_and_table(tmp_path):
    (tmp_path / "base.toml").write_text('methods = ["gd"]\nruns = 5\n[training]\nhorizon = 3.0\n')
    (tmp_path / "s.toml").write_text(
        'name = "s"\nbase = "base.toml"\n[grid]\n"training.learning_rate" = [0.01, 0.02]\n')
    from dlnlab.sweep import load_sweep

    s = load_sweep(tmp_path / "s.toml")
    assert s.base_config.training.horizon == 3.0 and s.base_config.runs == 5
    (tmp_path / "s2.toml").write_text(
        'name = "s2"\nruns = 2\n[base]\nfile = "base.toml"\n[base.training]\nhorizon = 4.0\n')
    s2 = load_sweep(tmp_path / "s2.toml")
    assert s2.base_config.training.horizon == 4.0 and s2.base_config.runs == 2
    assert s2.base_config.methods == ["gd"]
    (tmp_path / "s3.toml").write_text('name = "s3"\nbase = "missing.toml"\n')
    with pytest.raises(ValueError, match="^base='.*missing.toml': no such file$"):
        load_sweep(tmp_path / "s3.toml")
    with pytest.raises(ValueError, match="^--local-cluster=2 and --scheduler='tcp://x:1': give one"):
        run_sweep_file(tmp_path / "s.toml", local_cluster=2, scheduler="tcp://x:1")


def test_grid_and_zip_expand_in_c_order():
    s = sweep({"training.learning_rate": [0.01, 0.02], "task.label_noise": [0.0, 0.1, 0.2]},
              [{"training.horizon": [1.0, 2.0], "record.points": [5, 7]}])
    assert s.shape == (2, 3, 2) and s.num_points == 12
    points = s.points()
    assert [p.index for p in points] == list(range(12))
    p = points[7]                      # (1, 0, 1): lr 0.02, noise 0.0, horizon 2.0 and 7 points
    assert p.position == (1, 0, 1)
    assert (p.config.training.learning_rate, p.config.task.label_noise,
            p.config.training.horizon, p.config.record.points) == (0.02, 0.0, 2.0, 7)
    assert all(q.config.runs == 3 for q in points)
    # the identity ignores the run count, the name, the record grid, the divergence label and
    # the method list; every other field changes it
    other = sweep({"training.learning_rate": [0.01, 0.02], "task.label_noise": [0.0, 0.1, 0.2]},
                  [{"training.horizon": [1.0, 2.0], "record.points": [9, 11]}], runs=9,
                  base={**BASE, "methods": ["gd", "sgd"], "divergence_threshold": 10.0})
    assert [q.identity for q in other.points()] == [q.identity for q in points]
    assert len({q.identity for q in points}) == 12
    changed = sweep({"training.learning_rate": [0.01, 0.02], "task.label_noise": [0.0, 0.1, 0.2]},
                    [{"training.horizon": [1.0, 2.0], "record.points": [5, 7]}],
                    base={**BASE, "init": {"gamma": 2.5}})
    assert not {q.identity for q in changed.points()} & {q.identity for q in points}


# ------------------------------------------------------------------ keys in the engine
def test_per_run_keys_reproduce_the_root_key_bit_for_bit():
    config = validate_config({**BASE, "runs": 5})
    task = build_task(config)
    record = get_method("sgd")
    settings = config.settings("sgd")
    weights = initial_weights_for_keys(config, run_keys(jax.random.key(1), 5), task)
    stepper = record.build(task, settings)
    hp = record.hyperparameters(settings, {})
    root = jax.random.key(7)
    a = simulate(stepper, weights, hp, root, Recording(np.array([0, 3, 50])))
    b = simulate(stepper, weights, hp, run_keys(root, 5), Recording(np.array([0, 3, 50])))
    for name in ("loss", "amplitude"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # other keys give other runs (the comparison can fail), and a wrong count is one line
    c = simulate(stepper, weights, hp, run_keys(root, 5, 1), Recording(np.array([0, 3, 50])))
    assert not np.array_equal(a.loss.values[:, -1], c.loss.values[:, -1])
    with pytest.raises(ValueError, match=r"^key.shape=\(4,\): one key per run must have shape \(5,\)"):
        simulate(stepper, weights, hp, run_keys(root, 4), Recording(np.array([0, 3])))


# ------------------------------------------------------------------ results
def independent_point(config, method, start, stop):
    """One point simulated alone, ``dlnlab run``-style, with the sweep's keys."""
    task = build_task(config)
    identity = point_identity(config)
    weights = initial_weights_for_keys(config, point_run_keys(identity, INIT_STREAM, start, stop),
                                       task)
    record = get_method(method)
    settings = config.settings(method)
    prepared = record.prepare(weights, task, settings)
    times = record_times(config, task)
    steps = steps_for_times(times, settings.step_size)
    ds = simulate(record.build(task, settings), record.start(weights, task),
                  record.hyperparameters(settings, prepared),
                  point_run_keys(identity, NOISE_STREAM, start, stop), Recording(steps),
                  divergence_threshold=config.divergence_threshold)
    return ds, times


def test_value_sweep_equals_single_point_simulations(tmp_path, monkeypatch):
    import dlnlab.sweep.chunks as chunks

    calls = []
    original = chunks._simulate_call

    def spy(method, members, noise_keys):
        calls.append(sorted({float(m.hparams.learning_rate[0]) for m in members}))
        return original(method, members, noise_keys)

    monkeypatch.setattr(chunks, "_simulate_call", spy)
    # 0.04 and 0.05 (50 and 40 steps) share a call; 0.1 (20 steps) is in another step band
    s = sweep({"training.learning_rate": [0.04, 0.05, 0.1], "task.label_noise": [0.0, 0.3]})
    ds = run_sweep(s, tmp_path / "out").load()
    assert sorted(calls) == [[0.04, 0.05], [0.04, 0.05], [0.1], [0.1]]
    assert ds.attrs["complete"] == "True"
    assert set(np.unique(ds.status.values)) == {"ok"}
    for point in s.points():
        lr, noise = point.config.training.learning_rate, point.config.task.label_noise
        for method in ("sgd",):
            alone, times = independent_point(point.config, method, 0, 3)
            got = ds.sel(learning_rate=lr, label_noise=noise, method_name=method)
            k = times.size
            np.testing.assert_array_equal(got.time.values[:k], times)
            assert np.all(np.isnan(got.time.values[k:]))
            np.testing.assert_array_equal(got.loss.values[:, :k], alone.loss.values)
            np.testing.assert_array_equal(got.amplitude.values[:, :k], alone.amplitude.values)
    # the points differ (a sweep that repeated one point would pass the comparison above only
    # if every point were the same; it is not)
    final = ds.final_loss.sel(method_name="sgd").values
    assert np.unique(final).size == final.size


def test_chunking_and_growing_the_grid_keep_every_run_bit_identical(tmp_path):
    lrs = [0.04, 0.05]                                # one call when in one chunk
    small = run_sweep(sweep({"training.learning_rate": lrs}, chunk_runs=1), tmp_path / "a")
    one = values(small.load())
    whole = run_sweep(sweep({"training.learning_rate": lrs}, chunk_runs=64), tmp_path / "b")
    assert read_manifest(tmp_path / "a")["chunks"].__len__() == 6
    assert read_manifest(tmp_path / "b")["chunks"].__len__() == 1
    assert_identical(one, values(whole.load()))
    grown = run_sweep(sweep({"training.learning_rate": [0.01, *lrs, 0.045]}, runs=5),
                      tmp_path / "c").load()
    shared = grown.sel(learning_rate=lrs).isel(run=slice(0, 3))
    assert_identical(one, values(shared))
    # other points are other runs
    assert not np.array_equal(grown.loss.sel(learning_rate=0.045).values,
                              grown.loss.sel(learning_rate=0.05).values)


def test_divergence_is_labelled_not_fatal(tmp_path):
    base = {**BASE, "methods": ["gd"], "training": {"horizon": 20.0}}
    ds = run_sweep(sweep({"training.learning_rate": [0.05, 1.9]}, base=base, runs=2),
                   tmp_path / "out").load()
    bad = ds.sel(learning_rate=1.9, method_name="gd")
    good = ds.sel(learning_rate=0.05, method_name="gd")
    assert list(bad.status.values) == ["diverged", "diverged"]
    assert np.all(bad.diverged_step.values >= 0)
    assert list(good.status.values) == ["ok", "ok"] and np.all(good.diverged_step.values == -1)
    rows = {(r["learning_rate"], r["method"]): r for r in
            __import__("dlnlab.sweep", fromlist=["summary_rows"]).summary_rows(ds)}
    assert rows[(1.9, "gd")]["diverged_fraction"] == 1.0 and rows[(1.9, "gd")]["runs"] == 2
    assert rows[(0.05, "gd")]["diverged_fraction"] == 0.0
    text = (tmp_path / "out" / "summary.csv").read_text()
    assert text.splitlines()[0].startswith("learning_rate,method,runs,diverged,failed,pending")


# ------------------------------------------------------------------ compilation
def test_new_values_of_a_vectorised_axis_compile_nothing(tmp_path):
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    base = {**BASE, "record": {"points": 6, "variables": ["loss", "amplitude", "diffusion"]}}
    # (the adaptive record grid, as by default)
    grid = {"training.learning_rate": [0.02, 0.04], "init.gamma": [1.5, 2.0],
            "task.label_noise": [0.1, 0.2], "seed": [0, 1]}
    run_sweep(sweep(grid, base=base, runs=2), tmp_path / "a", summary=False)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        new = {"training.learning_rate": [0.03, 0.05], "init.gamma": [1.7, 2.2],
               "task.label_noise": [0.15, 0.25], "seed": [2, 3]}
        ds = run_sweep(sweep(new, base=base, runs=2), tmp_path / "b", summary=False)
        assert set(np.unique(ds.status.values)) == {"ok"}
        assert compiles == [], f"{len(compiles)} new compilations"
        # the listener sees compilations: a new shape (4 runs per point) compiles
        run_sweep(sweep(new, base=base, runs=4), tmp_path / "c", summary=False)
        assert len(compiles) > 0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# ------------------------------------------------------------------ resume and failure
class Counting:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __call__(self, spec, path):
        self.calls.append(spec.chunk_id)
        if self.fail is not None and self.fail(spec):
            raise RuntimeError("worker lost (injected)")
        return run_chunk(spec, path)


def test_resume_skips_complete_chunks_and_recomputes_damaged_ones(tmp_path):
    s = sweep({"training.learning_rate": [0.02, 0.05, 0.1]}, chunk_runs=3)
    out = tmp_path / "out"
    reference = values(run_sweep(s, out).load())
    chunks = read_manifest(out)["chunks"]
    assert len(chunks) == 3 and all(c["status"] == "complete" for c in chunks)
    from dlnlab.sweep import load_sweep

    again = load_sweep(out / "sweep.toml")                           # the resolved sweep file
    assert again == s and [p.identity for p in again.points()] == [p.identity for p in s.points()]

    counter = Counting()
    assert_identical(reference, values(run_sweep(s, out, executor=InProcessExecutor(counter)).load()))
    assert counter.calls == []

    files = [out / c["file"] for c in chunks]
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])                    # truncated
    shutil.copyfile(files[2], files[1])                              # another chunk's file
    counter = Counting()
    assert_identical(reference, values(run_sweep(s, out, executor=InProcessExecutor(counter)).load()))
    assert sorted(counter.calls) == sorted([chunks[0]["id"], chunks[1]["id"]])

    (out / "manifest.json").write_text("{ damaged")                  # rebuilt from the files
    counter = Counting()
    assert_identical(reference, values(run_sweep(s, out, executor=InProcessExecutor(counter)).load()))
    assert counter.calls == []


def test_a_failed_chunk_is_labelled_and_only_failed_completes_it(tmp_path):
    s = sweep({"training.learning_rate": [0.02, 0.05, 0.1]}, chunk_runs=3)
    reference = values(run_sweep(s, tmp_path / "ref").load())
    out = tmp_path / "out"
    plan = read_manifest(tmp_path / "ref")["chunks"]
    bad = plan[1]["id"]
    ds = run_sweep(s, out, executor=InProcessExecutor(Counting(lambda spec: spec.chunk_id == bad)))
    manifest = read_manifest(out)
    status = {c["id"]: c["status"] for c in manifest["chunks"]}
    assert status[bad] == "failed" and sorted(status.values()) == ["complete", "complete", "failed"]
    assert "worker lost (injected)" in next(c["message"] for c in manifest["chunks"] if c["id"] == bad)
    point = plan[1]["entries"][0][0]
    lr = [0.02, 0.05, 0.1][point]
    assert set(ds.status.sel(learning_rate=lr).values.ravel()) == {"failed"}
    assert np.all(np.isnan(ds.loss.sel(learning_rate=lr).values))
    assert ds.attrs["complete"] == "False" and ds.attrs["chunks_failed"] == 1
    counter = Counting()
    done = run_sweep(s, out, executor=InProcessExecutor(counter), only_failed=True)
    assert counter.calls == [bad]
    assert done.attrs["complete"] == "True"
    assert_identical(reference, values(done.load()))
    with pytest.raises(ValueError, match="^only_failed=True: out=.* has no manifest.json"):
        run_sweep(s, tmp_path / "empty", only_failed=True)


def test_a_simulation_that_raises_labels_its_runs_failed(tmp_path, monkeypatch):
    import dlnlab.sweep.chunks as chunks

    original = chunks._prepare_method

    def flaky(method, config, *args):
        if config.training.learning_rate == 0.05 and config.seed == 1:
            raise FloatingPointError("injected")
        return original(method, config, *args)

    monkeypatch.setattr(chunks, "_prepare_method", flaky)
    s = sweep({"training.learning_rate": [0.02, 0.05], "seed": [0, 1]}, chunk_runs=64)
    ds = run_sweep(s, tmp_path / "out").load()
    manifest = read_manifest(tmp_path / "out")
    assert [c["status"] for c in manifest["chunks"]] == ["failed"]
    assert "FloatingPointError: injected" in manifest["chunks"][0]["message"]
    assert set(ds.status.sel(learning_rate=0.05, seed=1).values.ravel()) == {"failed"}
    assert np.all(np.isnan(ds.loss.sel(learning_rate=0.05, seed=1).values))
    others = np.concatenate([ds.status.sel(seed=0).values.ravel(),
                             ds.status.sel(seed=1, learning_rate=0.02).values.ravel()])
    assert set(others) == {"ok"}
    assert ds.attrs["complete"] == "False"
    monkeypatch.setattr(chunks, "_prepare_method", original)
    done = run_sweep(s, tmp_path / "out", only_failed=True).load()
    assert set(done.status.values.ravel()) == {"ok"}
    np.testing.assert_array_equal(done.loss.sel(seed=0).values, ds.loss.sel(seed=0).values)


def test_open_sweep_is_lazy_and_reads_no_file_until_computed(tmp_path):
    s = sweep({"training.learning_rate": [0.02, 0.05]}, chunk_runs=3)
    out = tmp_path / "out"
    reference = values(run_sweep(s, out).load())
    for c in read_manifest(out)["chunks"]:
        (out / c["file"]).rename(out / (c["file"] + ".moved"))
    ds = open_sweep(out)                                      # builds from the manifest alone
    assert ds.loss.chunks is not None
    assert ds.learning_rate.values.tolist() == [0.02, 0.05]
    with pytest.raises(Exception):                             # noqa: B017 - the files are gone
        ds.loss.values  # noqa: B018
    for c in read_manifest(out)["chunks"]:
        (out / (c["file"] + ".moved")).rename(out / c["file"])
    assert_identical(reference, values(open_sweep(out, lazy=False)))
    with pytest.raises(ValueError, match="^out='.*nothing': no sweep here"):
        open_sweep(tmp_path / "nothing")


def test_zipped_axes_and_shape_groups(tmp_path):
    s = sweep({"training.learning_rate": [0.02, 0.05]},
              [{"task.hidden": [[3], [3, 3]], "training.batch_size": [1, 2]}], runs=2)
    ds = run_sweep(s, tmp_path / "out").load()
    assert dict(ds.sizes)["point"] == 2
    assert ds.hidden.values.tolist() == ["[3]", "[3, 3]"]
    assert ds.batch_size.values.tolist() == [1, 2]
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest["groups"]) == 2                      # depth and batch size are shapes
    assert set(np.unique(ds.status.values)) == {"ok"}
    deep = validate_config({**BASE, "runs": 2, "task": {**BASE["task"], "hidden": [3, 3]},
                            "training": {"horizon": 2.0, "learning_rate": 0.05, "batch_size": 2}})
    alone, times = independent_point(deep, "sgd", 0, 2)
    got = ds.sel(learning_rate=0.05, point=1, method_name="sgd")
    np.testing.assert_array_equal(got.loss.values[:, :times.size], alone.loss.values)


def test_progress_lines_off_a_terminal(tmp_path, monkeypatch):
    import io

    from dlnlab.sweep import SweepProgress

    monkeypatch.setenv("DLNLAB_PROGRESS_SECONDS", "0")
    stream = io.StringIO()
    s = sweep({"training.learning_rate": [0.02, 0.05]}, chunk_runs=3)
    progress = SweepProgress("t", total_runs=6, total_points=2, stream=stream)
    run_sweep(s, tmp_path / "out", progress=progress, summary=False)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"sweep t: 2 chunks \(~[0-9.]+ kB of chunk files, ~[0-9.]+ [kM]B memory per "
                        r"chunk\) to run; 0/2 points, 0/6 runs already done", lines[0]), lines[0]
    assert lines[1].startswith("sweep t: 1/2 points, 3/6 runs (50%), ") and "runs/s" in lines[1]
    assert "left" in lines[1]
    assert lines[-1].startswith("sweep t: 2/2 points, 6/6 runs (100%), ") and lines[-1].endswith("done")
    # a rerun has nothing to do and says so
    stream = io.StringIO()
    run_sweep(s, tmp_path / "out", progress=SweepProgress("t", 6, 2, stream=stream), summary=False)
    assert stream.getvalue().splitlines() == ["sweep t: 0 chunks to run; 2/2 points, 6/6 runs "
                                              "already done"]


def test_a_sweep_without_axes_is_its_base_config(tmp_path):
    ds = run_sweep(sweep(None, runs=2), tmp_path / "out")
    assert [d for d in ds.loss.dims] == ["method_name", "run", "record"]
    eager = open_sweep(tmp_path / "out", lazy=False)
    np.testing.assert_array_equal(ds.loss.values, eager.loss.values)
    alone, times = independent_point(sweep(None, runs=2).points()[0].config, "sgd", 0, 2)
    np.testing.assert_array_equal(eager.loss.sel(method_name="sgd").values[:, :times.size],
                                  alone.loss.values)


# ------------------------------------------------------------------ fix round (trial F1, F2, F8, F9)
@pytest.mark.parametrize("runs, chunk_runs", [(3, 2), (3, 7), (4, 4), (2, 64)])
def test_a_chunk_never_splits_a_point_it_shares(runs, chunk_runs):
    """Chunks pack chunk_runs // runs whole points, or (runs > chunk_runs) hold one point's run
    range alone: every run of every point exactly once."""
    from dlnlab.sweep import plan_chunks

    s = sweep({"training.learning_rate": [0.04, 0.05, 0.06], "seed": [0, 1]}, runs=runs,
              chunk_runs=chunk_runs)
    chunks, _ = plan_chunks(s, s.points())
    covered = {}
    for spec in chunks:
        assert spec.num_runs <= chunk_runs
        if len(spec.entries) > 1:
            assert all((e.run_start, e.run_stop) == (0, runs) for e in spec.entries)
            assert len(spec.entries) <= max(1, chunk_runs // runs)
        for e in spec.entries:
            covered.setdefault(e.point, []).extend(range(e.run_start, e.run_stop))
    assert {p: sorted(r) for p, r in covered.items()} == {p: list(range(runs)) for p in range(6)}


def test_growing_an_axis_reuses_every_chunk_of_the_old_points(tmp_path, monkeypatch):
    """A point with more runs than chunk_runs has chunks of its own: a new learning rate adds
    chunks and reruns none (the old packing cut chunks across the points of another seed)."""
    import io

    from dlnlab.sweep import SweepProgress

    monkeypatch.setenv("DLNLAB_PROGRESS_SECONDS", "1000")
    base = BASE
    small = sweep({"training.learning_rate": [0.04, 0.05], "seed": [0, 1]}, runs=3, chunk_runs=2,
                  base=base)
    run_sweep(small, tmp_path / "out", summary=False)
    before = {c["id"]: c["content_hash"] for c in read_manifest(tmp_path / "out")["chunks"]}
    grown = sweep({"training.learning_rate": [0.04, 0.05, 0.06], "seed": [0, 1]}, runs=3,
                  chunk_runs=2, base=base)
    stream = io.StringIO()
    run_sweep(grown, tmp_path / "out", summary=False,
              progress=SweepProgress("t", 18, 6, stream=stream))
    first = re.sub(r" \(~[^)]*\)", "", stream.getvalue().splitlines()[0])
    assert first == "sweep t: 4 chunks to run; 4/6 points, 12/18 runs already done"
    after = {c["id"]: c["content_hash"] for c in read_manifest(tmp_path / "out")["chunks"]}
    assert {k: after[k] for k in before} == before          # the same files, not rewritten
    assert read_manifest(tmp_path / "out")["orphans"] == []


def test_chunks_of_an_earlier_grid_are_reported_not_silently_kept(tmp_path):
    """Packed chunks (all points of a group in one) change id when the grid grows: the old
    files are listed as orphans in the manifest and named in the first progress line."""
    import io

    from dlnlab.sweep import SweepProgress

    base = BASE
    run_sweep(sweep({"training.learning_rate": [0.04, 0.05]}, runs=2, base=base), tmp_path / "out",
              summary=False)
    old = [c["file"] for c in read_manifest(tmp_path / "out")["chunks"]]
    stream = io.StringIO()
    run_sweep(sweep({"training.learning_rate": [0.04, 0.05, 0.06]}, runs=2, base=base),
              tmp_path / "out", summary=False, progress=SweepProgress("t", 6, 3, stream=stream))
    assert read_manifest(tmp_path / "out")["orphans"] == old and len(old) == 1
    assert re.sub(r" \(~[^)]*\)", "", stream.getvalue().splitlines()[0]) == (
        "sweep t: 1 chunk to run; 0/3 points, 0/6 runs already done; 1 chunk file in chunks/ not "
        "in this plan (an earlier grid; kept, not read; listed in manifest.json 'orphans')")


def test_every_variable_has_a_description_and_time_units(tmp_path):
    import xarray as xr

    from dlnlab.sweep.attributes import TIME_UNITS

    run_sweep(sweep({"training.learning_rate": [0.04, 0.05]}, runs=2), tmp_path / "out",
              summary=False)
    chunk = read_manifest(tmp_path / "out")["chunks"][0]["file"]
    with xr.open_dataset(tmp_path / "out" / chunk, engine="h5netcdf") as in_file:
        datasets = {"chunk": in_file.load(), "open_sweep": open_sweep(tmp_path / "out")}
    for where, ds in datasets.items():
        missing = [n for n in ds.data_vars if not ds[n].attrs.get("long_name")]
        assert missing == [], where
        for name in ("time", "censor_time", "t_half", "t_90"):
            assert ds[name].attrs["units"] == TIME_UNITS, (where, name)
        assert ds.step.attrs["units"] == "steps" and "units" not in ds.status.attrs


@pytest.mark.parametrize("text, message", [
    ("", "base: required: a sweep file without base, [grid] or [[zip]] would run the default"),
    ('name = "x"\nruns = 4\n', "base: required: a sweep file without base"),
    ("seed = 0\n[training]\nlearning_rate = 0.1\n",
     "seed=0: unknown field; valid: name, base, grid, zip, runs, chunk_runs; this looks like a "
     'dlnlab run config: a sweep file names it as base = "run.toml"'),
])
def test_an_empty_file_or_a_run_config_is_not_a_sweep(tmp_path, text, message):
    from dlnlab.sweep import load_sweep

    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_sweep(path)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_resumed_sweep_says_how_many_runs_ran_now(tmp_path, monkeypatch):
    import io

    from dlnlab.sweep import SweepProgress

    monkeypatch.setenv("DLNLAB_PROGRESS_SECONDS", "0")
    base = BASE
    run_sweep(sweep({"training.learning_rate": [0.04]}, runs=2, base=base), tmp_path / "out",
              summary=False)
    stream = io.StringIO()
    run_sweep(sweep({"training.learning_rate": [0.04, 0.05]}, runs=2, chunk_runs=2, base=base),
              tmp_path / "out", summary=False, progress=SweepProgress("t", 4, 2, stream=stream))
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("sweep t: 2/2 points, 4/4 runs (100%, 2 run now), "), last


def test_a_diverged_run_never_counts_as_having_learned(tmp_path):
    """Trial F10: an amplitude passing s/2 on its way to infinity is no crossing. The raw
    amplitudes of these diverging GD runs do cross a level (independent crossing_times), yet
    t_half/t_90 are NaN and the summary's Kaplan-Meier medians count no crossing."""
    from dlnlab.analysis.events import crossing_times
    from dlnlab.sweep import summary_rows

    base = {**BASE, "methods": ["gd"], "training": {"horizon": 20.0}}
    ds = run_sweep(sweep({"training.learning_rate": [1.9, 4.0]}, base=base, runs=2),
                   tmp_path / "out").load()
    gd = ds.sel(method_name="gd")
    assert (gd.status.values == "diverged").all()
    raw = [crossing_times(gd.time.values[i], np.moveaxis(gd.amplitude.values[i], -1, -2),
                          np.array([0.5, 0.25, np.inf])) for i in range(2)]
    assert np.isfinite(np.stack(raw)).any()                  # the old rule counted these
    assert np.isnan(gd.t_half.values).all() and np.isnan(gd.t_90.values).all()
    for row in summary_rows(ds):
        assert row["runs"] == 2 and row["diverged"] == 2
        assert row["t_half_mode1"]["crossed"] == 0 and row["t_half_mode2"]["crossed"] == 0
    rows = {r["learning_rate"]: r for r in summary_rows(ds)}
    assert rows[1.9]["final_loss_median"] == "diverged 2/2"    # not a blank cell


def test_the_plan_line_estimates_disk_and_a_sweep_too_big_for_the_disk_is_refused(tmp_path,
                                                                                  monkeypatch):
    """Trial F12: the estimate of the chunk files agrees with the files written (within 15%),
    and a sweep whose estimate exceeds the free space is a one-line error before anything is
    written."""
    import io

    from dlnlab.sweep import SweepProgress, driver
    from dlnlab.sweep.plan import chunk_file_bytes_per_run, chunk_file_overhead_bytes

    s = sweep({"training.learning_rate": [0.04, 0.05]}, runs=64)
    stream = io.StringIO()
    run_sweep(s, tmp_path / "out", summary=False, progress=SweepProgress("t", 128, 2, stream=stream))
    written = sum(f.stat().st_size for f in (tmp_path / "out" / "chunks").glob("*.nc"))
    estimate = sum(64 * chunk_file_bytes_per_run(p.config) for p in s.points())
    estimate += chunk_file_overhead_bytes(s.points()[0].config)           # one chunk file
    assert abs(estimate / written - 1) < 0.15, (estimate, written)
    assert re.match(r"sweep t: 1 chunk \(~[0-9.]+ kB of chunk files", stream.getvalue())
    monkeypatch.setattr(driver, "_free_bytes", lambda out: 1000.0)
    with pytest.raises(ValueError) as info:
        run_sweep(s, tmp_path / "new", summary=False)
    assert re.fullmatch(r"out='.*new': the 128 runs to run need ~[0-9.]+ kB of chunk files; 1 kB "
                        r"free there \(.*\)", str(info.value)), str(info.value)
    assert not (tmp_path / "new").exists()
    run_sweep(s, tmp_path / "out", summary=False)       # nothing to run: no disk needed


def test_wrong_types_at_the_python_doors_are_one_line_errors(tmp_path):
    """Trial F14/F15: no TypeError/AttributeError, no silent truthiness, no empty dataset."""
    from dlnlab.sweep import load_sweep

    s = sweep({"training.learning_rate": [0.04]}, runs=1)
    cases = [
        (lambda: load_sweep(42), "path=42: must be the path of a sweep file"),
        (lambda: load_sweep("x.toml", "runs=8"), "overrides='runs=8': must be a list of key=value"),
        (lambda: run_sweep("examples/sweep_quick.toml", tmp_path / "a"),
         "sweep='examples/sweep_quick.toml': must be a SweepConfig from dlnlab.sweep.load_sweep"),
        (lambda: run_sweep(s, 42), "out=42: must be the path of the sweep folder"),
        (lambda: run_sweep(s, tmp_path / "a", executor="dask"), "executor='dask': must be an executor"),
        (lambda: run_sweep(s, tmp_path / "a", only_failed="yes"), "only_failed='yes': must be True or False"),
        (lambda: run_sweep_file("x.toml", only_failed="yes"), "only_failed='yes': must be True or False"),
        (lambda: open_sweep(tmp_path, lazy="no"), "lazy='no': must be True, False or None"),
        (lambda: open_sweep(tmp_path, variables="loss"), "variables='loss': must be a list of variable"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists()
    run_sweep(s, tmp_path / "b", summary=False)
    with pytest.raises(ValueError, match=r"^variables=\['nope'\]: 'nope' is not a sweep variable; "
                                         r"valid: .*final_loss"):
        open_sweep(tmp_path / "b", variables=["nope"])


def test_a_method_a_point_does_not_run_is_absent_not_pending(tmp_path):
    """Trial F18: with methods as an axis, a (point, method) pair the point does not run is
    'absent' (not 'pending' in a complete sweep) and has no summary row."""
    from dlnlab.sweep import summary_rows

    ds = run_sweep(sweep({"methods": [["sgd"], ["gd"]]}, runs=2), tmp_path / "out").load()
    assert ds.attrs["complete"] == "True"
    status = ds.status.transpose("methods", "method_name", "run").values
    methods = [str(m) for m in ds.method_name.values]
    sgd, gd = methods.index("sgd"), methods.index("gd")
    assert (status[0, sgd] == "ok").all() and (status[0, gd] == "absent").all()
    assert (status[1, gd] == "ok").all() and (status[1, sgd] == "absent").all()
    rows = summary_rows(ds)
    assert sorted((r["methods"], r["method"]) for r in rows) == [('["gd"]', "gd"), ('["sgd"]', "sgd")]
    assert all(r["pending"] == 0 and r["runs"] == 2 for r in rows)


def test_the_product_of_each_point_is_used_and_recorded(tmp_path):
    """A sweep over ``product`` runs each point with its own product (one call each: they round
    differently) and records the product it ran (``auto`` resolved: broadcast at width 3)."""
    ds = run_sweep(sweep({"product": ["auto", "broadcast", "batched"]}, runs=2),
                   tmp_path / "out").load()
    got = ds.layout_product.sel(method_name="sgd")
    assert got.sel(product="auto").values.tolist() == ["broadcast"] * 2
    assert got.sel(product="broadcast").values.tolist() == ["broadcast"] * 2
    assert got.sel(product="batched").values.tolist() == ["batched"] * 2
    assert ds.layout_product.attrs["long_name"].startswith("how the engine ran")
    # online SGD's broadcast steps run in the compiled kernel where it is built; batched never
    compiled = "compiled" if kernels.available() else "xla"
    kernel = ds.step_kernel.sel(method_name="sgd")
    assert kernel.sel(product="broadcast").values.tolist() == [compiled] * 2
    assert kernel.sel(product="batched").values.tolist() == ["xla"] * 2
    assert ds.step_kernel.attrs["long_name"].startswith("what computed the steps")


def test_the_kernel_switch_of_each_point_is_used_and_recorded(tmp_path):
    """``kernel = false`` (the config's switch of the engine's ``Layout.kernel``) runs SGD's
    XLA step; ``true`` the compiled kernel where it is built. ``kernel`` is not part of a point's
    identity (the same runs either way), each point is its own call, and at width 3 the two give
    the same bits (XLA sums in index order there)."""
    config = validate_config(BASE)
    assert point_identity(config) == point_identity(config.model_copy(update={"kernel": False}))
    ds = run_sweep(sweep({"kernel": [True, False]}, runs=2), tmp_path / "out").load()
    got = ds.step_kernel.sel(method_name="sgd")
    assert got.sel(kernel=True).values.tolist() == ["compiled" if kernels.available() else "xla"] * 2
    assert got.sel(kernel=False).values.tolist() == ["xla"] * 2
    np.testing.assert_array_equal(ds.loss.sel(kernel=True).values, ds.loss.sel(kernel=False).values)

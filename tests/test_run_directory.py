"""The run directory of `dlnlab run` (issue 16): never lose or silently replace results, resume
after kill -9, progress without a terminal.

- ``--out`` that is a file, or a folder that cannot be written: one line naming the path, before
  any simulation.
- A folder holding another config's results, an unfinished run of another config, or anything
  that is not a dlnlab run directory: refused unless ``overwrite=True``; a complete run of the
  same config is reused (one line says so), not recomputed.
- A failed write (ENOSPC, read-only) is one ``OSError`` line naming the file, and the previous
  complete run directory is left byte for byte as it was; a failure in the middle of the commit
  leaves a directory that does not look complete.
- ``summary.json`` is strict JSON (NaN -> null), e.g. when every run diverged.
- ``python -m dlnlab.cli run`` killed with SIGKILL after a checkpoint, after a finished method and
  while the final files are being written resumes each time (from the checkpoint, from the
  finished method) and ends with a dataset identical to an uninterrupted run's; a killed folder
  never looks complete. Progress lines reach a non-terminal stderr while the run is going.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dlnlab import cli
from dlnlab.experiments import runner
from dlnlab.io import (
    atomic_write_json,
    is_complete,
    load_results,
    load_summary,
    prepare_run_directory,
    write_run,
)

TINY = ["runs=2", 'methods=["gd"]', "training.horizon=0.2", "record.points=3"]


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def no_simulation(*args, **kwargs):
    raise AssertionError("a simulation was started")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete run directory of the TINY config (simulated once, in this process)."""
    out = tmp_path_factory.mktemp("finished") / "tiny"
    runner.run_to_directory(None, TINY, out, quiet=True)
    return out


def config_toml(run_dir: Path) -> str:
    return (run_dir / "config.toml").read_text(encoding="utf-8")


# ------------------------------------------------------------------ --out checked up front


def test_out_that_is_a_file_is_one_line_before_any_simulation(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_experiment", no_simulation)
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert cli.main(["run", "--out", str(target), *sum((["--set", s] for s in TINY), [])]) == 2
    err = capsys.readouterr().err
    assert err == f"error: out={str(target)!r}: is a file, not a folder\n"
    assert target.read_text() == "not a folder"


def test_out_that_cannot_be_created_or_written_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_experiment", no_simulation)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    below_a_file = blocker / "run"                      # mkdir fails even for root
    with pytest.raises(ValueError) as error:
        runner.run_to_directory(None, TINY, below_a_file)
    assert str(error.value) == f"out={str(below_a_file)!r}: cannot be written (Not a directory)"
    if os.geteuid() != 0:                               # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            with pytest.raises(ValueError, match=r"out='.*locked': cannot be written \(Permission"):
                runner.run_to_directory(None, TINY, locked)
        finally:
            locked.chmod(0o755)


# ------------------------------------------------------------------ someone else's results


@pytest.mark.parametrize("contents, reason", [
    ({"config.toml": "seed = 1\n", "results.nc": "old", "summary.json": "{}"},
     "holds the results of a different config (its config.toml differs); pass --overwrite "
     "(overwrite=True) to replace them, or choose another --out"),
    ({".work-0123456789ab/gd.nc": "partial"},
     "holds an unfinished run of a different config (.work-0123456789ab); pass --overwrite "
     "(overwrite=True) to discard it, or choose another --out"),
    ({"notes.txt": "mine"},
     "is not empty and is not a dlnlab run directory of this config (1 entries, e.g. "
     "'notes.txt'); pass --overwrite (overwrite=True) to write the run into it anyway, or "
     "choose another --out"),
])
def test_a_folder_of_someone_else_is_refused_without_overwrite(tmp_path, monkeypatch, contents,
                                                                reason):
    monkeypatch.setattr(runner, "run_experiment", no_simulation)
    out = tmp_path / "out"
    for name, text in contents.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = files_of(out)
    with pytest.raises(ValueError) as error:
        runner.run_to_directory(None, TINY, out)
    assert str(error.value) == f"out={str(out)!r}: {reason}"
    assert files_of(out) == before                                     # nothing touched


def test_overwrite_replaces_another_configs_results(finished, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(finished, out)
    (out / ".work-0123456789ab").mkdir()                 # an unfinished run of a third config
    overrides = [*TINY, "seed=1"]
    with pytest.raises(ValueError, match="different config"):
        runner.run_to_directory(None, overrides, out)
    _, data, summary = runner.run_to_directory(None, overrides, out, quiet=True, overwrite=True)
    assert is_complete(out) and "seed = 1" in config_toml(out)
    assert not is_complete(out, config_toml(finished))
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "figures", "results.nc",
                                                     "summary.json"]
    assert load_summary(out) == summary
    reloaded = load_results(out)
    np.testing.assert_array_equal(reloaded.amplitude.values, data.amplitude.values)
    assert not np.array_equal(reloaded.amplitude.values, load_results(finished).amplitude.values)


# ------------------------------------------------------------------ a complete run is reused


def test_rerun_of_a_complete_run_reuses_it(finished, tmp_path, capsys, monkeypatch):
    out = tmp_path / "again"
    shutil.copytree(finished, out)
    before = files_of(out)
    monkeypatch.setattr(runner, "run_experiment", no_simulation)
    run_dir, data, summary = runner.run_to_directory(None, TINY, out)
    captured = capsys.readouterr()
    assert captured.err == (f"run directory {out} is complete for this config; reusing it "
                            "(use --overwrite to recompute)\n")
    assert "Per method and mode" in captured.out and f"run directory: {out}" in captured.out
    assert run_dir == out and files_of(out) == before
    xr.testing.assert_identical(data, load_results(finished))
    assert summary == json.loads((finished / "summary.json").read_text())
    with pytest.raises(AssertionError, match="a simulation was started"):
        runner.run_to_directory(None, TINY, out, overwrite=True)          # recomputes
    assert prepare_run_directory(out, config_toml(finished)) == "complete"


# ------------------------------------------------------------------ write errors


def test_a_failed_write_leaves_the_previous_complete_run_intact(finished, tmp_path, monkeypatch):
    import matplotlib.figure

    out = tmp_path / "full-disk"
    shutil.copytree(finished, out)
    before = files_of(out)
    ds = load_results(finished)
    fig = matplotlib.figure.Figure()
    fig.add_subplot().plot([0, 1])

    def no_space(self, path=None, *args, **kwargs):
        Path(path).write_bytes(b"CDF half-written")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(xr.Dataset, "to_netcdf", no_space)
    with pytest.raises(OSError) as error:
        write_run(out, "seed = 7\n", ds, {"new": True}, {"loss": fig})
    assert error.value.errno == errno.ENOSPC
    assert str(error.value) == (f"could not write {out / '.staging' / 'results.nc'}: No space left "
                                "on device; the previous file, if any, is unchanged")
    assert files_of(out) == before and is_complete(out, config_toml(finished))
    monkeypatch.undo()

    def no_space_for_figures(self, fname, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_space_for_figures)
    with pytest.raises(OSError, match=r"could not write .*loss\.png: No space left on device"):
        write_run(out, "seed = 7\n", ds, {"new": True}, {"loss": fig})
    assert files_of(out) == before
    monkeypatch.undo()

    # Killed (here: failing) in the middle of the commit: the folder does not look complete,
    # and writing again completes it.
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out / "results.nc":                  # the commit, not the staging
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match=r"could not write .*results\.nc: .*incomplete \(no summary"):
        write_run(out, "seed = 7\n", ds, {"new": True}, {"loss": fig})
    assert not is_complete(out)
    with pytest.raises(ValueError, match="not a finished run"):
        load_results(out)
    monkeypatch.undo()
    write_run(out, "seed = 7\n", ds, {"new": True}, {"loss": fig})
    assert is_complete(out, "seed = 7\n") and load_summary(out) == {"new": True}
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["loss.pdf", "loss.png"]


def test_run_to_directory_write_error_is_one_oserror_line(tmp_path, monkeypatch):
    real_to_netcdf = xr.Dataset.to_netcdf

    def no_space_for_results(self, path=None, *args, **kwargs):
        if Path(path).name.startswith("results"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_to_netcdf(self, path, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", no_space_for_results)
    out = tmp_path / "run"
    with pytest.raises(OSError) as error:
        runner.run_to_directory(None, TINY, out, quiet=True)
    assert str(error.value) == (f"could not write {out / '.staging' / 'results.nc'}: No space left "
                                "on device; the previous file, if any, is unchanged")
    assert not is_complete(out) and not (out / ".staging").exists()
    work = [p for p in out.iterdir() if p.name.startswith(".work-")]
    assert [p.name for p in work[0].iterdir() if p.suffix == ".nc"] == ["gd.nc"]  # resumable


# ------------------------------------------------------------------ strict JSON


def reject_constant(name):
    raise ValueError(f"not JSON: {name}")


def test_json_writer_writes_null_for_nan_and_infinities(tmp_path):
    path = atomic_write_json({"a": float("nan"), "b": [np.float32(np.inf), -np.inf, 1.5],
                              "c": np.array([np.nan, 2.0]), "d": (np.int64(3), np.bool_(True))},
                             tmp_path / "x.json")
    assert json.loads(path.read_text(), parse_constant=reject_constant) == {
        "a": None, "b": [None, None, 1.5], "c": [None, 2.0], "d": [3, True]}


def test_summary_json_is_strict_when_every_run_diverged(tmp_path):
    out = tmp_path / "diverged"
    _, data, summary = runner.run_to_directory(
        None, [*TINY, "training.learning_rate=3.0", "training.horizon=30"], out, quiet=True)
    info = summary["methods"]["gd"]
    assert len(info["diverged"]) == info["runs"] == 2
    text = (out / "summary.json").read_text()
    assert json.loads(text, parse_constant=reject_constant) == summary
    assert "NaN" not in text and "Infinity" not in text


# ------------------------------------------------------------------ progress without a terminal


def test_line_progress_prints_start_periodic_and_final_lines():
    stream, now = io.StringIO(), [0.0]
    factory = runner.line_progress_factory(stream, "fig2:main", every_seconds=10.0,
                                           clock=lambda: now[0])
    update = factory("sgd", 10000)
    for t, done in [(2.0, 100), (5.0, 600), (12.0, 1500), (13.0, 1600), (22.5, 4100),
                    (30.0, 10000)]:
        now[0] = t
        update(done, 10000)
    assert stream.getvalue().splitlines() == [
        "fig2:main:sgd: starting, 10000 steps",
        "fig2:main:sgd: 100/10000 steps (1%), 2.0 s elapsed",                 # first update
        "fig2:main:sgd: 1500/10000 steps (15%), 12.0 s elapsed, ~1 min 01 s left",  # 8500 / 140
        "fig2:main:sgd: 4100/10000 steps (41%), 22.5 s elapsed, ~30.2 s left",  # 5900 / (4000 / 20.5)
        "fig2:main:sgd: 10000/10000 steps (100%), 30.0 s elapsed, done",
    ]


def test_progress_reporter_picks_lines_off_a_terminal_and_nothing_when_quiet():
    stream = io.StringIO()                               # not a terminal
    with runner.progress_reporter(False, stream=stream) as reporter:
        reporter("study")("gd", 5)(5, 5)
    assert stream.getvalue().splitlines()[0] == "study:gd: starting, 5 steps"
    assert stream.getvalue().splitlines()[1].startswith("study:gd: 5/5 steps (100%)")
    with runner.progress_reporter(True, stream=stream) as reporter:
        assert reporter is None


def test_bad_interval_in_the_environment_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DLNLAB_CHECKPOINT_SECONDS", "soon")
    monkeypatch.setattr(runner, "run_experiment", no_simulation)
    with pytest.raises(ValueError, match=r"^DLNLAB_CHECKPOINT_SECONDS='soon': must be a number "
                                         r"of seconds >= 0$"):
        runner.run_to_directory(None, TINY, tmp_path / "x")


# ------------------------------------------------------------------ kill -9 and resume

KILL_CONFIG = ["runs=2", 'methods=["gd","sgd"]', "training.horizon=1", "record.points=11",
               'record.spacing="linear"']
STEP_LINE = re.compile(r"^(gd|sgd): (\d+)/100 steps", re.M)
IGNORED_ATTRS = ("timings_seconds",)                     # wall-clock times, different per run


def start_run(out: Path, log: Path, env: dict, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dlnlab.cli", "run", *extra, "--out", str(out),
               *sum((["--set", s] for s in KILL_CONFIG), [])]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env,
                            cwd=out.parent)


def kill_when(process: subprocess.Popen, ready, log: Path, timeout: float = 240.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the kill point:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL


def finish(process: subprocess.Popen, log: Path) -> str:
    assert process.wait(300) == 0, log.read_text()
    return log.read_text()


def first_steps(log_text: str, method: str) -> list[int]:
    return [int(n) for m, n in STEP_LINE.findall(log_text) if m == method]


def comparable(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in IGNORED_ATTRS}
    return ds


def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_dataset(tmp_path):
    env = dict(os.environ, DLNLAB_CHECKPOINT_SECONDS="0", DLNLAB_PROGRESS_SECONDS="0",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    reference, out = tmp_path / "reference", tmp_path / "killed"
    log = tmp_path / "log.txt"
    quiet_log = finish(start_run(reference, log, env, "--quiet"), log)
    assert not STEP_LINE.search(quiet_log) and "starting" not in quiet_log   # --quiet: no progress
    toml = config_toml(reference)

    def killed_folder_is_not_complete():
        assert not is_complete(out) and not (out / "summary.json").exists()
        with pytest.raises(ValueError, match="not a finished run"):
            load_results(out)
        assert prepare_run_directory(out, toml) == "resume"

    checkpoints = lambda: list(out.glob(".work-*/checkpoints/gd.npz"))  # noqa: E731

    # 1. Killed during gd, once a checkpoint exists. Progress lines were already printed.
    kill_when(start_run(out, log, env), lambda: bool(checkpoints()), log)
    assert first_steps(log.read_text(), "gd")              # progress before the end, not a tty
    saved = checkpoints()[0]
    with np.load(saved) as data:
        position = int(data["position"])
    killed_folder_is_not_complete()

    # 2. Resumed from the checkpoint (its first progress line is past it); killed once gd has
    #    finished (its dataset saved in the work folder) while sgd runs.
    kill_when(start_run(out, log, env), lambda: bool(list(out.glob(".work-*/gd.nc"))), log)
    text = log.read_text()
    assert f"run directory {out}: resuming an unfinished run of this config" in text
    assert first_steps(text, "gd")[0] > position >= 10
    killed_folder_is_not_complete()

    # 3. gd is not recomputed; killed while the final files are being written.
    kill_when(start_run(out, log, env), lambda: (out / ".staging" / "results.nc").exists(), log)
    assert not first_steps(log.read_text(), "gd") and first_steps(log.read_text(), "sgd")
    killed_folder_is_not_complete()

    # 4. Finished from the saved methods alone: identical to the uninterrupted run.
    text = finish(start_run(out, log, env), log)
    assert not STEP_LINE.search(text)
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "figures", "results.nc",
                                                     "summary.json"]
    assert config_toml(out) == toml
    xr.testing.assert_identical(comparable(load_results(out)), comparable(load_results(reference)))
    strip = lambda s: {k: v for k, v in s.items() if k != "provenance"}  # noqa: E731
    assert strip(load_summary(out)) == strip(load_summary(reference))
    assert sorted(p.name for p in (out / "figures").iterdir()) == \
        sorted(p.name for p in (reference / "figures").iterdir())

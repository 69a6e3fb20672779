"""Sweeps on dask.distributed with real worker processes (docs/sweeps.md, "Executors").

Each test starts a real ``LocalCluster`` of 2 worker processes (one thread each). The reference
is the same sweep run in this process (``InProcessExecutor``): results are compared bit for bit
(every variable's bytes), and chunk files by their sha256 (the manifest's ``content_hash``).
Worker deaths are real ``SIGKILL`` s of a worker process while it runs a chunk.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr

from dlnlab.sweep import read_manifest, run_sweep, sweep_from_dict
from dlnlab.sweep.dask_executor import DaskExecutor, worker_environment, worker_xla_flags

# 2 learning rates x 2 label noises, 4 runs per point in chunks of 2 runs: 8 chunks, one group
# (one compiled program: each worker compiles once).
SWEEP = {
    "name": "dask",
    "runs": 4,
    "chunk_runs": 2,
    "base": {"name": "dask", "methods": ["sgd"],
             "task": {"d_in": 4, "d_out": 4, "hidden": [4], "spectrum": [1.0, 0.5]},
             "training": {"learning_rate": 0.02, "horizon": 20.0},
             "record": {"points": 11, "spacing": "linear"}},
    "grid": {"training.learning_rate": [0.01, 0.02], "task.label_noise": [0.1, 0.5]},
}
NUM_CHUNKS = 8


def _sweep(**changes):
    return sweep_from_dict({**SWEEP, **changes})


def assert_same_bits(a: xr.Dataset, b: xr.Dataset) -> None:
    """The same variables, dims, coordinates and bytes (NaN payloads included)."""
    a, b = a.load(), b.load()
    assert sorted(a.variables) == sorted(b.variables)
    for name in a.variables:
        x, y = a[name], b[name]
        assert x.dims == y.dims, name
        xv, yv = np.asarray(x.values), np.asarray(y.values)
        assert xv.dtype == yv.dtype and xv.shape == yv.shape, name
        if xv.dtype.kind in "OUS":
            assert xv.tolist() == yv.tolist(), name
        else:
            assert np.ascontiguousarray(xv).tobytes() == np.ascontiguousarray(yv).tobytes(), name


def _hashes(out) -> dict:
    return {c["id"]: c["content_hash"] for c in read_manifest(out)["chunks"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep run in this process: (dataset, chunk hashes)."""
    out = tmp_path_factory.mktemp("in_process")
    data = run_sweep(_sweep(), out)
    assert data.attrs["complete"] == "True"
    return data, _hashes(out)


def _kill_a_worker_mid_chunk(executor: DaskExecutor, sweep, out) -> tuple[threading.Thread, dict]:
    """Run ``sweep`` on ``executor`` in a thread; SIGKILL the first worker seen running a
    chunk, 0.2 s after it started it (its first chunk also imports JAX and compiles: seconds).
    Returns the thread (joined) and what happened."""
    pids = executor.client.run(os.getpid)
    happened: dict = {}

    def target():
        try:
            happened["data"] = run_sweep(sweep, out, executor=executor, summary=False)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            happened["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "killed" not in happened and thread.is_alive():
        busy = {w: keys for w, keys in executor.client.processing().items()
                if any(str(k).startswith("chunk-") for k in keys)}
        if busy:
            worker, keys = next(iter(busy.items()))
            time.sleep(0.2)
            # the scheduler may have handed the worker another chunk meanwhile: ask again
            keys = set(keys) | set(executor.client.processing(workers=[worker]).get(worker, ()))
            happened["running"] = sorted(str(k)[len("chunk-"):] for k in keys
                                         if str(k).startswith("chunk-"))
            happened["unfinished"] = [c for c in happened["running"]
                                      if not (out / "chunks" / f"{c}.nc").exists()]
            os.kill(pids[worker], signal.SIGKILL)
            happened["killed"] = (worker, pids[worker])
            break
        time.sleep(0.05)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the sweep did not finish after a worker was killed"
    if "error" in happened:
        raise happened["error"]
    assert "killed" in happened, "no worker was seen running a chunk"
    assert happened["unfinished"], "the killed worker had already finished its chunk"
    return thread, happened


def test_killed_worker_is_reported_failed_then_rerun_gives_identical_dataset(tmp_path, reference):
    """retries=0: the chunk whose worker was killed is listed failed (KilledWorker) and its runs
    are labelled ``failed`` in the combined dataset; ``only_failed`` reruns exactly those chunks
    and the result equals the uninterrupted in-process sweep bit for bit."""
    ref, ref_hashes = reference
    out = tmp_path / "out"
    with DaskExecutor(local_cluster=2, retries=0) as executor:
        _, happened = _kill_a_worker_mid_chunk(executor, _sweep(), out)
        data = happened["data"]
        manifest = read_manifest(out)
        failed = [c for c in manifest["chunks"] if c["status"] == "failed"]
        # Dask fails every task the dead worker held (the running one, maybe one queued)
        assert 1 <= len(failed) <= 2, [c["status"] for c in manifest["chunks"]]
        assert all("KilledWorker" in c["message"] for c in failed), failed
        worker = happened["killed"][0]            # Dask names the worker that died running it
        assert all(f"was {worker}." in c["message"] for c in failed), (worker, failed)
        assert set(happened["unfinished"]) & {c["id"] for c in failed}, (happened, failed)
        assert data.attrs["complete"] == "False" and data.attrs["chunks_failed"] == len(failed)
        labelled = int((data.status.values == "failed").sum())
        assert labelled == sum(c["runs"] for c in failed)        # every run of them, no others
        assert np.all(np.isnan(data.final_loss.values[data.status.values == "failed"]))
        complete_before = {c["id"]: c["content_hash"] for c in manifest["chunks"]
                           if c["status"] == "complete"}
        rerun = run_sweep(_sweep(), out, executor=executor, only_failed=True)
    assert_same_bits(rerun, ref)
    assert _hashes(out) == ref_hashes
    after = _hashes(out)
    assert all(after[c] == h for c, h in complete_before.items())   # complete chunks untouched
    assert len(list((out / "chunks").glob("*.nc"))) == NUM_CHUNKS


def test_killed_worker_is_retried_and_the_sweep_completes_identically(tmp_path, reference):
    """retries=1: Dask reschedules the killed worker's chunk (its nanny restarts the worker);
    the sweep completes in the same call with the uninterrupted result, and a rerun in process
    recomputes nothing."""
    ref, ref_hashes = reference
    out = tmp_path / "out"
    with DaskExecutor(local_cluster=2, retries=1) as executor:
        _, happened = _kill_a_worker_mid_chunk(executor, _sweep(), out)
    assert happened["data"].attrs["complete"] == "True"
    assert_same_bits(happened["data"], ref)
    assert _hashes(out) == ref_hashes
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.nc")}
    again = run_sweep(_sweep(), out)                                  # resume: nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.nc")} == mtimes
    assert_same_bits(again, ref)


def test_scheduler_address_uses_the_driver_numerics_and_leaves_the_cluster_running(
        tmp_path, reference):
    """A cluster started elsewhere (here: a LocalCluster without any dlnlab environment) is
    used by address; every task sets the driver's x64 and XLA flags, so the result equals the
    in-process sweep bit for bit; the executor closes its client, not the cluster."""
    import distributed

    ref, ref_hashes = reference
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        data = run_sweep(_sweep(), tmp_path / "out",
                         executor=DaskExecutor(scheduler=address, retries=0))
        assert_same_bits(data, ref)
        assert _hashes(tmp_path / "out") == ref_hashes
        with distributed.Client(address) as client:         # still running, workers kept
            assert len(client.scheduler_info()["workers"]) == 2
            flags = client.run(lambda: (os.environ.get("XLA_FLAGS"),
                                        __import__("jax").config.jax_enable_x64))
    assert all(value == (worker_xla_flags(), True) for value in flags.values()), flags


def test_the_comparison_sees_one_ulp(reference):
    """``assert_same_bits`` rejects a dataset that differs from the reference by one ulp in one
    number (a worker with other XLA flags differs by that much in float32)."""
    ref, _ = reference
    other = ref.load().copy(deep=True)
    values = other.amplitude.values
    index = tuple(np.argwhere(np.isfinite(values))[0])
    values[index] = np.nextafter(values[index], np.inf)
    with pytest.raises(AssertionError, match="amplitude"):
        assert_same_bits(other, ref)
    assert_same_bits(ref.copy(deep=True), ref)


def test_worker_environment_matches_the_driver():
    """A worker keeps the driver's flags (they change float32 rounding) with one device."""
    flags = "--xla_cpu_experimental_ynn_fusion_type= --xla_force_host_platform_device_count=8"
    assert worker_xla_flags(flags) == ("--xla_cpu_experimental_ynn_fusion_type= "
                                       "--xla_force_host_platform_device_count=1")
    assert worker_xla_flags("") == "--xla_force_host_platform_device_count=1"
    assert worker_environment(True, "")["JAX_ENABLE_X64"] == "1"
    assert worker_environment(False, "")["JAX_ENABLE_X64"] == "0"


@pytest.mark.parametrize("kwargs, message", [
    ({}, "local_cluster=None: give local_cluster"),
    ({"local_cluster": 0}, "local_cluster=0: must be an integer >= 1"),
    ({"local_cluster": True}, "local_cluster=True: must be an integer >= 1"),
    ({"local_cluster": 2, "scheduler": "tcp://h:1"}, "local_cluster=2: give either"),
    ({"scheduler": "not an address"}, "scheduler='not an address': must be a scheduler address"),
    ({"local_cluster": 1, "retries": -1}, "retries=-1: must be an integer >= 0"),
    ({"local_cluster": 1, "connect_timeout": 0}, "connect_timeout=0: must be > 0"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        DaskExecutor(**kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_unreachable_scheduler_is_one_line_error_after_the_timeout():
    import socket

    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executor = DaskExecutor(scheduler=f"tcp://127.0.0.1:{port}", connect_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        executor.__enter__()
    assert time.monotonic() - t0 < 30
    text = str(info.value)
    assert text.startswith(f"scheduler='tcp://127.0.0.1:{port}': no Dask scheduler answered "
                           "within 1 s") and "\n" not in text


def test_missing_dask_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)       # import distributed fails
    with pytest.raises(ValueError, match=r"^executor=dask: dask.distributed is not installed; "
                                         r"install dlnlab\[dask\]"):
        DaskExecutor(local_cluster=1).__enter__()


def test_cli_rejects_both_executors(tmp_path, capsys):
    from dlnlab.cli import main

    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[base]\nmethods = ["sgd"]\n[grid]\n'
                    '"training.learning_rate" = [0.01]\n')
    assert main(["sweep", str(path), "--local-cluster", "2", "--scheduler", "tcp://h:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("name, points, groups", [("sweep_quick", 6, 2),
                                                   ("sweep_learning_rate", 5, 1),
                                                   ("sweep_batch_size", 5, 5)])
def test_example_sweeps_are_valid(name, points, groups):
    """The example sweep files load (every point's config validated) with the documented shape:
    a learning-rate axis shares one compiled program, a batch-size axis is one group per value."""
    from pathlib import Path

    from dlnlab.sweep import load_sweep, plan_chunks

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "examples" / f"{name}.toml")
    found = sweep.points()
    assert len(found) == points
    _, signatures = plan_chunks(sweep, found)
    assert len(signatures) == groups


# ------------------------------------------------------------------ fix round (trial F6)
@pytest.mark.parametrize("address, rule", [
    ("notanaddress", "missing port number; must be a scheduler address such as tcp://host:8786"),
    ("tcp://host", "missing port number"),
    ("host:0", "port 0 is not in 1..65535"),
    ("tcp://h:1 x", "must be a scheduler address"),
    ("", "must be a scheduler address"),
    ("http://h:8786", "unknown protocol 'http'"),
])
def test_malformed_scheduler_addresses_are_rejected_without_dask(address, rule):
    """The rules of distributed.comm.addressing (a port is required), checked without dask."""
    from dlnlab.sweep.dask_executor import check_scheduler_address

    with pytest.raises(ValueError) as info:
        check_scheduler_address("--scheduler", address)
    assert str(info.value).startswith(f"--scheduler={address!r}: {rule}")


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "host:8786", "tls://h.example:1",
                                     "[::1]:8786", "inproc://10.0.0.1/123/1", "ucx://h:1"])
def test_valid_scheduler_addresses_agree_with_distributed(address):
    from distributed.comm.addressing import parse_address, parse_host_port

    from dlnlab.sweep.dask_executor import check_scheduler_address

    assert check_scheduler_address("scheduler", address) == address
    scheme, location = parse_address(address)
    if scheme in ("tcp", "tls"):
        parse_host_port(location)               # distributed accepts it too


def test_cli_rejects_a_malformed_scheduler_before_writing_anything(tmp_path, capsys):
    from dlnlab.cli import main

    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[base]\nmethods = ["sgd"]\n[grid]\n'
                    '"training.learning_rate" = [0.01]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--scheduler", "notanaddress", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: --scheduler='notanaddress': missing port number; must be a "
                            "scheduler address such as tcp://host:8786\n")
    assert not out.exists()


def test_cli_unreachable_scheduler_fails_before_the_folder_is_made(tmp_path, capsys, monkeypatch):
    import socket

    from dlnlab.cli import main
    from dlnlab.sweep import dask_executor

    monkeypatch.setattr(dask_executor.DaskExecutor.__init__, "__kwdefaults__",
                        {**dask_executor.DaskExecutor.__init__.__kwdefaults__,
                         "connect_timeout": 1})
    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[base]\nmethods = ["sgd"]\n[grid]\n'
                    '"training.learning_rate" = [0.01]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--scheduler", f"127.0.0.1:{port}", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: --scheduler='127.0.0.1:{port}': no Dask scheduler "
                                   "answered within 1 s")
    assert not out.exists()

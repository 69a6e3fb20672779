"""Fault injection: ``kill -9`` of the sweep process at 20 random moments, resumed each time.

The sweep process is the real command (``dlnlab.cli.main(["sweep", ...])`` in a fresh Python,
in-process executor), started by a small launcher that only adds a log: a line ``start ID`` /
``end ID`` around every :func:`~dlnlab.sweep.run_chunk` call (the executor's documented
``run_chunk`` argument, set as its default). The moments are drawn from a seeded generator: 3 of
the 20 while the process starts (imports, planning, verifying the chunks on disk, the first
compile), the other 17 a uniform delay after the round's first finished chunk, spanning about
three chunks (inside a simulation, a chunk write, a manifest write, or between them). After the
20 kills one more run completes the sweep.

Checked against an uninterrupted run of the same command: the combined dataset is bit-identical
and so is every chunk file (sha256); each kill lost at most the one chunk that was running (no
chunk that finished is ever started again, and every round has at most one chunk started but
not finished); no temporary file is left behind.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlnlab.sweep import open_sweep, read_manifest

KILLS = 20
EARLY_KILLS = 3
SEED = 2026

# 16 learning rates x 2 label noises (one compiled program), 4 runs per point in chunks of 2
# runs: 64 chunks of 2 x 5000 steps.
SWEEP_FILE = """
name = "faults"
runs = 4
chunk_runs = 2

[base]
name = "faults"
methods = ["sgd"]

[base.task]
d_in = 4
d_out = 4
hidden = [4]
spectrum = [1.0, 0.5]

[base.training]
learning_rate = 0.01
horizon = 50.0

[base.record]
points = 21
spacing = "linear"

[grid]
"training.learning_rate" = [0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.011, 0.012, 0.013,
                            0.014, 0.015, 0.016, 0.017, 0.018, 0.019]
"task.label_noise" = [0.1, 0.3]
"""
NUM_CHUNKS = 64

LAUNCHER = """
import os, sys, time

import dlnlab.sweep.executors as executors
from dlnlab.cli import main

log_path = os.environ["SWEEP_LOG"]
original = executors.InProcessExecutor.__init__.__defaults__[0]


def log(line):
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(line + "\\n")


def logged_run_chunk(spec, path):
    log(f"start {spec.chunk_id} {time.time():.6f}")
    outcome = original(spec, path)
    log(f"end {spec.chunk_id} {time.time():.6f}")
    return outcome


executors.InProcessExecutor.__init__.__defaults__ = (logged_run_chunk,)
log("process")
sys.exit(main(sys.argv[1:]))
"""


def _command(tmp_path: Path, out: Path) -> list[str]:
    return [sys.executable, str(tmp_path / "launcher.py"), "sweep", str(tmp_path / "faults.toml"),
            "--out", str(out), "--quiet"]


def _env(log: Path) -> dict:
    env = dict(os.environ, SWEEP_LOG=str(log))
    env.pop("XLA_FLAGS", None)              # the CLI sets its own, as for a user
    return env


def _lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def _rounds(log: Path, with_times: bool = False) -> list[list[tuple]]:
    """The log split per process: [(event, chunk_id[, time]), ...] per round."""
    rounds: list[list[tuple]] = []
    for line in _lines(log):
        if line == "process":
            rounds.append([])
        elif line.count(" ") == 2 and len(line.split(" ")[1]) == 64:   # not a line cut by a kill
            event, chunk, stamp = line.split(" ")
            rounds[-1].append((event, chunk, float(stamp)) if with_times else (event, chunk))
    return rounds


def _wait(predicate, proc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate() or proc.poll() is not None:
            return predicate()
        time.sleep(0.01)
    return False


def _bits(ds) -> dict:
    ds = ds.load()
    out = {}
    for name in ds.variables:
        values = np.asarray(ds[name].values)
        out[name] = (ds[name].dims, values.tolist() if values.dtype.kind in "OUS"
                     else np.ascontiguousarray(values).tobytes())
    return out


@pytest.mark.slow
def test_kill_nine_at_twenty_random_moments_then_resume_is_bit_identical(tmp_path):
    (tmp_path / "faults.toml").write_text(SWEEP_FILE)
    (tmp_path / "launcher.py").write_text(LAUNCHER)

    # the uninterrupted run
    reference_log = tmp_path / "reference.log"
    t0 = time.monotonic()
    done = subprocess.run(_command(tmp_path, tmp_path / "reference"), env=_env(reference_log),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    uninterrupted = time.monotonic() - t0
    (events,) = _rounds(reference_log, with_times=True)
    assert len(events) == 2 * NUM_CHUNKS
    assert [c for e, c, _ in events[0::2]] == [c for e, c, _ in events[1::2]]   # one at a time
    assert {e for e, _, _ in events[0::2]} == {"start"}
    # a chunk's time once compiled: the median over the reference's chunks after the first
    chunk_seconds = float(np.median([b[2] - a[2] for a, b in zip(events[2::2], events[3::2],
                                                                  strict=True)]))

    rng = random.Random(SEED)
    early = set(rng.sample(range(KILLS), EARLY_KILLS))
    log = tmp_path / "faulted.log"
    out = tmp_path / "faulted"
    kills = 0
    while kills < KILLS:
        before = len(_lines(log))
        stderr = tmp_path / f"stderr-{kills}.txt"
        with open(stderr, "w") as err:
            proc = subprocess.Popen(_command(tmp_path, out), env=_env(log),
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            if kills in early:                   # while it starts: imports, plan, verify, compile
                started = _wait(lambda n=before: len(_lines(log)) > n, proc, 120)
                time.sleep(rng.uniform(0.0, 3.0))
            else:                                # after its first chunk, within about 3 chunks
                started = _wait(lambda n=before: any(line.startswith("end ")
                                                     for line in _lines(log)[n:]), proc, 300)
                time.sleep(rng.uniform(0.0, 3.0 * chunk_seconds))
            if not started or proc.poll() is not None:
                proc.wait(timeout=60)
                pytest.fail(f"kill {kills}: the sweep process ended (exit {proc.returncode}) "
                            f"before it was killed; chunks finished per round "
                            f"{[sum(e == 'end' for e, _ in r) for r in _rounds(log)]}; "
                            f"stderr: {stderr.read_text()[-1500:]}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = subprocess.run(_command(tmp_path, out), env=_env(log), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    # bit-identical: the combined dataset and every chunk file
    faulted, reference = open_sweep(out), open_sweep(tmp_path / "reference")
    assert faulted.attrs["complete"] == "True"
    assert _bits(faulted) == _bits(reference)
    hashes = {c["id"]: c["content_hash"] for c in read_manifest(out)["chunks"]}
    assert hashes == {c["id"]: c["content_hash"]
                      for c in read_manifest(tmp_path / "reference")["chunks"]}
    assert not [p.name for p in out.rglob("*") if ".tmp" in p.name]

    # at most one chunk lost per kill; a finished chunk is never computed again
    rounds = _rounds(log)
    assert len(rounds) == KILLS + 1
    finished: set[str] = set()
    lost = 0
    for k, events in enumerate(rounds):
        started = [c for e, c in events if e == "start"]
        ended = [c for e, c in events if e == "end"]
        assert not set(started) & finished, f"round {k} recomputed a finished chunk"
        unfinished = set(started) - set(ended)
        assert len(unfinished) <= (1 if k < KILLS else 0), (k, unfinished)
        lost += len(unfinished)
        finished |= set(ended)
    starts = collections.Counter(c for events in rounds for e, c in events if e == "start")
    assert finished == set(hashes) and len(finished) == NUM_CHUNKS
    assert sum(starts.values()) == NUM_CHUNKS + lost and lost <= KILLS
    print(f"\n{KILLS} kills: {lost} chunks recomputed (each kill at most 1), "
          f"{sum(starts.values())} chunk computations for {NUM_CHUNKS} chunks; chunks finished "
          f"per round {[sum(e == 'end' for e, _ in r) for r in rounds]}; uninterrupted run "
          f"{uninterrupted:.1f} s, {chunk_seconds:.3f} s per compiled chunk")

"""Benchmark: sweeps as vectorised compiled calls, runs per call within 8 GB, combining chunks.

Run from the repository root::

    python benchmarks/bench_sweep.py            # full (about 15 minutes on 2 busy cores)
    python benchmarks/bench_sweep.py --quick    # smoke run (a few minutes)
    python benchmarks/bench_sweep.py --json     # machine-readable results

What is measured (every case in a fresh Python process, started one after the other in this
run, so compile times are paid as a user pays them and the ratios compare the same machine at the
same time; the load average is printed beside them):

(a) A 64-point learning-rate grid (0.001 ... 0.05, log-spaced), ``--runs-per-point`` runs per
    point (default 16), online SGD, batch size 1, the paper's task (d = 12, L = 4, float64),
    ``--steps`` steps (default 2000; one shared step count, the loss recorded at 11 steps):
    - ``vectorised``: ONE ``dlnlab.engine.simulate`` call over all 64 x R runs with a per-run
      learning-rate array (the sweep engine's value tier);
    - ``sequential``: 64 ``simulate`` calls of R runs, one per learning rate (dlnlab's engine
      already takes the rate as data, so this compiles once);
    - ``recompiling``: the same calls with JAX's caches cleared before each, i.e. a loop
      whose learning rate is baked into the compiled program (optax's Python-float learning
      rate): every point compiles. Timed on the first ``--recompile-points`` points (default 8)
      and scaled to 64 (each point costs one compile and one call).
    Two sizes: 1 run per point (a plain learning-rate scan) and ``--runs-per-point`` runs.
    Each is timed twice in its process: the first pass includes compilation (what a user
    experiences), the second is the steady state (``recompiling``: one pass, every call of it
    compiles, so its first pass is its steady state).
(b) Trajectories per compiled call within 8 GiB at d = 12, L = 4: the memory model
    ``dlnlab.experiments.config.resource_estimate`` (state x 4, a 64-step noise block of the
    weights' size, records) per run, float64 and float32 (it bounds every method, so it is
    conservative for SGD, whose noise is a minibatch); and a demonstration: one ``simulate``
    call of ``--capacity-runs`` runs (default 100,000) for ``--capacity-steps`` steps (default
    128: two 64-step noise blocks; the loss recorded at the first and last step), its peak
    resident memory (``ru_maxrss``) above the process's memory before the call, and the runs
    that measured cost per run fits in 8 GiB.
(c) Combining ``--chunks`` chunk files (default 10,000) into one dataset: a sweep of that many
    points (1 run each, 4 steps, one chunk per point) is run through ``dlnlab.sweep.run_sweep``
    (the real driver and manifest) with an executor that simulates the first chunk and writes
    every other chunk file as a byte copy of it through the real atomic writer (not timed);
    then, in a fresh process, ``dlnlab.sweep.open_sweep`` is timed (the goal), and reading one
    variable (``final_loss``) of the first 500 points (500 chunk files opened) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Process start: the flags the CLI sets (docs/architecture.md, "XLA flags"), unless given.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_cpu_experimental_ynn_fusion_type" not in _FLAGS:
    _FLAGS += " --xla_cpu_experimental_ynn_fusion_type="
if "xla_force_host_platform_device_count" not in _FLAGS:
    _FLAGS += f" --xla_force_host_platform_device_count={os.cpu_count() or 1}"
os.environ["XLA_FLAGS"] = _FLAGS.strip()

GRID_POINTS = 64
LEARNING_RATES = (1e-3, 5e-2)
DEPTH, WIDTH = 4, 12
MEMORY_BUDGET = 8 * 2 ** 30
RECORD_POINTS = 11

PAPER_TASK = {"d_in": WIDTH, "d_out": WIDTH, "hidden": [WIDTH] * (DEPTH - 1),
              "spectrum": [1.0, 2.0 / 3.0, 1.0 / 3.0], "label_noise": 0.0}


def _config(runs: int, steps: int, dtype: str = "float64", methods=("sgd",)):
    from dlnlab.experiments.config import validate_config

    return validate_config({
        "name": "bench_sweep", "seed": 0, "runs": runs, "methods": list(methods), "dtype": dtype,
        "task": PAPER_TASK, "init": {"kind": "gaussian", "gamma": 2.0},
        "training": {"learning_rate": 0.01, "batch_size": 1, "horizon": steps * 0.01},
        "record": {"points": RECORD_POINTS, "spacing": "linear", "variables": ["amplitude", "diffusion"]}})


def _problem(runs: int, steps: int, dtype: str = "float64", points: int = RECORD_POINTS):
    """The paper's SGD stepper, ``runs`` initial weights and the recording (loss at ``points``
    steps)."""
    import numpy as np

    from dlnlab.dynamics.registry import get_method
    from dlnlab.engine import Recording
    from dlnlab.experiments.run import build_task, initial_weights

    config = _config(1, steps, dtype)      # the config's own limits would refuse 1e5 runs (see (b))
    task = build_task(config)
    stepper = get_method("sgd").build(task, config.settings("sgd"))
    weights = initial_weights(config, runs, task)
    recording = Recording(np.unique(np.linspace(0, steps, points).round().astype(int)),
                          observables=["loss"])
    return stepper, weights, recording


def _rates():
    import numpy as np

    return np.geomspace(*LEARNING_RATES, GRID_POINTS)


def case_grid(mode: str, runs_per_point: int, steps: int, points: int = GRID_POINTS) -> dict:
    """Two passes over the 64-point grid: (first incl. compile, second steady) seconds;
    ``recompiling``: one pass over the first ``points`` rates, scaled to 64 (every call compiles,
    so each point costs the same)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dlnlab.engine import simulate

    rates = _rates()
    key = jax.random.key(0)
    if mode == "vectorised":
        stepper, weights, recording = _problem(GRID_POINTS * runs_per_point, steps)
        per_run = np.repeat(rates, runs_per_point)

        def one_pass():
            ds = simulate(stepper, weights, stepper.hyperparameters(
                learning_rate=per_run, batch_size=1), key, recording)
            return int((ds.status.values != "ok").sum())
    else:
        stepper, weights, recording = _problem(runs_per_point, steps)

        def one_pass():
            bad = 0
            for rate in rates[:points]:
                if mode == "recompiling":
                    jax.clear_caches()
                ds = simulate(stepper, weights, stepper.hyperparameters(
                    learning_rate=float(rate), batch_size=1), key, recording)
                bad += int((ds.status.values != "ok").sum())
            return bad
    jnp.zeros(1).block_until_ready()              # the backend is up before the clock starts
    times = []
    for _ in range(1 if mode == "recompiling" else 2):   # recompiling: every pass compiles
        t0 = time.perf_counter()
        diverged = one_pass()
        times.append(time.perf_counter() - t0)
    scale = GRID_POINTS / points if mode == "recompiling" else 1.0
    return {"first_s": times[0] * scale, "steady_s": times[-1] * scale, "diverged_runs": diverged,
            "run_steps": GRID_POINTS * runs_per_point * steps, "points_timed": points}


def _max_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: kilobytes


def case_capacity(runs: int, steps: int) -> dict:
    """One simulate call of ``runs`` SGD runs (float64): peak memory above the start."""
    import jax
    import numpy as np

    from dlnlab.engine import simulate
    from dlnlab.experiments.config import resource_estimate

    model = {}
    for dtype in ("float64", "float32"):       # the same for every method (noise of P per step)
        parts = resource_estimate(_config(1000, steps, dtype))
        model[dtype] = (sum(parts.values()) - parts["task"]) / 1000
    # loss at the first and last step only: segments between records are whole noise blocks
    stepper, weights, recording = _problem(runs, steps, points=2)
    jax.block_until_ready(weights)
    before = _max_rss_bytes()
    t0 = time.perf_counter()
    ds = simulate(stepper, weights, stepper.hyperparameters(learning_rate=0.01, batch_size=1),
                  jax.random.key(0), recording)
    seconds = time.perf_counter() - t0
    peak = _max_rss_bytes()
    return {"runs": runs, "steps": steps, "seconds": seconds, "rss_before": before,
            "rss_peak": peak, "ok_runs": int(np.sum(ds.status.values == "ok")),
            "model_bytes_per_run": model}


def _sweep_file(folder: Path, chunks: int) -> Path:
    """A sweep of ``chunks`` learning rates, 1 run each, 4 steps, one chunk per point."""
    import numpy as np

    rates = ", ".join(f"{x:.12g}" for x in np.geomspace(1e-3, 2e-2, chunks))
    text = f"""name = "bench_combine"
runs = 1
chunk_runs = 1

[base]
name = "bench_combine"
methods = ["sgd"]

[base.task]
d_in = 4
d_out = 4
hidden = [4]
spectrum = [1.0]

[base.training]
learning_rate = 0.01
horizon = 0.04

[base.record]
points = 2
spacing = "linear"
variables = ["amplitude", "diffusion"]

[grid]
"training.learning_rate" = [{rates}]
"""
    path = folder / "bench_combine.toml"
    path.write_text(text)
    return path


class TemplateExecutor:
    """An executor that simulates the first chunk for real (:func:`dlnlab.sweep.run_chunk`) and
    writes every other chunk file as a byte copy of it through the same atomic writer
    (``dlnlab.io.atomic``; opening and reading a chunk file does not depend on its values):
    10,000 real-format chunk files and the driver's real manifest in minutes instead of 10,000
    simulations. (A copy's ``chunk_id`` attribute names the first chunk: a resume would
    recompute them; ``open_sweep`` reads chunks by the manifest only.)"""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run(self, tasks, on_done):
        from dlnlab.io.atomic import atomic_write_bytes
        from dlnlab.sweep import ChunkOutcome, run_chunk

        template = outcome = None
        for spec, path in tasks:
            if template is None:
                outcome = run_chunk(spec, path)
                template = Path(path).read_bytes()
                on_done(spec, outcome)
                continue
            t0 = time.perf_counter()
            atomic_write_bytes(template, path)
            on_done(spec, ChunkOutcome(
                chunk_id=spec.chunk_id, path=str(path), status=outcome.status, message="",
                content_hash=outcome.content_hash, seconds=time.perf_counter() - t0,
                run_steps=outcome.run_steps, records=outcome.records, schema=outcome.schema))


def case_combine_write(folder: str, chunks: int) -> dict:
    from dlnlab.sweep import load_sweep, run_sweep

    t0 = time.perf_counter()
    out = Path(folder) / "out"
    sweep = load_sweep(_sweep_file(Path(folder), chunks))
    run_sweep(sweep, out, executor=TemplateExecutor(), summary=False)
    files = len(list((out / "chunks").glob("*.nc")))
    return {"write_s": time.perf_counter() - t0, "chunk_files": files,
            "manifest_bytes": (out / "manifest.json").stat().st_size}


def case_combine_open(folder: str, read_points: int) -> dict:
    import numpy as np

    from dlnlab.sweep import open_sweep

    t0 = time.perf_counter()
    ds = open_sweep(Path(folder) / "out")
    opened = time.perf_counter() - t0
    t1 = time.perf_counter()
    axis = next(iter(ds.final_loss.dims))
    read_points = min(read_points, ds.sizes[axis])
    final = np.asarray(ds.final_loss.isel({axis: slice(0, read_points)}).values)  # opens those files
    loaded = time.perf_counter() - t1
    return {"open_s": opened, "read_s": loaded, "read_points": read_points,
            "sizes": dict(ds.sizes), "finite": int(np.isfinite(final).sum())}


# ------------------------------------------------------------------------------ driver


def _child(case: str, **kwargs) -> dict:
    """Run ``case`` in a fresh interpreter (its own compile caches and memory), return its JSON."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_sweep as b; print('RESULT ' + json.dumps(b.case_{case}(**{kwargs!r})))")
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return {"error": f"{case} failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def _x64_note() -> str:
    return "float64 (jax_enable_x64, as the CLI), every process"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs-per-point", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--recompile-points", type=int, default=8)
    parser.add_argument("--capacity-runs", type=int, default=None)
    parser.add_argument("--capacity-steps", type=int, default=None)
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["grid", "capacity", "combine"])
    args = parser.parse_args(argv)
    quick = args.quick
    runs_per_point = args.runs_per_point or (4 if quick else 16)
    steps = args.steps or (500 if quick else 2000)
    capacity_runs = args.capacity_runs or (20_000 if quick else 100_000)
    capacity_steps = args.capacity_steps or (64 if quick else 128)
    chunks = args.chunks or (1000 if quick else 10_000)
    os.environ["JAX_ENABLE_X64"] = "1"

    load_start = _load()
    results: dict = {"xla_flags": os.environ["XLA_FLAGS"], "load_start": load_start,
                     "cpu_count": os.cpu_count(), "precision": _x64_note()}
    if "grid" not in args.skip:
        results["grid"] = {}
        for runs in sorted({1, runs_per_point}):
            row = results["grid"][runs] = {}
            for mode in ("vectorised", "sequential", "recompiling"):
                extra = {"points": args.recompile_points} if mode == "recompiling" else {}
                row[mode] = _child("grid", mode=mode, runs_per_point=runs, steps=steps, **extra)
                _progress(f"(a) {runs} runs per point, {mode}: {row[mode]}")
    if "capacity" not in args.skip:
        results["capacity"] = _child("capacity", runs=capacity_runs, steps=capacity_steps)
        _progress(f"(b) capacity: {results['capacity']}")
    if "combine" not in args.skip:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench_sweep_") as folder:
            results["combine_write"] = _child("combine_write", folder=folder, chunks=chunks)
            _progress(f"(c) written: {results['combine_write']}")
            if "error" not in results["combine_write"]:
                results["combine_open"] = _child("combine_open", folder=folder,
                                                 read_points=min(chunks, 500))
                _progress(f"(c) opened: {results['combine_open']}")
    results["load_end"] = _load()
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        _report(results, steps, chunks)
    return 0


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report(r: dict, steps: int, chunks: int) -> None:
    print(f"bench_sweep: {r['cpu_count']} cores, {r['precision']}; XLA_FLAGS={r['xla_flags']!r}")
    print(f"load average (1/5/15 min) at start {r['load_start']}, at end {r['load_end']}")
    for runs, row in r.get("grid", {}).items():
        print(f"\n(a) {GRID_POINTS}-point learning-rate grid, {runs} run(s) per point, {steps} steps, "
              f"online SGD, d = {WIDTH}, L = {DEPTH}")
        vec = row["vectorised"]
        for mode in ("vectorised", "sequential", "recompiling"):
            x = row[mode]
            if "error" in x or "error" in vec:
                print(f"  {mode:<12} {x.get('error') or vec.get('error')}")
                continue
            note = (f" (timed on {x['points_timed']} points, scaled to {GRID_POINTS})"
                    if mode == "recompiling" else "")
            print(f"  {mode:<12} first pass (with compile) {x['first_s']:7.2f} s "
                  f"({x['first_s'] / vec['first_s']:5.1f}x)   steady {x['steady_s']:7.2f} s "
                  f"({x['steady_s'] / vec['steady_s']:5.1f}x)   "
                  f"{x['run_steps'] / x['steady_s'] / 1e6:6.2f} M run-steps/s{note}")
        print("  (x: time relative to the one vectorised call; goal >= 10x)")
    if "capacity" in r:
        c = r["capacity"]
        print(f"\n(b) trajectories per compiled call within {MEMORY_BUDGET / 2 ** 30:g} GiB "
              f"(d = {WIDTH}, L = {DEPTH})")
        if "error" in c:
            print(f"  {c['error']}")
        else:
            for name, per_run in c["model_bytes_per_run"].items():
                print(f"  memory model (resource_estimate), {name}: {per_run / 1024:.2f} KiB per "
                      f"run -> {MEMORY_BUDGET / per_run:,.0f} runs")
            used = c["rss_peak"] - c["rss_before"]
            per_run = used / c["runs"]
            print(f"  measured: {c['runs']:,} runs x {c['steps']} steps (SGD, float64) in one "
                  f"call: {c['seconds']:.1f} s, peak memory +{used / 2 ** 20:,.0f} MiB "
                  f"({per_run / 1024:.2f} KiB per run; {c['ok_runs']:,} runs ok) -> "
                  f"{MEMORY_BUDGET / per_run:,.0f} runs in 8 GiB (goal >= 100,000)")
    if "combine_write" in r:
        print(f"\n(c) combining {chunks:,} chunk files into one dataset")
        w = r["combine_write"]
        if "error" in w:
            print(f"  {w['error']}")
        else:
            print(f"  written in {w['write_s']:.1f} s ({w['chunk_files']:,} files, manifest "
                  f"{w['manifest_bytes'] / 2 ** 20:.1f} MiB; not part of the goal)")
            o = r.get("combine_open", {})
            if "error" in o:
                print(f"  {o['error']}")
            elif o:
                per_file = o["read_s"] / o["read_points"]
                print(f"  open_sweep: {o['open_s']:.2f} s (goal <= 30 s); dims {o['sizes']}")
                print(f"  reading final_loss of the first {o['read_points']} points (one chunk file "
                      f"each): {o['read_s']:.2f} s ({1e3 * per_file:.1f} ms per file; all "
                      f"{chunks:,}: ~{per_file * chunks:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

"""``dlnlab bench``: dlnlab's compiled steppers against plain baselines, measured in one run.

Baselines are written plainly here, as research code usually is: a per-step NumPy loop with
hand-written gradients for SGD, and a dense-covariance sampler (form ``Sigma`` (P x P), ``eigh``,
sample) for the anisotropic SDE. Timing: warm-up call first (reported as compile time), then
the median of repetitions of at least ``min_seconds`` each. Run-steps/s = runs x steps per second.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

DEPTH, WIDTH, RUNS = 4, 12, 1024


def device_description() -> str:
    """The device benchmarks ran on, e.g. ``cpu: cpu (x86_64, 2 host cores, 2 device(s))``."""
    d = jax.devices()[0]
    text = f"{d.platform}: {getattr(d, 'device_kind', '')} ({platform.machine()}"
    if d.platform == "cpu":
        text += f", {os.cpu_count()} host cores"
    return text + f", {jax.device_count()} device(s))"


def load_average() -> str:
    """The 1/5/15-minute load averages (these machines are shared: read timings with them)."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on every platform
        return "n/a"


def _problem(dtype=jnp.float32):
    from .core import Task, init_gaussian

    task = Task.from_spectrum(jax.random.key(1), WIDTH, WIDTH, [1.0, 2 / 3, 1 / 3], dtype=dtype)
    weights = init_gaussian(jax.random.key(2), (WIDTH,) * (DEPTH + 1), 2.0, dtype=dtype)
    return task, weights


def median_rate(fn, work: float, min_seconds: float, repeats: int = 3) -> float:
    """Work per second of ``fn()``: the median over ``repeats`` repetitions, each calling ``fn``
    until at least ``min_seconds`` have passed (the timing rule of every ``dlnlab bench`` case)."""
    rates = []
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        rates.append(work * count / elapsed)
    return float(np.median(rates))


def _engine_rate(stepper, weights, hp, runs: int, steps: int, min_seconds: float):
    """Compile time and run-steps/s of the engine's compiled advance (no recording), with the
    layout ``simulate`` uses (balanced run groups spread over the host devices)."""
    from .engine import advance_from

    batched = tuple(jnp.broadcast_to(w[None], (runs,) + w.shape) + 0 for w in weights)
    advance = advance_from(stepper, batched, hp, jax.random.key(3))

    def call(n):
        jax.block_until_ready(advance(n))

    t0 = time.perf_counter()
    call(1)                                   # compiles (one step of run time is negligible)
    compile_s = time.perf_counter() - t0
    call(steps)
    return compile_s, median_rate(lambda: call(steps), runs * steps, min_seconds)


# ------------------------------------------------------------------------------ baselines
def _numpy_sgd_rate(weights, teacher, lr: float, min_seconds: float) -> float:
    """One run, B = 1, a Python loop over steps with hand-written backprop in NumPy."""
    ws = [np.array(w, dtype=np.float32) for w in weights]
    m = np.array(teacher, dtype=np.float32)
    rng = np.random.default_rng(0)

    def steps(n=200):
        for _ in range(n):
            x = rng.standard_normal(m.shape[1]).astype(np.float32)
            y = m @ x
            acts = [x]
            for w in ws[:-1]:
                acts.append(w @ acts[-1])
            back = (ws[-1] @ acts[-1] - y) * lr
            for index in range(len(ws) - 1, -1, -1):
                update = np.outer(back, acts[index])
                if index > 0:
                    back = ws[index].T @ back
                ws[index] -= update
    steps(20)
    return median_rate(steps, 200, min_seconds)


def _numpy_dense_sde_rate(weights, teacher, lr: float, h: float, min_seconds: float) -> float:
    """One run: per step form the dense noise covariance (P x P, docs/theory.md §3 block formula),
    factorise it with ``eigh`` (it is singular: Cholesky fails), sample, Euler-Maruyama step."""
    ws = [np.array(w, dtype=np.float64) for w in weights]
    m = np.array(teacher, dtype=np.float64)
    d_out, d_in = m.shape
    rng = np.random.default_rng(0)
    eye = np.eye(d_in)
    k = np.zeros((d_in * d_out, d_in * d_out))
    for i in range(d_out):
        for j in range(d_in):
            k[i * d_in + j, j * d_out + i] = 1.0           # K vec(X) = vec(X^T), X (d_out, d_in)

    def step():
        lefts, rights = [], []
        right = np.eye(d_in)
        for w in ws:
            rights.append(right)
            right = w @ right
        end = right
        left = np.eye(d_out)
        for w in reversed(ws):
            lefts.append(left)
            left = left @ w
        lefts.reverse()
        d = end - m
        cov_r = np.kron(eye, d) @ (np.eye(d_in * d_out) + k) @ np.kron(eye, d).T
        jac = np.concatenate([np.kron(b, a.T) for a, b in zip(lefts, rights, strict=True)], axis=0)
        sigma = jac @ cov_r @ jac.T
        evals, evecs = np.linalg.eigh(sigma)
        xi = evecs @ (np.sqrt(np.clip(evals, 0, None)) * rng.standard_normal(evals.size))
        offset = 0
        for index, (a, b) in enumerate(zip(lefts, rights, strict=True)):
            w = ws[index]
            size = w.size
            noise = xi[offset:offset + size].reshape(w.shape[1], w.shape[0]).T   # un-vec (columns)
            ws[index] = w - h * (a.T @ d @ b.T) + np.sqrt(h * lr) * noise
            offset += size
    step()
    return median_rate(step, 1, min_seconds)


# ---------------------------------------------------------------------------------- cases
def run_benchmarks(quick: bool = False, progress: bool = True, *, runs: int = RUNS,
                   min_seconds: float | None = None, recording_steps: int | None = None) -> list[dict]:
    """Every case; a list of dicts with ``name, config, run_steps_per_s,
    baseline_run_steps_per_s, ratio, device`` (plus ``compile_s`` and case extras).

    ``runs``, ``min_seconds`` and ``recording_steps`` shrink the benchmark (tests)."""
    from .dynamics import AnisotropicLangevin, Hyperparameters, OnlineSGD, StepSizeHyperparameters

    if min_seconds is None:
        min_seconds = 1.0 if quick else 2.0
    device = device_description()
    start_load = load_average()
    task, weights = _problem()
    lr, h = 0.01, 0.001
    results = []

    def say(text):
        if progress:
            print(f"  ... {text}", flush=True)

    config = f"L={DEPTH}, d={WIDTH}, B=1, float32, {runs} runs"
    say("online SGD (dlnlab)")
    compile_s, rate = _engine_rate(OnlineSGD(task), weights, Hyperparameters(lr), runs,
                                   2048 if quick else 8192, min_seconds)
    say("online SGD (NumPy per-step loop baseline)")
    base = _numpy_sgd_rate(weights, task.teacher, lr, min_seconds)
    results.append(dict(name="online_sgd", config=config, run_steps_per_s=rate,
                        baseline_run_steps_per_s=base, ratio=rate / base, device=device,
                        compile_s=compile_s, baseline="per-step NumPy loop, hand-written gradients"))

    say("anisotropic SDE (dlnlab)")
    compile_s, rate = _engine_rate(AnisotropicLangevin(task), weights,
                                   StepSizeHyperparameters(lr, 1.0, h), runs, 256 if quick else 1024,
                                   min_seconds)
    say("anisotropic SDE (dense-covariance eigh baseline)")
    base = _numpy_dense_sde_rate(weights, task.teacher, lr, h, min_seconds)
    results.append(dict(name="anisotropic_sde", config=config + f", h={h}",
                        run_steps_per_s=rate, baseline_run_steps_per_s=base, ratio=rate / base,
                        device=device, compile_s=compile_s,
                        baseline="dense Sigma (576x576) + eigh per step, NumPy"))

    results.append(_sde_floor_case(results[-1], min_seconds, device, say))
    results.extend(_versus_before_cases(task, weights, lr, h, runs, quick, min_seconds, device, say))

    if recording_steps is None:
        recording_steps = 10**5 if quick else 10**6
    results.append(_recording_case(task, weights, lr, runs, recording_steps, device, say))
    results.append(_observables_case(task, weights, lr, runs, 4096 if quick else 16384, device, say))
    load = f"{start_load} at the start, {load_average()} at the end"
    for r in results:
        r["load_average"] = load
    return results


def _sde_floor_case(sde: dict, min_seconds: float, device: str, say) -> dict:
    """The anisotropic SDE's floor at the bench's size, measured in this run
    (:func:`dlnlab.roofline.step_floor`: its ``d^2`` normals at the draw's measured cost plus its
    FLOP at the measured matrix peak) against dlnlab's SDE rate ``sde`` (the row above): how far
    any faster implementation of the same step could go on this machine."""
    from .roofline import measure_machine, measure_normal_seconds, normals_per_step, sde_flop, step_floor

    say("anisotropic SDE floor: matrix peak and the normals' cost, measured now")
    limits = measure_machine(min_seconds=min_seconds / 4)
    normal_seconds, source = measure_normal_seconds(min_seconds=min_seconds / 4)
    floor = step_floor("sde", WIDTH, DEPTH, 1, limits, normal_seconds)
    normals, flop = normals_per_step("sde", WIDTH, 1), sde_flop(WIDTH, DEPTH)
    formula = (f"1 / ({normals} normals x {normal_seconds * 1e9:.2f} ns ({source} draw, all cores) "
               f"+ {flop:,} FLOP / {limits.peak_gflop_per_second:.0f} GFLOP/s (matrix peak))")
    return dict(name="anisotropic_sde_floor", config=sde["config"], run_steps_per_s=floor,
                baseline_run_steps_per_s=sde["run_steps_per_s"], ratio=floor / sde["run_steps_per_s"],
                device=device, compile_s=float("nan"),
                baseline=f"dlnlab's anisotropic SDE (row above); the floor is {formula}", formula=formula,
                normal_seconds=normal_seconds, normal_source=source,
                peak_gflop_per_second=limits.peak_gflop_per_second)


#: The run group the engine used at d = 12 before issue 15 (128 runs per group on every device;
#: now balanced groups of at most 64): the "before" cases run the frozen steppers with it.
BEFORE_RUN_GROUP = 128


def _interleaved_rates(calls, work: float, min_seconds: float, repeats: int = 5) -> list[float]:
    """Median rate of each call, the calls timed in turn ``repeats`` times (each repetition at
    least ``min_seconds / repeats``): load that comes and goes hits every call alike, so their
    ratio is steadier than two separate medians on a shared machine."""
    rates = [[] for _ in calls]
    for _ in range(repeats):
        for index, call in enumerate(calls):
            rates[index].append(median_rate(call, work, min_seconds / repeats, repeats=1))
    return [float(np.median(r)) for r in rates]


def _versus_before_cases(task, weights, lr, h, runs, quick, min_seconds, device, say) -> list[dict]:
    """Today's steppers in today's default layout against the frozen copy of the steppers before
    issue 15 (:mod:`dlnlab.benchmark_baseline`) in the layout the engine gave them then (run
    groups of :data:`BEFORE_RUN_GROUP`), same problem and key, timed in turn in this run."""
    from .benchmark_baseline import baseline_steppers
    from .dynamics import (
        AnisotropicLangevin,
        Hyperparameters,
        OnlineSGD,
        StepSizeHyperparameters,
        kernels,
    )
    from .engine import Layout, advance_from, resolve_kernel

    before_sgd, before_sde = baseline_steppers()
    batched = tuple(jnp.broadcast_to(w[None], (runs,) + w.shape) + 0 for w in weights)
    before_layout = Layout(run_group=BEFORE_RUN_GROUP)
    sgd_steps = 2048 if quick else 4096
    kernel_note = ("the compiled SGD kernel" if resolve_kernel(OnlineSGD(task), weights, "broadcast", True)
                   == "kernel" else f"the XLA step ({kernels.unavailable_reason() or 'no kernel'})")
    out = []
    for name, now, before, hp, steps, baseline in (
            ("online_sgd_vs_before", (OnlineSGD(task), None), (before_sgd(task), before_layout),
             Hyperparameters(lr), sgd_steps,
             f"the same stepper before issue 15 (dlnlab.benchmark_baseline), in run groups of "
             f"{BEFORE_RUN_GROUP} as then; today: {kernel_note}"),
            ("online_sgd_kernel_vs_xla", (OnlineSGD(task), None),
             (OnlineSGD(task), Layout(kernel=False)), Hyperparameters(lr), sgd_steps,
             f"today's XLA step (Layout(kernel=False)); today: {kernel_note}"),
            ("anisotropic_sde_vs_before", (AnisotropicLangevin(task), None),
             (before_sde(task), before_layout), StepSizeHyperparameters(lr, 1.0, h),
             256 if quick else 512,
             "the same stepper before issue 15 (dlnlab.benchmark_baseline), "
             f"in run groups of {BEFORE_RUN_GROUP} as then")):
        say(f"{name}: today's default and the baseline, in turn")
        calls, compile_s = [], 0.0
        for stepper, layout in (now, before):
            advance = advance_from(stepper, batched, hp, jax.random.key(3), layout=layout)
            t0 = time.perf_counter()
            jax.block_until_ready(advance(1))
            compile_s = compile_s or time.perf_counter() - t0
            jax.block_until_ready(advance(steps))
            calls.append(lambda advance=advance, steps=steps: jax.block_until_ready(advance(steps)))
        rate, base = _interleaved_rates(calls, runs * steps, 2 * min_seconds)
        out.append(dict(name=name, config=f"L={DEPTH}, d={WIDTH}, B=1, float32, {runs} runs",
                        run_steps_per_s=rate, baseline_run_steps_per_s=base, ratio=rate / base,
                        device=device, compile_s=compile_s, baseline=baseline))
    return out


def _observables_case(task, weights, lr, runs, steps, device, say) -> dict:
    """Dense recording (every 16 steps) of ``loss`` only against every observable, same
    problem and run: observables that are not requested are not computed."""
    from .dynamics import Hyperparameters, OnlineSGD
    from .engine import Recording, record_steps, simulate

    batched = tuple(jnp.broadcast_to(w, (runs,) + w.shape) + 0 for w in weights)
    steps_list = record_steps(steps, every=16)
    walls = {}
    for label, names in (("all", None), ("loss", ["loss"])):
        say(f"recording {label}: {runs} runs x {steps} steps, {len(steps_list)} records")
        simulate(OnlineSGD(task), batched, Hyperparameters(lr), jax.random.key(4),
                 Recording(steps_list[:3], observables=names))          # compile
        t0 = time.perf_counter()
        simulate(OnlineSGD(task), batched, Hyperparameters(lr), jax.random.key(4),
                 Recording(steps_list, observables=names))
        walls[label] = time.perf_counter() - t0
    return dict(name="record_loss_only", config=f"online SGD, {runs} runs x {steps} steps, "
                f"{len(steps_list)} records: loss only vs every observable",
                run_steps_per_s=runs * steps / walls["loss"],
                baseline_run_steps_per_s=runs * steps / walls["all"],
                ratio=walls["all"] / walls["loss"], device=device, compile_s=float("nan"),
                baseline="same run recording every observable")


def _recording_case(task, weights, lr, runs, steps, device, say) -> dict:
    """Online SGD recorded at 200 log-spaced times with every observable: time and memory."""
    from .dynamics import Hyperparameters, OnlineSGD
    from .engine import record_steps, simulate

    say(f"recording: {runs} runs x {steps:.0e} steps, 200 log-spaced records, all observables")
    batched = tuple(jnp.broadcast_to(w, (runs,) + w.shape) + 0 for w in weights)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ds = simulate(OnlineSGD(task), batched, Hyperparameters(lr), jax.random.key(4),
                  record_steps(steps, log_points=200))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # KiB on Linux
    rate = runs * steps / wall
    return dict(name="recording", config=f"online SGD, {runs} runs x {steps} steps, "
                f"{ds.sizes['time']} log-spaced records, all observables",
                run_steps_per_s=rate, baseline_run_steps_per_s=None, ratio=None, device=device,
                compile_s=float(ds.attrs["compile_seconds"]), wall_s=wall,
                records_mb=ds.nbytes / 2**20, peak_rss_mb=peak / 1024,
                peak_rss_increase_mb=(peak - before) / 1024)


def print_results(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dlnlab bench  ({results[0]['device']}; load average "
                        f"{results[0].get('load_average', 'n/a')})")
    for header in ("case", "configuration", "run-steps/s", "baseline", "ratio", "compile s"):
        table.add_column(header, justify="right" if header != "configuration" else "left")
    for r in results:
        base = "-" if r["baseline_run_steps_per_s"] is None else f"{r['baseline_run_steps_per_s']:.3g}"
        ratio = "-" if r["ratio"] is None else (f"{r['ratio']:.0f}x" if r["ratio"] >= 10
                                                else f"{r['ratio']:.2f}x")
        table.add_row(r["name"], r["config"], f"{r['run_steps_per_s']:.3g}", base, ratio,
                      f"{r['compile_s']:.2f}")
    # Off a terminal rich assumes 80 columns and wraps every cell: give the table room.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    for r in results:
        if r["name"] == "anisotropic_sde_floor":
            console.print(f"anisotropic_sde_floor: {r['formula']}")
        if r["name"] == "recording":
            console.print(f"recording: {r['records_mb']:.0f} MB of records, peak resident memory "
                          f"{r['peak_rss_mb']:.0f} MB, wall {r['wall_s']:.1f} s")

"""Benchmark: a 1/100 sample of the public GD-vs-SGD harness's offline grid, every Golden-Path metric.

Run from the repository root::

    python benchmarks/bench_golden_path.py            # the sample (a few minutes on 2 cores)
    python benchmarks/bench_golden_path.py --quick    # fewer steps (about a minute)
    python benchmarks/bench_golden_path.py --json     # machine-readable results

The grid (the public harness: a 5-W-W-W-5 network, teacher diag(50/i), learning rate 1e-4,
offline SGD on a fixed data set): 3 init exponents gamma in {0.75, 1, 1.5} x 5 batch sizes
{1, 2, 5, 10, 50} x 2 label-noise levels x 3 widths W in {10, 50, 100} x 200 seeds = 18,000 SGD
runs (the issue says 72,000; the product of its factors is 18,000: the extrapolation is given for
both), plus GD once per (gamma, noise, width). Assumptions (the harness's step count and data are
not in the material we have): label noise sigma in {0, 0.5}; a data set of n = 500 samples; SGD
without replacement (epochs of shuffled batches: "different batch orderings"); the harness
trains ``HARNESS_STEPS`` = 20,000 steps (t = 2) and records 21 checkpoints; float32 simulation
(the harness is PyTorch float32), float64 metrics. Change them with the options.

What is measured, in one process (ratios are same-run comparisons on this shared machine):

(a) **The 1/100 sample**: every grid point with 2 seeds (90 points, 180 SGD runs, 18 GD runs),
    ``--steps`` steps (default 2,000), 21 linear records, then every metric of
    :func:`dlnlab.experiments.protocols.golden_path.analyse` (patterns and distances at every
    record, 24 loss levels, 4 escapes x 11 offsets, mode passage times, 2,000 bootstrap
    resamples). Reported: run-steps/s of the simulation (compilation excluded and reported
    apart), metric seconds, and metric cost as a share of step cost. Two-run batches are
    dominated by per-call overhead, so (b) measures the rates the full grid would see.
(b) **Batched**: at each (W, B) one simulation of 200 runs (the full grid's batch per point) for
    ``--rate-steps`` steps (default 2,000): run-steps/s; at B = 10 also every metric of those
    200 runs (metric seconds per run, per width; SVD compilation excluded).
(c) **Extrapolation** to the full grid at ``--harness-steps``: simulation at the rates of (b)
    (label noise at the sigma = 0 rate), metrics at the per-run costs of (b) (they scale with
    runs x checkpoints, not steps), GD at the rate of (a), plus the compilations of (a).
    Goal: <= 8 hours on 2 cores. The machine is shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type= "
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


from dlnlab.benchmarks import device_description, load_average  # noqa: E402
from dlnlab.experiments.protocols.golden_path import analyse, arm_configs  # noqa: E402
from dlnlab.experiments.protocols.golden_path.config import validate_golden_path  # noqa: E402
from dlnlab.experiments.run import build_task, initial_weights, record_times, run_method  # noqa: E402

GAMMAS = (0.75, 1.0, 1.5)
BATCH_SIZES = (1, 2, 5, 10, 50)
LABEL_NOISE = (0.0, 0.5)
WIDTHS = (10, 50, 100)
SEEDS = 200
SAMPLE_SEEDS = 2
HARNESS_STEPS = 20_000
SAMPLES = 500
LEARNING_RATE = 1e-4
RECORDS = 21
GOAL_HOURS = 8.0
METRIC_BATCH = 10
ISSUE_RUNS = 72_000


def point_config(gamma, sigma, width, batch, steps, seeds, dtype="float32"):
    return validate_golden_path({
        "name": f"harness-g{gamma}-s{sigma}-w{width}-b{batch}", "seeds": seeds, "dtype": dtype,
        "arms": ["offline_sgd_epochs"], "offline_samples": SAMPLES,
        "task": {"d_in": 5, "d_out": 5, "hidden": [width, width, width],
                 "spectrum": [50.0 / i for i in range(1, 6)], "label_noise": sigma},
        "init": {"gamma": gamma},
        "training": {"learning_rate": LEARNING_RATE, "batch_size": batch,
                     "horizon": steps * LEARNING_RATE},
        "record": {"points": RECORDS, "spacing": "linear"}})


def simulate_arm(experiment):
    """``(dataset with a method_name axis, compile seconds, run seconds, run-steps)``."""
    method = experiment.methods[0]
    task = build_task(experiment)
    weights = initial_weights(experiment, task=task)
    times = record_times(experiment, task)
    ds = run_method(experiment, method, task, weights, times)
    compile_s, run_s = float(ds.attrs["compile_seconds"]), float(ds.attrs["run_seconds"])
    steps = experiment.training.num_steps * experiment.runs
    return ds.expand_dims(method_name=[method]), compile_s, run_s, steps


def sample(steps: int, seeds: int, progress) -> dict:
    totals = {"compile_seconds": 0.0, "run_seconds": 0.0, "run_steps": 0, "metric_seconds": 0.0,
              "gd_run_seconds": 0.0, "gd_run_steps": 0, "points": 0, "sgd_runs": 0, "gd_runs": 0}
    for gamma, sigma, width in itertools.product(GAMMAS, LABEL_NOISE, WIDTHS):
        gd = None
        for batch in BATCH_SIZES:
            config = point_config(gamma, sigma, width, batch, steps, seeds)
            arms = arm_configs(config)
            if gd is None:
                gd, c, r, n = simulate_arm(arms["offline_gd"])
                totals["compile_seconds"] += c
                totals["gd_run_seconds"] += r
                totals["gd_run_steps"] += n
                totals["gd_runs"] += 1
            sgd, c, r, n = simulate_arm(arms["offline_sgd_epochs"])
            totals["compile_seconds"] += c
            totals["run_seconds"] += r
            totals["run_steps"] += n
            totals["sgd_runs"] += seeds
            t0 = time.perf_counter()
            analyse(config, {"offline_gd": gd, "offline_sgd_epochs": sgd})
            totals["metric_seconds"] += time.perf_counter() - t0
            totals["points"] += 1
            progress(f"gamma={gamma} sigma={sigma} W={width} B={batch}: sim {r:.2f} s "
                     f"(+{c:.1f} s compile), metrics {time.perf_counter() - t0:.2f} s")
    return totals


def batched(rate_steps: int, progress) -> tuple[dict, dict]:
    """Run-steps/s of 200-run simulations per (W, B) at gamma = 1, sigma = 0; at B = 10 also the
    metric seconds per run of those 200 runs (against GD at that point), per width."""
    rates, metric_per_run = {}, {}
    for width, batch in itertools.product(WIDTHS, BATCH_SIZES):
        config = point_config(1.0, 0.0, width, batch, rate_steps, SEEDS)
        arms = arm_configs(config)
        sgd, c, r, n = simulate_arm(arms["offline_sgd_epochs"])
        rates[(width, batch)] = n / r
        line = (f"batched W={width} B={batch}: {n / r:.3g} run-steps/s ({SEEDS} runs, "
                f"{rate_steps} steps, compile {c:.1f} s)")
        if batch == METRIC_BATCH:
            gd = simulate_arm(arms["offline_gd"])[0]
            analyse(config, {"offline_gd": gd, "offline_sgd_epochs": sgd})   # compile the SVDs
            t0 = time.perf_counter()
            analyse(config, {"offline_gd": gd, "offline_sgd_epochs": sgd})
            metric_per_run[width] = (time.perf_counter() - t0) / SEEDS
            line += f"; metrics {metric_per_run[width] * SEEDS:.1f} s for {SEEDS} runs"
        progress(line)
    return rates, metric_per_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 steps, 500 rate steps")
    parser.add_argument("--steps", type=int, default=2000, help="steps of the sample's runs")
    parser.add_argument("--rate-steps", type=int, default=2000, help="steps of the batched runs")
    parser.add_argument("--harness-steps", type=int, default=HARNESS_STEPS,
                        help="steps per run of the full grid (the extrapolation)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    steps, rate_steps = (500, 500) if args.quick else (args.steps, args.rate_steps)

    def progress(line):
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    load_before = load_average()
    t0 = time.perf_counter()
    s = sample(steps, SAMPLE_SEEDS, progress)
    rates, metric_per_run = batched(rate_steps, progress)
    wall = time.perf_counter() - t0
    sample_rate = s["run_steps"] / s["run_seconds"]
    # full grid: simulation at the batched per-(W, B) rates for every gamma and noise level;
    # metrics at the 200-run cost per run of each width (their cost scales with runs x
    # checkpoints, not with steps); GD at the sample's rate; the sample's compilations
    per_cell = len(GAMMAS) * len(LABEL_NOISE) * SEEDS
    sgd_runs = per_cell * len(WIDTHS) * len(BATCH_SIZES)
    sim_full = sum(per_cell * args.harness_steps / rates[(w, b)] for w, b in rates)
    gd_full = (s["gd_run_seconds"] / max(s["gd_run_steps"], 1)) * args.harness_steps * s["gd_runs"]
    metric_full = sum(metric_per_run[w] * per_cell * len(BATCH_SIZES) for w in WIDTHS)
    total_full = sim_full + gd_full + metric_full + s["compile_seconds"]
    result = {
        "device": device_description(), "load_average_before": load_before,
        "load_average_after": load_average(), "wall_seconds": wall,
        "sample": {**s, "steps": steps, "seeds": SAMPLE_SEEDS, "run_steps_per_second": sample_rate,
                   "metric_share_of_step_cost": s["metric_seconds"] / s["run_seconds"]},
        "batched_run_steps_per_second": {f"W={w},B={b}": r for (w, b), r in rates.items()},
        "metric_seconds_per_run_at_200_runs": {f"W={w}": x for w, x in metric_per_run.items()},
        "full_grid": {"sgd_runs": sgd_runs, "steps": args.harness_steps,
                      "simulation_hours": sim_full / 3600, "gd_hours": gd_full / 3600,
                      "metric_hours": metric_full / 3600,
                      "compile_hours": s["compile_seconds"] / 3600, "total_hours": total_full / 3600,
                      "metric_share_of_step_cost": metric_full / (sim_full + gd_full),
                      "goal_hours": GOAL_HOURS, "within_goal": total_full / 3600 <= GOAL_HOURS,
                      "total_hours_at_72000_runs": total_full / 3600 * ISSUE_RUNS / sgd_runs},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    f = result["full_grid"]
    print(f"device: {result['device']}; load average before {load_before}, after "
          f"{result['load_average_after']}; wall {wall:.0f} s")
    print(f"(a) 1/100 sample: {s['points']} points x {SAMPLE_SEEDS} seeds, {steps} steps: "
          f"{sample_rate:.3g} run-steps/s (2-run batches), {s['run_seconds']:.1f} s simulation, "
          f"{s['compile_seconds']:.1f} s compile, {s['metric_seconds']:.1f} s metrics "
          f"(= {result['sample']['metric_share_of_step_cost']:.2f} x the step cost)")
    print("(b) batched (200 runs) run-steps/s: " + ", ".join(
        f"W={w} B={b}: {r:.3g}" for (w, b), r in rates.items()))
    print("    metric seconds per run (200 runs, B = 10): " + ", ".join(
        f"W={w}: {x:.3g}" for w, x in metric_per_run.items()))
    print(f"(c) full grid ({f['sgd_runs']} SGD runs x {args.harness_steps} steps + GD): "
          f"simulation {f['simulation_hours']:.2f} h + GD {f['gd_hours']:.3f} h + metrics "
          f"{f['metric_hours']:.2f} h + compile {f['compile_hours']:.3f} h = "
          f"{f['total_hours']:.2f} h (goal <= {GOAL_HOURS:g} h: "
          f"{'met' if f['within_goal'] else 'missed'}); metrics = "
          f"{f['metric_share_of_step_cost']:.3f} x the step cost. (3 x 5 x 2 x 3 x 200 = "
          f"{f['sgd_runs']} runs; at the issue's 72,000 runs: "
          f"{f['total_hours_at_72000_runs']:.2f} h)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the structured gradient-noise sampler against the dense-covariance route.

Run from the repository root::

    python benchmarks/bench_noise.py            # full: 5 repetitions of >= 2 s per timing
    python benchmarks/bench_noise.py --quick    # smoke run: 3 repetitions of >= 1 s
    python benchmarks/bench_noise.py --json     # machine-readable list of results

What is measured (one process, so the ratios are same-run comparisons on this noisy machine):

(a) ``dlnlab.sample_noise`` and ``dlnlab.draw_noise_normals`` + ``dlnlab.noise_from_normals`` at
    L = 4, d = 256 (widths (256,) * 5, P = 262,144 parameters), float32, online whitened task
    with a rank-3 teacher and label noise 0.5, weights ``init_gaussian(key, widths, 1.0)``.
    The dense covariance there would need P^2 * 4 bytes (float32) / * 8 (float64): it is never
    formed, only its size is printed.
(b) at L = 4, d = 12 (P = 576), where the dense route is feasible: one sample by
    ``dlnlab.sample_noise_dense`` (dense ``Sigma`` from ``noise_covariance``, ``eigh``, times
    normals) against the structured ``sample_noise``, both float32; and the same pair in float64.
    Before the float32 dense baseline is timed, its factorisation is checked (finite, and
    ``||root root^T - Sigma||_F / ||Sigma||_F`` at float32 rounding size); if it fails, the
    baseline is taken in float64 instead and the output says so.

Method (docs: /work/shared/PERF-NOTES.md): every timed function is ``jax.jit``-compiled with
``.lower(...).compile()`` (compile time reported separately), warmed up, then called in a loop,
blocking on each result, for repetitions lasting at least the minimum time; the reported time
per sample is the median over repetitions. One sample per call (``num_samples=1``), so the
figures include JAX's per-call dispatch, which dominates at d = 12. The same key is reused on
every call: XLA does not memoise results, and splitting a fresh key per call would add an
eager dispatch of its own to every measurement.

float64 is enabled here, at process start (``jax_enable_x64``); arrays are made float32
explicitly where float32 is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dlnlab  # noqa: E402
from dlnlab.benchmarks import device_description, load_average  # noqa: E402

DEPTH = 4
LARGE_WIDTH = 256
SMALL_WIDTH = 12
LABEL_NOISE = 0.5
SPECTRUM_RANK = 3
GAMMA = 1.0
# Relative Frobenius error of root root^T against Sigma accepted for the float32 dense baseline.
# A backward-stable eigh gives ~ P * u * ||Sigma|| at worst (P = 576, u = 6e-8: ~3.5e-5); an
# error beyond 1e-4 means the float32 factorisation is not a faithful baseline.
DENSE_F32_TOLERANCE = 1e-4


def make_problem(width: int, dtype, seed: int = 0):
    """Online whitened task (rank-3 spectrum, label noise 0.5) and Gaussian weights, in ``dtype``."""
    key = jax.random.key(seed)
    k_task, k_weights, k_noise = jax.random.split(key, 3)
    widths = (width,) * (DEPTH + 1)
    task = dlnlab.Task.from_spectrum(k_task, width, width,
                                     dlnlab.arithmetic_spectrum(SPECTRUM_RANK),
                                     label_noise=LABEL_NOISE, dtype=dtype)
    weights = dlnlab.init_gaussian(k_weights, widths, GAMMA, dtype=dtype)
    assert task.dtype == jnp.dtype(dtype) and all(w.dtype == jnp.dtype(dtype) for w in weights)
    return task, weights, k_noise, widths


# ----------------------------------------------------------------------------- samplers
def _structured(key, weights, task):
    """One exact noise sample by the structured sampler (``sample_noise`` with 1 sample)."""
    return tuple(x[0] for x in dlnlab.sample_noise(key, weights, task, 1))


def _from_normals(key, weights, task):
    """One exact noise sample: draw the normals, then map them (``noise_from_normals``)."""
    normals = dlnlab.draw_noise_normals(key, task)
    return dlnlab.noise_from_normals(weights, task, normals)


def _dense(key, weights, task):
    """One sample by the dense route: ``Sigma`` (``noise_covariance``), ``eigh``, normals."""
    return tuple(x[0] for x in dlnlab.sample_noise_dense(key, weights, task, 1))


def compile_sampler(fn, key, weights, task):
    """``jax.jit(fn)`` lowered and compiled for these arguments; returns (callable, seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(key, weights, task).compile()
    seconds = time.perf_counter() - start

    def call(k, w):
        return compiled(k, w, task)

    return call, seconds


def time_per_call(call, key, weights, min_seconds: float, repeats: int) -> float:
    """Median over ``repeats`` repetitions (each >= ``min_seconds``) of seconds per call."""
    out = jax.block_until_ready(call(key, weights))            # warm-up: first call + check
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in out):
        raise RuntimeError("sampler returned non-finite values")
    warm_end = time.perf_counter() + min(0.5, min_seconds)
    while time.perf_counter() < warm_end:
        jax.block_until_ready(call(key, weights))
    per_call = []
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        while True:
            jax.block_until_ready(call(key, weights))
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        per_call.append(elapsed / count)
    return statistics.median(per_call)


def dense_factorisation_error(weights, task) -> float:
    """``||root root^T - Sigma||_F / ||Sigma||_F`` with the root ``sample_noise_dense`` uses
    (eigh, negative rounding eigenvalues clipped), computed in the task's dtype; inf if any
    value is non-finite."""
    sigma = dlnlab.noise_covariance(weights, task)
    evals, evecs = jnp.linalg.eigh(sigma)
    root = evecs * jnp.sqrt(jnp.clip(evals, 0.0, None))[None, :]
    err = np.asarray(jnp.linalg.norm(root @ root.T - sigma) / jnp.linalg.norm(sigma),
                     dtype=np.float64)
    return float(err) if np.isfinite(err) else float("inf")


# ----------------------------------------------------------------------------- benchmark
def row(name, config, seconds, compile_s, baseline_seconds=None):
    baseline = None if baseline_seconds is None else 1.0 / baseline_seconds
    return {
        "name": name,
        "config": config,
        "samples_per_s": 1.0 / seconds,
        "baseline_samples_per_s": baseline,
        "ratio": None if baseline is None else (1.0 / seconds) / baseline,
        "seconds_per_sample": seconds,
        "compile_s": compile_s,
        "device": device_description(),
    }


def describe(width: int, dtype) -> str:
    p = DEPTH * width * width
    return (f"L={DEPTH} d={width} P={p:,} {jnp.dtype(dtype).name} online whitened "
            f"rank-{SPECTRUM_RANK} label_noise={LABEL_NOISE} B=1")


def run(quick: bool, log) -> list[dict]:
    min_seconds, repeats = (1.0, 3) if quick else (2.0, 5)
    log(f"timing: median of {repeats} repetitions of >= {min_seconds:g} s per function; "
        f"device {device_description()}; jax {jax.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average at start {load_average()}")
    results = []

    # (a) L = 4, d = 256, float32: structured sampler only (the dense Sigma cannot be formed).
    task, weights, key, widths = make_problem(LARGE_WIDTH, jnp.float32)
    p = dlnlab.num_parameters(weights)
    assert p == DEPTH * LARGE_WIDTH**2 == 262_144, p
    bytes32, bytes64 = p * p * 4, p * p * 8
    memory = f"dense Sigma would need {bytes32 / 1e12:.3f} TB (f32) / {bytes64 / 1e12:.3f} TB (f64)"
    log(f"(a) widths {widths}, P = {p:,}: {memory} "
        f"({bytes32:,} / {bytes64:,} bytes)")
    for name, fn in (("sample_noise", _structured),
                     ("draw_noise_normals+noise_from_normals", _from_normals)):
        call, compile_s = compile_sampler(fn, key, weights, task)
        sample = call(key, weights)
        assert all(x.dtype == jnp.float32 for x in sample), [x.dtype for x in sample]
        seconds = time_per_call(call, key, weights, min_seconds, repeats)
        results.append(row(name, f"{describe(LARGE_WIDTH, jnp.float32)}; {memory}", seconds,
                           compile_s))
        log(f"    {name}: {seconds * 1e3:.3f} ms/sample (compile {compile_s:.2f} s)")

    # (b) L = 4, d = 12: dense eigh route against the structured sampler, same run.
    for dtype in (jnp.float32, jnp.float64):
        task, weights, key, _ = make_problem(SMALL_WIDTH, dtype)
        dense_task, dense_weights = task, weights
        note = ""
        err = dense_factorisation_error(weights, task)
        if dtype == jnp.float32 and not err <= DENSE_F32_TOLERANCE:
            # float32 eigh is not a faithful factorisation: take the baseline in float64.
            dense_task, dense_weights, _, _ = make_problem(SMALL_WIDTH, jnp.float64)
            note = (f"; dense baseline in FLOAT64 (float32 eigh failed: relative "
                    f"factorisation error {err:.1e} > {DENSE_F32_TOLERANCE:g})")
            err = dense_factorisation_error(dense_weights, dense_task)
        dense_dtype = dense_task.dtype.name
        dense_config = (f"{describe(SMALL_WIDTH, dense_dtype)}; eigh of the {DEPTH * SMALL_WIDTH**2}"
                        f"x{DEPTH * SMALL_WIDTH**2} Sigma, ||root root^T - Sigma||/||Sigma|| = "
                        f"{err:.1e}")
        dense_call, dense_compile = compile_sampler(_dense, key, dense_weights, dense_task)
        dense_seconds = time_per_call(dense_call, key, dense_weights, min_seconds, repeats)
        results.append(row("sample_noise_dense", dense_config, dense_seconds, dense_compile))
        log(f"(b) {dense_dtype} dense: {dense_seconds * 1e3:.3f} ms/sample "
            f"(compile {dense_compile:.2f} s), factorisation error {err:.1e}{note}")

        call, compile_s = compile_sampler(_structured, key, weights, task)
        seconds = time_per_call(call, key, weights, min_seconds, repeats)
        config = f"{describe(SMALL_WIDTH, dtype)}; baseline = sample_noise_dense{note}"
        results.append(row("sample_noise vs dense", config, seconds, compile_s, dense_seconds))
        log(f"    {jnp.dtype(dtype).name} structured: {seconds * 1e6:.1f} us/sample "
            f"(compile {compile_s:.2f} s); ratio {dense_seconds / seconds:,.0f}x")
    log(f"load average at end {load_average()} (other processes make timings noisy)")
    return results


def print_table(results: list[dict]) -> None:
    headers = ("name", "configuration", "samples/s", "s/sample", "baseline samples/s", "ratio",
               "compile s")
    rows = []
    for r in results:
        rows.append((
            r["name"], r["config"], f"{r['samples_per_s']:,.1f}", f"{r['seconds_per_sample']:.3e}",
            "-" if r["baseline_samples_per_s"] is None else f"{r['baseline_samples_per_s']:,.1f}",
            "-" if r["ratio"] is None else f"{r['ratio']:,.0f}x", f"{r['compile_s']:.2f}"))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for x in rows:
            print("  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)))
        print(f"device: {device_description()}")
        return
    table = Table(title=f"gradient-noise sampling, {device_description()}")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 else "right", overflow="fold")
    for x in rows:
        table.add_row(*x)
    Console(width=160).print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter repetitions (3 of >= 1 s instead of 5 of >= 2 s)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")
    args = parser.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    results = run(args.quick, log)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

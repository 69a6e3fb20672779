"""Benchmark: certification of one saddle of a depth-4, width-100 network (P = 40,000 parameters).

Run from the repository root::

    python benchmarks/bench_certify.py            # full: 3 timed repetitions
    python benchmarks/bench_certify.py --quick    # smoke run: 1 timed repetition
    python benchmarks/bench_certify.py --json     # machine-readable results

What is measured. An online whitened task with d_in = d_out = 100 and a rank-5 teacher
(s = 5, 4, 3, 2, 1), widths (100,) * 5 (P = 4 * 100^2 = 40,000), float64. The point is an exact
saddle of the normal form: rank r = 3, subset S = {0, 1, 2}, Gaussian residuals with Z_1 = Z_3 = 0
(``dlnlab.saddles.exact_residuals``). ``dlnlab.saddles.certify`` with the Lanczos method (the
dense Hessian would need P^2 * 8 bytes = 12.8 GB): 40 blocks of 8 Hessian-vector products, full
re-orthogonalisation, then the gradient norm, the 6 smallest Ritz values, the index / nullity
estimates and the class. The function is ``jax.jit``-compiled with ``.lower(...).compile()``
(compile time reported separately), called once to warm up, then timed per call (blocking on the
result); the median over repetitions is reported. Target: <= 30 s per certification on the
2-core development machine.

Optionally (``--dense-check``) the same certification at width 20 (P = 1,600) is compared with the
dense ``eigh`` certificate, to show that the Lanczos numbers are right at a size where both run.
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
from dlnlab import saddles  # noqa: E402
from dlnlab.benchmarks import device_description, load_average  # noqa: E402

DEPTH = 4
WIDTH = 100
SPECTRUM = (5.0, 4.0, 3.0, 2.0, 1.0)
SUBSET = (0, 1, 2)
ZERO_LAYERS = (1, 3)
NUM_BLOCKS = 40
BLOCK_SIZE = 8


def make_point(width: int):
    """(task, weights) of the exact saddle described in the module docstring."""
    key = jax.random.key(0)
    widths = (width,) * (DEPTH + 1)
    task = dlnlab.Task.from_spectrum(jax.random.fold_in(key, 0), width, width, SPECTRUM)
    form = saddles.normal_form(task, SUBSET)
    z = saddles.exact_residuals(jax.random.fold_in(key, 1), widths, len(SUBSET), ZERO_LAYERS)
    return task, saddles.assemble_weights(form, z)


def compile_certify(task, weights, method: str):
    def fn(key, w):
        return saddles.certify(key, w, task, method=method, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)

    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(key if method == "lanczos" else None, weights).compile()
    return compiled, time.perf_counter() - start


def summarise(cert) -> dict:
    return {
        "class": saddles.CLASS_NAMES[int(cert.classification)],
        "gradient_norm": float(cert.gradient_norm),
        "gradient_tolerance": float(cert.gradient_tolerance),
        "smallest_eigenvalues": [float(x) for x in np.asarray(cert.smallest_eigenvalues)],
        "ritz_residuals": [float(x) for x in np.asarray(cert.eigenvalue_residuals)],
        "index": float(cert.index),
        "index_standard_error": float(cert.index_standard_error),
        "index_lower_bound": float(cert.index_lower_bound),
        "nullity": float(cert.nullity),
        "nullity_standard_error": float(cert.nullity_standard_error),
    }


def run(quick: bool, dense_check: bool, log) -> list[dict]:
    repeats = 1 if quick else 3
    log(f"device {device_description()}; jax {jax.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average at start {load_average()}")
    results = []
    task, weights = make_point(WIDTH)
    p = dlnlab.num_parameters(weights)
    assert p == DEPTH * WIDTH ** 2 == 40_000, p
    compiled, compile_s = compile_certify(task, weights, "lanczos")
    key = jax.random.key(1)
    cert = jax.block_until_ready(compiled(key, weights))                  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        cert = jax.block_until_ready(compiled(jax.random.fold_in(key, i), weights))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    row = {"name": "certify (lanczos)", "parameters": p, "width": WIDTH, "depth": DEPTH,
           "num_blocks": NUM_BLOCKS, "block_size": BLOCK_SIZE, "seconds": seconds, "all_seconds": times,
           "compile_s": compile_s, "target_s": 30.0, "within_target": seconds <= 30.0,
           "device": device_description(), **summarise(cert)}
    results.append(row)
    log(f"P = {p:,}: certify {seconds:.2f} s per point (median of {repeats}; compile {compile_s:.2f} s); "
        f"class {row['class']}, lambda_min <= {row['smallest_eigenvalues'][0]:.4f} "
        f"(residual {row['ritz_residuals'][0]:.1e}), index ~ {row['index']:.0f} +- "
        f"{row['index_standard_error']:.0f} (>= {row['index_lower_bound']:.0f}), nullity ~ "
        f"{row['nullity']:.0f} +- {row['nullity_standard_error']:.0f}")
    if dense_check:
        small_task, small_weights = make_point(20)
        lanczos, _ = compile_certify(small_task, small_weights, "lanczos")
        dense, _ = compile_certify(small_task, small_weights, "dense")
        a = summarise(lanczos(key, small_weights))
        b = summarise(dense(None, small_weights))
        results.append({"name": "width-20 check", "lanczos": a, "dense": b})
        log(f"width 20 (P = 1,600): lanczos lambda_min {a['smallest_eigenvalues'][0]:.6f} vs dense "
            f"{b['smallest_eigenvalues'][0]:.6f}; index {a['index']:.1f} +- {a['index_standard_error']:.1f} "
            f"vs {b['index']:.0f}; nullity {a['nullity']:.1f} +- {a['nullity_standard_error']:.1f} vs "
            f"{b['nullity']:.0f}")
    log(f"load average at end {load_average()} (other processes make timings noisy)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed repetition instead of three")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")
    parser.add_argument("--dense-check", action="store_true",
                        help="also compare Lanczos with dense eigh at width 20 (P = 1,600)")
    args = parser.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    results = run(args.quick, args.dense_check, log)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if all(r.get("within_target", True) for r in results) else 1


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    sys.exit(main())

"""Benchmark: what XLA's batched matrix product reaches at the shapes of a batched step.

Run from the repository root::

    python benchmarks/bench_batched_dot.py            # 3 repetitions of >= 0.3 s per shape
    python benchmarks/bench_batched_dot.py --json     # machine-readable results

What is measured. With ``Layout(product="batched")`` (the default from width 32) a step's matrix
products are batched ``dot``s of ``runs x d x d`` operands, one batch per run group. This times
``einsum("nij,njk->nik")`` in float32 for the batch sizes and widths of the roofline grid
(``dlnlab bench --scaling``) against one plain 2048 x 2048 product, the matrix peak the grid
measures, in the same process. The process starts as ``dlnlab`` does (one JAX host device per
core), and each batched product runs as the engine runs run groups: one group on every host
device at once (``jax.pmap``). A batched step cannot be faster than its batched products:
their fraction of the peak is the ceiling of the roofline fraction of SGD at batch 32 and of
the anisotropic SDE (docs/performance.md, "What bounds each regime"). The load average is
printed: these machines are shared and rates vary 2x with load.
"""

from __future__ import annotations

import argparse
import json
import os

from dlnlab.cli import _set_xla_flags

_set_xla_flags()          # before JAX starts its backend: the flags and host devices of `dlnlab`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dlnlab.benchmarks import median_rate  # noqa: E402

SHAPES = ((32, 32), (32, 64), (32, 128), (32, 256), (128, 64), (2, 256), (1, 256))
"""(batch, width) pairs timed: the default batched run group (32 runs) at the grid's widths, a
larger group, a lone run padded to two, and one plain product."""


PRODUCTS_PER_CALL = 64
"""Products per timed call, in a loop inside one compiled program (the engine runs a 64-step
block of steps per call: a call per product would time the dispatch)."""


def batched_dot_rate(batch: int, width: int, devices: int = 1, min_seconds: float = 0.3,
                     repeats: int = 3) -> float:
    """GFLOP/s of float32 ``(batch, width, width) @ (batch, width, width)`` products, one on each
    of ``devices`` host devices at once, :data:`PRODUCTS_PER_CALL` dependent products per call
    (``2 devices batch width^3`` FLOP each), median of
    ``repeats`` timings of >= ``min_seconds``."""
    def chain(a, b):         # PRODUCTS_PER_CALL dependent products in one call, as a block of steps
        return jax.lax.fori_loop(0, PRODUCTS_PER_CALL,
                                 lambda _, c: jnp.einsum("nij,njk->nik", c, b) * (1 / width), a)

    product = jax.pmap(chain, devices=jax.local_devices()[:devices])
    operand = jnp.asarray(np.random.default_rng(0).standard_normal((devices, batch, width, width)),
                          jnp.float32)
    jax.block_until_ready(product(operand, operand))
    return median_rate(lambda: jax.block_until_ready(product(operand, operand)),
                       PRODUCTS_PER_CALL * 2 * devices * batch * width**3 / 1e9, min_seconds, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    load_start = os.getloadavg()
    peak = batched_dot_rate(1, 2048)
    devices = jax.local_device_count()
    rows = [{"batch": b, "width": d, "devices": devices,
             "gflop_per_second": (rate := batched_dot_rate(b, d, devices)),
             "fraction_of_peak": rate / peak} for b, d in SHAPES]
    result = {"peak_gflop_per_second": peak, "load_average_start": load_start,
              "load_average_end": os.getloadavg(), "device": str(jax.devices()[0]),
              "host_devices": devices, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"float32 matrix peak (2048^2 dot) {peak:.0f} GFLOP/s on {result['device']}; batched "
          f"products one per host device on {devices} devices at once; load {load_start[0]:.2f} at "
          f"the start, {result['load_average_end'][0]:.2f} at the end")
    print("| batch per device | width | GFLOP/s (all devices) | fraction of the peak |\n"
          "|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['batch']} | {row['width']} | {row['gflop_per_second']:.1f} | "
              f"{100 * row['fraction_of_peak']:.0f}% |")


if __name__ == "__main__":
    main()

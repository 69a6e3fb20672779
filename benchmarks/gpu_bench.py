"""The device benchmark: dlnlab's compiled advance on one accelerator, up to 1e5 runs per call.

What it measures (issue 15, "GPU path"): for online SGD (batch ``B`` = 1 and 32) and the
anisotropic SDE, float32, depth ``L`` = 4, widths ``d`` in {12, 64, 256} and runs per call in
{1,000, 10,000, 100,000}, the throughput of the engine's compiled advance in run-steps/s
(runs x steps per second; ``t = step x learning rate`` for SGD, ``step x h`` for the SDE), its
compile time, and memory. The code path is the one :func:`dlnlab.engine.simulate` takes on a
GPU: no host-device split and one run group holding every run
(``Layout(run_group=runs, parallel=False)``, what ``engine.simulate._layout`` picks when the
backend is not the CPU). ``tests/test_gpu_bench.py`` runs this path on the CPU and checks that
it gives the same bits as the default CPU layout and ``simulate`` (the engine's layout
invariance, online SGD at B = 1 and 32 and the anisotropic SDE).

Run it on a lent GPU machine (the device tool's ``run``), from the repository root::

    PYTHONPATH=src python3 benchmarks/gpu_bench.py --json $OUT/gpu_bench.json

What it needs there: JAX with CUDA, NumPy, SciPy, xarray, pandas (all in the H200 image) and
dlnlab's ``pydantic`` (not in the image, and nothing can be installed from a registry there).
Carry it as wheels for the image's Python 3.12 (the device tool's README, "Notes"): on this
machine, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl \\
        pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \\
        typing-inspection==0.4.5 typing_extensions==4.16.0

and in the ``run`` (``carry: [".whl"]``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit;
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py --json $OUT/gpu_bench.json

The default run is 27 cases; the 3 with ``d = 256`` and 100,000 runs cannot fit in an H200's
memory and are skipped before anything is allocated; the others should take a few minutes
(compilation is a few seconds a case). Smaller: ``--widths 12 --runs 1000,10000``.

Options (each checked up front; a wrong value is one line ``error: name=value: rule``, exit 2):
``--methods sgd,sde``, ``--batch-sizes 1,32`` (SGD), ``--widths 12,64,256``,
``--runs 1000,10000,100000``, ``--depth 4``, ``--dtype float32|float64``,
``--block-steps auto|N`` (steps per pre-drawn noise block; ``auto``: 64, halved until three
noise blocks fit in a quarter of the memory limit), ``--matmul-precision highest|high|default``
(``highest``: true float32 products; ``default`` lets XLA use TF32 on the GPU),
``--min-seconds 0.5`` and ``--repeats 3`` (timing), ``--json PATH``.

Timing (as ``dlnlab bench``): the first call, ``advance(1)``, is reported as ``compile_s`` (the
compilation plus one step); one calibration call of one block sets the steps per call
(about a tenth of ``--min-seconds``, whole blocks); then ``--repeats`` repetitions, each calling
``advance(steps)`` until at least ``--min-seconds`` have passed, blocking on every result;
``run_steps_per_s`` is the median over repetitions of ``runs x steps x calls / seconds``.
Every call starts from the same initial weights (the advance does not carry its state over).

Problem (the paper's task, as ``dlnlab bench``): whitened inputs, a ``d x d`` teacher with
singular values (1, 2/3, 1/3) and Haar bases (key 1), no label noise; every run starts from the
same ``init_gaussian(key 2, (d,) * (L + 1), gamma = 2)`` weights and has its own noise key;
learning rate ``eta = 0.01 x 12 / d`` (``eta d`` fixed: the step that stays stable as ``d``
grows), SDE step ``h = eta / 10``. ``diverged_runs`` counts runs the engine labelled diverged.

Memory, from the shapes (``R`` runs, ``s`` bytes per number, ``P = L d^2`` parameters per run,
``N`` normals per step per run: ``d B`` for SGD, ``d^2`` for the SDE, ``K`` block steps):

- ``state_bytes = R P s``: the runs' weights;
- ``noise_block_bytes = K N R s``: one block's pre-drawn normals;
- ``estimated_bytes = 2 state + 3 noise block + working + R (12 + n_hyperparameters s)``: the
  initial and the advanced state, the noise block with the random bits and counters it is made
  from, the step's working set (SGD: two states' worth of updates and carries plus
  ``2 (L + 1) d B`` activations per run; SDE: ``(2 L + 4) d^2`` per run for the prefix products,
  the noise map and the layer maps) and the per-run keys, flags and hyperparameters. On the CPU
  it is 1.2-2.8x the memory XLA's analysis gives for the compiled advance (arguments, outputs
  and temporaries; most at 64-step blocks); the rows' ``peak_bytes_in_use`` is the device's
  own count.

A case whose ``estimated_bytes`` exceeds the limit (``bytes_limit`` of
``jax.devices()[0].memory_stats()``; on the CPU, where ``memory_stats()`` is ``None``, the host's
physical memory) is skipped, with the reason, before anything is allocated; a case that still
runs out of memory is labelled ``failed`` and the others go on. ``peak_bytes_in_use`` is the
process's peak so far (JAX cannot reset it): cases run in increasing order of estimated memory,
and ``peak_reached_here`` says whether the peak rose during this case (then it is this case's
own peak). Output: a table on stdout, one progress line per case on stderr, and with ``--json``
a file with the device, JAX version, load averages, options and one row per case
(:data:`ROW_FIELDS`). Exit code 0, 1 when a case failed, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

try:
    from dlnlab import _validation as v
    from dlnlab.benchmarks import device_description, load_average
    from dlnlab.core import Task, init_gaussian
    from dlnlab.dynamics import (
        AnisotropicLangevin,
        Hyperparameters,
        OnlineSGD,
        StepSizeHyperparameters,
    )
    from dlnlab.engine import Layout, advance_from
    from dlnlab.io.atomic import atomic_write_json
except ImportError as error:  # pragma: no cover - the script run outside the repository
    raise SystemExit(f"error: cannot import dlnlab ({error}); run from the repository root with "
                     "PYTHONPATH=src (and pydantic installed: see this script's docstring)") from None

METHODS = ("sgd", "sde")
DEFAULT_METHODS = ("sgd", "sde")
DEFAULT_BATCH_SIZES = (1, 32)
DEFAULT_WIDTHS = (12, 64, 256)
DEFAULT_RUNS = (1_000, 10_000, 100_000)
DEFAULT_DEPTH = 4
SPECTRUM = (1.0, 2 / 3, 1 / 3)
MAX_RUNS = 1_000_000
MAX_WIDTH = 4096
MAX_DEPTH = 64
MAX_BLOCK_STEPS = 64
PRECISIONS = ("highest", "high", "default")
DTYPES = ("float32", "float64")

#: The fields of every result row (the JSON rows and the table), in order.
ROW_FIELDS = (
    "method", "batch_size", "width", "depth", "runs", "dtype", "status", "block_steps",
    "steps_per_call", "compile_s", "run_steps_per_s", "repetition_run_steps_per_s",
    "diverged_runs", "state_bytes", "noise_block_bytes", "estimated_bytes", "memory_limit_bytes",
    "memory_limit_source", "bytes_in_use", "peak_bytes_in_use", "peak_reached_here",
)


# ----------------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class Options:
    """The benchmark's settings; every field is checked on construction (one-line
    ``ValueError`` ``name=value: rule``)."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    runs: tuple[int, ...] = DEFAULT_RUNS
    depth: int = DEFAULT_DEPTH
    dtype: str = "float32"
    block_steps: int | None = None          # None: automatic (see block_steps_for)
    matmul_precision: str = "highest"
    min_seconds: float = 0.5
    repeats: int = 3
    json: str | None = None

    def __post_init__(self):
        for name in ("methods", "batch_sizes", "widths", "runs"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                v.fail(name, values, "must be a non-empty list")
            if len(set(values)) != len(values):
                v.fail(name, ",".join(map(str, values)), "must not repeat a value")
        for method in self.methods:
            if method not in METHODS:
                v.fail("methods", method, f"must be one of {', '.join(METHODS)}")
        for b in self.batch_sizes:
            _bounded_int("batch_sizes", b, 1, 4096)
        for d in self.widths:
            _bounded_int("widths", d, 3, MAX_WIDTH,
                         "(the teacher has 3 singular values: d >= 3)")
        for r in self.runs:
            _bounded_int("runs", r, 1, MAX_RUNS)
        _bounded_int("depth", self.depth, 1, MAX_DEPTH)
        if self.dtype not in DTYPES:
            v.fail("dtype", self.dtype, f"must be one of {', '.join(DTYPES)}")
        if self.block_steps is not None:
            _bounded_int("block_steps", self.block_steps, 1, 4096)
        if self.matmul_precision not in PRECISIONS:
            v.fail("matmul_precision", self.matmul_precision,
                   f"must be one of {', '.join(PRECISIONS)}")
        if isinstance(self.min_seconds, bool) or not isinstance(self.min_seconds, int | float) \
                or not math.isfinite(self.min_seconds) or not 0 < self.min_seconds <= 600:
            v.fail("min_seconds", self.min_seconds, "must be a number in (0, 600]")
        _bounded_int("repeats", self.repeats, 1, 100)


def _bounded_int(name: str, value, low: int, high: int, note: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        v.fail(name, value, f"must be an integer in [{low}, {high}]" + (f" {note}" if note else ""))
    return int(value)


def _int_list(name: str, text: str) -> tuple[int, ...]:
    """``"1000,10000"`` -> ``(1000, 10000)``; ``1e5`` is accepted for 100000 (a whole number)."""
    items = [t.strip() for t in text.split(",")]
    out = []
    for item in items:
        try:
            number = float(item)
        except ValueError:
            v.fail(name, text, "must be a comma-separated list of whole numbers")
        if not math.isfinite(number) or number != round(number):
            v.fail(name, text, "must be a comma-separated list of whole numbers")
        out.append(int(number))
    return tuple(out)


class _OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit 2), like the ``dlnlab`` CLI."""

    def error(self, message):
        raise ValueError(message)


def parse_options(argv: list[str] | None) -> Options:
    """The command line as :class:`Options`; a wrong value raises one-line ``ValueError``."""
    parser = _OneLineParser(prog="gpu_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated: sgd (online SGD), sde (anisotropic SDE)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                        help="SGD batch sizes B")
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)),
                        help="layer widths d (every layer d x d)")
    parser.add_argument("--runs", default=",".join(map(str, DEFAULT_RUNS)),
                        help="runs per call (up to 1e6)")
    parser.add_argument("--depth", default=str(DEFAULT_DEPTH), help="layers L")
    parser.add_argument("--dtype", default="float32", help="float32 or float64")
    parser.add_argument("--block-steps", default="auto", help="steps per noise block, or auto")
    parser.add_argument("--matmul-precision", default="highest",
                        help="highest (true float32), high or default (TF32 on the GPU)")
    parser.add_argument("--min-seconds", default="0.5", help="seconds per timing repetition")
    parser.add_argument("--repeats", default="3", help="timing repetitions (median)")
    parser.add_argument("--json", default=None, help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    try:
        min_seconds = float(args.min_seconds)
    except ValueError:
        v.fail("min_seconds", args.min_seconds, "must be a number in (0, 600]")
    depth = _int_list("depth", args.depth)
    repeats = _int_list("repeats", args.repeats)
    if len(depth) != 1:
        v.fail("depth", args.depth, "must be one whole number")
    if len(repeats) != 1:
        v.fail("repeats", args.repeats, "must be one whole number")
    block = None if args.block_steps == "auto" else _int_list("block_steps", args.block_steps)
    if block is not None and len(block) != 1:
        v.fail("block_steps", args.block_steps, "must be 'auto' or one whole number")
    if args.json is not None and not args.json.strip():
        v.fail("json", args.json, "must be a file path")
    if args.json is not None:    # checked before any case runs: device time is scarce
        parent = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json):
            v.fail("json", args.json, "must be a file path (it is a folder)")
        if os.path.exists(parent) and not os.path.isdir(parent):
            v.fail("json", args.json, f"its folder {parent!r} is a file")
    return Options(
        methods=tuple(m.strip() for m in args.methods.split(",")),
        batch_sizes=_int_list("batch_sizes", args.batch_sizes),
        widths=_int_list("widths", args.widths), runs=_int_list("runs", args.runs),
        depth=depth[0], dtype=args.dtype, block_steps=None if block is None else block[0],
        matmul_precision=args.matmul_precision, min_seconds=min_seconds, repeats=repeats[0],
        json=args.json)


# ------------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: ``method`` (``sgd`` or ``sde``), SGD ``batch_size`` (1 for the SDE),
    width ``d`` of every layer, depth ``L``, number of runs."""
    method: str
    batch_size: int
    width: int
    depth: int
    runs: int

    @property
    def label(self) -> str:
        name = f"sgd B={self.batch_size}" if self.method == "sgd" else "sde"
        return f"{name} d={self.width} L={self.depth} runs={self.runs}"


def cases_for(options: Options) -> list[Case]:
    """Every (method, batch size, width, runs) of ``options``, in table order."""
    out = []
    for method in options.methods:
        for b in (options.batch_sizes if method == "sgd" else (1,)):
            for d in options.widths:
                for r in options.runs:
                    out.append(Case(method, b, d, options.depth, r))
    return out


def learning_rate(width: int) -> float:
    """``eta = 0.01 x 12 / d``: the benchmark's step (``eta d`` fixed across widths)."""
    return 0.01 * 12 / width


def problem(case: Case, dtype):
    """``(stepper, hparams, weights)`` of ``case``: the paper's task at width ``d`` (whitened,
    teacher singular values :data:`SPECTRUM`, key 1) and one run's ``init_gaussian`` weights
    (key 2, ``gamma = 2``), a tuple of ``L`` arrays ``(d, d)`` in ``dtype``."""
    d = case.width
    task = Task.from_spectrum(jax.random.key(1), d, d, list(SPECTRUM), dtype=dtype)
    weights = init_gaussian(jax.random.key(2), (d,) * (case.depth + 1), 2.0, dtype=dtype)
    eta = learning_rate(d)
    if case.method == "sgd":
        return (OnlineSGD(task, batch_size=case.batch_size),
                Hyperparameters(eta, float(case.batch_size)), weights)
    return AnisotropicLangevin(task), StepSizeHyperparameters(eta, 1.0, eta / 10), weights


def normals_per_step(stepper) -> int:
    """Standard normals one run draws per step: online SGD ``(d_in + d_out [label noise]) B``,
    the anisotropic SDE ``d_in^2 + d_out d_in [label noise]`` (``dynamics.sgd.online_counts``,
    ``AnisotropicLangevin.noise_shapes``). Raises ``ValueError`` for any other stepper."""
    task = stepper.task
    label = task.label_covariance is not None
    if isinstance(stepper, OnlineSGD):
        return (task.d_in + (task.d_out if label else 0)) * stepper.batch_size
    if isinstance(stepper, AnisotropicLangevin) and task.online and stepper.path_substeps == 1:
        return task.d_in * task.d_in + (task.d_out * task.d_in if label else 0)
    v.fail("stepper", type(stepper).__name__, "must be OnlineSGD or an online AnisotropicLangevin "
           "with path_substeps=1")


def memory_estimate(stepper, hparams, widths: tuple[int, ...], runs: int, block_steps: int,
                    itemsize: int) -> dict:
    """Bytes of a case from its shapes (no allocation): ``state_bytes`` (the runs' weights),
    ``noise_block_bytes`` (one block of pre-drawn normals) and ``estimated_bytes`` (the whole
    advance: see the module docstring for the formula). ``widths = (d_0, ..., d_L)``."""
    depth = len(widths) - 1
    params = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    state = runs * params * itemsize
    noise_block = block_steps * normals_per_step(stepper) * runs * itemsize
    if isinstance(stepper, OnlineSGD):
        working = 2 * state + 2 * sum(widths) * stepper.batch_size * runs * itemsize
    else:
        working = (2 * depth + 4) * max(widths) ** 2 * runs * itemsize
    per_run = 2 * 4 + 4 + len(hparams) * itemsize          # key words, diverged flag, hparams
    return dict(state_bytes=state, noise_block_bytes=noise_block,
                estimated_bytes=2 * state + 3 * noise_block + working + runs * per_run)


def block_steps_for(stepper, hparams, widths, runs, itemsize, limit: float,
                    requested: int | None) -> int:
    """``requested``, or the largest power of two <= 64 (at least 2) whose three noise blocks
    take at most a quarter of ``limit`` bytes."""
    if requested is not None:
        return requested
    block = MAX_BLOCK_STEPS
    while block > 2 and 3 * memory_estimate(stepper, hparams, widths, runs, block,
                                             itemsize)["noise_block_bytes"] > limit / 4:
        block //= 2
    return block


def gpu_layout(runs: int, block_steps: int) -> Layout:
    """The layout ``simulate`` takes on a GPU: every run in one group, no host-device split."""
    return Layout(block_steps=block_steps, run_group=runs, parallel=False)


def batched_weights(weights, runs: int):
    """``weights`` repeated for ``runs`` runs: arrays ``(runs, d_l, d_{l-1})``."""
    return tuple(jnp.broadcast_to(w[None], (runs,) + w.shape) + 0 for w in weights)


def make_advance(stepper, hparams, weights, runs: int, key, block_steps: int):
    """The engine's compiled advance (:func:`dlnlab.engine.advance_from`) on :func:`gpu_layout`:
    ``advance(n) -> (state, diverged_step)``, runs on the trailing axis."""
    return advance_from(stepper, batched_weights(weights, runs), hparams, key,
                        layout=gpu_layout(runs, block_steps))


# ------------------------------------------------------------------------------------ memory
def device_memory() -> dict | None:
    """``bytes_in_use``, ``peak_bytes_in_use``, ``bytes_limit`` of the first device, or ``None``
    where JAX reports no memory statistics (the CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
            if k in stats}


def memory_limit() -> tuple[int, str]:
    """``(bytes, source)``: the device's ``bytes_limit``, or the host's physical memory where
    the device reports none (the CPU backend)."""
    stats = device_memory()
    if stats and stats.get("bytes_limit"):
        return stats["bytes_limit"], "device bytes_limit"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host physical memory"
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not every platform
        return 2**63 - 1, "unknown (no limit applied)"


# ------------------------------------------------------------------------------------ timing
def _timed_call(advance, steps: int):
    t0 = time.perf_counter()
    out = advance(steps)
    jax.block_until_ready(out)
    return time.perf_counter() - t0, out


def measure(advance, runs: int, block_steps: int, min_seconds: float, repeats: int) -> dict:
    """Compile time, steps per call and the median run-steps/s of ``advance`` (module
    docstring: timing)."""
    compile_s, out = _timed_call(advance, 1)
    calibrate_s, out = _timed_call(advance, block_steps)
    blocks = max(1, round(0.1 * min_seconds / max(calibrate_s, 1e-9)))
    steps = int(min(block_steps * blocks, 2**30))
    rates = []
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while True:
            out = advance(steps)
            jax.block_until_ready(out)
            count += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        rates.append(runs * steps * count / elapsed)
    diverged = int(np.sum(np.asarray(out[1]) >= 0))
    return dict(compile_s=compile_s, steps_per_call=steps, run_steps_per_s=statistics.median(rates),
                repetition_run_steps_per_s=rates, diverged_runs=diverged)


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_case(case: Case, options: Options, key=None, say=None) -> dict:
    """One row (:data:`ROW_FIELDS`): skipped when its estimate exceeds the memory limit,
    ``failed: ...`` when it raises (out of memory or otherwise), else ``ok`` with the timings."""
    dtype = jnp.dtype(options.dtype)
    stepper, hparams, weights = problem(case, dtype)
    widths = (case.width,) * (case.depth + 1)
    limit, source = memory_limit()
    block = block_steps_for(stepper, hparams, widths, case.runs, dtype.itemsize, limit,
                            options.block_steps)
    estimate = memory_estimate(stepper, hparams, widths, case.runs, block, dtype.itemsize)
    row = dict(method=case.method, batch_size=case.batch_size, width=case.width,
               depth=case.depth, runs=case.runs, dtype=dtype.name, status="ok",
               block_steps=block, steps_per_call=None, compile_s=None, run_steps_per_s=None,
               repetition_run_steps_per_s=None, diverged_runs=None, **estimate,
               memory_limit_bytes=limit, memory_limit_source=source, bytes_in_use=None,
               peak_bytes_in_use=None, peak_reached_here=None)
    if say is not None:
        say(f"{case.label}: block {block}, estimate {estimate['estimated_bytes'] / 1e9:.2f} GB "
            f"(limit {limit / 1e9:.1f} GB, {source})")
    if estimate["estimated_bytes"] > limit:
        row["status"] = (f"skipped: estimated {estimate['estimated_bytes'] / 1e9:.1f} GB > "
                         f"{source} {limit / 1e9:.1f} GB")
        return row
    before = device_memory()
    key = jax.random.key(3) if key is None else key
    try:
        advance = make_advance(stepper, hparams, weights, case.runs, key, block)
        row.update(measure(advance, case.runs, block, options.min_seconds, options.repeats))
        after = device_memory()
        del advance
    except Exception as error:  # noqa: BLE001 - one failed case must not end the others
        first = (str(error).strip().splitlines() or [""])[0][:200]
        kind = "out of memory" if _out_of_memory(error) else type(error).__name__
        row["status"] = f"failed: {kind}: {first}"
        after = device_memory()
    finally:
        gc.collect()
    if after is not None:
        row["bytes_in_use"] = after.get("bytes_in_use")
        row["peak_bytes_in_use"] = after.get("peak_bytes_in_use")
        if before is not None and "peak_bytes_in_use" in after:
            row["peak_reached_here"] = after["peak_bytes_in_use"] > before.get("peak_bytes_in_use", 0)
    return row


def run_benchmark(options: Options, progress: bool = True) -> list[dict]:
    """Every case of ``options`` (run in increasing order of estimated memory, returned in
    table order); one progress line per case on stderr when ``progress``."""
    cases = cases_for(options)
    dtype = jnp.dtype(options.dtype)
    limit, _ = memory_limit()

    def size(case):
        stepper, hparams, _ = problem(case, dtype)
        widths = (case.width,) * (case.depth + 1)
        block = block_steps_for(stepper, hparams, widths, case.runs, dtype.itemsize, limit,
                                options.block_steps)
        return memory_estimate(stepper, hparams, widths, case.runs, block,
                               dtype.itemsize)["estimated_bytes"]

    order = sorted(range(len(cases)), key=lambda i: (size(cases[i]), i))
    rows: list[dict | None] = [None] * len(cases)
    for position, index in enumerate(order, start=1):
        def say(text, position=position):
            if progress:
                print(f"[{position}/{len(cases)}] {text}", file=sys.stderr, flush=True)
        row = run_case(cases[index], options, say=say)
        rows[index] = row
        if row["status"] == "ok":
            say(f"{cases[index].label}: {row['run_steps_per_s']:.3g} run-steps/s, compile "
                f"{row['compile_s']:.1f} s, {row['steps_per_call']} steps/call")
        else:
            say(f"{cases[index].label}: {row['status']}")
    return rows


# ------------------------------------------------------------------------------------ output
def _gigabytes(value) -> str:
    return "-" if value is None else f"{value / 1e9:.3g}"


def format_table(rows: list[dict], header: str) -> str:
    """The rows as a plain-text table (one line per case; statuses other than ``ok`` after)."""
    titles = ("method", "B", "d", "runs", "block", "steps/call", "compile s", "run-steps/s",
              "state GB", "noise GB", "estimate GB", "peak GB", "status")
    lines = []
    for r in rows:
        ok = r["status"] == "ok"
        peak = _gigabytes(r["peak_bytes_in_use"])
        if r["peak_reached_here"] is False:
            peak = f"<={peak}"
        lines.append((r["method"], str(r["batch_size"]), str(r["width"]), str(r["runs"]),
                      str(r["block_steps"]), str(r["steps_per_call"]) if ok else "-",
                      f"{r['compile_s']:.2f}" if ok else "-",
                      f"{r['run_steps_per_s']:.3g}" if ok else "-",
                      _gigabytes(r["state_bytes"]), _gigabytes(r["noise_block_bytes"]),
                      _gigabytes(r["estimated_bytes"]), peak,
                      "ok" if ok else r["status"].split(":")[0]))
    widths = [max(len(t), *(len(line[i]) for line in lines)) for i, t in enumerate(titles)]
    text = [header, "  ".join(t.rjust(w) for t, w in zip(titles, widths, strict=True))]
    text += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    notes = [f"  {r['method']} B={r['batch_size']} d={r['width']} runs={r['runs']}: {r['status']}"
             for r in rows if r["status"] != "ok"]
    return "\n".join(text + (["not run:"] + notes if notes else []))


def report(rows: list[dict], options: Options, started: str, load_before: str) -> dict:
    """The JSON document: device, versions, load averages, options, memory and the rows."""
    stats = device_memory()
    return dict(
        script="benchmarks/gpu_bench.py", started_utc=started, device=device_description(),
        backend=jax.default_backend(), jax_version=jax.__version__,
        jaxlib_version=getattr(jaxlib, "__version__", None),
        python=platform.python_version(), load_average_before=load_before,
        load_average_after=load_average(), matmul_precision=options.matmul_precision,
        options=dataclasses.asdict(options), memory_stats=stats,
        memory_stats_note=None if stats is not None else
        "jax.devices()[0].memory_stats() is None on this backend (CPU): no device memory "
        "figures; the skip rule used the host's physical memory",
        row_fields=list(ROW_FIELDS), rows=rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 when every case ran or was skipped, 1 when one failed, 2 for a bad
    option (one line ``error: ...`` on stderr)."""
    try:
        options = parse_options(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Process start: the CLI's XLA:CPU flag (a CPU run of this script) and the dtype.
    if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_experimental_ynn_fusion_type=").strip()
    if options.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    with jax.default_matmul_precision(options.matmul_precision):      # scoped, not global
        return _main(options)


def _main(options: Options) -> int:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = load_average()
    print(f"gpu_bench: {device_description()}, jax {jax.__version__}, load {load_before}",
          file=sys.stderr, flush=True)
    rows = run_benchmark(options)
    header = (f"dlnlab device benchmark ({device_description()}; jax {jax.__version__}; "
              f"{options.dtype}, L={options.depth}, matmul precision {options.matmul_precision}; "
              f"load {load_before} -> {load_average()})")
    print(format_table(rows, header), flush=True)
    if device_memory() is None:
        print("memory: jax.devices()[0].memory_stats() is None on this backend (CPU): "
              "no device memory figures", flush=True)
    if options.json is not None:
        try:
            atomic_write_json(report(rows, options, started, load_before), options.json)
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"wrote {options.json}", flush=True)
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``benchmarks/gpu_bench.py``, the device benchmark, exercised on the CPU: the code path it takes
on a GPU (one run group, no host-device split) gives the same bits as the default CPU layout and
``simulate``; its rows carry the documented fields; its memory figures are the byte counts of the
real arrays; bad options are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlnlab.core import Task, init_gaussian
from dlnlab.dynamics import (
    AnisotropicLangevin,
    Hyperparameters,
    OnlineSGD,
    StepSizeHyperparameters,
    key_words,
)
from dlnlab.engine import Recording, advance_from, initial_state, run_keys, simulate

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module       # dataclasses resolve their module's annotations
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_bench", None)


TINY = dict(widths=(4,), runs=(8,), depth=4, min_seconds=0.01, repeats=2)


def test_rows_have_the_documented_fields_and_positive_rates(bench):
    options = bench.Options(methods=("sgd", "sde"), batch_sizes=(1, 32), **TINY)
    rows = bench.run_benchmark(options, progress=False)
    cases = bench.cases_for(options)
    assert [(r["method"], r["batch_size"]) for r in rows] == [("sgd", 1), ("sgd", 32), ("sde", 1)]
    assert [(c.method, c.batch_size, c.width, c.runs) for c in cases] == [
        (r["method"], r["batch_size"], r["width"], r["runs"]) for r in rows]
    for row in rows:
        assert tuple(row) == bench.ROW_FIELDS
        assert row["status"] == "ok", row["status"]
        assert row["run_steps_per_s"] > 0 and row["compile_s"] > 0
        assert len(row["repetition_run_steps_per_s"]) == 2
        assert all(rate > 0 for rate in row["repetition_run_steps_per_s"])
        assert row["steps_per_call"] % row["block_steps"] == 0
        assert row["block_steps"] == 64 and row["diverged_runs"] == 0
        assert row["dtype"] == "float32" and row["width"] == 4 and row["runs"] == 8
        # the CPU reports no device memory: said so, the host's memory bounds the cases
        assert row["peak_bytes_in_use"] is None and row["bytes_in_use"] is None
        assert row["memory_limit_source"] == "host physical memory"
    table = bench.format_table(rows, "header")
    assert table.splitlines()[0] == "header" and len(table.splitlines()) == 2 + len(rows)


def _batched(weights, runs):
    return tuple(jnp.broadcast_to(w[None], (runs,) + w.shape) + 0 for w in weights)


# Online SGD with B = 32 was not layout-invariant on AVX-512 CPUs (found by this test): XLA fused
# the batch sum of the last layer's update differently by run-group size (1 ulp). The sum is now
# an explicit fold (dynamics._ops.batch_outer_sum); tests/test_layout_product.py checks group sizes.


@pytest.mark.parametrize("method,batch_size", [("sgd", 1), ("sgd", 32),
                                               ("sde", 1)])
def test_gpu_layout_gives_the_bits_of_the_default_cpu_layout(bench, method, batch_size):
    # 260 runs: the default CPU layout splits them into equal groups (44) over the host devices
    # (padded with copies of the last run); 70 steps: one block of 64 plus a rest of 6.
    runs, steps, key = 260, 70, jax.random.key(11)
    case = bench.Case(method, batch_size, 4, 4, runs)
    stepper, hparams, weights = bench.problem(case, jnp.float32)
    gpu_state, gpu_diverged = bench.make_advance(stepper, hparams, weights, runs, key, 64)(steps)
    cpu_state, cpu_diverged = advance_from(stepper, _batched(weights, runs), hparams, key)(steps)
    assert int(gpu_state.step) == int(cpu_state.step) == steps
    for gpu, cpu in zip(gpu_state.weights, cpu_state.weights, strict=True):
        assert gpu.shape == (4, 4, runs) and gpu.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(gpu), np.asarray(cpu))
    np.testing.assert_array_equal(np.asarray(gpu_diverged), np.asarray(cpu_diverged))
    # ... and of simulate's recorded parameters (vec W_l, column-stacked, per run)
    ds = simulate(stepper, _batched(weights, runs), hparams, key,
                  Recording([steps], observables=["parameters"]))
    flat = np.concatenate([np.moveaxis(np.asarray(w), -1, 0).transpose(0, 2, 1).reshape(runs, -1)
                           for w in gpu_state.weights], axis=1)
    np.testing.assert_array_equal(ds["parameters"].isel(time=-1).values, flat)
    # the comparison can fail: the runs moved, and another key gives other weights
    other_state, _ = bench.make_advance(stepper, hparams, weights, runs, jax.random.key(12), 64)(
        steps)
    assert not np.array_equal(np.asarray(other_state.weights[0]), np.asarray(gpu_state.weights[0]))
    start = np.moveaxis(np.asarray(_batched(weights, runs)[0]), 0, -1)
    assert not np.array_equal(np.asarray(gpu_state.weights[0]), start)


def _steppers():
    task = Task.from_spectrum(jax.random.key(1), 5, 3, [1.0, 0.5], dtype=jnp.float64)
    noisy = Task.from_spectrum(jax.random.key(1), 5, 3, [1.0, 0.5], label_noise=0.3,
                               dtype=jnp.float64)
    sde_hp = StepSizeHyperparameters(0.01, 1.0, 0.001)
    return [(OnlineSGD(task, batch_size=1), Hyperparameters(0.01)),
            (OnlineSGD(task, batch_size=32), Hyperparameters(0.01, 32.0)),
            (OnlineSGD(noisy, batch_size=3), Hyperparameters(0.01, 3.0)),
            (AnisotropicLangevin(task), sde_hp), (AnisotropicLangevin(noisy), sde_hp)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_memory_estimate_is_the_byte_count_of_the_arrays(bench, dtype):
    widths, runs, block = (5, 4, 6, 3), 7, 5          # rectangular layers, label noise or not
    weights = _batched(init_gaussian(jax.random.key(2), widths, 1.0, dtype=dtype), runs)
    words = key_words(run_keys(jax.random.key(3), runs))
    itemsize = jnp.dtype(dtype).itemsize
    sizes = set()
    for stepper, hparams in _steppers():
        estimate = bench.memory_estimate(stepper, hparams, widths, runs, block, itemsize)
        state = initial_state(stepper, weights)
        assert estimate["state_bytes"] == sum(w.nbytes for w in state.weights)
        noise = stepper.draw(words, jnp.arange(block, dtype=jnp.int32), dtype)
        assert noise.dtype == dtype
        assert estimate["noise_block_bytes"] == noise.nbytes
        assert estimate["estimated_bytes"] >= 2 * estimate["state_bytes"] \
            + 3 * estimate["noise_block_bytes"]
        sizes.add(estimate["noise_block_bytes"])
    assert len(sizes) == 5      # the formula follows the method, batch and label noise

    # the block shrinks (by halving, not below 2) until three blocks fit in a quarter of the limit
    stepper, hparams = _steppers()[3]
    def noise(block_steps):
        return bench.memory_estimate(stepper, hparams, widths, runs, block_steps,
                                     itemsize)["noise_block_bytes"]
    assert bench.block_steps_for(stepper, hparams, widths, runs, itemsize, 1e12, None) == 64
    limit = 4 * 3 * noise(16)
    assert bench.block_steps_for(stepper, hparams, widths, runs, itemsize, limit, None) == 16
    assert bench.block_steps_for(stepper, hparams, widths, runs, itemsize, limit - 1, None) == 8
    assert bench.block_steps_for(stepper, hparams, widths, runs, itemsize, 1.0, None) == 2
    assert bench.block_steps_for(stepper, hparams, widths, runs, itemsize, 1.0, 7) == 7


def test_a_case_beyond_the_memory_limit_is_skipped_before_allocating(bench):
    options = bench.Options(methods=("sde",), widths=(256,), runs=(1_000_000,))
    row = bench.run_case(bench.Case("sde", 1, 256, 4, 1_000_000), options)
    assert row["status"].startswith("skipped: estimated ") and "host physical memory" in row["status"]
    assert row["estimated_bytes"] > row["memory_limit_bytes"]
    assert row["state_bytes"] == 1_000_000 * 4 * 256 * 256 * 4
    assert row["run_steps_per_s"] is None and row["block_steps"] == 2


@pytest.mark.parametrize("argv,start", [
    (["--runs", "0"], "error: runs=0: must be an integer in [1, 1000000]"),
    (["--runs", "1000,abc"], "error: runs='1000,abc': must be a comma-separated list"),
    (["--widths", "2"], "error: widths=2: must be an integer in [3, 4096]"),
    (["--methods", "sgd,adam"], "error: methods='adam': must be one of sgd, sde"),
    (["--min-seconds", "nan"], "error: min_seconds=nan: must be a number in (0, 600]"),
    (["--block-steps", "0"], "error: block_steps=0: must be an integer in [1, 4096]"),
    (["--runs", "10,10"], "error: runs='10,10': must not repeat a value"),
    (["--dtype", "float16"], "error: dtype='float16': must be one of float32, float64"),
    (["--bogus"], "error: unrecognized arguments: --bogus"),
])
def test_a_bad_option_is_one_line_and_exit_2(bench, capsys, argv, start):
    assert bench.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(start) and err.count("\n") == 1, err


def test_an_unwritable_json_path_is_refused_before_any_case_runs(bench, tmp_path, capsys):
    """A folder, or a path under a file, fails up front (exit 2, one line), not after the run."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, rule in ((tmp_path, "must be a file path (it is a folder)"),
                       (afile / "x.json", "is a file")):
        assert bench.main(["--json", str(path), "--widths", "4", "--runs", "2"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: json=") and rule in err and err.count("\n") == 1


def test_main_prints_the_table_and_writes_the_json(bench, tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    argv = ["--methods", "sgd", "--batch-sizes", "1", "--widths", "4", "--runs", "8",
            "--min-seconds", "0.01", "--repeats", "1", "--json", str(path)]
    assert bench.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("dlnlab device benchmark (cpu") and "run-steps/s" in out
    assert "memory_stats() is None" in out and "[1/1] sgd B=1 d=4 L=4 runs=8" in err
    data = json.loads(path.read_text())
    for field in ("device", "jax_version", "load_average_before", "load_average_after",
                  "options", "matmul_precision", "memory_stats_note"):
        assert data[field], field
    assert data["jax_version"] == jax.__version__ and data["memory_stats"] is None
    assert data["options"]["runs"] == [8] and data["row_fields"] == list(data["rows"][0])
    assert data["rows"][0]["status"] == "ok" and data["rows"][0]["run_steps_per_s"] > 0


def test_device_memory_figures_and_out_of_memory_on_the_gpu_path(bench, monkeypatch, capsys):
    """The GPU-only branches, on the CPU with JAX's memory statistics stood in for: the limit is
    the device's ``bytes_limit``, the rows carry the peak and whether it rose during the case,
    a case over the limit is skipped and one that runs out of memory is labelled, not fatal."""
    peak = {"value": 1000}

    def stats():
        peak["value"] += 10                      # every look sees a higher peak
        return dict(bytes_in_use=500, peak_bytes_in_use=peak["value"], bytes_limit=10**10)

    monkeypatch.setattr(bench, "device_memory", stats)
    options = bench.Options(methods=("sgd",), batch_sizes=(1,), **TINY)
    row = bench.run_case(bench.Case("sgd", 1, 4, 4, 8), options)
    assert row["status"] == "ok" and row["memory_limit_bytes"] == 10**10
    assert row["memory_limit_source"] == "device bytes_limit"
    assert row["bytes_in_use"] == 500 and row["peak_bytes_in_use"] == peak["value"]
    assert row["peak_reached_here"] is True
    big = bench.run_case(bench.Case("sgd", 1, 64, 4, 1_000_000), options)
    assert big["status"].startswith("skipped: estimated") and "device bytes_limit 10.0 GB" in big["status"]

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 bytes.")

    monkeypatch.setattr(bench, "make_advance", exhausted)
    failed = bench.run_case(bench.Case("sgd", 1, 4, 4, 8), options)
    assert failed["status"] == ("failed: out of memory: RESOURCE_EXHAUSTED: Out of memory while "
                                "trying to allocate 1 bytes.")
    assert failed["run_steps_per_s"] is None and tuple(failed) == bench.ROW_FIELDS
    assert bench.main(["--methods", "sgd", "--batch-sizes", "1", "--widths", "4",
                       "--runs", "8"]) == 1                  # a failed case: exit code 1
    out, _ = capsys.readouterr()
    assert "not run:" in out and "failed: out of memory" in out

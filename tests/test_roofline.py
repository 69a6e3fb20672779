"""``dlnlab bench --scaling``: the analytic FLOP counts against XLA's own count, the Dataset a tiny
grid returns, the memory and time caps, one-line errors and the roofline figure. No timing
assertions (speed lives in the benchmark itself)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from dlnlab import roofline as rf
from dlnlab.cli import main
from dlnlab.core import Task, init_gaussian
from dlnlab.dynamics import AnisotropicLangevin, Hyperparameters, OnlineSGD, StepSizeHyperparameters
from dlnlab.dynamics import _ops as ops
from dlnlab.dynamics.base import State
from dlnlab.io.atomic import read_dataset
from dlnlab.plot.roofline import roofline_figure

MACHINE = rf.MachineLimits(50.0, 5.0, 2048, 64)      # given, so the tiny grid skips measuring


def _xla_flops(stepper, hparams, width, depth, normals):
    """FLOP of one single-run ``apply`` (noise passed in) as XLA's compiled cost analysis counts it."""
    task = stepper.task
    weights = init_gaussian(jax.random.key(2), (width,) * (depth + 1), 2.0, dtype=jnp.float32)
    words = jnp.zeros((2,), jnp.uint32)

    def step(z, ws):
        return stepper.apply(words, z, State(ws, jnp.int32(0)), hparams)

    del task
    cost = jax.jit(step).lower(jnp.zeros((normals,), jnp.float32), weights).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


@pytest.fixture
def dot_products(monkeypatch):
    """A single run's matrix-vector and few-column products as XLA ``dot``s, which XLA's cost
    analysis counts as ``2 m k n`` (the step writes them as multiply-and-sum, ``_ops.mv`` and
    ``_ops.DOT_MIN_COLUMNS``, for bits; XLA counts a reduction's adds differently)."""
    mv, mtv = ops.mv, ops.mtv
    monkeypatch.setattr(ops, "mv", lambda a, x: a @ x if a.ndim == 2 else mv(a, x))
    monkeypatch.setattr(ops, "mtv", lambda a, x: a.T @ x if a.ndim == 2 else mtv(a, x))
    monkeypatch.setattr(ops, "DOT_MIN_COLUMNS", 1)


@pytest.mark.parametrize("width, depth, batch", [(12, 4, 1), (32, 3, 1), (12, 4, 8), (32, 2, 5)])
def test_flop_counts_match_xla_cost_analysis(width, depth, batch, dot_products):
    task = Task.from_spectrum(jax.random.key(1), width, width, [1.0, 0.5], dtype=jnp.float32)
    sgd = _xla_flops(OnlineSGD(task, batch_size=batch), Hyperparameters(0.01, float(batch)),
                     width, depth, width * batch)
    sde = _xla_flops(AnisotropicLangevin(task), StepSizeHyperparameters(0.01, float(batch), 0.001),
                     width, depth, width * width)
    sde += 2 * width * width     # (Z + Z^T) / sqrt 2: in AnisotropicLangevin.draw, not apply
    # The analytic counts cover every matrix product exactly; the difference allowed is the
    # order of the vector operations on the error (O(d B) elementwise work: XLA counts a few
    # more, e.g. the loss's halving), far below one product's 2 d^2 B.
    vector_slack = 4 * width * batch
    assert abs(rf.sgd_flop(width, depth, batch) - sgd) <= vector_slack
    assert abs(rf.sde_flop(width, depth) - sde) <= width * width          # products: exact
    # A wrong count (L backward products instead of L - 1; prefix products L instead of L - 1)
    # falls outside the same bands.
    wrong_sgd = rf.sgd_flop(width, depth, batch) + 2 * width * width * batch
    wrong_sde = rf.sde_flop(width, depth) + 2 * width ** 3
    assert abs(wrong_sgd - sgd) > vector_slack
    assert abs(wrong_sde - sde) > width * width


def test_step_floor_adds_the_normals_time_to_the_flop_at_the_peak():
    # SDE, d = 12, L = 4: 144 normals at 2 ns and 36,288 FLOP at 50 GFLOP/s.
    seconds = 144 * 2e-9 + 36288 / 50e9
    assert rf.step_floor("sde", 12, 4, 1, MACHINE, 2e-9) == pytest.approx(1 / seconds, rel=1e-12)
    # SGD at B = 8: 96 normals; 6 L d^2 B + L d^2 + 4 d B FLOP.
    seconds = 96 * 1e-9 + (6 * 4 * 144 * 8 + 4 * 144 + 4 * 12 * 8) / 50e9
    assert rf.step_floor("sgd", 12, 4, 8, MACHINE, 1e-9) == pytest.approx(1 / seconds, rel=1e-12)
    # a floor that forgot the normals (or the FLOP) is another number
    assert rf.step_floor("sde", 12, 4, 1, MACHINE, 2e-9) < 50e9 / 36288
    assert rf.step_floor("sde", 12, 4, 1, MACHINE, 2e-9) < 1 / (144 * 2e-9)
    with pytest.raises(ValueError, match="normal_seconds"):
        rf.step_floor("sde", 12, 4, 1, MACHINE, 0.0)
    with pytest.raises(ValueError, match="method='gd'"):
        rf.step_floor("gd", 12, 4, 1, MACHINE, 1e-9)


def test_normal_seconds_names_the_faster_draw():
    from dlnlab.dynamics import kernels

    seconds, source = rf.measure_normal_seconds(runs=8, steps=2, count=12, min_seconds=0.01, repeats=1)
    assert np.isfinite(seconds) and seconds > 0
    assert source in (("XLA", "compiled kernel") if kernels.available() else ("XLA",))
    with pytest.raises(ValueError, match="count"):
        rf.measure_normal_seconds(count=0)


def test_bytes_and_normals():
    # 4 layers of 12 x 12 float32 read and written, plus 12 normals (SGD, B = 1) or 144 (SDE).
    assert rf.minimum_bytes("sgd", 12, 4, 1) == 2 * 4 * (4 * 144 + 12)
    assert rf.minimum_bytes("sde", 12, 4, 32) == 2 * 4 * (4 * 144 + 144)
    assert rf.normals_per_step("sgd", 12, 32) == 384
    assert rf.memory_estimate("sgd", 8, 2, 1, 4) == 2 * 4 * 2 * 64 * 4 + 4 * 64 * 8 * 4


def test_measure_machine_small():
    limits = rf.measure_machine(matrix_size=128, stream_mebibytes=2, min_seconds=0.02, repeats=1)
    assert np.isfinite(limits.peak_gflop_per_second) and limits.peak_gflop_per_second > 0
    assert np.isfinite(limits.bandwidth_gbyte_per_second) and limits.bandwidth_gbyte_per_second > 0


@pytest.fixture(scope="module")
def tiny():
    # runs=4 SGD case needs 12,288 bytes (memory_estimate), the runs=1 one 3,072: a cap of
    # 8,000 bytes skips the first for memory and keeps the second.
    return rf.run_scaling(widths=(8,), depths=(2,), batch_sizes=(1, 2), run_counts=(1, 4),
                          memory_cap_gib=8000 / 2 ** 30, machine=MACHINE, min_seconds=0.01,
                          repeats=1, target_call_seconds=0.02, progress=False)


def test_tiny_grid_dataset(tiny):
    ds = tiny
    assert tuple(ds.run_steps_per_second.dims) == ("method", "width", "depth", "batch_size", "runs")
    assert list(ds.method.values) == ["sgd", "sde"]
    for name in ("run_steps_per_second", "gflop_per_second", "gbyte_per_second", "roofline_fraction",
                 "roofline_gflop_per_second", "flop_per_step", "normals_per_step", "bytes_per_step",
                 "arithmetic_intensity", "compile_seconds", "steps_per_call", "diverged_runs",
                 "memory_estimate_bytes", "skipped", "bound"):
        assert name in ds
    for name in ("peak_gflop_per_second", "bandwidth_gbyte_per_second", "device",
                 "load_average_start", "load_average_end", "dtype"):
        assert name in ds.attrs
    measured = ds.sel(dict(method="sgd", width=8, depth=2, batch_size=1, runs=1))
    assert str(measured.skipped.item()) == ""
    rate = float(measured.run_steps_per_second)
    assert rate > 0
    assert float(measured.flop_per_step) == rf.sgd_flop(8, 2, 1)
    assert np.isclose(float(measured.gflop_per_second), rate * rf.sgd_flop(8, 2, 1) / 1e9)
    intensity = rf.sgd_flop(8, 2, 1) / rf.minimum_bytes("sgd", 8, 2, 1)
    roof = min(50.0, intensity * 5.0)
    assert np.isclose(float(measured.roofline_fraction), float(measured.gflop_per_second) / roof)
    assert measured.bound.item() == "memory"
    assert float(measured.diverged_runs) == 0
    # (a dim named "method" must be selected with a dict: Dataset.sel has a `method` argument)
    # the memory cap skips the 4-run case and says why; rates are NaN there
    capped = ds.sel(dict(method="sgd", width=8, depth=2, batch_size=1, runs=4))
    assert str(capped.skipped.item()).startswith("memory:")
    assert np.isnan(float(capped.run_steps_per_second))
    # the SDE at B > 1 is the same computation as B = 1: skipped with that reason
    assert "same computation" in str(ds.sel(dict(method="sde", batch_size=2, runs=1, width=8,
                                                  depth=2)).skipped.item())


def test_time_cap_skips():
    ds = rf.run_scaling(widths=(8,), depths=(2,), batch_sizes=(1,), run_counts=(1,), methods=("sde",),
                        machine=MACHINE, max_step_seconds=1e-12, progress=False)
    assert str(ds.skipped.item()).startswith("time:")


def test_outputs_and_figure(tiny, tmp_path):
    paths = rf.write_scaling(tiny, tmp_path / "perf")
    assert sorted(p.name for p in paths) == ["roofline.pdf", "roofline.png", "scaling.md", "scaling.nc"]
    back = read_dataset(tmp_path / "perf" / "scaling.nc")
    np.testing.assert_array_equal(back.run_steps_per_second.values, tiny.run_steps_per_second.values)
    table = (tmp_path / "perf" / "scaling.md").read_text()
    assert "| sgd | 8 | 2 | 1 | 1 |" in table and "memory:" in table
    fig = roofline_figure(tiny)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == int(np.isfinite(tiny.gflop_per_second.values).sum())
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    records = rf.scaling_records(tiny)
    assert len(records["cases"]) == tiny.run_steps_per_second.size


@pytest.mark.parametrize("kwargs, message", [
    (dict(widths=(0,)), "widths=0: must be an integer >= 1"),
    (dict(methods=("adam",)), "methods="),
    (dict(run_counts=(4, 4)), "run_counts="),
    (dict(min_seconds=-1.0), "min_seconds=-1"),
    (dict(memory_cap_gib=0.0), "memory_cap_gib=0"),
])
def test_bad_options_one_line(kwargs, message):
    with pytest.raises(ValueError) as info:
        rf.run_scaling(machine=MACHINE, progress=False, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["bench", "--out", "somewhere"], "--out=somewhere: only with --scaling"),
    (["bench", "--scaling", "--torch"], "use it without --scaling"),
    (["bench", "--max-step-seconds", "1"], "--max-step-seconds=1.0: only with --scaling"),
    (["bench", "--scaling", "--memory-cap", "-1"], "--memory-cap=-1.0: must be a finite number > 0"),
    (["bench", "--scaling", "--max-step-seconds", "nan"], "--max-step-seconds=nan: must be a finite"),
])
def test_cli_bad_bench_options(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["bench", "--scaling", "--out", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out=") and "must be a folder" in err and "\n" not in err


def test_missing_torch_is_one_line(monkeypatch):
    from dlnlab import torch_baseline

    monkeypatch.setitem(sys.modules, "torch", None)       # import torch raises ImportError
    with pytest.raises(ValueError, match=r"^bench --torch: PyTorch is not installed "
                                         r"\(pip install 'dlnlab\[bench-torch\]'\)$"):
        torch_baseline.import_torch()


def test_cli_out_under_a_file_is_refused_before_the_run(tmp_path, capsys):
    """A folder that cannot be created (here: under a file) fails before the 14-minute grid."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["bench", "--scaling", "--out", str(afile / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out=") and "cannot be created" in err and "\n" not in err

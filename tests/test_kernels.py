"""The compiled block kernels of online SGD and online momentum SGD (``dlnlab.dynamics.kernels``)
against the XLA step.

The kernel computes the XLA step's operations with the same fused multiply-adds, every sum in
index order. Where XLA:CPU sums in index order too, the comparisons here are bit for bit: the
weights after a block and a rest, the divergence step, every recorded observable, in float32 and
float64, for whitened and coloured inputs, with and without label noise, batch sizes 1 to 32,
uneven layers, and run counts that fill the vector lanes partially. A kernel that rounds one
operation differently fails them (``test_a_kernel_that_rounds_differently_is_caught``). Where
XLA reorders a sum (label noise from width 24 in small run groups, widths 28-32), the two agree
at float rounding, and the kernel alone keeps a run's bits independent of its run group. Every
comparison runs for both kernels (``method``: ``"sgd"``, ``"momentum"`` with a momentum of 0.7,
whose products round).
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from dlnlab import dynamics as dy
from dlnlab import engine as en
from dlnlab.core import Task
from dlnlab.dynamics import _ops as ops
from dlnlab.dynamics import kernels
from dlnlab.dynamics.momentum import MomentumHyperparameters

needs_kernel = pytest.mark.skipif(not kernels.available(),
                                  reason="dlnlab.dynamics._kernels was not built (no C++ compiler)")


def test_the_kernels_are_built_where_a_compiler_is():
    """The install builds ``dlnlab.dynamics._kernels`` with GCC on x86-64 Linux (setup.py): a
    compile error must fail here, not fall back to the XLA step unnoticed. Where it is built but
    cannot run (a CPU without AVX2 or FMA, an older jax), the reason is one line."""
    if (not sys.platform.startswith("linux") or platform.machine() != "x86_64"
            or shutil.which("g++") is None):
        pytest.skip("the kernels are built with GCC on x86-64 Linux only (optional elsewhere)")
    assert importlib.util.find_spec("dlnlab.dynamics._kernels") is not None, (
        "dlnlab.dynamics._kernels was not built: see the pip install log")
    reason = kernels.unavailable_reason()
    if reason and ("AVX2" in reason or "jax.ffi" in reason):
        pytest.skip(reason)
    assert reason == "", reason
    assert kernels.available()


def test_an_older_build_without_a_handler_is_a_reason_not_a_crash():
    """A compiled module from before a kernel was added (an editable install not rebuilt) lacks
    its handlers: nothing is registered and the engine runs the XLA step, with the reason."""
    import types

    old = types.SimpleNamespace(online_sgd_block_f32=object(), online_sgd_block_f64=object())
    assert kernels.missing_handlers(old)[:2] == ["online_momentum_block_f32",
                                                 "online_momentum_block_f64"]
    # The build before the kernels drew their own normals: its block handlers take the normals
    # as an input, so they must not be registered under today's call either.
    normals_input = types.SimpleNamespace(**{f"online_{k}_block_{t}": object()
                                             for k in ("sgd", "momentum") for t in ("f32", "f64")})
    assert kernels.missing_handlers(normals_input) == ["online_normals_f32", "online_normals_f64",
                                                       "bits_to_normals_f32"]
    try:
        from dlnlab.dynamics import _kernels
    except ImportError:
        pytest.skip("dlnlab.dynamics._kernels was not built")
    assert kernels.missing_handlers(_kernels) == []


def _task(regime, d_in, d_out, dtype):
    rng = np.random.default_rng(7)
    cov = None
    if regime.startswith("colored"):
        a = rng.standard_normal((d_in, d_in))
        cov = (a @ a.T / d_in + 0.5 * np.eye(d_in)).astype(np.float32)
    label = 0.5 if regime.endswith("noise") else None
    spectrum = [1.0, 0.5][:min(d_in, d_out)]
    return Task.from_spectrum(jax.random.key(3), d_in, d_out, spectrum, label_noise=label,
                              input_covariance=cov, dtype=dtype)


def _weights(widths, runs, dtype, scale=0.4):
    return tuple((scale / np.sqrt(widths[i]) * jax.random.normal(
        jax.random.key(10 + i), (runs, widths[i + 1], widths[i]), dtype)).astype(dtype)
        for i in range(len(widths) - 1))


def _method(method, task, batch=1, rate=0.03):
    """The stepper of ``method`` and its hyperparameters: momentum 0.7 with the learning rate
    ``0.3 rate``, so that its effective rate ``eta / (1 - mu)`` is SGD's."""
    if method == "sgd":
        return dy.OnlineSGD(task, batch_size=batch), dy.Hyperparameters(rate, float(batch))
    return (dy.MomentumSGD(task, batch_size=batch),
            MomentumHyperparameters(0.3 * rate, float(batch), 0.7))


METHODS = ["sgd", "momentum"]


def _run(stepper, weights, hp, kernel, steps=70, observables=("parameters", "loss"), **layout):
    recording = en.Recording([0, steps // 2, steps], observables=list(observables))
    return en.simulate(stepper, weights, hp, jax.random.key(5), recording,
                       layout=en.Layout(kernel=kernel, **layout))


def _assert_same(a, b, what):
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{what}: {name}")


CASES = [
    # regime, widths (d_in ... d_out), batch size, runs
    ("white", (12, 12, 12, 12, 12), 1, 24),             # the paper's network
    ("white_noise", (12, 12, 12, 12, 12), 1, 13),       # 13 runs: the last lanes partly filled
    ("colored", (6, 9, 4), 1, 9),
    ("colored_noise", (5, 7, 3), 3, 11),
    ("white", (4, 4, 4), 32, 8),
    ("white", (27, 27, 27), 2, 4),
    ("white", (1, 5, 1), 7, 3),
    ("colored_noise", (6, 4), 2, 10),                   # one layer
]


@needs_kernel
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("regime,widths,batch,runs", CASES)
def test_kernel_gives_the_bits_of_the_xla_step(method, dtype, regime, widths, batch, runs):
    """70 steps (a 64-step block and a 6-step rest) with the kernel and with the XLA step: the
    same parameters and losses at every record, bit for bit, and the dataset says which ran."""
    task = _task(regime, widths[0], widths[-1], dtype)
    stepper, hp = _method(method, task, batch)
    weights = _weights(widths, runs, dtype)
    compiled = _run(stepper, weights, hp, True, product="broadcast")
    xla = _run(stepper, weights, hp, False, product="broadcast")
    assert compiled.attrs["step_kernel"] == "compiled" and xla.attrs["step_kernel"] == "xla"
    assert compiled.attrs["layout_product"] == xla.attrs["layout_product"] == "broadcast"
    assert np.all(np.isfinite(compiled["parameters"].values))
    assert not np.array_equal(compiled["parameters"].values[:, -1], compiled["parameters"].values[:, 0])
    _assert_same(compiled, xla, f"{method} {regime} {widths} B={batch}")
    np.testing.assert_array_equal(compiled["diverged_step"].values, xla["diverged_step"].values)


@needs_kernel
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_diverging_runs_are_labelled_at_the_same_step(method, dtype):
    """Runs whose learning rate is far too large blow up to inf and NaN inside a block: the
    kernel labels them at the XLA step's step and keeps the other runs' bits."""
    task = _task("white", 12, 12, dtype)
    rates = np.full(10, 0.03)
    rates[[2, 7]] = [4.0, 40.0]
    stepper, hp = _method(method, task, rate=jnp.asarray(rates, dtype))
    weights = _weights((12, 12, 12, 12), 10, dtype, scale=1.0)
    compiled = _run(stepper, weights, hp, True, steps=200)
    xla = _run(stepper, weights, hp, False, steps=200)
    steps = compiled["diverged_step"].values
    assert steps[2] >= 0 and steps[7] >= 0 and np.all(np.delete(steps, [2, 7]) < 0), steps
    np.testing.assert_array_equal(steps, xla["diverged_step"].values)
    _assert_same(compiled, xla, "diverging runs")


@needs_kernel
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("width,batch", [(12, 1), (24, 2), (32, 1)])
def test_a_run_does_not_depend_on_its_group_or_the_number_of_runs(method, width, batch):
    """A run's bits are the same alone, among 3, 4 or 40 runs, in run groups of 1, 3, 4, 8 and
    40, on one device or two. Widths 24 (label noise, batch of 1 or 2) to 32 are where the XLA
    step failed this on an AVX-512 CPU, for SGD and momentum SGD alike (groups of 1-4 runs against
    8 or more, and groups of 8 against 40)."""
    task = _task("white_noise", width, width, jnp.float32)
    stepper, hp = _method(method, task, batch)
    weights = _weights((width, width, width), 40, jnp.float32)
    reference = _run(stepper, weights, hp, True, product="broadcast")["parameters"].values
    assert np.all(np.isfinite(reference))
    for runs, layout in [(1, {}), (3, {}), (4, {}), (5, {"run_group": 1}), (40, {"run_group": 3}),
                         (40, {"run_group": 4}), (40, {"run_group": 8, "parallel": False}),
                         (17, {"block_steps": 5})]:
        got = _run(stepper, tuple(w[:runs] for w in weights), hp, True, product="broadcast", **layout)
        assert got.attrs["step_kernel"] == "compiled"
        np.testing.assert_array_equal(got["parameters"].values, reference[:runs],
                                      err_msg=f"{runs} runs, {layout}")


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("widths", [(4, 6, 3), (3, 4, 2)])
def test_momentum_at_small_uneven_widths_does_not_depend_on_the_number_of_runs(widths, dtype):
    """Momentum's XLA step rounded a run differently with 1, 3, 5 or 7 runs than among 40 at
    these widths (float32 and float64, an AVX-512 CPU); the kernel keeps a run's bits."""
    task = _task("white_noise", widths[0], widths[-1], dtype)
    stepper, hp = _method("momentum", task)
    weights = _weights(widths, 40, dtype)
    reference = _run(stepper, weights, hp, True)["parameters"].values
    for runs in (1, 3, 5, 7):
        got = _run(stepper, tuple(w[:runs] for w in weights), hp, True)
        assert got.attrs["step_kernel"] == "compiled"
        np.testing.assert_array_equal(got["parameters"].values, reference[:runs], err_msg=f"{runs}")


@needs_kernel
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("width,batch,runs", [(24, 2, 4), (30, 1, 8), (32, 3, 5)])
def test_kernel_and_xla_step_agree_to_float_rounding_where_xla_reorders(method, width, batch, runs):
    """Where XLA:CPU sums ``W^T e`` in another order, two float64 steps of the kernel and of the
    XLA step agree to the conformance suite's rounding bound for reordered sums (relative 1e-12:
    a few ulps of 1.1e-16 per operation over ~10 chained operations), and a learning rate
    1e-9 larger (a real change) is outside it."""
    task = _task("white_noise", width, width, jnp.float64)
    weights = _weights((width, width, width), runs, jnp.float64)

    def params(kernel, rate=0.03):
        stepper, hp = _method(method, task, batch, rate)
        return _run(stepper, weights, hp, kernel, steps=2, product="broadcast")["parameters"].values

    compiled, xla = params(True), params(False)
    np.testing.assert_allclose(compiled, xla, rtol=1e-12, atol=1e-14)
    moved = params(True, 0.03 * (1 + 1e-9))
    assert np.max(np.abs(moved - xla) / (np.abs(xla) + 1e-14)) > 1e-12


@needs_kernel
@pytest.mark.parametrize("method", METHODS)
def test_a_kernel_that_rounds_differently_is_caught(monkeypatch, method):
    """The comparison can fail: a kernel fed a learning rate (SGD) or a momentum (momentum SGD:
    the velocity terms are compared, not only the SGD part) one float32 ulp off, one rounding of
    one operation, gives other bits, which the tests above would report."""
    task = _task("white", 12, 12, jnp.float32)
    stepper, hp = _method(method, task)
    weights = _weights((12, 12, 12, 12), 8, jnp.float32)
    xla = _run(stepper, weights, hp, False)
    name = f"online_{method}_block"
    original = getattr(kernels, name)
    position = 4 if method == "sgd" else 6               # the rate's or the momentum's argument

    def off_by_one_ulp(*args):
        args = list(args)
        args[position] = jnp.nextafter(args[position], jnp.inf)
        return original(*args)

    monkeypatch.setattr(kernels, name, off_by_one_ulp)
    jax.clear_caches()
    wrong = _run(stepper, weights, hp, True)
    assert wrong.attrs["step_kernel"] == "compiled"
    assert not np.array_equal(wrong["parameters"].values, xla["parameters"].values)
    monkeypatch.undo()
    jax.clear_caches()


@needs_kernel
@pytest.mark.parametrize("batch", [1, 3])
def test_momentum_zero_gives_the_bits_of_sgd(batch):
    """With a momentum of 0 the momentum kernel takes SGD's steps exactly (``fma(0, v, w - U) =
    w - U``), as the XLA steps do."""
    task = _task("white_noise", 12, 12, jnp.float32)
    weights = _weights((12, 12, 12, 12), 9, jnp.float32)
    sgd = _run(dy.OnlineSGD(task, batch_size=batch), weights,
               dy.Hyperparameters(0.03, float(batch)), True)
    momentum = _run(dy.MomentumSGD(task, batch_size=batch), weights,
                    MomentumHyperparameters(0.03, float(batch), 0.0), True)
    assert sgd.attrs["step_kernel"] == momentum.attrs["step_kernel"] == "compiled"
    np.testing.assert_array_equal(momentum["parameters"].values, sgd["parameters"].values)


def test_where_the_kernel_applies():
    """Online SGD and online momentum SGD with broadcast products on a network at most 32 wide
    and a batch of at most 32; never for batched products, offline SGD or momentum, other
    steppers, a subclass with its own step, or ``Layout(kernel=False)``."""
    task = _task("white", 12, 12, jnp.float32)
    weights = _weights((12, 12, 12), 2, jnp.float32)
    expected = "kernel" if kernels.available() else "broadcast"
    assert en.resolve_kernel(dy.OnlineSGD(task), weights, "broadcast", True) == expected
    assert en.resolve_kernel(dy.OnlineSGD(task, batch_size=32), weights, "broadcast", True) == expected
    assert en.resolve_kernel(dy.OnlineSGD(task), weights, "broadcast", False) == "broadcast"
    assert en.resolve_kernel(dy.OnlineSGD(task), weights, "batched", True) == "batched"
    assert en.resolve_kernel(dy.OnlineSGD(task, batch_size=33), weights, "broadcast", True) == "broadcast"
    widest = _task("white", 32, 32, jnp.float32)
    assert en.resolve_kernel(dy.OnlineSGD(widest), _weights((32, 32), 2, jnp.float32), "broadcast",
                             True) == expected
    wide = _task("white", 33, 33, jnp.float32)
    assert en.resolve_kernel(dy.OnlineSGD(wide), _weights((33, 33), 2, jnp.float32), "broadcast",
                             True) == "broadcast"
    assert en.resolve_kernel(dy.GradientDescent(task), weights, "broadcast", True) == "broadcast"
    assert en.resolve_kernel(dy.AnisotropicLangevin(task), weights, "broadcast", True) == "broadcast"
    offline = task.with_data(jax.random.key(2), 16)
    assert en.resolve_kernel(dy.OfflineSGD(offline), weights, "broadcast", True) == "broadcast"
    assert en.resolve_kernel(dy.MomentumSGD(task, batch_size=4), weights, "broadcast",
                             True) == expected
    assert en.resolve_kernel(dy.MomentumSGD(task), weights, "broadcast", False) == "broadcast"
    assert en.resolve_kernel(dy.MomentumSGD(task, batch_size=33), weights, "broadcast",
                             True) == "broadcast"
    assert en.resolve_kernel(dy.MomentumSGD(offline), weights, "broadcast", True) == "broadcast"
    assert en.resolve_kernel(dy.MomentumSGD(offline, replacement=False), weights, "broadcast",
                             True) == "broadcast"

    class TracedMomentum(dy.MomentumSGD):
        pass

    assert en.resolve_kernel(TracedMomentum(task), weights, "broadcast", True) == "broadcast"

    class NoisierSGD(dy.OnlineSGD):
        def apply(self, words, z, state, hparams):
            return super().apply(words, 2 * z, state, hparams)

    class NamedSGD(dy.OnlineSGD):      # even a subclass that changes nothing of the step
        pass

    assert en.resolve_kernel(NoisierSGD(task), weights, "broadcast", True) == "broadcast"
    assert en.resolve_kernel(NamedSGD(task), weights, "broadcast", True) == "broadcast"
    ds = _run(NoisierSGD(task), weights, dy.Hyperparameters(0.01), True, steps=4)
    assert ds.attrs["step_kernel"] == "xla"


def test_layout_kernel_must_be_a_bool():
    with pytest.raises(ValueError, match=r"^layout.kernel='yes': must be true or false$"):
        en.Layout(kernel="yes")


@needs_kernel
@pytest.mark.parametrize("method", METHODS)
def test_other_platforms_lower_to_the_xla_step(method):
    """The engine's program for a GPU (lowered here without one) scans the XLA step: no call of
    the CPU kernel, whose handler exists for the CPU only; the CPU program calls it."""
    simulate_module = importlib.import_module("dlnlab.engine.simulate")
    task = _task("white", 12, 12, jnp.float32)
    stepper, hp = _method(method, task)
    weights = tuple(jnp.zeros((12, 12, 8), jnp.float32) for _ in range(3))
    hp = jax.tree_util.tree_map(lambda x: jnp.full((8,), x, jnp.float32), hp)
    args = (stepper.init(weights), jnp.full((8,), -1, jnp.int32), jnp.zeros((2, 8), jnp.uint32),
            hp, jnp.int32(10))

    def advance(state, diverged, words, hparams, steps):
        return simulate_module._advance(stepper, state, diverged, words, hparams, steps, 64, 8,
                                        jnp.float32(1e8), "kernel")

    traced = jax.jit(advance).trace(*args)
    programs = {platform: traced.lower(lowering_platforms=(platform,)).as_text()
                for platform in ("cpu", "cuda")}
    target = f"dlnlab_online_{method}_block"
    assert target in programs["cpu"]
    assert target not in programs["cuda"]
    assert "stablehlo.while" in programs["cuda"]


@needs_kernel
def test_wrong_shapes_are_errors_not_reads_out_of_bounds():
    """The kernel checks every input before it reads or writes: a teacher that does not match
    the weights, key words for another number of runs or a negative step count raise (XLA's
    error with the kernel's message)."""
    task = _task("white", 6, 6, jnp.float32)
    other = _task("white", 5, 6, jnp.float32)                  # teacher (6, 5): d_in 5
    weights = tuple(jnp.zeros((6, 6, 8), jnp.float32) for _ in range(2))
    words = jnp.zeros((2, 8), jnp.uint32)
    rate, div = jnp.full((8,), 0.01, jnp.float32), jnp.full((8,), -1, jnp.int32)
    good = kernels.online_sgd_block(task, 1, weights, words, rate, 1e8, 0, 4, div)
    assert np.array_equal(np.asarray(good[1]), np.asarray(div))
    with pytest.raises(Exception, match="online_sgd_block: task matrices or rates of wrong shape"):
        jax.block_until_ready(kernels.online_sgd_block(other, 1, weights, words, rate, 1e8, 0, 4,
                                                       div))
    with pytest.raises(Exception, match=r"online_sgd_block: key words must be \(2, runs\)"):
        jax.block_until_ready(kernels.online_sgd_block(task, 1, weights, words[:, :7], rate, 1e8,
                                                       0, 4, div))
    with pytest.raises(Exception, match="online_sgd_block: valid steps out of range"):
        jax.block_until_ready(kernels.online_sgd_block(task, 1, weights, words, rate, 1e8, 0, -1,
                                                       div))
    velocity = tuple(jnp.zeros_like(w) for w in weights)
    mu = jnp.full((8,), 0.5, jnp.float32)
    moved = kernels.online_momentum_block(task, 1, weights, velocity, words, rate, mu, 1e8, 0, 4,
                                          div)
    assert len(moved[0]) == len(moved[1]) == 2
    with pytest.raises(Exception, match="online_momentum_block: layer shapes do not chain"):
        jax.block_until_ready(kernels.online_momentum_block(
            task, 1, weights, (velocity[0], jnp.zeros((6, 5, 8), jnp.float32)), words, rate, mu,
            1e8, 0, 4, div))


@needs_kernel
def test_the_kernels_turn_every_word_into_jaxs_normal():
    """The kernels' float32 transform (C++, XLA:CPU's erf_inv, log1p and log operations) gives
    jax.random.normal's float32 normal, bit for bit, for all 2^23 values of the 23 bits it reads
    (the other 9 bits set at random: they are ignored). A float64 evaluation of the same
    formula rounded once to float32 differs on many inputs: the comparison resolves one ulp."""
    rng = np.random.default_rng(11)
    bits = (np.arange(1 << 23, dtype=np.uint32) << 9) | rng.integers(0, 512, 1 << 23,
                                                                      dtype=np.uint32)
    ours = np.asarray(jax.jit(kernels.bits_to_normals)(bits))
    xla = np.asarray(jax.jit(lambda b: ops._bits_to_normal(b, jnp.float32))(bits))
    assert np.isfinite(ours).all()
    assert np.array_equal(ours.view(np.uint32), xla.view(np.uint32))
    u = np.maximum(2.0 * ((bits >> 9) / 2.0**23) - 1.0, np.nextafter(np.float32(-1), 0))
    rounded_once = (np.sqrt(2.0) * scipy.special.erfinv(u)).astype(np.float32)
    assert np.count_nonzero(rounded_once != ours) > 10_000


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_kernels_draw_the_engines_normals(dtype):
    """The normals the kernels draw inside the step are ``OnlineSGD.draw``'s: the counter-based
    draw of ``_ops.counter_normals`` (Threefry-2x32 of the run's key, the step and the stream),
    bit for bit, for odd and even counts, 1 to 13 runs (partly filled lanes), streams 0 and 3,
    and step counters up to the int32 wrap."""
    rng = np.random.default_rng(12)
    for runs in (1, 3, 8, 13):
        words = jnp.asarray(rng.integers(0, 2**32, (2, runs), dtype=np.uint64).astype(np.uint32))
        for count in (1, 2, 5, 12, 37):
            for first, stream in ((0, 0), (2**31 - 3, 0), (17, 3)):
                ours = kernels.online_normals(words, first, 5, count, dtype, stream)
                steps = jnp.int32(first) + jnp.arange(5, dtype=jnp.int32)
                engine = ops.counter_normals(words, steps, (count,), dtype, stream)
                assert ours.dtype == engine.dtype and ours.shape == engine.shape == (5, count, runs)
                assert np.array_equal(np.asarray(ours).view(np.uint8), np.asarray(engine).view(np.uint8)), (
                    runs, count, first)


@needs_kernel
def test_a_checkpoint_of_the_xla_step_is_not_resumed_by_the_kernel(tmp_path):
    """The two implementations can round differently, so a checkpoint written with
    ``Layout(kernel=False)`` does not match a simulation with the kernel: it starts from step
    0 and gives the kernel's own uninterrupted result (and the other way round)."""
    task = _task("white_noise", 6, 6, jnp.float32)
    stepper, hp = dy.OnlineSGD(task), dy.Hyperparameters(0.03)
    weights = _weights((6, 6, 6), 3, jnp.float32)
    recording = en.Recording([0, 10, 20, 30])
    path = tmp_path / "run.ckpt"
    for written, resumed in ((False, True), (True, False)):
        layout = dict(chunk_steps=7)

        def interrupt(done, total):
            if done >= 14:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            en.simulate(stepper, weights, hp, jax.random.key(5), recording,
                        layout=en.Layout(kernel=written, **layout), progress=interrupt,
                        checkpoint=en.Checkpoint(path, every_seconds=0.0))
        assert path.exists()
        first = []
        ds = en.simulate(stepper, weights, hp, jax.random.key(5), recording,
                         layout=en.Layout(kernel=resumed, **layout),
                         checkpoint=en.Checkpoint(path, every_seconds=0.0),
                         progress=lambda done, total, first=first: first.append(done))
        assert first[0] == 7, "resumed a checkpoint of the other implementation"
        assert ds.attrs["step_kernel"] == ("compiled" if resumed else "xla")
        assert not path.exists()

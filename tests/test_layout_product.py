"""``Layout(product=...)``: the automatic choice between broadcast and batched matrix products
(issue 15: "a layout per size, selected automatically and overridable"), and the bit-identity of
a run whatever the number of runs under the batched product.

The choice depends on the network's widths and the stepper only (``engine.resolve_product``),
so a run's bits never depend on how many runs are made; batched run groups hold at least two
runs because XLA computes a batch of one as a plain product, which rounds differently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlnlab import dynamics as dy
from dlnlab import engine as en
from dlnlab.core import Task


def _task(width, dtype=jnp.float32, num_samples=None):
    task = Task.from_spectrum(jax.random.key(1), width, width, [1.0, 0.5], dtype=dtype)
    return task if num_samples is None else task.with_data(jax.random.key(2), num_samples)


def _weights(width, depth, runs, dtype=jnp.float32):
    return tuple((0.1 / np.sqrt(width) * jax.random.normal(jax.random.key(layer), (runs, width, width),
                                                             dtype)).astype(dtype) for layer in range(depth))


@pytest.mark.parametrize("stepper,width,expected", [
    (lambda t: dy.OnlineSGD(t), 12, "broadcast"),            # the paper's task: unchanged
    (lambda t: dy.OnlineSGD(t), 24, "broadcast"),
    (lambda t: dy.OnlineSGD(t), 32, "batched"),
    (lambda t: dy.OnlineSGD(t, batch_size=32), 64, "batched"),
    (lambda t: dy.AnisotropicLangevin(t), 12, "broadcast"),
    (lambda t: dy.AnisotropicLangevin(t), 16, "batched"),
    (lambda t: dy.GradientDescent(t), 16, "broadcast"),
    (lambda t: dy.GradientDescent(t), 32, "batched"),
    (lambda t: dy.MomentumSGD(t), 32, "batched"),
    (lambda t: dy.IsotropicLangevin(t, widths=(32, 32, 32)), 32, "batched"),
])
def test_auto_product_follows_the_measured_widths(stepper, width, expected):
    st = stepper(_task(width))
    weights = _weights(width, 2, 3)
    assert en.resolve_product(st, weights) == expected
    assert en.resolve_product(st, tuple(w[0] for w in weights)) == expected   # no run axis
    for forced in ("broadcast", "batched"):                                    # overridable
        assert en.resolve_product(st, weights, forced) == forced


def test_auto_product_uses_the_widest_layer_and_never_the_number_of_runs():
    st = dy.OnlineSGD(_task(4))
    narrow = (jnp.zeros((2, 40, 4)), jnp.zeros((2, 4, 40)))          # hidden width 40
    assert en.resolve_product(st, narrow) == "batched"
    for runs in (1, 7, 300):
        assert en.resolve_product(st, _weights(12, 2, runs)) == "broadcast"
        assert en.resolve_product(st, _weights(32, 2, runs)) == "batched"


def test_offline_steppers_pick_their_product_at_the_online_widths():
    """Offline tasks take the online widths (measured offline too: batched 2.1-16.6x faster at
    width 32); the reduced SDE was not measured and stays broadcast."""
    offline = _task(32, num_samples=64)
    for stepper in (dy.OfflineSGD(offline, batch_size=4), dy.MomentumSGD(offline, batch_size=4),
                    dy.GradientDescent(offline), dy.AnisotropicLangevin(offline),
                    dy.IsotropicLangevin(offline, widths=(32, 32, 32))):
        assert en.resolve_product(stepper, _weights(32, 2, 2)) == "batched", stepper.name
        assert en.resolve_product(stepper, _weights(12, 2, 2)) == "broadcast", stepper.name
    narrow = _task(16, num_samples=64)
    assert en.resolve_product(dy.AnisotropicLangevin(narrow), _weights(16, 2, 2)) == "batched"
    assert en.resolve_product(dy.OfflineSGD(narrow, batch_size=4), _weights(16, 2, 2)) == "broadcast"
    assert en.resolve_product(dy.ReducedSDE(_task(32)), _weights(32, 2, 2)) == "broadcast"


def test_bad_product_is_one_line():
    with pytest.raises(ValueError, match=r"^layout.product='vmap': must be one of auto, broadcast, "
                                         r"batched$"):
        en.resolve_product(dy.OnlineSGD(_task(4)), _weights(4, 2, 2), "vmap")
    with pytest.raises(ValueError, match=r"^layout.parallel='yes': must be true or false$"):
        en.Layout(parallel="yes")
    with pytest.raises(ValueError, match=r"^layout.run_group=0: must be an integer >= 1$"):
        en.Layout(run_group=0)
    with pytest.raises(ValueError, match=r"^weights='0 arrays of shapes \[\]': must be one or more"):
        en.resolve_product(dy.OnlineSGD(_task(4)), [])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kind,width,depth", [("sgd", 32, 3), ("sgd_b4", 32, 3), ("sde", 16, 2)])
def test_batched_run_does_not_depend_on_the_number_of_runs(dtype, kind, width, depth):
    """Under ``"auto"`` (batched here) run i's weights after 70 steps (a 64-step block and a
    rest) are bit-identical for 1, 2, 5 and 40 runs, run groups of 1 (raised to 2) and 4, and
    one host device; and the runs moved (another key gives other weights). On an AVX2 CPU XLA's
    batched matrix-vector ``dot`` (B = 1) and ``dot`` with 4 columns (B = 4) failed this: a run's
    bits depended on its place in its group (``_ops.mv``, ``_ops.DOT_MIN_COLUMNS``)."""
    task = _task(width, dtype)
    if kind == "sgd":
        stepper, hp = dy.OnlineSGD(task), dy.Hyperparameters(0.01, 1.0)
    elif kind == "sgd_b4":
        stepper, hp = dy.OnlineSGD(task, batch_size=4), dy.Hyperparameters(0.01, 4.0)
    else:
        stepper, hp = dy.AnisotropicLangevin(task), dy.StepSizeHyperparameters(0.01, 1.0, 0.001)
    weights = _weights(width, depth, 40, dtype)
    recording = en.Recording([0, 70], observables=["parameters"])

    def final(runs, seed=0, **layout):
        ds = en.simulate(stepper, tuple(w[:runs] for w in weights), hp, jax.random.key(seed), recording,
                         layout=en.Layout(**layout))
        assert ds.attrs["layout_product"] == "batched"
        return ds["parameters"].isel(time=-1).values

    reference = final(40)
    assert np.all(np.isfinite(reference))
    for runs, layout in [(1, {}), (2, {}), (5, {}), (5, {"run_group": 1}), (5, {"run_group": 4}),
                         (40, {"run_group": 4, "parallel": False})]:
        np.testing.assert_array_equal(final(runs, **layout), reference[:runs], err_msg=f"{runs} {layout}")
    other = final(2, seed=1)
    assert not np.array_equal(other, reference[:2])
    np.testing.assert_array_equal(other[1], final(40, seed=1)[1])


@pytest.mark.parametrize("kind,outer,hidden", [("sgd_b32", 32, (4,)), ("sgd_b32", 32, (32, 8)),
                                               ("sgd_b4", 32, (4,)), ("sde", 16, (4,))])
def test_narrow_hidden_layer_keeps_a_run_independent_of_the_number_of_runs(kind, outer, hidden):
    """A wide network (batched under ``"auto"``) with a narrow hidden layer: the products that
    touch it have few columns (``U_l = e_l a_{l-1}^T`` has ``d_{l-1}`` columns), where XLA's batched
    ``dot`` can round a run by its place in its group on an AVX2 CPU. Run i's weights after 70
    steps must be the same bits for 1, 3 and 24 runs and run groups of 4 (float32).

    A guard for other CPUs and XLA versions: on the AMD Zen 4 (AVX-512) CPU of 2026-12-01 these
    cases kept their bits even with ``DOT_MIN_COLUMNS = 2`` or ``BATCHED_MIN_GROUP = 1`` (float32 and float64,
    300 steps), settings that break the square cases above."""
    dtype = jnp.float32
    task = _task(outer, dtype)
    widths = (outer, *hidden, outer)
    if kind == "sgd_b32":
        stepper, hp = dy.OnlineSGD(task, batch_size=32), dy.Hyperparameters(0.01, 32.0)
    elif kind == "sgd_b4":
        stepper, hp = dy.OnlineSGD(task, batch_size=4), dy.Hyperparameters(0.01, 4.0)
    else:
        stepper, hp = dy.AnisotropicLangevin(task), dy.StepSizeHyperparameters(0.01, 1.0, 0.001)
    weights = tuple(
        (0.5 / np.sqrt(widths[layer]) * jax.random.normal(
            jax.random.key(layer), (24, widths[layer + 1], widths[layer]), dtype)).astype(dtype)
        for layer in range(len(widths) - 1))
    recording = en.Recording([0, 70], observables=["parameters"])

    def final(runs, **layout):
        ds = en.simulate(stepper, tuple(w[:runs] for w in weights), hp, jax.random.key(0), recording,
                         layout=en.Layout(**layout))
        assert ds.attrs["layout_product"] == "batched"
        return ds["parameters"].isel(time=-1).values

    reference = final(24)
    assert np.all(np.isfinite(reference))
    for runs, layout in [(1, {}), (3, {}), (24, {"run_group": 4})]:
        np.testing.assert_array_equal(final(runs, **layout), reference[:runs], err_msg=f"{runs} {layout}")


@pytest.mark.parametrize("batch_size", [30, 31, 32])
def test_broadcast_minibatch_sum_does_not_depend_on_the_run_group(batch_size):
    """Online SGD in the broadcast layout (d = 4, L = 4, 70 steps, 12 runs): the same bits in run
    groups of 1, 2, 3, 5, 8 and 12. With the batch sum of the updates as an XLA reduction, an
    AMD Zen 4 (AVX-512) CPU gave groups of 2, 3, 5 and 8 other bits than groups of 1 and 12: XLA
    vectorised the fused sum by the group's size (``_ops.batch_outer_sum`` now adds it in one
    order; with the reduction back, this test fails there)."""
    task = _task(4)
    stepper = dy.OnlineSGD(task, batch_size=batch_size)
    hp = dy.Hyperparameters(0.05, float(batch_size))
    weights = _weights(4, 4, 12)
    recording = en.Recording([0, 70], observables=["parameters"])

    def final(group):
        ds = en.simulate(stepper, weights, hp, jax.random.key(11), recording,
                         layout=en.Layout(run_group=group, parallel=False, product="broadcast"))
        return ds["parameters"].isel(time=-1).values

    reference = final(12)
    assert np.all(np.isfinite(reference))
    assert not np.array_equal(reference, reference[::-1])          # the runs differ from each other
    for group in (1, 2, 3, 5, 8):
        np.testing.assert_array_equal(final(group), reference, err_msg=f"run_group={group}")


def test_a_batch_of_one_would_round_differently(monkeypatch):
    """Why batched groups hold two runs: without the padding a lone run (a batch of one, which XLA
    computes as a plain product) differs from the same run among others, in float32."""
    import importlib

    engine_simulate = importlib.import_module("dlnlab.engine.simulate")

    task = _task(32)
    stepper, hp = dy.OnlineSGD(task), dy.Hyperparameters(0.01, 1.0)
    weights = _weights(32, 4, 5)
    recording = en.Recording([0, 200], observables=["parameters"])

    def run_zero(runs):
        ds = en.simulate(stepper, tuple(w[:runs] for w in weights), hp, jax.random.key(0), recording)
        return ds["parameters"].isel(time=-1, run=0).values

    many = run_zero(5)
    np.testing.assert_array_equal(run_zero(1), many)
    monkeypatch.setattr(engine_simulate, "BATCHED_MIN_GROUP", 1)
    assert not np.array_equal(run_zero(1), many)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_broadcast_run_does_not_depend_on_the_number_of_runs(dtype):
    """The paper's width and depth under the CLI's XLA flags (tests/conftest.py): runs of 1, 5,
    16 and 31 runs equal the same runs of 40 bit for bit. (With XLA's YNNPACK fusion on, jax's
    default when dlnlab is used from Python without those flags, 1-31 runs differed from 32+
    by 1 ulp on these values: docs/architecture.md.)"""
    task = _task(12, dtype)
    stepper, hp = dy.OnlineSGD(task), dy.Hyperparameters(0.01, 1.0)
    weights = tuple((jax.random.normal(jax.random.key(layer), (300, 12, 12), jnp.float32) * 0.1
                     / np.sqrt(12)).astype(dtype) for layer in range(4))
    recording = en.Recording([0, 130], observables=["parameters"])
    out = {runs: en.simulate(stepper, tuple(w[:runs] for w in weights), hp, jax.random.key(0),
                             recording)["parameters"].isel(time=-1).values for runs in (1, 5, 16, 31, 40)}
    for runs in (1, 5, 16, 31):
        np.testing.assert_array_equal(out[runs], out[40][:runs], err_msg=str(runs))
    assert not np.array_equal(out[40][0], out[40][1])


def test_datasets_record_the_product():
    from dlnlab.experiments.config import validate_config
    from dlnlab.experiments.run import run_experiment

    task = _task(12)
    ds = en.simulate(dy.OnlineSGD(task), _weights(12, 2, 2), dy.Hyperparameters(0.01, 1.0),
                     jax.random.key(0), en.Recording([0, 4]))
    assert ds.attrs["layout_product"] == "broadcast"
    config = validate_config({"runs": 2, "methods": ["gd", "sgd"],
                              "task": {"d_in": 4, "d_out": 4, "hidden": [32], "spectrum": [1.0, 0.5]},
                              "training": {"horizon": 0.2}, "record": {"points": 3}})
    data = run_experiment(config)
    assert list(data.layout_product.values) == ["batched", "batched"]
    forced = run_experiment(config.model_copy(update={"product": "broadcast"}))
    assert list(forced.layout_product.values) == ["broadcast", "broadcast"]
    # which implementation computed each method's steps: SGD's broadcast steps in the compiled
    # kernel where it is built, GD and batched products always the XLA step
    from dlnlab.dynamics import kernels
    assert list(data.step_kernel.values) == ["xla", "xla"]
    assert list(forced.step_kernel.values) == ["xla", "compiled" if kernels.available() else "xla"]
    np.testing.assert_allclose(forced.loss.values, data.loss.values, rtol=1e-4)    # float32 rounding
    with pytest.raises(ValueError, match="product"):
        validate_config({"product": "vmap"})
    # the config's kernel switch: false runs SGD's XLA step (the same bits at this width)
    xla = run_experiment(config.model_copy(update={"product": "broadcast", "kernel": False}))
    assert list(xla.step_kernel.values) == ["xla", "xla"]
    np.testing.assert_array_equal(xla.loss.values, forced.loss.values)
    with pytest.raises(ValueError, match="kernel"):
        validate_config({"kernel": "yes"})


def test_fewer_runs_than_a_group_per_device_are_spread_over_the_host_devices():
    """On CPU with 2 host devices (tests/conftest.py): 64 runs run as two groups of 32, one per
    core (1.1-2.2x faster than one group on one core, docs/performance.md); 1,024 runs as groups
    of 64 (32 with batched products), balanced; broadcast groups keep at least 32 runs, batched
    ones at least 2 (a lone run padded)."""
    import importlib

    layout = importlib.import_module("dlnlab.engine.simulate")._layout
    if jax.default_backend() != "cpu" or jax.local_device_count() != 2:
        pytest.skip("written for 2 host devices on a CPU (this machine)")
    assert layout(64, None, True, batched=False) == (32, 2, 64)
    assert layout(64, None, True, batched=True) == (32, 2, 64)
    assert layout(1024, None, True, batched=False) == (64, 2, 1024)     # BROADCAST_GROUP
    assert layout(300, None, True, batched=False) == (50, 2, 300)        # 6 equal groups, no padding
    assert layout(130, None, True, batched=False) == (33, 2, 132)        # 4 groups, 2 copies
    assert layout(31, None, True, batched=False) == (31, 1, 31)          # one group of >= 32
    assert layout(5, None, True, batched=True) == (3, 2, 6)
    assert layout(1024, None, True, batched=True) == (32, 2, 1024)       # BATCHED_GROUP
    assert layout(100, None, True, batched=True) == (25, 2, 100)         # 4 equal groups, no padding
    assert layout(1, None, True, batched=True) == (2, 1, 2)              # a lone run padded
    assert layout(64, None, False, batched=False) == (64, 1, 64)         # parallel=False
    assert layout(64, 16, True, batched=False) == (16, 2, 64)            # an explicit group


def test_momentum_broadcast_groups_hold_at_least_16_runs():
    """A stepper's ``minimum_broadcast_group`` (momentum SGD: 16) pads its broadcast groups with
    copies, explicit groups included, also when another phase is batched; phases with batched
    products and the compiled kernels on CPU do not ask for it (they keep a run's bits in groups
    of any size). Each equality fails if the minimum is ignored or asked for where it is not
    needed."""
    import importlib

    simulate = importlib.import_module("dlnlab.engine.simulate")
    layout = simulate._layout
    assert layout(1, None, True, batched=False, broadcast_minimum=16) == (16, 1, 16)
    assert layout(7, None, False, batched=False, broadcast_minimum=16) == (16, 1, 16)
    assert layout(40, 8, False, batched=False, broadcast_minimum=16) == (16, 1, 48)
    assert layout(1, None, True, batched=True, broadcast_minimum=16) == (16, 1, 16)  # mixed phases
    assert layout(1, None, True, batched=False) == (1, 1, 1)
    task = Task.from_spectrum(jax.random.key(0), 3, 2, [1.0], dtype=jnp.float32)
    phases = [(None, dy.MomentumSGD(task), None), (None, dy.OnlineSGD(task), None)]
    assert simulate._broadcast_minimum(phases, ["broadcast", "broadcast"]) == 16
    assert simulate._broadcast_minimum(phases, ["batched", "broadcast"]) == 2   # a lone run padded
    assert simulate._broadcast_minimum(phases[:1], ["batched"]) == 1
    assert simulate._broadcast_minimum(phases, ["broadcast", "batched"]) == 16
    assert simulate._broadcast_minimum(phases[:1], ["kernel"]) == (
        1 if jax.default_backend() == "cpu" else 16)

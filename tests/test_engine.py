"""The simulation driver ``engine.simulate`` (runs batched on trailing axes, counter-based
randomness, chunks, checkpoints, divergence), its record schedules and its observables.

- A run is a function of (root key, run index, inputs) only: the same whatever the number of
  runs in the batch, the run offset, ``block_steps`` and ``chunk_steps``; and it equals a plain
  loop of ``stepper.step`` with the key ``fold_in(key, run_offset + i)``.
- A run interrupted and resumed from its checkpoint is bit-identical to an uninterrupted one, and
  the checkpoint is deleted at the end; a checkpoint of another simulation is not resumed from.
- A run whose loss blows up is labelled ``diverged`` at the first step whose loss exceeds the
  threshold (found independently by a float64 loop of ``w - eta core.loss.gradient``); the
  other runs finish with finite values, identical to a batch without the diverging run.
- ``time = step * h``; per-run ``h`` gives an ``elapsed`` variable.
- The recorded observables equal the core functions at the recorded states (amplitudes, cross
  modes, exact diffusion and Ito drift, losses, balance residual by hand, layer norms, singular
  values); the reduced SDE's equal those of the aligned, balanced network they stand for.

Cost: each simulate configuration (stepper structure, number of runs, ``block_steps``) compiles
once (a few seconds here); the tests share a few configurations (``RUNS`` runs of online SGD).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab import dynamics as dy
from dlnlab import engine as en
from dlnlab import theory as th

D_IN, D_OUT = 3, 2
WIDTHS = (D_IN, 4, D_OUT)
SPECTRUM = (1.0, 0.5)
RUNS = 4
LR = 0.05


def make_task(label_noise=0.5, input_covariance=None, seed=0):
    return d.Task.from_spectrum(jax.random.key(100 + seed), D_IN, D_OUT, SPECTRUM,
                                label_noise=label_noise, input_covariance=input_covariance)


def make_weights(runs, seed=0, widths=WIDTHS, scale=1.0):
    """``(runs, d_l, d_{l-1})`` Gaussian weights (LeCun scale), from NumPy."""
    rng = np.random.default_rng(200 + seed)
    return tuple(jnp.asarray(scale * rng.standard_normal((runs, o, i)) / math.sqrt(i))
                 for i, o in zip(widths[:-1], widths[1:], strict=True))


def run_slice(weights, start, stop):
    return tuple(w[start:stop] for w in weights)


def sgd_setup(runs=RUNS):
    task = make_task()
    return dy.OnlineSGD(task, batch_size=1), make_weights(runs), dy.Hyperparameters(LR)


ROOT = jax.random.key(7)
STEPS = np.array([0, 10, 23, 50])
CHUNK7 = en.Layout(chunk_steps=7)


def ckpt(path):
    """A checkpoint written at every dispatch."""
    return en.Checkpoint(path, every_seconds=0)


def assert_datasets_equal(a, b, names=None, runs=None):
    """Every recorded variable bit-identical (NaN in the same places)."""
    names = names or [k for k in a.data_vars if k != "status"]
    for k in names:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if runs is not None:
            x = x[runs]
        np.testing.assert_array_equal(x, y, err_msg=k)


# ---------------------------------------------------------------------------- reproducibility
def test_run_is_independent_of_batch_size_and_offset():
    """Runs 2 and 3 of a batch of 4 = a batch of 2 with ``run_offset=2`` (bit for bit), and the
    ``run`` coordinate carries the offset."""
    stepper, weights, hp = sgd_setup()
    full = en.simulate(stepper, weights, hp, ROOT, STEPS)
    part = en.simulate(stepper, run_slice(weights, 2, 4), hp, ROOT, STEPS, run_offset=2)
    np.testing.assert_array_equal(part.run, [2, 3])
    assert_datasets_equal(full, part, runs=slice(2, 4))
    # and the runs differ from each other
    amp = np.asarray(full.amplitude)
    assert not np.allclose(amp[0, -1], amp[1, -1])


def test_result_is_independent_of_block_chunk_and_group_sizes():
    """Pre-drawn noise blocks of 64 or 5 steps, dispatches of 16384 or 7 steps, runs advanced in
    groups of 128 (all), 2, or 3 (padded to 6 with copies of the last run): same records."""
    stepper, weights, hp = sgd_setup()
    base = en.simulate(stepper, weights, hp, ROOT, STEPS)
    for block, chunk, group in ((5, 1 << 14, 128), (64, 7, 128), (5, 7, 128), (64, 1 << 14, 2),
                                (5, 7, 3)):
        layout = en.Layout(block_steps=block, chunk_steps=chunk, run_group=group)
        other = en.simulate(stepper, weights, hp, ROOT, STEPS, layout=layout)
        assert_datasets_equal(base, other)


def test_engine_equals_a_loop_of_steps():
    """Run i of ``simulate`` = ``stepper.step`` looped with the key ``fold_in(key, offset + i)``
    from the run's weights; the records equal the core functions of the looped weights."""
    stepper, weights, hp = sgd_setup()
    ds = en.simulate(stepper, weights, hp, ROOT, STEPS)
    keys = en.run_keys(ROOT, RUNS)
    np.testing.assert_array_equal(jax.random.key_data(keys[1]),
                                  jax.random.key_data(jax.random.fold_in(ROOT, 1)))
    loop = jax.jit(lambda k, s: jax.lax.fori_loop(0, 10, lambda _, x: stepper.step(k, x, hp)[0], s))
    task = stepper.task
    for i in (0, 3):
        state = stepper.init(tuple(w[i] for w in weights))
        for _ in range(2):                                 # steps 10 and 20, then 23 by hand
            state = loop(keys[i], state)
        for _ in range(3):
            state, _ = stepper.step(keys[i], state, hp)
        assert int(state.step) == 23
        np.testing.assert_allclose(ds.cross_amplitude[i, 2],
                                   d.cross_mode_amplitudes(state.weights, task), rtol=1e-12)
        np.testing.assert_allclose(ds.loss[i, 2], d.population_loss(state.weights, task),
                                   rtol=1e-12)


def test_switch_to_another_batch_size_mid_run():
    """``schedule=[(23, SGD B=4, hparams B=4)]``: the records up to step 23 are those of the run
    without the switch (the weights at 23 too; the batch-size-dependent observables recorded at
    23 already use B = 4), and the final state equals a loop of 23 steps of B = 1 followed by 27
    steps of B = 4 with the same key and a continuing step counter. A switch that changes the
    time step fails with a one-line error."""
    stepper, weights, hp = sgd_setup()
    task = stepper.task
    b4, hp4 = dy.OnlineSGD(task, batch_size=4), dy.Hyperparameters(LR, 4.0)
    ds = en.simulate(stepper, weights, hp, ROOT, STEPS, schedule=[(23, b4, hp4)])
    base = en.simulate(stepper, weights, hp, ROOT, STEPS)
    assert_datasets_equal(base.isel(time=slice(0, 2)), ds.isel(time=slice(0, 2)))
    np.testing.assert_array_equal(base.cross_amplitude[:, 2], ds.cross_amplitude[:, 2])
    keys = en.run_keys(ROOT, RUNS)

    @jax.jit
    def loop(key, w):
        state = jax.lax.fori_loop(0, 23, lambda _, s: stepper.step(key, s, hp)[0],
                                  stepper.init(w))
        return state.weights, jax.lax.fori_loop(0, 27, lambda _, s: b4.step(key, s, hp4)[0], state)

    for i in (0, 2):
        w23, state = loop(keys[i], tuple(w[i] for w in weights))
        np.testing.assert_allclose(ds.diffusion[i, 2], d.modewise_diffusion(w23, task, LR, 4.0),
                                   rtol=1e-11)
        assert int(state.step) == 50
        np.testing.assert_allclose(ds.cross_amplitude[i, 3],
                                   d.cross_mode_amplitudes(state.weights, task), rtol=1e-11)
    assert not np.allclose(ds.amplitude[:, 3], base.amplitude[:, 3])
    with pytest.raises(ValueError) as info:
        en.simulate(stepper, weights, hp, ROOT, STEPS,
                    schedule=[(23, b4, dy.Hyperparameters(2 * LR, 4.0))])
    assert "\n" not in str(info.value) and str(info.value).startswith("switches=")


def _float32_weights(runs):
    return tuple(w.astype(jnp.float32) for w in make_weights(runs))


def test_float32_simulation_follows_float64():
    """Float32 weights and a float32 task: the simulation runs in float32 and follows the float64
    one (same float32-resolution normals in both precisions) to float32 rounding accumulated
    over 50 steps (relative 1e-4 of the amplitudes' scale)."""
    task32 = d.Task.from_spectrum(jax.random.key(100), D_IN, D_OUT, SPECTRUM, label_noise=0.5,
                                  dtype=jnp.float32)
    task64 = d.Task.from_spectrum(jax.random.key(100), D_IN, D_OUT, SPECTRUM, label_noise=0.5)
    w32 = _float32_weights(RUNS)
    ds32 = en.simulate(dy.OnlineSGD(task32), w32, dy.Hyperparameters(LR), ROOT, STEPS)
    ds64 = en.simulate(dy.OnlineSGD(task64), tuple(w.astype(jnp.float64) for w in w32),
                       dy.Hyperparameters(LR), ROOT, STEPS)
    assert ds32.amplitude.dtype == np.float32 and ds32.loss.dtype == np.float32
    np.testing.assert_allclose(ds32.amplitude, ds64.amplitude, rtol=0,
                               atol=1e-4 * float(np.abs(ds64.amplitude).max()))


def test_float32_weights_with_the_default_task():
    """``simulate``: "the weights' dtype is the simulation's dtype". Float32 weights with a task
    built in the default precision (float64 under x64) must run in float32 (or fail with a
    one-line error naming the dtypes), not crash inside ``lax.scan``."""
    stepper = dy.OnlineSGD(make_task())
    try:
        ds = en.simulate(stepper, _float32_weights(RUNS), dy.Hyperparameters(LR), ROOT, STEPS)
    except ValueError as error:                        # an explicit, one-line refusal is fine
        assert "\n" not in str(error) and "dtype" in str(error)
        return
    assert ds.amplitude.dtype == np.float32


# ---------------------------------------------------------------------------- checkpoints
class Interrupt(Exception):
    pass


def _interrupt_after(calls):
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if len(seen) == calls:
            raise Interrupt
    return progress, seen


def test_checkpoint_resume_is_bit_identical_and_removed(tmp_path):
    """Interrupted after 4 dispatches of 7 steps (a checkpoint after each), then called again:
    the result is bit-identical to an uninterrupted run, and the checkpoint file is gone."""
    stepper, weights, hp = sgd_setup()
    path = tmp_path / "run.ckpt"
    base = en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7)
    progress, seen = _interrupt_after(4)
    with pytest.raises(Interrupt):
        en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7, checkpoint=ckpt(path),
                    progress=progress)
    assert seen == [(7, 50), (10, 50), (17, 50), (23, 50)]
    assert path.exists()
    with np.load(path) as saved:                           # saved after the 3rd dispatch
        assert int(saved["position"]) == 17
    resumed_progress = []
    resumed = en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7, checkpoint=ckpt(path),
                          progress=lambda done, total: resumed_progress.append(done))
    assert resumed_progress[0] == 23                       # it did resume (not restart)
    assert_datasets_equal(base, resumed)
    assert not path.exists()
    assert not path.with_name(path.name + ".tmp").exists()


def test_checkpoint_of_another_simulation_is_not_resumed(tmp_path):
    """A checkpoint left by a simulation with another key does not match: the new simulation
    starts from step 0 and gives its own uninterrupted result."""
    stepper, weights, hp = sgd_setup()
    path = tmp_path / "run.ckpt"
    progress, _ = _interrupt_after(3)
    with pytest.raises(Interrupt):
        en.simulate(stepper, weights, hp, jax.random.key(99), STEPS, layout=CHUNK7,
                    checkpoint=ckpt(path), progress=progress)
    assert path.exists()
    done = []
    ds = en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7, checkpoint=ckpt(path),
                     progress=lambda n, total: done.append(n))
    assert done[0] == 7
    assert_datasets_equal(en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7), ds)
    assert not path.exists()


def test_checkpoint_resumed_with_all_observables(tmp_path):
    """A checkpoint written with ``observables=False`` (only the loss recorded), then the same
    simulation asked for every observable: it must either resume or start over, not crash, and
    give the uninterrupted result."""
    stepper, weights, hp = sgd_setup()
    path = tmp_path / "run.ckpt"
    progress, _ = _interrupt_after(3)
    with pytest.raises(Interrupt):
        en.simulate(stepper, weights, hp, ROOT, en.Recording(STEPS, observables=False), layout=CHUNK7,
                    checkpoint=ckpt(path), progress=progress)
    ds = en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7, checkpoint=ckpt(path))
    assert_datasets_equal(en.simulate(stepper, weights, hp, ROOT, STEPS, layout=CHUNK7), ds)


def test_checkpoint_with_other_observable_settings_is_not_mixed_in(tmp_path):
    """``coupled`` changes what is recorded (the reduced Ito drift). A checkpoint written with
    ``coupled=True`` after two records, resumed with ``coupled=False``, must not keep the
    coupled records: the result must equal an uninterrupted ``coupled=False`` run."""
    stepper, weights, hp = sgd_setup()
    path = tmp_path / "run.ckpt"
    progress, _ = _interrupt_after(3)
    with pytest.raises(Interrupt):
        en.simulate(stepper, weights, hp, ROOT, en.Recording(STEPS, coupled=True), layout=CHUNK7,
                    checkpoint=ckpt(path), progress=progress)
    ds = en.simulate(stepper, weights, hp, ROOT, en.Recording(STEPS, coupled=False), layout=CHUNK7,
                     checkpoint=ckpt(path))
    fresh = en.simulate(stepper, weights, hp, ROOT, en.Recording(STEPS, coupled=False), layout=CHUNK7)
    coupled = en.simulate(stepper, weights, hp, ROOT, en.Recording(STEPS, coupled=True), layout=CHUNK7)
    assert not np.allclose(fresh.reduced_ito_drift, coupled.reduced_ito_drift)   # not vacuous
    assert_datasets_equal(fresh, ds)


# ---------------------------------------------------------------------------- divergence
def _first_divergent_step(weights, task, lr, threshold, max_steps):
    """Independent float64 GD loop: the first k with loss(w_k) non-finite or with the excess loss
    above the threshold (loss > threshold + 0.5 tr S_eps, the noise floor)."""
    w = tuple(np.asarray(x, np.float64) for x in weights)
    floor = 0.5 * float(np.trace(np.asarray(task.label_covariance)))
    for k in range(max_steps):
        loss = float(d.population_loss(w, task))
        if not loss <= threshold + floor:
            return k
        w = tuple(x - lr * np.asarray(g) for x, g in zip(w, d.gradient(w, task), strict=True))
    return -1


def test_divergent_run_is_labelled_and_others_are_unaffected():
    """GD with per-run learning rates (0.05, 3, 0.05, 0.05): run 1 diverges at the first step
    whose loss exceeds the threshold; the other runs finish with finite records, identical to a
    batch where every run uses 0.05."""
    task = make_task()
    stepper = dy.GradientDescent(task)
    weights = make_weights(RUNS)
    lrs = np.array([LR, 3.0, LR, LR])
    steps = np.array([0, 20, 60])
    ds = en.simulate(stepper, weights, dy.Hyperparameters(lrs), ROOT, steps)
    expected = _first_divergent_step(tuple(w[1] for w in weights), task, 3.0,
                                     en.DEFAULT_DIVERGENCE_THRESHOLD, 60)
    assert 0 < expected < 60
    assert list(ds.status.values) == ["ok", "diverged", "ok", "ok"]
    np.testing.assert_array_equal(ds.diverged_step, [-1, expected, -1, -1])
    ok = [0, 2, 3]
    for k in ("loss", "amplitude", "diffusion", "ito_drift", "singular_value"):
        assert np.all(np.isfinite(np.asarray(ds[k])[ok])), k
    calm = en.simulate(stepper, weights, dy.Hyperparameters(LR), ROOT, steps)
    for k in ("loss", "amplitude", "cross_amplitude", "layer_norm"):
        np.testing.assert_array_equal(np.asarray(ds[k])[ok], np.asarray(calm[k])[ok], err_msg=k)
    assert list(calm.status.values) == ["ok"] * RUNS
    # the same when the diverging run shares a cache-blocking group with calm runs
    grouped = en.simulate(stepper, weights, dy.Hyperparameters(lrs), ROOT, steps,
                          layout=en.Layout(run_group=3))
    assert_datasets_equal(ds, grouped)


def test_huge_initialisation_diverges_at_step_zero_and_threshold_is_used():
    """A run started with weights x 1000 has loss ~1e11 at step 0 (above 1e8): diverged at 0,
    the others finish. ``divergence_threshold`` is the bound used on the excess loss: at 0 every
    run of a task without label noise (loss > 0) is labelled at step 0; with label noise, at
    threshold 0 only the runs whose minibatch loss exceeds the noise allowance are."""
    stepper, weights, hp = sgd_setup()
    big = tuple(w.at[2].multiply(1000.0) for w in weights)
    ds = en.simulate(stepper, big, hp, ROOT, STEPS)
    np.testing.assert_array_equal(ds.diverged_step, [-1, -1, 0, -1])
    assert list(ds.status.values) == ["ok", "ok", "diverged", "ok"]
    assert np.all(np.isfinite(np.asarray(ds.amplitude)[[0, 1, 3]]))
    # threshold 0 without label noise: every run is "diverged" at step 0 (its loss, > 0, exceeds it)
    quiet = dy.OnlineSGD(make_task(label_noise=None), batch_size=1)
    low = en.simulate(quiet, weights, hp, ROOT, STEPS, divergence_threshold=0.0)
    np.testing.assert_array_equal(low.diverged_step, [0] * RUNS)
    # with label noise 0.5 the minibatch loss may carry up to 200 x 0.5 tr S_eps = 50 of noise
    assert stepper.divergence_allowance() == 200 * 0.5 * 2 * 0.25
    noisy = en.simulate(stepper, weights, hp, ROOT, STEPS, divergence_threshold=0.0)
    np.testing.assert_array_equal(noisy.diverged_step, [-1] * RUNS)


# ---------------------------------------------------------------------------- schedules
def test_record_steps_every_log_and_given():
    np.testing.assert_array_equal(en.record_steps(100, every=30), [0, 30, 60, 90, 100])
    np.testing.assert_array_equal(en.record_steps(90, every=30), [0, 30, 60, 90])
    log = en.record_steps(10_000, log_points=9)
    np.testing.assert_array_equal(log, [0, 1, 3, 10, 32, 100, 316, 1000, 3162, 10_000])
    dense = en.record_steps(5, log_points=50)          # rounding duplicates are dropped
    np.testing.assert_array_equal(dense, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(en.record_steps(50, steps=[40, 5, 5, 50]), [0, 5, 40, 50])
    np.testing.assert_array_equal(en.record_steps(50, steps=[40.0, 7], include_start=False),
                                  [7, 40])
    for out in (log, dense):
        assert out.dtype == np.int64 and np.all(np.diff(out) > 0)


def test_record_steps_without_start():
    """``include_start=False`` leaves out the initial state with every schedule, ``every``
    included (its docstring lists 0, but the flag exists to drop it)."""
    np.testing.assert_array_equal(en.record_steps(100, steps=[30, 100], include_start=False),
                                  [30, 100])
    np.testing.assert_array_equal(en.record_steps(100, log_points=3, include_start=False),
                                  [1, 10, 100])
    np.testing.assert_array_equal(en.record_steps(100, every=30, include_start=False),
                                  [30, 60, 90, 100])


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_steps=0, every=1), "num_steps"),
    (dict(num_steps=10.5, every=1), "num_steps"),
    (dict(num_steps=10), "record"),
    (dict(num_steps=10, every=2, log_points=3), "record"),
    (dict(num_steps=10, every=0), "record.every"),
    (dict(num_steps=10, log_points=-1), "record.log_points"),
    (dict(num_steps=10, steps=[]), "record.steps"),
    (dict(num_steps=10, steps=[1.5]), "record.steps"),
    (dict(num_steps=10, steps=[np.nan]), "record.steps"),
    (dict(num_steps=10, steps=[11]), "record.steps"),
    (dict(num_steps=10, steps=[-1]), "record.steps"),
])
def test_record_steps_bad_input_fails_with_one_line(kwargs, name):
    num_steps = kwargs.pop("num_steps")
    with pytest.raises(ValueError) as info:
        en.record_steps(num_steps, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(name + "=")


def test_steps_for_times():
    np.testing.assert_array_equal(en.steps_for_times([0.0, 0.5, 1.25], 0.25), [0, 2, 5])
    np.testing.assert_array_equal(en.steps_for_times([0.3, 0.9], 0.1, num_steps=9), [3, 9])
    for times, h, horizon in (([0.3], 0.25, None), ([1.0], 0.1, 5)):
        with pytest.raises(ValueError) as info:
            en.steps_for_times(times, h, horizon)
        assert "\n" not in str(info.value) and str(info.value).startswith("record.times=")


@pytest.mark.parametrize("steps,name", [([5, 3], "record_steps"), ([], "record_steps"),
                                        ([-1, 4], "record_steps"), ([0, 2**31], "record_steps")])
def test_simulate_rejects_bad_record_steps(steps, name):
    stepper, weights, hp = sgd_setup()
    with pytest.raises(ValueError) as info:
        en.simulate(stepper, weights, hp, ROOT, steps)
    assert "\n" not in str(info.value) and str(info.value).startswith(name + "=")


@pytest.mark.parametrize("hp,name", [
    (dy.Hyperparameters(np.array([0.1, 0.2])), "hparams.learning_rate"),
    (dy.Hyperparameters(np.inf), "hparams.learning_rate"),
    (dy.Hyperparameters(0.1, batch_size=np.ones((RUNS, 2))), "hparams.batch_size"),
    (dy.Hyperparameters("0.1"), "hparams.learning_rate"),
    (dy.IsotropicHyperparameters(0.1, temperature=0.5), "hparams.temperature"),
    ({"learning_rate": 0.1}, "hparams"),
])
def test_simulate_rejects_bad_hyperparameters(hp, name):
    stepper, weights, _ = sgd_setup()
    with pytest.raises(ValueError) as info:
        en.simulate(stepper, weights, hp, ROOT, STEPS)
    assert "\n" not in str(info.value) and str(info.value).startswith(name + "=")


def test_schedule_switches_are_checked_up_front():
    stepper, weights, hp = sgd_setup()
    bad = [([(10, dy.OnlineSGD(stepper.task, batch_size=4))], "schedule="),
           ([(10, dy.MomentumSGD(stepper.task), dy.MomentumHyperparameters(LR, momentum=0.5))],
            "schedule='MomentumSGD'"),
           ([(10, "sgd", hp)], "schedule='str'")]
    for switches, start in bad:
        with pytest.raises(ValueError) as info:
            en.simulate(stepper, weights, hp, ROOT, STEPS, schedule=switches)
        assert "\n" not in str(info.value) and str(info.value).startswith(start), str(info.value)


def test_family_hyperparameters_need_their_own_numbers():
    """No silent defaults for a family's own numbers: plain ``Hyperparameters(eta)`` given to
    momentum SGD or isotropic Langevin is a one-line error naming the missing field; fields at
    their defaults widen silently (``Hyperparameters(eta)`` serves the SDE with ``h = eta``)."""
    task = make_task()
    weights = make_weights(RUNS)
    for stepper, name in ((dy.MomentumSGD(task), "hparams.momentum"),
                          (dy.IsotropicLangevin(task, widths=WIDTHS),
                           "hparams.temperature")):
        with pytest.raises(ValueError) as info:
            en.simulate(stepper, weights, dy.Hyperparameters(LR), ROOT, [0, 1])
        assert "\n" not in str(info.value) and str(info.value).startswith(name + "=")
        with pytest.raises(ValueError) as info:
            stepper.hyperparameters(learning_rate=LR)
        assert str(info.value).startswith(name + "=None: required")
    sde = en.simulate(dy.AnisotropicLangevin(task), weights, dy.Hyperparameters(LR), ROOT, [0, 2])
    np.testing.assert_allclose(sde.time.values, [0.0, 2 * LR])


# ---------------------------------------------------------------------------- time and observables
def test_time_coordinate_is_step_times_h():
    """SGD: ``t = step * eta``; SDE: ``t = step * h`` (step_size); per-run ``h``: ``time`` is
    the record index and ``elapsed = h_i * step`` per run."""
    stepper, weights, hp = sgd_setup()
    ds = en.simulate(stepper, weights, hp, ROOT, STEPS)
    np.testing.assert_allclose(ds.time, STEPS * LR, rtol=1e-15)
    np.testing.assert_array_equal(ds.step, STEPS)
    assert ds.amplitude.dims == ("run", "time", "mode")
    assert ds.cross_amplitude.dims == ("run", "time", "mode", "mode2")
    assert ds.sizes["run"] == RUNS and ds.sizes["mode"] == min(D_IN, D_OUT)
    sde = dy.AnisotropicLangevin(stepper.task)
    one_h = en.simulate(sde, weights, dy.StepSizeHyperparameters(LR, step_size=0.01), ROOT, STEPS)
    np.testing.assert_allclose(one_h.time, STEPS * 0.01, rtol=1e-15)
    per_run_h = np.array([0.01, 0.02, 0.01, 0.005])
    many = en.simulate(sde, weights, dy.StepSizeHyperparameters(LR, step_size=per_run_h), ROOT, STEPS)
    np.testing.assert_allclose(many.elapsed, per_run_h[:, None] * STEPS[None, :], rtol=1e-15)
    # run 0 has the same h in both: identical records
    np.testing.assert_array_equal(many.amplitude[0], one_h.amplitude[0])


def _balance_by_hand(weights):
    out = []
    for w, w_next in zip(weights[:-1], weights[1:], strict=True):
        left, right = w @ w.T, w_next.T @ w_next
        out.append(np.linalg.norm(left - right) / (np.linalg.norm(left) + np.linalg.norm(right)))
    return np.array(out)


@pytest.mark.parametrize("regime", ["online", "colored", "offline_epochs"])
def test_observables_at_step_zero_equal_core_functions(regime):
    """Records at step 0 against ``core`` (per run, per-run learning rates and batch sizes):
    amplitudes, cross modes, the exact modewise diffusion and Ito drift, gradient-flow drift,
    training and test loss, balance residual by hand, layer norms, singular values; the reduced
    closed forms at the amplitudes online (NaN where they do not apply); the opt-in
    ``parameters``, layer after layer with column-stacking ``vec``."""
    rng = np.random.default_rng(5)
    if regime == "online":
        task = make_task()
    elif regime == "colored":
        a = rng.standard_normal((D_IN, D_IN))
        task = make_task(input_covariance=a @ a.T / D_IN + 0.5 * np.eye(D_IN))
    else:
        task = make_task().with_data(jax.random.key(3), 9)
    replacement = regime != "offline_epochs"
    stepper = (dy.OnlineSGD(task) if task.online
               else dy.OfflineSGD(task, batch_size=1, replacement=replacement))
    weights = make_weights(RUNS, seed=1)
    lrs, batches = np.array([0.05, 0.1, 0.02, 0.07]), np.array([1.0, 2.0, 4.0, 3.0])
    everything = en.Recording([0, 3], observables=tuple(dy.OBSERVABLE_DIMS))    # + opt-in ones
    ds = en.simulate(stepper, weights, dy.Hyperparameters(lrs, batches), ROOT,
                     everything).isel(time=0)
    assert ds.parameters.dims == ("run", "parameter")
    for i in range(RUNS):
        w = tuple(x[i] for x in weights)
        lr, b = lrs[i], batches[i]

        def close(name, value, i=i):
            np.testing.assert_allclose(ds[name][i], value, rtol=1e-11, atol=1e-14, err_msg=name)

        close("amplitude", d.mode_amplitudes(w, task))
        close("cross_amplitude", d.cross_mode_amplitudes(w, task))
        close("diffusion", d.modewise_diffusion(w, task, lr, b, replacement))
        close("ito_drift", d.ito_drift(w, task, lr, b, replacement))
        close("gf_drift", d.gradient_flow_mode_drift(w, task))
        close("loss", d.training_loss(w, task))
        close("test_loss", d.population_loss(w, task))
        wn = tuple(np.asarray(x) for x in w)
        close("balance_residual", _balance_by_hand(wn))
        close("layer_norm", [np.linalg.norm(x) for x in wn])
        close("singular_value", np.linalg.svd(wn[1] @ wn[0], compute_uv=False))
        close("parameters", np.concatenate([x.T.ravel() for x in wn]))   # column-stacking vec
        if regime == "online":
            amp, s = np.asarray(d.mode_amplitudes(w, task)), np.asarray(task.spectrum)
            close("reduced_diffusion", th.reduced_diffusion(amp, s, 2, lr, b, 0.5))
            close("reduced_ito_drift", th.reduced_ito_drift(amp, s, 2, lr, b, 0.5))
            close("reduced_gf_drift", th.gradient_flow_drift(amp, s, 2))
        else:
            assert np.all(np.isnan(ds.reduced_diffusion[i]))


def test_parameters_are_recorded_only_when_named():
    """The default recording (every observable) leaves out the opt-in ``parameters``; naming it
    records ``theta`` per run with dims ``(run, time, parameter)``; the reduced SDE, whose state
    is not weights, refuses it with one line before any step."""
    assert "parameters" in dy.OBSERVABLE_DIMS
    assert "parameters" not in dy.observable_names(None)
    assert "parameters" not in en.Recording([0, 1]).observables
    assert set(dy.observable_names(None)) == set(dy.OBSERVABLE_DIMS) - {"parameters"}
    stepper = dy.OnlineSGD(make_task())
    weights = make_weights(2)
    default = en.simulate(stepper, weights, dy.Hyperparameters(LR, 1.0), ROOT, [0, 2])
    assert "parameters" not in default and "singular_value" in default
    named = en.simulate(stepper, weights, dy.Hyperparameters(LR, 1.0), ROOT,
                        en.Recording([0, 2], observables=["loss", "parameters"]))
    assert named.parameters.dims == ("run", "time", "parameter")
    assert named.parameters.shape == (2, 2, sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True)))
    np.testing.assert_array_equal(named.loss, default.loss)
    with pytest.raises(ValueError, match=r"^observables='parameters': not defined for the reduced"):
        en.simulate(dy.ReducedSDE(make_task(), depth=2), (jnp.ones((2, 2)),),
                    dy.Hyperparameters(LR, 1.0), ROOT,
                    en.Recording([0, 2], observables=["amplitude", "parameters"]))


def test_reduced_sde_observables_are_those_of_its_aligned_balanced_network():
    """The reduced SDE's records at step 0 equal the core observables of the aligned, balanced
    network with those amplitudes (``core.weights.init_aligned``): cross modes ``diag(a)``,
    exact diffusion and Ito drift, balance residual 0, layer norms, singular values, losses."""
    task = make_task()
    depth, widths = 3, (D_IN, 4, 3, D_OUT)
    amps = np.array([[0.3, 0.1], [0.8, 0.02], [0.5, 0.4]])
    lrs = np.array([0.05, 0.1, 0.02])
    stepper = dy.ReducedSDE(task, depth=depth)
    ds = en.simulate(stepper, (jnp.asarray(amps),), dy.Hyperparameters(lrs, 2.0), ROOT, [0, 2])
    assert ds.amplitude.dims == ("run", "time", "mode")
    for i, a in enumerate(amps):
        w = d.init_aligned(task, a, widths, key=jax.random.key(i))
        rec = ds.isel(run=i, time=0)

        def close(name, value, rec=rec):
            np.testing.assert_allclose(rec[name], value, rtol=1e-10, atol=1e-14, err_msg=name)

        close("amplitude", a)
        close("cross_amplitude", d.cross_mode_amplitudes(w, task))
        close("diffusion", d.modewise_diffusion(w, task, lrs[i], 2.0))
        close("ito_drift", d.ito_drift(w, task, lrs[i], 2.0))
        close("gf_drift", d.gradient_flow_mode_drift(w, task))
        close("loss", d.population_loss(w, task))
        close("test_loss", d.population_loss(w, task))
        close("balance_residual", np.zeros(depth - 1))
        close("layer_norm", [np.linalg.norm(np.asarray(x)) for x in w])
        close("singular_value", np.linalg.svd(np.asarray(d.end_to_end(w)), compute_uv=False))

"""Every stepper against the contract ``step(key, state, hparams) -> (state, info)`` and against
its deterministic limits (docs/theory.md §4; ``dynamics/steppers.py``).

Contract (every stepper in ``CASES``: GD and gradient flow, online SGD with B = 1 and B = 3 with
and without label noise on whitened and correlated inputs, offline SGD with and without
replacement, the anisotropic SDE online / correlated / offline with ``path_substeps`` 1 and 4,
isotropic Langevin, the reduced SDE coupled and decoupled):

- shapes and dtypes are kept in float32 and float64, the step counter is int32 and counts steps;
- float32 agrees with float64 (the steppers draw float32-resolution normals in both precisions,
  so the two follow the same noise and differ by rounding only);
- ``jax.vmap`` of the single-run step over a leading run axis equals the runs-on-trailing-axes
  layout, per-run hyperparameters included; eager single runs equal their run of the compiled
  batch (one case per code path);
- under ``jax.jit`` with the stepper itself as an argument, a call with new numbers (keys,
  weights, hyperparameters, counter, teacher) does not retrace (a Python side-effect counter);
- same key gives the same result, another key (or another step counter) another result for every
  run of the stochastic steppers, and the key is ignored by the deterministic ones;
- ``apply`` of the slices of one block ``draw`` (the engine's path) equals ``step``;
- one-line errors for impossible configurations.

Laws and deterministic limits: one anisotropic EM step has the noise covariance
``h eta Sigma c`` of ``core.noise`` (online, correlated, offline with and without replacement,
any ``path_substeps``), isotropic Langevin ``2 T h I``, the reduced SDE its §6 drift and
diffusion; the SDE without noise is GD bit for bit; offline SGD with B = n without replacement
is GD; online SGD at B = 2000 is GD within the minibatch standard error
(``noise_covariance / B``), and its one-step noise has that covariance; GD is
``w - eta grad L``; RK4 is fourth order; the SGD step is ``core.loss.minibatch_gradient`` on the
samples rebuilt from ``counter_normals``; offline batches are uniform (with replacement) or
partition each epoch (without replacement).

Cost: compiling dominates. Each (case, precision) compiles one function that does the
runs-minor two-step update and, in float64, the vmapped one and the engine's draw-then-apply
path (``_bundle``); it is cached and shared by the tests of that case.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from conftest import K_SIGMA, assert_close_mc, assert_rejected_mc, check_covariance_mc
from dlnlab import dynamics as dy
from dlnlab.dynamics import _ops as ops
from dlnlab.theory import reduced as th_reduced

D_IN, D_OUT = 3, 2
WIDTHS = (D_IN, 4, D_OUT)
SPECTRUM = (1.0, 0.5)
NUM_DATA = 7
RUNS = 3
LABEL_NOISE = 0.5
# float64 transformed (vmap / runs-minor / jit) against untransformed: the products are summed in
# a different order (broadcast-and-sum against dot), a few ulps (1.1e-16) per operation over
# ~10 chained operations of O(1) numbers.
F64_RTOL = 1e-12
# float32 against float64 on the same float32-representable inputs and the same normals: two steps
# of ~10 chained products of length <= 4 with O(1) terms: a few tens of float32 ulps (6e-8).
F32_RTOL = 2e-5


# ---------------------------------------------------------------------------- inputs
@functools.cache
def make_task(regime: str, dtype_name: str = "float64", seed: int = 0) -> d.Task:
    """``white`` / ``white_noise`` (label noise 0.5) / ``colored`` / ``colored_noise`` (correlated
    inputs) / ``offline`` (7 samples, label noise). Every number is float32-representable and
    the same in both precisions (the data set is built here, not drawn in the task's dtype)."""
    dtype = jnp.dtype(dtype_name)
    rng = np.random.default_rng(1000 + seed)
    label = LABEL_NOISE if regime in ("white_noise", "colored_noise", "offline") else None
    cov = None
    if regime.startswith("colored"):
        a = rng.standard_normal((D_IN, D_IN))
        cov = (a @ a.T / D_IN + 0.5 * np.eye(D_IN)).astype(np.float32)
    key = jax.random.key(2000 + seed)
    task = d.Task.from_spectrum(key, D_IN, D_OUT, SPECTRUM, label_noise=label,
                                input_covariance=cov, dtype=dtype)
    if regime == "offline":
        teacher = np.asarray(d.Task.from_spectrum(key, D_IN, D_OUT, SPECTRUM).teacher)
        x = rng.standard_normal((NUM_DATA, D_IN))
        y = x @ teacher.T + LABEL_NOISE * rng.standard_normal((NUM_DATA, D_OUT))
        task = task.with_dataset(x.astype(np.float32), y.astype(np.float32))
    return task


# The cases come from the method registry: every registered method brings its own
# (``Method.conformance``), so a new method is tested here without editing this file.
CASE_METHOD = {case.name: method for method in dy.METHODS for case in method.conformance}
CASES = {case.name: (case.regime, case.make, case.hparams, case.stochastic)
         for method in dy.METHODS for case in method.conformance}


def methods_without_cases(methods) -> list[str]:
    """Registered methods that bring no conformance case (must be none)."""
    return [m.name for m in methods if not m.conformance]


def test_every_registered_method_has_conformance_cases():
    assert methods_without_cases(dy.METHODS) == []
    assert {m.name for m in CASE_METHOD.values()} == set(dy.method_names())
    assert len(CASES) == sum(len(m.conformance) for m in dy.METHODS)   # names are unique
    # the check has teeth: a method registered without cases is reported
    import dataclasses
    broken = dataclasses.replace(dy.get_method("sgd"), name="untested", conformance=())
    assert methods_without_cases((*dy.METHODS, broken)) == ["untested"]


CASE_NAMES = tuple(CASES)
DTYPES = ("float64", "float32")


def _is_reduced(name):
    return CASE_METHOD[name].state == "amplitudes"


def make_stepper(name, dtype_name="float64", seed=0):
    regime, factory, _, _ = CASES[name]
    return factory(make_task(regime, dtype_name, seed))


def make_hparams(name, runs: int | None, dtype_name="float64", seed=0):
    """The case's hyperparameters (the stepper family's type); with ``runs``, every leaf an
    array of shape ``(runs,)`` with different values per run (a sweep), else the values of run 0
    as scalars."""
    base = dict(CASES[name][2])
    kind = make_stepper(name, dtype_name, seed).hyperparameters_type
    spread = np.array([1.0, 0.5, 2.0, 0.75, 1.5])[:runs or 1] * (1.0 + 0.1 * seed)
    momentum_spread = np.array([1.0, 0.5, 0.25, 0.75, 0.1])[:runs or 1]
    dtype = np.dtype(dtype_name)
    out = {}
    for field in kind._fields:
        default = kind._field_defaults.get(field)
        if base.get(field, default) is None:
            continue
        factor = (spread if field in ("learning_rate", "step_size", "temperature") else
                  momentum_spread if field == "momentum" else np.ones_like(spread))
        value = base.get(field, default) * factor
        out[field] = jnp.asarray(value if runs else value[0], dtype)
    return kind(**out)


def _extras(state) -> dict:
    """The state's typed fields beyond ``weights`` and ``step`` (permutation, velocity)."""
    return {f: getattr(state, f) for f in state._fields if f not in ("weights", "step")}


def make_weights(name, runs: int | None, dtype_name="float64", seed=0):
    """Single-run weights ``(d_l, d_{l-1})`` (``runs=None``) or a leading run axis; float32
    representable. Reduced SDE: ``((r,),)`` amplitudes in (0.05, 0.8)."""
    rng = np.random.default_rng(3000 + seed)
    lead = () if runs is None else (runs,)
    if _is_reduced(name):
        a = rng.uniform(0.05, 0.8, lead + (min(D_IN, D_OUT),))
        return (jnp.asarray(a.astype(np.float32), dtype_name),)
    return tuple(jnp.asarray((rng.standard_normal(lead + (o, i)) / math.sqrt(i)).astype(np.float32),
                             dtype_name)
                 for i, o in zip(WIDTHS[:-1], WIDTHS[1:], strict=True))


def make_keys(runs: int | None, seed=0):
    key = jax.random.key(4000 + seed)
    return key if runs is None else jax.random.split(key, runs)


def _two_steps(stepper, key, state, hparams):
    """Two steps (a scan, so the step is compiled once): the final state and both losses."""
    def body(st, _):
        new, info = stepper.step(key, st, hparams)
        return new, info.loss
    return jax.lax.scan(body, state, None, length=2)


def _vmapped(stepper, keys, weights_lead, hparams_runs, start):
    """``jax.vmap`` of the single-run step over a leading run axis of weights, keys, hparams."""
    def one(key, weights, hp):
        return _two_steps(stepper, key, stepper.init(weights)._replace(step=start), hp)
    return jax.vmap(one)(keys, weights_lead, hparams_runs)


def _batched(stepper, keys, weights_lead, hparams_runs, start):
    """The engine's layout: runs on the trailing axes of every weight."""
    state = stepper.init(tuple(jnp.moveaxis(w, 0, -1) for w in weights_lead))
    return _two_steps(stepper, keys, state._replace(step=start), hparams_runs)


def _engine_path(stepper, keys, weights_lead, hparams_runs, start):
    """The engine's path: draw the randomness of counters ``start, start + 1`` in one block,
    then ``apply`` each step's slice (runs-minor layout)."""
    words = ops.key_words(keys)
    counters = start + jnp.arange(2, dtype=jnp.int32)
    block = stepper.draw(words, counters, weights_lead[0].dtype)
    state = stepper.init(tuple(jnp.moveaxis(w, 0, -1) for w in weights_lead))

    def body(st, noise):
        new, info = stepper.apply(words, noise, st, hparams_runs)
        return new, info.loss

    applied = jax.lax.scan(body, state._replace(step=start), block, length=2)
    return block is None, applied


@functools.cache
def _bundle(name: str, dtype_name: str):
    """One case in one compiled function, with a trace counter (returns the function and its
    list of traces): two steps in the runs-minor layout, and in float64 also under ``vmap`` of
    the single-run step and along the engine's draw-then-apply path."""
    traces = []

    @jax.jit
    def run(stepper, keys, weights_lead, hp_runs, start):
        traces.append(1)                   # a Python side effect: runs once per trace
        out = dict(batched=_batched(stepper, keys, weights_lead, hp_runs, start))
        if dtype_name == "float64":
            out["vmap"] = _vmapped(stepper, keys, weights_lead, hp_runs, start)
            out["engine"] = _engine_path(stepper, keys, weights_lead, hp_runs, start)
        return out

    return run, traces


def _bundle_inputs(name, dtype_name, seed):
    return (make_stepper(name, dtype_name, seed), make_keys(RUNS, seed),
            make_weights(name, RUNS, dtype_name, seed), make_hparams(name, RUNS, dtype_name, seed))


@functools.cache
def _bundle_result(name, dtype_name, seed=0, key_seed=None, start=0):
    """The bundle on the inputs of ``seed`` (keys of ``key_seed`` if given), counter ``start``."""
    run, _ = _bundle(name, dtype_name)
    stepper, keys, weights, hp_runs = _bundle_inputs(name, dtype_name, seed)
    if key_seed is not None:
        keys = make_keys(RUNS, key_seed)
    out = run(stepper, keys, weights, hp_runs, jnp.int32(start))
    return jax.tree.map(np.asarray, out)


def _runs_first(tree):
    """Batched (runs-minor) results with the run axis moved to the front."""
    (state, loss) = tree                                   # loss: (2 steps, runs)
    weights = tuple(np.moveaxis(w, -1, 0) for w in state.weights)
    extra = jax.tree.map(lambda x: np.moveaxis(x, -1, 0), _extras(state))
    return weights, np.moveaxis(loss, -1, 0), extra


def _assert_trees_close(actual, expected, rtol, what):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
        if np.issubdtype(e.dtype, np.integer) or rtol == 0:
            np.testing.assert_array_equal(a, e, err_msg=what)
        else:
            scale = max(np.abs(e).max(), 1e-300)
            np.testing.assert_allclose(a, e, rtol=0, atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------------------- contract
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_shapes_dtypes_and_step_counter(name, dtype_name):
    """Abstract evaluation (nothing compiled): weights keep shape and dtype in every layout, the
    loss has the run shape and the weights' dtype, the counter is int32 and counts steps."""
    stepper = make_stepper(name, dtype_name)
    for runs in (None, RUNS):
        weights = make_weights(name, runs, dtype_name)
        if runs is not None:
            weights = tuple(jnp.moveaxis(w, 0, -1) for w in weights)
        state = stepper.init(weights)
        assert state.step.dtype == jnp.int32 and int(state.step) == 0
        out, loss = jax.eval_shape(functools.partial(_two_steps, stepper), make_keys(runs), state,
                                   make_hparams(name, runs, dtype_name))
        run_shape = () if runs is None else (RUNS,)
        assert [(w.shape, w.dtype) for w in out.weights] == [(w.shape, w.dtype) for w in weights]
        assert loss.shape == (2,) + run_shape and loss.dtype == jnp.dtype(dtype_name)
        assert out.step.shape == () and out.step.dtype == jnp.int32
        assert type(out) is type(state)
        assert jax.tree.structure(_extras(out)) == jax.tree.structure(_extras(state))
        for new, old in zip(jax.tree.leaves(_extras(out)), jax.tree.leaves(_extras(state)),
                            strict=True):
            assert (new.shape, new.dtype) == (old.shape, old.dtype)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_step_counter_counts(name):
    """Concretely, in every layout: two steps from counter 0 end at 2, from counter 7 at 9."""
    for start in (0, 7):
        result = _bundle_result(name, "float64", start=start)
        assert int(result["batched"][0].step) == start + 2
        assert int(result["engine"][1][0].step) == start + 2
        np.testing.assert_array_equal(result["vmap"][0].step, start + 2)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_vmap_equals_runs_minor_layout(name):
    """Leading-axis ``jax.vmap`` of the single-run step = trailing-axis batched layout, with
    per-run hyperparameters, float64, after two steps (so the counter-based stream moves)."""
    result = _bundle_result(name, "float64")
    vm_state, vm_loss = result["vmap"]
    weights, loss, extra = _runs_first(result["batched"])
    _assert_trees_close(weights, vm_state.weights, F64_RTOL, f"{name}: vmap vs batched weights")
    _assert_trees_close(loss, vm_loss, F64_RTOL, f"{name}: vmap vs batched loss")
    _assert_trees_close(extra, _extras(vm_state), F64_RTOL, f"{name}: vmap vs batched extras")
    # The runs really differ (different keys and hyperparameters): no accidental broadcasting.
    assert not np.allclose(weights[0][0], weights[0][1])


# Eager execution compiles every primitive separately (seconds per case on this machine): one
# case per code path (matrix-vector B = 1 vs batched B > 1 products, the substep sum, the
# epoch ``lax.cond``, the reduced SDE's mode-last layout).
EAGER_CASES = ("sgd_b1", "sgd_b3_colored", "sde_online_substeps4", "offline_sgd_epochs",
               "reduced_coupled")


@pytest.mark.parametrize("name", EAGER_CASES)
def test_single_run_eager_matches_compiled_batch(name):
    """Two eager steps of one run (``R = ()``: plain matrices) equal run 0 of the compiled
    runs-minor batch (float64)."""
    stepper, keys = make_stepper(name), make_keys(RUNS)
    hp = jax.tree.map(lambda x: x[0], make_hparams(name, RUNS))
    state = stepper.init(tuple(w[0] for w in make_weights(name, RUNS)))   # the bundle's run 0
    losses = []
    for _ in range(2):
        state, info = stepper.step(keys[0], state, hp)
        losses.append(info.loss)
    weights, loss, _ = _runs_first(_bundle_result(name, "float64")["batched"])
    _assert_trees_close([w[0] for w in weights], state.weights, F64_RTOL, f"{name}: eager run 0")
    _assert_trees_close(loss[0], np.array(losses), F64_RTOL, f"{name}: eager loss")
    assert int(state.step) == 2


@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_retrace_with_new_numbers(name):
    """A call with new keys, weights, hyperparameters, counter and a new teacher (same
    structure: the stepper is a pytree whose task is data) reuses the compilation."""
    _, traces = _bundle(name, "float64")
    first = _bundle_result(name, "float64", 0)
    second = _bundle_result(name, "float64", 1, start=3)
    assert len(traces) == 1
    assert not np.allclose(first["batched"][0].weights[0], second["batched"][0].weights[0])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_float32_follows_float64(name):
    """Same inputs (float32-representable) and the same normals in both precisions: the float32
    result is the float64 result to float32 rounding."""
    r64, r32 = _bundle_result(name, "float64"), _bundle_result(name, "float32")
    assert all(w.dtype == np.float32 for w in r32["batched"][0].weights)
    assert r32["batched"][1].dtype == np.float32
    _assert_trees_close(_runs_first(r32["batched"])[0], _runs_first(r64["batched"])[0], F32_RTOL,
                        f"{name}: float32 vs float64 (batched)")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_keys_and_counters_drive_the_randomness(name):
    """Same key and state -> identical result; another key, or the same key at another step
    counter -> another result for every run (stochastic steppers). Deterministic steppers ignore
    the key."""
    stochastic = CASES[name][3]
    # Offline SGD draws one of finitely many batches: two keys may pick the same with positive
    # probability, so only "some run moved" is required of it.
    continuous = stochastic and not name.startswith("offline_sgd")
    run, _ = _bundle(name, "float64")
    base = _bundle_result(name, "float64")["batched"][0].weights
    again = jax.tree.map(np.asarray, run(*_bundle_inputs(name, "float64", 0), jnp.int32(0)))
    _assert_trees_close(again["batched"][0].weights, base, 0.0, f"{name}: same key")
    other_key = _bundle_result(name, "float64", key_seed=5)["batched"][0].weights
    # starting at counter 7 from the same weights: the first step draws counter 7, not 0
    other_counter = _bundle_result(name, "float64", start=7)["batched"][0].weights
    for other, what in ((other_key, "another key"), (other_counter, "another step counter")):
        moved = np.array([[not np.allclose(a[..., i], b[..., i]) for i in range(RUNS)]
                          for a, b in zip(base, other, strict=True)]).any(axis=0)
        if continuous:
            assert moved.all(), f"{name}: {what}: runs {np.nonzero(~moved)[0]} unchanged"
        elif stochastic:
            assert moved.any(), f"{name}: {what} gives the same steps"
        else:
            _assert_trees_close(other, base, 0.0, f"{name}: {what} changes a deterministic step")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_engine_path_draw_then_apply_equals_step(name):
    """``apply`` of each step's slice of a block ``draw`` over counters (the engine's path)
    equals ``step``, which draws per counter (bit for bit), so the block's slices are the
    per-step draws. Only deterministic steppers and offline epochs (permutation drawn inside
    ``apply``) draw nothing."""
    result = _bundle_result(name, "float64", start=10)
    draws_nothing, applied = result["engine"]
    stepper = make_stepper(name)
    epochs = CASE_METHOD[name].minibatch and not stepper.task.online and not stepper.replacement
    assert bool(draws_nothing) == (not CASES[name][3] or epochs)
    _assert_trees_close(applied, result["batched"], 0.0, f"{name}: apply(draw) vs step")


# ---------------------------------------------------------------------------- deterministic limits
@jax.jit
def _one_step(stepper, keys, weights, hp):
    state, info = stepper.step(keys, stepper.init(weights), hp)
    return state.weights, info.loss


@pytest.mark.parametrize("regime", ["white_noise", "colored_noise", "offline"])
def test_sde_without_noise_is_gradient_descent_exactly(regime):
    """``learning_rate = 0`` in the noise, ``step_size = h``: the anisotropic EM step is the GD
    step with learning rate ``h``, bit for bit (``h`` a power of two, so ``h (A^T G B^T)`` and
    ``A^T (h G) B^T`` round identically). Likewise isotropic Langevin at temperature 0."""
    task = make_task(regime)
    h = 0.125
    weights = tuple(jnp.moveaxis(w, 0, -1) for w in make_weights("gd", RUNS))
    keys = make_keys(RUNS)
    gd, gd_loss = _one_step(dy.GradientDescent(task), keys, weights,
                            dy.Hyperparameters(learning_rate=h))
    steppers = [dy.AnisotropicLangevin(task), dy.AnisotropicLangevin(task, path_substeps=4)]
    if task.online:
        steppers.append(dy.IsotropicLangevin(task, widths=WIDTHS))
    for stepper in steppers:
        hp = dy.IsotropicHyperparameters(learning_rate=0.0, step_size=h, temperature=0.0)
        out, loss = _one_step(stepper, keys, weights, hp)
        for a, b in zip(out, gd, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=type(stepper).__name__)
        np.testing.assert_array_equal(loss, gd_loss)
    # with noise (eta > 0) the steps differ: the comparison is not vacuous
    noisy, _ = _one_step(steppers[0], keys, weights, dy.StepSizeHyperparameters(0.1, step_size=h))
    assert not np.allclose(noisy[0], gd[0])


def test_gd_step_is_the_core_gradient():
    """``w <- w - eta grad L`` with ``core.loss.gradient`` (population online, empirical
    offline, correlated inputs), for every run of a batch with per-run learning rates."""
    lrs = np.array([0.1, 0.05, 0.2])
    weights = make_weights("gd", RUNS)
    for regime in ("white_noise", "colored_noise", "offline"):
        task = make_task(regime)
        stepper = dy.GradientDescent(task)
        out, info = stepper.step(make_keys(RUNS), stepper.init(tuple(jnp.moveaxis(w, 0, -1)
                                                                     for w in weights)),
                                 dy.Hyperparameters(learning_rate=jnp.asarray(lrs)))
        for i in range(RUNS):
            w = tuple(x[i] for x in weights)
            grads = d.gradient(w, task)
            expected = tuple(x - lrs[i] * g for x, g in zip(w, grads, strict=True))
            _assert_trees_close([np.asarray(x)[..., i] for x in out.weights], expected, F64_RTOL,
                                f"{regime} run {i}")
            assert float(info.loss[i]) == pytest.approx(float(d.training_loss(w, task)),
                                                        rel=F64_RTOL)


def test_reduced_sde_without_noise_is_euler_on_the_gradient_flow_drift():
    """Reduced SDE with ``eta = 0``: ``a <- a + h L |a|^(2-2/L) (s - a)`` (docs/theory.md §6, by hand)."""
    task = make_task("white_noise")
    s = np.asarray(task.spectrum)
    a = np.array([0.3, 0.1])
    for depth in (1, 2, 3):
        for coupled in (True, False):
            stepper = dy.ReducedSDE(task, depth=depth, coupled=coupled)
            out, _ = stepper.step(make_keys(None), stepper.init((jnp.asarray(a),)),
                                  dy.StepSizeHyperparameters(learning_rate=0.0, step_size=0.05))
            expected = a + 0.05 * depth * np.abs(a) ** (2 - 2 / depth) * (s - a)
            np.testing.assert_allclose(out.weights[0], expected, rtol=1e-14)


def test_offline_sgd_full_batch_without_replacement_is_gd():
    """B = n without replacement: every step uses the whole data set (in a permuted order), so
    offline SGD is full-batch GD over several epochs (float64, summation order aside)."""
    task = make_task("offline")
    weights = make_weights("gd", RUNS)
    w = tuple(jnp.moveaxis(x, 0, -1) for x in weights)
    sgd = dy.OfflineSGD(task, batch_size=NUM_DATA, replacement=False)
    gd = dy.GradientDescent(task)
    hp = dy.Hyperparameters(learning_rate=jnp.asarray([0.1, 0.05, 0.2]))

    def loop(stepper, state):
        return jax.lax.fori_loop(0, 6, lambda _, s: stepper.step(make_keys(RUNS), s, hp)[0], state)

    a = jax.jit(loop)(sgd, sgd.init(w))
    b = jax.jit(loop)(gd, gd.init(w))
    _assert_trees_close(a.weights, b.weights, 1e-12, "offline SGD B = n vs GD")
    assert int(a.step) == 6
    # and the batches were permutations of the data set
    assert sorted(np.asarray(a.permutation)[:, 0].tolist()) == list(range(NUM_DATA))


@pytest.mark.parametrize("regime", ["white_noise", "colored_noise"])
def test_online_sgd_with_a_huge_batch_is_gd_within_the_standard_error(regime):
    """B = 2000: SGD - GD = -eta (mean gradient noise), zero mean and covariance
    ``eta^2 Sigma / B`` (``core.noise.noise_covariance(w, task, B)``). Each coordinate of every
    run lies within K standard errors of GD; the 256-run empirical covariance is that
    covariance (Frobenius, ``check_covariance_mc``); a 10%-longer GD step is rejected."""
    batch, runs, lr = 2000, 256, 0.1
    task = make_task(regime)
    w1 = make_weights("gd", None)
    weights = tuple(jnp.broadcast_to(x[..., None], x.shape + (runs,)) for x in w1)
    sgd = dy.OnlineSGD(task, batch_size=batch)
    out = jax.jit(lambda s, k, st: s.step(k, st, dy.Hyperparameters(lr, float(batch)))[0])(
        sgd, make_keys(runs), sgd.init(weights))
    grads = d.gradient(w1, task)
    gd = d.flatten_weights(tuple(x - lr * g for x, g in zip(w1, grads, strict=True)))
    theta = _flat_runs_minor(out.weights)
    cov = np.asarray(d.noise_covariance(w1, task, batch))          # Sigma / B
    se = lr * np.sqrt(np.diag(cov))
    assert_close_mc(theta, np.broadcast_to(gd, theta.shape), np.broadcast_to(se, theta.shape),
                    what="SGD (B=2000) vs GD per run")
    mean, mean_se = theta.mean(0), se / math.sqrt(runs)
    assert_close_mc(mean, gd, mean_se, what="mean over runs")
    long_gd = d.flatten_weights(tuple(x - 1.1 * lr * g for x, g in zip(w1, grads, strict=True)))
    assert_rejected_mc(mean, long_gd, mean_se, what="GD with 1.1 eta")
    check_covariance_mc((theta - gd) / lr, cov, wrong_cov=1.5 * cov, what="SGD step noise")


@pytest.mark.parametrize("regime,substeps,replacement,batch", [
    ("white_noise", 1, True, 1), ("colored_noise", 4, True, 2), ("offline", 1, True, 2),
    ("offline", 4, False, 2)])
def test_sde_step_has_the_gradient_noise_covariance(regime, substeps, replacement, batch):
    """One EM step from a fixed state: ``(theta' - theta + h grad L) / sqrt(h eta)`` has the
    covariance ``Sigma(theta) c`` of ``core.noise.noise_covariance`` (``c = 1/B``, or
    ``(n - B)/(B (n - 1))`` offline without replacement), whatever ``path_substeps``; 20000 runs,
    Frobenius error within Monte Carlo tolerance; a 20% (or, offline without replacement, the
    with-replacement) wrong covariance is rejected."""
    runs, h, lr = 20000, 0.01, 0.3
    task = make_task(regime)
    w1 = make_weights("gd", None)
    weights = tuple(jnp.broadcast_to(x[..., None], x.shape + (runs,)) for x in w1)
    stepper = dy.AnisotropicLangevin(task, path_substeps=substeps, replacement=replacement)
    out = jax.jit(lambda s, k, st, hp: s.step(k, st, hp)[0])(
        stepper, make_keys(runs, 9), stepper.init(weights),
        dy.StepSizeHyperparameters(lr, float(batch), step_size=h))
    grads = d.gradient(w1, task)
    mean = np.asarray(d.flatten_weights(tuple(x - h * g for x, g in zip(w1, grads, strict=True))))
    xi = (_flat_runs_minor(out.weights) - mean) / math.sqrt(h * lr)
    cov = np.asarray(d.noise_covariance(w1, task, batch, replacement))
    wrong = (np.asarray(d.noise_covariance(w1, task, batch, True)) if not replacement
             else 1.2 * cov)
    check_covariance_mc(xi, cov, wrong_cov=wrong, what=f"SDE step noise ({regime})")


def test_isotropic_and_reduced_steps_have_their_laws():
    """Isotropic Langevin: ``theta' - theta + h grad L ~ N(0, 2 T h I)``. Reduced SDE: per mode
    ``a' ~ N(a + h (mu_GF + mu_Ito), h D(a))`` independently (docs/theory.md §6 closed forms); 20000 runs,
    mean and variance within K standard errors; a doubled variance is rejected."""
    runs, h = 20000, 0.01
    task = make_task("white_noise")
    w1 = make_weights("gd", None)
    weights = tuple(jnp.broadcast_to(x[..., None], x.shape + (runs,)) for x in w1)
    iso = dy.IsotropicLangevin(task, widths=WIDTHS)
    out = jax.jit(lambda s, k, st, hp: s.step(k, st, hp)[0])(
        iso, make_keys(runs, 10), iso.init(weights),
        dy.IsotropicHyperparameters(0.1, step_size=h, temperature=0.3))
    grads = d.gradient(w1, task)
    mean = np.asarray(d.flatten_weights(tuple(x - h * g for x, g in zip(w1, grads, strict=True))))
    check_covariance_mc(_flat_runs_minor(out.weights) - mean, 2 * 0.3 * h * np.eye(mean.size),
                        wrong_cov=4 * 0.3 * h * np.eye(mean.size), what="isotropic step")
    a = np.array([0.3, 0.1])
    s, sigma, lr, batch = np.asarray(task.spectrum), LABEL_NOISE, 0.2, 2.0
    for coupled in (True, False):
        reduced = dy.ReducedSDE(task, depth=3, coupled=coupled)
        out = jax.jit(lambda s, k, st, hp: s.step(k, st, hp)[0])(
            reduced, make_keys(runs, 11), reduced.init((jnp.broadcast_to(jnp.asarray(a)[:, None],
                                                                         (2, runs)),)),
            dy.StepSizeHyperparameters(lr, batch, step_size=h))
        new = np.asarray(out.weights[0]).T                           # (runs, modes)
        drift = np.asarray(th_reduced.reduced_drift(a, s, 3, lr, batch, sigma, coupled))
        diffusion = np.asarray(th_reduced.reduced_diffusion(a, s, 3, lr, batch, sigma))
        var = new.var(0, ddof=1)
        se_var = np.sqrt((((new - new.mean(0)) ** 2 - var) ** 2).mean(0) / runs)
        assert_close_mc(new.mean(0), a + h * drift, np.sqrt(h * diffusion / runs),
                        what="reduced step mean")
        assert_close_mc(var, h * diffusion, se_var, what="reduced step variance")
        assert_rejected_mc(var, 2 * h * diffusion, se_var, what="doubled variance")
        corr = np.corrcoef(new.T)[0, 1]
        assert abs(corr) < K_SIGMA / math.sqrt(runs), "modes must be independent"


@pytest.mark.parametrize("build,name", [
    (lambda: dy.OnlineSGD(make_task("offline")), "task.data"),
    (lambda: dy.OnlineSGD(make_task("white"), batch_size=0), "batch_size"),
    (lambda: dy.OfflineSGD(make_task("white")), "task.data"),
    (lambda: dy.OfflineSGD(make_task("offline"), batch_size=NUM_DATA + 1, replacement=False),
     "batch_size"),
    (lambda: dy.AnisotropicLangevin(make_task("white"), path_substeps=0), "path_substeps"),
    (lambda: dy.IsotropicLangevin(make_task("white"), widths=(D_IN, 4)), "widths"),
    (lambda: dy.ReducedSDE(make_task("colored")), "task.input_covariance"),
    (lambda: dy.ReducedSDE(make_task("offline")), "task.data"),
])
def test_stepper_configuration_errors_are_one_line(build, name):
    with pytest.raises(ValueError) as info:
        build()
    assert "\n" not in str(info.value) and str(info.value).startswith(name + "=")


def _flat_runs_minor(weights):
    """``(runs, P)``: column-stacked ``theta`` of each run of runs-minor weights."""
    return np.concatenate([np.moveaxis(np.asarray(w), -1, 0).transpose(0, 2, 1).reshape(
        np.shape(w)[-1], -1) for w in weights], axis=1)


@jax.jit
def _final(stepper, weights, lr, h, steps):
    """``steps`` (traced: one compilation for every h) steps from ``weights``."""
    hp = dy.StepSizeHyperparameters(learning_rate=lr, step_size=h)
    state = jax.lax.fori_loop(0, steps, lambda _, s: stepper.step(make_keys(None), s, hp)[0],
                              stepper.init(weights))
    return d.flatten_weights(state.weights)


def test_gradient_flow_rk4_is_fourth_order():
    """Error at t = 1 against h = 1/512: halving h divides it by ~16 (slope 4 in log-log; the
    next term of the error expansion is O(h^5), so the local slope is 4 + O(h))."""
    task = make_task("colored_noise")
    stepper = dy.GradientFlow(task)
    weights = make_weights("gd", None)
    reference = _final(stepper, weights, 0.1, 1.0 / 2048, 2048)
    errors = np.array([float(jnp.linalg.norm(_final(stepper, weights, 0.1, 1.0 / n, n) - reference))
                       for n in (8, 16, 32, 64, 128)])
    slopes = np.log2(errors[:-1] / errors[1:])
    print("RK4 errors", errors, "slopes", slopes)
    deviation = np.abs(slopes - 4.0)
    # the deviation from 4 shrinks like h (halves with h) and is small at the finest pair
    assert np.all(np.diff(deviation) < 0), f"RK4 slopes {slopes}"
    assert deviation[-1] < 0.1, f"RK4 slopes {slopes}"
    # and a first-order method (GD with eta = h) is not mistaken for it
    gd = dy.GradientDescent(task)
    gd_err = [float(jnp.linalg.norm(_final(gd, weights, 1.0 / n, 0.0, n) - reference))
              for n in (16, 32)]
    assert abs(math.log2(gd_err[0] / gd_err[1]) - 1.0) < 0.2


@pytest.mark.parametrize("regime,batch", [("white", 1), ("white_noise", 3), ("colored_noise", 1),
                                          ("colored_noise", 3)])
def test_online_sgd_step_is_the_minibatch_gradient_of_its_samples(regime, batch):
    """Rebuild the step's samples from ``counter_normals(words, step)``: ``x = S_x^1/2 z`` (the
    first ``d_in B`` normals, sample-minor), ``y = M x + S_eps^1/2 z'`` (the next ``d_out B``);
    the step is ``w - eta core.loss.minibatch_gradient(w, x, y)``, at a non-zero counter."""
    task = make_task(regime)
    stepper = dy.OnlineSGD(task, batch_size=batch)
    weights = make_weights("gd", None)
    key, lr, counter = make_keys(None, seed=3), 0.07, 11
    state = stepper.init(weights)._replace(step=jnp.int32(counter))
    out, info = stepper.step(key, state, dy.Hyperparameters(lr, float(batch)))
    n_x = D_IN * batch
    n_e = D_OUT * batch if task.label_covariance is not None else 0
    z = np.asarray(dy.counter_normals(dy.key_words(key), counter, (n_x + n_e,), jnp.float64))
    x = z[:n_x].reshape(D_IN, batch)
    if not task.whitened:
        x = np.asarray(task.input_sqrt) @ x
    y = np.asarray(task.teacher) @ x
    if n_e:
        y = y + np.asarray(task.label_sqrt) @ z[n_x:].reshape(D_OUT, batch)
    grads = d.minibatch_gradient(weights, jnp.asarray(x.T), jnp.asarray(y.T))
    expected = tuple(w - lr * g for w, g in zip(weights, grads, strict=True))
    _assert_trees_close(out.weights, expected, F64_RTOL, "SGD step vs minibatch gradient")
    residual = np.asarray(d.end_to_end(weights)) @ x - y
    assert float(info.loss) == pytest.approx(0.5 * np.sum(residual**2) / batch, rel=1e-12)
    # another counter draws other samples
    out2, _ = stepper.step(key, state._replace(step=jnp.int32(counter + 1)),
                           dy.Hyperparameters(lr, float(batch)))
    assert not np.allclose(out2.weights[0], out.weights[0])


def _identify_batches(task, trajectory, lr, batch):
    """For each step ``k`` the multiset of data indices whose minibatch gradient maps
    ``w_k`` to ``w_{k+1}`` (exhaustive search; generic data make it unique)."""
    candidates = np.array(list(itertools.combinations_with_replacement(range(NUM_DATA), batch)))
    x, y = (np.asarray(a) for a in task.data)

    @jax.jit
    def residuals(w, w_next):
        def one(idx):
            g = d.minibatch_gradient(w, jnp.asarray(x)[idx], jnp.asarray(y)[idx])
            return sum(jnp.sum((a - lr * b - c) ** 2) for a, b, c in zip(w, g, w_next, strict=True))
        return jax.vmap(one)(jnp.asarray(candidates))

    found = []
    for k in range(len(trajectory) - 1):
        r = np.sqrt(np.asarray(residuals(trajectory[k], trajectory[k + 1])))
        order = np.argsort(r)
        assert r[order[0]] < 1e-12 and r[order[1]] > 1e-6, f"step {k}: no unique batch"
        found.append(candidates[order[0]])
    return np.array(found)


def _trajectory(stepper, weights, lr, steps, key):
    hp = dy.Hyperparameters(lr, float(stepper.batch_size))

    def body(state, _):
        new, _ = stepper.step(key, state, hp)
        return new, new.weights

    _, ws = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(stepper.init(weights))
    return [weights] + [tuple(w[k] for w in ws) for k in range(steps)]


def test_offline_sgd_with_replacement_draws_uniform_batches():
    """Every step is the minibatch gradient of some B = 2 data points; over 150 steps each index
    is used ~Binomial(300, 1/7) times (within K standard deviations), and repeated indices
    within a batch occur (with replacement: probability 1/7 per batch)."""
    task, lr, steps = make_task("offline"), 0.01, 150
    stepper = dy.OfflineSGD(task, batch_size=2)
    batches = _identify_batches(task, _trajectory(stepper, make_weights("gd", None), lr, steps,
                                                  make_keys(None, 7)), lr, 2)
    counts = np.bincount(batches.ravel(), minlength=NUM_DATA)
    p = 1.0 / NUM_DATA
    assert_close_mc(counts, 2 * steps * p, np.full(NUM_DATA, math.sqrt(2 * steps * p * (1 - p))),
                    what="index frequencies")
    repeats = np.sum(batches[:, 0] == batches[:, 1])
    assert_close_mc(repeats, steps * p, math.sqrt(steps * p * (1 - p)), what="repeated indices")
    assert repeats > 0


def test_offline_sgd_without_replacement_partitions_each_epoch():
    """B = 2, n = 7: epochs of 3 batches; within an epoch the 6 indices are distinct (one sample
    skipped), and the epochs are reshuffled (not all the same order / skipped sample)."""
    task, lr, epochs = make_task("offline"), 0.01, 12
    stepper = dy.OfflineSGD(task, batch_size=2, replacement=False)
    per_epoch = NUM_DATA // 2
    batches = _identify_batches(task, _trajectory(stepper, make_weights("gd", None), lr,
                                                  per_epoch * epochs, make_keys(None, 8)), lr, 2)
    by_epoch = batches.reshape(epochs, per_epoch * 2)
    for e, used in enumerate(by_epoch):
        assert len(set(used.tolist())) == per_epoch * 2, f"epoch {e} reuses a sample: {used}"
    skipped = [set(range(NUM_DATA)) - set(used.tolist()) for used in by_epoch]
    assert len({frozenset(s) for s in skipped}) > 1, "the same sample is skipped every epoch"
    assert len({tuple(b) for b in by_epoch}) > 1, "every epoch has the same batches"


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_product_layout_follows_the_broadcast_layout(name):
    """``Layout(product="batched")`` (runs on the leading axis inside each block, the single-run
    step vmapped) runs every registered method to the broadcast layout's numbers within float64
    rounding, over two full blocks and a partial one, with per-run hyperparameters; each run
    keeps its own noise (a swap of two runs' keys is caught)."""
    from dlnlab import engine as en

    regime, make, hparams, _ = CASES[name]
    task = make_task(regime)
    stepper = make(task)
    runs = 3
    weights = make_weights(name, runs)
    hp = stepper.hyperparameters(**{k: (np.array([v, 0.9 * v, 0.8 * v]) if k == "learning_rate" else v)
                                    for k, v in hparams.items()})
    keys = jax.random.split(jax.random.key(5), runs)
    observed = "loss" if _is_reduced(name) else "parameters"
    out = {}
    for product in ("broadcast", "batched"):
        ds = en.simulate(stepper, weights, hp, keys, en.Recording([0, 9, 19], observables=[observed]),
                         layout=en.Layout(block_steps=8, product=product))
        out[product] = ds
    a, b = out["broadcast"][observed].values, out["batched"][observed].values
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(b, a, rtol=F64_RTOL * 20, atol=F64_RTOL * 20 * np.abs(a).max())
    np.testing.assert_array_equal(out["batched"].diverged_step.values, out["broadcast"].diverged_step.values)
    if CASES[name][3]:
        swapped = en.simulate(stepper, weights, hp, keys[jnp.array([1, 0, 2])],
                              en.Recording([0, 9, 19], observables=[observed]),
                              layout=en.Layout(block_steps=8, product="batched"))[observed].values
        assert not np.allclose(swapped[0, -1], a[0, -1], rtol=1e-6)


def test_bad_product_layout_is_one_line():
    from dlnlab import engine as en

    with pytest.raises(ValueError, match=r"^layout.product=.*must be one of auto, broadcast, batched$"):
        en.Layout(product="vmap")

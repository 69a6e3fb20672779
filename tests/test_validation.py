"""Bad input fails up front with one line ``name=value: rule`` (``dlnlab._validation``).

Every case checks three things: the message starts with the argument's name, the part before
the first ``": "`` shows the offending value, and the part after it states the rule.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab
from dlnlab import _validation as v
from dlnlab import theory

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def env():
    """A small task (d_in=3, d_out=2, two modes), aligned weights 3-4-2 and an n=5 data set."""
    key = jax.random.key(7)
    task = dlnlab.Task.from_spectrum(key, 3, 2, [1.0, 0.5], label_noise=0.1)
    weights = dlnlab.init_aligned(task, [0.1, 0.05], (3, 4, 2))
    rng = np.random.default_rng(8)
    offline = task.with_dataset(rng.normal(size=(5, 3)), rng.normal(size=(5, 2)))
    return SimpleNamespace(key=key, task=task, weights=weights, offline=offline)


def _spec(env, spectrum, **kwargs):
    return dlnlab.Task.from_spectrum(env.key, 3, 2, spectrum, **kwargs)


# (call(env), argument name, fragment of the shown value, fragment of the rule)
_A = jnp.ones((4, 3))
NOT_CHAINING = (_A, jnp.ones((2, 5)))          # layer 2 takes 5 inputs, layer 1 gives 4
CHAINING = (_A, jnp.ones((2, 4)))              # widths (3, 4, 2)
NOT_PSD = np.array([[1.0, 0.0], [0.0, -1.0]])
NOT_SYMMETRIC = np.array([[1.0, 0.5], [0.0, 1.0]])

SHAPE_CASES = [
    pytest.param(lambda e: dlnlab.init_aligned(e.task, [0.1], (2, 4, 2)),
                 "widths", "(2, 4, 2)", "must start at d_in=3 and end at d_out=2",
                 id="init_aligned-wrong-d_in"),
    pytest.param(lambda e: dlnlab.init_aligned(e.task, [0.1], (3, 4, 3)),
                 "widths", "(3, 4, 3)", "must start at d_in=3 and end at d_out=2",
                 id="init_aligned-wrong-d_out"),
    pytest.param(lambda e: dlnlab.init_aligned(e.task, [0.1], (3,)),
                 "widths", "(3,)", "at least d_in and d_out", id="init_aligned-one-width"),
    pytest.param(lambda e: dlnlab.init_aligned(e.task, [0.1, 0.1], (3, 1, 2)),
                 "amplitudes", "0.1", "do not fit through the narrowest width 1",
                 id="init_aligned-too-narrow"),
    pytest.param(lambda e: dlnlab.init_gaussian(e.key, (3, 0, 2), 2.0),
                 "widths", "(3, 0, 2)", "integer >= 1", id="init_gaussian-zero-width"),
    pytest.param(lambda e: v.check_weights(NOT_CHAINING),
                 "weights[1].shape", "(2, 5)", "layer 2 must take 4 inputs",
                 id="check_weights-not-chaining"),
    pytest.param(lambda e: v.check_weights(CHAINING, d_in=2),
                 "weights[0].shape", "(4, 3)", "first layer must take d_in=2",
                 id="check_weights-wrong-d_in"),
    pytest.param(lambda e: v.check_weights(CHAINING, d_out=3),
                 "weights[-1].shape", "(2, 4)", "last layer must give d_out=3",
                 id="check_weights-wrong-d_out"),
    pytest.param(lambda e: v.check_weights((jnp.ones(3),)),
                 "weights[0]", "(3,)", "2-D array", id="check_weights-1d-layer"),
    pytest.param(lambda e: v.check_weights(()),
                 "weights", "()", "non-empty tuple", id="check_weights-empty"),
]

SPECTRUM_CASES = [
    pytest.param(lambda e: _spec(e, [1.0, 0.5, 0.2]),
                 "spectrum", "[1.0, 0.5, 0.2]", "rank 3 exceeds min(d_in, d_out) = 2",
                 id="rank-too-large"),
    pytest.param(lambda e: _spec(e, np.linspace(1.0, 0.1, 30)),
                 "spectrum", "shape (30,)", "rank 30 exceeds min(d_in, d_out) = 2",
                 id="rank-too-large-long"),
    pytest.param(lambda e: _spec(e, [1.0, -0.5]),
                 "spectrum", "-0.5", "singular values must be >= 0", id="negative"),
    pytest.param(lambda e: _spec(e, [0.5, 1.0]),
                 "spectrum", "[0.5, 1.0]", "must be non-increasing", id="increasing"),
    pytest.param(lambda e: _spec(e, [NAN, 0.5]),
                 "spectrum", "nan", "finite", id="nan"),
    pytest.param(lambda e: _spec(e, [INF, 0.5]),
                 "spectrum", "inf", "finite", id="inf"),
    pytest.param(lambda e: _spec(e, []),
                 "spectrum", "[]", "at least one singular value", id="empty"),
]

NON_FINITE_CASES = [
    pytest.param(lambda e: dlnlab.Task(np.array([[1.0, NAN], [0.0, 1.0]])),
                 "teacher", "nan", "finite", id="teacher-nan"),
    pytest.param(lambda e: dlnlab.Task(np.array([[1.0, 0.0], [INF, 1.0]])),
                 "teacher", "inf", "finite", id="teacher-inf"),
    pytest.param(lambda e: dlnlab.Task(np.full((3, 4), NAN)),
                 "teacher", "shape (3, 4)", "finite", id="teacher-nan-large"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), label_noise=NAN),
                 "label_noise", "nan", "must be finite", id="label_noise-nan"),
    pytest.param(lambda e: _spec(e, [1.0], label_noise=INF),
                 "label_noise", "inf", "must be finite", id="label_noise-inf"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), label_noise=np.array([[1.0, 0.0], [0.0, NAN]])),
                 "label_noise", "nan", "finite", id="label_noise-matrix-nan"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), input_covariance=np.array([[INF, 0.0],
                                                                             [0.0, 1.0]])),
                 "input_covariance", "inf", "finite", id="input_covariance-inf"),
    pytest.param(lambda e: dlnlab.modewise_diffusion(e.weights, e.task, NAN),
                 "learning_rate", "nan", "must be finite", id="diffusion-lr-nan"),
    pytest.param(lambda e: dlnlab.modewise_diffusion(e.weights, e.task, jnp.asarray(INF)),
                 "learning_rate", "inf", "must be finite", id="diffusion-lr-inf-array"),
    pytest.param(lambda e: dlnlab.modewise_diffusion(e.weights, e.task, -0.01),
                 "learning_rate", "-0.01", "must be >= 0", id="diffusion-lr-negative"),
    pytest.param(lambda e: dlnlab.mode_covariation(e.weights, e.offline, NAN),
                 "learning_rate", "nan", "must be finite", id="covariation-lr-nan"),
    pytest.param(lambda e: dlnlab.ito_drift(e.weights, e.task, INF),
                 "learning_rate", "inf", "must be finite", id="ito-lr-inf"),
    pytest.param(lambda e: e.task.with_dataset(np.full((2, 3), NAN), np.zeros((2, 2))),
                 "inputs", "nan", "finite", id="with_dataset-nan"),
]

MATRIX_CASES = [
    pytest.param(lambda e: dlnlab.Task(np.eye(2), label_noise=-0.1),
                 "label_noise", "-0.1", "must be >= 0", id="label_noise-negative"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), input_covariance=NOT_PSD),
                 "input_covariance", "-1", "positive semidefinite", id="input_cov-not-psd"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), label_noise=NOT_PSD),
                 "label_noise", "-1", "positive semidefinite", id="label_noise-not-psd"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), input_covariance=NOT_SYMMETRIC),
                 "input_covariance", "0.5", "must be symmetric", id="input_cov-not-symmetric"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), label_noise=NOT_SYMMETRIC),
                 "label_noise", "0.5", "must be symmetric", id="label_noise-not-symmetric"),
    pytest.param(lambda e: _spec(e, [1.0], input_covariance=np.eye(2)),
                 "input_covariance", "1.", "must have shape (3, 3), got (2, 2)",
                 id="input_cov-wrong-size"),
    pytest.param(lambda e: dlnlab.Task(np.eye(2), input_covariance=np.ones(2)),
                 "input_covariance", "1.", "must be a square matrix, got shape (2,)",
                 id="input_cov-not-square"),
    pytest.param(lambda e: _spec(e, [1.0], label_noise=np.eye(3)),
                 "label_noise", "shape (3, 3)", "must have shape (2, 2), got (3, 3)",
                 id="label_noise-wrong-size"),
    pytest.param(lambda e: theory.solve_lyapunov(NOT_PSD, np.eye(2), 0.1),
                 "hessian", "-1", "positive semidefinite", id="lyapunov-hessian-not-psd"),
    pytest.param(lambda e: theory.solve_lyapunov(NOT_SYMMETRIC, np.eye(2), 0.1),
                 "hessian", "0.5", "must be symmetric", id="lyapunov-hessian-not-symmetric"),
    pytest.param(lambda e: theory.solve_lyapunov(np.eye(2), np.eye(3), 0.1),
                 "noise_cov", "shape (3, 3)", "must have shape (2, 2)", id="lyapunov-noise-shape"),
]

BATCH_CASES = [
    pytest.param(lambda e: dlnlab.noise_covariance(e.weights, e.offline, batch_size=6,
                                                   replacement=False),
                 "batch_size", "6", "must be <= the data set size n=5", id="noise_cov-batch>n"),
    pytest.param(lambda e: dlnlab.sample_noise(e.key, e.weights, e.offline, 3, batch_size=6,
                                               replacement=False),
                 "batch_size", "6", "must be <= the data set size n=5", id="sample_noise-batch>n"),
    pytest.param(lambda e: dlnlab.sample_data_batch(e.key, e.offline, 6, replacement=False),
                 "batch_size", "6", "must be <= the data set size n=5", id="data_batch-batch>n"),
    pytest.param(lambda e: dlnlab.sample_data_batch(e.key, e.offline, 0),
                 "batch_size", "0", "integer >= 1", id="data_batch-zero"),
    pytest.param(lambda e: dlnlab.noise_covariance(e.weights, e.task, batch_size=0),
                 "batch_size", "0", "must be >= 1", id="noise_cov-batch-zero"),
    pytest.param(lambda e: dlnlab.sample_noise(e.key, e.weights, e.task, 0),
                 "num_samples", "0", "integer >= 1", id="sample_noise-zero"),
    pytest.param(lambda e: dlnlab.sample_noise_dense(e.key, e.weights, e.task, 0),
                 "num_samples", "0", "integer >= 1", id="sample_noise_dense-zero"),
    pytest.param(lambda e: e.task.with_data(e.key, 0),
                 "num_samples", "0", "integer >= 1", id="with_data-zero"),
    pytest.param(lambda e: dlnlab.empirical_loss(e.weights, e.task),
                 "task.data", "None", "needs an offline task", id="empirical-loss-online"),
]

# Every theory function that takes a depth: called with depth=d.
DEPTH_FUNCTIONS = {
    "half_learning_time": lambda d: theory.half_learning_time([1.0, 0.5], d, 0.01),
    "learning_time": lambda d: theory.learning_time(0.9, [1.0], d, 0.01),
    "gradient_flow_time": lambda d: theory.gradient_flow_time(0.5, [1.0], d, 0.01),
    "gradient_flow_curve": lambda d: theory.gradient_flow_curve([0.0, 1.0], [1.0], d, 0.01),
    "diffusion_peak": lambda d: theory.diffusion_peak([1.0], d, 0.1),
    "local_threshold": lambda d: theory.local_threshold(d),
    "global_threshold": lambda d: theory.global_threshold(d),
    "stationary_moments": lambda d: theory.stationary_moments([1.0], d, 0.01, 1, 0.1),
    "stationary_density": lambda d: theory.stationary_density(1.0, d, 0.01, 1, 0.1),
    "first_order_moments": lambda d: theory.first_order_moments([1.0], d, 0.01),
    "gradient_flow_drift": lambda d: theory.gradient_flow_drift([0.1], [1.0], d),
    "reduced_drift": lambda d: theory.reduced_drift([0.1], [1.0], d, 0.01),
    "reduced_ito_drift": lambda d: theory.reduced_ito_drift([0.1], [1.0], d, 0.01),
    "reduced_diffusion": lambda d: theory.reduced_diffusion([0.1], [1.0], d, 0.01),
    "mode_summary": lambda d: theory.mode_summary([1.0], d, 0.01, 1, 0.0, 0.002),
}
DEPTH_CASES = [
    pytest.param(lambda e, f=f: f(0), "depth", "0", "must be an integer >= 1", id=f"{name}-depth0")
    for name, f in DEPTH_FUNCTIONS.items()
] + [
    pytest.param(lambda e, d=d: theory.half_learning_time([1.0], d, 0.01),
                 "depth", text, "must be an integer >= 1", id=f"half_learning_time-depth-{text}")
    for d, text in ((-2, "-2"), (2.0, "2.0"), (True, "True"))
]

THEORY_CASES = [
    pytest.param(lambda e, s=s, a0=a0: theory.half_learning_time(s, 4, a0),
                 "initial_amplitude", text, "must lie in (0, s)", id=f"t_half-a0-{label}")
    for s, a0, text, label in (
        ([1.0], 0.0, "0.0", "zero"),
        ([1.0], -0.1, "-0.1", "negative"),
        ([1.0], 1.0, "1.0", "equal-s"),
        ([1.0], 1.5, "1.5", "above-s"),
        ([1.0, 0.5], 0.7, "0.7", "above-second-s"),
    )
] + [
    pytest.param(lambda e: theory.stationary_density(1.0, 4, 0.01, 1, 0.0),
                 "label_noise", "0.0", "must be > 0 for a density", id="density-no-label-noise"),
    pytest.param(lambda e: theory.stationary_density(1.0, 4, 0.01, 1, -0.2),
                 "label_noise", "-0.2", "must be >= 0", id="density-negative-label-noise"),
    pytest.param(lambda e: theory.stationary_moments([1.0], 4, NAN, 1, 0.1),
                 "learning_rate", "nan", "must be finite", id="moments-lr-nan"),
    pytest.param(lambda e: theory.learning_time(1.0, [1.0], 4, 0.01),
                 "fraction", "1.0", "must be < 1", id="learning_time-fraction-1"),
    pytest.param(lambda e: theory.solve_lyapunov(np.eye(2), np.eye(2), NAN),
                 "learning_rate", "nan", "must be finite", id="lyapunov-lr-nan"),
]

ALL_CASES = (SHAPE_CASES + SPECTRUM_CASES + NON_FINITE_CASES + MATRIX_CASES + BATCH_CASES
             + DEPTH_CASES + THEORY_CASES)


def _raise(call, env) -> str:
    with pytest.raises(ValueError) as info:
        call(env)
    return str(info.value)


@pytest.mark.parametrize(("call", "name", "value", "rule"), ALL_CASES)
def test_message_names_argument_value_and_rule(env, call, name, value, rule):
    pattern = rf"^{re.escape(name)}=.*: .*{re.escape(rule)}"
    with pytest.raises(ValueError, match=pattern) as info:
        call(env)
    shown, _, stated = str(info.value).partition(": ")
    assert shown.startswith(f"{name}=")
    assert value in shown[len(name) + 1:], f"value {value!r} not shown in {str(info.value)!r}"
    assert rule in stated


@pytest.mark.parametrize(("call", "name", "value", "rule"), ALL_CASES)
def test_message_is_one_line(env, call, name, value, rule):
    message = _raise(call, env)
    assert message and "\n" not in message and "\r" not in message


def test_check_weights_accepts_chaining_weights(env):
    assert v.check_weights(env.weights, d_in=3, d_out=2) == (3, 4, 2)
    assert v.check_weights(CHAINING) == (3, 4, 2)


def test_valid_boundaries_are_accepted(env):
    """The rules are not stricter than stated: equality at each boundary is allowed."""
    dlnlab.Task.from_spectrum(env.key, 3, 2, [1.0, 1.0])                # repeated values
    dlnlab.Task.from_spectrum(env.key, 3, 2, [1.0, 0.0])                # zero value
    dlnlab.Task(np.eye(2), label_noise=0.0, input_covariance=np.diag([1.0, 0.0]))  # singular PSD
    assert dlnlab.batch_factor(env.offline, 5, replacement=False) == 0.0       # B = n
    dlnlab.sample_data_batch(env.key, env.offline, 5, replacement=False)
    theory.half_learning_time([1.0, 0.5], 4, [0.49, 0.24])              # a0 just below s/2
    theory.solve_lyapunov(np.diag([1.0, 0.0]), np.eye(2), 0.1)          # singular PSD hessian


def test_checks_are_skipped_for_tracers(env):
    """Inside jit the values are tracers: no error, the NaN just propagates."""
    out = jax.jit(lambda lr: dlnlab.modewise_diffusion(env.weights, env.task, lr))(NAN)
    assert np.all(np.isnan(np.asarray(out)))


# Weights whose shapes do not chain, or do not match the task, are named before JAX sees them.
@pytest.mark.parametrize("function", [
    pytest.param(lambda w, t: dlnlab.gradient(w, t), id="gradient"),
    pytest.param(lambda w, t: dlnlab.population_loss(w, t), id="population_loss"),
    pytest.param(lambda w, t: dlnlab.mode_amplitudes(w, t), id="mode_amplitudes"),
    pytest.param(lambda w, t: dlnlab.modewise_diffusion(w, t, 0.01), id="modewise_diffusion"),
    pytest.param(lambda w, t: dlnlab.noise_covariance(w, t), id="noise_covariance"),
])
@pytest.mark.parametrize(("weights", "name", "rule"), [
    pytest.param(NOT_CHAINING, "weights[1].shape", "layer 2 must take 4 inputs", id="not-chaining"),
    pytest.param((jnp.ones((4, 2)), jnp.ones((2, 4))), "weights[0].shape",
                 "first layer must take d_in=3", id="wrong-d_in"),
])
def test_public_functions_check_weight_shapes(env, function, weights, name, rule):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}=.*: .*{re.escape(rule)}"):
        function(weights, env.task)


# ------------------------------------------------------------------------------ config doors
def test_show_keeps_values_on_one_short_line():
    assert v.show("x" * 1000) == "'" + "x" * 76 + "..."
    assert len(v.show("x" * 1000)) == v.SHOW_LIMIT
    assert v.show("a\nb") == "'a\\nb'"


@pytest.mark.parametrize(("overrides", "message"), [
    (["training.learnin_rate=0.01"],
     "training.learnin_rate=0.01: unknown field; did you mean training.learning_rate?"),
    (["training.horizon=0.001"], "training.horizon=0.001: shorter than one step of the learning "
                                 "rate 0.01 (zero steps); must be >= 0.01"),
    (["training.learning_rate=1e999"], "training.learning_rate=inf: Input should be a finite number"),
    (["runs=true"], "runs=True: Input should be a valid integer"),
    (['training.replacement="no"'], "training.replacement='no': Input should be a valid boolean"),
    (['name="../escaped"'], "name='../escaped': must be one folder name"),
    (["task.spectrum=[1e308]"], "task.spectrum=[1e+308]: singular values must be <= 1e+06"),
    (["seed=18446744073709551616"], "seed=18446744073709551616: Input should be less than "
                                    "9223372036854775808"),
    (["training.learning_rate=1e-300"], "training.learning_rate=1e-300: gd would take 1e+302 steps"),
    (["runs=9223372036854775807"], "runs=9223372036854775807: the recorded results would need"),
    (["task.d_in=1000000000"], "task.d_in=1000000000: the task's matrices would need"),
    ([f"task.hidden={[12] * 2999}"],
     "task.hidden=[" + "12, " * 19 + "...: depth 3000 exceeds 100 (MAX_DEPTH"),
    (["sde.step_size=1e-300"], "sde.step_size=1e-300: sde would take 1e+302 steps"),
    (["task.input_covariance=[1.0, 2.0]"], "task.input_covariance=[1.0, 2.0]: must have d_in = 12 "
                                           "entries (rows), got 2"),
    (["task.d_in=2", "task.d_out=2", "task.spectrum=[1.0]", "task.input_covariance=[[1.0, 2.0], "
      "[2.0, 1.0]]"], "task.input_covariance=[[1.0, 2.0], [2.0, 1.0]]: must be positive definite"),
    (["training.learning_rate=0.01\nruns=3"], "--set='training.learning_rate=0.01\\nruns=3': "
                                              "contains a control character ('\\n')"),
    (["a." * 20 + "b=1"], "--set='a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.b=1': key='a.a.a.a.a.a.a."
                          "a.a.a.a.a.a.a.a.a.a.a.a.a.b': 21 dotted parts; config fields have at most 8"),
])
def test_config_errors_are_one_line_naming_the_field(overrides, message):
    from dlnlab.experiments.config import load_config

    with pytest.raises(ValueError) as info:
        load_config(None, overrides)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text and len(text) < 400


def test_config_input_covariance_as_a_diagonal_or_a_matrix():
    from dlnlab.experiments.config import load_config, validate_config

    base = ["task.d_in=2", "task.d_out=2", "task.spectrum=[1.0]"]
    assert load_config(None, base).task.input_covariance_matrix() is None
    diagonal = load_config(None, [*base, "task.input_covariance=[2, 0.5]"])
    np.testing.assert_array_equal(diagonal.task.input_covariance_matrix(), np.diag([2.0, 0.5]))
    matrix = validate_config({"task": {"d_in": 2, "d_out": 2, "spectrum": [1.0],
                                       "input_covariance": [[2.0, 0.5], [0.5, 1.0]]}})
    np.testing.assert_array_equal(matrix.task.input_covariance_matrix(), [[2.0, 0.5], [0.5, 1.0]])


def test_example_and_paper_configs_stay_within_the_limits():
    from dlnlab.experiments.config import MAX_MEMORY_BYTES, load_config, resource_estimate
    from dlnlab.papers import PAPERS

    root = Path(__file__).resolve().parents[1] / "examples"
    for path in root.glob("*.toml"):
        if not path.name.startswith(("saddles", "sweep_", "golden_path_")):
            assert sum(resource_estimate(load_config(path)).values()) < MAX_MEMORY_BYTES / 10
    for paper in PAPERS.values():       # full and quick sizes validate (the limits are checked)
        simulating = 0
        for study in paper.studies:
            for quick in (True, False):
                configs = study.experiments(quick)   # validated configs; {}: a pure theory study
                assert isinstance(configs, dict)
                simulating += bool(configs)
        assert simulating > len(paper.studies), paper.name     # most studies simulate

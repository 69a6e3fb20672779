"""``init.at_minimum``: every run starts at a global minimum of the training loss (the
fluctuation studies of the second paper start at a solution)."""

from __future__ import annotations

import numpy as np
import pytest

import dlnlab as d
from dlnlab.experiments.config import validate_config
from dlnlab.experiments.run import build_task, initial_weights
from dlnlab.sweep.chunks import initial_weights_for_keys


def _config(hidden, at_minimum=True, **task):
    return validate_config({
        "name": "t", "runs": 4, "dtype": "float64", "methods": ["sgd"], "seed": 3,
        "task": {"d_in": 6, "d_out": 2, "hidden": hidden, "spectrum": [1.0, 0.5],
                 "label_noise": 0.3, "num_samples": 20, **task},
        "init": {"kind": "gaussian", "gamma": 1.0, "at_minimum": at_minimum}})


@pytest.mark.parametrize("hidden", [[], [4], [3, 5]])
def test_every_run_starts_at_a_critical_point_with_the_least_squares_product(hidden):
    config = _config(hidden)
    task = build_task(config)
    weights = initial_weights(config)
    x, y = (np.asarray(a) for a in task.data)
    least_squares = np.linalg.lstsq(x, y, rcond=None)[0].T          # independent: numpy lstsq
    for i in range(config.runs):
        run = tuple(w[i] for w in weights)
        grad = np.concatenate([np.ravel(g) for g in d.gradient(run, task)])
        assert np.max(np.abs(grad)) < 1e-10
        np.testing.assert_allclose(np.asarray(d.end_to_end(run)), least_squares, atol=1e-10)
    # the draw without the option is not a minimum (so the check above can fail)
    plain = initial_weights(_config(hidden, at_minimum=False))
    grad = np.concatenate([np.ravel(g) for g in d.gradient(tuple(w[0] for w in plain), task)])
    assert np.max(np.abs(grad)) > 1e-3


def test_upper_layers_are_kept_and_the_sweep_uses_the_same_rule():
    config = _config([4])
    plain = initial_weights(_config([4], at_minimum=False))
    moved = initial_weights(config)
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(moved[1]))
    assert not np.allclose(np.asarray(plain[0]), np.asarray(moved[0]))
    import jax

    from dlnlab.engine import run_keys
    keys = run_keys(jax.random.fold_in(jax.random.key(config.seed), 1), config.runs)
    swept = initial_weights_for_keys(config, keys)
    for a, b in zip(moved, swept, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("changes, field", [
    ({"task": {"d_in": 6, "d_out": 3, "hidden": [2], "spectrum": [1.0]}}, "init.at_minimum"),
    ({"init": {"kind": "aligned", "at_minimum": True}}, "init.at_minimum"),
    ({"init": {"at_minimum": 1}}, "init.at_minimum"),
])
def test_impossible_or_mistyped_requests_are_one_line_errors(changes, field):
    data = {"init": {"at_minimum": True}}
    data.update(changes)
    with pytest.raises(ValueError) as info:
        validate_config(data)
    message = str(info.value)
    assert message.startswith(f"{field}=") and "\n" not in message


def test_the_solution_init_is_the_balanced_aligned_minimum_online():
    config = validate_config({
        "name": "t", "runs": 3, "dtype": "float64", "methods": ["sgd"],
        "task": {"d_in": 5, "d_out": 4, "hidden": [6, 3], "spectrum": [1.0, 0.5],
                 "label_noise": 0.3},
        "init": {"kind": "solution"}})
    task = build_task(config)
    weights = initial_weights(config)
    teacher = np.asarray(task.teacher)
    for i in range(config.runs):
        run = tuple(w[i] for w in weights)
        np.testing.assert_allclose(np.asarray(d.end_to_end(run)), teacher, atol=1e-12)
        grad = np.concatenate([np.ravel(g) for g in d.gradient(run, task)])
        assert np.max(np.abs(grad)) < 1e-12
        for lower, upper in zip(run[:-1], run[1:], strict=False):     # balanced
            np.testing.assert_allclose(np.asarray(upper.T @ upper), np.asarray(lower @ lower.T),
                                       atol=1e-12)
    with pytest.raises(ValueError, match=r"^init.kind='solution': needs a teacher of rank 1..2"):
        validate_config({"task": {"d_in": 5, "d_out": 4, "hidden": [2], "spectrum": [1, 0.5, 0.2]},
                         "init": {"kind": "solution"}})


def test_solution_and_at_minimum_need_a_full_rank_teacher():
    with pytest.raises(ValueError, match=r"^init.at_minimum=.*full rank d_out = 4"):
        validate_config({"task": {"d_in": 5, "d_out": 4, "hidden": [6], "spectrum": [1.0, 0.5],
                                  "num_samples": 20},
                         "methods": ["sgd"], "init": {"kind": "solution", "at_minimum": True}})
    config = validate_config({"name": "t", "runs": 2, "dtype": "float64", "methods": ["sgd"],
                              "task": {"d_in": 5, "d_out": 2, "hidden": [6], "spectrum": [1.0, 0.5],
                                       "label_noise": 0.3, "num_samples": 20},
                              "init": {"kind": "solution", "at_minimum": True}})
    task = build_task(config)
    run = tuple(w[0] for w in initial_weights(config))
    grad = np.concatenate([np.ravel(g) for g in d.gradient(run, task)])
    assert np.max(np.abs(grad)) < 1e-10

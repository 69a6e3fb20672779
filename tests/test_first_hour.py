"""Holes a fresh-user trial found after the first round of issue 16: each bad input is one line
naming the field, the value and the rule (never a late error about another field, never silent
acceptance), and the run table has one cell per header."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab import dynamics as dy
from dlnlab import engine as en
from dlnlab.cli import main
from dlnlab.experiments import load_config, validate_config
from dlnlab.experiments.run_table import HEADERS, summary_rows

CONFIG_CASES = [
    # a negative gamma used to pass and fail late with an error about a temperature
    (["init.gamma=-50"], "init.gamma=-50: Input should be greater than or equal to 0"),
    (["init.gamma=9"], "init.gamma=9: Input should be less than or equal to 8"),
    # without replacement needs a data set (online SGD has no epochs)
    (["training.replacement=false"], "training.replacement=False: sampling without replacement "
                                     "needs a data set"),
    # a broken TOML list is a parse error, not "Input should be a valid list"
    (["task.spectrum=[1,"], "task.spectrum='[1,': not a valid TOML value"),
    # pydantic's union-branch name ("float") is not part of the field's name
    (["isotropic.temperature=hot"], "isotropic.temperature='hot': must be a number >= 0 or "
                                    "'matched'"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES)
def test_bad_config_values_name_their_own_field(overrides, message):
    with pytest.raises(ValueError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_folder_given_as_config_is_named(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: config={str(tmp_path)!r}: is a folder, not a TOML file\n"


def test_valid_neighbours_still_pass():
    """The new rules refuse only what they name: gamma 0 and 8, replacement off with data."""
    for gamma in (0, 8, 1.5):
        assert validate_config({"init": {"gamma": gamma}}).init.gamma == gamma
    config = validate_config({"task": {"num_samples": 20}, "training": {"replacement": False},
                              "methods": ["gd", "sgd"]})
    assert config.training.replacement is False


def test_init_gaussian_refuses_a_negative_gamma():
    with pytest.raises(ValueError, match=r"^gamma=-1\.0?: "):
        d.init_gaussian(jax.random.key(0), (3, 3, 3), -1.0)


def _gd():
    task = d.Task.from_spectrum(jax.random.key(0), 3, 3, [1.0], dtype=jnp.float64)
    weights = tuple(jnp.stack([w] * 2) for w in d.init_gaussian(jax.random.key(1), (3, 3, 3), 2.0,
                                                                   dtype=jnp.float64))
    stepper = dy.GradientDescent(task)
    return stepper, weights, stepper.hyperparameters(learning_rate=0.1)


@pytest.mark.parametrize("change, message", [
    ({"key": 3}, "key=3: must be one JAX PRNG key"),
    ({"run_offset": -5}, "run_offset=-5: must be an integer >= 0"),
    ({"recording": np.array([0.5, 5.7])}, "record_steps="),
])
def test_simulate_refuses_what_it_used_to_coerce(change, message):
    stepper, weights, hp = _gd()
    args = {"key": jax.random.key(0), "recording": [0, 5], "run_offset": 0} | change
    with pytest.raises(ValueError) as info:
        en.simulate(stepper, weights, hp, args["key"], args["recording"],
                    run_offset=args["run_offset"])
    assert str(info.value).startswith(message)
    if "recording" in change:
        assert "whole numbers of steps" in str(info.value)


def test_simulate_refuses_a_folder_as_checkpoint(tmp_path):
    stepper, weights, hp = _gd()
    with pytest.raises(ValueError, match="^checkpoint=.*is a folder"):
        en.simulate(stepper, weights, hp, jax.random.key(0), [0, 5], checkpoint=tmp_path)


def test_every_table_row_has_one_cell_per_header():
    """Unreachable modes once had an extra cell, shifting 'runs ok' into an unnamed column."""
    row = {"mode": 2, "s": 0.5, "reachable": False, "t_half_theory_aligned": None,
           "t_half_theory_effective": None, "a_peak_predicted": None, "t_half": None,
           "t_90": None, "t_peak": None, "a_peak_observed": None, "a_peak_runs": 0,
           "records_across_transition": None, "resolved": None, "runs_reaching_90": 0}
    live = {"t_half": {"median": 2.0, "low": 1.5, "high": 2.5, "crossed": 4, "runs": 4,
                       "horizon": 10.0}}
    live = row | {"mode": 1, "s": 1.0, "reachable": True, "resolved": True,
                  "t_half": live["t_half"], "t_90": live["t_half"], "t_peak": live["t_half"],
                  "a_peak_observed": 0.6, "a_peak_runs": 4, "records_across_transition": 9}
    summary = {"methods": {"gd": {"label": "GD", "runs": 4, "diverged": [],
                                  "modes": [live, row]}}}
    rows = summary_rows(summary)
    assert all(len(r) == len(HEADERS) for r in rows)
    assert rows[1][-1] == "4/4" and rows[1][3] == "unreachable"

"""One-line errors at the doors of the learning-coefficient tools that a new user hit: the
estimator's arguments (loss model, key, dtype) and command-line options that do not apply."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from dlnlab.cli import main
from dlnlab.llc import estimate_learning_coefficient, population_loss_model, sampler_settings

WEIGHTS = (jnp.zeros((3, 5)), jnp.zeros((5, 3)))
MODEL = population_loss_model(jnp.zeros((5, 5)), num_samples=1000)
SETTINGS = sampler_settings(num_chains=2, num_burnin_steps=100, num_draws=100)


@pytest.mark.parametrize(("args", "start"), [
    ((WEIGHTS, None, jax.random.key(0)), "loss_model='NoneType': must be a dlnlab.llc.LossModel"),
    ((WEIGHTS, MODEL, 0), "key=0: must be a JAX PRNG key"),
    (((jnp.zeros((3, 5), jnp.int32), jnp.zeros((5, 3), jnp.int32)), MODEL, jax.random.key(0)),
     "weights dtype='int32': must be a floating-point dtype"),
])
def test_estimator_arguments_fail_in_one_line(args, start):
    with pytest.raises(ValueError) as error:
        estimate_learning_coefficient(*args, SETTINGS)
    message = str(error.value)
    assert message.startswith(start) and "\n" not in message


def test_legacy_raw_keys_are_accepted():
    estimate = estimate_learning_coefficient(WEIGHTS, MODEL, jax.random.PRNGKey(0), SETTINGS)
    assert int(estimate.attrs["num_chains_used"]) == 2


@pytest.mark.parametrize(("args", "start"), [
    (["llc", "--at", "solution", "--runs", "3"], "error: --runs=3: applies only to --at along"),
    (["llc", "--at", "init", "--checkpoints", "5"], "error: --checkpoints=5: applies only to --at along"),
    (["llc", "--at", "solution", "--run", "1"], "error: --run=1: applies only to --at init and --at end"),
    (["llc-benchmark", "--merge", "somewhere", "--networks", "5"],
     "error: --networks=5: does not apply with --merge"),
    (["llc-benchmark", "--classes", "1K,"], "error: --classes='1K,': must be comma-separated"),
])
def test_options_that_do_not_apply_are_refused(args, start, tmp_path, capsys):
    code = main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(start) and "\n" not in err
    assert not (tmp_path / "out").exists()

"""The method registry and what derives from it (docs/architecture.md, "The method registry"):
config names and sections, labels, step sizes, the escape set, one-line errors; observables that
are not requested are not computed; the `KeyError: 'layer'` regression of `dlnlab run`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab import cli
from dlnlab import dynamics as dy
from dlnlab.experiments import run_experiment, validate_config
from dlnlab.experiments.config import ExperimentConfig
from dlnlab.io import load_results
from dlnlab.saddles import escape


def test_registry_lists_every_method_once_with_a_stepper_and_cases():
    names = dy.method_names()
    assert len(set(names)) == len(names)
    assert {"gd", "gf", "sgd", "sde", "isotropic", "reduced", "momentum_sgd"} <= set(names)
    task = d.Task.from_spectrum(jax.random.key(0), 3, 2, [1.0, 0.5], label_noise=0.1)
    for method in dy.METHODS:
        assert method.conformance, method.name
        section = method.section() if method.section is not None else None
        settings = dy.MethodSettings(0.01, 1, True, (3, 4, 2), section)
        settings = type(settings)(**{**settings.__dict__, "step_size": method.step_size(settings)})
        stepper = method.build(task, settings)
        assert isinstance(stepper, dy.Stepper)
        hp = method.hyperparameters(settings, {"temperature": 0.0})
        assert isinstance(hp, stepper.hyperparameters_type), method.name


def test_unknown_method_is_one_line_listing_the_valid_names():
    with pytest.raises(ValueError) as info:
        dy.get_method("adam")
    message = str(info.value)
    assert "\n" not in message and message.startswith("method='adam'")
    assert all(name in message for name in dy.method_names())
    with pytest.raises(ValueError) as info:
        validate_config({"methods": ["gd", "adam"]})
    message = str(info.value)
    assert "\n" not in message and message.startswith("methods='adam'") and "momentum_sgd" in message


def test_config_sections_and_step_sizes_come_from_the_registry():
    config = ExperimentConfig()
    for method in dy.METHODS:
        if method.section is not None:
            assert isinstance(getattr(config, method.name), method.section)
    assert config.step_size("gd") == config.step_size("sgd") == 0.01
    assert config.step_size("momentum_sgd") == 0.01
    assert config.step_size("sde") == pytest.approx(0.001) == config.step_size("reduced")
    assert config.step_size("gf") == 0.01
    tuned = validate_config({"momentum_sgd": {"momentum": 0.5}, "sde": {"step_size": 0.005}})
    assert tuned.momentum_sgd.momentum == 0.5 and tuned.step_size("sde") == 0.005
    with pytest.raises(ValueError) as info:
        validate_config({"momentum_sgd": {"momentum": 1.0}})
    assert "\n" not in str(info.value) and "momentum_sgd.momentum" in str(info.value)


def test_escape_methods_are_the_registered_weight_methods():
    assert set(escape.DEFAULT_METHODS) <= set(escape.METHODS)
    assert "reduced" not in escape.METHODS and "momentum_sgd" in escape.METHODS
    assert set(escape.METHODS) <= set(dy.method_names())


def test_momentum_sgd_runs_from_a_config_and_momentum_zero_is_sgd():
    """The new method works in `run_experiment` configs without any other file knowing it:
    momentum 0 gives SGD's records bit for bit (same initial weights, same noise key)."""
    config = validate_config({"runs": 3, "methods": ["sgd", "momentum_sgd"],
                              "momentum_sgd": {"momentum": 0.0},
                              "training": {"horizon": 0.5}, "record": {"points": 6}})
    ds = run_experiment(config)
    sgd, heavy = ds.isel(method_name=0), ds.isel(method_name=1)
    assert str(heavy.method_label.values) == dy.get_method("momentum_sgd").label
    for name in ("loss", "amplitude", "diffusion", "singular_value"):
        np.testing.assert_array_equal(sgd[name].values, heavy[name].values, err_msg=name)


def test_observables_not_requested_are_not_computed():
    """The compiled observer for ``loss`` alone contains no SVD and no modewise diffusion
    (the requested names are the only ones computed), while the full observer does."""
    task = d.Task.from_spectrum(jax.random.key(0), 4, 4, [1.0, 0.5])
    weights = d.init_gaussian(jax.random.key(1), (4, 5, 4), 1.0)
    stepper = dy.OnlineSGD(task)
    hp = dy.Hyperparameters(0.01, 1.0)

    def primitives(names):
        jaxpr = jax.make_jaxpr(lambda w: stepper.observe(w, hp, names))(weights)
        return {str(eqn.primitive) for eqn in _equations(jaxpr.jaxpr)}, len(_equations(jaxpr.jaxpr))

    loss_only, n_loss = primitives(("loss",))
    everything, n_all = primitives(tuple(dy.OBSERVABLE_DIMS))
    assert "svd" in everything and "svd" not in loss_only
    assert n_loss * 5 < n_all
    assert set(stepper.observe(weights, hp, ("loss",))) == {"loss"}
    out = stepper.observe(weights, hp, ("loss", "amplitude"))
    np.testing.assert_allclose(out["amplitude"], d.mode_amplitudes(weights, task), rtol=1e-6)


def _equations(jaxpr):
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
            out.extend(_equations(sub))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                out.extend(_equations(inner))
    return out


def test_run_with_a_subset_of_observables_writes_a_complete_directory(tmp_path):
    """Regression: recording only amplitude and diffusion (no `layer` dim) used to simulate and
    then die in the diffusion figure with KeyError: 'layer', writing no run directory."""
    out = tmp_path / "subset"
    code = cli.main(["run", "--quiet", "--out", str(out), "--set", "runs=2",
                     "--set", 'methods=["gd","sgd"]', "--set", "training.horizon=2",
                     "--set", "record.points=5",
                     "--set", 'record.variables=["amplitude","diffusion"]'])
    assert code == 0
    ds = load_results(out)
    assert "layer" not in ds.dims and "theory_diffusion_formula" in ds
    for name in ("amplitudes", "diffusion", "loss"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    assert (out / "summary.json").exists() and (out / "config.toml").exists()


def test_float32_and_float64_tasks_give_the_weights_dtype():
    config = validate_config({"runs": 2, "methods": ["momentum_sgd"], "training": {"horizon": 0.1},
                              "record": {"points": 3}})
    ds = run_experiment(config)
    assert ds.amplitude.dtype == np.float32 and np.all(np.isfinite(ds.amplitude.values))
    assert jnp.dtype(config.dtype) == jnp.float32

"""The two-layer studies of the second paper (fig8, fig9; its Sec. III): the analysis steps that
``tests/test_fluctuations_theory.py`` does not cover, each against an independent computation,
and the studies end to end at a small size.

- the relaxation-rate estimator recovers the rates of a planted Ornstein-Uhlenbeck process and
  rejects rates 20% off;
- the block analysis, fed the exact stationary OU law of the linearised theory (sampled by the
  exact transition, independent of any Lyapunov or SGD code), finds no systematic covariance
  error, the drift's rates and no kernel variance, and flags a law 30% too wide;
- fig8 and fig9 run end to end (tiny nets) and their claims are recomputable from the saved
  dataset.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import scipy.linalg
import xarray as xr

from conftest import assert_close_mc, assert_rejected_mc
from dlnlab.experiments.config import config_to_toml
from dlnlab.experiments.run import build_task, initial_weights
from dlnlab.experiments.study import Citation, Paper
from dlnlab.experiments.study_runner import run_studies
from dlnlab.papers.gross2024 import fig8, fig9, two_layer
from dlnlab.papers.gross2024.config import paper_config
from dlnlab.theory.fluctuations import linearised_fluctuations


def _ar1(rng, rates, dt, runs, times):
    """Exact OU samples ``y_(t+dt) = a y_t + sqrt(1 - a^2) eps`` (unit variance), stationary start."""
    a = np.exp(-np.asarray(rates) * dt)
    y = np.empty((runs, times, a.size))
    y[:, 0] = rng.standard_normal((runs, a.size))
    noise = rng.standard_normal((runs, times, a.size)) * np.sqrt(1 - a * a)
    for t in range(1, times):
        y[:, t] = a * y[:, t - 1] + noise[:, t]
    return y


def test_autocorrelation_rates_recover_a_planted_ou_process_and_reject_wrong_rates():
    rng = np.random.default_rng(1)
    rates = np.array([0.05, 0.2, 1.0, 2.5])
    dt = 0.4
    y = _ar1(rng, rates, dt, runs=24, times=2400)
    estimate, se = two_layer.autocorrelation_rates([y[:, :1200], y[:, 1200:]], dt, rates)
    assert np.all(se > 0) and np.all(se < 0.1 * rates)            # informative, not vacuous
    assert_close_mc(estimate, rates, se, what="planted OU rates")
    assert_rejected_mc(estimate, 1.2 * rates, se, what="rates 20% too high")
    # the lag only guides the estimator: a guess off by 2x still finds the planted rates
    estimate2, se2 = two_layer.autocorrelation_rates([y], dt, 2.0 * rates)
    assert_close_mc(estimate2, rates, se2, what="planted OU rates, lag from a wrong guess")


def _tiny_config(runs=16, num_samples=60, name="tiny-two-layer", seed=0):
    task = two_layer.two_layer_task(4, 3, 0.1, num_samples, 0.25)
    return paper_config(name, runs=runs, horizon=50.0, points=51, seed=seed,
                        variables=two_layer.VARIABLES,
                        changes={"task": task, "init": {"kind": "gaussian", "gamma": 1.0,
                                                        "shared": True, "at_minimum": True}})


def _exact_ou_dataset(config, lin, dt, times, inflate=1.0, seed=0):
    """A run dataset whose ``parameters`` are the linearised theory's exact stationary OU process
    around ``lin.solution`` (transition ``A = exp(-H dt)``, innovation ``M - A M A^T``), the
    covariance multiplied by ``inflate``."""
    rng = np.random.default_rng(seed)
    m = lin.stationary.covariance * inflate
    step = scipy.linalg.expm(-lin.drift * dt)
    innovation = m - step @ m @ step.T

    def root(cov):
        w, v = np.linalg.eigh(0.5 * (cov + cov.T))
        return v * np.sqrt(np.clip(w, 0, None))

    r_m, r_q = root(m), root(innovation)
    size = m.shape[0]
    x = np.empty((config.runs, times, size))
    x[:, 0] = rng.standard_normal((config.runs, size)) @ r_m.T
    for t in range(1, times):
        x[:, t] = x[:, t - 1] @ step.T + rng.standard_normal((config.runs, size)) @ r_q.T
    theta = lin.solution[None, None, :] + x
    return xr.Dataset(
        {"parameters": (("method_name", "run", "time", "parameter"), theta[None]),
         "status": (("method_name", "run"), np.full((1, config.runs), "ok"))},
        coords={"method_name": ["sgd"], "run": np.arange(config.runs),
                "time": np.arange(times) * dt},
        attrs={"config_toml": config_to_toml(config)})


@pytest.fixture(scope="module")
def tiny_theory():
    jax.config.update("jax_enable_x64", True)
    config = _tiny_config()
    task = build_task(config)
    weights = tuple(w[0] for w in initial_weights(config, task=task))
    lin = linearised_fluctuations(weights, task, config.training.learning_rate,
                                  config.training.batch_size)
    return config, lin


def test_block_analysis_recovers_the_exact_ou_law_and_flags_a_wrong_one(tiny_theory):
    config, lin = tiny_theory
    rates = lin.stationary.rates
    dt = 0.5 / rates.max()
    raw = _exact_ou_dataset(config, lin, dt, times=1200)
    result = two_layer.analyse_experiment(raw, 0.0, 2)
    err = result.covariance_error
    assert err["runs"] == config.runs and result.blocks == 2
    # sampling explains the raw error: no systematic part beyond 3 Monte Carlo errors
    assert err["raw"] <= 3 * err["monte_carlo"] and err["monte_carlo"] < 0.1
    assert result.kernel_fraction < 0.02                    # the samples have no kernel part
    assert result.solution_spread < 1e-2
    assert_close_mc(result.rates_measured, result.rates_drift, result.rates_se, what="OU rates")
    np.testing.assert_allclose(np.sort(result.rates_drift), np.sort(rates), rtol=1e-3)  # solution ~ theta*
    # the layer spectra of the sample agree with the theory's (same basis, same law)
    v_sgd, v_th = result.layer[2]["sgd"][0], result.layer[2]["theory"][0]
    np.testing.assert_allclose(v_sgd.sum(), v_th.sum(), rtol=5 * err["monte_carlo"])
    wide = two_layer.analyse_experiment(_exact_ou_dataset(config, lin, dt, 1200, inflate=1.3,
                                                          seed=1), 0.0, 2)
    assert wide.covariance_error["systematic"] > 0.2            # ~0.3 planted
    assert wide.covariance_error["systematic"] > 3 * wide.covariance_error["monte_carlo"]


def _tiny_experiments(quick):
    """Tiny stand-ins for the three experiments, all with the shapes of ``_tiny_config`` (one
    compilation serves them all; the analysis does not depend on how the weights were reached)."""
    out = {key: _tiny_config(runs=8, name=f"tiny-{key}", seed=i)
           for i, key in enumerate(("small", "large"))}
    out["ivfr"] = _tiny_config(runs=8, name="tiny-ivfr", seed=2)
    return out


@pytest.mark.filterwarnings("ignore::scipy.stats.DegenerateDataWarning")   # 3-point bootstraps
def test_fig8_and_fig9_end_to_end_at_a_small_size(tmp_path, monkeypatch):
    jax.config.update("jax_enable_x64", True)
    monkeypatch.setattr(two_layer, "experiments", _tiny_experiments)
    monkeypatch.setattr(two_layer, "STARTS", {"small": 10.0, "large": 10.0, "ivfr": 10.0})
    monkeypatch.setattr(two_layer, "BLOCK_LENGTHS", {"small": 20.0, "large": 20.0, "ivfr": 20.0})
    paper = Paper(name="gross2024", title="two-layer", citation=Citation(title="test"),
                  studies=(fig8.STUDY, fig9.STUDY))
    results = run_studies(paper, "all", quick=True, out=tmp_path, quiet=True)
    assert set(results) == {"fig8", "fig9"}
    for name, study in (("fig8", fig8), ("fig9", fig9)):
        folder = tmp_path / name
        assert (folder / f"{name}.png").stat().st_size > 10_000
        ds = xr.load_dataset(folder / f"{name}.nc")
        saved = json.loads((folder / "claims.json").read_text())
        again = json.loads(json.dumps(study.claims(ds), default=float))
        assert [c["verdict"] for c in saved] == [c["verdict"] for c in again]
        assert all(c["verdict"] in ("supported", "refuted", "not testable") for c in saved)
    ds8 = xr.load_dataset(tmp_path / "fig8" / "fig8.nc")
    assert ds8.layer1_sgd.dims == ("init", "index1") and ds8.sizes["index2"] == 3
    assert np.all(ds8.runs.values == 8)
    assert ds8.sizes["index1"] == 4 + fig8.EXTRA
    ds9 = xr.load_dataset(tmp_path / "fig9" / "fig9.nc")
    assert np.isfinite(ds9.psi.sel(source="theory", bound="estimate")).all()
    rates = ds9.rates.sel(setting="ivfr")
    assert int(np.isfinite(rates.sel(rate_kind="measured")).sum()) == 4     # N_i N_o modes

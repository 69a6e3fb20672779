"""Second paper, Figs. 4-5 (relaxation and the stationary covariance of single-layer SGD).

- ``common.covariance_error``: the bias-corrected systematic error is ~0 for samples drawn from
  the exact covariance, detects a planted 5% error, and its one-sided 95% upper bound covers the
  truth in ~95% of repetitions (binomial tolerance); the raw error alone would not do.
- ``transient_covariance`` / ``window_covariance`` (docs/theory.md §10): against a direct
  simulation of the linear recursion started at the solution (Monte Carlo tolerance) and the
  exact OU transition (Van Loan); a wrong formula (one rate per row) is rejected.
- fig5's NumPy single-layer theory against ``dlnlab.noise_covariance`` and the loss functions.
- fig4 and fig5 end to end at a tiny size through ``run_studies``.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import dlnlab as d
from conftest import check_covariance_mc, random_psd
from dlnlab.analysis.claims import VERDICTS
from dlnlab.papers.gross2024 import common, fig4, fig5
from dlnlab.papers.gross2024.config import paper_config, single_layer_task
from dlnlab.theory import fluctuations as fl


# ============================================================================ covariance_error
def _per_run_covariances(rng, matrix, runs, samples):
    root = np.linalg.cholesky(matrix)
    x = rng.standard_normal((runs, samples, matrix.shape[0])) @ root.T
    return common.run_covariances(x, np.zeros(matrix.shape[0]))


def _planted(rng, matrix, relative):
    """``matrix + E`` with ``|E|_F = relative |matrix|_F`` (a symmetric random direction)."""
    e = rng.standard_normal(matrix.shape)
    e = e + e.T
    return matrix + relative * np.linalg.norm(matrix) * e / np.linalg.norm(e)


def test_covariance_error_is_unbiased_detects_a_planted_error_and_its_bound_covers():
    rng = np.random.default_rng(7)
    m = random_psd(jax.random.key(3), 8)
    repetitions, runs, samples = 300, 40, 40
    exact, planted = [], []
    for _ in range(repetitions):
        per_run = _per_run_covariances(rng, m, runs, samples)
        exact.append(common.covariance_error(per_run, m))
        wrong = _planted(rng, m, 0.05)
        planted.append(common.covariance_error(per_run, wrong))
    raw = np.array([e["raw"] for e in exact])
    mc = np.array([e["monte_carlo"] for e in exact])
    # Sampling noise alone is far above 2%: a rule on the raw error could not pass.
    assert np.median(raw) > 0.05 and np.median(mc) > 0.05
    np.testing.assert_allclose(np.median(raw / mc), 1.0, atol=0.1)
    # Exact theory: the bias-corrected estimate is ~0, far below the raw error.
    assert np.median([e["systematic"] for e in exact]) < 0.3 * np.median(raw)
    # Planted 5%: D estimates 0.05^2 |M|^2 without bias (mean over repetitions within 4 SE).
    d_hat = np.array([np.sign(e["systematic"]) * e["systematic"] ** 2 for e in planted])
    assert abs(np.median(np.sqrt(np.maximum(d_hat, 0))) - 0.05) < 0.015
    # Coverage of the one-sided 95% upper bound: binomial tolerance (4 SE) around 0.95.
    cover = np.mean([e["systematic_upper"] >= 0.05 for e in planted])
    se = np.sqrt(0.95 * 0.05 / repetitions)
    assert cover >= 0.95 - 4 * se, f"coverage {cover:.3f}"
    # The bound is informative: it separates the exact theory from the planted error ...
    assert np.median([e["systematic_upper"] for e in exact]) < np.median(
        [e["systematic_upper"] for e in planted]) - 0.01
    # ... and the point estimate alone (no Z SE) would not cover (it is ~median-unbiased).
    naive_cover = np.mean([e["systematic"] >= 0.05 for e in planted])
    assert naive_cover < 0.8


# ============================================================================ transient theory
def _pair(key, rates=(0.2, 1.0, 4.0)):
    k1, k2 = jax.random.split(key)
    q = np.asarray(d.random_orthonormal(k1, len(rates), len(rates)))
    h = (q * np.asarray(rates)) @ q.T
    a = np.asarray(jax.random.normal(k2, (len(rates), len(rates))))
    c = a @ a.T + 0.1 * np.eye(len(rates))
    return h, c


def _wrong_transient(h, c, eta, t):
    """A plausible wrong formula: each row relaxes with its own rate only,
    ``M~_ij (1 - e^{-2 omega_i t})`` (correct on the diagonal, wrong off it)."""
    st = fl.stationary_covariance(h, c, eta)
    v, om = st.basis, st.rates
    mt = v.T @ st.covariance @ v
    wrong = mt * (1 - np.exp(-2 * om * t))[:, None]
    wrong = 0.5 * (wrong + wrong.T)
    return v @ wrong @ v.T


def test_transient_covariance_against_a_direct_simulation_of_the_linear_recursion():
    h, c = _pair(jax.random.key(11))
    eta = 0.1
    chains, steps_recorded = 40000, (3, 12, 40)
    a = np.eye(3) - eta * h
    root = np.linalg.cholesky(c)

    def body(x, z):
        x = x @ jnp.asarray(a).T - eta * z @ jnp.asarray(root).T
        return x, x

    normals = jax.random.normal(jax.random.key(5), (max(steps_recorded), chains, 3))
    _, path = jax.lax.scan(body, jnp.zeros((chains, 3)), normals)
    path = np.asarray(path)
    times = eta * np.asarray(steps_recorded, dtype=float)
    theory = fl.transient_covariance(h, c, eta, times, discrete=True)
    for i, k in enumerate(steps_recorded):
        samples = path[k - 1]
        wrong = _wrong_transient(h, c, eta, times[i]) if k == 12 else None
        check_covariance_mc(samples, theory[i], wrong, what=f"step {k}")
    # the discrete law tends to the stationary discrete covariance, the continuous one to M
    late = fl.transient_covariance(h, c, eta, [500.0], discrete=True)[0]
    np.testing.assert_allclose(late, fl.discrete_stationary_covariance(h, c, eta), atol=1e-12)
    late = fl.transient_covariance(h, c, eta, [500.0])[0]
    np.testing.assert_allclose(late, fl.stationary_covariance(h, c, eta).covariance, atol=1e-12)


def test_continuous_transient_is_the_exact_ou_covariance_and_the_window_is_its_mean():
    h, c = _pair(jax.random.key(12))
    eta = 0.05
    times = np.array([0.0, 0.1, 0.7, 2.5])
    got = fl.transient_covariance(h, c, eta, times)
    n = h.shape[0]
    for t, g in zip(times, got, strict=True):
        # Van Loan (1978): int_0^t e^{-Hs} (eta C) e^{-Hs} ds from one matrix exponential, no
        # Lyapunov solver involved
        block = np.zeros((2 * n, 2 * n))
        block[:n, :n], block[:n, n:], block[n:, n:] = h, eta * c, -h
        e = scipy.linalg.expm(block * t)
        phi = e[n:, n:].T
        np.testing.assert_allclose(g, phi @ e[:n, n:], atol=1e-12)
    np.testing.assert_allclose(fl.window_covariance(h, c, eta, times), got.mean(axis=0),
                               atol=1e-13)
    wrong = _wrong_transient(h, c, eta, 0.7)
    assert np.linalg.norm(wrong - got[2]) > 1e-2 * np.linalg.norm(got[2])


def test_transient_inputs_are_validated():
    h, c = _pair(jax.random.key(13))
    for kwargs, field in (({"times": [-1.0]}, "times="), ({"times": []}, "times="),
                          ({"times": [1.0], "learning_rate": 0.0}, "learning_rate="),
                          ({"times": [1.0], "learning_rate": 1.0, "discrete": True},
                           "learning_rate=")):
        args = {"learning_rate": 0.1} | kwargs
        with pytest.raises(ValueError) as info:
            fl.transient_covariance(h, c, args.pop("learning_rate"), args.pop("times"), **args)
        assert str(info.value).startswith(field) and "\n" not in str(info.value)


# ============================================================================ fig5's NumPy theory
def test_fig5_single_layer_theory_matches_the_library():
    config = paper_config("t", runs=4, horizon=10.0, points=2,
                          changes={"task": single_layer_task(12, 30, 0.04)})
    task, th = fig5._theory(config)
    w = (jnp.asarray(th.solution[None, :]),)
    c = np.asarray(d.noise_covariance(w, task, config.training.batch_size, True))
    np.testing.assert_allclose(th.noise, c, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(th.train_loss, float(d.training_loss(w, task)), rtol=1e-10)
    np.testing.assert_allclose(th.test_loss, float(d.population_loss(w, task)), rtol=1e-10)
    # the gradient vanishes at w* (a wrong solution would not)
    assert np.max(np.abs(np.asarray(d.gradient(w, task)[0]))) < 1e-12


# ============================================================================ end to end
@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(fig5, "SAMPLES_A", 16)
    monkeypatch.setattr(fig5, "_plan_a", lambda quick: {"inputs": (6, 12, 20), "runs": 3,
                                                        "horizon": 100.0})
    monkeypatch.setattr(fig5, "_plan_b", lambda quick: {"inputs": 8, "ratios": (1.5, 4.0),
                                                        "runs": 6, "horizon": 200.0})
    monkeypatch.setattr(fig5, "_grid_c", lambda quick: np.geomspace(0.1, 10.0, 4))
    original = fig4.experiments

    def small(quick):
        config = original(True)["relax"]
        data = json.loads(config.model_dump_json())
        data["runs"], data["training"]["horizon"], data["record"]["points"] = 6, 200.0, 30
        return {"relax": type(config).model_validate(data)}

    monkeypatch.setattr(fig4, "experiments", small)


def test_fig4_and_fig5_run_end_to_end(tiny, tmp_path):
    from matplotlib.figure import Figure

    from dlnlab.experiments.study import Citation, Paper
    from dlnlab.experiments.study_runner import run_studies

    paper = Paper(name="gross2024", title="test", citation=Citation(title="test"),
                  studies=(fig4.STUDY, fig5.STUDY))
    results = run_studies(paper, "all", quick=True, out=tmp_path, quiet=True)
    assert set(results) == {"fig4", "fig5"}
    for name in ("fig4", "fig5"):
        claims = json.loads((tmp_path / name / "claims.json").read_text())
        assert claims and all(c["verdict"] in VERDICTS for c in claims)
        assert (tmp_path / name / f"{name}.png").exists()
    import xarray as xr

    ds = xr.load_dataset(tmp_path / "fig5" / "fig5.nc")
    assert isinstance(fig5.figure(ds), Figure)
    claims = {c["id"]: c for c in fig5.claims(ds)}
    # N = 20 >= P = 16: SGD started at the interpolating solution does not move
    assert claims["fig5-zero-overparameterised"]["verdict"] == "supported"
    # exact theory: detailed balance gets worse towards P = N on the grid
    assert claims["fig5-detailed-balance"]["verdict"] == "supported"
    assert ds.eigenvalue_sgd.dims == ("ratio", "eigen_index")
    assert np.all(ds.relaxed_fraction.values <= 1.0)
    rows = fig5.numbers(ds)
    assert {r["panel"] for r in rows} == {"a", "b"}
    ds4 = xr.load_dataset(tmp_path / "fig4" / "fig4.nc")
    # at t = 0 every run sits at its own start, which eq. 2.27 starts from
    np.testing.assert_allclose(ds4.mode_sgd.isel(time=0), ds4.mode_mean_theory.isel(time=0),
                               atol=1e-12)


def test_covariance_error_sums_equal_the_direct_jackknife():
    """The closed-form leave-one-out sums of ``covariance_error`` against a direct jackknife
    (``np.delete`` per run) on random symmetric matrices; a 10% wrong SE would be caught."""
    rng = np.random.default_rng(11)
    truth = np.diag(rng.uniform(1.0, 3.0, 6))
    per_run = truth[None] + 0.4 * rng.standard_normal((25, 6, 6))
    per_run = 0.5 * (per_run + np.swapaxes(per_run, 1, 2))
    for reference in (truth, 1.03 * truth):
        def squared_bias(sample, reference=reference):
            return (np.sum((sample.mean(axis=0) - reference) ** 2)
                    - np.sum(sample.var(axis=0, ddof=1)) / sample.shape[0])

        d = squared_bias(per_run)
        loo = np.array([squared_bias(np.delete(per_run, i, axis=0)) for i in range(25)])
        se = np.sqrt(24 / 25 * np.sum((loo - loo.mean()) ** 2))
        norm = np.linalg.norm(reference)
        got = common.covariance_error(per_run, reference)
        assert got["systematic"] == pytest.approx(np.sqrt(max(d, 0.0)) / norm, rel=1e-9, abs=1e-12)
        assert got["systematic_upper"] == pytest.approx(np.sqrt(max(d + 1.645 * se, 0.0)) / norm,
                                                        rel=1e-9)
        assert got["bias_z"] == pytest.approx(d / se, rel=1e-8)
        assert abs(got["bias_z"] - d / (1.1 * se)) > 1e-3 * abs(d / se)
        monte_carlo = np.sqrt(np.sum(per_run.var(axis=0, ddof=1)) / 25) / norm
        assert got["monte_carlo"] == pytest.approx(monte_carlo, rel=1e-10)

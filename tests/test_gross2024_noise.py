"""The second paper's single-layer gradient-noise studies (fig2, fig3): the random-matrix laws
and estimators they rely on, each against an independent computation (and rejecting a wrong
formula), and both studies end to end at small sizes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import dlnlab as d
from conftest import assert_close_mc, assert_rejected_mc
from dlnlab.analysis.claims import VERDICTS
from dlnlab.experiments.study import Citation, Paper, Study
from dlnlab.experiments.study_runner import run_studies
from dlnlab.papers.gross2024 import common, fig2, fig3
from dlnlab.papers.gross2024.config import paper_config, single_layer_task
from dlnlab.theory.fluctuations import sample_space_matrix, sample_space_projector

N, P = 10, 30      # one shape for the JAX-side checks (each new shape compiles again)


def _task(num_inputs: int = N, num_samples: int = P, seed: int = 0,
          label_variance: float = 1e-2):
    """The paper's single-layer task on a fixed Gaussian data set (NumPy-drawn, so only the
    quantities under test compile)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, num_inputs)) / math.sqrt(num_inputs)
    teacher = rng.standard_normal(num_inputs)
    y = x @ teacher + math.sqrt(label_variance) * rng.standard_normal(num_samples)
    task = d.Task.from_spectrum(jax.random.key(0), num_inputs, 1, [math.sqrt(num_inputs)],
                                label_noise=math.sqrt(label_variance))
    return task.with_dataset(x, y[:, None])


# ---------------------------------------------------------------------------- fig2: projector
def test_projector_diagonal_and_identity_match_the_dense_projector():
    """The leverages equal diag(Pi) of ``sample_space_projector``; their sum is N exactly; the
    trace identity gives the off-diagonal mean square of the dense Pi exactly."""
    task = _task()
    pi = np.asarray(sample_space_projector(task))
    lev = fig2.projector_diagonal(np.asarray(task.data.inputs))
    np.testing.assert_allclose(lev, np.diag(pi), rtol=1e-10, atol=1e-12)
    assert lev.sum() == pytest.approx(N, rel=1e-12)          # <Pi_ii> = N/P exactly
    off = pi[~np.eye(P, dtype=bool)]
    assert np.mean(off**2) == pytest.approx((N - np.sum(lev**2)) / (P * (P - 1)), rel=1e-10)


def test_projector_moments_against_monte_carlo_and_reject_naive_law():
    """var Pi_ii and <Pi_ij^2> over 400 Gaussian data sets (N = 8, P = 20) against the exact
    random-projector law; the naive ``N/P^2`` (no ``(P-N)`` factor) is rejected."""
    n, p, reps = 8, 20, 400
    rng = np.random.default_rng(1)
    diag_var, off_var = np.empty(reps), np.empty(reps)
    for r in range(reps):
        lev = fig2.projector_diagonal(rng.standard_normal((p, n)))
        diag_var[r] = np.mean((lev - n / p) ** 2)
        off_var[r] = (n - np.sum(lev**2)) / (p * (p - 1))
    exact = fig2.projector_moments(n, p)
    se_d, se_o = diag_var.std(ddof=1) / math.sqrt(reps), off_var.std(ddof=1) / math.sqrt(reps)
    assert_close_mc(diag_var.mean(), exact["diagonal_variance"], se_d, what="var Pi_ii")
    assert_close_mc(off_var.mean(), exact["offdiagonal_variance"], se_o, what="<Pi_ij^2>")
    assert_rejected_mc(off_var.mean(), n / p**2, se_o, what="naive N/P^2")
    with pytest.raises(ValueError, match="num_samples"):
        fig2.projector_moments(20, 20)


# ---------------------------------------------------------------------------- fig2: K
def test_sample_space_matrix_residuals_and_over_parameterised_zero():
    """P K^mumu = r_mu^2 with the NumPy residuals (same data set); K = 0 for N >= P."""
    task = _task()
    x = np.asarray(task.data.inputs)
    y = np.asarray(task.data.targets)[:, 0]
    k = np.asarray(sample_space_matrix(task))[:, 0, 0]
    np.testing.assert_allclose(P * k, common.least_squares_residuals(x, y) ** 2, rtol=1e-8,
                               atol=1e-14)
    over = _task(N, N - 2)
    assert float(jnp.max(jnp.abs(sample_space_matrix(over)))) < 1e-20


def test_mean_of_k_is_one_minus_n_over_p_and_rejects_one():
    """<P K / sigma^2> = 1 - N/P exactly (N = 10, P = 25, 300 data sets); the large-P value 1
    (the paper's K ~ eps^2) is rejected at this P."""
    n, p, reps = 10, 25, 300
    rng = np.random.default_rng(2)
    means = np.array([np.mean(common.least_squares_residuals(
        rng.standard_normal((p, n)), rng.standard_normal(p)) ** 2) for _ in range(reps)])
    se = means.std(ddof=1) / math.sqrt(reps)
    assert_close_mc(means.mean(), 1 - n / p, se, what="<P K / sigma^2>")
    assert_rejected_mc(means.mean(), 1.0, se, what="K ~ eps^2")


def test_chi_square_order_statistics_two_draws():
    """E max(Z1^2, Z2^2) = 1 + 2/pi and E min = 1 - 2/pi; 1.5 (a wrong value) is rejected."""
    mean, var = fig2.chi_square_order_statistics(2, 200_000, seed=3)
    se = np.sqrt(var / 200_000)
    assert_close_mc(mean, [1 + 2 / math.pi, 1 - 2 / math.pi], se, what="chi^2_1 order")
    assert_rejected_mc(mean[0], 1.5, se[0], what="wrong E max")


# ---------------------------------------------------------------------------- fig3: noise
def test_noise_at_solution_is_noise_covariance_at_the_least_squares_solution():
    task = _task()
    x = np.asarray(task.data.inputs)
    y = np.asarray(task.data.targets)[:, 0]
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    exact = np.asarray(d.noise_covariance((jnp.asarray(w_star)[None, :],), task, 10, True))
    c = fig3.noise_at_solution(x, common.least_squares_residuals(x, y), 10)
    np.testing.assert_allclose(c, exact, rtol=1e-8, atol=1e-14)


def test_minibatch_estimator_against_noise_covariance_and_wrong_batch_factor():
    """The sampled minibatch-noise covariance at 3 fixed weights (N = 10, P = 30, S = 10) against
    ``dlnlab.noise_covariance`` (with replacement) averaged over them, within 5 SE over 24
    independent estimates; the without-replacement factor (P-S)/(S(P-1)) is rejected. The
    exact-law helper equals the same average to rounding."""
    n, p, s = N, P, 10
    task = _task(seed=4)
    x = np.asarray(task.data.inputs)
    y = np.asarray(task.data.targets)[:, 0]
    weights = np.random.default_rng(5).standard_normal((3, n))
    exact = np.mean([np.asarray(d.noise_covariance((jnp.asarray(w)[None, :],), task, s, True))
                     for w in weights], axis=0)
    np.testing.assert_allclose(fig3.exact_noise_at_weights(weights, x, y, s), exact, rtol=1e-9,
                               atol=1e-14)
    estimates = np.stack([fig3.minibatch_noise_covariance(weights, x, y, s, 4000, seed=k)
                          for k in range(24)])
    mean, se = estimates.mean(axis=0), estimates.std(axis=0, ddof=1) / math.sqrt(24)
    assert_close_mc(mean, exact, se, what="minibatch noise")
    wrong = exact * s * (p - s) / (s * (p - 1))
    diag = np.diag_indices(n)
    assert_rejected_mc(mean[diag].sum(), wrong[diag].sum(), math.sqrt(np.sum(se[diag] ** 2)),
                       what="without-replacement factor")
    with pytest.raises(ValueError, match="weights.shape"):
        fig3.minibatch_noise_covariance(weights[:, :3], x, y, s, 10, seed=0)


# ---------------------------------------------------------------------------- end to end
def _check_outputs(result: dict, name: str):
    claims = result[name]["claims"]
    assert claims and all(c["verdict"] in VERDICTS and c["figure"] == name for c in claims)


def test_fig2_end_to_end_small(tmp_path, monkeypatch):
    """fig2 at a small size: dataset, numbers within 5 SE of the exact projector law, claims,
    figure files."""
    monkeypatch.setattr(fig2, "NUM_INPUTS", (10, 20))
    monkeypatch.setattr(fig2, "RATIOS", (1.5, 2.0, 5.0, 10.0, 20.0))
    monkeypatch.setattr(fig2, "K_SAMPLES", (70, 200, 1000))
    monkeypatch.setattr(fig2, "K_REALISATIONS", 12)
    monkeypatch.setattr(fig2, "CHI_SQUARE_BUDGET", 100_000)
    paper = Paper(name="gross2024", title="test", citation=Citation(title="test"),
                  studies=(fig2.STUDY,))
    result = run_studies(paper, "all", quick=True, out=tmp_path, quiet=True)
    _check_outputs(result, "fig2")
    ds = xr.load_dataset(tmp_path / "fig2" / "fig2.nc")
    rows = [r for r in fig2.numbers(ds) if "offdiagonal_variance_exact" in r]
    for r in rows:
        assert abs(r["offdiagonal_variance"] - r["offdiagonal_variance_exact"]) <= \
            5 * r["offdiagonal_variance_se"] + 1e-15
        assert r["diagonal_mean"] == pytest.approx(r["diagonal_mean_exact"], rel=1e-12)
    for ext in ("png", "pdf", "nc"):
        assert (tmp_path / "fig2" / f"fig2.{ext}").exists()


def test_fig3_end_to_end_small(tmp_path, monkeypatch):
    """fig3 with SGD at N = 10 (P = 30; 4 runs): the measured noise agrees with the exact
    law at the recorded weights within its Monte Carlo error; claims and figure are written."""
    monkeypatch.setattr(fig3, "THEORY_RATIOS", (1.2, 1.5, 2.0, 6.0))
    monkeypatch.setattr(fig3, "SPECTRUM_RATIOS", (1.2, 6.0))
    monkeypatch.setattr(fig3, "REALISATIONS", 4)
    monkeypatch.setattr(fig3, "DRAWS", 500)

    def experiments(quick):
        return {f"P{p}": paper_config(f"fig3-test-P{p}", runs=4, horizon=40.0, points=9,
                                      changes={"task": single_layer_task(10, p, 1e-2)})
                for p in (30,)}

    study = Study("fig3", fig3.STUDY.title, fig3.STUDY.reference, experiments, fig3.analyse,
                  fig3.numbers, fig3.claims, fig3.figure)
    paper = Paper(name="gross2024", title="test", citation=Citation(title="test"),
                  studies=(study,))
    result = run_studies(paper, "all", quick=True, out=tmp_path, quiet=True)
    _check_outputs(result, "fig3")
    ds = xr.load_dataset(tmp_path / "fig3" / "fig3.nc")
    assert list(ds.num_samples.values) == [30]
    for r in fig3.noise_rows(ds):
        assert r["runs"] == 4 and r["records_per_run"] == 5
        # sampler against the exact law at the same weights: the raw error is Monte Carlo only
        assert r["error_vs_weights_raw"] <= 3 * r["error_vs_weights_monte_carlo"] + 1e-12
    assert (tmp_path / "fig3" / "fig3.png").exists()

"""gross2024 fig6 (loss perturbed along covariance eigenvectors, eq. 2.35) and the `discrete` study
(exact finite-learning-rate stationary covariance of one-layer SGD): the perturbed-loss identity
against a direct NumPy loss, the discrete solution the study compares with against a long direct
simulation of the SGD recursion, and both studies end to end at a small size."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import dlnlab as d
from dlnlab.experiments.study import Citation, Paper
from dlnlab.experiments.study_runner import run_studies
from dlnlab.papers.gross2024 import common, discrete, fig6
from dlnlab.papers.gross2024.config import single_layer_task
from dlnlab.theory import fluctuations as fl


def _single_layer(key, n, p, label_std=0.1, covariance=None):
    task = d.Task.from_spectrum(key, n, 1, [np.sqrt(n)], label_noise=label_std,
                                input_covariance=np.eye(n) / n if covariance is None else covariance)
    task = task.with_data(jax.random.fold_in(key, 1), p)
    w_star = fl.project_to_minimum((jnp.zeros((1, n)),), task)[0]
    return task, np.asarray(w_star)


def test_perturbed_loss_equals_the_quadratic_form_of_eq_2_35(key):
    """``L(w* + theta v) - L(w*)`` by ``fig6.perturbed_loss`` equals a NumPy evaluation of
    ``(1/2P) sum_mu (y_mu - w x_mu)^2`` and ``theta^2 v^T H v / 2`` with ``H = S_xx`` (eq. 2.35)
    along random unit directions, for correlated inputs and few samples; the paper's large-P
    form ``theta^2 sigma_x^2 / 2`` is rejected there (it needs ``P >> N`` and i.i.d. inputs)."""
    n, p = 6, 9
    cov = fig6.wishart_covariance(n, seed=3)
    task, w_star = _single_layer(key, n, p, covariance=cov)
    x, y = (np.asarray(a, dtype=np.float64) for a in task.data)
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((5, n))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    theta = np.array([-1.5, -0.3, 0.0, 0.7, 2.0])
    got = fig6.perturbed_loss(task, w_star, dirs, theta)

    def loss(w):
        return 0.5 * np.mean((x @ w.ravel() - y.ravel()) ** 2)

    direct = np.array([[loss(w_star + t * v[None, :]) - loss(w_star) for t in theta] for v in dirs])
    np.testing.assert_allclose(got, direct, rtol=1e-10, atol=1e-14)
    hessian = np.asarray(fl.training_loss_hessian((jnp.asarray(w_star),), task))
    np.testing.assert_allclose(hessian, x.T @ x / p, rtol=1e-12)
    quadratic = 0.5 * np.einsum("ip,pq,iq->i", dirs, hessian, dirs)[:, None] * theta[None, :] ** 2
    np.testing.assert_allclose(got, quadratic, rtol=1e-9, atol=1e-14)
    sigma_x2 = np.trace(cov) / n
    paper = 0.5 * sigma_x2 * theta[None, :] ** 2
    assert np.max(np.abs(got - paper)) > 0.1 * np.max(np.abs(got))


def test_wishart_covariance_normalisation():
    """``Sigma = A A^T / tr(A A^T)``: symmetric positive definite, unit trace, reproducible from
    its seed, not the identity; a bad size is one ValueError line."""
    sigma = fig6.wishart_covariance(7, seed=1)
    assert np.allclose(sigma, sigma.T) and np.linalg.eigvalsh(sigma).min() > 0
    assert np.trace(sigma) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(sigma, fig6.wishart_covariance(7, seed=1))
    assert np.ptp(np.linalg.eigvalsh(sigma)) > 0.1 / 7
    with pytest.raises(ValueError, match="num_inputs=0"):
        fig6.wishart_covariance(0)


def _sgd_final_states(key, task, w_star, lr, batch, chains, steps):
    """Independent chains of real one-layer minibatch SGD (with replacement) from ``w*``; the
    last state of each, minus ``w*``: ``(chains, N)``."""
    x, y = (jnp.asarray(a) for a in task.data)
    p = x.shape[0]

    def step(w, k):
        idx = jax.random.randint(k, (batch,), 0, p)
        xb, yb = x[idx], y[idx, 0]
        return w - lr * (xb.T @ (xb @ w - yb)) / batch, None

    def chain(k):
        w, _ = jax.lax.scan(step, jnp.asarray(w_star.ravel()), jax.random.split(k, steps))
        return w

    final = jax.jit(jax.vmap(chain))(jax.random.split(key, chains))
    return np.asarray(final) - w_star.ravel()[None, :]


def test_discrete_references_against_a_long_sgd_simulation(key):
    """The study's three reference covariances (``discrete.reference_covariances``) on a tiny
    problem in its setting (N = 3 inputs of variance 1/N, P = 12, S = 2) at lambda omega_max ~ 0.6: 30,000
    independent SGD chains agree with the exact discrete solution within the Monte Carlo error,
    and reject the continuous M (eq. 2.30) and the additive-noise discrete solution."""
    n, p, batch = 3, 12, 2
    task, w_star = _single_layer(key, n, p, label_std=0.3)
    lin = fl.linearised_fluctuations((jnp.asarray(w_star),), task, 0.1, batch, True)
    lr = 0.6 / float(lin.stationary.rates.max())
    m, additive, exact = discrete.reference_covariances(task, lin.drift, lin.diffusion, lr, batch,
                                                        True)
    slowest = float(lin.stationary.rates.min())
    steps = int(np.ceil(12.0 / (lr * slowest)))          # exp(-2 lr omega_min steps) < 1e-10
    samples = _sgd_final_states(jax.random.fold_in(key, 2), task, w_star, lr, batch, 30_000,
                                steps)
    from conftest import check_covariance_mc

    check_covariance_mc(samples, exact, wrong_cov=m, what="exact discrete vs continuous")
    check_covariance_mc(samples, exact, wrong_cov=additive, what="exact vs additive-only")


def test_bias_z_is_the_jackknife_z_of_the_squared_bias():
    """``discrete.bias_z`` (``common.covariance_error``'s ``bias_z``) equals ``D / SE_D``
    computed here directly (bias-corrected squared error and its jackknife standard error);
    zero when the estimated squared bias is negative."""
    rng = np.random.default_rng(4)
    truth = np.diag([1.0, 2.0, 3.0])
    per_run = truth[None] + 0.3 * rng.standard_normal((40, 3, 3))
    per_run = 0.5 * (per_run + np.swapaxes(per_run, 1, 2))
    shifted = truth + 0.5 * np.eye(3)

    def squared_bias(sample, reference):
        return (np.sum((sample.mean(axis=0) - reference) ** 2)
                - np.sum(sample.var(axis=0, ddof=1)) / sample.shape[0])

    for reference in (shifted, truth):
        dd = squared_bias(per_run, reference)
        loo = np.array([squared_bias(np.delete(per_run, i, axis=0), reference) for i in range(40)])
        se = np.sqrt(39 / 40 * np.sum((loo - loo.mean()) ** 2))
        z = discrete.bias_z(common.covariance_error(per_run, reference))
        assert z == pytest.approx(max(dd, 0.0) / se if dd > 0 else 0.0, rel=1e-8)
    assert discrete.bias_z(common.covariance_error(per_run, shifted)) > 5.0


def _paper(study):
    return Paper(name="gross2024", title="test", citation=Citation(title="test"), studies=(study,))


def test_fig6_end_to_end_at_a_small_size(tmp_path, monkeypatch):
    """fig6 through the study runner on small problems (N = 12 i.i.d., N = 8 Wishart): the files,
    the claims' shape, and the analysed dataset against independent computations: the mean of
    the curvature over an orthonormal eigenbasis is tr(S_xx)/N of the experiment's own data set,
    the perturbed loss at theta = 1 is kappa / 2, and the eigenvalues sum to the trace of the
    run-averaged covariance recomputed from the raw records."""
    sizes = {"iid": (12, 60, None), "wishart": (8, 40, fig6.wishart_covariance(8).tolist())}
    monkeypatch.setattr(fig6, "_task", lambda name: single_layer_task(
        sizes[name][0], sizes[name][1], fig6.LABEL_VARIANCE, sizes[name][2]))
    for name in fig6.SETTINGS:
        monkeypatch.setitem(fig6.RUNS, name, (6, 6))
        monkeypatch.setitem(fig6.HORIZON, name, (300.0, 300.0))
        monkeypatch.setitem(fig6.POINTS, name, (61, 61))
    result = run_studies(_paper(fig6.STUDY), "all", quick=True, out=tmp_path, quiet=True)
    folder = tmp_path / "fig6"
    for name in ("fig6.png", "fig6.pdf", "fig6.nc", "numbers.csv", "claims.json", "study.json"):
        assert (folder / name).is_file(), name
    claims = json.loads((folder / "claims.json").read_text())
    claim_list = claims["claims"] if isinstance(claims, dict) else claims
    assert [c["id"] for c in claim_list] == ["fig6-superposition", "fig6-no-ivfr-iid",
                                             "fig6-no-ivfr-wishart"]
    assert all(c["verdict"] in ("supported", "refuted", "not testable") for c in claim_list)
    assert result["fig6"]["claims"]
    ds = xr.load_dataset(folder / "fig6.nc")
    raw = {f.name.split("-")[1]: xr.load_dataset(f) for f in (tmp_path / "data").glob("*.nc")}
    for name in fig6.SETTINGS:
        part = ds.sel(setting=name)
        n = sizes[name][0]
        curvature = part.curvature.values[:n]
        assert np.all(np.isnan(part.curvature.values[n:]))
        x = np.asarray(_data_inputs(raw[name]))
        assert curvature.mean() == pytest.approx(np.trace(x.T @ x / x.shape[0]) / n, rel=1e-9)
        np.testing.assert_allclose(part.perturbed_loss.sel(theta=1.0).values[:n],
                                   curvature / 2, rtol=1e-9)
        samples = common.window_parameters(raw[name], "sgd", float(part.window_start))
        centre = _solution(raw[name])
        pooled = common.run_covariances(samples, centre).mean(axis=0)
        assert part.variance.values[:n].sum() == pytest.approx(np.trace(pooled), rel=1e-9)
        assert int(part.num_runs) == 6


def _data_inputs(ds):
    import tomllib

    from dlnlab.experiments.config import validate_config
    from dlnlab.experiments.run import build_task

    return build_task(validate_config(tomllib.loads(ds.attrs["config_toml"]))).data.inputs


def _solution(ds):
    """w* = (X^T X)^-1 X^T y of the experiment's data set, by NumPy least squares."""
    import tomllib

    from dlnlab.experiments.config import validate_config
    from dlnlab.experiments.run import build_task

    x, y = build_task(validate_config(tomllib.loads(ds.attrs["config_toml"]))).data
    return np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)[0].ravel()


def test_discrete_end_to_end_at_a_small_size(tmp_path, monkeypatch):
    """`discrete` through the study runner with two learning rates and short runs: the files and
    claims; the theory gap's O(lambda) slope; at lambda omega_max ~ 0.5 SGD is closer to the
    exact discrete solution than to the continuous M (their gap is ~0.4, far above the Monte
    Carlo error of 16 runs); the gap column equals |Sigma - M| / |M| recomputed here."""
    monkeypatch.setattr(discrete, "LEARNING_RATES", (0.5, 3.0))
    monkeypatch.setattr(discrete, "GRID", np.geomspace(1e-3, 0.6, 7))
    study = dataclasses.replace(discrete.STUDY, experiments=_small_discrete_experiments)
    run_studies(_paper(study), "all", quick=True, out=tmp_path, quiet=True)
    folder = tmp_path / "discrete"
    for name in ("discrete.png", "discrete.pdf", "discrete.nc", "claims.json"):
        assert (folder / name).is_file(), name
    ds = xr.load_dataset(folder / "discrete.nc")
    assert abs(float(ds.gap_slope.sel(discrete_reference="discrete")) - 1.0) < 0.05
    top = ds.sel(learning_rate=3.0)
    assert float(top.error_raw.sel(reference="discrete")) < \
        0.5 * float(top.error_raw.sel(reference="continuous"))
    assert float(top.bias_z.sel(reference="continuous")) > 5.0
    import tomllib

    from dlnlab.experiments.config import validate_config
    from dlnlab.experiments.run import build_task

    raw = next((tmp_path / "data").glob("discrete-lr3-*.nc"))
    task = build_task(validate_config(tomllib.loads(xr.load_dataset(raw).attrs["config_toml"])))
    x, y = (np.asarray(a) for a in task.data)
    w = np.linalg.lstsq(x, y, rcond=None)[0].T
    lin = fl.linearised_fluctuations((jnp.asarray(w),), task, 3.0, 10, True)
    m = fl.stationary_covariance(lin.drift, lin.diffusion, 3.0).covariance
    exact = fl.single_layer_discrete_covariance(task, 3.0, 10, True)
    assert float(top.theory_gap.sel(reference="discrete")) == pytest.approx(
        np.linalg.norm(exact - m) / np.linalg.norm(m), rel=1e-8)


def _small_discrete_experiments(quick):
    from dlnlab.papers.gross2024.config import paper_config

    task = single_layer_task(discrete.NUM_INPUTS, discrete.NUM_SAMPLES, discrete.LABEL_VARIANCE)
    return {f"lr{lr:g}": paper_config(f"discrete-lr{lr:g}", runs=16, horizon=1200.0, points=241,
                                      changes={"task": task, "training.learning_rate": lr})
            for lr in discrete.LEARNING_RATES}

"""The two-layer experiments shared by fig8 and fig9 (paper Sec. III) and their block analysis.

Model (paper eq. 3.1): ``N_o = 1`` output, pure-noise labels ``y ~ N(0, sigma_y^2)`` (teacher zero:
``task.spectrum = [0.0]``), inputs ``x ~ N(0, sigma_x^2 I)``, minibatches of ``S`` with replacement.
Every experiment starts all its runs from one shared initial draw (``init.shared``): only the
minibatch noise differs, so the runs sample the same quasi-stationary state.

Three experiments:

- ``small`` (Fig. 8b): ``N_i = 30``, ``N_h = 20``, ``P = 1000`` samples, ``sigma_y^2 = 0.1``, init
  variance ``fan_in^-3.7`` (``~1e-4 / N_i``), trained by SGD from the initial draw (the paper's
  protocol); the stationary window starts after learning.
- ``large`` (Figs. 8c, 9b): the same net from ``fan_in^-1`` (``1/N_i``, ``1/N_h``: eq. 3.35), put at
  the nearest global minimum (``init.at_minimum``), ``P = 10000`` samples.
- ``ivfr`` (Fig. 9a, psi = 2 regime): online data (the paper's ``P -> infinity`` limit, where
  eq. 3.38 is exact), ``N_i = 60``, ``N_h = 12``, init ``fan_in^-4`` so that ``D_1 << D_2`` (eq. 3.36,
  the approximation behind ``psi = 2``), inputs scaled so the slowest rate ``sigma_x^2 D_2`` is 0.1.

Quasi-stationarity. Under SGD the weights drift slowly *along* the manifold of minima (the paper
notes the slow drop of the weight norms, Sec. III C 2): a second-order effect the linear theory
does not contain. The analysis therefore cuts each run's stationary window into ``K`` time blocks;
in block ``k`` every run's block mean is moved to the manifold (``project_to_minimum``) to give its
centre ``theta*_rk``, and the linear theory (``linearised_fluctuations``: drift ``H``, diffusion
``C``, ``H M + M H = eta C`` on the range of ``H``) is evaluated at the runs' common solution
(the projected mean of the centres; the runs stay within a few % of each other). The fluctuation
``theta_t - theta*_rk`` is projected on the range of ``H`` (the ``N_i N_o`` non-zero modes): the
drift along the manifold lies in the kernel and drops out to first order, and no run mean is
subtracted (which would bias the slow modes). The SGD covariance on the range is compared with
the theory block by block; per-layer spectra are those of the block-averaged covariances
(SGD and theory alike) with the block-averaged Hessian. The kernel part that SGD
shows (the layer-1 eigenvalues beyond ``N_i``) is measured separately, about each run's block mean.
"""

from __future__ import annotations

import tomllib
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ..._validation import fail
from ...core.products import flatten_weights, unflatten_weights
from ...experiments.config import validate_config
from ...experiments.run import build_task
from ...theory.fluctuations import (
    layer_slices,
    layer_variance_curvature,
    linearised_fluctuations,
    project_to_minimum,
    two_layer_relaxation_rates,
    two_layer_second_layer_theory,
)
from .common import covariance_error, window_parameters
from .config import paper_config, size

INPUTS, HIDDEN = 30, 20          # N_i, N_h (paper Figs. 8, 9b); N_o = 1
LABEL_VARIANCE = 0.1             # sigma_y^2 (paper Fig. 8)
SMALL_SAMPLES, LARGE_SAMPLES = 1000, 10000   # P of the offline data sets
SMALL_GAMMA, LARGE_GAMMA = 3.7, 1.0          # init variance fan_in^-gamma (30^-3.7 = 1e-4 / 30)
IVFR_INPUTS, IVFR_HIDDEN, IVFR_GAMMA = 60, 12, 4.0

# Stationary windows (time t = step x learning rate) and the number of time blocks.
STARTS = {"small": 800.0, "large": 100.0, "ivfr": 50.0}
TWO_LAYER_COVARIANCE_TOL = 0.05  # SGD covariance on range(H) within 5% (relative Frobenius) of eq. 3.29
RATE_TOL = 0.05                  # measured relaxation rates within 5% of eq. 3.38 (weighted ratio)


BLOCK_LENGTHS = {"small": 800.0, "large": 300.0, "ivfr": 100.0}   # >= ~10 slowest relaxation times
MAX_BLOCKS = 6


def num_blocks(raw, key: str) -> int:
    """Time blocks of experiment ``key``'s stationary window: its length over
    ``BLOCK_LENGTHS[key]``, between 2 and ``MAX_BLOCKS``."""
    window = float(raw.time.values[-1]) - STARTS[key]
    return int(np.clip(window // BLOCK_LENGTHS[key], 2, MAX_BLOCKS))


def two_layer_task(inputs, hidden, label_variance, num_samples, input_variance) -> dict:
    """The ``[task]`` table of eq. 3.1: pure-noise labels ``y ~ N(0, sigma_y^2)`` (teacher zero),
    ``x ~ N(0, sigma_x^2 I)``, ``P`` samples (0: online)."""
    return {"d_in": inputs, "d_out": 1, "hidden": [hidden], "spectrum": [0.0],
            "label_noise": label_variance ** 0.5, "num_samples": num_samples,
            "input_covariance": [input_variance] * inputs}


def ivfr_setting() -> tuple[float, float]:
    """``(sigma_x^2, sigma_y^2)`` of the ``ivfr`` experiment: the slowest rate ``sigma_x^2 D_2``
    is 0.1 with ``D_2 ~ N_h^(1-gamma)``, and the fluctuation scale ``eta sigma_y^2 / 2S`` is
    1e-3 of ``D_1 ~ N_i^(1-gamma)`` (deep in the linear regime)."""
    d2 = IVFR_HIDDEN ** (1.0 - IVFR_GAMMA)
    d1 = IVFR_INPUTS ** (1.0 - IVFR_GAMMA)
    from .config import BATCH_SIZE, LEARNING_RATE
    return 0.1 / d2, 1e-3 * d1 * 2.0 * BATCH_SIZE / LEARNING_RATE


VARIABLES = ("loss", "amplitude", "diffusion", "parameters")


def experiments(quick: bool) -> dict:
    """The three shared experiments (module docstring)."""
    out = {}
    out["small"] = paper_config(
        "two-layer-small", runs=size(quick, 32, 128), horizon=size(quick, 2400.0, 2400.0),
        points=size(quick, 961, 961), variables=VARIABLES,
        changes={"task": two_layer_task(INPUTS, HIDDEN, LABEL_VARIANCE, SMALL_SAMPLES, 1.0 / INPUTS),
                 "init": {"kind": "gaussian", "gamma": SMALL_GAMMA, "shared": True}})
    out["large"] = paper_config(
        "two-layer-large", runs=size(quick, 32, 128), horizon=size(quick, 700.0, 1000.0),
        points=size(quick, 351, 501), variables=VARIABLES,
        changes={"task": two_layer_task(INPUTS, HIDDEN, LABEL_VARIANCE, LARGE_SAMPLES, 1.0 / INPUTS),
                 "init": {"kind": "gaussian", "gamma": LARGE_GAMMA, "shared": True,
                          "at_minimum": True}})
    input_variance, label_variance = ivfr_setting()
    out["ivfr"] = paper_config(
        "two-layer-ivfr", runs=size(quick, 32, 64), horizon=size(quick, 250.0, 1500.0),
        points=size(quick, 101, 601), variables=VARIABLES,
        changes={"task": two_layer_task(IVFR_INPUTS, IVFR_HIDDEN, label_variance, 0, input_variance),
                 "init": {"kind": "gaussian", "gamma": IVFR_GAMMA, "shared": True,
                          "at_minimum": True}})
    return out


class BlockAnalysis(NamedTuple):
    """Stationary statistics of one experiment, averaged over ``K`` time blocks (module docstring).

    Variances in units of ``theta^2``; ``scale`` = ``eta sigma_y^2 / (2 S)`` (the paper's
    normalisation, eq. 3.34); rates in 1/time (``t = step x learning rate``)."""

    widths: tuple[int, ...]
    runs: int
    blocks: int
    scale: float
    input_variance: float
    covariance_error: dict          # SGD range covariance vs continuous theory (covariance_error)
    mode_error: dict                # the same for the mode variances only (diagonal in H's eigenbasis)
    discrete_error: dict            # ... vs the discrete-time Lyapunov solution
    range_sgd: np.ndarray           # (r, r) block-averaged SGD covariance on range(H), last block basis
    range_theory: np.ndarray        # (r, r) theory, same basis
    reduced_sgd: np.ndarray         # (N_i + N_h, N_i + N_h) paper's z-coordinates (last block)
    reduced_theory: np.ndarray
    layer: dict                     # per layer l: {"sgd", "theory", "kernel"} -> (variance, curvature)
    second_layer_eq337: tuple       # (variance, curvature) of eqs. 3.34/3.37 at the solution
    rates_measured: np.ndarray      # (r,) autocorrelation rates, ascending mode index
    rates_se: np.ndarray            # (r,) jackknife standard errors over runs
    rates_drift: np.ndarray         # (r,) eigenvalues of H (block-averaged)
    rates_eq338: np.ndarray         # (r,) eq. 3.38 at the solution (block-averaged)
    d2_blocks: np.ndarray           # (K,) |W_2|^2 at the block solutions (the slow drift)
    kernel_fraction: float          # SGD variance outside range(H) / total (about the block centres)
    block_times: np.ndarray         # (K,) mid times of the blocks
    solution_spread: float          # rms distance of run centres from the common solution / its norm


def _config(raw):
    return validate_config(tomllib.loads(raw.attrs["config_toml"]))


def _project(theta, widths, task):
    weights = unflatten_weights(jnp.asarray(theta), widths)
    return np.asarray(flatten_weights(project_to_minimum(weights, task)), dtype=np.float64)


def _reduced_basis(theta, widths) -> np.ndarray:
    """Orthonormal ``(P, N_i + N_h)`` columns of the paper's coordinates (eqs. 3.23-3.24,
    ``N_o = 1``): ``z_1 = v^T dW_1`` (``v = W_2^T / |W_2|``, one per input) and ``z_2 = dW_2 a_i``
    (``a_i`` eigenvectors of ``W_1 W_1^T``, descending)."""
    w1, w2 = (np.asarray(w) for w in unflatten_weights(jnp.asarray(theta), widths))
    d_in, d_h = widths[0], widths[1]
    v = w2[0] / np.linalg.norm(w2[0])
    _, vectors = np.linalg.eigh(w1 @ w1.T)
    vectors = vectors[:, ::-1]
    columns = np.zeros((w1.size + w2.size, d_in + d_h))
    for j in range(d_in):               # vec(W_1) column-stacked: entry (i, j) at j d_h + i
        columns[j * d_h:(j + 1) * d_h, j] = v
    columns[w1.size:, d_in:] = vectors
    return columns


def autocorrelation_rates(y_blocks, dt, rates_theory) -> tuple[np.ndarray, np.ndarray]:
    """Relaxation rate of each mode from the autocorrelation of its coordinate ``y_j`` (zero mean
    known; runs and blocks pooled). For an OU mode ``dy = -omega y dt + noise``,
    ``<y_t y_(t+l dt)> = exp(-omega l dt) <y^2>`` (paper eq. 3.40), so
    ``omega_hat_j = -ln(rho_j) / (l_j dt)`` with ``rho_j = sum y_t y_(t+l) / sum y_t^2`` at the
    lag ``l_j = round(1 / (omega_j dt))`` (``rates_theory``: the expected rates, used only to pick
    the lag; clipped to ``[1, T_min / 4]``). ``y_blocks``: list of ``(R, T_k, r)`` arrays of
    records ``dt`` apart. Returns ``(rates, standard_errors)``, each ``(r,)``, the errors by the
    jackknife over runs (independent replicates)."""
    r_modes = rates_theory.size
    runs = y_blocks[0].shape[0]
    shortest = min(y.shape[1] for y in y_blocks)
    lags = np.clip(np.rint(1.0 / (rates_theory * dt)), 1, max(shortest // 4, 1)).astype(int)
    num = np.zeros((runs, r_modes))
    den = np.zeros((runs, r_modes))
    for y in y_blocks:
        for j in range(r_modes):
            lag = lags[j]
            num[:, j] += np.sum(y[:, :-lag, j] * y[:, lag:, j], axis=1)
            den[:, j] += np.sum(y[:, :-lag, j] ** 2, axis=1)

    def estimate(n, d):
        with np.errstate(invalid="ignore", divide="ignore"):
            return -np.log(np.clip(n / d, 1e-300, None)) / (lags * dt)

    full = estimate(num.sum(0), den.sum(0))
    leave = np.array([estimate(num.sum(0) - num[i], den.sum(0) - den[i]) for i in range(runs)])
    se = np.sqrt((runs - 1) / runs * np.sum((leave - leave.mean(0)) ** 2, axis=0))
    return full, se


def analyse_experiment(raw, start: float, num_blocks: int) -> BlockAnalysis:
    """Block analysis of one two-layer experiment (module docstring), with one BLAS thread (the
    many mid-size eigendecompositions run several times faster so on a loaded CPU). ``raw``: the
    run dataset with ``parameters``; ``start``: first time of the stationary window. Raises
    ``ValueError`` when the window has fewer than 4 records per block or fewer than 3 runs
    finished."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _analyse_experiment(raw, start, num_blocks)


def _analyse_experiment(raw, start: float, num_blocks: int) -> BlockAnalysis:
    config = _config(raw)
    task = build_task(config)
    widths = tuple(config.task.widths)
    if len(widths) != 3 or widths[-1] != 1:
        fail("task", widths, "the two-layer studies need widths (N_i, N_h, 1)")
    eta, batch = config.training.learning_rate, config.training.batch_size
    sigma2 = config.task.label_noise ** 2
    input_variance = float(np.mean(np.diag(config.task.input_covariance_matrix())))
    samples = window_parameters(raw, "sgd", start)                  # (R, T, P)
    runs, num_times, _ = samples.shape
    if runs < 3:
        fail("runs", runs, "the block analysis needs >= 3 finished runs")
    times = raw.time.values[raw.time.values >= start]
    dt = float(times[1] - times[0])
    parts = np.array_split(np.arange(num_times), num_blocks)
    if min(p.size for p in parts) < 4:
        fail("blocks", num_blocks, f"too many for {num_times} records in the window")
    slices = layer_slices(widths)
    per_run, theory_blocks, discrete_blocks, y_blocks = [], [], [], []
    sums: dict = {}
    drift_rates, eq338, d2s, kernel_parts, mids, spreads, eq337 = [], [], [], [], [], [], []
    for part in parts:
        block = samples[:, part]
        means = block.mean(axis=1)
        centres = np.stack([_project(m, widths, task) for m in means])
        common = _project(centres.mean(axis=0), widths, task)
        spreads.append(float(np.sqrt(np.mean(np.sum((centres - common) ** 2, axis=1)))
                             / np.linalg.norm(common)))
        weights = unflatten_weights(jnp.asarray(common), widths)
        lin = linearised_fluctuations(weights, task, eta, batch, config.training.replacement)
        basis, omega = lin.stationary.basis, lin.stationary.rates
        dev = block - centres[:, None, :]
        y = dev @ basis                                                   # (R, T_k, r)
        y_blocks.append(y)
        per_run.append(np.matmul(np.swapaxes(y, 1, 2), y) / part.size)
        theory_blocks.append(basis.T @ lin.stationary.covariance @ basis)
        discrete_blocks.append(basis.T @ lin.discrete_covariance @ basis)
        total = float(np.sum(dev * dev))
        kernel_parts.append(1.0 - float(np.sum(y * y)) / total)
        sgd_range = basis @ per_run[-1].mean(axis=0) @ basis.T
        own = block - means[:, None, :]
        kernel_cov = np.zeros_like(sgd_range)
        for sl in slices:
            flat = own[:, :, sl].reshape(-1, sl.stop - sl.start)
            kernel_cov[sl, sl] = flat.T @ flat / (runs * (part.size - 1))
        for key, cov in (("sgd", sgd_range), ("theory", lin.stationary.covariance),
                         ("kernel", kernel_cov), ("drift", lin.drift)):
            sums[key] = sums.get(key, 0.0) + cov / len(parts)
        w1, w2 = (np.asarray(w) for w in weights)
        drift_rates.append(omega)
        eq338.append(two_layer_relaxation_rates(w1, w2, input_variance)[-omega.size:])
        eq337.append(two_layer_second_layer_theory(w1, w2, eta, batch, sigma2, input_variance))
        d2s.append(float(np.sum(w2 * w2)))
        mids.append(float(times[part].mean()))
        last_basis, last_common, last_lin = basis, common, lin
    k = len(parts)
    r = theory_blocks[0].shape[0]

    def stacked(blocks_):       # block-diagonal over blocks: one matrix per run
        out = np.zeros(blocks_[0].shape[:-2] + (k * r, k * r))
        for i, b in enumerate(blocks_):
            out[..., i * r:(i + 1) * r, i * r:(i + 1) * r] = b
        return out

    per_run_stack = stacked([np.asarray(p) for p in per_run])
    error = covariance_error(per_run_stack, stacked(theory_blocks))
    discrete = covariance_error(per_run_stack, stacked(discrete_blocks))
    diagonal = np.eye(k * r)
    mode_error = covariance_error(per_run_stack * diagonal, stacked(theory_blocks) * diagonal)
    layer = {ell: {key: tuple(layer_variance_curvature(sums[key], sums["drift"], widths, ell)[:2])
                   for key in ("sgd", "theory", "kernel")} for ell in (1, 2)}
    reduced = _reduced_basis(last_common, widths)
    sgd_last = last_basis @ per_run[-1].mean(axis=0) @ last_basis.T
    measured, se = autocorrelation_rates(y_blocks, dt, np.mean(drift_rates, axis=0))
    return BlockAnalysis(
        widths, runs, k, eta * sigma2 / (2.0 * batch), input_variance, error, mode_error, discrete,
        per_run[-1].mean(axis=0), theory_blocks[-1],
        reduced.T @ sgd_last @ reduced, reduced.T @ last_lin.stationary.covariance @ reduced,
        layer, (np.mean([a for a, _ in eq337], axis=0), np.mean([b for _, b in eq337], axis=0)),
        measured, se, np.mean(drift_rates, axis=0), np.mean(eq338, axis=0), np.asarray(d2s),
        float(np.mean(kernel_parts)), np.asarray(mids), float(np.max(spreads)))

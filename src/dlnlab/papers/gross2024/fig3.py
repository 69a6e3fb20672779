"""fig3: the gradient-noise covariance of single-layer SGD against eq. 2.17 and the Hessian
approximation eq. 2.20 (paper Sec. II B 2, Fig. 3).

(a) SGD at ``N = 100``, ``lambda = 0.1``, ``S = 10``, ``sigma_eps^2 = 1e-2`` on one data set per
``P`` (engine runs that start at the least-squares solution ``w*``, ``init.at_minimum``, and
record their weights ``w_t`` in the window ``t >= WINDOW_FRACTION x horizon``). The noise is
MEASURED as the paper does ("via minibatch sampling in the stationary state"): at every
recorded ``w_t``, ``DRAWS`` fresh minibatches of ``S`` samples drawn with replacement (the
engine's law) give
``xi = grad L_B(w_t) - grad L(w_t)``; their empirical covariance, averaged over the recorded
weights of a run, is that run's estimate ``C_r`` (:func:`minibatch_noise_covariance`). Against:

- eq. 2.17 at ``w*`` of the same data set (the additive-noise approximation):
  ``C = (1/S) X^T diag(K) X``, ``K^mumu = r_mu^2 / P`` (eq. 2.18, ``dlnlab.theory.sample_space_matrix``);
- the exact batch-noise law at the recorded weights, ``(1/S)[(1/P) X^T diag(<r(w_t)^2>_t) X -
  <g_t g_t^T>_t]`` (multiplicative terms included; ``dlnlab.noise_covariance`` averaged over
  ``t``), which separates the sampler's Monte Carlo error from the effect of ``w_t != w*``;
- the paper's curve: the ordered eigenvalues of eq. 2.17 averaged over ``REALISATIONS`` data sets.

(b) Pure theory over data sets (fixed seed): ordered eigenvalues of eq. 2.17 against those of eq.
2.20, ``C ~ (sigma_eps^2 / S) H`` (``H = X^T X / P``), for ``P/N`` = 1.1, 2, 50; the largest and
smallest eigenvalues of both across ``P/N``; and the relative Frobenius distance
``|C_2.17 - C_2.20|_F / |C_2.20|_F``, ``~ sqrt(2 N / P)`` for ``P >> N``.
(c) ``<|V^T C V|>`` over data sets at ``N/P = 2/3`` (``V``: eigenvectors of ``H``, decreasing
eigenvalues), normalised to its largest entry.

Eigenvalues are in units of ``sigma_x^2 sigma_eps^2 / S`` (``sigma_x^2 = 1/N``), as in the paper.
"""

from __future__ import annotations

import math
import tomllib

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...analysis.stats import linear_fit
from ...experiments.config import validate_config
from ...experiments.run import build_task
from ...experiments.study import Study
from ...plot.panels import new_figure
from .common import covariance_error, least_squares_residuals, window_parameters
from .config import N_INPUTS, Z, paper_config, size

LABEL_VARIANCE = 1e-2          # sigma_eps^2 (Fig. 3 caption)
SGD_RATIOS = (1.2, 2.0, 10.0, 50.0)          # P/N of panel (a), full size
QUICK_SGD_RATIOS = (1.2, 10.0)
HORIZON = 200.0                # t = step x lambda: 2000 steps
POINTS = 41                    # records every 5 time units
WINDOW_FRACTION = 0.5          # window t >= 0.5 horizon = 100 ~ 1/sigma_x^2 after the start at w*:
                               # the bulk modes have relaxed
DRAWS = 2000                   # minibatches per recorded weight
THEORY_RATIOS = (1.1, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)    # panel (b) and its inset
SPECTRUM_RATIOS = (1.1, 2.0, 50.0)           # panel (b)'s spectra
MATRIX_RATIO = 1.5                           # panel (c): N/P ~ 0.67
REALISATIONS = 24              # data sets behind each theory curve
THEORY_SEED = 20240301
SAMPLER_SEED = 20240302
NOISE_TOL = 0.05               # claim (i): SGD's noise within 5% (relative Frobenius) of eq. 2.17


def experiments(quick: bool) -> dict:
    ratios = size(quick, QUICK_SGD_RATIOS, SGD_RATIOS)
    runs = size(quick, 6, 12)
    out = {}
    for ratio in ratios:
        p = int(round(ratio * N_INPUTS))
        out[f"P{p}"] = paper_config(f"fig3-N{N_INPUTS}-P{p}-R{runs}", runs=runs, horizon=HORIZON,
                                    points=POINTS, changes={"task.num_samples": p,
                                                            "task.label_noise":
                                                                math.sqrt(LABEL_VARIANCE)})
    return out


# ---------------------------------------------------------------------------- estimators
def minibatch_noise_covariance(weights, inputs, targets, batch_size: int, draws: int,
                               seed: int) -> np.ndarray:
    """Empirical covariance of the minibatch-gradient noise, averaged over weights.

    ``weights`` ``(T, N)``, ``inputs`` ``(P, N)``, ``targets`` ``(P,)``. At each ``w_t``,
    ``draws`` minibatches of ``batch_size`` indices drawn uniformly WITH replacement give
    ``xi = (1/S) sum_{i in B} r_i x_i - (1/P) sum_mu r_mu x_mu`` (``r = X w - y``, the gradient of
    ``L = (1/2P) sum (w.x - y)^2``); returns ``(1/T) sum_t (1/draws) sum xi xi^T`` ``(N, N)``,
    an unbiased estimate of ``(1/T) sum_t C(w_t)`` (eq. 2.14; ``dlnlab.noise_covariance``).
    Raises ``ValueError`` for mismatched shapes or ``batch_size``/``draws`` < 1."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or w.shape[1] != x.shape[1] or y.shape[0] != x.shape[0]:
        raise ValueError(f"weights.shape={w.shape}: must be (T, N) with inputs (P, N)={x.shape} "
                         f"and targets (P,)={y.shape}")
    if batch_size < 1 or draws < 1:
        raise ValueError(f"batch_size={batch_size}, draws={draws}: both must be >= 1")
    rng = np.random.default_rng(seed)
    total = np.zeros((x.shape[1], x.shape[1]))
    for wt in w:
        r = x @ wt - y
        full = x.T @ r / x.shape[0]
        idx = rng.integers(0, x.shape[0], size=(draws, batch_size))
        g = np.einsum("ds,dsn->dn", r[idx], x[idx]) / batch_size
        xi = g - full
        total += xi.T @ xi / draws
    return total / w.shape[0]


def exact_noise_at_weights(weights, inputs, targets, batch_size: int) -> np.ndarray:
    """``(1/T) sum_t C(w_t)`` by the exact with-replacement law
    ``C(w) = (1/S)[(1/P) sum_mu r_mu^2 x_mu x_mu^T - g g^T]`` (eq. 2.14-2.15), ``(N, N)``."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    r = w @ x.T - y[None, :]                                # (T, P)
    g = r @ x / x.shape[0]                                  # (T, N)
    second = x.T @ (np.mean(r**2, axis=0)[:, None] * x) / x.shape[0]
    return (second - g.T @ g / w.shape[0]) / batch_size


def noise_at_solution(inputs, residuals, batch_size: int) -> np.ndarray:
    """Eq. 2.17: ``C = (1/S) X^T diag(K) X`` with ``K^mumu = r_mu^2 / P`` (eq. 2.18), for
    ``inputs`` ``(..., P, N)`` and least-squares residuals ``(..., P)``; ``(..., N, N)``."""
    x = np.asarray(inputs, dtype=np.float64)
    k = np.asarray(residuals, dtype=np.float64) ** 2 / x.shape[-2]
    return np.swapaxes(x, -1, -2) @ (k[..., None] * x) / batch_size


def _config(ds: xr.Dataset):
    return validate_config(tomllib.loads(ds.attrs["config_toml"]))


# ---------------------------------------------------------------------------- theory over data sets
def _theory_realisations(n: int, s: int, label_variance: float):
    """Per ratio of ``THEORY_RATIOS``: ordered eigenvalues (decreasing) of eqs. 2.17 and 2.20 per
    data set (normalised), the relative Frobenius distance, and ``<|V^T C V|>`` at
    ``MATRIX_RATIO``, for ``n`` inputs, batch size ``s``."""
    unit = label_variance / (n * s)
    rng = np.random.default_rng(THEORY_SEED)
    eig17 = np.empty((len(THEORY_RATIOS), REALISATIONS, n))
    eig20 = np.empty_like(eig17)
    distance = np.empty((len(THEORY_RATIOS), REALISATIONS))
    matrix = np.zeros((n, n))
    for i, ratio in enumerate(THEORY_RATIOS):
        p = int(round(ratio * n))
        for r in range(REALISATIONS):
            x = rng.standard_normal((p, n)) / math.sqrt(n)
            e = math.sqrt(label_variance) * rng.standard_normal(p)
            c17 = noise_at_solution(x, least_squares_residuals(x, e), s) / unit
            hess = x.T @ x / p
            c20 = label_variance / s * hess / unit
            eig17[i, r] = np.linalg.eigvalsh(c17)[::-1]
            h_val, h_vec = np.linalg.eigh(hess)
            eig20[i, r] = (label_variance / s * h_val / unit)[::-1]
            distance[i, r] = np.linalg.norm(c17 - c20) / np.linalg.norm(c20)
            if ratio == MATRIX_RATIO:
                v = h_vec[:, ::-1]
                matrix += np.abs(v.T @ c17 @ v)
    return eig17, eig20, distance, matrix / REALISATIONS


# ---------------------------------------------------------------------------- analysis
def analyse(data) -> xr.Dataset:
    from threadpoolctl import threadpool_limits

    keys = sorted(data, key=lambda k: _config(data[k]).task.num_samples)
    configs = [_config(data[k]) for k in keys]
    num_samples = [c.task.num_samples for c in configs]
    runs = max(data[k].sizes["run"] for k in keys)
    draws = DRAWS
    c0 = configs[0]
    n, batch = c0.task.d_in, c0.training.batch_size
    label_variance = c0.task.label_noise**2
    if any((c.task.d_in, c.training.batch_size, c.task.label_noise) !=
           (n, batch, c0.task.label_noise) for c in configs):
        raise ValueError("experiments: fig3's experiments must share N, S and sigma_eps")
    unit = label_variance / (n * batch)
    shape = (len(keys), runs, n, n)
    measured = np.full(shape, np.nan)
    at_weights = np.full(shape, np.nan)
    solution = np.empty((len(keys), n, n))
    used_runs, records = [], []
    # many small matrices: one BLAS thread (BLAS threads' busy-waiting costs 10-100x when loaded)
    with threadpool_limits(limits=1, user_api="blas"):
        for i, (key, config) in enumerate(zip(keys, configs, strict=True)):
            ds = data[key]
            task = build_task(config)
            x = np.asarray(task.data.inputs, dtype=np.float64)
            y = np.asarray(task.data.targets, dtype=np.float64)[:, 0]
            # K of eq. 2.18 (= dlnlab.theory.sample_space_matrix, tests/test_gross2024_noise.py),
            # in NumPy: the JAX call compiles for every P
            solution[i] = noise_at_solution(x, least_squares_residuals(x, y),
                                            batch) / unit
            start = WINDOW_FRACTION * config.training.horizon
            w = window_parameters(ds, "sgd", start)                  # (runs_ok, T, N)
            used_runs.append(w.shape[0])
            records.append(w.shape[1])
            for r in range(w.shape[0]):
                measured[i, r] = minibatch_noise_covariance(
                    w[r], x, y, batch, draws,
                    SAMPLER_SEED + 1000 * i + r) / unit
                at_weights[i, r] = exact_noise_at_weights(w[r], x, y, batch) / unit
        eig17, eig20, distance, matrix = _theory_realisations(n, batch, label_variance)
    out = xr.Dataset(
        {"measured_noise": (("num_samples", "run", "row", "column"), measured,
                            {"long_name": "SGD: empirical minibatch-noise covariance per run "
                                          "(window average), / (sigma_x^2 sigma_eps^2 / S)"}),
         "noise_at_weights": (("num_samples", "run", "row", "column"), at_weights,
                              {"long_name": "exact batch-noise law averaged over the same "
                                            "recorded weights (eq. 2.14)"}),
         "noise_at_solution": (("num_samples", "row", "column"), solution,
                               {"long_name": "eq. 2.17 at w* of the same data set"}),
         "runs_used": ("num_samples", np.array(used_runs),
                       {"long_name": "runs with status ok (the others are labelled)"}),
         "records": ("num_samples", np.array(records),
                     {"long_name": "recorded weights per run in the window"}),
         "theory_eigenvalues": (("ratio", "realisation", "index"), eig17,
                                {"long_name": "eq. 2.17 eigenvalues, decreasing, per data set"}),
         "hessian_eigenvalues": (("ratio", "realisation", "index"), eig20,
                                 {"long_name": "eq. 2.20 eigenvalues (sigma_eps^2 H / S), "
                                               "decreasing, per data set"}),
         "hessian_distance": (("ratio", "realisation"), distance,
                              {"long_name": "|C_2.17 - C_2.20|_F / |C_2.20|_F per data set"}),
         "spectrum_ratios": ("spectrum_ratio", np.array(SPECTRUM_RATIOS),
                             {"long_name": "P/N of panel (b)'s spectra"}),
         "hessian_basis_noise": (("row", "column"), matrix / matrix.max(),
                                 {"long_name": f"<|V^T C V|> / max at P/N = {MATRIX_RATIO:g}"})},
        coords={"num_samples": num_samples, "run": np.arange(runs), "row": np.arange(n),
                "column": np.arange(n), "ratio": list(THEORY_RATIOS),
                "realisation": np.arange(REALISATIONS), "index": np.arange(1, n + 1)})
    out.attrs.update(num_inputs=n, learning_rate=c0.training.learning_rate,
                     batch_size=batch, label_variance=label_variance,
                     window_start=WINDOW_FRACTION * c0.training.horizon,
                     horizon=c0.training.horizon, draws=draws,
                     unit="sigma_x^2 sigma_eps^2 / S = sigma_eps^2 / (N S)",
                     matrix_ratio=MATRIX_RATIO,
                     theory_seed=THEORY_SEED, sampler_seed=SAMPLER_SEED,
                     replacement="minibatches of S drawn with replacement (engine and sampler)")
    return out


# ---------------------------------------------------------------------------- statistics
def noise_rows(ds: xr.Dataset) -> list[dict]:
    """Per ``P``: the run-averaged measured covariance against eq. 2.17 at ``w*`` and against
    the exact law at the recorded weights (``common.covariance_error``: raw, Monte Carlo,
    bias-corrected systematic and its one-sided 95% upper bound), the ordered eigenvalues'
    relative deviations (median, 90th percentile), and the systematic part of
    ``|<C(w_t)> - C(w*)| / |C(w*)|`` (the effect of ``w_t != w*``: multiplicative noise)."""
    rows = []
    for i, p in enumerate(ds.num_samples.values):
        runs = int(ds.runs_used[i])
        per_run = ds.measured_noise.values[i, :runs]
        c_star = ds.noise_at_solution.values[i]
        at_w = ds.noise_at_weights.values[i, :runs]
        vs_star = covariance_error(per_run, c_star)
        vs_w = covariance_error(per_run, at_w.mean(axis=0))
        shift = covariance_error(at_w, c_star)
        ev_m = np.linalg.eigvalsh(per_run.mean(axis=0))[::-1]
        ev_t = np.linalg.eigvalsh(c_star)[::-1]
        dev = np.abs(ev_m - ev_t) / ev_t
        rows.append({"num_samples": int(p), "ratio": float(p) / ds.attrs["num_inputs"],
                     "runs": runs, "records_per_run": int(ds.records[i]),
                     "minibatches": int(runs * int(ds.records[i]) * ds.attrs["draws"]),
                     "error_raw": vs_star["raw"], "error_monte_carlo": vs_star["monte_carlo"],
                     "error_systematic": vs_star["systematic"],
                     "error_systematic_upper": vs_star["systematic_upper"],
                     "error_vs_weights_raw": vs_w["raw"],
                     "error_vs_weights_monte_carlo": vs_w["monte_carlo"],
                     "error_vs_weights_systematic_upper": vs_w["systematic_upper"],
                     "weights_shift_systematic": shift["systematic"],
                     "weights_shift_systematic_upper": shift["systematic_upper"],
                     "eigenvalue_median_relative_deviation": float(np.median(dev)),
                     "eigenvalue_p90_relative_deviation": float(np.quantile(dev, 0.9)),
                     "largest_eigenvalue": float(ev_t[0]), "smallest_eigenvalue": float(ev_t[-1])})
    return rows


def hessian_rows(ds: xr.Dataset) -> list[dict]:
    """Per ``P/N`` of the theory grid: the distance between eqs. 2.17 and 2.20 (mean ± SE over
    data sets) and the mean extreme eigenvalues of both."""
    rows = []
    for i, ratio in enumerate(ds.ratio.values):
        d = ds.hessian_distance.values[i]
        e17 = ds.theory_eigenvalues.values[i]
        e20 = ds.hessian_eigenvalues.values[i]
        rows.append({"ratio": float(ratio), "distance": float(d.mean()),
                     "distance_se": float(d.std(ddof=1) / math.sqrt(d.size)),
                     "distance_large_p": math.sqrt(2.0 / float(ratio)),
                     "max_eq_2_17": float(e17[:, 0].mean()), "min_eq_2_17": float(e17[:, -1].mean()),
                     "max_eq_2_20": float(e20[:, 0].mean()), "min_eq_2_20": float(e20[:, -1].mean()),
                     "data_sets": int(d.size)})
    return rows


def numbers(ds):
    return noise_rows(ds) + hessian_rows(ds)


def claims(ds):
    out = []
    rows = noise_rows(ds)
    ok = all(r["error_systematic_upper"] <= NOISE_TOL for r in rows)
    measured = "; ".join(
        f"P/N = {r['ratio']:g} ({r['runs']} runs x {r['records_per_run']} weights x "
        f"{ds.attrs['draws']} minibatches): raw {r['error_raw']:.3f}, Monte Carlo "
        f"{r['error_monte_carlo']:.3f}, systematic {r['error_systematic']:.3f} (95% upper "
        f"{r['error_systematic_upper']:.3f}); the exact law at the recorded w_t differs from "
        f"eq. 2.17 at w* by {r['weights_shift_systematic']:.4f} (systematic, 95% upper "
        f"{r['weights_shift_systematic_upper']:.4f})"
        for r in rows)
    out.append(claim_row(
        "fig3-noise-eq-2-17", "The gradient-noise covariance of SGD in the stationary state "
        "agrees with eq. 2.17 (the additive-noise approximation at w*).", "Sec. II B 2, Fig. 3a",
        "fig3", "relative Frobenius error of the run-averaged measured covariance against eq. 2.17 "
        "on the same data set, N = " f"{ds.attrs['num_inputs']}: " + measured,
        {"rows": rows}, f"the one-sided 95% upper bound of the bias-corrected systematic error is "
        f"<= {NOISE_TOL:.0%} at every P/N", "supported" if ok else "refuted"))

    h = hessian_rows(ds)
    ratio = np.array([r["ratio"] for r in h])
    dist = np.array([r["distance"] for r in h])
    se = np.array([r["distance_se"] for r in h])
    steps = np.diff(dist) / np.sqrt(se[1:] ** 2 + se[:-1] ** 2)
    fit = linear_fit(np.log(ratio), np.log(dist))
    ok = bool(np.all(steps < -Z)) and fit["slope"] + Z * fit["slope_se"] < 0
    out.append(claim_row(
        "fig3-hessian-approach", "The noise deviates from the Hessian approximation (eq. 2.20) "
        "and approaches it as P/N -> infinity.", "Sec. II B 2, Fig. 3b", "fig3",
        "relative Frobenius distance |C_2.17 - C_2.20| / |C_2.20|, mean over "
        f"{h[0]['data_sets']} data sets per P/N: " + ", ".join(
            f"{r['ratio']:g}: {r['distance']:.3f} ± {r['distance_se']:.3f}" for r in h)
        + f"; log-log slope {fit['slope']:.3f} ± {fit['slope_se']:.3f} (large-P law "
        "sqrt(2N/P): -0.5)", {"rows": h, "slope": fit["slope"], "slope_se": fit["slope_se"]},
        f"the distance decreases at every step of the P/N grid by more than {Z:g} SE and its "
        f"log-log slope is below 0 by more than {Z:g} SE", "supported" if ok else "refuted"))
    return out


# ---------------------------------------------------------------------------- figure
def figure(ds):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    fig, axes = new_figure(2, 3, figsize=(17.0, 10.0))
    (ax_a, ax_b, ax_c), (ax_r, ax_e, ax_d) = axes
    n = ds.attrs["num_inputs"]
    index = ds.index.values
    realisations = ds.sizes["realisation"]
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, ds.sizes["num_samples"]))
    for i, p in enumerate(ds.num_samples.values):
        runs = int(ds.runs_used[i])
        ev = np.linalg.eigvalsh(ds.measured_noise.values[i, :runs].mean(axis=0))[::-1]
        ev_star = np.linalg.eigvalsh(ds.noise_at_solution.values[i])[::-1]
        ax_a.semilogy(index, ev, "-", color=colours[i], lw=1.8,
                      label=f"P/N = {p / n:g}: SGD ({runs} runs)")
        ax_a.semilogy(index, ev_star, "k--", lw=0.8)
        near = int(np.argmin(np.abs(ds.ratio.values - p / n)))
        if np.isclose(ds.ratio.values[near], p / n):
            ax_a.semilogy(index, ds.theory_eigenvalues.values[near].mean(axis=0), ":",
                          color="C3", lw=1.2)
        ax_r.plot(index, ev / ev_star, "-", color=colours[i], lw=1.2, label=f"P/N = {p / n:g}")
    ax_a.plot([], [], "k--", lw=0.8, label="eq. 2.17 at w*, same data set")
    ax_a.plot([], [], ":", color="C3", lw=1.2, label=f"eq. 2.17, mean of {realisations} data sets")
    ax_a.set_xlabel("index (decreasing)")
    ax_a.set_ylabel("eigenvalue of C / (σ_x² σ_ε² / S)")
    ax_a.set_title(f"(a) noise spectrum measured from SGD\nN = {n}, λ = "
                   f"{ds.attrs['learning_rate']:g}, S = {ds.attrs['batch_size']}, σ_ε² = "
                   f"{ds.attrs['label_variance']:g}, {ds.attrs['draws']} minibatches per weight",
                   fontsize=9)
    ax_a.legend(fontsize=7)
    ax_r.axhline(1.0, color="k", lw=0.8)
    ax_r.set_xlabel("index (decreasing)")
    ax_r.set_ylabel("SGD eigenvalue / eq. 2.17 eigenvalue")
    ax_r.set_title("(a') measured against eq. 2.17 (same data set), index by index", fontsize=9)
    ax_r.legend(fontsize=7)

    spectra = [float(r) for r in ds.spectrum_ratios.values]
    colours_b = colormaps["plasma"](np.linspace(0.0, 0.8, len(spectra)))
    for j, ratio in enumerate(spectra):
        i = int(np.argmin(np.abs(ds.ratio.values - ratio)))
        ax_b.semilogy(index, ds.theory_eigenvalues.values[i].mean(axis=0), "-", color=colours_b[j],
                      lw=1.6, label=f"P/N = {ratio:g}: eq. 2.17")
        ax_b.semilogy(index, ds.hessian_eigenvalues.values[i].mean(axis=0), "--",
                      color=colours_b[j], lw=1.2, label=f"P/N = {ratio:g}: eq. 2.20 (Hessian)")
    ax_b.set_xlabel("index (decreasing)")
    ax_b.set_ylabel("eigenvalue / (σ_x² σ_ε² / S)")
    ax_b.set_title(f"(b) eq. 2.17 against the Hessian approximation 2.20\nN = {n}, mean of "
                   f"{realisations} data sets", fontsize=9)
    ax_b.legend(fontsize=7, loc="lower left")

    h = hessian_rows(ds)
    r = [row["ratio"] for row in h]
    ax_e.loglog(r, [row["max_eq_2_17"] for row in h], "o-", color="C0", ms=4, label="largest, 2.17")
    ax_e.loglog(r, [row["max_eq_2_20"] for row in h], "s--", color="C0", ms=4, mfc="none",
                label="largest, 2.20")
    ax_e.loglog(r, [row["min_eq_2_17"] for row in h], "o-", color="C3", ms=4,
                label="smallest, 2.17")
    ax_e.loglog(r, [row["min_eq_2_20"] for row in h], "s--", color="C3", ms=4, mfc="none",
                label="smallest, 2.20")
    ax_e.set_xlabel("P / N")
    ax_e.set_ylabel("eigenvalue / (σ_x² σ_ε² / S)")
    ax_e.set_title(f"(b') extreme eigenvalues (mean of {realisations} data sets)", fontsize=9)
    ax_e.legend(fontsize=7)

    dist = np.array([row["distance"] for row in h])
    se = np.array([row["distance_se"] for row in h])
    ax_d.errorbar(r, dist, yerr=Z * se, fmt="o-", color="C0", ms=4, capsize=2,
                  label=f"|C_2.17 − C_2.20|_F / |C_2.20|_F (± {Z:g} SE)")
    ax_d.loglog(r, [row["distance_large_p"] for row in h], "k--", lw=0.9,
                label="large-P law √(2N/P)")
    ax_d.set_xscale("log")
    ax_d.set_yscale("log")
    ax_d.set_xlabel("P / N")
    ax_d.set_ylabel("relative Frobenius distance")
    ax_d.set_title("(b'') deviation from the Hessian approximation", fontsize=9)
    ax_d.legend(fontsize=7)

    image = ax_c.imshow(ds.hessian_basis_noise.values, norm=LogNorm(vmin=1e-4, vmax=1.0),
                        cmap="magma", origin="upper")
    fig.colorbar(image, ax=ax_c, fraction=0.046, pad=0.04, label="|(VᵀCV)_ij| / max")
    ax_c.set_xlabel("Hessian eigenvector j (decreasing eigenvalue)")
    ax_c.set_ylabel("Hessian eigenvector i")
    ax_c.set_title(f"(c) noise in the Hessian eigenbasis, P/N = {ds.attrs['matrix_ratio']:g}\n"
                   f"mean |VᵀCV| over {realisations} data sets", fontsize=9)
    fig.suptitle("Fig. 3 — gradient-noise covariance of single-layer SGD: eq. 2.17 against "
                 "SGD and against the Hessian approximation (eq. 2.20)")
    fig.tight_layout()
    return fig


STUDY = Study("fig3", "Gradient-noise spectra: SGD against eq. 2.17 and the Hessian approximation",
              "Fig. 3, Sec. II B 2", experiments, analyse, numbers, claims, figure)

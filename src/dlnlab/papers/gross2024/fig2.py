"""fig2: random-matrix statistics behind the single-layer gradient noise (paper Sec. II B 2, Fig. 2).

No SGD here: ``experiments`` is empty and ``analyse`` draws Gaussian data sets from fixed seeds.

(a) The sample-space projector ``Pi = X (X^T X)^+ X^T`` (``dlnlab.theory.sample_space_projector``;
our ``X`` is the paper's ``X^T``, ``P x N``). For i.i.d. Gaussian inputs ``Pi`` is a uniformly
random rank-``N`` projector in ``R^P`` (the column span of ``X`` is Haar distributed), so its
diagonal ``Pi_ii = |U_i|^2`` (``U`` an orthonormal basis of the span) is ``Beta(N/2, (P-N)/2)``
and, with ``sum_j Pi_ij^2 = Pi_ii``, exactly (beyond the paper)::

    <Pi_ii> = N/P,   var Pi_ii = 2 N (P-N) / (P^2 (P+2)),
    <Pi_ij^2> = N (P-N) / (P (P+2) (P-1))   (i != j; <Pi_ij> = 0).

With ``s = P/N``, ``N var Pi_ij -> (s-1)/s^3`` as ``N -> oo``: the ``N^-1`` collapse of the paper
holds, and its ``s^-1.8`` is the effective slope of ``(s-1)/s^3`` over ``s`` in [2, 50] (``-> s^-2``
as ``s -> oo``). The diagonal variance is twice the off-diagonal one for ``P >> N``.
Measured per data set: ``var_diag = mean_i (Pi_ii - N/P)^2`` and, using ``tr Pi^2 = tr Pi = N``,
``var_off = (N - sum_i Pi_ii^2) / (P (P-1))``, the mean of ``Pi_ij^2`` over ``i != j`` (exact for a
projector, so ``Pi`` is never formed: ``P`` reaches ``100 N``).

(b) The diagonal sample-space matrix ``K`` of eq. 2.18 (``dlnlab.theory.sample_space_matrix``):
``P K^mumu = r_mu^2`` with the least-squares residuals ``r = (Pi - 1) eps``, for ``N = 50`` and
``P`` from 70 to 10000, sorted in decreasing order and averaged over data sets, against the
paper's approximation ``P K^mumu ~ (eps^mu)^2``: the expected order statistics of ``P`` draws of
``sigma_eps^2 chi^2_1`` (Monte Carlo with many draws, its own seed). ``<P K^mumu> = sigma_eps^2
(1 - N/P)`` exactly (``1 - Pi`` is a rank ``P - N`` projector). The distance of the two sorted
curves (relative L2 over ranks, Monte Carlo variance subtracted) decreases with ``P``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.stats
import xarray as xr

from ...analysis.claims import claim_row
from ...analysis.stats import linear_fit
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from .common import least_squares_residuals
from .config import CONFIDENCE, Z

PROJECTOR_SEED = 20240201     # data sets of panel (a)
SAMPLE_SPACE_SEED = 20240202  # data sets of panel (b)
CHI_SQUARE_SEED = 20240203    # independent draws of the squared-Gaussian order statistics
LABEL_VARIANCE = 1e-2         # sigma_eps^2 of panel (b) (the normalised curves do not depend on it)

RATIOS = (1.25, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0, 30.0, 50.0, 100.0)   # s = P/N, panel (a)
FIT_RANGE = (2.0, 50.0)       # s range of the exponent fit, fixed in advance
PAPER_EXPONENT = -1.8         # var(Pi) ~ N^-1 (P/N)^-1.8 (Sec. II B 2)
EXPONENT_TOL = 0.1            # the fitted s-exponent within 0.1 of -1.8
COLLAPSE_TOL = 0.05           # the fitted N-exponent within 0.05 of -1
K_INPUTS = 50                 # N of panel (b)
K_SAMPLES = (70, 100, 200, 500, 1000, 2000, 5000, 10000)


NUM_INPUTS = (25, 50, 100, 200)  # N of panel (a)
CELL_BUDGET = 4_000            # panel (a): about CELL_BUDGET / P data sets per cell ...
CELL_REPS = (3, 24)            # ... clipped to this range (equal precision across cells)
K_REALISATIONS = 100           # panel (b): data sets per P (as the paper)
CHI_SQUARE_BUDGET = 2_000_000  # squared Gaussians drawn per P for the order statistics


def cell_realisations(num_samples: int) -> int:
    """Data sets of a panel (a) cell: the variance of one data set's estimate falls as 1/P."""
    return int(np.clip(math.ceil(CELL_BUDGET / num_samples), *CELL_REPS))


def experiments(quick: bool) -> dict:
    return {}


# ---------------------------------------------------------------------------- exact laws
def projector_moments(num_inputs, num_samples) -> dict:
    """Exact moments of the entries of ``Pi`` (module docstring) for i.i.d. Gaussian inputs,
    ``num_samples > num_inputs``: ``diagonal_mean`` ``N/P``, ``diagonal_variance``
    ``2N(P-N)/(P^2(P+2))``, ``offdiagonal_variance`` ``N(P-N)/(P(P+2)(P-1))``; arrays broadcast.
    Raises ``ValueError`` unless ``P > N >= 1``."""
    n = np.asarray(num_inputs, dtype=np.float64)
    p = np.asarray(num_samples, dtype=np.float64)
    if np.any(n < 1) or np.any(p <= n):
        raise ValueError(f"num_samples={num_samples}: must exceed num_inputs={num_inputs} >= 1 "
                         "(under-parameterised; Pi = 1 otherwise)")
    return {"diagonal_mean": n / p, "diagonal_variance": 2 * n * (p - n) / (p**2 * (p + 2)),
            "offdiagonal_variance": n * (p - n) / (p * (p + 2) * (p - 1))}


def projector_diagonal(inputs: np.ndarray) -> np.ndarray:
    """The leverages ``Pi_ii = x_i^T (X^T X)^-1 x_i`` of ``inputs`` ``X`` ``(P, N)``, full
    column rank: the diagonal of ``sample_space_projector``, ``(P,)``, by a Cholesky factor of
    ``X^T X`` (``O(P N^2)``, ``Pi`` is not formed)."""
    x = np.asarray(inputs, dtype=np.float64)
    chol = scipy.linalg.cholesky(x.T @ x, lower=True)
    z = scipy.linalg.solve_triangular(chol, x.T, lower=True)
    return np.einsum("ip,ip->p", z, z)


def chi_square_order_statistics(num_samples: int, draws: int, seed: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Expected order statistics (decreasing) of ``num_samples`` i.i.d. ``chi^2_1`` variables by
    Monte Carlo over ``draws`` independent sets: ``(mean, variance of one set)``, each
    ``(num_samples,)`` (the mean's standard error is ``sqrt(variance / draws)``)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(num_samples)
    square = np.zeros(num_samples)
    block = max(1, 2_000_000 // num_samples)
    done = 0
    while done < draws:
        k = min(block, draws - done)
        z = -np.sort(-rng.standard_normal((k, num_samples)) ** 2, axis=1)
        total += z.sum(axis=0)
        square += (z**2).sum(axis=0)
        done += k
    mean = total / draws
    return mean, (square / draws - mean**2) * draws / (draws - 1)


# ---------------------------------------------------------------------------- analysis
def _projector_panel():
    top = max(cell_realisations(int(round(s * n))) for n in NUM_INPUTS for s in RATIOS)
    shape = (len(NUM_INPUTS), len(RATIOS), top)
    diag_var, off_var, diag_mean = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape,
                                                                                          np.nan)
    rng = np.random.default_rng(PROJECTOR_SEED)
    for i, n in enumerate(NUM_INPUTS):
        for j, s in enumerate(RATIOS):
            p = int(round(s * n))
            for r in range(cell_realisations(p)):
                x = rng.standard_normal((p, n)) / math.sqrt(n)
                d = projector_diagonal(x)
                diag_mean[i, j, r] = d.mean()
                diag_var[i, j, r] = np.mean((d - n / p) ** 2)
                off_var[i, j, r] = (n - np.sum(d**2)) / (p * (p - 1))
    return diag_var, off_var, diag_mean


def _sample_space_panel():
    top = max(K_SAMPLES)
    mean_curve = np.full((len(K_SAMPLES), top), np.nan)
    var_curve = np.full((len(K_SAMPLES), top), np.nan)
    chi_mean = np.full((len(K_SAMPLES), top), np.nan)
    chi_var = np.full((len(K_SAMPLES), top), np.nan)
    chi_draws = np.empty(len(K_SAMPLES), dtype=np.int64)
    residual_mean = np.empty((len(K_SAMPLES), K_REALISATIONS))
    rng = np.random.default_rng(SAMPLE_SPACE_SEED)
    n, sigma = K_INPUTS, math.sqrt(LABEL_VARIANCE)
    for i, p in enumerate(K_SAMPLES):
        curves = np.empty((K_REALISATIONS, p))
        for r in range(K_REALISATIONS):
            x = rng.standard_normal((p, n)) / math.sqrt(n)
            e = sigma * rng.standard_normal(p)
            k = least_squares_residuals(x, e) ** 2 / p        # K^mumu (eq. 2.18)
            scaled = p * k / LABEL_VARIANCE
            residual_mean[i, r] = scaled.mean()
            curves[r] = -np.sort(-scaled)
        mean_curve[i, :p] = curves.mean(axis=0)
        var_curve[i, :p] = curves.var(axis=0, ddof=1)
        chi_draws[i] = max(400, CHI_SQUARE_BUDGET // p)
        chi_mean[i, :p], chi_var[i, :p] = chi_square_order_statistics(
            p, int(chi_draws[i]), CHI_SQUARE_SEED + i)
    return mean_curve, var_curve, chi_mean, chi_var, chi_draws, residual_mean


def ordered_distance(mean_curve, var_curve, realisations, chi_mean, chi_var, chi_draws) -> dict:
    """Relative L2 distance over ranks between the mean sorted ``P K`` curve and the expected
    ``chi^2_1`` order statistics of one ``P``: ``raw = |c - e| / |e|`` and the Monte Carlo-corrected
    ``corrected = sqrt(max(|c - e|^2 - sum var_c / R - sum var_e / D, 0)) / |e|`` (the sampling
    part of ``|c - e|^2`` removed, as in ``common.covariance_error``)."""
    ok = np.isfinite(mean_curve)
    c, e = mean_curve[ok], chi_mean[ok]
    norm2 = float(np.sum(e**2))
    raw2 = float(np.sum((c - e) ** 2))
    noise2 = float(np.sum(var_curve[ok]) / realisations + np.sum(chi_var[ok]) / chi_draws)
    return {"raw": math.sqrt(raw2 / norm2), "corrected": math.sqrt(max(raw2 - noise2, 0.0) / norm2),
            "noise": math.sqrt(noise2 / norm2)}


def analyse(data) -> xr.Dataset:
    """Both panels from fixed seeds (``data`` is empty: no simulation; one size for the quick and
    the full run, it takes ~20 s). Panel (a) has a ragged ``realisation`` axis (NaN beyond a
    cell's count, :func:`cell_realisations`)."""
    from threadpoolctl import threadpool_limits

    inputs = NUM_INPUTS
    # many small matrices: one BLAS thread (on a loaded machine BLAS threads' busy-waiting made
    # these 10-100x slower)
    with threadpool_limits(limits=1, user_api="blas"):
        diag_var, off_var, diag_mean = _projector_panel()
        mean_curve, var_curve, chi_mean, chi_var, chi_draws, residual_mean = _sample_space_panel()
    reps_b = K_REALISATIONS
    n_grid = np.asarray(inputs, dtype=np.float64)[:, None]
    p_grid = np.round(np.asarray(RATIOS)[None, :] * n_grid)
    exact = projector_moments(n_grid, p_grid)
    top = max(K_SAMPLES)
    ds = xr.Dataset(
        {"projector_diagonal_variance": (("num_inputs", "ratio", "realisation"), diag_var,
                                         {"long_name": "var of Pi_ii over i (about N/P)"}),
         "projector_offdiagonal_variance": (("num_inputs", "ratio", "realisation"), off_var,
                                            {"long_name": "mean of Pi_ij^2 over i != j"}),
         "projector_diagonal_mean": (("num_inputs", "ratio", "realisation"), diag_mean,
                                     {"long_name": "mean of Pi_ii over i (exactly N/P)"}),
         "exact_diagonal_variance": (("num_inputs", "ratio"), exact["diagonal_variance"],
                                     {"long_name": "2N(P-N)/(P^2(P+2)) (random projector)"}),
         "exact_offdiagonal_variance": (("num_inputs", "ratio"), exact["offdiagonal_variance"],
                                        {"long_name": "N(P-N)/(P(P+2)(P-1)) (random projector)"}),
         "num_samples_a": (("num_inputs", "ratio"), p_grid.astype(np.int64),
                           {"long_name": "P = round(s N) of panel (a)"}),
         "ordered_k": (("num_samples", "rank"), mean_curve,
                       {"long_name": "P K^mumu / sigma_eps^2, sorted decreasing, mean over data "
                                     "sets (eq. 2.18); NaN beyond rank P"}),
         "ordered_k_variance": (("num_samples", "rank"), var_curve,
                                {"long_name": "variance over data sets of one sorted entry"}),
         "chi_square_order": (("num_samples", "rank"), chi_mean,
                              {"long_name": "expected order statistics of P chi^2_1 draws "
                                            "(the paper's (eps^mu)^2 / sigma_eps^2), Monte Carlo"}),
         "chi_square_order_variance": (("num_samples", "rank"), chi_var,
                                       {"long_name": "variance of one draw's sorted entry"}),
         "chi_square_draws": ("num_samples", chi_draws,
                              {"long_name": "Monte Carlo draws behind chi_square_order"}),
         "k_mean": (("num_samples", "k_realisation"), residual_mean,
                    {"long_name": "mean over mu of P K^mumu / sigma_eps^2 per data set; exact "
                                  "expectation 1 - N/P"})},
        coords={"num_inputs": list(inputs), "ratio": list(RATIOS),
                "realisation": np.arange(diag_var.shape[-1]),
                "num_samples": list(K_SAMPLES), "rank": np.arange(top),
                "k_realisation": np.arange(reps_b)})
    ds["ratio"].attrs["long_name"] = "s = P/N"
    ds.attrs.update(k_num_inputs=K_INPUTS, label_variance=LABEL_VARIANCE,
                    fit_low=FIT_RANGE[0], fit_high=FIT_RANGE[1], projector_seed=PROJECTOR_SEED,
                    sample_space_seed=SAMPLE_SPACE_SEED, chi_square_seed=CHI_SQUARE_SEED,
                    realisations_a_min=CELL_REPS[0], realisations_a_max=CELL_REPS[1], realisations_b=reps_b,
                    inputs="i.i.d. N(0, 1/N) (the scale does not enter Pi or P K / sigma_eps^2)")
    return ds


# ---------------------------------------------------------------------------- statistics
def _fit_exponents(values: np.ndarray, log_n: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """Least squares ``log v = a + alpha log s + beta log N`` over the cells; ``values`` has the
    cells on its last axis (leading axes batched). Returns ``[..., (alpha, beta)]``."""
    design = np.stack([np.ones_like(log_s), log_s, log_n], axis=1)
    flat = np.log(values).reshape(-1, values.shape[-1]).T
    coef = np.linalg.lstsq(design, flat, rcond=None)[0]
    return coef[1:].T.reshape(values.shape[:-1] + (2,))


def _cells(ds: xr.Dataset, name: str, keep: np.ndarray) -> list[np.ndarray]:
    """Each cell's finite per-data-set values (ragged), cells in (N, s) order."""
    v = ds[name].values[:, keep, :]
    return [c[np.isfinite(c)] for c in v.reshape(-1, v.shape[-1])]


def exponent_fit(ds: xr.Dataset, name: str) -> dict:
    """The fitted exponents of ``var ~ s^alpha N^beta`` of variable ``name`` over the cells
    with ``s`` in the fit range, from the mean over data sets per cell, with percentile bootstrap
    intervals at ``CONFIDENCE`` (``scipy.stats.bootstrap``, each cell's data sets resampled on
    their own: a stratified bootstrap), and the exact random-projector law's exponents over the
    same cells."""
    lo, hi = float(ds.attrs["fit_low"]), float(ds.attrs["fit_high"])
    keep = (ds.ratio.values >= lo) & (ds.ratio.values <= hi)
    cells = _cells(ds, name, keep)
    n_cells, s_cells = np.meshgrid(ds.num_inputs.values, ds.ratio.values[keep], indexing="ij")
    log_n, log_s = np.log(n_cells.ravel()), np.log(s_cells.ravel())

    def statistic(*samples, axis=-1):
        means = np.stack([np.mean(x, axis=axis) for x in samples], axis=-1)
        return np.moveaxis(_fit_exponents(means, log_n, log_s), -1, 0)

    point = statistic(*cells)
    boot = scipy.stats.bootstrap(tuple(cells), statistic, vectorized=True, n_resamples=999,
                                 confidence_level=CONFIDENCE, method="percentile",
                                 random_state=np.random.default_rng(0))
    exact_name = name.replace("projector_", "exact_")
    exact = _fit_exponents(ds[exact_name].values[:, keep].ravel(), log_n, log_s)
    counts = [c.size for c in cells]
    return {"alpha": float(point[0]), "alpha_low": float(boot.confidence_interval.low[0]),
            "alpha_high": float(boot.confidence_interval.high[0]), "beta": float(point[1]),
            "beta_low": float(boot.confidence_interval.low[1]),
            "beta_high": float(boot.confidence_interval.high[1]),
            "exact_alpha": float(exact[0]), "exact_beta": float(exact[1]),
            "cells": len(cells), "data_sets": int(sum(counts)),
            "data_sets_per_cell": [int(min(counts)), int(max(counts))],
            "fit_range": [float(lo), float(hi)]}


def _mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and count over the last (ragged, NaN-padded) axis."""
    n = np.sum(np.isfinite(x), axis=-1)
    mean = np.nanmean(x, axis=-1)
    return mean, np.nanstd(x, axis=-1, ddof=1) / np.sqrt(n), n


def _per_cell(fit: dict) -> str:
    lo, hi = fit["data_sets_per_cell"]
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def distance_rows(ds: xr.Dataset) -> list[dict]:
    """Per ``P`` of panel (b): the distance of the sorted ``P K`` curve from the squared-Gaussian
    order statistics (:func:`ordered_distance`), with a jackknife standard error over data sets
    computed from the stored per-rank moments (delete-one mean and variance), and the mean of
    ``P K / sigma^2`` against ``1 - N/P``."""
    rows = []
    reps = ds.sizes["k_realisation"]
    n = ds.attrs["k_num_inputs"]
    for p in ds.num_samples.values:
        one = ds.sel(num_samples=p)
        d = ordered_distance(one.ordered_k.values, one.ordered_k_variance.values, reps,
                             one.chi_square_order.values, one.chi_square_order_variance.values,
                             int(one.chi_square_draws))
        km = one.k_mean.values
        rows.append({"num_samples": int(p), "distance": d["corrected"], "distance_raw": d["raw"],
                     "distance_noise": d["noise"], "k_mean": float(km.mean()),
                     "k_mean_se": float(km.std(ddof=1) / math.sqrt(km.size)),
                     "k_mean_exact": 1.0 - n / float(p), "data_sets": reps})
    return rows


def _distance_trend(rows) -> dict:
    """Slope of ``log distance`` against ``log P`` (``linear_fit``) with its standard error taken
    from each point's Monte Carlo size (``distance_noise`` as the standard error of the raw
    distance), and whether the distances decrease monotonically beyond their noise."""
    p = np.array([r["num_samples"] for r in rows], dtype=np.float64)
    dist = np.array([r["distance"] for r in rows])
    noise = np.array([r["distance_noise"] for r in rows])
    ok = dist > 0
    fit = linear_fit(np.log(p[ok]), np.log(dist[ok]))
    steps = np.diff(dist)
    decreasing = bool(np.all(steps < 0))
    resolved = dist > Z * noise
    return {"slope": fit["slope"], "slope_se": fit["slope_se"], "points": int(ok.sum()),
            "decreasing": decreasing, "resolved_points": int(resolved.sum())}


def numbers(ds):
    rows = []
    for name, label in (("projector_offdiagonal_variance", "off-diagonal"),
                        ("projector_diagonal_variance", "diagonal")):
        f = exponent_fit(ds, name)
        rows.append({"quantity": f"var Pi ({label}) ~ s^alpha N^beta", **f})
    off, off_se, count = _mean_se(ds.projector_offdiagonal_variance.values)
    dia, dia_se, _ = _mean_se(ds.projector_diagonal_variance.values)
    mean = np.nanmean(ds.projector_diagonal_mean.values, axis=-1)
    for i, n in enumerate(ds.num_inputs.values):
        for j, s in enumerate(ds.ratio.values):
            p = int(ds.num_samples_a.values[i, j])
            rows.append({"num_inputs": int(n), "ratio": float(s), "num_samples": p,
                         "offdiagonal_variance": float(off[i, j]),
                         "offdiagonal_variance_se": float(off_se[i, j]),
                         "offdiagonal_variance_exact": float(ds.exact_offdiagonal_variance[i, j]),
                         "diagonal_variance": float(dia[i, j]),
                         "diagonal_variance_se": float(dia_se[i, j]),
                         "diagonal_variance_exact": float(ds.exact_diagonal_variance[i, j]),
                         "diagonal_mean": float(mean[i, j]), "diagonal_mean_exact": n / p,
                         "data_sets": int(count[i, j])})
    rows.extend(distance_rows(ds))
    return rows


def claims(ds):
    out = []
    off = exponent_fit(ds, "projector_offdiagonal_variance")
    lo, hi = off["fit_range"]
    ci = f"[{off['alpha_low']:.3f}, {off['alpha_high']:.3f}]"
    ok_alpha = (off["alpha_low"] >= PAPER_EXPONENT - EXPONENT_TOL
                and off["alpha_high"] <= PAPER_EXPONENT + EXPONENT_TOL)
    out.append(claim_row(
        "fig2-projector-exponent", "The variance of the elements of Pi = X^+ X scales as "
        "(P/N)^-1.8 at fixed N.", "Sec. II B 2, Fig. 2a", "fig2",
        f"off-diagonal var Pi_ij fitted as s^alpha N^beta over s = P/N in [{lo:g}, {hi:g}], "
        f"N in {list(map(int, ds.num_inputs.values))} ({off['cells']} cells, {_per_cell(off)} "
        f"data sets per cell): alpha = {off['alpha']:.3f}, {CONFIDENCE:.0%} bootstrap CI {ci}; the exact "
        f"random-projector law N(P-N)/(P(P+2)(P-1)) gives {off['exact_alpha']:.3f} over the same "
        "cells and -2 as s -> oo (1.8 is an effective exponent of this range)", off,
        f"the {CONFIDENCE:.0%} interval of alpha lies within {PAPER_EXPONENT} ± {EXPONENT_TOL} "
        f"(fit range s in [{lo:g}, {hi:g}] fixed in advance)",
        "supported" if ok_alpha else "refuted"))

    ok_beta = (off["beta_low"] >= -1 - COLLAPSE_TOL and off["beta_high"] <= -1 + COLLAPSE_TOL)
    out.append(claim_row(
        "fig2-projector-collapse", "At fixed P/N the variance of the elements of Pi scales as "
        "N^-1 (the curves collapse in N var against P/N).", "Sec. II B 2, Fig. 2a", "fig2",
        f"beta = {off['beta']:.3f}, {CONFIDENCE:.0%} bootstrap CI [{off['beta_low']:.3f}, "
        f"{off['beta_high']:.3f}] ({off['cells']} cells, {_per_cell(off)} data sets per cell); exact "
        f"law over the same cells {off['exact_beta']:.3f}", off,
        f"the {CONFIDENCE:.0%} interval of beta lies within -1 ± {COLLAPSE_TOL}",
        "supported" if ok_beta else "refuted"))

    lo_s = ds.ratio.values >= lo
    dia, dia_se, _ = _mean_se(ds.projector_diagonal_variance.values[:, lo_s])
    offv, off_se, _ = _mean_se(ds.projector_offdiagonal_variance.values[:, lo_s])
    ratio = dia / offv
    # delta-method standard error of each cell's ratio of means (independent data sets)
    se = ratio * np.sqrt((dia_se / dia) ** 2 + (off_se / offv) ** 2)
    z_min = float(np.min((ratio - 1) / se))
    exact_ratio = (ds.exact_diagonal_variance.values / ds.exact_offdiagonal_variance.values)[:, lo_s]
    out.append(claim_row(
        "fig2-projector-diagonal", "The variance of Pi is slightly larger on the diagonal.",
        "Sec. II B 2", "fig2",
        f"var Pi_ii / var Pi_ij over the {ratio.size} cells with s >= {lo:g}: from "
        f"{ratio.min():.3f} to {ratio.max():.3f} (smallest excess over 1: {z_min:.1f} SE); exact "
        f"law 2(P-1)/P: {exact_ratio.min():.3f} to {exact_ratio.max():.3f}",
        {"ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()), "z_min": z_min,
         "exact_min": float(exact_ratio.min()), "exact_max": float(exact_ratio.max())},
        f"the ratio exceeds 1 by more than {Z:g} SE in every cell",
        "supported" if z_min > Z else "refuted"))

    rows = distance_rows(ds)
    trend = _distance_trend(rows)
    dist = ", ".join(f"P={r['num_samples']}: {r['distance']:.4f}" for r in rows)
    ok = trend["decreasing"] and trend["slope"] + Z * trend["slope_se"] < 0
    out.append(claim_row(
        "fig2-k-squared-gaussian", "As P grows (N = 50), the ordered diagonal of K approaches "
        "the ordered squared Gaussians (eps^mu)^2 / P: K becomes a diagonal of i.i.d. squared "
        "Gaussians.", "Sec. II B 2, Fig. 2b", "fig2",
        f"relative L2 distance over ranks between sorted P K / sigma^2 (mean of "
        f"{rows[0]['data_sets']} data sets) and the expected chi^2_1 order statistics, sampling "
        f"noise removed: {dist}; log-log slope {trend['slope']:.3f} ± {trend['slope_se']:.3f} "
        f"({trend['resolved_points']} of {trend['points']} distances above {Z:g}x their noise)",
        {"rows": rows, **trend},
        f"the distance decreases at every step in P and the log-log slope is below 0 by more than "
        f"{Z:g} SE", "supported" if ok else "refuted"))
    return out


# ---------------------------------------------------------------------------- figure
def figure(ds):
    fig, axes = new_figure(2, 2, figsize=(11.5, 9.0))
    ax_raw, ax_col, ax_k, ax_d = axes.ravel()
    s = ds.ratio.values
    for i, n in enumerate(ds.num_inputs.values):
        c = COLORS[i % len(COLORS)]
        off = np.nanmean(ds.projector_offdiagonal_variance.isel(num_inputs=i).values, axis=-1)
        dia = np.nanmean(ds.projector_diagonal_variance.isel(num_inputs=i).values, axis=-1)
        ax_raw.loglog(s, off, "o", color=c, ms=4, label=f"N = {n}: off-diagonal")
        ax_raw.loglog(s, dia, "^", color=c, ms=4, mfc="none", label=f"N = {n}: diagonal")
        ax_raw.loglog(s, ds.exact_offdiagonal_variance.isel(num_inputs=i), "-", color=c, lw=0.9)
        ax_raw.loglog(s, ds.exact_diagonal_variance.isel(num_inputs=i), "--", color=c, lw=0.9)
        ax_col.loglog(s, n * off, "o", color=c, ms=4, label=f"N = {n}")
        ax_col.loglog(s, n * dia, "^", color=c, ms=4, mfc="none")
    lo_r, hi_r = int(ds.attrs["realisations_a_min"]), int(ds.attrs["realisations_a_max"])
    ax_raw.set_title(f"(a) variance of the entries of Π ({lo_r}–{hi_r} data sets per point)\n"
                     "lines: exact random-projector law (solid off-diagonal, dashed diagonal)",
                     fontsize=9)
    ax_raw.set_xlabel("P / N")
    ax_raw.set_ylabel("var Π")
    ax_raw.legend(fontsize=6, ncol=2)
    f = exponent_fit(ds, "projector_offdiagonal_variance")
    grid = np.geomspace(s.min(), s.max(), 100)
    ax_col.loglog(grid, (grid - 1) / grid**3, "k-", lw=1.0, label="exact, N → ∞: (s−1)/s³")
    ax_col.loglog(grid, 2 * (grid - 1) / grid**3, "k--", lw=1.0, label="diagonal: 2(s−1)/s³")
    lo, hi = f["fit_range"]
    fit_grid = np.geomspace(lo, hi, 20)
    mid = math.sqrt(lo * hi)
    anchor = float(np.interp(math.log(mid), np.log(grid), np.log((grid - 1) / grid**3)))
    ax_col.loglog(fit_grid, np.exp(anchor) * (fit_grid / mid) ** f["alpha"] * 1.6, ":",
                  color="C3", lw=1.6, label=f"fit s ∈ [{lo:g}, {hi:g}]: s^{f['alpha']:.2f} (shifted ×1.6)")
    ax_col.set_title("(a') collapse: N var Π against s = P/N\n(circles off-diagonal, triangles "
                     "diagonal)", fontsize=9)
    ax_col.set_xlabel("s = P / N")
    ax_col.set_ylabel("N var Π")
    ax_col.legend(fontsize=7)

    cmap = _viridis(ds.sizes["num_samples"])
    for i, p in enumerate(ds.num_samples.values):
        curve = ds.ordered_k.isel(num_samples=i).values[:p]
        frac = (np.arange(p) + 0.5) / p
        ax_k.semilogy(frac, curve, color=cmap[i], lw=1.2, label=f"P = {p}")
    p_top = int(ds.num_samples.values[-1])
    chi = ds.chi_square_order.isel(num_samples=-1).values[:p_top]
    ax_k.semilogy((np.arange(p_top) + 0.5) / p_top, chi, "k:", lw=1.6,
                  label="(ε^μ)² / σ² sorted: χ²₁ order statistics")
    ax_k.set_ylim(1e-4, None)
    ax_k.set_xlabel("rank μ / P (sorted decreasing)")
    ax_k.set_ylabel("P K^μμ / σ_ε²")
    ax_k.set_title(f"(b) ordered diagonal of K, N = {ds.attrs['k_num_inputs']} "
                   f"(mean of {ds.attrs['realisations_b']} data sets)", fontsize=9)
    ax_k.legend(fontsize=6, ncol=2)

    rows = distance_rows(ds)
    p = np.array([r["num_samples"] for r in rows])
    dist = np.array([r["distance"] for r in rows])
    noise = np.array([r["distance_noise"] for r in rows])
    ax_d.loglog(p, dist, "o-", color="C0", label="distance (sampling noise removed)")
    ax_d.loglog(p, noise, "x", color="0.5", label="sampling noise of the distance")
    n = ds.attrs["k_num_inputs"]
    ref = dist[0] * (p[0] - 0) / p
    ax_d.loglog(p, ref, "k--", lw=0.9, label="∝ 1/P (reference)")
    ax_d.set_xlabel("P")
    ax_d.set_ylabel("relative L2 distance to χ²₁ order statistics")
    ax_d.set_title(f"(c) sorted P K → sorted (ε^μ)², N = {n}", fontsize=9)
    ax_d.legend(fontsize=7)
    fig.suptitle("Fig. 2 — statistics of the projector Π = X(XᵀX)⁺Xᵀ (the paper's X⁺X) and of the "
                 "sample-space matrix K (eq. 2.18)")
    fig.tight_layout()
    return fig


def _viridis(count: int):
    from matplotlib import colormaps

    return colormaps["viridis"](np.linspace(0.0, 0.9, count))


STUDY = Study("fig2", "Random-matrix statistics of the projector Pi and of K (eq. 2.18)",
              "Fig. 2, Sec. II B 2", experiments, analyse, numbers, claims, figure)

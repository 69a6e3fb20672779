"""discrete (beyond the paper): the exact stationary covariance of discrete-time
SGD on one layer beside the continuous-time ``M`` of eq. 2.30, the ``O(lambda)`` gap between
them, and SGD runs that tell them apart (docs/theory.md §12).

Near ``w*`` one-layer SGD is exactly ``dw_{k+1} = (I - lambda H_B) dw_k - lambda g_B(w*)``. Its
stationary second moment solves

    Sigma = (I - lambda H) Sigma (I - lambda H) + lambda^2 f K(Sigma) + lambda^2 C,

(:func:`dlnlab.theory.fluctuations.single_layer_discrete_covariance`: ``C`` the noise covariance
at ``w*``, ``f`` the batch factor, ``K`` the multiplicative part of the minibatch noise); without
``K`` it is the discrete Lyapunov equation of additive noise
(:func:`~dlnlab.theory.fluctuations.discrete_stationary_covariance`), and for ``lambda -> 0``
both become the continuous ``H M + M H = lambda C`` (eq. 2.30,
:func:`~dlnlab.theory.fluctuations.stationary_covariance`). In the eigenbasis of ``H`` the
additive gap is ``Sigma~_ij - M~_ij = M~_ij lambda omega_i omega_j / (omega_i + omega_j -
lambda omega_i omega_j)``: relative to ``M`` it is ``O(lambda omega_max)``.

Setting: a small problem where stationarity is reached in a short run (``N = 10`` inputs of
variance ``1/N``, ``P = 40`` samples, ``S = 10`` with replacement, ``sigma_eps^2 = 10^-2``), SGD at
four learning rates started at ``w*`` (``init.at_minimum``), the covariance about ``w*`` averaged
over ``t >= START`` and over runs (:mod:`.common`).
"""

from __future__ import annotations

import tomllib

import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from ...analysis.claims import claim_row
from ...core.products import flatten_weights
from ...experiments.config import validate_config
from ...experiments.run import build_task
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from ...theory.fluctuations import (
    discrete_stationary_covariance,
    linearised_fluctuations,
    project_to_minimum,
    single_layer_discrete_covariance,
    stationary_covariance,
)
from .common import covariance_error, run_covariances, window_parameters
from .config import COVARIANCE_TOL, Z, paper_config, single_layer_task, size

NUM_INPUTS = 10
NUM_SAMPLES = 40
LABEL_VARIANCE = 1e-2
LEARNING_RATES = (0.25, 0.75, 1.5, 3.0)       # lambda omega_max ~ 0.04 ... 0.5 on this data set
START = 200.0                                  # window start; slowest rate ~0.03: exp(-2 omega t) < 1e-5
GRID = np.geomspace(1e-3, 0.6, 19)             # lambda omega_max of the theory curves
GAP_FIT_MAX = 0.1                              # the O(lambda) slope is fitted for lambda omega_max <= this
GAP_SLOPE_TOL = 0.05                           # |slope - 1| <= this
REFERENCES = ("continuous", "discrete_additive", "discrete")
_LABELS = {"continuous": "continuous M (eq. 2.30)",
           "discrete_additive": "discrete, additive noise only",
           "discrete": "discrete, exact (with multiplicative noise)"}


def experiments(quick: bool) -> dict:
    task = single_layer_task(NUM_INPUTS, NUM_SAMPLES, LABEL_VARIANCE)
    horizon = size(quick, 3000.0, 12000.0)
    return {f"lr{lr:g}": paper_config(
        f"discrete-lr{lr:g}", runs=size(quick, 64, 256), horizon=horizon,
        points=size(quick, 601, 1201), changes={"task": task, "training.learning_rate": lr})
        for lr in LEARNING_RATES}


def reference_covariances(task, hessian, diffusion, learning_rate, batch_size, replacement):
    """``(M, Sigma_additive, Sigma)`` ``(P, P)`` at ``learning_rate``: the continuous stationary
    covariance (eq. 2.30), the discrete one of additive noise and the exact discrete one with the
    multiplicative minibatch noise (docs/theory.md §12), for the drift ``hessian`` and the noise
    covariance ``diffusion`` at ``w*`` of the one-layer ``task``. Raises ``ValueError`` where
    discrete SGD has no stationary law (``lambda omega_max >= 2`` or a diverging second moment)."""
    lr, batch = learning_rate, batch_size
    m = stationary_covariance(hessian, diffusion, lr).covariance
    additive = discrete_stationary_covariance(hessian, diffusion, lr)
    exact = single_layer_discrete_covariance(task, lr, batch, replacement)
    return m, additive, exact


def bias_z(error: dict) -> float:
    """``max(D / SE_D, 0)``: the bias-corrected squared Frobenius error ``D`` of
    :func:`.common.covariance_error` over its jackknife standard error (``> Z``: a systematic
    difference is detected; ``D <= 0``, sampling noise alone, gives 0)."""
    return float(max(error["bias_z"], 0.0))


def _gap(sigma, m) -> float:
    return float(np.linalg.norm(sigma - m) / np.linalg.norm(m))


def analyse(data):
    keys = [f"lr{lr:g}" for lr in LEARNING_RATES]
    config = validate_config(tomllib.loads(data[keys[0]].attrs["config_toml"]))
    task = build_task(config)
    batch, replacement = config.training.batch_size, config.training.replacement
    n = config.task.d_in
    solution = project_to_minimum((jnp.zeros((1, n), jnp.float64),), task)[0]
    lin = linearised_fluctuations((solution,), task, LEARNING_RATES[0], batch, replacement)
    hessian, diffusion = lin.drift, lin.diffusion
    omega_max = float(lin.stationary.rates.max())
    centre = np.asarray(flatten_weights((solution,)), dtype=np.float64)

    shape = (len(keys), len(REFERENCES))
    raw, mc, sysm, upper, theory_gap, zs = (np.full(shape, np.nan) for _ in range(6))
    runs = np.zeros(len(keys), dtype=int)
    records = np.zeros(len(keys), dtype=int)
    eig = np.full((len(keys), 1 + len(REFERENCES), n), np.nan)
    lrs = []
    for i, key in enumerate(keys):
        ds = data[key]
        c = validate_config(tomllib.loads(ds.attrs["config_toml"]))
        lr = c.training.learning_rate
        lrs.append(lr)
        samples = window_parameters(ds, "sgd", START)
        runs[i], records[i] = samples.shape[0], samples.shape[1]
        per_run = run_covariances(samples, centre)
        refs = reference_covariances(task, hessian, diffusion, lr, batch, replacement)
        m = refs[0]
        for j, ref in enumerate(refs):
            e = covariance_error(per_run, ref)
            raw[i, j], mc[i, j], sysm[i, j], upper[i, j] = (
                e["raw"], e["monte_carlo"], e["systematic"], e["systematic_upper"])
            theory_gap[i, j] = _gap(ref, m)
            zs[i, j] = bias_z(e)
        basis = lin.stationary.basis                    # eigenvectors of H: one common basis
        eig[i, 0] = np.diag(basis.T @ per_run.mean(axis=0) @ basis) / np.diag(basis.T @ m @ basis)
        for j, ref in enumerate(refs):
            eig[i, 1 + j] = np.diag(basis.T @ ref @ basis) / np.diag(basis.T @ m @ basis)

    grid_gap = np.full((2, GRID.size), np.nan)
    for k, scaled in enumerate(GRID):
        lr = float(scaled / omega_max)
        m, additive, exact = reference_covariances(task, hessian, diffusion, lr, batch, replacement)
        grid_gap[0, k], grid_gap[1, k] = _gap(additive, m), _gap(exact, m)
    fit = GRID <= GAP_FIT_MAX
    slopes = [scipy.stats.linregress(np.log(GRID[fit]), np.log(grid_gap[j, fit])) for j in range(2)]

    dims = ("learning_rate", "reference")
    out = xr.Dataset(
        {"error_raw": (dims, raw), "error_monte_carlo": (dims, mc),
         "error_systematic": (dims, sysm), "error_systematic_upper": (dims, upper),
         "theory_gap": (dims, theory_gap), "bias_z": (dims, zs),
         "num_runs": ("learning_rate", runs), "num_records": ("learning_rate", records),
         "scaled_learning_rate": ("learning_rate", np.asarray(lrs) * omega_max),
         "mode_variance_ratio": (("learning_rate", "estimate", "mode"), eig),
         "grid_gap": (("discrete_reference", "grid"), grid_gap),
         "gap_slope": ("discrete_reference", [s.slope for s in slopes]),
         "gap_slope_standard_error": ("discrete_reference", [s.stderr for s in slopes]),
         "gap_coefficient": ("discrete_reference", grid_gap[:, 0] / GRID[0]),
         "curvature_rates": ("mode", np.asarray(lin.stationary.rates))},
        coords={"learning_rate": lrs, "reference": list(REFERENCES),
                "discrete_reference": ["discrete_additive", "discrete"],
                "grid": GRID, "estimate": ["sgd", *REFERENCES], "mode": np.arange(1, n + 1)})
    described = {
        "error_raw": ("|M_hat - X| / |X|, M_hat the run-averaged SGD covariance, X the reference",
                      "1"),
        "error_monte_carlo": ("raw error expected from sampling alone (common.covariance_error)",
                              "1"),
        "error_systematic": ("bias-corrected systematic relative error against the reference",
                             "1"),
        "error_systematic_upper": ("one-sided 95% upper bound of error_systematic", "1"),
        "bias_z": ("squared bias over its standard error (> Z: the reference is rejected)", "1"),
        "theory_gap": ("|X - M| / |M|: the reference's gap from the continuous M (eq. 2.30)", "1"),
        "scaled_learning_rate": ("lambda omega_max, omega_max the largest eigenvalue of H", "1"),
        "mode_variance_ratio": ("variance along each eigenvector of H (ascending curvature) "
                                "divided by the continuous M's", "1"),
        "grid_gap": ("|Sigma - M| / |M| on the grid of lambda omega_max", "1"),
        "gap_slope": (f"log-log slope of grid_gap for lambda omega_max <= {GAP_FIT_MAX:g}", "1"),
        "gap_coefficient": ("grid_gap / (lambda omega_max) at the smallest grid point", "1"),
        "curvature_rates": ("eigenvalues omega_k of H = S_xx, ascending", "1 / time"),
    }
    for key, (text, units) in described.items():
        out[key].attrs.update(long_name=text, units=units)
    out["learning_rate"].attrs.update(long_name="SGD learning rate lambda", units="time / step")
    out["grid"].attrs.update(long_name="lambda omega_max", units="1")
    out.attrs.update(num_inputs=n, num_samples=config.task.num_samples, batch_size=batch,
                     replacement=int(replacement), label_variance=LABEL_VARIANCE,
                     window_start=START, horizon=float(data[keys[0]].time[-1]),
                     largest_curvature=omega_max, gap_fit_max=GAP_FIT_MAX,
                     source="beyond the paper (issue 12 item (b)); docs/theory.md §12")
    return out


def numbers(ds):
    rows = []
    for lr in ds.learning_rate.values:
        part = ds.sel(learning_rate=lr)
        row = {"learning_rate": float(lr), "lambda_omega_max": float(part.scaled_learning_rate),
               "runs": int(part.num_runs), "records_per_run": int(part.num_records)}
        for ref in REFERENCES:
            p = part.sel(reference=ref)
            row[f"gap_{ref}"] = float(p.theory_gap)
            row[f"raw_vs_{ref}"] = float(p.error_raw)
            row[f"systematic_upper_vs_{ref}"] = float(p.error_systematic_upper)
        row["monte_carlo"] = float(part.error_monte_carlo.sel(reference="discrete"))
        rows.append(row)
    return rows


def claims(ds):
    out = []
    slope = {r: float(ds.gap_slope.sel(discrete_reference=r)) for r in ("discrete_additive", "discrete")}
    coef = {r: float(ds.gap_coefficient.sel(discrete_reference=r)) for r in slope}
    ok = all(abs(s - 1.0) <= GAP_SLOPE_TOL for s in slope.values())
    out.append(claim_row(
        "discrete-order",
        "The stationary covariance of discrete-time SGD differs from the continuous-time M "
        "(eq. 2.30) by O(lambda).",
        "beyond the paper (eq. 2.30 vs the discrete Lyapunov equation)", "discrete",
        f"log-log slope of |Sigma - M| / |M| against lambda omega_max over "
        f"[{GRID[0]:g}, {GAP_FIT_MAX:g}]: {slope['discrete']:.4f} with the multiplicative noise "
        f"(|Sigma - M| / |M| ~ {coef['discrete']:.3f} lambda omega_max), "
        f"{slope['discrete_additive']:.4f} additive only (~ {coef['discrete_additive']:.3f} "
        "lambda omega_max); exact theory, no sampling",
        {"slope": slope, "coefficient": coef},
        f"both slopes within {GAP_SLOPE_TOL:g} of 1", "supported" if ok else "refuted"))

    lrs = ds.learning_rate.values
    z_exact = ds.bias_z.sel(reference="discrete").values
    z_cont = ds.bias_z.sel(reference="continuous").values
    resolvable = ds.theory_gap.sel(reference="discrete").values > \
        Z * ds.error_monte_carlo.sel(reference="discrete").values
    agree = bool(np.all(z_exact <= Z))
    rejects = bool(np.all(z_cont[resolvable] > Z))
    parts = "; ".join(
        f"lambda = {float(lr):g} (lambda omega_max = {float(p.scaled_learning_rate):.3f}, "
        f"{int(p.num_runs)} runs): systematic error vs Sigma "
        f"{float(p.error_systematic.sel(reference='discrete')):.4f} (<= "
        f"{float(p.error_systematic_upper.sel(reference='discrete')):.4f}, z = "
        f"{float(p.bias_z.sel(reference='discrete')):.1f}), vs M "
        f"{float(p.error_systematic.sel(reference='continuous')):.4f} (z = "
        f"{float(p.bias_z.sel(reference='continuous')):.1f}; theory gap "
        f"{float(p.theory_gap.sel(reference='discrete')):.4f}, Monte Carlo "
        f"{float(p.error_monte_carlo.sel(reference='discrete')):.4f})"
        for lr, p in ((lr, ds.sel(learning_rate=lr)) for lr in lrs))
    if not resolvable.any():
        verdict = "not testable"
    else:
        verdict = "supported" if agree and rejects and bool(resolvable[np.argmax(lrs)]) else "refuted"
    out.append(claim_row(
        "discrete-sgd",
        "SGD's stationary covariance follows the exact discrete-time solution Sigma, not the "
        "continuous M, once their gap exceeds the Monte Carlo error.",
        "beyond the paper (eq. 2.30 vs the discrete Lyapunov equation)", "discrete",
        parts + f"; additive-only Sigma at the largest lambda: z = "
        f"{float(ds.bias_z.sel(learning_rate=lrs.max(), reference='discrete_additive')):.1f}",
        {"bias_z_vs_discrete": z_exact.tolist(), "bias_z_vs_continuous": z_cont.tolist(),
         "resolvable": resolvable.tolist(),
         "systematic_upper_vs_discrete": ds.error_systematic_upper.sel(
             reference="discrete").values.tolist(),
         "runs": ds.num_runs.values.tolist()},
        f"z = (squared bias) / (its standard error) from common.covariance_error: z <= {Z:g} "
        f"against Sigma at every learning rate, and z > {Z:g} against M wherever the gap |Sigma - "
        f"M| / |M| exceeds {Z:g} x the Monte Carlo error (the largest learning rate must be such "
        "a case; none: not testable)",
        verdict))
    return out


def figure(ds):
    fig, axes = new_figure(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    grid = ds.grid.values
    for k, ref in enumerate(("discrete_additive", "discrete")):
        slope = float(ds.gap_slope.sel(discrete_reference=ref))
        ax.loglog(grid, ds.grid_gap.sel(discrete_reference=ref), "--", color=COLORS[k + 1],
                  label=f"{_LABELS[ref]} (theory; slope {slope:.3f})")
    x = ds.scaled_learning_rate.values
    y = ds.error_systematic.sel(reference="continuous").values
    hi = ds.error_systematic_upper.sel(reference="continuous").values
    ax.errorbar(x, y, yerr=[np.zeros_like(y), hi - y], fmt="o", color=COLORS[0],
                label="SGD: systematic |M_hat - M| / |M| (to 95% upper bound)")
    ax.plot(x, ds.error_monte_carlo.sel(reference="continuous").values, "_", ms=14,
            color="0.4", label="Monte Carlo error of M_hat")
    ax.loglog(grid, grid, ":", color="0.6", lw=1, label="slope 1")
    ax.set(xlabel="$\\lambda\\,\\omega_{max}$", ylabel="relative gap from the continuous M",
           title="(a) O(λ) gap of discrete SGD from eq. 2.30")
    ax.legend(fontsize=7.5, loc="upper left")

    ax = axes[1]
    width = 0.8 / len(REFERENCES)
    positions = np.arange(ds.sizes["learning_rate"])
    for k, ref in enumerate(REFERENCES):
        y = ds.error_systematic.sel(reference=ref).values
        hi = ds.error_systematic_upper.sel(reference=ref).values
        ax.bar(positions + (k - 1) * width, hi, width, color=COLORS[k], alpha=0.35)
        ax.bar(positions + (k - 1) * width, y, width, color=COLORS[k], label=_LABELS[ref])
    ax.axhline(COVARIANCE_TOL, color="k", ls=":", lw=1,
               label=f"{COVARIANCE_TOL:.0%} (fig5's accuracy criterion)")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xticks(positions, [f"λ = {lr:g}\nλω = {s:.2f}" for lr, s in
                              zip(ds.learning_rate.values, ds.scaled_learning_rate.values,
                                  strict=True)], fontsize=8)
    ax.set(ylabel="systematic relative error of SGD (light: 95% upper bound)",
           title="(b) SGD covariance against each solution")
    ax.legend(fontsize=7.5, loc="upper left")

    ax = axes[2]
    top = ds.isel(learning_rate=int(np.argmax(ds.learning_rate.values)))
    rates = ds.curvature_rates.values
    ax.semilogx(rates, top.mode_variance_ratio.sel(estimate="sgd"), "o", color=COLORS[0],
                label=f"SGD ({int(top.num_runs)} runs)")
    for k, ref in enumerate(REFERENCES):
        ax.semilogx(rates, top.mode_variance_ratio.sel(estimate=ref), "--" if k else "-",
                    color=COLORS[k], lw=1.2, label=_LABELS[ref])
    ax.set(xlabel="curvature $\\omega_k$ (eigenvalue of H)",
           ylabel="variance along $u_k$ / continuous M's",
           title=f"(c) per mode at λ = {float(top.learning_rate):g} "
                 f"(λω_max = {float(top.scaled_learning_rate):.2f})")
    ax.legend(fontsize=7.5)
    fig.suptitle(f"Discrete-time SGD vs the continuous stationary covariance (N = "
                 f"{ds.attrs['num_inputs']}, P = {ds.attrs['num_samples']}, S = "
                 f"{ds.attrs['batch_size']}, σ² = {ds.attrs['label_variance']:g})")
    fig.tight_layout()
    return fig


STUDY = Study("discrete", "Discrete-time SGD: the exact finite-learning-rate stationary covariance "
              "and its O(lambda) gap from eq. 2.30", "beyond the paper; eq. 2.30",
              experiments, analyse, numbers, claims, figure)

"""appK: discretisation study of the Euler-Maruyama SDE (App. K, Fig. 12): the end-of-training
width and the strong error at steps h = learning rate / k, on one Brownian path per run."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...analysis.stats import linear_fit, mean_and_se, median_abs_deviation_from
from ...analysis.summaries import teacher_rank, training_parameters
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from .config import paper_config, size, wider_rule, wider_verdict


def experiments(quick: bool) -> dict:
    factors = size(quick, [1, 2, 4, 8], [1, 2, 4, 8, 16])
    finest = max(factors)
    lr = 0.01
    return {f"{k}": paper_config(f"em-h{k}", runs=size(quick, 64, 256), horizon=60.0,
                                 methods=["sde"], points=121, variables=["amplitude", "diffusion"],
                                 changes={"sde.step_size": lr / k,
                                          "sde.path_substeps": finest // k})
            for k in factors}


def analyse(data):
    keys = sorted(data, key=int)
    first = data[keys[0]]
    k = teacher_rank(first)
    amp = np.stack([data[key].sel(method_name="sde").amplitude.isel(mode=slice(0, k))
                    .transpose("run", "time", "mode").values for key in keys])
    lr = float(first.attrs["learning_rate"])
    h = np.array([lr / int(key) for key in keys])
    out = xr.Dataset({"amplitude": (("step_size", "run", "time", "mode"), amp),
                      "spectrum": ("mode", first.spectrum.values[:k])},
                     coords={"step_size": h, "run": first.run.values, "time": first.time.values,
                             "mode": np.arange(k)})
    out.attrs.update(training_parameters(first), brownian_path="one path per run on the grid "
                     f"h_min = {h.min():g}; coarser steps sum its increments")
    return out


def em_statistics(ds) -> list[dict]:
    """Per step size: width and variance of ``a_1(T)`` over runs (bootstrap SEs) and the strong
    error ``E max_t |a_h(t) - a_{h/2}(t)|_2`` against the next finer step on the same Brownian
    path (successive differences scale like ``h^p`` with the scheme's own order ``p``; a fixed
    finest reference would bend the slope near it)."""
    h = ds.step_size.values
    rng = np.random.default_rng(0)
    rows = []
    for j, hj in enumerate(h):
        final = ds.amplitude.isel(step_size=j, mode=0, time=-1).values
        final = final[np.isfinite(final)]
        var = float(np.var(final, ddof=1))
        boot = [np.var(rng.choice(final, final.size), ddof=1) for _ in range(400)]
        s = float(ds.spectrum.values[0])
        width = median_abs_deviation_from(final, s)
        boot_w = [median_abs_deviation_from(rng.choice(final, final.size), s) for _ in range(400)]
        finer = np.flatnonzero(np.isclose(h, hj / 2, rtol=1e-9))
        e, e_se = math.nan, math.nan
        if finer.size:
            diff = ds.amplitude.isel(step_size=j) - ds.amplitude.isel(step_size=int(finer[0]))
            e, e_se, _ = mean_and_se(np.sqrt((diff**2).sum("mode")).max("time").values)
        rows.append({"step_size": float(hj), "variance": var, "variance_se": float(np.std(boot)),
                     "median_abs_deviation_from_s": width,
                     "median_abs_deviation_se": float(np.std(boot_w)),
                     "mean_minus_s": float(np.mean(final) - ds.spectrum.values[0]),
                     "strong_error": e, "strong_error_se": e_se, "runs": int(final.size)})
    return rows


def numbers(ds):
    rows = em_statistics(ds)
    errs = [(r["step_size"], r["strong_error"]) for r in rows if np.isfinite(r["strong_error"])]
    if len(errs) >= 2:
        fit = linear_fit(np.log([e[0] for e in errs]), np.log([e[1] for e in errs]))
        rows.append({"fit": "log E max_t |a_h - a_h/2| vs log h", "order": fit["slope"],
                     "order_se": fit["slope_se"]})
    return rows


def claims(ds):
    rows = em_statistics(ds)
    coarse, fine = max(rows, key=lambda r: r["step_size"]), min(rows, key=lambda r: r["step_size"])
    ratio = coarse["median_abs_deviation_from_s"] / fine["median_abs_deviation_from_s"]
    ratio_se = ratio * math.hypot(
        coarse["median_abs_deviation_se"] / coarse["median_abs_deviation_from_s"],
        fine["median_abs_deviation_se"] / fine["median_abs_deviation_from_s"])
    trend = "; ".join(f"h = {r['step_size']:g}: {r['median_abs_deviation_from_s']:.3e} ± "
                      f"{r['median_abs_deviation_se']:.1e} (variance {r['variance']:.2e})"
                      for r in rows)
    return [claim_row("appK-variance", "The Euler-Maruyama end-of-training law narrows as the "
                      "step h shrinks (discretisation error explains Fig. 4b's width).",
                      "App. K, Fig. 12", "appK", "median |a_1(T) - s| over runs, same Brownian "
                      "path per run: " + trend + f"; largest / smallest h: {ratio:.3f} ± "
                      f"{ratio_se:.3f}",
                      {"rows": [{k: r[k] for k in ("step_size", "median_abs_deviation_from_s",
                                                   "median_abs_deviation_se", "variance")}
                                for r in rows]},
                      wider_rule().replace("width ratio", "width ratio (largest / smallest h)")
                      + " (runs share their paths across h, so this SE is conservative)",
                      wider_verdict(ratio, ratio_se))]


def figure(ds):
    rows = em_statistics(ds)
    h = np.array([r["step_size"] for r in rows])
    fig, axes = new_figure(1, 2, figsize=(11, 4.2))
    width = np.array([r["median_abs_deviation_from_s"] for r in rows])
    width_se = np.array([r["median_abs_deviation_se"] for r in rows])
    axes[0].errorbar(h, width, yerr=width_se, fmt="o-", color=COLORS[0], label="EM, same paths")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("Euler–Maruyama step $h$ (time units)")
    axes[0].set_ylabel(f"median $|a_1 - s_1|$ at $t$ = {float(ds.time.values[-1]):g}")
    axes[0].set_title("end-of-training width (bootstrap SE)")
    axes[0].legend(fontsize=7)
    err = np.array([r["strong_error"] for r in rows])
    err_se = np.array([r["strong_error_se"] for r in rows])
    ok = np.isfinite(err)
    axes[1].errorbar(h[ok], err[ok], yerr=err_se[ok], fmt="o-", color=COLORS[1],
                     label="$E \\max_t \\|a_h(t) - a_{h/2}(t)\\|$ (teacher modes)")
    if ok.sum() >= 1:   # reference slopes through the first point (guides, not theory)
        anchor_h, anchor_e = h[ok][0], err[ok][0]
        for order, ls in ((0.5, "--"), (1.0, ":")):
            axes[1].plot(h[ok], anchor_e * (h[ok] / anchor_h) ** order, "k", ls=ls, lw=1,
                         label=f"slope {order:g}")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("Euler–Maruyama step $h$ (time units)")
    axes[1].set_ylabel("strong error, successive steps")
    axes[1].set_title("strong error (small noise: Euler's O(h) dominates)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(h)
        ax.set_xticklabels([f"{x:g}" for x in h], fontsize=7)
        ax.minorticks_off()
    axes[0].set_yscale("linear")
    # The strong error spans less than a decade: label 1, 2 and 5 times each power of ten.
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator

    axes[1].yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[1].yaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    fig.suptitle("App. K — discretisation of the anisotropic SDE on one Brownian path per run")
    fig.tight_layout()
    return fig


STUDY = Study("appK", "Discretisation study of the Euler-Maruyama SDE", "App. K, Fig. 12",
              experiments, analyse, numbers, claims, figure)

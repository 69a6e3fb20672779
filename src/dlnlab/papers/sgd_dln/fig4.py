"""fig4: the end-of-training law of the largest mode, without and with label noise (Prop. 5.2),
for SGD, the anisotropic SDE and the isotropic SDE; the stationary law by quadrature (docs/theory.md §9)
and the paper's first-order mean are dataset variables."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...analysis.stats import (
    bootstrap_ratio_se,
    mean_and_se,
    median_abs_deviation_from,
    moments_with_se,
)
from ...analysis.summaries import training_parameters
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from ...theory.stationary import first_order_moments, stationary_density, stationary_moments
from .config import (
    COLLAPSE_TOL,
    GAUSS_KURT,
    GAUSS_SKEW,
    LABEL_NOISE,
    METHOD_NAMES,
    STATIONARY_WINDOW,
    Z,
    paper_config,
    size,
    wider_rule,
    wider_verdict,
)

END_METHODS = ("sgd", "sde", "isotropic")


def experiments(quick: bool) -> dict:
    # SGD is cheap and carries the mean-side claim: most runs go there. The SDEs take 10 steps
    # per SGD step (h = learning rate / 10); the isotropic one draws P = 576 normals per step.
    runs = {"sgd": size(quick, 512, 2048), "sde": size(quick, 128, 512),
            "isotropic": size(quick, 64, 256)}
    out = {}
    for noise, sigma in (("none", 0.0), ("label", LABEL_NOISE)):
        for m in END_METHODS:
            out[f"{noise}-{m}"] = paper_config(
                f"end-{noise}-{m}", runs=runs[m], horizon=60.0, methods=[m], points=121,
                variables=["amplitude", "diffusion"], changes={"task.label_noise": sigma})
    return out


def analyse(data):
    first = data["none-sgd"]
    methods = list(END_METHODS)
    most = max(ds.sizes["run"] for ds in data.values())
    amp = np.full((2, len(methods), most, first.sizes["time"]), np.nan)
    temperature = [math.nan, math.nan]
    for i, noise in enumerate(("none", "label")):
        for j, m in enumerate(methods):
            ds = data[f"{noise}-{m}"]
            amp[i, j, :ds.sizes["run"]] = ds.sel(method_name=m).amplitude.isel(mode=0).transpose(
                "run", "time").values
            if m == "isotropic":
                temperature[i] = float(ds.isotropic_temperature.mean())
    s = float(first.spectrum.values[0])
    p = training_parameters(data["label-sgd"])
    depth, lr, batch, sigma = int(p["depth"]), p["learning_rate"], p["batch_size"], p["label_noise"]
    grid, density = stationary_density(s, depth, lr, batch, sigma)
    grid, density = np.asarray(grid), np.asarray(density)
    keep = density > density.max() * 1e-8
    moments = stationary_moments([s], depth, lr, batch, sigma)
    zero1, mean1, _, var1 = (float(np.asarray(x).ravel()[0])
                             for x in first_order_moments([s], depth, lr, batch, sigma))
    out = xr.Dataset({
        "amplitude": (("noise", "method_name", "run", "time"), amp),
        "stationary_density": ("amplitude_grid", density[keep]),
        "spectrum": ((), s),
        "theory_mean": ((), float(np.asarray(moments.mean)[0])),
        "theory_variance": ((), float(np.asarray(moments.variance)[0])),
        "first_order_mean": ((), mean1),
        "first_order_variance": ((), var1),
        "paper_mean": ((), zero1),
        "isotropic_temperature": ("noise", temperature),
    }, coords={"noise": ["none", "label"], "method_name": methods, "run": np.arange(most),
               "time": first.time.values, "amplitude_grid": grid[keep]})
    out.attrs.update(learning_rate=lr, batch_size=batch, label_noise=sigma, depth=depth,
                     window_start=float(first.time.values[-1] * STATIONARY_WINDOW))
    return out


def end_statistics(ds) -> list[dict]:
    """Per noise and method: moments of ``a_1`` at the end of training, and the mean over runs
    of each run's time average over the stationary window (runs are independent; records within
    a run are not, so the standard error comes from the run averages)."""
    s = float(ds.spectrum)
    window = ds.time.values >= ds.attrs["window_start"]
    rows = []
    for noise in ds.noise.values:
        for m in ds.method_name.values:
            a = ds.amplitude.sel(noise=noise, method_name=m).transpose("run", "time").values
            final = moments_with_se(a[:, -1])
            avg, avg_se, n = mean_and_se(np.mean(a[:, window], axis=1))
            rows.append({"noise": str(noise), "method": str(m), **final,
                         "median_abs_deviation_from_s": median_abs_deviation_from(a[:, -1], s),
                         "mean_minus_s": final["mean"] - s, "window_mean_minus_s": avg - s,
                         "window_mean_se": avg_se, "runs": n})
    return rows


def numbers(ds):
    rows = end_statistics(ds)
    rows.append({"theory": "stationary law, quadrature (docs/theory.md §9)",
                 "mean_minus_s": float(ds.theory_mean - ds.spectrum),
                 "sd": float(np.sqrt(ds.theory_variance))})
    rows.append({"theory": "first order, docs/theory.md §9 (below s)",
                 "mean_minus_s": float(ds.first_order_mean - ds.spectrum),
                 "sd": float(np.sqrt(ds.first_order_variance))})
    rows.append({"theory": "paper, Prop. 5.2 (above s)",
                 "mean_minus_s": float(ds.paper_mean - ds.spectrum)})
    return rows


def _final(ds, noise: str, method: str) -> np.ndarray:
    return ds.amplitude.sel(noise=noise, method_name=method).isel(time=-1).values


def claims(ds):
    s = float(ds.spectrum)
    stats = {(r["noise"], r["method"]): r for r in end_statistics(ds)}
    out = []
    c = stats[("none", "sgd")]
    ok = c["sd"] <= COLLAPSE_TOL * s and abs(c["mean_minus_s"]) <= COLLAPSE_TOL * s
    out.append(claim_row("fig4-collapse", "Without label noise the end-of-training law of a mode "
                         "collapses to s (a Dirac mass, as for gradient flow).", "Prop. 5.2 (i), "
                         "Fig. 4a", "fig4", f"SGD, a_1(T) over {c['n']} runs: mean - s = "
                         f"{c['mean_minus_s']:.2e} ± {c['mean_se']:.1e}, sd {c['sd']:.2e}",
                         {"mean_minus_s": c["mean_minus_s"], "sd": c["sd"], "runs": c["n"]},
                         f"sd and |mean - s| below {COLLAPSE_TOL} s",
                         "supported" if ok else "refuted"))

    a_sgd, a_sde = _final(ds, "none", "sgd"), _final(ds, "none", "sde")
    w_sde, w_sgd = median_abs_deviation_from(a_sde, s), median_abs_deviation_from(a_sgd, s)
    ratio = w_sde / w_sgd
    ratio_se = bootstrap_ratio_se(a_sde, a_sgd, lambda x: median_abs_deviation_from(x, s))
    label = {m: median_abs_deviation_from(_final(ds, "label", m), s) for m in ("sgd", "sde")}
    out.append(claim_row("fig4-em-wider", "The Euler-Maruyama SDE's end-of-training law is less "
                         "sharply peaked than SGD's.", "§5.1, Fig. 4b", "fig4",
                         f"no label noise, median |a_1(T) - s|: SDE {w_sde:.2e}, SGD {w_sgd:.2e}; "
                         f"ratio {ratio:.3f} ± {ratio_se:.3f} (bootstrap). With label noise: SDE "
                         f"{label['sde']:.2e}, SGD {label['sgd']:.2e}",
                         {"spread_sde": w_sde, "spread_sgd": w_sgd, "ratio": ratio,
                          "ratio_se": ratio_se, "label_noise_spreads": label},
                         wider_rule(), wider_verdict(ratio, ratio_se)))

    g = stats[("label", "sgd")]
    ok = abs(g["skewness"]) <= GAUSS_SKEW and abs(g["excess_kurtosis"]) <= GAUSS_KURT
    theory_sd = float(np.sqrt(ds.theory_variance))
    out.append(claim_row("fig4-gaussian", "With label noise the end-of-training law of a mode is "
                         "approximately Gaussian (a Boltzmann law).", "Prop. 5.2 (ii), Fig. 4",
                         "fig4", f"SGD, sigma = {ds.attrs['label_noise']:g}, a_1(T) over {g['n']} "
                         f"runs: skewness {g['skewness']:.3f} ± {g['skewness_se']:.3f}, excess "
                         f"kurtosis {g['excess_kurtosis']:.3f} ± {g['excess_kurtosis_se']:.3f}; sd "
                         f"{g['sd']:.4f} vs stationary law {theory_sd:.4f}",
                         {k: g[k] for k in ("skewness", "skewness_se", "excess_kurtosis",
                                            "excess_kurtosis_se", "sd")} | {"theory_sd": theory_sd},
                         f"|skewness| <= {GAUSS_SKEW} and |excess kurtosis| <= {GAUSS_KURT}",
                         "supported" if ok else "refuted"))

    parts, values, below_all, above_any = [], {}, True, False
    for m in ("sgd", "sde"):
        r = stats[("label", m)]
        z = r["window_mean_minus_s"] / r["window_mean_se"]
        values[m] = {"mean_minus_s": r["window_mean_minus_s"], "se": r["window_mean_se"], "z": z}
        parts.append(f"{m}: mean - s = {r['window_mean_minus_s']:.5f} ± {r['window_mean_se']:.5f}"
                     f" ({z:+.1f} SE)")
        below_all &= z < -Z
        above_any |= z > Z
    theory = float(ds.theory_mean - ds.spectrum)
    paper = float(ds.paper_mean - ds.spectrum)
    measured = ("time average over t >= " + f"{ds.attrs['window_start']:.3g}" + ", then over runs: "
                + "; ".join(parts) + f". Stationary law (quadrature): {theory:.5f}; the paper's "
                f"first-order mean: {paper:+.5f}")
    values.update(theory_mean_minus_s=theory, paper_mean_minus_s=paper)
    out.append(claim_row("fig4-mean-side", "With label noise the stationary mean lies slightly "
                         "ABOVE s (paper); docs/theory.md §9 says slightly below.", "Prop. 5.2 (ii) eq. 17",
                         "fig4", measured, values,
                         f"the paper's claim is refuted if the mean is below s by more than {Z:g} "
                         "SE for SGD and the SDE, supported if above by more than that",
                         "refuted" if below_all else ("supported" if above_any
                                                      else "not testable")))

    widths = {m: median_abs_deviation_from(_final(ds, "none", m), s) for m in END_METHODS}
    ok = abs(math.log(widths["sde"] / widths["sgd"])) < abs(math.log(widths["isotropic"]
                                                                      / widths["sgd"]))
    out.append(claim_row("fig4-anisotropic-vs-isotropic", "State-dependent noise is a more "
                         "accurate model of SGD's end-of-training law than isotropic noise.",
                         "§1.1 contribution 4", "fig4",
                         f"no label noise, median |a_1(T) - s|: SGD {widths['sgd']:.2e}, "
                         f"anisotropic SDE {widths['sde']:.2e}, isotropic SDE "
                         f"{widths['isotropic']:.2e} (isotropic noise does not vanish at the "
                         "minimum)", widths,
                         "the anisotropic SDE's width is closer to SGD's (in ratio) than the "
                         "isotropic one's", "supported" if ok else "refuted"))
    return out


def figure(ds):
    methods = [str(m) for m in ds.method_name.values]
    s = float(ds.spectrum)
    fig, axes = new_figure(2, len(methods), figsize=(4.3 * len(methods), 7.4))
    for i, noise in enumerate(ds.noise.values):
        for j, m in enumerate(methods):
            ax = axes[i, j]
            a = ds.amplitude.sel(noise=noise, method_name=m).isel(time=-1).values
            a = a[np.isfinite(a)]
            lo, hi = np.percentile(a, [0.5, 99.5])
            pad = 0.05 * (hi - lo)
            shown = a[(a >= lo - pad) & (a <= hi + pad)]
            if noise == "none":    # a Dirac mass: show the deviation from s on its own scale
                ax.hist(shown - s, bins=40, density=True, color=COLORS[j], alpha=0.6,
                        label=f"{a.size} runs at $t$ = {float(ds.time.values[-1]):g} "
                              f"({a.size - shown.size} outside 0.5–99.5%)")
                ax.axvline(0.0, color="k", ls="--", lw=1.2, label="theory: Dirac mass at $s_1$")
                ax.set_xlabel("$a_1 - s_1$ at the end")
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
            else:
                ax.hist(a, bins=40, density=True, color=COLORS[j], alpha=0.6,
                        label=f"{a.size} runs at $t$ = {float(ds.time.values[-1]):g}")
                ax.axvline(s, color="k", ls=":", lw=1.0, label="$s_1$")
                ax.set_xlabel("amplitude of the largest mode $a_1$ at the end")
            if noise == "label" and m != "isotropic":
                ax.plot(ds.amplitude_grid.values, ds.stationary_density.values, "k--", lw=1.3,
                        label="stationary law (quadrature)")
                ax.axvline(float(ds.theory_mean), color="C3", ls="--", lw=1.0,
                           label="its mean (below $s$)")
                ax.axvline(float(ds.paper_mean), color="C4", ls="-.", lw=1.0,
                           label="paper's mean (above $s$)")
                grid = ds.amplitude_grid.values
                keep = ds.stationary_density.values > 1e-3 * ds.stationary_density.values.max()
                ax.set_xlim(min(grid[keep][0], lo), max(grid[keep][-1], hi))
            title = "no label noise" if noise == "none" else \
                f"label noise σ = {ds.attrs['label_noise']:g}"
            ax.set_title(f"{METHOD_NAMES.get(m, m)}, {title}\nmean − s = {np.mean(a) - s:.2e}, "
                         f"sd = {np.std(a, ddof=1):.2e}", fontsize=9)
            ax.set_ylabel("density")
            ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Fig. 4 — end-of-training distribution of $a_1$ ($t$ = step × learning rate)")
    fig.tight_layout()
    return fig


STUDY = Study("fig4", "End-of-training law of the largest mode, without and with label noise",
              "Fig. 4, Prop. 5.2", experiments, analyse, numbers, claims, figure)

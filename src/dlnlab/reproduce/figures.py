"""The paper's figures, drawn from each recipe's dataset (simulation solid, theory dashed,
predicted events dotted; time is ``t = step × learning rate``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from ..plot.figures import TIME_LABEL  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
METHOD_NAMES = {"gd": "GD", "gf": "gradient flow", "sgd": "SGD", "sde": "anisotropic SDE (EM)",
                "isotropic": "isotropic SDE (EM)", "reduced": "reduced SDE"}
D_LABEL = "modewise diffusion $D_\\alpha$ (per unit $t$)"
NORM_LABEL = "$D_\\alpha$ / (max of the formula for mode $\\alpha$)"


def _scale(ds, i) -> float:
    """Per-mode scale: the formula's maximum (modes differ by ~s^5 in D; normalised, all show)."""
    return float(ds.formula_diffusion.isel(mode=i).max())


def _mode_label(ds, i):
    return f"mode {i + 1} ($s$={float(ds.spectrum.values[i]):.3g})"


def _nanmedian(x):
    """Median over runs, NaN (silently) where no run has a value."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=0)


def _band(ax, t, x, color, label=None, lw=1.6):
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x).any(axis=0)
    if not ok.any():
        return
    ax.fill_between(t[ok], np.nanpercentile(x[:, ok], 10, axis=0),
                    np.nanpercentile(x[:, ok], 90, axis=0), color=color, alpha=0.18, lw=0)
    ax.plot(t[ok], np.nanmedian(x[:, ok], axis=0), color=color, lw=lw, label=label)


def _diffusion_vs_amplitude(ax, ds, max_runs=16):
    """Per-run D_a against a/s (thin), formula on a grid (dashed), eq. 9 peak (dotted)."""
    for i in range(ds.sizes["mode"]):
        c = COLORS[i]
        s = float(ds.spectrum.values[i])
        amp = ds.amplitude.isel(mode=i).transpose("run", "time").values
        diff = ds.diffusion.isel(mode=i).transpose("run", "time").values
        scale = _scale(ds, i)
        for run in range(min(max_runs, amp.shape[0])):
            ax.plot(amp[run] / s, diff[run] / scale, color=c, lw=0.6, alpha=0.35,
                    label=_mode_label(ds, i) if run == 0 else None)
        ax.plot(ds.normalised_amplitude.values, ds.formula_diffusion.isel(mode=i).values / scale,
                color=c, ls="--", lw=1.4)
        peak = float(ds.theory_peak_amplitude.values[i])
        if np.isfinite(peak):
            ax.axvline(peak / s, color=c, ls=":", lw=1.2)
    ax.plot([], [], "k--", lw=1.4, label="formula, eq. 7 (aligned, balanced)")
    ax.plot([], [], "k:", lw=1.2, label="predicted peak, eq. 9")
    ax.set_xlim(-0.02, 1.1)
    ax.set_ylim(-0.03, 1.25)
    ax.set_xlabel("normalised amplitude $a_\\alpha / s_\\alpha$")
    ax.set_ylabel(NORM_LABEL)
    ax.legend(fontsize=7, loc="upper left")


def _diffusion_vs_time(ax, ds, title):
    """Median D_a(t) with 10-90% band; the formula at the runs' own amplitudes (dashed);
    median time the amplitude crosses the predicted peak (dotted) and reaches 0.9 s (dash-dot)."""
    t = ds.time.values
    for i in range(ds.sizes["mode"]):
        c = COLORS[i]
        scale = _scale(ds, i)
        _band(ax, t, ds.diffusion.isel(mode=i).transpose("run", "time").values / scale, c,
              _mode_label(ds, i))
        if "reduced_diffusion" in ds:
            ax.plot(t, np.nanmedian(ds.reduced_diffusion.isel(mode=i).transpose("run", "time")
                                    .values, axis=0) / scale, color=c, ls="--", lw=1.2)
        cross = np.nanmedian(ds.t_cross_peak.isel(mode=i).values)
        if np.isfinite(cross):
            ax.axvline(cross, color=c, ls=":", lw=1.2)
        t90 = np.nanmedian(ds.t_90.isel(mode=i).values)
        if np.isfinite(t90):
            ax.axvline(t90, color=c, ls="-.", lw=0.8, alpha=0.7)
    if "reduced_diffusion" in ds:
        ax.plot([], [], "k--", lw=1.2, label="formula at the run's $a_\\alpha(t)$")
    ax.plot([], [], "k:", lw=1.2, label="$a_\\alpha$ reaches eq. 9 peak (median)")
    ax.plot([], [], "k-.", lw=0.8, label="$a_\\alpha$ reaches $0.9 s_\\alpha$ (median)")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(NORM_LABEL + " (median, 10–90%)")
    ax.set_ylim(-0.03, 1.25)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")


def _relative(t, values, t_ref, grid):
    """Each run's series on ``grid`` of ``t - t_ref[run]`` (NaN outside the run's records)."""
    out = np.full((values.shape[0], grid.size), np.nan)
    for run in range(values.shape[0]):
        if np.isfinite(t_ref[run]):
            out[run] = np.interp(grid, t - t_ref[run], values[run], left=np.nan, right=np.nan)
    return out


def _diffusion_vs_relative_time(ax, ds, title):
    """D_a against the time to the run's own learning time t(a = 0.9 s): runs learn at different
    times, so a median at fixed t smears the peaks; aligned on their learning time it does not."""
    t = ds.time.values
    grid = np.linspace(-20.0, 10.0, 301)
    for i in range(ds.sizes["mode"]):
        c = COLORS[i]
        scale = _scale(ds, i)
        t90 = ds.t_90.isel(mode=i).values
        diff = _relative(t, ds.diffusion.isel(mode=i).transpose("run", "time").values, t90, grid)
        _band(ax, grid, diff / scale, c, _mode_label(ds, i))
        if "reduced_diffusion" in ds:
            formula = _relative(t, ds.reduced_diffusion.isel(mode=i).transpose("run", "time")
                                .values, t90, grid)
            ax.plot(grid, _nanmedian(formula) / scale, color=c, ls="--", lw=1.2)
        lead = np.nanmedian(ds.t_cross_peak.isel(mode=i).values - t90)
        if np.isfinite(lead):
            ax.axvline(lead, color=c, ls=":", lw=1.2)
    ax.axvline(0.0, color="k", ls="-.", lw=0.8)
    if "reduced_diffusion" in ds:
        ax.plot([], [], "k--", lw=1.2, label="formula at the run's $a_\\alpha(t)$")
    ax.plot([], [], "k:", lw=1.2, label="$a_\\alpha$ reaches eq. 9 peak (median)")
    ax.plot([], [], "k-.", lw=0.8, label="$a_\\alpha$ reaches $0.9 s_\\alpha$")
    ax.set_xlabel("$t - t(a_\\alpha = 0.9 s_\\alpha)$ per run ($t$ = step × learning rate)")
    ax.set_ylabel(NORM_LABEL + " (median, 10–90%)")
    ax.set_ylim(-0.03, 1.25)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")


def _time_and_amplitude(ds, left, title, suptitle):
    """Two panels: ``left(ax, ds, title)`` (diffusion over time) and D against a/s."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    left(axes[0], ds, title)
    _diffusion_vs_amplitude(axes[1], ds)
    axes[1].set_title("against the normalised amplitude (thin: runs)")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def fig1(ds: xr.Dataset):
    return _time_and_amplitude(
        ds, _diffusion_vs_time, f"SGD from an aligned, balanced init ({ds.sizes['run']} runs)",
        "Fig. 1 — exact modewise diffusion of SGD vs the aligned-balanced formula")


def fig2(ds: xr.Dataset):
    methods = [str(m) for m in ds.method.values]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey=True)
    t = ds.time.values
    for ax, m in zip(axes.flat, methods, strict=False):
        d = ds.isel(method=methods.index(m))
        for i in range(ds.sizes["mode"]):
            c = COLORS[i]
            _band(ax, t, d.amplitude.isel(mode=i).transpose("run", "time").values, c,
                  _mode_label(ds, i))
            ax.plot(t, ds.theory_gf_amplitude.isel(mode=i).values, color=c, ls="--", lw=1.0)
            ax.axhline(float(ds.spectrum.values[i]), color=c, ls=":", lw=0.7)
        ax.set_title(METHOD_NAMES.get(m, m))
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel("mode amplitude $a_\\alpha = u_\\alpha^T W v_\\alpha$")
        ax.tick_params(labelbottom=True, labelleft=True)
    axes.flat[0].plot([], [], "k--", lw=1.0, label="aligned gradient-flow theory from mean $|a(0)|$")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Fig. 2 — saddle to saddle: mode amplitudes ({ds.sizes['run']} runs: median, "
                 "10–90% band; same inits for every method)")
    fig.tight_layout()
    return fig


def fig3(ds: xr.Dataset):
    methods = [str(m) for m in ds.method.values]
    fig, axes = plt.subplots(2, len(methods), figsize=(6 * len(methods), 8.2))
    for j, m in enumerate(methods):
        d = ds.isel(method=j)
        _diffusion_vs_relative_time(axes[0, j], d, f"{METHOD_NAMES.get(m, m)}: runs aligned "
                                    "on their learning time")
        ax = axes[1, j]
        lo, hi = np.inf, -np.inf
        for i in range(ds.sizes["mode"]):
            x, y = d.t_90.isel(mode=i).values, d.t_peak.isel(mode=i).values
            ax.scatter(x, y, s=10, color=COLORS[i], alpha=0.6, label=_mode_label(ds, i))
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any():
                lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
        if np.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="peak at the learning time")
        ax.set_xlabel("time $a_\\alpha$ reaches $0.9 s_\\alpha$ ($t$ = step × learning rate)")
        ax.set_ylabel("time of the diffusion peak")
        ax.set_title("per run: below the diagonal = peak before learning")
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 3 — the modewise diffusion peaks before each mode is learned "
                 f"(random init, {ds.sizes['run']} runs)")
    fig.tight_layout()
    return fig


def fig4(ds: xr.Dataset):
    methods = [str(m) for m in ds.method.values]
    s = float(ds.spectrum)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.3 * len(methods), 7.4))
    for i, noise in enumerate(ds.noise.values):
        for j, m in enumerate(methods):
            ax = axes[i, j]
            a = ds.amplitude.sel({"noise": noise, "method": m}).isel(time=-1).values
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


def fig6(ds: xr.Dataset):
    methods = [str(m) for m in ds.method.values]
    fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 4.4), sharey=True)
    t = ds.time.values
    from .recipes import _transition_mask

    for ax, m in zip(np.atleast_1d(axes), methods, strict=True):
        d = ds.isel(method=methods.index(m))
        mask = _transition_mask(d)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            ax.axvspan(t[a], t[b - 1], color="0.85", lw=0)
        for j, pair in enumerate(ds.pair.values):
            ax.plot(t, d.abs_cross.isel(pair=j).median("run").values, lw=1.3,
                    color=COLORS[j % len(COLORS)], label=f"$|a_{{{pair}}}|$")
        ax.plot(t, d.abs_cross_other_max.median("run").values, color="0.4", lw=1.0, ls="--",
                label="max over cross modes with non-teacher modes")
        ax.set_yscale("log")
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel("cross-mode amplitude $|u_a^T W v_b|$ (median over runs)")
        ax.set_title(f"{METHOD_NAMES.get(m, m)} (grey: modes in transition, 0.1–0.9 s)")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Fig. 6 — cross modes are small except while modes are learned")
    fig.tight_layout()
    return fig


def _balance_panels(ds, name, axes, ylabel, dim, log=True):
    t = ds.time.values
    for ax, depth in zip(axes, ds.depth.values, strict=True):
        d = ds.sel(depth=depth)
        size = int(depth) - 1 if dim == "pair" else int(depth)
        for p in range(size):
            for init, ls in (("gaussian", "-"), ("balanced", "--")):
                x = d[name].sel(init=init).isel({dim: p}).transpose("run", "time").values
                label = (f"{'pair' if dim == 'pair' else 'layer'} "
                         f"{p + 1}{'-' + str(p + 2) if dim == 'pair' else ''}, {init} init")
                ax.plot(t, np.nanmedian(x, axis=0), color=COLORS[p], ls=ls, lw=1.4, label=label)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel(ylabel)
        ax.set_title(f"depth {int(depth)}")
        ax.legend(fontsize=7)


def fig7(ds: xr.Dataset):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    _balance_panels(ds, "balance_residual", axes,
                    "$r_l$ = normalised balance residual (median)", "pair")
    fig.suptitle("Fig. 7 — balance under SGD from Gaussian (solid) and balanced (dashed) inits")
    fig.tight_layout()
    return fig


def fig8(ds: xr.Dataset):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _balance_panels(ds, "balance_numerator", axes[0],
                    "$\\|W_l W_l^T - W_{l+1}^T W_{l+1}\\|_F$ (median)", "pair")
    _balance_panels(ds, "layer_norm", axes[1], "layer norm $\\|W_l\\|_F$ (median)", "layer",
                    log=False)
    fig.suptitle("Fig. 8 — unnormalised imbalance and layer norms (solid: Gaussian init, "
                 "dashed: balanced init)")
    fig.tight_layout()
    return fig


def scaling(ds: xr.Dataset):
    from .recipes import _scaling_x, scaling_fits

    x, label, coord = _scaling_x(ds)
    fits = scaling_fits(ds)
    k = ds.sizes["mode"]
    fig, axes = plt.subplots(1, k, figsize=(4.4 * k, 4))
    grid = np.linspace(0, x.max() * 1.05, 50)
    for i, ax in enumerate(np.atleast_1d(axes)):
        y = ds.max_diffusion.isel(mode=i)
        mean = y.mean("run").values
        se = y.std("run", ddof=1).values / np.sqrt(y.sizes["run"])
        ax.errorbar(x, mean, yerr=se, fmt="o", color=COLORS[i], ms=4,
                    label="SGD: max$_t$ $D_\\alpha$, mean ± SE")
        f = fits[i]
        ax.plot(grid, f["slope"] * grid + f["intercept"], color=COLORS[i], lw=1.2,
                label=f"fit: slope {f['slope']:.3g}, $R^2$ = {f['r2']:.4f}")
        ax.plot(x, ds.theory_max_diffusion.isel(mode=i).values, "k--", lw=1.0,
                label="formula: max$_a$ of eq. 7")
        ax.set_xlabel(label)
        ax.set_ylabel(D_LABEL)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(_mode_label(ds, i))
        ax.legend(fontsize=7, loc="upper left")
    name = "Fig. 9" if coord == "learning_rate" else "Fig. 10"
    fig.suptitle(f"{name} — maximal modewise diffusion against {label} "
                 f"({ds.sizes['run']} runs per point)")
    fig.tight_layout()
    return fig


def finite(ds: xr.Dataset):
    sizes = ds.num_samples.values
    fig, axes = plt.subplots(1, sizes.size, figsize=(5.2 * sizes.size, 4.2), sharey=True)
    for ax, n in zip(np.atleast_1d(axes), sizes, strict=True):
        _diffusion_vs_amplitude(ax, ds.sel(num_samples=n))
        ax.set_title(f"offline SGD, {int(n)} samples")
    fig.suptitle("App. J.3 — finite data set: modewise diffusion (dashed: online formula)")
    fig.tight_layout()
    return fig


def fig11(ds: xr.Dataset):
    return _time_and_amplitude(
        ds, _diffusion_vs_relative_time, f"SGD, hidden width 24 ({ds.sizes['run']} runs)",
        "Fig. 11 — hidden width 24 (inputs and outputs 12)")


def appK(ds: xr.Dataset):  # noqa: N802 (the paper's appendix name)
    from .recipes import em_statistics

    rows = em_statistics(ds)
    h = np.array([r["step_size"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
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
    if ok.sum() >= 1:
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
    fig.suptitle("App. K — discretisation of the anisotropic SDE on one Brownian path per run")
    fig.tight_layout()
    return fig

"""Figures of the Golden-Path dataset (``dlnlab golden-path``), from its variables only.

Each function takes the dataset of
:func:`dlnlab.experiments.protocols.golden_path.analyse` and returns a
:class:`matplotlib.figure.Figure` (no pyplot state). Bands are the dataset's percentile bootstrap
intervals of the mean over runs (``*_low``, ``*_high``); every title says how many runs a curve
covers. Variables read: ``d_r``, ``d_sigma``, ``d_shape`` with ``_low``/``_high`` on ``time``,
``level`` (suffix ``_level``) and ``escape x offset`` (suffix ``_window``);
``relative_parameter_distance_*``, ``function_distance_*``; ``heatmap_rank_matrix_mean``,
``heatmap_reference_rank_matrix``; ``diagonal_coefficient``, ``cross_coefficient_max``,
``reference_*``, ``t_cross``, ``t_diag``, ``spectrum``; ``cross_energy_fraction``.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .panels import COLORS, TIME_LABEL, new_figure

ARM_LABELS = {"sgd": "online SGD", "offline_sgd": "offline SGD (replacement)",
              "offline_sgd_epochs": "offline SGD (epochs)", "sde": "anisotropic SDE",
              "batch_switch": "batch-size switch", "gd": "GD", "offline_gd": "offline GD"}
DISTANCE_LABELS = {"d_r": "rank distance $d_r$", "d_sigma": "log-spectrum distance $d_\\sigma$",
                   "d_shape": "shape distance $d_{shape}$"}


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _colour(ds: xr.Dataset, arm: str) -> str:
    return COLORS[(list(ds.arm.values).index(arm) + 1) % len(COLORS)]


def _band(ax, x, mean, low, high, colour, label, *, log=False, style="-") -> None:
    x, mean = np.asarray(x, dtype=np.float64), np.asarray(mean, dtype=np.float64)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(mean)
    if log:
        ok &= mean > 0
    if not ok.any():
        return
    bounds = ok & np.isfinite(low) & np.isfinite(high)
    if log:
        bounds &= low > 0
    ax.fill_between(x[bounds], low[bounds], high[bounds], color=colour, alpha=0.2, lw=0)
    ax.plot(x[ok], mean[ok], color=colour, lw=1.5, ls=style, label=label)


def readable_log_axis(axis) -> None:
    """Label a log-scaled ``axis`` (``ax.xaxis`` / ``ax.yaxis``, call after plotting) without
    crowded tick labels: minor ticks unlabelled, major labels at powers of ten; a view holding
    fewer than two of them is labelled at 1, 2, 5 x 10^n, or failing that at every 1..9 x 10^n,
    in plain numbers (matplotlib's default labels minor ticks there, and they overlap)."""
    low, high = sorted(float(v) for v in axis.get_view_interval())
    axis.set_minor_formatter(NullFormatter())
    if not low > 0:
        return
    for subs in ((1.0,), (1.0, 2.0, 5.0), tuple(np.arange(1.0, 10.0))):
        decades = np.arange(np.floor(np.log10(low)), np.ceil(np.log10(high)) + 1)
        ticks = (10.0 ** decades[:, None] * np.asarray(subs)).ravel()
        if np.sum((ticks >= low) & (ticks <= high)) >= 2:
            break
    axis.set_major_locator(LogLocator(base=10.0, subs=subs))
    if len(subs) > 1:
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _loss_level_axis(ax) -> None:
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("loss level (training goes left to right)")
    readable_log_axis(ax.xaxis)


def _runs(ds: xr.Dataset, arm: str, name: str = "runs_at_checkpoint") -> int:
    return int(ds[name].sel(arm=arm).max())


def pattern_distance_figure(ds: xr.Dataset) -> Figure:
    """``d_r``, ``d_sigma``, ``d_shape`` (rows) against time, against the loss level (each
    run's first crossing, GD at its own) and in the window around the first escape (columns),
    every arm with its bootstrap band."""
    names = ("d_r", "d_sigma", "d_shape")
    fig, axes = new_figure(3, 3, figsize=(15, 11), squeeze=False)
    escape = _first_escape(ds)
    for row, name in enumerate(names):
        for arm in ds.arm.values:
            a = ds.sel(arm=arm)
            c, label = _colour(ds, arm), f"{arm_label(arm)} ({_runs(ds, arm)} runs)"
            style = _style(arm)
            _band(axes[row, 0], ds.time, a[name], a[f"{name}_low"], a[f"{name}_high"], c, label,
                  style=style)
            _band(axes[row, 1], ds.loss_level, a[f"{name}_level"], a[f"{name}_low_level"],
                  a[f"{name}_high_level"], c, label, style=style)
            if escape is not None:
                w = a.sel(escape=escape)
                _band(axes[row, 2], ds.offset, w[f"{name}_window"], w[f"{name}_low_window"],
                      w[f"{name}_high_window"], c, label, style=style)
        axes[row, 0].set_ylabel(DISTANCE_LABELS[name] + "\n(GD vs mean over runs)")
        axes[row, 0].set_xlabel(TIME_LABEL)
        _loss_level_axis(axes[row, 1])
        axes[row, 2].set_xlabel(f"time from escape {escape} (t - t_esc)" if escape is not None
                                else "no escape detected")
        axes[row, 2].axvline(0.0, color="0.5", lw=0.8, ls=":")
        if escape is None:
            axes[row, 2].text(0.5, 0.5, "no escape found in both GD and the runs\n(escape rule: "
                              "docs/golden-path.md)", ha="center", va="center",
                              transform=axes[row, 2].transAxes, fontsize=9)
    axes[0, 0].set_title("aligned by time")
    axes[0, 1].set_title("aligned by loss level")
    axes[0, 2].set_title("escape-centred window" if escape is not None else "no escape detected")
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=8, loc="best")
    else:
        axes[0, 0].text(0.5, 0.5, "no run to compare (every run diverged?)", ha="center",
                        va="center", transform=axes[0, 0].transAxes, fontsize=9)
    fig.suptitle(f"GD vs the mean pattern of the runs ({int(ds.attrs.get('confidence', 0.95) * 100)}% "
                 "bootstrap bands)")
    fig.tight_layout()
    return fig


def _style(arm: str) -> str:
    """Dashed for the batch switch: it shares online SGD's noise until the switch, so a solid
    curve would hide online SGD's."""
    return "--" if arm == "batch_switch" else "-"


def _first_escape(ds: xr.Dataset):
    counts = ds.runs_at_checkpoint_window.sel(offset=0.0, method="nearest").max("arm")
    found = [int(e) for e, n in zip(ds.escape.values, counts.values, strict=True) if n >= 2]
    return found[0] if found else None


def distance_figure(ds: xr.Dataset) -> Figure:
    """Relative parameter distance (solid) and function distance (dashed) per arm, log scale,
    against time and against the loss level, with bootstrap bands."""
    fig, axes = new_figure(1, 2, figsize=(13, 5), squeeze=False)
    for arm in ds.arm.values:
        a, c = ds.sel(arm=arm), _colour(ds, arm)
        for name, style, what in (("relative_parameter_distance", "-", "parameters"),
                                  ("function_distance", "--", "function")):
            label = f"{arm_label(arm)}: {what}"
            for ax, x, suffix in ((axes[0, 0], ds.time, ""), (axes[0, 1], ds.loss_level, "_level")):
                _band(ax, x, a[f"{name}_mean{suffix}"], a[f"{name}_low{suffix}"],
                      a[f"{name}_high{suffix}"], c, label, log=True, style=style)
    axes[0, 0].set_xlabel(TIME_LABEL)
    _loss_level_axis(axes[0, 1])
    for ax in axes[0]:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
        ax.set_ylabel("relative distance to GD (mean over runs)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("Solid: parameters ‖θ_GD − θ‖/‖θ_GD‖ (gauge freedom); dashed: function "
                 "‖W_GD − W‖_F/‖W_GD‖_F; bootstrap bands")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def rank_heatmap_figure(ds: xr.Dataset) -> Figure:
    """``r_ij`` of GD (and offline GD) beside each arm's mean over runs at the heatmap
    checkpoints (rows), the numbers written in the cells."""
    refs = list(dict.fromkeys(str(r) for r in ds.reference.values))
    columns = [("ref", r) for r in refs] + [("arm", str(a)) for a in ds.arm.values]
    rows = ds.checkpoint.size
    fig, axes = new_figure(rows, len(columns), figsize=(2.6 * len(columns) + 1, 2.5 * rows + 0.6),
                           squeeze=False)
    top = float(max(ds.heatmap_reference_rank_matrix.max(), ds.heatmap_rank_matrix_mean.max(), 1))
    cmap = ListedColormap(["#f0f0f0", *[_shade(v) for v in np.linspace(0.15, 1, 64)]])
    norm = BoundaryNorm(np.concatenate([[-0.5, 0.5], np.linspace(0.5, top + 0.5, 64)[1:]]), cmap.N)
    depth = ds.row.size
    for r, t in enumerate(ds.checkpoint.values):
        for c, (kind, name) in enumerate(columns):
            ax = axes[r, c]
            if kind == "ref":
                arm = next(str(a) for a in ds.arm.values if str(ds.reference.sel(arm=a).values) == name)
                m = ds.heatmap_reference_rank_matrix.sel(arm=arm).isel(checkpoint=r).values
                title = arm_label(name)
            else:
                m = ds.heatmap_rank_matrix_mean.sel(arm=name).isel(checkpoint=r).values
                title = f"{arm_label(name)}, mean"
            upper = np.triu(np.ones((depth, depth), dtype=bool))
            shown = np.where(upper, m, -1.0)
            ax.imshow(np.where(upper, shown, 0), cmap=cmap, norm=norm)
            for i in range(depth):
                for j in range(i, depth):
                    ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(depth), [str(j) for j in ds.column.values])
            ax.set_yticks(range(depth), [str(i) for i in ds.row.values])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"t = {t:.3g}\ni (first layer)")
            if r == rows - 1:
                ax.set_xlabel("j (last layer)")
    fig.suptitle("Numerical rank $r_{ij}$ of $P_{ij} = W_j \\cdots W_i$ "
                 f"(threshold {ds.attrs.get('rank_threshold', 1e-5):g} σ₁)")
    fig.tight_layout()
    return fig


def _shade(value: float):
    return (1.0 - 0.55 * value, 1.0 - 0.35 * value, 1.0)


def mode_figure(ds: xr.Dataset, arm: str | None = None) -> Figure:
    """Per teacher mode: ``|w_aa|`` (solid) and ``max_b!=a |w_ab|`` (dashed) of GD and the mean
    over the runs of ``arm`` (default the first), with the median ``t_cross`` (dotted) and
    ``t_diag`` (dash-dot) marks; last panel: the cross-mode energy fraction."""
    arm = str(ds.arm.values[0]) if arm is None else arm
    a = ds.sel(arm=arm)
    modes = ds.mode.size
    fig, axes = new_figure(1, modes + 1, figsize=(4.2 * (modes + 1), 4.2), squeeze=False)
    t = ds.time.values
    ref_name = arm_label(str(a.reference.values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in range(modes):
            ax = axes[0, m]
            s = float(ds.spectrum.values[m])
            ax.plot(t, a.reference_diagonal_coefficient.values[:, m] / s, color="k", lw=1.4,
                    label=f"{ref_name} |w_aa|")
            ax.plot(t, a.reference_cross_coefficient_max.values[:, m] / s, color="k", lw=1.0,
                    ls="--", label=f"{ref_name} max |w_ab|")
            c = _colour(ds, arm)
            ax.plot(t, np.nanmean(a.diagonal_coefficient.values[:, :, m], 0) / s, color=c, lw=1.4,
                    label=f"{arm_label(arm)} |w_aa| (mean)")
            ax.plot(t, np.nanmean(a.cross_coefficient_max.values[:, :, m], 0) / s, color=c, lw=1.0,
                    ls="--", label=f"{arm_label(arm)} max |w_ab| (mean)")
            for name, style in (("t_cross", ":"), ("t_diag", "-.")):
                v = np.nanmedian(a[name].values[:, m])
                if np.isfinite(v):
                    ax.axvline(v, color=c, ls=style, lw=1.0, label=f"median {name}")
                r = float(a[f"reference_{name}"].values[m])
                if np.isfinite(r):
                    ax.axvline(r, color="k", ls=style, lw=0.8)
            ax.set_yscale("log")
            readable_log_axis(ax.yaxis)
            ax.set_title(f"mode {m + 1} (s = {s:.3g}), {int((~a.diverged).sum())} runs", fontsize=9)
            ax.set_xlabel(TIME_LABEL)
            ax.set_ylabel("coefficient / s_a")
        ax = axes[0, modes]
        ax.plot(t, a.reference_cross_energy_fraction.values, color="k", label=ref_name)
        ax.plot(t, np.nanmean(a.cross_energy_fraction.values, 0), color=_colour(ds, arm),
                label=f"{arm_label(arm)} (mean)")
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel("$E_{cross} / E_{tot}$")
        ax.set_title("cross-mode energy fraction", fontsize=9)
        ax.legend(fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle("Mode coefficients $w_{ab} = u_a^T W v_b$: cross modes vs diagonal modes "
                 "(dotted: t_cross, dash-dot: t_diag; black: the GD reference)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def golden_path_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """Every figure of the report by file stem."""
    return {"pattern_distances": pattern_distance_figure(ds), "distances": distance_figure(ds),
            "rank_heatmaps": rank_heatmap_figure(ds), "modes": mode_figure(ds)}

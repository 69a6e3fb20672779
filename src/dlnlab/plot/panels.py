"""Panels that figures of several studies share, drawn from dataset variables only.

Simulation is solid, theory dashed (a theory curve is always a variable of the dataset: this
module computes none), predicted events dotted. Figures are built as
:class:`matplotlib.figure.Figure` objects (:func:`new_figure`): no pyplot state, nothing to close.

Variables read (dims ``run, time, mode`` unless said): ``amplitude``, ``diffusion``,
``reduced_diffusion`` (optional: the formula at the run's own amplitudes), ``spectrum``
``(mode,)``, ``theory_peak_amplitude`` ``(mode,)``, ``formula_diffusion``
``(mode, normalised_amplitude)`` (the formula on a grid of ``a / s``), and the events ``t_90``,
``t_cross_peak`` ``(run, mode)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

TIME_LABEL = "t = step × learning rate"
COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
D_LABEL = "modewise diffusion $D_\\alpha$ (per unit $t$)"
NORM_LABEL = "$D_\\alpha$ / (max of the formula for mode $\\alpha$)"
BAND_LABEL = NORM_LABEL + "\nmedian over runs, 10–90% band"
"""Two lines: on one line the label is taller than a panel and runs into the figure's title."""

DEFAULT_LABELS = {
    "formula": "formula (aligned, balanced)",
    "peak": "predicted peak",
    "peak_reached": "$a_\\alpha$ reaches the predicted peak (median)",
}
"""Legend entries of the theory curves; a study passes its own (with its source's equation
numbers) as ``labels``."""

__all__ = ["BAND_LABEL", "COLORS", "DEFAULT_LABELS", "D_LABEL", "NORM_LABEL", "TIME_LABEL", "band",
           "balance_panels", "diffusion_vs_amplitude", "diffusion_vs_relative_time",
           "diffusion_vs_time", "formula_scale", "mode_label", "nanmedian_over_runs",
           "new_figure", "relative_to", "time_and_amplitude"]


def new_figure(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float], **subplots):
    """A :class:`~matplotlib.figure.Figure` and its axes (as ``pyplot.subplots`` returns them)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplots)


def _labels(labels: Mapping[str, str] | None) -> dict:
    return {**DEFAULT_LABELS, **(labels or {})}


def formula_scale(ds: xr.Dataset, i: int) -> float:
    """Per-mode scale: the formula's maximum (modes differ by ~s^5 in D; normalised, all show)."""
    return float(ds.formula_diffusion.isel(mode=i).max())


def mode_label(ds: xr.Dataset, i: int) -> str:
    return f"mode {i + 1} ($s$={float(ds.spectrum.values[i]):.3g})"


def nanmedian_over_runs(x) -> np.ndarray:
    """Median over the first axis (runs), NaN (silently) where no run has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=0)


def band(ax, t, x, color, label=None, lw=1.6) -> None:
    """Median over runs (``x``: ``(run, time)``) with its 10-90% band; times without any finite
    value are left out."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x).any(axis=0)
    if not ok.any():
        return
    ax.fill_between(t[ok], np.nanpercentile(x[:, ok], 10, axis=0),
                    np.nanpercentile(x[:, ok], 90, axis=0), color=color, alpha=0.18, lw=0)
    ax.plot(t[ok], np.nanmedian(x[:, ok], axis=0), color=color, lw=lw, label=label)


def diffusion_vs_amplitude(ax, ds: xr.Dataset, max_runs: int = 16, labels=None) -> None:
    """Per-run ``D_a`` against ``a / s`` (thin), the formula on its grid (dashed), the predicted
    peak amplitude (dotted); every mode normalised by its formula's maximum."""
    labels = _labels(labels)
    tops = []
    for i in range(ds.sizes["mode"]):
        c = COLORS[i]
        s = float(ds.spectrum.values[i])
        amp = ds.amplitude.isel(mode=i).transpose("run", "time").values
        diff = ds.diffusion.isel(mode=i).transpose("run", "time").values
        scale = formula_scale(ds, i)
        transit = np.where((amp[:max_runs] >= 0.2 * s) & (amp[:max_runs] <= s),
                           diff[:max_runs] / scale, np.nan)
        tops.extend(np.nanmax(transit, axis=1, initial=-np.inf, where=np.isfinite(transit)))
        for run in range(min(max_runs, amp.shape[0])):
            ax.plot(amp[run] / s, diff[run] / scale, color=c, lw=0.6, alpha=0.35,
                    label=mode_label(ds, i) if run == 0 else None)
        ax.plot(ds.normalised_amplitude.values, ds.formula_diffusion.isel(mode=i).values / scale,
                color=c, ls="--", lw=1.4)
        peak = float(ds.theory_peak_amplitude.values[i])
        if np.isfinite(peak):
            ax.axvline(peak / s, color=c, ls=":", lw=1.2)
    ax.plot([], [], "k--", lw=1.4, label=labels["formula"])
    ax.plot([], [], "k:", lw=1.2, label=labels["peak"])
    ax.set_xlim(-0.02, 1.1)
    # Room for runs above the formula in transit (0.2 s <= a <= s; a finite data set raises D),
    # not for the early spikes of a mode still at rest (driven by cross modes).
    finite = np.asarray(tops, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    top = 1.25 if finite.size == 0 else max(1.25, min(3.0, 1.08 * float(np.percentile(finite, 95))))
    if not ax.get_autoscaley_on():          # a shared y axis already set by a sibling panel
        top = max(top, ax.get_ylim()[1])
    ax.set_ylim(-0.03, top)
    ax.set_xlabel("normalised amplitude $a_\\alpha / s_\\alpha$")
    ax.set_ylabel(NORM_LABEL)
    ax.legend(fontsize=7, loc="upper left")


def diffusion_vs_time(ax, ds: xr.Dataset, title: str, labels=None) -> None:
    """Median ``D_a(t)`` with its 10-90% band; the formula at the runs' own amplitudes (dashed);
    median time the amplitude crosses the predicted peak (dotted) and reaches 0.9 s (dash-dot)."""
    labels = _labels(labels)
    t = ds.time.values
    for i in range(ds.sizes["mode"]):
        c = COLORS[i]
        scale = formula_scale(ds, i)
        band(ax, t, ds.diffusion.isel(mode=i).transpose("run", "time").values / scale, c,
             mode_label(ds, i))
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
    ax.plot([], [], "k:", lw=1.2, label=labels["peak_reached"])
    ax.plot([], [], "k-.", lw=0.8, label="$a_\\alpha$ reaches $0.9 s_\\alpha$ (median)")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(BAND_LABEL)
    ax.set_ylim(-0.03, 1.25)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")


def relative_to(t, values, t_ref, grid) -> np.ndarray:
    """Each run's series (``values``: ``(run, time)``) on ``grid`` of ``t - t_ref[run]`` (NaN
    outside the run's records or where ``t_ref`` is NaN)."""
    out = np.full((values.shape[0], grid.size), np.nan)
    for run in range(values.shape[0]):
        if np.isfinite(t_ref[run]):
            out[run] = np.interp(grid, t - t_ref[run], values[run], left=np.nan, right=np.nan)
    return out


def diffusion_vs_relative_time(ax, ds: xr.Dataset, title: str, labels=None) -> None:
    """``D_a`` against the time to the run's own learning time ``t(a = 0.9 s)``: runs learn at
    different times, so a median at fixed t smears the peaks; aligned on their learning time it
    does not."""
    labels = _labels(labels)
    t = ds.time.values
    grid = np.linspace(-20.0, 10.0, 301)
    for i in range(ds.sizes["mode"]):
        c = COLORS[i]
        scale = formula_scale(ds, i)
        t90 = ds.t_90.isel(mode=i).values
        diff = relative_to(t, ds.diffusion.isel(mode=i).transpose("run", "time").values, t90, grid)
        band(ax, grid, diff / scale, c, mode_label(ds, i))
        if "reduced_diffusion" in ds:
            formula = relative_to(t, ds.reduced_diffusion.isel(mode=i).transpose("run", "time")
                                  .values, t90, grid)
            ax.plot(grid, nanmedian_over_runs(formula) / scale, color=c, ls="--", lw=1.2)
        lead = np.nanmedian(ds.t_cross_peak.isel(mode=i).values - t90)
        if np.isfinite(lead):
            ax.axvline(lead, color=c, ls=":", lw=1.2)
    ax.axvline(0.0, color="k", ls="-.", lw=0.8)
    if "reduced_diffusion" in ds:
        ax.plot([], [], "k--", lw=1.2, label="formula at the run's $a_\\alpha(t)$")
    ax.plot([], [], "k:", lw=1.2, label=labels["peak_reached"])
    ax.plot([], [], "k-.", lw=0.8, label="$a_\\alpha$ reaches $0.9 s_\\alpha$")
    ax.set_xlabel("$t - t(a_\\alpha = 0.9 s_\\alpha)$ per run ($t$ = step × learning rate)")
    ax.set_ylabel(BAND_LABEL)
    ax.set_ylim(-0.03, 1.25)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")


def time_and_amplitude(ds: xr.Dataset, left, title: str, suptitle: str, labels=None) -> Figure:
    """Two panels: ``left(ax, ds, title, labels)`` (diffusion over time, e.g.
    :func:`diffusion_vs_time`) and :func:`diffusion_vs_amplitude`."""
    fig, axes = new_figure(1, 2, figsize=(12, 4.3))
    left(axes[0], ds, title, labels=labels)
    diffusion_vs_amplitude(axes[1], ds, labels=labels)
    axes[1].set_title("against the normalised amplitude (thin: runs)")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def balance_panels(ds: xr.Dataset, name: str, axes, ylabel: str, dim: str, log: bool = True) -> None:
    """One panel per ``depth``: the median over runs of ``ds[name]`` per ``pair`` of adjacent
    layers or per ``layer`` (``dim``), Gaussian init solid and balanced init dashed."""
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

"""Experiment figures: mode amplitudes, modewise diffusion, loss (simulation solid, theory dashed).

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state, no backend switch): they draw
the dataset's variables only, theory overlays included (``theory_*``, written by
``dlnlab.experiments.run.theory_overlays``); nothing here evaluates theory.
"""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

TIME_LABEL = "t = step × learning rate"


def _live_modes(ds: xr.Dataset) -> list[int]:
    return [int(a) for a in np.flatnonzero(ds.spectrum.values > 0)]


def _grid(n: int):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.tick_params(labelbottom=True)
    return fig, list(axes.flat[:n])


def amplitude_figure(ds: xr.Dataset):
    """Mode amplitudes over time per method: median over runs (line), 10-90% band, and the
    gradient-flow curve from the mean initial amplitude (dashed)."""
    modes = _live_modes(ds)
    fig, axes = _grid(ds.sizes["method_name"])
    t = ds.time.values
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, ax in enumerate(axes):
        d = ds.isel(method_name=index)
        for i, a in enumerate(modes):
            c = colors[i % len(colors)]
            amp = d.amplitude.isel(mode=a).transpose("run", "time").values
            ax.fill_between(t, np.nanpercentile(amp, 10, axis=0), np.nanpercentile(amp, 90, axis=0),
                            color=c, alpha=0.2, lw=0)
            ax.plot(t, np.nanmedian(amp, axis=0), color=c, lw=1.6,
                    label=f"mode {a + 1} (s={ds.spectrum.values[a]:.3g})")
            ax.plot(t, ds.theory_gf_amplitude.isel(mode=a).values, color=c, ls="--", lw=1.1)
            ax.axhline(ds.spectrum.values[a], color=c, ls=":", lw=0.8)
        ax.set_title(str(d.method_label.values))
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel("mode amplitude $a_\\alpha = u_\\alpha^T W v_\\alpha$")
    axes[0].plot([], [], "k--", lw=1.1, label="gradient flow, aligned, from mean $|a_\\alpha(0)|$")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Mode amplitudes ({ds.sizes['run']} runs: median and 10–90% band)")
    fig.tight_layout()
    return fig


def diffusion_figure(ds: xr.Dataset, max_runs: int = 12):
    """Exact modewise diffusion ``D_a`` against the normalised amplitude ``a / s``, one thin line
    per run (runs learn at different times, so per-run paths, not medians), the dataset's
    ``theory_diffusion_formula`` (the aligned-balanced ``D(a)`` of docs/theory.md §6, dashed) and
    the predicted peak amplitude (dotted, §7)."""
    modes = _live_modes(ds)
    fig, axes = _grid(ds.sizes["method_name"])
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    formula = ds.get("theory_diffusion_formula")
    for index, ax in enumerate(axes):
        d = ds.isel(method_name=index)
        for i, a in enumerate(modes):
            c = colors[i % len(colors)]
            s = float(ds.spectrum.values[a])
            amp = d.amplitude.isel(mode=a).transpose("run", "time").values
            diff = d.diffusion.isel(mode=a).transpose("run", "time").values
            for run in range(min(max_runs, amp.shape[0])):
                ax.plot(amp[run] / s, diff[run], color=c, lw=0.7, alpha=0.35,
                        label=f"mode {a + 1}" if run == 0 else None)
            if formula is not None and np.any(np.isfinite(formula.isel(mode=a).values)):
                ax.plot(ds.normalised_amplitude.values, formula.isel(mode=a).values, color=c,
                        ls="--", lw=1.3)
            peak = ds.theory_peak_amplitude.values[a]
            if np.isfinite(peak):
                ax.axvline(peak / s, color=c, ls=":", lw=1.2)
        ax.set_title(str(d.method_label.values))
        ax.set_xlabel("normalised amplitude $a_\\alpha / s_\\alpha$")
        ax.set_ylabel("modewise diffusion $D_\\alpha$ (per unit t)")
        ax.set_xlim(-0.05, 1.1)
    axes[0].plot([], [], "k--", lw=1.3, label="aligned-balanced formula (§6)")
    axes[0].plot([], [], "k:", lw=1.2, label="predicted peak (§7)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Modewise diffusion peaks before each mode is learned (thin: runs)")
    fig.tight_layout()
    return fig


def loss_figure(ds: xr.Dataset):
    """Training loss over time, median over runs per method (log scale)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    t = ds.time.values
    for index in range(ds.sizes["method_name"]):
        d = ds.isel(method_name=index)
        loss = d.loss.transpose("run", "time").values
        colour = str(d.method_colour.values) if "method_colour" in d.coords else None
        ax.plot(t, np.nanmedian(loss, axis=0), lw=1.5, color=colour,
                label=str(d.method_label.values))
    ax.set_yscale("log")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("training loss (median over runs)")
    ax.legend(fontsize=8)
    ax.set_title("Loss: saddle-to-saddle plateaus")
    fig.tight_layout()
    return fig


def experiment_figures(ds: xr.Dataset) -> dict:
    return {"amplitudes": amplitude_figure(ds), "diffusion": diffusion_figure(ds),
            "loss": loss_figure(ds)}

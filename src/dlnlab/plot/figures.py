"""Figures of ``dlnlab run``: mode amplitudes, modewise diffusion, loss and, with label noise,
the end-of-training law against the stationary one (simulation solid, theory dashed).

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state, no backend switch): they draw
the dataset's variables only, theory overlays included (``theory_*``, written by
``dlnlab.experiments.run.theory_overlays``); nothing here evaluates theory. Titles and legends are
derived from the dataset (label noise, predicted peaks, reachable modes), never from the default
experiment. Dataset layout: ``docs/results.md``; formulas: ``docs/theory.md`` (§6 the
aligned-balanced diffusion, §7 gradient flow, §8 the diffusion peak, §9 the stationary law).

Variables read: ``amplitude``, ``diffusion`` ``(method_name, run, time, mode)``, ``loss``
``(method_name, run, time)``, ``spectrum`` ``(mode,)``, ``method_label``/``method_colour``
(coordinates on ``method_name``), and when present: ``theory_gf_amplitude`` and
``theory_gf_amplitude_aligned`` ``(time, mode)`` (their ``long_name`` attribute labels them),
``theory_peak_amplitude``, ``theory_reachable``, ``theory_stationary_mean``,
``theory_stationary_variance`` ``(mode,)``, ``theory_diffusion_formula``
``(mode, normalised_amplitude)``, ``theory_stationary_density`` ``(mode, amplitude_grid)``,
``status`` ``(method_name, run)`` and the attribute ``label_noise``.
"""

from __future__ import annotations

import math
import warnings

import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

TIME_LABEL = "t = step × learning rate"
UNREACHABLE_COLOUR = "0.6"
#: Fraction of the horizon, at its end, whose records form the end-of-training histogram.
END_WINDOW = 0.2

__all__ = ["END_WINDOW", "TIME_LABEL", "amplitude_figure", "diffusion_figure", "diffusion_scale",
           "end_of_training_amplitudes", "experiment_figures", "loss_figure", "reachable",
           "stationary_figure", "stationary_modes"]


def _colours() -> list[str]:
    return mpl.rcParams["axes.prop_cycle"].by_key()["color"]


def _live_modes(ds: xr.Dataset) -> list[int]:
    """Positions of the teacher's modes (``s > 0``)."""
    return [int(a) for a in np.flatnonzero(ds.spectrum.values > 0)]


def _mode_number(ds: xr.Dataset, a: int) -> int:
    """The figures' number of the mode at position ``a`` (the ``mode`` coordinate, 1..r)."""
    return int(ds.mode.values[a]) if "mode" in ds.coords else a + 1


def reachable(ds: xr.Dataset) -> np.ndarray:
    """Per mode: can the network learn it (``theory_reachable``; all True when absent)."""
    if "theory_reachable" in ds:
        return np.asarray(ds.theory_reachable.values, dtype=bool)
    return np.ones(ds.sizes["mode"], dtype=bool)


def _label_noise(ds: xr.Dataset) -> float:
    try:
        return float(ds.attrs.get("label_noise", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _mode_style(ds: xr.Dataset, i: int, a: int) -> tuple[str, str]:
    """Colour and legend label of the mode at position ``a`` (the ``i``-th live one)."""
    s = float(ds.spectrum.values[a])
    label = f"mode {_mode_number(ds, a)} (s={s:.3g})"
    if not reachable(ds)[a]:
        return UNREACHABLE_COLOUR, label + ": unreachable (narrowest width)"
    colours = _colours()
    return colours[i % len(colours)], label


def _grid(n: int, *, sharex: bool = True, min_width: float = 0.0):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(4.6 * cols, min_width), 3.5 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=sharex)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.tick_params(labelbottom=True)
    return fig, list(axes.flat[:n])


def _percentiles(x: np.ndarray, q: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(x, q, axis=0)


def _curve_label(ds: xr.Dataset, name: str, default: str) -> str:
    return str(ds[name].attrs.get("long_name", default))


def amplitude_figure(ds: xr.Dataset):
    """Mode amplitudes ``a_a = u_a^T W v_a`` over time ``t`` per method: median over runs (line)
    and 10-90% band; the gradient-flow overlay ``theory_gf_amplitude`` (dashed: from the effective
    start fitted to the runs when the dataset has one, else aligned from the mean ``|a(0)|``) and,
    when present, ``theory_gf_amplitude_aligned`` (dash-dotted: aligned, balanced start at the mean
    ``|a(0)|``, docs/theory.md §7); ``s`` dotted. Unreachable modes (``theory_reachable`` False:
    more modes than the narrowest width) are grey, without theory."""
    modes = _live_modes(ds)
    ok = reachable(ds)
    fig, axes = _grid(ds.sizes["method_name"])
    t = ds.time.values
    effective = ds.get("theory_gf_amplitude")
    aligned = ds.get("theory_gf_amplitude_aligned")
    for index, ax in enumerate(axes):
        d = ds.isel(method_name=index)
        for i, a in enumerate(modes):
            c, label = _mode_style(ds, i, a)
            amp = d.amplitude.isel(mode=a).transpose("run", "time").values.astype(np.float64)
            ax.fill_between(t, _percentiles(amp, 10), _percentiles(amp, 90), color=c, alpha=0.2,
                            lw=0)
            ax.plot(t, _percentiles(amp, 50), color=c, lw=1.6, label=label)
            if ok[a]:
                if effective is not None:
                    ax.plot(t, effective.isel(mode=a).values, color=c, ls="--", lw=1.1)
                if aligned is not None:
                    ax.plot(t, aligned.isel(mode=a).values, color=c, ls="-.", lw=1.0)
            ax.axhline(ds.spectrum.values[a], color=c, ls=":", lw=0.8)
        ax.set_title(str(d.method_label.values))
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel("mode amplitude $a_\\alpha = u_\\alpha^T W v_\\alpha$")
    if effective is not None:
        default = ("gradient flow, aligned, from mean $|a_\\alpha(0)|$" if aligned is None
                   else "gradient flow, effective start")
        axes[0].plot([], [], "k--", lw=1.1, label=_curve_label(ds, "theory_gf_amplitude", default))
    if aligned is not None:
        axes[0].plot([], [], "k-.", lw=1.0, label=_curve_label(
            ds, "theory_gf_amplitude_aligned", "gradient flow, aligned, from mean $|a_\\alpha(0)|$"))
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Mode amplitudes ({ds.sizes['run']} runs: median and 10–90% band; "
                 "theory dashed)")
    fig.tight_layout()
    return fig


def diffusion_scale(ds: xr.Dataset, a: int) -> float:
    """The per-mode scale of the diffusion figure: the maximum over ``a / s`` of the
    aligned-balanced formula (``theory_diffusion_formula``), or, where the formula is not
    available (correlated inputs, a data set), the largest simulated ``D_a`` over methods, runs
    and times. 1 when neither is positive and finite."""
    formula = ds.get("theory_diffusion_formula")
    if formula is not None:
        values = formula.isel(mode=a).values
        if np.any(np.isfinite(values)) and np.nanmax(values) > 0:
            return float(np.nanmax(values))
    observed = ds.diffusion.isel(mode=a).values
    if np.any(np.isfinite(observed)) and np.nanmax(observed) > 0:
        return float(np.nanmax(observed))
    return 1.0


def _diffusion_title(ds: xr.Dataset, modes: list[int]) -> str:
    peak = ds.get("theory_peak_amplitude")
    with_peak = [] if peak is None else [a for a in modes if np.isfinite(peak.values[a])]
    sigma = _label_noise(ds)
    parts = ["Modewise diffusion against $a/s$, scaled per mode"]
    if with_peak and len(with_peak) == len(modes):
        parts.append("the formula peaks (dotted) before each mode is learned")
    elif with_peak:
        numbers = ", ".join(str(_mode_number(ds, a)) for a in with_peak)
        parts.append(f"predicted peak (dotted) for mode {numbers} only")
    else:
        parts.append("no interior peak predicted")
    if sigma > 0:
        parts.append(f"label noise σ = {sigma:.3g} keeps $D_\\alpha$ > 0 at $a = s$")
    return "; ".join(parts)


def diffusion_figure(ds: xr.Dataset, max_runs: int = 12):
    """Exact modewise diffusion ``D_a`` against the normalised amplitude ``a / s``, one thin line
    per run (runs learn at different times, so per-run paths, not medians), each mode divided by
    :func:`diffusion_scale` (``D`` scales like ``s^(4-4/L)``: on one linear axis the small modes
    would be invisible), the dataset's ``theory_diffusion_formula`` (the aligned-balanced ``D(a)``
    of docs/theory.md §6, dashed) and the predicted peak amplitude (``theory_peak_amplitude``,
    §8, dotted). Unreachable modes are grey."""
    modes = _live_modes(ds)
    ok = reachable(ds)
    fig, axes = _grid(ds.sizes["method_name"])
    formula = ds.get("theory_diffusion_formula")
    peak = ds.get("theory_peak_amplitude")
    scales = {a: diffusion_scale(ds, a) for a in modes}
    by_formula = formula is not None and all(
        np.any(np.isfinite(formula.isel(mode=a).values)) for a in modes)
    y_label = ("$D_\\alpha$ / (max of the formula for mode $\\alpha$)" if by_formula
               else "$D_\\alpha$ / (largest $D_\\alpha$ of mode $\\alpha$)")
    top = 1.25
    x_high = 1.1
    for index, ax in enumerate(axes):
        d = ds.isel(method_name=index)
        for i, a in enumerate(modes):
            c, label = _mode_style(ds, i, a)
            s = float(ds.spectrum.values[a])
            amp = d.amplitude.isel(mode=a).transpose("run", "time").values / s
            diff = d.diffusion.isel(mode=a).transpose("run", "time").values / scales[a]
            for run in range(min(max_runs, amp.shape[0])):
                ax.plot(amp[run], diff[run], color=c, lw=0.7, alpha=0.4,
                        label=label if run == 0 else None)
            finite = amp[np.isfinite(amp)]
            if finite.size:
                x_high = max(x_high, min(float(np.percentile(finite, 99)) + 0.05, 2.0))
            if not ok[a]:
                continue
            if formula is not None and np.any(np.isfinite(formula.isel(mode=a).values)):
                ax.plot(ds.normalised_amplitude.values, formula.isel(mode=a).values / scales[a],
                        color=c, ls="--", lw=1.3)
            if peak is not None and np.isfinite(peak.values[a]):
                ax.axvline(float(peak.values[a]) / s, color=c, ls=":", lw=1.2)
        ax.set_title(str(d.method_label.values))
        ax.set_xlabel("normalised amplitude $a_\\alpha / s_\\alpha$")
        ax.set_ylabel(y_label)
    for ax in axes:
        ax.set_xlim(-0.05, x_high)
        low, high = ax.get_ylim()
        ax.set_ylim(-0.03, max(top, min(high, 3.0)))
    axes[0].plot([], [], "k--", lw=1.3, label="aligned-balanced formula (docs/theory.md §6)")
    if peak is not None and np.any(np.isfinite(peak.values[modes])):
        axes[0].plot([], [], "k:", lw=1.2, label="predicted peak (docs/theory.md §8)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(_diffusion_title(ds, modes) + " (thin: runs)", fontsize=10)
    fig.tight_layout()
    return fig


def loss_figure(ds: xr.Dataset):
    """Training loss over time, median over runs per method (log scale)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    t = ds.time.values
    for index in range(ds.sizes["method_name"]):
        d = ds.isel(method_name=index)
        loss = d.loss.transpose("run", "time").values.astype(np.float64)
        colour = str(d.method_colour.values) if "method_colour" in d.coords else None
        ax.plot(t, _percentiles(loss, 50), lw=1.5, color=colour, label=str(d.method_label.values))
    ax.set_yscale("log")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("training loss (median over runs)")
    ax.legend(fontsize=8)
    sigma = _label_noise(ds)
    ax.set_title("Training loss" + (f" (label noise σ = {sigma:.3g}: the loss keeps its noise "
                                    "floor)" if sigma > 0 else ""), fontsize=10)
    fig.tight_layout()
    return fig


def stationary_modes(ds: xr.Dataset) -> list[int]:
    """Positions of the reachable teacher modes with a finite stationary law in the dataset
    (``theory_stationary_mean`` and ``theory_stationary_variance`` finite, the variance > 0)."""
    if "theory_stationary_mean" not in ds or "theory_stationary_variance" not in ds:
        return []
    mean = ds.theory_stationary_mean.values
    var = ds.theory_stationary_variance.values
    ok = reachable(ds)
    return [a for a in _live_modes(ds)
            if ok[a] and np.isfinite(mean[a]) and np.isfinite(var[a]) and var[a] > 0]


def end_of_training_amplitudes(ds: xr.Dataset, method: int, a: int,
                               window: float = END_WINDOW) -> np.ndarray:
    """Amplitudes of mode position ``a`` of method position ``method`` at every record with
    ``t >= (1 - window) * horizon``, pooled over the runs that did not diverge; 1-D, finite."""
    d = ds.isel(method_name=method)
    t = ds.time.values
    late = t >= (1.0 - window) * t[-1]
    amp = d.amplitude.isel(mode=a).transpose("run", "time").values[:, late]
    if "status" in d:
        amp = amp[np.asarray(d.status.values) != "diverged"]
    amp = amp.ravel().astype(np.float64)
    return amp[np.isfinite(amp)]


def stationary_figure(ds: xr.Dataset, window: float = END_WINDOW):
    """End-of-training law of each mode against the stationary law (docs/theory.md §9).

    One panel per mode with a finite stationary law (:func:`stationary_modes`): per method the
    histogram (density) of ``a_a`` over the runs and the records of the last ``window`` of the
    horizon (records of one run are correlated; runs are independent); the stationary density
    ``theory_stationary_density`` (dashed) when the dataset has it, else the Gaussian with
    ``theory_stationary_mean`` and ``theory_stationary_variance``; the stationary mean
    (dash-dotted) and ``s`` (dotted). Raises ``ValueError`` when no mode has a stationary law.
    """
    modes = stationary_modes(ds)
    if not modes:
        raise ValueError("theory_stationary_mean=all NaN: no mode has a finite stationary law "
                         "(it needs label noise > 0 on whitened, online inputs)")
    fig, axes = _grid(len(modes), sharex=False, min_width=7.0)
    t = ds.time.values
    t0 = (1.0 - window) * t[-1]
    density = ds.get("theory_stationary_density")
    colours = _colours()
    for ax, a in zip(axes, modes, strict=True):
        s = float(ds.spectrum.values[a])
        mean = float(ds.theory_stationary_mean.values[a])
        sd = math.sqrt(float(ds.theory_stationary_variance.values[a]))
        samples = [end_of_training_amplitudes(ds, m, a, window) for m in range(ds.sizes["method_name"])]
        pooled = np.concatenate(samples)
        low, high = mean - 5 * sd, mean + 5 * sd
        if pooled.size:
            low = min(low, float(np.percentile(pooled, 0.5)))
            high = max(high, float(np.percentile(pooled, 99.5)))
        bins = np.linspace(low, high, 41)
        for m, values in enumerate(samples):
            d = ds.isel(method_name=m)
            colour = str(d.method_colour.values) if "method_colour" in d.coords else colours[m]
            if values.size:
                ax.hist(values, bins=bins, density=True, histtype="step", lw=1.4, color=colour,
                        label=f"{d.method_label.values} (mean {values.mean():.4g}, "
                              f"sd {values.std():.3g})")
        if density is not None and np.any(np.isfinite(density.isel(mode=a).values)):
            grid_name = [dim for dim in density.dims if dim != "mode"][0]
            ax.plot(ds[grid_name].values, density.isel(mode=a).values, "k--", lw=1.4,
                    label="stationary law (docs/theory.md §9)")
        else:
            x = np.linspace(low, high, 400)
            ax.plot(x, np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
                    "k--", lw=1.4,
                    label=f"Gaussian, stationary mean {mean:.4g}, sd {sd:.3g} (§9)")
        ax.axvline(mean, color="k", ls="-.", lw=0.9)
        ax.axvline(s, color="k", ls=":", lw=0.9, label=f"s = {s:.3g}")
        ax.set_xlim(low, high)
        ax.set_xlabel(f"mode amplitude $a_{{{_mode_number(ds, a)}}}$")
        ax.set_ylabel("density")
        ax.set_title(f"mode {_mode_number(ds, a)}")
        ax.legend(fontsize=7, loc="upper left")
    sigma = _label_noise(ds)
    noise = f"label noise σ = {sigma:.3g}, " if sigma > 0 else ""
    fig.suptitle(f"End-of-training law against the stationary law\n({noise}records with "
                 f"t ≥ {t0:.3g}, {ds.sizes['run']} runs)", fontsize=10)
    fig.tight_layout()
    return fig


def experiment_figures(ds: xr.Dataset) -> dict:
    """``{name: Figure}`` of a run: ``amplitudes``, ``diffusion``, ``loss``, and ``stationary``
    when some mode has a finite stationary law (label noise)."""
    figures = {"amplitudes": amplitude_figure(ds), "diffusion": diffusion_figure(ds),
               "loss": loss_figure(ds)}
    if stationary_modes(ds):
        figures["stationary"] = stationary_figure(ds)
    return figures

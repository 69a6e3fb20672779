"""Figures of the learning coefficient along training (docs/llc.md, "Along training"), drawn from
the dataset of :func:`dlnlab.llc.training.learning_coefficient_along_training` only.

Variables read: ``training_loss`` ``(method_name, run, record_time)``, ``learning_coefficient`` and
``learning_coefficient_standard_error``, ``exact_truncation_coefficient``, ``rank_learned``,
``mean_acceptance``, ``flagged_chains``, ``chains_used``, ``escape_reference`` (optional)
``(method_name, run, checkpoint)``, the coordinates ``time`` ``(checkpoint)``, ``record_time``,
``method_label``, ``method_colour`` and the attrs ``widths``, ``num_samples``,
``inverse_temperature``, ``sampler_*``, ``true_parameter_coefficient``. No theory is computed
here.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .panels import COLORS, TIME_LABEL, new_figure

SYMLOG_THRESHOLD = 100.0
"""The coefficient axis is linear within +-this and logarithmic beyond: the estimates at saddles
can be thousands below zero while the exact values are tens."""


def _colour(ds: xr.Dataset, index: int) -> str:
    if "method_colour" in ds.coords:
        return str(ds.method_colour.values[index])
    return COLORS[index % len(COLORS)]


def _label(ds: xr.Dataset, index: int) -> str:
    if "method_label" in ds.coords:
        return str(ds.method_label.values[index])
    return str(ds.method_name.values[index])


def _widths(ds: xr.Dataset) -> str:
    """The ``widths`` attribute (a list, or its JSON text after a NetCDF round trip)."""
    widths = ds.attrs.get("widths", [])
    if isinstance(widths, str):
        widths = json.loads(widths)
    return ",".join(str(int(w)) for w in np.atleast_1d(widths))


def _symlog_ticks(low: float, high: float) -> list[float]:
    """Readable ticks of a symlog axis from ``low`` to ``high``: -10^k below -threshold, steps
    of 50 inside +-threshold, 10^k above."""
    ticks = [0.0]
    k = 2
    while -(10.0 ** k) >= low * 1.0001 and k < 12:
        ticks.append(-(10.0 ** k))
        k += 1
    ticks += [x for x in (-50.0, 50.0) if low <= x <= high]
    k = 2
    while 10.0 ** k <= high and k < 12:
        ticks.append(10.0 ** k)
        k += 1
    return sorted(ticks)


def along_training_figure(ds: xr.Dataset) -> Figure:
    """(a) training loss against t per method (every run, log scale); (b) the estimated local
    learning coefficient at each checkpoint (every run, error bars: the chains' standard error;
    line: median over runs) and the exact coefficient of the rank-r truncation of the teacher for
    the modes each run has learned (step lines), labelled as the conjecture it tests, on a symlog
    axis; (c) the same on a linear axis around the exact values (estimates below it counted)."""
    methods = ds.sizes["method_name"]
    runs = ds.sizes["run"]
    fig, (ax_loss, ax_llc, ax_zoom) = new_figure(1, 3, figsize=(17.5, 5.0),
                                                 gridspec_kw={"width_ratios": [1.0, 1.15, 1.0]})
    t_record = ds.record_time.values
    t = ds.time.values
    offsets = (np.arange(methods) - (methods - 1) / 2) * 0.006 * float(t.max() - t.min() or 1.0)
    exact_all = ds.exact_truncation_coefficient.values
    estimate_all = ds.learning_coefficient.values
    top = 1.2 * float(np.nanmax(np.concatenate([exact_all.ravel(), estimate_all.ravel(), [1.0]])))
    below = int(np.sum(estimate_all < 0))
    for i in range(methods):
        colour, label = _colour(ds, i), _label(ds, i)
        d = ds.isel(method_name=i)
        loss = d.training_loss.transpose("run", "record_time").values
        for r in range(runs):
            ax_loss.plot(t_record, loss[r], color=colour, lw=1.0, alpha=0.6,
                         label=f"{label} ({runs} runs)" if r == 0 else None)
        estimate = d.learning_coefficient.transpose("run", "checkpoint").values
        error = np.nan_to_num(d.learning_coefficient_standard_error.transpose("run", "checkpoint").values)
        exact = d.exact_truncation_coefficient.transpose("run", "checkpoint").values
        with np.errstate(all="ignore"):
            median = np.nanmedian(np.where(np.isfinite(estimate), estimate, np.nan), axis=0)
        for ax in (ax_llc, ax_zoom):
            for r in range(runs):
                ax.errorbar(t + offsets[i], estimate[r], yerr=error[r], fmt="o", ms=3, color=colour,
                            alpha=0.55, elinewidth=1.0, capsize=2, lw=0)
                ax.step(t, exact[r], where="post", color=colour, lw=1.2, ls="--", alpha=0.8,
                        label=(f"{label}: exact λ, rank-r truncation (r learned)" if r == 0 else None))
            ax.plot(t + offsets[i], median, color=colour, lw=1.6,
                    label=f"{label}: estimate, median of {runs} runs (bars: chains' SE)")
        if "escape_reference" in d:
            with np.errstate(all="ignore"):
                reference = np.nanmedian(d.escape_reference.transpose("run", "checkpoint").values,
                                         axis=0)
            ax_llc.plot(t, reference, color="0.25", lw=1.0, ls="-.", marker="x", ms=4,
                        label=("λ(true) − nβ (L(w0) − min L): chains escaped to the global minimum "
                               "(median)") if i == 0 else None)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel(TIME_LABEL)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("(a) training loss", fontsize=10)
    ax_loss.legend(fontsize=8)
    true_value = ds.attrs.get("true_parameter_coefficient")
    for ax in (ax_llc, ax_zoom):
        ax.axhline(0.0, color="0.6", lw=0.8)
        if true_value is not None and np.isfinite(true_value):
            ax.axhline(float(true_value), color="0.3", lw=0.8, ls=":",
                       label=f"exact λ at the true parameter = {float(true_value):g}")
        ax.set_xlabel(TIME_LABEL)
    ax_llc.set_yscale("symlog", linthresh=SYMLOG_THRESHOLD)
    low = float(np.nanmin(np.concatenate([estimate_all.ravel(), [0.0]])))
    if low < -SYMLOG_THRESHOLD:     # down to the next power of ten, so the lowest tick is labelled
        low = -(10.0 ** np.ceil(np.log10(-low)))
    ax_llc.set_yticks(_symlog_ticks(low, top))
    ax_llc.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
    ax_llc.set_ylim(min(low * 1.15, -1.0), top)
    ax_llc.set_ylabel(f"local learning coefficient (symlog: linear within ±{SYMLOG_THRESHOLD:g})")
    ax_llc.set_title("(b) estimate vs conjecture: plateau near rank-r truncation", fontsize=10)
    ax_llc.legend(fontsize=7, loc="lower right")
    ax_zoom.set_ylim(0.0, top)
    ax_zoom.set_ylabel("local learning coefficient")
    ax_zoom.set_title(f"(c) zoom near the exact values ({below} of {estimate_all.size} estimates "
                      "are below 0)", fontsize=10)
    flagged = int(np.sum(ds.flagged_chains.values))
    total = int(np.sum(ds.chains_used.values))
    acceptance = ds.mean_acceptance.values
    acceptance_text = (f"mean acceptance {np.nanmin(acceptance):.2f}-{np.nanmax(acceptance):.2f}"
                       if np.isfinite(acceptance).any() else "no acceptance")
    widths = _widths(ds)
    fig.suptitle(
        f"Local learning coefficient along training (test of a conjecture); widths ({widths}), "
        f"n = {ds.attrs.get('num_samples')}, nβ = {float(ds.attrs.get('inverse_temperature', np.nan)):.0f}, "
        f"ε = {ds.attrs.get('sampler_step_size')}, γ = {ds.attrs.get('sampler_localisation')}, "
        f"{ds.attrs.get('sampler_num_chains')} chains × {ds.attrs.get('sampler_num_burnin_steps')} "
        f"burn-in + {ds.attrs.get('sampler_num_draws')} draws\n"
        f"{ds.sizes['checkpoint']} checkpoints × {runs} runs × {methods} methods; {acceptance_text}; "
        f"{flagged} of {total} chains flagged (left the localisation region or not stationary)",
        fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ benchmark
BENCHMARK_LOSSES = (("empirical", "empirical loss (minibatch gradients)"),
                    ("population", "population loss (exact gradients)"))


def calibration_figure(ds: xr.Dataset) -> Figure:
    """Calibration of the benchmark (:func:`dlnlab.llc.benchmark.run_benchmark`): per loss, the
    estimate against the exact value (log-log, with the chains' standard error) and the relative
    error against the exact value with the issue's 1%, 5% and 15% lines. Reads ``exact``,
    ``<loss>_estimate``, ``<loss>_standard_error``, ``<loss>_relative_error`` and ``size_class``
    ``(network)``."""
    losses = [(name, label) for name, label in BENCHMARK_LOSSES if f"{name}_estimate" in ds]
    fig, axes = new_figure(2, len(losses), figsize=(5.2 * len(losses), 8.4), squeeze=False)
    classes = list(dict.fromkeys(str(c) for c in ds.size_class.values))
    exact = np.asarray(ds.exact.values, dtype=float)
    for column, (name, label) in enumerate(losses):
        top, bottom = axes[0, column], axes[1, column]
        estimate = np.asarray(ds[f"{name}_estimate"].values, dtype=float)
        error = np.asarray(ds[f"{name}_standard_error"].values, dtype=float)
        relative = np.asarray(ds[f"{name}_relative_error"].values, dtype=float)
        for index, size_class in enumerate(classes):
            chosen = np.asarray(ds.size_class.values == size_class)
            colour = COLORS[index % len(COLORS)]
            count = int(chosen.sum())
            top.errorbar(exact[chosen], estimate[chosen], yerr=error[chosen], fmt="o", ms=4,
                         color=colour, label=f"{size_class} ({count} networks)", alpha=0.85)
            bottom.errorbar(exact[chosen], 100 * relative[chosen],
                            yerr=100 * error[chosen] / exact[chosen], fmt="o", ms=4, color=colour,
                            alpha=0.85)
        finite = np.concatenate([exact, estimate[np.isfinite(estimate) & (estimate > 0)]])
        low, high = finite.min() / 1.3, finite.max() * 1.3
        line = np.geomspace(low, high, 50)
        top.plot(line, line, color="black", lw=1, label="estimate = exact")
        top.fill_between(line, 0.95 * line, 1.05 * line, color="grey", alpha=0.2, label="±5%")
        top.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high),
                xlabel="exact learning coefficient λ (Aoyagi 2024)", ylabel="SGLD estimate λ̂",
                title=label)
        top.legend(fontsize=8, loc="upper left")
        reach = np.abs(100 * relative) + np.nan_to_num(100 * error / exact)
        span = max(2.0, 1.15 * float(np.nanmax(reach))) if np.isfinite(reach).any() else 2.0
        for level, style in ((1, ":"), (5, "--"), (15, "-.")):
            if level > span:
                continue
            for sign in (1, -1):
                bottom.axhline(sign * level, color="grey", lw=0.8, ls=style,
                               label=f"±{level}%" if sign > 0 else None)
        bottom.axhline(0, color="black", lw=0.8)
        bottom.set(xscale="log", xlim=(exact.min() / 1.3, exact.max() * 1.3),
                   xlabel="exact learning coefficient λ",
                   ylabel="relative error (λ̂ − λ)/λ (%)", ylim=(-span, span))
        bottom.legend(fontsize=8, loc="best", ncol=3)
    fig.tight_layout()
    return fig

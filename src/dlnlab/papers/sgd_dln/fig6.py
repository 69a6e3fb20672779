"""fig6: cross modes over training (alignment, App. I.1), for SGD and the anisotropic SDE of the
main experiment (shared with fig2 and fig3)."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...analysis.events import crossing_times, learning_events
from ...analysis.stats import censored_median
from ...analysis.summaries import teacher_rank, training_parameters
from ...experiments.study import Study
from ...plot.panels import COLORS, TIME_LABEL, new_figure
from . import main_run
from .config import CROSS_TOL, METHOD_NAMES

experiments = main_run.experiments


def analyse(data):
    raw = data["main"]
    k = teacher_rank(raw)
    sub = raw.isel(method_name=[i for i, m in enumerate(raw.method_name.values) if m in ("sgd", "sde")])
    cross = np.abs(sub.cross_amplitude.transpose("method_name", "run", "time", "mode", "mode2").values)
    r = cross.shape[-1]
    teacher = cross[..., :k, :k]
    pairs = [(a, b) for a in range(k) for b in range(k) if a != b]
    pair_values = np.stack([teacher[..., a, b] for a, b in pairs], axis=-1)
    other = np.where((np.arange(r)[:, None] >= k) | (np.arange(r)[None, :] >= k), cross, 0.0)
    other = np.where(np.eye(r, dtype=bool), 0.0, other).max(axis=(-1, -2))
    events = learning_events(sub, modes=k)
    t = raw.time.values
    start = crossing_times(t, sub.amplitude.isel(mode=slice(0, k)).transpose(
        "method_name", "run", "mode", "time").values, 0.1 * raw.spectrum.values[:k])
    out = xr.Dataset({
        "abs_cross": (("method_name", "run", "time", "pair"), pair_values),
        "abs_cross_other_max": (("method_name", "run", "time"), other),
        "t_10": (("method_name", "run", "mode"), start),
        "t_90": events.t_90.transpose("method_name", "run", "mode"),
        "spectrum": raw.spectrum.isel(mode=slice(0, k)),
        "method_label": sub.method_label,
    }, coords={"method_name": sub.method_name.values, "run": raw.run.values, "time": t,
               "pair": [f"{a + 1}-{b + 1}" for a, b in pairs]})
    out.attrs.update(training_parameters(raw))
    return out


def _km_median(x, horizon) -> float:
    """Kaplan-Meier median of event times ``x`` censored at ``horizon``; NaN if not reached."""
    median = censored_median(np.asarray(x), horizon)["median"]
    return math.nan if median is None else median


def transition_mask(d: xr.Dataset) -> np.ndarray:
    """Times inside any mode's transition window [median t(0.1 s), median t(0.9 s)]
    (Kaplan-Meier medians over runs, censored at the horizon; a window whose end is not reached
    runs to the horizon, one whose start is not reached is empty)."""
    t = d.time.values
    horizon = float(t[-1])
    mask = np.zeros(t.size, dtype=bool)
    for i in range(d.sizes["mode"]):
        lo = _km_median(d.t_10.isel(mode=i).values, horizon)
        hi = _km_median(d.t_90.isel(mode=i).values, horizon)
        if np.isfinite(lo):
            mask |= (t >= lo) & (t <= (hi if np.isfinite(hi) else horizon))
    return mask


def numbers(ds):
    rows = []
    for m in ds.method_name.values:
        d = ds.sel(method_name=str(m))
        inside = transition_mask(d)
        med = d.abs_cross.median("run").transpose("time", "pair").values
        other = d.abs_cross_other_max.median("run").values
        for j, pair in enumerate([str(p) for p in ds.pair.values] + ["other (max)"]):
            series = med[:, j] if j < med.shape[1] else other
            rows.append({"method": str(m), "pair": pair,
                         "max_median_inside_transitions": float(np.max(series[inside]))
                         if inside.any() else math.nan,
                         "max_median_outside_transitions": float(np.max(series[~inside]))
                         if (~inside).any() else math.nan,
                         "time_of_max": float(d.time.values[int(np.argmax(series))])})
    return rows


def cross_mode_summary(ds, method="sgd") -> dict:
    """Fraction of the horizon in which every teacher cross mode (median over runs) is below
    ``CROSS_TOL`` times the smallest ``s``; the largest one, its pair and time."""
    d = ds.sel(method_name=method)
    med = d.abs_cross.median("run").transpose("time", "pair").values
    s_min = float(ds.spectrum.values.min())
    small = np.all(med <= CROSS_TOL * s_min, axis=1)
    t_i, p_i = np.unravel_index(int(np.nanargmax(med)), med.shape)
    return {"fraction_small": float(np.mean(small)), "threshold": CROSS_TOL * s_min,
            "largest": float(med[t_i, p_i]), "largest_pair": str(ds.pair.values[p_i]),
            "largest_time": float(ds.time.values[t_i]),
            "largest_in_transition": bool(transition_mask(d)[t_i]),
            "first_start": _km_median(d.t_10.isel(mode=0).values, float(d.time.values[-1])),
            "last_end": _km_median(d.t_90.isel(mode=-1).values, float(d.time.values[-1]))}


def claims(ds):
    c = cross_mode_summary(ds)
    measured = (f"SGD, median over runs of |u_a^T W v_b| over the teacher's modes: below "
                f"{c['threshold']:.3g} ({CROSS_TOL:.0%} of the smallest s) during "
                f"{c['fraction_small']:.0%} of the horizon; largest {c['largest']:.3g} "
                f"({c['largest'] / float(ds.spectrum.values[0]):.1%} of s_1) for pair "
                f"{c['largest_pair']} at t = {c['largest_time']:.3g} (modes are learned between "
                f"t = {c['first_start']:.3g} and {c['last_end']:.3g})")
    ok = c["fraction_small"] >= 0.5
    return [claim_row("fig6-cross-modes", "Cross modes are negligible for most of training and "
                      "peak only while modes are learned (largest for the pair of the first two "
                      "modes).", "App. I.1, Fig. 6", "fig6", measured, c,
                      f"below {CROSS_TOL:.0%} of the smallest s for at least half of the horizon",
                      "supported" if ok else "refuted")]


def figure(ds):
    methods = [str(m) for m in ds.method_name.values]
    fig, axes = new_figure(1, len(methods), figsize=(6 * len(methods), 4.4), sharey=True)
    t = ds.time.values
    for ax, m in zip(np.atleast_1d(axes), methods, strict=True):
        d = ds.isel(method_name=methods.index(m))
        mask = transition_mask(d)
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


STUDY = Study("fig6", "Cross modes over training (alignment)", "Fig. 6, App. I.1",
              experiments, analyse, numbers, claims, figure)

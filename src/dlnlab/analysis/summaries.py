"""Summaries of run datasets that several studies share: one method of a run dataset, the
teacher's rank, the learning events of its modes, the deviation of the exact modewise diffusion
from the reduced formula while a mode is in transit, and the diffusion-peak table. Medians of
times to an event are Kaplan-Meier medians (runs without the event censored at the horizon).

Every function reads named variables of an ``xarray.Dataset`` (``amplitude``, ``diffusion``,
``reduced_diffusion``, ``spectrum``, ``theory_peak_amplitude``, the events of
:func:`~dlnlab.analysis.events.learning_events`) and returns plain numbers or a dataset.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .events import learning_events
from .stats import censored_median, finite_median, wilson_interval

TRAINING_PARAMETERS = ("learning_rate", "batch_size", "label_noise", "depth")


def teacher_rank(ds: xr.Dataset) -> int:
    """Number of teacher modes (``s > 0``)."""
    return int(np.sum(ds.spectrum.values > 0))


def training_parameters(ds: xr.Dataset) -> dict:
    """The training parameters a run dataset records in its attributes (those present of
    ``learning_rate``, ``batch_size``, ``label_noise``, ``depth``)."""
    return {k: ds.attrs[k] for k in TRAINING_PARAMETERS if k in ds.attrs}


def with_events(ds: xr.Dataset, modes: int) -> xr.Dataset:
    """Keep the first ``modes`` modes and add the per-run learning events (``t_half``, ``t_90``,
    ``t_peak``, ``a_at_peak``, ``d_peak``, ``t_cross_peak``)."""
    out = ds.isel(mode=slice(0, modes))
    return out.merge(learning_events(ds, modes=modes))


def transit_deviation(ds: xr.Dataset) -> xr.DataArray:
    """Median over the records with ``0.1 s <= a <= 0.9 s`` of ``|D - D_formula| / D_formula``
    per mode (the formula evaluated at the run's own amplitudes: ``reduced_diffusion``)."""
    s = ds.spectrum
    rel = np.abs(ds.diffusion - ds.reduced_diffusion) / ds.reduced_diffusion
    transit = (ds.amplitude >= 0.1 * s) & (ds.amplitude <= 0.9 * s)
    dims = [d for d in rel.dims if d not in ("mode",) and d in ("run", "time")]
    return rel.where(transit).median(dim=dims)


def km_median(times, horizon: float) -> float:
    """Kaplan-Meier median of per-run event times (NaN: not reached, censored at ``horizon``)
    as a float, NaN when not identified (:func:`~dlnlab.analysis.stats.censored_median`)."""
    median = censored_median(times, horizon)["median"]
    return np.nan if median is None else median


def peak_rows(ds: xr.Dataset, label: str) -> list[dict]:
    """Per mode of one method's events (dims ``run, mode``): where and when the diffusion peaks
    against eq. 9's predicted amplitude, and in which fraction of runs it peaks before ``a``
    reaches ``0.9 s`` (with its 95% Wilson interval).

    Times are Kaplan-Meier medians over all ``runs_total`` runs, a run without the event
    censored at the last record time (NaN: not reached); the observed peak counts as an event
    only for a run that reached ``0.9 s`` (``runs``; ``a_at_peak_median`` is over those runs).
    ``t_90_crossed`` / ``t_cross_peak_crossed``: runs with the event. Times in t = step x
    learning rate."""
    horizon = float(ds.time.values[-1]) if "time" in ds.coords else np.nan
    rows = []
    for i in range(ds.sizes["mode"]):
        m = ds.isel(mode=i)
        before = (m.t_peak < m.t_90).values
        valid = np.isfinite(m.t_peak.values) & np.isfinite(m.t_90.values)
        lo, hi = wilson_interval(int(np.sum(before & valid)), int(np.sum(valid)))
        learned = np.isfinite(m.t_90.values)
        rows.append({
            "method": label, "mode": i + 1, "s": float(m.spectrum),
            "a_peak_predicted": float(m.theory_peak_amplitude),
            "a_at_peak_median": finite_median(np.where(learned, m.a_at_peak.values, np.nan)),
            "t_peak_median": km_median(np.where(learned, m.t_peak.values, np.nan), horizon),
            "t_cross_peak_median": km_median(m.t_cross_peak.values, horizon),
            "t_cross_peak_crossed": int(np.isfinite(m.t_cross_peak.values).sum()),
            "t_90_median": km_median(m.t_90.values, horizon),
            "t_90_crossed": int(learned.sum()),
            "peak_before_90_fraction": (float(np.sum(before & valid)) / max(int(valid.sum()), 1)),
            "peak_before_90_ci95": [lo, hi], "runs": int(valid.sum()),
            "runs_total": int(m.t_90.size),
            "d_peak_median": finite_median(np.where(learned, m.d_peak.values, np.nan)),
        })
    return rows


def peak_rows_with_deviation(ds: xr.Dataset, label: str) -> list[dict]:
    """:func:`peak_rows` plus the median relative deviation from the formula in transit."""
    rows = peak_rows(ds, label)
    for r, dv in zip(rows, transit_deviation(ds).values, strict=True):
        r["transit_relative_deviation_median"] = float(dv)
    return rows

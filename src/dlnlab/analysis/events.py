"""Per-run learning events of a mode: when its amplitude crosses a level, where its modewise
diffusion peaks (docs/theory.md §8: the maximum of ``D_a`` before ``a`` first reaches ``s``), and
how many records the record grid put inside the transition (an event the grid cannot resolve
is flagged, never reported as if it were measured).

A run that never reaches a level within its records has NaN for that event: statistics over
runs treat it as right-censored at the horizon (:func:`dlnlab.analysis.stats.censored_median`)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def crossing_times(times, values, level) -> np.ndarray:
    """First time each series reaches ``level`` (linear interpolation between records).

    ``values`` ``(..., time)``; ``level`` broadcasts against ``values[..., 0]``. NaN where the
    series never reaches it (or is not finite before it does).
    """
    t = np.asarray(times, dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), x.shape[:-1])
    above = x >= level[..., None]
    hit = above.any(axis=-1)
    i = np.argmax(above, axis=-1)
    prev = np.maximum(i - 1, 0)
    x1 = np.take_along_axis(x, i[..., None], -1)[..., 0]
    x0 = np.take_along_axis(x, prev[..., None], -1)[..., 0]
    t1, t0 = t[i], t[prev]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(x1 != x0, (level - x0) / (x1 - x0), 1.0)
    out = np.where(i == 0, t[0], t0 + frac * (t1 - t0))
    return np.where(hit, out, np.nan)


#: Fewest records between ``t(0.1 s)`` and ``t(0.9 s)`` for an event time or amplitude to count
#: as resolved by the record grid (crossing times are interpolated between records; a peak of
#: ``D_a`` needs records on both sides of it inside the transition).
MIN_TRANSITION_RECORDS = 5


def transition_records(times, t_start, t_end) -> np.ndarray:
    """Number of record ``times`` in ``[t_start, t_end]`` (the transition from ``0.1 s`` to
    ``0.9 s``), per run and mode; NaN where either end is NaN (the transition did not complete).
    Fewer than :data:`MIN_TRANSITION_RECORDS` means the grid cannot resolve the events in it."""
    t = np.asarray(times, dtype=np.float64)
    lo = np.asarray(t_start, dtype=np.float64)
    hi = np.asarray(t_end, dtype=np.float64)
    ok = np.isfinite(lo) & np.isfinite(hi)
    count = (np.searchsorted(t, np.where(ok, hi, 0.0), side="right")
             - np.searchsorted(t, np.where(ok, lo, 0.0), side="left"))
    return np.where(ok, count.astype(np.float64), np.nan)


def diffusion_peaks(times, amplitude, diffusion, spectrum):
    """Observed diffusion peak of every run and mode: ``(t_peak, a_at_peak, d_peak)``.

    ``amplitude``, ``diffusion`` ``(..., mode, time)``; ``spectrum`` ``(mode,)``. The peak is the
    maximum of ``D_a`` over the records up to the first one where ``a >= s`` (all records if it
    never gets there); NaN for a mode with ``s = 0`` or a series without finite values.
    """
    t = np.asarray(times, dtype=np.float64)
    a = np.asarray(amplitude, dtype=np.float64)
    d = np.asarray(diffusion, dtype=np.float64)
    s = np.asarray(spectrum, dtype=np.float64)
    reach = a >= s[:, None]
    last = np.where(reach.any(axis=-1), np.argmax(reach, axis=-1), t.size - 1)
    masked = np.where(np.arange(t.size) <= last[..., None], d, -np.inf)
    masked = np.where(np.isfinite(masked), masked, -np.inf)
    k = np.argmax(masked, axis=-1)
    d_peak = np.take_along_axis(masked, k[..., None], -1)[..., 0]
    ok = np.isfinite(d_peak) & (s > 0)
    a_peak = np.take_along_axis(a, k[..., None], -1)[..., 0]
    return (np.where(ok, t[k], np.nan), np.where(ok, a_peak, np.nan), np.where(ok, d_peak, np.nan))


def learning_events(ds: xr.Dataset, modes: int | None = None) -> xr.Dataset:
    """Per-run events of a dataset with ``amplitude``, ``diffusion`` (dims ``..., run, time,
    mode``), ``spectrum`` and ``theory_peak_amplitude``: ``t_10``, ``t_half``, ``t_90`` (first time
    ``a >= 0.1 s`` / ``0.5 s`` / ``0.9 s``; NaN: not reached, censored at the horizon), ``t_peak``,
    ``a_at_peak``, ``d_peak`` (observed diffusion peak), ``t_cross_peak`` (first time ``a``
    reaches the predicted peak amplitude) and ``transition_records`` (records in
    ``[t_10, t_90]``: :func:`transition_records`). ``modes``: keep the first ``modes`` modes
    (default: those with ``s > 0``). Times in t = step x learning rate."""
    s = ds.spectrum.values
    k = int(np.sum(s > 0)) if modes is None else int(modes)
    sub = ds.isel(mode=slice(0, k))
    amp = sub.amplitude.transpose(..., "mode", "time")
    dims = amp.dims[:-1]
    t = ds.time.values
    sk = s[:k]
    a = amp.values
    d = sub.diffusion.transpose(*dims, "time").values
    t_peak, a_peak, d_peak = diffusion_peaks(t, a, d, sk)
    predicted = sub.theory_peak_amplitude.values
    t_10, t_90 = crossing_times(t, a, 0.1 * sk), crossing_times(t, a, 0.9 * sk)
    out = {
        "t_10": (dims, t_10),
        "t_half": (dims, crossing_times(t, a, 0.5 * sk)),
        "t_90": (dims, t_90),
        "t_peak": (dims, t_peak),
        "a_at_peak": (dims, a_peak),
        "d_peak": (dims, d_peak),
        "t_cross_peak": (dims, np.where(np.isfinite(predicted),
                                        crossing_times(t, a, np.nan_to_num(predicted, nan=np.inf)),
                                        np.nan)),
        "transition_records": (dims, transition_records(t, t_10, t_90)),
    }
    coords = {name: amp.coords[name] for name in dims if name in amp.coords}
    return xr.Dataset(out, coords=coords)

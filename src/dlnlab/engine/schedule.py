"""Recording schedules: which steps of a run are observed."""

from __future__ import annotations

import numpy as np

from .. import _validation as v


def record_steps(num_steps: int, *, every: int | None = None, log_points: int | None = None,
                 steps=None, include_start: bool = True) -> np.ndarray:
    """Sorted unique step indices in ``[0, num_steps]`` at which to record.

    Exactly one of: ``every=k`` (``0, k, 2k, ...`` and ``num_steps``), ``log_points=n`` (``n``
    log-spaced steps from 1 to ``num_steps``, rounded and deduplicated, so early times are
    dense), ``steps=[...]`` (given steps). ``include_start`` adds step 0 (the initial state).
    """
    num_steps = v.positive_int("num_steps", num_steps)
    given = [x is not None for x in (every, log_points, steps)]
    if sum(given) != 1:
        v.fail("record", dict(every=every, log_points=log_points, steps=steps),
               "give exactly one of every, log_points, steps")
    if every is not None:
        every = v.positive_int("record.every", every)
        out = np.append(np.arange(every, num_steps + 1, every), num_steps)
    elif log_points is not None:
        log_points = v.positive_int("record.log_points", log_points)
        out = np.round(np.logspace(0, np.log10(num_steps), log_points)).astype(np.int64)
    else:
        out = np.asarray(steps, dtype=np.float64).ravel()
        if out.size == 0 or not np.all(np.isfinite(out)) or np.any(out != np.round(out)):
            v.fail("record.steps", steps, "must be a non-empty list of integer steps")
        if np.any(out < 0) or np.any(out > num_steps):
            v.fail("record.steps", steps, f"must lie in [0, num_steps={num_steps}]")
        out = out.astype(np.int64)
    if include_start:
        out = np.append(out, 0)
    return np.unique(out.astype(np.int64))


def steps_for_times(times, time_step: float, num_steps: int | None = None) -> np.ndarray:
    """Steps ``round(t / h)`` for times ``t``; fails if a time is not on the step grid.

    ``t = step * h`` for every method (docs/theory.md §1), so methods with different ``h`` record at
    the same times when every requested time is a multiple of each ``h``.
    """
    t = np.asarray(times, dtype=np.float64).ravel()
    steps = np.round(t / time_step)
    off = np.abs(steps * time_step - t)
    if np.any(off > 1e-6 * np.maximum(np.abs(t), time_step)):
        bad = t[np.argmax(off)]
        v.fail("record.times", bad, f"is not a multiple of the step h={time_step}")
    if num_steps is not None and np.any(steps > num_steps):
        v.fail("record.times", t.max(), f"exceeds the horizon of {num_steps} steps")
    return steps.astype(np.int64)

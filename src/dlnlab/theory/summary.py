"""One table of per-mode theory numbers (the library call behind ``dlnlab theory``).

Sources: docs/theory.md §7 (gradient flow, rank bottleneck), §8 (diffusion peak), §9 (stationary
law and when it exists).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validation as v
from .gradient_flow import half_learning_time, reachable_modes
from .peak import diffusion_peak
from .stationary import stationary_moments

_STATIONARY_KEYS = ("stationary_mean", "stationary_variance", "stationary_mean_first_order",
                    "stationary_variance_first_order", "stationary_mode")


def _number(x) -> float | None:
    """Plain float for strict JSON; NaN and ``inf`` become ``None`` (the row's note says why)."""
    x = float(x)
    return x if math.isfinite(x) else None


def mode_summary(spectrum, depth: int, learning_rate: float, batch_size: int,
                 label_noise: float, init_amplitude: float, widths=None) -> list[dict]:
    """One row per mode ``s`` (``spectrum`` ``(k,)``, non-increasing, > 0), plain Python values.

    Keys: ``s``; ``reachable`` (bool: mode index < ``min(widths)``, docs/theory.md §7; always
    True when ``widths`` is None); ``t_half`` (gradient-flow time to ``s/2`` from
    ``init_amplitude``, §7); ``a_peak`` (diffusion-peak amplitude or None, §8) and
    ``peak_is_global``; ``stationary_exists`` (bool, §9) and the stationary mean, variance and
    mode by quadrature and first order (§9); ``note`` (a sentence, or None). An unreachable mode
    (width narrower than the teacher's rank) is never learned (its amplitude is 0 at the
    minimum): its ``t_half``, ``a_peak``,
    ``peak_is_global`` and stationary values are None. Where no stationary law exists (depth 2
    with ``(eta/B)(2 s^2 + sigma^2) >= 2 s``) the quadrature values are None. ``widths`` are the
    layer widths ``(d_in, d_1, ..., d_out)``. Raises ``ValueError`` (one line, naming the field).
    """
    depth = v.positive_int("depth", depth)
    batch_size = v.positive_int("batch_size", batch_size)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("label_noise", label_noise, minimum=0.0)
    s = np.asarray(spectrum, dtype=np.float64)
    v.finite_array("spectrum", s)
    if s.ndim != 1 or s.size == 0 or np.any(s <= 0):
        v.fail("spectrum", spectrum, "must list singular values > 0")
    if np.any(np.diff(s) > 0):
        v.fail("spectrum", spectrum, "must be non-increasing (s_1 >= s_2 >= ...)")
    if widths is None:
        reachable = np.ones(s.shape, bool)
        bottleneck = None
    else:
        items = v.widths_tuple("widths", widths)
        if len(items) != depth + 1:
            v.fail("widths", widths, f"must list depth + 1 = {depth + 1} layer widths")
        reachable = reachable_modes(s, items)
        bottleneck = min(items)
    v.finite_scalar("init_amplitude", init_amplitude, minimum=0.0, strict=True)
    live = s[reachable]
    if live.size and init_amplitude >= 0.5 * live.min():
        v.fail("init_amplitude", init_amplitude,
               f"must be below half the smallest singular value ({0.5 * live.min():g})")
    rows = []
    if live.size:
        t_half = np.asarray(half_learning_time(live, depth, init_amplitude))
        peak = diffusion_peak(live, depth, label_noise)
        moments = stationary_moments(live, depth, learning_rate, batch_size, label_noise)
    for i, s_i in enumerate(s):
        if not reachable[i]:
            row = {"s": float(s_i), "reachable": False, "t_half": None, "a_peak": None,
                   "peak_is_global": None, "stationary_exists": None}
            row.update(dict.fromkeys(_STATIONARY_KEYS))
            row["note"] = (f"unreachable: mode {i + 1} is beyond the bottleneck width {bottleneck} "
                           "(rank of W_L...W_1 <= min(widths)); it is never learned (amplitude 0 "
                           "at the minimum)")
            rows.append(row)
            continue
        j = int(np.count_nonzero(reachable[:i]))
        exists = bool(peak.exists[j])
        law = bool(moments.exists[j])
        note = None
        if not law:
            rate = learning_rate / batch_size
            note = (f"no stationary law: (eta/B)(2 s^2 + sigma^2) = "
                    f"{rate * (2 * s_i**2 + label_noise**2):.4g} >= 2 s = {2 * s_i:.4g}; "
                    "the mode collapses to 0")
        elif math.isinf(float(moments.variance[j])):
            note = "stationary variance infinite (depth 1, eta/B >= 1: Student-t law)"
        rows.append({
            "s": float(s_i),
            "reachable": True,
            "t_half": float(t_half[j]),
            "a_peak": float(peak.amplitude[j]) if exists else None,
            "peak_is_global": bool(peak.is_global[j]),
            "stationary_exists": law,
            "stationary_mean": _number(moments.mean[j]),
            "stationary_variance": _number(moments.variance[j]),
            "stationary_mean_first_order": float(moments.mean_first_order[j]),
            "stationary_variance_first_order": float(moments.variance_first_order[j]),
            "stationary_mode": _number(moments.mode[j]),
            "note": note,
        })
    return rows

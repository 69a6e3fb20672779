"""One table of per-mode theory numbers (the library call behind ``dlnlab theory``)."""

from __future__ import annotations

import numpy as np

from .. import _validation as v
from .gradient_flow import half_learning_time
from .peak import diffusion_peak
from .stationary import stationary_moments


def mode_summary(spectrum, depth: int, learning_rate: float, batch_size: int,
                 label_noise: float, init_amplitude: float) -> list[dict]:
    """Per mode ``s``: gradient-flow ``t_half`` from ``init_amplitude`` (THEORY §6), the
    diffusion-peak amplitude (``None`` when there is none, §7), and the stationary mean and
    variance (quadrature and first order, §8). Plain Python floats, ready for JSON.
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
    v.finite_scalar("init_amplitude", init_amplitude, minimum=0.0, strict=True)
    if init_amplitude >= 0.5 * s.min():
        v.fail("init_amplitude", init_amplitude,
               f"must be below half the smallest singular value ({0.5 * s.min():g})")
    t_half = np.asarray(half_learning_time(s, depth, init_amplitude))
    peak = diffusion_peak(s, depth, label_noise)
    moments = stationary_moments(s, depth, learning_rate, batch_size, label_noise)
    rows = []
    for i, s_i in enumerate(s):
        exists = bool(peak.exists[i])
        rows.append({
            "s": float(s_i),
            "t_half": float(t_half[i]),
            "a_peak": float(peak.amplitude[i]) if exists else None,
            "peak_is_global": bool(peak.is_global[i]),
            "stationary_mean": float(moments.mean[i]),
            "stationary_variance": float(moments.variance[i]),
            "stationary_mean_first_order": float(moments.mean_first_order[i]),
            "stationary_variance_first_order": float(moments.variance_first_order[i]),
            "stationary_mode": float(moments.mode[i]),
        })
    return rows

"""The diffusion-peak claims (§4, eq. 9) that fig1, fig3, appJ3 and fig11 each test on their
own runs, from the rows of :func:`dlnlab.analysis.peak_rows`."""

from __future__ import annotations

import numpy as np

from ...analysis.claims import claim_row, format_number
from .config import PEAK_AMPLITUDE_TOL, PEAK_FRACTION


def peak_claims(rows: list[dict], figure: str, init: str) -> list[dict]:
    """"The diffusion peaks before the mode is learned" and "at the amplitude of eq. 9", for the
    study ``figure`` whose runs start from ``init`` (words for the criterion)."""
    fractions = [r["peak_before_90_fraction"] for r in rows]
    parts = "; ".join(f"{r['method']} mode {r['mode']}: {r['peak_before_90_fraction']:.0%} of "
                      f"{r['runs']} runs (95% CI {r['peak_before_90_ci95'][0]:.2f}-"
                      f"{r['peak_before_90_ci95'][1]:.2f}), Kaplan-Meier median t_peak "
                      f"{format_number(r['t_peak_median'])} vs t(a = 0.9 s) "
                      f"{format_number(r['t_90_median'])} (n = {r['runs_total']}, "
                      f"{r['t_90_crossed']} reached 0.9 s)" for r in rows)
    ok = all(np.isfinite(f) and f >= PEAK_FRACTION for f in fractions)
    out = [claim_row(f"{figure}-peak-precedes-learning",
                     "The modewise diffusion peaks before the mode is learned.",
                     "§4, Fig. 3", figure, parts,
                     {"rows": [{k: r[k] for k in ("method", "mode", "peak_before_90_fraction",
                                                  "peak_before_90_ci95", "t_peak_median",
                                                  "t_90_median", "t_90_crossed", "runs",
                                                  "runs_total")} for r in rows]},
                     f"t_peak < t(a = 0.9 s) in >= {PEAK_FRACTION:.0%} of runs for every mode "
                     f"({init})", "supported" if ok else "refuted")]
    dev = [abs(r["a_at_peak_median"] - r["a_peak_predicted"]) / r["s"] for r in rows]
    parts = "; ".join(f"{r['method']} mode {r['mode']}: a at peak "
                      f"{format_number(r['a_at_peak_median'], '.4g')} vs eq. 9 "
                      f"{format_number(r['a_peak_predicted'], '.4g')}" for r in rows)
    ok = all(np.isfinite(d) and d <= PEAK_AMPLITUDE_TOL for d in dev)
    out.append(claim_row(f"{figure}-peak-amplitude",
                         "The diffusion peaks at the amplitude of eq. 9 (a_peak = 0.6 s at L = 4 "
                         "without label noise).", "§4, eq. 9", figure, parts,
                         {"rows": [{k: r[k] for k in ("method", "mode", "a_at_peak_median",
                                                      "a_peak_predicted")} for r in rows]},
                         f"|median observed - predicted| <= {PEAK_AMPLITUDE_TOL} s per mode "
                         f"({init})", "supported" if ok else "refuted"))
    return out

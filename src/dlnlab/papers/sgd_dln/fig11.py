"""fig11: hidden width 24, twice the input (App. J.4): is the modewise diffusion still close to
the formula of Prop. 3.5 from the random init?"""

from __future__ import annotations

import numpy as np

from ...analysis.claims import claim_row, format_number
from ...analysis.summaries import (
    peak_rows_with_deviation,
    teacher_rank,
    training_parameters,
    with_events,
)
from ...experiments.study import Study
from ...plot.panels import diffusion_vs_relative_time, time_and_amplitude
from .config import FIGURE_LABELS, PEAK_AMPLITUDE_TOL, SIMILAR_TOL, paper_config, size
from .overlays import formula_dataset


def experiments(quick: bool) -> dict:
    return {"width24": paper_config(
        "width24", runs=size(quick, 32, 128), horizon=100.0, methods=["sgd"], points=401,
        variables=["amplitude", "diffusion", "reduced_diffusion"],
        changes={"task.hidden": [24, 24, 24]})}


def analyse(data):
    raw = data["width24"]
    k = teacher_rank(raw)
    out = with_events(raw.sel(method_name="sgd")[["amplitude", "diffusion", "reduced_diffusion",
                                                 "spectrum", "theory_peak_amplitude"]], k)
    out = out.merge(formula_dataset(raw, k))
    out.attrs.update(training_parameters(raw), hidden="24, 24, 24")
    return out


def numbers(ds):
    return peak_rows_with_deviation(ds, "SGD, width 24")


def claims(ds):
    rows = numbers(ds)
    dev = [r["transit_relative_deviation_median"] for r in rows]
    measured = "; ".join(f"mode {r['mode']}: median |D - D_formula| / D_formula = {x:.1%}, a at "
                         f"peak {format_number(r['a_at_peak_median'], '.3g')} vs "
                         f"{r['a_peak_predicted']:.3g}" for r, x in zip(rows, dev, strict=True))
    ok = all(np.isfinite(x) and x <= SIMILAR_TOL for x in dev) and all(
        abs(r["a_at_peak_median"] - r["a_peak_predicted"]) <= PEAK_AMPLITUDE_TOL * r["s"]
        for r in rows)
    return [claim_row("fig11-width", "With hidden width 24 (twice the input), the modewise "
                      "diffusion is similar to the formula of Prop. 3.5.", "App. J.4, Fig. 11",
                      "fig11", measured, {"transit_relative_deviation": dev},
                      f"median relative deviation <= {SIMILAR_TOL:.0%} (random init: the formula "
                      "assumes alignment; fig3 reports the width-12 value) and peak amplitude "
                      f"within {PEAK_AMPLITUDE_TOL} s, every mode", "supported" if ok else "refuted")]


def figure(ds):
    return time_and_amplitude(
        ds, diffusion_vs_relative_time, f"SGD, hidden width 24 ({ds.sizes['run']} runs)",
        "Fig. 11 — hidden width 24 (inputs and outputs 12)", labels=FIGURE_LABELS)


STUDY = Study("fig11", "Hidden width 24", "Fig. 11, App. J.4", experiments, analyse, numbers,
              claims, figure)

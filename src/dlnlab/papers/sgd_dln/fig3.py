"""fig3: the modewise diffusion peaks before each mode is learned (§4), for SGD and the
anisotropic SDE from the random init of the main experiment (shared with fig2 and fig6)."""

from __future__ import annotations

import numpy as np

from ...analysis.summaries import (
    peak_rows_with_deviation,
    teacher_rank,
    training_parameters,
    with_events,
)
from ...experiments.study import Study
from ...plot.panels import COLORS, diffusion_vs_relative_time, mode_label, new_figure
from . import main_run
from .config import FIGURE_LABELS, METHOD_NAMES
from .overlays import formula_dataset
from .peaks import peak_claims

experiments = main_run.experiments


def analyse(data):
    raw = data["main"]
    k = teacher_rank(raw)
    sub = raw.isel(method_name=[i for i, m in enumerate(raw.method_name.values) if m in ("sgd", "sde")])
    out = with_events(sub[["amplitude", "diffusion", "reduced_diffusion", "spectrum",
                           "theory_peak_amplitude", "method_label"]], k)
    out = out.merge(formula_dataset(raw, k))
    out.attrs.update(training_parameters(raw), init="gaussian, variance d^-2 (random, unaligned)")
    return out


def numbers(ds):
    rows = []
    for m in ds.method_name.values:
        rows += peak_rows_with_deviation(ds.sel(method_name=str(m)), str(m))
    return rows


def claims(ds):
    return peak_claims(numbers(ds), "fig3", "random Gaussian init, SGD and anisotropic SDE")


def figure(ds):
    methods = [str(m) for m in ds.method_name.values]
    fig, axes = new_figure(2, len(methods), figsize=(6 * len(methods), 8.2))
    for j, m in enumerate(methods):
        d = ds.isel(method_name=j)
        diffusion_vs_relative_time(axes[0, j], d, f"{METHOD_NAMES.get(m, m)}: runs aligned "
                                   "on their learning time", labels=FIGURE_LABELS)
        ax = axes[1, j]
        lo, hi = np.inf, -np.inf
        for i in range(ds.sizes["mode"]):
            x, y = d.t_90.isel(mode=i).values, d.t_peak.isel(mode=i).values
            ax.scatter(x, y, s=10, color=COLORS[i], alpha=0.6, label=mode_label(ds, i))
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any():
                lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
        if np.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="peak at the learning time")
        ax.set_xlabel("time $a_\\alpha$ reaches $0.9 s_\\alpha$ ($t$ = step × learning rate)")
        ax.set_ylabel("time of the diffusion peak")
        ax.set_title("per run: below the diagonal = peak before learning")
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 3 — the modewise diffusion peaks before each mode is learned "
                 f"(random init, {ds.sizes['run']} runs)")
    fig.tight_layout()
    return fig


STUDY = Study("fig3", "Modewise diffusion peaks before each mode is learned", "Fig. 3, §4",
              experiments, analyse, numbers, claims, figure)

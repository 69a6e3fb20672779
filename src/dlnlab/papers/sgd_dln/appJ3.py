"""appJ3: a finite data set (offline SGD with replacement, App. J.3): does the diffusion still
peak before learning, at eq. 9's (online, large-sample) amplitude?"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...analysis.summaries import peak_rows, teacher_rank, training_parameters, with_events
from ...experiments.study import Study
from ...plot.panels import diffusion_vs_amplitude, new_figure
from ...theory.peak import diffusion_peak
from .config import FIGURE_LABELS, paper_config, size
from .overlays import formula_dataset
from .peaks import peak_claims


def experiments(quick: bool) -> dict:
    sizes = size(quick, [100, 1000], [100, 1000, 10000])
    return {f"{n}": paper_config(f"finite-{n}", runs=size(quick, 32, 128), horizon=60.0,
                                 methods=["sgd"], points=301, variables=["amplitude", "diffusion"],
                                 changes={"task.num_samples": n}) for n in sizes}


def analyse(data):
    keys = sorted(data, key=int)
    first = data[keys[0]]
    k = teacher_rank(first)
    parts = []
    for key in keys:
        d = data[key].sel(method_name="sgd")
        parts.append(with_events(d[["amplitude", "diffusion", "spectrum",
                                    "theory_peak_amplitude"]], k)
                     .expand_dims(num_samples=[int(key)]))
    out = xr.concat(parts, dim="num_samples")
    for name in ("spectrum", "theory_peak_amplitude"):
        out[name] = first[name].isel(mode=slice(0, k))
    # eq. 9 is an online formula; for a data set it is the large-sample prediction.
    p = diffusion_peak(first.spectrum.values[:k], int(first.attrs["depth"]), 0.0)
    out["theory_peak_amplitude"] = ("mode", np.asarray(p.amplitude, dtype=np.float64))
    out = out.merge(formula_dataset(first, k))
    out.attrs.update(training_parameters(first))
    return out


def numbers(ds):
    rows = []
    for n in ds.num_samples.values:
        for r in peak_rows(ds.sel(num_samples=n), f"SGD, {int(n)} samples"):
            rows.append({"num_samples": int(n), **r})
    return rows


def claims(ds):
    out = peak_claims(numbers(ds), "appJ3", "offline SGD on a fixed data set, online eq. 9")
    for c in out:
        c["paper"] = "App. J.3"
        c["claim"] = "With a finite data set: " + c["claim"][0].lower() + c["claim"][1:]
    return out


def figure(ds):
    sizes = ds.num_samples.values
    fig, axes = new_figure(1, sizes.size, figsize=(5.2 * sizes.size, 4.2), sharey=True)
    for ax, n in zip(np.atleast_1d(axes), sizes, strict=True):
        diffusion_vs_amplitude(ax, ds.sel(num_samples=n), labels=FIGURE_LABELS)
        ax.set_title(f"offline SGD, {int(n)} samples")
    fig.suptitle("App. J.3 — finite data set: modewise diffusion (dashed: online formula)")
    fig.tight_layout()
    return fig


STUDY = Study("appJ3", "Finite data set: offline SGD", "App. J.3", experiments, analyse, numbers,
              claims, figure)

"""Figures of a saddle catalogue and of escape experiments (PNG and PDF, axes labelled).

Figure functions take datasets and a folder, write ``NAME.png`` and ``NAME.pdf`` there and return
the paths. They build ``matplotlib.figure.Figure`` objects directly (no pyplot, no global state)
and write every file through the one atomic writer (:func:`dlnlab.io.atomic_save_figure`): a
failed ``savefig`` leaves no partial file and an existing figure as it was.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..dynamics.registry import get_method, method_names
from ..io.atomic import atomic_save_figure
from .certify import CLASS_NAMES

_CLASS_COLOURS = ("tab:gray", "tab:red", "tab:orange", "tab:green")


def _method_colour(name: str) -> str | None:
    """The method's colour from the registry (``None``: matplotlib's cycle)."""
    return get_method(name).colour if name in method_names() else None


def _save(fig: Figure, folder, name: str) -> list[str]:
    """``folder/name.png`` and ``folder/name.pdf`` (150 dpi, tight), each written atomically."""
    paths = [os.path.join(os.fspath(folder), f"{name}.{ext}") for ext in ("png", "pdf")]
    for path in paths:
        atomic_save_figure(fig, path, dpi=150)
    return paths


def plot_loss_levels(ds: xr.Dataset, folder) -> list[str]:
    """Loss of every point against its rank, coloured by class, with the theory levels
    ``0.5 sum_{q not in S} s_q^2`` (+ noise) of each sampled stratum as short black bars."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    rank = ds["rank"].values
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, rank.size)   # display only
    classes = ds["classification"].values if "classification" in ds else None
    if classes is None:
        ax.scatter(rank + jitter, ds["loss"].values, s=14, label="sampled point")
    else:
        for code, name in enumerate(CLASS_NAMES):
            sel = classes == code
            if np.any(sel):
                ax.scatter(rank[sel] + jitter[sel], ds["loss"].values[sel], s=14,
                           color=_CLASS_COLOURS[code], label=name)
    levels = {(int(r), float(x)) for r, x in zip(rank, ds["stratum_loss"].values, strict=True)}
    for i, (r, level) in enumerate(sorted(levels)):
        ax.hlines(level, r - 0.3, r + 0.3, color="black", lw=1.2,
                  label="theory: loss of W = P_S M" if i == 0 else None)
    ax.set_xlabel("rank r of the stratum")
    ax.set_ylabel("population loss L")
    ax.set_xticks(sorted(set(int(r) for r in rank)))
    ax.set_title("Loss level per rank")
    ax.legend(fontsize=8)
    return _save(fig, folder, "loss_levels")


def plot_smallest_eigenvalues(ds: xr.Dataset, folder) -> list[str]:
    """Histogram of the smallest Hessian eigenvalue, one colour per rank."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    lam = ds["smallest_eigenvalue"].values
    rank = ds["rank"].values
    bins = np.histogram_bin_edges(lam, bins=min(30, max(5, lam.size // 2)))
    for r in sorted(set(int(x) for x in rank)):
        ax.hist(lam[rank == r], bins=bins, alpha=0.6, label=f"rank {r}")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("smallest Hessian eigenvalue lambda_min")
    ax.set_ylabel("number of points")
    ax.set_title("Distribution of lambda_min")
    ax.legend(fontsize=8)
    return _save(fig, folder, "smallest_eigenvalue")


def plot_index_histogram(ds: xr.Dataset, folder) -> list[str]:
    """Histogram of the Morse index (number of negative eigenvalues), one colour per rank."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    index = np.rint(ds["index"].values).astype(int)
    rank = ds["rank"].values
    edges = np.arange(index.min() - 0.5, index.max() + 1.5)
    for r in sorted(set(int(x) for x in rank)):
        ax.hist(index[rank == r], bins=edges, alpha=0.6, label=f"rank {r}")
    ax.set_xlabel("index (number of negative Hessian eigenvalues)")
    ax.set_ylabel("number of points")
    ax.set_title("Index histogram")
    ax.legend(fontsize=8)
    return _save(fig, folder, "index_histogram")


def plot_catalogue(ds: xr.Dataset, folder) -> list[str]:
    """All catalogue figures: loss levels, lambda_min distribution, index histogram."""
    return (plot_loss_levels(ds, folder) + plot_smallest_eigenvalues(ds, folder)
            + plot_index_histogram(ds, folder))


def plot_escape(ds: xr.Dataset, folder) -> list[str]:
    """Escape time against ``|lambda_min|`` per method (every run, and the median per point as a
    larger marker); the linearised GD prediction as black crosses where available."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    lam = np.abs(ds["smallest_eigenvalue"].values)
    for method in ds["method_name"].values:
        times = ds["escape_time"].sel(method_name=method).values
        colour = _method_colour(str(method))
        ax.scatter(np.repeat(lam, times.shape[1]), times.ravel(), s=6, alpha=0.3, color=colour)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)        # a point where no run escaped
            median = np.nanmedian(np.where(np.isfinite(times), times, np.nan), axis=1) \
                if np.any(np.isfinite(times)) else np.full(lam.size, np.nan)
        ax.scatter(lam, median, s=30, color=colour, edgecolor="black", label=f"{method} (median)")
    predicted = ds["linearised_gd_time"].values
    if np.any(np.isfinite(predicted)):
        ax.scatter(lam, predicted, marker="x", color="black", label="GD, linearised")
    ax.set_xscale("log")
    ax.set_xlabel("|lambda_min| at the saddle")
    ax.set_ylabel("escape time t (step x learning rate)")
    ax.set_title(f"Escape time (loss drop {ds.attrs.get('drop_fraction', '')} of the gap)")
    ax.legend(fontsize=8)
    return _save(fig, folder, "escape_times")

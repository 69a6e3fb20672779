"""The roofline figure of ``dlnlab bench --scaling`` (docs/performance.md), drawn from its Dataset."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

METHOD_STYLE = {"sgd": ("online SGD", "tab:orange"), "sde": ("anisotropic SDE", "tab:green")}
WIDTH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PRODUCT_EDGE = {"broadcast": ("black", 0.4), "batched": ("darkred", 1.6)}
"""Marker edge (colour, width) by the engine's product layout (``Layout.product``)."""


def _size(runs: int) -> float:
    return 18.0 + 22.0 * np.log10(max(runs, 1))


def roofline_figure(ds: xr.Dataset) -> Figure:
    """Log-log roofline: arithmetic intensity (FLOP/byte) on x, achieved GFLOP/s on y.

    The two ceilings measured in the same run (``ds.attrs['peak_gflop_per_second']`` and
    ``bandwidth_gbyte_per_second``) are drawn as lines; one marker per measured case of
    ``ds.gflop_per_second`` (``dlnlab.roofline.run_scaling``): colour by method, marker shape by
    width ``d``, marker area by the number of runs, edge by the product layout (``ds.product``
    when present: thin black for broadcast, thick dark red for batched). Skipped cases are not
    drawn.
    """
    peak = float(ds.attrs["peak_gflop_per_second"])
    bandwidth = float(ds.attrs["bandwidth_gbyte_per_second"])
    fig = Figure(figsize=(9.6, 5.6), layout="constrained")
    ax = fig.add_subplot()
    intensity = ds.arithmetic_intensity.values
    measured = np.isfinite(ds.gflop_per_second.values)
    lo = min(float(np.nanmin(intensity)) / 2, 0.1) if intensity.size else 0.1
    hi = max(float(np.nanmax(intensity)) * 2, 4 * peak / bandwidth) if intensity.size else 100.0
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(peak, x * bandwidth), color="black", lw=1.6, zorder=1)
    ax.plot(x, x * bandwidth, color="grey", lw=0.8, ls=":", zorder=1)
    ax.axhline(peak, color="grey", lw=0.8, ls=":", zorder=1)
    ax.annotate(f"matrix peak {peak:.0f} GFLOP/s", (hi, peak), xytext=(-4, 4),
                textcoords="offset points", ha="right", va="bottom", fontsize=9)
    at = lo * 1.05                                       # left edge: below the slope, no cases there
    ax.annotate(f"bandwidth\n{bandwidth:.1f} GB/s", (at, at * bandwidth), xytext=(6, -3),
                textcoords="offset points", ha="left", va="top", fontsize=9)
    widths = [int(d) for d in ds.width.values]
    products = ds["product"].values if "product" in ds else np.full(measured.shape, "broadcast")
    for i, method in enumerate(ds.method.values):
        colour = METHOD_STYLE.get(str(method), (str(method), "tab:blue"))[1]
        for j in range(len(widths)):
            marker = WIDTH_MARKERS[j % len(WIDTH_MARKERS)]
            for n, runs in enumerate(ds.runs.values):
                sel = (i, j, slice(None), slice(None), n)
                for product, (edge, line) in PRODUCT_EDGE.items():
                    ok = measured[sel] & (products[sel] == product)
                    if not np.any(ok):
                        continue
                    ax.scatter(intensity[sel][ok], ds.gflop_per_second.values[sel][ok],
                               s=_size(int(runs)), marker=marker, color=colour, alpha=0.75,
                               edgecolors=edge, linewidths=line, zorder=3)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte, minimum traffic)",
           ylabel="achieved GFLOP/s (float32)", xlim=(lo, hi))
    ymin = np.nanmin(ds.gflop_per_second.values) if np.any(measured) else peak / 1e3
    ax.set_ylim(min(ymin / 2, peak / 100, lo * bandwidth / 2), peak * 3)
    ax.grid(True, which="major", alpha=0.3)
    ceiling = [Line2D([], [], color="black", lw=1.6, label="roofline min(peak, I x bandwidth)")]
    methods = [Line2D([], [], ls="", marker="o", color=METHOD_STYLE.get(str(m), (m, "tab:blue"))[1],
                      label=METHOD_STYLE.get(str(m), (str(m),))[0]) for m in ds.method.values]
    shapes = [Line2D([], [], ls="", marker=WIDTH_MARKERS[j % len(WIDTH_MARKERS)], color="grey",
                     label=f"d = {d}") for j, d in enumerate(widths)]
    sizes = [Line2D([], [], ls="", marker="o", color="lightgrey", markeredgecolor="black",
                    markersize=np.sqrt(_size(int(r))), label=f"{int(r)} run" + ("s" if int(r) != 1 else ""))
             for r in ds.runs.values]
    fig.legend(handles=ceiling + methods + shapes, loc="outside right upper", fontsize=8,
               title="method, width", title_fontsize=8)
    edges = [Line2D([], [], ls="", marker="o", color="lightgrey", markeredgecolor=edge,
                    markeredgewidth=line, label=product) for product, (edge, line) in PRODUCT_EDGE.items()
             if np.any(measured & (products == product))]
    fig.legend(handles=sizes + edges, loc="outside right lower", fontsize=8,
               title="marker area; edge: product", title_fontsize=8)
    ax.set_title(f"dlnlab steppers against the roofline ({ds.attrs.get('device', '')}; "
                 f"load {ds.attrs.get('load_average_start', '')})", fontsize=9)
    return fig

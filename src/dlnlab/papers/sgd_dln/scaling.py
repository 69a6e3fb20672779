"""The scaling analysis shared by fig9 (learning rate) and fig10 (1 / batch size): the maximal
modewise diffusion of each run against the swept parameter, the formula's maximum beside it,
per-mode least-squares fits, their claims and the figure."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...analysis.stats import linear_fit, mean_and_se
from ...analysis.summaries import teacher_rank, training_parameters
from ...plot.panels import COLORS, D_LABEL, mode_label, new_figure
from .config import LINEAR_R2, Z
from .overlays import theory_max_diffusion

SWEPT = {"learning_rate": "learning rate", "batch_size": "1 / batch size"}
"""The swept coordinate of a scaling dataset and the x of its fits (1 / B for the batch size)."""


def analyse(data, coord: str) -> xr.Dataset:
    """``max_diffusion (coord, run, mode)`` (the run's maximum over time), the formula's maximum
    ``theory_max_diffusion (coord, mode)`` at each point's parameters, ``spectrum``."""
    keys = sorted(data, key=float)
    first = data[keys[0]]
    k = teacher_rank(first)
    values = np.stack([data[key].sel(method_name="sgd").diffusion.isel(mode=slice(0, k))
                       .max("time").transpose("run", "mode").values for key in keys])
    depth = int(first.attrs["depth"])
    theory = []
    for key in keys:
        p = training_parameters(data[key])
        theory.append(theory_max_diffusion(first.spectrum.values[:k], depth, p["learning_rate"],
                                           p["batch_size"], p["label_noise"]))
    x = np.array([float(key) for key in keys])
    if coord == "batch_size":
        x = x.astype(int)
    out = xr.Dataset({"max_diffusion": ((coord, "run", "mode"), values),
                      "theory_max_diffusion": ((coord, "mode"), np.stack(theory)),
                      "spectrum": ("mode", first.spectrum.values[:k])},
                     coords={coord: x, "run": first.run.values, "mode": np.arange(k)})
    p = training_parameters(first)
    p.pop(coord, None)
    out.attrs.update(p)
    return out


def scaling_x(ds: xr.Dataset) -> tuple[np.ndarray, str, str]:
    """``(x, label, coord)``: the learning rate, or 1 / batch size, of each point."""
    if "learning_rate" in ds.coords:
        return ds.learning_rate.values.astype(float), SWEPT["learning_rate"], "learning_rate"
    return 1.0 / ds.batch_size.values.astype(float), SWEPT["batch_size"], "batch_size"


def scaling_fits(ds: xr.Dataset) -> list[dict]:
    """Per mode: OLS of the run-mean maximal diffusion against the learning rate or 1/B."""
    x, label, coord = scaling_x(ds)
    rows = []
    for i in range(ds.sizes["mode"]):
        y = ds.max_diffusion.isel(mode=i).mean("run").values
        fit = linear_fit(x, y)
        theory = linear_fit(x, ds.theory_max_diffusion.isel(mode=i).values)
        rows.append({"mode": i + 1, "x": label, **fit, "theory_slope": theory["slope"]})
    return rows


def numbers(ds: xr.Dataset) -> list[dict]:
    x, label, coord = scaling_x(ds)
    rows = []
    for j, value in enumerate(ds[coord].values):
        for i in range(ds.sizes["mode"]):
            mean, se, n = mean_and_se(ds.max_diffusion.isel({coord: j, "mode": i}).values)
            rows.append({coord: float(value), "x": float(x[j]), "mode": i + 1,
                         "max_diffusion_mean": mean, "max_diffusion_se": se, "runs": n,
                         "theory_max_diffusion": float(ds.theory_max_diffusion.isel(
                             {coord: j, "mode": i}))})
    return rows + [{"fit": True, **r} for r in scaling_fits(ds)]


def claims(ds: xr.Dataset, figure: str, what: str, paper: str) -> list[dict]:
    """"Linear in ``what``" (R^2) and "proportional" (zero intercept) for study ``figure``."""
    fits = scaling_fits(ds)
    linear = all(f["r2"] >= LINEAR_R2 for f in fits)
    through_zero = all(abs(f["intercept"]) <= Z * f["intercept_se"] for f in fits)
    measured = "; ".join(f"mode {f['mode']}: slope {f['slope']:.4g} ± {f['slope_se']:.2g} "
                         f"(formula {f['theory_slope']:.4g}), intercept {f['intercept']:.2g} ± "
                         f"{f['intercept_se']:.2g}, R^2 = {f['r2']:.4f}" for f in fits)
    measured = f"max over t of D_a, mean over runs, against {fits[0]['x']}: " + measured
    return [claim_row(f"{figure}-linear", f"The maximal modewise diffusion is linear in {what}.",
                      paper, figure, measured, {"fits": fits}, f"R^2 >= {LINEAR_R2}, every mode",
                      "supported" if linear else "refuted"),
            claim_row(f"{figure}-proportional", f"... and proportional to {what}, as eq. 7 says "
                      "(zero intercept).", paper, figure, "intercepts: " + "; ".join(
                          f"mode {f['mode']}: {f['intercept']:.2g} ± {f['intercept_se']:.2g} "
                          f"({f['intercept'] / f['intercept_se']:+.1f} SE)" for f in fits),
                      {"intercepts": [f["intercept"] for f in fits],
                       "intercept_se": [f["intercept_se"] for f in fits]},
                      f"intercept within {Z:g} SE of 0, every mode",
                      "supported" if through_zero else "refuted")]


def figure(ds: xr.Dataset, title: str):
    """One panel per mode: run-mean maximal diffusion ± SE, its fit, and the formula's maximum;
    ``title`` names the figure (``"Fig. 9"``)."""
    x, label, coord = scaling_x(ds)
    fits = scaling_fits(ds)
    k = ds.sizes["mode"]
    fig, axes = new_figure(1, k, figsize=(4.4 * k, 4))
    grid = np.linspace(0, x.max() * 1.05, 50)
    for i, ax in enumerate(np.atleast_1d(axes)):
        y = ds.max_diffusion.isel(mode=i)
        mean = y.mean("run").values
        se = y.std("run", ddof=1).values / np.sqrt(y.sizes["run"])
        ax.errorbar(x, mean, yerr=se, fmt="o", color=COLORS[i], ms=4,
                    label="SGD: max$_t$ $D_\\alpha$, mean ± SE")
        f = fits[i]
        ax.plot(grid, f["slope"] * grid + f["intercept"], color=COLORS[i], lw=1.2,
                label=f"fit: slope {f['slope']:.3g}, $R^2$ = {f['r2']:.4f}")
        ax.plot(x, ds.theory_max_diffusion.isel(mode=i).values, "k--", lw=1.0,
                label="formula: max$_a$ of eq. 7")
        ax.set_xlabel(label)
        ax.set_ylabel(D_LABEL)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(mode_label(ds, i))
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title} — maximal modewise diffusion against {label} "
                 f"({ds.sizes['run']} runs per point)")
    fig.tight_layout()
    return fig

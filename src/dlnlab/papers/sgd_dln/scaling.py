"""The scaling analysis shared by fig9 (learning rate) and fig10 (1 / batch size): the maximal
modewise diffusion of each run against the swept parameter, the formula's maximum beside it,
per-mode least-squares fits, their claims and the figure.

The experiments of both studies run as ONE sweep of :mod:`dlnlab.sweep` (:func:`sweep_data`, the
studies' ``data`` part): fig9's learning rates share one compiled program and one chunk, fig10's
batch sizes are one group each; the sweep is cut back into one dataset per point in
:func:`~dlnlab.experiments.run.run_experiment`'s layout, so the analysis is the same either way.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from ... import __version__
from ...analysis.claims import claim_row
from ...analysis.stats import linear_fit, mean_and_se
from ...analysis.summaries import teacher_rank, training_parameters
from ...plot.panels import COLORS, D_LABEL, mode_label, new_figure
from .config import LINEAR_R2, Z
from .overlays import theory_max_diffusion

SWEPT = {"learning_rate": "learning rate", "batch_size": "1 / batch size"}
"""The swept coordinate of a scaling dataset and the x of its fits (1 / B for the batch size)."""


SWEEP_KEYS_NOTE = ("run keys derived from each point's config as docs/sweeps.md 'Keys' says, "
                   "not from seed as dlnlab run does: the same laws, other draws")


def sweep_folder(name: str, sweep) -> str:
    """``NAME-sweep-<hash>``: the sweep's folder name; the hash (12 hex digits of sha256) covers
    the resolved sweep TOML and the dlnlab version, as an experiment's cache fingerprint does."""
    from ...sweep import sweep_to_toml

    digest = hashlib.sha256((sweep_to_toml(sweep) + __version__).encode()).hexdigest()[:12]
    return f"{name}-sweep-{digest}"


def point_dataset(combined: xr.Dataset, index: int | None, config) -> xr.Dataset:
    """Point ``index`` of an opened sweep (None: a sweep without dimensions) in
    :func:`~dlnlab.experiments.run.run_experiment`'s layout: dims ``(method_name, run, time,
    ...)`` with the point's own record times ``t = step x learning rate`` as the ``time``
    coordinate (the sweep's NaN padding past its last record dropped), the teacher's ``spectrum
    (mode)`` (rounded to the config's dtype, as the task holds it), the sweep's per-run
    ``status``, ``diverged_step``, ``final_loss``, ... kept, and the attributes the analyses
    read (``learning_rate``, ``batch_size``, ``label_noise``, ``depth``), ``config_toml``,
    ``seed`` and ``keys`` (how the runs' keys were derived)."""
    from ...experiments.config import config_to_toml

    ds = combined if index is None else combined.isel(point=index)
    times = np.asarray(ds["time"].values, dtype=np.float64)
    kept = np.flatnonzero(np.isfinite(times))
    ds = ds.isel(record=kept).set_coords("time").swap_dims(record="time")
    ds = ds.drop_vars([v for v in ("point",) if v in ds.coords]
                      + [c for c in ds.coords if c not in ds.dims and ds[c].ndim == 0])
    # the teacher's singular values in the config's dtype, as run_experiment's task holds them
    ds["spectrum"] = ds["spectrum"].astype(np.dtype(config.dtype)).astype(np.float64)
    ds.attrs = {"learning_rate": config.training.learning_rate,
                "batch_size": config.training.batch_size, "label_noise": config.task.label_noise,
                "depth": config.task.depth, "seed": config.seed,
                "config_toml": config_to_toml(config), "keys": SWEEP_KEYS_NOTE,
                "time_units": "t = step * learning rate (step * h for the SDEs)"}
    return ds


def sweep_data(configs, data_dir, *, fresh: bool = False, progress: bool = False,
               name: str = "scaling") -> tuple[dict, dict]:
    """The study's experiments ``{key: ExperimentConfig}`` computed as one sweep
    (:func:`dlnlab.sweep.from_configs.sweep_from_configs`: a ``[[zip]]`` over the fields that
    differ) in ``DATA_DIR/NAME-sweep-<hash>/`` (:func:`sweep_folder`); a rerun resumes chunk by
    chunk and recomputes nothing when every chunk verifies; ``fresh`` deletes the folder first;
    ``progress`` prints the sweep's progress on stderr. Returns ``({key: point_dataset},
    record)``: the record (for ``study.json``) gives ``folder`` (relative to ``data_dir``),
    ``cached`` (every chunk was already complete), ``simulation_seconds`` (the chunks' seconds),
    ``chunks``, ``points`` (key -> point index), ``keys``. Raises ``ValueError`` (one line) when a
    chunk failed (the manifest says which; rerun to retry it)."""
    from ...sweep import open_sweep, read_manifest, run_sweep
    from ...sweep.from_configs import sweep_from_configs

    keys = list(configs)
    sweep = sweep_from_configs([configs[k] for k in keys], name)
    folder = sweep_folder(name, sweep)
    out = Path(data_dir) / folder
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    before = read_manifest(out)
    run_sweep(sweep, out, progress=progress)
    manifest = read_manifest(out)
    failed = [c for c in manifest["chunks"] if c["status"] != "complete"]
    if failed:
        raise ValueError(f"sweep={str(out)!r}: {len(failed)} of {len(manifest['chunks'])} chunks "
                         f"failed ({failed[0]['message'] or failed[0]['status']}); rerun to retry")
    done_before = {c["id"] for c in (before or {}).get("chunks", []) if c["status"] == "complete"}
    cached = all(c["id"] in done_before for c in manifest["chunks"])
    combined = open_sweep(out, lazy=False)
    indexed = "point" in combined.dims
    datasets = {key: point_dataset(combined, i if indexed else None, configs[key])
                for i, key in enumerate(keys)}
    record = {"folder": folder, "cached": cached, "engine": "dlnlab.sweep",
              "simulation_seconds": float(sum(c["seconds"] or 0.0 for c in manifest["chunks"])),
              "chunks": len(manifest["chunks"]), "points": {key: i for i, key in enumerate(keys)},
              "keys": SWEEP_KEYS_NOTE}
    return datasets, record


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

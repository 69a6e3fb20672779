"""depth_map: the fitted inverse variance-flatness exponent over depth, init scale and P/N
(beyond the paper: issue 12 item (a); docs/theory.md §12, the paper's Sec. III C 3, eqs. 3.34,
3.37).

For every depth ``L`` in {2, 3, 4}, init scale ``gamma`` (entries ``N(0, fan_in^-gamma)``: 1 is
the lazy/NTK scale, larger is smaller and richer) and data-set size ``P/N`` (a fixed data set of
``P = ratio * N`` samples, or fresh samples online), gradient descent runs from each of several
random initialisations to convergence (engine ``gd``, float64, the SGD learning rate). At each
run's end point ``theta*`` (checked to be a critical point: ``|grad L|`` is reported, and the
point is snapped exactly onto the minimum manifold with
:func:`~dlnlab.theory.project_to_minimum`, a change reported as ``snap``) the linearised theory
gives the drift ``H``, the exact batch-noise diffusion ``C`` and the stationary covariance
``M`` (``H M + M H = eta C`` on the range of ``H``:
:func:`~dlnlab.theory.linearised_fluctuations`). For each layer, the variance along the
eigenvectors of its block of ``M`` is fitted against the curvature along them
(:func:`~dlnlab.theory.layer_variance_curvature`, :func:`~dlnlab.theory.fit_flatness_exponent`):
``psi = 2 d log variance / d log curvature`` (``variance ~ F^-psi`` with the flatness
``F = curvature^-1/2``) and the reverse slope ``d log curvature / d log variance`` (0 for a flat
layer). Why gradient descent rather than a projection of the initial draw: the IVFR exponent is
set by the balance between layers (eq. 3.34: ``variance_i ~ D_1i / (D_1i + D_2)``), and only the
point gradient descent actually reaches from the init has the balance of a trained network
(projecting the draw changes ``W_1`` alone and leaves it unbalanced).

Validation with SGD (engine ``sgd`` from the same initialisations, paired with its own ``gd``):
each run's weights in the stationary window give its empirical covariance; the theory is
evaluated at the run's window mean snapped to the minimum manifold, and the variance SGD shows
along each theory eigenvector of a layer is fitted against the curvature along it, the same fit
as the theory's; ``psi`` from SGD minus ``psi`` from the theory, per run, with its standard error
over runs. One multi-output set (``N_o = 2``, teacher singular values ``sqrt(N)``, ``sqrt(N)/2``)
runs beside the one-output map.

Conventions (config.py of this paper): the paper's ``lambda`` is ``training.learning_rate``,
``S`` the batch size, ``P`` ``task.num_samples``, ``N`` ``task.d_in``; inputs of variance
``1/N``; a teacher of norm ``sqrt(N)``; label-noise variance ``sigma_eps^2 = 0.1`` (Fig. 8);
minibatches with replacement; time ``t = step x learning rate``.
"""

from __future__ import annotations

import math
import tomllib
import warnings

import numpy as np
import scipy.stats
import xarray as xr

from ...analysis.claims import claim_row
from ...core.loss import gradient
from ...core.products import flatten_weights
from ...experiments.config import validate_config
from ...experiments.run import build_task
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from ...theory.fluctuations import (
    fit_flatness_exponent,
    layer_slices,
    layer_variance_curvature,
    linearised_fluctuations,
    project_to_minimum,
)
from .common import run_covariances, window_parameters
from .config import CONFIDENCE, FLAT_TOL, PSI_TOL, Z, paper_config, size

NAME = "depth_map"
N_INPUTS = 16                 # N (= N_i)
HIDDEN = 12                   # every hidden width N_h
LABEL_VARIANCE = 0.1          # sigma_eps^2 (the paper's Figs. 8, 9)
DEPTHS = (2, 3, 4)
MULTI_OUTPUTS = 2             # the multi-output set: N_o = 2
MULTI_DEPTH = 3
GD_HORIZON = 600.0            # t; gradient descent has converged well before (|grad L| reported)
DEEP_RICH_HORIZON = 3000.0    # t for depth >= 4 at gamma >= 3: escaping the small start takes longer
RICH_GAMMA = 2.0              # gamma >= this: the rich (small-init) regime of the claims
MAX_GRADIENT = 1e-6           # |grad L| / (|H| |theta|) at the end of GD: a critical point
MAX_SNAP = 1e-4               # |theta_snapped - theta_GD| / |theta_GD|: GD is on the manifold
LAZY_DROP = 0.2               # psi(last layer) at gamma = 1 below 2 by more than this: lazy effect
ONLINE = 0                    # ratio 0 stands for online (fresh samples)


def _gammas(quick: bool) -> tuple[float, ...]:
    return size(quick, (1.0, 3.0), (0.5, 1.0, 2.0, 3.0))


def _ratios(quick: bool) -> tuple[int, ...]:
    return size(quick, (ONLINE,), (2, 4, 10, ONLINE))


def _validation_points(quick: bool) -> tuple[tuple[int, float, int, int], ...]:
    """(depth, gamma, ratio, outputs) of the SGD validation runs."""
    if quick:
        return ((2, 1.0, ONLINE, 1),)
    return ((2, 1.0, ONLINE, 1), (2, 2.0, ONLINE, 1), (3, 1.0, ONLINE, 1), (3, 2.0, ONLINE, 1),
            (4, 1.0, ONLINE, 1), (4, 2.0, 10, 1), (MULTI_DEPTH, 1.0, ONLINE, MULTI_OUTPUTS))


def _task(depth: int, ratio: int, outputs: int) -> dict:
    spectrum = [math.sqrt(N_INPUTS) / (k + 1) for k in range(outputs)]
    return {"d_in": N_INPUTS, "d_out": outputs, "hidden": [HIDDEN] * (depth - 1),
            "spectrum": spectrum, "label_noise": math.sqrt(LABEL_VARIANCE),
            "num_samples": ratio * N_INPUTS, "input_covariance": [1.0 / N_INPUTS] * N_INPUTS}


def _key(kind: str, depth: int, gamma: float, ratio: int, outputs: int) -> str:
    return f"{kind}-L{depth}-g{gamma:g}-r{ratio}-o{outputs}"


def _parse(key: str) -> tuple[str, int, float, int, int]:
    kind, depth, gamma, ratio, outputs = key.split("-")
    return kind, int(depth[1:]), float(gamma[1:]), int(ratio[1:]), int(outputs[1:])


def experiments(quick: bool) -> dict:
    """``map-L{depth}-g{gamma}-r{P/N}-o{outputs}``: ``gd`` only, two records (start and end);
    ``sgd-...``: ``gd`` and ``sgd`` paired, linearly spaced records of the weights for the
    stationary window ``t >= GD_HORIZON``. Runs: 4 (quick) or 6 independent initialisations."""
    runs = size(quick, 4, 6)
    sgd_horizon = size(quick, 1000.0, 3000.0)
    sgd_points = size(quick, 501, 1501)
    out = {}
    map_points = [(L, g, r, 1) for L in DEPTHS for g in _gammas(quick) for r in _ratios(quick)]
    if not quick:                 # the multi-output point: the full run only (one more compile)
        map_points += [(MULTI_DEPTH, g, ONLINE, MULTI_OUTPUTS) for g in _gammas(quick)[-1:]]
    for depth, gamma, ratio, outputs in map_points:
        key = _key("map", depth, gamma, ratio, outputs)
        horizon = DEEP_RICH_HORIZON if depth >= 4 and gamma >= 3.0 else GD_HORIZON
        out[key] = paper_config(f"{NAME}-{key}", runs=runs, horizon=horizon, points=2,
                                methods=("gd",), changes={
                                    "task": _task(depth, ratio, outputs),
                                    "init": {"kind": "gaussian", "gamma": gamma}})
    for depth, gamma, ratio, outputs in _validation_points(quick):
        key = _key("sgd", depth, gamma, ratio, outputs)
        out[key] = paper_config(f"{NAME}-{key}", runs=runs, horizon=sgd_horizon,
                                points=sgd_points, methods=("gd", "sgd"), changes={
                                    "task": _task(depth, ratio, outputs),
                                    "init": {"kind": "gaussian", "gamma": gamma}})
    return out


def data(configs, data_dir, *, fresh: bool = False, progress: bool = False):
    """The experiments run one by one with the engine alone (``run_method``: no per-experiment
    theory overlays, the first paper's mode curves, which cost seconds per experiment at depth
    >= 3 and mean nothing here; the init scales of one structure share one compiled program).
    Each dataset is cached as ``DATA_DIR/depth_map/KEY-<fingerprint>.nc`` (the fingerprint of
    :func:`~dlnlab.experiments.study_runner.fingerprint`: resolved config and version; an
    experiment whose config is unchanged is reused whatever else changed), with a
    ``manifest.json`` listing the current set; ``fresh`` recomputes. Progress: one line per experiment on
    stderr. Returns ``({key: Dataset}, record)`` as the :class:`Study` contract says."""
    import sys
    import time
    from pathlib import Path

    from ...experiments.run import initial_weights, record_times, run_method
    from ...experiments.study_runner import fingerprint
    from ...io.atomic import atomic_write_dataset, atomic_write_json, read_dataset

    digests = {key: fingerprint(config) for key, config in configs.items()}
    folder = NAME
    out_dir = Path(data_dir) / folder
    datasets, files, seconds, all_cached = {}, {}, 0.0, True
    for i, (key, config) in enumerate(configs.items()):
        path = out_dir / f"{key}-{digests[key]}.nc"
        files[key] = path.name
        if path.exists() and not fresh:
            datasets[key] = read_dataset(path, what="cached experiment")
            state = "cached"
        else:
            all_cached = False
            t0 = time.perf_counter()
            task = build_task(config)
            weights = initial_weights(config, task=task)
            times = record_times(config, task)
            parts = [run_method(config, m, task, weights, times) for m in config.methods]
            for part in parts:
                for attr in ("method", "compile_seconds", "run_seconds", "run_steps_per_second"):
                    part.attrs.pop(attr, None)
            ds = xr.concat(parts, dim="method_name", coords="minimal", compat="override",
                           join="outer").assign_coords(method_name=list(config.methods))
            elapsed = time.perf_counter() - t0
            seconds += elapsed
            ds.attrs.update(config_toml=_config_toml(config), wall_seconds=elapsed,
                            learning_rate=config.training.learning_rate,
                            batch_size=config.training.batch_size,
                            label_noise=config.task.label_noise, depth=config.task.depth,
                            time_units="t = step * learning rate")
            atomic_write_dataset(ds, path)
            datasets[key] = ds
            state = f"{elapsed:.1f} s"
        if progress:
            print(f"{NAME}: {i + 1}/{len(configs)} {key} ({state})", file=sys.stderr, flush=True)
    atomic_write_json({"study": NAME, "experiments": [
        {"key": k, "file": files[k], "fingerprint": digests[k], "runs": configs[k].runs,
         "methods": list(configs[k].methods)} for k in configs]}, out_dir / "manifest.json")
    return datasets, {"folder": folder, "cached": all_cached, "simulation_seconds": seconds,
                      "points": files, "engine": "dlnlab.experiments.run.run_method"}


def _config_toml(config) -> str:
    from ...experiments.config import config_to_toml

    return config_to_toml(config)


def _config(ds: xr.Dataset):
    return validate_config(tomllib.loads(ds.attrs["config_toml"]))


# ----------------------------------------------------------------------------------- analysis
def _weights(theta: np.ndarray, widths) -> tuple[np.ndarray, ...]:
    """``flatten_weights`` inverted: ``theta (P,)`` -> ``(W_1, ..., W_L)``, column-stacked."""
    return tuple(theta[s].reshape(widths[i + 1], widths[i], order="F")
                 for i, s in enumerate(layer_slices(widths)))


def _solution(theta: np.ndarray, task, widths):
    """``theta`` snapped onto the minimum manifold, the relative change, and ``|grad L|`` at
    ``theta`` itself."""
    weights = _weights(np.asarray(theta, dtype=np.float64), widths)
    grad = float(np.linalg.norm(np.asarray(flatten_weights(gradient(weights, task)))))
    snapped = tuple(np.asarray(w, dtype=np.float64) for w in project_to_minimum(weights, task))
    flat = np.asarray(flatten_weights(snapped), dtype=np.float64)
    return snapped, float(np.linalg.norm(flat - theta) / np.linalg.norm(theta)), grad


def _fit(variance, curvature) -> dict:
    """psi and the reverse slope with their standard errors and bootstrap intervals; NaN when
    fewer than 3 directions carry variance and curvature."""
    try:
        with warnings.catch_warnings():   # a flat layer: every resampled slope is 0 (no spread)
            warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
            f = fit_flatness_exponent(variance, curvature, confidence_level=CONFIDENCE,
                                          num_resamples=500)
    except ValueError:
        return dict.fromkeys(FIT_FIELDS, np.nan)
    return {"psi": f.exponent, "psi_se": f.exponent_standard_error,
            "psi_low": f.exponent_interval[0], "psi_high": f.exponent_interval[1],
            "curvature_slope": f.curvature_slope,
            "curvature_slope_se": f.curvature_slope_standard_error,
            "curvature_slope_low": f.curvature_slope_interval[0],
            "curvature_slope_high": f.curvature_slope_interval[1],
            "directions": float(f.num_directions)}


PER_RUN_FIELDS = ("gradient_relative", "snap", "kernel_noise_fraction", "loss", "converged")
FIT_FIELDS = ("psi", "psi_se", "psi_low", "psi_high", "curvature_slope", "curvature_slope_se",
              "curvature_slope_low", "curvature_slope_high", "directions")
MAX_LAYERS = max(DEPTHS)


def _theory_point(ds: xr.Dataset) -> dict:
    """Per run: the GD end point, its snap onto the manifold, the linearised theory there and the
    per-layer fits. Arrays ``(layer, run)`` padded with NaN beyond the depth, and ``(run,)``."""
    config = _config(ds)
    task = build_task(config)
    widths = config.task.widths
    depth = config.task.depth
    eta, batch = config.training.learning_rate, config.training.batch_size
    theta_end = np.asarray(ds["parameters"].sel(method_name="gd").isel(time=-1).values,
                           dtype=np.float64)
    runs = theta_end.shape[0]
    fits = {k: np.full((MAX_LAYERS, runs), np.nan) for k in FIT_FIELDS}
    per_run = {k: np.full(runs, np.nan) for k in PER_RUN_FIELDS}
    example = np.full((2, MAX_LAYERS, N_INPUTS * HIDDEN), np.nan)
    ok = (ds["status"].sel(method_name="gd") == "ok").values
    shown = False
    for r in np.flatnonzero(ok):
        per_run["loss"][r] = float(ds["loss"].sel(method_name="gd").isel(run=r, time=-1))
        per_run["converged"][r] = 0.0
        try:
            snapped, snap, grad = _solution(theta_end[r], task, widths)
        except ValueError:         # upper layers rank-deficient: far from any minimum
            continue
        per_run["snap"][r] = snap
        if snap > MAX_SNAP:        # not a minimum: labelled, left out of the fits, counted
            continue
        lin = linearised_fluctuations(snapped, task, eta, batch, replacement=True)
        scale = float(np.max(np.abs(lin.stationary.rates))) * float(np.linalg.norm(theta_end[r]))
        per_run["gradient_relative"][r] = grad / scale
        per_run["kernel_noise_fraction"][r] = lin.stationary.kernel_noise_fraction
        if grad / scale > MAX_GRADIENT:
            continue
        per_run["converged"][r] = 1.0
        for layer in range(1, depth + 1):
            vc = layer_variance_curvature(lin.stationary.covariance, lin.drift, widths, layer)
            for k, value in _fit(vc.variance, vc.curvature).items():
                fits[k][layer - 1, r] = value
            if not shown:
                example[0, layer - 1, :vc.variance.size] = vc.variance
                example[1, layer - 1, :vc.variance.size] = vc.curvature
        shown = True
    return {"fits": fits, "per_run": per_run, "example": example,
            "runs": int(np.nansum(per_run["converged"]))}


def _validation_point(ds: xr.Dataset) -> dict:
    """Per SGD run: the theory at the run's window mean (snapped onto the manifold) and at the
    paired GD run's end point; the variance SGD shows along each theory eigenvector of a layer
    against the curvature there, fitted as the theory is (same directions)."""
    config = _config(ds)
    task = build_task(config)
    widths = config.task.widths
    depth = config.task.depth
    eta, batch = config.training.learning_rate, config.training.batch_size
    samples = window_parameters(ds, "sgd", start=GD_HORIZON)
    runs = samples.shape[0]
    names = ("theory", "sgd", "sgd_raw", "gd")
    fits = {(n, k): np.full((MAX_LAYERS, runs), np.nan) for n in names for k in FIT_FIELDS}
    log_ratio = np.full((MAX_LAYERS, runs), np.nan)
    example = np.full((3, MAX_LAYERS, N_INPUTS * HIDDEN * MULTI_OUTPUTS), np.nan)
    ok = (ds["status"].sel(method_name="sgd") == "ok").values
    gd_end = np.asarray(ds["parameters"].sel(method_name="gd").isel(time=-1).values,
                        dtype=np.float64)[ok]
    for r in range(runs):
        snapped, _, _ = _solution(samples[r].mean(axis=0), task, widths)
        lin = linearised_fluctuations(snapped, task, eta, batch, replacement=True)
        gd_snapped, _, _ = _solution(gd_end[r], task, widths)
        lin_gd = linearised_fluctuations(gd_snapped, task, eta, batch, replacement=True)
        # the fluctuations across the manifold of minima: the run's deviations projected on
        # the range of H (the slow second-order drift along the manifold, which the linear
        # theory leaves out, also has components in every layer's block)
        basis = lin.stationary.basis
        raw = run_covariances(samples[r][None])[0]
        measured = basis @ (basis.T @ raw @ basis) @ basis.T
        for layer, block in zip(range(1, depth + 1), layer_slices(widths), strict=False):
            vc = layer_variance_curvature(lin.stationary.covariance, lin.drift, widths, layer)
            vectors = vc.directions.transpose(0, 2, 1).reshape(vc.variance.size, -1)
            sgd_var = np.einsum("ip,pq,iq->i", vectors, measured[block, block], vectors)
            raw_var = np.einsum("ip,pq,iq->i", vectors, raw[block, block], vectors)
            keep = (vc.variance > 1e-8 * vc.variance.max()) & (vc.curvature > 1e-8 * vc.curvature.max())
            vc_gd = layer_variance_curvature(lin_gd.stationary.covariance, lin_gd.drift, widths,
                                             layer)
            for name, (var, kap) in (("theory", (vc.variance[keep], vc.curvature[keep])),
                                     ("sgd", (sgd_var[keep], vc.curvature[keep])),
                                     ("sgd_raw", (raw_var[keep], vc.curvature[keep])),
                                     ("gd", (vc_gd.variance, vc_gd.curvature))):
                for k, value in _fit(var, kap).items():
                    fits[(name, k)][layer - 1, r] = value
            log_ratio[layer - 1, r] = float(np.mean(np.log(sgd_var[keep] / vc.variance[keep])))
            if r == 0:
                example[0, layer - 1, :keep.sum()] = vc.variance[keep]
                example[1, layer - 1, :keep.sum()] = sgd_var[keep]
                example[2, layer - 1, :keep.sum()] = vc.curvature[keep]
    return {"fits": fits, "log_ratio": log_ratio, "example": example, "runs": runs,
            "window": (GD_HORIZON, float(ds.time.values[-1])), "records": samples.shape[1]}


def analyse(data):
    """The map ``(depth, gamma, ratio, layer, run)`` of the fits (``psi``, ``curvature_slope``,
    standard errors, bootstrap intervals, directions used), the GD end-point checks per run,
    one example run's variances and curvatures per point; the multi-output fits
    ``(multi_gamma, layer, run)``; the validation fits ``(point, source, layer, run)`` with
    ``source`` = theory (at SGD's window mean), sgd (projected on the range of H), sgd_raw (not
    projected), gd (theory at the paired GD end point). Layers beyond a point's depth are NaN."""
    keys = {k: _parse(k) for k in data}
    map_keys = [k for k, p in keys.items() if p[0] == "map" and p[4] == 1]
    multi_keys = [k for k, p in keys.items() if p[0] == "map" and p[4] > 1]
    sgd_keys = [k for k, p in keys.items() if p[0] == "sgd"]
    depths = sorted({keys[k][1] for k in map_keys})
    gammas = sorted({keys[k][2] for k in map_keys})
    ratios = sorted({keys[k][3] for k in map_keys}, key=lambda r: r if r else np.inf)
    runs = max(data[k].sizes["run"] for k in data)
    layer = np.arange(1, MAX_LAYERS + 1)
    shape = (len(depths), len(gammas), len(ratios))
    fits = {k: np.full((*shape, MAX_LAYERS, runs), np.nan) for k in FIT_FIELDS}
    per_run = {k: np.full((*shape, runs), np.nan) for k in PER_RUN_FIELDS}
    example = np.full((*shape, 2, MAX_LAYERS, N_INPUTS * HIDDEN), np.nan)
    counted = np.zeros(shape, dtype=np.int64)
    for k in map_keys:
        _, depth, gamma, ratio, _ = keys[k]
        at = (depths.index(depth), gammas.index(gamma), ratios.index(ratio))
        point = _theory_point(data[k])
        n = data[k].sizes["run"]
        for name in FIT_FIELDS:
            fits[name][at][:, :n] = point["fits"][name]
        for name in per_run:
            per_run[name][at][:n] = point["per_run"][name]
        example[at] = point["example"]
        counted[at] = point["runs"]
    dims = ("depth", "gamma", "ratio")
    variables = {name: ((*dims, "layer", "run"), value) for name, value in fits.items()}
    variables.update({name: ((*dims, "run"), value) for name, value in per_run.items()})
    variables["example"] = ((*dims, "quantity", "layer", "direction"), example)
    variables["runs_counted"] = (dims, counted)
    multi_gammas = sorted(keys[k][2] for k in multi_keys)
    multi = {k: np.full((len(multi_gammas), MAX_LAYERS, runs), np.nan) for k in FIT_FIELDS}
    multi_runs = np.zeros(len(multi_gammas), dtype=np.int64)
    for k in multi_keys:
        i = multi_gammas.index(keys[k][2])
        point = _theory_point(data[k])
        for name in FIT_FIELDS:
            multi[name][i][:, :data[k].sizes["run"]] = point["fits"][name]
        multi_runs[i] = point["runs"]
    variables.update({f"multi_{name}": (("multi_gamma", "layer", "run"), value)
                      for name, value in multi.items()})
    variables["multi_runs_counted"] = ("multi_gamma", multi_runs)
    sources = ("theory", "sgd", "sgd_raw", "gd")
    val = {k: np.full((len(sgd_keys), len(sources), MAX_LAYERS, runs), np.nan) for k in FIT_FIELDS}
    log_ratio = np.full((len(sgd_keys), MAX_LAYERS, runs), np.nan)
    val_example = np.full((len(sgd_keys), 3, MAX_LAYERS, N_INPUTS * HIDDEN * MULTI_OUTPUTS), np.nan)
    val_runs = np.zeros(len(sgd_keys), dtype=np.int64)
    window = (np.nan, np.nan)
    records = 0
    for i, k in enumerate(sgd_keys):
        point = _validation_point(data[k])
        n = point["runs"]
        for j, source in enumerate(sources):
            for name in FIT_FIELDS:
                val[name][i, j, :, :n] = point["fits"][(source, name)]
        log_ratio[i, :, :n] = point["log_ratio"]
        val_example[i] = point["example"]
        val_runs[i] = n
        window, records = point["window"], point["records"]
    variables.update({f"validation_{name}": (("point", "source", "layer", "run"), value)
                      for name, value in val.items()})
    variables["validation_log_variance_ratio"] = (("point", "layer", "run"), log_ratio)
    variables["validation_example"] = (("point", "series", "layer", "vdirection"), val_example)
    variables["validation_runs"] = ("point", val_runs)
    ds = xr.Dataset(variables, coords={
        "depth": depths, "gamma": gammas, "ratio": ratios, "layer": layer,
        "run": np.arange(runs), "quantity": ["variance", "curvature"],
        "multi_gamma": multi_gammas, "source": list(sources),
        "series": ["theory_variance", "sgd_variance", "curvature"],
        "point": sgd_keys,
        "point_depth": ("point", [keys[k][1] for k in sgd_keys]),
        "point_gamma": ("point", [keys[k][2] for k in sgd_keys]),
        "point_ratio": ("point", [keys[k][3] for k in sgd_keys]),
        "point_outputs": ("point", [keys[k][4] for k in sgd_keys])})
    ds["psi"].attrs.update(long_name="psi = 2 d log variance / d log curvature along the "
                           "eigenvectors of a layer's block of M (variance ~ F^-psi)", units="1")
    ds["curvature_slope"].attrs.update(long_name="d log curvature / d log variance (0: flat)",
                                       units="1")
    ds["ratio"].attrs.update(long_name="P/N (0: online, fresh samples)", units="1")
    ds["gamma"].attrs.update(long_name="init scale: entries N(0, fan_in^-gamma)", units="1")
    ds["example"].attrs.update(long_name="the first converged run's variances (units theta^2) and curvatures "
                               "(1/time) along the eigenvectors of each layer block of M")
    ds["gradient_relative"].attrs.update(long_name="|grad L| / (|H|_2 |theta|) at GD's end")
    ds["snap"].attrs.update(long_name="|theta_snapped - theta_GD| / |theta_GD|")
    ds["validation_log_variance_ratio"].attrs.update(
        long_name="mean over a layer's directions of log(SGD variance / theory variance)")
    ds.attrs.update(num_inputs=N_INPUTS, hidden_width=HIDDEN, label_variance=LABEL_VARIANCE,
                    multi_outputs=MULTI_OUTPUTS, multi_depth=MULTI_DEPTH,
                    learning_rate=float(data[map_keys[0]].attrs["learning_rate"]),
                    batch_size=int(data[map_keys[0]].attrs["batch_size"]),
                    gd_horizon=GD_HORIZON, window_start=float(window[0]),
                    window_end=float(window[1]), window_records=int(records),
                    confidence_level=CONFIDENCE,
                    note="ratio 0 = online; layer l = W_l (1: first, depth: last); "
                         "fits over directions with variance and curvature above 1e-8 of the "
                         "largest (the linear theory's zero modes left out)")
    return ds


# ----------------------------------------------------------------------------------- numbers
def _role(layer: int, depth: int) -> str:
    return "first" if layer == 1 else ("last" if layer == depth else "middle")


def _mean_se(values) -> tuple[float, float, int]:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.nan, np.nan, 0
    se = float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else np.nan
    return float(np.mean(x)), se, int(x.size)


def _ratio_label(ratio) -> str:
    return "online" if int(ratio) == ONLINE else f"{int(ratio)}"


def map_rows(ds) -> list[dict]:
    """One row per depth, init scale, P/N and layer: mean over runs of psi and the reverse
    slope with standard errors (over runs) and the number of runs."""
    rows = []
    for depth in ds.depth.values:
        for gamma in ds.gamma.values:
            for ratio in ds.ratio.values:
                sel = ds.sel(depth=depth, gamma=gamma, ratio=ratio)
                for layer in range(1, int(depth) + 1):
                    psi, psi_se, n = _mean_se(sel.psi.sel(layer=layer).values)
                    slope, slope_se, m = _mean_se(sel.curvature_slope.sel(layer=layer).values)
                    n = max(n, m)
                    rows.append({"depth": int(depth), "gamma": float(gamma),
                                 "P/N": _ratio_label(ratio), "layer": layer,
                                 "role": _role(layer, int(depth)), "psi": psi, "psi_se": psi_se,
                                 "curvature_slope": slope, "curvature_slope_se": slope_se,
                                 "runs": n,
                                 "max_gradient_relative": float(np.nanmax(sel.gradient_relative)),
                                 "max_snap": float(np.nanmax(sel.snap))})
    return rows


def multi_rows(ds) -> list[dict]:
    rows = []
    for gamma in ds.multi_gamma.values:
        sel = ds.sel(multi_gamma=gamma)
        for layer in range(1, MULTI_DEPTH + 1):
            psi, psi_se, n = _mean_se(sel.multi_psi.sel(layer=layer).values)
            slope, slope_se, m = _mean_se(sel.multi_curvature_slope.sel(layer=layer).values)
            n = max(n, m)
            rows.append({"depth": MULTI_DEPTH, "outputs": int(ds.attrs["multi_outputs"]),
                         "gamma": float(gamma), "P/N": "online", "layer": layer,
                         "role": _role(layer, MULTI_DEPTH), "psi": psi, "psi_se": psi_se,
                         "curvature_slope": slope, "curvature_slope_se": slope_se, "runs": n})
    return rows


def validation_rows(ds) -> list[dict]:
    """Per validation point and layer: theory and SGD psi (slope for the first layer, whose
    curvature is flat), the per-run difference's mean and standard error over runs."""
    rows = []
    for point in ds.point.values:
        sel = ds.sel(point=point)
        depth = int(sel.point_depth)
        for layer in range(1, depth + 1):
            field = "curvature_slope" if layer == 1 else "psi"
            v = sel[f"validation_{field}"].sel(layer=layer)
            theory, _, n = _mean_se(v.sel(source="theory").values)
            sgd, sgd_se, _ = _mean_se(v.sel(source="sgd").values)
            diff, diff_se, _ = _mean_se((v.sel(source="sgd") - v.sel(source="theory")).values)
            raw, raw_se, _ = _mean_se(v.sel(source="sgd_raw").values)
            gd, _, _ = _mean_se(v.sel(source="gd").values)
            ratio, ratio_se, _ = _mean_se(sel.validation_log_variance_ratio.sel(layer=layer).values)
            rows.append({"point": str(point), "depth": depth, "gamma": float(sel.point_gamma),
                         "P/N": _ratio_label(sel.point_ratio), "outputs": int(sel.point_outputs),
                         "layer": layer, "role": _role(layer, depth), "quantity": field,
                         "theory": theory, "sgd": sgd, "sgd_se": sgd_se,
                         "sgd_minus_theory": diff, "difference_se": diff_se,
                         "sgd_without_projection": raw, "sgd_without_projection_se": raw_se,
                         "theory_at_gd_end": gd, "log_variance_ratio": ratio,
                         "log_variance_ratio_se": ratio_se, "runs": n})
    return rows


def numbers(ds):
    """The map, multi-output and validation rows (each with its number of runs)."""
    return map_rows(ds) + multi_rows(ds) + validation_rows(ds)


# ----------------------------------------------------------------------------------- claims
VALIDATION_TOL = 0.2          # |psi_SGD - psi_theory| (slope for the first layer) bound


def _within(rows, target: float, tol: float, field: str = "psi") -> tuple[bool, dict]:
    worst = max(rows, key=lambda r: abs(r[field] - target) if np.isfinite(r[field]) else np.inf)
    ok = all(np.isfinite(r[field]) and abs(r[field] - target) <= tol for r in rows)
    return ok, worst


def _describe(row: dict, field: str = "psi") -> str:
    label = f"L={row['depth']}, gamma={row['gamma']:g}, P/N={row['P/N']}, layer {row['layer']}"
    return (f"{label}: {row[field]:.3f} ± {row[field + '_se']:.3f} ({row['runs']} runs)")


def _claim_set(id_, claim, paper, rows, target, tol, field, criterion, what):
    if not rows:
        return claim_row(id_, claim, paper, NAME, f"no {what} in this run", {}, criterion,
                         "not testable")
    ok, worst = _within(rows, target, tol, field)
    values = [r[field] for r in rows]
    measured = (f"{what}: {field} from {np.nanmin(values):.3f} to {np.nanmax(values):.3f} over "
                f"{len(rows)} (depth, gamma, P/N) points, runs per point "
                f"{min(r['runs'] for r in rows)}-{max(r['runs'] for r in rows)}; farthest from "
                f"{target:g}: {_describe(worst, field)}")
    return claim_row(id_, claim, paper, NAME, measured,
                     {"rows": [{k: r[k] for k in ("depth", "gamma", "P/N", "layer", field,
                                                  field + "_se", "runs")} for r in rows]},
                     criterion, "supported" if ok else "refuted")


def claims(ds):
    """Decision rules fixed before the results (module constants and config.py's ``PSI_TOL``,
    ``FLAT_TOL``, ``Z``): GD converged; last layer psi = 2 in the rich regime; below 2 at the
    lazy scale; first layer flat (online and offline); middle layers psi = 2; two outputs;
    SGD agrees with the theory."""
    rows = map_rows(ds)
    out = []
    done = ds.converged.values == 1
    total = int(np.isfinite(ds.converged.values).sum())
    grad = float(np.nanmax(np.where(done, ds.gradient_relative.values, np.nan)))
    snap = float(np.nanmax(np.where(done, ds.snap.values, np.nan)))
    ok = int(done.sum()) == total
    missing = [f"L={int(d)} gamma={g:g} P/N={_ratio_label(r)}: {int(n)}"
               for d in ds.depth.values for g in ds.gamma.values for r in ds.ratio.values
               if (n := (ds.converged.sel(depth=d, gamma=g, ratio=r) == 0).sum()) > 0]
    out.append(claim_row(
        "depth-map-converged", "Gradient descent from every init scale and depth reached a "
        "critical point, so the linearised theory applies at its end point.",
        "Sec. III A (the GD solution, eq. 3.3)", NAME,
        f"{int(done.sum())} of {total} GD runs (diverged runs are not counted) converged; among "
        f"them max |grad L| / (|H| |theta|) = {grad:.1e}, largest snap onto the minimum manifold "
        f"{snap:.1e} (relative). Not converged (left out of the map): "
        f"{'; '.join(missing) if missing else 'none'}",
        {"gradient_relative": grad, "snap": snap, "converged": int(done.sum()), "runs": total},
        f"|grad L| / (|H| |theta|) <= {MAX_GRADIENT:g} and snap <= {MAX_SNAP:g} in every run "
        "that did not diverge",
        "supported" if ok else "refuted"))
    last_rich = [r for r in rows if r["role"] == "last" and r["gamma"] >= RICH_GAMMA]
    out.append(_claim_set(
        "depth-map-last-rich", "In the rich regime (small init) the last layer obeys the inverse "
        "variance-flatness relation with psi = 2 at every depth L = 2, 3, 4 and every P/N "
        "(linear theory, one output).", "eq. 3.37 (L = 2, P -> infinity), extended",
        last_rich, 2.0, PSI_TOL, "psi",
        f"|mean psi - 2| <= {PSI_TOL} at every point with gamma >= {RICH_GAMMA:g}",
        "last layer, rich regime"))
    last_lazy = [r for r in rows if r["role"] == "last" and r["gamma"] <= 1.0]
    if last_lazy:
        ok = all(r["psi"] <= 2.0 - LAZY_DROP for r in last_lazy)
        values = [r["psi"] for r in last_lazy]
        worst = max(last_lazy, key=lambda r: r["psi"])
        out.append(claim_row(
            "depth-map-last-lazy", "At the lazy scale (gamma <= 1: D_1 ~ D_2) the last layer's "
            "psi falls below 2, as eq. 3.34's local exponent 2 D_2 / (D_1i + D_2) says for L = 2.",
            "eq. 3.34, Sec. III C 2 remark (3)", NAME,
            f"last layer, gamma <= 1: psi from {min(values):.3f} to {max(values):.3f} over "
            f"{len(last_lazy)} points; largest: {_describe(worst)}",
            {"rows": [{k: r[k] for k in ("depth", "gamma", "P/N", "psi", "psi_se", "runs")}
                      for r in last_lazy]},
            f"mean psi <= 2 - {LAZY_DROP} at every point with gamma <= 1",
            "supported" if ok else "refuted"))
    first = [r for r in rows if r["role"] == "first"]
    for label, subset in (("online", [r for r in first if r["P/N"] == "online"]),
                          ("offline", [r for r in first if r["P/N"] != "online"])):
        out.append(_claim_set(
            f"depth-map-first-flat-{label}", f"The first layer is flat ({label}): the curvature "
            "does not vary along its covariance eigenvectors (no inverse variance-flatness "
            "relation), at every depth and init scale (linear theory).",
            "Sec. III C 3, Fig. 9(b)", subset, 0.0, FLAT_TOL, "curvature_slope",
            f"|mean d log curvature / d log variance| <= {FLAT_TOL} at every point",
            f"first layer, {label}"))
    middle = [r for r in rows if r["role"] == "middle" and r["gamma"] >= RICH_GAMMA]
    out.append(_claim_set(
        "depth-map-middle-rich", "Middle layers (L >= 3) obey psi = 2 like the last layer in the "
        "rich regime (linear theory).", "beyond the paper (item (a))", middle, 2.0, PSI_TOL,
        "psi", f"|mean psi - 2| <= {PSI_TOL} at every middle layer with gamma >= {RICH_GAMMA:g}",
        "middle layers, rich regime"))
    multi = [r for r in multi_rows(ds) if r["role"] == "last" and r["gamma"] >= RICH_GAMMA]
    out.append(_claim_set(
        "depth-map-multi-output", f"With {ds.attrs['multi_outputs']} outputs the last layer "
        "still obeys psi = 2 in the rich regime (linear theory, online).",
        "beyond the paper (item (a))", multi, 2.0, PSI_TOL, "psi",
        f"|mean psi - 2| <= {PSI_TOL} for the last layer at gamma >= {RICH_GAMMA:g}",
        f"last layer, L = {MULTI_DEPTH}, {ds.attrs['multi_outputs']} outputs"))
    out.append(_validation_claim(ds))
    return out


def _validation_claim(ds) -> dict:
    rows = validation_rows(ds)
    criterion = (f"per point and layer, d = mean over runs of (SGD - theory) with its standard "
                 f"error SE: agreement if |d| + {Z:g} SE <= {VALIDATION_TOL}, disagreement if "
                 f"|d| - {Z:g} SE > {VALIDATION_TOL}; supported if every row agrees, refuted if "
                 "any disagrees, else not testable")
    claim = ("SGD's stationary fluctuations across the minimum manifold follow the linearised "
             "theory's variance-curvature relation layer by layer (psi; the slope for the first "
             "layer), at every depth and for two outputs.")
    if not rows:
        return claim_row("depth-map-sgd", claim, "Fig. 9, extended", NAME, "no validation run",
                         {}, criterion, "not testable")
    agree = [abs(r["sgd_minus_theory"]) + Z * r["difference_se"] <= VALIDATION_TOL for r in rows]
    disagree = [abs(r["sgd_minus_theory"]) - Z * r["difference_se"] > VALIDATION_TOL for r in rows]
    verdict = "refuted" if any(disagree) else ("supported" if all(agree) else "not testable")
    parts = [f"{r['point']} layer {r['layer']} ({r['quantity']}): SGD {r['sgd']:.3f} vs theory "
             f"{r['theory']:.3f}, d = {r['sgd_minus_theory']:+.3f} ± {r['difference_se']:.3f} "
             f"({r['runs']} runs; without the projection {r['sgd_without_projection']:.3f})"
             for r in rows]
    measured = (f"window t in [{ds.attrs['window_start']:g}, {ds.attrs['window_end']:g}] "
                f"({ds.attrs['window_records']} records per run), deviations projected on the "
                "range of H: " + "; ".join(parts))
    return claim_row("depth-map-sgd", claim, "Fig. 9, extended", NAME, measured,
                     {"rows": rows}, criterion, verdict)


# ----------------------------------------------------------------------------------- figure
def _heat(ax, fig, ds, values, title, vmin, vmax, cmap):
    """``values (gamma, ratio, run)``: mean over runs as a heat map, annotated."""
    mean = np.nanmean(values, axis=-1) if np.isfinite(values).any() else values[..., 0]
    image = ax.imshow(mean, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m, se, n = _mean_se(values[i, j])
            text = "–" if not np.isfinite(m) else f"{m:.2f}\n±{se:.2f}" if np.isfinite(se) \
                else f"{m:.2f}"
            red, green, blue, _ = image.cmap(image.norm(m)) if np.isfinite(m) else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5      # the cell's luminance
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if dark else "k")
    ax.set_xticks(range(ds.sizes["ratio"]), [_ratio_label(r) for r in ds.ratio.values])
    ax.set_yticks(range(ds.sizes["gamma"]), [f"{g:g}" for g in ds.gamma.values])
    ax.set_xlabel("P/N")
    ax.set_ylabel("init scale γ (entries ~ N(0, fan_in^-γ))")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def figure(ds):
    """Heat maps (gamma x P/N) per depth of the last layer's psi, the middle layers' psi and
    the first layer's slope; psi against gamma; one run's variance against curvature; SGD
    against theory at the validation points."""
    depths = [int(d) for d in ds.depth.values]
    fig, axes = new_figure(4, len(depths), figsize=(5.0 * len(depths), 17.0))
    psi_range = (1.0, 2.5)
    for j, depth in enumerate(depths):
        sel = ds.sel(depth=depth)
        _heat(axes[0, j], fig, ds, sel.psi.sel(layer=depth).transpose("gamma", "ratio", "run").values,
              f"L = {depth}: last layer W_{depth}, fitted ψ (mean ± SE over runs)",
              *psi_range, "viridis")
        _heat(axes[2, j], fig, ds,
              sel.curvature_slope.sel(layer=1).transpose("gamma", "ratio", "run").values,
              f"L = {depth}: first layer W_1, d log curvature / d log variance", -0.5, 0.5, "coolwarm")
    middles = [(d, layer) for d in depths for layer in range(2, d)]
    for j in range(len(depths)):
        ax = axes[1, j]
        if j < len(middles):
            depth, layer = middles[j]
            _heat(ax, fig, ds, ds.psi.sel(depth=depth, layer=layer).transpose(
                "gamma", "ratio", "run").values,
                f"L = {depth}: middle layer W_{layer}, fitted ψ", *psi_range, "viridis")
        else:
            ax.axis("off")
    _lines(axes[3, 0], ds)
    _example(axes[3, 1], ds)
    _validation(axes[3, 2] if len(depths) > 2 else axes[3, -1], ds)
    fig.suptitle(f"depth_map — the inverse variance-flatness exponent ψ (variance ~ F^-ψ, F = "
                 f"curvature^-1/2) of the linearised theory at gradient descent's solution; "
                 f"N = {ds.attrs['num_inputs']}, N_h = {ds.attrs['hidden_width']}, one output, "
                 f"σ_ε² = {ds.attrs['label_variance']:g}, λ = {ds.attrs['learning_rate']:g}, "
                 f"S = {ds.attrs['batch_size']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig


def _lines(ax, ds):
    for i, depth in enumerate(ds.depth.values):
        for ratio, style in ((ds.ratio.values[-1], "-"), (ds.ratio.values[0], "--")):
            v = ds.psi.sel(depth=depth, layer=int(depth), ratio=ratio).values
            stats = [_mean_se(row) for row in v]
            ax.errorbar(ds.gamma.values, [s[0] for s in stats], yerr=[s[1] for s in stats],
                        color=COLORS[i], ls=style, marker="o", ms=4, capsize=2,
                        label=f"L = {int(depth)}, P/N = {_ratio_label(ratio)}")
            if ds.sizes["ratio"] == 1:
                break
    if ds.sizes["multi_gamma"]:
        stats = [_mean_se(ds.multi_psi.sel(multi_gamma=g, layer=MULTI_DEPTH).values)
                 for g in ds.multi_gamma.values]
        ax.errorbar(ds.multi_gamma.values, [s[0] for s in stats], yerr=[s[1] for s in stats],
                    color="k", ls=":", marker="s", ms=5, capsize=2,
                    label=f"L = {MULTI_DEPTH}, {ds.attrs['multi_outputs']} outputs, online")
    ax.axhline(2.0, color="grey", lw=1, ls="-.", label="ψ = 2 (eq. 3.37)")
    ax.axhspan(2.0 - PSI_TOL, 2.0 + PSI_TOL, color="grey", alpha=0.15)
    ax.set_xlabel("init scale γ (larger: smaller init, richer)")
    ax.set_ylabel("last-layer ψ (mean ± SE over runs)")
    ax.set_title("last layer: ψ against the init scale", fontsize=9)
    ax.legend(fontsize=6, ncol=2)


def _example(ax, ds):
    depth = int(ds.depth.values[-1])
    gamma = float(ds.gamma.values[-1])
    ratio = ds.ratio.values[-1]
    ex = ds.example.sel(depth=depth, gamma=gamma, ratio=ratio)
    for layer in range(1, depth + 1):
        var = ex.sel(quantity="variance", layer=layer).values
        kap = ex.sel(quantity="curvature", layer=layer).values
        keep = np.isfinite(var) & (var > 1e-8 * np.nanmax(var)) & (kap > 1e-8 * np.nanmax(kap))
        ax.loglog(kap[keep], var[keep], "o", ms=3, color=COLORS[layer - 1],
                  label=f"W_{layer} ({_role(layer, depth)}), {int(keep.sum())} directions")
    ax.set_xlabel("curvature κ along the eigenvector (1/time)")
    ax.set_ylabel("variance along it (θ²)")
    ax.set_title(f"first converged run at L = {depth}, γ = {gamma:g}, P/N = {_ratio_label(ratio)} "
                 "(theory M; ψ = 2 × slope)", fontsize=9)
    ax.legend(fontsize=6)


def _validation(ax, ds):
    rows = validation_rows(ds)
    if not rows:
        ax.axis("off")
        return
    lo, hi = np.inf, -np.inf
    for r in rows:
        marker = {"first": "v", "middle": "s", "last": "o"}[r["role"]]
        colour = COLORS[list(ds.point.values).index(r["point"]) % len(COLORS)]
        ax.errorbar(r["theory"], r["sgd"], yerr=r["sgd_se"], fmt=marker, color=colour, ms=5,
                    capsize=2, label=(f"{r['point']}" if r["layer"] == 1 else None))
        lo, hi = min(lo, r["theory"], r["sgd"]), max(hi, r["theory"], r["sgd"])
    grid = np.linspace(lo - 0.1, hi + 0.1, 2)
    ax.plot(grid, grid, "k--", lw=1, label="SGD = theory")
    ax.set_xlabel("linear theory at the run's mean (mean over runs)")
    ax.set_ylabel("SGD, across the minimum manifold (mean ± SE)")
    ax.set_title("validation: ψ (○ last, □ middle) and the first-layer slope (▽)", fontsize=9)
    ax.legend(fontsize=6)


STUDY = Study(NAME, "The inverse variance-flatness exponent over depth, init scale and P/N",
              "Sec. III C 3, eqs. 3.34, 3.37 (beyond the paper)", experiments,
              analyse, numbers, claims, figure, data=data)

"""Analyse the Golden-Path arms into one dataset: patterns, distances, aligned checkpoints, intervals.

Every metric is a function of :mod:`dlnlab.analysis.golden_path` (the metrics library) applied to
the recorded weights (observable ``parameters``) and the recorded mode coefficients
(``cross_amplitude``, ``balance_residual``); this module only chooses the checkpoints, pairs each
arm with its GD reference (``gd``, or ``offline_gd`` for the offline arms), aggregates over the
runs and puts the result on named dimensions. Checkpoints (experiment notes §1.1.1):

- ``time``: every record time (the same in every arm);
- ``level``: loss-aligned, each run's first crossing of each of ``metrics.loss_levels``
  geometric levels between GD's initial and final loss, the weights interpolated linearly in
  time between records (a run that never reaches a level is censored there: left out of that
  level's statistics, and the count says so);
- ``escape`` x ``offset``: escape-centred windows around GD's escapes (the escape rule of
  :func:`~dlnlab.analysis.golden_path.escape_events`), each run at its escape from the plateau
  at the same level (:func:`~dlnlab.analysis.golden_path.match_escapes`; a run without one is
  censored there), at offsets ``-window ... +window`` around each.

Aggregation over the runs of an arm: ``*_mean``, ``*_low``, ``*_high`` (percentile bootstrap of
the mean, ``metrics.bootstrap_resamples`` resamples of the runs, ``metrics.confidence``),
``*_std`` and the run count. The pattern distances ``d_r, d_m, d_sigma, d_shape, d_sigma_w``
compare GD with the *mean* pattern over runs (notes §1.1.5, §1.2.4); their intervals resample the
runs and recompute that mean (``scipy.stats.bootstrap`` with the distance as statistic). Runs
that diverged are left out of every statistic (``diverged_runs`` counts them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from ....analysis import golden_path as gp
from .config import GoldenPathConfig, reference_arm

PATTERN_DISTANCES = ("d_r", "d_m", "d_sigma", "d_shape", "d_sigma_w")
RUN_DISTANCES = ("relative_parameter_distance", "function_distance", "cosine_similarity",
                 "mean_layer_distance", "parameter_distance")


# ------------------------------------------------------------------------------ helpers
def _weights(parameters: np.ndarray, widths) -> tuple:
    return tuple(np.asarray(w) for w in gp.unflatten_parameters(np.asarray(parameters), widths))


def _patterns(weights: tuple, config: GoldenPathConfig) -> dict:
    m = config.metrics
    sv = np.asarray(gp.partial_product_singular_values(weights))
    return gp.singular_value_patterns(sv, config.depth, threshold=m.rank_threshold, top_k=m.top_k,
                                      floor=m.floor)


def _interval(samples: np.ndarray, config: GoldenPathConfig, seed: int):
    """Bootstrap of the mean over axis 0 (runs): ``(mean, low, high, std)`` over the other axes,
    NaN bounds with fewer than 2 runs."""
    m = config.metrics
    if samples.shape[0] < 2:
        mean = samples.mean(axis=0) if samples.shape[0] else np.full(samples.shape[1:], np.nan)
        nan = np.full(samples.shape[1:], np.nan)
        return mean, nan, nan, nan
    res = gp.bootstrap_mean_interval(samples, axis=0, resamples=m.bootstrap_resamples,
                                     confidence=m.confidence, seed=seed)
    return (np.asarray(res.mean), np.asarray(res.low), np.asarray(res.high), np.asarray(res.std))


def _checkpoint_metrics(reference_weights: tuple, run_weights: tuple, valid: np.ndarray,
                        config: GoldenPathConfig, seed: int) -> dict:
    """Every metric at ``C`` checkpoints. ``reference_weights``: GD's, layers ``(C, ...)``;
    ``run_weights``: the arm's, ``(n, C, ...)``; ``valid (n, C)``: runs that have the checkpoint
    (False: censored there; such entries are NaN in the weights). Returns name -> array."""
    n, c = valid.shape
    depth, m = config.depth, config.metrics
    safe = tuple(np.where(valid.reshape(valid.shape + (1, 1)), w, 0.0) for w in run_weights)
    ref_ok = np.all(np.isfinite(reference_weights[0]), axis=(-2, -1))
    ref_safe = tuple(np.where(ref_ok[:, None, None], w, 0.0) for w in reference_weights)
    ref_pat = _patterns(ref_safe, config)
    run_pat = _patterns(safe, config)
    per_run = gp.parameter_distances(ref_safe, safe)
    out: dict[str, np.ndarray] = {}
    nan_c = np.full(c, np.nan)
    for name in PATTERN_DISTANCES:
        out[name] = nan_c.copy()
        out[f"{name}_low"] = nan_c.copy()
        out[f"{name}_high"] = nan_c.copy()
    for name in RUN_DISTANCES:
        for suffix in ("mean", "low", "high", "std"):
            out[f"{name}_{suffix}"] = nan_c.copy()
    out["runs_at_checkpoint"] = valid.sum(axis=0).astype(np.int64) * ref_ok
    # columns sharing the same set of valid runs are aggregated together
    masks: dict[bytes, list[int]] = {}
    for col in range(c):
        if ref_ok[col] and valid[:, col].any():
            masks.setdefault(valid[:, col].tobytes(), []).append(col)
    for key, cols in masks.items():
        rows = np.frombuffer(key, dtype=bool)
        cols = np.asarray(cols)
        sub = {k: np.asarray(v)[rows][:, cols] for k, v in run_pat.items() if k in
               ("ranks", "multiplicities", "log_singular_values", "shape")}
        ref_sub = {k: np.asarray(v)[cols] for k, v in ref_pat.items() if k in sub}
        dist = gp.pattern_distance_intervals(ref_sub, sub, depth=depth,
                                             resamples=m.bootstrap_resamples,
                                             confidence=m.confidence, seed=seed)
        for name in PATTERN_DISTANCES:
            estimate, low, high = dist[name]
            out[name][cols], out[f"{name}_low"][cols], out[f"{name}_high"][cols] = estimate, low, high
        for name in RUN_DISTANCES:
            mean, lo, hi, std = _interval(np.asarray(per_run[name])[rows][:, cols], config, seed)
            out[f"{name}_mean"][cols], out[f"{name}_low"][cols] = mean, lo
            out[f"{name}_high"][cols], out[f"{name}_std"][cols] = hi, std
    for name in RUN_DISTANCES:
        out[name] = np.where(valid, np.asarray(per_run[name]), np.nan)
    out["layer_distance"] = np.where(valid[..., None], np.asarray(per_run["layer_distance"]), np.nan)
    out["reference_parameter_norm"] = np.where(ref_ok, np.asarray(per_run["parameter_norm"])[0], np.nan)
    out["rank_matrix"] = np.where(valid[..., None, None], np.asarray(run_pat["rank_matrix"]), np.nan)
    out["reference_rank_matrix"] = np.asarray(ref_pat["rank_matrix"])
    out["gap_ratio"] = np.where(valid[..., None], np.asarray(run_pat["gap_ratio"]), np.nan)
    out["reference_gap_ratio"] = np.asarray(ref_pat["gap_ratio"])
    out["log_singular_values"] = np.where(valid[..., None, None],
                                          np.asarray(run_pat["log_singular_values"]), np.nan)
    out["reference_log_singular_values"] = np.asarray(ref_pat["log_singular_values"])
    out["clipped"] = np.where(valid, np.asarray(run_pat["clipped"]), 0)
    return out


def _rule(escape) -> dict:
    """Keyword arguments of :func:`~dlnlab.analysis.golden_path.escape_events`."""
    return dict(drop=escape.drop, tolerance=escape.tolerance, contrast=escape.contrast,
                resolution=escape.resolution, max_escapes=escape.max_escapes)


def _after_cross_peak(coefficients: np.ndarray, from_peak: bool) -> np.ndarray:
    """Coefficients ``(..., T, r, r)`` with the cross entries of row ``a`` hidden (NaN: never
    below the threshold) before the record where ``max_b!=a |w_ab|`` peaks, so that ``t_cross``
    is the first time the cross modes fall below the threshold after their growth (unchanged
    when ``from_peak`` is False)."""
    c = np.array(coefficients, dtype=np.float64)
    r = c.shape[-1]
    if not from_peak or r < 2:
        return c
    off = np.where(np.eye(r, dtype=bool), -np.inf, np.abs(c)).max(axis=-1)   # (..., T, r)
    peak = np.argmax(np.nan_to_num(off, nan=-np.inf), axis=-2)               # (..., r)
    steps = np.arange(c.shape[-3]).reshape((-1, 1))
    before = steps < peak[..., None, :]                                       # (..., T, r)
    hide = before[..., :, :, None] & ~np.eye(r, dtype=bool)                   # (..., T, r, r)
    return np.where(hide, np.nan, c)


def _level_times(times: np.ndarray, loss: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``(n, level)`` first crossings (:func:`~dlnlab.analysis.golden_path.loss_level_times`);
    all NaN when there are no levels (GD's loss did not fall)."""
    if not np.all(np.isfinite(levels)):
        return np.full((loss.shape[0], levels.size), np.nan)
    return np.asarray(gp.loss_level_times(times, loss, levels)).reshape(loss.shape[0], levels.size)


def _at(times: np.ndarray, weights: tuple, at: np.ndarray) -> tuple:
    """Weights ``(n, T, ...)`` interpolated linearly in time at per-run times ``at (n, C)``
    (NaN where ``at`` is NaN)."""
    return tuple(np.asarray(gp.values_at_times(times, w, at)) for w in weights)


# ------------------------------------------------------------------------------ analyse
def analyse(config: GoldenPathConfig, datasets: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """The Golden-Path dataset from the arms' datasets (keys: ``gd``, ``offline_gd`` when an
    offline arm ran, and ``config.arms``). Dims: ``arm``, ``run``, ``time``, ``level``,
    ``escape``, ``offset``, ``checkpoint`` (heatmap times), ``product`` (the partial products
    ``P_ij`` in :func:`~dlnlab.analysis.golden_path.product_pairs` order, coords ``product_i``,
    ``product_j``), ``k`` (top-K), ``row``/``column`` (``i``, ``j`` of ``r_ij``), ``layer``,
    ``pair``, ``mode`` (teacher modes). Times in t = step x learning rate."""
    widths = config.task.widths
    arms = list(config.arms)
    first = reference_arm(arms[0])
    times = np.asarray(datasets[first].time.values, dtype=np.float64)
    for arm, ds in datasets.items():
        if ds.time.size != times.size or not np.allclose(ds.time.values, times, rtol=0, atol=1e-9):
            raise ValueError(f"arm={arm!r}: its record times differ from {first}'s (every arm "
                             "must record at the same times)")
    refs = {}
    for name in {reference_arm(a) for a in arms}:
        d = datasets[name].isel(method_name=0, run=0)
        refs[name] = {"weights": _weights(d.parameters.transpose("time", "parameter").values, widths),
                      "loss": d.loss.values.astype(np.float64),
                      "coefficients": d.cross_amplitude.transpose("time", "mode", "mode2").values,
                      "balance": d.balance_residual.transpose("time", "pair").values}
        refs[name]["escapes"] = gp.escape_events(times, refs[name]["loss"],
                                                 **_rule(config.metrics.escape))
    gd_loss = refs["gd"]["loss"] if "gd" in refs else next(iter(refs.values()))["loss"]
    noise_floor = 0.5 * config.task.d_out * config.task.label_noise ** 2   # 0.5 tr(S_eps)
    floor = noise_floor if np.isfinite(gd_loss[-1]) and gd_loss[-1] > noise_floor else 0.0
    try:
        levels = np.asarray(gp.default_loss_levels(gd_loss, count=config.metrics.loss_levels,
                                                   floor=floor))
    except ValueError:      # GD's loss does not fall over the horizon: no loss-aligned checkpoint
        levels = np.full(config.metrics.loss_levels, np.nan)
    spectrum = np.asarray(config.task.spectrum, dtype=np.float64)
    rank = int(np.sum(spectrum > 0))
    esc = config.metrics.escape
    offsets = np.linspace(-esc.window, esc.window, esc.window_points)
    heat_times = _heatmap_times(config, times, refs)

    per_arm: list[dict] = []
    for index, arm in enumerate(arms):
        ds = datasets[arm].isel(method_name=0)
        ref = refs[reference_arm(arm)]
        ok = ds.diverged_step.values < 0
        parameters = ds.parameters.transpose("run", "time", "parameter").values
        run_weights = _weights(parameters, widths)
        loss = ds.loss.transpose("run", "time").values.astype(np.float64)
        n = loss.shape[0]
        valid_t = np.broadcast_to(ok[:, None], (n, times.size)).copy()
        seed = config.seed * 1000 + index
        ref_t = ref["weights"]
        on_time = _checkpoint_metrics(ref_t, run_weights, valid_t, config, seed)
        # loss-aligned checkpoints
        at_level = _level_times(times, loss, levels)                             # (n, level)
        ref_level = _level_times(times, ref["loss"][None], levels)[0]             # (level,)
        at_level = np.where(ok[:, None], at_level, np.nan)
        ref_level_w = tuple(w[0] for w in _at(times, tuple(w[None] for w in ref_t), ref_level[None]))
        on_level = _checkpoint_metrics(ref_level_w, _at(times, run_weights, at_level),
                                       np.isfinite(at_level), config, seed)
        # escape-centred windows
        events = gp.escape_events(times, loss, **_rule(esc))
        ref_events = ref["escapes"]
        ref_escape = np.full(esc.max_escapes, np.nan)
        ref_escape[:ref_events["count"]] = ref_events["escape_time"][:ref_events["count"]]
        run_escape = np.asarray(gp.match_escapes(ref_events["plateau_level"], events["plateau_level"],
                                                 events["escape_time"],
                                                 max_log_ratio=esc.max_log_ratio))
        run_escape = np.where(ok[:, None], run_escape, np.nan)
        horizon = times[-1]
        grid_runs = (run_escape[:, :, None] + offsets).reshape(n, -1)
        grid_ref = (ref_escape[:, None] + offsets).reshape(-1)
        inside = (grid_runs >= 0) & (grid_runs <= horizon)
        grid_runs = np.where(inside, grid_runs, np.nan)
        grid_ref = np.where((grid_ref >= 0) & (grid_ref <= horizon), grid_ref, np.nan)
        ref_grid_w = tuple(w[0] for w in _at(times, tuple(w[None] for w in ref_t), grid_ref[None]))
        on_escape = _checkpoint_metrics(ref_grid_w, _at(times, run_weights, grid_runs),
                                        np.isfinite(grid_runs), config, seed)
        # heatmaps at fixed times
        heat_idx = np.searchsorted(times, heat_times).clip(0, times.size - 1)
        heat = {"reference": on_time["reference_rank_matrix"][heat_idx],
                "runs": on_time["rank_matrix"][:, heat_idx]}
        # modes
        coeff = ds.cross_amplitude.transpose("run", "time", "mode", "mode2").values[..., :rank, :rank]
        ref_coeff = ref["coefficients"][..., :rank, :rank]
        threshold = config.metrics.cross_threshold * float(spectrum[0])
        from_peak = config.metrics.cross_from_peak
        t_cross, t_diag = gp.mode_passage_times(times, _after_cross_peak(coeff, from_peak),
                                                spectrum[:rank],
                                                cross_threshold=threshold,
                                                diagonal_fraction=config.metrics.diagonal_fraction)
        t_cross, t_diag = np.asarray(t_cross, dtype=np.float64), np.asarray(t_diag, dtype=np.float64)
        ref_cross, ref_diag = gp.mode_passage_times(times, _after_cross_peak(ref_coeff, from_peak),
                                                    spectrum[:rank],
                                                    cross_threshold=threshold,
                                                    diagonal_fraction=config.metrics.diagonal_fraction)
        fraction, count, total = gp.cross_before_diagonal_fraction(t_cross[ok], t_diag[ok], horizon)
        per_run_fraction = np.array([float(gp.cross_before_diagonal_fraction(
            t_cross[r:r + 1], t_diag[r:r + 1], horizon)[0]) for r in np.flatnonzero(ok)])
        per_run_fraction = per_run_fraction[np.isfinite(per_run_fraction)]   # runs with a decided pair
        frac_interval = _interval(per_run_fraction[:, None], config, seed)
        ref_fraction = gp.cross_before_diagonal_fraction(np.asarray(ref_cross)[None],
                                                         np.asarray(ref_diag)[None], horizon)[0]
        with np.errstate(over="ignore", invalid="ignore"):   # diverged runs: labelled, left out
            e_cross, e_fraction = gp.cross_mode_energy(coeff)
        _, ref_e_fraction = gp.cross_mode_energy(ref_coeff)
        diagonal = np.abs(np.diagonal(coeff, axis1=-2, axis2=-1))
        off = np.abs(coeff) + np.where(np.eye(rank, dtype=bool), -np.inf, 0.0)
        cross_max = off.max(axis=-1) if rank > 1 else np.zeros_like(diagonal)
        ref_diagonal = np.abs(np.diagonal(ref_coeff, axis1=-2, axis2=-1))
        ref_off = np.abs(ref_coeff) + np.where(np.eye(rank, dtype=bool), -np.inf, 0.0)
        ref_cross_max = ref_off.max(axis=-1) if rank > 1 else np.zeros_like(ref_diagonal)
        balance = ds.balance_residual.transpose("run", "time", "pair").values
        per_arm.append(dict(
            arm=arm, reference=reference_arm(arm), n=n, ok=ok, loss=loss, ref_loss=ref["loss"],
            on_time=on_time, on_level=on_level, at_level=at_level, ref_level=ref_level,
            on_escape=on_escape, run_escape=run_escape, ref_escape=ref_escape, heat=heat,
            t_cross=t_cross, t_diag=t_diag, ref_cross=np.asarray(ref_cross, dtype=np.float64),
            ref_diag=np.asarray(ref_diag, dtype=np.float64), fraction=float(fraction),
            fraction_count=int(count), fraction_total=int(total), fraction_interval=frac_interval,
            ref_fraction=float(ref_fraction), cross_energy=np.asarray(e_fraction),
            ref_cross_energy=np.asarray(ref_e_fraction), diagonal=diagonal, cross_max=cross_max,
            ref_diagonal=ref_diagonal, ref_cross_max=ref_cross_max, balance=balance,
            ref_balance=ref["balance"], cross_energy_raw=np.asarray(e_cross)))
    return _to_dataset(config, per_arm, times, levels, offsets, heat_times, rank, per_arm[0]["n"])


def _heatmap_times(config: GoldenPathConfig, times: np.ndarray, refs: dict) -> np.ndarray:
    """``metrics.heatmap_times``, or GD's escapes (at most 3) and the horizon."""
    if config.metrics.heatmap_times:
        return np.clip(np.asarray(config.metrics.heatmap_times, dtype=np.float64), 0, times[-1])
    ref = refs.get("gd", next(iter(refs.values())))
    escapes = np.asarray(ref["escapes"]["escape_time"])
    escapes = escapes[np.isfinite(escapes)][:3]
    chosen = [0.0] if escapes.size == 0 else []
    return np.asarray(sorted({*map(float, escapes), *chosen, float(times[-1])}))


def _to_dataset(config, per_arm, times, levels, offsets, heat_times, rank, seeds) -> xr.Dataset:
    depth = config.depth
    pairs = np.asarray(gp.product_pairs(depth))
    arms = [a["arm"] for a in per_arm]
    n_esc = config.metrics.escape.max_escapes
    n_off = offsets.size
    data: dict = {}

    def put(name, dims, getter, attrs=None):
        data[name] = (dims, np.stack([np.asarray(getter(a)) for a in per_arm]), attrs or {})

    put("loss", ("arm", "run", "time"), lambda a: a["loss"])
    put("reference_loss", ("arm", "time"), lambda a: a["ref_loss"])
    put("diverged", ("arm", "run"), lambda a: ~a["ok"])
    axes = {"time": ("on_time", ("time",)), "level": ("on_level", ("level",)),
            "window": ("on_escape", ("escape", "offset"))}
    for axis, (key, dims) in axes.items():
        suffix = "" if axis == "time" else f"_{axis}"

        def reshape(x, axis=axis):
            x = np.asarray(x)
            if axis != "window":
                return x
            return x.reshape(x.shape[:-1] + (n_esc, n_off)) if x.ndim == 1 else \
                x.reshape((x.shape[0], n_esc, n_off) + x.shape[2:])
        for name in PATTERN_DISTANCES:
            for s in ("", "_low", "_high"):
                put(f"{name}{s}{suffix}", ("arm", *dims), lambda a, k=key, n=name + s: reshape(a[k][n]))
        for name in RUN_DISTANCES:
            put(f"{name}{suffix}", ("arm", "run", *dims),
                lambda a, k=key, n=name, axis=axis: _reshape_runs(a[k][n], n_esc, n_off, axis))
            for s in ("mean", "low", "high", "std"):
                put(f"{name}_{s}{suffix}", ("arm", *dims), lambda a, k=key, n=f"{name}_{s}": reshape(a[k][n]))
        put(f"runs_at_checkpoint{suffix}", ("arm", *dims),
            lambda a, k=key: reshape(a[k]["runs_at_checkpoint"]))
    t = "on_time"
    put("rank_matrix_mean", ("arm", "time", "row", "column"),
        lambda a: _nanmean_runs(a[t]["rank_matrix"]))
    put("reference_rank_matrix", ("arm", "time", "row", "column"), lambda a: a[t]["reference_rank_matrix"])
    put("gap_ratio", ("arm", "run", "time", "product"), lambda a: a[t]["gap_ratio"])
    put("reference_gap_ratio", ("arm", "time", "product"), lambda a: a[t]["reference_gap_ratio"])
    put("log_singular_values", ("arm", "run", "time", "product", "k"), lambda a: a[t]["log_singular_values"])
    put("reference_log_singular_values", ("arm", "time", "product", "k"),
        lambda a: a[t]["reference_log_singular_values"])
    put("clipped_multiplicities", ("arm", "run", "time"), lambda a: a[t]["clipped"])
    put("layer_distance", ("arm", "run", "time", "layer"), lambda a: a[t]["layer_distance"])
    put("reference_parameter_norm", ("arm", "time"), lambda a: a[t]["reference_parameter_norm"])
    put("heatmap_rank_matrix_mean", ("arm", "checkpoint", "row", "column"),
        lambda a: _nanmean_runs(a["heat"]["runs"]))
    put("heatmap_reference_rank_matrix", ("arm", "checkpoint", "row", "column"),
        lambda a: a["heat"]["reference"])
    put("level_time", ("arm", "run", "level"), lambda a: a["at_level"])
    put("reference_level_time", ("arm", "level"), lambda a: a["ref_level"])
    put("escape_time", ("arm", "run", "escape"), lambda a: a["run_escape"])
    put("reference_escape_time", ("arm", "escape"), lambda a: a["ref_escape"])
    put("t_cross", ("arm", "run", "mode"), lambda a: a["t_cross"])
    put("t_diag", ("arm", "run", "mode"), lambda a: a["t_diag"])
    put("reference_t_cross", ("arm", "mode"), lambda a: a["ref_cross"])
    put("reference_t_diag", ("arm", "mode"), lambda a: a["ref_diag"])
    put("cross_before_diagonal", ("arm",), lambda a: a["fraction"])
    put("cross_before_diagonal_pairs", ("arm",), lambda a: a["fraction_count"])
    put("cross_before_diagonal_total", ("arm",), lambda a: a["fraction_total"])
    put("cross_before_diagonal_low", ("arm",), lambda a: a["fraction_interval"][1][0])
    put("cross_before_diagonal_high", ("arm",), lambda a: a["fraction_interval"][2][0])
    put("reference_cross_before_diagonal", ("arm",), lambda a: a["ref_fraction"])
    put("cross_energy_fraction", ("arm", "run", "time"), lambda a: a["cross_energy"])
    put("cross_energy", ("arm", "run", "time"), lambda a: a["cross_energy_raw"])
    put("reference_cross_energy_fraction", ("arm", "time"), lambda a: a["ref_cross_energy"])
    put("diagonal_coefficient", ("arm", "run", "time", "mode"), lambda a: a["diagonal"])
    put("cross_coefficient_max", ("arm", "run", "time", "mode"), lambda a: a["cross_max"])
    put("reference_diagonal_coefficient", ("arm", "time", "mode"), lambda a: a["ref_diagonal"])
    put("reference_cross_coefficient_max", ("arm", "time", "mode"), lambda a: a["ref_cross_max"])
    put("balance_residual", ("arm", "run", "time", "pair"), lambda a: a["balance"])
    put("reference_balance_residual", ("arm", "time", "pair"), lambda a: a["ref_balance"])
    coords = {
        "arm": arms, "run": np.arange(seeds), "time": times, "level": np.arange(levels.size),
        "loss_level": ("level", levels), "escape": np.arange(1, n_esc + 1), "offset": offsets,
        "checkpoint": heat_times, "product": np.arange(pairs.shape[0]),
        "product_i": ("product", pairs[:, 0]), "product_j": ("product", pairs[:, 1]),
        "k": np.arange(1, config.metrics.top_k + 1), "row": np.arange(1, depth + 1),
        "column": np.arange(1, depth + 1), "layer": np.arange(1, depth + 1),
        "pair": np.arange(1, depth), "mode": np.arange(1, rank + 1),
        "reference": ("arm", [a["reference"] for a in per_arm]),
        "spectrum": ("mode", np.asarray(config.task.spectrum, dtype=np.float64)[:rank]),
    }
    ds = xr.Dataset({k: xr.Variable(d, v, attrs=at) for k, (d, v, at) in data.items()}, coords=coords)
    ds.attrs.update(protocol="golden-path", seeds=int(seeds), depth=depth,
                    widths=list(config.task.widths), rank_threshold=config.metrics.rank_threshold,
                    top_k=config.metrics.top_k, bootstrap_resamples=config.metrics.bootstrap_resamples,
                    confidence=config.metrics.confidence,
                    time_units="t = step * learning rate",
                    offline_samples=config.offline_samples, learning_rate=config.training.learning_rate,
                    batch_size=config.training.batch_size, horizon=config.training.horizon)
    ds.attrs.update({f"rule_{k}": v for k, v in config.claims.model_dump().items()})
    from .config import config_to_toml
    ds.attrs["config_toml"] = config_to_toml(config)
    return describe(ds, config)


def _nanmean_runs(x) -> np.ndarray:
    """Mean over axis 0 (runs) of the finite entries; NaN without a warning where none is finite
    (every run diverged)."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    total = np.where(finite, x, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _reshape_runs(x, n_esc, n_off, axis):
    x = np.asarray(x)
    if axis != "window":
        return x
    return x.reshape((x.shape[0], n_esc, n_off) + x.shape[2:])


# ------------------------------------------------------------------------------ variable attributes
TIME_UNITS = "t = step x learning rate"
_AXES = {
    "": ("time", "at every record time (dim time)", "runs_at_checkpoint"),
    "_level": ("level", "at each run's first crossing of the loss level loss_level (dim level; the "
                        "reference at its own crossing; weights interpolated linearly in time between "
                        "the two records around the crossing)", "runs_at_checkpoint_level"),
    "_window": ("window", "in the window around the reference's escape `escape` at time offset "
                          "`offset` (t - t_esc; each run at its own escape from the plateau at the "
                          "same level, match_escapes)", "runs_at_checkpoint_window"),
}
_PATTERN_TEXT = {
    "d_r": ("rank distance d_r", "sum_{i<=j} |r_ij^ref - mean_s r_ij^(s)| of the numerical ranks of "
                                 "the partial products P_ij (notes §1.1.5)"),
    "d_m": ("multiplicity distance d_m", "sum_{i<=j} |m_ij^ref - mean_s m_ij^(s)| of the multiplicity "
                                         "pattern (notes §1.1.3, §1.1.5)"),
    "d_sigma": ("log-spectrum distance d_sigma", "sum_{i<=j} sum_k |s_ij,k^ref - mean_s s_ij,k^(s)|, "
                                                 "s = log max(sigma_k(P_ij), floor), top-K values "
                                                 "(notes §1.2.4)"),
    "d_shape": ("shape distance d_shape", "as d_sigma on the shape-normalised s~_ij,k = s_ij,k - "
                                          "s_ij,1 (scale removed; notes §1.2.4); summed over the "
                                          "product x k entries"),
    "d_sigma_w": ("length-weighted log-spectrum distance d_sigma,w", "as d_sigma with weights "
                                                                   "w_ij = j - i + 1 (notes §1.2.4)"),
}
_RUN_TEXT = {
    "relative_parameter_distance": ("relative parameter distance",
                                    "||theta_ref - theta|| / ||theta_ref||, theta = (vec W_1, ..., "
                                    "vec W_L)", "1"),
    "parameter_distance": ("parameter distance", "||theta_ref - theta||, theta = (vec W_1, ..., vec W_L)",
                           None),
    "function_distance": ("relative function distance",
                          "||W_ref - W||_F / ||W_ref||_F of the end-to-end maps W = W_L ... W_1", "1"),
    "cosine_similarity": ("parameter cosine similarity", "<theta_ref, theta> / (||theta_ref|| ||theta||)",
                          "1"),
    "mean_layer_distance": ("mean relative layer distance",
                            "mean over layers l of ||W_l^ref - W_l||_F / ||W_l^ref||_F", "1"),
}
_REFERENCE = "the arm's reference (coordinate reference: gd, or offline_gd for the offline arms)"


def _interval_text(config: GoldenPathConfig, what: str, count: str) -> str:
    m = config.metrics
    return (f"{100 * m.confidence:g}% percentile bootstrap interval over runs ({m.bootstrap_resamples} "
            f"resamples of whole runs, {what} recomputed per resample); runs covered: {count}; NaN "
            "with fewer than 2 runs")


def _describe_table(config: GoldenPathConfig) -> dict[str, tuple[str, str, str | None]]:
    """name -> (long_name, description, units or None) for every data variable of :func:`analyse`."""
    table: dict[str, tuple[str, str, str | None]] = {}
    for suffix, (_, where, count) in _AXES.items():
        for name, (long, rule) in _PATTERN_TEXT.items():
            base = f"{rule}, between {_REFERENCE} and the mean pattern over the arm's runs, {where}"
            table[f"{name}{suffix}"] = (long, f"{base}; runs covered: {count}", "1")
            for end in ("low", "high"):
                table[f"{name}_{end}{suffix}"] = (
                    f"{long}, {'lower' if end == 'low' else 'upper'} interval end",
                    f"{'lower' if end == 'low' else 'upper'} end of the "
                    + _interval_text(config, "the mean pattern and the distance", count)
                    + f"; {rule}, {where}", "1")
        for name, (long, rule, units) in _RUN_TEXT.items():
            table[f"{name}{suffix}"] = (long, f"per run: {rule}, against {_REFERENCE}, {where}; NaN "
                                              "where the run is censored or diverged", units)
            table[f"{name}_mean{suffix}"] = (f"{long}, mean over runs",
                                             f"mean over the arm's runs of {rule}, {where}; runs "
                                             f"covered: {count}", units)
            table[f"{name}_std{suffix}"] = (f"{long}, standard deviation over runs",
                                            f"sample standard deviation (ddof = 1) over the arm's runs "
                                            f"of {rule}, {where}; runs covered: {count}", units)
            for end in ("low", "high"):
                table[f"{name}_{end}{suffix}"] = (
                    f"{long}, {'lower' if end == 'low' else 'upper'} interval end of the mean",
                    f"{'lower' if end == 'low' else 'upper'} end of the "
                    + _interval_text(config, "the mean", count) + f"; {rule}, {where}", units)
        table[count] = ("runs at the checkpoint",
                        f"number of the arm's runs that have the checkpoint {where} and did not "
                        "diverge (censored runs left out); every statistic on this axis covers "
                        "these runs (0 where the reference lacks the checkpoint)", "runs")
    shared = f"at every record time; from {_REFERENCE}"
    table.update({
        "loss": ("loss", "per run: the recorded population loss (offline arms: loss on the data set "
                         "as recorded by the engine)", None),
        "reference_loss": ("reference loss", f"the loss of {_REFERENCE}", None),
        "diverged": ("diverged", "per run: True when the run diverged (left out of every statistic)",
                     None),
        "rank_matrix_mean": ("mean rank matrix r_ij", "mean over the arm's non-diverged runs of the "
                             "numerical rank r_ij = #{m: sigma_m(P_ij) > eps sigma_1(P_ij)} of the "
                             "partial product P_ij = W_j ... W_i (row i, column j; 0 below the "
                             "diagonal), at every record time", None),
        "reference_rank_matrix": ("reference rank matrix r_ij", f"r_ij (row i, column j) {shared}",
                                  None),
        "gap_ratio": ("gap ratio at the rank threshold", "per run: sigma_r / sigma_{r+1} of P_ij at "
                      "its numerical rank r (inf: full rank; NaN: r = 0), at every record time; near "
                      "1 means the rank is ambiguous", "1"),
        "reference_gap_ratio": ("reference gap ratio", f"sigma_r / sigma_{{r+1}} of P_ij {shared}", "1"),
        "log_singular_values": ("log singular values", "per run: s_ij,k = log max(sigma_k(P_ij), "
                                "floor), top-K (k), at every record time; padded with log floor",
                                "natural log"),
        "reference_log_singular_values": ("reference log singular values",
                                          f"s_ij,k = log max(sigma_k(P_ij), floor) {shared}",
                                          "natural log"),
        "clipped_multiplicities": ("clipped multiplicities", "per run: number of negative m_ij "
                                   "(numerical ranks breaking Frobenius's inequality) clipped to 0, "
                                   "at every record time", "entries"),
        "layer_distance": ("relative layer distance", "per run and layer l: ||W_l^ref - W_l||_F / "
                           f"||W_l^ref||_F against {_REFERENCE}, at every record time", "1"),
        "reference_parameter_norm": ("reference parameter norm", f"||theta_ref|| {shared}", None),
        "heatmap_rank_matrix_mean": ("mean rank matrix at the heatmap checkpoints",
                                     "mean over the arm's non-diverged runs of r_ij (row i, column "
                                     "j) at the first record at or after each heatmap time "
                                     "(coordinate checkpoint)", None),
        "heatmap_reference_rank_matrix": ("reference rank matrix at the heatmap checkpoints",
                                          f"r_ij of {_REFERENCE} at the first record at or after "
                                          "each heatmap time", None),
        "level_time": ("loss-level crossing time", "per run: first time the loss reaches loss_level "
                       "(linear interpolation between records); NaN: never reached (censored) or "
                       "diverged", TIME_UNITS),
        "reference_level_time": ("reference loss-level crossing time",
                                 f"first time the loss of {_REFERENCE} reaches loss_level", TIME_UNITS),
        "escape_time": ("escape time", "per run: its escape from the plateau at the level of the "
                        "reference's escape `escape` (escape rule and match_escapes, "
                        "docs/golden-path.md); NaN: no matching escape (censored) or diverged",
                        TIME_UNITS),
        "reference_escape_time": ("reference escape time",
                                  f"the escapes of {_REFERENCE} in order (dim escape, 1-based); NaN "
                                  "past its last escape (the dim has metrics.escape.max_escapes "
                                  "entries)", TIME_UNITS),
        "t_cross": ("cross-mode passage time t_cross", "per run and teacher mode a: first time "
                    "max_{b != a} |w_ab| <= cross_threshold x s_1 (counted from the record where it "
                    "peaks when metrics.cross_from_peak); NaN: not reached by the horizon", TIME_UNITS),
        "t_diag": ("diagonal passage time t_diag", "per run and teacher mode a: first time |w_aa| >= "
                   "diagonal_fraction x s_a; NaN: not reached by the horizon", TIME_UNITS),
        "reference_t_cross": ("reference t_cross", f"t_cross per mode of {_REFERENCE}", TIME_UNITS),
        "reference_t_diag": ("reference t_diag", f"t_diag per mode of {_REFERENCE}", TIME_UNITS),
        "cross_before_diagonal": ("fraction with t_cross < t_diag",
                                  "cross_before_diagonal_pairs / cross_before_diagonal_total over the "
                                  "(mode, run) pairs of the non-diverged runs (censoring rule: "
                                  "docs/golden-path.md)", "1"),
        **{f"cross_before_diagonal_{end}": (
            f"fraction with t_cross < t_diag, {'lower' if end == 'low' else 'upper'} interval end",
            f"{'lower' if end == 'low' else 'upper'} end of the "
            + _interval_text(config, "the mean of each run's own fraction", "the runs with at least "
                             "one decided pair")
            + "; censoring rule: docs/golden-path.md", "1") for end in ("low", "high")},
        "cross_before_diagonal_pairs": ("pairs with t_cross < t_diag",
                                        "number of (mode, run) pairs counted as t_cross < t_diag",
                                        "pairs"),
        "cross_before_diagonal_total": ("decided pairs", "number of (mode, run) pairs whose order is "
                                        "known (neither time reached: left out)", "pairs"),
        "reference_cross_before_diagonal": ("reference fraction with t_cross < t_diag",
                                            f"the fraction over the modes of {_REFERENCE}", "1"),
        "cross_energy_fraction": ("cross-mode energy fraction", "per run: E_cross / E_tot, E_cross = "
                                  "sum_{a != b} w_ab^2, E_tot = sum_ab w_ab^2, w_ab = u_a^T W v_b, at "
                                  "every record time", "1"),
        "cross_energy": ("cross-mode energy", "per run: E_cross = sum_{a != b} w_ab^2, w_ab = u_a^T W "
                         "v_b, at every record time", None),
        "reference_cross_energy_fraction": ("reference cross-mode energy fraction",
                                            f"E_cross / E_tot {shared}", "1"),
        "diagonal_coefficient": ("diagonal mode coefficient", "per run and teacher mode a: |w_aa| = "
                                 "|u_a^T W v_a|, at every record time", None),
        "cross_coefficient_max": ("largest cross-mode coefficient", "per run and teacher mode a: "
                                  "max_{b != a} |w_ab|, at every record time", None),
        "reference_diagonal_coefficient": ("reference diagonal mode coefficient", f"|w_aa| {shared}",
                                           None),
        "reference_cross_coefficient_max": ("reference largest cross-mode coefficient",
                                            f"max_{{b != a}} |w_ab| {shared}", None),
        "balance_residual": ("balance residual", "per run and adjacent layer pair l: r_l = ||W_l W_l^T "
                             "- W_{l+1}^T W_{l+1}||_F / (||W_l W_l^T||_F + ||W_{l+1}^T W_{l+1}||_F) "
                             "(0 = balanced; docs/results.md), at every record time", "1"),
        "reference_balance_residual": ("reference balance residual", f"balance residual {shared}", None),
    })
    return table


def describe(ds: xr.Dataset, config: GoldenPathConfig) -> xr.Dataset:
    """Set ``long_name``, ``description`` and (where they apply) ``units`` on every data variable
    and coordinate of the Golden-Path dataset; raises ``KeyError`` naming a variable that has no
    description (a new variable must be described here)."""
    table = _describe_table(config)
    missing = [name for name in ds.data_vars if name not in table]
    if missing:
        raise KeyError(f"golden-path variables without a description: {missing}")
    for name in ds.data_vars:
        long, text, units = table[name]
        ds[name].attrs.update(long_name=long, description=text)
        if units is not None:
            ds[name].attrs["units"] = units
    coords = {
        "arm": ("arm", "the arm (method and data; docs/golden-path.md, The arms)", None),
        "time": ("time", "record time (the same in every arm)", TIME_UNITS),
        "level": ("loss-level index", "index of the loss level (coordinate loss_level)", None),
        "layer": ("layer", "layer l of W_l, 1-based", None),
        "pair": ("layer pair", "adjacent layers (l, l + 1), l 1-based", None),
        "offset": ("offset from the escape", "t - t_esc inside the escape-centred window", TIME_UNITS),
        "checkpoint": ("heatmap time", "times of the rank heatmaps (metrics.heatmap_times, or the "
                       "reference's escapes and the horizon)", TIME_UNITS),
        "loss_level": ("loss level", "geometric levels between GD's initial and final loss (above the "
                       "label-noise floor)", None),
        "run": ("run", "run index (every run starts from run 0's weights; runs differ in their noise)",
                None),
        "escape": ("escape", "the reference's escapes, 1-based", None),
        "product": ("partial product", "index of P_ij = W_j ... W_i in product_pairs order", None),
        "product_i": ("first layer i of P_ij", "i of the partial product P_ij = W_j ... W_i", None),
        "product_j": ("last layer j of P_ij", "j of the partial product P_ij = W_j ... W_i", None),
        "k": ("singular value index", "k-th largest singular value (top-K)", None),
        "row": ("i of r_ij", "first layer of the partial product", None),
        "column": ("j of r_ij", "last layer of the partial product", None),
        "mode": ("teacher mode", "index a of the teacher's singular value s_a", None),
        "spectrum": ("teacher singular value s_a", "the teacher's non-zero singular values", None),
        "reference": ("reference arm", "the GD arm each arm is compared with", None),
    }
    missing = [name for name in ds.coords if name not in coords]
    if missing:
        raise KeyError(f"golden-path coordinates without a description: {missing}")
    for name, (long, text, units) in coords.items():
        if name in ds.coords:
            ds[name].attrs.update(long_name=long, description=text)
            if units is not None:
                ds[name].attrs["units"] = units
    return ds

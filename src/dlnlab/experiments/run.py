"""``run_experiment``: config -> task, shared initial weights, every method, theory overlays.

Paired comparison: every method starts from the same initial weights per run (drawn from
``fold_in(init_key, run)``) and uses the same per-run noise key, so run ``i`` of GD, SGD and the
SDEs differ only by their dynamics. The reduced SDE starts from ``|u_a^T W(0) v_a|``: the
aligned, balanced closure of docs/theory.md §6 needs a positive amplitude (a negative one never grows
without label noise), and the sign of a mode is a gauge of the full network's dynamics only
through the cross modes the closure drops.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import __version__
from ..analysis.events import learning_events
from ..core import modes as core_modes
from ..core.task import Task
from ..core.weights import init_aligned, init_balanced, init_gaussian
from ..dynamics.registry import get_method
from ..engine import Recording, Schedule, run_keys, simulate, steps_for_times
from ..theory.gradient_flow import gradient_flow_curve
from ..theory.peak import diffusion_peak
from ..theory.reduced import reduced_diffusion
from ..theory.stationary import stationary_moments
from .config import ExperimentConfig, config_to_toml

# Sub-keys of the root seed: one stream per purpose.
_TASK, _INIT, _NOISE, _DATA = 0, 1, 2, 3


def build_task(config: ExperimentConfig) -> Task:
    root = jax.random.key(config.seed)
    t = config.task
    task = Task.from_spectrum(jax.random.fold_in(root, _TASK), t.d_in, t.d_out, t.spectrum,
                              label_noise=t.label_noise if t.label_noise > 0 else None,
                              dtype=jnp.dtype(config.dtype))
    if t.num_samples:
        task = task.with_data(jax.random.fold_in(root, _DATA), t.num_samples)
    return task


def initial_weights(config: ExperimentConfig, num_runs: int | None = None, task: Task | None = None):
    """Per-run initial weights: tuple of ``(runs, d_l, d_{l-1})``; run i from ``fold_in(key, i)``.

    ``aligned``: every mode (teacher modes and the zero modes beyond its rank) at amplitude
    ``init.amplitude``, balanced, with Haar-random hidden bases per run (docs/theory.md §6's manifold).
    """
    num_runs = config.runs if num_runs is None else num_runs
    keys = run_keys(jax.random.fold_in(jax.random.key(config.seed), _INIT), num_runs)
    dtype = jnp.dtype(config.dtype)
    if config.init.kind == "aligned":
        task = build_task(config) if task is None else task
        amps = np.full(task.num_modes, config.init.amplitude)
        runs = [init_aligned(task, amps, config.task.widths, key=k, dtype=dtype) for k in keys]
        return tuple(jnp.stack(layer) for layer in zip(*runs, strict=True))
    if config.init.kind == "balanced":   # a host-side factorisation (SVD), one run at a time
        runs = [init_balanced(k, config.task.widths, config.init.gamma, dtype=dtype) for k in keys]
        return tuple(jnp.stack(layer) for layer in zip(*runs, strict=True))
    return jax.vmap(lambda k: init_gaussian(k, config.task.widths, config.init.gamma,
                                            dtype=dtype))(keys)


def record_times(config: ExperimentConfig) -> np.ndarray:
    """Record times on the learning-rate grid (so every method records at the same ``t``)."""
    lr, n = config.training.learning_rate, config.training.num_steps
    if config.record.spacing == "linear":
        steps = np.unique(np.round(np.linspace(0, n, config.record.points)).astype(np.int64))
    else:
        steps = np.unique(np.concatenate(
            [[0], np.round(np.logspace(0, np.log10(n), config.record.points - 1))]).astype(np.int64))
    return steps * lr


def run_method(config: ExperimentConfig, method: str, task: Task, weights, times, *,
               progress: Callable[[int, int], None] | None = None, checkpoint=None,
               prepared: dict | None = None) -> xr.Dataset:
    """Simulate one registered method for every run; records at ``times``.

    ``prepared``: the method's host-side preparation (:attr:`Method.prepare`, e.g. the matched
    isotropic temperature); computed here when not given.
    """
    record = get_method(method)
    settings = config.settings(method)
    if prepared is None:
        prepared = record.prepare(weights, task, settings)
    h = settings.step_size
    steps = steps_for_times(times, h)
    hp = record.hyperparameters(settings, prepared)
    switches = []
    for switch in config.training.schedule:
        at = int(steps_for_times([switch.time], config.training.learning_rate)[0]
                 * round(config.training.learning_rate / h))
        switched = config.settings(method, batch_size=switch.batch_size)
        switches.append((at, record.build(task, switched), record.hyperparameters(switched, prepared)))
    recording = Recording(steps, observables=config.record.variables,
                          coupled=getattr(config, "reduced", None) is None or config.reduced.coupled)
    ds = simulate(record.build(task, settings), record.start(weights, task), hp,
                  jax.random.fold_in(jax.random.key(config.seed), _NOISE), recording,
                  divergence_threshold=config.divergence_threshold, progress=progress,
                  checkpoint=checkpoint, schedule=Schedule(tuple(switches)))
    ds = ds.assign_coords(time=np.asarray(times, dtype=np.float64))
    return ds.reset_coords("step")


def theory_overlays(config: ExperimentConfig, task: Task, weights, times) -> xr.Dataset:
    """Theory beside the simulation: spectrum, gradient-flow curves from the runs' mean initial
    amplitude, predicted diffusion-peak amplitudes (§7), the aligned-balanced diffusion formula
    ``D(a)`` on a grid of ``a / s`` in [0, 1.05] (§6), stationary moments (§8, label noise).
    Figures draw only these variables (``plot/`` never evaluates theory)."""
    r = int(task.spectrum.shape[0])
    s = np.asarray(task.spectrum, dtype=np.float64)
    depth = config.task.depth
    lr, batch = config.training.learning_rate, config.training.batch_size
    sigma = config.task.label_noise
    amps = np.asarray(jax.vmap(lambda w: core_modes.mode_amplitudes(w, task))(weights))
    a0 = np.mean(np.abs(amps), axis=0).astype(np.float64)
    curve = np.full((len(times), r), np.nan)
    peak = np.full(r, np.nan)
    stat_mean = np.full(r, np.nan)
    stat_var = np.full(r, np.nan)
    live = np.flatnonzero(s > 0)
    fractions = np.linspace(0.0, 1.05, 200)
    formula = np.full((r, fractions.size), np.nan)
    if live.size:
        grid = np.asarray(times, dtype=np.float64)
        a_start = np.minimum(a0[live], 0.5 * s[live])
        curve[:, live] = np.asarray(gradient_flow_curve(grid, s[live], depth, a_start)).reshape(
            len(times), live.size)
        if task.whitened and task.online:
            p = diffusion_peak(s[live], depth, sigma)
            peak[live] = np.where(np.asarray(p.exists), np.asarray(p.amplitude), np.nan)
            for a in live:
                formula[a] = np.asarray(reduced_diffusion(fractions * s[a], s[a], depth, lr, batch,
                                                          sigma))
            if sigma > 0 and depth >= 1:
                m = stationary_moments(s[live], depth, lr, batch, sigma)
                stat_mean[live] = np.asarray(m.mean)
                stat_var[live] = np.asarray(m.variance)
    return xr.Dataset({
        "spectrum": ("mode", s),
        "theory_initial_amplitude": ("mode", a0),
        "theory_gf_amplitude": (("time", "mode"), curve),
        "theory_peak_amplitude": ("mode", peak),
        "theory_stationary_mean": ("mode", stat_mean),
        "theory_stationary_variance": ("mode", stat_var),
        "theory_diffusion_formula": (("mode", "normalised_amplitude"), formula),
    }, coords={"time": np.asarray(times, dtype=np.float64), "normalised_amplitude": fractions,
               "mode": np.arange(1, r + 1)})


def provenance(config: ExperimentConfig) -> dict:
    import os

    import scipy

    return {
        "dlnlab_version": __version__,
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "xarray_version": xr.__version__,
        "python_version": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": ", ".join(str(d) for d in jax.devices()),
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "x64": bool(jax.config.jax_enable_x64),
        "seed": config.seed,
    }


def run_experiment(config: ExperimentConfig, *, progress_factory=None, checkpoint_dir=None,
                   partial_dir=None) -> xr.Dataset:
    """Run every method of ``config``; one Dataset with a ``method`` dimension.

    ``progress_factory(method, total_steps)`` returns a ``progress(done, total)`` callback.
    ``checkpoint_dir``: per-method checkpoints (resumed when present). ``partial_dir``: each
    finished method's dataset is saved there and reused on a rerun (an interrupted experiment
    restarts at the method it was in).
    """
    from ..io.atomic import atomic_write_dataset

    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64': enable x64 first (jax.config.update('jax_enable_x64', True)); "
                         "the dlnlab CLI does it")
    task = build_task(config)
    weights = initial_weights(config, task=task)
    times = record_times(config)
    prepared = {m: get_method(m).prepare(weights, task, config.settings(m)) for m in config.methods}
    parts, timings = [], {}
    for method in config.methods:
        partial = None if partial_dir is None else partial_dir / f"{method}.nc"
        if partial is not None and partial.exists():
            parts.append(xr.load_dataset(partial, engine="h5netcdf"))
            timings[method] = parts[-1].attrs.get("wall_seconds", float("nan"))
            continue
        steps_total = int(round(times[-1] / config.step_size(method)))
        progress = None if progress_factory is None else progress_factory(method, steps_total)
        ckpt = None if checkpoint_dir is None else checkpoint_dir / f"{method}.npz"
        t0 = time.perf_counter()
        ds = run_method(config, method, task, weights, times, progress=progress, checkpoint=ckpt,
                        prepared=prepared[method])
        ds.attrs["wall_seconds"] = time.perf_counter() - t0
        timings[method] = ds.attrs["wall_seconds"]
        if partial is not None:
            atomic_write_dataset(ds, partial)
        parts.append(ds)
    for ds in parts:
        for key in ("method", "compile_seconds", "run_seconds", "run_steps_per_second", "wall_seconds"):
            ds.attrs.pop(key, None)
    data = xr.concat(parts, dim="method_name", coords="minimal", compat="override", join="outer")
    data = data.assign_coords(method_name=list(config.methods),
                              method_label=("method_name", [get_method(m).label for m in config.methods]),
                              method_colour=("method_name", [get_method(m).colour
                                                        for m in config.methods]),
                              step_size=("method_name", [config.step_size(m) for m in config.methods]))
    data = data.merge(theory_overlays(config, task, weights, times))
    data["isotropic_temperature"] = float(prepared.get("isotropic", {}).get("temperature", 0.0))
    data.attrs.update(provenance(config))
    data.attrs.update(learning_rate=config.training.learning_rate,
                      batch_size=config.training.batch_size, label_noise=config.task.label_noise,
                      depth=config.task.depth)
    data.attrs["config_toml"] = config_to_toml(config)
    data.attrs["timings_seconds"] = ", ".join(f"{m}={t:.2f}" for m, t in timings.items())
    data.attrs["time_units"] = "t = step * learning rate (step * h for the SDEs)"
    return data


def summarise(data: xr.Dataset) -> dict:
    """Per method and mode (teacher modes with ``s > 0``), from the one learning-event rule
    (:func:`dlnlab.analysis.learning_events`): median over runs of the time to reach half and
    90% of ``s`` (NaN for a run that never did), time and amplitude of the observed diffusion
    peak (the maximum of ``D_a`` up to the first record where ``a >= s``) over the runs that
    learned the mode (reached 0.9 s), the predicted peak amplitude, runs that diverged."""
    s = data.spectrum.values
    modes = [int(a) for a in np.flatnonzero(s > 0)]
    out = {"methods": {}}

    def med(x):
        x = np.asarray(x, dtype=float)
        return float(np.nanmedian(x)) if x.size and np.any(np.isfinite(x)) else None

    for index, method in enumerate(data.method_name.values):
        d = data.isel(method_name=index)
        events = learning_events(d).transpose("run", "mode")
        rows = []
        for a in modes:
            half = events.t_half.values[:, a]
            ninety = events.t_90.values[:, a]
            learned = np.isfinite(ninety)
            rows.append({
                "mode": a + 1,
                "s": float(s[a]),
                "t_half": med(half),
                "t_90": med(ninety),
                "t_peak": med(events.t_peak.values[learned, a]),
                "a_peak_observed": med(events.a_at_peak.values[learned, a]),
                "a_peak_predicted": (None if not np.isfinite(data.theory_peak_amplitude.values[a])
                                     else float(data.theory_peak_amplitude.values[a])),
                "runs_reaching_90": int(np.sum(learned)),
            })
        status = d.status.values
        diverged = [{"run": int(r), "step": int(k)} for r, k in
                    zip(d.run.values, d.diverged_step.values, strict=True) if k >= 0]
        final = d.loss.transpose("run", "time").values[:, -1]
        out["methods"][str(method)] = {
            "label": str(d.method_label.values),
            "runs": int(status.size),
            "diverged": diverged,
            "final_loss_median": float(np.nanmedian(final)) if np.any(np.isfinite(final)) else None,
            "modes": rows,
        }
    return out

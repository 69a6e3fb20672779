"""``run_experiment``: config -> task, shared initial weights, every method, theory overlays.

Paired comparison: every method starts from the same initial weights per run (drawn from
``fold_in(init_key, run)``) and uses the same per-run noise key, so run ``i`` of GD, SGD and the
SDEs differ only by their dynamics. The reduced SDE starts from ``|u_a^T W(0) v_a|``: the
aligned, balanced closure of THEORY §6 needs a positive amplitude (a negative one never grows
without label noise), and the sign of a mode is a gauge of the full network's dynamics only
through the cross modes the closure drops.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import __version__
from ..core import modes as core_modes
from ..core.noise import noise_trace
from ..core.task import Task
from ..core.weights import init_aligned, init_balanced, init_gaussian
from ..dynamics import (
    AnisotropicLangevin,
    GradientDescent,
    GradientFlow,
    Hyperparameters,
    IsotropicLangevin,
    OfflineSGD,
    OnlineSGD,
    ReducedSDE,
)
from ..engine import run_keys, simulate, steps_for_times
from ..theory.gradient_flow import gradient_flow_curve
from ..theory.peak import diffusion_peak
from ..theory.stationary import stationary_moments
from .config import ExperimentConfig, config_to_toml

METHOD_LABELS = {
    "gd": "GD",
    "gf": "gradient flow",
    "sgd": "SGD",
    "sde": "anisotropic SDE",
    "isotropic": "isotropic SDE",
    "reduced": "reduced SDE",
}

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
    ``init.amplitude``, balanced, with Haar-random hidden bases per run (THEORY §6's manifold).
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


def matched_temperature(weights, task: Task, learning_rate: float, batch_size: int,
                        replacement: bool = True) -> float:
    """``T = eta tr Sigma(theta_ref) / (2 B P)`` averaged over runs at their initial weights
    (THEORY §4): the isotropic noise with the anisotropic model's mean per-parameter variance."""
    traces = jax.vmap(lambda w: noise_trace(w, task, batch_size, replacement))(weights)
    num_params = sum(int(np.prod(w.shape[1:])) for w in weights)
    return float(learning_rate * jnp.mean(traces) / (2 * num_params))


def _stepper(config: ExperimentConfig, method: str, task: Task, batch_size: int):
    training = config.training
    if method == "gd":
        return GradientDescent(task)
    if method == "gf":
        return GradientFlow(task)
    if method == "sgd":
        if task.online:
            return OnlineSGD(task, batch_size=batch_size)
        return OfflineSGD(task, batch_size=batch_size, replacement=training.replacement)
    if method == "sde":
        return AnisotropicLangevin(task, path_substeps=config.sde.path_substeps,
                                   replacement=training.replacement)
    if method == "isotropic":
        return IsotropicLangevin(task, widths=config.task.widths)
    if method == "reduced":
        return ReducedSDE(task, depth=config.task.depth, coupled=config.reduced.coupled)
    raise ValueError(f"method={method!r}: unknown")


def run_method(config: ExperimentConfig, method: str, task: Task, weights, times, *,
               progress: Callable[[int, int], None] | None = None, checkpoint=None,
               temperature: float = 0.0) -> xr.Dataset:
    """Simulate one method for every run; records at ``times``."""
    training = config.training
    h = config.step_size(method)
    steps = steps_for_times(times, h)
    hp = Hyperparameters(training.learning_rate, float(training.batch_size), h, temperature)
    start = weights
    if method == "reduced":
        amps = jax.vmap(lambda w: core_modes.mode_amplitudes(w, task))(weights)
        start = (jnp.abs(amps),)
    switches = []
    for switch in training.schedule:
        at = int(steps_for_times([switch.time], training.learning_rate)[0]
                 * round(training.learning_rate / h))
        switches.append((at, _stepper(config, method, task, switch.batch_size),
                         hp._replace(batch_size=float(switch.batch_size))))
    ds = simulate(_stepper(config, method, task, training.batch_size), start, hp,
                  jax.random.fold_in(jax.random.key(config.seed), _NOISE), steps,
                  divergence_threshold=config.divergence_threshold,
                  replacement=training.replacement, coupled=config.reduced.coupled,
                  progress=progress, checkpoint=checkpoint, switches=switches,
                  observables=(True if config.record.variables is None
                               else list(config.record.variables)))
    ds = ds.assign_coords(time=np.asarray(times, dtype=np.float64))
    return ds.reset_coords("step")


def theory_overlays(config: ExperimentConfig, task: Task, weights, times) -> xr.Dataset:
    """Theory beside the simulation: spectrum, gradient-flow curves from the runs' mean initial
    amplitude, predicted diffusion-peak amplitudes (§7), stationary moments (§8, label noise)."""
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
    if live.size:
        grid = np.asarray(times, dtype=np.float64)
        a_start = np.minimum(a0[live], 0.5 * s[live])
        curve[:, live] = np.asarray(gradient_flow_curve(grid, s[live], depth, a_start)).reshape(
            len(times), live.size)
        if task.whitened and task.online:
            p = diffusion_peak(s[live], depth, sigma)
            peak[live] = np.where(np.asarray(p.exists), np.asarray(p.amplitude), np.nan)
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
    }, coords={"time": np.asarray(times, dtype=np.float64)})


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
    from ..io.rundir import atomic_write_dataset

    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64': enable x64 first (jax.config.update('jax_enable_x64', True)); "
                         "the dlnlab CLI does it")
    task = build_task(config)
    weights = initial_weights(config, task=task)
    times = record_times(config)
    temperature = 0.0
    if "isotropic" in config.methods:
        temperature = (matched_temperature(weights, task, config.training.learning_rate,
                                           config.training.batch_size, config.training.replacement)
                       if config.isotropic.temperature == "matched"
                       else float(config.isotropic.temperature))
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
                        temperature=temperature)
        ds.attrs["wall_seconds"] = time.perf_counter() - t0
        timings[method] = ds.attrs["wall_seconds"]
        if partial is not None:
            atomic_write_dataset(ds, partial)
        parts.append(ds)
    for ds in parts:
        for key in ("method", "compile_seconds", "run_seconds", "run_steps_per_second", "wall_seconds"):
            ds.attrs.pop(key, None)
    data = xr.concat(parts, dim="method", coords="minimal", compat="override", join="outer")
    data = data.assign_coords(method=list(config.methods),
                              method_label=("method", [METHOD_LABELS[m] for m in config.methods]),
                              step_size=("method", [config.step_size(m) for m in config.methods]))
    data = data.merge(theory_overlays(config, task, weights, times))
    data["isotropic_temperature"] = temperature
    data.attrs.update(provenance(config))
    data.attrs.update(learning_rate=config.training.learning_rate,
                      batch_size=config.training.batch_size, label_noise=config.task.label_noise,
                      depth=config.task.depth)
    data.attrs["config_toml"] = config_to_toml(config)
    data.attrs["timings_seconds"] = ", ".join(f"{m}={t:.2f}" for m, t in timings.items())
    data.attrs["time_units"] = "t = step * learning rate (step * h for the SDEs)"
    return data


def _first_crossing(times, values, level):
    """First time ``values >= level`` (linear interpolation between records); NaN if never."""
    above = values >= level
    if not above.any():
        return math.nan
    i = int(np.argmax(above))
    if i == 0:
        return float(times[0])
    t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
    return float(t0 + (level - v0) * (t1 - t0) / (v1 - v0)) if v1 != v0 else float(t1)


def summarise(data: xr.Dataset) -> dict:
    """Per method and mode (teacher modes with ``s > 0``): median over runs of the time to reach
    half and 90% of ``s``, time and amplitude of the observed diffusion peak (the maximum of
    ``D_a`` before ``a`` first reaches ``s``), the predicted peak amplitude, runs that diverged."""
    times = data.time.values
    s = data.spectrum.values
    modes = [int(a) for a in np.flatnonzero(s > 0)]
    out = {"methods": {}}
    for index, method in enumerate(data.method.values):
        d = data.isel(method=index)   # (`sel(method=...)` would be sel's own `method` argument)
        amp = d.amplitude.transpose("run", "time", "mode").values
        diff = d.diffusion.transpose("run", "time", "mode").values
        rows = []
        for a in modes:
            half, ninety, t_peak, a_peak = [], [], [], []
            for run in range(amp.shape[0]):
                series = amp[run, :, a]
                if not np.all(np.isfinite(series)):
                    continue
                half.append(_first_crossing(times, series, 0.5 * s[a]))
                ninety.append(_first_crossing(times, series, 0.9 * s[a]))
                reach = np.flatnonzero(series >= s[a])
                stop = reach[0] + 1 if reach.size else len(times)
                dd = diff[run, :stop, a]
                # A peak is "observed" only for a mode that was learned (reached 0.9 s).
                if np.isfinite(ninety[-1]) and np.any(np.isfinite(dd)):
                    k = int(np.nanargmax(dd))
                    t_peak.append(float(times[k]))
                    a_peak.append(float(series[k]))

            def med(x):
                x = np.asarray(x, dtype=float)
                return float(np.nanmedian(x)) if x.size and np.any(np.isfinite(x)) else None

            rows.append({
                "mode": a + 1,
                "s": float(s[a]),
                "t_half": med(half),
                "t_90": med(ninety),
                "t_peak": med(t_peak),
                "a_peak_observed": med(a_peak),
                "a_peak_predicted": (None if not np.isfinite(data.theory_peak_amplitude.values[a])
                                     else float(data.theory_peak_amplitude.values[a])),
                "runs_reaching_90": int(np.sum(np.isfinite(ninety))),
            })
        status = d.status.values
        diverged = [{"run": int(r), "step": int(k)} for r, k in
                    zip(d.run.values, d.diverged_step.values, strict=True) if k >= 0]
        out["methods"][str(method)] = {
            "label": str(d.method_label.values),
            "runs": int(status.size),
            "diverged": diverged,
            "final_loss_median": float(np.nanmedian(d.loss.transpose("run", "time").values[:, -1])),
            "modes": rows,
        }
    return out

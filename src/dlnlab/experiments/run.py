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
from ..engine import Checkpoint, Layout, Recording, Schedule, run_keys, simulate, steps_for_times
from ..theory.gradient_flow import (
    gradient_flow_curve,
    gradient_flow_time,
    half_learning_time,
    learning_time,
    reachable_modes,
)
from ..theory.peak import diffusion_peak
from ..theory.reduced import reduced_diffusion
from ..theory.stationary import stationary_moments
from .config import ExperimentConfig, config_to_toml

# Sub-keys of the root seed: one stream per purpose.
_TASK, _INIT, _NOISE, _DATA = 0, 1, 2, 3


def build_task(config: ExperimentConfig) -> Task:
    """The teacher of ``config.task`` (Haar bases from the seed's task stream), with its input
    covariance when the config sets one and its fixed data set when ``num_samples > 0``."""
    root = jax.random.key(config.seed)
    t = config.task
    task = Task.from_spectrum(jax.random.fold_in(root, _TASK), t.d_in, t.d_out, t.spectrum,
                              label_noise=t.label_noise if t.label_noise > 0 else None,
                              input_covariance=t.input_covariance_matrix(),
                              dtype=jnp.dtype(config.dtype))
    if t.num_samples:
        task = task.with_data(jax.random.fold_in(root, _DATA), t.num_samples)
    return task


def initial_weights(config: ExperimentConfig, num_runs: int | None = None, task: Task | None = None):
    """Per-run initial weights: tuple of ``(runs, d_l, d_{l-1})``; run i from ``fold_in(key, i)``.

    ``aligned``: every mode (teacher modes and the zero modes beyond its rank) at amplitude
    ``init.amplitude``, balanced, with Haar-random hidden bases per run (docs/theory.md §6's manifold).
    ``solution``: the balanced, aligned factorisation of the teacher (each teacher mode at its
    singular value, the modes beyond its rank zero in every layer): a global minimum online.
    ``init.shared``: every run starts from run 0's weights (the same key for every run), so runs
    differ only in their sampling randomness (the noise key of run i does not depend on it).
    """
    num_runs = config.runs if num_runs is None else num_runs
    keys = run_keys(jax.random.fold_in(jax.random.key(config.seed), _INIT), num_runs)
    if config.init.shared:
        keys = jnp.broadcast_to(keys[:1], keys.shape)
    return initial_weights_for_keys(config, keys, task)


def initial_weights_for_keys(config: ExperimentConfig, keys, task: Task | None = None):
    """Initial weights of the runs with init ``keys`` ``(R,)``: tuple of ``(R, d_l, d_{l-1})``
    by ``init.kind``, ``init.gamma`` and ``init.amplitude`` (``aligned``/``balanced``: one run at
    a time on the host), each moved to a global minimum of the training loss when
    ``init.at_minimum`` (:func:`dlnlab.theory.project_to_minimum`, in the task's precision)."""
    dtype = jnp.dtype(config.dtype)
    widths = config.task.widths
    if config.init.kind in ("aligned", "solution"):
        task = build_task(config) if task is None else task
        if config.init.kind == "aligned":
            amps = np.full(task.num_modes, config.init.amplitude)
        else:       # the balanced, aligned minimum: teacher modes at s, the rest zero everywhere
            spectrum = np.asarray(task.spectrum, dtype=np.float64)
            amps = spectrum[:int(np.sum(spectrum > 0))]
        runs = [init_aligned(task, amps, widths, key=k, dtype=dtype) for k in keys]
        weights = tuple(jnp.stack(layer) for layer in zip(*runs, strict=True))
    elif config.init.kind == "balanced":   # a host-side factorisation (SVD), one run at a time
        runs = [init_balanced(k, widths, config.init.gamma, dtype=dtype) for k in keys]
        weights = tuple(jnp.stack(layer) for layer in zip(*runs, strict=True))
    else:
        weights = jax.vmap(lambda k: init_gaussian(k, widths, config.init.gamma,
                                                   dtype=dtype))(keys)
    if config.init.at_minimum:
        weights = _at_minimum(weights, build_task(config) if task is None else task, dtype)
    return weights


def _at_minimum(weights, task: Task, dtype):
    """Each run's weights moved to the nearest global minimum (``project_to_minimum``, in the
    task's precision, one run at a time on the host), cast to ``dtype``."""
    from ..theory.fluctuations import project_to_minimum

    runs = [project_to_minimum(tuple(w[i] for w in weights), task)
            for i in range(weights[0].shape[0])]
    return tuple(jnp.stack([r[layer] for r in runs]).astype(dtype)
                 for layer in range(len(weights)))


#: Runs whose initial amplitudes place the adaptive record grid's windows: a fixed number, so the
#: record times (and with them every run's results) never depend on ``config.runs``.
PILOT_RUNS = 16
#: A random start learns earlier than an aligned start of the same mean amplitude (its effective
#: amplitude is larger, by a factor that grows with the width: ~3 at width 12, ~30 at width 100),
#: so the adaptive grid refines each mode from ``t = 0`` to this multiple of the aligned
#: gradient-flow prediction of ``t(0.9 s)``.
WINDOW_STRETCH = 1.5


def record_times(config: ExperimentConfig, task: Task | None = None) -> np.ndarray:
    """Record times on the learning-rate grid (so every method records at the same ``t``).

    ``record.spacing``: ``"linear"`` (``points`` evenly spaced steps), ``"log"`` (step 0 and
    ``points - 1`` log-spaced steps), ``"adaptive"`` (:func:`adaptive_record_steps`: a quarter
    linear, a quarter log-spaced, half inside the windows where gradient flow predicts each
    reachable mode's transition, so the transitions get records). At most ``points`` distinct
    times (duplicates after rounding to steps merge), always ``0`` and the horizon. Times in
    t = step x learning rate. ``task``: the experiment's task (built from ``config`` if None).
    """
    lr, n, points = config.training.learning_rate, config.training.num_steps, config.record.points
    if config.record.spacing == "linear":
        steps = np.unique(np.round(np.linspace(0, n, points)).astype(np.int64))
    elif config.record.spacing == "log":
        steps = np.unique(np.concatenate(
            [[0], np.round(np.logspace(0, np.log10(n), points - 1))]).astype(np.int64))
    else:
        steps = adaptive_record_steps(config, task)
    return steps * lr


def _pilot_amplitudes(config: ExperimentConfig, task: Task) -> np.ndarray:
    """Mean over :data:`PILOT_RUNS` runs of ``|a(0)|`` per mode (run i does not depend on the
    number of runs, so these are the experiment's first runs)."""
    weights = initial_weights(config, PILOT_RUNS, task=task)
    amps = np.asarray(jax.vmap(lambda w: core_modes.mode_amplitudes(w, task))(weights))
    return np.mean(np.abs(amps), axis=0).astype(np.float64)


def transition_windows(config: ExperimentConfig, task: Task, a0=None) -> list[tuple[float, float]]:
    """Per reachable teacher mode that gradient flow predicts to start learning inside the
    horizon: ``(end, width)``, the window ``[0, end]`` that holds its transition, with
    ``end = min(WINDOW_STRETCH * t(0.9 s), horizon)`` and ``width = t(0.9 s) - t(0.1 s)``, both
    from an aligned start at ``a0`` (docs/theory.md §7; a random start's transition comes
    earlier, its width is about the same). ``a0``: per-mode initial amplitude (default: the
    :data:`PILOT_RUNS` runs' mean ``|a(0)|``). Times in t = step x learning rate."""
    s = np.asarray(task.spectrum, dtype=np.float64)
    depth, horizon = config.task.depth, config.training.horizon
    a0 = _pilot_amplitudes(config, task) if a0 is None else np.asarray(a0, dtype=np.float64)
    reach = np.asarray(reachable_modes(s, config.task.widths)) & (s > 0) & (a0 > 0) & (a0 < 0.1 * s)
    out = []
    for k in np.flatnonzero(reach):
        t10 = float(learning_time(0.1, s[k], depth, a0[k]))
        t90 = float(learning_time(0.9, s[k], depth, a0[k]))
        if np.isfinite(t90) and t90 > t10 and t10 < horizon:
            out.append((min(WINDOW_STRETCH * t90, horizon), t90 - t10))
    return out


def adaptive_record_steps(config: ExperimentConfig, task: Task | None = None) -> np.ndarray:
    """Record steps that resolve the learning transitions within the budget ``record.points``.

    A quarter of the budget is linear over ``[0, horizon]`` (the whole run), a quarter
    log-spaced from the first step (early events at any scale), and half is shared by the
    :func:`transition_windows` ``[0, end]`` in proportion to ``end / width`` (the records a
    window needs for a given number inside its transition), evenly spaced in each. Without a window (no
    reachable mode learning inside the horizon) the half goes to the linear part. Returns the
    sorted distinct steps (0 and the last step included); the events of the run report whether
    their transitions still got too few records (``transition_records``).
    """
    task = build_task(config) if task is None else task
    n, points, lr = config.training.num_steps, config.record.points, config.training.learning_rate
    windows = transition_windows(config, task)
    n_log = points // 4
    n_windows = points // 2 if windows else 0
    n_lin = points - n_log - n_windows
    parts = [np.linspace(0, n, max(n_lin, 2)),
             np.logspace(0, np.log10(max(n, 1)), n_log) if n_log else np.zeros(0)]
    if windows:
        need = np.array([end / width for end, width in windows])
        share = np.floor(n_windows * need / need.sum()).astype(int)
        share[np.argmax(need)] += n_windows - share.sum()
        parts += [np.linspace(0.0, end / lr, k) for (end, _), k in zip(windows, share, strict=True)
                  if k > 0]
    steps = np.unique(np.clip(np.round(np.concatenate(parts)), 0, n).astype(np.int64))
    return steps


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
                  checkpoint=checkpoint, schedule=Schedule(tuple(switches)),
                  layout=Layout(product=config.product, kernel=config.kernel))
    ds = ds.assign_coords(time=np.asarray(times, dtype=np.float64))
    return ds.reset_coords("step")


#: The effective initial amplitude of a random start is fitted where the runs' median amplitude
#: first reaches this fraction of ``s`` (early, before the transition, after alignment).
FIT_FRACTION = 0.1
#: Methods whose runs the effective overlay is fitted to, in order of preference (deterministic
#: dynamics first); otherwise the first method of the experiment.
FIT_METHODS = ("gd", "gf")


def effective_initial_amplitude(times, amplitude, spectrum, depth: int,
                                fallback) -> tuple[np.ndarray, np.ndarray]:
    """Initial amplitude of the aligned gradient-flow curve through the runs' median amplitude.

    A random (unaligned) start learns earlier than an aligned start of the same mean amplitude:
    while the layers align, the mode's effective amplitude grows. The aligned solution of
    ``da/dt = L a^(2-2/L) (s - a)`` (docs/theory.md §7) that passes through the median over runs
    of ``|a(t)|`` where it first reaches ``FIT_FRACTION * s`` (at ``t*``, interpolated between
    records) starts from ``a0_eff`` with ``t(FIT_FRACTION s; a0_eff) = t*`` (root found in
    ``log a0``). ``amplitude`` ``(run, time, mode)``, ``spectrum`` ``(mode,)``; returns
    ``(a0_eff, fitted)`` per mode, ``fitted`` False where no fit exists (the median never reaches
    the level, a zero ``s``, or no start reaches it by ``t*``: depth 1 from 0) and ``fallback``
    (the aligned start) is returned instead. Where the median starts at or above the level,
    ``a0_eff`` is the median ``|a(0)|`` (capped at ``s/2``).
    """
    from scipy.optimize import brentq

    from ..analysis.events import crossing_times

    t = np.asarray(times, dtype=np.float64)
    s = np.asarray(spectrum, dtype=np.float64)
    med = np.median(np.abs(np.asarray(amplitude, dtype=np.float64)), axis=0)     # (time, mode)
    a0 = np.asarray(fallback, dtype=np.float64).copy()
    fitted = np.zeros(s.size, dtype=bool)
    for k in np.flatnonzero(s > 0):
        level = FIT_FRACTION * s[k]
        if not np.all(np.isfinite(med[:, k])):
            continue
        if med[0, k] >= level:
            a0[k], fitted[k] = min(med[0, k], 0.5 * s[k]), True
            continue
        t_star = float(crossing_times(t, med[:, k], level))
        if not np.isfinite(t_star) or t_star <= 0:
            continue

        def gap(x, k=k, level=level, t_star=t_star):
            return float(gradient_flow_time(level, s[k], depth, np.exp(x))) - t_star

        lo, hi = np.log(level) - 60.0, np.log(level) - 1e-9
        if not (gap(lo) > 0 > gap(hi)):
            continue
        a0[k], fitted[k] = float(np.exp(brentq(gap, lo, hi, xtol=1e-12, rtol=1e-10))), True
    return a0, fitted


def theory_overlays(config: ExperimentConfig, task: Task, weights, times,
                    measured: xr.Dataset | None = None) -> xr.Dataset:
    """Theory beside the simulation (``plot/`` draws only these variables, never theory).

    Per mode ``(mode,)`` unless noted: ``spectrum``; ``theory_reachable`` (mode index below the
    rank bottleneck ``min(widths)``: the others stay at 0 in every method and all their theory
    values are NaN); ``theory_initial_amplitude`` (runs' mean ``|a(0)|``);
    ``theory_gf_amplitude_aligned`` ``(time, mode)``: the gradient-flow curve from an aligned,
    balanced start at that amplitude (docs/theory.md §7; it lags random starts);
    ``theory_effective_initial_amplitude`` and ``theory_gf_amplitude`` ``(time, mode)``: the
    same flow from the effective amplitude fitted to the runs of ``measured``
    (:func:`effective_initial_amplitude`; the aligned curve when ``measured`` is None or no fit
    exists, see ``theory_gf_fitted``); ``theory_t_half_aligned`` / ``theory_t_half_effective``:
    their times to ``s/2``; predicted diffusion-peak amplitudes (§8, eq. 9); the
    aligned-balanced diffusion formula ``D(a)`` on a grid of ``a / s`` in [0, 1.05] (§6);
    stationary moments (§9, label noise). Times in t = step x learning rate.
    """
    r = int(task.spectrum.shape[0])
    s = np.asarray(task.spectrum, dtype=np.float64)
    depth = config.task.depth
    lr, batch = config.training.learning_rate, config.training.batch_size
    sigma = config.task.label_noise
    amps = np.asarray(jax.vmap(lambda w: core_modes.mode_amplitudes(w, task))(weights))
    a0 = np.mean(np.abs(amps), axis=0).astype(np.float64)
    reachable = np.asarray(reachable_modes(s, config.task.widths), dtype=bool)
    grid = np.asarray(times, dtype=np.float64)
    aligned = np.full((len(times), r), np.nan)
    effective = np.full((len(times), r), np.nan)
    t_half_aligned = np.full(r, np.nan)
    t_half_effective = np.full(r, np.nan)
    peak = np.full(r, np.nan)
    stat_mean = np.full(r, np.nan)
    stat_var = np.full(r, np.nan)
    live = np.flatnonzero((s > 0) & reachable)
    fractions = np.linspace(0.0, 1.05, 200)
    formula = np.full((r, fractions.size), np.nan)
    a_start = np.minimum(a0, 0.5 * s)
    a_eff, fitted = a_start.copy(), np.zeros(r, dtype=bool)
    reference = _fit_reference(measured)
    if reference is not None:
        a_eff, fitted = effective_initial_amplitude(grid, reference.amplitude.transpose(
            "run", "time", "mode").values, s, depth, a_start)
    fitted &= reachable
    a_eff = np.where(fitted, a_eff, a_start)
    if live.size:
        for curve, start, t_half in ((aligned, a_start, t_half_aligned),
                                     (effective, a_eff, t_half_effective)):
            curve[:, live] = np.asarray(gradient_flow_curve(grid, s[live], depth, start[live])).reshape(
                len(times), live.size)
            grows = live[start[live] > 0]
            if grows.size:
                t_half[grows] = np.asarray(half_learning_time(s[grows], depth, start[grows]))
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
    fit_from = "" if reference is None else str(reference.method_name.values)
    out = xr.Dataset({
        "spectrum": ("mode", s),
        "theory_reachable": ("mode", reachable),
        "theory_initial_amplitude": ("mode", a0),
        "theory_gf_amplitude_aligned": (("time", "mode"), aligned),
        "theory_effective_initial_amplitude": ("mode", a_eff),
        "theory_gf_fitted": ("mode", fitted),
        "theory_gf_amplitude": (("time", "mode"), effective),
        "theory_t_half_aligned": ("mode", t_half_aligned),
        "theory_t_half_effective": ("mode", t_half_effective),
        "theory_peak_amplitude": ("mode", peak),
        "theory_stationary_mean": ("mode", stat_mean),
        "theory_stationary_variance": ("mode", stat_var),
        "theory_diffusion_formula": (("mode", "normalised_amplitude"), formula),
    }, coords={"time": grid, "normalised_amplitude": fractions, "mode": np.arange(1, r + 1)})
    out.theory_reachable.attrs["description"] = (
        "mode index < min(widths): the rank bottleneck lets the network learn it")
    out.theory_gf_amplitude_aligned.attrs.update(
        long_name="gradient flow, aligned start",
        description="aligned, balanced gradient-flow curve from the runs' mean |a(0)| "
                    "(docs/theory.md §7); random starts learn earlier than this curve")
    out.theory_gf_amplitude.attrs.update(
        long_name=f"gradient flow, effective start (fitted to {fit_from or 'nothing: aligned'})",
        description=f"aligned gradient-flow curve through the median |a| of the {fit_from or '-'} "
                    f"runs where it first reaches {FIT_FRACTION:g} s (effective initial amplitude "
                    "theory_effective_initial_amplitude); equals the aligned curve where "
                    "theory_gf_fitted is false")
    for name, text in _OVERLAY_DESCRIPTIONS.items():
        out[name].attrs.setdefault("description", text)
    out.attrs["theory_gf_fitted_to"] = fit_from
    return out


_OVERLAY_DESCRIPTIONS = {
    "spectrum": "teacher singular values s (the task's, padded with zeros to min(d_in, d_out))",
    "theory_initial_amplitude": "mean over runs of |a(0)|, the mode amplitude at t = 0",
    "theory_effective_initial_amplitude": "initial amplitude of the aligned gradient-flow curve "
    "through the fitted runs' median |a| where it first reaches 0.1 s (docs/theory.md §7)",
    "theory_gf_fitted": "whether theory_gf_amplitude was fitted to the runs (false: the aligned "
    "curve)",
    "theory_t_half_aligned": "gradient-flow time to s/2 from the aligned start "
    "theory_initial_amplitude (t = step x learning rate; docs/theory.md §7)",
    "theory_t_half_effective": "gradient-flow time to s/2 from "
    "theory_effective_initial_amplitude (t = step x learning rate)",
    "theory_peak_amplitude": "predicted amplitude of the diffusion peak (paper eq. 9, "
    "docs/theory.md §8); NaN where no interior peak exists",
    "theory_stationary_mean": "mean of the stationary law of the reduced SDE by quadrature "
    "(docs/theory.md §9); NaN without label noise or where no law exists",
    "theory_stationary_variance": "variance of the stationary law of the reduced SDE by "
    "quadrature (docs/theory.md §9); NaN without label noise or where no law exists",
    "theory_diffusion_formula": "aligned, balanced diffusion D(a) of the reduced SDE on the grid "
    "a = normalised_amplitude x s (docs/theory.md §6)",
}


def _fit_reference(measured: xr.Dataset | None):
    """The method of ``measured`` the effective overlay is fitted to (:data:`FIT_METHODS` first,
    else the first method), or None."""
    if measured is None or "amplitude" not in measured:
        return None
    names = [str(m) for m in measured.method_name.values]
    name = next((m for m in FIT_METHODS if m in names), names[0])
    return measured.sel(method_name=name)


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
                   partial_dir=None, checkpoint_seconds: float = 60.0) -> xr.Dataset:
    """Run every method of ``config``; one Dataset with a ``method_name`` dimension.

    ``progress_factory(method, total_steps)`` returns a ``progress(done, total)`` callback.
    ``checkpoint_dir``: per-method checkpoints (resumed when present), written every
    ``checkpoint_seconds`` of wall time. ``partial_dir``: each
    finished method's dataset is saved there and reused on a rerun (an interrupted experiment
    restarts at the method it was in).
    """
    from ..io.atomic import atomic_write_dataset

    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64': enable x64 first (jax.config.update('jax_enable_x64', True)); "
                         "the dlnlab CLI does it")
    task = build_task(config)
    weights = initial_weights(config, task=task)
    times = record_times(config, task)
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
        ckpt = (None if checkpoint_dir is None
                else Checkpoint(checkpoint_dir / f"{method}.npz", checkpoint_seconds))
        t0 = time.perf_counter()
        ds = run_method(config, method, task, weights, times, progress=progress, checkpoint=ckpt,
                        prepared=prepared[method])
        ds.attrs["wall_seconds"] = time.perf_counter() - t0
        timings[method] = ds.attrs["wall_seconds"]
        if partial is not None:
            atomic_write_dataset(ds, partial)
        parts.append(ds)
    products = [str(ds.attrs.get("layout_product", "")) for ds in parts]
    step_kernels = [str(ds.attrs.get("step_kernel", "")) for ds in parts]
    for ds in parts:
        for key in ("method", "compile_seconds", "run_seconds", "run_steps_per_second", "wall_seconds",
                    "layout_product", "step_kernel"):
            ds.attrs.pop(key, None)
    data = xr.concat(parts, dim="method_name", coords="minimal", compat="override", join="outer")
    data = data.assign_coords(method_name=list(config.methods),
                              method_label=("method_name", [get_method(m).label for m in config.methods]),
                              method_colour=("method_name", [get_method(m).colour
                                                        for m in config.methods]),
                              step_size=("method_name", [config.step_size(m) for m in config.methods]),
                              layout_product=("method_name", products),
                              step_kernel=("method_name", step_kernels))
    overlays = theory_overlays(config, task, weights, times, measured=data)
    data = data.merge(overlays)
    if "isotropic" in prepared:   # each run's own matched temperature (run i never depends on runs)
        data["isotropic_temperature"] = ("run", np.broadcast_to(np.asarray(
            prepared["isotropic"]["temperatures"], dtype=np.float64), (config.runs,)).copy())
    else:
        data["isotropic_temperature"] = 0.0
    data.attrs.update(provenance(config))
    data.attrs.update(learning_rate=config.training.learning_rate,
                      batch_size=config.training.batch_size, label_noise=config.task.label_noise,
                      depth=config.task.depth)
    data.attrs["config_toml"] = config_to_toml(config)
    data.attrs["timings_seconds"] = ", ".join(f"{m}={t:.2f}" for m, t in timings.items())
    data.attrs["time_units"] = "t = step * learning rate (step * h for the SDEs)"
    data.attrs["theory_gf_fitted_to"] = overlays.attrs["theory_gf_fitted_to"]
    return data


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def summarise(data: xr.Dataset) -> dict:
    """Per method and teacher mode (``s > 0``), from the one learning-event rule
    (:func:`dlnlab.analysis.learning_events`); times in t = step x learning rate.

    Every time to an event (``t_half``, ``t_90``: first ``a >= 0.5 s`` / ``0.9 s``; ``t_peak``:
    the observed diffusion peak, the maximum of ``D_a`` up to the first record where
    ``a >= s``, an event only for a run that reached ``0.9 s``) is a
    :func:`~dlnlab.analysis.stats.censored_median` dict (Kaplan-Meier median and 95% interval,
    ``crossed`` of ``runs``, ``horizon``): a run without the event is censored at the last record
    time, or at its divergence. ``a_peak_observed``: median amplitude at the peak over the
    ``a_peak_runs`` runs that reached ``0.9 s``. ``records_across_transition``: median over runs
    of the records in ``[t(0.1 s), t(0.9 s)]``; ``resolved`` False when it is below
    :data:`~dlnlab.analysis.events.MIN_TRANSITION_RECORDS` (the grid cannot resolve the events;
    None when no run completed the transition). ``reachable``: below the rank bottleneck (an
    unreachable mode has no event statistics). Theory: ``t_half_theory_aligned`` /
    ``t_half_theory_effective`` (:func:`theory_overlays`), ``a_peak_predicted``.
    """
    from ..analysis.events import MIN_TRANSITION_RECORDS
    from ..analysis.stats import censored_median

    s = data.spectrum.values
    modes = [int(a) for a in np.flatnonzero(s > 0)]
    reachable = (data.theory_reachable.values if "theory_reachable" in data
                 else np.ones(s.size, dtype=bool))
    t = data.time.values
    horizon = float(t[-1])
    out = {"methods": {}, "horizon": horizon, "min_transition_records": MIN_TRANSITION_RECORDS}

    def theory(name, a):
        return _finite_or_none(data[name].values[a]) if name in data else None

    for index, method in enumerate(data.method_name.values):
        d = data.isel(method_name=index)
        events = learning_events(d).transpose("run", "mode")
        step_size = float(d.step_size.values) if "step_size" in d.coords else float("nan")
        diverged_at = np.where(d.diverged_step.values >= 0, d.diverged_step.values * step_size, horizon)
        censor = np.clip(np.nan_to_num(diverged_at, nan=horizon), 0.0, horizon)
        rows = []
        for a in modes:
            row = {"mode": a + 1, "s": float(s[a]), "reachable": bool(reachable[a]),
                   "t_half_theory_aligned": theory("theory_t_half_aligned", a),
                   "t_half_theory_effective": theory("theory_t_half_effective", a),
                   "a_peak_predicted": theory("theory_peak_amplitude", a)}
            if not reachable[a]:
                rows.append(row | {"t_half": None, "t_90": None, "t_peak": None,
                                   "a_peak_observed": None, "a_peak_runs": 0,
                                   "records_across_transition": None, "resolved": None,
                                   "runs_reaching_90": 0})
                continue
            ninety = events.t_90.values[:, a]
            learned = np.isfinite(ninety)
            records = events.transition_records.values[:, a]
            across = float(np.median(records[np.isfinite(records)])) if np.any(np.isfinite(records)) else None
            peak_t = np.where(learned, events.t_peak.values[:, a], np.nan)
            row.update({
                "t_half": censored_median(events.t_half.values[:, a], censor),
                "t_90": censored_median(ninety, censor),
                "t_peak": censored_median(peak_t, censor),
                "a_peak_observed": (float(np.median(events.a_at_peak.values[learned, a]))
                                    if learned.any() else None),
                "a_peak_runs": int(learned.sum()),
                "records_across_transition": across,
                "resolved": None if across is None else bool(across >= MIN_TRANSITION_RECORDS),
                "runs_reaching_90": int(learned.sum()),
            })
            rows.append(row)
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

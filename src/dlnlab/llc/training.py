"""The local learning coefficient along saddle-to-saddle training, and at single points
(docs/llc.md, "Along training"; issue 14).

**A test of a conjecture.** The saddle-to-saddle picture suggests that while training sits on the
plateau after learning ``r`` modes, the estimated local learning coefficient is near the exact
coefficient ``lambda(widths, r)`` of the rank-``r`` truncation of the teacher (Aoyagi 2024,
:func:`dlnlab.theory.learning_coefficient.learning_coefficient`). That exact value belongs to the
*true parameter* of a rank-``r`` teacher; a plateau of training is a saddle of the rank-``R``
teacher's loss, not a minimum, so the estimator's localised posterior is not guaranteed to stay
there and nothing guarantees agreement: the dataset reports both side by side with the sampler's
health diagnostics.

Procedure (:func:`learning_coefficient_along_training`): the experiment ``config`` (default: the
first paper's task, ``examples/paper_default.toml``: d = 12, L = 4, s = (1, 2/3, 1/3), init variance
d^-2, learning rate 0.01, online SGD with batch 1 and GD) is trained with the project's engine
(:func:`dlnlab.experiments.run.run_method`), recording the flattened weights (``parameters``) and
the mode amplitudes on the experiment's record grid (:func:`dlnlab.experiments.run.record_times`,
which refines the predicted transitions); ``num_checkpoints`` checkpoints are taken evenly by index
of that grid (so they are denser where the transitions are). At every checkpoint of every method
and run:

- ``learning_coefficient``: the SGLD estimate :func:`dlnlab.llc.estimate_learning_coefficient` on
  the task's training loss (:func:`dlnlab.llc.task_loss_model`: the population loss online, with
  ``n = num_samples``, ``n beta = n / log n``);
- ``rank_learned``: the number of teacher modes learned, by the project's one event rule
  (:func:`dlnlab.analysis.events.crossing_times`): mode ``k`` is learned at time ``t`` once its
  amplitude has reached ``LEARNED_FRACTION s_k = 0.9 s_k`` at or before ``t`` (the ``t_90`` of
  ``dlnlab run``'s summary);
- ``exact_truncation_coefficient``: ``lambda(widths, rank_learned)``;
- ``escape_reference``: ``lambda(widths, R) - n beta (L_n(w0) - min L_n)`` with ``R`` the rank
  of the global minimum (teacher rank, at most the narrowest width): the value the estimate takes
  if the chains leave the checkpoint and equilibrate at the global minimum instead of staying
  local. On the paper's task every estimate, on plateaus too, lies within 10 of it (docs/llc.md).

Chains' keys: ``fold_in(key(seed), LLC_STREAM)``, then the method's index in the registry, the
run and the checkpoint (a result does not depend on which other methods, runs or checkpoints were
asked for). Time is ``t = step x learning rate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import xarray as xr

from .. import _validation as v
from ..analysis.events import crossing_times
from ..core.products import unflatten_weights
from ..dynamics.registry import get_method, method_names
from ..experiments.config import ExperimentConfig, config_to_toml, validate_config
from ..experiments.run import build_task, initial_weights, record_times, run_method
from ..theory.learning_coefficient import learning_coefficient
from .loss_model import task_loss_model
from .sampler import SamplerSettings, sampler_settings

LLC_STREAM = 7
"""Sub-key of the experiment's root seed for the estimator's chains (the run uses 0-3: task,
initial weights, noise, data)."""
LEARNED_FRACTION = 0.9
"""A mode counts as learned once its amplitude has reached this fraction of its singular value
(the project's ``t_90`` event, :mod:`dlnlab.analysis.events`)."""
DEFAULT_NUM_SAMPLES = 100_000
"""``n`` of the population loss's tempered posterior (``n beta = n / log n``)."""
DEFAULT_CHECKPOINTS = 16
DEFAULT_METHODS = ("gd", "sgd")
DEFAULT_RUNS = 4
"""Runs per method when no config is given (the built-in config's 32 runs are for ``dlnlab run``)."""
ALONG_TRAINING_STEP_SIZE = 5e-6
"""SGLD step size of the default settings here (the published ``5e-7`` otherwise; gamma = 1,
4 chains, 9,000 burn-in steps, 1,000 draws). Measured on the paper's task (docs/llc.md, "Along
training"): at the end of training ``5e-7`` keeps every chain's acceptance at 1.00 but the chains
still drift after 10,000 steps (all flagged not stationary, estimate 32 against the exact 57);
``5e-6`` keeps the mean acceptance at 0.97 with at most one chain of four flagged (estimate 49.5);
``5e-5`` drops it to 0.48."""
RECORDED = ("loss", "amplitude", "diffusion", "parameters")
AT_CHOICES = ("init", "solution", "end")
CONJECTURE = ("test of a conjecture: the exact coefficient is that of the true parameter of the "
              "rank-r truncation of the teacher; training checkpoints on a plateau are near saddles "
              "of the full teacher's loss, where no theorem says the local learning coefficient "
              "takes that value")


def along_training_settings(**fields) -> SamplerSettings:
    """The estimator's settings used here: :class:`~dlnlab.llc.SamplerSettings` with
    ``step_size = ALONG_TRAINING_STEP_SIZE`` unless ``fields`` sets it. One-line ``ValueError`` for a
    bad field."""
    return sampler_settings(**{"step_size": ALONG_TRAINING_STEP_SIZE, **fields})


def training_config(config: ExperimentConfig | None = None, *, methods: Sequence[str] | None = None,
                    runs: int | None = None, init_kind: str | None = None) -> ExperimentConfig:
    """``config`` (default: the built-in paper task in float64 with :data:`DEFAULT_RUNS` runs)
    with ``methods`` (default :data:`DEFAULT_METHODS`), ``runs`` and ``init.kind`` set and the
    observables :data:`RECORDED` (``parameters``: the flattened weights) recorded.

    Raises:
        ValueError: one line, e.g. a method whose state is not the weights (``reduced``).
    """
    if config is not None and not isinstance(config, ExperimentConfig):
        v.fail("config", type(config).__name__, "must be a dlnlab ExperimentConfig (load_config)")
    data = {"dtype": "float64", "runs": DEFAULT_RUNS} if config is None else \
        config.model_dump(mode="python", exclude_none=True)
    data["methods"] = list(DEFAULT_METHODS if methods is None else methods)
    if runs is not None:
        data["runs"] = runs
    if init_kind is not None:
        data.setdefault("init", {})["kind"] = init_kind
    data.setdefault("record", {})["variables"] = list(RECORDED)
    return validate_config(data)


def load_training_config(path=None, overrides: Sequence[str] = ()) -> tuple[ExperimentConfig, dict]:
    """An experiment config and sampler fields from a TOML file and ``key=value`` overrides (the
    ``dlnlab llc`` door). Without a file the base is the built-in paper task; a file (or the
    built-in task) that sets no ``dtype`` or ``runs`` gets float64 and :data:`DEFAULT_RUNS` runs
    here (``dlnlab run``'s 32 runs would mean 1,024 estimates along training). Overrides
    ``sampler.<field>=value`` go to the sampler fields (checked against
    :class:`~dlnlab.llc.SamplerSettings` here, with the closest valid name suggested), all
    others to the experiment config (``dlnlab run``'s ``--set``).

    Returns:
        ``(config, sampler_fields)``; ``along_training_settings(**sampler_fields)`` gives the settings.

    Raises:
        ValueError: one line ``field=value: rule`` for a bad file, key or value.
    """
    import difflib

    from ..experiments.config import apply_override, parse_override, read_toml

    data = read_toml(path) if path is not None else {}
    data.setdefault("dtype", "float64")
    data.setdefault("runs", DEFAULT_RUNS)
    sampler_fields: dict = {}
    valid = list(SamplerSettings.model_fields)
    for item in overrides:
        if isinstance(item, str) and item.strip().startswith("sampler."):
            key, value = parse_override(item)
            name = key.removeprefix("sampler.")
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
                hint = f"did you mean sampler.{close[0]}?" if close else f"valid: {', '.join(valid)}"
                v.fail(key, value, f"unknown sampler field; {hint}")
            sampler_fields[name] = value
        else:
            apply_override(data, item)
    try:
        along_training_settings(**sampler_fields)
    except ValueError as error:
        raise ValueError(f"sampler.{error}") from None
    return validate_config(data), sampler_fields


def checkpoint_times(config: ExperimentConfig, num_checkpoints: int, task=None) -> np.ndarray:
    """``num_checkpoints`` times taken evenly by index from the experiment's record grid
    (:func:`dlnlab.experiments.run.record_times`: denser inside the predicted transitions),
    always ``0`` and the horizon; fewer when the grid has fewer points. Shape ``(checkpoint,)``,
    t = step x learning rate."""
    grid = record_times(config, task)
    index = np.unique(np.round(np.linspace(0, grid.size - 1, num_checkpoints)).astype(int))
    return grid[index]


def learned_rank(times, amplitude, spectrum, at_times) -> np.ndarray:
    """Teacher modes learned by each of ``at_times``: mode ``k`` counts once its amplitude has
    reached ``LEARNED_FRACTION s_k`` at or before that time (first crossing,
    :func:`dlnlab.analysis.events.crossing_times`).

    Args:
        times: record times ``(time,)``. amplitude: ``(..., time, mode)``. spectrum: ``s``
            ``(mode,)`` (modes with ``s = 0`` never count). at_times: ``(checkpoint,)``.

    Returns:
        integers ``(..., checkpoint)``.
    """
    s = np.asarray(spectrum, dtype=np.float64)
    a = np.moveaxis(np.asarray(amplitude, dtype=np.float64), -1, -2)      # (..., mode, time)
    crossed = crossing_times(times, a[..., : s.size, :], LEARNED_FRACTION * s)   # (..., mode)
    crossed = np.where(s > 0, crossed, np.nan)
    at = np.asarray(at_times, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.sum(crossed[..., None, :] <= at[:, None], axis=-1).astype(np.int64)


def minimum_loss(loss_model, max_rank: int) -> float:
    """The smallest loss of any end-to-end map of rank <= ``max_rank`` under ``loss_model``:

        min L = 0.5 (t_yy - sum_{k <= max_rank} sigma_k(S_yx S_xx^{-1/2})^2)

    (substitute ``V = W S_xx^{1/2}``, then Eckart-Young; the pseudo-inverse square root on a
    singular ``S_xx``). For the whitened population loss this is ``0.5 tr(S_eps) + 0.5 sum_{k >
    max_rank} s_k^2``. Used for the escape reference of :func:`learning_coefficient_along_training`."""
    sxx = np.asarray(loss_model.input_moment, dtype=np.float64)
    syx = np.asarray(loss_model.cross_moment, dtype=np.float64)
    values, vectors = np.linalg.eigh(0.5 * (sxx + sxx.T))
    keep = values > values.max(initial=0.0) * 1e-12
    inverse_root = (vectors[:, keep] / np.sqrt(values[keep])) @ vectors[:, keep].T
    singular = np.linalg.svd(syx @ inverse_root, compute_uv=False)
    return float(0.5 * (float(loss_model.target_moment) - np.sum(singular[:max_rank] ** 2)))


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        v.fail(name, value, f"must be an integer >= {low}")
    return int(value)


def _settings(settings) -> SamplerSettings:
    if settings is None:
        return along_training_settings()
    if not isinstance(settings, SamplerSettings):
        v.fail("settings", type(settings).__name__, "must be a dlnlab.llc.SamplerSettings")
    return settings


def _check_x64(config: ExperimentConfig) -> None:
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        v.fail("dtype", "float64", "enable x64 first (jax.config.update('jax_enable_x64', True)); "
                                   "the dlnlab CLI does it")


def _chain_key(config: ExperimentConfig, method: str, run: int, checkpoint: int):
    key = jax.random.fold_in(jax.random.key(config.seed), LLC_STREAM)
    for part in (method_names().index(method), run, checkpoint):
        key = jax.random.fold_in(key, part)
    return key


def _exact(widths: tuple[int, ...], rank: int):
    if rank < 0:
        return np.nan, -1
    result = learning_coefficient(widths, rank)
    return float(result.value), int(result.multiplicity)


def _estimate(weights, model, key, settings):
    """One estimate's summary numbers (NaN when the weights are not finite)."""
    from .sampler import estimate_learning_coefficient

    if not all(np.all(np.isfinite(np.asarray(w))) for w in weights):
        return {"learning_coefficient": np.nan, "learning_coefficient_standard_error": np.nan,
                "chain_spread": np.nan, "mean_acceptance": np.nan, "chains_used": 0,
                "initial_loss": np.nan,
                "flagged_chains": 0, "warning_count": 1,
                "warnings": "training run diverged: no estimate"}, None
    est = estimate_learning_coefficient(weights, model, key, settings, warn=False)
    chains = est.chain_learning_coefficient.values[~est.diverged.values]
    flagged = est.diverged.values | est.left_localisation.values | est.not_stationary.values
    text = str(est.attrs["warnings"])
    return {"learning_coefficient": float(est.learning_coefficient),
            "learning_coefficient_standard_error": float(est.learning_coefficient_standard_error),
            "chain_spread": float(np.std(chains, ddof=1)) if chains.size > 1 else np.nan,
            "mean_acceptance": float(np.nanmean(est.mean_acceptance.values)),
            "chains_used": int(est.attrs["num_chains_used"]), "flagged_chains": int(flagged.sum()),
            "warning_count": len(text.split("; ")) if text else 0, "warnings": text,
            "initial_loss": float(est.attrs["initial_loss"])}, est


_PER_ESTIMATE = ("learning_coefficient", "learning_coefficient_standard_error", "chain_spread",
                 "initial_loss",
                 "mean_acceptance", "chains_used", "flagged_chains", "warning_count", "warnings")


def _prepare(config: ExperimentConfig, num_samples: int):
    """``(task, loss model, widths, spectrum, teacher rank, initial weights)`` of a checked config
    (float64 required)."""
    _check_x64(config)
    task = build_task(config)
    model = task_loss_model(task, num_samples=num_samples)
    widths = tuple(int(w) for w in config.task.widths)
    spectrum = np.asarray(task.spectrum, dtype=np.float64)
    teacher_rank = int(np.sum(spectrum > 0))
    return task, model, widths, spectrum, teacher_rank, initial_weights(config, task=task)


def learning_coefficient_along_training(
        config: ExperimentConfig | None = None, *, methods: Sequence[str] = DEFAULT_METHODS,
        runs: int | None = None, num_checkpoints: int = DEFAULT_CHECKPOINTS,
        num_samples: int = DEFAULT_NUM_SAMPLES, settings: SamplerSettings | None = None,
        progress_factory: Callable | None = None) -> xr.Dataset:
    """The estimated local learning coefficient at checkpoints of training, beside the exact
    coefficient of the rank-r truncation of the teacher (module docstring: a test of a conjecture).

    Args:
        config: the experiment (:class:`~dlnlab.experiments.ExperimentConfig`; default the
            built-in paper task in float64). Its ``methods`` and ``record.variables`` are replaced.
        methods: registered methods that act on the weights (default GD and online SGD).
        runs: runs per method (default: the config's, or :data:`DEFAULT_RUNS` without a config).
        num_checkpoints: checkpoints per run, >= 2 (:func:`checkpoint_times`).
        num_samples: ``n`` of the population loss (ignored for a task with a data set, whose
            size is ``n``).
        settings: the estimator's settings (default :func:`along_training_settings`).
        progress_factory: ``factory(label, total) -> update(done, total)`` (as for
            :func:`~dlnlab.experiments.run_experiment`): training steps, then estimates.

    Returns:
        ``xr.Dataset`` with dims ``method_name`` (as ``dlnlab run``'s results: ``method`` would
        clash with ``Dataset.sel``'s ``method`` argument), ``run``, ``checkpoint`` (and ``mode``):
        ``time`` ``(checkpoint,)`` (a coordinate, t = step x learning rate); per ``(method_name,
        run, checkpoint)``: ``learning_coefficient``, ``learning_coefficient_standard_error`` (chains'
        spread / sqrt(chains used)), ``chain_spread`` (standard deviation over chains),
        ``rank_learned``, ``exact_truncation_coefficient`` and
        ``exact_truncation_multiplicity`` (``lambda(widths, rank_learned)``), ``loss`` (the
        training loss of the run), ``mean_acceptance`` (mean over the chains), ``chains_used``,
        ``flagged_chains`` (diverged, left the localisation region or not stationary),
        ``initial_loss`` (``L_n(w0)``), ``escape_reference`` (``lambda(widths, teacher rank) -
        n beta (L_n(w0) - min L_n)``, :func:`minimum_loss` with the narrowest width),
        ``warning_count`` and ``warnings`` (the estimator's messages), ``amplitude`` (+ ``mode``);
        ``spectrum`` ``(mode,)``; ``training_loss`` ``(method_name, run, record_time)`` on the whole
        record grid; coords ``method_label``, ``method_colour``; attrs: ``description`` (a test
        of a conjecture), the sampler settings, ``num_samples``, ``inverse_temperature``,
        ``widths``, the exact coefficient of the true parameter, the resolved config.

    Raises:
        ValueError: one line for a bad config, method, count or setting (before any work).
    """
    settings = _settings(settings)
    num_checkpoints = _check_int("num_checkpoints", num_checkpoints, 2)
    num_samples = _check_int("num_samples", num_samples, 2)
    if isinstance(methods, str):
        methods = [methods]
    config = training_config(config, methods=methods,
                             runs=(DEFAULT_RUNS if config is None else None) if runs is None else runs)
    task, model, widths, spectrum, teacher_rank, weights = _prepare(config, num_samples)
    times = record_times(config, task)
    checkpoints = checkpoint_times(config, num_checkpoints, task)
    at = np.searchsorted(times, checkpoints)
    shape = (len(config.methods), config.runs, checkpoints.size)
    out = {name: np.full(shape, np.nan) for name in _PER_ESTIMATE if name != "warnings"}
    out["warnings"] = np.full(shape, "", dtype=object)
    rank = np.zeros(shape, dtype=np.int64)
    loss = np.full(shape, np.nan)
    amplitude = np.full(shape + (spectrum.size,), np.nan)
    training_loss = np.full((len(config.methods), config.runs, times.size), np.nan)
    nbeta = None
    for i, method in enumerate(config.methods):
        steps_total = int(round(times[-1] / config.step_size(method)))
        progress = None if progress_factory is None else progress_factory(f"{method} training",
                                                                           steps_total)
        ds = run_method(config, method, task, weights, times, progress=progress)
        amps = ds.amplitude.transpose("run", "time", "mode").values
        rank[i] = learned_rank(times, amps, spectrum, checkpoints)
        training_loss[i] = ds.loss.transpose("run", "time").values
        loss[i] = training_loss[i][:, at]
        amplitude[i] = amps[:, at, :]
        params = ds.parameters.transpose("run", "time", "parameter").values
        update = (None if progress_factory is None
                  else progress_factory(f"{method} estimates", config.runs * checkpoints.size))
        for run in range(config.runs):
            for c in range(checkpoints.size):
                point = unflatten_weights(params[run, at[c]], widths)
                numbers, est = _estimate(point, model, _chain_key(config, method, run, c), settings)
                if est is not None:
                    nbeta = est.attrs["inverse_temperature"]
                for name in _PER_ESTIMATE:
                    out[name][i, run, c] = numbers[name]
                if update is not None:
                    update(run * checkpoints.size + c + 1, config.runs * checkpoints.size)
    exact = {r: _exact(widths, r) for r in np.unique(rank)}
    true_value, true_multiplicity = _exact(widths, min(teacher_rank, min(widths)))
    floor = minimum_loss(model, min(widths))
    escape = true_value - (np.nan if nbeta is None else nbeta) * (out["initial_loss"] - floor)
    dims = ("method_name", "run", "checkpoint")
    data = xr.Dataset(
        {
            "learning_coefficient": (dims, out["learning_coefficient"], {
                "long_name": "estimated local learning coefficient", "units": "1"}),
            "learning_coefficient_standard_error": (dims, out["learning_coefficient_standard_error"],
                                                    {"units": "1", "description": "standard deviation "
                                                     "over the chains / sqrt(chains used)"}),
            "chain_spread": (dims, out["chain_spread"], {
                "units": "1", "description": "standard deviation of the per-chain estimates"}),
            "rank_learned": (dims, rank, {
                "description": f"teacher modes whose amplitude reached {LEARNED_FRACTION} s_k at or "
                               "before the checkpoint (analysis.events.crossing_times)"}),
            "exact_truncation_coefficient": (dims, np.vectorize(lambda r: exact[r][0],
                                                                otypes=[float])(rank), {
                "long_name": "exact coefficient of the rank-r truncation of the teacher",
                "units": "1", "description": "learning_coefficient(widths, rank_learned) (Aoyagi "
                                             "2024); " + CONJECTURE}),
            "exact_truncation_multiplicity": (dims, np.vectorize(lambda r: exact[r][1],
                                                                 otypes=[np.int64])(rank)),
            "loss": (dims, loss, {"long_name": "training loss at the checkpoint", "units": "loss"}),
            "initial_loss": (dims, out["initial_loss"], {
                "long_name": "L_n(w0): the estimator's loss at the checkpoint", "units": "loss"}),
            "escape_reference": (dims, escape, {
                "long_name": "lambda(true parameter) - n beta (L_n(w0) - min L_n)", "units": "1",
                "description": "what the estimate would be if the chains left the checkpoint and "
                               "equilibrated at the global minimum (lambda there exact): a "
                               "reference that explains estimates far below the exact values"}),
            "mean_acceptance": (dims, out["mean_acceptance"], {
                "units": "1", "description": "MALA acceptance probability, mean over the chains"}),
            "chains_used": (dims, out["chains_used"].astype(np.int64)),
            "flagged_chains": (dims, out["flagged_chains"].astype(np.int64), {
                "description": "chains that diverged, left the localisation region or are not "
                               "stationary"}),
            "warning_count": (dims, out["warning_count"].astype(np.int64)),
            "warnings": (dims, out["warnings"]),
            "amplitude": (dims + ("mode",), amplitude, {"long_name": "mode amplitude u_k^T W v_k"}),
            "spectrum": (("mode",), spectrum),
            "training_loss": (("method_name", "run", "record_time"), training_loss, {
                "long_name": "training loss on the record grid", "units": "loss"}),
        },
        coords={"method_name": list(config.methods), "run": np.arange(config.runs),
                "method_label": ("method_name", [get_method(m).label for m in config.methods]),
                "method_colour": ("method_name", [get_method(m).colour for m in config.methods]),
                "record_time": ("record_time", times, {"units": "t = step x learning rate"}),
                "checkpoint": np.arange(checkpoints.size),
                "time": ("checkpoint", checkpoints, {"units": "t = step x learning rate"}),
                "mode": np.arange(1, spectrum.size + 1)},
        attrs={
            "title": "local learning coefficient along training",
            "description": CONJECTURE,
            "conjecture": "on a plateau after learning r modes the estimate is near "
                          "learning_coefficient(widths, r)",
            "widths": list(widths), "teacher_rank": teacher_rank,
            "true_parameter_coefficient": true_value,
            "true_parameter_multiplicity": true_multiplicity,
            "minimum_loss": floor,
            "num_samples": model.num_samples,
            "inverse_temperature": np.nan if nbeta is None else float(nbeta),
            "learned_fraction": LEARNED_FRACTION,
            **{f"sampler_{name}": ("none" if value is None else value)
               for name, value in settings.model_dump().items()},
            "config_toml": config_to_toml(config),
            "source": "docs/llc.md 'Along training'; Lau et al. (AISTATS 2025) Alg. 1; Aoyagi (2024)",
        },
    )
    return data


def learning_coefficient_at(config: ExperimentConfig | None = None, at: str = "solution", *,
                            method: str = "gd", run: int = 0,
                            num_samples: int = DEFAULT_NUM_SAMPLES,
                            settings: SamplerSettings | None = None,
                            progress_factory: Callable | None = None,
                            warn: bool = True) -> xr.Dataset:
    """The estimate at one point of an experiment, with the exact value where one applies.

    ``at``: ``"init"`` (run ``run``'s initial weights; no exact value: for a teacher of rank
    > 0 the start is not a critical point), ``"solution"`` (the balanced, aligned factorisation of
    the teacher, ``init.kind = "solution"``: a true parameter, exact value
    ``learning_coefficient(widths, teacher rank)``), ``"end"`` (the weights of run ``run`` of
    ``method`` at the horizon; exact value of the rank-r truncation for the ``r`` modes learned,
    which is the true parameter's when every mode is learned). ``warn``: emit
    :class:`~dlnlab.llc.LearningCoefficientWarning` for unhealthy chains (the messages are in
    ``attrs["warnings"]`` either way).

    Returns:
        the estimator's dataset (:func:`dlnlab.llc.estimate_learning_coefficient`) with attrs
        ``at``, ``method``, ``run``, ``time``, ``rank_learned``, ``exact_learning_coefficient``
        (NaN where none applies), ``exact_multiplicity`` (-1 there), ``exact_description``.

    Raises:
        ValueError: one line for a bad ``at``, method, run, count or setting.
    """
    from .sampler import estimate_learning_coefficient

    if at not in AT_CHOICES:
        v.fail("at", at, f"must be one of {', '.join(AT_CHOICES)} (or 'along')")
    settings = _settings(settings)
    num_samples = _check_int("num_samples", num_samples, 2)
    run = _check_int("run", run, 0)
    runs = run + 1
    config = training_config(config, methods=[method], runs=runs,
                             init_kind="solution" if at == "solution" else None)
    task, model, widths, spectrum, teacher_rank, weights = _prepare(config, num_samples)
    time = 0.0
    if at == "end":
        times = record_times(config, task)
        steps_total = int(round(times[-1] / config.step_size(method)))
        progress = None if progress_factory is None else progress_factory(f"{method} training",
                                                                           steps_total)
        ds = run_method(config, method, task, weights, times, progress=progress)
        amps = ds.amplitude.transpose("run", "time", "mode").values[run]
        rank = int(learned_rank(times, amps, spectrum, times[-1:])[0])
        point = unflatten_weights(ds.parameters.transpose("run", "time", "parameter").values[run, -1],
                                  widths)
        time = float(times[-1])
        if not all(np.all(np.isfinite(w)) for w in point):
            v.fail("at", "end", f"run {run} of {method} diverged (status "
                                f"{ds.status.values[run]!s}); no point to estimate at")
    else:
        point = tuple(np.asarray(w[run]) for w in weights)
        rank = teacher_rank if at == "solution" else -1
    update = (None if progress_factory is None else progress_factory(
        "estimate", settings.num_burnin_steps + settings.num_draws))
    est = estimate_learning_coefficient(point, model, _chain_key(config, method, run, 0), settings,
                                        warn=warn, progress=update)
    if at == "init":
        value, multiplicity = np.nan, -1
        description = "none: the initial weights are not a critical point of the loss"
    else:
        value, multiplicity = _exact(widths, rank)
        description = ("true parameter (every teacher mode learned)" if rank == teacher_rank
                       else f"rank-{rank} truncation of the teacher ({CONJECTURE})")
    est.attrs.update(at=at, method=method, run=run, time=time, rank_learned=rank,
                     teacher_rank=teacher_rank, exact_learning_coefficient=value,
                     exact_multiplicity=multiplicity, exact_description=description,
                     config_toml=config_to_toml(config))
    return est

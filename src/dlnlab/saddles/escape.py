"""Escape from saddles: GD, online SGD and the anisotropic SDE started near a critical point.

A run starts at ``theta_0 = theta* + rho u`` (``u`` a unit direction: the bottom Hessian eigenvector
or a uniformly random direction) and escapes at the first step ``k`` with

    L(theta_k) <= L(theta*) - f (L(theta*) - L_min)              (``f`` = ``drop_fraction``),

recorded as the time ``t = k * eta`` (GD, SGD; ``eta`` the learning rate) or ``t = k * h`` (SDE step
``h``), docs/theory.md §1. The steps (docs/theory.md §4) are the engine's steppers in a
``lax.scan`` that stops
counting at the first passage:

- GD: ``theta <- theta - eta grad L`` (:class:`dlnlab.dynamics.GradientDescent`);
- online SGD: ``theta <- theta - eta mean_{i<=B} g(x_i, y_i)`` (:class:`dlnlab.dynamics.OnlineSGD`);
- anisotropic SDE, Euler-Maruyama: ``theta <- theta - h grad L + sqrt(h eta / B) xi``,
  ``xi ~ N(0, Sigma(theta))`` exactly (:class:`dlnlab.dynamics.AnisotropicLangevin`).

Linearised GD prediction (:func:`linearised_escape_time`): near a strict saddle along the unit
eigenvector of ``lambda < 0``, ``L = L* + lambda x^2 / 2 + O(x^3)`` and GD multiplies ``x`` by
``1 + eta |lambda|`` per step, so the loss has dropped by ``delta`` after
``k = log(2 delta / (|lambda| rho^2)) / (2 log(1 + eta |lambda|))`` steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import _validation as v
from .._types import Array
from ..core.loss import population_loss
from ..core.products import flatten_weights, layer_widths, unflatten_weights
from ..core.task import Task
from ..dynamics.method import MethodSettings
from ..dynamics.registry import METHODS as REGISTERED_METHODS
from ..dynamics.registry import get_method
from .catalogue import stacked_weights, task_from_dataset
from .certify import MINIMUM, NOT_CRITICAL, minimum_loss

# Registered methods that act on the weights and need no host-side preparation: the escape
# experiments can run any of them; the default set is GD, SGD and the anisotropic SDE.
METHODS = tuple(m.name for m in REGISTERED_METHODS
                if m.state == "weights" and not m.needs_preparation)
DEFAULT_METHODS = ("gd", "sgd", "sde")


def _escape_stepper(method: str, task: Task, widths, learning_rate, batch_size, step_size):
    """The registered method's stepper and hyperparameters (its section at its defaults)."""
    record = get_method(method)
    section = record.section() if record.section is not None else None
    settings = MethodSettings(learning_rate, batch_size, True, tuple(widths), section, step_size)
    stepper = record.build(task, settings)
    values = dict(learning_rate=learning_rate, batch_size=batch_size, step_size=step_size)
    if section is not None:
        values.update(section.model_dump())
    fields = stepper.hyperparameters_type._fields
    return stepper, stepper.hyperparameters(**{k: x for k, x in values.items() if k in fields})


def linearised_escape_time(eigenvalue, amplitude, drop, learning_rate):
    """GD escape time ``t = eta k`` with ``k = log(2 drop / (|lambda| rho^2)) / (2 log(1 + eta |lambda|))``.

    ``eigenvalue`` ``lambda < 0``, ``amplitude`` ``rho`` of the start along its eigenvector, ``drop``
    the loss decrease that defines escape. Continuous (not rounded to a step); the first-passage
    step is ``ceil(k)`` in the linear regime. Arrays broadcast.
    """
    lam = jnp.abs(jnp.asarray(eigenvalue))
    steps = jnp.log(2.0 * drop / (lam * amplitude ** 2)) / (2.0 * jnp.log1p(learning_rate * lam))
    return learning_rate * steps


def escape_threshold(weights, task: Task, drop_fraction) -> Array:
    """``L(theta*) - f (L(theta*) - L_min)`` for the critical point ``weights``."""
    loss = population_loss(weights, task)
    return loss - drop_fraction * (loss - minimum_loss(task, layer_widths(weights)))


def escape_run(key, weights, task: Task, threshold, *, method: str, learning_rate, num_steps: int,
               batch_size=1, sde_step=None) -> tuple[Array, Array]:
    """One run from ``weights``: ``(escape_step, final_loss)``; ``escape_step = -1`` if the loss never
    fell to ``threshold`` within ``num_steps`` steps. Pure, jit/vmap-able (``method`` static;
    ``batch_size`` static for SGD, where it is a shape, and may be traced for the SDE).
    """
    h = learning_rate if sde_step is None else sde_step
    # The registry's steppers (one step contract, counter-based randomness keyed by the step);
    # SGD draws ``batch_size`` samples (a shape: static), the SDE uses it as a number.
    sampled = int(batch_size) if get_method(method).minibatch else 1
    stepper, hparams = _escape_stepper(method, task, layer_widths(weights), learning_rate,
                                       sampled, h)
    hparams = hparams._replace(batch_size=batch_size)

    def body(carry, k):
        state, first = carry
        state, _ = stepper.step(key, state, hparams)
        loss = population_loss(state.weights, task)
        first = jnp.where((first < 0) & (loss <= threshold), k + 1, first)
        return (state, first), None

    (final, first), _ = jax.lax.scan(body, (stepper.init(tuple(weights)), jnp.asarray(-1, jnp.int32)),
                                     jnp.arange(num_steps, dtype=jnp.int32))
    final = final.weights
    return first, population_loss(final, task)


@functools.partial(jax.jit, static_argnames=("method", "num_steps", "num_runs", "sgd_batch_size",
                                             "use_directions"))
def _escape_many(key, stacked, directions, task, learning_rate, sde_step, perturbation, drop_fraction,
                 noise_batch_size, *, method, num_steps, num_runs, sgd_batch_size, use_directions):
    batch_size = sgd_batch_size if get_method(method).minibatch else noise_batch_size
    widths = layer_widths(tuple(w[0] for w in stacked))

    def one_point(point_key, weights, direction):
        theta = flatten_weights(weights)
        threshold = escape_threshold(weights, task, drop_fraction)

        def one_run(run):
            run_key = jax.random.fold_in(point_key, run)
            if use_directions:
                u = direction
            else:
                u = jax.random.normal(jax.random.fold_in(run_key, 0), theta.shape, theta.dtype)
            u = u / jnp.linalg.norm(u)
            start = unflatten_weights(theta + perturbation * u, widths)
            return escape_run(jax.random.fold_in(run_key, 1), start, task, threshold, method=method,
                              learning_rate=learning_rate, num_steps=num_steps, batch_size=batch_size,
                              sde_step=sde_step)

        return jax.vmap(one_run)(jnp.arange(num_runs))

    count = stacked[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(count))
    return jax.vmap(one_point)(keys, tuple(stacked), directions)


def escape_times(key, stacked, task: Task, *, method: str, learning_rate: float, num_steps: int,
                 num_runs: int = 1, perturbation: float = 1e-3, drop_fraction: float = 0.1,
                 directions=None, batch_size: int = 1, sde_step: float | None = None):
    """Escape times ``(points, runs)`` from critical points ``stacked`` (weights, leading point axis).

    ``directions`` ``(points, P)`` (e.g. bottom eigenvectors) or ``None`` for a uniformly random unit
    direction per run. Returns ``(times, final_loss)``; ``times`` is ``NaN`` where a run did not
    escape within ``num_steps``; ``final_loss`` ``(points, runs)`` is non-finite for a run that
    diverged (too large a step). Point ``i``, run ``j`` use ``fold_in(fold_in(key, i), j)``.
    """
    if method not in METHODS:
        v.fail("method", method, f"must be one of {METHODS}")
    if not task.online:
        v.fail("task.data", "set", "escape experiments run online (population GD, fresh-sample SGD)")
    v.check_weights(tuple(w[0] for w in stacked), task.d_in, task.d_out)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("perturbation", perturbation, minimum=0.0)
    v.finite_scalar("drop_fraction", drop_fraction, minimum=0.0, strict=True, maximum=1.0)
    num_steps = v.positive_int("num_steps", num_steps)
    num_runs = v.positive_int("num_runs", num_runs)
    batch_size = v.positive_int("batch_size", batch_size)
    if sde_step is not None:
        v.finite_scalar("sde_step", sde_step, minimum=0.0, strict=True)
    dtype = stacked[0].dtype
    count = stacked[0].shape[0]
    p = sum(int(np.prod(w.shape[1:])) for w in stacked)
    use_directions = directions is not None
    if use_directions:
        directions = jnp.asarray(directions, dtype)
        if directions.shape != (count, p):
            v.fail("directions.shape", directions.shape, f"must be (points, P) = ({count}, {p})")
    else:
        directions = jnp.zeros((count, 1), dtype)
    h = learning_rate if sde_step is None else sde_step
    first, final = _escape_many(key, tuple(stacked), directions, task, jnp.asarray(learning_rate, dtype),
                                jnp.asarray(h, dtype), jnp.asarray(perturbation, dtype),
                                jnp.asarray(drop_fraction, dtype), jnp.asarray(float(batch_size), dtype),
                                method=method, num_steps=num_steps, num_runs=num_runs,
                                sgd_batch_size=batch_size if get_method(method).minibatch else 1,
                                use_directions=use_directions)
    unit = learning_rate if method != "sde" else h
    first = np.asarray(first)
    times = np.where(first >= 0, first * unit, np.nan)
    return times, np.asarray(final)


def escape_experiment(key, ds: xr.Dataset, *, methods=DEFAULT_METHODS, learning_rate: float = 0.02,
                      num_steps: int = 2000, num_runs: int = 8, perturbation: float = 1e-3,
                      drop_fraction: float = 0.1, direction: str = "eigenvector", batch_size: int = 1,
                      sde_step: float | None = None, max_points: int | None = None) -> xr.Dataset:
    """Escape times from every certified saddle of a catalogue (class not ``minimum`` / ``not
    critical``), for each method; what ``dlnlab saddles escape`` runs.

    ``direction``: ``"eigenvector"`` (the certified bottom eigenvector) or ``"random"``. Method ``m``
    uses ``fold_in(key, m)``. Returns a dataset with ``escape_time (method, point, run)`` and, per
    point, ``smallest_eigenvalue`` and the linearised GD prediction (eigenvector starts).
    """
    if "classification" not in ds:
        v.fail("dataset", "uncertified", "run certify_catalogue (dlnlab saddles certify) first")
    if direction not in ("eigenvector", "random"):
        v.fail("direction", direction, "must be 'eigenvector' or 'random'")
    methods = tuple(methods)
    for m in methods:
        if m not in METHODS:
            v.fail("methods", methods, f"each must be one of {METHODS}")
    cls = ds["classification"].values
    chosen = np.flatnonzero((cls != MINIMUM) & (cls != NOT_CRITICAL))
    if max_points is not None:
        chosen = chosen[:v.positive_int("max_points", max_points)]
    if chosen.size == 0:
        v.fail("dataset", "no saddles", "the catalogue holds no certified saddle")
    sub = ds.isel(point=chosen)
    task = task_from_dataset(sub)
    stacked = stacked_weights(sub, task.dtype)
    directions = sub["bottom_eigenvector"].values if direction == "eigenvector" else None
    times, finals = [], []
    for index, method in enumerate(methods):
        runs = 1 if (method == "gd" and direction == "eigenvector") else num_runs
        t, final = escape_times(jax.random.fold_in(key, index), stacked, task, method=method,
                            learning_rate=learning_rate, num_steps=num_steps, num_runs=runs,
                            perturbation=perturbation, drop_fraction=drop_fraction,
                            directions=directions, batch_size=batch_size, sde_step=sde_step)
        times.append(np.broadcast_to(t, (chosen.size, num_runs)) if runs == 1 else t)
        finals.append(np.broadcast_to(final, (chosen.size, num_runs)) if runs == 1 else final)
    lam = sub["smallest_eigenvalue"].values
    drop = drop_fraction * (sub["loss"].values - sub["minimum_loss"].values)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.where(lam < 0, np.asarray(linearised_escape_time(
            np.minimum(lam, -1e-300), perturbation, np.maximum(drop, 1e-300), learning_rate)), np.nan)
    if direction != "eigenvector":
        predicted = np.full_like(predicted, np.nan)
    out = xr.Dataset(
        {
            "escape_time": (("method_name", "point", "run"), np.stack(times),
                            {"long_name": "first time t (= step x eta, SDE: step x h) with L <= "
                                          "L* - f (L* - L_min); NaN: no escape"}),
            "diverged": (("method_name", "point", "run"), (~np.isfinite(np.stack(finals))).astype(np.int8),
                         {"long_name": "1 where the run ended with a non-finite loss (unstable step)"}),
            "final_loss": (("method_name", "point", "run"), np.stack(finals),
                           {"long_name": "population loss after num_steps steps"}),
            "smallest_eigenvalue": (("point",), lam, {"long_name": "lambda_min of the Hessian"}),
            "classification": (("point",), cls[chosen]),
            "rank": (("point",), sub["rank"].values),
            "loss": (("point",), sub["loss"].values),
            "linearised_gd_time": (("point",), predicted,
                                   {"long_name": "GD escape time of the linearisation (eigenvector starts)"}),
        },
        coords={"method_name": list(methods), "point": sub["point"].values, "run": np.arange(num_runs)},
    )
    out.attrs.update({"learning_rate": learning_rate, "num_steps": num_steps, "perturbation": perturbation,
                      "drop_fraction": drop_fraction, "direction": direction, "batch_size": batch_size,
                      "sde_step": learning_rate if sde_step is None else sde_step,
                      "time_unit": "t = step x learning_rate (SDE: step x sde_step)"})
    return out


"""Observables computed inside the compiled program at record times (one run; the engine vmaps).

A stepper's :meth:`~dlnlab.dynamics.base.Stepper.observe` is its observer: it returns a dict
``name -> array`` with only the requested names (``loss`` always), so an observable that is not
recorded is never computed. :data:`OBSERVABLE_DIMS` gives each name's non-run, non-time
dimensions (``docs/results.md`` documents them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from ..core import loss as core_loss
from ..core import modes as core_modes
from ..core.products import end_to_end, flatten_weights
from ..core.task import Task
from ..theory import reduced as reduced_theory

OBSERVABLE_DIMS: dict[str, tuple[str, ...]] = {
    "loss": (),
    "test_loss": (),
    "amplitude": ("mode",),
    "cross_amplitude": ("mode", "mode2"),
    "gf_drift": ("mode",),
    "diffusion": ("mode",),
    "ito_drift": ("mode",),
    "reduced_gf_drift": ("mode",),
    "reduced_diffusion": ("mode",),
    "reduced_ito_drift": ("mode",),
    "balance_residual": ("pair",),
    "balance_numerator": ("pair",),
    "layer_norm": ("layer",),
    "singular_value": ("singular",),
    "parameters": ("parameter",),
}

#: Observables recorded only when named explicitly (never part of the default "every
#: observable" set): ``parameters`` (the flattened weights, ``P = sum_l d_l d_(l-1)`` numbers per
#: record and run) would multiply the size of a default run's results.
OPT_IN_OBSERVABLES: frozenset[str] = frozenset({"parameters"})


def observable_names(observables: bool | Sequence[str] | None) -> tuple[str, ...]:
    """The names to record, in :data:`OBSERVABLE_DIMS` order, ``loss`` always included.

    ``None`` or ``True``: every observable except the opt-in ones (:data:`OPT_IN_OBSERVABLES`:
    ``parameters``); ``False``: only ``loss``; a sequence: those names (an unknown one raises a
    one-line ``ValueError`` listing the valid names)."""
    if observables is None or observables is True:
        return tuple(k for k in OBSERVABLE_DIMS if k not in OPT_IN_OBSERVABLES)
    if observables is False:
        return ("loss",)
    if isinstance(observables, str):
        observables = [observables]
    asked = [str(k) for k in observables]
    unknown = [k for k in asked if k not in OBSERVABLE_DIMS]
    if unknown:
        v.fail("observables", unknown[0], f"must be one of {', '.join(OBSERVABLE_DIMS)}")
    return tuple(k for k in OBSERVABLE_DIMS if k == "loss" or k in asked)


def reduced_applies(task: Task) -> bool:
    """The closed forms of docs/theory.md §6 need whitened inputs, online data, isotropic label
    noise."""
    if not task.whitened or not task.online:
        return False
    if task.label_covariance is None:
        return True
    try:
        _ = task.label_noise_std
    except ValueError:
        return False
    return True


def _reduced(kind: str, amplitudes, task: Task, depth: int, learning_rate, batch_size, coupled):
    if not reduced_applies(task):
        return jnp.full_like(amplitudes, jnp.nan)
    sigma = task.label_noise_std
    s = task.spectrum.astype(amplitudes.dtype)
    if kind == "gf":
        return reduced_theory.gradient_flow_drift(amplitudes, s, depth)
    if kind == "diffusion":
        return reduced_theory.reduced_diffusion(amplitudes, s, depth, learning_rate, batch_size,
                                                sigma)
    return reduced_theory.reduced_ito_drift(amplitudes, s, depth, learning_rate, batch_size, sigma,
                                            coupled)


def balance(weights) -> tuple[Array, Array]:
    """Normalised balance residual ``r_l`` and its numerator, for layer pairs ``(l, l+1)``.

    ``r_l = ||W_l W_l^T - W_{l+1}^T W_{l+1}||_F / (||W_l W_l^T||_F + ||W_{l+1}^T W_{l+1}||_F)``
    (experiment notes §1); 0 for exact balance, scale invariant. Empty at depth 1.
    """
    res, num = [], []
    for w, w_next in zip(weights[:-1], weights[1:], strict=True):
        left, right = w @ w.T, w_next.T @ w_next
        n = jnp.linalg.norm(left - right)
        num.append(n)
        res.append(n / (jnp.linalg.norm(left) + jnp.linalg.norm(right)))
    dtype = weights[0].dtype
    return jnp.asarray(res, dtype).reshape(-1), jnp.asarray(num, dtype).reshape(-1)


def _evaluate(makers: dict[str, Callable[[], Array]], names: Sequence[str]) -> dict[str, Array]:
    return {k: makers[k]() for k in OBSERVABLE_DIMS if k in names or k == "loss"}


def observe_weights(weights, task: Task, learning_rate, batch_size, names=None,
                    replacement: bool = True, coupled: bool = True) -> dict[str, Array]:
    """The observables ``names`` (default all) of one run's weights ``(W_1, ..., W_L)``.

    ``diffusion`` and ``ito_drift`` are the exact modewise quantities of docs/theory.md §5 for
    SGD with this learning rate and batch size (the anisotropic SDE's modes follow them exactly);
    ``reduced_*`` are the §6 closed forms evaluated at the current amplitudes; ``parameters``
    is ``theta = (vec W_1, ..., vec W_L)`` (:func:`dlnlab.core.products.flatten_weights`,
    column-stacking ``vec``, layer-major; recorded only when named).
    """
    names = observable_names(names)
    depth = len(weights)
    cache: dict = {}

    def cross():
        if "cross" not in cache:
            cache["cross"] = core_modes.cross_mode_amplitudes(weights, task)
        return cache["cross"]

    def amp():
        return jnp.diagonal(cross())

    def bal(i):
        if "balance" not in cache:
            cache["balance"] = balance(weights)
        return cache["balance"][i]

    def reduced(kind):
        return _reduced(kind, amp(), task, depth, learning_rate, batch_size, coupled)

    makers = {
        "loss": lambda: core_loss.training_loss(weights, task),
        "test_loss": lambda: core_loss.population_loss(weights, task),
        "amplitude": amp,
        "cross_amplitude": cross,
        "gf_drift": lambda: core_modes.gradient_flow_mode_drift(weights, task),
        "diffusion": lambda: core_modes.modewise_diffusion(weights, task, learning_rate,
                                                           batch_size, replacement),
        "ito_drift": lambda: core_modes.ito_drift(weights, task, learning_rate, batch_size,
                                                  replacement),
        "reduced_gf_drift": lambda: reduced("gf"),
        "reduced_diffusion": lambda: reduced("diffusion"),
        "reduced_ito_drift": lambda: reduced("ito"),
        "balance_residual": lambda: bal(0),
        "balance_numerator": lambda: bal(1),
        "layer_norm": lambda: jnp.stack([jnp.linalg.norm(w) for w in weights]),
        "singular_value": lambda: jnp.linalg.svd(end_to_end(weights), compute_uv=False),
        "parameters": lambda: flatten_weights(weights),
    }
    return _evaluate(makers, names)


def observe_amplitudes(amplitudes, task: Task, depth: int, learning_rate, batch_size,
                       names=None, coupled: bool = True) -> dict[str, Array]:
    """Observables of the reduced SDE's state (mode amplitudes ``(r,)``): the aligned, balanced
    network they stand for has cross modes 0, balance residual 0 and layer norms
    ``sqrt(sum_a |a_a|^(2/L))``; the exact modewise quantities equal the reduced ones there.

    ``parameters`` is not defined for this state (many weight tuples, one for each choice of
    hidden-layer bases, stand for the same amplitudes): asking for it raises a one-line
    ``ValueError`` before any step runs (``simulate`` evaluates the observer's shapes first)."""
    names = observable_names(names)
    if "parameters" in names:
        v.fail("observables", "parameters",
               "not defined for the reduced SDE (its state is the mode amplitudes, not weights)")
    a = amplitudes
    r = a.shape[0]
    s = task.spectrum.astype(a.dtype)

    def reduced(kind):
        return _reduced(kind, a, task, depth, learning_rate, batch_size, coupled)

    def loss():
        return 0.5 * jnp.sum((s - a) ** 2) + 0.5 * task.d_out * task.label_noise_std**2

    makers = {
        "loss": loss,
        "test_loss": loss,
        "amplitude": lambda: a,
        "cross_amplitude": lambda: jnp.diag(a),
        "gf_drift": lambda: reduced("gf"),
        "diffusion": lambda: reduced("diffusion"),
        "ito_drift": lambda: reduced("ito"),
        "reduced_gf_drift": lambda: reduced("gf"),
        "reduced_diffusion": lambda: reduced("diffusion"),
        "reduced_ito_drift": lambda: reduced("ito"),
        "balance_residual": lambda: jnp.zeros((depth - 1,), a.dtype),
        "balance_numerator": lambda: jnp.zeros((depth - 1,), a.dtype),
        "layer_norm": lambda: jnp.full((depth,), jnp.sqrt(jnp.sum(jnp.abs(a) ** (2.0 / depth)))),
        "singular_value": lambda: jnp.sort(jnp.abs(a))[::-1][:r],
    }
    return _evaluate(makers, names)

"""Observables computed inside the compiled program at record times (one run; the engine vmaps).

Every function returns a dict ``name -> array``; :data:`OBSERVABLE_DIMS` gives each name's
non-run, non-time dimensions (``docs/results.md`` documents them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..core import loss as core_loss
from ..core import modes as core_modes
from ..core.products import end_to_end
from ..core.task import Task
from ..theory import reduced as reduced_theory

Array = jax.Array

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
}


def _reduced_ok(task: Task) -> bool:
    """The closed forms of THEORY §6 need whitened inputs, online data, isotropic label noise."""
    if not task.whitened or not task.online:
        return False
    if task.label_covariance is None:
        return True
    try:
        _ = task.label_noise_std
    except ValueError:
        return False
    return True


def _reduced(amplitudes, task: Task, depth: int, learning_rate, batch_size, coupled=True):
    nan = jnp.full_like(amplitudes, jnp.nan)
    if not _reduced_ok(task):
        return nan, nan, nan
    sigma = task.label_noise_std
    s = task.spectrum.astype(amplitudes.dtype)
    return (reduced_theory.gradient_flow_drift(amplitudes, s, depth),
            reduced_theory.reduced_diffusion(amplitudes, s, depth, learning_rate, batch_size, sigma),
            reduced_theory.reduced_ito_drift(amplitudes, s, depth, learning_rate, batch_size, sigma,
                                             coupled))


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


def observe_weights(weights, task: Task, learning_rate, batch_size, replacement: bool = True,
                    coupled: bool = True) -> dict[str, Array]:
    """All observables of one run's weights ``(W_1, ..., W_L)``.

    ``diffusion`` and ``ito_drift`` are the exact modewise quantities of THEORY §5 for SGD with
    this learning rate and batch size (the anisotropic SDE's modes follow them exactly);
    ``reduced_*`` are the §6 closed forms evaluated at the current amplitudes.
    """
    depth = len(weights)
    cross = core_modes.cross_mode_amplitudes(weights, task)
    amp = jnp.diagonal(cross)
    residual, numerator = balance(weights)
    r_gf, r_diff, r_ito = _reduced(amp, task, depth, learning_rate, batch_size, coupled)
    return {
        "loss": core_loss.training_loss(weights, task),
        "test_loss": core_loss.population_loss(weights, task),
        "amplitude": amp,
        "cross_amplitude": cross,
        "gf_drift": core_modes.gradient_flow_mode_drift(weights, task),
        "diffusion": core_modes.modewise_diffusion(weights, task, learning_rate, batch_size,
                                                   replacement),
        "ito_drift": core_modes.ito_drift(weights, task, learning_rate, batch_size, replacement),
        "reduced_gf_drift": r_gf,
        "reduced_diffusion": r_diff,
        "reduced_ito_drift": r_ito,
        "balance_residual": residual,
        "balance_numerator": numerator,
        "layer_norm": jnp.stack([jnp.linalg.norm(w) for w in weights]),
        "singular_value": jnp.linalg.svd(end_to_end(weights), compute_uv=False),
    }


def observe_amplitudes(amplitudes, task: Task, depth: int, learning_rate, batch_size,
                       coupled: bool = True) -> dict[str, Array]:
    """Observables of the reduced SDE's state (mode amplitudes ``(r,)``): the aligned, balanced
    network they stand for has cross modes 0, balance residual 0 and layer norms
    ``sqrt(sum_a |a_a|^(2/L))``; the exact modewise quantities equal the reduced ones there."""
    a = amplitudes
    r = a.shape[0]
    s = task.spectrum.astype(a.dtype)
    sigma = task.label_noise_std
    r_gf, r_diff, r_ito = _reduced(a, task, depth, learning_rate, batch_size, coupled)
    loss = 0.5 * jnp.sum((s - a) ** 2) + 0.5 * task.d_out * sigma**2
    norm = jnp.sqrt(jnp.sum(jnp.abs(a) ** (2.0 / depth)))
    return {
        "loss": loss,
        "test_loss": loss,
        "amplitude": a,
        "cross_amplitude": jnp.diag(a),
        "gf_drift": r_gf,
        "diffusion": r_diff,
        "ito_drift": r_ito,
        "reduced_gf_drift": r_gf,
        "reduced_diffusion": r_diff,
        "reduced_ito_drift": r_ito,
        "balance_residual": jnp.zeros((depth - 1,), a.dtype),
        "balance_numerator": jnp.zeros((depth - 1,), a.dtype),
        "layer_norm": jnp.full((depth,), norm),
        "singular_value": jnp.sort(jnp.abs(a))[::-1][:r],
    }

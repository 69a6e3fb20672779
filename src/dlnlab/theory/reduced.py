"""Reduced modewise SDE at aligned, balanced states (docs/theory.md §6; paper Prop. 3.5, App. E).

Paper: "Stochastic Gradient Descent in the Saddle-to-Saddle Regime of Deep Linear Networks"
(the seed text gives neither authors nor an arXiv id).

Inputs share the simulator's mode axis: ``amplitudes`` and ``spectrum`` of shape ``(..., r)``
(the spectrum padded with zeros, as ``Task.spectrum``), whitened inputs, ``S_eps = sigma^2 I``.
With ``delta_b = a_b - s_b``:

    mu_GF(a)  = L |a_a|^(2-2/L) (s_a - a_a)
    mu_Ito(a) = (eta/B) [ (L(L-1)/2) a_a |a_a|^(2-4/L) (2 delta_a^2 + sigma^2)
                          + delta_a sum_{b != a} delta_b K_ab ]            (coupled=True)
    K_ab      = sum_{k=1}^{L-1} (L-k) |a_a|^((2L-2k-2)/L) a_b |a_b|^((2k-2)/L)
    D_a(a)    = (eta/B) L^2 |a_a|^(4-4/L) (2 (s_a - a_a)^2 + sigma^2)

``coupled=False`` drops the ``K_ab`` sum: the paper's decoupled form, exact when every other
mode is at rest (``a_b = 0``) or learned without label noise (``delta_b = 0``).
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import _validation as v
from .._types import Array


def _power(x: Array, exponent: float) -> Array:
    """``|x|^exponent`` with ``0^0 = 1`` and no NaN gradients at 0 for positive exponents."""
    if exponent == 0:
        return jnp.ones_like(x)
    return jnp.abs(x) ** exponent


def _check_depth(depth) -> int:
    return v.positive_int("depth", depth)


def _check_common(learning_rate, batch_size, label_noise) -> None:
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0)
    v.finite_scalar("batch_size", batch_size, minimum=0.0, strict=True)
    v.finite_scalar("label_noise", label_noise, minimum=0.0)


def gradient_flow_drift(amplitudes, spectrum, depth: int) -> Array:
    """``mu_GF = L |a|^(2-2/L) (s - a)`` per mode (Saxe et al. at L = 2: ``2 a (s - a)``)."""
    depth = _check_depth(depth)
    a = jnp.asarray(amplitudes)
    return depth * _power(a, 2.0 - 2.0 / depth) * (jnp.asarray(spectrum, a.dtype) - a)


def reduced_ito_drift(amplitudes, spectrum, depth: int, learning_rate, batch_size=1,
                      label_noise=0.0, coupled: bool = True) -> Array:
    """Noise-induced (Ito) drift of each mode at an aligned, balanced state; shape of ``a``.

    Zero at L = 1 (the ``a |a|^-2`` factor is multiplied by ``L - 1 = 0`` and never evaluated).
    """
    depth = _check_depth(depth)
    _check_common(learning_rate, batch_size, label_noise)
    a = jnp.asarray(amplitudes)
    if depth == 1:
        return jnp.zeros_like(a)
    s = jnp.asarray(spectrum, a.dtype)
    delta = a - s
    rate = learning_rate / batch_size
    # a |a|^(2-4/L): exponent >= 0 for L >= 2, so this is finite at a = 0.
    self_term = (depth * (depth - 1) / 2) * a * _power(a, 2.0 - 4.0 / depth) * (
        2 * delta**2 + label_noise**2)
    if not coupled:
        return rate * self_term
    # K_ab = sum_k (L-k) |a_a|^((2L-2k-2)/L) a_b |a_b|^((2k-2)/L); all exponents >= 0.
    kernel = jnp.zeros(a.shape + a.shape[-1:], a.dtype)
    for k in range(1, depth):
        kernel = kernel + (depth - k) * (
            _power(a, (2 * depth - 2 * k - 2) / depth)[..., :, None]
            * (a * _power(a, (2 * k - 2) / depth))[..., None, :])
    off_diagonal = 1.0 - jnp.eye(a.shape[-1], dtype=a.dtype)
    coupling = delta * jnp.einsum("...ab,...b->...a", kernel * off_diagonal, delta)
    return rate * (self_term + coupling)


def reduced_drift(amplitudes, spectrum, depth: int, learning_rate=0.0, batch_size=1,
                  label_noise=0.0, coupled: bool = True) -> Array:
    """Total drift ``mu_GF + mu_Ito`` of the reduced modewise SDE (Prop. 3.5)."""
    return (gradient_flow_drift(amplitudes, spectrum, depth)
            + reduced_ito_drift(amplitudes, spectrum, depth, learning_rate, batch_size,
                                label_noise, coupled))


def reduced_diffusion(amplitudes, spectrum, depth: int, learning_rate, batch_size=1,
                      label_noise=0.0) -> Array:
    """``D_a = (eta/B) L^2 |a|^(4-4/L) (2 (s - a)^2 + sigma^2)`` per mode (paper eq. 7).

    The rate of quadratic variation: ``da = mu dt + sqrt(D_a) dW``. Cross-mode diffusion is 0.
    """
    depth = _check_depth(depth)
    _check_common(learning_rate, batch_size, label_noise)
    a = jnp.asarray(amplitudes)
    s = jnp.asarray(spectrum, a.dtype)
    return (learning_rate / batch_size) * depth**2 * _power(a, 4.0 - 4.0 / depth) * (
        2 * (s - a) ** 2 + label_noise**2)

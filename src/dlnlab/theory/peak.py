"""The diffusion peak that precedes learning (docs/theory.md §8; paper §4, eqs. 8-10).

Paper: "Stochastic Gradient Descent in the Saddle-to-Saddle Regime of Deep Linear Networks"
(the seed text gives neither authors nor an arXiv id).

With ``p = 4 - 4/L``, ``D_a`` is proportional to ``f(a) = a^p (2 (s - a)^2 + sigma^2)`` on
``(0, s)``. ``f'(a) = 0`` with ``delta = s - a`` gives ``(2p + 4) delta^2 - 4 s delta + p sigma^2
= 0``; a local maximum exists iff ``s^2 > p (p + 2) sigma^2 / 2`` (eq. 10), at

    a_peak = s - (2 s + sqrt(4 s^2 - 2 p (p + 2) sigma^2)) / (2 p + 4)      (eq. 9)

It is the maximum of ``D_a`` on ``(0, s]`` only while ``sigma^2 / s^2`` is below a smaller,
global threshold where ``f(a_peak) = f(s)`` (found here by root finding).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from .. import _validation as v
from .._types import Array


class DiffusionPeak(NamedTuple):
    """Per mode: ``amplitude`` (NaN where there is no interior peak), ``exists`` (eq. 10 holds),
    ``is_global`` (the local maximum is also the maximum of ``D_a`` on ``(0, s]``)."""

    amplitude: Array
    exists: Array
    is_global: Array


def local_threshold(depth: int) -> float:
    """Largest ``sigma^2 / s^2`` with an interior local maximum: ``2 / (p (p + 2))`` (eq. 10)."""
    depth = v.positive_int("depth", depth)
    if depth == 1:
        return 0.0
    p = 4.0 - 4.0 / depth
    return 2.0 / (p * (p + 2.0))


def _peak_unit(rho: float, p: float) -> float:
    """``a_peak / s`` at ``rho = sigma^2 / s^2`` (below the local threshold)."""
    return 1.0 - (2.0 + np.sqrt(max(4.0 - 2.0 * p * (p + 2.0) * rho, 0.0))) / (2.0 * p + 4.0)


@functools.lru_cache(maxsize=64)
def global_threshold(depth: int) -> float:
    """Largest ``sigma^2 / s^2`` at which the local peak is the maximum of ``D_a`` on ``(0, s]``.

    Root of ``f(a_peak) = f(s)`` in units ``s = 1``: ``a*^p (2 (1 - a*)^2 + rho) = rho``.
    ``5 sqrt 5 - 11 = 0.1803`` at L = 2; 0.1141 at L = 3; 0.0940 at L = 4.
    """
    depth = v.positive_int("depth", depth)
    if depth == 1:
        return 0.0
    p = 4.0 - 4.0 / depth
    rho_local = local_threshold(depth)

    def gap(rho):
        a = _peak_unit(rho, p)
        return a**p * (2.0 * (1.0 - a) ** 2 + rho) - rho

    return float(brentq(gap, 1e-12, rho_local * (1 - 1e-12), xtol=1e-15, rtol=1e-15))


def diffusion_peak(spectrum, depth: int, label_noise=0.0) -> DiffusionPeak:
    """Location of the diffusion peak of each mode (eq. 9) and whether it exists / is global.

    Without label noise ``a_peak = s (2L - 2) / (3L - 2)`` (``s/2`` at L = 2, ``0.6 s`` at L = 4).
    L = 1 has no interior peak.
    """
    depth = v.positive_int("depth", depth)
    v.finite_scalar("spectrum", spectrum, minimum=0.0)
    v.finite_scalar("label_noise", label_noise, minimum=0.0)
    s = jnp.asarray(spectrum)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.zeros(()).dtype)
    sigma2 = jnp.asarray(label_noise, s.dtype) ** 2
    if depth == 1:
        nan = jnp.full(s.shape, jnp.nan, s.dtype)
        false = jnp.zeros(s.shape, bool)
        return DiffusionPeak(nan, false, false)
    p = 4.0 - 4.0 / depth
    disc = 4 * s**2 - 2 * p * (p + 2) * sigma2
    exists = (disc > 0) & (s > 0)
    amplitude = jnp.where(exists, s - (2 * s + jnp.sqrt(jnp.where(exists, disc, 0.0)))
                          / (2 * p + 4), jnp.nan)
    is_global = exists & (sigma2 < global_threshold(depth) * s**2)
    return DiffusionPeak(amplitude, exists, is_global)

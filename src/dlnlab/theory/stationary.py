"""Stationary law of one mode of the reduced SDE (THEORY §8, paper §5, Prop. 5.1-5.2, App. F).

One-dimensional Fokker-Planck with zero current gives

    p_inf(a) ∝ (1 / D(a)) exp( int_s^a 2 mu(x) / D(x) dx ),   mu = mu_GF + mu_Ito

(other modes at rest, so the decoupled drift is exact). The integral starts at ``s``: ``2 mu / D``
is not integrable at ``a = 0`` for ``L >= 2``. Without label noise the density is not
integrable at ``s`` and the law is a Dirac mass at ``s``.

First order in ``eta / B`` (derived in docs/theory.md; the seed paper's "mean above s" is wrong):

    zero of mu ≈ s + (eta/B) ((L-1)/2) sigma^2 s^(1-2/L)
    mean       ≈ s - (eta/B) ((L-1)/2) sigma^2 s^(1-2/L)
    mode       ≈ s - (3/2) (eta/B) (L-1) sigma^2 s^(1-2/L)
    variance   ≈ (eta/B) (L/2) sigma^2 s^(2-2/L)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from .._types import Array
from .reduced import reduced_diffusion, reduced_drift


class StationaryMoments(NamedTuple):
    """Per mode: quadrature ``mean``, ``mode``, ``variance``, and the first-order formulas."""

    mean: Array
    mode: Array
    variance: Array
    mean_first_order: Array
    mode_first_order: Array
    variance_first_order: Array
    drift_zero_first_order: Array


def first_order_moments(spectrum, depth: int, learning_rate, batch_size=1, label_noise=0.0):
    """``(drift zero, mean, mode, variance)`` to first order in ``eta / B`` (THEORY §8)."""
    depth = v.positive_int("depth", depth)
    s = jnp.asarray(spectrum, dtype=jnp.zeros(()).dtype)
    rate = learning_rate / batch_size
    shift = rate * (depth - 1) / 2 * label_noise**2 * s ** (1 - 2 / depth)
    variance = rate * depth / 2 * label_noise**2 * s ** (2 - 2 / depth)
    return s + shift, s - shift, s - 3 * shift, variance


def _grid(s: float, depth: int, rate: float, sigma: float, num_points: int, width: float):
    """Uniform grid around ``s`` with ``s`` as a node, ``width`` first-order std each side."""
    std = np.sqrt(rate * depth / 2 * sigma**2 * s ** (2 - 2 / depth))
    half = num_points // 2
    h = width * std / half
    lower = s - half * h
    if lower <= 0:                                       # keep a > 0: D vanishes at 0
        h_low = (s * (1 - 1e-9)) / half
        left = s - h_low * np.arange(half, 0, -1)
        right = s + h * np.arange(0, num_points - half)
        return np.concatenate([left, right])
    return s + h * np.arange(-half, num_points - half)


def stationary_log_density(grid, spectrum_value, depth: int, learning_rate, batch_size=1,
                           label_noise=0.0):
    """Unnormalised ``log p_inf`` on an increasing ``grid`` that contains ``s`` as a node.

    ``-log D(a) + int_s^a 2 mu / D``, the integral by composite Simpson on the grid intervals
    (midpoints evaluated exactly), so the error is ``O(h^4)``.
    """
    a = jnp.asarray(grid)
    s = jnp.asarray(spectrum_value, a.dtype)

    def g(x):
        mu = reduced_drift(x, s, depth, learning_rate, batch_size, label_noise, coupled=False)
        diff = reduced_diffusion(x, s, depth, learning_rate, batch_size, label_noise)
        return 2 * mu / diff

    ga = g(a)
    mid = g(0.5 * (a[1:] + a[:-1]))
    pieces = (a[1:] - a[:-1]) / 6 * (ga[:-1] + 4 * mid + ga[1:])
    cumulative = jnp.concatenate([jnp.zeros((1,), a.dtype), jnp.cumsum(pieces)])
    origin = jnp.argmin(jnp.abs(a - s))
    integral = cumulative - cumulative[origin]
    return integral - jnp.log(reduced_diffusion(a, s, depth, learning_rate, batch_size,
                                                label_noise))


def stationary_density(spectrum_value, depth: int, learning_rate, batch_size=1, label_noise=0.0,
                       num_points: int = 20001, width: float = 40.0):
    """Normalised stationary density of one mode on an automatic grid: ``(grid, density)``.

    The grid spans ``width`` first-order standard deviations each side of ``s`` (cut at 0).
    """
    _validate(spectrum_value, depth, learning_rate, batch_size, label_noise)
    if float(label_noise) == 0.0:
        v.fail("label_noise", label_noise,
               "must be > 0 for a density: without label noise the law is a Dirac mass at s")
    grid = jnp.asarray(_grid(float(spectrum_value), depth, float(learning_rate / batch_size),
                             float(label_noise), num_points, width), dtype=jnp.zeros(()).dtype)
    logp = stationary_log_density(grid, spectrum_value, depth, learning_rate, batch_size,
                                  label_noise)
    p = jnp.exp(logp - jnp.max(logp))
    return grid, p / jnp.trapezoid(p, grid)


def stationary_moments(spectrum, depth: int, learning_rate, batch_size=1, label_noise=0.0,
                       num_points: int = 20001) -> StationaryMoments:
    """Mean, mode and variance of each mode's stationary law by quadrature, with first order.

    ``spectrum`` ``(k,)`` (modes with ``s > 0``). Without label noise every law is a Dirac mass
    at ``s``: mean = mode = s, variance = 0.
    """
    s_all = np.atleast_1d(np.asarray(spectrum, dtype=float))
    for s in s_all:
        _validate(s, depth, learning_rate, batch_size, label_noise)
    zero, mean1, mode1, var1 = first_order_moments(s_all, depth, learning_rate, batch_size,
                                                   label_noise)
    if float(label_noise) == 0.0:
        s_arr = jnp.asarray(s_all, dtype=jnp.zeros(()).dtype)
        return StationaryMoments(s_arr, s_arr, jnp.zeros_like(s_arr), mean1, mode1, var1, zero)
    means, modes, variances = [], [], []
    for s in s_all:
        grid, p = stationary_density(s, depth, learning_rate, batch_size, label_noise,
                                     num_points)
        mean = jnp.trapezoid(grid * p, grid)
        means.append(mean)
        variances.append(jnp.trapezoid((grid - mean) ** 2 * p, grid))
        modes.append(_mode_refined(grid, p, s, depth, learning_rate, batch_size, label_noise))
    return StationaryMoments(jnp.stack(means), jnp.stack(modes), jnp.stack(variances),
                             mean1, mode1, var1, zero)


@functools.partial(jax.jit, static_argnames=("depth",))
def _bisect_mode(lo, hi, s, depth, learning_rate, batch_size, label_noise):
    """Root of ``2 mu - D'`` in ``[lo, hi]`` by 60 bisection steps, compiled once per depth."""
    def condition(a):
        mu = reduced_drift(a, s, depth, learning_rate, batch_size, label_noise, coupled=False)
        slope = jax.grad(lambda x: reduced_diffusion(x, s, depth, learning_rate, batch_size,
                                                     label_noise))(a)
        return 2 * mu - slope

    sign_lo = jnp.sign(condition(lo))

    def step(_, bracket):
        left, right = bracket
        mid = 0.5 * (left + right)
        same = jnp.sign(condition(mid)) == sign_lo
        return jnp.where(same, mid, left), jnp.where(same, right, mid)

    left, right = jax.lax.fori_loop(0, 60, step, (lo, hi))
    return 0.5 * (left + right), sign_lo * jnp.sign(condition(hi))


def _mode_refined(grid, p, s, depth, learning_rate, batch_size, label_noise):
    """The density's maximum: ``p'/p = (2 mu - D') / D = 0``, solved by bisection on
    ``2 mu - D'`` in the grid cell pair around the grid argmax (exact to rounding)."""
    i = int(jnp.clip(jnp.argmax(p), 1, p.shape[0] - 2))
    root, bracket_sign = _bisect_mode(grid[i - 1], grid[i + 1], s, depth, learning_rate,
                                      batch_size, label_noise)
    return jnp.where(bracket_sign < 0, root, grid[i])     # no sign change: keep the grid node


def _validate(s, depth, learning_rate, batch_size, label_noise):
    v.positive_int("depth", depth)
    v.finite_scalar("spectrum", s, minimum=0.0, strict=True)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("batch_size", batch_size, minimum=0.0, strict=True)
    v.finite_scalar("label_noise", label_noise, minimum=0.0)

"""Stationary law of one mode of the reduced SDE (docs/theory.md §9; paper §5, Prop. 5.1-5.2,
App. F of "Stochastic Gradient Descent in the Saddle-to-Saddle Regime of Deep Linear Networks" —
the seed text gives neither authors nor an arXiv id).

One-dimensional Fokker-Planck with zero current gives

    p_inf(a) ∝ (1 / D(a)) exp( int_s^a 2 mu(x) / D(x) dx ),   mu = mu_GF + mu_Ito

(other modes at rest, so the decoupled drift is exact), with ``r = eta / B`` and
``c(a) = 2 (s - a)^2 + sigma^2``:

    L = 1:   2 mu / D = 2 (s - a) / (r c(a)),  support the whole line,
             p ∝ c(a)^(-1 - 1/(2r))  (Student-t, nu = 1 + 1/r dof): mean s, variance
             r sigma^2 / (2 (1 - r)) for r < 1, infinite for r >= 1.
    L >= 2:  2 mu / D = 2 (s - a) a^(2/L - 2) / (r L c(a)) + (L - 1) / (L a),  support a > 0.
             a -> infinity: p ~ a^(-5 + 3/L) (mean and variance finite).
             a -> 0, L >= 3: log p ~ -(2 s / (r L c(0))) a^(-(1 - 2/L)) / (1 - 2/L): no mass at 0.
             a -> 0, L = 2:  p ~ a^k,  k = s / (r (2 s^2 + sigma^2)) - 3/2, normalisable iff k > -1:

                 (eta / B) (2 s^2 + sigma^2) < 2 s                       (existence, L = 2)

             otherwise the mass collapses to a = 0 (in ln a the drift at a -> 0 is
             2 s - r (2 s^2 + sigma^2) < 0) and there is no stationary law.

Without label noise the density is not integrable at ``s`` and the law is a Dirac mass at ``s``
— except at L = 2 with ``(eta/B) s >= 1``, where ``a = 0`` attracts too and the limit depends on
the start (reported as no stationary law).

The quadrature works in a variable where both tails are exponential (``y = ln a`` for L >= 2,
``a = s + w sinh z`` for L = 1), on a fine grid around ``s`` joined to a uniform grid over the
whole support (``a`` from ``s e^-300`` to ``s e^60``), composite Simpson with exact midpoints,
and analytic exponential tails beyond the grid ends. First order in ``eta / B`` (derived in
docs/theory.md §9; the seed paper's "mean above s" is wrong):

    zero of mu ≈ s + (eta/B) ((L-1)/2) sigma^2 s^(1-2/L)
    mean       ≈ s - (eta/B) ((L-1)/2) sigma^2 s^(1-2/L)
    mode       ≈ s - (3/2) (eta/B) (L-1) sigma^2 s^(1-2/L)
    variance   ≈ (eta/B) (L/2) sigma^2 s^(2-2/L)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from .. import _validation as v
from .._types import Array
from .reduced import reduced_diffusion, reduced_drift

_LOWER_SPAN = 300.0      # L >= 2: y = ln a from ln s - 300 ...
_UPPER_SPAN = 60.0       # ... to ln s + 60; L = 1: z in [-300, 300] (a = s + w sinh z)
_COARSE_STEP = 0.005     # uniform grid step in y (or z) over the whole support
_FINE_POINTS = 10001     # fine grid: +-50 first-order standard deviations around s
_FINE_WIDTH = 50.0


class StationaryMoments(NamedTuple):
    """Per mode, shape ``(k,)``: quadrature ``mean``, ``mode``, ``variance`` (NaN where no law
    exists; ``variance`` is ``inf`` at L = 1 with ``eta/B >= 1``), the first-order formulas, and
    ``exists`` (bool: the stationary density is normalisable, or the law is the Dirac mass at s)."""

    mean: Array
    mode: Array
    variance: Array
    mean_first_order: Array
    mode_first_order: Array
    variance_first_order: Array
    drift_zero_first_order: Array
    exists: Array


def first_order_moments(spectrum, depth: int, learning_rate, batch_size=1, label_noise=0.0):
    """``(drift zero, mean, mode, variance)`` to first order in ``eta / B`` (docs/theory.md §9).

    Shapes follow ``spectrum``; units of ``a`` (variance: ``a^2``). Raises ``ValueError`` for
    a depth that is not a positive integer.
    """
    depth = v.positive_int("depth", depth)
    s = jnp.asarray(spectrum, dtype=jnp.zeros(()).dtype)
    rate = learning_rate / batch_size
    shift = rate * (depth - 1) / 2 * label_noise**2 * s ** (1 - 2 / depth)
    variance = rate * depth / 2 * label_noise**2 * s ** (2 - 2 / depth)
    return s + shift, s - shift, s - 3 * shift, variance


def stationary_law_exists(spectrum, depth: int, learning_rate, batch_size=1,
                          label_noise=0.0) -> np.ndarray:
    """Whether each mode has a stationary law (docs/theory.md §9), bool array of ``spectrum``'s
    shape.

    Always at L = 1 and L >= 3. At L = 2 the density behaves like ``a^k`` near 0 with
    ``k = s / (r (2 s^2 + sigma^2)) - 3/2``, ``r = eta / B``; it is normalisable iff ``k > -1``:
    ``r (2 s^2 + sigma^2) < 2 s`` (without label noise: ``r s < 1``, else ``a = 0`` attracts too).
    Raises ``ValueError`` on invalid arguments.
    """
    s = np.asarray(spectrum, dtype=np.float64)
    for value in np.atleast_1d(s):
        _validate(value, depth, learning_rate, batch_size, label_noise)
    if depth != 2:
        return np.ones(s.shape, bool)
    rate = float(learning_rate) / float(batch_size)
    return rate * (2 * s**2 + float(label_noise) ** 2) < 2 * s


# ------------------------------------------------------------------ the law in a smooth variable
class _Law:
    """Unnormalised log-density in a variable ``t`` with exponential tails, for one mode."""

    def __init__(self, s: float, depth: int, rate: float, sigma: float):
        self.s, self.depth, self.rate, self.sigma = s, depth, rate, sigma
        if depth == 1:
            self.width = math.sqrt(rate * sigma**2 / 2)            # first-order std
            self.t_s, self.lo, self.hi = 0.0, -_LOWER_SPAN, _LOWER_SPAN
            self.scale_t = 1.0                                     # std in z is ~1
        else:
            self.t_s = math.log(s)
            self.lo, self.hi = self.t_s - _LOWER_SPAN, self.t_s + _UPPER_SPAN
            _, _, _, var1 = (float(x) for x in first_order_moments(s, depth, rate, 1, sigma))
            self.scale_t = math.sqrt(var1) / s                     # std in ln a

    def amplitude(self, t):
        if self.depth == 1:
            return self.s + self.width * np.sinh(t)
        return np.exp(t)

    def _c(self, t):
        if self.depth == 1:
            x = self.width * np.sinh(t)
            return 2 * x**2 + self.sigma**2
        a = np.exp(t)
        return 2 * (self.s - a) ** 2 + self.sigma**2

    def drift_ratio(self, t):
        """``(2 mu / D)(a(t)) da/dt``: what is integrated from ``t_s``."""
        r, s, depth = self.rate, self.s, self.depth
        if depth == 1:
            x = self.width * np.sinh(t)
            return -2 * x / (r * (2 * x**2 + self.sigma**2)) * self.width * np.cosh(t)
        a = np.exp(t)
        return (2 * (s - a) * np.exp((2.0 / depth - 1.0) * t) / (r * depth * self._c(t))
                + (depth - 1) / depth)

    def log_jacobian_over_d(self, t):
        """``log(da/dt) - log D(a(t))``."""
        r, depth = self.rate, self.depth
        if depth == 1:
            return np.log(self.width * np.cosh(t)) - np.log(r * self._c(t))
        return t - (math.log(r * depth**2) + (4 - 4 / depth) * t + np.log(self._c(t)))

    def dlog_density_a(self, t):
        """``d log p(a) / dt`` with ``p`` the density in ``a``: ``(2 mu - D') / D * da/dt``."""
        if self.depth == 1:
            x = self.width * np.sinh(t)
            return (-2 * x - 4 * self.rate * x) / (self.rate * self._c(t)) * self.width * np.cosh(t)
        a = np.exp(t)
        return self.drift_ratio(t) - (4 - 4 / self.depth) + 4 * (self.s - a) * a / self._c(t)

    def grid(self) -> np.ndarray:
        coarse = np.arange(self.lo, self.hi + 0.5 * _COARSE_STEP, _COARSE_STEP)
        nodes = [coarse, [self.t_s]]
        fine_half = _FINE_WIDTH * self.scale_t
        if 2 * fine_half / (_FINE_POINTS - 1) < _COARSE_STEP:
            fine = self.t_s + np.linspace(-fine_half, fine_half, _FINE_POINTS)
            nodes.append(fine[(fine > self.lo) & (fine < self.hi)])
        t = np.unique(np.concatenate(nodes))
        return t[(t >= self.lo) & (t <= self.hi)]

    def log_density(self, t):
        """Unnormalised ``log q(t)`` (density in ``t``) at nodes ``t`` and at their midpoints."""
        mid = 0.5 * (t[1:] + t[:-1])
        g_nodes, g_mid = self.drift_ratio(t), self.drift_ratio(mid)
        pieces = (t[1:] - t[:-1]) / 6 * (g_nodes[:-1] + 4 * g_mid + g_nodes[1:])
        origin = int(np.argmin(np.abs(t - self.t_s)))
        cumulative = _cumulative_from(pieces, origin)
        # Midpoint value: left node + Simpson over the half panel (node, quarter, mid).
        quarter = 0.5 * (t[:-1] + mid)
        half_piece = (mid - t[:-1]) / 6 * (g_nodes[:-1] + 4 * self.drift_ratio(quarter) + g_mid)
        log_nodes = cumulative + self.log_jacobian_over_d(t)
        log_mid = cumulative[:-1] + half_piece + self.log_jacobian_over_d(mid)
        return mid, log_nodes, log_mid


def _cumulative_from(pieces, origin: int) -> np.ndarray:
    """Running integral that is 0 at node ``origin``, summed outwards from it (summing from a
    grid end would cancel catastrophically where the integrand is huge, near ``a = 0``)."""
    right = np.cumsum(pieces[origin:])
    left = -np.cumsum(pieces[:origin][::-1])[::-1]
    return np.concatenate([left, [0.0], right])


def _integrate(t, mid, f_nodes, f_mid, log_f_nodes):
    """Composite Simpson of ``f`` on the grid plus exponential tails beyond both ends.

    A tail whose log-slope does not decay is divergent: ``inf``.
    """
    body = float(np.sum((t[1:] - t[:-1]) / 6 * (f_nodes[:-1] + 4 * f_mid + f_nodes[1:])))
    total = body
    for end, inner, sign in ((0, 1, -1.0), (-1, -2, 1.0)):
        if f_nodes[end] == 0.0:
            continue
        slope = (log_f_nodes[end] - log_f_nodes[inner]) / (t[end] - t[inner])
        if sign * slope >= 0:
            return math.inf
        total += f_nodes[end] / abs(slope)
    return total


def _moments_one(s: float, depth: int, rate: float, sigma: float):
    """``(mean, mode, variance, grid t, law, log q nodes, normaliser)`` of one mode."""
    law = _Law(s, depth, rate, sigma)
    t = law.grid()
    mid, log_nodes, log_mid = law.log_density(t)
    shift = max(np.max(log_nodes), np.max(log_mid))
    q_nodes, q_mid = np.exp(log_nodes - shift), np.exp(log_mid - shift)
    a_nodes, a_mid = law.amplitude(t), law.amplitude(mid)
    mass = _integrate(t, mid, q_nodes, q_mid, log_nodes)
    if depth == 1:
        mean = s                                    # symmetric law (Student-t in a - s)
        x_nodes, x_mid = a_nodes - s, a_mid - s
    else:
        mean = _integrate(t, mid, a_nodes * q_nodes, a_mid * q_mid, log_nodes + t) / mass
        x_nodes, x_mid = a_nodes - mean, a_mid - mean
    with np.errstate(divide="ignore"):
        log_sq = log_nodes + 2 * np.log(np.abs(x_nodes) + 1e-300)
    second = _integrate(t, mid, x_nodes**2 * q_nodes, x_mid**2 * q_mid, log_sq)
    variance = second / mass
    if depth == 1 and rate >= 1.0:
        variance = math.inf                         # nu = 1 + 1/r <= 2: no second moment
    mode = _mode(law, t, log_nodes)
    return mean, mode, variance, t, law, log_nodes, mass, shift


def _mode(law: _Law, t, log_q):
    """Maximum of the density in ``a``: root of ``2 mu = D'`` next to the grid argmax; ``0``
    when the density is largest at the lower end (L = 2 with ``k < 0``: ``p ~ a^k`` is
    unbounded at 0)."""
    log_p = log_q - np.log(np.abs(np.gradient(law.amplitude(t), t)))
    i = int(np.argmax(log_p))
    if law.depth >= 2 and i == 0:
        return 0.0
    i = min(max(i, 1), t.size - 2)
    left, right = law.dlog_density_a(t[i - 1]), law.dlog_density_a(t[i + 1])
    if left > 0 > right:
        root = brentq(law.dlog_density_a, t[i - 1], t[i + 1], xtol=1e-15, rtol=1e-15)
        return float(law.amplitude(root))
    return float(law.amplitude(t[i]))


def stationary_log_density(grid, spectrum_value, depth: int, learning_rate, batch_size=1,
                           label_noise=0.0):
    """Unnormalised ``log p_inf`` on an increasing ``grid`` (shape ``(n,)``, amplitudes; ``a > 0``
    for L >= 2) that contains ``s`` as a node.

    ``-log D(a) + int_s^a 2 mu / D``, the integral by composite Simpson on the grid intervals
    (midpoints evaluated exactly), so the error is ``O(h^4)``. docs/theory.md §9.
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
                       num_points: int = 20001, tail_mass: float = 1e-10):
    """Normalised stationary density ``p_inf(a)`` of one mode on a uniform grid: ``(grid, p)``,
    both shape ``(num_points,)`` (amplitude and 1/amplitude).

    The grid spans the quantiles ``tail_mass`` and ``1 - tail_mass`` of the law (found from the
    full-support quadrature of :func:`stationary_moments`), and ``p`` is normalised over the
    whole support, so ``trapezoid(p, grid) = 1 - 2 tail_mass`` up to the rule's error (a
    display grid: moments come from :func:`stationary_moments`, which integrates the tails).
    Raises ``ValueError`` without label noise (Dirac mass at ``s``) and, naming
    ``learning_rate``, when no stationary law exists (:func:`stationary_law_exists`).
    docs/theory.md §9.
    """
    _validate(spectrum_value, depth, learning_rate, batch_size, label_noise)
    v.positive_int("num_points", num_points)
    v.finite_scalar("tail_mass", tail_mass, minimum=0.0, strict=True, maximum=0.25)
    if float(label_noise) == 0.0:
        v.fail("label_noise", label_noise,
               "must be > 0 for a density: without label noise the law is a Dirac mass at s")
    s, rate, sigma = float(spectrum_value), float(learning_rate) / float(batch_size), \
        float(label_noise)
    if not bool(stationary_law_exists(s, depth, learning_rate, batch_size, label_noise)):
        v.fail("learning_rate", learning_rate,
               f"no stationary law: at depth 2 it needs (eta/B)(2 s^2 + sigma^2) < 2 s "
               f"(here {rate * (2 * s**2 + sigma**2):g} >= {2 * s:g}); the mass collapses to 0")
    _, _, _, t, law, log_nodes, mass, shift = _moments_one(s, depth, rate, sigma)
    q = np.exp(log_nodes - shift) / mass
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (q[1:] + q[:-1]) * np.diff(t))])
    cdf /= cdf[-1]
    lo_t = np.interp(tail_mass, cdf, t)
    hi_t = np.interp(1.0 - tail_mass, cdf, t)
    grid = np.linspace(float(law.amplitude(lo_t)), float(law.amplitude(hi_t)), num_points)
    # Exact (unnormalised) log-density at the uniform grid: interpolate t(a), then evaluate.
    if depth == 1:
        t_grid = np.arcsinh((grid - s) / law.width)
    else:
        t_grid = np.log(grid)
    # log q at each grid point: from the nearest quadrature node, integrating the drift ratio
    # over the gap by Simpson (8 panels).
    nearest = np.clip(np.searchsorted(t, t_grid), 1, t.size - 1)
    base = np.where(np.abs(t[nearest - 1] - t_grid) < np.abs(t[nearest] - t_grid),
                    nearest - 1, nearest)
    t0 = t[base]
    panels = 8
    u = np.linspace(0.0, 1.0, 2 * panels + 1)
    weights = np.ones(2 * panels + 1)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    points = t0[:, None] + (t_grid - t0)[:, None] * u
    integral = (t_grid - t0) / (6 * panels) * (law.drift_ratio(points) @ weights)
    log_q = (log_nodes[base] - law.log_jacobian_over_d(t0) + integral
             + law.log_jacobian_over_d(t_grid))
    density = np.exp(log_q - shift) / mass / _da_dt(law, t_grid)     # density in a
    return jnp.asarray(grid), jnp.asarray(density)


def _da_dt(law: _Law, t):
    if law.depth == 1:
        return law.width * np.cosh(t)
    return np.exp(t)


def stationary_moments(spectrum, depth: int, learning_rate, batch_size=1,
                       label_noise=0.0) -> StationaryMoments:
    """Mean, mode and variance of each mode's stationary law by quadrature, with first order.

    ``spectrum`` ``(k,)`` (singular values ``s > 0``, units of the amplitude), ``depth`` L,
    ``learning_rate`` eta and ``batch_size`` B (only ``eta / B`` enters), ``label_noise`` sigma.
    Returns :class:`StationaryMoments` of shape ``(k,)`` each. Where no law exists (L = 2 with
    ``(eta/B)(2 s^2 + sigma^2) >= 2 s``, see :func:`stationary_law_exists`) mean, mode and
    variance are NaN and ``exists`` is False; nothing is raised. At L = 1 the law is a
    Student-t with ``1 + B/eta`` degrees of freedom: the variance is ``inf`` for ``eta/B >= 1``.
    Without label noise the law is a Dirac mass at ``s``: mean = mode = s, variance = 0.
    Raises ``ValueError`` (one line, naming the field) on invalid arguments.
    Source: docs/theory.md §9; paper §5, Prop. 5.2, App. F (corrected).
    """
    s_all = np.atleast_1d(np.asarray(spectrum, dtype=float))
    for s in s_all:
        _validate(s, depth, learning_rate, batch_size, label_noise)
    zero, mean1, mode1, var1 = first_order_moments(s_all, depth, learning_rate, batch_size,
                                                   label_noise)
    exists = stationary_law_exists(s_all, depth, learning_rate, batch_size, label_noise)
    rate, sigma = float(learning_rate) / float(batch_size), float(label_noise)
    means, modes, variances = [], [], []
    for s, ok in zip(s_all, exists, strict=True):
        if not ok:
            means.append(math.nan), modes.append(math.nan), variances.append(math.nan)
        elif sigma == 0.0:
            means.append(float(s)), modes.append(float(s)), variances.append(0.0)
        else:
            mean, mode, variance, *_ = _moments_one(float(s), depth, rate, sigma)
            means.append(mean), modes.append(mode), variances.append(variance)
    as_array = lambda x: jnp.asarray(np.asarray(x, dtype=np.float64))  # noqa: E731
    return StationaryMoments(as_array(means), as_array(modes), as_array(variances),
                             mean1, mode1, var1, zero, jnp.asarray(exists))


def _validate(s, depth, learning_rate, batch_size, label_noise):
    v.positive_int("depth", depth)
    v.finite_scalar("spectrum", s, minimum=0.0, strict=True)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    v.finite_scalar("batch_size", batch_size, minimum=0.0, strict=True)
    v.finite_scalar("label_noise", label_noise, minimum=0.0)

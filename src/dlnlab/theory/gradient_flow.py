"""Gradient-flow mode curves and learning times at aligned, balanced states (docs/theory.md §7).

Each mode follows ``da/dt = L |a|^(2-2/L) (s - a)``. Closed forms: L = 1,
``a(t) = s + (a0 - s) e^(-t)``; L = 2 (Saxe et al.), ``a(t) = s e^(2st) / (e^(2st) - 1 + s/a0)``.
Any L: in the logit variable ``u = ln(a / (s - a))`` the flow is smooth and non-stiff,

    du/dt = s L (s sigma(u))^(1 - 2/L),      t(a) = (1/(s L)) int_{u0}^{u(a)} (s sigma(w))^(2/L - 1) dw,

so the time to reach an amplitude is a quadrature of a smooth integrand (composite Gauss-Legendre)
and the curve is an RK4 integration in ``u`` (``ln(a - s)`` for ``a0 > s``; ``a`` itself for a
mode starting at or below 0, which never learns, or a zero singular value).

Rank bottleneck: a network with widths ``(d_0, ..., d_L)`` has rank at most ``min(widths)``, so
only the first ``min(widths)`` modes can be learned (:func:`reachable_modes`); every function
here assumes the modes it is given are reachable — pass ``spectrum[reachable_modes(...)]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from .._types import Array

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)


def _broadcast(spectrum, initial):
    s = jnp.asarray(spectrum)
    a0 = jnp.asarray(initial, dtype=s.dtype if jnp.issubdtype(s.dtype, jnp.floating) else None)
    s, a0 = jnp.broadcast_arrays(s, a0)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s, a0 = s.astype(jnp.zeros(()).dtype), a0.astype(jnp.zeros(()).dtype)
    return s, a0


def reachable_modes(spectrum, widths) -> np.ndarray:
    """Which teacher modes the network can learn: bool array of shape ``(k,)``.

    ``spectrum`` is the spectrum ``(k,)`` (or its length ``k``, an int); ``widths`` the layer
    widths ``(d_in, d_1, ..., d_out)``. The end-to-end map ``W = W_L ... W_1`` has rank at most
    the bottleneck ``b = min(widths)``, so mode ``k`` (0-based, modes sorted by decreasing
    ``s``) is reachable iff ``k < b``; an unreachable mode is never learned: the minimum is the
    best rank-``b`` approximation of the teacher (Eckart-Young), where its amplitude is 0, and a
    rank-``b`` map cannot hold it beside the ``b`` larger modes (transiently, while the network
    is not yet aligned, its amplitude can leave 0). Raises ``ValueError`` (naming
    ``widths`` or ``spectrum``) on invalid input. docs/theory.md §7.
    """
    items = v.widths_tuple("widths", widths)
    if isinstance(spectrum, int | np.integer) and not isinstance(spectrum, bool):
        if spectrum < 0:
            v.fail("spectrum", spectrum, "a number of modes must be >= 0")
        count = int(spectrum)
    else:
        arr = np.asarray(spectrum)
        if arr.ndim != 1:
            v.fail("spectrum", spectrum, "must be a 1-D spectrum or a number of modes")
        count = arr.shape[0]
    return np.arange(count) < min(items)


def _check_interval(name_target, target, spectrum, initial):
    """Learning times need ``0 < a0 <= a < s`` (the flow only reaches s asymptotically)."""
    if not v.is_concrete((target, spectrum, initial)):
        return
    s = np.asarray(spectrum, dtype=float)
    a0 = np.broadcast_to(np.asarray(initial, dtype=float), s.shape)
    a1 = np.broadcast_to(np.asarray(target, dtype=float), s.shape)
    if np.any(s <= 0):
        v.fail("spectrum", spectrum, "learning times need singular values > 0")
    if np.any(a0 <= 0) or np.any(a0 >= s):
        v.fail("initial_amplitude", initial, "must lie in (0, s) for every mode")
    if np.any(a1 < a0) or np.any(a1 >= s):
        v.fail(name_target, target, "must lie in [initial amplitude, s) for every mode")


def gradient_flow_time(target, spectrum, depth: int, initial_amplitude) -> Array:
    """Time ``t`` for gradient flow to move a mode from ``initial_amplitude`` to ``target``.

    ``t = int_{a0}^{a} dx / (L x^(2-2/L) (s - x))``; closed forms at L = 1, 2, quadrature in the
    logit variable otherwise (relative error ~1e-13 in float64). Shapes broadcast per mode.
    """
    depth = v.positive_int("depth", depth)
    _check_interval("target", target, spectrum, initial_amplitude)
    s, a0 = _broadcast(spectrum, initial_amplitude)
    a1 = jnp.asarray(target, s.dtype)
    u0 = jnp.log(a0) - jnp.log(s - a0)
    u1 = jnp.log(a1) - jnp.log(s - a1)
    if depth == 1:
        return jnp.log((s - a0) / (s - a1))
    if depth == 2:
        return (u1 - u0) / (2 * s)
    # Composite Gauss-Legendre: 256 panels x 12 nodes over [u0, u1]. The integrand is smooth
    # and varies at most like exp(|w|) (rate <= 1), so panels of width <= (u1-u0)/256 converge.
    panels = 256
    edges = u0[..., None] + (u1 - u0)[..., None] * jnp.linspace(0.0, 1.0, panels + 1, dtype=s.dtype)
    half = 0.5 * (edges[..., 1:] - edges[..., :-1])
    mid = 0.5 * (edges[..., 1:] + edges[..., :-1])
    nodes = mid[..., None] + half[..., None] * jnp.asarray(_GL_NODES, s.dtype)
    x = s[..., None, None] * jax.nn.sigmoid(nodes)
    integrand = x ** (2.0 / depth - 1.0)
    integral = jnp.sum(half[..., None] * jnp.asarray(_GL_WEIGHTS, s.dtype) * integrand,
                       axis=(-2, -1))
    return integral / (s * depth)


def learning_time(fraction, spectrum, depth: int, initial_amplitude) -> Array:
    """Time for each mode to reach ``fraction * s`` from ``initial_amplitude`` (fraction < 1)."""
    v.finite_scalar("fraction", fraction, minimum=0.0, strict=True, maximum=1.0)
    if v.is_concrete(fraction) and np.any(np.asarray(fraction) >= 1.0):
        v.fail("fraction", fraction, "must be < 1: gradient flow reaches s only as t -> infinity")
    s = jnp.asarray(spectrum)
    return gradient_flow_time(fraction * s, spectrum, depth, initial_amplitude)


def half_learning_time(spectrum, depth: int, initial_amplitude) -> Array:
    """``t_half``: time to reach ``s/2``; L = 2 gives ``ln(s/a0 - 1) / (2 s)``."""
    return learning_time(0.5, spectrum, depth, initial_amplitude)


def _default_steps(times, spectrum, initial, depth) -> int:
    t_max = float(np.max(np.abs(np.asarray(times)))) if np.size(times) else 0.0
    scale = max(float(np.max(np.abs(np.asarray(spectrum)))),
                float(np.max(np.abs(np.asarray(initial)))), 1e-12)
    rate = depth * scale ** (2.0 - 2.0 / depth) + 1.0
    # rate * h <= 2e-3 keeps RK4's global error ~1e-12 relative for these smooth fields.
    return int(min(max(math.ceil(t_max * rate / 2e-3), 1000), 5_000_000))


def gradient_flow_curve(times, spectrum, depth: int, initial_amplitude,
                        num_steps: int | None = None) -> Array:
    """Mode amplitudes under gradient flow at ``times`` (``t >= 0``), shape ``times.shape + (k,)``.

    ``spectrum`` and ``initial_amplitude`` broadcast to ``(k,)`` (the simulator's mode axis).
    ``num_steps`` (RK4 steps up to ``max(times)``) is chosen from the rates when omitted.
    Solves ``da/dt = L |a|^(2-2/L) (s - a)`` per mode (docs/theory.md §7). The modes are
    assumed reachable: with a width narrower than the teacher's rank pass only
    ``spectrum[reachable_modes(spectrum, widths)]`` (the others stay at 0). Raises
    ``ValueError`` for negative or non-finite ``times`` or non-finite ``initial_amplitude``.
    """
    depth = v.positive_int("depth", depth)
    times = jnp.asarray(times)
    s, a0 = _broadcast(spectrum, initial_amplitude)
    s, a0 = jnp.atleast_1d(s), jnp.atleast_1d(a0)
    if v.is_concrete((times, s, a0)):
        v.finite_array("times", times)
        v.finite_array("initial_amplitude", a0)
        if np.any(np.asarray(times) < 0):
            v.fail("times", times, "must be >= 0")
    t = times.astype(s.dtype)
    if depth == 1:
        return s + (a0 - s) * jnp.exp(-t[..., None])
    if depth == 2:
        interior = (a0 > 0) & (s > 0)
        e = jnp.exp(2 * s * t[..., None])
        safe_a0 = jnp.where(interior, a0, 1.0)
        closed = s * e / (e - 1.0 + s / safe_a0)
        if bool(v.is_concrete((s, a0)) and np.all(np.asarray(interior))):
            return closed
        return jnp.where(interior, closed, _rk4_curve(t, s, a0, depth, num_steps))
    return _rk4_curve(t, s, a0, depth, num_steps)


def _rk4_curve(t, s, a0, depth, num_steps):
    if num_steps is None:
        if not v.is_concrete((t, s, a0)):
            v.fail("num_steps", None, "must be given when called inside jit/vmap")
        num_steps = _default_steps(t, s, a0, depth)
    t_max = jnp.maximum(jnp.max(t), 0.0) if t.size else jnp.zeros((), s.dtype)
    h = t_max / num_steps
    below = (a0 > 0) & (a0 < s)            # logit variable
    above = (a0 > s) & (s > 0)             # log(a - s)
    p = 2.0 - 2.0 / depth

    def rhs(y):
        u, w, a = y
        x = s * jax.nn.sigmoid(u)
        du = s * depth * x ** (1.0 - 2.0 / depth)
        xa = s + jnp.exp(w)
        dw = -depth * xa**p
        da = depth * jnp.abs(a) ** p * (s - a)
        return du, dw, da

    def step(y, _):
        k1 = rhs(y)
        k2 = rhs(tuple(yi + 0.5 * h * ki for yi, ki in zip(y, k1, strict=True)))
        k3 = rhs(tuple(yi + 0.5 * h * ki for yi, ki in zip(y, k2, strict=True)))
        k4 = rhs(tuple(yi + h * ki for yi, ki in zip(y, k3, strict=True)))
        y_new = tuple(yi + h / 6 * (a + 2 * b + 2 * c + d)
                      for yi, a, b, c, d in zip(y, k1, k2, k3, k4, strict=True))
        return y_new, (y_new, rhs(y_new))

    u0 = jnp.where(below, jnp.log(jnp.where(below, a0, 0.5 * s + 1.0))
                   - jnp.log(jnp.where(below, s - a0, 1.0)), 0.0)
    w0 = jnp.where(above, jnp.log(jnp.where(above, a0 - s, 1.0)), 0.0)
    y0 = (u0, w0, a0)
    _, (ys, fs) = jax.lax.scan(step, y0, None, length=num_steps)
    ys = tuple(jnp.concatenate([y0i[None], yi]) for y0i, yi in zip(y0, ys, strict=True))
    fs = tuple(jnp.concatenate([f0i[None], fi]) for f0i, fi in zip(rhs(y0), fs, strict=True))
    # Cubic Hermite interpolation between RK4 nodes (uses the exact slopes): O(h^4) accurate.
    pos = jnp.clip(t / jnp.where(h > 0, h, 1.0), 0.0, num_steps)
    index = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, max(num_steps - 1, 0))
    frac = (pos - index)[..., None]

    def hermite(y, f):
        y0_, y1_ = y[index], y[index + 1]
        f0_, f1_ = f[index] * h, f[index + 1] * h
        h00 = 2 * frac**3 - 3 * frac**2 + 1
        h10 = frac**3 - 2 * frac**2 + frac
        h01 = -2 * frac**3 + 3 * frac**2
        h11 = frac**3 - frac**2
        return h00 * y0_ + h10 * f0_ + h01 * y1_ + h11 * f1_

    u, w, a = (hermite(y, f) for y, f in zip(ys, fs, strict=True))
    from_u = s * jax.nn.sigmoid(u)
    from_w = s + jnp.exp(w)
    return jnp.where(below, from_u, jnp.where(above, from_w, a))

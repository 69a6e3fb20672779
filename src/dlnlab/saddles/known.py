"""Closed forms for known critical points (docs/saddles.md, "Depth two: the closed form").

Depth ``L = 2``, whitened inputs, teacher ``M = U diag(s) V^T`` with ``m = min(d_in, d_out)`` modes,
hidden width ``d_1 >= r``, and the normal-form point with zero residuals::

    W_1 = [diag(s_S) V_S^T ; 0],   W_2 = [U_S, 0]      (so W = P_S M, D = -sum_{q not in S} s_q u_q v_q^T).

The Hessian quadratic form ``H[d, d] = ||dW_2 W_1 + W_2 dW_1||_F^2 + 2 <D, dW_2 dW_1>`` splits
into invariant blocks of at most two coordinates (``p`` in ``S``, ``q`` not in ``S``, ``h`` a free
hidden unit, ``f = d_1 - r`` of them):

- ``(e_i(p) v_b^T, u_a e_i(b)^T)`` for ``a, b`` in ``S``: eigenvalues ``0`` (gauge) and ``1 + s_b^2``;
- ``(e_i(p) v_q^T, u_q e_i(p)^T)``: ``[[1, -s_q], [-s_q, s_p^2]]``, eigenvalues
  ``lambda_pm(s_p, s_q) = ((1 + s_p^2) +- sqrt((1 - s_p^2)^2 + 4 s_q^2)) / 2``;
- ``e_i(p) v_b^T`` for the ``d_in - m`` input directions outside the teacher's: ``1``;
  ``u_a e_i(p)^T`` for the ``d_out - m`` output directions outside: ``s_p^2``;
- ``(e_h v_q^T, u_q e_h^T)``: ``[[0, -s_q], [-s_q, 0]]``, eigenvalues ``+- s_q``;
- every other coordinate of a free unit: ``0``.

Hence ``lambda_min = -s_q*`` (``q*`` the largest unlearned mode) when ``d_1 > r``, and
``lambda_min = lambda_-(s_p_min, s_q*)`` when ``d_1 = r``, which is negative iff ``s_q* > s_p_min``
(a learned mode smaller than an unlearned one); with ``d_1 = r`` and ``S`` the top ``r`` modes the
point is the global minimum of the width-``r`` network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _validation as v


def _two_by_two(s_p: float, s_q: float) -> tuple[float, float]:
    """Eigenvalues ``lambda_-, lambda_+`` of ``[[1, -s_q], [-s_q, s_p^2]]``."""
    trace = 1.0 + s_p * s_p
    root = np.sqrt((1.0 - s_p * s_p) ** 2 + 4.0 * s_q * s_q)
    return 0.5 * (trace - root), 0.5 * (trace + root)


def two_layer_saddle_spectrum(spectrum: Sequence[float], subset: Sequence[int], d_in: int,
                              d_out: int, hidden: int) -> np.ndarray:
    """All ``P = hidden (d_in + d_out)`` Hessian eigenvalues (ascending) at the depth-2 normal-form
    point ``W = P_S M`` with zero residuals (module docstring), whitened population loss.

    ``spectrum``: the teacher's singular values (padded with zeros to ``m = min(d_in, d_out)``);
    ``subset``: 0-based indices ``S``; ``hidden = d_1 >= |S|``.
    """
    s = np.asarray(spectrum, dtype=np.float64).ravel()
    d_in, d_out, hidden = (v.positive_int(n, x) for n, x in
                           (("d_in", d_in), ("d_out", d_out), ("hidden", hidden)))
    m = min(d_in, d_out)
    if s.size > m:
        v.fail("spectrum", spectrum, f"has more than min(d_in, d_out) = {m} values")
    s = np.concatenate([s, np.zeros(m - s.size)])
    chosen = sorted(int(a) for a in subset)
    if len(set(chosen)) != len(chosen) or any(a < 0 or a >= m for a in chosen):
        v.fail("subset", subset, f"must be distinct indices in 0..{m - 1}")
    r = len(chosen)
    if hidden < r:
        v.fail("hidden", hidden, f"must be >= |S| = {r}")
    rest = [q for q in range(m) if q not in chosen]
    free = hidden - r
    values: list[float] = []
    for b in chosen:                              # signal x signal: gauge zeros and 1 + s_b^2
        values += [0.0] * r + [1.0 + s[b] ** 2] * r
    for p in chosen:
        for q in rest:
            values += list(_two_by_two(s[p], s[q]))
        values += [1.0] * (d_in - m) + [s[p] ** 2] * (d_out - m)
    for q in rest:
        values += [-s[q], s[q]] * free
    zeros = free * (d_in + d_out) - 2 * free * len(rest)
    values += [0.0] * zeros
    out = np.sort(np.asarray(values))
    assert out.size == hidden * (d_in + d_out), (out.size, hidden, d_in, d_out)
    return out


def two_layer_smallest_eigenvalue(spectrum: Sequence[float], subset: Sequence[int],
                                  hidden: int) -> float:
    """``lambda_min`` at the depth-2 normal-form point: ``-s_q*`` if ``hidden > |S|``, else
    ``min(0, lambda_-(min_{p in S} s_p, s_q*))`` (``q*`` the largest mode not in ``S``; the 0 is
    the gauge block's)."""
    s = np.asarray(spectrum, dtype=np.float64).ravel()
    chosen = sorted(int(a) for a in subset)
    rest = [s[q] for q in range(s.size) if q not in chosen]
    s_q = max(rest) if rest else 0.0
    if hidden > len(chosen):
        return -s_q
    if not chosen:
        return 0.0
    return min(0.0, _two_by_two(min(s[p] for p in chosen), s_q)[0])   # gauge zeros

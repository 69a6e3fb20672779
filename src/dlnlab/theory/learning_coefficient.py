"""Exact learning coefficient (real log canonical threshold) of deep linear networks (docs/theory.md §14).

Sources: M. Aoyagi (2024), "Consideration on the learning efficiency of multiple-layered neural
networks with linear units", Neural Networks 172, 106132, Theorem 1 (any depth); M. Aoyagi and
S. Watanabe (2005), "Stochastic complexities of reduced rank regression in Bayesian estimation",
Neural Networks 18, 924-933, Theorem 1 (two layers); S. Watanabe (2009), "Algebraic Geometry and
Statistical Learning Theory" (the free energy ``F_n = n L_n + lambda log n - (m - 1) log log n + O_p(1)``).

Everything is exact rational arithmetic (``fractions.Fraction`` and Python ints, no floats), so
tests compare values with ``==``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations

import numpy as np

from .. import _validation as v

__all__ = [
    "LearningCoefficient",
    "learning_coefficient",
    "parameter_count",
    "reduced_rank_regression_coefficient",
]


@dataclass(frozen=True)
class LearningCoefficient:
    """The learning coefficient ``lambda`` (``value``) and its multiplicity ``m``.

    ``subset``, ``ell`` and ``a`` are Aoyagi's intermediate quantities (docs/theory.md §14): the
    indices into ``widths`` of the subset ``S`` (``|S| = ell + 1``, sorted) and
    ``a = sum_{j in S} M_j - (ceil(sum_{j in S} M_j / ell) - 1) ell`` in ``1..ell``. They are
    ``None`` for :func:`reduced_rank_regression_coefficient`, whose cases do not use them.
    """

    value: Fraction
    multiplicity: int
    subset: tuple[int, ...] | None = None
    ell: int | None = None
    a: int | None = None


def parameter_count(widths: Sequence[int]) -> int:
    """Number of weights ``sum_{l=1}^{L} d_l d_{l-1}`` of the network with ``widths = (d_0, ..., d_L)``.

    Raises ``ValueError`` (one line) unless ``widths`` is a sequence of at least two integers >= 1.
    """
    widths = v.widths_tuple("widths", widths)
    return sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1))


def _check_rank(rank, widths: tuple[int, ...]) -> int:
    smallest = min(widths)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or not 0 <= rank <= smallest:
        v.fail("rank", rank, f"must be an integer in 0..{smallest} (the smallest width) for widths {widths}")
    return int(rank)


def _aoyagi_subset(reduced: Sequence[int]) -> tuple[int, ...]:
    """Indices of Aoyagi's subset ``S`` for the reduced widths ``M_j >= 0`` (at least two of them).

    Sort ``M`` increasingly, ``m_1 <= ... <= m_n``, and let ``f(k) = sum_{i <= k} m_i - (k - 1) m_k``.
    ``S`` must be a prefix of the sorted order (``max_S M < min_{not S} M``, ties taken together),
    and for the prefix of size ``k = ell + 1`` the other two conditions read ``f(k) >= 0`` and
    ``f(k + 1) < 0`` (``f(n + 1) = -inf``), because ``f(k + 1) = sum_{i <= k} m_i - (k - 1) m_{k+1}``.
    ``f(k + 1) - f(k) = -(k - 1)(m_{k+1} - m_k) <= 0``, so ``f`` is non-increasing, and
    ``f(1) = f(2) = m_1 >= 0``: the unique ``S`` is the prefix of size ``k = max{k : f(k) >= 0}``
    (``k >= 2``, so ``ell >= 1``). A tie ``m_k = m_{k+1}`` would give ``f(k + 1) = f(k) >= 0``, so
    the prefix never splits a tie.
    """
    order = sorted(range(len(reduced)), key=lambda j: (reduced[j], j))
    m = [reduced[j] for j in order]
    size = 2
    partial = m[0] + m[1]
    for k in range(3, len(m) + 1):
        partial += m[k - 1]
        if partial - (k - 1) * m[k - 1] < 0:
            break
        size = k
    return tuple(sorted(order[:size]))


def _coefficient_from_subset(widths: tuple[int, ...], rank: int, subset: tuple[int, ...],
                             rank_sign: int = -1) -> LearningCoefficient:
    """Aoyagi's Theorem 1 for a given subset ``S`` (``rank_sign = +1`` only to show, in tests,
    that a flipped sign of the ``r^2`` term is detected)."""
    reduced = [h - rank for h in widths]
    ell = len(subset) - 1
    total = sum(reduced[j] for j in subset)
    ceiling = -(-total // ell)
    a = total - (ceiling - 1) * ell
    pairs = sum(reduced[i] * reduced[j] for i, j in combinations(subset, 2))
    value = (Fraction(rank_sign * rank * rank + rank * (widths[0] + widths[-1]), 2)
             + Fraction(a * (ell - a), 4 * ell)
             - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
             + Fraction(pairs, 2))
    return LearningCoefficient(value=value, multiplicity=a * (ell - a) + 1, subset=subset, ell=ell, a=a)


def learning_coefficient(widths: Sequence[int], rank: int) -> LearningCoefficient:
    """Learning coefficient ``lambda`` and multiplicity ``m`` of a deep linear network at a rank-``r`` truth.

    Model ``x -> W_L ... W_1 x`` with ``widths = (H_1, ..., H_{N+1}) = (d_0 = d_in, ..., d_L = d_out)``,
    ``L = N >= 1`` layers, true map of rank ``r``. With ``M_j = H_j - r`` there is a unique subset
    ``S`` of indices, ``|S| = ell + 1``, with

        max_{j in S} M_j < min_{k not in S} M_k,
        sum_{j in S} M_j >= ell max_{j in S} M_j,
        sum_{j in S} M_j < ell min_{k not in S} M_k

    (the first and last vacuous when ``S`` is everything). With ``Sigma = sum_{j in S} M_j`` and
    ``a = Sigma - (ceil(Sigma / ell) - 1) ell``,

        lambda = (-r^2 + r (H_1 + H_{N+1})) / 2 + a (ell - a) / (4 ell)
                 - ell (ell - 1) / 4 (Sigma / ell)^2 + 1/2 sum_{i < j in S} M_i M_j,
        m = a (ell - a) + 1.

    Source: Aoyagi (2024), Neural Networks 172, 106132, Theorem 1; docs/theory.md §14. ``S`` is
    found in ``O(L log L)`` (see ``_aoyagi_subset``; ``ell >= 1`` always). One layer gives the
    regular value ``d_0 d_1 / 2``, ``m = 1``, for every rank. ``lambda`` is the *global*
    coefficient, i.e. the local one at the most singular true parameters; see §14.

    Returns exact values: ``value`` a ``Fraction``, ``multiplicity`` an ``int``.

    Raises ``ValueError`` (one line ``name=value: rule``) unless ``widths`` is a sequence of at
    least two integers >= 1 and ``rank`` an integer in ``0..min(widths)`` (bools rejected).
    """
    widths = v.widths_tuple("widths", widths)
    rank = _check_rank(rank, widths)
    subset = _aoyagi_subset([h - rank for h in widths])
    return _coefficient_from_subset(widths, rank, subset)


def reduced_rank_regression_coefficient(input_dimension: int, hidden_width: int, output_dimension: int,
                                        rank: int) -> LearningCoefficient:
    """Learning coefficient of reduced-rank regression ``x -> B A x`` (two layers), from its four cases.

    ``A`` of shape ``(H, M)``, ``B`` of shape ``(N, H)`` with ``M = input_dimension``,
    ``H = hidden_width``, ``N = output_dimension``, true map of rank ``r``:

    1. ``N + r <= M + H``, ``M + r <= N + H``, ``H + r <= M + N``:
       ``lambda = [2 (H + r)(M + N) - (M - N)^2 - (H + r)^2] / 8``, ``m = 1`` if ``M + H + N + r``
       is even; ``lambda = [2 (H + r)(M + N) - (M - N)^2 - (H + r)^2 + 1] / 8``, ``m = 2`` if odd;
    2. ``M + H < N + r``: ``lambda = (H M - H r + N r) / 2``, ``m = 1``;
    3. ``N + H < M + r``: ``lambda = (H N - H r + M r) / 2``, ``m = 1``;
    4. ``M + N < H + r``: ``lambda = M N / 2``, ``m = 1``.

    (Cases 2-4 exclude each other when ``r <= min(M, H, N)``.) Source: Aoyagi and Watanabe (2005),
    Neural Networks 18, 924-933, Theorem 1; docs/theory.md §14. Equals
    ``learning_coefficient((M, H, N), r)`` (tested on every case with ``M, H, N <= 12``).

    Raises ``ValueError`` (one line) unless the three dimensions are integers >= 1 and ``rank``
    an integer in ``0..min(M, H, N)``.
    """
    M = v.positive_int("input_dimension", input_dimension)
    H = v.positive_int("hidden_width", hidden_width)
    N = v.positive_int("output_dimension", output_dimension)
    r = _check_rank(rank, (M, H, N))
    if M + H < N + r:
        return LearningCoefficient(Fraction(H * M - H * r + N * r, 2), 1)
    if N + H < M + r:
        return LearningCoefficient(Fraction(H * N - H * r + M * r, 2), 1)
    if M + N < H + r:
        return LearningCoefficient(Fraction(M * N, 2), 1)
    core = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 0:
        return LearningCoefficient(Fraction(core, 8), 1)
    return LearningCoefficient(Fraction(core + 1, 8), 2)

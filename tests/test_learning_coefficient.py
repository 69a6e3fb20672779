"""Exact learning coefficient of deep linear networks (docs/theory.md §14).

Independent checks: a brute-force search over every subset of indices for Aoyagi's conditions,
the formula re-typed here from the paper (with a switch that flips the sign of the ``r^2`` term, to
show the tests reject that published mistake), Aoyagi-Watanabe's four-case reduced-rank-regression
formula, the regular cases, and a numerical Jacobian rank for the local value at a generic point.
All comparisons are exact (``Fraction``).
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import ceil

import numpy as np
import pytest

from dlnlab.theory.learning_coefficient import (
    LearningCoefficient,
    learning_coefficient,
    parameter_count,
    reduced_rank_regression_coefficient,
)

KNOWN = [  # (widths, rank, lambda, multiplicity): the values
    ((5, 3, 5), 0, Fraction(13, 2), 2),
    ((12, 12, 12, 12, 12), 3, Fraction(57), 4),
    ((12, 12, 12), 3, Fraction(62), 2),
    ((100, 100, 100), 10, Fraction(7975, 2), 1),
]


def brute_force_subsets(widths, rank):
    """Every subset S of indices (|S| >= 1) meeting Aoyagi's three conditions, by enumeration."""
    m = [h - rank for h in widths]
    found = []
    n = len(m)
    for size in range(1, n + 1):
        for subset in itertools.combinations(range(n), size):
            rest = [m[k] for k in range(n) if k not in subset]
            inside = [m[j] for j in subset]
            ell = size - 1
            total = sum(inside)
            if rest and not max(inside) < min(rest):
                continue
            if not total >= ell * max(inside):
                continue
            if rest and not total < ell * min(rest):
                continue
            found.append(subset)
    return found


def aoyagi_formula(widths, rank, subset, r_squared_sign=-1):
    """Theorem 1 of Aoyagi (2024), typed from the paper; ``r_squared_sign=+1`` is the wrong formula."""
    m = [h - rank for h in widths]
    ell = len(subset) - 1
    total = sum(m[j] for j in subset)
    a = total - (ceil(Fraction(total, ell)) - 1) * ell
    value = (Fraction(r_squared_sign * rank**2 + rank * (widths[0] + widths[-1]), 2)
             + Fraction(a * (ell - a), 4 * ell)
             - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
             + Fraction(1, 2) * sum(m[i] * m[j] for i, j in itertools.combinations(subset, 2)))
    return value, a * (ell - a) + 1


def rrr_case(m, h, n, r):
    """Which of Aoyagi-Watanabe's four cases ``(M, H, N, r)`` falls in."""
    if m + h < n + r:
        return 2
    if n + h < m + r:
        return 3
    if m + n < h + r:
        return 4
    return 1


def test_known_values():
    for widths, rank, value, multiplicity in KNOWN:
        result = learning_coefficient(widths, rank)
        assert isinstance(result, LearningCoefficient)
        assert isinstance(result.value, Fraction)
        assert (result.value, result.multiplicity) == (value, multiplicity), (widths, rank)
        if len(widths) == 3:
            rrr = reduced_rank_regression_coefficient(*widths, rank)
            assert (rrr.value, rrr.multiplicity) == (value, multiplicity)
    # the worked example of §14: S is everything, ell = 2, a = 1
    example = learning_coefficient((5, 3, 5), 0)
    assert (example.subset, example.ell, example.a) == ((0, 1, 2), 2, 1)


def test_two_layers_equal_reduced_rank_regression_for_every_case_up_to_twelve():
    cases = {1: 0, 2: 0, 3: 0, 4: 0}
    odd = 0
    for m, h, n in itertools.product(range(1, 13), repeat=3):
        for r in range(min(m, h, n) + 1):
            deep = learning_coefficient((m, h, n), r)
            rrr = reduced_rank_regression_coefficient(m, h, n, r)
            assert (deep.value, deep.multiplicity) == (rrr.value, rrr.multiplicity), (m, h, n, r)
            case = rrr_case(m, h, n, r)
            cases[case] += 1
            odd += case == 1 and (m + h + n + r) % 2 == 1
    # every branch of the four-case formula was exercised, the odd (m = 2) branch too
    assert all(count > 0 for count in cases.values()), cases
    assert odd > 0


def test_flipped_r_squared_sign_is_rejected():
    # the correct re-typed formula reproduces the known values ...
    for widths, rank, value, multiplicity in KNOWN:
        subset = learning_coefficient(widths, rank).subset
        assert aoyagi_formula(widths, rank, subset) == (value, multiplicity)
    # ... the flipped sign (+r^2) misses every known value with r > 0 (by exactly r^2) ...
    for widths, rank, value, _ in KNOWN:
        subset = learning_coefficient(widths, rank).subset
        wrong, _ = aoyagi_formula(widths, rank, subset, r_squared_sign=+1)
        if rank > 0:
            assert wrong != value
            assert wrong - value == rank**2
    # ... and disagrees with reduced-rank regression on every two-layer case with r > 0
    disagreements = 0
    for m, h, n in itertools.product(range(1, 7), repeat=3):
        for r in range(1, min(m, h, n) + 1):
            subset = learning_coefficient((m, h, n), r).subset
            wrong, _ = aoyagi_formula((m, h, n), r, subset, r_squared_sign=+1)
            assert wrong != reduced_rank_regression_coefficient(m, h, n, r).value
            disagreements += 1
    assert disagreements > 100


def test_exactly_one_subset_and_the_module_finds_it():
    """Uniqueness by enumeration of all subsets, for every widths vector with entries 1..6 and
    length 2..5 and every rank; the value equals the re-typed formula on that subset."""
    checked = 0
    for length in range(2, 6):
        for widths in itertools.product(range(1, 7), repeat=length):
            for rank in range(min(widths) + 1):
                found = brute_force_subsets(widths, rank)
                assert len(found) == 1, (widths, rank, found)
                result = learning_coefficient(widths, rank)
                assert result.subset == found[0], (widths, rank)
                assert result.ell == len(found[0]) - 1 >= 1
                assert 1 <= result.a <= result.ell
                assert (result.value, result.multiplicity) == aoyagi_formula(widths, rank, found[0])
                checked += 1
    assert checked > 15_000


def _bounded_cases():
    for length in (3, 4):  # all two- and three-layer networks with widths <= 6
        for widths in itertools.product(range(1, 7), repeat=length):
            for rank in range(min(widths) + 1):
                yield widths, rank
    rng = np.random.default_rng(20240314)
    for _ in range(300):  # deeper random networks
        depth = int(rng.integers(3, 11))
        widths = tuple(int(w) for w in rng.integers(1, 40, size=depth + 1))
        yield widths, int(rng.integers(0, min(widths) + 1))


def test_coefficient_between_rank_manifold_and_parameter_count():
    """``dim(rank-r matrices)/2 <= lambda < d/2`` (strict: depth >= 2 has the GL(d_1) symmetry, so the
    model is never regular), with equality on the left exactly when the bottleneck is ``r``."""
    count = 0
    for widths, rank in _bounded_cases():
        result = learning_coefficient(widths, rank)
        d = parameter_count(widths)
        manifold = Fraction(rank * (widths[0] + widths[-1]) - rank**2, 2)
        assert result.value < Fraction(d, 2), (widths, rank)
        assert result.value >= manifold, (widths, rank)
        assert (result.value == manifold) == (rank == min(widths)), (widths, rank)
        assert result.multiplicity >= 1
        count += 1
    assert count > 2000


def test_rank_zero_is_invariant_under_permutations_of_the_widths():
    for widths in [(5, 3, 5), (2, 7, 4, 4), (6, 1, 3, 8, 2), (9, 4, 4, 7, 3, 11), (3, 3, 3, 3, 3, 3)]:
        reference = learning_coefficient(widths, 0)
        for permuted in itertools.permutations(widths):
            result = learning_coefficient(permuted, 0)
            assert (result.value, result.multiplicity) == (reference.value, reference.multiplicity)
    # at rank > 0 the ends H_1, H_{N+1} are special: a permutation that changes them changes lambda
    assert learning_coefficient((5, 3, 5), 1).value != learning_coefficient((3, 5, 5), 1).value


def test_rank_r_is_rank_r_manifold_plus_rank_zero_of_reduced_widths():
    """``lambda(H, r) = (r (H_1 + H_{N+1}) - r^2)/2 + lambda(H - r, 0)`` (same multiplicity)."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(400):
        depth = int(rng.integers(1, 7))
        widths = tuple(int(w) for w in rng.integers(2, 20, size=depth + 1))
        for rank in range(min(widths)):  # reduced widths stay >= 1
            full = learning_coefficient(widths, rank)
            reduced = learning_coefficient(tuple(h - rank for h in widths), 0)
            manifold = Fraction(rank * (widths[0] + widths[-1]) - rank**2, 2)
            assert full.value == manifold + reduced.value
            assert full.multiplicity == reduced.multiplicity
            checked += 1
    assert checked > 1000


def test_one_layer_is_regular():
    for d0, d1 in itertools.product(range(1, 13), repeat=2):
        for rank in range(min(d0, d1) + 1):
            result = learning_coefficient((d0, d1), rank)
            assert (result.value, result.multiplicity) == (Fraction(d0 * d1, 2), 1)


def test_bottleneck_rank_is_regular_on_the_rank_manifold():
    # (5, 3, 5) at r = 3: 30 parameters minus the 9-dimensional GL(3) orbit, halved
    assert learning_coefficient((5, 3, 5), 3).value == Fraction(21, 2)
    # all widths equal r: the end-to-end map is a regular r x r matrix, lambda = r^2 / 2
    for depth in range(1, 6):
        for r in range(1, 6):
            result = learning_coefficient((r,) * (depth + 1), r)
            assert (result.value, result.multiplicity) == (Fraction(r * r, 2), 1)


def _product_jacobian_rank(m, h, n, r, rng):
    """Rank of (dW_2, dW_1) -> dW_2 W_1 + W_2 dW_1 at W_1 (h x m, full rank), W_2 (n x h, rank r)."""
    w1 = rng.standard_normal((h, m))
    w2 = rng.standard_normal((n, r)) @ rng.standard_normal((r, h))
    # vec(dW_2 W_1) = (W_1^T kron I_n) vec(dW_2); vec(W_2 dW_1) = (I_m kron W_2) vec(dW_1) (column-major)
    jacobian = np.hstack([np.kron(w1.T, np.eye(n)), np.kron(np.eye(m), w2)])
    return np.linalg.matrix_rank(jacobian)


def test_generic_true_point_has_a_larger_or_equal_local_coefficient():
    """At W_1 of full rank H <= M and W_2 of rank r the product map has first-order image of
    dimension N H + r M - r H (checked by a numerical Jacobian rank), the loss is Morse-Bott there and
    the local coefficient is half of it; Aoyagi's global value is at most that. Strictly below at
    (5, 3, 5), r = 0, 1; equal at r = 2, where only the multiplicity (2 against 1) tells them apart."""
    rng = np.random.default_rng(3)
    strict = 0
    for m, h, n in [(5, 3, 5), (6, 2, 4), (7, 4, 3), (4, 4, 6), (9, 5, 8)]:
        for r in range(min(m, h, n) + 1):
            image = n * h + r * m - r * h
            assert _product_jacobian_rank(m, h, n, r, rng) == image
            global_value = learning_coefficient((m, h, n), r).value
            assert global_value <= Fraction(image, 2), (m, h, n, r)
            strict += global_value < Fraction(image, 2)
    assert strict >= 5
    assert learning_coefficient((5, 3, 5), 0).value == Fraction(13, 2)  # vs the generic local 15/2
    assert learning_coefficient((5, 3, 5), 1).value == 8  # vs the generic local 17/2
    equal = learning_coefficient((5, 3, 5), 2)
    assert (equal.value, equal.multiplicity) == (Fraction(19, 2), 2)  # generic local: 19/2, m = 1


def test_parameter_count():
    assert parameter_count((5, 3, 5)) == 30
    assert parameter_count((4, 7)) == 28
    assert parameter_count((2, 3, 4, 5)) == 6 + 12 + 20


@pytest.mark.parametrize("widths, rank, start", [
    ((5, True, 5), 0, "widths=(5, True, 5): every width"),
    ((5, 3.0, 5), 0, "widths=(5, 3.0, 5): every width"),
    ((5, -3, 5), 0, "widths=(5, -3, 5): every width"),
    ((5, 0, 5), 0, "widths=(5, 0, 5): every width"),
    ((5,), 0, "widths=(5,): must list at least"),
    (5, 0, "widths=5: must be a sequence"),
    ((5, 3, 5), 4, "rank=4: must be an integer in 0..3"),
    ((5, 3, 5), -1, "rank=-1: must be an integer in 0..3"),
    ((5, 3, 5), True, "rank=True: must be an integer"),
    ((5, 3, 5), 1.0, "rank=1.0: must be an integer"),
])
def test_invalid_inputs_fail_with_one_line(widths, rank, start):
    with pytest.raises(ValueError) as error:
        learning_coefficient(widths, rank)
    message = str(error.value)
    assert message.startswith(start), message
    assert "\n" not in message


@pytest.mark.parametrize("arguments, start", [
    ((0, 3, 5, 0), "input_dimension=0: must be an integer >= 1"),
    ((5, True, 5, 0), "hidden_width=True: must be an integer >= 1"),
    ((5, 3, 2.5, 0), "output_dimension=2.5: must be an integer >= 1"),
    ((5, 3, 5, 4), "rank=4: must be an integer in 0..3"),
])
def test_reduced_rank_regression_invalid_inputs(arguments, start):
    with pytest.raises(ValueError, match="^" + start.replace("(", r"\(").replace(".", r"\.")):
        reduced_rank_regression_coefficient(*arguments)
    with pytest.raises(ValueError):
        parameter_count((3, False))


def test_numpy_integers_are_accepted_and_give_the_same_exact_value():
    widths = np.array([12, 12, 12])
    result = learning_coefficient(widths, np.int64(3))
    assert (result.value, result.multiplicity) == (Fraction(62), 2)
    assert isinstance(result.value, Fraction) and type(result.multiplicity) is int

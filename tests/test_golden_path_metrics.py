"""The Golden-Path metrics (``dlnlab.analysis.golden_path``; docs/golden-path.md, experiment notes
§1) against independent computations:

- singular values of every partial product against ``numpy.linalg.svd`` product by product;
  numerical ranks against ``numpy.linalg.matrix_rank`` on integer matrices with planted ranks;
  ``r_ii = d_i`` for generic full-rank square layers;
- multiplicities against a direct count on diagonal 0/1 networks hidden by a random gauge,
  ``m_ij >= 0`` for exact tuples, the round trip ``m -> r -> m`` (a wrong sign is rejected);
- a gauge transform ``W_l -> G_l W_l G_{l-1}^{-1}`` keeps the function distance at rounding and
  every rank while the parameter distance grows; GD against itself: every distance exactly 0;
- the pattern distances against a direct loop (distance to the mean pattern, not the mean of the
  distances); the bootstrap intervals cover a known mean at their nominal 95% rate over 1,000
  synthetic repeats (within the binomial error) and reproduce a direct percentile bootstrap;
- the escape rule on sums of sigmoids with known plateaus (and no escape on flat, exponential or
  power-law curves), loss-level crossings against analytic curves, first passages on
  piecewise-linear coefficient paths, censored pairs, values at per-run times.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab.analysis import golden_path as gp
from dlnlab.dynamics.observers import balance


def random_weights(rng, widths, batch=()):
    return tuple(rng.standard_normal(batch + (o, i)) / math.sqrt(i)
                 for i, o in zip(widths[:-1], widths[1:], strict=True))


def product(weights, i, j):
    """``W_j ... W_i`` of one network, by a plain loop (1-based)."""
    out = weights[i - 1]
    for w in weights[i:j]:
        out = w @ out
    return out


# --------------------------------------------------------------------------- products and ranks


def test_product_pairs_enumerate_every_contiguous_product_once():
    for depth in (1, 2, 4, 6):
        pairs = gp.product_pairs(depth)
        assert pairs.shape == (depth * (depth + 1) // 2, 2) == (gp.num_products(depth), 2)
        assert sorted(map(tuple, pairs)) == list(map(tuple, pairs))            # by i, then j
        assert {tuple(p) for p in pairs} == {(i, j) for i in range(1, depth + 1)
                                              for j in range(i, depth + 1)}
    np.testing.assert_array_equal(gp.product_lengths(3), [1, 2, 3, 1, 2, 1])


@pytest.mark.parametrize("widths", [(3, 5, 2, 4), (12, 12, 12, 12, 12), (5, 9, 9, 5)])
def test_singular_values_equal_numpy_svd_of_each_product(widths):
    """Batched ``(run, time)`` SVD of every product against ``numpy.linalg.svd`` one by one;
    zero padding beyond ``min(d_j, d_{i-1})``; chunking and ``top_k`` only cut, never change."""
    rng = np.random.default_rng(1)
    weights = random_weights(rng, widths, batch=(3, 2))
    sv = gp.partial_product_singular_values(weights)
    depth = len(widths) - 1
    k_max = max(min(widths[j], widths[i - 1]) for i, j in gp.product_pairs(depth))
    assert sv.shape == (3, 2, gp.num_products(depth), k_max) and sv.dtype == np.float64
    for run in range(3):
        for t in range(2):
            single = tuple(w[run, t] for w in weights)
            for n, (i, j) in enumerate(gp.product_pairs(depth)):
                ref = np.linalg.svd(product(single, i, j), compute_uv=False)
                np.testing.assert_allclose(sv[run, t, n, :ref.size], ref, rtol=1e-12, atol=1e-14)
                assert np.all(sv[run, t, n, ref.size:] == 0.0)
    np.testing.assert_array_equal(gp.partial_product_singular_values(weights, chunk=1), sv)
    np.testing.assert_array_equal(gp.partial_product_singular_values(weights, top_k=2),
                                  sv[..., :2])


def test_singular_values_stay_float64_without_jax_x64():
    """Float64 weights give float64 singular values even where ``jax_enable_x64`` is off (the
    library default), and float32 stays float32 (rounding at its own precision)."""
    rng = np.random.default_rng(16)
    weights = random_weights(rng, (4, 6, 3), batch=(5,))
    with jax.enable_x64(False):
        sv = gp.partial_product_singular_values(weights)
        sv32 = gp.partial_product_singular_values(tuple(w.astype(np.float32) for w in weights))
    assert sv.dtype == np.float64 and sv32.dtype == np.float32
    ref = np.linalg.svd(weights[1][2] @ weights[0][2], compute_uv=False)
    np.testing.assert_allclose(sv[2, 1, :3], ref, rtol=1e-13)
    assert np.max(np.abs(sv32[2, 1, :3] - ref) / ref) > 1e-12       # float32 is not float64


def planted_integer_network(rng, widths, inner):
    """Integer layers ``W_l = A_l B_l`` with inner dimension ``inner[l]`` (rank <= inner[l])."""
    out = []
    for (i, o), k in zip(zip(widths[:-1], widths[1:], strict=True), inner, strict=True):
        a = rng.integers(-3, 4, size=(o, k))
        b = rng.integers(-3, 4, size=(k, i))
        out.append((a @ b).astype(np.int64))
    return tuple(out)


def test_planted_ranks_of_integer_products_equal_numpy_matrix_rank():
    """Ranks of exact integer products (planted bottlenecks) against ``numpy.linalg.matrix_rank``
    of the exact products; the multiplicities are then >= 0 with nothing clipped, and
    ``m -> r`` gives the ranks back."""
    rng = np.random.default_rng(2)
    widths, depth = (6, 7, 5, 8, 6), 4
    checked = 0
    for inner in [(6, 3, 5, 4), (2, 5, 5, 6), (6, 5, 1, 6), (4, 4, 4, 4), (6, 5, 5, 6)]:
        weights = planted_integer_network(rng, widths, inner)
        sv = gp.partial_product_singular_values(weights)
        ranks, gap = gp.numerical_ranks(sv)
        expected = [np.linalg.matrix_rank(product(weights, i, j).astype(np.float64))
                    for i, j in gp.product_pairs(depth)]
        np.testing.assert_array_equal(ranks, expected)
        assert np.all(ranks[[0, 4, 7, 9]] <= np.asarray(inner))                 # r_ii <= planted
        matrix = gp.rank_matrix(ranks, depth)
        m, clipped = gp.multiplicity_pattern(matrix)
        assert clipped == 0 and np.all(m >= 0)
        np.testing.assert_array_equal(gp.ranks_from_multiplicities(m), matrix)
        full = gap[ranks == np.array([min(widths[j], widths[i - 1])
                                      for i, j in gp.product_pairs(depth)])]
        assert np.all(np.isinf(full))
        deficient = gap[ranks < sv.shape[-1]]
        assert np.all(deficient[np.isfinite(deficient)] > 1e8)                  # exact zeros
        checked += 1
    assert checked == 5


def test_generic_square_full_rank_layers_have_r_ii_equal_to_width():
    """Gaussian square layers: ``r_ii = d`` (a long product of them can be numerically
    rank-deficient at eps = 1e-5: its condition number grows with the length). Well-conditioned
    layers: every ``r_ij = d`` and all the multiplicity sits at ``m_1L = d``."""
    rng = np.random.default_rng(3)
    d_, depth = 7, 5
    weights = random_weights(rng, (d_,) * (depth + 1), batch=(40,))
    ranks, _ = gp.numerical_ranks(gp.partial_product_singular_values(weights))
    matrix = gp.rank_matrix(ranks, depth)
    np.testing.assert_array_equal(np.diagonal(matrix, axis1=-2, axis2=-1), d_)
    close = tuple(np.linalg.qr(rng.standard_normal((40, d_, d_)))[0]
                  @ (np.eye(d_) + 0.1 * rng.standard_normal((40, d_, d_))) for _ in range(depth))
    ranks, _ = gp.numerical_ranks(gp.partial_product_singular_values(close))
    np.testing.assert_array_equal(ranks, d_)
    m, clipped = gp.multiplicity_pattern(gp.rank_matrix(ranks, depth))
    expected = np.zeros((depth, depth), dtype=int)
    expected[0, depth - 1] = d_                  # every direction passes through every layer
    np.testing.assert_array_equal(m, np.broadcast_to(expected, m.shape))
    assert np.all(clipped == 0)


def diagonal_network(rng, alive, gauge_scale=0.3):
    """Layers ``G_l diag(alive[l]) G_{l-1}^{-1}`` (``G_0 = G_L = I``): ranks of the diagonal 0/1
    network, hidden behind a random invertible gauge."""
    depth, width = alive.shape
    gauges = [np.eye(width)] + [np.eye(width) + gauge_scale * rng.standard_normal((width, width))
                                for _ in range(depth - 1)] + [np.eye(width)]
    return tuple(gauges[l + 1] @ np.diag(alive[l].astype(float)) @ np.linalg.inv(gauges[l])
                 for l in range(depth))


def maximal_runs(alive):
    """Independent count: ``m[i-1, j-1]`` = coordinates whose ones form a maximal run [i, j]."""
    depth, width = alive.shape
    m = np.zeros((depth, depth), dtype=int)
    for k in range(width):
        layer = 0
        while layer < depth:
            if alive[layer, k]:
                start = layer
                while layer < depth and alive[layer, k]:
                    layer += 1
                m[start, layer - 1] += 1
            else:
                layer += 1
    return m


def test_multiplicities_of_gauged_diagonal_networks_count_maximal_runs():
    """Diagonal 0/1 layers hidden by a gauge: ``m_ij`` = coordinates alive on exactly [i, j];
    a multiplicity formula with the corner's sign flipped disagrees."""
    rng = np.random.default_rng(4)
    depth, width = 5, 6
    wrong_seen = 0
    for _ in range(20):
        alive = rng.random((depth, width)) < 0.7
        weights = diagonal_network(rng, alive)
        pat = gp.singular_value_patterns(gp.partial_product_singular_values(weights), depth)
        matrix, m, clipped = pat["rank_matrix"], pat["multiplicities"], pat["clipped"]
        expected = maximal_runs(alive)
        np.testing.assert_array_equal(m, expected)
        assert clipped == 0
        r = np.zeros((depth + 2, depth + 2), dtype=int)
        r[1:-1, 1:-1] = matrix
        wrong = np.triu(r[1:-1, 1:-1] - r[1:-1, 2:] - r[:-2, 1:-1] - r[:-2, 2:])
        wrong_seen += int(np.any(np.maximum(wrong, 0) != expected))
    assert wrong_seen >= 15


def test_round_trip_multiplicities_to_ranks_to_multiplicities_is_exact():
    rng = np.random.default_rng(5)
    for depth in (1, 2, 3, 6):
        m = np.triu(rng.integers(0, 5, size=(50, depth, depth)))
        r = gp.ranks_from_multiplicities(m)
        back, clipped = gp.multiplicity_pattern(r)
        np.testing.assert_array_equal(back, m)
        assert np.all(clipped == 0)
        # r_ij = sum over a <= i, b >= j, by a loop
        i, j = rng.integers(1, depth + 1, 2)
        i, j = min(i, j), max(i, j)
        np.testing.assert_array_equal(r[:, i - 1, j - 1], m[:, :i, j - 1:].sum(axis=(1, 2)))
    # the transposed sum (a >= i, b <= j) is not the inverse
    m = np.triu(rng.integers(1, 5, size=(4, 4)))
    wrong = np.triu(np.cumsum(np.cumsum(m[::-1], axis=0)[::-1], axis=1))
    assert np.any(gp.multiplicity_pattern(wrong)[0] != m)


def test_numerically_rank_deficient_patterns_are_clipped_and_counted():
    """A pattern that breaks the rank inequality (here: r_12 > r_11) gives a negative m, clipped
    to 0 and counted."""
    matrix = np.array([[1, 2], [0, 2]])
    m, clipped = gp.multiplicity_pattern(matrix)
    assert clipped == 1 and np.all(m >= 0)


# --------------------------------------------------------------------------- gauge and nulls


def gauge(weights, rng, scale):
    depth = len(weights)
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    gs = [np.eye(widths[0])] + [np.eye(widths[l]) + scale * rng.standard_normal((widths[l],) * 2)
                                for l in range(1, depth)] + [np.eye(widths[-1])]
    return tuple(gs[l + 1] @ weights[l] @ np.linalg.inv(gs[l]) for l in range(depth))


def test_gauge_transform_keeps_function_and_ranks_while_parameters_move():
    rng = np.random.default_rng(6)
    widths = (5, 8, 8, 8, 4)
    base = planted_integer_network(rng, widths, (5, 3, 8, 4))
    base = tuple(w.astype(np.float64) / 4.0 for w in base)
    ranks0, _ = gp.numerical_ranks(gp.partial_product_singular_values(base), 1e-8)
    distances = []
    for scale in (0.01, 0.1, 0.5):
        moved = gauge(base, np.random.default_rng(7), scale)          # the same G direction
        out = gp.parameter_distances(base, moved)
        assert out["function_distance"] < 1e-12
        ranks, _ = gp.numerical_ranks(gp.partial_product_singular_values(moved), 1e-8)
        np.testing.assert_array_equal(ranks, ranks0)                             # every r_ij
        distances.append(float(out["relative_parameter_distance"]))
    assert distances[0] > 1e-3 and distances[0] < distances[1] < distances[2] and distances[2] > 0.5
    # a transform that moves the output basis (G_L != I) is no gauge: the function moves
    not_gauge = tuple(base[:-1]) + (1.5 * base[-1],)
    assert gp.parameter_distances(base, not_gauge)["function_distance"] > 0.4


def test_gd_against_itself_gives_every_distance_exactly_zero():
    rng = np.random.default_rng(8)
    widths, depth = (4, 6, 6, 3), 3
    traj = random_weights(rng, widths, batch=(7,))                            # 7 checkpoints
    sv = gp.partial_product_singular_values(traj)
    pat = gp.singular_value_patterns(sv, depth, top_k=3)
    runs = {k: np.stack([x] * 5) for k, x in pat.items()}                      # 5 identical runs
    dist = gp.pattern_distances(pat, runs, depth=depth)
    for name, value in dist.items():
        assert np.all(value == 0.0), name
    intervals = gp.pattern_distance_intervals(pat, runs, depth=depth, resamples=50)
    for name, (est, low, high) in intervals.items():
        assert np.all(est == 0) and np.all(low == 0) and np.all(high == 0), name
    same = gp.parameter_distances(traj, tuple(np.stack([w] * 5) for w in traj))
    for name in ("parameter_distance", "relative_parameter_distance", "layer_distance",
                 "mean_layer_distance", "function_distance"):
        assert np.all(same[name] == 0.0), name
    np.testing.assert_allclose(same["cosine_similarity"], 1.0, rtol=1e-14)
    np.testing.assert_allclose(same["parameter_norm"][0],
                               np.sqrt(sum(np.sum(w ** 2, axis=(1, 2)) for w in traj)))


def test_parameter_distances_against_flattened_vectors():
    rng = np.random.default_rng(9)
    widths = (3, 5, 4, 2)
    ref = random_weights(rng, widths, batch=(6,))
    runs = tuple(w + 0.3 * rng.standard_normal((4,) + w.shape) for w in ref)
    out = gp.parameter_distances(ref, runs)
    for s in range(4):
        for t in range(6):
            a = np.asarray(d.flatten_weights(tuple(jnp.asarray(w[t]) for w in ref)))
            b = np.asarray(d.flatten_weights(tuple(jnp.asarray(w[s, t]) for w in runs)))
            np.testing.assert_allclose(out["parameter_distance"][s, t], np.linalg.norm(a - b))
            np.testing.assert_allclose(out["cosine_similarity"][s, t],
                                       a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            np.testing.assert_allclose(out["relative_parameter_distance"][s, t],
                                       np.linalg.norm(a - b) / np.linalg.norm(a))
            layer = [np.linalg.norm(x[t] - y[s, t]) / np.linalg.norm(x[t])
                     for x, y in zip(ref, runs, strict=True)]
            np.testing.assert_allclose(out["layer_distance"][s, t], layer)
            np.testing.assert_allclose(out["mean_layer_distance"][s, t], np.mean(layer))
            w_ref = product(tuple(w[t] for w in ref), 1, 3)
            w_run = product(tuple(w[s, t] for w in runs), 1, 3)
            np.testing.assert_allclose(out["function_distance"][s, t],
                                       np.linalg.norm(w_ref - w_run) / np.linalg.norm(w_ref))


def test_pattern_distances_are_distances_to_the_mean_pattern():
    """Against a direct loop over checkpoints, products and k (notes §1.1.5, §1.2.4); the mean of
    per-run distances (a different statistic) is rejected."""
    rng = np.random.default_rng(10)
    depth, times, runs_, k = 3, 4, 6, 2
    p = gp.num_products(depth)
    widths = (3, 4, 4, 3)
    ref_w = random_weights(rng, widths, batch=(times,))
    run_w = tuple(w + 0.5 * rng.standard_normal((runs_,) + w.shape) for w in ref_w)
    ref = gp.singular_value_patterns(gp.partial_product_singular_values(ref_w), depth, top_k=k,
                                     threshold=0.3)
    run = gp.singular_value_patterns(gp.partial_product_singular_values(run_w), depth, top_k=k,
                                     threshold=0.3)
    assert np.any(run["ranks"] != ref["ranks"])                       # the threshold bites
    out = gp.pattern_distances(ref, run, depth=depth)
    lengths = gp.product_lengths(depth)
    for t in range(times):
        d_r = sum(abs(ref["ranks"][t, n] - run["ranks"][:, t, n].mean()) for n in range(p))
        d_m = sum(abs(ref["multiplicities"][t, a, b] - run["multiplicities"][:, t, a, b].mean())
                  for a in range(depth) for b in range(a, depth))
        d_s = sum(abs(ref["log_singular_values"][t, n, q]
                      - run["log_singular_values"][:, t, n, q].mean())
                  for n in range(p) for q in range(k))
        d_sh = sum(abs(ref["shape"][t, n, q] - run["shape"][:, t, n, q].mean())
                   for n in range(p) for q in range(k))
        d_w = sum(lengths[n] * abs(ref["log_singular_values"][t, n, q]
                                   - run["log_singular_values"][:, t, n, q].mean())
                  for n in range(p) for q in range(k))
        np.testing.assert_allclose([out[x][t] for x in gp.PATTERN_DISTANCES],
                                   [d_r, d_m, d_s, d_sh, d_w], rtol=1e-12)
    assert np.all(out["d_r_run"].mean(axis=0) >= out["d_r"] - 1e-12)     # triangle inequality
    assert np.any(np.abs(out["d_sigma_run"].mean(axis=0) - out["d_sigma"]) > 1e-3)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_a_known_mean_at_its_nominal_rate():
    """1,000 synthetic data sets of 100 runs (one vectorised call): the 95% percentile interval
    covers the true mean in 95% of them within 4 binomial standard errors (the percentile
    bootstrap's small-sample undercoverage at n = 100, ~0.4%, is well inside). An interval of the
    wrong statistic (the median, on skewed data) is rejected by the same check."""
    repeats, n, mu = 1000, 100, 1.5
    rng = np.random.default_rng(11)
    data = mu + rng.standard_normal((n, repeats))
    res = gp.bootstrap_mean_interval(data, axis=0, resamples=1000, seed=1)
    assert res.count == n and res.mean.shape == (repeats,)
    np.testing.assert_allclose(res.mean, data.mean(axis=0))
    np.testing.assert_allclose(res.std, data.std(axis=0, ddof=1))
    covered = np.mean((res.low <= mu) & (mu <= res.high))
    se = math.sqrt(0.95 * 0.05 / repeats)
    assert abs(covered - 0.95) <= 4 * se, covered
    # wrong statistic: the median's interval on exponential data misses the mean (1)
    skewed = rng.exponential(1.0, (n, repeats))
    import scipy.stats
    wrong = scipy.stats.bootstrap((skewed,), np.median, axis=0, vectorized=True,
                                  method="percentile", n_resamples=300,
                                  rng=np.random.default_rng(2)).confidence_interval
    wrong_covered = np.mean((wrong.low <= 1.0) & (1.0 <= wrong.high))
    assert abs(wrong_covered - 0.95) > 4 * se
    right = gp.bootstrap_mean_interval(skewed, resamples=300, seed=2)
    assert abs(np.mean((right.low <= 1.0) & (1.0 <= right.high)) - 0.95) <= 4 * se + 0.01


def test_bootstrap_edge_cases_and_validation():
    one = gp.bootstrap_mean_interval(np.array([[1.0, 2.0]]), seed=0)
    assert one.count == 1 and np.all(np.isnan(one.low)) and np.all(np.isnan(one.std))
    np.testing.assert_array_equal(one.mean, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^samples=.*must be finite"):
        gp.bootstrap_mean_interval(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match=r"^confidence=1\.0: must be"):
        gp.bootstrap_mean_interval(np.ones(3), confidence=1.0)
    with pytest.raises(ValueError, match=r"^resamples=0: must be an integer >= 1"):
        gp.bootstrap_mean_interval(np.ones(3), resamples=0)


def test_pattern_distance_intervals_equal_a_direct_percentile_bootstrap():
    """The same resampled runs as ``scipy.stats.bootstrap`` draws (``rng.integers(0, S, (B, S))``
    from ``default_rng(seed)``), distances recomputed from each resampled mean by a loop, and
    the 2.5% / 97.5% quantiles."""
    rng = np.random.default_rng(12)
    depth, times, runs_, resamples = 2, 3, 8, 40
    widths = (3, 3, 2)
    ref_w = random_weights(rng, widths, batch=(times,))
    run_w = tuple(w + 0.4 * rng.standard_normal((runs_,) + w.shape) for w in ref_w)
    kw = dict(top_k=2, threshold=0.2)
    ref = gp.singular_value_patterns(gp.partial_product_singular_values(ref_w), depth, **kw)
    run = gp.singular_value_patterns(gp.partial_product_singular_values(run_w), depth, **kw)
    out = gp.pattern_distance_intervals(ref, run, depth=depth, resamples=resamples, seed=3)
    picks = np.random.default_rng(3).integers(0, runs_, (resamples, runs_))
    direct = []
    for row in picks:
        sub = {k: x[row] for k, x in run.items()}
        direct.append([gp.pattern_distances(ref, sub, depth=depth)[k]
                       for k in gp.PATTERN_DISTANCES])
    direct = np.asarray(direct)                                        # (B, 5, times)
    low, high = np.quantile(direct, [0.025, 0.975], axis=0)
    for n, name in enumerate(gp.PATTERN_DISTANCES):
        est, lo, hi = out[name]
        np.testing.assert_allclose(est, gp.pattern_distances(ref, run, depth=depth)[name])
        np.testing.assert_allclose(lo, low[n], rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(hi, high[n], rtol=1e-12, atol=1e-12, err_msg=name)
    assert np.any(out["d_sigma"][2] > out["d_sigma"][1])


# --------------------------------------------------------------------------- alignment


def staircase(t, centres, heights, floor, width):
    """Saddle-to-saddle loss: ``floor + sum_a A_a (1 - sigmoid((t - t_a) / w))``."""
    t = np.asarray(t)[..., None]
    return floor + np.sum(heights * (1.0 - 1.0 / (1.0 + np.exp(-(t - centres) / width))), axis=-1)


def expected_escapes(centres, heights, floor, width, drop):
    """Analytic escape times: ``L(t) = (1 - drop) P_a`` on transition ``a``, where ``P_a`` is the
    plateau before it (the other sigmoids' tails are below 1e-15 there)."""
    out = []
    for a, (c, h) in enumerate(zip(centres, heights, strict=True)):
        plateau = floor + heights[a:].sum()
        below = floor + heights[a + 1:].sum()
        target = (1.0 - drop) * plateau
        q = 1.0 - (target - below) / h                       # sigmoid value at the escape
        out.append(c + width * math.log(q / (1.0 - q)))
    return np.array(out)


@pytest.mark.parametrize("grid", ["linear", "log"])
def test_escape_rule_finds_each_plateau_drop_of_a_staircase(grid):
    centres, heights = np.array([20.0, 45.0, 80.0]), np.array([1.0, 0.5, 0.25])
    floor, width, drop = 0.05, 0.5, 0.2
    times = (np.linspace(0.0, 120.0, 4801) if grid == "linear"
             else np.concatenate([[0.0], np.geomspace(1e-2, 120.0, 6000)]))
    loss = staircase(times, centres, heights, floor, width)
    ev = gp.escape_events(times, loss[None], drop=drop, max_escapes=5)
    assert ev["count"][0] == 3
    found = ev["escape_time"][0, :3]
    exact = expected_escapes(centres, heights, floor, width, drop)
    spacing = np.max(np.diff(times)[times[1:] > 10.0])
    np.testing.assert_allclose(found, exact, atol=max(1e-3, 0.5 * spacing ** 2 / width))
    # plateaus found where they are: each ends within the drop and starts before the last one
    ends = ev["plateau_end"][0, :3]
    assert np.all(ends < found) and np.all(ends > centres - 6 * width)
    starts = ev["plateau_start"][0, :3]
    assert starts[0] == 0.0 and np.all(starts[1:] < centres[:-1] + 25 * width)
    np.testing.assert_allclose(ev["plateau_level"][0, :3],
                               [floor + heights[a:].sum() for a in range(3)], rtol=1e-6)
    assert np.all(np.isnan(ev["escape_time"][0, 3:]))
    # a wrong rule (drops measured from the initial loss) puts the later escapes elsewhere
    wrong = gp.loss_level_times(times, loss, (1.0 - drop) ** np.arange(1, 4) * loss[0])
    assert np.max(np.abs(wrong - exact)) > 5.0


def test_escape_rule_reports_no_escape_on_flat_or_smoothly_decaying_curves():
    t = np.linspace(0.0, 50.0, 2001)
    curves = np.stack([np.full_like(t, 0.7),                      # flat
                       2.0 * np.exp(-t / 3.0),                     # exponential decay
                       0.3 + np.exp(-t),                           # decay to a floor
                       1.0 / (1.0 + t),                            # power laws
                       (1.0 + t) ** -0.2,
                       1.0 + 0.01 * np.sin(t)])                    # wiggle inside the band
    ev = gp.escape_events(t, curves)
    np.testing.assert_array_equal(ev["count"], 0)
    assert np.all(np.isnan(ev["escape_time"]))
    # with the plateau requirement off (contrast 0) the exponential decay would show "escapes"
    assert gp.escape_events(t, curves[1], contrast=0.0)["count"] > 0


def test_escape_rule_on_deep_linear_gradient_flow_finds_one_escape_per_mode():
    """Gradient flow of an aligned depth-4 network from a small start (docs/theory.md §7): the
    plateaus decline as the next mode grows, yet each mode gives one escape, inside its
    transition (between 5% and 95% of ``s_a``); matched by plateau level, a run missing the
    middle escape is censored there, not shifted."""
    s = np.array([1.0, 2.0 / 3.0, 1.0 / 3.0])
    times = np.linspace(0.0, 100.0, 2001)
    amps = np.asarray(d.theory.gradient_flow_curve(times, s, 4, 1e-3))
    loss = 0.5 * np.sum((s - amps) ** 2, axis=-1)
    ev = gp.escape_events(times, loss)
    assert ev["count"] == 3
    # below ~1e-25 the loss is rounding noise: without the resolution cut it makes "escapes"
    assert gp.escape_events(times, loss, resolution=1e-300)["count"] > 3
    early = np.asarray(d.theory.learning_time(0.05, s, 4, 1e-3))
    late = np.asarray(d.theory.learning_time(0.95, s, 4, 1e-3))
    assert np.all((early < ev["escape_time"][:3]) & (ev["escape_time"][:3] < late))
    levels = ev["plateau_level"][:3]
    runs = np.array([[ev["escape_time"][0], ev["escape_time"][2], np.nan]])
    run_levels = np.array([[levels[0], levels[2], np.nan]])
    matched = gp.match_escapes(levels, run_levels, runs)
    np.testing.assert_array_equal(matched[0, [0, 2]], ev["escape_time"][[0, 2]])
    assert np.isnan(matched[0, 1])


def test_escape_rule_validation_and_non_finite_losses():
    t = np.linspace(0.0, 10.0, 11)
    with pytest.raises(ValueError, match=r"^drop=0\.05: must be in \(tolerance=0\.05, 1\)"):
        gp.escape_times(t, np.ones(11), drop=0.05)
    with pytest.raises(ValueError, match=r"^times=.*increasing"):
        gp.escape_times(t[::-1], np.ones(11))
    loss = staircase(np.linspace(0, 60, 601), np.array([20.0]), np.array([1.0]), 0.1, 0.5)
    diverged = loss.copy()
    diverged[100:] = np.nan                                        # diverged before the drop
    out = gp.escape_times(np.linspace(0, 60, 601), np.stack([loss, diverged]), max_escapes=2)
    assert np.isfinite(out[0, 0]) and np.isnan(out[0, 1]) and np.all(np.isnan(out[1]))


def test_loss_level_times_interpolate_in_log_loss():
    """On ``L = 2 exp(-t)`` log-linear interpolation is exact on any grid: the first crossing of
    level ``y`` is ``log(2 / y)``; linear interpolation in the loss (a wrong rule) is not."""
    times = np.array([0.0, 0.7, 1.5, 3.0, 4.1, 6.0])
    loss = 2.0 * np.exp(-times)
    levels = np.array([1.5, 0.5, 0.1, 0.01, 1e-3])
    got = gp.loss_level_times(times, np.stack([loss, loss * 1e3]), levels)
    np.testing.assert_allclose(got[0, :4], np.log(2.0 / levels[:4]), rtol=1e-13)
    assert np.isnan(got[0, 4])                                     # never reached: censored
    assert np.all(np.isnan(got[1]))                                 # stays above 4.9: censored
    from dlnlab.analysis.events import crossing_times
    linear = crossing_times(times, np.broadcast_to(-loss, (4, loss.size)), -levels[:4])
    assert np.max(np.abs(linear - np.log(2.0 / levels[:4]))) > 0.05
    # 1 / (1 + t) on a fine grid: within the interpolation error
    t = np.linspace(0.0, 10.0, 1001)
    np.testing.assert_allclose(gp.loss_level_times(t, 1.0 / (1.0 + t), [0.5, 0.2])[:],
                               [1.0, 4.0], atol=1e-4)
    # a non-finite record never counts as a crossing; a record already below gives t_0
    bad = loss.copy()
    bad[1] = np.nan
    assert gp.loss_level_times(times, bad, [1.5])[0] > times[1]
    assert gp.loss_level_times(times, loss, [3.0])[0] == 0.0


def test_default_loss_levels_are_geometric_strictly_inside():
    loss = np.array([5.0, 3.0, 1.0, 0.2, 0.05])
    levels = gp.default_loss_levels(loss, count=24)
    assert levels.size == 24 and np.all(np.diff(levels) < 0)
    assert levels[0] < 5.0 and levels[-1] > 0.05
    np.testing.assert_allclose(np.diff(np.log(levels)), np.log(0.01) / 25)
    floored = gp.default_loss_levels(loss, count=3, floor=0.04)
    np.testing.assert_allclose(floored - 0.04, np.geomspace(4.96, 0.01, 5)[1:-1])
    with pytest.raises(ValueError, match=r"^loss_gd=.*must fall"):
        gp.default_loss_levels(loss[::-1])


def test_values_at_times_against_numpy_interp_per_run():
    rng = np.random.default_rng(13)
    times = np.sort(rng.uniform(0, 10, 30))
    values = rng.standard_normal((4, 30, 3))
    at = rng.uniform(times[0], times[-1], (4, 5))
    at[0, 0], at[1, 1], at[2, 2], at[3, 3] = times[4], np.nan, times[-1] + 1, times[0]
    out = gp.values_at_times(times, values, at)
    prev = gp.values_at_times(times, values, at, method="previous")
    assert out.shape == (4, 5, 3)
    for r in range(4):
        for n in range(5):
            q = at[r, n]
            if not (np.isfinite(q) and times[0] <= q <= times[-1]):
                assert np.all(np.isnan(out[r, n])) and np.all(np.isnan(prev[r, n]))
                continue
            for c in range(3):
                np.testing.assert_allclose(out[r, n, c], np.interp(q, times, values[r, :, c]),
                                           rtol=1e-12, atol=1e-14)
                k = np.searchsorted(times, q, side="right") - 1
                assert prev[r, n, c] == values[r, k, c]
    np.testing.assert_array_equal(out[0, 0], values[0, 4])               # exact at a record
    np.testing.assert_array_equal(out[3, 3], values[3, 0])


# --------------------------------------------------------------------------- modes


def test_mode_passage_times_on_piecewise_linear_paths():
    """Diagonal ``|w_aa| = s_a min(1, t / T_a)`` and cross ``|w_ab| = A max(0, 1 - t / C_ab)``
    with kinks on the records: linear interpolation is exact, ``t_diag = c T_a`` and
    ``t_cross(a) = max_b C_ab (1 - eps / A)``. Using columns instead of rows (wrong) differs."""
    times = np.linspace(0.0, 10.0, 101)
    s = np.array([3.0, 1.0, 0.5])
    t_full = np.array([4.0, 6.0, 30.0])                     # mode 3 never reaches 0.5 s
    c_end = np.array([[0.0, 2.0, 3.0], [5.0, 0.0, 1.0], [8.0, 12.0, 0.0]])
    amp, eps = 0.4, 0.1
    coeff = np.empty((101, 3, 3))
    for a in range(3):
        for b in range(3):
            coeff[:, a, b] = (s[a] * np.minimum(1.0, times / t_full[a]) if a == b
                              else amp * np.maximum(0.0, 1.0 - times / c_end[a, b]))
    coeff[:, 1, 0] *= -1.0                                      # signs do not matter
    t_cross, t_diag = gp.mode_passage_times(times, coeff[None], s, cross_threshold=eps)
    np.testing.assert_allclose(t_diag[0], [2.0, 3.0, np.nan], rtol=1e-12)
    rows = [max(c_end[a, b] for b in range(3) if b != a) * (1 - eps / amp) for a in range(3)]
    np.testing.assert_allclose(t_cross[0], rows, rtol=1e-12)
    cols = [max(c_end[b, a] for b in range(3) if b != a) * (1 - eps / amp) for a in range(3)]
    assert not np.allclose(np.nan_to_num(cols), np.nan_to_num(rows))
    fraction, count, total = gp.cross_before_diagonal_fraction(t_cross, t_diag, horizon=10.0)
    # mode 1: 2.25 > 2 (not before); mode 2: 3.75 > 3 (not); mode 3: 9 before the censored t_diag
    assert (count, total) == (1, 3) and fraction == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"^spectrum=.*must be > 0"):
        gp.mode_passage_times(times, coeff, np.array([1.0, 0.0, 1.0]), cross_threshold=eps)
    # relative to the peak: a cross coefficient that first grows (tiny start) then decays
    rising = np.zeros((101, 2, 2))
    rising[:, 0, 0] = rising[:, 1, 1] = 1.0
    rising[:, 0, 1] = np.where(times <= 2.0, 0.01 + 0.49 * times / 2.0,
                               np.maximum(0.0, 0.5 * (1.0 - (times - 2.0) / 4.0)))
    absolute, _ = gp.mode_passage_times(times, rising, [1.0, 1.0], cross_threshold=0.1)
    relative, _ = gp.mode_passage_times(times, rising, [1.0, 1.0], cross_threshold=0.1,
                                        relative_to_peak=True)
    assert absolute[0] == 0.0                           # already below 0.1 at the start
    np.testing.assert_allclose(relative[0], 2.0 + 4.0 * 0.9, rtol=1e-12)    # 10% of the peak 0.5


def test_cross_before_diagonal_counts_censored_pairs_by_what_is_known():
    nan = np.nan
    t_cross = np.array([1.0, 2.0, 1.0, nan, nan, 3.0])
    t_diag = np.array([2.0, 1.0, nan, 2.0, nan, 3.0])
    fraction, count, total = gp.cross_before_diagonal_fraction(t_cross, t_diag, horizon=5.0)
    # before: (1<2), (1, censored); not: (2>1), (censored, 2), tie (3, 3); unknown: both NaN
    assert (count, total) == (2, 5) and fraction == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"^t_cross=.*<= horizon"):
        gp.cross_before_diagonal_fraction(t_cross, t_diag, horizon=2.5)


def test_mode_coefficients_energy_and_balance_match_core():
    rng = np.random.default_rng(14)
    task = d.Task.from_spectrum(jax.random.key(0), 5, 4, [2.0, 1.0, 0.5])
    weights = random_weights(rng, (5, 6, 6, 4), batch=(3,))
    end = np.stack([product(tuple(w[r] for w in weights), 1, 3) for r in range(3)])
    coeff = gp.mode_coefficients(end, np.asarray(task.left), np.asarray(task.right), 3)
    for r in range(3):
        single = tuple(jnp.asarray(w[r]) for w in weights)
        np.testing.assert_allclose(coeff[r], d.cross_mode_amplitudes(single, task)[:3, :3],
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gp.balance_residuals(tuple(w[r] for w in weights)),
                                   balance(single)[0], rtol=1e-12)
    cross, share = gp.cross_mode_energy(coeff)
    np.testing.assert_allclose(cross, [np.sum(c ** 2) - np.sum(np.diag(c) ** 2) for c in coeff])
    np.testing.assert_allclose(share, cross / np.sum(coeff ** 2, axis=(1, 2)))


def test_unflatten_parameters_inverts_core_flatten_weights():
    rng = np.random.default_rng(15)
    widths = (3, 5, 4, 2)
    weights = random_weights(rng, widths, batch=(2, 3))
    theta = np.stack([np.stack([np.asarray(d.flatten_weights(tuple(jnp.asarray(w[a, b])
                                                                   for w in weights)))
                                for b in range(3)]) for a in range(2)])
    back = gp.unflatten_parameters(theta, widths)
    for w, x in zip(weights, back, strict=True):
        np.testing.assert_array_equal(w, x)
    with pytest.raises(ValueError, match=r"^parameters\.shape=.*43 entries"):
        gp.unflatten_parameters(theta[..., :-1], widths)


def test_one_line_errors_for_bad_inputs():
    with pytest.raises(ValueError, match=r"^threshold=0\.0: must be > 0"):
        gp.numerical_ranks(np.ones(3), 0.0)
    with pytest.raises(ValueError, match=r"^ranks\.shape=\(4,\): the last axis must hold"):
        gp.rank_matrix(np.ones(4, dtype=int), 3)
    with pytest.raises(ValueError, match=r"^weights\[1\]\.shape=\(2, 4\): layer 2 must take 5"):
        gp.partial_product_singular_values((np.ones((5, 3)), np.ones((2, 4))))
    with pytest.raises(ValueError, match=r"^top_k=9: must be <="):
        gp.log_singular_values(np.ones(3), 9)
    with pytest.raises(ValueError, match=r"^method='cubic'"):
        gp.values_at_times(np.arange(3.0), np.ones(3), np.ones(1), method="cubic")
    s = np.array([[3.0, np.nan], [0.0, 0.0]])
    ranks, gap = gp.numerical_ranks(s)
    np.testing.assert_array_equal(ranks, [-1, 0])
    assert np.all(np.isnan(gap))

"""Golden-Path metrics: does SGD reach models of the same complexity as GD from the same start?

Experiment notes ``notes-golden-path-and-saddle-sampling.txt`` §1 (docs/golden-path.md). Weights
of a depth-``L`` network are a tuple ``(W_1, ..., W_L)``, ``W_l`` of shape ``(..., d_l, d_{l-1})``
with any leading batch axes (runs, checkpoints). The contiguous partial products are

    P_ij = W_j ... W_i,   1 <= i <= j <= L,   shape (..., d_j, d_{i-1}),

enumerated by :func:`product_pairs` (by ``i``, then ``j``; ``L (L + 1) / 2`` of them).

- **Patterns** (§1.1.2-3, §1.2.2): singular values of every ``P_ij`` (one batched, compiled SVD
  per shape), numerical ranks ``r_ij = #{m: sigma_m > eps sigma_1}`` with the gap ratio
  ``sigma_r / sigma_{r+1}``, the multiplicity pattern by inclusion-exclusion with zero
  boundaries, log singular values ``s = log max(sigma_k, delta)`` and their shape
  ``s - log max(sigma_1, delta)``.
- **Distances** (§1.1.5, §1.2.4 and "Distance in parameter / function space"): ``d_r``, ``d_m``,
  ``d_sigma``, ``d_shape``, the length-weighted ``d_sigma,w`` against the mean pattern over
  runs; parameter, layer and function distances per run; balance residuals.
- **Modes** ("Mode decoupling"): coefficients ``w_ab = u_a^T W v_b``, the cross-mode energy and
  the first-passage times ``t_cross(a)``, ``t_diag(a)``.
- **Alignment**: first crossings of loss levels, the escape rule (:func:`escape_events`), values
  of any metric at per-run times.
- **Aggregation**: percentile bootstrap intervals over runs (``scipy.stats.bootstrap``).

Times are ``t = step x learning rate`` (the datasets' ``time`` coordinate). Every function is
pure; inputs are NumPy or JAX arrays, outputs NumPy (float64 unless said otherwise).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from .. import _validation as v
from .events import crossing_times

#: Default relative rank threshold ``eps`` (notes §1.1: "e.g. 10^-5").
RANK_THRESHOLD = 1e-5
#: Default floor ``delta`` of the log singular values (notes §1.2: ``10^-30``).
LOG_FLOOR = 1e-30
#: Default number of singular values in the log patterns (notes §1.2: "K = 5 or 10").
TOP_K = 5
#: Floats held at once by the chunked computations (products + SVD workspace, bootstrap
#: resamples): about 64 MiB in float64.
CHUNK_FLOATS = 2 ** 23

PATTERN_DISTANCES = ("d_r", "d_m", "d_sigma", "d_shape", "d_sigma_w")


def _x64(enabled: bool):
    """A scoped ``jax_enable_x64`` (``jax.enable_x64``; ``jax.experimental.enable_x64`` before it)."""
    scoped = getattr(jax, "enable_x64", None)
    if scoped is None:                                            # pragma: no cover
        from jax.experimental import enable_x64 as scoped
    return scoped(enabled)


def _one_blas_thread():
    """One BLAS/LAPACK thread for the duration (``threadpoolctl``, when installed).

    These are many small matrices: BLAS threads buy nothing there, and on a loaded machine
    their busy-waiting made a 100 x 100 SVD 30-150x slower (measured: 146 ms against 5 ms)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                            # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# --------------------------------------------------------------------------- products


def num_products(depth: int) -> int:
    """``L (L + 1) / 2``: the number of contiguous partial products of a depth-``L`` network."""
    depth = v.positive_int("depth", depth)
    return depth * (depth + 1) // 2


def product_pairs(depth: int) -> np.ndarray:
    """``(num_products, 2)`` int array of the 1-based ``(i, j)``, ``1 <= i <= j <= L``, of every
    partial product ``P_ij = W_j ... W_i``, ordered by ``i`` then ``j`` (the ``product`` axis of
    every pattern). Raises ``ValueError`` unless ``depth`` is an integer >= 1."""
    depth = v.positive_int("depth", depth)
    return np.array([(i, j) for i in range(1, depth + 1) for j in range(i, depth + 1)],
                    dtype=np.int64).reshape(-1, 2)


def product_lengths(depth: int) -> np.ndarray:
    """``w_ij = j - i + 1`` (layers in ``P_ij``) per product: the weights of ``d_sigma,w``."""
    pairs = product_pairs(depth)
    return (pairs[:, 1] - pairs[:, 0] + 1).astype(np.float64)


def _weights_tuple(weights, name: str = "weights") -> tuple[np.ndarray, ...]:
    if not isinstance(weights, tuple | list) or len(weights) == 0:
        v.fail(name, type(weights).__name__, "must be a non-empty tuple of arrays (W_1, ..., W_L)")
    out = tuple(np.asarray(w) for w in weights)
    batch = out[0].shape[:-2]
    for index, w in enumerate(out):
        if w.ndim < 2:
            v.fail(f"{name}[{index}].shape", w.shape, "each layer must be (..., d_l, d_(l-1))")
        if index > 0 and w.shape[-1] != out[index - 1].shape[-2]:
            v.fail(f"{name}[{index}].shape", w.shape,
                   f"layer {index + 1} must take {out[index - 1].shape[-2]} inputs")
        if w.shape[:-2] != batch:
            v.fail(f"{name}[{index}].shape", w.shape,
                   f"every layer must have the same leading (batch) axes {batch}")
        if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
            v.fail(f"{name}[{index}].dtype", str(w.dtype), "must be real numbers")
    return out


def unflatten_parameters(parameters, widths) -> tuple[np.ndarray, ...]:
    """Weights ``(W_1, ..., W_L)``, ``W_l`` of shape ``(..., d_l, d_{l-1})``, from the recorded
    ``parameters`` ``(..., P)`` (``theta = (vec W_1, ..., vec W_L)``, column-stacking ``vec``:
    the inverse of :func:`dlnlab.core.products.flatten_weights`, batched over leading axes).

    ``widths`` = ``(d_0, ..., d_L)``; ``P`` must equal ``sum_l d_l d_{l-1}`` (``ValueError``)."""
    widths = v.widths_tuple("widths", widths)
    theta = np.asarray(parameters)
    size = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    if theta.ndim < 1 or theta.shape[-1] != size:
        v.fail("parameters.shape", theta.shape,
               f"the last axis must hold sum_l d_l d_(l-1) = {size} entries for widths {widths}")
    out, offset = [], 0
    for d_prev, d_next in zip(widths[:-1], widths[1:], strict=True):
        block = theta[..., offset:offset + d_prev * d_next]
        out.append(np.swapaxes(block.reshape(theta.shape[:-1] + (d_prev, d_next)), -1, -2))
        offset += d_prev * d_next
    return tuple(out)


def _product_chain(weights):
    """Every ``P_ij`` in :func:`product_pairs` order (``P_{i,j+1} = W_{j+1} P_ij``)."""
    out = []
    for i in range(len(weights)):
        p = weights[i]
        out.append(p)
        for w in weights[i + 1:]:
            p = w @ p
            out.append(p)
    return out


@functools.partial(jax.jit, static_argnames=("top_k",))
def _singular_values_chunk(weights, top_k: int):
    rows = []
    for p in _product_chain(weights):
        # A diverged run's product is not finite: LAPACK would print "illegal value" lines for
        # it; its singular values are NaN instead (numerical_ranks then gives rank -1).
        finite = jnp.all(jnp.isfinite(p), axis=(-2, -1))
        s = jnp.linalg.svd(jnp.where(finite[..., None, None], p, 0.0), compute_uv=False)
        s = jnp.where(finite[..., None], s, jnp.nan)
        k = min(top_k, s.shape[-1])
        s = s[..., :k]
        if k < top_k:
            s = jnp.concatenate([s, jnp.zeros(s.shape[:-1] + (top_k - k,), s.dtype)], axis=-1)
        rows.append(s)
    return jnp.stack(rows, axis=-2)


def partial_product_singular_values(weights, top_k: int | None = None, *,
                                    chunk: int | None = None) -> np.ndarray:
    """Singular values of every partial product ``P_ij = W_j ... W_i``, descending.

    ``weights``: ``(W_1, ..., W_L)``, ``W_l`` of shape ``(..., d_l, d_{l-1})`` (any leading batch
    axes, e.g. ``(run, time)``). Returns ``(..., num_products, K)`` in :func:`product_pairs`
    order, zero-padded where a product has fewer than ``K`` singular values
    (``min(d_j, d_{i-1}) < K``); ``K = top_k``, default the largest ``min(d_j, d_{i-1})`` (every
    singular value: the numerical ranks are then exact).

    One compiled program (``jax.numpy.linalg.svd(compute_uv=False)`` of every product, LAPACK's
    divide-and-conquer SVD) per shape and ``top_k``, applied to chunks of ``chunk`` batch entries
    (default: about :data:`CHUNK_FLOATS` floats of products; the last chunk is padded, so a new
    batch size does not recompile). Computed in the input's precision: float64 input is kept in
    float64 even when ``jax_enable_x64`` is off (integers are computed in float64).
    Raises ``ValueError`` for inconsistent shapes or ``top_k < 1``.
    """
    weights = _weights_tuple(weights)
    dtype = np.result_type(*weights)
    dtype = np.float64 if not np.issubdtype(dtype, np.floating) else dtype
    weights = tuple(w.astype(dtype, copy=False) for w in weights)
    batch = weights[0].shape[:-2]
    widths = (weights[0].shape[-1],) + tuple(w.shape[-2] for w in weights)
    depth = len(weights)
    dims = [min(widths[j], widths[i - 1]) for i, j in product_pairs(depth)]
    top_k = max(dims) if top_k is None else v.positive_int("top_k", top_k)
    count = math.prod(batch)
    flat = tuple(w.reshape((count,) + w.shape[-2:]) for w in weights)
    sizes = [widths[j] * widths[i - 1] + 2 * min(widths[j], widths[i - 1]) ** 2
             for i, j in product_pairs(depth)]
    per_item = max(1, sum(sizes))
    chunk = (max(1, min(count, CHUNK_FLOATS // per_item)) if chunk is None
             else v.positive_int("chunk", chunk))
    chunk = max(1, min(chunk, count)) if count else 1
    out = np.empty((count, len(dims), top_k), dtype=dtype)
    with _x64(dtype == np.float64 or bool(jax.config.jax_enable_x64)), _one_blas_thread():
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            part = tuple(w[start:stop] for w in flat)
            if stop - start < chunk:
                part = tuple(np.concatenate([p, np.repeat(p[-1:], chunk - (stop - start), axis=0)])
                             for p in part)
            out[start:stop] = np.asarray(_singular_values_chunk(part, top_k))[:stop - start]
    return out.reshape(batch + (len(dims), top_k))


# --------------------------------------------------------------------------- patterns


def numerical_ranks(singular_values, threshold: float = RANK_THRESHOLD, floor=0.0):
    """Numerical ranks and the gap ratio at the threshold (notes §1.1.2).

    ``r = #{m: sigma_m > max(threshold x sigma_1, floor)}`` (0 when ``sigma_1 = 0``; ``floor``
    ``(...)``, absolute, default 0: :func:`singular_value_patterns` sets it to the rounding level
    of each product, so a product that is exactly zero has rank 0, not the rank of its rounding
    noise), and
    ``gap_ratio = sigma_r / sigma_{r+1}``: ``inf`` when no ``sigma_{r+1} > 0`` follows (``r``
    equals the number of singular values given, or the rest are exactly 0), NaN when ``r = 0``.
    A gap ratio near 1 flags an ambiguous rank. ``singular_values``: ``(..., K)`` descending
    (e.g. :func:`partial_product_singular_values`); returns ``(ranks (...) int64, gap_ratio (...)
    float64)``. Rows with a non-finite singular value (a diverged run) get rank ``-1`` and gap NaN.
    Raises ``ValueError`` unless ``0 < threshold < 1`` and ``K >= 1``.
    """
    v.finite_scalar("threshold", threshold, minimum=0.0, strict=True, maximum=1.0)
    if not 0.0 < float(threshold) < 1.0:
        v.fail("threshold", threshold, "must be in (0, 1) (relative to sigma_1)")
    s = np.asarray(singular_values, dtype=np.float64)
    if s.ndim < 1 or s.shape[-1] < 1:
        v.fail("singular_values.shape", s.shape, "must be (..., K) with K >= 1")
    floor = np.asarray(floor, dtype=np.float64)
    if not np.all(np.isfinite(floor)) or np.any(floor < 0):
        v.fail("floor", floor, "must be finite and >= 0")
    finite = np.all(np.isfinite(s), axis=-1)
    s = np.where(finite[..., None], s, 0.0)
    cut = np.maximum(threshold * s[..., :1], np.asarray(floor)[..., None])
    ranks = np.sum(s > cut, axis=-1).astype(np.int64)
    padded = np.concatenate([s, np.zeros(s.shape[:-1] + (1,))], axis=-1)
    at = np.take_along_axis(padded, np.maximum(ranks - 1, 0)[..., None], -1)[..., 0]
    after = np.take_along_axis(padded, ranks[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(after > 0, at / np.where(after > 0, after, 1.0), np.inf)
    gap = np.where(ranks == 0, np.nan, gap)
    return np.where(finite, ranks, -1), np.where(finite, gap, np.nan)


def rank_matrix(ranks, depth: int) -> np.ndarray:
    """``(..., L, L)`` with ``r_ij`` at ``[i-1, j-1]`` for ``i <= j`` and 0 below the diagonal,
    from ``ranks`` ``(..., num_products)`` in :func:`product_pairs` order."""
    pairs = product_pairs(depth)
    r = np.asarray(ranks)
    if r.ndim < 1 or r.shape[-1] != pairs.shape[0]:
        v.fail("ranks.shape", r.shape, f"the last axis must hold L(L+1)/2 = {pairs.shape[0]} "
                                       f"products for depth {depth}")
    out = np.zeros(r.shape[:-1] + (depth, depth), dtype=r.dtype)
    out[..., pairs[:, 0] - 1, pairs[:, 1] - 1] = r
    return out


def _square_upper(matrix, name: str) -> np.ndarray:
    m = np.asarray(matrix)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2] or m.shape[-1] < 1:
        v.fail(f"{name}.shape", m.shape, "must be (..., L, L)")
    return np.triu(m)


def multiplicity_pattern(ranks):
    """Multiplicities by inclusion-exclusion (notes §1.1.3), with the clipped count.

    ``m_ij = r_ij - r_{i,j+1} - r_{i-1,j} + r_{i-1,j+1}`` for ``1 <= i <= j <= L``, with zero
    boundaries ``r_{0,j} = r_{i,L+1} = 0``. ``m_ij`` counts the directions that pass through
    exactly the layers ``i..j``: for diagonal 0/1 layers it is the number of coordinates whose
    maximal run of ones is ``[i, j]``; ``m_1L = r_1L``; ``sum_{a<=i, b>=j} m_ab = r_ij``
    (:func:`ranks_from_multiplicities`). For exact ranks every ``m_ij >= 0`` (Frobenius's rank
    inequality ``rank(AB) + rank(BC) <= rank(B) + rank(ABC)``); numerical ranks can break it:
    negative values are clipped to 0 and counted.

    ``ranks``: ``(..., L, L)`` from :func:`rank_matrix` (the lower triangle is ignored). Returns
    ``(m (..., L, L) int64, upper triangle, clipped (...) int64 entries that were negative)``.
    """
    r = _square_upper(ranks, "ranks").astype(np.int64)
    depth = r.shape[-1]
    padded = np.zeros(r.shape[:-2] + (depth + 2, depth + 2), dtype=np.int64)
    padded[..., 1:depth + 1, 1:depth + 1] = r
    inner = padded[..., 1:depth + 1, 1:depth + 1]
    right = padded[..., 1:depth + 1, 2:depth + 2]
    up = padded[..., 0:depth, 1:depth + 1]
    corner = padded[..., 0:depth, 2:depth + 2]
    m = np.triu(inner - right - up + corner)
    clipped = np.sum(m < 0, axis=(-2, -1)).astype(np.int64)
    return np.maximum(m, 0), clipped


def ranks_from_multiplicities(multiplicities) -> np.ndarray:
    """The inverse of :func:`multiplicity_pattern` (without clipping):
    ``r_ij = sum_{a <= i, b >= j} m_ab`` over the upper triangle; ``(..., L, L)`` in and out."""
    m = _square_upper(multiplicities, "multiplicities")
    suffix = np.flip(np.cumsum(np.flip(m, axis=-1), axis=-1), axis=-1)    # sum over b >= j
    return np.triu(np.cumsum(suffix, axis=-2))                              # sum over a <= i


def log_singular_values(singular_values, top_k: int = TOP_K, floor: float = LOG_FLOOR):
    """Log-singular-value patterns (notes §1.2.3-4).

    ``s_k = log max(sigma_k, floor)`` and the shape ``s_k - log max(sigma_1, floor)`` for
    ``k = 1..top_k``. ``singular_values``: ``(..., K)`` descending, ``K >= top_k`` (padding
    zeros give ``log floor``). Returns ``(s, shape)``, each ``(..., top_k)`` float64 (natural
    log). Raises ``ValueError`` unless ``1 <= top_k <= K`` and ``floor > 0``."""
    s = np.asarray(singular_values, dtype=np.float64)
    top_k = v.positive_int("top_k", top_k)
    if s.ndim < 1 or s.shape[-1] < top_k:
        v.fail("top_k", top_k, f"must be <= the number of singular values given ({s.shape[-1:]})")
    v.finite_scalar("floor", floor, minimum=0.0, strict=True)
    logs = np.log(np.maximum(s[..., :top_k], floor))
    return logs, logs - logs[..., :1]


#: The rounding level of a product of ``k`` layers: ``ROUNDING_FACTOR k K eps prod_l ||W_l||_2``.
ROUNDING_FACTOR = 10.0


def rounding_floor(singular_values, depth: int, eps: float = float(np.finfo(np.float64).eps)):
    """``(..., num_products)`` rounding level of every product ``P_ij``:
    ``ROUNDING_FACTOR x (j - i + 1) x K x eps x prod_{l=i..j} ||W_l||_2``, with
    ``||W_l||_2 = sigma_1(P_ll)`` read from the same singular values ``(..., num_products, K)``
    (a product's rounding error is of this size: singular values below it are noise)."""
    s = np.asarray(singular_values, dtype=np.float64)
    pairs = product_pairs(depth)
    layer = {i: n for n, (i, j) in enumerate(pairs) if i == j}
    norms = np.stack([s[..., layer[l], 0] for l in range(1, depth + 1)], axis=-1)
    logs = np.log(np.maximum(norms, np.finfo(np.float64).tiny))
    cumulative = np.concatenate([np.zeros(logs.shape[:-1] + (1,)), np.cumsum(logs, axis=-1)], -1)
    spans = cumulative[..., pairs[:, 1]] - cumulative[..., pairs[:, 0] - 1]
    lengths = product_lengths(depth)
    return ROUNDING_FACTOR * lengths * s.shape[-1] * eps * np.exp(spans)


def singular_value_patterns(singular_values, depth: int, *, threshold: float = RANK_THRESHOLD,
                            top_k: int = TOP_K, floor: float = LOG_FLOOR) -> dict:
    """Every pattern of one set of partial-product singular values ``(..., num_products, K)``:
    ``ranks`` and ``gap_ratio`` ``(..., P)`` (:func:`numerical_ranks` with the relative
    ``threshold`` and, as absolute floor, each product's :func:`rounding_floor`), ``rank_matrix`` and
    ``multiplicities`` ``(..., L, L)``, ``clipped`` ``(...)`` (:func:`multiplicity_pattern`),
    ``log_singular_values`` and ``shape`` ``(..., P, top_k)`` (:func:`log_singular_values`;
    ``top_k`` is capped at ``K``)."""
    given = np.asarray(singular_values)
    eps = float(np.finfo(given.dtype).eps) if np.issubdtype(given.dtype, np.floating) else \
        float(np.finfo(np.float64).eps)
    s = given.astype(np.float64)
    if s.ndim < 2 or s.shape[-2] != num_products(depth):
        v.fail("singular_values.shape", s.shape,
               f"must be (..., {num_products(depth)} products, K) for depth {depth}")
    ranks, gap = numerical_ranks(s, threshold, rounding_floor(s, depth, eps))
    matrix = rank_matrix(ranks, depth)
    m, clipped = multiplicity_pattern(matrix)
    logs, shape = log_singular_values(s, min(v.positive_int("top_k", top_k), s.shape[-1]), floor)
    return {"ranks": ranks, "gap_ratio": gap, "rank_matrix": matrix, "multiplicities": m,
            "clipped": clipped, "log_singular_values": logs, "shape": shape}


# --------------------------------------------------------------------------- distances


_PATTERN_KEYS = ("ranks", "multiplicities", "log_singular_values", "shape")


def _pattern_terms(difference: dict, depth: int) -> dict:
    """The distances' ``l1`` sums of pattern differences (any leading axes)."""
    lengths = product_lengths(depth)
    upper = np.triu(np.ones((depth, depth), dtype=bool))
    s_diff = np.abs(difference["log_singular_values"])
    return {
        "d_r": np.abs(difference["ranks"]).sum(axis=-1),
        "d_m": np.where(upper, np.abs(difference["multiplicities"]), 0.0).sum(axis=(-2, -1)),
        "d_sigma": s_diff.sum(axis=(-2, -1)),
        "d_shape": np.abs(difference["shape"]).sum(axis=(-2, -1)),
        "d_sigma_w": (lengths[:, None] * s_diff).sum(axis=(-2, -1)),
    }


def _checked_patterns(reference: dict, runs: dict, depth: int):
    ref, run = {}, {}
    for key in _PATTERN_KEYS:
        if key not in reference or key not in runs:
            v.fail("patterns", key, f"reference and runs must both hold {', '.join(_PATTERN_KEYS)}")
        ref[key] = np.asarray(reference[key], dtype=np.float64)
        run[key] = np.asarray(runs[key], dtype=np.float64)
        if run[key].shape[1:] != ref[key].shape:
            v.fail(f"runs[{key!r}].shape", run[key].shape,
                   f"must be (runs,) + the reference's shape {ref[key].shape}")
    if run["ranks"].shape[0] < 1:
        v.fail("runs", 0, "must hold at least one run")
    if ref["ranks"].shape[-1] != num_products(depth):
        v.fail("ranks.shape", ref["ranks"].shape, f"must end with {num_products(depth)} products")
    # differences run - GD: the distance to the mean is |mean_s (x_s - x_GD)|, exactly 0 when
    # every run equals GD (a mean of equal floats is not always the float itself)
    return ref, {k: run[k] - ref[k] for k in _PATTERN_KEYS}


def pattern_distances(reference: dict, runs: dict, *, depth: int) -> dict:
    """GD-vs-SGD pattern distances (notes §1.1.5 and §1.2.4), ``l1`` sums over ``i <= j``:

    - ``d_r = sum |r_ij^GD - mean_s r_ij^(s)|``, ``d_m`` the same for the multiplicities;
    - ``d_sigma = sum_ij sum_k |s_ij,k^GD - mean_s s_ij,k^(s)|``, ``d_shape`` on the shape
      ``s_ij,k - s_ij,1``, ``d_sigma_w`` with weights ``w_ij = j - i + 1``;

    against the mean over runs, as the notes define them (``d_r`` is then a distance to a
    fractional mean pattern). ``reference``: GD's patterns (keys ``ranks (..., P)``,
    ``multiplicities (..., L, L)``, ``log_singular_values`` and ``shape (..., P, K)``, e.g. from
    :func:`singular_value_patterns`; ``...`` = checkpoints); ``runs``: the same with a leading
    run axis. Returns those five ``(...)`` and per-run versions ``<name>_run (runs, ...)``: the
    same sums of ``|pattern^GD - pattern^(s)|`` for each run (their mean over runs bounds the
    distance to the mean from above, and is what :func:`bootstrap_mean_interval` resamples).
    Diverged runs (rank -1, NaN logs) must be left out by the caller.
    """
    _, diff = _checked_patterns(reference, runs, depth)
    out = _pattern_terms({k: x.mean(axis=0) for k, x in diff.items()}, depth)
    per_run = _pattern_terms(diff, depth)
    out.update({f"{k}_run": x for k, x in per_run.items()})
    return out


class MeanInterval(NamedTuple):
    """A statistic over runs with its percentile bootstrap interval (arrays over the other axes);
    ``std`` is the sample standard deviation (``ddof=1``) and ``count`` the number of runs."""
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    std: np.ndarray
    count: int


def _check_bootstrap(resamples, confidence) -> None:
    v.positive_int("resamples", resamples)
    v.finite_scalar("confidence", confidence, minimum=0.0, strict=True, maximum=1.0)
    if not 0.0 < float(confidence) < 1.0:
        v.fail("confidence", confidence, "must be in (0, 1)")


def bootstrap_mean_interval(samples, *, axis: int = 0, resamples: int = 2000,
                            confidence: float = 0.95, seed: int = 0) -> MeanInterval:
    """Mean over runs with a percentile bootstrap interval (runs resampled with replacement).

    ``samples``: an array with the runs on ``axis`` (e.g. ``(runs, time)`` per-run distances);
    every other axis is bootstrapped at once (``scipy.stats.bootstrap(..., vectorized=True,
    method="percentile")``, the same resampled runs for every entry, in batches of about
    :data:`CHUNK_FLOATS` floats), ``resamples`` = ``B`` (default 2,000), ``confidence`` the
    two-sided level, ``numpy.random.default_rng(seed)`` the randomness. Returns
    :class:`MeanInterval` ``(mean, low, high, std, count)`` over the other axes; with fewer than
    two runs the bounds (and ``std``) are NaN. Raises ``ValueError`` for non-finite samples (leave
    diverged runs out first), ``resamples < 1`` or ``confidence`` outside ``(0, 1)``.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim < 1:
        v.fail("samples.shape", x.shape, "must have a run axis")
    axis = int(axis)
    if not -x.ndim <= axis < x.ndim:
        v.fail("axis", axis, f"must be an axis of samples (ndim {x.ndim})")
    _check_bootstrap(resamples, confidence)
    if not np.all(np.isfinite(x)):
        v.fail("samples", x, "must be finite (leave diverged or censored runs out first)")
    x = np.moveaxis(x, axis, 0)
    count = x.shape[0]
    mean = x.mean(axis=0)
    if count < 2:
        nan = np.full_like(mean, np.nan)
        return MeanInterval(mean, nan, nan.copy(), nan.copy(), count)
    std = x.std(axis=0, ddof=1)
    batch = max(1, min(int(resamples), CHUNK_FLOATS // max(1, x.size)))
    result = scipy.stats.bootstrap((x,), np.mean, axis=0, vectorized=True, method="percentile",
                                   n_resamples=int(resamples), batch=batch,
                                   confidence_level=float(confidence),
                                   rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return MeanInterval(mean, np.asarray(low), np.asarray(high), std, count)


def pattern_distance_intervals(reference: dict, runs: dict, *, depth: int, resamples: int = 2000,
                               confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals of the distances of :func:`pattern_distances` (resampling
    runs with replacement and recomputing each distance from the resampled mean pattern, the
    whole trajectory of a run kept together; ``scipy.stats.bootstrap``). Returns ``name ->
    (estimate, low, high)``, each ``(...)`` over the checkpoints, for the five distances. With one
    run the bounds are NaN. A distance to a resampled mean is biased upwards (a resample repeats
    runs, so its mean pattern is noisier), most for few runs: the interval can sit above the
    estimate, and a distance of 0 is then not inside it unless every run equals GD. Same inputs
    and errors as :func:`pattern_distances` and :func:`bootstrap_mean_interval`."""
    ref, run = _checked_patterns(reference, runs, depth)
    _check_bootstrap(resamples, confidence)
    for key, x in run.items():
        if not np.all(np.isfinite(x)):
            v.fail(f"runs[{key!r}]", x, "must be finite (leave diverged runs out first)")
    estimate = _pattern_terms({k: x.mean(axis=0) for k, x in run.items()}, depth)
    count = run["ranks"].shape[0]
    if count < 2:
        return {k: (e, np.full_like(e, np.nan), np.full_like(e, np.nan))
                for k, e in estimate.items()}
    checkpoints = ref["ranks"].shape[:-1]
    per_run = sum(x[0].size for x in run.values())

    def statistic(picks, axis=-1):
        # picks: (batch, runs) resampled run numbers (scipy resamples the index array below);
        # returns (distances x checkpoints, batch): the bootstrap distribution on the last axis.
        picks = np.asarray(picks).astype(np.int64)
        mean = {k: x[picks].mean(axis=1) for k, x in run.items()}          # (batch, ...)
        terms = _pattern_terms(mean, depth)
        stacked = np.stack([terms[k].reshape(picks.shape[0], -1) for k in PATTERN_DISTANCES])
        return np.moveaxis(stacked, 1, -1).reshape(-1, picks.shape[0])

    batch = max(1, min(int(resamples), CHUNK_FLOATS // max(1, 2 * per_run * count)))
    result = scipy.stats.bootstrap((np.arange(count, dtype=np.float64),), statistic, axis=-1,
                                   vectorized=True, method="percentile",
                                   n_resamples=int(resamples), batch=batch,
                                   confidence_level=float(confidence),
                                   rng=np.random.default_rng(seed))
    low, high = (np.asarray(b).reshape((len(PATTERN_DISTANCES),) + checkpoints)
                 for b in result.confidence_interval)
    return {k: (estimate[k], low[n], high[n]) for n, k in enumerate(PATTERN_DISTANCES)}


def parameter_distances(reference_weights, run_weights) -> dict:
    """Distances between GD's weights and each run's (notes §1, "Distance in parameter space",
    "Distance in function space").

    ``reference_weights``: ``(W_1, ..., W_L)`` of GD, ``(..., d_l, d_{l-1})``; ``run_weights``:
    the same layers with any leading axes that broadcast against them (e.g. ``(runs, ...)``).
    Returns per run (float64, broadcast shape ``(...)``):

    - ``parameter_distance`` ``||theta_GD - theta||_2``; ``relative_parameter_distance`` its
      ratio to ``parameter_norm`` ``||theta_GD||_2``; ``cosine_similarity``
      ``theta_GD . theta / (||theta_GD|| ||theta||)``;
    - ``layer_distance`` ``(..., L)`` ``||W_l^GD - W_l||_F / ||W_l^GD||_F`` and
      ``mean_layer_distance`` ``(1/L) sum_l`` of it;
    - ``function_distance`` ``||W^GD - W||_F / ||W^GD||_F`` of the end-to-end maps
      ``W = W_L ... W_1``.

    A gauge transform ``W_l -> G_l W_l G_{l-1}^{-1}`` (``G_0 = G_L = I``) leaves the function
    distance at 0 and moves the parameters. Zero GD norms give inf/NaN ratios. Raises
    ``ValueError`` for mismatched layer shapes.
    """
    ref = _weights_tuple(reference_weights, "reference_weights")
    run = _weights_tuple(run_weights, "run_weights")
    if len(ref) != len(run):
        v.fail("run_weights", f"{len(run)} layers", f"must have the reference's {len(ref)} layers")
    for index, (a, b) in enumerate(zip(ref, run, strict=True)):
        if a.shape[-2:] != b.shape[-2:]:
            v.fail(f"run_weights[{index}].shape", b.shape, f"must end with {a.shape[-2:]}")
    with _one_blas_thread():
        return _parameter_distances(tuple(a.astype(np.float64) for a in ref),
                                    tuple(b.astype(np.float64) for b in run))


def _parameter_distances(ref, run) -> dict:
    diff_sq = np.stack(np.broadcast_arrays(*[np.sum((a - b) ** 2, axis=(-2, -1))
                                             for a, b in zip(ref, run, strict=True)]), axis=-1)
    ref_sq = np.stack([np.sum(a ** 2, axis=(-2, -1)) for a in ref], axis=-1)
    run_sq = np.stack([np.sum(b ** 2, axis=(-2, -1)) for b in run], axis=-1)
    dots = sum(np.sum(a * b, axis=(-2, -1)) for a, b in zip(ref, run, strict=True))
    ref_norm = np.sqrt(ref_sq.sum(axis=-1))
    distance = np.sqrt(diff_sq.sum(axis=-1))
    end_ref, end_run = ref[0], run[0]
    for a, b in zip(ref[1:], run[1:], strict=True):
        end_ref, end_run = a @ end_ref, b @ end_run
    with np.errstate(divide="ignore", invalid="ignore"):
        layer = np.sqrt(diff_sq) / np.sqrt(ref_sq)
        out = {
            "parameter_distance": distance,
            "relative_parameter_distance": distance / ref_norm,
            "cosine_similarity": dots / (ref_norm * np.sqrt(run_sq.sum(axis=-1))),
            "layer_distance": layer,
            "mean_layer_distance": layer.mean(axis=-1),
            "function_distance": (np.sqrt(np.sum((end_ref - end_run) ** 2, axis=(-2, -1)))
                                  / np.sqrt(np.sum(end_ref ** 2, axis=(-2, -1)))),
            "parameter_norm": np.broadcast_to(ref_norm, distance.shape).copy(),
        }
    return out


def balance_residuals(weights) -> np.ndarray:
    """``r_l = ||W_l W_l^T - W_{l+1}^T W_{l+1}||_F / (||W_l W_l^T||_F + ||W_{l+1}^T W_{l+1}||_F)``
    for ``l = 1..L-1`` (notes §1, "Balanced assumptions"; 0 = balanced, scale invariant; the
    recorded ``balance_residual`` observable): ``(..., L-1)`` from ``(..., d_l, d_{l-1})``
    layers."""
    ws = tuple(w.astype(np.float64) for w in _weights_tuple(weights))
    with _one_blas_thread():
        return _balance(ws)


def _balance(ws) -> np.ndarray:
    out = []
    for w, w_next in zip(ws[:-1], ws[1:], strict=True):
        left = w @ np.swapaxes(w, -1, -2)
        right = np.swapaxes(w_next, -1, -2) @ w_next
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.linalg.norm(left - right, axis=(-2, -1))
                       / (np.linalg.norm(left, axis=(-2, -1)) + np.linalg.norm(right, axis=(-2, -1))))
    batch = ws[0].shape[:-2]
    return np.stack(out, axis=-1) if out else np.zeros(batch + (0,))


# --------------------------------------------------------------------------- modes


def mode_coefficients(end_to_end, left, right, rank: int) -> np.ndarray:
    """``w_ab = u_a^T W v_b`` for ``a, b <= rank`` (notes §1, "Mode decoupling"): ``(..., rank,
    rank)`` from end-to-end maps ``W`` ``(..., d_out, d_in)`` and the teacher's singular vectors
    ``left = U (d_out, >= rank)``, ``right = V (d_in, >= rank)`` (``Task.left``, ``Task.right``;
    the recorded ``cross_amplitude`` is this with ``rank = min(d_in, d_out)``)."""
    w = np.asarray(end_to_end, dtype=np.float64)
    u, vv = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    rank = v.positive_int("rank", rank)
    if w.ndim < 2 or u.ndim != 2 or vv.ndim != 2 or u.shape[0] != w.shape[-2] \
            or vv.shape[0] != w.shape[-1]:
        v.fail("shapes", (w.shape, u.shape, vv.shape),
               "need end_to_end (..., d_out, d_in), left (d_out, r), right (d_in, r)")
    if rank > min(u.shape[1], vv.shape[1]):
        v.fail("rank", rank, f"must be <= the singular vectors given ({min(u.shape[1], vv.shape[1])})")
    return np.einsum("ia,...ij,jb->...ab", u[:, :rank], w, vv[:, :rank])


def cross_mode_energy(coefficients):
    """``E_cross = sum_{a != b} w_ab^2`` and ``E_cross / E_tot`` (``E_tot = sum_ab w_ab^2``; NaN
    when ``E_tot = 0``) of coefficients ``(..., r, r)``; returns two ``(...)`` arrays."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
        v.fail("coefficients.shape", c.shape, "must be (..., r, r)")
    total = np.sum(c ** 2, axis=(-2, -1))
    cross = total - np.sum(np.diagonal(c, axis1=-2, axis2=-1) ** 2, axis=-1)
    cross = np.maximum(cross, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cross, np.where(total > 0, cross / np.where(total > 0, total, 1.0), np.nan)


def _times(times, length: int | None = None) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 1 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        v.fail("times", t, "must be a 1-D increasing array of finite record times")
    if length is not None and t.size != length:
        v.fail("times", f"{t.size} records", f"must match the time axis of the values ({length})")
    return t


def _first_below(times, values, level, *, log: bool) -> np.ndarray:
    """First time ``values (..., T)`` reaches ``<= level`` (broadcast over ``...``), linearly
    interpolated between records (in ``log`` values if asked); NaN if never."""
    t = np.asarray(times, dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), x.shape[:-1])
    below = x <= level[..., None]
    hit = below.any(axis=-1)
    i = np.argmax(below, axis=-1)
    prev = np.maximum(i - 1, 0)
    x1 = np.take_along_axis(x, i[..., None], -1)[..., 0]
    x0 = np.take_along_axis(x, prev[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        if log:
            x0, x1, lv = np.log(x0), np.log(x1), np.log(level)
        else:
            lv = level
        frac = np.where((x1 != x0) & np.isfinite(x0) & np.isfinite(x1), (lv - x0) / (x1 - x0), 1.0)
    frac = np.clip(np.where(np.isfinite(frac), frac, 1.0), 0.0, 1.0)
    out = np.where(i == 0, t[0], t[prev] + frac * (t[i] - t[prev]))
    return np.where(hit, out, np.nan)


def mode_passage_times(times, coefficients, spectrum, *, cross_threshold: float,
                       diagonal_fraction: float = 0.5, relative_to_peak: bool = False):
    """First-passage times of the mode coefficients (notes §1, "Mode decoupling"):

    ``t_cross(a) = inf{t: max_{b != a} |w_ab(t)| <= cross_threshold}`` (row ``a``: the notes'
    "for each fixed alpha, {|w_ab| : b != a}"), ``t_diag(a) = inf{t: |w_aa(t)| >= c s_a}`` with
    ``c = diagonal_fraction``, each linearly interpolated between records (``t_cross = t_0`` with
    a single mode: there is no cross mode). NaN: not reached by the last record (censored at the
    horizon: :func:`cross_before_diagonal_fraction`). ``times`` ``(T,)``; ``coefficients``
    ``(..., T, r, r)``; ``spectrum`` ``(r,)`` the teacher's ``s_a > 0`` (pass only the modes of
    the teacher's rank: ``t_diag`` of a zero mode would be ``t_0``). With repeated singular values
    the cross modes inside a degenerate block depend on the basis chosen.

    ``relative_to_peak=True``: ``t_cross(a)`` is the first time *after the peak* of
    ``max_{b != a} |w_ab|`` (over the records, per run and mode) at which it is at most
    ``cross_threshold x`` that peak. From a small initialisation the cross coefficients start far
    below any fixed threshold (they grow during the first escape, then decay), so the absolute
    definition gives ``t_cross = t_0``; the relative one measures their decay. Returns
    ``(t_cross, t_diag)``, each ``(..., r)``. Raises ``ValueError`` for bad shapes, a threshold
    ``<= 0``, ``c`` outside ``(0, 1]`` or a non-positive ``s_a``.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim < 3 or c.shape[-1] != c.shape[-2]:
        v.fail("coefficients.shape", c.shape, "must be (..., T, r, r)")
    t = _times(times, c.shape[-3])
    s = np.asarray(spectrum, dtype=np.float64).ravel()
    if s.size != c.shape[-1]:
        v.fail("spectrum", s, f"must hold one singular value per mode ({c.shape[-1]})")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        v.fail("spectrum", s, "must be > 0 (pass only the teacher's rank modes)")
    v.finite_scalar("cross_threshold", cross_threshold, minimum=0.0, strict=True)
    v.finite_scalar("diagonal_fraction", diagonal_fraction, minimum=0.0, strict=True, maximum=1.0)
    r = c.shape[-1]
    magnitude = np.abs(c)
    off = np.where(np.eye(r, dtype=bool), -np.inf, magnitude).max(axis=-1) if r > 1 else \
        np.zeros(c.shape[:-1])
    diag = np.diagonal(magnitude, axis1=-2, axis2=-1)                      # (..., T, r)
    off = np.moveaxis(off, -2, -1)                                         # (..., r, T)
    diag = np.moveaxis(diag, -2, -1)
    off = np.where(np.isnan(off), np.inf, off)
    if relative_to_peak:
        peak = np.argmax(np.where(np.isfinite(off), off, -np.inf), axis=-1)
        level = cross_threshold * np.take_along_axis(off, peak[..., None], -1)[..., 0]
        after = np.arange(t.size) >= peak[..., None]
        t_cross = _first_below(t, np.where(after, off, np.inf), level, log=False)
        # the record before the peak is above the level: interpolation starts at the peak
        t_cross = np.maximum(t_cross, t[peak])
    else:
        t_cross = _first_below(t, off, cross_threshold, log=False)
    t_diag = crossing_times(t, np.where(np.isnan(diag), -np.inf, diag), diagonal_fraction * s)
    return t_cross, t_diag


def cross_before_diagonal_fraction(t_cross, t_diag, horizon: float):
    """Share of (mode, run) pairs with ``t_cross < t_diag`` (notes: "typically t_cross(a) <
    t_diag(a) across modes, seeds and batch partitions").

    Censored pairs (NaN = not reached by ``horizon``, the last record time) count by what is
    known: ``t_cross`` reached and ``t_diag`` not -> before (``t_cross <= horizon < t_diag``);
    ``t_diag`` reached and ``t_cross`` not -> not before; neither reached -> the order is unknown
    and the pair is left out of ``total``. Ties count as not before. Returns ``(fraction, count,
    total)`` (fraction NaN when ``total = 0``); ``t_cross``, ``t_diag`` of equal shape, every
    finite time ``<= horizon`` (``ValueError`` otherwise)."""
    a = np.asarray(t_cross, dtype=np.float64)
    b = np.asarray(t_diag, dtype=np.float64)
    if a.shape != b.shape:
        v.fail("t_diag.shape", b.shape, f"must equal t_cross's shape {a.shape}")
    v.finite_scalar("horizon", horizon)
    for name, x in (("t_cross", a), ("t_diag", b)):
        if np.any(np.isinf(x)) or np.any(x[np.isfinite(x)] > float(horizon)):
            v.fail(name, x, f"finite times must be <= horizon={horizon} (NaN = not reached)")
    known_a, known_b = np.isfinite(a), np.isfinite(b)
    before = (known_a & known_b & (a < b)) | (known_a & ~known_b)
    decided = known_a | known_b
    count, total = int(np.sum(before)), int(np.sum(decided))
    return (count / total if total else math.nan), count, total


# --------------------------------------------------------------------------- alignment


def loss_level_times(times, loss, levels) -> np.ndarray:
    """Each run's first downward crossing of each loss level (notes §1.1.1: loss-aligned
    checkpoints): the first record with ``loss <= level``, the time linearly interpolated in
    ``log loss`` between it and the record before (``t_0`` if the first record is already below).
    ``times`` ``(T,)``, ``loss`` ``(..., T)`` (> 0; non-finite records never count as below),
    ``levels`` ``(n,)`` > 0. Returns ``(..., n)``; NaN where never reached (censored at the
    horizon)."""
    x = np.asarray(loss, dtype=np.float64)
    t = _times(times, x.shape[-1] if x.ndim else None)
    lv = np.asarray(levels, dtype=np.float64).ravel()
    if lv.size < 1 or not np.all(np.isfinite(lv)) or np.any(lv <= 0):
        v.fail("levels", lv, "must be finite loss values > 0")
    x = np.where(np.isfinite(x), np.maximum(x, np.finfo(np.float64).tiny), np.inf)
    x = np.broadcast_to(x[..., None, :], x.shape[:-1] + (lv.size, x.shape[-1]))
    return _first_below(t, x, lv, log=True)


def default_loss_levels(loss_gd, count: int = 24, floor: float = 0.0) -> np.ndarray:
    """``count`` loss levels geometric in ``loss - floor`` strictly between GD's initial and
    final loss: ``floor + geomspace(L_0 - floor, L_end - floor, count + 2)[1:-1]`` (the
    endpoints are left out: every run starts at ``L_0`` and noisy runs hover above ``L_end``).
    ``loss_gd`` ``(T,)``; ``floor`` e.g. the label-noise floor ``0.5 d_out sigma^2``. Raises
    ``ValueError`` unless ``L_0 > L_end > floor`` (finite) and ``count >= 1``."""
    x = np.asarray(loss_gd, dtype=np.float64).ravel()
    count = v.positive_int("count", count)
    v.finite_scalar("floor", floor, minimum=0.0)
    if x.size < 2 or not np.isfinite(x[0]) or not np.isfinite(x[-1]) or not \
            x[0] > x[-1] > float(floor):
        v.fail("loss_gd", x, f"must fall from its first to its last record, above floor={floor}")
    return float(floor) + np.geomspace(x[0] - floor, x[-1] - floor, count + 2)[1:-1]


def values_at_times(times, values, at, *, method: str = "linear") -> np.ndarray:
    """Values of each run at its own times (align a metric at loss-level or escape checkpoints).

    ``times`` ``(T,)``; ``values`` ``(..., T, *extra)``; ``at`` ``(..., n)`` with the same
    leading axes (broadcast). ``method="linear"``: linear interpolation along time (exact at a
    record time); ``"previous"``: the last record at or before ``at`` (for integer patterns such
    as ranks). Returns ``(..., n, *extra)`` float64; NaN where ``at`` is NaN or outside
    ``[t_0, t_end]``."""
    if method not in ("linear", "previous"):
        v.fail("method", method, "must be 'linear' or 'previous'")
    t = np.asarray(times, dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    q = np.asarray(at, dtype=np.float64)
    if q.ndim < 1:
        v.fail("at.shape", q.shape, "must be (..., n)")
    lead = q.ndim - 1
    if x.ndim < lead + 1:
        v.fail("values.shape", x.shape, f"must be (..., T, ...) with the leading axes of at {q.shape}")
    t = _times(t, x.shape[lead])
    extra = x.shape[lead + 1:]
    batch = np.broadcast_shapes(x.shape[:lead], q.shape[:-1])
    x = np.broadcast_to(x, batch + x.shape[lead:])
    q = np.broadcast_to(q, batch + q.shape[-1:])
    ok = np.isfinite(q) & (q >= t[0]) & (q <= t[-1])
    qq = np.where(ok, q, t[0])
    if t.size == 1:
        i0 = i1 = np.zeros(qq.shape, dtype=np.int64)
        w = np.zeros(qq.shape)
    elif method == "previous":
        i0 = np.searchsorted(t, qq, side="right") - 1
        i1, w = i0, np.zeros(qq.shape)
    else:
        i1 = np.clip(np.searchsorted(t, qq, side="left"), 1, t.size - 1)
        i0 = i1 - 1
        w = (qq - t[i0]) / (t[i1] - t[i0])
    expand = (slice(None),) * q.ndim + (None,) * len(extra)
    idx_shape = batch + q.shape[-1:] + (1,) * len(extra)
    v0 = np.take_along_axis(x, i0.reshape(idx_shape), axis=lead)
    v1 = np.take_along_axis(x, i1.reshape(idx_shape), axis=lead)
    ww = w[expand]
    out = (1.0 - ww) * v0 + ww * v1
    out = np.where(w[expand] == 0.0, v0, out)
    return np.where(ok[expand], out, np.nan)


def _check_rule(drop, tolerance, contrast) -> None:
    v.finite_scalar("drop", drop, minimum=0.0, strict=True, maximum=1.0)
    v.finite_scalar("tolerance", tolerance, minimum=0.0, strict=True, maximum=1.0)
    v.finite_scalar("contrast", contrast, minimum=0.0)
    if not float(tolerance) < float(drop) < 1.0:
        v.fail("drop", drop, f"must be in (tolerance={tolerance}, 1)")


def _log_interp(t, x, when: float) -> float:
    """The loss at time ``when``, log-linear between records."""
    k = int(np.clip(np.searchsorted(t, when, side="left"), 1, t.size - 1))
    w = (when - t[k - 1]) / (t[k] - t[k - 1])
    return float(math.exp((1.0 - w) * math.log(x[k - 1]) + w * math.log(x[k])))


def _escapes_one(t, x, drop, tolerance, contrast, resolution, max_escapes):
    """Escapes of one finite, positive loss series (see :func:`escape_events`)."""
    ratio = math.log(max(x.min(), resolution * x[0]) / x[0]) / math.log(1.0 - tolerance)
    steps = int(math.floor(ratio + 1e-12)) if ratio > 0 else 0
    per_drop = int(math.ceil(math.log(1.0 - drop) / math.log(1.0 - tolerance) - 1e-12))
    if steps < per_drop + 1:
        return []
    ladder = x[0] * (1.0 - tolerance) ** np.arange(steps + 1)
    tau = _first_below(t, np.broadcast_to(x, (ladder.size, x.size)), ladder, log=True)
    tau[0] = t[0]
    delta = np.diff(tau)                                           # time spent on each rung
    # fastest rung of the drop that follows rung j: min over the next per_drop rungs
    window = np.lib.stride_tricks.sliding_window_view(delta[1:], per_drop).min(axis=-1)
    candidate = (delta[:window.size] > 0) & (delta[:window.size] >= contrast * window)
    found, j = [], 0
    while len(found) < max_escapes:
        hits = np.nonzero(candidate[j:])[0]
        if hits.size == 0:
            break
        j += int(hits[0])
        level = _log_interp(t, x, 0.5 * (tau[j] + tau[j + 1]))
        target = (1.0 - drop) * level
        t_escape = float(_first_below(t, x, target, log=True))
        if not math.isfinite(t_escape):
            break
        found.append((t_escape, level, float(tau[j]), float(tau[j + 1])))
        # resume once the drop has slowed down: the first rung after the escape that lasts
        # ``contrast`` times as long as the fastest rung since the plateau
        rest = delta[j + 1:]
        fastest = np.minimum.accumulate(rest)
        slowed = (tau[j + 2:j + 2 + rest.size - 1] >= t_escape) & (
            rest[1:] > 0) & (rest[1:] >= contrast * fastest[:-1])
        after = np.nonzero(slowed)[0]
        if after.size == 0:
            break
        j = j + 2 + int(after[0])
    return found


def escape_events(times, loss, *, drop: float = 0.2, tolerance: float = 0.05,
                  contrast: float = 3.0, resolution: float = 1e-10, max_escapes: int = 8) -> dict:
    """Escape events: the first significant drop of the loss from each plateau (notes §1.1.1).

    The rule (docs/golden-path.md, "Escape rule"), per run on its records ``(t_k, L_k)``:

    1. **Ladder.** Put rungs at ``L_0 (1 - tolerance)^n`` (5% apart by default) and take the first
       time ``tau_n`` the loss reaches each (log-linear interpolation between records); the time
       spent on rung ``n`` is ``Delta_n = tau_{n+1} - tau_n``. First passages ignore any
       fluctuation smaller than a rung, and upward moves. The ladder stops at
       ``resolution x L_0`` (default ``1e-10``): a loss that has converged to rounding level
       is noise, not plateaus.
    2. **Plateau.** Rung ``n`` is a plateau when it lasted at least ``contrast`` times as long as
       the fastest of the ``k = ceil(log(1 - drop) / log(1 - tolerance))`` rungs below it (5 by
       default: the rungs of one drop): ``Delta_n >= contrast x min(Delta_{n+1..n+k})``.
    3. **Level.** The plateau level ``P`` is the loss halfway through the rung, at
       ``(tau_n + tau_{n+1}) / 2``.
    4. **Escape.** The escape time is the first time the loss reaches ``(1 - drop) P``.
    5. **Next plateau.** The search resumes at the first rung after the escape that lasts
       ``contrast`` times as long as the fastest rung since the plateau (the drop has slowed down),
       so one drop gives one escape.

    A flat curve (or one that never falls by a rung) has no escape; an exponential decay has
    rungs of equal duration and a power-law or floored decay ever longer ones, so neither has an
    escape for ``contrast > 1``; a saddle plateau followed by a drop (a sigmoid, or the
    accelerating escape of a deep linear network's next mode) has one, at the time the loss has
    fallen ``drop`` (20%) below the plateau. Scale-free: no time window, any record grid. Noise
    larger than a rung can make a fast rung out of a fluctuation: smooth such curves first.

    ``times`` ``(T,)``; ``loss`` ``(..., T)`` > 0 (the search stops at the first record that is
    not finite and positive: a diverged run). ``drop`` in ``(tolerance, 1)``, ``tolerance`` in
    ``(0, 1)``, ``contrast >= 0`` (default 3), ``resolution`` in ``(0, 1)``, ``max_escapes >= 1``
    (later ones are not reported).
    Returns arrays ``(..., max_escapes)``, NaN-padded: ``escape_time``, ``plateau_level`` ``P``,
    ``plateau_start`` ``tau_n`` and ``plateau_end`` ``tau_{n+1}`` (the rung's ends); and ``count``
    ``(...)``, the escapes found. Raises ``ValueError`` for bad parameters or shapes.
    """
    _check_rule(drop, tolerance, contrast)
    v.finite_scalar("resolution", resolution, minimum=0.0, strict=True, maximum=1.0)
    max_escapes = v.positive_int("max_escapes", max_escapes)
    x = np.asarray(loss, dtype=np.float64)
    if x.ndim < 1:
        v.fail("loss.shape", x.shape, "must be (..., T)")
    t = _times(times, x.shape[-1])
    batch = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    keys = ("escape_time", "plateau_level", "plateau_start", "plateau_end")
    out = {k: np.full((flat.shape[0], max_escapes), np.nan) for k in keys}
    count = np.zeros(flat.shape[0], dtype=np.int64)
    for row, series in enumerate(flat):
        bad = np.nonzero(~np.isfinite(series) | (series <= 0))[0]
        end = int(bad[0]) if bad.size else series.size
        if end < 2:
            continue
        found = _escapes_one(t[:end], series[:end], float(drop), float(tolerance),
                             float(contrast), float(resolution), max_escapes)
        count[row] = len(found)
        for n, event in enumerate(found):
            for key, value in zip(keys, event, strict=True):
                out[key][row, n] = value
    result = {k: a.reshape(batch + (max_escapes,)) for k, a in out.items()}
    result["count"] = count.reshape(batch)
    return result


def match_escapes(reference_levels, levels, escape_times_, *, max_log_ratio: float = 0.25):
    """Each run's escape from the plateau nearest each reference (GD) plateau, by level.

    Runs may merge or split close transitions, so escape ``e`` of a run need not be GD's escape
    ``e``: escapes are paired by their plateau level ``P`` instead, the run's escape whose
    ``|log P - log P_GD|`` is smallest and at most ``max_log_ratio`` (default 0.25: within about
    the 20% drop). ``reference_levels`` ``(E,)`` (GD's ``plateau_level``, NaN-padded),
    ``levels`` and ``escape_times_`` ``(..., M)`` (a run's ``plateau_level`` and
    ``escape_time`` from :func:`escape_events`). Returns ``(..., E)`` times, NaN where the run has
    no escape from that plateau (censored, not dropped)."""
    v.finite_scalar("max_log_ratio", max_log_ratio, minimum=0.0, strict=True)
    ref = np.log(np.asarray(reference_levels, dtype=np.float64))
    lv = np.asarray(levels, dtype=np.float64)
    tt = np.asarray(escape_times_, dtype=np.float64)
    if lv.shape != tt.shape or lv.ndim < 1 or ref.ndim != 1:
        v.fail("levels.shape", lv.shape, f"must equal escape_times' {tt.shape}; references 1-D")
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(np.log(lv)[..., None, :] - ref[:, None])            # (..., E, M)
    gap = np.where(np.isfinite(gap), gap, np.inf)
    best = np.argmin(gap, axis=-1)
    ok = np.take_along_axis(gap, best[..., None], -1)[..., 0] <= max_log_ratio
    chosen = np.take_along_axis(np.broadcast_to(tt[..., None, :], gap.shape), best[..., None],
                                -1)[..., 0]
    return np.where(ok, chosen, np.nan)


def escape_times(times, loss, *, drop: float = 0.2, tolerance: float = 0.05,
                 contrast: float = 3.0, resolution: float = 1e-10,
                 max_escapes: int = 8) -> np.ndarray:
    """``(..., max_escapes)`` escape times of :func:`escape_events` (NaN-padded; the rule is
    documented there and in docs/golden-path.md)."""
    return escape_events(times, loss, drop=drop, tolerance=tolerance, contrast=contrast,
                         resolution=resolution, max_escapes=max_escapes)["escape_time"]

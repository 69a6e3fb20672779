"""Linear algebra and random numbers on arrays with optional trailing run axes: the fast twin
of :mod:`dlnlab.core` used inside the compiled loop (private to :mod:`dlnlab.dynamics`).

``core`` computes the same quantities for one run with plain matrices (and is the reference the
conformance tests compare against); the functions here take weights ``(d_l, d_{l-1}, *R)`` with
the runs on the trailing axes.

The engine stores a batch of runs on the *last* axes (``W_l`` of shape ``(d_l, d_{l-1}, *R)``):
with ``B = 1`` every product is a matrix-vector or outer product, and runs on the minor axis
let XLA vectorise across runs (PERF-NOTES: 1.8-3.3M run-steps/s against 1.2-1.6M for ``vmap``
of ``dot``). The same functions accept plain 2-D matrices (``R = ()``), so one stepper serves
a single run, ``jax.vmap`` and the batched engine.

Random numbers are counter-based (Salmon et al. 2011): the normals of step ``n`` of a run are
``threefry2x32(run_key; (n, stream * 2^24 + j))``. They depend only on (run key, step, index),
never on how the steps are chunked, how many runs are batched or where a run was resumed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array

# Above this width the broadcast-multiply-and-sum product (O(m k n) work per run, no BLAS) loses
# to XLA's dot; below it, it wins by keeping runs on the vector lanes.
BROADCAST_MAX_WIDTH = 32


def lift(a: Array, ndim: int) -> Array:
    """Append singleton axes so ``a`` has ``ndim`` dimensions (aligns unbatched operands)."""
    return a.reshape(a.shape + (1,) * (ndim - a.ndim)) if a.ndim < ndim else a


def mm(a: Array, b: Array) -> Array:
    """``a @ b`` over the first two axes; trailing axes are runs (broadcast)."""
    nd = max(a.ndim, b.ndim)
    if nd == 2:
        return a @ b
    if max(a.shape[0], a.shape[1], b.shape[1]) > BROADCAST_MAX_WIDTH:
        return jnp.einsum("ik...,kj...->ij...", lift(a, nd), lift(b, nd))
    a, b = lift(a, nd), lift(b, nd)
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def mm_nt(a: Array, b: Array) -> Array:
    """``a @ b^T``: ``(m, k, *R), (n, k, *R) -> (m, n, *R)`` (runs trailing or absent), equal to
    :func:`mm` with ``mT(b)``: the same
    products summed in the same order, without moving ``b``'s elements (a transpose of runs-minor
    arrays is a pass over memory of its own)."""
    nd = max(a.ndim, b.ndim)
    if nd == 2 or max(a.shape[0], a.shape[1], b.shape[0]) > BROADCAST_MAX_WIDTH:
        return mm(a, mT(b))
    a, b = lift(a, nd), lift(b, nd)
    return jnp.sum(a[:, None] * b[None, :], axis=2)


def mm_tn(a: Array, b: Array) -> Array:
    """``a^T @ b``: ``(k, m, *R), (k, n, *R) -> (m, n, *R)``, equal to :func:`mm` with ``mT(a)``,
    without the transpose (see :func:`mm_nt`)."""
    nd = max(a.ndim, b.ndim)
    if nd == 2 or max(a.shape[0], a.shape[1], b.shape[1]) > BROADCAST_MAX_WIDTH:
        return mm(mT(a), b)
    a, b = lift(a, nd), lift(b, nd)
    return jnp.sum(a[:, :, None] * b[:, None, :], axis=0)


#: Fewest minibatch columns for which a step's plain-matrix products (one run, or runs mapped over
#: in the batched layout) are XLA ``dot``s; below, multiply-and-sum (:func:`mm_sum`; with runs on
#: the trailing axes :func:`mm` is unchanged). On an AVX2
#: CPU XLA's batched ``dot`` with 2-8 columns rounded a run by its place in the batch (16 and 32
#: columns did not; online SGD, d = 32).
DOT_MIN_COLUMNS = 16


def mm_sum(a: Array, b: Array) -> Array:
    """``(a @ b)_ij = sum_k a_ik b_kj``: ``(m, k, *R), (k, n, *R) -> (m, n, *R)`` as a
    multiply-and-sum for any trailing run axes, plain matrices (``R = ()``) included
    (:data:`DOT_MIN_COLUMNS`)."""
    nd = max(a.ndim, b.ndim)
    a, b = lift(a, nd), lift(b, nd)
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def columns_product(batch: int, plain: bool):
    """The product for ``(m, k) (k, B)`` minibatch matrices: :func:`mm_sum` for plain matrices
    (one run, or runs mapped over) with ``B <`` :data:`DOT_MIN_COLUMNS`, else :func:`mm`."""
    return mm_sum if plain and batch < DOT_MIN_COLUMNS else mm


def batch_outer_sum(b: Array, a: Array) -> Array:
    """``sum_k b[:, k] a[:, k]^T``: ``(m, B, *R), (n, B, *R) -> (m, n, *R)``, added in the order
    ``k = 0, 1, ..., B - 1`` as element-wise operations (no XLA reduction).

    Why: inside the compiled step XLA:CPU vectorised this batch sum (a reduction over ``B`` fused
    with the error that feeds it) differently for different run-group sizes at ``B = 30-32`` on
    AVX-512 CPUs, so a run's last-layer update rounded 1 ulp differently by its group's size
    (docs/performance.md, last section). Element-wise, each run's sum is the same operations
    whatever the group, and it is the reduction's usual order: where the reduction did not change
    with the group it gives the same bits (checked at B = 3, 8, 16, 32; d = 4, 12, 24). The fold
    replaces only :func:`mm`'s multiply-and-sum: where ``m``, ``B`` or ``n`` exceeds
    :data:`BROADCAST_MAX_WIDTH` this is ``mm(b, mT(a))`` (its ``einsum``), as before. At d = 12
    0.91-0.92x the reduction's speed (B = 3-32), at d = 4 and 24 0.99-1.03x. SGD, momentum SGD,
    online and offline, share it (:func:`minibatch_updates`, runs trailing).
    """
    if max(b.shape[0], b.shape[1], a.shape[0]) > BROADCAST_MAX_WIDTH:
        return mm(b, mT(a))
    acc = outer(b[:, 0], a[:, 0])
    for k in range(1, b.shape[1]):
        acc = acc + outer(b[:, k], a[:, k])
    return acc


def mv(a: Array, x: Array) -> Array:
    """``a @ x`` for a matrix ``(m, k, *R)`` and a vector ``(k, *R)``: a multiply-and-sum also
    for plain matrices (``R = ()``), where ``jax.vmap`` maps it in the batched product layout:
    XLA's batched matrix-vector ``dot`` rounded a run by its place in the batch on an AVX2 CPU."""
    nd = max(a.ndim, x.ndim + 1)
    a, x = lift(a, nd), lift(x, nd - 1)
    return jnp.sum(a * x[None], axis=1)


def mtv(a: Array, x: Array) -> Array:
    """``a^T @ x`` for a matrix ``(m, k, *R)`` and a vector ``(m, *R)`` (multiply-and-sum, as
    :func:`mv`)."""
    nd = max(a.ndim, x.ndim + 1)
    a, x = lift(a, nd), lift(x, nd - 1)
    return jnp.sum(a * x[:, None], axis=0)


def outer(x: Array, y: Array) -> Array:
    """``x y^T`` per run: ``(m, *R)``, ``(k, *R)`` -> ``(m, k, *R)``."""
    return x[:, None] * y[None, :]


def mT(a: Array) -> Array:
    """Transpose of the first two axes."""
    return jnp.swapaxes(a, 0, 1)


def run_shape(key_words: Array) -> tuple[int, ...]:
    """The trailing run shape ``R`` of key words of shape ``(2, *R)``."""
    return tuple(key_words.shape[1:])


def key_words(key) -> Array:
    """Key words ``(2, *R)`` uint32 from a typed key array of shape ``R`` or raw words ``(2, *R)``."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(key)
        return jnp.moveaxis(data, -1, 0).astype(jnp.uint32)
    if key.dtype != jnp.uint32 or key.ndim < 1 or key.shape[0] != 2:
        raise ValueError(f"key=array of shape {key.shape} and dtype {key.dtype}: must be a typed "
                         "PRNG key (jax.random.key) or raw uint32 words of shape (2, *runs)")
    return key


def _bits_to_normal(bits: Array, dtype) -> Array:
    # As jax.random.normal: a uniform in (-1, 1) from the top 23 bits, then sqrt(2) erfinv.
    u = _bits_to_uniform(bits, jnp.float32)
    u = jnp.maximum(2.0 * u - 1.0, np.nextafter(np.float32(-1.0), np.float32(0.0)))
    out = np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)
    if jnp.dtype(dtype) == jnp.float64:
        # float64 runs keep float32-resolution normals (23 random bits): ample for Monte Carlo
        # and it keeps one generator for both precisions.
        return out.astype(jnp.float64)
    return out.astype(dtype)


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: Array, bits: int) -> Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(key1: Array, key2: Array, count1: Array, count2: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 block cipher (20 rounds; Salmon et al. 2011), unrolled: bit-identical to
    ``jax.extend.random.threefry2x32_p`` (``tests/test_engine_trust.py`` checks it), whose CPU
    lowering is a rolled loop that streams its state through memory five times. Unrolled, XLA fuses
    the rounds into one pass (``dlnlab bench``: 2.3x fewer ns per word on this CPU). uint32 arrays
    that broadcast together."""
    keys = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = count1 + keys[0], count2 + keys[1]
    for index in range(5):
        for bits in _THREEFRY_ROTATIONS[index % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, bits)
        x0 = x0 + keys[(index + 1) % 3]
        x1 = x1 + keys[(index + 2) % 3] + np.uint32(index + 1)
    return x0, x1


def _counter_halves(words: Array, counter, count: int, stream: int):
    """The two output words of each threefry block: ``(o1, o2, axis)``, each ``(*C, half, *R)``."""
    runs = run_shape(words)
    counter = jnp.asarray(counter).astype(jnp.uint32)
    half = (count + 1) // 2
    shape = counter.shape + (half,) + runs
    x1 = counter.reshape(counter.shape + (1,) * (1 + len(runs)))
    x2 = (np.arange(half, dtype=np.uint32) + np.uint32(stream << 24)).reshape(
        (half,) + (1,) * len(runs))
    o1, o2 = threefry2x32(words[0], words[1], x1, x2)
    return jnp.broadcast_to(o1, shape), jnp.broadcast_to(o2, shape), counter.ndim


def _join(o1: Array, o2: Array, count: int, axis: int) -> Array:
    # Each half is transformed before the join: transformed after it, XLA's fused loop
    # evaluates the cipher once per output word, i.e. twice per block (1.1x fewer ns per normal).
    return jax.lax.slice_in_dim(jnp.concatenate([o1, o2], axis=axis), 0, count, axis=axis)


def counter_bits(words: Array, counter, count: int, stream: int = 0) -> Array:
    """``count`` uint32 words per run for each counter value: shape ``(*C, count, *R)``.

    ``counter`` (shape ``C``, usually a scalar step index) is the first threefry word, the
    stream and the word index the second; word ``j < half`` is block ``j``'s first output,
    word ``half + j`` its second (``half = ceil(count / 2)``).
    """
    o1, o2, axis = _counter_halves(words, counter, count, stream)
    return _join(o1, o2, count, axis)


def counter_normals(words: Array, counter, shape: tuple[int, ...], dtype, stream: int = 0) -> Array:
    """Standard normals of ``shape`` per run for each counter value: ``(*C, *shape, *R)``; the
    normals of :func:`counter_bits` (each word's own transform, so the same bits)."""
    count = int(np.prod(shape)) if shape else 1
    counter = jnp.asarray(counter)
    o1, o2, axis = _counter_halves(words, counter, count, stream)
    normals = _join(_bits_to_normal(o1, dtype), _bits_to_normal(o2, dtype), count, axis)
    return normals.reshape(counter.shape + tuple(shape) + run_shape(words))


def counter_uniforms(words: Array, counter, count: int, stream: int, dtype=jnp.float32) -> Array:
    """Uniforms in ``[0, 1)`` (23 random bits), shape ``(*C, count, *R)``."""
    o1, o2, axis = _counter_halves(words, counter, count, stream)
    return _join(_bits_to_uniform(o1, dtype), _bits_to_uniform(o2, dtype), count, axis)


def _bits_to_uniform(bits: Array, dtype) -> Array:
    # [0, 1) from the top 23 bits: the mantissa of a float32 in [1, 2), minus one.
    u = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0
    return u.astype(dtype)


# ------------------------------------------------------------------ DLN products (runs-minor)
def prefix_products(weights):
    """``B_l = W_{l-1} ... W_1`` (``None`` for the identity ``B_1``) and ``W = B_{L+1}``."""
    rights = [None]
    for w in weights[:-1]:
        rights.append(w if rights[-1] is None else mm(w, rights[-1]))
    end = weights[-1] if rights[-1] is None else mm(weights[-1], rights[-1])
    return rights, end


def layer_maps(weights, rights, q):
    """``(A_l^T Q B_l^T)_l`` for a ``(d_out, d_in, *R)`` matrix ``Q``: one backward sweep."""
    return layer_maps_sequenced(weights, rights, q)[0]


def layer_maps_sequenced(weights, rights, q):
    """``(maps, sequenced)``: :func:`layer_maps` (``A_l^T Q B_l^T``, each ``(d_l, d_{l-1}, *R)``)
    and the weights sequenced after their last read (:func:`after`: the same values), both
    tuples over the layers: a step ``W_l - U_l`` computed from these updates the weights in
    place."""
    out = [None] * len(weights)
    sequenced = list(weights)
    back = q                                            # A_l^T Q, starting at l = L
    for index in range(len(weights) - 1, -1, -1):
        right = rights[index]
        out[index] = back if right is None else mm_nt(back, right)
        if index > 0:
            back = mm_tn(weights[index], back)
            sequenced[index] = after(weights[index], back)
    return tuple(out), tuple(sequenced)


def descend(weights, rights, q):
    """``W_l - A_l^T Q B_l^T`` per layer (a tuple of ``(d_l, d_{l-1}, *R)``) for ``Q (d_out,
    d_in, *R)``: the step of :func:`layer_maps`, each ``W_l`` written after its last read
    (:func:`after`: the same values; XLA then updates the weights in place)."""
    maps, sequenced = layer_maps_sequenced(weights, rights, q)
    return subtract(sequenced, maps)


def data_moments(task):
    """``(S_xx, S_yx, tr S_yy)`` of the task's data set (per-sample means)."""
    x, y = task.data
    n = x.shape[0]
    return x.T @ x / n, y.T @ x / n, jnp.sum(y * y) / n


def error_and_loss(task, moments, end):
    """Error matrix ``G`` (gradient ``A^T G B^T``), the residual ``W - M`` (online; ``None``
    offline) and the training loss per run."""
    if moments is None:
        d = end - lift(task.teacher, end.ndim)
        g = d if task.whitened else mm(d, task.input_covariance)
        noise = 0.0 if task.label_covariance is None else 0.5 * jnp.trace(task.label_covariance)
        return g, d, 0.5 * jnp.sum(g * d, axis=(0, 1)) + noise
    sxx, syx, syy = moments
    ws = mm(end, sxx)
    syx_l = lift(syx, end.ndim)
    loss = 0.5 * jnp.sum(ws * end, axis=(0, 1)) - jnp.sum(syx_l * end, axis=(0, 1)) + 0.5 * syy
    return ws - syx_l, None, loss


def subtract(weights, updates):
    """``W_l - U_l`` per layer."""
    return tuple(w - u for w, u in zip(weights, updates, strict=True))


def after(weight: Array, value: Array) -> Array:
    """``weight`` itself, made to depend on ``value``: ``W - |0 v|`` with ``v`` one element of
    ``value`` per run, which is exactly ``W`` (any sign of zero) while ``v`` is finite.

    Why: the engine carries the weights through XLA's loops in place. When a step reads ``W_l``
    (a backward product) and writes ``W_l - U_l``, and nothing orders the read before the write,
    XLA copies ``W_l`` first: at d = 12, 1.5x the time of the SGD step (three extra passes over
    the weights). Subtracting the update from ``after(W_l, read)`` orders them, and the copy goes.
    ``weight (d_l, d_{l-1}, *R)``; ``value (..., *R)``: the read's result, whose trailing axes
    are the same runs ``R``. A plain matrix (``R = ()``: one run, or runs under ``jax.vmap``) is
    returned as it is.
    """
    if weight.ndim == 2:
        # One run, or runs mapped over (the batched product layout): left alone, since there the
        # term changes how XLA fuses the batched products, and so their bits with the batch size.
        return weight
    runs = weight.shape[2:]
    v = value.reshape((-1,) + runs)[0]
    return weight - jnp.abs(v * 0)


def minibatch_updates(weights, x, y, lr):
    """SGD updates ``U_l = (eta / B) sum_i A_l^T e_i (B_l x_i)^T`` of one minibatch, its loss and
    the weights sequenced after their reads (:func:`after`: the same values; the step is
    ``W_l - U_l`` computed from those, which lets XLA update the weights in place).

    ``x (d_in, B, *R)``, ``y (d_out, B, *R)``: forward activations, backward errors, one outer
    product per layer. With ``B = 1`` everything is a matrix-vector or outer product (written as
    such: 4x faster on CPU than the generic product with a unit axis).
    """
    batch = x.shape[1]
    if batch == 1:
        x, y = x[:, 0], y[:, 0]
        prod, prod_t, update = mv, mtv, outer
    else:
        product = columns_product(batch, plain=x.ndim == 2)
        prod = product
        prod_t = lambda w, v: product(mT(w), v)               # noqa: E731
        # runs trailing: the batch sum in one order for any run-group size (batch_outer_sum)
        update = batch_outer_sum if x.ndim > 2 else lambda b, a: product(b, mT(a))  # noqa: E731
    acts = [x]
    for w in weights[:-1]:
        acts.append(prod(w, acts[-1]))
    err = prod(weights[-1], acts[-1]) - y                 # (d_out, [B,] *R)
    loss = 0.5 * jnp.sum(err * err, axis=(0, 1) if batch > 1 else 0) / batch
    back = err * (lr / batch)
    updates = [None] * len(weights)
    sequenced = list(weights)
    for index in range(len(weights) - 1, -1, -1):
        updates[index] = update(back, acts[index])
        if index > 0:
            back = prod_t(weights[index], back)
            sequenced[index] = after(weights[index], back)
    return tuple(updates), loss, tuple(sequenced)

"""Linear algebra and random numbers on arrays with optional trailing run axes.

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
from jax.extend.random import threefry2x32_p

Array = jax.Array

# Above this width the broadcast-multiply-and-sum product (O(m k n) work per run, no BLAS) loses
# to XLA's dot; below it, it wins by keeping runs on the vector lanes.
BROADCAST_MAX_WIDTH = 32


def _lift(a: Array, ndim: int) -> Array:
    """Append singleton axes so ``a`` has ``ndim`` dimensions (aligns unbatched operands)."""
    return a.reshape(a.shape + (1,) * (ndim - a.ndim)) if a.ndim < ndim else a


def mm(a: Array, b: Array) -> Array:
    """``a @ b`` over the first two axes; trailing axes are runs (broadcast)."""
    nd = max(a.ndim, b.ndim)
    if nd == 2:
        return a @ b
    if max(a.shape[0], a.shape[1], b.shape[1]) > BROADCAST_MAX_WIDTH:
        return jnp.einsum("ik...,kj...->ij...", _lift(a, nd), _lift(b, nd))
    a, b = _lift(a, nd), _lift(b, nd)
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def mv(a: Array, x: Array) -> Array:
    """``a @ x`` for a matrix ``(m, k, *R)`` and a vector ``(k, *R)``."""
    nd = max(a.ndim, x.ndim + 1)
    if nd == 2:
        return a @ x
    a, x = _lift(a, nd), _lift(x, nd - 1)
    return jnp.sum(a * x[None], axis=1)


def mtv(a: Array, x: Array) -> Array:
    """``a^T @ x`` for a matrix ``(m, k, *R)`` and a vector ``(m, *R)``."""
    nd = max(a.ndim, x.ndim + 1)
    if nd == 2:
        return a.T @ x
    a, x = _lift(a, nd), _lift(x, nd - 1)
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
    u = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0
    u = jnp.maximum(2.0 * u - 1.0, np.nextafter(np.float32(-1.0), np.float32(0.0)))
    out = np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)
    if jnp.dtype(dtype) == jnp.float64:
        # float64 runs keep float32-resolution normals (23 random bits): ample for Monte Carlo
        # and it keeps one generator for both precisions.
        return out.astype(jnp.float64)
    return out.astype(dtype)


def counter_bits(words: Array, counter, count: int, stream: int = 0) -> Array:
    """``count`` uint32 words per run for each counter value: shape ``(*C, count, *R)``.

    ``counter`` (shape ``C``, usually a scalar step index) is the first threefry word, the
    stream and the word index the second.
    """
    runs = run_shape(words)
    counter = jnp.asarray(counter).astype(jnp.uint32)
    half = (count + 1) // 2
    shape = counter.shape + (half,) + runs
    x1 = counter.reshape(counter.shape + (1,) * (1 + len(runs)))
    x2 = (np.arange(half, dtype=np.uint32) + np.uint32(stream << 24)).reshape(
        (half,) + (1,) * len(runs))
    k1 = jnp.broadcast_to(words[0], shape)
    k2 = jnp.broadcast_to(words[1], shape)
    o1, o2 = threefry2x32_p.bind(k1, k2, jnp.broadcast_to(x1, shape), jnp.broadcast_to(x2, shape))
    axis = counter.ndim
    bits = jnp.concatenate([o1, o2], axis=axis)
    return jax.lax.slice_in_dim(bits, 0, count, axis=axis)


def counter_normals(words: Array, counter, shape: tuple[int, ...], dtype, stream: int = 0) -> Array:
    """Standard normals of ``shape`` per run for each counter value: ``(*C, *shape, *R)``."""
    count = int(np.prod(shape)) if shape else 1
    counter = jnp.asarray(counter)
    bits = counter_bits(words, counter, count, stream)
    return _bits_to_normal(bits, dtype).reshape(counter.shape + tuple(shape) + run_shape(words))


def counter_uniforms(words: Array, counter, count: int, stream: int, dtype=jnp.float32) -> Array:
    """Uniforms in ``[0, 1)`` (23 random bits), shape ``(*C, count, *R)``."""
    bits = counter_bits(words, counter, count, stream)
    u = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0
    return u.astype(dtype)

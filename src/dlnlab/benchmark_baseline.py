"""A frozen copy of the steppers' inner operations as they were before the speed work of issue 15
(``dynamics._ops`` at commit e032d89), kept so ``dlnlab bench`` can measure today's steppers against
them in the same run (:class:`BaselineOnlineSGD`, :class:`BaselineAnisotropicLangevin`, at the
end of this module). Not used by any simulation; do not edit (it is the yardstick).

The original module docstring follows.

Linear algebra and random numbers on arrays with optional trailing run axes: the fast twin
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
from jax.extend.random import threefry2x32_p

from ._types import Array

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


def mv(a: Array, x: Array) -> Array:
    """``a @ x`` for a matrix ``(m, k, *R)`` and a vector ``(k, *R)``."""
    nd = max(a.ndim, x.ndim + 1)
    if nd == 2:
        return a @ x
    a, x = lift(a, nd), lift(x, nd - 1)
    return jnp.sum(a * x[None], axis=1)


def mtv(a: Array, x: Array) -> Array:
    """``a^T @ x`` for a matrix ``(m, k, *R)`` and a vector ``(m, *R)``."""
    nd = max(a.ndim, x.ndim + 1)
    if nd == 2:
        return a.T @ x
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
    out = [None] * len(weights)
    back = q                                            # A_l^T Q, starting at l = L
    for index in range(len(weights) - 1, -1, -1):
        right = rights[index]
        out[index] = back if right is None else mm(back, mT(right))
        if index > 0:
            back = mm(mT(weights[index]), back)
    return tuple(out)


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


def minibatch_updates(weights, x, y, lr):
    """SGD updates ``U_l = (eta / B) sum_i A_l^T e_i (B_l x_i)^T`` of one minibatch and its loss.

    ``x (d_in, B, *R)``, ``y (d_out, B, *R)``: forward activations, backward errors, one outer
    product per layer; the step is ``W_l - U_l``. With ``B = 1`` everything is a matrix-vector or
    outer product (written as such: 4x faster on CPU than the generic product with a unit axis).
    """
    batch = x.shape[1]
    if batch == 1:
        x, y = x[:, 0], y[:, 0]
        prod, prod_t, update = mv, mtv, outer
    else:
        prod = mm
        prod_t = lambda w, v: mm(mT(w), v)                    # noqa: E731
        update = lambda b, a: mm(b, mT(a))                    # noqa: E731
    acts = [x]
    for w in weights[:-1]:
        acts.append(prod(w, acts[-1]))
    err = prod(weights[-1], acts[-1]) - y                 # (d_out, [B,] *R)
    loss = 0.5 * jnp.sum(err * err, axis=(0, 1) if batch > 1 else 0) / batch
    back = err * (lr / batch)
    updates = [None] * len(weights)
    for index in range(len(weights) - 1, -1, -1):
        updates[index] = update(back, acts[index])
        if index > 0:
            back = prod_t(weights[index], back)
    return tuple(updates), loss


# ------------------------------------------------- the two steppers as they were (issue 15 yardstick)
def baseline_steppers():
    """``(BaselineOnlineSGD, BaselineAnisotropicLangevin)``: today's steppers with ``draw`` and
    ``apply`` as they were at commit e032d89 (the functions above), built on first use so this
    module imports nothing from :mod:`dlnlab.dynamics` at import time."""
    import dataclasses
    import math

    from .dynamics import AnisotropicLangevin, OnlineSGD
    from .dynamics.base import Info, State, cast, dtype_of
    from .dynamics.sgd import online_counts

    def online_batch(task, batch_size, z):
        b = batch_size
        n_x, _ = online_counts(task, b)
        prod = mm if b > 1 else (lambda m, u: mv(m, u[:, 0])[:, None])
        x = z[:n_x].reshape((task.d_in, b) + z.shape[1:])
        if not task.whitened:
            x = prod(task.input_sqrt, x)
        y = prod(task.teacher, x)
        if z.shape[0] > n_x:
            y = y + prod(task.label_sqrt, z[n_x:].reshape((task.d_out, b) + z.shape[1:]))
        return x, y

    @dataclasses.dataclass(frozen=True)
    class BaselineOnlineSGD(OnlineSGD):
        """Online SGD as it was before issue 15 (benchmark yardstick only)."""

        def draw(self, words, steps, dtype):
            return counter_normals(words, steps, (sum(online_counts(self.task, self.batch_size)),), dtype)

        def apply(self, words, z, state, hparams):
            x, y = online_batch(self.task, self.batch_size, z)
            updates, loss = minibatch_updates(state.weights, x, y,
                                              cast(hparams.learning_rate, dtype_of(state)))
            return State(subtract(state.weights, updates), state.step + 1), Info(loss)

    @dataclasses.dataclass(frozen=True)
    class BaselineAnisotropicLangevin(AnisotropicLangevin):
        """The anisotropic SDE (online, whitened or coloured) as it was before issue 15."""

        def draw(self, words, steps, dtype):
            total = sum(math.prod(s) for s in self.noise_shapes())
            return counter_normals(words, steps, (total,), dtype)

        def apply(self, words, z, state, hparams):
            dtype = dtype_of(state)
            task = self.task
            h = cast(self.time_step(hparams), dtype)
            scale = jnp.sqrt(h * cast(hparams.learning_rate, dtype) / cast(hparams.batch_size, dtype))
            weights = state.weights
            rights, end = prefix_products(weights)
            g, d, loss = error_and_loss(task, None, end)
            normals = self._split(z)
            noise = normals[0]
            gt = (noise + mT(noise)) * math.sqrt(0.5)
            if task.whitened:
                r = mm(d, gt)
                if task.label_covariance is not None:
                    r = r - mm(task.label_sqrt, normals[1])
            else:
                root = task.input_sqrt
                r = mm(mm(mm(d, root), gt), root)
                if task.label_covariance is not None:
                    r = r - mm(mm(task.label_sqrt, normals[1]), root)
            q = h * g + scale * r
            weights = subtract(weights, layer_maps(weights, rights, q))
            return State(weights, state.step + 1), Info(loss)

    return BaselineOnlineSGD, BaselineAnisotropicLangevin

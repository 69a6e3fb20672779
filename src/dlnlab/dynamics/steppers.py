"""One stepper per training dynamic, all with the contract ``step(key, state, hparams)``.

``step(key, state, hparams) -> (state, info)``:

- ``key``: the run's PRNG key (typed key array of shape ``R``, or raw words ``(2, *R)``). It is
  the same at every step: the step's randomness is the counter-based stream
  ``threefry(key; state.step, ...)`` (see :mod:`._ops`), so step ``n`` of run ``i`` draws the same
  numbers however the steps are chunked, batched or resumed.
- ``state``: :class:`State` -- weights ``W_l`` of shape ``(d_l, d_{l-1}, *R)`` (runs on the
  trailing axes; ``R = ()`` for a single run), the step counter, and stepper-specific extras.
- ``hparams``: :class:`Hyperparameters`, numeric leaves (scalars, or arrays of shape ``R`` for
  sweeps over runs).
- ``info``: :class:`Info`, diagnostics never fed back (the loss before the step).

Time: one step advances ``t`` by :meth:`Stepper.time_step` -- the learning rate for GD and SGD,
``step_size`` (``h``) for the SDEs and gradient flow (THEORY §1, §4).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import _validation as v
from ..core.task import Task
from ..theory import reduced as reduced_theory
from . import _ops as ops

Array = jax.Array


class Hyperparameters(NamedTuple):
    """Numeric settings of a step. Any leaf may be an array of shape ``R`` (one value per run).

    - ``learning_rate`` ``eta``: GD/SGD step; sets the SDE noise scale ``eta / B``.
    - ``batch_size`` ``B`` as a number: the SDE noise scale ``eta / B`` (SGD steppers draw their
      static ``Stepper.batch_size`` samples; the engine keeps the two equal).
    - ``step_size`` ``h`` of the SDE / ODE steppers (``None``: equal to ``learning_rate``).
    - ``temperature`` ``T`` of isotropic Langevin.
    """
    learning_rate: Any
    batch_size: Any = 1.0
    step_size: Any = None
    temperature: Any = 0.0


class State(NamedTuple):
    """``weights``: tuple of ``(d_l, d_{l-1}, *R)`` arrays (the reduced SDE: ``((r, *R),)``
    amplitudes); ``step``: int32 steps taken; ``extra``: stepper-specific (offline SGD without
    replacement: the epoch's permutation ``(n, *R)``), else ``None``."""
    weights: tuple
    step: Array
    extra: Any = None


class Info(NamedTuple):
    """``loss`` ``(*R)``: training loss before the step (SGD: the minibatch loss)."""
    loss: Array


def _cast(value, dtype):
    return jnp.asarray(value, dtype)


# ------------------------------------------------------------------ shared linear algebra
def _prefix_products(weights):
    """``B_l = W_{l-1} ... W_1`` (``None`` for the identity ``B_1``) and ``W = B_{L+1}``."""
    rights = [None]
    for w in weights[:-1]:
        rights.append(w if rights[-1] is None else ops.mm(w, rights[-1]))
    end = weights[-1] if rights[-1] is None else ops.mm(weights[-1], rights[-1])
    return rights, end


def _layer_maps(weights, rights, q):
    """``(A_l^T Q B_l^T)_l`` for a ``(d_out, d_in, *R)`` matrix ``Q``: one backward sweep."""
    out = [None] * len(weights)
    back = q                                            # A_l^T Q, starting at l = L
    for index in range(len(weights) - 1, -1, -1):
        right = rights[index]
        out[index] = back if right is None else ops.mm(back, ops.mT(right))
        if index > 0:
            back = ops.mm(ops.mT(weights[index]), back)
    return tuple(out)


def _data_moments(task: Task):
    x, y = task.data
    n = x.shape[0]
    return x.T @ x / n, y.T @ x / n, jnp.sum(y * y) / n


def _error_and_loss(task: Task, moments, end):
    """Error matrix ``G`` (gradient ``A^T G B^T``) and the training loss per run."""
    if moments is None:
        d = end - ops._lift(task.teacher, end.ndim)
        g = d if task.whitened else ops.mm(d, task.input_covariance)
        noise = 0.0 if task.label_covariance is None else 0.5 * jnp.trace(task.label_covariance)
        return g, d, 0.5 * jnp.sum(g * d, axis=(0, 1)) + noise
    sxx, syx, syy = moments
    ws = ops.mm(end, sxx)
    syx_l = ops._lift(syx, end.ndim)
    loss = 0.5 * jnp.sum(ws * end, axis=(0, 1)) - jnp.sum(syx_l * end, axis=(0, 1)) + 0.5 * syy
    return ws - syx_l, None, loss


def _sub(weights, updates):
    return tuple(w - u for w, u in zip(weights, updates, strict=True))


# -------------------------------------------------------------------------------- steppers
@dataclasses.dataclass(frozen=True)
class Stepper:
    """Base class: a static configuration plus the task (a pytree leaf set).

    Subclasses implement :meth:`step`. Instances are pytrees (the task is data, the rest is
    static), so ``jax.jit`` recompiles only when the structure changes.
    """
    task: Task
    name = "stepper"
    uses_step_size = False

    def init(self, weights) -> State:
        """Initial :class:`State` from weights ``(d_l, d_{l-1}, *R)``."""
        weights = tuple(jnp.asarray(w) for w in weights)
        return State(weights, jnp.zeros((), jnp.int32), self._init_extra(weights))

    def _init_extra(self, weights):
        return None

    def time_step(self, hparams: Hyperparameters):
        """Continuous time per step: ``h`` for SDE/ODE steppers, else the learning rate."""
        if self.uses_step_size and hparams.step_size is not None:
            return hparams.step_size
        return hparams.learning_rate

    def draw(self, words, steps, dtype):
        """The randomness of the steps with counters ``steps`` (shape ``C``), drawn in one call:
        a pytree with leading axes ``C`` (``None`` for deterministic steppers). The engine draws
        a block of steps at once (PERF-NOTES: 3x faster than drawing inside the loop body)."""
        return None

    def apply(self, words, noise, state: State, hparams: Hyperparameters):
        """The step given its drawn randomness ``noise`` (one step's slice of :meth:`draw`)."""
        raise NotImplementedError

    def step(self, key, state: State, hparams: Hyperparameters):
        """``step(key, state, hparams) -> (state, info)``: the contract (module docstring)."""
        words = ops.key_words(key)
        return self.apply(words, self.draw(words, state.step, _dtype(state)), state, hparams)

    def gradient_and_loss(self, weights):
        """Full training gradient (population online, empirical offline) and loss."""
        rights, end = _prefix_products(weights)
        g, _, loss = _error_and_loss(self.task, self._moments(), end)
        return _layer_maps(weights, rights, g), loss

    def _moments(self):
        return None if self.task.online else _data_moments(self.task)

    def tree_flatten(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        task = fields.pop("task")
        return (task,), tuple(sorted(fields.items()))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], **dict(aux))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node_class(cls)


def _dtype(state: State):
    return state.weights[0].dtype


@dataclasses.dataclass(frozen=True)
class GradientDescent(Stepper):
    """``theta <- theta - eta grad L``: the population gradient online, the full data set offline."""
    name = "gd"

    def apply(self, words, noise, state, hparams):
        dtype = _dtype(state)
        grads, loss = self.gradient_and_loss(state.weights)
        lr = _cast(hparams.learning_rate, dtype)
        weights = _sub(state.weights, tuple(lr * g for g in grads))
        return State(weights, state.step + 1, state.extra), Info(loss)


@dataclasses.dataclass(frozen=True)
class GradientFlow(Stepper):
    """``d theta/dt = -grad L`` integrated by classical RK4 with step ``h`` (``step_size``)."""
    name = "gf"
    uses_step_size = True

    def apply(self, words, noise, state, hparams):
        dtype = _dtype(state)
        h = _cast(self.time_step(hparams), dtype)
        w0 = state.weights
        k1, loss = self.gradient_and_loss(w0)

        def shifted(k, c):
            return tuple(w - c * h * g for w, g in zip(w0, k, strict=True))

        k2, _ = self.gradient_and_loss(shifted(k1, 0.5))
        k3, _ = self.gradient_and_loss(shifted(k2, 0.5))
        k4, _ = self.gradient_and_loss(shifted(k3, 1.0))
        weights = tuple(w - (h / 6) * (a + 2 * b + 2 * c + d)
                        for w, a, b, c, d in zip(w0, k1, k2, k3, k4, strict=True))
        return State(weights, state.step + 1, state.extra), Info(loss)


def _sgd_update(weights, x, y, lr):
    """One minibatch SGD update from inputs ``x (d_in, B, *R)``, targets ``y (d_out, B, *R)``.

    Forward activations, backward errors, one outer-product update per layer; with ``B = 1``
    everything is a matrix-vector or outer product (written as such: 4x faster on CPU than the
    generic product with a unit axis).
    """
    batch = x.shape[1]
    if batch == 1:
        x, y = x[:, 0], y[:, 0]
        prod, prod_t, update = ops.mv, ops.mtv, ops.outer
    else:
        prod = ops.mm
        prod_t = lambda w, v: ops.mm(ops.mT(w), v)                    # noqa: E731
        update = lambda b, a: ops.mm(b, ops.mT(a))                    # noqa: E731
    acts = [x]
    for w in weights[:-1]:
        acts.append(prod(w, acts[-1]))
    err = prod(weights[-1], acts[-1]) - y                 # (d_out, [B,] *R)
    loss = 0.5 * jnp.sum(err * err, axis=(0, 1) if batch > 1 else 0) / batch
    back = err * (lr / batch)
    new = [None] * len(weights)
    for index in range(len(weights) - 1, -1, -1):
        new[index] = weights[index] - update(back, acts[index])
        if index > 0:
            back = prod_t(weights[index], back)
    return tuple(new), loss


@dataclasses.dataclass(frozen=True)
class OnlineSGD(Stepper):
    """``theta <- theta - eta mean_{i<=B} g(x_i, eps_i)`` with fresh ``x ~ N(0, S_x)`` each step."""
    batch_size: int = 1
    name = "sgd"

    def __post_init__(self):
        v.positive_int("batch_size", self.batch_size)
        if not self.task.online:
            v.fail("task.data", "a data set", "online SGD needs an online task (use OfflineSGD)")

    def _counts(self):
        task, b = self.task, self.batch_size
        return task.d_in * b, (task.d_out * b if task.label_covariance is not None else 0)

    def draw(self, words, steps, dtype):
        return ops.counter_normals(words, steps, (sum(self._counts()),), dtype)

    def apply(self, words, z, state, hparams):
        dtype = _dtype(state)
        task, b = self.task, self.batch_size
        n_x, n_e = self._counts()
        # Unbatched (d, d) maps applied to (d, B, *R) samples; B = 1 as matrix-vector products.
        prod = ops.mm if b > 1 else (lambda m, u: ops.mv(m, u[:, 0])[:, None])
        x = z[:n_x].reshape((task.d_in, b) + z.shape[1:])
        if not task.whitened:
            x = prod(task.input_sqrt, x)
        y = prod(task.teacher, x)
        if n_e:
            y = y + prod(task.label_sqrt, z[n_x:].reshape((task.d_out, b) + z.shape[1:]))
        weights, loss = _sgd_update(state.weights, x, y, _cast(hparams.learning_rate, dtype))
        return State(weights, state.step + 1, state.extra), Info(loss)


@dataclasses.dataclass(frozen=True)
class OfflineSGD(Stepper):
    """Minibatches from ``task.data``: with replacement (i.i.d. indices) or without (epochs of
    ``floor(n / B)`` batches from a fresh permutation; a remainder of ``n mod B`` samples is
    skipped each epoch)."""
    batch_size: int = 1
    replacement: bool = True
    name = "offline_sgd"

    def __post_init__(self):
        v.positive_int("batch_size", self.batch_size)
        if self.task.online:
            v.fail("task.data", None, "offline SGD needs a data set (use task.with_data)")
        n = self.task.data.num_samples
        if not self.replacement and self.batch_size > n:
            v.fail("batch_size", self.batch_size,
                   f"must be <= the data set size n={n} without replacement")

    def _init_extra(self, weights):
        if self.replacement:
            return None
        runs = weights[0].shape[2:]
        return jnp.zeros((self.task.data.num_samples,) + runs, jnp.int32)

    def draw(self, words, steps, dtype):
        if not self.replacement:
            return None      # the epoch's permutation is drawn inside apply, once per epoch
        return ops.counter_uniforms(words, steps, self.batch_size, stream=1)

    def apply(self, words, u, state, hparams):
        dtype = _dtype(state)
        data, b = self.task.data, self.batch_size
        n = data.num_samples
        if self.replacement:
            index = jnp.minimum((u * n).astype(jnp.int32), n - 1)          # (B, *R)
            extra = state.extra
        else:
            per_epoch = n // b
            epoch, position = state.step // per_epoch, state.step % per_epoch

            def shuffle(_):
                keys = ops.counter_uniforms(words, epoch, n, stream=2)
                return jnp.argsort(keys, axis=0).astype(jnp.int32)

            extra = jax.lax.cond(position == 0, shuffle, lambda _: state.extra, None)
            index = jax.lax.dynamic_slice_in_dim(extra, position * b, b, axis=0)
        x = jnp.moveaxis(data.inputs[index], -1, 0)                        # (d_in, B, *R)
        y = jnp.moveaxis(data.targets[index], -1, 0)
        weights, loss = _sgd_update(state.weights, x.astype(dtype), y.astype(dtype),
                                    _cast(hparams.learning_rate, dtype))
        return State(weights, state.step + 1, extra), Info(loss)


@dataclasses.dataclass(frozen=True)
class AnisotropicLangevin(Stepper):
    """Euler-Maruyama for ``d theta = -grad L dt + sqrt(eta/B) Sigma^{1/2} dW`` (paper eq. 1).

    ``theta <- theta - h grad L + sqrt(eta/B) xi(dW)`` with the exact structured noise map
    ``xi_l = A_l^T R~(dW) B_l^T`` (THEORY §3.1 online, §3.2 offline), linear in the Brownian
    increment ``dW`` of the standard normals. ``path_substeps = m``: the increment of one step is
    the sum of ``m`` increments of a fine grid ``h / m`` (counters ``n m .. n m + m - 1``), so
    runs with ``(h, m)`` and ``(h / 2, m / 2)`` follow the same Brownian path (convergence
    studies). ``replacement`` picks the offline batch factor.
    """
    path_substeps: int = 1
    replacement: bool = True
    name = "sde"
    uses_step_size = True

    def __post_init__(self):
        v.positive_int("path_substeps", self.path_substeps)

    def noise_shapes(self):
        task = self.task
        if not task.online:
            return ((task.data.num_samples,),)
        shapes = [(task.d_in, task.d_in)]
        if task.label_covariance is not None:
            shapes.append((task.d_out, task.d_in))
        return tuple(shapes)

    def draw(self, words, steps, dtype):
        """Brownian increments of the steps in units of ``sqrt(h)``: standard normals."""
        total = sum(math.prod(s) for s in self.noise_shapes())
        m = self.path_substeps
        if m == 1:
            return ops.counter_normals(words, steps, (total,), dtype)
        steps = jnp.asarray(steps)
        fine = steps[..., None] * m + jnp.arange(m, dtype=steps.dtype)
        z = jnp.sum(ops.counter_normals(words, fine, (total,), dtype), axis=steps.ndim)
        return z / math.sqrt(m)

    def _split(self, z):
        sizes = [math.prod(s) for s in self.noise_shapes()]
        out, offset = [], 0
        for shape, size in zip(self.noise_shapes(), sizes, strict=True):
            out.append(z[offset:offset + size].reshape(shape + z.shape[1:]))
            offset += size
        return out

    def _batch_factor(self, hparams, dtype):
        b = _cast(hparams.batch_size, dtype)
        if self.task.online or self.replacement:
            return 1.0 / b
        n = self.task.data.num_samples
        return (n - b) / (b * (n - 1))

    def apply(self, words, z, state, hparams):
        dtype = _dtype(state)
        task = self.task
        h = _cast(self.time_step(hparams), dtype)
        scale = jnp.sqrt(h * _cast(hparams.learning_rate, dtype) * self._batch_factor(hparams, dtype))
        weights = state.weights
        rights, end = _prefix_products(weights)
        moments = self._moments()
        g, d, loss = _error_and_loss(task, moments, end)
        normals = self._split(z)
        if task.online:
            z = normals[0]
            gt = (z + ops.mT(z)) * math.sqrt(0.5)
            if task.whitened:
                r = ops.mm(d, gt)
                if task.label_covariance is not None:
                    r = r - ops.mm(task.label_sqrt, normals[1])
            else:
                root = task.input_sqrt
                r = ops.mm(ops.mm(ops.mm(d, root), gt), root)
                if task.label_covariance is not None:
                    r = r - ops.mm(ops.mm(task.label_sqrt, normals[1]), root)
        else:
            w = normals[0]                                        # (n, *R)
            x, y = task.data
            residual = ops.mm(end, x.T) - ops._lift(y.T, end.ndim)     # (d_out, n, *R)
            r = (ops.mm(residual * w[None], x) - jnp.sum(w, axis=0) * g)
            r = r / math.sqrt(task.data.num_samples)
        q = h * g + scale * r
        weights = _sub(weights, _layer_maps(weights, rights, q))
        return State(weights, state.step + 1, state.extra), Info(loss)


@dataclasses.dataclass(frozen=True)
class IsotropicLangevin(Stepper):
    """Euler-Maruyama for ``d theta = -grad L dt + sqrt(2 T) dW``:
    ``theta <- theta - h grad L + sqrt(2 T h) z`` (``T`` = ``hparams.temperature``)."""
    widths: tuple = ()
    name = "isotropic"
    uses_step_size = True

    def __post_init__(self):
        if len(self.widths) < 2 or self.widths[0] != self.task.d_in or self.widths[-1] != self.task.d_out:
            v.fail("widths", self.widths,
                   f"must be (d_in={self.task.d_in}, ..., d_out={self.task.d_out}): the noise "
                   "has one normal per weight")

    def draw(self, words, steps, dtype):
        size = sum(w_out * w_in for w_in, w_out in zip(self.widths[:-1], self.widths[1:], strict=True))
        return ops.counter_normals(words, steps, (size,), dtype)

    def apply(self, words, z, state, hparams):
        dtype = _dtype(state)
        h = _cast(self.time_step(hparams), dtype)
        scale = jnp.sqrt(2 * _cast(hparams.temperature, dtype) * h)
        grads, loss = self.gradient_and_loss(state.weights)
        sizes = [w.shape[0] * w.shape[1] for w in state.weights]
        new, offset = [], 0
        for w, g, size in zip(state.weights, grads, sizes, strict=True):
            noise = z[offset:offset + size].reshape(w.shape)
            new.append(w - h * g + scale * noise)
            offset += size
        return State(tuple(new), state.step + 1, state.extra), Info(loss)


@dataclasses.dataclass(frozen=True)
class ReducedSDE(Stepper):
    """Euler-Maruyama for the modewise SDE at aligned, balanced weights (THEORY §6):
    ``a <- a + h (mu_GF + mu_Ito) + sqrt(h D(a)) z``, one scalar SDE per mode.

    State weights: ``(amplitudes,)`` of shape ``(r, *R)``. ``coupled=False`` drops the
    cross-mode Ito coupling (the paper's decoupled form). Whitened inputs, isotropic label
    noise only (the closed forms assume them).
    """
    depth: int = 2
    coupled: bool = True
    name = "reduced"
    uses_step_size = True

    def __post_init__(self):
        v.positive_int("depth", self.depth)
        if not self.task.whitened:
            v.fail("task.input_covariance", "non-identity", "the reduced SDE needs whitened inputs")
        if not self.task.online:
            v.fail("task.data", "a data set", "the reduced SDE models online SGD")
        _ = self.task.label_noise_std  # raises (one line) for anisotropic label noise

    def init(self, amplitudes) -> State:
        if isinstance(amplitudes, tuple | list):
            (amplitudes,) = amplitudes
        return State((jnp.asarray(amplitudes),), jnp.zeros((), jnp.int32), None)

    def _sigma(self):
        return self.task.label_noise_std

    def draw(self, words, steps, dtype):
        return ops.counter_normals(words, steps, (self.task.spectrum.shape[0],), dtype)

    def apply(self, words, noise, state, hparams):
        (a,) = state.weights
        dtype = a.dtype
        h = _cast(self.time_step(hparams), dtype)
        lr, b = _cast(hparams.learning_rate, dtype), _cast(hparams.batch_size, dtype)
        s = self.task.spectrum.astype(dtype)
        runs = a.ndim - 1
        lr_r, b_r = (jnp.expand_dims(x, -1) if x.ndim and runs else x for x in (lr, b))
        h_r = jnp.expand_dims(h, -1) if h.ndim and runs else h
        amp = jnp.moveaxis(a, 0, -1)                              # (*R, r) for the theory
        drift = reduced_theory.reduced_drift(amp, s, self.depth, lr_r, b_r, self._sigma(),
                                             self.coupled)
        diffusion = reduced_theory.reduced_diffusion(amp, s, self.depth, lr_r, b_r, self._sigma())
        z = jnp.moveaxis(noise, 0, -1)
        new = amp + h_r * drift + jnp.sqrt(h_r * jnp.maximum(diffusion, 0.0)) * z
        loss = 0.5 * jnp.sum((s - amp) ** 2, axis=-1) + 0.5 * self.task.d_out * self._sigma() ** 2
        return State((jnp.moveaxis(new, -1, 0),), state.step + 1, None), Info(loss)


METHODS: dict[str, type[Stepper]] = {
    "gd": GradientDescent,
    "gf": GradientFlow,
    "sgd": OnlineSGD,
    "offline_sgd": OfflineSGD,
    "sde": AnisotropicLangevin,
    "isotropic": IsotropicLangevin,
    "reduced": ReducedSDE,
}

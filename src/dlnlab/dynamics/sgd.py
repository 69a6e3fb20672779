"""Online and offline minibatch SGD: ``theta <- theta - eta mean_{i<=B} g(x_i, y_i)``.

The minibatch samplers (:func:`online_batch`, :func:`offline_batch`) are shared with the
momentum family (:mod:`.momentum`), so a method with the same key draws the same samples.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from . import _ops as ops
from . import kernels
from .base import Hyperparameters, Info, State, Stepper, cast, dtype_of
from .method import ConformanceCase, Method, MethodSettings


class EpochState(NamedTuple):
    """Offline SGD without replacement: ``permutation`` ``(n, *R)`` int32 is the current epoch's
    order of the data set (redrawn at the first step of each epoch)."""
    weights: tuple
    step: Array
    permutation: Array


def online_counts(task, batch_size: int) -> tuple[int, int]:
    """Normals per step: inputs ``d_in B`` and label noise ``d_out B`` (0 without it)."""
    return task.d_in * batch_size, (task.d_out * batch_size if task.label_covariance is not None
                                     else 0)


def online_draw(task, batch_size: int, words, steps, dtype):
    return ops.counter_normals(words, steps, (sum(online_counts(task, batch_size)),), dtype)


def online_batch(task, batch_size: int, z):
    """Inputs ``x (d_in, B, *R)`` and targets ``y (d_out, B, *R)`` from one step's normals."""
    b = batch_size
    n_x, n_e = online_counts(task, b)
    # Unbatched (d, d) maps applied to (d, B, *R) samples; B = 1 as matrix-vector products, and
    # fewer than DOT_MIN_COLUMNS columns as multiply-and-sum (_ops.minibatch_updates).
    if b == 1:
        prod = lambda m, u: ops.mv(m, u[:, 0])[:, None]       # noqa: E731
    else:
        prod = ops.columns_product(b, plain=z.ndim == 1)
    x = z[:n_x].reshape((task.d_in, b) + z.shape[1:])
    if not task.whitened:
        x = prod(task.input_sqrt, x)
    y = prod(task.teacher, x)
    if n_e:
        y = y + prod(task.label_sqrt, z[n_x:].reshape((task.d_out, b) + z.shape[1:]))
    return x, y


def check_offline(task, batch_size: int, replacement: bool) -> None:
    if task.online:
        v.fail("task.data", None, "offline SGD needs a data set (use task.with_data)")
    n = task.data.num_samples
    if not replacement and batch_size > n:
        v.fail("batch_size", batch_size, f"must be <= the data set size n={n} without replacement")


def offline_draw(batch_size: int, replacement: bool, words, steps):
    if not replacement:
        return None      # the epoch's permutation is drawn inside apply, once per epoch
    return ops.counter_uniforms(words, steps, batch_size, stream=1)


def initial_permutation(task, weights):
    runs = weights[0].shape[2:]
    return jnp.zeros((task.data.num_samples,) + runs, jnp.int32)


def offline_batch(task, batch_size: int, replacement: bool, words, u, step, permutation, dtype):
    """``(x, y, permutation)``: a minibatch of the data set, with replacement (i.i.d. indices
    from the uniforms ``u``) or without (the epoch's permutation, redrawn at its first step)."""
    data, b = task.data, batch_size
    n = data.num_samples
    if replacement:
        index = jnp.minimum((u * n).astype(jnp.int32), n - 1)          # (B, *R)
    else:
        per_epoch = n // b
        epoch, position = step // per_epoch, step % per_epoch

        def shuffle(_):
            keys = ops.counter_uniforms(words, epoch, n, stream=2)
            return jnp.argsort(keys, axis=0).astype(jnp.int32)

        permutation = jax.lax.cond(position == 0, shuffle, lambda _: permutation, None)
        index = jax.lax.dynamic_slice_in_dim(permutation, position * b, b, axis=0)
    x = jnp.moveaxis(data.inputs[index], -1, 0)                        # (d_in, B, *R)
    y = jnp.moveaxis(data.targets[index], -1, 0)
    return x.astype(dtype), y.astype(dtype), permutation


@dataclasses.dataclass(frozen=True)
class OnlineSGD(Stepper):
    """``theta <- theta - eta mean_{i<=B} g(x_i, eps_i)`` with fresh ``x ~ N(0, S_x)`` each step."""
    batch_size: int = 1
    name: ClassVar[str] = "sgd"
    batched_from_width: ClassVar[int | None] = 32
    reports_minibatch_loss: ClassVar[bool] = True

    def __post_init__(self):
        v.positive_int("batch_size", self.batch_size)
        if not self.task.online:
            v.fail("task.data", "a data set", "online SGD needs an online task (use OfflineSGD)")

    def draw(self, words, steps, dtype):
        return online_draw(self.task, self.batch_size, words, steps, dtype)

    def block_kernel(self, shapes, dtype):
        """:func:`dlnlab.dynamics.kernels.online_sgd_block` where it takes the network (widths
        and batch size at most 32, float32 or float64, the compiled module built); never for a
        subclass (the kernel computes this class's own step and state)."""
        if type(self) is not OnlineSGD or not kernels.online_sgd_supports(
                self.task, self.batch_size, shapes, dtype):
            return None

        def kernel(words, state, hparams, first_step, valid_steps, threshold, diverged):
            weights, diverged = kernels.online_sgd_block(
                self.task, self.batch_size, state.weights, words,
                cast(hparams.learning_rate, dtype_of(state)), threshold, first_step, valid_steps,
                diverged)
            return State(weights, state.step + valid_steps), diverged
        return kernel

    def apply(self, words, z, state, hparams):
        x, y = online_batch(self.task, self.batch_size, z)
        updates, loss, weights = ops.minibatch_updates(state.weights, x, y,
                                                       cast(hparams.learning_rate, dtype_of(state)))
        return State(ops.subtract(weights, updates), state.step + 1), Info(loss)


@dataclasses.dataclass(frozen=True)
class OfflineSGD(Stepper):
    """Minibatches from ``task.data``: with replacement (i.i.d. indices) or without (epochs of
    ``floor(n / B)`` batches from a fresh permutation; a remainder of ``n mod B`` samples is
    skipped each epoch). State: :class:`~dlnlab.dynamics.base.State` with replacement,
    :class:`EpochState` without."""
    batch_size: int = 1
    name: ClassVar[str] = "offline_sgd"
    batched_from_width: ClassVar[int | None] = 32
    reports_minibatch_loss: ClassVar[bool] = True

    def __post_init__(self):
        v.positive_int("batch_size", self.batch_size)
        check_offline(self.task, self.batch_size, self.replacement)

    def init(self, weights):
        state = super().init(weights)
        if self.replacement:
            return state
        return EpochState(state.weights, state.step, initial_permutation(self.task, state.weights))

    def draw(self, words, steps, dtype):
        return offline_draw(self.batch_size, self.replacement, words, steps)

    def apply(self, words, u, state, hparams):
        dtype = dtype_of(state)
        permutation = None if self.replacement else state.permutation
        x, y, permutation = offline_batch(self.task, self.batch_size, self.replacement, words, u,
                                          state.step, permutation, dtype)
        updates, loss, weights = ops.minibatch_updates(state.weights, x, y,
                                                       cast(hparams.learning_rate, dtype))
        weights = ops.subtract(weights, updates)
        if self.replacement:
            return State(weights, state.step + 1), Info(loss)
        return EpochState(weights, state.step + 1, permutation), Info(loss)


# ------------------------------------------------------------------------ registry record
def _build_sgd(task, settings: MethodSettings):
    if task.online:
        return OnlineSGD(task, batch_size=settings.batch_size, replacement=settings.replacement)
    return OfflineSGD(task, batch_size=settings.batch_size, replacement=settings.replacement)


def _sgd_hyperparameters(settings: MethodSettings, prepared: dict) -> Hyperparameters:
    return Hyperparameters(settings.learning_rate, float(settings.batch_size))


SGD = Method(
    name="sgd", label="SGD", colour="tab:orange", build=_build_sgd, minibatch=True,
    hyperparameters=_sgd_hyperparameters,
    conformance=(
        ConformanceCase("sgd_b1", "white", lambda t: OnlineSGD(t, batch_size=1),
                        dict(learning_rate=0.1)),
        ConformanceCase("sgd_b3_noise", "white_noise", lambda t: OnlineSGD(t, batch_size=3),
                        dict(learning_rate=0.1, batch_size=3.0)),
        ConformanceCase("sgd_b1_colored_noise", "colored_noise",
                        lambda t: OnlineSGD(t, batch_size=1), dict(learning_rate=0.1)),
        ConformanceCase("sgd_b3_colored", "colored", lambda t: OnlineSGD(t, batch_size=3),
                        dict(learning_rate=0.1, batch_size=3.0)),
        ConformanceCase("offline_sgd_replacement", "offline",
                        lambda t: OfflineSGD(t, batch_size=2),
                        dict(learning_rate=0.1, batch_size=2.0)),
        ConformanceCase("offline_sgd_epochs", "offline",
                        lambda t: OfflineSGD(t, batch_size=2, replacement=False),
                        dict(learning_rate=0.1, batch_size=2.0)),
    ))

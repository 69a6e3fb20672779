"""Losses and gradients (docs/theory.md §1-§2, paper Prop. 3.1).

Per-sample loss ``l = 0.5 ||W x - y||^2``; population loss
``L = 0.5 tr(D S_x D^T) + 0.5 tr(S_eps)`` with ``D = W - M``; empirical loss
``L_n = (1/2n) sum_i ||W x_i - y_i||^2``. Gradients of layer l all have the form
``A_l^T G B_l^T`` with the *error matrix* ``G`` (``D S_x`` online, ``W S_xx - S_yx`` offline,
``(W x - y) x^T`` for one sample).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from .products import end_to_end, partial_products
from .task import Task


def error(weights, task: Task) -> Array:
    """``D = W - M``, shape ``(d_out, d_in)``."""
    v.check_weights(weights, task.d_in, task.d_out)
    return end_to_end(weights) - task.teacher


def population_loss(weights, task: Task) -> Array:
    """``0.5 tr(D S_x D^T) + 0.5 tr(S_eps)`` (the test loss, whatever the regime)."""
    d = error(weights, task)
    fit = jnp.sum(d * d) if task.whitened else jnp.sum((d @ task.input_covariance) * d)
    noise = 0.0 if task.label_covariance is None else jnp.trace(task.label_covariance)
    return 0.5 * fit + 0.5 * noise


def empirical_loss(weights, task: Task) -> Array:
    """``(1/2n) sum_i ||W x_i - y_i||^2`` on ``task.data``."""
    v.check_weights(weights, task.d_in, task.d_out)
    _require_data(task)
    x, y = task.data
    residual = x @ end_to_end(weights).T - y
    return 0.5 * jnp.mean(jnp.sum(residual * residual, axis=1))


def training_loss(weights, task: Task) -> Array:
    """The objective being trained: population loss online, empirical loss offline."""
    return population_loss(weights, task) if task.online else empirical_loss(weights, task)


def data_moments(task: Task) -> tuple[Array, Array]:
    """``(S_xx, S_yx) = (X^T X / n, Y^T X / n)`` of the attached data set."""
    _require_data(task)
    x, y = task.data
    n = x.shape[0]
    return x.T @ x / n, y.T @ x / n


def error_matrix(weights, task: Task) -> Array:
    """``G`` with ``grad_{W_l} = A_l^T G B_l^T``: ``D S_x`` online, ``W S_xx - S_yx`` offline."""
    v.check_weights(weights, task.d_in, task.d_out)
    if task.online:
        d = error(weights, task)
        return d if task.whitened else d @ task.input_covariance
    sxx, syx = data_moments(task)
    return end_to_end(weights) @ sxx - syx


def layer_gradients(weights, g: Array) -> tuple[Array, ...]:
    """``(A_l^T G B_l^T)_l`` for an error matrix ``G`` (``d_out x d_in``)."""
    lefts, rights = partial_products(weights)
    return tuple(a.T @ g @ b.T for a, b in zip(lefts, rights, strict=True))


def gradient(weights, task: Task) -> tuple[Array, ...]:
    """Gradient of the training loss: ``A_l^T D S_x B_l^T`` online (Prop. 3.1), empirical offline."""
    return layer_gradients(weights, error_matrix(weights, task))


def population_gradient(weights, task: Task) -> tuple[Array, ...]:
    """``A_l^T D S_x B_l^T`` whatever the regime."""
    return gradient(weights, task.online_task())


def per_sample_gradients(weights, inputs: Array, targets: Array) -> tuple[Array, ...]:
    """Per-sample gradients ``A_l^T (W x_i - y_i) x_i^T B_l^T``, each with a leading ``n`` axis.

    ``inputs (n, d_in)``, ``targets (n, d_out)``; result ``(n, d_l, d_{l-1})`` per layer.
    """
    v.check_weights(weights)
    lefts, rights = partial_products(weights)
    residual = inputs @ end_to_end(weights).T - targets           # (n, d_out)
    return tuple(
        jnp.einsum("ni,nj->nij", residual @ a, inputs @ b.T)      # (A^T e)(B x)^T
        for a, b in zip(lefts, rights, strict=True)
    )


def minibatch_gradient(weights, inputs: Array, targets: Array) -> tuple[Array, ...]:
    """Mean gradient over a batch: ``A_l^T (W S_xx^B - S_yx^B) B_l^T``; one product per layer."""
    v.check_weights(weights)
    n = inputs.shape[0]
    g = (inputs @ end_to_end(weights).T - targets).T @ inputs / n
    return layer_gradients(weights, g)


def sample_data_batch(key, task: Task, batch_size: int, replacement: bool = True):
    """A minibatch drawn from ``task.data``: ``(inputs, targets)``, with or without replacement."""
    _require_data(task)
    n = task.data.num_samples
    if v.is_concrete(batch_size):
        v.positive_int("batch_size", batch_size)
        if not replacement and batch_size > n:
            v.fail("batch_size", batch_size,
                   f"must be <= the data set size n={n} when sampling without replacement")
    if replacement:
        index = jax.random.randint(key, (batch_size,), 0, n)
    else:
        index = jax.random.permutation(key, n)[:batch_size]
    return task.data.inputs[index], task.data.targets[index]


def _require_data(task: Task) -> None:
    if task.data is None:
        v.fail("task.data", None, "this quantity needs an offline task (use task.with_data)")

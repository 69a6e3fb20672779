"""The squared-error loss of a deep linear network through data moments (docs/llc.md, "Loss").

For a linear end-to-end map ``W = W_L ... W_1`` (shape ``(d_out, d_in)``) the per-sample loss
``0.5 ||W x - y||^2`` averaged over any set of samples depends on the samples only through three
moments:

    L(W) = 0.5 tr(W S_xx W^T) - tr(W S_yx^T) + 0.5 t_yy,
    S_xx = E[x x^T] (d_in, d_in),  S_yx = E[y x^T] (d_out, d_in),  t_yy = E[||y||^2].

So the empirical loss of ``n`` samples, the loss of a minibatch and the population loss are the
same function with different moments. A :class:`LossModel` holds the moments of the whole data
set (or the population) and, for stochastic-gradient sampling, those of each minibatch of a fixed
random partition. This is the DLN-specific fast path of the learning-coefficient estimator: a
step costs ``O(L d^3)`` instead of ``O(batch size x number of parameters)``, and the loss of the
whole data set is exact at every step. The conventions are the project's (docs/theory.md §1): the
population loss is ``0.5 tr(D S_x D^T) + 0.5 tr(S_eps)`` with ``D = W - M``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from .._types import Array
from ..core.products import end_to_end


class LossModel(NamedTuple):
    """Moments defining a squared-error loss (a JAX pytree; see the module docstring).

    Attributes:
        input_moment: ``S_xx``, shape ``(d_in, d_in)`` (whole data set or population).
        cross_moment: ``S_yx``, shape ``(d_out, d_in)``.
        target_moment: ``t_yy = E||y||^2``, shape ``()``.
        batch_input_moments: ``(K, d_in, d_in)``, one per minibatch, or ``None`` (exact gradients).
        batch_cross_moments: ``(K, d_out, d_in)`` or ``None``.
        num_samples: ``n``, the number of samples the loss averages (for ``n beta = n / log n``);
            for the population loss, the sample size the posterior is meant to describe.
        batch_size: samples per minibatch, or ``None`` (exact gradients).
    """

    input_moment: Array
    cross_moment: Array
    target_moment: Array
    batch_input_moments: Array | None
    batch_cross_moments: Array | None
    num_samples: int
    batch_size: int | None = None

    @property
    def d_in(self) -> int:
        return int(self.input_moment.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.cross_moment.shape[0])

    @property
    def stochastic(self) -> bool:
        """True when the sampler uses minibatch gradients."""
        return self.batch_input_moments is not None

    @property
    def num_batches(self) -> int:
        return 0 if self.batch_input_moments is None else int(self.batch_input_moments.shape[0])


def moment_loss(product: Array, input_moment: Array, cross_moment: Array, target_moment: Array) -> Array:
    """``0.5 tr(W S_xx W^T) - tr(W S_yx^T) + 0.5 t_yy`` for an end-to-end map ``W``."""
    return (0.5 * jnp.sum((product @ input_moment) * product) - jnp.sum(product * cross_moment)
            + 0.5 * target_moment)


def loss(weights, model: LossModel) -> Array:
    """The whole-data (or population) loss of ``weights`` under ``model``, shape ``()``."""
    return moment_loss(end_to_end(weights), model.input_moment, model.cross_moment, model.target_moment)


def population_loss_model(teacher, input_covariance=None, label_covariance=None, *,
                          num_samples: int) -> LossModel:
    """The population loss ``0.5 tr(D S_x D^T) + 0.5 tr(S_eps)`` (exact gradients, no minibatches).

    Args:
        teacher: ``M``, shape ``(d_out, d_in)``.
        input_covariance: ``S_x = E[x x^T]``, shape ``(d_in, d_in)``; ``None`` means the identity.
        label_covariance: ``S_eps``, shape ``(d_out, d_out)``, or ``None`` (no label noise).
        num_samples: the sample size ``n`` the tempered posterior describes (``n beta`` defaults to
            ``n / log n``).

    Raises:
        ValueError: a non-finite teacher, a covariance that is not symmetric positive
            semi-definite or of the wrong size, ``num_samples < 2``.
    """
    teacher = jnp.asarray(teacher)
    if teacher.ndim != 2:
        v.fail("teacher", teacher, "must be a (d_out, d_in) matrix")
    v.finite_array("teacher", teacher)
    d_out, d_in = teacher.shape
    if input_covariance is None:
        input_covariance = jnp.eye(d_in, dtype=teacher.dtype)
    else:
        v.psd_matrix("input_covariance", input_covariance, d_in)
        input_covariance = jnp.asarray(input_covariance, dtype=teacher.dtype)
    noise = 0.0
    if label_covariance is not None:
        v.psd_matrix("label_covariance", label_covariance, d_out)
        noise = jnp.trace(jnp.asarray(label_covariance, dtype=teacher.dtype))
    num_samples = _num_samples(num_samples)
    cross = teacher @ input_covariance
    target = jnp.sum(cross * teacher) + noise
    return LossModel(input_covariance, cross, jnp.asarray(target, dtype=teacher.dtype), None, None,
                     num_samples)


def empirical_loss_model(inputs, targets, *, batch_size: int | None, key=None) -> LossModel:
    """The empirical loss ``(1/2n) sum_i ||W x_i - y_i||^2`` and its minibatches.

    With ``batch_size`` given, the samples are split by a random permutation (from ``key``) into
    ``K = n // batch_size`` minibatches of ``batch_size`` samples (the last ``n mod batch_size``
    samples of the permutation are in no minibatch but are in the whole-data loss); the sampler
    draws one minibatch per step, uniformly with replacement, so every minibatch gradient is an
    unbiased estimate of the whole-data gradient. ``batch_size=None`` gives exact gradients.

    Args:
        inputs: shape ``(n, d_in)``. targets: shape ``(n, d_out)``.
        batch_size: minibatch size, ``1 <= batch_size <= n``, or ``None``.
        key: PRNG key of the partition (needed when ``batch_size`` is given).

    Raises:
        ValueError: mismatched or non-finite data, a bad batch size, a missing key.
    """
    x = jnp.asarray(inputs)
    y = jnp.asarray(targets)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        v.fail("inputs", x, f"inputs (n, d_in) and targets (n, d_out) must have the same n; got "
                            f"{tuple(x.shape)} and {tuple(y.shape)}")
    v.finite_array("inputs", x)
    v.finite_array("targets", y)
    n = _num_samples(int(x.shape[0]))
    sxx, syx, tyy = x.T @ x / n, y.T @ x / n, jnp.sum(y * y) / n
    if batch_size is None:
        return LossModel(sxx, syx, tyy, None, None, n)
    if (isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
            or not 1 <= batch_size <= n):
        v.fail("batch_size", batch_size, f"must be an integer in [1, n = {n}] or None")
    if key is None:
        v.fail("key", key, "a PRNG key is needed to draw the minibatch partition")
    batches = n // int(batch_size)
    order = jax.random.permutation(key, n)[: batches * batch_size].reshape(batches, batch_size)
    xb, yb = x[order], y[order]
    batch_sxx = jnp.einsum("kbi,kbj->kij", xb, xb) / batch_size
    batch_syx = jnp.einsum("kbi,kbj->kij", yb, xb) / batch_size
    return LossModel(sxx, syx, tyy, batch_sxx, batch_syx, n, int(batch_size))


def task_loss_model(task, *, batch_size: int | None = None, key=None,
                    num_samples: int | None = None) -> LossModel:
    """The training loss of a :class:`dlnlab.core.task.Task`: empirical on its data set when it has
    one (minibatches of ``batch_size``), else the population loss with ``num_samples`` as ``n``.

    Raises:
        ValueError: an online task without ``num_samples``.
    """
    if task.data is not None:
        return empirical_loss_model(task.data.inputs, task.data.targets, batch_size=batch_size, key=key)
    if num_samples is None:
        v.fail("num_samples", num_samples, "the population loss needs the sample size n of the "
                                            "posterior (n beta defaults to n / log n)")
    return population_loss_model(task.teacher, None if task.whitened else task.input_covariance,
                                 task.label_covariance, num_samples=num_samples)


def _num_samples(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        v.fail("num_samples", n, "must be an integer >= 2")
    return int(n)

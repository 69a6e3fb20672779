"""SGD with heavy-ball momentum (Polyak), online and offline.

``v <- mu v - eta mean_{i<=B} g(x_i, y_i)``, ``theta <- theta + v``, with ``v(0) = 0`` and the
momentum ``mu`` in ``[0, 1)``. The minibatches are those of :mod:`.sgd` (same key, same samples),
so momentum 0 is plain SGD bit for bit, and a full batch without replacement is heavy-ball GD.
Time ``t = step x learning rate`` as for SGD. Stationary variance on a quadratic:
docs/theory.md (heavy-ball SGD).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp
from pydantic import Field

from .. import _validation as v
from .._types import Array
from . import _ops as ops
from . import kernels, sgd
from .base import Info, Stepper, cast, dtype_of
from .method import ConformanceCase, Method, MethodSettings, Section


class MomentumHyperparameters(NamedTuple):
    """``learning_rate`` ``eta``, ``batch_size`` ``B`` (a number, as for SGD) and ``momentum``
    ``mu`` in ``[0, 1)`` (scalars or arrays of shape ``R``; required: no silent default)."""
    learning_rate: Any
    batch_size: Any = 1.0
    momentum: Any = None


class MomentumState(NamedTuple):
    """``velocity``: tuple like ``weights`` (``v_l``, zero at the start); ``permutation``: the
    epoch's order offline without replacement (``None`` otherwise)."""
    weights: tuple
    step: Array
    velocity: tuple
    permutation: Any = None


@dataclasses.dataclass(frozen=True)
class MomentumSGD(Stepper):
    """Heavy-ball SGD on the task's regime: fresh samples online, minibatches of ``task.data``
    offline (with or without replacement, as :class:`~dlnlab.dynamics.sgd.OfflineSGD`)."""
    batch_size: int = 1
    name: ClassVar[str] = "momentum_sgd"
    batched_from_width: ClassVar[int | None] = 32
    # Its XLA step rounds `mu v` and the update differently in broadcast groups of 1-8 runs
    # than in groups of 16 or more (an AVX-512 CPU, float32 and float64, widths (4, 6, 3) and
    # (3, 4, 2), online and offline; 16-64 runs per group agreed): fewer runs are padded.
    minimum_broadcast_group: ClassVar[int] = 16
    reports_minibatch_loss: ClassVar[bool] = True
    hyperparameters_type: ClassVar[type] = MomentumHyperparameters
    required_hyperparameters: ClassVar[tuple[str, ...]] = ("learning_rate", "momentum")

    def __post_init__(self):
        v.positive_int("batch_size", self.batch_size)
        if not self.task.online:
            sgd.check_offline(self.task, self.batch_size, self.replacement)

    def init(self, weights):
        weights = tuple(jnp.asarray(w) for w in weights)
        permutation = (None if self.task.online or self.replacement
                       else sgd.initial_permutation(self.task, weights))
        return MomentumState(weights, jnp.zeros((), jnp.int32),
                             tuple(jnp.zeros_like(w) for w in weights), permutation)

    def draw(self, words, steps, dtype):
        if self.task.online:
            return sgd.online_draw(self.task, self.batch_size, words, steps, dtype)
        return sgd.offline_draw(self.batch_size, self.replacement, words, steps)

    def block_kernel(self, shapes, dtype):
        """:func:`dlnlab.dynamics.kernels.online_momentum_block` online where it takes the network
        (as :meth:`~dlnlab.dynamics.OnlineSGD.block_kernel`: widths and batch size at most 32,
        float32 or float64, the compiled module built); never offline or for a subclass."""
        if type(self) is not MomentumSGD or not kernels.online_sgd_supports(
                self.task, self.batch_size, shapes, dtype):
            return None

        def kernel(words, state, hparams, first_step, valid_steps, threshold, diverged):
            dtype = dtype_of(state)
            weights, velocity, diverged = kernels.online_momentum_block(
                self.task, self.batch_size, state.weights, state.velocity, words,
                cast(hparams.learning_rate, dtype), cast(hparams.momentum, dtype), threshold,
                first_step, valid_steps, diverged)
            return MomentumState(weights, state.step + valid_steps, velocity, None), diverged
        return kernel

    def apply(self, words, noise, state, hparams):
        dtype = dtype_of(state)
        permutation = state.permutation
        if self.task.online:
            x, y = sgd.online_batch(self.task, self.batch_size, noise)
        else:
            x, y, permutation = sgd.offline_batch(self.task, self.batch_size, self.replacement,
                                                  words, noise, state.step, permutation, dtype)
        updates, loss, weights = ops.minibatch_updates(state.weights, x, y,
                                                       cast(hparams.learning_rate, dtype))
        mu = cast(hparams.momentum, dtype)
        # theta + (mu v - U) written as (theta - U) + mu v: the SGD step plus an exact zero when
        # mu = 0, so momentum 0 rounds exactly as SGD (also where XLA fuses theta - U into FMAs).
        decay = tuple(mu * vel for vel in state.velocity)
        velocity = tuple(m - u for m, u in zip(decay, updates, strict=True))
        weights = tuple((w - u) + m for w, u, m in zip(weights, updates, decay, strict=True))
        if self.task.online or self.replacement:
            permutation = None
        return MomentumState(weights, state.step + 1, velocity, permutation), Info(loss)


# ------------------------------------------------------------------------ registry record
class MomentumSection(Section):
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="heavy-ball momentum mu in [0, 1)")


def _build(task, settings: MethodSettings) -> MomentumSGD:
    return MomentumSGD(task, replacement=settings.replacement, batch_size=settings.batch_size)


def _hyperparameters(settings: MethodSettings, prepared: dict) -> MomentumHyperparameters:
    return MomentumHyperparameters(settings.learning_rate, float(settings.batch_size),
                                   settings.section.momentum)


MOMENTUM_SGD = Method(
    name="momentum_sgd", label="SGD with momentum", colour="tab:olive", build=_build,
    hyperparameters=_hyperparameters, section=MomentumSection, minibatch=True,
    conformance=(
        ConformanceCase("momentum_sgd_b1", "white_noise", lambda t: MomentumSGD(t, batch_size=1),
                        dict(learning_rate=0.1, momentum=0.5)),
        ConformanceCase("momentum_sgd_b3_colored", "colored",
                        lambda t: MomentumSGD(t, batch_size=3),
                        dict(learning_rate=0.1, batch_size=3.0, momentum=0.9)),
        ConformanceCase("momentum_offline_replacement", "offline",
                        lambda t: MomentumSGD(t, batch_size=2),
                        dict(learning_rate=0.1, batch_size=2.0, momentum=0.5)),
        ConformanceCase("momentum_offline_epochs", "offline",
                        lambda t: MomentumSGD(t, batch_size=2, replacement=False),
                        dict(learning_rate=0.1, batch_size=2.0, momentum=0.5)),
    ))

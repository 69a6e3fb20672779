"""Gradient descent: ``theta <- theta - eta grad L`` (population online, the data set offline)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .base import Hyperparameters, Info, State, Stepper, cast, dtype_of
from .method import ConformanceCase, Method, MethodSettings


@dataclasses.dataclass(frozen=True)
class GradientDescent(Stepper):
    """``theta <- theta - eta grad L``: the population gradient online, the full data set offline."""
    name: ClassVar[str] = "gd"
    batched_from_width: ClassVar[int | None] = 32

    def apply(self, words, noise, state, hparams):
        dtype = dtype_of(state)
        grads, loss, weights = self.sequenced_gradient_and_loss(state.weights)
        lr = cast(hparams.learning_rate, dtype)
        weights = tuple(w - lr * g for w, g in zip(weights, grads, strict=True))
        return State(weights, state.step + 1), Info(loss)


# ------------------------------------------------------------------------ registry records
def _gd_hyperparameters(settings: MethodSettings, prepared: dict) -> Hyperparameters:
    return Hyperparameters(settings.learning_rate, float(settings.batch_size))


GD = Method(
    name="gd", label="GD", colour="tab:blue",
    build=lambda task, s: GradientDescent(task, replacement=s.replacement),
    hyperparameters=_gd_hyperparameters,
    conformance=(
        ConformanceCase("gd", "white_noise", lambda t: GradientDescent(t),
                        dict(learning_rate=0.1), stochastic=False),
        ConformanceCase("gd_offline", "offline", lambda t: GradientDescent(t),
                        dict(learning_rate=0.1), stochastic=False),
    ))

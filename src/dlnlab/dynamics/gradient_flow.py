"""Gradient flow ``d theta/dt = -grad L`` by classical RK4 (the deterministic reference)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pydantic import Field

from .base import (
    Info,
    State,
    Stepper,
    StepSizeHyperparameters,
    cast,
    dtype_of,
)
from .method import ConformanceCase, Method, MethodSettings, Section, section_step_size


@dataclasses.dataclass(frozen=True)
class GradientFlow(Stepper):
    """``d theta/dt = -grad L`` integrated by classical RK4 with step ``h`` (``step_size``)."""
    name: ClassVar[str] = "gf"
    uses_step_size: ClassVar[bool] = True
    hyperparameters_type: ClassVar[type] = StepSizeHyperparameters

    def apply(self, words, noise, state, hparams):
        dtype = dtype_of(state)
        h = cast(self.time_step(hparams), dtype)
        w0 = state.weights
        k1, loss = self.gradient_and_loss(w0)

        def shifted(k, c):
            return tuple(w - c * h * g for w, g in zip(w0, k, strict=True))

        k2, _ = self.gradient_and_loss(shifted(k1, 0.5))
        k3, _ = self.gradient_and_loss(shifted(k2, 0.5))
        k4, _ = self.gradient_and_loss(shifted(k3, 1.0))
        weights = tuple(w - (h / 6) * (a + 2 * b + 2 * c + d)
                        for w, a, b, c, d in zip(w0, k1, k2, k3, k4, strict=True))
        return State(weights, state.step + 1), Info(loss)



# ------------------------------------------------------------------------ registry record
class GradientFlowSection(Section):
    step_size: float | None = Field(None, gt=0.0, description="RK4 step h; default the learning "
                                    "rate (RK4 is already accurate to ~(4 s h)^4 there)")


def _step_size_hyperparameters(settings: MethodSettings, prepared: dict) -> StepSizeHyperparameters:
    return StepSizeHyperparameters(settings.learning_rate, float(settings.batch_size),
                                   settings.step_size)


GRADIENT_FLOW = Method(
    name="gf", label="gradient flow", colour="tab:brown",
    build=lambda task, s: GradientFlow(task, replacement=s.replacement),
    hyperparameters=_step_size_hyperparameters, section=GradientFlowSection,
    step_size=section_step_size(1.0),
    conformance=(
        ConformanceCase("gf", "colored_noise", lambda t: GradientFlow(t),
                        dict(learning_rate=0.1, step_size=0.05), stochastic=False),
    ))

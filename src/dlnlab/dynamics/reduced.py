"""The reduced modewise SDE at aligned, balanced weights (docs/theory.md §6)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from pydantic import Field

from .. import _validation as v
from ..core.modes import mode_amplitudes
from ..theory import reduced as reduced_theory
from . import _ops as ops
from .base import Info, State, Stepper, StepSizeHyperparameters, cast
from .method import ConformanceCase, Method, Section, section_step_size
from .observers import observe_amplitudes


@dataclasses.dataclass(frozen=True)
class ReducedSDE(Stepper):
    """Euler-Maruyama for the modewise SDE at aligned, balanced weights (docs/theory.md §6):
    ``a <- a + h (mu_GF + mu_Ito) + sqrt(h D(a)) z``, one scalar SDE per mode.

    State weights: ``(amplitudes,)`` of shape ``(r, *R)``. ``coupled=False`` drops the
    cross-mode Ito coupling (the paper's decoupled form). Whitened inputs, isotropic label
    noise only (the closed forms assume them).
    """
    depth: int = 2
    coupled: bool = True
    name: ClassVar[str] = "reduced"
    uses_step_size: ClassVar[bool] = True
    hyperparameters_type: ClassVar[type] = StepSizeHyperparameters

    def __post_init__(self):
        v.positive_int("depth", self.depth)
        if not self.task.whitened:
            v.fail("task.input_covariance", "non-identity", "the reduced SDE needs whitened inputs")
        if not self.task.online:
            v.fail("task.data", "a data set", "the reduced SDE models online SGD")
        _ = self.task.label_noise_std  # raises (one line) for anisotropic label noise

    def init(self, amplitudes):
        if isinstance(amplitudes, tuple | list):
            (amplitudes,) = amplitudes
        return State((jnp.asarray(amplitudes),), jnp.zeros((), jnp.int32))

    def _sigma(self):
        return self.task.label_noise_std

    def draw(self, words, steps, dtype):
        return ops.counter_normals(words, steps, (self.task.spectrum.shape[0],), dtype)

    def apply(self, words, noise, state, hparams):
        (a,) = state.weights
        dtype = a.dtype
        h = cast(self.time_step(hparams), dtype)
        lr, b = cast(hparams.learning_rate, dtype), cast(hparams.batch_size, dtype)
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
        return State((jnp.moveaxis(new, -1, 0),), state.step + 1), Info(loss)

    def observe(self, weights, hparams, names, coupled: bool = True) -> dict:
        """The reduced state's observer: ``weights`` is ``(amplitudes,)`` of one run."""
        (a,) = weights
        return observe_amplitudes(a, self.task, self.depth, hparams.learning_rate,
                                  hparams.batch_size, names, coupled)


# ------------------------------------------------------------------------ registry record
class ReducedSection(Section):
    coupled: bool = Field(True, description="keep the cross-mode Ito coupling (False: the "
                          "paper's decoupled form)")
    step_size: float | None = Field(None, gt=0.0, description="EM step h; default learning rate / 10")


def _start_amplitudes(weights, task):
    """``|u_a^T W(0) v_a|`` per run: the aligned, balanced closure needs a positive amplitude (a
    negative one never grows without label noise)."""
    amplitudes = jax.vmap(lambda w: mode_amplitudes(w, task))(weights)
    return (jnp.abs(amplitudes),)


REDUCED = Method(
    name="reduced", label="reduced SDE", colour="tab:red",
    build=lambda task, s: ReducedSDE(task, replacement=s.replacement, depth=s.depth,
                                     coupled=s.section.coupled),
    hyperparameters=lambda s, prepared: StepSizeHyperparameters(
        s.learning_rate, float(s.batch_size), s.step_size),
    section=ReducedSection, step_size=section_step_size(0.1), start=_start_amplitudes,
    state="amplitudes", online_only=True,
    conformance=(
        ConformanceCase("reduced_coupled", "white_noise",
                        lambda t: ReducedSDE(t, depth=2, coupled=True),
                        dict(learning_rate=0.1, step_size=0.05)),
        ConformanceCase("reduced_decoupled", "white_noise",
                        lambda t: ReducedSDE(t, depth=2, coupled=False),
                        dict(learning_rate=0.1, step_size=0.05)),
    ))

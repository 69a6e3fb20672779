"""Langevin SDEs by Euler-Maruyama: the anisotropic SDE of SGD (exact structured noise) and
isotropic Langevin."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field, field_validator

from .. import _validation as v
from ..core.noise import noise_trace
from . import _ops as ops
from .base import Info, State, Stepper, StepSizeHyperparameters, cast, dtype_of
from .method import ConformanceCase, Method, MethodSettings, Section, section_step_size


class IsotropicHyperparameters(NamedTuple):
    """Hyperparameters of isotropic Langevin: those of :class:`StepSizeHyperparameters` and the
    ``temperature`` ``T`` (noise ``sqrt(2 T h) z`` per step; required: no silent default)."""
    learning_rate: Any
    batch_size: Any = 1.0
    step_size: Any = None
    temperature: Any = None


@dataclasses.dataclass(frozen=True)
class AnisotropicLangevin(Stepper):
    """Euler-Maruyama for ``d theta = -grad L dt + sqrt(eta/B) Sigma^{1/2} dW`` (SGD paper eq. 1).

    ``theta <- theta - h grad L + sqrt(eta/B) xi(dW)`` with the exact structured noise map
    ``xi_l = A_l^T R~(dW) B_l^T`` (docs/theory.md §3), linear in the Brownian increment ``dW``
    of the standard normals. ``path_substeps = m``: the increment of one step is the sum of
    ``m`` increments of a fine grid ``h / m`` (counters ``n m .. n m + m - 1``), so runs with
    ``(h, m)`` and ``(h / 2, m / 2)`` follow the same Brownian path (convergence studies).
    ``replacement`` picks the offline batch factor.
    """
    path_substeps: int = 1
    name: ClassVar[str] = "sde"
    batched_from_width: ClassVar[int | None] = 16
    uses_step_size: ClassVar[bool] = True
    hyperparameters_type: ClassVar[type] = StepSizeHyperparameters

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
        """Brownian increments of the steps in units of ``sqrt(h)``, shape ``(*C, total, *R)``
        (``total`` = the sizes of :meth:`noise_shapes`): standard normals, except online the
        input-noise matrix ``Z`` (the first ``d_in^2``), which comes symmetrised,
        ``(Z + Z^T) / sqrt(2)`` (:meth:`apply`'s ``G^T``: unit variance off the diagonal, 2 on
        it). Symmetrised here, once for the block, and not in the step, where XLA read the
        transpose inside the product ``D G^T`` once for every row of ``D``: half of the step's
        time at d = 12 (docs/performance.md)."""
        total = sum(math.prod(s) for s in self.noise_shapes())
        m = self.path_substeps
        if m == 1:
            z = ops.counter_normals(words, steps, (total,), dtype)
        else:
            steps = jnp.asarray(steps)
            fine = steps[..., None] * m + jnp.arange(m, dtype=steps.dtype)
            z = jnp.sum(ops.counter_normals(words, fine, (total,), dtype), axis=steps.ndim)
            z = z / math.sqrt(m)
        if not self.task.online:
            return z
        axis, n = jnp.ndim(steps), self.task.d_in
        zin = jax.lax.slice_in_dim(z, 0, n * n, axis=axis)
        square = zin.reshape(zin.shape[:axis] + (n, n) + zin.shape[axis + 1:])
        sym = (square + jnp.swapaxes(square, axis, axis + 1)) * math.sqrt(0.5)
        rest = jax.lax.slice_in_dim(z, n * n, total, axis=axis)
        return jnp.concatenate([sym.reshape(zin.shape), rest], axis=axis)

    def _split(self, z):
        out, offset = [], 0
        for shape in self.noise_shapes():
            size = math.prod(shape)
            out.append(z[offset:offset + size].reshape(shape + z.shape[1:]))
            offset += size
        return out

    def _batch_factor(self, hparams, dtype):
        b = cast(hparams.batch_size, dtype)
        if self.task.online or self.replacement:
            return 1.0 / b
        n = self.task.data.num_samples
        return (n - b) / (b * (n - 1))

    def apply(self, words, z, state, hparams):
        """One step given :meth:`draw`'s noise of the step (online: ``Z`` already symmetrised)."""
        dtype = dtype_of(state)
        task = self.task
        h = cast(self.time_step(hparams), dtype)
        scale = jnp.sqrt(h * cast(hparams.learning_rate, dtype) * self._batch_factor(hparams, dtype))
        weights = state.weights
        rights, end = ops.prefix_products(weights)
        g, d, loss = ops.error_and_loss(task, self._moments(), end)
        normals = self._split(z)
        if task.online:
            gt = normals[0]                          # (Z + Z^T) / sqrt(2), from draw
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
            residual = ops.mm(end, x.T) - ops.lift(y.T, end.ndim)     # (d_out, n, *R)
            r = (ops.mm(residual * w[None], x) - jnp.sum(w, axis=0) * g)
            r = r / math.sqrt(task.data.num_samples)
        q = h * g + scale * r
        weights = ops.descend(weights, rights, q)
        return State(weights, state.step + 1), Info(loss)


@dataclasses.dataclass(frozen=True)
class IsotropicLangevin(Stepper):
    """Euler-Maruyama for ``d theta = -grad L dt + sqrt(2 T) dW``:
    ``theta <- theta - h grad L + sqrt(2 T h) z`` (``T`` = ``hparams.temperature``)."""
    widths: tuple = ()
    name: ClassVar[str] = "isotropic"
    batched_from_width: ClassVar[int | None] = 32
    uses_step_size: ClassVar[bool] = True
    hyperparameters_type: ClassVar[type] = IsotropicHyperparameters
    required_hyperparameters: ClassVar[tuple[str, ...]] = ("learning_rate", "temperature")

    def __post_init__(self):
        if len(self.widths) < 2 or self.widths[0] != self.task.d_in or self.widths[-1] != self.task.d_out:
            v.fail("widths", self.widths,
                   f"must be (d_in={self.task.d_in}, ..., d_out={self.task.d_out}): the noise "
                   "has one normal per weight")

    def draw(self, words, steps, dtype):
        size = sum(w_out * w_in for w_in, w_out in zip(self.widths[:-1], self.widths[1:], strict=True))
        return ops.counter_normals(words, steps, (size,), dtype)

    def apply(self, words, z, state, hparams):
        dtype = dtype_of(state)
        h = cast(self.time_step(hparams), dtype)
        scale = jnp.sqrt(2 * cast(hparams.temperature, dtype) * h)
        grads, loss, weights = self.sequenced_gradient_and_loss(state.weights)
        new, offset = [], 0
        for w, g in zip(weights, grads, strict=True):
            size = w.shape[0] * w.shape[1]
            noise = z[offset:offset + size].reshape(w.shape)
            new.append(w - h * g + scale * noise)
            offset += size
        return State(tuple(new), state.step + 1), Info(loss)


# ------------------------------------------------------------------------ registry records
class AnisotropicSection(Section):
    step_size: float | None = Field(None, gt=0.0, description="EM step h; default learning rate / 10")
    path_substeps: int = Field(1, ge=1, description="Brownian-path substeps m (convergence studies)")


class IsotropicSection(Section):
    temperature: float | Literal["matched"] = Field(
        "matched", description="T, or 'matched': each run at eta tr Sigma / (2 B P) of its own "
        "initial weights")
    step_size: float | None = Field(None, gt=0.0, description="EM step h; default learning rate / 10")

    @field_validator("temperature", mode="before")
    @classmethod
    def _word(cls, value):
        if isinstance(value, str) and value != "matched":
            raise ValueError("must be a number >= 0 or 'matched'")
        return value

    @field_validator("temperature")
    @classmethod
    def _t(cls, value):
        if isinstance(value, float) and value < 0:
            raise ValueError("must be >= 0 or 'matched'")
        return value


def matched_temperatures(weights, task, learning_rate: float, batch_size: int,
                         replacement: bool = True) -> np.ndarray:
    """Per-run matched temperatures ``T_i = eta tr Sigma(theta_i(0)) / (2 B P)``, shape
    ``(runs,)`` from initial weights ``(runs, d_l, d_{l-1})`` (docs/theory.md §4): run ``i``'s
    isotropic noise has the anisotropic model's mean per-parameter variance at run ``i``'s own
    start (``tr Sigma`` by :func:`dlnlab.core.noise_trace`, batch factor included; ``P`` the
    number of parameters). Run ``i``'s value depends on run ``i``'s weights only, so the isotropic
    SDE's run ``i`` is the same however many runs are made (the engine's invariance)."""
    traces = jax.vmap(lambda w: noise_trace(w, task, batch_size, replacement))(weights)
    num_params = sum(int(np.prod(w.shape[1:])) for w in weights)
    return learning_rate * np.asarray(traces, dtype=np.float64) / (2 * num_params)


def matched_temperature(weights, task, learning_rate: float, batch_size: int,
                        replacement: bool = True) -> float:
    """The mean over runs of :func:`matched_temperatures`: a one-number summary for reports.
    The isotropic SDE itself runs each run at its own matched temperature (a mean over runs
    would make run ``i`` depend on the other runs)."""
    return float(np.mean(matched_temperatures(weights, task, learning_rate, batch_size,
                                              replacement)))


def _prepare_isotropic(weights, task, settings: MethodSettings) -> dict:
    """``{"temperatures": T per run (runs,) or the section's number, "temperature": their mean}``.

    ``temperatures`` is what the dynamics use (run ``i`` at its own matched temperature:
    independent of the number of runs); ``temperature`` is the summary written to datasets."""
    temperature = settings.section.temperature
    if temperature == "matched":
        per_run = matched_temperatures(weights, task, settings.learning_rate,
                                       settings.batch_size, settings.replacement)
        return {"temperatures": per_run, "temperature": float(np.mean(per_run))}
    return {"temperatures": float(temperature), "temperature": float(temperature)}


def _isotropic_hyperparameters(settings: MethodSettings, prepared: dict):
    """The temperature is ``prepared["temperatures"]`` (one per run, from :func:`_prepare_isotropic`)
    or, in a hand-made ``prepared``, ``prepared["temperature"]`` (one number for every run)."""
    temperature = prepared["temperatures"] if "temperatures" in prepared else prepared["temperature"]
    return IsotropicHyperparameters(settings.learning_rate, float(settings.batch_size),
                                    settings.step_size, temperature)


ANISOTROPIC = Method(
    name="sde", label="anisotropic SDE", colour="tab:green",
    build=lambda task, s: AnisotropicLangevin(task, replacement=s.replacement,
                                              path_substeps=s.section.path_substeps),
    hyperparameters=lambda s, prepared: StepSizeHyperparameters(
        s.learning_rate, float(s.batch_size), s.step_size),
    section=AnisotropicSection, step_size=section_step_size(0.1),
    conformance=(
        ConformanceCase("sde_online", "white_noise", lambda t: AnisotropicLangevin(t),
                        dict(learning_rate=0.1, step_size=0.05)),
        ConformanceCase("sde_online_substeps4", "white_noise",
                        lambda t: AnisotropicLangevin(t, path_substeps=4),
                        dict(learning_rate=0.1, step_size=0.05)),
        ConformanceCase("sde_colored", "colored_noise", lambda t: AnisotropicLangevin(t),
                        dict(learning_rate=0.1, batch_size=2.0)),
        ConformanceCase("sde_offline", "offline", lambda t: AnisotropicLangevin(t),
                        dict(learning_rate=0.1, step_size=0.05)),
        ConformanceCase("sde_offline_epochs_substeps4", "offline",
                        lambda t: AnisotropicLangevin(t, path_substeps=4, replacement=False),
                        dict(learning_rate=0.1, batch_size=2.0, step_size=0.05)),
    ))

ISOTROPIC = Method(
    name="isotropic", label="isotropic SDE", colour="tab:purple",
    build=lambda task, s: IsotropicLangevin(task, replacement=s.replacement, widths=s.widths),
    hyperparameters=_isotropic_hyperparameters, section=IsotropicSection,
    step_size=section_step_size(0.1), prepare=_prepare_isotropic,
    conformance=(
        ConformanceCase("isotropic", "white_noise",
                        lambda t: IsotropicLangevin(t, widths=(t.d_in, 4, t.d_out)),
                        dict(learning_rate=0.1, step_size=0.05, temperature=0.1)),
    ))

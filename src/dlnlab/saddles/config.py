"""Configs of ``dlnlab saddles sample|certify|escape``: TOML files validated by pydantic models.

One idiom with ``dlnlab run`` (:mod:`dlnlab.experiments.config`): a TOML file, ``--set key=value``
overrides, and the command's flags as overrides of single fields; defaults live in the models.
The models are strict: ``"0.01"`` or ``true`` is not a number, ``6.0`` is not an integer, floats
must be finite, unknown keys are errors. Every bad value is one ``ValueError`` line
``field=value: rule`` (the CLI prints it as ``error: ...`` and exits with code 2).

Precedence: model defaults < config file < ``--set`` < explicit flags. The resolved config is
written next to the output (``config.toml`` for ``sample``, ``certify.toml``, ``escape.toml``) and
kept in the dataset's attributes (``sample_config``, ``certify_config``, ``escape_config``), so a
catalogue names the exact settings it was made with; ``dlnlab saddles sample OUT/config.toml``
reproduces it bit for bit.

Each ``*_from_config`` function is the one library call behind a command.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import jax
import pydantic
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.task import Task
from ..experiments.config import MAX_MEMORY_BYTES, MAX_STEPS, FieldError
from .catalogue import certify_catalogue, sample_catalogue
from .certify import Tolerances
from .escape import escape_experiment
from .sampler import Prior

NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class _Model(BaseModel):
    # strict: no str -> number, bool -> number or float -> int coercion (int -> float is allowed);
    # allow_inf_nan=False: every float is finite.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ------------------------------------------------------------------------------ sample
class SampleTask(_Model):
    """The teacher: ``Task.from_spectrum(fold_in(key(seed), 0), widths[0], widths[-1], spectrum)``."""

    widths: list[PositiveInt] = Field(default_factory=lambda: [4, 5, 5, 4],
                                      description="layer widths d_0, ..., d_L (depth L >= 2)")
    spectrum: list[NonNegativeFloat] = Field(default_factory=lambda: [3.0, 2.0, 1.0, 0.5],
                                             description="teacher singular values")
    label_noise: float = Field(0.0, ge=0.0, description="label-noise std sigma (0: none)")

    @field_validator("widths")
    @classmethod
    def _depth(cls, value):
        if len(value) < 3:
            raise ValueError("needs d_0, ..., d_L with depth L >= 2 (at least three widths)")
        return value

    @field_validator("spectrum")
    @classmethod
    def _nonempty(cls, value):
        if not value:
            raise ValueError("needs at least one singular value")
        return value


class SampleSampler(_Model):
    """Strata and the SGLD sampler of the residuals (docs/saddles.md §3)."""

    ranks: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2],
                                        description="stratum ranks r to sample")
    subsets: Literal["top", "all"] = Field("top", description="'top': the r largest modes; "
                                           "'all': every r-subset of the non-zero modes")
    num_chains: int = Field(6, ge=0, description="SGLD chains per (rank, subset)")
    num_exact: int = Field(3, ge=0, description="exact points (two zero blocks) per (rank, subset)")
    num_steps: int = Field(1000, ge=1, description="SGLD steps at the temperature")
    quench_steps: int = Field(500, ge=0, description="steps at T = 0 afterwards")
    temperature: float = Field(1e-3, ge=0.0, description="T = 1 / beta")
    step_size: float = Field(1e-3, gt=0.0, description="eps_0")
    step_decay: float = Field(0.0, ge=0.0, description="gamma in eps_0 (1 + t / t_0)^-gamma")
    init_scale: float = Field(1.0, ge=0.0, description="scale of the initial / exact residuals")

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, value):
        if not value:
            raise ValueError("needs at least one rank")
        return value

    @field_validator("num_exact")
    @classmethod
    def _some_points(cls, value, info):
        if value + info.data.get("num_chains", 1) < 1:
            raise ValueError("num_chains + num_exact must be >= 1")
        return value


class SamplePrior(_Model):
    """``-log pi(Z) = (alpha / 2) sum ||Z_l||^2 + sum kappa / (8 rho^2) (||Z_l||^2 - rho^2)^2``."""

    weight_decay: float = Field(1.0, ge=0.0, description="alpha")
    norm_target: float = Field(1.0, ge=0.0, description="rho (0: off)")
    norm_strength: float = Field(1.0, ge=0.0, description="kappa")


class SampleRefine(_Model):
    """Levenberg-Marquardt refinement on the true loss (docs/saddles.md §4)."""

    iterations: int = Field(30, ge=1, description="Levenberg-Marquardt iterations")
    rebalance_every: int = Field(10, ge=0, description="re-balance period (0: never)")
    cg_iterations: int = Field(100, ge=1, description="conjugate-gradient iterations per step")


class SampleConfig(_Model):
    """``dlnlab saddles sample``: keys ``fold_in(key(seed), 0)`` (task), ``fold_in(key(seed), 1)``
    (sampler)."""

    seed: int = Field(0, ge=0, lt=2 ** 63)
    task: SampleTask = Field(default_factory=SampleTask)
    sampler: SampleSampler = Field(default_factory=SampleSampler)
    prior: SamplePrior = Field(default_factory=SamplePrior)
    refine: SampleRefine = Field(default_factory=SampleRefine)

    @model_validator(mode="after")
    def _sizes(self):
        """Refuse, before any work, more steps than :data:`MAX_STEPS` or an estimate beyond
        :data:`MAX_MEMORY_BYTES` (the limits of ``dlnlab run``): the teacher's bases, the points
        of one (rank, subset) with the refinement's working copies, and the chains' traces."""
        s, w = self.sampler, [float(x) for x in self.task.widths]
        steps = s.num_steps + s.quench_steps
        if steps > MAX_STEPS:
            raise FieldError("sampler.num_steps", s.num_steps,
                             f"num_steps + quench_steps = {steps} exceeds {MAX_STEPS} (MAX_STEPS)")
        params = sum(a * b for a, b in zip(w[:-1], w[1:], strict=False))
        parts = {"task.widths": 8.0 * (w[0] ** 2 + w[-1] ** 2 + w[0] * w[-1]),
                 "sampler.num_chains": 64.0 * (s.num_chains + s.num_exact) * params
                 + 32.0 * s.num_chains * steps}
        total = sum(parts.values())
        if total > MAX_MEMORY_BYTES:
            field = max(parts, key=parts.get)
            if field == "sampler.num_chains" and 64.0 * params > MAX_MEMORY_BYTES / 2:
                field = "task.widths"
            value = self.task.widths if field == "task.widths" else s.num_chains
            raise FieldError(field, value, f"would need about {total:.2g} bytes of memory (limit "
                             f"{MAX_MEMORY_BYTES / 2 ** 30:g} GiB); lower task.widths, "
                             "sampler.num_chains, num_exact or num_steps")
        return self


# ------------------------------------------------------------------------------ certify
class CertifyConfig(_Model):
    """``dlnlab saddles certify``: point ``i`` uses ``fold_in(key(seed), i)`` (Lanczos start)."""

    seed: int = Field(0, ge=0, lt=2 ** 63)
    method: Literal["auto", "dense", "lanczos"] = "auto"
    num_eigenvalues: int = Field(6, ge=1, description="smallest eigenvalues kept")
    num_blocks: int = Field(40, ge=1, description="Lanczos blocks")
    block_size: int = Field(8, ge=1, description="Lanczos block size")
    grad_rtol: float | None = Field(None, ge=0.0, description="default sqrt(eps)")
    eig_rtol: float | None = Field(None, ge=0.0, description="default 10 eps (times sqrt(P) h)")
    loss_rtol: float | None = Field(None, ge=0.0, description="default sqrt(eps)")


# ------------------------------------------------------------------------------ escape
class EscapeConfig(_Model):
    """``dlnlab saddles escape``: method ``m`` uses ``fold_in(key(seed), m)``."""

    seed: int = Field(0, ge=0, lt=2 ** 63)
    methods: list[str] = Field(default_factory=lambda: ["gd", "sgd", "sde"])
    learning_rate: float = Field(0.02, gt=0.0, description="eta")
    num_steps: int = Field(1000, ge=1, description="maximum steps per run")
    num_runs: int = Field(8, ge=1, description="runs per point and method")
    perturbation: float = Field(1e-3, ge=0.0, description="rho, size of the start offset")
    drop_fraction: float = Field(0.1, gt=0.0, le=1.0,
                                 description="escape: loss drop by this fraction of L* - L_min")
    direction: Literal["eigenvector", "random"] = "eigenvector"
    batch_size: int = Field(1, ge=1, description="B for SGD and the SDE noise")
    sde_step: float | None = Field(None, gt=0.0, description="SDE step h (default: learning rate)")
    max_points: int = Field(20, ge=1, description="at most this many saddles")

    @model_validator(mode="after")
    def _steps(self):
        if self.num_steps > MAX_STEPS:
            raise FieldError("num_steps", self.num_steps, f"exceeds {MAX_STEPS} (MAX_STEPS)")
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, value):      # the names themselves are checked by escape_experiment
        if not value:
            raise ValueError("needs at least one method")
        if len(set(value)) != len(value):
            raise ValueError("methods must not repeat")
        return value


# ------------------------------------------------------------------------------ loading
Config = TypeVar("Config", SampleConfig, CertifyConfig, EscapeConfig)


def validate_config(kind: type[Config], data: Mapping) -> Config:
    """``kind`` (a config model) from a dict; a bad value raises one ``ValueError`` line."""
    from ..experiments.config import format_error

    try:
        return kind.model_validate(dict(data))
    except pydantic.ValidationError as error:
        raise ValueError(format_error(error, root=kind)) from None


def _set(data: dict, key: str, value) -> None:
    from ..experiments.config import check_key

    check_key(key)
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"{key}={value!r}: {part} is not a section")
    target[parts[-1]] = value


def load_config(kind: type[Config], path: str | Path | None = None,
                overrides: Iterable[str] = (), fields: Mapping[str, object] | None = None) -> Config:
    """Resolve a config: ``kind``'s defaults, then the TOML file ``path`` (``None``: none), then
    ``overrides`` (``"a.b=value"``, the value parsed as TOML: :func:`dlnlab.experiments.apply_override`),
    then ``fields`` (dotted key -> value, e.g. the CLI's flags; ``None`` values are skipped)."""
    from ..experiments.config import apply_override, read_toml

    data: dict = read_toml(path) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    for key, value in (fields or {}).items():
        if value is not None:
            _set(data, key, value)
    return validate_config(kind, data)


def config_to_toml(config: SampleConfig | CertifyConfig | EscapeConfig) -> str:
    """The resolved config as TOML (unset optional fields omitted); loading it gives ``config``
    back exactly (floats are written with ``repr``)."""
    import tomli_w

    return tomli_w.dumps(config.model_dump(mode="python", exclude_none=True))


# ------------------------------------------------------------------------------ one call each
def task_from_config(config: SampleConfig) -> Task:
    """The teacher of a sample config (key ``fold_in(key(seed), 0)``)."""
    t = config.task
    return Task.from_spectrum(jax.random.fold_in(jax.random.key(config.seed), 0), t.widths[0],
                              t.widths[-1], t.spectrum, label_noise=t.label_noise or None)


def sample_from_config(config: SampleConfig) -> xr.Dataset:
    """What ``dlnlab saddles sample`` computes: :func:`sample_catalogue` with the config's settings;
    attributes ``seed`` and ``sample_config`` (the resolved TOML) added."""
    s, p, r = config.sampler, config.prior, config.refine
    ds = sample_catalogue(
        jax.random.fold_in(jax.random.key(config.seed), 1), task_from_config(config),
        config.task.widths, s.ranks, subsets=s.subsets, num_chains=s.num_chains,
        num_exact=s.num_exact, num_steps=s.num_steps, quench_steps=s.quench_steps,
        temperature=s.temperature, step_size=s.step_size, step_decay=s.step_decay,
        prior=Prior(p.weight_decay, p.norm_target, p.norm_strength), init_scale=s.init_scale,
        refine_iterations=r.iterations, rebalance_every=r.rebalance_every,
        cg_iterations=r.cg_iterations)
    ds.attrs["seed"] = config.seed
    ds.attrs["sample_config"] = config_to_toml(config)
    return ds


def certify_from_config(config: CertifyConfig, points: xr.Dataset) -> xr.Dataset:
    """What ``dlnlab saddles certify`` computes: :func:`certify_catalogue`; attributes
    ``certify_seed`` and ``certify_config`` added."""
    params = int(points.sizes.get("parameter", 0))
    if config.method == "dense" and 24.0 * params ** 2 > MAX_MEMORY_BYTES:
        raise FieldError("method", config.method,
                         f"the dense Hessian of {params} parameters would need about "
                         f"{24.0 * params ** 2:.2g} bytes of memory (limit "
                         f"{MAX_MEMORY_BYTES / 2 ** 30:g} GiB); use lanczos or auto")
    catalogue = certify_catalogue(
        jax.random.key(config.seed), points, method=config.method,
        num_eigenvalues=config.num_eigenvalues, num_blocks=config.num_blocks,
        block_size=config.block_size,
        tolerances=Tolerances(config.grad_rtol, config.eig_rtol, config.loss_rtol))
    catalogue.attrs["certify_seed"] = config.seed
    catalogue.attrs["certify_config"] = config_to_toml(config)
    return catalogue


def escape_from_config(config: EscapeConfig, catalogue: xr.Dataset) -> xr.Dataset:
    """What ``dlnlab saddles escape`` computes: :func:`escape_experiment`; attributes ``seed`` and
    ``escape_config`` added."""
    from .catalogue import catalogue_widths

    widths = [float(x) for x in catalogue_widths(catalogue)]
    params = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=False))
    points = float(min(config.max_points, catalogue.sizes.get("point", 0)))
    per_run = 64.0 * params + 16.0 * config.batch_size * (widths[0] + widths[-1]) \
        + 8.0 * config.num_steps
    need = points * config.num_runs * per_run
    if need > MAX_MEMORY_BYTES:
        field = ("num_runs" if points * per_run <= MAX_MEMORY_BYTES / 2
                 else "batch_size" if 16.0 * config.batch_size * (widths[0] + widths[-1]) > per_run / 2
                 else "num_steps")
        raise FieldError(field, getattr(config, field),
                         f"{int(points)} saddles x {config.num_runs} runs would need about "
                         f"{need:.2g} bytes of memory (limit {MAX_MEMORY_BYTES / 2 ** 30:g} GiB); "
                         "lower num_runs, num_steps, batch_size or max_points")
    result = escape_experiment(
        jax.random.key(config.seed), catalogue, methods=tuple(config.methods),
        learning_rate=config.learning_rate, num_steps=config.num_steps, num_runs=config.num_runs,
        perturbation=config.perturbation, drop_fraction=config.drop_fraction,
        direction=config.direction, batch_size=config.batch_size, sde_step=config.sde_step,
        max_points=config.max_points)
    result.attrs["seed"] = config.seed
    result.attrs["escape_config"] = config_to_toml(config)
    return result

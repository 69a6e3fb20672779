"""Experiment configuration: TOML files validated by pydantic models.

Errors name the field, its value and the rule in one line (:func:`load_config`,
:func:`apply_overrides`). Defaults are the paper's task as we read it (``dlnlab run`` without a
config): d = 12, depth 4, rank-3 teacher s = (1, 2/3, 1/3), init variance d^-2, learning rate
0.01, batch size 1, no label noise, horizon 100, 32 runs of GD, online SGD, the anisotropic and
isotropic Langevin SDEs and the reduced SDE. Method sections (``[sde]``, ``[isotropic]``,
``[reduced]``, ``[gf]``, ``[momentum_sgd]``, ...) come from the method registry.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Model):
    d_in: int = Field(12, ge=1)
    d_out: int = Field(12, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [12, 12, 12],
                              description="hidden widths; depth = len(hidden) + 1")
    spectrum: list[float] = Field(default_factory=lambda: [1.0, 2.0 / 3.0, 1.0 / 3.0])
    label_noise: float = Field(0.0, ge=0.0)
    num_samples: int = Field(0, ge=0, description="0: online (fresh samples); n: a fixed data set")

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, value):
        if any(h < 1 for h in value):
            raise ValueError("every hidden width must be >= 1")
        return value

    @field_validator("spectrum")
    @classmethod
    def _spectrum(cls, value):
        if not value:
            raise ValueError("needs at least one singular value")
        if any(s < 0 for s in value) or any(b > a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError("must be non-negative and non-increasing")
        return value

    @model_validator(mode="after")
    def _rank(self):
        if len(self.spectrum) > min(self.d_in, self.d_out):
            raise ValueError(f"spectrum: rank {len(self.spectrum)} exceeds min(d_in, d_out)")
        return self

    @property
    def depth(self) -> int:
        return len(self.hidden) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.d_in, *self.hidden, self.d_out)


class InitConfig(_Model):
    kind: Literal["gaussian", "balanced", "aligned"] = "gaussian"
    gamma: float = Field(2.0, description="entries ~ N(0, fan_in^-gamma) (gamma = 2: variance d^-2)")
    amplitude: float = Field(0.002, gt=0.0, description="aligned: every mode's initial amplitude "
                             "a0 (aligned, balanced, Haar-random hidden bases per run)")


class SwitchConfig(_Model):
    time: float = Field(gt=0.0, description="from this time on (t = step * learning rate)")
    batch_size: int = Field(ge=1)


class TrainingConfig(_Model):
    learning_rate: float = Field(0.01, gt=0.0)
    batch_size: int = Field(1, ge=1)
    horizon: float = Field(100.0, gt=0.0, description="time horizon in t = step * learning rate")
    replacement: bool = True
    schedule: list[SwitchConfig] = Field(default_factory=list,
                                         description="batch-size switches (noise schedule)")

    @model_validator(mode="after")
    def _schedule(self):
        times = [s.time for s in self.schedule]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("schedule: switch times must be strictly increasing")
        if times and times[-1] >= self.horizon:
            raise ValueError("schedule: switch times must lie before the horizon")
        return self

    @property
    def num_steps(self) -> int:
        return int(round(self.horizon / self.learning_rate))


class RecordConfig(_Model):
    points: int = Field(200, ge=2)
    spacing: Literal["linear", "log"] = "linear"
    variables: list[str] | None = Field(None, description="observables to record (default: all)")

    @field_validator("variables")
    @classmethod
    def _variables(cls, value):
        if value is None:
            return value
        from ..dynamics.observers import OBSERVABLE_DIMS

        for name in value:
            if name not in OBSERVABLE_DIMS:
                raise ValueError(f"unknown observable {name!r}; one of {', '.join(OBSERVABLE_DIMS)}")
        if "amplitude" not in value or "diffusion" not in value:
            raise ValueError("must include 'amplitude' and 'diffusion' (the summary needs them)")
        return value


class _ExperimentBase(_Model):
    name: str = "default"
    seed: int = Field(0, ge=0)
    runs: int = Field(32, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    methods: list[str] = Field(default_factory=lambda: ["gd", "sgd", "sde", "isotropic", "reduced"],
                               description="registered method names (dlnlab.dynamics.registry)")
    task: TaskConfig = Field(default_factory=TaskConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)
    divergence_threshold: float = Field(1e8, gt=0.0)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value):
        from ..dynamics.registry import method_names

        if not value:
            raise ValueError("needs at least one method")
        if len(set(value)) != len(value):
            raise ValueError("methods must not repeat")
        for name in value:
            if name not in method_names():
                raise ValueError(f"methods={name!r}: unknown method; one of "
                                 f"{', '.join(method_names())}")
        return value

    @model_validator(mode="after")
    def _consistency(self):
        from ..dynamics.registry import get_method

        for name in self.methods:
            if get_method(name).online_only and self.task.num_samples:
                raise ValueError(f"methods: {name!r} models online SGD; remove it for a data set "
                                 "(task.num_samples > 0)")
        if self.task.num_samples and not self.training.replacement:
            if self.training.batch_size > self.task.num_samples:
                raise ValueError("training.batch_size: must be <= task.num_samples without "
                                 "replacement")
        lr = self.training.learning_rate
        for method in _sectioned_methods():
            h = getattr(getattr(self, method.name), "step_size", None)
            if h is not None and abs(lr / h - round(lr / h)) > 1e-9 * lr / h:
                raise ValueError(f"{method.name}.step_size: must divide the learning rate {lr} "
                                 "(records are taken at times on the learning-rate grid)")
        return self

    def settings(self, method: str, batch_size: int | None = None):
        """The :class:`~dlnlab.dynamics.MethodSettings` of ``method`` in this experiment (with
        another ``batch_size`` for a schedule switch)."""
        from ..dynamics.method import MethodSettings
        from ..dynamics.registry import get_method

        record = get_method(method)
        section = getattr(self, method) if record.section is not None else None
        settings = MethodSettings(self.training.learning_rate,
                                  self.training.batch_size if batch_size is None else batch_size,
                                  self.training.replacement, self.task.widths, section)
        return dataclasses.replace(settings, step_size=record.step_size(settings))

    def step_size(self, method: str) -> float:
        """Time per step ``h`` of a method (``t = step * h``)."""
        return self.settings(method).step_size


def _sectioned_methods():
    from ..dynamics.registry import METHODS

    return [m for m in METHODS if m.section is not None]


def _build_experiment_config():
    """``ExperimentConfig``: the fixed sections plus one section per registered method that has
    one (named after the method), so a new method's options need no edit here."""
    fields = {m.name: (m.section, Field(default_factory=m.section)) for m in _sectioned_methods()}
    model = pydantic.create_model("ExperimentConfig", __base__=_ExperimentBase,
                                  __module__=__name__, **fields)
    model.__doc__ = ("An experiment: task, init, training, recording, the methods to run and "
                     "each method's section (TOML tables named after the methods).")
    return model


ExperimentConfig = _build_experiment_config()


def _format_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("missing",):
        return f"{loc}: is required"
    if first["type"] == "extra_forbidden":
        return f"{loc}={first.get('input')!r}: unknown field"
    if first["type"] == "value_error" and ":" in msg.split(" ")[0]:
        return msg   # model-level errors already name their field
    return f"{loc}={first.get('input')!r}: {msg}"


def validate_config(data: dict) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a dict; a bad value raises ``ValueError`` (one line)."""
    try:
        return ExperimentConfig.model_validate(data)
    except pydantic.ValidationError as error:
        raise ValueError(_format_error(error)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a TOML config (``None``: the defaults) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config={str(path)!r}: no such file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config={str(path)!r}: not valid TOML ({error})") from None
    for item in overrides or []:
        apply_override(data, item)
    return validate_config(data)


def apply_override(data: dict, item: str) -> None:
    """``a.b=value`` with ``value`` parsed as TOML (``0.02``, ``[1, 0.5]``, ``"log"``, ``true``);
    a bare word is taken as a string."""
    if "=" not in item:
        raise ValueError(f"--set={item!r}: must be key=value (e.g. training.learning_rate=0.02)")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    try:
        set_field(data, key, value)
    except ValueError as error:
        raise ValueError(f"--set={item!r}: {error}") from None


def set_field(data: dict, key: str, value) -> None:
    """Set the dotted field ``key`` (``"training.learning_rate"``) of a config dict to
    ``value``, creating sections as needed (the one way configs are changed by name: ``--set``,
    paper studies). A part that is not a section is a one-line ``ValueError``."""
    target = data
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"{part} is not a section")
    target[parts[-1]] = value


def config_to_toml(config: ExperimentConfig) -> str:
    import tomli_w

    data = config.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)

"""Sweep files: a base ``dlnlab run`` config, grid axes, zipped axes and the runs per point.

A sweep file is TOML validated by a strict, closed pydantic model (:class:`SweepConfig`, the
same rules as :mod:`dlnlab.experiments.config`)::

    name = "lr-grid"
    base = "base.toml"            # a dlnlab run config, relative to this file; or a [base] table
    runs = 64                     # runs per point (default: the base config's runs)

    [grid]                        # the cartesian product of these axes
    "training.learning_rate" = [0.005, 0.01, 0.02]
    "task.label_noise" = [0.0, 0.1]

    [[zip]]                       # axes of equal length, taken together (a `point` dimension)
    "task.hidden" = [[12, 12], [12, 12, 12]]
    "training.horizon" = [60.0, 100.0]

``base`` is the path of a ``dlnlab run`` config (relative to the sweep file), or a ``[base]``
table holding a config inline; the table may name a file in ``file`` whose config its other keys
override. Every axis is a dotted field of :class:`~dlnlab.experiments.ExperimentConfig`; every
value is checked with the config's own rule before anything runs, and every point's config is
validated as a whole. Errors are one line naming the axis and the value:
``grid.training.learning_rate[3]=-0.1: must be > 0`` (docs/sweeps.md).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
from pathlib import Path

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .._validation import shorten, show
from ..experiments.config import (
    ExperimentConfig,
    check_key,
    format_error,
    read_toml,
    set_field,
    validate_config,
)

MAX_AXIS_VALUES = 10_000
"""Most values of one axis."""

MAX_POINTS = 1_000_000
"""Most points (the product of the dimensions' sizes): every point's config is validated and
kept in memory before the sweep starts."""

MAX_TOTAL_RUNS = 10 ** 9
"""Most runs in a sweep (points x runs per point)."""

MAX_CHUNK_RUNS = 1 << 20
"""Most runs in one chunk (one compiled call's batch is at most this)."""

#: Fields a sweep cannot sweep: ``name`` (the sweep's own name) and ``runs`` (set ``runs`` at the
#: top of the sweep file: every point has the same number of runs).
RESERVED_AXES = {"name": "the run name is not a hyperparameter",
                 "runs": "set runs at the top of the sweep file (runs per point)"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SweepConfig(_Model):
    """A sweep: the base config, its axes and the runs per point (see the module docstring).

    ``base``: the resolved base config as a dict (after reading ``base`` files; :func:`load_sweep`
    resolves paths relative to the sweep file). ``grid``: axis -> values (cartesian product, in
    file order). ``zip``: groups of axes of equal length (each group one dimension, ``point``,
    ``point_2``, ...). ``runs``: runs per point (default: the base config's). ``chunk_runs``: most
    runs per chunk (default: as many as fit :data:`CHUNK_MEMORY_BYTES`, see
    :func:`dlnlab.sweep.plan.default_chunk_runs`).
    """

    name: str = Field("sweep", description="sweep name: the folder sweeps/<name>")
    base: dict = Field(default_factory=dict, description="the base dlnlab run config (a dict)")
    grid: dict[str, list] = Field(default_factory=dict, description="axis -> values (product)")
    zip: list[dict[str, list]] = Field(default_factory=list,
                                       description="groups of axes of equal length (zipped)")
    runs: int | None = Field(None, ge=1, description="runs per point (default: base runs)")
    chunk_runs: int | None = Field(None, ge=1, le=MAX_CHUNK_RUNS,
                                   description="most runs per chunk (default: memory-bounded)")

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", value):
            raise ValueError("must be one folder name: 1-100 letters, digits, '-', '_' or '.', "
                             "not starting with '.'")
        return value

    @model_validator(mode="after")
    def _axes(self):
        _check_axes(self)
        return self

    # ------------------------------------------------------------------ derived
    @property
    def base_config(self) -> ExperimentConfig:
        """The validated base config with the sweep's ``runs``."""
        return validate_config(self._base_dict())

    def _base_dict(self) -> dict:
        data = copy.deepcopy(self.base)
        if self.runs is not None:
            data["runs"] = self.runs
        return data

    def dimensions(self) -> list[Dimension]:
        """The sweep's dimensions in order: one per grid axis, then one per zip group."""
        dims = [Dimension(name=axis, axes=(axis,), values=tuple(tuple([v]) for v in values))
                for axis, values in self.grid.items()]
        for i, group in enumerate(self.zip):
            name = "point" if i == 0 else f"point_{i + 1}"
            axes = tuple(group)
            values = tuple(zip(*(group[a] for a in axes), strict=True))
            dims.append(Dimension(name=name, axes=axes, values=values))
        return dims

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(d.values) for d in self.dimensions())

    @property
    def num_points(self) -> int:
        return math.prod(self.shape)

    def points(self) -> list[Point]:
        """Every point, in C order over :meth:`dimensions` (the last dimension fastest), with
        its validated config. A point whose config breaks a rule that involves several axes is
        one line naming the point's values: ``point training.learning_rate=0.5,
        training.horizon=0.1: training.horizon=0.1: shorter than one step ...``."""
        dims = self.dimensions()
        base = self._base_dict()
        out = []
        for index, combo in enumerate(itertools.product(*(range(len(d.values)) for d in dims))):
            data = copy.deepcopy(base)
            values = {}
            for dim, k in zip(dims, combo, strict=True):
                for axis, value in zip(dim.axes, dim.values[k], strict=True):
                    set_field(data, axis, copy.deepcopy(value))
                    values[axis] = value
            try:
                config = validate_config(data)
            except ValueError as error:
                where = ", ".join(f"{a}={show(v)}" for a, v in values.items())
                raise ValueError(f"point {where}: {error}") from None
            out.append(Point(index=index, position=combo, values=values, config=config))
        return out


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One dimension of the sweep: a grid axis (``axes`` of one name) or a zip group."""
    name: str
    axes: tuple[str, ...]
    values: tuple[tuple, ...]          # per position, one value per axis


@dataclasses.dataclass(frozen=True)
class Point:
    """One point: its flat index, its position per dimension, its axis values and config."""
    index: int
    position: tuple[int, ...]
    values: dict
    config: ExperimentConfig

    @property
    def identity(self) -> str:
        """:func:`point_identity` of the point's config."""
        return point_identity(self.config)


#: Config fields left out of a point's identity: they do not change what a run does (its name,
#: how many runs there are, what is recorded, the divergence label, which methods run: every
#: method of a point shares the runs' initial weights and noise keys; whether the compiled block
#: kernel computes the steps: the same runs, at most rounded differently).
IDENTITY_EXCLUDED = ("name", "runs", "record", "divergence_threshold", "methods", "kernel")


def point_identity(config: ExperimentConfig) -> str:
    """sha256 hex digest of ``config``'s canonical JSON without :data:`IDENTITY_EXCLUDED`: the
    root of the point's run keys, so run ``i`` of a point is the same bits whatever the sweep's
    grid, chunking, run count, record grid or method list."""
    data = config.model_dump(mode="json")
    for field in IDENTITY_EXCLUDED:
        data.pop(field, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ axis validation
def _field_names(model) -> list[str]:
    return list(model.model_fields)


def _check_axis_name(where: str, axis: str) -> None:
    """``axis`` is a dotted leaf field of the experiment config (closest name suggested)."""
    try:
        check_key(axis)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    model = ExperimentConfig
    parts = axis.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            hint = (f"did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close
                    else f"valid: {', '.join(fields)}")
            raise ValueError(f"{where}: unknown config field; {hint}")
        annotation = fields[part].annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(parts) - 1:
            if not is_model:
                raise ValueError(f"{where}: {'.'.join(parts[:depth + 1])} is a field, not a "
                                 "section")
            model = annotation
        elif is_model:
            raise ValueError(f"{where}: is a section; sweep one of its fields "
                             f"({', '.join(annotation.model_fields)})")
    if axis in RESERVED_AXES:
        raise ValueError(f"{where}: cannot be swept ({RESERVED_AXES[axis]})")


def _check_values(where: str, values) -> None:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}={show(values)}: must be a non-empty list of values")
    if len(values) > MAX_AXIS_VALUES:
        raise ValueError(f"{where}: {len(values)} values; at most {MAX_AXIS_VALUES} "
                         "(MAX_AXIS_VALUES)")


def _value_key(value) -> str:
    return json.dumps(value, sort_keys=True)


def _check_axis_values(sweep: SweepConfig, where: str, axis: str, values: list) -> None:
    """Each value alone on the base config passes the config's rule for that field; no value
    twice. A rule that fails elsewhere in the config (the base is invalid) is reported as the
    base's error, not the axis's."""
    seen = {}
    base = sweep._base_dict()
    for i, value in enumerate(values):
        key = _value_key(value)
        if key in seen:
            raise ValueError(f"{where}[{i}]={show(value)}: repeats {where}[{seen[key]}]")
        seen[key] = i
        data = copy.deepcopy(base)
        set_field(data, axis, copy.deepcopy(value))
        try:
            ExperimentConfig.model_validate(data)
        except pydantic.ValidationError as error:
            message = format_error(error)
            first = error.errors()[0]
            loc = ".".join(str(p) for p in first["loc"] if isinstance(p, str))
            if loc.startswith(axis) or message.startswith(axis):
                rule = message.split(": ", 1)[1] if ": " in message else message
                raise ValueError(f"{where}[{i}]={show(value)}: {shorten(rule, 300)}") from None
            # another field's rule (e.g. horizon < learning rate): checked per point later


def _check_axes(sweep: SweepConfig) -> None:
    owner: dict[str, str] = {}
    groups = [("grid", sweep.grid)] + [(f"zip[{i}]", g) for i, g in enumerate(sweep.zip)]
    for prefix, group in groups:
        if prefix.startswith("zip") and not group:
            raise ValueError(f"{prefix}={{}}: a zip group needs at least one axis")
        lengths = {}
        for axis, values in group.items():
            where = f"{prefix}.{axis}"
            _check_axis_name(where, axis)
            if axis in owner:
                raise ValueError(f"{where}: axis given twice (also in {owner[axis]})")
            owner[axis] = prefix
            _check_values(where, values)
            lengths[axis] = len(values)
        if prefix.startswith("zip") and len(set(lengths.values())) > 1:
            (a, n), *rest = lengths.items()
            b, m = next((b, m) for b, m in rest if m != n)
            raise ValueError(f"{prefix}.{b}: {m} values, but {prefix}.{a} has {n}; the axes of a "
                             "zip group must have equal lengths")
    try:
        base = validate_config(sweep._base_dict())
    except ValueError as error:
        raise ValueError(f"base: {error}") from None
    points = math.prod([len(v) for v in sweep.grid.values()]
                       + [len(next(iter(g.values()))) for g in sweep.zip])
    if points > MAX_POINTS:
        raise ValueError(f"grid: {points} points; at most {MAX_POINTS} (MAX_POINTS)")
    if points * base.runs > MAX_TOTAL_RUNS:
        raise ValueError(f"runs={base.runs}: {points} points x {base.runs} runs exceeds "
                         f"{MAX_TOTAL_RUNS} runs (MAX_TOTAL_RUNS)")
    for prefix, group in groups:
        for axis, values in group.items():
            _check_axis_values(sweep, f"{prefix}.{axis}", axis, values)


# ------------------------------------------------------------------ loading
def _sweep_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError) and first["type"] == "value_error" and not first["loc"]:
        return str(cause)
    message = format_error(error, SweepConfig)
    loc = first.get("loc") or ()
    if first["type"] == "extra_forbidden" and len(loc) == 1 and loc[0] in ExperimentConfig.model_fields:
        message += ('; this looks like a dlnlab run config: a sweep file names it as base = '
                    '"run.toml" (or puts it under [base]) and lists its axes under [grid] or [[zip]]')
    return message


def sweep_from_dict(data: dict, folder: str | Path | None = None) -> SweepConfig:
    """A :class:`SweepConfig` from a dict as read from TOML: ``base`` a path (relative to
    ``folder``) or a table (with an optional ``file``); one-line ``ValueError`` otherwise,
    also for a table with none of ``base``, ``grid`` and ``zip`` (an empty file: it would
    silently run the default config)."""
    if not isinstance(data, dict):
        raise ValueError(f"sweep={show(data)}: must be a table")
    data = dict(data)
    if not any(key in data for key in ("base", "grid", "zip")) and \
            not set(data) - set(SweepConfig.model_fields):
        raise ValueError('base: required: a sweep file without base, [grid] or [[zip]] would run '
                         'the default config; give base = "run.toml" (or a [base] table) and the '
                         'axes under [grid] or [[zip]]')
    data["base"] = _resolve_base(data.get("base", {}), Path(folder) if folder else Path("."))
    try:
        return SweepConfig.model_validate(data)
    except pydantic.ValidationError as error:
        raise ValueError(_sweep_error(error)) from None


def _resolve_base(base, folder: Path) -> dict:
    if isinstance(base, str):
        return read_toml(folder / base, what="base")
    if not isinstance(base, dict):
        raise ValueError(f"base={show(base)}: must be the path of a dlnlab run config or a "
                         "[base] table")
    base = copy.deepcopy(base)
    file = base.pop("file", None)
    if file is None:
        return base
    if not isinstance(file, str):
        raise ValueError(f"base.file={show(file)}: must be a path (a string)")
    merged = read_toml(folder / file, what="base.file")
    _merge(merged, base)
    return merged


def _merge(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep file (paths in it relative to its folder). ``overrides``:
    ``key=value`` items applied to the file's table (``--set``, e.g. ``runs=8``,
    ``base.training.horizon=50``). One-line ``ValueError`` for any problem."""
    from ..experiments.config import apply_override

    if not isinstance(path, str | Path):
        raise ValueError(f"path={show(path)}: must be the path of a sweep file (str or "
                         "pathlib.Path)")
    if overrides is not None and (isinstance(overrides, str) or not isinstance(overrides, list | tuple)
                                  or not all(isinstance(x, str) for x in overrides)):
        raise ValueError(f"overrides={show(overrides)}: must be a list of key=value strings, e.g. "
                         "['runs=8']")
    path = Path(path)
    data = read_toml(path, what="sweep")
    for item in overrides or []:
        apply_override(data, item)
    return sweep_from_dict(data, path.parent)


def sweep_to_toml(sweep: SweepConfig) -> str:
    """The resolved sweep as TOML (``base`` inline): what ``OUT/sweep.toml`` holds."""
    import tomli_w

    return tomli_w.dumps(sweep.model_dump(mode="json", exclude_none=True))

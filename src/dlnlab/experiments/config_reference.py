"""The config reference (``docs/config.md``), generated from the config models.

``python -m dlnlab.experiments.config_reference > docs/config.md`` regenerates it; a test checks
that the committed file equals :func:`config_reference`. Every field of
:class:`~dlnlab.experiments.config.ExperimentConfig` is listed with its dotted name (the key of
``dlnlab run --set``), type, default, rule (bounds and choices from the model) and meaning (the
field's description); the per-method sections come from the method registry.
"""

from __future__ import annotations

import json
import types
import typing

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import config as c

_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"),
           (annotated_types.Le, "le", "<="), (annotated_types.Lt, "lt", "<"))


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "string"
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        names = list(dict.fromkeys(names))
        text = " or ".join(names)
        return f"{text} or none" if type(None) in args else text
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _literals(annotation) -> list:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [x for a in typing.get_args(annotation) for x in _literals(a)]


def _rule(field) -> str:
    parts = []
    for meta in field.metadata:
        for kind, attribute, symbol in _BOUNDS:
            if isinstance(meta, kind):
                parts.append(f"{symbol} {getattr(meta, attribute):g}")
    choices = _literals(field.annotation)
    if choices:
        others = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        parts.append(("or " if others else "") + "one of " + ", ".join(f"`{x}`" for x in choices))
    return "; ".join(parts)


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(table)"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        return _model_of(typing.get_args(annotation)[0])
    return None


def _rows(model: type[BaseModel], prefix: str, sections: list) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_of(field.annotation)
        if sub is not None:
            is_list = typing.get_origin(field.annotation) is list
            sections.append((f"{key}[]" if is_list else key, sub, field.description or ""))
            if not is_list:
                continue
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | `{_default(field)}` | "
                    f"{_rule(field)} | {meaning} |")
    return rows


def config_reference() -> str:
    """The Markdown text of ``docs/config.md``."""
    out = [
        "# Config reference (`dlnlab run`)",
        "",
        "Generated from the config models by `python -m dlnlab.experiments.config_reference > "
        "docs/config.md`; do not edit by hand (a test compares this file with the models).",
        "",
        "A config is a TOML file (see `examples/`); `--set key=value` changes one field by its "
        "dotted name, the value read as TOML (`0.02`, `[1, 0.5]`, `\"log\"`, `true`; a bare word "
        "is a string). Values are strict: `\"0.01\"` is not a number, `true` not an integer, "
        "`6.0` not an integer (an integer is a valid number); every number must be finite "
        "(`inf`, `nan` and `1e999`, which TOML reads as `inf`, are errors); an unknown key is an "
        "error that suggests the closest valid one. A bad value is one line "
        "`error: field=value: rule` and exit code 2, before anything runs.",
        "",
        "Limits checked before any work starts (constants in `dlnlab.experiments.config`; no "
        "setting lifts them):",
        "",
        f"- `MAX_MEMORY_BYTES` = {c.MAX_MEMORY_BYTES / 2 ** 30:g} GiB: the estimated memory of "
        "the task's matrices, the data set, the runs' weights and noise blocks and every "
        "method's recorded results;",
        f"- `MAX_STEPS` = {c.MAX_STEPS}: steps of one method to the horizon (horizon / step, "
        "Brownian substeps included);",
        f"- `MAX_DEPTH` = {c.MAX_DEPTH}: layers (`len(task.hidden) + 1`);",
        f"- `MAX_SINGULAR_VALUE` = {c.MAX_SINGULAR_VALUE:g}: teacher singular values, "
        "`task.label_noise`, `init.amplitude`;",
        f"- `MAX_RECORD_POINTS` = {c.MAX_RECORD_POINTS}: `record.points`;",
        "- `training.horizon` must be at least one learning-rate step; `name` is one folder "
        "name (the run directory `runs/<name>`).",
        "",
        "Time is `t = step x learning rate` throughout.",
    ]
    sections: list = []
    top = _rows(c.ExperimentConfig, "", sections)
    out += ["", "## Top level", "", "| field | type | default | rule | meaning |",
            "|---|---|---|---|---|", *top]
    done = set()
    while sections:
        key, model, description = sections.pop(0)
        if key in done:
            continue
        done.add(key)
        title = f"## `[{key.removesuffix('[]')}]`" if not key.endswith("[]") else \
            f"## `[[{key.removesuffix('[]')}]]` (a list of tables)"
        doc = (model.__doc__ or "").strip().splitlines()
        intro = description or (doc[0] if doc else "")
        rows = _rows(model, key.removesuffix("[]") + ".", sections)
        out += ["", title, ""]
        if intro:
            out += [intro, ""]
        out += ["| field | type | default | rule | meaning |", "|---|---|---|---|---|", *rows]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")

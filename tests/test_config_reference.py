"""``docs/config.md`` is generated from the config models and lists every field."""

from __future__ import annotations

from pathlib import Path

from dlnlab.dynamics.registry import METHODS
from dlnlab.experiments.config import ExperimentConfig
from dlnlab.experiments.config_reference import config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_committed_reference_equals_the_generated_text():
    assert DOC.read_text(encoding="utf-8") == config_reference(), (
        "docs/config.md is stale: python -m dlnlab.experiments.config_reference > docs/config.md")


def _dotted_fields(model, prefix=""):
    for name, field in model.model_fields.items():
        sub = field.annotation
        args = getattr(sub, "__args__", ())
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            yield from _dotted_fields(sub, f"{prefix}{name}.")
        elif args and isinstance(args[0], type) and hasattr(args[0], "model_fields"):
            yield f"{prefix}{name}"
            yield from _dotted_fields(args[0], f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_field_is_listed_with_a_meaning():
    text = config_reference()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines()
            if line.startswith("| `")}
    fields = list(_dotted_fields(ExperimentConfig))
    assert "training.learning_rate" in fields and "task.input_covariance" in fields
    for name in fields:
        assert name in rows, name
        meaning = rows[name].rstrip(" |").rsplit("|", 1)[1].strip()
        assert meaning, f"{name} has no description"
    for method in METHODS:             # every registered method's section, from the registry
        if method.section is not None:
            assert f"## `[{method.name}]`" in text
    assert "| `training.learning_rate` | number | `0.01` | > 0 |" in text
    assert "| `record.spacing` | string | `\"adaptive\"` | one of `adaptive`, `linear`, `log` |" in text

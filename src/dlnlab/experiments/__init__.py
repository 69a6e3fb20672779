"""Experiment recipes: configs, ``run_experiment`` and the summary table."""

from .config import ExperimentConfig, apply_override, config_to_toml, load_config, validate_config
from .run import (
    build_task,
    initial_weights,
    record_times,
    run_experiment,
    run_method,
    summarise,
    theory_overlays,
)

__all__ = [
    "ExperimentConfig",
    "apply_override",
    "build_task",
    "config_to_toml",
    "initial_weights",
    "load_config",
    "record_times",
    "run_experiment",
    "run_method",
    "summarise",
    "theory_overlays",
    "validate_config",
]

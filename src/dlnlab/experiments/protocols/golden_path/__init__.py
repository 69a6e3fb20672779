"""The Golden-Path protocol: does SGD, started from GD's initial weights, select the same model?

Experiment notes §1 (``shared/seeds/notes-golden-path-and-saddle-sampling.txt``); docs/golden-path.md.
GD runs once (deterministic), every stochastic arm S times, all from one initialisation
(``init.shared``), so the arms differ only in their sampling randomness. The metrics (rank and
multiplicity patterns of every contiguous partial product, log singular values, parameter and
function distances, balance, mode coefficients) come from :mod:`dlnlab.analysis.golden_path`;
this package chooses the arms (:mod:`.config`), the aligned checkpoints and aggregation
(:mod:`.analysis`), the claims (:mod:`.report`) and the command (:func:`run_golden_path`, behind
``dlnlab golden-path``). :func:`golden_path_study` wraps a config as a
:class:`~dlnlab.experiments.study.Study` (``PROTOCOLS["golden-path"]`` is the default one).
"""

from __future__ import annotations

from ...study import Study
from .analysis import analyse, describe
from .command import report_markdown, run_arms, run_golden_path
from .config import (
    BUILTIN_ARMS,
    GoldenPathConfig,
    arm_configs,
    arm_names,
    load_golden_path_config,
    reference_arm,
    validate_golden_path,
)
from .report import claims, numbers

QUICK_OVERRIDES = {"seeds": 4, "training": {"horizon": 20.0}, "record": {"points": 60},
                   "metrics": {"bootstrap_resamples": 200}}
"""What ``quick`` changes: 4 runs per arm, horizon 20, 60 record times, 200 resamples."""


def golden_path_study(config: GoldenPathConfig | None = None) -> Study:
    """The protocol of ``config`` (default: :class:`GoldenPathConfig`'s defaults, the paper's
    task) as a :class:`Study`: experiments = the arms, analyse = :func:`analyse`, numbers,
    claims, and the pattern-distance figure."""
    config = GoldenPathConfig() if config is None else config

    def sized(quick: bool) -> GoldenPathConfig:
        if not quick:
            return config
        data = config.model_dump(mode="json", exclude_none=True)
        for key, value in QUICK_OVERRIDES.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) else value
        return validate_golden_path(data)

    def figure(ds):
        from ....plot.golden_path import pattern_distance_figure

        return pattern_distance_figure(ds)

    return Study(name="golden-path", title="Golden Path: does SGD select the same model as GD?",
                 reference="experiment notes §1",
                 experiments=lambda quick: arm_configs(sized(quick)),
                 analyse=lambda datasets: analyse(config, datasets),
                 numbers=numbers, claims=claims, figure=figure)


__all__ = ["BUILTIN_ARMS", "GoldenPathConfig", "analyse", "arm_configs", "arm_names", "claims", "describe",
           "golden_path_study", "load_golden_path_config", "numbers", "reference_arm",
           "report_markdown", "run_arms", "run_golden_path", "validate_golden_path"]

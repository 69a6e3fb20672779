"""Protocols: studies that are not a paper's figures (e.g. the "Golden Path" checks).

A protocol is a :class:`~dlnlab.experiments.study.Study` like any figure of a paper (experiments,
analyse, numbers, claims, figure) and runs through the same runner
(:mod:`dlnlab.experiments.study_runner`). Each protocol lives in its own module here and is
listed in :data:`PROTOCOLS` under its name: ``golden-path``
(:mod:`.golden_path`, its default config; ``dlnlab golden-path`` runs any config of it).
"""

from __future__ import annotations

from ..study import Study
from .golden_path import golden_path_study

PROTOCOLS: dict[str, Study] = {"golden-path": golden_path_study()}
"""Every protocol by name."""

__all__ = ["PROTOCOLS"]

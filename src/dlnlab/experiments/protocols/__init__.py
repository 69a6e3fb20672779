"""Protocols: studies that are not a paper's figures (e.g. the "Golden Path" checks).

A protocol is a :class:`~dlnlab.experiments.study.Study` like any figure of a paper (experiments,
analyse, numbers, claims, figure) and runs through the same runner
(:mod:`dlnlab.experiments.study_runner`). Each protocol lives in its own module here and is
listed in :data:`PROTOCOLS` under its name. None is defined yet.
"""

from __future__ import annotations

from ..study import Study

PROTOCOLS: dict[str, Study] = {}
"""Every protocol by name (empty until the first one is written)."""

__all__ = ["PROTOCOLS"]

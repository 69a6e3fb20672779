"""The Study and Paper contracts: what a reproducible result is made of.

A :class:`Study` is data plus five pure functions:

- ``experiments(quick) -> {key: ExperimentConfig}``: what to simulate (``quick`` gives small
  sizes). The runner caches each experiment by the fingerprint of its resolved config, so
  studies sharing an experiment run it once;
- ``analyse({key: Dataset}) -> Dataset``: the study's own dataset: what its figure shows, per-run
  events, and every theory curve the figure draws (computed here, as dataset variables);
- ``numbers(Dataset) -> [row]`` and ``claims(Dataset) -> [claim row]``: computed from that
  dataset only (``dlnlab.analysis.claim_row`` gives the claim shape), so the saved file is enough
  to recompute them;
- ``figure(Dataset) -> matplotlib.figure.Figure``: drawn from the dataset alone;
- optionally ``data(configs, data_dir, *, fresh, progress) -> ({key: Dataset}, record)``: how
  the experiments are computed together instead of one by one (e.g. as one sweep of
  ``dlnlab.sweep``, which this layer cannot import). It returns one dataset per key in
  :func:`~dlnlab.experiments.run.run_experiment`'s layout (what ``analyse`` reads) and a
  JSON-safe ``record`` for ``study.json``: ``folder`` (relative to ``data_dir``), ``cached``
  (nothing was computed), ``simulation_seconds`` and ``points`` (key -> what the study reads
  for that key, e.g. a point index) plus anything else worth recording. ``fresh``: recompute;
  ``progress``: report progress on stderr.

A :class:`Paper` is a named, ordered collection of studies with a base config and a citation
(``dlnlab.papers``); protocols that are not a paper's figures use the same :class:`Study`
(``dlnlab.experiments.protocols``). ``dlnlab.experiments.study_runner`` runs either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure

    from .config import ExperimentConfig

RESERVED_NAMES = ("all",)


@dataclass(frozen=True)
class Study:
    """One figure or protocol: experiments, analysis, numbers, claims, figure (module docstring).

    ``name`` names its output folder (``OUT/NAME/``); ``reference`` says where the source states
    what it tests (``"Fig. 3, §4"``); ``data``, when given, computes the experiments together
    (module docstring); None: each is run and cached on its own."""

    name: str
    title: str
    reference: str
    experiments: Callable[[bool], Mapping[str, ExperimentConfig]] = field(repr=False)
    analyse: Callable[[Mapping[str, xr.Dataset]], xr.Dataset] = field(repr=False)
    numbers: Callable[[xr.Dataset], list[dict]] = field(repr=False)
    claims: Callable[[xr.Dataset], list[dict]] = field(repr=False)
    figure: Callable[[xr.Dataset], Figure] = field(repr=False)
    data: Callable[..., tuple[Mapping[str, xr.Dataset], dict]] | None = field(default=None,
                                                                                repr=False)

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name in RESERVED_NAMES:
            raise ValueError(f"name={self.name!r}: a study needs a folder name other than "
                             f"{', '.join(RESERVED_NAMES)}")
        for part in ("experiments", "analyse", "numbers", "claims", "figure"):
            if not callable(getattr(self, part)):
                raise ValueError(f"{part}={getattr(self, part)!r}: study {self.name!r} needs a "
                                 "callable")
        if self.data is not None and not callable(self.data):
            raise ValueError(f"data={self.data!r}: study {self.name!r} needs a callable or None")


@dataclass(frozen=True)
class Citation:
    """Where a paper comes from; ``authors`` and ``arxiv`` are empty when the source text does
    not give them."""

    title: str
    authors: tuple[str, ...] = ()
    arxiv: str | None = None

    def __str__(self) -> str:
        parts = [", ".join(self.authors)] if self.authors else []
        parts.append(f"“{self.title}”")
        if self.arxiv:
            parts.append(f"arXiv:{self.arxiv}")
        return ". ".join(parts)


@dataclass(frozen=True)
class Paper:
    """A paper's reproduction: ``name`` (the CLI's, e.g. ``"sgd-dln"``), ``title``, ``citation``,
    ``base_config`` (the config every experiment starts from; do not mutate it) and its
    ``studies`` in the paper's order (a tuple, or a mapping whose values are the studies)."""

    name: str
    title: str
    citation: Citation
    base_config: Mapping = field(default_factory=dict, repr=False)
    studies: tuple[Study, ...] = field(default=(), repr=False)

    def __post_init__(self):
        studies = tuple(self.studies.values()) if isinstance(self.studies, Mapping) \
            else tuple(self.studies)
        object.__setattr__(self, "studies", studies)
        if not self.name or self.name in RESERVED_NAMES:
            raise ValueError(f"name={self.name!r}: a paper needs a name other than "
                             f"{', '.join(RESERVED_NAMES)}")
        if not studies:
            raise ValueError(f"studies=(): paper {self.name!r} has no study")
        names = [s.name for s in studies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"studies={repeated}: paper {self.name!r} repeats a study name")

    @property
    def names(self) -> list[str]:
        """Study names in the paper's order."""
        return [s.name for s in self.studies]

    def study(self, name: str) -> Study:
        """The study called ``name``; one-line ``ValueError`` listing the valid names else."""
        for s in self.studies:
            if s.name == name:
                return s
        raise ValueError(f"name={name!r}: unknown study of paper {self.name!r}; one of "
                         f"{', '.join(self.names)}")

    def resolve(self, names) -> list[str]:
        """``"all"`` or study names -> the names in the paper's order, without repeats;
        one-line ``ValueError`` listing the valid names for an unknown one or none."""
        if isinstance(names, str):
            names = [names]
        names = list(names or [])
        if not names:
            raise ValueError(f"name=[]: give a study of paper {self.name!r} "
                             f"({', '.join(self.names)}) or 'all'")
        if "all" in names:
            if len(names) > 1:
                others = [n for n in names if n != "all"]
                raise ValueError(f"name={others[0]!r}: 'all' already names every study of paper "
                                 f"{self.name!r}; give 'all' alone or study names")
            return self.names
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"name={unknown[0]!r}: unknown study of paper {self.name!r}; one of "
                             f"{', '.join(self.names)}, all")
        return [n for n in self.names if n in names]

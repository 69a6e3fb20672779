"""Papers reproduced by dlnlab: each a :class:`~dlnlab.experiments.study.Paper` made of studies.

``reproduce("sgd-dln", ["fig3"], quick=True)`` is ``dlnlab reproduce sgd-dln fig3 --quick``
(the paper's name may be left out for the default paper: ``dlnlab reproduce fig3 --quick``).
:data:`PAPERS` lists the papers; each has its folder here (``sgd_dln/``, ``gross2024/``: a base
config and one module per study). ``docs/reproduction.md`` and ``docs/fluctuations.md`` describe
the outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..experiments.study import Paper
from .gross2024 import PAPER as GROSS2024
from .sgd_dln import PAPER as SGD_DLN

PAPERS: dict[str, Paper] = {p.name: p for p in (SGD_DLN, GROSS2024)}
"""Every paper by name, the default first."""

DEFAULT_PAPER = SGD_DLN.name


def get_paper(name: str | Paper) -> Paper:
    """The paper called ``name`` (a :class:`Paper` passes through); one-line ``ValueError``
    listing the valid names else."""
    if isinstance(name, Paper):
        return name
    if name not in PAPERS:
        raise ValueError(f"paper={name!r}: unknown paper; one of {', '.join(PAPERS)}")
    return PAPERS[name]


def _owning_paper(name) -> str | None:
    """The first paper with a study called ``name`` (for the hint of an unknown name), or None."""
    return next((p.name for p in PAPERS.values() if name in p.names), None)


def split_arguments(arguments) -> tuple[Paper, list[str]]:
    """``[PAPER] NAME...`` as the command line gives them -> ``(paper, names)``: the first
    argument is a paper if it names one, else a study of the default paper; the studies are
    named, or ``all`` (a paper alone is an error: a whole paper takes minutes to an hour). Names
    are checked (one-line ``ValueError`` listing the valid ones)."""
    arguments = [arguments] if isinstance(arguments, str) else list(arguments or [])
    if arguments and arguments[0] in PAPERS:
        paper, names = PAPERS[arguments[0]], arguments[1:]
        if not names:
            raise ValueError(f"name={paper.name!r}: give its studies ({', '.join(paper.names)}) "
                             "or 'all' after the paper")
    else:
        paper, names = PAPERS[DEFAULT_PAPER], arguments
    if not names:
        raise ValueError(f"name=[]: give a paper ({', '.join(PAPERS)}) or a study of "
                         f"{paper.name!r} ({', '.join(paper.names)}) or 'all'")
    unknown = [n for n in names if n != "all" and n not in paper.names]
    if unknown and unknown[0] == arguments[0]:
        owner = _owning_paper(unknown[0])
        hint = f"; it is a study of {owner!r}: reproduce {owner} {unknown[0]}" if owner else ""
        raise ValueError(f"name={unknown[0]!r}: neither a paper ({', '.join(PAPERS)}) nor a study "
                         f"of {paper.name!r} ({', '.join(paper.names)}, all){hint}")
    if unknown:           # every name is checked before anything starts, 'all' or not
        raise ValueError(f"name={unknown[0]!r}: unknown study of paper {paper.name!r}; one of "
                         f"{', '.join(paper.names)}, all")
    return paper, paper.resolve(names)


def default_out(paper: Paper, quick: bool) -> Path:
    """``reproduction`` (``reproduction-quick``) for the default paper, else
    ``reproduction-PAPER`` (``-quick``)."""
    stem = "reproduction" if paper.name == DEFAULT_PAPER else f"reproduction-{paper.name}"
    return Path(f"{stem}-quick" if quick else stem)


def reproduce(paper: str | Paper = DEFAULT_PAPER, names="all", *, quick: bool = False, out=None,
              fresh: bool = False, quiet: bool = False) -> dict:
    """Reproduce studies of ``paper`` (``"all"`` or study names) into ``out`` (default
    :func:`default_out`): figures, datasets, numbers, claims and the report. Returns
    ``{name: {"seconds", "claims", "folder"}}``. Turns on JAX's float64 mode (as the
    ``dlnlab`` command does at start): the papers' theory checks run in float64. Every argument
    is checked before anything runs (one-line ``ValueError``)."""
    import jax

    from ..experiments.study_runner import run_studies

    if not isinstance(paper, Paper) and paper not in PAPERS:
        owner = _owning_paper(paper)
        hint = f"; it is a study of {owner!r}: reproduce({owner!r}, [{paper!r}])" if owner else ""
        raise ValueError(f"paper={paper!r}: unknown paper; one of {', '.join(PAPERS)}{hint}")
    paper = get_paper(paper)
    names = paper.resolve(names)
    for field, value in (("quick", quick), ("fresh", fresh), ("quiet", quiet)):
        if not isinstance(value, bool):
            raise ValueError(f"{field}={value!r}: must be true or false")
    if out is not None and (not isinstance(out, str | os.PathLike) or str(out) == ""):
        raise ValueError(f"out={out!r}: must be a folder path")
    out = Path(out) if out is not None else default_out(paper, quick)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r}: exists and is not a folder")
    jax.config.update("jax_enable_x64", True)
    return run_studies(paper, names, quick=quick, out=out, fresh=fresh, quiet=quiet)


__all__ = ["DEFAULT_PAPER", "PAPERS", "default_out", "get_paper", "reproduce", "split_arguments"]

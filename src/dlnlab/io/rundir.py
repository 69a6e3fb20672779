"""Run directories: ``config.toml``, ``results.nc``, ``summary.json``, ``figures/``.

Every file goes through the one atomic writer (:mod:`.atomic`): an interrupted run leaves
``*.tmp`` files and no file that looks complete. ``summary.json`` is written last; its presence
marks a finished run.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from .atomic import (
    atomic_save_figure,
    atomic_write_dataset,
    atomic_write_json,
    atomic_write_text,
    read_dataset,
)


def load_results(run_dir: str | os.PathLike) -> xr.Dataset:
    """The dataset of a finished run directory (fails if the run did not finish)."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a finished run (no summary.json)")
    return read_dataset(run_dir / "results.nc", what="results")


def write_run(run_dir: str | os.PathLike, config_toml: str, ds: xr.Dataset, summary: dict,
              figures: dict | None = None) -> Path:
    """Write a complete run directory; ``figures``: name -> matplotlib figure (PNG and PDF)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = run_dir / "summary.json"
    if stale.exists():
        stale.unlink()                      # rewriting: the run is incomplete until the end
    atomic_write_text(config_toml, run_dir / "config.toml")
    atomic_write_dataset(ds, run_dir / "results.nc")
    for name, fig in (figures or {}).items():
        for ext in ("png", "pdf"):
            atomic_save_figure(fig, run_dir / "figures" / f"{name}.{ext}")
    atomic_write_json(summary, run_dir / "summary.json")
    return run_dir

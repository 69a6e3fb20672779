"""Run directories: ``config.toml``, ``results.nc``, ``summary.json``, ``figures/``.

Every file is written to a temporary name in the same directory, flushed, then renamed
(``os.replace`` is atomic on POSIX): an interrupted run leaves ``*.tmp`` files and no file
that looks complete. ``summary.json`` is written last; its presence marks a finished run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr


def _replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _replace(tmp, path)
    return path


def _netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """NetCDF attributes must be strings or numbers; object arrays become strings."""
    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype == object:
            ds[name] = var.astype(str)
    ds.attrs = {k: (str(v) if isinstance(v, bool | np.bool_) else
                    v if isinstance(v, str | int | float | np.number) else json.dumps(v))
                for k, v in ds.attrs.items() if v is not None}
    return ds


def atomic_write_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _netcdf_ready(ds).to_netcdf(tmp, engine="h5netcdf")
    _replace(tmp, path)
    return path


def load_results(run_dir: str | os.PathLike) -> xr.Dataset:
    """The dataset of a finished run directory (fails if the run did not finish)."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a finished run (no summary.json)")
    return xr.load_dataset(run_dir / "results.nc", engine="h5netcdf")


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
            target = run_dir / "figures" / f"{name}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.stem}.tmp.{ext}")
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
            os.replace(tmp, target)
    atomic_write_text(json.dumps(summary, indent=2, default=float) + "\n", run_dir / "summary.json")
    return run_dir

"""Run directories: ``config.toml``, ``results.nc``, ``summary.json``, ``figures/``.

A run directory is *complete* when ``summary.json`` is present; it is written last and atomically,
so nothing partial ever looks complete. :func:`write_run` writes every file into
``RUN/.staging/`` first (each through the one atomic writer, :mod:`.atomic`); only when all of
them are written does it commit: remove ``summary.json``, rename ``config.toml``, ``results.nc``
and ``figures/`` into place, and rename ``summary.json`` last. A write that fails (full disk,
read-only folder) therefore leaves the previous complete run untouched and raises one-line
``OSError`` naming the file; a process killed at any moment leaves either the previous complete
run or a directory without ``summary.json``.

:func:`prepare_run_directory` decides, before any simulation, what may be done with a folder:
reuse a complete run of the same config, resume an unfinished one (its ``.work-<digest>``
folder of per-method checkpoints and finished methods, see
:func:`dlnlab.experiments.run_experiment`), start in an empty or new folder, or refuse (a file,
a folder that cannot be written, results of a different config, a folder that is not a dlnlab
run directory) unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import xarray as xr

from .atomic import (
    atomic_save_figure,
    atomic_write_dataset,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
    read_dataset,
    write_error,
)

MARKER = "summary.json"
"""Written last: its presence marks a complete run directory."""
STAGING = ".staging"
"""Where :func:`write_run` writes a run's files before moving them into place."""
WORK_PREFIX = ".work-"
"""``.work-<digest>``: an unfinished run's checkpoints and finished methods."""
RUN_FILES = ("config.toml", "results.nc", MARKER, "figures")
"""What a complete run directory holds."""
PROBE_PREFIX = ".dlnlab-probe-"


def config_digest(config_toml: str) -> str:
    """The 12-hex-digit SHA-256 of a resolved config's TOML: names its work folder."""
    return hashlib.sha256(config_toml.encode()).hexdigest()[:12]


def work_folder(run_dir: str | os.PathLike, config_toml: str) -> Path:
    """``RUN/.work-<digest>``: the resumable state of an unfinished run of this config."""
    return Path(run_dir) / f"{WORK_PREFIX}{config_digest(config_toml)}"


def _config_text(run_dir: Path) -> str | None:
    """The run directory's ``config.toml`` as text; ``None`` when absent or unreadable."""
    try:
        return (run_dir / "config.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def is_complete(run_dir: str | os.PathLike, config_toml: str | None = None) -> bool:
    """``summary.json`` and ``results.nc`` present (and, if ``config_toml`` is given, the folder's
    ``config.toml`` equal to it): a finished run, of that config."""
    run_dir = Path(run_dir)
    if not ((run_dir / MARKER).is_file() and (run_dir / "results.nc").is_file()):
        return False
    return config_toml is None or _config_text(run_dir) == config_toml


def _foreign_reason(run_dir: Path, config_toml: str) -> str | None:
    """Why ``run_dir`` (an existing folder) is not a run directory of this config, and what to
    do; ``None`` when it is one (complete or not) or is empty."""
    entries = sorted(e.name for e in run_dir.iterdir())
    if not entries:
        return None
    text = _config_text(run_dir)
    if text == config_toml:
        return None
    if (run_dir / "config.toml").exists():
        return ("holds the results of a different config (its config.toml differs); pass "
                "--overwrite (overwrite=True) to replace them, or choose another --out")
    ours = work_folder(run_dir, config_toml).name
    others = [e for e in entries if e.startswith(WORK_PREFIX) and e != ours]
    if others:
        return (f"holds an unfinished run of a different config ({others[0]}); pass --overwrite "
                "(overwrite=True) to discard it, or choose another --out")
    if ours in entries and all(e in (ours, STAGING) or ".tmp" in e or e.startswith(PROBE_PREFIX)
                               for e in entries):
        return None                       # our own run, killed before its first file was written
    return (f"is not empty and is not a dlnlab run directory of this config ({len(entries)} "
            f"entries, e.g. {entries[0]!r}); pass --overwrite (overwrite=True) to write the run "
            "into it anyway, or choose another --out")


def check_writable(run_dir: str | os.PathLike, *, field: str = "out") -> Path:
    """Create ``run_dir`` if needed and prove it writable (a probe file created and removed).

    Raises ``ValueError`` (one line ``out='PATH': rule``) when the path is a file or the folder
    cannot be created or written, before any work starts."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{field}={str(run_dir)!r}: is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ValueError(f"{field}={str(run_dir)!r}: cannot be written ({reason})") from None
    return run_dir


def prepare_run_directory(run_dir: str | os.PathLike, config_toml: str, *,
                          overwrite: bool = False, field: str = "out") -> str:
    """Decide what a run of ``config_toml`` may do with ``run_dir``, before any simulation.

    Returns ``"complete"`` (a finished run of this config is there: reuse it; only when
    ``overwrite`` is False), ``"resume"`` (the work folder of an unfinished run of this config
    is there and is kept: resuming gives the same numbers as recomputing) or ``"new"``. With
    ``overwrite=True`` the unfinished runs of other configs (``.work-*``) and any leftover
    staging folder are removed now; the previous results stay until the new ones are committed
    by :func:`write_run`.

    Raises ``ValueError``, one line naming the path: a file; a folder that cannot be created or
    written; without ``overwrite``, a folder holding results or an unfinished run of a different
    config, or a non-empty folder that is not a dlnlab run directory.
    """
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite={overwrite!r}: must be true or false")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{field}={str(run_dir)!r}: is a file, not a folder")
    if run_dir.is_dir() and not overwrite:
        reason = _foreign_reason(run_dir, config_toml)
        if reason is not None:
            raise ValueError(f"{field}={str(run_dir)!r}: {reason}")
        if is_complete(run_dir, config_toml):
            return "complete"               # reused as it is: it need not be writable
    check_writable(run_dir, field=field)
    ours = work_folder(run_dir, config_toml)
    if overwrite:
        for entry in run_dir.iterdir():
            if entry.name == STAGING or (entry.name.startswith(WORK_PREFIX) and entry != ours):
                shutil.rmtree(entry, ignore_errors=True)
    return "resume" if ours.is_dir() else "new"


def load_results(run_dir: str | os.PathLike) -> xr.Dataset:
    """The dataset of a finished run directory (fails if the run did not finish)."""
    run_dir = Path(run_dir)
    if not (run_dir / MARKER).exists():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a finished run (no summary.json)")
    return read_dataset(run_dir / "results.nc", what="results")


def load_summary(run_dir: str | os.PathLike) -> dict:
    """The ``summary.json`` of a finished run directory, as written (strict JSON)."""
    path = Path(run_dir) / MARKER
    if not path.is_file():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a finished run (no summary.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"summary={str(path)!r}: not readable JSON ({type(error).__name__})") \
            from None


def _replace(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as error:
        raise write_error(target, error, note=f"the run directory is incomplete (no {MARKER}); "
                                              "rerun to finish it") from None


def write_run(run_dir: str | os.PathLike, config_toml: str, ds: xr.Dataset, summary: dict,
              figures: dict | None = None) -> Path:
    """Write a complete run directory; ``figures``: name -> matplotlib figure (PNG and PDF).

    Every file is written into ``RUN/.staging/`` first; then ``summary.json`` is removed, the
    files are renamed into place (``figures/`` replaced as a whole) and ``summary.json`` is
    renamed last. ``summary`` is written as strict JSON (NaN and infinities as ``null``).

    Raises ``OSError`` (one line naming the file) when a file cannot be written: the staging
    folder is removed and the previous run directory, complete or not, is left as it was.
    """
    run_dir = Path(run_dir)
    stage = run_dir / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    try:
        atomic_write_text(config_toml, stage / "config.toml")
        atomic_write_dataset(ds, stage / "results.nc")
        (stage / "figures").mkdir(parents=True, exist_ok=True)
        for name, fig in (figures or {}).items():
            for ext in ("png", "pdf"):
                atomic_save_figure(fig, stage / "figures" / f"{name}.{ext}")
        atomic_write_json(summary, stage / MARKER)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    marker = run_dir / MARKER
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()                     # from here the run is incomplete until the end
    fsync_directory(run_dir)
    _replace(stage / "config.toml", run_dir / "config.toml")
    _replace(stage / "results.nc", run_dir / "results.nc")
    old = run_dir / "figures"
    if old.is_dir() and not old.is_symlink():
        _replace(old, stage / "figures.old")
    elif old.exists() or old.is_symlink():
        old.unlink()
    _replace(stage / "figures", old)
    fsync_directory(run_dir)
    _replace(stage / MARKER, marker)        # last: the run directory is complete
    fsync_directory(run_dir)
    shutil.rmtree(stage, ignore_errors=True)
    return run_dir

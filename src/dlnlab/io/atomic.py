"""The one atomic writer and reader: every file dlnlab writes goes through :func:`atomic_path`.

A file is written to a temporary name in its own directory, flushed and ``fsync``-ed, then
renamed over the target (``os.replace`` is atomic on POSIX): an interrupted write leaves a
``.tmp`` file and never a file that looks complete. Run directories, paper outputs, the saddle
catalogue, figures and engine checkpoints all use these functions.

A failed write (full disk, read-only folder, a file where a folder should be) raises ``OSError``
with one line ``could not write PATH: REASON; the previous file, if any, is unchanged`` (its
``errno`` kept), and the target is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr


def write_error(path: str | os.PathLike, error: OSError, *,
                note: str = "the previous file, if any, is unchanged") -> OSError:
    """The one-line ``OSError`` for a failed write of ``path``: ``could not write PATH: REASON;
    NOTE`` (``errno`` and, where possible, the subclass such as ``PermissionError`` kept)."""
    reason = error.strerror or str(error) or type(error).__name__
    message = f"could not write {path}: {reason}; {note}"
    try:
        wrapped = type(error)(message)
    except Exception:  # noqa: BLE001 - an OSError subclass with another constructor
        wrapped = OSError(message)
    wrapped.errno = error.errno
    wrapped.unwritten_path = str(path)
    return wrapped


def fsync_directory(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is synced); best
    effort: a file system that cannot sync folders is not an error."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the suffix (``name.tmp.png``) so writers that pick a format from
    the extension (matplotlib) still work. On an exception the temporary file is removed and
    ``path`` is left as it was; an ``OSError`` (full disk, read-only folder) is re-raised as
    one line naming ``path`` (:func:`write_error`).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}" if path.suffix else f"{path.name}.tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(path, error) from None
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if getattr(error, "unwritten_path", None) is not None:
            raise
        raise write_error(path, error) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def strict_json(value):
    """A copy of ``value`` that strict JSON can hold: NaN and infinities -> ``None`` (JSON has no
    NaN: Python's ``NaN`` token is rejected by other readers), NumPy scalars and arrays ->
    Python numbers and lists, tuples -> lists, paths -> strings."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(data, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented, strict JSON atomically: NumPy scalars and arrays converted,
    NaN and infinities written as ``null`` (:func:`strict_json`), never as ``NaN``."""
    text = json.dumps(strict_json(data), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(text + "\n", path)


def netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """A copy NetCDF can store: object arrays as strings, attributes as strings or numbers
    (booleans as ``"True"``/``"False"``, other values as JSON)."""
    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype == object:
            ds[name] = var.astype(str)
    def attribute(value):
        if isinstance(value, bool | np.bool_):
            return str(value)
        if isinstance(value, str | int | float | np.number):
            return value
        return json.dumps(value, default=_json_default)

    ds.attrs = {k: attribute(v) for k, v in ds.attrs.items() if v is not None}
    return ds


def atomic_write_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as NetCDF-4 (h5netcdf) atomically."""
    with atomic_path(path) as tmp:
        netcdf_ready(ds).to_netcdf(tmp, engine="h5netcdf")
    return Path(path)


def read_dataset(path: str | os.PathLike, *, what: str = "dataset") -> xr.Dataset:
    """Load a NetCDF file fully into memory; a missing or unreadable file is one ``ValueError``
    line naming the path (``what`` says what was expected there)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}={str(path)!r}: no such file")
    try:
        return xr.load_dataset(path, engine="h5netcdf")
    except Exception as error:  # noqa: BLE001 - any reader failure is "not a dataset"
        raise ValueError(f"{what}={str(path)!r}: not a readable NetCDF dataset "
                         f"({type(error).__name__})") from None


def atomic_save_figure(fig, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure (format from the suffix) atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return Path(path)


def atomic_write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Write NumPy arrays as an uncompressed ``.npz`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)

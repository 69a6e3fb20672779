"""A sweep folder: the manifest, chunk verification, the combined dataset and the summary.

Files in ``OUT``: ``sweep.toml`` (the resolved sweep), ``chunks/<chunk_id>.nc`` (one per chunk,
written atomically by :func:`~dlnlab.sweep.chunks.run_chunk`), ``manifest.json`` (the chunks:
id, file, group, entries, status, content hash, seconds, records; written atomically by the
driver, a chunk listed ``complete`` only after its file is in place), ``summary.csv`` and
``summary.md`` (per point and method). :func:`open_sweep` builds ONE ``xarray.Dataset`` from the
manifest: the chunk files are opened only when values are computed (dask), never to read
coordinates.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import xarray as xr

from .chunks import data_hash, file_hash

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dlnlab-sweep-manifest/1"
#: Dimension names a sweep axis may not take (they name the dataset's own dims).
RESERVED_DIMS = {"method_name", "run", "record", "slot", "time", "mode", "mode2", "layer", "pair",
                 "singular", "point"}
#: Variables indexed per run (``slot`` in a chunk): the rest are per slot and record.
FILL = {"status": "pending", "diverged_step": -1, "step": -1}


def read_manifest(out: str | Path) -> dict | None:
    """The manifest of a sweep folder, or None when it is missing or unreadable (a damaged
    manifest is rebuilt from the plan and the verified chunk files)."""
    path = Path(out) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


def write_manifest(out: str | Path, manifest: dict) -> None:
    from ..io.atomic import atomic_write_json

    atomic_write_json(manifest, Path(out) / MANIFEST)


def read_chunk_arrays(path: str | Path, names=None) -> tuple[dict, dict]:
    """A chunk file's variables (``names``: those, default all) as NumPy arrays (strings
    decoded) and its attributes, read with h5py (a NetCDF-4 file is HDF5; ~20x faster than
    opening it with xarray, which matters for 10,000 chunks)."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        wanted = list(f.keys()) if names is None else [n for n in names if n in f]
        out = {}
        for name in wanted:
            values = f[name][()]
            if isinstance(values, np.ndarray) and values.dtype.kind in "OS":
                values = np.asarray([x.decode() if isinstance(x, bytes) else str(x)
                                     for x in values.ravel()], dtype=str).reshape(values.shape)
            out[name] = values
    return out, attrs


def _schema(arrays: dict, dims: dict) -> dict:
    return {name: {"dims": dims[name], "shape": [int(x) for x in np.shape(value)],
                   "dtype": "str" if np.asarray(value).dtype.kind in "OUS" else str(value.dtype)}
            for name, value in arrays.items() if name in dims}


def _dims_of(path: str | Path) -> dict:
    """Each variable's dimension names (from the NetCDF dimension scales)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name, var in f.items():
            if "DIMENSION_LIST" not in var.attrs:
                continue
            out[name] = [f[ref[0]].name.lstrip("/") for ref in var.attrs["DIMENSION_LIST"]]
    return out


def verify_chunk(path: str | Path, chunk_id: str, content_hash: str | None = None) -> dict | None:
    """Whether the file at ``path`` is chunk ``chunk_id``, complete: it opens as HDF5/NetCDF,
    its ``chunk_id`` attribute matches, and either its sha256 equals ``content_hash`` (the
    manifest's) or the data hash recomputed from its values
    (:func:`~dlnlab.sweep.chunks.data_hash` over ``hashed_variables``) equals its ``data_hash``
    attribute. Returns ``{"content_hash", "records", "schema", "status", "message"}`` or None
    (missing, truncated, foreign or altered: recompute)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        arrays, attrs = read_chunk_arrays(path)
        if attrs.get("chunk_id") != chunk_id:
            return None
        digest = file_hash(path)
        if content_hash is None or digest != content_hash:
            names = str(attrs.get("hashed_variables", "")).split(",")
            if not all(n in arrays for n in names):
                return None
            if data_hash({n: arrays[n] for n in names}) != attrs.get("data_hash"):
                return None
        statuses = set(np.asarray(arrays["status"]).ravel().tolist())
        messages = json.loads(attrs.get("messages", "{}"))
        return {"content_hash": digest, "records": int(np.shape(arrays["time"])[-1]),
                "schema": _schema(arrays, _dims_of(path)),
                "status": "failed" if "failed" in statuses else "complete",
                "message": "; ".join(f"point {p}: {m}" for p, m in messages.items())}
    except Exception:  # noqa: BLE001 - any reader failure means "not a complete chunk"
        return None


# ------------------------------------------------------------------ the combined dataset
def dimension_names(dims: list[dict]) -> list[str]:
    """Dataset dimension of each sweep dimension: a grid axis by its last part
    (``learning_rate``) unless another axis or a dataset dim has that name (then the dotted name
    with ``_``: ``training_learning_rate``); a zip group by its name (``point``, ``point_2``)."""
    shorts = [d["axes"][0].split(".")[-1] for d in dims]
    names = []
    for d, short in zip(dims, shorts, strict=True):
        if d["zip"]:
            names.append(d["name"])
        elif shorts.count(short) > 1 or short in RESERVED_DIMS:
            names.append(d["axes"][0].replace(".", "_"))
        else:
            names.append(short)
    return names


def _coordinate_values(values: list) -> np.ndarray:
    if all(isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=bool)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return np.asarray(values)
    return np.asarray([json.dumps(v) if not isinstance(v, str) else v for v in values], dtype=str)


def _variables(manifest: dict) -> dict[str, dict]:
    """Combined layout of every chunk variable: its dims in the chunk (with ``slot``), the
    largest sizes of the other dims over the groups' schemas, and its dtype."""
    layout: dict[str, dict] = {}
    sizes: dict[str, int] = {}
    for group in manifest["groups"]:
        for name, entry in (group.get("schema") or {}).items():
            if name in ("point", "run") or "slot" not in entry["dims"]:
                continue
            layout.setdefault(name, {"dims": entry["dims"], "dtype": entry["dtype"]})
            for dim, size in zip(entry["dims"], entry["shape"], strict=True):
                if dim not in ("slot", "method_name"):
                    sizes[dim] = max(sizes.get(dim, 0), size)
    sizes["method_name"] = len(manifest["methods"])
    sizes["record"] = max([c.get("records", 0) for c in manifest["chunks"]]
                          + [sizes.get("record", 0), 1])
    for entry in layout.values():
        entry["rest"] = [d for d in entry["dims"] if d not in ("slot", "method_name")]
        entry["rest_sizes"] = [sizes[d] for d in entry["rest"]]
        entry["per_run"] = "method_name" in entry["dims"]
        entry["numpy_dtype"] = "<U16" if entry["dtype"] == "str" else entry["dtype"]
    return layout


def _fill(name: str, dtype: str):
    if name in FILL:
        return FILL[name]
    return np.nan if dtype.startswith("float") else (-1 if dtype.startswith("int") else "")


#: Points per block of the combined dataset's dask arrays: about this many runs per block.
BLOCK_RUNS = 8192


def _load_block(points: np.ndarray, block_shape: tuple, parts: dict, layout: dict, methods: list,
                runs: int) -> dict:
    """The combined arrays of one block of points (``points``: their flat indices in C order of
    ``block_shape``); ``parts[point]``: ``(path, content_hash, chunk_methods, slot_start,
    run_start, run_stop, status)``; NaN / ``pending`` where no chunk file holds a run. Each
    chunk file is read once per block."""
    nm = len(methods)
    chunks: dict[str, dict] = {}          # each chunk file read once per block
    out = {}
    for name, entry in layout.items():
        shape = (*block_shape, *((nm, runs) if entry["per_run"] else ()), *entry["rest_sizes"])
        out[name] = np.full(shape, _fill(name, entry["dtype"]), dtype=entry["numpy_dtype"])
    for local, point in enumerate(points):
        where = np.unravel_index(local, block_shape)
        for path, _hash, chunk_methods, slot, start, stop, status in parts.get(int(point), ()):
            n = stop - start
            if "status" in out:          # a method this point does not run (a methods axis)
                for m, method in enumerate(methods):
                    if method not in chunk_methods:
                        out["status"][where + (m, slice(start, stop))] = "absent"
            if path is None:
                if status == "failed" and "status" in out:
                    out["status"][where + (slice(None), slice(start, stop))] = "failed"
                continue
            if path not in chunks:
                chunks[path] = read_chunk_arrays(path, list(layout))[0]
            arrays = chunks[path]
            index = [methods.index(m) for m in chunk_methods]
            for name, entry in layout.items():
                value = arrays.get(name)
                if value is None:
                    continue
                if entry["per_run"]:
                    part = value[:, slot:slot + n]
                    rest = tuple(slice(0, k) for k in part.shape[2:])
                    for k, m in enumerate(index):
                        out[name][where + (m, slice(start, stop)) + rest] = part[k]
                elif start == 0:
                    part = value[slot]
                    out[name][where + tuple(slice(0, k) for k in part.shape)] = part
    return out


def _block_sizes(shape: list[int], points_per_block: int) -> list[int]:
    """Block size along each sweep dimension: whole trailing dimensions while they fit, then a
    part of the next one, ones before it (rectangular blocks of at most ``points_per_block``)."""
    sizes = [1] * len(shape)
    room = max(1, points_per_block)
    for axis in reversed(range(len(shape))):
        sizes[axis] = max(1, min(shape[axis], room))
        room //= max(1, shape[axis])
        if room < 1:
            break
    return sizes


def _concatenate(da, blocks: np.ndarray, axis: int = 0):
    """One dask array from an object array of blocks laid out like the sweep dimensions."""
    if blocks.ndim == 0:
        return blocks[()]
    if blocks.ndim == 1:
        parts = list(blocks)
    else:
        parts = [_concatenate(da, blocks[i], axis + 1) for i in range(blocks.shape[0])]
    return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=axis)


#: The per-run variables the summary table needs (:func:`summary_rows`).
SUMMARY_VARIABLES = ("status", "final_loss", "censor_time", "t_half", "t_90", "spectrum")


def open_sweep(out: str | Path, *, lazy: bool | None = None,
               variables: list[str] | tuple[str, ...] | None = None) -> xr.Dataset:
    """The combined result of the sweep in ``out``: ONE dataset.

    Dims: one per sweep dimension (a grid axis by its field's last part, e.g. ``learning_rate``,
    with the values as coordinate; a zip group as ``point`` with one coordinate per axis), then
    ``method_name``, ``run``, ``record`` and the observables' dims. Variables: every recorded
    observable ``(*sweep, method_name, run, record, ...)``, ``time`` ``(*sweep, record)`` (each
    point's record times, t = step x learning rate, NaN past its last record), ``step``,
    ``status`` (``ok``, ``diverged``, ``failed``, ``pending``: a chunk not yet complete,
    ``absent``: a method the point does not run, when ``methods`` is an axis),
    ``diverged_step`` (-1: none), ``final_loss``, ``censor_time`` and ``t_half`` / ``t_90``
    ``(..., mode)`` and the teacher's ``spectrum`` ``(*sweep, mode)`` when the amplitudes were
    recorded. A field given as a list (``task.hidden``) has its values as JSON strings.
    Every variable has ``long_name`` and, where they apply, ``units`` (time-like ones: ``t = step
    x learning rate``; :data:`dlnlab.sweep.attributes.VARIABLE_ATTRIBUTES`). Attributes:
    ``sweep_name``, ``runs_per_point``, chunk counts (``chunks_complete``,
    ``chunks_failed``, ``chunks_pending``), ``complete``.

    Built from ``manifest.json`` alone: with dask installed (``lazy`` None or True) every
    variable is a dask array in blocks of about :data:`BLOCK_RUNS` runs; a block's task reads
    that variable alone from its chunk files (h5py) when values are computed; without dask (or
    ``lazy=False``) everything is read now. Only chunks the manifest lists ``complete`` or
    ``failed`` are read; the others' runs are ``pending`` (NaN). ``variables``: only these
    (e.g. :data:`SUMMARY_VARIABLES`; with ``lazy=False`` each chunk file is then opened once).
    Raises ``ValueError`` (one line) when ``out`` holds no sweep.
    """
    from .. import _validation as v

    if not isinstance(out, str | Path):
        v.fail("out", out, "must be the path of a sweep folder (str or pathlib.Path)")
    if lazy is not None and not isinstance(lazy, bool):
        v.fail("lazy", lazy, "must be True, False or None")
    if variables is not None and (isinstance(variables, str) or not isinstance(variables, list | tuple)
                                  or not all(isinstance(x, str) for x in variables)):
        v.fail("variables", variables, "must be a list of variable names, e.g. ['loss', 'status']")
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise ValueError(f"out={str(out)!r}: no sweep here (manifest.json missing or unreadable)")
    da = None
    if lazy is None or lazy:
        try:
            import dask
            import dask.array as da
        except ImportError:
            if lazy:
                raise ValueError("lazy=True: needs dask (pip install 'dlnlab[dask]')") from None
    methods = manifest["methods"]
    runs = int(manifest["runs"])
    dims = manifest["dims"]
    shape = [len(d["coords"][d["axes"][0]]) for d in dims]
    layout = _variables(manifest)
    if variables is not None:
        from .attributes import VARIABLE_ATTRIBUTES

        known = set(layout) | {n for n in VARIABLE_ATTRIBUTES if n not in ("point", "run", "mode",
                                                                            "method_name")}
        unknown = [name for name in variables if name not in known]
        if unknown:         # a name no chunk can hold (one not recorded yet is simply absent)
            v.fail("variables", list(variables), f"{unknown[0]!r} is not a sweep variable; valid: "
                   f"{', '.join(sorted(known))}")
        layout = {name: entry for name, entry in layout.items() if name in variables}
    parts: dict[int, list] = {}
    counts = {"complete": 0, "failed": 0, "pending": 0}
    covered = 0
    for chunk in manifest["chunks"]:
        status = chunk["status"]
        counts[status] = counts.get(status, 0) + 1
        readable = status in ("complete", "failed") and chunk.get("content_hash")
        path = str(out / chunk["file"]) if readable else None
        chunk_methods = manifest["groups"][chunk["group"]]["methods"]
        slot = 0
        for point, start, stop in chunk["entries"]:
            parts.setdefault(point, []).append((path, chunk.get("content_hash"), chunk_methods,
                                                slot, start, stop, status))
            slot += stop - start
            covered += stop - start
    if covered != math.prod(shape) * runs:
        raise ValueError(f"out={str(out)!r}: manifest.json does not cover every run of every "
                         "point; rerun the sweep to rebuild it")
    names = dimension_names(dims)
    nm = len(methods)

    def full_shape(entry, block):
        return (*block, *((nm, runs) if entry["per_run"] else ()), *entry["rest_sizes"])

    data = {}
    if da is None:
        arrays = _load_block(np.arange(math.prod(shape)), tuple(shape), parts, layout, methods,
                             runs)
    else:
        sizes = _block_sizes(shape, max(1, BLOCK_RUNS // max(runs, 1)))
        grid = [range(0, n, b) for n, b in zip(shape, sizes, strict=True)]
        flat = np.arange(math.prod(shape)).reshape(shape)
        # task names from the folder and the chunks' content (no tokenising of every argument)
        token = hashlib.sha256(json.dumps([str(out.resolve()), [
            (c["id"], c["status"], c.get("content_hash")) for c in manifest["chunks"]]]).encode()
        ).hexdigest()[:16]
        blocks = {name: np.empty([len(g) for g in grid], dtype=object) for name in layout}
        for corner in np.ndindex(*[len(g) for g in grid]):
            region = tuple(slice(g[i], g[i] + b) for g, i, b in zip(grid, corner, sizes, strict=True))
            points = flat[region].ravel()
            block = flat[region].shape
            where = '-'.join(map(str, corner))
            own = dask.delayed({int(p): parts.get(int(p), []) for p in points}, traverse=False,
                               name=f"sweep-parts-{where}-{token}")
            for name, entry in layout.items():       # one variable per task: read only it
                key = f"sweep-{name}-{where}-{token}"
                loaded = dask.delayed(_load_block, pure=False)(
                    points, block, own, {name: entry}, methods, runs, dask_key_name=key)
                blocks[name][corner] = da.from_delayed(loaded[name], full_shape(entry, block),
                                                       dtype=entry["numpy_dtype"])
        arrays = {name: _concatenate(da, blocks[name]) for name in layout}
    for name, entry in layout.items():
        lead = ("method_name", "run") if entry["per_run"] else ()
        data[name] = ((*names, *lead, *entry["rest"]), arrays[name])
    coords: dict = {"method_name": methods, "run": np.arange(runs)}
    for d, name in zip(dims, names, strict=True):
        if d["zip"]:
            coords[name] = np.arange(len(d["coords"][d["axes"][0]]))
            for axis in d["axes"]:
                short = axis.split(".")[-1]
                label = short if short not in names and short not in RESERVED_DIMS else \
                    axis.replace(".", "_")
                coords[label] = (name, _coordinate_values(d["coords"][axis]))
        else:
            coords[name] = _coordinate_values(d["coords"][d["axes"][0]])
    ds = xr.Dataset(data, coords=coords)
    for d, name in zip(dims, names, strict=True):
        if not d["zip"]:
            ds[name].attrs["field"] = d["axes"][0]
        else:
            ds[name].attrs["fields"] = ", ".join(d["axes"])
    if "mode" in ds.dims:
        ds = ds.assign_coords(mode=np.arange(1, ds.sizes["mode"] + 1))
    from .attributes import annotate

    annotate(ds)
    ds.attrs.update(sweep_name=manifest["name"], runs_per_point=runs,
                    chunks_complete=counts.get("complete", 0), chunks_failed=counts.get("failed", 0),
                    chunks_pending=counts.get("pending", 0),
                    complete=str(counts.get("pending", 0) == 0 and counts.get("failed", 0) == 0),
                    time_units="t = step * learning rate", dlnlab_version=manifest["version"])
    return ds


# ------------------------------------------------------------------ summary
def summary_rows(ds: xr.Dataset) -> list[dict]:
    """Per point and method (a method the point does not run, ``absent``, has no row): the sweep
    coordinates, ``runs`` (the runs the statistics cover:
    status ok or diverged), ``diverged``, ``failed``, ``pending``, ``diverged_fraction`` (of the
    covered runs), ``final_loss_median`` (over the covered runs' finite final losses;
    ``"diverged n/N"`` when no covered run has a finite final loss) and per
    teacher mode (``s > 0``) ``t_half_mode<k>`` / ``t_90_mode<k>``: Kaplan-Meier medians with
    the runs that never got there censored at their last record or divergence
    (:func:`dlnlab.analysis.stats.censored_median`), written ``median (crossed/runs)`` or
    ``not reached (> horizon)``. A diverged run never counts as having crossed (its ``t_half`` /
    ``t_90`` are NaN): it is censored at its divergence time."""
    from ..analysis.stats import censored_median

    sweep_dims = [d for d in ds.status.dims if d not in ("method_name", "run")]
    names = [v for v in ("status", "final_loss", "censor_time", "t_half", "t_90", "spectrum")
             if v in ds]
    small = ds[names].load()
    arrays = {}
    for name in names:       # sweep dims flattened first, then method_name, run, mode
        var = small[name]
        rest = [d for d in ("method_name", "run", "mode") if d in var.dims]
        arrays[name] = var.transpose(*sweep_dims, *rest).values.reshape(
            (-1, *[var.sizes[d] for d in rest]))
    shape = [small.sizes[d] for d in sweep_dims]
    labels = []
    for d in sweep_dims:
        labels.append([(d, ds[d].values)] + [(name, coord.values) for name, coord in ds.coords.items()
                                             if coord.dims == (d,) and name != d])
    methods = [str(m) for m in ds.method_name.values]
    rows = []
    for flat, index in enumerate(np.ndindex(*shape)):
        coords = {name: _plain(values[i]) for group, i in zip(labels, index, strict=True)
                  for name, values in group}
        for m, method in enumerate(methods):
            status = arrays["status"][flat, m].astype(str)
            if (status == "absent").all():         # the point does not run this method
                continue
            covered = np.isin(status, ["ok", "diverged"])
            row = dict(coords, method=method, runs=int(covered.sum()),
                       diverged=int((status == "diverged").sum()),
                       failed=int((status == "failed").sum()),
                       pending=int((status == "pending").sum()))
            row["diverged_fraction"] = (row["diverged"] / row["runs"]) if row["runs"] else None
            final = arrays["final_loss"][flat, m][covered] if "final_loss" in arrays else np.zeros(0)
            final = final[np.isfinite(final)]
            row["final_loss_median"] = (float(np.median(final)) if final.size else
                                        f"diverged {row['diverged']}/{row['runs']}" if row["runs"]
                                        else None)
            if "t_half" in arrays and covered.any():
                censor = arrays["censor_time"][flat, m][covered]
                spectrum = (arrays["spectrum"][flat] if "spectrum" in arrays
                            else np.ones(arrays["t_half"].shape[-1]))
                for k in np.flatnonzero(spectrum > 0):
                    for event in ("t_half", "t_90"):
                        row[f"{event}_mode{k + 1}"] = censored_median(
                            arrays[event][flat, m][covered, k], censor)
            rows.append(row)
    return rows


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):               # a censored median
        if value.get("median") is None:
            horizon = value.get("horizon")
            return f"not reached (> {horizon:.4g})" if horizon is not None else "not reached"
        return f"{value['median']:.4g} ({value['crossed']}/{value['runs']})"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else ""
    return str(value)


def write_summary(out: str | Path, rows: list[dict]) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.md`` (atomic), one row per point and method."""
    import csv
    import io

    from ..io.atomic import atomic_write_text

    out = Path(out)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in columns])
    csv_path = atomic_write_text(buffer.getvalue(), out / "summary.csv")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    md_path = atomic_write_text("\n".join(lines) + "\n", out / "summary.md")
    return csv_path, md_path

"""From points to chunks: groups (one compiled program each) and memory-bounded chunks of runs.

Two tiers (docs/sweeps.md, "Two tiers"). A **value field** changes numbers the compiled program
takes as arguments: per-run hyperparameters (learning rate, momentum, temperature, SDE step
size), per-run initial weights generated on the host (init kind, gamma, amplitude), the task's
arrays (seed, label noise (zero or not is a structure), spectrum values), the horizon and record
grid (the step count is traced) and the divergence threshold. Every other field (widths, depth,
batch size, data set size, methods, dtype, recorded variables, ...) is a **shape field**: points
that differ in one belong to different groups. Points of a group share one compiled program; a
chunk holds runs of one group only.
"""

from __future__ import annotations

import copy
import json
import math

from .chunks import ChunkEntry, ChunkSpec
from .config import Point, SweepConfig

#: Dotted fields whose values never change the compiled program (see the module docstring). A
#: method section's ``step_size``, ``temperature`` and ``momentum`` are value fields too.
VALUE_FIELDS = ("seed", "training.learning_rate", "training.horizon", "task.label_noise",
                "task.spectrum", "init.kind", "init.gamma", "init.amplitude", "record.points",
                "record.spacing", "divergence_threshold")
VALUE_SECTION_FIELDS = ("step_size", "temperature", "momentum")

#: Memory one chunk may use by default (bytes): weights, noise blocks and records of its runs.
CHUNK_MEMORY_BYTES = 2 * 2 ** 30
#: Most runs in a default chunk (a chunk is also the unit of resume and of work on a worker).
DEFAULT_MAX_CHUNK_RUNS = 4096


def shape_signature(point: Point) -> str:
    """The point's config with every value field removed (label noise kept as zero / not zero,
    the spectrum as its length, the schedule as its batch sizes): points with the same signature
    share a group."""
    data = point.config.model_dump(mode="json")
    data.pop("name", None)
    data.pop("runs", None)
    for field in VALUE_FIELDS:
        parts = field.split(".")
        target = data
        for part in parts[:-1]:
            target = target.get(part, {})
        value = target.pop(parts[-1], None)
        if field == "task.label_noise":
            target["label_noise_present"] = bool(value)
        if field == "task.spectrum":
            target["rank"] = len(value)
    data["training"]["schedule"] = [s["batch_size"] for s in data["training"]["schedule"]]
    from ..dynamics.registry import METHODS

    for method in METHODS:
        section = data.get(method.name)
        if isinstance(section, dict):
            for field in VALUE_SECTION_FIELDS:
                value = section.pop(field, None)
                if field == "temperature":
                    section["temperature_matched"] = value == "matched"
    return json.dumps(data, sort_keys=True)


def _call_order(point: Point) -> str:
    """Points that share a task and a threshold sort together (one simulate call)."""
    c = point.config
    return json.dumps([c.seed, c.task.label_noise, c.task.spectrum, c.divergence_threshold,
                       [s.time for s in c.training.schedule]])


def per_run_bytes(config, points_per_call: int = 1) -> float:
    """Memory of one run in a chunk (bytes): its weights and method state, a block of noise and
    its records, which a call records at the union of ``points_per_call`` points' record steps
    (:func:`dlnlab.experiments.config.resource_estimate` with one run)."""
    from ..experiments.config import resource_estimate

    one = resource_estimate(config.model_copy(update={"runs": 1}))
    return one["state"] + one["noise"] + one["records"] * max(1, points_per_call)


def chunk_file_bytes_per_run(config) -> float:
    """Bytes one run of ``config`` adds to its chunk file (an estimate): its records
    (:func:`dlnlab.experiments.config.resource_estimate` with one run), its record times and
    steps (8 bytes each, steps per method) and its per-run scalars (status, diverged step, final
    loss, censoring time, ``t_half``/``t_90`` per mode). The files are written uncompressed, so
    this is close to the size on disk (``examples/sweep_quick.toml`` with 144 runs per chunk:
    9.6 kB estimated, 10.0 kB measured per run, file header included)."""
    from ..experiments.config import resource_estimate

    one = resource_estimate(config.model_copy(update={"runs": 1}))
    methods = len(config.methods)
    steps = config.training.horizon / config.training.learning_rate
    points = min(float(config.record.points), steps + 1.0)
    modes = float(min(config.task.d_in, config.task.d_out))
    return one["records"] + 8.0 * points * (1 + methods) + methods * (40.0 + 16.0 * modes)


#: Bytes of a chunk file's HDF5/NetCDF metadata per variable (measured: ~2 kB).
FILE_BYTES_PER_VARIABLE = 2048.0


def chunk_file_overhead_bytes(config) -> float:
    """Bytes of a chunk file that do not grow with its runs: :data:`FILE_BYTES_PER_VARIABLE`
    per variable (the recorded observables and 12 others: time, step, status, ...)."""
    from ..dynamics.observers import observable_names

    names = set(config.record.variables or observable_names(None)) | {"loss"}
    return FILE_BYTES_PER_VARIABLE * (len(names) + 12)


def format_bytes(size: float) -> str:
    """``size`` bytes as ``12 kB`` / ``3.4 MB`` / ``9.7 GB`` / ``1.2 TB`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2g} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size:.0f} B"


def default_chunk_runs(config, runs_per_point: int, points: int,
                       memory: float = CHUNK_MEMORY_BYTES) -> int:
    """The most runs per chunk whose estimated memory (:func:`per_run_bytes`, with the union of
    the record grids of the points a chunk spans) stays within ``memory``; at least one, at most
    :data:`DEFAULT_MAX_CHUNK_RUNS`."""
    runs = DEFAULT_MAX_CHUNK_RUNS
    while runs > 1:
        spanned = min(points, math.ceil(runs / runs_per_point) + 1)
        if runs * per_run_bytes(config, spanned) <= memory:
            break
        runs //= 2
    return max(1, runs)


def plan_chunks(sweep: SweepConfig, points: list[Point]) -> tuple[list[ChunkSpec], list[str]]:
    """Chunks of every group, and the groups' signatures (group ``g`` is ``signatures[g]``).

    Groups are numbered in order of their first point; a group's points are ordered so that
    points sharing a task come together. A chunk holds at most ``sweep.chunk_runs`` runs
    (default :func:`default_chunk_runs`) and never splits a point it shares with another: when a
    point's runs fit in a chunk, the chunk packs ``chunk_runs // runs`` whole points (the last
    chunk of a group fewer); a point with more runs than ``chunk_runs`` fills chunks of its own
    (``ceil(runs / chunk_runs)``), so a chunk id names one point's run range and stays the same
    when other points are added (docs/sweeps.md, "Growing a sweep").
    """
    runs = points[0].config.runs if points else 0
    groups: dict[str, list[Point]] = {}
    for point in points:
        groups.setdefault(shape_signature(point), []).append(point)
    chunks: list[ChunkSpec] = []
    for g, members in enumerate(groups.values()):
        members = sorted(members, key=lambda p: (_call_order(p), p.index))
        size = sweep.chunk_runs or default_chunk_runs(members[0].config, runs, len(members))
        methods = tuple(members[0].config.methods)
        per_chunk = max(1, size // runs) if runs <= size else 1
        current: list[ChunkEntry] = []
        for point in members:
            text = json.dumps(point.config.model_dump(mode="json"), sort_keys=True,
                              separators=(",", ":"))
            if runs <= size:
                current.append(ChunkEntry(point.index, text, 0, runs))
                if len(current) == per_chunk:
                    chunks.append(ChunkSpec(g, tuple(current), methods))
                    current = []
                continue
            for start in range(0, runs, size):
                chunks.append(ChunkSpec(g, (ChunkEntry(point.index, text, start,
                                                       min(runs, start + size)),), methods))
        if current:
            chunks.append(ChunkSpec(g, tuple(current), methods))
    return chunks, list(copy.copy(list(groups)))

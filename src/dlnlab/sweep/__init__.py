"""Sweeps: grids of configs, value axes vectorised inside one compiled call, shape axes grouped,
chunks run in process or on Dask, kill-safe resume, one combined dataset (docs/sweeps.md)."""

from .chunks import ChunkEntry, ChunkOutcome, ChunkSpec, run_chunk
from .config import SweepConfig, load_sweep, point_identity, sweep_from_dict, sweep_to_toml
from .driver import SweepProgress, run_sweep, run_sweep_file
from .executors import Executor, InProcessExecutor
from .from_configs import sweep_from_configs
from .plan import plan_chunks, shape_signature
from .store import open_sweep, read_manifest, summary_rows, verify_chunk

__all__ = [
    "ChunkEntry",
    "ChunkOutcome",
    "ChunkSpec",
    "Executor",
    "InProcessExecutor",
    "SweepConfig",
    "SweepProgress",
    "load_sweep",
    "open_sweep",
    "plan_chunks",
    "point_identity",
    "read_manifest",
    "run_chunk",
    "run_sweep",
    "run_sweep_file",
    "shape_signature",
    "summary_rows",
    "sweep_from_configs",
    "sweep_from_dict",
    "sweep_to_toml",
    "verify_chunk",
]

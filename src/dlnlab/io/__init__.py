"""The one atomic writer/reader (files, datasets, figures, checkpoints) and run directories."""

from .atomic import (
    atomic_path,
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_dataset,
    atomic_write_json,
    atomic_write_npz,
    atomic_write_text,
    netcdf_ready,
    read_dataset,
)
from .rundir import load_results, write_run

__all__ = ["atomic_path", "atomic_save_figure", "atomic_write_bytes", "atomic_write_dataset",
           "atomic_write_json", "atomic_write_npz", "atomic_write_text", "load_results",
           "netcdf_ready", "read_dataset", "write_run"]

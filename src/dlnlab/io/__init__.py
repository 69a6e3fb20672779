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
    strict_json,
    write_error,
)
from .rundir import (
    check_writable,
    is_complete,
    load_results,
    load_summary,
    prepare_run_directory,
    write_run,
)

__all__ = ["atomic_path", "atomic_save_figure", "atomic_write_bytes", "atomic_write_dataset",
           "atomic_write_json", "atomic_write_npz", "atomic_write_text", "check_writable",
           "is_complete", "load_results", "load_summary", "netcdf_ready", "prepare_run_directory",
           "read_dataset", "strict_json", "write_error", "write_run"]

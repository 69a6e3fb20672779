"""Run directories, atomic writes, dataset save/load."""

from .rundir import atomic_write_dataset, atomic_write_text, load_results, write_run

__all__ = ["atomic_write_dataset", "atomic_write_text", "load_results", "write_run"]

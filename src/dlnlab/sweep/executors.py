"""Executors: who runs a sweep's chunks. The in-process one is the embedded default.

An executor takes ``(ChunkSpec, path)`` tasks and calls ``on_done(spec, outcome_or_exception)``
in the driver's process as each finishes; the driver updates the manifest and the progress. It
never raises for one chunk's failure: the exception goes to ``on_done``. Executors are context
managers (set up and tear down workers). :class:`~dlnlab.sweep.dask_executor.DaskExecutor`
runs the same tasks on a ``dask.distributed`` cluster (docs/sweeps.md, "Executors").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .chunks import ChunkOutcome, ChunkSpec, run_chunk

OnDone = Callable[[ChunkSpec, "ChunkOutcome | BaseException"], None]


@runtime_checkable
class Executor(Protocol):
    """Runs chunks: ``run(tasks, on_done)``, used as a context manager."""

    def run(self, tasks: Sequence[tuple[ChunkSpec, str]], on_done: OnDone) -> None: ...

    def __enter__(self): ...

    def __exit__(self, *exc) -> None: ...


class InProcessExecutor:
    """Runs the chunks one after another in this process (nothing to start). An exception from
    :func:`~dlnlab.sweep.chunks.run_chunk` (e.g. the chunk file cannot be written) is passed to
    ``on_done``; ``KeyboardInterrupt`` and other ``BaseException`` s stop the sweep (a rerun
    resumes it). ``run_chunk`` may be replaced (tests inject failures)."""

    def __init__(self, run_chunk: Callable[[ChunkSpec, str], ChunkOutcome] = run_chunk):
        self._run_chunk = run_chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, tasks: Sequence[tuple[ChunkSpec, str]], on_done: OnDone) -> None:
        for spec, path in tasks:
            try:
                outcome = self._run_chunk(spec, path)
            except Exception as error:  # noqa: BLE001 - reported, never fatal for the sweep
                on_done(spec, error)
                continue
            on_done(spec, outcome)

"""The sweep driver: plan, resume, run the chunks on an executor, keep the manifest, summarise.

:func:`run_sweep` is the library call; :func:`run_sweep_file` is ``dlnlab sweep`` (read the
file, choose the executor, show progress, print the summary table). Resume and failure
(docs/sweeps.md, "Resume"): a rerun skips every chunk whose file verifies (its ``chunk_id``
attribute matches and its sha256 equals the manifest's, or, for a file the manifest does not
list yet, its data hash recomputed from its values equals its ``data_hash`` attribute); a chunk
whose simulation raised is written with its runs labelled ``failed`` and listed ``failed``; an
exception from the executor (a worker that died after its retries) is listed ``failed`` with
its message and no file; ``only_failed=True`` reruns exactly the chunks listed ``failed``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import xarray as xr

from .. import __version__
from ..experiments.runner import format_duration
from .chunks import ChunkOutcome, ChunkSpec
from .config import SweepConfig, load_sweep, sweep_to_toml
from .executors import Executor, InProcessExecutor
from .plan import plan_chunks
from .store import (
    MANIFEST_FORMAT,
    SUMMARY_VARIABLES,
    open_sweep,
    read_manifest,
    summary_rows,
    verify_chunk,
    write_manifest,
    write_summary,
)

#: Seconds between manifest writes while chunks finish (always written at the end; a chunk
#: finished but not yet listed is verified from its file on resume, not recomputed).
MANIFEST_SECONDS = 1.0


def _dims_for_manifest(sweep: SweepConfig) -> list[dict]:
    out = []
    for dim in sweep.dimensions():
        coords = {axis: [values[i] for values in dim.values] for i, axis in enumerate(dim.axes)}
        out.append({"name": dim.name, "axes": list(dim.axes), "coords": coords,
                    "zip": dim.name.startswith("point")})
    return out


def _chunk_entry(spec: ChunkSpec) -> dict:
    return {"id": spec.chunk_id, "file": f"chunks/{spec.chunk_id}.nc", "group": spec.group,
            "entries": [[e.point, e.run_start, e.run_stop] for e in spec.entries],
            "runs": spec.num_runs, "status": "pending", "message": "", "content_hash": "",
            "seconds": None, "records": 0}


class SweepProgress:
    """Progress across the whole sweep: points done (every run of the point in a finished
    chunk), runs, runs per second and the time left; a rich bar on a terminal, plain lines off
    it (at most every ``DLNLAB_PROGRESS_SECONDS``, default 10). ``report(done_runs,
    done_points)`` after each chunk."""

    def __init__(self, name: str, total_runs: int, total_points: int, *, stream=None,
                 quiet: bool = False):
        from ..experiments.runner import PROGRESS_ENV, PROGRESS_SECONDS, seconds_from_env

        self.name, self.total_runs, self.total_points = name, total_runs, total_points
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.every = seconds_from_env(PROGRESS_ENV, PROGRESS_SECONDS)
        self.start = time.monotonic()
        self.last = -float("inf")
        self.base_runs = None
        self._rich = None
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(callable(isatty) and isatty())

    def __enter__(self):
        if not self.quiet and self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total} runs"),
                                  TextColumn("{task.fields[points]}"), TimeElapsedColumn(),
                                  TimeRemainingColumn(), console=Console(file=self.stream))
            self._rich.__enter__()
            self._task = self._rich.add_task(f"sweep {self.name}", total=self.total_runs,
                                             points=f"0/{self.total_points} points")
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def begin(self, done_runs: int, done_points: int, tasks: int, orphans: int = 0,
              disk: float | None = None, memory: float | None = None) -> None:
        """The first line: chunks to run (with ``disk``, the estimated bytes of their files, and
        ``memory``, the largest chunk's estimated memory), what is already done and
        (``orphans``) how many chunk files in ``chunks/`` belong to no chunk of this plan (an
        earlier grid's)."""
        from .plan import format_bytes

        self.base_runs = done_runs
        if self.quiet:
            return
        chunks = "1 chunk" if tasks == 1 else f"{tasks} chunks"
        if tasks and disk is not None:
            chunks += f" (~{format_bytes(disk)} of chunk files"
            chunks += f", ~{format_bytes(memory)} memory per chunk)" if memory else ")"
        line = (f"sweep {self.name}: {chunks} to run; {done_points}/{self.total_points} points, "
                f"{done_runs}/{self.total_runs} runs already done")
        if orphans:
            line += f"; {orphan_note(orphans)}"
        if self._rich is not None:
            self._rich.update(self._task, completed=done_runs,
                              points=f"{done_points}/{self.total_points} points")
            self._rich.console.print(line)
            return
        print(line, file=self.stream, flush=True)

    def report(self, done_runs: int, done_points: int, failed: int = 0) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=done_runs,
                              points=f"{done_points}/{self.total_points} points")
            return
        now = time.monotonic()
        if done_runs < self.total_runs and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        new = done_runs - (self.base_runs or 0)
        rate = new / elapsed if elapsed > 0 else 0.0
        line = (f"sweep {self.name}: {done_points}/{self.total_points} points, {done_runs}/"
                f"{self.total_runs} runs ({100.0 * done_runs / max(self.total_runs, 1):.0f}%"
                f"{f', {new} run now' if self.base_runs else ''}), "
                f"{rate:.3g} runs/s, {format_duration(elapsed)} elapsed")
        if failed:
            line += f", {failed} chunks failed"
        if done_runs >= self.total_runs:
            line += ", done"
        elif rate > 0:
            line += f", ~{format_duration((self.total_runs - done_runs) / rate)} left"
        print(line, file=self.stream, flush=True)


def orphan_note(count: int) -> str:
    """What the summary lines say about chunk files of no chunk of the current plan."""
    files = "1 chunk file" if count == 1 else f"{count} chunk files"
    return (f"{files} in chunks/ not in this plan (an earlier grid; kept, not read; listed in "
            "manifest.json 'orphans')")


def orphan_chunk_files(out: Path, chunk_ids) -> list[str]:
    """``chunks/*.nc`` files of ``out`` whose name is no chunk id in ``chunk_ids`` (sorted
    relative paths)."""
    folder = Path(out) / "chunks"
    if not folder.is_dir():
        return []
    ids = set(chunk_ids)
    return sorted(f"chunks/{p.name}" for p in folder.glob("*.nc") if p.stem not in ids)


def _estimate(todo: list[ChunkSpec], points) -> tuple[float, float]:
    """Estimated bytes of the chunk files of ``todo`` and the largest chunk's memory
    (:func:`~dlnlab.sweep.plan.chunk_file_bytes_per_run` per run and
    :func:`~dlnlab.sweep.plan.chunk_file_overhead_bytes` per file; :func:`~dlnlab.sweep.plan.per_run_bytes`
    with the points the chunk spans)."""
    from .plan import chunk_file_bytes_per_run, chunk_file_overhead_bytes, per_run_bytes

    per_point: dict[int, float] = {}
    disk, memory = 0.0, 0.0
    for spec in todo:
        for e in spec.entries:
            if e.point not in per_point:
                per_point[e.point] = chunk_file_bytes_per_run(points[e.point].config)
            disk += per_point[e.point] * e.num_runs
        first = points[spec.entries[0].point].config
        disk += chunk_file_overhead_bytes(first)
        memory = max(memory, spec.num_runs * per_run_bytes(first, len(spec.entries)))
    return disk, memory


def _free_bytes(out: Path) -> float | None:
    """Free bytes on the file system that holds (or will hold) ``out``; None if unknown."""
    import shutil

    path = Path(out).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return None


def run_sweep(sweep: SweepConfig, out: str | Path, *, executor: Executor | None = None,
              only_failed: bool = False, progress: bool | SweepProgress | None = None,
              summary: bool = True) -> xr.Dataset:
    """Run every chunk of ``sweep`` not yet complete in ``out``; returns :func:`open_sweep`.

    ``executor``: default :class:`~dlnlab.sweep.executors.InProcessExecutor`; entered here.
    ``only_failed``: run exactly the chunks the manifest lists ``failed`` (a one-line
    ``ValueError`` when ``out`` has no manifest). ``progress``: ``True`` for progress on stderr
    (rich on a terminal, lines off it), a :class:`SweepProgress`, or None/False for none.
    ``summary``: write ``summary.csv`` / ``summary.md``.

    Writes ``OUT/sweep.toml``, ``OUT/chunks/<chunk_id>.nc`` and ``OUT/manifest.json`` (all
    atomically). The same sweep rerun in the same folder recomputes nothing; a larger grid in
    the same folder reuses every chunk whose content (configs, run indices, version) is
    unchanged (docs/sweeps.md, "Growing a sweep"). Raises ``ValueError`` (one line) for a
    float64 sweep without x64 enabled, and, before anything is written, when the estimated
    chunk files of the runs to run exceed the free space at ``out``.
    """
    import jax

    from .. import _validation as v
    from ..io.atomic import atomic_write_text

    if not isinstance(sweep, SweepConfig):
        v.fail("sweep", sweep, "must be a SweepConfig from dlnlab.sweep.load_sweep(path) (or call "
               "run_sweep_file(path))")
    if not isinstance(out, str | Path):
        v.fail("out", out, "must be the path of the sweep folder (str or pathlib.Path)")
    if executor is not None and not isinstance(executor, Executor):
        v.fail("executor", executor, "must be an executor (InProcessExecutor(), DaskExecutor(...)) "
               "or None")
    for name, flag in (("only_failed", only_failed), ("summary", summary)):
        if not isinstance(flag, bool):
            v.fail(name, flag, "must be True or False")
    if progress is not None and not isinstance(progress, bool | SweepProgress):
        v.fail("progress", progress, "must be True, False, None or a SweepProgress")
    out = Path(out)
    points = sweep.points()
    if any(p.config.dtype == "float64" for p in points) and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64': enable x64 first (jax.config.update('jax_enable_x64', "
                         "True)); the dlnlab CLI does it")
    chunks, signatures = plan_chunks(sweep, points)
    old = read_manifest(out)
    if only_failed and old is None:
        raise ValueError(f"only_failed=True: out={str(out)!r} has no manifest.json; run the sweep "
                         "first")
    old_chunks = {c["id"]: c for c in (old or {}).get("chunks", [])}
    methods: list[str] = []
    for p in points:
        for m in p.config.methods:
            if m not in methods:
                methods.append(m)
    manifest = {
        "format": MANIFEST_FORMAT, "name": sweep.name, "version": __version__,
        "runs": points[0].config.runs, "methods": methods, "dims": _dims_for_manifest(sweep),
        "groups": [{"methods": list(chunks_of[0].methods) if (chunks_of := [
            c for c in chunks if c.group == g]) else [], "schema": None}
            for g in range(len(signatures))],
        "chunks": [_chunk_entry(c) for c in chunks],
        "orphans": orphan_chunk_files(out, [c.chunk_id for c in chunks]),
    }
    entries = {e["id"]: e for e in manifest["chunks"]}
    # resume: verify what is on disk
    for spec in chunks:
        entry = entries[spec.chunk_id]
        previous = old_chunks.get(spec.chunk_id, {})
        found = verify_chunk(out / entry["file"], spec.chunk_id,
                             previous.get("content_hash") or None)
        if found is not None:
            entry.update(status=found["status"], content_hash=found["content_hash"],
                         records=found["records"], message=found["message"],
                         seconds=previous.get("seconds"))
            manifest["groups"][spec.group]["schema"] = found["schema"]
        elif previous.get("status") == "failed":       # the executor failed it: no file
            entry.update(status="failed", message=previous.get("message", ""))
    if only_failed:
        todo = [c for c in chunks if entries[c.chunk_id]["status"] == "failed"]
    else:
        todo = [c for c in chunks if entries[c.chunk_id]["status"] != "complete"]
    disk, memory = _estimate(todo, points)
    free = _free_bytes(out)
    if todo and free is not None and disk > free:
        from .plan import format_bytes

        runs_todo = sum(c.num_runs for c in todo)
        raise ValueError(f"out={str(out)!r}: the {runs_todo} runs to run need ~{format_bytes(disk)} "
                         f"of chunk files; {format_bytes(free)} free there (fewer runs or points, "
                         "fewer record.points or record.variables, or another folder)")
    atomic_write_text(sweep_to_toml(sweep), out / "sweep.toml")
    write_manifest(out, manifest)

    runs_per_point = manifest["runs"]
    point_chunks: dict[int, set[str]] = {}
    for spec in chunks:
        for e in spec.entries:
            point_chunks.setdefault(e.point, set()).add(spec.chunk_id)
    finished = {c.chunk_id for c in chunks if entries[c.chunk_id]["status"] == "complete"}
    total_runs = len(points) * runs_per_point

    def counts():
        done_runs = sum(entries[c]["runs"] for c in finished)
        done_points = sum(1 for ids in point_chunks.values() if ids <= finished)
        return done_runs, done_points

    if isinstance(progress, SweepProgress):
        reporter = progress
    else:
        reporter = SweepProgress(sweep.name, total_runs, len(points), quiet=not progress)
    last_write = [time.monotonic()]
    failures = [0]

    def on_done(spec: ChunkSpec, result: ChunkOutcome | BaseException) -> None:
        entry = entries[spec.chunk_id]
        if isinstance(result, BaseException):
            text = " ".join(str(result).split()) or type(result).__name__
            entry.update(status="failed", message=f"{type(result).__name__}: {text}"[:2000],
                         content_hash="", records=0)
            failures[0] += 1
        else:
            entry.update(status="complete" if result.status == "ok" else "failed",
                         message=result.message, content_hash=result.content_hash,
                         seconds=round(result.seconds, 3), records=result.records)
            if manifest["groups"][spec.group]["schema"] is None:
                manifest["groups"][spec.group]["schema"] = result.schema
            if result.status != "ok":
                failures[0] += 1
        finished.add(spec.chunk_id)
        now = time.monotonic()
        if now - last_write[0] >= MANIFEST_SECONDS:
            write_manifest(out, manifest)
            last_write[0] = now
        reporter.report(*counts(), failures[0])

    own = executor is None
    executor = InProcessExecutor() if own else executor
    tasks = [(spec, str(out / entries[spec.chunk_id]["file"])) for spec in todo]
    with reporter:
        reporter.begin(*counts(), len(tasks), len(manifest["orphans"]), disk, memory)
        if tasks:
            (out / "chunks").mkdir(parents=True, exist_ok=True)
            with executor:
                executor.run(tasks, on_done)
    write_manifest(out, manifest)
    if summary:
        write_summary(out, summary_rows(open_sweep(out, lazy=False, variables=SUMMARY_VARIABLES)))
    return open_sweep(out)


def run_sweep_file(path: str | Path, *, out: str | Path | None = None,
                   local_cluster: int | None = None, scheduler: str | None = None,
                   only_failed: bool = False, quiet: bool = False,
                   overrides: list[str] | None = None) -> Path:
    """``dlnlab sweep PATH``: load the sweep file, run it (in this process, on a Dask
    ``LocalCluster`` of ``local_cluster`` processes, or on the scheduler at ``scheduler``) into
    ``out`` (default ``sweeps/<name>``), print the summary table unless ``quiet``; returns the
    folder. One-line ``ValueError`` for a bad file, a bad option or both executors at once."""
    from .. import _validation as v

    if not isinstance(path, str | Path):
        v.fail("path", path, "must be the path of a sweep file (str or pathlib.Path)")
    for name, flag in (("only_failed", only_failed), ("quiet", quiet)):
        if not isinstance(flag, bool):
            v.fail(name, flag, "must be True or False")
    if local_cluster is not None and scheduler is not None:
        raise ValueError(f"--local-cluster={local_cluster} and --scheduler={scheduler!r}: give "
                         "one of them")
    if local_cluster is not None:
        v.positive_int("--local-cluster", local_cluster)
    if scheduler is not None:
        from .dask_executor import check_scheduler_address

        check_scheduler_address("--scheduler", scheduler)
    sweep = load_sweep(path, overrides)
    out = Path("sweeps") / sweep.name if out is None else Path(out)
    if local_cluster is None and scheduler is None:
        data = run_sweep(sweep, out, only_failed=only_failed, progress=not quiet)
    else:
        from contextlib import ExitStack

        from .dask_executor import DaskExecutor

        executor = DaskExecutor(local_cluster=local_cluster, scheduler=scheduler)
        with ExitStack() as stack:
            if scheduler is not None:       # connect before anything is written or printed
                try:
                    stack.enter_context(executor)
                except OSError as error:
                    raise OSError(str(error).replace("scheduler=", "--scheduler=", 1)) from None
            data = run_sweep(sweep, out, executor=executor, only_failed=only_failed,
                             progress=not quiet)
    if not quiet:
        print_summary(out, data)
    return out


def print_summary(out: Path, data: xr.Dataset, limit: int = 40) -> None:
    """The summary table (the first ``limit`` rows of ``OUT/summary.csv``, written by
    :func:`run_sweep`) and where the files are."""
    import csv

    from rich.console import Console
    from rich.table import Table

    with open(Path(out) / "summary.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    console = Console(width=None if sys.stdout.isatty() else 200)
    if len(rows) > 1:
        body = rows[1:]
        table = Table(title=f"sweep {data.attrs.get('sweep_name')}: {len(body)} point x method rows"
                            + (f" (first {limit})" if len(body) > limit else ""))
        for column in rows[0]:
            table.add_column(column)
        for row in body[:limit]:
            table.add_row(*row)
        console.print(table)
    state = ("complete" if data.attrs.get("complete") == "True" else
             f"{data.attrs.get('chunks_failed')} chunks failed, "
             f"{data.attrs.get('chunks_pending')} pending")
    orphans = len((read_manifest(out) or {}).get("orphans", []))
    note = f"; {orphan_note(orphans)}" if orphans else ""
    console.print(f"{out}: {state}; summary.csv, summary.md, manifest.json; "
                  f"open with dlnlab.sweep.open_sweep({str(out)!r}){note}")

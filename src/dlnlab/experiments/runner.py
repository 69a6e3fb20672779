"""``run_to_directory``: what ``dlnlab run`` does, as one library call.

Config -> validated -> the run directory checked before any simulation
(:func:`dlnlab.io.rundir.prepare_run_directory`: a file, an unwritable folder or another config's
results are refused unless ``overwrite``; a complete run of the same config is reused) ->
``run_experiment`` (per-method checkpoints and finished methods in ``RUN/.work-<digest>``, so a
run killed at any moment resumes with identical results) -> figures -> the run directory,
committed with ``summary.json`` last -> a table.

Progress goes to stderr: rich bars on a terminal; elsewhere (CI, ``nohup``, pipes) one line per
method when it starts and then at most every :data:`PROGRESS_SECONDS`
(``sgd: 1234/10000 steps (12%), 3.2 s elapsed, ~24 s left``); nothing with ``quiet``. Two
environment variables tune the intervals (tests use them): ``DLNLAB_PROGRESS_SECONDS`` (the line
interval) and ``DLNLAB_CHECKPOINT_SECONDS`` (the engine's checkpoint interval, default 60 s);
each a number of seconds >= 0.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from pathlib import Path

from .config import config_to_toml, load_config
from .run import run_experiment, summarise
from .run_table import print_summary

PROGRESS_SECONDS = 10.0
"""Interval of the progress lines printed when stderr is not a terminal."""
PROGRESS_ENV = "DLNLAB_PROGRESS_SECONDS"
CHECKPOINT_ENV = "DLNLAB_CHECKPOINT_SECONDS"


def seconds_from_env(name: str, default: float) -> float:
    """The number of seconds in environment variable ``name`` (``default`` if unset or empty).
    Raises ``ValueError`` (one line naming the variable) unless it is a finite number >= 0."""
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={text[:40]!r}: must be a number of seconds >= 0")
    return value


def progress_factory(progress, label: str = ""):
    """``factory(method, total) -> update(done, total)``: one rich progress bar per method."""
    def factory(method, total):
        task = progress.add_task(f"{label}:{method}" if label else f"{method:>9}", total=total)

        def update(done, _total):
            progress.update(task, completed=done)
        return update
    return factory


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 07 min``: durations in progress lines."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def line_progress_factory(stream=None, label: str = "", every_seconds: float | None = None,
                          clock=time.monotonic):
    """``factory(method, total) -> update(done, total)`` printing plain progress lines.

    For output that is not a terminal: a line when a method starts (``sgd: starting, 10000
    steps``), then ``sgd: 1234/10000 steps (12%), 3.2 s elapsed, ~24 s left`` at most every
    ``every_seconds`` (default :data:`PROGRESS_SECONDS`, or ``DLNLAB_PROGRESS_SECONDS``) and when
    the method finishes. The time left extrapolates the rate since the first update (which
    includes compilation, and, on a resumed run, starts at the checkpoint). Each line is flushed.
    """
    every = seconds_from_env(PROGRESS_ENV, PROGRESS_SECONDS) if every_seconds is None else every_seconds

    def factory(method, total):
        name = f"{label}:{method}" if label else str(method)
        out = sys.stderr if stream is None else stream
        start = clock()
        state = {"last": start, "base": None}
        print(f"{name}: starting, {total} steps", file=out, flush=True)

        def update(done, total_now=None):
            total_now = total if total_now is None else total_now
            now = clock()
            first = state["base"] is None
            if first:
                state["base"] = (done, now)
            if done < total_now and not first and now - state["last"] < every:
                return
            state["last"] = now
            percent = 100.0 * done / total_now if total_now else 100.0
            line = (f"{name}: {done}/{total_now} steps ({percent:.0f}%), "
                    f"{format_duration(now - start)} elapsed")
            base_done, base_time = state["base"]
            if done >= total_now:
                line += ", done"
            elif done > base_done and now > base_time:
                left = (total_now - done) * (now - base_time) / (done - base_done)
                line += f", ~{format_duration(left)} left"
            print(line, file=out, flush=True)
        return update
    return factory


@contextlib.contextmanager
def progress_reporter(quiet: bool = False, *, stream=None, transient: bool = False):
    """Yield ``None`` when ``quiet``, else ``reporter(label) -> progress factory`` for
    :func:`~dlnlab.experiments.run_experiment`: rich bars when ``stream`` (default stderr) is a
    terminal, plain lines (:func:`line_progress_factory`) when it is not."""
    if quiet:
        yield None
        return
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    if not (callable(isatty) and isatty()):
        every = seconds_from_env(PROGRESS_ENV, PROGRESS_SECONDS)
        yield lambda label="": line_progress_factory(out, label, every)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(file=out), transient=transient) as progress:
        yield lambda label="": progress_factory(progress, label)


def run_to_directory(config_path=None, overrides=None, out=None, *, quiet: bool = False,
                     overwrite: bool = False):
    """Run the experiment of ``config_path`` (+ ``key=value`` overrides) into a run directory.

    ``out`` (default ``runs/<name>``) is checked before any simulation: a complete run of the
    same config is reused (one line says so; its ``results.nc`` and ``summary.json`` are loaded
    and the table reprinted), an unfinished one resumes from its per-method checkpoints and
    finished methods (identical results), a new or empty folder is used. ``overwrite=True``
    recomputes a complete run and replaces results of another config (the old ones stay until
    the new ones are committed).

    Returns ``(run_dir, dataset, summary)``; ``summary`` as written to ``summary.json`` (strict
    JSON: NaN as ``None``).

    Raises ``ValueError`` (one line naming ``out``) for a path that is a file or cannot be
    written, and, without ``overwrite``, for a folder holding another config's results or that
    is not a dlnlab run directory; ``OSError`` (one line naming the file) when writing fails,
    the previous complete run directory left intact.
    """
    from rich.console import Console

    from ..io.atomic import strict_json, write_error
    from ..io.rundir import (
        load_results,
        load_summary,
        prepare_run_directory,
        work_folder,
        write_run,
    )
    from ..plot import experiment_figures

    config = load_config(config_path, overrides)
    out = Path(out) if out is not None else Path("runs") / config.name
    toml = config_to_toml(config)
    checkpoint_seconds = seconds_from_env(CHECKPOINT_ENV, 60.0)
    seconds_from_env(PROGRESS_ENV, PROGRESS_SECONDS)          # a bad value fails before any work
    state = prepare_run_directory(out, toml, overwrite=overwrite)
    work = work_folder(out, toml)
    out_console = Console(width=None if sys.stdout.isatty() else 160)
    if state == "complete":
        print(f"run directory {out} is complete for this config; reusing it "
              "(use --overwrite to recompute)", file=sys.stderr, flush=True)
        data, summary = load_results(out), load_summary(out)
        shutil.rmtree(work, ignore_errors=True)       # left by a kill after the commit
    else:
        if state == "resume":
            print(f"run directory {out}: resuming an unfinished run of this config",
                  file=sys.stderr, flush=True)
        try:
            (work / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(work / "checkpoints", error) from None
        with progress_reporter(quiet) as reporter:
            data = run_experiment(config, progress_factory=None if reporter is None else reporter(""),
                                  checkpoint_dir=work / "checkpoints", partial_dir=work,
                                  checkpoint_seconds=checkpoint_seconds)
        summary = summarise(data)
        summary["config"] = config.model_dump(mode="json")
        summary["provenance"] = {k: v for k, v in data.attrs.items() if k != "config_toml"}
        summary = strict_json(summary)
        write_run(out, toml, data, summary, experiment_figures(data))
        shutil.rmtree(work, ignore_errors=True)
    print_summary(summary, out_console)
    out_console.print(f"run directory: {out}  (results.nc, summary.json, config.toml, figures/)")
    return out, data, summary

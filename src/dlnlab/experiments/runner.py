"""``run_to_directory``: what ``dlnlab run`` does, as one library call.

Config -> validated -> ``run_experiment`` (progress bars, per-method checkpoints and partial
results so an interrupted run resumes) -> figures -> an atomic run directory -> a table.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from .config import config_to_toml, load_config
from .run import run_experiment, summarise
from .run_table import print_summary


def progress_factory(progress, label: str = ""):
    """``factory(method, total) -> update(done, total)``: one rich progress bar per method."""
    def factory(method, total):
        task = progress.add_task(f"{label}:{method}" if label else f"{method:>9}", total=total)

        def update(done, _total):
            progress.update(task, completed=done)
        return update
    return factory


def run_to_directory(config_path=None, overrides=None, out=None, *, quiet: bool = False):
    """Run the experiment of ``config_path`` (+ ``key=value`` overrides) into a run directory.

    Returns ``(run_dir, dataset, summary)``. A rerun into the same directory with the same config
    resumes from the per-method checkpoints and finished methods.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..io.rundir import write_run
    from ..plot import experiment_figures

    config = load_config(config_path, overrides)
    out = Path(out) if out is not None else Path("runs") / config.name
    toml = config_to_toml(config)
    digest = hashlib.sha256(toml.encode()).hexdigest()[:12]
    work = out / f".work-{digest}"
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 110)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=quiet) as progress:
        data = run_experiment(config, progress_factory=None if quiet else progress_factory(progress),
                              checkpoint_dir=work / "checkpoints", partial_dir=work)
    summary = summarise(data)
    summary["config"] = config.model_dump(mode="json")
    summary["provenance"] = {k: v for k, v in data.attrs.items() if k != "config_toml"}
    figures = experiment_figures(data)
    write_run(out, toml, data, summary, figures)
    shutil.rmtree(work, ignore_errors=True)
    out_console = Console(width=None if sys.stdout.isatty() else 120)
    print_summary(summary, out_console)
    out_console.print(f"run directory: {out}  (results.nc, summary.json, config.toml, figures/)")
    return out, data, summary

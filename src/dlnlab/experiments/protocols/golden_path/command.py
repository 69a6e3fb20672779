"""``run_golden_path``: what ``dlnlab golden-path`` does, as one library call; the report text.

Config (+ ``--set`` overrides) -> validated, every arm checked as an experiment -> each arm run or
reused from ``OUT/data/`` (:func:`~dlnlab.experiments.study_runner.cached_experiment`: cached by
the fingerprint of its resolved config, resumable from per-method checkpoints) -> the analysed
dataset -> ``OUT/``: ``config.toml`` (the resolved config; ``dlnlab golden-path OUT/config.toml``
reproduces the run), ``golden_path.nc``, ``golden_path.md`` (the report), ``claims.json`` and
``claims.md``, ``numbers.csv`` and ``numbers.md``, ``figures/*.png`` and ``*.pdf``. Every file
goes through :mod:`dlnlab.io.atomic`. Progress: rich bars on a terminal, plain lines elsewhere
(``DLNLAB_PROGRESS_SECONDS``), nothing with ``quiet``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from ....analysis.claims import format_number, json_safe, verdict_summary
from ....io.atomic import atomic_save_figure, atomic_write_dataset, atomic_write_json, atomic_write_text
from ...study_runner import cached_experiment, claims_markdown, csv_table, fingerprint, markdown_table
from .analysis import analyse
from .config import BUILTIN_ARMS, GoldenPathConfig, arm_configs, config_to_toml, load_golden_path_config
from .report import claims, numbers

FIGURES = ("pattern_distances", "distances", "rank_heatmaps", "modes")


def run_arms(config: GoldenPathConfig, data_dir: Path, *, quiet: bool = False,
             fresh: bool = False) -> tuple[dict[str, xr.Dataset], list[dict]]:
    """Run (or reuse) every arm of ``config`` into ``data_dir``; returns the datasets and one
    row per arm (name, runs, fingerprint, cached, seconds)."""
    from ...runner import PROGRESS_ENV, PROGRESS_SECONDS, progress_reporter, seconds_from_env

    seconds_from_env(PROGRESS_ENV, PROGRESS_SECONDS)     # a bad value fails before any work
    datasets, rows = {}, []
    with progress_reporter(quiet, transient=True) as reporter:
        for arm, experiment in arm_configs(config).items():
            t0 = time.perf_counter()
            ds, cached = cached_experiment(
                experiment, data_dir, fresh=fresh,
                progress_factory=None if reporter is None else reporter(arm))
            datasets[arm] = ds
            rows.append({"arm": arm, "method": experiment.methods[0], "runs": experiment.runs,
                         "fingerprint": fingerprint(experiment), "cached": cached,
                         "seconds": time.perf_counter() - t0})
    return datasets, rows


def run_golden_path(config_path, overrides, out, *, quiet: bool = False) -> Path:
    """Run the Golden-Path protocol of ``config_path`` (``None``: the defaults, the paper's task)
    with ``key=value`` ``overrides`` into ``out`` (default ``golden-path/<name>``); returns the
    output folder. A bad config is one ``ValueError`` line before any work; a failed write one
    ``OSError`` line naming the file. A rerun reuses every cached arm and only re-analyses."""
    from rich.console import Console

    config = load_golden_path_config(config_path, overrides)
    if out is not None and not isinstance(out, (str, Path)):
        raise ValueError(f"out={out!r}: must be a folder path (str or pathlib.Path) or None")
    if not isinstance(quiet, bool):
        raise ValueError(f"quiet={quiet!r}: must be True or False")
    out = Path(out) if out is not None else Path("golden-path") / config.name
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r}: is a file, not a folder")
    t0 = time.perf_counter()
    datasets, arms = run_arms(config, out / "data", quiet=quiet)
    t_sim = time.perf_counter() - t0
    ds = analyse(config, datasets)
    t_analysis = time.perf_counter() - t0 - t_sim
    rows = json_safe(numbers(ds))
    claim_rows = json_safe(claims(ds))
    atomic_write_text(config_to_toml(config), out / "config.toml")
    atomic_write_dataset(ds, out / "golden_path.nc")
    atomic_write_text(csv_table(rows), out / "numbers.csv")
    atomic_write_text("# Golden Path: numbers per arm\n\n" + markdown_table(rows), out / "numbers.md")
    atomic_write_json(claim_rows, out / "claims.json")
    atomic_write_text("# Golden Path: claims\n\n" + claims_markdown([({}, claim_rows)]),
                      out / "claims.md")
    from ....plot.golden_path import golden_path_figures

    for stem, fig in golden_path_figures(ds).items():
        for ext in ("png", "pdf"):
            atomic_save_figure(fig, out / "figures" / f"{stem}.{ext}")
    seconds = time.perf_counter() - t0
    timing = {"simulation_seconds": t_sim, "analysis_seconds": t_analysis, "total_seconds": seconds}
    atomic_write_text(report_markdown(config, ds, rows, claim_rows, arms, timing), out / "golden_path.md")
    atomic_write_json(json_safe({"arms": arms, **timing}), out / "run.json")
    if not quiet:
        console = Console(width=None if sys.stdout.isatty() else 120)
        _print_claims(console, claim_rows)
        console.print(f"golden path: {seconds:.1f} s ({verdict_summary(claim_rows)}) -> "
                      f"{out / 'golden_path.md'}")
    return out


def _print_claims(console, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="Golden Path claims", show_lines=False)
    for header in ("claim", "measured", "verdict"):
        table.add_column(header)
    style = {"supported": "green", "refuted": "red", "not testable": "yellow"}
    for c in rows:
        table.add_row(c["id"], c["measured"], f"[{style[c['verdict']]}]{c['verdict']}[/]")
    console.print(table)


def _interval(row: dict, name: str) -> str:
    low, high = row.get(f"{name}_interval", [None, None])
    return f"{format_number(row[name])} [{format_number(low)}, {format_number(high)}]"


def _diverged_cell(row: dict, ds: xr.Dataset) -> str:
    return f" ({row['diverged']} of {ds.run.size} diverged)" if row["diverged"] else ""


def _record_text(config: GoldenPathConfig, ds: xr.Dataset) -> str:
    """The record times, and why there are fewer than ``record.points``."""
    points = config.record.points
    if ds.time.size == points:
        return f"{points} record times ({config.record.spacing})"
    return (f"{ds.time.size} record times (record.points = {points} on the {config.record.spacing} "
            "grid; times that round to the same step merge, so fewer remain)")


def _escape_text(config: GoldenPathConfig, ds: xr.Dataset) -> str:
    """Each reference's actual escapes (the ``escape`` dim is padded to ``max_escapes`` with NaN)."""
    esc = config.metrics.escape
    parts = []
    for ref in dict.fromkeys(str(r) for r in ds.reference.values):
        arm = str(ds.arm.values[list(map(str, ds.reference.values)).index(ref)])
        times = ds.reference_escape_time.sel(arm=arm).values
        found = times[np.isfinite(times)]
        parts.append(f"{ref} {found.size} escape{'' if found.size == 1 else 's'}"
                     + (f" at t = {', '.join(f'{t:.3g}' for t in found)}" if found.size else ""))
    return (f"{'; '.join(parts)}; each window t_esc - {esc.window:g} ... t_esc + {esc.window:g} "
            f"with {ds.offset.size} offsets (the dataset's `escape` dim has metrics.escape."
            f"max_escapes = {esc.max_escapes} entries, NaN past a reference's last escape)")


def report_markdown(config: GoldenPathConfig, ds: xr.Dataset, rows: list[dict],
                    claim_rows: list[dict], arms: list[dict], timing: dict) -> str:
    """``golden_path.md``: setup, the three predictions and t_cross < t_diag with numbers and
    intervals per arm, the figures, the numbers and claims tables."""
    level = f"{100 * config.metrics.confidence:g}%"
    t = config.task
    lines = [f"# Golden Path report: {config.name}", "",
             "Does SGD, started from the same weights as GD, select the same model? (experiment "
             "notes §1; rules and definitions: docs/golden-path.md)", "",
             "## Setup", "",
             f"- task: d_in = {t.d_in}, widths {list(t.widths)}, depth L = {t.depth}, teacher "
             f"spectrum {t.spectrum}, label noise {t.label_noise:g}; init {config.init.kind}, "
             f"gamma = {config.init.gamma:g}, shared by every arm (seed {config.seed})",
             f"- training: learning rate {config.training.learning_rate:g}, batch size "
             f"{config.training.batch_size}, horizon t = {config.training.horizon:g} "
             f"({config.training.num_steps} steps), {_record_text(config, ds)}; dtype {config.dtype}",
             f"- arms: GD once; {', '.join(config.arms)} with S = {config.seeds} runs each "
             f"(offline arms on one data set of n = {config.offline_samples}, against GD on that "
             "data set)",
             f"- metrics: rank threshold eps = {config.metrics.rank_threshold:g}, top-K = "
             f"{config.metrics.top_k}, floor {config.metrics.floor:g}, {ds.level.size} loss levels, "
             f"{config.metrics.bootstrap_resamples} bootstrap resamples ({level} percentile "
             "intervals over runs)",
             f"- escape windows: {_escape_text(config, ds)}",
             f"- run time: {timing['simulation_seconds']:.1f} s simulation (or cache), "
             f"{timing['analysis_seconds']:.1f} s analysis; arms: "
             + ", ".join(f"{a['arm']} ({_seconds(a)})" for a in arms), ""]
    lines += ["## The predictions", "",
              "Final values (t = horizon), mean over the runs that did not diverge with the "
              f"{level} bootstrap interval; `runs` is how many runs each covers.", "",
              "| arm | runs | 1. parameter distance ‖θ_GD − θ‖/‖θ_GD‖ (large) | cosine | "
              "2. function distance ‖W_GD − W‖/‖W_GD‖ (small) | 3. d_r (ranks) | 3. d_shape per "
              "entry | 4. t_cross < t_diag (pairs) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["runs"] == 0 and r["diverged"]:
            gone = f"all {r['diverged']} runs diverged"
            lines.append(f"| {r['arm']} | 0{_diverged_cell(r, ds)} | " + " | ".join([gone] * 6) + " |")
            continue
        lo, hi = r["d_shape_interval"]
        entries = ds.product.size * ds.k.size
        shape = (f"{format_number(r['d_shape_per_entry'])} [{format_number(_div(lo, entries))}, "
                 f"{format_number(_div(hi, entries))}]")
        lines.append(f"| {r['arm']} | {r['runs']}{_diverged_cell(r, ds)} | "
                     f"{_interval(r, 'relative_parameter_distance')} | "
                     f"{_interval(r, 'cosine_similarity')} | {_interval(r, 'function_distance')} | "
                     f"{_interval(r, 'd_r')} | {shape} | {format_number(r['cross_before_diagonal'])} "
                     f"({r['cross_before_diagonal_pairs']}; GD "
                     f"{format_number(r['reference_cross_before_diagonal'])}) |")
    lines += ["", "Across saddles: d_r at the centre of each escape window (GD's k-th escape; each "
              "run at its escape from the plateau at the same level, runs without one censored):",
              ""]
    for arm in ds.arm.values:
        a = ds.sel(arm=arm).sel(offset=0.0, method="nearest")
        parts = []
        for e in ds.escape.values:
            c = a.sel(escape=e)
            n = int(c.runs_at_checkpoint_window)
            if n:
                parts.append(f"escape {int(e)}: {format_number(float(c.d_r_window))} "
                             f"[{format_number(float(c.d_r_low_window))}, "
                             f"{format_number(float(c.d_r_high_window))}] ({n} runs)")
        lines.append(f"- {arm}: " + ("; ".join(parts) if parts else "no escape found in both GD "
                                                                     "and the runs"))
    lines += ["", "## Verdicts", "", claims_markdown([({}, claim_rows)]), "## Figures", ""]
    captions = {"pattern_distances": "d_r, d_sigma, d_shape on time, loss-level and escape axes",
                "distances": "parameter vs function distance (log scale)",
                "rank_heatmaps": "r_ij heatmaps: GD beside each arm's mean",
                "modes": "cross-mode and diagonal-mode trajectories with t_cross / t_diag"}
    for stem in FIGURES:
        lines += [f"![{captions[stem]}](figures/{stem}.png)", ""]
    lines += ["## Numbers", "", markdown_table(rows), "",
              "Arms: " + "; ".join(f"{k}: {v}" for k, v in BUILTIN_ARMS.items()), ""]
    return "\n".join(lines)


def _seconds(arm: dict) -> str:
    return "cached" if arm["cached"] else f"{arm['seconds']:.1f} s"


def _div(x, n):
    return None if x is None or not np.isfinite(x) else x / n

"""``reproduce``: what ``dlnlab reproduce NAME|all`` does, as one library call.

For each recipe: run (or reuse) its experiments, build the figure's dataset, and write
``OUT/NAME/``: ``NAME.png``, ``NAME.pdf``, ``NAME.nc`` (the figure's dataset), ``numbers.csv``,
``numbers.md``, ``claims.json`` and ``recipe.json`` (command, run time, experiments). Then
``OUT/claims.md``, ``OUT/claims.json`` and ``OUT/reproduction.md`` are rebuilt from every recipe
folder present, so running figures one at a time gives the same report as ``all``.

Experiments are cached in ``OUT/data/`` under a fingerprint of their config and the dlnlab
version: figures that share an experiment (fig2, fig3, fig6) run it once, a rerun only redraws,
and an interrupted run resumes from per-method checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from .experiments import cached_experiment, fingerprint
from .recipes import RECIPES

VERDICT_ORDER = ("supported", "refuted", "not testable")


def resolve_names(names) -> list[str]:
    """``all`` or recipe names (in the paper's order, without repeats); one-line error else."""
    if isinstance(names, str):
        names = [names]
    names = list(names or [])
    if not names:
        raise ValueError(f"name=[]: give a figure ({', '.join(RECIPES)}) or 'all'")
    if "all" in names:
        return list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ValueError(f"name={unknown[0]!r}: unknown figure; one of {', '.join(RECIPES)}, all")
    return [n for n in RECIPES if n in names]


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)).replace("|", "\\|") for k in keys) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    import csv
    import io

    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                         for k, v in row.items()})
    return buffer.getvalue()


def _save_figure(fig, folder: Path, name: str) -> None:
    import matplotlib.pyplot as plt

    for ext in ("png", "pdf"):
        target = folder / f"{name}.{ext}"
        tmp = folder / f"{name}.tmp.{ext}"
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, target)
    plt.close(fig)


def reproduce(names="all", *, quick: bool = False, out=None, fresh: bool = False,
              quiet: bool = False) -> dict:
    """Reproduce figures of the paper into ``out`` (default ``reproduction`` or
    ``reproduction-quick``). Returns ``{name: {"seconds": ..., "claims": [...]}}``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..experiments.runner import progress_factory
    from ..io.rundir import atomic_write_dataset, atomic_write_text

    names = resolve_names(names)
    out = Path(out) if out is not None else Path("reproduction-quick" if quick else "reproduction")
    data_dir = out / "data"
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 110)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn())
    recomputed: set[str] = set()
    results = {}
    for name in names:
        recipe = RECIPES[name]
        t0 = time.perf_counter()
        configs = recipe.experiments(quick)
        datasets, experiments = {}, []
        with Progress(*columns, console=console, disable=quiet, transient=True) as progress:
            for key, config in configs.items():
                digest = fingerprint(config)
                again = fresh and digest not in recomputed
                ds, cached = cached_experiment(
                    config, data_dir, fresh=again,
                    progress_factory=None if quiet else progress_factory(progress,
                                                                        f"{name}:{key}"))
                recomputed.add(digest)
                datasets[key] = ds
                seconds = sum(float(part.split("=")[1]) for part in
                              str(ds.attrs.get("timings_seconds", "")).split(", ") if "=" in part)
                experiments.append({"key": key, "name": config.name, "fingerprint": digest,
                                    "file": f"data/{config.name}-{digest}.nc", "cached": cached,
                                    "runs": config.runs, "methods": list(config.methods),
                                    "simulation_seconds": seconds})
        figure_ds = recipe.analyse(datasets)
        numbers = _clean(recipe.numbers(figure_ds))
        claims = _clean(recipe.claims(figure_ds))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        figure_ds.attrs.update(recipe=name, title=recipe.title, paper=recipe.paper,
                               size="quick" if quick else "full",
                               time_units="t = step * learning rate (step * h for the SDEs)")
        atomic_write_dataset(figure_ds, folder / f"{name}.nc")
        _save_figure(recipe.figure(figure_ds), folder, name)
        atomic_write_text(csv_table(numbers), folder / "numbers.csv")
        atomic_write_text(f"# {name}: {recipe.title}\n\n" + markdown_table(numbers),
                          folder / "numbers.md")
        atomic_write_text(json.dumps(claims, indent=2, default=_json_default) + "\n",
                          folder / "claims.json")
        seconds = time.perf_counter() - t0
        meta = {"name": name, "title": recipe.title, "paper": recipe.paper,
                "command": f"dlnlab reproduce {name}{' --quick' if quick else ''}",
                "size": "quick" if quick else "full", "wall_seconds": seconds,
                "simulation_seconds": sum(e["simulation_seconds"] for e in experiments),
                "experiments": experiments}
        atomic_write_text(json.dumps(meta, indent=2, default=_json_default) + "\n",
                          folder / "recipe.json")
        results[name] = {"seconds": seconds, "claims": claims, "folder": str(folder)}
        verdicts = ", ".join(f"{sum(c['verdict'] == v for c in claims)} {v}" for v in VERDICT_ORDER
                             if any(c["verdict"] == v for c in claims))
        console.print(f"{name}: {seconds:.1f} s -> {folder / (name + '.png')}  ({verdicts})")
    write_report(out)
    if not quiet:
        print_claims(out, Console(width=None if sys.stdout.isatty() else 120))
    return results


def collect(out: Path) -> list[tuple[dict, list[dict]]]:
    """``(recipe meta, claims)`` of every finished recipe folder in ``out``, in paper order."""
    found = []
    for name in RECIPES:
        meta_path, claims_path = out / name / "recipe.json", out / name / "claims.json"
        if meta_path.exists() and claims_path.exists():
            found.append((json.loads(meta_path.read_text()), json.loads(claims_path.read_text())))
    return found


def claims_markdown(found) -> str:
    lines = ["| claim | paper | figure | measured | criterion | verdict |", "|---|---|---|---|---|---|"]
    for _, claims in found:
        for c in claims:
            cells = [c["claim"], c["paper"], c["figure"], c["measured"], c["criterion"],
                     f"**{c['verdict']}**"]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(out: Path, image_root: str = "") -> str:
    """The report: every figure with its command and run time, then the claims table."""
    found = collect(out)
    parts = []
    for meta, claims in found:
        name = meta["name"]
        parts.append(f"## {name}: {meta['title']} ({meta['paper']})\n")
        parts.append(f"![{name}]({image_root}{name}/{name}.png)\n")
        runs = ", ".join(f"{e['name']} ×{e['runs']} runs" for e in meta["experiments"])
        parts.append(f"`{meta['command']}` — run time: {meta['simulation_seconds']:.0f} s of "
                     "simulation (an experiment shared between figures counts for each; a rerun "
                     f"reuses it and only redraws). Experiments: {runs}. "
                     f"Numbers: `{name}/numbers.md`; dataset: `{name}/{name}.nc`.\n")
        for c in claims:
            parts.append(f"- **{c['verdict']}** — {c['claim']} {c['measured']}.\n")
        parts.append("")
    parts.append("## Claims\n")
    parts.append(claims_markdown(found))
    return "\n".join(parts)


def write_report(out: Path) -> None:
    from ..io.rundir import atomic_write_text

    found = collect(out)
    all_claims = [c for _, claims in found for c in claims]
    atomic_write_text(json.dumps(all_claims, indent=2, default=_json_default) + "\n",
                      out / "claims.json")
    atomic_write_text("# Claims of the SGD-in-DLNs paper, as measured by dlnlab\n\n"
                      + claims_markdown(found), out / "claims.md")
    atomic_write_text("# Reproduction report\n\n" + report_markdown(out), out / "reproduction.md")


def print_claims(out: Path, console) -> None:
    from rich.table import Table

    table = Table(title=f"Claims ({out / 'claims.md'})", show_lines=False)
    for header in ("figure", "claim", "verdict"):
        table.add_column(header)
    style = {"supported": "green", "refuted": "red", "not testable": "yellow"}
    for _, claims in collect(out):
        for c in claims:
            table.add_row(c["figure"], c["claim"], f"[{style[c['verdict']]}]{c['verdict']}[/]")
    console.print(table)

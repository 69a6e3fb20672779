"""Run studies into an output folder: the experiment cache, per-study folders, the claims report.

For each study of a :class:`~dlnlab.experiments.study.Paper` (or any collection given as one):
run (or reuse) its experiments, build its dataset, and write ``OUT/NAME/``: ``NAME.png``,
``NAME.pdf``, ``NAME.nc`` (the study's dataset), ``numbers.csv``, ``numbers.md``,
``claims.json`` and ``study.json`` (command, run time, experiments). Then ``OUT/claims.md``,
``OUT/claims.json`` and ``OUT/reproduction.md`` (titled from the paper) are rebuilt from every
study folder present, so running studies one at a time gives the same report as ``all``.

Experiments are cached in ``OUT/data/`` as ``NAME-<fingerprint>.nc`` (with the resolved
``.toml``), the fingerprint being a hash of the resolved config TOML and the dlnlab version:
studies that share an experiment run it once, a rerun only redraws, and an interrupted run
resumes from the engine's per-method checkpoints. A study with a ``data`` part computes its
experiments together instead (the first paper's fig9 and fig10: one sweep of
:mod:`dlnlab.sweep` in ``OUT/data/<study>-sweep-<hash>/``, resumed chunk by chunk); its
``study.json`` records that folder under ``computed_together`` and, per experiment, the manifest
as ``file`` and its ``point``. ``fresh`` recomputes each experiment (or sweep) once per call.

Progress goes to stderr (:func:`dlnlab.experiments.runner.progress_reporter`): rich bars on a
terminal, plain lines at most every 10 s elsewhere (CI, ``nohup``, pipes), nothing with
``quiet``. Every file is written through :mod:`dlnlab.io.atomic`: a failed write is one
``OSError`` line naming the file, and the previous file stays intact.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import xarray as xr

from .. import __version__
from ..analysis.claims import json_safe, verdict_summary
from ..io.atomic import (
    atomic_save_figure,
    atomic_write_dataset,
    atomic_write_json,
    atomic_write_text,
    read_dataset,
)
from .config import ExperimentConfig, config_to_toml
from .study import Paper

META_FILE = "study.json"


def fingerprint(config: ExperimentConfig) -> str:
    """What a cached dataset was computed from: the resolved config and the dlnlab version."""
    text = config_to_toml(config) + __version__
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_experiment(config: ExperimentConfig, data_dir: Path, *, progress_factory=None,
                      fresh: bool = False) -> tuple[xr.Dataset, bool]:
    """The dataset of ``config`` from ``data_dir`` if a run of the same config and version is
    there, else run it (resumable: per-method checkpoints and finished methods live in a work
    folder until the dataset is written). Returns ``(dataset, was_cached)``."""
    from .run import run_experiment

    data_dir = Path(data_dir)
    digest = fingerprint(config)
    path = data_dir / f"{config.name}-{digest}.nc"
    if path.exists() and not fresh:
        return read_dataset(path, what="cached experiment"), True
    work = data_dir / f".work-{config.name}-{digest}"
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    data = run_experiment(config, progress_factory=progress_factory,
                          checkpoint_dir=work / "checkpoints", partial_dir=work)
    atomic_write_dataset(data, path)
    atomic_write_text(config_to_toml(config), data_dir / f"{config.name}-{digest}.toml")
    shutil.rmtree(work, ignore_errors=True)
    return data, False


# ----------------------------------------------------------------------------------- tables


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def _columns(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys


def markdown_table(rows: list[dict]) -> str:
    """Rows (dicts, keys in order of first appearance) as a Markdown table; missing cells "–"."""
    keys = _columns(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)).replace("|", "\\|") for k in keys) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    """Rows as CSV (lists and dicts as JSON in their cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                         for k, v in row.items()})
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- running


def _simulation_seconds(ds: xr.Dataset) -> float:
    return sum(float(part.split("=")[1]) for part in
               str(ds.attrs.get("timings_seconds", "")).split(", ") if "=" in part)


def run_studies(paper: Paper, names="all", *, quick: bool = False, out, fresh: bool = False,
                quiet: bool = False, command: str = "dlnlab reproduce") -> dict:
    """Run the studies ``names`` (``"all"`` or names, see :meth:`Paper.resolve`) of ``paper``
    into ``out``. ``command`` prefixes the command recorded per study
    (``COMMAND PAPER NAME [--quick]``). Returns ``{name: {"seconds", "claims", "folder"}}``."""
    from rich.console import Console

    from .runner import progress_reporter

    names = paper.resolve(names)
    out = Path(out)
    data_dir = out / "data"
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 110)
    recomputed: set[str] = set()
    results = {}
    for name in names:
        study = paper.study(name)
        t0 = time.perf_counter()
        configs = study.experiments(quick)
        datasets, experiments, together = {}, [], None
        if study.data is not None:
            digests = [fingerprint(config) for config in configs.values()]
            again = fresh and not set(digests) <= recomputed
            datasets, together = study.data(configs, data_dir, fresh=again, progress=not quiet)
            recomputed.update(digests)
            missing = sorted(set(configs) - set(datasets))
            if missing:
                raise ValueError(f"data={missing}: study {name!r} computed no dataset for these "
                                 "experiments")
            folder_name = together["folder"]
            for (key, config), digest in zip(configs.items(), digests, strict=True):
                experiments.append({"key": key, "name": config.name, "fingerprint": digest,
                                    "file": f"data/{folder_name}/manifest.json",
                                    "cached": bool(together["cached"]), "runs": config.runs,
                                    "methods": list(config.methods),
                                    "point": together.get("points", {}).get(key)})
        with progress_reporter(quiet, transient=True) as reporter:
            for key, config in ({} if study.data is not None else configs).items():
                digest = fingerprint(config)
                again = fresh and digest not in recomputed
                ds, cached = cached_experiment(
                    config, data_dir, fresh=again,
                    progress_factory=None if reporter is None else reporter(f"{name}:{key}"))
                recomputed.add(digest)
                datasets[key] = ds
                experiments.append({"key": key, "name": config.name, "fingerprint": digest,
                                    "file": f"data/{config.name}-{digest}.nc", "cached": cached,
                                    "runs": config.runs, "methods": list(config.methods),
                                    "simulation_seconds": _simulation_seconds(ds)})
        study_ds = study.analyse(datasets)
        numbers = json_safe(study.numbers(study_ds))
        claims = json_safe(study.claims(study_ds))
        folder = out / name
        study_ds.attrs.update(study=name, title=study.title, reference=study.reference,
                              paper=paper.name, size="quick" if quick else "full",
                              time_units="t = step * learning rate (step * h for the SDEs)")
        atomic_write_dataset(study_ds, folder / f"{name}.nc")
        fig = study.figure(study_ds)
        for ext in ("png", "pdf"):
            atomic_save_figure(fig, folder / f"{name}.{ext}")
        atomic_write_text(csv_table(numbers), folder / "numbers.csv")
        atomic_write_text(f"# {name}: {study.title}\n\n" + markdown_table(numbers),
                          folder / "numbers.md")
        atomic_write_json(claims, folder / "claims.json")
        seconds = time.perf_counter() - t0
        meta = {"name": name, "title": study.title, "reference": study.reference,
                "paper": paper.name,
                "command": f"{command} {paper.name} {name}{' --quick' if quick else ''}",
                "size": "quick" if quick else "full", "wall_seconds": seconds,
                "simulation_seconds": (float(together["simulation_seconds"]) if together
                                       else sum(e["simulation_seconds"] for e in experiments)),
                "experiments": experiments}
        if together is not None:
            meta["computed_together"] = {**together, "folder": f"data/{together['folder']}"}
        atomic_write_json(meta, folder / META_FILE)
        results[name] = {"seconds": seconds, "claims": claims, "folder": str(folder)}
        console.print(f"{name}: {seconds:.1f} s -> {folder / (name + '.png')}  "
                      f"({verdict_summary(claims)})")
    write_report(paper, out)
    if not quiet:
        print_claims(paper, out, Console(width=None if sys.stdout.isatty() else 120))
    return results


# ----------------------------------------------------------------------------------- report


def collect(paper: Paper, out: Path) -> list[tuple[dict, list[dict]]]:
    """``(study meta, claims)`` of every finished study folder of ``paper`` in ``out``, in the
    paper's order."""
    found = []
    for name in paper.names:
        meta_path, claims_path = out / name / META_FILE, out / name / "claims.json"
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


def report_markdown(paper: Paper, out: Path, image_root: str = "") -> str:
    """The report body: every study with its command and run time, then the claims table."""
    found = collect(paper, Path(out))
    parts = []
    for meta, claims in found:
        name = meta["name"]
        size = " — quick size" if meta.get("size") == "quick" else ""
        parts.append(f"## {name}: {meta['title']} ({meta['reference']}){size}\n")
        parts.append(f"![{name}]({image_root}{name}/{name}.png)\n")
        runs = ", ".join(f"{e['name']} ×{e['runs']} runs" for e in meta["experiments"])
        parts.append(f"`{meta['command']}` — run time: {meta['simulation_seconds']:.0f} s of "
                     "simulation (an experiment shared between studies counts for each; a rerun "
                     f"reuses it and only redraws). Experiments: {runs}. "
                     f"Numbers: `{name}/numbers.md`; dataset: `{name}/{name}.nc`.\n")
        together = meta.get("computed_together")
        if together:
            chunks = together.get("chunks")
            parts.append(f"Computed together as one sweep, `{together['folder']}/`"
                         + (f" ({chunks} chunk{'s' if chunks != 1 else ''})" if chunks else "")
                         + (f": {together['keys']}" if together.get("keys") else "") + ".\n")
        for c in claims:
            parts.append(f"- **{c['verdict']}** — {c['claim']} {c['measured']}.\n")
        parts.append("")
    parts.append("## Claims\n")
    parts.append(claims_markdown(found))
    return "\n".join(parts)


def write_report(paper: Paper, out: Path) -> None:
    """``OUT/claims.json``, ``OUT/claims.md`` and ``OUT/reproduction.md`` from every study folder
    of ``paper`` present in ``out``."""
    out = Path(out)
    found = collect(paper, out)
    atomic_write_json([c for _, claims in found for c in claims], out / "claims.json")
    source = f"Paper: {paper.citation} (`dlnlab reproduce {paper.name}`).\n\n"
    quick = sorted(meta["name"] for meta, _ in found if meta.get("size") == "quick")
    if quick:
        source += (f"**Quick size** ({', '.join(quick)}): fewer runs, points and steps, so the "
                   "tests have less power and a verdict can differ from the full run's; run "
                   "without `--quick` before citing one.\n\n")
    atomic_write_text(f"# Claims: {paper.title}, as measured by dlnlab\n\n{source}"
                      + claims_markdown(found), out / "claims.md")
    atomic_write_text(f"# Reproduction report: {paper.title}\n\n{source}"
                      + report_markdown(paper, out), out / "reproduction.md")


def print_claims(paper: Paper, out: Path, console) -> None:
    from rich.table import Table

    table = Table(title=f"Claims ({Path(out) / 'claims.md'})", show_lines=False)
    for header in ("figure", "claim", "verdict"):
        table.add_column(header)
    style = {"supported": "green", "refuted": "red", "not testable": "yellow"}
    for _, claims in collect(paper, Path(out)):
        for c in claims:
            table.add_row(c["figure"], c["claim"], f"[{style[c['verdict']]}]{c['verdict']}[/]")
    console.print(table)

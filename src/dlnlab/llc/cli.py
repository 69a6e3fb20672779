"""``dlnlab llc``: the local learning coefficient at a point of an experiment or along its training.
Thin: resolves the config (:func:`dlnlab.llc.training.load_training_config`), calls one library
function, writes ``OUT/llc.nc`` (and, along training, ``OUT/llc.png``/``.pdf``) through
:mod:`dlnlab.io`, prints a short summary.

- ``--at init|solution|end`` -> :func:`dlnlab.llc.training.learning_coefficient_at`
- ``--at along``             -> :func:`dlnlab.llc.training.learning_coefficient_along_training`
  and :func:`dlnlab.plot.llc.along_training_figure`

Registered in the main CLI as ``app.command("llc")(llc_command)``. Bad input raises
``ValueError("field=value: rule")`` before any work, which ``dlnlab.cli.main`` prints as one line
(exit code 2). Library imports happen inside the command so that ``dlnlab --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

AT_CHOICES = ("init", "solution", "end", "along")


def _number(x: float, spec: str = ".4g") -> str:
    return "nan" if x != x else format(x, spec)


def llc_command(
    config: Annotated[Path | None, typer.Argument(
        help="Experiment config (dlnlab run's TOML); default: the paper's task. Without dtype/runs "
             "set: float64, 4 runs.")] = None,
    at: Annotated[str, typer.Option(
        "--at", help="init | solution (balanced aligned factorisation of the teacher) | end (the "
                     "weights at the horizon) | along (checkpoints of training, with figure).")] = "solution",
    methods: Annotated[list[str] | None, typer.Option(
        "--method", help="Training method (repeatable for --at along; default gd and sgd there, "
                         "gd otherwise).")] = None,
    run: Annotated[int | None, typer.Option("--run", help="Run index for --at init|end (default 0).")] = None,
    runs: Annotated[int | None, typer.Option(
        "--runs", help="Runs per method for --at along (default: the config's runs; 4 if it sets "
                       "none).")] = None,
    checkpoints: Annotated[int | None, typer.Option(
        "--checkpoints", help="Checkpoints per run for --at along (default 16).")] = None,
    num_samples: Annotated[int, typer.Option(
        "--num-samples", help="n of the population loss (n beta = n / log n).")] = 100_000,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="key=value: sampler.<field> (e.g. sampler.step_size=1e-6) or an experiment "
                      "config field (e.g. training.horizon=60); repeatable.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder (writes llc.nc; llc.png/.pdf "
                                                    "for --at along).")] = ...,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress.")] = False,
) -> None:
    """Local learning coefficient (SGLD estimate) at a point of an experiment or along training."""
    from dlnlab.experiments.runner import progress_reporter
    from dlnlab.io import atomic_save_figure, atomic_write_dataset
    from dlnlab.llc.training import (
        along_training_settings,
        learning_coefficient_along_training,
        learning_coefficient_at,
        load_training_config,
    )

    if at not in AT_CHOICES:
        raise ValueError(f"at={at!r}: must be one of {', '.join(AT_CHOICES)}")
    if at != "along":
        for flag, value in (("--runs", runs), ("--checkpoints", checkpoints)):
            if value is not None:
                raise ValueError(f"{flag}={value}: applies only to --at along")
    if run is not None and at not in ("init", "end"):
        raise ValueError(f"--run={run}: applies only to --at init and --at end")
    run = 0 if run is None else run
    checkpoints = 16 if checkpoints is None else checkpoints
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out={str(out)!r}: is a file, not a folder")
    resolved, sampler_fields = load_training_config(config, overrides or [])
    if at in ("init", "end") and run >= resolved.runs:
        raise ValueError(f"--run={run}: must be below the config's number of runs ({resolved.runs}; runs "
                         f"are numbered from 0)")
    settings = along_training_settings(**sampler_fields)
    with progress_reporter(quiet) as reporter:
        factory = None if reporter is None else reporter("llc")
        if at == "along":
            ds = learning_coefficient_along_training(
                resolved, methods=methods or ("gd", "sgd"), runs=runs, num_checkpoints=checkpoints,
                num_samples=num_samples, settings=settings, progress_factory=factory)
        else:
            if methods and len(methods) > 1:
                raise ValueError(f"method={','.join(methods)}: --at {at} takes one method")
            ds = learning_coefficient_at(resolved, at, method=(methods or ["gd"])[0], run=run,
                                         num_samples=num_samples, settings=settings,
                                         progress_factory=factory, warn=False)
    path = atomic_write_dataset(ds, out / "llc.nc")
    if at == "along":
        from dlnlab.plot.llc import along_training_figure

        figure = along_training_figure(ds)
        for suffix in ("png", "pdf"):
            atomic_save_figure(figure, out / f"llc.{suffix}")
        _print_along(ds)
    else:
        _print_point(ds)
    typer.echo(f"-> {path}")


def _print_point(ds) -> None:
    a = ds.attrs
    line = (f"llc at {a['at']} (widths {tuple(a['widths'])}, n = {a['num_samples']}): estimate "
            f"{_number(float(ds.learning_coefficient))} ± "
            f"{_number(float(ds.learning_coefficient_standard_error), '.2g')} "
            f"({a['num_chains_used']} chains, mean acceptance "
            f"{_number(float(ds.mean_acceptance.mean()), '.2f')})")
    typer.echo(line)
    exact = float(a["exact_learning_coefficient"])
    if exact == exact:
        typer.echo(f"exact λ = {exact:g} (multiplicity {a['exact_multiplicity']}, rank "
                   f"{a['rank_learned']}): {a['exact_description']}")
    else:
        typer.echo(f"exact λ: {a['exact_description']}")
    if a.get("warnings"):
        typer.echo(f"warnings: {a['warnings']}")


def _print_along(ds) -> None:
    import numpy as np

    typer.echo(f"llc along training ({ds.attrs['description'].split(':')[0]}); widths "
               f"{tuple(ds.attrs['widths'])}, {ds.sizes['run']} runs, median over runs:")
    for i, method in enumerate(ds.method_name.values):
        d = ds.isel(method_name=i)
        typer.echo(f"  {method}:   t   rank  estimate   exact(rank)  acceptance  flagged chains")
        for c in range(ds.sizes["checkpoint"]):
            e = d.isel(checkpoint=c)
            with np.errstate(all="ignore"):
                estimate = float(np.nanmedian(e.learning_coefficient.values))
            exact = float(np.median(e.exact_truncation_coefficient.values))
            typer.echo(f"  {float(e.time):9.3g} {int(np.median(e.rank_learned.values)):4d} "
                       f"{_number(estimate, '10.4g')} {exact:10.4g}"
                       f"   {_number(float(np.nanmean(e.mean_acceptance.values)), '.2f'):>9}"
                       f"  {int(e.flagged_chains.sum()):3d}/{int(e.chains_used.sum())}")
    count = int((ds.warning_count > 0).sum())
    if count:
        typer.echo(f"warnings on {count} of {ds.learning_coefficient.size} estimates (see the "
                   "'warnings' variable)")


PROTOCOLS = ("calibrated", "published")


def _parse_shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard={text!r}: must be K/N with integers 0 <= K < N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard={text!r}: must be K/N with integers 0 <= K < N, e.g. 0/4")
    return k, n


FLAG_NAMES = {"num_networks": "--networks", "num_chains": "--chains", "steps_scale": "--steps-scale",
              "seed": "--seed", "classes": "--classes", "out": "--out"}
"""Settings fields and the ``dlnlab llc-benchmark`` flags that set them (errors name the flag)."""


def _flag_names(message: str) -> str:
    field, separator, rest = message.partition("=")
    return f"{FLAG_NAMES.get(field, field)}{separator}{rest}"


def llc_benchmark_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder: benchmark.nc (written after every "
                                                    "network; a rerun resumes), table.md, "
                                                    "calibration.png/.pdf.")] = ...,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", help="calibrated (unit-variance inputs, step adapted to 0.99 acceptance, 10x "
                           "the steps, 16 chains) | published (fixed step, 10,000 steps, inputs in "
                           "[-10, 10]). Default: calibrated.")] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Size classes, comma-separated: 1K, 10K, 100K (100K: for an accelerator). "
                          "Default: 1K,10K.")] = None,
    networks: Annotated[int | None, typer.Option("--networks", help="Random networks per class "
                                                                    "(default 100).")] = None,
    chains: Annotated[int | None, typer.Option("--chains", help="Chains per estimate (default: the "
                                                                "protocol's).")] = None,
    steps_scale: Annotated[float | None, typer.Option(
        "--steps-scale", help="Number of steps as a multiple of the class's published 10,000 (1K, "
                              "10K) or 50,000 (100K); default: 10 for calibrated, 1 for published. "
                              "Short calibrated runs barely adapt the step.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the networks, data and chains "
                                                            "(default 0).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="K/N: run only the networks with index "
                                                              "= K mod N (join the parts with "
                                                              "--merge). Default 0/1.")] = None,
    group_by: Annotated[str | None, typer.Option(
        "--group-by", help="Networks advanced by one compiled program (vmap over networks x chains, "
                           "padded and masked): depth (one group per depth, widths padded to the "
                           "group's largest) | class (one group per class) | network (one each). "
                           "Default: depth.")] = None,
    networks_per_group: Annotated[int | None, typer.Option(
        "--networks-per-group", help="Split each group into chunks of at most this many networks "
                                     "(bounds memory; results do not depend on it). Default: no "
                                     "limit.")] = None,
    merge: Annotated[list[Path] | None, typer.Option(
        "--merge", help="Instead of running: join these benchmark folders (repeatable) into --out.")] = None,
    plan: Annotated[bool, typer.Option(
        "--plan", help="Print the groups (padded widths, memory, floating-point work) and exit; runs "
                       "and writes nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
) -> None:
    """Benchmark the SGLD learning-coefficient estimator against the exact values (docs/llc.md).
    Prints the plan (each group's padded widths, memory and work) before running, and the time left
    after each group; benchmark.nc is written after every group (a rerun resumes)."""
    import sys

    from dlnlab.io import atomic_save_figure, atomic_write_dataset, atomic_write_text, read_dataset
    from dlnlab.llc.benchmark import (
        GROUP_BY,
        BenchmarkSettings,
        format_table,
        merge_benchmarks,
        run_benchmark,
        summary_table,
    )
    from dlnlab.plot.llc import calibration_figure

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out={str(out)!r}: is a file, not a folder")
    given = {"--protocol": protocol, "--classes": classes, "--networks": networks, "--chains": chains,
             "--steps-scale": steps_scale, "--seed": seed, "--shard": shard, "--group-by": group_by,
             "--networks-per-group": networks_per_group, "--plan": plan or None}
    unchanged = False
    if merge:
        for flag, value in given.items():
            if value is not None:
                raise ValueError(f"{flag}={value}: does not apply with --merge (merging runs nothing)")
        for folder in merge:
            if not (folder / "benchmark.nc").is_file():
                raise ValueError(f"--merge={str(folder)!r}: holds no benchmark.nc")
        ds = merge_benchmarks([read_dataset(folder / "benchmark.nc", what="benchmark") for folder in merge])
        atomic_write_dataset(ds, out / "benchmark.nc")
    else:
        protocol = "calibrated" if protocol is None else protocol
        classes = "1K,10K" if classes is None else classes
        networks = 100 if networks is None else networks
        seed = 0 if seed is None else seed
        shard = "0/1" if shard is None else shard
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol={protocol!r}: must be one of {', '.join(PROTOCOLS)}")
        names = tuple(name.strip() for name in classes.split(","))
        if any(not name for name in names):
            raise ValueError(f"--classes={classes!r}: must be comma-separated class names with none empty")
        fields = {"classes": names, "num_networks": networks, "seed": seed}
        if chains is not None:
            fields["num_chains"] = chains
        if steps_scale is not None:
            fields["steps_scale"] = steps_scale
        try:
            settings = (BenchmarkSettings.calibrated if protocol == "calibrated" else
                        BenchmarkSettings.published)(**fields).validate()
        except ValueError as error:   # name the flag, not the Python field
            raise ValueError(_flag_names(str(error))) from None
        part = _parse_shard(shard)
        group_by = "depth" if group_by is None else group_by
        if group_by not in GROUP_BY:
            raise ValueError(f"--group-by={group_by!r}: must be one of {', '.join(GROUP_BY)}")
        if networks_per_group is not None and networks_per_group < 1:
            raise ValueError(f"--networks-per-group={networks_per_group}: must be an integer >= 1")

        def progress(line: str) -> None:
            if not quiet:
                print(line, file=sys.stderr, flush=True)

        if plan:
            from dlnlab.llc.benchmark import benchmark_plan, plan_lines, saved_records

            try:
                saved = {(r["size_class"], int(r["index"])) for r in saved_records(settings, out)}
            except ValueError as error:
                raise ValueError(_flag_names(str(error))) from None
            if saved:
                typer.echo(f"llc-benchmark: plan: {len(saved)} networks already in "
                           f"{out / 'benchmark.nc'} are left out (a rerun resumes)")
            for line in plan_lines(benchmark_plan(settings, shard=part, group_by=group_by,
                                                  networks_per_group=networks_per_group,
                                                  finished=saved)):
                typer.echo(line)
            return
        from dlnlab.experiments.runner import line_progress_factory

        def stamp():
            path = out / "benchmark.nc"
            return path.stat().st_mtime_ns if path.exists() else None

        before = stamp()
        ds = run_benchmark(settings, out, progress=progress, shard=part,
                           progress_factory=None if quiet else line_progress_factory(label="llc-benchmark"),
                           group_by=group_by, networks_per_group=networks_per_group)
        unchanged = before is not None and stamp() == before   # a finished run resumed: nothing new
    import json

    rows = summary_table(ds)
    table = format_table(rows)
    used = json.loads(ds.attrs["benchmark_settings"])
    context = ("Settings: " + ", ".join(f"{k} = {used[k]}" for k in sorted(used))
               + f". {ds.sizes['network']} networks.")
    atomic_write_text(context + "\n\n" + table + "\n", out / "table.md")
    figures = [out / f"calibration.{suffix}" for suffix in ("png", "pdf")]
    if not (unchanged and all(path.is_file() for path in figures)):   # else keep them byte for byte
        figure = calibration_figure(ds)
        for path in figures:
            atomic_save_figure(figure, path)
    typer.echo(table)
    typer.echo(f"-> {out / 'benchmark.nc'}")

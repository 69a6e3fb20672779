"""The ``dlnlab`` command. Thin: parses, calls the library, prints.

Every command is one call of a library function (``dlnlab.theory.mode_summary`` for
``dlnlab theory``). Bad input prints one line ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer


# Typer >= 0.25 vendors click (its usage errors are typer.exceptions.TyperException); older
# releases raise click's own exceptions. Both are caught: a separately installed click (dask
# brings one) must not turn typer's usage errors into tracebacks.
def _cli_exceptions() -> tuple[tuple[type[BaseException], ...], ...]:
    usage: list[type[BaseException]] = []
    exits: list[type[BaseException]] = [typer.Exit]
    aborts: list[type[BaseException]] = [typer.Abort]
    try:
        from typer.exceptions import TyperException

        usage.append(TyperException)
    except ImportError:
        pass
    try:
        import click

        usage.append(click.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(usage), tuple(exits), tuple(aborts)


_USAGE_ERRORS, _EXITS, _ABORTS = _cli_exceptions()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dlnlab: GD, SGD and SDE models of SGD on deep linear networks.")


def _register_subcommands() -> None:
    from .llc.cli import llc_benchmark_command, llc_command
    from .saddles.cli import saddles_app

    app.add_typer(saddles_app, name="saddles")
    app.command("llc")(llc_command)
    app.command("llc-benchmark")(llc_benchmark_command)


_register_subcommands()


def _parse_floats(name: str, text: str) -> list[float]:
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise ValueError(f"{name}={text!r}: must be comma-separated numbers with none empty")
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise ValueError(f"{name}={text!r}: must be comma-separated numbers, e.g. 1,0.667,0.333")\
            from None
    if not values:
        raise ValueError(f"{name}={text!r}: must list at least one value")
    return values


@app.callback()
def _root() -> None:
    """dlnlab: GD, SGD and SDE models of SGD on deep linear networks."""


@app.command()
def theory(
    depth: int = typer.Option(4, "--depth", help="Number of weight matrices L."),
    spectrum: str = typer.Option("1,0.667,0.333", "--spectrum",
                                 help="Teacher singular values, comma-separated, non-increasing."),
    learning_rate: float = typer.Option(0.01, "--learning-rate", help="Learning rate eta."),
    batch_size: int = typer.Option(1, "--batch-size", help="Batch size B."),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Label-noise std sigma."),
    init_amplitude: float = typer.Option(
        0.002, "--init-amplitude",
        help="Initial mode amplitude a0 (default: rms amplitude of the paper's init, "
             "d=12, variance d^-2, L=4: 12^-2.5 = 0.002)."),
    widths: str | None = typer.Option(
        None, "--widths", help="Layer widths d_in,d_1,...,d_out (depth+1 values): modes beyond "
                               "the narrowest (the rank bottleneck) are unreachable."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per mode."),
) -> None:
    """Per-mode theory: half-learning time, diffusion peak, stationary mean and variance."""
    from .theory.summary import mode_summary

    values = _parse_floats("spectrum", spectrum)
    layer_widths = None
    if widths is not None:
        parsed = _parse_floats("widths", widths)
        if any(w != int(w) or w < 1 for w in parsed):
            raise ValueError(f"widths={widths!r}: must be comma-separated integers >= 1")
        layer_widths = [int(w) for w in parsed]
    rows = mode_summary(values, depth, learning_rate, batch_size, label_noise, init_amplitude,
                        widths=layer_widths)
    if as_json:
        keys = ("s", "reachable", "t_half", "a_peak", "stationary_exists", "stationary_mean",
                "stationary_variance", "note")
        print(json.dumps([{k: row[k] for k in keys} for row in rows], indent=2, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    def number(x, spec):
        if x is None:
            return "-"
        return "inf" if x == float("inf") else format(x, spec)

    table = Table(title=f"Theory per mode: L={depth}, eta={learning_rate:g}, B={batch_size}, "
                        f"sigma={label_noise:g}, a0={init_amplitude:g}  (time t = step x eta)")
    for header in ("mode", "s", "t_half", "a_peak", "max?", "mean 1st", "mean quad", "var 1st",
                   "var quad"):
        table.add_column(header, justify="right", no_wrap=True)
    for i, row in enumerate(rows, start=1):
        if not row["reachable"]:
            table.add_row(str(i), f"{row['s']:g}", "unreachable", *["-"] * 6)
            continue
        peak = "none" if row["a_peak"] is None else f"{row['a_peak']:.6g}"
        law = row["stationary_exists"]
        table.add_row(str(i), f"{row['s']:g}", number(row["t_half"], ".6g"), peak,
                      "-" if row["a_peak"] is None else ("yes" if row["peak_is_global"] else "no"),
                      number(row["stationary_mean_first_order"], ".8g"),
                      number(row["stationary_mean"], ".8g") if law else "no law",
                      number(row["stationary_variance_first_order"], ".6g"),
                      number(row["stationary_variance"], ".6g") if law else "no law")
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print("t_half: gradient-flow time from a0 to s/2 (aligned start; docs/theory.md §7). "
                  "a_peak: diffusion peak (paper eq. 9, docs/theory.md §8); max?: it is the "
                  "maximum of D_a on (0, s]. Stationary law (docs/theory.md §9): first order in "
                  "eta/B ('1st') and quadrature ('quad').")
    for i, row in enumerate(rows, start=1):
        if row["note"]:
            console.print(f"mode {i}: {row['note']}")
    if label_noise == 0.0:
        console.print("sigma = 0: each stationary law is a Dirac mass at s (variance 0).")


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(
        help="TOML config (see examples/); default: the paper's task.")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="key=value override, e.g. training.learning_rate=0.02 (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default: runs/<name>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace results of a different config in --out, or recompute a "
                            "complete run.")] = False,
) -> None:
    """Run an experiment: every method, figures, results.nc, summary.json and a table."""
    from .experiments.runner import run_to_directory

    run_to_directory(config, overrides or [], out, quiet=quiet, overwrite=overwrite)


@app.command()
def reproduce(
    names: Annotated[list[str], typer.Argument(
        help="[PAPER] STUDY... : a paper (sgd-dln, the default, or gross2024) and its "
             "studies, or 'all'. An unknown name lists the valid ones.")],
    quick: Annotated[bool, typer.Option(
        "--quick", help="Fewer runs: every study in minutes.")] = False,
    out: Annotated[str | None, typer.Option(
        "--out", help="Output folder (default: reproduction[-quick], "
                      "reproduction-PAPER[-quick] for another paper).")] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Recompute experiments even when a cached dataset matches.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars or tables.")] = False,
) -> None:
    """Reproduce a paper's figures and claims: PNG/PDF, dataset, numbers, claims.md."""
    from .papers import reproduce as run_reproduce
    from .papers import split_arguments

    paper, studies = split_arguments(names)
    run_reproduce(paper, studies, quick=quick, out=out, fresh=fresh, quiet=quiet)


@app.command("golden-path")
def golden_path(
    config: Annotated[Path | None, typer.Argument(
        help="TOML config (examples/golden_path_*.toml); default: the paper's task.")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="key=value override, e.g. seeds=16 (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: golden-path/<name>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars or tables.")] = False,
) -> None:
    """Golden Path: does SGD select the same model as GD? Arms from one init, report, figures."""
    from .experiments.protocols.golden_path import run_golden_path

    run_golden_path(config, overrides or [], out, quiet=quiet)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (TOML; see examples/sweep_*.toml).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Sweep folder (default: sweeps/<name>).")] = None,
    local_cluster: Annotated[int | None, typer.Option(
        "--local-cluster", metavar="N", help="Run the chunks on a Dask LocalCluster of N "
                                            "processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", metavar="ADDRESS", help="Run the chunks on a running Dask scheduler.")] = None,
    only_failed: Annotated[bool, typer.Option(
        "--only-failed", help="Rerun exactly the chunks recorded as failed.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress or table.")] = False,
) -> None:
    """Sweep a grid of hyperparameters: value axes vectorised in one compiled call, resumable."""
    from .sweep import run_sweep_file

    run_sweep_file(sweep_file, out=out, local_cluster=local_cluster, scheduler=scheduler,
                   only_failed=only_failed, quiet=quiet)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Fewer runs and steps (about a minute)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    scaling: bool = typer.Option(False, "--scaling", help="Roofline benchmark: d, L, B and runs grid "
                                 "against the matrix peak and bandwidth measured in the same run."),
    torch: bool = typer.Option(False, "--torch", help="Add PyTorch baselines (bmm loops over runs, "
                               "autograd loop); needs the bench-torch extra."),
    out: Annotated[Path | None, typer.Option(
        "--out", help="With --scaling: folder for scaling.nc, scaling.md, roofline.png/pdf.")] = None,
    memory_cap: Annotated[float | None, typer.Option(
        "--memory-cap", metavar="GIB", help="With --scaling: skip cases needing more memory "
                                            "(default: a quarter of RAM).")] = None,
    max_step_seconds: Annotated[float, typer.Option(
        "--max-step-seconds", help="With --scaling: skip cases whose one step of all runs takes "
                                   "longer even at the roofline.")] = 0.05,
    product: Annotated[str, typer.Option(
        "--product", help="With --scaling: the engine's product layout, auto (default: batched "
                          "from width 32, 16 for the SDE), broadcast or batched.")] = "auto",
) -> None:
    """Speed of dlnlab's compiled steppers against plain baselines, measured in one run."""
    if scaling and torch:
        raise ValueError("--torch=True: use it without --scaling (it adds rows to the plain bench)")
    if not scaling:
        for name, value, default in (("--out", out, None), ("--memory-cap", memory_cap, None),
                                     ("--max-step-seconds", max_step_seconds, 0.05),
                                     ("--product", product, "auto")):
            if value != default:
                raise ValueError(f"{name}={value}: only with --scaling")
    if product not in ("auto", "broadcast", "batched"):
        raise ValueError(f"--product={product!r}: must be one of auto, broadcast, batched")
    if scaling and out is not None:
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"--out={str(out)!r}: must be a folder (it is a file), checked before the run")
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--out={str(out)!r}: cannot be created ({error.strerror or error}), "
                             "checked before the run") from None
        if not os.access(out, os.W_OK):
            raise ValueError(f"--out={str(out)!r}: is not writable, checked before the run")
    for name, value in (("--memory-cap", memory_cap), ("--max-step-seconds", max_step_seconds)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value}: must be a finite number > 0")
    if scaling:
        from .roofline import run_scaling, scaling_records, scaling_table, write_scaling

        ds = run_scaling(quick=quick, memory_cap_gib=memory_cap, max_step_seconds=max_step_seconds,
                         progress=True, product=product)
        if out is not None:
            for path in write_scaling(ds, out):
                print(f"wrote {path}", file=sys.stderr)
        if as_json:
            print(json.dumps(scaling_records(ds), indent=2, allow_nan=False))
        else:
            print(scaling_table(ds))
        return
    from .benchmarks import RUNS, print_results, run_benchmarks

    if torch:
        from .torch_baseline import import_torch

        import_torch()                        # a missing PyTorch fails before the long run
    results = run_benchmarks(quick=quick, progress=not as_json)
    if torch:
        from .torch_baseline import torch_comparison

        results += torch_comparison(results, runs=RUNS, quick=quick, progress=not as_json)
    if as_json:
        from .io.atomic import strict_json

        print(json.dumps(strict_json(results), indent=2, allow_nan=False))
    else:
        print_results(results)


# XLA:CPU's YNNPACK fusion pass slows the runs-on-the-minor-axis layout of the engine 2-3x
# (PERF-NOTES; `dlnlab bench` measures it). Turned off here, where the process starts, never
# at import; a user's own XLA_FLAGS setting of it wins.
_XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _set_xla_flags() -> None:
    """Also one host device per core: the engine spreads run groups over them (2x on 2 cores)."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        flags = f"{flags} {_XLA_CPU_FLAG}"
    if "xla_force_host_platform_device_count" not in flags:
        flags = f"{flags} --xla_force_host_platform_device_count={os.cpu_count() or 1}"
    os.environ["XLA_FLAGS"] = flags.strip()


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2, float64 for theory numerics."""
    _set_xla_flags()
    import jax

    # Process start is the one place to set numerics flags (never at import time).
    jax.config.update("jax_enable_x64", True)
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="dlnlab", standalone_mode=False)
    except _EXITS as exc:
        return exc.exit_code
    except _USAGE_ERRORS as exc:
        message = exc.format_message()
        if message:  # a bare `dlnlab` has already printed the help
            print(f"error: {message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:          # a full disk, a read-only folder, a file where a folder goes
        where = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or str(exc)
        print(f"error: could not read/write {where}: {_one_line(reason)}" if where else
              f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except _ABORTS:
        print("error: aborted", file=sys.stderr)
        return 130
    return 0


def _one_line(text: str) -> str:
    """An error message on one line (a library message never spans lines; this is the guard)."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def _console_script() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console_script()

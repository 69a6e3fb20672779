"""``dlnlab saddles sample|certify|escape``: a typer sub-app. Thin: resolves the config, calls one
library function per command, writes the dataset (and figures) into ``--out DIR``.

- ``sample``  -> :func:`dlnlab.saddles.sample_from_config`  -> ``DIR/points.nc``, ``DIR/config.toml``
- ``certify`` -> :func:`dlnlab.saddles.certify_from_config` -> ``DIR/catalogue.nc``,
  ``DIR/certify.toml``, ``DIR/figures/``
- ``escape``  -> :func:`dlnlab.saddles.escape_from_config`  -> ``DIR/escape.nc``, ``DIR/escape.toml``,
  ``DIR/figures/``

Each command takes an optional TOML config (the models of :mod:`dlnlab.saddles.config`), ``--set
key=value`` overrides and flags, each flag an override of one field (flags default to "not given":
the defaults live in the models). Precedence: defaults < file < ``--set`` < flags. Flag values are
parsed as TOML values (``0.01``, ``true``, ``"top"``; a bare word is a string; list flags are
comma-separated), so a wrong type reaches the strict model and is reported as one line
``field=value: rule``. Every file goes through :mod:`dlnlab.io` (the one atomic writer).

Registered in the main CLI with ``app.add_typer(saddles_app, name="saddles")``; bad input raises
``ValueError("name=value: rule")``, which ``dlnlab.cli.main`` prints as one line (exit code 2).
Library imports happen inside the commands so that ``dlnlab --help`` stays fast.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from .._validation import shorten

saddles_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                          help="Saddle points: sample the normal form, certify on the true loss, "
                               "escape experiments.")

ConfigArgument = Annotated[Path | None, typer.Argument(
    help="TOML config (examples/saddles_*.toml); default: the built-in defaults.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="key=value override, value as TOML, e.g. sampler.num_chains=4 (repeatable).")]


def _flag(name: str, field: str, metavar: str):
    """A flag that overrides config field ``field``; ``None`` (the default) means not given."""
    return typer.Option(None, name, metavar=metavar, show_default=False,
                        help=f"Overrides {field}.")


def _value(text: str):
    """One flag value parsed as a TOML value (``4``, ``0.01``, ``true``, ``"top"``), else as a
    Python number (``.5``), else kept as a string (a bare word such as ``top``)."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _fields(flags: dict[str, tuple[str | None, bool]]) -> dict[str, object]:
    """``{field: (text or None, is_list)}`` -> ``{field: value}`` for the flags given."""
    out = {}
    for field, (text, is_list) in flags.items():
        if text is not None and any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError(f"{field}={shorten(repr(text))}: contains a control character; give "
                             "the value on one line")
        if text is not None:
            out[field] = [_value(x) for x in text.split(",")] if is_list else _value(text)
    return out


OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Replace results of a different config in --out (and the stale results "
                        "derived from them).")]

# What each stage writes, and what later stages derived from it (stale once it changes).
_STAGES = {
    "sample": ("config.toml", ("points.nc", "catalogue.nc", "certify.toml", "escape.nc",
                               "escape.toml", "figures")),
    "certify": ("certify.toml", ("catalogue.nc", "escape.nc", "escape.toml",
                                 "figures/escape_times.png", "figures/escape_times.pdf")),
    "escape": ("escape.toml", ("escape.nc",)),
}


def _prepare_out(out: str, stage: str, toml: str, overwrite: bool) -> None:
    """Refuse to mix results: ``out`` must be a folder, and if it holds this stage's results of
    a different config they (and what later stages derived from them) are replaced only with
    ``--overwrite``. One ``ValueError`` line otherwise."""
    import shutil

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out={out!r}: is a file, not a folder")
    marker, derived = _STAGES[stage]
    previous = folder / marker
    if not previous.is_file() or previous.read_text(errors="replace") == toml:
        return
    if not overwrite:
        raise ValueError(f"out={out!r}: holds {stage} results of a different config ({marker}); "
                         "use another --out, or --overwrite to replace them and what was derived "
                         f"from them ({', '.join(derived)})")
    for name in derived:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _say(message: str) -> None:
    typer.echo(message)


@saddles_app.callback()
def _root() -> None:
    """Saddle points of deep linear networks (docs/saddles.md)."""


@saddles_app.command()
def sample(
    config: ConfigArgument = None,
    overrides: SetOption = None,
    out: str = typer.Option(..., "--out", help="Output folder (writes points.nc, config.toml)."),
    overwrite: OverwriteOption = False,
    widths: str = _flag("--widths", "task.widths: layer widths d_0,...,d_L (L >= 2)", "INTS"),
    spectrum: str = _flag("--spectrum", "task.spectrum: teacher singular values", "FLOATS"),
    label_noise: str = _flag("--label-noise", "task.label_noise: label-noise std sigma", "FLOAT"),
    ranks: str = _flag("--ranks", "sampler.ranks: stratum ranks r to sample", "INTS"),
    subsets: str = _flag("--subsets", "sampler.subsets: 'top' (r largest modes) or 'all'", "TEXT"),
    chains: str = _flag("--chains", "sampler.num_chains: SGLD chains per (rank, subset)", "INT"),
    exact: str = _flag("--exact", "sampler.num_exact: exact points per (rank, subset)", "INT"),
    steps: str = _flag("--steps", "sampler.num_steps: SGLD steps at the temperature", "INT"),
    quench_steps: str = _flag("--quench-steps", "sampler.quench_steps: steps at T = 0", "INT"),
    temperature: str = _flag("--temperature", "sampler.temperature: T = 1 / beta", "FLOAT"),
    step_size: str = _flag("--step-size", "sampler.step_size: SGLD step size eps_0", "FLOAT"),
    step_decay: str = _flag("--step-decay", "sampler.step_decay: gamma in eps_0 (1 + t/t_0)^-gamma",
                            "FLOAT"),
    weight_decay: str = _flag("--weight-decay", "prior.weight_decay: Gaussian prior alpha", "FLOAT"),
    norm_target: str = _flag("--norm-target", "prior.norm_target: norm target rho (0: off)", "FLOAT"),
    norm_strength: str = _flag("--norm-strength", "prior.norm_strength: strength kappa", "FLOAT"),
    refine_iterations: str = _flag("--refine-iterations",
                                   "refine.iterations: Levenberg-Marquardt steps", "INT"),
    rebalance_every: str = _flag("--rebalance-every",
                                 "refine.rebalance_every: re-balance period (0: never)", "INT"),
    seed: str = _flag("--seed", "seed: root seed (task: fold_in(seed, 0); sampler: 1)", "INT"),
) -> None:
    """Sample critical points in the normal form and refine them on the true loss."""
    from dlnlab.io import atomic_write_dataset, atomic_write_text
    from dlnlab.saddles import SampleConfig, config_to_toml, load_config, sample_from_config

    resolved = load_config(SampleConfig, config, overrides or [], _fields({
        "task.widths": (widths, True), "task.spectrum": (spectrum, True),
        "task.label_noise": (label_noise, False), "sampler.ranks": (ranks, True),
        "sampler.subsets": (subsets, False), "sampler.num_chains": (chains, False),
        "sampler.num_exact": (exact, False), "sampler.num_steps": (steps, False),
        "sampler.quench_steps": (quench_steps, False), "sampler.temperature": (temperature, False),
        "sampler.step_size": (step_size, False), "sampler.step_decay": (step_decay, False),
        "prior.weight_decay": (weight_decay, False), "prior.norm_target": (norm_target, False),
        "prior.norm_strength": (norm_strength, False), "refine.iterations": (refine_iterations, False),
        "refine.rebalance_every": (rebalance_every, False), "seed": (seed, False)}))
    _prepare_out(out, "sample", config_to_toml(resolved), overwrite)
    ds = sample_from_config(resolved)
    atomic_write_text(config_to_toml(resolved), os.path.join(out, "config.toml"))
    path = atomic_write_dataset(ds, os.path.join(out, "points.nc"))
    _say(f"{ds.sizes['point']} points ({ds.attrs['dropped_points']} dropped) -> {path}")


@saddles_app.command()
def certify(
    config: ConfigArgument = None,
    overrides: SetOption = None,
    out: str = typer.Option(..., "--out", help="Output folder (writes catalogue.nc, certify.toml, "
                                               "figures/)."),
    overwrite: OverwriteOption = False,
    points: str = typer.Option(None, "--points", help="Input points file (default OUT/points.nc)."),
    method: str = _flag("--method", "method: auto, dense or lanczos", "TEXT"),
    eigenvalues: str = _flag("--eigenvalues", "num_eigenvalues: smallest eigenvalues kept", "INT"),
    blocks: str = _flag("--blocks", "num_blocks: Lanczos blocks", "INT"),
    block_size: str = _flag("--block-size", "block_size: Lanczos block size", "INT"),
    seed: str = _flag("--seed", "seed: seed of the Lanczos start blocks", "INT"),
) -> None:
    """Certify every sampled point (gradient norm, Hessian spectrum, class) and plot."""
    import numpy as np

    from dlnlab.io import atomic_write_dataset, atomic_write_text
    from dlnlab.saddles import (
        CLASS_NAMES,
        CertifyConfig,
        certify_from_config,
        config_to_toml,
        load_config,
        plot_catalogue,
        read_catalogue,
    )

    resolved = load_config(CertifyConfig, config, overrides or [], _fields({
        "method": (method, False), "num_eigenvalues": (eigenvalues, False),
        "num_blocks": (blocks, False), "block_size": (block_size, False), "seed": (seed, False)}))
    _prepare_out(out, "certify", config_to_toml(resolved), overwrite)
    ds = read_catalogue(points or os.path.join(out, "points.nc"))
    cat = certify_from_config(resolved, ds)
    atomic_write_text(config_to_toml(resolved), os.path.join(out, "certify.toml"))
    path = atomic_write_dataset(cat, os.path.join(out, "catalogue.nc"))
    figures = plot_catalogue(cat, os.path.join(out, "figures"))
    counts = np.bincount(cat["classification"].values.astype(int), minlength=len(CLASS_NAMES))
    summary = ", ".join(f"{name}: {c}" for name, c in zip(CLASS_NAMES, counts, strict=True))
    _say(f"{cat.sizes['point']} points certified ({cat.attrs['certification_method']}): {summary}")
    _say(f"-> {path}; {len(figures)} figure files in {os.path.join(out, 'figures')}")


@saddles_app.command()
def escape(
    config: ConfigArgument = None,
    overrides: SetOption = None,
    out: str = typer.Option(..., "--out", help="Output folder (writes escape.nc, escape.toml, "
                                               "figures/)."),
    overwrite: OverwriteOption = False,
    catalogue: str = typer.Option(None, "--catalogue", help="Certified catalogue (OUT/catalogue.nc)."),
    methods: str = _flag("--methods", "methods: comma-separated, of gd, sgd, sde", "TEXTS"),
    learning_rate: str = _flag("--learning-rate", "learning_rate: eta", "FLOAT"),
    steps: str = _flag("--steps", "num_steps: maximum steps per run", "INT"),
    runs: str = _flag("--runs", "num_runs: runs per point and method", "INT"),
    perturbation: str = _flag("--perturbation", "perturbation: rho, size of the start offset", "FLOAT"),
    drop: str = _flag("--drop", "drop_fraction: escape when the loss drops by this fraction of "
                                "L* - L_min", "FLOAT"),
    direction: str = _flag("--direction", "direction: eigenvector or random", "TEXT"),
    batch_size: str = _flag("--batch-size", "batch_size: B for SGD and the SDE noise", "INT"),
    sde_step: str = _flag("--sde-step", "sde_step: SDE step h (default: the learning rate)", "FLOAT"),
    max_points: str = _flag("--max-points", "max_points: at most this many saddles", "INT"),
    seed: str = _flag("--seed", "seed: seed of the perturbations and the noise", "INT"),
) -> None:
    """Escape times of GD, SGD and the anisotropic SDE from the certified saddles."""
    from dlnlab.io import atomic_write_dataset, atomic_write_text
    from dlnlab.saddles import (
        EscapeConfig,
        config_to_toml,
        escape_from_config,
        load_config,
        plot_escape,
        read_catalogue,
    )

    resolved = load_config(EscapeConfig, config, overrides or [], _fields({
        "methods": (methods, True), "learning_rate": (learning_rate, False),
        "num_steps": (steps, False), "num_runs": (runs, False),
        "perturbation": (perturbation, False), "drop_fraction": (drop, False),
        "direction": (direction, False), "batch_size": (batch_size, False),
        "sde_step": (sde_step, False), "max_points": (max_points, False), "seed": (seed, False)}))
    _prepare_out(out, "escape", config_to_toml(resolved), overwrite)
    ds = read_catalogue(catalogue or os.path.join(out, "catalogue.nc"), certified=True)
    result = escape_from_config(resolved, ds)
    atomic_write_text(config_to_toml(resolved), os.path.join(out, "escape.toml"))
    path = atomic_write_dataset(result, os.path.join(out, "escape.nc"))
    plot_escape(result, os.path.join(out, "figures"))
    escaped = (result["escape_time"].notnull().mean(dim=("point", "run"))).values
    diverged = result["diverged"].mean(dim=("point", "run")).values
    rates = ", ".join(f"{m}: {100 * e:.0f}% escaped, {100 * x:.0f}% diverged"
                      for m, e, x in zip(resolved.methods, escaped, diverged, strict=True))
    _say(f"{result.sizes['point']} saddles, {rates} -> {path}")

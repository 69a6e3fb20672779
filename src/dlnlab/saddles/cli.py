"""``dlnlab saddles sample|certify|escape``: a typer sub-app. Thin: parses, calls one library
function per command, writes the dataset (and figures) into ``--out DIR``.

- ``sample``  -> :func:`dlnlab.saddles.sample_catalogue`   -> ``DIR/points.nc``
- ``certify`` -> :func:`dlnlab.saddles.certify_catalogue`  -> ``DIR/catalogue.nc``, ``DIR/figures/``
- ``escape``  -> :func:`dlnlab.saddles.escape_experiment`  -> ``DIR/escape.nc``, ``DIR/figures/``

Registered in the main CLI with ``app.add_typer(saddles_app, name="saddles")``; bad input raises
``ValueError("name=value: rule")``, which ``dlnlab.cli.main`` prints as one line (exit code 2).
Library imports happen inside the commands so that ``dlnlab --help`` stays fast.
"""

from __future__ import annotations

import os

import typer

saddles_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                          help="Saddle points: sample the normal form, certify on the true loss, "
                               "escape experiments.")


def _ints(name: str, text: str) -> list[int]:
    items = [x.strip() for x in text.split(",")]
    try:
        if any(not x for x in items):
            raise ValueError
        return [int(x) for x in items]
    except ValueError:
        raise ValueError(f"{name}={text!r}: must be comma-separated integers, e.g. 4,5,5,4") from None


def _floats(name: str, text: str) -> list[float]:
    items = [x.strip() for x in text.split(",")]
    try:
        if any(not x for x in items):
            raise ValueError
        return [float(x) for x in items]
    except ValueError:
        raise ValueError(f"{name}={text!r}: must be comma-separated numbers, e.g. 3,2,1") from None


def _say(message: str) -> None:
    typer.echo(message)


@saddles_app.callback()
def _root() -> None:
    """Saddle points of deep linear networks (docs/saddles.md)."""


@saddles_app.command()
def sample(
    out: str = typer.Option(..., "--out", help="Output folder (writes points.nc)."),
    widths: str = typer.Option("4,5,5,4", "--widths", help="Layer widths d_0,...,d_L (L >= 2)."),
    spectrum: str = typer.Option("3,2,1,0.5", "--spectrum", help="Teacher singular values."),
    ranks: str = typer.Option("0,1,2", "--ranks", help="Stratum ranks r to sample."),
    subsets: str = typer.Option("top", "--subsets", help="'top' (r largest modes) or 'all'."),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Label-noise std sigma."),
    chains: int = typer.Option(6, "--chains", help="SGLD chains per (rank, subset)."),
    exact: int = typer.Option(3, "--exact", help="Exact points (two zero blocks) per (rank, subset)."),
    steps: int = typer.Option(1000, "--steps", help="SGLD steps at the temperature."),
    quench_steps: int = typer.Option(500, "--quench-steps", help="Steps at T = 0 afterwards."),
    temperature: float = typer.Option(1e-3, "--temperature", help="T = 1 / beta."),
    step_size: float = typer.Option(1e-3, "--step-size", help="SGLD step size eps_0."),
    step_decay: float = typer.Option(0.0, "--step-decay", help="gamma in eps_0 (1 + t/t_0)^-gamma."),
    weight_decay: float = typer.Option(1.0, "--weight-decay", help="Gaussian prior alpha."),
    norm_target: float = typer.Option(1.0, "--norm-target", help="Norm target rho (0: off)."),
    norm_strength: float = typer.Option(1.0, "--norm-strength", help="Norm-target strength kappa."),
    refine_iterations: int = typer.Option(30, "--refine-iterations", help="Levenberg-Marquardt steps."),
    rebalance_every: int = typer.Option(10, "--rebalance-every", help="Re-balance period (0: never)."),
    seed: int = typer.Option(0, "--seed", help="Root seed (task: fold_in(seed, 0); sampler: 1)."),
) -> None:
    """Sample critical points in the normal form and refine them on the true loss."""
    import jax

    from dlnlab.core.task import Task
    from dlnlab.saddles import Prior, sample_catalogue, write_dataset

    width_list = _ints("widths", widths)
    values = _floats("spectrum", spectrum)
    if subsets not in ("top", "all"):
        raise ValueError(f"subsets={subsets!r}: must be 'top' or 'all'")
    root = jax.random.key(seed)
    task = Task.from_spectrum(jax.random.fold_in(root, 0), width_list[0], width_list[-1], values,
                              label_noise=label_noise or None)
    ds = sample_catalogue(jax.random.fold_in(root, 1), task, width_list, _ints("ranks", ranks),
                          subsets=subsets, num_chains=chains, num_exact=exact, num_steps=steps,
                          quench_steps=quench_steps, temperature=temperature, step_size=step_size,
                          step_decay=step_decay, prior=Prior(weight_decay, norm_target, norm_strength),
                          refine_iterations=refine_iterations, rebalance_every=rebalance_every)
    ds.attrs["seed"] = seed
    path = write_dataset(ds, os.path.join(out, "points.nc"))
    _say(f"{ds.sizes['point']} points ({ds.attrs['dropped_points']} dropped) -> {path}")


@saddles_app.command()
def certify(
    out: str = typer.Option(..., "--out", help="Output folder (writes catalogue.nc, figures/)."),
    points: str = typer.Option(None, "--points", help="Input points file (default OUT/points.nc)."),
    method: str = typer.Option("auto", "--method", help="auto, dense or lanczos."),
    eigenvalues: int = typer.Option(6, "--eigenvalues", help="Smallest eigenvalues to keep."),
    blocks: int = typer.Option(40, "--blocks", help="Lanczos blocks."),
    block_size: int = typer.Option(8, "--block-size", help="Lanczos block size."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Lanczos start blocks."),
) -> None:
    """Certify every sampled point (gradient norm, Hessian spectrum, class) and plot."""
    import jax
    import numpy as np

    from dlnlab.saddles import CLASS_NAMES, certify_catalogue, plot_catalogue, read_dataset, write_dataset

    ds = read_dataset(points or os.path.join(out, "points.nc"), "points")
    cat = certify_catalogue(jax.random.key(seed), ds, method=method, num_eigenvalues=eigenvalues,
                            num_blocks=blocks, block_size=block_size)
    cat.attrs["certify_seed"] = seed
    path = write_dataset(cat, os.path.join(out, "catalogue.nc"))
    figures = plot_catalogue(cat, os.path.join(out, "figures"))
    counts = np.bincount(cat["classification"].values.astype(int), minlength=len(CLASS_NAMES))
    summary = ", ".join(f"{name}: {c}" for name, c in zip(CLASS_NAMES, counts, strict=True))
    _say(f"{cat.sizes['point']} points certified ({cat.attrs['certification_method']}): {summary}")
    _say(f"-> {path}; {len(figures)} figure files in {os.path.join(out, 'figures')}")


@saddles_app.command()
def escape(
    out: str = typer.Option(..., "--out", help="Output folder (writes escape.nc, figures/)."),
    catalogue: str = typer.Option(None, "--catalogue", help="Certified catalogue (OUT/catalogue.nc)."),
    methods: str = typer.Option("gd,sgd,sde", "--methods", help="Comma-separated: gd, sgd, sde."),
    learning_rate: float = typer.Option(0.02, "--learning-rate", help="eta."),
    steps: int = typer.Option(1000, "--steps", help="Maximum steps per run."),
    runs: int = typer.Option(8, "--runs", help="Runs per point and method."),
    perturbation: float = typer.Option(1e-3, "--perturbation", help="rho, size of the start offset."),
    drop: float = typer.Option(0.1, "--drop", help="Escape: loss drop by this fraction of L* - L_min."),
    direction: str = typer.Option("eigenvector", "--direction", help="eigenvector or random."),
    batch_size: int = typer.Option(1, "--batch-size", help="B for SGD and the SDE noise."),
    sde_step: float = typer.Option(None, "--sde-step", help="SDE step h (default: the learning rate)."),
    max_points: int = typer.Option(20, "--max-points", help="At most this many saddles."),
    seed: int = typer.Option(0, "--seed", help="Seed of the perturbations and the noise."),
) -> None:
    """Escape times of GD, SGD and the anisotropic SDE from the certified saddles."""
    import jax

    from dlnlab.saddles import escape_experiment, plot_escape, read_dataset, write_dataset

    ds = read_dataset(catalogue or os.path.join(out, "catalogue.nc"), "catalogue")
    method_list = tuple(x.strip() for x in methods.split(","))
    result = escape_experiment(jax.random.key(seed), ds, methods=method_list, learning_rate=learning_rate,
                               num_steps=steps, num_runs=runs, perturbation=perturbation,
                               drop_fraction=drop, direction=direction, batch_size=batch_size,
                               sde_step=sde_step, max_points=max_points)
    result.attrs["seed"] = seed
    path = write_dataset(result, os.path.join(out, "escape.nc"))
    plot_escape(result, os.path.join(out, "figures"))
    escaped = (result["escape_time"].notnull().mean(dim=("point", "run"))).values
    diverged = result["diverged"].mean(dim=("point", "run")).values
    rates = ", ".join(f"{m}: {100 * e:.0f}% escaped, {100 * x:.0f}% diverged"
                      for m, e, x in zip(method_list, escaped, diverged, strict=True))
    _say(f"{result.sizes['point']} saddles, {rates} -> {path}")

"""The balance experiments and dataset shared by fig7 and fig8 (App. I.2): SGD at depth 2 and 4
from Gaussian and from balanced inits, and the per-pair table both figures summarise."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...analysis.stats import finite_median
from ...analysis.summaries import training_parameters
from .config import paper_config, size

CASES = [(2, "gaussian"), (2, "balanced"), (4, "gaussian"), (4, "balanced")]
"""(depth, init) of the balance experiments."""


def experiments(quick: bool) -> dict:
    out = {}
    for depth, init in CASES:
        out[f"L{depth}-{init}"] = paper_config(
            f"balance-L{depth}-{init}", runs=size(quick, 16, 64), horizon=60.0, methods=["sgd"],
            points=241, variables=["amplitude", "diffusion", "balance_residual",
                                   "balance_numerator", "layer_norm"],
            changes={"task.hidden": [12] * (depth - 1), "init.kind": init})
    return out


def analyse(data):
    """``balance_residual``, ``balance_numerator`` ``(depth, init, run, time, pair)`` and
    ``layer_norm`` ``(depth, init, run, time, layer)``, NaN beyond a depth's pairs / layers."""
    first = next(iter(data.values()))
    t = first.time.values
    runs = first.sizes["run"]
    shape = (2, 2, runs, t.size)
    res = np.full(shape + (3,), np.nan)
    num = np.full(shape + (3,), np.nan)
    norm = np.full(shape + (4,), np.nan)
    for key, raw in data.items():
        depth, init = int(key[1]), key.split("-")[1]
        i, j = [2, 4].index(depth), ["gaussian", "balanced"].index(init)
        d = raw.sel(method_name="sgd")
        res[i, j, ..., :depth - 1] = d.balance_residual.transpose("run", "time", "pair").values
        num[i, j, ..., :depth - 1] = d.balance_numerator.transpose("run", "time", "pair").values
        norm[i, j, ..., :depth] = d.layer_norm.transpose("run", "time", "layer").values
    dims = ("depth", "init", "run", "time")
    out = xr.Dataset({"balance_residual": (dims + ("pair",), res),
                      "balance_numerator": (dims + ("pair",), num),
                      "layer_norm": (dims + ("layer",), norm)},
                     coords={"depth": [2, 4], "init": ["gaussian", "balanced"],
                             "run": first.run.values, "time": t, "pair": [1, 2, 3],
                             "layer": [1, 2, 3, 4]})
    out.attrs.update(training_parameters(first))
    out.attrs.pop("depth", None)
    return out


def balance_rows(ds, name) -> list[dict]:
    """Per depth, init and pair of adjacent layers: median over runs of ``ds[name]`` at the
    start and the end, and of the per-run ratio end / start."""
    rows = []
    for depth in ds.depth.values:
        for init in ds.init.values:
            d = ds.sel(depth=depth, init=init)
            for p in range(int(depth) - 1):
                x = d[name].isel(pair=p)
                start, end = x.isel(time=0).values, x.isel(time=-1).values
                rows.append({"depth": int(depth), "init": str(init), "pair": f"{p + 1}-{p + 2}",
                             "start_median": finite_median(start), "end_median": finite_median(end),
                             "end_over_start_median": finite_median(end / start)})
    return rows

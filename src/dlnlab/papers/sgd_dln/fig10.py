"""fig10: the maximal modewise diffusion against 1 / batch size (App. J.2): linear, and
proportional as eq. 7 says (the analysis is shared with fig9). Its five batch sizes run as one
sweep of :mod:`dlnlab.sweep` (one group and compiled program per size; ``data``)."""

from __future__ import annotations

from ...experiments.study import Study
from . import scaling
from .config import paper_config, size


def experiments(quick: bool) -> dict:
    batches = size(quick, [1, 2, 4], [1, 2, 4, 8, 16])
    return {f"{b}": paper_config(f"batch-{b}", runs=size(quick, 32, 128), horizon=50.0,
                                 methods=["sgd"], points=501, variables=["amplitude", "diffusion"],
                                 changes={"training.batch_size": b}) for b in batches}


def analyse(data):
    return scaling.analyse(data, "batch_size")


numbers = scaling.numbers


def data(configs, data_dir, *, fresh=False, progress=False):
    """The experiments as one sweep (:func:`scaling.sweep_data`)."""
    return scaling.sweep_data(configs, data_dir, fresh=fresh, progress=progress, name="fig10")


def claims(ds):
    return scaling.claims(ds, "fig10", "1 / batch size", "App. J.2, Fig. 10")


def figure(ds):
    return scaling.figure(ds, "Fig. 10")


STUDY = Study("fig10", "Maximal modewise diffusion against 1 / batch size", "Fig. 10, App. J.2",
              experiments, analyse, numbers, claims, figure, data)

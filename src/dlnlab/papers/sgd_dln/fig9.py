"""fig9: the maximal modewise diffusion against the learning rate (App. J.1): linear, and
proportional as eq. 7 says (the analysis is shared with fig10). Its five learning rates run as
one sweep of :mod:`dlnlab.sweep` (one compiled program, one chunk; ``data``)."""

from __future__ import annotations

from ...experiments.study import Study
from . import scaling
from .config import paper_config, size


def experiments(quick: bool) -> dict:
    rates = size(quick, [0.005, 0.01, 0.02], [0.0025, 0.005, 0.01, 0.02, 0.04])
    return {f"{lr:g}": paper_config(f"lr-{lr:g}", runs=size(quick, 32, 128), horizon=50.0,
                                    methods=["sgd"], points=501,
                                    variables=["amplitude", "diffusion"],
                                    changes={"training.learning_rate": lr}) for lr in rates}


def analyse(data):
    return scaling.analyse(data, "learning_rate")


numbers = scaling.numbers


def data(configs, data_dir, *, fresh=False, progress=False):
    """The experiments as one sweep (:func:`scaling.sweep_data`)."""
    return scaling.sweep_data(configs, data_dir, fresh=fresh, progress=progress, name="fig9")


def claims(ds):
    return scaling.claims(ds, "fig9", "the learning rate", "App. J.1, Fig. 9")


def figure(ds):
    return scaling.figure(ds, "Fig. 9")


STUDY = Study("fig9", "Maximal modewise diffusion against the learning rate", "Fig. 9, App. J.1",
              experiments, analyse, numbers, claims, figure, data)

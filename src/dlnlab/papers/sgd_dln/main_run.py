"""The paper's main experiment, shared by fig2, fig3 and fig6: gradient flow, SGD, the
anisotropic and the isotropic SDE from the same random inits (one cached run for the three)."""

from __future__ import annotations

from .config import paper_config, size


def experiments(quick: bool) -> dict:
    return {"main": paper_config(
        "main", runs=size(quick, 32, 128), horizon=60.0, methods=["gf", "sgd", "sde", "isotropic"],
        points=301, variables=["amplitude", "diffusion", "reduced_diffusion", "cross_amplitude"])}

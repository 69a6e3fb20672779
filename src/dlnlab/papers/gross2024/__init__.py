"""“Weight fluctuations in (deep) linear neural networks and a derivation of the inverse-variance
flatness relation” (Phys. Rev. Research 6, 033103 (2024), doi:10.1103/PhysRevResearch.6.033103):
every figure and claim as a study (``dlnlab reproduce gross2024 NAME|all``), plus three studies
beyond the paper.

Layout: ``config.py`` (the paper's single-layer setting, :func:`~.config.paper_config`, the
decision rules), ``common.py`` (stationary statistics of recorded weights: windows, per-run
covariances, the bias-corrected covariance error), one module per study — ``fig2`` ... ``fig9``
(Figs. 1 and 7 are drawings of the models) and, beyond the paper, ``discrete`` (the exact
discrete-time stationary covariance and its O(learning rate) gap), ``depth_map`` (the exponent
psi over depth, init scale and P/N) and ``mean_shift`` (the second-order stationary mean of each
teacher mode, docs/theory.md §13) — and ``two_layer`` (the experiments fig8 and fig9 share).
docs/fluctuations.md describes the outputs and what was measured.
"""

from __future__ import annotations

from ...experiments.study import Citation, Paper
from . import depth_map, discrete, fig2, fig3, fig4, fig5, fig6, fig8, fig9, mean_shift
from .config import BASE_CONFIG

STUDY_MODULES = (fig2, fig3, fig4, fig5, fig6, fig8, fig9, discrete, depth_map, mean_shift)
"""The study modules: the paper's figures in order, then the studies beyond it."""

PAPER = Paper(
    name="gross2024",
    title="Weight fluctuations in deep linear networks and the inverse variance-flatness relation",
    # The seed text (shared/seeds/paper-weight-fluctuations-ivfr.txt) gives the DOI
    # 10.1103/PhysRevResearch.6.033103 but not the authors.
    citation=Citation(
        title="Weight fluctuations in (deep) linear neural networks and a derivation of the "
              "inverse-variance flatness relation (Phys. Rev. Research 6, 033103 (2024))"),
    base_config=BASE_CONFIG,
    studies=tuple(module.STUDY for module in STUDY_MODULES),
)

__all__ = ["PAPER", "STUDY_MODULES"]

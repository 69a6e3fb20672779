"""“Stochastic Gradient Descent in the Saddle-to-Saddle Regime of Deep Linear Networks”:
every figure and claim as a study (``dlnlab reproduce sgd-dln NAME|all``).

Layout: ``config.py`` (the base config, :func:`~.config.paper_config`, the decision rules
shared by several studies), one module per study (``fig1`` ... ``appK``: experiments, analyse,
numbers, claims, figure, and its ``STUDY``), and the parts studies share: ``main_run`` (the
experiment of fig2, fig3, fig6), ``balance`` (fig7, fig8), ``scaling`` (fig9, fig10),
``peaks`` (the diffusion-peak claims) and ``overlays`` (theory curves as dataset variables).
"""

from __future__ import annotations

from ...experiments.study import Citation, Paper
from . import appJ3, appK, fig1, fig2, fig3, fig4, fig6, fig7, fig8, fig9, fig10, fig11
from .config import BASE_CONFIG

STUDY_MODULES = (fig1, fig2, fig3, fig4, fig6, fig7, fig8, fig9, fig10, appJ3, fig11, appK)
"""The study modules in the paper's order."""

PAPER = Paper(
    name="sgd-dln",
    title="SGD in the saddle-to-saddle regime of deep linear networks",
    # The seed text (shared/seeds/paper-sgd-saddle-to-saddle-dln.txt) names neither the
    # authors nor an arXiv id.
    citation=Citation(
        title="Stochastic Gradient Descent in the Saddle-to-Saddle Regime of Deep Linear Networks"),
    base_config=BASE_CONFIG,
    studies=tuple(module.STUDY for module in STUDY_MODULES),
)

__all__ = ["PAPER", "STUDY_MODULES"]

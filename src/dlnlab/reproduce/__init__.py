"""Reproduce the SGD-in-deep-linear-networks paper: every figure and claim, one call each.

``reproduce("fig3", quick=True)`` is ``dlnlab reproduce fig3 --quick``; ``RECIPES`` lists the
figures (``docs/reproduction.md``).
"""

from .recipes import RECIPES, Recipe
from .runner import reproduce, resolve_names

__all__ = ["RECIPES", "Recipe", "reproduce", "resolve_names"]

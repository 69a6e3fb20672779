"""dlnlab: gradient descent, SGD and their SDE models on deep linear networks.

Public API in one place. Conventions (docs/theory.md §1): weights are a tuple ``(W_1, ..., W_L)`` with
``W_l`` of shape ``(d_l, d_{l-1})``; ``theta = (vec W_1, ..., vec W_L)`` with column-stacking
``vec``; time ``t = step * learning_rate``.
"""

from . import theory
from .core import *  # noqa: F403
from .core import __all__ as _core_all

__version__ = "0.3.0"
__all__ = ["theory", "__version__", *_core_all]

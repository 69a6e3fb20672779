"""The one list of methods. Everything above the steppers derives from it: the experiment
config (method names and sections), step sizes, labels and colours, the saddle escape
experiments and the conformance suite.

To add a method: write its family module (stepper + a :class:`~.method.Method` record) and add
the record to :data:`METHODS` below (docs/architecture.md, "How to add a method").
"""

from __future__ import annotations

from .gd import GD
from .gradient_flow import GRADIENT_FLOW
from .langevin import ANISOTROPIC, ISOTROPIC
from .method import Method
from .momentum import MOMENTUM_SGD
from .reduced import REDUCED
from .sgd import SGD

METHODS: tuple[Method, ...] = (
    GD,
    GRADIENT_FLOW,
    SGD,
    ANISOTROPIC,
    ISOTROPIC,
    REDUCED,
    MOMENTUM_SGD,
)


def method_names() -> tuple[str, ...]:
    """Names of the registered methods, in registry order."""
    return tuple(m.name for m in METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name raises a one-line ``ValueError`` that
    lists the valid names."""
    for method in METHODS:
        if method.name == name:
            return method
    raise ValueError(f"method={name!r}: unknown; one of {', '.join(method_names())}")

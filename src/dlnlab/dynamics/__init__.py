"""Training dynamics: one stepper per method, all with ``step(key, state, hparams)``."""

from ._ops import counter_normals, key_words
from .steppers import (
    METHODS,
    AnisotropicLangevin,
    GradientDescent,
    GradientFlow,
    Hyperparameters,
    Info,
    IsotropicLangevin,
    OfflineSGD,
    OnlineSGD,
    ReducedSDE,
    State,
    Stepper,
)

__all__ = [
    "METHODS",
    "AnisotropicLangevin",
    "GradientDescent",
    "GradientFlow",
    "Hyperparameters",
    "Info",
    "IsotropicLangevin",
    "OfflineSGD",
    "OnlineSGD",
    "ReducedSDE",
    "State",
    "Stepper",
    "counter_normals",
    "key_words",
]

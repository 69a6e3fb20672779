"""Training dynamics: one stepper family per module, all with ``step(key, state, hparams)``.

- :mod:`.gd`: gradient descent; :mod:`.gradient_flow`: gradient flow (RK4);
- :mod:`.sgd`: online and offline minibatch SGD;
- :mod:`.momentum`: SGD with heavy-ball momentum;
- :mod:`.langevin`: the anisotropic SDE of SGD and isotropic Langevin (Euler-Maruyama);
- :mod:`.reduced`: the reduced modewise SDE;
- :mod:`.registry`: the one list of methods (:func:`get_method`);
- :mod:`.observers`: what the engine records; :mod:`._ops`: the runs-minor fast twin of ``core``.
"""

from ._ops import counter_normals, key_words
from .base import Hyperparameters, Info, State, Stepper, StepSizeHyperparameters
from .gd import GradientDescent
from .gradient_flow import GradientFlow
from .langevin import (
    AnisotropicLangevin,
    IsotropicHyperparameters,
    IsotropicLangevin,
    matched_temperature,
    matched_temperatures,
)
from .method import ConformanceCase, Method, MethodSettings, Section
from .momentum import MomentumHyperparameters, MomentumSGD, MomentumState
from .observers import OBSERVABLE_DIMS, observable_names
from .reduced import ReducedSDE
from .registry import METHODS, get_method, method_names
from .sgd import EpochState, OfflineSGD, OnlineSGD

__all__ = [
    "METHODS",
    "OBSERVABLE_DIMS",
    "AnisotropicLangevin",
    "ConformanceCase",
    "EpochState",
    "GradientDescent",
    "GradientFlow",
    "Hyperparameters",
    "Info",
    "IsotropicHyperparameters",
    "IsotropicLangevin",
    "Method",
    "MethodSettings",
    "MomentumHyperparameters",
    "MomentumSGD",
    "MomentumState",
    "OfflineSGD",
    "OnlineSGD",
    "ReducedSDE",
    "Section",
    "State",
    "StepSizeHyperparameters",
    "Stepper",
    "counter_normals",
    "get_method",
    "key_words",
    "matched_temperature",
    "matched_temperatures",
    "method_names",
    "observable_names",
]

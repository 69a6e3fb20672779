"""The learning coefficient of deep linear networks (docs/llc.md): the SGLD estimator of the local
learning coefficient on the loss of a data set or of the population, its benchmark against the
exact values (:func:`dlnlab.theory.learning_coefficient`), and the coefficient along training."""

from .loss_model import (
    LossModel,
    empirical_loss_model,
    loss,
    population_loss_model,
    task_loss_model,
)
from .padded import estimate_learning_coefficients
from .sampler import (
    LearningCoefficientWarning,
    SamplerSettings,
    default_inverse_temperature,
    estimate_learning_coefficient,
    sampler_settings,
)

__all__ = [
    "LearningCoefficientWarning",
    "LossModel",
    "SamplerSettings",
    "default_inverse_temperature",
    "empirical_loss_model",
    "estimate_learning_coefficient",
    "estimate_learning_coefficients",
    "loss",
    "population_loss_model",
    "sampler_settings",
    "task_loss_model",
]

"""Theory: closed forms and quadratures with the simulator's inputs and outputs (docs/theory.md §6-§12).

Per-mode functions take ``amplitudes``/``spectrum`` with the same trailing mode axis as
``dlnlab.mode_amplitudes`` and return arrays of that shape, so a plot overlay and a test
assertion call the same function.
"""

from .fluctuations import (
    FlatnessFit,
    LinearisedFluctuations,
    Relaxation,
    StationaryFluctuations,
    VarianceCurvature,
    discrete_stationary_covariance,
    fit_flatness_exponent,
    gauge_tangents,
    hessian_noise_covariance,
    layer_slices,
    layer_variance_curvature,
    linearised_fluctuations,
    ou_relaxation,
    project_to_minimum,
    sample_space_matrix,
    sample_space_projector,
    single_layer_discrete_covariance,
    stationary_covariance,
    training_loss_hessian,
    two_layer_relaxation_rates,
    two_layer_second_layer_theory,
)
from .gradient_flow import (
    gradient_flow_curve,
    gradient_flow_time,
    half_learning_time,
    learning_time,
    reachable_modes,
)
from .linear_regression import (
    LyapunovSolution,
    SingleLayerFluctuations,
    isotropic_covariance,
    single_layer_fluctuations,
    solve_lyapunov,
)
from .peak import DiffusionPeak, diffusion_peak, global_threshold, local_threshold
from .reduced import gradient_flow_drift, reduced_diffusion, reduced_drift, reduced_ito_drift
from .stationary import (
    StationaryMoments,
    first_order_moments,
    stationary_density,
    stationary_law_exists,
    stationary_log_density,
    stationary_moments,
)
from .summary import mode_summary

__all__ = [
    "DiffusionPeak",
    "FlatnessFit",
    "LinearisedFluctuations",
    "LyapunovSolution",
    "Relaxation",
    "SingleLayerFluctuations",
    "StationaryFluctuations",
    "StationaryMoments",
    "VarianceCurvature",
    "diffusion_peak",
    "discrete_stationary_covariance",
    "first_order_moments",
    "fit_flatness_exponent",
    "gauge_tangents",
    "global_threshold",
    "gradient_flow_curve",
    "gradient_flow_drift",
    "gradient_flow_time",
    "half_learning_time",
    "hessian_noise_covariance",
    "isotropic_covariance",
    "layer_slices",
    "layer_variance_curvature",
    "learning_time",
    "linearised_fluctuations",
    "local_threshold",
    "mode_summary",
    "ou_relaxation",
    "project_to_minimum",
    "reachable_modes",
    "reduced_diffusion",
    "reduced_drift",
    "reduced_ito_drift",
    "sample_space_matrix",
    "sample_space_projector",
    "single_layer_discrete_covariance",
    "single_layer_fluctuations",
    "solve_lyapunov",
    "stationary_covariance",
    "stationary_density",
    "stationary_law_exists",
    "stationary_log_density",
    "stationary_moments",
    "training_loss_hessian",
    "two_layer_relaxation_rates",
    "two_layer_second_layer_theory",
]

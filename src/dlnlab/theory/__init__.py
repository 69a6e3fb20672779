"""Theory: closed forms and quadratures with the simulator's inputs and outputs (docs/theory.md §6-§10).

Per-mode functions take ``amplitudes``/``spectrum`` with the same trailing mode axis as
``dlnlab.mode_amplitudes`` and return arrays of that shape, so a plot overlay and a test
assertion call the same function.
"""

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
    "LyapunovSolution",
    "SingleLayerFluctuations",
    "StationaryMoments",
    "diffusion_peak",
    "first_order_moments",
    "global_threshold",
    "gradient_flow_curve",
    "gradient_flow_drift",
    "gradient_flow_time",
    "half_learning_time",
    "isotropic_covariance",
    "learning_time",
    "local_threshold",
    "mode_summary",
    "reachable_modes",
    "reduced_diffusion",
    "reduced_drift",
    "reduced_ito_drift",
    "single_layer_fluctuations",
    "solve_lyapunov",
    "stationary_density",
    "stationary_law_exists",
    "stationary_log_density",
    "stationary_moments",
]

"""Analysis of result datasets: learning events per run and the statistics the claims use."""

from .events import crossing_times, diffusion_peaks, learning_events
from .stats import linear_fit, mean_and_se, moments_with_se, wilson_interval

__all__ = ["crossing_times", "diffusion_peaks", "learning_events", "linear_fit", "mean_and_se",
           "moments_with_se", "wilson_interval"]

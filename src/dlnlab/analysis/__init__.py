"""Analysis of result datasets: learning events per run, the statistics the claims use, the
summaries several studies share and the claim-row shape; :mod:`.golden_path`, the GD-vs-SGD
metrics of the Golden-Path protocol (docs/golden-path.md)."""

from . import golden_path
from .claims import VERDICTS, claim_row, format_number, json_safe, verdict_summary
from .events import crossing_times, diffusion_peaks, learning_events
from .stats import (
    bootstrap_ratio_se,
    finite_median,
    finite_quartiles,
    linear_fit,
    mean_and_se,
    median_abs_deviation_from,
    moments_with_se,
    wilson_interval,
)
from .summaries import (
    peak_rows,
    peak_rows_with_deviation,
    teacher_rank,
    training_parameters,
    transit_deviation,
    with_events,
)

__all__ = ["VERDICTS", "bootstrap_ratio_se", "claim_row", "crossing_times", "diffusion_peaks",
           "finite_median", "finite_quartiles", "format_number", "golden_path", "json_safe",
           "learning_events",
           "linear_fit", "mean_and_se", "median_abs_deviation_from", "moments_with_se",
           "peak_rows", "peak_rows_with_deviation", "teacher_rank",
           "training_parameters", "transit_deviation", "verdict_summary", "wilson_interval",
           "with_events"]

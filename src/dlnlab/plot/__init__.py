"""Figure functions that take result Datasets."""

from .figures import amplitude_figure, diffusion_figure, experiment_figures, loss_figure

__all__ = ["amplitude_figure", "diffusion_figure", "experiment_figures", "loss_figure"]

"""Theory curves of the paper's figure datasets, as dataset variables (docs/theory.md §6).

The studies' ``analyse`` steps call these, so every curve a figure draws is in ``NAME/NAME.nc``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...analysis.summaries import training_parameters
from ...theory.reduced import reduced_diffusion


def formula_grid(spectrum, depth, learning_rate, batch_size, label_noise, num=241):
    """The reduced diffusion ``D(a)`` (docs/theory.md §6) on ``a / s`` in ``[0, 1.1]``, per mode:
    ``(x, values)`` with ``values`` of shape ``(mode, num)``."""
    x = np.linspace(0.0, 1.1, num)
    s = np.asarray(spectrum, dtype=np.float64)
    values = np.stack([np.asarray(reduced_diffusion(x * si, si, depth, learning_rate,
                                                    batch_size, label_noise)) for si in s])
    return x, values


def formula_dataset(raw: xr.Dataset, modes: int) -> xr.Dataset:
    """``formula_diffusion (mode, normalised_amplitude)``: the formula on a grid of ``a / s``
    for the first ``modes`` modes of a run dataset, at its training parameters."""
    p = training_parameters(raw)
    x, values = formula_grid(raw.spectrum.values[:modes], int(p["depth"]), p["learning_rate"],
                             p["batch_size"], p["label_noise"])
    return xr.Dataset({"formula_diffusion": (("mode", "normalised_amplitude"), values)},
                      coords={"normalised_amplitude": x})


def theory_max_diffusion(spectrum, depth, learning_rate, batch_size=1, label_noise=0.0):
    """Maximum over ``a`` in ``(0, s]`` of the reduced diffusion, per mode (fig9, fig10)."""
    x, values = formula_grid(spectrum, depth, learning_rate, batch_size, label_noise, 20001)
    return np.max(np.where(x <= 1.0, values, -np.inf), axis=-1)

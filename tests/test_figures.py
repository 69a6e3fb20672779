"""Figures of ``dlnlab run`` (``dlnlab.plot.figures``) on small real datasets: which figures a run
gets, titles derived from the data (no diffusion-peak claim for a label-noise run), every mode
visible in the diffusion figure (per-mode scale), the stationary law drawn from the dataset's own
variables, and unreachable modes labelled."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dlnlab.experiments import load_config, run_experiment
from dlnlab.plot import experiment_figures
from dlnlab.plot.figures import (
    diffusion_figure,
    end_of_training_amplitudes,
    stationary_figure,
    stationary_modes,
)

SMALL = ["runs=3", "record.points=30"]


@pytest.fixture(scope="module")
def default_run():
    """The default experiment (three modes, no label noise), GD and SGD, to t = 3."""
    return run_experiment(load_config(None, [*SMALL, "training.horizon=3",
                                             'methods=["gd", "sgd"]']))


@pytest.fixture(scope="module")
def label_noise_run():
    """examples/label_noise.toml (depth 2, one mode, sigma = 1), SGD and the reduced SDE, t = 20."""
    return run_experiment(load_config("examples/label_noise.toml",
                                      [*SMALL, "training.horizon=20", 'methods=["sgd", "reduced"]']))


def titles(fig) -> list[str]:
    found = [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        found.append(fig._suptitle.get_text())
    return found


def legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def render(fig) -> None:
    FigureCanvasAgg(fig).draw()          # draws every artist: fails on bad data or labels


def test_default_run_gets_amplitude_diffusion_and_loss_figures(default_run):
    figures = experiment_figures(default_run)
    assert sorted(figures) == ["amplitudes", "diffusion", "loss"]
    for fig in figures.values():
        render(fig)
    assert "peaks (dotted) before each mode" in " ".join(titles(figures["diffusion"]))


def test_label_noise_run_gets_a_stationary_figure_and_no_peak_claim(label_noise_run):
    figures = experiment_figures(label_noise_run)
    assert sorted(figures) == ["amplitudes", "diffusion", "loss", "stationary"]
    for fig in figures.values():
        render(fig)
    every_title = " ".join(t for fig in figures.values() for t in titles(fig))
    assert "peaks before" not in every_title and "peaks (dotted)" not in every_title
    assert "no interior peak predicted" in every_title
    assert "label noise σ = 1" in every_title


def test_diffusion_figure_scales_each_mode_to_its_formula(default_run):
    """Every mode's dashed formula is drawn with maximum 1: mode 3, 1e-3 times mode 1's D, is as
    visible as mode 1 (on one linear axis it was a flat line)."""
    ds = default_run
    formula = ds.theory_diffusion_formula.values
    assert formula[2].max() < 0.01 * formula[0].max()
    fig = diffusion_figure(ds)
    ax = fig.axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert len(dashed) == 3
    for line, a in zip(dashed, range(3), strict=True):
        np.testing.assert_allclose(line.get_ydata(), formula[a] / formula[a].max())
    # the runs' own D_a are divided by the same per-mode scale
    thin = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    np.testing.assert_allclose(thin[-1].get_ydata(), ds.diffusion.isel(method_name=0, mode=2).values[-1]
                               / formula[2].max(), rtol=1e-6)


def test_stationary_figure_draws_the_datasets_law_and_the_end_of_training_histogram(label_noise_run):
    ds = label_noise_run
    assert stationary_modes(ds) == [0]
    mean = float(ds.theory_stationary_mean.values[0])
    sd = math.sqrt(float(ds.theory_stationary_variance.values[0]))
    fig = stationary_figure(ds)
    ax = fig.axes[0]
    law = [line for line in ax.get_lines() if line.get_linestyle() == "--"][0]
    x, y = law.get_xdata(), law.get_ydata()
    np.testing.assert_allclose(y, np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)))
    # one histogram per method, normalised, over the runs' records of the last 20% of the horizon
    late = ds.time.values >= 0.8 * ds.time.values[-1]
    expected = ds.amplitude.isel(method_name=0, mode=0).values[:, late].ravel()
    np.testing.assert_array_equal(np.sort(end_of_training_amplitudes(ds, 0, 0)), np.sort(expected))
    assert len(ax.patches) == ds.sizes["method_name"]
    # a density on a grid, when the dataset carries one, is drawn instead of the Gaussian
    grid = np.linspace(0.5, 1.5, 11)
    with_density = ds.assign(theory_stationary_density=(("mode", "amplitude_grid"),
                                                        np.linspace(0, 1, 11)[None, :].repeat(
                                                            ds.sizes["mode"], 0)),
                             amplitude_grid=grid)
    law = [line for line in stationary_figure(with_density).axes[0].get_lines()
           if line.get_linestyle() == "--"][0]
    np.testing.assert_array_equal(law.get_xdata(), grid)
    np.testing.assert_array_equal(law.get_ydata(), np.linspace(0, 1, 11))


def test_stationary_figure_without_a_law_is_one_line_error(default_run):
    with pytest.raises(ValueError, match=r"^theory_stationary_mean=all NaN: no mode has a finite"):
        stationary_figure(default_run)


def test_unreachable_mode_is_grey_and_labelled():
    """Hidden width 1 against a rank-2 teacher: mode 2 cannot be learned; the figures say so."""
    ds = run_experiment(load_config(None, [*SMALL, "training.horizon=4", 'methods=["gd"]',
                                           "task.d_in=2", "task.d_out=2", "task.hidden=[1]",
                                           "task.spectrum=[1.0, 0.5]"]))
    if "theory_reachable" not in ds:
        ds = ds.assign(theory_reachable=("mode", np.array([True, False])))
    assert ds.theory_reachable.values.tolist() == [True, False]
    figures = experiment_figures(ds)
    for name in ("amplitudes", "diffusion"):
        texts = legend_texts(figures[name])
        assert any(t.startswith("mode 2 (s=0.5): unreachable") for t in texts), texts
        assert not any(t.startswith("mode 1") and "unreachable" in t for t in texts)

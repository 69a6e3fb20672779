"""The learning coefficient along training and at single points (dlnlab.llc.training, the
``dlnlab llc`` command, the figure).

- ``learned_rank`` follows the project's event rule (first crossing of 0.9 s_k) on hand-made
  series, and a 0.5 s_k rule gives other ranks (the test can fail);
- the along-training dataset has its dims and variables, ``exact_truncation_coefficient`` is
  ``learning_coefficient(widths, rank_learned)`` at every checkpoint, the rank is
  non-decreasing in time and agrees with the recorded amplitudes, and a constant-rank (teacher
  rank) column would not match;
- at the solution of a depth-1 network (a regular model: lambda = d_in d_out / 2 exactly) the
  estimate agrees with the closed-form stationary mean of the discretised Langevin chain within
  5 chains' standard errors, and with the oracle value within 5 standard errors plus the stated
  bias budget (that mean minus lambda); the neighbouring values lambda +- 1/2 are rejected;
- ``dlnlab llc`` gives one-line errors (exit 2, nothing written) for bad flags, ``--set`` keys
  and values, and writes an ``llc.nc`` that opens in xarray and equals the library's result;
  ``--at along`` writes the figure.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import xarray as xr

from conftest import K_SIGMA, assert_close_mc, assert_rejected_mc
from dlnlab import cli as dlnlab_cli
from dlnlab.experiments.config import validate_config
from dlnlab.llc import default_inverse_temperature, loss, population_loss_model
from dlnlab.llc.cli import llc_command
from dlnlab.llc.training import (
    LEARNED_FRACTION,
    along_training_settings,
    learned_rank,
    learning_coefficient_along_training,
    learning_coefficient_at,
    load_training_config,
    minimum_loss,
)
from dlnlab.plot.llc import along_training_figure
from dlnlab.theory.learning_coefficient import learning_coefficient

if not any(command.name == "llc" for command in dlnlab_cli.app.registered_commands):
    dlnlab_cli.app.command("llc")(llc_command)    # until dlnlab.cli registers it itself

# a small saddle-to-saddle task: widths (4, 4, 4), teacher s = (1, 0.5), small init
TINY = {"runs": 2, "dtype": "float64",
        "task": {"d_in": 4, "d_out": 4, "hidden": [4], "spectrum": [1.0, 0.5]},
        "init": {"gamma": 3.0}, "training": {"horizon": 30.0, "learning_rate": 0.02},
        "record": {"points": 60}}
SHORT = {"num_burnin_steps": 400, "num_draws": 200}


def test_learned_rank_is_the_first_crossing_of_0_9_s():
    times = np.arange(6.0)
    s = np.array([1.0, 0.5, 0.0])
    amplitude = np.array([[0.0, 0.5, 0.95, 0.99, 0.85, 1.0],     # crosses 0.9 at t = 2
                          [0.0, 0.1, 0.3, 0.46, 0.5, 0.5],       # crosses 0.45 at t = 3
                          [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]).T     # s = 0: never counts
    at = np.array([0.0, 1.5, 2.0, 3.0, 4.0, 5.0])
    expected = np.array([0, 0, 1, 2, 2, 2])    # first crossing: the dip at t = 4 keeps mode 1
    assert LEARNED_FRACTION == 0.9
    np.testing.assert_array_equal(learned_rank(times, amplitude, s, at), expected)
    # batched over runs
    both = learned_rank(times, np.stack([amplitude, amplitude * 0.0]), s, at)
    np.testing.assert_array_equal(both, np.stack([expected, np.zeros(6, int)]))
    # a half-learned rule differs: mode 1 counts from t = 1, mode 2 from t = 3
    half = np.sum(amplitude[:, :2] >= 0.5 * s[:2], axis=1)
    assert not np.array_equal(half, expected)


@pytest.fixture(scope="module")
def along():
    config = validate_config(TINY)
    return learning_coefficient_along_training(config, num_checkpoints=7,
                                               settings=along_training_settings(**SHORT))


def test_along_training_dataset_structure_and_exact_steps(along):
    ds = along
    assert dict(ds.sizes) == {"method_name": 2, "run": 2, "checkpoint": 7, "mode": 4,
                              "record_time": ds.sizes["record_time"]}
    assert list(ds.method_name.values) == ["gd", "sgd"]
    for name in ("learning_coefficient", "learning_coefficient_standard_error", "chain_spread",
                 "rank_learned", "exact_truncation_coefficient", "loss", "mean_acceptance",
                 "warning_count", "flagged_chains", "chains_used"):
        assert ds[name].dims == ("method_name", "run", "checkpoint"), name
    assert "conjecture" in ds.attrs["description"]
    time = ds.time.values
    assert time[0] == 0.0 and time[-1] == pytest.approx(30.0) and np.all(np.diff(time) > 0)
    widths = tuple(ds.attrs["widths"])
    assert widths == (4, 4, 4)
    rank = ds.rank_learned.values
    # non-decreasing along each run, from nothing learned to the whole teacher
    assert np.all(np.diff(rank, axis=-1) >= 0)
    assert np.all(rank[..., 0] == 0) and np.all(rank[..., -1] == 2)
    # the rank agrees with the amplitudes recorded at the checkpoints (first-crossing rule:
    # a mode above 0.9 s now was counted; a counted mode is still above 0.5 s)
    a = ds.amplitude.values[..., :2]
    s = ds.spectrum.values[:2]
    assert np.all(rank >= np.sum(a >= 0.9 * s, axis=-1))
    assert np.all(rank <= np.sum(a >= 0.5 * s, axis=-1))
    # the exact column is the oracle at the learned rank, entry by entry
    exact = np.vectorize(lambda r: float(learning_coefficient(widths, int(r)).value))(rank)
    np.testing.assert_array_equal(ds.exact_truncation_coefficient.values, exact)
    multiplicity = np.vectorize(lambda r: learning_coefficient(widths, int(r)).multiplicity)(rank)
    np.testing.assert_array_equal(ds.exact_truncation_multiplicity.values, multiplicity)
    teacher_value = float(learning_coefficient(widths, 2).value)
    assert ds.attrs["true_parameter_coefficient"] == teacher_value
    assert not np.all(ds.exact_truncation_coefficient.values == teacher_value)   # it steps
    # the loss at a checkpoint is the training loss on the record grid at that time
    grid = ds.record_time.values
    np.testing.assert_array_equal(
        ds.loss.values, ds.training_loss.values[..., np.searchsorted(grid, time)])
    assert np.all(np.isfinite(ds.learning_coefficient.values))
    assert np.all((ds.mean_acceptance.values > 0) & (ds.mean_acceptance.values <= 1))
    assert ds.attrs["inverse_temperature"] == pytest.approx(default_inverse_temperature(100_000))
    # the escape reference: lambda at the true parameter - n beta L(w0) (no label noise, the
    # teacher fits through the narrowest width, so min L = 0); L(w0) is the run's loss
    assert ds.attrs["minimum_loss"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(ds.initial_loss.values, ds.loss.values, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        ds.escape_reference.values,
        teacher_value - ds.attrs["inverse_temperature"] * ds.initial_loss.values, rtol=1e-9)


def test_point_estimate_at_init_equals_the_first_checkpoint(along):
    """Checkpoint 0 is the initial weights and the chains' key depends only on (method, run,
    checkpoint): the point estimate of run 1 (computed with 2 runs there, 1 method here) is the
    same number, and its exact value is marked as not applicable."""
    est = learning_coefficient_at(validate_config(TINY), "init", method="sgd", run=1, warn=False,
                                  settings=along_training_settings(**SHORT))
    assert float(est.learning_coefficient) == float(
        along.learning_coefficient.sel(method_name="sgd", run=1, checkpoint=0))
    assert math.isnan(est.attrs["exact_learning_coefficient"]) and est.attrs["rank_learned"] == -1


def test_along_training_figure_draws_from_the_dataset(along, tmp_path):
    fig = along_training_figure(along)
    left, right = fig.axes[:2]
    assert left.get_yscale() == "log" and right.get_yscale() == "symlog"
    assert "conjecture" in right.get_title()
    assert len(left.get_lines()) == along.sizes["method_name"] * along.sizes["run"]


def test_minimum_loss_is_the_rank_constrained_minimum():
    rng = np.random.default_rng(5)
    s = np.array([2.0, 1.0, 0.5])
    left, _ = np.linalg.qr(rng.normal(size=(4, 3)))
    right, _ = np.linalg.qr(rng.normal(size=(5, 3)))
    teacher = left @ np.diag(s) @ right.T
    noise = np.diag([0.1, 0.2, 0.3, 0.4])
    whitened = population_loss_model(teacher, None, noise, num_samples=100)
    for rank in range(4):     # whitened: 0.5 tr(S_eps) + 0.5 sum_{k > rank} s_k^2
        assert minimum_loss(whitened, rank) == pytest.approx(0.5 * 1.0 + 0.5 * np.sum(s[rank:] ** 2))
    root = rng.normal(size=(5, 5))
    covariance = root @ root.T / 5 + 0.1 * np.eye(5)
    model = population_loss_model(teacher, covariance, None, num_samples=100)
    values, vectors = np.linalg.eigh(covariance)
    half = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    u, sv, vt = np.linalg.svd(teacher @ half)
    for rank in range(1, 4):
        a, b = u[:, :rank] * sv[:rank], vt[:rank] @ np.linalg.inv(half)   # W* = a b, rank `rank`
        value = minimum_loss(model, rank)
        assert float(loss((a @ b,), model)) == pytest.approx(value, abs=1e-12)
        for _ in range(5):   # no rank-`rank` neighbour is lower
            nearby = (a + 1e-3 * rng.normal(size=a.shape)) @ (b + 1e-3 * rng.normal(size=b.shape))
            assert float(loss((nearby,), model)) >= value - 1e-12
    # the formula without S_xx^(-1/2) (Eckart-Young on S_yx alone) is another number
    wrong = 0.5 * (float(model.target_moment)
                   - np.sum(np.linalg.svd(np.asarray(model.cross_moment), compute_uv=False)[:1] ** 2))
    assert abs(wrong - minimum_loss(model, 1)) > 1e-3


def _depth_one_config():
    return validate_config({"runs": 1, "dtype": "float64",
                            "task": {"d_in": 3, "d_out": 2, "hidden": [], "spectrum": [1.0, 0.5]}})


def test_estimate_at_a_regular_solution_matches_the_exact_coefficient():
    """Depth 1, whitened population loss ``0.5 ||W - M||^2``: the localised tempered posterior
    is Gaussian with precision ``a = n beta + gamma`` in each of the ``P = 6`` directions, and the
    chain ``w + (eps/2) grad log p + sqrt(eps) xi`` has stationary variance ``1 / (a (1 - eps a /
    4))``; so ``E[lambda_hat] = (n beta / 2) P / (a (1 - eps a / 4))``, exactly. The oracle gives
    ``lambda = P / 2 = 3``; the difference is the estimator's bias budget here."""
    settings = along_training_settings(num_chains=16, num_burnin_steps=1000, num_draws=4000,
                                       step_size=1e-5)
    est = learning_coefficient_at(_depth_one_config(), "solution", settings=settings, warn=False)
    exact = learning_coefficient((3, 2), 2)
    assert exact.value == Fraction(3) and est.attrs["exact_learning_coefficient"] == 3.0
    nbeta = default_inverse_temperature(100_000)
    precision = nbeta + settings.localisation
    chain_mean = 0.5 * nbeta * 6 / (precision * (1 - settings.step_size * precision / 4))
    value = float(est.learning_coefficient)
    se = float(est.learning_coefficient_standard_error)
    assert int(est.attrs["num_chains_used"]) == 16 and 0 < se < 0.1
    assert_close_mc(value, chain_mean, se, what="stationary mean of the discretised chain")
    bias = abs(chain_mean - 3.0)       # 0.066: discretisation (+2.2%), localisation (-0.01%)
    assert abs(value - 3.0) <= K_SIGMA * se + bias
    # the neighbouring values of the oracle's lattice (steps of 1/4 .. 1/2) are resolved
    assert_rejected_mc(value, 3.5, se, what="lambda + 1/2")
    assert_rejected_mc(value, 2.5, se, what="lambda - 1/2")
    assert math.isclose(float(est.mean_acceptance.mean()), 1.0, abs_tol=0.1)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = dlnlab_cli.main(["llc", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("args", "message"), [
    (("--at", "middle"), "at='middle': must be one of init, solution, end, along"),
    (("--set", "sampler.step_sise=1e-6"), "sampler.step_sise=1e-06: unknown sampler field; did "
                                          "you mean sampler.step_size?"),
    (("--set", "sampler.step_size=-1"), "sampler.step_size=-1"),
    (("--set", "sampler.num_draws=150"), "sampler.num_draws=150: must be a multiple of "
                                         "diagnostic_every=100"),
    (("--set", "sampler.num_chains=\"4\""), "sampler.num_chains='4'"),
    (("--set", "training.horizn=3"), "training.horizn=3: unknown field; did you mean "
                                     "training.horizon?"),
    (("--method", "reduced", "--at", "along"), "'parameters' (the weights) is not defined for "
                                               "'reduced'"),
    (("--method", "nope"), "methods='nope': unknown method"),
    (("--at", "along", "--checkpoints", "1"), "num_checkpoints=1: must be an integer >= 2"),
    (("--num-samples", "1"), "num_samples=1: must be an integer >= 2"),
    (("--runs", "x"), "--runs"),
])
def test_cli_errors_are_one_line(capsys, tmp_path, args, message):
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, *args, "--out", out)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "Traceback" not in stderr and not out.exists()


def test_cli_refuses_a_file_as_out_folder(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, stderr = cli(capsys, "--out", target)
    assert code == 2 and "is a file, not a folder" in stderr


def test_load_training_config_routes_sampler_keys():
    config, fields = load_training_config(None, ["sampler.step_size=2e-6", "training.horizon=50",
                                                 "sampler.num_chains=2"])
    assert fields == {"step_size": 2e-6, "num_chains": 2}
    assert config.training.horizon == 50.0 and config.dtype == "float64" and config.runs == 4


def test_cli_writes_a_dataset_equal_to_the_library_result(capsys, tmp_path):
    toml = tmp_path / "depth1.toml"
    toml.write_text('runs = 1\ndtype = "float64"\n[task]\nd_in = 3\nd_out = 2\nhidden = []\n'
                    'spectrum = [1.0, 0.5]\n')
    out = tmp_path / "solution"
    code, stdout, stderr = cli(capsys, toml, "--at", "solution", "--quiet", "--out", out,
                               "--set", "sampler.num_burnin_steps=200", "--set",
                               "sampler.num_draws=200")
    assert code == 0, stderr
    assert "exact λ = 3" in stdout and "true parameter" in stdout
    with xr.open_dataset(out / "llc.nc", engine="h5netcdf") as ds:
        written = ds.load()
    library = learning_coefficient_at(_depth_one_config(), "solution", warn=False,
                                      settings=along_training_settings(num_burnin_steps=200,
                                                                       num_draws=200))
    assert float(written.learning_coefficient) == float(library.learning_coefficient)
    assert written.attrs["exact_learning_coefficient"] == 3.0
    assert written.attrs["at"] == "solution"


def test_cli_along_writes_dataset_and_figure(capsys, tmp_path, along):
    toml = tmp_path / "tiny.toml"
    toml.write_text('runs = 2\ndtype = "float64"\n[task]\nd_in = 4\nd_out = 4\nhidden = [4]\n'
                    'spectrum = [1.0, 0.5]\n[init]\ngamma = 3.0\n[training]\nhorizon = 30.0\n'
                    'learning_rate = 0.02\n[record]\npoints = 60\n')
    out = tmp_path / "along"
    code, stdout, stderr = cli(capsys, toml, "--at", "along", "--checkpoints", "7", "--quiet",
                               "--out", out, "--set", "sampler.num_burnin_steps=400",
                               "--set", "sampler.num_draws=200")
    assert code == 0, stderr
    assert {p.name for p in out.iterdir()} == {"llc.nc", "llc.png", "llc.pdf"}
    with xr.open_dataset(out / "llc.nc", engine="h5netcdf") as ds:
        written = ds.load()
    xr.testing.assert_equal(written.learning_coefficient, along.learning_coefficient)
    np.testing.assert_array_equal(written.rank_learned.values, along.rank_learned.values)
    assert "conjecture" in stdout

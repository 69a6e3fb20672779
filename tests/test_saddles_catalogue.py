"""Catalogue dataset, files, figures and the ``saddles`` CLI (docs/saddles.md "CLI", "Catalogue").

The CLI test runs ``sample``, ``certify`` and ``escape`` with tiny settings and checks the datasets
against independent computations: the population loss and gradient of the stored weights, numpy's
``matrix_rank`` of the partial products, the stratum loss levels.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import typer
import xarray as xr

import dlnlab as d
from dlnlab import saddles as sd
from dlnlab.io import atomic_write_dataset, read_dataset
from dlnlab.saddles.cli import saddles_app


def run(*args: str) -> None:
    """Invoke the sub-app as ``dlnlab saddles ...`` would (exceptions propagate)."""
    typer.main.get_command(saddles_app).main(args=list(args), prog_name="dlnlab saddles",
                                              standalone_mode=False)


def test_partial_product_ranks_match_numpy(key):
    """rank(W_j ... W_i) for every 1 <= i <= j <= L against numpy.linalg.matrix_rank, at an exact
    saddle with two zero residual blocks (ranks drop to r across them)."""
    task = d.Task.from_spectrum(key, 4, 4, [3.0, 2.0, 1.0])
    form = sd.normal_form(task, (0,))
    weights = sd.assemble_weights(form, sd.exact_residuals(key, (4, 5, 5, 5, 4), 1, (2, 4)))
    ranks = np.asarray(jax.jit(sd.partial_product_ranks)(weights))
    pairs = sd.layer_pairs(4)
    assert len(pairs) == ranks.size == 10
    for (i, j), rank in zip(pairs, ranks, strict=True):
        product = np.asarray(weights[i - 1])
        for l in range(i + 1, j + 1):
            product = np.asarray(weights[l - 1]) @ product
        assert rank == np.linalg.matrix_rank(product), (i, j)
    assert ranks[pairs.index((1, 4))] == 1 and ranks[pairs.index((1, 1))] == 4


def test_choose_subsets(key):
    task = d.Task.from_spectrum(key, 4, 4, [3.0, 2.0, 1.0])             # mode 3 has s = 0
    assert sd.choose_subsets(task, 2, "top") == ((0, 1),)
    assert sd.choose_subsets(task, 2, "all") == ((0, 1), (0, 2), (1, 2))
    assert sd.choose_subsets(task, 1, [(2,), (0, 1)]) == ((2,),)
    with pytest.raises(ValueError, match="rank="):
        sd.choose_subsets(task, 4, "top")
    with pytest.raises(ValueError, match="subsets="):
        sd.choose_subsets(task, 1, "some")


@pytest.mark.slow
def test_cli_sample_certify_escape(tmp_path, capsys):
    """End to end through the CLI (about 10-15 s: every stage compiles once)."""
    out = str(tmp_path / "run")
    run("sample", "--out", out, "--widths", "3,4,3", "--spectrum", "2,1,0.5", "--ranks", "1",
        "--chains", "2", "--exact", "1", "--steps", "100", "--quench-steps", "100",
        "--refine-iterations", "30", "--seed", "3")
    points = sd.read_catalogue(os.path.join(out, "points.nc"))
    assert points.sizes["point"] == 3 and points.attrs["seed"] == 3
    assert sd.load_config(sd.SampleConfig, os.path.join(out, "config.toml")).seed == 3
    run("certify", "--out", out)
    cat = sd.read_catalogue(os.path.join(out, "catalogue.nc"), certified=True)
    assert cat.attrs["sample_config"] == points.attrs["sample_config"]     # carried along
    for name in ("loss_levels", "smallest_eigenvalue", "index_histogram"):
        for ext in ("png", "pdf"):
            assert os.path.getsize(os.path.join(out, "figures", f"{name}.{ext}")) > 1000
    task = sd.task_from_dataset(cat)
    weights = sd.stacked_weights(cat)
    loss = np.asarray(jax.vmap(lambda w: d.population_loss(w, task))(weights))
    grad = np.asarray(jax.vmap(lambda w: jnp.linalg.norm(d.flatten_weights(d.gradient(w, task))))(weights))
    np.testing.assert_allclose(cat["loss"].values, loss, rtol=1e-12)
    np.testing.assert_allclose(cat["gradient_norm"].values, grad, rtol=1e-6, atol=1e-15)
    # every point is critical; a critical point of the whitened loss has W = U_T U_T^T M for some
    # set T of modes (loss 0.5 sum_{q not in T} s_q^2); the exact points stay in their stratum T = S
    # (an SGLD point that was far from the variety may be refined into a neighbouring stratum)
    assert np.all(cat["gradient_norm"].values <= cat["gradient_tolerance"].values)
    u, s, vt = np.linalg.svd(cat["teacher"].values)
    for i, w in enumerate(np.asarray(jax.vmap(d.end_to_end)(weights))):
        amplitudes = np.diag(u.T @ w @ vt.T)
        learned = np.abs(amplitudes - s) < 1e-6
        assert np.all(learned | (np.abs(amplitudes) < 1e-6)), amplitudes
        np.testing.assert_allclose(w, (u[:, learned] * s[learned]) @ vt[learned], atol=1e-6)
        np.testing.assert_allclose(cat["loss"].values[i], 0.5 * np.sum(s[~learned] ** 2), rtol=1e-8)
    exact = cat["construction"].values == 1
    np.testing.assert_allclose(cat["loss"].values[exact], cat["stratum_loss"].values[exact], rtol=1e-12)
    assert set(cat["classification"].values) <= {sd.STRICT_SADDLE, sd.NON_STRICT_SADDLE}
    assert cat["partial_rank"].dims == ("point", "pair") and cat.sizes["eigen"] == 6
    np.testing.assert_array_equal(cat["smallest_eigenvalue"].values,
                                  cat["smallest_eigenvalues"].values[:, 0])
    run("escape", "--out", out, "--steps", "300", "--runs", "2", "--methods", "sgd")
    esc = read_dataset(os.path.join(out, "escape.nc"))
    assert sd.load_config(sd.EscapeConfig, os.path.join(out, "escape.toml")).methods == ["sgd"]
    assert esc["escape_time"].dims == ("method_name", "point", "run")
    assert list(esc["method_name"].values) == ["sgd"]
    assert os.path.getsize(os.path.join(out, "figures", "escape_times.pdf")) > 1000
    printed = capsys.readouterr().out
    assert "points certified" in printed and "escaped" in printed


def test_cli_errors_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^task\.widths\[1\]='x': Input should be a valid integer$"):
        run("sample", "--out", str(tmp_path), "--widths", "3,x")
    with pytest.raises(ValueError, match=r"^catalogue='.*points\.nc': no such file$"):
        run("certify", "--out", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"^sampler\.subsets='some': Input should be 'top' or 'all'$"):
        run("sample", "--out", str(tmp_path), "--subsets", "some")
    assert os.listdir(tmp_path) == []                                    # failed before writing


def _tiny_points(widths=(2, 3, 2)) -> xr.Dataset:
    """A small catalogue-shaped dataset (the variables read_catalogue requires)."""
    p = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    rng = np.random.default_rng(0)
    n, m = 3, min(widths[0], widths[-1])
    return xr.Dataset(
        {"theta": (("point", "parameter"), rng.normal(size=(n, p))),
         "rank": (("point",), np.arange(n, dtype=np.int32)),
         "subset": (("point", "mode"), np.zeros((n, m), np.int8)),
         "construction": (("point",), np.ones(n, np.int8)),
         "loss": (("point",), rng.uniform(size=n)),
         "stratum_loss": (("point",), rng.uniform(size=n)),
         "teacher": (("output", "input"), rng.normal(size=(widths[-1], widths[0]))),
         "spectrum": (("mode",), np.arange(m, 0, -1.0))},
        coords={"point": np.arange(n)}, attrs={"widths": list(widths), "dtype": "float64"})


def test_catalogue_file_round_trip_through_the_atomic_writer(tmp_path):
    """The one writer (dlnlab.io) stores the widths as JSON; read_catalogue and stacked_weights
    give back the same widths and weights; files of the older format (an integer-array attribute)
    still read."""
    ds = _tiny_points()
    path = atomic_write_dataset(ds, tmp_path / "sub" / "points.nc")
    assert sorted(os.listdir(tmp_path / "sub")) == ["points.nc"]           # no temporary left behind
    back = sd.read_catalogue(path)
    assert sd.catalogue_widths(back) == (2, 3, 2) == sd.catalogue_widths(ds)
    np.testing.assert_array_equal(back["theta"].values, ds["theta"].values)
    for a, b in zip(sd.stacked_weights(back), sd.stacked_weights(ds), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [w.shape[1:] for w in sd.stacked_weights(back)] == [(3, 2), (2, 3)]
    old = ds.copy()
    old.attrs["widths"] = np.array([2, 3, 2])
    old.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")                 # bypasses the writer
    assert sd.catalogue_widths(sd.read_catalogue(tmp_path / "old.nc")) == (2, 3, 2)


def test_read_catalogue_rejects_what_is_not_a_catalogue(tmp_path):
    ds = _tiny_points()
    wrong = ds.copy()
    wrong.attrs["widths"] = [2, 4, 2]                                     # theta has 12, not 16
    atomic_write_dataset(wrong, tmp_path / "wrong.nc")
    with pytest.raises(ValueError, match=r"^catalogue='.*wrong\.nc': not a saddle catalogue "
                                         r"\(theta .* does not match widths \[2, 4, 2\]\)$"):
        sd.read_catalogue(tmp_path / "wrong.nc")
    atomic_write_dataset(ds.drop_vars(["theta", "teacher"]), tmp_path / "other.nc")
    with pytest.raises(ValueError, match=r"not a saddle catalogue \(missing variables: theta, teacher\)$"):
        sd.read_catalogue(tmp_path / "other.nc")
    atomic_write_dataset(ds, tmp_path / "points.nc")
    sd.read_catalogue(tmp_path / "points.nc")                             # fine uncertified
    with pytest.raises(ValueError, match=r"not certified \(missing variables: classification, .*\): "
                                         r"run dlnlab saddles certify first$"):
        sd.read_catalogue(tmp_path / "points.nc", certified=True)

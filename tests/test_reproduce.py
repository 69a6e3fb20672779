"""``dlnlab reproduce``: every recipe runs in its quick form, and every number of the claims
table is recomputed here from the saved figure datasets by independent code (loops and
``numpy.polyfit``, not ``dlnlab.analysis``), so the table cannot be typed in.

The quick run of all recipes happens once per session, in a subprocess through the command
line (as a user runs it, with the CLI's XLA flags): about 5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from dlnlab.reproduce import RECIPES, resolve_names
from dlnlab.reproduce.recipes import ORDER_FRACTION, PEAK_FRACTION

ALL = list(RECIPES)


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduction-quick")
    result = subprocess.run([sys.executable, "-m", "dlnlab.cli", "reproduce", "all", "--quick",
                             "--out", str(out), "--quiet"], capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _claims(out, name):
    return {c["id"]: c for c in json.loads((out / name / "claims.json").read_text())}


def _load(out, name):
    return xr.load_dataset(out / name / f"{name}.nc", engine="h5netcdf")


# ---------------------------------------------------------------------- every recipe ran


@pytest.mark.parametrize("name", ALL)
def test_recipe_writes_figure_dataset_numbers_and_claims(quick_out, name):
    folder = quick_out / name
    for file in (f"{name}.png", f"{name}.pdf", f"{name}.nc", "numbers.csv", "numbers.md",
                 "claims.json", "recipe.json"):
        assert (folder / file).is_file(), f"{name}: {file} missing"
    assert (folder / f"{name}.png").stat().st_size > 20_000       # a drawn figure, not a blank
    meta = json.loads((folder / "recipe.json").read_text())
    assert meta["command"] == f"dlnlab reproduce {name} --quick"
    assert meta["simulation_seconds"] > 0 and meta["experiments"]
    for experiment in meta["experiments"]:
        assert (quick_out / experiment["file"]).is_file()
    claims = json.loads((folder / "claims.json").read_text())
    assert claims, f"{name} tests no claim"
    for c in claims:
        assert c["verdict"] in ("supported", "refuted", "not testable")
        assert c["figure"] == name and c["measured"] and c["criterion"]
    ds = _load(quick_out, name)
    assert ds.attrs["size"] == "quick" and ds.attrs["recipe"] == name


def test_report_collects_every_claim(quick_out):
    table = json.loads((quick_out / "claims.json").read_text())
    per_recipe = [c for name in ALL for c in json.loads((quick_out / name / "claims.json")
                                                        .read_text())]
    assert [c["id"] for c in table] == [c["id"] for c in per_recipe]
    markdown = (quick_out / "claims.md").read_text()
    report = (quick_out / "reproduction.md").read_text()
    for c in table:
        assert c["claim"].replace("|", "\\|") in markdown
    for name in ALL:
        assert f"({name}/{name}.png)" in report
    # the required rows
    ids = {c["id"] for c in table}
    for required in ("fig3-peak-precedes-learning", "fig9-linear", "fig10-linear",
                     "fig2-decreasing-order", "fig4-collapse", "fig4-gaussian", "fig4-mean-side",
                     "fig2-time-scale", "fig6-cross-modes", "fig7-balance"):
        assert required in ids


def test_rerun_reuses_the_cached_experiments(quick_out):
    """A second run of a recipe only redraws: every experiment comes from the cache."""
    result = subprocess.run([sys.executable, "-m", "dlnlab.cli", "reproduce", "fig9", "--quick",
                             "--out", str(quick_out), "--quiet"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((quick_out / "fig9" / "recipe.json").read_text())
    assert all(e["cached"] for e in meta["experiments"])


# -------------------------------------------- claims recomputed from the datasets, independently


def _first_at_least(t, x, level):
    """Reference crossing time: plain loop with linear interpolation."""
    for i in range(len(x)):
        if x[i] >= level:
            if i == 0:
                return t[0]
            return t[i - 1] + (level - x[i - 1]) * (t[i] - t[i - 1]) / (x[i] - x[i - 1])
    return math.nan


def _peak_time(t, a, d, s):
    stop = len(t) - 1
    for i in range(len(t)):
        if a[i] >= s:
            stop = i
            break
    best, when = -math.inf, math.nan
    for i in range(stop + 1):
        if np.isfinite(d[i]) and d[i] > best:
            best, when = d[i], t[i]
    return when


def test_fig3_peak_fractions_recomputed(quick_out):
    ds = _load(quick_out, "fig3")
    claim = _claims(quick_out, "fig3")["fig3-peak-precedes-learning"]
    t = ds.time.values
    rows = {(r["method"], r["mode"]): r for r in claim["values"]["rows"]}
    for j, m in enumerate(ds.method.values):
        for a in range(ds.sizes["mode"]):
            s = float(ds.spectrum.values[a])
            before = valid = 0
            for run in range(ds.sizes["run"]):
                amp = ds.amplitude.isel(method=j, mode=a, run=run).values
                diff = ds.diffusion.isel(method=j, mode=a, run=run).values
                t90 = _first_at_least(t, amp, 0.9 * s)
                tp = _peak_time(t, amp, diff, s)
                if np.isfinite(t90) and np.isfinite(tp):
                    valid += 1
                    before += tp < t90
            row = rows[(str(m), a + 1)]
            assert row["runs"] == valid
            assert row["peak_before_90_fraction"] == pytest.approx(before / valid, abs=1e-12)
    verdict = all(r["peak_before_90_fraction"] >= PEAK_FRACTION for r in rows.values())
    assert claim["verdict"] == ("supported" if verdict else "refuted")


@pytest.mark.parametrize("name,coord", [("fig9", "learning_rate"), ("fig10", "batch_size")])
def test_scaling_fits_recomputed(quick_out, name, coord):
    ds = _load(quick_out, name)
    fits = _claims(quick_out, name)[f"{name}-linear"]["values"]["fits"]
    x = ds[coord].values.astype(float)
    if coord == "batch_size":
        x = 1.0 / x
    for a, fit in enumerate(fits):
        y = ds.max_diffusion.isel(mode=a).values.mean(axis=1)          # (x, run) -> mean over runs
        (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
        resid = y - (slope * x + intercept)
        r2 = 1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2)
        scale = np.sum(resid**2) / (len(x) - 2)
        assert fit["slope"] == pytest.approx(slope, rel=1e-9)
        assert fit["intercept"] == pytest.approx(intercept, rel=1e-6, abs=1e-15)
        assert fit["r2"] == pytest.approx(r2, rel=1e-9)
        assert fit["slope_se"] == pytest.approx(math.sqrt(scale * cov[0, 0]), rel=1e-6)
        assert fit["intercept_se"] == pytest.approx(math.sqrt(scale * cov[1, 1]), rel=1e-6)
        # and the plotted values are the run maxima of the raw experiment
    meta = json.loads((quick_out / name / "recipe.json").read_text())
    raw = xr.load_dataset(quick_out / meta["experiments"][0]["file"], engine="h5netcdf")
    first = raw.diffusion.isel(method=0, mode=0).values.max(axis=1)
    key = float(meta["experiments"][0]["key"])
    index = int(np.argmin(np.abs(ds[coord].values.astype(float) - key)))
    np.testing.assert_allclose(ds.max_diffusion.isel({coord: index, "mode": 0}).values, first)


def test_scaling_claims_follow_the_data(quick_out):
    """Doubling the diffusion doubles the reported slope: the table is computed, not typed."""
    from dlnlab.reproduce.recipes import RECIPES as R

    ds = _load(quick_out, "fig9")
    base = R["fig9"].claims(ds)[0]["values"]["fits"]
    doubled = ds.copy()
    doubled["max_diffusion"] = 2 * ds.max_diffusion
    twice = R["fig9"].claims(doubled)[0]["values"]["fits"]
    for a, b in zip(base, twice, strict=True):
        assert b["slope"] == pytest.approx(2 * a["slope"], rel=1e-12)
        assert b["r2"] == pytest.approx(a["r2"], rel=1e-9)


def test_fig2_order_and_time_scale_recomputed(quick_out):
    ds = _load(quick_out, "fig2")
    claims = _claims(quick_out, "fig2")
    t = ds.time.values
    s = ds.spectrum.values
    all_learned = {}
    for j, m in enumerate(ds.method.values):
        ordered, last = 0, []
        for run in range(ds.sizes["run"]):
            times = [_first_at_least(t, ds.amplitude.isel(method=j, run=run, mode=a).values,
                                     0.9 * s[a]) for a in range(ds.sizes["mode"])]
            ordered += all(np.isfinite(times)) and all(np.diff(times) > 0)
            last.append(max(times) if all(np.isfinite(times)) else math.nan)
        all_learned[str(m)] = np.array(last)
        if str(m) in claims["fig2-decreasing-order"]["values"]:
            assert claims["fig2-decreasing-order"]["values"][str(m)]["ordered"] == ordered
    good = [claims["fig2-decreasing-order"]["values"][m]["ordered"]
            >= ORDER_FRACTION * ds.sizes["run"] for m in ("sgd", "sde", "gf")]
    assert claims["fig2-decreasing-order"]["verdict"] == ("supported" if all(good) else "refuted")
    values = claims["fig2-time-scale"]["values"]
    for m in ("sgd", "sde"):
        x = all_learned[m][np.isfinite(all_learned[m])]
        assert values[f"{m}_mean"] == pytest.approx(x.mean(), rel=1e-9)
        assert values[f"{m}_se"] == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-9)
    # matched time: t = step x learning rate for SGD and step x h for the SDE
    assert values["ratio"] == pytest.approx(values["sgd_mean"] / values["sde_mean"], rel=1e-12)


def test_fig4_statistics_recomputed(quick_out):
    ds = _load(quick_out, "fig4")
    claims = _claims(quick_out, "fig4")
    s = float(ds.spectrum)
    window = ds.time.values >= ds.attrs["window_start"]
    for m in ("sgd", "sde"):
        a = ds.amplitude.sel({"noise": "label", "method": m}).values
        a = a[np.isfinite(a).all(axis=1)]
        per_run = a[:, window].mean(axis=1)
        entry = claims["fig4-mean-side"]["values"][m]
        assert entry["mean_minus_s"] == pytest.approx(per_run.mean() - s, abs=1e-9)
        assert entry["se"] == pytest.approx(per_run.std(ddof=1) / math.sqrt(per_run.size),
                                            rel=1e-6)
    final = ds.amplitude.sel({"noise": "label", "method": "sgd"}).isel(time=-1).values
    final = final[np.isfinite(final)]
    c = final - final.mean()
    skew = np.mean(c**3) / np.mean(c**2) ** 1.5
    kurt = np.mean(c**4) / np.mean(c**2) ** 2 - 3
    got = claims["fig4-gaussian"]["values"]
    assert got["skewness"] == pytest.approx(skew, rel=1e-9)
    assert got["excess_kurtosis"] == pytest.approx(kurt, rel=1e-9)
    clean = ds.amplitude.sel({"noise": "none", "method": "sgd"}).isel(time=-1).values
    clean = clean[np.isfinite(clean)]
    assert claims["fig4-collapse"]["values"]["sd"] == pytest.approx(np.std(clean, ddof=1),
                                                                     rel=1e-9)


def test_fig4_theory_is_the_quadrature_law(quick_out):
    """The plotted stationary density is normalised and its mean is the table's theory mean."""
    ds = _load(quick_out, "fig4")
    grid, p = ds.amplitude_grid.values, ds.stationary_density.values
    assert np.trapezoid(p, grid) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(grid * p, grid) == pytest.approx(float(ds.theory_mean), abs=1e-6)
    # THEORY §8: the mean is below s, the paper's value above, by the same first-order shift
    assert float(ds.theory_mean) < float(ds.spectrum) < float(ds.paper_mean)


def test_fig7_balance_recomputed(quick_out):
    ds = _load(quick_out, "fig7")
    rows = _claims(quick_out, "fig7")["fig7-balance"]["values"]["rows"]
    for r in rows:
        x = ds.balance_residual.sel(depth=r["depth"], init=r["init"]).isel(
            pair=int(r["pair"].split("-")[0]) - 1).values
        assert r["start_median"] == pytest.approx(np.median(x[:, 0]), rel=1e-9)
        assert r["end_median"] == pytest.approx(np.median(x[:, -1]), rel=1e-9)


def test_fig1_formula_deviation_recomputed(quick_out):
    ds = _load(quick_out, "fig1")
    dev = _claims(quick_out, "fig1")["fig1-formula"]["values"]["transit_relative_deviation"]
    for a in range(ds.sizes["mode"]):
        s = float(ds.spectrum.values[a])
        amp = ds.amplitude.isel(mode=a).values.ravel()
        d = ds.diffusion.isel(mode=a).values.ravel()
        f = ds.reduced_diffusion.isel(mode=a).values.ravel()
        keep = (amp >= 0.1 * s) & (amp <= 0.9 * s)
        assert dev[a] == pytest.approx(np.median(np.abs(d - f)[keep] / f[keep]), rel=1e-6)


# ---------------------------------------------------------------------------- errors, names


def test_unknown_figure_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dlnlab.cli", "reproduce", "fig5", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fig5" in lines[0] and "fig1" in lines[0]


def test_resolve_names_keeps_paper_order():
    assert resolve_names("all") == ALL
    assert resolve_names(["appK", "fig1", "fig1"]) == ["fig1", "appK"]
    with pytest.raises(ValueError, match="unknown figure"):
        resolve_names(["fig12"])

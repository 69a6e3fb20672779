"""``dlnlab reproduce``: papers made of studies. Every study of the sgd-dln paper runs in its
quick form, and every number of the claims table is recomputed here from the saved figure
datasets by independent code (loops and ``numpy.polyfit``, not ``dlnlab.analysis``), so the
table cannot be typed in. The generic runner is also run on a tiny paper made here, and the
study modules are checked for the contract (five parts, fig9 and fig10 with the optional
``data`` part that runs them as one sweep, no study importing another).

The quick run of all studies happens once per session, in a subprocess through the command
line (as a user runs it, with the CLI's XLA flags): about 5 minutes on 2 cores.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dlnlab.papers import DEFAULT_PAPER, PAPERS, get_paper, split_arguments
from dlnlab.papers.sgd_dln import PAPER, STUDY_MODULES
from dlnlab.papers.sgd_dln.config import ORDER_FRACTION, PEAK_FRACTION
from dlnlab.sweep import open_sweep

ALL = PAPER.names
PARTS = ("experiments", "analyse", "numbers", "claims", "figure")


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dlnlab.cli", "reproduce", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduction-quick")
    result = _cli("sgd-dln", "all", "--quick", "--out", out, "--quiet", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _claims(out, name):
    return {c["id"]: c for c in json.loads((out / name / "claims.json").read_text())}


def _load(out, name):
    return xr.load_dataset(out / name / f"{name}.nc", engine="h5netcdf")


# ---------------------------------------------------------------------- every study ran


@pytest.mark.parametrize("name", ALL)
def test_study_writes_figure_dataset_numbers_and_claims(quick_out, name):
    folder = quick_out / name
    for file in (f"{name}.png", f"{name}.pdf", f"{name}.nc", "numbers.csv", "numbers.md",
                 "claims.json", "study.json"):
        assert (folder / file).is_file(), f"{name}: {file} missing"
    assert (folder / f"{name}.png").stat().st_size > 20_000       # a drawn figure, not a blank
    meta = json.loads((folder / "study.json").read_text())
    assert meta["command"] == f"dlnlab reproduce sgd-dln {name} --quick"
    assert meta["paper"] == "sgd-dln" and meta["reference"] == PAPER.study(name).reference
    assert meta["simulation_seconds"] > 0 and meta["experiments"]
    for experiment in meta["experiments"]:
        assert (quick_out / experiment["file"]).is_file()
    # fig9 and fig10 run their experiments as one sweep (tests/test_scaling_sweep.py)
    if name in ("fig9", "fig10"):
        together = meta["computed_together"]
        assert together["engine"] == "dlnlab.sweep"
        assert (quick_out / together["folder"] / "manifest.json").is_file()
        assert [e["point"] for e in meta["experiments"]] == list(range(len(meta["experiments"])))
    else:
        assert "computed_together" not in meta
    claims = json.loads((folder / "claims.json").read_text())
    assert claims, f"{name} tests no claim"
    for c in claims:
        assert c["verdict"] in ("supported", "refuted", "not testable")
        assert c["figure"] == name and c["measured"] and c["criterion"]
    ds = _load(quick_out, name)
    assert ds.attrs["size"] == "quick" and ds.attrs["study"] == name
    assert ds.attrs["paper"] == "sgd-dln"


def test_report_collects_every_claim(quick_out):
    table = json.loads((quick_out / "claims.json").read_text())
    per_study = [c for name in ALL for c in json.loads((quick_out / name / "claims.json")
                                                       .read_text())]
    assert [c["id"] for c in table] == [c["id"] for c in per_study]
    markdown = (quick_out / "claims.md").read_text()
    report = (quick_out / "reproduction.md").read_text()
    assert markdown.splitlines()[0] == f"# Claims: {PAPER.title}, as measured by dlnlab"
    assert report.splitlines()[0] == f"# Reproduction report: {PAPER.title}"
    # a quick run says its verdicts have less power than the full run's
    assert "**Quick size**" in report and "**Quick size**" in markdown
    assert PAPER.citation.title in report
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
    """A second run of a study only redraws: every experiment comes from the cache."""
    result = _cli("fig9", "--quick", "--out", quick_out, "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((quick_out / "fig9" / "study.json").read_text())
    assert all(e["cached"] for e in meta["experiments"])
    assert meta["computed_together"]["cached"]            # the sweep resumed: no chunk ran


def test_paper_name_is_optional_for_the_default_paper(quick_out, tmp_path):
    """``reproduce sgd-dln fig3`` and ``reproduce fig3`` write the same files (from the same
    cached experiment), equal to what ``reproduce sgd-dln all`` wrote."""
    outs = {}
    for label, args in (("named", ["sgd-dln", "fig3"]), ("default", ["fig3"])):
        out = tmp_path / label
        (out / "data").mkdir(parents=True)
        for f in (quick_out / "data").glob("main-*"):
            shutil.copy(f, out / "data" / f.name)
        result = _cli(*args, "--quick", "--out", out, "--quiet")
        assert result.returncode == 0, result.stderr[-2000:]
        outs[label] = out
    assert sorted(p.name for p in (outs["named"] / "fig3").iterdir()) == sorted(
        p.name for p in (quick_out / "fig3").iterdir())
    for out in (outs["named"], outs["default"]):
        meta = json.loads((out / "fig3" / "study.json").read_text())
        assert all(e["cached"] for e in meta["experiments"])
        assert meta["command"] == "dlnlab reproduce sgd-dln fig3 --quick"
        for file in ("claims.json", "numbers.csv", "numbers.md"):
            assert (out / "fig3" / file).read_bytes() == (quick_out / "fig3" / file).read_bytes()
        assert (out / "claims.json").read_bytes() == (quick_out / "fig3" / "claims.json").read_bytes()
        new, ref = _load(out, "fig3"), _load(quick_out, "fig3")
        assert set(new.variables) == set(ref.variables)
        for v in ref.variables:
            np.testing.assert_array_equal(new[v].values, ref[v].values)


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
    for j, m in enumerate(ds.method_name.values):
        for a in range(ds.sizes["mode"]):
            s = float(ds.spectrum.values[a])
            before = valid = 0
            for run in range(ds.sizes["run"]):
                amp = ds.amplitude.isel(method_name=j, mode=a, run=run).values
                diff = ds.diffusion.isel(method_name=j, mode=a, run=run).values
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
        # and the plotted values are the run maxima of the raw experiment: point 0 of the
        # study's sweep (NaN past a point's last record)
    meta = json.loads((quick_out / name / "study.json").read_text())
    raw = open_sweep(quick_out / meta["computed_together"]["folder"], lazy=False)
    first = np.nanmax(raw.diffusion.isel(point=meta["experiments"][0]["point"], method_name=0,
                                         mode=0).transpose("run", "record").values, axis=1)
    key = float(meta["experiments"][0]["key"])
    index = int(np.argmin(np.abs(ds[coord].values.astype(float) - key)))
    np.testing.assert_allclose(ds.max_diffusion.isel({coord: index, "mode": 0}).values, first)


def test_scaling_claims_follow_the_data(quick_out):
    """Doubling the diffusion doubles the reported slope: the table is computed, not typed."""
    ds = _load(quick_out, "fig9")
    base = PAPER.study("fig9").claims(ds)[0]["values"]["fits"]
    doubled = ds.copy()
    doubled["max_diffusion"] = 2 * ds.max_diffusion
    twice = PAPER.study("fig9").claims(doubled)[0]["values"]["fits"]
    for a, b in zip(base, twice, strict=True):
        assert b["slope"] == pytest.approx(2 * a["slope"], rel=1e-12)
        assert b["r2"] == pytest.approx(a["r2"], rel=1e-9)


def test_fig2_order_and_time_scale_recomputed(quick_out):
    ds = _load(quick_out, "fig2")
    claims = _claims(quick_out, "fig2")
    t = ds.time.values
    s = ds.spectrum.values
    all_learned = {}
    for j, m in enumerate(ds.method_name.values):
        ordered, last = 0, []
        for run in range(ds.sizes["run"]):
            times = [_first_at_least(t, ds.amplitude.isel(method_name=j, run=run, mode=a).values,
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
        # Every run is observed to the same horizon, so the Kaplan-Meier median is the ordinary
        # median with the runs that never learned every mode placed last (+inf).
        x = np.where(np.isfinite(all_learned[m]), all_learned[m], np.inf)
        expected = float(np.median(x))
        assert values[f"{m}_learned"] == int(np.isfinite(all_learned[m]).sum())
        if np.isfinite(expected):
            assert values[f"{m}_median"] == pytest.approx(expected, rel=1e-9)
        else:
            assert values[f"{m}_median"] is None
    # matched time: t = step x learning rate for SGD and step x h for the SDE
    if values["sgd_median"] is not None and values["sde_median"] is not None:
        assert values["ratio"] == pytest.approx(values["sgd_median"] / values["sde_median"],
                                                rel=1e-12)


def test_fig4_statistics_recomputed(quick_out):
    ds = _load(quick_out, "fig4")
    claims = _claims(quick_out, "fig4")
    s = float(ds.spectrum)
    window = ds.time.values >= ds.attrs["window_start"]
    for m in ("sgd", "sde"):
        a = ds.amplitude.sel(noise="label", method_name=m).values
        a = a[np.isfinite(a).all(axis=1)]
        per_run = a[:, window].mean(axis=1)
        entry = claims["fig4-mean-side"]["values"][m]
        assert entry["mean_minus_s"] == pytest.approx(per_run.mean() - s, abs=1e-9)
        assert entry["se"] == pytest.approx(per_run.std(ddof=1) / math.sqrt(per_run.size),
                                            rel=1e-6)
    final = ds.amplitude.sel(noise="label", method_name="sgd").isel(time=-1).values
    final = final[np.isfinite(final)]
    c = final - final.mean()
    skew = np.mean(c**3) / np.mean(c**2) ** 1.5
    kurt = np.mean(c**4) / np.mean(c**2) ** 2 - 3
    got = claims["fig4-gaussian"]["values"]
    assert got["skewness"] == pytest.approx(skew, rel=1e-9)
    assert got["excess_kurtosis"] == pytest.approx(kurt, rel=1e-9)
    clean = ds.amplitude.sel(noise="none", method_name="sgd").isel(time=-1).values
    clean = clean[np.isfinite(clean)]
    assert claims["fig4-collapse"]["values"]["sd"] == pytest.approx(np.std(clean, ddof=1),
                                                                     rel=1e-9)


def test_fig4_theory_is_the_quadrature_law(quick_out):
    """The plotted stationary density is normalised and its mean is the table's theory mean."""
    ds = _load(quick_out, "fig4")
    grid, p = ds.amplitude_grid.values, ds.stationary_density.values
    assert np.trapezoid(p, grid) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(grid * p, grid) == pytest.approx(float(ds.theory_mean), abs=1e-6)
    # docs/theory.md §9: the mean is below s, the paper's value above, by the same first-order shift
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


@pytest.mark.parametrize("args,names", [
    (["fig5"], ["fig5", "sgd-dln", "fig1"]),               # neither a paper nor a study
    (["sgd-dln", "fig5"], ["fig5", "sgd-dln", "fig1"]),    # not a study of that paper
    (["sgd-dln", "fig1", "nope"], ["nope", "appK"]),
])
def test_unknown_names_are_one_line_errors(tmp_path, args, names):
    result = _cli(*args, "--out", tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0]
    assert not any(tmp_path.iterdir())                        # nothing run, nothing written


def test_names_resolve_in_paper_order():
    assert PAPER.resolve("all") == ALL
    assert PAPER.resolve(["appK", "fig1", "fig1"]) == ["fig1", "appK"]
    with pytest.raises(ValueError, match="unknown study"):
        PAPER.resolve(["fig12"])
    for alone in (["sgd-dln"], ["all", "fig99"], ["sgd-dln", "all", "fig3"], ["fig3", "all"]):
        with pytest.raises(ValueError) as info:        # never a silent whole-paper run
            split_arguments(alone)
        assert "\n" not in str(info.value) and str(info.value).startswith("name=")
    assert split_arguments(["fig3", "fig1"]) == (PAPER, ["fig1", "fig3"])
    assert split_arguments(["sgd-dln", "all"]) == (PAPER, ALL)
    assert get_paper("sgd-dln") is PAPER and DEFAULT_PAPER == "sgd-dln" and PAPERS["sgd-dln"] is PAPER
    with pytest.raises(ValueError, match=r"paper='nosuch': unknown paper; one of sgd-dln, gross2024$"):
        get_paper("nosuch")


# ------------------------------------------------------------------- the study contract


def test_every_study_module_defines_the_five_parts():
    from dlnlab.experiments.config import ExperimentConfig

    assert [m.STUDY for m in STUDY_MODULES] == list(PAPER.studies)
    assert ALL == ["fig1", "fig2", "fig3", "fig4", "fig6", "fig7", "fig8", "fig9", "fig10",
                   "appJ3", "fig11", "appK"]
    for module in STUDY_MODULES:
        study = module.STUDY
        assert module.__name__.rsplit(".", 1)[1] == study.name
        assert study.title and study.reference
        for part in PARTS:
            assert callable(getattr(module, part)), f"{study.name}.{part}"
            assert getattr(study, part) is getattr(module, part), f"{study.name}.{part}"
        # the optional sixth part: fig9 and fig10 compute their experiments as one sweep
        assert (study.data is not None) == (study.name in ("fig9", "fig10")), study.name
        if study.data is not None:
            assert study.data is module.data
        for quick in (True, False):
            configs = study.experiments(quick)
            assert configs and all(isinstance(c, ExperimentConfig) for c in configs.values())
        # quick sizes are smaller
        assert sum(c.runs for c in study.experiments(True).values()) < sum(
            c.runs for c in study.experiments(False).values())


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in a source file, relative ones resolved."""
    package = "dlnlab." + ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            module = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module
                                                                   else [])) if node.level \
                else node.module
            out.append((module, [a.name for a in node.names]))
    return out


SRC = Path(__file__).resolve().parents[1] / "src" / "dlnlab"


def test_studies_import_no_other_study_and_figures_use_no_theory():
    study_names = {m.__name__ for m in STUDY_MODULES}
    for module in STUDY_MODULES:
        path = Path(module.__file__)
        imports = _imports(path)
        for target, names in imports:
            assert target not in study_names, f"{path.name} imports the study {target}"
            assert not any(f"{target}.{n}" in study_names for n in names), \
                f"{path.name} imports a study from {target}"
        # the figure draws dataset variables only: none of the theory functions it imports
        theory = {n for target, names in imports if target.startswith("dlnlab.theory")
                  for n in names}
        used = {node.id for node in ast.walk(ast.parse(inspect.getsource(module.figure)))
                if isinstance(node, ast.Name)}
        assert not (theory & used), f"{path.name}: figure uses {theory & used}"


def test_layering_of_the_shared_helpers():
    """analysis/ imports neither experiments nor papers; plot/panels.py neither theory,
    experiments nor papers, and no pyplot; the study packages import no private name from
    another package."""
    for path in (SRC / "analysis").glob("*.py"):
        for target, _ in _imports(path):
            assert not target.startswith(("dlnlab.experiments", "dlnlab.papers")), path.name
    for target, names in _imports(SRC / "plot" / "panels.py"):
        assert not target.startswith(("dlnlab.theory", "dlnlab.experiments", "dlnlab.papers"))
        assert "pyplot" not in target and "pyplot" not in names
    paths = [*(SRC / "papers").rglob("*.py"), SRC / "experiments" / "study.py",
             SRC / "experiments" / "study_runner.py", *(SRC / "experiments" / "protocols").rglob("*.py")]
    for path in paths:
        own = "dlnlab." + path.relative_to(SRC).parts[0]        # its top-level package
        for target, names in _imports(path):
            if target.startswith("dlnlab.") and not target.startswith(own):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path}: imports {private} from {target}"


# ---------------------------------------------------------------- the runner on a tiny paper


def _tiny_paper(tmp_claim_verdict="supported"):
    from matplotlib.figure import Figure

    from dlnlab.analysis import claim_row
    from dlnlab.experiments.config import validate_config
    from dlnlab.experiments.study import Citation, Paper, Study

    base = {"runs": 2, "methods": ["gd"], "task": {"d_in": 3, "d_out": 3, "hidden": [3],
                                                   "spectrum": [1.0, 0.5]},
            "init": {"kind": "gaussian", "gamma": 1.0},
            "training": {"horizon": 0.2, "learning_rate": 0.05}, "record": {"points": 3}}

    def experiments(quick):
        return {"gd": validate_config({**base, "name": "tiny-gd", "runs": 2 if quick else 3})}

    def loss_analyse(data):
        loss = data["gd"].loss.isel(method_name=0).transpose("run", "time")
        return xr.Dataset({"loss": loss, "loss_drop": loss.isel(time=0) - loss.isel(time=-1)})

    def loss_numbers(ds):
        return [{"run": int(r), "loss_drop": float(ds.loss_drop.sel(run=r))} for r in ds.run.values]

    def loss_claims(ds):
        ok = bool((ds.loss_drop > 0).all())
        return [claim_row("loss-decreases", "GD decreases the loss.", "Eq. 1", "loss",
                          f"drops {ds.loss_drop.values}", {"drops": ds.loss_drop.values.tolist()},
                          "every run", "supported" if ok else "refuted")]

    def amp_analyse(data):
        return xr.Dataset({"final_amplitude": data["gd"].amplitude.isel(method_name=0, time=-1)})

    def amp_claims(ds):
        return [claim_row("amp-not-testable", "Amplitudes are what they are.", "§2", "amp",
                          "nothing", {}, "none", "not testable")]

    def figure(ds):
        fig = Figure(figsize=(3, 2))
        fig.subplots().plot(np.asarray(next(iter(ds.data_vars.values())).values).ravel())
        return fig

    studies = (Study("loss", "Loss of GD", "Fig. 1", experiments, loss_analyse, loss_numbers,
                     loss_claims, figure),
               Study("amp", "Final amplitudes", "Fig. 2", experiments, amp_analyse,
                     lambda ds: [{"modes": int(ds.sizes["mode"])}], amp_claims, figure))
    return Paper("tiny", "A tiny test paper", Citation("Tiny results", ("A. Author",), "0000.00000"),
                 base, {s.name: s for s in studies})


def test_generic_runner_on_a_tiny_paper(tmp_path):
    from dlnlab.experiments.study_runner import run_studies

    paper = _tiny_paper()
    assert paper.names == ["loss", "amp"]
    results = run_studies(paper, "all", quick=True, out=tmp_path, quiet=True)
    assert list(results) == ["loss", "amp"]
    for name in ("loss", "amp"):
        folder = tmp_path / name
        for file in (f"{name}.png", f"{name}.pdf", f"{name}.nc", "numbers.csv", "numbers.md",
                     "claims.json", "study.json"):
            assert (folder / file).is_file(), f"{name}: {file} missing"
        ds = xr.load_dataset(folder / f"{name}.nc", engine="h5netcdf")
        assert ds.attrs["study"] == name and ds.attrs["paper"] == "tiny"
    # both studies share the one experiment: run once, then taken from the cache
    first, second = (json.loads((tmp_path / n / "study.json").read_text())["experiments"][0]
                     for n in ("loss", "amp"))
    assert first["fingerprint"] == second["fingerprint"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert len(list((tmp_path / "data").glob("tiny-gd-*.nc"))) == 1
    assert not list((tmp_path / "data").glob(".work-*"))
    loss = xr.load_dataset(tmp_path / "loss" / "loss.nc", engine="h5netcdf")
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert [c["id"] for c in claims] == ["loss-decreases", "amp-not-testable"]
    assert claims[0]["verdict"] == ("supported" if (loss.loss_drop > 0).all() else "refuted")
    assert claims[0]["values"]["drops"] == pytest.approx(loss.loss_drop.values.tolist())
    md = (tmp_path / "claims.md").read_text()
    report = (tmp_path / "reproduction.md").read_text()
    assert md.startswith("# Claims: A tiny test paper, as measured by dlnlab")
    assert report.startswith("# Reproduction report: A tiny test paper")
    assert "A. Author. “Tiny results”. arXiv:0000.00000" in report
    assert "SGD" not in md and "sgd-dln" not in report
    assert "(loss/loss.png)" in report and "(amp/amp.png)" in report
    assert "dlnlab reproduce tiny amp --quick" in report
    # one study rerun: it is redrawn from the cache, the report still lists both
    run_studies(paper, ["amp"], quick=True, out=tmp_path, quiet=True)
    assert [c["id"] for c in json.loads((tmp_path / "claims.json").read_text())] == [
        "loss-decreases", "amp-not-testable"]


def test_paper_and_study_contracts_reject_bad_definitions():
    from dlnlab.experiments.study import Citation, Paper, Study

    paper = _tiny_paper()
    loss = paper.study("loss")
    with pytest.raises(ValueError, match="repeats a study name"):
        Paper("p", "P", Citation("P"), {}, (loss, loss))
    with pytest.raises(ValueError, match="no study"):
        Paper("p", "P", Citation("P"), {}, ())
    with pytest.raises(ValueError, match="name='all'"):
        Study("all", "t", "r", *(getattr(loss, p) for p in PARTS))
    with pytest.raises(ValueError, match="figure=None"):
        Study("x", "t", "r", *(getattr(loss, p) for p in PARTS[:-1]), None)
    with pytest.raises(ValueError, match=r"name='nope': unknown study of paper 'tiny'; one of "
                                         r"loss, amp, all"):
        paper.resolve(["loss", "nope"])

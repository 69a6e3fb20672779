"""``dlnlab reproduce gross2024``: the second paper (weight fluctuations, inverse variance-flatness)
as a paper of studies. Its quick run of every study happens once, through the command line as a
user runs it; the checks here are the contract (files, claim rows, report, cache) and the
quick-size budget's outputs. Each study's numbers are checked against independent computations
in its own test file (``tests/test_gross2024_*.py``, ``tests/test_mean_shift.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import xarray as xr

from dlnlab.analysis.claims import VERDICTS
from dlnlab.papers import PAPERS, default_out, split_arguments

PAPER = PAPERS["gross2024"]
ALL = PAPER.names


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dlnlab.cli", "reproduce", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduction-gross2024-quick")
    result = _cli("gross2024", "all", "--quick", "--out", out, "--quiet", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ALL)
def test_every_study_writes_figure_dataset_numbers_and_claims(quick_out, name):
    folder = quick_out / name
    for file in (f"{name}.png", f"{name}.pdf", f"{name}.nc", "numbers.csv", "numbers.md",
                 "claims.json", "study.json"):
        assert (folder / file).stat().st_size > 0, file
    meta = json.loads((folder / "study.json").read_text())
    assert meta["command"] == f"dlnlab reproduce gross2024 {name} --quick"
    assert meta["paper"] == "gross2024" and meta["size"] == "quick"
    claims = json.loads((folder / "claims.json").read_text())
    assert claims, f"{name} makes no claim"
    for c in claims:
        assert set(c) == {"id", "claim", "paper", "figure", "measured", "values", "criterion",
                          "verdict"}
        assert c["figure"] == name and c["verdict"] in VERDICTS
        assert c["measured"] and c["criterion"] and c["paper"]
    ds = xr.load_dataset(folder / f"{name}.nc", engine="h5netcdf")
    assert ds.attrs["paper"] == "gross2024" and ds.attrs["study"] == name
    assert ds.data_vars, f"{name}: empty dataset"


def test_report_collects_every_claim(quick_out):
    table = json.loads((quick_out / "claims.json").read_text())
    per_study = [c for name in ALL
                 for c in json.loads((quick_out / name / "claims.json").read_text())]
    assert [c["id"] for c in table] == [c["id"] for c in per_study]
    assert len({c["id"] for c in table}) == len(table)            # ids are unique
    report = (quick_out / "reproduction.md").read_text()
    assert report.splitlines()[0] == f"# Reproduction report: {PAPER.title}"
    assert "**Quick size**" in report and PAPER.citation.title in report
    for name in ALL:
        assert f"({name}/{name}.png)" in report


def test_rerun_only_redraws(quick_out):
    name = next(n for n in ALL if PAPER.study(n).experiments(True))
    result = _cli("gross2024", name, "--quick", "--out", quick_out, "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((quick_out / name / "study.json").read_text())
    assert meta["experiments"] and all(e["cached"] for e in meta["experiments"])


def test_names_and_the_default_folder():
    assert split_arguments(["gross2024", "all"]) == (PAPER, ALL)
    assert str(default_out(PAPER, True)) == "reproduction-gross2024-quick"
    with pytest.raises(ValueError) as info:       # a study of the other paper, named alone
        split_arguments(["fig5"])
    assert "reproduce gross2024 fig5" in str(info.value) and "\n" not in str(info.value)

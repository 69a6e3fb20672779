"""``benchmarks/compare_results.py``, the before/after check of a refactor: identical trees pass,
a changed number, a changed verdict or a vanished variable fail."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_results.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, amplitude, verdict="supported", extra=False, fingerprint="0123456789ab"):
    data = {"amplitude": (("run", "time"), np.asarray(amplitude, np.float32)),
            "status": ("run", np.array(["ok", "ok"]))}
    if extra:
        data["theory_new"] = ("time", np.zeros(3))
    (root / "data").mkdir(parents=True)
    xr.Dataset(data).to_netcdf(root / "data" / f"main-{fingerprint}.nc", engine="h5netcdf")
    claims = [{"id": "c1", "verdict": verdict, "values": {"x": [1.0, 2.0]}, "measured": "m"}]
    (root / "claims.json").write_text(json.dumps(claims))


def test_identical_trees_pass_and_changes_fail(tmp_path, capsys):
    compare = _module()
    base = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    _tree(tmp_path / "before", base)
    # same numbers, another cache fingerprint and a new variable: identical
    _tree(tmp_path / "same", base, extra=True, fingerprint="ba9876543210")
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "same")]) == 0
    assert "IDENTICAL" in capsys.readouterr().out
    # one float32 ulp is within the default tolerance, ten are not
    one_ulp = base.astype(np.float32).copy()
    one_ulp[0, 0] = np.nextafter(one_ulp[0, 0], np.float32(10))
    _tree(tmp_path / "ulp", one_ulp)
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "ulp")]) == 0
    changed = base.copy()
    changed[1, 2] *= 1 + 1e-5
    _tree(tmp_path / "changed", changed)
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "changed")]) == 1
    assert "DIFFERENT" in capsys.readouterr().out
    # a verdict that changed fails even with identical data
    _tree(tmp_path / "verdict", base, verdict="refuted")
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "verdict")]) == 1
    # a variable that disappeared fails
    _tree(tmp_path / "gone", base)
    path = next((tmp_path / "gone" / "data").glob("*.nc"))
    xr.load_dataset(path).drop_vars("status").to_netcdf(path, engine="h5netcdf")
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "gone")]) == 1

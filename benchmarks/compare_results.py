"""Compare two result trees variable by variable: the check that a refactor changed no number.

    python benchmarks/compare_results.py BEFORE AFTER [--json]

``BEFORE`` and ``AFTER`` are folders (a ``dlnlab run`` directory, a ``dlnlab reproduce`` output
folder, or any tree). Every ``*.nc`` file under ``BEFORE`` whose relative path (with the cache
fingerprint ``-<12 hex>`` removed from the name) exists under ``AFTER`` is compared: for each
variable and coordinate present in both, the largest absolute difference and the largest
difference in units of the float32 rounding of the values (``|a - b| / (eps32 * max(|a|, |b|, tiny))``).
Every ``claims.json`` is compared claim by claim (verdict and every number). Variables present in
only one file are listed (new theory variables are expected to appear; none may disappear).
Exit code 1 when a shared variable differs beyond ``--ulps`` float32 ulps or a verdict differs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import xarray as xr

_FINGERPRINT = re.compile(r"-[0-9a-f]{12}(?=\.nc$)")
EPS32 = float(np.finfo(np.float32).eps)


def _key(path: Path, root: Path) -> str:
    return _FINGERPRINT.sub("", str(path.relative_to(root)))


def _index(root: Path, pattern: str) -> dict[str, Path]:
    return {_key(p, root): p for p in sorted(root.rglob(pattern)) if ".work-" not in str(p)}


def _compare_arrays(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    if a.shape != b.shape:
        return np.inf, np.inf, f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        same = np.array_equal(a.astype(str), b.astype(str))
        return (0.0, 0.0, "") if same else (np.inf, np.inf, "strings differ")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = ~np.isfinite(a64), ~np.isfinite(b64)
    if not np.array_equal(nan_a, nan_b):
        return np.inf, np.inf, f"non-finite pattern differs ({nan_a.sum()} vs {nan_b.sum()})"
    both = ~nan_a
    if not both.any():
        return 0.0, 0.0, ""
    diff = np.abs(a64[both] - b64[both])
    scale = np.maximum(np.maximum(np.abs(a64[both]), np.abs(b64[both])), 1e-30)
    return float(diff.max()), float((diff / (EPS32 * scale)).max()), ""


def compare_datasets(before: xr.Dataset, after: xr.Dataset) -> dict:
    rows, only_before, only_after = [], [], []
    names_b, names_a = set(before.variables), set(after.variables)
    for name in sorted(names_b | names_a):
        if name not in names_a:
            only_before.append(name)
            continue
        if name not in names_b:
            only_after.append(name)
            continue
        va, vb = before[name], after[name]
        if set(va.dims) == set(vb.dims):
            vb = vb.transpose(*va.dims)
        diff, ulps, note = _compare_arrays(np.asarray(va.values), np.asarray(vb.values))
        rows.append({"variable": name, "max_abs": diff, "max_ulps32": ulps, "note": note})
    return {"variables": rows, "only_before": only_before, "only_after": only_after}


def _numbers(value, prefix=""):
    if isinstance(value, dict):
        for k, x in value.items():
            yield from _numbers(x, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, x in enumerate(value):
            yield from _numbers(x, f"{prefix}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield prefix, float(value)


def compare_claims(before: list[dict], after: list[dict]) -> dict:
    by_id = {c["id"]: c for c in after}
    out = {"verdicts_differ": [], "missing": [], "max_abs": 0.0, "worst": None}
    for claim in before:
        other = by_id.get(claim["id"])
        if other is None:
            out["missing"].append(claim["id"])
            continue
        if claim.get("verdict") != other.get("verdict"):
            out["verdicts_differ"].append((claim["id"], claim.get("verdict"), other.get("verdict")))
        nb, na = dict(_numbers(claim.get("values", {}))), dict(_numbers(other.get("values", {})))
        for k, x in nb.items():
            y = na.get(k)
            if y is None or not (np.isfinite(x) and np.isfinite(y)):
                if not (y is not None and np.isnan(x) and np.isnan(y)) and y != x:
                    out["verdicts_differ"].append((claim["id"], f"value {k}", f"{x} vs {y}"))
                continue
            d = abs(x - y)
            if d > out["max_abs"]:
                out["max_abs"], out["worst"] = d, f"{claim['id']}:{k} {x} vs {y}"
        if claim.get("measured") != other.get("measured"):
            out.setdefault("measured_text_differs", []).append(claim["id"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ulps", type=float, default=4.0,
                        help="largest accepted difference in float32 ulps (default 4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report, failed = {"datasets": {}, "claims": {}}, False
    nc_b, nc_a = _index(args.before, "*.nc"), _index(args.after, "*.nc")
    for key, path in nc_b.items():
        if key not in nc_a:
            report["datasets"][key] = {"missing_after": True}
            failed = True
            continue
        with xr.open_dataset(path, engine="h5netcdf") as b, \
                xr.open_dataset(nc_a[key], engine="h5netcdf") as a:
            result = compare_datasets(b.load(), a.load())
        worst = max(result["variables"], key=lambda r: r["max_ulps32"], default=None)
        result["worst"] = worst
        report["datasets"][key] = result
        if (worst is not None and worst["max_ulps32"] > args.ulps) or result["only_before"]:
            failed = True
    cl_b, cl_a = _index(args.before, "claims.json"), _index(args.after, "claims.json")
    for key, path in cl_b.items():
        if key not in cl_a:
            report["claims"][key] = {"missing_after": True}
            failed = True
            continue
        result = compare_claims(json.loads(path.read_text()), json.loads(cl_a[key].read_text()))
        report["claims"][key] = result
        if result["verdicts_differ"] or result["missing"]:
            failed = True
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        overall = 0.0
        for key, r in report["datasets"].items():
            if r.get("missing_after"):
                print(f"{key}: MISSING after")
                continue
            w = r["worst"]
            overall = max(overall, w["max_abs"] if w else 0.0)
            extra = f"; new: {', '.join(r['only_after'])}" if r["only_after"] else ""
            gone = f"; GONE: {', '.join(r['only_before'])}" if r["only_before"] else ""
            print(f"{key}: {len(r['variables'])} shared variables, worst "
                  f"{w['variable'] if w else '-'} max|diff| = {w['max_abs'] if w else 0:.3g} "
                  f"({w['max_ulps32'] if w else 0:.3g} float32 ulps){extra}{gone}")
        for key, r in report["claims"].items():
            if r.get("missing_after"):
                print(f"{key}: MISSING after")
                continue
            print(f"{key}: verdicts differ: {r['verdicts_differ'] or 'none'}; missing: "
                  f"{r['missing'] or 'none'}; largest number difference {r['max_abs']:.3g} "
                  f"({r['worst']})")
        print(f"largest absolute difference over every shared variable: {overall:.3g}")
        print("RESULT:", "DIFFERENT" if failed else "IDENTICAL (within tolerance)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

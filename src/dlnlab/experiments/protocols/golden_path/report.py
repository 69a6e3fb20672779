"""Numbers, claims and the report of the Golden-Path dataset (computed from the dataset alone).

The notes' three predictions (experiment notes §1, "Distance in parameter space" and "Distance in
function space", §1.1-§1.2) and the mode-decoupling check, one claim row per arm
(:func:`dlnlab.analysis.claim_row`), each with its decision rule fixed in the config's
``[claims]`` section (kept in the dataset's ``rule_*`` attributes) before the results:

1. ``parameter_distance_large``: the final relative parameter distance
   ``||theta_GD - theta_run|| / ||theta_GD||`` is large (gauge freedom): supported when the
   bootstrap interval's lower end exceeds ``parameter_distance_large``, refuted when its upper end
   is below it, not testable when the interval straddles it;
2. ``function_distance_small``: the final ``||W_GD - W_run||_F / ||W_GD||_F`` is small:
   supported when the upper end is below ``function_distance_small``, refuted when the lower end
   exceeds it, else not testable;
3. ``rank_pattern_matches``: ``d_r`` (GD against the mean rank pattern) at the end and at the
   centre of every escape window both GD and the runs reach: supported when every upper end is
   below ``rank_distance_small``, refuted when a lower end exceeds it, else not testable;
   ``spectrum_shape_matches``: the final ``d_shape`` per entry (divided by the number of
   ``(i <= j, k)`` entries) against ``shape_distance_small``, same rule;
4. ``cross_before_diagonal``: the fraction of (mode, run) pairs with ``t_cross < t_diag``:
   supported when the lower end exceeds ``cross_before_diagonal``, refuted when the upper end is
   below it, else not testable.

Every number says how many runs it covers.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ....analysis import golden_path as gp
from ....analysis.claims import claim_row, format_number

SOURCE = "experiment notes §1"


def _final(ds: xr.Dataset, name: str, arm: str) -> tuple[float, float, float, int]:
    d = ds.sel(arm=arm).isel(time=-1)
    return (float(d[f"{name}_mean"]), float(d[f"{name}_low"]), float(d[f"{name}_high"]),
            int(d["runs_at_checkpoint"]))


def _interval_text(mean, low, high) -> str:
    return f"{format_number(mean)} [{format_number(low)}, {format_number(high)}]"


def _decide(low: float, high: float, threshold: float, *, above: bool) -> str:
    """``above``: the claim is that the quantity exceeds ``threshold``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not testable"
    if above:
        return "supported" if low > threshold else "refuted" if high < threshold else "not testable"
    return "supported" if high < threshold else "refuted" if low > threshold else "not testable"


def _nanmean(values) -> float:
    """Mean of the finite entries; NaN (no warning) when there are none, e.g. every run diverged."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def diverged_note(ds: xr.Dataset, arm: str) -> str:
    """``""``, or ``"; 2 of 2 runs diverged (left out)"`` when some of the arm's runs diverged."""
    diverged = int(ds.diverged.sel(arm=arm).sum())
    return f"; {diverged} of {ds.run.size} runs diverged (left out)" if diverged else ""


def numbers(ds: xr.Dataset) -> list[dict]:
    """One row per arm: run counts, the final metrics with bootstrap intervals, escapes, the
    cross-before-diagonal fraction and balance."""
    rows = []
    level = ds.attrs.get("confidence", 0.95)
    entries = int(ds.product.size * ds.k.size)
    for arm in ds.arm.values:
        a = ds.sel(arm=arm)
        fin = a.isel(time=-1)
        runs = int(fin.runs_at_checkpoint)
        row = {"arm": str(arm), "reference": str(a.reference.values), "runs": runs,
               "diverged": int(a.diverged.sum()), "confidence": level,
               "final_loss": _nanmean(fin.loss),
               "reference_final_loss": float(fin.reference_loss)}
        for name in ("relative_parameter_distance", "function_distance", "cosine_similarity",
                     "mean_layer_distance"):
            row[name] = float(fin[f"{name}_mean"])
            row[f"{name}_interval"] = [float(fin[f"{name}_low"]), float(fin[f"{name}_high"])]
        for name in ("d_r", "d_m", "d_sigma", "d_shape", "d_sigma_w"):
            row[name] = float(fin[name])
            row[f"{name}_interval"] = [float(fin[f"{name}_low"]), float(fin[f"{name}_high"])]
        row["d_shape_per_entry"] = float(fin.d_shape) / entries
        row["reference_escapes"] = int(np.isfinite(a.reference_escape_time).sum())
        row["escapes_per_run"] = float(np.isfinite(a.escape_time).sum("escape").mean())
        row["cross_before_diagonal"] = float(a.cross_before_diagonal)
        row["cross_before_diagonal_pairs"] = f"{int(a.cross_before_diagonal_pairs)}/" \
                                             f"{int(a.cross_before_diagonal_total)}"
        row["reference_cross_before_diagonal"] = float(a.reference_cross_before_diagonal)
        horizon = float(ds.time.values[-1])
        row["cross_before_diagonal_by_mode"] = [
            gp.cross_before_diagonal_fraction(a.t_cross.values[:, m][~a.diverged.values],
                                              a.t_diag.values[:, m][~a.diverged.values], horizon)[0]
            for m in range(ds.mode.size)]
        row["median_t_cross"] = [float(np.nanmedian(a.t_cross.values[:, m])) if
                                 np.isfinite(a.t_cross.values[:, m]).any() else None
                                 for m in range(ds.mode.size)]
        row["median_t_diag"] = [float(np.nanmedian(a.t_diag.values[:, m])) if
                                np.isfinite(a.t_diag.values[:, m]).any() else None
                                for m in range(ds.mode.size)]
        row["final_balance_residual"] = _nanmean(fin.balance_residual)
        row["reference_final_balance_residual"] = _nanmean(fin.reference_balance_residual)
        rows.append(row)
    return rows


def _escape_centres(a: xr.Dataset) -> list[tuple[int, float, float, float, int]]:
    """``(escape, d_r, low, high, runs)`` at the centre of every escape window with runs."""
    centre = a.sel(offset=0.0, method="nearest")
    out = []
    for e in a.escape.values:
        c = centre.sel(escape=e)
        runs = int(c.runs_at_checkpoint_window)
        if runs >= 2:
            out.append((int(e), float(c.d_r_window), float(c.d_r_low_window),
                        float(c.d_r_high_window), runs))
    return out


def claims(ds: xr.Dataset) -> list[dict]:
    """The claim rows (module docstring), one per prediction and arm."""
    rules = {k.removeprefix("rule_"): float(v) for k, v in ds.attrs.items() if k.startswith("rule_")}
    entries = int(ds.product.size * ds.k.size)
    level = f"{100 * float(ds.attrs.get('confidence', 0.95)):g}%"
    horizon = float(ds.time.values[-1])
    out = []
    for arm in ds.arm.values:
        arm = str(arm)
        a = ds.sel(arm=arm)
        ref = str(a.reference.values)
        mean, low, high, runs = _final(ds, "relative_parameter_distance", arm)
        thr = rules["parameter_distance_large"]
        out.append(claim_row(
            f"parameter_distance_large:{arm}",
            f"{arm}: parameters end far from {ref}'s (gauge freedom)", SOURCE,
            "golden-path", f"final ||theta_GD - theta||/||theta_GD|| = {_interval_text(mean, low, high)} "
            f"({level} bootstrap, {runs} runs, t = {horizon:g})",
            {"mean": mean, "low": low, "high": high, "runs": runs},
            f"supported if the interval's lower end > {thr:g}; refuted if its upper end < {thr:g}",
            _decide(low, high, thr, above=True)))
        mean, low, high, runs = _final(ds, "function_distance", arm)
        thr = rules["function_distance_small"]
        out.append(claim_row(
            f"function_distance_small:{arm}",
            f"{arm}: the end-to-end map ends close to {ref}'s", SOURCE, "golden-path",
            f"final ||W_GD - W||_F/||W_GD||_F = {_interval_text(mean, low, high)} ({level} "
            f"bootstrap, {runs} runs)", {"mean": mean, "low": low, "high": high, "runs": runs},
            f"supported if the interval's upper end < {thr:g}; refuted if its lower end > {thr:g}",
            _decide(low, high, thr, above=False)))
        fin = a.isel(time=-1)
        points = [("end", float(fin.d_r), float(fin.d_r_low), float(fin.d_r_high),
                   int(fin.runs_at_checkpoint))]
        points += [(f"escape {e}", d, lo, hi, n) for e, d, lo, hi, n in _escape_centres(a)]
        thr = rules["rank_distance_small"]
        verdicts = [_decide(lo, hi, thr, above=False) for _, _, lo, hi, _ in points]
        verdict = ("refuted" if "refuted" in verdicts else "not testable"
                   if "not testable" in verdicts else "supported")
        text = "; ".join(f"{where}: {_interval_text(d, lo, hi)} ({n} runs)"
                         for where, d, lo, hi, n in points)
        out.append(claim_row(
            f"rank_pattern_matches:{arm}",
            f"{arm}: rank patterns r_ij of every partial product match {ref}'s as training "
            "crosses saddles and at the end", SOURCE, "golden-path", f"d_r {text}",
            {"points": [{"where": w, "d_r": d, "low": lo, "high": hi, "runs": n}
                        for w, d, lo, hi, n in points]},
            f"supported if every upper end < {thr:g} (end and every escape centre); refuted if "
            "a lower end exceeds it", verdict))
        d, lo, hi = (float(fin.d_shape) / entries, float(fin.d_shape_low) / entries,
                     float(fin.d_shape_high) / entries)
        thr = rules["shape_distance_small"]
        out.append(claim_row(
            f"spectrum_shape_matches:{arm}",
            f"{arm}: the top-K singular-value shapes of every partial product match {ref}'s at "
            "the end", SOURCE, "golden-path",
            f"final d_shape per entry = {_interval_text(d, lo, hi)} ({entries} entries, "
            f"{int(fin.runs_at_checkpoint)} runs)", {"mean": d, "low": lo, "high": hi},
            f"supported if the interval's upper end < {thr:g}; refuted if its lower end > {thr:g}",
            _decide(lo, hi, thr, above=False)))
        frac, lo, hi = (float(a.cross_before_diagonal), float(a.cross_before_diagonal_low),
                        float(a.cross_before_diagonal_high))
        thr = rules["cross_before_diagonal"]
        pairs = f"{int(a.cross_before_diagonal_pairs)}/{int(a.cross_before_diagonal_total)}"
        out.append(claim_row(
            f"cross_before_diagonal:{arm}",
            f"{arm}: cross modes fall below threshold before their diagonal mode grows "
            "(t_cross < t_diag)", SOURCE, "golden-path",
            f"fraction of (mode, run) pairs {pairs} = {format_number(frac)} [{format_number(lo)}, "
            f"{format_number(hi)}] ({ref}: {format_number(float(a.reference_cross_before_diagonal))})",
            {"fraction": frac, "low": lo, "high": hi, "pairs": pairs},
            f"supported if the interval's lower end > {thr:g}; refuted if its upper end < {thr:g}",
            _decide(lo, hi, thr, above=True)))
        note = diverged_note(ds, arm)
        for row in out[-5:]:
            row["measured"] += note
    return out

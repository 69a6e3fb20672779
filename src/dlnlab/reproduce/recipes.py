"""One recipe per figure of the paper: its experiments, the figure's dataset, its numbers and
the claims it tests.

A recipe is data plus four pure functions:

- ``experiments(quick) -> {key: ExperimentConfig}``: what to simulate (cached per output folder,
  so figures sharing an experiment run it once);
- ``analyse({key: Dataset}) -> Dataset``: the figure's dataset (what is plotted, with per-run
  events such as ``t_peak`` and ``t_90``) — saved as ``NAME/NAME.nc``;
- ``numbers(Dataset) -> rows`` and ``claims(Dataset) -> rows``: computed from that dataset only,
  so anyone can recompute them from the saved file.

Times are ``t = step * learning rate`` (``step * h`` for the SDEs) throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..analysis import (
    crossing_times,
    learning_events,
    linear_fit,
    mean_and_se,
    moments_with_se,
    wilson_interval,
)
from .experiments import LABEL_NOISE, paper_config

# Decision rules of the claims, fixed before looking at the results (docs/reproduction.md).
PEAK_FRACTION = 0.95          # "diffusion peaks before learning": in >= 95% of runs
PEAK_AMPLITUDE_TOL = 0.05     # observed peak amplitude within 0.05 s of eq. 9
FORMULA_TOL = 0.10            # exact D_a within 10% of the aligned-balanced formula (median)
SIMILAR_TOL = 0.20            # "similar" off the aligned manifold (random init): within 20%
WIDER = 1.5                   # a "visibly wider" law: at least 1.5 times the width
ORDER_FRACTION = 0.95         # modes learned in decreasing order in >= 95% of runs
LINEAR_R2 = 0.99              # "linear": R^2 >= 0.99 and intercept within 3 SE of 0
COLLAPSE_TOL = 0.01           # "collapses to s": sd and |mean - s| below 0.01 s
GAUSS_SKEW, GAUSS_KURT = 0.5, 1.0   # "approximately Gaussian": |skewness|, |excess kurtosis|
CROSS_TOL = 0.05              # cross modes "negligible": below 5% of the smallest s
Z = 3.0                       # significance: 3 standard errors
STATIONARY_WINDOW = 2.0 / 3.0  # fig4: the time average uses t >= 2/3 of the horizon


def _size(quick: bool, small, large):
    return small if quick else large


def _method(ds: xr.Dataset, name: str) -> xr.Dataset:
    """One method of a run dataset (``ds.sel(method=...)`` would hit sel's own argument)."""
    return ds.isel(method=[str(m) for m in ds.method.values].index(name))


def _teacher(ds: xr.Dataset) -> int:
    return int(np.sum(ds.spectrum.values > 0))


def _params(ds: xr.Dataset) -> dict:
    return {k: ds.attrs[k] for k in ("learning_rate", "batch_size", "label_noise", "depth")
            if k in ds.attrs}


def _formula_grid(spectrum, depth, learning_rate, batch_size, label_noise, num=241):
    """The reduced diffusion ``D(a)`` (THEORY §6) on ``a / s`` in ``[0, 1.1]``, per mode."""
    from ..theory.reduced import reduced_diffusion

    x = np.linspace(0.0, 1.1, num)
    s = np.asarray(spectrum, dtype=np.float64)
    values = np.stack([np.asarray(reduced_diffusion(x * si, si, depth, learning_rate,
                                                    batch_size, label_noise)) for si in s])
    return x, values


def theory_max_diffusion(spectrum, depth, learning_rate, batch_size=1, label_noise=0.0):
    """Maximum over ``a`` in ``(0, s]`` of the reduced diffusion, per mode (fig9, fig10)."""
    x, values = _formula_grid(spectrum, depth, learning_rate, batch_size, label_noise, 20001)
    return np.max(np.where(x <= 1.0, values, -np.inf), axis=-1)


def _median(x) -> float:
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _iqr(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return (float(np.percentile(x, 25)), float(np.percentile(x, 75))) if x.size else (math.nan,) * 2


def _claim(id_: str, claim: str, paper: str, figure: str, measured: str, values: dict,
           criterion: str, verdict: str) -> dict:
    assert verdict in ("supported", "refuted", "not testable")
    return {"id": id_, "claim": claim, "paper": paper, "figure": figure, "measured": measured,
            "values": values, "criterion": criterion, "verdict": verdict}


def _fmt(x, spec=".3g") -> str:
    return "nan" if x is None or not np.isfinite(x) else format(x, spec)


# ----------------------------------------------------------------------------------- events


def _with_events(ds: xr.Dataset, k: int) -> xr.Dataset:
    """Keep the first ``k`` modes and add the per-run learning events."""
    out = ds.isel(mode=slice(0, k))
    return out.merge(learning_events(ds, modes=k))


def _transit_deviation(ds: xr.Dataset) -> xr.DataArray:
    """Median over the records with ``0.1 s <= a <= 0.9 s`` of ``|D - D_formula| / D_formula``
    per mode (the formula evaluated at the run's own amplitudes)."""
    s = ds.spectrum
    rel = np.abs(ds.diffusion - ds.reduced_diffusion) / ds.reduced_diffusion
    transit = (ds.amplitude >= 0.1 * s) & (ds.amplitude <= 0.9 * s)
    dims = [d for d in rel.dims if d not in ("mode",) and d in ("run", "time")]
    return rel.where(transit).median(dim=dims)


def _peak_rows(ds: xr.Dataset, label: str) -> list[dict]:
    rows = []
    for i in range(ds.sizes["mode"]):
        m = ds.isel(mode=i)
        before = (m.t_peak < m.t_90).values
        valid = np.isfinite(m.t_peak.values) & np.isfinite(m.t_90.values)
        lo, hi = wilson_interval(int(np.sum(before & valid)), int(np.sum(valid)))
        rows.append({
            "method": label, "mode": i + 1, "s": float(m.spectrum),
            "a_peak_predicted": float(m.theory_peak_amplitude),
            "a_at_peak_median": _median(m.a_at_peak), "t_peak_median": _median(m.t_peak),
            "t_cross_peak_median": _median(m.t_cross_peak), "t_90_median": _median(m.t_90),
            "peak_before_90_fraction": (float(np.sum(before & valid)) / max(int(valid.sum()), 1)),
            "peak_before_90_ci95": [lo, hi], "runs": int(valid.sum()),
            "d_peak_median": _median(m.d_peak),
        })
    return rows


def _peak_rows_with_deviation(ds: xr.Dataset, label: str) -> list[dict]:
    """:func:`_peak_rows` plus the median relative deviation from the formula in transit."""
    rows = _peak_rows(ds, label)
    for r, dv in zip(rows, _transit_deviation(ds).values, strict=True):
        r["transit_relative_deviation_median"] = float(dv)
    return rows


def _peak_claims(rows: list[dict], figure: str, init: str) -> list[dict]:
    fractions = [r["peak_before_90_fraction"] for r in rows]
    parts = "; ".join(f"{r['method']} mode {r['mode']}: {r['peak_before_90_fraction']:.0%} of "
                      f"{r['runs']} runs (95% CI {r['peak_before_90_ci95'][0]:.2f}-"
                      f"{r['peak_before_90_ci95'][1]:.2f}), median t_peak {_fmt(r['t_peak_median'])}"
                      f" vs t(a = 0.9 s) {_fmt(r['t_90_median'])}" for r in rows)
    ok = all(np.isfinite(f) and f >= PEAK_FRACTION for f in fractions)
    out = [_claim(f"{figure}-peak-precedes-learning",
                  "The modewise diffusion peaks before the mode is learned.",
                  "§4, Fig. 3", figure, parts,
                  {"rows": [{k: r[k] for k in ("method", "mode", "peak_before_90_fraction",
                                               "peak_before_90_ci95", "t_peak_median",
                                               "t_90_median", "runs")} for r in rows]},
                  f"t_peak < t(a = 0.9 s) in >= {PEAK_FRACTION:.0%} of runs for every mode "
                  f"({init})", "supported" if ok else "refuted")]
    dev = [abs(r["a_at_peak_median"] - r["a_peak_predicted"]) / r["s"] for r in rows]
    parts = "; ".join(f"{r['method']} mode {r['mode']}: a at peak {_fmt(r['a_at_peak_median'], '.4g')}"
                      f" vs eq. 9 {_fmt(r['a_peak_predicted'], '.4g')}" for r in rows)
    ok = all(np.isfinite(d) and d <= PEAK_AMPLITUDE_TOL for d in dev)
    out.append(_claim(f"{figure}-peak-amplitude",
                      "The diffusion peaks at the amplitude of eq. 9 (a_peak = 0.6 s at L = 4 "
                      "without label noise).", "§4, eq. 9", figure, parts,
                      {"rows": [{k: r[k] for k in ("method", "mode", "a_at_peak_median",
                                                   "a_peak_predicted")} for r in rows]},
                      f"|median observed - predicted| <= {PEAK_AMPLITUDE_TOL} s per mode ({init})",
                      "supported" if ok else "refuted"))
    return out


# ----------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    paper: str
    experiments: Callable[[bool], dict]
    analyse: Callable[[dict], xr.Dataset]
    numbers: Callable[[xr.Dataset], list[dict]]
    claims: Callable[[xr.Dataset], list[dict]]
    figure: Callable[[xr.Dataset], object]


# fig1 -----------------------------------------------------------------------------------------
# The paper's fig1 uses an init that concentrates the learning times. We start every run on the
# aligned, balanced manifold of THEORY §6 with every mode at a0 = 0.002 (the rms mode amplitude
# of the default init) and Haar-random hidden bases: all runs learn at the same times, and the
# formula is exact at t = 0; the figure shows how well it holds as SGD's noise moves the
# weights off that manifold.

def _fig1_experiments(quick):
    return {"aligned": paper_config(
        "aligned", runs=_size(quick, 64, 256), horizon=60.0, methods=["sgd"], points=301,
        variables=["amplitude", "diffusion", "reduced_diffusion", "balance_residual",
                   "cross_amplitude"],
        init__kind="aligned", init__amplitude=0.002)}


def _formula_ds(ds, k):
    p = _params(ds)
    x, values = _formula_grid(ds.spectrum.values[:k], int(p["depth"]), p["learning_rate"],
                              p["batch_size"], p["label_noise"])
    return xr.Dataset({"formula_diffusion": (("mode", "normalised_amplitude"), values)},
                      coords={"normalised_amplitude": x})


def _fig1_analyse(data):
    raw = data["aligned"]
    k = _teacher(raw)
    d = _method(raw, "sgd")
    cross = d.cross_amplitude.isel(mode=slice(0, k), mode2=slice(0, k))
    off = np.abs(cross.values) * (1 - np.eye(k))
    out = _with_events(d[["amplitude", "diffusion", "reduced_diffusion", "balance_residual",
                          "spectrum", "theory_peak_amplitude"]], k)
    out["max_cross_amplitude"] = (("run", "time"), off.max(axis=(-1, -2)))
    out = out.merge(_formula_ds(raw, k))
    out.attrs.update(_params(raw), init="aligned, balanced, a0 = 0.002 per mode")
    return out


def _fig1_numbers(ds):
    rows = _peak_rows_with_deviation(ds, "SGD")
    for r, fmax in zip(rows, ds.formula_diffusion.max("normalised_amplitude").values,
                       strict=True):
        r["formula_max_diffusion"] = float(fmax)
    return rows


def _fig1_claims(ds):
    rows = _fig1_numbers(ds)
    dev = [r["transit_relative_deviation_median"] for r in rows]
    measured = "; ".join(f"mode {r['mode']}: median |D - D_formula| / D_formula = "
                         f"{_fmt(r['transit_relative_deviation_median'], '.2%')} while "
                         f"0.1 s <= a <= 0.9 s" for r in rows)
    ok = all(np.isfinite(x) and x <= FORMULA_TOL for x in dev)
    out = [_claim("fig1-formula", "The exact modewise diffusion of SGD follows the aligned-"
                  "balanced formula (eq. 7) evaluated at the current amplitude.",
                  "Prop. 3.5, Fig. 1", "fig1", measured, {"transit_relative_deviation": dev},
                  f"median relative deviation <= {FORMULA_TOL:.0%} per mode (aligned, balanced "
                  "init)", "supported" if ok else "refuted")]
    return out + _peak_claims(rows, "fig1", "aligned, balanced init")


# fig2, fig3, fig6 share one experiment ---------------------------------------------------------

def _main_experiments(quick):
    return {"main": paper_config(
        "main", runs=_size(quick, 32, 128), horizon=60.0, methods=["gf", "sgd", "sde", "isotropic"],
        points=301, variables=["amplitude", "diffusion", "reduced_diffusion", "cross_amplitude"])}


def _fig2_analyse(data):
    raw = data["main"]
    k = _teacher(raw)
    out = _with_events(raw[["amplitude", "diffusion", "spectrum", "theory_peak_amplitude",
                            "theory_gf_amplitude", "method_label", "loss"]], k)
    out = out.drop_vars("diffusion")
    out.attrs.update(_params(raw), isotropic_temperature=float(raw.isotropic_temperature))
    return out


def _fig2_numbers(ds):
    rows = []
    for m in ds.method.values:
        d = _method(ds, str(m))
        for i in range(ds.sizes["mode"]):
            dm = d.isel(mode=i)
            rows.append({"method": str(m), "mode": i + 1, "s": float(dm.spectrum),
                         "t_half_median": _median(dm.t_half), "t_90_median": _median(dm.t_90),
                         "t_90_iqr": list(_iqr(dm.t_90)),
                         "runs_reaching_90": int(np.isfinite(dm.t_90.values).sum()),
                         "runs": int(dm.sizes["run"])})
    return rows


def _ordered_fraction(d: xr.Dataset) -> tuple[int, int]:
    t = d.t_90.transpose("run", "mode").values
    ok = np.all(np.isfinite(t), axis=1)
    ordered = ok & np.all(np.diff(t, axis=1) > 0, axis=1)
    return int(ordered.sum()), int(t.shape[0])


def _all_learned(d: xr.Dataset) -> np.ndarray:
    """Per run: time the last teacher mode reaches 0.9 s (NaN if one never does)."""
    return d.t_90.max("mode", skipna=False).values


def _fig2_claims(ds):
    out = []
    parts, values, ok = [], {}, True
    for m in ("sgd", "sde", "gf"):
        good, n = _ordered_fraction(_method(ds, m))
        lo, hi = wilson_interval(good, n)
        values[m] = {"ordered": good, "runs": n, "ci95": [lo, hi]}
        parts.append(f"{m}: {good}/{n} runs (95% CI {lo:.2f}-{hi:.2f})")
        ok &= good >= ORDER_FRACTION * n
    out.append(_claim("fig2-decreasing-order", "Modes are learned in decreasing order of s "
                      "(saddle to saddle), for SGD, its SDE and gradient flow.", "§3, Fig. 2",
                      "fig2", "t(a = 0.9 s) increases with the mode index in " + "; ".join(parts),
                      values, f"ordered in >= {ORDER_FRACTION:.0%} of runs for each method",
                      "supported" if ok else "refuted"))

    sgd, sde = _all_learned(_method(ds, "sgd")), _all_learned(_method(ds, "sde"))
    m1, se1, n1 = mean_and_se(sgd)
    m2, se2, n2 = mean_and_se(sde)
    ratio = m1 / m2
    ratio_se = ratio * math.sqrt((se1 / m1) ** 2 + (se2 / m2) ** 2)
    measured = (f"time to learn all modes (t(a_3 = 0.9 s), t = step x learning rate): SGD "
                f"{m1:.2f} ± {se1:.2f} ({n1} runs), anisotropic SDE {m2:.2f} ± {se2:.2f} ({n2}); "
                f"ratio {ratio:.3f} ± {ratio_se:.3f}. The paper reports about 200 vs 30 "
                "(ratio 6.7). In matched time the two learn together; a gap of that size needs "
                "different time axes (one step of SGD advances t by the learning rate, one EM "
                "step by h = learning rate / 10: plotting steps x h for one and steps x "
                "learning rate for the other gives a factor 10).")
    out.append(_claim("fig2-time-scale", "SGD learns all modes far more slowly than the "
                      "anisotropic SDE (about 200 vs 30 time units).", "§3, §4.1, Figs. 2-3",
                      "fig2", measured, {"sgd_mean": m1, "sgd_se": se1, "sde_mean": m2,
                                         "sde_se": se2, "ratio": ratio, "ratio_se": ratio_se},
                      "supported if the SGD/SDE ratio exceeds 1 by more than 3 SE and is near "
                      "6.7; refuted if within 3 SE of 1",
                      "refuted" if abs(ratio - 1) <= Z * ratio_se
                      else ("supported" if ratio > 3 else "refuted")))

    spreads = noise_spreads(ds)
    sgd_w, sde_w, iso_w = (spreads[m][0] for m in ("sgd", "sde", "isotropic"))
    measured = ("sd over runs of t_90(method) - t_90(gradient flow) (same init per run: the "
                "learning-time spread the noise adds), mean over modes: " + ", ".join(
                    f"{m} {spreads[m][0]:.3f} ± {spreads[m][1]:.3f}"
                    for m in ("sgd", "sde", "isotropic"))
                + f" (isotropic temperature matched at init: T = "
                f"{ds.attrs['isotropic_temperature']:.3g})")
    gap_sde, gap_iso = abs(sde_w - sgd_w), abs(iso_w - sgd_w)
    gap_se = math.hypot(spreads["sde"][1], spreads["isotropic"][1])
    out.append(_claim("fig2-anisotropic-vs-isotropic", "State-dependent anisotropic noise models "
                      "SGD's learning dynamics better than isotropic Langevin noise.",
                      "§1.1 contribution 4", "fig2", measured,
                      {m: {"spread": spreads[m][0], "se": spreads[m][1]} for m in spreads},
                      "the anisotropic SDE's noise-induced spread is closer to SGD's than the "
                      f"isotropic one's by more than {Z:g} SE",
                      "supported" if gap_iso - gap_sde > Z * gap_se else
                      ("refuted" if gap_sde - gap_iso > Z * gap_se else "not testable")))
    return out


def noise_spreads(ds) -> dict:
    """Per method: the sd over runs of ``t_90 - t_90(gradient flow)`` (paired by run: the same
    init), averaged over modes, with its standard error ``sd / sqrt(2 (n - 1))``."""
    t_gf = _method(ds, "gf").t_90.transpose("run", "mode").values
    out = {}
    for m in ("sgd", "sde", "isotropic"):
        diff = _method(ds, m).t_90.transpose("run", "mode").values - t_gf
        sds, ses = [], []
        for j in range(diff.shape[1]):
            x = diff[:, j][np.isfinite(diff[:, j])]
            sd = float(np.std(x, ddof=1))
            sds.append(sd)
            ses.append(sd / math.sqrt(2 * (x.size - 1)))
        out[m] = (float(np.mean(sds)), float(np.sqrt(np.sum(np.square(ses))) / len(ses)))
    return out


def _fig3_analyse(data):
    raw = data["main"]
    k = _teacher(raw)
    sub = raw.isel(method=[i for i, m in enumerate(raw.method.values) if m in ("sgd", "sde")])
    out = _with_events(sub[["amplitude", "diffusion", "reduced_diffusion", "spectrum",
                            "theory_peak_amplitude", "method_label"]], k)
    out = out.merge(_formula_ds(raw, k))
    out.attrs.update(_params(raw), init="gaussian, variance d^-2 (random, unaligned)")
    return out


def _fig3_numbers(ds):
    rows = []
    for m in ds.method.values:
        rows += _peak_rows_with_deviation(_method(ds, str(m)), str(m))
    return rows


def _fig3_claims(ds):
    return _peak_claims(_fig3_numbers(ds), "fig3", "random Gaussian init, SGD and anisotropic SDE")


def _fig6_analyse(data):
    raw = data["main"]
    k = _teacher(raw)
    sub = raw.isel(method=[i for i, m in enumerate(raw.method.values) if m in ("sgd", "sde")])
    cross = np.abs(sub.cross_amplitude.transpose("method", "run", "time", "mode", "mode2").values)
    r = cross.shape[-1]
    teacher = cross[..., :k, :k]
    pairs = [(a, b) for a in range(k) for b in range(k) if a != b]
    pair_values = np.stack([teacher[..., a, b] for a, b in pairs], axis=-1)
    other = np.where((np.arange(r)[:, None] >= k) | (np.arange(r)[None, :] >= k), cross, 0.0)
    other = np.where(np.eye(r, dtype=bool), 0.0, other).max(axis=(-1, -2))
    events = learning_events(sub, modes=k)
    t = raw.time.values
    start = crossing_times(t, sub.amplitude.isel(mode=slice(0, k)).transpose(
        "method", "run", "mode", "time").values, 0.1 * raw.spectrum.values[:k])
    out = xr.Dataset({
        "abs_cross": (("method", "run", "time", "pair"), pair_values),
        "abs_cross_other_max": (("method", "run", "time"), other),
        "t_10": (("method", "run", "mode"), start),
        "t_90": events.t_90.transpose("method", "run", "mode"),
        "spectrum": raw.spectrum.isel(mode=slice(0, k)),
        "method_label": sub.method_label,
    }, coords={"method": sub.method.values, "run": raw.run.values, "time": t,
               "pair": [f"{a + 1}-{b + 1}" for a, b in pairs]})
    out.attrs.update(_params(raw))
    return out


def _transition_mask(d: xr.Dataset) -> np.ndarray:
    """Times inside any mode's transition window [median t(0.1 s), median t(0.9 s)]."""
    t = d.time.values
    mask = np.zeros(t.size, dtype=bool)
    for i in range(d.sizes["mode"]):
        lo = _median(d.t_10.isel(mode=i))
        hi = _median(d.t_90.isel(mode=i))
        if np.isfinite(lo) and np.isfinite(hi):
            mask |= (t >= lo) & (t <= hi)
    return mask


def _fig6_numbers(ds):
    rows = []
    for m in ds.method.values:
        d = _method(ds, str(m))
        inside = _transition_mask(d)
        med = d.abs_cross.median("run").transpose("time", "pair").values
        other = d.abs_cross_other_max.median("run").values
        for j, pair in enumerate([str(p) for p in ds.pair.values] + ["other (max)"]):
            series = med[:, j] if j < med.shape[1] else other
            rows.append({"method": str(m), "pair": pair,
                         "max_median_inside_transitions": float(np.max(series[inside]))
                         if inside.any() else math.nan,
                         "max_median_outside_transitions": float(np.max(series[~inside]))
                         if (~inside).any() else math.nan,
                         "time_of_max": float(d.time.values[int(np.argmax(series))])})
    return rows


def cross_mode_summary(ds, method="sgd") -> dict:
    """Fraction of the horizon in which every teacher cross mode (median over runs) is below
    ``CROSS_TOL`` times the smallest ``s``; the largest one, its pair and time."""
    d = _method(ds, method)
    med = d.abs_cross.median("run").transpose("time", "pair").values
    s_min = float(ds.spectrum.values.min())
    small = np.all(med <= CROSS_TOL * s_min, axis=1)
    t_i, p_i = np.unravel_index(int(np.nanargmax(med)), med.shape)
    return {"fraction_small": float(np.mean(small)), "threshold": CROSS_TOL * s_min,
            "largest": float(med[t_i, p_i]), "largest_pair": str(ds.pair.values[p_i]),
            "largest_time": float(ds.time.values[t_i]),
            "largest_in_transition": bool(_transition_mask(d)[t_i]),
            "first_start": _median(d.t_10.isel(mode=0)), "last_end": _median(d.t_90.isel(mode=-1))}


def _fig6_claims(ds):
    c = cross_mode_summary(ds)
    measured = (f"SGD, median over runs of |u_a^T W v_b| over the teacher's modes: below "
                f"{c['threshold']:.3g} ({CROSS_TOL:.0%} of the smallest s) during "
                f"{c['fraction_small']:.0%} of the horizon; largest {c['largest']:.3g} "
                f"({c['largest'] / float(ds.spectrum.values[0]):.1%} of s_1) for pair "
                f"{c['largest_pair']} at t = {c['largest_time']:.3g} (modes are learned between "
                f"t = {c['first_start']:.3g} and {c['last_end']:.3g})")
    ok = c["fraction_small"] >= 0.5
    return [_claim("fig6-cross-modes", "Cross modes are negligible for most of training and peak "
                   "only while modes are learned (largest for the pair of the first two modes).",
                   "App. I.1, Fig. 6", "fig6", measured, c,
                   f"below {CROSS_TOL:.0%} of the smallest s for at least half of the horizon",
                   "supported" if ok else "refuted")]


# fig7, fig8: balance ------------------------------------------------------------------------

_BALANCE = [(2, "gaussian"), (2, "balanced"), (4, "gaussian"), (4, "balanced")]


def _balance_experiments(quick):
    out = {}
    for depth, init in _BALANCE:
        out[f"L{depth}-{init}"] = paper_config(
            f"balance-L{depth}-{init}", runs=_size(quick, 16, 64), horizon=60.0, methods=["sgd"],
            points=241, variables=["amplitude", "diffusion", "balance_residual",
                                   "balance_numerator", "layer_norm"],
            task__hidden=[12] * (depth - 1), init__kind=init)
    return out


def _balance_analyse(data):
    first = next(iter(data.values()))
    t = first.time.values
    runs = first.sizes["run"]
    shape = (2, 2, runs, t.size)
    res = np.full(shape + (3,), np.nan)
    num = np.full(shape + (3,), np.nan)
    norm = np.full(shape + (4,), np.nan)
    for key, raw in data.items():
        depth, init = int(key[1]), key.split("-")[1]
        i, j = [2, 4].index(depth), ["gaussian", "balanced"].index(init)
        d = _method(raw, "sgd")
        res[i, j, ..., :depth - 1] = d.balance_residual.transpose("run", "time", "pair").values
        num[i, j, ..., :depth - 1] = d.balance_numerator.transpose("run", "time", "pair").values
        norm[i, j, ..., :depth] = d.layer_norm.transpose("run", "time", "layer").values
    dims = ("depth", "init", "run", "time")
    out = xr.Dataset({"balance_residual": (dims + ("pair",), res),
                      "balance_numerator": (dims + ("pair",), num),
                      "layer_norm": (dims + ("layer",), norm)},
                     coords={"depth": [2, 4], "init": ["gaussian", "balanced"],
                             "run": first.run.values, "time": t, "pair": [1, 2, 3],
                             "layer": [1, 2, 3, 4]})
    out.attrs.update(_params(first))
    out.attrs.pop("depth", None)
    return out


def _balance_rows(ds, name):
    rows = []
    for depth in ds.depth.values:
        for init in ds.init.values:
            d = ds.sel(depth=depth, init=init)
            for p in range(int(depth) - 1):
                x = d[name].isel(pair=p)
                start, end = x.isel(time=0).values, x.isel(time=-1).values
                rows.append({"depth": int(depth), "init": str(init), "pair": f"{p + 1}-{p + 2}",
                             "start_median": _median(start), "end_median": _median(end),
                             "end_over_start_median": _median(end / start)})
    return rows


def _fig7_numbers(ds):
    return _balance_rows(ds, "balance_residual")


def _fig7_claims(ds):
    rows = _fig7_numbers(ds)
    gauss = [r for r in rows if r["init"] == "gaussian"]
    bal = {(r["depth"], r["pair"]): r for r in rows if r["init"] == "balanced"}
    improves = all(r["end_over_start_median"] < 1 for r in gauss)
    short = all(r["end_median"] > bal[(r["depth"], r["pair"])]["end_median"] for r in gauss)
    measured = "; ".join(f"L={r['depth']} pair {r['pair']}: r {r['start_median']:.3f} -> "
                         f"{r['end_median']:.3f} (balanced init ends at "
                         f"{bal[(r['depth'], r['pair'])]['end_median']:.2e})" for r in gauss)
    return [_claim("fig7-balance", "From unbalanced (Gaussian) inits, SGD makes the layers more "
                   "balanced, but never as balanced as a balanced init.", "App. I.2, Fig. 7",
                   "fig7", "median normalised residual r_l: " + measured,
                   {"rows": rows}, "r_l(end) < r_l(0) for every pair and depth, and above the "
                   "balanced init's r_l(end)", "supported" if improves and short else "refuted")]


def _fig8_numbers(ds):
    rows = _balance_rows(ds, "balance_numerator")
    for depth in ds.depth.values:
        for init in ds.init.values:
            d = ds.sel(depth=depth, init=init)
            for layer in range(int(depth)):
                x = d.layer_norm.isel(layer=layer)
                rows.append({"depth": int(depth), "init": str(init), "layer": layer + 1,
                             "norm_start_median": _median(x.isel(time=0)),
                             "norm_end_median": _median(x.isel(time=-1))})
    return rows


def _fig8_claims(ds):
    rows = [r for r in _balance_rows(ds, "balance_numerator") if r["init"] == "gaussian"]
    res = {(r["depth"], r["pair"]): r for r in _balance_rows(ds, "balance_residual")
           if r["init"] == "gaussian"}
    kept = all(r["end_over_start_median"] >= 0.9 for r in rows)
    halved = all(res[(r["depth"], r["pair"])]["end_over_start_median"] <= 0.5 for r in rows)
    measured = "; ".join(f"L={r['depth']} pair {r['pair']}: numerator x"
                         f"{r['end_over_start_median']:.3f}, normalised r_l x"
                         f"{res[(r['depth'], r['pair'])]['end_over_start_median']:.3f}"
                         for r in rows)
    return [_claim("fig8-balance-relative", "The balance gained from unbalanced inits is relative "
                   "to the growing weights, not an absolute decrease of the imbalance.",
                   "App. I.2, Fig. 8", "fig8", "Gaussian init, median end / start of "
                   "||W_l W_l^T - W_{l+1}^T W_{l+1}||_F (conserved exactly by gradient flow): "
                   + measured, {"rows": rows},
                   "the numerator keeps >= 90% of its initial value while r_l at least halves",
                   "supported" if kept and halved else "refuted")]


# fig9, fig10: scaling of the maximal diffusion ---------------------------------------------

def _lr_experiments(quick):
    rates = _size(quick, [0.005, 0.01, 0.02], [0.0025, 0.005, 0.01, 0.02, 0.04])
    return {f"{lr:g}": paper_config(f"lr-{lr:g}", runs=_size(quick, 32, 128), horizon=50.0,
                                    methods=["sgd"], points=501,
                                    variables=["amplitude", "diffusion"],
                                    training__learning_rate=lr) for lr in rates}


def _batch_experiments(quick):
    batches = _size(quick, [1, 2, 4], [1, 2, 4, 8, 16])
    return {f"{b}": paper_config(f"batch-{b}", runs=_size(quick, 32, 128), horizon=50.0,
                                 methods=["sgd"], points=501, variables=["amplitude", "diffusion"],
                                 training__batch_size=b) for b in batches}


def _scaling_analyse(data, coord):
    keys = sorted(data, key=float)
    first = data[keys[0]]
    k = _teacher(first)
    values = np.stack([_method(data[key], "sgd").diffusion.isel(mode=slice(0, k))
                       .max("time").transpose("run", "mode").values for key in keys])
    depth = int(first.attrs["depth"])
    theory = []
    for key in keys:
        p = _params(data[key])
        theory.append(theory_max_diffusion(first.spectrum.values[:k], depth, p["learning_rate"],
                                           p["batch_size"], p["label_noise"]))
    x = np.array([float(key) for key in keys])
    if coord == "batch_size":
        x = x.astype(int)
    out = xr.Dataset({"max_diffusion": ((coord, "run", "mode"), values),
                      "theory_max_diffusion": ((coord, "mode"), np.stack(theory)),
                      "spectrum": ("mode", first.spectrum.values[:k])},
                     coords={coord: x, "run": first.run.values, "mode": np.arange(k)})
    p = _params(first)
    p.pop(coord, None)
    out.attrs.update(p)
    return out


def _scaling_x(ds):
    if "learning_rate" in ds.coords:
        return ds.learning_rate.values.astype(float), "learning rate", "learning_rate"
    return 1.0 / ds.batch_size.values.astype(float), "1 / batch size", "batch_size"


def scaling_fits(ds) -> list[dict]:
    """Per mode: OLS of the run-mean maximal diffusion against the learning rate or 1/B."""
    x, label, coord = _scaling_x(ds)
    rows = []
    for i in range(ds.sizes["mode"]):
        y = ds.max_diffusion.isel(mode=i).mean("run").values
        fit = linear_fit(x, y)
        theory = linear_fit(x, ds.theory_max_diffusion.isel(mode=i).values)
        rows.append({"mode": i + 1, "x": label, **fit, "theory_slope": theory["slope"]})
    return rows


def _scaling_numbers(ds):
    x, label, coord = _scaling_x(ds)
    rows = []
    for j, value in enumerate(ds[coord].values):
        for i in range(ds.sizes["mode"]):
            mean, se, n = mean_and_se(ds.max_diffusion.isel({coord: j, "mode": i}).values)
            rows.append({coord: float(value), "x": float(x[j]), "mode": i + 1,
                         "max_diffusion_mean": mean, "max_diffusion_se": se, "runs": n,
                         "theory_max_diffusion": float(ds.theory_max_diffusion.isel(
                             {coord: j, "mode": i}))})
    return rows + [{"fit": True, **r} for r in scaling_fits(ds)]


def _scaling_claims(ds, figure, what, paper):
    fits = scaling_fits(ds)
    linear = all(f["r2"] >= LINEAR_R2 for f in fits)
    through_zero = all(abs(f["intercept"]) <= Z * f["intercept_se"] for f in fits)
    measured = "; ".join(f"mode {f['mode']}: slope {f['slope']:.4g} ± {f['slope_se']:.2g} "
                         f"(formula {f['theory_slope']:.4g}), intercept {f['intercept']:.2g} ± "
                         f"{f['intercept_se']:.2g}, R^2 = {f['r2']:.4f}" for f in fits)
    measured = f"max over t of D_a, mean over runs, against {fits[0]['x']}: " + measured
    return [_claim(f"{figure}-linear", f"The maximal modewise diffusion is linear in {what}.",
                   paper, figure, measured, {"fits": fits}, f"R^2 >= {LINEAR_R2}, every mode",
                   "supported" if linear else "refuted"),
            _claim(f"{figure}-proportional", f"... and proportional to {what}, as eq. 7 says "
                   "(zero intercept).", paper, figure, "intercepts: " + "; ".join(
                       f"mode {f['mode']}: {f['intercept']:.2g} ± {f['intercept_se']:.2g} "
                       f"({f['intercept'] / f['intercept_se']:+.1f} SE)" for f in fits),
                   {"intercepts": [f["intercept"] for f in fits],
                    "intercept_se": [f["intercept_se"] for f in fits]},
                   f"intercept within {Z:g} SE of 0, every mode",
                   "supported" if through_zero else "refuted")]


# appJ3: finite data set -------------------------------------------------------------------------

def _finite_experiments(quick):
    sizes = _size(quick, [100, 1000], [100, 1000, 10000])
    return {f"{n}": paper_config(f"finite-{n}", runs=_size(quick, 32, 128), horizon=60.0,
                                 methods=["sgd"], points=301, variables=["amplitude", "diffusion"],
                                 task__num_samples=n) for n in sizes}


def _finite_analyse(data):
    keys = sorted(data, key=int)
    first = data[keys[0]]
    k = _teacher(first)
    parts = []
    for key in keys:
        d = _method(data[key], "sgd")
        parts.append(_with_events(d[["amplitude", "diffusion", "spectrum",
                                     "theory_peak_amplitude"]], k)
                     .expand_dims(num_samples=[int(key)]))
    out = xr.concat(parts, dim="num_samples")
    for name in ("spectrum", "theory_peak_amplitude"):
        out[name] = first[name].isel(mode=slice(0, k))
    # eq. 9 is an online formula; for a data set it is the large-sample prediction.
    from ..theory.peak import diffusion_peak

    p = diffusion_peak(first.spectrum.values[:k], int(first.attrs["depth"]), 0.0)
    out["theory_peak_amplitude"] = ("mode", np.asarray(p.amplitude, dtype=np.float64))
    out = out.merge(_formula_ds(first, k))
    out.attrs.update(_params(first))
    return out


def _finite_numbers(ds):
    rows = []
    for n in ds.num_samples.values:
        for r in _peak_rows(ds.sel(num_samples=n), f"SGD, {int(n)} samples"):
            rows.append({"num_samples": int(n), **r})
    return rows


def _finite_claims(ds):
    rows = _finite_numbers(ds)
    out = _peak_claims(rows, "appJ3", "offline SGD on a fixed data set, online eq. 9")
    for c in out:
        c["paper"] = "App. J.3"
        c["claim"] = "With a finite data set: " + c["claim"][0].lower() + c["claim"][1:]
    return out


# fig11: hidden width 24 ------------------------------------------------------------------------

def _width_experiments(quick):
    return {"width24": paper_config(
        "width24", runs=_size(quick, 32, 128), horizon=100.0, methods=["sgd"], points=401,
        variables=["amplitude", "diffusion", "reduced_diffusion"], task__hidden=[24, 24, 24])}


def _width_analyse(data):
    raw = data["width24"]
    k = _teacher(raw)
    out = _with_events(_method(raw, "sgd")[["amplitude", "diffusion", "reduced_diffusion",
                                            "spectrum", "theory_peak_amplitude"]], k)
    out = out.merge(_formula_ds(raw, k))
    out.attrs.update(_params(raw), hidden="24, 24, 24")
    return out


def _width_numbers(ds):
    return _peak_rows_with_deviation(ds, "SGD, width 24")


def _width_claims(ds):
    rows = _width_numbers(ds)
    dev = [r["transit_relative_deviation_median"] for r in rows]
    measured = "; ".join(f"mode {r['mode']}: median |D - D_formula| / D_formula = {x:.1%}, a at "
                         f"peak {_fmt(r['a_at_peak_median'], '.3g')} vs {r['a_peak_predicted']:.3g}"
                         for r, x in zip(rows, dev, strict=True))
    ok = all(np.isfinite(x) and x <= SIMILAR_TOL for x in dev) and all(
        abs(r["a_at_peak_median"] - r["a_peak_predicted"]) <= PEAK_AMPLITUDE_TOL * r["s"]
        for r in rows)
    return [_claim("fig11-width", "With hidden width 24 (twice the input), the modewise diffusion "
                   "is similar to the formula of Prop. 3.5.", "App. J.4, Fig. 11", "fig11",
                   measured, {"transit_relative_deviation": dev},
                   f"median relative deviation <= {SIMILAR_TOL:.0%} (random init: the formula "
                   "assumes alignment; fig3 reports the width-12 value) and peak amplitude within "
                   f"{PEAK_AMPLITUDE_TOL} s, every mode", "supported" if ok else "refuted")]


# fig4: end-of-training distribution ---------------------------------------------------------------

_END_METHODS = ("sgd", "sde", "isotropic")


def _end_experiments(quick):
    # SGD is cheap and carries the mean-side claim: most runs go there. The SDEs take 10 steps
    # per SGD step (h = learning rate / 10); the isotropic one draws P = 576 normals per step.
    runs = {"sgd": _size(quick, 512, 2048), "sde": _size(quick, 128, 512),
            "isotropic": _size(quick, 64, 256)}
    out = {}
    for noise, sigma in (("none", 0.0), ("label", LABEL_NOISE)):
        for m in _END_METHODS:
            out[f"{noise}-{m}"] = paper_config(
                f"end-{noise}-{m}", runs=runs[m], horizon=60.0, methods=[m], points=121,
                variables=["amplitude", "diffusion"], task__label_noise=sigma)
    return out


def _end_analyse(data):
    from ..theory.stationary import first_order_moments, stationary_density, stationary_moments

    first = data["none-sgd"]
    methods = list(_END_METHODS)
    most = max(ds.sizes["run"] for ds in data.values())
    amp = np.full((2, len(methods), most, first.sizes["time"]), np.nan)
    temperature = [math.nan, math.nan]
    for i, noise in enumerate(("none", "label")):
        for j, m in enumerate(methods):
            ds = data[f"{noise}-{m}"]
            amp[i, j, :ds.sizes["run"]] = _method(ds, m).amplitude.isel(mode=0).transpose(
                "run", "time").values
            if m == "isotropic":
                temperature[i] = float(ds.isotropic_temperature)
    s = float(first.spectrum.values[0])
    p = _params(data["label-sgd"])
    depth, lr, batch, sigma = int(p["depth"]), p["learning_rate"], p["batch_size"], p["label_noise"]
    grid, density = stationary_density(s, depth, lr, batch, sigma)
    grid, density = np.asarray(grid), np.asarray(density)
    keep = density > density.max() * 1e-8
    moments = stationary_moments([s], depth, lr, batch, sigma)
    zero1, mean1, _, var1 = (float(np.asarray(x).ravel()[0])
                             for x in first_order_moments([s], depth, lr, batch, sigma))
    out = xr.Dataset({
        "amplitude": (("noise", "method", "run", "time"), amp),
        "stationary_density": ("amplitude_grid", density[keep]),
        "spectrum": ((), s),
        "theory_mean": ((), float(np.asarray(moments.mean)[0])),
        "theory_variance": ((), float(np.asarray(moments.variance)[0])),
        "first_order_mean": ((), mean1),
        "first_order_variance": ((), var1),
        "paper_mean": ((), zero1),
        "isotropic_temperature": ("noise", temperature),
    }, coords={"noise": ["none", "label"], "method": methods, "run": np.arange(most),
               "time": first.time.values, "amplitude_grid": grid[keep]})
    out.attrs.update(learning_rate=lr, batch_size=batch, label_noise=sigma, depth=depth,
                     window_start=float(first.time.values[-1] * STATIONARY_WINDOW))
    return out


def end_statistics(ds) -> list[dict]:
    """Per noise and method: moments of ``a_1`` at the end of training, and the mean over runs
    of each run's time average over the stationary window (runs are independent; records within
    a run are not, so the standard error comes from the run averages)."""
    s = float(ds.spectrum)
    window = ds.time.values >= ds.attrs["window_start"]
    rows = []
    for noise in ds.noise.values:
        for m in ds.method.values:
            a = ds.amplitude.sel({"noise": noise, "method": m}).transpose("run", "time").values
            final = moments_with_se(a[:, -1])
            avg, avg_se, n = mean_and_se(np.mean(a[:, window], axis=1))
            rows.append({"noise": str(noise), "method": str(m), **final,
                         "median_abs_deviation_from_s": spread(a[:, -1], s),
                         "mean_minus_s": final["mean"] - s, "window_mean_minus_s": avg - s,
                         "window_mean_se": avg_se, "runs": n})
    return rows


def _end_numbers(ds):
    rows = end_statistics(ds)
    rows.append({"theory": "stationary law, quadrature (THEORY §8)",
                 "mean_minus_s": float(ds.theory_mean - ds.spectrum),
                 "sd": float(np.sqrt(ds.theory_variance))})
    rows.append({"theory": "first order, THEORY §8 (below s)",
                 "mean_minus_s": float(ds.first_order_mean - ds.spectrum),
                 "sd": float(np.sqrt(ds.first_order_variance))})
    rows.append({"theory": "paper, Prop. 5.2 (above s)",
                 "mean_minus_s": float(ds.paper_mean - ds.spectrum)})
    return rows


def wider_rule() -> str:
    return (f"supported if the width ratio exceeds 1 by more than {Z:g} SE; refuted if it is "
            f"below {WIDER:g} by more than {Z:g} SE (a visibly wider law is excluded)")


def wider_verdict(ratio: float, se: float) -> str:
    if ratio - 1 > Z * se:
        return "supported"
    if ratio + Z * se < WIDER:
        return "refuted"
    return "not testable"


def spread(x, s) -> float:
    """Robust width of a law collapsing to ``s``: the median of ``|a - s|`` (the sd is ruled by
    a few late runs)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.median(np.abs(x[np.isfinite(x)] - s)))


def _bootstrap_ratio_se(x, y, s, draws=400, seed=0) -> float:
    rng = np.random.default_rng(seed)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    ratios = [spread(rng.choice(x, x.size), s) / spread(rng.choice(y, y.size), s)
              for _ in range(draws)]
    return float(np.std(ratios, ddof=1))


def _end_claims(ds):
    s = float(ds.spectrum)
    stats = {(r["noise"], r["method"]): r for r in end_statistics(ds)}
    out = []
    c = stats[("none", "sgd")]
    ok = c["sd"] <= COLLAPSE_TOL * s and abs(c["mean_minus_s"]) <= COLLAPSE_TOL * s
    out.append(_claim("fig4-collapse", "Without label noise the end-of-training law of a mode "
                      "collapses to s (a Dirac mass, as for gradient flow).", "Prop. 5.2 (i), "
                      "Fig. 4a", "fig4", f"SGD, a_1(T) over {c['n']} runs: mean - s = "
                      f"{c['mean_minus_s']:.2e} ± {c['mean_se']:.1e}, sd {c['sd']:.2e}",
                      {"mean_minus_s": c["mean_minus_s"], "sd": c["sd"], "runs": c["n"]},
                      f"sd and |mean - s| below {COLLAPSE_TOL} s", "supported" if ok else "refuted"))

    a_sgd = ds.amplitude.sel({"noise": "none", "method": "sgd"}).isel(time=-1).values
    a_sde = ds.amplitude.sel({"noise": "none", "method": "sde"}).isel(time=-1).values
    w_sde, w_sgd = spread(a_sde, s), spread(a_sgd, s)
    ratio = w_sde / w_sgd
    ratio_se = _bootstrap_ratio_se(a_sde, a_sgd, s)
    label = {m: spread(ds.amplitude.sel({"noise": "label", "method": m}).isel(time=-1).values, s)
             for m in ("sgd", "sde")}
    out.append(_claim("fig4-em-wider", "The Euler-Maruyama SDE's end-of-training law is less "
                      "sharply peaked than SGD's.", "§5.1, Fig. 4b", "fig4",
                      f"no label noise, median |a_1(T) - s|: SDE {w_sde:.2e}, SGD {w_sgd:.2e}; "
                      f"ratio {ratio:.3f} ± {ratio_se:.3f} (bootstrap). With label noise: SDE "
                      f"{label['sde']:.2e}, SGD {label['sgd']:.2e}",
                      {"spread_sde": w_sde, "spread_sgd": w_sgd, "ratio": ratio,
                       "ratio_se": ratio_se, "label_noise_spreads": label},
                      wider_rule(), wider_verdict(ratio, ratio_se)))

    g = stats[("label", "sgd")]
    ok = abs(g["skewness"]) <= GAUSS_SKEW and abs(g["excess_kurtosis"]) <= GAUSS_KURT
    theory_sd = float(np.sqrt(ds.theory_variance))
    out.append(_claim("fig4-gaussian", "With label noise the end-of-training law of a mode is "
                      "approximately Gaussian (a Boltzmann law).", "Prop. 5.2 (ii), Fig. 4",
                      "fig4", f"SGD, sigma = {ds.attrs['label_noise']:g}, a_1(T) over {g['n']} runs: "
                      f"skewness {g['skewness']:.3f} ± {g['skewness_se']:.3f}, excess kurtosis "
                      f"{g['excess_kurtosis']:.3f} ± {g['excess_kurtosis_se']:.3f}; sd "
                      f"{g['sd']:.4f} vs stationary law {theory_sd:.4f}",
                      {k: g[k] for k in ("skewness", "skewness_se", "excess_kurtosis",
                                         "excess_kurtosis_se", "sd")} | {"theory_sd": theory_sd},
                      f"|skewness| <= {GAUSS_SKEW} and |excess kurtosis| <= {GAUSS_KURT}",
                      "supported" if ok else "refuted"))

    parts, values, below_all, above_any = [], {}, True, False
    for m in ("sgd", "sde"):
        r = stats[("label", m)]
        z = r["window_mean_minus_s"] / r["window_mean_se"]
        values[m] = {"mean_minus_s": r["window_mean_minus_s"], "se": r["window_mean_se"], "z": z}
        parts.append(f"{m}: mean - s = {r['window_mean_minus_s']:.5f} ± {r['window_mean_se']:.5f}"
                     f" ({z:+.1f} SE)")
        below_all &= z < -Z
        above_any |= z > Z
    theory = float(ds.theory_mean - ds.spectrum)
    paper = float(ds.paper_mean - ds.spectrum)
    measured = ("time average over t >= " + f"{ds.attrs['window_start']:.3g}" + ", then over runs: "
                + "; ".join(parts) + f". Stationary law (quadrature): {theory:.5f}; the paper's "
                f"first-order mean: {paper:+.5f}")
    values.update(theory_mean_minus_s=theory, paper_mean_minus_s=paper)
    out.append(_claim("fig4-mean-side", "With label noise the stationary mean lies slightly ABOVE "
                      "s (paper); THEORY §8 says slightly below.", "Prop. 5.2 (ii) eq. 17",
                      "fig4", measured, values,
                      f"the paper's claim is refuted if the mean is below s by more than {Z:g} SE "
                      "for SGD and the SDE, supported if above by more than that",
                      "refuted" if below_all else ("supported" if above_any else "not testable")))

    widths = {m: spread(ds.amplitude.sel({"noise": "none", "method": m}).isel(time=-1).values, s)
              for m in _END_METHODS}
    ok = abs(math.log(widths["sde"] / widths["sgd"])) < abs(math.log(widths["isotropic"]
                                                                      / widths["sgd"]))
    out.append(_claim("fig4-anisotropic-vs-isotropic", "State-dependent noise is a more accurate "
                      "model of SGD's end-of-training law than isotropic noise.",
                      "§1.1 contribution 4", "fig4",
                      f"no label noise, median |a_1(T) - s|: SGD {widths['sgd']:.2e}, anisotropic "
                      f"SDE {widths['sde']:.2e}, isotropic SDE {widths['isotropic']:.2e} "
                      "(isotropic noise does not vanish at the minimum)", widths,
                      "the anisotropic SDE's width is closer to SGD's (in ratio) than the "
                      "isotropic one's", "supported" if ok else "refuted"))
    return out


# appK: discretisation study -------------------------------------------------------------------

def _em_experiments(quick):
    factors = _size(quick, [1, 2, 4, 8], [1, 2, 4, 8, 16])
    finest = max(factors)
    lr = 0.01
    return {f"{k}": paper_config(f"em-h{k}", runs=_size(quick, 64, 256), horizon=60.0,
                                 methods=["sde"], points=121, variables=["amplitude", "diffusion"],
                                 sde__step_size=lr / k, sde__path_substeps=finest // k)
            for k in factors}


def _em_analyse(data):
    keys = sorted(data, key=int)
    first = data[keys[0]]
    k = _teacher(first)
    amp = np.stack([_method(data[key], "sde").amplitude.isel(mode=slice(0, k))
                    .transpose("run", "time", "mode").values for key in keys])
    lr = float(first.attrs["learning_rate"])
    h = np.array([lr / int(key) for key in keys])
    out = xr.Dataset({"amplitude": (("step_size", "run", "time", "mode"), amp),
                      "spectrum": ("mode", first.spectrum.values[:k])},
                     coords={"step_size": h, "run": first.run.values, "time": first.time.values,
                             "mode": np.arange(k)})
    out.attrs.update(_params(first), brownian_path="one path per run on the grid h_min = "
                     f"{h.min():g}; coarser steps sum its increments")
    return out


def em_statistics(ds) -> list[dict]:
    """Per step size: width and variance of ``a_1(T)`` over runs (bootstrap SEs) and the strong
    error ``E max_t |a_h(t) - a_{h/2}(t)|_2`` against the next finer step on the same Brownian
    path (successive differences scale like ``h^p`` with the scheme's own order ``p``; a fixed
    finest reference would bend the slope near it)."""
    h = ds.step_size.values
    rng = np.random.default_rng(0)
    rows = []
    for j, hj in enumerate(h):
        final = ds.amplitude.isel(step_size=j, mode=0, time=-1).values
        final = final[np.isfinite(final)]
        var = float(np.var(final, ddof=1))
        boot = [np.var(rng.choice(final, final.size), ddof=1) for _ in range(400)]
        width = spread(final, float(ds.spectrum.values[0]))
        boot_w = [spread(rng.choice(final, final.size), float(ds.spectrum.values[0]))
                  for _ in range(400)]
        finer = np.flatnonzero(np.isclose(h, hj / 2, rtol=1e-9))
        e, e_se = math.nan, math.nan
        if finer.size:
            diff = ds.amplitude.isel(step_size=j) - ds.amplitude.isel(step_size=int(finer[0]))
            e, e_se, _ = mean_and_se(np.sqrt((diff**2).sum("mode")).max("time").values)
        rows.append({"step_size": float(hj), "variance": var, "variance_se": float(np.std(boot)),
                     "median_abs_deviation_from_s": width,
                     "median_abs_deviation_se": float(np.std(boot_w)),
                     "mean_minus_s": float(np.mean(final) - ds.spectrum.values[0]),
                     "strong_error": e, "strong_error_se": e_se, "runs": int(final.size)})
    return rows


def _em_numbers(ds):
    rows = em_statistics(ds)
    errs = [(r["step_size"], r["strong_error"]) for r in rows if np.isfinite(r["strong_error"])]
    if len(errs) >= 2:
        fit = linear_fit(np.log([e[0] for e in errs]), np.log([e[1] for e in errs]))
        rows.append({"fit": "log E max_t |a_h - a_h/2| vs log h", "order": fit["slope"],
                     "order_se": fit["slope_se"]})
    return rows


def _em_claims(ds):
    rows = em_statistics(ds)
    coarse, fine = max(rows, key=lambda r: r["step_size"]), min(rows, key=lambda r: r["step_size"])
    ratio = coarse["median_abs_deviation_from_s"] / fine["median_abs_deviation_from_s"]
    ratio_se = ratio * math.hypot(coarse["median_abs_deviation_se"] / coarse["median_abs_deviation_from_s"],
                                  fine["median_abs_deviation_se"] / fine["median_abs_deviation_from_s"])
    trend = "; ".join(f"h = {r['step_size']:g}: {r['median_abs_deviation_from_s']:.3e} ± "
                      f"{r['median_abs_deviation_se']:.1e} (variance {r['variance']:.2e})"
                      for r in rows)
    return [_claim("appK-variance", "The Euler-Maruyama end-of-training law narrows as the step "
                   "h shrinks (discretisation error explains Fig. 4b's width).", "App. K, Fig. 12",
                   "appK", "median |a_1(T) - s| over runs, same Brownian path per run: " + trend
                   + f"; largest / smallest h: {ratio:.3f} ± {ratio_se:.3f}",
                   {"rows": [{k: r[k] for k in ("step_size", "median_abs_deviation_from_s",
                                                "median_abs_deviation_se", "variance")}
                             for r in rows]},
                   wider_rule().replace("width ratio", "width ratio (largest / smallest h)")
                   + " (runs share their paths across h, so this SE is conservative)",
                   wider_verdict(ratio, ratio_se))]


# registry -----------------------------------------------------------------------------------

def _figure(name):
    def draw(ds):
        from . import figures
        return getattr(figures, name)(ds)
    return draw


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("fig1", "Exact modewise diffusion during SGD against the aligned-balanced formula",
           "Fig. 1, Prop. 3.5, eq. 9", _fig1_experiments, _fig1_analyse, _fig1_numbers,
           _fig1_claims, _figure("fig1")),
    Recipe("fig2", "Mode amplitudes over time: SGD, anisotropic SDE, gradient flow",
           "Fig. 2", _main_experiments, _fig2_analyse, _fig2_numbers, _fig2_claims,
           _figure("fig2")),
    Recipe("fig3", "Modewise diffusion peaks before each mode is learned", "Fig. 3, §4",
           _main_experiments, _fig3_analyse, _fig3_numbers, _fig3_claims, _figure("fig3")),
    Recipe("fig4", "End-of-training law of the largest mode, without and with label noise",
           "Fig. 4, Prop. 5.2", _end_experiments, _end_analyse, _end_numbers, _end_claims,
           _figure("fig4")),
    Recipe("fig6", "Cross modes over training (alignment)", "Fig. 6, App. I.1",
           _main_experiments, _fig6_analyse, _fig6_numbers, _fig6_claims, _figure("fig6")),
    Recipe("fig7", "Balance from balanced and unbalanced inits: normalised residual",
           "Fig. 7, App. I.2", _balance_experiments, _balance_analyse, _fig7_numbers,
           _fig7_claims, _figure("fig7")),
    Recipe("fig8", "Balance: unnormalised residual and layer norms", "Fig. 8, App. I.2",
           _balance_experiments, _balance_analyse, _fig8_numbers, _fig8_claims, _figure("fig8")),
    Recipe("fig9", "Maximal modewise diffusion against the learning rate", "Fig. 9, App. J.1",
           _lr_experiments, lambda d: _scaling_analyse(d, "learning_rate"), _scaling_numbers,
           lambda ds: _scaling_claims(ds, "fig9", "the learning rate", "App. J.1, Fig. 9"),
           _figure("scaling")),
    Recipe("fig10", "Maximal modewise diffusion against 1 / batch size", "Fig. 10, App. J.2",
           _batch_experiments, lambda d: _scaling_analyse(d, "batch_size"), _scaling_numbers,
           lambda ds: _scaling_claims(ds, "fig10", "1 / batch size", "App. J.2, Fig. 10"),
           _figure("scaling")),
    Recipe("appJ3", "Finite data set: offline SGD", "App. J.3", _finite_experiments,
           _finite_analyse, _finite_numbers, _finite_claims, _figure("finite")),
    Recipe("fig11", "Hidden width 24", "Fig. 11, App. J.4", _width_experiments, _width_analyse,
           _width_numbers, _width_claims, _figure("fig11")),
    Recipe("appK", "Discretisation study of the Euler-Maruyama SDE", "App. K, Fig. 12",
           _em_experiments, _em_analyse, _em_numbers, _em_claims, _figure("appK")),
]}

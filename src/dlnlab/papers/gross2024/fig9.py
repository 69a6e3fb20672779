"""fig9: the inverse variance-flatness relation of a two-layer net (paper Sec. III C 3, eq. 3.37,
Fig. 9) and its relaxation rates (Sec. III D, eq. 3.38).

Along the eigenvectors ``a_i`` of each layer's SGD covariance block, the variance ``sigma_i^2`` and
the loss curvature ``kappa_i = a_i^T H_ll a_i`` (``dL(s a_i) = ½ kappa_i s^2`` at a minimum,
``layer_variance_curvature``) are fitted as ``log sigma^2 = c + (psi/2) log kappa``
(``fit_flatness_exponent``: variance ``~ F^-psi`` with flatness ``F = kappa^-½``).

- Second layer: eqs. 3.34/3.37 give ``sigma_i^2 = (eta sigma_y^2/2S) D_1i/(D_1i + D_2)`` and
  ``kappa_i = sigma_x^2 D_1i``, hence ``psi = 2`` where ``D_1 << D_2`` (eq. 3.36). Two settings: the
  paper's (``large``: ``N_i = 30``, ``N_h = 20``, init ``1/fan-in``, where ``D_1 ~ D_2`` and the
  exact eq. 3.34 itself predicts ``psi < 2``) and ``ivfr`` (init chosen so ``D_1 << D_2``).
- First layer: the curvature along its covariance eigenvectors is ``sigma_x^2 D_2`` for all
  ``i <= N_i`` in the linear theory (flat: slope ``d log kappa / d log sigma^2 = 0``); beyond
  ``N_i`` the theory's variance vanishes while SGD's drops to a small, non-zero level (the slow
  drift along the minima, measured about each run's block mean).
- Rates: the decay of the autocorrelation of each non-zero mode of ``H`` in the SGD records
  (``two_layer.autocorrelation_rates``), against eq. 3.38 (``two_layer_relaxation_rates``; exact for whitened
  inputs, the online ``ivfr`` setting) and the eigenvalues of the drift ``H`` itself.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from ...theory.fluctuations import fit_flatness_exponent
from . import two_layer
from .config import CONFIDENCE, FLAT_TOL, PSI_TOL, Z

CASES = ("large", "ivfr")
SETTING_LABELS = {"large": "paper's setting (N_i=30, N_h=20, init 1/fan-in)",
                  "ivfr": "D_1 << D_2 (N_i=60, N_h=12, init fan-in^-4)"}
SOURCES = ("sgd", "theory", "eq337")
EXTRA = 10


def experiments(quick: bool) -> dict:
    full = two_layer.experiments(quick)
    return {key: full[key] for key in CASES}


def _pad(values, length):
    out = np.full(length, np.nan)
    values = np.asarray(values, dtype=np.float64)[:length]
    out[:values.size] = values
    return out


def _fit(variance, curvature):
    fit = fit_flatness_exponent(variance, curvature, confidence_level=CONFIDENCE)
    return fit


def analyse(data):
    """Per setting: layer-2 variance and curvature along the covariance eigenvectors
    (``layer2_variance`` / ``layer2_curvature`` ``(setting, source, direction2)``, source = SGD,
    linear theory, eqs. 3.34/3.37), the layer-1 ones (``layer1_*`` ``(setting, source1,
    direction1)``: SGD on range(H), theory, SGD with the zero modes), the fitted ``psi`` and
    layer-1 slopes with bootstrap intervals, and the relaxation rates ``(setting, rate_mode)``.
    Variances / (eta sigma_y^2 / 2S), curvatures / sigma_x^2, rates in 1/time."""
    results = {key: two_layer.analyse_experiment(data[key], two_layer.STARTS[key],
                                                 two_layer.num_blocks(data[key], key))
               for key in CASES}
    n2 = max(r.widths[1] for r in results.values())
    n1 = max(r.widths[0] for r in results.values()) + EXTRA
    nr = max(r.rates_drift.size for r in results.values())
    var2 = np.full((len(CASES), len(SOURCES), n2), np.nan)
    cur2 = np.full_like(var2, np.nan)
    var1 = np.full((len(CASES), 3, n1), np.nan)
    cur1 = np.full_like(var1, np.nan)
    psi = np.full((len(CASES), len(SOURCES), 3), np.nan)
    slope = np.full((len(CASES), 2, 3), np.nan)
    rates = np.full((len(CASES), 4, nr), np.nan)
    scalars = {k: [] for k in ("runs", "inputs", "hidden", "d2_first", "d2_last", "drop_variance",
                                "drop_curvature", "d1_over_d2_max", "psi_sgd_se",
                                "psi_directions")}
    for i, key in enumerate(CASES):
        r = results[key]
        n_in, n_h = r.widths[0], r.widths[1]
        pairs = [r.layer[2]["sgd"], r.layer[2]["theory"], r.second_layer_eq337]
        for j, (v, c) in enumerate(pairs):
            var2[i, j] = _pad(v / r.scale, n2)
            cur2[i, j] = _pad(c / r.input_variance, n2)
            fit = _fit(v, c)
            psi[i, j] = (fit.exponent, *fit.exponent_interval)
            if j == 0:
                scalars["psi_sgd_se"].append(fit.exponent_standard_error)
                scalars["psi_directions"].append(fit.num_directions)
        for j, name in enumerate(("sgd", "theory", "kernel")):
            v, c = r.layer[1][name]
            var1[i, j] = _pad(v[:n_in + EXTRA] / r.scale, n1)
            cur1[i, j] = _pad(c[:n_in + EXTRA] / r.input_variance, n1)
            if j < 2:
                fit = _fit(v[:n_in], c[:n_in])
                slope[i, j] = (fit.curvature_slope, *fit.curvature_slope_interval)
        v, c = r.layer[1]["kernel"]
        scalars["drop_variance"].append(float(np.median(v[n_in:n_in + EXTRA]) / np.median(v[:n_in])))
        scalars["drop_curvature"].append(float(np.median(c[n_in:n_in + EXTRA]) / np.median(c[:n_in])))
        for j, arr in enumerate((r.rates_measured, r.rates_se, r.rates_drift, r.rates_eq338)):
            rates[i, j] = _pad(arr, nr)
        d1 = r.second_layer_eq337[1] / r.input_variance
        scalars["d1_over_d2_max"].append(float(d1.max() / r.d2_blocks.mean()))
        scalars["runs"].append(r.runs)
        scalars["inputs"].append(n_in)
        scalars["hidden"].append(n_h)
        scalars["d2_first"].append(float(r.d2_blocks[0]))
        scalars["d2_last"].append(float(r.d2_blocks[-1]))
    ds = xr.Dataset(
        {"layer2_variance": (("setting", "source", "direction2"), var2),
         "layer2_curvature": (("setting", "source", "direction2"), cur2),
         "layer1_variance": (("setting", "source1", "direction1"), var1),
         "layer1_curvature": (("setting", "source1", "direction1"), cur1),
         "psi": (("setting", "source", "bound"), psi),
         "layer1_slope": (("setting", "source1_fit", "bound"), slope),
         "rates": (("setting", "rate_kind", "rate_mode"), rates),
         **{k: (("setting",), v) for k, v in scalars.items()}},
        coords={"setting": list(CASES), "source": list(SOURCES),
                "source1": ["sgd", "theory", "kernel"], "source1_fit": ["sgd", "theory"],
                "bound": ["estimate", "low", "high"], "direction2": np.arange(1, n2 + 1),
                "direction1": np.arange(1, n1 + 1), "rate_mode": np.arange(1, nr + 1),
                "rate_kind": ["measured", "standard_error", "drift", "eq338"]})
    ds["layer2_variance"].attrs.update(long_name="variance along the layer-2 covariance eigenvectors "
                                       "/ (eta sigma_y^2 / 2S)")
    ds["layer2_curvature"].attrs.update(long_name="loss curvature along them / sigma_x^2")
    ds["psi"].attrs.update(long_name="fitted psi: variance ~ flatness^-psi, with the "
                           f"{CONFIDENCE:.0%} bootstrap interval over directions")
    ds["layer1_slope"].attrs.update(long_name="d log curvature / d log variance, directions 1..N_i")
    ds["rates"].attrs.update(long_name="relaxation rates of the non-zero modes", units="1/time")
    ds["drop_variance"].attrs.update(long_name="median SGD layer-1 variance of directions "
                                     "N_i+1..N_i+10 over that of 1..N_i (zero modes included)")
    ds.attrs.update(psi_tolerance=PSI_TOL, flat_tolerance=FLAT_TOL,
                    rate_tolerance=two_layer.RATE_TOL, confidence=CONFIDENCE)
    return ds


def numbers(ds):
    rows = []
    for s in ds.setting.values:
        d = ds.sel(setting=s)
        row = {"setting": str(s), "runs": int(d.runs), "inputs": int(d.inputs),
               "hidden": int(d.hidden), "d1_over_d2_max": float(d.d1_over_d2_max),
               "d2_first_block": float(d.d2_first), "d2_last_block": float(d.d2_last)}
        for src in ds.source.values:
            p = d.psi.sel(source=src).values
            row[f"psi_{src}"], row[f"psi_{src}_low"], row[f"psi_{src}_high"] = map(float, p)
        row["psi_sgd_standard_error"] = float(d.psi_sgd_se)
        row["psi_directions"] = int(d.psi_directions)
        for src in ds.source1_fit.values:
            p = d.layer1_slope.sel(source1_fit=src).values
            row[f"slope1_{src}"], row[f"slope1_{src}_low"], row[f"slope1_{src}_high"] = map(float, p)
        row["drop_variance"] = float(d.drop_variance)
        row["drop_curvature"] = float(d.drop_curvature)
        m, se, drift, eq = (d.rates.sel(rate_kind=k).values for k in
                            ("measured", "standard_error", "drift", "eq338"))
        ok = np.isfinite(m)
        row["rate_modes"] = int(ok.sum())
        row["rates_median_error_eq338"] = float(np.median(np.abs(m[ok] / eq[ok] - 1)))
        row["rates_median_error_drift"] = float(np.median(np.abs(m[ok] / drift[ok] - 1)))
        row["rates_eq338_vs_drift"] = float(np.median(np.abs(eq[ok] / drift[ok] - 1)))
        row["rates_median_relative_se"] = float(np.median(se[ok] / m[ok]))
        # the reference: eq. 3.38 where it is exact (whitened inputs: online), else the drift's
        # own eigenvalues (its finite-P form)
        ref = eq if str(s) == "ivfr" else drift
        row["rates_reference"] = "eq. 3.38" if str(s) == "ivfr" else "eigenvalues of H"
        weight = (ref[ok] / se[ok]) ** 2                # ratio m / ref of each mode has SE se / ref
        ratio = float(np.sum(weight * m[ok] / ref[ok]) / np.sum(weight))
        row["rates_ratio"] = ratio
        row["rates_ratio_se"] = float(1.0 / np.sqrt(np.sum(weight)))
        row["rates_chi2_per_mode"] = float(np.mean(((m[ok] - ratio * ref[ok]) / se[ok]) ** 2))
        weight_eq = (eq[ok] / se[ok]) ** 2
        row["rates_chi2_per_mode_eq338"] = float(np.mean(
            ((m[ok] - np.sum(weight_eq * m[ok] / eq[ok]) / np.sum(weight_eq) * eq[ok]) / se[ok]) ** 2))
        row["rates_min"], row["rates_max"] = float(np.nanmin(drift)), float(np.nanmax(drift))
        rows.append(row)
    return rows


def _band_verdict(low, high, centre, tol):
    """Equivalence rule: the interval inside ``centre +- tol``: supported; disjoint from it:
    refuted; else not testable (not precise enough)."""
    if centre - tol <= low and high <= centre + tol:
        return "supported"
    if high < centre - tol or low > centre + tol:
        return "refuted"
    return "not testable"


def claims(ds):
    rows = {r["setting"]: r for r in numbers(ds)}
    out = []
    conf = f"{CONFIDENCE:.0%}"
    for s, r in rows.items():
        out.append(claim_row(
            f"fig9-psi-{s}", "The second-layer variance and flatness obey the inverse "
            "variance-flatness relation with psi = 2 (eq. 3.37).", "Sec. III C 3, eq. 3.37, Fig. 9a",
            "fig9", f"{SETTING_LABELS[s]}: SGD psi = {r['psi_sgd']:.3f} ({conf} CI "
            f"{r['psi_sgd_low']:.3f}-{r['psi_sgd_high']:.3f}, {r['psi_directions']} of {r['hidden']} "
            "directions (the others have zero variance and curvature), "
            f"{r['runs']} runs); linear theory at the same weights {r['psi_theory']:.3f}, eqs. "
            f"3.34/3.37 {r['psi_eq337']:.3f}; max D_1/D_2 = {r['d1_over_d2_max']:.3g}",
            r, f"supported if the {conf} bootstrap interval of the SGD psi lies within 2 +- "
            f"{PSI_TOL:g}; refuted if it lies outside; else not testable",
            _band_verdict(r["psi_sgd_low"], r["psi_sgd_high"], 2.0, PSI_TOL)))
    r = rows["large"]
    diff = abs(r["psi_sgd"] - r["psi_theory"])
    out.append(claim_row(
        "fig9-psi-theory", "The SGD exponent psi is the linearised theory's (eq. 3.29 at the "
        "solution), also where D_1 ~ D_2 and it differs from 2.", "Sec. III C 2-3, eqs. 3.30, 3.34",
        "fig9", f"{SETTING_LABELS['large']}: SGD psi {r['psi_sgd']:.3f} +- "
        f"{r['psi_sgd_standard_error']:.3f} against the theory's {r['psi_theory']:.3f} "
        f"(difference {diff:.3f}, {r['runs']} runs)", r,
        f"supported if |psi_SGD - psi_theory| <= {Z:g} standard errors of the SGD fit; else refuted",
        "supported" if diff <= Z * r["psi_sgd_standard_error"] else "refuted"))
    out.append(claim_row(
        "fig9-flat", "Along the first-layer covariance eigenvectors (i <= N_i) the curvature is "
        "flat: no inverse variance-flatness relation for W_1.", "Sec. III C 3, Fig. 9b", "fig9",
        f"{SETTING_LABELS['large']}: slope d log curvature / d log variance = {r['slope1_sgd']:.3f} "
        f"({conf} CI {r['slope1_sgd_low']:.3f}-{r['slope1_sgd_high']:.3f}, {r['inputs']} "
        f"directions, {r['runs']} runs); linear theory {r['slope1_theory']:.3f}", r,
        f"supported if the {conf} interval lies within 0 +- {FLAT_TOL:g}; refuted if outside; "
        "else not testable", _band_verdict(r["slope1_sgd_low"], r["slope1_sgd_high"], 0.0, FLAT_TOL)))
    out.append(claim_row(
        "fig9-drop", "SGD's first-layer variance drops at i = N_i to a small non-zero level "
        "(zero in the linear theory), with the curvature dropping with it.",
        "Sec. III C 2, Fig. 9b inset", "fig9",
        f"{SETTING_LABELS['large']}: median variance of directions N_i+1..N_i+{EXTRA} / that of "
        f"1..N_i = {r['drop_variance']:.3g}; curvature ratio {r['drop_curvature']:.3g} "
        f"({r['runs']} runs)", r, "supported if both ratios are in (0, 0.1); else refuted",
        "supported" if 0 < r["drop_variance"] < 0.1 and 0 <= r["drop_curvature"] < 0.1
        else "refuted"))
    for s, r in rows.items():
        ratio, se, chi2, n = (r["rates_ratio"], r["rates_ratio_se"], r["rates_chi2_per_mode"],
                              r["rate_modes"])
        reference = r["rates_reference"]
        chi2_max = 1.0 + Z * np.sqrt(2.0 / n)
        inside = 1 - two_layer.RATE_TOL <= ratio - Z * se and ratio + Z * se <= 1 + two_layer.RATE_TOL
        outside = abs(ratio - 1) - Z * se > two_layer.RATE_TOL or chi2 > chi2_max
        out.append(claim_row(
            f"fig9-rates-{s}", "The fluctuations relax with the rates of eq. 3.38 (omega_k = "
            "sigma_x^2 (D_1k + D_2) and sigma_x^2 D_2: the non-zero eigenvalues of the drift; "
            "with a finite data set, the drift's own eigenvalues).", "Sec. III D, eq. 3.38", "fig9",
            f"{SETTING_LABELS[s]}: {n} modes, rates {r['rates_min']:.3g}-{r['rates_max']:.3g}/time; "
            f"measured / {reference} = {ratio:.4f} +- {se:.4f} (weighted over modes), chi^2 per mode "
            f"about it {chi2:.2f} ({r['runs']} runs); against eq. 3.38 itself: median "
            f"|measured/eq. 3.38 - 1| = {r['rates_median_error_eq338']:.3f} (median relative SE "
            f"{r['rates_median_relative_se']:.3f}), chi^2 per mode {r['rates_chi2_per_mode_eq338']:.2f}; "
            f"eq. 3.38 vs the drift's eigenvalues: {r['rates_eq338_vs_drift']:.3f}", r,
            f"against {reference}: supported if the ratio +- {Z:g} SE lies within 1 +- "
            f"{two_layer.RATE_TOL:g} and chi^2 per mode <= 1 + {Z:g} sqrt(2/n) = {chi2_max:.2f}; "
            f"refuted if the ratio is off by more than {two_layer.RATE_TOL:g} beyond {Z:g} SE or "
            "chi^2 exceeds that; else not testable",
            "refuted" if outside else "supported" if inside else "not testable"))
    return out


def figure(ds):
    fig, axes = new_figure(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    markers = {"large": "o", "ivfr": "s"}
    for i, s in enumerate(ds.setting.values):
        d = ds.sel(setting=s)
        colour = COLORS[i]
        p = d.psi.sel(source="sgd", bound="estimate")
        for src, style, label in (("sgd", markers[str(s)], f"SGD, {SETTING_LABELS[str(s)]}: ψ = "
                                   f"{float(p):.2f}"),
                                  ("eq337", "-", "eqs. 3.34/3.37: ψ = "
                                   f"{float(d.psi.sel(source='eq337', bound='estimate')):.2f}")):
            kappa = d.layer2_curvature.sel(source=src).values
            var = d.layer2_variance.sel(source=src).values
            keep = (kappa > 1e-8 * np.nanmax(kappa)) & (var > 1e-8 * np.nanmax(var))
            order = np.argsort(kappa[keep])
            ax.plot(kappa[keep][order], var[keep][order], style, color=colour, ms=5, lw=1,
                    label=label)
    d = ds.sel(setting="ivfr")
    kappa, var = (d[f"layer2_{q}"].sel(source="sgd").values for q in ("curvature", "variance"))
    keep = np.isfinite(kappa) & (kappa > 1e-8 * np.nanmax(kappa)) & (var > 1e-8 * np.nanmax(var))
    if keep.sum() >= 2:                      # a slope-1 guide (psi = 2) through the ivfr points
        k0, v0 = np.exp(np.mean(np.log(kappa[keep]))), np.exp(np.mean(np.log(var[keep])))
        grid = np.array([kappa[keep].min() / 3, kappa[keep].max() * 3])
        ax.plot(grid, v0 * grid / k0, ":", color="0.4", lw=1, label="slope 1 (ψ = 2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("curvature κ$_i$ / σ$_x^2$ along layer-2 eigenvector $a_i$")
    ax.set_ylabel("variance / (η σ$_y^2$ / 2S)")
    ax.set_title("(a) second layer: variance vs curvature (ψ = 2: slope 1)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    d = ds.sel(setting="large")
    n_in = int(d.inputs)
    x = d.direction1.values
    ax.plot(x, d.layer1_variance.sel(source1="theory"), "-", color=COLORS[0],
            label="variance, linear theory")
    ax.plot(x, d.layer1_variance.sel(source1="sgd"), "o", ms=4, color=COLORS[0],
            label="variance, SGD on range(H)")
    ax.plot(x, d.layer1_variance.sel(source1="kernel"), "x", ms=4, color=COLORS[0],
            label="variance, SGD with zero modes")
    ax.set_yscale("log")
    ax.set_xlabel("first-layer direction index i")
    ax.set_ylabel("variance / (η σ$_y^2$ / 2S)", color=COLORS[0])
    ax.axvline(n_in + 0.5, color="0.5", ls=":")
    twin = ax.twinx()
    twin.plot(x, d.layer1_curvature.sel(source1="sgd"), "o", ms=3, mfc="none", color=COLORS[1],
              label="curvature, SGD directions")
    twin.plot(x, d.layer1_curvature.sel(source1="kernel"), "x", ms=3, color=COLORS[1],
              label="curvature, with zero modes")
    twin.set_ylabel("curvature κ$_i$ / σ$_x^2$", color=COLORS[1])
    slope = float(d.layer1_slope.sel(source1_fit="sgd", bound="estimate"))
    ax.set_title(f"(b) first layer ({SETTING_LABELS['large'].split(' (')[0]}): flat, slope "
                 f"{slope:.3f}; drop at i = N_i", fontsize=10)
    handles = ax.get_legend_handles_labels()
    handles2 = twin.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="lower left")
    ax = axes[2]
    for i, s in enumerate(ds.setting.values):
        d = ds.sel(setting=s)
        colour = COLORS[i]
        m = d.rates.sel(rate_kind="measured").values
        se = d.rates.sel(rate_kind="standard_error").values
        k = d.rate_mode.values
        ax.errorbar(k, m, yerr=se, fmt=markers[str(s)], ms=3, color=colour,
                    label=f"SGD autocorrelation, {str(s)}")
        ax.plot(k, d.rates.sel(rate_kind="eq338"), "-", color=colour, lw=1, label=f"eq. 3.38, {s}")
        ax.plot(k, d.rates.sel(rate_kind="drift"), "--", color=colour, lw=1,
                label=f"eigenvalues of H, {s}")
    ax.set_yscale("log")
    ax.set_xlabel("mode k (ascending rate)")
    ax.set_ylabel("relaxation rate (1 / time)")
    ax.set_title("(c) relaxation rates (eq. 3.38)", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle("Fig. 9 — two-layer net: inverse variance-flatness relation and relaxation rates")
    fig.tight_layout()
    return fig


STUDY = Study("fig9", "Two-layer inverse variance-flatness relation and relaxation rates",
              "Fig. 9, Sec. III C 3 and III D, eqs. 3.37, 3.38", experiments, analyse, numbers,
              claims, figure)

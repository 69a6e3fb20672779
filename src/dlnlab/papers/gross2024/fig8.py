"""fig8: the stationary weight covariance of a two-layer net under SGD against the linearised
theory (paper Sec. III C 1-2, eqs. 3.29-3.34, Fig. 8), from a small and a large init.

The theory is ``linearised_fluctuations`` (docs/theory.md §12): drift ``H`` = Hessian of the
training loss and diffusion ``C`` = exact minibatch-noise covariance at the solution SGD
fluctuates around, ``H M + M H = eta C`` on the range of ``H`` (the paper's eq. 3.29 with its
eqs. 3.27-3.28 as the whitened, ``P -> infinity`` limit). The solution is found from the runs
themselves, block by block (``two_layer`` module docstring): each block mean moved to the
manifold of minima with ``project_to_minimum``. Along the ``N_h (N_i + N_o) - N_i N_o`` zero
modes the theory has no restoring force and no noise (variance zero); SGD instead drifts slowly
along the manifold (its norms shrink), which the analysis measures separately (``kernel``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...analysis.claims import claim_row
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from . import two_layer
from .config import BATCH_SIZE, LEARNING_RATE

CASES = ("small", "large")
INIT_LABELS = {"small": "small init (variance ~1e-4 / fan-in)", "large": "large init (1 / fan-in)"}
EXTRA = 10          # layer-1 eigenvalues shown beyond N_i (where the theory's vanish)


def _pad(values, length):
    """The first ``length`` entries of ``values``, NaN-padded (a tiny net has fewer)."""
    out = np.full(length, np.nan)
    values = np.asarray(values, dtype=np.float64)[:length]
    out[:values.size] = values
    return out


def experiments(quick: bool) -> dict:
    full = two_layer.experiments(quick)
    return {key: full[key] for key in CASES}


def analyse(data):
    """Per init: the layer spectra (``layer1_*`` ``(init, index1)``, ``layer2_*`` ``(init,
    index2)``; ``sgd`` = SGD on the range of H, ``theory`` = eq. 3.29, ``kernel`` = SGD about each
    run's block mean, zero modes included), all divided by ``scale = eta sigma_y^2 / 2S``; the
    covariance in the paper's coordinates ``z = (z_1, z_2)`` (``reduced_*``), the covariance
    errors on the range of H and the drift of ``D_2 = |W_2|^2``."""
    results = {key: two_layer.analyse_experiment(data[key], two_layer.STARTS[key],
                                                 two_layer.num_blocks(data[key], key))
               for key in CASES}
    n_in, n_h = results[CASES[0]].widths[:2]
    k1 = n_in + EXTRA
    out = {}
    for name in ("sgd", "theory", "kernel"):
        out[f"layer1_{name}"] = (("init", "index1"), np.stack(
            [_pad(results[c].layer[1][name][0] / results[c].scale, k1) for c in CASES]))
        out[f"layer2_{name}"] = (("init", "index2"), np.stack(
            [results[c].layer[2][name][0] / results[c].scale for c in CASES]))
    out["reduced_sgd"] = (("init", "z_row", "z_column"),
                          np.stack([results[c].reduced_sgd / results[c].scale for c in CASES]))
    out["reduced_theory"] = (("init", "z_row", "z_column"),
                             np.stack([results[c].reduced_theory / results[c].scale for c in CASES]))
    for kind, attr in (("continuous", "covariance_error"), ("discrete", "discrete_error"),
                       ("modes", "mode_error")):
        for part in ("raw", "monte_carlo", "systematic", "systematic_upper"):
            out[f"{kind}_{part}"] = (("init",), [getattr(results[c], attr)[part] for c in CASES])
    out["runs"] = (("init",), [results[c].runs for c in CASES])
    out["kernel_fraction"] = (("init",), [results[c].kernel_fraction for c in CASES])
    out["d2_first_block"] = (("init",), [results[c].d2_blocks[0] for c in CASES])
    out["d2_last_block"] = (("init",), [results[c].d2_blocks[-1] for c in CASES])
    out["solution_spread"] = (("init",), [results[c].solution_spread for c in CASES])
    out["scale"] = (("init",), [results[c].scale for c in CASES])
    ds = xr.Dataset(out, coords={"init": list(CASES), "index1": np.arange(1, k1 + 1),
                                 "index2": np.arange(1, n_h + 1),
                                 "z_row": np.arange(n_in + n_h), "z_column": np.arange(n_in + n_h)})
    for name in ("layer1", "layer2"):
        ds[f"{name}_sgd"].attrs.update(long_name=f"eigenvalues of Cov(vec dW_{name[-1]}) from SGD, "
                                       "projected on range(H), / (eta sigma_y^2 / 2S)")
        ds[f"{name}_theory"].attrs.update(long_name="the same from the linearised theory (eq. 3.29)")
        ds[f"{name}_kernel"].attrs.update(long_name="SGD about each run's block mean (zero modes "
                                          "included) / (eta sigma_y^2 / 2S)")
    ds["scale"].attrs.update(long_name="eta sigma_y^2 / (2 S)", units="theta^2")
    ds["kernel_fraction"].attrs.update(long_name="share of the SGD variance (about the block "
                                       "centres) outside range(H)")
    ds.attrs.update(learning_rate=LEARNING_RATE, batch_size=BATCH_SIZE,
                    label_variance=two_layer.LABEL_VARIANCE, inputs=int(n_in), hidden=int(n_h), outputs=1,
                    blocks_small=results["small"].blocks, blocks_large=results["large"].blocks,
                    samples_small=two_layer.SMALL_SAMPLES,
                    samples_large=two_layer.LARGE_SAMPLES,
                    stationary_start_small=two_layer.STARTS["small"],
                    stationary_start_large=two_layer.STARTS["large"])
    return ds


def numbers(ds):
    rows = []
    for init in ds.init.values:
        d = ds.sel(init=init)
        rows.append({"init": str(init), "runs": int(d.runs),
                     "relative_error_raw": float(d.continuous_raw),  # whole range covariance
                     "relative_error_monte_carlo": float(d.continuous_monte_carlo),
                     "relative_error_systematic": float(d.continuous_systematic),
                     "relative_error_systematic_upper": float(d.continuous_systematic_upper),
                     "discrete_systematic_upper": float(d.discrete_systematic_upper),
                     "mode_error_raw": float(d.modes_raw),
                     "mode_error_monte_carlo": float(d.modes_monte_carlo),
                     "mode_error_systematic": float(d.modes_systematic),
                     "mode_error_systematic_upper": float(d.modes_systematic_upper),
                     "kernel_fraction": float(d.kernel_fraction),
                     "d2_first_block": float(d.d2_first_block), "d2_last_block": float(d.d2_last_block),
                     "solution_spread": float(d.solution_spread),
                     "layer1_sum_sgd": float(d.layer1_sgd.sum()),
                     "layer1_sum_theory": float(d.layer1_theory.sum()),
                     "layer2_sum_sgd": float(d.layer2_sgd.sum()),
                     "layer2_sum_theory": float(d.layer2_theory.sum())})
    return rows


def _lower_bound(systematic: float, upper: float) -> float:
    """One-sided 95% lower bound of the systematic relative error, from the two numbers
    ``common.covariance_error`` gives: with ``D`` the squared bias estimate and ``SE`` its standard
    error (both relative to ``|M|^2``), ``upper^2 = D + 1.645 SE`` and ``systematic^2 = max(D, 0)``,
    so ``D - 1.645 SE = 2 systematic^2 - upper^2`` when ``D > 0`` (else the bound is 0)."""
    if systematic <= 0:
        return 0.0
    return float(np.sqrt(max(2.0 * systematic ** 2 - upper ** 2, 0.0)))


def claims(ds):
    tol = two_layer.TWO_LAYER_COVARIANCE_TOL
    rows = []
    for r in numbers(ds):
        drift = (f"{100 * r['kernel_fraction']:.1f}% of the SGD variance lies along the zero modes "
                 f"(slow drift along the minima, |W_2|^2 {r['d2_first_block']:.3g} -> "
                 f"{r['d2_last_block']:.3g} over the window)")
        for what, prefix, claim in (
                ("modes", "mode_error", "The variances of the non-zero modes of the Hessian under "
                 "SGD (the eigenvalues of M on range(H)) equal the linearised theory's (eqs. "
                 "3.29-3.32)"),
                ("covariance", "relative_error", "The whole stationary SGD covariance on the range "
                 "of the Hessian (cross-covariances included) equals the linearised theory's "
                 "(eq. 3.29)")):
            upper, syst = r[f"{prefix}_systematic_upper"], r[f"{prefix}_systematic"]
            lower = _lower_bound(syst, upper)
            verdict = "supported" if upper <= tol else "refuted" if lower > tol else "not testable"
            rows.append(claim_row(
                f"fig8-{what}-{r['init']}", f"{claim} at the solution SGD fluctuates around "
                f"({r['init']} init).", "Sec. III C 1-2, Fig. 8", "fig8",
                f"relative Frobenius error {r[f'{prefix}_raw']:.3f} (Monte Carlo part "
                f"{r[f'{prefix}_monte_carlo']:.3f}), systematic {syst:.3f} (one-sided 95% bounds "
                f"{lower:.3f}-{upper:.3f}) over {r['runs']} runs; {drift}",
                r, f"supported if the systematic error's one-sided 95% upper bound <= {tol:g}; "
                f"refuted if its one-sided 95% lower bound > {tol:g}; else not testable", verdict))
    return rows


def figure(ds):
    fig, axes = new_figure(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    m = ds.reduced_sgd.sel(init="large").values
    n_in = int(ds.attrs["inputs"])
    lim = float(np.max(np.abs(m)))
    image = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.axhline(n_in - 0.5, color="k", lw=0.6)
    ax.axvline(n_in - 0.5, color="k", lw=0.6)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="Cov(z) / (η σ$_y^2$ / 2S)")
    ax.set_title("(a) SGD covariance in z = ($z_1$, $z_2$), large init")
    ax.set_xlabel(f"z index (0-{n_in - 1}: $z_1 = v^T dW_1$; then $z_2 = dW_2 a_i$)")
    ax.set_ylabel("z index")
    for ax, init, tag in ((axes[1], "small", "(b)"), (axes[2], "large", "(c)")):
        d = ds.sel(init=init)
        for name, colour, index in (("layer1", COLORS[0], "index1"), ("layer2", COLORS[1], "index2")):
            x = d[index].values
            layer = name[-1]
            ax.plot(x, d[f"{name}_theory"].values, "-", color=colour,
                    label=f"$W_{layer}$ theory (eq. 3.29)")
            ax.plot(x, d[f"{name}_sgd"].values, "o", ms=4, color=colour,
                    label=f"$W_{layer}$ SGD on range(H)")
            ax.plot(x, d[f"{name}_kernel"].values, "x", ms=4, color=colour, alpha=0.7,
                    label=f"$W_{layer}$ SGD, zero modes included")
        ax.axvline(n_in + 0.5, color="0.5", ls=":", lw=1)
        ax.set_yscale("log")
        shown = np.concatenate([d.layer1_theory.values[:n_in], d.layer2_theory.values,
                                d.layer1_kernel.values])
        shown = shown[np.isfinite(shown) & (shown > 0)]
        ax.set_ylim(bottom=max(1e-4, 0.3 * float(np.min(shown))))
        ax.set_xlabel("mode index i (eigenvalues in descending order)")
        ax.set_ylabel("eigenvalue / (η σ$_y^2$ / 2S)")
        ax.set_title(f"{tag} {INIT_LABELS[init]}\nmode variances: error {float(d.modes_raw):.3f} "
                     f"(Monte Carlo {float(d.modes_monte_carlo):.3f}), {int(d.runs)} runs", fontsize=10)
        ax.legend(fontsize=7, loc="center right" if init == "small" else "lower left")
    fig.suptitle(f"Fig. 8 — two-layer net (N_i={n_in}, N_h={int(ds.attrs['hidden'])}, N_o=1): "
                 "stationary weight covariance, SGD vs linearised theory")
    fig.tight_layout()
    return fig


STUDY = Study("fig8", "Two-layer stationary weight covariance: SGD vs the linearised theory",
              "Fig. 8, Sec. III C 1-2, eqs. 3.29-3.34", experiments, analyse, numbers, claims, figure)

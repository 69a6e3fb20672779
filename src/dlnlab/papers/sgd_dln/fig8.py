"""fig8: balance under SGD, the unnormalised imbalance and the layer norms (App. I.2; the
experiments are shared with fig7)."""

from __future__ import annotations

from ...analysis.claims import claim_row
from ...analysis.stats import finite_median
from ...experiments.study import Study
from ...plot.panels import balance_panels, new_figure
from . import balance

experiments = balance.experiments
analyse = balance.analyse


def numbers(ds):
    rows = balance.balance_rows(ds, "balance_numerator")
    for depth in ds.depth.values:
        for init in ds.init.values:
            d = ds.sel(depth=depth, init=init)
            for layer in range(int(depth)):
                x = d.layer_norm.isel(layer=layer)
                rows.append({"depth": int(depth), "init": str(init), "layer": layer + 1,
                             "norm_start_median": finite_median(x.isel(time=0)),
                             "norm_end_median": finite_median(x.isel(time=-1))})
    return rows


def claims(ds):
    rows = [r for r in balance.balance_rows(ds, "balance_numerator") if r["init"] == "gaussian"]
    res = {(r["depth"], r["pair"]): r for r in balance.balance_rows(ds, "balance_residual")
           if r["init"] == "gaussian"}
    kept = all(r["end_over_start_median"] >= 0.9 for r in rows)
    halved = all(res[(r["depth"], r["pair"])]["end_over_start_median"] <= 0.5 for r in rows)
    measured = "; ".join(f"L={r['depth']} pair {r['pair']}: numerator x"
                         f"{r['end_over_start_median']:.3f}, normalised r_l x"
                         f"{res[(r['depth'], r['pair'])]['end_over_start_median']:.3f}"
                         for r in rows)
    return [claim_row("fig8-balance-relative", "The balance gained from unbalanced inits is "
                      "relative to the growing weights, not an absolute decrease of the imbalance.",
                      "App. I.2, Fig. 8", "fig8", "Gaussian init, median end / start of "
                      "||W_l W_l^T - W_{l+1}^T W_{l+1}||_F (conserved exactly by gradient flow): "
                      + measured, {"rows": rows},
                      "the numerator keeps >= 90% of its initial value while r_l at least halves",
                      "supported" if kept and halved else "refuted")]


def figure(ds):
    fig, axes = new_figure(2, 2, figsize=(11, 8))
    balance_panels(ds, "balance_numerator", axes[0],
                   "$\\|W_l W_l^T - W_{l+1}^T W_{l+1}\\|_F$ (median)", "pair")
    balance_panels(ds, "layer_norm", axes[1], "layer norm $\\|W_l\\|_F$ (median)", "layer",
                   log=False)
    fig.suptitle("Fig. 8 — unnormalised imbalance and layer norms (solid: Gaussian init, "
                 "dashed: balanced init)")
    fig.tight_layout()
    return fig


STUDY = Study("fig8", "Balance: unnormalised residual and layer norms", "Fig. 8, App. I.2",
              experiments, analyse, numbers, claims, figure)

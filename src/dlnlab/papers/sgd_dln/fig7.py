"""fig7: balance under SGD from balanced and unbalanced inits, the normalised residual
(App. I.2; the experiments are shared with fig8)."""

from __future__ import annotations

from ...analysis.claims import claim_row
from ...experiments.study import Study
from ...plot.panels import balance_panels, new_figure
from . import balance

experiments = balance.experiments
analyse = balance.analyse


def numbers(ds):
    return balance.balance_rows(ds, "balance_residual")


def claims(ds):
    rows = numbers(ds)
    gauss = [r for r in rows if r["init"] == "gaussian"]
    bal = {(r["depth"], r["pair"]): r for r in rows if r["init"] == "balanced"}
    improves = all(r["end_over_start_median"] < 1 for r in gauss)
    short = all(r["end_median"] > bal[(r["depth"], r["pair"])]["end_median"] for r in gauss)
    measured = "; ".join(f"L={r['depth']} pair {r['pair']}: r {r['start_median']:.3f} -> "
                         f"{r['end_median']:.3f} (balanced init ends at "
                         f"{bal[(r['depth'], r['pair'])]['end_median']:.2e})" for r in gauss)
    return [claim_row("fig7-balance", "From unbalanced (Gaussian) inits, SGD makes the layers "
                      "more balanced, but never as balanced as a balanced init.",
                      "App. I.2, Fig. 7", "fig7", "median normalised residual r_l: " + measured,
                      {"rows": rows}, "r_l(end) < r_l(0) for every pair and depth, and above the "
                      "balanced init's r_l(end)", "supported" if improves and short else "refuted")]


def figure(ds):
    fig, axes = new_figure(1, 2, figsize=(11, 4.3))
    balance_panels(ds, "balance_residual", axes,
                   "$r_l$ = normalised balance residual (median)", "pair")
    fig.suptitle("Fig. 7 — balance under SGD from Gaussian (solid) and balanced (dashed) inits")
    fig.tight_layout()
    return fig


STUDY = Study("fig7", "Balance from balanced and unbalanced inits: normalised residual",
              "Fig. 7, App. I.2", experiments, analyse, numbers, claims, figure)

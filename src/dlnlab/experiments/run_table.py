"""The table ``dlnlab run`` prints: per method and mode, the summary of
:func:`~dlnlab.experiments.run.summarise`."""

from __future__ import annotations


def print_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Per method and mode (median over runs; t = step x learning rate)")
    for header in ("method", "mode", "s", "t(0.5 s)", "t(0.9 s)", "t peak", "a at peak",
                   "a_peak theory", "runs ok"):
        table.add_column(header, justify="right", no_wrap=True)

    def fmt(x, spec=".3g"):
        return "-" if x is None else format(x, spec)

    for info in summary["methods"].values():
        ok = info["runs"] - len(info["diverged"])
        for row in info["modes"]:
            table.add_row(info["label"], str(row["mode"]), fmt(row["s"]), fmt(row["t_half"]),
                          fmt(row["t_90"]), fmt(row["t_peak"]), fmt(row["a_peak_observed"]),
                          fmt(row["a_peak_predicted"]), f"{ok}/{info['runs']}")
    console.print(table)
    for method, info in summary["methods"].items():
        if info["diverged"]:
            first = info["diverged"][0]
            console.print(f"[yellow]{method}: {len(info['diverged'])} run(s) diverged "
                          f"(first: run {first['run']} at step {first['step']})[/yellow]")

"""The table ``dlnlab run`` prints: per method and mode, the summary of
:func:`~dlnlab.experiments.run.summarise`.

Times to an event are Kaplan-Meier medians with their 95% interval, ``8.05 [7.9, 8.2]``; a share
``(7/16)`` when some runs never got there within the horizon, and ``> 7 (7/16)`` when the median is
not reached (:func:`dlnlab.analysis.stats.format_censored`). A mode the network's rank bottleneck
cannot learn reads "unreachable"; events the record grid cannot resolve are marked ``*`` with a
note giving the records across the transition.
"""

from __future__ import annotations

from ..analysis.stats import format_censored


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def summary_rows(summary: dict) -> list[tuple[str, ...]]:
    """The table's rows (strings), in :data:`HEADERS` order."""
    rows = []
    for info in summary["methods"].values():
        ok = f"{info['runs'] - len(info['diverged'])}/{info['runs']}"
        for row in info["modes"]:
            theory = f"{_fmt(row['t_half_theory_effective'])} / {_fmt(row['t_half_theory_aligned'])}"
            if not row["reachable"]:
                rows.append((info["label"], str(row["mode"]), _fmt(row["s"]), "unreachable",
                             "unreachable", "-", "-", "-", "-", ok))
                continue
            mark = "*" if row["resolved"] is False else ""
            a_peak = _fmt(row["a_peak_observed"])
            if row["a_peak_observed"] is not None and row["a_peak_runs"] < info["runs"]:
                a_peak += f" ({row['a_peak_runs']}/{info['runs']})"
            rows.append((info["label"], str(row["mode"]), _fmt(row["s"]),
                         format_censored(row["t_half"]) + mark, format_censored(row["t_90"]) + mark,
                         theory, format_censored(row["t_peak"]) + mark, a_peak + mark,
                         _fmt(row["a_peak_predicted"]), ok))
    return rows


HEADERS = ("method", "mode", "s", "t(0.5 s)", "t(0.9 s)", "t(0.5 s) theory eff./aligned",
           "t peak", "a at peak", "a_peak theory", "runs ok")


def unresolved_notes(summary: dict) -> list[str]:
    """One line per method and mode whose events the record grid cannot resolve."""
    notes = []
    for method, info in summary["methods"].items():
        for row in info["modes"]:
            if row.get("resolved") is False:
                notes.append(f"{method} mode {row['mode']}: unresolved: "
                             f"{row['records_across_transition']:g} records across the transition "
                             f"(t(0.1 s) to t(0.9 s), median over runs; at least "
                             f"{summary.get('min_transition_records', 5)} needed): raise "
                             "record.points or use record.spacing = \"adaptive\"")
    return notes


def print_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Per method and mode (Kaplan-Meier median [95% CI] over runs, censored at "
                        "the horizon; t = step x learning rate)")
    for header in HEADERS:   # long cells wrap inside their column (never cut with an ellipsis)
        table.add_column(header, justify="right", no_wrap=header in ("mode", "s", "runs ok"),
                         overflow="fold")
    for row in summary_rows(summary):
        table.add_row(*row)
    console.print(table)
    for note in unresolved_notes(summary):
        console.print(f"[yellow]* {note}[/yellow]")
    for method, info in summary["methods"].items():
        if info["diverged"]:
            first = info["diverged"][0]
            console.print(f"[yellow]{method}: {len(info['diverged'])} run(s) diverged "
                          f"(first: run {first['run']} at step {first['step']})[/yellow]")

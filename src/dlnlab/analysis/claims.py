"""Claim rows and their formatting: the one shape every study's ``claims`` returns.

A claim row is a dict ``{id, claim, paper, figure, measured, values, criterion, verdict}``:
``paper`` is where the claim is made (section, figure or equation of the source), ``figure``
the study that tests it, ``measured`` a sentence with the numbers, ``values`` those numbers,
``criterion`` the decision rule (fixed before the results were seen) and ``verdict`` one of
:data:`VERDICTS`.
"""

from __future__ import annotations

import math

import numpy as np

VERDICTS = ("supported", "refuted", "not testable")


def claim_row(id_: str, claim: str, paper: str, figure: str, measured: str, values: dict,
              criterion: str, verdict: str) -> dict:
    """One claim row (see the module docstring); ``verdict`` must be one of :data:`VERDICTS`."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict={verdict!r}: must be one of {', '.join(VERDICTS)}")
    return {"id": id_, "claim": claim, "paper": paper, "figure": figure, "measured": measured,
            "values": values, "criterion": criterion, "verdict": verdict}


def format_number(x, spec: str = ".3g") -> str:
    """``format(x, spec)``, or ``"nan"`` for None and non-finite values."""
    return "nan" if x is None or not np.isfinite(x) else format(x, spec)


def json_safe(value):
    """A JSON-safe copy: NaN and infinities -> None, NumPy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def verdict_summary(claims: list[dict]) -> str:
    """``"2 supported, 1 refuted"``: the count of each verdict present, in :data:`VERDICTS` order."""
    return ", ".join(f"{sum(c['verdict'] == v for c in claims)} {v}" for v in VERDICTS
                     if any(c["verdict"] == v for c in claims))

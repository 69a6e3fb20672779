"""The Python snippets of docs/llc.md run as written, and the numbers they print are what the page
says (the estimator's snippet: within the chains' standard error of the exact value)."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "llc.md").read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", PAGE, re.S | re.M)


def test_page_has_the_two_snippets():
    assert len(python_blocks()) == 2


def test_exact_value_snippet(capsys):
    namespace: dict = {}
    exec(compile(python_blocks()[0], "docs/llc.md", "exec"), namespace)
    result = namespace["learning_coefficient"]((5, 3, 5), 0)
    assert result.value == Fraction(13, 2) and result.multiplicity == 2
    assert namespace["learning_coefficient"]((12, 12, 12, 12, 12), 3).value == 57


def test_estimator_snippet_hits_the_exact_value(capsys):
    """The page's estimate of (5, 3, 5) at the rank-0 truth is within 5 chain standard errors of
    the exact 13/2, allowing the leading finite-temperature shift -(m - 1)/log(n beta) (m = 2)."""
    previous = jax.config.jax_enable_x64
    namespace: dict = {}
    try:
        exec(compile(python_blocks()[1], "docs/llc.md", "exec"), namespace)
    finally:
        jax.config.update("jax_enable_x64", previous)
    ds = namespace["ds"]
    estimate = float(ds.learning_coefficient)
    se = float(ds.learning_coefficient_standard_error)
    assert 0 < se < 0.5
    shift = 1.0 / float(jax.numpy.log(ds.attrs["inverse_temperature"]))
    assert 6.5 - shift - 5 * se <= estimate <= 6.5 + 5 * se
    # a wrong exact value (the regular count d/2 = 15) is rejected by the same rule
    assert not (15.0 - shift - 5 * se <= estimate <= 15.0 + 5 * se)
    printed = capsys.readouterr().out.split()
    assert abs(float(printed[0]) - estimate) < 1e-12
